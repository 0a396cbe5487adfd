"""The torch microbenchmarks: one function per op kind, shape in, timing out.

Each ``bench_*`` function builds its tensors for one grid point (a dict of the
kind's shape columns, `profiling.tables`), times the op with a `Timer`, and
returns the row to record: the shape, the time (s) and what the kernel did
(``flops``, ``bytes`` moved, and for grouped GEMMs the token counts per
expert). torch is imported here only: the simulator never needs it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from profiling.timing import Timer

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
Row = dict[str, Any]


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a moesim dtype name (fp32, fp16, bf16)."""
    return TORCH_DTYPES[dtype]


def _row(shape: Row, t: Any, impl: str, **extra: Any) -> Row:
    return {
        **shape,
        "impl": impl,
        "time_s": t.median_s,
        "time_p10_s": t.p10_s,
        "time_p90_s": t.p90_s,
        "reps": t.reps,
        **extra,
    }


def bench_gemm(shape: Row, dtype: str, device: str, timer: Timer) -> Row:
    """C[m, n] = A[m, k] @ B[k, n] (fp8 on CUDA through ``torch._scaled_mm``)."""
    m, n, k = shape["m"], shape["n"], shape["k"]
    if dtype == "fp8":
        a = torch.randn(m, k, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device=device).to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=device)
        t = timer(lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16))
    else:
        td = torch_dtype(dtype)
        a, b = torch.randn(m, k, device=device, dtype=td), torch.randn(k, n, device=device, dtype=td)
        t = timer(lambda: torch.mm(a, b))
    return _row(shape, t, "torch", flops=2.0 * m * n * k)


def expert_counts(pairs: int, experts: int, distribution: str, seed: int = 0) -> np.ndarray:
    """Token-expert pairs per local expert, [experts] ints summing to ``pairs``.

    ``balanced``: as equal as integers allow. ``power:a``: expert of rank r
    (1-based, in a random order) receives pairs with probability
    proportional to r^-a (a multinomial draw, seeded).
    """
    if distribution == "balanced":
        counts = np.full(experts, pairs // experts)
        counts[: pairs % experts] += 1
        return counts
    if not distribution.startswith("power:"):
        raise ValueError(f"unknown distribution '{distribution}' (use balanced or power:<exponent>)")
    a = float(distribution.split(":", 1)[1])
    rng = np.random.default_rng(seed)
    p = np.arange(1, experts + 1, dtype=float) ** -a
    return rng.multinomial(pairs, rng.permutation(p / p.sum()))


def _moe_tensors(shape: Row, dtype: str, device: str) -> tuple[Any, ...]:
    local = shape["experts"] // shape["ep"]
    width = shape["inter"] // shape["moe_tp"]
    h = shape["hidden"]
    pairs = max(1, round(shape["tokens"] * shape["top_k"] / shape["ep"]))
    counts = expert_counts(pairs, local, shape.get("distribution", "balanced"))
    td = torch_dtype(dtype)
    w13 = torch.randn(local, 2 * width, h, device=device, dtype=td) / h**0.5
    w2 = torch.randn(local, h, width, device=device, dtype=td) / width**0.5
    return counts, w13, w2, width, td


def _moe_extra(counts: np.ndarray, width: int, h: int) -> Row:
    pairs = int(counts.sum())
    return {
        "pairs": pairs,
        "active_experts": int((counts > 0).sum()),
        "max_expert_tokens": int(counts.max()),
        "expert_counts": [int(c) for c in counts],
        "flops": 6.0 * pairs * h * width,
    }


def bench_grouped_gemm(shape: Row, dtype: str, device: str, timer: Timer) -> Row:
    """Routed experts on tokens already sorted by expert: a loop of per-expert GEMMs.

    For every local expert with tokens: [n_e, hidden] @ [hidden, 2 width],
    SiLU(gate) * up, then [n_e, width] @ [width, hidden]; the pattern of
    engines' unfused MoE fallback.
    """
    counts, w13, w2, width, td = _moe_tensors(shape, dtype, device)
    x = torch.randn(int(counts.sum()), shape["hidden"], device=device, dtype=td)
    out = torch.empty_like(x)
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    live = [e for e in range(len(counts)) if counts[e]]

    def run() -> None:
        for e in live:
            s, f = bounds[e], bounds[e + 1]
            y = x[s:f] @ w13[e].t()
            out[s:f] = (F.silu(y[:, :width]) * y[:, width:]) @ w2[e].t()

    t = timer(run)
    return _row(shape, t, "torch_loop", **_moe_extra(counts, width, shape["hidden"]))


def bench_grouped_gemm_triton(shape: Row, dtype: str, device: str, timer: Timer) -> Row:
    """The same layer through our Triton fused-MoE kernel (`profiling.triton_moe`)."""
    from profiling.triton_moe import triton_moe

    counts, w13, w2, width, td = _moe_tensors(shape, dtype, device)
    k = shape["top_k"]
    ids = np.repeat(np.arange(len(counts)), counts)
    ids = np.concatenate([ids, ids[: (-len(ids)) % k]])  # whole tokens of k pairs
    ids = np.random.default_rng(0).permutation(ids)
    topk_ids = torch.as_tensor(ids.reshape(-1, k), device=device, dtype=torch.int32)
    x = torch.randn(topk_ids.shape[0], shape["hidden"], device=device, dtype=td)
    weights = torch.full(topk_ids.shape, 1.0 / k, device=device, dtype=torch.float32)
    t = timer(lambda: triton_moe(x, w13, w2, weights, topk_ids))
    counts = np.bincount(ids, minlength=len(counts))
    return _row(shape, t, "triton", **_moe_extra(counts, width, shape["hidden"]))


def bench_attention(shape: Row, dtype: str, device: str, timer: Timer) -> Row:
    """torch SDPA: causal when q_len == kv_len (prefill), else the new tokens attend to all kv_len."""
    b, lq, lk = shape["batch"], shape["q_len"], shape["kv_len"]
    h, kvh, d = shape["heads"], shape["kv_heads"], shape["head_dim"]
    td = torch_dtype(dtype)
    q = torch.randn(b, h, lq, d, device=device, dtype=td)
    k = torch.randn(b, kvh, lk, d, device=device, dtype=td)
    v = torch.randn(b, kvh, lk, d, device=device, dtype=td)
    causal = lq == lk and lq > 1
    gqa = kvh != h
    t = timer(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa))
    pairs = b * (lq * (lq + 1) / 2 if causal else lq * lk)
    return _row(shape, t, "torch_sdpa", flops=4.0 * pairs * h * d)


