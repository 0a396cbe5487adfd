"""The ILP stages of one layer: the one-node exact model, the multi-node node/GPU stages, the pattern model.

Loads ``w`` [N] per expert; placements ``p2l`` [S] map slots to experts (S/G consecutive slots per GPU).
A stage's ``time_limit`` (wall seconds) counts from the stage's start: building the PuLP model comes off what
HiGHS gets, and a stage whose build used it all returns its warm start, reported as "time limit"
(`ilp_solver._solve`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pulp

from moesim.placement.baselines import rebalance_experts
from moesim.placement.ilp_solver import IlpOptions, StageReport, _solve, _val
from moesim.placement.layertime import layer_time, pairs_per_expert, replica_gemm_s
from moesim.placement.metrics import layer_sends


def _units(w: np.ndarray, r: np.ndarray, opts: IlpOptions, num_gpus: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per replica of each expert with ``r`` replicas ([N], or any shape broadcasting with ``w`` [N, 1]): (GEMM
    term, NVLink term). Physical objective: seconds (`placement.layertime`); weight objective: load over the mean
    GPU load, and no NVLink term."""
    if opts.cost is None:
        return w / r / (w.sum() / num_gpus), None
    pairs = pairs_per_expert(w, opts.cost, num_gpus) / r
    return replica_gemm_s(pairs, opts.cost), pairs * opts.cost.nvlink_s_per_token


