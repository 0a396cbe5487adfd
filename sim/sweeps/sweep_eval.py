"""Evaluating sweep points: the analytical model or the discrete-event simulator, and capacity search.

`evaluate_task` runs a list of points (usually the rates of one configuration)
in a worker process and returns one row per point. Each process keeps the
objects it built (scenario, analytical model with its memoised step times,
expert placements) keyed by configuration, so the points of one
configuration cost one build between them. The analytical points of one
configuration go through `evaluate_rates` together: `Analytical.summaries`
solves every rate from the same memoised steps and evaluates the latencies of
all rates as one array (the same figures as `evaluate` point by point, which
stays the reference).

Capacity search (`capacity`): the highest request rate whose TTFT and TPOT
percentiles meet the SLOs. The analytical model's answer is found by
bisection on log(rate); with the discrete-event engine it is the starting
point of a bracket that seeded simulations widen (a first step of x(1 +
tolerance), each next step the square of the last, until one end meets the
SLOs and the other does not) and then bisect until high / low <= 1 +
tolerance. Each simulation replays the same seeded request sample, so the
search is deterministic.

How long a probe runs (`probe_horizon`). A simulation starts empty, and a
rate above the sustainable one shows only once its queue has grown: a
continuous-batching engine first fills its running set (at a share d over
the sustainable rate, once E[(H - t)+] = E[H] d / (1 + d), H a request's
hold of its slot: the time ``fill``), then every waiting request waits d
seconds longer per second of arrivals, so the p99 TTFT of a run of T
seconds of arrivals passes an SLO of S seconds while d (T - fill) < S. A
run too short passes rates well above capacity: on
`benchmarks/sweep-des-capacity.yaml` (6 s of arrivals) every capacity of 24
configurations was 1.15-1.75x the one found with 60 s (benchmarks/RESULTS.md
section 10). A probe therefore replays max(``duration_s``, fill + 2 S /
tolerance) seconds of arrivals, so that any rate more than tolerance / 2
over the sustainable one misses the TTFT SLO; ``fill`` is the analytical
model's mean E2E at its own capacity times x* / E[X], x* solving E[(X -
x)+] = E[X] t / (1 + t) (t the tolerance) over the workload's output lengths
X (a request holds its slot about in proportion to its output). Without a
TTFT SLO nothing waits on the queue and ``duration_s`` alone is used. The
row's ``capacity_horizon_s`` is the found rate's run's window (``max_requests``
can cut it). A simulation certain to miss the SLOs (enough
requests already over the TTFT or TPOT bound for the percentile to exceed it)
stops there (`_probe`): it fails as the whole run would, so the search and its
result are unchanged, without the drain of an overloaded queue. The analytical
model and every simulation of one search run inside
`sim.serving.capacity.shared_timers`: the replicas' step timers share their
grouped-GEMM tables, step-cost memo and (per seed) routing banks, so a probe
reuses what an earlier one computed, with the same results bit for bit; the
block's scope is the configuration without its batch limit, workload and SLOs
(`timer_key`), whose points `sim.sweeps.sweep._tasks` gives one worker in one
task, so the searches of configurations that differ only in those reuse one
another's too.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import numpy as np

from moesim.model.cap import usd_per_gpu_second
from moesim.model.errors import MoesimError
from moesim.sim.serving.scenario import Built, build, parse_scenario
from moesim.sim.serving.workload import parse_workload
from moesim.sim.sweeps.sweep_spec import DEFAULT_METRICS, CapacitySpec, Point, SweepSpec, _hash

_CACHE: OrderedDict[str, Any] = OrderedDict()
_CACHE_SIZE = 64


def _cached(key: str, make: Any) -> Any:
    hit = _CACHE.get(key)
    if hit is None:
        hit = _CACHE[key] = make()
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return hit


def _plan(built: Built, method: str, redundant: int, spec: SweepSpec) -> np.ndarray | None:
    """Physical-to-logical expert map [moe_layers, slots] of one replica's EP group (None: default blocks)."""
    m = built.model
    if method == "default" or m.moe is None or not m.is_moe:
        return None
    from moesim.placement.api import place
    from moesim.placement.ilp import IlpOptions
    from moesim.placement.stats import RoutingStats

    n = m.moe.num_experts
    loads = built.loads if built.loads is not None else np.full((m.num_moe_layers, n), 1.0 / n)
    ep = built.pools[0].layout.ep
    gpn = min(ep, built.cluster.gpus_per_node)
    stats = RoutingStats(np.asarray(loads) * 1e6, top_k=m.moe.top_k, source="sweep routing loads")
    opts = IlpOptions(
        time_limit=spec.placement_options.time_limit,
        mip_gap=spec.placement_options.mip_gap,
        workers=1,
        seed=spec.seed,
    )
    groups = m.moe.n_group if m.moe.n_group > 1 and ep % gpn == 0 else 1
    res = place(stats, ep, gpn, redundant, (method,), num_groups=groups, options=opts)
    return res[method].plan.phys_to_log


