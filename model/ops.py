"""The operator model: a step's ops with FLOPs, memory bytes and link bytes.

`decompose` lists, for one forward step of a `Batch` on a `Layout`, the ops
the busiest GPU runs: per set of identical layers (one `Op` with a
``count``), the attention projections and core attention (MHA, GQA, MLA in
its plain and absorbed forms), the router, routed experts (grouped GEMM),
shared experts, dense FFN, the collectives (TP all-reduce,
DP-attention gather/scatter, EP dispatch and combine all-to-all, pipeline
sends), the embedding and the LM head, and the memory-bound kernels an
inference engine runs between them (`ENGINE_KINDS`): the fused residual add
and RMSNorm, rotary embedding, the SiLU-and-multiply activation, the KV-cache
write, the router's top-k softmax, the fused-MoE alignment and top-k sum
(inside the routed-experts op, `fused_moe_parts`) and the sampler. Each op
says how many GPU kernels it launches (``Op.kernels``; `kernel_launches`).
Every FLOP and byte count is made
here, in `model.attention_ops` (the attention block) and in the builders of
`model.op_record` (`Op`, `gemm`, `collective`, re-exported here), and nowhere else.

Units: FLOP, bytes. Collective bytes are what one GPU sends (ring
algorithms; hierarchical across nodes: the intra-node part over NVLink, the
rest over the NIC). An op's numbers are for one occurrence; it repeats
``count`` times per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np

from moesim.model.a2a import ep_a2a_ops
from moesim.model.allreduce import engine_op
from moesim.model.attention_ops import attention_ops
from moesim.model.batch import Batch
from moesim.model.dtypes import Precision
from moesim.model.errors import LayoutError, MoesimError
from moesim.model.hardware import ClusterSpec
from moesim.model.layout import Layout
from moesim.model.op_record import Op, OpContext, collective, gemm, memory_op
from moesim.model.params import LayerSet, layer_sets
from moesim.model.routing import GpuLoad, gpu_loads, slot_shares
from moesim.model.spec import ModelSpec

#: Kinds of the memory-bound kernels an inference engine runs between the GEMMs (vLLM's and SGLang's custom
#: ops); training frameworks run their own versions of some (`sim.training.train_cost`).
ENGINE_KINDS = frozenset({"norm", "rope", "activation", "kv_write", "topk_softmax", "sampling"})
#: Sampling rules of `sampler_op`: ``greedy`` (temperature 0, what vLLM's benchmark client sends:
#: vllm-project/vllm@benchmarks/backend_request_func.py, ``"temperature": 0.0``), ``random`` (temperature only),
#: ``top_p`` and ``top_k_top_p`` (vLLM 0.15's sort-based filter, `sampler_op`).
SAMPLING = ("greedy", "random", "top_p", "top_k_top_p")
#: Bytes per logit of the sort in vLLM's sort-based top-k/top-p filter (``logits.sort(dim=-1)``): PyTorch sorts a
#: [rows, vocab] fp32 tensor of more than 4096 columns and fewer than 128 rows with
#: ``segmented_sort_pairs_by_full_sort`` (pytorch/pytorch@aten/src/ATen/native/cuda/SortStable.cu): an index and
#: segment fill (writes int2, 8), a cub radix sort of (fp32 key, int2 value) pairs over all rows at once (an upfront
#: histogram reads the keys, 4; four 8-bit onesweep passes each read and write key and value, 4 x 24), a one-pass
#: radix sort of the int64 (index, segment) words on the segment bits (histogram 8, pass 16) and a postprocess
#: (reads the word 8 and gathers the value 4, writes value 4 and int64 index 8): 8 + 100 + 24 + 24.
SORT_BYTES_PER_LOGIT = 156.0
#: Kernel launches of that sort: the fill, the pairs sort (histogram, exclusive sum, 4 passes), the keys sort
#: (histogram, exclusive sum, 1 pass) and the postprocess.
SORT_KERNELS = 11


def kernel_launches(ops: list[Op] | tuple[Op, ...]) -> int:
    """GPU kernel launches of a step: ``sum(op.kernels * op.count)`` over `decompose`'s ops."""
    return int(sum(op.kernels * op.count for op in ops))


def norm_op(name: str, group: str, count: int, tokens: int, width: int, p: Precision, *, residual: bool) -> Op:
    """RMSNorm over ``tokens`` rows of ``width``, with the residual add fused in (``residual``) or not.

    vLLM ``fused_add_rms_norm`` (vllm-project/vllm@csrc/layernorm_kernels.cu): reads ``input`` and ``residual``
    [tokens, width], writes ``residual = input + residual``, then reads it back (from L2) and writes the normed
    ``input`` in place: 2 rows read and 2 written from device memory, plus the weight [width]. FLOP per element:
    add, square and accumulate, scale, weight (5). ``rms_norm`` (no residual): 1 row read, 1 written, 4 FLOP.
    One launch, one thread block per token.
    """
    ab, rows = p.activation_bytes, 2 if residual else 1
    return memory_op(
        name,
        "norm",
        group,
        count,
        flops=(5.0 if residual else 4.0) * tokens * width,
        read=rows * tokens * width * ab,
        written=rows * tokens * width * ab,
        weight_bytes=width * p.unquantized_bytes,
        dtype=p.activations,
        shape={"tokens": tokens, "hidden": width, "residual": int(residual)},
    )


