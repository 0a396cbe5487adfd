"""The client's timeout (``workload.timeout_s``): clients give up, the engine aborts, validate counts failures.

The scenarios here are TEST INPUT: Mixtral-8x7B on one TP2 H100 replica with a running set of 16 sequences, driven
past its capacity so that requests wait longer than the client's timeout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.sim.serving.engine import Simulation
from moesim.sim.serving.serve import load, run
from moesim.sim.serving.validate import predict, read_runs, run_requests, validate, write_trace_csv
from moesim.sim.serving.workload import parse_workload


def _scenario(timeout: float | None = 10.0, rate: float = 8.0, requests: int = 160, **extra) -> dict:
    """One TP2 replica, 16 running sequences, 300-token outputs: about 3.5 req/s of capacity, so 8 req/s overloads
    (without a timeout the last requests wait about 20 s)."""
    workload = {
        "arrival": "poisson",
        "rate": rate,
        "requests": requests,
        "input": {"dist": "fixed", "value": 600},
        "output": {"dist": "fixed", "value": 300},
    }
    if timeout is not None:
        workload["timeout_s"] = timeout
    return {
        "model": "mixtral-8x7b",
        "gpu": "H100-SXM",
        "layout": {"tp": 2},
        "replicas": 1,
        "engine": {"max_batch": 16, "max_tokens": 2048},
        "workload": workload,
        **extra,
    }


def _simulate(scenario: dict) -> tuple[Simulation, pd.DataFrame, dict]:
    sim = Simulation(load(scenario))
    res = sim.run()
    from moesim.sim.serving.serve import des_summary

    return sim, res.requests, des_summary(sim.built, res)


@pytest.mark.parametrize("value", [0, -5, float("nan"), "soon"])
def test_bad_timeout_is_one_error_line(value):
    with pytest.raises(MoesimError) as err:
        parse_workload({"rate": 1.0, "timeout_s": value})
    assert "timeout_s" in err.value.one_line() and "\n" not in err.value.one_line()


def test_overloaded_clients_give_up_and_the_engine_frees_their_cache():
    sim, req, s = _simulate(_scenario())
    failed = req["failed"].to_numpy(bool)
    assert 0 < failed.sum() < len(req)
    assert s["failed"] == failed.sum() and s["completed"] == len(req) - failed.sum()
    # a failed request has no client times; every success reached its client within the timeout
    assert req.loc[failed, ["client_first_s", "client_finish_s", "e2e_s", "ttft_s"]].isna().all().all()
    assert (req.loc[~failed, "e2e_s"] <= 10.0 + 1e-9).all()
    # the engine dropped every aborted request: nothing is left running or waiting, and no KV block is held
    rep = sim.all[0]
    assert not rep.running and not rep.waiting and not rep.aborting and rep.blocks_used == 0
    # an aborted request emitted fewer tokens than it asked for (the engine stopped generating for it)
    gen = sim.req.gen[req.loc[failed, "request_id"].to_numpy()]
    assert (gen < 300).all()
    # the latency percentiles are over successes only
    assert s["e2e_p99_s"] <= 10.0 + 1e-9


def test_past_capacity_whole_stretches_fail():
    """Once the queue holds a request longer than the timeout, every later one it admits has waited too long to
    finish in time: the failures are the later arrivals, not a scatter."""
    _, req, _ = _simulate(_scenario(requests=240))
    req = req.sort_values("arrival_s")
    failed = req["failed"].to_numpy(bool)
    first = int(np.argmax(failed))
    assert failed[first:].mean() > 0.8 and not failed[: first // 2].any()


def test_a_short_timeout_drops_requests_that_never_left_the_queue():
    """One running slot serving about 1.3 req/s of 60-token outputs against 8 req/s: most clients give up while their
    request still waits, and it never reaches the running set."""
    scenario = _scenario(timeout=3.0, engine={"max_batch": 1, "max_tokens": 2048})
    scenario["workload"]["output"] = {"dist": "fixed", "value": 60}
    _, req, s = _simulate(scenario)
    never = req["failed"] & req["scheduled_s"].isna()
    assert never.any() and s["failed"] > 0


def test_no_timeout_and_an_unreached_timeout_change_nothing():
    base = run(_scenario(timeout=None, requests=40), "des")
    far = run(_scenario(timeout=1e6, requests=40), "des")
    assert not base.requests["failed"].any() and base.summary["failed"] == 0
    cols = ["first_token_s", "finish_s", "client_first_s", "client_finish_s"]
    np.testing.assert_array_equal(base.requests[cols].to_numpy(), far.requests[cols].to_numpy())
    assert len(base.steps) == len(far.steps)


def test_closed_loop_clients_move_on_after_their_timeout():
    scenario = _scenario(timeout=6.0)
    scenario["workload"] = {
        "arrival": "closed",
        "concurrency": 64,
        "requests": 192,
        "input": {"dist": "fixed", "value": 600},
        "output": {"dist": "fixed", "value": 300},
        "timeout_s": 6.0,
    }
    sim, req, s = _simulate(scenario)
    assert s["failed"] > 0 and s["completed"] + s["failed"] == 192
    assert (req.loc[~req["failed"], "e2e_s"] <= 6.0 + 1e-9).all()
    assert not sim.all[0].running and sim.all[0].blocks_used == 0


@pytest.mark.parametrize("kind", ["disaggregated", "pipeline"])
def test_aborts_in_disaggregated_and_pipelined_replicas(kind):
    if kind == "disaggregated":
        extra = {
            "cluster": "dgx-h100",
            "disaggregation": {
                "prefill": {"replicas": 1, "layout": {"tp": 2}},
                "decode": {"replicas": 1, "layout": {"tp": 2}, "engine": {"max_batch": 16}},
            },
        }
        scenario = {k: v for k, v in _scenario().items() if k not in ("gpu", "layout", "replicas")}
        scenario |= extra
    else:
        scenario = _scenario(layout={"tp": 1, "pp": 2})
    sim, req, s = _simulate(scenario)
    assert s["failed"] > 0 and s["completed"] + s["failed"] == len(req)
    assert all(not r.running and not r.waiting and r.blocks_used == 0 for r in sim.all)


def test_the_analytical_engine_fails_requests_past_the_timeout_like_the_des():
    """The slot recursion with the clients' deadlines (`fifo_aborts`): nothing fails at a sustainable rate; past
    capacity about as many fail as in the discrete-event engine, and the successes' latencies fit the timeout."""
    assert run(_scenario(rate=1.0, requests=40), "analytical").summary["failed"] == 0
    assert run(_scenario(timeout=None, rate=1.0, requests=40), "analytical").summary["failed"] == 0
    ana = run(_scenario(requests=240), "analytical").summary
    des = run(_scenario(requests=240), "des").summary
    assert ana["failed"] > 0 and ana["completed"] + ana["failed"] == 240
    assert ana["failed"] == pytest.approx(des["failed"], rel=0.35)
    assert ana["e2e_p99_s"] <= 10.0 + 1e-9
    closed = _scenario()
    closed["workload"] = {"arrival": "closed", "concurrency": 8, "requests": 40, "timeout_s": 10.0}
    assert math.isnan(run(closed, "analytical").summary["failed"])  # not modelled for a closed loop


