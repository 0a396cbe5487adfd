"""Swap search on the busiest node's NIC: the term that sets the layer time across nodes.

Across nodes the predicted layer time (`placement.layertime`) is ``fixed + max_g GEMM_g + max(NVLink, NIC)``, and
the NIC term is the **busiest** node's inbound tokens (per-node deduplicated sends), not the mean. Under DeepSeek-V3's
group-limited routing a token reaches 4 of 8 expert groups, so with two groups per node it reaches ~3.2 of 4 nodes
whatever the pairing of groups, and the NIC is ~3/4 of EPLB's layer time on 32 GPUs; what a plan can still change
is how evenly the nodes are hit. The node starts (`coloc.improve_nodes`) trade node load against remote nodes per
token summed over nodes, which does not see which node is busiest. This search does: each pass takes the node of
most inbound tokens and tries swapping one replica there (those that are a token's only expert on that node most
often) with a light replica elsewhere, scoring ``max node GEMM / gpn + max(busiest node NIC, busiest node NVLink /
gpn)`` in seconds over the token sample, and keeps the best improving swap. Every cut-off is a count (passes,
candidates), so the result is the same on any machine.

Shapes: ``a`` [N, nodes] replicas of each expert per node; ``r`` [N] replica counts; ``tokens`` [T, k] (-1 padded).
"""

from __future__ import annotations

import time

import numpy as np

from moesim.placement.layertime import LayerCost, pairs_per_expert, replica_gemm_s


def _hits(a: np.ndarray, r: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[nodes] share of tokens reaching each node (a replica picked uniformly); ``idx`` [T, k] with -1 -> N."""
    frac = np.vstack([a / r[:, None], np.zeros((1, a.shape[1]))])
    return 1.0 - np.prod(1.0 - frac[idx], axis=1).mean(axis=0)


def nic_search(
    a: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    tokens: np.ndarray,
    gpn: int,
    cost: LayerCost,
    passes: int = 100,
    width: int = 8,
    seconds: float = float("inf"),
) -> np.ndarray | None:
    """Replicas per node [N, nodes] after at most ``passes`` improving swaps (``width`` x ``width`` candidates each)
    out of the busiest node; ``a`` is not changed. None when the wall-clock cap ``seconds`` ran out (a safety cap:
    the caller then keeps the baseline, so a plan returned never depends on the clock)."""
    t0 = time.perf_counter()
    a = a.copy()
    n, nodes = a.shape
    if nodes < 2 or cost.nic_s_per_token <= 0:
        return a
    num_gpus = nodes * gpn
    pairs = pairs_per_expert(w, cost, num_gpus) / r  # per replica
    gemm = replica_gemm_s(pairs, cost)
    nvl = pairs * cost.nvlink_s_per_token
    nic_per_share = cost.tokens_per_gpu * num_gpus * (nodes - 1) / nodes * cost.nic_s_per_token / gpn
    idx = np.where(tokens >= 0, tokens, n)

    gload, vload = a.T @ gemm, a.T @ nvl  # [nodes] per node
    users = [np.flatnonzero((idx == e).any(axis=1)) for e in range(n)]  # tokens of each expert

    def full(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frac = np.vstack([b / r[:, None], np.zeros((1, nodes))])
        miss = np.prod(1.0 - frac[idx], axis=1)  # [T, nodes]
        return miss, 1.0 - miss.mean(axis=0)

    def total(hits: np.ndarray, gl: np.ndarray, vl: np.ndarray) -> float:
        return float(gl.max()) / gpn + max(float(hits.max()) * nic_per_share, float(vl.max()) / gpn)

    miss, hits = full(a)
    best = total(hits, gload, vload)
    t_count = idx.shape[0]
    for _ in range(passes):
        if time.perf_counter() - t0 > seconds:
            return None
        h = int(np.argmax(hits))
        on_h = np.flatnonzero(a[:, h] > 0)
        frac_h = np.append(a[:, h] / r, 0.0)
        cnt = frac_h[idx].sum(axis=1)  # [T] expected experts of each token on node h
        sole = np.zeros(n + 1)
        np.add.at(sole, idx, (cnt <= 1.0 + 1e-9)[:, None] * frac_h[idx])
        outs = on_h[np.lexsort((on_h, -sole[on_h]))][:width]  # most often a token's only expert on h
        others = np.flatnonzero((a.sum(axis=1) - a[:, h]) > 0)
        ins = others[np.lexsort((others, w[others] / r[others]))][:width]  # lightest replicas elsewhere
        found = None
        for e in outs:
            for f in ins:
                if f == e or a[f, h] >= gpn:
                    continue
                rows = np.union1d(users[e], users[f])
                for c in np.flatnonzero((a[f] > 0) & (a[e] < gpn)):
                    if c == h:
                        continue
                    hb = hits.copy()
                    for k, de, df in ((h, -1, 1), (c, 1, -1)):
                        col = np.append(a[:, k] / r, 0.0)
                        col[e] += de / r[e]
                        col[f] += df / r[f]
                        new = np.prod(1.0 - col[idx[rows]], axis=1)
                        hb[k] += (miss[rows, k].sum() - new.sum()) / t_count
                    d = gemm[f] - gemm[e]
                    gl, vl = gload.copy(), vload.copy()
                    gl[h] += d
                    gl[c] -= d
                    vl[h] += nvl[f] - nvl[e]
                    vl[c] -= nvl[f] - nvl[e]
                    sc = total(hb, gl, vl)
                    if sc < best * (1 - 1e-9):
                        best, found = sc, (e, f, int(c))
        if found is None:
            break
        e, f, c = found
        a[e, h], a[e, c], a[f, c], a[f, h] = a[e, h] - 1, a[e, c] + 1, a[f, c] - 1, a[f, h] + 1
        miss, hits = full(a)
        gload, vload = a.T @ gemm, a.T @ nvl
        best = total(hits, gload, vload)
    return a
