"""Predicted MoE-layer time of a placement: the ILP's physical objective and the figure every method reports.

One expert-parallel MoE layer step on G GPUs in ``nodes`` nodes, ``tokens_per_gpu`` tokens on each GPU, run as
DeepEP's normal mode runs it (deepseek-ai/DeepEP@README.md: a token goes once to each other node holding one of its
experts over RDMA, then over NVLink to the GPUs there; dispatch fp8 with one fp32 scale per 128 elements, combine
bf16; `moesim.model.a2a`):

- **dispatch + combine**: ``max(busiest node's NIC, busiest GPU's NVLink)``. A node's NIC receives every token of
  the other nodes that needs one of its experts once (per-node deduplication); its GPUs' NICs share it. A GPU's
  NVLink receives one token per (token, replica) pair routed to it. Seconds per token from `token_bytes` and the
  link bandwidths of the cluster at DeepEP's achieved fraction (`efficiency`, from DeepEP's published H800 runs).
- **grouped GEMM**: per GPU the sum over its replicas of ``max(pairs x 6 h i / peak FLOP/s, 3 h i weight bytes / HBM
  bytes/s)`` (each expert's three projections: compute- or weight-read-bound, `model.roofline`'s rule per expert);
  the layer waits for the slowest GPU.
- plus the two calls' fixed costs (`normal_fixed_s`).

Layer time = fixed + max_g GEMM_g + max(max_node NIC, max_g NVLink): dispatch, GEMM and combine are each a
barrier for the layer. Replica loads split evenly between an expert's replicas (EPLB's and the engines' rule).

The ILP linearises it: for fixed replica counts every replica's GEMM time is a constant, so a GPU's GEMM time is
linear in the assignment; a token reaching node k is ``h[t,k] >= replicas of e on k / r_e`` for each of its experts
(exact when each of its experts has one replica); NIC and NVLink are linear in those. `layer_time` is the exact
evaluation the reports use and the ILP's fallback compares.

Units: seconds, bytes, FLOP; loads ``w`` [N] in any unit (normalised to the step's pairs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from moesim.model.a2a import efficiency, normal_fixed_s, token_bytes
from moesim.model.errors import MoesimError
from moesim.model.hardware import ClusterSpec

#: Tokens per GPU per MoE layer call in the default step: DeepEP's normal-mode benchmark setting (4096 tokens per
#: batch, hidden 7168, top-8; deepseek-ai/DeepEP@README.md "Normal kernels with NVLink and RDMA forwarding").
DEFAULT_TOKENS_PER_GPU = 4096


@dataclass(frozen=True)
class LayerCost:
    """Per-unit costs of one MoE layer step (see the module docstring).

    Attributes:
        tokens_per_gpu: tokens each GPU holds per step.
        top_k: experts per token.
        s_per_pair: grouped-GEMM seconds per (token, expert) pair at the GPU's peak, s.
        s_per_expert_read: seconds to read one expert's weights from HBM, s.
        nvlink_s_per_token: dispatch + combine seconds per token received over one GPU's NVLink, s.
        nic_s_per_token: dispatch + combine seconds per token received over one GPU's NIC, s.
        fixed_s: both calls' fixed costs, s.
        source: what the figures come from.
    """

    tokens_per_gpu: float
    top_k: int
    s_per_pair: float
    s_per_expert_read: float
    nvlink_s_per_token: float
    nic_s_per_token: float
    fixed_s: float
    source: str = ""

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def layer_cost(
    cluster: ClusterSpec,
    hidden: int,
    intermediate: int,
    top_k: int,
    num_gpus: int,
    *,
    dtype: str = "bf16",
    tokens_per_gpu: float = DEFAULT_TOKENS_PER_GPU,
) -> LayerCost:
    """The `LayerCost` of ``num_gpus`` GPUs of ``cluster`` for experts of ``hidden`` x ``intermediate`` (gate, up,
    down), weights and GEMMs in ``dtype`` (``fp8``: 1 byte a weight, the GPU's fp8 peak; else 2 bytes, bf16)."""
    if tokens_per_gpu <= 0 or hidden <= 0 or intermediate <= 0 or top_k <= 0:
        raise MoesimError(
            f"layer cost needs positive tokens per GPU, sizes and top-k (got {tokens_per_gpu}, {hidden}, "
            f"{intermediate}, {top_k})",
            "give --batch-tokens > 0 and an MoE model",
        )
    gpu = cluster.gpu
    fp8 = dtype == "fp8"
    peak = gpu.peak("fp8" if fp8 else "bf16")
    wbytes = 3.0 * hidden * intermediate * (1.0 if fp8 else 2.0)
    nvl_bw, _ = cluster.link("intra")
    nodes = max(1, num_gpus // cluster.gpus_per_node)
    nvl = nic = 0.0
    for direction in ("dispatch", "combine"):
        nbytes = token_bytes(hidden, direction, "normal", 2.0, fp8)
        nvl += nbytes / (efficiency("normal", direction, "intra", num_gpus) * nvl_bw)
        if nodes > 1:
            nic_bw, _ = cluster.link("inter")
            nic += nbytes / (efficiency("normal", direction, "inter", num_gpus) * nic_bw)
    fixed = sum(normal_fixed_s(d, cluster, nodes > 1) for d in ("dispatch", "combine"))
    return LayerCost(
        tokens_per_gpu=float(tokens_per_gpu),
        top_k=int(top_k),
        s_per_pair=6.0 * hidden * intermediate / peak,
        s_per_expert_read=wbytes / gpu.bandwidth(),
        nvlink_s_per_token=nvl,
        nic_s_per_token=nic,
        fixed_s=fixed,
        source=f"{cluster.name}: {dtype} peak and HBM from the GPU table, links at DeepEP's normal-mode efficiency "
        f"(moesim.model.a2a), {tokens_per_gpu:g} tokens per GPU",
    )


def pairs_per_expert(w: np.ndarray, cost: LayerCost, num_gpus: int) -> np.ndarray:
    """(token, expert) pairs of each expert in one step [N]: the step's tokens x top-k split as the loads ``w``."""
    total = float(w.sum())
    if total <= 0:
        return np.zeros(w.size)
    return w / total * cost.tokens_per_gpu * num_gpus * cost.top_k


def replica_gemm_s(pairs: np.ndarray, cost: LayerCost) -> np.ndarray:
    """GEMM seconds of replicas with ``pairs`` pairs each: compute- or weight-read-bound (0 for no pairs)."""
    return np.where(pairs > 0, np.maximum(pairs * cost.s_per_pair, cost.s_per_expert_read), 0.0)


def node_hits(p2l: np.ndarray, n: int, nodes: int, tokens: np.ndarray) -> np.ndarray:
    """[nodes] share of tokens that reach each node (a replica picked uniformly), over ``tokens`` [T, k]."""
    frac = np.zeros((n + 1, nodes))
    np.add.at(frac, (p2l, np.arange(p2l.size) // (p2l.size // nodes)), 1.0)
    frac[:n] /= np.maximum(frac[:n].sum(axis=1, keepdims=True), 1.0)
    miss = np.prod(1.0 - frac[np.where(tokens >= 0, tokens, n)], axis=1)  # [T, nodes]
    return (1.0 - miss).mean(axis=0)


def layer_time_parts(
    p2l: np.ndarray, w: np.ndarray, num_gpus: int, gpus_per_node: int, tokens: np.ndarray, cost: LayerCost
) -> dict[str, float]:
    """Predicted time of one layer's plan ``p2l`` [S] for loads ``w`` [N] and token expert sets ``tokens`` [T, k]:
    ``total``, ``gemm`` (slowest GPU), ``nvlink`` (busiest GPU), ``nic`` (busiest node), ``fixed``; seconds."""
    n = w.size
    nodes = num_gpus // gpus_per_node
    cnt = np.maximum(np.bincount(p2l, minlength=n), 1)
    rep_pairs = (pairs_per_expert(w, cost, num_gpus) / cnt)[p2l]  # [S]
    gemm = replica_gemm_s(rep_pairs, cost).reshape(num_gpus, -1).sum(axis=1)
    nvl = rep_pairs.reshape(num_gpus, -1).sum(axis=1) * cost.nvlink_s_per_token
    nic = 0.0
    if nodes > 1 and cost.nic_s_per_token > 0:
        inbound = node_hits(p2l, n, nodes, tokens) * cost.tokens_per_gpu * num_gpus * (nodes - 1) / nodes
        nic = float(inbound.max()) * cost.nic_s_per_token / gpus_per_node
    a2a = max(float(nvl.max()), nic)
    return {
        "total": cost.fixed_s + float(gemm.max()) + a2a,
        "gemm": float(gemm.max()),
        "nvlink": float(nvl.max()),
        "nic": nic,
        "fixed": cost.fixed_s,
    }


def layer_time(
    p2l: np.ndarray, w: np.ndarray, num_gpus: int, gpus_per_node: int, tokens: np.ndarray, cost: LayerCost
) -> float:
    """Predicted time of one layer's plan, s (`layer_time_parts`' total)."""
    return layer_time_parts(p2l, w, num_gpus, gpus_per_node, tokens, cost)["total"]


def layer_time_bound(
    w: np.ndarray, num_slots: int, num_gpus: int, gpus_per_node: int, cost: LayerCost
) -> dict[str, float]:
    """A lower bound of `layer_time_parts` over every plan of ``num_slots`` slots for loads ``w`` [N], seconds:

    - ``gemm``: the mean GPU's GEMM, ``sum_e max(pairs_e x s_per_pair, s_per_expert_read) / G`` and at least
      ``S x s_per_expert_read / G`` (every replica reads its weights at least once; splitting an expert never
      lowers its compute);
    - ``nvlink``: the mean GPU's received pairs, ``pairs / G x nvlink_s_per_token``;
    - ``nic``: every token reaches at least one node, so the nodes together receive at least ``(nodes - 1) / nodes``
      of all tokens once; the busiest node at least its mean share (a weak bound: it ignores which experts a token
      uses together);
    - ``total``: ``fixed + gemm + max(nvlink, nic)``.
    """
    pairs = pairs_per_expert(w, cost, num_gpus)
    gemm = max(
        float(np.maximum(pairs * cost.s_per_pair, cost.s_per_expert_read).sum()), num_slots * cost.s_per_expert_read
    )
    gemm /= num_gpus
    nvl = float(pairs.sum()) / num_gpus * cost.nvlink_s_per_token
    nodes = num_gpus // gpus_per_node
    nic = 0.0
    if nodes > 1:
        nic = cost.tokens_per_gpu * num_gpus * (nodes - 1) / nodes / nodes * cost.nic_s_per_token / gpus_per_node
    return {
        "total": cost.fixed_s + gemm + max(nvl, nic),
        "gemm": gemm,
        "nvlink": nvl,
        "nic": nic,
        "fixed": cost.fixed_s,
    }
