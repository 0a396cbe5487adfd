"""sim.serving.workload: arrival processes, length distributions, trace readers and their errors.

Statistical tolerances are about four standard errors of the estimate at the sample size
used, so a seeded run sits well inside them and a wrong formula falls well outside.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from moesim.model.errors import MoesimError
from moesim.sim.serving.workload import (
    LengthDist,
    describe,
    estimate_tokens,
    generate,
    parse_workload,
    read_trace,
    sample_lengths,
    write_trace,
)

AZURE_2023 = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2224670,879,55
2023-11-16 18:15:51.3910170,91,16
"""
AZURE_2024 = """TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-12 00:00:00.001163+00:00,1452,3
2024-05-12 00:00:00+00:00,584,3
2024-05-12 00:00:01.500000+00:00,862,0
"""


def gaps(df: pd.DataFrame) -> np.ndarray:
    return np.diff(df["arrival_s"].to_numpy())


def error_line(excinfo: pytest.ExceptionInfo[MoesimError]) -> str:
    line = excinfo.value.one_line()
    assert "\n" not in line and "(fix: " in line
    return line


# ---------------------------------------------------------------- arrival processes


def test_poisson_rate_and_columns():
    n, rate = 20_000, 20.0
    df = generate(parse_workload({"rate": rate, "requests": n}), seed=1)
    assert list(df.columns) == ["request_id", "arrival_s", "input_tokens", "output_tokens"]
    assert [str(t) for t in df.dtypes] == ["int64", "float64", "int64", "int64"]
    assert df["request_id"].tolist() == list(range(n))
    assert (gaps(df) >= 0).all() and df["arrival_s"].iloc[0] > 0
    # exponential gaps: standard error of the mean gap is (1/rate)/sqrt(n) = 0.7 %; 3 % is ~4 sigma
    assert np.mean(np.r_[df["arrival_s"].iloc[0], gaps(df)]) == pytest.approx(1 / rate, rel=0.03)


def test_gamma_mean_and_cv():
    n, rate, cv = 20_000, 10.0, 2.0
    df = generate(parse_workload({"arrival": "gamma", "rate": rate, "cv": cv, "requests": n}), seed=2)
    g = np.r_[df["arrival_s"].iloc[0], gaps(df)]
    # mean: standard error cv/sqrt(n) = 1.4 %; cv: ~1.8 % (shape 1/4, excess kurtosis 24)
    assert g.mean() == pytest.approx(1 / rate, rel=0.06)
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.10)


def test_constant_is_exact_and_starts_at_zero():
    df = generate(parse_workload({"arrival": "constant", "rate": 8, "requests": 100}))
    assert df["arrival_s"].iloc[0] == 0.0
    np.testing.assert_allclose(gaps(df), 1 / 8, rtol=0, atol=1e-12)


def test_closed_loop_has_no_arrivals():
    w = parse_workload({"arrival": "closed", "concurrency": 16, "think_s": 0.5, "requests": 50})
    df = generate(w)
    assert len(df) == 50 and df["arrival_s"].isna().all()
    assert describe(w).startswith("Closed loop, 16 clients, think 0.5 s, 50 requests")


def test_duration_bounds_arrivals_and_requests_caps_them():
    rate, duration = 50.0, 100.0
    df = generate(parse_workload({"rate": rate, "duration_s": duration}), seed=3)
    # Poisson count: mean 5000, sd ~71; the default of 1000 requests does not cap it
    assert abs(len(df) - rate * duration) < 4 * math.sqrt(rate * duration)
    assert df["arrival_s"].max() <= duration
    capped = generate(parse_workload({"rate": rate, "duration_s": duration, "requests": 100}), seed=3)
    assert len(capped) == 100
    const = generate(parse_workload({"arrival": "constant", "rate": 20, "duration_s": 2}))
    assert len(const) == 41 and const["arrival_s"].iloc[-1] == pytest.approx(2.0)
    with pytest.raises(MoesimError, match=r"workload.duration_s: .* over the limit"):
        generate(parse_workload({"rate": 1e6, "duration_s": 1e5}))


def test_seed_determinism():
    w = parse_workload({"arrival": "gamma", "rate": 5, "cv": 3, "requests": 500})
    pd.testing.assert_frame_equal(generate(w, seed=7), generate(w, seed=7))
    assert not generate(w, seed=7).equals(generate(w, seed=8))


# ---------------------------------------------------------------- lengths


