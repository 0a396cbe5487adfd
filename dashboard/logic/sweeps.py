"""The Sweep explorer's work: load a sweep's results (or run a small one), filter them, pivot them.

A sweep's folder (``moesim sweep --out DIR``) holds ``results.parquet`` (or,
while it runs, ``shards/``) and ``manifest.json`` with the sweep's spec; the
spec lets a row be opened again as the scenario it ran.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from moesim.model import MoesimError
from moesim.sim.sweeps.sweep_spec import AXES

#: Metrics offered for heatmaps: column -> (label, lower is better).
METRICS: dict[str, tuple[str, bool]] = {
    "throughput_tok_s": ("output tok/s", False),
    "capacity_req_s": ("capacity, req/s", False),
    "capacity_tok_s": ("capacity, output tok/s", False),
    "usd_per_mtok": ("$ per M output tokens", True),
    "capacity_usd_per_mtok": ("$ per M output tokens at capacity", True),
    "tpot_p50_s": ("TPOT p50, s", True),
    "tpot_p99_s": ("TPOT p99, s", True),
    "ttft_p99_s": ("TTFT p99, s", True),
    "e2e_p99_s": ("end-to-end p99, s", True),
    "slo_attainment": ("SLO attainment", False),
    "goodput_req_s": ("goodput, req/s", False),
    "s_mbu": ("S-MBU", False),
    "s_mfu": ("S-MFU", False),
    "usd_per_hour": ("$ per hour", True),
}

#: The small sweep the page offers to run here (analytical, about a hundred points, seconds on one core).
SMALL_SWEEP = """\
# Mixtral-8x7B on three GPUs, 4 or 8 of them, two layouts, two precisions, four request rates (analytical).
name: dashboard-small
base:
  model: mixtral-8x7b
  gpus_per_node: 8
  engine: {max_batch: 256, max_tokens: 8192}
  workload:
    arrival: poisson
    requests: 2000
    input: {dist: lognormal, mean: 512, cv: 1.0, max: 8192}
    output: {dist: lognormal, mean: 256, cv: 1.0, max: 4096}
  offload: {enabled: true}
  slo: {ttft_s: 2.0, tpot_s: 0.1}
axes:
  gpu: [A100-SXM-80GB, H100-SXM, H200-SXM]
  gpus: [4, 8]
  layout: [{tp: gpus}, {tp: 1, dp_attn: gpus, ep: gpus}]
  precision: [bf16, fp8]
  rate: {start: 4, stop: 64, num: 4, scale: log}
