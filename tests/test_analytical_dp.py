"""The analytical engine's mixed pool with data-parallel attention: steps that carry their prompts together, dealt
round-robin over the attention ranks and priced at the busiest rank's share of them (`_prompt_surface`,
`busiest_share`); the step-cost curve refined where it kinks (`_refined_nodes`); stratified prompt draws
(`_prompt_sums`).

Before, such pools priced each prompt alone below the packed regime and the mean prompt's chunk in it: on
A100-SXM-80GB x2 TP1xDP2 EP2 bf16 b128 (`benchmarks/sweep-des-capacity.yaml`) the verdict went from overloaded at
25 req/s back to fine from 26 to 29, and the analytical capacity was 1.475x the discrete-event engine's.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_analytical_packed import SWEEP as PACKED
from test_analytical_packed import _model as _packed_model

from moesim.sim.serving import analytical
from moesim.sim.sweeps import sweep_eval

#: `test_analytical_packed`'s A100 scenario on two GPUs with data-parallel attention and expert parallelism.
SWEEP = {
    **PACKED,
    "name": "dp-packed",
    "axes": {**PACKED["axes"], "gpus": [2], "layout": [{"tp": 1, "dp_attn": "gpus", "ep": "gpus"}]},
}


def _model() -> tuple[object, object]:
    return _packed_model(SWEEP)


def test_busiest_share_deals_prompts_round_robin() -> None:
    # prompts of 100, 300, 50, 10 tokens over 2 ranks: rank 0 gets 100 + 50, rank 1 gets 300 + 10
    sums = np.array([[0.0, 100.0, 400.0, 450.0, 460.0]])
    share = analytical.busiest_share(sums, 2)
    assert share[0].tolist() == pytest.approx([1.0, 1.0, 300 / 400, 300 / 450, 310 / 460])
    # over 4 ranks every prompt has its own rank
    assert analytical.busiest_share(sums, 4)[0].tolist() == pytest.approx([1.0, 1.0, 0.75, 300 / 450, 300 / 460])
    # a prompt first on rank 0 (`crowded_surface`): the others from rank 1 on
    other, first = analytical._rank_sums(sums, 2, 1)
    assert first[0].tolist() == [0.0, 0.0, 300.0, 300.0, 310.0] and other[0].tolist() == [
        0.0,
        100.0,
        100.0,
        150.0,
        150.0,
    ]


def test_surface_is_the_whole_steps_part_and_the_busiest_ranks() -> None:
    """The two curves add up to the one-chunk curve; at the nodes a step spread evenly over the ranks is W(S) + G(S /
    dp), exactly the timer's; a spread step costs less than one rank holding every prompt token once the step is
    compute-bound, and an uneven split lies between."""
    model, _ = _model()
    timer = model.timers["mixed"]
    b, ctx, budget = 64, 576, 8192 - 64
    nodes, surface = analytical._prompt_surface(timer, b, ctx, budget)
    one_nodes, one = analytical._prompt_curve(timer, b, ctx, budget)
    assert surface.shape == (2, len(nodes)) and np.array_equal(nodes, one_nodes)
    assert np.allclose(surface.sum(axis=0), one, rtol=1e-12, atol=1e-15)
    dec = analytical._decode_step(timer, b, ctx).duration_s  # b = 64 sits on the batch grid: the nodes are its own
    for c in (int(nodes[-8]), int(nodes[-4])):
        spread = analytical._spread_step(timer, b, ctx, c, 0.5) - dec
        assert float(analytical._on_surface(nodes, surface, np.array(float(c)), 0.5)) == pytest.approx(spread, rel=1e-6)
    big = np.array([2000.0, 4000.0, 8000.0])
    even = analytical._on_surface(nodes, surface, big, 0.5)
    uneven = analytical._on_surface(nodes, surface, big, 0.8)
    alone = analytical._on_surface(nodes, surface, big, 1.0)
    assert np.all(even < 0.95 * alone) and np.all((even < uneven) & (uneven < alone))
    # an uneven split of a compute-bound step, against the timer's own step of that shape
    m = 3200
    new = np.array([1] * b + [m, 4000 - m])
    cached = np.array([ctx] * b + [0, 0])
    exact = timer.expected(new, cached, separable=True).duration_s - dec
    assert float(analytical._on_surface(nodes, surface, np.array(4000.0), 0.8)) == pytest.approx(exact, rel=0.03)


def test_refined_curve_follows_the_kink() -> None:
    """Between the coarse grid's nodes the refined curve is within 3% of the timer's step (the coarse grid's chord
    was 30% over it at 500 prompt tokens beside 90 decodes: the GEMMs turning compute-bound)."""
    model, _ = _model()
    timer = model.timers["mixed"]
    b, ctx, budget = 90, 576, 8192 - 90
    nodes, extra = analytical._prompt_curve(timer, b, ctx, budget)
    dec = analytical._decode_step(timer, b, ctx).duration_s
    worst = 0.0
    for c in (300, 500, 600, 736, 1000, 1300):
        exact = analytical._steps(timer, b, ctx, c, 0)[1].duration_s - dec
        worst = max(worst, abs(float(np.interp(c, nodes, extra)) / exact - 1))
    assert worst < 0.03


def test_stratified_draws_keep_the_sample_mean() -> None:
    rng = np.random.default_rng(7)
    sample = np.minimum(np.round(rng.lognormal(np.log(512) - 0.5 * np.log(2), np.sqrt(np.log(2)), 1000)), 8192)
    analytical._SUMS.clear()
    sums = analytical._prompt_sums(sample, 8)
    per_prompt = np.diff(sums, axis=1).mean(axis=0)  # each prompt's mean over the draws [8]
    assert np.all(np.abs(per_prompt / sample.mean() - 1) < 0.01), per_prompt / sample.mean()
    # prefix-stable: a wider table starts with the same columns
    analytical._SUMS.clear()
    wide = analytical._prompt_sums(sample, 200)
    assert np.array_equal(wide[:, :9], sums)


def test_verdict_is_monotone_and_the_step_matches_the_simulation() -> None:
    """Past the first overloaded or SLO-missing rate every higher rate is too; at 20 req/s (about the simulated
    capacity) the mean TPOT and E2E are within 5% of the discrete-event engine's on 60 s of the same arrivals."""
    model, spec = _model()
    ok = [sweep_eval.meets(model.summary(float(r)), 99, 1.0, 0.05) for r in range(18, 33)]
    first = ok.index(False)
    assert not any(ok[first:]), ok
    rate = 20.0
    a = model.summary(rate)
    d = sweep_eval._des(model.built, rate, spec.seed, int(rate * 60))
    assert a["tpot_mean_s"] == pytest.approx(d["tpot_mean_s"], rel=0.05)
    assert a["e2e_mean_s"] == pytest.approx(d["e2e_mean_s"], rel=0.05)


