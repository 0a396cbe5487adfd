"""The Scenario page's work: build a serving or training scenario mapping, run it, and shape what it shows.

A scenario travels as a plain mapping (what a scenario YAML holds) plus the
folder its relative paths resolve against. `run_serving` and `run_training`
call `sim.serving.serve.run` and `sim.training.train.run` and return only picklable tables
and dicts, so `st.cache_data` can keep them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import yaml

from moesim.dashboard.format import fmt_bytes, fmt_pct, fmt_seconds
from moesim.dashboard.logic.charts import (
    LEGEND_TOP,
    PALETTE,
    clip_seconds,
    legend_height,
    seconds_axis,
    title_top,
)
from moesim.model import Batch, MoesimError, estimate_memory, estimate_step, inputs

#: moesim's package root: the repository in a source checkout (editable install), ``site-packages/moesim`` from
#: a wheel. Scenarios built from widgets resolve relative paths against it (``profiling/data/...`` works in both).
REPO = Path(__file__).resolve().parents[2]
#: The example scenarios: in the repository only (the wheel does not ship them), so from a wheel there are none.
EXAMPLES = REPO / "examples"
SCENARIO_PAGE = "views/scenario.py"

#: The serving scenario the page starts from: examples/mixtral-8x7b-ep8.yaml with a run short enough for a click.
SERVING_DEFAULT: dict[str, Any] = {
    "name": "mixtral-8x7b-ep8",
    "model": "mixtral-8x7b",
    "gpu": "H100-SXM",
    "nodes": 1,
    "gpus_per_node": 8,
    "precision": {"weights": "bf16"},
    "layout": {"tp": 1, "dp_attn": 8, "ep": 8, "pp": 1},
    "engine": {"max_batch": 256, "max_tokens": 8192, "chunked_prefill": True, "block_size": 16},
    "workload": {
        "arrival": "poisson",
        "rate": 20.0,
        "requests": 600,
        "input": {"dist": "lognormal", "mean": 512, "cv": 1.0, "max": 8192},
        "output": {"dist": "lognormal", "mean": 256, "cv": 1.0, "max": 4096},
    },
    "routing": {"distribution": "uniform"},
    "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
    "seed": 0,
}

#: The training scenario the page starts from: Megatron's Mixtral reference layout on 64 H100s (roofline times).
TRAINING_DEFAULT: dict[str, Any] = {
    "name": "mixtral-8x7b-h100",
    "model": "mixtral-8x7b",
    "gpu": "H100-SXM",
    "nodes": 8,
    "gpus_per_node": 8,
    "layout": {"tp": 1, "pp": 4, "ep": 8, "zero": 1, "schedule": "interleaved", "virtual_stages": 8},
    "batch": {"global_batch": 256, "micro_batch": 1, "seq_len": 4096},
    "precision": {"gemm": "bf16"},
    "recompute": "none",
    "routing": {"distribution": "uniform"},
}


def examples(kind: str) -> dict[str, Path]:
    """The repository's example scenarios of one kind (``serving`` or ``training``), name -> path; {} without
    the repository's examples/ (moesim installed from a wheel)."""
    out: dict[str, Path] = {}
    for p in sorted(EXAMPLES.glob("*.yaml")):
        if p.name.startswith("sweep-"):
            continue
        if (p.name.startswith("train-")) == (kind == "training"):
            out[p.stem] = p
    return out


def kind_of(mapping: dict[str, Any]) -> str:
    """``training`` for a mapping with a ``batch`` section (`sim.training.train_scenario`), else ``serving``."""
    return "training" if "batch" in mapping else "serving"


def parse_yaml(data: bytes, name: str) -> dict[str, Any]:
    """A scenario mapping from uploaded YAML bytes; `MoesimError` naming the file when it is not one."""
    obj = inputs.parse_yaml(data, name)
    if not isinstance(obj, dict) or "model" not in obj:
        raise MoesimError(f"{name} holds no scenario mapping with a 'model' key", "see examples/*.yaml")
    return obj


