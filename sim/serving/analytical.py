"""The analytical serving model: steady-state throughput and latency in closed form, no events.

For each replica of a pool the arrival rate is lambda_r = lambda / replicas.
The engine alternates decode steps (every running request gets a token) and
mixed steps (the same plus a prompt chunk of c = min(mean input, max_tokens -
B) tokens). With B requests decoding, a fraction f of steps mixed and mean
step time tau:

    tau = f t_mixed(B, c) + (1 - f) t_decode(B)      f = min(1, lambda_r tau ceil(L_in / c))
    B   = lambda_r (L_out - 1) tau                    (Little's law over the decode phase)

solved by fixed-point iteration, with the decode context at L_in + L_out / 2
and step times from `sim.serving.steptime.StepTimer.expected` (the same cost model,
routing statistics and placement as the discrete-event engine, with the
expected busiest GPU).

A mixed pool prices its steps as the engine runs them (`aggregate_step`): each step carries the prompt tokens
that arrived during the step before, N ~ Poisson(lambda_r tau) prompts drawn from the workload (stratified draws,
`_prompt_sums`), and its time beyond the decode step is that of all their tokens at once on the step-cost curve
(`_prompt_curve`, refined where it kinks: `_refined_nodes`): a mixed step's fixed cost is paid once for all its
prompts, and a crowded step is as compute-bound as its tokens make it. With data-parallel attention the step's
prompts are dealt round-robin over the attention ranks, which attend and project their own tokens while the MoE
layers see the whole step's: the step is read off a surface over the prompt tokens and the busiest rank's share
of them (`_prompt_surface`, `busiest_share`). Then tau = E[step] and f = the share of mixed steps, B as above; a
prompt's TTFT waits on the prompt tokens ahead of it (full steps clear ``budget`` of them), the step running and
its own last step crowded with the prompts that came with it (`crowded_surface`). Its fixed point climbs from one
sequence on coarse curves (7 nodes, one batch per octave, a quarter of the draws) and finishes on the refined
ones (`COARSE_START`). Its decode batch is not the fixed point's B rounded but a law over whole batches
(`BATCH_MIXTURE`): the stationary law of a processor-sharing queue whose step grows with its batch, the prompts'
mean time per step on every step (`busy_decode`, `PRODUCT_FORM`; off: Poisson(B) others beside a request,
`mixed_decode`), and tau a token's mean step under it. `AGGREGATE` (and `AGGREGATE_DP` for data-parallel
attention) off, and where the workload's prompts are not known, each prompt is priced alone.
Per request of input I and output O (the per-prompt form):

    TTFT = W + r + g + ceil(I / budget) t_decode + I max(t_mixed - t_decode, 0) / c
                   (r: what is left of the step an arrival finds running, a length-biased step and a uniform point
                    in it, drawn per request (`residual_draws`), of mean E[step^2] / (2 E[step]); r = g = 0 for an
                    arrival that finds its replica idle, `IDLE_ARRIVALS`; g = tau with an
                    overlapping scheduler, which decides the next step while the current one runs, else 0;
                    I: the prompt tokens computed, prefix-cache hits left out; W: the wait for a slot of the
                    running set, which holds max_batch requests or the requests the KV cache fits, each request
                    holding its slot from admission to its last token: the FIFO many-server recursion on the
                    workload's arrivals (`fifo_waits`), or an M/G/c queue without them (`slot_wait`))
    TPOT = tau        E2E = TTFT + (O - 1) tau

and the client's times add the request path (`sim.serving.metrics`: API server and tokenisation before the
scheduler; each streamed token leaves after the API server has handled its step's outputs, ``stream_per_seq_s``
x B, and its detokenisation).

and percentiles come from the workload's length distribution (the same
samples the simulator would replay). The pool is overloaded when B exceeds
``max_batch`` or the KV cache, or the iteration does not converge; the result
then says so and reports the capacity instead.

Prefill/decode disaggregation: the prefill pool is an M/D/1 queue per
replica with service time t_prefill(L_in) (TTFT = wait + service); the decode
pool runs the decode-only fixed point; the KV transfer adds bytes / bandwidth.
Closed-loop workloads iterate lambda = concurrency / (E2E + think).

The client's timeout (``workload.timeout_s``, `sim.serving.workload`), for an open loop on a mixed pool: the FIFO
recursion for the running set's slots runs with the clients' deadlines (`fifo_aborts`), as the discrete-event
engine aborts requests: a request still waiting at its deadline never gets a slot, and one admitted too late holds
its slot until its deadline and fails. Past saturation the slot waits then grow with the arrivals instead of being
left out. A failed request has no latencies (NaN) and counts in the summary's ``failed``. A closed loop or a
disaggregated deployment does not model the timeout (``failed`` NaN).

A workload holding a request that cannot fit (context, one replica's KV cache, an unchunked
prompt over the step budget) is refused before solving, by the same check as the DES
(`sim.serving.capacity.check_requests_fit`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from moesim.model import kv_bytes_per_token
from moesim.model.cap import usd_per_gpu_second
from moesim.model.errors import MoesimError
from moesim.model.layout import Layout
from moesim.sim.serving.engine import Capacity, check_requests_fit, make_timer, replica_capacity
from moesim.sim.serving.host import EngineProfile, engine_profile
from moesim.sim.serving.metrics import api_queue_wait, api_service_s, client_times, front_s, percentiles
from moesim.sim.serving.prefill_work import (
    PrefillWork,
    decode_spans,
    fifo_waits,
    prefill_queue,
    prefill_work,
    single_server_waits,
)
from moesim.sim.serving.replica import cacheable_blocks, declared_hit
from moesim.sim.serving.scenario import Built, Pool
from moesim.sim.serving.steparray import expected as array_expected
from moesim.sim.serving.steparray import step_array
from moesim.sim.serving.steptime import BREAKDOWN_PARTS, StepCost, StepTimer, cost_row, step_breakdown
from moesim.sim.serving.workload import generate


@dataclass
class PoolState:
    """Steady state of one pool (per replica)."""

    tau: float  # mean step, s
    t_decode: float
    t_mixed: float
    batch: float  # requests decoding
    mixed_frac: float
    chunk: int
    chunks: int
    bytes_per_s: float
    flops_per_s: float
    overloaded: bool
    reason: str = ""
    cached: float = 0.0  # mean prompt tokens per request found in the prefix cache


def _steps(timer: StepTimer, b: int, ctx: int, chunk: int, chunk_ctx: int) -> tuple[Any, Any]:
    """The expected decode step of ``b`` sequences at context ``ctx`` and the mixed step with a prompt chunk.

    Memoised in the timer: the fixed point revisits the same batch sizes, and a sweep evaluates one
    configuration at many rates. The returned steps are shared; callers must not modify them.
    """
    key = ("analytic_steps", b, ctx, chunk, chunk_ctx)
    hit = timer._memo.get(key)
    if hit is None:
        hit = timer._memo[key] = _compute_steps(timer, b, ctx, chunk, chunk_ctx)
    return hit


def _decode_step(timer: StepTimer, b: int, ctx: int) -> Any:
    """The expected decode step of ``b`` sequences at context ``ctx`` with its expert fetches (memoised in the
    timer: every prompt chunk tried at (b, ctx) shares it; callers must not modify it)."""
    key = ("analytic_decode", b, ctx)
    hit = timer._memo.get(key)
    if hit is None:
        hit = array_expected(timer, b, ctx)  # = timer.expected(ones(b), full(b, ctx)), op parts in array form
        if timer.offload:
            hit.duration_s += _fetch(timer, b)
        timer._memo[key] = hit
    return hit


#: On: `Analytical._refine` prices the requests' own prompt chunks at the `_work_batch` grid batch nearest the batch
#: found, moved to it by `PrefillWork.shifted`; off: at the batch found itself, every time (slower; the reference).
#: Before 2026-12-07 a work priced at an earlier rate within a quarter of the batch served, so a row depended on
#: the order the sweep's points were solved in.
REFINE_GRID = True
#: `_work_batch`'s grid, batches per octave.
_WORK_GRID = 8


def _work_batch(b: int) -> int:
    """The batch (requests) the prompts' own chunks are priced at for a decode batch of ``b``: the nearest on a
    geometric grid of `_WORK_GRID` per octave (within 4.4% of ``b``; every batch up to 11 is on it), so what a
    sweep's rows say does not depend on which rates it solved first."""
    if not REFINE_GRID:
        return b
    return max(1, round(2 ** (round(math.log2(max(b, 1)) * _WORK_GRID) / _WORK_GRID)))


def _step_budget(eng: Any, b: int) -> int:
    """The prompt tokens a step carries beside ``b`` decodes (tokens): the budget left by them with chunked prefill,
    whole prompts up to ``max_tokens`` without it."""
    return max(eng.max_tokens - b, 1) if eng.chunked_prefill else max(eng.max_tokens, 1)


def _poisson_batches(b: float, max_batch: int) -> np.ndarray:
    """P(a request decodes in a batch of k), k = 1..min(n_max + 1, ``max_batch``) [k]: itself and N ~ Poisson(``b``)
    others (`mixed_decode`), n_max far in the tail, the others beyond ``max_batch`` - 1 in a full batch."""
    b = max(float(b), 0.0)
    n_max = int(b + 10.0 * math.sqrt(b) + 10)
    weight = _poisson_weights(b, n_max) if b > 0 else np.eye(1, n_max + 1)[0]
    weight = np.bincount(np.minimum(np.arange(n_max + 1), max(max_batch, 1) - 1), weights=weight)
    return weight / weight.sum()


def mixed_decode(timer: StepTimer, b: float, ctx: int, max_batch: int) -> float:
    """Mean decode step (s) a running request takes when ``b`` requests decode on average: with Poisson arrivals a
    running request sees the others as N ~ Poisson(``b``) (an M/G/infinity system), so it decodes in batches of
    min(1 + N, ``max_batch``) at ``ctx``; E over N of `_decode_step` there (`BATCH_MIXTURE`).

    The step is a steep staircase in a small batch (a MoE decode step's active experts grow with the batch, a CUDA
    graph pads it to a capture size), so the step at the mean batch rounded to a whole one misses it: Mixtral-8x7B
    on H100-SXM x8 TP8 bf16 at 4 req/s stuck at 1.5 sequences (TPOT 1.46 ms) where the discrete-event engine runs
    3.1 (2.72 ms; `benchmarks/low_load.py`)."""
    weight = _poisson_batches(b, max_batch)
    return float(weight @ _decode_steps(timer, ctx, len(weight)))


#: On (with `BATCH_MIXTURE`): the aggregated mixed pool's decode batch is the stationary law of a processor-sharing
#: queue whose step grows with its batch (`busy_decode`); off: Poisson around the fixed point (`mixed_decode`).
PRODUCT_FORM = True
#: On (with `PRODUCT_FORM`): a disaggregated decode pool's batch is `busy_decode`'s law too (no prompts: ``extra``
#: 0); off: its fixed point at the rounded batch (as before 2026-12-07 night).
PF_DECODE = True
#: `busy_decode` stops where the law has fallen this far below its peak (natural log).
_PF_TAIL = 40.0


def _decode_steps(timer: StepTimer, ctx: int, m: int) -> np.ndarray:
    """`_decode_step` of 1..``m`` sequences at ``ctx`` [m] s, kept per timer and context and grown as asked."""
    key = ("decode_steps", ctx)
    have = timer._memo.get(key)
    if have is None or len(have) < m:
        old = have if have is not None else np.zeros(0)
        more = [_decode_step(timer, k, ctx).duration_s for k in range(len(old) + 1, m + 1)]
        have = timer._memo[key] = np.concatenate([old, more])
    return have[:m]


def busy_decode(timer: StepTimer, load: float, ctx: int, extra: float, max_batch: int) -> tuple[float, float] | None:
    """(mean step per decoded token s, mean sequences decoding) of a continuous-batching replica whose requests ask
    ``load`` = rate x (output - 1) decode tokens per second, each step of n running sequences lasting s(n) =
    `_decode_step`(min(n, ``max_batch``), ``ctx``) + ``extra`` (the prompt chunks' mean time per step, s). None where
    the steps at ``max_batch`` cannot keep up (the batch diverges).

    Every running sequence gets one token per step: a processor-sharing queue whose total service rate n / s(n)
    depends on the number n present (n > ``max_batch`` wait for a slot, served at ``max_batch`` / s(max_batch)).
    Such a queue is symmetric, so its stationary law is insensitive to the output lengths' distribution and has the
    product form pi(n) = pi(0) prod_{i <= n} load s(i) / i (Kelly, Reversibility and Stochastic Networks, 3.3). With a
    constant step it is Poisson(load x s), the M/G/infinity law `mixed_decode` uses; with a step that grows with the
    batch a crowded spell drains slower and lasts longer, which Poisson around the fixed point misses (the
    discrete-event engine's batch was over-dispersed: 22% of its busy time at one sequence where Poisson gave 14%).
    The law peaks where load x s(n) = n, the rounded fixed point's batch. Tokens come at E[min(N, max_batch) / s(N)]
    per second = ``load``, so a token's mean step is E[min(N, max_batch)] / ``load`` (Little's law)."""
    law = _busy_law(timer, load, ctx, extra, max_batch)
    if law is None:
        return None
    decoding = float(law @ np.minimum(np.arange(len(law)), max(max_batch, 1)))
    return decoding / load, decoding


def _busy_law(timer: StepTimer, load: float, ctx: int, extra: float, max_batch: int) -> np.ndarray | None:
    """`busy_decode`'s stationary law of the sequences present, P(N = n) for n = 0.. [n_max + 1], n_max where it has
    fallen `_PF_TAIL` below its peak; None where it does not settle."""
    if load <= 0:
        return None
    cap = max(max_batch, 1)
    if load * (_decode_step(timer, cap, ctx).duration_s + extra) >= cap:
        return None
    width = 64
    while True:
        n = np.arange(1, width + 1)
        s_n = _law_steps(timer, ctx, width, cap, extra)
        log_pi = np.concatenate([[0.0], np.cumsum(np.log(load * s_n / np.minimum(n, cap)))])
        peak = float(log_pi.max())
        if log_pi[-1] < peak - _PF_TAIL and log_pi[-1] < log_pi[-2]:
            break
        width *= 2
    pi = np.exp(log_pi - peak)
    return pi / pi.sum()


