"""Pipeline schedules and their discrete-event simulation (SimPy).

A micro-batch crosses ``S`` pipeline stages; stage ``s`` of micro-batch
``mb`` runs on rank ``rank_of(mb, s)``. Each rank runs an ordered list of
`Task`s:

- ``F``: forward of (mb, s); waits for F(mb, s-1) (plus the point-to-point
  send when s-1 ran on another rank);
- ``B``: backward of (mb, s) — input gradients, recomputation and, unless
  ``zb`` (zero bubble), the weight gradients; waits for B(mb, s+1) (plus the
  send), or F(mb, S-1) on the last stage;
- ``W``: the weight gradients of this rank's oldest ``zb`` backward (FIFO, as
  DualPipe's ``WeightGradStore``);
- ``FB``: a forward and a backward of two micro-batches run together (chunk
  pairs): with overlap on, each one's communication hides under the other's
  computation.

Schedules (`schedule`): GPipe, 1F1B, Megatron-Core's interleaved 1F1B over
``v`` model chunks per rank (stage ``s`` on rank ``s mod pp``, warm-up
``2 (pp - r - 1) + (v - 1) pp`` forwards), and DualPipe (DeepSeek-V3: two
directions of micro-batches, rank r holding stage r of one and stage pp-1-r
of the other; the eight phases of ``deepseek-ai/DualPipe``'s ``step``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

from moesim.model.errors import MoesimError


@dataclass(frozen=True)
class Task:
    """One entry of a rank's program (see the module docstring).

    Attributes:
        kind: ``F``, ``B``, ``W`` or ``FB``.
        mb, s: the micro-batch and stage (for ``FB``: the forward's).
        mb2, s2: the backward's micro-batch and stage (``FB`` only).
        zb: ``B`` (or the backward of ``FB``) leaves its weight gradients to a later ``W``.
    """

    kind: str
    mb: int = -1
    s: int = -1
    mb2: int = -1
    s2: int = -1
    zb: bool = False


@dataclass(frozen=True)
class Schedule:
    """Per-rank programs of one step.

    Attributes:
        name: the schedule's name.
        pp: ranks of the pipeline.
        stages: pipeline stages a micro-batch crosses (``pp x v``; ``pp`` for DualPipe).
        microbatches: micro-batches per step.
        orders: per rank, its tasks in program order.
        rank_of: the rank running stage ``s`` of micro-batch ``mb``.
    """

    name: str
    pp: int
    stages: int
    microbatches: int
    orders: list[list[Task]]
    rank_of: Callable[[int, int], int] = field(compare=False)


def one_f_one_b(pp: int, m: int) -> Schedule:
    """1F1B (PipeDream-flush): pp - r - 1 warm-up forwards, then one forward one backward."""
    orders = []
    for r in range(pp):
        warm = min(pp - r - 1, m)
        tasks = [Task("F", i, r) for i in range(warm)]
        for i in range(m - warm):
            tasks += [Task("F", warm + i, r), Task("B", i, r)]
        tasks += [Task("B", i, r) for i in range(m - warm, m)]
        orders.append(tasks)
    return Schedule("1f1b", pp, pp, m, orders, lambda mb, s: s)


def gpipe(pp: int, m: int) -> Schedule:
    """GPipe: every forward, then every backward."""
    orders = [[Task("F", i, r) for i in range(m)] + [Task("B", i, r) for i in range(m)] for r in range(pp)]
    return Schedule("gpipe", pp, pp, m, orders, lambda mb, s: s)


def interleaved(pp: int, m: int, v: int) -> Schedule:
    """Megatron-Core's interleaved 1F1B: ``v`` chunks per rank, groups of ``pp`` micro-batches per chunk."""
    if m % pp:
        raise MoesimError(f"interleaving needs micro-batches ({m}) to be a multiple of pp={pp}", "change the batch")
    total = m * v

    def at(k: int, forward: bool) -> tuple[int, int]:
        group, within = divmod(k, pp * v)
        chunk = within // pp
        if not forward:
            chunk = v - 1 - chunk
        return group * pp + within % pp, chunk

    orders = []
    for r in range(pp):
        warm = min((pp - r - 1) * 2 + (v - 1) * pp, total)
        tasks: list[Task] = []
        for k in range(warm):
            mb, c = at(k, True)
            tasks.append(Task("F", mb, c * pp + r))
        for i in range(total - warm):
            mb, c = at(warm + i, True)
            tasks.append(Task("F", mb, c * pp + r))
            mb, c = at(i, False)
            tasks.append(Task("B", mb, c * pp + r))
        for i in range(total - warm, total):
            mb, c = at(i, False)
            tasks.append(Task("B", mb, c * pp + r))
        orders.append(tasks)
    return Schedule("interleaved", pp, pp * v, m, orders, lambda mb, s: s % pp)


def dualpipe(pp: int, m: int) -> Schedule:
    """DualPipe (DeepSeek-V3): micro-batches 0..m/2-1 flow rank 0 -> pp-1, the rest pp-1 -> 0.

    Follows the eight phases of ``DualPipe.step`` in ``deepseek-ai/DualPipe``
    (``dualpipe/dualpipe.py``): nF0, nF0F1, nB1W1F1 (zero bubble), the main
    nF0B1F1B0 of overlapped chunk pairs, nB1F1B0, nB1B0 (zero bubble from the
    middle), nWB0, nW. Phase 0 on the first half of the ranks is the forward
    direction; on the second half it is the reverse one.
    """
    if pp % 2 or m % 2 or m < 2 * pp:
        raise MoesimError(
            f"DualPipe needs an even pp and an even number of micro-batches >= 2 x pp; got pp={pp}, {m}",
            "raise the global batch or use an even pp",
        )
    half_m, nh = m // 2, pp // 2

    def rank_of(mb: int, s: int) -> int:
        return s if mb < half_m else pp - 1 - s

    orders = []
    for r in range(pp):
        hr = min(r, pp - 1 - r)
        second = r >= nh
        middle = r in (nh - 1, nh)
        nxt_f, nxt_b = [0, 0], [0, 0]

        def direction(phase: int) -> int:
            return phase ^ int(second)  # noqa: B023

        def stage(phase: int) -> int:
            return r if direction(phase) == 0 else pp - 1 - r  # noqa: B023

        def fwd(phase: int) -> tuple[int, int]:
            d = direction(phase)
            mb = nxt_f[phase] + d * half_m  # noqa: B023
            nxt_f[phase] += 1  # noqa: B023
            return mb, stage(phase)

        def bwd(phase: int) -> tuple[int, int]:
            d = direction(phase)
            mb = nxt_b[phase] + d * half_m  # noqa: B023
            nxt_b[phase] += 1  # noqa: B023
            return mb, stage(phase)

        tasks: list[Task] = []

        def f(phase: int) -> None:
            tasks.append(Task("F", *fwd(phase)))  # noqa: B023

        def b(phase: int, zb: bool = False) -> None:
            mb, s = bwd(phase)
            tasks.append(Task("B", mb, s, zb=zb))  # noqa: B023

        def fb(pf: int, pb: int) -> None:
            mb, s = fwd(pf)
            mb2, s2 = bwd(pb)
            tasks.append(Task("FB", mb, s, mb2, s2))  # noqa: B023

        for _ in range((nh - hr - 1) * 2):  # 1: nF0
            f(0)
        for _ in range(hr + 1):  # 2: nF0F1
            f(0)
            f(1)
        for _ in range(nh - hr - 1):  # 3: nB1W1F1
            b(1, zb=True)
            tasks.append(Task("W"))
            f(1)
        for i in range(half_m - pp + hr + 1):  # 4: nF0B1F1B0
            if i == 0 and middle:
                f(0)
                b(1)
            else:
                fb(0, 1)
            fb(1, 0)
        for _ in range(nh - hr - 1):  # 5: nB1F1B0
            b(1)
            fb(1, 0)
        step6, zb = hr + 1, False  # 6: nB1B0
        for i in range(step6):
            if i == step6 // 2 and hr % 2 == 1:
                zb = True
            b(1, zb)
            if i == step6 // 2 and hr % 2 == 0:
                zb = True
            b(0, zb)
        for _ in range(nh - hr - 1):  # 7: nWB0
            tasks.append(Task("W"))
            b(0, zb=True)
        tasks += [Task("W") for _ in range(hr + 1)]  # 8: nW
        orders.append(tasks)
    return Schedule("dualpipe", pp, pp, m, orders, rank_of)


def combined_1f1b(sched: Schedule) -> Schedule:
    """``sched`` (1F1B or interleaved 1F1B) with Megatron-Core's EP all-to-all overlap: every steady-phase
    backward and the forward that follows it run together as one ``FB`` task.

    Megatron's ``--overlap-moe-expert-parallel-comm`` ("combined 1F1B": NVIDIA/Megatron-LM@megatron/core/
    pipeline_parallel/combined_1f1b.py ``combined_1f1b_schedule_for_interleaved_pipelining`` and
    ``..._for_no_pipelining``; Megatron-MoE-ModelZoo design_docs MR3074 and MR3470) merges the forward step of one
    micro-batch and the backward step of another, layer by layer, each one's dispatch and combine on a
    communication stream under the other's computation; the first forward and the last backward run alone. A
    rank's program keeps its order: a ``B`` directly followed by an ``F`` becomes ``FB(F, B)``, so the pair's
    forward never feeds its own backward (which would deadlock) and warm-up forwards and cool-down backwards stay
    single. The steady phase's first forward thereby runs alone, as Megatron's one extra warm-up micro-batch under
    the overlap (``num_warmup_microbatches + 1`` in megatron/core/pipeline_parallel/schedules.py; pinned by
    tests/test_train_a2a_megatron.py). GPipe has no such pairs and DualPipe makes its own (``overlap: chunk_pairs``).
    """
    if sched.name not in ("1f1b", "interleaved"):
        raise ValueError(f"combined 1F1B needs a 1f1b or interleaved schedule, got {sched.name}")
    orders = []
    for tasks in sched.orders:
        out: list[Task] = []
        i = 0
        while i < len(tasks):
            t = tasks[i]
            nxt = tasks[i + 1] if i + 1 < len(tasks) else None
            if t.kind == "B" and not t.zb and nxt is not None and nxt.kind == "F":
                out.append(Task("FB", nxt.mb, nxt.s, t.mb, t.s))
                i += 2
                continue
            out.append(t)
            i += 1
        orders.append(out)
    return Schedule(sched.name + "+a2a_overlap", sched.pp, sched.stages, sched.microbatches, orders, sched.rank_of)


def schedule(kind: str, pp: int, m: int, v: int = 1) -> Schedule:
    """The `Schedule` named ``kind`` (``gpipe``, ``1f1b``, ``interleaved``, ``dualpipe``)."""
    if kind == "1f1b":
        return one_f_one_b(pp, m)
    if kind == "gpipe":
        return gpipe(pp, m)
    if kind == "interleaved":
        return interleaved(pp, m, v)
    if kind == "dualpipe":
        return dualpipe(pp, m)
    raise MoesimError(f"unknown schedule {kind!r}", "use gpipe, 1f1b, interleaved or dualpipe")


@dataclass(frozen=True)
class StageCost:
    """Seconds of one micro-batch's passes through one stage on its rank.

    Each pass is (compute, straggler, ep_comm, tp_comm) seconds; ``b``
    holds input gradients and recomputation, ``w`` the weight gradients.
    ``dp_f`` / ``dp_b``: data-parallel communication each forward /
    backward triggers (ZeRO-2/3), run on its own stream beside the task.
    ``act_bytes``: activations the stage keeps per micro-batch until its backward.
    ``nic_f`` / ``nic_b`` / ``nic_w``: seconds of each pass's EP all-to-alls during which
    the GPU's NIC carries their inter-node bytes (`train_cost.ep_nic_seconds`).
    ``a2a_exposed``: seconds the stage's layers add beyond their computation when a forward and a backward of the
    stage run as Megatron's combined 1F1B pair (`train_cost.combined_layer_seconds`; ``overlap: ep_a2a``).
    """

    f: tuple[float, float, float, float]
    b: tuple[float, float, float, float]
    w: tuple[float, float, float, float]
    dp_f: float = 0.0
    dp_b: float = 0.0
    act_bytes: float = 0.0
    nic_f: float = 0.0
    nic_b: float = 0.0
    nic_w: float = 0.0
    a2a_exposed: float = 0.0


@dataclass
class TaskRecord:
    """One executed task: where, when and what its time was made of.

    ``parts``: seconds of compute, straggler, exposed EP and TP
    communication, and exposed ZeRO communication; they sum to ``end - start``.
    ``ep_nic``: seconds its EP all-to-alls keep the NIC busy (inter-node bytes at full NIC bandwidth).
    ``nic_s``: of ``parts[2]``, the exposed seconds its EP traffic lost to data-parallel
    traffic on the same NIC (``ep_extra`` of `run_pipeline`).
    """

    rank: int
    kind: str
    mb: int
    s: int
    start: float
    end: float
    parts: tuple[float, float, float, float, float]
    mb2: int = -1
    s2: int = -1
    ep_nic: float = 0.0
    nic_s: float = 0.0

    @property
    def key(self) -> tuple[int, str, int, int, int, int]:
        """(rank, kind, mb, s, mb2, s2): the task's identity across runs of one schedule."""
        return (self.rank, self.kind, self.mb, self.s, self.mb2, self.s2)


@dataclass
class PipelineRun:
    """The outcome of `run_pipeline`.

    Attributes:
        tasks: every executed task.
        rank_end: per rank, when its last task ended (s).
        makespan: when the last task of any rank ended (s).
        peak_act_bytes: per rank, the most activation bytes held at once.
        peak_inflight: per rank, the most micro-batch stages held at once.
        last_grad_task: per (rank, stage), the task that finished the stage's
            weight gradients (its last backward, or its last ``W``).
    """

    tasks: list[TaskRecord]
    rank_end: list[float]
    makespan: float
    peak_act_bytes: list[float]
    peak_inflight: list[int]
    last_grad_task: dict[tuple[int, int], TaskRecord]


def _duration(
    f: tuple[float, ...] | None,
    b: tuple[float, ...] | None,
    overlap: bool,
    sm_frac: float,
    dp: float,
    ep_extra: float = 0.0,
    hide_tp: bool = True,
    paired_ep: float | None = None,
) -> tuple[float, tuple[float, float, float, float, float]]:
    """Seconds of a task and its parts: one pass, or a forward and a backward together.

    ``ep_extra``: seconds added to its EP communication (NIC contention), hidden like the rest under chunk pairs.
    ``hide_tp``: an overlapped pair hides its tensor-parallel collectives too (DualPipe's chunk pairs); False:
    only the EP all-to-alls (Megatron's combined 1F1B runs TP collectives on the computation stream).
    ``paired_ep``: for a combined-1F1B pair, the EP seconds it exposes, from the layer-level two-stream schedule
    (`StageCost.a2a_exposed`, SM sharing included); replaces the pair's EP column and the whole-pair overlap.
    """
    passes = [x for x in (f, b) if x is not None]
    comp = sum(x[0] for x in passes)
    strag = sum(x[1] for x in passes)
    ep = sum(x[2] for x in passes) + ep_extra
    tp = sum(x[3] for x in passes)
    if overlap and len(passes) == 2 and paired_ep is not None:
        ep = paired_ep + ep_extra
    elif overlap and len(passes) == 2:
        slow = 1.0 / (1.0 - sm_frac)
        comp, strag = comp * slow, strag * slow
        if hide_tp:
            comm = ep + tp
            exposed = max(0.0, comm - comp - strag)
            ep, tp = (exposed * ep / comm, exposed * tp / comm) if comm > 0 else (0.0, 0.0)
        else:
            ep = max(0.0, ep - comp - strag)
    busy = comp + strag + ep + tp
    extra = max(0.0, dp - busy)
    return busy + extra, (comp, strag, ep, tp, extra)


def run_pipeline(
    sched: Schedule,
    costs: list[StageCost],
    p2p_s: float,
    *,
    overlap: bool = False,
    sm_frac: float = 0.0,
    env: simpy.Environment | None = None,
    ready: Callable[[int, int], simpy.Event | None] | None = None,
    start: float = 0.0,
    ep_extra: dict[tuple[int, str, int, int, int, int], float] | None = None,
    hide_tp: bool = True,
) -> PipelineRun:
    """Simulate one step of ``sched`` (see the module docstring).

    Args:
        sched: the per-rank programs.
        costs: per stage, its `StageCost` (len ``sched.stages``).
        p2p_s: seconds to send a micro-batch's activations to another rank.
        overlap: chunk pairs (``FB``) hide communication under computation.
        sm_frac: share of SMs communication takes while overlapped.
        env: a SimPy environment to run in (a fresh one by default).
        ready: per (rank, stage), an event the stage's first forward waits for
            (ZeRO's parameter gather), or None.
        start: simulation time the step starts at.
        ep_extra: per task (`TaskRecord.key`), seconds its EP communication loses to
            data-parallel traffic on the same NIC (`train.nic_contention`).
        hide_tp: overlapped pairs hide tensor-parallel collectives too (`_duration`).
    """
    if len(costs) != sched.stages:
        raise ValueError(f"need {sched.stages} stage costs, got {len(costs)}")
    env = env or simpy.Environment(initial_time=start)
    done_f: dict[tuple[int, int], simpy.Event] = {}
    done_b: dict[tuple[int, int], simpy.Event] = {}

    def ev(table: dict[tuple[int, int], simpy.Event], key: tuple[int, int]) -> simpy.Event:
        e = table.get(key)
        if e is None:
            e = table[key] = env.event()
        return e

    records: list[TaskRecord] = []
    rank_end = [start] * sched.pp
    peak_bytes = [0.0] * sched.pp
    peak_n = [0] * sched.pp
    last_grad: dict[tuple[int, int], TaskRecord] = {}
    started: set[tuple[int, int]] = set()

    def deliver(target: simpy.Event, delay: float) -> simpy.events.ProcessGenerator:
        yield env.timeout(delay)
        target.succeed()

    def finish(table: dict[tuple[int, int], simpy.Event], mb: int, s: int, rank: int, nxt: int) -> None:
        """Signal (mb, s) done; a consumer on another rank sees it after the send."""
        target = ev(table, (mb, s))
        if 0 <= nxt < sched.stages and sched.rank_of(mb, nxt) != rank and p2p_s > 0:
            env.process(deliver(target, p2p_s))
        else:
            target.succeed()

    def rank_proc(r: int) -> simpy.events.ProcessGenerator:
        held_bytes, held_n = 0.0, 0
        pending_w: list[tuple[int, int]] = []
        for t in sched.orders[r]:
            waits = []
            f_cost = b_cost = None
            dp = nic = 0.0
            if t.kind in ("F", "FB"):
                if t.s > 0:
                    waits.append(ev(done_f, (t.mb, t.s - 1)))
                if ready is not None and (r, t.s) not in started:
                    started.add((r, t.s))
                    e = ready(r, t.s)
                    if e is not None:
                        waits.append(e)
                f_cost = costs[t.s].f
                dp += costs[t.s].dp_f
                nic += costs[t.s].nic_f
            if t.kind in ("B", "FB"):
                mb, s, zb = (t.mb2, t.s2, False) if t.kind == "FB" else (t.mb, t.s, t.zb)
                if s < sched.stages - 1:
                    waits.append(ev(done_b, (mb, s + 1)))
                else:
                    waits.append(ev(done_f, (mb, s)))
                c = costs[s]
                b_cost = c.b if zb else tuple(x + y for x, y in zip(c.b, c.w, strict=True))
                dp += c.dp_b
                nic += c.nic_b + (0.0 if zb else c.nic_w)
            if t.kind == "W":
                if not pending_w:
                    raise ValueError(f"rank {r}: a W task with no deferred weight gradients")
                mb, s = pending_w.pop(0)
                b_cost = costs[s].w
                nic += costs[s].nic_w
            for w in waits:
                if not w.processed:
                    yield w
            t0 = env.now
            pair = overlap and t.kind == "FB"
            extra = ep_extra.get((r, t.kind, t.mb, t.s, t.mb2, t.s2), 0.0) if ep_extra else 0.0
            paired = None
            if pair and not hide_tp:  # Megatron's combined 1F1B: the layer-level two-stream pair (`StageCost`)
                paired = 0.5 * (costs[t.s].a2a_exposed + costs[t.s2].a2a_exposed)
            dur, parts = _duration(f_cost, b_cost, pair, sm_frac, dp, extra, hide_tp, paired)
            lost = dur - _duration(f_cost, b_cost, pair, sm_frac, dp, 0.0, hide_tp, paired)[0] if extra > 0 else 0.0
            if t.kind in ("F", "FB"):
                held_bytes += costs[t.s].act_bytes
                held_n += 1
                peak_bytes[r] = max(peak_bytes[r], held_bytes)
                peak_n[r] = max(peak_n[r], held_n)
            yield env.timeout(dur)
            rec = TaskRecord(r, t.kind, t.mb, t.s, t0, env.now, parts, t.mb2, t.s2, nic, lost)
            records.append(rec)
            if t.kind in ("F", "FB"):
                finish(done_f, t.mb, t.s, r, t.s + 1)
            if t.kind in ("B", "FB"):
                mb, s, zb = (t.mb2, t.s2, False) if t.kind == "FB" else (t.mb, t.s, t.zb)
                finish(done_b, mb, s, r, s - 1)
                if zb:
                    pending_w.append((mb, s))
                else:
                    held_bytes -= costs[s].act_bytes
                    held_n -= 1
                    last_grad[(r, s)] = rec
            if t.kind == "W":
                held_bytes -= costs[s].act_bytes
                held_n -= 1
                last_grad[(r, s)] = rec
        rank_end[r] = env.now

    procs = [env.process(rank_proc(r)) for r in range(sched.pp)]
    try:
        env.run(until=simpy.AllOf(env, procs))
    except RuntimeError as exc:  # no events left before every rank finished
        raise RuntimeError(f"schedule {sched.name} deadlocked: {exc}") from None
    return PipelineRun(records, rank_end, max(rank_end), peak_bytes, peak_n, last_grad)


# ---- stage layouts: which units (embedding, decoder layers, MTP layers, LM head) each pipeline stage runs ----

#: Megatron-Core's ``--pipeline-model-parallel-layout`` symbols (NVIDIA/Megatron-LM@megatron/core/transformer/
#: pipeline_parallel_layer_layout.py): ``E`` the embedding, ``t`` a decoder layer, ``m`` a multi-token-prediction
#: layer, ``L`` the LM head and loss; ``|`` ends a stage; ``(...)*n`` and ``t*n`` repeat; commas and spaces are ignored.
LAYOUT_SYMBOLS = frozenset("EtmL")


def _expand_layout(text: str) -> str:
    """``"Et*3|(tt|)*2mL"`` -> ``"Ettt|tt|tt|mL"`` (repetitions expanded, separators kept)."""
    import re

    limit = 100_000  # symbols after expansion: far above any model's layers

    def times(body: str, n: str) -> str:
        if len(n) > 6 or len(body) * int(n) > limit:
            raise MoesimError(
                f"layout.pipeline_layout {text!r}: a repetition expands past {limit:,} symbols",
                "repeat each group at most as many times as there are stages",
            )
        return body * int(n)

    s = text.replace(",", "").replace(" ", "")
    group = re.compile(r"\(([^()]*)\)\*(\d+)")
    while True:
        s2 = group.sub(lambda g: times(g.group(1), g.group(2)), s)
        if len(s2) > limit:
            raise MoesimError(f"layout.pipeline_layout {text!r} expands past {limit:,} symbols", "shorten it")
        if s2 == s:
            break
        s = s2
    return re.sub(r"([EtmL])\*(\d+)", lambda g: times(g.group(1), g.group(2)), s)


def parse_pipeline_layout(text: str, stages: int, num_layers: int, mtp: int) -> list[list[int]]:
    """Units of each pipeline stage from a Megatron layout string (see `LAYOUT_SYMBOLS`).

    Units: 0 the embedding, 1..L the decoder layers, L+1..L+D the MTP layers, L+D+1 the LM head
    (L = ``num_layers``, D = ``mtp``). Stages are listed in virtual-stage order (stage ``c x pp + r``
    is chunk ``c`` of rank ``r``), as Megatron lists them. `MoesimError` when the string does not
    place exactly every unit once, in order, over ``stages`` stages.
    """
    where = f"layout.pipeline_layout {text!r}"
    s = _expand_layout(text)
    bad = sorted(set(s) - LAYOUT_SYMBOLS - {"|"})
    if bad:
        raise MoesimError(
            f"{where}: unknown symbols {''.join(bad)}",
            "use E (embedding), t (decoder layer), m (MTP layer), L (loss), | between stages, (..)*n to repeat",
        )
    parts = s.split("|")
    if len(parts) != stages:
        raise MoesimError(
            f"{where} has {len(parts)} stages, the layout needs {stages}",
            "give one '|'-separated stage per pipeline stage (pp x virtual_stages; pp for DualPipe)",
        )
    counts = {c: s.count(c) for c in "EtmL"}
    if counts["t"] != num_layers:
        raise MoesimError(
            f"{where} places {counts['t']} decoder layers, the model has {num_layers}",
            f"make the stage sizes add up to {num_layers} 't'",
        )
    if counts["m"] != mtp:
        raise MoesimError(
            f"{where} places {counts['m']} MTP layers, the scenario trains mtp_layers={mtp}",
            f"put {mtp} 'm' in the layout (or set mtp_layers: {counts['m']})",
        )
    if counts["E"] != 1 or not parts[0].startswith("E") or counts["L"] != 1 or not parts[-1].endswith("L"):
        raise MoesimError(
            f"{where}: the embedding E must open the first stage and the loss L close the last, once each",
            "e.g. 'Et*3|(tt|)*29,m|L'",
        )
    out: list[list[int]] = []
    layer, m = 1, num_layers + 1
    for part in parts:
        units: list[int] = []
        for c in part:
            if c == "E":
                units.append(0)
            elif c == "t":
                units.append(layer)
                layer += 1
            elif c == "m":
                if layer != num_layers + 1:
                    raise MoesimError(f"{where}: an MTP layer before the last decoder layer", "put every m after the t")
                units.append(m)
                m += 1
            else:
                units.append(num_layers + mtp + 1)
        out.append(units)
    return out


def split_stage_units(
    num_layers: int,
    stages: int,
    *,
    pp: int,
    mtp: int = 0,
    first: int | None = None,
    last: int | None = None,
    account_embedding: bool = False,
    account_loss: bool = False,
) -> list[list[int]]:
    """Units of each pipeline stage (units as in `parse_pipeline_layout`), Megatron-Core's even split and its options.

    Without options: layers as even as possible, earlier stages taking the extra layer. ``first`` /
    ``last``: decoder layers of the first / last pipeline rank (Megatron's
    ``--decoder-first-pipeline-num-layers`` / ``--decoder-last-pipeline-num-layers``), the other ranks
    sharing the rest evenly, each rank's layers split evenly over its ``stages / pp`` chunks.
    ``account_embedding`` / ``account_loss``: the embedding / the loss counts as one layer in the split
    (``--account-for-embedding-in-pipeline-split``, ``--account-for-loss-in-pipeline-split``), so the first /
    last stage holds one decoder layer fewer; Megatron requires the counted layers to divide evenly.
    MTP layers join the last stage (Megatron's post-process stage). `MoesimError` when the sizes do not add up.
    """
    v = stages // pp
    if first is not None or last is not None:
        f, la = first or 0, last or 0
        middle = pp - (first is not None) - (last is not None)
        rest = num_layers - f - la
        if rest < 0 or (middle == 0 and rest != 0) or (middle > 0 and rest % middle):
            raise MoesimError(
                f"layout.first_stage_layers={first} and last_stage_layers={last} leave {rest} of the {num_layers} "
                f"layers for {middle} other pipeline ranks: the stage sizes do not add up to the layers",
                f"pick first and last so that {num_layers} - first - last splits evenly over the other ranks",
            )
        per_rank = [rest // middle if middle else 0] * pp
        if first is not None:
            per_rank[0] = f
        if last is not None:
            per_rank[-1] = la
        for r, n in enumerate(per_rank):
            if n % v:
                raise MoesimError(
                    f"pipeline rank {r} gets {n} layers, not a multiple of its {v} virtual stages",
                    "pick first/last stage layers that divide by virtual_stages (Megatron requires it)",
                )
        sizes = [per_rank[s % pp] // v for s in range(stages)]
    elif account_embedding or account_loss:
        total = num_layers + int(account_embedding) + int(account_loss)
        if total % stages:
            raise MoesimError(
                f"{num_layers} layers + {int(account_embedding)} embedding + {int(account_loss)} loss = {total} do "
                f"not split evenly over {stages} pipeline stages",
                "Megatron's account-for-embedding/loss split needs an even split: change pp or virtual_stages",
            )
        sizes = [total // stages] * stages
        sizes[0] -= int(account_embedding)
        sizes[-1] -= int(account_loss)
        if min(sizes) < 0:
            raise MoesimError(f"{stages} stages are too many for {num_layers} layers", "use fewer pipeline stages")
    else:
        base, extra = divmod(num_layers, stages)
        sizes = [base + (1 if s < extra else 0) for s in range(stages)]
    out, start = [], 1
    for n in sizes:
        out.append(list(range(start, start + n)))
        start += n
    out[0].insert(0, 0)
    out[-1] += list(range(num_layers + 1, num_layers + mtp + 2))
    return out
