"""Import a torch.profiler Chrome trace (``prof.export_chrome_trace``) into kernel tables.

Events are complete (``"ph": "X"``) events with ``ts`` and ``dur`` in µs; ``time_s = dur * 1e-6``
and every table row is one occurrence (nothing is averaged). Shapes come from the ``Input Dims``
and ``Input type`` args that ``record_shapes=True`` adds to ``cpu_op`` events.

- CPU trace (no ``kernel`` events): each thread's ``cpu_op`` events are nested by time and walked
  from the top. The **outermost** op with a parser (`_OPS`) becomes one row and its children are not
  looked at (``aten::linear`` is mapped, the ``aten::addmm`` inside it is not). An op with no parser
  and no mappable descendant is unmapped with its whole time; one with mappable descendants gives
  only its self time (its time minus its children's) to unmapped, and its children are walked.
  Thus ``mapped_s + unmapped_s`` is the time of the top-level ops.
- CUDA trace: only GPU events (``kernel``, ``gpu_memcpy``, ``gpu_memset``) are counted. A kernel's
  stack and kind come from its name: first the kernels of the MoE training stacks (`_RULES`: DeepEP,
  DeepGEMM, Transformer Engine, FlashAttention, Megatron/TE permute, fused norms, casts), then generic
  words (`_PATTERNS`: cuBLAS/CUTLASS GEMMs, torch); one launched under an autograd backward op
  (``autograd::engine::evaluate_function: ...Backward0``) is the backward kind (``attention_bwd``...).
  Its shape comes from the ``cpu_op`` that launched it (kernel ``External id``, else the
  ``cuda_runtime`` launch with the same ``correlation``) or the outermost ancestor of that op with a
  parser of the same kind; where no op carries one, from the kernel itself: template arguments of its
  name (DeepGEMM's ``n, k`` and expert groups, with ``m`` from the rows of the launching op's input of
  ``k`` columns; DeepEP's ranks and hidden size; FlashAttention's head dim) and its launch grid
  (FlashAttention-2: batch, heads and the length rounded up to the tile; TE's Triton permute: tokens).
  Kernels of one kind launched under one op call are summed into one row (the fused-MoE op's two GEMM
  kernels are one grouped_gemm row; DeepGEMM's gate_up and down kernels, launched apart, are paired into
  one: `_Importer._pairs`). NCCL kernels take ``Collective name``/``In msg nelems``/``Group
  size``/``dtype`` from their own args or the launching ops (``record_param_comms``); ``gpu_memcpy``
  takes its ``bytes`` arg. A kernel becomes a table row only when its kind is a table kind (`KINDS`)
  and every shape column is known; every kernel is in `TraceImport.kernels`, and the share of kernel
  time in table rows per stack and kind is `TraceImport.coverage`.

Unmapped reasons: "unknown op" (CPU op with no parser), "unknown kernel" (no rule recognises the
name), "no shape" (no launching op with a parser, or no ``Input Dims``, and nothing in the name or
grid), "partial shape (no ...)" (the columns still missing), "no <kind> table" (a recognised kind with
no table kind yet: backward passes, fp8 casts), "no hidden size" (router), "host copy" (H2D/D2H).

Shape rules: gemm ``m, n, k`` with batch dims folded into ``m`` (``bmm`` [B, M, K] @ [B, K, N] gives
m = B * M: same FLOPs); attention from q [B, H, Lq, D] and k [B, Hkv, Lkv, D] (``_flash_attention_forward``:
[B, L, H, D]); router from ``aten::topk`` on [tokens, experts] with ``hidden`` = ``k`` of the latest
earlier GEMM on the same thread whose output is [tokens, experts] (the gate), else unmapped "no hidden
size" (the row's time is the top-k alone); permute from ``index_select`` (dispatch) and ``index_add_``
/ ``scatter_add_`` (combine): rows moved = tokens * top_k when a multiple of the source rows, else
tokens = rows moved, top_k = 1; memcpy bytes = elements x element size of ``copy_``'s source / ``clone``.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import math
import re
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.model import inputs
from moesim.model.errors import MoesimError
from moesim.profiling.tables import COLLECTIVES, KINDS, SHAPE_COLUMNS, TableError, check_table

Shape = dict[str, Any]
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset")
# (kind, substrings of the lower-cased kernel name), first match wins; the matched word names the family.
_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("router", ("topk", "softmax")),
    ("permute", ("indexselect", "index_select", "indexfunc", "scatter_gather", "scatter_add", "permute")),
    ("grouped_gemm", ("fused_moe", "moe")),
    ("gemm", ("nvjet", "cutlass", "xmma", "cublas", "sgemm", "gemm")),
    ("memcpy", ("memcpy", "copy")),
)
_NCCL = (("allreduce", "all_reduce"), ("allgather", "all_gather"), ("reducescatter", "reduce_scatter"))
_NCCL += (("alltoall", "all_to_all"), ("sendrecv", "all_to_all"))
_TYPES = {"float": ("fp32", 4), "float32": ("fp32", 4), "double": ("fp64", 8), "half": ("fp16", 2)}
_TYPES |= {"float16": ("fp16", 2), "bfloat16": ("bf16", 2), "long int": ("int64", 8), "int": ("int32", 4)}
_TYPES |= {"short int": ("int16", 2), "signed char": ("int8", 1), "unsigned char": ("uint8", 1), "bool": ("bool", 1)}


@dataclass(frozen=True)
class TraceImport:
    """An imported trace.

    Attributes:
        tables: op kind -> rows (op, impl, dtype, time_s [s], the kind's shape columns, name, source).
        unmapped: one row per unmapped event name: name, count, total_s [s], reason; by total_s, descending.
        mapped_s: seconds in table rows; unmapped_s: seconds counted but not mapped.
        device: "cuda" when the trace has kernel events, else "cpu".
        kernels: one row per GPU kernel name (`KERNEL_COLUMNS`): the stack and kind it was recognised as
            ("unknown" when not), phase (fwd/bwd), dtype (the launching op's, else the name's), count, total_s
            and tabled_s [s], the shape read and where from (op: the launching op's Input Dims; name: template
            arguments; grid: the launch grid), and why it is not in a table; empty on a CPU trace.
        coverage: time_s, tabled_s [s] and tabled_share of the counted time; on a CUDA trace also
            recognised_s/recognised_share, by_stack and by_kind ({time_s, share, tabled_s, tabled_share,
            kernel_names}) and unrecognised_top (the ten costliest unrecognised kernel names).
    """

    tables: dict[str, pd.DataFrame]
    unmapped: pd.DataFrame
    mapped_s: float
    unmapped_s: float
    device: str
    kernels: pd.DataFrame
    coverage: dict[str, Any]


class _Ev:
    """One complete event; ``parent``/``children`` link CPU-side events nested on one thread."""

    __slots__ = ("args", "cat", "children", "dur", "name", "parent", "thread", "ts")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.name, self.cat = str(raw.get("name", "")), str(raw.get("cat", "")).lower()
        self.ts, self.dur = float(raw.get("ts", 0.0)), float(raw.get("dur", 0.0))
        self.thread = (raw.get("pid"), raw.get("tid"))
        self.args: dict[str, Any] = {k.lower(): v for k, v in (raw.get("args") or {}).items()}
        self.parent: _Ev | None = None
        self.children: list[_Ev] = []


def _dtype(type_name: Any) -> tuple[str, int | None]:
    """(moesim dtype name, bytes per element) of a torch "Input type" / NCCL dtype string."""
    t = str(type_name).lower().removeprefix("c10::").removeprefix("torch.")
    return ("fp8", 1) if "float8" in t else _TYPES.get(t, (t or "unknown", None))


def _gemm(a: list[int], b: list[int]) -> Shape:
    batch = max(math.prod(a[:-2]), math.prod(b[:-2]))
    return {"m": batch * (a[-2] if len(a) > 1 else 1), "n": b[-1] if len(b) > 1 else 1, "k": a[-1]}


def _attn(q: list[int], k: list[int], blhd: bool) -> Shape:
    q, k = ([1, *q], [1, *k]) if len(q) == 3 else (q, k)
    (b, lq, h, d), (lk, hk) = (q, k[1:3]) if blhd else ((q[0], q[2], q[1], q[3]), (k[2], k[1]))
    return {"batch": b, "q_len": lq, "kv_len": lk, "heads": h, "kv_heads": hk, "head_dim": d}


def _rows(src: int, moved: int, hidden: int, direction: str) -> Shape:
    tokens, top_k = (src, moved // src) if moved >= src and moved % src == 0 else (moved, 1)
    return {"tokens": tokens, "hidden": hidden, "top_k": top_k, "direction": direction}


def _nbytes(dims: list[int], type_name: Any) -> Shape:
    size = _dtype(type_name)[1]
    return {"bytes": math.prod(dims) * size} if size else {}


def _moe(d: list[list[int]], _: Any) -> Shape:
    """vLLM-style fused experts: x [T, H], w1 [E, 2I, H], w2 [E, H, I], topk weights/ids [T, K]."""
    x, ws = next(v for v in d if len(v) == 2), [i for i, v in enumerate(d) if len(v) == 3]
    top_k = next(v[1] for v in d[ws[-1] :] if len(v) == 2 and v[0] == x[0])
    inter = d[ws[1]][2] if len(ws) > 1 else d[ws[0]][1] // 2
    return {"tokens": x[0], "hidden": x[1], "inter": inter, "experts": d[ws[0]][0], "top_k": top_k}


_SDPA = ("_attention_math", "_flash_attention", "_efficient_attention", "_cudnn_attention", "_flash_attention_for_cpu")
_COMBINE = ("index_add_", "index_add", "scatter_add_", "scatter_add")
# op name -> (kind, index of the argument giving dtype, parser(Input Dims, Input type) -> shape)
_OPS: dict[str, tuple[str, int, Callable[[list[list[int]], list[Any]], Shape]]] = {
    **{f"aten::{n}": ("gemm", 1, lambda d, t: _gemm(d[0], d[1])) for n in ("mm", "matmul", "bmm", "_scaled_mm")},
    **{f"aten::{n}": ("gemm", 2, lambda d, t: _gemm(d[1], d[2])) for n in ("addmm", "baddbmm")},
    "aten::linear": ("gemm", 1, lambda d, t: {"m": math.prod(d[0][:-1]), "n": d[1][0], "k": d[0][-1]}),
    **{f"aten::_scaled_dot_product{s}": ("attention", 0, lambda d, t: _attn(d[0], d[1], False)) for s in _SDPA},
    "aten::scaled_dot_product_attention": ("attention", 0, lambda d, t: _attn(d[0], d[1], False)),
    **{f"aten::{n}_forward": ("attention", 0, lambda d, t: _attn(d[0], d[1], True)) for n in _SDPA[1:3]},
    "aten::index_select": ("permute", 0, lambda d, t: _rows(d[0][0], d[2][0], math.prod(d[0][1:]), "dispatch")),
    **{f"aten::{n}": ("permute", 0, lambda d, t: _rows(d[0][0], d[2][0], d[3][1], "combine")) for n in _COMBINE},
    "aten::copy_": ("memcpy", 1, lambda d, t: _nbytes(d[1], t[1])),
    "aten::clone": ("memcpy", 0, lambda d, t: _nbytes(d[0], t[0])),
    "aten::topk": ("router", 0, lambda d, t: {"tokens": math.prod(d[0][:-1]), "experts": d[0][-1]}),
    # Backward passes (grad_out first) and FlashAttention's own ops and autograd Function ([B, L, H, D]).
    **{
        f"aten::_scaled_dot_product{s}_backward": ("attention_bwd", 1, lambda d, t: _attn(d[1], d[2], False))
        for s in _SDPA[1:4]
    },
    "aten::_flash_attention_backward": ("attention_bwd", 1, lambda d, t: _attn(d[1], d[2], True)),
    **{
        n: ("attention", 0, lambda d, t: _attn(d[0], d[1], True))
        for n in ("flash_attn::_flash_attn_forward", "FlashAttnFunc")
    },
    "flash_attn::_flash_attn_backward": ("attention_bwd", 1, lambda d, t: _attn(d[1], d[2], True)),
}


def _parse(ev: _Ev, kind: str | None = None) -> tuple[str, Shape | None, str] | None:
    """(kind, shape or None, dtype) of a cpu_op with a parser (of ``kind`` if given), else None."""
    rule = ("grouped_gemm", 1, _moe) if re.search(r"fused_experts|fused_moe", ev.name) else _OPS.get(ev.name)
    if rule is None or (kind and rule[0] != kind):
        return None
    dims, types, conc = (ev.args.get(a) or [] for a in ("input dims", "input type", "concrete inputs"))
    try:
        shape: Shape | None = rule[2](dims, types)
        if rule[0] == "router":  # topk(input, k, dim): only along the last dim
            shape = {**shape, "top_k": int(conc[1])} if int(conc[2]) in (-1, len(dims[0]) - 1) else None
        elif rule[0] == "permute" and conc[1:2] not in ([], [""], ["0"]):  # rows (dim 0) only
            shape = None
    except (IndexError, TypeError, ValueError, StopIteration, ZeroDivisionError):
        shape = None
    return rule[0], (shape or None), _dtype(types[rule[1]] if len(types) > rule[1] else "")[0]


# --- kernels of the MoE training stacks, recognised by name ------------------------------------------------------
# A rule: (stack, kind, regex searched in the kernel name, case-insensitive). First match wins; stacks are checked
# before the generic name words of `_PATTERNS`. Kinds not in `profiling.tables.KINDS` (the training kinds: backward
# passes, fp8 casts) are recognised and reported (`TraceImport.kernels`, `coverage`) but give no table rows until a
# table kind of that name is registered. Kernel names were read in each stack's code:
# - DeepEP (deepseek-ai/DeepEP csrc/kernels/intranode.cu, internode.cu, internode_ll.cu): ``deep_ep::intranode::
#   dispatch<kNumRanks, kNumThreads, kNumTMABytesPerWarp>``, ``intranode::combine<dtype_t, kNumRanks, ...>``,
#   ``internode::dispatch<kLowLatencyMode, kNumRDMARanks, ...>``, ``internode_ll::dispatch<kUseFP8, ..., kHidden>``,
#   ``internode_ll::combine<..., kHidden, kNumMaxTopk>``, notify/cached_notify/get_dispatch_layout kernels;
# - DeepGEMM (deepseek-ai/DeepGEMM deep_gemm/include/deep_gemm/fp8_gemm.cuh, impls/sm90_fp8_gemm_1d2d.cuh,
#   common/types.cuh): ``fp8_gemm_kernel<SHAPE_N, SHAPE_K, BLOCK_M, BLOCK_N, BLOCK_K, ..., kNumGroups, ...,
#   GemmType>``, ``sm90_fp8_gemm_1d2d_impl<SHAPE_M, SHAPE_N, SHAPE_K, kNumGroups, ..., GemmType>``; GemmType 0
#   Normal, 1 MGroupedContiguous, 2 MGroupedMasked, 3 KGroupedContiguous (the experts' wgrad), 4 Batched,
#   5/6 the psum-layout variants of 1/3;
# - Transformer Engine (NVIDIA/TransformerEngine transformer_engine/common: cast/, transpose/
#   cast_transpose*.cu, block_scaled_1d_cast_transpose_kernel, normalization/rmsnorm, fused_rope/fused_rope.cu
#   fused_rope_forward_kernel/fused_rope_backward_kernel, activation/swiglu.cu, fused_router/, fused_attn/ (cuDNN
#   sdpa fprop/bprop)); its Triton MoE permutation (transformer_engine/pytorch/triton/permutation.py:
#   _permute_kernel grid (num_tokens, hidden blocks), _unpermute_kernel, _unpermute_bwd_with_merging_probs_kernel,
#   _row_id_map_pass_*_kernel, _sort_chunks_by_map_kernel), which Megatron-LM calls with --moe-permute-fusion;
# - FlashAttention (Dao-AILab/flash-attention csrc/flash_attn/src: flash_fwd_kernel<Flash_fwd_kernel_traits<
#   kHeadDim, kBlockM, kBlockN, ...>> launched on grid (ceil(seqlen_q / kBlockM), batch, heads),
#   flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<kHeadDim, kBlockM, kBlockN, ...>> on grid
#   (ceil(seqlen_k / kBlockN), batch, heads), flash_bwd_dot_do_o_kernel, flash_bwd_convert_dq_kernel; hopper/:
#   FlashAttnFwdSm90, FlashAttnBwdSm90, persistent: no shape in the grid).
_RULES: tuple[tuple[str, str, str], ...] = (
    ("deepep", "all_to_all", r"deep_ep::|hybrid_ep::"),
    ("deepgemm", "gemm", r"deep_gemm::|dpsk::gemm::"),
    ("flash_attention", "attention_bwd", r"flash_bwd|flashattnbwd|flash_attncuteflash_bwd|flashattentionbackward"),
    ("flash_attention", "attention", r"flash_fwd|flashattnfwd|flash::prepare_varlen|flashattentionforward"),
    ("transformer_engine", "attention_bwd", r"cudnn\w*(bprop|sdpa\w*bwd)|flash_bprop"),
    ("transformer_engine", "attention", r"cudnn\w*(fprop|sdpa)|flash_fprop"),
    ("transformer_engine", "cast_transpose", r"cast_transpose|quantize_transpose|transformer_engine::[^<>]*?transpose"),
    ("transformer_engine", "amax", r"transformer_engine::[^<>]*?(amax|scale)|delayed_scaling"),
    ("transformer_engine", "quantize", r"transformer_engine::[^<>]*?(cast|quantize)|cast_fp8_[12]d|cast_mxfp8"),
    ("transformer_engine", "norm_bwd", r"rmsnorm_bwd|ln_bwd_|layernorm_bwd|rmsnorm\w*backward"),
    ("transformer_engine", "norm", r"rmsnorm_fwd|ln_fwd_|layernorm_fwd|rmsnorm\w*forward"),
    ("transformer_engine", "rope_bwd", r"fused_rope_backward|fused_rope\w*bwd"),
    ("transformer_engine", "rope", r"fused_rope"),
    ("transformer_engine", "activation_bwd", r"transformer_engine::[^<>]*?dgated|dgated_act|dswiglu"),
    ("transformer_engine", "activation", r"transformer_engine::[^<>]*?(gated|swiglu)|gated_act_kernel"),
    ("transformer_engine", "router_bwd", r"(topk_with_score_function|score_for_moe_aux_loss|moe_aux_loss)\w*backward"),
    ("transformer_engine", "router", r"topk_with_score_function|score_for_moe_aux_loss|moe_aux_loss"),
    ("transformer_engine", "cross_entropy", r"cross_entropy"),
    ("megatron", "permute_bwd", r"unpermute_bwd|permute\w*(bwd|backward)"),
    ("megatron", "permute", r"moe_permute|moe_unpermute|_permute_kernel|_unpermute_kernel|row_id_map|sort_chunks"),
    ("torch", "norm_bwd", r"layer_norm_grad|rms_norm_grad|gammabetabackward"),
    ("torch", "norm", r"vectorized_layer_norm|layer_norm_kernel|rms_norm_kernel|rowwisemoments"),
    ("torch", "cross_entropy", r"nll_loss|logsoftmax"),
    # Fused kernels of other libraries (apex through Megatron's fused layer norm, FlashInfer, SGLang/vLLM casts).
    ("other_fused", "norm_bwd", r"cucomputegradinput|cucomputepartgradgammabeta|cucomputegradgammabeta"),
    ("other_fused", "norm", r"cuapplyrmsnorm|cuapplylayernorm|rmsnorm|layernorm"),
    ("other_fused", "rope", r"rotary|_rope|rope_"),
    ("other_fused", "activation", r"act_and_mul|silu_and_mul|swiglu"),
    ("other_fused", "quantize", r"per_token_group_quant|per_token_quant|per_block_quant|act_quant|scaled_fp8_quant"),
)
_RULES_RE = tuple((stack, kind, re.compile(rx, re.IGNORECASE)) for stack, kind, rx in _RULES)
#: A forward kind -> its backward kind, for kernels launched under an autograd backward op (``...Backward0``).
_BWD = {k: f"{k}_bwd" for k in ("attention", "norm", "rope", "activation", "permute", "router")}
_BWD["grouped_gemm"] = "grouped_gemm_dgrad"
#: DeepGEMM GemmType (deep_gemm/include/deep_gemm/common/types.cuh) -> kind: m-grouped are the experts' GEMMs,
#: k-grouped the experts' weight gradients.
_GEMM_TYPES = {0: "gemm", 1: "grouped_gemm", 2: "grouped_gemm", 3: "grouped_gemm_wgrad", 4: "gemm"}
_GEMM_TYPES |= {5: "grouped_gemm", 6: "grouped_gemm_wgrad"}
#: Shape columns where 0 is a value (a flag), not an unknown size.
_FLAGS = ("residual",)
#: DeepEP: GPUs of an NVLink domain per RDMA rank (csrc/kernels/configs.cuh NUM_MAX_NVL_PEERS).
_NVL_PEERS = 8


def _template_args(name: str, func: str) -> list[str]:
    """The top-level template arguments of the first ``func<...>`` in a demangled kernel name ([] if none)."""
    at = name.find(func + "<")
    if at < 0:
        return []
    out, depth, start = [], 0, at + len(func) + 1
    for j in range(start, len(name)):
        c = name[j]
        if c in "<([":
            depth += 1
        elif c in ">)]":
            if depth == 0:
                return [*out, name[start:j].strip()] if c == ">" else out
            depth -= 1
        elif c == "," and depth == 0:
            out.append(name[start:j].strip())
            start = j + 1
    return out


def _num(arg: str) -> int | None:
    """An integer template argument as demanglers print it (``128``, ``128u``, ``(int)128``, ``(unsigned int)128``,
    ``(deep_gemm::GemmType)1``, ``true``), else None."""
    s = re.sub(r"^(\([^()]*\)\s*)+", "", arg.strip()).rstrip("uUlL")
    if s in ("true", "false"):
        return int(s == "true")
    try:
        return int(s)
    except ValueError:
        return None


def _grid(args: dict[str, Any]) -> tuple[int, int, int] | None:
    """A kernel event's launch grid (x, y, z), or None."""
    g = args.get("grid")
    try:
        x, y, z = (int(v) for v in g)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (x, y, z) if min(x, y, z) > 0 else None


def _deepep(name: str) -> Shape:
    """``gpus`` of intranode/internode dispatch and combine, ``hidden`` of the low-latency kernels (their largest
    integer template argument: the others are warp counts, top-k and flags)."""
    for func in ("internode_ll::dispatch", "internode_ll::combine"):
        nums = [n for n in map(_num, _template_args(name, func)) if n is not None]
        if nums:
            return {"hidden": max(nums), "mode": "low_latency"}
    t = _template_args(name, "intranode::dispatch") or _template_args(name, "intranode::combine")
    if t:
        ranks = _num(t[0]) if "intranode::dispatch<" in name else _num(t[1]) if len(t) > 1 else None
        return {"gpus": ranks, "mode": "intranode"} if ranks else {}
    t = _template_args(name, "internode::dispatch") or _template_args(name, "internode::combine")
    rdma = _num(t[1]) if len(t) > 1 else None
    return {"gpus": rdma * _NVL_PEERS, "mode": "internode"} if rdma else {}


def _deepgemm(name: str) -> tuple[str, Shape]:
    """(kind, shape) of a DeepGEMM kernel from its template: ``n``, ``k`` (and ``m`` when compiled in), ``groups``."""
    kind_of = re.search(r"GemmType\)\s*(\d+)", name)
    gemm_type = int(kind_of.group(1)) if kind_of else 0
    kind = "grouped_gemm_wgrad" if "wgrad" in name.lower() and gemm_type == 0 else _GEMM_TYPES.get(gemm_type, "gemm")
    func = re.search(r"(\w*gemm\w*)<", name)
    fname, args = (func.group(1), _template_args(name, func.group(1))) if func else ("", [])
    t = [_num(a) if "::" not in a else None for a in args]  # an enum of a namespace (a major) is no size
    shape: Shape = {}
    if re.fullmatch(r"sm90_\w+_impl", fname) and len(t) >= 4 and None not in t[:4]:  # <M, N, K, groups, ...>
        shape = {"m": t[0], "n": t[1], "k": t[2], "groups": t[3]}
    elif fname == "fp8_gemm_kernel" and len(t) >= 9:  # <SHAPE_N, SHAPE_K, BLOCK_M, BLOCK_N, BLOCK_K, ...>
        groups = t[7] if len(t) == 14 else t[5] if len(t) == 9 else None
        shape = {"n": t[0], "k": t[1], "groups": groups}
    # 0 or None: a size given at run time. Other layouts (sm100's <kMajorA, kMajorB, [kGranKA, kGranKB,] SHAPE_M,
    # ...>, which differ between versions) are recognised without a shape.
    shape = {k: v for k, v in shape.items() if v}
    return kind, shape


def _flash(name: str, grid: tuple[int, int, int] | None) -> Shape:
    """FlashAttention-2 fwd/bwd: ``head_dim`` from the kernel traits; ``batch``, ``heads`` and the query (fwd) or key
    (bwd) length rounded up to the tile, ``*_len_max``, from the grid (ceil(len / kBlock), batch, heads)."""
    for traits, tile, length in (
        ("Flash_fwd_kernel_traits", 1, "q_len_max"),
        ("Flash_bwd_kernel_traits", 2, "kv_len_max"),
    ):
        t = [_num(a) for a in _template_args(name, traits)]
        if len(t) > tile and t[0]:
            shape: Shape = {"head_dim": t[0]}
            main = "dq_dk_dv" in name or "flash_fwd_kernel" in name
            if grid is not None and main and t[tile]:
                shape |= {length: grid[0] * t[tile], "batch": grid[1], "heads": grid[2]}
            return shape
    return {}


@functools.lru_cache(maxsize=1 << 16)  # a training trace repeats a few hundred (name, grid) pairs many times
def _recognise(name: str, grid: tuple[int, int, int] | None) -> tuple[str, str, Shape, str] | None:
    """(stack, kind, shape read from the name and grid, where it came from) of a training-stack kernel, else None.
    The shape is shared between calls (cached): copy it before changing it."""
    for stack, kind, rx in _RULES_RE:
        if not rx.search(name):
            continue
        shape: Shape = {}
        if stack == "deepep":
            shape = _deepep(name)
        elif stack == "deepgemm":
            if re.search(r"mqa_logits|attention", name, re.IGNORECASE):
                kind = "attention"
            elif re.search(r"transpose|layout|_sf_|clean", name, re.IGNORECASE):
                kind = "quantize"
            elif "mega_moe" in name.lower():
                kind = "grouped_gemm"
            else:
                kind, shape = _deepgemm(name)
        elif stack == "flash_attention":
            shape = _flash(name, grid)
        elif kind.startswith("norm") and "normalization::Kernel_traits<" in name:
            # TE's tuned norm kernels: Kernel_traits<WeightT, InputT, OutputT, ComputeT, IndexT, HIDDEN_SIZE, ...>
            args = _template_args(name, "normalization::Kernel_traits")
            hidden = _num(args[5]) if len(args) > 5 else None
            shape = {"hidden": hidden} if hidden else {}
        elif stack == "megatron" and kind == "permute" and grid is not None and "_permute_kernel" in name:
            shape = {"tokens": grid[0], "direction": "dispatch"}  # grid (num_tokens, cdiv(hidden, BLOCK_SIZE))
        elif stack == "megatron" and kind == "permute" and grid is not None and "_unpermute_kernel" in name:
            shape = {"tokens": grid[0], "direction": "combine"}
        source = "grid" if {"tokens", "batch"} & set(shape) else "name" if shape else ""
        return stack, kind, shape, source
    return None


def _load(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise TableError(f"{p}: no such trace file", "give a file written by prof.export_chrome_trace")
    hint = "give a Chrome trace .json or .json.gz (prof.export_chrome_trace)"
    try:
        raw = inputs.read_bytes(p, "a Chrome trace", hint)
        if raw[:2] == inputs.MAGIC[".gz"]:
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as exc:
                raise TableError(f"{p}: a damaged gzip file ({type(exc).__name__})", hint) from None
        data = inputs.parse_json(raw, p, hint, check_depth=False)
    except TableError:
        raise
    except MoesimError as exc:
        raise TableError(exc.message, exc.hint) from None
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise TableError(f"{p}: not a Chrome trace (no traceEvents)", "export it with prof.export_chrome_trace")
    events = [e for e in data["traceEvents"] if isinstance(e, dict) and e.get("ph") == "X" and "dur" in e]
    if not events:
        raise TableError(f"{p}: the trace has no complete (ph X) events", "profile a region that runs ops")
    return events


def _nest(events: list[_Ev]) -> None:
    """Link events of one thread into trees by time containment (0.01 µs slack for rounding)."""
    by_thread: dict[Any, list[_Ev]] = defaultdict(list)
    for e in events:
        by_thread[e.thread].append(e)
    for evs in by_thread.values():
        stack: list[_Ev] = []
        for e in sorted(evs, key=lambda e: (e.ts, -e.dur)):
            while stack and e.ts + e.dur > stack[-1].ts + stack[-1].dur + 0.01:
                stack.pop()
            if stack:
                e.parent = stack[-1]
                stack[-1].children.append(e)
            stack.append(e)


class _Importer:
    """Collects table rows and unmapped (name, reason, µs) entries from one trace's events."""

    def __init__(self, raw: list[dict[str, Any]]) -> None:
        evs = [_Ev(r) for r in raw]
        self.ops = [e for e in evs if e.cat in ("cpu_op", "operator")]
        runtime = [e for e in evs if e.cat in ("cuda_runtime", "cuda_driver", "runtime")]
        self.gpu = [e for e in evs if e.cat in GPU_CATS]
        _nest(self.ops + runtime)
        self.by_ext = {e.args["external id"]: e for e in self.ops if e.args.get("external id")}
        self.by_corr = {e.args["correlation"]: e for e in runtime if e.args.get("correlation") is not None}
        self.order: dict[Any, list[_Ev]] = defaultdict(list)
        for e in sorted(self.ops, key=lambda e: e.ts):
            self.order[e.thread].append(e)
        self.starts = {t: [e.ts for e in evs] for t, evs in self.order.items()}
        self.rows: list[dict[str, Any]] = []
        self.unmapped: list[tuple[str, str, float]] = []
        self.kernels: list[dict[str, Any]] = []  # one per GPU event (`_kernel_report`)
        self.halves: list[tuple[Any, ...]] = []  # the experts' grouped GEMMs awaiting their partner (`_pairs`)

    def _row(self, kind: str, shape: Shape, dtype: str, family: str, name: str, dur_us: float, src: str = "op") -> None:
        row = {"op": kind, "impl": f"trace:{family}", "dtype": dtype, "time_s": dur_us * 1e-6}
        self.rows.append({**row, **shape, "name": name, "source": "trace", "shape_from": src})

    def _hidden(self, topk: _Ev, shape: Shape) -> int | None:
        """``k`` of the latest GEMM before ``topk`` on its thread with output [tokens, experts]."""
        ops, end = self.order[topk.thread], bisect.bisect_left(self.starts[topk.thread], topk.ts)
        for e in reversed(ops[max(0, end - 500) : end]):
            got = _parse(e, "gemm") if e.ts + e.dur <= topk.ts else None
            if got and got[1] and (got[1]["m"], got[1]["n"]) == (shape["tokens"], shape["experts"]):
                return got[1]["k"]
        return None

    def _shape(self, ev: _Ev, kind: str | None = None) -> tuple[str, Shape | None, str, str] | None:
        """(kind, shape, dtype, reason) for an op with a parser; router rows get ``hidden`` here."""
        got = _parse(ev, kind)
        if got is None:
            return None
        kind, shape, dtype = got
        if shape is not None and kind == "router":
            shape["hidden"] = self._hidden(ev, shape)
            if shape["hidden"] is None:
                return kind, None, dtype, "no hidden size"
        return kind, shape, dtype, "no shape"

    def cpu(self) -> None:
        memo: dict[int, bool] = {}

        def mappable(e: _Ev) -> bool:
            if id(e) not in memo:
                memo[id(e)] = _parse(e) is not None or any(mappable(c) for c in e.children)
            return memo[id(e)]

        def visit(e: _Ev) -> None:
            got = self._shape(e)
            if got is not None:
                kind, shape, dtype, reason = got
                if shape is None:
                    self.unmapped.append((e.name, reason, e.dur))
                else:
                    self._row(kind, shape, dtype, e.name.split("::")[-1], e.name, e.dur)
            elif not mappable(e):
                self.unmapped.append((e.name, "unknown op", e.dur))
            else:
                self_us = e.dur - sum(c.dur for c in e.children)
                self.unmapped += [(e.name, "unknown op", self_us)] if self_us > 0 else []
                for c in e.children:
                    visit(c)

        for e in sorted(self.ops, key=lambda e: e.ts):
            if e.parent is None:
                visit(e)

    def _classify(self, k: _Ev) -> tuple[str, str, Shape, str, str] | None:
        """(stack, kind, shape from the kernel's name and grid, its source, family: the table's ``impl``) of a GPU
        event, None if unrecognised."""
        low = k.name.lower()
        if "nccl" in low:
            flat = low.replace("_", "")
            other = re.search(r"nccl(?:devkernel|kernel)?_([a-z]+)", low)  # broadcast, reduce...: no table kind
            fallback = ("nccl", other.group(1) if other else "nccl", {}, "", "nccl")
            return next((("nccl", kind, {}, "", "nccl") for word, kind in _NCCL if word in flat), fallback)
        if "memcpy" in k.cat or "memset" in k.cat:
            return ("torch", "memcpy", {}, "", "memcpy") if "memcpy" in k.cat else ("torch", "memset", {}, "", "")
        got = _recognise(k.name, _grid(k.args))
        if got is not None:
            return (*got, got[0])
        hit = next(((kind, w) for kind, words in _PATTERNS for w in words if w in low), None)
        if hit is None:
            return None
        stack = "cublas_cutlass" if hit[0] == "gemm" else "vllm" if hit[0] == "grouped_gemm" else "torch"
        return stack, hit[0], {}, "", hit[1]

    def _launcher(self, k: _Ev) -> _Ev | None:
        """The cpu_op (or, failing that, the runtime call) that launched kernel ``k``."""
        op = self.by_ext.get(k.args.get("external id"))
        rt = self.by_corr.get(k.args.get("correlation"))
        return op or (rt and self.by_ext.get(rt.args.get("external id"))) or rt

    @staticmethod
    def _rows_with(chain: list[_Ev], k: int) -> int | None:
        """Rows of the first 2-D input with ``k`` columns in the launching ops' Input Dims, innermost op first
        (a GEMM's ``m`` where the kernel's name gives ``n`` and ``k``)."""
        for e in chain:
            for d in e.args.get("input dims") or []:
                if isinstance(d, list) and len(d) == 2 and d[1] == k and isinstance(d[0], int) and d[0] > 0:
                    return d[0]
        return None

    def _from_ops(self, k: _Ev, kind: str, chain: list[_Ev]) -> tuple[tuple[Any, ...] | None, str]:
        """(key event, kind, shape, dtype) from the launching ops, or None; and the reason when None."""
        if kind == "memcpy" and "memcpy" in k.cat and "dtod" not in k.name.lower().replace(" ", ""):
            return None, "host copy"
        if kind in COLLECTIVES:
            meta = next((e.args for e in [k, *chain] if "in msg nelems" in e.args), None)
            if meta and meta.get("group size"):
                dtype, size = _dtype(meta.get("dtype", ""))
                nelems = max(meta["in msg nelems"], meta.get("out msg nelems") or 0)
                return (k, kind, {"bytes": nelems * (size or 0), "gpus": meta["group size"]}, dtype), ""
            return None, "no shape"
        if kind == "memcpy" and k.args.get("bytes"):
            types = next((e.args["input type"] for e in chain if e.args.get("input type")), [""])
            return (k, kind, {"bytes": k.args["bytes"]}, _dtype(types[0])[0]), ""
        reason = "no shape"
        for e in reversed(chain):  # outermost first
            got = self._shape(e, kind)
            if got is not None and got[1] is not None:
                return (e, kind, got[1], got[2]), ""
            reason = got[3] if got is not None else reason
        return None, reason

    def gpu_events(self) -> None:
        groups: dict[tuple[int, str], list[Any]] = {}
        for k in self.gpu:
            cls = self._classify(k)
            record = {"name": k.name, "stack": "unknown", "kind": "", "phase": "", "dtype": "", "time_s": k.dur * 1e-6}
            if cls is None:
                self.unmapped.append((k.name, "unknown kernel", k.dur))
                self.kernels.append({**record, "tabled_s": 0.0, "shape": "", "shape_from": "", "reason": ""})
                continue
            stack, kind, kshape, source, family = cls
            chain: list[_Ev] = []
            ev = self._launcher(k)
            while ev is not None:
                chain, ev = [*chain, ev], ev.parent
            backward = any("backward" in e.name.lower() for e in chain)
            kind = _BWD.get(kind, kind) if backward else kind
            phase = "bwd" if backward or kind.endswith(("_bwd", "_dgrad", "_wgrad")) else "fwd"
            found, reason = self._from_ops(k, kind, chain)
            shape_from = "op" if found is not None else ""
            if found is None and kshape:  # the kernel's own name and launch grid
                shape = dict(kshape)
                if kind.startswith(("gemm", "grouped_gemm")) and "m" not in shape and shape.get("k"):
                    m = self._rows_with(chain, shape["k"])
                    shape, source = ({**shape, "m": m}, f"{source}+op") if m else (shape, source)
                types = next((e.args["input type"] for e in chain if e.args.get("input type")), [""])
                dtype = _name_dtype(k.name, stack) or _dtype(types[0])[0]
                found, shape_from = (k, kind, shape, dtype), source
            need = SHAPE_COLUMNS.get(kind) if kind in KINDS else None
            shape = found[2] if found is not None else {}
            missing = [c for c in need or () if not shape.get(c) and not (c in _FLAGS and c in shape)]
            if need is None:
                reason = f"no {kind} table"
            elif shape and missing:
                reason = f"partial shape (no {', '.join(missing)})"
            text = " ".join(f"{c}={v}" for c, v in shape.items())
            dtype = found[3] if found is not None else _name_dtype(k.name, stack)
            record |= {"stack": stack, "kind": kind, "phase": phase, "dtype": dtype, "shape": text}
            record["shape_from"] = shape_from
            if kind == "grouped_gemm" and found is not None and {"m", "n", "k", "groups"} <= set(shape):
                self.halves.append((k, shape, dtype, family, record))  # one of the experts' two GEMMs: `_pairs`
                continue
            if found is None or need is None or missing:
                self.unmapped.append((k.name, reason, k.dur))
                self.kernels.append({**record, "tabled_s": 0.0, "reason": reason})
                continue
            self.kernels.append({**record, "tabled_s": k.dur * 1e-6, "reason": ""})
            entry = groups.setdefault((id(found[0]), kind), [found, family, [], 0.0, shape_from])
            entry[2] += [] if k.name in entry[2] else [k.name]
            entry[3] += k.dur
        for (_, kind), (found, family, names, dur, shape_from) in groups.items():
            self._row(kind, found[2], found[3], family, " + ".join(names), dur, shape_from)
        self._pairs()

    def _pairs(self) -> None:
        """Join the experts' two grouped GEMMs, each a kernel of its own (DeepGEMM's m-grouped kernels), into one
        grouped_gemm row: gate_up [m, hidden] x [groups, 2 inter, hidden], then down [m, inter] x [groups, hidden,
        inter], the next such kernel on the same stream with the same ``m`` and ``groups``. The row is the work this
        GPU did: ``tokens`` = m rows (token-expert pairs received, padding included), ``top_k`` = 1, ``experts`` =
        the local groups; its time is the two GEMMs'. A kernel with no partner stays unmapped."""
        pending: dict[Any, tuple[Any, ...]] = {}
        for half in sorted(self.halves, key=lambda h: h[0].ts):
            k, shape, dtype, family, _ = half
            stream = (k.thread, shape["m"], shape["groups"])
            first = pending.pop(stream, None)
            if first is None or first[1]["n"] != 2 * shape["k"] or first[1]["k"] != shape["n"]:
                if first is not None:
                    self._unpaired(first)
                pending[stream] = half
                continue
            row = {"tokens": shape["m"], "hidden": shape["n"], "inter": shape["k"], "experts": shape["groups"]}
            dur = first[0].dur + k.dur
            names = first[0].name if first[0].name == k.name else f"{first[0].name} + {k.name}"
            self._row("grouped_gemm", {**row, "top_k": 1}, dtype, family, names, dur, "name+op")
            for h in (first, half):
                self.kernels.append({**h[4], "tabled_s": h[0].dur * 1e-6, "reason": ""})
        for half in pending.values():
            self._unpaired(half)

    def _unpaired(self, half: tuple[Any, ...]) -> None:
        reason = "partial shape (one grouped GEMM with no gate_up/down partner)"
        self.unmapped.append((half[0].name, reason, half[0].dur))
        self.kernels.append({**half[4], "tabled_s": 0.0, "reason": reason})

    def result(self, device: str) -> TraceImport:
        tables: dict[str, pd.DataFrame] = {}
        df = pd.DataFrame(self.rows)
        for kind, rows in df.groupby("op", sort=False) if len(df) else []:
            shape = SHAPE_COLUMNS[kind]
            rows = rows[["op", "impl", "dtype", "time_s", *shape, "name", "source", "shape_from"]]
            rows = rows.reset_index(drop=True).astype({c: "int64" for c in shape if c != "direction"})
            tables[kind] = check_table(rows, f"trace:{kind}")
        un = pd.DataFrame(self.unmapped, columns=["name", "reason", "total_s"])
        un["total_s"] *= 1e-6
        un = un.groupby("name", as_index=False).agg(
            count=("total_s", "size"), total_s=("total_s", "sum"), reason=("reason", "first")
        )
        un = un.sort_values(["total_s", "name"], ascending=[False, True], ignore_index=True)
        mapped, unmapped_s = float(df["time_s"].sum()) if len(df) else 0.0, float(un["total_s"].sum())
        kernels = _kernel_report(self.kernels)
        cov = _coverage(kernels, mapped, unmapped_s)
        return TraceImport(tables, un[["name", "count", "total_s", "reason"]], mapped, unmapped_s, device, kernels, cov)


KERNEL_COLUMNS = ("name", "stack", "kind", "phase", "dtype", "count", "total_s", "tabled_s", "shape", "shape_from")
KERNEL_COLUMNS += ("reason",)


def _name_dtype(name: str, stack: str) -> str:
    """The dtype a kernel's name states (DeepGEMM's fp8 kernels are block-scaled: ``fp8_block``), else ""."""
    low = name.lower()
    if re.search(r"fp8|e4m3|e5m2|float8", low):
        return "fp8_block" if stack == "deepgemm" else "fp8"
    if re.search(r"bf16|bfloat16", low):
        return "bf16"
    return "fp16" if re.search(r"\bhalf\b|fp16|f16_|_f16", low) else ""


def _kernel_report(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per kernel name: its stack, kind, phase(s), count, seconds, seconds in table rows, the shape read
    (the first occurrence's), where it came from and why it is not in a table; by total_s, descending."""
    if not records:
        return pd.DataFrame(columns=list(KERNEL_COLUMNS))
    kd = pd.DataFrame(records)
    out = kd.groupby("name", as_index=False, sort=False).agg(
        stack=("stack", "first"),
        kind=("kind", "first"),
        phase=("phase", lambda p: "+".join(sorted(set(p) - {""}))),
        dtype=("dtype", "first"),
        count=("time_s", "size"),
        total_s=("time_s", "sum"),
        tabled_s=("tabled_s", "sum"),
        shape=("shape", "first"),
        shape_from=("shape_from", "first"),
        reason=("reason", lambda r: next((x for x in r if x), "")),
    )
    return out.sort_values(["total_s", "name"], ascending=[False, True], ignore_index=True)[list(KERNEL_COLUMNS)]


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def _coverage(kernels: pd.DataFrame, mapped_s: float, unmapped_s: float) -> dict[str, Any]:
    """The share of the trace's time in table rows, and on a CUDA trace per stack and kind (`TraceImport.coverage`)."""
    total = mapped_s + unmapped_s
    cov: dict[str, Any] = {"time_s": total, "tabled_s": mapped_s, "tabled_share": _share(mapped_s, total)}
    if kernels.empty:
        return cov
    known = kernels[kernels["stack"] != "unknown"]
    cov |= {"recognised_s": float(known["total_s"].sum())}
    cov["recognised_share"] = _share(cov["recognised_s"], float(kernels["total_s"].sum()))
    for col in ("stack", "kind"):
        agg = kernels.groupby(col).agg(
            time_s=("total_s", "sum"), tabled_s=("tabled_s", "sum"), kernels=("name", "size")
        )
        agg = agg.sort_values("time_s", ascending=False)
        cov[f"by_{col}"] = {
            str(key): {
                "time_s": float(r.time_s),
                "share": _share(float(r.time_s), total),
                "tabled_s": float(r.tabled_s),
                "tabled_share": _share(float(r.tabled_s), float(r.time_s)),
                "kernel_names": int(r.kernels),
            }
            for key, r in agg.iterrows()
            if col == "stack" or key
        }
    unknown = kernels[kernels["stack"] == "unknown"].head(10)
    cov["unrecognised_top"] = unknown[["name", "count", "total_s"]].to_dict(orient="records")
    return cov


def import_chrome_trace(path: str | Path) -> TraceImport:
    """Read a torch.profiler Chrome trace (``.json`` or gzip ``.json.gz``) into kernel tables.

    Raises `TableError` for a missing file, a file that is not a JSON Chrome trace, or a trace with no
    complete events. See the module docstring for the mapping rules.
    """
    imp = _Importer(_load(path))
    device = "cuda" if any(e.cat == "kernel" for e in imp.gpu) else "cpu"
    imp.gpu_events() if device == "cuda" else imp.cpu()
    return imp.result(device)


def import_trace(src: str | Path, out: str | Path, hardware: Any = None, force: bool = False) -> dict[str, Any]:
    """Import a trace into moesim tables under ``out`` (``trace_<kind>.parquet``) and ``unmapped.csv``.

    ``hardware`` (a `model.hardware.HardwareSpec`, or None) is the device the
    trace was taken on; its roofline becomes the calibration's reference.
    Returns a summary: files, rows per kind, device, mapped and unmapped
    seconds, the ten costliest unmapped names, and ``coverage`` (`TraceImport.coverage`: the share of the
    trace's kernel time in table rows, per stack and kind, and the costliest unrecognised kernels). Files are
    added to ``out`` as `profiling.tables.write_table_folder` does (``force``: over files moesim did not write).
    """
    from moesim.profiling.tables import check_table_folder, table_writer, write_table_folder

    src, out = Path(src), Path(out)
    check_table_folder(out, "import", force)
    result = import_chrome_trace(src)
    if not result.tables:
        raise TableError(f"{src}: no event maps to an op kind moesim knows", "record the trace with record_shapes=True")
    meta = {
        "source": f"torch.profiler trace: {src.name}",
        "device_type": result.device,
        "device_key": hardware.key if hardware is not None else None,
        "hardware": hardware.model_dump() if hardware is not None else None,
    }
    writers = {
        f"trace_{k}.parquet": table_writer(df, meta, str(out / f"trace_{k}.parquet")) for k, df in result.tables.items()
    }
    writers["unmapped.csv"] = lambda tmp: result.unmapped.to_csv(tmp, index=False)
    paths = write_table_folder(out, "import", writers, force)
    files = [str(p) for name, p in paths.items() if name != "unmapped.csv"]
    unmapped = paths["unmapped.csv"]
    return {
        "format": "trace",
        "out": str(out),
        "files": files,
        "rows": {k: len(v) for k, v in result.tables.items()},
        "device": result.device,
        "mapped_s": result.mapped_s,
        "unmapped_s": result.unmapped_s,
        "unmapped_names": len(result.unmapped),
        "unmapped_csv": str(unmapped),
        "unmapped_top": result.unmapped.head(10).to_dict(orient="records"),
        "coverage": result.coverage,
    }