def _law_steps(timer: StepTimer, ctx: int, width: int, cap: int, extra: float) -> np.ndarray:
    """The steps of `busy_decode`'s law, s(n) = `_decode_step`(min(n, ``cap``), ``ctx``) + ``extra`` for n = 1 ..
    ``width`` [width] s."""
    steps = _decode_steps(timer, ctx, min(width, cap))
    return np.concatenate([steps, np.full(max(width - cap, 0), steps[-1])]) + extra


def busy_step(
    timer: StepTimer, load: float, ctx: int, extra: float, max_batch: int, law: np.ndarray | None = None
) -> float | None:
    """Mean step (s) of a busy replica as an arrival finds it: `busy_decode`'s stationary law of the sequences
    present (an arrival sees it as it is in time: Poisson arrivals see time averages), given at least one decoding,
    each step of n lasting s(n) = `_decode_step`(min(n, ``max_batch``), ``ctx``) + ``extra``:
    sum_{n >= 1} pi(n) s(n) / P(N >= 1). None where the law does not settle.

    This is the step an overlapping scheduler decided before an arrival's (vLLM's async scheduling, SGLang's overlap
    scheduler): the step after the one running, at about the batch running (a step changes the batch by a sequence
    or two), carrying the prompts that came during the step before it (``extra`` on average). It is not the mean
    step per decoded token (`busy_decode`'s first figure), which weighs each step by the sequences it decodes: at a
    batch of a few sequences a step of 8 counts 8 times one of 1. Mixtral-8x7B on H100-SXM x8 TP2 EP2 bf16 at 4 req/s
    (chat): 12.66 ms per decoded token, 11.77 ms here, and the discrete-event engine's step after a random instant
    11.77 ms (`metrics.step_after_instant_s`; `python -m benchmarks.low_load --lag`). ``law``: `_busy_law` of the
    same arguments where the caller has it already."""
    if law is None:
        law = _busy_law(timer, load, ctx, extra, max_batch)
    if law is None or len(law) < 2:
        return None
    s_n = _law_steps(timer, ctx, len(law) - 1, max(max_batch, 1), extra)
    busy = law[1:]
    total = float(busy.sum())
    return float(busy @ s_n) / total if total > 0 else None


def _fetch(timer: StepTimer, tokens: int) -> float:
    """`StepTimer.expected_fetch` of a step of ``tokens`` tokens (s), memoised in the timer by tokens: the decode
    step of every context and the mixed steps of every split of the same tokens share it."""
    key = ("analytic_fetch", tokens)
    hit = timer._memo.get(key)
    if hit is None:
        hit = timer._memo[key] = timer.expected_fetch(float(tokens))
    return hit


def _compute_steps(timer: StepTimer, b: int, ctx: int, chunk: int, chunk_ctx: int) -> tuple[Any, Any]:
    dec = _decode_step(timer, b, ctx) if b else None
    mix = array_expected(timer, b, ctx, chunk, chunk_ctx)  # = timer.expected(new, cached) (`sim.serving.steparray`)
    # the step's new tokens: b decoding sequences and the chunk
    fetch = _fetch(timer, b + chunk) if timer.offload else 0.0
    mix.duration_s += fetch
    return dec, mix


def _packed(
    timer: StepTimer, rate: float, mean_in: float, b: int, ctx: int, chunk: int, max_tokens: int, cached: int = 0
) -> tuple[float, int, Any, bool]:
    """The saturated regime of continuous batching: every step is mixed and carries the prompt tokens
    that arrive while it runs (several prompts per step when they fit the token budget).

    Solves c = rate x mean_in x t_mixed(b, c) for the prompt tokens per step c, at least one
    ``chunk``, at most the budget ``max_tokens - b``; ``mean_in`` counts the prompt tokens to compute (prefix-cache
    hits left out) and ``cached`` the hit tokens the chunk's attention reads. Returns (step s, c, the mixed step,
    overloaded: the arriving prompt tokens exceed the budget).
    """
    budget = max(max_tokens - b, 1)
    c, mix = chunk, _steps(timer, b, ctx, chunk, cached)[1]
    for _ in range(50):
        need = rate * mean_in * mix.duration_s
        c_new = int(min(budget, max(chunk, math.ceil(need))))
        if c_new == c:
            break
        c = c_new
        mix = _steps(timer, b, ctx, c, cached)[1]
    return mix.duration_s, c, mix, rate * mean_in * mix.duration_s > budget * (1 + 1e-9)


def chunk_context(computed: float, cached: float, chunks: int) -> int:
    """Tokens already in the KV cache when the mean prompt chunk runs (its attention reads them): the prefix-cache
    hit, plus half the computed prompt when the prompt takes several chunks."""
    return int(cached + (computed / 2 if chunks > 1 else 0))


#: Off: a mixed pool's step time from each prompt priced alone (and the packed regime's mean-prompt chunk), as before
#: 2026-12-06; on: from the prompts each step carries together (`aggregate_step`).
AGGREGATE = True
#: Draws of the prompts a step carries, per number of prompts (`aggregate_step`); seeded: deterministic.
_AGG_DRAWS = 256
#: Decode batches whose prompt-token cost curve is shared (`_prompt_curve`): this many per octave.
_AGG_BATCH_GRID = 4
#: Off: `pool_state`'s fixed point of an aggregated mixed pool runs on refined curves from its first iterate (as
#: before 2026-12-07 late); on: it climbs on coarse ones (`aggregate_step`'s ``coarse``) until it is near its fixed
#: point, then goes on with the refined ones to convergence. The climb from one sequence passes through every
#: batch below the answer, and each batch's curve costs tens of step evaluations: on
#: `examples/sweep-mixtral-gpu-choice.yaml` the fixed points' last two iterates needed 3,243 of the 7,118 curves
#: built.
COARSE_START = True
#: The coarse start hands over to the refined curves once an iterate moves the step by at most this share and the
#: batch by at most `_COARSE_BATCH` of it.
_COARSE_TAU = 0.02
_COARSE_BATCH = 0.05
#: The coarse start keeps every this-many-th of the `_AGG_DRAWS` draws.
_COARSE_THIN = 4
#: The coarse curves' nodes (geometric over the prompt tokens) and batch grid (per octave).
_COARSE_NODES = 7
_COARSE_GRID = 1
#: Off: the aggregated mixed pool's decode step is the one at the mean batch rounded to a whole one (as before
#: 2026-12-07 late); on: a token's mean step over a law of the batch (`busy_decode`, or `mixed_decode` with
#: `PRODUCT_FORM` off).
BATCH_MIXTURE = True
#: At most this many coarse iterates.
_COARSE_ITERS = 50
#: Off: a mixed pool with data-parallel attention keeps each prompt priced alone (as before 2026-12-07); on: its
#: steps carry their prompts together, priced by the busiest rank's share of them (`_prompt_surface`).
AGGREGATE_DP = True


def aggregates(pool: Pool) -> bool:
    """Whether a mixed pool's steps are priced as carrying their prompts together (`aggregate_step`): `AGGREGATE`,
    and with data-parallel attention also `AGGREGATE_DP` (its steps W(S) + G(M) on `_prompt_surface`)."""
    return AGGREGATE and (pool.layout.dp_attn <= 1 or AGGREGATE_DP)


def _curve_top(budget: int) -> int:
    """The prompt tokens `_prompt_curve` spans: ``budget`` rounded up to a power of two (the budget beside the decodes
    moves with the batch; one curve serves the batches of a grid point)."""
    return 1 << max(math.ceil(math.log2(max(budget, 1))), 0)


def _prompt_curve(timer: StepTimer, b: int, ctx: int, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens [nodes], seconds a step of ``b`` decodes carrying that many prompt tokens lasts beyond the decode
    step [nodes]): 1 to ``budget`` (rounded up to a power of two) tokens on `_refined_nodes`, one chunk from scratch,
    linear in log2(b) between the two batches of the `_AGG_BATCH_GRID` grid around ``b`` (the extra changes slowly
    with the batch; the decode step itself is taken at ``b``). Memoised per grid batch. With data-parallel
    attention it is the step whose one rank holds every prompt token: `_prompt_surface`'s two curves added."""
    nodes, surface = _prompt_surface(timer, b, ctx, budget)
    return nodes, surface.sum(axis=0) if len(surface) > 1 else surface[0]


