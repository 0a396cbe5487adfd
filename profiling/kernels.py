"""The torch microbenchmarks: one function per op kind, shape in, a timed callable out.

Each ``prepare_*`` function sets up one grid point (a dict of the kind's shape
columns, `profiling.tables`) and returns the callable to time with what the
kernel does (``flops``, ``bytes_moved``, and for grouped GEMMs the token
counts per expert). Operands are views of one random buffer per dtype
(`Pool`), so setting a shape up costs no allocation and a grid can be swept
several times cheaply (`profiling.runner` times it in interleaved passes).
torch is imported here only: the simulator never needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
Row = dict[str, Any]
Prepared = tuple[Callable[[], Any], Row]


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a moesim dtype name (fp32, fp16, bf16)."""
    return TORCH_DTYPES[dtype]


class Pool:
    """Random operands without allocation: views of one N(0, 1) buffer per dtype, grown on demand."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._buffers: dict[torch.dtype, torch.Tensor] = {}

    def reserve(self, n: int, dtype: torch.dtype = torch.float32) -> None:
        """Grow the ``dtype`` buffer to at least ``n`` elements now, so that the operands taken next (up to ``n``
        elements in all) are views of one buffer, not of two or three grown one after another."""
        self.get(n, dtype=dtype)

    def get(self, *shape: int, dtype: torch.dtype = torch.float32, offset: int = 0) -> torch.Tensor:
        """A contiguous [shape] tensor of random values starting ``offset`` elements into the buffer."""
        n = int(np.prod(shape))
        buf = self._buffers.get(dtype)
        if buf is None or buf.numel() < offset + n:
            need = offset + n
            size = max(need, 2 * (buf.numel() if buf is not None else 0), 2**20)
            self._buffers.pop(dtype, None)
            buf = None  # views handed out before keep the old buffer while they live; the pool lets go of it
            # drawn in the dtype itself (an fp32 draw converted afterwards needs 3x the memory of a 16-bit pool);
            # where doubling does not fit the GPU, exactly what is needed: a 32 GiB KV cache on an 80 GB H100
            try:
                buf = torch.randn(size, device=self.device, dtype=dtype)
            except torch.cuda.OutOfMemoryError:
                if size == need:
                    raise
                torch.cuda.empty_cache()
                buf = torch.randn(need, device=self.device, dtype=dtype)
            self._buffers[dtype] = buf
        return buf[offset : offset + n].view(*shape)


def prepare_gemm(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """C[m, n] = A[m, k] @ B[k, n] (fp8 on CUDA through ``torch._scaled_mm``)."""
    m, n, k = shape["m"], shape["n"], shape["k"]
    extra = {"flops": 2.0 * m * n * k, "impl": "torch"}
    if dtype == "fp8":
        a = pool.get(m, k).to(torch.float8_e4m3fn)
        b = pool.get(n, k, offset=m * k).to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=pool.device)
        return (lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16)), extra
    td = torch_dtype(dtype)
    a, b = pool.get(m, k, dtype=td), pool.get(k, n, dtype=td, offset=m * k)
    return (lambda: torch.mm(a, b)), extra


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


def _moe_operands(shape: Row, dtype: str, pool: Pool) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, int]:
    local = shape["experts"] // shape["ep"]
    width = shape["inter"] // shape["moe_tp"]
    h = shape["hidden"]
    pairs = max(1, round(shape["tokens"] * shape["top_k"] / shape["ep"]))
    counts = expert_counts(pairs, local, shape.get("distribution", "balanced"))
    td = torch_dtype(dtype)
    w13 = pool.get(local, 2 * width, h, dtype=td)
    w2 = pool.get(local, h, width, dtype=td, offset=w13.numel())
    return counts, w13, w2, width


def _moe_extra(counts: np.ndarray, width: int, h: int, impl: str) -> Row:
    pairs = int(counts.sum())
    return {
        "impl": impl,
        "pairs": pairs,
        "active_experts": int((counts > 0).sum()),
        "max_expert_tokens": int(counts.max()),
        "expert_counts": [int(c) for c in counts],
        "flops": 6.0 * pairs * h * width,
    }


def prepare_grouped_gemm(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """Routed experts on tokens already sorted by expert: a loop of per-expert GEMMs.

    For every local expert with tokens: [n_e, hidden] @ [hidden, 2 width],
    SiLU(gate) * up, then [n_e, width] @ [width, hidden]; the pattern of
    engines' unfused MoE fallback.
    """
    counts, w13, w2, width = _moe_operands(shape, dtype, pool)
    x = pool.get(int(counts.sum()), shape["hidden"], dtype=w13.dtype, offset=w13.numel() + w2.numel())
    out = torch.empty_like(x)
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    live = [e for e in range(len(counts)) if counts[e]]

    def run() -> None:
        for e in live:
            s, f = bounds[e], bounds[e + 1]
            y = x[s:f] @ w13[e].t()
            out[s:f] = (F.silu(y[:, :width]) * y[:, width:]) @ w2[e].t()

    return run, _moe_extra(counts, width, shape["hidden"], "torch_loop")


def prepare_grouped_gemm_triton(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The same layer through our Triton fused-MoE kernel (`profiling.triton_moe`), tokens unsorted.

    On CUDA the layer is captured once into a CUDA graph and the graph is replayed (impl ``triton_graph``), as
    serving engines run their decode steps: the time is then the GPU's. Run eagerly, its 30-odd launches cost the
    host 0.7 to 1.2 ms on the H100 machines measured (the alignment alone about 0.5 ms), more than all the
    kernels of a decode-sized layer take (about 0.1 ms for a 128-expert layer at one token), and that host time
    differed by 1.5x between two machines of the same kind. Where capture fails, the layer runs eagerly (impl
    ``triton``).
    """
    from moesim.profiling.triton_moe import triton_moe

    counts, w13, w2, width = _moe_operands(shape, dtype, pool)
    ids = np.repeat(np.arange(len(counts)), counts)
    # whole tokens of k pairs (the last one padded with repeated pairs); with fewer local pairs than top_k
    # (expert parallelism, few tokens) the pairs form one token, so the kernel computes exactly those pairs
    k = min(shape["top_k"], len(ids))
    ids = np.concatenate([ids, ids[: (-len(ids)) % k]])
    ids = np.random.default_rng(0).permutation(ids)
    topk_ids = torch.as_tensor(ids.reshape(-1, k), device=pool.device, dtype=torch.int32)
    x = torch.randn(topk_ids.shape[0], shape["hidden"], device=pool.device, dtype=w13.dtype)
    weights = torch.full(topk_ids.shape, 1.0 / k, device=pool.device, dtype=torch.float32)
    counts = np.bincount(ids, minlength=len(counts))

    def run() -> torch.Tensor:
        return triton_moe(x, w13, w2, weights, topk_ids)

    if pool.device != "cuda":
        return run, _moe_extra(counts, width, shape["hidden"], "triton")
    run()  # compiles the kernels (Triton cannot compile during a capture)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            run()
    except RuntimeError:
        torch.cuda.synchronize()
        return run, _moe_extra(counts, width, shape["hidden"], "triton")
    return graph.replay, _moe_extra(counts, width, shape["hidden"], "triton_graph")