def _built(point: Point, spec: SweepSpec) -> Built:
    """The point's built scenario, its placement applied (cached per configuration)."""

    def make() -> Built:
        b = build(parse_scenario(point.scenario, f"point {point.point_id}"))
        pl = point.placement or {"method": "default", "redundant": 0}
        if pl["method"] != "default":
            key = f"plan:{pl['method']}:{pl['redundant']}:{point.config_key}"
            plan = _cached(key, lambda: _plan(b, pl["method"], pl["redundant"], spec))
            b = replace(b, phys_to_log=plan)
        return b

    return _cached(f"built:{point.config_key}", make)


def timer_key(point: Point) -> str:
    """What a replica's step timer depends on: the point without its workload, batch limit and SLOs."""
    sc = {k: v for k, v in point.scenario.items() if k not in ("workload", "slo", "name", "cost")}
    sc["engine"] = {k: v for k, v in (sc.get("engine") or {}).items() if k != "max_batch"}
    return _hash({"scenario": sc, "placement": point.placement})


def _analytical(point: Point, spec: SweepSpec) -> Any:
    from moesim.sim.serving.analytical import Analytical
    from moesim.sim.serving.engine import make_timer, replica_capacity
    from moesim.sim.serving.workload import generate

    def make() -> Analytical:
        built = _built(point, spec)

        def setup() -> tuple[dict[str, Any], dict[str, Any]]:
            # a replica's KV capacity reads the model, layout, GPU, precision, engine memory settings and offload:
            # what the timers depend on, not the workload or max_batch, so it is shared as they are (computed pool
            # by pool with its timer, in the order the errors of an unbuildable configuration have always come)
            caps, timers = {}, {}
            for p in built.pools:
                caps[p.role] = replica_capacity(built, p)
                timers[p.role] = make_timer(built, p, caps[p.role], spec.seed)
            return caps, timers

        caps, timers = _cached(f"setup:{timer_key(point)}", setup)
        # the workload's requests: one sample per workload and seed for all the configurations that run it
        w = built.workload
        sample_key = _hash(
            {"workload": w.model_dump(mode="json"), "set": sorted(w.model_fields_set), "seed": spec.seed}
            | {"base_dir": str(built.base_dir)}
        )
        sample = _cached(f"sample:{sample_key}", lambda: generate(w, seed=spec.seed, base_dir=built.base_dir))
        return Analytical(built, spec.seed, timers, caps, sample)

    return _cached(f"analytical:{point.config_key}", make)


def _with_rate(built: Built, rate: float, requests: int | None = None) -> Built:
    wl = dict(built.scenario.workload)
    wl["rate"] = rate
    if requests is not None:
        wl["requests"] = requests
    sc = built.scenario.model_copy(update={"workload": wl})
    return replace(built, scenario=sc, workload=parse_workload(wl, "workload"))


def _des(built: Built, rate: float | None, seed: int, requests: int | None = None) -> dict[str, Any]:
    """A discrete-event run's summary at ``rate`` req/s (None: the scenario's own workload)."""
    from moesim.sim.serving.engine import simulate
    from moesim.sim.serving.serve import des_summary

    b = _with_rate(built, rate, requests) if rate is not None else built
    return des_summary(b, simulate(b, seed))


class _Missed(Exception):
    """Raised inside a capacity probe once its TTFT percentile is certain to miss the SLO (`_probe`)."""


