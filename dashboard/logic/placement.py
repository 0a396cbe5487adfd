"""The Placement studio's logic: routing statistics, round-robin vs greedy (EPLB) vs ILP, simulated latency, files.

Cached functions over the public API of `placement` and `sim`, and the page's plotly figures. Everything returned is
plain data: dicts of numpy arrays and numbers, DataFrames, bytes.

Shapes and units:

- statistics (`synthetic_stats`, `uploaded_stats`): ``counts`` [L, N] (token, expert) pairs per MoE layer and routed
  expert, ``topk`` [T, L, k] int32 expert ids per token (or None), ``top_k``, ``source``, ``digest``;
- a placement result (`run_greedy`, `run_ilp`): ``phys_to_log`` [L, S] logical expert of each physical slot (GPU g
  holds slots ``g*S/G .. (g+1)*S/G - 1``), ``gpu_loads`` [L, G] load per GPU in the units of ``counts``,
  ``layer_max_load`` [L] the busiest GPU's load, ``metrics`` (`placement.plan_metrics` plus how it was solved:
  ``solve_s`` seconds, ``status``, ``gap``), ``plan`` (`PlacementPlan.to_dict`).

The ILP runs in a child process with a hard wall-clock cap (`ilp_cap_s`): its time limit is a target the solver can
overrun by a wide margin on one-node layouts with redundant slots, and a page must not hang.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from moesim.dashboard.logic.charts import PALETTE, heatmap
from moesim.model import MoesimError, list_gpus, load_model, preset_names
from moesim.placement import (
    FORMATS,
    IlpOptions,
    PlacementPlan,
    PlacementResult,
    RoutingStats,
    export_plan,
    gpu_loads,
    launch_flags,
    load_stats,
    place,
    synthetic_trace,
)

#: The model shown first: 32 MoE layers of 8 experts, whose ILP solves in well under a second on 4 GPUs.
DEFAULT_MODEL = "mixtral-8x7b"
DEFAULT_GPU = "H100-SXM"
#: How each method is called on the page.
LABELS = {"round-robin": "round-robin (before)", "eplb": "greedy EPLB", "ilp": "ILP"}
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 50, "b": 10}, "template": "plotly_white"}

#: The metrics table's columns: key -> (label, number format or None for text, tooltip with units).
METRIC_COLUMNS: dict[str, tuple[str, str | None, str]] = {
    "method": (
        "method",
        None,
        "round-robin: slot s holds expert s mod N (what engines do without a plan); greedy EPLB: DeepSeek's "
        "replicate-heaviest-then-pack balancer; ILP: moesim's integer program, never worse than EPLB on a layer.",
    ),
    "busiest_over_mean": (
        "busiest / mean",
        "%.3f",
        "Busiest GPU's load / mean GPU load, averaged over MoE layers. 1.0 is perfect balance; every MoE layer "
        "waits for its busiest GPU, so this is the expert-compute slowdown.",
    ),
    "worst_layer": ("worst layer", "%.3f", "Busiest / mean GPU load in the worst MoE layer."),
    "balancedness": (
        "balancedness",
        "%.3f",
        "Mean / busiest GPU load, averaged over layers (0..1, 1 is perfect): the share of GPU time in the expert "
        "layers not spent waiting for the busiest GPU.",
    ),
    "busiest_over_bound": (
        "busiest / bound",
        "%.3f",
        "Busiest GPU's load over a lower bound no placement with these slots can beat (the larger of the mean load "
        "and the best load per replica), averaged over layers. 1.0: provably optimal balance.",
    ),
    "remote_nodes_per_token": (
        "remote nodes / token",
        "%.3f",
        "Expected nodes other than its own that a token's dispatch reaches per MoE layer (0 on one node). Fewer "
        "means less inter-node all-to-all traffic.",
    ),
    "same_gpu_next_layer": (
        "same GPU next layer",
        "percent",
        "Share of a token's consecutive-layer expert pairs served on one GPU (needs a per-token trace).",
    ),
    "solve_s": ("solve (s)", "%.3f", "Wall-clock seconds the method took (the ILP's includes building its models)."),
    "status": (
        "status",
        None,
        "How the method finished, as the library reports it: heuristic (no proof), optimal (proven within the MIP "
        "gap on every layer), 'work limit' (some search stopped at its node limit: reproducible) or 'time limit' "
        "(the time cap stopped some search: the plan may differ between runs).",
    ),
    "gap": (
        "MIP gap",
        "percent",
        "The ILP's largest relative MIP gap over its solves: how far its plan may be from the optimum of its "
        "objective (0% = proven optimal). Blank for the heuristics or when the solver gave no bound.",
    ),
    "layers_optimal": ("layers optimal", "%d", "MoE layers whose every ILP stage was proven optimal."),
    "layers_fallback": (
        "layers kept EPLB",
        "%d",
        "MoE layers where the ILP's plan was no better than EPLB's, so EPLB's plan was kept.",
    ),
}
#: The latency table's columns: key -> (label, number format or None, tooltip with units).
LATENCY_COLUMNS: dict[str, tuple[str, str | None, str]] = {
    "plan": ("plan", None, "The placement the simulated engine runs."),
    "tpot_ms": (
        "TPOT (ms)",
        "%.3f",
        "Analytical model: time per output token, ms (the mean decode step at steady state; the model gives one "
        "value, so its p50 = p99).",
    ),
    "ttft_p50_ms": ("TTFT p50 (ms)", "%.2f", "Analytical model: median time to first token, ms (queue + prefill)."),
    "ttft_p99_ms": ("TTFT p99 (ms)", "%.2f", "Analytical model: 99th-percentile time to first token, ms."),
    "step_ms": (
        "step (ms)",
        "%.3f",
        "Analytical model: mean engine step, ms (each MoE layer waits for the expected busiest GPU).",
    ),
    "overloaded": ("overloaded", None, "The analytical model found no steady state at this rate (see the caption)."),
    "des_tpot_p50_ms": ("DES TPOT p50 (ms)", "%.3f", "Discrete-event simulation: median time per output token, ms."),
    "des_tpot_p99_ms": ("DES TPOT p99 (ms)", "%.3f", "Discrete-event simulation: p99 time per output token, ms."),
    "des_ttft_p50_ms": ("DES TTFT p50 (ms)", "%.2f", "Discrete-event simulation: median time to first token, ms."),
    "des_ttft_p99_ms": ("DES TTFT p99 (ms)", "%.2f", "Discrete-event simulation: p99 time to first token, ms."),
    "straggler_share": (
        "DES straggler share",
        "percent",
        "Discrete-event simulation: time the MoE layers waited for the busiest GPU over all step time. Each step "
        "draws its own routing, so even a balanced plan has some.",
    ),
}
#: What each export format is for (download tooltips).
FORMAT_HELP: dict[str, str] = {
    "sglang": "SGLang: --init-expert-location JSON (rows are decoder layers).",
    "eplb": "DeepSeek EPLB arrays phy2log / log2phy / logcnt as .npz and .json (zip).",
    "vllm": "vLLM EplbState physical_to_logical_map JSON (upstream vLLM cannot load it; for patched loaders).",
    "vllm-ascend": "vLLM-Ascend eplb_config.expert_map_path JSON.",
    "trtllm": "TensorRT-LLM extra LLM API options + MoeLoadBalancerConfig YAML (zip; the options file names the "
    "balancer file relative to where you start the server).",
}


def column_config(columns: dict[str, tuple[str, str | None, str]]) -> dict[str, Any]:
    """`st.dataframe` column settings from `METRIC_COLUMNS` / `LATENCY_COLUMNS` (label, number format, tooltip)."""
    return {
        k: st.column_config.NumberColumn(label, help=h, format=f) if f else st.column_config.Column(label, help=h)
        for k, (label, f, h) in columns.items()
    }


# models -------------------------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False)
def moe_presets() -> list[str]:
    """Names of the model presets with routed experts, sorted."""
    return [name for name in preset_names() if load_model(name).is_moe]


@st.cache_data(show_spinner=False)
def gpu_names() -> list[str]:
    """GPU keys the simulator knows, without the host CPU."""
    return [k for k in list_gpus() if k != "cpu"]


@st.cache_data(show_spinner=False)
def model_info(name: str) -> dict[str, Any]:
    """What placement needs of a preset: ``moe_layer_ids`` [L] (decoder index of each MoE layer), ``num_layers``
    (decoder layers), ``num_experts`` N, ``top_k``, ``n_group`` and ``topk_group`` (DeepSeek group routing)."""
    spec = load_model(name)
    if spec.moe is None or not spec.is_moe:
        raise MoesimError(f"model {name} has no MoE layers", "choose an MoE model")
    moe = spec.moe
    return {
        "moe_layer_ids": [i for i, m in enumerate(spec.moe_layers) if m],
        "num_layers": spec.num_layers,
        "num_experts": moe.num_experts,
        "top_k": moe.top_k,
        "n_group": moe.n_group,
        "topk_group": moe.topk_group if moe.n_group > 1 else 1,
    }


# routing statistics -------------------------------------------------------------------------------------------------
def _stats_dict(stats: RoutingStats, source: str) -> dict[str, Any]:
    topk = None if stats.topk is None else stats.topk.astype(np.int32)
    h = hashlib.blake2b(stats.counts.tobytes(), digest_size=12)
    if topk is not None:
        h.update(topk.tobytes())
    return {"counts": stats.counts, "topk": topk, "top_k": stats.top_k, "source": source, "digest": h.hexdigest()}


def _stats(d: dict[str, Any]) -> RoutingStats:
    """`RoutingStats` back from a statistics dict."""
    return RoutingStats(counts=d["counts"], top_k=d["top_k"], topk=d["topk"], source=d["source"])


@st.cache_data(show_spinner=False, max_entries=8)
def synthetic_stats(model: str, tokens: int, skew: float, seed: int) -> dict[str, Any]:
    """A synthetic per-token trace for ``model`` (power-law popularity with exponent ``skew``, layer-to-layer
    affinity, the model's group routing), as a statistics dict (see the module docstring)."""
    info = model_info(model)
    stats = synthetic_trace(
        len(info["moe_layer_ids"]),
        info["num_experts"],
        info["top_k"],
        tokens=tokens,
        alpha=skew,
        affinity=2.0,
        n_group=info["n_group"],
        topk_group=info["topk_group"],
        seed=seed,
    )
    return _stats_dict(stats, f"synthetic ({tokens:,} tokens, skew {skew:g}, seed {seed})")


def _safe_name(name: str, i: int) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name).lstrip(".") or "upload"
    return base if i == 0 else f"{i}_{base}"


