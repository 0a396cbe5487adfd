"""The skew model (`profiling.skew`): its invariants, its arithmetic on additive costs, bad counts, the benchmark."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.model.errors import MoesimError
from moesim.model.hardware import ClusterSpec, HardwareSpec, get_gpu, make_cluster
from moesim.model.ops import Op
from moesim.model.roofline import OpTime, RooflineCostModel
from moesim.profiling.calibrate import CalibratedCostModel, calibrate
from moesim.profiling.opshapes import row_op
from moesim.profiling.skew import predict_balanced, predict_per_expert_sum, predict_skewed
from moesim.profiling.tables import write_table

ROOT = Path(__file__).resolve().parents[1]
E, K, H, W = 64, 4, 2048, 1024
#: The synthetic kernel on an H100-sized roofline: floor, token work per routed id, per-expert weight read and
#: per-pair GEMM time (s): t = FLOOR + TOKEN_S * N * k + sum_e max(WEIGHT_S, c_e * PAIR_S) (a weight-bound
#: expert until its GEMM's compute passes its weight read).
FLOOR, TOKEN_S, WEIGHT_S, PAIR_S = 20e-6, 2e-9, 4e-6, 6 * H * W / 600e12


def _truth(tokens: float, counts: np.ndarray) -> float:
    live = np.asarray(counts, float)
    live = live[live > 0]
    return FLOOR + TOKEN_S * tokens * K + float(np.maximum(WEIGHT_S, live * PAIR_S).sum())


def _row(tokens: int, ep: int, counts: np.ndarray, dist: str) -> dict:
    c = np.asarray(counts)
    return {
        "op": "grouped_gemm", "impl": "synthetic", "dtype": "bf16", "tokens": tokens, "hidden": H, "inter": W,
        "experts": E, "top_k": K, "ep": ep, "moe_tp": 1, "distribution": dist, "pairs": int(c.sum()),
        "active_experts": int((c > 0).sum()), "expert_counts": [int(x) for x in c],
        "time_s": _truth(tokens, c),
    }  # fmt: skip


def _power_counts(pairs: int, local: int, alpha: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.arange(1, local + 1, dtype=float) ** -alpha
    return rng.multinomial(pairs, rng.permutation(p / p.sum()))


def synthetic_table(eps: tuple[int, ...] = (1, 8), tokens: tuple[int, ...] = (8, 32, 128, 512, 2048)) -> pd.DataFrame:
    """Balanced rows (over all, a quarter and a sixteenth of the local experts) and power-law rows, priced by
    `_truth`: the additive fused kernel the skew model assumes."""
    rows = []
    for ep in eps:
        local = E // ep
        for n in tokens:
            pairs = n * K // ep
            for sub in (1, 4, 16):
                active = local // sub
                if active >= 1 and pairs >= active and (sub == 1 or active < local):
                    c = np.zeros(local, int)
                    c[:active] = pairs // active
                    rows.append(_row(n, ep, c, "balanced"))
            for a in (1.01, 1.2):
                rows.append(_row(n, ep, _power_counts(pairs, local, a, n + ep), f"power:{a}"))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def gpu() -> HardwareSpec:
    return get_gpu("H100-SXM")


@pytest.fixture(scope="module")
def model(gpu, tmp_path_factory) -> CalibratedCostModel:
    """Calibrated on the synthetic table's balanced rows only."""
    d = tmp_path_factory.mktemp("skew")
    df = synthetic_table()
    write_table(df[df["distribution"] == "balanced"], d / "moe.parquet", {"hardware": gpu.model_dump()})
    return CalibratedCostModel(calibrate([d], holdout=0.0))


class _Additive(CalibratedCostModel):
    """A cost model that prices a fused-MoE op exactly as `_truth` does for evenly spread pairs."""

    def op_time(self, op: Op, cluster: ClusterSpec) -> OpTime:
        s = op.shape
        per = s["pairs"] / s["active_experts"]
        t = FLOOR + TOKEN_S * s["tokens"] * K + s["active_experts"] * max(WEIGHT_S, per * PAIR_S)
        return OpTime(t, 0.0, 0.0, 0.0, "compute", "stub")


def test_the_skew_model_is_exact_for_an_additive_fused_kernel(model):
    """With a cost model that is exact on evenly spread pairs, the prediction of any spread is exact: the floor
    and the token work are counted once at the real N, the weights once per active expert, each expert's GEMM
    at its own size."""
    stub = _Additive(model.calibration, extrapolate=True)
    key = model.calibration.fits[0].device_key
    for counts in ([300, 1, 1, 0, 0, 0, 0, 2], [40, 40, 40, 40, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], [9] * 8):
        row = _row(512, 8, np.array(counts), "power:1.2")
        assert predict_skewed(stub, row, key) == pytest.approx(_truth(512, np.array(counts)), rel=1e-12)


