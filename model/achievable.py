"""The achievable cost model: the roofline plus the mechanisms that keep real kernels off it.

`model.roofline.RooflineCostModel` times an op at the datasheet's peak FLOP/s and bandwidth: a lower bound that
real kernels never reach. Without measured tables for a GPU (``moesim calibrate``) that bound is all moesim had,
and end-to-end it is systematically optimistic. `AchievableCostModel` (``--cost-model achievable``) keeps the
roofline's form and its links, and adds six mechanisms, each with a published figure per GPU family
(`ACHIEVABLE`; nothing here is fitted to end-to-end serving runs):

1. **Achievable DRAM bandwidth** (bytes/s): what a streaming kernel reaches (a device copy or STREAM triad), not
   the datasheet figure. H100 SXM: 3.02 TB/s (90% of 3.35). Where the engine's measured GEMMs of a few rows
   stream slower than a copy, a dense GEMM takes its own rate (``gemm_bw``): the A100's vLLM GEMMs move 1.45 TB/s
   where its STREAM triad moves 1.76 (AIConfigurator's A100 table, ``python -m benchmarks.a100_kernels``). The
   L40S's own kernels (AIConfigurator's L40S tables) stream at 0.70-0.71 TB/s, its GEMMs and its FA2 decode alike,
   where the L40's STREAM triad moved 0.80.
2. **Achievable tensor-core throughput** (fraction of the dense peak) of a large, well-shaped GEMM (cuBLAS at its
   best shape), and **tile and wave quantisation**: a GEMM ``C[m, n] = A[m, k] @ W[k, n]`` runs as
   ``tiles = ceil(m / tm) x ceil(n / tn)`` output tiles over ``ceil(k / tk) x tk`` of K, in
   ``waves = ceil(tiles / SMs)`` waves, each wave as long as one tile on one SM at ``fraction x peak / SMs``.
   The tile is the one of `GEMM_TILES` that finishes first (cuBLAS' heuristics choose among such tiles). This is
   what makes small and odd GEMMs slow (NVIDIA, *Matrix Multiplication Background User's Guide*, DU-09799-001,
   "Tile Quantization" and "Wave Quantization"). The fused-MoE layer is timed kernel by kernel
   (`model.ops.fused_moe_parts`: alignment, two grouped GEMMs, activation, top-k sum), each grouped GEMM with
   vLLM's default Triton tiles (block_m 16 or 64 rows per expert, `model.ops.moe_block_m`; block_n 32 or 64), at
   the fraction of the peak that Triton kernel reaches (``moe_fraction``: 50% in bf16 on the H100, measured in
   AIConfigurator's database, against cuBLAS' 84%; a GPU or dtype without the figure takes ``gemm_fraction``).
   Training's grouped GEMMs (the two GEMMs alone, `model.ops.experts_gemms`) and quantised weights keep
   ``gemm_fraction``.
3. **A fixed time per kernel** (s): each kernel launch spends time on the device in which no byte streams and no
   FLOP runs (launch, ramp-up, tail). It is *added* to the kernel's work time, once per launch (``Op.kernels``):
   a device copy's time on the H100 is ``4.0 us + bytes / 2.95 TB/s`` over 8 KB to 4 GiB
   (profiling/data/h100-sxm/full-bf16/memcpy.parquet, timed with CUDA events around each call). The figure holds
   the events' own cost too; back to back, AIConfigurator's smallest H100 GEMM takes 2.44 us. Checked at the
   level of a step: with it, a Llama-3.2-1B decode step at batch 1 on an H100 moves its bytes at 50% of 3.35
   TB/s, where Hazy Research measured vLLM and SGLang at "at most 50%" (``python -m benchmarks.achievable``).
4. **Attention**: FLOPs at FlashAttention's published achieved rate on long sequences (FA3 on Hopper: 629.5 TFLOP/s
   at head_dim 128; FA2 on Ampere/Ada: 58.9% of the peak on the A100 and 63.8% on the L40S, vLLM's causal prefill as
   measured), one CTA per 128 queries of a sequence and head, each spending 1.83 key blocks' worth of time outside
   its key loop (the published FA3 curve over sequence length, `attention_compute_s`), SMs left idle by too few CTAs,
   and the causal mask's longest CTA; the KV cache read (paged, in blocks) at the achievable bandwidth. **Decode**
   (one query per sequence, not MLA) is FlashAttention's paged split-KV kernel as vLLM V1 runs it
   (`decode_attention`): every sequence's cache read in whole 16-token pages, one CTA per (sequence, KV head, split)
   with the query heads of a KV head packed together, FlashAttention's own split heuristic (`fa_num_splits`) and its
   combine kernel when it splits, and each CTA's fixed time outside its loop (FA3's 1.83 key blocks), exposed where
   few CTAs run. The time per running sequence so grows with its context, and few KV heads per GPU (GQA under tensor
   parallelism) pay a fixed cost. Below Hopper vLLM runs **FlashAttention 2** (``attention_kernel: fa2``): it packs a
   KV head's query heads only in a batch of decoding sequences alone, so in a batch that also holds a prompt each
   decoding sequence runs one 64-row tile per query head (`fa2_mixed_attention`); its decode splits keys only where
   it packs heads, and its CTAs run two per SM on the A100, the CTAs of an SM streaming at most ``attention_sm_bw``.

5. **Block-scaled fp8** (fp8 weights in 128 x 128 blocks with one fp32 scale each, activations in 1 x 128 groups:
   `is_block_fp8`): the GEMM first runs an activation-quantisation kernel (`act_quant_op`, vLLM's
   ``per_token_group_quant_fp8``), then a main loop whose tensor-core partial sums are scaled and promoted on the
   CUDA cores every 128 of K. The dense GEMM is vLLM's CUTLASS blockwise kernel on Hopper: its fraction of the
   fp8 peak (``gemm_fraction.fp8_block``, 57%) and its weight-streaming rate (``block_fp8_bw``, 1.9 TB/s) are
   DeepGEMM's published H800 figures divided by its published speed-up over that CUTLASS kernel. The fused-MoE
   Triton kernel quantises the input of each of its two grouped GEMMs (two more kernels) and runs at the same
   fraction. Per-tensor fp8 GEMMs run the single tile vLLM's ``cutlass_scaled_mm`` dispatch picks for their m
   (`vllm_fp8_tile`), not the best of `GEMM_TILES`.

6. **vLLM's sort-based top-k/top-p sampler** (`model.ops.sampler_op` ``top_p`` / ``top_k_top_p``, what vLLM 0.15
   runs for a model whose generation config sets top-p): PyTorch's row sort is radix-sort kernels that move their
   bytes at `SORT_BW_FRACTION` of the achievable bandwidth and take `SORT_KERNEL_S` each (both from published H100
   timings of that very filter, `sort_sampler_time`); its other kernels as any memory-bound kernel. It costs ~18 us
   per running sequence per step at a 128k vocabulary on an H100: the per-sequence decode cost the vllm-e2e-dense
   runs of Llama-3.1, Llama-2 and Qwen showed beyond the KV read.

The figures live in ``model/presets/achievable.yaml`` (`HardwareSpec.achievable`), each with its source; a
``--hardware`` file's GPU entry may carry its own ``achievable:`` block.

An op's time is ``kernels x kernel_s + max(compute, memory) + link`` with ``compute`` and ``memory`` from the
mechanisms above; collectives and DeepEP keep the roofline's link model unchanged (no kernel term: the measured
collective latency already holds it), but a serving engine's tensor-parallel all-reduce, which runs the engine's
custom all-reduce kernel, timed from that kernel's published H100 measurements (`model.allreduce`). Every time is
at least the roofline's but those: the roofline's all-reduce is a ring at the whole link plus NCCL's small-message
floor, which the one-shot kernel undercuts at small messages (published: 7 us for 0.5 MiB over 2 GPUs, the
ring 8.3 us).

A GPU without its own figure for a mechanism reuses another GPU's, and says so: `params_for` names every reused
figure, and each op's ``source`` reads ``achievable`` (all figures its own) or ``achievable:reused ...``. An unknown
GPU (a ``--hardware`` file's) reuses the H100 SXM's fractions and floor, scaled to its own datasheet.

Units: seconds, bytes, bytes/s, FLOP, FLOP/s; fractions are of the datasheet's dense peak (0.84 = 84%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from moesim.model.a2a import deepep_time, is_deepep
from moesim.model.allreduce import seconds as engine_allreduce_seconds
from moesim.model.dtypes import FP8_BLOCK_SCALE_BYTES
from moesim.model.hardware import AchievableSpec, AchievedFigure, ClusterSpec, HardwareSpec, list_gpus
from moesim.model.op_record import Op, memory_op
from moesim.model.ops import fused_moe_parts, moe_block_m
from moesim.model.roofline import OpTime, link_seconds

#: Output tiles (rows, columns) a GEMM library chooses among (CUTLASS/cuBLAS threadblock tiles on sm80/sm90; the
#: NVIDIA guide above lists 256x128, 128x256, 128x128, 256x64, 64x256, 128x64, 64x128 and 64x64). The model takes
#: the one that finishes first. K is processed in steps of `GEMM_TILE_K`.
GEMM_TILES: tuple[tuple[int, int], ...] = ((256, 128), (128, 256), (128, 128), (128, 64), (64, 128), (64, 64))
#: K per main-loop step of a tensor-core GEMM (elements; 64 for 16-bit operands in CUTLASS' sm80/sm90 kernels).
GEMM_TILE_K = 64
#: Queries per CTA of FlashAttention's forward kernel (kBlockM: 128 for head_dim 64-128 in FA2's
#: csrc/flash_attn/src/flash_fwd_launch_template.h and FA3's hopper/tile_size.h).
ATTN_BLOCK_Q = 128
#: Keys per inner-loop block of the same kernels (kBlockN: 128 for FA3's causal head_dim 128; 64-128 in FA2).
ATTN_BLOCK_K = 128
#: Tokens per KV-cache page: vLLM's default ``block_size`` 16 on CUDA (vllm-project/vllm@vllm/config/cache.py
#: ``CacheConfig.block_size``; the vllm-e2e-dense runs record 16). A sequence's cache is read in whole pages.
PAGE_TOKENS = 16
#: Most KV splits FlashAttention's split-KV decode takes (``max_splits`` 128 in Dao-AILab/flash-attention@
#: csrc/flash_attn/flash_api.cpp ``set_params_splitkv``).
MAX_KV_SPLITS = 128
#: Query rows per CTA of FA2's split-KV kernel (kBlockM 64, flash_fwd_launch_template.h
#: ``run_mha_fwd_splitkv_dispatch``): with one query per sequence the ``heads / kv_heads`` query heads of a KV head
#: are packed as its rows (FA2's ``seqlenq_ngroups_swapped``, FA3's PackGQA), so a CTA serves one KV head of one
#: sequence.
DECODE_BLOCK_M = 64
#: Attention forms timed by FlashAttention's paged decode (not MLA, which FlashMLA or the MLA backends run).
FA_FORMS = frozenset({"mha", "gqa", "mqa", "", "standard"})
#: Kinds timed as a GEMM with tile and wave quantisation (``shape`` has ``m, n, k``).
GEMM_KINDS = frozenset({"gemm"})
#: Fraction of the achievable DRAM bandwidth at which the radix-sort kernels of PyTorch's row sort move their bytes
#: (`model.ops.SORT_BYTES_PER_LOGIT`), and the fixed device time of each of them (s), from the published H100
#: timings of vLLM's PyTorch top-p filter (``apply_top_k_top_p_pytorch``, fp32 logits, vocabulary 32768, CUDA events;
#: the sort plus 54 bytes per logit of top-p and scatter kernels in 7 more launches, `model.ops.sampler_op`):
#: 0.179 ms at 4 rows (vllm-project/vllm#42191, "Benchmark results on a H100") and 0.393 ms at 56 rows
#: (vllm-project/vllm#33538, the same author's benchmark, reopening #25824 "Tested on a H100"). The slope between
#: them, 125.6 ps per logit, is 54 / 3.02 TB/s + 156 / (3.02 TB/s x 0.48); the intercept leaves 12.2 us per sort
#: kernel once the other 7 take `kernel_s` (4 us) each. Checked on the same tables outside the two points: 512 and
#: 1,024 rows of 131,072 (PyTorch's segmented sort path) predicted 8.6 and 17.0 ms against 8.79 and 16.31 ms; 1 row
#: of 32,768 (its single-segment path, 7 sort kernels) 116 us against 94 us. A cub onesweep radix sort reaches a
#: similar share on large inputs: 29.4 GKey/s of 32-bit keys on an A100 (Adinets and Merrill, arXiv:2206.01784) is
#: 36 bytes per key at 1.06 TB/s. Other GPUs reuse the fraction (of their own achievable bandwidth) and the time.
SORT_BW_FRACTION = 0.48
SORT_KERNEL_S = 12.2e-6


#: One published figure: ``value``, ``source`` (a URL or repo@path, and what was measured) and ``reused`` (why,
#: where it is another GPU's figure). The figures live in ``model/presets/achievable.yaml`` (`HardwareSpec.achievable`).
Figure = AchievedFigure


@dataclass(frozen=True)
class AchievableParams:
    """What one GPU family reaches, per mechanism (see the module docstring).

    Attributes:
        gpu: the `HardwareSpec.key` these figures are for.
        dram_bw: achievable device-memory bandwidth, bytes/s.
        gemm_fraction: achieved fraction of the dense tensor peak of a large GEMM, per dtype (``bf16``, ``fp8``,
            ``fp8_block``; a dtype without one takes ``bf16``'s, ``fp8_block`` takes ``fp8``'s).
        moe_fraction: achieved fraction of the dense tensor peak of the Triton fused-MoE kernel's grouped GEMMs on
            a large batch, per dtype (a dtype without one takes `gemm`'s: that kernel is not cuBLAS).
        attention_fraction: achieved fraction of the dense peak of FlashAttention's forward pass on long sequences.
        attention_cta_blocks: each attention CTA's time outside its key loop, in key blocks (`attention_compute_s`).
        sms: streaming multiprocessors (compute units): the width of one wave.
        kernel_s: fixed device time per kernel launch, s.
        block_fp8_bw: bytes/s a memory-bound block-scaled fp8 GEMM streams at (None: ``dram_bw``).
        gemm_bw: bytes/s a memory-bound dense GEMM moves its operands at (None: ``dram_bw``).
        attention_ctas_per_sm: CTAs of FA2's split-KV decode kernel an SM holds at once (None: unmeasured).
        attention_sm_bw: bytes/s the decode CTAs of one SM stream at together, at most (None: no cap).
        attention_kernel: the FlashAttention the serving engine runs, ``fa3`` or ``fa2``
            (`model.hardware.AttentionKernel`; `fa2_mixed_attention`).
        reused: the figures taken from another GPU for want of one of its own, each ``name: why``.
    """

    gpu: str
    dram_bw: Figure
    gemm_fraction: dict[str, Figure]
    attention_fraction: Figure
    attention_cta_blocks: Figure
    sms: Figure
    kernel_s: Figure
    block_fp8_bw: Figure | None = None
    gemm_bw: Figure | None = None
    attention_ctas_per_sm: Figure | None = None
    attention_sm_bw: Figure | None = None
    moe_fraction: dict[str, Figure] = field(default_factory=dict)
    attention_kernel: str = "fa3"
    reused: tuple[str, ...] = field(default=())

    def gemm(self, dtype: str) -> float:
        """Achieved fraction of the ``dtype`` peak of a large GEMM (``fp8_block`` falls back to ``fp8``, any other
        missing dtype to ``bf16``)."""
        hit = self.gemm_fraction.get(dtype)
        if hit is None and dtype == "fp8_block":
            hit = self.gemm_fraction.get("fp8")
        return (hit or self.gemm_fraction["bf16"]).value

    def moe(self, dtype: str) -> float:
        """Achieved fraction of the ``dtype`` peak of the Triton fused-MoE grouped GEMMs on a large batch: the
        ``moe_fraction`` figure, else `gemm`'s."""
        hit = self.moe_fraction.get(dtype)
        return hit.value if hit is not None else self.gemm(dtype)

    def block_bw(self) -> float:
        """Bytes/s of a memory-bound block-scaled fp8 GEMM: ``block_fp8_bw``, at most ``dram_bw``."""
        bw = self.dram_bw.value
        return min(bw, self.block_fp8_bw.value) if self.block_fp8_bw is not None else bw

    def fa2_decode(self) -> Fa2Decode | None:
        """How FA2's decode kernel runs here (`Fa2Decode`), or None where the engine runs FA3 (`decode_attention`)."""
        if self.attention_kernel != "fa2":
            return None
        per_sm = self.attention_ctas_per_sm
        sm_bw = self.attention_sm_bw
        return Fa2Decode(int(per_sm.value) if per_sm else 1, sm_bw.value if sm_bw else None)

    def gemm_stream_bw(self) -> float:
        """Bytes/s of a memory-bound dense GEMM: ``gemm_bw`` where the engine's GEMMs were measured (it may differ from
        ``dram_bw`` either way: the A100's and L40S's stream slower than a copy, the H200's faster than its store
        stream), else ``dram_bw``."""
        return self.gemm_bw.value if self.gemm_bw is not None else self.dram_bw.value


def params_from_spec(key: str, spec: AchievableSpec) -> AchievableParams:
    """`AchievableParams` of GPU ``key`` from its `AchievableSpec` (``reused`` gathered from its figures)."""
    named = [
        ("dram_bw", spec.dram_bw), *((f"gemm_fraction.{k}", v) for k, v in spec.gemm_fraction.items()),
        *((f"moe_fraction.{k}", v) for k, v in spec.moe_fraction.items()),
        ("block_fp8_bw", spec.block_fp8_bw), ("gemm_bw", spec.gemm_bw),
        ("attention_ctas_per_sm", spec.attention_ctas_per_sm), ("attention_sm_bw", spec.attention_sm_bw),
        ("attention_fraction", spec.attention_fraction),
        ("attention_cta_blocks", spec.attention_cta_blocks), ("sms", spec.sms), ("kernel_s", spec.kernel_s),
    ]  # fmt: skip
    reused = tuple(f"{name}: {fig.reused}" for name, fig in named if fig is not None and fig.reused)
    return AchievableParams(
        gpu=key, dram_bw=spec.dram_bw, gemm_fraction=dict(spec.gemm_fraction),
        attention_fraction=spec.attention_fraction, attention_cta_blocks=spec.attention_cta_blocks, sms=spec.sms,
        kernel_s=spec.kernel_s, block_fp8_bw=spec.block_fp8_bw, gemm_bw=spec.gemm_bw,
        attention_ctas_per_sm=spec.attention_ctas_per_sm, attention_sm_bw=spec.attention_sm_bw,
        moe_fraction=dict(spec.moe_fraction),
        attention_kernel=spec.attention_kernel.value if spec.attention_kernel is not None else "fa3", reused=reused,
    )  # fmt: skip


def _table() -> dict[str, AchievableParams]:
    return {key: params_from_spec(key, g.achievable) for key, g in list_gpus().items() if g.achievable is not None}


#: Published figures per GPU preset key (`HardwareSpec.key`), read from ``model/presets/achievable.yaml``. A GPU
#: missing here reuses H100-SXM's (`params_for`).
ACHIEVABLE: dict[str, AchievableParams] = _table()


@lru_cache(maxsize=64)
def _fallback(key: str, bandwidth: float | None) -> AchievableParams:
    ref = ACHIEVABLE["H100-SXM"]
    frac = ref.dram_bw.value / 3.35e12
    why = f"no published figure for {key}: H100-SXM's reused"
    return AchievableParams(
        gpu=key,
        # model_construct: an unmeasured datasheet gives 0 here, and `_kernel` raises the roofline's error on use
        dram_bw=Figure.model_construct(
            value=frac * (bandwidth or 0.0), source=f"H100-SXM's measured fraction ({frac:.0%}) of {key}'s datasheet"
        ),
        gemm_fraction=ref.gemm_fraction,
        moe_fraction=ref.moe_fraction,
        attention_fraction=ref.attention_fraction,
        attention_cta_blocks=ref.attention_cta_blocks,
        sms=Figure(value=132.0, source="H100-SXM's 132 SMs (unknown for this GPU)"),
        kernel_s=ref.kernel_s,
        block_fp8_bw=None,
        reused=(f"all figures ({why}: fractions, SMs and floor)",),
    )


_OWN: dict[int, tuple[AchievableSpec, AchievableParams]] = {}


def params_for(gpu: HardwareSpec, table: dict[str, AchievableParams] | None = None) -> AchievableParams:
    """The figures for ``gpu``: its row of ``table`` when one is given and has it; else its `HardwareSpec.achievable`
    (the preset's ``achievable.yaml`` entry or a ``--hardware`` file's block); else H100-SXM's fractions and
    floor applied to ``gpu``'s datasheet, with ``reused`` saying so."""
    hit = table.get(gpu.key) if table is not None else None
    if hit is not None:
        return hit
    if gpu.achievable is not None:
        cached = _OWN.get(id(gpu.achievable))
        if cached is None or cached[0] is not gpu.achievable:
            cached = (gpu.achievable, params_from_spec(gpu.key, gpu.achievable))
            _OWN[id(gpu.achievable)] = cached
        return cached[1]
    return _fallback(gpu.key, gpu.memory_bandwidth)


# --- the mechanisms --------------------------------------------------------------------------------------------


#: vLLM's per-tensor fp8 GEMM on Hopper (``cutlass_scaled_mm``) runs one CUTLASS tile per range of m, with no
#: split-K (vllm-project/vllm@csrc/quantization/w8a8/cutlass/c3x/scaled_mm_sm90_fp8_dispatch.cuh,
#: ``cutlass_gemm_sm90_fp8_dispatch``): m <= 16 and m <= 64 with n <= 1280: 64 x 16 over (n, m) (operands
#: swapped); m <= 64: 64 x 64 (swapped); m <= 128: 64 x 128; above: 128 x 128 (persistent scheduler). As
#: (rows of m, columns of n) per tile.
def vllm_fp8_tile(m: float, n: float) -> tuple[int, int]:
    """The (m, n) output tile vLLM's sm90 ``cutlass_scaled_mm`` dispatch picks for an fp8 GEMM of ``m`` rows and
    ``n`` columns (see the comment above)."""
    if m <= 16 or (m <= 64 and n <= 1280):
        return 16, 64
    if m <= 64:
        return 64, 64
    return (64, 128) if m <= 128 else (128, 128)


def gemm_compute_s(
    m: float,
    n: float,
    k: float,
    peak: float,
    fraction: float,
    sms: int,
    batch: int = 1,
    tiles: tuple[tuple[int, int], ...] = GEMM_TILES,
) -> float:
    """Tile- and wave-quantised time of ``batch`` GEMMs ``[m, k] @ [k, n]`` (s) at ``fraction x peak`` FLOP/s.

    For each tile ``(tm, tn)`` of `GEMM_TILES`: ``tiles = batch x ceil(m / tm) x ceil(n / tn)``, ``waves =
    ceil(tiles / sms)``, time = ``waves x 2 tm tn ceil(k / GEMM_TILE_K) GEMM_TILE_K / (fraction x peak / sms)``;
    the fastest of ``tiles`` (default `GEMM_TILES`; one tile where the engine's kernel fixes it). 0 for an empty
    GEMM.
    """
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    per_sm = fraction * peak / sms
    kp = math.ceil(k / GEMM_TILE_K) * GEMM_TILE_K
    best = math.inf
    for tm, tn in tiles:
        count = batch * math.ceil(m / tm) * math.ceil(n / tn)
        best = min(best, math.ceil(count / sms) * 2.0 * tm * tn * kp / per_sm)
    return best


def grouped_gemm_compute_s(
    rows: float, experts: float, n: float, k: float, block_m: int, block_n: int, per_sm: float, sms: int
) -> float:
    """The fused-MoE Triton kernel's quantised compute time (s): ``experts`` experts share ``rows`` (token, expert)
    rows evenly, each expert's rows padded to ``block_m``; ``tiles = experts x ceil(rows / experts / block_m) x
    ceil(n / block_n)`` tiles of ``block_m x block_n`` over K padded to `GEMM_TILE_K`, in ``ceil(tiles / sms)``
    waves at ``per_sm`` FLOP/s per SM."""
    if rows <= 0 or experts <= 0:
        return 0.0
    e = max(1.0, math.floor(experts))
    tiles = e * math.ceil(rows / e / block_m) * math.ceil(n / block_n)
    kp = math.ceil(k / GEMM_TILE_K) * GEMM_TILE_K
    return math.ceil(tiles / sms) * 2.0 * block_m * block_n * kp / per_sm


def attention_compute_s(op: Op, rate: float, sms: int, cta_blocks: float = 0.0) -> float:
    """FlashAttention's compute time (s) of an attention op at ``rate`` FLOP/s (the achieved fraction of the peak,
    reached by long sequences).

    Prefill (more than one query per sequence): the kernel runs one CTA per (sequence, head, block of
    `ATTN_BLOCK_Q` queries), ``ctas = batch x heads x ceil(q / ATTN_BLOCK_Q)``, each looping over its blocks of
    `ATTN_BLOCK_K` keys; a CTA also spends ``cta_blocks`` blocks' worth of time outside that loop (loading Q,
    pipeline fill, the softmax's final rescale and writing O), which is what makes short sequences slow. On
    average a CTA runs ``n = pairs / (q blocks x ATTN_BLOCK_Q x ATTN_BLOCK_K)`` key blocks, so the balanced time
    is ``FLOPs / (min(ctas, sms) x rate / sms) x (n + cta_blocks) / n`` (fewer CTAs than SMs leave SMs idle); under
    a causal mask the last query block of a sequence runs all of its ``kv / ATTN_BLOCK_K`` key blocks, and no
    schedule finishes before that longest CTA. The time is the larger of the two. Decode (one query per sequence:
    split-KV kernels spread the keys over the SMs) and ops without the shape: ``FLOPs / rate``.
    """
    s = op.shape
    need = ("batch", "tokens", "kv_read", "pairs", "heads")
    if any(key not in s for key in need) or s["batch"] <= 0 or s["pairs"] <= 0 or s["heads"] <= 0:
        return op.flops / rate
    q = s["tokens"] / s["batch"]
    if q <= 1.0:
        return op.flops / rate
    per_sm = rate / sms
    q_blocks = s["batch"] * math.ceil(q / ATTN_BLOCK_Q)
    ctas = q_blocks * s["heads"]
    n_mean = max(s["pairs"] / (q_blocks * ATTN_BLOCK_Q * ATTN_BLOCK_K), 1e-9)
    balanced = op.flops / (min(ctas, sms) * per_sm) * (n_mean + cta_blocks) / n_mean
    block_s = op.flops / (s["pairs"] * s["heads"]) * ATTN_BLOCK_Q * ATTN_BLOCK_K / per_sm
    n_max = s["kv_read"] / s["batch"] / ATTN_BLOCK_K
    return max(balanced, (n_max + cta_blocks) * block_s)


def decode_block_k(head_dim: float) -> int:
    """Keys per block of FlashAttention's split-KV decode kernel: 256 for head_dim <= 64, 128 up to 128, else 64
    (Dao-AILab/flash-attention@csrc/flash_attn/flash_api.cpp ``set_params_splitkv``: ``block_n``)."""
    return 256 if head_dim <= 64 else 128 if head_dim <= 128 else 64


def fa_num_splits(work: int, sms: int, n_blocks: int, max_splits: int = MAX_KV_SPLITS) -> int:
    """FlashAttention's split-KV count (Dao-AILab/flash-attention@csrc/flash_attn/flash_api.cpp
    ``num_splits_heuristic``, which vLLM's fork keeps): 1 when ``work`` CTAs (batch x KV heads x query blocks)
    nearly fill the ``sms``; else the fewest splits whose wave efficiency is within 85% of the best over
    1..min(max_splits, sms, n_blocks), skipping split counts that leave the blocks per split unchanged."""
    if work <= 0 or n_blocks <= 0 or work >= 0.8 * sms:
        return 1
    top = min(max_splits, sms, n_blocks)

    def eligible(k: int) -> bool:
        return k == 1 or math.ceil(n_blocks / k) != math.ceil(n_blocks / (k - 1))

    eff = {}
    for k in range(1, top + 1):
        if eligible(k):
            waves = work * k / sms
            eff[k] = waves / math.ceil(waves)
    best = max(eff.values(), default=0.0)
    return next((k for k, e in eff.items() if e >= 0.85 * best), 1)


@dataclass(frozen=True)
class DecodeAttention:
    """FlashAttention's paged decode of one attention op (`decode_attention`), seconds and counts.

    Attributes:
        seconds: the main kernel's time (s), without its launch's fixed time.
        combine_s: the split-KV combine kernel's time (s; 0 with one split), without its launch's fixed time.
        kernels: launches (1, or 2 with the combine kernel).
        splits: KV splits per (sequence, KV head).
        ctas: CTAs of the main kernel.
        bytes: bytes read and written (pages of K and V, Q, O and the fp32 partial outputs), bytes.
    """

    seconds: float
    combine_s: float
    kernels: int
    splits: int
    ctas: int
    bytes: float


def is_paged_decode(op: Op) -> bool:
    """Whether ``op`` is an attention op of one query per sequence that FlashAttention's paged decode runs (form
    not MLA, the shape `decode_attention` needs)."""
    s = op.shape
    need = ("batch", "tokens", "kv_read", "heads", "kv_heads", "head_dim")
    if op.kind != "attention" or any(k not in s for k in need) or s["batch"] <= 0 or s["kv_read"] <= 0:
        return False
    return s["tokens"] <= s["batch"] and str(s.get("form", "")) in FA_FORMS and op.kv_bytes > 0


def is_prompt_attention(op: Op) -> bool:
    """Whether ``op`` is attention over whole prompts only: more than one query per sequence and no key beyond the
    batch's own tokens (``kv_read == tokens``: no cached prefix, no decoding sequence), as a training micro-batch or
    a prefill of fresh prompts runs it. `attention_compute_s` times exactly that kernel (FlashAttention's forward
    over causal query blocks); a mixed batch it would time as if every sequence were a prompt."""
    s = op.shape
    if op.kind != "attention" or any(k not in s for k in ("batch", "tokens", "kv_read", "pairs", "heads")):
        return False
    return s["batch"] > 0 and s["tokens"] > s["batch"] and s["kv_read"] == s["tokens"]


@dataclass(frozen=True)
class Fa2Decode:
    """How FA2's split-KV decode kernel runs on a GPU (`decode_attention`), where measured.

    Attributes:
        ctas_per_sm: CTAs an SM holds at once (its shared memory over the kernel's tiles).
        sm_bw: bytes/s the CTAs of one SM stream their keys at together, at most (None: no cap).
    """

    ctas_per_sm: int = 1
    sm_bw: float | None = None


def decode_attention(
    op: Op, bw: float, sms: int, cta_blocks: float, rate: float, fa2: Fa2Decode | None = None
) -> DecodeAttention:
    """FlashAttention's paged split-KV decode (what vLLM V1 runs for one query per sequence), as its kernel runs it.

    ``b`` sequences of mean context ``L = kv_read / b`` keys; each reads its cache in whole `PAGE_TOKENS` pages
    (``Lp = ceil(L / 16) x 16`` keys, K and V of every KV head). The kernel runs one CTA per (sequence, KV head,
    split) (the query heads of a KV head packed as rows, `DECODE_BLOCK_M` per CTA), each looping over its share of
    ``n = ceil(Lp / decode_block_k)`` key blocks; the split count is FlashAttention's (`fa_num_splits`), which
    splits the keys when the sequences and KV heads alone leave SMs idle. The running CTAs share the achievable
    bandwidth ``bw``, and each CTA spends a fixed ``t_fix`` outside its loop (loading Q, filling the pipeline, the
    final rescale and writing O): FA3's published ``cta_blocks`` key blocks of 128 queries at its compute ``rate``
    (FLOP/s; `attention_compute_s`), 3.2 us at head_dim 128 on an H100. With many CTAs per SM that time overlaps
    other CTAs' streaming (the H100 SDPA calibration times Llama-2-7B's MHA decode of 64 sequences of 800 keys at
    1.08x its bytes at 3.02 TB/s), so the kernel takes the longer of the pages' bytes at ``bw`` and its longest CTA
    ``ceil(n / splits) x block bytes / (bw / min(ctas, sms)) + t_fix``. Splits write fp32 partial outputs, and a
    second kernel (``flash_fwd_splitkv_combine_kernel``) reads them and writes O, at ``bw``.

    Per running sequence this costs its pages' bytes (so the step's slope per sequence grows with the context,
    rounded up to whole pages); few CTAs (a few KV heads per GPU, a small batch) leave the longest CTA and its
    fixed time exposed, and the splits and the combine kernel are then a fixed cost.

    ``fa2`` (FlashAttention 2, what vLLM runs below Hopper, `Fa2Decode`): its ``mha_varlen_fwd`` splits the keys
    only where it packs query heads (``seqlenq_ngroups_swapped``: more query heads than KV heads), so MHA runs one
    CTA per (sequence, head) over all its keys. An SM holds ``ctas_per_sm`` CTAs at once; the CTAs run in rounds
    of ``ctas_per_sm x sms`` (the last one holds the rest), and the CTAs of one SM stream at most ``sm_bw``
    together (FA2 loads K and V with ``cp.async`` and computes between loads: a lone CTA cannot draw the whole
    device's bandwidth), so each round takes ``its CTA's keys' bytes / min(sm_bw / CTAs per SM, bw / CTAs
    running) + t_fix`` and the longest path is their sum.
    """
    s = op.shape
    b, kvh, heads, d = float(s["batch"]), float(s["kv_heads"]), float(s["heads"]), float(s["head_dim"])
    per_key = op.kv_bytes / s["kv_read"] / max(kvh, 1.0)  # bytes of K and V of one key of one KV head
    lp = math.ceil(s["kv_read"] / b / PAGE_TOKENS) * PAGE_TOKENS
    block = decode_block_k(d)
    n = max(1, math.ceil(lp / block))
    m_blocks = max(1, math.ceil(heads / max(kvh, 1.0) / DECODE_BLOCK_M))
    work = math.ceil(b * kvh * m_blocks)
    splits = fa_num_splits(work, sms, n) if fa2 is None or heads > kvh else 1  # FA2 splits only packed heads
    ctas = work * splits
    block_bytes = block * per_key
    t_fix = cta_blocks * 4.0 * ATTN_BLOCK_Q * ATTN_BLOCK_K * d / (rate / sms)  # FA3's per-CTA time outside its loop
    kv = b * lp * kvh * per_key
    per_cta = math.ceil(n / splits) * block_bytes  # bytes of the longest CTA's keys
    if fa2 is not None and fa2.sm_bw is not None:  # rounds of resident CTAs, each SM's streaming capped

        def round_s(running: int) -> float:
            return per_cta / min(fa2.sm_bw / math.ceil(running / sms), bw / running) + t_fix

        slots = max(fa2.ctas_per_sm, 1) * sms
        full, last = divmod(ctas, slots)
        longest = full * round_s(slots) + (round_s(last) if last else 0.0)
    else:
        longest = per_cta / (bw / min(ctas, sms)) + t_fix
    q_o = op.act_bytes  # Q read and O written
    partial = splits * b * heads * d * 4.0 if splits > 1 else 0.0  # fp32 partial outputs, written then read
    main = max(kv / bw, longest) + partial / bw
    combine = (partial + q_o / 2.0) / bw if splits > 1 else 0.0
    return DecodeAttention(main, combine, 2 if splits > 1 else 1, splits, ctas, kv + q_o + 2.0 * partial)


def is_fa2_unpacked(op: Op) -> bool:
    """Whether ``op`` is a batch in which FA2 runs sequences of one query unpacked (`fa2_mixed_attention`): an
    attention op (not MLA) of more than one query per sequence on average that also holds sequences of one query
    (``shape["decode_seqs"]``, `model.attention_ops.attention_ops`)."""
    s = op.shape
    return (
        op.kind == "attention" and s.get("decode_seqs", 0) > 0 and s.get("tokens", 0) > s.get("batch", 0)
        and str(s.get("form", "")) in FA_FORMS and {"pairs", "heads", "kv_read", "head_dim"} <= s.keys()
    )  # fmt: skip


def fa2_mixed_attention(op: Op, rate: float, sms: int, cta_blocks: float) -> float:
    """FA2's compute time (s) of a batch that mixes prompts with sequences of one query, at ``rate`` FLOP/s.

    vLLM runs FlashAttention 2 below Hopper (vllm-project/vllm@vllm/v1/attention/backends/fa_utils.py
    ``get_flash_attn_version``: FA3 only at compute capability 9) as one varlen call over the whole batch, paged
    KV in 16-token pages. Its ``mha_varlen_fwd`` (vllm-project/flash-attention@csrc/flash_attn/flash_api.cpp)
    packs the query heads of a KV head as the rows of one CTA (``seqlenq_ngroups_swapped``) only when
    ``max_seqlen_q == 1``, a batch of one query per sequence. A batch that also holds a prompt runs the split-KV
    kernel (kBlockM `DECODE_BLOCK_M` = 64 query rows, kBlockN `decode_block_k` keys) with one CTA per (sequence,
    query head, 64 queries): a decoding sequence's CTA fills one of its 64 rows, and its tensor-core tiles run
    all 64 over every key block of the sequence's pages. So each of the ``decode_seqs`` sequences costs
    ``heads x 64 x ceil(Lp / kBlockN) x kBlockN`` query-key pairs of FLOPs (Lp its context in whole pages),
    ``64 x group`` times the useful work under GQA, where FA3 (Hopper) packs the group in every batch. Its K and V
    are taken to come from DRAM once per KV head, so the bytes stay the op's ``kv_bytes``: the grid runs the
    sequences fastest and the query heads one after another, and a KV head's keys of the whole batch (sequences x
    context x 512 bytes at head_dim 128, 8.6 MB for 24 sequences of 700 keys) fit the A100's 40 MB L2 while the
    group's heads pass (assumed, not measured). The prompts' part is `attention_compute_s` of the batch without the
    decoding sequences; the two share the GPU, so their compute times add.
    """
    s = op.shape
    ds, dkv = float(s["decode_seqs"]), float(s["decode_kv_read"])
    per_pair = op.flops / max(s["pairs"], 1e-9)  # FLOP per query-key pair over all heads: 2 heads (d + dv)
    lp = math.ceil(dkv / ds / PAGE_TOKENS) * PAGE_TOKENS
    block = decode_block_k(s["head_dim"])
    keys = math.ceil(lp / block) * block  # whole key blocks per CTA
    padded = ds * DECODE_BLOCK_M * keys * per_pair
    ctas = ds * s["heads"]
    decode = padded / (min(ctas, sms) * rate / sms)
    rest_pairs = s["pairs"] - dkv  # a decoding sequence's query attends every key it reads
    rest = Op(
        op.name, op.kind, op.group, op.count, flops=rest_pairs * per_pair, weight_bytes=0.0, kv_bytes=0.0,
        act_bytes=0.0, dtype=op.dtype,
        shape={**s, "batch": s["batch"] - ds, "tokens": s["tokens"] - ds, "kv_read": s["kv_read"] - dkv,
               "pairs": rest_pairs},
    )  # fmt: skip
    return decode + attention_compute_s(rest, rate, sms, cta_blocks)


def is_sort_sampler(op: Op) -> bool:
    """Whether ``op`` is a sampler whose top-k/top-p filter sorts the logits (`model.ops.sampler_op`'s ``top_p``
    and ``top_k_top_p``: ``shape["sort_bytes"]``)."""
    return op.kind == "sampling" and op.shape.get("sort_bytes", 0.0) > 0.0


def sort_sampler_time(op: Op, bw: float, kernel_s: float) -> tuple[float, float]:
    """(fixed, memory) device seconds of a sort-based sampler (`is_sort_sampler`): its sort kernels move
    ``shape["sort_bytes"]`` at `SORT_BW_FRACTION` of ``bw`` (bytes/s) and take `SORT_KERNEL_S` each; its other
    kernels move the rest of its bytes at ``bw`` and take ``kernel_s`` each (the figures' source is at
    `SORT_BW_FRACTION`). Memory-bound: its FLOPs (exponentials, compares) are a few per byte."""
    s = op.shape
    sort_b, sort_k = float(s["sort_bytes"]), int(s.get("sort_kernels", 0))
    rest_k = max(op.kernels - sort_k, 0)
    fixed = sort_k * SORT_KERNEL_S + rest_k * kernel_s
    return fixed, sort_b / (SORT_BW_FRACTION * bw) + (op.bytes - sort_b) / bw


def _moe_parts(op: Op) -> list[Op] | None:
    """The kernels of a routed-experts op (`model.ops.fused_moe_op` or `experts_gemms`), or None without its shape."""
    s = op.shape
    need = ("tokens", "pairs", "active_experts", "hidden", "inter", "experts", "top_k", "w_bytes", "a_bytes", "ep")
    if any(key not in s for key in need):
        return None
    tokens = s["tokens"] if s["ep"] == 1 else s["pairs"] / s["top_k"]
    parts = fused_moe_parts(
        tokens, s["pairs"], s["active_experts"], s["hidden"], s["inter"], s["experts"], s["top_k"],
        s["w_bytes"], s["a_bytes"], op.dtype, reduce=s["ep"] == 1,
    )  # fmt: skip
    if op.kernels == sum(p.kernels for p in parts):
        return parts
    gemms = [p for p in parts if p.kind == "grouped_gemm"]
    return gemms if op.kernels == len(gemms) else None


def is_block_fp8(op: Op) -> bool:
    """Whether ``op`` runs fp8 weights with 128 x 128 block scales (`model.dtypes.FP8_BLOCK_SCALE_BYTES` in its
    ``w_bytes``): DeepSeek-V3-style block-scaled fp8, a kernel apart from per-tensor fp8."""
    return op.dtype == "fp8" and op.shape.get("w_bytes") == 1.0 + FP8_BLOCK_SCALE_BYTES


def act_quant_op(name: str, rows: float, cols: float, a_bytes: float) -> Op:
    """The activation-quantisation kernel a block-scaled fp8 GEMM needs first: vLLM's ``per_token_group_quant_fp8``
    (vllm-project/vllm@vllm/model_executor/layers/quantization/utils/fp8_utils.py, ``W8A8BlockFp8LinearOp``:
    ``input_quant_op`` before the CUTLASS or DeepGEMM GEMM; ``moe_kernel_quantize_input`` before each fused-MoE
    GEMM). One launch; reads ``[rows, cols]`` at ``a_bytes``, writes ``[rows, cols]`` fp8 and one fp32 scale per
    1 x 128 group (bytes)."""
    return memory_op(
        name, "quantize", "", 1, flops=0.0, read=rows * cols * a_bytes, written=rows * cols * (1.0 + 4.0 / 128.0),
        dtype="fp8", shape={"tokens": rows, "width": cols, "group_cols": 128}, kernels=1,
    )  # fmt: skip


class AchievableCostModel:
    """The roofline plus achievable bandwidth, GEMM throughput with tile and wave quantisation, a fixed time per
    kernel, and FlashAttention's achieved fraction (module docstring). ``table``: figures per GPU key that
    win over a GPU's own (default: none; each GPU's `HardwareSpec.achievable`, else H100-SXM's, `params_for`)."""

    name = "achievable"

    def __init__(self, table: dict[str, AchievableParams] | None = None) -> None:
        self.table = table

    def params(self, gpu: HardwareSpec) -> AchievableParams:
        """The figures used for ``gpu`` (`params_for`)."""
        return params_for(gpu, self.table)

    def source(self, gpu: HardwareSpec) -> str:
        """``achievable``, or ``achievable:reused <which figures and why>`` when a figure is another GPU's."""
        p = self.params(gpu)
        return "achievable" if not p.reused else "achievable:reused " + "; ".join(p.reused)

    def _kernel(self, op: Op, gpu: HardwareSpec, p: AchievableParams) -> tuple[float, float, float]:
        """(fixed, compute, memory) seconds of one kernel-level op on ``gpu``."""
        sms = int(p.sms.value)
        fixed = op.kernels * p.kernel_s.value
        if op.bytes and p.dram_bw.value <= 0:
            gpu.bandwidth()  # unmeasured: the roofline's one-line HardwareError
        if is_sort_sampler(op):  # vLLM's sort-based top-k/top-p sampler: the sort at its own rate
            fixed, memory = sort_sampler_time(op, p.dram_bw.value, p.kernel_s.value)
            return fixed, 0.0, memory
        if is_paged_decode(op):  # FlashAttention's paged split-KV decode: memory-bound, kernel by kernel
            rate = gpu.peak(op.dtype) * p.attention_fraction.value
            dec = decode_attention(op, p.dram_bw.value, sms, p.attention_cta_blocks.value, rate, p.fa2_decode())
            fixed = dec.kernels * p.kernel_s.value
            return fixed, op.flops / (gpu.peak(op.dtype) * p.attention_fraction.value), dec.seconds + dec.combine_s
        block = is_block_fp8(op)
        if block:  # the weights stream at the block-scaled kernel's rate, the rest at the achievable bandwidth
            memory = op.weight_bytes / p.block_bw() + (op.bytes - op.weight_bytes) / p.dram_bw.value
        elif op.kind in GEMM_KINDS and op.bytes:  # a dense GEMM streams at its own measured rate where there is one
            memory = op.bytes / p.gemm_stream_bw()
        else:
            memory = op.bytes / p.dram_bw.value if op.bytes else 0.0
        if not op.flops:
            return fixed, 0.0, memory
        peak = gpu.peak(op.dtype)
        s = op.shape
        if op.kind in GEMM_KINDS and {"m", "n", "k"} <= s.keys():
            frac = p.gemm("fp8_block" if block else op.dtype)
            tiles = (vllm_fp8_tile(s["m"], s["n"]),) if op.dtype == "fp8" and not block else GEMM_TILES
            compute = gemm_compute_s(s["m"], s["n"], s["k"], peak, frac, sms, int(s.get("batch", 1)), tiles)
        elif op.kind == "attention" and p.attention_kernel == "fa2" and is_fa2_unpacked(op):
            compute = fa2_mixed_attention(op, peak * p.attention_fraction.value, sms, p.attention_cta_blocks.value)
        elif op.kind == "attention":
            compute = attention_compute_s(op, peak * p.attention_fraction.value, sms, p.attention_cta_blocks.value)
        else:
            compute = op.flops / peak
        return fixed, compute, memory

    def _moe(self, op: Op, parts: list[Op], gpu: HardwareSpec, p: AchievableParams) -> tuple[float, float, float]:
        """(fixed, compute, memory) seconds of a routed-experts op, kernel by kernel; compute and memory are the
        summed per-kernel max split in proportion (each kernel is bound by one of them)."""
        sms = int(p.sms.value)
        s = op.shape
        tokens = s["tokens"] if s["ep"] == 1 else s["pairs"] / s["top_k"]
        block_m = moe_block_m(tokens, s["experts"])
        block_n = 32 if block_m == 16 else 64  # vLLM get_default_config: 16x32 when tokens <= experts, else 64x64
        block = is_block_fp8(op)
        # the serving engines' Triton fused-MoE kernel on 16-bit weights (the op split into all of `fused_moe_parts`'
        # kernels) has its own figure; the two grouped GEMMs alone (training's `experts_gemms`) and quantised weights
        # (Marlin for int4, the fp8 paths) are timed at the GEMM fraction
        triton = any(part.kind != "grouped_gemm" for part in parts) and s["w_bytes"] >= 2.0
        frac = p.gemm("fp8_block") if block else p.moe(op.dtype) if triton else p.gemm(op.dtype)
        per_sm = frac * gpu.peak(op.dtype) / sms
        if block:  # each grouped GEMM quantises its input first (tokens x hidden, then pairs x inter)
            kernels = []
            for part in parts:
                if part.kind == "grouped_gemm":
                    rows, cols = (tokens, s["hidden"]) if part.name == "gate_up" else (s["pairs"], s["inter"])
                    kernels.append(act_quant_op(f"{part.name}_quant", rows, cols, s["a_bytes"]))
                kernels.append(part)
            parts = kernels
        fixed = compute = memory = 0.0
        for part in parts:
            f, c, m = self._kernel(part, gpu, p)
            if part.kind == "grouped_gemm":
                n, k = (2 * s["inter"], s["hidden"]) if part.name == "gate_up" else (s["hidden"], s["inter"])
                c = grouped_gemm_compute_s(s["pairs"], s["active_experts"], n, k, block_m, block_n, per_sm, sms)
            fixed += f
            if c >= m:
                compute += c
            else:
                memory += m
        return fixed, compute, memory

    def _block_gemm(self, op: Op, gpu: HardwareSpec, p: AchievableParams) -> tuple[float, float, float]:
        """(fixed, compute, memory) seconds of a block-scaled fp8 GEMM: the activation-quantisation kernel
        (`act_quant_op`, memory-bound) and then the GEMM, each bound by one of compute and memory, summed."""
        s = op.shape
        m, n, k = s["m"] * s.get("batch", 1), s["n"], s["k"]
        a_bytes = op.act_bytes / (m * (k + n)) if op.act_bytes and m else 2.0
        fq, _, mq = self._kernel(act_quant_op("act_quant", m, k, a_bytes), gpu, p)
        fg, cg, mg = self._kernel(op, gpu, p)
        return fq + fg, (cg if cg >= mg else 0.0), mq + (mg if mg > cg else 0.0)

    def op_time(self, op: Op, cluster: ClusterSpec) -> OpTime:
        """``kernels x kernel_s + max(compute, memory)`` on the device plus the roofline's link time (module
        docstring). DeepEP dispatch and combine keep their own model (`model.a2a`), and a serving engine's
        tensor-parallel all-reduce its custom all-reduce's (`model.allreduce`)."""
        if is_deepep(op):
            t = deepep_time(op, cluster)
            return OpTime(t.seconds, 0.0, 0.0, t.seconds, t.bound, t.source)
        engine_ar = engine_allreduce_seconds(op, cluster)  # the serving engine's own all-reduce kernel
        if engine_ar is not None:
            return OpTime(engine_ar[0], 0.0, 0.0, engine_ar[0], "intra-link", engine_ar[1])
        gpu = cluster.gpu
        p = self.params(gpu)
        intra, inter = link_seconds(op, cluster)
        link = max(intra, inter)
        parts = _moe_parts(op) if op.kind == "grouped_gemm" else None
        if not op.flops and not op.bytes:  # a collective: the link model alone (its latency holds the launch)
            local = fixed = compute = memory = 0.0
        elif parts is not None:  # per-kernel maxima, summed
            fixed, compute, memory = self._moe(op, parts, gpu, p)
            local = fixed + compute + memory
        elif is_block_fp8(op) and op.kind in GEMM_KINDS and {"m", "n", "k"} <= op.shape.keys():
            fixed, compute, memory = self._block_gemm(op, gpu, p)
            local = fixed + compute + memory
        else:
            fixed, compute, memory = self._kernel(op, gpu, p)
            local = fixed + max(compute, memory)
        if link > local:
            bound = "inter-link" if inter >= intra else "intra-link"
        elif fixed > max(compute, memory):  # the fixed per-kernel time dominates
            bound = "kernel"
        else:
            bound = "compute" if compute >= memory else "memory"
        return OpTime(local + link, compute, memory, link, bound, self.source(gpu))


#: Cost models selected by name wherever ``--cost-model`` or a scenario's ``cost_model:`` takes a file.
COST_MODEL_NAMES = ("roofline", "achievable")


def named_cost_model(name: str) -> AchievableCostModel | None:
    """The cost model a name selects: ``achievable`` -> `AchievableCostModel`; anything else (``roofline``, a file
    path) -> None (the caller keeps the roofline for ``roofline`` and reads a file otherwise)."""
    return AchievableCostModel() if name.strip().lower() == "achievable" else None