def test_lognormal_mean_and_cv_of_tokens():
    rng = np.random.default_rng(0)
    x = sample_lengths(LengthDist(dist="lognormal", mean=512, cv=1.0), 50_000, rng).astype(float)
    # standard errors at n = 50k: mean 0.45 %, cv ~1.4 % (lognormal tail)
    assert x.mean() == pytest.approx(512, rel=0.02)
    assert x.std() / x.mean() == pytest.approx(1.0, rel=0.06)
    assert x.min() >= 1


def test_lognormal_clip_uniform_fixed_empirical():
    rng = np.random.default_rng(0)
    clipped = sample_lengths(LengthDist(dist="lognormal", mean=100, cv=2, min=10, max=300), 10_000, rng)
    assert clipped.min() == 10 and clipped.max() == 300
    uni = sample_lengths(LengthDist(dist="uniform", low=3, high=7), 10_000, rng)
    assert set(np.unique(uni)) == {3, 4, 5, 6, 7}
    assert (sample_lengths(LengthDist(dist="fixed", value=42), 5, rng) == 42).all()
    emp = sample_lengths(LengthDist(dist="empirical", values=[16, 64, 256], weights=[1, 0, 3]), 10_000, rng)
    assert set(np.unique(emp)) == {16, 256}
    assert (emp == 256).mean() == pytest.approx(0.75, abs=0.02)  # sd 0.4 %


def test_defaults_shorthand_and_clips():
    uniform = {"dist": "uniform", "low": 1, "high": 1000}
    w = parse_workload({"rate": 10, "input": 100, "output": uniform, "max_output": 50})
    df = generate(w, seed=0)
    assert (df["input_tokens"] == 100).all() and df["output_tokens"].max() == 50
    assert describe(w) == "Poisson 10 req/s, 1000 requests, input fixed 100, output uniform(1-1000), output <= 50"
    default = parse_workload({"rate": 20, "requests": 10000})
    assert describe(default) == (
        "Poisson 20 req/s, 10000 requests, input lognormal(mean 512, cv 1), output lognormal(mean 256, cv 1)"
    )


# ---------------------------------------------------------------- traces


def test_csv_and_jsonl_round_trip(tmp_path):
    df = generate(parse_workload({"rate": 4, "requests": 200}), seed=5)
    for name in ("w.csv", "w.jsonl"):
        write_trace(df, tmp_path / name)
        back = read_trace(tmp_path / name)
        np.testing.assert_allclose(back["arrival_s"], df["arrival_s"] - df["arrival_s"].iloc[0], atol=1e-12)
        assert back["input_tokens"].tolist() == df["input_tokens"].tolist()
        assert back["output_tokens"].tolist() == df["output_tokens"].tolist()


def test_csv_sorts_shifts_and_accepts_timestamp(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("timestamp,input_tokens,output_tokens,user\n12.0,30,3,a\n10.5,10,1,b\n11,20,2,c\n")
    back = read_trace(path)
    assert back["arrival_s"].tolist() == [0.0, 0.5, 1.5]
    assert back["input_tokens"].tolist() == [10, 20, 30]


def test_trace_replay_with_time_scale_duration_and_requests(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"arrival_s": t, "input_tokens": 8, "output_tokens": 2}) for t in range(10)))
    full = generate(parse_workload({"trace": "t.jsonl", "time_scale": 2}), base_dir=tmp_path)
    assert full["arrival_s"].tolist() == [t / 2 for t in range(10)]
    assert len(generate(parse_workload({"trace": str(path), "duration_s": 3}))) == 4
    assert len(generate(parse_workload({"trace": str(path), "requests": 6}))) == 6
    assert describe(parse_workload({"trace": str(path), "time_scale": 2})).startswith("Replay of t.jsonl at 2x speed")


def test_azure_2023_and_2024(tmp_path):
    (tmp_path / "AzureLLMInferenceTrace_conv.csv").write_text(AZURE_2023)
    df = read_trace(tmp_path / "AzureLLMInferenceTrace_conv.csv")
    np.testing.assert_allclose(df["arrival_s"], [0.0, 4.314579, 4.541877, 4.710427], atol=1e-6)
    assert df["input_tokens"].tolist() == [374, 396, 879, 91]
    assert df["output_tokens"].tolist() == [44, 109, 55, 16]
    (tmp_path / "week.csv").write_text(AZURE_2024)
    df = read_trace(tmp_path / "week.csv", "azure")
    np.testing.assert_allclose(df["arrival_s"], [0.0, 0.001163, 1.5], atol=1e-9)  # sorted, shifted
    assert df["input_tokens"].tolist() == [584, 1452, 862]
    assert df["output_tokens"].tolist() == [3, 3, 1]  # 0 counts as 1
    replay = generate(parse_workload({"trace": "AzureLLMInferenceTrace_conv.csv"}), base_dir=tmp_path)
    assert len(replay) == 4 and replay["arrival_s"].iloc[-1] == pytest.approx(4.710427)


