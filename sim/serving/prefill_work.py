"""Each request's prefill work and the queue of prompts waiting for it (the analytical engine).

A step of continuous batching that carries a prompt chunk of ``s`` tokens at ``k`` cached ones costs the decode
step plus x(s, k) seconds. x is far from linear in s: the chunk's attention grows as s (k + s / 2) and the
expert GEMMs leave the memory-bound regime, so a prompt of twice the mean length costs more than twice the mean
prompt's time (DeepSeek-V3 DP32/EP32 on H200, 24 requests decoding: x(2,048) = 82 ms, x(16,384) = 2.69 s). The
mean of x over the prompts is therefore above x at the mean prompt (Jensen's inequality): pricing every prompt at
the mean length, the analytical engine underestimated the time spent in mixed steps (that example: 82 vs 118 ms per
request) and with it the mean step, the decode batch and TTFT.

`prefill_work` prices each request's own chunks: ``n`` chunks (``budget`` tokens, the last one the remainder),
chunk j reading the request's prefix-cache hit plus the j chunks before it. x is evaluated from the cost model at
about a dozen chunk sizes (the quantiles of the requests' chunk sizes, a sqrt(2) grid over the longest tenth and
the largest) at the mean cached context and interpolated between them; a chunk's extra context adds
s x (k - mean) x kappa, kappa being the cost of one
query reading one more cached token (read off the cost model at the largest chunk: an attention kernel's work is
linear in the context it reads at a fixed number of queries).

The prompts then queue for the prefill work FCFS (vLLM's waiting queue, SGLang's): a mixed step carries the
oldest waiting prompt's next chunk, so the prefill work is a single server whose service time is S = n t_decode + x,
utilisation rho = rate E[S], and an arrival waits rate E[S^2] / (2 (1 - rho)) for the prompts ahead of it
(Pollaczek-Khinchine) plus, when it finds no prompt in service (probability 1 - rho), the rest of the decode step
running (t_decode / 2). Where a step has room for several short prompts it carries them together, so the queue
is an upper bound there.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: quantiles of the requests' chunk sizes at which x is evaluated from the cost model (plus nodes sqrt(2) apart
#: above the 90th percentile, and the largest chunk); linear interpolation between them
_NODE_QUANTILES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97, 0.995)


@dataclass
class PrefillWork:
    """Per request [requests]: the prompt chunks and their time beyond the decode steps they ride on, at one batch.

    ``b``: the decode batch the costs were evaluated at (requests); ``n``: chunks per request; ``x``: seconds
    beyond ``n`` decode steps; ``mean_form``: the same quantity for the mean prompt as one chunk size (chunks of
    the mean request x (mixed step - decode step) at the mean chunk), against which `shifted` moves ``x`` to
    another batch.
    """

    b: int
    n: np.ndarray
    x: np.ndarray
    mean_form: float
    comp: np.ndarray  # prompt tokens each request computes [requests]

    @property
    def mean_n(self) -> float:
        """Mean chunks per request."""
        return float(self.n.mean()) if len(self.n) else 0.0

    @property
    def mean_x(self) -> float:
        """Mean seconds beyond the decode steps per request."""
        return float(self.x.mean()) if len(self.x) else 0.0

    def shifted(self, mean_form: float) -> np.ndarray:
        """``x`` [requests] s at another decode batch whose mean-form extra is ``mean_form`` s: the change spread over
        the requests in proportion to their prompt tokens (a batch's extra tokens change the marginal cost of each
        prompt token, not the attention within a prompt). Never below 0."""
        delta = mean_form - self.mean_form
        if delta == 0.0 or not len(self.x):
            return self.x
        mean_comp = float(self.comp.mean())
        share = self.comp / mean_comp if mean_comp > 0 else np.ones_like(self.comp)
        return np.maximum(self.x + delta * share, 0.0)


def chunk_plan(comp: np.ndarray, cached: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chunks of each request's prompt: (chunks per request [requests], chunk sizes [chunks] tokens, each chunk's
    cached context [chunks] tokens, request by request in order). ``comp`` [requests]: prompt tokens to compute
    (at least 1 each); ``cached`` [requests]: prefix-cache hit tokens; ``budget``: the tokens a step carries for
    a prompt (the engine's token budget less the decoding requests)."""
    comp = np.maximum(np.asarray(comp, float).round().astype(np.int64), 1)
    cached = np.asarray(cached, float).round().astype(np.int64)
    budget = max(int(budget), 1)
    full = comp // budget
    rem = comp - full * budget
    n = full + (rem > 0)
    total = int(n.sum())
    owner = np.repeat(np.arange(len(comp)), n)
    first = np.concatenate([[0], np.cumsum(n)[:-1]]) if len(n) else np.zeros(0, np.int64)
    j = np.arange(total) - first[owner]  # chunk index within its request
    size = np.where(j < full[owner], budget, rem[owner])
    ctx = cached[owner] + j * budget
    return n, size, ctx