def act_op(name: str, group: str, count: int, rows: float, width: int, ab: float, dtype: str) -> Op:
    """SiLU(gate) * up over ``rows`` rows: vLLM ``silu_and_mul`` (vllm-project/vllm@csrc/activation_kernels.cu).

    Reads [rows, 2 width] (gate and up halves), writes [rows, width]; 5 FLOP per output (negate, exp, add,
    divide: x / (1 + exp(-x)), then the multiply by up). One launch.
    """
    return memory_op(
        name,
        "activation",
        group,
        count,
        flops=5.0 * rows * width,
        read=2.0 * rows * width * ab,
        written=rows * width * ab,
        dtype=dtype,
        shape={"tokens": rows, "width": width},
    )


def _ffn(prefix: str, group: str, count: int, tokens: int, width: int, h: int, p: Precision, dtype: str) -> list[Op]:
    """Gated FFN on ``tokens`` tokens with local width ``width``: gate_up, SiLU-and-multiply, down.

    The activation is its own kernel (`act_op`) between the GEMMs, as vLLM and SGLang run it; the down GEMM
    reads only its [tokens, width] input.
    """
    wb, ab = p.weight_bytes, p.activation_bytes
    up = gemm(f"{prefix}_gate_up", group, count, tokens, 2 * width, h, wb, ab, dtype)
    act = act_op(f"{prefix}_act", group, count, tokens, width, ab, p.activations)
    down = gemm(f"{prefix}_down", group, count, tokens, h, width, wb, ab, dtype)
    return [up, act, down]


def moe_block_m(tokens: float, local_experts: int) -> int:
    """The fused-MoE kernel's rows per block: vLLM's default config (``get_default_config`` in
    vllm-project/vllm@vllm/model_executor/layers/fused_moe/fused_moe.py): 16 when tokens <= experts, else 64."""
    return 16 if tokens <= local_experts else 64


def moe_align_kernels(pairs: float, local_experts: float) -> int:
    """Launches of vLLM's ``moe_align_block_size`` for ``pairs`` (token, expert) pairs over ``local_experts``
    experts: its small-batch kernel (one launch) while pairs < 1024 and experts <= 64, else two
    (vllm-project/vllm@csrc/moe/moe_align_sum_kernels.cu)."""
    return 2 if pairs >= 1024 or local_experts > 64 else 1


def fused_moe_kernels(pairs: float, local_experts: float, *, reduce: bool) -> int:
    """Launches of `fused_moe_parts` at ``pairs`` pairs over ``local_experts`` experts: the alignment, two
    grouped GEMMs, the activation, and ``moe_sum`` when ``reduce``. The kernel count of a routed-experts op must
    follow its pairs: the achievable cost model splits an op into these kernels only when the counts agree."""
    return moe_align_kernels(pairs, local_experts) + 3 + (1 if reduce else 0)


def fused_moe_parts(
    tokens: float,
    pairs: float,
    active: float,
    hidden: int,
    width: int,
    local_experts: int,
    top_k: int,
    w_bytes: float,
    a_bytes: float,
    dtype: str,
    *,
    reduce: bool,
) -> list[Op]:
    """The kernels of one fused-MoE layer on one GPU, in order, as vLLM's ``fused_experts`` runs them.

    vllm-project/vllm@vllm/model_executor/layers/fused_moe/fused_moe.py (Triton path):

    - ``moe_align``: ``moe_align_block_size`` (csrc/moe/moe_align_sum_kernels.cu) reads the [pairs] int32 expert
      ids and writes the pair ids sorted by expert, each expert's run padded to the block size
      ([pairs + experts x (block_m - 1)] int32), the expert of each block and the per-expert offsets. One
      launch while pairs < 1024 and experts <= 64 (its small-batch kernel), else two.
    - ``gate_up``: grouped GEMM [pairs, hidden] @ [hidden, 2 width] per active expert (A rows gathered by the
      sorted ids); reads the active experts' weights, writes [pairs, 2 width].
    - ``act``: ``silu_and_mul`` [pairs, 2 width] -> [pairs, width] (`act_op`).
    - ``down``: grouped GEMM [pairs, width] @ [width, hidden], the routing weight multiplied in
      (``MUL_ROUTED_WEIGHT``); writes [pairs, hidden].
    - ``moe_sum`` (``reduce``): sums each token's top-k rows, [tokens, top_k, hidden] -> [tokens, hidden]
      (csrc/moe/moe_align_sum_kernels.cu). With expert parallelism the combine reduces them instead
      (DeepEP's combine kernel): no ``moe_sum`` here.

    Args:
        tokens: tokens whose pairs this GPU computes; pairs, active: (token, expert) pairs and experts with
            pairs on it; hidden, width: model width and the expert's local intermediate width;
        local_experts, top_k: experts held here and the routing's k; w_bytes, a_bytes: bytes per weight and
            per activation; dtype: the GEMMs' peak.
    """
    block = moe_block_m(tokens, local_experts)
    padded = pairs + local_experts * (block - 1)
    ops = [
        memory_op(
            "moe_align", "moe_align", "", 1, flops=0.0, read=4.0 * pairs,
            written=4.0 * (padded + padded / block + local_experts + 1), dtype="int32",
            shape={"pairs": pairs, "experts": local_experts, "block_m": block},
            kernels=moe_align_kernels(pairs, local_experts),
        ),
        Op(
            "gate_up", "grouped_gemm", "", 1, flops=2.0 * pairs * hidden * 2 * width,
            weight_bytes=active * hidden * 2 * width * w_bytes, kv_bytes=0.0,
            act_bytes=(pairs * hidden + pairs * 2 * width) * a_bytes, dtype=dtype,
        ),
        act_op("act", "", 1, pairs, width, a_bytes, dtype),
        Op(
            "down", "grouped_gemm", "", 1, flops=2.0 * pairs * width * hidden + pairs * hidden,
            weight_bytes=active * width * hidden * w_bytes, kv_bytes=0.0,
            act_bytes=(pairs * width + pairs * hidden) * a_bytes, dtype=dtype,
        ),
    ]  # fmt: skip
    if reduce:
        ops.append(
            memory_op(
                "moe_sum", "moe_sum", "", 1, flops=pairs * hidden, read=pairs * hidden * a_bytes,
                written=tokens * hidden * a_bytes, dtype=dtype, shape={"tokens": tokens, "top_k": top_k},
            )
        )  # fmt: skip
    return ops