@st.cache_data(show_spinner=False, max_entries=8)
def uploaded_stats(model: str, files: tuple[tuple[str, bytes], ...]) -> dict[str, Any]:
    """Statistics from uploaded files (name, content), read with `placement.load_stats` for ``model``.

    One file is read as itself; several as the rank files of one run (merged). Raises `MoesimError` naming the
    uploaded file (not the temporary path) when the data cannot be read or does not fit the model.
    """
    if not files:
        raise MoesimError("no routing-statistics file uploaded", "upload a file")
    info = model_info(model)
    names = ", ".join(name for name, _ in files)
    with tempfile.TemporaryDirectory(prefix="moesim-upload-") as tmp:
        folder = Path(tmp)
        paths = []
        for i, (name, data) in enumerate(files):
            paths.append(folder / _safe_name(name, i))
            paths[-1].write_bytes(data)
        try:
            stats = load_stats(
                paths[0] if len(paths) == 1 else folder,
                num_experts=info["num_experts"],
                moe_layer_ids=info["moe_layer_ids"],
            )
            stats.check_shape(len(info["moe_layer_ids"]), info["num_experts"], f"model {model}")
        except MoesimError as exc:
            msg = exc.message.replace(f"{folder}{os.sep}", "").replace(str(folder), "the uploaded files")
            raise MoesimError(msg, exc.hint) from None
    return _stats_dict(stats, names)