def _probe(
    built: Built,
    rate: float,
    seed: int,
    requests: int,
    percentile: int,
    ttft_s: float | None,
    tpot_s: float | None = None,
) -> dict[str, Any]:
    """A capacity-search simulation at ``rate`` req/s: `_des`'s summary, or, once the run's TTFT or TPOT at
    ``percentile`` is certain to exceed ``ttft_s`` / ``tpot_s`` s, a stub summary saying it missed
    (``stopped_early``).

    Certain: with n requests, p = percentile / 100 and lo = floor(p (n - 1)), the percentile interpolates between
    the order statistics lo and lo + 1, so it exceeds the SLO once n - lo requests have a TTFT over it. A request
    counts when its engine first token (or, still waiting, the simulated clock) is more than ``ttft_s`` after its
    arrival: the client's first token comes no earlier (`sim.serving.metrics.client_times`). The stub fails
    `meets` as the whole run would, and the search never takes a failed run's figures, so stopping changes no
    result; it saves the drain of an overloaded queue. TPOT likewise over the requests of more than one output
    token, when the client streams (its TPOT is then the engine's (finish - first) / (out - 1), and a request
    still decoding finishes no earlier than the simulated clock).
    """
    from moesim.sim.serving.engine import Simulation
    from moesim.sim.serving.serve import des_summary

    b = _with_rate(built, rate, requests)
    if ttft_s is None and tpot_s is None:
        return _des(built, rate, seed, requests)
    sim: Any = None
    need = need_tpot = 0

    def watch(done: float, total: float, label: str) -> None:
        req, now = sim.req, sim.env.now
        with np.errstate(invalid="ignore", divide="ignore"):
            if ttft_s is not None:
                first = np.where(np.isnan(req.first), now, req.first)
                if int(np.count_nonzero(first - req.arrival > ttft_s)) >= need:
                    raise _Missed
            if need_tpot:  # streamed: TPOT = (finish - first) / (out - 1), the finish no earlier than now
                end = np.where(np.isnan(req.finish), now, req.finish)
                tpot = (end - req.first) / (req.out - 1.0)
                if int(np.count_nonzero((req.out > 1) & (tpot > tpot_s * (1 + 1e-9)))) >= need_tpot:
                    raise _Missed
        sim._last_progress = -math.inf  # look again at the next finished request (the engine throttles by wall time)

    sim = Simulation(b, seed, watch)
    n, q = sim.req.n, percentile / 100
    need = n - math.floor(q * (n - 1))
    m = int(np.count_nonzero(sim.req.out > 1))  # the TPOT percentile is over multi-token outputs
    if tpot_s is not None and sim.path.stream and m:
        need_tpot = m - math.floor(q * (m - 1))
    try:
        result = sim.run()
    except _Missed:
        return {"overloaded": True, "stopped_early": True, "requests": n, "completed": sim.done}
    return des_summary(b, result)


def _slos(spec: SweepSpec, built: Built) -> tuple[float | None, float | None]:
    cap = spec.capacity
    slo = built.scenario.slo
    ttft = cap.ttft_s if cap and cap.ttft_s is not None else slo.ttft_s
    tpot = cap.tpot_s if cap and cap.tpot_s is not None else slo.tpot_s
    return ttft, tpot


def meets(summary: dict[str, Any], percentile: int, ttft_s: float | None, tpot_s: float | None) -> bool:
    """Whether a run meets the SLOs at ``percentile``: not overloaded, every request done, TTFT and TPOT in bound."""
    if summary.get("overloaded") or summary.get("completed", 0) < summary.get("requests", 0):
        return False
    ttft = summary.get(f"ttft_p{percentile}_s", math.nan)
    tpot = summary.get(f"tpot_p{percentile}_s", math.nan)
    ok_ttft = ttft_s is None or (math.isfinite(ttft) and ttft <= ttft_s)
    ok_tpot = tpot_s is None or not math.isfinite(tpot) or tpot <= tpot_s  # NaN TPOT: one-token outputs
    return ok_ttft and ok_tpot