def prefill_work(
    steps: Callable[[int, int, int], float],
    b: int,
    comp: np.ndarray,
    cached: np.ndarray,
    budget: int,
    t_decode: float,
    mean_form: float,
) -> PrefillWork:
    """Each request's chunks and their time beyond the decode steps (`PrefillWork`) at decode batch ``b``.

    ``steps(chunk, chunk_ctx)``: the mixed step's duration (s) with ``b`` requests decoding and a prompt chunk of
    ``chunk`` tokens at ``chunk_ctx`` cached tokens (the analytical engine's memoised step); ``t_decode``: the decode
    step alone, s; ``comp``, ``cached`` [requests] tokens, ``budget`` tokens: as `chunk_plan`; ``mean_form``: the
    mean-prompt extra at ``b`` (see `PrefillWork`). A mixed step never costs less than the decode step.
    """
    n, size, ctx = chunk_plan(comp, cached, budget)
    if not len(size):
        return PrefillWork(b, n, np.zeros(len(n)), mean_form, np.asarray(comp, float))
    ref = round(float(np.mean(cached))) if len(cached) else 0
    q = np.quantile(size, _NODE_QUANTILES)
    # the long tail's quantiles lie far apart: nodes sqrt(2) apart from the 90th percentile to the largest
    top, hi = max(float(q[_NODE_QUANTILES.index(0.9)]), 1.0), float(size.max())
    tail = top * np.sqrt(2.0) ** np.arange(1, max(int(2 * np.log2(hi / top)), 0) + 1)
    nodes = np.unique(np.concatenate([q.round(), tail.round(), [hi]]).astype(np.int64))
    nodes = nodes[nodes >= 1]
    at = np.array([max(steps(int(s), ref) - t_decode, 0.0) for s in nodes])
    x = np.interp(size, nodes, at)
    spread = ctx - ref
    if np.any(spread != 0):
        big = int(nodes[-1])
        dk = max(int(np.abs(spread).max()), 1)
        kappa = max(steps(big, ref + dk) - steps(big, ref), 0.0) / (big * dk)
        x = np.maximum(x + size * spread * kappa, 0.0)
    per_request = np.bincount(np.repeat(np.arange(len(n)), n), weights=x, minlength=len(n))
    return PrefillWork(b, n, per_request, mean_form, np.asarray(comp, float))


def prefill_queue(rate: float, service_s: np.ndarray, t_decode: float) -> tuple[float, float]:
    """(mean wait s, utilisation) of the prompts' FCFS queue for the prefill work at ``rate`` arrivals/s, each
    request's prefill taking ``service_s`` [requests] s (its chunks' steps): Pollaczek-Khinchine's M/G/1 wait
    rate E[S^2] / (2 (1 - rho)), plus the residual of the decode step an arrival meets when no prompt is in
    service ((1 - rho) t_decode / 2). inf at rho >= 1."""
    s = np.asarray(service_s, float)
    if rate <= 0 or not len(s):
        return 0.0, 0.0
    rho = rate * float(s.mean())
    if rho >= 1.0:
        return math.inf, rho
    return rate * float(np.mean(s * s)) / (2 * (1 - rho)) + (1 - rho) * t_decode / 2, rho


