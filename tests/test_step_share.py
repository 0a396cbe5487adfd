"""Timers sharing routing banks, tables and step costs across runs (`sim.serving.capacity.shared_timers`,
`sim.serving.steptime.TimerShare`) give the results of runs alone, bit for bit; a routing bank is a function of
(seed, pair count, generation, rows), not of the banks drawn before it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.sim.serving import capacity as capmod
from moesim.sim.serving.capacity import make_timer, replica_capacity, shared_timers
from moesim.sim.serving.engine import simulate
from moesim.sim.serving.serve import des_summary, load
from moesim.sim.serving.steptime import BankStore
from moesim.sim.sweeps.sweep_eval import _with_rate

SCENARIO = {
    "model": "mixtral-8x7b",
    "cluster": "dgx-h100",
    "layout": {"tp": 1, "dp_attn": 4, "ep": 4},
    "engine": {"max_batch": 64, "max_tokens": 2048},
    "workload": {
        "arrival": "poisson",
        "rate": 20,
        "requests": 40,
        "input": {"dist": "lognormal", "mean": 300, "cv": 1.0, "max": 2000},
        "output": {"dist": "lognormal", "mean": 40, "cv": 1.0, "max": 200},
    },
    "routing": {"distribution": "power", "exponent": 1.2},
}


def _summaries(built, rates: list[float]) -> list[dict]:
    out = []
    for r in rates:
        b = _with_rate(built, r)
        s = des_summary(b, simulate(b, 3))
        out.append({k: v for k, v in s.items() if "wall" not in k})  # wall_s, sim s per wall s: this machine's
    return out


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        assert same, (k, x, y)


@pytest.mark.parametrize("routing", [{}, {"capacity_factor": 1.0}])
def test_shared_runs_equal_runs_alone(routing: dict) -> None:
    """Runs at three rates inside one `shared_timers` block (later ones reuse the earlier ones' banks and step costs)
    against the same runs each alone: every summary figure identical; and sharing did happen."""
    built = load(SCENARIO | {"routing": SCENARIO["routing"] | routing})
    rates = [10.0, 30.0, 10.0]
    alone = _summaries(built, rates)
    with shared_timers():
        shared = _summaries(built, rates)
        assert capmod._SHARED  # one share per replica, one bank store per seed
        stores = [b for *_, banks in capmod._SHARED.values() for b in banks.values()]
        assert sum(len(s._banks) for s in stores) > 0
    assert capmod._SHARED is None
    for a, s in zip(alone, shared, strict=True):
        _equal(a, s)
    assert alone[0]["steps"] > 20 and alone[1] != alone[0]  # the runs did something, and differ by rate


def test_share_switch_off() -> None:
    """With `capacity.SHARE` off the block shares nothing (the reference path)."""
    built = load(SCENARIO)
    capmod.SHARE = False
    try:
        with shared_timers():
            assert capmod._SHARED is None
            pool = built.pools[0]
            assert make_timer(built, pool, replica_capacity(built, pool), 1).share is None
    finally:
        capmod.SHARE = True


def test_bank_is_a_function_of_its_key() -> None:
    """A bank drawn after others, or taken from another timer's store, equals the one drawn first; a store over its
    byte limit drops banks, which are then drawn again the same."""
    built = load(SCENARIO)
    pool = built.pools[0]
    cap = replica_capacity(built, pool)
    a, b = make_timer(built, pool, cap, 7), make_timer(built, pool, cap, 7)
    for n in (5, 300, 4000):
        a.bank.samples(n)
    first = [x.copy() for x in a.bank.samples(300)]
    again = b.bank.samples(300)  # b's first bank
    for x, y in zip(first, again, strict=True):
        assert np.array_equal(x, y)
    other = make_timer(built, pool, cap, 8).bank.samples(300)[0]
    assert not np.array_equal(other, first[0])  # another seed, other draws
    store = BankStore(max_bytes=1)
    a.bank.store = store
    a.bank._banks.clear()
    for n in (5, 300):
        a.bank.samples(n)
    assert len(store._banks) == 1  # over the limit: only the last kept
    a.bank._banks.clear()
    for x, y in zip(first, a.bank.samples(300), strict=True):
        assert np.array_equal(x, y)


def test_generations_differ_and_repeat() -> None:
    """A bank retired after use (`_rows_for`) is drawn anew from its next generation: other rows than the first,
    and the same rows in another timer that retires it as often."""
    built = load(SCENARIO)
    pool = built.pools[0]
    cap = replica_capacity(built, pool)
    a, b = make_timer(built, pool, cap, 7), make_timer(built, pool, cap, 7)
    n = 48  # an exact bank (no grid point)
    g0 = a.bank.samples(n)[0].copy()
    rows = g0.shape[1]
    for t in (a, b):
        for _ in range(t.bank.REUSE + 1):  # a first bank grows after ``rows`` steps, a full one later
            t.bank.draw(n, rows, np.random.default_rng(0))
            if t.bank._gen.get(n):
                break
        assert t.bank._gen[n] == 1
    g1a, g1b = a.bank.samples(n)[0], b.bank.samples(n)[0]
    assert np.array_equal(g1a, g1b) and not np.array_equal(g1a[:, :rows], g0)


def test_legacy_banks_are_the_sequential_draws() -> None:
    """`RoutingBank.LEGACY` (the comparison's reference) draws banks in turn from one generator seeded like
    91c4171's (timer seed + 7919), first banks of `FIRST_ROWS` rows; today's first bank of a replica with per-layer
    routing is smaller (`FIRST_CATEGORIES`)."""
    from moesim.sim.serving.steptime import RoutingBank

    built = load(SCENARIO)
    pool = built.pools[0]
    cap = replica_capacity(built, pool)
    RoutingBank.LEGACY = True
    try:
        t = make_timer(built, pool, cap, 7)
        bank = t.bank
        got = [x.copy() for x in bank.samples(40)], bank.samples(700)
    finally:
        RoutingBank.LEGACY = False
    assert bank.store is None and bank.first_rows == min(bank.rows, bank.FIRST_ROWS)
    rng = np.random.default_rng(7 + 7919)
    ref = bank._draw(40, bank.first_rows, rng), bank._draw(700, bank.first_rows, rng)
    for a, b in zip(got, ref, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)
    now = make_timer(built, pool, cap, 7).bank
    d, s = len(now.p), now.p.shape[1]
    assert now.first_rows == min(now.rows, max(min(now.FIRST_ROWS, now.FIRST_CATEGORIES // (d * s)), now.MIN_ROWS))


def test_capacity_search_rows_equal_without_sharing() -> None:
    """A discrete-event capacity search (its analytical model and every probe in one `shared_timers` block) gives
    the row of the same search with `capacity.SHARE` off, column for column."""
    from moesim.sim.sweeps import sweep_eval
    from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

    spec = parse_sweep(
        {
            "name": "share",
            "base": {k: v for k, v in SCENARIO.items() if k != "workload"}
            | {"workload": {k: v for k, v in SCENARIO["workload"].items() if k not in ("rate", "requests")}},
            "axes": {"precision": ["fp8"]},
            "engine": "des",
            "capacity": {"percentile": 90, "ttft_s": 0.5, "tpot_s": 0.03, "duration_s": 2, "requests": 30},
        }
    )
    (point,) = expand(spec).points
    rows = {}
    for share in (True, False):
        capmod.SHARE = share
        sweep_eval._CACHE.clear()
        try:
            rows[share] = {k: v for k, v in sweep_eval.evaluate(point, spec).items() if k != "wall_s"}
        finally:
            capmod.SHARE = True
    assert rows[True]["status"] == "ok" and rows[True]["capacity_runs"] >= 2
    _equal(rows[True], rows[False])


@pytest.mark.parametrize(
    "over",
    [
        {},  # MoE with expert parallelism, no engine profile
        {"engine": {"max_batch": 64, "max_tokens": 2048, "kind": "vllm"}},  # an overlapping host scheduler
        {"engine": {"max_batch": 64, "max_tokens": 2048, "kind": "sglang"}},
        {"model": "llama-3.1-8b", "layout": {"tp": 1}, "routing": {"distribution": "uniform"}},  # dense
        {"routing": {"distribution": "power", "exponent": 1.2, "capacity_factor": 1.0}},  # drops
    ],
)
def test_one_step_in_floats_is_the_blocks_step(over: dict) -> None:
    """`StepTimer.sample` combines a one-step block in Python floats (`_combine_one`): every field of the
    `StepCost` equal, bit for bit, to `_combine(...).cost(0)` of the same arguments, over decode, prefill and mixed
    batches of many shapes."""
    import dataclasses

    built = load(SCENARIO | over)
    pool = built.pools[0]
    timer = make_timer(built, pool, replica_capacity(built, pool), 0)
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(60):
        b = int(rng.integers(1, 40))
        new = np.where(rng.random(b) < 0.8, 1, rng.integers(1, 900, b))
        cached = rng.integers(0, 3000, b) * (rng.random(b) < 0.9)
        args = timer._block_args(new, cached[None, :])
        if timer.overlap == "two_batch":
            continue
        ref = timer._combine(*args).cost(0)
        got = timer._combine_one(*args)
        for f in dataclasses.fields(ref):
            x, y = getattr(ref, f.name), getattr(got, f.name)
            if isinstance(x, np.ndarray):
                assert np.array_equal(x, y), f.name
            else:
                assert x == y and type(x) is type(y), (f.name, x, y)
        checked += 1
    assert checked == 60


def test_scoped_sharing_across_batch_limits() -> None:
    """Capacity searches of configurations that differ only in ``max_batch`` share one registry
    (`shared_timers`' scope, the sweep's `timer_key`; `sweep._tasks` puts them in one task): every row equals its
    search alone with `capacity.SHARE` off, and the second search found the first one's tables and banks."""
    from moesim.sim.sweeps import sweep_eval
    from moesim.sim.sweeps.sweep import _tasks
    from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

    spec = parse_sweep(
        {
            "name": "scope",
            "base": {k: v for k, v in SCENARIO.items() if k not in ("workload", "engine")}
            | {"engine": {"max_tokens": 2048}}
            | {"workload": {k: v for k, v in SCENARIO["workload"].items() if k not in ("rate", "requests")}},
            "axes": {"max_batch": [32, 64], "precision": ["fp8"]},
            "engine": "des",
            "capacity": {
                "percentile": 90,
                "ttft_s": 0.25,
                "tpot_s": 0.03,
                "duration_s": 1,
                "requests": 16,
                "tolerance": 0.5,
            },
        }
    )
    points = expand(spec).points
    tasks = _tasks(points, spec)
    assert [len(t) for t in tasks] == [2]  # both batch limits in one task
    for t in tasks:
        assert len({sweep_eval.timer_key(p) for p in t}) == 1 and len({p.config_key for p in t}) == 2
    rows: dict[bool, list[dict]] = {}
    for share in (False, True):
        capmod.SHARE = share
        capmod._SCOPES.clear()
        sweep_eval._CACHE.clear()
        try:
            rows[share] = []
            for t in tasks:
                for i, p in enumerate(t):
                    if share and i:  # the first search's registry is there before the second one starts
                        (registry,) = [capmod._SCOPES[sweep_eval.timer_key(p)]]
                        shares = list(registry.values())
                        assert shares and all(memo for _, _, memo, _ in shares)
                        before = {id(v) for v in registry.values()}
                    rows[share].append({k: v for k, v in sweep_eval.evaluate(p, spec).items() if k != "wall_s"})
                    if share and i:
                        assert {id(v) for v in registry.values()} == before  # reused, not built again
        finally:
            capmod.SHARE = True
    assert len(capmod._SCOPES) == 1
    for a, b in zip(rows[False], rows[True], strict=True):
        assert a["status"] == "ok" and a["capacity_runs"] >= 2
        _equal(a, b)
