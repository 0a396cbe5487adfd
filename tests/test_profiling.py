"""Kernel tables, the calibration and the calibrated cost model, on tables with a known answer.

The synthetic tables time each shape as its roofline on the test GPU times
an efficiency that varies smoothly with the shape, so the calibration has a
right answer to find; the real-data checks live in tests/test_profiling_real.py
and benchmarks/.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from moesim.model import Batch, Layout, Precision, estimate_step, load_model, make_cluster
from moesim.model.ops import experts_op, gemm
from moesim.model.roofline import RooflineCostModel
from moesim.profiling import fit as fitlib
from moesim.profiling.aiconfigurator import convert
from moesim.profiling.calibrate import CalibratedCostModel, calibrate, load, save
from moesim.profiling.opshapes import features, row_op, table_dtype
from moesim.profiling.skew import predict_skewed
from moesim.profiling.tables import TableError, check_table, load_tables, read_meta, read_table, write_table


def _efficiency(m: np.ndarray) -> np.ndarray:
    """Measured / roofline: 3x at one row, falling smoothly to 1.25x at many."""
    return 1.25 + 1.75 / (1.0 + (np.asarray(m, float) / 32.0) ** 0.8)


def gemm_table(gpu, dtype: str = "bf16") -> pd.DataFrame:
    ms = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    nks = [1024, 2048, 4096, 8192]
    rows = []
    roof = RooflineCostModel()
    cluster = make_cluster(gpu, num_gpus=1)
    for m, n, k in itertools.product(ms, nks, nks):
        op = row_op("gemm", {"m": m, "n": n, "k": k, "dtype": dtype})
        t = roof.op_time(op, cluster).seconds * _efficiency(m)
        rows.append({"op": "gemm", "impl": "synthetic", "dtype": dtype, "m": m, "n": n, "k": k, "time_s": t})
    return pd.DataFrame(rows)


def moe_table(gpu) -> pd.DataFrame:
    """Per-expert additive grouped GEMMs: each active expert costs its own roofline x efficiency(pairs)."""
    roof = RooflineCostModel()
    cluster = make_cluster(gpu, num_gpus=1)
    rows = []
    for tokens in sorted({2**i for i in range(13)} | {3 * 2**i for i in range(11)}):
        r = {"tokens": tokens, "hidden": 2048, "inter": 1024, "experts": 16, "top_k": 4, "dtype": "bf16"}
        op = row_op("grouped_gemm", r)
        per = op.shape["pairs"] / op.shape["active_experts"]
        t = roof.op_time(op, cluster).seconds * _efficiency(per)
        rows.append({"op": "grouped_gemm", "impl": "synthetic", **r, "time_s": t})
    return pd.DataFrame(rows)


@pytest.fixture
def tables(tmp_path, h100):
    meta = {"source": "synthetic", "device_key": h100.key, "hardware": h100.model_dump()}
    write_table(gemm_table(h100), tmp_path / "gemm.parquet", meta)
    write_table(moe_table(h100), tmp_path / "moe.parquet", meta)
    return tmp_path


# --- tables -----------------------------------------------------------------------------------


def test_a_calibration_beside_the_tables_is_not_read_as_one(tables):
    """`moesim profile` suggests `moesim calibrate DIR --out DIR/calibration.parquet`: DIR must still load."""
    save(calibrate([tables], holdout=0.2, seed=0), tables / "calibration.parquet")
    assert sorted(f.name for _, _, f in load_tables([tables])) == ["gemm.parquet", "moe.parquet"]
    calibrate([tables], holdout=0.2, seed=0)  # used to fail on the calibration file


def test_check_table_names_each_problem():
    ok = pd.DataFrame(
        {"op": ["gemm"], "impl": ["x"], "dtype": ["bf16"], "m": [1], "n": [2], "k": [3], "time_s": [1e-3]}
    )
    check_table(ok, "t")
    with pytest.raises(TableError, match="empty"):
        check_table(ok.iloc[:0], "t")
    with pytest.raises(TableError, match=r"missing column.*time_s"):
        check_table(ok.drop(columns="time_s"), "t")
    with pytest.raises(TableError, match=r"gemm rows need column.*k"):
        check_table(ok.drop(columns="k"), "t")
    with pytest.raises(TableError, match=r"unknown op kind.*conv"):
        check_table(ok.assign(op="conv"), "t")
    with pytest.raises(TableError, match="non-positive"):
        check_table(ok.assign(time_s=-1.0), "t")


def test_grouped_gemm_optional_columns_get_defaults():
    df = pd.DataFrame([{"op": "grouped_gemm", "impl": "x", "dtype": "bf16", "time_s": 1.0}
                       | {"tokens": 8, "hidden": 64, "inter": 32, "experts": 4, "top_k": 2}])  # fmt: skip
    out = check_table(df, "t")
    assert (out["ep"].iloc[0], out["moe_tp"].iloc[0], out["distribution"].iloc[0]) == (1, 1, "balanced")


def test_write_read_round_trip_keeps_metadata(tmp_path, h100):
    path = write_table(gemm_table(h100).head(5), tmp_path / "g.parquet", {"device": "test", "threads": 2})
    df, meta = read_table(path)
    assert len(df) == 5 and meta == {"device": "test", "threads": 2} == read_meta(path)
    assert not list(tmp_path.glob(".*tmp"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(TableError, match="not a readable parquet"):
        read_table(tmp_path / "bad.parquet")


# --- ops and features --------------------------------------------------------------------------


def test_row_ops_match_the_simulators_ops():
    """A measured row and the simulator's op for the same shape have the same FLOPs, bytes and features."""
    p = Precision("fp8")
    sim = gemm("x", "", 1, 64, 4096, 2048, p.weight_bytes, p.activation_bytes, "fp8")
    row = row_op("gemm", {"m": 64, "n": 4096, "k": 2048, "dtype": "fp8"})
    assert (row.flops, row.bytes, row.dtype) == (sim.flops, sim.bytes, sim.dtype)
    assert features(row) == features(sim) and table_dtype(sim) == "fp8"
    sim = experts_op(256, 4096, 1792, 2, 8, 2, Precision("bf16"), "bf16", moe_tp=8, balanced=True)
    row = row_op("grouped_gemm", {"tokens": 256, "hidden": 4096, "inter": 14336, "experts": 8, "top_k": 2}
                 | {"ep": 2, "moe_tp": 8, "dtype": "bf16"})  # fmt: skip
    assert (row.flops, row.bytes) == (sim.flops, sim.bytes) and features(row) == features(sim)


