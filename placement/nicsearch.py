"""Swap search on the busiest node's NIC: the term that sets the layer time across nodes.

Across nodes the predicted layer time (`placement.layertime`) is ``fixed + max_g GEMM_g + max(NVLink, NIC)``, and
the NIC term is the **busiest** node's inbound tokens (per-node deduplicated sends), not the mean. Under DeepSeek-V3's
group-limited routing a token reaches 4 of 8 expert groups, so with two groups per node it reaches ~3.2 of 4 nodes
whatever the pairing of groups, and the NIC is ~3/4 of EPLB's layer time on 32 GPUs; what a plan can still change
is how evenly the nodes are hit. The node starts (`coloc.improve_nodes`) trade node load against remote nodes per
token summed over nodes, which does not see which node is busiest. This search does: each pass takes the node of
most inbound tokens and tries swapping one replica there (those that are a token's only expert on that node most
often) with a light replica elsewhere, scoring ``max node GEMM / gpn + max(busiest node NIC, busiest node NVLink /
gpn)`` in seconds over the token sample, and keeps the best improving swap. Every cut-off is a count (passes,
candidates), so the result is the same on any machine.

`pair_swap_search` then prices every swap of two replicas between the busiest node and another exactly (the
per-node hit shares in closed form over the token sample, replicated experts included) and takes the best, and
`polish_gpus` lowers the slowest GPU's GEMM by swaps inside its node. On the 32-GPU DeepSeek-V3 benchmark case
(`benchmarks/placement.py`) the pair search takes the predicted layer time from -7.5% to -10.5% against EPLB's on
the 512 tokens it searched, but it fits their noise: the busiest of 4 nodes' hit shares, each estimated from 512
tokens (standard error ~1.8 points), is what it lowers. Placed on 4,096 tokens of an 8,192-token trace and scored
on the other 4,096, it is -4.2% against -6.1% without it, so the ILP runs it only when asked
(``IlpOptions.swap_passes``); a sample of 2,048 tokens generalises (-6.7% held out) but takes 40 s. The searches
price the first ``IlpOptions.search_tokens`` tokens given (2,048) and the ILP compares their plans, and EPLB's, on
the tokens after those (`ilp._unsearched`), so a swap that only fitted the searched sample's noise is not kept.

Shapes: ``a`` [N, nodes] replicas of each expert per node; ``r`` [N] replica counts; ``tokens`` [T, k] (-1 padded).
"""

from __future__ import annotations

import time

import numpy as np

from moesim.placement.layertime import LayerCost, pairs_per_expert, replica_gemm_s