def prepare_attention(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """torch SDPA: causal when q_len == kv_len (prefill), else the new tokens attend to all kv_len."""
    b, lq, lk = shape["batch"], shape["q_len"], shape["kv_len"]
    h, kvh, d = shape["heads"], shape["kv_heads"], shape["head_dim"]
    td = torch_dtype(dtype)
    pool.reserve(b * d * (h * lq + 2 * kvh * lk), td)  # a decode KV cache can take half the GPU: one buffer
    q = pool.get(b, h, lq, d, dtype=td)
    k = pool.get(b, kvh, lk, d, dtype=td, offset=q.numel())
    v = pool.get(b, kvh, lk, d, dtype=td, offset=q.numel() + k.numel())
    causal = lq == lk and lq > 1
    gqa = kvh != h
    pairs = b * (lq * (lq + 1) / 2 if causal else lq * lk)
    extra = {"flops": 4.0 * pairs * h * d, "impl": "torch_sdpa"}
    return (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)), extra


def prepare_router(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """Router: logits = x @ W^T, written in fp32.

    The softmax and top-k are the ``topk_softmax`` kind's (`prepare_topk_softmax`), timed apart as the op model
    counts them (`model.ops.topk_op`). Router tables profiled before (the H100 tables shipped in
    ``profiling/data/h100-sxm``) timed the GEMM, softmax and top-k together.
    """
    t, h, e = shape["tokens"], shape["hidden"], shape["experts"]
    td = torch_dtype(dtype)
    x, w = pool.get(t, h, dtype=td), pool.get(e, h, dtype=td, offset=t * h)
    extra = {"flops": 2.0 * t * h * e, "impl": "torch_gemm"}
    return (lambda: (x @ w.t()).float()), extra


def prepare_permute(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """Dispatch: gather token rows into expert order; combine: weighted scatter-add back."""
    t, h, k = shape["tokens"], shape["hidden"], shape["top_k"]
    td = torch_dtype(dtype)
    src_token = torch.randperm(t * k, device=pool.device) // k
    extra = {"bytes_moved": 2.0 * t * k * h * torch.finfo(td).bits / 8, "impl": "torch"}
    if shape["direction"] == "dispatch":
        x = pool.get(t, h, dtype=td)
        return (lambda: x.index_select(0, src_token)), extra
    y = pool.get(t * k, h, dtype=td)
    w = pool.get(t * k, 1, dtype=td, offset=y.numel())
    out = torch.zeros(t, h, device=pool.device, dtype=td)
    return (lambda: out.zero_().index_add_(0, src_token, y * w)), extra


def prepare_memcpy(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """A device-to-device copy of ``bytes`` bytes (read + write = 2 x bytes moved)."""
    n = max(1, shape["bytes"] // 4)
    src = pool.get(n)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), {"bytes_moved": 2.0 * n * 4, "impl": "torch"}


def _itemsize(td: torch.dtype) -> float:
    return torch.finfo(td).bits / 8


def prepare_norm(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """RMSNorm over [tokens, hidden]; with ``residual`` the residual add first (vLLM's ``fused_add_rms_norm``
    as torch runs it: the add in place into the residual, then ``F.rms_norm``)."""
    t, h = shape["tokens"], shape["hidden"]
    td = torch_dtype(dtype)
    x, w = pool.get(t, h, dtype=td), pool.get(h, dtype=td, offset=t * h)
    rows = 2 if shape["residual"] else 1
    extra = {"bytes_moved": 2.0 * rows * t * h * _itemsize(td), "impl": "torch"}
    if not shape["residual"]:
        return (lambda: F.rms_norm(x, (h,), w, 1e-6)), extra
    res = pool.get(t, h, dtype=td, offset=t * h + h).clone()

    def run() -> torch.Tensor:
        res.add_(x)
        return F.rms_norm(res, (h,), w, 1e-6)

    return run, extra


def prepare_rope(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """Rotary embedding (NeoX style) of q [tokens, heads, rot_dim] and k [tokens, kv_heads, rot_dim] in place,
    cos and sin gathered from a [positions, rot_dim] cache by each token's position."""
    t, nh, nk, d = shape["tokens"], shape["heads"], shape["kv_heads"], shape["rot_dim"]
    td = torch_dtype(dtype)
    q = pool.get(t, nh, d, dtype=td).clone()
    k = pool.get(t, nk, d, dtype=td, offset=q.numel()).clone()
    cache = pool.get(4096, d, dtype=td, offset=q.numel() + k.numel())
    pos = torch.randint(0, 4096, (t,), device=pool.device)
    half = d // 2

    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        x1, x2 = x[..., :half], x[..., half:]
        r1, r2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        x[..., :half], x[..., half:] = r1, r2

    def run() -> None:
        cs = cache.index_select(0, pos)
        cos, sin = cs[:, None, :half], cs[:, None, half:]
        rotate(q, cos, sin)
        rotate(k, cos, sin)

    return run, {"bytes_moved": 2.0 * t * (nh + nk) * d * _itemsize(td), "impl": "torch"}


def prepare_activation(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """SiLU(gate) * up: [tokens, 2 width] -> [tokens, width] (vLLM's ``silu_and_mul``)."""
    t, w = shape["tokens"], shape["width"]
    td = torch_dtype(dtype)
    x = pool.get(t, 2 * w, dtype=td)
    out = torch.empty(t, w, device=pool.device, dtype=td)
    extra = {"bytes_moved": 3.0 * t * w * _itemsize(td), "impl": "torch"}
    return (lambda: torch.mul(F.silu(x[:, :w]), x[:, w:], out=out)), extra


def prepare_kv_write(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The new tokens' [tokens, width] K and V copied into a paged cache at random slots (vLLM's
    ``reshape_and_cache_flash``): ``index_copy_`` into a cache of 4 x tokens (at least 4,096) slots."""
    t, w = shape["tokens"], shape["width"]
    td = torch_dtype(dtype)
    kv = pool.get(t, w, dtype=td)
    slots_n = max(4096, 4 * t)
    cache = torch.empty(slots_n, w, device=pool.device, dtype=td)
    slots = torch.randperm(slots_n, device=pool.device)[:t]
    extra = {"bytes_moved": 2.0 * t * w * _itemsize(td), "impl": "torch"}
    return (lambda: cache.index_copy_(0, slots, kv)), extra


def prepare_topk_softmax(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The router's top-k: softmax over fp32 logits [tokens, experts], then top-k (vLLM's ``topk_softmax``)."""
    t, e, k = shape["tokens"], shape["experts"], shape["top_k"]
    logits = pool.get(t, e, dtype=torch.float32)
    extra = {"bytes_moved": 4.0 * t * e + 12.0 * t * k, "impl": "torch"}
    return (lambda: torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)), extra


def prepare_sampling(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The sampler over logits [sequences, vocab] (vLLM v1's ``Sampler``): ``greedy`` casts to fp32 and takes
    the arg-max; ``random`` divides by the temperature, takes the softmax and samples with exponential noise
    (``probs / q`` arg-max, q ~ Exp(1))."""
    b, v = shape["sequences"], shape["vocab"]
    td = torch_dtype(dtype)
    logits = pool.get(b, v, dtype=td)
    temp = torch.full((b, 1), 0.7, device=pool.device)
    extra = {"impl": "torch"}
    if shape.get("sampling", "greedy") == "greedy":
        return (lambda: logits.float().argmax(dim=-1)), extra

    def run() -> torch.Tensor:
        x = logits.float().div_(temp)
        probs = torch.softmax(x, dim=-1)
        q = torch.empty_like(probs).exponential_()
        return probs.div_(q).argmax(dim=-1)

    return run, extra


# ---- training's kernels (`model.train_ops`; `moesim profile --ops train`) ----


def _mm(m: int, inner: int, n: int, dtype: str, pool: Pool, transposed_a: bool = False) -> Callable[[], Any]:
    """[m, inner] @ [inner, n]; ``transposed_a``: the left operand is stored [inner, m] and read transposed (the
    weight gradient's A^T, a TN GEMM). fp8 on CUDA through ``torch._scaled_mm`` (row-major @ column-major)."""
    if dtype == "fp8":
        a = pool.get(m, inner).to(torch.float8_e4m3fn)
        b = pool.get(n, inner, offset=m * inner).to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=pool.device)
        return lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16)
    td = torch_dtype(dtype)
    a = pool.get(inner, m, dtype=td).t() if transposed_a else pool.get(m, inner, dtype=td)
    b = pool.get(inner, n, dtype=td, offset=m * inner)
    return lambda: torch.mm(a, b)


def prepare_gemm_dgrad(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The input gradient of C[m, n] = A[m, k] @ B[k, n]: dA[m, k] = dC[m, n] @ B^T (an [m, n] @ [n, k] GEMM)."""
    m, n, k = shape["m"], shape["n"], shape["k"]
    return _mm(m, n, k, dtype, pool), {"flops": 2.0 * m * n * k, "impl": "torch"}


def prepare_gemm_wgrad(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The weight gradient of C[m, n] = A[m, k] @ B[k, n]: dB[k, n] = A^T[k, m] @ dC[m, n], the reduction over the
    m tokens, A read transposed (as cuBLAS runs Megatron's wgrad)."""
    m, n, k = shape["m"], shape["n"], shape["k"]
    return _mm(k, m, n, dtype, pool, transposed_a=True), {"flops": 2.0 * m * n * k, "impl": "torch"}


def _grouped_bwd(shape: Row, dtype: str, pool: Pool, wgrad: bool) -> Prepared:
    """The experts' two grouped GEMMs backward on tokens sorted by expert, a loop over the local experts.

    dgrad: dh = dy_e @ W2_e ([n_e, hidden] @ [hidden, width]), dx = dgu_e @ W13_e ([n_e, 2 width] @ [2 width,
    hidden]). wgrad (k-grouped: each expert reduces over its own n_e rows): dW2_e = dy_e^T @ h_e, dW13_e =
    dgu_e^T @ x_e. FLOP: 6 pairs x hidden x width, as the forward's two GEMMs.
    """
    counts, w13, w2, width = _moe_operands(shape, dtype, pool)
    h, pairs = shape["hidden"], int(counts.sum())
    off = w13.numel() + w2.numel()
    x = pool.get(pairs, h, dtype=w13.dtype, offset=off)  # the input x, and the output's gradient dy
    gu = pool.get(pairs, 2 * width, dtype=w13.dtype, offset=off + x.numel())  # dgu, and the activation h in it
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    live = [e for e in range(len(counts)) if counts[e]]

    def dgrad() -> None:
        for e in live:
            s, f = bounds[e], bounds[e + 1]
            x[s:f] @ w2[e]
            gu[s:f] @ w13[e]

    def wgrad_fn() -> None:
        for e in live:
            s, f = bounds[e], bounds[e + 1]
            x[s:f].t() @ gu[s:f, :width]
            gu[s:f].t() @ x[s:f]

    extra = _moe_extra(counts, width, h, "torch_loop")
    extra["flops"] = 4.0 * pairs * h * width + 2.0 * pairs * h * width
    return (wgrad_fn if wgrad else dgrad), extra


def prepare_grouped_gemm_dgrad(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The experts' input gradients (`_grouped_bwd`)."""
    return _grouped_bwd(shape, dtype, pool, wgrad=False)


def prepare_grouped_gemm_wgrad(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The experts' k-grouped weight gradients (`_grouped_bwd`)."""
    return _grouped_bwd(shape, dtype, pool, wgrad=True)


def _backward(out: torch.Tensor, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor) -> Callable[[], Any]:
    """The backward of a graph built once: ``out``'s gradients w.r.t. ``inputs``, the graph kept for the next call."""
    return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)


def prepare_attention_bwd(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """torch SDPA's backward (causal when q_len == kv_len): dq, dk, dv from dO; on CUDA FlashAttention-2's
    backward kernel (torch's flash backend), on the CPU torch's flash-attention CPU kernel."""
    b, lq, lk = shape["batch"], shape["q_len"], shape["kv_len"]
    h, kvh, d = shape["heads"], shape["kv_heads"], shape["head_dim"]
    td = torch_dtype(dtype)
    q = pool.get(b, h, lq, d, dtype=td).clone().requires_grad_()
    k = pool.get(b, kvh, lk, d, dtype=td, offset=q.numel()).clone().requires_grad_()
    v = pool.get(b, kvh, lk, d, dtype=td, offset=q.numel() + k.numel()).clone().requires_grad_()
    causal = lq == lk and lq > 1
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=kvh != h)
    pairs = b * (lq * (lq + 1) / 2 if causal else lq * lk)
    extra = {"flops": 10.0 * pairs * h * d, "impl": "torch_sdpa"}
    return _backward(out, (q, k, v), torch.ones_like(out)), extra


def prepare_norm_bwd(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """RMSNorm's backward over [tokens, hidden]: dx and the weight's gradient (torch's ``rms_norm`` autograd)."""
    t, h = shape["tokens"], shape["hidden"]
    td = torch_dtype(dtype)
    x = pool.get(t, h, dtype=td).clone().requires_grad_()
    w = pool.get(h, dtype=td, offset=t * h).clone().requires_grad_()
    y = F.rms_norm(x, (h,), w, 1e-6)
    return _backward(y, (x, w), torch.ones_like(y)), {"bytes_moved": 3.0 * t * h * _itemsize(td), "impl": "torch"}


def prepare_rope_bwd(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """Rotary backward: dq and dk rotated back (the forward's rotation with sin negated, in place), as
    Transformer Engine's ``fused_rope_backward`` does."""
    fn, extra = prepare_rope(shape, dtype, pool)  # the same traffic: the inverse rotation is a rotation
    return fn, extra


def prepare_activation_bwd(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """SwiGLU's backward: d(gate) and d(up) [tokens, 2 width] from dy [tokens, width] and the saved input."""
    t, w = shape["tokens"], shape["width"]
    td = torch_dtype(dtype)
    x = pool.get(t, 2 * w, dtype=td).clone().requires_grad_()
    y = F.silu(x[:, :w]) * x[:, w:]
    extra = {"bytes_moved": 5.0 * t * w * _itemsize(td), "impl": "torch"}
    return _backward(y, (x,), torch.ones_like(y)), extra


def prepare_permute_bwd(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The permutations' backward: a dispatch gather's is a scatter-add of the rows' gradients to their tokens; a
    combine's is a gather of the output's gradient to each routed row, scaled by its routing weight."""
    t, h, k = shape["tokens"], shape["hidden"], shape["top_k"]
    td = torch_dtype(dtype)
    src_token = torch.randperm(t * k, device=pool.device) // k
    extra = {"bytes_moved": 2.0 * t * k * h * _itemsize(td), "impl": "torch"}
    if shape["direction"] == "dispatch":
        dy = pool.get(t * k, h, dtype=td)
        dx = torch.zeros(t, h, device=pool.device, dtype=td)
        return (lambda: dx.zero_().index_add_(0, src_token, dy)), extra
    dout = pool.get(t, h, dtype=td)
    w = pool.get(t * k, 1, dtype=td, offset=dout.numel())
    return (lambda: dout.index_select(0, src_token) * w), extra


def _ce_graph(shape: Row, dtype: str, pool: Pool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t, v = shape["tokens"], shape["vocab"]
    logits = pool.get(t, v, dtype=torch_dtype(dtype)).clone().requires_grad_()
    target = torch.randint(0, v, (t,), device=pool.device)
    return logits, target, F.cross_entropy(logits.float(), target)


def prepare_cross_entropy(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The loss over [tokens, vocab] logits, computed in fp32 (``F.cross_entropy`` of the upcast logits)."""
    logits, target, _ = _ce_graph(shape, dtype, pool)
    extra = {"bytes_moved": 2.0 * logits.numel() * logits.element_size(), "impl": "torch"}
    return (lambda: F.cross_entropy(logits.float(), target)), extra


def prepare_cross_entropy_bwd(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The loss's gradient w.r.t. the [tokens, vocab] logits (softmax minus the one-hot target)."""
    logits, _, loss = _ce_graph(shape, dtype, pool)
    extra = {"bytes_moved": 2.0 * logits.numel() * logits.element_size(), "impl": "torch"}
    return _backward(loss, (logits,), torch.ones_like(loss)), extra


#: The largest finite e4m3 value: a group's amax is scaled to it.
E4M3_MAX = 448.0


def _quantize(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [rows, width] to e4m3 with one fp32 scale per ``group`` elements of a row (group's amax -> 448)."""
    r, w = x.shape
    g = x.reshape(r, w // group, group)
    scale = g.abs().amax(dim=-1, keepdim=True).float().clamp_(min=1e-12) / E4M3_MAX
    return (g / scale).to(torch.float8_e4m3fn).reshape(r, w), scale


def _group_cols(shape: Row) -> int:
    g = int(shape.get("group_cols", 128) or 128)
    return g if shape["width"] % g == 0 else shape["width"]


def prepare_quantize(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """Quantise [tokens, width] to fp8 (e4m3) with a scale per ``group_cols`` elements of a row (DeepSeek-V3's
    1 x 128 tiles): the group's amax, the scale, the cast. On the CPU torch's fp8 cast (software) runs it: the
    same bytes read and written as a GPU kernel, not its speed."""
    t, w = shape["tokens"], shape["width"]
    x = pool.get(t, w, dtype=torch_dtype(dtype))
    g = _group_cols(shape)
    extra = {"bytes_moved": t * w * (_itemsize(x.dtype) + 1.0), "impl": "torch"}
    return (lambda: _quantize(x, g)), extra


def prepare_cast_transpose(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """Cast [tokens, width] to fp8 row-wise and transposed (column-wise scales), what an fp8 weight gradient needs:
    Transformer Engine's ``cast_transpose``, here the two casts one after the other."""
    t, w = shape["tokens"], shape["width"]
    x = pool.get(t, w, dtype=torch_dtype(dtype))
    g = _group_cols(shape)
    gt = g if t % g == 0 else t

    def run() -> None:
        _quantize(x, g)
        _quantize(x.t().contiguous(), gt)

    return run, {"bytes_moved": t * w * (_itemsize(x.dtype) + 2.0), "impl": "torch"}


def prepare_amax(shape: Row, dtype: str, pool: Pool) -> Prepared:
    """The absolute maximum of [tokens, width] (a per-tensor current scale's amax)."""
    x = pool.get(shape["tokens"], shape["width"], dtype=torch_dtype(dtype))
    return (lambda: x.abs().amax()), {"bytes_moved": x.numel() * _itemsize(x.dtype), "impl": "torch"}


PREPARE = {
    "gemm": prepare_gemm,
    "grouped_gemm": prepare_grouped_gemm,
    "grouped_gemm_triton": prepare_grouped_gemm_triton,
    "attention": prepare_attention,
    "router": prepare_router,
    "permute": prepare_permute,
    "memcpy": prepare_memcpy,
    "norm": prepare_norm,
    "rope": prepare_rope,
    "activation": prepare_activation,
    "kv_write": prepare_kv_write,
    "topk_softmax": prepare_topk_softmax,
    "sampling": prepare_sampling,
    "gemm_dgrad": prepare_gemm_dgrad,
    "gemm_wgrad": prepare_gemm_wgrad,
    "grouped_gemm_dgrad": prepare_grouped_gemm_dgrad,
    "grouped_gemm_wgrad": prepare_grouped_gemm_wgrad,
    "attention_bwd": prepare_attention_bwd,
    "norm_bwd": prepare_norm_bwd,
    "rope_bwd": prepare_rope_bwd,
    "activation_bwd": prepare_activation_bwd,
    "permute_bwd": prepare_permute_bwd,
    "cross_entropy": prepare_cross_entropy,
    "cross_entropy_bwd": prepare_cross_entropy_bwd,
    "quantize": prepare_quantize,
    "cast_transpose": prepare_cast_transpose,
    "amax": prepare_amax,
}
