"""What one micro-batch costs in training, layer by layer, on the busiest GPU of an all-to-all group.

The forward comes from the op model (`model.ops.decompose`) on the group's
`Layout` (``tp``, ``dp_attn = ep x etp / tp``, ``ep``) with one micro-batch
per data-parallel attention group, MLA in its plain (training) form, and an
LM head over every token. Each op is timed by the `CostModel`. The backward
of an op is its own kernels (`model.train_ops`: a GEMM's dgrad and wgrad, the
experts' grouped dgrad and k-grouped wgrad, FlashAttention's backward, the
norms', rotary's, SwiGLU's and the permutations' backward, the
cross-entropy's), each timed from its own measured table (``moesim profile
--ops train``) when the cost model has one (provenance measured or
transferred); where it has none, the backward is the forward time scaled per
op kind (`BACKWARD`, `_ELEMENTWISE_BWD`: a GEMM's dgrad and wgrad each one
forward GEMM, FlashAttention's backward 2.5 forward), and the provenance says
``assumed ratio`` (`UnitCosts.kernel_sources`). An all-to-all or a
tensor-parallel collective runs once more in the backward with the same bytes.

fp8 training (``precision.gemm: fp8``) adds the casts around every fp8 GEMM
(`fp8_cast_ops`): its input and output gradient cast to fp8 row-wise and
transposed (the wgrad reduces over tokens), its weight cast once per step,
and with per-tensor current scaling an amax pass before each cast.

Per unit (the embedding, each layer, the LM head with its cross-entropy)
and pass (F: forward; B: input gradients plus recomputation; W: weight
gradients) the time splits into ``compute`` (kernels at perfectly balanced
routing), ``straggler`` (the busiest EP GPU's extra expert time from routing
skew and sampling noise), ``ep_comm`` (dispatch and combine all-to-alls) and
``tp_comm`` (tensor-parallel collectives, and with context parallelism the ring attention's transfers the
attention does not hide, `cp_ring_seconds`). Recomputation: ``full`` re-runs a
layer's whole forward (communication included) in its backward; ``selective``
re-runs the forward ops of the Megatron modules it recomputes
(`train_memory.recompute_modules_of`: norms, MLA up-projections, SwiGLU,
core attention, the dense MLP, the whole MoE block with its all-to-alls).

Saved activations per micro-batch (bytes per GPU, ``act_bytes``, by kind in
``act_kinds``): `sim.training.train_memory`, as Megatron-Core and DeepSeek-V3
keep them (recompute modules, fp8 caching, the routing weight inside the
activation, the cross-entropy kernel, offloading). Multi-token-prediction
layers (``setup.mtp``) are units of their own between the last layer and the
LM head: a decoder layer like the last one, ``eh_proj``, and the shared head.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moesim.model import ClusterSpec, CostModel, Precision, train_ops
from moesim.model.a2a import FP8_DISPATCH_BYTES_PER_ELEMENT, is_deepep
from moesim.model.allreduce import nccl_op
from moesim.model.batch import Batch
from moesim.model.dtypes import DTYPE_BYTES
from moesim.model.memory import params_per_gpu
from moesim.model.ops import (
    ENGINE_KINDS,
    Op,
    collective,
    decompose,
    expert_gemm_pair,
    experts_gemms,
    experts_op,
    gemm,
)
from moesim.model.params import embedding_tensors, layer_sets, layer_tensors
from moesim.model.routing import expected_max_normal, inclusion_probs
from moesim.profiling.costmodel import SOURCE_CLASSES, source_class
from moesim.profiling.opshapes import table_dtype
from moesim.sim.training.train_memory import (
    KINDS,
    Policy,
    kind_index,
    layer_saved,
    make_policy,
    op_saved,
    recompute_modules_of,
)
from moesim.sim.training.train_scenario import TrainSetup

#: Backward per op kind as multiples of the forward: (input gradients, weight gradients). FLOP always; time only
#: where the cost model has no measured table of the backward kernel (provenance ``assumed ratio``).
BACKWARD: dict[str, tuple[float, float]] = {
    "gemm": (1.0, 1.0),
    "grouped_gemm": (1.0, 1.0),
    "attention": (2.5, 0.0),
    "router": (1.0, 1.0),
    "embedding": (0.0, 1.0),
    "memcpy": (1.0, 0.0),
    "topk_softmax": (1.0, 0.0),
    "all_to_all": (1.0, 0.0),
    "all_reduce": (1.0, 0.0),
    "all_gather": (1.0, 0.0),
    "reduce_scatter": (1.0, 0.0),
    "p2p": (1.0, 0.0),
}
#: Columns of a pass's cost rows.
PARTS = ("compute", "straggler", "ep_comm", "tp_comm")
COMM_KINDS = {"all_to_all", "all_reduce", "all_gather", "reduce_scatter", "p2p"}
#: Kinds of `decompose`'s serving kernels training leaves out: its own norms, residual adds, rotary embedding
#: and SwiGLU (`_elementwise_ops`, unfused as Megatron-Core runs them) replace the engine's fused ones, and
#: training has no KV cache to write and no sampler. The router's top-k (``topk_softmax``) stays.
_SERVING_ONLY = ENGINE_KINDS - {"topk_softmax"}


def training_ops(ops: list[Op]) -> list[Op]:
    """`decompose`'s forward ops as training runs them: the serving-only kernels (`_SERVING_ONLY`) dropped, and
    the routed experts cut to their two grouped GEMMs (`model.ops.experts_gemms`): training's activation and
    token permutation are kernels of their own (`_elementwise_ops`), so nothing is counted twice; tensor-parallel
    all-reduces on NCCL, not a serving engine's custom all-reduce (`model.allreduce.nccl_op`)."""
    return [
        experts_gemms(op) if op.kind == "grouped_gemm" else nccl_op(op) for op in ops if op.kind not in _SERVING_ONLY
    ]


def sequence_parallel_collectives(ops: list[Op], moe_tp: int = 1, tp: int = 1) -> list[Op]:
    """``ops``' tensor-parallel collectives as Megatron-Core runs them with sequence parallelism.

    Sequence parallelism keeps activations split along the sequence between tensor-parallel regions: each region
    (attention, a dense or TP-split MLP, shared experts, the embedding's output) starts with an all-gather of its
    input and ends with a reduce-scatter of its output, where serving's op model has one all-reduce at its end
    (Korthikanti et al., arXiv 2205.05198 section 4.2.2; NVIDIA/Megatron-LM@megatron/core/tensor_parallel/
    layers.py ``gather_from_sequence_parallel_region`` / ``reduce_scatter_to_sequence_parallel_region``). The routed
    experts with expert parallelism and ``moe_tp`` 1 dispatch each GPU's own sequence shard (Megatron's all-to-all
    dispatcher gathers only over the expert-tensor-parallel group), so serving's all-gather after the combine
    (``tp_gather``) is gone, unless shared experts follow: then it is their all-gather, and a reduce-scatter ends
    them. Same message sizes (the full activation [tokens, hidden]). The router and its top-k run on each GPU's
    own sequence shard too (tokens / ``tp``: Megatron's router sits before the dispatcher, on the sharded input).
    """
    out: list[Op] = []
    shared = {op.group for op in ops if op.name.startswith("shared_")}
    for op in ops:
        if op.kind == "all_reduce" and op.name in ("attn_allreduce", "ffn_allreduce", "moe_allreduce"):
            stem = op.name.removesuffix("_allreduce")
            # a ring all-reduce sends twice an all-gather's (or a reduce-scatter's) bytes (`model.ops.collective`)
            half = {"intra_bytes": op.intra_bytes / 2, "inter_bytes": op.inter_bytes / 2}
            gather = replace(op, name=f"{stem}_gather", kind="all_gather", **half)
            scatter = replace(gather, name=f"{stem}_scatter", kind="reduce_scatter")
            out += [gather, scatter]
        elif op.kind == "all_reduce" and op.name == "embed_allreduce":
            half = {"intra_bytes": op.intra_bytes / 2, "inter_bytes": op.inter_bytes / 2}
            out.append(replace(op, name="embed_scatter", kind="reduce_scatter", **half))
        elif op.kind in ("router", "topk_softmax") and tp > 1 and op.shape and "tokens" in op.shape:
            shard = {**op.shape, "tokens": op.shape["tokens"] / tp}
            out.append(replace(op, flops=op.flops / tp, act_bytes=op.act_bytes / tp, shape=shard))
        elif op.name == "tp_gather" and moe_tp == 1:
            if op.group in shared:
                out += [replace(op, name="shared_gather"), replace(op, name="shared_scatter", kind="reduce_scatter")]
        else:
            out.append(op)
    return out


