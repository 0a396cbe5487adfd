"""The discrete-event step times each GPU's routed experts at the step's real token count N (`StepTimer.expert_times`,
`sim.serving.steptime.expert_op`): the busiest GPU's extra pairs are skew at that N, not a bigger batch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from moesim.model.hardware import ClusterSpec
from moesim.model.ops import Op
from moesim.model.roofline import OpTime, RooflineCostModel
from moesim.sim.serving.capacity import make_timer, replica_capacity
from moesim.sim.serving.serve import load
from moesim.sim.serving.steptime import StepTimer, expert_op

ROOT = Path(__file__).resolve().parent.parent
#: The stub's grouped-GEMM time (s): floor, per pair, per active expert, per octave of the step's tokens N.
C0, C_PAIR, C_ACTIVE, C_OCTAVE = 20e-6, 3e-9, 2e-6, 5e-6


class _TokenStub:
    """A cost model whose fused-MoE time is linear in pairs, active experts and log2 N (the table's interpolation
    is then exact), recording every grouped-GEMM op it times; the roofline for the rest."""

    name = "token-stub"

    def __init__(self, active_s: float = C_ACTIVE) -> None:
        self.ops: list[Op] = []
        self.active_s = active_s
        self._roof = RooflineCostModel()

    def op_time(self, op: Op, cluster: ClusterSpec) -> OpTime:
        if op.kind != "grouped_gemm":
            return self._roof.op_time(op, cluster)
        self.ops.append(op)
        s = op.shape
        return OpTime(_truth(s["pairs"], s["active_experts"], s["tokens"], self.active_s), 0, 0, 0, "compute")


def _truth(pairs: float, active: float, tokens: float, active_s: float = C_ACTIVE) -> float:
    return C0 + C_PAIR * pairs + active_s * active + C_OCTAVE * np.log2(tokens)


def _qwen(cost_model=None, **routing) -> StepTimer:
    """Qwen3-30B-A3B (128 experts top-8) with attention DP8 and EP8: 16 experts per GPU."""
    sc = {
        "model": "qwen3-30b-a3b",
        "cluster": "dgx-h100",
        "layout": {"tp": 1, "dp_attn": 8, "ep": 8},
        "engine": {"max_batch": 256, "max_tokens": 8192},
        "workload": {"arrival": "poisson", "rate": 5, "requests": 10},
        "routing": routing or {"distribution": "power", "exponent": 0.8},
    }
    built = load(sc, cost_model)
    pool = built.pools[0]
    return make_timer(built, pool, replica_capacity(built, pool), seed=3)


def test_the_busiest_gpus_op_carries_the_steps_real_tokens() -> None:
    """A step of N = 256 tokens (2,048 pairs, 256 per GPU on average): every op timed for it has N = 256 and the
    mean 256 pairs per GPU, whatever its pairs; a GPU at three times the mean is imbalance 3 at N = 256, not a
    step of 768 tokens (N = pairs x ep / top_k, as the table had it before)."""
    stub = _TokenStub()
    timer = _qwen(stub)
    n_tokens, k, ep = 256, 8, 8
    busiest = 3 * n_tokens * k // ep
    got = timer.expert_times(np.array([busiest, 40.0]), np.array([16.0, 12.0]), n_tokens * k)
    assert got == pytest.approx([_truth(busiest, 16, n_tokens), _truth(40, 12, n_tokens)], rel=1e-9)
    shapes = [op.shape for op in stub.ops]
    assert shapes and {s["tokens"] for s in shapes} == {float(n_tokens)}
    assert {s["mean_pairs"] for s in shapes} == {float(n_tokens * k / ep)}
    above = [s for s in shapes if s["pairs"] > s["mean_pairs"]]
    assert above and all(s["imbalance"] == pytest.approx(s["pairs"] / s["mean_pairs"]) for s in above)
    op = expert_op(timer._template, busiest, 16, n_tokens)
    assert op.shape["tokens"] == n_tokens and op.shape["imbalance"] == pytest.approx(3.0)
    assert expert_op(timer._template, busiest, 16).shape["tokens"] == busiest * ep / k  # None: N from the pairs


def test_drawn_steps_time_each_gpu_at_the_steps_tokens() -> None:
    """Through the routing bank, as the DES draws a step: every GPU's seconds are the cost model's at its own pairs
    and the step's N (here a stub without a per-expert term, as the bank keeps no active counts), on and between
    octaves of N (linear in log2 N there, exact for this stub)."""
    stub = _TokenStub(active_s=0.0)
    timer = _qwen(stub)
    for n_tokens in (512, 8, 300):
        n = n_tokens * 8
        pairs, te = timer.bank.samples(n)[:2]  # [D, rows, G]: each GPU's pairs and grouped-GEMM seconds
        want = np.where(pairs > 0, _truth(pairs, 0.0, n_tokens), 0.0)
        assert te == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert timer._by_tokens and None not in timer._tables  # only octave slices were built


def test_the_roofline_table_has_no_token_axis() -> None:
    """The roofline prices FLOP and bytes only: one table, the same seconds at any N (the DES keeps its speed)."""
    timer = _qwen()
    assert not timer._by_tokens
    p, a = np.array([0.0, 5.0, 300.0, 5000.0]), np.array([0.0, 3.0, 16.0, 16.0])
    assert timer.expert_times(p, a, 64) == pytest.approx(timer.expert_times(p, a, 64000), rel=0)
    assert list(timer._tables) == [None]


def test_the_simulators_op_with_real_tokens_beats_tokens_from_pairs_on_measured_skew() -> None:
    """The committed CPU measurements (`benchmarks/skew.py`, power-law routing at EP 1-256): the simulator's per-GPU
    op at the step's real N predicts the skewed layers better than at N = pairs x ep / top_k on every EP > 1
    (measured: 11.7 vs 22.1% at EP 8, 8.9 vs 16.7% at EP 64, 7.1 vs 17.4% at EP 256, 8.5 vs 15.5% overall)."""
    table = ROOT / "profiling" / "data" / "cpu-epyc-skew" / "grouped_gemm.parquet"
    if not table.is_file():
        pytest.skip("no committed CPU skew table")
    spec = importlib.util.spec_from_file_location("bench_skew_tokens", ROOT / "benchmarks" / "skew.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_skew_tokens"] = bench
    spec.loader.exec_module(bench)
    from moesim.model.hardware import HardwareSpec
    from moesim.profiling.tables import read_table

    df, meta = read_table(table)
    res = bench.skew_mape(df, HardwareSpec(**meta["hardware"]))
    for ep, s in res["by_ep"].items():
        if ep > 1:
            assert s["des_real_n"] < s["des_pairs_n"], ep
        else:  # one GPU: N is the pairs' either way
            assert s["des_real_n"] == s["des_pairs_n"]
    assert res["all"]["des_real_n"] < 10.0