def read_example(path: str | Path) -> dict[str, Any]:
    """An example scenario file's mapping."""
    return parse_yaml(Path(path).read_bytes(), Path(path).name)


def to_yaml(mapping: dict[str, Any]) -> str:
    """A mapping as scenario YAML text (key order kept)."""
    return yaml.safe_dump(mapping, sort_keys=False, default_flow_style=None)


def validate(mapping: dict[str, Any]) -> None:
    """Check a mapping against its schema; `MoesimError` with one line naming the bad key."""
    if kind_of(mapping) == "training":
        from moesim.sim.training.train_scenario import parse_train_scenario

        parse_train_scenario(mapping)
    else:
        from moesim.sim.serving.scenario import parse_scenario

        parse_scenario(mapping)


def open_scenario(mapping: dict[str, Any], source: str, base_dir: str | Path | None = None) -> None:
    """Hand a scenario to the Scenario page and go there (from the CAP overview or the sweep explorer)."""
    st.session_state["scenario_opened"] = {"mapping": mapping, "source": source, "base_dir": str(base_dir or REPO)}
    st.session_state["scenario_source"] = "Opened from another page"
    st.switch_page(SCENARIO_PAGE)


#: The memory chart's row of host-resident (offloaded) bytes is named ``<pool role> host``; GPU rows the role.
HOST_SUFFIX = " host (offloaded)"


def _memory_parts(built: Any, pool: Any) -> dict[str, dict[str, float]]:
    """Bytes on the fullest GPU of one pool: weights by component, activations, KV room, the reserve; with
    offloaded experts the GPU-resident experts (the cache) and, in a separate ``<role> host (offloaded)`` row,
    the experts that live in host memory and are fetched over PCIe (`sim.serving.capacity.replica_capacity`).

    Returns:
        row name -> part -> bytes: the pool's GPU row, and its host row when experts are offloaded.
    """
    from moesim.sim.serving.capacity import replica_capacity

    gpu = pool.cluster.gpu
    mem = estimate_memory(
        built.model,
        pool.layout,
        gpu,
        built.precision,
        mem_fraction=pool.engine.mem_fraction,
        expert_slots=built.expert_slots,  # redundant experts' weights
    )
    parts = {f"weights: {k.replace('_', ' ')}": float(v) for k, v in mem.weights_by_component.items() if v > 0}
    host: dict[str, float] = {}
    try:
        cap = replica_capacity(built, pool)
    except MoesimError:  # does not fit: the page says so elsewhere; draw the weights as they are
        cap = None
    resident = mem.weight_bytes
    if cap is not None and cap.offload is not None:
        experts = parts.pop("weights: routed experts", 0.0)
        cached = min(experts, cap.offload.cache_experts * cap.offload.expert_bytes)
        parts["weights: routed experts (GPU cache)"] = cached
        host["routed experts offloaded to host"] = max(0.0, experts - cached)
        resident = mem.weight_bytes - experts + cached
    parts["KV cache room"] = max(0.0, mem.usable_bytes - resident - mem.activation_bytes)
    parts["reserved (1 - mem_fraction)"] = mem.capacity_bytes - mem.usable_bytes
    out = {pool.role: parts}
    if host:
        out[pool.role + HOST_SUFFIX] = host
    return out


def _op_breakdown(built: Any, pool: Any, batch: float, ctx: int) -> dict[str, float]:
    """Seconds by op kind of one decode step of ``batch`` sequences at ``ctx`` tokens of context on ``pool``."""
    b = max(1, round(batch))
    est = estimate_step(
        built.model,
        Batch.decode(b, max(1, int(ctx))),
        pool.layout,
        pool.cluster,
        built.precision,
        built.cost_model,
        loads=built.loads,
        phys_to_log=built.phys_to_log,
    )
    out: dict[str, float] = {}
    for op, t in zip(est.ops, est.times, strict=True):
        out[op.kind] = out.get(op.kind, 0.0) + t.seconds * op.count
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _mean_lengths(requests: pd.DataFrame | None, built: Any) -> tuple[float, float]:
    """Mean prompt and output tokens of a serving run: of the DES's requests, else of the workload's
    (`sim.serving.workload.generate`, as the analytical engine draws them; fixed, uniform, lognormal,
    empirical lengths or a trace alike)."""
    if requests is None or requests.empty or "input_tokens" not in requests:
        from moesim.sim.serving.workload import generate

        requests = generate(built.workload, seed=built.scenario.seed, base_dir=built.base_dir)
    return float(requests["input_tokens"].mean()), float(requests["output_tokens"].mean())


