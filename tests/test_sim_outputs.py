"""Summaries, plots and the Chrome trace of a simulated serving run, on small hand-made results."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.model.errors import MoesimError
from moesim.sim import common
from moesim.sim.serving.chrome_trace import write_chrome_trace
from moesim.sim.serving.metrics import SUMMARY_KEYS, latency_summary, littles_law, percentiles, time_series
from moesim.sim.serving.plots import write_plots

NAN = math.nan


def make_requests() -> pd.DataFrame:
    """Five requests: four finished, the last one scheduled but never finished.

    id  arrival  in   out  scheduled  first  finish   ttft  tpot  e2e  queue
    0   0.0      100  10   0.0        0.5    1.4      0.5   0.1   1.4  0.0
    1   1.0      200  5    1.5        2.0    2.4      1.0   0.1   1.4  0.5
    2   2.0      50   1    2.0        2.25   2.25     0.25  NaN   0.25 0.0
    3   3.0      100  4    3.0        3.5    5.0      0.5   0.5   2.0  0.0
    4   4.0      100  8    4.5        NaN    NaN
    """
    df = pd.DataFrame(
        {
            "request_id": [0, 1, 2, 3, 4],
            "replica": [0, 0, 1, 0, 1],
            "arrival_s": [0.0, 1.0, 2.0, 3.0, 4.0],
            "input_tokens": [100, 200, 50, 100, 100],
            "output_tokens": [10, 5, 1, 4, 8],
            "scheduled_s": [0.0, 1.5, 2.0, 3.0, 4.5],
            "first_token_s": [0.5, 2.0, 2.25, 3.5, NAN],
            "finish_s": [1.4, 2.4, 2.25, 5.0, NAN],
            "preemptions": [0, 1, 0, 0, 2],
        }
    )
    out = df["output_tokens"].astype(float)
    df["queue_s"] = df["scheduled_s"] - df["arrival_s"]
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["tpot_s"] = np.where(out > 1, (df["finish_s"] - df["first_token_s"]) / (out - 1), NAN)
    df["e2e_s"] = df["finish_s"] - df["arrival_s"]
    return df


def make_steps() -> pd.DataFrame:
    """Four steps on two replicas; compute + comm + straggler + fetch == duration (binary-exact values)."""
    rows = [
        # replica, pool, start, dur, phase, seqs, decode_seqs, kv, waiting, compute, comm, straggler, fetch, drop, pairs
        (0, "mixed", 0.0, 1.0, "prefill", 2, 0, 0.5, 1, 0.5, 0.25, 0.125, 0.125, 1, 10),
        (0, "mixed", 1.0, 2.0, "mixed", 4, 3, 0.25, 0, 1.0, 0.5, 0.5, 0.0, 0, 30),
        (1, "decode", 2.0, 1.0, "decode", 1, 1, 0.75, 2, 0.5, 0.25, 0.125, 0.125, 0, 0),
        (1, "decode", 4.5, 1.0, "decode", 1, 1, 0.75, 0, 0.5, 0.25, 0.125, 0.125, 3, 20),
    ]
    cols = ["replica", "pool", "start_s", "duration_s", "phase", "seqs", "decode_seqs", "kv_used_frac", "waiting"]
    cols += ["compute_s", "comm_s", "straggler_s", "fetch_s", "dropped_pairs", "pairs"]
    df = pd.DataFrame(rows, columns=cols)
    df["prefill_tokens"] = np.where(df["phase"] == "decode", 0, 64)
    df["tokens"] = df["prefill_tokens"] + df["decode_seqs"]
    return df


ITL = np.array([0.1, 0.1, 0.1, 0.2, 0.4])


def summary(**kw) -> dict:
    kw.setdefault("slo_ttft_s", None)
    kw.setdefault("slo_tpot_s", None)
    return latency_summary(make_requests(), ITL, make_steps(), **kw)


# --- metrics -------------------------------------------------------------------------------------------------------


def test_percentiles_exact_and_nan():
    p = percentiles([4.0, 1.0, NAN, 3.0, 2.0])
    assert p == pytest.approx({"mean": 2.5, "p50": 2.5, "p90": 3.7, "p99": 3.97})
    assert all(math.isnan(v) for v in percentiles([NAN, NAN]).values())
    assert all(math.isnan(v) for v in percentiles([]).values())
    # an overloaded run's infinite latencies stay infinite (inf - inf is no gap, not NaN)
    inf = percentiles([1.0, math.inf, math.inf, math.inf])
    assert inf["p50"] == inf["p90"] == inf["p99"] == math.inf
    assert np.array_equal(
        np.percentile([1.0, 2.0, 3.0, 4.0], [50, 90, 99]), list(percentiles([1, 2, 3, 4]).values())[1:]
    )


def test_summary_keys_documented_and_json_ready():
    s = summary()
    assert set(s) == set(SUMMARY_KEYS)
    assert all(type(v) in (int, float) for v in s.values())
    assert isinstance(s["requests"], int) and isinstance(s["completed"], int) and isinstance(s["preemptions"], int)
    json.dumps(s)


def test_summary_counts_latencies_and_throughput():
    s = summary()
    assert s["requests"] == 5 and s["completed"] == 4  # the unfinished request counts only in `requests`
    assert s["preemptions"] == 3
    # TTFT over completed requests [0.5, 1.0, 0.25, 0.5].
    assert s["ttft_mean_s"] == pytest.approx(0.5625)
    assert s["ttft_p50_s"] == pytest.approx(0.5)
    assert s["ttft_p90_s"] == pytest.approx(0.85)
    assert s["ttft_p99_s"] == pytest.approx(0.985)
    assert s["tpot_p50_s"] == pytest.approx(0.1)  # [0.1, 0.1, 0.5]: the one-token request has no TPOT
    assert s["e2e_mean_s"] == pytest.approx((1.4 + 1.4 + 0.25 + 2.0) / 4)
    assert s["queue_mean_s"] == pytest.approx(0.125)
    assert s["itl_mean_s"] == pytest.approx(0.18) and s["itl_p50_s"] == pytest.approx(0.1)
    # Makespan 5 s (first arrival 0, last finish 5).
    assert s["makespan_s"] == pytest.approx(5.0)
    assert s["throughput_req_s"] == pytest.approx(4 / 5)
    assert s["throughput_tok_s"] == pytest.approx(20 / 5)
    assert s["input_tok_s"] == pytest.approx(450 / 5)
    assert s["total_tok_s"] == pytest.approx(470 / 5)
    # The last step ends at 5.5 s, after the last finish.
    assert s["simulated_s"] == pytest.approx(5.5)


def test_mean_batch_of_disaggregated_pools_is_the_decode_pools():
    """With a prefill pool and a decode pool (no mixed one), ``mean_batch`` is the decode pool's batch, as the
    analytical engine reports it: the prefill pool's steps of a few prompts are not averaged in (over both pools
    the same steps give (2 + 8 + 1 + 1) / 5 = 2.4)."""
    steps = make_steps().assign(pool=["prefill", "prefill", "decode", "decode"])
    s = latency_summary(make_requests(), ITL, steps, slo_ttft_s=None, slo_tpot_s=None)
    assert s["mean_batch"] == pytest.approx(1.0)
    assert s["mean_kv_used"] == pytest.approx((0.5 + 0.25 * 2 + 0.75 + 0.75) / 5)  # still every step's


def test_summary_step_statistics():
    s = summary()
    assert s["mean_batch"] == pytest.approx((2 * 1 + 4 * 2 + 1 + 1) / 5)
    assert s["mean_kv_used"] == pytest.approx((0.5 + 0.25 * 2 + 0.75 + 0.75) / 5)
    assert s["max_kv_used"] == pytest.approx(0.75)
    assert s["dropped_frac"] == pytest.approx(4 / 60)
    assert s["straggler_frac"] == pytest.approx((0.125 + 0.5 + 0.125 + 0.125) / 5)
    assert s["fetch_frac"] == pytest.approx(0.375 / 5)
    steps = make_steps().assign(pairs=0, dropped_pairs=0)
    assert latency_summary(make_requests(), ITL, steps, slo_ttft_s=None, slo_tpot_s=None)["dropped_frac"] == 0.0


def test_goodput_counts_only_requests_meeting_both_slos():
    # TTFT ≤ 0.6 and TPOT ≤ 0.2: request 0 (0.5, 0.1) and request 2 (0.25, no TPOT) pass; 1 fails TTFT, 3 TPOT.
    s = summary(slo_ttft_s=0.6, slo_tpot_s=0.2)
    assert s["goodput_req_s"] == pytest.approx(2 / 5)
    assert s["slo_attainment"] == pytest.approx(2 / 5)  # over all five requests: the unfinished one fails


def test_unset_slo_is_always_met():
    s = summary(slo_tpot_s=0.2)  # no TTFT SLO: requests 0, 1, 2 pass
    assert s["goodput_req_s"] == pytest.approx(3 / 5)
    assert s["slo_attainment"] == pytest.approx(3 / 5)
    s = summary()  # no SLO at all: every completed request is good
    assert s["goodput_req_s"] == pytest.approx(s["throughput_req_s"])
    assert s["slo_attainment"] == pytest.approx(4 / 5)


def test_warmup_drops_latencies_not_counts():
    s = summary(warmup_frac=0.2)  # floor(0.2 x 5) = 1: request 0 (earliest arrival) leaves the percentiles
    assert s["ttft_mean_s"] == pytest.approx((1.0 + 0.25 + 0.5) / 3)
    assert s["completed"] == 4 and s["throughput_req_s"] == pytest.approx(0.8)
    with pytest.raises(MoesimError):
        summary(warmup_frac=1.0)


def test_derived_columns_filled_when_missing():
    raw = make_requests().drop(columns=["queue_s", "ttft_s", "tpot_s", "e2e_s"])
    s = latency_summary(raw, ITL, make_steps(), slo_ttft_s=0.6, slo_tpot_s=0.2)
    assert s == pytest.approx(summary(slo_ttft_s=0.6, slo_tpot_s=0.2), nan_ok=True)


def test_missing_column_is_a_moesim_error():
    with pytest.raises(MoesimError, match="finish_s"):
        latency_summary(make_requests().drop(columns="finish_s"), ITL, make_steps(), slo_ttft_s=None, slo_tpot_s=None)


def test_littles_law_on_a_deterministic_single_server_queue():
    # Arrivals every 1 s, service 1.5 s, one FCFS server: finishes at 1.5, 3, 4.5, 6; sojourns 1.5, 2, 2.5, 3.
    # N(t): 1 on [0,1), 2 on [1,1.5), 1 on [1.5,2), 2 on [2,4.5), 1 on [4.5,6): area 9 over 6 s, so L = 1.5.
    req = pd.DataFrame({"arrival_s": [0.0, 1.0, 2.0, 3.0], "finish_s": [1.5, 3.0, 4.5, 6.0]})
    ll = littles_law(req)
    assert ll["L"] == pytest.approx(1.5)
    assert ll["lambda"] == pytest.approx(4 / 6)
    assert ll["W"] == pytest.approx(2.25)
    assert ll["rel_error"] == pytest.approx(0.0, abs=1e-12)
    # A request still queued at the end (arrives at 5, never finishes) adds 1 s to the area; one arriving after
    # the window closes is ignored. L = 10/6, λ = 5/6, W stays 2.25: λW = 1.875.
    more = pd.concat([req, pd.DataFrame({"arrival_s": [5.0, 7.0], "finish_s": [NAN, NAN]})], ignore_index=True)
    ll = littles_law(more)
    assert ll["L"] == pytest.approx(10 / 6)
    assert ll["lambda"] == pytest.approx(5 / 6)
    assert ll["rel_error"] == pytest.approx(abs(10 / 6 - 1.875) / (10 / 6))
    assert all(math.isnan(v) for v in littles_law(req.assign(finish_s=NAN)).values())


def test_time_series_bins():
    steps, req = make_steps(), make_requests()
    ts = time_series(steps, req, bin_s=1.0)
    assert list(ts.columns) == ["t_s", "output_tok_s", "batch", "kv_used", "waiting"]
    assert ts.attrs["bin_s"] == 1.0
    assert ts["t_s"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # run spans 0 .. 5.5 s
    # Every decode token (one per decode_seqs per step) plus every first token lands in exactly one bin.
    assert (ts["output_tok_s"] * 1.0).sum() == pytest.approx(steps["decode_seqs"].sum() + 4)
    # Bin [2, 3): replica 0's mixed step (4 seqs) and replica 1's decode step (1 seq) both run the whole bin.
    row = ts.iloc[2]
    assert row["batch"] == pytest.approx(2.5)
    assert row["kv_used"] == pytest.approx((0.25 + 0.75) / 2)
    assert row["waiting"] == pytest.approx(1.0)
    assert row["output_tok_s"] == pytest.approx(2.0)  # first tokens at 2.0 and 2.25; both steps end in bin 3
    assert ts.iloc[3]["output_tok_s"] == pytest.approx(3 + 1 + 1)  # decode_seqs of the two steps + first token 3.5
    assert math.isnan(ts.iloc[3]["batch"])  # no step runs in [3, 4)
    assert ts.iloc[4]["batch"] == pytest.approx(1.0)  # replica 1's step covers half of [4, 5)
    # Default: ~100 bins over the run.
    assert len(time_series(steps, req)) == 100
    with pytest.raises(MoesimError):
        time_series(steps, req, bin_s=0.0)


# --- plots ---------------------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_write_plots_makes_pngs(tmp_path: Path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    itl = rng.lognormal(np.log(0.02), 1.5, size=5000)  # many samples over > 2 decades: log axis, quantile CDF
    paths = write_plots(make_requests(), itl, make_steps(), tmp_path / "plots")
    assert [p.name for p in paths] == ["latency_cdf.png", "timeline.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE
        assert len(data) > 20_000


def test_plots_without_matplotlib_raise_moesim_error(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MoesimError, match="matplotlib") as err:
        write_plots(make_requests(), ITL, make_steps(), tmp_path)
    assert "moesim[report]" in err.value.hint
    assert not list(tmp_path.iterdir())


# --- Chrome trace --------------------------------------------------------------------------------------------------


def make_kv() -> pd.DataFrame:
    """Three prefill → decode transfers into replica 1; the first two overlap."""
    return pd.DataFrame(
        {
            "request_id": [1, 2, 3],
            "src_replica": [0, 0, 0],
            "dst_replica": [1, 1, 1],
            "start_s": [1.5, 1.75, 3.5],
            "duration_s": [0.5, 0.5, 0.25],
            "bytes": [1e9, 2e9, 5e8],
        }
    )


def load(path: Path) -> list[dict]:
    doc = json.loads(path.read_text())
    assert doc["displayTimeUnit"] == "ms"
    return doc["traceEvents"]


def test_chrome_trace_events(tmp_path: Path):
    path = tmp_path / "trace.json"
    info = write_chrome_trace(make_steps(), path, gpus_per_replica={0: 2, 1: 4}, kv_transfers=make_kv())
    events = load(path)
    # Metadata: per replica a name and a sort index, per GPU a name and a sort index, 2 KV lanes on replica 1.
    meta = [e for e in events if e["ph"] == "M"]
    assert len(meta) == (2 + 2 * 2) + (2 + 4 * 2 + 2 * 2)
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    procs = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert procs == {1: "replica 0 (mixed pool)", 2: "replica 1 (decode pool)"}
    assert names[(1, 1)] == "GPU 0" and names[(2, 4)] == "GPU 3"
    assert names[(2, 5)] == "KV transfer" and names[(2, 6)] == "KV transfer 2"
    # Slices: a phase slice per GPU per step; GPU 0 has compute/all-to-all/fetch, others add a straggler wait;
    # zero-length pieces (replica 0's second step has no fetch) are left out.
    x = [e for e in events if e["ph"] == "X"]
    step_slices = (4 + 5) + (3 + 4) + 2 * (4 + 5 * 3)
    assert len(x) == step_slices + 3
    assert {k: info[k] for k in ("events", "steps_written", "steps_total", "truncated", "kv_transfers_written")} == {
        "events": len(events),
        "steps_written": 4,
        "steps_total": 4,
        "truncated": False,
        "kv_transfers_written": 3,
    }

    # Microseconds: replica 0's first step on GPU 1 (pid 1, tid 2).
    def lane(tid: int) -> list[tuple]:  # parents before children
        rows = [(e["ts"], e["dur"], e["name"]) for e in x if e["pid"] == 1 and e["tid"] == tid and e["ts"] < 1e6]
        return sorted(rows, key=lambda r: (r[0], -r[1]))

    assert lane(2) == [
        (0.0, 1e6, "prefill"),
        (0.0, 500_000.0, "compute"),
        (500_000.0, 125_000.0, "straggler wait"),
        (625_000.0, 250_000.0, "all-to-all"),
        (875_000.0, 125_000.0, "expert fetch"),
    ]
    assert lane(1)[1] == (0.0, 625_000.0, "compute")  # the busiest GPU computes through the others' wait
    assert not any(e["name"] == "straggler wait" and e["tid"] == 1 for e in x)
    phase = next(e for e in x if e["pid"] == 1 and e["tid"] == 1 and e["name"] == "mixed")
    assert phase["ts"] == 1e6 and phase["dur"] == 2e6
    assert phase["args"]["seqs"] == 4 and phase["args"]["kv_used_frac"] == 0.25 and phase["args"]["tokens"] == 67
    # Sub-slices nest inside their phase slice.
    for e in x:
        if e["cat"] in ("compute", "comm", "straggler", "fetch"):
            parent = [p for p in x if p["cat"] == "step" and (p["pid"], p["tid"]) == (e["pid"], e["tid"])]
            assert any(p["ts"] <= e["ts"] and e["ts"] + e["dur"] <= p["ts"] + p["dur"] for p in parent)
    kv = [e for e in x if e["name"] == "KV transfer"]
    assert sorted(e["tid"] for e in kv) == [5, 5, 6] and kv[0]["args"]["request_id"] == 1


def test_chrome_trace_truncates(tmp_path: Path):
    path = tmp_path / "trace.json"
    info = write_chrome_trace(make_steps(), path, gpus_per_replica=2, kv_transfers=make_kv(), max_steps=2)
    assert info["steps_written"] == 2 and info["steps_total"] == 4 and info["truncated"] is True
    events = load(path)
    x = [e for e in events if e["ph"] == "X"]
    # Replica 0's two steps (the earliest) on 2 GPUs; KV transfers after 3.0 s (the last written step's end) dropped.
    assert len([e for e in x if e["cat"] != "kv"]) == (4 + 5) + (3 + 4)
    assert info["kv_transfers_written"] == 2
    assert info["events"] == len(events)
    assert any(e["ph"] == "M" and e["name"] == "process_name" for e in events)
    assert json.loads(path.read_text())["otherData"]["truncated"] is True


def test_chrome_trace_write_is_atomic(tmp_path: Path, monkeypatch):
    path = tmp_path / "trace.json"
    previous = '{"traceEvents":[],"displayTimeUnit":"ms","otherData":{"generator":"moesim"}}'
    path.write_text(previous)  # an earlier moesim trace: replaced, but only whole

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(common.os, "chmod", boom)  # fails after the temp file is written, before the replace
    with pytest.raises(RuntimeError):
        write_chrome_trace(make_steps(), path, gpus_per_replica=1)
    assert path.read_text() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]


def test_chrome_trace_needs_every_replicas_gpus(tmp_path: Path):
    with pytest.raises(MoesimError, match="replica"):
        write_chrome_trace(make_steps(), tmp_path / "t.json", gpus_per_replica={0: 2})
