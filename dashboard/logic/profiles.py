"""The Profiles & calibration page's work: find measured kernel tables, read them, calibrate, profile here.

Sources of tables (`sources`): the GPU runs committed under ``profiling/data/<gpu>/<set>/``, a folder of
this machine's tables (``moesim profile`` writes ``profiles/local`` by default), a folder of imported tables
(or a raw AIConfigurator folder, converted on the fly), the shared reference data beside the repository
(``../shared/data``, when present) and the quick profile run from the page. Reading (`load_set`) and
calibration (`calibrate_set`) go through `profiling`'s public API and are cached per folder and file
signature, so a folder profiled again is read again. Results are plain DataFrames, so they pickle.
`profiling` is imported on first use, so the page's widgets are drawn before its import (half a second).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from moesim.dashboard.format import MISSING, fmt_rate, fmt_seconds
from moesim.dashboard.logic.charts import PALETTE

ROOT = Path(__file__).resolve().parents[2]
#: Committed GPU runs: ``<gpu>/<set>/*.parquet``.
COMMITTED = ROOT / "profiling" / "data"
#: Reference data imported from elsewhere, kept beside the repository (never copied into it).
SHARED = ROOT.parent / "shared" / "data"
#: Where ``moesim profile`` writes when given no ``--out``.
LOCAL_DEFAULT = "profiles/local"
#: The quick profile the page runs: the demo's brief profile (`dashboard.report`), GEMMs and grouped GEMMs, fp32.
QUICK = {"device": "cpu", "mode": "tiny", "ops": ["gemm", "moe"]}
#: Preferred default set (small, every kind measured): committed ``h100-sxm/quick-bf16``.
DEFAULT_SET = ("h100-sxm", "quick-bf16")
#: Rows of one table shown on the page (a kernel database can hold 100,000).
MAX_ROWS_SHOWN = 5000
#: Metadata shown per table file, in this order (other scalar keys follow).
META_ORDER = (
    "source", "device", "device_key", "device_type", "dtypes", "mode", "date", "torch", "triton", "cuda",
    "driver", "python", "host", "threads", "cpu_count", "gpu_count", "sm_count", "framework", "version",
)  # fmt: skip
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 50, "b": 10}}  # no template: the page's theme styles the charts


@dataclass(frozen=True)
class Source:
    """A set of measured tables: ``label`` for the page, ``kind`` (committed, local, imported, shared, quick)
    and ``path`` (a folder; '' where the user gives it)."""

    label: str
    kind: str
    path: str = ""


@dataclass(frozen=True)
class TableSet:
    """Tables read from one folder.

    Attributes:
        folder: the folder read.
        tables: op kind -> its rows (columns in `profiling.tables`; ``file`` added when several files hold it).
        files: one row per file: ``file``, ``kinds``, ``rows`` and the metadata (`META_ORDER` first).
        hardware: one row per measured device: ``device_key``, ``name``, peak FLOP/s per dtype (``peak_<dtype>``,
            FLOP/s), ``memory_bandwidth`` (B/s), ``spec_source``.
    """

    folder: str
    tables: dict[str, pd.DataFrame]
    files: pd.DataFrame
    hardware: pd.DataFrame


@dataclass(frozen=True)
class CalibrationView:
    """What `profiling.calibrate` reported, as tables.

    Attributes:
        errors: one row per fit (`Fit.summary`): ``fit`` (kind/dtype/impl@device), ``kind``, ``dtype``, ``impl``,
            ``device``, ``method``, ``rows_fit``, ``rows_holdout``, ``mape`` and ``p90_ape`` (%; held-out where
            rows were held out, else the inner validation MAPE and no P90), ``error_on``,
            ``median_ratio_to_reference``, ``reference``.
        points: the held-out rows: ``fit``, ``kind``, ``measured_s``, ``predicted_s`` (s), ``ape`` (%).
        skew: the skew model's error (`Calibration.skew`; {} without skewed rows).
        holdout, seed: the split asked for.
    """

    errors: pd.DataFrame
    points: pd.DataFrame
    skew: dict[str, Any] = field(default_factory=dict)
    holdout: float = 0.2
    seed: int = 0


def torch_available() -> bool:
    """Whether torch (the ``profile`` extra) can be imported here, without importing it."""
    return importlib.util.find_spec("torch") is not None


_SCRATCH: list[Path] = []  # this process's scratch folder, made on first use


def cache_root() -> Path:
    """The dashboard's scratch folder (imports, quick profiles, small sweeps): private to this server process.

    ``moesim dashboard`` makes it (`tempfile.mkdtemp`, mode 0700) and names it in ``MOESIM_DASHBOARD_SCRATCH``;
    it removes it when the server stops (`dashboard.server` too, should ``moesim dashboard`` be killed).
    Elsewhere (tests, ``streamlit run``) the first call makes one, removed when the process exits. Never a
    fixed name in the shared temp folder, which another user could have made first.
    """
    given = os.environ.get("MOESIM_DASHBOARD_SCRATCH")
    if not _SCRATCH and given and Path(given).is_dir() and Path(given).stat().st_uid == os.getuid():
        _SCRATCH.append(Path(given))
    if not _SCRATCH or not _SCRATCH[-1].is_dir():  # none yet, or removed meanwhile: a new one, never the old name
        path = Path(tempfile.mkdtemp(prefix="moesim-dashboard-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _SCRATCH.append(path)
    return _SCRATCH[-1]


def _has_tables(folder: Path) -> bool:
    return any(not f.name.startswith(".") for f in folder.glob("*.parquet"))


def sources(committed: Path = COMMITTED, shared: Path = SHARED) -> list[Source]:
    """Every source the page offers, the default (`DEFAULT_SET`, else the first committed set) first.

    Committed sets are the folders ``committed/<gpu>/<set>`` holding tables; shared ones the folders under
    ``shared`` holding tables or AIConfigurator ``*_perf.parquet`` files (none when ``shared`` is absent).
    """
    sets = sorted(p for p in committed.glob("*/*") if p.is_dir() and _has_tables(p)) if committed.is_dir() else []
    out = [Source(f"{p.parent.name} / {p.name} (committed GPU tables)", "committed", str(p)) for p in sets]
    out.sort(key=lambda s: Path(s.path).parts[-2:] != DEFAULT_SET)
    out.append(Source("This machine's tables (a folder)", "local"))
    out.append(Source("Imported tables (a folder)", "imported"))
    if shared.is_dir():
        found = sorted(p for p in shared.iterdir() if p.is_dir() and _has_tables(p))
        out += [Source(f"{p.name} (shared reference data)", "shared", str(p)) for p in found]
    return out


def signature(folder: str | Path) -> tuple[tuple[str, int, int], ...]:
    """(file, bytes, mtime ns) of every table under ``folder`` (() when it has none): the caches' key."""
    from moesim.profiling.tables import folder_signature

    return folder_signature(folder, "*.parquet")


