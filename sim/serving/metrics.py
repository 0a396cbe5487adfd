"""Summaries of a serving simulation: latency percentiles, throughput, goodput, Little's law, time series.

The request path and what each latency means
--------------------------------------------
A request's timeline, as a benchmark client sees it (times in s from the start of the run):

1. ``arrival_s``: the client sends the request (the workload's arrival time).
2. The API server parses it (``api_per_request_s``), holds the prompt until its tokeniser's micro-batch window
   closes (``tokenize_wait_s``) and tokenises it (``tokenize_per_token_s`` x input tokens), all from the engine
   profile (`sim.serving.host`): `front_s`. The API server is one process (the profile's ``api_servers`` per
   replica) that parses and tokenises one request at a time, so requests sent together wait for it first come,
   first served (`api_queue_wait`). Only then does the scheduler see it: ``engine_arrival_s`` = arrival_s + the
   wait + front_s.
3. The engine queues, prefills and decodes it: ``scheduled_s`` (first admitted), ``first_token_s`` (the end of
   the step that emits the first output token), ``finish_s`` (the step that emits the last).
4. Each output token is detokenised (``detokenize_per_token_s``) and sent back (`client_times`): streamed,
   every token reaches the client detokenize_per_token_s after the engine emitted it; not streamed, the whole
   response arrives once, after the last token and the detokenisation of the last group of tokens the engine
   had not yet detokenised (``stream_chunk_tokens`` per group; 0: all of them). Each token also waits for the
   API server to handle its step's outputs of every running request (``stream_per_seq_s`` x the running requests,
   `running_at`; vLLM's output_handler processes a step's whole batch before the streams send their chunks).
   ``client_first_s`` and ``client_finish_s`` are the client's receive times of the first chunk holding a token
   and of the last.

The summary's latencies are the client's, defined as vLLM's and SGLang's benchmark clients define them
(vllm-project/vllm@vllm/benchmarks/lib/endpoint_request_func.py and vllm/benchmarks/serve.py, formerly
benchmarks/backend_request_func.py and benchmarks/benchmark_serving.py; sgl-project/sglang@
python/sglang/bench_serving.py; kubernetes-sigs/inference-perf, whose timings the reference runs in
``vllm-e2e-dense`` use); see `METRIC_DEFINITIONS`:

- TTFT = client_first_s - arrival_s: send to the first streamed chunk that carries a token. Not streamed,
  the first chunk is the whole response, so TTFT = E2E (sglang bench_serving: "For non-streaming, TTFT = total
  latency").
- E2E = client_finish_s - arrival_s: send to the last chunk.
- TPOT = (E2E - TTFT) / (output tokens - 1), per request, the first token excluded (NaN for one-token outputs;
  0 when not streamed); the summary's tpot_* are over requests. ``tpot_derived_mean_s`` is the ratio of means
  (mean E2E - mean TTFT) / (mean output tokens - 1) that the ``vllm-e2e-dense`` study calibrates against.
- ITL: every gap between consecutive streamed chunks of a request, pooled over requests (vLLM and SGLang: one
  chunk per engine step per request, so one token per chunk without speculative decoding). Detokenisation
  delays every chunk alike, so the gaps are the engine's. Not streamed: no gaps (ITL is NaN).

The engine's own view is kept beside it in the request table: ``engine_ttft_s`` = first_token_s -
engine_arrival_s, ``engine_e2e_s`` = finish_s - engine_arrival_s, ``engine_tpot_s`` = (finish_s -
first_token_s) / (output tokens - 1), ``queue_s`` = scheduled_s - engine_arrival_s (time in the scheduler's
queue). With the ``ideal`` engine kind every host cost is 0 and both views agree.

Inputs follow the serving simulator's data contract:

- ``requests``: one row per request with ``request_id``, ``replica``, ``arrival_s``, ``input_tokens``,
  ``output_tokens``, ``scheduled_s``, ``first_token_s``, ``finish_s`` (NaN when the request never finished),
  ``preemptions``, optionally ``engine_arrival_s``, ``client_first_s``, ``client_finish_s`` (default: the
  engine's times, no request path; NaN for a request whose client gave up, ``failed``: the client's timeout,
  `sim.serving.workload`) and ``cached_tokens`` (prompt tokens found in the prefix cache), and the
  derived ``queue_s``, ``ttft_s``, ``tpot_s``, ``e2e_s``, ``engine_ttft_s``, ``engine_tpot_s``,
  ``engine_e2e_s`` (all times in s). Derived columns that are missing are computed here from the raw ones.
- ``itl``: every inter-token latency of every request, s (a flat array, no request ids).
- ``steps``: one row per engine step with ``replica``, ``start_s``, ``duration_s``, ``seqs``, ``decode_seqs``,
  ``kv_used_frac``, ``waiting``, ``straggler_s``, ``fetch_s``, ``dropped_pairs``, ``pairs`` (and more that
  this module does not read).

Every function is pure and vectorised: DataFrames in, a dict or a DataFrame out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from moesim.model.errors import MoesimError
from moesim.sim.serving.prefill_work import fifo_waits, single_server_waits

#: Columns of ``requests`` that `latency_summary` and `littles_law` read (derived ones are filled if missing).
REQUEST_COLUMNS = (
    "arrival_s",
    "input_tokens",
    "output_tokens",
    "scheduled_s",
    "first_token_s",
    "finish_s",
    "preemptions",
)
#: Columns of ``steps`` that `latency_summary` reads.
STEP_COLUMNS = (
    "start_s",
    "duration_s",
    "seqs",
    "kv_used_frac",
    "straggler_s",
    "fetch_s",
    "dropped_pairs",
    "pairs",
)


def _main_batch(steps: pd.DataFrame, dur: np.ndarray) -> float:
    """``mean_batch``: running sequences per step weighted by duration, over the steps of the pool whose batch
    decodes: every step, or with disaggregated prefill and decode pools (a ``pool`` column without ``mixed``) the
    decode pool's. A prefill pool's steps of one or two prompts averaged in would understate it (the DeepSeek-V3 PD
    example: 8.84 over both pools, 10.06 in the decode pool, where the analytical engine's decode batch is 10.22)."""
    seqs = _f(steps["seqs"])
    if "pool" in steps.columns and len(steps):
        pool = steps["pool"].to_numpy()
        if (pool == "decode").any() and not (pool == "mixed").any():
            keep = pool == "decode"
            return _duration_weighted(seqs[keep], dur[keep])
    return _duration_weighted(seqs, dur)


#: Columns of ``steps`` that `time_series` reads.
SERIES_STEP_COLUMNS = ("start_s", "duration_s", "seqs", "decode_seqs", "kv_used_frac", "waiting")

_LATENCIES = {
    "ttft": "client time to first token (client_first − arrival: send to the first chunk with a token), s",
    "tpot": "client time per output token after the first ((e2e − ttft) / (output_tokens − 1), per request), s",
    "itl": "client inter-token latency (gap between consecutive streamed chunks of a request), s",
    "e2e": "client end-to-end latency (client_finish − arrival: send to the last chunk), s",
    "queue": "queueing delay in the scheduler (first scheduled − engine_arrival), s",
    "engine_ttft": "engine time to first token (first_token − engine_arrival), s",
    "engine_e2e": "engine end-to-end latency (finish − engine_arrival), s",
}
_STATS = {"mean": "mean", "p50": "median", "p90": "90th percentile", "p99": "99th percentile"}

#: What the summary's latencies mean: the client's view (module docstring), for a summary's ``metric_definitions``.
METRIC_DEFINITIONS: dict[str, str] = {
    "basis": "client side, as vLLM's and SGLang's benchmark clients measure (vllm bench serve, sglang.bench_serving, "
    "inference-perf): API server and tokenisation before the scheduler, detokenisation after it",
    "ttft": "send -> first streamed chunk carrying a token; not streamed: send -> the whole response (TTFT = E2E)",
    "tpot": "per request (E2E - TTFT) / (output tokens - 1), first token excluded; tpot_derived_mean_s: "
    "(mean E2E - mean TTFT) / (mean output tokens - 1)",
    "itl": "gaps between consecutive streamed chunks (one token each), pooled over requests; none when not streamed",
    "e2e": "send -> last chunk received",
    "engine_ttft, engine_e2e": "the engine's view: from the scheduler seeing the request to emitting the first / "
    "last token",
}


def ttft_basis(stream: bool) -> str:
    """One line saying what the summary's TTFT is, for a summary's ``ttft_basis``."""
    if stream:
        return "client, streamed: send -> first chunk with a token (API server + tokenisation + engine + detokenise)"
    return "client, not streamed: send -> the whole response, so TTFT = E2E (sglang bench_serving)"


#: Every key `latency_summary` returns, with its meaning and unit.
SUMMARY_KEYS: dict[str, str] = {
    "requests": "requests in the input, finished or not (count)",
    "completed": "requests that finished (count)",
    "failed": "requests whose client gave up before their last chunk arrived (workload.timeout_s; count)",
    **{
        f"{lat}_{stat}_s": f"{stat_doc} of {lat_doc} over completed requests after warm-up"
        for lat, lat_doc in _LATENCIES.items()
        for stat, stat_doc in _STATS.items()
    },
    "tpot_derived_mean_s": "ratio of means (mean e2e − mean ttft) / (mean output_tokens − 1) over the same "
    "requests (the vllm-e2e-dense study's tpot_derived_mean), s",
    "prefix_hit_rate": "prompt tokens found in the prefix cache / prompt tokens, over admitted requests (0..1)",
    "makespan_s": "last client finish − first arrival, s",
    "throughput_req_s": "completed requests per second of makespan, req/s",
    "throughput_tok_s": "output tokens of completed requests per second of makespan, tok/s",
    "input_tok_s": "input (prompt) tokens of completed requests per second of makespan, tok/s",
    "total_tok_s": "input + output tokens of completed requests per second of makespan, tok/s",
    "goodput_req_s": "completed requests meeting every set SLO per second of makespan, req/s",
    "slo_attainment": "fraction of all requests that finished and met every set SLO (0..1)",
    "mean_batch": "mean running sequences per step, weighted by step duration (per replica, sequences); with "
    "disaggregated pools, the decode pool's steps only",
    "mean_kv_used": "mean fraction of KV-cache blocks in use after a step, weighted by step duration (0..1)",
    "max_kv_used": "largest fraction of KV-cache blocks in use after any step (0..1)",
    "preemptions": "preemptions summed over requests (count)",
    "dropped_frac": "token-expert pairs dropped by the capacity factor / pairs routed (0..1; 0 with no pairs)",
    "straggler_frac": "time MoE layers waited for the busiest GPU / step time, summed over steps (0..1)",
    "fetch_frac": "expert-fetch (offloading) time / step time, summed over steps (0..1)",
    "simulated_s": "max(last finish, last step end) − first arrival, s",
}


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise `MoesimError` naming the columns of ``columns`` that ``df`` lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MoesimError(
            f"{what} lacks column(s) {', '.join(missing)}",
            f"pass the simulator's {what} DataFrame (columns: {', '.join(columns)})",
        )


def _f(a: pd.Series | np.ndarray) -> np.ndarray:
    """A column as a float64 array (NaN for missing values)."""
    return np.asarray(a, dtype=float)


def front_s(
    input_tokens: np.ndarray, api_per_request_s: float, tokenize_per_token_s: float, tokenize_wait_s: float = 0.0
) -> np.ndarray:
    """Seconds from the client's send to the scheduler seeing each request: API server + tokenisation.

    Args:
        input_tokens: prompt lengths, tokens [n].
        api_per_request_s: API server time per request (HTTP, parsing, hand-off to the engine), s.
        tokenize_per_token_s: tokenisation time per prompt token, s.
        tokenize_wait_s: the tokeniser's micro-batching window, s: vLLM's API server queues each prompt for its
            ``AsyncMicrobatchTokenizer``, which tokenises a batch when 32 prompts wait or 2 ms after the first
            arrived (see the profile's source). At an arrival rate lambda the mean wait is
            W (1 + lambda W / 2) / (1 + lambda W), within 2% of W below 20 req/s: W is used.

    Returns:
        float64 [n], s: api_per_request_s + tokenize_wait_s + tokenize_per_token_s x input_tokens.
    """
    return api_per_request_s + tokenize_wait_s + tokenize_per_token_s * np.asarray(input_tokens, dtype=float)


def api_service_s(input_tokens: np.ndarray, api_per_request_s: float, tokenize_per_token_s: float) -> np.ndarray:
    """CPU seconds the API server spends on each request before handing it on: parsing plus tokenisation.

    Args:
        input_tokens: prompt lengths, tokens [n].
        api_per_request_s, tokenize_per_token_s: the engine profile's host parameters, s and s per token.

    Returns:
        float64 [n], s: api_per_request_s + tokenize_per_token_s x input_tokens (`front_s` less the tokeniser's
        micro-batching window, which is a wait, not work).
    """
    return api_per_request_s + tokenize_per_token_s * np.asarray(input_tokens, dtype=float)


def api_queue_wait(arrival_s: np.ndarray, service_s: np.ndarray, servers: int = 1) -> np.ndarray:
    """Seconds each request waits for a free API server before its own parsing and tokenisation start.

    An engine's API server is one process with one event loop (vLLM's ``vllm serve`` runs one API server process
    unless ``--api-server-count`` says more; SGLang one tokenizer manager): it handles the requests it is sent one
    after another, so a burst queues. The requests are served first come, first served by ``servers`` identical
    servers, each request by the first one free: with one server, Lindley's recursion
    (`sim.serving.prefill_work.single_server_waits`); with more, the many-server recursion (`fifo_waits`). Below a few
    requests per second at a few ms each the waits are negligible; a burst of n requests at once makes the last
    wait (n - 1) / servers x the service.

    Args:
        arrival_s: when each request is sent, s [n] (any order; ties keep the given order).
        service_s: each request's API server time (`api_service_s`), s [n].
        servers: API server processes sharing the requests, >= 1.

    Returns:
        float64 [n], s, in the given order: time from arrival to the start of the request's own service.
    """
    arrival = np.asarray(arrival_s, dtype=float)
    service = np.broadcast_to(np.asarray(service_s, dtype=float), arrival.shape)
    n = arrival.size
    if n == 0:
        return np.zeros(0)
    if servers <= 1:
        return single_server_waits(arrival, service)
    return fifo_waits(arrival, service, int(servers))


def last_chunk_tokens(output_tokens: np.ndarray, stream: bool, chunk_tokens: int) -> np.ndarray:
    """Output tokens detokenised after the engine emitted the last one, per request: int64 [n].

    Streamed: 1 (each token is detokenised and sent as it comes). Not streamed: the last group of
    ``chunk_tokens`` tokens the engine hands to its detokeniser (SGLang hands a non-streamed request's tokens over
    every DEFAULT_FORCE_STREAM_INTERVAL = 50 tokens, sgl-project/sglang@python/sglang/srt/managers/
    scheduler_output_processor_mixin.py; ``chunk_tokens`` 0: all of them at the end).
    """
    out = np.maximum(np.asarray(output_tokens, dtype=np.int64), 1)
    if stream:
        return np.ones_like(out)
    if chunk_tokens <= 0:
        return out
    return (out - 1) % chunk_tokens + 1


def client_times(
    first_token_s: np.ndarray,
    finish_s: np.ndarray,
    output_tokens: np.ndarray,
    *,
    detokenize_per_token_s: float,
    stream: bool,
    chunk_tokens: int,
    first_batch_s: np.ndarray | float = 0.0,
    finish_batch_s: np.ndarray | float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """When the client receives its first token and its last (see the module docstring), s.

    Args:
        first_token_s, finish_s: the engine's emit times of the first and the last output token, s [n].
        output_tokens: output lengths, tokens [n].
        detokenize_per_token_s: detokenisation time per output token, s.
        stream: the client streams.
        chunk_tokens: tokens the engine hands to the detokeniser at once for a non-streamed request (0: all).
        first_batch_s, finish_batch_s: the API server's handling of the whole step's outputs that the first and
            the last token wait behind (``stream_per_seq_s`` x the running requests at that step, `running_at`),
            s, scalar or [n].

    Returns:
        (client_first_s, client_finish_s), float64 [n]: streamed, first_token_s + first batch + detok and finish_s +
        finish batch + detok; not streamed, both finish_s + finish batch + detok x `last_chunk_tokens` (the first
        chunk is the whole response).
    """
    finish = np.asarray(finish_s, dtype=float)
    # (detokenisation + batch) first, as the closed-loop client of `sim.serving.engine` adds them: the same floats
    tail = detokenize_per_token_s * last_chunk_tokens(output_tokens, stream, chunk_tokens) + finish_batch_s
    client_finish = finish + tail
    if not stream:
        return client_finish.copy(), client_finish
    return np.asarray(first_token_s, dtype=float) + (detokenize_per_token_s + first_batch_s), client_finish


def running_at(times: np.ndarray, group: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Requests in the running set of the same group (replica) at each time: start <= t < end.

    Args:
        times: the instants to count at, s [n] (NaN: 0).
        group: each request's replica [n] (the group of ``times[i]`` is ``group[i]``).
        start, end: each request's admission to the running set and its last token, s [n] (NaN: never admitted).

    Returns:
        float64 [n]: the running requests at ``times[i]`` in ``group[i]`` (the request itself included when it runs).
    """
    times, group = np.asarray(times, float), np.asarray(group)
    start, end = np.asarray(start, float), np.asarray(end, float)
    out = np.zeros(len(times))
    for g in np.unique(group):
        sel = group == g
        ok = sel & np.isfinite(start)
        s_sorted = np.sort(start[ok])
        e_sorted = np.sort(np.where(np.isfinite(end[ok]), end[ok], np.inf))
        t = times[sel]
        n = np.searchsorted(s_sorted, t, side="right") - np.searchsorted(e_sorted, t, side="right")
        out[sel] = np.where(np.isfinite(t), n, 0)
    return out


def _tpot(e2e: np.ndarray, ttft: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(e2e − ttft) / (out − 1), NaN for one-token outputs, s [n]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = (e2e - ttft) / (out - 1.0)
    return np.where(out > 1, tpot, np.nan)


def with_derived(requests: pd.DataFrame) -> pd.DataFrame:
    """``requests`` with the derived latencies present (computed where missing): the client's ``ttft_s``,
    ``tpot_s``, ``e2e_s``, the engine's ``engine_ttft_s``, ``engine_tpot_s``, ``engine_e2e_s`` and ``queue_s``.

    Without ``engine_arrival_s`` / ``client_first_s`` / ``client_finish_s`` the request path is taken as free:
    the engine sees a request when it is sent and the client gets each token when it is emitted.

    Args:
        requests: the simulator's per-request DataFrame (raw times in s).

    Returns:
        The same frame when nothing was missing, else a copy with the missing derived columns, s. TPOTs are NaN
        for requests with a single output token or that never finished.
    """
    derived = ("queue_s", "ttft_s", "tpot_s", "e2e_s", "engine_ttft_s", "engine_tpot_s", "engine_e2e_s")
    if all(c in requests.columns for c in derived):
        return requests
    df = requests.copy()
    arrival = _f(df["arrival_s"])
    engine_arrival = _f(df["engine_arrival_s"]) if "engine_arrival_s" in df.columns else arrival
    first = _f(df["client_first_s"]) if "client_first_s" in df.columns else _f(df["first_token_s"])
    finish = _f(df["client_finish_s"]) if "client_finish_s" in df.columns else _f(df["finish_s"])
    out = _f(df["output_tokens"])
    if "queue_s" not in df.columns:
        df["queue_s"] = _f(df["scheduled_s"]) - engine_arrival
    if "ttft_s" not in df.columns:
        df["ttft_s"] = first - arrival
    if "e2e_s" not in df.columns:
        df["e2e_s"] = finish - arrival
    if "tpot_s" not in df.columns:
        df["tpot_s"] = _tpot(_f(df["e2e_s"]), _f(df["ttft_s"]), out)
    if "engine_ttft_s" not in df.columns:
        df["engine_ttft_s"] = _f(df["first_token_s"]) - engine_arrival
    if "engine_e2e_s" not in df.columns:
        df["engine_e2e_s"] = _f(df["finish_s"]) - engine_arrival
    if "engine_tpot_s" not in df.columns:
        df["engine_tpot_s"] = _tpot(_f(df["finish_s"]), _f(df["first_token_s"]), out)
    return df


_QS = np.array([0.50, 0.90, 0.99])


def percentiles(x: Sequence[float] | np.ndarray | pd.Series) -> dict[str, float]:
    """Mean and p50/p90/p99 of ``x``, ignoring NaN.

    Percentiles interpolate linearly between order statistics (numpy's default method).

    Args:
        x: values in any unit (the results share it).

    Returns:
        ``{"mean", "p50", "p90", "p99"}`` as floats; all NaN when ``x`` holds no non-NaN value.
    """
    a = np.asarray(x, dtype=float).ravel()
    a = a[~np.isnan(a)]
    if a.size == 0:
        return dict.fromkeys(_STATS, math.nan)
    # numpy's linear method done by hand on a partition: the same figures without np.percentile's
    # per-call overhead (a sweep takes these for thousands of points)
    pos = _QS * (a.size - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, a.size - 1)
    part = np.partition(a, np.unique(np.concatenate([lo, hi])))
    t = pos - lo
    with np.errstate(invalid="ignore"):  # inf - inf (an overloaded run's infinite latencies): equal, no gap
        diff = np.where(part[hi] == part[lo], 0.0, part[hi] - part[lo])
    p50, p90, p99 = np.where(t >= 0.5, part[hi] - diff * (1 - t), part[lo] + diff * t).tolist()
    return {"mean": float(a.mean()), "p50": p50, "p90": p90, "p99": p99}


def _duration_weighted(values: np.ndarray, durations: np.ndarray) -> float:
    """Mean of ``values`` weighted by ``durations`` (NaN values and their weights ignored; NaN if no weight)."""
    ok = ~np.isnan(values) & ~np.isnan(durations)
    w = durations[ok].sum()
    return float((values[ok] * durations[ok]).sum() / w) if w > 0 else math.nan


def step_after_instant_s(steps: pd.DataFrame) -> float:
    """Mean duration (s) of the step that follows the one running at a random instant of a busy replica: each step
    is landed in in proportion to its duration (``duration_s``), and its successor on the same ``replica`` counted
    where it starts as the step ends (no idle time between them): sum d_i d_(i+1) / sum d_i over such pairs. With an
    overlapping scheduler this is the step decided before an arrival's (`sim.serving.analytical.busy_step` is the
    analytical engine's figure). NaN where no step follows another."""
    require_columns(steps, ("replica", "start_s", "duration_s"), "steps")
    total = weight = 0.0
    for _, rep in steps.sort_values("start_s", kind="stable").groupby("replica"):
        start, dur = _f(rep["start_s"]), _f(rep["duration_s"])
        follows = np.abs(start[1:] - (start[:-1] + dur[:-1])) <= 1e-9 * np.maximum(1.0, np.abs(start[1:]))
        total += float((dur[:-1] * dur[1:])[follows].sum())
        weight += float(dur[:-1][follows].sum())
    return total / weight if weight > 0 else math.nan


def idle_arrival_share(requests: pd.DataFrame) -> float:
    """Share of requests scheduled the instant they reached the engine (``scheduled_s`` = ``engine_arrival_s``):
    those that found their replica with nothing running or waiting (a busy replica admits an arrival at the next
    step's decision at the earliest). NaN for no requests."""
    require_columns(requests, ("scheduled_s", "engine_arrival_s"), "requests")
    if not len(requests):
        return math.nan
    sched, arrived = _f(requests["scheduled_s"]), _f(requests["engine_arrival_s"])
    return float(np.mean(np.abs(sched - arrived) <= 1e-9 * np.maximum(1.0, np.abs(arrived))))


def _ratio(num: float, den: float) -> float:
    """``num / den``, 0 when ``den`` is not positive."""
    return float(num / den) if den > 0 else 0.0


def latency_summary(
    requests: pd.DataFrame,
    itl: np.ndarray | Sequence[float],
    steps: pd.DataFrame,
    *,
    slo_ttft_s: float | None,
    slo_tpot_s: float | None,
    warmup_frac: float = 0.0,
) -> dict[str, float | int]:
    """Flat, JSON-ready summary of one simulated serving run.

    Latency percentiles are over completed requests. A request meets the SLOs when it finished,
    ``ttft_s <= slo_ttft_s`` and ``tpot_s <= slo_tpot_s``; an SLO left as None is always met, and a
    request with one output token (no TPOT) meets the TPOT SLO. Rates divide by the makespan
    (last finish − first arrival); with no completed request they are 0.

    Args:
        requests: per-request DataFrame (see the module docstring).
        itl: every inter-token latency, s. It carries no request ids, so ``warmup_frac`` does not apply to it.
        steps: per-step DataFrame (may be empty: the step statistics are then NaN or 0).
        slo_ttft_s: time-to-first-token SLO, s, or None for no TTFT SLO.
        slo_tpot_s: time-per-output-token SLO, s, or None for no TPOT SLO.
        warmup_frac: fraction (0 ≤ f < 1) of requests, earliest arrivals first, left out of the latency
            percentiles (not of the counts, rates or SLO attainment).

    Returns:
        A dict of Python ints and floats (NaN where undefined) with exactly the keys of `SUMMARY_KEYS`,
        which documents each one with its unit: ``requests``, ``completed``, ``{ttft,tpot,itl,e2e,queue}_
        {mean,p50,p90,p99}_s``, ``makespan_s``, ``throughput_req_s``, ``throughput_tok_s``, ``input_tok_s``,
        ``total_tok_s``, ``goodput_req_s``, ``slo_attainment``, ``mean_batch``, ``mean_kv_used``,
        ``max_kv_used``, ``preemptions``, ``dropped_frac``, ``straggler_frac``, ``fetch_frac``, ``simulated_s``.
    """
    require_columns(requests, REQUEST_COLUMNS, "requests")
    require_columns(steps, STEP_COLUMNS, "steps")
    if not 0.0 <= warmup_frac < 1.0:
        raise MoesimError(f"warmup_frac = {warmup_frac} is outside [0, 1)", "pass a fraction such as 0.1")
    for name, slo in (("slo_ttft_s", slo_ttft_s), ("slo_tpot_s", slo_tpot_s)):
        if slo is not None and not slo > 0:
            raise MoesimError(f"{name} = {slo} is not a positive time", f"pass {name} in seconds, or None")

    req = with_derived(requests)
    n = len(req)
    arrival = _f(req["arrival_s"])
    finish = _f(req["client_finish_s"]) if "client_finish_s" in req.columns else _f(req["finish_s"])
    done = ~np.isnan(finish)
    completed = int(done.sum())

    # Latency percentiles: completed requests, minus the earliest `warmup_frac` of all requests by arrival.
    keep = done.copy()
    n_warm = math.floor(warmup_frac * n)
    if n_warm:
        order = np.argsort(arrival, kind="stable")
        keep[order[:n_warm]] = False
    failed = int(np.asarray(req["failed"], bool).sum()) if "failed" in req.columns else 0
    out: dict[str, float | int] = {"requests": n, "completed": completed, "failed": failed}
    for lat in _LATENCIES:
        values = np.asarray(itl, dtype=float) if lat == "itl" else _f(req[f"{lat}_s"])[keep]
        for stat, v in percentiles(values).items():
            out[f"{lat}_{stat}_s"] = v
    n_kept = int(keep.sum())
    mean_out = float(_f(req["output_tokens"])[keep].mean()) if n_kept else math.nan
    out["tpot_derived_mean_s"] = (
        (float(_f(req["e2e_s"])[keep].mean()) - float(_f(req["ttft_s"])[keep].mean())) / (mean_out - 1.0)
        if n_kept and mean_out > 1
        else math.nan
    )
    admitted = ~np.isnan(_f(req["scheduled_s"]))
    prompt = float(_f(req["input_tokens"])[admitted].sum())
    cached = float(_f(req["cached_tokens"])[admitted].sum()) if "cached_tokens" in req.columns else 0.0
    out["prefix_hit_rate"] = _ratio(cached, prompt)

    first_arrival = float(np.nanmin(arrival)) if n else math.nan
    makespan = float(finish[done].max() - first_arrival) if completed else math.nan
    out_tok = float(_f(req["output_tokens"])[done].sum())
    in_tok = float(_f(req["input_tokens"])[done].sum())

    meets = done.copy()
    if slo_ttft_s is not None:
        meets &= _f(req["ttft_s"]) <= slo_ttft_s
    if slo_tpot_s is not None:
        tpot = _f(req["tpot_s"])
        meets &= np.isnan(tpot) | (tpot <= slo_tpot_s)
    good = int(meets.sum())

    def rate(count: float) -> float:
        if not completed:
            return 0.0
        return float(count / makespan) if makespan > 0 else math.nan

    out.update(
        makespan_s=makespan,
        throughput_req_s=rate(completed),
        throughput_tok_s=rate(out_tok),
        input_tok_s=rate(in_tok),
        total_tok_s=rate(in_tok + out_tok),
        goodput_req_s=rate(good),
        slo_attainment=float(good / n) if n else math.nan,
    )

    dur = _f(steps["duration_s"])
    kv = _f(steps["kv_used_frac"])
    total_dur = float(np.nansum(dur))
    step_end = float(np.nanmax(_f(steps["start_s"]) + dur)) if len(steps) else math.nan
    last_finish = float(finish[done].max()) if completed else math.nan
    ends = [t for t in (last_finish, step_end) if not math.isnan(t)]
    end = max(ends) if ends else math.nan
    out.update(
        mean_batch=_main_batch(steps, dur),
        mean_kv_used=_duration_weighted(kv, dur),
        max_kv_used=float(np.nanmax(kv)) if len(steps) and not np.isnan(kv).all() else math.nan,
        preemptions=int(np.nansum(_f(req["preemptions"]))),
        dropped_frac=_ratio(float(np.nansum(_f(steps["dropped_pairs"]))), float(np.nansum(_f(steps["pairs"])))),
        straggler_frac=_ratio(float(np.nansum(_f(steps["straggler_s"]))), total_dur),
        fetch_frac=_ratio(float(np.nansum(_f(steps["fetch_s"]))), total_dur),
        simulated_s=float(end - first_arrival),
    )
    return out


def littles_law(requests: pd.DataFrame) -> dict[str, float]:
    """Little's law L = λW over the window [first arrival, last finish].

    L is the time-average number of requests in the system, integrated exactly from the step function
    N(t) (+1 at each arrival, −1 at each finish); a request still unfinished at the end counts as present
    until the window closes, and requests arriving after it are ignored. λ = requests arrived in the
    window / window length; W = mean sojourn (finish − arrival) of completed requests.

    When every request finished, L = λW is an identity over this window and ``rel_error`` is rounding
    level: a larger value means requests were still in the system at the end (the run did not drain),
    or the arrival/finish bookkeeping is inconsistent.

    Args:
        requests: per-request DataFrame with ``arrival_s`` and ``finish_s``, s.

    Returns:
        ``L`` (requests), ``lambda`` (req/s), ``W`` (s), ``rel_error`` = |L − λW| / L, and ``span_s``
        (window length, s); all NaN when no request finished.
    """
    require_columns(requests, ("arrival_s", "finish_s"), "requests")
    arrival = _f(requests["arrival_s"])
    finish = _f(requests["finish_s"])
    done = ~np.isnan(finish)
    nan = dict.fromkeys(("L", "lambda", "W", "rel_error", "span_s"), math.nan)
    if not done.any():
        return nan
    t0 = float(np.nanmin(arrival))
    t1 = float(finish[done].max())
    span = t1 - t0
    if not span > 0:
        return nan
    inside = arrival <= t1
    leave = np.where(done, finish, t1)[inside]
    times = np.concatenate([arrival[inside], leave])
    delta = np.concatenate([np.ones(inside.sum()), -np.ones(inside.sum())])
    order = np.argsort(times, kind="stable")
    times, in_system = times[order], np.cumsum(delta[order])
    area = float(np.sum(np.diff(times) * in_system[:-1]))
    big_l = area / span
    lam = float(inside.sum()) / span
    w = float(np.mean(finish[done] - arrival[done]))
    rel = abs(big_l - lam * w) / big_l if big_l > 0 else math.nan
    return {"L": big_l, "lambda": lam, "W": w, "rel_error": float(rel), "span_s": span}


def _bin_overlap(
    start: np.ndarray, end: np.ndarray, t0: float, bin_s: float, nbins: int, values: Sequence[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per bin: total overlap of intervals [start, end) with it, s, and ∑ value x overlap for each value array."""
    busy = np.zeros(nbins)
    sums = [np.zeros(nbins) for _ in values]
    if start.size == 0:
        return busy, sums
    i0 = np.clip(np.floor((start - t0) / bin_s), 0, nbins - 1).astype(np.int64)
    i1 = np.clip(np.floor((end - t0) / bin_s), 0, nbins - 1).astype(np.int64)
    for j in range(int((i1 - i0).max()) + 1):  # steps are usually shorter than a bin: one or two passes
        b = i0 + j
        m = b <= i1
        bm = b[m]
        lo = np.maximum(start[m], t0 + bm * bin_s)
        hi = np.minimum(end[m], t0 + (bm + 1) * bin_s)
        hi = np.where(bm == nbins - 1, end[m], hi)  # the last bin takes everything up to the end
        ov = np.clip(hi - lo, 0.0, None)
        busy += np.bincount(bm, weights=ov, minlength=nbins)
        for acc, v in zip(sums, values, strict=True):
            acc += np.bincount(bm, weights=np.nan_to_num(v[m]) * ov, minlength=nbins)
    return busy, sums


def time_series(steps: pd.DataFrame, requests: pd.DataFrame, bin_s: float | None = None) -> pd.DataFrame:
    """The run binned over simulated time, aggregated over replicas.

    Output tokens are counted when produced: each step contributes ``decode_seqs`` tokens to the bin holding
    its end, and each request's first token (from prefill) counts in the bin of its ``first_token_s``, so
    ``sum(output_tok_s) * bin_s`` equals all decode tokens plus all first tokens. Batch, KV use and queue
    length are averaged over the steps overlapping a bin, weighted by the overlap (so across replicas, and
    over busy time only: bins where no step runs hold NaN).

    Args:
        steps: per-step DataFrame (``start_s``, ``duration_s``, ``seqs``, ``decode_seqs``, ``kv_used_frac``,
            ``waiting``).
        requests: per-request DataFrame (``arrival_s``, ``first_token_s``, ``finish_s``).
        bin_s: bin width, s; default: the run (first arrival or step to last finish or step end) / 100.

    Returns:
        One row per bin: ``t_s`` (bin start, s), ``output_tok_s`` (output tokens per s, all replicas),
        ``batch`` (mean running sequences per busy replica), ``kv_used`` (mean KV-cache fraction in use, 0..1),
        ``waiting`` (mean queue length per replica at step start, requests). Empty with no steps and requests.
        ``attrs["bin_s"]`` holds the bin width, s.
    """
    require_columns(steps, SERIES_STEP_COLUMNS, "steps")
    require_columns(requests, ("arrival_s", "first_token_s", "finish_s"), "requests")
    columns = ["t_s", "output_tok_s", "batch", "kv_used", "waiting"]
    s = _f(steps["start_s"])
    e = s + _f(steps["duration_s"])
    first_tok = _f(requests["first_token_s"])
    first_tok = first_tok[~np.isnan(first_tok)]
    starts = np.concatenate([s, _f(requests["arrival_s"])])
    ends = np.concatenate([e, _f(requests["finish_s"]), first_tok])
    if np.isnan(starts).all() and np.isnan(ends).all():
        return pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
    t0 = float(np.nanmin(starts)) if not np.isnan(starts).all() else float(np.nanmin(ends))
    t1 = float(np.nanmax(ends)) if not np.isnan(ends).all() else t0
    span = max(t1 - t0, 0.0)
    if bin_s is None:
        bin_s = span / 100.0 if span > 0 else 1.0
    elif not (math.isfinite(bin_s) and bin_s > 0):
        raise MoesimError(f"bin_s = {bin_s} is not a positive time", "pass the bin width in seconds, or None")
    nbins = max(1, math.ceil(span / bin_s * (1.0 - 1e-12)))

    def bin_of(t: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((t - t0) / bin_s), 0, nbins - 1).astype(np.int64)

    tokens = np.bincount(bin_of(e), weights=np.nan_to_num(_f(steps["decode_seqs"])), minlength=nbins)
    tokens = tokens + np.bincount(bin_of(first_tok), minlength=nbins)
    busy, (seqs, kv, waiting) = _bin_overlap(
        s, e, t0, bin_s, nbins, [_f(steps["seqs"]), _f(steps["kv_used_frac"]), _f(steps["waiting"])]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = {name: np.where(busy > 0, v / busy, np.nan) for name, v in (("b", seqs), ("k", kv), ("w", waiting))}
    frame = pd.DataFrame(
        {
            "t_s": t0 + bin_s * np.arange(nbins),
            "output_tok_s": tokens / bin_s,
            "batch": mean["b"],
            "kv_used": mean["k"],
            "waiting": mean["w"],
        }
    )
    frame.attrs["bin_s"] = bin_s
    return frame
