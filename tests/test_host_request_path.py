"""The request path of the shipped engine profiles: the tokeniser's micro-batching window (`tokenize_wait_s`), and a
lone request's TTFT taken apart into its named parts (API server, tokeniser window, tokenisation, prefill step,
output handling, detokenisation)."""

from __future__ import annotations

import copy
from functools import cache

import numpy as np
import pytest
from fast_inputs import SERVE

from moesim.sim.serving.fit_engine import BOUNDS, check_params
from moesim.sim.serving.host import PARAMS, engine_profile
from moesim.sim.serving.metrics import front_s
from moesim.sim.serving.scenario import EngineSpec
from moesim.sim.serving.serve import ServeResult, run


def test_vllm_waits_for_its_tokenisers_micro_batch_window():
    vllm = engine_profile(EngineSpec(kind="vllm"))
    assert vllm.host["tokenize_wait_s"] == pytest.approx(2e-3)  # batch_wait_timeout_s=0.002
    assert "AsyncMicrobatchTokenizer" in vllm.sources["tokenize_wait_s"]
    assert "batch_wait_timeout_s=0.002" in vllm.sources["tokenize_wait_s"]
    # SGLang's TokenizerManager tokenises each request as it comes: no window
    assert engine_profile(EngineSpec(kind="sglang")).host["tokenize_wait_s"] == 0.0
    assert "tokenize_wait_s" in PARAMS and "tokenize_wait_s" in BOUNDS
    assert check_params(["tokenize_wait_s"]) == ("tokenize_wait_s",)  # fit-engine can fit it


def test_front_adds_the_window_once_per_request():
    got = front_s(np.array([0, 1000]), 5e-4, 1e-6, 2e-3)
    np.testing.assert_allclose(got, [5e-4 + 2e-3, 5e-4 + 2e-3 + 1e-3])
    np.testing.assert_allclose(front_s(np.array([10]), 5e-4, 1e-6), [5e-4 + 1e-5])  # no window by default


def _lone(**host: float) -> dict:
    """One 512-token request on an idle Mixtral TP8 node, shipped vLLM profile (with ``host`` overrides)."""
    sc = copy.deepcopy(SERVE)
    sc["workload"] = {"arrival": "poisson", "rate": 1, "requests": 1, "input": 512, "output": 8}
    sc["engine"] = {"kind": "vllm", **({"host": host} if host else {})}
    return sc


@cache
def _lone_des() -> ServeResult:
    return run(_lone(), "des")


def test_a_lone_requests_ttft_is_the_sum_of_its_named_parts():
    res = _lone_des()
    h = engine_profile(EngineSpec(kind="vllm")).host
    q, steps = res.requests.iloc[0], res.sim.steps.sort_values("start_s")
    inp = int(q["input_tokens"])
    api, window, tokenise = h["api_per_request_s"], h["tokenize_wait_s"], h["tokenize_per_token_s"] * inp
    # 1. the API server, the tokeniser's window and the tokenisation come before the scheduler sees the request
    assert q["engine_arrival_s"] - q["arrival_s"] == pytest.approx(api + window + tokenise, abs=1e-12)
    # 2. an idle engine admits it at once (no step to wait behind) ...
    assert q["scheduled_s"] == pytest.approx(q["engine_arrival_s"], abs=1e-12)
    # 3. ... and its first token is the end of the one step that prefills the whole prompt
    first = steps.iloc[0]
    assert first["start_s"] == pytest.approx(q["scheduled_s"], abs=1e-9)
    prefill = float(first["duration_s"])
    assert q["first_token_s"] == pytest.approx(q["scheduled_s"] + prefill, abs=1e-9)
    # 4. the API server handles that step's outputs (one running request) and detokenises the token
    back = h["stream_per_seq_s"] * 1 + h["detokenize_per_token_s"]
    assert q["ttft_s"] == pytest.approx(api + window + tokenise + prefill + back, rel=1e-9)
    assert window / q["ttft_s"] > 0.02  # the window is a visible share of an idle engine's TTFT


def test_the_window_moves_ttft_and_e2e_not_itl():
    """Both engines: the window is paid once per request, before the scheduler; the decode pace is untouched."""
    for engine in ("analytical", "des"):
        on = run(_lone(), engine).summary
        off = run(_lone(tokenize_wait_s=0.0), engine).summary
        assert on["ttft_mean_s"] - off["ttft_mean_s"] == pytest.approx(2e-3, rel=1e-6), engine
        assert on["e2e_mean_s"] - off["e2e_mean_s"] == pytest.approx(2e-3, rel=1e-6), engine
        assert on["tpot_mean_s"] == pytest.approx(off["tpot_mean_s"], rel=1e-9), engine


def test_on_a_busy_engine_the_first_token_waits_two_steps_and_the_batch(tmp_path):
    """A request reaching a busy vLLM scheduler during step k is prefilled in step k+2 (async scheduling decided
    k+1 already); its first token then waits for the API server to handle that step's outputs of both running
    requests, and for its detokenisation. TTFT = front + rest of step k + step k+1 + step k+2 + output path."""
    (tmp_path / "t.csv").write_text("arrival_s,input_tokens,output_tokens\n0,16,400\n0.1,16,4\n")
    sc = {
        "model": "llama-3.1-8b",
        "gpu": "H100-SXM",
        "layout": {"tp": 1},
        "replicas": 1,
        "engine": {"kind": "vllm"},
        "workload": {"trace": "t.csv"},
    }
    res = run(sc, "des", base_dir=tmp_path)
    h = engine_profile(EngineSpec(kind="vllm")).host
    q = res.requests.set_index("request_id").loc[1]
    steps = res.steps.sort_values("start_s").reset_index(drop=True)
    ends = (steps["start_s"] + steps["duration_s"]).to_numpy()
    front = h["api_per_request_s"] + h["tokenize_wait_s"] + h["tokenize_per_token_s"] * 16
    assert q["engine_arrival_s"] - q["arrival_s"] == pytest.approx(front, abs=1e-12)
    k = int(np.searchsorted(ends, q["engine_arrival_s"]))  # the step running when the scheduler sees it
    rest_of_k = ends[k] - q["engine_arrival_s"]
    admission = rest_of_k + steps["duration_s"][k + 1]
    prefill = steps["duration_s"][k + 2]
    assert q["first_token_s"] == pytest.approx(q["engine_arrival_s"] + admission + prefill, abs=1e-9)
    back = h["stream_per_seq_s"] * 2 + h["detokenize_per_token_s"]  # two requests run in step k+2
    assert q["ttft_s"] == pytest.approx(front + admission + prefill + back, rel=1e-9)
    assert admission > steps["duration_s"][k + 1]  # more than one whole step between arrival and prefill
