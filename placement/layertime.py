"""Predicted MoE-layer time of a placement: the ILP's physical objective and the figure every method reports.

One expert-parallel MoE layer step on G GPUs in ``nodes`` nodes, ``tokens_per_gpu`` tokens on each GPU, run as
DeepEP's normal mode runs it (deepseek-ai/DeepEP@README.md: a token goes once to each other node holding one of its
experts over RDMA, then over NVLink to the GPUs there; dispatch fp8 with one fp32 scale per 128 elements, combine
bf16; `moesim.model.a2a`):

- **dispatch + combine**: ``max(busiest node's NIC, busiest GPU's NVLink)``. A node's NIC receives every token of
  the other nodes that needs one of its experts once (per-node deduplication); its GPUs' NICs share it. A GPU's
  NVLink receives one token per (token, replica) pair routed to it. Seconds per token from `token_bytes` and the
  link bandwidths of the cluster at DeepEP's achieved fraction (`efficiency`, from DeepEP's published H800 runs).
- **grouped GEMM**: per GPU the sum over its replicas of ``max(pairs x 6 h i / peak FLOP/s, 3 h i weight bytes / HBM
  bytes/s)`` (each expert's three projections: compute- or weight-read-bound, `model.roofline`'s rule per expert);
  the layer waits for the slowest GPU.
- plus the two calls' fixed costs (`normal_fixed_s`).

Layer time = fixed + max_g GEMM_g + max(max_node NIC, max_g NVLink): dispatch, GEMM and combine are each a
barrier for the layer.

**Which replica a token's expert goes to** (``LayerCost.replica_choice``) is the engine's rule, not the plan's:

- ``random``: a replica drawn uniformly for every (token, expert), so an expert's replicas split its load evenly and
  a token reaches a node with the share of the expert's replicas there. vLLM's rule (vllm-project/vllm
  ``eplb_map_to_physical_and_record``: "select a pseudo-random replica for each logical expert"), and in
  expectation SGLang's before it preferred same-node replicas (a rank's own GPU's replica, else a fixed fair pick:
  sgl-project/sglang python/sglang/srt/eplb/expert_location.py ``compute_logical_to_rank_dispatch_physical_map``;
  with no GPU holding two replicas of one expert this splits the load evenly too).
- ``nearest``: SGLang's rule since sgl-project/sglang#9849 (static dispatch) and #10874 (dynamic), 2025 (the same
  file, ``_find_nearest_expert``): each rank sends an expert's tokens to the replica on its own GPU, else to the
  first replica on its node (lowest slot; only when the node does not hold all of them), else to a replica picked
  once per rank, the ranks spread evenly over the replicas (``_fair_choices``; priced in expectation, 1 / replicas
  each). A node holding a replica keeps that expert's tokens off the NIC, and that node's first replica takes all of
  its other GPUs' tokens of the expert, so stacked replicas load unevenly (the imbalance sgl-project/sglang#13423
  describes: "all tokens from node 1 to A1, A2 receives no tokens"; closed unmerged).

`slot_routes` gives the rule as a [G, S] matrix; the prefill parts (GEMM, NVLink, each node's NIC from each other
node's tokens) follow it, and so do the decode (low-latency) parts: each slot's share of its expert's pairs in the
busiest GPU (`model.routing.slot_shares`, `gpu_loads`) and each source node's selections in the all-to-all
(`model.a2a.selection_fanout_by_source`), as the serving simulators price them.

The ILP linearises it: for fixed replica counts every replica's GEMM time is a constant, so a GPU's GEMM time is
linear in the assignment; a token reaching node k is ``h[t,k] >= replicas of e on k / r_e`` for each of its experts
(exact when each of its experts has one replica); NIC and NVLink are linear in those. `layer_time` is the exact
evaluation the reports use and the ILP's fallback compares.

**Phases** (``LayerCost.phase``): a serving deployment runs prefill (and mixed) batches in DeepEP's normal mode and
pure decode batches in its low-latency mode (SGLang ``--deepep-mode auto``: sgl-project/sglang PR #4767;
`model.a2a.a2a_mode`), at very different tokens per GPU. ``prefill`` prices the normal mode above at
``tokens_per_gpu``; ``decode`` prices the low-latency mode at ``decode_tokens_per_gpu``; ``both`` weighs the two
by ``decode_share`` (the share of the deployment's time in decode steps). The low-latency price is
`model.a2a`'s, term for term, so it agrees with what the serving simulators charge for the layer
(`sim.serving.steptime.StepTimer._layer_a2a`): every (token, expert) selection is its own message, so a GPU of
load share ``s_g`` (its replicas' shares, an expert's share split over its replicas) receives ``top_k x s_g`` of
each source token from each other GPU, and a token sends ``top_k x (1 - its node's share)`` selections off its
node (`model.a2a.selection_fanout`); per direction ``fixed + max(NVLink, NIC)`` with the busiest GPU's bytes of
each class at DeepEP's low-latency efficiency (`model.a2a.deepep_time`), no per-node deduplication: in decode the
plan's balance is all that counts, remote nodes per token cost nothing extra. The decode GEMM is the busiest GPU of
a randomly routed decode step as the serving simulators estimate it (`busiest_decode_gemm_s`: the expected largest
pair count and most active experts of any GPU, `model.routing.gpu_loads`; mostly weight-read-bound, a replica read
only when a pair reaches it). The ILP's swap searches (`placement.nicsearch`) still score the normal-mode terms; every
candidate plan, and EPLB's it must not lose to, is then compared on the weighted total.

**Two-batch overlap** (``LayerCost.overlap``, per phase; `Overlap`): where the deployment splits each step into two
micro-batches that take turns on the GPU (SGLang's two-batch overlap, vLLM's dual-batch overlap), a transfer hides
behind the other micro-batch's stages, and the serving simulators price a layer so (`model.tbo`). A phase with an
`Overlap` is then priced as they price it: each micro-batch holds half the step's tokens, its slowest GPU's GEMM
and its dispatch and combine (fixed costs and link time at half the tokens) are this plan's, its attention and
shared experts the deployment's (`Overlap`, measured by the simulators' step timer on the deployment:
`moesim place --simulate`), and the layer's time is what it adds to the stream in a long run of such layers
(`model.tbo.steady_layer_s`) less both micro-batches' attention (which no plan changes): the routed and shared
experts plus the transfers' exposed waits. A plan's extra NIC time then counts only where it is not hidden.

Units: seconds, bytes, FLOP; loads ``w`` [N] in any unit (normalised to the step's pairs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from moesim.model.a2a import (
    DEEPEP_LL_SETUP,
    efficiency,
    ll_fixed_s,
    normal_fixed_s,
    selection_fanout_by_source,
    token_bytes,
)
from moesim.model.errors import MoesimError
from moesim.model.hardware import ClusterSpec
from moesim.model.routing import REPLICA_CHOICES, REPLICA_FIX, gpu_loads, slot_routes, slot_shares
from moesim.model.tbo import STRATEGIES, steady_layer_s

#: Tokens per GPU per MoE layer call in the default step: DeepEP's normal-mode benchmark setting (4096 tokens per
#: batch, hidden 7168, top-8; deepseek-ai/DeepEP@README.md "Normal kernels with NVLink and RDMA forwarding").
DEFAULT_TOKENS_PER_GPU = 4096
#: Tokens per GPU of a decode step by default: DeepEP's low-latency benchmark setting (128 tokens per GPU,
#: deepseek-ai/DeepEP@docs/legacy.md "Low-latency kernels with pure RDMA"; `model.a2a.DEEPEP_LL_SETUP`).
DEFAULT_DECODE_TOKENS_PER_GPU = DEEPEP_LL_SETUP[0]
#: The objective's phases (`LayerCost.phase`).
PHASES = ("prefill", "decode", "both")


@dataclass(frozen=True)
class Overlap:
    """One phase's two-batch overlap as the serving simulators run it (`model.tbo`), for `LayerCost.overlap`.

    Attributes:
        strategy: the engine's operation order, a `model.tbo.STRATEGIES` key (``decode``, ``extend``: SGLang's;
            ``vllm_dbo``: vLLM's).
        prep_s, core_s, shared_s: one micro-batch's attention preparation, attention core (with the output
            projection, norm and router) and shared experts per MoE layer, s.
        slow: computation's slowdown while a transfer is in flight (>= 1; DeepEP's normal kernels hold SMs).
        capped_prep_s, capped_core_s, capped_shared_s: of those the SM-capped part (DeepGEMM held to the SMs DeepEP
            leaves), s.
        experts_capped: the routed experts' grouped GEMMs are SM-capped too.
        source: where the figures come from.
    """

    strategy: str
    prep_s: float
    core_s: float
    shared_s: float
    slow: float = 1.0
    capped_prep_s: float = 0.0
    capped_core_s: float = 0.0
    capped_shared_s: float = 0.0
    experts_capped: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise MoesimError(
                f"two-batch overlap strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}",
                "use an order the serving simulators know (model.tbo.STRATEGIES)",
            )
        vals = (self.prep_s, self.core_s, self.shared_s, self.capped_prep_s, self.capped_core_s, self.capped_shared_s)
        if not all(np.isfinite(v) and v >= 0 for v in vals) or not (np.isfinite(self.slow) and self.slow >= 1):
            raise MoesimError(
                f"two-batch overlap times must be finite and >= 0 and the slowdown >= 1 (got {vals}, {self.slow})",
                "measure them with the serving step timer (moesim place --simulate)",
            )

    def layer_s(self, experts: float, dispatch: float, combine: float) -> float:
        """What one MoE layer adds to the stream beyond both micro-batches' attention, s, for one micro-batch's
        slowest-GPU ``experts``, ``dispatch`` and ``combine`` seconds (`model.tbo.steady_layer_s`)."""
        comp = {"prep": self.prep_s, "core": self.core_s, "shared": self.shared_s, "experts": experts}
        capped = {"prep": self.capped_prep_s, "core": self.capped_core_s, "shared": self.capped_shared_s,
                  "experts": experts if self.experts_capped else 0.0}  # fmt: skip
        att = self.prep_s + self.core_s + (self.slow - 1.0) * (self.capped_prep_s + self.capped_core_s)
        return steady_layer_s(self.strategy, comp, dispatch, combine, self.slow, capped) - 2.0 * att


@dataclass(frozen=True)
class LayerCost:
    """Per-unit costs of one MoE layer step (see the module docstring).

    Attributes:
        tokens_per_gpu: tokens each GPU holds per step.
        top_k: experts per token.
        s_per_pair: grouped-GEMM seconds per (token, expert) pair at the GPU's peak, s.
        s_per_expert_read: seconds to read one expert's weights from HBM, s.
        nvlink_s_per_token: dispatch + combine seconds per token received over one GPU's NVLink, s.
        nic_s_per_token: dispatch + combine seconds per token received over one GPU's NIC, s.
        fixed_s: both calls' fixed costs, s.
        source: what the figures come from.
        phase: ``prefill`` (normal mode only), ``decode`` (low-latency only) or ``both`` (weighted by
            ``decode_share``); see the module docstring.
        decode_share: the decode phase's weight in ``both``, in [0, 1].
        decode_tokens_per_gpu: tokens each GPU holds per decode step.
        ll_intra_s, ll_inter_s: low-latency seconds per selection over a GPU's NVLink / NIC at DeepEP's low-latency
            efficiency, (dispatch, combine), s.
        ll_fixed_s: the low-latency calls' fixed costs, (dispatch, combine), s.
        dispatch_share: the dispatch's share of a normal-mode token's link seconds (fp8 or bf16 payload against the
            bf16 combine), for `dispatch_link_s`.
        fixed_dispatch_s: of ``fixed_s`` the dispatch call's, s.
        overlap: (prefill, decode) two-batch overlap of each phase (`Overlap`; None: the phase runs without it, its
            transfers a barrier between its GEMMs).
        replica_choice: the engine's rule for which replica of an expert a token goes to, a `REPLICA_CHOICES` key
            (module docstring).
    """

    tokens_per_gpu: float
    top_k: int
    s_per_pair: float
    s_per_expert_read: float
    nvlink_s_per_token: float
    nic_s_per_token: float
    fixed_s: float
    source: str = ""
    phase: str = "prefill"
    decode_share: float = 0.0
    decode_tokens_per_gpu: float = DEFAULT_DECODE_TOKENS_PER_GPU
    ll_intra_s: tuple[float, float] = (0.0, 0.0)
    ll_inter_s: tuple[float, float] = (0.0, 0.0)
    ll_fixed_s: tuple[float, float] = (0.0, 0.0)
    dispatch_share: float = 0.5
    fixed_dispatch_s: float = 0.0
    overlap: tuple[Overlap | None, Overlap | None] = (None, None)
    replica_choice: str = "random"

    def __post_init__(self) -> None:
        if self.replica_choice not in REPLICA_CHOICES:
            raise MoesimError(
                f"replica choice {self.replica_choice!r} is not one of {', '.join(REPLICA_CHOICES)}",
                REPLICA_FIX,
            )

    @property
    def weights(self) -> tuple[float, float]:
        """(prefill, decode) weights of the objective."""
        d = {"prefill": 0.0, "decode": 1.0}.get(self.phase, self.decode_share)
        return 1.0 - d, d

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def layer_cost(
    cluster: ClusterSpec,
    hidden: int,
    intermediate: int,
    top_k: int,
    num_gpus: int,
    *,
    dtype: str = "bf16",
    tokens_per_gpu: float = DEFAULT_TOKENS_PER_GPU,
    phase: str = "prefill",
    decode_share: float = 0.0,
    decode_tokens_per_gpu: float = DEFAULT_DECODE_TOKENS_PER_GPU,
    fp8_dispatch: bool | None = None,
    overlap: tuple[Overlap | None, Overlap | None] = (None, None),
    replica_choice: str = "random",
) -> LayerCost:
    """The `LayerCost` of ``num_gpus`` GPUs of ``cluster`` for experts of ``hidden`` x ``intermediate`` (gate, up,
    down), weights and GEMMs in ``dtype`` (``fp8``: 1 byte a weight, the GPU's fp8 peak; else 2 bytes, bf16);
    ``phase``, ``decode_share``, ``decode_tokens_per_gpu``: see `LayerCost`; ``fp8_dispatch``: dispatch in fp8
    (None: with fp8 weights; the serving simulators dispatch fp8 only for block-scaled fp8, `model.ops`);
    ``overlap``: (prefill, decode) two-batch overlap (`Overlap`, `LayerCost.overlap`); ``replica_choice``: the
    engine's replica rule (`LayerCost.replica_choice`)."""
    if tokens_per_gpu <= 0 or hidden <= 0 or intermediate <= 0 or top_k <= 0 or decode_tokens_per_gpu <= 0:
        raise MoesimError(
            f"layer cost needs positive tokens per GPU, sizes and top-k (got {tokens_per_gpu}, "
            f"{decode_tokens_per_gpu}, {hidden}, {intermediate}, {top_k})",
            "give --batch-tokens and --decode-tokens > 0 and an MoE model",
        )
    if phase not in PHASES:
        raise MoesimError(f"--phase {phase!r} is not one of {', '.join(PHASES)}", "use prefill, decode or both")
    if not 0.0 <= decode_share <= 1.0:
        raise MoesimError(f"--decode-share {decode_share} is outside [0, 1]", "give the decode phase's time share")
    gpu = cluster.gpu
    fp8 = dtype == "fp8"
    fp8_disp = fp8 if fp8_dispatch is None else bool(fp8_dispatch)
    peak = gpu.peak("fp8" if fp8 else "bf16")
    wbytes = 3.0 * hidden * intermediate * (1.0 if fp8 else 2.0)
    nvl_bw, _ = cluster.link("intra")
    nodes = max(1, num_gpus // cluster.gpus_per_node)
    nvl = nic = 0.0
    ll_intra, ll_inter = [0.0, 0.0], [0.0, 0.0]
    disp = token_bytes(hidden, "dispatch", "normal", 2.0, fp8_disp)
    disp_share = disp / (disp + token_bytes(hidden, "combine", "normal", 2.0, fp8_disp))
    for i, direction in enumerate(("dispatch", "combine")):
        nbytes = token_bytes(hidden, direction, "normal", 2.0, fp8_disp)
        nvl += nbytes / (efficiency("normal", direction, "intra", num_gpus) * nvl_bw)
        sel = token_bytes(hidden, direction, "low_latency", 2.0, fp8_disp)
        ll_intra[i] = sel / (efficiency("low_latency", direction, "intra", num_gpus) * nvl_bw)
        if nodes > 1:
            nic_bw, _ = cluster.link("inter")
            nic += nbytes / (efficiency("normal", direction, "inter", num_gpus) * nic_bw)
            ll_inter[i] = sel / (efficiency("low_latency", direction, "inter", num_gpus) * nic_bw)
    fixed = sum(normal_fixed_s(d, cluster, nodes > 1) for d in ("dispatch", "combine"))
    return LayerCost(
        tokens_per_gpu=float(tokens_per_gpu),
        top_k=int(top_k),
        s_per_pair=6.0 * hidden * intermediate / peak,
        s_per_expert_read=wbytes / gpu.bandwidth(),
        nvlink_s_per_token=nvl,
        nic_s_per_token=nic,
        fixed_s=fixed,
        source=f"{cluster.name}: {dtype} peak and HBM from the GPU table, links at DeepEP's normal-mode efficiency "
        f"(moesim.model.a2a), {tokens_per_gpu:g} tokens per GPU"
        + (f"; decode in low-latency mode at {decode_tokens_per_gpu:g} tokens per GPU" if phase != "prefill" else "")
        + (f", {decode_share:.0%} of the time" if phase == "both" else "")
        + _overlap_note(overlap)
        + ("; each rank's nearest replica (SGLang)" if replica_choice == "nearest" else ""),
        phase=phase,
        decode_share=float(decode_share),
        decode_tokens_per_gpu=float(decode_tokens_per_gpu),
        ll_intra_s=(ll_intra[0], ll_intra[1]),
        ll_inter_s=(ll_inter[0], ll_inter[1]),
        ll_fixed_s=(ll_fixed_s("dispatch"), ll_fixed_s("combine")),
        dispatch_share=disp_share,
        fixed_dispatch_s=normal_fixed_s("dispatch", cluster, nodes > 1),
        overlap=overlap,
        replica_choice=replica_choice,
    )


def _overlap_note(overlap: tuple[Overlap | None, Overlap | None]) -> str:
    """`LayerCost.source`'s words on each phase's two-batch overlap."""
    named = zip(("prefill", "decode"), overlap, strict=True)
    return "".join(f"; {name} under two-batch overlap ({o.source or o.strategy})" for name, o in named if o is not None)


def pairs_per_expert(w: np.ndarray, cost: LayerCost, num_gpus: int) -> np.ndarray:
    """(token, expert) pairs of each expert in one step [N]: the step's tokens x top-k split as the loads ``w``."""
    total = float(w.sum())
    if total <= 0:
        return np.zeros(w.size)
    return w / total * cost.tokens_per_gpu * num_gpus * cost.top_k


def replica_gemm_s(pairs: np.ndarray, cost: LayerCost) -> np.ndarray:
    """GEMM seconds of replicas with ``pairs`` pairs each: compute- or weight-read-bound (0 for no pairs)."""
    return np.where(pairs > 0, np.maximum(pairs * cost.s_per_pair, cost.s_per_expert_read), 0.0)


def nearest_hits(
    p2l: np.ndarray, n: int, num_gpus: int, gpus_per_node: int, tokens: np.ndarray, routes: np.ndarray
) -> np.ndarray:
    """[source nodes, nodes] share of a source node's tokens (``tokens`` [T, k], -1 padded, as a sample of every
    node's) that reach each other node at least once under ``routes`` [G, S] (`slot_routes`), each expert going
    where the source node's GPUs send it on average; 0 on the diagonal (a node's own GPUs: NVLink only)."""
    nodes = num_gpus // gpus_per_node
    per = p2l.size // num_gpus
    node_of = (np.arange(p2l.size) // per) // gpus_per_node
    idx = np.where(tokens >= 0, tokens, n)
    out = np.zeros((nodes, nodes))
    for src in range(nodes):
        reach = np.zeros((n + 1, nodes))
        np.add.at(reach, (p2l, node_of), routes[src * gpus_per_node : (src + 1) * gpus_per_node].mean(axis=0))
        out[src] = 1.0 - np.prod(1.0 - np.minimum(reach[idx], 1.0), axis=1).mean(axis=0)
        out[src, src] = 0.0
    return out


def nearest_node_inbound(
    p2l: np.ndarray, n: int, num_gpus: int, gpus_per_node: int, tokens: np.ndarray, routes: np.ndarray
) -> np.ndarray:
    """[nodes] tokens each node receives over its NIC per token a GPU holds, under ``routes`` [G, S]: every other
    node's `nearest_hits` share times the ``gpus_per_node`` tokens it sends."""
    return nearest_hits(p2l, n, num_gpus, gpus_per_node, tokens, routes).sum(axis=0) * gpus_per_node


def node_hits(p2l: np.ndarray, n: int, nodes: int, tokens: np.ndarray) -> np.ndarray:
    """[nodes] share of tokens that reach each node (a replica picked uniformly), over ``tokens`` [T, k]."""
    frac = np.zeros((n + 1, nodes))
    np.add.at(frac, (p2l, np.arange(p2l.size) // (p2l.size // nodes)), 1.0)
    frac[:n] /= np.maximum(frac[:n].sum(axis=1, keepdims=True), 1.0)
    miss = np.prod(1.0 - frac[np.where(tokens >= 0, tokens, n)], axis=1)  # [T, nodes]
    return (1.0 - miss).mean(axis=0)


def decode_replica_gemm_s(
    rep_share: np.ndarray, num_gpus: int, cost: LayerCost, tokens: float | None = None
) -> np.ndarray:
    """Expected grouped-GEMM seconds of replicas [S] holding ``rep_share`` of a decode step's pairs each.

    A decode step has ``n = decode_tokens_per_gpu x G x top_k`` pairs, few per replica, so a replica may get none
    and read no weights: counting the pairs as independent draws over the slots, a replica is active with
    probability ``1 - (1 - share)^n`` (a token's ``top_k`` picks are distinct, as the serving simulators draw them,
    `model.routing.draw_slot_counts`, which gives ``1 - (1 - top_k x share)^(n / top_k)``, never less: this is the
    form `layer_time_bound` needs, a lower bound), and an active one costs
    ``max(pairs x s_per_pair, s_per_expert_read)`` (compute- or weight-read-bound). Expected:
    ``max(pairs x s_per_pair, P(active) x s_per_expert_read)``. ``tokens``: per GPU (None: the decode step's,
    ``cost.decode_tokens_per_gpu``; half of it for one micro-batch under two-batch overlap)."""
    n = (cost.decode_tokens_per_gpu if tokens is None else tokens) * num_gpus * cost.top_k
    active = 1.0 - np.power(np.clip(1.0 - rep_share, 0.0, 1.0), n)
    return np.maximum(rep_share * n * cost.s_per_pair, active * cost.s_per_expert_read)


def ll_calls_s(
    share_gpu: np.ndarray,
    gpus_per_node: int,
    cost: LayerCost,
    tokens: float | None = None,
    fan: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Low-latency (dispatch, combine) of a decode step, s, at ``tokens`` per GPU (None:
    ``cost.decode_tokens_per_gpu``), from each GPU's load share ``share_gpu`` [G] (summing to 1):
    `model.a2a.selection_fanout`'s busiest GPU per link class times `model.a2a.deepep_time`'s rule; ``fan``:
    the busiest GPU's (intra, inter) selections per source token where the replica rule makes them depend on the
    source (`_ll_fan`; None: from ``share_gpu``, the same for every source)."""
    g = share_gpu.size
    k = cost.top_k
    if fan is not None:
        intra, inter = fan
    else:
        s_g = k * share_gpu
        node_of = np.arange(g) // gpus_per_node
        in_node = np.bincount(node_of)[node_of]
        node_sum = np.bincount(node_of, weights=s_g)[node_of]
        intra = float(np.maximum(node_sum - s_g, s_g * (in_node - 1)).max())
        inter = float(np.maximum(k - node_sum, s_g * (g - in_node)).max()) if g > gpus_per_node else 0.0
    tok = cost.decode_tokens_per_gpu if tokens is None else tokens
    dispatch, combine = (
        cost.ll_fixed_s[j] + max(tok * intra * cost.ll_intra_s[j], tok * inter * cost.ll_inter_s[j]) for j in (0, 1)
    )
    return dispatch, combine


def decode_time_parts(p2l: np.ndarray, w: np.ndarray, num_gpus: int, gpus_per_node: int, cost: LayerCost) -> dict:
    """Predicted decode-step time of one layer's plan ``p2l`` [S] for loads ``w`` [N] (DeepEP low-latency mode at
    ``cost.decode_tokens_per_gpu``): ``total``, ``gemm`` (slowest GPU: `busiest_decode_gemm_s`), ``a2a``
    (dispatch + combine); seconds. Under two-batch overlap (``cost.overlap[1]``) ``total`` is `Overlap.layer_s` of
    one micro-batch's (half the tokens) slowest GPU's GEMM, dispatch and combine; ``gemm`` and ``a2a`` stay the
    whole step's."""
    n = w.size
    cnt = np.maximum(np.bincount(p2l, minlength=n), 1)
    total_w = float(w.sum())
    load = w / total_w if total_w > 0 else np.full(n, 1.0 / n)
    share = np.minimum(load, 1.0 / cost.top_k)  # pi <= 1
    load = pair_shares(load, cost.top_k)
    # each slot's share of its expert: even, or the engine's rule (`model.routing.slot_shares`)
    s_share = slot_shares(p2l, n, num_gpus, gpus_per_node, cost.replica_choice)
    rep_share = (share / cnt)[p2l] if s_share is None else share[p2l] * s_share  # [S]
    gemm = busiest_decode_gemm_s(p2l, load, num_gpus, cost, cost.decode_tokens_per_gpu, s_share)
    gpu_share = rep_share.reshape(num_gpus, -1).sum(axis=1)
    share_gpu = gpu_share / max(float(gpu_share.sum()), 1e-300)
    fan = _ll_fan(p2l, share, num_gpus, gpus_per_node, cost) if s_share is not None else None
    a2a = sum(ll_calls_s(share_gpu, gpus_per_node, cost, fan=fan))
    total = gemm + a2a
    ov = cost.overlap[1]
    if ov is not None:
        half = 0.5 * cost.decode_tokens_per_gpu
        g_half = busiest_decode_gemm_s(p2l, load, num_gpus, cost, half, s_share)
        total = ov.layer_s(g_half, *ll_calls_s(share_gpu, gpus_per_node, cost, half, fan))
    return {"total": total, "gemm": gemm, "a2a": a2a}


def _ll_fan(p2l: np.ndarray, share: np.ndarray, num_gpus: int, gpus_per_node: int, cost: LayerCost) -> tuple:
    """The busiest GPU's (intra, inter) low-latency selections per source token under ``cost.replica_choice``, each
    source node's selections going where its GPUs send them (`model.a2a.selection_fanout_by_source`, the serving
    simulators' rule), from expert shares ``share`` [N] normalised to ``top_k`` selections a token."""
    pi = cost.top_k * share / max(float(share.sum()), 1e-300)
    fan = selection_fanout_by_source(num_gpus, gpus_per_node, cost.top_k, share.size, pi, p2l, cost.replica_choice)
    return fan.intra, fan.inter


def pair_shares(load: np.ndarray, top_k: int) -> np.ndarray:
    """Loads [N] as shares of a step's (token, expert) pairs that a top-``top_k`` router can produce: none above
    ``1 / top_k`` (a token picks an expert once), the excess of the capped ones spread over the others in
    proportion to their loads (water-filling; unchanged when no share exceeds the cap)."""
    x = np.asarray(load, float) / max(float(np.sum(load)), 1e-300)
    cap = 1.0 / top_k
    if top_k > x.size:
        return np.full(x.size, 1.0 / x.size)
    for _ in range(x.size):
        over = x > cap * (1 + 1e-12)
        if not over.any():
            break
        fixed = x >= cap * (1 - 1e-12)
        rest = float(x[~fixed].sum())
        x = np.where(fixed, cap, x * (1.0 - cap * fixed.sum()) / max(rest, 1e-300))
    return np.minimum(x, cap)


def busiest_decode_gemm_s(
    p2l: np.ndarray, load: np.ndarray, num_gpus: int, cost: LayerCost, tokens: float, share: np.ndarray | None = None
) -> float:
    """The slowest GPU's grouped GEMM of a decode step at ``tokens`` per GPU under plan ``p2l`` [S] and load shares
    ``load`` [N], s, as the serving simulators estimate the busiest GPU (`model.routing.gpu_loads`: the expected
    largest pair count and the expected most active experts of any GPU when the step's tokens are routed at random,
    sampling noise included): ``max(pairs x s_per_pair, active x s_per_expert_read)``.

    At decode sizes (a few pairs per replica) the noise sets the busiest GPU: the largest of the GPUs' expected
    GEMMs (`decode_replica_gemm_s` summed per GPU) understates it and overstates what balancing the plan saves
    (DeepSeek-V3, 32 GPUs, 19 tokens per step: that rule gave the ILP's plan -7.5% of EPLB's decode MoE time where
    the step timer's busiest GPU moved by -0.1%)."""
    gl = gpu_loads(tokens * num_gpus, cost.top_k, num_gpus, load, p2l, load.size, share)
    return max(gl.busiest_pairs * cost.s_per_pair, gl.max_active_experts * cost.s_per_expert_read)


def layer_time_parts(
    p2l: np.ndarray, w: np.ndarray, num_gpus: int, gpus_per_node: int, tokens: np.ndarray, cost: LayerCost
) -> dict[str, float]:
    """Predicted time of one layer's plan ``p2l`` [S] for loads ``w`` [N] and token expert sets ``tokens`` [T, k]:
    ``total`` (the phases weighted, `LayerCost.weights`), the prefill parts ``gemm`` (slowest GPU), ``nvlink``
    (busiest GPU), ``nic`` (busiest node), ``fixed`` and ``prefill`` (their total), and ``decode``
    (`decode_time_parts`; with a decode weight only, else 0); seconds."""
    pre = _prefill_parts(p2l, w, num_gpus, gpus_per_node, tokens, cost)
    wp, wd = cost.weights
    dec = decode_time_parts(p2l, w, num_gpus, gpus_per_node, cost) if wd > 0 else {"total": 0.0, "a2a": 0.0}
    return {
        **pre,
        "total": wp * pre["total"] + wd * dec["total"],
        "prefill": pre["total"],
        "decode": dec["total"],
        "decode_a2a": dec["a2a"],
    }


def _prefill_parts(
    p2l: np.ndarray, w: np.ndarray, num_gpus: int, gpus_per_node: int, tokens: np.ndarray, cost: LayerCost
) -> dict[str, float]:
    """The normal-mode (prefill) parts of `layer_time_parts`, s. Under two-batch overlap (``cost.overlap[0]``)
    ``total`` is `Overlap.layer_s` of one micro-batch's (half the tokens: half the pairs and link bytes, every
    call's fixed cost) slowest GPU's GEMM, dispatch and combine; the other parts stay the whole step's."""
    n = w.size
    nodes = num_gpus // gpus_per_node
    rep_pairs, inbound = _routed(p2l, w, num_gpus, gpus_per_node, tokens, cost)
    gemm = replica_gemm_s(rep_pairs, cost).reshape(num_gpus, -1).sum(axis=1)
    nvl = rep_pairs.reshape(num_gpus, -1).sum(axis=1) * cost.nvlink_s_per_token
    nic = 0.0
    if nodes > 1 and cost.nic_s_per_token > 0:
        if inbound is None:
            inbound = node_hits(p2l, n, nodes, tokens) * cost.tokens_per_gpu * num_gpus * (nodes - 1) / nodes
        nic = float(inbound.max()) * cost.nic_s_per_token / gpus_per_node
    a2a = max(float(nvl.max()), nic)
    total = cost.fixed_s + float(gemm.max()) + a2a
    if cost.overlap[0] is not None:
        total = _overlapped_prefill(
            float(replica_gemm_s(0.5 * rep_pairs, cost).reshape(num_gpus, -1).sum(axis=1).max()), a2a, cost
        )
    return {
        "total": total,
        "gemm": float(gemm.max()),
        "nvlink": float(nvl.max()),
        "nic": nic,
        "fixed": cost.fixed_s,
    }


def _routed(
    p2l: np.ndarray, w: np.ndarray, num_gpus: int, gpus_per_node: int, tokens: np.ndarray, cost: LayerCost
) -> tuple[np.ndarray, np.ndarray | None]:
    """(pairs of each replica [S], tokens each node receives over its NIC [nodes] or None) of a normal-mode step
    under ``cost.replica_choice``. ``random``: an expert's pairs split evenly over its replicas, and None (the
    caller's symmetric `node_hits` rule, unchanged). ``nearest``: every GPU holds 1 / G of the step's tokens and
    sends them as `slot_routes` says; the NIC inbound per source node (`nearest_node_inbound`)."""
    n = w.size
    pairs = pairs_per_expert(w, cost, num_gpus)
    if cost.replica_choice == "random":
        cnt = np.maximum(np.bincount(p2l, minlength=n), 1)
        return (pairs / cnt)[p2l], None
    routes = slot_routes(p2l, n, num_gpus, gpus_per_node, cost.replica_choice)
    rep_pairs = pairs[p2l] * routes.sum(axis=0) / num_gpus
    nodes = num_gpus // gpus_per_node
    inbound = None
    if nodes > 1:
        inbound = nearest_node_inbound(p2l, n, num_gpus, gpus_per_node, tokens, routes) * cost.tokens_per_gpu
    return rep_pairs, inbound


def _overlapped_prefill(gemm_half: float, link: float, cost: LayerCost) -> float:
    """A normal-mode layer under two-batch overlap, s (`Overlap.layer_s`): one micro-batch's slowest GPU's GEMM
    ``gemm_half`` (s, at half the pairs) and its dispatch and combine, each its call's fixed cost plus its share of
    half the whole step's busiest link seconds ``link``."""
    ov = cost.overlap[0]
    assert ov is not None
    fd, half = cost.fixed_dispatch_s, 0.5 * link
    return ov.layer_s(gemm_half, fd + half * cost.dispatch_share, cost.fixed_s - fd + half * (1 - cost.dispatch_share))


def dispatch_link_s(parts: dict[str, float], cost: LayerCost) -> float:
    """The dispatch's part of a layer's link time in `layer_time_parts` ``parts``, s: the busiest link's dispatch +
    combine seconds in the normal (prefill) mode times the dispatch's share of the bytes (`LayerCost.dispatch_share`),
    and in the low-latency (decode) mode weighted as the objective weighs the phases."""
    wp, wd = cost.weights
    pre = max(parts["nvlink"], parts["nic"]) * cost.dispatch_share
    dec = 0.0
    if wd > 0:
        ratio = cost.ll_inter_s[0] / max(sum(cost.ll_inter_s), 1e-300) if sum(cost.ll_inter_s) > 0 else 0.5
        dec = max(parts.get("decode_a2a", 0.0) - sum(cost.ll_fixed_s), 0.0) * ratio
    return wp * pre + wd * dec


def layer_time(
    p2l: np.ndarray, w: np.ndarray, num_gpus: int, gpus_per_node: int, tokens: np.ndarray, cost: LayerCost
) -> float:
    """Predicted time of one layer's plan, s (`layer_time_parts`' total)."""
    return layer_time_parts(p2l, w, num_gpus, gpus_per_node, tokens, cost)["total"]


def balanced_time_parts(
    p2l: np.ndarray, w: np.ndarray, num_gpus: int, gpus_per_node: int, tokens: np.ndarray, cost: LayerCost
) -> dict[str, float]:
    """The normal-mode (prefill) time of plan ``p2l`` [S] if its work were spread perfectly evenly, s: the same
    replica counts and the same nodes reached per token, but every GPU at the mean GEMM and NVLink and every node's NIC
    at the mean (`layer_time_parts` takes the busiest of each). A lower bound of the plan's own prefill time (a mean
    never exceeds a max); what is left between the two is imbalance, what is below it needs fewer nodes reached per
    token or fewer replicas. ``total``, ``gemm``, ``nvlink``, ``nic``, ``fixed`` and ``nodes_per_token`` (the mean
    nodes a token reaches, its own included when its experts are there, a replica picked uniformly). Under the
    ``nearest`` replica rule the replicas keep their uneven loads (that is the rule, not the plan) and the NIC its
    per-source-node traffic; only the busiest of each is replaced by the mean."""
    n = w.size
    nodes = num_gpus // gpus_per_node
    rep_pairs, inbound = _routed(p2l, w, num_gpus, gpus_per_node, tokens, cost)
    gemm = float(replica_gemm_s(rep_pairs, cost).sum()) / num_gpus
    nvl = float(rep_pairs.sum()) / num_gpus * cost.nvlink_s_per_token
    hits = node_hits(p2l, n, nodes, tokens) if nodes > 1 else np.ones(1)
    nic = 0.0
    if nodes > 1 and cost.nic_s_per_token > 0:
        if inbound is None:
            nic = float(hits.mean()) * cost.tokens_per_gpu * num_gpus * (nodes - 1) / nodes * cost.nic_s_per_token
        else:
            nic = float(inbound.mean()) * cost.nic_s_per_token
        nic /= gpus_per_node
    total = cost.fixed_s + gemm + max(nvl, nic)
    if cost.overlap[0] is not None:
        total = _overlapped_prefill(float(replica_gemm_s(0.5 * rep_pairs, cost).sum()) / num_gpus, max(nvl, nic), cost)
    return {
        "total": total,
        "gemm": gemm,
        "nvlink": nvl,
        "nic": nic,
        "fixed": cost.fixed_s,
        "nodes_per_token": float(hits.sum()),
    }


def layer_time_bound(
    w: np.ndarray, num_slots: int, num_gpus: int, gpus_per_node: int, cost: LayerCost
) -> dict[str, float]:
    """A lower bound of `layer_time_parts` over every plan of ``num_slots`` slots for loads ``w`` [N], seconds:

    - ``gemm``: the mean GPU's GEMM, ``sum_e max(pairs_e x s_per_pair, s_per_expert_read) / G`` and at least
      ``S x s_per_expert_read / G`` (every replica reads its weights at least once; splitting an expert never
      lowers its compute);
    - ``nvlink``: the mean GPU's received pairs, ``pairs / G x nvlink_s_per_token``;
    - ``nic``: every token reaches at least one node, so the nodes together receive at least ``(nodes - 1) / nodes``
      of all tokens once; the busiest node at least its mean share (a weak bound: it ignores which experts a token
      uses together); 0 under the ``nearest`` replica rule, where a token whose experts all have a replica on its
      node sends nothing;
    - ``prefill``: ``fixed + gemm + max(nvlink, nic)``;
    - ``decode``: the mean GPU's expected GEMM at the decode batch (each expert on one replica) plus the low-latency
      calls with every GPU at the mean share (each link class's busiest GPU carries at least the mean; under the
      ``nearest`` rule only their fixed costs);
    - ``total``: the phases weighted as `layer_time_parts` weighs them.
    """
    pre = _prefill_bound(w, num_slots, num_gpus, gpus_per_node, cost)
    wp, wd = cost.weights
    dec = 0.0
    if wd > 0:
        # an expert split over replicas is active at least as often as one replica of it (1 - (1-p)^n is concave)
        share = np.minimum(w / max(float(w.sum()), 1e-300), 1.0 / cost.top_k)
        even = np.full(num_gpus, 1.0 / num_gpus)
        # under a per-rank rule a token may find every expert's replica on its own GPU or node: only the fixed costs
        fan = None if cost.replica_choice == "random" else (0.0, 0.0)
        gemm = float(decode_replica_gemm_s(share, num_gpus, cost).sum()) / num_gpus
        dec = gemm + sum(ll_calls_s(even, gpus_per_node, cost, fan=fan))
        ov = cost.overlap[1]
        if ov is not None:  # `Overlap.layer_s` never falls as its inputs fall: the same bound at half the tokens
            half = 0.5 * cost.decode_tokens_per_gpu
            g_half = float(decode_replica_gemm_s(share, num_gpus, cost, half).sum()) / num_gpus
            dec = ov.layer_s(g_half, *ll_calls_s(even, gpus_per_node, cost, half, fan))
    return {**pre, "total": wp * pre["total"] + wd * dec, "prefill": pre["total"], "decode": dec}


def _prefill_bound(
    w: np.ndarray, num_slots: int, num_gpus: int, gpus_per_node: int, cost: LayerCost
) -> dict[str, float]:
    """The normal-mode part of `layer_time_bound`, s."""
    pairs = pairs_per_expert(w, cost, num_gpus)
    gemm = max(
        float(np.maximum(pairs * cost.s_per_pair, cost.s_per_expert_read).sum()), num_slots * cost.s_per_expert_read
    )
    gemm /= num_gpus
    nvl = float(pairs.sum()) / num_gpus * cost.nvlink_s_per_token
    nodes = num_gpus // gpus_per_node
    nic = 0.0
    if nodes > 1 and cost.replica_choice == "random":  # under ``nearest`` a token may find all its experts at home
        nic = cost.tokens_per_gpu * num_gpus * (nodes - 1) / nodes / nodes * cost.nic_s_per_token / gpus_per_node
    total = cost.fixed_s + gemm + max(nvl, nic)
    if cost.overlap[0] is not None:  # `Overlap.layer_s` never falls as its inputs fall: the same bound at half
        half = float(np.maximum(0.5 * pairs * cost.s_per_pair, cost.s_per_expert_read).sum())
        total = _overlapped_prefill(max(half, num_slots * cost.s_per_expert_read) / num_gpus, max(nvl, nic), cost)
    return {
        "total": total,
        "gemm": gemm,
        "nvlink": nvl,
        "nic": nic,
        "fixed": cost.fixed_s,
    }
