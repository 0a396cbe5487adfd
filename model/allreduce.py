"""Tensor-parallel all-reduce as the serving engines run it on one node: their custom all-reduce kernel.

vLLM (and SGLang, whose kernel is the same) does not hand a tensor-parallel all-reduce of a forward step to NCCL
while the message fits its custom all-reduce: a kernel over CUDA-IPC-shared buffers in which every GPU reads its
peers' inputs over NVLink (vllm-project/vllm@csrc/custom_all_reduce.cuh, ``CustomAllreduce::allreduce``):

- **one-shot** (``cross_device_reduce_1stage``): each GPU reads every peer's whole message and reduces it itself,
  ``(n - 1) x message`` bytes in per GPU. Chosen at 2 GPUs always, and at 4 (6, 8) NVLink-connected GPUs below
  512 KiB (256 KiB);
- **two-shot** (``cross_device_reduce_2stage``): a reduce-scatter and an all-gather, ``2 (n - 1) / n x message``
  bytes in per GPU, with a second, heavier barrier. Above those sizes.

The size limits below are vLLM's (SGLang's kernel has the same one-shot / two-shot rule; its buffer limits are not
modelled apart). It runs while the message is below the custom all-reduce's maximum: on Hopper (compute
capability 9.0) 64 MiB at 2 GPUs, 32 MiB at 4, 512 KiB at 6 and 256 KiB at 8 (``CUSTOM_ALL_REDUCE_MAX_SIZES["9.0"]`` in
vllm/distributed/device_communicators/all_reduce_utils.py; above them PyTorch's symmetric-memory all-reduce, then
NCCL), elsewhere its buffer's default 8 MiB (``CustomAllreduce(max_size=8192 * 1024)``). Decode and mixed steps'
all-reduces (tokens x hidden x 2 bytes: 16 KiB per token at hidden 8192) are far inside it.

Time: ``fixed + bytes in per GPU / (fraction x the node's link bandwidth)``, per algorithm, with the fixed time and
the fraction fitted (least squares in relative error) on vLLM's published H100 benchmark of these very kernels
(``benchmarks/kernels/benchmark_device_communicators.py``, bf16, hidden 8192, 0.5-4 MiB, each algorithm forced):
vllm-project/vllm#24532 (4 GPUs) and #24111 (6 GPUs), `PUBLISHED_H100`. One-shot: 5.30 us + bytes at 345 GB/s
(77% of the H100's 450 GB/s NVLink per direction), the 12 points within 10% (median 3.5%), and the one published
2-GPU point (0.5 MiB: 7 us), held out, at 6.8 us. Two-shot: 12.1 us + bytes at 257 GB/s (57%), median 11% (the
published two-shot times are uneven: 17, 18, 25, 26 us). moesim's ring model before (`model.op_record.collective`:
``2 (n - 1) / n x message`` at the whole link plus NCCL's 7.1 us floor) gave the 4-GPU 0.5 MiB all-reduce 8.9 us
(published 10), the 4 MiB one 21 us (published 38 one-shot, 42 two-shot). Another GPU reuses the H100's fixed
times and fractions of its own link (said in the source).

Which all-reduces: the ops `model.ops.decompose` marks as the engine's (``shape["impl"] == "custom_ar"``: the
tensor-parallel all-reduces of attention, MLP, MoE and the embedding); training's all-reduces run on NCCL
(`sim.training.train_cost.training_ops` marks them so). Units: bytes, seconds, bytes/s.
"""

from __future__ import annotations

from dataclasses import replace

from moesim.model.hardware import ClusterSpec
from moesim.model.op_record import Op

