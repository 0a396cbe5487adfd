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

import math
import pickle
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from moesim.dashboard.format import fmt_count, fmt_pct, fmt_seconds
from moesim.dashboard.logic.placement_charts import (  # noqa: F401  (re-exported for the page and tests)
    LABELS,
    expert_map,
    expert_map_figure,
    gpu_load_figure,
    imbalance_figure,
    loads_figure,
)
from moesim.dashboard.logic.placement_exports import export_file, flags_text  # noqa: F401
from moesim.dashboard.logic.placement_inputs import (  # noqa: F401
    DEFAULT_GPU,
    DEFAULT_MODEL,
    _stats,
    check_layout,
    gpu_names,
    model_info,
    moe_presets,
    node_size,
    stats_caption,
    synthetic_stats,
    uploaded_stats,
)
from moesim.model import MoesimError
from moesim.placement import (  # noqa: F401
    FORMATS,
    IlpOptions,
    PlacementResult,
    gpu_loads,
    place,
)

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
    "solve_s": ("solve time", "%.3f", "Wall-clock time the method took (the ILP's includes building its models)."),
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
#: The metrics table's balance columns (the page shows them apart from the solver's: time, status, gap, layers).
BALANCE_COLUMNS = (
    "busiest_over_mean",
    "worst_layer",
    "balancedness",
    "busiest_over_bound",
    "remote_nodes_per_token",
    "same_gpu_next_layer",
)
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
                f"the ILP ran past {fmt_seconds(cap)} (its time limit is {fmt_seconds(time_limit)}) and was stopped",
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


def solver_display(table: pd.DataFrame) -> pd.DataFrame:
    """The solver's columns of `metrics_table` as text with units (``189 ms``, ``0.0%``, ``32``); ``–`` where a
    heuristic has no such figure (a blank cell, not ``None``)."""
    out = pd.DataFrame({"method": table["method"]})
    if "solve_s" in table:
        out["solve_s"] = [fmt_seconds(v) for v in table["solve_s"]]
    if "status" in table:
        out["status"] = table["status"]
    if "gap" in table:
        out["gap"] = [fmt_pct(v) for v in table["gap"]]
    for c in ("layers_optimal", "layers_fallback"):
        if c in table:
            out[c] = [fmt_count(v) for v in table[c]]
    return out


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
    from moesim.sim.serving.analytical import Analytical
    from moesim.sim.serving.scenario import build, parse_scenario
    from moesim.sim.serving.serve import cost_model_name

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
        "cost_model": cost_model_name(built.cost_model),
    }
    if des:
        from moesim.sim.serving.engine import simulate
        from moesim.sim.serving.serve import des_summary

        d = des_summary(built, simulate(built, sc["seed"]))
        for k in ("tpot_p50_s", "tpot_p99_s", "ttft_p50_s", "ttft_p99_s"):
            out[f"des_{k}"] = d[k]
        out["straggler_frac"] = d["straggler_frac"]
    return out


def latency_table(sims: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per plan (method -> `simulate_plan` figures): the columns of `LATENCY_COLUMNS`, milliseconds.

    An overloaded plan's TTFTs are blank (NaN): its queue grows while the run lasts, so they measure the run's
    length, not the plan; the ``overloaded`` column says so."""
    rows = []
    for m, s in sims.items():
        over = bool(s["overloaded"])
        row = {
            "plan": LABELS.get(m, m),
            "tpot_ms": s["tpot_s"] * 1e3,
            "ttft_p50_ms": math.nan if over else s["ttft_p50_s"] * 1e3,
            "ttft_p99_ms": math.nan if over else s["ttft_p99_s"] * 1e3,
            "step_ms": s["step_s"] * 1e3,
            "overloaded": s["overloaded"],
        }
        if "straggler_frac" in s:
            row |= {f"des_{k}_ms": s[f"des_{k}_s"] * 1e3 for k in ("tpot_p50", "tpot_p99", "ttft_p50", "ttft_p99")}
            row["straggler_share"] = s["straggler_frac"]
        rows.append(row)
    return pd.DataFrame(rows)
