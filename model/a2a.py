"""Expert-parallel dispatch and combine: the bytes each GPU sends and the time the all-to-all backend takes.

`Layout.a2a_backend` names the backend (`A2A_BACKENDS`):

- ``deepep`` (the default: SGLang ``--moe-a2a-backend deepep``, vLLM ``VLLM_ALL2ALL_BACKEND=deepep_high_throughput``
  / ``deepep_low_latency``), run as DeepEP runs it (deepseek-ai/DeepEP@docs/legacy.md, the V1 kernels both engines
  call), in one of two modes (`A2A_MODES`, `a2a_mode`):

  - ``normal`` (prefill, mixed batches and training): a token goes once to each GPU of its node that holds one of
    its experts and once to each other node, where it is forwarded over NVLink (the busiest GPU's bytes are
    `model.routing.token_fanout`'s). Each call pays a fixed cost, `normal_fixed_s`: the ``notify_dispatch``
    barrier that exchanges the token counts (one small-message round of the slowest link class crossed) and the
    data kernel's own start-up (`ll_fixed_s`). It runs on `DEEPEP_NORMAL_SMS` SMs, which computation
    overlapping it cannot use (`compute_slowdown`).
  - ``low_latency`` (decode): every (token, expert) selection is its own message, no per-node deduplication
    (`selection_fanout`), a 16-byte header per dispatch message; fixed cost `ll_fixed_s`; no SMs held while it
    waits (the receive hook).

  Dispatch sends fp8 with one fp32 scale per 128 elements where the weights are block-scaled fp8 (vLLM's
  ``use_fp8_dispatch`` when the quantisation is fp8 with block shape [128, 128]:
  vllm-project/vllm@vllm/model_executor/layers/fused_moe/all2all_utils.py ``maybe_make_prepare_finalize``;
  DeepSeek-V3 dispatches fp8, DeepSeek-V3 technical report section 3.3); else the activation dtype. Combine sends
  the activation dtype (bf16). A call takes ``fixed + max over link classes of bytes / (efficiency x link
  bandwidth)``: the efficiency is the fraction of the link DeepEP achieved in its published H800 runs, per EP size,
  mode, direction and link class (`efficiency`, from `DEEPEP_NORMAL`, `DEEPEP_LL`), carried to the cluster's own
  links (a faster NVLink is assumed reached in the same proportion).
- ``nccl``: moesim's earlier model, kept as the alternative backend: the deduplicated bytes in the activation
  dtype, timed on the link roofline with the cluster's collective latency (`model.roofline`), or by a calibrated
  cost model's NCCL all-to-all table where it has one (`profiling.costmodel`).

Every time says which model answered (`A2ATime.source`: ``deepep-normal:``, ``deepep-low_latency:``; the NCCL
backend's sources are the roofline's or the calibrated model's).

Units: bytes, seconds, bytes/s. Bytes are per occurrence on the busiest GPU (the larger of what it sends and what
it receives per link class), as `model.ops` counts every collective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from moesim.model.errors import MoesimError
from moesim.model.hardware import ClusterSpec, get_gpu, make_cluster
from moesim.model.op_record import Op
from moesim.model.routing import (
    Fanout,
    default_placement,
    hit_probability,
    inclusion_probs,
    slot_inclusion,
    slot_routes,
    token_fanout,
)

#: Expert-parallel all-to-all backends (`Layout.a2a_backend`).
A2A_BACKENDS = ("deepep", "nccl")
#: DeepEP's modes: ``normal`` (high throughput: prefill, training) and ``low_latency`` (decode).
A2A_MODES = ("normal", "low_latency")
#: The reference GPU of DeepEP's published figures (its links come from the ``H800`` preset: NVLink 200 GB/s and
#: a 400 Gb/s ConnectX-7 per GPU per direction, `model/presets/gpus.yaml`).
REFERENCE_GPU = "H800"
#: DeepEP's fp8 dispatch payload per hidden element: 1 byte plus one fp32 scale per 128 elements
#: (deepseek-ai/DeepEP@tests/test_intranode.py ``fp8_factor = (1 + 4 / 128) / 2`` of bf16).
FP8_DISPATCH_BYTES_PER_ELEMENT = 1.0 + 4.0 / 128.0
#: Bytes of the header each low-latency dispatch message carries (source token index and layout):
#: deepseek-ai/DeepEP@tests/test_low_latency.py counts ``hidden + hidden / 128 * 4 + 16`` bytes per fp8 selection.
LL_HEADER_BYTES = 16.0
#: SMs DeepEP's normal kernels run on: ``Buffer.set_num_sms(24)`` in deepseek-ai/DeepEP@docs/legacy.md and
#: ``num_sms = 24`` in tests/test_internode.py, the runs behind `DEEPEP_NORMAL`.
DEEPEP_NORMAL_SMS = 24
#: Streaming multiprocessors per GPU, by preset key: H100 SXM 132 (our device query, profiling/data/h100-sxm/
#: README.md); H800 132 (DeepSeek-V3 technical report, arXiv:2412.19437 section 3.2.2: 20 of the H800's 132 SMs
#: for communication); H200 SXM 132 (the same GH100 configuration as H100 SXM, NVIDIA H200 datasheet); A100 108
#: (NVIDIA A100 Tensor Core GPU architecture whitepaper). A GPU not listed: no SM share is charged.
GPU_SMS = {"H100-SXM": 132, "H800": 132, "H200-SXM": 132, "A100-SXM-80GB": 108}

#: DeepEP normal kernels, published (deepseek-ai/DeepEP@docs/legacy.md, commit 0297fc80, "Normal kernels with
#: NVLink and RDMA forwarding"): H800, CX7 400 Gb/s, 4096 tokens per GPU, hidden 7168, top-8 of 256 experts, top-4
#: groups (one group per node, ``min(nodes, 4)`` of them: tests/test_internode.py), fp8 dispatch, bf16 combine,
#: 24 SMs. EP size -> (bottleneck link class, dispatch bytes/s, combine bytes/s), "logical" bandwidth as the tests
#: count it: NVLink: received tokens (its own included) x token bytes; RDMA: tokens x nodes they go to (its own
#: node included) x token bytes.
DEEPEP_NORMAL: dict[int, tuple[str, float, float]] = {
    8: ("intra", 153e9, 158e9),
    16: ("inter", 43e9, 43e9),
    32: ("inter", 58e9, 57e9),
    64: ("inter", 51e9, 50e9),
}
#: The setup of `DEEPEP_NORMAL`: tokens per GPU, hidden, top-k, experts.
DEEPEP_NORMAL_SETUP = (4096, 7168, 8, 256)
#: DeepEP low-latency kernels, published (deepseek-ai/DeepEP@docs/legacy.md, "Low-latency kernels with pure
#: RDMA"; NVLink used inside a node): H800, CX7 400 Gb/s, 128 tokens per GPU, hidden 7168, top-8, fp8 dispatch, bf16
#: combine. EP size -> (dispatch s, combine s).
DEEPEP_LL: dict[int, tuple[float, float]] = {
    8: (77e-6, 114e-6),
    16: (118e-6, 195e-6),
    32: (155e-6, 273e-6),
    64: (173e-6, 314e-6),
    128: (192e-6, 369e-6),
    256: (194e-6, 360e-6),
}
#: The setup of `DEEPEP_LL`: tokens per GPU, hidden, top-k.
DEEPEP_LL_SETUP = (128, 7168, 8)
#: DeepEP low-latency at a small batch: H200 SXM, one node (EP8), 4 tokens per GPU, hidden 7168, top-8 of 256:
#: dispatch 15.750 us, combine 14.054 us (ai-dynamo/aiconfigurator's H200 DeepEP LL kernel database,
#: systems/data/h200_sxm/sglang/0.5.6.post2/wideep_deepep_ll_perf, the row quoted in a public DeepSeek-V4 layerwise
#: profiling runbook; the same runbook measures 12.65 / 12.99 us on an H20 node). With the EP8 row of `DEEPEP_LL`
#: it separates the fixed cost from the byte time (`ll_fixed_s`).
LL_SMALL_BATCH_S = (15.750e-6, 14.054e-6)
#: The setup of `LL_SMALL_BATCH_S`: GPU preset, tokens per GPU, hidden, top-k (EP8 of 256 experts).
LL_SMALL_BATCH_SETUP = ("H200-SXM", 4, 7168, 8)


def a2a_mode(backend: str, phase: str) -> str:
    """The DeepEP mode a step of ``phase`` runs: ``low_latency`` for decode, ``normal`` otherwise (SGLang's
    ``--deepep-mode auto``: sgl-project/sglang PR #4767); ``""`` for the NCCL backend."""
    if backend not in A2A_BACKENDS:
        raise MoesimError(f"a2a_backend '{backend}' is not one of {', '.join(A2A_BACKENDS)}", "use deepep or nccl")
    if backend == "nccl":
        return ""
    return "low_latency" if phase == "decode" else "normal"


def token_bytes(hidden: int, direction: str, mode: str, act_bytes: float, fp8_dispatch: bool) -> float:
    """Bytes of one token (normal mode) or one selection (low-latency) on the wire.

    Dispatch: ``hidden x (1 + 4/128)`` with fp8, else ``hidden x act_bytes``; low-latency dispatch adds
    `LL_HEADER_BYTES`. Combine: ``hidden x act_bytes``.
    """
    if direction == "combine":
        return hidden * act_bytes
    body = hidden * FP8_DISPATCH_BYTES_PER_ELEMENT if fp8_dispatch else hidden * act_bytes
    return body + (LL_HEADER_BYTES if mode == "low_latency" else 0.0)


def selection_fanout(
    num_gpus: int,
    gpus_per_node: int,
    top_k: int,
    num_experts: int,
    loads: np.ndarray | None = None,
    phys_to_log: np.ndarray | None = None,
    replica_choice: str = "random",
) -> Fanout:
    """Low-latency fan-out: (token, expert) selections sent or received per source token by the busiest GPU.

    Each selection is its own message (no deduplication per GPU or node). Per GPU ``g`` the expected selections per
    token it holds are ``s_g`` (the inclusion probabilities of its slots, `model.routing`); it receives ``s_g`` from
    each other source and sends a token's selections for the other GPUs. Returns, per link class, the larger of
    sent and received on the GPU where it is largest. Under the ``nearest`` replica rule (`model.routing.
    slot_routes`) each source node's selections go to its own replicas' GPUs.
    """
    placement = default_placement(num_experts) if phys_to_log is None else np.asarray(phys_to_log)
    pi = np.full(num_experts, top_k / num_experts) if loads is None else inclusion_probs(np.asarray(loads), top_k)
    node_size = min(gpus_per_node, num_gpus)
    if replica_choice != "random" and num_gpus % node_size == 0 and np.bincount(placement).max() > 1:
        return selection_fanout_by_source(num_gpus, node_size, top_k, num_experts, pi, placement, replica_choice)
    per_gpu = slot_inclusion(pi, placement).reshape(num_gpus, -1).sum(axis=1)  # [G], sums to top_k
    node_of = np.arange(num_gpus) // node_size
    in_node = np.bincount(node_of)[node_of]
    node_sum = np.bincount(node_of, weights=per_gpu)[node_of]
    intra = np.maximum(node_sum - per_gpu, per_gpu * (in_node - 1)).max()
    inter = np.maximum(top_k - node_sum, per_gpu * (num_gpus - in_node)).max() if num_gpus > node_size else 0.0
    return Fanout(intra=float(intra), inter=float(inter))


def selection_fanout_by_source(
    num_gpus: int, node_size: int, top_k: int, num_experts: int, pi: np.ndarray, placement: np.ndarray, rule: str
) -> Fanout:
    """`selection_fanout` under a per-rank replica rule: ``s[n, g]``, the selections one token of node ``n`` sends
    to GPU ``g`` (its GPUs' routes averaged); per GPU the larger of what it sends (its node's row, off itself) and
    receives (every other GPU's row on it), the busiest GPU's per link class."""
    nodes = num_gpus // node_size
    routes = slot_routes(placement, num_experts, num_gpus, node_size, rule)
    sel = np.stack([
        (pi[placement] * routes[n * node_size : (n + 1) * node_size].mean(axis=0)).reshape(num_gpus, -1).sum(axis=1)
        for n in range(nodes)
    ])  # fmt: skip  # [nodes, G]
    node_of = np.arange(num_gpus) // node_size
    mine = sel[node_of]  # [G, G]: what a token on g's node sends to each GPU
    same = node_of[None, :] == node_of[:, None]
    own = mine[np.arange(num_gpus), np.arange(num_gpus)]
    sent_intra = (mine * same).sum(axis=1) - own
    recv_intra = own * (node_size - 1)
    sent_inter = (mine * ~same).sum(axis=1)
    recv_inter = np.array([sel[np.arange(nodes) != node_of[g], g].sum() * node_size for g in range(num_gpus)])
    intra = float(np.maximum(sent_intra, recv_intra).max())
    inter = float(np.maximum(sent_inter, recv_inter).max()) if nodes > 1 else 0.0
    return Fanout(intra=intra, inter=inter)


def ep_a2a_ops(
    group: str,
    count: int,
    *,
    tokens: int,
    hidden: int,
    top_k: int,
    num_experts: int,
    ep: int,
    stage_gpus: int,
    gpus_per_node: int,
    moe_tp: int,
    act_bytes: float,
    backend: str = "nccl",
    phase: str = "mixed",
    fp8_dispatch: bool = False,
    n_group: int = 1,
    topk_group: int = 1,
    loads: np.ndarray | None = None,
    phys_to_log: np.ndarray | None = None,
    replica_choice: str = "random",
) -> tuple[Op, Op]:
    """The EP dispatch and combine ops of one MoE layer set (``ep_dispatch``, ``ep_combine``; kind ``all_to_all``).

    Args:
        group, count: the layer set's label and its layers.
        tokens: tokens of the step over the stage's ``stage_gpus`` GPUs (each dispatches an equal share).
        hidden, top_k, num_experts, n_group, topk_group: the model's routing.
        ep, gpus_per_node, moe_tp: the EP group, the cluster's node size and the expert-TP ways (a token goes to
            each of its expert's ``moe_tp`` slices).
        act_bytes: bytes per activation element.
        backend, phase: `Layout.a2a_backend` and the batch's phase (`a2a_mode`).
        fp8_dispatch: dispatch in fp8 (block-scaled fp8 weights; DeepEP only).
        loads, phys_to_log: expert load shares [E] and placement [S] (None: uniform, contiguous).
        replica_choice: the engine's rule for which replica a token's expert goes to (`model.routing.slot_routes`).

    ``shape`` carries ``backend``, ``mode``, ``direction``, ``token_bytes`` and the NCCL-table coordinates
    ``bytes`` (the per-GPU buffer, the kept share included) and ``gpus``.
    """
    mode = a2a_mode(backend, phase)
    node = max(1, gpus_per_node // moe_tp)
    src_tokens = tokens / stage_gpus
    if mode == "low_latency":
        fan = selection_fanout(ep, node, top_k, num_experts, loads, phys_to_log, replica_choice)
    else:
        fan = token_fanout(ep, node, top_k, num_experts, n_group, topk_group, loads, phys_to_log, replica_choice)
    ops = []
    for direction in ("dispatch", "combine"):
        if mode:
            per_token = token_bytes(hidden, direction, mode, act_bytes, fp8_dispatch) * moe_tp
            payload = "fp8" if fp8_dispatch and direction == "dispatch" else "bf16" if act_bytes == 2 else "fp32"
        else:  # NCCL: moesim's earlier model, unchanged
            per_token, payload = hidden * act_bytes * moe_tp, "bf16" if act_bytes == 2 else "fp32"
        ops.append(
            Op(
                f"ep_{direction}",
                "all_to_all",
                group,
                count,
                0.0,
                0.0,
                0.0,
                0.0,
                intra_bytes=src_tokens * fan.intra * per_token,
                inter_bytes=src_tokens * fan.inter * per_token,
                intra_msgs=1 if fan.intra > 0 else 0,
                inter_msgs=1 if fan.inter > 0 else 0,
                shape={
                    "tokens": tokens,
                    "gpus": ep,
                    "hidden": hidden,
                    "top_k": top_k,
                    # the per-GPU all-to-all buffer, as NCCL benchmarks size it (the share kept local included)
                    "bytes": src_tokens * (fan.intra + fan.inter) * per_token * ep / (ep - 1),
                    "backend": backend,
                    "mode": mode,
                    "direction": direction,
                    "payload": payload,
                    "token_bytes": per_token,
                },
            )
        )
    return ops[0], ops[1]


# ---- DeepEP's published figures -> fixed costs and link efficiencies ------------------------------------------


def _reference_cluster(nodes: int = 1, gpu: str = REFERENCE_GPU) -> ClusterSpec:
    return make_cluster(get_gpu(gpu), nodes=nodes)


@lru_cache(maxsize=1)
def _ll_fit() -> dict[str, tuple[float, float]]:
    """Per direction (fixed cost s, NVLink efficiency at EP8) of the low-latency kernels.

    Two runs of one node: `DEEPEP_LL` at EP8 (128 tokens, H800) and `LL_SMALL_BATCH_S` (4 tokens, H200), each
    ``t = fixed + intra bytes / (efficiency x NVLink bandwidth)``: two equations, two unknowns.
    """
    gpu, *setup = LL_SMALL_BATCH_SETUP
    big, small = _reference_cluster(), _reference_cluster(gpu=gpu)
    out = {}
    for i, direction in enumerate(("dispatch", "combine")):
        rows = []
        runs = ((big, DEEPEP_LL_SETUP, DEEPEP_LL[8][i]), (small, setup, LL_SMALL_BATCH_S[i]))
        for cluster, (tok, hidden, k), t in runs:
            fan = selection_fanout(8, 8, k, 256)
            nbytes = tok * fan.intra * token_bytes(hidden, direction, "low_latency", 2.0, True)
            rows.append((nbytes / cluster.intra_bw, t))  # t = fixed + x / efficiency
        (x1, t1), (x2, t2) = rows
        inv_eff = (t1 - t2) / (x1 - x2)
        out[direction] = (t1 - x1 * inv_eff, 1.0 / inv_eff)
    return out


def ll_fixed_s(direction: str) -> float:
    """Fixed cost of one low-latency dispatch or combine call, s (`_ll_fit`): its kernel's start-up and flag round
    trip, whatever the batch."""
    return _ll_fit()[direction][0]


def normal_fixed_s(direction: str, cluster: ClusterSpec, crosses_nodes: bool) -> float:
    """Fixed cost of one normal-mode call, s: the ``notify_dispatch`` / ``cached_notify_combine`` barrier that
    exchanges the counts (one small-message round of the slowest link class crossed: the cluster's measured
    collective latency, ``intra_latency_s`` or ``inter_latency_s``) plus the data kernel's start-up (`ll_fixed_s`)."""
    _, lat = cluster.link("inter" if crosses_nodes else "intra")
    return ll_fixed_s(direction) + lat


def _normal_logical_bytes(ep: int, direction: str) -> float:
    """Bytes per GPU that DeepEP's tests divide by the time to publish `DEEPEP_NORMAL`'s bandwidth."""
    tok, hidden, k, experts = DEEPEP_NORMAL_SETUP
    per = token_bytes(hidden, direction, "normal", 2.0, True)
    nodes = max(1, ep // 8)
    if nodes == 1:  # received tokens, its own included: every source hits this GPU with P(hit)
        p = hit_probability([np.arange(experts // ep)], k, experts)[0]
        return ep * tok * float(p) * per
    groups = min(nodes, 4)
    per_node = experts // nodes
    node_sets = [np.arange(n * per_node, (n + 1) * per_node) for n in range(nodes)]
    p_node = hit_probability(node_sets, k, experts, nodes, groups)
    return tok * float(p_node.sum()) * per


def _normal_link_bytes(ep: int, direction: str) -> tuple[float, float]:
    """(intra, inter) bytes moesim counts for the busiest GPU in the `DEEPEP_NORMAL` setup at ``ep``."""
    tok, hidden, k, experts = DEEPEP_NORMAL_SETUP
    nodes = max(1, ep // 8)
    group = (nodes, min(nodes, 4)) if nodes > 1 else (1, 1)
    d, c = ep_a2a_ops("", 1, tokens=tok * ep, hidden=hidden, top_k=k, num_experts=experts, ep=ep, stage_gpus=ep,
                      gpus_per_node=8, moe_tp=1, act_bytes=2.0, backend="deepep", phase="prefill", fp8_dispatch=True,
                      n_group=group[0], topk_group=group[1])  # fmt: skip
    op = d if direction == "dispatch" else c
    return op.intra_bytes, op.inter_bytes


@lru_cache(maxsize=1)
def _efficiencies() -> dict[tuple[str, str, str], dict[int, float]]:
    """(mode, direction, link class) -> {EP size: achieved fraction of the H800 link}, from the published times.

    Normal: time = logical bytes / published bandwidth (`_normal_logical_bytes`); the efficiency is moesim's
    bottleneck-class bytes over (time - `normal_fixed_s`), over the H800 link. Low-latency: the published latency;
    EP8 is NVLink-bound (`_ll_fit`), EP16 and up RDMA-bound (selections to other nodes).
    """
    out: dict[tuple[str, str, str], dict[int, float]] = {}
    for i, direction in enumerate(("dispatch", "combine")):
        for ep, (link, *bws) in DEEPEP_NORMAL.items():
            cluster = _reference_cluster(nodes=max(1, ep // 8))
            t = _normal_logical_bytes(ep, direction) / bws[i]
            intra, inter = _normal_link_bytes(ep, direction)
            nbytes, bw = (intra, cluster.intra_bw) if link == "intra" else (inter, cluster.inter_bw)
            assert bw is not None
            eff = nbytes / (t - normal_fixed_s(direction, cluster, link == "inter")) / bw
            out.setdefault(("normal", direction, link), {})[ep] = eff
        fixed, eff8 = _ll_fit()[direction]
        out.setdefault(("low_latency", direction, "intra"), {})[8] = eff8
        tok, hidden, k = DEEPEP_LL_SETUP
        for ep, times in DEEPEP_LL.items():
            if ep <= 8:
                continue
            cluster = _reference_cluster(nodes=ep // 8)
            fan = selection_fanout(ep, 8, k, ep * 32)
            nbytes = tok * fan.inter * token_bytes(hidden, direction, "low_latency", 2.0, True)
            assert cluster.inter_bw is not None
            out.setdefault(("low_latency", direction, "inter"), {})[ep] = nbytes / (times[i] - fixed) / cluster.inter_bw
    return out


@lru_cache(maxsize=4096)  # pure: `_efficiencies` is a fixed table (the DES asks per layer per step-table entry)
def efficiency(mode: str, direction: str, link: str, ep: int, exclude: int | None = None) -> float:
    """Achieved fraction of a link's bandwidth (0..1] for DeepEP at EP size ``ep`` (`_efficiencies`).

    Between published EP sizes: linear in log2(EP); outside them: the nearest published size (an intra-node call
    takes the largest published intra-node size, 8). ``exclude``: leave that EP size out (held-out checks).
    """
    table = {e: v for e, v in _efficiencies()[(mode, direction, link)].items() if e != exclude}
    if not table:  # held out the only point of its class: the other direction's
        other = "combine" if direction == "dispatch" else "dispatch"
        table = _efficiencies()[(mode, other, link)]
    sizes = sorted(table)
    x = math.log2(max(ep, 1))
    if x <= math.log2(sizes[0]):
        return table[sizes[0]]
    if x >= math.log2(sizes[-1]):
        return table[sizes[-1]]
    hi = next(s for s in sizes if math.log2(s) >= x)
    lo = sizes[sizes.index(hi) - 1]
    f = (x - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
    return (1 - f) * table[lo] + f * table[hi]


@dataclass(frozen=True)
class A2ATime:
    """One DeepEP call's time and its parts.

    Attributes:
        seconds: fixed_s + link_s, s.
        fixed_s: the per-call cost whatever the bytes, s.
        link_s: the slower link class's bytes / achieved bandwidth, s.
        bound: ``intra-link`` or ``inter-link``.
        source: ``deepep-<mode>: ...``, what answered.
    """

    seconds: float
    fixed_s: float
    link_s: float
    bound: str
    source: str


def is_deepep(op: Op) -> bool:
    """Whether ``op`` is an EP all-to-all that DeepEP runs (timed by `deepep_time`, never by an NCCL table)."""
    return op.kind == "all_to_all" and op.shape.get("backend") == "deepep" and bool(op.shape.get("mode"))


def deepep_time(op: Op, cluster: ClusterSpec, exclude_ep: int | None = None) -> A2ATime:
    """The time of one DeepEP dispatch or combine ``op`` on ``cluster`` (see the module docstring).

    ``exclude_ep``: time it with the efficiency table less that EP size (held-out checks in the benchmark).
    """
    s: dict[str, Any] = op.shape
    mode, direction, ep = str(s["mode"]), str(s["direction"]), int(s["gpus"])
    crosses = op.inter_bytes > 0 or op.inter_msgs > 0
    fixed = ll_fixed_s(direction) if mode == "low_latency" else normal_fixed_s(direction, cluster, crosses)
    times = {}
    for link, nbytes in (("intra", op.intra_bytes), ("inter", op.inter_bytes)):
        if nbytes > 0:
            bw, _ = cluster.link(link)
            times[link] = nbytes / (efficiency(mode, direction, link, ep, exclude_ep) * bw)
    link = max(times, key=lambda k: times[k]) if times else "intra"
    link_s = times.get(link, 0.0)
    eff = efficiency(mode, direction, link, ep, exclude_ep)
    src = (
        f"deepep-{mode}: {fixed * 1e6:.1f} us fixed + {link} bytes at {eff:.0%} of the link "
        "(DeepEP's H800 figures, deepseek-ai/DeepEP@docs/legacy.md)"
    )
    return A2ATime(fixed + link_s, fixed, link_s, f"{link}-link", src)


def compute_slowdown(backend: str, mode: str, gpu_key: str) -> float:
    """How much slower computation runs while a DeepEP normal-mode call holds `DEEPEP_NORMAL_SMS` of the GPU's
    SMs: ``SMs / (SMs - 24)`` (1.16 on a 132-SM Hopper); 1.0 for low-latency (no SMs while it waits), for NCCL
    (its kernels are not modelled as taking SMs) and for a GPU whose SM count `GPU_SMS` does not know."""
    sms = GPU_SMS.get(gpu_key)
    if backend != "deepep" or mode != "normal" or sms is None or sms <= DEEPEP_NORMAL_SMS:
        return 1.0
    return sms / (sms - DEEPEP_NORMAL_SMS)