MiB = 2**20
KiB = 2**10
#: The engine's all-reduce implementation on a decomposed op (``Op.shape["impl"]``).
CUSTOM_AR = "custom_ar"
#: Largest message (bytes) of the custom all-reduce on Hopper, by GPU count (vLLM's ``CUSTOM_ALL_REDUCE_MAX_SIZES``
#: for compute capability 9.0; a message must be below it).
HOPPER_MAX_BYTES = {2: 64 * MiB, 4: 32 * MiB, 6: MiB // 2, 8: MiB // 4}
#: Elsewhere: the custom all-reduce buffer's default ``max_size``.
DEFAULT_MAX_BYTES = 8 * MiB
#: Hopper GPUs by preset key prefix (compute capability 9.0).
HOPPER_PREFIXES = ("H100", "H200", "H800", "H20", "GH200")
#: A node whose intra-node link is at least this (bytes/s per GPU per direction) is NVLink-connected all to all
#: (PCIe Gen5 x16: 64 GB/s; NVLink 3 and 4 nodes: 300-450 GB/s); the custom all-reduce needs that above 2 GPUs.
NVLINK_CLASS_BW = 100e9
#: The published H100 times (s) these figures are fitted on: (GPUs, algorithm) -> ((message bytes, time), ...).
PUBLISHED_H100: dict[tuple[int, str], tuple[tuple[float, float], ...]] = {
    (4, "one"): tuple(zip((0.5 * MiB, 1 * MiB, 1.5 * MiB, 2 * MiB, 3 * MiB, 4 * MiB),
                          (10e-6, 14e-6, 19e-6, 23e-6, 30e-6, 38e-6), strict=True)),
    (4, "two"): tuple(zip((0.5 * MiB, 1 * MiB, 1.5 * MiB, 2 * MiB, 3 * MiB, 4 * MiB),
                          (17e-6, 18e-6, 25e-6, 26e-6, 35e-6, 42e-6), strict=True)),
    (6, "one"): tuple(zip((0.5 * MiB, 1 * MiB, 1.5 * MiB, 2 * MiB, 3 * MiB, 4 * MiB),
                          (13e-6, 21e-6, 30e-6, 38e-6, 53e-6, 70e-6), strict=True)),
    (6, "two"): tuple(zip((0.5 * MiB, 1 * MiB, 1.5 * MiB, 2 * MiB, 3 * MiB, 4 * MiB),
                          (15e-6, 17e-6, 20e-6, 26e-6, 29e-6, 37e-6), strict=True)),
    (2, "one"): ((0.5 * MiB, 7e-6),),  # held out of the fit
}  # fmt: skip
#: (fixed s, fraction of the intra-node link) per algorithm, fitted on `PUBLISHED_H100` (module docstring).
FIGURES: dict[str, tuple[float, float]] = {"one": (5.30e-6, 345e9 / 450e9), "two": (12.14e-6, 257e9 / 450e9)}
#: The H100 link the fractions are of (bytes/s per direction; `model/presets/gpus.yaml` H100-SXM intra_bw).
H100_LINK = 450e9


def bytes_in(gpus: int, message: float, algorithm: str) -> float:
    """Bytes each GPU reads from its peers: one-shot ``(n - 1) x message``, two-shot ``2 (n - 1) / n x message``."""
    return (gpus - 1) * message if algorithm == "one" else 2.0 * (gpus - 1) / gpus * message


def algorithm(gpus: int, message: float) -> str:
    """``one`` or ``two``: the custom all-reduce's choice for ``message`` bytes over ``gpus`` GPUs."""
    if gpus == 2 or (gpus <= 4 and message < 512 * KiB) or (gpus <= 8 and message < 256 * KiB):
        return "one"
    return "two"


def max_bytes(gpu_key: str, gpus: int) -> float:
    """The largest message the custom all-reduce takes on ``gpu_key`` over ``gpus`` GPUs (exclusive)."""
    if gpu_key.startswith(HOPPER_PREFIXES):
        return HOPPER_MAX_BYTES.get(gpus, 0.0)
    return DEFAULT_MAX_BYTES


def custom_ar_group(gpus: int, cluster: ClusterSpec) -> bool:
    """Whether the custom all-reduce runs over ``gpus`` GPUs of one of ``cluster``'s nodes: 2 GPUs, or 4, 6 or 8
    that NVLink connects all to all (vLLM's ``CustomAllreduce``: ``world_size == 2`` or ``fully_connected``)."""
    nvlink = (cluster.gpu.node.intra_bw or 0.0) >= NVLINK_CLASS_BW
    return gpus == 2 or (gpus in (4, 6, 8) and nvlink)


def applies(op: Op, cluster: ClusterSpec) -> bool:
    """Whether the engine's custom all-reduce runs ``op``: an all-reduce marked as the engine's, within one node, at
    2 GPUs or at 4, 6 or 8 NVLink-connected ones (`custom_ar_group`), below `max_bytes`."""
    if op.kind != "all_reduce" or op.shape.get("impl") != CUSTOM_AR or op.inter_bytes > 0:
        return False
    gpus, message = int(op.shape.get("gpus", 0)), float(op.shape.get("bytes", 0.0))
    if gpus > cluster.gpus_per_node or message <= 0 or not custom_ar_group(gpus, cluster):
        return False
    return message < max_bytes(cluster.gpu.key, gpus)


def seconds(op: Op, cluster: ClusterSpec) -> tuple[float, str] | None:
    """(seconds, source) of one occurrence of ``op`` on the engine's custom all-reduce, or None where it does not
    run it (`applies`)."""
    if not applies(op, cluster):
        return None
    gpus, message = int(op.shape["gpus"]), float(op.shape["bytes"])
    alg = algorithm(gpus, message)
    fixed, fraction = FIGURES[alg]
    link = cluster.gpu.node.intra_bw or H100_LINK
    t = fixed + bytes_in(gpus, message, alg) / (fraction * link)
    name = "one-shot" if alg == "one" else "two-shot"
    what = (
        f"the engine's custom all-reduce, {name}: {fixed * 1e6:.1f} us + peers' bytes at {fraction:.0%} of the "
        "link (vLLM's H100 benchmark, vllm-project/vllm#24532, #24111)"
    )
    if cluster.gpu.key.startswith("H100"):
        return t, f"achievable: {what}"
    return t, f"achievable:reused H100-SXM's custom all-reduce figures on {cluster.gpu.key}: {what}"


def engine_op(op: Op | None) -> Op | None:
    """``op`` (a tensor-parallel all-reduce of `model.ops.decompose`, or None) marked as the engine's (`CUSTOM_AR`)."""
    if op is None:
        return None
    return replace(op, shape={**op.shape, "impl": CUSTOM_AR})


def nccl_op(op: Op) -> Op:
    """``op`` with an engine all-reduce's mark changed to NCCL's (training frameworks run NCCL)."""
    if op.kind != "all_reduce" or op.shape.get("impl") != CUSTOM_AR:
        return op
    return replace(op, shape={**op.shape, "impl": "nccl"})
