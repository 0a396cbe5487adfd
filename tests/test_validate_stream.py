"""The API server's per-step output handling (``stream_per_seq_s``): vLLM's output_handler processes a step's
outputs for every running request before the streams send their chunks, so each streamed token reaches the client
``stream_per_seq_s`` x (running requests) after its step, in both engines. TEST INPUT workloads only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moesim.sim.serving.analytical import Analytical
from moesim.sim.serving.metrics import client_times, running_at
from moesim.sim.serving.serve import load, run

PER_SEQ = 1e-3  # s per running request: large, so the effect stands out of the noise


def test_running_at_counts_the_running_set_per_replica():
    start = np.array([0.0, 1.0, 2.0, 0.5, np.nan])
    end = np.array([3.0, 1.5, 4.0, 2.5, np.nan])
    group = np.array([0, 0, 0, 1, 0])
    t = np.array([1.2, 2.0, 3.5, 2.4, 1.2])
    # t=1.2 in replica 0: requests 0 and 1; t=2.0: 0 and 2 (1 ended at 1.5); t=3.5: 2; replica 1 at 2.4: 3
    np.testing.assert_array_equal(running_at(t, group, start, end), [2, 2, 1, 1, 2])
    first, finish = client_times(
        np.array([1.0]), np.array([2.0]), np.array([5]), detokenize_per_token_s=0.0, stream=True, chunk_tokens=1,
        first_batch_s=np.array([0.1]), finish_batch_s=np.array([0.3]),
    )  # fmt: skip
    assert first[0] == pytest.approx(1.1) and finish[0] == pytest.approx(2.3)


def _scenario(tmp_path, per_seq: float) -> dict:
    rng = np.random.default_rng(3)
    n = 300
    pd.DataFrame(
        {"arrival_s": np.cumsum(rng.exponential(1 / 8.0, n)), "input_tokens": 200, "output_tokens": 100}
    ).to_csv(tmp_path / "w.csv", index=False)
    return {
        "name": "stream",
        "model": "llama-3.1-8b",
        "gpu": "H100-SXM",
        "replicas": 1,
        "layout": {"tp": 1},
        "engine": {"kind": "vllm", "max_batch": 64, "max_tokens": 2048, "host": {"stream_per_seq_s": per_seq}},
        "workload": {"trace": "w.csv"},
    }


def test_each_token_waits_for_its_steps_batch_in_both_engines(tmp_path):
    """TTFT and E2E grow by per_seq x the running requests (about 3.6 at 8 req/s x 100 tokens x 4.5 ms) in the
    DES and in the analytical engine alike; the gaps between tokens (ITL) do not change."""
    base = run(_scenario(tmp_path, 0.0), "des", base_dir=tmp_path)
    slow = run(_scenario(tmp_path, PER_SEQ), "des", base_dir=tmp_path)
    q0, q1 = base.requests, slow.requests
    np.testing.assert_allclose(q1["first_token_s"], q0["first_token_s"])  # the engine is unchanged
    extra = q1["client_first_s"] - q1["first_token_s"] - (q0["client_first_s"] - q0["first_token_s"])
    running = running_at(q1["first_token_s"] - 1e-9, q1["replica"], q1["scheduled_s"], q1["finish_s"])
    np.testing.assert_allclose(extra, PER_SEQ * running, atol=1e-12)
    assert 1.5 < float(running.mean()) < 8
    des_shift = float(q1["ttft_s"].mean() - q0["ttft_s"].mean())
    a0 = Analytical(load(_scenario(tmp_path, 0.0), None, base_dir=tmp_path))
    a1 = Analytical(load(_scenario(tmp_path, PER_SEQ), None, base_dir=tmp_path))
    _s0, t0, e0, _ = a0.solve(a0.workload_rate)
    s1, t1, e1, _ = a1.solve(a1.workload_rate)
    an_shift = float(t1.mean() - t0.mean())
    assert an_shift == pytest.approx(PER_SEQ * s1["mixed"].batch)
    assert an_shift == pytest.approx(des_shift, rel=0.35)
    # every token is delayed alike: the analytical E2E moves as much as the TTFT, ITL stays
    assert float(e1.mean() - e0.mean()) == pytest.approx(an_shift)