@st.cache_data(show_spinner=False, max_entries=16)
def run_analytical(mapping: dict[str, Any], base_dir: str) -> dict[str, Any]:
    """`run_serving` on the analytical engine, cached."""
    return run_serving(mapping, "analytical", base_dir)


def run_serving(
    mapping: dict[str, Any],
    engine: str,
    base_dir: str,
    progress: Callable[[float, float, str], None] | None = None,
) -> dict[str, Any]:
    """Run a serving scenario (`sim.serving.serve.run`) and collect what the page draws.

    Not cached itself: a DES run reports progress to the page, which `st.cache_data` cannot replay; the page
    keeps the DES result in the session instead.

    Args:
        mapping: the scenario mapping.
        engine: ``analytical`` or ``des``.
        base_dir: the folder its relative paths resolve against.
        progress: the DES's progress callback (simulated s, total s, text).

    Returns:
        ``summary`` (flat figures, units in the keys), ``requests`` and ``steps`` DataFrames (empty for the
        analytical engine), ``itl`` (s, array [tokens]), ``series`` (`sim.serving.metrics.time_series`), ``memory``
        (pool role -> part -> bytes), ``breakdown`` (op kind -> s of a decode step at the mean batch),
        ``breakdown_at`` (its batch and context), ``components`` (DES: s of all steps by cause).
    """
    from moesim.sim.serving.metrics import time_series
    from moesim.sim.serving.serve import run

    res = run(mapping, engine, base_dir=base_dir, progress=progress)
    b, s = res.built, res.summary
    memory: dict[str, dict[str, float]] = {}
    for p in b.pools:
        memory |= _memory_parts(b, p)
    pool = b.pools[-1]  # decode pool of a disaggregated deployment, the only pool otherwise
    mean_batch = s.get("mean_batch", math.nan)
    batch = mean_batch if mean_batch == mean_batch and mean_batch > 0 else 1
    # past saturation the analytical batch is the demand, not a step the engine runs: it runs its running set full
    batch = min(batch, max(pool.engine.max_batch, 1))
    mean_in, mean_out = _mean_lengths(res.requests, b)
    ctx = int(mean_in + mean_out / 2)
    out: dict[str, Any] = {
        "summary": s,
        "requests": res.requests,
        "steps": res.steps,
        "itl": np.asarray(res.itl, dtype=float),
        "series": time_series(res.steps, res.requests) if len(res.steps) else pd.DataFrame(),
        "memory": memory,
        "gpu_bytes": float(pool.cluster.gpu.engine_memory_bytes),  # what the engine sized its KV cache from
        "breakdown": _op_breakdown(b, pool, batch, ctx),
        "breakdown_at": {"batch": max(1, round(batch)), "context": ctx},
        "components": {},
    }
    if len(res.steps):
        st_ = res.steps
        parts = {c.removesuffix("_s"): float(st_[c].sum()) for c in ("compute_s", "comm_s", "straggler_s", "fetch_s")}
        parts["other"] = max(0.0, float(st_["duration_s"].sum()) - sum(parts.values()))
        out["components"] = parts
    return out


@st.cache_data(show_spinner=False, max_entries=16)
def run_training(mapping: dict[str, Any], base_dir: str) -> dict[str, Any]:
    """Run a training scenario (`sim.training.train.run`): ``summary``, ``memory`` [ranks] and ``tasks`` DataFrames."""
    from moesim.sim.training.train import run

    res = run(mapping, base_dir=base_dir)
    return {"summary": res.summary, "memory": res.memory, "tasks": res.tasks}


