"""Plots of a what-if sweep: heatmaps per axis pair, the Pareto scatter, the throughput-interactivity frontier and
the MoE-CAP radar (matplotlib, Agg only
via `sim.serving.plots`). Each PNG is written atomically; inputs are the sweep results or CAP table DataFrames.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from moesim.model.errors import MoesimError
from moesim.sim.common import figure_class, fmt_s
from moesim.sim.sweeps.cap import (
    _TIER_CAPACITY,
    _TIER_SLO,
    _num,
    _tiers,
    _usable,
    cap_objectives,
    cap_table,
    front_2d,
    frontier_points,
    write_atomic,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_DPI = 110
_HEATMAP_AXES = ("gpu", "precision", "layout", "gpus", "max_batch", "workload", "routing_skew", "placement")
_RADAR_MAX = 6
_FRONT_LABELS = 12  # at most this many Pareto points are labelled on pareto.png
_ANNOTATE_MAX_CELLS = 400  # heatmaps with more cells are drawn without numbers

# --------------------------------------------------------------------------------------------------------------
# plots


def _esc(text: object) -> str:
    """``text`` as a string matplotlib draws literally (dollar signs escaped, so no mathtext)."""
    return str(text).replace("$", r"\$")


def _natural_key(text: str) -> tuple[tuple[int, float, str], ...]:
    """Sort key that orders the numbers inside ``text`` numerically ('TP2' before 'TP10')."""
    return tuple((0, float(t), "") if t.isdigit() else (1, 0.0, t.lower()) for t in re.split(r"(\d+)", text) if t)


def _fmt_val(v: object) -> str:
    """An axis value as a short tick label."""
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else f"{float(v):.4g}"
    return str(v)


def _fmt_cell(v: float) -> str:
    """A heatmap value: whole numbers with thousands separators from 1000 up, else 3 significant digits."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _categories(values: pd.Series) -> tuple[list[Any], np.ndarray]:
    """Sorted distinct non-null values of ``values`` and each row's index into them (-1 for null)."""
    present = values.dropna()
    distinct = list(pd.unique(present))
    if pd.api.types.is_numeric_dtype(present):
        distinct.sort()
    else:
        distinct.sort(key=lambda v: _natural_key(str(v)))
    lookup = {v: i for i, v in enumerate(distinct)}
    codes = np.array([-1 if pd.isna(v) else lookup[v] for v in values], dtype=int)
    return distinct, codes


def _heatmap_axes(df: pd.DataFrame) -> list[str]:
    """Up to two of `_HEATMAP_AXES` with the most distinct values (> 1 each), the one with more first."""
    counts = [(c, int(df[c].nunique(dropna=True))) for c in _HEATMAP_AXES if c in df.columns]
    varying = [(c, k) for c, k in counts if k > 1]
    varying.sort(key=lambda ck: -ck[1])  # stable: ties keep _HEATMAP_AXES order
    return [c for c, _ in varying[:2]]


def _heatmap_metrics(df: pd.DataFrame) -> list[tuple[str, str, str, int]]:
    """(column, title, unit, tier of the rows it is read from) of the throughput and cost heatmaps."""
    if _usable(df, "capacity_tok_s"):
        out = [("capacity_tok_s", "Capacity: highest output tok/s meeting the SLOs", "output tokens/s", _TIER_CAPACITY)]
        if _usable(df, "capacity_usd_per_mtok"):
            out.append(
                ("capacity_usd_per_mtok", "Cost at capacity", "$ per M output tokens", _TIER_CAPACITY),
            )
        return out
    out = [("throughput_tok_s", "Best output tok/s at an offered load meeting the SLOs (offered load, not capacity)",
            "output tokens/s", _TIER_SLO)]  # fmt: skip
    if "usd_per_mtok" in df.columns:
        out.append(("usd_per_mtok", "Lowest cost among points meeting the SLOs", "$ per M output tokens", _TIER_SLO))
    return out


