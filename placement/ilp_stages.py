"""The ILP stages of one layer: the one-node exact model, the multi-node node/GPU stages, the pattern model.

Loads ``w`` [N] per expert; placements ``p2l`` [S] map slots to experts (S/G consecutive slots per GPU).
"""

from __future__ import annotations

import math

import numpy as np
import pulp

from moesim.placement.baselines import rebalance_experts
from moesim.placement.ilp_solver import IlpOptions, StageReport, _solve, _val
from moesim.placement.metrics import layer_sends


def _greedy_global(w: np.ndarray, num_slots: int, num_gpus: int) -> np.ndarray:
    """EPLB's global policy for one layer [S]."""
    return rebalance_experts(w[None, :], num_slots, 1, 1, num_gpus)[0][0]


def _objective(
    p2l: np.ndarray,
    w: np.ndarray,
    num_gpus: int,
    nodes: int,
    tokens: np.ndarray,
    opts: IlpOptions,
    current: np.ndarray | None,
) -> tuple[float, float]:
    """(objective, busiest-GPU load) of a layer plan [S] as the ILP scores it."""
    n = w.size
    cnt = np.bincount(p2l, minlength=n)
    loads = (w / cnt)[p2l].reshape(num_gpus, -1).sum(axis=1)
    obj = loads.max() / loads.mean()
    if nodes > 1 and opts.traffic_weight:
        obj += opts.traffic_weight * layer_sends(p2l, n, nodes, tokens)
    if current is not None and opts.migration_weight:
        per = p2l.size // num_gpus
        moved = sum(
            len(set(p2l[g * per : (g + 1) * per]) - set(current[g * per : (g + 1) * per])) for g in range(num_gpus)
        )
        obj += opts.migration_weight * moved
    return float(obj), float(loads.max())


def _node_stage(
    w: np.ndarray,
    r: np.ndarray,
    nodes: int,
    gpn: int,
    tokens: np.ndarray,
    start: np.ndarray,
    opts: IlpOptions,
    time_limit: float,
    current: np.ndarray | None,
) -> tuple[np.ndarray, StageReport]:
    """Replicas per node a [N, nodes] (start: a warm start of the same shape)."""
    n = w.size
    per_node = int(r.sum()) // nodes
    mean = w.sum() / nodes
    prob = pulp.LpProblem("nodes", pulp.LpMinimize)
    a = {
        (e, k): pulp.LpVariable(f"a_{e}_{k}", 0, min(int(r[e]), gpn), cat="Integer")
        for e in range(n)
        for k in range(nodes)
    }
    mn = pulp.LpVariable("Mn", 0)
    obj = mn / mean
    for e in range(n):
        prob += pulp.lpSum(a[e, k] for k in range(nodes)) == int(r[e])
    for k in range(nodes):
        prob += pulp.lpSum(a[e, k] for e in range(n)) == per_node
        prob += pulp.lpSum(float(w[e] / r[e]) * a[e, k] for e in range(n)) <= mn
    if opts.traffic_weight:
        scale = opts.traffic_weight * (nodes - 1) / nodes / len(tokens)
        for t, row in enumerate(tokens):
            experts = sorted({int(e) for e in row if e >= 0})
            for k in range(nodes):
                h = pulp.LpVariable(f"h_{t}_{k}", 0, 1)
                obj += scale * h
                for e in experts:
                    prob += h >= a[e, k] * (1.0 / float(r[e]))
                h.varValue = float(max(start[e, k] / r[e] for e in experts)) if experts else 0.0
    if current is not None and opts.migration_weight:
        for e in range(n):
            for k in range(nodes):
                if current[e, k] < min(int(r[e]), gpn):
                    m = pulp.LpVariable(f"m_{e}_{k}", 0)
                    prob += m >= a[e, k] - float(current[e, k])
                    obj += opts.migration_weight * m
                    m.varValue = float(max(start[e, k] - current[e, k], 0))
    prob += obj
    for (e, k), v in a.items():
        v.varValue = float(start[e, k])
    mn.varValue = float(max((start[:, k] * w / r).sum() for k in range(nodes)))
    rep = _solve(prob, opts, time_limit)
    out = np.array([[round(_val(a[e, k])) for k in range(nodes)] for e in range(n)], np.int64)
    return out, rep


