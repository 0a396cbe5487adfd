"""The placement ILP (PuLP; HiGHS through highspy, CBC as the fallback).

Per MoE layer, with loads ``w`` [N], slots S on G GPUs in ``nodes`` nodes:

1. replica counts ``r`` [N]: jointly with the assignment when the layer is
   small and on one node (the exact model, below); otherwise D'Hondt counts,
   which minimise the largest load per replica (a lower bound on the busiest
   GPU);
2. node stage (nodes > 1): integer ``a[e,n]`` replicas of e on node n,
   sum_n a[e,n] = r_e, sum_e a[e,n] = S/nodes; node load
   sum_e w_e/r_e a[e,n] <= Mn. Inter-node traffic over a sample of tokens
   (their top-k sets): ``h[t,n] >= a[e,n]/r_e`` for every expert e of token t,
   so a token counts a node once however many of its experts live there
   (exact when each of its experts has one replica). Objective:
   Mn / mean node load + ``traffic_weight`` * mean remote nodes per token
   + ``migration_weight`` * replicas moved off their current node;
3. GPU stage: binary ``x[e,g]`` (at most one replica of an expert per GPU)
   inside each node, sum_e x[e,g] = S/G, GPU load <= M; objective
   M / mean GPU load + migration. The exact small model adds binaries
   ``z[e,c]`` (expert e has c replicas) and per-GPU load
   ``y[e,g] >= w_e/c (x[e,g] + z[e,c] - 1)``.

Every solve starts from the greedy plan with the same replica counts
(EPLB's global packing), stops at a relative MIP gap or a work limit, and the
result is compared with the greedy baseline on the layer: when it is worse
on the objective, or (without a migration cost) on the busiest GPU, the
baseline is returned (``fallback``). Bound and gap come from the solver (HiGHS' ``mip_dual_bound``),
and "optimal" is claimed only when the solver's model status says so, not
PuLP's status (which reads a time-limited solve as optimal).

Determinism: the same inputs give the same plan, whatever the machine's speed or ``workers``. Every cut-off
that can change the answer counts work, not seconds: branch-and-bound nodes per MIP solve (``work_limit``:
HiGHS' ``mip_max_nodes``, CBC's ``maxNodes``), candidate patterns enumerated (``max_candidates``), swaps of
the co-location search; HiGHS runs on one thread with ``random_seed`` fixed, and the layers' results are
merged in layer order. The wall-clock ``time_limit`` is only a safety cap: a stage it stops reports status
"time limit", and then the plan may differ from run to run. HiGHS' banner (written by C code to fd 1 when the
first solver of a process is made) goes to stderr, so stdout stays clean for ``--json``.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pulp

from moesim.model.errors import MoesimError
from moesim.placement.baselines import check_shape, rebalance_experts
from moesim.placement.coloc import improve_nodes
from moesim.placement.metrics import dhondt_counts, layer_sends

try:  # highspy is a dependency, but keep CBC working without it
    import highspy
except ImportError:  # pragma: no cover - exercised only where highspy is missing
    highspy = None


@dataclass(frozen=True)
class IlpOptions:
    """Knobs of the placement ILP.

    Attributes:
        time_limit: wall seconds for the whole solve (all layers), a safety cap: a MIP solve it stops reports
            status "time limit" and its plan may differ between runs (the cut-off depends on the machine's speed
            and load); a solve that ends before it (optimal, or at ``work_limit``) is reproducible.
        work_limit: branch-and-bound nodes per MIP solve (HiGHS' ``mip_max_nodes``, CBC's ``maxNodes``), the
            deterministic cut-off of the search: a solve it stops reports status "work limit".
        max_candidates: candidate GPU patterns the exact one-node pattern model may enumerate; beyond it the
            layer uses the assignment model instead (a deterministic cut-off).
        mip_gap: relative MIP gap at which a stage stops.
        traffic_weight: objective weight of one remote node per token, in units
            of busiest-over-mean load (0.05: one fewer node crossed per token
            is worth 5% of imbalance).
        migration_weight: objective weight of one expert copy moved off its
            current node or GPU (needs ``current``).
        token_sample: tokens per layer in the node-stage MIP's traffic model (the co-location start and
            the final comparison use all the tokens given).
        workers: parallel processes (default: CPU count).
        solver: "highs" or "cbc".
        exact_max_vars: layers on one node with at most this many (expert, GPU)
            pairs get the exact model with replica counts chosen jointly.
        seed: token sampling seed and HiGHS' ``random_seed`` (modulo 2**31).
    """

    time_limit: float = 60.0
    work_limit: int = 500
    max_candidates: int = 1_000_000
    mip_gap: float = 1e-4
    traffic_weight: float = 0.05
    migration_weight: float = 0.0
    token_sample: int = 96
    workers: int | None = None
    solver: str = "highs"
    exact_max_vars: int = 1024
    seed: int = 0


@dataclass
class StageReport:
    """One MIP solve: status from the solver, objective, bound, relative gap, wall seconds, branch-and-bound nodes.

    ``status`` is "optimal" (within the MIP gap), "work limit" (stopped at ``IlpOptions.work_limit`` nodes:
    reproducible), "time limit" (stopped by the wall-clock cap: may differ between runs) or the solver's own word.
    """

    status: str
    objective: float
    bound: float
    gap: float
    seconds: float
    nodes: int = 0


@dataclass
class LayerResult:
    """The ILP's plan for one layer [S] and what happened."""

    phys_to_log: np.ndarray
    stages: list[StageReport] = field(default_factory=list)
    fallback: bool = False
    objective: float = math.nan
    baseline_objective: float = math.nan