def _spread_step(timer: StepTimer, b: int, ctx: int, tokens: int, share: float) -> float:
    """Seconds of the step of ``b`` decodes at ``ctx`` carrying ``tokens`` prompt tokens from scratch of which the
    busiest attention rank holds ``share``: one chunk of m = ceil(share x tokens) tokens, the rest in as few chunks
    of at most m as hold it, after the decodes; dealt round-robin (`model.batch.Batch.split`), each chunk lands on
    its own rank (there are at most dp - 1 others, since share >= 1 / dp). Timed from the discrete-event step's
    separable tables (`StepTimer.expected` with ``separable``): only the busiest rank's attention is built."""
    m = max(math.ceil(share * tokens - 1e-9), 1)
    rest = tokens - m
    k = -(-rest // m) if rest > 0 else 0
    chunks = [m] + ([rest // k + (1 if i < rest % k else 0) for i in range(k)] if k else [])
    new = np.array([1] * b + chunks, np.int64)
    cached = np.array([ctx] * b + [0] * len(chunks), np.int64)
    return timer.expected(new, cached, separable=True).duration_s + (
        _fetch(timer, b + tokens) if timer.offload else 0.0
    )


def _one_chunk_step(timer: StepTimer, b: int, ctx: int, chunk: int) -> float:
    """Seconds of the step of ``b`` decodes at ``ctx`` and one prompt chunk of ``chunk`` tokens from scratch, for the
    step-cost curve: the analytical step's own (`_steps`) where the array form times it (`StepArray.supported`:
    the roofline, no two-batch overlap) or `CURVE_REFINE` is off; else from the discrete-event step's separable
    tables (`_spread_step` with the whole chunk on one rank), which the refined curve's many nodes can afford
    where the scalar path decomposes every step (80 ms a step of DeepSeek-V3 on 32 GPUs)."""
    if not CURVE_REFINE or step_array(timer).supported:
        return _steps(timer, b, ctx, chunk, 0)[1].duration_s
    return _spread_step(timer, b, ctx, chunk, 1.0)


#: Off: the step-cost curve on its 13 geometric nodes alone (as before 2026-12-07); on: refined where a chord misses.
CURVE_REFINE = True
#: A curve interval is split (at its geometric middle) where the chord misses the step's extra there by more than
#: this share of it and by more than `_CURVE_ATOL` of the decode step; at most `_CURVE_NODES` nodes.
_CURVE_RTOL = 0.02
_CURVE_ATOL = 0.002
_CURVE_NODES = 64


def _refined_nodes(extra_at: Any, top: int, t_dec: float, mode: str = "refined") -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens [nodes], ``extra_at`` at each [nodes]): 13 nodes geometric over 1..``top``, each interval's
    geometric middle added, and split again wherever the chord through an interval's ends misses ``extra_at`` at
    its middle by more than `_CURVE_RTOL` of it and `_CURVE_ATOL` of the decode step ``t_dec`` s (`CURVE_REFINE`).
    A step's extra has kinks (a GEMM turning compute-bound
    as the tokens grow: on an A100 Mixtral-8x7B step of 90 decodes, between 406 and 861 prompt tokens the extra goes
    from 5.3 to 21.8 ms, and a chord between those two put it at 8.7 ms at 500 tokens, exact 6.7), which linear
    interpolation on the coarse grid overstates where the steps of a busy engine live. ``mode`` (`_curve_mode`):
    ``refined``, as above; ``plain``, the 13 nodes alone (`CURVE_REFINE` off); ``coarse``, `_COARSE_NODES` nodes
    alone (the fixed point's coarse start, `COARSE_START`)."""
    base = np.geomspace(1, top, _COARSE_NODES if mode == "coarse" else 13)
    base = np.unique(np.round(base).astype(np.int64)).tolist()
    val = {c: extra_at(c) for c in base}
    if mode == "refined":
        todo = list(itertools.pairwise(base))
        while todo and len(val) < _CURVE_NODES:
            lo, hi = todo.pop()
            mid = round(math.sqrt(lo * hi))
            if mid <= lo or mid >= hi:
                continue
            val[mid] = extra_at(mid)
            chord = val[lo] + (val[hi] - val[lo]) * (mid - lo) / (hi - lo)
            if abs(chord - val[mid]) > max(_CURVE_RTOL * val[mid], _CURVE_ATOL * t_dec):
                todo += [(lo, mid), (mid, hi)]
    nodes = np.array(sorted(val), dtype=float)
    return nodes, np.array([val[int(c)] for c in nodes])


def _curve_mode(coarse: bool) -> str:
    """How the step-cost curves are made (`_refined_nodes`): ``coarse`` for the fixed point's coarse start,
    else ``refined`` or, with `CURVE_REFINE` off, ``plain``."""
    return "coarse" if coarse else "refined" if CURVE_REFINE else "plain"


def _prompt_surface(
    timer: StepTimer, b: int, ctx: int, budget: int, coarse: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens [nodes], the step-cost curves [1 or 2, nodes]) of a step of ``b`` decodes at ``ctx``
    carrying prompt tokens, seconds beyond the decode step: 1 to ``budget`` (rounded up to a power of two) tokens on
    `_refined_nodes`, linear in log2(b) between the two batches of the `_AGG_BATCH_GRID` grid around ``b`` (each
    batch's nodes, read on the union of both). Without data-parallel attention one curve, one chunk from scratch
    (the analytical step's own shape). With it each rank attends and projects its own sequences' tokens while the
    MoE layers see the whole step's, and the step is as long as its busiest rank (`StepTimer._fast_parts`, as the
    discrete-event engine prices it): two curves, the part the whole step's tokens cost, W, and the part the
    busiest rank's tokens cost, G, so that a step of S prompt tokens of which the busiest rank holds M costs
    W(S) + G(M) (`_on_surface`). From two steps per node: one chunk from scratch, E1 = W + G, and the tokens
    spread evenly over the ranks (`_spread_step`), Es(S) = W(S) + G(S / dp); so G(S) - G(S / dp) = E1(S) - Es(S),
    summed down the nodes from G = 0 below one token. Memoised per grid batch and per batch. ``coarse``: the fixed
    point's coarse start (`COARSE_START`): `_COARSE_NODES` nodes, unrefined, on a grid of `_COARSE_GRID` batches
    per octave."""
    top = _curve_top(budget)
    mode = _curve_mode(coarse)
    at = ("prompt_surface_at", b, ctx, top, mode)  # the fixed point revisits the same batches
    done = timer._memo.get(at)
    if done is None:
        done = timer._memo[at] = _surface_at(timer, b, ctx, top, mode)
    return done


def _group_curve(nodes: np.ndarray, diff: np.ndarray, dp: int) -> np.ndarray:
    """G [nodes] from G(x) - G(x / ``dp``) = ``diff`` [nodes] at each node x (ascending) and G = 0 below one token:
    G(x / dp) read linearly between the nodes below x, or, where x / dp lies past the last of them, on the line from
    that node to x itself (then G(x) = diff / (1 - t) + G(prev), t = (x / dp - prev) / (x - prev))."""
    g = np.zeros(len(nodes))
    for i, x in enumerate(nodes):
        y = x / dp
        if i == 0 or y < nodes[0]:
            g[i] = diff[i]
        elif y <= nodes[i - 1]:
            g[i] = diff[i] + float(np.interp(y, nodes[:i], g[:i]))
        else:
            t = (y - nodes[i - 1]) / (x - nodes[i - 1])
            g[i] = diff[i] / (1 - t) + g[i - 1]
    return g


def _surface_at(timer: StepTimer, b: int, ctx: int, top: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """`_prompt_surface` computed from the two grid batches' memoised curves (``mode``: `_curve_mode`)."""
    dp = max(timer.layout.dp_attn, 1)
    grid = _COARSE_GRID if mode == "coarse" else _AGG_BATCH_GRID
    pos = math.log2(max(b, 1)) * grid
    lo = math.floor(pos)
    parts = []
    for k in (lo, lo + 1):
        bq = max(1, round(2 ** (k / grid)))
        key = ("prompt_curve", bq, ctx, top, mode)
        hit = timer._memo.get(key)
        if hit is None:
            dec = _decode_step(timer, bq, ctx).duration_s
            hit = timer._memo[key] = _refined_nodes(
                lambda c, bq=bq, dec=dec: max(_one_chunk_step(timer, bq, ctx, c) - dec, 0.0), top, dec, mode
            )
        nodes, one = hit
        if dp > 1:
            skey = ("prompt_surface", bq, ctx, top, mode)
            rows = timer._memo.get(skey)
            if rows is None:
                dec = _decode_step(timer, bq, ctx).duration_s
                spread = np.array([max(_spread_step(timer, bq, ctx, int(c), 1.0 / dp) - dec, 0.0) for c in nodes])
                group = _group_curve(nodes, one - spread, dp)
                rows = timer._memo[skey] = np.array([one - group, group])
            parts.append((nodes, rows))
        else:
            parts.append((nodes, one[None, :]))
    w = pos - lo
    (n0, e0), (n1, e1) = parts
    if len(n0) == len(n1) and np.array_equal(n0, n1):
        return n0, (1 - w) * e0 + w * e1
    nodes = np.union1d(n0, n1)
    on = [np.array([np.interp(nodes, n, row) for row in e]) for n, e in ((n0, e0), (n1, e1))]
    return nodes, (1 - w) * on[0] + w * on[1]


def _on_surface(nodes: np.ndarray, surface: np.ndarray, x: np.ndarray, share: Any = 1.0) -> np.ndarray:
    """`_prompt_surface`'s extra s at prompt tokens ``x`` of which the busiest attention rank holds the ``share``
    (arrays of one shape, or ``share`` a scalar): the one curve at ``x``, or W(x) + G(share x)."""
    x = np.asarray(x, float)
    if len(surface) == 1:
        return np.interp(x, nodes, surface[0])
    return np.interp(x, nodes, surface[0]) + np.interp(np.asarray(share, float) * x, nodes, surface[1], left=0.0)


#: `_prompt_sums`' tables by the prompts' bytes (a sweep solves many rates and batches on the same sample)
_SUMS: dict[tuple[bytes, bool], np.ndarray] = {}
#: Off: `aggregate_step` averages over the draws at every call (as before 2026-12-07 late); on: per batch, once.
AGG_COLUMNS = True
#: The prompt samples `aggregate_step` has seen, numbered (its memo keys hold the number, not the bytes). Numbers
#: are never reused: a cleared table only misses.
_PROMPT_IDS: dict[bytes, int] = {}
_PROMPT_COUNT = itertools.count()


def _prompts_id(prompts: np.ndarray) -> int:
    """The number of the prompt sample ``prompts`` [requests] (given the next one when new)."""
    raw = np.ascontiguousarray(prompts, dtype=float).tobytes()
    hit = _PROMPT_IDS.get(raw)
    if hit is None:
        if len(_PROMPT_IDS) >= 64:
            _PROMPT_IDS.clear()
        hit = _PROMPT_IDS[raw] = next(_PROMPT_COUNT)
    return hit


#: Off: `_prompt_sums` draws each prompt uniformly from the sample (as before 2026-12-07); on: stratified.
STRATIFIED = True


def _prompt_sums(prompts: np.ndarray, n_max: int) -> np.ndarray:
    """[`_AGG_DRAWS`, n_max + 1]: column n the tokens of n prompts drawn from ``prompts`` (seeded, the same draws
    at every call, so the step time is smooth in the arrival rate). Memoised by the prompts, grown as needed.

    Each prompt's `_AGG_DRAWS` draws are stratified (`STRATIFIED`): draw i comes from the i-th of `_AGG_DRAWS`
    equal slices of the sorted sample, and the draws of each prompt are shuffled before they are summed, so every
    prompt's draws have the sample's distribution almost exactly while the sums pair them at random. Drawn
    uniformly instead, the draws' mean of a long-tailed sample (lognormal, CV 1) strays by its standard error,
    about 6% at 256 draws: the steps of a busy engine then carry that many more or fewer prompt tokens than the
    workload sends (on A100-SXM-80GB x2 TP1xDP2 EP2 at 20 req/s, 548 tokens per prompt for a sample of 512)."""
    a = np.ascontiguousarray(prompts, dtype=float)
    key = (a.tobytes(), STRATIFIED)
    hit = _SUMS.get(key)
    if hit is None or hit.shape[1] <= n_max:
        width = max(n_max + 1, 2 * (hit.shape[1] - 1) if hit is not None else 64)
        rng = np.random.default_rng(20261206)
        # drawn prompt by prompt (rows of [width, ...], filled in order): the first n columns are the same whatever
        # the width, so the step time does not jump where n_max does
        if STRATIFIED:
            srt = np.sort(a)
            g = rng.random((width, 2, _AGG_DRAWS))
            member = ((np.arange(_AGG_DRAWS) + g[:, 0, :]) * (len(a) / _AGG_DRAWS)).astype(np.int64)
            shuffle = np.argsort(g[:, 1, :], axis=1)
            picks = np.take_along_axis(srt[np.minimum(member, len(a) - 1)], shuffle, axis=1).T
        else:
            picks = a[rng.integers(0, len(a), (width, _AGG_DRAWS)).T]
        hit = np.concatenate([np.zeros((_AGG_DRAWS, 1)), np.cumsum(picks, axis=1)], axis=1)
        if len(_SUMS) >= 64:
            _SUMS.clear()
        _SUMS[key] = hit
    return hit[:, : n_max + 1]


_LOG_FACTORIAL = np.zeros(1)


def _poisson_weights(lam: float, n_max: int) -> np.ndarray:
    """P(N = n) for n = 0..n_max, N ~ Poisson(``lam``) [n_max + 1]."""
    global _LOG_FACTORIAL
    if len(_LOG_FACTORIAL) <= n_max:
        _LOG_FACTORIAL = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, 2 * n_max + 2, dtype=float)))])
    n = np.arange(n_max + 1)
    return np.exp(-lam + n * math.log(lam) - _LOG_FACTORIAL[: n_max + 1])


def _arrival_mixture(rate: float, tau: float, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The prompts arriving during one step of ``tau`` s at ``rate`` req/s: (P(N = n) [n_max + 1], the tokens of n
    prompts drawn from ``prompts`` [`_AGG_DRAWS`, n_max + 1]), n_max far in the Poisson tail; None when none arrive."""
    lam = rate * tau
    if not len(prompts) or lam <= 0:
        return None
    n_max = int(lam + 10.0 * math.sqrt(lam) + 10)
    return _poisson_weights(lam, n_max), _prompt_sums(prompts, n_max)


def _rank_sums(sums: np.ndarray, dp: int, lead: int) -> tuple[np.ndarray, np.ndarray]:
    """The prompts of ``sums`` [draws, n + 1] (their running totals, `_prompt_sums`) dealt round-robin over ``dp``
    attention ranks from position ``lead`` (`model.batch.Batch.split`; a step's new prompts follow its decodes, one
    rank apart each): (the largest running total of a rank other than rank 0 after j prompts, rank 0's running
    total after j prompts) [draws, n + 1], j = 0..n."""
    picks = np.diff(sums, axis=1)  # [draws, n]
    rank = (np.arange(picks.shape[1]) + lead) % dp
    own = np.zeros_like(picks)
    for g in range(min(dp, picks.shape[1] + lead)):
        cols = rank == g
        own[:, cols] = np.cumsum(picks[:, cols], axis=1)
    zero = np.zeros((len(sums), 1))
    other = np.maximum.accumulate(np.where(rank == 0, 0.0, own), axis=1)
    first = np.maximum.accumulate(np.where(rank == 0, own, 0.0), axis=1)
    return np.concatenate([zero, other], axis=1), np.concatenate([zero, first], axis=1)


def busiest_share(sums: np.ndarray, dp: int) -> np.ndarray:
    """The busiest attention rank's share of a step's prompt tokens when its j prompts (running totals ``sums``
    [draws, n + 1]) are dealt round-robin over ``dp`` ranks [draws, n + 1] (1 where there are none)."""
    other, first = _rank_sums(sums, dp, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums > 0, np.maximum(other, first) / sums, 1.0)


def _column_means(a: np.ndarray) -> np.ndarray:
    """Means over the draws of ``a`` [draws, n] [n], each column reduced on its own (a contiguous row of the
    transpose), so each is the same at any n: numpy's axis-0 mean of a strided [draws, n] array sums in an order
    that depends on n (a wide array's columns differed from a narrow one's in the last bits, and the memoised
    columns of `aggregate_step` then depended on which rate had asked first)."""
    return np.ascontiguousarray(a.T).mean(axis=1)


def aggregate_step(
    timer: StepTimer,
    b: int,
    ctx: int,
    t_dec: float,
    rate: float,
    tau: float,
    prompts: np.ndarray,
    budget: int,
    coarse: bool = False,
) -> tuple[float, float, float]:
    """(mean step s, share of steps that are mixed, prompt tokens per step) of continuous batching whose every step
    carries the prompt tokens that arrived during the step before: N ~ Poisson(``rate`` x ``tau``) prompts drawn from
    ``prompts`` [requests] (the tokens each computes), S their tokens; S over the ``budget`` takes ceil(S / budget)
    steps, each the decode step (``t_dec``, ``b`` sequences at ``ctx``) plus its chunk's extra on `_prompt_curve`.
    The step's extra is that of all its prompt tokens at once, so a mixed step's fixed cost (an eager step beside a
    replayed graph) is paid once for all its prompts and a step holding several prompts is as compute-bound as its
    tokens make it, as the discrete-event engine's steps are (a chunk's attention is priced from scratch). With
    data-parallel attention the N prompts are dealt round-robin over the ranks and the step's extra is W(S) + G(M)
    on `_prompt_surface`, M the busiest rank's share of S (`busiest_share`; each of a long run's steps at the run's
    share). The expectation over N is exact (Poisson weights); over the prompts, `_AGG_DRAWS` fixed draws per N.
    ``coarse``: the fixed point's coarse start (`COARSE_START`): the coarse curves (`_COARSE_NODES` nodes,
    `_COARSE_GRID` batches per octave), every `_COARSE_THIN`-th draw (still spread over the whole sample: the draws
    are stratified).

    Only the Poisson weights depend on ``rate`` and ``tau``: the means over the draws of n prompts' step time, steps,
    mixed steps and tokens, column n of each, are memoised per batch (`AGG_COLUMNS`; the fixed point comes back to
    the same rounded batch many times), each column as computed at any width (the draws' running totals are
    prefix-stable, `_prompt_sums`, and every column is reduced on its own), so the result is the same to the bit."""
    mixture = _arrival_mixture(rate, tau, prompts)
    if mixture is None:
        return t_dec, 0.0, 0.0
    weight, tokens = mixture
    width = len(weight)
    key = ("agg_columns", b, ctx, budget, coarse, t_dec, CURVE_REFINE, STRATIFIED, _prompts_id(prompts))
    cols = timer._memo.get(key) if AGG_COLUMNS else None
    if cols is None or cols.shape[1] < width:
        if coarse:
            tokens = tokens[::_COARSE_THIN]
        cap = float(max(budget, 1))
        full = np.floor(tokens / cap)
        rest = tokens - full * cap
        steps = np.maximum(full + (rest > 0), 1.0)
        dp = max(timer.layout.dp_attn, 1)
        nodes, surface = _prompt_surface(timer, b, ctx, budget, coarse)
        share = busiest_share(tokens, dp) if dp > 1 else 1.0
        time = (
            steps * t_dec
            + full * _on_surface(nodes, surface, np.array(cap), share)
            + np.where(rest > 0, _on_surface(nodes, surface, rest, share), 0.0)
        )
        mixed = np.where(tokens > 0, steps, 0.0)
        # [4, width]: the means over the draws of each column's step time, steps, mixed steps, tokens
        cols = np.array([_column_means(a) for a in (time, steps, mixed, tokens)])
        if AGG_COLUMNS:
            timer._memo[key] = cols
    e_steps = float(weight @ cols[1, :width])
    return (
        float(weight @ cols[0, :width]) / e_steps,
        float(weight @ cols[2, :width]) / e_steps,
        float(weight @ cols[3, :width]),
    )


def crowded_surface(
    nodes: np.ndarray,
    surface: np.ndarray,
    rate: float,
    tau: float,
    prompts: np.ndarray,
    budget: int,
    dp: int,
    t_dec: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The step that carries a prompt's last chunk of ``nodes`` tokens, on `_prompt_surface`'s ``surface`` [1 or 2,
    nodes] (`_on_surface`): the step also carries the other prompts that arrived during the step before (N ~
    Poisson(``rate`` x ``tau``) drawn from ``prompts``, as `aggregate_step`), all within the ``budget``; with
    data-parallel attention over ``dp`` ranks the chunk first on its rank, the others dealt round-robin after it.
    Returns (the mean extra s of the step at the chunk and the others' total tokens and the busiest
    rank's share of them, the chunk's part of that step, ``t_dec`` + extra, in proportion to its tokens) [nodes].
    The second is the prefill work a prompt brings to the queue of prompts: the step's time split over the prompts
    it carries by their tokens (they add up to the steps' time), so that a long prompt, whose rank's attention the
    others' ranks do not share, holds up the prompts behind it for about the whole step it costs alone."""
    mixture = _arrival_mixture(rate, tau, prompts)
    if mixture is None:
        alone = surface.sum(axis=0)
        return alone, t_dec + alone
    weight, others = mixture
    if dp > 1:
        other, first = _rank_sums(others, dp, 1)
    cap = float(max(budget, 1))
    crowded, part = [], []
    for x in nodes:
        total = x + others
        share = np.maximum(x + first, other) / total if dp > 1 else 1.0
        extra = _on_surface(nodes, surface, np.minimum(total, cap), share)
        crowded.append(float(weight @ extra.mean(axis=0)))
        part.append(float(weight @ ((t_dec + extra) * (x / total)).mean(axis=0)))
    return np.array(crowded), np.array(part)


