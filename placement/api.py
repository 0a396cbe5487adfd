"""`place()`: run the placement methods on routing statistics and compare them.

Methods: ``round-robin`` (slot s holds expert s mod N), ``eplb`` (DeepSeek's
greedy; hierarchical when the expert groups divide over the nodes, global
otherwise) and ``ilp`` (`placement.ilp`, never worse than ``eplb`` on a
layer). Each result carries its plan, its metrics (`placement.metrics`) and
how it was solved (seconds, objective, bound, gap, status).

The plans are reproducible: the same inputs and options give the same plan
file bytes (wall-clock seconds are in the metrics, not in the plan's
``info``), unless the ILP's wall-clock safety cap stopped a solve (status
"time limit", ``reproducible`` false).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.model.errors import MoesimError
from moesim.placement.affinity import affinity_saving_s, relabel
from moesim.placement.baselines import (
    check_shape,
    duplicate_slots,
    eplb_policy,
    rebalance_experts,
    repack_no_duplicates,
    round_robin,
)
from moesim.placement.ilp import IlpOptions, LayerResult, solve
from moesim.placement.layertime import dispatch_link_s, layer_time_parts
from moesim.placement.metrics import gpu_loads, migration_bytes, plan_metrics
from moesim.placement.plan import PlacementPlan
from moesim.placement.stats import RoutingStats

METHODS = ("round-robin", "eplb", "ilp")


@dataclass
class PlacementResult:
    """One method's plan and report."""

    method: str
    plan: PlacementPlan
    metrics: dict[str, Any]
    layer_max_load: np.ndarray  # [L] busiest GPU's load per layer (units of stats.counts)
    layer_time_s: np.ndarray | None = None  # [L] predicted MoE-layer time, s (with ``IlpOptions.cost``)


# wall-clock entries of a method's report: in its metrics, never in its plan file (they differ between runs)
TIMING_KEYS = ("solve_s", "solver_seconds")
#: Tokens per layer the predicted layer time is scored on under the physical objective (the ILP searches the first
#: ``IlpOptions.search_tokens`` of them and compares its candidates on the rest): a node's hit share from 4,096 tokens
#: has a standard error of at most 0.5 / 64 = 0.8 points. Scored on the 512 tokens the searches priced, as before, the
#: figure counted the noise they fitted as gain (32-GPU DeepSeek-V3 benchmark shape: -7.9% against EPLB on those 512,
#: -6.4% on all 4,096 tokens of the trace, -6.1% on 4,096 held-out ones; c23, 2026-12-05).
SCORE_TOKENS = 4096
#: Tokens per layer in the weight objective's traffic model (unchanged).
WEIGHT_TOKENS = 512


def score_tokens(options: IlpOptions) -> int:
    """Tokens per layer `place` samples from the statistics: `SCORE_TOKENS` under the physical objective (at least
    ``options.search_tokens``), `WEIGHT_TOKENS` under the weight one."""
    return max(SCORE_TOKENS, options.search_tokens) if options.cost is not None else WEIGHT_TOKENS


def _ilp_report(res: list[LayerResult], options: IlpOptions) -> dict[str, Any]:
    """The ILP's status over all layers: "optimal" (every solve within the MIP gap), "work limit" (some solve
    stopped at ``options.work_limit`` nodes: reproducible), "time limit" (the wall-clock cap stopped some
    solve: the plan may differ between runs); gap, counts of layers, nodes and seconds."""
    stages = [s for r in res for s in r.stages]
    gaps = [s.gap for s in stages]
    timed_out = int(sum(any(s.status == "time limit" for s in r.stages) for r in res))
    if not stages:
        status = "no solve"
    elif all(s.status == "optimal" for s in stages):
        status = "optimal"
    elif timed_out:
        status = "time limit"
    elif all(s.status in ("optimal", "work limit") for s in stages):
        status = "work limit"
    else:
        status = next(s.status for s in stages if s.status not in ("optimal", "work limit"))
    return {
        "status": status,
        "reproducible": not timed_out,
        "objective": float(sum(r.objective for r in res)),
        "baseline_objective": float(sum(r.baseline_objective for r in res)),
        "gap": float(max(gaps)) if gaps and all(math.isfinite(g) for g in gaps) else None,
        "layers_optimal": int(sum(all(s.status == "optimal" for s in r.stages) for r in res)),
        "layers_work_limit": int(sum(any(s.status == "work limit" for s in r.stages) for r in res)),
        "layers_time_limit": timed_out,
        "layers_fallback": int(sum(r.fallback for r in res)),
        "nodes": int(sum(s.nodes for s in stages)),
        "work_limit": int(options.work_limit),
        "time_limit": float(options.time_limit),
        "solver_seconds": float(sum(s.seconds for s in stages)),
    }