def stats_caption(stats: dict[str, Any]) -> str:
    """One line describing a statistics dict."""
    layers, n = stats["counts"].shape
    trace = f"a trace of {stats['topk'].shape[0]:,} tokens" if stats["topk"] is not None else "counts only"
    k = f", top-{stats['top_k']}" if stats["top_k"] else ""
    return f"{stats['source']}: {layers} MoE layers x {n} experts{k}, {trace}, {stats['counts'].sum():,.0f} pairs."


# placement ----------------------------------------------------------------------------------------------------------
def node_size(num_gpus: int, gpus_per_node: int) -> int:
    """GPUs per node the expert-parallel group uses: a group smaller than a node sits on one node."""
    return min(num_gpus, gpus_per_node)


def check_layout(num_experts: int, num_gpus: int, gpus_per_node: int, redundant: int) -> None:
    """Raise the library's `MoesimError` when ``num_experts`` + ``redundant`` slots do not fit ``num_gpus`` GPUs in
    nodes of ``gpus_per_node`` (a round-robin placement of one dummy layer, microseconds)."""
    place(RoutingStats(np.ones((1, num_experts))), num_gpus, gpus_per_node, redundant, ("round-robin",))


def _result(r: PlacementResult, counts: np.ndarray) -> dict[str, Any]:
    p2l = r.plan.phys_to_log
    return {
        "phys_to_log": p2l,
        "gpu_loads": gpu_loads(p2l, counts, r.plan.num_gpus),
        "layer_max_load": r.layer_max_load,
        "metrics": r.metrics,
        "plan": r.plan.to_dict(),
    }