def test_fifo_aborts_against_a_hand_worked_queue():
    """One slot, holds of 4 s, a 5 s timeout: request 0 runs 0-4; request 1 (sent at 1) starts at 4 and would end at
    8, past its deadline 6: it fails and frees the slot at 6; request 2 (sent at 2, deadline 7) starts at 6, ends at
    10, fails at 7; request 3 (sent at 9) finds the slot free at 7 and succeeds."""
    from moesim.sim.serving.analytical import fifo_aborts, fifo_waits

    arr, hold = np.array([0.0, 1.0, 2.0, 9.0]), np.full(4, 4.0)
    waits, failed = fifo_aborts(arr, hold, 1, 5.0)
    np.testing.assert_allclose(waits, [0.0, 3.0, 4.0, 0.0])
    assert failed.tolist() == [False, True, True, False]
    # a timeout nobody reaches: the plain recursion
    waits, failed = fifo_aborts(arr, hold, 1, 1e9)
    np.testing.assert_allclose(waits, fifo_waits(arr, hold, 1)) and not failed.any()


# ---------------------------------------------------------------- validate


def _runs(tmp_path: Path, generator: str | None, timeout: float | None = None) -> Path:
    """A TEST-INPUT run: 120 requests at 10 req/s to a 16-sequence replica (about 3.5 req/s of capacity), the last 40
    recorded as failed (no lengths, as inference-perf records them)."""
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame(
        {
            "request_index": np.arange(n),
            "arrival_time_ms": np.cumsum(rng.exponential(100.0, n)),
            "input_tokens": 600,
            "output_tokens": 300,
            "has_error": False,
            "e2e_ms": 15000.0,
            "ttft_ms": 5000.0,
        }
    )
    df.loc[80:, ["input_tokens", "output_tokens", "has_error", "e2e_ms", "ttft_ms"]] = [0, 0, True, 20000.0, np.nan]
    df.to_csv(tmp_path / "r.csv", index=False)
    row = {
        "experiment_id": "over", "model": "mistralai/Mixtral-8x7B-v0.1", "gpu": "H100", "tp": 2,
        "max_num_seqs": 16, "max_num_batched_tokens": 2048, "per_request_file": "r.csv",
        "e2e_mean_ms": 15000.0, "ttft_mean_ms": 5000.0, "n_requests_failed": 40,
    }  # fmt: skip
    if generator is not None:
        row["load_generator"] = generator
    if timeout is not None:
        row["client_timeout_s"] = timeout
    path = tmp_path / "RUNS.csv"
    pd.DataFrame([row]).to_csv(path, index=False)
    return path