def place(
    stats: RoutingStats,
    num_gpus: int,
    gpus_per_node: int,
    redundant: int,
    methods: tuple[str, ...] = METHODS,
    num_groups: int = 1,
    options: IlpOptions = IlpOptions(),
    moe_layer_ids: list[int] | None = None,
    num_hidden_layers: int = 0,
    expert_bytes: float = 0.0,
    current: PlacementPlan | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    mtp_layers: int = 0,
    deadline: float | None = None,
) -> dict[str, PlacementResult]:
    """Place the experts of every MoE layer with each method.

    Args:
        stats: routing statistics [L, N] (with a token trace for the traffic terms).
        num_gpus: GPUs holding experts G (a multiple of gpus_per_node).
        gpus_per_node: GPUs per node.
        redundant: extra slots per layer beyond one per expert (N + redundant must be a multiple of G).
        methods: any of ``METHODS``; ``ilp`` also runs ``eplb`` as its baseline.
        num_groups: expert groups for EPLB's hierarchical policy (1: none).
        options: the ILP's knobs.
        moe_layer_ids, num_hidden_layers: the decoder layers of the MoE layers, for the exporters.
        expert_bytes: bytes of one expert's weights in one layer (for ``migration_bytes`` against ``current``).
        current: the plan in place now (migration cost and bytes).
        progress: called with (method, layers done, layers).
        mtp_layers: the model's multi-token-prediction layers (`PlacementPlan.mtp_layers`, for the exporters).
        deadline: the ``time.monotonic()`` instant by which the call returns (default: ``options.time_limit``
            seconds after it starts; the CLI gives the instant its command started plus ``--time-limit``). Every
            step before the ILP comes off its time, and the ILP leaves what scoring its plan takes (measured on the
            plans scored before it in this call).
    """
    t_call = time.monotonic()
    end = t_call + options.time_limit if deadline is None else deadline
    scoring_s: list[float] = []  # wall seconds each plan's scoring (`finish`) took
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise MoesimError(f"unknown placement method {unknown[0]!r}", f"choose from {', '.join(METHODS)} or all")
    if redundant < 0:
        raise MoesimError(f"redundant experts must be >= 0 (got {redundant})", "give --redundant 0 or more")
    layers, n = stats.counts.shape
    slots = n + redundant
    if gpus_per_node < 1 or num_gpus % gpus_per_node:
        raise MoesimError(f"{num_gpus} GPUs do not split into nodes of {gpus_per_node}", "fix --gpus-per-node")
    check_shape(n, slots, num_gpus, num_gpus // gpus_per_node)
    if current is not None:
        current.validate()
        if current.phys_to_log.shape != (layers, slots) or current.num_gpus != num_gpus:
            raise MoesimError(
                f"current plan is [{current.num_layers} layers, {current.num_slots} slots] on {current.num_gpus} GPUs, "
                f"not [{layers}, {slots}] on {num_gpus}",
                "give the plan the engine runs now, for the same model and GPUs",
            )
    common = dict(
        num_experts=n,
        num_gpus=num_gpus,
        gpus_per_node=gpus_per_node,
        moe_layer_ids=list(moe_layer_ids or []),
        num_hidden_layers=num_hidden_layers,
        mtp_layers=mtp_layers,
    )
    out: dict[str, PlacementResult] = {}

    rng = np.random.default_rng(options.seed)
    sample = score_tokens(options)
    tokens = [stats.token_sample(i, sample, rng) for i in range(layers)] if "ilp" in methods or options.cost else []

    def finish(method: str, p2l: np.ndarray, info: dict[str, Any]) -> None:
        t_score = time.monotonic()
        bad = duplicate_slots(p2l, num_gpus)
        assert not bad, f"{method} put two replicas of expert {bad[0][2]} on GPU {bad[0][1]} in layer {bad[0][0]}"
        kept = {k: v for k, v in info.items() if k not in TIMING_KEYS}  # the plan file: same inputs, same bytes
        plan = PlacementPlan(p2l, method=method, info=kept, **common)
        rule = options.cost.replica_choice if options.cost is not None else "random"
        m: dict[str, Any] = {**plan_metrics(plan, stats, rule), **info}
        lt = None
        if options.cost is not None:
            parts = [layer_time_parts(p2l[i], stats.counts[i], num_gpus, gpus_per_node, tokens[i], options.cost)
                     for i in range(layers)]  # fmt: skip
            lt = np.array([p["total"] for p in parts])
            m["layer_time_s"] = float(lt.mean())
            m["layer_time_worst_s"] = float(lt.max())
            if options.cost.phase != "prefill":
                m["layer_time_prefill_s"] = float(np.mean([p["prefill"] for p in parts]))
                m["layer_time_decode_s"] = float(np.mean([p["decode"] for p in parts]))
            trans = stats.transition_counts() if options.affinity else None
            if trans is not None:  # what an engine with context-coherent EP (ExFlow) would save per step
                disp = np.array([dispatch_link_s(p, options.cost) for p in parts])
                m["affinity_saving_s"] = affinity_saving_s(p2l, trans, num_gpus, disp)
        if current is not None and expert_bytes:
            m["migration_bytes"] = migration_bytes(current, plan, expert_bytes)
        busiest = gpu_loads(p2l, stats.counts, num_gpus, rule, gpus_per_node).max(axis=1)
        out[method] = PlacementResult(method, plan, m, busiest, lt)
        scoring_s.append(time.monotonic() - t_score)

    if "round-robin" in methods:
        t0 = time.perf_counter()
        p2l = round_robin(layers, n, slots)
        p2l = np.stack([repack_no_duplicates(p2l[i], stats.counts[i], num_gpus, gpus_per_node) for i in range(layers)])
        finish("round-robin", p2l, {"solve_s": time.perf_counter() - t0, "gap": None, "status": "heuristic"})
    packed = None
    if "eplb" in methods or "ilp" in methods:
        t0 = time.perf_counter()
        greedy = rebalance_experts(stats.counts, slots, num_groups, num_gpus // gpus_per_node, num_gpus)[0]
        policy = eplb_policy(n, num_groups, num_gpus // gpus_per_node)
        # EPLB's replica counts and nodes, repacked so no GPU holds two replicas of one expert (the ILP's baseline
        # too: its layers then find nothing to repack)
        packed = np.stack(
            [repack_no_duplicates(greedy[i], stats.counts[i], num_gpus, gpus_per_node) for i in range(layers)]
        )
        if "eplb" in methods:
            info = {"solve_s": time.perf_counter() - t0, "gap": None, "status": "heuristic", "policy": policy}
            finish("eplb", packed, {**info, "layers_repacked": int((packed != greedy).any(axis=1).sum())})
    if "ilp" in methods:
        assert packed is not None
        t0 = time.perf_counter()
        # the time limit covers the whole call: what the steps before the ILP took comes off its time, and so does
        # the scoring of its plan after it (`finish`: as long as the slowest plan scored so far took, the same work
        # on a plan of the same shape; with none scored yet, a tenth of the time left: on the DeepSeek-V3 benchmark
        # shapes scoring took 0.3-0.8 s of 5-30 s)
        left = end - time.monotonic()
        solve_end = end - (max(scoring_s) if scoring_s else 0.1 * max(left, 0.0))
        res = solve(
            stats.counts,
            slots,
            num_gpus,
            gpus_per_node,
            tokens,
            packed,
            options,
            None if current is None else current.phys_to_log,
            progress=None if progress is None else lambda i, k: progress("ilp", i, k),
            deadline=solve_end,
        )
        p2l = np.stack([r.phys_to_log for r in res])
        trans = stats.transition_counts() if options.affinity else None
        if trans is not None:  # cross-layer affinity: GPUs relabelled, every layer's time unchanged
            p2l = relabel(p2l, trans, num_gpus, gpus_per_node)
        info = {"solve_s": time.perf_counter() - t0, **_ilp_report(res, options), "solver": options.solver}
        e = out.get("eplb")
        if e is not None and np.array_equal(p2l, e.plan.phys_to_log):  # every layer kept EPLB's plan: its scores
            kept = {k: v for k, v in info.items() if k not in TIMING_KEYS}
            plan = PlacementPlan(p2l, method="ilp", info=kept, **common)
            scores = {k: v for k, v in e.metrics.items() if k not in info and k not in ("policy", "layers_repacked")}
            out["ilp"] = PlacementResult("ilp", plan, {**scores, **info}, e.layer_max_load, e.layer_time_s)
        else:
            finish("ilp", p2l, info)
    return out
