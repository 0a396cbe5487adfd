"""Step times of one replica: the cost model's op times plus the MoE physics of each step.

`StepTimer.expected` is the analytical step: `model.roofline.estimate_step`
with the routing statistics and placement, so the MoE layer already waits for
the *expected* busiest GPU. `StepTimer.sample` is the discrete-event step:
every op except the routed experts comes from the same decomposition, and for each
MoE layer the (token, expert) pairs of the step are drawn from the routing
statistics (`model.routing.draw_slot_counts`: each of the T tokens picks top_k
distinct experts with their inclusion probabilities, then a slot of each), so each GPU's
pairs and active experts vary from step to step and the layer waits for the
slowest GPU (the straggler). Per GPU, the grouped-GEMM time of (pairs, active
experts) is interpolated from a table built once with the cost model; the op it times carries the step's real
token count N (the whole expert-parallel group's, what every rank's fused-MoE kernel dispatches), so a
calibrated model reads the busiest GPU's extra pairs as skew at that N, not as a bigger batch (the table gains an
N axis in octaves, `StepTimer.expert_times`).

Speed (the discrete-event step): the routing draws come from `RoutingBank` (`draw_slot_counts`' samples per layer
drawn once per pair count, a row per (step, layer) picked at random; the module's tests check the per-step
distribution against direct draws; each bank a function of its seed and key, so the runs of a capacity search
share them through a `BankStore`, `TimerShare`), a prefill or mixed batch's parts from separable tables over the
three numbers the non-attention ops depend on, with only the attention ops built per step
(`StepTimer._fast_parts`), and a run of ``k`` steps comes back in columnar form (`StepBlock`,
`StepTimer.sample_block`), with its host time vectorised.

Physics options:
- capacity factor: each expert takes at most ceil(cf x T x top_k / E) pairs
  per step (split evenly over its replicas); the rest are dropped and counted.
- two-batch overlap: the step runs as two micro-batches of half the sequences,
  each doing half the step's work times rho = 2 t(T/2) / t(T) (the micro-batching
  inefficiency), whose MoE layers' operations SGLang interleaves at yield points
  (`model.tbo`): each micro-batch's dispatch and combine hides only behind the
  stages that run between its issue and its wait (in decode: its shared experts and
  the other's attention preparation; the other's attention core), and the stream
  stalls for what they do not hide; a vLLM engine takes vLLM's dual-batch-overlap order
  instead. While a DeepEP normal-mode all-to-all runs it
  holds 24 SMs, so the compute under it runs ``slow`` times slower
  (`model.a2a.compute_slowdown`). Dense layers, embedding and LM head hide nothing.
- offloading: experts not resident are fetched over PCIe into an LRU cache of
  ``cache_experts`` slots per GPU before the layer runs (not overlapped).

Host time (`sim.serving.host`, the pool's `EngineProfile`): each step also pays the engine's scheduler, input
preparation and sampling, and the CPU cost of launching its kernels: one by one in an eager step (the kernel
launches counted from the step's op list), one graph replay for a decode step that runs a captured CUDA graph (the
batch padded up to the next capture size, its GPU time computed at the padded size, dummy sequences holding no
cache), the pieces of a piecewise graph plus the attention launches between them for a vLLM prefill or mixed step
up to the largest capture size. `host.exposed` says how much of it the step pays beyond its GPU time (the profile's
``overlap``: max(GPU, CPU work) with an overlapping scheduler; else scheduler + prepare + sampling added to the
forward, the forward being the launch pipeline of `host.launch_pipeline` over the step's kernels in order);
``kind: ideal`` pays none, so the step is exactly its kernels and collectives.

Units: seconds, bytes, FLOP. Batches are arrays of per-sequence new and cached tokens.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from moesim.model import Batch, ClusterSpec, CostModel, Layout, ModelSpec, Precision, estimate_step, tbo
from moesim.model.a2a import a2a_mode, compute_slowdown
from moesim.model.attention_ops import attention_ops
from moesim.model.cap import utilisation_exact
from moesim.model.hardware import make_cluster
from moesim.model.op_record import OpContext
from moesim.model.ops import Op, decompose, experts_op, fused_moe_kernels, replica_shares
from moesim.model.params import layer_sets
from moesim.model.roofline import RooflineCostModel, StepEstimate
from moesim.model.routing import EXACT_TOKENS, default_placement, draw_slot_counts, inclusion_probs, slot_inclusion
from moesim.sim.serving.host import (
    EngineProfile,
    attention_launches,
    graph_mode,
    host_cost,
    kernel_launches,
    launch_pipeline,
    op_items,
    piecewise_items,
    sampling_rule,
)

_COMM = ("all_reduce", "all_gather", "reduce_scatter", "p2p")
#: `StepTimer._fast_parts`: ops that depend on the whole batch's tokens, on the attention group's sequences, and on
#: every sequence's context (the rest depend on the attention group's tokens only); `model.ops.decompose`'s names.
_T_ALL_OPS = frozenset({"routed_experts", "ep_dispatch", "ep_combine", "dp_gather", "dp_scatter"})
_ROW_OPS = frozenset({"lm_head", "logits_gather", "sampler"})
_ATT_OPS = frozenset({"attention", "kv_b_proj"})
_EP_A2A = frozenset({"ep_dispatch", "ep_combine"})
#: Tokens of the per-layer estimate whose all-to-all bytes `StepTimer._layer_a2a` scales (any count: bytes are
#: linear in tokens).
_A2A_REF_TOKENS = 1024
#: (grid points per octave, exact below this many tokens) of the per-layer expected expert time in the step-cost
#: tables (`StepTimer._sep_entry`): within 0.1% of the 32-per-octave grid (Qwen3-30B-A3B EP16 with per-layer
#: plans, 33-16,000 tokens; tests/test_placement_phase.py) at a quarter of its grid points. DeepSeek-V3 EP32 with
#: per-layer routing, 300 requests: 46 s of CPU with the fine grid, 9.7 s with this one
_TABLE_EXPERT_GRID = (8, 32)
#: `model.tbo`'s op classes of a MoE layer's computation, by `model.ops.decompose` name (SGLang's grouping:
#: ``prep`` = ``op_comm_prepare_attn`` + ``self_attn.op_prepare``; ``core`` = ``self_attn.op_core`` +
#: ``op_comm_prepare_mlp`` + ``mlp.op_gate`` + ``mlp.op_select_experts``; ``shared`` = ``mlp.op_shared_experts``);
#: a MoE layer's op in none of them hides no transfer
_TBO_PREP = frozenset({
    "attn_norm", "q_proj", "q_a_proj", "q_a_norm", "q_b_proj", "kv_a_proj", "kv_a_norm", "kv_b_proj", "qkv_proj",
    "qk_norm", "rope", "q_absorb",
})  # fmt: skip
_TBO_CORE = frozenset({"kv_write", "attention", "v_absorb", "o_proj", "ffn_norm", "router", "topk_softmax"})
_TBO_SHARED = frozenset({"shared_gate_up", "shared_act", "shared_down"})
_N = 19  # parts of a batch (`StepTimer._parts`)


def _tbo_class(op: Op) -> int | None:
    """The `tbo.CLASSES` index (0 ``prep``, 1 ``core``, 2 ``shared``) of a MoE layer's computing op; None for any
    other op. A step's parts hold the classes at 11-13 and their SM-capped parts at 15-17 (`StepTimer._parts`)."""
    if "moe" not in op.group:
        return None
    return 0 if op.name in _TBO_PREP else 1 if op.name in _TBO_CORE else 2 if op.name in _TBO_SHARED else None


def _sm_capped(op: Op, precision: Precision, gpu: Any) -> bool:
    """Whether ``op`` runs in DeepGEMM and is bound by its SMs: a block-scaled fp8 GEMM or grouped GEMM (SGLang runs
    those in DeepGEMM on Hopper) whose FLOP at the dtype's peak take longer than its bytes at the memory bandwidth.
    In a two-batch-overlapped prefill SGLang caps DeepGEMM at the GPU's SMs less DeepEP's for the whole forward
    (sgl-project/sglang ``two_batch_overlap._model_forward_tbo``: ``configure_deep_gemm_num_sms`` with the
    strategy's ``deep_gemm_num_sms``), so such a GEMM takes ``slow`` times its time whether a transfer is in flight
    or not (`model.tbo`)."""
    if op.kind not in ("gemm", "grouped_gemm") or op.dtype != "fp8" or precision.fp8_scaling != "block":
        return False
    moved = op.weight_bytes + op.kv_bytes + op.act_bytes
    return op.flops / gpu.peak(op.dtype) >= moved / gpu.bandwidth()


