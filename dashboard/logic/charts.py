"""Plotly figures the pages share: the MoE-CAP radar, the Pareto scatter, utilisation bars, heatmaps, CDFs.

Every function is pure: a DataFrame (or arrays) in, a ``plotly.graph_objects.Figure`` out, with units in the
axis titles and the figures people read in the hover text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from moesim.dashboard.format import fmt_pct, fmt_seconds, fmt_usd
from moesim.sim.sweeps.sweep_report import RADAR_AXES, radar_values

#: Colours for categories, colour-blind safe (Okabe-Ito), repeated when there are more.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 50, "b": 10}, "template": "plotly_white"}
#: A legend inside the plot's lower right corner, on a white box: never clipped, never steals the plot's width.
LEGEND_INSIDE = {
    "x": 0.98,
    "y": 0.02,
    "xanchor": "right",
    "yanchor": "bottom",
    "bgcolor": "rgba(255,255,255,0.85)",
    "bordercolor": "#ddd",
    "borderwidth": 1,
}
#: A horizontal legend above the plot area, under the title (the figure's top margin makes room for it).
LEGEND_TOP = {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"}


def title_top(text: str) -> dict[str, object]:
    """A figure title pinned to the figure's top edge: a legend above the plot (`LEGEND_TOP`) sits under it."""
    return {"text": text, "y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 14}}


def seconds_axis(fig: go.Figure, axis: str = "x", **kw: object) -> None:
    """Tick labels of a seconds axis with SI prefixes and the unit (``10ms``, ``500µs``, ``2s``)."""
    getattr(fig, f"update_{axis}axes")(tickformat="~s", ticksuffix="s", **kw)


def legend_height(entries: int, minimum: int = 220) -> int:
    """A figure's height, px, that fits a right-hand legend of ``entries`` lines beside its plot area (title,
    x axis and margins: 140 px; one entry: 22 px)."""
    return max(minimum, 140 + 22 * entries)


def clip_seconds(values: Sequence[float], cap_s: float) -> tuple[list[float], list[str]]:
    """Latencies (s) for a bar chart whose axis stops at ``cap_s``: a value above it (or infinite: an overloaded
    run's queue grows without bound) is drawn at ``cap_s`` and labelled "overloaded"; others keep their value.

    Returns:
        (heights, bar labels).
    """
    heights, labels = [], []
    for v in values:
        v = float(v)
        if not np.isfinite(v) or v > cap_s:
            heights.append(cap_s)
            labels.append(f"overloaded (> {fmt_seconds(cap_s)})")
        else:
            heights.append(v)
            labels.append(fmt_seconds(v))
    return heights, labels


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
        acc = f"{r['accuracy']:.1f}" if r["accuracy"] == r["accuracy"] else "not published"
        hover = (
            f"{r['label']}<br>{fmt_usd(r['cost_usd_per_mtok'])}/M tok · {fmt_seconds(r['s_per_token'])}/token"
            f"<br>accuracy {acc} · S-MBU {fmt_pct(r['s_mbu'])} · S-MFU {fmt_pct(r['s_mfu'])}"
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
        legend={"orientation": "h", "x": 0, "y": -0.05, "yanchor": "top"},
        height=520,
        **(_LAYOUT | {"margin": {"l": 10, "r": 10, "t": 50, "b": 120}}),
    )
    return fig


def utilisation_bars(table: pd.DataFrame) -> go.Figure:
    """S-MBU and S-MFU (%) per configuration, grouped bars."""
    if table.empty:
        return _empty("S-MBU and S-MFU")
    fig = go.Figure()
    labels = [_wrap(str(v), 28) for v in table["label"]]
    for col, name, colour in (("s_mbu", "S-MBU", PALETTE[0]), ("s_mfu", "S-MFU", PALETTE[1])):
        fig.add_trace(
            go.Bar(
                y=labels,
                x=table[col].astype(float) * 100,
                name=name,
                orientation="h",
                marker_color=colour,
                hovertemplate="%{y}<br>" + name + " %{x:.1f}%<extra></extra>",
            )
        )
    # horizontal bars: long configuration labels read on the y axis, one per bar, never on top of each other
    lines = sum(1 + v.count("<br>") for v in labels)
    fig.update_layout(
        barmode="group",
        title=title_top("Sparsity-aware utilisation"),
        xaxis_title="% of peak",
        legend=LEGEND_TOP,
        height=max(300, 110 + 16 * lines + 14 * len(labels)),
        **(_LAYOUT | {"margin": {"l": 10, "r": 10, "t": 115, "b": 10}}),
    )
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig


def _wrap(text: str, width: int = 18) -> str:
    """``text`` broken at spaces into lines of at most ``width`` characters (plotly ``<br>``)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def heatmap(
    z: np.ndarray,
    x: Sequence[object],
    y: Sequence[object],
    title: str,
    colorbar: str,
    x_title: str = "",
    y_title: str = "",
    text_fmt: str = ",.3~r",
    reverse: bool = False,
) -> go.Figure:
    """A heatmap of ``z`` [len(y), len(x)] (NaN cells blank), numbers in the cells when there are few.

    Args:
        text_fmt: d3 format of the numbers in the cells and the hover (default: 3 significant digits in plain
            decimals with thousands separators: ``16,600``, ``0.268``; never ``1.66e+4``).
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
                hovertemplate=name + " %{x:.3s}s: %{y:.1%}<extra></extra>",
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
                hovertemplate=f"SLO {fmt_seconds(slo)}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title="fraction of requests",
        legend=LEGEND_INSIDE,
        showlegend=len(series) > 1,
        **_LAYOUT,
    )
    if slo:
        fig.add_annotation(
            x=np.log10(slo) if log_x else slo,
            y=0.5,
            text=f"SLO {fmt_seconds(slo)}",
            showarrow=False,
            textangle=-90,
            xanchor="right",
            font={"size": 11, "color": "#D55E00"},
        )
    seconds_axis(fig, "x", nticks=6)
    if log_x:
        fig.update_xaxes(type="log", dtick=1)  # one label per decade: no crowded 2 and 5 minor labels
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
                hovertemplate=f"{name}: %{{x:,.3~r}} {unit}<extra></extra>",
            )
        )
    # the legend on the right, one part a line: the figure is tall enough for all of them (plotly gives a
    # legend taller than the plot area a scrollbar, which hides parts)
    fig.update_layout(
        barmode="stack",
        title=title,
        xaxis_title=unit,
        height=legend_height(len(parts)),
        **_LAYOUT,
    )
    return fig
