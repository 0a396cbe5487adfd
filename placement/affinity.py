"""Cross-layer affinity (ExFlow, MoETuner) as a placement term: relabel GPUs so consecutive layers' expert pairs
share a GPU, without changing any layer's predicted time.

A token whose expert at layer l and expert at layer l+1 sit on one GPU can skip that dispatch only in an engine
that keeps a token's hidden state where its expert ran: ExFlow's context-coherent expert parallelism, one
all-to-all per layer instead of dispatch + combine (Yao et al., "Exploiting Inter-Layer Expert Affinity for
Accelerating Mixture-of-Experts Model Inference", IPDPS 2024, arXiv:2401.08383: its integer program places experts
by the transition probabilities P(f at l+1 | e at l)); MoETuner (Go and Mahajan, arXiv:2502.06643) uses the same
dependency in its ILP. No engine moesim exports for does this: SGLang (DeepEP or its own all-to-all), vLLM
(``VLLM_ALL2ALL_BACKEND``) and TensorRT-LLM all dispatch and combine at every MoE layer (DeepEP's API is a
``dispatch`` / ``combine`` pair per layer, deepseek-ai/DeepEP@README.md), and with DP attention the combine must
bring every token back to its attention rank. So the term is off by default (`IlpOptions.affinity`), and what it
reports is the saving such an engine would see.

The term is optimised exactly and for free: a layer's predicted time (`placement.layertime`) depends on which
experts share a GPU and which GPUs share a node, not on the GPUs' numbers, so permuting whole GPUs inside a node and
whole nodes leaves every layer's time as it was. Layer by layer (the first as solved), the next layer's GPUs are
permuted to maximise the transitions kept on one GPU: a linear assignment of GPUs within each pair of nodes, then of
nodes (`scipy.optimize.linear_sum_assignment`, deterministic).

The saving is priced by the layer-time model: a pair kept on its GPU sends no dispatch message, so layer l+1's
dispatch link time shrinks by the share of its pairs kept (`affinity_saving_s`).

Shapes: plans [L, S]; transitions [L-1, N, N] (token pairs, e at layer l -> f at layer l+1).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from moesim.placement.metrics import gpu_fractions


def _affinity(prev: np.ndarray, nxt: np.ndarray, trans: np.ndarray, n: int, num_gpus: int) -> np.ndarray:
    """[G, G] transitions from GPU g of the previous layer's plan to GPU h of the next (replicas share evenly)."""
    return gpu_fractions(prev, n, num_gpus).T @ trans @ gpu_fractions(nxt, n, num_gpus)


def node_permutation(score: np.ndarray, gpus_per_node: int) -> np.ndarray:
    """[G] the GPU whose contents each GPU takes, maximising ``sum_j score[j, perm[j]]`` over permutations that
    move GPUs inside nodes and nodes as wholes (``score`` [G, G]: value of GPU j taking GPU h's contents): a linear
    assignment of GPUs for every pair of nodes, then of nodes (exact for that family; deterministic)."""
    g = score.shape[0]
    nodes = g // gpus_per_node
    value = np.zeros((nodes, nodes))
    inner: dict[tuple[int, int], np.ndarray] = {}
    for u in range(nodes):
        for v in range(nodes):
            blk = score[u * gpus_per_node : (u + 1) * gpus_per_node, v * gpus_per_node : (v + 1) * gpus_per_node]
            r, c = linear_sum_assignment(blk, maximize=True)
            inner[u, v] = c[np.argsort(r)]
            value[u, v] = blk[r, c].sum()
    rn, cn = linear_sum_assignment(value, maximize=True)
    perm = np.empty(g, np.int64)
    for u, v in zip(rn, cn, strict=True):  # GPU j of node u takes GPU inner[u, v][j] of node v
        perm[u * gpus_per_node : (u + 1) * gpus_per_node] = v * gpus_per_node + inner[u, v]
    return perm


def _apply(p2l: np.ndarray, perm: np.ndarray) -> np.ndarray:
    per = p2l.size // perm.size
    return p2l.reshape(perm.size, per)[perm].reshape(-1)


def relabel(p2l: np.ndarray, trans: np.ndarray, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    """Plans [L, S] with each layer after the first's GPUs permuted (inside nodes, and nodes as wholes) to keep the
    most consecutive-layer transitions ``trans`` [L-1, N, N] on one GPU; every layer's GPU contents are kept."""
    n = trans.shape[-1]
    out = p2l.copy()
    for i in range(1, p2l.shape[0]):
        score = _affinity(out[i - 1], out[i], trans[i - 1], n, num_gpus)  # [G, G]
        out[i] = _apply(out[i], node_permutation(score, gpus_per_node))
    return out


def align(p2l: np.ndarray, current: np.ndarray, num_gpus: int, gpus_per_node: int) -> np.ndarray:
    """One layer's plan [S] with its GPUs permuted (inside nodes, and nodes as wholes: its predicted time is
    unchanged) to keep the most (GPU, expert) pairs of the ``current`` plan [S], so the fewest expert weights move.

    A plan solved from new statistics has arbitrary GPU numbers: without this a plan equal to the current one up to
    a renumbering would copy every slot."""
    n = int(max(p2l.max(), current.max())) + 1
    cur = gpu_fractions(current, n, num_gpus) > 0  # [N, G] experts each GPU holds now
    new = gpu_fractions(p2l, n, num_gpus) > 0
    score = cur.T.astype(float) @ new.astype(float)  # [G, G]: experts GPU j keeps if it takes GPU h's contents
    return _apply(p2l, node_permutation(score, gpus_per_node))


def locality(p2l: np.ndarray, trans: np.ndarray, num_gpus: int) -> np.ndarray:
    """[L-1] share of each layer boundary's transitions kept on one GPU."""
    n = trans.shape[-1]
    out = np.zeros(p2l.shape[0] - 1)
    for i in range(p2l.shape[0] - 1):
        total = float(trans[i].sum())
        out[i] = float(np.trace(_affinity(p2l[i], p2l[i + 1], trans[i], n, num_gpus))) / total if total else 0.0
    return out


def affinity_saving_s(p2l: np.ndarray, trans: np.ndarray, num_gpus: int, dispatch_s: np.ndarray) -> float:
    """Predicted seconds per step (all layers) an engine with context-coherent expert parallelism would save: at each
    layer after the first, the share of pairs kept on their GPU (`locality`) times that layer's dispatch link time
    ``dispatch_s`` [L], s (`layertime.dispatch_link_s`)."""
    kept = locality(p2l, trans, num_gpus)
    return float((kept * np.asarray(dispatch_s)[1:]).sum())