def _hits(a: np.ndarray, r: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[nodes] share of tokens reaching each node (a replica picked uniformly); ``idx`` [T, k] with -1 -> N."""
    frac = np.vstack([a / r[:, None], np.zeros((1, a.shape[1]))])
    return 1.0 - np.prod(1.0 - frac[idx], axis=1).mean(axis=0)


def nic_search(
    a: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    tokens: np.ndarray,
    gpn: int,
    cost: LayerCost,
    passes: int = 100,
    width: int = 8,
    seconds: float = float("inf"),
) -> np.ndarray:
    """Replicas per node [N, nodes] after at most ``passes`` improving swaps (``width`` x ``width`` candidates each)
    out of the busiest node; ``a`` is not changed. The wall-clock cap ``seconds`` is a safety cap: when it runs out
    the swaps made so far are returned (each one lowers the score), and the caller, seeing its deadline passed,
    reports the layer as cut by the clock (a plan that may differ from run to run)."""
    t0 = time.perf_counter()
    a = a.copy()
    n, nodes = a.shape
    if nodes < 2 or cost.nic_s_per_token <= 0:
        return a
    num_gpus = nodes * gpn
    pairs = pairs_per_expert(w, cost, num_gpus) / r  # per replica
    gemm = replica_gemm_s(pairs, cost)
    nvl = pairs * cost.nvlink_s_per_token
    nic_per_share = cost.tokens_per_gpu * num_gpus * (nodes - 1) / nodes * cost.nic_s_per_token / gpn
    idx = np.where(tokens >= 0, tokens, n)

    gload, vload = a.T @ gemm, a.T @ nvl  # [nodes] per node
    users = [np.flatnonzero((idx == e).any(axis=1)) for e in range(n)]  # tokens of each expert

    def full(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frac = np.vstack([b / r[:, None], np.zeros((1, nodes))])
        miss = np.prod(1.0 - frac[idx], axis=1)  # [T, nodes]
        return miss, 1.0 - miss.mean(axis=0)

    def total(hits: np.ndarray, gl: np.ndarray, vl: np.ndarray) -> float:
        return float(gl.max()) / gpn + max(float(hits.max()) * nic_per_share, float(vl.max()) / gpn)

    miss, hits = full(a)
    best = total(hits, gload, vload)
    t_count = idx.shape[0]
    for _ in range(passes):
        if time.perf_counter() - t0 > seconds:
            break
        h = int(np.argmax(hits))
        on_h = np.flatnonzero(a[:, h] > 0)
        frac_h = np.append(a[:, h] / r, 0.0)
        cnt = frac_h[idx].sum(axis=1)  # [T] expected experts of each token on node h
        sole = np.zeros(n + 1)
        np.add.at(sole, idx, (cnt <= 1.0 + 1e-9)[:, None] * frac_h[idx])
        outs = on_h[np.lexsort((on_h, -sole[on_h]))][:width]  # most often a token's only expert on h
        others = np.flatnonzero((a.sum(axis=1) - a[:, h]) > 0)
        ins = others[np.lexsort((others, w[others] / r[others]))][:width]  # lightest replicas elsewhere
        found = None
        for e in outs:
            for f in ins:
                if f == e or a[f, h] >= gpn:
                    continue
                rows = np.union1d(users[e], users[f])
                for c in np.flatnonzero((a[f] > 0) & (a[e] < gpn)):
                    if c == h:
                        continue
                    hb = hits.copy()
                    for k, de, df in ((h, -1, 1), (c, 1, -1)):
                        col = np.append(a[:, k] / r, 0.0)
                        col[e] += de / r[e]
                        col[f] += df / r[f]
                        new = np.prod(1.0 - col[idx[rows]], axis=1)
                        hb[k] += (miss[rows, k].sum() - new.sum()) / t_count
                    d = gemm[f] - gemm[e]
                    gl, vl = gload.copy(), vload.copy()
                    gl[h] += d
                    gl[c] -= d
                    vl[h] += nvl[f] - nvl[e]
                    vl[c] -= nvl[f] - nvl[e]
                    sc = total(hb, gl, vl)
                    if sc < best * (1 - 1e-9):
                        best, found = sc, (e, f, int(c))
        if found is None:
            break
        e, f, c = found
        a[e, h], a[e, c], a[f, c], a[f, h] = a[e, h] - 1, a[e, c] + 1, a[f, c] - 1, a[f, h] + 1
        miss, hits = full(a)
        gload, vload = a.T @ gemm, a.T @ nvl
        best = total(hits, gload, vload)
    return a


def pair_swap_search(
    a: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    tokens: np.ndarray,
    gpn: int,
    cost: LayerCost,
    passes: int = 200,
    seconds: float = float("inf"),
) -> np.ndarray:
    """Replicas per node [N, nodes] after at most ``passes`` improving swaps of one replica of expert e on node h
    with one of expert f on node c, h the node of most inbound tokens (or of most GEMM), every pair scored exactly.

    `nic_search` tries 8 x 8 candidates picked by rules of thumb. Here every pair is priced at once in closed form
    over the token sample: with ``x_ek`` the share of e's replicas on node k (a replica is drawn uniformly), a
    token misses node k with probability ``prod_e (1 - x_ek)`` over its experts, so moving one replica of e from
    h to c changes the token's hit of h by ``-M_h / r_e`` and of c by ``+M_c / r_e``, ``M_k`` its miss of k
    without e; a token using both e and f adds the product term ``M'_k / (r_e r_f)`` (``M'``: its miss without
    either). The new hit shares of h and c are thus exact for every pair, replicated experts included. A pair's
    score is the `nic_search` score (slowest node's GEMM per GPU + max(busiest node NIC, busiest node NVLink per
    GPU), s) plus 1e-3 x the 8-norm of both terms over the nodes, so a swap that lowers one of two tied busiest
    nodes still counts; a swap is taken only when that score falls and the slowest terms do not rise. Never more
    replicas of an expert on a node than it has GPUs. Deterministic: cut-offs are counts, ties go to the lowest
    indices. Shapes: ``a`` [N, nodes], ``w``, ``r`` [N], ``tokens`` [T, k] (-1 padded); ``a`` is not changed.
    When the wall-clock cap ``seconds`` runs out, the swaps made so far (a safety cap: the caller, seeing its
    deadline passed, reports the layer as cut by the clock).
    """
    t0 = time.perf_counter()
    a = a.copy()
    n, nodes = a.shape
    if nodes < 2 or cost.nic_s_per_token <= 0:
        return a
    num_gpus = nodes * gpn
    pairs = pairs_per_expert(w, cost, num_gpus) / r
    gemm = replica_gemm_s(pairs, cost) / gpn
    nvl = pairs * cost.nvlink_s_per_token / gpn
    nic_per_share = cost.tokens_per_gpu * num_gpus * (nodes - 1) / nodes * cost.nic_s_per_token / gpn
    t_count = tokens.shape[0]
    # the (token, expert) entries, one per distinct expert of a token, and the ordered pairs of a token's experts
    u = np.zeros((t_count, n + 1), bool)
    np.put_along_axis(u, np.where(tokens >= 0, tokens, n), True, axis=1)
    tok, ent = np.nonzero(u[:, :n])
    pt, pq = np.nonzero((tok[:, None] == tok[None, :]) & (ent[:, None] != ent[None, :]))
    pair_tok, pe, pf = tok[pt], ent[pt], ent[pq]
    inv_r = 1.0 / r
    pair_w = inv_r[pe] * inv_r[pf]

    sample = (inv_r, t_count, tok, ent, pair_tok, pe, pf, pair_w)
    hits, move, both = np.zeros(nodes), np.zeros((nodes, n)), np.zeros((nodes, n, n))
    for k in range(nodes):
        hits[k], move[k], both[k] = _hit_terms(a[:, k], *sample)
    for _ in range(passes):
        if time.perf_counter() - t0 > seconds:
            break
        gl, vl = a.T @ gemm, a.T @ nvl
        nic = hits * nic_per_share
        link = np.maximum(nic, vl)
        prim0 = gl.max() + link.max()
        best = (prim0 + 1e-3 * (_norm8(gl) + _norm8(link)), None)
        for h in dict.fromkeys((int(np.argmax(link)), int(np.argmax(gl)))):
            if best[1] is not None:  # the busiest link's node first; the slowest GEMM's only when it had no swap
                break
            # every pair (e on h, f on any other node c) at once: columns are (f, c) replicas off h
            eh = np.flatnonzero(a[:, h] > 0)
            fs, cs = np.nonzero(a > 0)
            off = cs != h
            fs, cs = fs[off], cs[off]
            ok = (eh[:, None] != fs[None, :]) & (a[eh[:, None], cs[None, :]] < gpn) & (a[fs, h] < gpn)[None, :]
            dh = -move[h, eh][:, None] + move[h, fs][None, :] + both[h][np.ix_(eh, fs)]
            dc = move[cs[None, :], eh[:, None]] - move[cs, fs][None, :] + both[cs[None, :], eh[:, None], fs[None, :]]
            dg = gemm[fs][None, :] - gemm[eh][:, None]
            dv = nvl[fs][None, :] - nvl[eh][:, None]
            gh, gc = gl[h] + dg, gl[cs][None, :] - dg
            lh = np.maximum(nic[h] + dh / t_count * nic_per_share, vl[h] + dv)
            lc = np.maximum(nic[cs][None, :] + dc / t_count * nic_per_share, vl[cs][None, :] - dv)
            # the nodes other than h and c: their largest terms and 8th powers, per c
            mask = np.ones((nodes, nodes), bool)
            mask[:, h] = False
            mask[np.arange(nodes), np.arange(nodes)] = False
            g_o = np.where(mask, gl[None, :], 0.0)
            l_o = np.where(mask, link[None, :], 0.0)
            prim = np.maximum(np.maximum(gh, gc), g_o.max(axis=1)[cs][None, :])
            prim = prim + np.maximum(np.maximum(lh, lc), l_o.max(axis=1)[cs][None, :])
            smooth = (np.power(g_o, 8).sum(axis=1)[cs][None, :] + gh**8 + gc**8) ** 0.125
            smooth = smooth + (np.power(l_o, 8).sum(axis=1)[cs][None, :] + lh**8 + lc**8) ** 0.125
            sc = np.where(ok & (prim <= prim0 * (1 + 1e-12)), prim + 1e-3 * smooth, np.inf)
            i = int(np.argmin(sc))
            if sc.flat[i] < best[0] * (1 - 1e-12):
                j = i % fs.size
                best = (float(sc.flat[i]), (int(eh[i // fs.size]), int(fs[j]), h, int(cs[j])))
        if best[1] is None:
            break
        e, f, h, c = best[1]
        a[e, h], a[e, c], a[f, c], a[f, h] = a[e, h] - 1, a[e, c] + 1, a[f, c] - 1, a[f, h] + 1
        for k in (h, c):
            hits[k], move[k], both[k] = _hit_terms(a[:, k], *sample)
    return a


def _hit_terms(
    col: np.ndarray,
    inv_r: np.ndarray,
    t_count: int,
    tok: np.ndarray,
    ent: np.ndarray,
    pair_tok: np.ndarray,
    pe: np.ndarray,
    pf: np.ndarray,
    pair_w: np.ndarray,
) -> tuple[float, np.ndarray, np.ndarray]:
    """For one node holding ``col`` [N] replicas of each expert: its hit share, the hits one replica of each expert
    carries there (``sum_t M / r_e`` over its tokens, [N]) and the product terms of two experts (``sum_t M' / (r_e
    r_f)`` over the tokens using both, [N, N]); see `pair_swap_search`. The token sample is given as its entries
    (``tok``, ``ent``: token and expert) and ordered expert pairs (``pair_tok``, ``pe``, ``pf``, with ``pair_w =
    1 / (r_e r_f)``)."""
    n = col.size
    x = col * inv_r  # share of each expert's replicas on the node
    full = (x >= 1.0 - 1e-12).astype(float)
    q = np.where(full > 0, 1.0, 1.0 - x)  # miss factor of a partly placed expert (1: wholly there, or absent)
    z = np.bincount(tok, weights=full[ent], minlength=t_count)  # experts of the token wholly on the node
    miss = np.exp(np.bincount(tok, weights=np.log(q)[ent], minlength=t_count))  # of the partly placed ones
    hit = 1.0 - float(((z < 0.5) * miss).mean())
    m1 = ((z[tok] - full[ent]) < 0.5) * miss[tok] / q[ent]  # miss without one expert, per entry
    m2 = ((z[pair_tok] - full[pe] - full[pf]) < 0.5) * miss[pair_tok] / (q[pe] * q[pf])  # without two, per pair
    move = np.bincount(ent, weights=m1, minlength=n) * inv_r
    both = np.bincount(pe * n + pf, weights=m2 * pair_w, minlength=n * n).reshape(n, n)
    return hit, move, both


def _norm8(v: np.ndarray) -> float:
    """The 8-norm of ``v``: a smooth stand-in for its max that still falls when one of two tied maxima does."""
    return float(np.power(v, 8).sum() ** 0.125)


def polish_gpus(
    p2l: np.ndarray,
    w: np.ndarray,
    gpn: int,
    num_gpus: int,
    cost: LayerCost,
    passes: int = 200,
    seconds: float = float("inf"),
) -> np.ndarray:
    """A plan [S] with the slowest GPU's grouped GEMM lowered by swapping two replicas between it and another GPU of
    its node (nodes keep their replicas, so the NIC term is unchanged), at most ``passes`` swaps.

    `_pack_within` packs each node heaviest replica first, which leaves its slowest GPU above the node's mean; each
    pass takes the slowest GPU and makes the swap with one of its node's GPUs that lowers the larger of the two the
    most, never putting two replicas of one expert on a GPU; it stops when the slowest GPU cannot be lowered.
    Deterministic (ties to the lowest indices). ``p2l`` is not changed. ``seconds``: a wall-clock safety cap, the
    swaps made when it runs out are kept (as in `nic_search`)."""
    t0 = time.perf_counter()
    n = w.size
    r = np.bincount(p2l, minlength=n)
    slots = p2l.reshape(num_gpus, -1).copy()
    per = replica_gemm_s(pairs_per_expert(w, cost, num_gpus) / np.maximum(r, 1), cost)
    load = per[slots].sum(axis=1)
    for _ in range(passes):
        if time.perf_counter() - t0 > seconds:
            break
        g = int(np.argmax(load))
        best = (load[g] * (1 - 1e-12), None)
        for h in range(g // gpn * gpn, (g // gpn + 1) * gpn):
            if h == g:
                continue
            d = per[slots[g]][:, None] - per[slots[h]][None, :]  # [i on g, j on h]: load g sheds
            worst = np.maximum(load[g] - d, load[h] + d)
            ok = ~np.isin(slots[g], slots[h])[:, None] & ~np.isin(slots[h], slots[g])[None, :]
            worst = np.where(ok & (d > 0), worst, np.inf)
            i = int(np.argmin(worst))
            if worst.flat[i] < best[0]:
                best = (float(worst.flat[i]), (h, i // slots.shape[1], i % slots.shape[1]))
        if best[1] is None:
            break
        h, i, j = best[1]
        slots[g, i], slots[h, j] = slots[h, j], slots[g, i]
        load[g], load[h] = per[slots[g]].sum(), per[slots[h]].sum()
    return slots.reshape(-1)