def test_table_dtype_names_the_weights_not_the_math():
    """int4 (W4A16) runs at the bf16 peak but must be looked up in int4 tables."""
    int4 = Precision("int4")
    op = gemm("x", "", 1, 8, 64, 64, int4.weight_bytes, int4.activation_bytes, "bf16")
    assert table_dtype(op) == "int4"
    assert table_dtype(gemm("x", "", 1, 8, 64, 64, 4.0, 4.0, "fp32")) == "fp32"


# --- fitting ----------------------------------------------------------------------------------


def test_neighbour_methods_interpolate_a_smooth_surface():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, size=(600, 3))
    y = np.sin(x[:, 0] / 3) + 0.1 * x[:, 1]
    q = rng.uniform(1, 9, size=(100, 3))
    truth = np.sin(q[:, 0] / 3) + 0.1 * q[:, 1]
    for method in ("knn", "local", "poly2"):
        err = np.abs(fitlib.fit(method, x, y).predict(q) - truth)
        assert err.mean() < 0.1, method
    assert np.ptp(fitlib.fit("constant", x, y).predict(q)) == 0
    (method, k), scores = fitlib.choose(x, y, rng)
    assert method in ("local", "poly2", "knn") and scores[f"{method}:{k}"] <= scores["constant:0"]


# --- calibration -------------------------------------------------------------------------------


def test_calibration_recovers_a_known_efficiency(tables):
    cal = calibrate([tables], holdout=0.2, seed=0)
    by_kind = {f.kind: f for f in cal.fits}
    g = by_kind["gemm"]
    assert g.rows_holdout == round(0.2 * 13 * 16) and g.rows_fit + g.rows_holdout == 13 * 16
    assert g.mape < 3.0, g.summary()
    assert by_kind["grouped_gemm"].mape < 10.0


