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
    """

    f: tuple[float, float, float, float]
    b: tuple[float, float, float, float]
    w: tuple[float, float, float, float]
    dp_f: float = 0.0
    dp_b: float = 0.0
    act_bytes: float = 0.0


@dataclass
class TaskRecord:
    """One executed task: where, when and what its time was made of.

    ``parts``: seconds of compute, straggler, exposed EP and TP
    communication, and exposed ZeRO communication; they sum to ``end - start``.
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
    f: tuple[float, ...] | None, b: tuple[float, ...] | None, overlap: bool, sm_frac: float, dp: float
) -> tuple[float, tuple[float, float, float, float, float]]:
    """Seconds of a task and its parts: one pass, or a forward and a backward together."""
    passes = [x for x in (f, b) if x is not None]
    comp = sum(x[0] for x in passes)
    strag = sum(x[1] for x in passes)
    ep = sum(x[2] for x in passes)
    tp = sum(x[3] for x in passes)
    if overlap and len(passes) == 2:
        slow = 1.0 / (1.0 - sm_frac)
        comp, strag = comp * slow, strag * slow
        comm = ep + tp
        exposed = max(0.0, comm - comp - strag)
        ep, tp = (exposed * ep / comm, exposed * tp / comm) if comm > 0 else (0.0, 0.0)
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
            dp = 0.0
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
            if t.kind in ("B", "FB"):
                mb, s, zb = (t.mb2, t.s2, False) if t.kind == "FB" else (t.mb, t.s, t.zb)
                if s < sched.stages - 1:
                    waits.append(ev(done_b, (mb, s + 1)))
                else:
                    waits.append(ev(done_f, (mb, s)))
                c = costs[s]
                b_cost = c.b if zb else tuple(x + y for x, y in zip(c.b, c.w, strict=True))
                dp += c.dp_b
            if t.kind == "W":
                if not pending_w:
                    raise ValueError(f"rank {r}: a W task with no deferred weight gradients")
                mb, s = pending_w.pop(0)
                b_cost = costs[s].w
            for w in waits:
                if not w.processed:
                    yield w
            t0 = env.now
            dur, parts = _duration(f_cost, b_cost, overlap and t.kind == "FB", sm_frac, dp)
            if t.kind in ("F", "FB"):
                held_bytes += costs[t.s].act_bytes
                held_n += 1
                peak_bytes[r] = max(peak_bytes[r], held_bytes)
                peak_n[r] = max(peak_n[r], held_n)
            yield env.timeout(dur)
            rec = TaskRecord(r, t.kind, t.mb, t.s, t0, env.now, parts, t.mb2, t.s2)
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
