"""The DES's fast paths give the step of the direct computation: routing drawn from `RoutingBank` has the
distribution of per-step multinomial draws, `StepTimer._fast_parts` (separable tables) gives `_compute`'s parts
with the roofline and a calibrated cost model, and `StepLog` keeps every step's row."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from moesim.profiling.calibrate import calibrate
from moesim.profiling.costmodel import CalibratedCostModel
from moesim.sim.serving.capacity import make_timer, replica_capacity
from moesim.sim.serving.results import STEP_COLUMNS, StepLog
from moesim.sim.serving.serve import load
from moesim.sim.serving.steptime import StepTimer

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "profiling" / "data" / "h100-sxm" / "quick-bf16"


def _mixtral(cost_model=None, **routing) -> StepTimer:
    sc = {
        "model": "mixtral-8x7b",
        "cluster": "dgx-h100",
        "layout": {"tp": 1, "dp_attn": 8, "ep": 8},
        "engine": {"max_batch": 256, "max_tokens": 8192},
        "workload": {"arrival": "poisson", "rate": 5, "requests": 10},
        "routing": routing or {"distribution": "uniform"},
    }
    built = load(sc, cost_model)
    pool = built.pools[0]
    return make_timer(built, pool, replica_capacity(built, pool), seed=5)


@cache
def _dsv3() -> StepTimer:
    built = load(ROOT / "examples" / "deepseek-v3-dp32-ep32.yaml")
    pool = built.pools[0]
    return make_timer(built, pool, replica_capacity(built, pool), seed=5)


def _stats(timer: StepTimer, k: int, n_pairs: int, bank: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step: experts' time on the slowest GPU summed over layers, the straggler, dropped pairs."""
    if bank:  # in runs of 64 steps, as the DES draws them
        draws = [timer.bank.draw(n_pairs, min(64, k - j), timer.rng) for j in range(0, k, 64)]
        te, dropped = np.concatenate([d[0] for d in draws]), np.concatenate([d[1] for d in draws])
    else:
        te, dropped, _ = timer._route_direct(k, n_pairs)
    slowest = te.max(axis=2)
    return slowest.sum(axis=1), (slowest - te.mean(axis=2)).sum(axis=1), dropped


@pytest.mark.parametrize(
    ("routing", "tokens"),
    [
        ({"distribution": "uniform"}, 1),
        ({"distribution": "uniform"}, 32),  # a decode step (exact bank)
        ({"distribution": "uniform"}, 700),  # a mixed step (grid bank, scaled)
        ({"distribution": "power", "exponent": 1.2, "capacity_factor": 1.0}, 96),
        ({"distribution": "power", "exponent": 1.2, "capacity_factor": 1.0}, 3000),
    ],
)
def test_bank_draws_have_the_direct_samplers_distribution(routing: dict, tokens: int) -> None:
    """20,000 steps drawn from the banks in runs of 64 (as a long DES run draws them: a count's bank grows from
    1,024 to 16,384 rows with use) against 6,000 direct draws (`model.routing.draw_slot_counts` per step, the
    sampler the bank keeps): a two-sample KS test on the per-step experts' time and straggler (p > 1e-4; measured
    down to 6e-4: a CDF shift of 3% under a capacity factor), their quantiles p10/p50/p90 and means within 2%
    (the straggler's mean within 2% or 1e-4 of the experts' time), mean drops within 2%. Measured: quantiles within
    1.4%, means within 2%; one fixed bank of 2,048 rows put the 32-token straggler 7% high, and grid points' draws
    scaled by n / nb (not moved by mean and spread) put the 700-token one 2.5% low.

    At 32 tokens a GPU (one expert of 8, top 2) gets no pair in 1 draw of 10,000 (0.75^32), and its 105 us of weight
    reading then leaves the GPUs' mean: 7% of the straggler's mean comes from those draws, of which a full bank
    holds about 13; the bank drawn at this seed holds 23, its straggler 5.4% above the direct draws' (2.7e-7 s in
    3.4e-3 s of experts' time). Before the draws picked distinct experts (2026-12-07) such draws were twice as
    common, and the pairs' spread 8% wider."""
    timer = _mixtral(**routing)
    n = tokens * 2
    a, b = _stats(timer, 20000, n, True), _stats(timer, 6000, n, False)
    for x, y, what in ((a[0], b[0], "experts"), (a[1], b[1], "straggler")):
        if np.ptp(y) == 0:  # one pair, or every expert at its capacity: no spread
            assert np.ptp(x) / x.mean() < 1e-3 and x.mean() == pytest.approx(y[0], rel=2e-3)  # capacity moved to n
            continue
        assert ks_2samp(x, y).pvalue > 1e-4, what
        assert np.quantile(x, [0.1, 0.5, 0.9]) == pytest.approx(np.quantile(y, [0.1, 0.5, 0.9]), rel=0.02), what
        assert x.mean() == pytest.approx(y.mean(), rel=0.02, abs=1e-4 * b[0].mean() if what == "straggler" else 0), what
    assert a[2].mean() == pytest.approx(b[2].mean(), rel=0.02, abs=1e-9)


