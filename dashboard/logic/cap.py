"""The CAP overview's work: a small grid of serving configurations through the sweep machinery, in process.

The user's choices (models x GPUs x layouts x precisions, one GPU count, a
workload and SLOs) become a sweep mapping (`sim.sweeps.sweep_spec`); its points are
evaluated on the analytical model (`sim.sweeps.sweep_eval.evaluate`), at the chosen
request rate or, with ``capacity``, at each configuration's capacity under the
SLOs; `sim.sweeps.cap.cap_table` turns the rows into one row per
configuration with cost, seconds per token, accuracy, S-MBU, S-MFU and the
Pareto flag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from moesim.model import list_gpus, load_model, preset_names

#: Named layouts offered on the page -> the sweep's layout value (``gpus``: the configuration's GPU count).
LAYOUTS: dict[str, dict[str, Any]] = {
    "TP over all GPUs": {"tp": "gpus"},
    "DP-attention + EP over all GPUs": {"tp": 1, "dp_attn": "gpus", "ep": "gpus"},
    "TP2 + EP2 replicas": {"tp": 2, "dp_attn": 1, "ep": 2},
    "PP2 x TP (half the GPUs each)": {"tp": "half", "pp": 2},
}
PRECISIONS = ("bf16", "fp8", "int4")
GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)
DEFAULTS: dict[str, Any] = {
    "models": ["mixtral-8x7b", "qwen3-30b-a3b"],
    "gpus": ["H100-SXM", "H200-SXM"],
    "num_gpus": 8,
    "layouts": ["DP-attention + EP over all GPUs"],
    "precisions": ["bf16", "fp8"],
    "rate": 20.0,
    "input_mean": 512,
    "output_mean": 256,
    "ttft_s": 2.0,
    "tpot_s": 0.1,
}


@st.cache_data(show_spinner=False)
def moe_models() -> list[str]:
    """Names of the model presets that are Mixture-of-Experts models."""
    return [n for n in preset_names() if load_model(n).is_moe]


@st.cache_data(show_spinner=False)
def gpu_names() -> list[str]:
    """GPU presets (``cpu`` left out: it has no cluster presets to serve on)."""
    return [k for k in list_gpus() if k != "cpu"]


def _layout(name: str, num_gpus: int) -> dict[str, Any]:
    """The sweep layout value of a named layout; ``half`` is half the GPU count (at least 1)."""
    return {k: max(1, num_gpus // 2) if v == "half" else v for k, v in LAYOUTS[name].items()}


def grid_mapping(
    models: list[str],
    gpus: list[str],
    num_gpus: int,
    layouts: list[str],
    precisions: list[str],
    rate: float,
    input_mean: int,
    output_mean: int,
    ttft_s: float,
    tpot_s: float,
    capacity: bool = False,
) -> dict[str, Any]:
    """The sweep mapping (`sim.sweeps.sweep_spec.SweepSpec`) of the page's choices.

    Args:
        rate: offered request rate, req/s (ignored with ``capacity``).
        input_mean, output_mean: mean prompt and output lengths, tokens (lognormal, cv 1).
        ttft_s, tpot_s: the SLOs (p99), s.
        capacity: evaluate each configuration at its capacity (the highest rate meeting the SLOs).
    """
    workload = {
        "arrival": "poisson",
        "rate": rate,
        "requests": 2000,
        "input": {"dist": "lognormal", "mean": input_mean, "cv": 1.0, "max": max(8 * input_mean, 1)},
        "output": {"dist": "lognormal", "mean": output_mean, "cv": 1.0, "max": max(8 * output_mean, 1)},
    }
    base = {
        "model": models[0] if models else "mixtral-8x7b",
        "gpus_per_node": 8,
        "engine": {"max_batch": 256, "max_tokens": 8192},
        "workload": workload,
        "offload": {"enabled": True},
        "slo": {"ttft_s": ttft_s, "tpot_s": tpot_s},
    }
    layout_values = []
    for name in layouts:
        v = _layout(name, num_gpus)
        if v not in layout_values:
            layout_values.append(v)
    spec: dict[str, Any] = {
        "name": "cap-overview",
        "base": base,
        "axes": {
            "model": list(models),
            "gpu": list(gpus),
            "gpus": [num_gpus],
            "layout": layout_values,
            "precision": list(precisions),
        },
        "constraints": {"memory_fits": True, "layout_divides": True},
        "engine": "analytical",
    }
    if capacity:
        spec["capacity"] = {"percentile": 99, "ttft_s": ttft_s, "tpot_s": tpot_s}
    return spec


@st.cache_data(show_spinner=False, max_entries=32)
def _expand(mapping: dict[str, Any]) -> tuple[Any, list[Any], dict[str, int]]:
    """The validated spec, its points and the pruned counts of a grid mapping."""
    from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

    spec = parse_sweep(mapping, "the CAP overview's choices")
    exp = expand(spec)
    return spec, exp.points, dict(exp.pruned)


@st.cache_data(show_spinner=False, max_entries=4096)
def _row(point_id: str, engine: str, _point: Any, _spec: Any) -> dict[str, Any]:
    """One point's result row (`sim.sweeps.sweep_eval.evaluate`), cached by its id (which hashes its whole scenario)."""
    from moesim.sim.sweeps.sweep_eval import evaluate

    return evaluate(_point, _spec)


def evaluate_grid(
    mapping: dict[str, Any], progress: Callable[[int, int, str], None] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int], dict[str, dict[str, Any]]]:
    """Evaluate a grid mapping point by point in this process (each point cached).

    Args:
        mapping: a sweep mapping (`grid_mapping`).
        progress: called with (points done, points, label) after each point.

    Returns:
        (results [points] as `sim.sweeps.sweep_eval.evaluate` rows with ``accuracy`` added,
        the `cap_table` [configurations], pruned reason -> count, label -> scenario mapping).

    Raises:
        MoesimError: a bad choice (nothing left after pruning, an unknown GPU).
    """
    from moesim.sim.sweeps.sweep_post import accuracy_columns
    from moesim.sim.sweeps.sweep_report import cap_table

    spec, points, pruned = _expand(mapping)
    rows = []
    for i, p in enumerate(points):
        rows.append(_row(p.point_id, spec.engine, p, spec))
        if progress is not None:
            progress(i + 1, len(points), p.values["label"])
    df, _ = accuracy_columns(pd.DataFrame(rows), spec.accuracy_benchmark)
    scenarios = {p.values["label"]: p.scenario for p in points}
    return df, cap_table(df), pruned, scenarios


def failed_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The points that did not give figures: label, status and the one-line reason."""
    bad = df[df["status"].isin(["error", "overloaded", "slo_unmet"])]
    cols = [c for c in ("label", "status", "error", "overload_reason") if c in bad.columns]
    return bad[cols].reset_index(drop=True)
