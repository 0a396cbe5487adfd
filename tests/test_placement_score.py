"""Placement scored on more tokens than the swap searches price, and each plan's perfectly balanced floor."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.model.hardware import get_cluster, make_cluster
from moesim.placement.api import SCORE_TOKENS, place, score_tokens
from moesim.placement.ilp import IlpOptions, _unsearched
from moesim.placement.layertime import balanced_time_parts, layer_cost, layer_time_parts
from moesim.placement.synthetic import synthetic_trace


def _cost(gpus: int, gpus_per_node: int = 4):
    c = get_cluster("hgx-h200-x4")
    c = make_cluster(c.gpu, nodes=gpus // gpus_per_node, gpus_per_node=gpus_per_node)
    return layer_cost(c, 7168, 2048, 4, gpus, dtype="fp8", tokens_per_gpu=1024)


def test_balanced_floor_is_below_the_plan_and_reached_by_an_even_plan():
    cost = _cost(8)
    rng = np.random.default_rng(0)
    tokens = np.stack([rng.choice(16, size=4, replace=False) for _ in range(300)])
    w = np.bincount(tokens.ravel(), minlength=16).astype(float)
    for _ in range(5):
        p2l = rng.permutation(np.concatenate([np.arange(16), rng.choice(16, size=8, replace=False)]))
        act = layer_time_parts(p2l, w, 8, 4, tokens, cost)
        bal = balanced_time_parts(p2l, w, 8, 4, tokens, cost)
        assert bal["total"] <= act["prefill"] * (1 + 1e-12)
        assert bal["gemm"] <= act["gemm"] * (1 + 1e-12) and bal["nic"] <= act["nic"] * (1 + 1e-12)
        assert 1.0 <= bal["nodes_per_token"] <= 2.0
    # equal loads, one expert per GPU, every token on both nodes: nothing to balance, the floor is the time itself
    even = np.arange(8)
    tok = np.array([[0, 1, 4, 5], [2, 3, 6, 7]] * 10)
    we = np.bincount(tok.ravel(), minlength=8).astype(float)
    c8 = _cost(8)
    a, b = layer_time_parts(even, we, 8, 4, tok, c8), balanced_time_parts(even, we, 8, 4, tok, c8)
    assert b["total"] == pytest.approx(a["prefill"], rel=1e-12) and b["nodes_per_token"] == pytest.approx(2.0)


def test_place_scores_and_chooses_on_all_the_trace_tokens():
    st = synthetic_trace(2, 32, 4, tokens=1500, alpha=1.2, n_group=4, topk_group=2, seed=5)
    cost = _cost(8)
    opts = IlpOptions(time_limit=30, workers=1, cost=cost, search_tokens=128)
    assert score_tokens(opts) == SCORE_TOKENS >= 1500 and score_tokens(IlpOptions()) < SCORE_TOKENS
    res = place(st, 8, 4, 8, ("eplb", "ilp"), 4, opts)
    for r in res.values():
        p2l = r.plan.phys_to_log
        full = [layer_time_parts(p2l[i], st.counts[i], 8, 4, st.topk[:, i], cost)["total"] for i in (0, 1)]
        assert r.layer_time_s == pytest.approx(full, rel=1e-9)  # every token, not the searched 128
    assert (res["ilp"].layer_time_s <= res["eplb"].layer_time_s * (1 + 1e-12)).all()


def test_candidates_are_chosen_on_the_tokens_the_searches_did_not_price():
    tokens = np.arange(40).reshape(10, 4)
    assert (_unsearched(tokens, IlpOptions(search_tokens=4)) == tokens[4:]).all()
    assert _unsearched(tokens, IlpOptions(search_tokens=6)) is tokens  # fewer left than searched: all of them
