"""Data types: storage bytes per element and which peak FLOP/s a GEMM uses.

Weight formats are stored as their real footprint including scales:

- ``int4``: 4-bit weights with one fp16 scale per group of 128 (GPTQ/AWQ
  symmetric, W4A16): 0.5 + 2/128 bytes per weight.
- ``fp4``: MXFP4 (OCP microscaling, as gpt-oss ships its experts): 4-bit
  values with one 8-bit scale per 32: 0.5 + 1/32 bytes per weight.
- ``fp8``: e4m3 (W8A8). Its scales are one kernel or another (`Precision.fp8_scaling`):
  ``tensor`` (the default: one fp32 scale per tensor or per output channel,
  vLLM's ``--quantization fp8`` and per-tensor FP8 checkpoints; their bytes are
  ignored) or ``block`` (one fp32 scale per 128 x 128 weight block and per
  1 x 128 activation group, as DeepSeek-V3 and Qwen3-FP8 ship: their
  ``quantization_config`` says ``weight_block_size: [128, 128]``; 4/16384 bytes
  per weight, `FP8_BLOCK_SCALE_BYTES`). ``weights: fp8_block`` is short for
  ``weights: fp8, fp8_scaling: block``. The weight bytes tell the two apart
  downstream, so the cost model times each with its own kernel's table.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.model.errors import MoesimError

#: Bytes per element of each supported dtype (weights include their scales).
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5 + 2.0 / 128.0,
    "fp4": 0.5 + 1.0 / 32.0,
}

#: Weight dtypes a user may pick for the linear layers (``fp8_block``: fp8 with block scales, see the module docstring).
WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "fp8", "fp8_block", "int8", "int4", "fp4")
#: Bytes per fp8 weight of block scaling: one fp32 scale per 128 x 128 block (DeepSeek-V3's
#: ``weight_block_size: [128, 128]``; vLLM's block-scaled fp8 path, ``Fp8LinearMethod`` with ``weight_block_size``).
FP8_BLOCK_SCALE_BYTES = 4.0 / (128 * 128)
#: How fp8 weights are scaled: ``tensor`` (per tensor or per channel) or ``block`` (128 x 128).
FP8_SCALINGS = ("tensor", "block")
#: KV-cache dtypes.
KV_DTYPES = ("fp32", "bf16", "fp16", "fp8")


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype``; raises `MoesimError` for unknown names."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise MoesimError(f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class Precision:
    """The dtypes of one deployment.

    Attributes:
        weights: dtype of the linear layers' weights (attention projections,
            dense FFN, routed and shared experts). Embeddings, the LM head,
            the router and norms stay in 16-bit (fp32 when ``weights`` is
            fp32), as quantized checkpoints keep them.
        kv_cache: dtype of the KV cache.
        fp8_scaling: for fp8 weights, ``tensor`` (default) or ``block`` (`FP8_SCALINGS`): which kernel runs
            them, and 4/16384 more bytes per weight for ``block``. ``weights="fp8_block"`` sets ``fp8`` and
            ``block``.
    """

    weights: str = "bf16"
    kv_cache: str = "bf16"
    fp8_scaling: str = "tensor"

    def __post_init__(self) -> None:
        if self.weights == "fp8_block":
            object.__setattr__(self, "weights", "fp8")
            object.__setattr__(self, "fp8_scaling", "block")
        if self.fp8_scaling not in FP8_SCALINGS:
            raise MoesimError(f"unknown fp8_scaling '{self.fp8_scaling}'", f"use one of {', '.join(FP8_SCALINGS)}")
        if self.fp8_scaling == "block" and self.weights != "fp8":
            raise MoesimError(
                f"fp8_scaling 'block' with {self.weights} weights", "block scaling applies to fp8 weights only"
            )
        if self.weights not in WEIGHT_DTYPES:
            raise MoesimError(f"unknown weight dtype '{self.weights}'", f"use one of {', '.join(WEIGHT_DTYPES)}")
        if self.kv_cache not in KV_DTYPES:
            raise MoesimError(f"unknown KV-cache dtype '{self.kv_cache}'", f"use one of {', '.join(KV_DTYPES)}")

    @property
    def activations(self) -> str:
        """Activation dtype: fp32 for fp32 weights, else bf16."""
        return "fp32" if self.weights == "fp32" else "bf16"

    @property
    def weight_bytes(self) -> float:
        """Bytes per linear-layer weight, scales included (fp8 block scales too)."""
        return DTYPE_BYTES[self.weights] + (FP8_BLOCK_SCALE_BYTES if self.fp8_scaling == "block" else 0.0)

    @property
    def unquantized_bytes(self) -> float:
        """Bytes per embedding, LM-head, router or norm weight."""
        return DTYPE_BYTES[self.activations]

    @property
    def activation_bytes(self) -> float:
        """Bytes per activation element."""
        return DTYPE_BYTES[self.activations]

    @property
    def kv_bytes(self) -> float:
        """Bytes per KV-cache element."""
        return DTYPE_BYTES[self.kv_cache]

    def gemm_compute_dtype(self, peak_flops: dict[str, float]) -> str:
        """The dtype whose peak a linear layer's GEMM runs at on this hardware.

        W8A8 (fp8, int8) and fp4 run at their own peak where the hardware has
        one; otherwise, and always for int4 (W4A16), weights are dequantized
        and the GEMM runs at the 16-bit peak.
        """
        if self.weights == "fp32":
            return "fp32"
        if self.weights in ("fp8", "int8", "fp4") and self.weights in peak_flops:
            return self.weights
        return "bf16"

    def attention_compute_dtype(self) -> str:
        """Attention (QK^T, PV) runs at the activation dtype's peak."""
        return self.activations