def des_requests(cap: CapacitySpec, rate: float, horizon_s: float | None = None) -> int:
    """Requests of one capacity-search simulation at ``rate`` req/s: ``horizon_s`` (default ``duration_s``) seconds
    of arrivals, clamped to ``requests`` .. ``max_requests``."""
    window = cap.duration_s if horizon_s is None else horizon_s
    return int(min(max(math.ceil(rate * window), cap.requests), cap.max_requests))


def fill_fraction(out_tokens: np.ndarray, tolerance: float) -> float:
    """x* / E[X] with E[(X - x*)+] = E[X] t / (1 + t), t = ``tolerance``, over output lengths ``out_tokens``
    [requests]: how many mean holds an engine takes to fill its running set at a rate t over the sustainable one
    (module docstring). 0 for an empty or all-zero sample."""
    x = np.sort(np.asarray(out_tokens, dtype=float))
    mean = float(x.mean()) if x.size else 0.0
    if mean <= 0:
        return 0.0
    target = mean * tolerance / (1.0 + tolerance)
    # E[(X - x)+] at each sample value, decreasing in x: the mean of the excess over x
    excess = (np.cumsum(x[::-1])[::-1] - x * np.arange(x.size, 0, -1)) / x.size
    below = np.flatnonzero(excess <= target)
    if not below.size:
        return 0.0
    i = int(below[0])
    if i == 0:  # below the smallest hold every request still holds its slot: E[(X - x)+] = E[X] - x
        return float((mean - target) / mean)
    # linear between the two sample values around the target (the excess is piecewise linear in x)
    x0, x1, e0, e1 = x[i - 1], x[i], excess[i - 1], excess[i]
    return float((x0 + (x1 - x0) * (e0 - target) / (e0 - e1)) / mean) if e0 > e1 else float(x1 / mean)


def probe_horizon(cap: CapacitySpec, model: Any, r_a: float, ttft_s: float | None) -> float:
    """Seconds of arrivals each capacity probe replays: max(``duration_s``, fill + 2 ``ttft_s`` / tolerance), fill
    from the analytical ``model``'s mean E2E at its capacity ``r_a`` req/s (at ``min_rate`` when ``r_a`` is 0) and
    the workload's output lengths (module docstring); ``duration_s`` without a TTFT SLO."""
    if ttft_s is None:
        return cap.duration_s
    hold = float(model.summary(r_a if r_a > 0 else cap.min_rate).get("e2e_mean_s", math.nan))
    fill = hold * fill_fraction(model.out, cap.tolerance) if math.isfinite(hold) and hold > 0 else 0.0
    return max(cap.duration_s, fill + 2.0 * ttft_s / cap.tolerance)


def _bisect_analytical(
    model: Any, cap: CapacitySpec, ttft: float | None, tpot: float | None
) -> tuple[float, float | None]:
    """(highest rate meeting the SLOs, lowest rate seen to miss them) by the analytical model, req/s.

    The first is 0 when even ``min_rate`` misses; the second None when ``max_rate`` meets them.
    """

    def ok(r: float) -> bool:
        return meets(model.summary(r), cap.percentile, ttft, tpot)

    lo, hi = cap.min_rate, cap.max_rate
    if not ok(lo):
        return 0.0, lo
    if ok(hi):
        return hi, None
    while hi / lo > 1 + cap.tolerance / 4:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo, hi


