"""Exact one-node placement with at most two slots per GPU: an enumeration with a proof, no MIP.

On one node the predicted layer time (`placement.layertime`) is ``fixed + max_g GEMM_g + max_g NVLink_g``
(no NIC). With replica counts ``r`` [N] fixed, every replica of expert e carries ``x_e = pairs_e / r_e``
(token, expert) pairs, its GEMM time ``f(x_e)`` (compute- or weight-read-bound) and NVLink time ``g(x_e)``; both
are non-decreasing in x. With two slots per GPU the GPUs are pairs of replicas, and:

- **Relaxation** (duplicates allowed): pairing the replicas sorted by x largest with smallest ("fold") minimises
  the largest pair sum of any non-decreasing function of x (exchange argument: if the largest item is paired with
  b and the smallest with c, swapping partners to (largest, smallest), (b, c) raises no pair above the old maximum).
  Because f and g sort the replicas the same way, the fold minimises ``max f-sum`` and ``max g-sum`` at once, so its
  ``max f-sum + max g-sum`` is a lower bound of the layer time over every valid pairing with those counts, and it
  is the optimum when the fold puts no expert twice on a GPU.
- **Counts**: every vector of counts ``1 <= r_e <= G`` summing to S (compositions of S into N parts: 6,435 for
  Mixtral's 8 experts in 16 slots) is bounded by its fold, all at once with numpy.
- **Proof**: the incumbent is the best fold without duplicates; every count vector whose bound is below it and
  whose fold doubles an expert gets an exact branch and bound over pairings (`_best_pairing`). Whatever is left
  has a bound at least the incumbent, so the result is optimal (gap 0) by enumeration, not by a solver's word.
  One slot per GPU is the same with single items.

Deterministic: no clock decides anything; ties go to the first count vector in lexicographic order and to the
stable sort. Units: the objective in seconds (physical objective) or busiest-GPU load over the mean (weight
objective, `ilp_stages._units`).
"""

from __future__ import annotations

import math
import time
from itertools import combinations

import numpy as np

from moesim.placement.ilp_solver import IlpOptions, StageReport

#: Most count vectors enumerated (Mixtral-8x7B's 8 experts in 16 slots: 6,435), and most branch-and-bound nodes
#: over all pairing searches of a layer; beyond either the caller falls back to the MIP. Counts, not seconds.
MAX_COUNT_VECTORS = 100_000
MAX_PAIRING_NODES = 200_000


class _GaveUp(Exception):
    pass


def compositions(total: int, parts: int, cap: int) -> np.ndarray:
    """All vectors of ``parts`` integers in [1, cap] summing to ``total``, lexicographic order [C, parts]."""
    rows = []
    for bars in combinations(range(1, total), parts - 1):
        r = np.diff((0, *bars, total))
        if r.max() <= cap:
            rows.append(r)
    return np.array(rows, np.int64).reshape(-1, parts)


def _best_pairing(
    f: np.ndarray, g: np.ndarray, r: np.ndarray, best: float, budget: list[int]
) -> tuple[float, list[tuple[int, int]]] | None:
    """Exact branch and bound: the pairing of ``r`` [N] replicas (expert e's replica costs ``f[e]``, ``g[e]``)
    into pairs of two different experts minimising max f-sum + max g-sum, if below ``best``; else None. Raises
    `_GaveUp` once ``budget[0]`` nodes are spent (decremented in place)."""
    order = sorted(range(r.size), key=lambda e: (-f[e], -g[e], e))
    found: list[tuple[float, list[tuple[int, int]]]] = []

    def dfs(cnt: list[int], cf: float, cg: float, pairs: list[tuple[int, int]]) -> None:
        nonlocal best
        budget[0] -= 1
        if budget[0] < 0:
            raise _GaveUp
        left = sum(cnt)
        if left == 0:
            if cf + cg < best:
                best = cf + cg
                found.append((best, list(pairs)))
            return
        if 2 * max(cnt) > left:  # an expert with more replicas than partners left: no valid pairing
            return
        e = next(i for i in order if cnt[i])
        cnt[e] -= 1
        for p in reversed(order):  # lightest partner first: the fold's choice
            if p == e or not cnt[p]:
                continue
            nf, ng = max(cf, f[e] + f[p]), max(cg, g[e] + g[p])
            if nf + ng >= best:
                continue
            cnt[p] -= 1
            pairs.append((e, p))
            dfs(cnt, nf, ng, pairs)
            pairs.pop()
            cnt[p] += 1
        cnt[e] += 1

    dfs([int(c) for c in r], 0.0, 0.0, [])
    return found[-1] if found else None


def exact_one_node(
    w: np.ndarray, num_slots: int, num_gpus: int, opts: IlpOptions
) -> tuple[np.ndarray, StageReport] | None:
    """Proven-optimal slots per GPU [G, S/G] for loads ``w`` [N] on one node with one or two slots per GPU, and an
    "optimal" report (gap 0); None when the shape does not fit (more slots per GPU, or more count vectors than
    ``opts.max_candidates``: a count, so whether it runs never depends on the machine)."""
    from moesim.placement.ilp_stages import _units

    t0 = time.perf_counter()
    n = w.size
    per_gpu = num_slots // num_gpus
    cap = min(opts.max_candidates, MAX_COUNT_VECTORS)
    if per_gpu not in (1, 2) or num_slots < n or math.comb(num_slots - 1, n - 1) > cap:
        return None
    counts = compositions(num_slots, n, num_gpus)
    if counts.size == 0:
        return None
    fr, gr = _units(w[None, :], counts, opts, num_gpus)  # [C, N] per replica
    gr = np.zeros_like(fr) if gr is None else gr
    ids = np.repeat(np.tile(np.arange(n), counts.shape[0]), counts.reshape(-1)).reshape(-1, num_slots)
    rows = np.arange(counts.shape[0])[:, None]
    key = np.lexsort((ids, -gr[rows, ids], -fr[rows, ids]), axis=1)  # heaviest first, ties by expert
    ids = np.take_along_axis(ids, key, axis=1)
    fs, gs = fr[rows, ids], gr[rows, ids]
    if per_gpu == 2:
        half = num_slots // 2
        fs, gs = fs[:, :half] + fs[:, ::-1][:, :half], gs[:, :half] + gs[:, ::-1][:, :half]
        dup = (ids[:, :half] == ids[:, ::-1][:, :half]).any(axis=1)
    else:
        dup = np.zeros(counts.shape[0], bool)
    bound = fs.max(axis=1) + gs.max(axis=1)  # [C] the fold's objective: the optimum when it has no duplicate
    clean = np.flatnonzero(~dup)
    best, best_slots = math.inf, None
    if clean.size:
        c = int(clean[np.argmin(bound[clean])])
        best = float(bound[c])
        best_slots = np.stack([ids[c, :num_gpus], ids[c, ::-1][:num_gpus]], 1) if per_gpu == 2 else ids[c][:, None]
    searched, budget = 0, [MAX_PAIRING_NODES]
    for c in np.flatnonzero(dup)[np.argsort(bound[dup], kind="stable")]:
        if bound[c] >= best:
            break
        searched += 1
        try:
            out = _best_pairing(fr[c], gr[c], counts[c], best, budget)
        except _GaveUp:
            return None
        if out is not None:
            best, best_slots = out[0], np.array(out[1], np.int64)
    if best_slots is None:
        return None
    rep = StageReport("optimal", best, best, 0.0, time.perf_counter() - t0, nodes=searched)
    return best_slots.reshape(num_gpus, per_gpu), rep
