"""`model.routing.draw_slot_counts`, the discrete-event engine's routing sampler, against top-k routing itself:
each token picks ``top_k`` distinct experts (a multinomial of the pairs let a token pick one twice)."""

from __future__ import annotations

import numpy as np
import pytest
from test_routing import sample_topk  # tests/test_routing.py

from moesim.model.routing import (
    EXACT_TOKENS,
    _slot_moments,
    draw_slot_counts,
    expected_distinct_experts,
    inclusion_probs,
    slot_inclusion,
)
from moesim.sim.serving.capacity import make_timer, replica_capacity
from moesim.sim.serving.serve import load


def _uniform(experts: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((1, experts), 1.0 / experts), np.arange(experts)[None, :]


def test_one_token_activates_top_k_experts() -> None:
    """Mixtral's routing (8 experts, top 2), one token: every draw has 2 pairs on 2 experts (the multinomial of the
    pairs alone put both on one expert in 1 draw of 8: 1.875 active experts on average)."""
    p, e = _uniform(8)
    pairs, hit = draw_slot_counts(np.random.default_rng(1), 2, 4000, p, e, 2)
    assert (hit.sum(axis=2) == 2).all()
    assert (pairs.sum(axis=2) == 2).all() and pairs.max() == 1


@pytest.mark.parametrize(("tokens", "experts", "k", "gpus"), [(3, 8, 2, 4), (16, 64, 6, 8), (EXACT_TOKENS, 8, 2, 8)])
def test_exact_draw_has_top_k_routings_law(tokens: int, experts: int, k: int, gpus: int) -> None:
    """Per GPU: mean and variance of its pairs, its active experts and the busiest GPU's pairs against
    Monte-Carlo top-k routing (Gumbel top-k, `tests.test_routing.sample_topk`), 4,000 draws each."""
    p, e = _uniform(experts)
    pairs, hit = draw_slot_counts(np.random.default_rng(2), tokens * k, 4000, p, e, k)
    per = experts // gpus
    got = pairs[0].reshape(4000, gpus, per).sum(axis=2)
    act = hit[0].reshape(4000, gpus, per).sum(axis=2)
    picks = sample_topk(4000, tokens, experts, k)
    onehot = np.stack([np.bincount(x.ravel(), minlength=experts) for x in picks]).astype(float)
    ref = onehot.reshape(4000, gpus, per).sum(axis=2)
    ref_act = (onehot > 0).reshape(4000, gpus, per).sum(axis=2)
    assert got.mean() == pytest.approx(tokens * k / gpus)
    assert got.var(axis=0).mean() == pytest.approx(ref.var(axis=0).mean(), rel=0.06)
    assert got.max(axis=1).mean() == pytest.approx(ref.max(axis=1).mean(), rel=0.02)
    assert act.mean() == pytest.approx(ref_act.mean(), rel=0.01)
    assert hit[0].sum(axis=1).mean() == pytest.approx(expected_distinct_experts(tokens, k, experts), rel=0.01)


def test_large_draw_keeps_distinct_picks_variance() -> None:
    """Above `EXACT_TOKENS` (a multinomial with the finite-population correction): each GPU's variance is the
    hypergeometric one of `_slot_moments` (uniform, 8 experts, top 2, 8 GPUs, 700 tokens: the multinomial alone
    gives 7/6 of it), and every pair lands on a slot."""
    p, e = _uniform(8)
    pairs, _ = draw_slot_counts(np.random.default_rng(3), 1400, 20000, p, e, 2)
    _, _, var = _slot_moments(np.full(8, 1 / 8), 2, 8, None)
    assert pairs[0].var(axis=0).mean() == pytest.approx(700 * var.mean(), rel=0.03)
    assert pairs.sum(axis=2) == pytest.approx(np.full((1, 20000), 1400.0))


def test_skewed_draw_with_replicas_keeps_each_slots_share() -> None:
    """A power-law expert popularity with two experts replicated: each slot's mean pairs are its inclusion
    probability (`slot_inclusion`) times the tokens, and one token never reaches one expert twice."""
    loads = 1.0 / np.arange(1, 9) ** 0.8
    loads /= loads.sum()
    phys = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1])
    pi = inclusion_probs(loads, 2)
    slot_p = slot_inclusion(pi, phys) / 2
    rng = np.random.default_rng(4)
    pairs, _ = draw_slot_counts(rng, 10, 40000, slot_p[None], phys[None], 2)
    assert pairs[0].mean(axis=0) == pytest.approx(5 * slot_p * 2, rel=0.02)
    one, _ = draw_slot_counts(rng, 2, 40000, slot_p[None], phys[None], 2)
    per_expert = np.stack([one[0][:, phys == x].sum(axis=1) for x in range(8)], axis=1)
    assert per_expert.max() == 1 and (per_expert.sum(axis=1) == 2).all()


