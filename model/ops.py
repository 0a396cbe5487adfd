"""The operator model: a step's ops with FLOPs, memory bytes and link bytes.

`decompose` lists, for one forward step of a `Batch` on a `Layout`, the ops
the busiest GPU runs: per set of identical layers (one `Op` with a
``count``), the attention projections and core attention (MHA, GQA, MLA in
its plain and absorbed forms), the router, routed experts (grouped GEMM),
shared experts, dense FFN, the collectives (TP all-reduce,
DP-attention gather/scatter, EP dispatch and combine all-to-all, pipeline
sends), the embedding and the LM head. Every FLOP and byte count is made
here, in `model.attention_ops` (the attention block) and in the builders of
`model.op_record` (`Op`, `gemm`, `collective`, re-exported here), and nowhere else.

Units: FLOP, bytes. Collective bytes are what one GPU sends (ring
algorithms; hierarchical across nodes: the intra-node part over NVLink, the
rest over the NIC). An op's numbers are for one occurrence; it repeats
``count`` times per step.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from moesim.model.attention_ops import attention_ops
from moesim.model.batch import Batch
from moesim.model.dtypes import Precision
from moesim.model.errors import LayoutError
from moesim.model.hardware import ClusterSpec
from moesim.model.layout import Layout
from moesim.model.op_record import Op, OpContext, collective, gemm
from moesim.model.params import LayerSet, layer_sets
from moesim.model.routing import gpu_loads, token_fanout
from moesim.model.spec import ModelSpec


def _ffn(prefix: str, group: str, count: int, tokens: int, width: int, h: int, p: Precision, dtype: str) -> list[Op]:
    """Gated FFN on ``tokens`` tokens with local width ``width``: gate_up then down."""
    wb, ab = p.weight_bytes, p.activation_bytes
    up = gemm(f"{prefix}_gate_up", group, count, tokens, 2 * width, h, wb, ab, dtype)
    down = gemm(f"{prefix}_down", group, count, tokens, h, width, wb, ab, dtype)
    # the activation (silu(gate) * up) is fused into the down GEMM's prologue: it reads 2*width
    down = Op(
        down.name,
        down.kind,
        group,
        count,
        down.flops,
        down.weight_bytes,
        0.0,
        down.act_bytes + tokens * width * ab,
        dtype=dtype,
        shape=down.shape,
    )
    return [up, down]


def experts_op(
    tokens: int,
    hidden: int,
    width: int,
    top_k: int,
    num_experts: int,
    ep: int,
    precision: Precision,
    dtype: str,
    *,
    group: str = "",
    count: int = 1,
    moe_tp: int = 1,
    loads: np.ndarray | None = None,
    phys_to_log: np.ndarray | None = None,
    balanced: bool = False,
) -> Op:
    """Routed experts of one MoE layer on the busiest of ``ep`` expert-parallel GPUs.

    A grouped GEMM per local expert: gate_up ([pairs x hidden] @ [hidden x
    2 width]) then down ([pairs x width] @ [width x hidden]), 6 x pairs x
    hidden x width FLOP; weights are read for each local expert that gets a
    token.

    Args:
        tokens: tokens routed by the whole EP group in the step.
        hidden: model width.
        width: each expert's intermediate width on this GPU (I / moe_tp).
        top_k, num_experts: the routing rule.
        ep: expert-parallel GPUs (the experts are split among them).
        precision, dtype: weight bytes and the peak the GEMM runs at.
        group, count: layer-set label and repetitions.
        moe_tp: expert tensor-parallel ways (recorded in the shape).
        loads, phys_to_log: routing statistics and placement (`model.routing`).
        balanced: every expert gets exactly ``tokens x top_k / E`` pairs (as
            benchmark harnesses craft); else the busiest GPU's expected load
            under random routing, sampling noise included.
    """
    if balanced:
        pairs = tokens * top_k / ep
        active = min(num_experts / ep, tokens * top_k / ep)
        mean, imbalance = pairs, 1.0
    else:
        load = gpu_loads(tokens, top_k, ep, loads, phys_to_log, num_experts)
        pairs, active = load.busiest_pairs, float(load.active_experts.max())
        mean, imbalance = float(load.mean_pairs.mean()), load.imbalance
    wb, ab = precision.weight_bytes, precision.activation_bytes
    return Op(
        "routed_experts",
        "grouped_gemm",
        group,
        count,
        flops=2.0 * pairs * 3 * hidden * width,
        weight_bytes=active * 3 * hidden * width * wb,
        kv_bytes=0.0,
        act_bytes=(2 * pairs * hidden + 4 * pairs * width) * ab,
        dtype=dtype,
        shape={
            "tokens": tokens,
            "pairs": pairs,
            "mean_pairs": mean,
            "hidden": hidden,
            "inter": width,
            "experts": num_experts // ep,
            "top_k": top_k,
            "active_experts": active,
            "ep": ep,
            "moe_tp": moe_tp,
            "imbalance": imbalance,
            "w_bytes": wb,
        },
    )


def _moe_ops(c: OpContext, g: LayerSet, loads: np.ndarray | None, phys: np.ndarray | None) -> list[Op]:
    m, lay, p = c.model, c.layout, c.precision
    moe = m.moe
    assert moe is not None
    h, ab, gpn = m.hidden_size, p.activation_bytes, c.cluster.gpus_per_node
    t_all, t_attn = c.batch.tokens, c.attn_batch.tokens
    label, n = g.label, g.count
    ops: list[Op] = [
        Op(
            "router",
            "router",
            label,
            n,
            flops=2.0 * t_attn * h * moe.num_experts,
            weight_bytes=h * moe.num_experts * p.unquantized_bytes,
            kv_bytes=0.0,
            act_bytes=t_attn * h * ab + t_attn * moe.num_experts * 4.0,
            dtype=p.activations,
            shape={"tokens": t_attn, "experts": moe.num_experts, "hidden": h, "top_k": moe.top_k},
        )
    ]
    width = moe.intermediate_size // lay.moe_tp
    dispatch = None
    if lay.ep == 1 and lay.dp_attn > 1:
        # every GPU holds every expert (width split moe_tp ways) and gathers all tokens
        ops.append(collective("dp_gather", "all_gather", label, n, t_all * h * ab, lay.stage_gpus, gpn))
    elif lay.ep > 1:
        fan = token_fanout(
            lay.ep, max(1, gpn // lay.moe_tp), moe.top_k, moe.num_experts, moe.n_group, moe.topk_group, loads, phys
        )
        src_tokens = t_all / lay.stage_gpus  # each GPU dispatches an equal share
        per_token = h * ab * lay.moe_tp
        dispatch = Op(
            "ep_dispatch",
            "all_to_all",
            label,
            n,
            0.0,
            0.0,
            0.0,
            0.0,
            intra_bytes=src_tokens * fan.intra * per_token,
            inter_bytes=src_tokens * fan.inter * per_token,
            intra_msgs=1 if fan.intra > 0 else 0,
            inter_msgs=1 if fan.inter > 0 else 0,
            shape={
                "tokens": t_all,
                "gpus": lay.ep,
                "hidden": h,
                "top_k": moe.top_k,
                # the per-GPU all-to-all buffer, as NCCL benchmarks size it (the share kept local included)
                "bytes": src_tokens * (fan.intra + fan.inter) * per_token * lay.ep / (lay.ep - 1),
            },
        )
        ops.append(dispatch)
    ops.append(
        experts_op(
            t_all,
            h,
            width,
            moe.top_k,
            moe.num_experts,
            lay.ep,
            p,
            c.gemm_dtype,
            group=label,
            count=n,
            loads=loads,
            phys_to_log=phys,
            moe_tp=lay.moe_tp,
        )
    )
    if dispatch is not None:
        ops.append(replace(dispatch, name="ep_combine"))
        if lay.tp > 1:
            op = collective("tp_gather", "all_gather", label, n, t_attn * h * ab, lay.tp, gpn)
            ops.append(op) if op else None
    elif lay.dp_attn > 1:
        op = collective("dp_scatter", "reduce_scatter", label, n, t_all * h * ab, lay.stage_gpus, gpn)
        ops.append(op) if op else None
    elif lay.tp > 1:
        op = collective("moe_allreduce", "all_reduce", label, n, t_attn * h * ab, lay.tp, gpn)
        ops.append(op) if op else None
    if moe.shared_intermediate_size:
        ops += _ffn("shared", label, n, t_attn, moe.shared_intermediate_size // lay.tp, h, p, c.gemm_dtype)
    return ops


def _dense_ffn_ops(c: OpContext, g: LayerSet) -> list[Op]:
    m, lay = c.model, c.layout
    ops = _ffn(
        "ffn",
        g.label,
        g.count,
        c.attn_batch.tokens,
        m.dense_intermediate_size // lay.tp,
        m.hidden_size,
        c.precision,
        c.gemm_dtype,
    )
    ar = collective(
        "ffn_allreduce",
        "all_reduce",
        g.label,
        g.count,
        c.attn_batch.tokens * m.hidden_size * c.precision.activation_bytes,
        lay.tp,
        c.cluster.gpus_per_node,
    )
    return ops + ([ar] if ar else [])


def _edge_ops(c: OpContext) -> list[Op]:
    """Embedding lookup (vocab-parallel, all-reduced) and LM head (logits all-gathered)."""
    m, lay, p = c.model, c.layout, c.precision
    h, t, gpn = m.hidden_size, c.attn_batch.tokens, c.cluster.gpus_per_node
    ops = [
        Op(
            "embedding",
            "embedding",
            "embed",
            1,
            0.0,
            weight_bytes=t * h * p.unquantized_bytes,
            kv_bytes=0.0,
            act_bytes=t * h * p.activation_bytes,
            dtype=p.activations,
            shape={"tokens": t, "hidden": h},
        )
    ]
    ar = collective("embed_allreduce", "all_reduce", "embed", 1, t * h * p.activation_bytes, lay.tp, gpn)
    ops += [ar] if ar else []
    rows = c.attn_batch.logit_tokens
    head = gemm(
        "lm_head", "head", 1, rows, m.vocab_size // lay.tp, h, p.unquantized_bytes, p.activation_bytes, p.activations
    )
    ops.append(head)
    ag = collective("logits_gather", "all_gather", "head", 1, rows * m.vocab_size * 4.0, lay.tp, gpn)
    return ops + ([ag] if ag else [])


def _per_layer(arr: np.ndarray | None, moe_index: int) -> np.ndarray | None:
    if arr is None:
        return None
    arr = np.asarray(arr)
    return arr if arr.ndim == 1 else arr[moe_index]


def decompose(
    model: ModelSpec,
    batch: Batch,
    layout: Layout,
    cluster: ClusterSpec,
    precision: Precision | None = None,
    *,
    loads: np.ndarray | None = None,
    phys_to_log: np.ndarray | None = None,
    mla_absorb: bool | None = None,
) -> list[Op]:
    """The ops of one forward step on the busiest GPU.

    Args:
        model, batch, layout, cluster: what, on what, how split.
        precision: dtypes (default bf16 weights and KV cache).
        loads: expert load shares [E] for every MoE layer or [L_moe, E] per
            MoE layer; None: uniform routing.
        phys_to_log: expert placement [S] or [L_moe, S]; None: experts in
            contiguous blocks of E/ep per GPU.
        mla_absorb: MLA in the absorbed (weight-absorbed latent) form; None:
            absorbed for decode, plain for prefill (as SGLang and vLLM do).

    Raises:
        LayoutError: the layout does not divide the model or needs more
            GPUs than the cluster has.
    """
    p = precision or Precision()
    layout.check(model)
    if layout.num_gpus > cluster.num_gpus:
        raise LayoutError(
            f"layout {layout.label()} needs {layout.num_gpus} GPUs but the cluster has {cluster.num_gpus}",
            "add nodes or shrink tp/dp_attn/pp",
        )
    groups = batch.split(layout.dp_attn)
    attn_batch = max(groups, key=lambda b: (b.tokens, b.sequences))
    ctx = OpContext(model, batch, attn_batch, layout, cluster, p, p.gemm_compute_dtype(cluster.gpu.peak_flops))
    per_layer = (loads is not None and np.asarray(loads).ndim == 2) or (
        phys_to_log is not None and np.asarray(phys_to_log).ndim == 2
    )
    absorb = (batch.phase == "decode") if mla_absorb is None else mla_absorb
    edge = _edge_ops(ctx)
    ops: list[Op] = edge[:2] if layout.tp > 1 else edge[:1]
    moe_index = {layer: i for i, layer in enumerate(np.flatnonzero(model.moe_layers))}
    for s, stage in enumerate(layout.stage_layers(model)):
        first = len(ops)
        for g in layer_sets(model, stage, split_moe=per_layer):
            ops += attention_ops(ctx, g, absorb)
            if g.is_moe:
                i = moe_index[g.first]
                ops += _moe_ops(ctx, g, _per_layer(loads, i), _per_layer(phys_to_log, i))
            else:
                ops += _dense_ffn_ops(ctx, g)
        if s < layout.pp - 1:
            cross = layout.stage_gpus >= cluster.gpus_per_node
            send = attn_batch.tokens * model.hidden_size * p.activation_bytes / layout.tp
            ops.append(
                Op(
                    "pp_send",
                    "p2p",
                    "pp",
                    1,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    intra_bytes=0.0 if cross else send,
                    inter_bytes=send if cross else 0.0,
                    intra_msgs=0 if cross else 1,
                    inter_msgs=1 if cross else 0,
                    shape={"bytes": send},
                )
            )
        if s:
            ops[first:] = [replace(op, stage=s) for op in ops[first:]]
    last = layout.pp - 1
    ops += [replace(op, stage=last) for op in (edge[-2:] if layout.tp > 1 else edge[-1:])]
    return ops