def _place_args(
    stats: dict[str, Any], model: str, num_gpus: int, gpus_per_node: int, redundant: int
) -> tuple[tuple, dict[str, Any]]:
    info = model_info(model)
    args = (_stats(stats), num_gpus, gpus_per_node, redundant)
    kwargs = {
        "num_groups": info["n_group"],
        "moe_layer_ids": info["moe_layer_ids"],
        "num_hidden_layers": info["num_layers"],
    }
    return args, kwargs


@st.cache_data(show_spinner=False, max_entries=16)
def run_greedy(
    stats: dict[str, Any], model: str, num_gpus: int, gpus_per_node: int, redundant: int
) -> dict[str, dict[str, Any]]:
    """Round-robin and DeepSeek's greedy EPLB: method -> placement result (see the module docstring)."""
    args, kwargs = _place_args(stats, model, num_gpus, gpus_per_node, redundant)
    res = place(*args, methods=("round-robin", "eplb"), **kwargs)
    return {m: _result(r, stats["counts"]) for m, r in res.items()}


_CHILD = """
import pickle, sys, traceback
from moesim.model import MoesimError
from moesim.placement import place
args, kwargs = pickle.loads(open(sys.argv[1], "rb").read())
try:
    out = ("ok", place(*args, **kwargs))
except MoesimError as exc:
    out = ("error", exc.message, exc.hint)
except Exception as exc:
    last = traceback.extract_tb(exc.__traceback__)[-1]
    out = ("bug", f"{type(exc).__name__}: {exc} in {last.filename.rsplit('/', 1)[-1]}:{last.lineno}", "")
open(sys.argv[2], "wb").write(pickle.dumps(out))
"""


def ilp_cap_s(time_limit: float) -> float:
    """Wall seconds after which the ILP's process is stopped: its time limit x 4 plus 20 s of start-up and slack."""
    return 4.0 * time_limit + 20.0


@st.cache_data(show_spinner=False, max_entries=16)
def run_ilp(
    stats: dict[str, Any],
    model: str,
    num_gpus: int,
    gpus_per_node: int,
    redundant: int,
    time_limit: float,
    seed: int = 0,
) -> dict[str, Any]:
    """moesim's placement ILP (HiGHS, one process, ``time_limit`` seconds for all layers), as a placement result.

    Runs `placement.place` in a child Python process stopped after `ilp_cap_s` seconds. Raises `MoesimError` when
    the ILP fails or runs past the cap, `RuntimeError` for a bug in the solver code (its message).
    """
    args, kwargs = _place_args(stats, model, num_gpus, gpus_per_node, redundant)
    kwargs |= {"methods": ("ilp",), "options": IlpOptions(time_limit=float(time_limit), workers=1, seed=seed)}
    cap = ilp_cap_s(time_limit)
    with tempfile.TemporaryDirectory(prefix="moesim-ilp-") as tmp:
        src, dst = Path(tmp) / "in.pkl", Path(tmp) / "out.pkl"
        src.write_bytes(pickle.dumps((args, kwargs)))
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, str(src), str(dst)],
                cwd=tmp,  # moesim comes from the parent's install (wheel or editable) and PYTHONPATH, as here
                capture_output=True,
                text=True,
                timeout=cap,
            )
        except subprocess.TimeoutExpired:
            raise MoesimError(
                f"the ILP ran past {cap:.0f} s (its time limit is {time_limit:g} s) and was stopped",
                "lower the time limit or the redundant slots, or spread the GPUs over more nodes; "
                "the round-robin and greedy results stand",
            ) from None
        if not dst.is_file():
            tail = " ".join(proc.stderr.strip().splitlines()[-1:])[:300]
            raise RuntimeError(f"the ILP process exited with code {proc.returncode}: {tail}")
        out = pickle.loads(dst.read_bytes())
    if out[0] == "error":
        raise MoesimError(out[1], out[2])
    if out[0] == "bug":
        raise RuntimeError(out[1])
    return _result(out[1]["ilp"], stats["counts"])