def _draw_heatmap(
    fig: Figure, grid: np.ndarray, x: tuple[str, list[Any]], y: tuple[str, list[Any]] | None, best: str, unit: str
) -> None:
    """Draw ``grid`` [rows, cols] (NaN: no qualifying point) with tick labels, numbers and a colorbar."""
    import matplotlib

    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["viridis" if best == "max" else "viridis_r"].with_extremes(bad="#e0e0e0")
    masked = np.ma.masked_invalid(grid)
    im = ax.imshow(masked, aspect="auto", cmap=cmap, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=_esc(f"{unit} ({'higher' if best == 'max' else 'lower'} is better)"))
    ax.set_xticks(range(len(x[1])))
    tilt = len(x[1]) > 4
    ax.set_xticklabels([_esc(_fmt_val(v)) for v in x[1]], rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_xlabel(x[0])
    if y is None:
        ax.set_yticks([])
    else:
        ax.set_yticks(range(len(y[1])))
        ax.set_yticklabels([_esc(_fmt_val(v)) for v in y[1]])
        ax.set_ylabel(y[0])
    if grid.size <= _ANNOTATE_MAX_CELLS:
        size = 9 if grid.size <= 64 else 7
        for (r, c), v in np.ndenumerate(grid):
            if np.isfinite(v):
                light = float(im.norm(v)) > 0.5 if best == "max" else float(im.norm(v)) < 0.5
                colour = "black" if light else "white"
                ax.text(c, r, _fmt_cell(v), ha="center", va="center", fontsize=size, color=colour)
            else:
                ax.text(c, r, "–", ha="center", va="center", fontsize=size, color="#777777")


def _write_heatmaps(df: pd.DataFrame, out: Path, axes: Sequence[str]) -> list[Path]:
    """``heatmap_<metric>.png`` over ``axes`` (1 or 2 column names) for the throughput and cost metrics."""
    figure = figure_class()
    tier, _ = _tiers(df)
    xcats, xcode = _categories(df[axes[0]])
    ycats, ycode = _categories(df[axes[1]]) if len(axes) > 1 else ([None], np.zeros(len(df), dtype=int))
    written = []
    for col, title, unit, want in _heatmap_metrics(df):
        best = "max" if col.endswith("tok_s") else "min"
        v = _num(df, col)
        keep = (tier == want) & np.isfinite(v) & (xcode >= 0) & (ycode >= 0)
        if not keep.any():
            continue
        cells = pd.DataFrame({"y": ycode[keep], "x": xcode[keep], "v": v[keep]}).groupby(["y", "x"])["v"]
        agg = cells.max() if best == "max" else cells.min()
        grid = np.full((len(ycats), len(xcats)), np.nan)
        grid[agg.index.get_level_values(0), agg.index.get_level_values(1)] = agg.to_numpy()
        width = min(20.0, max(6.5, 2.5 + 1.0 * len(xcats)))
        height = min(16.0, max(2.8, 1.8 + 0.6 * len(ycats)))
        fig = figure(figsize=(width, height), layout="constrained")
        _draw_heatmap(fig, grid, (axes[0], xcats), (axes[1], ycats) if len(axes) > 1 else None, best, unit)
        over = f"best over the other axes ({'max' if best == 'max' else 'min'})"
        fig.suptitle(_esc(f"{title}\n{over}"), fontsize=11)
        written.append(_save_atomic(fig, out / f"heatmap_{col}.png"))
    return written


def _save_atomic(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as PNG at the module's dpi through a temp file and `os.replace`, and release its memory."""
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=_DPI, format="png"))
    finally:
        fig.clear()


def _no_data(ax: Axes, text: str = "no data") -> None:
    """Write ``text`` in the middle of ``ax``."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _log_axes(ax: Axes) -> None:
    """Log x and y with plain-number tick labels ("0.3", "20": clearer than mathtext 3×10⁻¹); minor ticks
    (2, 3, 5 times a power of ten; more under one decade) are labelled only on an axis spanning under two decades."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1000 else f"{v:g}")

    def minor(leads: tuple[float, ...]) -> FuncFormatter:
        def fmt(v: float, _pos: int) -> str:
            return plain(v, None) if round(v / 10 ** np.floor(np.log10(v)), 6) in leads else ""

        return FuncFormatter(fmt)

    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        axis.set_major_formatter(plain)
        span = hi / lo if lo > 0 else np.inf
        leads = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0) if span < 10 else (2.0, 3.0, 5.0)
        axis.set_minor_formatter(minor(leads) if span < 100 else NullFormatter())


