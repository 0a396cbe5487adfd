"""Training's own kernels: the backward of each forward op, the cross-entropy, and the fp8 casts.

A forward op of `model.ops.decompose` has, in training, backward kernels of its own that `moesim profile --ops
train` measures (`profiling.kernels`) and that `sim.training.train_cost` times from their tables:

- ``gemm_dgrad`` / ``gemm_wgrad``: a linear layer C[m, n] = A[m, k] @ B[k, n] has the input gradient
  dA[m, k] = dC[m, n] @ B^T (dgrad) and the weight gradient dB[k, n] = A^T[k, m] @ dC[m, n] (wgrad: the reduction
  runs over the m tokens), 2 m n k FLOP each. The shape columns are the forward GEMM's ``m, n, k``. wgrad
  accumulates into an fp32 main gradient (Megatron-Core's ``gradient_accumulation_fusion``, NVIDIA/Megatron-LM
  megatron/core/tensor_parallel/layers.py ``wgrad_gemm_accum_fp32``): 4 bytes read and 4 written per weight.
- ``grouped_gemm_dgrad`` / ``grouped_gemm_wgrad``: the experts' two grouped GEMMs backward; the wgrad is
  k-grouped (each expert's reduction runs over its own tokens: DeepGEMM's ``k_grouped_fp8_gemm``,
  deepseek-ai/DeepGEMM). Shape columns: the forward grouped GEMM's.
- ``attention_bwd``: FlashAttention's backward recomputes the scores and runs five matmuls against the forward's
  two (Dao, FlashAttention-2, arXiv 2307.08691 section 3.2): 2.5x the forward FLOP; reads q, k, v, o, dO and the
  log-sum-exp, writes dq, dk, dv.
- ``norm_bwd``, ``rope_bwd``, ``activation_bwd`` (SwiGLU), ``permute_bwd``: the memory-bound kernels' backward.
- ``cross_entropy`` / ``cross_entropy_bwd``: the loss over [tokens, vocab] logits (a vocab-parallel fused
  cross-entropy reads the logits and writes the loss; its backward reads them again and writes their gradient).
- ``quantize``, ``cast_transpose``, ``amax``: fp8 training's casts (`fp8_cast_ops`).

Units: FLOP, bytes; shapes [rows, columns].
"""

from __future__ import annotations

from dataclasses import replace

from moesim.model.op_record import Op, memory_op

#: Backward kinds of each forward kind (input gradient, weight gradient); None where there is none.
BACKWARD_KINDS: dict[str, tuple[str | None, str | None]] = {
    "gemm": ("gemm_dgrad", "gemm_wgrad"),
    "grouped_gemm": ("grouped_gemm_dgrad", "grouped_gemm_wgrad"),
    "attention": ("attention_bwd", None),
    "norm": ("norm_bwd", None),
    "rope": ("rope_bwd", None),
    "activation": ("activation_bwd", None),
    "permute": ("permute_bwd", None),
    "cross_entropy": ("cross_entropy_bwd", None),
}
#: The fp8 cast kinds.
FP8_KINDS = ("quantize", "cast_transpose", "amax")
#: Every training kernel kind: the tables `moesim profile --ops train` writes.
TRAIN_KINDS = (*(k for pair in BACKWARD_KINDS.values() for k in pair if k), "cross_entropy", *FP8_KINDS)
#: Bytes of an fp32 scale.
SCALE_BYTES = 4.0
#: fp8 elements per scale along a row: DeepSeek-V3's 1 x 128 activation tiles and 128 x 128 weight blocks (arXiv
#: 2412.19437 section 3.3.2, "Fine-Grained Quantization"); Transformer Engine's ``Float8BlockScaling`` recipe
#: (NVIDIA/TransformerEngine transformer_engine/common/recipe/__init__.py) uses the same blocks.
FP8_GROUP = 128


def gemm_dgrad(fwd: Op) -> Op:
    """The input gradient dA[m, k] = dC[m, n] @ B^T of a forward GEMM op (kind ``gemm``, shape m, n, k).

    Reads dC [m, n] and the weight [n, k] (in the forward's weight format), writes dA [m, k].
    """
    s = fwd.shape
    m, n, k = float(s["m"]) * float(s.get("batch", 1)), float(s["n"]), float(s["k"])
    ab, wb = float(s.get("a_bytes", 2.0)), float(s.get("w_bytes", 2.0))
    return replace(
        fwd, name=fwd.name + ".dgrad", kind="gemm_dgrad", flops=2.0 * m * n * k, weight_bytes=n * k * wb,
        kv_bytes=0.0, act_bytes=(m * n + m * k) * ab, intra_bytes=0.0, inter_bytes=0.0, intra_msgs=0, inter_msgs=0,
        kernels=1,
    )  # fmt: skip


