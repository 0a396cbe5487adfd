"""Routing arithmetic against Monte-Carlo simulation of top-k routing."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.model import MoesimError, expected_distinct_experts, gpu_loads, token_fanout
from moesim.model.routing import expected_max_normal, fanout_of_hits, hit_probability

RNG = np.random.default_rng(0)


def sample_topk(trials: int, tokens: int, experts: int, k: int, weights=None, rng=None) -> np.ndarray:
    """[trials, tokens, k] expert ids: k distinct per token, Gumbel-top-k on log-weights. Without ``rng``, drawn
    from a generator seeded by the arguments, so a test's sample does not depend on which tests ran before it in
    the same process (pytest-xdist deals tests to workers differently from run to run)."""
    logw = np.zeros(experts) if weights is None else np.log(weights)
    if rng is None:
        rng = np.random.default_rng((trials, tokens, experts, k, 0 if weights is None else 1))
    g = logw + rng.gumbel(size=(trials, tokens, experts))
    return np.argpartition(-g, k - 1, axis=-1)[..., :k]


@pytest.mark.parametrize("tokens,experts,k", [(1, 8, 2), (16, 64, 6), (64, 256, 8), (512, 128, 8)])
def test_expected_distinct_uniform_matches_monte_carlo(tokens, experts, k):
    picks = sample_topk(400, tokens, experts, k)
    onehot = np.zeros((400, experts), bool)
    np.put_along_axis(onehot, picks.reshape(400, -1), True, axis=1)
    mc = onehot.sum(axis=1).mean()
    exact = expected_distinct_experts(tokens, k, experts)
    se = onehot.sum(axis=1).std() / np.sqrt(400)
    assert abs(mc - exact) < 4 * se + 1e-9


def test_expected_distinct_with_popularity_matches_monte_carlo():
    experts, k, tokens = 64, 6, 32
    weights = 1.0 / np.arange(1, experts + 1) ** 1.2
    big = sample_topk(40, 1000, experts, k, weights)
    pi = np.bincount(big.ravel(), minlength=experts) / (40 * 1000)  # empirical inclusion probabilities
    loads = pi / k
    picks = sample_topk(800, tokens, experts, k, weights)
    onehot = np.zeros((800, experts), bool)
    np.put_along_axis(onehot, picks.reshape(800, -1), True, axis=1)
    mc = onehot.sum(axis=1).mean()
    assert expected_distinct_experts(tokens, k, loads=loads) == pytest.approx(mc, rel=0.02)


@pytest.mark.parametrize(
    "tokens,experts,k,gpus,trials", [(256, 64, 8, 8, 300), (64, 256, 8, 32, 300), (4096, 128, 8, 16, 30)]
)
def test_busiest_gpu_uniform_matches_monte_carlo(tokens, experts, k, gpus, trials):
    picks = sample_topk(trials, tokens, experts, k)
    per_gpu = np.stack([np.bincount(p.ravel() // (experts // gpus), minlength=gpus) for p in picks])
    mc = per_gpu.max(axis=1).mean()
    load = gpu_loads(tokens, k, gpus, num_experts=experts)
    assert load.mean_pairs == pytest.approx(np.full(gpus, tokens * k / gpus))
    assert load.busiest_pairs == pytest.approx(mc, rel=0.03)


def test_busiest_gpu_skewed_and_replicated():
    experts, k, gpus, tokens = 32, 4, 8, 512
    weights = 1.0 / np.arange(1, experts + 1) ** 1.0
    big = sample_topk(20, 2000, experts, k, weights)
    loads = np.bincount(big.ravel(), minlength=experts) / big.size
    picks = sample_topk(300, tokens, experts, k, weights)
    per_gpu = np.stack([np.bincount(p.ravel() // 4, minlength=gpus) for p in picks])
    load = gpu_loads(tokens, k, gpus, loads=loads)
    assert load.busiest_pairs == pytest.approx(per_gpu.max(axis=1).mean(), rel=0.03)
    assert load.busiest_gpu == 0
    # replicating the hottest expert on another GPU lowers the busiest load
    placement = np.concatenate([np.arange(32), [0] * 8])  # 40 slots, 5 per GPU
    placement = placement[
        [
            0,
            1,
            2,
            3,
            32,
            4,
            5,
            6,
            7,
            33,
            8,
            9,
            10,
            11,
            34,
            12,
            13,
            14,
            15,
            35,
            16,
            17,
            18,
            19,
            36,
            20,
            21,
            22,
            23,
            37,
            24,
            25,
            26,
            27,
            38,
            28,
            29,
            30,
            31,
            39,
        ]
    ]
    spread = gpu_loads(tokens, k, gpus, loads=loads, phys_to_log=placement)
    assert spread.busiest_pairs < load.busiest_pairs
    assert spread.mean_pairs.sum() == pytest.approx(tokens * k)


def test_expected_max_normal():
    assert expected_max_normal(np.array([5.0]), np.array([2.0])) == pytest.approx(5.0)
    # E[max of 2 iid N(0,1)] = 1/sqrt(pi)
    assert expected_max_normal(np.zeros(2), np.ones(2)) == pytest.approx(1 / np.sqrt(np.pi), abs=1e-4)


def _deepseek_router(scores: np.ndarray, n_group: int, topk_group: int, k: int) -> np.ndarray:
    """DeepSeek-V3's group-limited top-k on per-token scores [T, E]: each group scored by the sum of its best two,
    the best ``topk_group`` groups kept, the best ``k`` experts among theirs; expert ids [T, k]."""
    t, e = scores.shape
    g = scores.reshape(t, n_group, -1)
    keep = np.argsort(-(-np.sort(-g, axis=2)[:, :, :2]).sum(axis=2), axis=1)[:, :topk_group]
    mask = np.full((t, n_group), -np.inf)
    np.put_along_axis(mask, keep, 0.0, axis=1)
    return np.argpartition(-(g + mask[:, :, None]).reshape(t, e), k - 1, axis=1)[:, :k]


def _trace_fanout(gpu: np.ndarray, gpus: int, nodes: int):
    """The busiest GPU's fan-out of a trace, each token's GPUs [T, k]: its hit shares as the token counts give them,
    aggregated as `token_fanout` does (`fanout_of_hits`)."""
    from benchmarks.routing_fanout import hit_shares

    return fanout_of_hits(*hit_shares(gpu, gpus, nodes), gpus // nodes)


def test_group_limited_hit_probability_matches_deepseeks_router():
    """Uniform scores through DeepSeek's own rule: each chosen group gives the token its best expert, so a set
    holding a whole group is hit whenever that group is chosen (4 of 8: 0.5), not only when one of the picks
    lands there (0.455 if the 8 picks were spread at random over the 4 groups' experts)."""
    experts, n_group, topk_group, k = 256, 8, 4, 8
    members = [np.arange(0, 32), np.arange(16, 48), np.arange(0, 4), np.arange(0, 64)]
    model = hit_probability(members, k, experts, n_group, topk_group)
    pick = _deepseek_router(RNG.standard_normal((40000, experts)), n_group, topk_group, k)
    for m, p in zip(members, model, strict=True):
        assert p == pytest.approx(np.isin(pick, m).any(axis=1).mean(), abs=0.012)
    assert model[0] == pytest.approx(0.5)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_fanout_with_loads_and_replicas_follows_deepseeks_router(alpha):
    """With power-law popularity and EPLB's 288 slots on 32 GPUs in 4 nodes, the nodes and GPUs a token's
    dispatch reaches (what DeepEP's normal mode sends over each NIC and NVLink) follow DeepSeek's router through
    `placement.synthetic`'s trace; independent picks (the rule before) put the NIC 11% high at uniform popularity."""
    from moesim.placement.baselines import rebalance_experts, repack_no_duplicates
    from moesim.placement.synthetic import synthetic_trace

    experts, k, gpus, nodes = 256, 8, 32, 4
    st = synthetic_trace(1, experts, k, tokens=8192, alpha=alpha, n_group=8, topk_group=4, seed=3)
    loads = st.counts[0] / st.counts[0].sum()
    p2l = rebalance_experts(st.counts[:1], 288, 8, nodes, gpus)[0][0]
    p2l = repack_no_duplicates(p2l, st.counts[0], gpus, gpus // nodes)
    f = token_fanout(gpus, 8, k, experts, 8, 4, loads, p2l)
    # the trace's own fan-out, each (token, expert) sent to one of the expert's replicas at random
    rng = np.random.default_rng(0)
    replicas = [np.flatnonzero(p2l == e) for e in range(experts)]
    slot = np.array([[replicas[e][rng.integers(len(replicas[e]))] for e in row] for row in st.topk[:, 0, :]])
    trace = _trace_fanout(slot // 9, gpus, nodes)
    assert f.inter == pytest.approx(trace.inter, rel=0.07)
    assert f.intra == pytest.approx(trace.intra, rel=0.07)


def test_fanout_two_nodes_counts_each_node_once():
    experts, k, gpus = 64, 6, 16
    f = token_fanout(gpus, 8, k, experts)
    picks = sample_topk(2000, 1, experts, k)[:, 0, :]
    gpu_of = picks // 4
    src = 0  # GPU 0 on node 0
    intra = np.mean([len({g for g in row if g // 8 == 0 and g != src}) for g in [None] for row in gpu_of])
    inter = np.mean([len({g // 8 for g in row} - {0}) for row in gpu_of])
    assert f.intra == pytest.approx(intra, rel=0.05)
    assert f.inter == pytest.approx(inter, rel=0.05)


def test_bad_loads():
    with pytest.raises(MoesimError, match="summing to 1"):
        gpu_loads(10, 2, 2, loads=np.array([0.5, 0.2, 0.2, 0.2]))
    with pytest.raises(MoesimError, match="exceeds 1/top_k"):
        gpu_loads(10, 2, 2, loads=np.array([0.7, 0.1, 0.1, 0.1]))


def test_keeping_every_group_is_no_group_limit():
    """``topk_group`` = ``n_group`` keeps every group: the exact rule without groups, with or without loads."""
    experts, k = 64, 6
    sets = [np.arange(0, 8), np.arange(8, 24)]
    plain = hit_probability(sets, k, experts)
    np.testing.assert_allclose(hit_probability(sets, k, experts, 4, 4), plain, rtol=1e-12)
    f_plain = token_fanout(16, 8, k, experts, loads=np.full(experts, 1 / experts))
    f_all = token_fanout(16, 8, k, experts, 4, 4, loads=np.full(experts, 1 / experts))
    assert (f_all.intra, f_all.inter) == pytest.approx((f_plain.intra, f_plain.inter), rel=1e-12)


def test_fanout_without_groups_keeps_independent_picks_under_skew():
    """A plain top-k router (128 experts, top-8, 32 GPUs in 4 nodes) with power-law popularity: independent picks
    follow the trace's NVLink and NIC fan-out (successive sampling, exact at uniform popularity, is 25% low on the
    GPU holding the hottest experts: benchmarks/routing_fanout.py)."""
    from moesim.placement.synthetic import synthetic_trace

    experts, k, gpus, nodes = 128, 8, 32, 4
    st = synthetic_trace(1, experts, k, tokens=8192, alpha=1.0, seed=2)
    f = token_fanout(gpus, 8, k, experts, loads=st.counts[0] / st.counts[0].sum())
    trace = _trace_fanout(st.topk[:, 0, :] // (experts // gpus), gpus, nodes)
    assert f.intra == pytest.approx(trace.intra, rel=0.05)
    assert f.inter == pytest.approx(trace.inter, rel=0.05)