def _nic_scale(opts: IlpOptions, num_gpus: int, gpn: int, sample: int) -> float:
    """Seconds of a node's NIC per unit of ``sum_t h[t,k]`` over ``sample`` tokens (physical objective)."""
    assert opts.cost is not None
    nodes = num_gpus // gpn
    inbound = opts.cost.tokens_per_gpu * num_gpus * (nodes - 1) / nodes / sample
    return inbound * opts.cost.nic_s_per_token / gpn


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
    if opts.cost is not None:
        obj = layer_time(p2l, w, num_gpus, num_gpus // nodes, tokens, opts.cost)
    else:
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
    end = time.monotonic() + time_limit  # building the model comes off the solver's seconds
    n = w.size
    per_node = int(r.sum()) // nodes
    gemm, nvl = _units(w, r, opts, nodes * gpn)
    prob = pulp.LpProblem("nodes", pulp.LpMinimize)
    a = {
        (e, k): pulp.LpVariable(f"a_{e}_{k}", 0, min(int(r[e]), gpn), cat="Integer")
        for e in range(n)
        for k in range(nodes)
    }
    mn = pulp.LpVariable("Mn", 0)  # weight objective: busiest node / mean; physical: the mean GPU GEMM s of a node
    ta = pulp.LpVariable("Ta", 0)  # physical: dispatch + combine s (busiest node NIC, mean GPU NVLink of a node)
    obj = mn + ta
    for e in range(n):
        prob += pulp.lpSum(a[e, k] for k in range(nodes)) == int(r[e])
    for k in range(nodes):
        prob += pulp.lpSum(a[e, k] for e in range(n)) == per_node
        prob += pulp.lpSum(float(gemm[e]) / gpn * a[e, k] for e in range(n)) <= mn
        if nvl is not None:
            prob += pulp.lpSum(float(nvl[e]) / gpn * a[e, k] for e in range(n)) <= ta
    physical = opts.cost is not None and opts.cost.nic_s_per_token > 0
    if opts.traffic_weight or physical:
        scale = (
            _nic_scale(opts, nodes * gpn, gpn, len(tokens))
            if opts.cost is not None
            else opts.traffic_weight * (nodes - 1) / nodes / len(tokens)
        )
        nic = [pulp.LpAffineExpression() for _ in range(nodes)]
        nic0 = np.zeros(nodes)
        for t, row in enumerate(tokens):
            experts = sorted({int(e) for e in row if e >= 0})
            for k in range(nodes):
                h = pulp.LpVariable(f"h_{t}_{k}", 0, 1)
                if physical:
                    nic[k] += scale * h
                else:
                    obj += scale * h
                for e in experts:
                    prob += h >= a[e, k] * (1.0 / float(r[e]))
                h.varValue = float(max(start[e, k] / r[e] for e in experts)) if experts else 0.0
                nic0[k] += scale * h.varValue
        if physical:
            for k in range(nodes):
                prob += nic[k] <= ta
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
    mn.varValue = float(max((start[:, k] * gemm).sum() for k in range(nodes))) / gpn
    ta0 = 0.0 if nvl is None else float(max((start[:, k] * nvl).sum() for k in range(nodes))) / gpn
    ta.varValue = max(ta0, float(nic0.max())) if physical else ta0
    rep = _solve(prob, opts, end - time.monotonic())
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
    nic_s: float = 0.0,
) -> tuple[np.ndarray, StageReport]:
    """Slots of each GPU [G, per_gpu] given replicas per node a [N, nodes]; ``nic_s``: the busiest node's NIC
    seconds, fixed by ``a`` (physical objective: dispatch + combine >= it)."""
    end = time.monotonic() + time_limit  # building the model comes off the solver's seconds
    n, nodes = a.shape
    g_all = nodes * gpn
    gemm, nvl = _units(w, r, opts, g_all)
    prob = pulp.LpProblem("gpus", pulp.LpMinimize)
    m = pulp.LpVariable("M", 0)
    ta = pulp.LpVariable("Ta", float(nic_s) if nvl is not None else 0.0)
    x: dict[tuple[int, int], pulp.LpVariable] = {}
    obj = m + ta
    for k in range(nodes):
        gpus = range(k * gpn, (k + 1) * gpn)
        items = np.flatnonzero(a[:, k])
        for e in items:
            for g in gpus:
                x[e, g] = pulp.LpVariable(f"x_{e}_{g}", cat="Binary")
            prob += pulp.lpSum(x[e, g] for g in gpus) == int(a[e, k])
        for g in gpus:
            prob += pulp.lpSum(x[e, g] for e in items) == per_gpu
            prob += pulp.lpSum(float(gemm[e]) * x[e, g] for e in items) <= m
            if nvl is not None:
                prob += pulp.lpSum(float(nvl[e]) * x[e, g] for e in items) <= ta
    if current is not None and opts.migration_weight:
        obj += opts.migration_weight * pulp.lpSum(v for (e, g), v in x.items() if not current[e, g])
    prob += obj
    if start is not None:
        for (e, g), v in x.items():
            v.varValue = float(start[e, g])
        m.varValue = float(max((start[:, g] * gemm).sum() for g in range(g_all)))
        ta0 = 0.0 if nvl is None else float(max((start[:, g] * nvl).sum() for g in range(g_all)))
        ta.varValue = max(ta0, float(nic_s)) if nvl is not None else 0.0
    rep = _solve(prob, opts, end - time.monotonic())
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
    end = time.monotonic() + time_limit  # building the model comes off the solver's seconds
    n = w.size
    per_gpu = num_slots // num_gpus
    cs = range(1, min(num_gpus, num_slots - n + 1) + 1)
    gu, nu = _units(w[:, None], np.arange(1, len(cs) + 1)[None, :], opts, num_gpus)  # [N, C] per replica

    def gl(e: int, c: int) -> float:
        return float(gu[e, c - 1])

    prob = pulp.LpProblem("exact", pulp.LpMinimize)
    m = pulp.LpVariable("M", 0)
    ta = pulp.LpVariable("Ta", 0)
    z = {(e, c): pulp.LpVariable(f"z_{e}_{c}", cat="Binary") for e in range(n) for c in cs}
    x = {
        (e, g, c): pulp.LpVariable(f"x_{e}_{g}_{c}", cat="Binary")
        for e in range(n)
        for g in range(num_gpus)
        for c in cs
    }
    obj = m + ta
    prob += pulp.lpSum(c * z[e, c] for e in range(n) for c in cs) == num_slots
    for e in range(n):
        prob += pulp.lpSum(z[e, c] for c in cs) == 1
        prob += m >= pulp.lpSum(gl(e, c) * z[e, c] for c in cs)  # some GPU holds a whole replica of e
        for c in cs:
            prob += pulp.lpSum(x[e, g, c] for g in range(num_gpus)) == c * z[e, c]
        for g in range(num_gpus):
            prob += pulp.lpSum(x[e, g, c] for c in cs) <= 1
    loads = [pulp.lpSum(gl(e, c) * x[e, g, c] for e in range(n) for c in cs) for g in range(num_gpus)]
    for g in range(num_gpus):
        prob += pulp.lpSum(x[e, g, c] for e in range(n) for c in cs) == per_gpu
        prob += loads[g] <= m
        if nu is not None:
            prob += pulp.lpSum(float(nu[e, c - 1]) * x[e, g, c] for e in range(n) for c in cs) <= ta
    if current is not None and opts.migration_weight:
        obj += opts.migration_weight * pulp.lpSum(v for (e, g, _), v in x.items() if not current[e, g])
    else:
        for g in range(num_gpus - 1):
            prob += loads[g] >= loads[g + 1]
    prob += obj
    cnt = start.sum(axis=1)
    per_rep = np.array([gl(e, int(cnt[e])) for e in range(n)])
    order = np.argsort(-(start * per_rep[:, None]).sum(axis=0), kind="stable")  # start sorted like the symmetry
    for (e, g, c), v in x.items():
        v.varValue = float(start[e, order[g]] and cnt[e] == c)
    for (e, c), v in z.items():
        v.varValue = float(cnt[e] == c)
    m.varValue = float(max((start[:, g] * per_rep).sum() for g in range(num_gpus)))
    nv = np.zeros(n) if nu is None else np.array([float(nu[e, int(cnt[e]) - 1]) for e in range(n)])
    ta.varValue = float(max((start[:, g] * nv).sum() for g in range(num_gpus)))
    rep = _solve(prob, opts, end - time.monotonic())
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
    stage runs never depends on the machine's speed, unless the wall clock ``time_limit`` runs out during the
    enumeration: then also None, and the caller keeps EPLB's plan, reported as cut by the clock.
    """
    end = time.monotonic() + time_limit  # building the model comes off the solver's seconds
    from itertools import combinations

    n = w.size
    per_gpu = num_slots // num_gpus
    cs = range(1, min(num_gpus, num_slots - n + 1) + 1)
    cnt = start.sum(axis=1)
    gu, nu = _units(w[:, None], np.arange(1, len(cs) + 1)[None, :], opts, num_gpus)  # [N, C] per replica
    nu = np.zeros_like(gu) if nu is None else nu
    g0 = np.array([gu[e, int(cnt[e]) - 1] for e in range(n)])
    n0 = np.array([nu[e, int(cnt[e]) - 1] for e in range(n)])
    m0 = float(max((start[:, g] * g0).sum() for g in range(num_gpus)))
    t0 = float(max((start[:, g] * n0).sum() for g in range(num_gpus)))
    ub = (m0 + t0) * (1 + 1e-9)  # no pattern of GEMM time beyond the start's objective can improve on it
    items = [(e, c, float(gu[e, c - 1]), float(nu[e, c - 1])) for e in range(n) for c in cs]
    pats = []
    if math.comb(len(items), per_gpu) > opts.max_candidates:
        return None
    for seen, combo in enumerate(combinations(range(len(items)), per_gpu)):
        if seen % 4096 == 4095 and time.monotonic() >= end:  # the clock ran out while enumerating: the caller's cut
            return None
        es = {items[i][0] for i in combo}
        load = sum(items[i][2] for i in combo)
        link = sum(items[i][3] for i in combo)
        if len(es) == per_gpu and load + link <= ub:  # a used pattern p has M + Ta >= its GEMM + NVLink terms
            pats.append((combo, load, link))
            if len(pats) > max_patterns:
                return None
    prob = pulp.LpProblem("patterns", pulp.LpMinimize)
    m = pulp.LpVariable("M", 0)
    ta = pulp.LpVariable("Ta", 0)
    y = [pulp.LpVariable(f"y_{p}", 0, num_gpus, cat="Integer") for p in range(len(pats))]
    u = [pulp.LpVariable(f"u_{p}", cat="Binary") for p in range(len(pats))]
    z = {(e, c): pulp.LpVariable(f"z_{e}_{c}", cat="Binary") for e in range(n) for c in cs}
    prob += m + ta
    prob += pulp.lpSum(y) == num_gpus
    prob += pulp.lpSum(c * z[e, c] for e in range(n) for c in cs) == num_slots
    uses: dict[tuple[int, int], list[int]] = {(e, c): [] for e in range(n) for c in cs}
    for p, (combo, load, link) in enumerate(pats):
        prob += y[p] <= num_gpus * u[p]
        prob += m >= load * u[p]
        if link:
            prob += ta >= link * u[p]
        for i in combo:
            uses[items[i][0], items[i][1]].append(p)
    for e in range(n):
        prob += pulp.lpSum(z[e, c] for c in cs) == 1
        prob += m >= pulp.lpSum(float(gu[e, c - 1]) * z[e, c] for c in cs)
        for c in cs:
            prob += pulp.lpSum(y[p] for p in uses[e, c]) == c * z[e, c]
    index = {tuple(sorted(combo)): p for p, (combo, _, _) in enumerate(pats)}
    lookup = {(e, c): i for i, (e, c, _, _) in enumerate(items)}
    for v in (*y, *u):
        v.varValue = 0.0
    for g in range(num_gpus):
        p = index.get(tuple(sorted(lookup[e, int(cnt[e])] for e in np.flatnonzero(start[:, g]))))
        if p is not None:
            y[p].varValue += 1
            u[p].varValue = 1.0
    for (e, c), v in z.items():
        v.varValue = float(cnt[e] == c)
    m.varValue, ta.varValue = m0, t0
    rep = _solve(prob, opts, end - time.monotonic())
    slots = []
    for p, (combo, _, _) in enumerate(pats):
        slots += [[items[i][0] for i in combo]] * round(_val(y[p]))
    return np.array(slots, np.int64), rep


def _incidence(p2l: np.ndarray, n: int, groups: int) -> np.ndarray:
    """[N, groups] replicas of each expert in each block of consecutive slots."""
    out = np.zeros((n, groups), np.int64)
    np.add.at(out, (p2l, np.arange(p2l.size) // (p2l.size // groups)), 1)
    return out


def _no_duplicates(p2l: np.ndarray, num_gpus: int) -> bool:
    return all(len(set(row)) == len(row) for row in p2l.reshape(num_gpus, -1).tolist())