def _des_search(
    built: Built, spec: SweepSpec, r_a: float, ttft: float | None, tpot: float | None, horizon_s: float | None = None
) -> tuple[float, float | None, dict[str, Any] | None, int, int]:
    """The discrete-event capacity search from the analytical answer ``r_a`` req/s, each probe replaying
    ``horizon_s`` seconds of arrivals (default ``duration_s``; module docstring): (highest rate meeting the SLOs or
    0, lowest rate seen to miss them or None, the summary at the first, simulations run, of them stopped early)."""
    cap = spec.capacity
    assert cap is not None
    runs = stopped = 0
    cache: dict[float, dict[str, Any]] = {}

    def run(r: float) -> dict[str, Any]:
        nonlocal runs, stopped
        if r not in cache:
            runs += 1
            cache[r] = _probe(built, r, spec.seed, des_requests(cap, r, horizon_s), cap.percentile, ttft, tpot)
            stopped += bool(cache[r].get("stopped_early"))
        return cache[r]

    def ok(r: float) -> bool:
        return meets(run(r), cap.percentile, ttft, tpot)

    r0 = min(max(r_a, cap.min_rate), cap.max_rate)
    lo = hi = None
    step = 1.0 + cap.tolerance  # the first step closes the bracket when the analytical answer is that close
    if ok(r0):
        lo = r0
        r = r0
        while hi is None:
            r = min(r * step, cap.max_rate)
            step *= step
            if ok(r):
                lo = r
                if r >= cap.max_rate:
                    break
            else:
                hi = r
    else:
        hi = r0
        r = r0
        while lo is None and r > cap.min_rate:
            r = max(r / step, cap.min_rate)
            step *= step
            if ok(r):
                lo = r
            else:
                hi = r
    if lo is not None and hi is not None:
        while hi / lo > 1 + cap.tolerance:
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    found = lo or 0.0
    fail = hi
    best = cache[lo] if lo is not None else None
    return found, fail, best, runs, stopped


def capacity(point: Point, spec: SweepSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary at the capacity rate, capacity columns) of one point (see the module docstring)."""
    from moesim.sim.serving.capacity import shared_timers

    if spec.engine != "analytical":
        # every probe simulates the same replicas as the analytical model: tables, step costs and (per seed)
        # routing banks computed once (`shared_timers`; the same results), and kept for the next configurations
        # that differ from this one only in their batch limit, workload or SLOs (`timer_key`: `sweep._tasks` puts
        # them in one task)
        with shared_timers(timer_key(point)):
            return _capacity(point, spec)
    return _capacity(point, spec)


def _capacity(point: Point, spec: SweepSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """`capacity`'s search."""
    cap = spec.capacity
    assert cap is not None
    model = _analytical(point, spec)
    built = model.built
    ttft, tpot = _slos(spec, built)
    r_a, r_a_fail = _bisect_analytical(model, cap, ttft, tpot)
    runs = stopped = 0
    horizon = math.nan
    if spec.engine == "analytical":
        best = model.summary(r_a) if r_a > 0 else None
        found = r_a
        fail = r_a_fail
    else:
        need = probe_horizon(cap, model, r_a, ttft)
        found, fail, best, runs, stopped = _des_search(built, spec, r_a, ttft, tpot, need)
        # the found rate's run's window of arrivals: the horizon, unless ``max_requests`` cut it
        rate = found if found > 0 else min(max(r_a, cap.min_rate), cap.max_rate)
        horizon = des_requests(cap, rate, need) / rate
    cols: dict[str, Any] = {
        "capacity_req_s": found if found > 0 else math.nan,
        "capacity_fail_req_s": fail if fail is not None else math.nan,  # the lowest rate seen to miss the SLOs
        "capacity_analytical_req_s": r_a if r_a > 0 else math.nan,
        "capacity_runs": runs,
        # of them, the runs stopped once certain to miss the SLOs (`_probe`)
        "capacity_stopped_runs": stopped,
        # seconds of arrivals the found rate's simulation replayed (`probe_horizon`); NaN on the analytical engine
        "capacity_horizon_s": horizon,
    }
    if best is not None:
        pct = cap.percentile
        cols |= {
            "capacity_tok_s": best["throughput_tok_s"],
            "capacity_ttft_s": best[f"ttft_p{pct}_s"],
            "capacity_tpot_s": best[f"tpot_p{pct}_s"],
            "capacity_usd_per_mtok": best["usd_per_mtok"],
        }
    else:
        cols |= {k: math.nan for k in ("capacity_tok_s", "capacity_ttft_s", "capacity_tpot_s", "capacity_usd_per_mtok")}
    return best or {}, cols


