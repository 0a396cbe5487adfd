"""``moesim calibrate``: measured tables in, a `CostModel` with its held-out error out.

For every (op kind, dtype, implementation, device) in the tables:

1. each row becomes the `Op` the simulator would build (`profiling.opshapes`)
   and its reference time is the op's roofline on the measured device (the
   spec in the table's metadata) plus the fastest call measured (the launch
   floor); the target is y = ln(measured / reference);
2. a random ``holdout`` fraction of the shapes is set aside;
3. the method (`profiling.fit`) is chosen on the rest by an inner split, then
   fitted on all of the rest;
4. the held-out shapes measure the shipped predictor's error: MAPE and the
   90th percentile of the absolute percentage error.

The shipped fit is the one the error describes (fitted without the held-out
rows); ``holdout=0`` fits everything and reports the inner validation error.
Grouped-GEMM rows with a skewed token distribution are not fitted: the skew
model (`profiling.skew`) predicts them from the balanced fit, and its error
is reported beside.

The file written (`save`) is one parquet: the training points (features and
y per fit) with every fit's method, coefficients, range, device and errors
in its metadata. Each fit's summary names the engine kernel its ``impl``
times (``kernel``: e.g. ``moe:triton`` for ``vllm_fused_moe`` and our
``triton_graph``; `profiling.costmodel.KERNELS`), the name a scenario's
``engine.moe_kernel`` / ``engine.attention_backend`` asks for.
`CalibratedCostModel` loads it. `Fit`, `Calibration`, `save`, `load` and
`CalibratedCostModel` live in `profiling.costmodel`, which the skew model
builds on too; they stay importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.model.errors import MoesimError
from moesim.model.hardware import HardwareSpec, local_cpu
from moesim.profiling import fit as fitlib
from moesim.profiling.costmodel import (
    MAX_GAP,
    META_KEY,
    RANGE_SLACK,
    CalibratedCostModel,
    Calibration,
    Fit,
    check_out,
    is_calibration_file,
    load,
    reference_times,
    save,
)
from moesim.profiling.opshapes import check_dtypes, feature_matrix, row_ops
from moesim.profiling.skew import skew_error
from moesim.profiling.tables import TableError, load_tables

# names from `profiling.costmodel` included: callers have always imported them from here
__all__ = [
    "MAX_GAP",
    "META_KEY",
    "RANGE_SLACK",
    "CalibratedCostModel",
    "Calibration",
    "Fit",
    "Progress",
    "calibrate",
    "check_out",
    "is_calibration_file",
    "load",
    "reference_times",
    "save",
]


def _hardware(meta: dict[str, Any], where: Path, override: HardwareSpec | None) -> HardwareSpec:
    if override is not None:
        return override
    if meta.get("hardware"):
        return HardwareSpec(**meta["hardware"])
    if meta.get("device_type", "cpu") == "cpu":
        return local_cpu()
    raise TableError(f"{where}: the table names no hardware", "calibrate with --hardware FILE --gpu NAME")


Progress = Callable[[int, int, str], None]


def calibrate(
    paths: list[str | Path],
    *,
    holdout: float = 0.2,
    seed: int = 0,
    hardware: HardwareSpec | None = None,
    kinds: list[str] | None = None,
    progress: Progress | None = None,
) -> Calibration:
    """Fit a predictor per (kind, dtype, impl, device) of the tables under ``paths`` (see the module docstring)."""
    if not 0.0 <= holdout < 1.0:
        raise MoesimError(f"--holdout {holdout} is outside [0, 1)", "use a fraction such as 0.2")
    groups: dict[tuple[str, str, str, str], list[pd.DataFrame]] = {}
    specs: dict[str, HardwareSpec] = {}
    skewed: list[tuple[pd.DataFrame, str]] = []
    sources = []
    seen_kinds: set[str] = set()
    for df, meta, path in load_tables(paths):
        check_dtypes(df, path)
        hw = _hardware(meta, path, hardware)
        specs[hw.key] = hw
        sources.append(str(path))
        if "distribution" in df.columns:
            skew_rows = df["distribution"].astype(str) != "balanced"
            if skew_rows.any():
                skewed.append((df[skew_rows], hw.key))
            df = df[~skew_rows]
        seen_kinds.update(str(k) for k in df["op"].unique())
        for (kind, dtype, impl), part in df.groupby(["op", "dtype", "impl"], sort=True):
            if kinds and kind not in kinds:
                continue
            groups.setdefault((str(kind), str(dtype), str(impl), hw.key), []).append(part)
    unknown = sorted(set(kinds or ()) - seen_kinds)
    if unknown:
        raise TableError(
            f"--kinds {','.join(unknown)}: no such op kind in the tables",
            f"choose from {', '.join(sorted(seen_kinds)) or 'none (the tables are empty)'}",
        )
    if not groups:
        raise TableError("no rows to calibrate on", "give tables with balanced rows of the kinds asked for")
    fits = []
    for i, ((kind, dtype, impl, dev), parts) in enumerate(sorted(groups.items())):
        if progress:
            progress(i, len(groups), f"{kind}/{dtype}/{impl}@{dev}")
        rng = group_rng(seed, kind, dtype, impl, dev)
        fits.append(_fit_group(kind, dtype, impl, specs[dev], pd.concat(parts, ignore_index=True), holdout, rng))
    if progress:
        progress(len(groups), len(groups), "done")
    cal = Calibration(fits, sources=sources)
    if skewed:
        cal.skew = skew_error(cal, pd.concat([d for d, _ in skewed], ignore_index=True), skewed[0][1])
    return cal


def group_rng(seed: int, kind: str, dtype: str, impl: str, device: str) -> np.random.Generator:
    """The random generator of one table's fit (its held-out rows and cross-validation folds): a fresh one seeded
    by ``seed`` for every table, so a table's fit is the same whatever other tables are calibrated with it. One
    generator drawn in turn by every table made a fit depend on the tables sorted before it: adding the H100 fp8
    GEMM table to ``full-bf16`` moved its bf16 grouped-GEMM fit from ``local:25`` to ``local:13`` (near-equal
    cross-validated errors, 3.81% and 3.83%) and its time for Qwen3-235B's training-sized experts by 37%. A
    calibration of one table is unchanged; ``kind``, ``dtype``, ``impl`` and ``device`` name the table (unused:
    the same folds for every table of a size keep each fit independent of the others)."""
    del kind, dtype, impl, device
    return np.random.default_rng(seed)


def _fit_group(
    kind: str, dtype: str, impl: str, hw: HardwareSpec, df: pd.DataFrame, holdout: float, rng: np.random.Generator
) -> Fit:
    ops = row_ops(kind, df)
    x = feature_matrix(ops)
    roof, how = reference_times(ops, hw)
    times = df["time_s"].to_numpy(float)
    n = len(df)
    order = rng.permutation(n)
    cut = round(n * holdout) if n >= 10 else 0
    test, train = order[:cut], order[cut:]
    floor = float(times[train].min())
    ref = roof + floor
    y = np.log(times / ref)
    (method, k), scores = fitlib.choose(x[train], y[train], rng)
    pred = fitlib.fit_tied(scores, x[train], y[train]) if scores else fitlib.fit(method, x[train], y[train], k)
    if cut:
        err = fitlib.ape(pred.predict(x[test]), y[test])
        mape, p90 = float(err.mean()), float(np.percentile(err, 90))
        held = pd.DataFrame(
            {"measured_s": df["time_s"].to_numpy()[test], "predicted_s": np.exp(pred.predict(x[test])) * ref[test]}
        )
    else:
        mape = scores.get(f"{method}:{k}", math.nan)
        p90, held = math.nan, pd.DataFrame()
    return Fit(
        kind, dtype, impl, hw.key, hw, pred, x[train].min(axis=0), x[train].max(axis=0),
        len(train), cut, mape, p90, scores, how, floor, held,
    )  # fmt: skip
