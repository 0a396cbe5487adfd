"""Plain-data summaries of moesim results, shared by the CLI, the report and the app.

Each function calls the public API of `model` and returns JSON-ready dicts:
no modelling happens here, only selection and naming of fields. Units are in
the keys (``_s`` seconds, ``_bytes``, ``_params``, ``_flops`` FLOP/s peaks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from moesim.model import (
    COMPONENTS,
    KV_DTYPES,
    Batch,
    CapMetrics,
    ClusterSpec,
    CostAssumptions,
    CostModel,
    HardwareSpec,
    Layout,
    MemoryEstimate,
    ModelSpec,
    Precision,
    StepEstimate,
    cap_metrics,
    count_params,
    estimate_memory,
    estimate_step,
    kv_bytes_per_token,
    layer_groups,
    published_active,
    published_params,
    weight_bytes_per_gpu,
)

INSPECT_DTYPES = ("fp32", "bf16", "fp8", "int4", "fp4")


def model_row(m: ModelSpec) -> dict[str, Any]:
    """One line of ``moesim models``."""
    c = count_params(m)
    moe = m.moe
    return {
        "name": m.name,
        "family": m.family,
        "layers": m.num_layers,
        "hidden": m.hidden_size,
        "attention": m.attention.kind,
        "heads": m.attention.num_heads,
        "kv_heads": m.attention.num_kv_heads,
        "experts": moe.num_experts if moe else 0,
        "top_k": moe.top_k if moe else 0,
        "shared_experts": moe.num_shared_experts if moe else 0,
        "moe_layers": m.num_moe_layers,
        "vocab": m.vocab_size,
        "max_context": m.max_position_embeddings,
        "total_params": c.total,
        "active_params": c.active,
    }


def gpu_row(g: HardwareSpec) -> dict[str, Any]:
    """One line of ``moesim gpus``."""
    return {
        "key": g.key,
        "name": g.name,
        "vendor": g.vendor,
        "peak_flops": dict(g.peak_flops),
        "memory_gib": g.memory_gib,
        "memory_bandwidth": g.memory_bandwidth,
        "tdp_w": g.tdp_w,
        "price_usd": g.price_usd,
        "cloud_usd_per_hour": g.cloud_usd_per_hour,
        "node": g.node.model_dump(),
        "sources": dict(g.sources),
    }


def cluster_row(c: ClusterSpec) -> dict[str, Any]:
    """One line of ``moesim clusters``."""
    return {
        "name": c.name,
        "gpu": c.gpu.key,
        "gpus_per_node": c.gpus_per_node,
        "nodes": c.nodes,
        "num_gpus": c.num_gpus,
        "intra_bw": c.intra_bw,
        "intra_latency_s": c.intra_latency_s,
        "inter_bw": c.inter_bw,
        "inter_latency_s": c.inter_latency_s,
    }


def inspect_summary(m: ModelSpec) -> dict[str, Any]:
    """Parameters by component and layer group, weight bytes per dtype, KV bytes per token."""
    c = count_params(m)
    a = m.attention
    layers = [
        {"layers": g.label, "count": g.count, "params_per_layer": sum(comp.values()), "by_component": comp}
        for g, comp in c.per_layer
    ]
    weight_bytes = {d: sum(weight_bytes_per_gpu(m, Layout(), Precision(weights=d))[0].values()) for d in INSPECT_DTYPES}
    kv = {d: kv_bytes_per_token(m, Layout(), Precision(kv_cache=d)) for d in KV_DTYPES}
    windows = sorted({w for w in m.windows if w})
    pub = published_params().set_index("model")
    published = None
    if m.name in pub.index:
        row = pub.loc[m.name]
        ours = published_active(c, row["convention"])
        published = {
            "total_params": float(row["total"]),
            "active_params": float(row["active"]),
            "convention": row["convention"],
            "source": row["source"],
            "total_error": (c.total + row["not_modelled"]) / row["total"] - 1,  # Llama 4: + its vision tower
            "not_modelled_params": float(row["not_modelled"]),
            "active_error": ours / row["active"] - 1,
        }
    return {
        **model_row(m),
        "total_params": c.total,
        "active_params": c.active,
        "active_params_excl_input_embedding": c.active_excl_input_embedding,
        "by_component": c.by_component,
        "active_by_component": c.active_by_component,
        "layer_groups": layers,
        "attention_detail": {
            "kind": a.kind,
            "heads": a.num_heads,
            "kv_heads": a.num_kv_heads,
            "head_dim": a.head_dim,
            "v_head_dim": a.v_head_dim,
            "q_lora_rank": a.q_lora_rank,
            "kv_lora_rank": a.kv_lora_rank,
            "qk_rope_head_dim": a.qk_rope_head_dim,
            "sliding_windows": windows,
            "sliding_layers": sum(1 for w in m.windows if w),
            "attention_chunks": sorted({m.chunk_of(i) for i in range(m.num_layers)} - {None}),
            "chunked_layers": sum(1 for i in range(m.num_layers) if m.chunk_of(i)),
        },
        "moe": None
        if m.moe is None
        else {
            "experts": m.moe.num_experts,
            "top_k": m.moe.top_k,
            "expert_width": m.moe.intermediate_size,
            "shared_width": m.moe.shared_intermediate_size,
            "n_group": m.moe.n_group,
            "topk_group": m.moe.topk_group,
            "scoring": m.moe.scoring,
        },
        "mtp_layers_excluded": m.mtp_layers,
        "published": published,
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": kv,
        "components": list(COMPONENTS),
        "layer_group_labels": [g.label for g in layer_groups(m)],
    }


@dataclass(frozen=True)
class RooflineRun:
    """A roofline estimate with its memory and CAP metrics."""

    estimate: StepEstimate
    memory: MemoryEstimate
    cap: CapMetrics


def run_roofline(
    model: ModelSpec,
    batch: Batch,
    layout: Layout,
    cluster: ClusterSpec,
    precision: Precision,
    cost: CostAssumptions | None = None,
    accuracy: pd.DataFrame | None = None,
    mem_fraction: float = 0.9,
    mla_absorb: bool | None = None,
    cost_model: CostModel | None = None,
) -> RooflineRun:
    """Estimate a step (roofline, or ``cost_model``), its memory (peak activations) and CAP metrics."""
    est = estimate_step(model, batch, layout, cluster, precision, cost_model=cost_model, mla_absorb=mla_absorb)
    act = max((op.act_bytes for op in est.ops), default=0.0)
    mem = estimate_memory(model, layout, cluster.gpu, precision, batch, act, mem_fraction)
    cap = cap_metrics(est, cost, accuracy, mla_absorb=mla_absorb)
    return RooflineRun(est, mem, cap)


def roofline_summary(run: RooflineRun, ops: bool = True) -> dict[str, Any]:
    """The JSON of ``moesim roofline``."""
    from moesim.profiling.transfer import estimate_band  # the profiling package loads only when asked

    est, mem, cap = run.estimate, run.memory, run.cap
    lay, b = est.layout, est.batch
    out: dict[str, Any] = {
        "model": est.model.name,
        "gpu": est.cluster.gpu.key,
        "cluster": cluster_row(est.cluster),
        "layout": {
            "tp": lay.tp,
            "ep": lay.ep,
            "dp_attn": lay.dp_attn,
            "pp": lay.pp,
            "moe_tp": lay.moe_tp,
            "gpus": lay.num_gpus,
            "label": lay.label(),
        },
        "phase": b.phase,
        "batch": b.sequences,
        "tokens": est.tokens,
        "batch_desc": b.describe(),
        "dtype": est.precision.weights,
        "kv_dtype": est.precision.kv_cache,
        "cost_model": est.cost_model,
        "step_s": est.step_s,
        "tokens_per_s": est.tokens_per_s,
        "pipelined_tokens_per_s": est.pipelined_tokens_per_s,
        "stage_s": est.stage_seconds(),
        "breakdown": est.breakdown(),
        "bound_shares": est.bound_shares(),
        "transfer_band": estimate_band(est.ops, est.times),
        "memory": {
            "fits": mem.fits,
            "verdict": mem.verdict,
            "capacity_bytes": mem.capacity_bytes,
            "usable_bytes": mem.usable_bytes,
            "weight_bytes": mem.weight_bytes,
            "weights_by_component": mem.weights_by_component,
            "kv_bytes": mem.kv_bytes,
            "kv_bytes_per_token": mem.kv_bytes_per_token,
            "activation_bytes": mem.activation_bytes,
            "kv_capacity_tokens": mem.kv_capacity_tokens,
        },
        "cap": {
            "s_per_token": cap.s_per_token,
            "tokens_per_s": cap.tokens_per_s,
            "smbu": cap.exact.smbu,
            "smfu": cap.exact.smfu,
            "smfu_peak_dtype": cap.exact.peak_dtype,
            "smbu_moecap": cap.moecap.smbu if cap.moecap else None,
            "smfu_moecap": cap.moecap.smfu if cap.moecap else None,
            "usd_per_mtok": cap.usd_per_mtok,
            "cost_basis": cap.cost_basis,
            "energy_j_per_token": cap.energy_j_per_token,
            "accuracy": cap.accuracy.to_dict(orient="records"),
        },
    }
    if ops:
        out["ops"] = est.table().to_dict(orient="records")
    return out
