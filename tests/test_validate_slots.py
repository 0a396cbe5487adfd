"""The analytical engine's wait for a slot of the running set (vLLM's max_num_seqs, or the requests the KV cache
holds): the FIFO many-server recursion on the workload's arrivals (`sim.serving.analytical.fifo_waits`), or an M/G/c
queue without them (`slot_wait`), checked against the Erlang C formula, a brute-force queue and the discrete-event
engine, which queues arrivals at max_batch itself. TEST INPUT workloads only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.sim.serving.analytical import Analytical, erlang_c, fifo_waits, slot_wait
from moesim.sim.serving.serve import load, run


def test_erlang_c_known_values():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: an arrival waits with probability rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # 2 servers at 1 Erlang: 2 a^2 / (2 (2 - a) (1 + a) + a^2 ...)
    assert erlang_c(3, 0.0) == 0.0 and erlang_c(3, 3.0) == 1.0
    # M/M/1 mean wait: rho / (1 - rho) x the service time (exponential service, cs2 = 1)
    assert slot_wait(1, 0.5, 2.0, 1.0) == pytest.approx(2.0)
    assert slot_wait(4, 4.0, 1.0, 0.0) == math.inf
    assert slot_wait(1024, 100.0, 1.0, 0.0) == 0.0  # far below saturation: exactly nothing


def _brute_fifo(t: np.ndarray, hold: np.ndarray, c: int) -> np.ndarray:
    """Waits of a FIFO queue with ``c`` servers by direct simulation: each arrival takes the server freeing first."""
    free = np.zeros(c) - np.inf
    waits = np.zeros(len(t))
    for i in np.argsort(t, kind="stable"):
        j = int(np.argmin(free))
        start = max(t[i], free[j])
        waits[i], free[j] = start - t[i], start + hold[i]
    return waits


def test_fifo_waits_is_the_many_server_queue():
    assert fifo_waits(np.array([0.0, 0.1, 0.2]), np.ones(3), 1) == pytest.approx([0.0, 0.9, 1.8])
    assert fifo_waits(np.array([0.0, 0.1, 0.2]), np.ones(3), 3).tolist() == [0.0, 0.0, 0.0]
    rng = np.random.default_rng(3)
    for c in (1, 4, 16):
        t = rng.uniform(0, 100, 600)  # unsorted on purpose: waits come back in the input order
        hold = rng.exponential(c / 6.5, 600)  # ~0.9 of the slots busy on average, so queues form and drain
        assert fifo_waits(t, hold, c) == pytest.approx(_brute_fifo(t, hold, c), abs=1e-12)
    # never full: exactly zero (the vectorised count, no loop)
    t = np.arange(100) * 1.0
    assert not fifo_waits(t, np.full(100, 2.5), 3).any() and fifo_waits(t, np.full(100, 3.5), 3).any()


def _scenario(folder: Path, rate: float, max_batch: int, n: int = 900, t: np.ndarray | None = None) -> dict:
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.exponential(1 / rate, n)) if t is None else t
    pd.DataFrame({"arrival_s": t, "input_tokens": 200, "output_tokens": rng.integers(100, 300, len(t))}).to_csv(
        folder / "w.csv", index=False
    )
    return {
        "name": "slots",
        "model": "llama-3.1-8b",
        "gpu": "H100-SXM",
        "replicas": 1,
        "layout": {"tp": 1},
        "engine": {"kind": "vllm", "max_batch": max_batch, "max_tokens": 2048},
        "workload": {"trace": "w.csv"},
    }


def test_requests_wait_for_a_slot_as_in_the_des(tmp_path):
    """Six slots, each request holding one for ~0.9 s, 5 req/s (4.6 Erlangs): arrivals queue for a slot. The
    analytical TTFT follows the DES's (measured here: 176 vs 177 ms, P90 573 vs 578 ms, with the FIFO recursion on
    the trace; the M/G/c formula gave 191 ms); without the slot wait it stayed ~13 ms."""
    sc = _scenario(tmp_path, 5.0, 6)
    a = Analytical(load(sc, None, base_dir=tmp_path))
    states, ttft, _e2e, _tpot = a.solve(a.workload_rate)
    assert not states["mixed"].overloaded
    des = run(sc, "des", base_dir=tmp_path).requests
    des_ttft = float(des["ttft_s"].mean())
    assert des_ttft > 0.05  # the DES queues at max_batch
    assert float(ttft.mean()) == pytest.approx(des_ttft, rel=0.4)
    # with slots to spare nobody waits
    roomy = Analytical(load(_scenario(tmp_path, 5.0, 64), None, base_dir=tmp_path))
    _s, ttft64, _e, _t = roomy.solve(roomy.workload_rate)
    assert float(ttft64.mean()) < 0.03 < float(ttft.mean())


def test_more_load_than_slots_is_an_overload(tmp_path):
    sc = _scenario(tmp_path, 9.0, 6, n=200)
    a = Analytical(load(sc, None, base_dir=tmp_path))
    states, ttft, _e2e, _tpot = a.solve(9.0)
    assert states["mixed"].overloaded and "max_batch 6" in states["mixed"].reason
    assert np.isfinite(ttft).all()  # the latencies of the saturated engine, flagged, not infinite


def test_bursty_arrivals_wait_longer_as_in_the_des(tmp_path):
    """Arrivals whose rate swings 0.5x / 1.5x every 20 s (a request holds its slot ~0.9 s; mean 4 req/s, 3.7
    Erlangs of 6 slots): the queue forms in the busy halves. The analytical engine replays the arrivals through the
    slots and follows the DES (measured here: 404 vs 409 ms mean TTFT, P90 1.19 vs 1.21 s); the M/G/c formula, which
    assumes Poisson arrivals at the mean rate, gives a 43 ms wait."""
    rng = np.random.default_rng(2)
    parts, start = [], 0.0
    for k in range(12):
        rate = 4.0 * (1.5 if k % 2 else 0.5)
        parts.append(start + np.sort(rng.uniform(0, 20.0, rng.poisson(rate * 20.0))))
        start += 20.0
    sc = _scenario(tmp_path, 4.0, 6, t=np.concatenate(parts))
    a = Analytical(load(sc, None, base_dir=tmp_path))
    states, ttft, _e2e, _tpot = a.solve(a.workload_rate)
    assert not states["mixed"].overloaded
    des_ttft = float(run(sc, "des", base_dir=tmp_path).requests["ttft_s"].mean())
    assert float(ttft.mean()) == pytest.approx(des_ttft, rel=0.25)
    s = states["mixed"]
    hold = float(np.mean(np.maximum(a.out - 1, 0))) * s.tau + 0.02  # decode steps and ~20 ms to the first token
    poisson = slot_wait(6, a.workload_rate * hold, hold, 0.0)
    assert poisson < 0.25 * des_ttft


def test_the_slot_queue_replays_the_arrivals_scaled_to_the_rate(tmp_path):
    """At the workload's own rate the queue sees the trace's own arrival times; at twice the rate, half of them. A
    replayed load stage passes its arrivals as they came (`solve(rate, arrivals_s)`), not the whole trace stretched
    to the stage's rate, which would crowd every stage into one burst."""
    sc = _scenario(tmp_path, 5.0, 6, n=300)
    a = Analytical(load(sc, None, base_dir=tmp_path))
    t = pd.read_csv(tmp_path / "w.csv")["arrival_s"].to_numpy()
    np.testing.assert_allclose(a._arrivals_at(a.workload_rate), t - t[0])
    np.testing.assert_allclose(a._arrivals_at(2 * a.workload_rate), (t - t[0]) / 2)
    # the stage's own arrivals at the stage's rate: the same waits as the workload solved at its own rate
    _s, own, _e, _t = a.solve(a.workload_rate)
    _s, given, _e, _t = a.solve(a.workload_rate, t - t[0])
    np.testing.assert_allclose(given, own)
    # crowded into a burst at 3x the rate, the same requests wait longer
    _s, crowded, _e, _t = a.solve(a.workload_rate, (t - t[0]) / 3)
    assert float(crowded.mean()) > float(own.mean())
