"""Summaries of a serving simulation: latency percentiles, throughput, goodput, Little's law, time series.

Inputs follow the serving simulator's data contract:

- ``requests``: one row per request with ``request_id``, ``replica``, ``arrival_s``, ``input_tokens``,
  ``output_tokens``, ``scheduled_s``, ``first_token_s``, ``finish_s`` (NaN when the request never finished),
  ``preemptions`` and the derived ``queue_s``, ``ttft_s``, ``tpot_s``, ``e2e_s`` (all times in s). Derived
  columns that are missing are computed here from the raw ones.
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
#: Columns of ``steps`` that `time_series` reads.
SERIES_STEP_COLUMNS = ("start_s", "duration_s", "seqs", "decode_seqs", "kv_used_frac", "waiting")

_LATENCIES = {
    "ttft": "time to first token (first_token − arrival), s",
    "tpot": "time per output token after the first ((finish − first_token) / (output_tokens − 1)), s",
    "itl": "inter-token latency (gap between consecutive output tokens of a request), s",
    "e2e": "end-to-end latency (finish − arrival), s",
    "queue": "queueing delay (first scheduled − arrival), s",
}
_STATS = {"mean": "mean", "p50": "median", "p90": "90th percentile", "p99": "99th percentile"}

#: Every key `latency_summary` returns, with its meaning and unit.
SUMMARY_KEYS: dict[str, str] = {
    "requests": "requests in the input, finished or not (count)",
    "completed": "requests that finished (count)",
    **{
        f"{lat}_{stat}_s": f"{stat_doc} of {lat_doc} over completed requests after warm-up"
        for lat, lat_doc in _LATENCIES.items()
        for stat, stat_doc in _STATS.items()
    },
    "makespan_s": "last finish − first arrival, s",
    "throughput_req_s": "completed requests per second of makespan, req/s",
    "throughput_tok_s": "output tokens of completed requests per second of makespan, tok/s",
    "input_tok_s": "input (prompt) tokens of completed requests per second of makespan, tok/s",
    "total_tok_s": "input + output tokens of completed requests per second of makespan, tok/s",
    "goodput_req_s": "completed requests meeting every set SLO per second of makespan, req/s",
    "slo_attainment": "fraction of all requests that finished and met every set SLO (0..1)",
    "mean_batch": "mean running sequences per step, weighted by step duration (per replica, sequences)",
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


def with_derived(requests: pd.DataFrame) -> pd.DataFrame:
    """``requests`` with ``queue_s``, ``ttft_s``, ``tpot_s`` and ``e2e_s`` present (computed where missing).

    Args:
        requests: the simulator's per-request DataFrame (raw times in s).

    Returns:
        The same frame when nothing was missing, else a copy with the missing derived columns, s. ``tpot_s``
        is NaN for requests with a single output token or that never finished.
    """
    derived = ("queue_s", "ttft_s", "tpot_s", "e2e_s")
    if all(c in requests.columns for c in derived):
        return requests
    df = requests.copy()
    if "queue_s" not in df.columns:
        df["queue_s"] = _f(df["scheduled_s"]) - _f(df["arrival_s"])
    if "ttft_s" not in df.columns:
        df["ttft_s"] = _f(df["first_token_s"]) - _f(df["arrival_s"])
    if "tpot_s" not in df.columns:
        out = _f(df["output_tokens"])
        with np.errstate(divide="ignore", invalid="ignore"):
            tpot = (_f(df["finish_s"]) - _f(df["first_token_s"])) / (out - 1.0)
        df["tpot_s"] = np.where(out > 1, tpot, np.nan)
    if "e2e_s" not in df.columns:
        df["e2e_s"] = _f(df["finish_s"]) - _f(df["arrival_s"])
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
    diff = part[hi] - part[lo]
    p50, p90, p99 = np.where(t >= 0.5, part[hi] - diff * (1 - t), part[lo] + diff * t).tolist()
    return {"mean": float(a.mean()), "p50": p50, "p90": p90, "p99": p99}


def _duration_weighted(values: np.ndarray, durations: np.ndarray) -> float:
    """Mean of ``values`` weighted by ``durations`` (NaN values and their weights ignored; NaN if no weight)."""
    ok = ~np.isnan(values) & ~np.isnan(durations)
    w = durations[ok].sum()
    return float((values[ok] * durations[ok]).sum() / w) if w > 0 else math.nan


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
    finish = _f(req["finish_s"])
    done = ~np.isnan(finish)
    completed = int(done.sum())

    # Latency percentiles: completed requests, minus the earliest `warmup_frac` of all requests by arrival.
    keep = done.copy()
    n_warm = math.floor(warmup_frac * n)
    if n_warm:
        order = np.argsort(arrival, kind="stable")
        keep[order[:n_warm]] = False
    out: dict[str, float | int] = {"requests": n, "completed": completed}
    for lat in _LATENCIES:
        values = np.asarray(itl, dtype=float) if lat == "itl" else _f(req[f"{lat}_s"])[keep]
        for stat, v in percentiles(values).items():
            out[f"{lat}_{stat}_s"] = v

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
        mean_batch=_duration_weighted(_f(steps["seqs"]), dur),
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