def test_validate_replays_failed_requests_with_the_clients_timeout(tmp_path):
    runs = read_runs(_runs(tmp_path, None, timeout=10.0))
    assert runs[0].client_timeout_s == 10.0
    req = run_requests(runs[0])
    assert len(req) == 120 and req["measured_failed"].sum() == 40
    # a failed row's lengths are the successes' (it recorded none)
    assert (req["input_tokens"] == 600).all() and (req["output_tokens"] == 300).all()
    v = validate(runs, tmp_path / "w", engine="des")
    row = v.rows.iloc[0]
    assert row["status"] == "overloaded" and row["measured_failed"] == 40
    assert row["predicted_failed"] > 0 and bool(row["predicted_overloaded"])
    assert row["predicted_first_failed_s"] >= 0 and row["measured_first_failed_s"] > 0
    assert "timed out at the client (10 s)" in row["note"]
    assert v.summary["overload"] == {"measured": 1, "predicted": 1, "both": 1}


def test_inference_perf_runs_default_to_aiohttps_timeout(tmp_path):
    assert read_runs(_runs(tmp_path, "inference-perf"))[0].client_timeout_s == 300.0
    assert read_runs(_runs(tmp_path, "vllm bench"))[0].client_timeout_s is None


def test_without_a_known_timeout_failed_requests_are_left_out(tmp_path):
    runs = read_runs(_runs(tmp_path, None))
    req = run_requests(runs[0])
    assert len(req) == 80 and not req["measured_failed"].any()
    pred = predict(runs[0], req, write_trace_csv(req, tmp_path / "t.csv"), "des")
    assert pred.failed == 0


def test_a_bad_client_timeout_is_one_error_line(tmp_path):
    path = _runs(tmp_path, None, timeout=-1.0)
    with pytest.raises(MoesimError, match="client_timeout_s"):
        read_runs(path)


def test_validate_cli_shows_failed_requests(tmp_path, capsys):
    path = _runs(tmp_path, "inference-perf", timeout=10.0)
    code = main(["validate", str(path), "--engine", "des", "--out", str(tmp_path / "v")])
    text = capsys.readouterr().out
    assert code == 0 and "overloaded (failed 40 / " in " ".join(text.split())
    code = main(["validate", str(path), "--engine", "des", "--out", str(tmp_path / "v2"), "--json"])
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert code == 0 and row["measured_failed"] == 40 and row["predicted_failed"] > 0
