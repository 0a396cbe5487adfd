"""The GPU kernel tables committed under profiling/data/: readable, labelled with their GPU, usable.

Each folder profiling/data/<gpu>/<run>/ holds one `moesim profile --device cuda` run as it was written (parquet
tables and hardware.yaml); <gpu> is the GPU preset's key in lower case (h100-sxm: H100-SXM). No GPU is needed
here: the tables are read and calibrated on the CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from moesim.model.hardware import get_gpu, make_cluster
from moesim.profiling.calibrate import CalibratedCostModel, calibrate
from moesim.profiling.opshapes import row_op
from moesim.profiling.runner import cuda_preset
from moesim.profiling.tables import SHAPE_COLUMNS, read_table

DATA = Path(__file__).resolve().parents[1] / "profiling" / "data"
RUNS = sorted({f.parent for f in DATA.glob("*/*/*.parquet")})


def test_gpu_tables_are_committed():
    assert any(r.parent.name == "h100-sxm" for r in RUNS), f"no H100 SXM tables under {DATA}"


@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r.parent.name}/{r.name}")
def test_tables_read_and_name_their_gpu(run):
    key = run.parent.name.upper()
    hardware = yaml.safe_load((run / "hardware.yaml").read_text())
    assert list(hardware) == [key]
    for path in sorted(run.glob("*.parquet")):
        df, meta = read_table(path)  # check_table: columns, op kinds, positive times
        assert meta["device_type"] == "cuda" and meta["source"] == "moesim profile"
        assert meta["device_key"] == key and meta["hardware"]["key"] == key
        preset = cuda_preset(meta["device"])  # the name torch reported, e.g. "NVIDIA H100 80GB HBM3"
        assert preset is not None and preset.key == key, meta["device"]
        assert meta["driver"] and meta["torch"] and meta["triton"] and meta["gpu_count"] >= 1
        assert meta["mode"] == run.name.split("-")[0] and set(df["dtype"]) <= set(meta["dtypes"]) | {"fp32"}
        assert set(df["op"]) == {path.stem}
        assert not df[list(SHAPE_COLUMNS[path.stem])].isna().any().any()


def test_calibration_on_the_gpu_tables_predicts_finite_times():
    runs = [r for r in RUNS if r.name.startswith("quick-")] or RUNS
    cal = calibrate(runs, holdout=0.0)
    assert {f.device_key for f in cal.fits} == {r.parent.name.upper() for r in runs}
    model = CalibratedCostModel(cal)
    tables = [(r.parent.name.upper(), *read_table(f)) for r in runs for f in sorted(r.glob("*.parquet"))]
    for fit in cal.fits:
        cluster = make_cluster(get_gpu(fit.device_key), num_gpus=1)
        df = pd.concat([d for key, d, _ in tables if key == fit.device_key and d["op"].iloc[0] == fit.kind])
        rows = df[(df["dtype"] == fit.dtype) & (df["impl"] == fit.impl)]
        if "skew_set" in rows:  # the skew set's balanced rows reach beyond the grid the other impl covers
            rows = rows[~rows["skew_set"].astype(bool) & (rows["distribution"] == "balanced")]
        for r in rows.iloc[[0, len(rows) // 2, -1]].to_dict("records"):
            t = model.op_time(row_op(fit.kind, r), cluster)
            assert math.isfinite(t.seconds) and t.seconds > 0, (fit.key, r)
            assert t.source.startswith("measured:"), (fit.key, t.source)
            # a measured shape is predicted near its own time, or below it where another impl of the kind is faster
            assert t.seconds < 2 * r["time_s"], (fit.key, r, t)
