"""Two-batch overlap as SGLang runs it: the MoE layers' time when two micro-batches take turns on one GPU.

A step is split into micro-batches A and B. Each runs the same per-layer list of operations, cut at yield points
into stages; one compute stream runs the two lists' stages in turn, B starting ``delta`` stages after A (SGLang
`batch_overlap.operations.execute_overlapped_operations`: A runs ``delta`` stages alone, then A and B alternate,
then B runs its last ``delta`` alone). An expert-parallel dispatch or combine is *issued* by one stage (DeepEP's
``dispatch_a`` / ``combine_a``) and *waited for* by a later stage of the same micro-batch (``dispatch_b`` /
``combine_b``): while it is in flight the stream runs whatever stages come in between, the other micro-batch's,
and when the waiting stage starts before the transfer has landed the stream stalls until it has. So each transfer
hides only behind the stage(s) between its issue and its wait, not behind a whole layer of the other
micro-batch's computation.

The operation lists (`STRATEGIES`) are SGLang's for DeepSeek-style MoE layers (sgl-project/sglang
``python/sglang/srt/batch_overlap/operations_strategy.py``: ``_compute_moe_deepseek_blog_decode``, delta 2, and
``_compute_moe_deepseek_blog_prefill``, delta 0), with moesim's ops grouped as SGLang groups them:

- ``prep``: the input norm and attention's preparation (QKV / MLA's down- and up-projections, their norms,
  rotary, MLA's absorbed query projection): SGLang's ``op_comm_prepare_attn`` and ``self_attn.op_prepare``;
- ``core``: the attention kernel with the KV-cache write, MLA's value absorption and the output projection,
  then the post-attention norm, router and top-k (``self_attn.op_core``, ``op_comm_prepare_mlp``,
  ``mlp.op_gate``, ``mlp.op_select_experts``);
- ``shared``: the shared experts; ``experts``: the routed experts' grouped GEMMs.

In decode (low-latency DeepEP) a micro-batch's dispatch hides behind its own shared experts and the other's
``prep``, its combine behind the other's ``core`` only; SGLang's blog measures the consequence ("dispatch times
of ~0.17ms per layer" against 0.06 ms of SM work in DeepEP's unit test, and a combine twice DeepSeek's when
attention is shorter: lm-sys/lm-sys.github.io blog/2025-05-05-large-scale-ep.md, "Detail Breakdown").

Transfers run one at a time in issue order (one DeepEP buffer, one communication stream). While one is in flight a
normal-mode DeepEP kernel holds SMs, so computation progresses ``slow`` times slower
(`model.a2a.compute_slowdown`; 1 for low-latency mode, whose receive waits hold no SMs). In prefill SGLang also caps
DeepGEMM at the SMs DeepEP leaves for the whole overlapped forward (``deep_gemm_num_sms``, set by
``_compute_moe_deepseek_blog_prefill`` and applied by ``two_batch_overlap._model_forward_tbo``), so the
block-scaled fp8 GEMMs bound by their SMs (``capped``) take ``slow`` times as long with or without a transfer in
flight. Residual adds and the MoE output's scatter are not ops in moesim's decomposition and take no time here.
vLLM's dual-batch overlap has an order of its own (``vllm_dbo``, vllm-project/vllm docs/design/dbo.md): the step
timer takes it for a ``vllm`` engine, SGLang's for any other. vLLM also reserves SMs for DeepEP's high-throughput
kernels under it (``VLLM_DBO_COMM_SMS``, 20 by default); whether that caps its block-fp8 GEMMs as SGLang's
DeepGEMM cap does depends on which GEMM kernel it runs, so no cap is modelled for it.

Units: seconds. Arrays: [k] per step, [k, L] per step and MoE layer, per micro-batch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: an operation: ("c", class) computation of an op class; ("i", "d" | "c") issue the dispatch / combine;
#: ("w", "d" | "c") wait for it; ("y",) yield to the other micro-batch
Item = tuple[str, ...]
_Y: Item = ("y",)
#: phase -> (delta stages, one MoE layer's operations)
STRATEGIES: dict[str, tuple[int, tuple[Item, ...]]] = {
    # comm_prepare_attn + op_prepare | op_core + comm_prepare_mlp + gate + select_experts | dispatch_a +
    # shared_experts | dispatch_b + experts + combine_a | combine_b | (output + postprocess join the next layer)
    "decode": (
        2,
        (("c", "prep"), _Y, ("c", "core"), _Y, ("i", "d"), ("c", "shared"), _Y, ("w", "d"), ("c", "experts"),
         ("i", "c"), _Y, ("w", "c"), _Y),
    ),
    # comm_prepare_attn + attention + comm_prepare_mlp + gate + select_experts + dispatch_a | dispatch_b +
    # experts + combine_a | shared_experts + combine_b + output + postprocess (joins the next layer's first stage)
    "extend": (
        0,
        (("c", "prep"), ("c", "core"), ("i", "d"), _Y, ("w", "d"), ("c", "experts"), ("i", "c"), _Y,
         ("c", "shared"), ("w", "c")),
    ),
    # vLLM's dual-batch overlap, every phase (vllm-project/vllm docs/design/dbo.md, MLP_SHARED_OVERLAP: "Order: D1
    # send, A0_0, A1_0, D1 recv, D0 send, MLP_1, D0 recv, C1 send, S_1, MLP_0, C1 recv, C0 send, S_0, A0_1, A1_1,
    # C0 recv"; A0 = MLA's QKV projections, A1 = core attention, output projection and MoE gate, S = shared
    # expert): its two micro-batch threads ping-pong at every yield, the second one stage ahead
    "vllm_dbo": (
        1,
        (("c", "prep"), ("c", "core"), _Y, ("i", "d"), _Y, ("w", "d"), _Y, ("c", "experts"), _Y, ("i", "c"),
         ("c", "shared"), _Y, ("w", "c"), _Y),
    ),
}  # fmt: skip
#: op classes of a MoE layer's computation (`StepTimer` parts), in `STRATEGIES`' names
CLASSES = ("prep", "core", "shared", "experts")


def strategy_of(phase: str, engine: str | None = None) -> str:
    """The `STRATEGIES` key of a step's ``phase`` on ``engine`` (an engine kind; None: SGLang's): vLLM's dual-batch
    overlap for ``vllm``, else SGLang's forward mode, ``decode`` or ``extend`` (prefill and mixed batches). A
    `STRATEGIES` key is itself."""
    if phase in STRATEGIES and phase != "decode":
        return phase
    if engine == "vllm":
        return "vllm_dbo"
    return "decode" if phase == "decode" else "extend"


def _stages(ops: tuple[Item, ...], layers: int) -> list[list[tuple[str, str, int]]]:
    """The stages of one micro-batch over ``layers`` MoE layers: the layers' operations concatenated and cut at
    the yields, each operation as (kind, name, layer). A stage may be empty (the decode list's last: SGLang's
    output and postprocess, no time here): it still takes its turn in `_order`."""
    stages: list[list[tuple[str, str, int]]] = [[]]
    for layer in range(layers):
        for item in ops:
            if item[0] == "y":
                stages.append([])
            else:
                stages[-1].append((item[0], item[1], layer))
    return stages


def _order(n: int, delta: int) -> list[tuple[int, int]]:
    """(micro-batch, stage) in the order the stream runs them: SGLang's executor (micro-batch 0 runs ``delta``
    stages alone, then the two alternate); vLLM's two threads ping-pong the same way."""
    out = [(0, j) for j in range(delta)]
    for j in range(delta, n):
        out += [(0, j), (1, j - delta)]
    return out + [(1, j) for j in range(n - delta, n)]