def busiest_rank_tokens(new: np.ndarray, dp: int) -> int:
    """Tokens of the busiest of ``dp`` attention-data-parallel ranks when a batch's sequences (new tokens
    ``new`` [B]) are dealt round-robin (`model.batch.Batch.split`): ``max_g sum(new[g::dp])``."""
    new = np.asarray(new)
    if dp <= 1 or new.size <= 1:
        return int(new.sum())
    if new.size <= dp:
        return int(new.max())
    if int(new.max()) == 1:  # a decode step: one token per sequence
        return -(-int(new.size) // dp)
    padded = np.zeros(-(-new.size // dp) * dp, np.int64)
    padded[: new.size] = new
    return int(padded.reshape(-1, dp).sum(axis=0).max())


def _shape(new: np.ndarray, cached: np.ndarray) -> tuple[int, int, str]:
    """(sequences, tokens, phase) of a batch: ``decode`` (one new token each), ``prefill`` (no cache) or ``mixed``."""
    if not new.size:
        return 0, 0, "decode"
    phase = "decode" if int(new.max()) == 1 else "prefill" if int(np.max(cached)) == 0 else "mixed"
    return int(new.size), int(new.sum()), phase


@dataclass(frozen=True)
class Offload:
    """Experts resident per GPU and the host link that fetches the rest.

    Attributes:
        cache_experts: expert slots (of any layer) an LRU cache on each GPU holds.
        expert_bytes: bytes of one expert slot on one GPU (its moe_tp shard).
        host_bw: host-to-GPU bytes/s per GPU.
    """

    cache_experts: int
    expert_bytes: float
    host_bw: float


@dataclass
class StepCost:
    """One step's time and where it went (seconds), with its routed and dropped pairs.

    ``compute_s + comm_s + straggler_s + fetch_s + scheduler_s + prepare_s + sampling_s + launch_s ==
    duration_s``: the first four are GPU time (kernels, collectives, waiting for the slowest GPU, expert
    fetches), the last four the host time the step exposes beyond it (`sim.serving.host.exposed`); ``gpu_wait_s``
    is each GPU's idle time in the MoE layers waiting for the slowest, shape [G].

    Attributes (host): scheduler_s, prepare_s, sampling_s, launch_s: exposed host seconds by part; host_s: the
    step's raw CPU seconds (all four parts, hidden or not), scheduler_cpu_s, prepare_cpu_s, sampling_cpu_s,
    launch_cpu_s: the same by part; launches: kernels launched one by one; graphs: CUDA
    graph replays; padded_batch: the sequences the GPU ran (the capture size of a graph replay, else the batch).
    """

    duration_s: float
    compute_s: float
    comm_s: float
    straggler_s: float
    fetch_s: float
    pairs: int
    dropped_pairs: int
    bytes: float
    flops: float
    gpu_wait_s: np.ndarray = field(default_factory=lambda: np.zeros(1))
    scheduler_s: float = 0.0
    prepare_s: float = 0.0
    sampling_s: float = 0.0
    launch_s: float = 0.0
    host_s: float = 0.0
    scheduler_cpu_s: float = 0.0
    prepare_cpu_s: float = 0.0
    sampling_cpu_s: float = 0.0
    launch_cpu_s: float = 0.0
    launches: int = 0
    graphs: int = 0
    padded_batch: int = 0

    @property
    def gpu_s(self) -> float:
        """GPU time of the step: kernels, collectives, straggler wait and expert fetches, s."""
        return self.compute_s + self.comm_s + self.straggler_s + self.fetch_s

    @property
    def host_exposed_s(self) -> float:
        """Host time the step pays beyond its GPU time, s."""
        return self.scheduler_s + self.prepare_s + self.sampling_s + self.launch_s


#: `StepBlock` fields held per step as arrays [k] (`StepCost`'s scalar fields but ``padded_batch``).
_BLOCK_FIELDS = (
    "duration_s", "compute_s", "comm_s", "straggler_s", "fetch_s", "pairs", "dropped_pairs", "bytes", "flops",
    "scheduler_s", "prepare_s", "sampling_s", "launch_s", "host_s", "scheduler_cpu_s", "prepare_cpu_s",
    "sampling_cpu_s", "launch_cpu_s", "launches", "graphs",
)  # fmt: skip


#: The host fields of a step without a host model: `StepCost`'s defaults (zeros; `StepTimer._combine_one`,
#: `steparray.StepArray._lean_cost`).
_NO_HOST_COST: dict[str, Any] = {}
#: `StepTimer._host_overlap`: the host fields that are constant for a batch shape, in this order.
_HOST_CONST = (
    "host_s", "launches", "graphs", "scheduler_cpu_s", "prepare_cpu_s", "sampling_cpu_s", "launch_cpu_s",
)  # fmt: skip


@dataclass
class StepBlock:
    """``k`` consecutive steps' costs in columnar form: each `StepCost` field an array [k] (s, counts, bytes,
    FLOP), ``gpu_wait_s`` [k, G], ``padded_batch`` one int for all (a block is one batch shape). What the DES
    records a folded decode run from without building a `StepCost` per step; `cost` gives one step's."""

    duration_s: np.ndarray
    compute_s: np.ndarray
    comm_s: np.ndarray
    straggler_s: np.ndarray
    fetch_s: np.ndarray
    pairs: np.ndarray
    dropped_pairs: np.ndarray
    bytes: np.ndarray
    flops: np.ndarray
    gpu_wait_s: np.ndarray
    scheduler_s: np.ndarray
    prepare_s: np.ndarray
    sampling_s: np.ndarray
    launch_s: np.ndarray
    host_s: np.ndarray
    scheduler_cpu_s: np.ndarray
    prepare_cpu_s: np.ndarray
    sampling_cpu_s: np.ndarray
    launch_cpu_s: np.ndarray
    launches: np.ndarray
    graphs: np.ndarray
    padded_batch: int = 0

    def __len__(self) -> int:
        return len(self.duration_s)

    @property
    def host_exposed_s(self) -> np.ndarray:
        """Host time each step pays beyond its GPU time, s, shape [k]."""
        return self.scheduler_s + self.prepare_s + self.sampling_s + self.launch_s

    @staticmethod
    def concat(blocks: list[StepBlock]) -> StepBlock:
        """Blocks of the same batch shape, one after the other, as one block."""
        kw: dict[str, Any] = {f: np.concatenate([getattr(b, f) for b in blocks]) for f in _BLOCK_FIELDS}
        wait = np.concatenate([b.gpu_wait_s for b in blocks])
        return StepBlock(gpu_wait_s=wait, padded_batch=blocks[0].padded_batch, **kw)

    def cost(self, j: int) -> StepCost:
        """Step ``j`` as a `StepCost`."""
        kw: dict[str, Any] = {f: getattr(self, f)[j].item() for f in _BLOCK_FIELDS}
        for f in ("pairs", "dropped_pairs", "launches", "graphs"):
            kw[f] = int(kw[f])
        return StepCost(gpu_wait_s=self.gpu_wait_s[j], padded_batch=self.padded_batch, **kw)

    def costs(self) -> list[StepCost]:
        """Every step as a `StepCost`."""
        return [self.cost(j) for j in range(len(self))]


def _with_fields(op: Op, **fields: Any) -> Op:
    """``dataclasses.replace(op, **fields)`` for a frozen `Op` (no ``__post_init__``, fields only in its
    ``__dict__``) without re-running its ``__init__``: the same field values, a tenth of the cost (the per-layer
    all-to-all of `StepTimer._layer_a2a` rescales 2 ops per MoE layer per step shape)."""
    new = object.__new__(Op)
    new.__dict__.update(op.__dict__)
    new.__dict__.update(fields)
    return new


def _q(x: float, per_octave: int = 48) -> int:
    """Log-scale bucket of a count (exact up to 64)."""
    return int(x) if x <= 64 else 64 + round(per_octave * math.log2(x / 64.0))


class BankStore:
    """Routing banks (`RoutingBank.samples`) drawn by the step timers of one replica configuration and seed, kept
    across their runs: the discrete-event runs of a capacity search (`sim.sweeps.sweep_eval.capacity`) simulate
    the same replicas with the same seeds at several request rates, and a bank is a function of (seed, pair count,
    generation, rows), so a run takes the banks an earlier run drew instead of drawing them again, with the same
    results bit for bit. Least recently used banks go first beyond ``max_bytes`` (they are drawn again if needed).

    Args:
        max_bytes: most bytes of bank arrays kept.
    """

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._banks: OrderedDict[tuple[int, int, int], tuple[np.ndarray, ...]] = OrderedDict()

    def get(self, key: tuple[int, int, int]) -> tuple[np.ndarray, ...] | None:
        """The bank of ``key`` = (pairs, generation, rows), or None."""
        hit = self._banks.get(key)
        if hit is not None:
            self._banks.move_to_end(key)
        return hit

    def put(self, key: tuple[int, int, int], bank: tuple[np.ndarray, ...]) -> None:
        """Keep ``bank`` under ``key`` (dropping the least recently used beyond ``max_bytes``)."""
        if key in self._banks:
            return
        self._banks[key] = bank
        self.bytes += sum(a.nbytes for a in bank)
        while self.bytes > self.max_bytes and len(self._banks) > 1:
            _, old = self._banks.popitem(last=False)
            self.bytes -= sum(a.nbytes for a in old)


@dataclass
class TimerShare:
    """What the step timers of one replica configuration and seed can share across discrete-event runs (see
    `BankStore`): the routing banks, the grouped-GEMM tables (`StepTimer._slice`) and the step-cost memo
    (`StepTimer._memo`), each a function of the timer's arguments and its keys alone, so sharing them changes no
    result (`tests/test_step_share.py`). The memo is not shared by a timer whose engine launches kernels one by one
    (`StepTimer._fast_ok` false): its discrete-event steps are memoised in buckets, filled by whichever batch came
    first."""

    banks: BankStore = field(default_factory=BankStore)
    tables: dict = field(default_factory=dict)
    memo: dict = field(default_factory=dict)


class RoutingBank:
    """Exact routing samples of a replica's MoE layers, drawn once per pair count and reused by every step.

    The discrete-event step needs, per MoE layer, each GPU's routed pairs and active experts under this step's
    routing: the step's tokens each pick ``top_k`` distinct experts, then a slot of each
    (`model.routing.draw_slot_counts`: token by token up to `EXACT_TOKENS` tokens, above a multinomial of the pairs
    over the slots with the finite-population correction), capped by the capacity factor. Drawing it for every step
    costs one such draw per layer and step; instead, per pair count ``n`` and per distinct layer (layers with the
    same slot probabilities and placement share one), this bank draws ``rows`` such samples once and keeps each
    GPU's pairs, active experts and drops. A step then takes, for each layer independently, one row of the layer's
    bank chosen uniformly at random: each layer's (pairs, active) vector is an exact draw of the sampler, layers are
    independent as before, and a run of ``k`` steps costs one gather of [k, L, G]. Rows are reused across steps;
    with ``rows`` samples per layer and ``L`` layers per step the per-step variation keeps its distribution
    (`tests/test_des_speed.py` checks it against direct draws).

    Pair counts up to ``exact`` (`EXACT`, or `EXACT_TOKENS` x top_k where that is more: every count drawn token by
    token; any count under a capacity factor) each get their own bank; above, counts share
    the bank of the nearest point ``nb`` of a grid `PER_OCTAVE` per octave (at most 2.2% apart; half as many
    points where a bank has under 256 rows), each GPU's pairs moved to ``n``: mean x n / nb, deviation from it x
    sqrt(n / nb) (a multinomial's mean and variance at ``n``), its seconds along their slope per pair.
    ``rows`` is the most samples per layer that keep one bank at `BUDGET` multinomial categories (rows x distinct
    layers x slots), at least `MIN_ROWS`; a bank starts at `FIRST_ROWS` rows and `FIRST_CATEGORIES` categories at
    most and grows with use (see there).

    Args:
        slot_p: slot probabilities [L, S] (rows sum to 1).
        times: grouped-GEMM seconds of (pairs, active experts) arrays, elementwise, in a step of the given routed
            pairs per layer (`StepTimer.expert_times`).
        ep: expert-parallel GPUs G (S / G slots each, in order).
        replicas: replicas of each slot's expert [L, S] (the capacity factor's split).
        num_experts: logical experts E.
        capacity_factor: None: dropless.
        seed: the bank's seed: the bank of ``n`` pairs drawn for the ``g``-th time (after ``g`` retirements,
            `_rows_for`) with ``m`` rows is drawn from a generator seeded with (seed, n, g, m), so it is a function
            of those four numbers, not of the other banks drawn before it.
        store: banks already drawn by timers of the same replica and seed (`BankStore`; None: none kept): a bank
            found there is taken as it is, bit-equal to drawing it again.
        slot_expert: the logical expert of each slot [L, S] (None: slot s holds expert s).
        top_k: experts per token.
    """

    EXACT = 64
    PER_OCTAVE = 16
    BUDGET = 1 << 17
    MIN_ROWS, MAX_ROWS = 8, 16384
    #: A pair count's first bank has at most FIRST_ROWS rows; once it has served as many steps as it has rows it is
    #: drawn anew 4 times bigger, up to ``rows`` (a count seen a few times costs little, one in heavy use gets the
    #: full bank); a full bank is drawn anew after serving max(REUSE x rows, MIN_REFRESH) steps, so a long run does
    #: not lean on one set of rows (their sampling error averages out over refreshes as a per-step sampler's does).
    FIRST_ROWS = 1024
    #: ... and at most FIRST_CATEGORIES multinomial categories (rows x distinct layers x slots): a replica with
    #: per-layer routing (Mixtral with skew: 32 distinct layers of 8 slots, full banks of 512 rows) meets a hundred
    #: pair counts in the mixed steps of a short run, each used by a median of 28 steps (measured on the 8-GPU EP
    #: capacity search of benchmarks/sweep-des-capacity.yaml), so its first banks hold 64 rows, 1/8 of the cost.
    FIRST_CATEGORIES = 1 << 14
    #: True: the banks of commit 91c4171, the reference for comparisons in one run (`benchmarks.des_speed
    #: --bank-ab`): each drawn in turn from one generator seeded with ``seed`` (a bank then depends on the banks
    #: drawn before it, so no `store`), first banks of FIRST_ROWS rows whatever their categories.
    LEGACY = False
    #: `draw_stats`: most banks moved to a pair count kept at once (each [D x rows, G] floats; cleared when full).
    MAX_MOVED = 64
    REUSE, MIN_REFRESH = 64, 512

    def __init__(
        self,
        slot_p: np.ndarray,
        times: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
        ep: int,
        replicas: np.ndarray,
        num_experts: int,
        capacity_factor: float | None,
        seed: int,
        store: BankStore | None = None,
        slot_expert: np.ndarray | None = None,
        top_k: int = 1,
    ) -> None:
        s = slot_p.shape[1]
        if slot_expert is None:  # one slot per expert, in order
            slot_expert = np.broadcast_to(np.arange(s), slot_p.shape)
        slot_expert = np.broadcast_to(slot_expert, slot_p.shape)
        key = np.concatenate([slot_p, replicas.astype(float), slot_expert.astype(float)], axis=1)
        distinct, self.layer_of = np.unique(key, axis=0, return_inverse=True)
        self.layer_of = self.layer_of.reshape(-1)
        self.p, self.rep, self.times = distinct[:, :s], distinct[:, s : 2 * s], times
        self.slot_expert = distinct[:, 2 * s :].astype(np.int64)
        self.top_k = int(top_k)
        #: pair counts up to this get their own bank: every count `EXACT` and below, and the counts that
        #: `draw_slot_counts` draws token by token
        self.exact = max(self.EXACT, EXACT_TOKENS * self.top_k)
        self.ep, self.per_gpu = ep, s // ep
        self.num_experts, self.capacity_factor = num_experts, capacity_factor
        self.seed, self.store = int(seed) & 0xFFFFFFFFFFFFFFFF, store  # SeedSequence entropy is non-negative
        #: how many banks of each pair count this bank has retired (`_rows_for`): a bank is the draw of its
        #: (count, generation), so a shared `store` serves another timer of the same seed the same rows
        self._gen: dict[int, int] = {}
        self.rows = int(np.clip(self.BUDGET // (len(distinct) * s), self.MIN_ROWS, self.MAX_ROWS))
        first = min(self.FIRST_ROWS, self.FIRST_CATEGORIES // (len(distinct) * s))
        self.first_rows = min(self.rows, max(first, self.MIN_ROWS))
        self._legacy = np.random.default_rng(seed) if self.LEGACY else None
        if self._legacy is not None:
            self.first_rows, self.store = min(self.rows, self.FIRST_ROWS), None
        self._banks: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._means: dict[int, np.ndarray] = {}
        #: `draw_stats`: live banks moved to a pair count (grid point, count) -> (seconds [D x rows, G], slowest
        #: [D x rows], dropped [D x rows]), and the (grid point, count) pairs drawn before
        self._moved: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._seen: set[tuple[int, int]] = set()
        self._used: dict[int, int] = {}
        self._rows: dict[int, int] = {}

    def grid(self, n: int) -> int:
        """The pair count whose bank serves ``n`` pairs (``n`` itself under a capacity factor: capped loads do not
        move with the count the way `draw` moves a grid point's)."""
        if n <= self.exact or self.capacity_factor is not None:
            return n
        per = self.PER_OCTAVE if self.rows >= 256 else self.PER_OCTAVE // 2  # a costly bank: half as many
        j = round(per * math.log2(n / self.exact))
        return round(self.exact * 2 ** (j / per))

    def samples(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The bank of ``n`` pairs (exactly ``n``, no grid), per distinct layer: each GPU's pairs [D, rows, G], its
        grouped-GEMM seconds [D, rows, G] (``times``), their slope per pair [D, rows, G] (s; 0 on a GPU with no
        pairs) and the dropped pairs [D, rows]; drawn by `model.routing.draw_slot_counts`, vectorised over every row
        and layer."""
        hit = self._banks.get(n)
        if hit is None:
            m = self._rows.setdefault(n, self.first_rows)
            key = (n, self._gen.get(n, 0), m)
            hit = self.store.get(key) if self.store is not None else None
            if hit is None:
                hit = self._draw(n, m, self._legacy or np.random.default_rng((self.seed, *key)))
                if self.store is not None:
                    self.store.put(key, hit)
            self._banks[n] = hit
        return hit

    def _draw(self, n: int, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A new bank of ``m`` rows of ``n`` pairs drawn with ``rng`` (`samples`' arrays)."""
        d = len(self.p)
        counts, hit = draw_slot_counts(rng, n, m, self.p, self.slot_expert, self.top_k)
        dropped = np.zeros((d, m))
        if self.capacity_factor is not None:
            cap = np.ceil(self.capacity_factor * n / self.num_experts / self.rep)[:, None, :]  # [D, 1, S]
            over = np.maximum(counts - cap, 0)
            dropped = over.sum(axis=2)
            counts = counts - over
        pairs = counts.reshape(d, m, self.ep, self.per_gpu).sum(axis=3)
        active = hit.reshape(d, m, self.ep, self.per_gpu).sum(axis=3).astype(float)
        te = self.times(pairs, active, n)
        slope = np.where(pairs > 0, self.times(pairs + 1.0, active, n) - te, 0.0)
        return pairs, te, slope, dropped

    def _rows_for(self, n: int, k: int) -> tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], bool]:
        """(grid point, its bank, whether the bank stays in use after this draw of ``k`` steps): the bookkeeping
        of `draw`'s growth and refresh (a stale bank serves this draw and is drawn anew from the next one)."""
        nb = self.grid(n)
        bank = self.samples(nb)
        rows = len(bank[0][0])
        self._used[nb] = self._used.get(nb, 0) + k
        grow = rows < self.rows and self._used[nb] >= rows
        live = not (grow or self._used[nb] >= max(self.REUSE * rows, self.MIN_REFRESH))
        if not live:  # drawn anew from the next call on
            del self._banks[nb], self._used[nb]
            self._gen[nb] = self._gen.get(nb, 0) + 1
            self._means.pop(nb, None)
            self._moved = {key: v for key, v in self._moved.items() if key[0] != nb}
            if grow:  # a count in use gets a bigger bank, up to ``rows``
                self._rows[nb] = min(4 * rows, self.rows)
        return nb, bank, live

    def draw(self, n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Routing of ``k`` steps of ``n`` pairs per layer: each GPU's grouped-GEMM seconds [k, L, G] and the
        dropped pairs [k] (summed over layers); each (step, layer) one row of the layer's bank drawn with ``rng``.
        A grid point's rows are moved to ``n`` pairs (see the class docstring), their seconds along the slope."""
        nb, bank, _ = self._rows_for(n, k)
        idx = rng.integers(0, len(bank[0][0]), size=(k, len(self.layer_of)))
        return self._take(n, nb, bank, idx)

    def _take(self, n: int, nb: int, bank: tuple[np.ndarray, ...], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``idx`` [k, L] of grid point ``nb``'s bank, moved to ``n`` pairs: each GPU's seconds [k, L, G] and
        the dropped pairs [k] (summed over layers)."""
        pairs, te, slope, dropped = bank
        layer = self.layer_of[None, :]
        t, dr = te[layer, idx], dropped[layer, idx].sum(axis=1)
        if nb != n:  # mean x n / nb, deviation from it x sqrt(n / nb)
            f = n / nb
            mean = self._means.get(nb)
            if mean is None:
                mean = self._means[nb] = pairs.mean(axis=1)[layer]  # [1, L, G]
            p = pairs[layer, idx]
            moved = np.maximum(f * mean + math.sqrt(f) * (p - mean), 0.0)
            t = t + slope[layer, idx] * (moved - p)
            dr = dr * f
        return t, dr

    def draw_stats(self, n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`draw` reduced to what a step needs, the same draws (the same ``rng`` calls, the same rows): per step and
        MoE layer the slowest GPU's seconds [k, L], per step and GPU its seconds summed over layers [k, G], and the
        dropped pairs [k].

        A pair count drawn again from a live bank (a decode run's, whose count repeats) uses the bank moved to
        ``n`` once, [D, rows, G], with each row's slowest GPU, so a step costs two gathers (at most `MAX_MOVED` such
        tables are kept); else (a mixed step's count, one step at a time) the drawn rows are moved as in `draw`."""
        nb, bank, live = self._rows_for(n, k)
        pairs, te, slope, dropped = bank
        d, rows, g = te.shape
        idx = rng.integers(0, rows, size=(k, len(self.layer_of)))
        key = (nb, n)
        hit = self._moved.get(key)
        if hit is None and live and key in self._seen and (nb == n or k > 1):  # a grid point's: for runs only
            if len(self._moved) >= self.MAX_MOVED:
                self._moved.clear()
            t, dr = te, dropped
            if nb != n:
                f = n / nb
                mean = pairs.mean(axis=1, keepdims=True)  # [D, 1, G]
                moved = np.maximum(f * mean + math.sqrt(f) * (pairs - mean), 0.0)
                t, dr = te + slope * (moved - pairs), dropped * f
            hit = self._moved[key] = (t.reshape(d * rows, g), t.max(axis=2).reshape(-1), dr.reshape(-1))
        if live:
            self._seen.add(key)
        if hit is not None:
            flat = idx + (self.layer_of * rows)[None, :]  # [k, L] rows of the [D x rows] table
            tab, top, drop = hit
            t_sum = np.take(tab, flat, axis=0).sum(axis=1)  # [k, G]
            return np.take(top, flat), t_sum, np.take(drop, flat).sum(axis=1)
        t, dr = self._take(n, nb, bank, idx)
        return t.max(axis=2), t.sum(axis=1), dr

    def draw_pairs(self, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
        """Like `draw`, but each GPU's pairs [k, L, G] (moved to ``n`` for a grid point)."""
        nb = self.grid(n)
        pairs = self.samples(nb)[0]
        idx = rng.integers(0, len(pairs[0]), size=(k, len(self.layer_of)))
        p = pairs[self.layer_of[None, :], idx]
        if nb != n:
            f, mean = n / nb, pairs.mean(axis=1)[self.layer_of[None, :]]
            p = np.maximum(f * mean + math.sqrt(f) * (p - mean), 0.0)
        return p


def expert_op(template: Op, pairs: float, active: float, tokens: float | None = None) -> Op:
    """The routed-experts op the discrete-event step times for one GPU: ``pairs`` (token, expert) pairs over
    ``active`` experts in a step of ``tokens`` tokens N.

    ``template``: the layer's balanced `model.ops.experts_op` (its widths, bytes per weight and activation, top-k,
    experts, EP). FLOP and bytes come from the pairs and active experts alone (6 x pairs x hidden x width FLOP,
    each active expert's weights read once); the shape carries the step's real N, the expert-parallel group's
    tokens, whose top-k ids every rank's fused-MoE kernel reads (what a calibrated fit reads as its routed-ids
    feature, `profiling.opshapes.features`), the mean pairs per GPU ``N x top_k / ep`` and ``imbalance`` = pairs
    over that mean: a GPU above the mean is skew at that N, not a bigger batch. ``tokens`` None: ``pairs x ep /
    top_k``, the N at which this GPU has the mean load (exact on one GPU without drops).
    """
    s = template.shape
    h, w, wb, ab = s["hidden"], s["inter"], s["w_bytes"], s["a_bytes"]
    n = pairs * s["ep"] / s["top_k"] if tokens is None else float(tokens)
    mean = n * s["top_k"] / s["ep"]
    return replace(
        template,
        # the launches follow the pairs (vLLM's alignment takes two kernels from 1,024 pairs): the template's,
        # built at one token, would no longer match the op's kernels, and the achievable model would time the
        # op as one kernel at the peak instead of its grouped GEMMs' tiles
        kernels=fused_moe_kernels(pairs, s["experts"], reduce=s["ep"] == 1),
        flops=6.0 * pairs * h * w,
        weight_bytes=active * 3.0 * h * w * wb,
        act_bytes=(2.0 * pairs * h + 4.0 * pairs * w) * ab,
        shape=s
        | {
            "tokens": n,
            "pairs": float(pairs),
            "mean_pairs": mean,
            "active_experts": float(active),
            "imbalance": pairs / mean,
        },
    )


class StepTimer:
    """Step times of one replica (see the module docstring).

    Args:
        model, layout, cluster, precision: the replica.
        cost_model: None: the roofline.
        loads: expert load shares [moe_layers, E] (None: uniform).
        phys_to_log: placement [moe_layers, S] (None: E slots in blocks of E/ep).
        capacity_factor: None: dropless.
        overlap: ``none`` or ``two_batch``.
        offload: None: every expert resident.
        seed: the routing draws' seed.
        profile: the engine's host costs (`sim.serving.host.engine_profile`); None: ``ideal`` (no host time).
        share: routing banks, grouped-GEMM tables and step-cost memo shared with earlier timers built with the
            same arguments (`TimerShare`; None: this timer's own).
    """

    def __init__(
        self,
        model: ModelSpec,
        layout: Layout,
        cluster: ClusterSpec,
        precision: Precision,
        cost_model: CostModel | None = None,
        loads: np.ndarray | None = None,
        phys_to_log: np.ndarray | None = None,
        capacity_factor: float | None = None,
        overlap: str = "none",
        offload: Offload | None = None,
        seed: int = 0,
        max_pairs: int = 1 << 16,
        profile: EngineProfile | None = None,
        share: TimerShare | None = None,
    ) -> None:
        self.model, self.layout, self.cluster, self.precision = model, layout, cluster, precision
        self.share = share
        self.profile = profile
        #: the sampler's rule (`model.ops.SAMPLING`): the engine's for this model (`host.sampling_rule`)
        self.sampling = sampling_rule(profile, model.name)
        self.cost_model = cost_model or RooflineCostModel()
        self.loads, self.phys = loads, phys_to_log
        self.capacity_factor, self.overlap, self.offload = capacity_factor, overlap, offload
        self.rng = np.random.default_rng(seed)
        self._seed = seed
        self._bank: RoutingBank | None = None
        # the shared memo only where every entry is keyed by its exact arguments: without `_fast_ok` the
        # discrete-event step's entries are buckets filled by the first batch that fell in them (order-dependent)
        self._memo: dict[tuple, Any] = share.memo if share is not None and self._fast_ok() else {}
        self.moe = model.moe if model.is_moe else None
        self.n_moe = model.num_moe_layers if self.moe else 0
        self.n_layers = model.num_layers
        # `_fast_parts`: the layer sets whose attention ops each step builds (the replica's and one device's)
        self._gemm_dtype = precision.gemm_compute_dtype(cluster.gpu.peak_flops)
        self._one = make_cluster(cluster.gpu, gpus_per_node=1, nodes=1, name="one device")
        self._att_sets = [g for stage in layout.stage_layers(model) for g in layer_sets(model, stage)]
        self._util_sets = [g for stage in Layout().stage_layers(model) for g in layer_sets(model, stage)]
        if self.moe is None:
            return
        moe, ep = self.moe, layout.ep
        n_exp, k = moe.num_experts, moe.top_k
        phys = np.asarray(phys_to_log) if phys_to_log is not None else default_placement(n_exp)
        phys = np.broadcast_to(phys, (self.n_moe, phys.shape[-1]))
        shares = np.full((self.n_moe, n_exp), 1.0 / n_exp) if loads is None else np.asarray(loads, float)
        pi = inclusion_probs(np.broadcast_to(shares, (self.n_moe, n_exp)), k)
        # each slot's share of its expert's pairs: an even split, or the engine's replica rule (`Layout.replica_choice`)
        shares = [replica_shares(layout, phys[i], n_exp, cluster.gpus_per_node) for i in range(self.n_moe)]
        self.slot_p = np.stack([slot_inclusion(pi[i], phys[i], shares[i]) for i in range(self.n_moe)]) / k  # [L, S]
        self.slot_p /= self.slot_p.sum(axis=1, keepdims=True)
        self.replicas = np.stack([np.bincount(phys[i], minlength=n_exp)[phys[i]] for i in range(self.n_moe)])
        self.phys_slots = np.ascontiguousarray(phys)  # [L, S] the logical expert of each slot
        self.slots = phys.shape[1]
        self.per_gpu = self.slots // ep
        width = moe.intermediate_size // layout.moe_tp
        gemm_dtype = precision.gemm_compute_dtype(cluster.gpu.peak_flops)
        self._template = experts_op(1, model.hidden_size, width, k, n_exp, ep, precision, gemm_dtype, balanced=True)
        self._table_pairs = np.unique(
            np.concatenate([np.arange(0, 33), np.round(32 * 2 ** (np.arange(1, 160) / 8.0))]).astype(np.int64)
        )
        self._table_pairs = self._table_pairs[self._table_pairs <= max(max_pairs, 64)]
        a = self.per_gpu
        self._table_active = np.unique(
            np.arange(0, a + 1) if a <= 32 else [*np.round(np.geomspace(1, a, 33)).astype(np.int64).tolist(), 0]
        )
        # the table's N axis (`expert_times`): where N is not a function of the pairs (expert parallelism, or drops)
        # and the cost model may read it (the roofline prices FLOP and bytes only, never the shape)
        self._by_tokens = type(self.cost_model) is not RooflineCostModel and (ep > 1 or capacity_factor is not None)
        # a GPU's share of a step's pairs, lowest and highest over layers and GPUs (`_slice`'s band of pairs)
        gpu_share = self.slot_p.reshape(self.n_moe, ep, self.per_gpu).sum(axis=2)
        self._share = (float(gpu_share.min()) if capacity_factor is None else 0.0, float(gpu_share.max()))
        self._tables: dict[int | None, tuple[np.ndarray, np.ndarray]] = share.tables if share is not None else {}
        self._blend: tuple[float, tuple[np.ndarray, np.ndarray]] | None = None
        self._caches = [OrderedDict() for _ in range(ep)] if offload else []

    # ---- op-level pieces -------------------------------------------------------------------------
    def _expert_time(self, pairs: int, active: int, tokens: float | None = None) -> float:
        """Grouped-GEMM time of one MoE layer on one GPU with ``pairs`` routed pairs over ``active`` experts in a
        step of ``tokens`` tokens (`expert_op`), s."""
        if pairs <= 0:
            return 0.0
        op = expert_op(self._template, pairs, max(1, min(active, pairs)), tokens)
        return self.cost_model.op_time(op, self.cluster).seconds

    def _slice(self, octave: float | None) -> tuple[np.ndarray, np.ndarray]:
        """The table at N = 2^octave tokens (None: N = ``pairs x ep / top_k``, `_expert_time`): its pair counts [P]
        and grouped-GEMM seconds [active experts A, P], built on first use (the analytical step needs none).

        An octave's slice serves steps of 2^(octave-1) to 2^(octave+1) tokens, so its pairs span only what a GPU
        gets in them: n = N x top_k pairs times the lowest and highest GPU share of the routing (`_share`), 25%
        and six binomial standard deviations wider (no capacity factor: pairs are a multinomial's; with one the
        band starts at 0), and 0 pairs (0 s: below the band the time is linear in the pairs). A large step's slice
        then holds a few octaves of pairs, not all of them."""
        hit = self._tables.get(octave)
        if hit is None:
            tp = self._table_pairs
            if octave is not None:
                k = self.moe.top_k if self.moe else 1
                lo_n, hi_n = 2.0 ** (octave - 1) * k * self._share[0], 2.0 ** (octave + 1) * k * self._share[1]
                lo, hi = 0.8 * lo_n - 6.0 * math.sqrt(lo_n) - 16.0, 1.25 * hi_n + 6.0 * math.sqrt(hi_n) + 16.0
                i = max(int(np.searchsorted(tp, lo, side="right")) - 1, 1)
                tp = np.concatenate([tp[:1], tp[i : max(int(np.searchsorted(tp, hi, side="left")) + 1, i + 1)]])
            n = None if octave is None else 2.0**octave
            tab = np.array([[self._expert_time(int(p), int(x), n) for p in tp] for x in self._table_active])
            hit = self._tables[octave] = (tp, tab)
        return hit

    def expert_times(self, pairs: np.ndarray, active: np.ndarray, n_pairs: float) -> np.ndarray:
        """Vectorised grouped-GEMM time per (pairs, active experts) in a step of ``n_pairs`` routed pairs per MoE
        layer (N x top_k, N the step's tokens), s: bilinear in the table of pairs and active experts.

        With `_by_tokens` the table has an N axis too, one slice per octave of N (`_slice`), and the time is linear
        in log2 N between the two octaves around the step's N (the calibrated fit reads N as log2 of the routed
        ids). Measured against the exact op time (H100 calibration, Qwen3-30B-A3B at EP 8, 1,489 bank draws of N = 2
        to 8,192): mean 0.06%, P99 0.37% where the fit answers alike at N and both octaves; where it switches
        between its measured time and the roofline ("no measured shape near it") inside the octave (98 draws, all
        at N <= 16), the blend lay between the two, so steps of fewer than 16 tokens get a slice at their own N
        (exact, no blend). Without `_by_tokens` the op's N is the pairs' (`_expert_time`
        with None: the roofline reads no shape; one GPU without drops has all N x top_k pairs)."""
        p = np.asarray(pairs, float)
        a = np.asarray(active, float)
        return self._interp(p, a, *self._at_tokens(n_pairs))

    def _at_tokens(self, n_pairs: float) -> tuple[np.ndarray, np.ndarray]:
        """The table [A, P] at a step of ``n_pairs`` routed pairs (`expert_times`): a slice, or the two octaves around
        its N blended on the union of their pair counts (both piecewise linear there, so one lookup in the blend
        equals the blend of two lookups); the last one is kept (the bank asks twice per pair count)."""
        if not self._by_tokens:
            return self._slice(None)
        assert self.moe is not None
        n_tok = max(n_pairs / self.moe.top_k, 1.0)
        if n_tok < 16.0 and abs(n_tok - round(n_tok)) < 1e-9:  # small steps: the fit may switch regime in an octave
            return self._slice(math.log2(round(n_tok)))
        x = math.log2(n_tok)
        lo = math.floor(x)
        f = x - lo
        if f < 1e-12:
            return self._slice(lo)
        if self._blend is not None and self._blend[0] == x:
            return self._blend[1]
        (t0, b0), (t1, b1) = self._slice(lo), self._slice(lo + 1)
        tp = np.union1d(t0, t1)
        rows = np.repeat(self._table_active.astype(float), len(tp))
        cols = np.tile(tp.astype(float), len(self._table_active))
        v0 = self._far(cols, rows, t0, b0).reshape(len(self._table_active), -1)
        v1 = self._far(cols, rows, t1, b1).reshape(len(self._table_active), -1)
        hit = (tp, v0 + f * (v1 - v0))
        self._blend = (x, hit)
        return hit

    def _interp(self, p: np.ndarray, a: np.ndarray, tp: np.ndarray, tab: np.ndarray) -> np.ndarray:
        """Bilinear in (pairs ``tp``, active experts) of ``tab`` [A, P]; outside its pairs linear in them."""
        if self.per_gpu == 1 and p.max(initial=0) <= tp[-1]:  # one expert per GPU: active = pairs > 0
            return np.interp(p, tp, tab[-1], right=np.nan)
        return self._far(p, a, tp, tab)

    def _far(self, p: np.ndarray, a: np.ndarray, tp: np.ndarray, tab: np.ndarray) -> np.ndarray:
        ta = self._table_active
        top = tp[-1]
        scale = np.maximum(p / top, 1.0)  # beyond the table: linear in pairs (compute-bound there)
        p = np.minimum(p, top)
        ip = np.minimum(np.searchsorted(tp, p, side="right") - 1, len(tp) - 2)
        fp = (p - tp[ip]) / (tp[ip + 1] - tp[ip])
        if len(ta) > 1:
            ia = np.minimum(np.searchsorted(ta, a, side="right") - 1, len(ta) - 2)
            fa = np.minimum((a - ta[ia]) / (ta[ia + 1] - ta[ia]), 1.0)
            lo = tab[ia, ip] + (tab[ia, ip + 1] - tab[ia, ip]) * fp
            hi = tab[ia + 1, ip] + (tab[ia + 1, ip + 1] - tab[ia + 1, ip]) * fp
            out = lo + (hi - lo) * fa
        else:
            out = tab[0, ip] + (tab[0, ip + 1] - tab[0, ip]) * fp
        return out * scale * (p > 0)

    def estimate(self, batch: Batch, per_layer: bool = True) -> StepEstimate:
        """The analytical estimate of ``batch`` (expected busiest GPU).

        ``per_layer=False`` uses the layer-averaged loads and the first
        layer's placement (one op per layer set instead of one per layer):
        the discrete-event step takes only its non-expert ops from it, and
        draws the experts' loads itself.
        """
        loads, phys = self.loads, self.phys
        if not per_layer:
            loads = None if loads is None else np.asarray(loads).mean(axis=0) if np.ndim(loads) == 2 else loads
            phys = None if phys is None else np.asarray(phys)[0] if np.ndim(phys) == 2 else phys
        # MLA: the absorbed form whenever decoding sequences are in the batch (as SGLang runs them), plain for
        # pure prefill
        return estimate_step(
            self.model,
            batch,
            self.layout,
            self.cluster,
            self.precision,
            self.cost_model,
            loads=loads,
            phys_to_log=phys,
            mla_absorb=batch.phase != "prefill",
            sampling=self.sampling,
        )

    def _parts(self, new: np.ndarray, cached: np.ndarray, exact: bool = False) -> np.ndarray:
        """(other compute, a2a, other comm, expected experts, rho, bytes, flops, kernel launches, attention
        launches, eager forward's launch wait, piecewise forward's launch wait; of the other compute the MoE
        layers' ``prep``, ``core`` and ``shared`` op classes, of the a2a the dispatch, of each class its SM-capped
        DeepGEMM ops (`_sm_capped`), and 1 where the routed experts are SM-capped: `model.tbo`) of a batch,
        s / bytes / FLOP / counts [_N]. A launch wait is the forward's time beyond its GPU time when the CPU
        issues its launches one by one (`host.launch_pipeline`; computed only for an engine whose host does not
        overlap the GPU).

        Memoised: a pure-decode batch by (sequences, KV-token bucket of 1/8
        octave), linear in KV tokens between the bucket's edges (a decode
        step's attention is linear in the cache it reads); any other batch by
        (tokens, sequences, KV tokens, sum of squared new tokens), exact up to
        64 and then in buckets of 1/16 octave (tokens, sequences) and 1/8
        octave (attention work); the first batch seen in a bucket stands for it.
        With ``exact`` (the analytical step) every batch is keyed by itself, so
        the result does not depend on which batches were asked for before.
        """
        s = int(new.size)
        kv = float((new + cached).sum())
        if s and int(new.max()) == 1:
            if exact and int(cached.min()) == int(cached.max()):
                # the analytical step: every sequence at one context, computed at that point (one op-level
                # estimate instead of the four grid edges the simulator's interpolation needs)
                key = ("decode_exact", s, int(cached[0]))
                hit = self._memo.get(key)
                if hit is None:
                    hit = self._memo[key] = self._compute(new, cached, exact)
                return hit
            return self.decode_parts(s, np.array([kv]), exact)[0]
        if not exact and self._fast_ok():  # the discrete-event step: separable tables, no bucket
            return self._fast_parts(new, cached)
        if exact:  # the analytical step: keyed by the batch itself, so a result never depends on what ran before
            key = ("exact", new.astype(np.int64).tobytes(), np.asarray(cached, np.int64).tobytes())
        else:
            key = (exact, _q(int(new.sum()), 16), _q(s, 16), _q(kv, 8), _q(float((new.astype(float) ** 2).sum()), 8))
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._compute(new, cached, exact)
        return hit

    def decode_parts(self, seqs: int, kv: np.ndarray, exact: bool = False) -> np.ndarray:
        """Parts [k, _N] of pure-decode steps of ``seqs`` sequences reading ``kv`` [k] cache tokens.

        Bilinear between grid edges: sequences exact up to 32, then 16 per
        octave; KV tokens 4 per octave (a decode step's attention is linear in
        the cache it reads, and nothing else depends on it).
        """
        if seqs <= 32:
            s_lo, s_hi, fs = seqs, seqs, 0.0
        else:
            b = math.floor(16 * math.log2(seqs))
            s_lo, s_hi = int(2 ** (b / 16)), math.ceil(2 ** ((b + 1) / 16))
            s_lo, s_hi = max(s_lo, 32), max(s_hi, s_lo + 1)
            fs = (seqs - s_lo) / (s_hi - s_lo)
        kv = np.maximum(np.asarray(kv, float), 1.0)
        b = np.floor(4 * np.log2(kv)).astype(np.int64)
        lo, hi = 2.0 ** (b / 4), 2.0 ** ((b + 1) / 4)
        fk = ((kv - lo) / (hi - lo))[:, None]
        first, last = int(b.min()), int(b.max())
        # the sequence-blended edges from bucket ``first`` to ``last + 1`` [E, _N], memoised per (seqs, bucket)
        edges = np.array([self._seq_edge(seqs, s_lo, s_hi, fs, e, exact) for e in range(first, last + 2)])
        j = b - first
        return edges[j] * (1 - fk) + edges[j + 1] * fk

    def _seq_edge(self, seqs: int, s_lo: int, s_hi: int, fs: float, bucket: int, exact: bool) -> np.ndarray:
        """`decode_parts`' edge ``bucket`` at ``seqs`` sequences: the grid's edges at ``s_lo`` and ``s_hi`` blended
        by ``fs`` (memoised)."""
        key = ("decode_seqs", exact, seqs, bucket)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._edge(s_lo, bucket, exact) * (1 - fs) + self._edge(s_hi, bucket, exact) * fs
        return hit

    def _edge(self, seqs: int, bucket: int, exact: bool) -> np.ndarray:
        key = ("decode", exact, seqs, bucket)
        hit = self._memo.get(key)
        if hit is None:
            ctx = max(round(2 ** (bucket / 4) / seqs) - 1, 0)
            new, cached = np.ones(seqs, np.int64), np.full(seqs, ctx, np.int64)
            if not exact and self._fast_ok():  # the discrete-event step: separable tables
                hit = self._memo[key] = self._fast_parts(new, cached, "decode")
            else:
                hit = self._memo[key] = self._compute(new, cached, exact)
        return hit

    def _compute(self, new: np.ndarray, cached: np.ndarray, exact: bool) -> np.ndarray:
        phase = "decode" if int(new.max()) == 1 else "prefill" if int(cached.max()) == 0 else "mixed"
        batch = Batch(tuple(np.asarray(new, np.int64).tolist()), tuple(np.asarray(cached, np.int64).tolist()), phase)
        per_layer = self.moe is not None and (np.ndim(self.loads) == 2 or np.ndim(self.phys) == 2)
        est = self.estimate(batch, exact and not per_layer)
        parts = self._split(est)
        launches, attention = float(kernel_launches(est.ops)), float(attention_launches(est.ops))
        waits = self._launch_waits(est)
        a2a = self._layer_a2a(batch.tokens, phase)
        if (exact and per_layer) or a2a is not None:  # the expected busiest GPU of each layer, memoised by tokens
            parts[3] = self._expected_experts(batch.tokens)
        if a2a is not None:  # each layer's dispatch and combine from its own loads and placement
            parts[1], parts[7] = a2a
        rho = 1.0
        if self.overlap == "two_batch" and new.size >= 2:
            halves = (slice(0, None, 2), slice(1, None, 2))
            # a micro-batch of a prefill (decode, mixed) step is a prefill (decode, mixed) batch: MLA keeps its form
            # (plain for prefill, absorbed otherwise) and DeepEP its mode
            half = [
                self._split(self.estimate(Batch(tuple(new[h].tolist()), tuple(cached[h].tolist()), phase), exact))
                for h in halves
            ]
            if a2a is not None and not exact:  # per-layer routing: each half's experts as the whole's (`_sep_entry`)
                half = [[*x[:3], self._expected_experts(int(new[h].sum()))] for x, h in zip(half, halves, strict=True)]
            whole = parts[0] + parts[3]
            rho = sum(h[0] + h[3] for h in half) / whole if whole > 0 else 1.0
            launches, attention = 2 * launches, 2 * attention  # each micro-batch launches its own kernels
        use = utilisation_exact(self.model, batch, self.cluster.gpu, 1.0, 1, self.precision)
        return np.array([*parts[:4], rho, use.bytes, use.flops, launches, attention, *waits, *parts[4:]])

    # ---- separable step tables (the discrete-event step of a prefill or mixed batch) -------------------------
    def _fast_ok(self) -> bool:
        """Whether `_fast_parts` may stand for `_compute` in the discrete-event step: always, but for an engine
        whose host issues launches one by one while the GPU waits (its launch waits need the whole op list)."""
        prof = self.profile
        return prof is None or prof.ideal or bool(prof.overlap)

    def _fast_parts(
        self, new: np.ndarray, cached: np.ndarray, phase: str | None = None, halves: bool = True
    ) -> np.ndarray:
        """`_compute`'s parts [_N] of a batch from separable tables (the discrete-event step: prefill and mixed
        batches, and the grid edges of `decode_parts`).

        Every op of `model.ops.decompose` but the core attention depends on one number of the batch only: the
        busiest attention group's tokens (projections, norms, router, shared experts...), the whole batch's tokens
        (routed experts, all-to-all, DP gather/scatter) or the attention group's sequences (LM head, logits gather,
        sampler). Each of those three sums (seconds by class, launches; and S-MBU/S-MFU's bytes and FLOP from the
        one-device decomposition of `model.cap.utilisation_exact`) is a table over its number (`_sep`: computed
        once per entry from `decompose` on a one-sequence batch, exact up to 64 and linear between entries 1/32
        octave apart beyond; kernel launches exact), so only the attention ops (``attention``, MLA's
        ``kv_b_proj``), which depend on every sequence's context, are built (`model.attention_ops.attention_ops`)
        and timed per step.
        ``phase``: the batch's label (default: from its tokens), which sets MLA's form and the all-to-all mode;
        ``halves``: with two-batch overlap, compute rho from the two micro-batches (as `_compute` does).
        """
        if phase is None:
            phase = "decode" if int(new.max()) == 1 else "prefill" if int(cached.max()) == 0 else "mixed"
        lay = self.layout
        dp = max(lay.dp_attn, 1)
        total = int(new.sum())
        if dp > 1 and new.size > 1:  # `Batch.split` deals sequences round-robin; the busiest group attends
            groups = [(int(new[g::dp].sum()), len(new[g::dp]), g) for g in range(min(dp, new.size))]
            g = max(groups, key=lambda x: (x[0], x[1]))[2]
            a_new, a_cached = new[g::dp], cached[g::dp]
        else:
            a_new, a_cached = new, cached
        t_attn, rows = int(a_new.sum()), int(a_new.size)
        whole_t = self._sep("tokens", phase, total)
        out = self._sep("tokens", phase, t_attn)[0] + whole_t[1] + self._sep("rows", phase, rows)[0]
        util = whole_t[2] + self._sep("rows", phase, int(new.size))[2]
        # the attention ops, per step
        p = self.precision
        absorb = phase != "prefill"
        attn = Batch(tuple(a_new.tolist()), tuple(a_cached.tolist()), phase)
        whole = Batch(tuple(new.tolist()), tuple(cached.tolist()), phase)
        ctx = OpContext(self.model, whole, attn, lay, self.cluster, p, self._gemm_dtype)
        att = 0.0
        for g in self._att_sets:
            for op in attention_ops(ctx, g, absorb, core=True):
                if op.name in _ATT_OPS:
                    sec = self.cost_model.op_time(op, self.cluster).seconds * op.count
                    out[0] += sec
                    out[4] += op.kernels * op.count
                    c = _tbo_class(op)
                    if c is not None:
                        out[5 + c] += sec
                        if _sm_capped(op, p, self.cluster.gpu):
                            out[9 + c] += sec
                    if op.kind == "attention":
                        att += op.kernels * op.count
        one = OpContext(self.model, whole, whole, Layout(), self._one, p, self._gemm_dtype)
        for g in self._util_sets:
            for op in attention_ops(one, g, phase == "decode", core=True):  # `utilisation_exact`: absorbed: decode
                if op.name in _ATT_OPS:
                    util[0] += (op.weight_bytes + op.kv_bytes) * op.count
                    util[1] += op.flops * op.count
        launches, attention = out[4], att
        rho = 1.0
        if halves and self.overlap == "two_batch" and new.size >= 2:
            cut = (slice(0, None, 2), slice(1, None, 2))
            parts = [self._fast_parts(new[h], cached[h], phase, halves=False) for h in cut]  # the step's phase
            whole_s = out[0] + out[3]
            rho = sum(h[0] + h[3] for h in parts) / whole_s if whole_s > 0 else 1.0
            launches, attention = 2 * launches, 2 * attention
        return np.array([*out[:4], rho, util[0], util[1], launches, attention, 0.0, 0.0, *out[5:13]])

    def _sep(self, kind: str, phase: str, x: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The separable sums at ``x`` (`_fast_parts`), exact up to 64 and linear between entries 1/32 octave
        apart beyond: for ``kind`` ``tokens`` (the ops depending on the attention group's tokens, those depending
        on the whole batch's tokens, the one-device bytes and FLOP of both), for ``rows`` (the ops depending on
        the attention group's sequences, unused, their one-device bytes and FLOP). Vectors: (other compute s,
        all-to-all s, other comm s, routed experts s, kernel launches, of the other compute the MoE layers'
        ``prep``, ``core`` and ``shared`` s, of the all-to-all the dispatch s, of each class the SM-capped
        DeepGEMM ops s, 1 where the routed experts are SM-capped) and (bytes, FLOP). Memoised by (kind, phase, x):
        the callers never write into the vectors."""
        if x <= 64:
            return self._sep_entry(kind, phase, x)
        key = ("sep", kind, phase, x)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._sep_between(kind, phase, x)
        return hit

    def _sep_between(self, kind: str, phase: str, x: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`_sep` beyond 64: linear between the entries 1/32 octave apart around ``x``."""
        j = 32 * math.log2(x / 64)
        lo, hi = round(64 * 2 ** (math.floor(j) / 32)), round(64 * 2 ** ((math.floor(j) + 1) / 32))
        if hi <= lo or x <= lo:
            return self._sep_entry(kind, phase, lo)
        f = (x - lo) / (hi - lo)
        a, b = self._sep_entry(kind, phase, lo), self._sep_entry(kind, phase, hi)
        out = [(1 - f) * u + f * v for u, v in zip(a, b, strict=True)]
        for i in (0, 1):  # kernel launches are counts, monotone in x: the entries' when they agree, else x's own
            if a[i][4] != b[i][4]:
                out[i][4] = self._sep_entry(kind, phase, x)[i][4]
        return tuple(out)  # type: ignore[return-value]

    def _sep_entry(self, kind: str, phase: str, x: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One `_sep` entry, computed from `decompose` once (memoised)."""
        key = ("table", kind, phase, x)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        dp = max(self.layout.dp_attn, 1)
        if kind == "tokens":
            batch, one = Batch((x,), (0,), phase), Batch((x,), (0,), phase)
        else:  # every attention group gets x sequences of one token
            batch, one = Batch((1,) * (x * dp), (0,) * (x * dp), phase), Batch((1,) * x, (0,) * x, phase)
        est = self.estimate(batch, per_layer=False)
        first, second = np.zeros(13), np.zeros(13)
        a2a = self._layer_a2a(x, phase) if kind == "tokens" else None
        # per-layer routing or placement: each layer's expected busiest GPU (as `_compute`), not the layer-averaged
        # loads on the first layer's placement (two-batch overlap's rho reads it)
        experts = self._expected_experts(x, *_TABLE_EXPERT_GRID) if a2a is not None else None
        for op, tm in zip(est.ops, est.times, strict=True):
            if op.name in _ATT_OPS or (kind == "tokens") == (op.name in _ROW_OPS):
                continue
            vec = first if kind == "rows" or op.name not in _T_ALL_OPS else second
            sec = tm.seconds * op.count
            if a2a is not None and op.name in _EP_A2A:
                sec = 0.0
            elif experts is not None and op.name == "routed_experts":  # every layer set's in the first one's place
                sec, experts = experts, 0.0
            cls = 3 if op.name == "routed_experts" else 1 if op.kind == "all_to_all" else 2 if op.kind in _COMM else 0
            vec[cls] += sec
            vec[4] += op.kernels * op.count
            if op.name == "ep_dispatch":
                vec[8] += sec
            elif op.name == "routed_experts":
                vec[12] = float(_sm_capped(op, self.precision, self.cluster.gpu))
            elif cls == 0 and (c := _tbo_class(op)) is not None:
                vec[5 + c] += sec
                if _sm_capped(op, self.precision, self.cluster.gpu):
                    vec[9 + c] += sec
        if a2a is not None:
            second[1] += a2a[0]
            second[8] += a2a[1]
        use = np.zeros(2)
        cluster = self._one
        for op in decompose(self.model, one, Layout(), cluster, self.precision):
            if op.name in _ATT_OPS or (kind == "tokens") == (op.name in _ROW_OPS):
                continue
            use += ((op.weight_bytes + op.kv_bytes) * op.count, op.flops * op.count)
        hit = self._memo[key] = (first, second, use)
        return hit

    def _layer_a2a(self, tokens: int, phase: str) -> tuple[float, float] | None:
        """Expert-parallel (dispatch + combine, dispatch) of a step of ``tokens`` tokens in ``phase``, summed over
        the MoE layers with each layer's bytes from its own loads and placement, s; None where routing and
        placement are the same for every layer (the layer-set estimate is then exact) or there is no expert
        parallelism.

        The layer-set estimate (`estimate` with ``per_layer=False``) prices every layer's all-to-all with the
        layer-averaged loads on the first layer's placement, which matches neither (a plan made for layer 0's loads,
        read against the mean loads, looks unbalanced: DeepSeek-V3 EP32 with EPLB's plan, decode 11.0 ms per step
        against 8.7 ms summed layer by layer). Each layer's ops come from one per-layer estimate per phase at
        `_A2A_REF_TOKENS` tokens; bytes are linear in the tokens (`model.a2a.ep_a2a_ops`: tokens x fan-out x token
        bytes), so they are scaled to ``tokens`` and timed by the cost model as the estimate times them."""
        if self.moe is None or self.layout.ep <= 1 or tokens <= 0:
            return None
        if np.ndim(self.loads) != 2 and np.ndim(self.phys) != 2:
            return None
        hit = self._memo.get(("a2a_total", phase, tokens))  # a function of (phase, tokens): memoised
        if hit is not None:
            return hit
        key = ("a2a_layers", phase)
        ops = self._memo.get(key)
        if ops is None:
            est = self.estimate(Batch((_A2A_REF_TOKENS,), (0,), phase), per_layer=True)
            ops = self._memo[key] = [op for op in est.ops if op.name in _EP_A2A]
        f = tokens / _A2A_REF_TOKENS
        total = dispatch = 0.0
        for op in ops:
            shape = {**op.shape, "tokens": op.shape["tokens"] * f, "bytes": op.shape["bytes"] * f}
            scaled = _with_fields(op, intra_bytes=op.intra_bytes * f, inter_bytes=op.inter_bytes * f, shape=shape)
            sec = self.cost_model.op_time(scaled, self.cluster).seconds * op.count
            total += sec
            if op.name == "ep_dispatch":
                dispatch += sec
        hit = self._memo[("a2a_total", phase, tokens)] = (total, dispatch)
        return hit

    def _launch_waits(self, est: StepEstimate) -> tuple[float, float]:
        """(eager, piecewise) forward seconds beyond the GPU time of ``est``'s ops, issued by one CPU thread."""
        prof = self.profile
        if prof is None or prof.ideal or prof.overlap:
            return 0.0, 0.0
        sec = [tm.seconds for tm in est.times]
        gpu = sum(s * op.count for s, op in zip(sec, est.ops, strict=True))
        launch, replay = prof.host["launch_s"], prof.host["graph_replay_s"]
        eager = launch_pipeline(op_items(est.ops, sec, launch)) - gpu
        piecewise = launch_pipeline(piecewise_items(est.ops, sec, launch, replay)) - gpu
        return max(eager, 0.0), max(piecewise, 0.0)

    def _expected_experts(self, tokens: int, per_octave: int = 32, exact_below: int = 64) -> float:
        """Sum over MoE layers of the routed experts' time on the expected busiest GPU, s.

        Exact up to ``exact_below`` tokens, then linear in tokens between fixed grid points ``per_octave`` per
        octave apart (computed once each), so the answer never depends on which token counts were asked for
        before. Each grid point costs one busiest-GPU expectation per MoE layer (DeepSeek-V3: 58 x ~3 ms), so
        the step-cost tables, which meet every token count of a run, ask for a coarser grid (`_sep_entry`);
        linear interpolation is exact wherever the expert time is affine in tokens and errs only near a kink.
        """
        if tokens <= exact_below:
            return self._experts_at(tokens)
        n = per_octave
        x = n * math.log2(tokens / exact_below)
        t_lo = round(exact_below * 2 ** (math.floor(x) / n))
        t_hi = round(exact_below * 2 ** ((math.floor(x) + 1) / n))
        if t_hi <= t_lo or tokens <= t_lo:
            return self._experts_at(t_lo)
        f = (tokens - t_lo) / (t_hi - t_lo)
        return (1 - f) * self._experts_at(t_lo) + f * self._experts_at(t_hi)

    def _experts_at(self, tokens: int) -> float:
        """`_expected_experts` at exactly ``tokens`` (memoised), s."""
        key = ("experts", tokens)
        hit = self._memo.get(key)
        if hit is None:
            moe, lay = self.moe, self.layout
            assert moe is not None
            gemm_dtype = self.precision.gemm_compute_dtype(self.cluster.gpu.peak_flops)
            loads = np.broadcast_to(self.loads, (self.n_moe, moe.num_experts)) if self.loads is not None else None
            phys = np.broadcast_to(self.phys, (self.n_moe, self.slots)) if self.phys is not None else None
            hit = 0.0
            # layers with the same loads and placement (all of them without per-layer routing) are timed once; the
            # sum still adds each layer's time in turn
            seen: dict[tuple[bytes | None, bytes | None], float] = {}
            for i in range(self.n_moe):
                row = (None if loads is None else loads[i].tobytes(), None if phys is None else phys[i].tobytes())
                sec = seen.get(row)
                if sec is None:
                    op = experts_op(
                        tokens,
                        self.model.hidden_size,
                        moe.intermediate_size // lay.moe_tp,
                        moe.top_k,
                        moe.num_experts,
                        lay.ep,
                        self.precision,
                        gemm_dtype,
                        moe_tp=lay.moe_tp,
                        loads=None if loads is None else loads[i],
                        phys_to_log=None if phys is None else phys[i],
                    )
                    sec = seen[row] = self.cost_model.op_time(op, self.cluster).seconds
                hit += sec
            self._memo[key] = hit
        return hit

    def _split(self, est: StepEstimate) -> list[float]:
        """(other compute, all-to-all, other comm, routed experts; of the other compute the MoE layers' ``prep``,
        ``core`` and ``shared`` classes (`_tbo_class`); of the all-to-all the dispatch; of each class the SM-capped
        DeepGEMM ops (`_sm_capped`); 1 where the routed experts are SM-capped, else 0) of an estimate, s."""
        out = [0.0] * 12
        gpu = self.cluster.gpu
        for op, tm in zip(est.ops, est.times, strict=True):
            sec = tm.seconds * op.count
            if op.name == "routed_experts":
                out[3] += sec
                out[11] = float(_sm_capped(op, self.precision, gpu))
            elif op.kind == "all_to_all":
                out[1] += sec
                if op.name == "ep_dispatch":
                    out[7] += sec
            elif op.kind in _COMM:
                out[2] += sec
            else:
                out[0] += sec
                c = _tbo_class(op)
                if c is not None:
                    out[4 + c] += sec
                    if _sm_capped(op, self.precision, gpu):
                        out[8 + c] += sec
        return out

    # ---- steps -----------------------------------------------------------------------------------
    #: Memo entries holding GPU-side step parts only (kernels, collectives, launch counts): valid for any host-cost
    #: values except launch_s / graph_replay_s, which the launch waits of `_parts` depend on.
    GPU_MEMO_KEYS = frozenset({"decode_exact", "exact", "decode", "padded", "experts"})

    def gpu_results(self) -> dict[tuple, Any]:
        """The memoised GPU-side results (`GPU_MEMO_KEYS`), for another timer of the same replica whose engine
        differs only in host costs other than launch_s / graph_replay_s (`reuse_gpu_results`)."""
        return {k: v for k, v in self._memo.items() if isinstance(k, tuple) and k[0] in self.GPU_MEMO_KEYS}

    def reuse_gpu_results(self, results: dict[tuple, Any]) -> None:
        """Take ``results`` (`gpu_results` of a timer of the same replica) instead of recomputing them."""
        self._memo.update(results)

    def expected(self, new: np.ndarray, cached: np.ndarray, separable: bool = False) -> StepCost:
        """The analytical step (expected busiest GPU, no sampling, no cache misses), with its host time.

        ``separable``: a prefill or mixed batch's parts from the discrete-event step's separable tables
        (`_fast_parts`, where `_fast_ok`) instead of its own decomposition: the same step within the tables'
        interpolation, at a fraction of the cost for batches of many prompt chunks (the analytical engine's
        steps of data-parallel attention, `sim.serving.analytical._spread_step`)."""
        new, cached = np.asarray(new), np.asarray(cached)
        shape = _shape(new, cached)
        padded = self._padded(shape)
        rank = busiest_rank_tokens(new, self.layout.dp_attn)
        if padded > new.size:  # a decode graph replay: the GPU runs the capture size, dummies hold no cache
            extra = padded - new.size
            real_new, real_cached = new, cached
            new = np.concatenate([new, np.ones(extra, new.dtype)])
            cached = np.concatenate([cached, np.zeros(extra, cached.dtype)])
            key = ("padded", np.asarray(cached, np.int64).tobytes())  # exact, as the unpadded analytical step
            hit = self._memo.get(key)
            if hit is None:
                hit = self._memo[key] = self._compute(new, cached, True)
            parts = hit[None, :]
            if self.moe is not None and not self._routes_padding():
                # the padded rows are masked out of the top-k: experts and all-to-all carry the real tokens only
                real = self._parts(real_new, real_cached, exact=True)
                parts = parts.copy()
                parts[0, 1], parts[0, 3], parts[0, 14] = real[1], real[3], real[14]
        elif separable and int(new.max()) > 1 and self._fast_ok():
            parts = self._fast_parts(new, cached)[None, :]
        else:
            parts = self._parts(new, cached, exact=True)[None, :]
        n = max(self.n_moe, 1)
        layers = np.full((1, n), parts[0, 3] / n)
        return self._combine(
            parts,
            layers,
            np.zeros(1),
            np.zeros(1),
            np.zeros((1, 1)),
            np.zeros((1, max(self.layout.ep, 1))),
            (*shape, padded, rank),
        ).cost(0)

    def _routes_padding(self) -> bool:
        """Whether a graph replay's padded rows are routed to experts (`EngineProfile.routes_padding`)."""
        return self.profile is None or self.profile.routes_padding

    def _padded(self, shape: tuple[int, int, str]) -> int:
        """Sequences the replica runs: the capture size of a decode graph replay, else the batch's sequences.

        With attention data-parallel over ``dp_attn`` ranks every rank replays the graph of the busiest rank's
        sequences (SGLang pads each DP rank to the largest rank's batch so that the ranks' collectives match;
        sequences are dealt round-robin, so that is ``ceil(seqs / dp_attn)``): ``dp_attn`` times its capture size.
        """
        seqs, _, phase = shape
        if self.profile is None or phase != "decode":
            return seqs
        dp = max(self.layout.dp_attn, 1)
        per_rank = self.profile.padded_batch(-(-seqs // dp))
        return dp * per_rank if per_rank else seqs

    def host_shape(self, seqs: int, tokens: int, rank_tokens: int | None = None) -> tuple[int, int]:
        """(sequences, tokens) one scheduler handles in a step of the replica's ``seqs`` and ``tokens``: with
        attention data-parallel over ``dp_attn`` ranks each rank runs its own scheduler, input preparation,
        sampler and launches on its own CPU process (SGLang's DP attention, vLLM's data-parallel engine cores),
        in parallel, so a step's host time is the busiest rank's: ``ceil(seqs / dp_attn)`` sequences (dealt
        round-robin) and ``rank_tokens`` tokens (`busiest_rank_tokens`; None: ``ceil(tokens / dp_attn)``); the
        replica's own without DP attention."""
        dp = max(self.layout.dp_attn, 1)
        if dp == 1:
            return seqs, tokens
        return -(-seqs // dp), (-(-tokens // dp) if rank_tokens is None else int(rank_tokens))

    def sample(self, new: np.ndarray, cached: np.ndarray) -> StepCost:
        """One discrete-event step: routing drawn for this step, stragglers, drops and expert fetches.

        `sample_block` of one step, combined in Python floats (`_combine_one`) where that is `_combine`'s
        arithmetic: without two-batch overlap, and with no host model, an ideal one or an overlapping scheduler."""
        args = self._block_args(np.asarray(new), np.asarray(cached)[None, :])
        prof = self.profile
        if self.overlap == "two_batch" or (prof is not None and not prof.ideal and not prof.overlap):
            return self._combine(*args).cost(0)
        return self._combine_one(*args)

    def sample_run(self, new: np.ndarray, cached: np.ndarray) -> list[StepCost]:
        """``k`` consecutive steps of the same sequences, new tokens [B], cached tokens [k, B]."""
        return self.sample_block(np.asarray(new), np.asarray(cached)).costs()

    def sample_block(self, new: np.ndarray, cached: np.ndarray) -> StepBlock:
        """`sample_run` in columnar form: ``k`` steps of the same sequences, new tokens [B], cached tokens [k, B].

        Each step gets its own routing draw (`_route`): per MoE layer a draw of each GPU's (pairs, active
        experts) from the layer's bank of exact routing samples (`RoutingBank`), so a run of steps costs a few
        array gathers and reductions, not a multinomial and a dozen reductions per step.
        """
        return self._combine(*self._block_args(new, cached))

    def _block_args(self, new: np.ndarray, cached: np.ndarray) -> tuple:
        """`sample_block`'s arguments of `_combine`: parts [k, _N], the slowest GPU's expert seconds per layer
        [k, L], stragglers [k], fetches [k], extras [k, 3 or 1], each GPU's wait [k, G] and the step's shape."""
        k = cached.shape[0]
        shape = _shape(new, cached[0])
        padded = self._padded(shape)
        step = (*shape, padded, busiest_rank_tokens(new, self.layout.dp_attn))
        if new.size and int(new.max()) == 1:
            # a graph replay runs ``padded`` sequences: the dummies hold one token of cache each
            parts = self.decode_parts(padded, (cached + 1).sum(axis=1) + (padded - new.size))
            if padded > new.size and self.moe is not None and not self._routes_padding():
                # masked out of the top-k: the all-to-all carries the real tokens only
                parts = parts.copy()
                real = self.decode_parts(int(new.size), (cached + 1).sum(axis=1))
                parts[:, 1], parts[:, 14] = real[:, 1], real[:, 14]
        else:
            parts = np.stack([self._parts(new, cached[j]) for j in range(k)])  # [k, _N]
        ep = max(self.layout.ep, 1)
        if self.moe is None:
            z = np.zeros(k)
            return parts, np.zeros((k, 1)), z, z, np.zeros((k, 1)), np.zeros((k, ep)), step
        # padded dummy tokens are routed too, unless the engine masks them out of the top-k
        tokens = int(new.sum()) + ((padded - int(new.size)) if self._routes_padding() else 0)
        slowest, straggler, wait, pairs_total, dropped, fetch = self._route(k, tokens * self.moe.top_k)
        extras = np.stack([pairs_total, dropped, fetch], axis=1)
        return parts, slowest, straggler, fetch, extras, wait, step

    def _combine_one(
        self,
        parts: np.ndarray,
        expert_layers: np.ndarray,
        straggler: np.ndarray,
        fetch: np.ndarray,
        extras: np.ndarray,
        wait: np.ndarray,
        step: tuple,
    ) -> StepCost:
        """``_combine(...).cost(0)`` of a one-step block in Python floats: the same operations in the same order
        (IEEE doubles either way, so the same values; `tests/test_step_share.py` compares them bit for bit), for a
        timer without two-batch overlap whose host is none, ideal or an overlapping scheduler (`sample`)."""
        other, a2a, comm, _, _, nbytes, flops = parts[0, :7].tolist()
        experts = float(expert_layers.sum(axis=1)[0])  # the same pairwise reduction as `_combine`'s
        strag, fet = float(straggler[0]), float(fetch[0])
        compute = other + experts - strag
        total = other + experts + a2a + comm + fet
        pairs, dropped = (float(extras[0, 0]), float(extras[0, 1])) if extras.shape[1] > 1 else (0.0, 0.0)
        padded = step[3]
        host: dict[str, Any] = _NO_HOST_COST
        prof = self.profile
        if prof is not None and not prof.ideal:  # `_host_block` -> `_host_overlap` on one row
            launches, att = round(float(parts[0, 7])), round(float(parts[0, 8]))
            host, total = self._host_one(total, step, launches, att)
        return StepCost(
            duration_s=float(total),
            compute_s=float(compute),
            comm_s=a2a + comm,
            straggler_s=strag,
            fetch_s=fet,
            pairs=int(pairs),
            dropped_pairs=int(dropped),
            bytes=nbytes,
            flops=flops,
            gpu_wait_s=wait[0],
            padded_batch=padded,
            **host,
        )

    def _route(
        self, k: int, n_pairs: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Routing of ``k`` steps of ``n_pairs`` (token, expert) pairs per MoE layer: (per-layer expert time of
        the slowest GPU [k, L] s, straggler [k] s, each GPU's wait [k, G] s, routed pairs [k], dropped pairs [k],
        expert fetches [k] s).

        Without offloading the draws come from `RoutingBank` (per layer, samples of each GPU's pairs and active
        experts, drawn once per pair count and reused); with offloading every step draws its own
        (`model.routing.draw_slot_counts`), since the expert cache needs which slots each step touched.
        """
        assert self.moe is not None
        pairs_total = np.full(k, float(n_pairs * self.n_moe))
        if self.offload is None:
            slowest, t_sum, dropped = self.bank.draw_stats(n_pairs, k, self.rng)  # [k, L], [k, G], [k]
            fetch = np.zeros(k)
        else:
            te, dropped, fetch = self._route_direct(k, n_pairs)
            slowest, t_sum = te.max(axis=2), te.sum(axis=1)
        # per step: sum over layers of (slowest - mean over GPUs); each GPU's wait summed over layers [k, G]
        top = slowest.sum(axis=1)
        straggler = top - t_sum.sum(axis=1) / t_sum.shape[1]
        wait = top[:, None] - t_sum
        return slowest, straggler, wait, pairs_total, dropped, fetch

    def _route_direct(self, k: int, n_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Routing of ``k`` steps drawn step by step (`model.routing.draw_slot_counts` per step and layer, the
        sampler `RoutingBank` reuses): per GPU expert times [k, L, G] s, dropped pairs [k], expert fetches [k] s
        (with offloading)."""
        assert self.moe is not None
        ep = max(self.layout.ep, 1)
        counts, hit = draw_slot_counts(self.rng, n_pairs, k, self.slot_p, self.phys_slots, self.moe.top_k)
        counts, hit = counts.transpose(1, 0, 2), hit.transpose(1, 0, 2)  # [k, L, S]
        dropped = np.zeros(k)
        if self.capacity_factor is not None:
            cap = np.ceil(self.capacity_factor * n_pairs / self.moe.num_experts / self.replicas)
            over = np.maximum(counts - cap, 0)
            dropped = over.sum(axis=(1, 2))
            counts = counts - over
        per = counts.reshape(k, self.n_moe, ep, self.per_gpu)
        touched = hit.reshape(k, self.n_moe, ep, self.per_gpu)
        te = self.expert_times(per.sum(axis=3), touched.sum(axis=3), n_pairs)  # [k, L, G]
        fetch = np.array([self._fetch(touched[j]) for j in range(k)]) if self.offload else np.zeros(k)
        return te, dropped, fetch

    @property
    def bank(self) -> RoutingBank:
        """The routing-sample bank of this replica's MoE layers (built on first use)."""
        if self._bank is None:
            assert self.moe is not None
            self._bank = RoutingBank(
                self.slot_p,
                self.expert_times,
                max(self.layout.ep, 1),
                self.replicas,
                self.moe.num_experts,
                self.capacity_factor,
                self._seed + 7919,
                self.share.banks if self.share is not None else None,
                self.phys_slots,
                self.moe.top_k,
            )
        return self._bank

    def overlap_terms(self, new: np.ndarray, cached: np.ndarray) -> dict[str, Any] | None:
        """How this timer's two-batch overlap prices one MoE layer of the batch (``new`` [s] tokens and ``cached``
        [s] context per sequence), as `_combine` does: ``strategy`` (a `model.tbo.STRATEGIES` key), one
        micro-batch's ``prep``, ``core`` and ``shared`` seconds per MoE layer (half the batch's, times its
        micro-batching inefficiency), their SM-capped parts ``capped_prep`` ... (s), ``experts_capped`` (bool) and
        ``slow`` (computation's slowdown under a transfer); None without two-batch overlap or MoE layers. The
        expert placement's objective prices a layer with them (`placement.layertime.Overlap`)."""
        if self.overlap != "two_batch" or not self.n_moe:
            return None
        new, cached = np.asarray(new, np.int64), np.asarray(cached, np.int64)
        parts = self._parts(new, cached, exact=True)
        phase = "decode" if int(new.max()) == 1 else "prefill" if int(cached.max()) == 0 else "mixed"
        backend = self.layout.a2a_backend
        slow = compute_slowdown(backend, a2a_mode(backend, phase), self.cluster.gpu.key)
        strategy = tbo.strategy_of(phase, None if self.profile is None else self.profile.kind)
        per = 0.5 * float(parts[4]) / self.n_moe
        cap = strategy == "extend" and slow > 1.0  # SGLang holds DeepGEMM to the SMs DeepEP leaves (`_combine`)
        out: dict[str, Any] = {"strategy": strategy, "slow": float(slow), "experts_capped": bool(cap and parts[18])}
        for j, name in enumerate(tbo.CLASSES[:3]):
            out[name] = per * float(parts[11 + j])
            out[f"capped_{name}"] = per * float(parts[15 + j]) if cap else 0.0
        return out

    def _combine(
        self,
        parts: np.ndarray,
        expert_layers: np.ndarray,
        straggler: np.ndarray,
        fetch: np.ndarray,
        extras: np.ndarray,
        wait: np.ndarray,
        step: tuple = (0, 0, "decode", 0),
    ) -> StepBlock:
        """Steps from their parts [k, _N], per-layer expert times [k, L], stragglers [k], fetches [k], and
        ``step`` = (sequences, tokens, phase, padded sequences[, the busiest DP rank's tokens]) for the host
        time."""
        other, a2a, comm, rho, nbytes, flops = (
            parts[:, 0],
            parts[:, 1],
            parts[:, 2],
            parts[:, 4],
            parts[:, 5],
            parts[:, 6],
        )
        experts = expert_layers.sum(axis=1)
        if self.overlap == "two_batch" and self.n_moe:
            # the MoE layers as SGLang interleaves two micro-batches (`model.tbo`): each micro-batch half the
            # step's work per layer (times rho, the micro-batching inefficiency), each transfer hidden only behind
            # the stages between its issue and its wait
            backend = self.layout.a2a_backend
            # DeepEP's normal kernels hold some SMs: computation overlapping them progresses 1/slow as fast
            slow = compute_slowdown(backend, a2a_mode(backend, step[2]), self.cluster.gpu.key)
            per = (0.5 * rho / self.n_moe)[:, None]
            classes = parts[:, 11:14]
            comp = {name: per * classes[:, j : j + 1] for j, name in enumerate(tbo.CLASSES[:3])}
            comp["experts"] = 0.5 * rho[:, None] * expert_layers
            # the engine's order: vLLM's dual-batch overlap, else SGLang's (DeepSeek's design)
            strategy = tbo.strategy_of(step[2], None if self.profile is None else self.profile.kind)
            capped = None
            if strategy == "extend" and slow > 1.0:  # SGLang holds DeepGEMM to the SMs DeepEP leaves
                capped = {name: per * parts[:, 15 + j : 16 + j] for j, name in enumerate(tbo.CLASSES[:3])}
                capped["experts"] = comp["experts"] * parts[:, 18:19]
            dispatch = parts[:, 14:15] / (2 * self.n_moe)
            combine = (a2a[:, None] - parts[:, 14:15]) / (2 * self.n_moe)
            moe_part = tbo.layers_time(strategy, comp, dispatch, combine, slow, capped)
            # the rest (dense layers, embedding, LM head, sampler; a MoE layer's ops in no class) hides nothing
            rest = rho * (other - classes.sum(axis=1))
            total = moe_part + rest + comm + fetch
            exposed = np.maximum(total - fetch - comm - rho * (other + experts), 0.0)
            compute = total - fetch - comm - exposed - straggler
            comm_total = comm + exposed
        else:
            compute = other + experts - straggler
            total = other + experts + a2a + comm + fetch
            comm_total = a2a + comm
        k = len(total)
        pairs = extras[:, 0] if extras.shape[1] > 1 else np.zeros(k)
        dropped = extras[:, 1] if extras.shape[1] > 1 else np.zeros(k)
        seqs, tokens, phase, padded = step[:4]
        zero = np.zeros(k)
        host = dict.fromkeys(_BLOCK_FIELDS[9:], zero)
        if self.profile is not None and not self.profile.ideal:
            rank = self.host_shape(seqs, tokens, step[4] if len(step) > 4 else None)  # one DP rank's scheduler
            host = self._host_block(total, *rank, phase, parts[:, 7:11])
            total = host.pop("duration_s")
        return StepBlock(
            duration_s=np.asarray(total, float),
            compute_s=np.asarray(compute, float),
            comm_s=np.asarray(comm_total, float),
            straggler_s=np.asarray(straggler, float),
            fetch_s=np.asarray(fetch, float),
            pairs=np.asarray(pairs, float),
            dropped_pairs=np.asarray(dropped, float),
            bytes=np.asarray(nbytes, float),
            flops=np.asarray(flops, float),
            gpu_wait_s=wait,
            padded_batch=padded,
            **host,
        )

    def _host_cost(self, seqs: int, tokens: int, mode: str, launches: int, att: int) -> Any:
        """`host.host_cost` of one scheduler's step shape (memoised by it): ``seqs`` sequences, ``tokens`` tokens,
        graph ``mode``, ``launches`` kernel and ``att`` attention launches."""
        key = ("host", seqs, tokens, mode, launches, att)
        hc = self._memo.get(key)
        if hc is None:
            prof = self.profile
            assert prof is not None
            hc = self._memo[key] = host_cost(prof, seqs, tokens, launches, mode, att, self.n_layers + 1)
        return hc

    def _host_one(self, gpu_s: float, step: tuple, launches: int, att: int) -> tuple[dict[str, Any], float]:
        """`_host_block` -> `_host_overlap` of one step of GPU time ``gpu_s`` (s) in Python floats, for an
        overlapping scheduler: `StepCost`'s host fields and the step's new duration (s). ``step``: (sequences,
        tokens, phase, padded[, the busiest DP rank's tokens]); ``launches``, ``att``: its kernel and attention
        launches."""
        prof = self.profile
        assert prof is not None
        seqs, tokens = self.host_shape(step[0], step[1], step[4] if len(step) > 4 else None)
        hc = self._host_cost(seqs, tokens, graph_mode(prof, step[2], seqs, tokens), launches, att)
        cpu = (float(hc.scheduler_s), float(hc.prepare_s), float(hc.sampling_s), float(hc.launch_s))
        h_total = sum(cpu)
        # `host.exposed`: the host time beyond the GPU time, shared in proportion
        f = max(h_total - gpu_s, 0.0) / h_total if h_total > 0.0 else 0.0
        ex = [c * f for c in cpu]
        host = {
            "scheduler_s": ex[0], "prepare_s": ex[1], "sampling_s": ex[2], "launch_s": ex[3],
            "host_s": float(hc.total_s), "launches": int(float(hc.launches)), "graphs": int(float(hc.graphs)),
            "scheduler_cpu_s": cpu[0], "prepare_cpu_s": cpu[1], "sampling_cpu_s": cpu[2], "launch_cpu_s": cpu[3],
        }  # fmt: skip
        return host, gpu_s + ex[0] + ex[1] + ex[2] + ex[3]

    def _host_block(
        self, gpu_s: np.ndarray, seqs: int, tokens: int, phase: str, launch_parts: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The engine's host time of steps of GPU time ``gpu_s`` [k] (s): the host fields of `StepBlock` and the
        new ``duration_s`` [k]. Per step the same as `sim.serving.host.exposed` on `host_cost`.

        ``launch_parts`` [k, 4]: (kernel launches, attention launches, eager launch wait s, piecewise launch
        wait s).
        """
        prof = self.profile
        assert prof is not None
        k = len(gpu_s)
        mode = graph_mode(prof, phase, seqs, tokens)
        out = {f: np.zeros(k) for f in _BLOCK_FIELDS[9:]}
        counts = np.round(launch_parts[:, :2]).astype(np.int64)
        same = k == 1 or bool((counts == counts[0]).all())
        if same and prof.overlap:  # the common case (one batch shape, an overlapping scheduler) in a few array ops
            return self._host_overlap(gpu_s, seqs, tokens, mode, *counts[0].tolist())
        keys = counts[:1] if same else np.unique(counts, axis=0)
        for launches, att in keys.tolist():
            rows = slice(None) if same else np.flatnonzero((counts[:, 0] == launches) & (counts[:, 1] == att))
            hc = host_cost(prof, seqs, tokens, launches, mode, att, self.n_layers + 1)
            g = gpu_s[rows]
            # the forward from its first launch: the GPU runs a full graph back to back once it is replayed
            wait = {"eager": launch_parts[rows, 2], "piecewise": launch_parts[rows, 3]}.get(mode)
            cpu = (hc.scheduler_s, hc.prepare_s, hc.sampling_s, hc.launch_s)
            if prof.overlap:  # `host.exposed`: the host time beyond the GPU time, shared in proportion
                total = sum(cpu)
                extra = np.maximum(total - g, 0.0)
                f = extra / total if total > 0.0 else np.zeros_like(g)
                ex = [c * f for c in cpu]
            else:
                forward = g + (hc.launch_s if wait is None else wait)
                ex = [np.full_like(g, hc.scheduler_s), np.full_like(g, hc.prepare_s), np.full_like(g, hc.sampling_s)]
                ex.append(np.maximum(forward - g, 0.0))
            for name, v in zip(("scheduler_s", "prepare_s", "sampling_s", "launch_s"), ex, strict=True):
                out[name][rows] = v
            out["host_s"][rows], out["launches"][rows], out["graphs"][rows] = hc.total_s, hc.launches, hc.graphs
            out["scheduler_cpu_s"][rows], out["prepare_cpu_s"][rows] = hc.scheduler_s, hc.prepare_s
            out["sampling_cpu_s"][rows], out["launch_cpu_s"][rows] = hc.sampling_s, hc.launch_s
        sched, prep, samp, launch = out["scheduler_s"], out["prepare_s"], out["sampling_s"], out["launch_s"]
        out["duration_s"] = gpu_s + sched + prep + samp + launch
        return out

    def _host_overlap(
        self, gpu_s: np.ndarray, seqs: int, tokens: int, mode: str, launches: int, att: int
    ) -> dict[str, np.ndarray]:
        """`_host_block` of ``k`` steps of one shape under an overlapping scheduler: the same values, the host cost
        memoised by shape."""
        hc = self._host_cost(seqs, tokens, mode, launches, att)
        k = len(gpu_s)
        cpu = (hc.scheduler_s, hc.prepare_s, hc.sampling_s, hc.launch_s)
        total = sum(cpu)
        # `host.exposed`: the host time beyond the GPU time, shared in proportion
        f = np.maximum(total - gpu_s, 0.0) / total if total > 0.0 else np.zeros(k)
        ex = [c * f for c in cpu]
        out = {name: v for name, v in zip(("scheduler_s", "prepare_s", "sampling_s", "launch_s"), ex, strict=True)}
        const = np.empty((len(_HOST_CONST), k))  # the per-shape constants, one row each
        const[...] = np.array([hc.total_s, hc.launches, hc.graphs, *cpu])[:, None]
        out.update(zip(_HOST_CONST, const, strict=True))
        out["duration_s"] = gpu_s + ex[0] + ex[1] + ex[2] + ex[3]
        return out

    def _fetch(self, per: np.ndarray) -> float:
        """Seconds fetching missed experts this step: per layer, the slowest GPU's misses over its host link."""
        off = self.offload
        assert off is not None
        total = 0.0
        per_fetch = off.expert_bytes / off.host_bw
        for layer in range(per.shape[0]):
            worst = 0
            for g, cache in enumerate(self._caches):
                misses = 0
                for slot in np.flatnonzero(per[layer, g]):
                    key = (layer, int(slot))
                    if key in cache:
                        cache.move_to_end(key)
                    else:
                        misses += 1
                        cache[key] = None
                        if len(cache) > off.cache_experts:
                            cache.popitem(last=False)
                worst = max(worst, misses)
            total += worst * per_fetch
        return total

    def expected_fetch(self, tokens: float) -> float:
        """Steady-state fetch seconds per step under LRU (Che's approximation), ``tokens`` per step."""
        off = self.offload
        if off is None or self.moe is None or tokens <= 0:
            return 0.0
        ep = self.layout.ep
        # per GPU: every (layer, slot) is referenced in a step with probability a = 1 - (1 - p)^(T k)
        a = 1.0 - (1.0 - self.slot_p) ** (tokens * self.moe.top_k)  # [L, S]
        a = a.reshape(self.n_moe, ep, self.per_gpu).transpose(1, 0, 2).reshape(ep, -1)  # [G, L*S/G]
        per_fetch = off.expert_bytes / off.host_bw
        worst = 0.0
        for g in range(ep):
            ag = np.clip(a[g], 1e-12, 1 - 1e-12)
            if ag.size <= off.cache_experts:
                continue
            lo, hi = 0.0, 1.0
            while (1.0 - (1.0 - ag) ** hi).sum() < off.cache_experts:
                hi *= 2
            for _ in range(60):  # characteristic time t_C: sum_i P(referenced within t_C steps) = C
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if (1.0 - (1.0 - ag) ** mid).sum() < off.cache_experts else (lo, mid)
            misses = float((ag * (1.0 - ag) ** lo).sum())
            worst = max(worst, misses)
        return worst * per_fetch


# ---- per-phase breakdown ---------------------------------------------------------------------------------------

#: The parts of a step's duration in the breakdown, each the sum of steps-table columns (s).
BREAKDOWN_PARTS: dict[str, tuple[str, ...]] = {
    "kernels_s": ("compute_s", "straggler_s"),
    "comm_s": ("comm_s",),
    "fetch_s": ("fetch_s",),
    "launch_s": ("launch_s",),
    "scheduler_s": ("scheduler_s",),
    "prepare_s": ("prepare_s",),
    "sampling_s": ("sampling_s",),
}


def cost_row(cost: StepCost, phase: str) -> dict[str, float | int | str]:
    """One steps-table row (the columns `step_breakdown` reads) of a `StepCost`."""
    return {
        "phase": phase,
        "duration_s": cost.duration_s,
        "compute_s": cost.compute_s,
        "comm_s": cost.comm_s,
        "straggler_s": cost.straggler_s,
        "fetch_s": cost.fetch_s,
        "scheduler_s": cost.scheduler_s,
        "prepare_s": cost.prepare_s,
        "sampling_s": cost.sampling_s,
        "launch_s": cost.launch_s,
        "host_s": cost.host_s,
        "scheduler_cpu_s": cost.scheduler_cpu_s,
        "prepare_cpu_s": cost.prepare_cpu_s,
        "sampling_cpu_s": cost.sampling_cpu_s,
        "launch_cpu_s": cost.launch_cpu_s,
        "launches": cost.launches,
        "graphs": cost.graphs,
        "padded_batch": cost.padded_batch,
    }


def step_breakdown(steps: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean step by phase (``decode``, ``prefill``, ``mixed``): where its seconds go, and each part's share.

    Args:
        steps: a steps table (`sim.serving.results.STEP_COLUMNS`, or `cost_row` rows): phase, duration_s and the
            columns of `BREAKDOWN_PARTS`; host_s, launches, graphs, padded_batch when present.

    Returns:
        per phase present: ``steps`` (count), ``step_s`` (mean duration, s), each part of `BREAKDOWN_PARTS`
        (mean, s; they sum to ``step_s``), ``share`` (each part over ``step_s``), ``host_cpu_s`` (mean raw CPU
        seconds, hidden or not), ``launches``, ``graphs`` and ``padded_batch`` (means).
    """
    out: dict[str, dict[str, Any]] = {}
    if steps is None or not len(steps):
        return out
    for phase in ("decode", "prefill", "mixed"):
        rows = steps[steps["phase"] == phase]
        if not len(rows):
            continue
        step_s = float(rows["duration_s"].mean())
        entry: dict[str, Any] = {"steps": len(rows), "step_s": step_s}
        for name, cols in BREAKDOWN_PARTS.items():
            entry[name] = float(sum(rows[c].mean() for c in cols if c in rows))
        entry["share"] = {name: entry[name] / step_s if step_s > 0 else 0.0 for name in BREAKDOWN_PARTS}
        for col, name in (("host_s", "host_cpu_s"), ("launches", "launches"), ("graphs", "graphs")):
            if col in rows:
                entry[name] = float(rows[col].mean())
        if "padded_batch" in rows:
            entry["padded_batch"] = float(rows["padded_batch"].mean())
        out[phase] = entry
    return out