@dataclass(frozen=True)
class UnitCosts:
    """Per-unit costs of one micro-batch on the busiest GPU; units: embedding, layers 0..L-1, LM head.

    Attributes:
        f, b, w: seconds per pass, shape [L + 2, 4] (columns `PARTS`); ``b``
            includes recomputation.
        flops: FLOP the busiest GPU executes per pass, shape [L + 2, 3] (F, B, W).
        act_bytes: activation bytes kept per micro-batch until its backward, shape [L + 2].
        work_bytes: transient bytes while the unit runs its backward, shape [L + 2].
        dense_params, expert_params: parameters one GPU holds (before ZeRO
            sharding), shape [L + 2].
        drop_frac: share of routed (token, expert) pairs dropped by the capacity factor.
        a2a_bytes: the busiest GPU's dispatch buffer of one MoE layer, bytes.
        tokens_per_gpu: tokens of one micro-batch per attention group (micro-batch x seq_len / cp).
        act_kinds: ``act_bytes`` by saved-tensor kind, shape [units, len(train_memory.KINDS)].
        host_bytes: activation bytes per micro-batch offloaded to host memory, shape [units].
        kernel_sources: how each backward and fp8 kernel was timed (`_Sources.summary`): ``measured`` (its own
            table, measured or transferred) and ``assumed`` (`BACKWARD`'s ratio to the forward time, refined by the
            published figures of `MECHANISMS`: FlashAttention's backward efficiency, the fp32 main-grad floor of a
            wgrad, NCCL's measured collectives, the fused unpermute timed as the dispatch gather; an fp8 cast: the
            roofline) ``"<op> <kind>"`` names, with the reason,
            and ``fp8_cast_s`` (s per micro-batch, all units).
        ep_nic_frac: per unit, the share of its ``ep_comm`` seconds during which the GPU's NIC is busy with the
            all-to-all's inter-node bytes at the NIC's full bandwidth (`ep_nic_seconds`), shape [units]; 0 where
            expert parallelism stays inside a node (`train.nic_contention` uses it).
        a2a_exposed: per unit, the seconds a forward and a backward of the unit paired by Megatron's combined 1F1B
            (``overlap: ep_a2a``) take beyond their computation alone (`combined_layer_seconds` minus the
            computation), shape [units]; None unless the scenario runs ``ep_a2a``.

    Units: 0 the embedding, 1..L the decoder layers, L+1..L+D the multi-token-prediction layers
    (``setup.mtp``), L+D+1 the LM head.
    """

    f: np.ndarray
    b: np.ndarray
    w: np.ndarray
    flops: np.ndarray
    act_bytes: np.ndarray
    work_bytes: np.ndarray
    dense_params: np.ndarray
    expert_params: np.ndarray
    drop_frac: float
    a2a_bytes: float
    tokens_per_gpu: int
    act_kinds: np.ndarray | None = None
    host_bytes: np.ndarray | None = None
    kernel_sources: dict | None = None
    ep_nic_frac: np.ndarray | None = None
    a2a_exposed: np.ndarray | None = None

    @property
    def units(self) -> int:
        """L + 2."""
        return self.f.shape[0]


def precision_of(setup: TrainSetup) -> Precision:
    """The op model's precision: GEMM weights in the GEMM dtype, activations in bf16 (fp32 for fp32 params)."""
    p = setup.scenario.precision
    if p.params == "fp32" and p.gemm == "bf16":
        return Precision(weights="fp32", kv_cache="fp32")
    return Precision(weights=p.gemm, kv_cache="bf16")


def _expected_excess(mean: np.ndarray, cap: float) -> np.ndarray:
    """E[max(0, X - cap)] for X ~ Normal(mean, mean) (Poisson-like counts), elementwise."""
    from scipy.stats import norm

    sd = np.sqrt(np.maximum(mean, 1e-12))
    z = (mean - cap) / sd
    return (mean - cap) * norm.cdf(z) + sd * norm.pdf(z)


