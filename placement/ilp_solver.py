"""Solver plumbing for the placement ILP: options and result records, HiGHS status reading, stdout redirection.

Times are wall-clock seconds (``time_s``, ``time_limit``); objectives are in token units of the layer's loads.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pulp

from moesim.model.errors import MoesimError
from moesim.placement.layertime import LayerCost

try:  # highspy is a dependency, but keep CBC working without it
    import highspy
except ImportError:  # pragma: no cover - exercised only where highspy is missing
    highspy = None


@dataclass(frozen=True)
class IlpOptions:
    """Knobs of the placement ILP.

    Attributes:
        time_limit: wall seconds for the whole `placement.api.place` call (every method, the scoring, all layers;
            the CLI counts it from the command's start), a safety cap: each layer gets its share of what is left
            and each stage of a layer what the layer has left, the model's build included; a solve or search it
            stops reports status "time limit", keeps its best plan so far (never worse than EPLB's) and may differ
            between runs (the cut-off depends on the machine's speed and load); a solve that ends before it
            (optimal, or at ``work_limit``) is reproducible.
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
        search_tokens: tokens per layer (the first of those given) the swap searches across nodes price
            (`nicsearch.nic_search`, `nicsearch.pair_swap_search`); under the physical objective the candidate
            plans, EPLB's included, are compared on the tokens after them (`ilp._unsearched`: when at least as many
            are left), and the plan kept must not lose to EPLB's on those nor on all the tokens given
            (`placement.api` gives 4,096 and reports the layer time on them). Measured on the 32-GPU DeepSeek-V3
            benchmark shape, placed on 4,096 tokens of an 8,192-token trace and scored on the other 4,096 (c23,
            2026-12-05, 2 cores at load ~4): 512 -> -6.0% against EPLB held out (place() 9.9 s), 1,024 -> -6.3%
            (10.3 s), 2,048 -> -6.4% (11.9 s); searched and scored on the same 512 tokens, as before: -6.1%.
        workers: parallel processes (default: CPU count).
        solver: "highs" or "cbc".
        exact_max_vars: layers on one node with at most this many (expert, GPU)
            pairs get the exact model with replica counts chosen jointly.
        seed: token sampling seed and HiGHS' ``random_seed`` (modulo 2**31).
        cost: the physical objective (`placement.layertime.LayerCost`): minimise the predicted MoE-layer time, s;
            ``traffic_weight`` is then unused and ``migration_weight`` is in seconds of layer time per expert copy
            moved (e.g. copy bytes / link bytes/s / steps until the next rebalance). None: the older weight-based
            objective (busiest/mean load + ``traffic_weight`` x remote nodes per token).
        nic_passes: swaps out of the busiest node's NIC across nodes under the physical objective
            (`placement.nicsearch`), a count; 0 turns the search off. 100: the 32-GPU DeepSeek-V3 benchmark case
            reaches its local optimum before it.
        swap_passes: improving swaps of the exact pair search across nodes after it (`nicsearch.pair_swap_search`),
            a count; 0 (the default) turns it off: on the ILP's 512-token sample it fits the sample's noise in the
            busiest node's hit share (32-GPU DeepSeek-V3 benchmark shape, placed on 4,096 tokens of an 8,192-token
            trace: -10.2% against EPLB on the sample, -4.2% on the other 4,096 tokens, against -7.3% / -6.1%
            without it); 200 converges on that shape.
        gpu_passes: swaps inside a node that lower the slowest GPU's GEMM (`nicsearch.polish_gpus`), a count; 0
            turns it off.
        affinity: after the solve, permute each layer's GPUs (inside nodes, and nodes as wholes: no layer's
            predicted time changes) to keep consecutive layers' expert pairs on one GPU (`placement.affinity`);
            off by default: only an engine with context-coherent expert parallelism (ExFlow) saves a dispatch
            by it, and none that moesim exports for does.
    """

    time_limit: float = 60.0
    work_limit: int = 500
    max_candidates: int = 1_000_000
    mip_gap: float = 1e-4
    traffic_weight: float = 0.05
    migration_weight: float = 0.0
    token_sample: int = 96
    search_tokens: int = 2048
    workers: int | None = None
    solver: str = "highs"
    exact_max_vars: int = 1024
    seed: int = 0
    cost: LayerCost | None = None
    nic_passes: int = 100
    swap_passes: int = 0
    gpu_passes: int = 200
    affinity: bool = False


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
    """Solve ``prob`` with at most ``opts.work_limit`` branch-and-bound nodes and ``time_limit`` wall seconds.

    With no time left (``time_limit`` <= 0: building the model used it up) the solver is not started: the
    variables keep their warm start (every stage sets one) and the report says "time limit"."""
    t0 = time.perf_counter()
    nodes = 0
    if time_limit <= 0:
        obj = pulp.value(prob.objective)
        return StageReport("time limit", math.nan if obj is None else float(obj), math.nan, math.nan, 0.0)
    warm = [(v, v.varValue) for v in prob.variables()]  # the stage's start, kept if the clock stops the solver first
    if opts.solver == "highs" and highspy is not None:
        solver = _WarmHiGHS(
            random_seed=opts.seed % 2**31,
            max_nodes=opts.work_limit,
            msg=False,
            timeLimit=time_limit,
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
        if status == "time limit" and all(x is not None for _, x in warm):  # stopped before it took the start
            for v, x in warm:
                v.varValue = x
            obj = pulp.value(prob.objective)
            return StageReport(status, float(obj), math.nan, math.nan, time.perf_counter() - t0, int(nodes))
        raise MoesimError(f"placement ILP found no feasible plan ({status})", "check slots, GPUs and redundancy")
    if status == "optimal":
        gap = max(gap, 0.0) if math.isfinite(gap) else 0.0
    return StageReport(status, float(obj), float(bound), float(gap), time.perf_counter() - t0, int(nodes))


def _val(v: Any) -> float:
    return float(v.varValue or 0.0)