def decode_spans(
    start_s: np.ndarray, service_s: np.ndarray, extra_s: np.ndarray, out_tokens: np.ndarray, t_decode: float
) -> np.ndarray:
    """Each request's time from its first token to its last (s) [requests], on one replica whose prompts are
    prefilled one after another: request i's prefill runs from ``start_s`` over ``service_s`` s, of which
    ``extra_s`` are beyond the decode steps its chunks ride on (the FCFS replay of `prefill_queue`'s queue; the
    intervals do not overlap). Every running request gets a token per step, so a request decoding through another's
    prefill gets that prompt's chunks' steps as tokens but waits its extra time too: the decode time D(t) = t less
    the extra time before t grows by t_decode per token, and request j's last token comes when D has grown by
    (out_j - 1) t_decode since its first (the end of its own prefill). The requests decoding right after a long
    prompt also meet the prompts that queued behind it, which a mean step misses.
    """
    start = np.asarray(start_s, float)
    if not len(start):
        return np.zeros(0)
    service = np.asarray(service_s, float)
    extra = np.minimum(np.asarray(extra_s, float), service)
    order = np.argsort(start, kind="stable")
    s, e, x = start[order], start[order] + service[order], extra[order]
    # the piecewise-linear extra time C(t): 0 before a prefill, then rising at x / S during it
    t_pts = np.empty(2 * len(s) + 1)
    c_pts = np.empty_like(t_pts)
    t_pts[0], c_pts[0] = (s[0] - 1.0 if len(s) else 0.0), 0.0
    t_pts[1::2], t_pts[2::2] = s, e
    cum = np.cumsum(x)
    c_pts[1::2] = np.concatenate([[0.0], cum[:-1]])
    c_pts[2::2] = cum
    d_pts = t_pts - c_pts  # non-decreasing: extra <= service
    first = start + service  # each request's first token
    d0 = np.interp(first, t_pts, d_pts, left=np.nan, right=np.nan)
    d0 = np.where(first > t_pts[-1], first - c_pts[-1], d0)
    target = d0 + np.maximum(np.asarray(out_tokens, float) - 1, 0) * t_decode
    end = np.interp(target, d_pts, t_pts, right=np.nan)
    end = np.where(target > d_pts[-1], t_pts[-1] + (target - d_pts[-1]), end)
    return np.maximum(end - first, 0.0)


def single_server_waits(arrivals_s: np.ndarray, service_s: np.ndarray) -> np.ndarray:
    """Each request's wait (s) [requests] for one server, first come first served, request i occupying it
    ``service_s`` [requests] s: Lindley's recursion W_i = max(0, W_(i-1) + S_(i-1) - (a_i - a_(i-1))) in closed
    form, W = C - running min of C with C_i = sum over j < i of (S_j - (a_(j+1) - a_j)) (C_0 = 0), in arrival
    order; ``arrivals_s`` [requests] in any order (waits come back in the same order)."""
    a = np.asarray(arrivals_s, float)
    n = len(a)
    if n == 0:
        return np.zeros(0)
    order = np.argsort(a, kind="stable")
    t, s = a[order], np.broadcast_to(np.asarray(service_s, float), a.shape)[order]
    c = np.concatenate([[0.0], np.cumsum(s[:-1] - np.diff(t))])
    w = c - np.minimum.accumulate(c)
    out = np.empty(n)
    out[order] = np.maximum(w, 0.0)
    return out


def fifo_waits(arrivals_s: np.ndarray, hold_s: np.ndarray, slots: int) -> np.ndarray:
    """Each request's wait (s) [requests] for one of ``slots`` slots served first come, first served, every request
    holding its slot ``hold_s`` [requests] s from admission: the multi-server FIFO recursion (Kiefer and Wolfowitz,
    "On the theory of queues with many servers", Trans. AMS 78, 1955): admission = max(arrival, the earliest time a
    slot frees), on the arrivals as given, so bursts of the trace queue as they came.

    ``arrivals_s`` [requests] in any order (waits come back in the same order). Exactly zero, without the loop,
    when no arrival ever finds every slot taken with nobody having waited (counted at once from the sorted
    arrivals and ends); else the recursion runs from the first such arrival, its slots freeing at the ``slots``
    latest ends before it. O(n log slots).
    """
    n = len(arrivals_s)
    waits = np.zeros(n)
    if n == 0 or slots <= 0:
        return waits if slots > 0 else np.full(n, math.inf)
    order = np.argsort(arrivals_s, kind="stable")
    t, h = np.asarray(arrivals_s, float)[order], np.asarray(hold_s, float)[order]
    ends = t + h
    # requests in the running set at each arrival if nobody had waited: those arrived so far (itself included)
    # less those already finished
    inside = np.arange(1, n + 1) - np.searchsorted(np.sort(ends), t, side="right")
    over = np.flatnonzero(inside > slots)
    if not len(over):
        return waits
    k = int(over[0])
    before = np.sort(ends[:k])[-slots:]
    free = [-math.inf] * (slots - len(before)) + before.tolist()
    heapq.heapify(free)
    w = np.zeros(n)
    for i in range(k, n):
        start = max(t[i], heapq.heappop(free))
        w[i] = start - t[i]
        heapq.heappush(free, start + h[i])
    waits[order] = w
    return waits
