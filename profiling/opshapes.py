"""Table rows as `model.ops.Op`s, and the features a calibrated predictor reads from an op.

A measured row and an op of a simulated step go through the same two
functions: `row_ops` turns each table row into the `Op` the simulator would
build for that shape (same FLOPs, bytes and ``shape`` keys), and `features`
reads the predictor's coordinates from any op. Features are log2 of sizes,
so one unit is a doubling.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd

from moesim.model import train_ops
from moesim.model.attention_ops import kv_write_op, rope_op
from moesim.model.dtypes import DTYPE_BYTES, FP8_BLOCK_SCALE_BYTES, WEIGHT_DTYPES, Precision
from moesim.model.ops import (
    Op,
    act_op,
    collective,
    experts_gemms,
    experts_op,
    fused_moe_op,
    gemm,
    norm_op,
    sampler_op,
    topk_op,
)
from moesim.profiling.tables import COLLECTIVES, TableError

#: Alignments (elements) the grouped GEMM's flags test its expert width and hidden size against.
ALIGN = (16, 64, 128)
_ALIGN_FLAGS = tuple(f"{d}{a}" for d in ("inter", "hidden") for a in ALIGN)
#: Feature names per op kind: log2 of sizes, except ``direction`` (0 dispatch, 1 combine) and
#: ``aligned4``/``aligned16`` (1 when m is a multiple of 4 / 16: GEMM libraries pick faster
#: kernels for aligned rows; in the H100 reference data an fp8 block-scaled GEMM of 257 rows
#: takes 1.4x the time of one of 256), and the grouped GEMM's ``inter16``... ``hidden128``
#: (1 when the expert width after the TP split / the hidden size is a multiple of 16, 64, 128:
#: the fused-MoE kernel tiles N and K in blocks of 64-128 and loads 16-byte vectors, so a width
#: of 84 or 168 leaves partial tiles and unaligned loads; `ALIGN`).
FEATURES: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k", "aligned4", "aligned16"),
    "grouped_gemm": ("pairs_per_expert", "active_experts", "hidden", "inter", "routed", *_ALIGN_FLAGS),
    "attention": ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim"),
    "router": ("tokens", "hidden", "experts", "top_k"),
    "permute": ("tokens", "hidden", "top_k", "direction"),
    "memcpy": ("bytes",),
    "norm": ("tokens", "hidden", "residual"),
    "rope": ("tokens", "heads", "kv_heads", "rot_dim"),
    "activation": ("tokens", "width"),
    "kv_write": ("tokens", "width"),
    "topk_softmax": ("tokens", "experts", "top_k"),
    "sampling": ("sequences", "vocab", "random"),
    **{c: ("bytes", "gpus") for c in COLLECTIVES},
    # training's kernels (`model.train_ops`): the backward kinds take their forward kind's features
    "gemm_dgrad": ("m", "n", "k", "aligned4", "aligned16"),
    "gemm_wgrad": ("m", "n", "k", "aligned4", "aligned16"),
    "grouped_gemm_dgrad": ("pairs_per_expert", "active_experts", "hidden", "inter", "routed", *_ALIGN_FLAGS),
    "grouped_gemm_wgrad": ("pairs_per_expert", "active_experts", "hidden", "inter", "routed", *_ALIGN_FLAGS),
    "attention_bwd": ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim"),
    "norm_bwd": ("tokens", "hidden"),
    "rope_bwd": ("tokens", "heads", "kv_heads", "rot_dim"),
    "activation_bwd": ("tokens", "width"),
    "permute_bwd": ("tokens", "hidden", "top_k", "direction"),
    "cross_entropy": ("tokens", "vocab"),
    "cross_entropy_bwd": ("tokens", "vocab"),
    "quantize": ("tokens", "width", "group_cols"),
    "cast_transpose": ("tokens", "width", "group_cols"),
    "amax": ("tokens", "width"),
}
#: Kinds whose features are their forward kind's (`features`).
_AS_FORWARD = {
    "gemm_dgrad": "gemm", "gemm_wgrad": "gemm", "grouped_gemm_dgrad": "grouped_gemm",
    "grouped_gemm_wgrad": "grouped_gemm", "attention_bwd": "attention", "permute_bwd": "permute",
}  # fmt: skip
_BYTES_TO_DTYPE = {4.0: "fp32", 0.5 + 2.0 / 128.0: "int4", 1.0 + FP8_BLOCK_SCALE_BYTES: "fp8_block"}
_FP4 = DTYPE_BYTES["fp4"]

#: Table dtypes that are not a `model.dtypes` weight dtype: the quantisation scheme a kernel table measured,
#: as (the weight dtype whose bytes the row's op carries, the peak its math runs at). Each stays its own fit:
#: ``fp8_block`` (fp8 weights in 128 x 128 blocks, activations in 1 x 128 groups), ``w4a16_mxfp4`` (MXFP4
#: weights, 16-bit math: gpt-oss's experts on Hopper), ``w4a8_mxfp4_mxfp8`` (MXFP4 weights, MXFP8
#: activations), ``nvfp4`` (4-bit weights and activations, fp8 scale per 16: timed with MXFP4's bytes,
#: 3% fewer), ``int8_wo`` (W8A16), ``w4afp8`` (int4 weights, fp8 activations). The last four are imported
#: and fitted, and no moesim precision runs them yet. Names: AIConfigurator's quant modes
#: (ai-dynamo/aiconfigurator@032de3f src/aiconfigurator/sdk/common.py, GEMMQuantMode, MoEQuantMode).
TABLE_DTYPES: dict[str, tuple[str, str]] = {
    "fp8_block": ("fp8_block", "fp8"),
    "w4a16_mxfp4": ("fp4", "bf16"),
    "w4a8_mxfp4_mxfp8": ("fp4", "fp8"),
    "nvfp4": ("fp4", "fp4"),
    "int8_wo": ("int8", "bf16"),
    "w4afp8": ("int4", "fp8"),
}


def check_dtypes(df: pd.DataFrame, where: object) -> None:
    """Raise `TableError` (one line naming ``where`` and the values) unless every row's ``dtype`` is one the cost
    model can map to a kernel: a `model.dtypes` name or a `TABLE_DTYPES` scheme."""
    bad = sorted(set(df["dtype"].astype(str)) - set(DTYPE_BYTES) - set(TABLE_DTYPES))
    if bad:
        raise TableError(
            f"{where}: dtype {', '.join(map(repr, bad))} is no kernel moesim can map",
            f"use one of {', '.join([*DTYPE_BYTES, *TABLE_DTYPES])} (profiling/opshapes.py TABLE_DTYPES)",
        )


def _act_bytes(dtype: str) -> float:
    return 4.0 if dtype == "fp32" else 2.0


def _compute_dtype(dtype: str) -> str:
    """The peak a kernel of table ``dtype`` runs at (int4 is W4A16: 16-bit math)."""
    if dtype in TABLE_DTYPES:
        return TABLE_DTYPES[dtype][1]
    return {"int4": "bf16", "fp4": "fp4", "int8": "int8"}.get(dtype, dtype)


def _weight_precision(dtype: str) -> Precision:
    """The precision whose weight bytes a table ``dtype``'s op carries (16-bit for a non-weight dtype)."""
    weights = TABLE_DTYPES[dtype][0] if dtype in TABLE_DTYPES else dtype
    return Precision(weights=weights) if weights in WEIGHT_DTYPES else Precision()


