"""Plots of a what-if sweep: heatmaps per axis pair, the Pareto scatter and the MoE-CAP radar (matplotlib, Agg only
via `sim.serving.plots`). Each PNG is written atomically; inputs are the sweep results or CAP table DataFrames.
"""

from __future__ import annotations

import re
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
    out = [("throughput_tok_s", "Best output tok/s among points meeting the SLOs", "output tokens/s", _TIER_SLO)]
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


def _write_pareto(table: pd.DataFrame, path: Path) -> Path:
    """``pareto.png``: cost vs s per output token of every configuration of ``table`` (a `cap_table`)."""
    figure = figure_class()
    fig = figure(figsize=(10.0, 7.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    cost, spt = _num(table, "cost_usd_per_mtok"), _num(table, "s_per_token")
    shown = np.isfinite(cost) & (cost > 0) & np.isfinite(spt) & (spt > 0)
    t = table[shown].reset_index(drop=True)
    ax.set_xlabel(_esc("cost ($ per million output tokens, log scale)"))
    ax.set_ylabel("seconds per output token (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    if t.empty:
        _no_data(ax)
        fig.suptitle("Cost vs speed per configuration")
        return _save_atomic(fig, path)
    x, y = t["cost_usd_per_mtok"].to_numpy(float), t["s_per_token"].to_numpy(float)
    acc = _num(t, "accuracy")
    if np.isfinite(acc).any():
        known = np.isfinite(acc)
        sc = ax.scatter(x[known], y[known], c=acc[known], cmap="plasma", s=40, zorder=2)
        fig.colorbar(sc, ax=ax, label="accuracy (score 0-100)")
        if (~known).any():
            ax.scatter(x[~known], y[~known], facecolors="none", edgecolors="grey", s=40, label="accuracy unknown")
    else:
        gpus = t["gpu"].astype(str) if "gpu" in t.columns else pd.Series(["?"] * len(t))
        for i, g in enumerate(sorted(gpus.unique(), key=_natural_key)):
            sel = (gpus == g).to_numpy()
            ax.scatter(x[sel], y[sel], color=f"C{i % 10}", s=40, label=_esc(g), zorder=2)
    front = np.flatnonzero(t["pareto"].to_numpy(dtype=bool))
    if front.size:
        front = front[np.argsort(x[front], kind="stable")]
        ax.plot(x[front], y[front], color="black", linestyle="--", linewidth=1, zorder=1)
        ax.scatter(x[front], y[front], facecolors="none", edgecolors="black", s=130, linewidths=1.5, zorder=3,
                   label=f"Pareto front ({front.size})")  # fmt: skip
        labelled = front[np.unique(np.linspace(0, front.size - 1, min(front.size, _FRONT_LABELS)).round().astype(int))]
        for i in labelled:
            ax.annotate(_esc(t["label"].iloc[i]), (x[i], y[i]), xytext=(6, 6), textcoords="offset points", fontsize=7)
    from matplotlib.ticker import LogFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers ("0.6", "20"): clearer and faster than mathtext 6×10⁻¹
        axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.legend(loc="best", fontsize=8)
    objectives = ", ".join(f"{c} ({d})" for c, d in cap_objectives(table).items())
    fig.suptitle(_esc(f"Cost vs speed per configuration; Pareto front over {objectives}"), fontsize=11)
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
    - ``pareto.png``: cost ($/M output tokens, log x) vs s per output token (log y) per configuration of
      `cap_table`, coloured by accuracy when known else by GPU; the Pareto front ringed, joined and labelled
      (at most 12 labels).
    - ``cap_radar.png``: the MoE-CAP radar (cost, performance, accuracy, S-MBU, S-MFU; each 0..1, outer is
      better) of up to six configurations: ``radar_labels``, else the front of `cap_table`, cheapest first.

    Args:
        df: the sweep results table, [points].
        out_dir: the directory to write into.
        heatmap_axes: (x axis, y axis) column names for the heatmaps, drawn as given; None chooses them.
        radar_labels: configuration labels for the radar (at most six); None: the Pareto front.

    Returns:
        The paths written: heatmaps, then ``pareto.png``, then ``cap_radar.png``.

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
    written.append(_write_radar(table, out / "cap_radar.png", radar))
    return written