def gemm_wgrad(fwd: Op) -> Op:
    """The weight gradient dB[k, n] = A^T @ dC of a forward GEMM op, accumulated into an fp32 main gradient.

    Reads A [m, k] and dC [m, n] (activation bytes), reads and writes the fp32 gradient [k, n] (8 bytes each).
    """
    s = fwd.shape
    m, n, k = float(s["m"]) * float(s.get("batch", 1)), float(s["n"]), float(s["k"])
    ab = float(s.get("a_bytes", 2.0))
    return replace(
        fwd, name=fwd.name + ".wgrad", kind="gemm_wgrad", flops=2.0 * m * n * k, weight_bytes=8.0 * n * k,
        kv_bytes=0.0, act_bytes=(m * n + m * k) * ab, intra_bytes=0.0, inter_bytes=0.0, intra_msgs=0, inter_msgs=0,
        kernels=1,
    )  # fmt: skip


def grouped_dgrad(fwd: Op) -> Op:
    """The experts' input gradients (both grouped GEMMs): the forward's FLOP, weights and activations."""
    return replace(fwd, name=fwd.name + ".dgrad", kind="grouped_gemm_dgrad")


def grouped_wgrad(fwd: Op) -> Op:
    """The experts' k-grouped weight gradients: the forward's FLOP and activations, fp32 gradients read and written
    (8 bytes per local expert weight) instead of the weights."""
    s = fwd.shape
    weights = fwd.weight_bytes / max(float(s.get("w_bytes", 2.0)), 1e-9)
    return replace(fwd, name=fwd.name + ".wgrad", kind="grouped_gemm_wgrad", weight_bytes=8.0 * weights)


def attention_bwd(fwd: Op) -> Op:
    """FlashAttention's backward: 2.5x the forward FLOP; reads q, k, v, o, dO (and the fp32 log-sum-exp), writes dq,
    dk, dv (module docstring). Bytes from the forward's: its activation bytes are q and o (2 tokens x heads x d)."""
    s = fwd.shape
    t, h, kvh, d = float(s["tokens"]), float(s["heads"]), float(s["kv_heads"]), float(s["head_dim"])
    ab = fwd.act_bytes / max(2.0 * t * h * d, 1.0)
    kv = float(s.get("kv_read", t)) * kvh * 2.0 * d * ab
    return replace(
        fwd, name=fwd.name + ".bwd", kind="attention_bwd", flops=2.5 * fwd.flops, weight_bytes=0.0,
        kv_bytes=2.0 * kv, act_bytes=(3.0 * t * h * d + 4.0 * t * h) * ab + t * h * d * ab, kernels=2,
    )  # fmt: skip


def norm_bwd(tokens: float, hidden: int, ab: float, dtype: str, group: str = "", name: str = "norm") -> Op:
    """RMSNorm backward over [tokens, hidden]: reads x and dy, writes dx; the weight gradient's per-block partial
    sums ([blocks, hidden] fp32) are reduced in a second kernel. 8 FLOP per element."""
    return memory_op(
        name + ".bwd", "norm_bwd", group, 1, flops=8.0 * tokens * hidden, read=2.0 * tokens * hidden * ab,
        written=tokens * hidden * ab, weight_bytes=hidden * 4.0, dtype=dtype,
        shape={"tokens": tokens, "hidden": hidden, "residual": 0}, kernels=2,
    )  # fmt: skip


def rope_bwd(tokens: float, heads: int, kv_heads: int, rot_dim: int, ab: float, dtype: str, group: str = "") -> Op:
    """Rotary backward: the inverse rotation of dq and dk (reads and writes [tokens, heads + kv_heads, rot_dim])."""
    n = tokens * (heads + kv_heads) * rot_dim
    return memory_op(
        "rope.bwd", "rope_bwd", group, 1, flops=3.0 * n, read=n * ab, written=n * ab, dtype=dtype,
        shape={"tokens": tokens, "heads": heads, "kv_heads": kv_heads, "rot_dim": rot_dim},
    )  # fmt: skip


