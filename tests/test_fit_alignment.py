"""Alignment features of the grouped GEMM: expert width and hidden size modulo 16, 64 and 128 are features of the
fit (like GEMM's m % 4 and m % 16), so a misaligned expert width is predicted from other misaligned widths instead
of from its aligned neighbours.

A synthetic fused-MoE table on the H100 spec where widths that are not a multiple of 16 run 4x slower (the real
kernel database shows 4-6x for widths such as 84 and 168).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moesim.model import make_cluster
from moesim.model.hardware import get_gpu
from moesim.model.roofline import RooflineCostModel
from moesim.profiling import fit as fitlib
from moesim.profiling.calibrate import calibrate
from moesim.profiling.costmodel import CalibratedCostModel
from moesim.profiling.opshapes import ALIGN, FEATURES, FLAGS, feature_matrix, features, row_op, row_ops
from moesim.profiling.tables import write_table

WIDTHS = (64, 96, 128, 256, 512, 58, 84, 116, 168, 232)
SLOW = 4.0  # time of a width that is not a multiple of 16, over an aligned one of the same roofline


def _row(tokens: int, width: int) -> dict:
    return {"tokens": tokens, "hidden": 2048, "inter": width, "experts": 16, "top_k": 4, "dtype": "bf16"}


def _truth(r: dict) -> float:
    """Roofline x (1.3 + 2 / (1 + pairs per expert / 16)) x 4 for a width not a multiple of 16, + 10 us."""
    op = row_op("grouped_gemm", r)
    roof = RooflineCostModel().op_time(op, make_cluster(get_gpu("H100-SXM"), num_gpus=1)).seconds
    eff = 1.3 + 2.0 / (1.0 + op.shape["pairs"] / op.shape["active_experts"] / 16.0)
    return roof * eff * (SLOW if r["inter"] % 16 else 1.0) + 10e-6


def _table() -> pd.DataFrame:
    rows = [_row(t, w) for w in WIDTHS for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)]
    return pd.DataFrame([{"op": "grouped_gemm", "impl": "synthetic", **r, "time_s": _truth(r)} for r in rows])


def test_alignment_flags_are_features():
    names = FEATURES["grouped_gemm"]
    assert names[-6:] == ("inter16", "inter64", "inter128", "hidden16", "hidden64", "hidden128")
    assert set(names[-6:]) <= FLAGS and ALIGN == (16, 64, 128)  # flags: the measured-range check skips them
    odd, even = features(row_op("grouped_gemm", _row(64, 84))), features(row_op("grouped_gemm", _row(64, 192)))
    assert odd is not None and even is not None
    assert odd[-6:] == (0.0, 0.0, 0.0, 1.0, 1.0, 1.0) and even[-6:] == (1.0, 1.0, 0.0, 1.0, 1.0, 1.0)
    tp = row_op("grouped_gemm", _row(64, 1536) | {"moe_tp": 16})  # the width after the TP split: 96
    assert features(tp)[-6:-3] == (1.0, 0.0, 0.0)


def test_misaligned_width_is_predicted_from_misaligned_neighbours(tmp_path):
    """Width 84, never measured: with the flags the fit finds it 4x slower; without them it misses by > 30%."""
    h100 = get_gpu("H100-SXM")
    df = _table()
    write_table(df[df["inter"] != 84], tmp_path / "moe.parquet", {"hardware": h100.model_dump()})
    cm = CalibratedCostModel(calibrate([tmp_path], holdout=0.0))
    cluster = make_cluster(h100, num_gpus=1)
    held = df[df["inter"] == 84]
    ops = row_ops("grouped_gemm", held)
    pred = np.array([cm.op_time(op, cluster).seconds for op in ops])
    truth = held["time_s"].to_numpy()
    with_flags = np.abs(pred / truth - 1).mean()
    assert all(cm.op_time(op, cluster).source.startswith("measured:grouped_gemm/bf16/synthetic") for op in ops)
    assert with_flags < 0.2
    # the same fit without the six flags: the aligned widths around 84 (64, 96, 128) pull it toward fast
    train = df[df["inter"] != 84]
    x_train, x_held = feature_matrix(row_ops("grouped_gemm", train))[:, :5], feature_matrix(ops)[:, :5]
    roof = RooflineCostModel()
    ref_train = np.array([roof.op_time(op, cluster).seconds for op in row_ops("grouped_gemm", train)])
    ref_held = np.array([roof.op_time(op, cluster).seconds for op in ops])
    floor = float(train["time_s"].min())
    y = np.log(train["time_s"].to_numpy() / (ref_train + floor))
    (method, k), _ = fitlib.choose(x_train, y, np.random.default_rng(0))
    blind = np.exp(fitlib.fit(method, x_train, y, k).predict(x_held)) * (ref_held + floor)
    without_flags = np.abs(blind / truth - 1).mean()
    print(f"width 84: {with_flags:.3f} with the flags, {without_flags:.3f} without")
    assert without_flags > 0.3 and with_flags < without_flags / 3


@pytest.mark.parametrize("width", [58, 168])
def test_aligned_width_is_not_slowed_by_misaligned_neighbours(tmp_path, width):
    """The flags cut both ways: an aligned width between misaligned ones stays fast."""
    h100 = get_gpu("H100-SXM")
    df = _table()
    write_table(df[df["inter"] != 128], tmp_path / "moe.parquet", {"hardware": h100.model_dump()})
    cm = CalibratedCostModel(calibrate([tmp_path], holdout=0.0))
    cluster = make_cluster(h100, num_gpus=1)
    held = df[df["inter"] == 128]
    pred = np.array([cm.op_time(op, cluster).seconds for op in row_ops("grouped_gemm", held)])
    assert np.abs(pred / held["time_s"].to_numpy() - 1).mean() < 0.2
    odd = df[df["inter"] == width]  # a measured misaligned width is still its own (slow) self
    pred = np.array([cm.op_time(op, cluster).seconds for op in row_ops("grouped_gemm", odd)])
    assert np.abs(pred / odd["time_s"].to_numpy() - 1).mean() < 0.1


def test_calibration_from_before_the_alignment_flags_is_one_clear_line(tmp_path):
    """A calibration file written before the grouped-GEMM alignment flags existed cannot be read: the error says
    it is outdated and how to remake it, not that it is damaged."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fast_inputs import TABLES

    from moesim.model.errors import MoesimError
    from moesim.profiling.costmodel import load, save

    path = save(calibrate([TABLES], kinds=["grouped_gemm"]), tmp_path / "cal.parquet")
    table = pq.read_table(path)
    old = [c for c in table.column_names if c in {f"x{j}" for j in range(5, 11)}]
    assert old  # today's grouped-GEMM fits store 11 features
    older = table.drop(old).replace_schema_metadata(table.schema.metadata)
    pq.write_table(
        pa.Table.from_pandas(older.to_pandas(), preserve_index=False).replace_schema_metadata(table.schema.metadata),
        path,
    )
    with pytest.raises(MoesimError) as err:
        load(path)
    assert "older moesim" in err.value.one_line() and "moesim calibrate" in err.value.one_line()