def is_aiconfigurator(folder: str | Path) -> bool:
    """Whether ``folder`` holds AIConfigurator's raw ``*_perf.parquet`` files rather than moesim tables."""
    folder = Path(folder)
    return folder.is_dir() and any(folder.glob("*_perf.parquet"))


def tables_folder(folder: str | Path) -> str:
    """The folder of moesim tables for ``folder``: itself, or for an AIConfigurator folder its conversion
    (`import_aiconfigurator`, done once per version of the files into `cache_root`)."""
    folder = Path(folder).expanduser()
    if not is_aiconfigurator(folder):
        return str(folder)
    sig = repr(signature(folder)).encode()
    out = cache_root() / f"import-{folder.name}-{hashlib.sha1(sig).hexdigest()[:12]}"
    if not (out / ".done").is_file():
        from moesim.profiling import import_aiconfigurator

        tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".import-"))
        import_aiconfigurator(folder, tmp)
        (tmp / ".done").write_text(str(folder))
        try:
            tmp.rename(out)
        except OSError:  # converted meanwhile by another session: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not (out / ".done").is_file():
                raise
    return str(out)


def _meta_row(meta: dict[str, Any]) -> dict[str, Any]:
    keys = [k for k in META_ORDER if k in meta] + sorted(k for k in meta if k not in META_ORDER)
    row = {}
    for k in keys:
        v = meta[k]
        if isinstance(v, list | tuple):
            v = ", ".join(map(str, v))
        if not isinstance(v, dict):
            row[k] = v
    return row


