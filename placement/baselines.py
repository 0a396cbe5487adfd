"""The baselines the ILP must beat: round-robin, and DeepSeek's greedy EPLB.

EPLB (github.com/deepseek-ai/EPLB, its README) replicates the heaviest
expert until every slot is used, then packs replicas onto GPUs heaviest
first, each onto the lightest GPU that still has a free slot. The
hierarchical policy (used when the expert groups divide evenly over the
nodes) first packs whole expert groups onto nodes, then replicates and packs
within each node; the global policy treats the cluster as one node. Written
here in numpy from that description; ties go to the lowest index.

Shapes: ``weight`` [L, N] loads per layer and logical expert; ``phy2log``
[L, S] the logical expert of each physical slot, GPU g holding slots
``g*S/G .. (g+1)*S/G - 1``; ``logcnt`` [L, N] replicas per expert;
``log2phy`` [L, N, max replicas] slots of each expert, -1 padded.
"""

from __future__ import annotations

import numpy as np

from moesim.model.errors import MoesimError
from moesim.placement.stats import validate_counts


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack n items per row into ``num_packs`` packs of n/num_packs items each, heaviest first.

    Args:
        weight: [X, n] item weights.
        num_packs: packs per row; must divide n.
    Returns:
        pack_index [X, n] (the pack of each item) and rank_in_pack [X, n].
    """
    rows, n = weight.shape
    per_pack = n // num_packs
    if per_pack == 1:
        return np.tile(np.arange(n), (rows, 1)), np.zeros((rows, n), np.int64)
    pack_index = np.full((rows, n), -1, np.int64)
    rank_in_pack = np.full((rows, n), -1, np.int64)
    for i in range(rows):
        pack_w = np.zeros(num_packs)
        pack_n = np.zeros(num_packs, np.int64)
        for item in np.argsort(-weight[i], kind="stable"):
            open_w = np.where(pack_n < per_pack, pack_w, np.inf)
            p = int(np.argmin(open_w))
            pack_index[i, item] = p
            rank_in_pack[i, item] = pack_n[p]
            pack_w[p] += weight[i, item]
            pack_n[p] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give each extra slot to the expert with the largest load per replica.

    Args:
        weight: [X, n] logical expert loads.
        num_phy: physical slots per row (>= n).
    Returns:
        phy2log [X, num_phy], rank [X, num_phy] (replica index of each slot),
        logcnt [X, n] replicas per expert.
    """
    rows, n = weight.shape
    phy2log = np.tile(np.arange(num_phy), (rows, 1))
    rank = np.zeros((rows, num_phy), np.int64)
    logcnt = np.ones((rows, n), np.int64)
    r = np.arange(rows)
    for i in range(n, num_phy):
        best = np.argmax(weight / logcnt, axis=1)
        phy2log[:, i] = best
        rank[:, i] = logcnt[r, best]
        logcnt[r, best] += 1
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.tile(np.arange(perm.shape[1]), (perm.shape[0], 1)), axis=1)
    return inv