def _gpu_stage(
    w: np.ndarray,
    r: np.ndarray,
    a: np.ndarray,
    gpn: int,
    per_gpu: int,
    start: np.ndarray | None,
    opts: IlpOptions,
    time_limit: float,
    current: np.ndarray | None,
) -> tuple[np.ndarray, StageReport]:
    """Slots of each GPU [G, per_gpu] given replicas per node a [N, nodes]."""
    n, nodes = a.shape
    g_all = nodes * gpn
    mean = w.sum() / g_all
    prob = pulp.LpProblem("gpus", pulp.LpMinimize)
    m = pulp.LpVariable("M", 0)
    x: dict[tuple[int, int], pulp.LpVariable] = {}
    obj = m / mean
    for k in range(nodes):
        gpus = range(k * gpn, (k + 1) * gpn)
        items = np.flatnonzero(a[:, k])
        for e in items:
            for g in gpus:
                x[e, g] = pulp.LpVariable(f"x_{e}_{g}", cat="Binary")
            prob += pulp.lpSum(x[e, g] for g in gpus) == int(a[e, k])
        for g in gpus:
            prob += pulp.lpSum(x[e, g] for e in items) == per_gpu
            prob += pulp.lpSum(float(w[e] / r[e]) * x[e, g] for e in items) <= m
    if current is not None and opts.migration_weight:
        obj += opts.migration_weight * pulp.lpSum(v for (e, g), v in x.items() if not current[e, g])
    prob += obj
    if start is not None:
        for (e, g), v in x.items():
            v.varValue = float(start[e, g])
        m.varValue = float(max((start[:, g] * w / r).sum() for g in range(g_all)))
    rep = _solve(prob, opts, time_limit)
    slots = [[e for e in range(n) if (e, g) in x and _val(x[e, g]) > 0.5] for g in range(g_all)]
    return np.array(slots, np.int64), rep


def _exact_stage(
    w: np.ndarray,
    num_slots: int,
    num_gpus: int,
    start: np.ndarray,
    opts: IlpOptions,
    time_limit: float,
    current: np.ndarray | None,
) -> tuple[np.ndarray, StageReport]:
    """Replica counts and assignment together on one node: slots per GPU [G, S/G].

    Binary ``x[e,g,c]``: GPU g holds a replica of e and e has c replicas; ``z[e,c]``: e has c replicas. Then
    sum_g x[e,g,c] = c z[e,c] and GPU g's load sum_{e,c} w_e/c x[e,g,c] is linear without big-M terms. GPUs are
    interchangeable, so their loads are ordered (symmetry breaking).
    """
    n = w.size
    per_gpu = num_slots // num_gpus
    cs = range(1, min(num_gpus, num_slots - n + 1) + 1)
    mean = w.sum() / num_gpus
    prob = pulp.LpProblem("exact", pulp.LpMinimize)
    m = pulp.LpVariable("M", 0)
    z = {(e, c): pulp.LpVariable(f"z_{e}_{c}", cat="Binary") for e in range(n) for c in cs}
    x = {
        (e, g, c): pulp.LpVariable(f"x_{e}_{g}_{c}", cat="Binary")
        for e in range(n)
        for g in range(num_gpus)
        for c in cs
    }
    obj = m / mean
    prob += pulp.lpSum(c * z[e, c] for e in range(n) for c in cs) == num_slots
    for e in range(n):
        prob += pulp.lpSum(z[e, c] for c in cs) == 1
        prob += m >= pulp.lpSum(float(w[e] / c) * z[e, c] for c in cs)  # some GPU holds a whole replica of e
        for c in cs:
            prob += pulp.lpSum(x[e, g, c] for g in range(num_gpus)) == c * z[e, c]
        for g in range(num_gpus):
            prob += pulp.lpSum(x[e, g, c] for c in cs) <= 1
    loads = [pulp.lpSum(float(w[e] / c) * x[e, g, c] for e in range(n) for c in cs) for g in range(num_gpus)]
    for g in range(num_gpus):
        prob += pulp.lpSum(x[e, g, c] for e in range(n) for c in cs) == per_gpu
        prob += loads[g] <= m
    if current is not None and opts.migration_weight:
        obj += opts.migration_weight * pulp.lpSum(v for (e, g, _), v in x.items() if not current[e, g])
    else:
        for g in range(num_gpus - 1):
            prob += loads[g] >= loads[g + 1]
    prob += obj
    cnt = start.sum(axis=1)
    order = np.argsort(-(start * (w / cnt)[:, None]).sum(axis=0), kind="stable")  # start sorted like the symmetry
    for (e, g, c), v in x.items():
        v.varValue = float(start[e, order[g]] and cnt[e] == c)
    for (e, c), v in z.items():
        v.varValue = float(cnt[e] == c)
    m.varValue = float(max((start[:, g] * w / cnt).sum() for g in range(num_gpus)))
    rep = _solve(prob, opts, time_limit)
    slots = [[e for e in range(n) if any(_val(x[e, g, c]) > 0.5 for c in cs)] for g in range(num_gpus)]
    return np.array(slots, np.int64), rep


