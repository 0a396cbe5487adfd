"""``moesim validate`` and ``moesim fit-engine``: the RUNS.csv format, predicted vs measured, the fit.

The RUNS.csv files written here are TEST INPUT: made-up "measurements" that are self-consistent (TTFT below E2E,
ITL = (E2E - TTFT) / (output - 1)) but were never measured on any GPU. The recovery test's "measurements" are the
simulator's own predictions with known host costs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.sim.serving.fit_engine import Problem, fit_engine, is_fit_profile, profile_yaml
from moesim.sim.serving.validate import latency_metrics, predict, read_runs, run_requests, validate, write_trace_csv

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vllm-e2e-dense"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _requests(path: Path, n: int, rate: float, inp: int, out: int, seed: int) -> None:
    """A per-request file of TEST INPUT: Poisson arrivals, fixed lengths, one failed request at the end."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n)) * 1e3
    df = pd.DataFrame(
        {
            "arrival_time_ms": t,
            "input_tokens": inp,
            "output_tokens": out,
            "has_error": False,
            "e2e_ms": 900.0,
            "ttft_ms": 40.0,
        }
    )
    df.loc[n - 1, ["input_tokens", "output_tokens", "has_error", "e2e_ms", "ttft_ms"]] = [0, 0, True, 3e5, np.nan]
    df.to_csv(path, index=False)


def _runs_csv(folder: Path) -> Path:
    """Three TEST-INPUT runs: two replayed from per-request files, one staged; latencies invented."""
    _requests(folder / "a.csv", 24, 2.0, 300, 40, 0)
    _requests(folder / "b.csv", 24, 3.0, 500, 30, 1)
    rows = [
        # id, model, gpu, tp, seqs, tokens, file, rates, durations, in, out, e2e, ttft, failed
        ("a", "meta-llama/Llama-3.1-8B-Instruct", "H100", 1, 64, 2048, "a.csv", None, None, None, None, 900, 40, 1),
        ("b", "Qwen/Qwen2.5-7B-Instruct", "H100", 1, 64, 2048, "b.csv", None, None, None, None, 700, 45, 0),
        ("c", "meta-llama/Llama-3.1-8B-Instruct", "A100-80GB", 2, 64, 2048, None, "2;4", "5;5", 400, 20, 380, 50, 0),
    ]
    cols = [
        "experiment_id", "model", "gpu", "tp", "max_num_seqs", "max_num_batched_tokens", "per_request_file",
        "stage_rates_req_per_s", "stage_durations_s", "input_len_mean_tokens", "output_len_mean_tokens",
        "e2e_mean_ms", "ttft_mean_ms", "n_requests_failed",
    ]  # fmt: skip
    df = pd.DataFrame(rows, columns=cols)
    out_mean = [40, 30, 20]
    df["tpot_derived_mean_ms"] = [
        (e - t) / (o - 1) for e, t, o in zip(df.e2e_mean_ms, df.ttft_mean_ms, out_mean, strict=True)
    ]
    df.loc[0, "n_requests_failed"] = 0  # run a: the one failed request is in the file, not an overload
    path = folder / "RUNS.csv"
    df.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- the format


def test_runs_csv_resolves_models_gpus_and_workloads(tmp_path):
    runs = read_runs(_runs_csv(tmp_path))
    assert [r.model for r in runs] == ["llama-3.1-8b", "qwen2.5-7b", "llama-3.1-8b"]
    assert [r.gpu for r in runs] == ["H100-SXM", "H100-SXM", "A100-SXM-80GB"]
    assert runs[2].stages == ((2.0, 5.0), (4.0, 5.0)) and runs[2].tp == 2
    assert runs[0].engine["max_batch"] == 64 and runs[0].engine["max_tokens"] == 2048
    assert math.isclose(runs[1].measured["itl_mean_ms"], (700 - 45) / 29)
    req = run_requests(runs[0])
    assert len(req) == 23  # the failed request is left out
    assert req["arrival_s"].iloc[0] == 0 and req["arrival_s"].is_monotonic_increasing
    assert len(run_requests(runs[0], max_requests=5)) == 5
    staged = run_requests(runs[2])
    assert set(staged["stage"]) == {0, 1} and (staged["input_tokens"] == 400).all()


