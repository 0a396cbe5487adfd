"""A fused-MoE Triton kernel: the routed experts of one MoE layer as two grouped GEMMs.

The layout follows the fused-MoE kernels of vLLM and SGLang. Each token is routed to ``top_k`` experts, giving
``T * top_k`` (token, expert) *pairs*, numbered ``pair = t * top_k + j``. `align_by_expert` sorts the pairs by
expert and pads each expert's run to a multiple of ``block_m`` with a sentinel pair id (``T * top_k``), so that
every block of ``block_m`` sorted pairs belongs to a single expert. One Triton program then computes one
``block_m x block_n`` tile of ``C[pair, :] = A[row(pair), :] @ W[expert].T`` and skips the sentinel rows.

`triton_moe` runs gate_up (``[H] -> [2I]``), SiLU(gate) * up, then down (``[I] -> [H]``, scaled by the routing
weight) and sums each token's ``top_k`` outputs. `torch_moe` is the reference: a Python loop over experts.

On CPU the kernel runs only under the Triton interpreter (set ``TRITON_INTERPRET=1`` before importing triton);
the interpreter does not handle bf16, so use fp32 or fp16 there.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

__all__ = ["align_by_expert", "fused_moe_kernel", "torch_moe", "triton_available", "triton_moe"]


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    """Whether `triton_moe` can run here: triton imports and there is a CUDA device or ``TRITON_INTERPRET=1``."""
    return torch.cuda.is_available() or _interpreter_on()


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Group the (token, expert) pairs by expert, each expert's run padded to a multiple of ``block_m``.

    Args:
        topk_ids: [T, k] int, the experts each token is routed to (values in ``[0, num_experts)``).
        num_experts: E, the number of experts.
        block_m: the pairs per block (the kernel's BLOCK_M).

    Returns:
        sorted_pair_ids: [P_pad] int32, flat pair ids ``t * k + j`` grouped by expert (ascending), each run padded
            with the sentinel ``T * k``; within an expert the pairs keep their original order.
        block_expert: [P_pad // block_m] int32, the expert of each block. Experts with no pairs get no blocks.
        num_padded: P_pad, the number of padded pairs (a multiple of ``block_m``).

    This reads P_pad back from the device (one synchronisation); `triton_moe` uses `_align_blocks`, which does not.
    """
    sorted_pair_ids, block_expert, padded = _align_blocks(topk_ids, num_experts, block_m)
    num_padded = int(padded.sum().item())
    return sorted_pair_ids[:num_padded], block_expert[: num_padded // block_m], num_padded


def _align_blocks(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`align_by_expert` without reading anything back from the device (no host synchronisation).

    The outputs are sized for the worst case, ``P + min(E, P) * (block_m - 1)`` padded pairs: the blocks
    past the real ones hold only the sentinel (their expert is E) and `fused_moe_kernel` returns at once on
    them. Returns (sorted_pair_ids, block_expert, padded pairs per expert [E]).
    """
    device = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int64)
    num_pairs = flat.numel()
    # [E] pairs per expert; a scatter-add, not torch.bincount, which reads the maximum back to size its output
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m  # [E] pairs per expert after padding
    start = torch.cumsum(counts, 0) - counts  # [E] first sorted position of each expert, unpadded
    padded_end = torch.cumsum(padded, 0)  # [E] one past the last padded position of each expert
    num_blocks = -(-(num_pairs + min(num_experts, num_pairs) * (block_m - 1)) // block_m)

    order = torch.sort(flat, stable=True).indices  # pair ids sorted by expert
    expert_of_sorted = flat[order]
    rank = torch.arange(num_pairs, device=device) - start[expert_of_sorted]  # position within its expert's run
    sorted_pair_ids = torch.full((num_blocks * block_m,), num_pairs, dtype=torch.int32, device=device)
    run_start = padded_end[expert_of_sorted] - padded[expert_of_sorted]
    sorted_pair_ids[run_start + rank] = order.to(torch.int32)
    # block b belongs to the first expert whose padded run ends after b * block_m (E past the last run)
    block_start = torch.arange(num_blocks, device=device) * block_m
    block_expert = torch.searchsorted(padded_end, block_start, right=True).to(torch.int32)
    return sorted_pair_ids, block_expert, padded


#: Tile configurations of `triton_moe` by load, (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), keyed by the
#: mean pairs per expert below which each is used: chosen from a sweep of 17 on an H100 SXM (bf16; Mixtral-,
#: Qwen-MoE- and DeepSeek-V3-EP8-sized layers, 1 to 4,096 tokens), where at 4,096 tokens they ran 2.9x to 5.7x faster
#: than the former fixed 16 x 32 x 32 tiles. Small loads are weight-bandwidth bound (long K tiles), large ones
#: compute bound (large M x N tiles).
TILE_CONFIGS: tuple[tuple[float, tuple[int, int, int, int, int]], ...] = (
    (32, (16, 64, 128, 4, 3)),
    (128, (64, 128, 64, 8, 3)),
    (float("inf"), (128, 256, 64, 8, 3)),
)


def tile_config(num_pairs: int, num_experts: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for ``num_pairs`` pairs over ``num_experts`` experts."""
    per_expert = num_pairs / max(1, min(num_experts, num_pairs))
    return next(cfg for bound, cfg in TILE_CONFIGS if per_expert < bound)


@triton.jit
def fused_moe_kernel(
    a_ptr,  # [rows, K] activations; pair p reads row p // TOP_K
    w_ptr,  # [E, N, K] expert weights (nn.Linear layout)
    c_ptr,  # [num_pairs, N] output, one row per pair
    topk_weights_ptr,  # [num_pairs] routing weights (read only if MUL_ROUTED_WEIGHT)
    sorted_pair_ids_ptr,  # [P_pad] int32 pair ids grouped by expert, sentinel = num_pairs
    block_expert_ptr,  # [P_pad // BLOCK_M] int32 expert of each block
    num_pairs,
    N,
    K,
    stride_am,
    stride_ak,
    stride_we,
    stride_wn,
    stride_wk,
    stride_cm,
    stride_cn,
    TOP_K: tl.constexpr,
    MUL_ROUTED_WEIGHT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of C[pair, n] = sum_k A[pair // TOP_K, k] * W[expert, n, k] for one expert."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)

    if tl.load(sorted_pair_ids_ptr + pid_m * BLOCK_M) >= num_pairs:
        return  # a block past the last expert's run (`_align_blocks` sizes for the worst case)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_pair_ids_ptr + offs_m).to(tl.int64)  # [BLOCK_M]
    row_mask = pair < num_pairs  # sentinel rows are padding
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)

    a_ptrs = a_ptr + (pair // TOP_K)[:, None] * stride_am + offs_k[None, :] * stride_ak  # [BLOCK_M, BLOCK_K]
    # W[expert] is [N, K]; load it transposed as a [BLOCK_K, BLOCK_N] tile
    w_ptrs = w_ptr + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    if MUL_ROUTED_WEIGHT:
        routed = tl.load(topk_weights_ptr + pair, mask=row_mask, other=0.0).to(tl.float32)
        acc = acc * routed[:, None]

    c_ptrs = c_ptr + pair[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def _grouped_gemm(
    a: torch.Tensor,
    w: torch.Tensor,
    c: torch.Tensor,
    topk_weights: torch.Tensor | None,
    sorted_pair_ids: torch.Tensor,
    block_expert: torch.Tensor,
    top_k: int,
    block_m: int,
    block_n: int,
    block_k: int,
    num_warps: int = 4,
    num_stages: int = 3,
) -> None:
    """Launch `fused_moe_kernel`: c[pair] = a[pair // top_k] @ w[expert].T (times topk_weights[pair] if given)."""
    num_pairs, n = c.shape
    k = a.shape[1]
    grid = (block_expert.numel(), triton.cdiv(n, block_n))
    fused_moe_kernel[grid](
        a, w, c, topk_weights if topk_weights is not None else c, sorted_pair_ids, block_expert,
        num_pairs, n, k,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2), c.stride(0), c.stride(1),
        TOP_K=top_k,
        MUL_ROUTED_WEIGHT=topk_weights is not None,
        INPUT_PRECISION="ieee" if a.dtype == torch.float32 else None,  # fp32: no TF32, like torch
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip


def triton_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Routed experts of one MoE layer with the Triton grouped GEMM.

    Args:
        x: [T, H] token activations.
        w13: [E, 2I, H] gate (rows ``:I``) and up (rows ``I:``) projections of every expert.
        w2: [E, H, I] down projections.
        topk_weights: [T, k] float routing weights (applied after the down projection).
        topk_ids: [T, k] int experts of each token.
        block_m, block_n, block_k: tile sizes (pairs, output columns, reduction); each at least 16 for `tl.dot`.
        num_warps, num_stages: Triton launch options. Each left None comes from `tile_config`.

    Returns:
        [T, H] in x.dtype: ``sum_j topk_weights[t, j] * down_e(SiLU(gate_e(x_t)) * up_e(x_t))``, e = topk_ids[t, j].
    """
    if not (x.is_cuda or _interpreter_on()):
        raise RuntimeError("triton_moe needs a CUDA tensor, or TRITON_INTERPRET=1 set before importing triton")
    num_tokens, hidden = x.shape
    num_experts, two_inter, _ = w13.shape
    top_k = topk_ids.shape[1]
    num_pairs = num_tokens * top_k
    if num_pairs == 0:
        return torch.zeros_like(x)

    given = (block_m, block_n, block_k, num_warps, num_stages)
    launch = tuple(g if g is not None else d for g, d in zip(given, tile_config(num_pairs, num_experts), strict=True))
    block_m = launch[0]
    sorted_pair_ids, block_expert, _ = _align_blocks(topk_ids, num_experts, block_m)
    x, w13, w2 = x.contiguous(), w13.contiguous(), w2.contiguous()
    weights = topk_weights.reshape(-1).to(torch.float32).contiguous()
    blocks = (sorted_pair_ids, block_expert)

    gate_up = torch.empty(num_pairs, two_inter, dtype=x.dtype, device=x.device)  # [T*k, 2I]
    _grouped_gemm(x, w13, gate_up, None, *blocks, top_k, *launch)
    gate, up = gate_up.chunk(2, dim=1)
    act = (F.silu(gate.float()) * up.float()).to(x.dtype)  # [T*k, I]
    down = torch.empty(num_pairs, hidden, dtype=x.dtype, device=x.device)  # [T*k, H], already weighted
    _grouped_gemm(act, w2, down, weights, *blocks, 1, *launch)
    return down.view(num_tokens, top_k, hidden).sum(dim=1, dtype=torch.float32).to(x.dtype)


def torch_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Reference routed experts: a Python loop over the experts that have tokens (same arguments as `triton_moe`).

    Returns:
        [T, H] in x.dtype; accumulated in fp32.
    """
    top_k = topk_ids.shape[1]
    inter = w2.shape[2]
    flat_ids = topk_ids.reshape(-1)
    flat_weights = topk_weights.reshape(-1).to(torch.float32)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for expert in torch.unique(flat_ids).tolist():
        pairs = torch.nonzero(flat_ids == expert).squeeze(1)  # [n_e] pair ids routed to this expert
        tokens = pairs // top_k
        h = x.index_select(0, tokens) @ w13[expert].T  # [n_e, 2I]
        act = F.silu(h[:, :inter]) * h[:, inter:]  # [n_e, I]
        y = (act @ w2[expert].T).float() * flat_weights[pairs, None]  # [n_e, H]
        out.index_add_(0, tokens, y)
    return out.to(x.dtype)