def provenance_caption(provenance: dict[str, Any] | None) -> str:
    """One line on where a serving run's step times come from (the summary's ``cost_provenance``): the decode
    step's share measured / transferred / fallback / roofline, and the expected error of the transferred part
    (`profiling.transfer.step_band`). ``""`` without a provenance."""
    dec = (provenance or {}).get("decode") or {}
    share = dec.get("share") or {}
    if not share:
        return ""
    parts = ", ".join(f"{k} {fmt_pct(v, 0)}" for k, v in share.items() if v > 0.0005)
    text = f"Decode step time ({provenance.get('cost_model', 'roofline')}): {parts}."
    band = dec.get("band") or {}
    if band.get("transferred_share", 0.0) > 0.0:
        text += (
            f" Transferred from another GPU's tables: expected error of the step ±{fmt_pct(band['p50'], 0)} (P50), "
            f"±{fmt_pct(band['p90'], 0)} (P90), from cross-transfer between two H100 measurements."
        )
    return text


def latency_cdf_series(result: dict[str, Any]) -> dict[str, np.ndarray]:
    """TTFT, TPOT and end-to-end samples, s (DES: per request; empty for the analytical engine)."""
    req = result["requests"]
    if req is None or req.empty:
        return {}
    return {name: req[col].to_numpy(dtype=float) for name, col in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"))} | {
        "end-to-end": req["e2e_s"].to_numpy(dtype=float)
    }


def latency_cap_s(slo: dict[str, float | None]) -> float:
    """Where a latency axis stops: 100 x the largest SLO (1 s without one), at least 10 s. Above it a run is
    overloaded (its queue grows while it runs) and its latencies say how long the run lasted, not how fast it is."""
    slos = [float(v) for v in (slo or {}).values() if v]
    return max(10.0, 100.0 * max(slos, default=1.0))


