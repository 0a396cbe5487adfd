"""The analytical engine's mixed pool at high load: steps that carry the prompts that arrived together
(`sim.serving.analytical.aggregate_step`).

Before, each prompt was priced alone below the packed regime and the mean prompt's chunk alone in it (every step
mixed), so on `benchmarks/sweep-des-capacity.yaml` the verdict went from overloaded back to fine where the regime
changed (23 of 72 configurations) and the step time was 7-15% short of the discrete-event engine's at high load.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from moesim.sim.serving import analytical
from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

SWEEP = {
    "name": "packed",
    "base": {
        "model": "mixtral-8x7b",
        "gpus_per_node": 8,
        "engine": {"max_tokens": 8192, "chunked_prefill": True},
        "workload": {
            "arrival": "poisson",
            "input": {"dist": "lognormal", "mean": 512, "cv": 1.0, "max": 8192},
            "output": {"dist": "lognormal", "mean": 128, "cv": 1.0, "max": 2048},
        },
        "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
    },
    "axes": {
        "gpu": ["A100-SXM-80GB"],
        "gpus": [4],
        "layout": [{"tp": "gpus"}],
        "precision": ["bf16"],
        "max_batch": [128],
        "rate": [1.0],
    },
    "engine": "analytical",
}


def _model(sweep: dict | None = None) -> tuple[object, object]:
    """The analytical model of the one point of ``sweep`` (default `SWEEP`), built afresh, and its spec."""
    spec = parse_sweep(sweep or SWEEP)
    (p,) = expand(spec).points
    sweep_eval._CACHE.clear()
    return sweep_eval._analytical(p, spec), spec


def test_aggregate_step_is_the_poisson_mixture_of_whole_steps() -> None:
    """Equal prompts of 300 tokens: the mean step is sum_n P(N = n) (t_dec + extra(300 n)) over whole steps of the
    budget, exactly (the draws only pick prompts, all equal here)."""
    model, _ = _model()
    timer = model.timers["mixed"]
    ctx, b, budget, t_dec, rate, tau = 600, 64, 8192 - 64, 0.013, 40.0, 0.02
    prompts = np.full(50, 300.0)
    mean, mixed, per_step = analytical.aggregate_step(timer, b, ctx, t_dec, rate, tau, prompts, budget)
    nodes, extra = analytical._prompt_curve(timer, b, ctx, budget)
    lam = rate * tau
    num = den = mix = 0.0
    for n in range(60):
        p = math.exp(-lam + n * math.log(lam) - math.lgamma(n + 1))
        tokens = 300.0 * n
        full, rest = divmod(tokens, budget)
        steps = max(full + (rest > 0), 1)
        time = steps * t_dec + full * np.interp(budget, nodes, extra) + (np.interp(rest, nodes, extra) if rest else 0)
        num, den, mix = num + p * time, den + p * steps, mix + (p * steps if n else 0.0)
    assert mean == pytest.approx(num / den, rel=1e-9)
    assert mixed == pytest.approx(mix / den, rel=1e-9) and per_step == pytest.approx(lam * 300.0, rel=1e-9)


def test_verdict_and_step_are_monotone_at_high_load() -> None:
    model, _ = _model()
    rates = np.linspace(40.0, 58.0, 19)
    states = [model.solve(float(r))[0]["mixed"] for r in rates]
    over = [s.overloaded for s in states]
    first = over.index(True)
    assert all(over[first:]), [(r, s.overloaded, s.reason) for r, s in zip(rates, states, strict=True)]
    taus = [s.tau for s in states[: first + 1]]
    assert all(b >= a * (1 - 1e-9) for a, b in itertools.pairwise(taus)), taus
    assert all(s.mixed_frac < 1.0 for s in states[:first])


def test_high_load_step_matches_the_simulation() -> None:
    """At 40 req/s (about 90% of this configuration's capacity) the analytical TPOT and mean batch are within 6% of
    the discrete-event engine's on 60 s of the same arrivals; pricing each prompt alone was 11% short."""
    model, spec = _model()
    rate = 40.0
    a = model.summary(rate)
    d = sweep_eval._des(model.built, rate, spec.seed, int(rate * 60))
    assert a["tpot_mean_s"] == pytest.approx(d["tpot_mean_s"], rel=0.06)
    assert a["e2e_mean_s"] == pytest.approx(d["e2e_mean_s"], rel=0.12)
    try:
        analytical.AGGREGATE = False
        sweep_eval._CACHE.clear()
        alone, _ = _model()
        assert alone.summary(rate)["tpot_mean_s"] < 0.95 * d["tpot_mean_s"]
    finally:
        analytical.AGGREGATE = True
        sweep_eval._CACHE.clear()


def test_a_rates_figures_do_not_depend_on_the_rates_solved_before() -> None:
    """Each rate's figures are those of a model that solved it alone: the requests' own prompt chunks are priced at
    a grid batch (`analytical._work_batch`), not reused from whichever earlier rate's batch was near. Before, a
    sweep's rows depended on the order its rates were solved in (and on how its points were split over workers)."""
    rates = [10.0, 11.0, 12.5, 14.0]
    keys = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p99_s", "mean_batch", "step_s")
    alone = {}
    for r in rates:
        model, _ = _model()
        alone[r] = model.summary(r)
        assert not alone[r]["overloaded"] and alone[r]["mixed_step_s"] > 0
    model, _ = _model()
    for r in rates[::-1]:
        assert {k: model.summary(r)[k] for k in keys} == {k: alone[r][k] for k in keys}, r
    assert len({round(alone[r]["mean_batch"]) for r in rates}) == len(rates)  # batches apart, within a quarter