def fused_moe_op(
    tokens: float,
    pairs: float,
    active: float,
    hidden: int,
    width: int,
    top_k: int,
    num_experts: int,
    ep: int,
    w_bytes: float,
    a_bytes: float,
    dtype: str,
    *,
    group: str = "",
    count: int = 1,
    moe_tp: int = 1,
    mean: float | None = None,
    imbalance: float = 1.0,
    local: int | None = None,
) -> Op:
    """The routed-experts op: `fused_moe_parts` summed into one ``grouped_gemm`` op (one lookup in the
    grouped-GEMM tables, which time the whole fused layer), ``kernels`` = their launches. ``local``: expert
    slots per GPU (a placement's slots over ``ep``, more than ``num_experts / ep`` with redundant experts);
    None: ``num_experts // ep``."""
    local = num_experts // ep if local is None else local
    flops, weight_bytes, act_bytes, kernels = _fused_moe_totals(
        tokens if ep == 1 else pairs / top_k, pairs, active, hidden, width, local, w_bytes, a_bytes, reduce=ep == 1
    )
    return Op(
        "routed_experts",
        "grouped_gemm",
        group,
        count,
        flops=flops,
        weight_bytes=weight_bytes,
        kv_bytes=0.0,
        act_bytes=act_bytes,
        dtype=dtype,
        shape={
            "tokens": tokens,
            "pairs": pairs,
            "mean_pairs": pairs if mean is None else mean,
            "hidden": hidden,
            "inter": width,
            "experts": local,
            "top_k": top_k,
            "active_experts": active,
            "ep": ep,
            "moe_tp": moe_tp,
            "imbalance": imbalance,
            "w_bytes": w_bytes,
            "a_bytes": a_bytes,
        },
        kernels=kernels,
    )


def _fused_moe_totals(
    tokens: float,
    pairs: float,
    active: float,
    hidden: int,
    width: int,
    local_experts: int,
    w_bytes: float,
    a_bytes: float,
    *,
    reduce: bool,
) -> tuple[float, float, float, int]:
    """`fused_moe_parts`' (FLOP, weight bytes, activation bytes, launches) summed over its ops, without building
    them: the same expressions added in the same order (bit for bit: tests/test_routing_iid.py), for the sweeps,
    which rebuild the routed experts at every new token count."""
    block = moe_block_m(tokens, local_experts)
    padded = pairs + local_experts * (block - 1)
    f_up, f_act, f_down = 2.0 * pairs * hidden * 2 * width, float(5.0 * pairs * width), 2.0 * pairs * width * hidden
    f_down += pairs * hidden
    a_align = float(4.0 * pairs + 4.0 * (padded + padded / block + local_experts + 1))
    a_up = (pairs * hidden + pairs * 2 * width) * a_bytes
    a_act = float(2.0 * pairs * width * a_bytes + pairs * width * a_bytes)
    a_down = (pairs * width + pairs * hidden) * a_bytes
    flops = 0 + 0.0 + f_up + f_act + f_down
    weight = 0 + 0.0 + active * hidden * 2 * width * w_bytes + 0.0 + active * width * hidden * w_bytes
    act = 0 + a_align + a_up + a_act + a_down
    kernels = fused_moe_kernels(pairs, local_experts, reduce=reduce)
    if reduce:
        flops += float(pairs * hidden)
        weight += 0.0
        act += float(pairs * hidden * a_bytes + tokens * hidden * a_bytes)
    return flops, weight, act, kernels