def table_dtype(op: Op) -> str:
    """The dtype a measured table must have to time ``op``: its weights' format for GEMMs, else its own.

    The weights' bytes (scales included, `model.dtypes`) tell the formats apart: fp8 with block scales is
    ``fp8_block``, never the per-tensor ``fp8`` kernel's table; MXFP4 weights with 16-bit math (where the GPU
    has no fp4 peak) are ``w4a16_mxfp4``.
    """
    wb = op.shape.get("w_bytes")
    if wb is None:
        return op.dtype
    if wb in _BYTES_TO_DTYPE:
        return _BYTES_TO_DTYPE[wb]
    if wb == _FP4:
        return "fp4" if op.dtype == "fp4" else "w4a16_mxfp4"
    if wb == 1.0:
        return "int8" if op.dtype == "int8" else "fp8"
    return op.dtype if op.dtype in ("bf16", "fp16") else "bf16"


def _grouped(r: dict, dtype: str) -> Op:
    moe_tp, ep = int(r.get("moe_tp", 1) or 1), int(r.get("ep", 1) or 1)
    width = int(r["inter"]) // moe_tp
    p = _weight_precision(dtype)
    op = experts_op(
        float(r["tokens"]), int(r["hidden"]), width, int(r["top_k"]), int(r["experts"]), ep, p,
        _compute_dtype(dtype), moe_tp=moe_tp, balanced=True,
    )  # fmt: skip
    pairs, active = r.get("pairs"), r.get("active_experts")
    if pairs is None or (isinstance(pairs, float) and math.isnan(pairs)):
        return op
    pairs, active = float(pairs), float(active)
    return fused_moe_op(
        float(r["tokens"]), pairs, active, int(r["hidden"]), width, int(r["top_k"]), int(r["experts"]), ep,
        p.weight_bytes, p.activation_bytes, op.dtype, moe_tp=moe_tp,
    )  # fmt: skip