constraints: {memory_fits: true, layout_divides: true}
engine: analytical
"""


def parse_spec(text: str) -> Any:
    """A validated `sim.sweeps.sweep_spec.SweepSpec` from sweep YAML text; `MoesimError` naming the problem."""
    from moesim.model.inputs import parse_yaml
    from moesim.sim.sweeps.sweep_spec import parse_sweep

    data = parse_yaml(text, "the sweep")  # a syntax error names its line; a 40 kB nest is one message too
    if isinstance(data, dict) and isinstance(data.get("base"), str) and not Path(data["base"]).is_absolute():
        repo = Path(__file__).resolve().parents[2]
        data = {**data, "base": str(repo / "examples" / data["base"])}  # as if the file were in examples/
    return parse_sweep(data, "the sweep")


def count_points(text: str) -> tuple[int, dict[str, int]]:
    """Points a sweep would run and the pruned counts (reason -> points)."""
    from moesim.sim.sweeps.sweep_spec import expand

    exp = expand(parse_spec(text))
    return len(exp.points), dict(exp.pruned)


def run_small_sweep(
    text: str, out: str | Path | None = None, progress: Callable[[int, int, str], None] | None = None
) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """Run a sweep in this process into ``out`` (default: a new folder in the server's private scratch folder,
    `dashboard.logic.profiles.cache_root`, removed when the server stops).

    Returns:
        (the rows with ``accuracy`` added, the sweep's summary, the folder).
    """
    from moesim.sim.sweeps.sweep import run_sweep
    from moesim.sim.sweeps.sweep_post import accuracy_columns
    from moesim.sim.sweeps.sweep_report import write_atomic

    spec = parse_spec(text)
    from moesim.dashboard.logic.profiles import cache_root

    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="sweep-", dir=cache_root()))
    res = run_sweep(spec, folder, workers=1, progress=progress, post=False)
    df, _ = accuracy_columns(res.results, spec.accuracy_benchmark)
    write_atomic(folder / "results.parquet", lambda p: df.to_parquet(p, index=False))
    return df, res.summary, str(folder)


@st.cache_data(show_spinner=False, max_entries=8)
def load_folder(folder: str) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """A sweep folder's rows (``results.parquet``, else its shards) and its manifest (None when absent)."""
    from moesim.sim.sweeps.sweep import read_shards
    from moesim.sim.sweeps.sweep_post import accuracy_columns

    d = Path(folder).expanduser()
    if not d.is_dir():
        raise MoesimError(f"{folder} is not a folder", "give the --out folder of a 'moesim sweep' run")
    manifest = None
    if (d / "manifest.json").is_file():
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            raise MoesimError(f"{d}/manifest.json is not valid JSON", "rerun the sweep or remove the file") from None
    if (d / "results.parquet").is_file():
        df = _read_parquet(d / "results.parquet", str(d / "results.parquet"))
    else:
        df = read_shards(d)
    if df.empty:
        raise MoesimError(f"{folder} holds no sweep results", "run 'moesim sweep SWEEP.yaml --out DIR' first")
    check_results(df, folder)
    if "accuracy" not in df.columns:
        df, _ = accuracy_columns(df)
    return df, manifest


def _read_parquet(src: Any, name: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(src)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise MoesimError(
            f"{name} is not a readable Parquet file ({type(exc).__name__})", "give a sweep's results.parquet"
        ) from None


def read_upload(data: bytes, name: str) -> pd.DataFrame:
    """Sweep rows from an uploaded ``results.parquet`` or ``.csv``; `MoesimError` when it is not one."""
    if name.endswith(".parquet"):
        df = _read_parquet(io.BytesIO(data), name)
    elif name.endswith(".csv"):
        try:
            df = pd.read_csv(io.BytesIO(data))
        except (ValueError, UnicodeDecodeError) as exc:
            raise MoesimError(f"{name} is not a readable CSV file ({exc})", "upload results.parquet") from None
    else:
        raise MoesimError(f"{name}: expected .parquet or .csv", "upload a sweep's results.parquet")
    check_results(df, name)
    if "accuracy" not in df.columns:
        from moesim.sim.sweeps.sweep_post import accuracy_columns

        df, _ = accuracy_columns(df)
    return df


def check_results(df: pd.DataFrame, name: str) -> None:
    """`MoesimError` unless ``df`` looks like sweep rows (``label``, ``status``, ``model`` and a metric)."""
    missing = [c for c in ("label", "status", "model") if c not in df.columns]
    if missing or not any(m in df.columns for m in METRICS):
        what = f"columns {missing}" if missing else "any metric column"
        raise MoesimError(f"{name} has no {what}: not a sweep's results", "give a 'moesim sweep' results.parquet")


def axes_of(df: pd.DataFrame) -> list[str]:
    """Axis columns of ``df`` (`sim.sweeps.sweep_spec.AXES`, in their order) that take more than one value."""
    return [c for c in AXES if c in df.columns and df[c].nunique(dropna=True) > 1]


def filter_rows(df: pd.DataFrame, chosen: dict[str, list[Any]], ok_only: bool) -> pd.DataFrame:
    """Rows whose axis values are all among ``chosen`` (column -> allowed values) and, with ``ok_only``, ok."""
    mask = np.ones(len(df), dtype=bool)
    for col, values in chosen.items():
        mask &= df[col].isin(values).to_numpy()
    if ok_only:
        mask &= (df["status"] == "ok").to_numpy()
    return df[mask]


def pivot(df: pd.DataFrame, x: str, y: str, metric: str) -> tuple[np.ndarray, list[Any], list[Any]]:
    """The best ``metric`` over the rows of each (y, x) cell: z [len(ys), len(xs)], xs, ys (sorted).

    Best is the lowest for a lower-is-better metric (`METRICS`), else the highest; NaN for empty cells.
    """
    lower = METRICS.get(metric, ("", False))[1]
    t = df[[x, y, metric]].copy()
    t[metric] = pd.to_numeric(t[metric], errors="coerce")
    g = t.groupby([y, x], dropna=False)[metric].agg("min" if lower else "max").unstack(x)
    xs, ys = sorted_values(list(g.columns)), sorted_values(list(g.index))
    g = g.reindex(index=ys, columns=xs)
    return g.to_numpy(dtype=float), xs, ys


def sorted_values(values: list[Any]) -> list[Any]:
    """``values`` sorted, by their text when they do not compare (mixed types)."""
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


@st.cache_data(show_spinner=False, max_entries=8)
def spec_points(spec_data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """point_id -> scenario mapping of a sweep spec (a manifest's ``spec``)."""
    from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

    spec = parse_sweep(spec_data, "the sweep's manifest")
    return {p.point_id: p.scenario for p in expand(spec).points}
