"""Plotly figures the pages share: the MoE-CAP radar, the Pareto scatter, utilisation bars, heatmaps, CDFs.

Every function is pure: a DataFrame (or arrays) in, a ``plotly.graph_objects.Figure`` out, with units in the
axis titles and the figures people read in the hover text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from moesim.sim.sweeps.sweep_report import RADAR_AXES, radar_values

#: Colours for categories, colour-blind safe (Okabe-Ito), repeated when there are more.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 50, "b": 10}, "template": "plotly_white"}


def _empty(title: str, text: str = "no data") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, font={"size": 14}, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, **_LAYOUT)
    return fig


def cap_radar(table: pd.DataFrame, max_configs: int = 6) -> go.Figure:
    """The MoE-CAP radar of the first ``max_configs`` rows of a `sim.sweeps.cap.cap_table` (outer is better).

    Cost and performance are relative to the best row shown (1: cheapest / fastest), accuracy is the score
    over 100, S-MBU and S-MFU are fractions; the hover gives the raw values.
    """
    rows = table.head(max_configs)
    if rows.empty:
        return _empty("MoE-CAP radar")
    vals = radar_values(rows)
    axes = [a.split(" (")[0] for a in RADAR_AXES]
    fig = go.Figure()
    for i, (_, r) in enumerate(rows.iterrows()):
        v = [*vals[i], vals[i][0]]
        hover = (
            f"{r['label']}<br>${r['cost_usd_per_mtok']:.3g}/M tok · {r['s_per_token'] * 1e3:.1f} ms/token"
            f"<br>accuracy {r['accuracy']:.1f} · S-MBU {r['s_mbu']:.1%} · S-MFU {r['s_mfu']:.1%}"
        )
        fig.add_trace(
            go.Scatterpolar(
                r=v,
                theta=[*axes, axes[0]],
                name=str(r["label"]),
                fill="toself",
                opacity=0.55,
                line={"color": PALETTE[i % len(PALETTE)]},
                hovertemplate=hover + "<extra></extra>",
            )
        )
    fig.update_layout(
        title="MoE-CAP radar (each axis 0..1, outer is better)",
        polar={
            "radialaxis": {"range": [0, 1], "tickvals": [0.25, 0.5, 0.75, 1], "angle": 90, "tickangle": 90},
            "angularaxis": {"rotation": 90, "direction": "clockwise"},  # Cost at the top, as MoE-CAP draws it
        },
        legend={"orientation": "h", "y": -0.15},
        **_LAYOUT,
    )
    return fig


def pareto_scatter(table: pd.DataFrame, x: str = "s_per_token", y: str = "cost_usd_per_mtok") -> go.Figure:
    """Cost against seconds per token, one marker per configuration, the Pareto front outlined and joined.

    Args:
        table: a `cap_table` (columns ``label``, ``x``, ``y``, ``accuracy``, ``pareto``, ``gpu``).
    """
    t = table[np.isfinite(table[x].astype(float)) & np.isfinite(table[y].astype(float))]
    if t.empty:
        return _empty("Pareto front", "no configuration with both cost and speed")
    fig = go.Figure()
    groups = t["gpu"].astype(str) if "gpu" in t else pd.Series(["all"] * len(t), index=t.index)
    for i, g in enumerate(sorted(groups.unique())):
        s = t[groups == g]
        acc = s["accuracy"].astype(float) if "accuracy" in s else pd.Series(np.nan, index=s.index)
        fig.add_trace(
            go.Scatter(
                x=s[x] * 1e3,
                y=s[y],
                mode="markers",
                name=g,
                marker={
                    "size": 11,
                    "color": PALETTE[i % len(PALETTE)],
                    "line": {"width": np.where(s["pareto"], 2.5, 0), "color": "#222"},
                },
                text=s["label"],
                customdata=np.column_stack([acc.fillna(-1), s["pareto"]]),
                hovertemplate="%{text}<br>%{x:.2f} ms/token · $%{y:.3g}/M tok<br>accuracy %{customdata[0]:.1f}"
                "<extra></extra>",
            )
        )
    front = t[t["pareto"].astype(bool)].sort_values(x)
    if len(front):
        fig.add_trace(
            go.Scatter(
                x=front[x] * 1e3,
                y=front[y],
                mode="lines",
                name="Pareto front",
                line={"color": "#222", "dash": "dot"},
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        title="Cost vs speed (outlined: on the Pareto front)",
        xaxis_title="seconds per output token (ms)",
        yaxis_title="$ per million output tokens",
        yaxis_type="log",
        **_LAYOUT,
    )
    return fig


def utilisation_bars(table: pd.DataFrame) -> go.Figure:
    """S-MBU and S-MFU (%) per configuration, grouped bars."""
    if table.empty:
        return _empty("S-MBU and S-MFU")
    fig = go.Figure()
    for col, name, colour in (("s_mbu", "S-MBU", PALETTE[0]), ("s_mfu", "S-MFU", PALETTE[1])):
        fig.add_trace(
            go.Bar(
                x=table["label"],
                y=table[col].astype(float) * 100,
                name=name,
                marker_color=colour,
                hovertemplate="%{x}<br>" + name + " %{y:.1f}%<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group", title="Sparsity-aware utilisation", yaxis_title="% of peak", xaxis_tickangle=-30, **_LAYOUT
    )
    return fig


def heatmap(
    z: np.ndarray,
    x: Sequence[object],
    y: Sequence[object],
    title: str,
    colorbar: str,
    x_title: str = "",
    y_title: str = "",
    text_fmt: str = ".3g",
    reverse: bool = False,
) -> go.Figure:
    """A heatmap of ``z`` [len(y), len(x)] (NaN cells blank), numbers in the cells when there are few.

    Args:
        reverse: lower is better (the colour scale runs the other way).
    """
    z = np.asarray(z, dtype=float)
    few = z.size <= 400
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(v) for v in x],
            y=[str(v) for v in y],
            colorscale="Viridis_r" if reverse else "Viridis",
            colorbar={"title": colorbar},
            texttemplate="%{z:" + text_fmt + "}" if few else None,
            hovertemplate=f"{x_title} %{{x}}<br>{y_title} %{{y}}<br>{colorbar} %{{z:{text_fmt}}}<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, **_LAYOUT)
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def cdf(
    series: dict[str, np.ndarray], title: str, x_title: str, slo: float | None = None, log_x: bool = False
) -> go.Figure:
    """Empirical CDFs of several samples (name -> values) on one plot, an SLO as a vertical dashed line."""
    fig = go.Figure()
    for i, (name, v) in enumerate(series.items()):
        v = np.sort(np.asarray(v, dtype=float)[np.isfinite(v)])
        if not v.size:
            continue
        step = max(1, v.size // 2000)  # at most ~2,000 points per curve
        xs, ps = v[::step], (np.arange(v.size)[::step] + 1) / v.size
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ps,
                name=name,
                mode="lines",
                line={"color": PALETTE[i % len(PALETTE)], "shape": "hv"},
                hovertemplate=name + " %{x:.4g} s: %{y:.1%}<extra></extra>",
            )
        )
    if slo:  # a trace, not a shape: it stays in data coordinates on a log axis too
        fig.add_trace(
            go.Scatter(
                x=[slo, slo],
                y=[0, 1],
                name="SLO",
                mode="lines",
                line={"color": "#D55E00", "dash": "dash"},
                hovertemplate=f"SLO {slo:.4g} s<extra></extra>",
            )
        )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title="fraction of requests", **_LAYOUT)
    if log_x:
        fig.update_xaxes(type="log")
    fig.update_yaxes(range=[0, 1.01], tickformat=".0%")
    return fig


def stacked_bar(parts: dict[str, float], title: str, unit: str, scale: float = 1.0) -> go.Figure:
    """One horizontal bar split into named parts (e.g. memory by component, a step time by cause)."""
    fig = go.Figure()
    for i, (name, v) in enumerate(parts.items()):
        fig.add_trace(
            go.Bar(
                x=[v * scale],
                y=[""],
                name=name,
                orientation="h",
                marker_color=PALETTE[i % len(PALETTE)],
                hovertemplate=f"{name}: %{{x:.3g}} {unit}<extra></extra>",
            )
        )
    fig.update_layout(barmode="stack", title=title, xaxis_title=unit, height=220, **_LAYOUT)
    return fig