def _slots_overloaded(
    timer: StepTimer,
    rate: float,
    mean_out: float,
    ctx: int,
    extra: float,
    max_batch: int,
    t_mix: float | None,
    f: float,
    chunk: int,
    chunks: int,
) -> PoolState:
    """The overloaded state where `busy_decode`'s law does not settle: ``max_batch`` sequences' steps (the decode
    step plus the prompts' ``extra`` s) cannot keep up with ``rate`` x (``mean_out`` - 1) tokens/s, so the queue for a
    slot grows without end; the batch the decodes ask for at that step, as the fixed point's verdict words it
    (``t_mix``: the mixed step, None: the step itself)."""
    full = _decode_step(timer, max(max_batch, 1), ctx).duration_s + extra
    demand = rate * (mean_out - 1) * full
    why = f"decode batch {demand:.0f} exceeds max_batch {max_batch}"
    return PoolState(full, full - extra, full if t_mix is None else t_mix, demand, f, chunk, chunks, 0, 0, True, why)


def held_tokens(inp: np.ndarray, out: np.ndarray) -> float:
    """KV-cache tokens a running request holds, on average over the running set (tokens): the requests' prompts
    ``inp`` and outputs ``out`` [requests], tokens.

    vLLM allocates a request's cache pages as its tokens come (vllm/v1/core/kv_cache_manager.py ``allocate_slots``:
    the step's new tokens only, nothing held for the output still to come), so a request decoding its g-th token holds
    its prompt and g - 1 tokens; over its ``out`` steps, ``inp + (out - 1) / 2`` on average. A request is in the
    running set for a time proportional to its output, so the running set holds the long ones more often: weighted by
    ``out``, ``sum(out x (inp + (out - 1) / 2)) / sum(out)``. Equal outputs give the prompt plus half the output;
    exponential ones about the prompt plus the whole output (E[o^2] / 2E[o] = E[o])."""
    w = np.maximum(np.asarray(out, float), 1.0)
    return float((w * (np.asarray(inp, float) + (w - 1.0) / 2.0)).sum() / w.sum())


@dataclass(frozen=True)
class Footprint:
    """What a replica's running requests hold in its KV cache (tokens), vLLM's way: each request its own pages
    (`held_tokens`, of which ``shared`` are prefix-cache pages) and the prefix pages the running requests reference,
    once each however many share them (vLLM's block pool counts a cached block's references,
    vllm/v1/core/block_pool.py ``touch`` / ``free_blocks``).

    ``batch`` running requests reference ``prefix_set x (1 - (1 - shared / prefix_set) ^ batch)`` prefix tokens: the
    distinct prefixes among them when each request's prefix is one of ``prefix_set / shared`` equally popular ones
    (``batch x shared`` while few run, the whole set when many do; more popular prefixes are shared more, so fewer).

    Attributes:
        held: tokens a running request holds on average, its shared prefix pages included (`held_tokens`).
        shared: of them, the prefix-cache tokens it shares, averaged the same way (weighted by output).
        prefix_set: tokens of the distinct prefixes (the prefix cache's working set); 0: no sharing.
    """

    held: float
    shared: float = 0.0
    prefix_set: float = 0.0

    def _sharing(self) -> bool:
        return self.prefix_set > 0 and self.shared > 0

    def own(self) -> float:
        """Tokens a running request holds beyond the prefix pages it shares."""
        return self.held - (self.shared if self._sharing() else 0.0)

    def tokens(self, batch: float) -> float:
        """Cache tokens ``batch`` running requests hold: their own pages and the prefix pages they reference."""
        if not self._sharing():
            return batch * self.held
        p = min(self.shared / self.prefix_set, 1.0)
        if p >= 1.0:  # one prefix: every running request shares it
            return batch * self.own() + self.prefix_set
        return batch * self.own() - self.prefix_set * math.expm1(batch * math.log1p(-p))

    def slots(self, kv_tokens: float) -> int:
        """The most running requests ``kv_tokens`` holds (`tokens` at most ``kv_tokens``; `tokens` grows with the
        batch)."""
        lo, hi = 0, int(kv_tokens / max(self.own(), 1.0)) + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.tokens(mid) <= kv_tokens else (lo, mid)
        return lo


