"""The placement ILP (PuLP; HiGHS through highspy, CBC as the fallback).

Per MoE layer, with loads ``w`` [N], slots S on G GPUs in ``nodes`` nodes:

1. replica counts ``r`` [N]: jointly with the assignment when the layer is
   small and on one node (with one or two slots per GPU: `placement.exact`, an
   enumeration with a proof, no MIP; else the exact model, below); otherwise D'Hondt counts,
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

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from moesim.model.errors import MoesimError
from moesim.placement.affinity import align
from moesim.placement.baselines import check_shape, repack_no_duplicates
from moesim.placement.coloc import improve_nodes
from moesim.placement.exact import exact_one_node
from moesim.placement.ilp_solver import IlpOptions, LayerResult, StageReport, stdout_to_stderr
from moesim.placement.ilp_stages import (
    _exact_stage,
    _gpu_stage,
    _greedy_global,
    _incidence,
    _no_duplicates,
    _node_stage,
    _objective,
    _pattern_stage,
    _units,
)
from moesim.placement.layertime import node_hits
from moesim.placement.metrics import dhondt_counts
from moesim.placement.nicsearch import nic_search, pair_swap_search, polish_gpus

__all__ = ["IlpOptions", "LayerResult", "StageReport", "solve", "solve_layer", "stdout_to_stderr"]


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
    t0_mono = time.monotonic()
    n = w.size
    nodes = num_gpus // gpus_per_node
    per_gpu = num_slots // num_gpus
    # the baseline as moesim writes it: EPLB's replica counts and nodes, never two replicas of one expert on a GPU
    baseline = repack_no_duplicates(baseline, w, num_gpus, gpus_per_node)
    cur_gpu = None if current is None else _incidence(current, n, num_gpus)
    stages: list[StageReport] = []
    end = t0_mono + time_limit

    def left() -> float:
        """Wall seconds left to the layer's cap (a stage gets what is left, its model's build included)."""
        return end - time.monotonic()

    def out_of_time() -> LayerResult:
        """The layer's cap ran out before a stage could start: the baseline, reported as cut by the clock."""
        base_obj, _ = _objective(baseline, w, num_gpus, nodes, tokens, opts, current)
        stages.append(StageReport("time limit", base_obj, float("nan"), float("nan"), 0.0))
        return LayerResult(baseline.copy(), stages, True, base_obj, base_obj)

    if left() <= 0:
        return out_of_time()
    greedy = _greedy_global(w, num_slots, num_gpus)
    if not _no_duplicates(greedy, num_gpus):  # EPLB may stack two replicas on a GPU; repack for a valid start
        cnt = dhondt_counts(w, num_slots, num_gpus)
        greedy = _pack_within(w, cnt, cnt[:, None], num_gpus, num_slots // num_gpus)
    if opts.cost is not None and nodes > 1:
        slots, rep = _physical_search(w, greedy, baseline, num_gpus, gpus_per_node, tokens, opts, current, left())
        stages.append(rep)
    elif nodes == 1 and n * num_gpus <= opts.exact_max_vars:
        start = _incidence(greedy, n, num_gpus)
        # without a current plan: the exact enumeration (one or two slots per GPU, `placement.exact`), else the MIP
        found = None if cur_gpu is not None else exact_one_node(w, num_slots, num_gpus, opts)
        if found is None and cur_gpu is None:
            found = _pattern_stage(w, num_slots, num_gpus, start, opts, left())
        if found is None and left() <= 0:
            return out_of_time()
        slots, rep = found or _exact_stage(w, num_slots, num_gpus, start, opts, left(), cur_gpu)
        if rep.status == "optimal" and not _stage_prices_the_layer(opts):
            # the stage proved the plan optimal for the prefill (normal-mode) layer time it models; the layer is
            # priced with decode steps or two-batch overlap too, which it does not model: compared, not proven
            rep = StageReport("search", rep.objective, math.nan, math.nan, rep.seconds, rep.nodes)
        stages.append(rep)
    else:
        r = np.bincount(greedy, minlength=n)
        a = r[:, None]
        nic_s = 0.0
        if nodes > 1:
            cur_node = None if current is None else _incidence(current, n, nodes)
            a0 = _incidence(greedy, n, nodes)
            weight = _start_weight(w, r, nodes, gpus_per_node, opts)
            if weight:
                starts = [
                    a0,
                    _structured(w, r, nodes, gpus_per_node, _incidence(baseline, n, nodes)),
                    _clustered(w, r, nodes, gpus_per_node, tokens),
                ]
                # a count of swaps, not seconds, so the start is the same on any machine; 300 per start with the weight
                # objective, 60 over the ILP's token sample with the physical one (whose larger traffic weight makes
                # every start swap to the limit)
                # the clock only stops a search whose layer then keeps the baseline ("time limit"), so a plan
                # returned never depends on it
                starts = [improve_nodes(s, w, r, tokens, weight, 300, seconds=max(0.0, left())) for s in starts]
                if left() <= 0:
                    return out_of_time()
                a0 = min(starts, key=lambda s: _node_score(s, w, r, tokens, weight))
            if left() <= 0:
                return out_of_time()
            a, rep = _node_stage(
                w, r, nodes, gpus_per_node, tokens[: opts.token_sample], a0, opts, 0.7 * left(), cur_node
            )
            stages.append(rep)
            nic_s = _node_nic_s(a, r, tokens, num_gpus, gpus_per_node, opts)
        start = _incidence(greedy, n, num_gpus) if (a == _incidence(greedy, n, nodes)).all() else None
        if start is None:
            start = _incidence(_pack_within(w, r, a, gpus_per_node, per_gpu), n, num_gpus)
        if left() <= 0:
            return out_of_time()
        slots, rep = _gpu_stage(w, r, a, gpus_per_node, per_gpu, start, opts, left(), cur_gpu, nic_s)
        stages.append(rep)
    p2l = slots.reshape(-1)
    if current is not None:  # the fewest copies for the same layer time (`affinity.align`)
        p2l = align(p2l, current, num_gpus, gpus_per_node)
        baseline = align(baseline, current, num_gpus, gpus_per_node)
    obj, busiest = _objective(p2l, w, num_gpus, nodes, tokens, opts, current)
    base_obj, base_busiest = _objective(baseline, w, num_gpus, nodes, tokens, opts, current)
    res = LayerResult(p2l, stages, objective=obj, baseline_objective=base_obj)
    # the weight objective also keeps the busiest GPU no worse (unless staying put is worth a busier GPU); the
    # physical one is the layer's time, the only criterion
    moving = (current is not None and opts.migration_weight > 0) or opts.cost is not None
    worse = obj > base_obj + 1e-12 * max(1.0, abs(base_obj))
    if not worse and opts.cost is not None and nodes > 1:  # and on the tokens the swap searches did not price
        check = _unsearched(tokens, opts)
        val, base_val = (_objective(q, w, num_gpus, nodes, check, opts, current)[0] for q in (p2l, baseline))
        worse = val > base_val + 1e-12 * max(1.0, abs(base_val))
    if worse or (not moving and busiest > base_busiest * (1 + 1e-9)):
        res.phys_to_log, res.fallback, res.objective = baseline.copy(), True, base_obj
    return res


def _stage_prices_the_layer(opts: IlpOptions) -> bool:
    """Whether the one-node stages (`placement.exact`, the MIP) optimise the layer time the plan is reported with:
    they model the prefill (normal-mode) layer without two-batch overlap (`ilp_stages._units`), so not when the
    objective weighs decode steps in (``--phase decode/both``) or overlaps two micro-batches (`LayerCost.overlap`).
    The weight objective is theirs exactly."""
    cost = opts.cost
    return cost is None or (cost.weights[1] == 0 and cost.overlap[0] is None)


def _physical_search(
    w: np.ndarray,
    greedy: np.ndarray,
    baseline: np.ndarray,
    num_gpus: int,
    gpn: int,
    tokens: np.ndarray,
    opts: IlpOptions,
    current: np.ndarray | None = None,
    seconds: float = float("inf"),
) -> tuple[np.ndarray, StageReport]:
    """Multi-node layer under the physical objective: slots per GPU [G, S/G] and a "search" report, or a "time
    limit" one when the wall-clock cap ``seconds`` ran out: then the steps left are skipped and the best candidate
    so far (EPLB's plan among them) is kept, a plan that may differ from run to run.

    The node MIP's root LP alone takes seconds per layer on the DeepSeek-V3 shape (96 sampled tokens x 8 nodes
    of ``h`` terms), more than a 30 s budget leaves 58 layers on two cores, and cutting it by the clock is not
    reproducible. So the nodes come from a count-limited local search on the same linearised trade (`improve_nodes`,
    node load against remote nodes per token at the physical exchange rate `_start_weight`) from three starts (the
    greedy global plan's nodes, EPLB's nodes with replicated experts spread, co-activation clusters), each packed
    onto GPUs heaviest replica first without duplicates (`_pack_within`), and the plan of least predicted layer time
    (`layertime.layer_time`, over all the tokens given) is kept, after swaps out of the busiest node's NIC from the
    best plan and from EPLB's (`nicsearch.nic_search`, ``opts.nic_passes``, on the first ``opts.search_tokens``
    tokens), optionally the exact pair-swap search
    from the best plan (`nicsearch.pair_swap_search`, ``opts.swap_passes``, off by default: it overfits the token
    sample), then a within-node swap search on the slowest GPU's GEMM (`nicsearch.polish_gpus`, ``opts.gpu_passes``;
    nodes unchanged, so the NIC term is too). Deterministic: every cut-off is a count.
    """
    t0 = time.perf_counter()
    end = time.monotonic() + seconds

    def late() -> bool:
        return time.monotonic() >= end

    n = w.size
    nodes = num_gpus // gpn
    per_gpu = greedy.size // num_gpus
    r = np.bincount(greedy, minlength=n)
    weight = _start_weight(w, r, nodes, gpn, opts)
    sample = tokens[: opts.token_sample]
    search = tokens[: opts.search_tokens]  # what the swap searches price; every candidate is scored on all tokens
    # 15 swaps per start (a count, not seconds: the plan is the same on any machine); the greedy start as it is
    # (measured on the DeepSeek-V3 shape, its swaps rarely pay for their time); a start the clock cuts keeps the
    # swaps made
    starts = [_incidence(greedy, n, nodes)]
    early = []
    if opts.cost is not None and opts.cost.replica_choice == "nearest":
        # SGLang's nearest replica: EPLB's nodes with its stacked replicas spread over nodes, with its counts and with
        # D'Hondt's capped at one a node (a node's second replica of an expert only takes its own GPU's tokens);
        # cheap and, under that rule, the strongest candidates (RESULTS section 9), so built before the starts'
        # searches, which a tight time limit cuts
        for rp in (np.bincount(baseline, minlength=n), dhondt_counts(w, greedy.size, nodes)):
            a = _spread_replicas(_incidence(baseline, n, nodes), w, rp, gpn)
            if a is not None:
                early.append(_pack_within(w, rp, a, gpn, per_gpu))
    for a in (_structured(w, r, nodes, gpn, _incidence(baseline, n, nodes)), _clustered(w, r, nodes, gpn, sample)):
        if late():
            break
        starts.append(improve_nodes(a, w, r, sample, weight, 15, seconds=max(0.0, end - time.monotonic())))
    plans = [_pack_within(w, r, a, gpn, per_gpu) for a in starts] + [baseline] + early
    eplb = len(starts)  # EPLB's plan: a candidate, so the plan kept never loses to it on the tokens compared
    if current is not None and _no_duplicates(current, num_gpus):  # staying put: a candidate when moving costs
        plans.append(current)
    if current is not None:  # GPUs renumbered to keep the most of the current plan (layer time unchanged)
        plans = [align(p, current, num_gpus, gpn) for p in plans]
    check = _unsearched(tokens, opts)  # candidates are compared on tokens the swap searches did not price
    times = [_objective(p, w, num_gpus, nodes, check, opts, current)[0] for p in plans]

    def add(p: np.ndarray, realign: bool = True) -> None:
        """A candidate plan [S] and its time on ``check`` (GPUs renumbered against ``current``: a new packing)."""
        plans.append(p if current is None or not realign else align(p, current, num_gpus, gpn))
        times.append(_objective(plans[-1], w, num_gpus, nodes, check, opts, current)[0])

    if opts.cost is not None and opts.cost.replica_choice == "nearest" and not late():
        # SGLang's nearest replica: the best plan so far with its stacked replicas spread over nodes too (EPLB's
        # were added with the starts), before the searches, which then start from the best
        p = int(np.argmin(times))
        rp = np.bincount(plans[p], minlength=n)
        a = _spread_replicas(_incidence(plans[p], n, nodes), w, rp, gpn)
        if a is not None:
            add(_pack_within(w, rp, a, gpn, per_gpu))
    if opts.cost is not None and opts.nic_passes > 0:
        # the busiest node's NIC sets the layer time under group-limited routing (`placement.nicsearch`): swap out
        # of it, from the best plan so far and from EPLB's nodes, over the first ``search_tokens`` tokens given;
        # counts, not seconds (the clock only cuts a search short: the swaps made are kept, the layer reported cut)
        for p in dict.fromkeys((int(np.argmin(times)), eplb)):
            if late():
                break
            rp = np.bincount(plans[p], minlength=n)
            a = nic_search(_incidence(plans[p], n, nodes), w, rp, search, gpn, opts.cost, opts.nic_passes,
                           seconds=end - time.monotonic())  # fmt: skip
            add(_pack_within(w, rp, a, gpn, per_gpu))
    if opts.cost is not None and opts.swap_passes > 0 and not late():
        # every pair of replicas between the busiest node and another, priced exactly in closed form
        # (`nicsearch.pair_swap_search`), from the best plan so far; counts, not seconds (from the second best too,
        # the 32-GPU benchmark case gained 0.1% at 1.6x the time)
        p = plans[int(np.argmin(times))]
        rp = np.bincount(p, minlength=n)
        a = pair_swap_search(_incidence(p, n, nodes), w, rp, search, gpn, opts.cost, opts.swap_passes,
                             seconds=end - time.monotonic())  # fmt: skip
        add(_pack_within(w, rp, a, gpn, per_gpu))
    if opts.cost is not None and opts.gpu_passes > 0 and not late():
        # the slowest GPU's GEMM within its node (NIC unchanged)
        add(polish_gpus(plans[int(np.argmin(times))], w, gpn, num_gpus, opts.cost, opts.gpu_passes,
                        seconds=end - time.monotonic()), realign=False)  # fmt: skip
    cut = late()
    best = plans[int(np.argmin(times))]
    status = "time limit" if cut else "search"
    obj = _objective(best, w, num_gpus, nodes, tokens, opts, current)[0]
    rep = StageReport(status, obj, float("nan"), float("nan"), time.perf_counter() - t0)
    return best.reshape(num_gpus, per_gpu), rep


def _unsearched(tokens: np.ndarray, opts: IlpOptions) -> np.ndarray:
    """The tokens [T', k] the swap searches did not price (those after the first ``opts.search_tokens``), when there
    are at least as many as they priced; else all ``tokens``. The searches lower the busiest node's hit share on
    their sample, partly its noise (`placement.nicsearch`), so a candidate is chosen, and kept over EPLB's plan, on
    tokens it was not fitted to: on the 32-GPU DeepSeek-V3 benchmark shape choosing on all the tokens, the searched
    ones included, kept a layer 0.3% better than EPLB's on them that was 3.7% worse on held-out tokens (c23,
    2026-12-05)."""
    return tokens[opts.search_tokens :] if tokens.shape[0] >= 2 * opts.search_tokens else tokens


def _start_weight(w: np.ndarray, r: np.ndarray, nodes: int, gpn: int, opts: IlpOptions) -> float:
    """Traffic weight of the heuristic node starts (`improve_nodes`, `_node_score`): ``opts.traffic_weight``, or
    under the physical objective a node NIC's seconds per remote node per token over the mean GPU's GEMM seconds
    (the same trade in the score's units)."""
    if opts.cost is None:
        return opts.traffic_weight
    gemm, _ = _units(w, r, opts, nodes * gpn)
    mean_gemm = float((gemm * r).sum()) / (nodes * gpn)
    per_node_tokens = opts.cost.tokens_per_gpu * gpn  # tokens a node sends; a send per remote node they reach
    return per_node_tokens * opts.cost.nic_s_per_token / gpn / mean_gemm if mean_gemm > 0 else 0.0


def _node_nic_s(a: np.ndarray, r: np.ndarray, tokens: np.ndarray, num_gpus: int, gpn: int, opts: IlpOptions) -> float:
    """Busiest node's NIC seconds for replicas per node ``a`` [N, nodes] (physical objective; 0 otherwise)."""
    if opts.cost is None or opts.cost.nic_s_per_token <= 0:
        return 0.0
    n, nodes = a.shape
    p2l = np.concatenate([np.repeat(np.arange(n), a[:, k]) for k in range(nodes)])
    inbound = node_hits(p2l, n, nodes, tokens) * opts.cost.tokens_per_gpu * num_gpus * (nodes - 1) / nodes
    return float(inbound.max()) * opts.cost.nic_s_per_token / gpn


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


def _spread_replicas(a: np.ndarray, w: np.ndarray, r: np.ndarray, gpn: int) -> np.ndarray | None:
    """Replicas per node [N, nodes], ``r`` [N] of each expert: its first on the node of ``a`` [N, nodes] holding
    most of its replicas there, the others on nodes without one, the lightest first (heaviest replicas first); None
    when that is ``a`` itself or the room (``a``'s slots per node) does not allow it.

    For the ``nearest`` replica rule (SGLang, `layertime.slot_routes`): a node's second replica of an expert only
    takes its own GPU's tokens, while a replica on another node keeps that node's tokens of the expert off the NIC
    and splits the expert's load evenly with the others (each of ``r`` replicas on its own node serves its node's
    tokens and a fair share of the nodes without one: ``1 / r`` of the load)."""
    n, nodes = a.shape
    per_node = a.sum(axis=0)
    out = np.zeros_like(a)
    home = np.argmax(a, axis=1)
    out[np.arange(n), home] = 1
    load = np.bincount(home, weights=w / r, minlength=nodes)
    room = per_node - out.sum(axis=0)
    for e in np.argsort(-w / r, kind="stable"):
        for _ in range(int(r[e]) - 1):
            free = np.flatnonzero((room > 0) & (out[e] == 0))
            if free.size == 0:
                free = np.flatnonzero((room > 0) & (out[e] < gpn))
            if free.size == 0:
                return None
            k = min(free, key=lambda k: load[k])
            out[e, k] += 1
            room[k] -= 1
            load[k] += w[e] / r[e]
    return None if np.array_equal(out, a) else out


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


def _layer_cap(end: float, share: float, left_after: float) -> float:
    """Wall seconds a layer may use: what is left to ``end`` (a ``time.monotonic()`` instant) less ``left_after``
    seconds kept for the layers queued after it on its worker, at least its ``share`` of the time, and never past
    ``end`` itself (a layer that starts after it keeps EPLB's plan)."""
    now = time.monotonic()
    return min(end - now, max(share, end - now - left_after))


#: Share of its fair share of the time each layer queued later is guaranteed (`solve`): a layer runs until its
#: search's counts stop it as long as that keeps half a share for every later layer, so a slow layer early is not
#: cut while the call ends far inside its limit (at a whole share kept, 2 of 58 layers of the 32-GPU DeepSeek-V3
#: case were cut at load 4 with 15 of 26 s used), and a layer squeezed to half a share still keeps most of its gain
#: (the search keeps its swaps when cut: two 64-GPU DeepSeek-V3 layers cut at 0.05 s were 20.0% and 24.8% under
#: EPLB's time, uncut 23.4% and 26.5%; g23, 2026-12-05).
KEEP_SHARE = 0.5


def _solve_one(args: tuple) -> LayerResult:
    """One layer in a worker process (or in this one): ``args`` is solve_layer's arguments, the time limit given as
    (end instant, share, seconds kept for later layers); fd 1 points at stderr while it runs."""
    *head, (end, share, left_after), current = args
    with stdout_to_stderr():
        return solve_layer(*head, _layer_cap(end, share, left_after), current)


#: Wall seconds a layer's result takes after its cap (its final scoring on all the tokens given, the pickling back):
#: 5-36 ms over the cap measured on 64-GPU DeepSeek-V3 layers (4,096 tokens; g23, 2026-12-05), so 50 ms are kept
#: off the end every layer's cap is bound by.
RESULT_S = 0.05


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
    deadline: float | None = None,
) -> list[LayerResult]:
    """Solve every layer, in parallel processes; the same plans for any ``workers`` (results in layer order, no
    cut-off that depends on the process count) unless the time limit stops a solve.

    The wall clock: every layer ends by ``deadline`` (a ``time.monotonic()`` instant; default ``opts.time_limit``
    seconds from now). The time left is shared: each layer gets what is left less `KEEP_SHARE` of a share of the
    worker-seconds for each layer queued after it on its worker, and at least its share; inside a layer each stage
    gets what is left (`solve_layer`).

    Args:
        weight: [L, N] expert loads.
        num_slots: S, a multiple of num_gpus.
        num_gpus, gpus_per_node: the expert-parallel GPUs and their nodes.
        token_sets: per layer, token expert sets [T, k] for the traffic model.
        baseline: [L, S] the greedy plan each layer must not lose to.
        opts: time limit, gap, weights.
        current: optional [L, S] plan in place now (for migration cost).
        progress: called with (layers done, layers) as layers finish.
        deadline: the ``time.monotonic()`` instant by which every layer's result is back.
    """
    layers, n = weight.shape
    check_shape(n, num_slots, num_gpus, num_gpus // gpus_per_node)
    workers = max(1, min(opts.workers or os.cpu_count() or 1, layers))
    # the time limit is a safety cap: each layer gets its share, plus whatever the layers before it left unused
    now = time.monotonic()
    end = (now + opts.time_limit if deadline is None else deadline) - RESULT_S
    per_layer = max(0.0, end - now) * workers / layers
    jobs = [
        (
            weight[i],
            num_slots,
            num_gpus,
            gpus_per_node,
            token_sets[i],
            baseline[i],
            opts,
            (end, per_layer, KEEP_SHARE * per_layer * ((layers - 1 - i) // workers)),
            None if current is None else current[i],
        )
        for i in range(layers)
    ]
    out: list[LayerResult] = []
    if workers == 1 or end <= time.monotonic():  # no time left: every layer keeps EPLB's plan, no processes started
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