def _hierarchical(
    weight: np.ndarray, num_phy: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layers, n = weight.shape
    group_size = n // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_phy // num_gpus
    # 1. expert groups onto nodes
    group_w = weight.reshape(layers, num_groups, group_size).sum(-1)
    g_pack, g_rank = balanced_packing(group_w, num_nodes)
    log2mlog = (((g_pack * groups_per_node + g_rank) * group_size)[:, :, None] + np.arange(group_size)).reshape(
        layers, n
    )
    mlog2log = _inverse(log2mlog)
    # 2. replicas within each node, [layers * nodes, n / nodes]
    w_mlog = np.take_along_axis(weight, mlog2log, axis=1).reshape(-1, n // num_nodes)
    phy2mlog, phyrank, mlogcnt = replicate_experts(w_mlog, num_phy // num_nodes)
    # 3. replicas onto the node's GPUs
    w_phy = np.take_along_axis(w_mlog / mlogcnt, phy2mlog, axis=1)
    pack, rank = balanced_packing(w_phy, num_gpus // num_nodes)
    pphy2phy = _inverse(pack * per_gpu + rank)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)
    pphy2mlog = (pphy2mlog.reshape(layers, num_nodes, -1) + np.arange(0, n, n // num_nodes)[None, :, None]).reshape(
        layers, -1
    )
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, axis=1).reshape(layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(layers, -1), log2mlog, axis=1)
    return pphy2log, pphyrank, logcnt


def check_shape(num_experts: int, num_slots: int, num_gpus: int, num_nodes: int) -> None:
    """Raise a one-line error when slots, GPUs and nodes cannot hold a placement."""
    if num_slots < num_experts:
        raise MoesimError(f"{num_slots} slots cannot hold {num_experts} experts", "redundant experts must be >= 0")
    if num_gpus < 1 or num_nodes < 1 or num_gpus % num_nodes:
        raise MoesimError(f"{num_gpus} GPUs do not split over {num_nodes} nodes", "make GPUs a multiple of nodes")
    if num_slots % num_gpus:
        raise MoesimError(
            f"{num_slots} slots ({num_experts} experts + {num_slots - num_experts} redundant) do not split evenly "
            f"over {num_gpus} GPUs",
            f"choose redundant experts so that experts + redundant is a multiple of {num_gpus}",
        )
    if num_slots // num_gpus > num_experts:
        raise MoesimError(
            f"{num_slots // num_gpus} slots per GPU exceed the {num_experts} experts",
            "a GPU holds each expert at most once: use fewer redundant experts",
        )


def eplb_policy(num_experts: int, num_groups: int, num_nodes: int) -> str:
    """``hierarchical`` when the expert groups split evenly over the nodes, else ``global``."""
    ok = num_groups >= 1 and num_experts % num_groups == 0 and num_groups % num_nodes == 0
    return "hierarchical" if ok else "global"


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeepSeek EPLB: replica counts and their packing onto GPUs.

    Args:
        weight: [L, N] load of each logical expert (finite, >= 0; `MoesimError` otherwise).
        num_replicas: physical slots S (N + redundant), a multiple of num_gpus.
        num_groups: expert groups (1 when the model has none).
        num_nodes: server nodes; the hierarchical policy runs when they divide
            ``num_groups``, the global policy otherwise.
        num_gpus: GPUs, a multiple of num_nodes.
    Returns:
        phy2log [L, S], log2phy [L, N, max replicas] (-1 padded), logcnt [L, N].
    """
    weight = np.asarray(weight, dtype=float)
    validate_counts(weight, "EPLB weight", empty_rows=True)
    layers, n = weight.shape
    check_shape(n, num_replicas, num_gpus, num_nodes)
    if eplb_policy(n, num_groups, num_nodes) == "hierarchical":
        phy2log, phyrank, logcnt = _hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    else:
        phy2log, phyrank, logcnt = _hierarchical(weight, num_replicas, 1, 1, num_gpus)
    maxcnt = int(logcnt.max())
    log2phy = np.full((layers, n * maxcnt), -1, np.int64)
    np.put_along_axis(log2phy, phy2log * maxcnt + phyrank, np.tile(np.arange(num_replicas), (layers, 1)), axis=1)
    return phy2log, log2phy.reshape(layers, n, maxcnt), logcnt


def round_robin(num_layers: int, num_experts: int, num_slots: int) -> np.ndarray:
    """Linear placement [L, S]: slot s holds expert s mod N (redundant slots cycle from expert 0)."""
    return np.tile(np.arange(num_slots) % num_experts, (num_layers, 1))


def duplicate_slots(phys_to_log: np.ndarray, num_gpus: int) -> list[tuple[int, int, int]]:
    """(layer, GPU, expert) for every GPU holding two or more replicas of one expert, plans [L, S]."""
    p = np.atleast_2d(phys_to_log)
    per = p.reshape(p.shape[0], num_gpus, -1)
    out = []
    srt = np.sort(per, axis=2)
    for layer, gpu in zip(*np.nonzero((srt[:, :, 1:] == srt[:, :, :-1]).any(2)), strict=True):
        row = per[layer, gpu]
        vals, cnt = np.unique(row, return_counts=True)
        out.append((int(layer), int(gpu), int(vals[cnt > 1][0])))
    return out


def repack_no_duplicates(p2l: np.ndarray, w: np.ndarray, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    """One layer's plan [S] with the same replica counts and, where it can, the same replicas per node, packed so
    no GPU holds two replicas of one expert: heaviest replica (load ``w`` [N] / count) first onto the lightest GPU
    of its node with room and without that expert, else onto any such GPU; a plan without duplicates is returned
    unchanged. An expert with more replicas than GPUs (EPLB's global policy allows it) makes the counts D'Hondt's
    with at most one replica per GPU."""
    if not duplicate_slots(p2l, num_gpus):
        return p2l.copy()
    n = w.size
    per = p2l.size // num_gpus
    cnt = np.bincount(p2l, minlength=n)
    node_of = np.arange(p2l.size) // (per * gpus_per_node)
    pairs = list(zip(p2l.tolist(), node_of.tolist(), strict=True))
    if cnt.max() > num_gpus:  # more replicas than GPUs: no valid packing keeps them; D'Hondt counts capped at G
        from moesim.placement.metrics import dhondt_counts

        cnt = dhondt_counts(w, p2l.size, num_gpus)
        pairs = [(e, -1) for e in range(n) for _ in range(int(cnt[e]))]
    per_rep = w / np.maximum(cnt, 1)
    items = sorted(((float(per_rep[e]), int(e), int(k)) for e, k in pairs), key=lambda x: (-x[0], x[1]))
    slots: list[list[int]] = [[] for _ in range(num_gpus)]
    load = np.zeros(num_gpus)
    for wt, e, k in items:
        free = [g for g in range(num_gpus) if len(slots[g]) < per and e not in slots[g]]
        if not free:  # every GPU with room holds e: swap another expert off a full GPU without e
            h = next(g for g in range(num_gpus) if len(slots[g]) < per)
            j, f = next((j, f) for j in range(num_gpus) if e not in slots[j] for f in slots[j] if f not in slots[h])
            slots[j].remove(f)
            slots[h].append(f)
            load[j] -= per_rep[f]
            load[h] += per_rep[f]
            free = [j]
        home = [g for g in free if g // gpus_per_node == k]
        g = min(home or free, key=lambda i: (load[i], i))
        slots[g].append(e)
        load[g] += wt
    return np.array(slots, np.int64).reshape(-1)