def expert_gemm_pair(op: Op, dtype: str | None = None, w_bytes: float | None = None) -> tuple[Op, Op, float]:
    """One active expert's dense GEMMs in a routed-experts op ``op`` (its shape's ``pairs``, ``active_experts``,
    ``hidden``, ``inter``, ``w_bytes``, ``a_bytes``): gate-up [rows, hidden] @ [hidden, 2 inter] and down [rows,
    inter] @ [inter, hidden], ``rows`` the pairs per active expert; with the active experts (at least 1), so that
    ``active`` x (gate-up + down) is the layer run as a loop of dense GEMMs. ``dtype`` and ``w_bytes``: the
    GEMMs' format, the op's by default."""
    s = op.shape
    active = max(1.0, float(s["active_experts"]))
    rows = max(1, round(s["pairs"] / active))
    wb = s["w_bytes"] if w_bytes is None else w_bytes
    dt, ab = op.dtype if dtype is None else dtype, s["a_bytes"]
    up = gemm("expert_gate_up", op.group, 1, rows, 2 * s["inter"], s["hidden"], wb, ab, dt)
    down = gemm("expert_down", op.group, 1, rows, s["hidden"], s["inter"], wb, ab, dt)
    return up, down, active


def experts_gemms(op: Op) -> Op:
    """A routed-experts op cut down to its two grouped GEMMs (``kernels`` 2): what training frameworks run as
    the experts' kernels, with the activation and the token permutation as kernels of their own."""
    s = op.shape
    parts = fused_moe_parts(
        s["tokens"], s["pairs"], s["active_experts"], s["hidden"], s["inter"], s["experts"], s["top_k"],
        s["w_bytes"], s["a_bytes"], op.dtype, reduce=False,
    )  # fmt: skip
    gemms = [o for o in parts if o.kind == "grouped_gemm"]
    return replace(
        op,
        flops=sum(o.flops for o in gemms),
        weight_bytes=sum(o.weight_bytes for o in gemms),
        act_bytes=sum(o.act_bytes for o in gemms),
        kernels=len(gemms),
    )


def experts_op(
    tokens: int,
    hidden: int,
    width: int,
    top_k: int,
    num_experts: int,
    ep: int,
    precision: Precision,
    dtype: str,
    *,
    group: str = "",
    count: int = 1,
    moe_tp: int = 1,
    loads: np.ndarray | None = None,
    phys_to_log: np.ndarray | None = None,
    balanced: bool = False,
    share: np.ndarray | None = None,
) -> Op:
    """Routed experts of one MoE layer on the busiest of ``ep`` expert-parallel GPUs.

    A grouped GEMM per local expert: gate_up ([pairs x hidden] @ [hidden x
    2 width]) then down ([pairs x width] @ [width x hidden]), 6 x pairs x
    hidden x width FLOP; weights are read for each local expert that gets a
    token.

    Args:
        tokens: tokens routed by the whole EP group in the step.
        hidden: model width.
        width: each expert's intermediate width on this GPU (I / moe_tp).
        top_k, num_experts: the routing rule.
        ep: expert-parallel GPUs (the experts are split among them).
        precision, dtype: weight bytes and the peak the GEMM runs at.
        group, count: layer-set label and repetitions.
        moe_tp: expert tensor-parallel ways (recorded in the shape).
        loads, phys_to_log: routing statistics and placement (`model.routing`).
        balanced: every expert gets exactly ``tokens x top_k / E`` pairs (as
            benchmark harnesses craft); else the busiest GPU's expected load
            under random routing, sampling noise included.
        share: [S] share of its expert's tokens each slot receives (`model.routing.slot_shares`: the engine's
            replica rule); None: replicas split evenly.
    """
    if balanced:
        pairs = tokens * top_k / ep
        active = min(num_experts / ep, tokens * top_k / ep)
        mean, imbalance = pairs, 1.0
    else:
        load = _gpu_loads_memo(tokens, top_k, ep, loads, phys_to_log, num_experts, share)
        pairs, active = load.busiest_pairs, load.max_active_experts
        mean, imbalance = load.mean_gpu_pairs, load.imbalance
    local = None if phys_to_log is None else int(np.shape(phys_to_log)[-1]) // ep  # redundant slots count
    return fused_moe_op(
        tokens, pairs, active, hidden, width, top_k, num_experts, ep, precision.weight_bytes,
        precision.activation_bytes, dtype, group=group, count=count, moe_tp=moe_tp, mean=mean, imbalance=imbalance,
        local=local,
    )  # fmt: skip


#: `_gpu_loads_memo`'s entries, keyed by the routing statistics' bytes (cleared when full).
_LOADS_MEMO: dict[tuple, GpuLoad] = {}