def metrics_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per method: the columns of `METRIC_COLUMNS` (ratios, fractions; ``solve_s`` seconds; ``gap`` a
    fraction or NaN; ILP layer counts or NaN for the heuristics)."""
    rows = []
    for m, r in results.items():
        x = r["metrics"]
        gap = x.get("gap")
        rows.append(
            {
                "method": LABELS.get(m, m),
                "busiest_over_mean": x["max_load_ratio"],
                "worst_layer": x["max_load_ratio_worst"],
                "balancedness": x["balancedness"],
                "busiest_over_bound": x["max_over_lb"],
                "remote_nodes_per_token": x["inter_node_sends_per_token"],
                "same_gpu_next_layer": np.nan if x.get("cross_layer_locality") is None else x["cross_layer_locality"],
                "solve_s": x["solve_s"],
                "status": str(x.get("status", "")),
                "gap": np.nan if gap is None else float(gap),
                "layers_optimal": x.get("layers_optimal", np.nan),
                "layers_fallback": x.get("layers_fallback", np.nan),
            }
        )
    return pd.DataFrame(rows)


# simulated latency --------------------------------------------------------------------------------------------------
def scenario(
    model: str, gpu: str, num_gpus: int, gpus_per_node: int, rate: float, requests: int, seed: int
) -> dict[str, Any]:
    """The serving scenario the plans are compared on: one replica, attention data-parallel and experts split over
    the ``num_gpus`` GPUs (EP = ``num_gpus``), Poisson arrivals at ``rate`` req/s, lognormal prompts (mean 512
    tokens) and outputs (mean 128 tokens)."""
    return {
        "name": "placement-studio",
        "model": model,
        "gpu": gpu,
        "nodes": num_gpus // gpus_per_node,
        "gpus_per_node": gpus_per_node,
        "layout": {"tp": 1, "dp_attn": num_gpus, "ep": num_gpus},
        "replicas": 1,
        "workload": {
            "arrival": "poisson",
            "rate": float(rate),
            "requests": int(requests),
            "input": {"dist": "lognormal", "mean": 512, "cv": 1.0, "max": 4096},
            "output": {"dist": "lognormal", "mean": 128, "cv": 1.0, "max": 1024},
        },
        "seed": int(seed),
    }


@st.cache_data(show_spinner=False, max_entries=64)
def simulate_plan(sc: dict, counts: np.ndarray, phys_to_log: np.ndarray, des: bool) -> dict[str, Any]:
    """Serving figures of scenario ``sc`` with routing loads ``counts`` [L, N] and placement ``phys_to_log`` [L, S].

    The analytical model always (``tpot_s``, ``ttft_p50_s``, ``ttft_p99_s``, ``step_s``, ``throughput_tok_s``,
    ``overloaded``, ``overload_reason``); with ``des`` also the discrete-event simulator (``des_tpot_p50_s``,
    ``des_tpot_p99_s``, ``des_ttft_p50_s``, ``des_ttft_p99_s``, ``straggler_frac``). Seconds.
    """
    from moesim.sim.analytical import Analytical
    from moesim.sim.scenario import build, parse_scenario

    built = build(parse_scenario(sc, "placement studio scenario"))
    shares = np.asarray(counts, float)
    built = replace(built, loads=shares / shares.sum(axis=1, keepdims=True), phys_to_log=np.asarray(phys_to_log))
    s = Analytical(built, sc["seed"]).summary()
    out: dict[str, Any] = {
        "tpot_s": s["tpot_p50_s"],
        "ttft_p50_s": s["ttft_p50_s"],
        "ttft_p99_s": s["ttft_p99_s"],
        "step_s": s["step_s"],
        "throughput_tok_s": s["throughput_tok_s"],
        "overloaded": bool(s["overloaded"]),
        "overload_reason": s["overload_reason"],
    }
    if des:
        from moesim.sim.engine import simulate
        from moesim.sim.serve import des_summary

        d = des_summary(built, simulate(built, sc["seed"]))
        for k in ("tpot_p50_s", "tpot_p99_s", "ttft_p50_s", "ttft_p99_s"):
            out[f"des_{k}"] = d[k]
        out["straggler_frac"] = d["straggler_frac"]
    return out


def latency_table(sims: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per plan (method -> `simulate_plan` figures): the columns of `LATENCY_COLUMNS`, milliseconds."""
    rows = []
    for m, s in sims.items():
        row = {
            "plan": LABELS.get(m, m),
            "tpot_ms": s["tpot_s"] * 1e3,
            "ttft_p50_ms": s["ttft_p50_s"] * 1e3,
            "ttft_p99_ms": s["ttft_p99_s"] * 1e3,
            "step_ms": s["step_s"] * 1e3,
            "overloaded": s["overloaded"],
        }
        if "straggler_frac" in s:
            row |= {f"des_{k}_ms": s[f"des_{k}_s"] * 1e3 for k in ("tpot_p50", "tpot_p99", "ttft_p50", "ttft_p99")}
            row["straggler_share"] = s["straggler_frac"]
        rows.append(row)
    return pd.DataFrame(rows)