@st.cache_data(show_spinner=False)
def load_set(folder: str, sig: tuple[tuple[str, int, int], ...]) -> TableSet:
    """Read every table under ``folder`` (`profiling.load_tables`); ``sig`` (`signature`) keys the cache.

    Raises `profiling.TableError` for a missing folder, a folder without tables or an unreadable table.
    """
    from moesim.profiling import KINDS, load_tables

    loaded = load_tables([folder])
    parts: dict[str, list[pd.DataFrame]] = {}
    files, hw = [], {}
    base = Path(folder)
    for df, meta, path in loaded:
        name = str(path.relative_to(base)) if path.is_relative_to(base) else path.name
        kinds = sorted(df["op"].astype(str).unique(), key=lambda k: KINDS.index(k))
        for kind in kinds:
            parts.setdefault(kind, []).append(df[df["op"] == kind].assign(file=name))
        files.append({"file": name, "kinds": ", ".join(kinds), "rows": len(df)} | _meta_row(meta))
        spec = meta.get("hardware") or {}
        if spec:
            peaks = {f"peak_{k}": float(v) for k, v in (spec.get("peak_flops") or {}).items()}
            src = (spec.get("sources") or {}).get("peak_flops", "")
            hw[spec.get("key")] = (
                {"device_key": spec.get("key"), "name": spec.get("name")}
                | peaks
                | {
                    "memory_bandwidth": spec.get("memory_bandwidth"),
                    "spec_source": src,
                }
            )
    tables = {}
    for kind in sorted(parts, key=KINDS.index):
        t = pd.concat(parts[kind], ignore_index=True).dropna(axis=1, how="all")
        tables[kind] = t if len(parts[kind]) > 1 else t.drop(columns="file")
    return TableSet(folder, tables, pd.DataFrame(files), pd.DataFrame(list(hw.values())))


@st.cache_data(show_spinner=False)
def calibrate_set(folder: str, sig: tuple[tuple[str, int, int], ...], holdout: float, seed: int) -> CalibrationView:
    """Calibrate on the tables under ``folder`` (`profiling.calibrate`, ``holdout`` share of each fit's shapes
    held out, split by ``seed``); the library's error report as tables (see `CalibrationView`)."""
    from moesim.profiling import calibrate

    cal = calibrate([folder], holdout=holdout, seed=seed)
    rows, points = [], []
    for f in cal.fits:
        rows.append({"fit": f.key} | f.summary())
        if len(f.holdout):
            h = f.holdout
            ape = (h["predicted_s"] / h["measured_s"] - 1.0).abs() * 100.0
            points.append(h.assign(fit=f.key, kind=f.kind, ape=ape))
    errors = pd.DataFrame(rows)
    errors["error_on"] = np.where(errors["rows_holdout"] > 0, "held-out shapes", "inner validation")
    errors.loc[errors["mape"].isna(), "error_on"] = "-"
    cols = ["fit", "kind", "measured_s", "predicted_s", "ape"]
    pts = pd.concat(points, ignore_index=True)[cols] if points else pd.DataFrame(columns=cols)
    return CalibrationView(errors, pts, dict(cal.skew), holdout, seed)


def run_quick_profile(
    progress: Callable[[int, int, str], None] | None = None, previous: str | None = None
) -> dict[str, Any]:
    """Profile this CPU briefly (`QUICK`: the demo's grid, GEMMs and grouped GEMMs in fp32) into a new folder
    under `cache_root`, removing the ``previous`` run's folder once done.

    Returns ``folder``, ``rows`` per kind, ``wall_s`` (s), ``device``, ``threads``, ``skipped``.
    ``progress(done, total, label)`` is called after each point. Needs torch (`torch_available`).
    """
    from moesim.profiling import profile

    out = tempfile.mkdtemp(dir=cache_root(), prefix="quick-profile-")
    try:
        run = profile(QUICK["device"], out, mode=QUICK["mode"], ops=list(QUICK["ops"]), progress=progress)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    summary = {
        "folder": str(run.out),
        "rows": dict(run.rows),
        "wall_s": run.wall_s,
        "device": run.meta.get("device"),
        "threads": run.meta.get("threads"),
        "skipped": list(run.skipped),
    }
    if previous and Path(previous).parent == cache_root() and Path(previous).name.startswith("quick-profile-"):
        shutil.rmtree(previous, ignore_errors=True)
    return summary