def test_sharegpt_conversations(tmp_path):
    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "x" * 40}, {"from": "gpt", "value": "héllo"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "only one turn"}]},
        {"id": "c", "conversations": []},
        {
            "id": "d",
            "conversations": [
                {"from": "system", "value": "ignored"},
                {"from": "human", "value": "y" * 9},
                {"from": "gpt", "value": "z" * 400},
                {"from": "human", "value": "later turns ignored"},
            ],
        },
    ]
    path = tmp_path / "ShareGPT_V3_unfiltered_cleaned_split.json"
    path.write_text(json.dumps(records))
    df = read_trace(path)
    assert df["arrival_s"].isna().all()
    assert df["input_tokens"].tolist() == [10, 3]  # ceil(40/4), ceil(9/4)
    assert df["output_tokens"].tolist() == [2, 100]  # "héllo" is 6 UTF-8 bytes
    assert estimate_tokens("") == 1


def test_sharegpt_lengths_list_samples_with_rate(tmp_path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([[100, 10], [200, 20], {"input_tokens": 300, "output_tokens": 30}]))
    assert read_trace(pairs)["input_tokens"].tolist() == [100, 200, 300]
    w = parse_workload({"trace": "pairs.json", "rate": 20, "requests": 3000})
    df = generate(w, seed=1, base_dir=tmp_path)
    assert len(df) == 3000 and df["arrival_s"].notna().all()
    assert set(zip(df["input_tokens"], df["output_tokens"], strict=True)) == {(100, 10), (200, 20), (300, 30)}
    assert np.mean(np.diff(df["arrival_s"])) == pytest.approx(1 / 20, rel=0.08)  # sd 1.8 %
    pd.testing.assert_frame_equal(df, generate(w, seed=1, base_dir=tmp_path))
    assert describe(w) == "Poisson 20 req/s, 3000 requests, lengths from pairs.json"
    closed = generate(parse_workload({"trace": str(pairs), "arrival": "closed", "concurrency": 4, "requests": 9}))
    assert len(closed) == 9 and closed["arrival_s"].isna().all()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"rate": -1}, "workload.rate: must be > 0, got -1"),
        ({"rate": 0}, "workload.rate: must be > 0, got 0"),
        ({"rate": "fast"}, "workload.rate: must be a number, got 'fast'"),
        ({"rate": 1, "burst": 3}, "workload.burst: unknown key"),
        ({"rat": 1}, "did you mean rate?"),
        ({"rate": 1, "input": {"dist": "uniform", "low": 10, "high": 5}}, "workload.input.low: 10 is above high 5"),
        ({"rate": 1, "input": {"dist": "lognormal", "mean": 10, "cv": 1, "sigma": 1}}, "workload.input.sigma: unknown"),
        ({"rate": 1, "input": {"dist": "lognormal", "mean": 10}}, "workload.input.cv: required by dist lognormal"),
        ({"rate": 1, "output": {"dist": "fixed", "value": 5, "low": 1}}, "workload.output.low: not used by dist fixed"),
        ({"rate": 1, "output": {"dist": "normal"}}, "workload.output.dist: must be one of"),
        ({"rate": 1, "output": {"dist": "empirical", "values": [4, 0]}}, "workload.output.values[1]: must be >= 1"),
        ({"rate": 1, "output": {"dist": "empirical", "values": [4], "weights": [1, 2]}}, "1 values"),
        ({}, "workload.rate: required by arrival poisson"),
        ({"arrival": "closed"}, "workload.concurrency: required"),
        ({"arrival": "closed", "concurrency": 2, "rate": 3}, "workload.rate: not used by arrival closed"),
        ({"rate": 1, "cv": 3}, "workload.cv: only used by arrival gamma"),
        ({"rate": 1, "requests": 0}, "workload.requests: must be >= 1, got 0"),
        ({"rate": 1, "requests": 2.5}, "workload.requests: must be a whole number, got 2.5"),
        ({"trace": "t.csv", "input": 5}, "workload.input: lengths come from the trace"),
        ({"rate": 1, "time_scale": 2}, "workload.time_scale: only used with a trace"),
    ],
)
def test_bad_workloads(data, expected):
    with pytest.raises(MoesimError) as excinfo:
        parse_workload(data)
    assert expected in error_line(excinfo)


