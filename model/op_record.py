"""One op and the builders every op list shares: the `Op` record, `gemm`, `collective`, `OpContext`.

`model.ops` (routed experts, dense FFN, the edges of the model) and `model.attention_ops` (the
attention block) both build their ops from these; `decompose` (in `model.ops`) lists them. The
FLOP and byte counts of a GEMM and of a ring collective are made here.

Units: FLOP, bytes (see `model.ops`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moesim.model.batch import Batch
from moesim.model.dtypes import Precision
from moesim.model.hardware import ClusterSpec
from moesim.model.layout import Layout
from moesim.model.spec import ModelSpec


@dataclass(frozen=True)
class Op:
    """One operator on the busiest GPU.

    Attributes:
        name: e.g. ``qkv_proj``, ``attention``, ``routed_experts``, ``ep_dispatch``.
        kind: ``gemm``, ``grouped_gemm``, ``attention``, ``router``,
            ``embedding``, the engines' memory-bound kernels (``norm``,
            ``rope``, ``activation``, ``kv_write``, ``topk_softmax``,
            ``sampling``: `model.ops.ENGINE_KINDS`), ``all_reduce``,
            ``all_gather``, ``reduce_scatter``, ``all_to_all`` or ``p2p``.
        group: the layer set's label (``0-2 dense``, ``3-60 moe``,
            ``moe swa128 x18``), or ``embed`` / ``head`` / ``pp``.
        count: occurrences per step (layers in the set).
        flops: FLOP per occurrence.
        weight_bytes: weight bytes read from device memory per occurrence.
        kv_bytes: KV-cache bytes read and written per occurrence.
        act_bytes: activation bytes read and written per occurrence.
        intra_bytes: bytes sent over intra-node links per occurrence.
        inter_bytes: bytes sent over the NIC per occurrence.
        intra_msgs: latency-bearing collective steps on intra-node links.
        inter_msgs: latency-bearing collective steps on the NIC.
        dtype: the dtype whose peak FLOP/s applies.
        stage: the pipeline stage that runs it.
        shape: the op's dimensions (``m, n, k`` for GEMMs...), for lookups.
        kernels: GPU kernel launches per occurrence (a GEMM 1; vLLM's fused
            MoE 4 or 5: alignment, two grouped GEMMs, activation, top-k sum).
            A step launches ``sum(op.kernels * op.count)`` kernels
            (`model.ops.kernel_launches`); an eager engine pays a host cost
            per launch, a captured CUDA graph does not.
    """

    name: str
    kind: str
    group: str
    count: int
    flops: float
    weight_bytes: float
    kv_bytes: float
    act_bytes: float
    intra_bytes: float = 0.0
    inter_bytes: float = 0.0
    intra_msgs: int = 0
    inter_msgs: int = 0
    dtype: str = "bf16"
    stage: int = 0
    shape: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    kernels: int = 1

    @property
    def bytes(self) -> float:
        """Device-memory bytes moved: weights, KV cache and activations."""
        return self.weight_bytes + self.kv_bytes + self.act_bytes


def gemm(
    name: str,
    group: str,
    count: int,
    m: int,
    n: int,
    k: int,
    w_bytes: float,
    a_bytes: float,
    dtype: str,
    kind: str = "gemm",
) -> Op:
    """C[m, n] = A[m, k] @ W[k, n]: 2mnk FLOP; reads W and A, writes C."""
    return Op(
        name,
        kind,
        group,
        count,
        flops=2.0 * m * n * k,
        weight_bytes=k * n * w_bytes,
        kv_bytes=0.0,
        act_bytes=(m * k + m * n) * a_bytes,
        dtype=dtype,
        shape={"m": m, "n": n, "k": k, "w_bytes": w_bytes},
    )


def memory_op(
    name: str,
    kind: str,
    group: str,
    count: int,
    *,
    flops: float,
    read: float,
    written: float,
    dtype: str,
    shape: dict[str, Any],
    weight_bytes: float = 0.0,
    kv_bytes: float = 0.0,
    kernels: int = 1,
) -> Op:
    """A memory-bound kernel (norm, rotary embedding, activation, top-k, sampling...).

    ``read`` and ``written`` are its activation bytes read and written (bytes);
    ``weight_bytes`` and ``kv_bytes`` what it moves of weights and of the KV
    cache besides; ``flops`` its arithmetic (FLOP), so the roofline takes the
    larger of both.
    """
    return Op(
        name,
        kind,
        group,
        count,
        flops=float(flops),
        weight_bytes=float(weight_bytes),
        kv_bytes=float(kv_bytes),
        act_bytes=float(read + written),
        dtype=dtype,
        shape=shape,
        kernels=kernels,
    )


def collective(
    name: str, kind: str, group: str, count: int, message: float, gpus: int, gpus_per_node: int
) -> Op | None:
    """A ring collective over ``gpus`` GPUs packed into nodes; None when gpus == 1.

    ``message`` is the full tensor's bytes on one GPU (all-reduce input,
    all-gather output). Per GPU, all-reduce sends 2(p-1)/p of it, all-gather
    and reduce-scatter (p-1)/p; across nodes the hierarchical form sends the
    in-node part over NVLink and the node-level part (divided over the
    node's GPUs) over the NIC.
    """
    if gpus <= 1:
        return None
    g = min(gpus, gpus_per_node)
    nodes = -(-gpus // g)
    factor = 2.0 if kind == "all_reduce" else 1.0
    intra = factor * (g - 1) / g * message
    inter = factor * (nodes - 1) / nodes * message / g if nodes > 1 else 0.0
    return Op(
        name,
        kind,
        group,
        count,
        0.0,
        0.0,
        0.0,
        0.0,
        intra_bytes=intra,
        inter_bytes=inter,
        intra_msgs=1 if g > 1 else 0,
        inter_msgs=1 if nodes > 1 else 0,
        shape={"bytes": message, "gpus": gpus},
    )


@dataclass(frozen=True)
class OpContext:
    """What `ops.decompose` hands each block's builder: the step's model, batches, layout and precision."""

    model: ModelSpec
    batch: Batch
    attn_batch: Batch
    layout: Layout
    cluster: ClusterSpec
    precision: Precision
    gemm_dtype: str
