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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import streamlit as st

from moesim.model import list_gpus, load_model, preset_names

if TYPE_CHECKING:
    import plotly.graph_objects as go

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


# --------------------------------------------------------------------------------------------------------------
# figures: the cost-speed front and the throughput-interactivity frontier (plotly, the configuration in the hover)

_FIG_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 50, "b": 10}, "template": "plotly_white", "height": 460}


def _traces_by_gpu(
    fig: go.Figure,
    rows: pd.DataFrame,
    x: np.ndarray,
    y: np.ndarray,
    custom: np.ndarray,
    hover: str,
    marker: dict[str, Any],
) -> None:
    """One marker trace per GPU of ``rows`` (its ``gpu`` column; one ``all`` trace without it), coloured from the
    palette, with the rows' hover data ``custom`` [rows, fields] and template ``hover``."""
    import plotly.graph_objects as go

    from moesim.dashboard.logic.charts import PALETTE

    groups = rows["gpu"].astype(str).to_numpy() if "gpu" in rows else np.array(["all"] * len(rows))
    for i, g in enumerate(sorted(set(groups))):
        m = groups == g
        fig.add_trace(
            go.Scatter(
                x=x[m], y=y[m], mode="markers", name=g, customdata=custom[m], hovertemplate=hover,
                marker=marker | {"color": PALETTE[i % len(PALETTE)]},
            )
        )  # fmt: skip


def frontier_dataframe(points: pd.DataFrame) -> None:
    """The frontier table of `frontier_table` on the page, the columns `FRONTIER_SHOWN` with units."""
    cc = st.column_config
    st.dataframe(
        frontier_table(points),
        hide_index=True,
        column_order=FRONTIER_SHOWN,
        height=320,
        column_config={
            "tok_s_per_user": cc.NumberColumn("tok/s per user", format="%.0f"),
            "tok_s_per_gpu": cc.NumberColumn("tok/s per GPU", format="%.0f"),
            "tpot_s": cc.NumberColumn("TPOT (s)", format="%.4f"),
            "rate_req_s": cc.NumberColumn("req/s", format="%.3g"),
            "usd_per_mtok": cc.NumberColumn("$/M tok", format="%.3f"),
        },
    )


def _config_text(df: pd.DataFrame) -> list[str]:
    """One hover line per row naming its configuration (the columns of `FRONTIER_CONFIG` present)."""
    from moesim.sim.sweeps.cap import FRONTIER_CONFIG

    cols = [c for c in FRONTIER_CONFIG if c in df.columns and c not in ("engine", "gpus")]
    return [
        " · ".join(f"{c} {v}" for c, v in zip(cols, vals, strict=True) if v == v and v is not None)
        for vals in df[cols].itertuples(index=False, name=None)
    ]


def _log_if_wide(values: np.ndarray) -> str:
    """``log`` for an axis whose positive values span more than a factor of 20, else ``linear``."""
    v = values[np.isfinite(values) & (values > 0)]
    return "log" if v.size and v.max() / v.min() > 20 else "linear"