def test_bank_on_deepseek_v3_power_law_per_layer() -> None:
    """58 MoE layers of different popularity, 256 slots on 32 GPUs: 8 rows per layer and pair count (the
    `RoutingBank.BUDGET`), so each bank carries its own small sampling error; against 1,000 direct draws the per-step
    experts' time keeps its mean within 0.5% and the straggler within 2%, their spread within 25% (measured over
    four banks: 0.25%, 0.8%, 0.82-1.02; the experts' time varies by 0.04% from step to step)."""
    timer = _dsv3()
    for tokens in (64, 600):
        a, b = _stats(timer, 1000, tokens * 8, True), _stats(timer, 1000, tokens * 8, False)
        assert a[0].mean() == pytest.approx(b[0].mean(), rel=5e-3)
        assert a[1].mean() == pytest.approx(b[1].mean(), rel=2e-2)
        for x, y in ((a[0], b[0]), (a[1], b[1])):
            assert 0.75 < x.std() / y.std() < 1.25


def test_bank_grid_and_scaling() -> None:
    timer = _mixtral()
    bank = timer.bank
    assert bank.grid(50) == 50 and bank.grid(bank.EXACT) == bank.EXACT
    for n in (100, 1000, 12345):
        g = bank.grid(n)
        assert abs(g / n - 1) <= 2 ** (0.5 / bank.PER_OCTAVE) - 1 + 1e-9
        pairs = bank.draw_pairs(n, 50, timer.rng)
        assert pairs.sum(axis=2) == pytest.approx(np.full(pairs.shape[:2], float(n)))  # every pair lands somewhere


def _batches(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i in range(25):
        d = int(rng.integers(0, 60))
        chunk = int(rng.integers(1, 5000))
        new = np.concatenate([np.ones(d, np.int64), [chunk]])
        cached = np.concatenate([rng.integers(10, 3000, d), [0 if i % 2 else int(rng.integers(1, 2000))]])
        out.append((new, cached.astype(np.int64)))
    out.append((np.array([300, 17, 2000]), np.zeros(3, np.int64)))  # a prefill
    return out


@pytest.mark.parametrize("calibrated", [False, True])
def test_fast_parts_match_the_decomposition(calibrated: bool) -> None:
    """The separable tables against `decompose` + `estimate_step` + `utilisation_exact` per batch: seconds within
    0.5% (linear between table entries 1/32 octave apart; the experts of a step-wise cost model within 6%), bytes,
    FLOP and kernel launches exact."""
    cm = (
        CalibratedCostModel(calibrate([TABLES], holdout=0.0, kinds=["grouped_gemm", "attention"]))
        if calibrated
        else None
    )
    timer = _mixtral(cm)
    for new, cached in _batches(np.random.default_rng(2)):
        ref, fast = timer._compute(new, cached, False), timer._fast_parts(new, cached)
        assert fast[:3] == pytest.approx(ref[:3], rel=5e-3, abs=1e-12)
        # the experts: with the calibration, the shapes its quick tables do not reach are timed by the achievable
        # model (costmodel.ACHIEVABLE_FALLBACK_KINDS), which steps with the waves of tiles; the 1/32-octave
        # interpolation follows it within 6% (the achievable model alone: 5.8% at worst on these batches)
        assert fast[3] == pytest.approx(ref[3], rel=0.06 if calibrated else 5e-3, abs=1e-12)
        assert fast[5:9] == pytest.approx(ref[5:9], rel=1e-6)  # the same sums in another order


def test_fast_parts_two_batch_overlap_rho() -> None:
    timer = _dsv3()
    for new, cached in _batches(np.random.default_rng(3))[:8]:
        ref, fast = timer._compute(new, cached, False), timer._fast_parts(new, cached)
        assert fast[:5] == pytest.approx(ref[:5], rel=5e-3, abs=1e-12)
        assert fast[5:9] == pytest.approx(ref[5:9], rel=1e-6)  # the same sums in another order


def test_step_log_keeps_every_row_in_order() -> None:
    rng = np.random.default_rng(0)
    rows, log = [], StepLog()
    for i in range(20):
        if i % 3:
            row = tuple(
                "mixed" if c == "pool" else "prefill" if c == "phase" else int(rng.integers(0, 9)) for c in STEP_COLUMNS
            )
            rows.append(row)
            log.append(row)
        else:
            k = int(rng.integers(1, 5))
            cols = {
                c: rng.random(k) if c.endswith("_s") or c in ("bytes", "flops") else rng.integers(0, 9, k)
                for c in STEP_COLUMNS
            }
            cols |= {"pool": "decode", "phase": "decode", "replica": 3, "padded_batch": 8}
            log.extend(cols, k)
            for j in range(k):
                rows.append(tuple(v if isinstance(v, (str, int)) else v[j] for v in (cols[c] for c in STEP_COLUMNS)))
    assert len(log) == len(rows)
    got, want = log.frame(), pd.DataFrame(rows, columns=STEP_COLUMNS)
    assert list(got.columns) == STEP_COLUMNS
    for c in STEP_COLUMNS:
        if c in ("pool", "phase"):
            assert list(got[c]) == list(want[c])
        else:
            assert np.allclose(got[c].to_numpy(float), want[c].to_numpy(float)), c


def test_fast_parts_of_decode_edges() -> None:
    """`decode_parts`' grid edges from the tables (MLA absorbed, low-latency all-to-all, two-batch rho) equal the
    decomposition's (measured: within 1e-5)."""
    for timer in (_mixtral(), _dsv3()):
        for seqs in (1, 30, 200, 700):
            new, cached = np.ones(seqs, np.int64), np.full(seqs, 1500, np.int64)
            ref, fast = timer._compute(new, cached, False), timer._fast_parts(new, cached, "decode")
            assert fast == pytest.approx(ref, rel=1e-4, abs=1e-12)
