"""The analytical engine's wait for a slot of the running set (vLLM's max_num_seqs, or the requests the KV cache
holds): an M/G/c queue (`sim.serving.analytical.slot_wait`), checked against the Erlang C formula and against the
discrete-event engine, which queues arrivals at max_batch itself. TEST INPUT workloads only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.sim.serving.analytical import Analytical, erlang_c, slot_wait
from moesim.sim.serving.serve import load, run


def test_erlang_c_known_values():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: an arrival waits with probability rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # 2 servers at 1 Erlang: 2 a^2 / (2 (2 - a) (1 + a) + a^2 ...)
    assert erlang_c(3, 0.0) == 0.0 and erlang_c(3, 3.0) == 1.0
    # M/M/1 mean wait: rho / (1 - rho) x the service time (exponential service, cs2 = 1)
    assert slot_wait(1, 0.5, 2.0, 1.0) == pytest.approx(2.0)
    assert slot_wait(4, 4.0, 1.0, 0.0) == math.inf
    assert slot_wait(1024, 100.0, 1.0, 0.0) == 0.0  # far below saturation: exactly nothing


def _scenario(folder: Path, rate: float, max_batch: int, n: int = 900) -> dict:
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.exponential(1 / rate, n))
    pd.DataFrame({"arrival_s": t, "input_tokens": 200, "output_tokens": rng.integers(100, 300, n)}).to_csv(
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
    analytical TTFT follows the DES's (measured here: 191 vs 164 ms); without the slot wait it stayed ~13 ms."""
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
