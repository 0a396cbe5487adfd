"""How good a placement is, given the routing statistics it serves.

Loads are in the units of ``stats.counts`` ((token, expert) pairs); an
expert's load is split equally over its replicas, as engines dispatch.

- balancedness: mean GPU load / busiest GPU load (1 is perfect), per layer;
- max_load_ratio: busiest GPU / mean (its inverse);
- max_over_lb: busiest GPU over a lower bound that no placement with the same
  slots can beat: max(mean GPU load, the D'Hondt per-replica bound
  min over replica counts of max_e w_e / r_e);
- inter_node_sends_per_token: expected number of nodes other than its own
  that a token's dispatch reaches in one MoE layer (a token crosses to a node
  once however many of its experts live there; its own node is uniform over
  the nodes, as with DP attention). Exact over the trace when there is one,
  else the independence approximation over the load shares;
- cross_layer_locality: fraction of a token's consecutive-layer expert pairs
  (e at layer l, f at l+1) served on the same GPU (needs transitions);
- migration_bytes: expert weights to copy to move from one plan to another.
"""

from __future__ import annotations

import heapq

import numpy as np

from moesim.model.routing import slot_routes, slot_shares
from moesim.placement.plan import PlacementPlan
from moesim.placement.stats import RoutingStats


def gpu_loads(
    phys_to_log: np.ndarray, weight: np.ndarray, num_gpus: int, rule: str = "random", gpus_per_node: int = 1
) -> np.ndarray:
    """Load per GPU [L, G] for plans [L, S] and expert loads ``weight`` [L, N], an expert's load split over its
    replicas as the engine's replica rule ``rule`` sends it (`model.routing.slot_routes`: ``random`` evenly;
    ``nearest`` as SGLang's ranks pick, each GPU holding 1 / G of the tokens)."""
    p2l = np.atleast_2d(phys_to_log)
    w = np.atleast_2d(weight)
    cnt = np.stack([np.bincount(row, minlength=w.shape[1]) for row in p2l])
    per_slot = np.take_along_axis(w / np.maximum(cnt, 1), p2l, axis=1)
    for i, row in enumerate(p2l):  # the rule's shares where they are not the even split (`slot_shares`)
        share = slot_shares(row, w.shape[1], num_gpus, gpus_per_node, rule)
        if share is not None:
            per_slot[i] = w[i, row] * share
    return per_slot.reshape(p2l.shape[0], num_gpus, -1).sum(axis=2)


def replica_bound(weight: np.ndarray, num_slots: int, max_per_expert: int | None = None) -> float:
    """min over replica counts (sum = num_slots, each in 1..max_per_expert) of max_e w_e / r_e, for ``weight`` [N]."""
    return float((weight / dhondt_counts(weight, num_slots, max_per_expert or num_slots)).max())


def dhondt_counts(weight: np.ndarray, num_slots: int, max_per_expert: int) -> np.ndarray:
    """Replica counts [N] minimising max_e w_e / r_e with sum = num_slots and 1 <= r_e <= max_per_expert.

    D'Hondt: giving each extra slot to the expert with the largest load per
    replica minimises the largest load per replica.
    """
    n = weight.size
    cnt = np.ones(n, np.int64)
    heap = [(-w, e) for e, w in enumerate(weight)]
    heapq.heapify(heap)
    for _ in range(num_slots - n):
        while True:
            _, e = heapq.heappop(heap)
            if cnt[e] < max_per_expert:
                break
        cnt[e] += 1
        heapq.heappush(heap, (-weight[e] / cnt[e], e))
    return cnt


def load_lower_bound(weight: np.ndarray, num_slots: int, num_gpus: int) -> np.ndarray:
    """Per-layer lower bound [L] on the busiest GPU's load for ``weight`` [L, N]."""
    w = np.atleast_2d(weight)
    return np.array([max(row.sum() / num_gpus, replica_bound(row, num_slots, num_gpus)) for row in w])


