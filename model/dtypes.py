"""Data types: storage bytes per element and which peak FLOP/s a GEMM uses.

Weight formats are stored as their real footprint including scales:

- ``int4``: 4-bit weights with one fp16 scale per group of 128 (GPTQ/AWQ
  symmetric, W4A16): 0.5 + 2/128 bytes per weight.
- ``fp4``: MXFP4 (OCP microscaling, as gpt-oss ships its experts): 4-bit
  values with one 8-bit scale per 32: 0.5 + 1/32 bytes per weight.
- ``fp8``: e4m3 with per-block scales (128x128 fp32 blocks cost 4/16384 bytes
  per weight, ignored).
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

#: Weight dtypes a user may pick for the linear layers.
WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "int4", "fp4")
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
    """

    weights: str = "bf16"
    kv_cache: str = "bf16"

    def __post_init__(self) -> None:
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
        """Bytes per linear-layer weight, scales included."""
        return DTYPE_BYTES[self.weights]

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
