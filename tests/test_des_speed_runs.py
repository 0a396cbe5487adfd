"""The folded decode runs' shortcuts (`sim.serving.replica`: FORESEE, CHUNKED) and the reduced routing draw
(`RoutingBank.draw_stats`) against their references: exact where the draws are the same, within the DES's
sampling noise where only the random stream differs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moesim.sim.serving import replica
from moesim.sim.serving.capacity import make_timer, replica_capacity
from moesim.sim.serving.serve import load, run
from moesim.sim.serving.steptime import StepBlock, StepTimer


def _scenario(kind: str, requests: int, rate: float = 20.0, seed: int = 0) -> dict:
    return {
        "model": "mixtral-8x7b",
        "cluster": "dgx-h100",
        "layout": {"tp": 1, "dp_attn": 8, "ep": 8},
        "engine": {"kind": kind, "max_batch": 256, "max_tokens": 8192, "block_size": 16},
        "workload": {
            "arrival": "poisson",
            "rate": rate,
            "requests": requests,
            "input": {"dist": "lognormal", "mean": 512, "cv": 1.0, "max": 8192},
            "output": {"dist": "lognormal", "mean": 128, "cv": 1.0, "max": 2048},
        },
        "routing": {"distribution": "uniform"},
        "seed": seed,
    }


def _run(sc: dict, foresee: bool, chunked: bool, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(replica, "FORESEE", foresee)
    monkeypatch.setattr(replica, "CHUNKED", chunked)
    return run(sc, "des")


def _timer(**routing) -> StepTimer:
    sc = _scenario("vllm", 10)
    sc["routing"] = routing or {"distribution": "uniform"}
    built = load(sc)
    pool = built.pools[0]
    return make_timer(built, pool, replica_capacity(built, pool), seed=3)


def test_foreseen_arrivals_give_the_interrupted_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an overlapping scheduler (``ideal``) and with runs timed in one block, not interrupting a run for an
    open-loop arrival it already ends for changes nothing: the same steps, the same request times."""
    sc = _scenario("ideal", 300)
    fast = _run(sc, True, False, monkeypatch)
    ref = _run(sc, False, False, monkeypatch)
    assert len(fast.steps) == len(ref.steps)
    for col in ("start_s", "duration_s", "tokens", "seqs", "waiting", "running"):
        np.testing.assert_allclose(fast.steps[col].to_numpy(float), ref.steps[col].to_numpy(float), rtol=1e-9)
    for col in ("first_token_s", "finish_s", "scheduled_s"):
        np.testing.assert_allclose(fast.requests[col], ref.requests[col], rtol=1e-9)