def pareto_figure(table: pd.DataFrame) -> go.Figure:
    """Cost ($ per M output tokens) against time per output token (ms), one marker per configuration of a
    `sim.sweeps.cap.cap_table`. The dashed staircase is this plot's own two-axis front (`front_2d`); membership
    of the three-axis CAP front (cost, speed, accuracy: the table's ``pareto``) is an open square, since a
    configuration can be on it for its accuracy alone. No text on the plot: every figure is in the hover."""
    import plotly.graph_objects as go

    from moesim.dashboard.logic.charts import LEGEND_INSIDE
    from moesim.sim.sweeps.cap import front_2d

    cost = pd.to_numeric(table["cost_usd_per_mtok"], errors="coerce").to_numpy(float)
    spt = pd.to_numeric(table["s_per_token"], errors="coerce").to_numpy(float)
    t = table[np.isfinite(cost) & np.isfinite(spt) & (cost > 0) & (spt > 0)].reset_index(drop=True)
    fig = go.Figure()
    if t.empty:
        fig.add_annotation(
            text="no configuration with both cost and speed", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
        fig.update_layout(title="Cost vs speed", **_FIG_LAYOUT)
        return fig
    x, y = t["s_per_token"].to_numpy(float) * 1e3, t["cost_usd_per_mtok"].to_numpy(float)
    acc = pd.to_numeric(t.get("accuracy", pd.Series(np.nan, index=t.index)), errors="coerce").to_numpy(float)
    custom = np.column_stack(
        [
            t["label"].astype(str),
            [f"{a:.1f}" if a == a else "not published" for a in acc],
            [f"{v:,.0f}" if v == v else "-" for v in pd.to_numeric(t["throughput_tok_s"], errors="coerce")],
            t["throughput_basis"].astype(str) if "throughput_basis" in t else [""] * len(t),
            _config_text(t),
        ]
    )
    hover = (
        "<b>%{customdata[0]}</b><br>%{x:.3g} ms per output token · $%{y:.3g} per M output tokens<br>"
        "accuracy %{customdata[1]} · %{customdata[2]} output tok/s (%{customdata[3]})<br>"
        "%{customdata[4]}<extra></extra>"
    )
    _traces_by_gpu(fig, t, x, y, custom, hover, {"size": 10})
    three = t["pareto"].to_numpy(dtype=bool) if "pareto" in t else np.zeros(len(t), dtype=bool)
    if three.any():
        fig.add_trace(
            go.Scatter(
                x=x[three],
                y=y[three],
                mode="markers",
                name="on the cost-speed-accuracy front",
                marker={"symbol": "square-open", "size": 18, "color": "#b2182b", "line": {"width": 1.5}},
                customdata=custom[three],
                hovertemplate=hover,
            )
        )
    front = np.flatnonzero(front_2d(x, y, "min", "min"))
    front = front[np.lexsort((y[front], x[front]))]
    fig.add_trace(
        go.Scatter(
            x=x[front],
            y=y[front],
            mode="lines+markers",
            name="cost-speed front (this plot)",
            line={"color": "#222", "dash": "dash", "shape": "hv", "width": 1.2},
            marker={"symbol": "circle-open", "size": 16, "color": "#222", "line": {"width": 2}},
            customdata=custom[front],
            hovertemplate=hover,
        )
    )
    fig.update_layout(
        title="Cost vs time per token (lower left: better)",
        xaxis_title="time per output token (ms)",
        yaxis_title="$ per million output tokens",
        xaxis_type=_log_if_wide(x),
        yaxis_type=_log_if_wide(y),
        legend=LEGEND_INSIDE | {"x": 0.98, "y": 0.98, "yanchor": "top"},
        **_FIG_LAYOUT,
    )
    return fig


def frontier_figure(points: pd.DataFrame, best: dict[str, Any] | list[dict[str, Any]] | None = None) -> go.Figure:
    """Output tokens/s per GPU against output tokens/s per user of every operating point of
    `sim.sweeps.cap.frontier_points`, coloured by GPU; the frontier as the best tokens/s per GPU at each
    per-user speed (a staircase per workload), ``best`` (`sim.sweeps.cap.best_at_speed` or a list of them)
    as stars. Each point's
    configuration, rate and figures are in its hover."""
    import plotly.graph_objects as go

    from moesim.dashboard.logic.charts import LEGEND_INSIDE

    fig = go.Figure()
    title = "Throughput vs interactivity (upper right is better)"
    if points.empty:
        fig.add_annotation(
            text="no operating point meets the SLOs", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
        fig.update_layout(title=title, **_FIG_LAYOUT)
        return fig
    x, y = points["tok_s_per_user"].to_numpy(float), points["tok_s_per_gpu"].to_numpy(float)
    at = [
        f"at capacity, {r:.3g} req/s" if c else f"at {r:.3g} req/s offered"
        for c, r in zip(points["at_capacity"], points["rate_req_s"], strict=True)
    ]
    custom = np.column_stack(
        [
            points["label"].astype(str),
            at,
            [f"{v * 1e3:.3g}" for v in points["tpot_s"].to_numpy(float)],
            _config_text(points),
            [f"{v:.3g}" if v == v else "-" for v in points["usd_per_mtok"]],
        ]
    )
    hover = (
        "<b>%{customdata[0]}</b> %{customdata[1]}<br>%{x:,.3g} output tok/s per user "
        "(%{customdata[2]} ms per token) · %{y:,.0f} output tok/s per GPU · $%{customdata[4]}/M tok<br>"
        "%{customdata[3]}<extra></extra>"
    )
    _traces_by_gpu(fig, points, x, y, custom, hover, {"size": 7, "opacity": 0.6})
    on = points["frontier"].to_numpy(dtype=bool)
    work = points["workload"].astype(str).to_numpy() if "workload" in points else np.full(len(points), "")
    names = sorted(set(work[on]))
    for n, w in enumerate(names):  # a frontier per workload: different requests do not compare
        front = np.flatnonzero(on & (work == w))
        front = front[np.lexsort((-y[front], x[front]))]
        fig.add_trace(
            go.Scatter(
                x=x[front],
                y=y[front],
                mode="lines+markers",
                name=(f"frontier, {w}" if len(names) > 1 else "frontier") + f" ({front.size} points)",
                line={"color": "#222", "shape": "vh", "width": 1.5, "dash": ("solid", "dash", "dot", "dashdot")[n % 4]},
                marker={"symbol": "circle-open", "size": 13, "color": "#222", "line": {"width": 2}},
                customdata=custom[front],
                hovertemplate=hover,
            )
        )
    bests = [best] if isinstance(best, dict) else list(best or [])
    if bests:
        fig.add_trace(
            go.Scatter(
                x=[b["tok_s_per_user"] for b in bests],
                y=[b["tok_s_per_gpu"] for b in bests],
                mode="markers",
                name=f"best at ≥ {bests[0]['asked_tok_s_per_user']:g} tok/s per user",
                marker={"symbol": "star", "size": 18, "color": "#D55E00"},
                text=[b["label"] for b in bests],
                hovertemplate="<b>%{text}</b><extra>best</extra>",
            )
        )
        fig.add_vline(x=bests[0]["asked_tok_s_per_user"], line={"color": "#D55E00", "dash": "dot", "width": 1})
    fig.update_layout(
        title=title,
        xaxis_title="output tokens/s per user (1 / time per output token)",
        yaxis_title="output tokens/s per GPU",
        xaxis_type=_log_if_wide(x),
        yaxis_type=_log_if_wide(y),
        legend=LEGEND_INSIDE | {"x": 0.98, "y": 0.98, "yanchor": "top"},
        **_FIG_LAYOUT,
    )
    for axis, values in ((fig.update_xaxes, x), (fig.update_yaxes, y)):
        if _log_if_wide(values) == "log":  # one labelled tick per decade: plotly's 2-5 ticks overlap when narrow
            axis(dtick=1)
    return fig


#: The frontier table's columns on screen (the label names the configuration; the hover and the CSV hold the rest).
FRONTIER_SHOWN = ["label", "tok_s_per_user", "tok_s_per_gpu", "tpot_s", "rate_req_s", "at_capacity", "usd_per_mtok"]


def frontier_table(points: pd.DataFrame) -> pd.DataFrame:
    """The frontier rows of `sim.sweeps.cap.frontier_points`, fastest per user first, for a table: label,
    figures, where it was measured and the configuration columns."""
    from moesim.sim.sweeps.cap import FRONTIER_CONFIG

    front = points[points["frontier"]].sort_values("tok_s_per_user", ascending=False)
    cols = ["label", "tok_s_per_user", "tok_s_per_gpu", "tpot_s", "rate_req_s", "at_capacity", "usd_per_mtok"]
    cols += [c for c in FRONTIER_CONFIG if c in front.columns and c not in cols]
    return front[cols].reset_index(drop=True)