def _edit(tmp_path: Path, change) -> Path:
    path = _runs_csv(tmp_path)
    df = pd.read_csv(path)
    df = change(df)
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (lambda d: d.drop(columns=["ttft_mean_ms"]), "missing column ttft_mean_ms"),
        (lambda d: d.drop(columns=["gpu", "tp"]), "missing columns gpu, tp"),
        (lambda d: d.rename(columns={"e2e_mean_ms": "e2e_mean"}), "column e2e_mean has no unit"),
        (lambda d: d.assign(tp=["x", 1, 2]), "row 2 (a): tp = 'x' is not a number"),
        (lambda d: d.assign(e2e_mean_ms=[900, -1, 380]), "row 3 (b): e2e_mean_ms = -1"),
        (lambda d: d.assign(stage_durations_s=[None, None, "5"]), "stage_durations_s does not match"),
        (lambda d: d.assign(per_request_file=["nope.csv", "b.csv", None]), "per_request_file"),
        (lambda d: d.assign(experiment_id=["a", "a", "c"]), "experiment_id 'a' appears twice"),
    ],
)
def test_bad_runs_csv_is_one_error_line(tmp_path, capsys, change, text):
    path = _edit(tmp_path, change)
    with pytest.raises(MoesimError) as exc:
        read_runs(path)
    assert text in exc.value.one_line()
    code, _out, err = _cli(capsys, "validate", str(path), "--engine", "analytical", "--out", str(tmp_path / "v"))
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and text in err


def test_seconds_columns_are_converted(tmp_path):
    path = _edit(tmp_path, lambda d: d.assign(e2e_mean_s=d.e2e_mean_ms / 1e3).drop(columns=["e2e_mean_ms"]))
    assert read_runs(path)[0].measured["e2e_mean_ms"] == pytest.approx(900)


def test_latency_metrics_match_the_reference_definitions():
    e2e, ttft, out = np.array([100.0, 300.0]), np.array([10.0, 30.0]), np.array([10, 30])
    m = latency_metrics(e2e, ttft, out)
    assert m["e2e_mean_ms"] == 200 and m["ttft_mean_ms"] == 20
    assert m["itl_mean_ms"] == pytest.approx((200 - 20) / (20 - 1))  # ratio of means, not mean of ratios
    assert m["e2e_p90_ms"] == pytest.approx(np.percentile(e2e, 90))


# ---------------------------------------------------------------- validate end to end