def test_bad_workload_names_where():
    with pytest.raises(MoesimError) as excinfo:
        parse_workload({"rate": -2}, where="scenarios[1].workload")
    assert error_line(excinfo).startswith("scenarios[1].workload.rate: must be > 0, got -2")
    with pytest.raises(MoesimError, match="must be a mapping"):
        parse_workload([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("empty.csv", "", "empty trace"),
        ("header.csv", "arrival_s,input_tokens,output_tokens\n", "empty trace"),
        ("empty.jsonl", "\n", "empty trace"),
        ("empty.json", "[]", "empty trace"),
        ("bad.json", '[{"conversations": [', "not valid JSON (line 1"),
        ("bad.jsonl", '{"input_tokens": 1, "output_tokens": 2}\n{"input_tokens": 1,\n', "line 2: not valid JSON"),
        ("miss.csv", "arrival_s,input_tokens\n0,5\n", "missing column output_tokens"),
        ("neg.csv", "arrival_s,input_tokens,output_tokens\n0,5,2\n1,-3,2\n", "line 3: input_tokens -3 is not a token"),
        ("nan.csv", "arrival_s,input_tokens,output_tokens\n0,5,lots\n", "line 2: output_tokens 'lots' is not a token"),
        ("frac.jsonl", '{"input_tokens": 2.5, "output_tokens": 2}\n', "line 1: input_tokens 2.5 is not a token"),
        ("gap.jsonl", '{"input_tokens": 2, "output_tokens": 2}\n{"output_tokens": 1}\n', "line 2: no input"),
        ("time.csv", "arrival_s,input_tokens,output_tokens\n0,1,1\nsoon,1,1\n", "line 3: arrival_s 'soon' is not"),
        ("az.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,1,1\nyesterday,1,1\n", "line 3"),
        ("skip.json", json.dumps([{"conversations": [{"from": "human", "value": "hi"}]}]), "no usable records"),
        ("odd.json", json.dumps([[1, 2], "text"]), "record 1: not a ShareGPT record"),
        ("negpair.json", json.dumps([[1, 2], [5, -1]]), "record 1: output tokens -1"),
        ("obj.json", json.dumps({"data": []}), "expected a JSON list"),
        ("trace.parquet", "x", "cannot tell the trace format"),
    ],
)
def test_bad_traces(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MoesimError) as excinfo:
        read_trace(path)
    line = error_line(excinfo)
    assert expected in line and name in line


def test_azure_missing_column_and_no_file(tmp_path):
    path = tmp_path / "az.csv"
    path.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,1\n")
    with pytest.raises(MoesimError, match="missing column GeneratedTokens"):
        read_trace(path, "azure")
    with pytest.raises(MoesimError, match="no such trace file"):
        generate(parse_workload({"trace": "absent.csv"}), base_dir=tmp_path)


def test_trace_clashes_with_arrival_settings(tmp_path):
    (tmp_path / "az.csv").write_text(AZURE_2023)
    with pytest.raises(MoesimError) as excinfo:
        generate(parse_workload({"trace": "az.csv", "rate": 5}), base_dir=tmp_path)
    assert "workload.rate: az.csv has its own arrival times" in error_line(excinfo)
    (tmp_path / "pairs.json").write_text("[[1, 2]]")
    with pytest.raises(MoesimError) as excinfo:
        generate(parse_workload({"trace": "pairs.json"}), base_dir=tmp_path)
    assert "workload.rate: required, since pairs.json has no arrival times" in error_line(excinfo)


def test_write_trace_errors(tmp_path):
    df = generate(parse_workload({"rate": 1, "requests": 3}))
    with pytest.raises(MoesimError, match="unknown extension"):
        write_trace(df, tmp_path / "w.parquet")
    with pytest.raises(MoesimError, match="lacks output_tokens"):
        write_trace(df.drop(columns="output_tokens"), tmp_path / "w.csv")
    with pytest.raises(MoesimError, match="cannot write"):
        write_trace(df, tmp_path / "no" / "such" / "w.csv")