def _pattern_stage(
    w: np.ndarray,
    num_slots: int,
    num_gpus: int,
    start: np.ndarray,
    opts: IlpOptions,
    time_limit: float,
    max_patterns: int = 20000,
) -> tuple[np.ndarray, StageReport] | None:
    """The exact one-node model over GPU patterns (no symmetry between GPUs): slots per GPU [G, S/G].

    A pattern is a set of S/G (expert, replica count c) items with distinct experts whose load sum w_e/c is at
    most the warm start's busiest GPU; integer ``y[p]`` GPUs use pattern p, binary ``u[p]`` marks it used
    (M >= load_p u_p), binary ``z[e,c]`` fixes e's replica count and sum_p y_p [(e,c) in p] = c z[e,c].
    Returns None when there are more than ``max_patterns`` patterns, or more than ``opts.max_candidates``
    candidates to enumerate (the candidates grow as C(experts x replica counts, slots per GPU), and when few pass
    the load bound the pattern cap alone never stops the enumeration). Both cut-offs are counts, so whether the
    stage runs never depends on the machine's speed.
    """
    from itertools import combinations

    n = w.size
    per_gpu = num_slots // num_gpus
    cs = range(1, min(num_gpus, num_slots - n + 1) + 1)
    cnt = start.sum(axis=1)
    ub = float(max((start[:, g] * w / cnt).sum() for g in range(num_gpus))) * (1 + 1e-9)
    items = [(e, c, float(w[e] / c)) for e in range(n) for c in cs]
    pats = []
    if math.comb(len(items), per_gpu) > opts.max_candidates:
        return None
    for combo in combinations(range(len(items)), per_gpu):
        es = {items[i][0] for i in combo}
        load = sum(items[i][2] for i in combo)
        if len(es) == per_gpu and load <= ub:
            pats.append((combo, load))
            if len(pats) > max_patterns:
                return None
    mean = w.sum() / num_gpus
    prob = pulp.LpProblem("patterns", pulp.LpMinimize)
    m = pulp.LpVariable("M", 0)
    y = [pulp.LpVariable(f"y_{p}", 0, num_gpus, cat="Integer") for p in range(len(pats))]
    u = [pulp.LpVariable(f"u_{p}", cat="Binary") for p in range(len(pats))]
    z = {(e, c): pulp.LpVariable(f"z_{e}_{c}", cat="Binary") for e in range(n) for c in cs}
    prob += m / mean
    prob += pulp.lpSum(y) == num_gpus
    prob += pulp.lpSum(c * z[e, c] for e in range(n) for c in cs) == num_slots
    uses: dict[tuple[int, int], list[int]] = {(e, c): [] for e in range(n) for c in cs}
    for p, (combo, load) in enumerate(pats):
        prob += y[p] <= num_gpus * u[p]
        prob += m >= load * u[p]
        for i in combo:
            uses[items[i][0], items[i][1]].append(p)
    for e in range(n):
        prob += pulp.lpSum(z[e, c] for c in cs) == 1
        prob += m >= pulp.lpSum(float(w[e] / c) * z[e, c] for c in cs)
        for c in cs:
            prob += pulp.lpSum(y[p] for p in uses[e, c]) == c * z[e, c]
    index = {tuple(sorted(combo)): p for p, (combo, _) in enumerate(pats)}
    lookup = {(e, c): i for i, (e, c, _) in enumerate(items)}
    for v in (*y, *u):
        v.varValue = 0.0
    for g in range(num_gpus):
        p = index.get(tuple(sorted(lookup[e, int(cnt[e])] for e in np.flatnonzero(start[:, g]))))
        if p is not None:
            y[p].varValue += 1
            u[p].varValue = 1.0
    for (e, c), v in z.items():
        v.varValue = float(cnt[e] == c)
    m.varValue = ub
    rep = _solve(prob, opts, time_limit)
    slots = []
    for p, (combo, _) in enumerate(pats):
        slots += [[items[i][0] for i in combo]] * round(_val(y[p]))
    return np.array(slots, np.int64), rep


def _incidence(p2l: np.ndarray, n: int, groups: int) -> np.ndarray:
    """[N, groups] replicas of each expert in each block of consecutive slots."""
    out = np.zeros((n, groups), np.int64)
    np.add.at(out, (p2l, np.arange(p2l.size) // (p2l.size // groups)), 1)
    return out


def _no_duplicates(p2l: np.ndarray, num_gpus: int) -> bool:
    return all(len(set(row)) == len(row) for row in p2l.reshape(num_gpus, -1).tolist())