# downloads ----------------------------------------------------------------------------------------------------------
_MIME = {".json": "application/json", ".yaml": "application/x-yaml", ".npz": "application/octet-stream"}


@st.cache_data(show_spinner=False, max_entries=64)
def export_file(plan: dict[str, Any], fmt: str) -> tuple[str, bytes, str, str]:
    """``plan`` (`PlacementPlan.to_dict`) in engine format ``fmt``: (download name, content, MIME type, the file
    the launch flags name).

    One file is offered as itself, several as a zip named ``{method}_{fmt}.zip``. TensorRT-LLM's options file names
    the balancer file by the absolute path it was written to; here that is the temporary folder, so the name is made
    relative (``trtllm_load_balancer.yaml``, resolved from where the server starts).
    """
    p = PlacementPlan.from_dict(plan)
    with tempfile.TemporaryDirectory(prefix="moesim-export-") as tmp:
        folder = Path(tmp).resolve()
        files = export_plan(p, fmt, folder)
        blobs = [(f.name, f.read_bytes().replace(f"{folder}{os.sep}".encode(), b"")) for f in files]
    first = blobs[0][0]
    if len(blobs) == 1:
        return first, blobs[0][1], _MIME.get(Path(first).suffix, "application/octet-stream"), first
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in blobs:
            z.writestr(name, data)
    return f"{p.method or 'plan'}_{fmt}.zip", buf.getvalue(), "application/zip", first


@st.cache_data(show_spinner=False, max_entries=16)
def flags_text(plan: dict[str, Any]) -> str:
    """The launch flags of every format for ``plan`` (`PlacementPlan.to_dict`), one commented block per engine,
    naming the files `export_file` offers."""
    p = PlacementPlan.from_dict(plan)
    blocks = [f"# moesim {p.method} plan: {p.num_layers} MoE layers, {p.num_slots} slots on {p.num_gpus} GPUs"]
    for fmt in FORMATS:
        name, _, _, first = export_file(plan, fmt)
        blocks.append(f"# {fmt} ({name})\n{launch_flags(p, fmt, first)}")
    return "\n\n".join(blocks) + "\n"


