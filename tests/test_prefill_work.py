"""Each request's own prefill work in the analytical engine (`sim.serving.prefill_work`)."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.sim.serving.prefill_work import (
    chunk_plan,
    decode_spans,
    prefill_queue,
    prefill_work,
    single_server_waits,
)


def test_chunk_plan_sizes_and_contexts() -> None:
    n, size, ctx = chunk_plan(np.array([5, 12, 8]), np.array([0, 3, 0]), budget=4)
    assert n.tolist() == [2, 3, 2]
    assert size.tolist() == [4, 1, 4, 4, 4, 4, 4]
    # chunk j of a request reads its prefix-cache hit plus the j chunks before it
    assert ctx.tolist() == [0, 4, 3, 7, 11, 0, 4]


def test_prefill_work_prices_each_prompt_not_the_mean() -> None:
    """A convex chunk cost: the mean over the prompts is above the cost of the mean prompt (Jensen), and the
    per-request extra is exact where the cost is linear in the context at a fixed chunk (attention)."""
    t_dec, a, kappa = 0.01, 1e-5, 2e-9

    def steps(c: int, k: int) -> float:
        return t_dec + a * c + 1e-9 * c * c + kappa * c * k

    rng = np.random.default_rng(0)
    comp = np.maximum(rng.lognormal(np.log(1500), 1.0, 400).round(), 1)
    hits = np.zeros_like(comp)
    w = prefill_work(steps, 8, comp, hits, budget=10**9, t_decode=t_dec, mean_form=0.0)
    exact = a * comp + 1e-9 * comp**2
    assert w.n.tolist() == [1] * len(comp)
    assert np.allclose(w.x, exact, rtol=0.05)
    assert w.mean_x == pytest.approx(exact.mean(), rel=0.01)
    assert w.mean_x > 1.3 * (a * comp.mean() + 1e-9 * comp.mean() ** 2)
    # chunked: later chunks read the earlier ones (kappa x size x context), recovered from two evaluations
    w2 = prefill_work(steps, 8, np.array([3000.0]), np.array([0.0]), budget=1000, t_decode=t_dec, mean_form=0.0)
    want = sum(a * 1000 + 1e-9 * 1000**2 + kappa * 1000 * k for k in (0, 1000, 2000))
    assert w2.n.tolist() == [3]
    assert w2.x[0] == pytest.approx(want, rel=1e-6)


def test_prefill_queue_matches_a_simulated_mg1() -> None:
    """Pollaczek-Khinchine against a Lindley recursion on Poisson arrivals with the same service times."""
    rng = np.random.default_rng(1)
    n, rate, t_dec = 200_000, 2.0, 0.01
    service = rng.lognormal(np.log(0.1), 1.0, n)
    wait, rho = prefill_queue(rate, service, t_dec)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    w = np.zeros(n)
    for i in range(1, n):
        w[i] = max(0.0, w[i - 1] + service[i - 1] - (arrivals[i] - arrivals[i - 1]))
    assert rho == pytest.approx(rate * service.mean())
    assert wait - (1 - rho) * t_dec / 2 == pytest.approx(w.mean(), rel=0.08)
    assert prefill_queue(rate, np.full(10, 0.6), t_dec)[0] == float("inf")


def test_decode_spans_hand_worked() -> None:
    """A decodes 10 tokens from t=1 through B's prefill (t=1..1.5, 0.3 s of it beyond the decode steps); B decodes
    5 tokens after its prefill with nothing else running."""
    spans = decode_spans(np.array([0.0, 1.0]), np.array([1.0, 0.5]), np.array([0.6, 0.3]), np.array([11, 6]), 0.1)
    # A: 0.2 s of decode progress during B's prefill, then 0.8 s alone
    assert spans.tolist() == pytest.approx([1.3, 0.5])
    # nobody else in prefill: (out - 1) decode steps
    alone = decode_spans(np.array([0.0]), np.array([0.2]), np.array([0.1]), np.array([50]), 0.02)
    assert alone[0] == pytest.approx(49 * 0.02)


_LONG_PROMPTS = """\
name: mixtral-long-prompts
model: mixtral-8x7b
cluster: dgx-h100
layout: {tp: 1, dp_attn: 8, ep: 8}
engine: {max_batch: 256, max_tokens: 32768, chunked_prefill: true, block_size: 16}
workload:
  arrival: poisson
  rate: 4
  requests: 600
  input: {dist: lognormal, mean: 4096, cv: 1.5, max: 30000}
  output: {dist: lognormal, mean: 256, cv: 1.0, max: 2048}
routing: {distribution: uniform}
seed: 0
"""


def test_analytical_follows_the_des_with_long_tailed_prompts(tmp_path):
    """Mixtral EP8 at a moderate 4 req/s with prompts of mean 4,096 tokens and CV 1.5 (up to 30,000). Pricing each
    prompt's own chunks and queueing them FCFS, the analytical engine follows the DES (measured: TTFT mean 60.8 vs
    62.1 ms, P99 492 vs 490 ms; TPOT mean 5.65 vs 5.99 ms, P90 6.45 vs 6.87 ms); priced at the mean prompt it gave
    48.2 ms, P99 225 ms and one TPOT of 5.47 ms for every request."""
    from moesim.sim.serving.analytical import Analytical
    from moesim.sim.serving.serve import load, run

    sc = tmp_path / "s.yaml"
    sc.write_text(_LONG_PROMPTS)
    a = Analytical(load(sc, None, base_dir=tmp_path))
    states, ttft, _e2e, tpot = a.solve(a.workload_rate)
    assert not states["mixed"].overloaded
    req = run(sc, "des", base_dir=tmp_path).requests
    for got, want in ((ttft.mean(), req["ttft_s"].mean()), (np.quantile(ttft, 0.99), req["ttft_s"].quantile(0.99))):
        assert float(got) == pytest.approx(float(want), rel=0.1)
    assert np.ndim(tpot) == 1  # per request: those decoding through long prefills wait longer
    many = a.out > 1
    assert float(np.quantile(tpot[many], 0.9)) > 1.1 * float(np.quantile(tpot[many], 0.1))


def test_single_server_waits_is_lindley() -> None:
    rng = np.random.default_rng(3)
    a = rng.permutation(np.cumsum(rng.exponential(1.0, 500)))
    s = rng.exponential(0.8, 500)
    order = np.argsort(a)
    want = np.zeros(500)
    free = -np.inf
    for i in order:
        start = max(a[i], free)
        want[i], free = start - a[i], start + s[i]
    np.testing.assert_allclose(single_server_waits(a, s), want, atol=1e-9)