_REDIRECT_LOCK = threading.Lock()
_REDIRECT_DEPTH = 0
_SAVED_STDOUT_FD: int | None = None


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers (HiGHS writes with printf: a pipe's buffer would reach fd 1 later)."""
    with suppress(OSError, AttributeError, TypeError):  # no C library to load (Windows): nothing to flush
        ctypes.CDLL(None).fflush(None)


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point fd 1 at fd 2 for the block, so C code (HiGHS' banner and log) cannot write to stdout.

    Nested and concurrent uses (threads) share one redirection: the first in saves fd 1, the last out restores
    it. Python-level writes to ``sys.stdout`` inside the block go to stderr as well. Does nothing where fd 1 or
    fd 2 is not open.
    """
    global _REDIRECT_DEPTH, _SAVED_STDOUT_FD
    with _REDIRECT_LOCK:
        if _REDIRECT_DEPTH == 0:
            with suppress(OSError, ValueError, AttributeError):
                sys.stdout.flush()
            _flush_c_stdio()
            try:
                saved = os.dup(1)
            except OSError:
                saved = None
            if saved is not None:
                try:
                    os.dup2(2, 1)
                except OSError:
                    os.close(saved)
                    saved = None
            _SAVED_STDOUT_FD = saved
        _REDIRECT_DEPTH += 1
    try:
        yield
    finally:
        with _REDIRECT_LOCK:
            _REDIRECT_DEPTH -= 1
            if _REDIRECT_DEPTH == 0 and _SAVED_STDOUT_FD is not None:
                with suppress(OSError, ValueError, AttributeError):
                    sys.stdout.flush()
                _flush_c_stdio()
                os.dup2(_SAVED_STDOUT_FD, 1)
                os.close(_SAVED_STDOUT_FD)
                _SAVED_STDOUT_FD = None


def _highs_status(model_status: Any, to_string: Callable[[Any], str]) -> str:
    """Our word for HiGHS' model status (a node limit is "Solution limit reached" in HiGHS' words)."""
    status = highspy.HighsModelStatus
    words = {status.kOptimal: "optimal", status.kSolutionLimit: "work limit", status.kTimeLimit: "time limit"}
    return words.get(model_status) or to_string(model_status).lower()


class _WarmHiGHS(pulp.HiGHS):
    """PuLP's highspy interface plus a MIP start, deterministic options, and the solver's own status and bound.

    HiGHS' options: ``threads=1``, ``random_seed``, ``mip_max_nodes`` (the work limit), ``time_limit`` (the safety
    cap), no output. PuLP's own status table has no entry for a node limit and reads a time-limited solve as
    optimal, so the status and the solution are read from HiGHS directly.
    """

    def __init__(self, random_seed: int, max_nodes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.random_seed = random_seed
        self.max_nodes = max_nodes

    def createAndConfigureSolver(self, lp: pulp.LpProblem) -> None:
        super().createAndConfigureSolver(lp)
        h = lp.solverModel
        h.setOptionValue("output_flag", False)
        h.setOptionValue("log_to_console", False)
        h.setOptionValue("random_seed", self.random_seed)
        h.setOptionValue("mip_max_nodes", self.max_nodes)

    def callSolver(self, lp: pulp.LpProblem) -> None:
        values = [v.varValue for v in lp.variables()]
        if all(v is not None for v in values):
            sol = highspy.HighsSolution()
            sol.col_value = [float(v) for v in values]
            sol.value_valid = True
            lp.solverModel.setSolution(sol)
        lp.solverModel.run()
        h = lp.solverModel
        info = h.getInfo()
        self.report = (
            _highs_status(h.getModelStatus(), h.modelStatusToString),
            float(info.objective_function_value),
            float(info.mip_dual_bound),
            float(info.mip_gap),
            int(info.mip_node_count),
        )

    def findSolutionValues(self, lp: pulp.LpProblem) -> tuple[int, int]:
        h = lp.solverModel
        feasible = h.getInfo().primal_solution_status == 2  # kSolutionStatusFeasible
        values = list(h.getSolution().col_value)
        for var in lp.variables():
            var.varValue = values[var.index] if feasible else None
        if h.getModelStatus() == highspy.HighsModelStatus.kOptimal:
            return pulp.LpStatusOptimal, pulp.LpSolutionOptimal
        if feasible:
            return pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible
        if h.getModelStatus() == highspy.HighsModelStatus.kInfeasible:
            return pulp.LpStatusInfeasible, pulp.LpSolutionInfeasible
        return pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound


def _solve(prob: pulp.LpProblem, opts: IlpOptions, time_limit: float) -> StageReport:
    """Solve ``prob`` with at most ``opts.work_limit`` branch-and-bound nodes and ``time_limit`` wall seconds."""
    t0 = time.perf_counter()
    nodes = 0
    if opts.solver == "highs" and highspy is not None:
        solver = _WarmHiGHS(
            random_seed=opts.seed % 2**31,
            max_nodes=opts.work_limit,
            msg=False,
            timeLimit=max(time_limit, 0.05),
            gapRel=opts.mip_gap,
            threads=1,
        )
        with stdout_to_stderr():
            prob.solve(solver)
        status, obj, bound, gap, nodes = solver.report
    else:
        cap = max(1, math.ceil(time_limit))
        solver = pulp.PULP_CBC_CMD(
            msg=False,
            timeLimit=cap,
            gapRel=opts.mip_gap,
            warmStart=True,
            threads=1,
            maxNodes=opts.work_limit,  # CBC keeps its own fixed seeds: deterministic on one thread
        )
        with stdout_to_stderr():
            prob.solve(solver)
        # CBC through PuLP gives no bound and no reason for stopping: a stop near the cap is the time limit
        if prob.sol_status == pulp.LpSolutionOptimal:
            status = "optimal"
        elif prob.sol_status == pulp.LpSolutionIntegerFeasible:
            status = "time limit" if time.perf_counter() - t0 >= 0.95 * cap else "work limit"
        else:
            status = pulp.LpSolution[prob.sol_status].lower()
        obj = pulp.value(prob.objective)
        bound, gap = (obj, 0.0) if status == "optimal" else (math.nan, math.nan)
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise MoesimError(f"placement ILP found no feasible plan ({status})", "check slots, GPUs and redundancy")
    if status == "optimal":
        gap = max(gap, 0.0) if math.isfinite(gap) else 0.0
    return StageReport(status, float(obj), float(bound), float(gap), time.perf_counter() - t0, int(nodes))


def _val(v: Any) -> float:
    return float(v.varValue or 0.0)


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


def solve_layer(
    w: np.ndarray,
    num_slots: int,
    num_gpus: int,
    gpus_per_node: int,
    tokens: np.ndarray,
    baseline: np.ndarray,
    opts: IlpOptions,
    time_limit: float,
    current: np.ndarray | None = None,
) -> LayerResult:
    """Place one layer: loads ``w`` [N], token expert sets ``tokens`` [T, k], the greedy ``baseline`` [S]
    it must not lose to, an optional ``current`` plan [S]; returns the plan [S] with its solver reports."""
    t0 = time.perf_counter()
    n = w.size
    nodes = num_gpus // gpus_per_node
    per_gpu = num_slots // num_gpus
    cur_gpu = None if current is None else _incidence(current, n, num_gpus)
    greedy = _greedy_global(w, num_slots, num_gpus)
    if not _no_duplicates(greedy, num_gpus):  # EPLB may stack two replicas on a GPU; repack for a valid start
        cnt = dhondt_counts(w, num_slots, num_gpus)
        greedy = _pack_within(w, cnt, cnt[:, None], num_gpus, num_slots // num_gpus)
    stages: list[StageReport] = []
    if nodes == 1 and n * num_gpus <= opts.exact_max_vars:
        start = _incidence(greedy, n, num_gpus)
        found = None if cur_gpu is not None else _pattern_stage(w, num_slots, num_gpus, start, opts, time_limit)
        slots, rep = found or _exact_stage(w, num_slots, num_gpus, start, opts, time_limit, cur_gpu)
        stages.append(rep)
    else:
        r = np.bincount(greedy, minlength=n)
        a = r[:, None]
        if nodes > 1:
            cur_node = None if current is None else _incidence(current, n, nodes)
            a0 = _incidence(greedy, n, nodes)
            if opts.traffic_weight:
                starts = [
                    a0,
                    _structured(w, r, nodes, gpus_per_node, _incidence(baseline, n, nodes)),
                    _clustered(w, r, nodes, gpus_per_node, tokens),
                ]
                # 300 swaps at most per start: a count, not seconds, so the start is the same on any machine
                starts = [improve_nodes(s, w, r, tokens, opts.traffic_weight, 300) for s in starts]
                a0 = min(starts, key=lambda s: _node_score(s, w, r, tokens, opts.traffic_weight))
            left = max(0.1, time_limit - (time.perf_counter() - t0))
            a, rep = _node_stage(
                w, r, nodes, gpus_per_node, tokens[: opts.token_sample], a0, opts, 0.7 * left, cur_node
            )
            stages.append(rep)
        start = _incidence(greedy, n, num_gpus) if (a == _incidence(greedy, n, nodes)).all() else None
        if start is None:
            start = _incidence(_pack_within(w, r, a, gpus_per_node, per_gpu), n, num_gpus)
        left = max(0.1, time_limit - (time.perf_counter() - t0))
        slots, rep = _gpu_stage(w, r, a, gpus_per_node, per_gpu, start, opts, left, cur_gpu)
        stages.append(rep)
    p2l = slots.reshape(-1)
    obj, busiest = _objective(p2l, w, num_gpus, nodes, tokens, opts, current)
    base_obj, base_busiest = _objective(baseline, w, num_gpus, nodes, tokens, opts, current)
    res = LayerResult(p2l, stages, objective=obj, baseline_objective=base_obj)
    moving = current is not None and opts.migration_weight > 0  # staying put may be worth a busier GPU
    if obj > base_obj + 1e-9 or (not moving and busiest > base_busiest * (1 + 1e-9)):
        res.phys_to_log, res.fallback, res.objective = baseline.copy(), True, base_obj
    return res


def _structured(w: np.ndarray, r: np.ndarray, nodes: int, gpn: int, prefer: np.ndarray) -> np.ndarray:
    """Replicas per node [N, nodes]: replicated experts spread over the lightest nodes, single ones on the node
    the greedy baseline chose (``prefer`` [N, nodes] its replicas per node) while it has room."""
    n = w.size
    per_node = int(r.sum()) // nodes
    a = np.zeros((n, nodes), np.int64)
    load = np.zeros(nodes)
    room = np.full(nodes, per_node)
    left = []
    for e in np.argsort(-w / r, kind="stable"):
        if r[e] > 1:
            for k in sorted(np.flatnonzero((room > 0) & (a[e] < gpn)), key=lambda k: load[k])[: r[e]]:
                a[e, k] += 1
                room[k] -= 1
                load[k] += w[e] / r[e]
            continue
        k = int(np.argmax(prefer[e]))
        if room[k] > 0:
            a[e, k], room[k], load[k] = 1, room[k] - 1, load[k] + w[e]
        else:
            left.append(e)
    for e in left + [e for e in range(n) if a[e].sum() < r[e]]:
        while a[e].sum() < r[e]:
            free = np.flatnonzero((room > 0) & (a[e] < gpn))
            if free.size == 0:  # the room left is on nodes that hold a replica of e on every GPU already
                free = np.array([_make_room(a, e, room, load, w, r, gpn)])
            k = min(free, key=lambda k: load[k])
            a[e, k], room[k], load[k] = a[e, k] + 1, room[k] - 1, load[k] + w[e] / r[e]
    return a


def _make_room(
    a: np.ndarray, e: int, room: np.ndarray, load: np.ndarray, w: np.ndarray, r: np.ndarray, gpn: int
) -> int:
    """Free a slot for expert ``e`` on a node that can take it: move another expert's replica from that node to
    a node with room (updating ``a`` [N, nodes], ``room`` and ``load`` [nodes] in place); the node freed."""
    for j in np.argsort(load, kind="stable"):  # lightest first
        if a[e, j] >= gpn:
            continue
        for k in np.flatnonzero(room > 0):
            movable = [f for f in np.flatnonzero(a[:, j] > 0) if f != e and a[f, k] < gpn]
            if movable:
                f = min(movable, key=lambda f: w[f] / r[f])
                a[f, j], a[f, k] = a[f, j] - 1, a[f, k] + 1
                room[j], room[k] = room[j] + 1, room[k] - 1
                load[j], load[k] = load[j] - w[f] / r[f], load[k] + w[f] / r[f]
                return int(j)
    raise MoesimError(
        f"cannot place {int(r[e])} replicas of expert {e} on {a.shape[1]} nodes of {gpn} GPUs",
        "use fewer redundant slots or more GPUs per node",
    )


def _clustered(w: np.ndarray, r: np.ndarray, nodes: int, gpn: int, tokens: np.ndarray) -> np.ndarray:
    """Replicas per node [N, nodes] grown by co-activation: heaviest first, each single-replica expert to the node
    (with room) whose experts its tokens use most, ties to the lighter node; replicated experts spread."""
    n = w.size
    h = np.zeros((tokens.shape[0], n + 1))
    np.put_along_axis(h, np.where(tokens >= 0, tokens, n), 1.0, axis=1)
    co = h[:, :n].T @ h[:, :n]
    deg = np.sqrt(np.maximum(np.diag(co), 1.0))
    co = co / deg[:, None] / deg[None, :]  # cosine: who is used together beyond what popularity explains
    np.fill_diagonal(co, 0.0)
    prefer = np.zeros((n, nodes))
    a = np.zeros((n, nodes), np.int64)
    per_node = int(r.sum()) // nodes
    room = np.full(nodes, per_node)
    load = np.zeros(nodes)
    mean = w.sum() / nodes
    for e in np.argsort(-w / r, kind="stable"):
        for _ in range(r[e]):
            ok = np.flatnonzero((room > 0) & (a[e] < gpn))
            if ok.size == 0:  # the room left is on nodes where e already has a replica on every GPU
                ok = np.array([_make_room(a, e, room, load, w, r, gpn)])
            score = prefer[e, ok] - 1e-6 * load[ok] / mean if r[e] == 1 else -load[ok]
            k = int(ok[np.argmax(score)])
            a[e, k] += 1
            room[k] -= 1
            load[k] += w[e] / r[e]
            prefer[:, k] += co[:, e] / r[e]
    return a


def _node_score(a: np.ndarray, w: np.ndarray, r: np.ndarray, tokens: np.ndarray, weight: float) -> float:
    """J of replicas per node ``a`` [N, nodes]: busiest node over mean + weight * remote nodes per token."""
    nodes = a.shape[1]
    load = a.T @ (w / r)
    frac = np.vstack([a / r[:, None], np.zeros((1, nodes))])
    miss = np.prod(1.0 - frac[np.where(tokens >= 0, tokens, w.size)], axis=1)
    return float(load.max() / load.mean() + weight * (1.0 - miss).sum(axis=1).mean() * (nodes - 1) / nodes)


def _pack_within(w: np.ndarray, r: np.ndarray, a: np.ndarray, gpn: int, per_gpu: int) -> np.ndarray:
    """Each node's replicas packed heaviest first onto its lightest GPU without that expert, [G * per_gpu]."""
    out = []
    for k in range(a.shape[1]):
        cnt = a[:, k]
        items = sorted(((w[e] / r[e], e) for e in np.flatnonzero(cnt) for _ in range(cnt[e])), reverse=True)
        load = np.zeros(gpn)
        slots: list[list[int]] = [[] for _ in range(gpn)]
        for per, e in items:
            g = min((g for g in range(gpn) if len(slots[g]) < per_gpu and e not in slots[g]), key=lambda i: load[i])
            slots[g].append(e)
            load[g] += per
        out.extend(slots)
    return np.array(out, np.int64).reshape(-1)