def test_validate_cli_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as users type it
    runs = _runs_csv(tmp_path)
    out_dir = Path("v")
    code, out, err = _cli(capsys, "validate", str(runs), "--engine", "analytical", "--out", str(out_dir), "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["runs"] == 3 and s["runs_compared"] == 3
    assert [r["status"] for r in s["rows"]] == ["ok", "ok", "ok"]
    for r in s["rows"]:
        assert r["predicted_e2e_mean_ms"] > r["predicted_ttft_mean_ms"] > 0
        assert r["error_e2e_mean_ms"] == pytest.approx(r["predicted_e2e_mean_ms"] / r["measured_e2e_mean_ms"] - 1)
    assert s["e2e_mean_ms"]["runs"] == 3 and s["e2e_mean_ms"]["median_abs_error"] >= 0
    assert {"runs.csv", "summary.json", "scenarios", "traces"} <= {p.name for p in out_dir.iterdir()}
    assert len(list((out_dir / "scenarios").glob("*.yaml"))) == 3
    # the same folder again is an earlier output of validate: replaced; a foreign folder is refused
    assert _cli(capsys, "validate", str(runs), "--engine", "analytical", "--out", str(out_dir))[0] == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    code, _, err = _cli(capsys, "validate", str(runs), "--engine", "analytical", "--out", str(foreign))
    assert code == 1 and (foreign / "notes.txt").exists()


def test_overloaded_and_unknown_runs_are_flagged_not_summarised(tmp_path):
    path = _edit(tmp_path, lambda d: d.assign(n_requests_failed=[0, 5, 0], model=[d.model[0], d.model[1], "no-such"]))
    v = validate(read_runs(path), tmp_path / "w", engine="analytical")
    assert list(v.rows["status"]) == ["ok", "overloaded", "error"]
    assert "no-such" in v.rows["note"].iloc[2]
    assert v.summary["runs_compared"] == 1 and v.summary["e2e_mean_ms"]["runs"] == 1
    # whether the simulator agrees that the measured run was overloaded is reported, not hidden behind the status
    assert list(v.rows["predicted_overloaded"].iloc[:2]) == [False, False]
    assert "simulator: sustained" in v.rows["note"].iloc[1]
    assert v.summary["overload"] == {"measured": 1, "predicted": 0, "both": 0}


def test_a_run_the_simulator_cannot_sustain_says_so(tmp_path):
    """The staged run at ten times its rates through a 2-sequence running set: the analytical engine flags it
    overloaded in the row (``predicted_overloaded``), its note and the summary's overload count."""
    path = _edit(tmp_path, lambda d: d.assign(max_num_seqs=[64, 64, 2], n_requests_failed=[0, 0, 3],
                                              stage_rates_req_per_s=[None, None, "20;40"]))  # fmt: skip
    v = validate(read_runs(path, only=["c"]), tmp_path / "w", engine="analytical")
    row = v.rows.iloc[0]
    assert row["status"] == "overloaded" and bool(row["predicted_overloaded"]), row["note"]
    assert "simulator: overloaded (" in row["note"]
    assert v.summary["overload"] == {"measured": 1, "predicted": 1, "both": 1}


def test_des_and_analytical_agree_on_a_light_run(tmp_path):
    runs = read_runs(_runs_csv(tmp_path), only=["b"])
    req = run_requests(runs[0])
    trace = write_trace_csv(req, tmp_path / "t.csv")
    des = predict(runs[0], req, trace, "des").metrics
    ana = predict(runs[0], req, trace, "analytical").metrics
    for key in ("e2e_mean_ms", "itl_mean_ms"):
        assert ana[key] == pytest.approx(des[key], rel=0.25), key


def test_subsample_compares_the_same_requests(tmp_path):
    runs = read_runs(_runs_csv(tmp_path), only=["a"])
    v = validate(runs, tmp_path / "w", engine="analytical", max_requests=10)
    row = v.rows.iloc[0]
    assert row["requests"] == 10 and bool(row["subsampled"]) and "first 10 of 23" in row["note"]
    assert row["measured_e2e_mean_ms"] == pytest.approx(900)  # recomputed from the per-request file


# ---------------------------------------------------------------- fit-engine


def test_fit_recovers_known_host_costs(tmp_path):
    """Runs "measured" by the simulator itself with known host costs: the fit finds them again."""
    truth = {"api_per_request_s": 0.03, "scheduler_base_s": 3e-3}
    path = _edit(tmp_path, lambda d: d.assign(tp=[4, 4, 2]).iloc[:2])
    runs = read_runs(path)
    rows = []
    for run in runs:
        req = run_requests(run)
        trace = write_trace_csv(req, tmp_path / "truth" / f"{run.run_id}.csv")
        m = predict(run, req, trace, "analytical", host=truth).metrics
        rows.append(
            {
                "e2e_mean_ms": m["e2e_mean_ms"],
                "ttft_mean_ms": m["ttft_mean_ms"],
                "tpot_derived_mean_ms": m["itl_mean_ms"],
            }
        )
    df = pd.read_csv(path)
    for col in ("e2e_mean_ms", "ttft_mean_ms", "tpot_derived_mean_ms"):
        df[col] = [r[col] for r in rows]
    df.to_csv(path, index=False)
    problem = Problem(read_runs(path), tmp_path / "w", "analytical")
    fit = fit_engine(problem, tuple(truth), cv=False, max_nfev=15)
    for name, value in truth.items():
        assert fit.values[name] == pytest.approx(value, rel=0.1), (name, fit.values)
    assert fit.summary["fit"]["e2e_mean_ms"]["median_abs_error"] < 0.02
    assert fit.summary["start"]["ttft_mean_ms"]["median_abs_error"] > 0.2
    # the profile it writes is read back by the engine and carries its provenance
    text = profile_yaml(fit, path, 2)
    prof_path = tmp_path / "fitted.yaml"
    prof_path.write_text(text)
    assert is_fit_profile(prof_path)
    from moesim.sim.serving.fit_engine import base_profile

    prof = base_profile("vllm", str(prof_path))
    assert prof.host["api_per_request_s"] == pytest.approx(fit.values["api_per_request_s"], rel=1e-5)
    assert "fitted by moesim fit-engine on RUNS.csv (2 runs" in prof.sources["api_per_request_s"]
    # the settings are the base's, its sampler rule included (a fitted vLLM profile keeps the generation config)
    assert prof.sampling == base_profile("vllm").sampling == "generation_config"
    # and its padded rows' routing: an SGLang fit keeps SGLang's masking
    sgl = yaml.safe_load(profile_yaml(fit, path, 2, kind="sglang"))
    assert sgl["settings"]["routes_padding"] is False and base_profile("sglang").routes_padding is False


def test_fit_engine_cli_with_cv(tmp_path, capsys):
    runs = _runs_csv(tmp_path)
    out_file = tmp_path / "engine.yaml"
    code, out, err = _cli(
        capsys, "fit-engine", str(runs), "--out", str(out_file), "--params", "api_per_request_s",
        "--max-evals", "4", "--json",
    )  # fmt: skip
    assert code == 0, err
    s = json.loads(out)
    assert set(s["values_s"]) == {"api_per_request_s"} and 0 <= s["values_s"]["api_per_request_s"] <= 0.2
    assert s["cv"]["runs"] == 3 and set(s["cv_values_s"]) == {
        "Qwen/Qwen2.5-7B-Instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
    }
    code, out, err = _cli(capsys, "validate", str(runs), "--engine", "analytical", "--engine-profile", str(out_file),
                          "--out", str(tmp_path / "v"), "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["profile"] == str(out_file.resolve())
    # a file fit-engine did not write is not replaced; an unknown parameter is one error line
    other = tmp_path / "notes.yaml"
    other.write_text("mine: 1\n")
    code, _, err = _cli(capsys, "fit-engine", str(runs), "--out", str(other), "--max-evals", "2")
    assert code == 1 and "not written by moesim fit-engine" in err and other.read_text() == "mine: 1\n"
    code, _, err = _cli(capsys, "fit-engine", str(runs), "--out", str(out_file), "--params", "warp_s")
    assert code == 1 and "unknown host parameter 'warp_s'" in err and err.count("\n") == 1


def test_fit_reuses_gpu_steps_without_changing_predictions(tmp_path):
    problem = Problem(read_runs(_runs_csv(tmp_path)), tmp_path / "w", "analytical")
    host = {"scheduler_base_s": 2e-3, "api_per_request_s": 0.01}
    problem.predict({"scheduler_base_s": 1e-4})  # fills the GPU-side memo under other host costs
    reused = problem.predict(host)
    problem.reuse_gpu = False
    fresh = problem.predict(host)
    for key in ("e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms"):
        assert np.allclose(reused[f"predicted_{key}"], fresh[f"predicted_{key}"], rtol=1e-12), key


@pytest.mark.parametrize("command", ["validate", "fit-engine"])
def test_help_has_an_example(capsys, command):
    code, out, _ = _cli(capsys, command, "--help")
    assert code == 0 and "Example: moesim " + command in " ".join(out.split()) and "--json" in out


# ---------------------------------------------------------------- the reference data (skipped without it)

needs_data = pytest.mark.skipif(not (DATA / "experiments.csv").is_file(), reason="../shared/data is absent")


@needs_data
def test_reference_runs_read_and_overloads_flagged():
    runs = read_runs(DATA / "experiments.csv")
    assert len(runs) == 41
    over = {r.run_id for r in runs if r.overloaded}
    assert over == {
        "20260217-170634-llama-2-7b-tp1-reasoning",
        "20260218-065057-llama-2-70b-hf-tp4-reasoning",
        "20260218-160939-codellama-34b-tp2-reasoning",
    }
    assert sum(r.per_request is not None for r in runs) == 12


@needs_data
def test_reference_replay_subsample(tmp_path):
    runs = read_runs(DATA / "experiments.csv", only=["20260217-231439-llama-2-7b-tp1-general"])
    v = validate(runs, tmp_path, engine="analytical", max_requests=400)
    row = v.rows.iloc[0]
    assert row["status"] == "ok" and row["requests"] == 400
    # the first 400 requests' own measured mean E2E, not the whole run's 3558 ms
    assert 1500 < row["measured_e2e_mean_ms"] < 3000
    assert np.isfinite(row["error_e2e_mean_ms"])


# ---------------------------------------------------------------- inference-perf's prompt set


def test_shared_prefix_prompt_set_becomes_prefix_ids(tmp_path):
    """inference-perf's shared_prefix dataset sends prompt i mod (groups x prompts per group): repeats of one prompt
    share a prefix id and the whole prompt, so the simulator's prefix cache finds their full blocks."""
    path = _runs_csv(tmp_path)
    df = pd.read_csv(path)
    df["dataset"] = "inference-perf synthetic shared_prefix"
    df["resolved_sp_num_groups"], df["resolved_sp_num_prompts_per_group"] = 2, 3
    df["prefix_caching"], df["sp_system_prompt_len_tokens"] = True, 100
    df.to_csv(path, index=False)
    req_file = tmp_path / "a.csv"
    reqs = pd.read_csv(req_file)
    reqs["request_index"] = np.arange(len(reqs))
    ok = ~reqs["has_error"]
    reqs.loc[ok, "input_tokens"] = 300 + 10 * (reqs.loc[ok, "request_index"] % 6)  # six prompts in turn
    reqs.loc[7, "input_tokens"] = 305  # a repeat recorded a few tokens shorter: its id's prefix is the shortest
    reqs.to_csv(req_file, index=False)
    runs = read_runs(path)
    assert [r.prompt_set for r in runs] == [6, 6, 6]
    assert "prefix_hit_rate" not in runs[0].engine  # the ids decide, not a declared rate
    req = run_requests(runs[0])
    np.testing.assert_array_equal(req["prefix_id"][:12], np.arange(12) % 6)
    assert (req.groupby("prefix_id")["prefix_tokens"].nunique() == 1).all()
    assert (req["prefix_tokens"] <= req["input_tokens"]).all()
    assert list(req["prefix_tokens"][:6]) == [300, 305, 320, 330, 340, 350]
    staged = run_requests(runs[2])
    np.testing.assert_array_equal(staged["prefix_id"], np.arange(len(staged)) % 6)
    trace = write_trace_csv(req, tmp_path / "t.csv")
    assert pd.read_csv(trace).columns.tolist()[-2:] == ["prefix_id", "prefix_tokens"]
    # without the prompt set, the shared system prompt's whole blocks are a declared hit rate, as before
    df.drop(columns=["resolved_sp_num_groups"]).to_csv(path, index=False)
    plain = read_runs(path)
    assert plain[0].prompt_set == 0 and plain[0].engine["prefix_hit_rate"] == pytest.approx(
        96 / req["input_tokens"].mean(), abs=1e-3
    )
    assert "prefix_id" not in run_requests(plain[0]).columns


@needs_data
def test_reference_runs_repeat_a_hundred_prompts():
    runs = read_runs(DATA / "experiments.csv", only=["2-codellama-34b-tp2-codegen"])
    assert runs[0].prompt_set == 100
    req = run_requests(runs[0])
    assert req["prefix_id"].nunique() == 100
    # the recorded prompt lengths repeat with the prompt: the shared part covers all but ~0.2% of the tokens
    assert req["prefix_tokens"].sum() / req["input_tokens"].sum() > 0.99