def _fmt_num(v: float) -> str:
    """A figure for a label: thousands separators from 100 up, else 3 significant digits."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _numbered(ax: Axes, side: Axes, x: np.ndarray, y: np.ndarray, names: Sequence[str], title: str) -> None:
    """Number the points (x, y) [n] on ``ax`` (at most `_FRONT_LABELS`, evenly spread) and list number ->
    name on ``side``: short numbers do not overlap where long labels would."""
    n = len(x)
    pick = np.unique(np.linspace(0, n - 1, min(n, _FRONT_LABELS)).round().astype(int)) if n else np.array([], int)
    lines = []
    placed: list[tuple[float, float, float, float]] = []  # label boxes so far, display pixels
    scale = ax.figure.dpi / 72.0
    for k, i in enumerate(pick, start=1):
        px, py = ax.transData.transform((x[i], y[i]))
        w, h = (6.0 * len(str(k)) + 4.0) * scale, 12.0 * scale
        options = ((6, 5), (6, -12), (-7 - 6 * len(str(k)), 5), (-7 - 6 * len(str(k)), -12), (6, 16), (6, -24))
        for dx, dy in options:  # the first offset whose box is clear of the numbers already placed
            bx, by = px + dx * scale, py + dy * scale
            if not any(bx < q[2] and q[0] < bx + w and by < q[3] and q[1] < by + h for q in placed):
                break
        placed.append((bx, by, bx + w, by + h))
        box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8}
        ax.annotate(str(k), (x[i], y[i]), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                    fontweight="bold", bbox=box)  # fmt: skip
        lines.append(f"{k}. {names[i]}")
    side.axis("off")
    more = f"\n({n - len(pick)} more on the front: see the CSV)" if n > len(pick) else ""
    side.text(0.0, 1.0, _esc(title + "\n\n" + "\n".join(textwrap.fill(t, 48, subsequent_indent="   ")
                                                          for t in lines) + more),
              va="top", ha="left", fontsize=7.5, transform=side.transAxes, family="monospace")  # fmt: skip


def _two_panels(figsize: tuple[float, float]) -> tuple[Figure, Axes, Axes]:
    """A figure with the plot on the left and a narrow panel on the right for the numbered labels."""
    fig = figure_class()(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=[3.0, 1.35])
    return fig, fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])


def _write_pareto(table: pd.DataFrame, path: Path) -> Path:
    """``pareto.png``: cost against time per output token of every configuration of ``table`` (a `cap_table`).

    The line is this plot's own front over its two axes (`front_2d`, both minimised): no point on it is beaten
    on both cost and speed. Membership of the three-axis CAP front (cost, speed, accuracy; the table's
    ``pareto``) is marked apart with a square, since a point can be on it for its accuracy alone.
    """
    fig, ax, side = _two_panels((12.5, 7.0))
    cost, spt = _num(table, "cost_usd_per_mtok"), _num(table, "s_per_token")
    shown = np.isfinite(cost) & (cost > 0) & np.isfinite(spt) & (spt > 0)
    t = table[shown].reset_index(drop=True)
    ax.set_xlabel(_esc("cost ($ per million output tokens, log scale)"))
    ax.set_ylabel("time per output token (ms, log scale)")
    ax.grid(True, which="both", alpha=0.3)
    if t.empty:
        _no_data(ax)
        side.axis("off")
        fig.suptitle("Cost vs speed per configuration")
        return _save_atomic(fig, path)
    x, y = t["cost_usd_per_mtok"].to_numpy(float), t["s_per_token"].to_numpy(float) * 1e3
    acc = _num(t, "accuracy")
    if np.isfinite(acc).any():
        known = np.isfinite(acc)
        sc = ax.scatter(x[known], y[known], c=acc[known], cmap="plasma", s=36, zorder=2)
        fig.colorbar(sc, ax=ax, label="accuracy (score 0-100)", pad=0.01)
        if (~known).any():
            ax.scatter(x[~known], y[~known], facecolors="none", edgecolors="grey", s=36, label="accuracy unknown")
    else:
        gpus = t["gpu"].astype(str) if "gpu" in t.columns else pd.Series(["?"] * len(t))
        for i, g in enumerate(sorted(gpus.unique(), key=_natural_key)):
            sel = (gpus == g).to_numpy()
            ax.scatter(x[sel], y[sel], color=f"C{i % 10}", s=36, label=_esc(g), zorder=2)
    three = t["pareto"].to_numpy(dtype=bool) if "pareto" in t.columns else np.zeros(len(t), dtype=bool)
    if three.any() and len(cap_objectives(table)) > 2:
        ax.scatter(x[three], y[three], marker="s", facecolors="none", edgecolors="#b2182b", s=150, linewidths=1.2,
                   zorder=3, label=f"on the cost-speed-accuracy front ({int(three.sum())})")  # fmt: skip
    front = np.flatnonzero(front_2d(x, y, "min", "min"))
    front = front[np.lexsort((y[front], x[front]))]
    ax.step(x[front], y[front], where="post", color="black", linestyle="--", linewidth=1, zorder=1)
    ax.scatter(x[front], y[front], facecolors="none", edgecolors="black", s=110, linewidths=1.5, zorder=4,
               label=f"cost-speed front of this plot ({front.size})")  # fmt: skip
    _log_axes(ax)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    names = [f"{lab}: {c:.3g} $/Mtok, {fmt_s(v / 1e3)}/token" for lab, c, v in
             zip(t["label"].to_numpy()[front], x[front], y[front], strict=True)]  # fmt: skip
    _numbered(ax, side, x[front], y[front], names, "Cost-speed front, cheapest first:")
    fig.suptitle("Cost vs time per output token per configuration (lower left is better)", fontsize=11)
    return _save_atomic(fig, path)


def _write_frontier(points: pd.DataFrame, path: Path) -> Path:
    """``frontier.png``: output tokens/s per GPU against output tokens/s per user of every operating point
    (``points``: `frontier_points`), the frontier drawn as the best tokens/s per GPU at each per-user speed
    (one staircase per workload)."""
    fig, ax, side = _two_panels((12.5, 7.0))
    ax.set_xlabel("output tokens/s per user (1 / median time per output token)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.grid(True, which="both", alpha=0.3)
    title = "Throughput vs interactivity: every operating point meeting the SLOs (upper right is better)"
    if points.empty:
        _no_data(ax, "no operating point meets the SLOs")
        side.axis("off")
        fig.suptitle(title, fontsize=11)
        return _save_atomic(fig, path)
    x, y = points["tok_s_per_user"].to_numpy(float), points["tok_s_per_gpu"].to_numpy(float)
    groups = points["gpu"].astype(str) if "gpu" in points.columns else pd.Series(["all"] * len(points))
    for i, g in enumerate(sorted(groups.unique(), key=_natural_key)):
        sel = (groups == g).to_numpy()
        ax.scatter(x[sel], y[sel], color=f"C{i % 10}", s=18, alpha=0.55, label=_esc(g), zorder=2)
    on = points["frontier"].to_numpy(dtype=bool)
    work = points["workload"].astype(str).to_numpy() if "workload" in points.columns else np.full(len(points), "")
    names_w = sorted(set(work[on]), key=_natural_key)
    for k, w in enumerate(names_w):  # a frontier per workload: different requests do not compare
        front = np.flatnonzero(on & (work == w))
        front = front[np.lexsort((-y[front], x[front]))]
        what = f"frontier, {w}" if len(names_w) > 1 else "frontier"
        ax.step(x[front], y[front], where="pre", color="black", linestyle=("-", "--", ":", "-.")[k % 4],
                linewidth=1.2, zorder=3, label=_esc(f"{what} ({front.size} points)"))  # fmt: skip
    front = np.flatnonzero(on)
    front = front[np.lexsort((-y[front], x[front]))]
    ax.scatter(x[front], y[front], facecolors="none", edgecolors="black", s=90, linewidths=1.4, zorder=4)
    if x.max() / x.min() > 20 or y.max() / y.min() > 20:
        _log_axes(ax)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    order = front[::-1]  # fastest per user first
    names = []
    for i in order:
        r = points.iloc[i]
        at = "at capacity" if bool(r["at_capacity"]) else f"at {r['rate_req_s']:.3g} req/s offered"
        names.append(f"{r['label']} {at}: {_fmt_num(x[i])} tok/s/user, {_fmt_num(y[i])} tok/s/GPU")
    _numbered(ax, side, x[order], y[order], names, "Frontier, fastest per user first:")
    fig.suptitle(title, fontsize=11)
    return _save_atomic(fig, path)


#: The MoE-CAP radar's axes, in `radar_values` column order.
RADAR_AXES = ("Cost (cheapest / cost)", "Performance (fastest s/token / s/token)", "Accuracy (score / 100)",
              "S-MBU", "S-MFU")  # fmt: skip


def radar_values(table: pd.DataFrame) -> np.ndarray:
    """[configs, 5] radar coordinates 0..1 (outer is better) of a `cap_table`: `RADAR_AXES`.

    Cost and performance are relative to the best configuration in ``table`` (1: the cheapest, the fastest);
    accuracy is the score over 100; S-MBU and S-MFU are fractions. Missing values are 0.
    """
    cost, spt = _num(table, "cost_usd_per_mtok"), _num(table, "s_per_token")
    with np.errstate(divide="ignore", invalid="ignore"):
        good_cost = cost[np.isfinite(cost) & (cost > 0)]
        good_spt = spt[np.isfinite(spt) & (spt > 0)]
        c = good_cost.min() / cost if good_cost.size else np.full(len(table), np.nan)
        p = good_spt.min() / spt if good_spt.size else np.full(len(table), np.nan)
    vals = np.column_stack([c, p, _num(table, "accuracy") / 100.0, _num(table, "s_mbu"), _num(table, "s_mfu")])
    vals = np.where(np.isfinite(vals), vals, 0.0)
    return np.clip(vals, 0.0, 1.0)


def _radar_rows(table: pd.DataFrame, labels: Sequence[str] | None) -> np.ndarray:
    """Positions in ``table`` (a `cap_table`) of the radar's configurations, int [<= 6].

    ``labels`` in their order, or by default the Pareto front, cheapest first.

    Raises:
        MoesimError: an unknown label, or more than six.
    """
    if labels is None:
        return np.flatnonzero(table["pareto"].to_numpy(dtype=bool))[:_RADAR_MAX]  # the table is cheapest first
    index = {str(lab): i for i, lab in enumerate(table["label"])}
    unknown = [str(lab) for lab in labels if str(lab) not in index]
    if unknown:
        raise MoesimError(f"unknown configuration label(s) {unknown}", "pick labels from cap_table(df)['label']")
    if len(labels) > _RADAR_MAX:
        raise MoesimError(f"{len(labels)} radar configurations", f"pick at most {_RADAR_MAX}")
    return np.array([index[str(lab)] for lab in labels], dtype=int)


def _write_radar(table: pd.DataFrame, path: Path, chosen: np.ndarray) -> Path:
    """``cap_radar.png``: the MoE-CAP radar of the configurations at positions ``chosen`` [<= 6] of ``table``."""
    figure = figure_class()
    names = ["Cost\n(cheapest / cost)", "Performance\n(fastest s/token / s/token)", "Accuracy\n(score / 100)",
             "S-MBU", "S-MFU"]  # fmt: skip
    raw = [_num(table, c)[chosen] for c in ("cost_usd_per_mtok", "s_per_token", "accuracy", "s_mbu", "s_mfu")]
    names = [n if np.isfinite(r).any() else f"{n} (n/a)" for n, r in zip(names, raw, strict=True)]
    fig = figure(figsize=(9.0, 9.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1, projection="polar")
    angles = np.linspace(0.0, 2.0 * np.pi, len(names), endpoint=False)
    ax.set_xticks(angles)
    ax.set_theta_offset(np.pi / 2.0)  # Cost at the top, the other axes clockwise
    ax.set_theta_direction(-1)
    ax.set_xticklabels(names, fontsize=9)
    ax.tick_params(axis="x", pad=10)
    for text, angle in zip(ax.get_xticklabels(), angles, strict=True):  # keep the axis names off the circle
        side = np.sin(angle)  # > 0: right half (clockwise from the top)
        text.set_horizontalalignment("left" if side > 0.1 else "right" if side < -0.1 else "center")
    ax.set_ylim(0.0, 1.0)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0.25", "0.5", "0.75", "1"], fontsize=7)
    if chosen.size == 0:
        _no_data(ax, "no configuration to show")
    else:
        vals = radar_values(table)[chosen]
        closed = np.append(angles, angles[0])
        for i, (row, v) in enumerate(zip(chosen, vals, strict=True)):
            cost, spt = float(table["cost_usd_per_mtok"].iloc[row]), float(table["s_per_token"].iloc[row])
            text = f"{table['label'].iloc[row]}: {cost:.3g} $/Mtok, {fmt_s(spt)}/token"
            ax.plot(closed, np.append(v, v[0]), color=f"C{i}", linewidth=1.6, label=_esc(text))
            ax.fill(closed, np.append(v, v[0]), color=f"C{i}", alpha=0.12)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), fontsize=8)
    fig.suptitle("MoE-CAP radar (every axis 0..1, outer is better)", fontsize=11)
    return _save_atomic(fig, path)


def write_plots(
    df: pd.DataFrame,
    out_dir: str | Path,
    heatmap_axes: tuple[str, str] | None = None,
    *,
    radar_labels: Sequence[str] | None = None,
) -> list[Path]:
    """Write the sweep's PNGs into ``out_dir`` (created if missing).

    - ``heatmap_<metric>.png`` for the throughput metric (``capacity_tok_s``, else ``throughput_tok_s`` of the
      points meeting the SLOs; output tok/s, best = max) and the cost metric (``capacity_usd_per_mtok``, else
      ``usd_per_mtok``; $ per M output tokens, best = min): a grid over two axes, each cell the best value over
      the other axes, annotated, with a colorbar. Default axes: the two of gpu, precision, layout, gpus,
      max_batch, workload, routing_skew, placement with the most distinct values (> 1); one row when only one
      varies; no heatmap when none varies (or the metric has no qualifying value).
    - ``pareto.png``: cost ($/M output tokens, log x) vs time per output token (ms, log y) per configuration
      of `cap_table`, coloured by accuracy when known else by GPU; the plot's own cost-speed front ringed and
      drawn as a staircase, membership of the three-axis CAP front marked by a square; front points numbered
      (at most 12) and named in a side panel.
    - ``frontier.png``: output tokens/s per GPU vs output tokens/s per user of every operating point meeting
      the SLOs (`frontier_points`), coloured by GPU, the frontier drawn as the best tokens/s per GPU at each
      per-user speed, numbered and named (configuration, offered rate or capacity) in a side panel.
    - ``cap_radar.png``: the MoE-CAP radar (cost, performance, accuracy, S-MBU, S-MFU; each 0..1, outer is
      better) of up to six configurations: ``radar_labels``, else the front of `cap_table`, cheapest first.

    Args:
        df: the sweep results table, [points].
        out_dir: the directory to write into.
        heatmap_axes: (x axis, y axis) column names for the heatmaps, drawn as given; None chooses them.
        radar_labels: configuration labels for the radar (at most six); None: the Pareto front.

    Returns:
        The paths written: heatmaps, then ``pareto.png``, ``frontier.png``, then ``cap_radar.png``.

    Raises:
        MoesimError: matplotlib is not installed; a heatmap axis or radar label is unknown.
    """
    figure_class()  # fail before creating anything when matplotlib is missing
    if heatmap_axes is not None:
        missing = [a for a in heatmap_axes if a not in df.columns]
        if missing or len(set(heatmap_axes)) != len(heatmap_axes):
            raise MoesimError(f"heatmap axes {list(heatmap_axes)}", "name two different columns of the sweep table")
    table = cap_table(df)
    radar = _radar_rows(table, radar_labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    axes = list(heatmap_axes) if heatmap_axes is not None else _heatmap_axes(df)
    written = _write_heatmaps(df, out, axes) if axes and len(df) else []
    written.append(_write_pareto(table, out / "pareto.png"))
    written.append(_write_frontier(frontier_points(df), out / "frontier.png"))
    written.append(_write_radar(table, out / "cap_radar.png", radar))
    return written
