"""No hang, no impossible answer: impossible prompts, bounded counts, NaN and infinity refused.

Every case runs the CLI in-process (`dashboard.cli.main`) or calls the function directly and
checks: a non-zero exit, exactly one ``error:`` line on stderr naming the problem, no traceback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.model.hf_config import PRESET_DIR, load_model
from moesim.model.limits import MAX_BATCH, MAX_GPUS, MAX_LAYERS, MAX_RATE, MAX_REQUESTS, MAX_TOKENS
from moesim.sim.serving import analytical, engine
from moesim.sim.serving.engine import Capacity, check_requests_fit
from moesim.sim.serving.scenario import parse_scenario
from moesim.sim.serving.serve import load, run
from moesim.sim.serving.workload import generate, parse_workload, read_trace
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep
from moesim.sim.training.train_scenario import parse_train_scenario

ROOT = Path(__file__).parents[1]

#: A small serving scenario: 20 requests of mixtral-8x7b on one DGX H100 (EP8).
SERVE: dict[str, Any] = {
    "name": "limits",
    "model": "mixtral-8x7b",
    "cluster": "dgx-h100",
    "layout": {"tp": 1, "dp_attn": 8, "ep": 8},
    "workload": {"arrival": "poisson", "rate": 20, "requests": 20, "input": 512, "output": 64},
}

#: A small training scenario (validation only).
TRAIN: dict[str, Any] = {
    "model": "mixtral-8x7b",
    "gpu": "H100-SXM",
    "nodes": 1,
    "gpus_per_node": 8,
    "layout": {"tp": 1, "pp": 1, "ep": 8},
    "batch": {"global_batch": 64, "micro_batch": 1, "seq_len": 4096},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _yaml(tmp_path: Path, data: dict[str, Any], name: str = "s.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _refused(capsys, argv: list[str], *words: str, code: int | None = None) -> str:
    """Run ``moesim argv``; assert one error line (holding ``words``), no traceback, a non-zero exit."""
    rc = main(argv)
    cap = capsys.readouterr()
    lines = [line for line in cap.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert rc != 0 and (code is None or rc == code), (rc, cap.err)
    assert len(errors) == 1, cap.err
    assert "Traceback" not in cap.err + cap.out
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------- prompts that cannot fit


@pytest.mark.parametrize("eng", ["des", "analytical"])
def test_prompt_over_the_context_is_refused_by_both_engines(capsys, tmp_path, eng):
    sc = _merge(SERVE, {"workload": {"input": 40_000}})
    t0 = time.perf_counter()
    line = _refused(capsys, ["simulate", _yaml(tmp_path, sc), "--engine", eng, "--json"], "request 0", "40,000")
    assert "32,768" in line and "max_position_embeddings" in line and "workload.max_input" in line
    assert time.perf_counter() - t0 < 20


def _small_kv(built, pool) -> Capacity:
    """A replica that holds 1,600 tokens of KV cache."""
    return Capacity(kv_blocks=100, kv_tokens=1600, weight_gib=10.0, offload=None, verdict="test: 1,600 tokens")


@pytest.mark.parametrize("eng", ["des", "analytical"])
def test_prompt_over_the_kv_cache_is_refused_by_both_engines(capsys, tmp_path, monkeypatch, eng):
    monkeypatch.setattr(engine, "replica_capacity", _small_kv)
    monkeypatch.setattr(analytical, "replica_capacity", _small_kv)
    sc = _merge(SERVE, {"workload": {"input": {"dist": "uniform", "low": 100, "high": 3000}}})
    t0 = time.perf_counter()
    line = _refused(capsys, ["simulate", _yaml(tmp_path, sc), "--engine", eng, "--json"], "tokens of KV cache")
    assert "1,600 tokens" in line and "mixed replica" in line and "request " in line
    assert time.perf_counter() - t0 < 20


def test_kv_check_names_the_first_request_and_counts_the_rest():
    built = load(_merge(SERVE, {"workload": {"requests": 5}}))
    df = pd.DataFrame(
        {"request_id": range(5), "input_tokens": [10, 2000, 10, 5000, 10], "output_tokens": [5, 5, 5, 5, 5]}
    )
    with pytest.raises(MoesimError) as e:
        check_requests_fit(built, df, {"mixed": _small_kv(built, built.pools[0])})
    msg = e.value.one_line()
    assert "request 1 needs 2,004 tokens" in msg and "(and 1 more)" in msg
    # a request whose input + output - 1 tokens fill the cache exactly still fits
    ok = pd.DataFrame({"request_id": [0], "input_tokens": [1500], "output_tokens": [101]})
    check_requests_fit(built, ok, {"mixed": _small_kv(built, built.pools[0])})


def test_prefill_pool_holds_only_the_prompt():
    pools = {"prefill": {"replicas": 1, "layout": {"tp": 4}}, "decode": {"replicas": 1, "layout": {"tp": 4}}}
    built = load({k: v for k, v in SERVE.items() if k != "layout"} | {"disaggregation": pools})
    caps = {"prefill": _small_kv(built, None), "decode": Capacity(10**6, 16 * 10**6, 10.0, None, "big")}
    fits = pd.DataFrame({"request_id": [0], "input_tokens": [1600], "output_tokens": [500]})
    check_requests_fit(built, fits, caps)
    over = pd.DataFrame({"request_id": [7], "input_tokens": [1700], "output_tokens": [1]})
    with pytest.raises(MoesimError, match=r"request 7 needs 1,700 tokens.*prefill replica"):
        check_requests_fit(built, over, caps)


def test_unchunked_prompt_over_the_step_budget_is_refused(capsys, tmp_path):
    sc = _merge(SERVE, {"engine": {"chunked_prefill": False, "max_tokens": 1024}, "workload": {"input": 2000}})
    _refused(capsys, ["simulate", _yaml(tmp_path, sc), "--json"], "2,000-token prompt", "engine.max_tokens 1,024")


def test_prompts_that_fit_still_run():
    res = run(_merge(SERVE, {"workload": {"requests": 5}}), engine="analytical")
    assert res.summary["requests"] == 5


# ---------------------------------------------------------------- counts are bounded


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"workload": {"requests": 10**12}}, ["workload.requests", f"{MAX_REQUESTS:,}"]),
        ({"workload": {"rate": 1e308}}, ["workload.rate", f"{MAX_RATE:g}"]),
        ({"workload": {"input": 10**12}}, ["workload.input.value", f"{MAX_TOKENS:,}"]),
        ({"workload": {"output": {"dist": "lognormal", "mean": 100, "cv": 1e300}}}, ["workload.output.cv"]),
        ({"workload": {"arrival": "gamma", "cv": 1e-300}}, ["workload.cv"]),
        ({"workload": {"duration_s": 1e300, "rate": 1}}, ["workload.duration_s"]),
        ({"workload": {"max_input": 10**15}}, ["workload.max_input"]),
        ({"engine": {"max_batch": 10**18}}, ["engine.max_batch", f"{MAX_BATCH:,}"]),
        ({"layout": {"tp": 10**18}}, ["layout.tp"]),
        ({"replicas": 10**12}, ["replicas"]),
        ({"nodes": 10**12, "cluster": None, "gpu": "H100-SXM"}, ["nodes"]),
        ({"routing": {"capacity_factor": 1e300}}, ["routing.capacity_factor"]),
        ({"seed": -1}, ["seed", "must be >= 0"]),
        ({"seed": 2**70}, ["seed"]),
    ],
)
def test_scenario_counts_are_bounded(capsys, tmp_path, over, words):
    sc = _merge(SERVE, over)
    _refused(capsys, ["simulate", _yaml(tmp_path, sc), "--json"], *words)


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"batch": {"global_batch": 10**18}}, ["batch.global_batch", f"{MAX_BATCH:,}"]),
        ({"batch": {"seq_len": 10**12}}, ["batch.seq_len"]),
        ({"batch": {"global_batch": 8_000_000}}, ["micro-batches per pipeline", "10,000"]),
        ({"steps": 1000, "batch": {"global_batch": 8000}}, ["pipeline tasks", "1,000,000"]),
        ({"layout": {"pp": 10**9}}, ["layout.pp"]),
        ({"seed": -5}, ["seed"]),
    ],
)
def test_training_counts_are_bounded(capsys, tmp_path, over, words):
    _refused(capsys, ["train", _yaml(tmp_path, _merge(TRAIN, over)), "--json"], *words)


def test_sweep_counts_are_bounded(tmp_path):
    base = _merge(SERVE, {})
    with pytest.raises(MoesimError, match="rate"):
        expand(parse_sweep({"base": base, "axes": {"rate": {"start": 1, "stop": 1e308, "num": 3}}}))
    with pytest.raises(MoesimError, match="rates must be > 0 and <= 1e"):
        expand(parse_sweep({"base": base, "axes": {"rate": [1.0, 1e300]}}))
    with pytest.raises(MoesimError, match="points, over the limit of 100,000"):
        expand(parse_sweep({"base": base, "axes": {"max_batch": list(range(1, 1001)), "rate": list(range(1, 1001))}}))
    with pytest.raises(MoesimError, match=r"axes\.gpus: 1000000000000 is not a whole number from 1 to 1,000,000"):
        expand(parse_sweep({"base": base, "axes": {"gpus": [8, 10**12]}}))
    with pytest.raises(MoesimError, match=r"capacity\.max_requests"):
        parse_sweep({"base": base, "capacity": {"max_requests": 10**12}})
    with pytest.raises(MoesimError, match="seed"):
        parse_sweep({"base": base, "seed": -1})


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("num_hidden_layers", 10**9, ["num_hidden_layers=1000000000", f"{MAX_LAYERS:,}"]),
        ("num_hidden_layers", 1e9, ["num_hidden_layers=1000000000.0"]),
        ("hidden_size", 10**12, ["hidden_size=1000000000000"]),
        ("num_local_experts", 10**8, ["num_local_experts"]),
        ("vocab_size", 10**15, ["vocab_size"]),
        ("max_position_embeddings", "long", ["max_position_embeddings='long'"]),
        ("sliding_window", 1e400, ["sliding_window=inf"]),
    ],
)
def test_model_config_numbers_are_bounded(capsys, tmp_path, key, value, words):
    cfg = json.loads((PRESET_DIR / "mixtral-8x7b.json").read_text())
    cfg[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    _refused(capsys, ["inspect", str(path), "--json"], *words)
    with pytest.raises(MoesimError):
        load_model(path)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["roofline", "mixtral-8x7b", "--batch", str(10**18)], ["--batch"]),
        (["roofline", "mixtral-8x7b", "--batch", "1e18"], ["--batch"]),
        (["roofline", "mixtral-8x7b", "--ctx", str(10**12)], ["--ctx"]),
        (["roofline", "mixtral-8x7b", "--batch", "1000000", "--ctx", "1000000"], ["--batch x --ctx", "1,000,000,000"]),
        (["roofline", "mixtral-8x7b", "--tp", str(10**14)], ["--tp", "positive integer up to", f"{MAX_GPUS:,}"]),
        (
            ["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--tokens", str(10**12)],
            ["--tokens"],
        ),
        (["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", str(10**12)], ["--gpus"]),
        (["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--workers", "-3"], ["--workers"]),
        (["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--seed", "-1"], ["--seed"]),
        (["sweep", "x.yaml", "--out", "o", "--workers", "-3"], ["--workers"]),
        (["simulate", "x.yaml", "--seed", "-1"], ["--seed"]),
        (["calibrate", "x", "--out", "c.parquet", "--seed", "-2"], ["--seed"]),
        (["dashboard", "--port", "99999"], ["--port"]),
    ],
)
def test_cli_counts_are_bounded(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, argv, *words)
    assert not list(tmp_path.iterdir())


def test_place_groups_must_divide_the_experts(capsys, tmp_path):
    argv = ["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--method", "eplb"]
    _refused(capsys, [*argv, "--groups", "3", "--out", str(tmp_path / "p"), "--json"], "--groups 3", "8 experts")
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- NaN and infinity


@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize(
    "where",
    ["workload: {rate: X, requests: 5}", "slo: {ttft_s: X}", "engine: {mem_fraction: X}", "offload: {host_bw: X}"],
)
def test_scenario_refuses_nan_and_infinity(capsys, tmp_path, bad, where):
    text = yaml.safe_dump({k: v for k, v in SERVE.items() if k != "workload"})
    text += where.replace("X", bad) + "\n"
    if not where.startswith("workload"):
        text += "workload: {rate: 1, requests: 5}\n"
    path = tmp_path / "s.yaml"
    path.write_text(text)
    _refused(capsys, ["simulate", str(path), "--json"], where.split(":")[0])


@pytest.mark.parametrize(
    "over",
    [{"comm_sm_fraction": float("nan")}, {"mem_reserved_gib": float("inf")}, {"routing": {"exponent": float("nan")}}],
)
def test_training_refuses_nan_and_infinity(over):
    with pytest.raises(MoesimError, match="finite number"):
        parse_train_scenario(_merge(TRAIN, over))


def test_sweep_refuses_nan_and_infinity():
    with pytest.raises(MoesimError, match="finite number"):
        parse_sweep({"base": SERVE, "capacity": {"max_rate": float("inf")}})
    with pytest.raises(MoesimError, match="finite number"):
        parse_sweep({"base": SERVE, "placement_options": {"time_limit": float("nan")}})


def test_hardware_file_refuses_infinity(capsys, tmp_path):
    entry = {
        "name": "My GPU",
        "vendor": "x",
        "peak_flops": {"bf16": float("inf")},
        "memory_gib": 80,
        "memory_bandwidth": 3e12,
        "tdp_w": 700,
        "node": {
            "gpus_per_node": 8,
            "intra_bw": 4.5e11,
            "intra_latency_s": 1e-5,
            "inter_bw": 5e10,
            "inter_latency_s": 1e-5,
        },
    }
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump({"MYGPU": entry}))
    _refused(capsys, ["gpus", "--hardware", str(path), "--json"], "peak_flops.bf16", "finite")
    entry["peak_flops"] = {"bf16": 1e15}
    entry["memory_gib"] = float("nan")
    path.write_text(yaml.safe_dump({"MYGPU": entry}))
    _refused(capsys, ["gpus", "--hardware", str(path), "--json"], "memory_gib", "finite")


ROOF = ["roofline", "mixtral-8x7b", "--tp", "8", "--json"]
PLACE = ["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--json"]


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (ROOF, "--pue"),
        (ROOF, "--usd-per-kwh"),
        (ROOF, "--years"),
        (ROOF, "--utilisation"),
        (ROOF, "--mem-fraction"),
        (PLACE, "--skew"),
        (PLACE, "--time-limit"),
        (PLACE, "--mip-gap"),
        (PLACE, "--traffic-weight"),
        (PLACE, "--migration-weight"),
        (["calibrate", "x", "--out", "c.parquet"], "--holdout"),
        (["dashboard"], "--timeout"),
    ],
)
def test_cli_float_flags_refuse_nan_and_infinity(capsys, tmp_path, monkeypatch, argv, flag, bad):
    monkeypatch.chdir(tmp_path)
    line = _refused(capsys, [*argv, flag, bad], f"'{flag}'", "finite number", code=2)
    assert bad in line
    assert not list(tmp_path.iterdir())


def test_cli_float_flags_still_take_good_values(capsys):
    assert main([*ROOF, "--pue", "1.2", "--usd-per-kwh", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "mixtral-8x7b"


# ---------------------------------------------------------------- traces with absurd token counts


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ("1,1e308,5", ["line 3", "input_tokens 1e+308", f"{MAX_TOKENS:,}"]),
        ("1,-4,5", ["line 3", "input_tokens -4"]),
        ("1,12.5,5", ["line 3", "input_tokens 12.5"]),
        ("1,nan,5", ["line 3", "no input_tokens"]),
        ("1,inf,5", ["line 3", "input_tokens inf"]),
        ("1,5,abc", ["line 3", "output_tokens 'abc'"]),
    ],
)
def test_trace_token_counts_are_refused_by_row_and_column(tmp_path, row, words):
    path = tmp_path / "t.csv"
    path.write_text(f"arrival_s,input_tokens,output_tokens\n0,10,10\n{row}\n")
    with pytest.raises(MoesimError) as e:
        read_trace(path)
    for w in words:
        assert w in e.value.one_line()


def test_trace_in_a_scenario_is_refused_in_one_line(capsys, tmp_path):
    (tmp_path / "t.jsonl").write_text('{"arrival_s": 0, "input_tokens": 1e308, "output_tokens": 5}\n')
    sc = _merge(SERVE, {"workload": {"trace": "t.jsonl"}})
    del sc["workload"]["input"], sc["workload"]["output"], sc["workload"]["rate"], sc["workload"]["arrival"]
    _refused(capsys, ["simulate", _yaml(tmp_path, sc), "--json"], "line 1", "input_tokens")


def test_sharegpt_pairs_with_absurd_counts_are_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("[[10, 20], [1e400, 3], [5, [2]]]")
    with pytest.raises(MoesimError, match="record 1: input tokens inf"):
        read_trace(path)


def test_good_trace_still_reads(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0,0,10\n1.5,10000000,3\n")
    df = read_trace(path)
    assert df["input_tokens"].tolist() == [1, 10_000_000]


def test_workload_limits_are_said_in_the_message():
    with pytest.raises(MoesimError) as e:
        parse_workload({"rate": 1, "requests": 10**12})
    assert f"<= {MAX_REQUESTS:,}" in e.value.one_line()
    w = parse_workload({"rate": 1, "requests": 3, "input": MAX_TOKENS, "output": 1})
    assert (generate(w)["input_tokens"] == MAX_TOKENS).all()
    assert np.issubdtype(generate(w)["input_tokens"].dtype, np.integer)


def test_scenario_refuses_negative_seed_directly():
    with pytest.raises(MoesimError, match="seed"):
        parse_scenario(_merge(SERVE, {"seed": -1}))