def layers_time(
    phase: str,
    comp: dict[str, np.ndarray],
    dispatch: np.ndarray,
    combine: np.ndarray,
    slow: float = 1.0,
    capped: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Seconds [k] the stream takes for the MoE layers of ``k`` steps under two-batch overlap: `stages_time`, in
    closed form for SGLang's decode and vLLM's dual-batch overlap (``phase``: a phase or a `STRATEGIES` key).

    In SGLang's decode order one transfer is in flight at a time and no wait falls inside another transfer's
    window, so the step is both micro-batches' computation plus each transfer's excess over the computation
    between its issue and its wait, ``max(t - w, t (1 - 1/slow))``: A's dispatch of layer l behind its own shared
    experts and B's ``prep`` of layer l, its combine behind B's ``core``; B's behind its shared experts and A's
    ``prep`` / ``core`` of layer l + 1 (after the last layer: its shared experts; nothing). vLLM's order has the
    same two properties (`_vllm_closed`). The same values as `stages_time` (tests/test_tbo.py), in a few array
    operations instead of a pass over every stage.
    """
    strategy = strategy_of(phase)
    if capped is not None or strategy == "extend":
        return stages_time(phase, comp, dispatch, combine, slow, capped)
    if strategy == "vllm_dbo":
        return _vllm_closed(comp, dispatch, combine, slow)
    keep = 1.0 - 1.0 / slow
    flat = (comp["prep"], comp["core"], comp["shared"], dispatch, combine)
    if all(np.shape(v)[1] == 1 for v in flat):  # the step timer's case: only the experts differ by layer
        p, co, s, d, c = (np.asarray(v)[:, 0] for v in flat)
        e = np.asarray(comp["experts"])
        n = e.shape[1] if e.shape[1] > 1 else np.broadcast_shapes(*(np.shape(v) for v in comp.values()))[1]
        e_sum = e.sum(axis=1) if e.shape[1] > 1 else e[:, 0] * n
        layer = np.maximum(d - (s + p), d * keep) + np.maximum(c - co, c * keep)
        last = np.maximum(d - s, d * keep) + np.maximum(c, c * keep)  # B after the last layer: shared; nothing
        return 2.0 * (n * (p + co + s) + e_sum) + (2 * n - 1) * layer + last
    shape = np.broadcast_shapes(dispatch.shape, combine.shape, *(np.shape(v) for v in comp.values()))
    p, co, s, e = (np.broadcast_to(comp[name], shape) for name in CLASSES)
    d, c = np.broadcast_to(dispatch, shape), np.broadcast_to(combine, shape)
    zero = np.zeros((shape[0], 1))
    p_next, co_next = np.concatenate([p[:, 1:], zero], axis=1), np.concatenate([co[:, 1:], zero], axis=1)
    excess = (
        np.maximum(d - (s + p), d * keep)
        + np.maximum(c - co, c * keep)
        + np.maximum(d - (s + p_next), d * keep)
        + np.maximum(c - co_next, c * keep)
    )
    return 2.0 * (p + co + s + e).sum(axis=1) + excess.sum(axis=1)


def _vllm_closed(comp: dict[str, np.ndarray], dispatch: np.ndarray, combine: np.ndarray, slow: float) -> np.ndarray:
    """`layers_time` under vLLM's dual-batch overlap: per layer, the leading micro-batch's dispatch hides behind
    the other's ``prep`` + ``core``, its combine behind its own shared expert and the other's experts; the other's
    dispatch behind the leader's experts, its combine behind its shared expert and the leader's ``prep`` + ``core``
    of the next layer (after the last layer: its shared expert alone)."""
    shape = np.broadcast_shapes(dispatch.shape, combine.shape, *(np.shape(v) for v in comp.values()))
    p, co, s, e = (np.broadcast_to(comp[name], shape) for name in CLASSES)
    d, c = np.broadcast_to(dispatch, shape), np.broadcast_to(combine, shape)
    keep = 1.0 - 1.0 / slow
    att = p + co
    att_next = np.concatenate([att[:, 1:], np.zeros((shape[0], 1))], axis=1)
    excess = (
        np.maximum(d - att, d * keep)
        + np.maximum(c - (s + e), c * keep)
        + np.maximum(d - e, d * keep)
        + np.maximum(c - (s + att_next), c * keep)
    )
    return 2.0 * (att + s + e).sum(axis=1) + excess.sum(axis=1)


def stages_time(
    phase: str,
    comp: dict[str, np.ndarray],
    dispatch: np.ndarray,
    combine: np.ndarray,
    slow: float = 1.0,
    capped: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Seconds [k] the stream takes for the MoE layers of ``k`` steps under two-batch overlap, stage by stage.

    Args:
        phase: the step's phase, or a `STRATEGIES` key (`strategy_of`).
        comp: one micro-batch's computation per op class (`CLASSES`), each [k, L] or broadcastable to it, s.
        dispatch, combine: one micro-batch's dispatch and combine per layer [k, L] (or broadcastable), s, as they
            take alone.
        slow: computation's slowdown while a transfer is in flight (>= 1).
        capped: of each class (`CLASSES`; [k, L] or broadcastable, s) the part that runs on SMs held back for the
            transfers all along (DeepGEMM under SGLang's prefill overlap, `steptime._sm_capped`): it takes ``slow``
            times as long whether a transfer is in flight or not, and runs first in its operation. None: none.

    A few steps (the discrete-event simulator's prefill and mixed steps come one at a time) run in Python floats,
    many in arrays: the same operations either way.
    """
    shape = np.broadcast_shapes(dispatch.shape, combine.shape, *(np.shape(v) for v in comp.values()))
    k, n_layers = shape
    cols = [np.broadcast_to(comp[name], shape) for name in CLASSES]
    cols += [np.broadcast_to(dispatch, shape), np.broadcast_to(combine, shape)]
    cols += [np.broadcast_to(capped[name], shape) if capped else np.zeros(shape) for name in CLASSES]
    prog = _program(strategy_of(phase), n_layers)
    if k <= _SCALAR_ROWS:
        return np.array([_run_row(prog, [c[j].tolist() for c in cols], slow) for j in range(k)])
    now, free = np.zeros(k), np.zeros(k)  # the compute stream's clock; when the communication stream is free
    done = [now] * 4  # each micro-batch's last dispatch and combine: when it lands
    for kind, col, layer, slot in prog:
        x = cols[col][:, layer]
        if kind == 0:
            if slow == 1.0:
                now = now + x
            else:  # the capped part; then the part of the rest that overlaps the transfer in flight, `slow` x slower
                g = cols[col + _CAP][:, layer]
                now, x = now + g * slow, x - g
                busy = np.maximum(free - now, 0.0)
                now = np.where(x * slow <= busy, now + x * slow, now + busy + x - busy / slow)
        elif kind == 1:
            free = done[slot] = np.maximum(now, free) + x
        else:
            now = np.maximum(now, done[slot])
    return now


#: at most this many steps go through `stages_time` in Python floats (`_run_row`)
_SCALAR_ROWS = 8
#: a class's column to its capped part's column in `stages_time`'s columns
_CAP = len(CLASSES) + 2


@lru_cache(maxsize=32)
def _program(strategy: str, n_layers: int) -> tuple[tuple[int, int, int, int], ...]:
    """The stream's operations in the order it runs them (SGLang's executor over the two micro-batches' stages):
    (kind: 0 compute, 1 issue, 2 wait; column: `CLASSES` then dispatch, combine; layer; the transfer's slot:
    micro-batch x 2 + (0 dispatch, 1 combine)). A micro-batch waits for each transfer before it issues the next
    of its kind, so one slot per kind and micro-batch holds it."""
    delta, ops = STRATEGIES[strategy]
    stages = _stages(ops, n_layers)
    kinds = {"c": 0, "i": 1, "w": 2}
    column = {**{name: j for j, name in enumerate(CLASSES)}, "d": len(CLASSES), "c": len(CLASSES) + 1}
    out = []
    for mb, j in _order(len(stages), delta):
        for kind, name, layer in stages[j]:
            slot = 2 * mb + (name == "c") if kind != "c" else 0
            out.append((kinds[kind], column[name], layer, slot))
    return tuple(out)


def _run_row(prog: tuple[tuple[int, int, int, int], ...], cols: list[list[float]], slow: float) -> float:
    """`stages_time` of one step, its columns as lists of floats [10][L]."""
    now = free = 0.0
    done = [0.0] * 4
    for kind, col, layer, slot in prog:
        x = cols[col][layer]
        if kind == 0:
            if slow == 1.0:
                now += x
            else:
                g = cols[col + _CAP][layer]
                now, x = now + g * slow, x - g
                busy = free - now if free > now else 0.0
                now = now + x * slow if x * slow <= busy else now + busy + x - busy / slow
        elif kind == 1:
            free = done[slot] = (now if now > free else free) + x
        elif done[slot] > now:
            now = done[slot]
    return now


def steady_layer_s(
    strategy: str,
    comp: dict[str, float],
    dispatch: float,
    combine: float,
    slow: float = 1.0,
    capped: dict[str, float] | None = None,
) -> float:
    """Seconds one MoE layer adds to the stream in a long run of identical layers under two-batch overlap: the
    stage program (`stages_time`) over three such layers less over two, so the first and last layers' edges
    (micro-batch A alone at the start, B's last transfers with nothing left to hide them) cancel. What an expert
    placement changes in one layer (its experts' and transfers' times) is priced by this (`placement.layertime`).

    Args:
        strategy: a `STRATEGIES` key (`strategy_of`).
        comp: one micro-batch's computation of the layer per op class (`CLASSES`), s.
        dispatch, combine: one micro-batch's dispatch and combine of the layer as they take alone, s.
        slow: computation's slowdown while a transfer is in flight (>= 1).
        capped: of each class the SM-capped part (see `stages_time`), s; None: none.
    """
    cols = [[float(comp[name])] * 3 for name in CLASSES] + [[float(dispatch)] * 3, [float(combine)] * 3]
    cols += [[float((capped or {}).get(name, 0.0))] * 3 for name in CLASSES]
    return _run_row(_program(strategy, 3), cols, slow) - _run_row(_program(strategy, 2), cols, slow)
