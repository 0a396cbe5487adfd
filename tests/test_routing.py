"""Routing arithmetic against Monte-Carlo simulation of top-k routing."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.model import MoesimError, expected_distinct_experts, gpu_loads, token_fanout
from moesim.model.routing import expected_max_normal, hit_probability

RNG = np.random.default_rng(0)


def sample_topk(trials: int, tokens: int, experts: int, k: int, weights=None, rng=RNG) -> np.ndarray:
    """[trials, tokens, k] expert ids: k distinct per token, Gumbel-top-k on log-weights."""
    logw = np.zeros(experts) if weights is None else np.log(weights)
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


def test_group_limited_hit_probability_matches_monte_carlo():
    experts, n_group, topk_group, k = 256, 8, 4, 8
    members = [np.arange(0, 32), np.arange(16, 48), np.arange(0, 4)]
    exact = hit_probability(members, k, experts, n_group, topk_group)
    trials = 40000
    groups = np.argsort(RNG.random((trials, n_group)), axis=1)[:, :topk_group]
    pool = (groups[:, :, None] * 32 + np.arange(32)).reshape(trials, -1)
    pick = np.take_along_axis(pool, np.argsort(RNG.random(pool.shape), axis=1)[:, :k], axis=1)
    for m, p in zip(members, exact, strict=True):
        mc = np.isin(pick, m).any(axis=1).mean()
        assert p == pytest.approx(mc, abs=0.012)


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
