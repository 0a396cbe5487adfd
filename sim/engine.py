"""The discrete-event serving simulator (SimPy).

Requests arrive (an open-loop process or closed-loop clients), a router sends
each to a replica, and each replica's engine loop runs steps the way vLLM V1
and SGLang schedule them:

- every step has a budget of ``max_tokens`` tokens and ``max_batch``
  sequences; running requests are served first, in admission order (a
  decoding request needs 1 token; a prefilling one the rest of its prompt,
  cut to the budget when prefill is chunked, all-or-nothing when not), then
  waiting requests are admitted first-come first-served while the budget,
  the batch limit and free KV blocks allow;
- the KV cache is paged: a request holds ceil(tokens in cache / block_size)
  blocks; the number of blocks comes from the memory left after weights and
  activations (`model.memory.estimate_memory`); when a step's growth does not
  fit, the most recently admitted requests are preempted and recomputed
  later (vLLM's recompute policy: their cache is freed, they go back to the
  front of the queue and prefill prompt + generated tokens again);
- a request emits a token at the end of every step in which its cache
  reaches its tokens; the first is its TTFT, the gaps are its inter-token
  latencies;
- a step lasts `sim.steptime.StepTimer.sample`: the cost model's op times
  plus this step's routing draw (stragglers, drops, expert fetches);
- pipeline parallelism runs ``pp`` batches in flight: a new batch starts after
  the slowest stage's time, and its tokens land after the whole latency;
- prefill/decode disaggregation: prefill replicas emit the first token, the
  KV cache then travels to a decode replica (bytes / (link bandwidth x the
  prefill replica's TP GPUs) + link latency, one transfer at a time per
  destination), which decodes the rest.

Runs of pure-decode steps with no arrival, completion or admission in between
are processed in one event (each step still gets its own routing draw and
time, and its own row in the step table): this is what makes 10,000 requests
take seconds. A request submitted to the replica during a run (a KV transfer,
a closed-loop client) ends the run after the step in progress.

Before simulating, `check_requests_fit` refuses a workload holding a request no replica could
ever serve (over the model's context, over one replica's KV cache, or an unchunked prompt over
the step budget): such a request would otherwise wait forever. The analytical engine shares it.

Units: seconds, tokens, bytes.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import simpy

from moesim.model import Batch, Layout, estimate_memory, kv_bytes_per_token
from moesim.model.errors import MoesimError
from moesim.sim.scenario import PCIE_BW, Built, Pool
from moesim.sim.steptime import Offload, StepCost, StepTimer
from moesim.sim.workload import generate

#: Most decode steps folded into one event.
MAX_RUN = 64

Progress = Callable[[float, float, str], None]


@dataclass(frozen=True)
class Capacity:
    """What one replica's memory holds.

    Attributes:
        kv_blocks: KV-cache blocks of the replica (all its attention-DP groups).
        kv_tokens: the same in tokens.
        weight_gib: weights resident on the fullest GPU, GiB.
        offload: the expert cache when experts are offloaded (None: all resident).
        verdict: one line on how memory is used.
    """

    kv_blocks: int
    kv_tokens: int
    weight_gib: float
    offload: Offload | None
    verdict: str


def replica_capacity(built: Built, pool: Pool) -> Capacity:
    """KV blocks of one replica of ``pool``, offloading experts if the scenario allows it."""
    m, lay, p, gpu = built.model, pool.layout, built.precision, pool.cluster.gpu
    eng = pool.engine
    probe = Batch.prefill(1, min(eng.max_tokens, 4096))
    mem = estimate_memory(m, lay, gpu, p, mem_fraction=eng.mem_fraction)
    act = 0.0
    try:
        act = max(op.act_bytes for op in StepTimer(m, lay, pool.cluster, p).estimate(probe).ops)
    except MoesimError:
        act = 0.0
    free = mem.usable_bytes - mem.weight_bytes - act
    per_token = mem.kv_bytes_per_token
    off = built.scenario.offload
    offload = None
    weights = mem.weight_bytes
    if off.enabled and m.moe is not None:
        experts = mem.weights_by_component.get("routed_experts", 0.0)
        slots = (m.moe.num_experts // lay.ep) * m.num_moe_layers // lay.pp
        expert_bytes = experts / max(slots, 1)
        resident_other = mem.weight_bytes - experts
        budget = mem.usable_bytes - resident_other - act
        if budget <= 0:
            raise MoesimError(
                f"{m.name} does not fit on {gpu.key} even with every expert offloaded: the other weights need "
                f"{resident_other / 2**30:.1f} GiB of {mem.usable_bytes / 2**30:.1f} GiB usable",
                "use more GPUs, a smaller dtype, or a GPU with more memory",
            )
        cache = off.cache_experts or int(budget * (1 - off.kv_fraction) // expert_bytes)
        cache = max(1, min(cache, slots))
        if cache < slots:
            bw = off.host_bw or PCIE_BW.get(gpu.key, 32e9)
            offload = Offload(cache, expert_bytes, bw)
            weights = resident_other + cache * expert_bytes
            free = mem.usable_bytes - weights - act
    if free <= 0 or (per_token and free < per_token * eng.block_size):
        short = (-free) / 2**30 if free <= 0 else 0.0
        raise MoesimError(
            f"{m.name} ({p.weights}) does not fit on {lay.label()} of {gpu.key}: weights {weights / 2**30:.1f} GiB "
            f"leave no room for a KV cache (short by {short:.1f} GiB)",
            "enable offload, use more GPUs per replica (tp/ep/pp), a smaller dtype or a GPU with more memory",
        )
    tokens_per_group = int(free // per_token) if per_token else 10**9
    blocks = (tokens_per_group // eng.block_size) * lay.dp_attn
    verdict = f"weights {weights / 2**30:.1f} GiB/GPU, KV cache {blocks * eng.block_size:,} tokens per replica" + (
        f", {offload.cache_experts} of {slots} expert slots cached per GPU" if offload else ""
    )
    return Capacity(blocks, blocks * eng.block_size, weights / 2**30, offload, verdict)


def _first_over(need: np.ndarray, room: int) -> tuple[int, int] | None:
    """(index of the first entry of ``need`` [n] above ``room``, how many are), or None when all fit."""
    over = np.flatnonzero(need > room)
    return (int(over[0]), int(over.size)) if over.size else None


def _more(count: int) -> str:
    return f" (and {count - 1:,} more)" if count > 1 else ""


def check_requests_fit(built: Built, requests: pd.DataFrame, caps: dict[str, Capacity]) -> None:
    """Refuse a workload holding a request that no replica could ever serve, before simulating it.

    Both engines call this once they know the requests and each pool's KV cache: a request whose
    tokens exceed the model's context (``max_position_embeddings``, vLLM's rule: prompt + output),
    whose KV cache alone exceeds one replica's (its longest moment holds input + output - 1 tokens;
    a prefill pool holds the prompt only), or whose prompt exceeds ``engine.max_tokens`` when
    prefill is not chunked, would wait forever in the DES and make the analytical model's
    throughput meaningless.

    Args:
        built: the scenario's objects.
        requests: the workload's table (`sim.workload.generate`): request_id, input_tokens, output_tokens.
        caps: each pool role's replica capacity (`replica_capacity`).

    Raises:
        MoesimError: one line naming the first such request (its id and token counts) and the room.
    """
    inp = requests["input_tokens"].to_numpy(np.int64)
    out = requests["output_tokens"].to_numpy(np.int64)
    rid = requests["request_id"].to_numpy()
    m = built.model
    cap_hint = "cap the lengths with workload.max_input / workload.max_output"
    context = m.max_position_embeddings
    if context > 0:
        hit = _first_over(inp + out, context)
        if hit is not None:
            i, n = hit
            raise MoesimError(
                f"workload: request {int(rid[i])} has {int(inp[i]):,} input + {int(out[i]):,} output tokens, "
                f"over {m.name}'s context of {context:,} tokens (max_position_embeddings){_more(n)}",
                f"{cap_hint} so that input + output <= {context:,}",
            )
    for pool in built.pools:
        cap, eng = caps[pool.role], pool.engine
        held = inp if pool.role == "prefill" else inp + out - 1  # tokens in the cache at the request's longest
        blocks = -(-held // eng.block_size)
        hit = _first_over(blocks, cap.kv_blocks)
        if hit is not None:
            i, n = hit
            raise MoesimError(
                f"workload: request {int(rid[i])} needs {int(held[i]):,} tokens of KV cache "
                f"({int(inp[i]):,} input + {int(out[i]):,} output), more than the {cap.kv_tokens:,} tokens "
                f"a {pool.role} replica holds ({pool.layout.label()} of {pool.cluster.gpu.key}){_more(n)}",
                f"{cap_hint}, or give each replica more memory (more GPUs per replica, a smaller "
                "precision.kv_cache, engine.mem_fraction)",
            )
        if not eng.chunked_prefill and pool.role != "decode":
            hit = _first_over(inp, eng.max_tokens)
            if hit is not None:
                i, n = hit
                raise MoesimError(
                    f"workload: request {int(rid[i])} has a {int(inp[i]):,}-token prompt, more than "
                    f"engine.max_tokens {eng.max_tokens:,} with chunked_prefill off{_more(n)}",
                    f"{cap_hint}, raise engine.max_tokens, or set engine.chunked_prefill: true",
                )


def make_timer(built: Built, pool: Pool, cap: Capacity, seed: int) -> StepTimer:
    r = built.scenario.routing
    return StepTimer(
        built.model,
        pool.layout,
        pool.cluster,
        built.precision,
        built.cost_model,
        built.loads,
        built.phys_to_log,
        capacity_factor=r.capacity_factor,
        overlap=r.overlap,
        offload=cap.offload,
        seed=seed,
        max_pairs=pool.engine.max_tokens * (built.model.moe.top_k if built.model.moe else 1),
    )


class _Requests:
    """Every request's state, as arrays indexed by request id."""

    def __init__(self, df: pd.DataFrame) -> None:
        n = len(df)
        self.n = n
        self.arrival = df["arrival_s"].to_numpy(float).copy()
        self.inp = df["input_tokens"].to_numpy(np.int64)
        self.out = df["output_tokens"].to_numpy(np.int64)
        self.comp = np.zeros(n, np.int64)  # tokens in the KV cache
        self.gen = np.zeros(n, np.int64)  # output tokens emitted
        self.replica = np.full(n, -1, np.int64)
        self.prefill_replica = np.full(n, -1, np.int64)
        self.scheduled = np.full(n, np.nan)
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.last = np.full(n, np.nan)
        self.preempt = np.zeros(n, np.int64)
        self.itl: list[np.ndarray] = []