def bench_router(shape: Row, dtype: str, device: str, timer: Timer) -> Row:
    """Router: logits = x @ W^T, softmax in fp32, top-k."""
    t_, h, e, k = shape["tokens"], shape["hidden"], shape["experts"], shape["top_k"]
    td = torch_dtype(dtype)
    x, w = torch.randn(t_, h, device=device, dtype=td), torch.randn(e, h, device=device, dtype=td)
    t = timer(lambda: torch.topk(torch.softmax((x @ w.t()).float(), dim=-1), k, dim=-1))
    return _row(shape, t, "torch", flops=2.0 * t_ * h * e)


def bench_permute(shape: Row, dtype: str, device: str, timer: Timer) -> Row:
    """Dispatch: gather token rows into expert order; combine: weighted scatter-add back."""
    t_, h, k = shape["tokens"], shape["hidden"], shape["top_k"]
    td = torch_dtype(dtype)
    order = torch.randperm(t_ * k, device=device)
    src_token = order // k
    if shape["direction"] == "dispatch":
        x = torch.randn(t_, h, device=device, dtype=td)
        t = timer(lambda: x.index_select(0, src_token))
    else:
        y = torch.randn(t_ * k, h, device=device, dtype=td)
        w = torch.rand(t_ * k, 1, device=device, dtype=td)
        out = torch.zeros(t_, h, device=device, dtype=td)
        t = timer(lambda: out.zero_().index_add_(0, src_token, y * w))
    return _row(shape, t, "torch", bytes_moved=2.0 * t_ * k * h * torch.finfo(td).bits / 8)


def bench_memcpy(shape: Row, dtype: str, device: str, timer: Timer) -> Row:
    """A device-to-device copy of ``bytes`` bytes (read + write = 2 x bytes moved)."""
    n = max(1, shape["bytes"] // 4)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src))
    return _row(shape, t, "torch", bytes_moved=2.0 * n * 4)


BENCHES = {
    "gemm": bench_gemm,
    "grouped_gemm": bench_grouped_gemm,
    "attention": bench_attention,
    "router": bench_router,
    "permute": bench_permute,
    "memcpy": bench_memcpy,
}
