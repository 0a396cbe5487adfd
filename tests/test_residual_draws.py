"""The analytical engine's residual step: what is left of the step in progress at an arrival, drawn per request
(`sim.serving.analytical.residual_draws`) instead of one mean for every request."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from fast_inputs import SERVE

from moesim.sim.serving.analytical import residual_draws
from moesim.sim.serving.serve import run


def test_the_draws_follow_the_length_biased_law():
    t_mixed, t_decode, f = 0.040, 0.010, 0.25
    d = residual_draws(20_000, (t_mixed, t_decode), (f, 1 - f), seed=3)
    mean_step = f * t_mixed + (1 - f) * t_decode
    assert d.mean() == pytest.approx((f * t_mixed**2 + (1 - f) * t_decode**2) / (2 * mean_step), rel=1e-6)
    # an arrival lands in a mixed step with probability f t_mixed / E[step]; only there is more than t_decode left
    p_mixed = f * t_mixed / mean_step
    assert (d > t_decode).mean() == pytest.approx(p_mixed * (1 - t_decode / t_mixed), abs=1e-3)
    assert d.min() >= 0 and d.max() <= t_mixed
    # a Monte Carlo of the same law: the quantiles agree
    rng = np.random.default_rng(0)
    in_mixed = rng.random(200_000) < p_mixed
    mc = rng.random(200_000) * np.where(in_mixed, t_mixed, t_decode)
    np.testing.assert_allclose(np.quantile(d, [0.1, 0.5, 0.9, 0.99]), np.quantile(mc, [0.1, 0.5, 0.9, 0.99]), rtol=0.02)


def test_one_step_length_is_uniform_and_the_order_is_seeded():
    d = residual_draws(1000, (0.02,), (1.0,), seed=1)
    np.testing.assert_allclose(np.sort(d), (np.arange(1000) + 0.5) / 1000 * 0.02)
    np.testing.assert_array_equal(d, residual_draws(1000, (0.02,), (1.0,), seed=1))
    assert not np.array_equal(d, residual_draws(1000, (0.02,), (1.0,), seed=2))
    assert residual_draws(0, (0.02,), (1.0,), seed=1).size == 0
    assert not residual_draws(5, (0.0,), (1.0,), seed=1).any()


def test_the_analytical_ttft_spreads_as_the_des_does_and_keeps_its_mean():
    """Mixtral on two H100s at 8 req/s, prompts of one length: without the draws the analytical engine's TTFT
    spread only by the queue; now its P50 to P90 spans about what the simulator's does."""
    sc = copy.deepcopy(SERVE)
    sc["layout"], sc["gpus_per_node"], sc["engine"] = {"tp": 2}, 2, {"kind": "vllm"}
    sc["workload"] = {"arrival": "poisson", "rate": 8, "requests": 400, "input": 256, "output": 64}
    des, ana = run(sc, "des").summary, run(sc, "analytical").summary
    assert ana["ttft_p90_s"] - ana["ttft_p50_s"] > 0.6 * (des["ttft_p90_s"] - des["ttft_p50_s"])
    assert ana["ttft_mean_s"] == pytest.approx(des["ttft_mean_s"], rel=0.1)
    assert ana["ttft_p90_s"] == pytest.approx(des["ttft_p90_s"], rel=0.1)


def test_an_arrival_to_an_idle_replica_waits_out_no_step(monkeypatch):
    """At 2 req/s a quarter of the arrivals find the replica idle and start a step at once, as the simulator's do:
    with them the analytical mean TTFT is within 15% of the simulator's; charging every arrival the step running and
    the step decided ahead (the flag off) puts it 30% above."""
    import moesim.sim.serving.analytical as analytical

    sc = copy.deepcopy(SERVE)
    sc["layout"], sc["gpus_per_node"], sc["engine"] = {"tp": 2}, 2, {"kind": "vllm"}
    sc["workload"] = {"arrival": "poisson", "rate": 2, "requests": 400, "input": 256, "output": 64}
    des = run(sc, "des").summary["ttft_mean_s"]
    assert run(sc, "analytical").summary["ttft_mean_s"] == pytest.approx(des, rel=0.15)
    monkeypatch.setattr(analytical, "IDLE_ARRIVALS", False)
    assert run(sc, "analytical").summary["ttft_mean_s"] > 1.25 * des