def test_fast_runs_match_the_reference_within_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM (overlapping scheduler): runs that take the step after an arrival's and are timed in chunks give the
    reference's latencies within the DES's sampling noise (the random stream differs; measured spread over seeds
    of this 400-request run: TTFT mean about 1%, TPOT mean about 0.2%), and the step table still counts every step
    with the requests waiting at its start (Little's law holds as before)."""
    for seed in (0, 1):
        sc = _scenario("vllm", 400, seed=seed)
        fast = _run(sc, True, True, monkeypatch).summary
        ref = _run(sc, False, False, monkeypatch).summary
        assert fast["ttft_mean_s"] == pytest.approx(ref["ttft_mean_s"], rel=0.03)
        assert fast["tpot_mean_s"] == pytest.approx(ref["tpot_mean_s"], rel=0.01)
        assert fast["e2e_p90_s"] == pytest.approx(ref["e2e_p90_s"], rel=0.02)
        assert fast["steps"] == pytest.approx(ref["steps"], rel=0.01)
        assert fast["littles_law_error"] < 0.02 and ref["littles_law_error"] < 0.02


def test_overlap_runs_leave_no_single_decode_step_after_an_arrival(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the overlapping scheduler the step after an arrival's is decided before the arrival: the run takes it,
    so far fewer decode steps are simulated one event each (counted by calls to `StepTimer.sample`)."""
    calls = {"n": 0}
    orig = StepTimer.sample

    def counting(self: StepTimer, new: np.ndarray, cached: np.ndarray):
        if int(np.max(new)) == 1:
            calls["n"] += 1
        return orig(self, new, cached)

    monkeypatch.setattr(StepTimer, "sample", counting)
    sc = _scenario("vllm", 200)
    _run(sc, False, False, monkeypatch)
    ref = calls["n"]
    calls["n"] = 0
    _run(sc, True, True, monkeypatch)
    assert calls["n"] < 0.5 * ref


@pytest.mark.parametrize("n_pairs", [40, 64, 200, 3000])
def test_draw_stats_are_draws_reductions(n_pairs: int) -> None:
    """`draw_stats` = `draw` reduced (slowest GPU per layer, each GPU's seconds over layers, drops), row for row
    with the same generator, on an exact bank (n <= 64) and a grid point's moved rows, through its cached table."""
    a, b = _timer(), _timer()
    for k in (5, 1, 9, 9):
        r1, r2 = np.random.default_rng(k), np.random.default_rng(k)
        te, dr = a.bank.draw(n_pairs, k, r1)
        slowest, t_sum, dr2 = b.bank.draw_stats(n_pairs, k, r2)
        np.testing.assert_allclose(slowest, te.max(axis=2), rtol=1e-12)
        np.testing.assert_allclose(t_sum, te.sum(axis=1), rtol=1e-12)
        np.testing.assert_allclose(dr2, dr, rtol=1e-12, atol=1e-12)
    assert b.bank._moved  # the repeated count went through the moved table


def test_draw_stats_with_capacity_factor_counts_drops() -> None:
    a, b = (
        _timer(distribution="power", exponent=1.0, capacity_factor=1.0),
        _timer(distribution="power", exponent=1.0, capacity_factor=1.0),
    )
    for k in (4, 4, 4):
        te, dr = a.bank.draw(512, k, np.random.default_rng(k))
        slowest, t_sum, dr2 = b.bank.draw_stats(512, k, np.random.default_rng(k))
        np.testing.assert_allclose(slowest, te.max(axis=2), rtol=1e-12)
        np.testing.assert_allclose(t_sum, te.sum(axis=1), rtol=1e-12)
        np.testing.assert_allclose(dr2, dr, rtol=1e-12)
        assert dr.sum() > 0


def test_decode_parts_equal_the_per_step_blend() -> None:
    """The vectorised `decode_parts` gives, step by step, the bilinear blend of its grid edges."""
    t = _timer()
    for seqs in (7, 40, 100):
        kv = np.array([3.0, 900.0, 901.0, 1200.0, 5000.0, 5000.5, 70000.0])
        got = t.decode_parts(seqs, kv)
        s_lo, s_hi, fs = seqs, seqs, 0.0
        if seqs > 32:
            import math

            b = math.floor(16 * math.log2(seqs))
            s_lo, s_hi = int(2 ** (b / 16)), math.ceil(2 ** ((b + 1) / 16))
            s_lo, s_hi = max(s_lo, 32), max(s_hi, s_lo + 1)
            fs = (seqs - s_lo) / (s_hi - s_lo)
        for i, x in enumerate(kv):
            bucket = int(np.floor(4 * np.log2(x)))
            lo, hi = 2.0 ** (bucket / 4), 2.0 ** ((bucket + 1) / 4)
            f = (x - lo) / (hi - lo)
            e0 = t._edge(s_lo, bucket, False) * (1 - fs) + t._edge(s_hi, bucket, False) * fs
            e1 = t._edge(s_lo, bucket + 1, False) * (1 - fs) + t._edge(s_hi, bucket + 1, False) * fs
            np.testing.assert_allclose(got[i], e0 * (1 - f) + e1 * f, rtol=1e-12)


def test_step_block_concat_keeps_order() -> None:
    t = _timer()
    ones = np.ones(12, np.int64)
    cached = np.arange(12)[None, :] * 50 + np.arange(6)[:, None]
    a, b = t.sample_block(ones, cached[:2]), t.sample_block(ones, cached[2:])
    both = StepBlock.concat([a, b])
    assert len(both) == 6 and both.gpu_wait_s.shape[0] == 6
    np.testing.assert_array_equal(both.duration_s, np.concatenate([a.duration_s, b.duration_s]))
    assert pd.Series(both.launches).notna().all()
