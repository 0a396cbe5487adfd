"""The request path and the client-side latencies (`sim.serving.metrics`): what TTFT, TPOT, ITL and E2E mean.

The definitions are the benchmark clients' (vllm bench serve, sglang.bench_serving, inference-perf): TTFT from
the send to the first streamed chunk carrying a token (the whole response when not streamed), E2E to the last
chunk, TPOT = (E2E - TTFT) / (output tokens - 1) per request, ITL the gaps between streamed chunks. The engine
sees a request after the API server and tokenisation, and the client sees a token after detokenisation.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest

from moesim.sim.serving.metrics import (
    METRIC_DEFINITIONS,
    api_queue_wait,
    client_times,
    front_s,
    last_chunk_tokens,
    latency_summary,
    with_derived,
)
from moesim.sim.serving.serve import ServeResult, run

API_S, TOKENIZE_S, DETOKENIZE_S = 0.05, 1e-4, 2e-3  # large, so that every overhead shows
TOKENIZE_WAIT_S = 0.01  # the tokeniser's micro-batch window (vLLM: 2 ms)


def _timeline() -> pd.DataFrame:
    """Two requests by hand: r0 5 output tokens, r1 3; the engine sees each after its API server and tokeniser."""
    return pd.DataFrame(
        {
            "arrival_s": [0.0, 1.0],
            "engine_arrival_s": [0.01, 1.02],
            "input_tokens": [100, 200],
            "output_tokens": [5, 3],
            "scheduled_s": [0.02, 1.02],
            "first_token_s": [0.1, 1.2],
            "finish_s": [0.5, 1.6],
            "client_first_s": [0.101, 1.201],
            "client_finish_s": [0.501, 1.601],
            "preemptions": [0, 0],
            "cached_tokens": [0, 50],
        }
    )


def _steps() -> pd.DataFrame:
    cols = ("start_s", "duration_s", "seqs", "kv_used_frac", "straggler_s", "fetch_s", "dropped_pairs", "pairs")
    return pd.DataFrame({c: [0.0] for c in cols} | {"duration_s": [0.1], "seqs": [1]})


def test_each_metric_on_a_hand_made_timeline():
    q = with_derived(_timeline())
    np.testing.assert_allclose(q["ttft_s"], [0.101, 0.201])  # send -> first chunk at the client
    np.testing.assert_allclose(q["e2e_s"], [0.501, 0.601])  # send -> last chunk
    np.testing.assert_allclose(q["tpot_s"], [(0.501 - 0.101) / 4, (0.601 - 0.201) / 2])  # first token excluded
    np.testing.assert_allclose(q["engine_ttft_s"], [0.09, 0.18])  # the scheduler sees it -> first token emitted
    np.testing.assert_allclose(q["engine_e2e_s"], [0.49, 0.58])
    np.testing.assert_allclose(q["queue_s"], [0.01, 0.0])  # waiting in the scheduler's queue
    itl = np.array([0.1, 0.1, 0.1, 0.1, 0.2, 0.2])  # r0's four gaps, r1's two
    s = latency_summary(_timeline(), itl, _steps(), slo_ttft_s=None, slo_tpot_s=None)
    assert s["ttft_mean_s"] == pytest.approx(0.151)
    assert s["tpot_mean_s"] == pytest.approx(0.15)  # mean of per-request ratios
    # the ratio of means, as the vllm-e2e-dense study derives it: (mean e2e - mean ttft) / (mean output - 1)
    assert s["tpot_derived_mean_s"] == pytest.approx((0.551 - 0.151) / (4 - 1))
    assert s["itl_mean_s"] == pytest.approx(itl.mean())  # every gap, pooled over requests
    assert s["e2e_mean_s"] == pytest.approx(0.551)
    assert s["engine_ttft_mean_s"] == pytest.approx(0.135)
    assert s["makespan_s"] == pytest.approx(1.601)  # up to the last chunk the client received
    assert s["prefix_hit_rate"] == pytest.approx(50 / 300)


def test_without_request_path_columns_the_engine_times_are_the_clients():
    q = with_derived(_timeline().drop(columns=["engine_arrival_s", "client_first_s", "client_finish_s"]))
    np.testing.assert_allclose(q["ttft_s"], q["engine_ttft_s"])
    np.testing.assert_allclose(q["ttft_s"], [0.1, 0.2])
    np.testing.assert_allclose(q["tpot_s"], q["engine_tpot_s"])


def test_front_is_api_server_plus_tokenisation():
    np.testing.assert_allclose(front_s(np.array([1, 1000]), 5e-4, 1e-6), [5e-4 + 1e-6, 5e-4 + 1e-3])


def test_streamed_versus_not_streamed_first_token():
    first, finish, out = np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0, 2.0]), np.array([120, 100, 1])
    c_first, c_finish = client_times(first, finish, out, detokenize_per_token_s=1e-3, stream=True, chunk_tokens=50)
    np.testing.assert_allclose(c_first, 1.001)  # each streamed token is detokenised as it comes
    np.testing.assert_allclose(c_finish, 2.001)
    # not streamed: one response when the last group of 50 tokens (SGLang) has been detokenised; TTFT = E2E
    c_first, c_finish = client_times(first, finish, out, detokenize_per_token_s=1e-3, stream=False, chunk_tokens=50)
    np.testing.assert_allclose(c_finish, [2.020, 2.050, 2.001])
    np.testing.assert_array_equal(c_first, c_finish)
    np.testing.assert_array_equal(last_chunk_tokens(out, False, 0), out)  # 0: all tokens at the end
    np.testing.assert_array_equal(last_chunk_tokens(out, True, 0), [1, 1, 1])


# ---- the request path through the discrete-event simulator ------------------------------------------------


def _scenario(**engine) -> dict:
    host = {"api_per_request_s": API_S, "tokenize_per_token_s": TOKENIZE_S, "detokenize_per_token_s": DETOKENIZE_S}
    host["tokenize_wait_s"] = TOKENIZE_WAIT_S
    host["stream_per_seq_s"] = 0.0  # the per-batch output handling has its own test (tests/test_validate_stream.py)
    return {
        "model": "mixtral-8x7b",
        "gpu": "H100-SXM",
        "layout": {"tp": 2},
        "replicas": 1,
        "engine": {"kind": "vllm", "host": host, **engine},
        "workload": {
            "arrival": "poisson",
            "rate": 4,
            "requests": 60,
            "input": {"dist": "lognormal", "mean": 512, "cv": 1.0, "max": 2048},
            "output": {"dist": "lognormal", "mean": 64, "cv": 1.0, "max": 256},
        },
    }


@cache
def _run(stream: bool) -> ServeResult:
    return run(_scenario(stream=stream), "des")


def test_overheads_add_as_stated():
    res = _run(True)
    q = res.requests
    # the API server takes one request at a time: a request sent while it is busy waits (first come, first served)
    wait = api_queue_wait(q["arrival_s"].to_numpy(), API_S + TOKENIZE_S * q["input_tokens"].to_numpy())
    assert wait.max() > 0.0  # 0.1 s a request at 4 req/s: some wait
    front = API_S + wait + TOKENIZE_WAIT_S + TOKENIZE_S * q["input_tokens"]
    np.testing.assert_allclose(q["engine_arrival_s"] - q["arrival_s"], front, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(q["client_first_s"] - q["first_token_s"], DETOKENIZE_S, atol=1e-12)
    np.testing.assert_allclose(q["ttft_s"], q["engine_ttft_s"] + front + DETOKENIZE_S, atol=1e-12)
    np.testing.assert_allclose(q["e2e_s"], q["engine_e2e_s"] + front + DETOKENIZE_S, atol=1e-12)
    # the scheduler never admits a request before it has seen it
    assert (q["scheduled_s"] >= q["engine_arrival_s"] - 1e-12).all()
    # streamed: the client's gaps are the engine's, one per token after the first
    np.testing.assert_array_equal(res.itl, res.sim.engine_itl)
    assert len(res.itl) == int((q["output_tokens"] - 1).sum())
    s = res.summary
    assert s["ttft_mean_s"] == pytest.approx(float(q["ttft_s"].mean()))
    assert s["ttft_mean_s"] > s["engine_ttft_mean_s"] + API_S
    assert s["ttft_basis"].startswith("client, streamed")
    assert s["metric_definitions"] == METRIC_DEFINITIONS


def test_not_streamed_ttft_is_e2e():
    streamed, whole = _run(True), _run(False)
    q = whole.requests
    np.testing.assert_allclose(q["ttft_s"], q["e2e_s"])
    # vLLM V1 detokenises every step's token even when not streaming: the response leaves one detokenisation
    # after the last token, holding the whole completion
    np.testing.assert_allclose(q["client_finish_s"] - q["finish_s"], DETOKENIZE_S, atol=1e-12)
    assert len(whole.itl) == 0 and np.isnan(whole.summary["itl_mean_s"])
    assert whole.summary["ttft_basis"].startswith("client, not streamed")
    # the engine's view does not depend on how the client reads the response
    np.testing.assert_allclose(q["engine_ttft_s"], streamed.requests["engine_ttft_s"])
    assert whole.summary["ttft_mean_s"] == pytest.approx(whole.summary["e2e_mean_s"])
    assert whole.summary["ttft_mean_s"] > 3 * streamed.summary["ttft_mean_s"]  # ~64 output tokens of decode


def test_sglang_not_streamed_detokenises_groups_of_50():
    q = run(_scenario(kind="sglang", stream=False), "des").requests
    tail = DETOKENIZE_S * ((q["output_tokens"] - 1) % 50 + 1)
    np.testing.assert_allclose(q["client_finish_s"] - q["finish_s"], tail, atol=1e-12)


def test_ideal_engine_has_no_request_path():
    sc = _scenario()
    sc["engine"] = {"kind": "ideal"}
    q = run(sc, "des").requests
    np.testing.assert_array_equal(q["engine_arrival_s"], q["arrival_s"])
    np.testing.assert_array_equal(q["ttft_s"], q["engine_ttft_s"])
    np.testing.assert_array_equal(q["e2e_s"], q["engine_e2e_s"])


def test_closed_loop_client_waits_for_its_last_chunk():
    sc = _scenario()
    sc["workload"] = {"arrival": "closed", "concurrency": 1, "requests": 6, "input": 256, "output": 16}
    q = run(sc, "des").requests
    # one client: it sends the next request when the last chunk of the previous one arrives
    np.testing.assert_allclose(q["arrival_s"].to_numpy()[1:], q["client_finish_s"].to_numpy()[:-1])
    np.testing.assert_allclose(q["engine_arrival_s"] - q["arrival_s"], API_S + TOKENIZE_WAIT_S + TOKENIZE_S * 256)
