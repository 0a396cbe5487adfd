"""What one micro-batch costs in training, layer by layer, on the busiest GPU of an all-to-all group.

The forward comes from the op model (`model.ops.decompose`) on the group's
`Layout` (``tp``, ``dp_attn = ep x etp / tp``, ``ep``) with one micro-batch
per data-parallel attention group, MLA in its plain (training) form, and an
LM head over every token. Each op is timed by the `CostModel`; the backward
is the forward time scaled per op kind (`BACKWARD`): a GEMM's input gradient
and weight gradient each cost one forward GEMM; FlashAttention's backward is
2.5 forward (five matmuls against two); an all-to-all or a tensor-parallel
collective runs once more in the backward with the same bytes.

Per unit (the embedding, each layer, the LM head with its cross-entropy)
and pass (F: forward; B: input gradients plus recomputation; W: weight
gradients) the time splits into ``compute`` (kernels at perfectly balanced
routing), ``straggler`` (the busiest EP GPU's extra expert time from routing
skew and sampling noise), ``ep_comm`` (dispatch and combine all-to-alls) and
``tp_comm`` (tensor-parallel collectives). Recomputation: ``full`` re-runs a
layer's whole forward (communication included) in its backward; ``selective``
recomputes norms, activation functions (SwiGLU) and MLA up-projections, timed
as their GEMMs plus a memory-bound pass over the recreated tensors.

Saved activations per micro-batch (bytes per GPU, `activation_bytes`): every
GEMM keeps its input for its weight gradient (a block's norm output once per
block, split ``tp`` ways under sequence parallelism), gate/up GEMMs keep their
output (the SwiGLU input), attention keeps Q, K, V and the softmax statistics
(its output is the output projection's input), the router keeps fp32 scores,
routed experts keep the dispatched tokens, the SwiGLU input and output and
their own outputs (for the combine's gradient), and each layer keeps its two
residual inputs. ``selective`` drops the norm outputs, SwiGLU outputs and MLA
up-projection outputs; ``full`` keeps only each layer's input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moesim.model import ClusterSpec, CostModel, Precision
from moesim.model.batch import Batch
from moesim.model.memory import params_per_gpu
from moesim.model.ops import ENGINE_KINDS, Op, collective, decompose, experts_gemms, experts_op, gemm
from moesim.model.params import embedding_tensors, layer_sets, layer_tensors
from moesim.model.routing import inclusion_probs
from moesim.sim.training.train_scenario import TrainSetup

#: Backward time per op kind as multiples of the forward time: (input gradients, weight gradients).
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
#: Ops whose input is a block's norm output (counted once per block).
_NORM_OUT = {"qkv_proj", "q_proj", "q_a_proj", "kv_a_proj", "ffn_gate_up", "shared_gate_up", "router"}
_MLA_UP = {"q_b_proj", "kv_b_proj"}
#: Kinds of `decompose`'s serving kernels training leaves out: its own norms, residual adds, rotary embedding
#: and SwiGLU (`_elementwise_ops`, unfused as Megatron-Core runs them) replace the engine's fused ones, and
#: training has no KV cache to write and no sampler. The router's top-k (``topk_softmax``) stays.
_SERVING_ONLY = ENGINE_KINDS - {"topk_softmax"}


def training_ops(ops: list[Op]) -> list[Op]:
    """`decompose`'s forward ops as training runs them: the serving-only kernels (`_SERVING_ONLY`) dropped, and
    the routed experts cut to their two grouped GEMMs (`model.ops.experts_gemms`): training's activation and
    token permutation are kernels of their own (`_elementwise_ops`), so nothing is counted twice."""
    return [experts_gemms(op) if op.kind == "grouped_gemm" else op for op in ops if op.kind not in _SERVING_ONLY]


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
        tokens_per_gpu: tokens of one micro-batch per attention group (micro-batch x seq_len).
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


def experts_seconds(op: Op, cost_model: CostModel, cluster: ClusterSpec) -> float:
    """Seconds of a routed-experts op: the faster of the grouped GEMM and one GEMM pair per active expert.

    Training's per-expert token counts are far above what grouped-GEMM
    benchmarks cover (thousands of rows per expert); there a grouped GEMM
    runs like separate dense GEMMs, which the GEMM table measures. A
    framework picks the faster kernel, and so does this.
    """
    grouped = cost_model.op_time(op, cluster).seconds
    s = op.shape
    active = max(1.0, float(s["active_experts"]))
    rows = max(1, round(s["pairs"] / active))
    wb, dt, ab = s["w_bytes"], op.dtype, s["a_bytes"]
    up = gemm("expert_gate_up", op.group, 1, rows, 2 * s["inter"], s["hidden"], wb, ab, dt)
    down = gemm("expert_down", op.group, 1, rows, s["hidden"], s["inter"], wb, ab, dt)
    loop = active * (cost_model.op_time(up, cluster).seconds + cost_model.op_time(down, cluster).seconds)
    return min(grouped, loop)


def _head_ops(setup: TrainSetup, tokens: int, p: Precision) -> list[Op]:
    """LM head over every token of the micro-batch and a vocab-parallel cross-entropy (memory-bound)."""
    m, tp = setup.model, setup.tp
    v = m.vocab_size // tp
    head = gemm("lm_head", "head", 1, tokens, v, m.hidden_size, p.unquantized_bytes, p.activation_bytes, p.activations)
    nbytes = tokens * v * (p.activation_bytes + 4.0)  # logits read, fp32 softmax written
    ce = Op("cross_entropy", "memcpy", "head", 1, 0.0, 0.0, 0.0, 2.0 * nbytes, dtype=p.activations)
    return [head, replace(ce, shape={"bytes": nbytes})]


#: Backward time of the memory-bound training kernels, per forward time (by op name).
_ELEMENTWISE_BWD = {"norms": 1.5, "residual": 0.0, "rope": 1.0, "swiglu": 5.0 / 3.0, "permute": 1.0, "unpermute": 1.0}


def _copy(name: str, group: str, nbytes: float, dtype: str) -> Op:
    """A memory-bound kernel that reads and writes ``nbytes`` each (timed as a copy of that size)."""
    return Op(name, "memcpy", group, 1, 0.0, 0.0, 0.0, 2.0 * nbytes, dtype=dtype, shape={"bytes": float(nbytes)})


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
        rope = tokens * (heads + 1) * a.qk_rope_head_dim * ab
    else:
        rope = tokens * (heads + -(-a.num_kv_heads // tp)) * a.head_dim * ab
    out: list[Op] = []
    for label in dict.fromkeys(op.group for op in ops if op.group not in ("embed", "head")):
        dt = p.activations
        out += [
            _copy("norms", label, 2 * t_sp * h * ab, dt),
            _copy("residual", label, 2 * 1.5 * t_sp * h * ab, dt),
            _copy("rope", label, rope, dt),
        ]
        for op in ops:
            if op.group != label:
                continue
            if op.kind == "gemm" and op.name.endswith("gate_up"):
                out.append(_copy("swiglu", label, 1.5 * op.shape["m"] * op.shape["n"] / 2 * ab, dt))
            elif op.kind == "grouped_gemm":
                out.append(_copy("swiglu", label, 1.5 * op.shape["pairs"] * op.shape["inter"] * ab, dt))
                local = tokens / tp
                for name in ("permute", "unpermute"):
                    k = op.shape["top_k"]
                    shape = {"tokens": local, "hidden": h, "top_k": k}
                    shape["direction"] = "dispatch" if name == "permute" else "combine"
                    moved = 2.0 * local * k * h * ab
                    out.append(Op(name, "permute", label, 1, 0.0, 0.0, 0.0, moved, dtype=dt, shape=shape))
    return out


def _saved(op: Op, setup: TrainSetup, ab: float, sp_div: int) -> tuple[float, float]:
    """(always kept, dropped by selective recompute) bytes this op saves for its backward.

    A GEMM's input is kept in the GEMM's dtype (fp8 GEMMs keep the cast input,
    as Transformer Engine and DeepSeek-V3 do); everything else in ``ab`` bytes.
    """
    s, name, a = op.shape, op.name, setup.model.attention
    gb = 1.0 if setup.scenario.precision.gemm == "fp8" else ab
    if op.kind == "gemm":
        m, n, k = s["m"], s["n"], s["k"]
        if name in _NORM_OUT:
            return 0.0, 0.0  # the block's norm output: counted once per block
        keep, drop = m * k * gb, 0.0
        if name.endswith("gate_up"):
            keep += m * n * ab
        if name.endswith("_down"):
            keep, drop = 0.0, m * k * gb
        if name in _MLA_UP:
            return m * k * gb, m * n * ab
        if name == "lm_head":
            keep = m * k * ab / sp_div
        return keep, drop
    if op.kind == "attention":
        t, heads = s["tokens"], s["heads"]
        if s.get("form") == "mla":
            return t * heads * 4.0, 0.0  # q, k, v are the up-projections' outputs (see _MLA_UP)
        qkv = t * (heads * s["head_dim"] + s["kv_heads"] * (s["head_dim"] + a.v_head_dim))
        return qkv * ab + t * heads * 4.0, 0.0
    if op.kind == "router":
        return s["tokens"] * s["experts"] * 4.0, 0.0
    if op.kind == "grouped_gemm":
        pairs, h, i = s["pairs"], s["hidden"], s["inter"]
        return pairs * h * (gb + ab) + 2 * pairs * i * ab, pairs * i * gb
    return 0.0, 0.0


def unit_costs(setup: TrainSetup, cost_model: CostModel) -> UnitCosts:
    """Per-unit forward, backward and weight-gradient costs, activations and parameters (module docstring)."""
    m, sc, cluster = setup.model, setup.scenario, setup.cluster
    lay = setup.group_layout
    p = precision_of(setup)
    mb, seq = sc.batch.micro_batch, sc.batch.seq_len
    tokens = mb * seq
    batch = Batch.prefill(mb * lay.dp_attn, seq)
    per_layer = setup.loads is not None
    ops = training_ops(decompose(m, batch, lay, cluster, p, loads=setup.loads, mla_absorb=False))
    sp_div = setup.tp if sc.layout.sequence_parallel and setup.tp > 1 else 1
    ops = [op for op in ops if op.group != "head"] + _head_ops(setup, tokens, p)
    ops += _elementwise_ops(setup, ops, tokens, p, sp_div)
    L = m.num_layers
    unit_of: dict[str, list[int]] = {"embed": [0], "head": [L + 1]}
    for s in layer_sets(m, range(L), split_moe=per_layer):
        unit_of[s.label] = [i + 1 for i in s.layers]
    moe_index = {layer: i for i, layer in enumerate(np.flatnonzero(m.moe_layers))}
    f, b, w = (np.zeros((L + 2, 4)) for _ in range(3))
    flops = np.zeros((L + 2, 3))
    keep, drop = np.zeros(L + 2), np.zeros(L + 2)
    ab = p.activation_bytes
    fp8_dispatch = sc.precision.dispatch == "fp8"
    drops: list[float] = []
    a2a = 0.0
    for op in ops:
        units = unit_of[op.group]
        straggle = 0.0
        if op.kind == "grouped_gemm":
            first = units[0] - 1
            loads = None
            if setup.loads is not None:
                loads = setup.loads[moe_index[first]] if setup.loads.ndim == 2 else setup.loads
            op, dropped = _capacity(setup, op, loads)
            drops += [dropped] * len(units)
            moe = m.moe
            assert moe is not None
            ideal = experts_gemms(experts_op(
                op.shape["tokens"], m.hidden_size, op.shape["inter"], moe.top_k, moe.num_experts, lay.ep, p,
                op.dtype, group=op.group, moe_tp=lay.moe_tp, balanced=True,
            ))  # fmt: skip
            t_ideal = experts_seconds(ideal, cost_model, cluster)
            straggle = max(0.0, experts_seconds(op, cost_model, cluster) - t_ideal)
            fwd = np.array([t_ideal, straggle, 0.0, 0.0])
            a2a = max(a2a, op.shape["pairs"] * m.hidden_size * ab)
        else:
            t = cost_model.op_time(op, cluster).seconds
            col = 2 if op.kind == "all_to_all" else 3 if op.kind in COMM_KINDS else 0
            fwd = np.zeros(4)
            fwd[col] = t
        bi, bw = BACKWARD.get(op.kind, (1.0, 0.0))
        if op.kind == "memcpy" and op.name in _ELEMENTWISE_BWD:
            bi = _ELEMENTWISE_BWD[op.name]
        bwd = bi * fwd
        if op.name == "ep_dispatch" and fp8_dispatch:  # fp8 forward dispatch; its backward moves bf16 gradients
            s = 1.0 / ab
            small = replace(
                op, intra_bytes=op.intra_bytes * s, inter_bytes=op.inter_bytes * s,
                shape={**op.shape, "bytes": op.shape.get("bytes", 0.0) * s},
            )  # fmt: skip
            fwd = np.array([0.0, 0.0, cost_model.op_time(small, cluster).seconds, 0.0])
        k_keep, k_drop = _saved(op, setup, ab, sp_div)
        for u in units:
            f[u] += fwd
            b[u] += bwd
            w[u] += bw * fwd
            flops[u] += np.array([1.0, bi, bw]) * op.flops
            keep[u] += k_keep
            drop[u] += k_drop
    h = m.hidden_size
    gb = 1.0 if sc.precision.gemm == "fp8" else ab
    keep[1 : L + 1] += 2 * tokens * h * ab / sp_div  # residual (norm) inputs of both blocks
    drop[1 : L + 1] += 2 * tokens * h * gb / sp_div  # the two blocks' norm outputs (GEMM inputs)
    full = keep + drop
    mode = sc.recompute
    if mode == "none":
        act = full.copy()
    elif mode == "selective":
        act = keep.copy()
        for op in ops:
            if op.name in _MLA_UP:
                for u in unit_of[op.group]:
                    b[u, 0] += cost_model.op_time(op, cluster).seconds
                    flops[u, 1] += op.flops
        recreate = [
            Op("recompute", "memcpy", "", 1, 0.0, 0.0, 0.0, 2.0 * x, dtype=p.activations, shape={"bytes": float(x)})
            for x in drop
        ]
        b[:, 0] += [cost_model.op_time(op, cluster).seconds if op.shape["bytes"] > 0 else 0.0 for op in recreate]
    else:
        act = np.zeros(L + 2)
        act[1 : L + 1] = tokens * h * ab / sp_div
        act[L + 1] = keep[L + 1]
        b[1 : L + 1] += f[1 : L + 1]
        flops[1 : L + 1, 1] += flops[1 : L + 1, 0]
    work = full.copy()
    work[L + 1] += 2.0 * tokens * (m.vocab_size // setup.tp) * 4.0  # fp32 logits and their gradient
    dense, expert = _params(setup)
    return UnitCosts(
        f, b, w, flops, act, work, dense, expert, float(np.mean(drops)) if drops else 0.0, 2.0 * a2a, tokens
    )


def _params(setup: TrainSetup) -> tuple[np.ndarray, np.ndarray]:
    """Parameters one GPU holds per unit, non-expert and expert, shape [L + 2] each."""
    m, lay = setup.model, setup.group_layout
    L = m.num_layers
    dense, expert = np.zeros(L + 2), np.zeros(L + 2)
    for i in range(L):
        for t in layer_tensors(m, i):
            n = params_per_gpu(t, m, lay)
            if t.shard == "experts":
                expert[i + 1] += n
            else:
                dense[i + 1] += n
    for t in embedding_tensors(m):
        n = params_per_gpu(t, m, lay)
        if t.name == "embed_tokens":
            dense[0] += n
            if m.tie_embeddings and setup.pp > 1:
                dense[L + 1] += n
        else:
            dense[L + 1] += n
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
    cross = setup.tp * setup.dp >= setup.cluster.gpus_per_node
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

    Dense tensors go over the ``dp`` GPUs that share a (tp, pp) coordinate
    (``gpus_per_node / tp`` of them per node), expert tensors over the ``edp``
    GPUs that share an (ep, etp, pp) coordinate; the two run one after the other.
    """
    gpn = setup.cluster.gpus_per_node
    total = 0.0
    for nbytes, gpus, per_node in (
        (dense_bytes, setup.dp, max(1, gpn // setup.tp)),
        (expert_bytes, setup.edp, max(1, gpn // (setup.ep * setup.etp))),
    ):
        if nbytes <= 0:
            continue
        op = collective("dp_" + kind, kind, "dp", 1, nbytes, gpus, min(per_node, gpus))
        if op is not None:
            total += cost_model.op_time(op, setup.cluster).seconds
    return total


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