def test_des_decode_step_of_one_sequence_is_the_analytical_step() -> None:
    """Mixtral-8x7B on 8 H100s at TP8, one sequence decoding: its two experts are always two, so every
    discrete-event step is the analytical step, within 0.03% (the step tables' interpolation of the other ops; with
    the multinomial the sampled steps varied and averaged 3.7% faster); and at 2, 3 and 5 sequences the sampled
    steps average the analytical step within 1.2%."""
    sc = {
        "model": "mixtral-8x7b",
        "cluster": "dgx-h100",
        "layout": {"tp": 8},
        "engine": {"max_batch": 256, "max_tokens": 8192},
        "workload": {"arrival": "poisson", "rate": 1, "requests": 10},
        "routing": {"distribution": "uniform"},
    }
    built = load(sc)
    pool = built.pools[0]
    timer = make_timer(built, pool, replica_capacity(built, pool), seed=5)
    new, cached = np.ones(1, np.int64), np.full(1, 600, np.int64)
    want = timer.expected(new, cached).duration_s
    got = np.array([timer.sample(new, cached).duration_s for _ in range(40)])
    assert np.ptp(got) == 0  # no spread: the same two experts' work every step
    assert got == pytest.approx(np.full(40, want), rel=1e-3)  # the rest within the step tables' interpolation
    # a few sequences: the sampled steps' mean is the analytical step (2, 3, 5 sequences: 0.2, 0.03, 0.26% apart
    # over 300 steps; with the multinomial 3.7, 3.2 and 1.7% under it)
    for b in (2, 3, 5):
        new, cached = np.ones(b, np.int64), np.full(b, 600, np.int64)
        mean = np.mean([timer.sample(new, cached).duration_s for _ in range(300)])
        assert mean == pytest.approx(timer.expected(new, cached).duration_s, rel=0.012), b


@pytest.mark.parametrize("method", ["sampford", "systematic"])
def test_both_exact_methods_keep_inclusion_probabilities(method: str) -> None:
    """`_sampford` (two layers at once, one uniform) and `_systematic` (a hot expert at pi 0.9, past `SAMPFORD_MAX`):
    k distinct experts per row, each expert's frequency its pi (RMS z-score near 1 over the 32 experts, none
    past 4.5, 100,000 rows)."""
    from moesim.model.routing import SAMPFORD_MAX, _sampford, _systematic

    k = 4
    skew = 1.0 / np.arange(1, 33)
    skew = skew / skew.sum() * k
    skew = np.minimum(skew, 0.9 if method == "systematic" else 0.7)
    skew = skew / skew.sum() * k
    rng = np.random.default_rng(6)
    if method == "sampford":
        pis = np.stack([skew, np.full(32, k / 32)])
        picks = _sampford(rng, pis, k, 100000)
    else:
        assert skew.max() > SAMPFORD_MAX
        pis, picks = skew[None], _systematic(rng, skew, k, 100000)[None]
    for pi, x in zip(pis, picks, strict=True):
        srt = np.sort(x, axis=1)
        assert (srt[:, 1:] != srt[:, :-1]).all()
        z = (np.bincount(x.ravel(), minlength=32) / 100000 - pi) / np.sqrt(pi * (1 - pi) / 100000)
        assert np.sqrt((z**2).mean()) < 1.5 and np.abs(z).max() < 4.5


def test_inverse_cdf_draws_stay_in_their_layer() -> None:
    """`_Inverse`: a uniform a hair under 1 draws the layer's last expert with weight, never a trailing expert of
    weight 0 or the next layer's first (u + 58 rounds to 59.0 in floating point); a uniform of 0 the first."""
    from moesim.model.routing import _Inverse

    w = np.random.default_rng(7).random((64, 8))
    w[:, -2:] = 0.0
    inv = _Inverse(w)
    layer = np.arange(64)
    assert (inv.draw(np.full(64, np.nextafter(1.0, 0.0)), layer) == 5).all()
    assert (inv.draw(np.zeros(64), layer) == 0).all()