def _attention(r: dict, dtype: str) -> Op:
    b, lq, lk = int(r["batch"]), int(r["q_len"]), int(r["kv_len"])
    h, kvh, d = int(r["heads"]), int(r["kv_heads"]), int(r["head_dim"])
    pairs = b * (lq * (lk - lq) + lq * (lq + 1) // 2)
    t, kv_read, ab = b * lq, b * lk, _act_bytes(dtype)
    return Op(
        "attention", "attention", "", 1,
        flops=2.0 * pairs * h * 2 * d,
        weight_bytes=0.0,
        kv_bytes=kv_read * kvh * 2 * d * ab,  # reads the cache; the new tokens' write is `kv_write`
        act_bytes=t * h * 2 * d * ab,
        dtype=dtype,
        shape={"batch": b, "tokens": t, "kv_read": kv_read, "pairs": pairs, "heads": h, "kv_heads": kvh, "head_dim": d},
    )  # fmt: skip


def _precision(dtype: str) -> Precision:
    """The precision whose activations are ``dtype`` (fp32 or 16-bit)."""
    return Precision(weights="fp32") if dtype == "fp32" else Precision()


#: The engine kernels' rows as the ops `model.ops.decompose` builds (same builders, same FLOPs and bytes).
_ENGINE_ROWS = {
    "norm": lambda r, dt, ab: norm_op(
        "norm", "", 1, int(r["tokens"]), int(r["hidden"]), _precision(dt), residual=bool(int(r["residual"]))
    ),
    "rope": lambda r, dt, ab: rope_op(
        "", 1, int(r["tokens"]), int(r["heads"]), int(r["kv_heads"]), int(r["rot_dim"]), ab, dt
    ),
    "activation": lambda r, dt, ab: act_op("activation", "", 1, int(r["tokens"]), int(r["width"]), ab, dt),
    "kv_write": lambda r, dt, ab: kv_write_op("", 1, int(r["tokens"]), int(r["width"]), ab, ab, dt),
    "topk_softmax": lambda r, dt, ab: topk_op("", 1, int(r["tokens"]), int(r["experts"]), int(r["top_k"])),
    "sampling": lambda r, dt, ab: _sampling_row(r, dt, ab),
}


def _sampling_row(r: dict, dtype: str, ab: float) -> Op:
    rule = str(r.get("sampling", "greedy"))
    return sampler_op(int(r["sequences"]), int(r["vocab"]), ab, rule, dtype)


def _train_row(kind: str, r: dict, dtype: str, ab: float) -> Op:
    """The `Op` of a training kernel's row (`model.train_ops`): a backward kind is built from its forward row."""
    if kind in ("gemm_dgrad", "gemm_wgrad"):
        fwd = row_op("gemm", r)
        return train_ops.gemm_dgrad(fwd) if kind == "gemm_dgrad" else train_ops.gemm_wgrad(fwd)
    if kind in ("grouped_gemm_dgrad", "grouped_gemm_wgrad"):
        fwd = experts_gemms(_grouped(r, dtype))
        return train_ops.grouped_dgrad(fwd) if kind == "grouped_gemm_dgrad" else train_ops.grouped_wgrad(fwd)
    if kind == "attention_bwd":
        return train_ops.attention_bwd(_attention(r, dtype))
    if kind == "permute_bwd":
        return train_ops.permute_bwd(row_op("permute", r))
    t = float(r["tokens"])
    if kind == "norm_bwd":
        return train_ops.norm_bwd(t, int(r["hidden"]), ab, dtype)
    if kind == "rope_bwd":
        return train_ops.rope_bwd(t, int(r["heads"]), int(r["kv_heads"]), int(r["rot_dim"]), ab, dtype)
    if kind == "activation_bwd":
        return train_ops.activation_bwd(t, int(r["width"]), ab, dtype)
    if kind in ("cross_entropy", "cross_entropy_bwd"):
        fwd = train_ops.cross_entropy_op(t, int(r["vocab"]), ab, dtype)
        return fwd if kind == "cross_entropy" else train_ops.cross_entropy_bwd(fwd)
    group_cols = int(r.get("group_cols", train_ops.FP8_GROUP) or train_ops.FP8_GROUP)
    if kind == "quantize":
        return train_ops.quantize_op(t, int(r["width"]), ab, group_cols)
    if kind == "cast_transpose":
        return train_ops.cast_transpose_op(t, int(r["width"]), ab, group_cols)
    return train_ops.amax_op(t, int(r["width"]), ab)


def row_op(kind: str, r: dict) -> Op:
    """The `Op` of one table row (a dict of its columns)."""
    dtype = str(r["dtype"])
    ab = _act_bytes(dtype)
    if kind in train_ops.TRAIN_KINDS:
        return _train_row(kind, r, dtype, ab)
    if kind == "gemm":
        m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
        wb = _weight_precision(dtype).weight_bytes if dtype in TABLE_DTYPES else DTYPE_BYTES.get(dtype, 2.0)
        return gemm("gemm", "", 1, m, n, k, wb, ab, _compute_dtype(dtype))
    if kind == "grouped_gemm":
        return _grouped(r, dtype)
    if kind == "attention":
        return _attention(r, dtype)
    if kind == "router":
        t, h, e = int(r["tokens"]), int(r["hidden"]), int(r["experts"])
        return Op(
            "router", "router", "", 1, flops=2.0 * t * h * e, weight_bytes=h * e * ab, kv_bytes=0.0,
            act_bytes=t * h * ab + t * e * 4.0, dtype=dtype,
            shape={"tokens": t, "experts": e, "hidden": h, "top_k": int(r["top_k"])},
        )  # fmt: skip
    if kind == "permute":
        t, h, k = int(r["tokens"]), int(r["hidden"]), int(r["top_k"])
        return Op(
            "permute", "permute", "", 1, flops=0.0, weight_bytes=0.0, kv_bytes=0.0,
            act_bytes=2.0 * t * k * h * ab, dtype=dtype,
            shape={"tokens": t, "hidden": h, "top_k": k, "direction": str(r["direction"])},
        )  # fmt: skip
    if kind in _ENGINE_ROWS:
        return _ENGINE_ROWS[kind](r, dtype, ab)
    if kind == "memcpy":
        n = float(r["bytes"])
        return Op("memcpy", "memcpy", "", 1, 0.0, 0.0, 0.0, 2.0 * n, dtype=dtype, shape={"bytes": n})
    if kind in COLLECTIVES:
        g, n = int(r["gpus"]), float(r["bytes"])
        if kind == "all_to_all":
            return Op(
                "all_to_all", kind, "", 1, 0.0, 0.0, 0.0, 0.0, intra_bytes=n * (g - 1) / g,
                intra_msgs=1 if g > 1 else 0, shape={"bytes": n, "gpus": g},
            )  # fmt: skip
        op = collective(kind, kind, "", 1, n, g, g)
        if op is None:
            return Op(kind, kind, "", 1, 0.0, 0.0, 0.0, 0.0, shape={"bytes": n, "gpus": g})
        return op
    raise ValueError(f"unknown op kind {kind}")


def row_ops(kind: str, df: pd.DataFrame) -> list[Op]:
    """`row_op` over every row of a table of one kind."""
    return [row_op(kind, r) for r in df.to_dict("records")]


def _log2(x: float) -> float:
    return math.log2(max(float(x), 1e-9))


def features(op: Op) -> tuple[float, ...] | None:
    """The predictor's coordinates of ``op`` (`FEATURES`), or None when its shape lacks them."""
    if op.kind in _AS_FORWARD:
        return features(replace(op, kind=_AS_FORWARD[op.kind]))
    s = op.shape
    try:
        if op.kind in ("quantize", "cast_transpose"):
            return (_log2(s["tokens"]), _log2(s["width"]), _log2(s.get("group_cols", train_ops.FP8_GROUP)))
        if op.kind in ("norm_bwd", "rope_bwd", "activation_bwd", "cross_entropy", "cross_entropy_bwd", "amax"):
            return tuple(_log2(s[c]) for c in FEATURES[op.kind])
        if op.kind == "gemm":
            m = int(s["m"]) * int(s.get("batch", 1))
            return (_log2(m), _log2(s["n"]), _log2(s["k"]), float(m % 4 == 0), float(m % 16 == 0))
        if op.kind == "grouped_gemm":
            active = max(float(s["active_experts"]), 1.0)
            routed = s["tokens"] * s["top_k"]
            sizes = (_log2(s["pairs"] / active), _log2(active), _log2(s["hidden"]), _log2(s["inter"]), _log2(routed))
            inter, hidden = int(s["inter"]), int(s["hidden"])
            return sizes + tuple(float(inter % a == 0) for a in ALIGN) + tuple(float(hidden % a == 0) for a in ALIGN)
        if op.kind == "attention":
            b = max(int(s["batch"]), 1)
            return tuple(
                _log2(v) for v in (b, s["tokens"] / b, s["kv_read"] / b, s["heads"], s["kv_heads"], s["head_dim"])
            )
        if op.kind == "router":
            return tuple(_log2(s[c]) for c in ("tokens", "hidden", "experts", "top_k"))
        if op.kind == "permute":
            return (_log2(s["tokens"]), _log2(s["hidden"]), _log2(s["top_k"]), float(s["direction"] == "combine"))
        if op.kind == "sampling":
            return (_log2(s["sequences"]), _log2(s["vocab"]), float(s.get("sampling") == "random"))
        if op.kind == "norm":
            return (_log2(s["tokens"]), _log2(s["hidden"]), float(s["residual"]))
        if op.kind in FEATURES and op.kind in _ENGINE_ROWS:
            return tuple(_log2(s[c]) for c in FEATURES[op.kind])
        if op.kind in ("memcpy", *COLLECTIVES):
            if "bytes" not in s:
                return None
            return (_log2(s["bytes"]),) if op.kind == "memcpy" else (_log2(s["bytes"]), _log2(s["gpus"]))
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return None


#: Features that are flags, not sizes: the measured-range check skips them.
FLAGS = {"direction", "aligned4", "aligned16", "residual", "random", *_ALIGN_FLAGS}


def feature_matrix(ops: list[Op]) -> np.ndarray:
    """Features of ``ops`` stacked: [len(ops), n_features] float."""
    return np.array([features(op) for op in ops], dtype=float)