def pool_state(
    timer: StepTimer,
    cap: Capacity,
    pool: Pool,
    rate: float,
    mean_in: float,
    mean_out: float,
    role: str,
    cached: float = 0.0,
    work: PrefillWork | None = None,
    prompts: np.ndarray | None = None,
    held: Footprint | None = None,
) -> PoolState:
    """Fixed point of the decode batch and step time for one replica at ``rate`` requests/s.

    ``mean_in``: mean prompt tokens; ``cached``: of them, the mean found in the prefix cache (tokens): only
    ``mean_in - cached`` are computed in prefill chunks, whose attention still reads the cached ones.
    ``work``: the requests' own prompt chunks priced at a nearby batch (`sim.serving.prefill_work`): the mixed
    steps' time per request is then their mean (moved to each batch tried by the mean prompt's change), not the
    mean prompt's, and the mixed steps per request their mean count.
    ``prompts``: the prompt tokens each request computes [requests]; given (and `aggregates`), a mixed pool's step is
    `aggregate_step`'s: the prompts each step carries together (``work`` then prices only the TTFT, in `_mixed`).
    ``held``: what the running requests hold in the KV cache (`Footprint`); None: ``mean_in + mean_out`` each. The
    state is overloaded when the batch holds more than the KV cache.
    """
    eng = pool.engine
    ctx = int(mean_in + mean_out / 2)
    decode_only = role == "decode"
    prefill_only = role == "prefill"
    cached = min(max(float(cached), 0.0), max(mean_in - 1.0, 0.0))
    comp_in = mean_in - cached  # prompt tokens computed per request
    b, tau = 1.0, None
    # whether the aggregated mixed pool's fixed point is still on its coarse start (`COARSE_START`)
    coarse = COARSE_START and CURVE_REFINE and role == "mixed" and prompts is not None and aggregates(pool)
    start = 0  # the iterate the refined curves took over at (the damping below counts from it)
    converged = False
    for it in range(200 + _COARSE_ITERS):
        if it - start >= 200:  # 200 iterates after the coarse start and no fixed point
            break
        bi = max(1, round(b)) if not prefill_only else 0
        chunk = 0 if decode_only else int(max(1, min(math.ceil(comp_in - 1e-9), eng.max_tokens - bi)))
        chunks = 0 if decode_only else math.ceil(comp_in / chunk)
        dec, mix = _steps(timer, bi, ctx, chunk, chunk_context(comp_in, cached, chunks))
        t_dec = dec.duration_s if dec else mix.duration_s
        # a mixed step runs the decode step's sequences and a prompt chunk: never shorter than the decode step, even
        # where the cost tables' noise between two batch shapes says so
        t_mix = max(mix.duration_s, t_dec)
        if decode_only:
            f, new_tau = 0.0, t_dec
            if BATCH_MIXTURE and PRODUCT_FORM and PF_DECODE and mean_out > 1:
                law = busy_decode(timer, rate * (mean_out - 1), ctx, 0.0, eng.max_batch)
                if law is None:
                    return _slots_overloaded(timer, rate, mean_out, ctx, 0.0, eng.max_batch, None, 0.0, 0, 0)
                new_tau = t_dec = law[0]
        elif role == "mixed" and prompts is not None and aggregates(pool):
            # a step's prompt tokens: the budget beside the decodes (whole prompts without chunking)
            budget = _step_budget(eng, bi)
            if BATCH_MIXTURE and not coarse and not PRODUCT_FORM:
                t_dec = mixed_decode(timer, b, ctx, eng.max_batch)
            new_tau, f, _ = aggregate_step(
                timer, bi, ctx, t_dec, rate, tau if tau is not None else t_dec, prompts, budget, coarse
            )
            if BATCH_MIXTURE and not coarse and PRODUCT_FORM and mean_out > 1:
                # the batch's stationary law with the prompts' mean time per step on every step: that time (and the
                # share of mixed steps) read linearly between the whole batches around b, so that the map from b is
                # continuous and has a fixed point (at the rounded batch alone it jumped where b crossed a half and
                # the iterates cycled there: "no steady state" at a few sequences)
                lo = max(1, math.floor(b))
                w = min(max(b - lo, 0.0), 1.0)
                extra = new_tau - t_dec
                if w > 0:
                    parts = []
                    for k in (lo, lo + 1):
                        t_k = _decode_step(timer, k, ctx).duration_s
                        if k == bi and t_k == t_dec:  # the call above, with the same arguments
                            tau_k, f_k = new_tau, f
                        else:
                            tau_k, f_k, _ = aggregate_step(
                                timer, k, ctx, t_k, rate, tau if tau is not None else t_k, prompts, _step_budget(eng, k)
                            )
                        parts.append((tau_k - t_k, f_k))
                    extra = (1 - w) * parts[0][0] + w * parts[1][0]
                    f = (1 - w) * parts[0][1] + w * parts[1][1]
                law = busy_decode(timer, rate * (mean_out - 1), ctx, extra, eng.max_batch)
                if law is None:
                    return _slots_overloaded(timer, rate, mean_out, ctx, extra, eng.max_batch, t_mix, f, chunk, chunks)
                t_dec, new_tau = law[0] - extra, law[0]
            t_mix = t_dec + (new_tau - t_dec) / f if f > 0 else t_mix
            new_b = rate * max(mean_out - 1, 0) * new_tau
            diverged = not math.isfinite(new_tau) or new_tau > 1e3 or new_b > 4 * eng.max_batch
            if coarse and (
                diverged
                or it + 1 >= _COARSE_ITERS
                or (
                    tau is not None
                    and abs(new_tau - tau) <= _COARSE_TAU * tau
                    and abs(new_b - b) <= _COARSE_BATCH * max(b, 1)
                )
            ):
                # near the fixed point (or past what the coarse curves can tell): on with the refined curves, from
                # here, or from the start where the coarse curves ran away (their chords can overstate the steps)
                coarse, start = False, it + 1
                if diverged:
                    b, tau = 1.0, None
                continue
            if not math.isfinite(new_tau) or new_tau > 1e3:
                return PoolState(
                    t_mix, t_dec, t_mix, b, 1.0, chunk, chunks, 0, 0, True, "prefill work exceeds the steps"
                )
            if new_b > 4 * eng.max_batch:
                return PoolState(new_tau, t_dec, t_mix, new_b, f, chunk, chunks, 0, 0, True, "decode batch diverges")
            # the rounded batch and the batch grid of the cost curve can make the iterates cycle: damped harder after
            # 50 steps, and held to 1e-3 after 100
            tol = 1e-4 if it - start < 100 else 1e-3
            if tau is not None and abs(new_tau - tau) <= tol * tau and abs(new_b - b) <= 0.01 * max(b, 1):
                tau, b, converged = new_tau, new_b, True
                break
            w = 0.5 if it - start < 50 else 0.1
            tau = (1 - w) * (tau if tau is not None else new_tau) + w * new_tau
            b = (1 - w) * b + w * new_b
            continue
        else:
            # f depends on tau: f = rate * tau * chunks; tau = f t_mix + (1 - f) t_dec
            # (time per second in mixed steps beyond decode steps: rate x the extra per request, so
            # tau = t_dec / (1 - rate x extra))
            extra, n_mix = chunks * (t_mix - t_dec), chunks
            if work is not None:
                extra, n_mix = max(work.mean_x + extra - work.mean_form, 0.0), work.mean_n
            denom = 1 - rate * extra
            new_tau = t_dec / denom if denom > 0 else math.inf
            f = min(1.0, rate * new_tau * n_mix) if math.isfinite(new_tau) else 1.0
            if f >= 1.0:
                new_tau = t_mix
                if role == "mixed":
                    new_tau, chunk, mix, packed_over = _packed(
                        timer, rate, comp_in, bi, ctx, chunk, eng.max_tokens, int(cached)
                    )
                    t_mix, chunks = new_tau, math.ceil(comp_in / chunk)
                    if packed_over:
                        return PoolState(
                            t_mix, t_dec, t_mix, b, 1.0, chunk, chunks, 0, 0, True, "prefill tokens exceed the budget"
                        )
        packed = role == "mixed" and f >= 1.0
        busy = rate * chunks * t_mix if work is None else rate * (n_mix * t_dec + extra)
        if not math.isfinite(new_tau) or (not decode_only and not packed and busy > 1.0 + 1e-9):
            return PoolState(t_mix, t_dec, t_mix, b, 1.0, chunk, chunks, 0, 0, True, "prefill work exceeds the steps")
        new_b = rate * max(mean_out - 1, 0) * new_tau if not prefill_only else 0.0
        if new_b > 4 * eng.max_batch:  # the decode batch runs away: more work arrives than the engine can do
            f = f if not decode_only else 0.0
            return PoolState(new_tau, t_dec, t_mix, new_b, f, chunk, chunks, 0, 0, True, "decode batch diverges")
        if tau is not None and abs(new_tau - tau) <= 1e-4 * tau and abs(new_b - b) <= 0.01 * max(b, 1):
            tau, b, converged = new_tau, new_b, True
            break
        tau, b = new_tau, 0.5 * b + 0.5 * new_b
    if not converged:
        return PoolState(tau or 0, t_dec, t_mix, b, f, chunk, chunks, 0, 0, True, "no steady state")
    over, reason = False, ""
    if dec is None:
        bps, fps = mix.bytes / mix.duration_s, mix.flops / mix.duration_s
    else:
        bps = (f * mix.bytes + (1 - f) * dec.bytes) / tau
        fps = (f * mix.flops + (1 - f) * dec.flops) / tau
    if b > eng.max_batch:
        over, reason = True, f"decode batch {b:.0f} exceeds max_batch {eng.max_batch}"
    elif (b * (mean_in + mean_out) if held is None else held.tokens(b)) > cap.kv_tokens:
        over, reason = True, f"KV cache of {b:.0f} requests exceeds {cap.kv_tokens:,} tokens"
    return PoolState(tau, t_dec, t_mix, b, f, chunk, chunks, bps, fps, over, reason)


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in an M/M/c queue: ``c`` servers, offered load ``a`` Erlangs (0..1; 1 when
    a >= c). Erlang B by its stable recurrence B_k = a B_(k-1) / (k + a B_(k-1)), then C = B / (1 - (a/c)(1 - B))."""
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b / (1 - a / c * (1 - b))


def slot_wait(c: int, a: float, hold_s: float, cs2: float) -> float:
    """Mean wait (s) for one of ``c`` slots (vLLM's running set: max_num_seqs, or the requests the KV cache holds)
    at an offered load of ``a`` Erlangs, each request holding a slot ``hold_s`` s on average with squared
    coefficient of variation ``cs2``: the M/G/c approximation of Allen and Cunneen (W = C(c, a) hold / (c - a) x
    (1 + cs2) / 2, Poisson arrivals). Exactly 0 far below saturation (a < c - 5 sqrt(c), where C < 1e-6), inf at
    or above it."""
    if a <= 0 or c <= 0:
        return 0.0 if a <= 0 else math.inf
    if a >= c:
        return math.inf
    if a < c - 5 * math.sqrt(c):
        return 0.0
    return erlang_c(c, a) * hold_s / (c - a) * (1 + cs2) / 2


def fifo_aborts(
    arrivals_s: np.ndarray, hold_s: np.ndarray, slots: int, timeout_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """`fifo_waits` with every client giving up ``timeout_s`` s after its arrival: (each request's wait for a slot,
    s [requests]; whether it failed [requests]), in the order of ``arrivals_s``.

    As the discrete-event engine aborts them (`sim.serving.replica.Replica.abort`): a request whose deadline comes
    before a slot frees never takes one (the slot stays free for the next); one admitted that would still be running
    at its deadline fails and frees its slot then. The failed requests' waits are up to their deadline.
    O(n log slots)."""
    n = len(arrivals_s)
    waits, failed = np.zeros(n), np.zeros(n, bool)
    if n == 0:
        return waits, failed
    if slots <= 0:
        return np.full(n, float(timeout_s)), np.ones(n, bool)
    order = np.argsort(arrivals_s, kind="stable")
    t, h = np.asarray(arrivals_s, float)[order], np.asarray(hold_s, float)[order]
    free = [-math.inf] * slots
    w, f = np.zeros(n), np.zeros(n, bool)
    for i in range(n):
        deadline = t[i] + timeout_s
        first = heapq.heappop(free)
        start = max(t[i], first)
        if start >= deadline:  # gave up in the queue: the slot is still free
            heapq.heappush(free, first)
            w[i], f[i] = deadline - t[i], True
            continue
        end = start + h[i]
        if end > deadline:  # aborted while running: the slot frees at the deadline
            end, f[i] = deadline, True
        w[i] = start - t[i]
        heapq.heappush(free, end)
    waits[order], failed[order] = w, f
    return waits, failed


def replica_aborts(
    arrivals_s: np.ndarray, hold_s: np.ndarray, servers: int, replicas: int, round_robin: bool, timeout_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """`replica_waits` with the clients' timeout (`fifo_aborts`): (waits s, failed) [requests]."""
    waits, failed = _per_replica(
        arrivals_s, hold_s, servers, replicas, round_robin, lambda a, h, c: fifo_aborts(a, h, c, timeout_s)
    )
    return waits, failed


def _per_replica(
    arrivals_s: np.ndarray,
    hold_s: np.ndarray,
    servers: int,
    replicas: int,
    round_robin: bool,
    queue: Any,
) -> tuple[np.ndarray, ...]:
    """``queue(arrivals, holds, servers)`` (per-request arrays, in the order of its arrivals) on one queue of all the
    replicas' servers, or with ``round_robin`` on each replica's every ``replicas``-th arrival, put back together
    in the order of ``arrivals_s``. ``hold_s`` [requests] or a scalar."""
    hold = np.broadcast_to(hold_s, np.shape(arrivals_s))
    if replicas == 1 or not round_robin:
        return tuple(queue(arrivals_s, hold, servers * replicas))
    order = np.argsort(arrivals_s, kind="stable")
    out: list[np.ndarray] = []
    for k in range(replicas):
        idx = order[k::replicas]
        for j, part in enumerate(queue(arrivals_s[idx], hold[idx], servers)):
            if k == 0:
                out.append(np.zeros(len(order), dtype=np.asarray(part).dtype))
            out[j][idx] = part
    return tuple(out)


def _slot_wait(
    s: PoolState,
    ttft: np.ndarray,
    out: np.ndarray,
    rate: float,
    pool: Pool,
    kv_tokens: int,
    held: Footprint,
    arrivals_s: np.ndarray | None = None,
    round_robin: bool = False,
    timeout_s: float | None = None,
) -> tuple[np.ndarray | float, np.ndarray | None]:
    """The wait (s) of a mixed pool's arrivals for a slot of the running set at ``rate`` req/s per replica, and which
    requests fail (None: the clients' timeout not modelled).

    A request holds a slot from admission to its last token (``ttft`` [requests] s, engine side, plus its decode
    steps); the running set holds ``max_batch`` requests, or the requests the KV cache holds (``held``,
    `Footprint.slots`). At or above saturation ``s`` is flagged overloaded (if not yet) and 0 is returned: the latencies
    stay those of the saturated engine, as with the other overload checks.

    With the requests' arrival times ``arrivals_s`` [requests] s (an open loop), each request's own wait from the
    FIFO recursion on them (`fifo_waits`; vLLM's scheduler admits its waiting queue first come, first served,
    vllm/v1/core/sched/scheduler.py): an M/G/c formula assumes Poisson arrivals, and the replayed runs of
    ../shared/data/vllm-e2e-dense are burstier over a request's hold (Llama-2-70B TP4 at 20 req/s: counts in 5 s
    windows have variance 2.3 x their mean, 10 s 3.4 x, though the gaps' CV is 1.0); replaying those arrivals
    through 128 slots with the measured holds gives its measured TTFT (mean 126 vs 121 ms, P99 1031 vs 987 ms) where
    the M/G/c gives a 7 ms wait. Several replicas: each its own queue of every ``replicas``-th arrival
    (``round_robin``), else one queue of all their slots (the least-loaded router pools them). Without arrivals
    (a closed loop), the mean wait of the M/G/c approximation (`slot_wait`). With the clients' ``timeout_s`` and
    arrivals, the recursion with their deadlines (`fifo_aborts`), also past saturation.
    """
    hold = ttft + np.maximum(out - 1, 0) * s.tau
    slots = min(pool.engine.max_batch, held.slots(kv_tokens))
    busy = rate * float(hold.mean())  # offered load, Erlangs
    if busy >= slots:
        if not s.overloaded:
            s.overloaded, s.reason = True, f"requests need {busy:.0f} slots of the running set, it has {slots}"
        if timeout_s is None or arrivals_s is None:
            return 0.0, None
    if arrivals_s is None:
        return slot_wait(slots, busy, float(hold.mean()), float(hold.var() / hold.mean() ** 2)), None
    if timeout_s is not None:
        return replica_aborts(arrivals_s, hold, slots, max(pool.replicas, 1), round_robin, timeout_s)
    return replica_waits(arrivals_s, hold, slots, max(pool.replicas, 1), round_robin), None


#: On: an arrival that finds its replica idle (nothing running or waiting) waits out no step (`Analytical._mixed`);
#: off: every arrival waits out what is left of a step and, with an overlapping scheduler, the step decided ahead.
IDLE_ARRIVALS = True
#: On: the step decided ahead of an arrival (overlapping scheduler) is the busy replica's mean step as an arrival finds
#: it (`busy_step`); off: the mean step per decoded token, ``PoolState.tau`` (as before 2026-12-07 evening).
LAG_AT_BATCH = True
#: On (with `IDLE_ARRIVALS`): the share of arrivals that find their replica idle is P(N = 0) under `busy_decode`'s
#: law, given to those after the replay's longest idle spells; off: the replay's own idle arrivals (as before
#: 2026-12-07 evening).
IDLE_SHARE = True
#: `Analytical._lag`'s and `_idle_share`'s default: the batch's law is computed there (not given by the caller).
_COMPUTE = object()


def residual_draws(n: int, steps_s: tuple[float, ...], shares: tuple[float, ...], seed: int) -> np.ndarray:
    """What is left of the step in progress when each of ``n`` requests arrives, s [n].

    An arrival at a random time lands in a step with probability in proportion to the step's length (steps of
    ``steps_s`` s, making up ``shares`` of all steps), at a uniform point in it, so what is left has the law
    F(x) = sum_k q_k min(x / L_k, 1) with q_k = share_k L_k / sum_j share_j L_j, whose mean is the residual
    E[step^2] / (2 E[step]). The draws are that law's quantiles at (k + 1/2) / n (stratified: their mean is the
    residual to O(1/n^2)) dealt to the requests in an order drawn from ``seed``, independent of their prompts.
    """
    if n <= 0:
        return np.zeros(0)
    lengths = np.maximum(np.asarray(steps_s, float), 0.0)
    weight = np.asarray(shares, float) * lengths
    if weight.sum() <= 0:
        return np.zeros(n)
    q = weight / weight.sum()
    xs = np.concatenate([[0.0], np.unique(lengths[lengths > 0])])
    cdf = (q[None, :] * np.minimum(xs[:, None] / np.where(lengths > 0, lengths, 1.0)[None, :], 1.0)).sum(axis=1)
    draws = np.interp((np.arange(n) + 0.5) / n, cdf, xs)  # F is linear between the step lengths
    return draws[np.random.default_rng(seed).permutation(n)]


def replica_waits(
    arrivals_s: np.ndarray, hold_s: np.ndarray, servers: int, replicas: int, round_robin: bool
) -> np.ndarray:
    """Each request's wait (s) [requests] for one of ``servers`` servers per replica, first come first served
    (`fifo_waits`): with ``round_robin``, each replica its own queue of every ``replicas``-th arrival; else one
    queue of all the replicas' servers (the least-loaded router pools them). ``hold_s`` [requests] or a scalar."""

    def waits_of(arr: np.ndarray, h: np.ndarray, c: int) -> tuple[np.ndarray]:
        return (single_server_waits(arr, h) if c == 1 else fifo_waits(arr, h, c),)

    return _per_replica(arrivals_s, hold_s, servers, replicas, round_robin, waits_of)[0]


def prefix_hits(
    df: pd.DataFrame, caching: bool, declared: float | None, block_size: int, replicas: int = 1
) -> tuple[np.ndarray, float]:
    """Prompt tokens each request finds in the prefix cache, if the cache keeps what it has seen [requests], and
    the tokens the distinct prefixes occupy (the cache's working set, tokens per replica).

    As the simulator's replica (`sim.serving.replica`): caching off, none; a declared hit rate r, min(round(r x
    prompt), prompt - 1) for every request; else a request whose ``prefix_id`` was seen before finds its prefix's
    full blocks, min(prefix_tokens, prompt - 1) // block_size blocks, and the first ``replicas`` requests of each
    prefix (one per replica's own cache) find nothing. Requests in ``df``'s arrival order.
    """
    inp = df["input_tokens"].to_numpy(np.int64)
    none = np.zeros(len(inp), float)
    if not caching:
        return none, 0.0
    if declared is not None:
        return declared_hit(declared, inp).astype(float), 0.0
    if "prefix_id" not in df.columns or "prefix_tokens" not in df.columns:
        return none, 0.0
    order = np.argsort(df["arrival_s"].to_numpy(float), kind="stable") if "arrival_s" in df.columns else None
    pid = df["prefix_id"].to_numpy(np.int64)
    full = cacheable_blocks(df["prefix_tokens"].to_numpy(np.int64), inp, block_size) * block_size
    seen = np.zeros(len(inp), np.int64)  # earlier requests of the same prefix, in arrival order
    ids = pid if order is None else pid[order]
    ok = ids >= 0
    if ok.any():
        s = pd.Series(ids[ok])
        counts = s.groupby(s).cumcount().to_numpy()
        tmp = np.zeros(len(ids), np.int64)
        tmp[ok] = counts
        if order is None:
            seen = tmp
        else:
            seen[order] = tmp
    hits = np.where((pid >= 0) & (seen >= max(replicas, 1)), full, 0).astype(float)
    working = float(pd.Series(full[pid >= 0]).groupby(pid[pid >= 0]).max().sum()) if (pid >= 0).any() else 0.0
    return hits, working


class Analytical:
    """The analytical model of one built scenario, reusable across request rates.

    Building it samples the workload's lengths and sizes each pool's KV cache and step timer
    once; `summary` then solves the steady state at any rate, reusing the timers' memoised steps
    (what a sweep over rates or a capacity search needs).

    Args:
        built: the scenario's objects.
        seed: the workload sample's seed (None: the scenario's).
        timers: step timers per pool role to reuse (a sweep shares them between configurations that
            differ only in the workload or ``max_batch``, which the timers do not depend on).
        caps: `replica_capacity` per pool role, already computed (a sweep shares them as it shares ``timers``:
            they read neither the workload nor ``max_batch``); None: computed here.
        sample: the workload's requests, ``generate(built.workload, seed, built.base_dir)`` already drawn (a sweep
            shares one per workload and seed; read, never modified); None: drawn here.
    """

    def __init__(
        self,
        built: Built,
        seed: int | None = None,
        timers: dict[str, StepTimer] | None = None,
        caps: dict[str, Capacity] | None = None,
        sample: pd.DataFrame | None = None,
    ) -> None:
        t0 = time.perf_counter()
        sc = built.scenario
        seed = sc.seed if seed is None else seed
        #: seeds the order in which the residual steps are dealt to the requests (`residual_draws`)
        self.seed = int(seed or 0)
        df = generate(built.workload, seed=seed, base_dir=built.base_dir) if sample is None else sample
        if df.empty:
            raise MoesimError("the workload has no requests", "set workload.requests >= 1 or give a non-empty trace")
        self.built = built
        self.inp = df["input_tokens"].to_numpy(float)
        self.out = df["output_tokens"].to_numpy(float)
        self.mean_in, self.mean_out = float(self.inp.mean()), float(self.out.mean())
        #: KV-cache tokens a running request holds on average (`held_tokens`)
        self.held = held_tokens(self.inp, self.out)
        w = built.workload
        #: the workload's own request rate, req/s: realised by its arrivals (open loop), None for a closed loop
        self.workload_rate: float | None = None
        #: the requests' arrival times [requests], s from the first (open loop; None for a closed loop): the queue
        #: for the running set's slots replays them, scaled to the rate solved (`_slot_wait`)
        self.arrivals: np.ndarray | None = None
        if w.arrival != "closed":
            arr = df["arrival_s"].to_numpy(float)
            span = float(arr.max() - arr.min()) if len(arr) > 1 else 0.0
            self.workload_rate = (len(arr) - 1) / span if span > 0 else float(w.rate or 1.0)
            self.arrivals = arr - (arr.min() if len(arr) else 0.0)
        self.pools = {p.role: p for p in built.pools}
        self.caps = caps or {role: replica_capacity(built, p) for role, p in self.pools.items()}
        check_requests_fit(built, df, self.caps)
        # chunked/sliding-window layers hold their chunk or window only: count the cache in tokens at the tokens a
        # running request holds on average (`held_tokens`), `Capacity.at_length`
        held = max(round(self.held), 1)
        self.caps = {role: c.at_length(held, self.pools[role].engine.block_size) for role, c in self.caps.items()}
        front = self.pools.get("mixed") or self.pools["prefill"]
        prof = engine_profile(front.engine, built.base_dir)
        #: per request, prompt tokens found in the prefix cache if it keeps every prefix [requests], and the
        #: tokens the distinct prefixes hold (the working set the cache must keep)
        self.hits, self.prefix_set = prefix_hits(
            df, prof.prefix_caching, front.engine.prefix_hit_rate, front.engine.block_size, front.replicas
        )
        self.timers = timers or {role: make_timer(built, p, self.caps[role], seed) for role, p in self.pools.items()}
        self.setup_s = time.perf_counter() - t0

    def solve(
        self, rate: float, arrivals_s: np.ndarray | None = None
    ) -> tuple[dict[str, PoolState], np.ndarray, np.ndarray, float | np.ndarray]:
        """Pool states, TTFT [requests] s, end-to-end latency [requests] s and TPOT s (one for all, or [requests]
        where a mixed pool replays the arrivals, `_mixed`) at ``rate`` req/s.

        ``arrivals_s`` [requests] s: the times at which the requests queue for the running set's slots, as given
        (a replayed run's load stage solved at its own rate); None: the workload's arrivals scaled to ``rate``
        (`_arrivals_at`).
        """
        built, pools, caps, timers = self.built, self.pools, self.caps, self.timers
        inp, out, mean_in, mean_out = self.inp, self.out, self.mean_in, self.mean_out
        states = {}
        failed = None
        if "mixed" in pools:
            s, ttft, tpot, failed = self._mixed(rate, arrivals_s)
            states["mixed"], transfer, batch = s, 0.0, s.batch
        else:
            pp, dp = pools["prefill"], pools["decode"]
            hits = self.hits * (1.0 if self.prefix_set <= caps["prefill"].kv_tokens else 0.0)
            sp = pool_state(
                timers["prefill"], caps["prefill"], pp, rate / pp.replicas, mean_in, 1, "prefill", hits.mean()
            )
            sp.cached = float(hits.mean())
            sd = pool_state(
                timers["decode"],
                caps["decode"],
                dp,
                rate / dp.replicas,
                mean_in,
                mean_out,
                "decode",
                held=Footprint(self.held),
            )
            states["prefill"], states["decode"] = sp, sd
            # each prompt's own chunks, one prefill step each (`sim.serving.prefill_work`), queued FCFS per replica
            tp, ctx0 = timers["prefill"], int(mean_in)
            budget = max(pp.engine.max_tokens, 1) if pp.engine.chunked_prefill else 10**9

            def prefill_step(chunk: int, chunk_ctx: int) -> float:
                return _steps(tp, 0, ctx0, chunk, chunk_ctx)[1].duration_s

            service = prefill_work(prefill_step, 0, inp - hits, hits, budget, 0.0, 0.0).x
            wait, rho = prefill_queue(rate / pp.replicas, service, 0.0)
            if not math.isfinite(wait):
                sp.overloaded, sp.reason = True, f"prefill utilisation {rho:.2f} >= 1"
            else:
                arr = self._arrivals_at(rate) if arrivals_s is None else np.asarray(arrivals_s, float)
                if arr is not None:
                    wait = replica_waits(arr, service, 1, pp.replicas, built.scenario.router == "round_robin")
            ttft = wait + service
            cl = built.cluster
            d = built.scenario.disaggregation
            kind = d.kv_link if d and d.kv_link != "auto" else ("intra" if built.gpus <= cl.gpus_per_node else "inter")
            bw, lat = cl.link(kind)
            per_tok = kv_bytes_per_token(built.model, Layout(), built.precision)
            transfer = float(np.mean(inp * per_tok / (bw * pp.layout.tp * pp.layout.pp) + lat))
            tpot = sd.tau  # the decode pool runs decode steps only
            batch = sd.batch
        e2e = ttft + transfer + np.maximum(out - 1, 0) * tpot
        # the request path, as the simulator's (`sim.serving.metrics`): API server and tokeniser before the
        # scheduler, detokeniser after it; TTFT and E2E as the client sees them
        path = engine_profile((pools.get("mixed") or pools["prefill"]).engine, built.base_dir)
        h = path.host
        front = front_s(self.inp, h["api_per_request_s"], h["tokenize_per_token_s"], h["tokenize_wait_s"])
        front = front + self._api_wait(path, rate, arrivals_s)
        ttft, e2e = client_times(
            front + ttft,
            front + e2e,
            out,
            detokenize_per_token_s=h["detokenize_per_token_s"],
            stream=path.stream,
            chunk_tokens=path.stream_chunk_tokens,
            first_batch_s=h["stream_per_seq_s"] * batch,
            finish_batch_s=h["stream_per_seq_s"] * batch,
        )
        if failed is not None:
            ttft, e2e = _drop_failed(ttft, e2e, failed, built.workload.timeout_s)
        return states, ttft, e2e, tpot

    def _mixed(
        self, rate: float, arrivals_s: np.ndarray | None = None
    ) -> tuple[PoolState, np.ndarray, float | np.ndarray, np.ndarray | None]:
        """The mixed pool at ``rate`` req/s (`solve`): its state, each request's engine-side TTFT [requests] s (slot
        wait, prefill queue and its own prompt chunks) and TPOT, s: one for all, or [requests] where the arrivals
        are replayed (each request decoding through the prompts prefilled meanwhile, `prefill_work.decode_spans`),
        and which requests' clients gave up ([requests]; None: the timeout not modelled, `_slot_wait`)."""
        built, caps, timers = self.built, self.caps, self.timers
        inp, out, mean_in, mean_out = self.inp, self.out, self.mean_in, self.mean_out
        p = self.pools["mixed"]
        hits, r = self.hits, rate / p.replicas
        held = self._footprint(hits)
        s = pool_state(
            timers["mixed"], caps["mixed"], p, r, mean_in, mean_out, "mixed", hits.mean(), None, inp - hits, held
        )
        kept = self._kept(s, caps["mixed"].kv_tokens)
        if kept < 1.0:  # the prefixes do not all stay cached beside the running requests
            hits = hits * kept
            held = self._footprint(hits)
            s = pool_state(
                timers["mixed"], caps["mixed"], p, r, mean_in, mean_out, "mixed", hits.mean(), None, inp - hits, held
            )
        s.cached = float(hits.mean())
        s, work = self._refine(timers["mixed"], caps["mixed"], p, r, s, inp - hits, hits)
        inp = inp - hits  # prompt tokens each request computes
        resid = (s.mixed_frac * s.t_mixed**2 + (1 - s.mixed_frac) * s.t_decode**2) / (2 * s.tau)
        # a prompt of I tokens: chunks of the budget left beside the decoders, each costing the decode
        # step plus its share of the mean chunk's extra time (linear in prefill tokens)
        budget = max(p.engine.max_tokens - round(s.batch), 1) if p.engine.chunked_prefill else 10**9
        # (a mixed step does the decode step's work and a prompt chunk: never less time, whatever the tables'
        # noise between their batch shapes says)
        extra = max(s.t_mixed - s.t_decode, 0.0) / max(s.chunk, 1)
        # an overlapping scheduler has decided the next step already: an arrival joins the one after it
        busy = self._busy(timers["mixed"], p, r, s)  # the decode batch's law, for the step ahead and idle arrivals
        lag = self._lag(timers["mixed"], p, r, s, busy) if engine_profile(p.engine, built.base_dir).overlap else 0.0
        arr = self._arrivals_at(rate) if arrivals_s is None else np.asarray(arrivals_s, float)
        rr = built.scenario.router == "round_robin"
        tpot: float | np.ndarray = s.tau
        # what is left of the step in progress at each arrival: its mean is ``resid``, its spread each request's own
        mixed_steps = ((s.t_mixed, s.t_decode), (s.mixed_frac, 1.0 - s.mixed_frac))
        if work is None:
            left = residual_draws(len(inp), *mixed_steps, self.seed)
            ttft = left + lag + np.ceil(inp / budget) * s.t_decode + inp * extra
        else:  # each prompt's own chunks, queued FCFS for the prefill work (`sim.serving.prefill_work`)
            service = work.n * s.t_decode + work.shifted(self._mean_form(timers["mixed"], p, s.batch)[1])
            queue_service, own = service, service
            agg = aggregates(p)
            if agg:
                # the steps carry the waiting prompts together (`aggregate_step`): a prompt waits on the prompt
                # tokens ahead of it, which full steps clear at ``budget`` tokens per full mixed step; its last chunk
                # rides a step crowded with the prompts that arrived with it (`crowded_surface`), its earlier chunks
                # fill whole steps
                b = max(1, round(s.batch))
                ctx = int(mean_in + mean_out / 2)
                cap = _step_budget(p.engine, b)
                dp = max(p.layout.dp_attn, 1)
                last = work.comp - np.maximum(work.n - 1, 0) * cap
                nodes, surface = _prompt_surface(timers["mixed"], b, ctx, cap)
                full_step = s.t_decode + float(_on_surface(nodes, surface, np.array(float(cap))))
                crowded, part = crowded_surface(nodes, surface, r, s.tau, work.comp, cap, dp, s.t_decode)
                if dp > 1:
                    # data-parallel attention: a step's prompts run on their own ranks, the step as long as the
                    # busiest rank's; a prompt's full chunk is the whole budget on its one rank, and it brings the
                    # queue its part of each step it rides
                    queue_service = np.maximum(work.n - 1, 0) * full_step + np.interp(last, nodes, part)
                else:
                    queue_service = work.comp * full_step / cap
                own = np.maximum(work.n - 1, 0) * full_step + s.t_decode + np.interp(last, nodes, crowded)
            # an arrival finding no prompt in prefill waits out the step running: half of one (the decode step's),
            # or the residual of the mixed and decode steps as the steps carry prompts together; with data-parallel
            # attention the prompts' parts of their steps hold each step's whole time, so the step an arrival
            # finding none in prefill waits out is a decode step
            agg_idle = agg and max(p.layout.dp_attn, 1) <= 1
            idle = 2 * resid if agg_idle else s.t_decode
            wait, rho = prefill_queue(r, queue_service, idle)
            if not math.isfinite(wait):
                s.overloaded, s.reason = True, f"prefill work utilisation {rho:.2f} >= 1"
                wait = 0.0
            elif arr is not None:  # the arrivals as they come: each prompt behind those still in prefill
                queued = replica_waits(arr, queue_service, 1, p.replicas, rr)
                # the step an arrival finding no prompt in prefill waits out, drawn with mean idle / 2
                steps = mixed_steps if agg_idle else ((s.t_decode,), (1.0,))
                wait = queued + np.where(queued > 0, 0.0, residual_draws(len(arr), *steps, self.seed))
                if p.replicas == 1 or rr:  # each request decodes through the prompts prefilled meanwhile
                    reps = max(p.replicas, 1)
                    spans = np.zeros(len(arr))
                    order = np.argsort(arr, kind="stable")
                    x_all = service - work.n * s.t_decode
                    scale = 1.0
                    if agg and float(np.mean(x_all)) > 0 and s.tau > 0:
                        # the prompts' extra time as the steps carry them together: a second holds 1 - t_decode /
                        # tau of it, as the mean step says; laid one after another from each arrival
                        scale = max(1.0 - s.t_decode / s.tau, 0.0) / (r * float(np.mean(x_all)))
                    for k in range(reps):
                        i = order[k::reps]
                        x_i = x_all[i] * scale
                        if agg:
                            start = arr[i] + replica_waits(arr[i], x_i, 1, 1, False)
                            spans[i] = decode_spans(start, x_i, x_i, out[i], s.t_decode)
                        else:
                            spans[i] = decode_spans(arr[i] + queued[i], service[i], x_i, out[i], s.t_decode)
                    tpot = np.where(out > 1, spans / np.maximum(out - 1, 1), s.tau)
                    if IDLE_ARRIVALS:
                        # an arrival that finds its replica with nothing running or waiting starts a step at once:
                        # no step to wait out, none decided ahead of it; a replica is busy until the last of the
                        # requests before it has its last token (this replay's own finish times)
                        finish = arr + wait + lag + own + spans
                        slack = np.zeros(len(arr))  # how long before each arrival its replica fell idle
                        for k in range(reps):
                            i = order[k::reps]
                            before = np.concatenate([[-math.inf], np.maximum.accumulate(finish[i])[:-1]])
                            slack[i] = arr[i] - before
                        free = slack >= 0
                        share = self._idle_share(timers["mixed"], p, r, s, busy)
                        if share is not None:
                            # as many as the batch's law finds idle, those after the longest idle spells, and the
                            # first arrival at each replica (it finds it empty as the run starts): the replay's
                            # decode steps are the mean batch's, so it drains a nearly empty replica too slowly and
                            # finds it idle too seldom (H200-SXM TP1 at 1 req/s: 2% of arrivals where the law and
                            # the discrete-event engine find 10%)
                            free = np.isinf(slack)
                            free[np.argsort(-slack, kind="stable")[: round(share * len(arr))]] = True
                        wait = np.where(free, 0.0, wait)
                        lag = np.where(free, 0.0, lag)
            ttft = wait + lag + own
        timeout = built.workload.timeout_s
        slot, failed = _slot_wait(s, ttft, out, r, p, caps["mixed"].kv_tokens, held, arr, rr, timeout)
        return s, ttft + slot, tpot, failed

    def _law_args(self, pool: Pool, rate: float, s: PoolState) -> tuple[float, int, float, int] | None:
        """`busy_decode`'s arguments for the mixed pool's state ``s`` at ``rate`` req/s per replica (load, context,
        the prompts' mean time per step, max batch), as `pool_state` solved them; None where the batch has no such
        law (not an aggregated mixed pool under `PRODUCT_FORM`, overloaded, or one output token)."""
        if not (BATCH_MIXTURE and PRODUCT_FORM and aggregates(pool)) or s.overloaded or self.mean_out <= 1:
            return None
        ctx = int(self.mean_in + self.mean_out / 2)
        return rate * (self.mean_out - 1), ctx, max(s.tau - s.t_decode, 0.0), pool.engine.max_batch

    def _busy(self, timer: StepTimer, pool: Pool, rate: float, s: PoolState) -> tuple[tuple, np.ndarray] | None:
        """(`_law_args`, `_busy_law` of them) for the mixed pool's state ``s`` at ``rate`` req/s per replica; None
        where there is no such law."""
        args = self._law_args(pool, rate, s)
        law = _busy_law(timer, *args) if args is not None else None
        return None if law is None else (args, law)

    def _lag(self, timer: StepTimer, pool: Pool, rate: float, s: PoolState, busy: Any = _COMPUTE) -> float:
        """The step an arrival waits out after the one running when the scheduler decides a step ahead (s): the
        busy replica's mean step as an arrival finds it (`busy_step`, `LAG_AT_BATCH`) where the batch has
        `busy_decode`'s law (an aggregated mixed pool, `PRODUCT_FORM`), else the mean step per decoded token.
        ``busy``: `_busy` of the same arguments where the caller has it (computed here otherwise)."""
        if not LAG_AT_BATCH:
            return s.tau
        busy = self._busy(timer, pool, rate, s) if busy is _COMPUTE else busy
        step = busy_step(timer, *busy[0], law=busy[1]) if busy is not None else None
        return s.tau if step is None else step

    def _idle_share(
        self, timer: StepTimer, pool: Pool, rate: float, s: PoolState, busy: Any = _COMPUTE
    ) -> float | None:
        """The share of arrivals that find their replica with no sequence decoding (`IDLE_SHARE`): P(N = 0) under
        `busy_decode`'s law (Poisson arrivals see time averages); None where there is no such law. ``busy``: as
        `_lag`'s."""
        if not IDLE_SHARE:
            return None
        busy = self._busy(timer, pool, rate, s) if busy is _COMPUTE else busy
        return None if busy is None else float(busy[1][0])

    def _mean_form(self, timer: StepTimer, pool: Pool, batch: float) -> tuple[float, float]:
        """(decode step s, prefill time per request beyond its decode steps s) of the mean prompt at ``batch``
        requests decoding, as `pool_state` prices it: one chunk size, min(mean computed prompt, budget)."""
        b = max(1, round(batch))
        cached = float(self.hits.mean())
        comp_in = self.mean_in - cached
        ctx = int(self.mean_in + self.mean_out / 2)
        chunk = int(max(1, min(math.ceil(comp_in - 1e-9), pool.engine.max_tokens - b)))
        chunks = math.ceil(comp_in / chunk)
        dec, mix = _steps(timer, b, ctx, chunk, chunk_context(comp_in, cached, chunks))
        t_dec = dec.duration_s
        return t_dec, chunks * (max(mix.duration_s, t_dec) - t_dec)

    def _refine(
        self, timer: StepTimer, cap: Capacity, pool: Pool, rate: float, s: PoolState, comp: np.ndarray, hits: np.ndarray
    ) -> tuple[PoolState, PrefillWork | None]:
        """The mixed pool's state ``s`` (solved with the mean prompt) solved again with every request's own prompt
        chunks (`sim.serving.prefill_work`), their costs evaluated at the `_work_batch` grid batch nearest the batch
        found (memoised per grid batch, moved to the batch by `PrefillWork.shifted`) and again if the batch moves by
        more than a tenth; None for the work where the pool is overloaded or every step is mixed (the packed
        regime)."""
        if s.overloaded or s.mixed_frac >= 1.0 or rate <= 0 or not len(comp):
            return s, None
        eng = pool.engine
        ctx = int(self.mean_in + self.mean_out / 2)
        # the works priced for these prompts, by grid batch (a sweep solves many rates: the work priced at the grid
        # batch nearest the batch serves, moved to the batch by `PrefillWork.shifted`; `REFINE_GRID`)
        priced = timer._memo.setdefault(("prefill_work", ctx, comp.tobytes(), hits.tobytes()), {})
        work = None
        for _ in range(3):
            b = max(1, round(s.batch))
            if work is not None and abs(b - work.b) <= 0.1 * work.b + 1:
                break
            t_dec, mean_form = self._mean_form(timer, pool, b)
            bq = _work_batch(b)
            w = priced.get(bq)
            if w is None:
                budget = max(eng.max_tokens - bq, 1) if eng.chunked_prefill else 10**9

                def steps(chunk: int, chunk_ctx: int, bq: int = bq) -> float:
                    return _steps(timer, bq, ctx, chunk, chunk_ctx)[1].duration_s

                t_q, form_q = (t_dec, mean_form) if bq == b else self._mean_form(timer, pool, bq)
                w = priced[bq] = prefill_work(steps, bq, comp, hits, budget, t_q, form_q)
            work = w if bq == b else PrefillWork(b, w.n, w.shifted(mean_form), mean_form, w.comp)
            new = pool_state(
                timer,
                cap,
                pool,
                rate,
                self.mean_in,
                self.mean_out,
                "mixed",
                float(hits.mean()),
                work,
                comp,
                self._footprint(hits),
            )
            if new.overloaded or new.mixed_frac >= 1.0:
                new.cached = s.cached
                return new, None
            new.cached, s = s.cached, new
        return s, work

    def _api_wait(self, path: EngineProfile, rate: float, arrivals_s: np.ndarray | None = None) -> np.ndarray:
        """Each request's wait for a free API server at ``rate`` req/s [requests], s: the simulator's first come,
        first served queue (`metrics.api_queue_wait`) on the workload's arrivals at that rate (``arrivals_s`` when
        given); 0 for a closed loop, whose clients keep few requests in flight."""
        arr = self._arrivals_at(rate) if arrivals_s is None else np.asarray(arrivals_s, float)
        h = path.host
        if arr is None or h["api_per_request_s"] + h["tokenize_per_token_s"] <= 0:
            return np.zeros(self.inp.size)
        entry = self.pools.get("mixed") or self.pools["prefill"]
        service = api_service_s(self.inp, h["api_per_request_s"], h["tokenize_per_token_s"])
        return api_queue_wait(arr, service, path.api_servers * entry.replicas)

    def _arrivals_at(self, rate: float) -> np.ndarray | None:
        """The workload's arrival times [requests] s at ``rate`` req/s: its own, stretched by its rate / ``rate``
        (None for a closed loop)."""
        if self.arrivals is None or not self.workload_rate:
            return None
        return self.arrivals * (self.workload_rate / rate)

    def _footprint(self, hits: np.ndarray) -> Footprint:
        """The running requests' `Footprint` when each finds ``hits`` [requests] prompt tokens in the prefix cache: the
        shared tokens weighted by output as `held_tokens` weights the held ones."""
        w = np.maximum(self.out, 1.0)
        shared = float((w * hits).sum() / w.sum()) if self.prefix_set > 0 else 0.0
        return Footprint(self.held, shared, float(self.prefix_set))

    def _kept(self, state: PoolState, kv_tokens: int) -> float:
        """Share of the prefix-cache hits that survive eviction in the steady state ``state``, 0..1.

        The cache keeps the distinct prefixes (``prefix_set`` tokens) when they fit the KV cache beside the
        running requests' own tokens (batch x `Footprint.own`: the prefix pages they reference are the prefixes'
        own, counted once in the working set); otherwise it holds the
        share that fits, and under uniform reuse of the prefixes an LRU cache of C tokens over a working set of
        N finds about C / N of them (the independent-reference model of LRU with equal popularity).
        """
        if self.prefix_set <= 0:
            return 1.0
        room = kv_tokens - state.batch * self._footprint(self.hits).own()
        return float(min(max(room / self.prefix_set, 0.0), 1.0))

    def summary(self, rate: float | None = None) -> dict[str, Any]:
        """The analytical summary at ``rate`` req/s (None: the workload's own rate; a closed loop is iterated).

        Same keys as the simulator's summary where they are defined.
        """
        t0 = time.perf_counter()
        built, inp, out, mean_out = self.built, self.inp, self.out, self.mean_out
        sc, w = built.scenario, built.workload
        closed = w.arrival == "closed" and rate is None
        if rate is None:
            rate = self.workload_rate or float(w.concurrency or 1) / max(mean_out * 0.01, 1e-3)  # closed: a guess
        if not rate > 0:
            raise MoesimError(f"request rate must be > 0 req/s, got {rate}", "give a positive rate")
        states, ttft, e2e, tpot = self.solve(rate)
        if closed:
            think = w.think_s
            for _ in range(50):
                new_rate = float(w.concurrency or 1) / (float(np.mean(e2e)) + think)
                if abs(new_rate - rate) <= 1e-4 * rate:
                    break
                rate = 0.5 * rate + 0.5 * new_rate
                states, ttft, e2e, tpot = self.solve(rate)
        per_s, basis = self._price()
        slo = sc.slo
        ok = np.ones(len(inp), bool)
        if slo.ttft_s is not None:
            ok &= ttft <= slo.ttft_s
        if slo.tpot_s is not None:
            ok &= (tpot <= slo.tpot_s) | (out <= 1)
        stats = {"ttft": percentiles(ttft), "tpot": _tpot_stats(tpot, out)}
        stats["e2e"] = percentiles(e2e)
        summary = self._summary(rate, states, stats, float(ok.mean()), float(np.nanmean(e2e)), per_s, basis)
        summary["failed"], summary["completed"] = self._failed(e2e)
        summary["step_breakdown"] = self.breakdown(states)
        summary["wall_s"] = time.perf_counter() - t0
        return summary

    def _failed(self, e2e: np.ndarray) -> tuple[float, int]:
        """(requests whose client gave up, requests completed) of one rate's E2E [requests] s: NaN failed where the
        timeout is not modelled (no timeout: 0; a closed loop or a disaggregated deployment: NaN), see `solve`."""
        n = len(e2e)
        if self.built.workload.timeout_s is None:
            return 0, n
        if self.arrivals is None or "mixed" not in self.pools:
            return math.nan, n
        failed = int(np.isnan(e2e).sum())
        return failed, n - failed

    def _price(self) -> tuple[float, str]:
        """USD per GPU-second of the deployment's GPU and its basis (NaN and why, when it has no price)."""
        try:
            return usd_per_gpu_second(self.built.cluster.gpu, self.built.assumptions)
        except MoesimError as exc:
            return float("nan"), f"unpriced: {exc.one_line()}"

    def _summary(
        self,
        rate: float,
        states: dict[str, PoolState],
        stats: dict[str, dict[str, float]],
        attainment: float,
        mean_e2e: float,
        per_s: float,
        basis: str,
    ) -> dict[str, Any]:
        """One rate's summary (`summary`, `summaries`) from its pool states, latency statistics (s), SLO attainment
        (a share), mean end-to-end latency (s) and the GPU price (USD per GPU-second and its basis)."""
        built, pools, gpu, gpus = self.built, self.pools, self.built.cluster.gpu, self.built.gpus
        overloaded = [f"{role}: {s.reason}" for role, s in states.items() if s.overloaded]
        out_tok_s = rate * self.mean_out
        main = states.get("mixed") or states["decode"]
        bw, peak = gpu.bandwidth(), gpu.peak(built.precision.gemm_compute_dtype(gpu.peak_flops))
        summary: dict[str, Any] = {"engine": "analytical", "requests": len(self.inp), "completed": len(self.inp)}
        summary["failed"] = 0  # the callers set it from the latencies (`_failed`)
        for name, values in stats.items():
            for k, v in values.items():
                summary[f"{name}_{k}_s"] = v
        summary.update(
            {
                "throughput_req_s": rate,
                "throughput_tok_s": out_tok_s,
                "input_tok_s": rate * self.mean_in,
                "total_tok_s": rate * (self.mean_in + self.mean_out),
                "goodput_req_s": rate * attainment,
                "slo_attainment": attainment,
                "mean_batch": main.batch,
                "s_mbu": sum(s.bytes_per_s * pools[r].replicas for r, s in states.items()) / (gpus * bw),
                "s_mfu": sum(s.flops_per_s * pools[r].replicas for r, s in states.items()) / (gpus * peak),
                "usd_per_mtok": gpus * per_s / out_tok_s * 1e6 if out_tok_s > 0 else math.nan,
                "cost_basis": basis,
                "energy_j_per_token": gpus * gpu.tdp_w / out_tok_s if gpu.tdp_w and out_tok_s > 0 else None,
                "gpus": gpus,
                "replicas": sum(p.replicas for p in built.pools),
                "step_s": main.tau,
                "decode_step_s": main.t_decode,
                "mixed_step_s": main.t_mixed,
                "overloaded": bool(overloaded),
                "overload_reason": "; ".join(overloaded),
                "simulated_s": float(len(self.inp) / rate + mean_e2e),
            }
        )
        return summary

    def breakdown(self, states: dict[str, PoolState]) -> dict[str, dict[str, Any]]:
        """The expected steps of the steady state by phase, split as the simulator's ``step_breakdown``:
        kernels, collectives, launches, scheduler, input preparation and sampling (s, and shares)."""
        costs, _ = self._phase_steps(states)
        out = step_breakdown(pd.DataFrame([cost_row(cost, phase) for cost, phase in costs]))
        for entry in out.values():
            entry.pop("steps", None)
        return self._mixture_decode(states, out)

    def _mixture_decode(
        self, states: dict[str, PoolState], out: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """``out`` with a mixed pool's decode entry the mean over the batch a token decodes in, as its ``t_decode`` is
        (`BATCH_MIXTURE`): each part the mean of the decode steps' (s, launches, padded batch) under `busy_decode`'s
        law (or, with `PRODUCT_FORM` off or an overloaded pool's law unsettled, Poisson around the state's batch,
        `_poisson_batches`), the shares of their sums."""
        role = "mixed" if "mixed" in states else "decode"
        st = states.get(role)
        pool = self.pools.get(role)
        if (
            not BATCH_MIXTURE
            or st is None
            or pool is None
            or "decode" not in out
            or (st.overloaded and not st.tau)
            or (role == "mixed" and not aggregates(pool))
            or (role == "decode" and not (PRODUCT_FORM and PF_DECODE))
        ):
            return out
        timer = self.timers[role]
        ctx = int(self.mean_in + self.mean_out / 2)
        b = max(float(st.batch), 0.0)
        cap = max(pool.engine.max_batch, 1)
        law = None
        if PRODUCT_FORM and st.tau > 0 and b > 0:
            # a token's decode step under `busy_decode`'s law (load = batch / tau, the prompts' extra = tau -
            # t_decode, as the fixed point left them): state n weighs P(N = n) min(n, cap) / s(n), the tokens per
            # second it makes, at the decode step of min(n, cap) sequences; its mean is ``t_decode`` exactly
            law = _busy_law(timer, b / st.tau, ctx, st.tau - st.t_decode, cap)
        if law is not None:
            m = np.minimum(np.arange(1, len(law)), cap)
            s_m = _decode_steps(timer, ctx, int(m.max()))[m - 1] + (st.tau - st.t_decode)
            weight = np.bincount(m - 1, weights=law[1:] * m / s_m)
            weight = weight / weight.sum()
        else:  # `PRODUCT_FORM` off, or a law that does not settle (an overloaded pool)
            weight = _poisson_batches(b, cap)
        n_max = len(weight) - 1
        # the decode steps' entries at 1, 2, ... sequences as rows [sequences, fields], kept per timer and grown
        key = ("decode_entries", ctx, cap)
        names, rows = timer._memo.get(key, ([], np.zeros((0, 0))))
        if len(rows) <= n_max:  # grown by the rows it lacks, at least doubling (each row is its batch's alone)
            upto = min(max(n_max + 1, 2 * len(rows)), cap)
            entries = [_breakdown_entry(_decode_step(timer, min(1 + n, cap), ctx)) for n in range(len(rows), upto)]
            names = [k for k in entries[0] if k != "share"]
            more = np.array([[e[k] for k in names] for e in entries])
            rows = more if not len(rows) else np.concatenate([rows, more])
            timer._memo[key] = (names, rows)
        mean: dict[str, Any] = dict(zip(names, (weight @ rows[: n_max + 1]).tolist(), strict=True))
        step_s = mean["step_s"]
        mean["share"] = {name: mean[name] / step_s if step_s > 0 else 0.0 for name in BREAKDOWN_PARTS}
        return {**out, "decode": {k: mean.get(k, v) for k, v in out["decode"].items()}}

    def _phase_steps(self, states: dict[str, PoolState]) -> tuple[list[tuple[StepCost, str]], list[tuple]]:
        """The expected step of each phase of the steady state: ([(step, phase)], one shape key per pool role),
        phases ``decode``, ``prefill`` or ``mixed``; overloaded pools without a steady state are left out."""
        ctx = int(self.mean_in + self.mean_out / 2)
        costs: list[tuple[StepCost, str]] = []
        key: list[tuple] = []
        for role, st in states.items():
            if st.overloaded and not st.tau:
                continue
            timer = self.timers[role]
            b = 0 if role == "prefill" else max(1, round(st.batch))
            packed = role == "mixed" and st.mixed_frac >= 1.0
            computed = self.mean_in - st.cached
            chunk_ctx = int(st.cached) if packed else chunk_context(computed, st.cached, st.chunks)
            chunk = st.chunk if role != "decode" else 0
            dec, mix = _steps(timer, b, ctx, chunk, chunk_ctx)
            key.append((role, id(timer), b, chunk, chunk_ctx))
            if dec is not None:
                costs.append((dec, "decode"))
            if role != "decode":
                costs.append((mix, "prefill" if role == "prefill" else "mixed"))
        return costs, key

    # ---- many rates at once (the sweep's path) ----------------------------------------------------------------
    def summaries(self, rates: Sequence[float]) -> list[dict[str, Any]]:
        """`summary` at each of ``rates`` (req/s, open loop), the same figures (to float rounding) at a fraction
        of the cost: the rate-independent pieces (prices, peaks, engine profiles, the request path) once, each
        rate's steady state from the timers' memoised steps, the latency arrays of all rates as one
        [rates, requests] array and their percentiles row by row, and the step breakdown from the steps
        themselves (memoised per steady-state shape) instead of a steps table. ``wall_s`` is the batch's wall
        time shared evenly. `summary` stays the reference (`tests/test_sweep_fast.py` compares them).

        Raises:
            MoesimError: a rate that is not > 0 (as `summary`).
        """
        t0 = time.perf_counter()
        rates = [float(r) for r in rates]
        for r in rates:
            if not r > 0:
                raise MoesimError(f"request rate must be > 0 req/s, got {r}", "give a positive rate")
        if not rates:
            return []
        states_all, ttft, e2e, tpot = self._solve_many(rates)
        per_s, basis = self._price()
        slo, out = self.built.scenario.slo, self.out
        ok = np.ones(ttft.shape, bool)
        if slo.ttft_s is not None:
            ok &= ttft <= slo.ttft_s
        if slo.tpot_s is not None:
            per_request = np.stack([np.broadcast_to(np.asarray(t, float), out.shape) for t in tpot])
            ok &= (per_request <= slo.tpot_s) | (out <= 1)[None, :]
        att = ok.mean(axis=1)
        t_stats, e_stats = _row_percentiles(ttft), _row_percentiles(e2e)
        with warnings.catch_warnings():  # a rate at which every client gave up: NaN, as `summary`
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_e2e = np.nanmean(e2e, axis=1)
        results = []
        for i, (rate, states) in enumerate(zip(rates, states_all, strict=True)):
            stats = {"ttft": t_stats[i], "tpot": _tpot_stats(tpot[i], out), "e2e": e_stats[i]}
            summary = self._summary(rate, states, stats, float(att[i]), mean_e2e[i], per_s, basis)
            summary["failed"], summary["completed"] = self._failed(e2e[i])
            summary["step_breakdown"] = self._breakdown_fast(states)
            results.append(summary)
        wall = (time.perf_counter() - t0) / len(rates)
        for summary in results:
            summary["wall_s"] = wall
        return results

    def _solve_many(
        self, rates: list[float]
    ) -> tuple[list[dict[str, PoolState]], np.ndarray, np.ndarray, list[float | np.ndarray]]:
        """`solve` at each of ``rates``: pool states per rate, TTFT and E2E [rates, requests] s, TPOT per rate (s, or
        [requests] s as `solve`'s).

        The mixed pool rate by rate (`_mixed`, as `solve`), then the request path over [rates, requests] at once
        (the same operations as `solve`'s, so the same floats); a disaggregated deployment takes `solve` rate by
        rate.
        """
        built, pools = self.built, self.pools
        if "mixed" not in pools:
            solved = [self.solve(r) for r in rates]
            return (
                [s[0] for s in solved],
                np.stack([s[1] for s in solved]),
                np.stack([s[2] for s in solved]),
                [s[3] for s in solved],
            )
        p = pools["mixed"]
        states_all: list[dict[str, PoolState]] = []
        rows, tpot = [], []
        fails = []
        for rate in rates:
            s, t, tp, fl = self._mixed(rate)
            states_all.append({"mixed": s})
            rows.append(t)
            tpot.append(tp)
            fails.append(fl)
        ttft = np.stack(rows)
        e2e = np.stack([t + 0.0 + np.maximum(self.out - 1, 0) * tp for t, tp in zip(rows, tpot, strict=True)])
        batch = np.array([st["mixed"].batch for st in states_all], float)[:, None]
        path = engine_profile(p.engine, built.base_dir)
        h = path.host
        front = front_s(self.inp, h["api_per_request_s"], h["tokenize_per_token_s"], h["tokenize_wait_s"])[None, :]
        front = front + np.stack([self._api_wait(path, r) for r in rates])
        ttft, e2e = client_times(
            front + ttft,
            front + e2e,
            self.out,
            detokenize_per_token_s=h["detokenize_per_token_s"],
            stream=path.stream,
            chunk_tokens=path.stream_chunk_tokens,
            first_batch_s=h["stream_per_seq_s"] * batch,
            finish_batch_s=h["stream_per_seq_s"] * batch,
        )
        if any(fl is not None for fl in fails):
            timeout = built.workload.timeout_s
            for i, fl in enumerate(fails):
                if fl is not None:
                    ttft[i], e2e[i] = _drop_failed(ttft[i], e2e[i], fl, timeout)
        return states_all, ttft, e2e, tpot

    def _breakdown_fast(self, states: dict[str, PoolState]) -> dict[str, dict[str, Any]]:
        """`breakdown` built from the steps themselves, memoised per steady-state shape (a fresh copy each call).

        With one step per phase (always, here: the decode and the mixed step of a mixed pool; the prefill and the
        decode step of a disaggregated one) ``step_breakdown``'s means are the steps' own values; anything else
        takes `breakdown`.
        """
        costs, key = self._phase_steps(states)
        phases = [ph for _, ph in costs]
        if len(set(phases)) != len(phases):
            return self.breakdown(states)
        memo = self.__dict__.setdefault("_breakdown_memo", {})
        k = tuple(key)
        hit = memo.get(k)
        if hit is None:
            by_phase = {q: c for c, q in costs}
            order = [ph for ph in ("decode", "prefill", "mixed") if ph in by_phase]
            hit = memo[k] = {ph: _breakdown_entry(by_phase[ph]) for ph in order}
        # the mixed pool's decode entry at the state's own batch (not part of the memo's shape key)
        return self._mixture_decode(states, {ph: {**e, "share": dict(e["share"])} for ph, e in hit.items()})


def _breakdown_entry(cost: StepCost) -> dict[str, Any]:
    """`step_breakdown`'s entry of a phase holding the one step ``cost`` (without its ``steps`` count)."""
    step_s = float(cost.duration_s)
    entry: dict[str, Any] = {"step_s": step_s}
    for name, cols in BREAKDOWN_PARTS.items():
        entry[name] = float(sum(float(getattr(cost, c)) for c in cols))
    entry["share"] = {name: entry[name] / step_s if step_s > 0 else 0.0 for name in BREAKDOWN_PARTS}
    entry["host_cpu_s"] = float(cost.host_s)
    entry["launches"] = float(cost.launches)
    entry["graphs"] = float(cost.graphs)
    entry["padded_batch"] = float(cost.padded_batch)
    return entry


_QS = np.array([0.50, 0.90, 0.99])


def _tpot_stats(tpot: float | np.ndarray, out: np.ndarray) -> dict[str, float]:
    """TPOT's mean and percentiles (s): of the requests of more than one token where ``tpot`` is per request
    [requests], else the one value."""
    if np.ndim(tpot):
        t = np.asarray(tpot, float)
        return percentiles(t[out > 1] if np.any(out > 1) else t)
    return dict.fromkeys(("mean", "p50", "p90", "p99"), float(tpot))


def _row_percentiles(a: np.ndarray) -> list[dict[str, float]]:
    """`sim.serving.metrics.percentiles` of each row of ``a`` [rows, n] (the same order statistics and linear
    interpolation, from one partition of the whole array); a row holding NaN takes `percentiles` itself."""
    if a.shape[1] == 0 or np.isnan(a).any():
        return [percentiles(row) for row in a]
    n = a.shape[1]
    pos = _QS * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    part = np.partition(a, np.unique(np.concatenate([lo, hi])), axis=1)
    t = pos - lo
    p_lo, p_hi = part[:, lo], part[:, hi]
    with np.errstate(invalid="ignore"):
        diff = np.where(p_hi == p_lo, 0.0, p_hi - p_lo)
    q = np.where(t >= 0.5, p_hi - diff * (1 - t), p_lo + diff * t)
    means = a.mean(axis=1)
    return [
        {"mean": float(m), "p50": float(r[0]), "p90": float(r[1]), "p99": float(r[2])}
        for m, r in zip(means.tolist(), q.tolist(), strict=True)
    ]


def _drop_failed(
    ttft: np.ndarray, e2e: np.ndarray, failed: np.ndarray, timeout_s: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The client's TTFT and E2E [requests] s with NaN for the requests that failed: those the slot recursion failed
    (``failed``) and those whose last chunk comes after the timeout (as the discrete-event engine counts them)."""
    gone = np.asarray(failed, bool)
    if timeout_s is not None:
        with np.errstate(invalid="ignore"):
            gone = gone | (e2e > timeout_s)
    return np.where(gone, np.nan, ttft), np.where(gone, np.nan, e2e)


def analyse(built: Built, seed: int | None = None) -> dict[str, Any]:
    """The analytical summary of ``built`` at its workload's rate (same keys as the simulator's where defined)."""
    model = Analytical(built, seed)
    s = model.summary()
    s["wall_s"] += model.setup_s
    return s