def _capacity(setup: TrainSetup, op: Op, loads: np.ndarray | None) -> tuple[Op, float]:
    """The routed-experts op with pairs capped by the capacity factor, and the dropped share."""
    cf = setup.scenario.routing.capacity_factor
    moe = setup.model.moe
    if cf is None or moe is None:
        return op, 0.0
    e, ep = moe.num_experts, setup.ep
    pairs = op.shape["tokens"] * moe.top_k
    share = loads if loads is not None else np.full(e, 1.0 / e)
    mean = pairs * inclusion_probs(share, moe.top_k) / moe.top_k
    cap = float(np.ceil(cf * pairs / e))
    dropped = _expected_excess(mean, cap)
    per_gpu_mean = mean.reshape(ep, -1).sum(axis=1)
    per_gpu_kept = (mean - dropped).reshape(ep, -1).sum(axis=1)
    noise = max(0.0, op.shape["pairs"] - float(per_gpu_mean.max()))  # the busiest GPU's sampling excess
    capped = min(op.shape["pairs"], float(per_gpu_kept.max()) + noise, e // ep * cap)
    s = capped / op.shape["pairs"]
    new = replace(op, flops=op.flops * s, act_bytes=op.act_bytes * s, shape={**op.shape, "pairs": capped})
    return new, float(dropped.sum() / pairs)


def cp_batch(sequences: int, seq_len: int, cp: int) -> Batch:
    """The batch one context-parallel rank computes: ``sequences`` sequences of ``seq_len`` tokens split over ``cp``
    ranks (Megatron's load-balanced causal split, `megatron.core.utils.get_batch_on_this_cp_rank`).

    Each sequence is cut into ``2 cp`` chunks of ``c = seq_len / (2 cp)`` tokens; rank ``r`` holds chunks ``r`` and
    ``2 cp - 1 - r``, whose queries attend causally to every key before them. As a `Batch` that is two sequences
    per real one: ``c`` new tokens after ``r c`` cached, and ``c`` new after ``(2 cp - 1 - r) c`` cached; every rank
    has the same query-key pairs, ``c^2 (2 cp - 1) + c (c + 1)`` per sequence, 1/cp of the whole sequence's
    (window-capped exactly with sliding windows), and rank 0's are used. All first chunks come before all second
    chunks, so `Batch.split` over the attention groups deals each group both chunks of its sequences. ``cp`` 1:
    ``Batch.prefill(sequences, seq_len)``.
    """
    if cp <= 1:
        return Batch.prefill(sequences, seq_len)
    c = seq_len // (2 * cp)
    return Batch((c,) * (2 * sequences), (0,) * sequences + ((2 * cp - 1) * c,) * sequences, "prefill")


def cp_local_up_proj(op: Op, tokens: float) -> Op:
    """MLA's ``kv_b_proj`` on one context-parallel rank: the up-projection of the rank's own ``tokens`` latents
    (Megatron-Core's MLA computes K and V from its local tokens before the core attention's ring passes them on),
    where `cp_batch`'s batch would have it up-project every key its queries read. FLOP and bytes scale with the
    rows; the weights are read once either way."""
    f = tokens / max(float(op.shape["m"]), 1.0)
    return replace(
        op, flops=op.flops * f, kv_bytes=op.kv_bytes * f, act_bytes=op.act_bytes * f, shape={**op.shape, "m": tokens}
    )


def cp_ring_seconds(
    setup: TrainSetup, cost_model: CostModel, op: Op, fwd_s: float, bwd_s: float
) -> tuple[float, float, str]:
    """(forward s, backward s, how it was timed): the context-parallel ring's time beyond the attention it hides
    behind, per layer and micro-batch, for the core-attention ``op`` taking ``fwd_s`` forward and ``bwd_s``
    backward.

    Transformer Engine's ring attention (``cp_comm_type`` p2p, `transformer_engine.pytorch.attention`
    ``AttnFuncWithCPAndKVP2P``) runs ``cp`` steps: in each a rank computes its queries against the keys and values
    it holds while sending them on to the next rank and receiving the previous rank's, ``cp - 1`` transfers of its
    own keys and values (its ``seq_len / cp`` tokens x its KV heads x (key head dim + value dim), activation dtype;
    MLA passes its up-projected keys, every head's nope and rope dims, and values).
    The backward passes the keys and values and their gradients: twice the bytes. A step waits for the slower of
    its transfer and its share of the attention (``1/cp`` of it), so the ring adds ``(cp - 1) x max(0, transfer -
    attention / cp)``. The transfer is a point-to-point send timed by the cost model, over the network when the
    ring's ``tp x cp`` GPUs (tensor-parallel ranks innermost, Megatron's order) span more than one node.
    """
    cp, m = setup.cp, setup.model
    s = op.shape
    tokens = float(s.get("tokens", 0.0))
    # the attention op's own KV heads and key head dim (GQA: the local KV heads; MLA's plain form: every local head,
    # nope + rope dims)
    kv_heads = float(s.get("kv_heads", -(-m.attention.num_kv_heads // setup.tp)))
    head_dim = float(s.get("head_dim", m.attention.head_dim))
    nbytes = tokens * kv_heads * (head_dim + m.attention.v_head_dim) * precision_of(setup).activation_bytes
    cross = setup.tp * cp > setup.cluster.gpus_per_node
    send = Op(
        "cp_ring", "p2p", op.group, 1, 0.0, 0.0, 0.0, 0.0,
        intra_bytes=0.0 if cross else nbytes, inter_bytes=nbytes if cross else 0.0,
        intra_msgs=0 if cross else 1, inter_msgs=1 if cross else 0, shape={"bytes": nbytes},
    )  # fmt: skip
    hop = cost_model.op_time(send, setup.cluster)
    f = (cp - 1) * max(0.0, hop.seconds - fwd_s / cp)
    b = (cp - 1) * max(0.0, 2.0 * hop.seconds - bwd_s / cp)
    link = "the network" if cross else "NVLink"
    why = (
        f"ring attention over cp={cp}: {cp - 1} transfers of {nbytes / 2**20:.1f} MiB per layer over {link} "
        f"({hop.seconds * 1e6:.0f} us each, {hop.source}) beside the attention; exposed {f * 1e6:.0f} / "
        f"{b * 1e6:.0f} us forward / backward"
    )
    return f, b, why


def sequence_hot_factor(setup: TrainSetup) -> float:
    """The busiest EP GPU's routed pairs over the mean when dropless routing is concentrated per sequence (>= 1).

    A router trained with a global-batch balance loss (Qwen3: arXiv 2501.11873, "Demons in the Detail") or none
    balances the corpus, not each sequence: a sequence routes its tokens to the experts of its domain, so one EP
    GPU's share of a sequence's pairs varies from sequence to sequence, with coefficient of variation
    ``routing.sequence_cv`` (for the 1/ep mean share). An EP group routes the tokens of ``n = micro_batch x dp_attn``
    sequences per micro-batch (``dp_attn = ep x etp / tp``: the attention ranks feeding one EP group); their shares
    average, so a GPU's share has CV ``cv / sqrt(n)``, and the busiest of the ``ep`` GPUs carries
    ``1 + cv / sqrt(n) x E[max of ep standard normals]`` times the mean. With context parallelism the attention
    groups of an EP group hold slices of fewer sequences (``dp_attn / cp``), but each slice (two chunks far apart
    in a packed sequence) routes as independently as a whole sequence: ``n`` stays ``micro_batch x dp_attn``.
    The ModelZoo's Qwen3-235B long-context rows bear this out (benchmarks/RESULTS.md section 8, "Context
    parallelism"): with ``sequence_cv`` from the 16K row, the dropless/forced ratio at 32K/64K/128K (CP 2/4/8)
    comes out 0.833/0.878/0.922 against the reported 0.827/0.870/0.918, and 0.765/0.824/0.884 if a sequence's
    slices were counted as one. 1.0 without ``sequence_cv``, with a
    capacity factor (token dropping caps the load) or with the mechanism off (`MECHANISMS`).
    """
    r = setup.scenario.routing
    cv = r.sequence_cv or 0.0
    if cv <= 0.0 or r.capacity_factor is not None or "sequence_concentration" not in MECHANISMS or setup.ep <= 1:
        return 1.0
    lay = setup.group_layout
    n = max(1, setup.scenario.batch.micro_batch * lay.dp_attn)
    z = expected_max_normal(np.zeros(setup.ep), np.ones(setup.ep))
    return 1.0 + cv / float(np.sqrt(n)) * z


def _concentrated(setup: TrainSetup, op: Op, hot: float) -> Op:
    """The routed-experts op on the busiest GPU with per-sequence concentration ``hot`` (`sequence_hot_factor`).

    The sampling excess already in ``op`` (mean + z sigma_noise) and the concentration's (z sigma_seq) add as
    independent normals' deviations, ``sqrt(noise^2 + conc^2)``; the GPU holds at most every token once per local
    expert. `unit_costs` keeps the activation memory and FLOP of the op before: the busiest GPU changes from layer
    to layer, so a GPU's memory over its layers keeps to the mean."""
    if hot <= 1.0:
        return op
    moe = setup.model.moe
    assert moe is not None
    s = op.shape
    mean = s["tokens"] * moe.top_k / setup.ep
    noise = max(0.0, s["pairs"] - mean)
    most = s["tokens"] * min(moe.top_k, moe.num_experts // setup.ep)
    pairs = min(most, mean + float(np.hypot(noise, mean * (hot - 1.0))))
    if pairs <= s["pairs"]:
        return op
    k = pairs / s["pairs"]
    return replace(op, flops=op.flops * k, shape={**s, "pairs": pairs})


def experts_seconds(op: Op, cost_model: CostModel, cluster: ClusterSpec) -> float:
    """Seconds of a routed-experts op: the faster of the grouped GEMM and one GEMM pair per active expert.

    Training's per-expert token counts are far above what grouped-GEMM
    benchmarks cover (thousands of rows per expert); there a grouped GEMM
    runs like separate dense GEMMs, which the GEMM table measures. A
    framework picks the faster kernel, and so does this.
    """
    return experts_timed(op, cost_model, cluster)[0]


def experts_timed(op: Op, cost_model: CostModel, cluster: ClusterSpec) -> tuple[float, str]:
    """`experts_seconds` and the `OpTime.source` of the path it takes: the grouped GEMM's, or the dense gate-up
    GEMM's of the per-expert loop where that is faster."""
    grouped = cost_model.op_time(op, cluster)
    gemm_up, gemm_down, active = expert_gemm_pair(op)
    up = cost_model.op_time(gemm_up, cluster)
    loop = active * (up.seconds + cost_model.op_time(gemm_down, cluster).seconds)
    return (loop, up.source) if loop < grouped.seconds else (grouped.seconds, grouped.source)


def _head_ops(setup: TrainSetup, tokens: int, p: Precision) -> list[Op]:
    """LM head over every token of the micro-batch and a vocab-parallel cross-entropy (memory-bound)."""
    m, tp = setup.model, setup.tp
    v = m.vocab_size // tp
    head = gemm("lm_head", "head", 1, tokens, v, m.hidden_size, p.unquantized_bytes, p.activation_bytes, p.activations)
    nbytes = tokens * v * (p.activation_bytes + 4.0)  # logits read, fp32 softmax written
    ce = Op("cross_entropy", "memcpy", "head", 1, 0.0, 0.0, 0.0, 2.0 * nbytes, dtype=p.activations)
    return [head, replace(ce, shape={"bytes": nbytes, "tokens": tokens, "vocab": v})]


#: Backward time of the memory-bound training kernels, per forward time (by op name).
_ELEMENTWISE_BWD = {
    "norms": 1.5, "residual": 0.0, "rope": 1.0, "swiglu": 5.0 / 3.0, "moe_swiglu": 5.0 / 3.0, "permute": 1.0,
    "unpermute": 1.0,
}  # fmt: skip


#: Mechanisms `unit_costs` applies beyond the kernel tables (all on by default; a set for before/after ablations in
#: ``benchmarks/training.py``): ``attn_bwd_efficiency`` (`attention_bwd_ratio`), ``wgrad_main_grad``
#: (`wgrad_traffic_seconds`), ``tp_nccl`` (tensor-parallel collectives, `nccl_seconds`), ``ep_nccl`` (NCCL-backend
#: expert-parallel all-to-alls inside a node, `nccl_seconds`), ``sp_collectives`` (`sequence_parallel_collectives`),
#: ``permute_fusion`` (the fused unpermute gather of Megatron's ``--moe-permute-fusion``, `fused_unpermute_seconds`),
#: ``sequence_concentration`` (dropless routing concentrated per sequence, `sequence_hot_factor`; only where the
#: scenario gives ``routing.sequence_cv``).
MECHANISMS: set[str] = {"attn_bwd_efficiency", "wgrad_main_grad", "tp_nccl", "ep_nccl", "sp_collectives",
                        "permute_fusion", "sequence_concentration"}  # fmt: skip

#: FlashAttention's achieved TFLOP/s on an H100 SXM5 at head dim 128, no causal mask, batch x seq = 16k tokens,
#: 2,048 hidden, by sequence length (tokens): (forward, backward). FlashAttention-3 paper (Shah et al., arXiv
#: 2407.08608), Figure 5 ("Attention forward speed, head dim 128 (H100 80GB SXM5)", no causal mask) and Figure 6
#: ("Attention backward speed, head dim 128"): per kernel family, FlashAttention-2 (what PyTorch's SDPA runs on
#: H100: the committed ``torch_sdpa`` tables), cuDNN (Transformer Engine's fused attention) and FlashAttention-3.
#: The backward's FLOP are 2.5 x the forward's (5 matmuls against 2; the same paper's FLOP count), so its time is
#: 2.5 x the forward's x (forward TFLOP/s / backward TFLOP/s) (`attention_bwd_ratio`).
FA_H100_TFLOPS: dict[str, dict[int, tuple[float, float]]] = {
    "flash_attn2": {512: (309, 214), 1024: (350, 260), 2048: (362, 291), 4096: (368, 310), 8192: (370, 318),
                    16384: (370, 322)},
    "cudnn": {512: (497, 305), 1024: (574, 408), 2048: (617, 465), 4096: (609, 499), 8192: (600, 518),
              16384: (595, 516)},
    "flash_attn3": {512: (467, 316), 1024: (565, 424), 2048: (625, 501), 4096: (638, 542), 8192: (646, 559),
                    16384: (648, 561)},
}  # fmt: skip
#: Attention table implementations -> the kernel family of `FA_H100_TFLOPS` they run (PyTorch's SDPA dispatches
#: to its vendored FlashAttention-2 kernels on sm90: pytorch/pytorch@aten/src/ATen/native/transformers/cuda/flash_attn).
ATTN_FAMILY = {"torch_sdpa": "flash_attn2", "flash_attn": "flash_attn2", "fa2": "flash_attn2", "fa3": "flash_attn3",
               "flash_attn3": "flash_attn3", "cudnn": "cudnn", "te": "cudnn"}  # fmt: skip


def attention_bwd_ratio(seq_len: float, family: str = "flash_attn2") -> float:
    """Backward time over forward time of one FlashAttention call at ``seq_len`` tokens (dimensionless):
    2.5 (the FLOP ratio) x forward TFLOP/s / backward TFLOP/s of `FA_H100_TFLOPS`'s ``family``, interpolated in
    log2(seq_len) and held at the measured ends. At 4,096 tokens: FA2 2.97, cuDNN 3.05, FA3 2.94."""
    pts = FA_H100_TFLOPS.get(family, FA_H100_TFLOPS["flash_attn2"])
    xs = np.log2(np.array(sorted(pts), dtype=float))
    eff = np.array([pts[k][0] / pts[k][1] for k in sorted(pts)])
    return 2.5 * float(np.interp(np.log2(max(float(seq_len), 1.0)), xs, eff))


#: NCCL on an H100 SXM node (NVSwitch, NCCL 2.29.2), bf16, two message sizes per (collective, GPUs):
#: (bytes, seconds) at 16 MiB and 128 MiB of message (the all-gather's output, the reduce-scatter's input, the
#: all-reduce's buffer, the all-to-all's send buffer per GPU).
#: ai-dynamo/aiconfigurator@src/aiconfigurator/systems/data/h100_sxm (nccl_perf, the TRT-LLM collector's rows;
#: message_size 8,388,608 and 67,108,864 half elements; median of the repeated rows).
#: Between and beyond them a collective takes the line through the two points (latency + bytes / achieved bus
#: bandwidth), never less than the link roofline.
NCCL_H100: dict[tuple[str, int], tuple[tuple[float, float], tuple[float, float]]] = {
    ("all_gather", 2): ((2**24, 56.115e-6), (2**27, 292.695e-6)),
    ("all_gather", 4): ((2**24, 65.545e-6), (2**27, 352.420e-6)),
    ("all_gather", 8): ((2**24, 67.450e-6), (2**27, 389.335e-6)),
    ("reduce_scatter", 2): ((2**24, 52.595e-6), (2**27, 312.665e-6)),
    ("reduce_scatter", 4): ((2**24, 59.255e-6), (2**27, 355.620e-6)),
    ("reduce_scatter", 8): ((2**24, 71.110e-6), (2**27, 381.235e-6)),
    ("all_reduce", 2): ((2**24, 81.260e-6), (2**27, 465.765e-6)),
    ("all_reduce", 4): ((2**24, 99.270e-6), (2**27, 614.930e-6)),
    ("all_reduce", 8): ((2**24, 122.285e-6), (2**27, 579.035e-6)),
    ("all_to_all", 2): ((2**24, 55.800e-6), (2**27, 268.735e-6)),
    ("all_to_all", 4): ((2**24, 67.360e-6), (2**27, 334.790e-6)),
    ("all_to_all", 8): ((2**24, 72.485e-6), (2**27, 404.170e-6)),
}  # fmt: skip
#: GPUs `NCCL_H100` was measured on (`HardwareSpec.key`).
NCCL_GPUS = frozenset({"H100-SXM"})


def nccl_seconds(op: Op, roofline_s: float, cluster: ClusterSpec) -> float | None:
    """Seconds of an intra-node NCCL collective (a tensor-parallel all-gather, reduce-scatter or all-reduce, or an
    expert-parallel all-to-all on the NCCL backend) at NCCL's measured speed (`NCCL_H100`), or None where no figure
    applies (another GPU, kind or group size, a multi-node group, DeepEP's kernels). At least ``roofline_s``."""
    g = int(op.shape.get("gpus", 0)) if op.shape else 0
    pts = NCCL_H100.get((op.kind, g))
    if pts is None or op.inter_bytes > 0 or cluster.gpu.key not in NCCL_GPUS or is_deepep(op):
        return None
    (b1, t1), (b2, t2) = pts
    nbytes = float(op.shape.get("bytes", 0.0))
    t = t1 + (nbytes - b1) * (t2 - t1) / (b2 - b1)
    return max(roofline_s, t)


def _nccl_or(op: Op, t: float, cost_model: CostModel, cluster: ClusterSpec, sources: _Sources) -> float:
    """``t`` (the cost model's seconds for ``op``), or, where the cost model has no table for the collective (its
    roofline) and the mechanism is on (``tp_nccl`` for TP collectives, ``ep_nccl`` for all-to-alls), `nccl_seconds`
    (recorded in ``sources``)."""
    want = "ep_nccl" if op.kind == "all_to_all" else "tp_nccl"
    if op.kind not in ("all_gather", "reduce_scatter", "all_reduce", "all_to_all") or want not in MECHANISMS:
        return t
    if not cost_model.op_time(op, cluster).source.startswith("roofline"):
        return t
    t_nccl = nccl_seconds(op, t, cluster)
    if t_nccl is None:
        return t
    sources.add(op, False, "NCCL's measured H100 speed (NCCL_H100: aiconfigurator nccl_perf)")
    return t_nccl


def fused_unpermute_seconds(op: Op, t: float, cost_model: CostModel, cluster: ClusterSpec, sources: _Sources) -> float:
    """Seconds of the MoE combine-side ``unpermute`` (``op``: kind ``permute``, direction ``combine``) as Megatron-Core
    runs it with ``--moe-permute-fusion`` (mechanism ``permute_fusion``); ``t``: the cost model's seconds, returned
    unchanged for any other op or with the mechanism off.

    The committed ``permute`` tables time the combine as PyTorch's ``index_add_`` (one atomic add per routed row:
    about 365 GB/s on an H100 SXM at 1k-16k tokens x top-8 x 4096 hidden, ``profiling/data/h100-sxm``), which is
    what unfused Megatron runs (``scatter_add_`` in ``megatron/core/transformer/moe/moe_utils.py: unpermute``). With
    the fusion on (Megatron-Bridge's Qwen3-MoE and DeepSeek-V3 performance recipes set ``moe_permute_fusion = True``)
    the combine is Transformer Engine's ``unpermute_with_mask_map`` (NVIDIA/TransformerEngine@
    transformer_engine/pytorch/triton/permutation.py): a Triton kernel on the grid (tokens, hidden blocks), each
    program gathering its token's top-k rows and writing the sum once, no atomics: the mirror of the dispatch-side
    ``_permute_kernel`` on the same grid, over the same bytes (k x hidden rows on one side, one row on the other).
    So it is timed as the measured dispatch gather at the same shape (s), never above ``t``."""
    if "permute_fusion" not in MECHANISMS or op.kind != "permute" or op.shape.get("direction") != "combine":
        return t
    gather = replace(op, shape={**op.shape, "direction": "dispatch"})
    t_gather = cost_model.op_time(gather, cluster).seconds
    if t_gather >= t:
        return t
    sources.add(op, False, "permute_fusion: TE's fused unpermute gather, timed as the permute table's dispatch gather")
    return t_gather


def wgrad_traffic_seconds(op: Op, main_grad_bytes: float, cost_model: CostModel, cluster: ClusterSpec) -> float:
    """Seconds the weight-gradient kernels of a GEMM (or the routed experts' grouped GEMMs) need for their memory
    traffic when they accumulate into an fp32 ``main_grad`` (Megatron's gradient-accumulation fusion, on by
    default: ``fused_weight_gradient_mlp_cuda.wgrad_gemm_accum_fp32(input, grad_output, weight.main_grad)`` in
    NVIDIA/Megatron-LM@megatron/core/tensor_parallel/layers.py, and Transformer Engine's
    ``fuse_wgrad_accumulation`` for its (grouped) linears, megatron/core/extensions/transformer_engine.py).

    Per micro-batch the kernel reads both operands (16-bit) and reads and writes the whole fp32 weight gradient
    (``main_grad_bytes`` each way). Timed as a device copy of half that traffic (the cost model's ``memcpy``
    table: a copy reads and writes its bytes). 0 for other ops or ``main_grad_bytes`` 0.
    """
    s = op.shape or {}
    ab = float(s.get("a_bytes", 2.0))
    if op.kind == "gemm":
        m, n, k = float(s["m"]) * float(s.get("batch", 1)), float(s["n"]), float(s["k"])
        traffic = (m * n + m * k) * ab + 2.0 * n * k * main_grad_bytes
    elif op.kind == "grouped_gemm":
        pairs, h, w, local = float(s["pairs"]), float(s["hidden"]), float(s["inter"]), float(s["experts"])
        # w13 [2w, h]: reads x [pairs, h] and dgate_up [pairs, 2w]; w2 [h, w]: reads act [pairs, w] and dy [pairs, h]
        traffic = pairs * (2 * h + 3 * w) * ab + 2.0 * local * 3.0 * h * w * main_grad_bytes
    else:
        return 0.0
    if main_grad_bytes <= 0 or traffic <= 0:
        return 0.0
    return cost_model.op_time(_copy("wgrad_traffic", op.group, traffic / 2.0, "bf16"), cluster).seconds


def _copy(name: str, group: str, nbytes: float, dtype: str, **dims: float) -> Op:
    """A memory-bound kernel that reads and writes ``nbytes`` each (timed as a copy of that size); ``dims``: its
    kernel's shape (``tokens``, ``hidden``...), which its backward kernel's table is looked up by."""
    return Op(
        name, "memcpy", group, 1, 0.0, 0.0, 0.0, 2.0 * nbytes, dtype=dtype, shape={"bytes": float(nbytes), **dims}
    )


def _elementwise_ops(setup: TrainSetup, ops: list[Op], tokens: int, p: Precision, sp_div: int) -> list[Op]:
    """The memory-bound kernels training runs between the GEMMs, per layer set.

    RMSNorm (two per layer), residual adds (two), rotary embedding of q and
    k, the SwiGLU activation of every gated FFN (dense, shared and routed
    experts), and the MoE token permutation before the dispatch and after the
    combine (Megatron-Core's token dispatcher). Serving fuses most of these;
    training frameworks run them as kernels of their own.
    """
    m, ab = setup.model, p.activation_bytes
    h, a, tp = m.hidden_size, m.attention, setup.tp
    t_sp = tokens / sp_div
    heads = a.num_heads // tp
    if a.kind == "mla":
        rope_dims = {"heads": heads, "kv_heads": 1, "rot_dim": a.qk_rope_head_dim}
    else:
        rope_dims = {"heads": heads, "kv_heads": -(-a.num_kv_heads // tp), "rot_dim": a.head_dim}
    rope = tokens * (rope_dims["heads"] + rope_dims["kv_heads"]) * rope_dims["rot_dim"] * ab
    out: list[Op] = []
    for label in dict.fromkeys(op.group for op in ops if op.group not in ("embed", "head")):
        dt = p.activations
        out += [
            _copy("norms", label, 2 * t_sp * h * ab, dt, tokens=t_sp, hidden=h, rows=2),
            _copy("residual", label, 2 * 1.5 * t_sp * h * ab, dt),
            _copy("rope", label, rope, dt, tokens=tokens, **rope_dims),
        ]
        for op in ops:
            if op.group != label:
                continue
            if op.kind == "gemm" and op.name.endswith("gate_up"):
                rows, width = op.shape["m"], op.shape["n"] / 2
                out.append(_copy("swiglu", label, 1.5 * rows * width * ab, dt, tokens=rows, width=width))
            elif op.kind == "grouped_gemm":
                rows, width = op.shape["pairs"], op.shape["inter"]
                out.append(_copy("moe_swiglu", label, 1.5 * rows * width * ab, dt, tokens=rows, width=width))
                local = tokens / tp
                for name in ("permute", "unpermute"):
                    k = op.shape["top_k"]
                    shape = {"tokens": local, "hidden": h, "top_k": k}
                    shape["direction"] = "dispatch" if name == "permute" else "combine"
                    moved = 2.0 * local * k * h * ab
                    out.append(Op(name, "permute", label, 1, 0.0, 0.0, 0.0, moved, dtype=dt, shape=shape))
    return out


def forward_class(source: str) -> str:
    """`source_class`, except that DeepEP's dispatch and combine (`model.a2a`: fixed costs and link efficiencies
    read from DeepEP's published figures) count as ``achievable``, the class of published-figure models."""
    return "achievable" if source.startswith("deepep-") else source_class(source)


class _Sources:
    """How the backward and fp8 kernels of a step were timed (`UnitCosts.kernel_sources`)."""

    def __init__(self) -> None:
        self.measured: dict[str, str] = {}
        self.assumed: dict[str, str] = {}
        self.fp8_cast_s = 0.0
        #: forward seconds per micro-batch (all units) by `source_class`, and each op kind's largest source
        self.forward_s: dict[str, float] = dict.fromkeys(SOURCE_CLASSES, 0.0)
        self._forward_kinds: dict[str, dict[str, float]] = {}

    def forward(self, kind: str, source: str, seconds: float) -> None:
        """Record ``seconds`` of forward kernel time (per micro-batch, all its units) timed from ``source``
        (`forward_class`)."""
        self.forward_s[forward_class(source)] += seconds
        by = self._forward_kinds.setdefault(kind, {})
        by[source] = by.get(source, 0.0) + seconds

    def add(self, op: Op, measured: bool, why: str) -> None:
        """Record ``op`` (name and kind) as timed from its table (``measured``) or not, with the reason."""
        key = f"{op.name} {op.kind}"
        (self.measured if measured else self.assumed).setdefault(key, why)

    def summary(self) -> dict:
        """``{"measured": [...], "assumed": {name: why}, "fp8_cast_s": s, "forward_share": {class: share},
        "forward": {op kind: the source of most of its forward time}}``: ``forward_share`` splits the forward
        kernels' time (compute and communication, per micro-batch) by `SOURCE_CLASSES`, summing to 1."""
        total = sum(self.forward_s.values())
        share = {c: (v / total if total > 0 else 0.0) for c, v in self.forward_s.items()}
        kinds = {k: max(v.items(), key=lambda kv: kv[1])[0] for k, v in sorted(self._forward_kinds.items())}
        return {"measured": sorted(self.measured), "assumed": dict(sorted(self.assumed.items())),
                "fp8_cast_s": self.fp8_cast_s, "forward_share": share, "forward": kinds}  # fmt: skip


def _table_seconds(op: Op, cost_model: CostModel, cluster: ClusterSpec) -> float | None:
    """``op``'s seconds from its own measured (or transferred) table, else None (the roofline or no table)."""
    t = cost_model.op_time(op, cluster)
    return t.seconds if source_class(t.source) in ("measured", "transferred") else None


def _router_gemm(op: Op) -> Op:
    """The router's logits GEMM [tokens, hidden] @ [hidden, experts] as a ``gemm`` op (for its dgrad and wgrad)."""
    s = op.shape
    ab = op.act_bytes / max(float(s["tokens"]) * float(s["hidden"]) + 2.0 * float(s["tokens"]) * s["experts"], 1.0)
    return gemm(op.name, op.group, 1, s["tokens"], s["experts"], s["hidden"], ab, ab, op.dtype)


def backward_kernels(op: Op) -> list[tuple[int, Op, float]]:
    """The backward kernels of a training forward op: (pass, kernel op, repeats); pass 0 input gradients (B),
    1 weight gradients (W). [] where training has no table kind for its backward (the embedding, the router's
    top-k, collectives, residual adds): `BACKWARD`'s ratio times those.

    A GEMM: dgrad (B) and wgrad (W); the routed experts: grouped dgrad and k-grouped wgrad; the router: its GEMM's
    dgrad and wgrad; attention: FlashAttention's backward; the memory-bound kernels of `_elementwise_ops` (copies
    carrying their kernel's dims): RMSNorm (x ``rows``), rotary, SwiGLU, and the cross-entropy; the permutations.
    """
    s, ab = op.shape, 0.0
    if op.kind == "gemm":
        return [(0, train_ops.gemm_dgrad(op), 1.0), (1, train_ops.gemm_wgrad(op), 1.0)]
    if op.kind == "router":
        g = _router_gemm(op)
        return [(0, train_ops.gemm_dgrad(g), 1.0), (1, train_ops.gemm_wgrad(g), 1.0)]
    if op.kind == "grouped_gemm":
        return [(0, train_ops.grouped_dgrad(op), 1.0), (1, train_ops.grouped_wgrad(op), 1.0)]
    if op.kind == "attention" and "heads" in s:
        return [(0, train_ops.attention_bwd(op), 1.0)]
    if op.kind == "permute":
        return [(0, train_ops.permute_bwd(op), 1.0)]
    if op.kind != "memcpy" or "tokens" not in s:
        return []
    ab = DTYPE_BYTES.get(op.dtype, 2.0)
    if op.name == "norms":
        k = train_ops.norm_bwd(s["tokens"], int(s["hidden"]), ab, op.dtype, op.group, op.name)
        return [(0, k, float(s["rows"]))]
    if op.name == "rope":
        k = train_ops.rope_bwd(s["tokens"], int(s["heads"]), int(s["kv_heads"]), int(s["rot_dim"]), ab, op.dtype)
        return [(0, replace(k, group=op.group), 1.0)]
    if op.name in ("swiglu", "moe_swiglu"):
        return [(0, train_ops.activation_bwd(s["tokens"], int(s["width"]), ab, op.dtype, op.group, op.name), 1.0)]
    if op.name == "cross_entropy":
        fwd = train_ops.cross_entropy_op(s["tokens"], int(s["vocab"]), ab, op.dtype, op.group)
        return [(0, train_ops.cross_entropy_bwd(fwd), 1.0)]
    return []


def _assumed_ratio(op: Op) -> tuple[float, float]:
    """`BACKWARD`'s (input-gradient, weight-gradient) multiples of ``op``'s forward time."""
    bi, bw = BACKWARD.get(op.kind, (1.0, 0.0))
    if op.kind == "memcpy" and op.name in _ELEMENTWISE_BWD:
        bi = _ELEMENTWISE_BWD[op.name]
    return bi, bw


def backward_seconds(
    op: Op, fwd: np.ndarray, cost_model: CostModel, cluster: ClusterSpec, sources: _Sources,
    main_grad_bytes: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``op``'s input-gradient and weight-gradient rows (columns `PARTS`), given its forward row ``fwd``.

    Each backward kernel (`backward_kernels`) is timed from its own measured table where the cost model has one;
    a pass without one takes `BACKWARD`'s ratio times the forward, recorded in ``sources`` as assumed. The
    routed experts' straggler scales with their measured time (the busiest GPU's extra pairs cost the same per
    pair as the others); a routed-experts kernel also takes the faster of the grouped table and a loop of per-expert
    GEMMs (`experts_seconds`).

    Without a measured table, two kernel mechanisms refine the ratio (`MECHANISMS`): FlashAttention's backward runs
    at a lower TFLOP/s than its forward (`attention_bwd_ratio` at the call's sequence length, for the kernel family
    of the forward's table), and a GEMM's weight gradient accumulated into an fp32 ``main_grad``
    (``main_grad_bytes`` per element; 0: none) takes at least its memory traffic (`wgrad_traffic_seconds`).
    """
    ratio = _assumed_ratio(op)
    if op.kind == "attention" and "attn_bwd_efficiency" in MECHANISMS and op.shape:
        seq = float(op.shape.get("kv_read", op.shape.get("tokens", 4096)))
        src = cost_model.op_time(op, cluster).source
        family = next((f for impl, f in ATTN_FAMILY.items() if impl in src), "flash_attn2")
        ratio = (attention_bwd_ratio(seq, family), ratio[1])
    out = [ratio[0] * fwd, ratio[1] * fwd]
    kernels = backward_kernels(op)
    done = [False, False]
    measured = [0.0, 0.0]
    for part, k, reps in kernels:
        t = _table_seconds(k, cost_model, cluster)
        if t is None and k.kind in ("grouped_gemm_dgrad", "grouped_gemm_wgrad"):
            t = _experts_loop(k, cost_model, cluster)
        if t is None:
            why = f"assumed ratio {ratio[part]:g} x forward (no measured {k.kind} table)"
            if k.kind == "attention_bwd" and ratio[0] != BACKWARD["attention"][0]:
                why = (f"assumed ratio {ratio[0]:.3g} x forward (no measured {k.kind} table): 2.5 x FLOP at "
                       "FlashAttention's forward/backward TFLOP/s, arXiv 2407.08608 figs 5-6")  # fmt: skip
            sources.add(k, False, why)
            continue
        sources.add(k, True, "")
        measured[part] += reps * t
        done[part] = True
    for part in (0, 1):
        if not done[part]:
            continue
        if op.kind == "grouped_gemm":
            base = fwd[0] if fwd[0] > 0 else 1.0
            out[part] = np.array([measured[part], fwd[1] * measured[part] / base, 0.0, 0.0])
        else:
            row = np.zeros(4)
            row[int(np.argmax(fwd)) if fwd.any() else 0] = measured[part]
            out[part] = row
    if not done[1] and main_grad_bytes > 0 and "wgrad_main_grad" in MECHANISMS and op.kind in ("gemm", "grouped_gemm"):
        t_mem = wgrad_traffic_seconds(op, main_grad_bytes, cost_model, cluster)
        if t_mem > out[1][0]:
            sources.add(
                replace(op, name=op.name + ".wgrad", kind="fp32_main_grad"),
                False,
                "at least its operands' and fp32 main_grad's traffic (gradient-accumulation fusion; memcpy)",
            )
            out[1] = out[1].copy()
            out[1][0] = t_mem
    if not kernels and op.kind not in COMM_KINDS and ratio != (0.0, 0.0):
        sources.add(op, False, f"assumed ratio {ratio[0]:g}, {ratio[1]:g} x forward (no backward kernel kind)")
    return out[0], out[1]


def _experts_loop(k: Op, cost_model: CostModel, cluster: ClusterSpec) -> float | None:
    """The experts' backward as a loop of per-expert dense dgrad (wgrad) GEMMs from their measured tables, or None.

    At training sizes (thousands of rows per expert) a grouped GEMM runs like separate dense GEMMs
    (`experts_seconds`); per active expert, the gate-up and down GEMMs' backward."""
    up, down, active = expert_gemm_pair(k)
    build = train_ops.gemm_dgrad if k.kind == "grouped_gemm_dgrad" else train_ops.gemm_wgrad
    times = [_table_seconds(build(g), cost_model, cluster) for g in (up, down)]
    return None if None in times else active * sum(t for t in times if t is not None)


#: fp8 scaling recipes: how the casts around an fp8 GEMM run. ``block``: DeepSeek-V3's fine-grained scaling
#: (arXiv 2412.19437 section 3.3.2: activations in 1 x 128 tiles, weights in 128 x 128 blocks, each tile's amax
#: taken inside the cast kernel; Transformer Engine's ``Float8BlockScaling``); ``delayed``: per-tensor scales from
#: an amax history, the amax taken inside the cast (TE's ``DelayedScaling``, its default); ``current``: per-tensor
#: scales from the tensor's own amax, a separate amax pass before each cast (TE's ``Float8CurrentScaling``);
#: ``mxfp8``: one power-of-two scale per 32 elements (TE's ``MXFP8BlockScaling``, Blackwell only).
#: (recipe -> (elements per scale in a row, 0 meaning the whole row; a separate amax pass))
#: (NVIDIA/TransformerEngine transformer_engine/common/recipe/__init__.py.)
FP8_RECIPES: dict[str, tuple[int, bool]] = {"block": (train_ops.FP8_GROUP, False), "delayed": (0, False),
                                             "current": (0, True), "mxfp8": (32, False)}  # fmt: skip


def _is_fp8(op: Op) -> bool:
    """Whether ``op`` is a GEMM whose weights are fp8 (per-tensor or block-scaled)."""
    return op.kind in ("gemm", "grouped_gemm") and table_dtype(op) in ("fp8", "fp8_block")


def fp8_cast_ops(op: Op, microbatches: int, recipe: str = "block") -> list[tuple[int, Op, float]]:
    """The fp8 casts around an fp8 GEMM ``op``: (pass: 0 forward, 1 backward; cast op; repeats per micro-batch).

    A linear layer Y[m, n] = X[m, k] W^T: forward, X cast to fp8 row-wise (fprop) and transposed (for the wgrad,
    which reduces over the m tokens: DeepSeek-V3's 128 x 1 tiles); backward, dY cast the same two ways (dgrad,
    wgrad); the weight [n, k] cast and transposed once per step, spread over the ``microbatches`` (Transformer
    Engine keeps the fp8 weight between micro-batches). The routed experts: the same for both grouped GEMMs
    (inputs [pairs, hidden] and [pairs, width]; gradients [pairs, hidden] and [pairs, 2 width]; every local
    expert's weights). Block recipe: one scale per 128 elements of a row; per-tensor recipes: one per row
    (the kernel's traffic is the same), with ``current`` an amax pass over each tensor before its cast.
    Casts read 16-bit activations (``a_bytes``) and the weights in bf16 (the optimizer's copy).
    """
    if not _is_fp8(op):
        return []
    group_cols, amax = FP8_RECIPES[recipe]
    s = op.shape
    per_step = 1.0 / max(1, microbatches)
    ab = float(s.get("a_bytes", 2.0))
    if op.kind == "gemm":
        m, n, k = float(s["m"]) * float(s.get("batch", 1)), int(s["n"]), int(s["k"])
        tensors = [(0, m, k, "x", 1.0), (1, m, n, "dy", 1.0), (0, float(n), k, "w", per_step)]
    else:
        pairs, h, w, local = float(s["pairs"]), int(s["hidden"]), int(s["inter"]), float(s["experts"])
        tensors = [(0, pairs, h, "x", 1.0), (0, pairs, w, "act", 1.0), (1, pairs, h, "dy", 1.0),
                   (1, pairs, 2 * w, "dgate_up", 1.0), (0, 2.0 * w, h, "w13", local * per_step),
                   (0, float(h), w, "w2", local * per_step)]  # fmt: skip
    out: list[tuple[int, Op, float]] = []
    for part, rows, width, what, reps in tensors:
        g = group_cols or width
        name = f"{op.name}.{what}"
        cast = train_ops.cast_transpose_op(rows, width, ab, g if width % g == 0 else width, name=name + ".cast")
        out.append((part, replace(cast, group=op.group), reps))
        if amax:
            out.append((part, replace(train_ops.amax_op(rows, width, ab, name=name + ".amax"), group=op.group), reps))
    return out


def unit_costs(setup: TrainSetup, cost_model: CostModel) -> UnitCosts:
    """Per-unit forward, backward and weight-gradient costs, activations and parameters (module docstring)."""
    m, sc, cluster = setup.model, setup.scenario, setup.cluster
    lay = setup.group_layout
    p = precision_of(setup)
    mb, seq = sc.batch.micro_batch, sc.batch.seq_len
    cp = setup.cp
    tokens = mb * seq // cp  # one GPU's tokens of a micro-batch: its context-parallel slice
    batch = cp_batch(mb * lay.dp_attn, seq, cp)
    per_layer = setup.loads is not None
    ops = training_ops(decompose(m, batch, lay, cluster, p, loads=setup.loads, mla_absorb=False))
    if cp > 1:  # MLA with context parallelism: each rank up-projects its own latents (the ring carries K and V)
        ops = [cp_local_up_proj(op, tokens) if op.name == "kv_b_proj" else op for op in ops]
    sp_div = setup.tp if sc.layout.sequence_parallel and setup.tp > 1 else 1
    if sp_div > 1 and "sp_collectives" in MECHANISMS:
        ops = sequence_parallel_collectives(ops, lay.moe_tp, setup.tp)
    ops = [op for op in ops if op.group != "head"] + _head_ops(setup, tokens, p)
    ops += _elementwise_ops(setup, ops, tokens, p, sp_div)
    L, D = m.num_layers, setup.mtp
    n_units = L + D + 2
    head = n_units - 1
    ops += _mtp_ops(setup, ops, tokens, p, sp_div) if D else []
    unit_of: dict[str, list[int]] = {"embed": [0], "head": [head], "mtp": list(range(L + 1, head))}
    moe_block: dict[str, bool] = {"embed": False, "head": False, "mtp": False}
    for s in layer_sets(m, range(L), split_moe=per_layer):
        unit_of[s.label] = [i + 1 for i in s.layers]
        moe_block[s.label] = s.is_moe
        if L - 1 in s.layers:  # an MTP depth runs a decoder layer like the last one (DeepSeek-V3: MoE)
            unit_of[s.label] += unit_of["mtp"]
    moe_index = {layer: i for i, layer in enumerate(np.flatnonzero(m.moe_layers))}
    f, b, w = (np.zeros((n_units, 4)) for _ in range(3))
    flops = np.zeros((n_units, 3))
    ab = p.activation_bytes
    pol = make_policy(sc, ab)
    kinds = np.zeros((n_units, len(KINDS)))
    no_recompute = np.zeros(n_units)  # bytes saved with nothing recomputed: what a backward holds while it runs
    kcol = kind_index()
    mla = m.attention.kind == "mla"
    v_dim = m.attention.v_head_dim
    fp8_dispatch = sc.precision.dispatch == "fp8"
    recipe = getattr(sc.precision, "fp8_recipe", None) or "block"
    sources = _Sources()
    # bytes per element of the weight gradient the wgrad GEMMs accumulate into (Megatron's main_grad: the grads dtype)
    main_grad_bytes = float(DTYPE_BYTES[sc.precision.grads])
    drops: list[float] = []
    a2a = 0.0
    ep_s, ep_nic = np.zeros(n_units), np.zeros(n_units)  # forward EP seconds and their NIC-busy seconds per unit
    # combined 1F1B's pieces per unit: attention-node computation (F, B, W), MLP-node computation (F, B, W) and the
    # dispatch / combine seconds (F, B) (`combined_layer_seconds`)
    node = np.zeros((n_units, 6))
    a2a_s = np.zeros((n_units, 4))
    hot = sequence_hot_factor(setup)  # dropless routing concentrated per sequence: the busiest EP GPU's load
    for op in ops:
        units = unit_of[op.group]
        straggle = 0.0
        mean_op = op
        timed = op  # the op whose backward kernels are timed: for the routed experts, at balanced routing
        if op.kind == "grouped_gemm":
            first = units[0] - 1
            loads = None
            if setup.loads is not None:
                loads = setup.loads[moe_index[first]] if setup.loads.ndim == 2 else setup.loads
            op, dropped = _capacity(setup, op, loads)
            mean_op = op  # memory and FLOP: a GPU is the busiest of its EP group in some layers only
            op = _concentrated(setup, op, hot)
            if hot > 1.0:
                sources.add(
                    replace(op, name="routing", kind="sequence_concentration"), False,
                    f"busiest EP GPU's pairs and all-to-all x{hot:.3f} the mean (routing.sequence_cv="
                    f"{sc.routing.sequence_cv:g}, {sc.batch.micro_batch * lay.dp_attn} sequences per EP group)",
                )  # fmt: skip
            drops += [dropped] * len(units)
            moe = m.moe
            assert moe is not None
            ideal = experts_gemms(experts_op(
                op.shape["tokens"], m.hidden_size, op.shape["inter"], moe.top_k, moe.num_experts, lay.ep, p,
                op.dtype, group=op.group, moe_tp=lay.moe_tp, balanced=True,
            ))  # fmt: skip
            t_ideal, src_ideal = experts_timed(ideal, cost_model, cluster)
            straggle = max(0.0, experts_seconds(op, cost_model, cluster) - t_ideal)
            fwd = np.array([t_ideal, straggle, 0.0, 0.0])
            sources.forward(op.kind, src_ideal, (t_ideal + straggle) * len(units))
            a2a = max(a2a, op.shape["pairs"] * m.hidden_size * ab)
            timed = ideal
        else:
            t_op = cost_model.op_time(op, cluster)
            t, src = t_op.seconds, t_op.source
            if op.kind == "memcpy" and op.name == "cross_entropy":  # the loss kernel's own table, where measured
                ce = train_ops.cross_entropy_op(op.shape["tokens"], int(op.shape["vocab"]), ab, op.dtype, op.group)
                t_ce = _table_seconds(ce, cost_model, cluster)
                sources.add(ce, t_ce is not None, "" if t_ce is not None else "no measured cross_entropy table: a copy")
                t = t_ce if t_ce is not None else t
                src = cost_model.op_time(ce, cluster).source if t_ce is not None else src
            t_table = t
            t = _nccl_or(op, t, cost_model, cluster, sources)
            if t != t_table:
                src = "measured:nccl_perf@H100 (AIConfigurator's NCCL table, `nccl_seconds`)"
            t = fused_unpermute_seconds(op, t, cost_model, cluster, sources)
            if op.name in ("ep_dispatch", "ep_combine"):  # the busiest GPU receives (and returns) its extra pairs
                t *= hot
            col = 2 if op.kind == "all_to_all" else 3 if op.kind in COMM_KINDS else 0
            fwd = np.zeros(4)
            fwd[col] = t
            sources.forward(op.kind, src, t * len(units))
        bi, bw = _assumed_ratio(op)
        bwd, wgt = backward_seconds(timed, fwd, cost_model, cluster, sources, main_grad_bytes)
        if op.kind == "attention" and cp > 1:  # the keys and values round the context-parallel ring
            ring = cp_ring_seconds(setup, cost_model, op, fwd[0], bwd[0])
            fwd[3] += ring[0]
            bwd[3] += ring[1]
            sources.add(replace(op, name="cp_ring", kind="p2p"), False, ring[2])
        if sc.precision.gemm == "fp8":  # the casts around an fp8 GEMM (`fp8_cast_ops`), in the compute column
            for part, cast, reps in fp8_cast_ops(timed, setup.microbatches, recipe):
                t_cast = cost_model.op_time(cast, cluster)
                sources.add(cast, source_class(t_cast.source) in ("measured", "transferred"), t_cast.source)
                (fwd if part == 0 else bwd)[0] += reps * t_cast.seconds
                sources.fp8_cast_s += reps * t_cast.seconds * len(units)
        if op.name == "ep_dispatch" and fp8_dispatch:  # fp8 forward dispatch; its backward moves bf16 gradients
            # DeepEP sends fp8 with one fp32 scale per 128 elements (`model.a2a`); NCCL: the fp8 bytes alone
            s = (FP8_DISPATCH_BYTES_PER_ELEMENT if is_deepep(op) else 1.0) / ab
            small = replace(
                op, intra_bytes=op.intra_bytes * s, inter_bytes=op.inter_bytes * s,
                shape={**op.shape, "bytes": op.shape.get("bytes", 0.0) * s},
            )  # fmt: skip
            t_small = _nccl_or(small, cost_model.op_time(small, cluster).seconds, cost_model, cluster, sources)
            fwd = np.array([0.0, 0.0, t_small * hot, 0.0])
            op_nic = ep_nic_seconds(small, fwd[2], cluster)
        elif op.kind == "all_to_all":
            op_nic = ep_nic_seconds(op, fwd[2], cluster)
        else:
            op_nic = 0.0
        saved = op_saved(mean_op, pol, v_dim, sp_div)
        everything = sum(op_saved(mean_op, _keep_all(pol), v_dim, sp_div).values())
        # selective recomputation re-runs the forward of the ops of the recomputed modules (`train_memory`)
        mods = recompute_modules_of(op, moe_block[op.group], mla)
        rerun = pol.mode == "selective" and bool(pol.recompute.intersection(mods))
        mlp_node = 3 if op.name in _MLP_NODE else 0
        for u in units:
            node[u, mlp_node] += fwd[0] + fwd[1]
            node[u, mlp_node + 1] += bwd[0] + bwd[1] + ((fwd[0] + fwd[1]) if rerun else 0.0)
            node[u, mlp_node + 2] += wgt[0] + wgt[1]
            if op.name in ("ep_dispatch", "ep_combine"):
                k = 0 if op.name == "ep_dispatch" else 1
                a2a_s[u, k] += fwd[2]
                a2a_s[u, k + 2] += bwd[2] + (fwd[2] if rerun else 0.0)
            ep_s[u] += fwd[2]
            ep_nic[u] += op_nic
            f[u] += fwd
            b[u] += bwd + (fwd if rerun else 0.0)
            w[u] += wgt
            flops[u] += np.array([1.0, bi + rerun, bw]) * mean_op.flops
            for k, x in saved.items():
                kinds[u, kcol[k]] += x
            no_recompute[u] += everything
    h = m.hidden_size
    for k, x in layer_saved(tokens, h, pol, sp_div).items():
        kinds[1:head, kcol[k]] += x
    no_recompute[1:head] += sum(layer_saved(tokens, h, _keep_all(pol), sp_div).values())
    if pol.mode == "full":  # only each layer's input is kept; its whole forward runs again in the backward
        kinds[1:head] = 0.0
        kinds[1:head, kcol["attn_norm_in"]] = tokens * h * ab / sp_div
        b[1:head] += f[1:head]
        flops[1:head, 1] += flops[1:head, 0]
    off = [kcol[k] for k in pol.offload]
    host = kinds[:, off].sum(axis=1) if off else np.zeros(n_units)
    if off:
        kinds[:, off] = 0.0
        # device-to-host after the forward, host-to-device before the backward, beside the computation
        copy_s = host / (sc.activations.offload_gbps * 1e9)
        f[:, 0] += np.maximum(0.0, copy_s - f[:, :2].sum(axis=1))
        b[:, 0] += np.maximum(0.0, copy_s - b[:, :2].sum(axis=1))
    act = kinds.sum(axis=1)
    work = no_recompute.copy()
    work[head] += tokens * (m.vocab_size // setup.tp) * pol.ce_transient_bytes  # the cross-entropy in flight
    dense, expert = _params(setup)
    exposed = None
    if sc.overlap == "ep_a2a":
        if pol.mode == "full":  # each layer's forward, its all-to-alls included, runs again in its backward
            node[1:head, [1, 4]] += node[1:head][:, [0, 3]]
            a2a_s[1:head, 2:] += a2a_s[1:head, :2]
        exposed = np.zeros(n_units)
        for u in range(n_units):
            if a2a_s[u].any():
                fa, ba, wa, fm, bm, wm = node[u]
                pair = combined_layer_seconds(fa, fm, ba + wa, bm, wm, *a2a_s[u], sc.comm_sm_fraction)
                exposed[u] = max(0.0, pair - node[u].sum())
    return UnitCosts(
        f, b, w, flops, act, work, dense, expert, float(np.mean(drops)) if drops else 0.0, 2.0 * a2a, tokens,
        act_kinds=kinds, host_bytes=host, kernel_sources=sources.summary(),
        ep_nic_frac=np.divide(ep_nic, ep_s, out=np.zeros(n_units), where=ep_s > 0), a2a_exposed=exposed,
    )  # fmt: skip


#: Ops of a layer that Megatron-Core's combined 1F1B runs in the "mlp" node (the experts, shared experts, dense MLP
#: and the combine's unpermute); every other computing op of the layer is in its "attn" node (attention, norms,
#: router, the dispatch's permute). NVIDIA/Megatron-LM@megatron/core/models/gpt/fine_grained_callables.py.
_MLP_NODE = frozenset({
    "routed_experts", "moe_swiglu", "shared_gate_up", "shared_down", "swiglu", "ffn_gate_up", "ffn_down", "unpermute",
})  # fmt: skip


def combined_layer_seconds(
    f_attn: float, f_mlp: float, b_attn: float, b_mlp: float, b_mlp_w: float,
    f_disp: float, f_comb: float, b_disp: float, b_comb: float, sm_frac: float,
) -> float:  # fmt: skip
    """Seconds of one layer's forward (micro-batch i) and another layer's backward (micro-batch j) run together as
    Megatron-Core's combined 1F1B does (``--overlap-moe-expert-parallel-comm --delay-wgrad-compute``).

    Two CUDA streams (NVIDIA/Megatron-LM@megatron/core/models/common/model_chunk_schedule_plan.py
    ``TransformerLayerSchedulePlan.run``): the communication stream runs the backward's combine, the forward's
    dispatch, the backward's dispatch and the forward's combine; the computation stream runs the forward's attention
    node, the backward's MLP input gradients (``b_mlp``) and weight gradients (``b_mlp_w``), the forward's MLP node
    and the backward's attention node. Each waits for its stream and for what it consumes: the forward's dispatch
    for its attention, its MLP for its dispatch, its combine for its MLP; the backward's MLP for its combine, its
    dispatch for its MLP input gradients, its attention for its dispatch. While an all-to-all runs, the computation
    has the SMs it leaves (``1 - sm_frac``: DeepEP's kernels occupy ``--moe-deepep-num-sms`` SMs). These waits are
    Megatron's: each node waits on its micro-batch's one shared CUDA event, recorded by the node launched before
    it, and on its stream. DeepEP's dispatch also holds the host until its receive counts arrive
    (deepseek-ai/DeepEP README: "the CPU will wait for GPU's signal"), which, with a host that launches faster than
    the GPU runs, delays no node here: every node whose launch it holds back already waits for the dispatch's
    inputs.
    All arguments in seconds (communication at full speed, computation alone on the whole GPU).
    """
    comp = [("fa", f_attn, None), ("bm", b_mlp, "bc"), ("bw", b_mlp_w, None), ("fm", f_mlp, "fd"), ("ba", b_attn, "bd")]
    comm = [("bc", b_comb, None), ("fd", f_disp, "fa"), ("bd", b_disp, "bm"), ("fc", f_comb, "fm")]
    done: set[str] = set()
    t = 0.0
    gi = ci = 0
    g_left = comp[0][1]
    c_left = comm[0][1]
    rate = max(1e-9, 1.0 - sm_frac)
    while gi < len(comp) or ci < len(comm):
        g_ready = gi < len(comp) and (comp[gi][2] is None or comp[gi][2] in done)
        c_ready = ci < len(comm) and (comm[ci][2] is None or comm[ci][2] in done)
        if not g_ready and not c_ready:  # cannot happen with the order above; guard against a bad order
            raise ValueError("combined 1F1B layer schedule deadlocked")
        c_active = c_ready and c_left > 0
        g_speed = rate if c_active else 1.0
        dt_g = g_left / g_speed if g_ready else float("inf")
        dt_c = c_left if c_ready else float("inf")
        dt = min(dt_g, dt_c)
        t += dt
        if g_ready:
            g_left -= dt * g_speed
        if c_ready:
            c_left -= dt
        if g_ready and g_left <= 1e-15:
            done.add(comp[gi][0])
            gi += 1
            g_left = comp[gi][1] if gi < len(comp) else 0.0
        if c_ready and c_left <= 1e-15:
            done.add(comm[ci][0])
            ci += 1
            c_left = comm[ci][1] if ci < len(comm) else 0.0
    return t


def ep_nic_seconds(op: Op, seconds: float, cluster: ClusterSpec) -> float:
    """Seconds an EP all-to-all ``op`` (taking ``seconds``) keeps the GPU's own NIC busy: its inter-node bytes at
    the NIC's full bandwidth (``op.inter_bytes / cluster.inter_bw``), at most ``seconds``; 0 when it stays in a node.

    On a rail-optimised HGX node every GPU has its own NIC (NVIDIA DGX H100 user guide: eight ConnectX-7 400 Gb/s
    compute NICs, one per GPU), and DeepEP's normal kernels send a token's inter-node copy from the GPU over its own
    RDMA NIC to the same-rank GPU of the other node (deepseek-ai/DeepEP@README.md, "NVLink and RDMA forwarding"),
    so the bytes `model.a2a` counts as ``inter_bytes`` are the ones the GPU's NIC carries.
    """
    if op.inter_bytes <= 0 or cluster.inter_bw is None or seconds <= 0:
        return 0.0
    return min(seconds, op.inter_bytes / cluster.inter_bw)


def _keep_all(pol: Policy) -> Policy:
    """``pol`` with nothing recomputed (what the backward of one unit holds while it runs)."""
    return replace(pol, mode="none")


def _mtp_ops(setup: TrainSetup, ops: list[Op], tokens: int, p: Precision, sp_div: int) -> list[Op]:
    """The ops of one multi-token-prediction depth besides its decoder layer (DeepSeek-V3 report section 2.2).

    Two RMSNorms (of the hidden state and of the next token's embedding), the projection ``eh_proj`` of
    their concatenation [T, 2h] -> [T, h], and the shared output head with its cross-entropy; the
    embedding lookup is shared with the main model. The decoder layer itself is the last layer's ops.
    """
    tp, h = setup.tp, setup.model.hidden_size
    like = next((op for op in ops if op.name == "o_proj"), None)
    dtype = like.dtype if like is not None else p.activations
    wb = like.shape.get("w_bytes", p.weight_bytes) if like is not None else p.weight_bytes
    out = [
        _copy("norms", "mtp", 2 * tokens / sp_div * h * p.activation_bytes, p.activations),
        gemm("eh_proj", "mtp", 1, tokens, h // tp, 2 * h, wb, p.activation_bytes, dtype),
    ]
    out += [replace(op, group="mtp") for op in _head_ops(setup, tokens, p)]
    return out


def _params(setup: TrainSetup) -> tuple[np.ndarray, np.ndarray]:
    """Parameters one GPU holds per unit, non-expert and expert, shape [L + 2] each."""
    m, lay = setup.model, setup.group_layout
    L, D = m.num_layers, setup.mtp
    head = L + D + 1
    dense, expert = np.zeros(head + 1), np.zeros(head + 1)
    for i in range(L + D):  # MTP depth d: a decoder layer like the last one, eh_proj [2h, h] and two norms
        for t in layer_tensors(m, min(i, L - 1)):
            n = params_per_gpu(t, m, lay)
            if t.shard == "experts":
                expert[i + 1] += n
            else:
                dense[i + 1] += n
        if i >= L:
            dense[i + 1] += 2 * m.hidden_size * m.hidden_size / lay.tp + 2 * m.hidden_size
    for t in embedding_tensors(m):
        n = params_per_gpu(t, m, lay)
        if t.name == "embed_tokens":
            dense[0] += n
            # a tied head, or MTP's embedding lookup, needs the embedding on the last stage: a copy there
            # (Megatron's GPTModel builds it where pre_process or mtp_process), unless DualPipe puts both
            # ends on one rank, which shares it (DeepSeek-V3 report section 3.2.3)
            if setup.pp > 1 and (m.tie_embeddings or D) and setup.schedule != "dualpipe":
                dense[head] += n
        else:
            dense[head] += n
    return dense, expert


def split_layers(num_layers: int, chunks: int) -> list[range]:
    """Layers of each pipeline chunk, as even as possible (earlier chunks get the extra layer)."""
    base, extra = divmod(num_layers, chunks)
    out, start = [], 0
    for c in range(chunks):
        n = base + (1 if c < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def chunk_units(num_layers: int, chunks: int) -> list[list[int]]:
    """Units (0: embedding, 1..L: layers, L+1: LM head) of each pipeline chunk."""
    out = [[i + 1 for i in r] for r in split_layers(num_layers, chunks)]
    out[0].insert(0, 0)
    out[-1].append(num_layers + 1)
    return out


def p2p_seconds(setup: TrainSetup, cost_model: CostModel, tokens: int) -> float:
    """Seconds to send one micro-batch's activations (or their gradients) to the next pipeline stage."""
    m = setup.model
    p = precision_of(setup)
    nbytes = tokens * m.hidden_size * p.activation_bytes / setup.tp
    cross = setup.tp * setup.cp * setup.dp >= setup.cluster.gpus_per_node
    op = Op(
        "pp_send", "p2p", "pp", 1, 0.0, 0.0, 0.0, 0.0,
        intra_bytes=0.0 if cross else nbytes, inter_bytes=nbytes if cross else 0.0,
        intra_msgs=0 if cross else 1, inter_msgs=1 if cross else 0, shape={"bytes": nbytes},
    )  # fmt: skip
    return cost_model.op_time(op, setup.cluster).seconds


def dp_collective_seconds(
    setup: TrainSetup, cost_model: CostModel, kind: str, dense_bytes: float, expert_bytes: float
) -> float:
    """Seconds for one data-parallel collective of ``kind`` over a GPU's dense and expert tensors.

    Dense tensors go over the ``dp x cp`` GPUs that share a (tp, pp) coordinate
    (``gpus_per_node / tp`` of them per node), expert tensors over the ``edp``
    GPUs that share an (ep, etp, pp) coordinate; the two run one after the other.
    """
    return dp_collective_parts(setup, cost_model, kind, dense_bytes, expert_bytes)[0]


def dp_collective_parts(
    setup: TrainSetup, cost_model: CostModel, kind: str, dense_bytes: float, expert_bytes: float
) -> tuple[float, float]:
    """(seconds, NIC-busy seconds) of one data-parallel collective (`dp_collective_seconds`).

    NIC-busy seconds: the collective's inter-node bytes per GPU (`model.ops.collective`'s hierarchical ring: the
    node-level part divided over the node's GPUs, each on its own NIC) at the NIC's full bandwidth, at most the
    collective's time; 0 when its group fits in a node (``gpus <= gpus_per_node / tp``: NVLink only).
    """
    gpn = setup.cluster.gpus_per_node
    total = nic = 0.0
    for nbytes, gpus, per_node in (
        (dense_bytes, setup.grad_dp, max(1, gpn // setup.tp)),
        (expert_bytes, setup.edp, max(1, gpn // (setup.ep * setup.etp))),
    ):
        if nbytes <= 0:
            continue
        op = collective("dp_" + kind, kind, "dp", 1, nbytes, gpus, min(per_node, gpus))
        if op is not None:
            t = cost_model.op_time(op, setup.cluster).seconds
            total += t
            if op.inter_bytes > 0 and setup.cluster.inter_bw is not None:
                nic += min(t, op.inter_bytes / setup.cluster.inter_bw)
    return total, nic


def optimizer_seconds(setup: TrainSetup, cost_model: CostModel, params: float) -> float:
    """Seconds of one Adam step over ``params`` local parameters: memory-bound, every state read and written."""
    pr = setup.scenario.precision
    from moesim.model.dtypes import DTYPE_BYTES

    master = 0.0 if pr.master == "none" or pr.params == "fp32" else DTYPE_BYTES[pr.master]
    per = DTYPE_BYTES[pr.grads] + 2 * (master + 2 * DTYPE_BYTES[pr.optimizer_states]) + DTYPE_BYTES[pr.params]
    nbytes = params * per / 2.0
    if nbytes <= 0:
        return 0.0
    op = Op("adam", "memcpy", "opt", 1, 0.0, 0.0, 0.0, 2.0 * nbytes, dtype="bf16", shape={"bytes": nbytes})
    return cost_model.op_time(op, setup.cluster).seconds