def test_calibrated_model_in_range_out_of_range_and_unmeasured(tables, h100):
    model = CalibratedCostModel(calibrate([tables]))
    cluster = make_cluster(h100, num_gpus=1)
    roof = RooflineCostModel()
    op = row_op("gemm", {"m": 48, "n": 3000, "k": 3000, "dtype": "bf16"})
    t = model.op_time(op, cluster)
    assert t.source.startswith("measured:gemm/bf16")
    assert t.seconds == pytest.approx(roof.op_time(op, cluster).seconds * _efficiency(48), rel=0.05)
    # beyond the measured K (2^13): the table followed along its edge (the edge's ratio to the roofline), not the
    # bare roofline
    far = row_op("gemm", {"m": 64, "n": 3000, "k": 2**20, "dtype": "bf16"})  # 2^6 rows: no fewer-row bound
    edge = row_op("gemm", {"m": 64, "n": 3000, "k": 2**13, "dtype": "bf16"})
    t, t_edge = model.op_time(far, cluster), model.op_time(edge, cluster)
    assert t.source.startswith("edge k=2^20.0->2^13.0 measured:gemm/bf16")
    assert t.seconds > roof.op_time(far, cluster).seconds
    floor = next(f.floor_s for f in model.calibration.fits if f.kind == "gemm")
    ratio = t_edge.seconds / (roof.op_time(edge, cluster).seconds + floor)
    assert t.seconds / (roof.op_time(far, cluster).seconds + floor) == pytest.approx(ratio, rel=1e-9)
    fp8 = row_op("gemm", {"m": 48, "n": 3000, "k": 3000, "dtype": "fp8"})
    assert model.op_time(fp8, cluster).source == "roofline: no measured gemm/fp8 table"


def test_transfer_scales_compute_and_memory_bound_shapes_separately(tables, h100):
    """On a GPU with 2x the peak and 1.5x the bandwidth, compute-bound shapes halve, memory-bound ones shrink 1.5x."""
    model = CalibratedCostModel(calibrate([tables]))
    other = h100.model_copy(
        update={"key": "OTHER", "peak_flops": {k: 2 * v for k, v in h100.peak_flops.items()}, "memory_bandwidth": 6e12}
    )
    here, there = make_cluster(h100, num_gpus=1), make_cluster(other, num_gpus=1)
    big = row_op("gemm", {"m": 4096, "n": 8192, "k": 8192, "dtype": "bf16"})  # compute-bound
    small = row_op("gemm", {"m": 1, "n": 8192, "k": 8192, "dtype": "bf16"})  # memory-bound
    t_big, t_small = model.op_time(big, there), model.op_time(small, there)
    assert t_big.source.startswith("transfer:gemm/bf16/synthetic@TEST-GPU->OTHER")
    # (the launch floor, a few microseconds, does not scale: hence 3%)
    assert t_big.seconds == pytest.approx(model.op_time(big, here).seconds / 2, rel=0.03)
    assert t_small.seconds == pytest.approx(model.op_time(small, here).seconds / 1.5, rel=0.03)


def test_save_load_round_trip_predicts_the_same(tables, tmp_path, h100):
    cal = calibrate([tables])
    path = save(cal, tmp_path / "cal.parquet")
    again = load(path)
    assert [f.summary() for f in again.fits] == [f.summary() for f in cal.fits]
    a, b = CalibratedCostModel(cal), CalibratedCostModel.from_file(path)
    cluster = make_cluster(h100, num_gpus=1)
    for m in (1, 7, 300, 3000):
        op = row_op("gemm", {"m": m, "n": 2000, "k": 5000, "dtype": "bf16"})
        assert a.op_time(op, cluster).seconds == b.op_time(op, cluster).seconds


def test_calibrated_model_drives_a_step_estimate(tables, h100):
    """Every op of a Mixtral decode step is timed: measured where tables exist, else achievable or roofline (why)."""
    model = CalibratedCostModel(calibrate([tables]))
    cluster = make_cluster(h100, num_gpus=8)
    est = estimate_step(load_model("mixtral-8x7b"), Batch.decode(16, 1024), Layout(tp=8), cluster, cost_model=model)
    sources = {op.kind: t.source for op, t in zip(est.ops, est.times, strict=True)}
    assert sources["gemm"].startswith("measured:") and sources["attention"].startswith("achievable: no measured")
    roof = estimate_step(load_model("mixtral-8x7b"), Batch.decode(16, 1024), Layout(tp=8), cluster)
    assert est.step_s > roof.step_s  # measured kernels are slower than the hardware's limit