def percentile_chart(summary: dict[str, Any], slo: dict[str, float | None]) -> go.Figure:
    """The analytical model's latency percentiles (p50, p90, p99) per metric, SLOs marked, log scale; a
    percentile above `latency_cap_s` is drawn at the cap and labelled overloaded."""
    fig = go.Figure()
    cap = latency_cap_s(slo)
    top = 0.0
    for i, (key, name) in enumerate((("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "end-to-end"))):
        qs = [q for q in ("p50", "p90", "p99") if summary.get(f"{key}_{q}_s") == summary.get(f"{key}_{q}_s")]
        heights, labels = clip_seconds([summary[f"{key}_{q}_s"] for q in qs], cap)
        top = max([top, *heights])
        fig.add_trace(
            go.Bar(
                x=qs,
                y=heights,
                name=name,
                marker_color=PALETTE[i],
                marker_pattern_shape=["/" if "overloaded" in t else "" for t in labels],
                text=labels,
                textposition="none",
                hovertemplate=name + " %{x}: %{text}<extra></extra>",
            )
        )
    for key, dash in (("ttft_s", "dash"), ("tpot_s", "dot")):
        if slo.get(key):
            # the label as its own annotation: plotly places an add_hline annotation at 10^y on a log axis
            fig.add_hline(y=slo[key], line_dash=dash, line_color="#555")
            fig.add_annotation(
                y=math.log10(slo[key]),
                yref="y",
                x=0,
                xref="paper",
                xanchor="left",
                yanchor="bottom",
                text=f"{key[:4].upper()} SLO {fmt_seconds(slo[key])}",
                showarrow=False,
                font={"size": 11, "color": "#555"},
                bgcolor="rgba(255,255,255,0.8)",
            )
    title = "Latency percentiles (analytical steady state)"
    if top >= cap:
        title += f"; hatched: overloaded, above {fmt_seconds(cap)}"
    fig.update_layout(
        barmode="group",
        title=title_top(title),
        yaxis_title="seconds (log)",
        yaxis_type="log",
        template="plotly_white",
        legend=LEGEND_TOP,
        margin={"l": 10, "r": 10, "t": 115, "b": 10},
    )
    seconds_axis(fig, "y", dtick=1)
    return fig


def series_chart(series: pd.DataFrame) -> go.Figure:
    """Output tokens/s, running batch and KV-cache use over simulated time (three stacked panels)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=("throughput", "batch", "KV cache")
    )
    for row, (col, name, unit) in enumerate(
        (("output_tok_s", "output tok/s", "tok/s"), ("batch", "running batch", "seqs"), ("kv_used", "KV used", "%")),
        start=1,
    ):
        y = series[col] * (100 if unit == "%" else 1)
        fig.add_trace(
            go.Scatter(x=series["t_s"], y=y, name=name, line={"color": PALETTE[row - 1]}, mode="lines"), row=row, col=1
        )
        fig.update_yaxes(title_text=unit, row=row, col=1)
    fig.add_trace(
        go.Scatter(x=series["t_s"], y=series["waiting"], name="waiting", line={"color": PALETTE[3], "dash": "dot"}),
        row=2,
        col=1,
    )
    fig.update_xaxes(title_text="simulated time (s)", row=3, col=1)
    fig.update_layout(height=620, template="plotly_white", margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def gpu_memory_bytes(gpu: str | None) -> float | None:
    """One ``gpu`` preset's memory, bytes (None for an unknown name)."""
    from moesim.model import list_gpus

    spec = list_gpus().get(str(gpu))
    return float(spec.memory_bytes) if spec is not None else None


def memory_chart(
    memory: dict[str, dict[str, float]], title: str = "Memory on the fullest GPU", capacity_bytes: float | None = None
) -> go.Figure:
    """One stacked horizontal bar per row (GiB): weights by component, KV room, the reserve; a row named
    ``... host (offloaded)`` holds experts in host memory (hatched, outside the GPU). ``capacity_bytes`` draws
    one GPU's memory as a dashed line."""
    fig = go.Figure()
    names: list[str] = []
    for parts in memory.values():
        names += [n for n in parts if n not in names]
    for i, name in enumerate(names):
        fig.add_trace(
            go.Bar(
                y=list(memory),
                x=[memory[role].get(name, 0.0) / 2**30 for role in memory],
                name=name,
                orientation="h",
                marker_color=PALETTE[i % len(PALETTE)],
                marker_pattern_shape="/" if "host" in name else "",
                customdata=[fmt_bytes(memory[role].get(name, 0.0)) for role in memory],
                hovertemplate=name + ": %{customdata}<extra></extra>",
            )
        )
    if capacity_bytes:
        fig.add_vline(
            x=capacity_bytes / 2**30,
            line_dash="dash",
            line_color="#D55E00",
            annotation_text=f"GPU memory {fmt_bytes(capacity_bytes)}",
            annotation_position="top",
        )
    # legend on the right, one entry a line: the figure is as tall as the longer of the bars and the legend
    height = max(140 + 50 * len(memory), legend_height(len(names)))
    fig.update_layout(
        barmode="stack",
        title=title,
        xaxis_title="GiB",
        height=height,
        template="plotly_white",
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
    )
    fig.update_yaxes(automargin=True)
    return fig


def training_breakdown_chart(breakdown: dict[str, float], step_s: float) -> go.Figure:
    """The training step time split by cause (s per step), one stacked bar."""
    fig = go.Figure()
    for i, (name, v) in enumerate(breakdown.items()):
        fig.add_trace(
            go.Bar(
                x=[v],
                y=["step"],
                name=name.replace("_", " "),
                orientation="h",
                marker_color=PALETTE[i % len(PALETTE)],
                hovertemplate=f"{name}: {fmt_seconds(v)} ({fmt_pct(v / step_s)})<extra></extra>" if step_s else None,
            )
        )
    fig.update_layout(
        barmode="stack",
        title="Step time by cause",
        xaxis_title="seconds per step",
        height=legend_height(len(breakdown), 240),
        template="plotly_white",
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return fig
