"""PNG plots of a simulated serving run: latency CDFs and a timeline.

matplotlib is an optional extra (``pip install 'moesim[report]'``) imported only when a plot is drawn.
Figures are built as `matplotlib.figure.Figure` objects and saved through the Agg renderer, never through
pyplot, so drawing leaves the caller's pyplot state and backend untouched and nothing stays open.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from moesim.sim.common import figure_class, fmt_s
from moesim.sim.serving.metrics import time_series, with_derived

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_DPI = 110
_SIZE_IN = (10.0, 7.0)
_CDF_POINTS = 2000  # a CDF over more samples is drawn through this many quantiles


def _clean(x: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """Finite values of ``x`` as a sorted float array."""
    a = np.asarray(x, dtype=float).ravel()
    return np.sort(a[np.isfinite(a)])


def _cdf_panel(ax: Axes, series: list[tuple[str, np.ndarray, str]], title: str) -> None:
    """Draw empirical CDFs of ``series`` ((label, sorted values in s, unit of a sample)) on ``ax``.

    p50 and p99 of each series are marked with dashed and dotted vertical lines. The x axis is
    logarithmic when the positive values span more than two decades.
    """
    ax.set_title(title)
    ax.set_ylabel("cumulative fraction")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    present = [(label, x, unit) for label, x, unit in series if x.size]
    if not present:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("seconds")
        return
    everything = np.concatenate([x for _, x, _ in present])
    log = bool(everything.min() > 0 and everything.max() / everything.min() > 100.0)
    for i, (label, x, unit) in enumerate(present):
        color = f"C{i}"
        if x.size > _CDF_POINTS:
            q = np.linspace(0.0, 1.0, _CDF_POINTS + 1)
            xs, ys = np.quantile(x, q), q
        else:
            xs, ys = x, np.arange(1, x.size + 1) / x.size
        ax.plot(xs, ys, drawstyle="steps-post", color=color, label=f"{label} ({x.size} {unit})")
        p50, p99 = np.percentile(x, [50.0, 99.0])
        ax.axvline(p50, color=color, linestyle="--", linewidth=1, label=f"{label} p50 = {fmt_s(p50)}")
        ax.axvline(p99, color=color, linestyle=":", linewidth=1.3, label=f"{label} p99 = {fmt_s(p99)}")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale)" if log else "seconds")
    ax.legend(loc="lower right", fontsize=8)


def _save(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as PNG at the module's dpi and release its memory."""
    fig.savefig(path, dpi=_DPI, format="png")
    fig.clear()
    return path


def write_latency_cdf(requests: pd.DataFrame, itl: np.ndarray | Sequence[float], path: Path) -> Path:
    """Write ``latency_cdf.png``-style CDFs of TTFT, TPOT with ITL, and end-to-end latency.

    Args:
        requests: per-request DataFrame (completed requests are plotted: NaN latencies are dropped).
        itl: every inter-token latency, s.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    figure = figure_class()
    req = with_derived(requests)
    fig = figure(figsize=_SIZE_IN, layout="constrained")
    axes = fig.subplots(3, 1)
    _cdf_panel(axes[0], [("TTFT", _clean(req["ttft_s"]), "requests")], "Time to first token")
    _cdf_panel(
        axes[1],
        [("TPOT", _clean(req["tpot_s"]), "requests"), ("ITL", _clean(itl), "token gaps")],
        "Time per output token (per request) and inter-token latency (per token)",
    )
    _cdf_panel(axes[2], [("E2E", _clean(req["e2e_s"]), "requests")], "End-to-end latency")
    fig.suptitle("Latency distributions (empirical CDFs)")
    return _save(fig, path)


def write_timeline(requests: pd.DataFrame, steps: pd.DataFrame, path: Path) -> Path:
    """Write ``timeline.png``: output tokens/s, batch size, KV-cache use and queue length over simulated time.

    Args:
        requests: per-request DataFrame.
        steps: per-step DataFrame.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    figure = figure_class()
    ts = time_series(steps, requests)
    fig = figure(figsize=_SIZE_IN, layout="constrained")
    axes = fig.subplots(4, 1, sharex=True)
    bin_s = float(ts.attrs.get("bin_s", 0.0))
    t = ts["t_s"].to_numpy() + bin_s / 2.0
    panels: list[tuple[str, Any, str]] = [
        ("Output tokens/s (all replicas)", ts["output_tok_s"], "tokens/s"),
        ("Batch size (mean running sequences per busy replica)", ts["batch"], "sequences"),
        ("KV-cache use (mean per replica)", ts["kv_used"] * 100.0, "% of blocks"),
        ("Queue length (mean per replica, at step start)", ts["waiting"], "requests"),
    ]
    for ax, (title, y, unit) in zip(axes, panels, strict=True):
        ax.plot(t, np.asarray(y, dtype=float), color="C0", linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0.0)
    axes[2].set_ylim(0.0, 105.0)
    axes[-1].set_xlabel("simulated time (s)")
    replicas = steps["replica"].nunique() if "replica" in steps.columns else 0
    fig.suptitle(f"Serving timeline ({replicas} replica{'s' if replicas != 1 else ''}, bins of {fmt_s(bin_s)})")
    return _save(fig, path)


def write_plots(
    requests: pd.DataFrame, itl: np.ndarray | Sequence[float], steps: pd.DataFrame, out_dir: str | Path
) -> list[Path]:
    """Write ``latency_cdf.png`` and ``timeline.png`` into ``out_dir`` (created if missing).

    Args:
        requests: per-request DataFrame (see `sim.serving.metrics`).
        itl: every inter-token latency, s.
        steps: per-step DataFrame.
        out_dir: the directory to write into.

    Returns:
        The paths written, in that order.

    Raises:
        MoesimError: matplotlib is not installed.
    """
    figure_class()  # fail before creating anything when matplotlib is missing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_latency_cdf(requests, itl, out / "latency_cdf.png"),
        write_timeline(requests, steps, out / "timeline.png"),
    ]
