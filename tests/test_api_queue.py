"""The API server's queue: requests wait for a free API server process first come, first served
(`sim.serving.metrics.api_queue_wait`), in the DES (open and closed loop) and in the analytical engine."""

from __future__ import annotations

import copy
import heapq

import numpy as np
import pytest
from fast_inputs import SERVE

from moesim.model.errors import MoesimError
from moesim.sim.serving.host import engine_profile
from moesim.sim.serving.metrics import api_queue_wait, api_service_s
from moesim.sim.serving.scenario import EngineSpec
from moesim.sim.serving.serve import run


def _by_loop(arrival: np.ndarray, service: np.ndarray, servers: int) -> np.ndarray:
    """The same queue by an event loop over the requests in arrival order (reference)."""
    order = np.argsort(arrival, kind="stable")
    free = [-np.inf] * servers
    wait = np.zeros(arrival.size)
    for i in order:
        start = max(arrival[i], free[0])
        wait[i] = start - arrival[i]
        heapq.heapreplace(free, start + service[i])
    return wait


@pytest.mark.parametrize("servers", [1, 2, 5])
def test_the_queue_matches_an_event_loop(servers):
    rng = np.random.default_rng(3)
    arrival = np.cumsum(rng.exponential(0.004, 400))
    arrival[50:90] = arrival[50]  # a burst
    rng.shuffle(arrival)
    service = rng.uniform(0.001, 0.009, 400)
    np.testing.assert_allclose(
        api_queue_wait(arrival, service, servers), _by_loop(arrival, service, servers), atol=1e-12
    )


def test_a_burst_queues_and_sparse_arrivals_do_not():
    burst = api_queue_wait(np.zeros(5), np.full(5, 0.002))
    np.testing.assert_allclose(burst, [0.0, 0.002, 0.004, 0.006, 0.008])
    np.testing.assert_allclose(api_queue_wait(np.zeros(5), np.full(5, 0.002), servers=2), [0, 0, 0.002, 0.002, 0.004])
    assert not api_queue_wait(np.arange(5) * 0.01, np.full(5, 0.002)).any()
    assert api_queue_wait(np.zeros(0), np.zeros(0)).size == 0


def test_service_is_parsing_plus_tokenisation():
    np.testing.assert_allclose(api_service_s(np.array([0, 1000]), 2.5e-3, 1e-6), [2.5e-3, 3.5e-3])


def _burst(n: int, arrival: str = "poisson", **engine) -> dict:
    sc = copy.deepcopy(SERVE)
    if arrival == "closed":
        sc["workload"] = {"arrival": "closed", "concurrency": n, "requests": n, "input": 64, "output": 4}
    else:  # n requests sent at once
        sc["workload"] = {"arrival": "poisson", "rate": 1e9, "requests": n, "input": 64, "output": 4}
    sc["engine"] = {"kind": "vllm", **engine}
    return sc


@pytest.mark.parametrize("arrival", ["poisson", "closed"])
def test_the_des_spaces_a_burst_by_the_api_servers_time(arrival):
    res = run(_burst(12, arrival), "des")
    h = engine_profile(EngineSpec(kind="vllm")).host
    service = h["api_per_request_s"] + 64 * h["tokenize_per_token_s"]
    q = res.requests.sort_values("engine_arrival_s")
    front = (q["engine_arrival_s"] - q["arrival_s"]).to_numpy()
    lone = service + h["tokenize_wait_s"]
    # the k-th request of the burst waits k services before its own
    np.testing.assert_allclose(np.sort(front), lone + service * np.arange(12), atol=1e-7)


def test_more_api_servers_shorten_the_queue(tmp_path):
    prof = tmp_path / "four.yaml"
    prof.write_text("kind: vllm\nsettings: {api_servers: 4}\n")
    one = run(_burst(12), "des").requests
    four = run(_burst(12, profile=str(prof)), "des").requests
    h = engine_profile(EngineSpec(kind="vllm")).host
    service = h["api_per_request_s"] + 64 * h["tokenize_per_token_s"]
    lone = service + h["tokenize_wait_s"]
    assert (one["engine_arrival_s"] - one["arrival_s"]).max() == pytest.approx(lone + 11 * service, abs=1e-7)
    assert (four["engine_arrival_s"] - four["arrival_s"]).max() == pytest.approx(lone + 2 * service, abs=1e-7)


def test_both_engines_add_the_same_api_queue():
    """A slow API server (50 ms a request) at 16 req/s: both engines' mean TTFT grows by the service plus the
    queue's mean wait on the workload's own arrivals."""
    sc = copy.deepcopy(SERVE)
    sc["workload"] = {"arrival": "poisson", "rate": 16, "requests": 200, "input": 64, "output": 4}
    slow = copy.deepcopy(sc)
    slow["engine"] = {"kind": "vllm", "host": {"api_per_request_s": 0.05}}
    sc["engine"] = {"kind": "vllm", "host": {"api_per_request_s": 0.0}}
    base = run(sc, "des")
    arrival = base.requests.sort_values("request_id")["arrival_s"].to_numpy()
    h = engine_profile(EngineSpec(kind="vllm")).host
    service = 0.05 + 64 * h["tokenize_per_token_s"]
    wait = float(api_queue_wait(arrival, np.full(arrival.size, service)).mean())
    assert wait > 0.02  # the queue matters here (utilisation 0.8)
    for engine in ("des", "analytical"):
        grew = run(slow, engine).summary["ttft_mean_s"] - run(sc, engine).summary["ttft_mean_s"]
        assert grew == pytest.approx(0.05 + wait, rel=0.05), engine


def test_bad_api_servers_is_one_error(tmp_path):
    prof = tmp_path / "p.yaml"
    for bad in (0, -1, 1.5, True, "two"):
        prof.write_text(f"kind: vllm\nsettings: {{api_servers: {bad!r}}}\n".replace("'", '"'))
        with pytest.raises(MoesimError, match="api_servers"):
            engine_profile(EngineSpec(kind="vllm", profile=str(prof)))
    prof.write_text("kind: vllm\nsettings: {api_servers: 3}\n")
    assert engine_profile(EngineSpec(kind="vllm", profile=str(prof))).api_servers == 3
