"""Co-location start for the ILP's node stage: swap experts between nodes.

The node-stage MIP's linear relaxation knows little about which experts
tokens use together, so on large layers it starts from this plan: a local
search over swaps of single-replica experts between nodes that lowers

    J = busiest node load / mean node load + weight * remote nodes per token

over a token sample. Replicated experts stay where the start put them and
count as background: token t misses node n with probability
``b[t,n] = prod over its replicated experts e of (1 - a[e,n]/r_e)``.
Each step scores every swap at once with numpy ([N, N] arrays) and applies
the best; it stops when no swap lowers J.
"""

from __future__ import annotations

import time

import numpy as np


def _state(tokens: np.ndarray, n: int, single: np.ndarray, frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token-expert incidence of single-replica experts H1 [T, N] and background miss b [T, nodes]."""
    t = tokens.shape[0]
    h = np.zeros((t, n + 1), np.float32)
    np.put_along_axis(h, np.where(tokens >= 0, tokens, n), 1.0, axis=1)
    h = h[:, :n]
    h1 = h * single[None, :]
    logmiss = np.log(np.clip(1.0 - frac, 1e-12, 1.0)) * (~single)[:, None]  # [N, nodes]
    return h1, np.exp(h @ logmiss)


def improve_nodes(
    a: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    tokens: np.ndarray,
    weight: float,
    max_steps: int = 2000,
    seconds: float = float("inf"),
) -> np.ndarray:
    """Lower J by swapping single-replica experts between nodes.

    Args:
        a: [N, nodes] replicas of each expert on each node (the start).
        w: [N] expert loads.
        r: [N] replica counts (a.sum(1)).
        tokens: [T, k] token expert sets (-1 padded).
        weight: objective weight of one remote node per token.
        max_steps: most swaps applied.
        seconds: stop after this much wall time.
    Returns:
        [N, nodes] the improved replicas per node (same row and column sums).
    """
    n, nodes = a.shape
    if nodes == 1:
        return a
    a = a.copy()
    single = r == 1
    frac = a / r[:, None]
    h1, b = _state(tokens, n, single, frac)
    per = w / r
    scale = weight * (nodes - 1) / nodes / tokens.shape[0]
    mean = w.sum() / nodes
    idx = np.flatnonzero(single)
    node_of = np.argmax(a, axis=1)
    deadline = time.perf_counter() + seconds
    for _ in range(max_steps):
        if time.perf_counter() > deadline:
            break
        load = a.T @ per  # [nodes]
        cnt = h1 @ (a * single[:, None])  # [T, nodes] single-replica experts of each token per node
        leave = h1.T @ ((cnt == 1) * b)  # [N, nodes] sends saved when e leaves node n
        join = h1.T @ ((cnt == 0) * b)  # [N, nodes] sends added when e joins node n
        ne = node_of[idx]
        mv = join[idx] - leave[idx, ne][:, None]  # [n1, nodes] sends change of moving e to each node
        # swap e (node A) <-> f (node B): both moves, corrected below for tokens holding both
        ds = mv[:, ne].copy()  # ds[i, j] = move e_i to node(f_j)
        ds += mv[:, ne].T  # + move f_j to node(e_i)
        same = ne[:, None] == ne[None, :]
        ue, uf = per[idx][:, None], per[idx][None, :]
        la = load[ne][:, None] - ue + uf
        lb = load[ne][None, :] - uf + ue
        new_max = np.maximum(np.maximum(la, lb), _max_excluding(load, ne))
        dj = (new_max - load.max()) / mean + scale * ds
        dj[same] = np.inf
        before = _sends(h1, a, single, b)
        for _try in range(20):  # the estimate ignores tokens holding both experts: check it exactly
            i, j = np.unravel_index(np.argmin(dj), dj.shape)
            if not dj[i, j] < -1e-9:
                return a
            e, f = idx[i], idx[j]
            na, nb = node_of[e], node_of[f]
            trial = a.copy()
            trial[e, na], trial[e, nb], trial[f, nb], trial[f, na] = 0, 1, 0, 1
            exact = ((trial.T @ per).max() - load.max()) / mean + scale * tokens.shape[0] * (
                _sends(h1, trial, single, b) - before
            )
            if exact < -1e-9:
                a = trial
                node_of[e], node_of[f] = nb, na
                break
            dj[i, j] = np.inf
        else:
            return a
    return a


def _max_excluding(load: np.ndarray, ne: np.ndarray) -> np.ndarray:
    """[n1, n1] the largest load over nodes other than node(e_i) and node(f_j)."""
    nodes = load.size
    out = np.empty((ne.size, ne.size))
    m = np.full((nodes, nodes), -np.inf)
    for p in range(nodes):
        for q in range(nodes):
            rest = np.delete(load, list({p, q}))
            m[p, q] = rest.max() if rest.size else 0.0
    out[:] = m[ne[:, None], ne[None, :]]
    return out


def _sends(h1: np.ndarray, a: np.ndarray, single: np.ndarray, b: np.ndarray) -> float:
    """Mean nodes hit per token (before the remote factor) for replicas per node ``a``."""
    cnt = h1 @ (a * single[:, None])
    return float((1.0 - (cnt == 0) * b).sum(axis=1).mean())