# figures ------------------------------------------------------------------------------------------------------------
def loads_figure(counts: np.ndarray) -> go.Figure:
    """Heatmap of expert loads ``counts`` [L, N], each relative to its layer's mean expert (1 = average)."""
    rel = counts / counts.mean(axis=1, keepdims=True)
    layers, n = counts.shape
    fig = heatmap(
        rel,
        x=range(n),
        y=range(layers),
        title="Expert load per MoE layer (1 = the layer's mean expert)",
        colorbar="load ÷ mean",
        x_title="expert",
        y_title="MoE layer",
        text_fmt=".2f",
    )
    fig.update_layout(height=max(320, min(900, 60 + 14 * layers)))
    return fig


def gpu_load_figure(results: dict[str, dict[str, Any]], layer: int) -> go.Figure:
    """Grouped bars: each GPU's load in MoE layer ``layer`` relative to the mean GPU (1 = balanced), per method."""
    fig = go.Figure()
    for i, (m, r) in enumerate(results.items()):
        loads = r["gpu_loads"][layer]
        rel = loads / loads.mean()
        fig.add_trace(
            go.Bar(
                x=[f"GPU {g}" for g in range(loads.size)],
                y=rel,
                name=LABELS.get(m, m),
                marker_color=PALETTE[i % len(PALETTE)],
                hovertemplate="%{x}: %{y:.3f} x mean<extra>" + LABELS.get(m, m) + "</extra>",
            )
        )
    fig.add_hline(y=1.0, line_dash="dot", line_color="#444")
    fig.update_layout(
        barmode="group",
        title=f"Per-GPU load, MoE layer {layer}",
        yaxis_title="load ÷ mean GPU load",
        legend={"orientation": "h", "y": -0.2},
        **_LAYOUT,
    )
    return fig


def imbalance_figure(results: dict[str, dict[str, Any]]) -> go.Figure:
    """Busiest / mean GPU load per MoE layer, one line per method."""
    fig = go.Figure()
    for i, (m, r) in enumerate(results.items()):
        ratio = r["layer_max_load"] / r["gpu_loads"].mean(axis=1)
        fig.add_trace(
            go.Scatter(
                x=np.arange(ratio.size),
                y=ratio,
                name=LABELS.get(m, m),
                mode="lines+markers",
                line={"color": PALETTE[i % len(PALETTE)]},
                hovertemplate="layer %{x}: %{y:.3f}<extra>" + LABELS.get(m, m) + "</extra>",
            )
        )
    fig.add_hline(y=1.0, line_dash="dot", line_color="#444")
    fig.update_layout(
        title="Busiest / mean GPU load per MoE layer (1 = balanced)",
        xaxis_title="MoE layer",
        yaxis_title="busiest ÷ mean",
        legend={"orientation": "h", "y": -0.2},
        **_LAYOUT,
    )
    return fig


def expert_map(phys_to_log: np.ndarray, counts: np.ndarray, num_gpus: int, layer: int) -> np.ndarray:
    """[G, N] share (%) of MoE layer ``layer``'s load that each GPU serves for each expert; NaN where the GPU holds
    no replica of it. An expert's load is split equally over its replicas."""
    row, w = phys_to_log[layer], counts[layer]
    n = w.size
    replicas = np.bincount(row, minlength=n)
    held = np.zeros((num_gpus, n))
    np.add.at(held, (np.arange(row.size) // (row.size // num_gpus), row), 1.0)
    share = held * (w / np.maximum(replicas, 1) / w.sum() * 100)[None, :]
    return np.where(held > 0, share, np.nan)


def expert_map_figure(result: dict[str, Any], counts: np.ndarray, layer: int, label: str) -> go.Figure:
    """Heatmap GPU x expert of `expert_map` for one method's plan."""
    p2l = result["phys_to_log"]
    g = result["gpu_loads"].shape[1]
    z = expert_map(p2l, counts, g, layer)
    fig = heatmap(
        z,
        x=range(counts.shape[1]),
        y=[f"GPU {i}" for i in range(g)],
        title=f"{label}: which GPU serves which expert, MoE layer {layer} (% of the layer's load; blank: not held)",
        colorbar="% of load",
        x_title="expert",
        y_title="GPU",
        text_fmt=".1f",
    )
    fig.update_layout(height=max(260, min(700, 80 + 28 * g)))
    return fig