def replica_shares(lay: Layout, phys: np.ndarray | None, num_experts: int, gpus_per_node: int) -> np.ndarray | None:
    """[S] the share of its expert's tokens each slot of ``phys`` receives under the layout's replica rule
    (`model.routing.slot_shares`; None: an even split), the EP group's nodes ``gpus_per_node / moe_tp`` GPUs
    (as `model.a2a.ep_a2a_ops` counts them)."""
    if phys is None or lay.replica_choice == "random" or lay.ep <= 1:
        return None
    node = max(1, min(gpus_per_node // lay.moe_tp, lay.ep))
    if lay.ep % node:
        return None
    return slot_shares(np.asarray(phys), num_experts, lay.ep, node, lay.replica_choice)


def _gpu_loads_memo(
    tokens: int,
    top_k: int,
    ep: int,
    loads: np.ndarray | None,
    phys: np.ndarray | None,
    num_experts: int,
    share: np.ndarray | None = None,
) -> GpuLoad:
    """`model.routing.gpu_loads`, memoised by its arguments (the routing statistics by value): a step's
    decomposition asks for the same token count many times (a decode step at every context, each micro-batch)."""
    key = (
        tokens, top_k, ep, num_experts,
        None if loads is None else (np.shape(loads), np.asarray(loads, float).tobytes()),
        None if phys is None else (np.shape(phys), np.asarray(phys).tobytes()),
    )  # fmt: skip
    if share is not None:
        key += (share.tobytes(),)
    hit = _LOADS_MEMO.get(key)
    if hit is None:
        if len(_LOADS_MEMO) >= 1 << 14:
            _LOADS_MEMO.clear()
        hit = _LOADS_MEMO[key] = gpu_loads(
            tokens, top_k, ep, loads, phys_to_log=phys, num_experts=num_experts, share=share
        )
    return hit


def topk_op(group: str, count: int, tokens: int, experts: int, top_k: int, hidden: int | None = None) -> Op:
    """The router's top-k: vLLM ``topk_softmax`` (vllm-project/vllm@csrc/moe/topk_softmax_kernels.cu).

    Reads the fp32 router logits [tokens, experts]; softmax over the experts (max, subtract, exp, sum,
    divide: 5 FLOP per logit), then ``top_k`` rounds of arg-max over the row (1 compare per logit each);
    writes the top-k weights (fp32), expert ids and token-expert indices (int32): 12 bytes per pair. One
    launch. DeepSeek's grouped sigmoid top-k (``grouped_topk``) does the same work within a few percent.
    ``hidden`` (the router GEMM's input width, in the shape when given) lets a cost model whose router table
    timed the GEMM and the top-k together find the router op this top-k belongs to
    (`profiling.costmodel.ROUTER_WITH_TOPK_IMPLS`).
    """
    return memory_op(
        "topk_softmax",
        "topk_softmax",
        group,
        count,
        flops=tokens * experts * (5.0 + top_k),
        read=tokens * experts * 4.0,
        written=tokens * top_k * 12.0,
        dtype="fp32",
        shape={"tokens": tokens, "experts": experts, "top_k": top_k} | ({"hidden": hidden} if hidden else {}),
    )


def sampler_op(rows: int, vocab: int, ab: float, sampling: str = "greedy", dtype: str = "bf16") -> Op:
    """Sampling the next token of each of ``rows`` sequences from its logits [rows, vocab] (vLLM v1's
    ``Sampler.forward``, vllm-project/vllm@vllm/v1/sample/sampler.py).

    ``greedy``: logits cast to fp32 (reads ``ab``, writes 4 bytes per logit), then arg-max (reads 4): 2
    launches. ``random`` (temperature > 0, no top-k/top-p): the cast, the in-place division by the
    temperature (reads and writes 4), softmax (reads 4, writes 4), ``q.exponential_()`` (writes 4),
    ``probs.div_(q)`` (reads 8, writes 4), arg-max (reads 4): 6 launches, 10 FLOP per logit. ``dtype``: the
    logits' (the table a calibrated model looks it up in).

    ``top_p`` / ``top_k_top_p``: ``random`` with vLLM 0.15's PyTorch filter before the softmax
    (vllm-project/vllm@vllm/v1/sample/ops/topk_topp_sampler.py ``apply_top_k_top_p``, which ``forward_native`` runs:
    the FlashInfer sampler is opt-in, ``VLLM_USE_FLASHINFER_SAMPLER``, and the Triton filter came after 0.15,
    vllm-project/vllm#33538): ``logits.sort(dim=-1)`` (`SORT_BYTES_PER_LOGIT`, `SORT_KERNELS`); for top-k the
    threshold's compare (reads 4, writes a bool) and ``masked_fill_`` (reads 5, writes 4) after two small kernels
    (``vocab - k``, the gather); for top-p a softmax over the sorted row (a row of more than 1024 fp32 is read three
    times: max, sum, write; reads 12, writes 4), the in-place ``cumsum`` (reads 4, writes 4), ``1 - p``, the compare
    (reads 4, writes 1), the last column set, ``masked_fill_`` (reads 5, writes 4); then ``logits.scatter_`` back
    (reads the int64 index and the value, 12, writes 4). The softmax that follows is a long row's too (reads 12
    rather than 4). The sort's bytes are in ``shape["sort_bytes"]`` (the cost model may time them at the sort's own
    rate) and its launches in ``shape["sort_kernels"]``.
    """
    n = float(rows) * vocab
    shape: dict[str, float | str] = {"sequences": rows, "vocab": vocab, "sampling": sampling}
    if sampling == "greedy":
        read, written, flops, kernels = n * (ab + 4.0), 4.0 * n, n, 2
    elif sampling == "random":
        read, written, flops, kernels = n * (ab + 4.0 + 4.0 + 8.0 + 4.0), n * (4.0 * 5), 10.0 * n, 6
    else:  # cast, temperature, [top-k], top-p, scatter, softmax, exponential, division, arg-max
        top_k = sampling == "top_k_top_p"
        read = n * (ab + 4.0 + (9.0 if top_k else 0.0) + 12.0 + 4.0 + 4.0 + 5.0 + 12.0 + 12.0 + 8.0 + 4.0)
        written = n * (4.0 + 4.0 + (5.0 if top_k else 0.0) + 4.0 + 4.0 + 1.0 + 4.0 + 4.0 + 4.0 + 4.0 + 4.0)
        flops, kernels = 20.0 * n, 2 + SORT_KERNELS + (5 if top_k else 0) + 6 + 1 + 4
        read, written = read + n * SORT_BYTES_PER_LOGIT / 2.0, written + n * SORT_BYTES_PER_LOGIT / 2.0
        shape |= {"sort_bytes": n * SORT_BYTES_PER_LOGIT, "sort_kernels": SORT_KERNELS}
    return memory_op(
        "sampler",
        "sampling",
        "head",
        1,
        flops=flops,
        read=read,
        written=written,
        dtype=dtype,
        shape=shape,
        kernels=kernels,
    )


#: `_moe_ops_memo` and `_edge_ops_memo` entries: the step's ops that do not depend on its context (cleared when full).
_PIECES_MEMO: dict[tuple, tuple[ModelSpec, tuple[Op, ...]]] = {}


def _array_key(arr: np.ndarray | None) -> tuple | None:
    return None if arr is None else (np.shape(arr), np.asarray(arr).dtype.str, np.asarray(arr).tobytes())


def _pieces_memo(model: ModelSpec, key: tuple, make: Callable[[], list[Op]]) -> list[Op]:
    """``make()``, memoised by ``model`` (its id: hashing a whole spec on every call costs more than the ops) and
    ``key`` (every other input of the pieces, by value). The entry holds the model, so its id stays its own while
    the entry lives. Ops are frozen: sharing them is safe."""
    key = (id(model), *key)
    hit = _PIECES_MEMO.get(key)
    if hit is None or hit[0] is not model:
        if len(_PIECES_MEMO) >= 1 << 12:
            _PIECES_MEMO.clear()
        hit = _PIECES_MEMO[key] = (model, tuple(make()))
    return list(hit[1])


def _moe_ops_memo(c: OpContext, g: LayerSet, loads: np.ndarray | None, phys: np.ndarray | None) -> list[Op]:
    """`_moe_ops`, memoised: a MoE block's ops depend on the step's token counts and phase, not on its context
    (a decode step at every context, a mixed step at every chunk context share them)."""
    key = (
        "moe", c.layout, c.cluster.gpus_per_node, c.precision, c.gemm_dtype, c.batch.tokens,
        c.attn_batch.tokens, c.batch.phase, g, _array_key(loads), _array_key(phys),
    )  # fmt: skip
    return _pieces_memo(c.model, key, lambda: _moe_ops(c, g, loads, phys))


def _moe_routed_ops_memo(c: OpContext, g: LayerSet, loads: np.ndarray | None, phys: np.ndarray | None) -> list[Op]:
    """`_moe_routed_ops`, memoised like `_moe_ops_memo` (they read the whole batch's tokens and phase only)."""
    key = (
        "routed", c.layout, c.cluster.gpus_per_node, c.precision, c.gemm_dtype, c.batch.tokens, c.batch.phase, g,
        _array_key(loads), _array_key(phys),
    )  # fmt: skip
    return _pieces_memo(c.model, key, lambda: _moe_routed_ops(c, g, loads, phys))


def _edge_ops_memo(c: OpContext, sampling: str) -> list[Op]:
    """`_edge_ops`, memoised by everything they read (the attention batch's tokens and logit rows)."""
    key = (
        "edge", c.layout, c.cluster.gpus_per_node, c.precision, c.attn_batch.tokens,
        c.attn_batch.logit_tokens, sampling,
    )  # fmt: skip
    return _pieces_memo(c.model, key, lambda: _edge_ops(c, sampling))


def _moe_ops(c: OpContext, g: LayerSet, loads: np.ndarray | None, phys: np.ndarray | None) -> list[Op]:
    m, lay, p = c.model, c.layout, c.precision
    moe = m.moe
    assert moe is not None
    h, ab, gpn = m.hidden_size, p.activation_bytes, c.cluster.gpus_per_node
    t_attn = c.attn_batch.tokens
    label, n = g.label, g.count
    ops: list[Op] = [
        Op(
            "router",
            "router",
            label,
            n,
            flops=2.0 * t_attn * h * moe.num_experts,
            weight_bytes=h * moe.num_experts * p.unquantized_bytes,
            kv_bytes=0.0,
            act_bytes=t_attn * h * ab + t_attn * moe.num_experts * 4.0,
            dtype=p.activations,
            shape={"tokens": t_attn, "experts": moe.num_experts, "hidden": h, "top_k": moe.top_k},
        ),
        topk_op(label, n, t_attn, moe.num_experts, moe.top_k, hidden=h),
    ]
    ops += _moe_routed_ops(c, g, loads, phys)
    if lay.ep > 1 and lay.tp > 1:  # after the combine
        op = collective("tp_gather", "all_gather", label, n, t_attn * h * ab, lay.tp, gpn)
        ops.append(op) if op else None
    elif lay.ep == 1 and lay.dp_attn <= 1 and lay.tp > 1:  # (with data-parallel attention: the routed ops' scatter)
        op = engine_op(collective("moe_allreduce", "all_reduce", label, n, t_attn * h * ab, lay.tp, gpn))
        ops.append(op) if op else None
    if moe.shared_intermediate_size:
        ops += _ffn("shared", label, n, t_attn, moe.shared_intermediate_size // lay.tp, h, p, c.gemm_dtype)
    return ops


def _moe_routed_ops(c: OpContext, g: LayerSet, loads: np.ndarray | None, phys: np.ndarray | None) -> list[Op]:
    """The MoE block's ops that read the whole batch's tokens (`_moe_ops`' middle, in order): the data-parallel
    attention's gather or the expert-parallel dispatch, the routed experts, the combine or the scatter. The sweeps
    rebuild these alone at every new token count (`moesim.sim.serving.steparray`)."""
    m, lay, p = c.model, c.layout, c.precision
    moe = m.moe
    assert moe is not None
    h, ab, gpn = m.hidden_size, p.activation_bytes, c.cluster.gpus_per_node
    t_all = c.batch.tokens
    label, n = g.label, g.count
    ops: list[Op] = []
    width = moe.intermediate_size // lay.moe_tp
    dispatch = None
    if lay.ep == 1 and lay.dp_attn > 1:
        # every GPU holds every expert (width split moe_tp ways) and gathers all tokens
        ops.append(collective("dp_gather", "all_gather", label, n, t_all * h * ab, lay.stage_gpus, gpn))
    elif lay.ep > 1:
        # the backend's bytes (DeepEP normal or low-latency, or NCCL): `model.a2a`
        dispatch, combine = ep_a2a_ops(
            label, n, tokens=t_all, hidden=h, top_k=moe.top_k, num_experts=moe.num_experts, ep=lay.ep,
            stage_gpus=lay.stage_gpus, gpus_per_node=gpn, moe_tp=lay.moe_tp, act_bytes=ab, backend=lay.a2a_backend,
            phase=c.batch.phase, fp8_dispatch=p.weights == "fp8" and getattr(p, "fp8_scaling", "tensor") == "block",
            n_group=moe.n_group, topk_group=moe.topk_group, loads=loads, phys_to_log=phys,
            replica_choice=lay.replica_choice,
        )  # fmt: skip
        ops.append(dispatch)
    ops.append(
        experts_op(
            t_all,
            h,
            width,
            moe.top_k,
            moe.num_experts,
            lay.ep,
            p,
            c.gemm_dtype,
            group=label,
            count=n,
            loads=loads,
            phys_to_log=phys,
            moe_tp=lay.moe_tp,
            share=replica_shares(lay, phys, moe.num_experts, gpn),
        )
    )
    if dispatch is not None:
        ops.append(combine)
    elif lay.dp_attn > 1:
        op = collective("dp_scatter", "reduce_scatter", label, n, t_all * h * ab, lay.stage_gpus, gpn)
        ops.append(op) if op else None
    return ops


def _dense_ffn_ops(c: OpContext, g: LayerSet) -> list[Op]:
    m, lay = c.model, c.layout
    ops = _ffn(
        "ffn",
        g.label,
        g.count,
        c.attn_batch.tokens,
        m.dense_intermediate_size // lay.tp,
        m.hidden_size,
        c.precision,
        c.gemm_dtype,
    )
    ar = engine_op(
        collective(
            "ffn_allreduce",
            "all_reduce",
            g.label,
            g.count,
            c.attn_batch.tokens * m.hidden_size * c.precision.activation_bytes,
            lay.tp,
            c.cluster.gpus_per_node,
        )
    )
    return ops + ([ar] if ar else [])


def _edge_ops(c: OpContext, sampling: str = "greedy") -> list[Op]:
    """Embedding lookup (vocab-parallel, all-reduced); the final norm, LM head (logits all-gathered) and sampler.

    The embedding (and its all-reduce at tp > 1) opens the step; the rest close it.
    """
    m, lay, p = c.model, c.layout, c.precision
    h, t, gpn = m.hidden_size, c.attn_batch.tokens, c.cluster.gpus_per_node
    ops = [
        Op(
            "embedding",
            "embedding",
            "embed",
            1,
            0.0,
            weight_bytes=t * h * p.unquantized_bytes,
            kv_bytes=0.0,
            act_bytes=t * h * p.activation_bytes,
            dtype=p.activations,
            shape={"tokens": t, "hidden": h},
        )
    ]
    ar = engine_op(collective("embed_allreduce", "all_reduce", "embed", 1, t * h * p.activation_bytes, lay.tp, gpn))
    ops += [ar] if ar else []
    rows = c.attn_batch.logit_tokens
    head = gemm(
        "lm_head", "head", 1, rows, m.vocab_size // lay.tp, h, p.unquantized_bytes, p.activation_bytes, p.activations
    )
    # the last layer's residual is added in by the final norm (vLLM's ``fused_add_rms_norm``, `norm_op`)
    ops += [norm_op("final_norm", "head", 1, t, h, p, residual=True), head]
    ag = collective("logits_gather", "all_gather", "head", 1, rows * m.vocab_size * 4.0, lay.tp, gpn)
    return ops + ([ag] if ag else []) + [sampler_op(rows, m.vocab_size, p.activation_bytes, sampling, p.activations)]


def _per_layer(arr: np.ndarray | None, moe_index: int) -> np.ndarray | None:
    if arr is None:
        return None
    arr = np.asarray(arr)
    return arr if arr.ndim == 1 else arr[moe_index]


def decompose(
    model: ModelSpec,
    batch: Batch,
    layout: Layout,
    cluster: ClusterSpec,
    precision: Precision | None = None,
    *,
    loads: np.ndarray | None = None,
    phys_to_log: np.ndarray | None = None,
    mla_absorb: bool | None = None,
    sampling: str = "greedy",
) -> list[Op]:
    """The ops of one forward step on the busiest GPU.

    Per layer: the attention block's norm (``attn_norm``), the attention ops, the FFN's norm (``ffn_norm``),
    the FFN or MoE ops; both norms fused with the residual add (`norm_op`). The first layer's input norm is a
    plain ``rms_norm`` in vLLM (no residual yet): counting it fused adds 2 x tokens x hidden activation bytes
    once per step.

    Args:
        model, batch, layout, cluster: what, on what, how split.
        precision: dtypes (default bf16 weights and KV cache).
        loads: expert load shares [E] for every MoE layer or [L_moe, E] per
            MoE layer; None: uniform routing.
        phys_to_log: expert placement [S] or [L_moe, S]; None: experts in
            contiguous blocks of E/ep per GPU.
        mla_absorb: MLA in the absorbed (weight-absorbed latent) form; None:
            absorbed for decode, plain for prefill (as SGLang and vLLM do).
        sampling: the sampler's rule (`SAMPLING`, `sampler_op`).

    Raises:
        LayoutError: the layout does not divide the model or needs more
            GPUs than the cluster has.
    """
    p = precision or Precision()
    if sampling not in SAMPLING:
        raise MoesimError(f"sampling '{sampling}' is not one of {', '.join(SAMPLING)}", "use one of those")
    layout.check(model, None if phys_to_log is None else int(np.shape(phys_to_log)[-1]))
    if layout.num_gpus > cluster.num_gpus:
        raise LayoutError(
            f"layout {layout.label()} needs {layout.num_gpus} GPUs but the cluster has {cluster.num_gpus}",
            "add nodes or shrink tp/dp_attn/pp",
        )
    groups = batch.split(layout.dp_attn)
    attn_batch = max(groups, key=lambda b: (b.tokens, b.sequences))
    ctx = OpContext(model, batch, attn_batch, layout, cluster, p, p.gemm_compute_dtype(cluster.gpu.peak_flops))
    per_layer = (loads is not None and np.asarray(loads).ndim == 2) or (
        phys_to_log is not None and np.asarray(phys_to_log).ndim == 2
    )
    absorb = (batch.phase == "decode") if mla_absorb is None else mla_absorb
    edge = _edge_ops_memo(ctx, sampling)
    n_head = len(edge) - (2 if layout.tp > 1 else 1)  # the final norm, LM head, logits gather, sampler
    ops: list[Op] = edge[:-n_head]
    h, t = model.hidden_size, attn_batch.tokens
    moe_index = {layer: i for i, layer in enumerate(np.flatnonzero(model.moe_layers))}
    for s, stage in enumerate(layout.stage_layers(model)):
        first = len(ops)
        for g in _layer_sets_memo(model, stage, per_layer):
            norms = _pieces_memo(
                model,
                ("norms", g.label, g.count, t, h, p),
                lambda g=g: [norm_op(n, g.label, g.count, t, h, p, residual=True) for n in ("attn_norm", "ffn_norm")],
            )
            ops.append(norms[0])
            ops += attention_ops(ctx, g, absorb)
            ops.append(norms[1])
            if g.is_moe:
                i = moe_index[g.first]
                ops += _moe_ops_memo(ctx, g, _per_layer(loads, i), _per_layer(phys_to_log, i))
            else:
                ops += _dense_ffn_ops(ctx, g)
        if s < layout.pp - 1:
            cross = layout.stage_gpus >= cluster.gpus_per_node
            send = attn_batch.tokens * model.hidden_size * p.activation_bytes / layout.tp
            ops.append(
                Op(
                    "pp_send",
                    "p2p",
                    "pp",
                    1,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    intra_bytes=0.0 if cross else send,
                    inter_bytes=send if cross else 0.0,
                    intra_msgs=0 if cross else 1,
                    inter_msgs=1 if cross else 0,
                    shape={"bytes": send},
                )
            )
        if s:
            ops[first:] = [replace(op, stage=s) for op in ops[first:]]
    last = layout.pp - 1
    ops += [op if op.stage == last else replace(op, stage=last) for op in edge[-n_head:]]
    return ops


#: `_layer_sets_memo` entries (cleared when full).
_SETS_MEMO: dict[tuple, tuple[ModelSpec, list[LayerSet]]] = {}


def _layer_sets_memo(model: ModelSpec, stage: Iterable[int], split_moe: bool) -> list[LayerSet]:
    """`model.params.layer_sets`, memoised by (model, layers, split_moe): a pure function of them."""
    key = (id(model), tuple(stage), split_moe)  # the model by id, held by the entry (see `_pieces_memo`)
    hit = _SETS_MEMO.get(key)
    if hit is None or hit[0] is not model:
        if len(_SETS_MEMO) >= 1 << 10:
            _SETS_MEMO.clear()
        hit = _SETS_MEMO[key] = (model, layer_sets(model, key[1], split_moe=split_moe))
    return hit[1]