def test_coarse_start_ends_on_the_refined_fixed_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixed point climbs on coarse curves and finishes on the refined ones (`COARSE_START`): its answer is a
    fixed point of the refined model (one more refined iterate moves neither the step nor the batch), the same as
    the refined climb from one sequence within the fixed point's own tolerance, and it builds fewer refined curves
    (the climb from one sequence passes through every batch below the answer)."""
    got = {}
    for flag in (False, True):
        monkeypatch.setattr(analytical, "COARSE_START", flag)
        model, _ = _model()
        timer = model.timers["mixed"]
        states = [model._mixed(rate)[0] for rate in (4.0, 12.0, 20.0)]
        refined = sum(1 for k in timer._memo if k[0] == "prompt_curve" and k[-1] == "refined")
        got[flag] = (states, refined, timer, model)
    (old, n_old, _, _), (new, n_new, timer, model) = got[False], got[True]
    assert n_new < 0.8 * n_old, (n_new, n_old)
    p = model.pools["mixed"]
    prompts = model.inp - model.hits
    ctx = int(model.mean_in + model.mean_out / 2)
    for rate, a, b in zip((4.0, 12.0, 20.0), old, new, strict=True):
        assert not a.overloaded and not b.overloaded
        assert b.tau == pytest.approx(a.tau, rel=2e-3) and b.batch == pytest.approx(a.batch, rel=0.02)
        bi = max(1, round(b.batch))
        budget = max(p.engine.max_tokens - bi, 1)
        step, _, _ = analytical.aggregate_step(timer, bi, ctx, b.t_decode, rate, b.tau, prompts, budget)
        assert step == pytest.approx(b.tau, rel=2e-3)
        assert rate * (model.mean_out - 1) * step == pytest.approx(b.batch, rel=0.02)


def test_memoised_columns_give_the_same_step_to_the_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """`aggregate_step` with its per-batch columns memoised (`AGG_COLUMNS`) returns the very floats it returns
    averaging over the draws at every call: steps at one batch whose Poisson width grows, shrinks and grows again,
    fine and coarse, at two batches. One width is past 200 columns: numpy's axis-0 mean of so wide an array summed
    its columns in another order than a narrow one's, and the memo then depended on which rate asked first
    (`analytical._column_means`)."""
    model, _ = _model()
    timer = model.timers["mixed"]
    prompts = model.inp - model.hits
    ctx = int(model.mean_in + model.mean_out / 2)
    calls = [
        (b, tau, coarse) for b in (40, 90) for coarse in (False, True) for tau in (0.03, 0.2, 6.0, 0.01, 0.5, 0.04)
    ]
    got = {}
    for flag in (False, True):
        monkeypatch.setattr(analytical, "AGG_COLUMNS", flag)
        timer._memo = {k: v for k, v in timer._memo.items() if k[0] != "agg_columns"}
        got[flag] = [
            analytical.aggregate_step(timer, b, ctx, 0.03, 20.0, tau, prompts, 8192 - b, coarse)
            for b, tau, coarse in calls
        ]
    assert got[True] == got[False]
    assert len({round(x[0], 12) for x in got[True]}) > 10  # the calls differ


def test_curve_modes_have_their_own_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refined curve, the plain 13 geometric nodes with `CURVE_REFINE` off (the code before 2026-12-07), and
    the coarse start's `_COARSE_NODES` are three curves with their own memo keys."""
    model, _ = _model()
    timer = model.timers["mixed"]
    b, ctx, budget = 90, 576, 8192 - 90
    top = analytical._curve_top(budget)

    def geometric(n: int) -> int:
        return len(np.unique(np.round(np.geomspace(1, top, n)).astype(np.int64)))

    coarse, _ = analytical._prompt_surface(timer, 64, ctx, budget, coarse=True)  # 64: on both grids
    assert len(coarse) == geometric(analytical._COARSE_NODES)
    refined, _ = analytical._prompt_curve(timer, b, ctx, budget)
    assert len(refined) > 13
    monkeypatch.setattr(analytical, "CURVE_REFINE", False)
    plain, _ = analytical._prompt_surface(timer, 64, ctx, budget)
    assert len(plain) == geometric(13)
    assert len(analytical._prompt_surface(timer, 64, ctx, budget, coarse=True)[0]) == len(coarse)
