"""One serving replica's engine loop: the step scheduler, paged KV blocks, preemption and folded decode runs.

`Replica` runs the vLLM V1 / SGLang-style schedule described in `sim.serving.engine`: a step budget
of ``max_tokens`` tokens and ``max_batch`` sequences, running requests first, first-come first-served
admission while KV blocks allow, recompute preemption of the latest admitted, and runs of up to
`MAX_RUN` pure-decode steps folded into one SimPy event. `_Requests` holds every request's state as
arrays [n] indexed by request id (times in seconds, lengths in tokens). A replica talks to its
simulation only through the `Host` protocol, so this module does not import the engine.

Prefix caching (vLLM V1 automatic prefix caching, SGLang's radix cache), when the engine profile has it on:

- a request with a shared prefix (``prefix_id`` >= 0, ``prefix_tokens``; `sim.serving.workload`) whose
  prefix is in this replica's cache starts with those tokens already computed: they skip prefill and count
  as cached tokens for attention. Only full KV blocks are cached (vLLM hashes full blocks of ``block_size``
  tokens, vllm-project/vllm@vllm/v1/core/kv_cache_utils.py: hash_block_tokens), and a prompt that hits
  entirely still recomputes its last token to get logits (vllm-project/vllm@vllm/v1/core/kv_cache_manager.py:
  get_computed_blocks caps the hit at prompt length - 1): a hit is min(prefix, prompt - 1) // block_size
  full blocks;
- a prefix enters the cache once a request has computed its full blocks; its blocks then belong to the
  cache, shared by every running request that uses it (counted once). A prefix no running request uses is
  free to evict: its blocks are taken back, least recently used first, when requests need KV blocks (vLLM's
  free-block queue evicts cached blocks LRU; SGLang's radix cache evicts LRU leaves). KV usage counts
  referenced blocks only, as vLLM's ``kv_cache_usage`` does;
- with a declared ``engine.prefix_hit_rate`` r instead, every request finds min(round(r x prompt),
  prompt - 1) tokens cached (a measured rate: no block rounding, no cache capacity); it wins over the
  requests' prefix ids.

``_Requests.cached`` holds each request's hit at its first admission (vLLM's ``num_cached_tokens``).

Admission with an overlapping scheduler (the profile's ``overlap``: vLLM's async scheduling, SGLang's overlap
scheduler): the engine decides step n+1's batch while the GPU runs step n (vllm-project/vllm@vllm/v1/engine/core.py:
step_with_batch_queue schedules and submits the next batch before it waits for the one in flight), so a request
that reaches the scheduler while step n runs cannot join step n+1, already decided, and is admitted to step n+2 at
the earliest: back to back, a step admits only requests that arrived before the previous step started. With
nothing else to run, the next step is decided at once (the batch queue is empty).

Units: seconds, tokens, KV blocks.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Any, Protocol

import numpy as np
import pandas as pd
import simpy

from moesim.model import Batch
from moesim.sim.serving.capacity import Capacity
from moesim.sim.serving.host import EngineProfile
from moesim.sim.serving.results import StepLog
from moesim.sim.serving.scenario import Pool
from moesim.sim.serving.steptime import StepBlock, StepCost, StepTimer


def cacheable_blocks(prefix_tokens: Any, prompt: Any, block_size: int) -> Any:
    """Full KV blocks of a prompt's shared prefix that the prefix cache can hold for it: min(prefix, prompt - 1) //
    block_size (vLLM caches full blocks only and caps a hit at the prompt less its last token; see the module
    docstring). Ints give an int; arrays [requests] give an array."""
    if isinstance(prefix_tokens, np.ndarray) or isinstance(prompt, np.ndarray):
        return np.minimum(prefix_tokens, np.maximum(np.asarray(prompt) - 1, 0)) // block_size
    return min(int(prefix_tokens), int(prompt) - 1) // block_size


def declared_hit(rate: float, prompt: Any) -> Any:
    """Prompt tokens found in the cache under a declared hit rate: min(round(rate x prompt), prompt - 1). Ints give
    an int; arrays [requests] give an array."""
    if isinstance(prompt, np.ndarray):
        return np.minimum(np.round(rate * prompt), np.maximum(prompt - 1, 0))
    return min(round(rate * prompt), int(prompt) - 1)


#: `StepBlock` fields that are step-table columns of the same name.
_COST_COLUMNS = (
    "duration_s", "compute_s", "comm_s", "straggler_s", "fetch_s", "dropped_pairs", "pairs", "bytes", "flops",
    "scheduler_s", "prepare_s", "sampling_s", "launch_s", "host_s", "scheduler_cpu_s", "prepare_cpu_s",
    "sampling_cpu_s", "launch_cpu_s", "launches", "graphs",
)  # fmt: skip

#: Most decode steps folded into one event.
MAX_RUN = 64
#: `Replica._decode_run`'s shortcuts, each exact or distribution-preserving (tests/test_des_speed_runs.py checks them
#: against the reference, False): FORESEE: an open-loop arrival does not interrupt a run (the run already ends for
#: it) and, with an overlapping scheduler, the run takes the step after the arrival's too (decided before the
#: arrival); CHUNKED: a run's steps are timed in chunks up to the next arrival instead of all MAX_RUN at once.
FORESEE, CHUNKED = True, True


class Host(Protocol):
    """What a `Replica` needs from its simulation (`engine.Simulation`)."""

    env: simpy.Environment
    req: _Requests
    steps: StepLog

    def next_arrival(self) -> float:
        """The next open-loop arrival time, s (inf when none is due)."""
        ...

    def on_finish(self, rid: int) -> None:
        """Request ``rid`` emitted its last token."""
        ...

    def handoff(self, rid: int, src: int) -> None:
        """Request ``rid`` finished prefill on replica ``src``; move its KV cache to a decode replica."""
        ...


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
        # the request path (`sim.serving.metrics.client_times`): when the scheduler sees the request, s
        self.engine_arrival = np.full(n, np.nan)
        # shared prefixes: id (-1: none) and length, tokens
        self.prefix_id = df["prefix_id"].to_numpy(np.int64) if "prefix_id" in df else np.full(n, -1, np.int64)
        self.prefix_tokens = df["prefix_tokens"].to_numpy(np.int64) if "prefix_tokens" in df else np.zeros(n, np.int64)
        self.cached = np.zeros(n, np.int64)  # tokens found in the prefix cache at the first admission
        # the client gave up on it (its timeout, `sim.serving.workload`) before the engine finished it
        self.failed = np.zeros(n, bool)
        self.shared = np.zeros(n, np.int64)  # KV blocks the request uses from the prefix cache (not its own)
        self.pref = np.full(n, -1, np.int64)  # the cached prefix it references (-1: none)


class Replica:
    """One engine (see the module docstring)."""

    def __init__(
        self, sim: Host, index: int, pool: Pool, cap: Capacity, timer: StepTimer, profile: EngineProfile | None = None
    ) -> None:
        self.sim, self.index, self.pool, self.cap, self.timer = sim, index, pool, cap, timer
        self.env = sim.env
        self.eng = pool.engine
        profile = profile if profile is not None else timer.profile
        caching = bool(profile.prefix_caching) if profile is not None else bool(self.eng.prefix_caching)
        self.caching = caching and pool.role != "decode"  # a decode replica receives whole KV caches
        self.declared = self.eng.prefix_hit_rate if self.caching else None
        self.pcache: OrderedDict[int, int] = OrderedDict()  # prefix id -> its KV blocks, least recently used first
        self.prefs: dict[int, int] = {}  # prefix id -> running requests using it
        self.cache_blocks = 0  # blocks held by cached prefixes
        self.evictable = 0  # of them, blocks of prefixes no running request uses
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
        self.aborting: set[int] = set()  # requests whose client gave up, dropped at the next step boundary
        self.run_submits: list[float] = []  # when requests were submitted during the current run, s
        #: the scheduler decides a step while the previous one runs (see the module docstring)
        self.overlap = bool(profile.overlap) if profile is not None else False
        self.last_start, self.last_end = -math.inf, -math.inf  # the latest step's start and end, s
        self.proc = self.env.process(self.loop())

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running)

    def submit(self, rid: int, front: bool = False, foreseen: bool = False) -> None:
        """Queue request ``rid`` (``front``: ahead of the others). ``foreseen``: an open-loop arrival, which a
        folded decode run already ends for (`_decode_run` sizes runs by `Host.next_arrival`), so it does not cut
        the run short."""
        (self.waiting.appendleft if front else self.waiting.append)(rid)
        if self.in_run:
            self.run_submits.append(self.env.now)
            if not (foreseen and FORESEE):  # a request the run did not foresee (a KV transfer, a closed-loop client)
                self.in_run = False
                self.proc.interrupt()
        if not self.wake.triggered:
            self.wake.succeed()

    def abort(self, rid: int) -> None:
        """The client of request ``rid`` gave up (its timeout): a waiting request leaves the queue now; a running one
        finishes the step in progress and is dropped before the next (vLLM and SGLang handle aborts between steps),
        its KV blocks freed. A folded decode run ends after the step in progress, as for an unforeseen request."""
        if rid in self.waiting:
            self.waiting.remove(rid)
            return
        if rid not in self.running:  # finished, handed off, or not here
            return
        self.aborting.add(rid)
        if self.in_run:
            self.in_run = False
            self.proc.interrupt()
        elif not self.wake.triggered:
            self.wake.succeed()

    def _drop_aborted(self) -> None:
        """Drop the aborted requests that no step in flight holds: their KV blocks and prefix-cache holds freed."""
        for rid in sorted(self.aborting):
            if rid in self.in_flight:
                continue
            self.aborting.discard(rid)
            if rid in self.running:
                self._release(rid)
                self.running.remove(rid)

    def _blocks(self, tokens: np.ndarray) -> np.ndarray:
        return self.cap.blocks(tokens, self.eng.block_size)  # chunked-local layers hold their chunk only

    # ---- prefix cache ------------------------------------------------------------------------------------------
    def _pinned(self) -> int:
        """KV blocks of cached prefixes that running requests use (not free to evict)."""
        return self.cache_blocks - self.evictable

    def _lookup(self, rid: int) -> tuple[int, int, int]:
        """What request ``rid`` finds in the prefix cache now: (hit tokens, shared blocks, prefix id or -1)."""
        R = self.sim.req
        if not self.caching or R.comp[rid] != 0:
            return 0, 0, -1
        inp = int(R.inp[rid])
        if self.declared is not None:
            return declared_hit(self.declared, inp), 0, -1
        p = int(R.prefix_id[rid])
        blocks = self.pcache.get(p, 0) if p >= 0 else 0
        if not blocks:
            return 0, 0, -1
        bs = self.eng.block_size
        shared = min(blocks, cacheable_blocks(R.prefix_tokens[rid], inp, bs))
        return shared * bs, shared, (p if shared else -1)

    def _take(self, rid: int, hit: int, shared: int, p: int) -> None:
        """Admit request ``rid`` with ``hit`` tokens from the cache (``shared`` blocks of prefix ``p``)."""
        R = self.sim.req
        if np.isnan(R.scheduled[rid]):
            R.cached[rid] = hit
        if hit <= 0:
            return
        R.comp[rid] = hit
        if p >= 0:
            self._ref(rid, p, shared)
            self.pcache.move_to_end(p)

    def _ref(self, rid: int, p: int, shared: int) -> None:
        R = self.sim.req
        if self.prefs.get(p, 0) == 0:
            self.evictable -= self.pcache[p]
        self.prefs[p] = self.prefs.get(p, 0) + 1
        R.shared[rid], R.pref[rid] = shared, p

    def _release(self, rid: int) -> None:
        """Free request ``rid``'s own KV blocks and its hold on a cached prefix (finish, preemption, handoff)."""
        R = self.sim.req
        self.blocks_used -= int(self._blocks(np.int64(R.comp[rid]))) - int(R.shared[rid])
        p = int(R.pref[rid])
        if p >= 0:
            self.prefs[p] -= 1
            if self.prefs[p] == 0:
                self.evictable += self.pcache[p]
        R.shared[rid], R.pref[rid] = 0, -1

    def _insert(self, ids: np.ndarray) -> None:
        """Cache the prefixes that requests of ``ids`` have now computed (their full blocks move to the cache)."""
        R = self.sim.req
        cand = ids[(R.prefix_id[ids] >= 0) & (R.pref[ids] < 0)]
        bs = self.eng.block_size
        for rid in cand.tolist():
            p = int(R.prefix_id[rid])
            full = cacheable_blocks(R.prefix_tokens[rid], R.inp[rid], bs)
            if p in self.pcache or full <= 0 or R.comp[rid] < full * bs:
                continue
            self.pcache[p] = full
            self.cache_blocks += full
            self.blocks_used -= full  # the request's blocks now belong to the cache, which it references
            self.evictable += full
            self._ref(rid, p, full)

    def _evict(self) -> None:
        """Evict unused cached prefixes, least recently used first, until the blocks in use fit the KV cache."""
        while self.blocks_used + self.cache_blocks > self.cap.kv_blocks and self.evictable > 0:
            p = next(q for q in self.pcache if self.prefs.get(q, 0) == 0)
            blocks = self.pcache.pop(p)
            self.prefs.pop(p, None)
            self.cache_blocks -= blocks
            self.evictable -= blocks

    def kv_used(self) -> float:
        """Share of KV blocks in use: requests' own blocks and cached prefixes that running requests use."""
        return (self.blocks_used + self._pinned()) / max(self.cap.kv_blocks, 1)

    def _cutoff(self) -> float:
        """Latest engine arrival this step may admit, s: with an overlapping scheduler and the previous step just
        ended, the previous step's start (when this step was decided); else now."""
        now = self.env.now
        if self.overlap and self.pool.layout.pp == 1 and self.last_end >= now:
            return self.last_start
        return now

    def _schedule(self, cutoff: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
        """Choose this step's sequences and their new tokens; preempt and admit requests that reached the
        engine by ``cutoff`` (s). Returns (ids, alloc)."""
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
            while ids.size and self.blocks_used + self._pinned() + int(grow.sum()) > self.cap.kv_blocks:
                victim = int(ids[-1])
                self._preempt(victim)
                ids, alloc, grow = ids[:-1], alloc[:-1], grow[:-1]
            budget -= int(alloc.sum())
        seqs = int((alloc > 0).sum())
        admitted: list[int] = []
        adm_alloc: list[int] = []
        free = self.cap.kv_blocks - self.blocks_used - self._pinned() - (int(grow.sum()) if ids.size else 0)
        while self.waiting and budget > 0 and seqs < eng.max_batch:
            rid = self.waiting[0]
            if R.engine_arrival[rid] > cutoff:
                break
            hit, shared, p = self._lookup(rid)
            start = max(int(R.comp[rid]), hit)
            need = int(R.inp[rid] + R.gen[rid]) - start
            a = min(need, budget) if eng.chunked_prefill else need
            if a > budget:
                break
            # its own blocks after this step (a transferred KV cache needs its blocks too; shared ones are cached)
            blocks = int(self._blocks(np.int64(start + a))) - shared
            pinning = self.pcache[p] if p >= 0 and self.prefs.get(p, 0) == 0 else 0  # a hit pins its prefix
            if blocks + pinning > free:
                break
            self.waiting.popleft()
            self._take(rid, hit, shared, p)
            self.blocks_used += int(self._blocks(np.int64(R.comp[rid]))) - int(R.shared[rid])
            free -= blocks + pinning
            budget -= a
            seqs += 1
            self.running.append(rid)
            admitted.append(rid)
            adm_alloc.append(a)
            if np.isnan(R.scheduled[rid]):
                R.scheduled[rid] = self.env.now
        self._evict()
        if admitted:
            ids = np.concatenate([ids, np.array(admitted, np.int64)])
            alloc = np.concatenate([alloc, np.array(adm_alloc, np.int64)])
        keep = alloc > 0
        return ids[keep], alloc[keep]

    def _preempt(self, rid: int) -> None:
        R = self.sim.req
        self._release(rid)
        R.comp[rid] = 0
        R.preempt[rid] += 1
        self.running.remove(rid)
        self.waiting.appendleft(rid)

    def loop(self):
        R = self.sim.req
        while True:
            if self.aborting:
                self._drop_aborted()
            cutoff = self._cutoff()
            ids, alloc = self._schedule(cutoff)
            if not ids.size and self.waiting and cutoff < self.env.now:  # nothing decided ahead: decide now
                ids, alloc = self._schedule(self.env.now)
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
            self._evict()
            start = self.env.now
            if self.pool.layout.pp > 1:
                self.in_flight.update(ids.tolist())
                self.env.process(self._land_later(ids, alloc, start + cost.duration_s))
                yield self.env.timeout(cost.duration_s * self.stage_share)
            else:
                yield self.env.timeout(cost.duration_s)
                self._land(ids, alloc)
            self.last_start, self.last_end = start, self.env.now
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
        # KV blocks the run adds at each step: [steps]
        growth = np.diff(self._blocks(cached0[None, :] + np.arange(steps + 1)[:, None]).sum(axis=1))
        fits = int(np.searchsorted(self.blocks_used + self._pinned() + np.cumsum(growth) > self.cap.kv_blocks, True))
        if fits == 0:  # not even one step fits: preempt the latest admitted and schedule again
            self._preempt(int(ids[-1]))
            return
        steps = min(steps, fits)
        ones = np.ones(ids.size, np.int64)
        start = self.env.now
        # the run ends with the step in which the next arrival reaches the scheduler; with an overlapping scheduler
        # the step after it too, decided while that step ran, before the arrival (see the module docstring)
        arrival, extra = self.sim.next_arrival(), (2 if self.overlap and FORESEE else 1)
        # steps are timed in chunks until one reaches past the arrival (each step's routing is its own draw, so
        # timing them in one block or several is the same): the first chunk sized by the latest step's duration
        last = self.last_end - self.last_start
        guess = (arrival - start) / last if CHUNKED and math.isfinite(arrival) and 0.0 < last < math.inf else math.inf
        chunks: list[StepBlock] = []
        done, t = 0, start
        while done < steps:
            m = steps - done if guess == math.inf else max(1, min(steps - done, math.ceil(1.25 * guess) + extra))
            chunk = self.timer.sample_block(ones, cached0[None, :] + np.arange(done, done + m)[:, None])
            chunks.append(chunk)
            chunk_ends = t + np.cumsum(chunk.duration_s)
            j = int(np.searchsorted(chunk_ends, arrival))  # the arrival's step in this chunk (m: after it)
            need = done + j + extra  # steps the run needs when the arrival falls in this chunk
            done, t = done + m, float(chunk_ends[-1])
            if j < m:
                if done >= need:
                    break
                guess = need - done - extra  # the few steps after the arrival's that the chunk lacks
            else:
                guess = (arrival - t) / max(float(chunk.duration_s.mean()), 1e-12)
        block = chunks[0] if len(chunks) == 1 else StepBlock.concat(chunks)
        durations = block.duration_s
        ends = start + np.cumsum(durations)
        k = min(len(durations), int(np.searchsorted(ends, arrival)) + extra)
        self.in_run = True
        self.run_submits = []
        try:
            yield self.env.timeout(float(ends[k - 1] - start))
        except simpy.Interrupt:  # a request was submitted: finish the step in progress, then schedule again
            k = min(k, int(np.searchsorted(ends, self.env.now, side="right")) + 1)
            yield self.env.timeout(max(0.0, float(ends[k - 1]) - self.env.now))
        finally:
            self.in_run = False
        durations, ends = durations[:k], ends[:k]
        self.last_start, self.last_end = float(ends[-1] - durations[-1]), float(ends[-1])
        self.blocks_used += int(growth[:k].sum())
        self._evict()
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
        starts = ends - durations
        # requests waiting at each step's start: those submitted during the run before it (none before the run)
        waiting = np.searchsorted(np.asarray(self.run_submits), starts, side="right") if self.run_submits else 0
        self._record_block(starts, block, k, int(ids.size), waiting0 + waiting)
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
        if self.caching and self.declared is None:
            self._insert(ids)
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
            self._release(rid)
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
                self.kv_used(),
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
                c.scheduler_s,
                c.prepare_s,
                c.sampling_s,
                c.launch_s,
                c.host_s,
                c.scheduler_cpu_s,
                c.prepare_cpu_s,
                c.sampling_cpu_s,
                c.launch_cpu_s,
                c.launches,
                c.graphs,
                c.padded_batch,
            )
        )
        wait = c.gpu_wait_s
        # with pp > 1 a GPU works on its stage's share of the step only (steps of a pipeline overlap)
        idle = wait[self.ep_rank] if wait.size == self.pool.layout.ep else 0.0
        # the GPUs idle while the step's exposed host time (scheduler, launches, ...) runs
        self.busy += self.stage_share * (c.duration_s - c.host_exposed_s - idle)

    def _record_block(self, starts: np.ndarray, b: StepBlock, k: int, seqs: int, waiting: Any) -> None:
        """Append the first ``k`` steps of a folded decode run (``seqs`` sequences decoding one token each; every
        step counted with ``waiting`` waiting, one count or [k], and the running requests of now), started at
        ``starts`` [k] s."""
        cols: dict[str, Any] = {f: getattr(b, f)[:k] for f in _COST_COLUMNS}
        cols |= {
            "replica": self.index,
            "pool": self.pool.role,
            "start_s": starts,
            "phase": "decode",
            "tokens": seqs,
            "prefill_tokens": 0,
            "decode_seqs": seqs,
            "seqs": seqs,
            "kv_used_frac": self.kv_used(),
            "waiting": waiting,
            "running": len(self.running),
            "padded_batch": b.padded_batch,
        }
        self.sim.steps.extend(cols, k)
        wait = b.gpu_wait_s[:k]
        idle = wait[:, self.ep_rank].sum(axis=0) if wait.shape[1] == self.pool.layout.ep else 0.0
        self.busy += self.stage_share * (float((b.duration_s[:k] - b.host_exposed_s[:k]).sum()) - idle)
