"""The exact pair-swap search across nodes and the within-node GPU polish (`placement.nicsearch`)."""

from __future__ import annotations

import numpy as np

from moesim.model.hardware import get_cluster, make_cluster
from moesim.placement.ilp_stages import _incidence
from moesim.placement.layertime import layer_cost, pairs_per_expert, replica_gemm_s
from moesim.placement.nicsearch import _hit_terms, pair_swap_search, polish_gpus
from moesim.placement.synthetic import synthetic_trace


def _cost(gpus: int):
    c = get_cluster("hgx-h200-x4")
    c = make_cluster(c.gpu, nodes=c.nodes, gpus_per_node=8)
    return layer_cost(c, 7168, 2048, 8, gpus, dtype="fp8", tokens_per_gpu=1024)


def _hits(a: np.ndarray, r: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Each node's hit share by the product rule, straight from the definition."""
    frac = np.vstack([a / r[:, None], np.zeros((1, a.shape[1]))])
    return 1.0 - np.prod(1.0 - frac[np.where(tokens >= 0, tokens, a.shape[0])], axis=1).mean(axis=0)


def test_hit_terms_price_every_swap_exactly_with_replicated_experts():
    rng = np.random.default_rng(3)
    n, nodes, t = 16, 3, 120
    r = np.ones(n, int)
    r[:5] = [2, 2, 3, 2, 2]
    a = np.zeros((n, nodes), int)
    for e in range(n):
        for k in rng.choice(nodes, r[e], replace=False):
            a[e, k] += 1
    a[5] = [0, 0, 0]
    a[5, 1] = 1
    tokens = np.array([rng.choice(n, 4, replace=False) for _ in range(t)])
    tokens[::7, 3] = -1
    u = np.zeros((t, n + 1), bool)
    np.put_along_axis(u, np.where(tokens >= 0, tokens, n), True, axis=1)
    tok, ent = np.nonzero(u[:, :n])
    pt, pq = np.nonzero((tok[:, None] == tok[None, :]) & (ent[:, None] != ent[None, :]))
    pe, pf = ent[pt], ent[pq]
    inv = 1.0 / r
    terms = [_hit_terms(a[:, k], inv, t, tok, ent, tok[pt], pe, pf, inv[pe] * inv[pf]) for k in range(nodes)]
    hits = _hits(a, r, tokens)
    assert np.allclose([x[0] for x in terms], hits)
    checked = 0
    for e in range(n):
        for f in range(n):
            for h in range(nodes):
                for c in range(nodes):
                    if e == f or h == c or a[e, h] == 0 or a[f, c] == 0:
                        continue
                    b = a.copy()
                    b[e, h], b[e, c], b[f, c], b[f, h] = b[e, h] - 1, b[e, c] + 1, b[f, c] - 1, b[f, h] + 1
                    new = _hits(b, r, tokens)
                    mh, bh = terms[h][1], terms[h][2]
                    mc, bc = terms[c][1], terms[c][2]
                    assert abs(hits[h] + (-mh[e] + mh[f] + bh[e, f]) / t - new[h]) < 1e-12
                    assert abs(hits[c] + (mc[e] - mc[f] + bc[e, f]) / t - new[c]) < 1e-12
                    checked += 1
    assert checked > 250


def _score(a: np.ndarray, w: np.ndarray, r: np.ndarray, tokens: np.ndarray, cost, gpn: int = 8) -> float:
    """`nic_search`'s score: slowest node's GEMM per GPU + max(busiest node NIC, busiest node NVLink per GPU)."""
    nodes = a.shape[1]
    g = nodes * gpn
    pairs = pairs_per_expert(w, cost, g) / r
    gl = a.T @ replica_gemm_s(pairs, cost) / gpn
    vl = a.T @ (pairs * cost.nvlink_s_per_token) / gpn
    nic = _hits(a, r, tokens) * cost.tokens_per_gpu * g * (nodes - 1) / nodes * cost.nic_s_per_token / gpn
    return float(gl.max() + max(nic.max(), vl.max()))


def test_pair_swap_search_lowers_the_score_keeps_counts_and_is_deterministic():
    st = synthetic_trace(1, 64, 8, tokens=1024, alpha=1.0, n_group=8, topk_group=4, seed=4)
    cost = _cost(32)
    w, tokens = st.counts[0], st.token_sample(0, 512, np.random.default_rng(0))
    p2l = np.concatenate([np.arange(64), np.argsort(-w)[:32]])  # 96 slots: the 32 heaviest twice, 3 per GPU
    a0 = _incidence(p2l, 64, 4)
    r = np.bincount(p2l, minlength=64)
    a = pair_swap_search(a0, w, r, tokens, 8, cost, passes=50)
    assert np.array_equal(a, pair_swap_search(a0, w, r, tokens, 8, cost, passes=50))
    assert (a.sum(axis=1) == r).all() and (a.sum(axis=0) == a0.sum(axis=0)).all() and a.max() <= 8
    assert _score(a, w, r, tokens, cost) < 0.99 * _score(a0, w, r, tokens, cost)
    # every pass lowers the score (a swap is taken only when the slowest terms do not rise)
    prev = _score(a0, w, r, tokens, cost)
    for k in range(1, 6):
        now = _score(pair_swap_search(a0, w, r, tokens, 8, cost, passes=k), w, r, tokens, cost)
        assert now <= prev * (1 + 1e-12)
        prev = now


def test_polish_gpus_lowers_the_slowest_gpu_without_duplicates_or_moving_nodes():
    rng = np.random.default_rng(1)
    cost = _cost(32)
    w = rng.pareto(1.2, 64) + 0.1
    p2l = np.concatenate([np.arange(64), np.argsort(-w)[:32]])
    rng.shuffle(p2l[:48])  # a poor packing of node 0 and 1's slots (duplicates avoided below)
    gpus, per = 32, 3
    slots = p2l.reshape(gpus, per)
    assert all(len(set(row)) == per for row in slots.tolist())
    out = polish_gpus(p2l, w, 8, gpus, cost)
    assert np.array_equal(out, polish_gpus(p2l, w, 8, gpus, cost))
    new = out.reshape(gpus, per)
    assert all(len(set(row)) == per for row in new.tolist())
    for k in range(4):  # each node keeps its replicas
        assert sorted(new[8 * k : 8 * k + 8].ravel()) == sorted(slots[8 * k : 8 * k + 8].ravel())
    per_rep = replica_gemm_s(pairs_per_expert(w, cost, gpus) / np.bincount(p2l, minlength=64), cost)
    assert per_rep[new].sum(axis=1).max() < per_rep[slots].sum(axis=1).max()
