"""`sim.serving.analytical.held_tokens` and `Footprint`: the KV-cache tokens running requests hold, as vLLM allocates
them (page by page as tokens come, a cached prefix's pages once however many requests share them), against the
discrete-event engine's own block accounting."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from moesim.model.achievable import AchievableCostModel
from moesim.sim.serving.analytical import Footprint, held_tokens
from moesim.sim.serving.serve import run


def test_equal_outputs_hold_the_prompt_and_half_the_output() -> None:
    inp, out = np.full(100, 500.0), np.full(100, 201.0)
    assert held_tokens(inp, out) == pytest.approx(500 + 100)


def test_long_outputs_weigh_by_their_time_in_the_running_set() -> None:
    # one request of 1 token and one of 1,000: the running set holds the long one 1,000 steps of 1,001
    got = held_tokens(np.array([100.0, 100.0]), np.array([1.0, 1000.0]))
    assert got == pytest.approx((1 * 100 + 1000 * (100 + 999 / 2)) / 1001)
    # exponential outputs: E[o^2] / 2E[o] = E[o], so about the prompt plus the whole mean output
    o = np.random.default_rng(0).exponential(300.0, 200_000).round() + 1
    assert held_tokens(np.full(o.size, 50.0), o) == pytest.approx(50 + o.mean(), rel=0.01)


def test_footprint_counts_a_shared_prefix_once() -> None:
    alone = Footprint(held=700.0)
    assert alone.tokens(10) == pytest.approx(7000.0) and alone.slots(7000.0) == 10
    one = Footprint(held=700.0, shared=500.0, prefix_set=500.0)  # every request shares one 500-token prefix
    assert one.tokens(10) == pytest.approx(10 * 200 + 500)
    many = Footprint(held=700.0, shared=500.0, prefix_set=500.0 * 1000)  # 1,000 equally popular prefixes
    assert many.tokens(1) == pytest.approx(700.0)
    assert many.tokens(10) == pytest.approx(10 * 200 + 500 * 1000 * (1 - 0.999**10))
    for fp in (alone, one, many):
        for kv in (5_000.0, 80_000.0):
            n = fp.slots(kv)
            assert fp.tokens(n) <= kv < fp.tokens(n + 1)


def _busy_run(caching: bool, workload: dict[str, Any], seed: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """A discrete-event run of Llama-3.1-8B on one H100 at 12 req/s of ``workload`` (lengths): (its requests, its
    steps of the middle 60% of the run, and the cache tokens in use at each of them, from the engine's own block
    accounting)."""
    sc = {
        "name": "held",
        "model": "llama-3.1-8b",
        "gpu": "H100-SXM",
        "layout": {"tp": 1},
        "replicas": 1,
        "engine": {"kind": "vllm", "prefix_caching": caching, "block_size": 16},
        "workload": {"arrival": "poisson", "rate": 12, "requests": 1500, **workload},
        "seed": seed,
    }
    res = run(sc, "des", cost_model=AchievableCostModel())
    assert res.sim is not None
    steps = res.steps
    busy = steps[(steps.start_s > steps.start_s.quantile(0.2)) & (steps.start_s < steps.start_s.quantile(0.8))]
    used = busy.kv_used_frac.to_numpy() * res.sim.capacities["mixed"].kv_blocks * 16
    return res.requests, busy, used


def _mean(values: Any, steps: pd.DataFrame) -> float:
    """``values`` [steps] averaged over the steps' time."""
    w = steps.duration_s.to_numpy()
    return float((np.asarray(values, float) * w).sum() / w.sum())


@pytest.mark.parametrize("cv", [0.001, 1.5])
def test_the_simulators_running_set_holds_what_held_tokens_says(cv: float) -> None:
    """Over a busy run of the discrete-event engine (no prefix caching, no preemption), the cache tokens in use per
    running request, time-weighted over its steps, are `held_tokens` of its requests, within the pages' rounding
    (half a 16-token page per request) and the prompts' own steps."""
    lengths = {
        "input": {"dist": "lognormal", "mean": 400, "cv": 0.5, "max": 4000},
        "output": {"dist": "lognormal", "mean": 300, "cv": cv, "max": 6000},
    }
    req, busy, used = _busy_run(False, lengths, seed=1)
    running = _mean(busy.running, busy)
    assert running > 20  # a busy replica
    expect = held_tokens(req.input_tokens.to_numpy(float), req.output_tokens.to_numpy(float))
    assert _mean(used, busy) / running == pytest.approx(expect + 8, rel=0.06)


def test_the_simulators_running_set_shares_its_prefixes_as_footprint_says() -> None:
    """Prefix caching on, 8 shared 512-token prefixes: the discrete-event engine's cache tokens in use (each
    request's own pages and the prefix pages referenced, once) against `Footprint.tokens` of its running set, step
    by step, time-weighted; counting every request's whole prompt (no sharing) would be about twice as much."""
    lengths = {
        "shared_prefix": {"tokens": 512, "groups": 8},
        "input": {"dist": "fixed", "value": 64},
        "output": {"dist": "lognormal", "mean": 300, "cv": 0.5, "max": 3000},
    }
    req, busy, used = _busy_run(True, lengths, seed=2)
    out = np.maximum(req.output_tokens.to_numpy(float), 1.0)
    shared = float((out * req.cached_tokens.to_numpy(float)).sum() / out.sum())
    fp = Footprint(held_tokens(req.input_tokens.to_numpy(float), out), shared, prefix_set=8 * 512)
    assert busy.running.mean() > 15 and shared > 400  # busy, and sharing
    assert _mean([fp.tokens(b) for b in busy.running], busy) == pytest.approx(_mean(used, busy), rel=0.08)
    assert _mean(busy.running * fp.held, busy) > 1.5 * _mean(used, busy)