def _layer_cap(deadline: float, share: float, left_after: float) -> float:
    """Wall seconds layer may use: its share of the time limit plus what earlier layers left unused (the time to
    ``deadline``, a ``time.monotonic()`` instant, less ``left_after`` seconds kept for the layers after it)."""
    return max(share, deadline - time.monotonic() - left_after)


def _solve_one(args: tuple) -> LayerResult:
    """One layer in a worker process (or in this one): ``args`` is solve_layer's arguments, the time limit given as
    (deadline, share, seconds kept for later layers); fd 1 points at stderr while it runs."""
    *head, (deadline, share, left_after), current = args
    with stdout_to_stderr():
        return solve_layer(*head, _layer_cap(deadline, share, left_after), current)


def solve(
    weight: np.ndarray,
    num_slots: int,
    num_gpus: int,
    gpus_per_node: int,
    token_sets: list[np.ndarray],
    baseline: np.ndarray,
    opts: IlpOptions = IlpOptions(),
    current: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[LayerResult]:
    """Solve every layer, in parallel processes; the same plans for any ``workers`` (results in layer order, no
    cut-off that depends on the process count) unless the time limit stops a solve.

    Args:
        weight: [L, N] expert loads.
        num_slots: S, a multiple of num_gpus.
        num_gpus, gpus_per_node: the expert-parallel GPUs and their nodes.
        token_sets: per layer, token expert sets [T, k] for the traffic model.
        baseline: [L, S] the greedy plan each layer must not lose to.
        opts: time limit, gap, weights.
        current: optional [L, S] plan in place now (for migration cost).
        progress: called with (layers done, layers) as layers finish.
    """
    layers, n = weight.shape
    check_shape(n, num_slots, num_gpus, num_gpus // gpus_per_node)
    workers = max(1, min(opts.workers or os.cpu_count() or 1, layers))
    # the time limit is a safety cap: each layer gets its share, plus whatever the layers before it left unused
    per_layer = max(0.05, opts.time_limit * workers / layers * 0.8)
    deadline = time.monotonic() + 0.8 * opts.time_limit
    jobs = [
        (
            weight[i],
            num_slots,
            num_gpus,
            gpus_per_node,
            token_sets[i],
            baseline[i],
            opts,
            (deadline, per_layer, per_layer * ((layers - 1 - i) // workers)),
            None if current is None else current[i],
        )
        for i in range(layers)
    ]
    out: list[LayerResult] = []
    if workers == 1:
        for i, job in enumerate(jobs):
            out.append(_solve_one(job))
            if progress:
                progress(i + 1, layers)
        return out
    with ProcessPoolExecutor(workers) as pool:
        for i, res in enumerate(pool.map(_solve_one, jobs)):
            out.append(res)
            if progress:
                progress(i + 1, layers)
    return out


__all__ = ["IlpOptions", "LayerResult", "StageReport", "solve", "solve_layer"]