class Replica:
    """One engine (see the module docstring)."""

    def __init__(self, sim: Simulation, index: int, pool: Pool, cap: Capacity, timer: StepTimer) -> None:
        self.sim, self.index, self.pool, self.cap, self.timer = sim, index, pool, cap, timer
        self.env = sim.env
        self.eng = pool.engine
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self.in_flight: set[int] = set()
        self.blocks_used = 0
        self.wake = self.env.event()
        self.busy = np.zeros(pool.layout.num_gpus)
        lay = pool.layout
        # each GPU's expert-parallel rank (its column of the step's per-rank straggler wait)
        self.ep_rank = (np.arange(lay.num_gpus) % lay.stage_gpus) // lay.moe_tp % max(lay.ep, 1)
        self.stage_share = 1.0
        if pool.layout.pp > 1:
            est = timer.estimate(Batch.decode(8, 1024))
            stages = est.stage_seconds()
            self.stage_share = max(stages) / sum(stages)
        self.in_run = False  # inside a folded decode run, which a submitted request cuts short
        self.proc = self.env.process(self.loop())

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running)

    def submit(self, rid: int, front: bool = False) -> None:
        (self.waiting.appendleft if front else self.waiting.append)(rid)
        if self.in_run:  # a request the run did not foresee (a KV transfer, a closed-loop client): end it early
            self.in_run = False
            self.proc.interrupt()
        if not self.wake.triggered:
            self.wake.succeed()

    def _blocks(self, tokens: np.ndarray) -> np.ndarray:
        return -(-tokens // self.eng.block_size)

    def _schedule(self) -> tuple[np.ndarray, np.ndarray]:
        """Choose this step's sequences and their new tokens; preempt and admit. Returns (ids, alloc)."""
        R, eng = self.sim.req, self.eng
        budget = eng.max_tokens
        ids = np.array([r for r in self.running if r not in self.in_flight], np.int64)
        alloc = np.zeros(0, np.int64)
        if ids.size:
            need = R.inp[ids] + R.gen[ids] - R.comp[ids]
            before = np.cumsum(need) - need
            alloc = np.clip(budget - before, 0, need)
            if not eng.chunked_prefill:
                alloc = np.where(alloc < need, 0, alloc)
            if ids.size > eng.max_batch:
                alloc[eng.max_batch :] = 0
            # KV growth: preempt the latest admitted until the step fits
            grow = self._blocks(R.comp[ids] + alloc) - self._blocks(R.comp[ids])
            while ids.size and self.blocks_used + int(grow.sum()) > self.cap.kv_blocks:
                victim = int(ids[-1])
                self._preempt(victim)
                ids, alloc, grow = ids[:-1], alloc[:-1], grow[:-1]
            budget -= int(alloc.sum())
        seqs = int((alloc > 0).sum())
        admitted: list[int] = []
        adm_alloc: list[int] = []
        free = self.cap.kv_blocks - self.blocks_used - (int(grow.sum()) if ids.size else 0)
        while self.waiting and budget > 0 and seqs < eng.max_batch:
            rid = self.waiting[0]
            need = int(R.inp[rid] + R.gen[rid] - R.comp[rid])
            a = min(need, budget) if eng.chunked_prefill else need
            if a > budget:
                break
            blocks = int(self._blocks(np.int64(R.comp[rid] + a)))  # a transferred KV cache needs its blocks too
            if blocks > free:
                break
            self.waiting.popleft()
            self.blocks_used += int(self._blocks(np.int64(R.comp[rid])))
            free -= blocks
            budget -= a
            seqs += 1
            self.running.append(rid)
            admitted.append(rid)
            adm_alloc.append(a)
            if np.isnan(R.scheduled[rid]):
                R.scheduled[rid] = self.env.now
        if admitted:
            ids = np.concatenate([ids, np.array(admitted, np.int64)])
            alloc = np.concatenate([alloc, np.array(adm_alloc, np.int64)])
        keep = alloc > 0
        return ids[keep], alloc[keep]

    def _preempt(self, rid: int) -> None:
        R = self.sim.req
        self.blocks_used -= int(self._blocks(np.int64(R.comp[rid])))
        R.comp[rid] = 0
        R.preempt[rid] += 1
        self.running.remove(rid)
        self.waiting.appendleft(rid)

    def loop(self):
        R = self.sim.req
        while True:
            ids, alloc = self._schedule()
            if not ids.size:
                self.wake = self.env.event()
                yield self.wake
                continue
            waiting0, running0 = len(self.waiting), len(self.running)
            if self._can_run(ids, alloc):
                yield from self._decode_run(ids, waiting0)
                continue
            cached = R.comp[ids].copy()
            decode = int(((alloc == 1) & (R.gen[ids] > 0)).sum())
            cost = self.timer.sample(alloc, cached)
            self.blocks_used += int((self._blocks(cached + alloc) - self._blocks(cached)).sum())
            start = self.env.now
            if self.pool.layout.pp > 1:
                self.in_flight.update(ids.tolist())
                self.env.process(self._land_later(ids, alloc, start + cost.duration_s))
                yield self.env.timeout(cost.duration_s * self.stage_share)
            else:
                yield self.env.timeout(cost.duration_s)
                self._land(ids, alloc)
            self._record(start, cost, ids, alloc, decode, waiting0, running0)

    def _can_run(self, ids: np.ndarray, alloc: np.ndarray) -> bool:
        R = self.sim.req
        return (
            self.pool.layout.pp == 1
            and not self.waiting
            and self.timer.offload is None
            and bool((alloc == 1).all())
            and bool((R.comp[ids] == R.inp[ids] + R.gen[ids] - 1).all())
            and len(self.running) == ids.size
        )

    def _decode_run(self, ids: np.ndarray, waiting0: int):
        """Up to MAX_RUN decode steps of the same sequences, ending at the next arrival, completion or KV limit."""
        R = self.sim.req
        left = int((R.out[ids] - R.gen[ids]).min())
        steps = max(1, min(left, MAX_RUN))
        cached0 = R.comp[ids].copy()
        growth = np.array(
            [int((self._blocks(cached0 + j + 1) - self._blocks(cached0 + j)).sum()) for j in range(steps)]
        )
        fits = int(np.searchsorted(self.blocks_used + np.cumsum(growth) > self.cap.kv_blocks, True))
        if fits == 0:  # not even one step fits: preempt the latest admitted and schedule again
            self._preempt(int(ids[-1]))
            return
        steps = min(steps, fits)
        ones = np.ones(ids.size, np.int64)
        costs = self.timer.sample_run(ones, cached0[None, :] + np.arange(steps)[:, None])
        start = self.env.now
        durations = np.array([c.duration_s for c in costs])
        ends = start + np.cumsum(durations)
        k = min(steps, int(np.searchsorted(ends, self.sim.next_arrival())) + 1)
        self.in_run = True
        try:
            yield self.env.timeout(float(ends[k - 1] - start))
        except simpy.Interrupt:  # a request was submitted: finish the step in progress, then schedule again
            k = min(k, int(np.searchsorted(ends, self.env.now, side="right")) + 1)
            yield self.env.timeout(max(0.0, float(ends[k - 1]) - self.env.now))
        finally:
            self.in_run = False
        durations, ends, costs = durations[:k], ends[:k], costs[:k]
        self.blocks_used += int(growth[:k].sum())
        # every sequence got k tokens, one per step
        itl = np.empty((k, ids.size))
        itl[0] = ends[0] - R.last[ids]
        if k > 1:
            itl[1:] = durations[1:, None]
        first_mask = R.gen[ids] == 0
        R.itl.append(itl[:, ~first_mask].ravel())
        R.first[ids[first_mask]] = ends[0]
        R.comp[ids] += k
        R.gen[ids] += k
        R.last[ids] = ends[-1]
        for j, cost in enumerate(costs):
            self._record(float(ends[j] - durations[j]), cost, ids, ones, ids.size, waiting0)
        self._finish_done(ids)

    def _land_later(self, ids: np.ndarray, alloc: np.ndarray, at: float):
        yield self.env.timeout(max(0.0, at - self.env.now))
        self.in_flight.difference_update(ids.tolist())
        self._land(ids, alloc)
        if not self.wake.triggered:
            self.wake.succeed()

    def _land(self, ids: np.ndarray, alloc: np.ndarray) -> None:
        """Apply a finished step: caches grow, tokens are emitted, requests finish."""
        R, now = self.sim.req, self.env.now
        R.comp[ids] += alloc
        emit = ids[R.comp[ids] == R.inp[ids] + R.gen[ids]]
        if emit.size:
            had = R.gen[emit] > 0
            R.itl.append(now - R.last[emit[had]])
            R.first[emit[~had]] = now
            R.gen[emit] += 1
            R.last[emit] = now
            self._finish_done(emit)

    def _finish_done(self, ids: np.ndarray) -> None:
        R, now = self.sim.req, self.env.now
        done = ids[R.gen[ids] >= R.out[ids]]
        prefill_pool = self.pool.role == "prefill"
        handoff = ids[(R.gen[ids] == 1) & (R.out[ids] > 1)] if prefill_pool else ids[:0]
        for rid in np.concatenate([done, handoff]).tolist():
            self.blocks_used -= int(self._blocks(np.int64(R.comp[rid])))
            self.running.remove(rid)
        for rid in done.tolist():
            R.finish[rid] = now
            self.sim.on_finish(rid)
        for rid in handoff.tolist():
            self.sim.handoff(rid, self.index)

    def _record(
        self,
        start: float,
        c: StepCost,
        ids: np.ndarray,
        alloc: np.ndarray,
        decode: int,
        waiting: int,
        running: int | None = None,
    ) -> None:
        """Append a step's row; ``waiting`` and ``running`` are counted while it runs (default: running now)."""
        prefill_tokens = int(alloc.sum()) - decode
        phase = "decode" if prefill_tokens == 0 else ("prefill" if decode == 0 else "mixed")
        self.sim.steps.append(
            (
                self.index,
                self.pool.role,
                start,
                c.duration_s,
                phase,
                int(alloc.sum()),
                prefill_tokens,
                decode,
                int(ids.size),
                self.blocks_used / max(self.cap.kv_blocks, 1),
                waiting,
                len(self.running) if running is None else running,
                c.compute_s,
                c.comm_s,
                c.straggler_s,
                c.fetch_s,
                c.dropped_pairs,
                c.pairs,
                c.bytes,
                c.flops,
            )
        )
        wait = c.gpu_wait_s
        # with pp > 1 a GPU works on its stage's share of the step only (steps of a pipeline overlap)
        idle = wait[self.ep_rank] if wait.size == self.pool.layout.ep else 0.0
        self.busy += self.stage_share * (c.duration_s - idle)


STEP_COLUMNS = [
    "replica",
    "pool",
    "start_s",
    "duration_s",
    "phase",
    "tokens",
    "prefill_tokens",
    "decode_seqs",
    "seqs",
    "kv_used_frac",
    "waiting",
    "running",
    "compute_s",
    "comm_s",
    "straggler_s",
    "fetch_s",
    "dropped_pairs",
    "pairs",
    "bytes",
    "flops",
]


@dataclass
class SimResult:
    """What a simulation produced.

    Attributes:
        requests: one row per request (see `sim.metrics`).
        itl: every inter-token latency, s.
        steps: one row per engine step (`STEP_COLUMNS`).
        kv_transfers: prefill-to-decode KV transfers (empty without disaggregation).
        gpu_busy_s: per replica, each GPU's busy seconds.
        capacities: per pool role, its replicas' memory verdict.
        wall_s: wall time of the simulation.
        gpus_per_replica: each replica's GPU count.
    """

    requests: pd.DataFrame
    itl: np.ndarray
    steps: pd.DataFrame
    kv_transfers: pd.DataFrame
    gpu_busy_s: dict[int, np.ndarray]
    capacities: dict[str, Capacity]
    wall_s: float
    gpus_per_replica: dict[int, int]


class Simulation:
    """One run of a built scenario."""

    def __init__(self, built: Built, seed: int | None = None, progress: Progress | None = None) -> None:
        self.built = built
        seed = built.scenario.seed if seed is None else seed
        self.env = simpy.Environment()
        self.df = generate(built.workload, seed=seed, base_dir=built.base_dir)
        if self.df.empty:
            raise MoesimError("the workload has no requests", "set workload.requests >= 1 or give a non-empty trace")
        self.req = _Requests(self.df)
        self.steps: list[tuple[Any, ...]] = []
        self.transfers: list[tuple[Any, ...]] = []
        self.progress = progress
        self.done = 0
        self.closed = built.workload.arrival == "closed"
        self.replicas: dict[str, list[Replica]] = {}
        self.all: list[Replica] = []
        self.capacities = {pool.role: replica_capacity(built, pool) for pool in built.pools}
        check_requests_fit(built, self.df, self.capacities)
        for p_i, pool in enumerate(built.pools):
            cap = self.capacities[pool.role]
            reps = []
            for _ in range(pool.replicas):
                timer = make_timer(built, pool, cap, seed * 1000 + len(self.all) + 17 * p_i)
                rep = Replica(self, len(self.all), pool, cap, timer)
                reps.append(rep)
                self.all.append(rep)
            self.replicas[pool.role] = reps
        self.entry = self.replicas.get("mixed") or self.replicas["prefill"]
        self._rr = {"entry": 0, "decode": 0}
        self._arrivals = self.req.arrival
        self._next = 0
        self.kv_per_token = kv_bytes_per_token(built.model, Layout(), built.precision)
        self.links: dict[int, simpy.Resource] = {}
        self.waiters: dict[int, simpy.Event] = {}
        self.wall0 = time.perf_counter()
        self._last_progress = 0.0

    # ---- arrivals and routing --------------------------------------------------------------------
    def next_arrival(self) -> float:
        if self.closed or self._next >= self.req.n:
            return math.inf
        return float(self._arrivals[self._next])

    def _route(self, pool: list[Replica], key: str) -> Replica:
        if self.built.scenario.router == "round_robin":
            rep = pool[self._rr[key] % len(pool)]
            self._rr[key] += 1
            return rep
        return min(pool, key=lambda r: (r.outstanding, r.index))

    def _arrive(self, rid: int) -> None:
        rep = self._route(self.entry, "entry")
        self.req.replica[rid] = rep.index
        self.req.prefill_replica[rid] = rep.index if rep.pool.role == "prefill" else -1
        rep.submit(rid)

    def open_loop(self):
        for rid in range(self.req.n):
            wait = self._arrivals[rid] - self.env.now
            if wait > 0:
                yield self.env.timeout(wait)
            self._next = rid + 1
            self._arrive(rid)

    def client(self, first: int, stride: int):
        think = self.built.workload.think_s
        for rid in range(first, self.req.n, stride):
            self.req.arrival[rid] = self.env.now
            done = self.env.event()
            self.waiters[rid] = done
            self._arrive(rid)
            yield done
            if think:
                yield self.env.timeout(think)

    def on_finish(self, rid: int) -> None:
        self.done += 1
        ev = self.waiters.pop(rid, None)
        if ev is not None:
            ev.succeed()
        if self.progress and (self.done == self.req.n or time.perf_counter() - self._last_progress > 0.2):
            self._last_progress = time.perf_counter()
            self.progress(self.done, self.req.n, f"{self.env.now:.1f} s simulated")

    # ---- disaggregation --------------------------------------------------------------------------
    def handoff(self, rid: int, src: int) -> None:
        self.env.process(self._transfer(rid, src))

    def _transfer(self, rid: int, src: int):
        R = self.req
        dst = self._route(self.replicas["decode"], "decode")
        R.replica[rid] = dst.index
        pool = self.all[src].pool
        d = self.built.scenario.disaggregation
        assert d is not None
        cl = self.built.cluster
        kind = d.kv_link
        if kind == "auto":
            kind = "intra" if self.built.gpus <= cl.gpus_per_node else "inter"
        bw, lat = cl.link(kind)
        nbytes = float(R.comp[rid]) * self.kv_per_token
        seconds = nbytes / (bw * pool.layout.tp * pool.layout.pp) + lat
        link = self.links.setdefault(dst.index, simpy.Resource(self.env, capacity=1))
        with link.request() as req:
            yield req
            start = self.env.now
            yield self.env.timeout(seconds)
        self.transfers.append((rid, src, dst.index, start, seconds, nbytes))
        dst.submit(rid)

    # ---- run --------------------------------------------------------------------------------------
    def run(self) -> SimResult:
        w = self.built.workload
        if self.closed:
            for c in range(min(w.concurrency or 1, self.req.n)):
                self.env.process(self.client(c, w.concurrency or 1))
        else:
            self.env.process(self.open_loop())
        self.env.run()
        R = self.req
        req = pd.DataFrame(
            {
                "request_id": self.df["request_id"].to_numpy(),
                "replica": R.replica,
                "prefill_replica": R.prefill_replica,
                "arrival_s": R.arrival,
                "input_tokens": R.inp,
                "output_tokens": R.out,
                "scheduled_s": R.scheduled,
                "first_token_s": R.first,
                "finish_s": R.finish,
                "preemptions": R.preempt,
            }
        )
        req["queue_s"] = req["scheduled_s"] - req["arrival_s"]
        req["ttft_s"] = req["first_token_s"] - req["arrival_s"]
        req["tpot_s"] = (req["finish_s"] - req["first_token_s"]) / (req["output_tokens"] - 1).where(
            req["output_tokens"] > 1
        )
        req["e2e_s"] = req["finish_s"] - req["arrival_s"]
        steps = pd.DataFrame(self.steps, columns=STEP_COLUMNS)
        transfers = pd.DataFrame(
            self.transfers, columns=["request_id", "src_replica", "dst_replica", "start_s", "duration_s", "bytes"]
        )
        itl = np.concatenate(R.itl) if R.itl else np.zeros(0)
        return SimResult(
            req,
            itl,
            steps,
            transfers,
            {r.index: r.busy for r in self.all},
            self.capacities,
            time.perf_counter() - self.wall0,
            {r.index: r.pool.layout.num_gpus for r in self.all},
        )


def simulate(built: Built, seed: int | None = None, progress: Progress | None = None) -> SimResult:
    """Run the discrete-event simulation of ``built``; see the module docstring."""
    return Simulation(built, seed, progress).run()