def node_fractions(phys_to_log: np.ndarray, num_experts: int, num_nodes: int) -> np.ndarray:
    """[N, nodes] share of each expert's replicas on each node, for one layer's plan [S]."""
    slots_per_node = phys_to_log.size // num_nodes
    frac = np.zeros((num_experts, num_nodes))
    np.add.at(frac, (phys_to_log, np.arange(phys_to_log.size) // slots_per_node), 1.0)
    return frac / frac.sum(axis=1, keepdims=True)


def layer_sends(phys_to_log: np.ndarray, num_experts: int, num_nodes: int, tokens: np.ndarray) -> float:
    """Expected remote nodes per token for one layer's plan [S] over token expert sets ``tokens`` [T, k] (-1 padded)."""
    if num_nodes == 1:
        return 0.0
    frac = np.vstack([node_fractions(phys_to_log, num_experts, num_nodes), np.zeros((1, num_nodes))])
    miss = np.prod(1.0 - frac[np.where(tokens >= 0, tokens, num_experts)], axis=1)  # [T, nodes]
    return float((1.0 - miss).sum(axis=1).mean() * (num_nodes - 1) / num_nodes)


def _independent_sends(phys_to_log: np.ndarray, share: np.ndarray, top_k: int, num_nodes: int) -> float:
    if num_nodes == 1:
        return 0.0
    frac = node_fractions(phys_to_log, share.size, num_nodes)
    pi = np.minimum(top_k * share, 1.0)
    hit = 1.0 - np.prod(1.0 - pi[:, None] * frac, axis=0)
    return float(hit.sum() * (num_nodes - 1) / num_nodes)


def sends_per_layer(plan: PlacementPlan, stats: RoutingStats, rule: str = "random") -> np.ndarray:
    """[L] expected remote nodes per token per MoE layer, replicas picked by the engine's rule ``rule``
    (`model.routing.slot_routes`; ``nearest`` needs the token trace, else it falls back to ``random``)."""
    out = np.zeros(plan.num_layers)
    for layer in range(plan.num_layers):
        if rule != "random" and stats.topk is not None and plan.num_nodes > 1:
            from moesim.placement.layertime import nearest_hits

            p2l, gpn = plan.phys_to_log[layer], plan.num_gpus // plan.num_nodes
            routes = slot_routes(p2l, plan.num_experts, plan.num_gpus, gpn, rule)
            hits = nearest_hits(p2l, plan.num_experts, plan.num_gpus, gpn, stats.topk[:, layer], routes)
            out[layer] = float(hits.sum(axis=1).mean())  # source nodes hold equal shares of the tokens
        elif stats.topk is not None:
            out[layer] = layer_sends(plan.phys_to_log[layer], plan.num_experts, plan.num_nodes, stats.topk[:, layer])
        else:
            share = stats.shares()[layer]
            out[layer] = _independent_sends(plan.phys_to_log[layer], share, stats.top_k or 1, plan.num_nodes)
    return out


def gpu_fractions(phys_to_log: np.ndarray, num_experts: int, num_gpus: int) -> np.ndarray:
    """[N, G] share of each expert's replicas on each GPU for one layer's plan [S]."""
    return node_fractions(phys_to_log, num_experts, num_gpus)


def cross_layer_locality(plan: PlacementPlan, stats: RoutingStats) -> float | None:
    """Share of consecutive-layer (e, f) token transitions served on one GPU (None without transitions)."""
    trans = stats.transition_counts()
    if trans is None or plan.num_layers < 2:
        return None
    same = total = 0.0
    # a transition e -> f is on one GPU with probability sum_g fr_l[e, g] fr_l+1[f, g] (fr: share of the expert's
    # replicas on g), summed here over the pairs of slots of each GPU: a gather, not a BLAS product (OpenBLAS's
    # threads, spinning beside the ILP's worker processes on a loaded machine, took seconds for it)
    slots = plan.phys_to_log.reshape(plan.num_layers, plan.num_gpus, -1)
    share = np.stack([1.0 / np.bincount(row, minlength=plan.num_experts)[row] for row in plan.phys_to_log])
    share = share.reshape(slots.shape)
    for layer in range(plan.num_layers - 1):
        t = trans[layer]
        a, b = slots[layer], slots[layer + 1]
        pair = share[layer][:, :, None] * share[layer + 1][:, None, :]
        same += float(np.sum(t[a[:, :, None], b[:, None, :]] * pair))
        total += float(t.sum())
    return same / total if total else None


def migration_bytes(old: PlacementPlan, new: PlacementPlan, expert_bytes: float) -> float:
    """Bytes of expert weights copied to turn ``old`` into ``new``: every (layer, GPU, expert) that ``new``
    needs and ``old`` does not have, times ``expert_bytes`` (bytes per expert per layer)."""
    moved = 0
    for a, b in zip(old.gpu_experts(), new.gpu_experts(), strict=True):
        for ga, gb in zip(a, b, strict=True):
            moved += len(set(gb.tolist()) - set(ga.tolist()))
    return moved * expert_bytes


def plan_metrics(plan: PlacementPlan, stats: RoutingStats, rule: str = "random") -> dict[str, float | None]:
    """Summary metrics of ``plan`` under ``stats`` (layer averages unless the name says worst), an expert's tokens
    sent to its replicas by the engine's rule ``rule`` (`gpu_loads`, `sends_per_layer`)."""
    w = stats.counts
    loads = gpu_loads(plan.phys_to_log, w, plan.num_gpus, rule, plan.num_gpus // plan.num_nodes)
    mx, mean = loads.max(axis=1), loads.mean(axis=1)
    lb = load_lower_bound(w, plan.num_slots, plan.num_gpus)
    sends = sends_per_layer(plan, stats, rule)
    return {
        "max_load_ratio": float(np.mean(mx / mean)),
        "max_load_ratio_worst": float(np.max(mx / mean)),
        "balancedness": float(np.mean(mean / mx)),
        "max_over_lb": float(np.mean(mx / lb)),
        "inter_node_sends_per_token": float(sends.mean()),
        "cross_layer_locality": cross_layer_locality(plan, stats),
    }