def activation_bwd(rows: float, width: int, ab: float, dtype: str, group: str = "", name: str = "swiglu") -> Op:
    """SwiGLU backward: reads gate and up [rows, 2 width] and dy [rows, width], writes dgate and dup [rows, 2 width]
    (Transformer Engine's ``dswiglu``). 10 FLOP per output element (SiLU, its derivative, two products)."""
    return memory_op(
        name + ".bwd", "activation_bwd", group, 1, flops=10.0 * rows * width, read=3.0 * rows * width * ab,
        written=2.0 * rows * width * ab, dtype=dtype, shape={"tokens": rows, "width": width},
    )  # fmt: skip


def permute_bwd(fwd: Op) -> Op:
    """The backward of a permutation: a dispatch gather's is a scatter-add of the rows' gradients back to their
    tokens, a combine's is a gather (plus the routing weights' gradient, a row dot product). Same rows moved."""
    return replace(fwd, name=fwd.name + ".bwd", kind="permute_bwd")


def cross_entropy_op(tokens: float, vocab: int, ab: float, dtype: str, group: str = "head") -> Op:
    """The fused cross-entropy forward over [tokens, vocab] logits: reads them twice (max, then sum of exponents:
    Megatron-Core's vocab-parallel cross-entropy), writes the loss. 4 FLOP per logit."""
    n = tokens * vocab
    return memory_op(
        "cross_entropy", "cross_entropy", group, 1, flops=4.0 * n, read=2.0 * n * ab, written=tokens * 4.0,
        dtype=dtype, shape={"tokens": tokens, "vocab": vocab},
    )  # fmt: skip


def cross_entropy_bwd(fwd: Op) -> Op:
    """The cross-entropy backward: reads the logits, writes their gradient (softmax minus the one-hot target)."""
    t, v = float(fwd.shape["tokens"]), float(fwd.shape["vocab"])
    ab = fwd.act_bytes / max(2.0 * t * v, 1.0)
    return replace(fwd, name="cross_entropy.bwd", kind="cross_entropy_bwd", flops=3.0 * t * v, act_bytes=2 * t * v * ab)


def quantize_op(rows: float, width: int, ab: float, group_cols: int = FP8_GROUP, *, name: str = "quantize",
                group: str = "") -> Op:  # fmt: skip
    """Quantise [rows, width] from ``ab`` bytes to fp8 with one fp32 scale per ``group_cols`` elements of a row
    (``width``: per token; 128: DeepSeek-V3's 1 x 128 tiles): reads the row, takes the group's amax, writes fp8.
    Its arithmetic (amax, scale) runs in fp32: the roofline's dtype."""
    n = rows * width
    return memory_op(
        name, "quantize", group, 1, flops=3.0 * n, read=n * ab, written=n + n / group_cols * SCALE_BYTES,
        dtype="fp32", shape={"tokens": rows, "width": width, "group_cols": group_cols},
    )  # fmt: skip


def cast_transpose_op(rows: float, width: int, ab: float, group_cols: int = FP8_GROUP, *,
                      name: str = "cast_transpose", group: str = "") -> Op:  # fmt: skip
    """Cast [rows, width] to fp8 twice, row-wise and transposed (column-wise), with their scales: what an fp8
    weight gradient needs (its reduction runs over the rows). Transformer Engine's ``cast_transpose`` /
    ``quantize_transpose`` (transformer_engine/common/transpose/cast_transpose.cu)."""
    n = rows * width
    return memory_op(
        name, "cast_transpose", group, 1, flops=6.0 * n, read=n * ab, written=2.0 * (n + n / group_cols * SCALE_BYTES),
        dtype="fp32", shape={"tokens": rows, "width": width, "group_cols": group_cols},
    )  # fmt: skip


def amax_op(rows: float, width: int, ab: float, *, name: str = "amax", group: str = "") -> Op:
    """The absolute maximum of [rows, width] (a per-tensor scale's current amax): reads it once."""
    n = rows * width
    return memory_op(
        name, "amax", group, 1, flops=2.0 * n, read=n * ab, written=SCALE_BYTES, dtype="fp32",
        shape={"tokens": rows, "width": width},
    )  # fmt: skip