def test_the_token_work_does_not_grow_with_the_hot_expert(model):
    """At a fixed N, a hotter expert adds only its own GEMM work; the previous model grew N (and the token work
    with it) along with the hot expert."""
    stub = _Additive(model.calibration, extrapolate=True)
    key = model.calibration.fits[0].device_key
    for hot in (10, 100, 1000, 4000):
        counts = np.array([hot, 3, 3, 3, 0, 0, 0, 0])
        expert_work = float(np.maximum(WEIGHT_S, counts[counts > 0] * PAIR_S).sum())
        got = predict_skewed(stub, _row(4096, 8, counts, "power:1.2"), key)
        assert got - expert_work == pytest.approx(FLOOR + TOKEN_S * 4096 * K, rel=1e-9)
        old = predict_per_expert_sum(stub, _row(4096, 8, counts, "power:1.2"), key)
        assert old - expert_work != pytest.approx(FLOOR + TOKEN_S * 4096 * K, rel=0.05)


def test_balanced_counts_give_the_balanced_time(model, gpu):
    """Equal counts on every local expert: exactly the calibrated time of the balanced layer."""
    cl = make_cluster(gpu, num_gpus=1)
    for tokens, ep in ((32, 1), (512, 8), (2048, 8)):
        local = E // ep
        counts = np.full(local, tokens * K // ep // local)
        row = _row(tokens, ep, counts, "balanced")
        want = model.op_time(row_op("grouped_gemm", row), cl).seconds
        assert predict_skewed(model, row, gpu.key) == pytest.approx(want, rel=1e-12)


def test_more_skew_never_takes_less_time_than_balanced(model, gpu):
    """The same N, pairs and active experts: any spread takes at least the balanced time."""
    rng = np.random.default_rng(3)
    for tokens, ep in ((128, 1), (512, 8), (2048, 8)):
        local, pairs = E // ep, tokens * K // ep
        bal = predict_skewed(model, _row(tokens, ep, np.full(local, pairs // local), "balanced"), gpu.key)
        for a in (0.5, 1.01, 1.2, 2.0):
            p = np.arange(1, local + 1, dtype=float) ** -a
            counts = 1 + rng.multinomial(pairs - local, p / p.sum())  # every expert active, the same pairs
            assert predict_skewed(model, _row(tokens, ep, counts, f"power:{a}"), gpu.key) >= bal * (1 - 1e-12)


def test_a_hot_expert_beyond_the_measured_range_follows_the_fit_edge(model, gpu):
    """A hot expert larger than any measured one keeps the fit's edge efficiency on its own roofline: above
    the bare roofline, growing with its pairs, and close to the additive truth."""
    cl = make_cluster(gpu, num_gpus=1)
    roof = RooflineCostModel()
    fit = model.calibration.fits[0]
    edge = 2 ** fit.hi[0]  # most pairs per expert measured
    last = 0.0
    for hot in (2 * edge, 4 * edge, 8 * edge):
        counts = np.array([int(hot), 2, 2, 2, 0, 0, 0, 0])
        row = _row(int(hot), 8, counts, "power:1.2")
        got = predict_skewed(model, row, gpu.key)
        assert got > roof.op_time(row_op("grouped_gemm", row), cl).seconds
        assert got > last
        assert got == pytest.approx(_truth(int(hot), counts), rel=0.25)
        last = got
        phi = model.with_extrapolation().op_time(row_op("grouped_gemm", {**row, "active_experts": 1.0}), cl)
        assert "clamped" in phi.source


@pytest.mark.parametrize("bad", [[3, float("nan"), 1], [1, -2, 0], [float("inf")], [], None, "abc"])
def test_bad_skew_vectors_raise_one_line(model, gpu, bad):
    row = _row(64, 8, np.array([1]), "power:1.2") | {"expert_counts": bad}
    for predict in (predict_skewed, predict_balanced, predict_per_expert_sum):
        with pytest.raises(MoesimError) as e:
            predict(model, row, gpu.key)
        assert "expert_counts" in e.value.message and "\n" not in e.value.message and e.value.hint


def test_the_skew_model_beats_the_previous_one_and_balanced_on_a_synthetic_table(gpu):
    """The benchmark's comparison (`benchmarks/skew.py skew_mape`) on a tiny synthetic table of the additive kernel."""
    spec = importlib.util.spec_from_file_location("bench_skew", ROOT / "benchmarks" / "skew.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_skew"] = bench
    spec.loader.exec_module(bench)
    res = bench.skew_mape(synthetic_table(), gpu)
    assert set(res["by_ep"]) == {1, 8} and res["all"]["rows"] == 20
    for stats in res["by_ep"].values():
        assert stats["new"] < 10.0 and stats["new"] < stats["balanced"] and stats["new"] < stats["old"]