def test_skew_model_is_exact_for_additive_experts(h100, tmp_path):
    """When each expert costs t_bal(n)/L, the skew model predicts any distribution of the same layer."""
    meta = {"hardware": h100.model_dump()}
    write_table(moe_table(h100), tmp_path / "moe.parquet", meta)
    model = CalibratedCostModel(calibrate([tmp_path], holdout=0.0))
    counts = [200, 50, 10, 1, 1, 0, 0, 0, 30, 30, 30, 30, 30, 30, 30, 30]
    row = {"tokens": sum(counts) // 4, "hidden": 2048, "inter": 1024, "experts": 16, "top_k": 4, "dtype": "bf16"}
    got = predict_skewed(model, row | {"expert_counts": counts}, h100.key)
    cluster, roof = make_cluster(h100, num_gpus=1), RooflineCostModel()
    want = 0.0
    for c in counts:
        if c:
            bal = row_op("grouped_gemm", row | {"tokens": c * 16 / 4})
            want += roof.op_time(bal, cluster).seconds * _efficiency(c) / 16
    assert got == pytest.approx(want, rel=0.05)


# --- importers --------------------------------------------------------------------------------


def test_aiconfigurator_rows_convert_with_units(tmp_path):
    gemm_raw = pd.DataFrame({"gemm_dtype": ["bfloat16", "fp8_block"], "m": [1, 2], "n": [3, 4], "k": [5, 6]}
                            | {"latency": [0.5, 1.0], "kernel_source": ["vllm_default"] * 2})  # fmt: skip
    g = convert("gemm_perf", gemm_raw, tmp_path)
    assert list(g["dtype"]) == ["bf16", "fp8_block"] and list(g["impl"]) == ["vllm_default", "vllm_default"]
    assert list(g["time_s"]) == [0.5e-3, 1.0e-3]
    nccl_raw = pd.DataFrame({"op_name": ["alltoall", "all_reduce"], "nccl_dtype": ["half", "int8"]}
                            | {"num_gpus": [8, 2], "message_size": [1024, 1024], "latency": [0.01, 0.02]})  # fmt: skip
    n = convert("nccl_perf", nccl_raw, tmp_path)
    assert list(n["op"]) == ["all_to_all", "all_reduce"] and list(n["bytes"]) == [2048, 1024]
    with pytest.raises(TableError, match="missing column"):
        convert("moe_perf", gemm_raw, tmp_path)


def test_triton_moe_alignment_is_sized_for_the_worst_case():
    """`_align_blocks` reads nothing back from the GPU (CUDA-graph capturable): it sizes for the worst case,
    and the blocks past the real ones hold only the sentinel pair and the expert E (the kernel skips them)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    from moesim.profiling.triton_moe import _align_blocks, align_by_expert, tile_config

    ids = torch.tensor([[0, 3], [3, 5], [0, 5], [3, 0], [5, 3]])
    sorted_ids, block_expert, padded = _align_blocks(ids, 6, 4)
    real_ids, real_blocks, n = align_by_expert(ids, 6, 4)
    # 10 pairs, 3 experts with pairs, 4 per block: 12 padded; room for ceil((10 + min(6, 10) * 3) / 4) = 7 blocks
    assert n == int(padded.sum()) == 12 and sorted_ids.numel() == 4 * block_expert.numel() == 4 * 7
    assert torch.equal(sorted_ids[:n], real_ids) and torch.equal(block_expert[: n // 4], real_blocks)
    assert bool((sorted_ids[n:] == ids.numel()).all()) and bool((block_expert[n // 4 :] == 6).all())
    assert tile_config(8, 128)[0] == 16 and tile_config(8192, 8)[0] == 128  # decode: short M tiles; prefill: long


def test_triton_moe_prepare_with_fewer_local_pairs_than_top_k():
    """Expert parallelism with few tokens: one local pair of a top-8 layer (this raised on the H100 before)."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    from moesim.profiling.kernels import Pool, prepare_grouped_gemm, prepare_grouped_gemm_triton

    pool = Pool("cpu")
    for tokens, pairs in ((1, 1), (4, 4), (16, 16)):
        shape = {"hidden": 64, "inter": 32, "experts": 256, "top_k": 8, "ep": 8, "moe_tp": 1, "tokens": tokens}
        _, extra = prepare_grouped_gemm_triton(shape, "fp32", pool)
        assert extra["pairs"] == prepare_grouped_gemm(shape, "fp32", pool)[1]["pairs"] == pairs
