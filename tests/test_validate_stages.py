"""``moesim validate`` stage by stage: the per-stage file (`read_per_stage`), the rows of a staged run
(`stage_rows`: measured and predicted means per load stage, the requests decoding at once by Little's law), the
per-GPU summary (`stage_summary`: ITL error at the first and last stage, the ITL's rise per request decoding) and
the CLI's ``stages.csv``.

The per-stage files written here are TEST INPUT: invented means, never measured on any GPU. The last test reads the
real per-stage files of ``../shared/data/vllm-e2e-dense`` (skipped without them).
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
from moesim.sim.serving.validate import (
    latency_metrics,
    predict,
    read_per_stage,
    read_runs,
    run_requests,
    stage_rows,
    stage_summary,
    validate,
    write_trace_csv,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vllm-e2e-dense"


def _staged_runs(folder: Path, per_stage: bool = True) -> Path:
    """One TEST-INPUT run of Llama-3.1-8B on an H100 in two Poisson stages (2 then 6 req/s, 20 s each), with a
    per-stage file of invented means."""
    row = {
        "experiment_id": "s", "model": "meta-llama/Llama-3.1-8B-Instruct", "gpu": "H100", "tp": 1,
        "max_num_seqs": 64, "max_num_batched_tokens": 2048, "stage_rates_req_per_s": "2;6",
        "stage_durations_s": "20;20", "input_len_mean_tokens": 400, "output_len_mean_tokens": 60,
        "e2e_mean_ms": 700.0, "ttft_mean_ms": 40.0, "tpot_derived_mean_ms": 660.0 / 59,
    }  # fmt: skip
    if per_stage:
        pd.DataFrame(
            {
                "stage_index": [-1, 0, 1],
                "e2e_mean_ms": [700.0, 600.0, 750.0],
                "ttft_mean_ms": [40.0, 35.0, 42.0],
                "tpot_derived_mean_ms": [660.0 / 59, 565.0 / 59, 708.0 / 59],
            }
        ).to_csv(folder / "stages_s.csv", index=False)
        row["per_stage_file"] = "stages_s.csv"
    path = folder / "RUNS.csv"
    pd.DataFrame([row]).to_csv(path, index=False)
    return path


def test_per_stage_file_is_read_and_the_whole_run_row_skipped(tmp_path):
    path = _staged_runs(tmp_path)
    (run,) = read_runs(path)
    assert run.per_stage == tmp_path / "stages_s.csv"
    table = read_per_stage(run.per_stage)
    assert sorted(table) == [0, 1]
    assert table[1] == pytest.approx({"e2e_mean_ms": 750.0, "ttft_mean_ms": 42.0, "itl_mean_ms": 708.0 / 59})


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (lambda d: d.drop(columns=["ttft_mean_ms"]), "no column ttft_mean_ms"),
        (lambda d: d.assign(e2e_mean_ms=[700.0, -1.0, 750.0]), "stage 0 has e2e_mean_ms = -1.0"),
        (lambda d: d.assign(tpot_derived_mean_ms=[1.0, 2.0, float("nan")]), "stage 1 has itl_mean_ms = nan"),
    ],
)
def test_bad_per_stage_file_is_one_error_line(tmp_path, capsys, change, text):
    path = _staged_runs(tmp_path)
    f = tmp_path / "stages_s.csv"
    change(pd.read_csv(f)).to_csv(f, index=False)
    with pytest.raises(MoesimError) as exc:
        read_per_stage(f)
    assert text in exc.value.one_line()
    code = main(["validate", str(path), "--engine", "analytical", "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and text in err
    assert not (tmp_path / "v").exists()  # no half-written output


def test_missing_per_stage_file_names_the_path(tmp_path):
    path = _staged_runs(tmp_path)
    (tmp_path / "stages_s.csv").unlink()
    with pytest.raises(MoesimError, match=r"per_stage_file .*stages_s\.csv does not exist"):
        read_runs(path)


def test_stage_rows_by_hand(tmp_path):
    (run,) = read_runs(_staged_runs(tmp_path))
    req = run_requests(run)
    trace = write_trace_csv(req, tmp_path / "t.csv")
    pred = predict(run, req, trace, "analytical")
    rows = stage_rows(run, req, pred, subsampled=False)
    assert [r["stage"] for r in rows] == [0, 1]
    stage = req["stage"].to_numpy()
    table = read_per_stage(run.per_stage)
    for r in rows:
        idx = stage == r["stage"]
        a = req["arrival_s"].to_numpy()[idx]
        assert r["requests"] == idx.sum()
        assert r["rate_req_s"] == pytest.approx((idx.sum() - 1) / (a.max() - a.min()))
        p = latency_metrics(pred.e2e_ms[idx], pred.ttft_ms[idx], req["output_measured"].to_numpy()[idx])
        m = table[r["stage"]]
        for key in ("e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms"):
            assert r[f"measured_{key}"] == m[key]
            assert r[f"predicted_{key}"] == pytest.approx(p[key])
            assert r[f"error_{key}"] == pytest.approx(p[key] / m[key] - 1)
        assert r["measured_running"] == pytest.approx(r["rate_req_s"] * (m["e2e_mean_ms"] - m["ttft_mean_ms"]) / 1e3)
    # the busier stage decodes more requests at once, measured and predicted
    assert rows[1]["predicted_running"] > 2 * rows[0]["predicted_running"]
    assert rows[1]["measured_running"] > 2 * rows[0]["measured_running"]


def test_stage_rows_without_measurements_or_stages(tmp_path):
    (run,) = read_runs(_staged_runs(tmp_path, per_stage=False))
    req = run_requests(run)
    pred = predict(run, req, write_trace_csv(req, tmp_path / "t.csv"), "analytical")
    rows = stage_rows(run, req, pred, subsampled=False)
    assert len(rows) == 2  # predicted per stage, measured unknown (no per-stage file, no per-request latencies)
    assert all(math.isnan(r["measured_itl_mean_ms"]) and math.isnan(r["error_itl_mean_ms"]) for r in rows)
    assert all(r["predicted_itl_mean_ms"] > 0 for r in rows)
    one = req.assign(stage=0)
    assert stage_rows(run, one, pred, subsampled=False) == []


def test_des_latencies_line_up_with_the_trace(tmp_path):
    (run,) = read_runs(_staged_runs(tmp_path))
    req = run_requests(run)
    trace = write_trace_csv(req, tmp_path / "t.csv")
    des = predict(run, req, trace, "des")
    assert des.e2e_ms is not None and len(des.e2e_ms) == len(req)
    # the per-request means reproduce the whole run's metrics the engine reported
    whole = latency_metrics(des.e2e_ms, des.ttft_ms, req["output_measured"].to_numpy())
    assert whole["e2e_mean_ms"] == pytest.approx(des.metrics["e2e_mean_ms"])
    rows = stage_rows(run, req, des, subsampled=False)
    assert [r["stage"] for r in rows] == [0, 1]


def _row(run: str, gpu: str, stage: int, m_itl: float, p_itl: float, m_run: float, p_run: float) -> dict:
    return {"run_id": run, "gpu": gpu, "tp": 2 if run == "y" else 1, "stage": stage,
            "measured_itl_mean_ms": m_itl, "predicted_itl_mean_ms": p_itl,
            "error_itl_mean_ms": p_itl / m_itl - 1, "measured_running": m_run, "predicted_running": p_run}  # fmt: skip


def test_stage_summary_by_hand():
    rows = pd.DataFrame(
        [
            # run x: measured 10 -> 14 ms over 10 -> 30 decoding (0.2 ms each), predicted 9 -> 11 over 9 -> 25
            _row("x", "A", 0, 10.0, 9.0, 10.0, 9.0),
            _row("x", "A", 1, 14.0, 11.0, 30.0, 25.0),
            # run y: measured 20 -> 22 over 5 -> 15 (0.2), predicted 20 -> 21.5 over 5 -> 15 (0.15)
            _row("y", "A", 0, 20.0, 20.0, 5.0, 5.0),
            _row("y", "A", 1, 22.0, 21.5, 15.0, 15.0),
            # run z on another GPU: the measured ITL falls, so no slope
            _row("z", "B", 0, 8.0, 8.0, 4.0, 4.0),
            _row("z", "B", 1, 7.5, 8.4, 12.0, 12.0),
        ]
    )
    s = stage_summary(rows)
    assert s["A"]["runs"] == 2 and s["A"]["slope_runs"] == 2
    assert s["A"]["itl_error_first_stage"] == pytest.approx(np.median([-0.1, 0.0]))
    assert s["A"]["itl_error_last_stage"] == pytest.approx(np.median([11 / 14 - 1, 21.5 / 22 - 1]))
    assert s["A"]["itl_slope_measured_ms_per_request"] == pytest.approx(0.2)
    assert s["A"]["itl_slope_predicted_over_measured"] == pytest.approx(np.median([(2 / 16) / 0.2, 0.15 / 0.2]))
    assert s["B"]["slope_runs"] == 0 and math.isnan(s["B"]["itl_slope_predicted_over_measured"])
    # per tensor-parallel size: run x alone at TP1, run y alone at TP2
    by = s["A"]["by_tp"]
    assert set(by) == {"1", "2"} and by["1"]["runs"] == by["2"]["runs"] == 1
    assert by["1"]["itl_slope_predicted_over_measured"] == pytest.approx((2 / 16) / 0.2)
    assert by["2"]["itl_slope_predicted_over_measured"] == pytest.approx(0.15 / 0.2)
    assert by["2"]["itl_error_last_stage"] == pytest.approx(21.5 / 22 - 1)
    assert stage_summary(pd.DataFrame()) == {}


def test_cli_writes_stages_csv_and_summary(tmp_path, capsys):
    path = _staged_runs(tmp_path)
    out = tmp_path / "v"
    code = main(["validate", str(path), "--engine", "analytical", "--out", str(out), "--json"])
    cap = capsys.readouterr()
    assert code == 0
    summary = json.loads(cap.out)
    assert summary["stages"]["H100-SXM"]["runs"] == 1
    stages = pd.read_csv(out / "stages.csv")
    assert list(stages["stage"]) == [0, 1] and set(stages["run_id"]) == {"s"}
    code = main(["validate", str(path), "--engine", "analytical", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "H100-SXM, 1 staged runs: mean ITL error" in text and "stages.csv" in text


@pytest.mark.skipif(not (DATA / "experiments.csv").is_file(), reason="../shared/data/vllm-e2e-dense not present")
def test_reference_runs_compared_stage_by_stage(tmp_path):
    ids = ["36-qwen3-14b-tp1-general-lite-1", "59-qwen3-14b-tp1-general-lite-1-1"]
    runs = read_runs(DATA / "experiments.csv", ids)
    res = validate(runs, tmp_path, "analytical", None)
    st = res.stages.set_index(["run_id", "stage"])
    # the measured means are the per-stage file's, stage by stage
    ref = pd.read_parquet(DATA / "per_stage" / f"{ids[0]}.parquet").set_index("stage_index")
    for k in (0, 1):
        assert st.loc[(ids[0], k), "measured_itl_mean_ms"] == pytest.approx(ref.loc[k, "tpot_derived_mean_ms"])
        assert st.loc[(ids[0], k), "measured_e2e_mean_ms"] == pytest.approx(ref.loc[k, "e2e_mean_ms"])
    assert set(res.summary["stages"]) == {"A100-SXM-80GB", "H100-SXM"}