#: The quick profile's wall time measured on this project's 2-core CI VM (AMD EPYC, 2 threads, torch CPU),
#: ``profile("cpu", out, mode="tiny", ops=["gemm", "moe"])`` with the import, 2026-12-06, after the tiny grid's
#: visits got a 0.05 s budget (`profiling.runner.VISIT_BUDGET_S`): 5.4-6.6 s for its 225 visits (75 points x 3
#: passes) when the cores were mostly free (load average 1.7); 24.6-30.9 s with four busy processes on the cores
#: (load average 4.0-4.7), where the 0.2 s budget before took 45.6-51.3 s (load 5.1-5.6; 2026-12-04: 76 s from the
#: dashboard's button at load average 9, 140 s at 15).
QUICK_IDLE_S = 6.0
#: The same run's time with other work on the two cores, s (measured at load averages 4.0-4.7, above).
QUICK_BUSY_S = (25.0, 31.0)


def quick_profile_promise() -> str:
    """What the button promises, as measured (`QUICK_IDLE_S`, `QUICK_BUSY_S`)."""
    lo, hi = QUICK_BUSY_S
    return (
        f"about {fmt_seconds(QUICK_IDLE_S, 1)} on an idle 2-core CPU; {lo:.0f}-{hi:.0f} s measured with four other "
        "busy processes on its two cores (every timed visit then runs to its time budget), longer under more load"
    )


def hardware_display(hardware: pd.DataFrame) -> pd.DataFrame:
    """The devices table with peak FLOP/s and bandwidth as text with units (``989 TFLOP/s``, ``3.35 TB/s``)."""
    out = hardware.copy()
    for c in list(out.columns):
        if c.startswith("peak_"):
            out[c] = [fmt_rate(v, "FLOP/s") for v in out[c]]
            out = out.rename(columns={c: c.replace("peak_", "peak ")})
    if "memory_bandwidth" in out:
        out["memory_bandwidth"] = [fmt_rate(v, "B/s") for v in out["memory_bandwidth"]]
        out = out.rename(columns={"memory_bandwidth": "memory bandwidth"})
    return out


def errors_display(errors: pd.DataFrame) -> pd.DataFrame:
    """The calibration error table as the page shows it: without the key columns, the floor in µs."""
    out = errors.drop(columns=["kind", "dtype", "impl", "device"], errors="ignore")
    if "floor_s" in out:
        out = out.assign(floor_us=out["floor_s"] * 1e6).drop(columns="floor_s")
    if "reference" in out and out["reference"].nunique() <= 1:  # one reference for all: said in the ratio's name
        out = out.drop(columns="reference")
    for c in out.columns:  # a missing name reads as a dash, not "None"
        if not pd.api.types.is_numeric_dtype(out[c]):
            out[c] = out[c].astype(object).where(out[c].notna(), MISSING)
    return out


#: The per-file metadata shown in the Tables section (the rest is in its expander).
FILE_COLUMNS = ("file", "kinds", "rows", "source", "device", "dtypes", "mode", "date")