def _row(point: Point, spec: SweepSpec, summary: dict[str, Any], built: Built | None) -> dict[str, Any]:
    row: dict[str, Any] = {"point_id": point.point_id, "config_key": point.config_key, "label": point.values["label"]}
    row |= {k: v for k, v in point.values.items() if k != "label"}
    for k in (*DEFAULT_METRICS, *spec.metrics):
        v = summary.get(k, math.nan)
        row[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
    usd_h = math.nan
    if built is not None:
        if row.get("gpus") is None:
            row["gpus"] = built.gpus
        with contextlib.suppress(MoesimError):  # an unpriced GPU: no $/h
            usd_h = usd_per_gpu_second(built.cluster.gpu, built.assumptions)[0] * 3600 * built.gpus
    row["usd_per_hour"] = usd_h
    return row


def evaluate(point: Point, spec: SweepSpec) -> dict[str, Any]:
    """One point's row: its columns, the kept metrics, capacity columns, ``status`` and ``error``.

    ``error`` is the one-line reason a point has no usable figures: the error, or why it is overloaded
    (the analytical model's ``overload_reason``); empty for an ok point.
    """
    t0 = time.perf_counter()
    built = None
    try:
        if spec.capacity is not None:
            summary, cols = capacity(point, spec)
            built = _built(point, spec)
            row = _row(point, spec, summary, built) | cols
            row["status"] = "ok" if cols["capacity_req_s"] == cols["capacity_req_s"] else "slo_unmet"
        else:
            rate = point.values["rate"]
            if spec.engine == "analytical":
                model = _analytical(point, spec)
                built = model.built
                summary = model.summary(rate if rate == rate else None)
            else:
                built = _built(point, spec)
                summary = _des(built, rate if rate == rate else None, spec.seed)
            row = _row(point, spec, summary, built)
            row["status"] = "overloaded" if summary.get("overloaded") else "ok"
        row["error"] = str(summary.get("overload_reason") or "") if row["status"] == "overloaded" else ""
    except MoesimError as exc:
        row = _row(point, spec, {}, built)
        row["status"], row["error"] = "error", exc.one_line()
    except Exception as exc:  # a bug must not lose the sweep: record it on the point
        row = _row(point, spec, {}, built)
        last = traceback.extract_tb(exc.__traceback__)[-1]
        row["status"] = "error"
        row["error"] = f"internal error {type(exc).__name__}: {exc} ({last.filename}:{last.lineno})"
    row["wall_s"] = time.perf_counter() - t0
    return row


def evaluate_rates(points: list[Point], spec: SweepSpec) -> list[dict[str, Any]]:
    """Rows of analytical ``points`` of one configuration, each at its own rate: `Analytical.summaries` over
    all their rates at once (the same figures as `evaluate` point by point, to float rounding).

    Anything the batch cannot answer as a whole (a bad rate, an error building the configuration) is left to
    `evaluate` point by point, so every point keeps its own row, status and error.
    """
    t0 = time.perf_counter()
    try:
        model = _analytical(points[0], spec)
        summaries = model.summaries([p.values["rate"] for p in points])
    except Exception:  # `evaluate` records each point's own error
        return [evaluate(p, spec) for p in points]
    wall = (time.perf_counter() - t0) / len(points)
    rows = []
    for p, summary in zip(points, summaries, strict=True):
        row = _row(p, spec, summary, model.built)
        row["status"] = "overloaded" if summary.get("overloaded") else "ok"
        row["error"] = str(summary.get("overload_reason") or "") if row["status"] == "overloaded" else ""
        row["wall_s"] = wall
        rows.append(row)
    return rows


def _batchable(point: Point, spec: SweepSpec) -> bool:
    """Whether ``point`` can join its configuration's batch of rates (`evaluate_rates`)."""
    rate = point.values.get("rate")
    return spec.engine == "analytical" and spec.capacity is None and isinstance(rate, (int, float)) and rate == rate


def evaluate_task(points: list[Point], spec: SweepSpec) -> list[dict[str, Any]]:
    """Rows of ``points`` in order (a worker's unit of work); the analytical points of one configuration at
    given rates go through `evaluate_rates` together, the rest through `evaluate` one by one."""
    rows: list[dict[str, Any]] = []
    i = 0
    while i < len(points):
        p = points[i]
        if not _batchable(p, spec):
            rows.append(evaluate(p, spec))
            i += 1
            continue
        j = i + 1
        while j < len(points) and points[j].config_key == p.config_key and _batchable(points[j], spec):
            j += 1
        rows.extend(evaluate_rates(points[i:j], spec))
        i = j
    return rows
