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
  latencies (the engine's view);
- the request path (`sim.serving.metrics`): a request reaches the scheduler
  after the API server and tokenisation (the entry pool's engine profile,
  `sim.serving.metrics.front_s`), so open-loop requests are submitted in the
  order they reach it; its tokens reach the client after detokenisation
  (`sim.serving.metrics.client_times`), which is what the summary's TTFT,
  TPOT, ITL and E2E measure, and what a closed-loop client waits for;
- prefix caching (`sim.serving.replica`): a request whose shared prefix is in
  its replica's cache skips the prefill of its cached full blocks;
- a step lasts `sim.serving.steptime.StepTimer.sample`: the cost model's op times
  plus this step's routing draw (stragglers, drops, expert fetches);
- pipeline parallelism runs ``pp`` batches in flight: a new batch starts after
  the slowest stage's time, and its tokens land after the whole latency;
- prefill/decode disaggregation: prefill replicas emit the first token, the
  KV cache then travels to a decode replica (bytes / (link bandwidth x the
  prefill replica's TP GPUs) + link latency, one transfer at a time per
  destination), which decodes the rest;
- the client's timeout (``workload.timeout_s``, `sim.serving.workload`): a
  request the engine has not finished ``timeout_s`` after it was sent fails;
  the engine aborts it (`sim.serving.replica.Replica.abort`: it leaves the
  queue, or its KV cache is freed after the step in progress), and a request
  whose last chunk reaches the client later than that fails too. A failed
  request has no client times (``failed`` in the request table), so the
  latency percentiles leave it out, as the benchmark clients do. Past its
  capacity a deployment then fails whole stretches of requests: every request
  it admits has already waited so long that it cannot finish in time, and
  still costs the GPU time it got.

Runs of pure-decode steps with no arrival, completion or admission in between
are processed in one event (each step still gets its own routing draw and
time, and its own row in the step table): this is what makes 10,000 requests
take seconds. A run is timed as one `sim.serving.steptime.StepBlock` (arrays over its
steps) and recorded as a block of rows (`sim.serving.results.StepLog`): the step table keeps
every step, one row each (nothing sampled or summarised), so ``--trace`` can draw all of them.
A request submitted to the replica during a run (a KV transfer,
a closed-loop client) ends the run after the step in progress; an open-loop arrival does not need to: the run is
sized to end with the step in which the next arrival reaches the scheduler, and with an overlapping scheduler with
the step after it too (decided before the arrival, so it cannot admit it). A run's steps are timed in chunks up to
that point, not all `MAX_RUN` at once (`sim.serving.replica`: FORESEE, CHUNKED; tests/test_des_speed_runs.py).

Before simulating, `check_requests_fit` refuses a workload holding a request no replica could
ever serve (over the model's context, over one replica's KV cache, or an unchunked prompt over
the step budget): such a request would otherwise wait forever. The analytical engine shares it.

The parts live apart: memory capacity, request-fit checks and the timer factory in `capacity`,
one replica's scheduler loop in `replica`, the result record in `results`; this module keeps the
SimPy `Simulation` (arrivals and routing, disaggregation, the run) and re-exports the rest.

Units: seconds, tokens, bytes.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import simpy

from moesim.model import Layout, kv_bytes_per_token
from moesim.model.errors import MoesimError
from moesim.model.memory import kv_groups
from moesim.sim.serving.capacity import (
    Capacity,  # noqa: F401 (re-exported)
    check_requests_fit,
    make_timer,
    replica_capacity,
)
from moesim.sim.serving.host import engine_profile
from moesim.sim.serving.metrics import (
    api_queue_wait,
    api_service_s,
    client_times,
    front_s,
    last_chunk_tokens,
    running_at,
)
from moesim.sim.serving.replica import (
    MAX_RUN,  # noqa: F401 (re-exported)
    Replica,
    _Requests,
)
from moesim.sim.serving.results import (
    TRANSFER_COLUMNS,
    SimResult,
    StepLog,
    request_table,
)
from moesim.sim.serving.scenario import Built
from moesim.sim.serving.workload import generate

Progress = Callable[[float, float, str], None]


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
        self.steps = StepLog()
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
            profile = engine_profile(pool.engine, built.base_dir)
            reps = []
            for _ in range(pool.replicas):
                timer = make_timer(built, pool, cap, seed * 1000 + len(self.all) + 17 * p_i)
                rep = Replica(self, len(self.all), pool, cap, timer, profile)
                reps.append(rep)
                self.all.append(rep)
            self.replicas[pool.role] = reps
        self.entry = self.replicas.get("mixed") or self.replicas["prefill"]
        self._rr = {"entry": 0, "decode": 0}
        # the request path: the entry pool's API server, tokeniser and detokeniser (`sim.serving.metrics`)
        self.path = engine_profile(self.entry[0].pool.engine, built.base_dir)
        h = self.path.host
        self.front = front_s(self.req.inp, h["api_per_request_s"], h["tokenize_per_token_s"], h["tokenize_wait_s"])
        # the API server processes: requests queue for them first come, first served (`metrics.api_queue_wait`)
        self.api_service = api_service_s(self.req.inp, h["api_per_request_s"], h["tokenize_per_token_s"])
        self.api_servers = self.path.api_servers * len(self.entry)
        self._api_free = [0.0] * self.api_servers  # a closed loop's servers: when each is next free, s (a heap)
        if not self.closed:
            self.front = self.front + api_queue_wait(self.req.arrival, self.api_service, self.api_servers)
        self.back = h["detokenize_per_token_s"] * last_chunk_tokens(
            self.req.out, self.path.stream, self.path.stream_chunk_tokens
        )
        # open loop: requests reach the scheduler in order of arrival + front (a long prompt tokenises longer)
        self._order = np.argsort(self.req.arrival + self.front, kind="stable")
        self._arrivals = (self.req.arrival + self.front)[self._order]
        self._next = 0
        self.kv_per_token = kv_bytes_per_token(built.model, Layout(), built.precision)
        # chunked-local layers send their chunk only (`model.memory.KvGroups`); other models: tokens x kv_per_token
        self.kv_groups = kv_groups(built.model, Layout(), built.precision)
        self.links: dict[int, simpy.Resource] = {}
        self.waiters: dict[int, simpy.Event] = {}
        self.timeout = built.workload.timeout_s  # the client's total timeout per request, s (None: none)
        self._all_done = self.env.event()
        self.wall0 = time.perf_counter()
        self._last_progress = 0.0
        self._progress_step = max(1, self.req.n // 100)  # report at least every 1% of requests, whatever the speed

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

    def _arrive(self, rid: int, foreseen: bool = False) -> None:
        """Request ``rid`` reaches the scheduler now; ``foreseen``: an open-loop arrival (`next_arrival` knew it)."""
        self.req.engine_arrival[rid] = self.env.now
        rep = self._route(self.entry, "entry")
        self.req.replica[rid] = rep.index
        self.req.prefill_replica[rid] = rep.index if rep.pool.role == "prefill" else -1
        rep.submit(rid, foreseen=foreseen)

    def open_loop(self):
        for i, rid in enumerate(self._order.tolist()):
            wait = self._arrivals[i] - self.env.now
            if wait > 0:
                yield self.env.timeout(wait)
            self._next = i + 1
            if not self.req.failed[rid]:  # a client that gave up before the API server passed the request on
                self._arrive(rid, foreseen=True)

    def deadlines(self):
        """The clients' timeouts of an open loop: each request the engine has not finished ``timeout`` after it was
        sent is aborted then (`abort`)."""
        R, timeout = self.req, float(self.timeout or math.inf)
        for rid in np.argsort(R.arrival, kind="stable").tolist():
            if not np.isnan(R.finish[rid]) or R.failed[rid]:
                continue
            wait = float(R.arrival[rid]) + timeout - self.env.now
            if wait > 0:
                yield self.env.timeout(wait) | self._all_done
                if self._all_done.triggered:
                    return
            if np.isnan(R.finish[rid]):
                self.abort(rid)

    def _api_delay(self, rid: int) -> float:
        """Seconds from a closed-loop client's send (now) to the scheduler seeing request ``rid``: the wait for the
        first free API server (first come, first served, as `metrics.api_queue_wait` for an open loop), then
        ``front_s``."""
        now = self.env.now
        start = max(now, self._api_free[0])
        heapq.heapreplace(self._api_free, start + float(self.api_service[rid]))
        return start - now + float(self.front[rid])

    def abort(self, rid: int) -> None:
        """Request ``rid``'s client gave up before the engine finished it: the engine drops it wherever it is (the
        queue, the running set, a KV transfer; `Replica.abort`), and it counts as done (failed)."""
        R = self.req
        if R.failed[rid] or not np.isnan(R.finish[rid]):
            return
        R.failed[rid] = True
        if R.replica[rid] >= 0:
            self.all[int(R.replica[rid])].abort(rid)
        self._count_done(rid)

    def client(self, first: int, stride: int):
        think = self.built.workload.think_s
        for rid in range(first, self.req.n, stride):
            self.req.arrival[rid] = self.env.now  # the client sends
            done = self.env.event()
            self.waiters[rid] = done
            delay = self._api_delay(rid)
            if delay > 0:  # the API server's queue, parsing and tokenisation
                yield self.env.timeout(delay)
            self._arrive(rid)
            if self.timeout is None:
                yield done
            else:  # the client gives up ``timeout`` after sending
                left = float(self.req.arrival[rid]) + self.timeout - self.env.now
                if left > 0:
                    yield done | self.env.timeout(left)
                if not done.triggered:
                    self.abort(rid)
                    if think:
                        yield self.env.timeout(think)
                    continue
            back = float(self.back[rid])
            per_seq = self.path.host["stream_per_seq_s"]
            if per_seq:  # the API server handles the last step's whole batch first (as `run`'s client_times)
                t = self.env.now - 1e-9
                back += per_seq * running_at(np.array([t]), np.zeros(1), *self._running_view(rid))[0]
            if back > 0:  # the last chunk reaches the client
                yield self.env.timeout(back)
            if think:
                yield self.env.timeout(think)

    def _running_view(self, rid: int) -> tuple[np.ndarray, np.ndarray]:
        """Admission and finish times (s) of the requests of ``rid``'s replica so far (finish NaN: running), for
        `running_at` at group 0."""
        R = self.req
        same = R.replica == R.replica[rid]
        return R.scheduled[same], R.finish[same]

    def on_finish(self, rid: int) -> None:
        if self.req.failed[rid]:  # its client gave up (and it was counted then); the engine finished it anyway
            return
        self._count_done(rid)

    def _count_done(self, rid: int) -> None:
        self.done += 1
        if self.done >= self.req.n and not self._all_done.triggered:
            self._all_done.succeed()
        ev = self.waiters.pop(rid, None)
        if ev is not None:
            ev.succeed()
        due = self.done == self.req.n or self.done % self._progress_step == 0
        if self.progress and (due or time.perf_counter() - self._last_progress > 0.2):
            self._last_progress = time.perf_counter()
            self.progress(self.done, self.req.n, f"{self.env.now:.1f} s simulated")

    # ---- disaggregation --------------------------------------------------------------------------
    def handoff(self, rid: int, src: int) -> None:
        if not self.req.failed[rid]:
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
        nbytes = self.kv_groups.bytes_for(float(R.comp[rid]))
        seconds = nbytes / (bw * pool.layout.tp * pool.layout.pp) + lat
        link = self.links.setdefault(dst.index, simpy.Resource(self.env, capacity=1))
        with link.request() as req:
            yield req
            start = self.env.now
            yield self.env.timeout(seconds)
        self.transfers.append((rid, src, dst.index, start, seconds, nbytes))
        if not R.failed[rid]:  # its client gave up during the transfer
            dst.submit(rid)

    # ---- run --------------------------------------------------------------------------------------
    def run(self) -> SimResult:
        w = self.built.workload
        if self.closed:
            for c in range(min(w.concurrency or 1, self.req.n)):
                self.env.process(self.client(c, w.concurrency or 1))
        else:
            self.env.process(self.open_loop())
            if self.timeout is not None:
                self.env.process(self.deadlines())
        self.env.run()
        R = self.req
        stream = self.path.stream
        per_seq = self.path.host["stream_per_seq_s"]  # the API server handles each step's whole batch
        client_first, client_finish = client_times(
            R.first,
            R.finish,
            R.out,
            detokenize_per_token_s=self.path.host["detokenize_per_token_s"],
            stream=stream,
            chunk_tokens=self.path.stream_chunk_tokens,
            # the batch of the step that emitted the token: the requests running just before its end
            first_batch_s=per_seq * running_at(R.first - 1e-9, R.replica, R.scheduled, R.finish) if per_seq else 0.0,
            finish_batch_s=per_seq * running_at(R.finish - 1e-9, R.replica, R.scheduled, R.finish) if per_seq else 0.0,
        )
        failed = R.failed.copy()
        if self.timeout is not None:  # the last chunk came after the client gave up
            with np.errstate(invalid="ignore"):
                failed |= client_finish - R.arrival > self.timeout
            client_first, client_finish = client_first.copy(), client_finish.copy()
            client_first[failed], client_finish[failed] = np.nan, np.nan
        columns = {
            "request_id": self.df["request_id"].to_numpy(),
            "replica": R.replica,
            "prefill_replica": R.prefill_replica,
            "arrival_s": R.arrival,
            "engine_arrival_s": R.engine_arrival,
            "input_tokens": R.inp,
            "output_tokens": R.out,
            "cached_tokens": R.cached,
            "scheduled_s": R.scheduled,
            "first_token_s": R.first,
            "finish_s": R.finish,
            "client_first_s": client_first,
            "client_finish_s": client_finish,
            "preemptions": R.preempt,
            "failed": failed,
        }
        if "prefix_id" in self.df:
            columns |= {"prefix_id": R.prefix_id, "prefix_tokens": R.prefix_tokens}
        req = request_table(columns)
        steps = self.steps.frame()
        transfers = pd.DataFrame(self.transfers, columns=TRANSFER_COLUMNS)
        engine_itl = np.concatenate(R.itl) if R.itl else np.zeros(0)
        itl = engine_itl if stream else np.zeros(0)  # the client's: gaps between streamed chunks
        return SimResult(
            req,
            itl,
            steps,
            transfers,
            {r.index: r.busy for r in self.all},
            self.capacities,
            time.perf_counter() - self.wall0,
            {r.index: r.pool.layout.num_gpus for r in self.all},
            engine_itl,
        )


def simulate(built: Built, seed: int | None = None, progress: Progress | None = None) -> SimResult:
    """Run the discrete-event simulation of ``built``; see the module docstring."""
    return Simulation(built, seed, progress).run()