def rows_display(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Measured rows with their times in µs (``time (µs)``, ``p10 (µs)``, ``p90 (µs)``): (table, column config)."""
    names = {"time_s": "time (µs)", "time_p10_s": "p10 (µs)", "time_p90_s": "p90 (µs)"}
    out = rows.copy()
    for c in names:
        if c in out:
            out[c] = out[c] * 1e6
    config = {c: st.column_config.NumberColumn(label, format="%.2f") for c, label in names.items() if c in out}
    return out, config


def kind_colours(kinds: list[str]) -> dict[str, str]:
    """A colour per op kind, stable across sources (`profiling.KINDS` order)."""
    from moesim.profiling import KINDS

    return {k: PALETTE[KINDS.index(k) % len(PALETTE)] if k in KINDS else PALETTE[-1] for k in kinds}


def _empty(title: str, text: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, **_LAYOUT)
    return fig


def scatter_figure(view: CalibrationView) -> go.Figure:
    """Measured against predicted time (s, log-log) of the held-out shapes: one colour per op kind, one marker
    per fit of that kind (dtype, implementation), and the line y = x where the prediction is exact."""
    pts = view.points
    if pts.empty:
        return _empty("Measured vs predicted", "no held-out shapes (each fit has fewer than 10 rows)")
    colours = kind_colours(list(pts["kind"].unique()))
    symbols = ("circle", "diamond", "square", "triangle-up", "x", "cross", "star", "triangle-down")
    trace = go.Scattergl if len(pts) > 3000 else go.Scatter
    errors = view.errors.set_index("fit")
    fig = go.Figure()
    seen: dict[str, int] = {}
    for key, s in pts.groupby("fit", sort=True):
        kind = str(s["kind"].iloc[0])
        n = seen[kind] = seen.get(kind, -1) + 1
        mape = errors.loc[key, "mape"]
        fig.add_trace(
            trace(
                x=s["measured_s"],
                y=s["predicted_s"],
                mode="markers",
                name=f"{key} (MAPE {mape:.1f}%)",
                legendgroup=kind,
                marker={"color": colours[kind], "symbol": symbols[n % len(symbols)], "size": 7, "opacity": 0.7},
                customdata=s["ape"],
                hovertemplate=f"{key}<br>measured %{{x:.3s}}s<br>predicted %{{y:.3s}}s<br>error %{{customdata:.1f}}%"
                "<extra></extra>",
            )
        )
    lo = float(min(pts["measured_s"].min(), pts["predicted_s"].min())) / 1.5
    hi = float(max(pts["measured_s"].max(), pts["predicted_s"].max())) * 1.5
    fig.add_trace(
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x (exact)", line={"color": "#444", "dash": "dot"})
    )
    span = [float(np.log10(lo)), float(np.log10(hi))]
    fig.update_layout(
        title="Measured vs predicted",
        # one label a decade, with its unit (10µs, 1ms): the 2 and 5 minor labels of a log axis crowd
        xaxis={
            "type": "log",
            "title": "measured time",
            "range": span,
            "dtick": 1,
            "tickformat": "~s",
            "ticksuffix": "s",
        },
        yaxis={
            "type": "log",
            "title": "predicted time",
            "range": span,
            "dtick": 1,
            "tickformat": "~s",
            "ticksuffix": "s",
        },
        legend={"font": {"size": 10}, "orientation": "h", "y": -0.2},
        height=560,
        **_LAYOUT,
    )
    return fig


def error_bars(view: CalibrationView) -> go.Figure:
    """MAPE per fit (%, bars coloured by op kind) with the 90th-percentile error marked."""
    e = view.errors.dropna(subset=["mape"])
    if e.empty:
        return _empty("Error per op kind", "no error to show")
    colours = kind_colours(list(e["kind"].unique()))
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            y=e["fit"],
            x=e["mape"],
            orientation="h",
            name="MAPE",
            marker_color=[colours[k] for k in e["kind"]],
            customdata=np.column_stack([e["rows_holdout"], e["error_on"]]),
            hovertemplate="%{y}<br>MAPE %{x:.1f}% on %{customdata[1]} (%{customdata[0]} held out)<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            y=e["fit"],
            x=e["p90_ape"],
            mode="markers",
            name="P90 error",
            marker={"symbol": "line-ns-open", "size": 16, "color": "#222", "line": {"width": 2}},
            hovertemplate="%{y}<br>90% of held-out shapes within %{x:.1f}%<extra></extra>",
        )
    )
    fig.update_layout(
        title="Error per fit: MAPE (bars), P90 (ticks)",
        xaxis_title="error of the prediction (%)",
        yaxis={"autorange": "reversed"},
        height=max(260, 90 + 34 * len(e)),
        showlegend=False,
        **_LAYOUT,
    )
    return fig
