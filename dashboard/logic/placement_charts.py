"""The Placement studio's plotly figures: expert loads [L, N], per-GPU loads [G] of one layer, per-layer imbalance [L],
and the expert map (which expert each GPU slot holds, coloured by load).

Loads are in the units of ``counts`` ((token, expert) pairs); imbalance is the busiest GPU's load over the mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from moesim.dashboard.logic.charts import LEGEND_TOP, PALETTE, heatmap, title_top

LABELS = {"round-robin": "round-robin (before)", "eplb": "greedy EPLB", "ilp": "ILP"}
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 50, "b": 10}, "template": "plotly_white"}


# figures ------------------------------------------------------------------------------------------------------------
def loads_figure(counts: np.ndarray) -> go.Figure:
    """Heatmap of expert loads ``counts`` [L, N], each relative to its layer's mean expert (1 = average)."""
    rel = counts / counts.mean(axis=1, keepdims=True)
    layers, n = counts.shape
    fig = heatmap(
        rel,
        x=range(n),
        y=range(layers),
        title="Expert load per MoE layer",
        colorbar="÷ layer mean",
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
        title=title_top(f"Per-GPU load, MoE layer {layer}"),
        yaxis_title="load ÷ mean GPU load",
        legend=LEGEND_TOP,
        **(_LAYOUT | {"margin": {"l": 10, "r": 10, "t": 115, "b": 10}}),
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
        title=title_top("Busiest ÷ mean GPU load by layer"),
        xaxis_title="MoE layer",
        yaxis_title="busiest ÷ mean",
        legend=LEGEND_TOP,
        **(_LAYOUT | {"margin": {"l": 10, "r": 10, "t": 115, "b": 10}}),
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
        title=f"{label}: GPU of each expert, layer {layer}",
        colorbar="% of layer",
        x_title="expert",
        y_title="GPU",
        text_fmt=".1f",
    )
    fig.update_layout(height=max(260, min(700, 80 + 28 * g)))
    return fig
