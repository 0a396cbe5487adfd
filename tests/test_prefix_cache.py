"""Prefix caching (`sim.serving.replica`): shared prefixes from the workload or a trace, or a declared hit rate.

A request whose prefix is in its replica's cache skips the prefill of the prefix's full KV blocks (vLLM caches
full blocks only, and recomputes the last prompt token of a full hit), so it prefills less and its TTFT drops;
cached prefixes are evicted least recently used when KV blocks run short.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.model.errors import MoesimError
from moesim.sim.serving.engine import replica_capacity
from moesim.sim.serving.serve import ServeResult, load, run
from moesim.sim.serving.workload import generate, parse_workload, read_trace, write_trace

PREFIX = 1000  # tokens: 62 full blocks of 16 (992 tokens) and 8 more


def _scenario(engine: dict | None = None, workload: dict | None = None, requests: int = 40) -> dict:
    wl = {
        "arrival": "poisson",
        "rate": 4,
        "requests": requests,
        "input": {"dist": "lognormal", "mean": 256, "cv": 1.0, "max": 1024},
        "output": {"dist": "lognormal", "mean": 32, "cv": 1.0, "max": 128},
        "shared_prefix": {"tokens": PREFIX, "groups": 2},
    }
    return {
        "model": "mixtral-8x7b",
        "gpu": "H100-SXM",
        "layout": {"tp": 2},
        "replicas": 1,
        "engine": {"kind": "vllm", "block_size": 16, **(engine or {})},
        "workload": {**wl, **(workload or {})},
    }


@cache
def _run(caching: bool) -> ServeResult:
    return run(_scenario({"prefix_caching": caching}), "des")


def test_shared_prefix_workload_prepends_the_prefix():
    plain = generate(parse_workload({"rate": 1, "requests": 50}), seed=3)
    shared = generate(parse_workload({"rate": 1, "requests": 50, "shared_prefix": {"tokens": 100, "groups": 4}}), 3)
    np.testing.assert_array_equal(shared["input_tokens"], plain["input_tokens"] + 100)  # prefix + own prompt
    np.testing.assert_array_equal(shared["output_tokens"], plain["output_tokens"])
    assert set(shared["prefix_id"]) <= {0, 1, 2, 3} and (shared["prefix_tokens"] == 100).all()


@pytest.mark.parametrize("name", ["w.csv", "w.jsonl"])
def test_prefix_columns_survive_a_written_trace(tmp_path: Path, name: str):
    df = generate(parse_workload({"rate": 2, "requests": 30, "shared_prefix": {"tokens": 64, "groups": 3}}), seed=1)
    df.loc[0, ["prefix_id", "prefix_tokens"]] = [-1, 0]  # no shared prefix: written as an empty cell
    write_trace(df, tmp_path / name)
    back = read_trace(tmp_path / name)
    np.testing.assert_array_equal(back["prefix_tokens"], df["prefix_tokens"])
    # ids are renumbered in order of appearance, but the same requests share a prefix
    same = back["prefix_id"].to_numpy()[:, None] == back["prefix_id"].to_numpy()[None, :]
    np.testing.assert_array_equal(same, df["prefix_id"].to_numpy()[:, None] == df["prefix_id"].to_numpy()[None, :])
    assert back["prefix_id"][0] == -1


def test_prefix_hits_reduce_prefill_tokens_and_ttft():
    off, on = _run(False), _run(True)
    q = on.requests
    assert (off.requests["cached_tokens"] == 0).all() and off.summary["prefix_hit_rate"] == 0
    # the first request of each group computes its prefix; later ones find its full blocks (992 tokens) cached
    first = q.groupby("prefix_id")["arrival_s"].idxmin()
    assert (q.loc[first, "cached_tokens"] == 0).all()
    hits = q["cached_tokens"] > 0
    assert hits.sum() >= len(q) - 2 - 4  # a few may arrive while their group's first request still prefills
    assert (q.loc[hits, "cached_tokens"] == PREFIX // 16 * 16).all()
    # prefill work drops by exactly the cached tokens (no preemption at this load)
    assert on.summary["preemptions"] == 0 and off.summary["preemptions"] == 0
    saved = off.steps["prefill_tokens"].sum() - on.steps["prefill_tokens"].sum()
    assert saved == q["cached_tokens"].sum()
    rate = q["cached_tokens"].sum() / q["input_tokens"].sum()
    assert on.summary["prefix_hit_rate"] == pytest.approx(rate) and rate > 0.5
    assert on.summary["engine_ttft_mean_s"] < 0.8 * off.summary["engine_ttft_mean_s"]
    assert on.summary["ttft_mean_s"] < off.summary["ttft_mean_s"]


def test_declared_hit_rate():
    res = run(_scenario({"prefix_hit_rate": 0.5}, {"shared_prefix": None}), "des")
    q = res.requests
    expect = np.minimum(np.rint(0.5 * q["input_tokens"]), q["input_tokens"] - 1)
    np.testing.assert_array_equal(q["cached_tokens"], expect)
    assert res.summary["prefix_hit_rate"] == pytest.approx(0.5, abs=0.01)


def test_trace_with_prefix_ids(tmp_path: Path):
    rows = ["arrival_s,input_tokens,output_tokens,prefix_id,prefix_tokens"]
    for i in range(12):
        pid, plen = (["sys-a", 640], ["sys-b", 300], ["", ""])[i % 3]
        rows.append(f"{i * 0.5},{700 + i},{8},{pid},{plen}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    trace = read_trace(tmp_path / "t.csv")
    assert trace["prefix_id"].tolist()[:3] == [0, 1, -1] and trace["prefix_tokens"].tolist()[:3] == [640, 300, 0]
    sc = _scenario({"prefix_caching": True}, {"trace": "t.csv"})
    sc["workload"] = {"trace": "t.csv"}
    q = run(sc, "des", base_dir=tmp_path).requests
    assert q["cached_tokens"].tolist()[:6] == [0, 0, 0, 640, 288, 0]  # sys-b: 300 tokens = 18 full blocks
    assert (q["cached_tokens"][q["prefix_id"] < 0] == 0).all()


def test_lru_eviction_when_kv_is_short():
    """A KV cache of about 6,000 tokens holds a few of 40 prefixes of 1,000 tokens: prefixes are evicted, hits
    fall, every request still finishes and the cache never overflows."""
    big = {"groups": 40, "tokens": PREFIX}

    def scenario(fraction: float) -> dict:
        return _scenario({"mem_fraction": fraction}, {"shared_prefix": big, "rate": 8}, requests=120)

    def kv_tokens(fraction: float) -> int:
        built = load(scenario(fraction))
        return replica_capacity(built, built.pools[0]).kv_tokens

    hi, lo = kv_tokens(1.0), kv_tokens(0.9)
    fraction = 1.0 - (hi - 6000) / ((hi - lo) / 0.1)
    small, large = run(scenario(fraction), "des"), run(scenario(0.9), "des")
    assert small.summary["completed"] == large.summary["completed"] == 120
    assert small.steps["kv_used_frac"].max() <= 1.0
    assert small.summary["prefix_hit_rate"] < large.summary["prefix_hit_rate"]


@pytest.mark.parametrize(
    "case",
    [
        ("trace", "prefix_id,prefix_tokens\n0.1,100,8,a,-5\n", "line 2: prefix_tokens -5 is not a token count"),
        ("trace", "prefix_id,prefix_tokens\n0.1,100,8,a,150\n", "prefix_tokens 150 is longer than the prompt"),
        ("trace", "prefix_id\n0.1,100,8,a\n", "has prefix_id but no prefix_tokens"),
        ("trace", "prefix_id,prefix_tokens\n0.1,100,8,a,10\n0.2,100,8,a,20\n", "prefix_id 'a' has prefix_tokens 20"),
        ("engine", {"prefix_hit_rate": 1.5}, "engine.prefix_hit_rate: must be <= 1, got 1.5"),
        ("engine", {"prefix_hit_rate": -0.2}, "engine.prefix_hit_rate: must be >= 0, got -0.2"),
        ("engine", {"kind": "ideal", "prefix_hit_rate": 0.3}, "prefix caching is off"),
        ("workload", {"shared_prefix": {"tokens": -3}}, "workload.shared_prefix.tokens: must be >= 1, got -3"),
        ("workload", {"shared_prefix": {"tokens": 2000}, "max_input": 1000}, "workload.max_input: 1000 leaves no"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path: Path, case):
    kind, value, message = case
    sc = _scenario()
    if kind == "trace":
        (tmp_path / "t.csv").write_text("arrival_s,input_tokens,output_tokens," + value)
        sc["workload"] = {"trace": "t.csv"}
    elif kind == "engine":
        sc["engine"] |= value
    else:
        sc["workload"] |= value
    with pytest.raises(MoesimError) as err:
        built = load(sc, base_dir=tmp_path)
        generate(built.workload, base_dir=tmp_path)
    line = err.value.one_line()
    assert message in line and "\n" not in line


# ---------------------------------------------------------------- the analytical engine and the prompt set


def test_prefix_hits_expected_per_request():
    from moesim.sim.serving.analytical import prefix_hits

    df = pd.DataFrame(
        {
            "arrival_s": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            "input_tokens": [100, 100, 40, 100, 40, 50],
            "prefix_id": [0, 0, 1, 0, 1, -1],
            "prefix_tokens": [100, 100, 40, 100, 40, 0],
        }
    )
    hits, working = prefix_hits(df, True, None, 16)
    # the first request of a prefix misses; a repeat finds min(prefix, prompt - 1) // 16 full blocks
    np.testing.assert_array_equal(hits, [0, 96, 0, 96, 32, 0])
    assert working == 96 + 32  # tokens the distinct prefixes hold in the cache
    two, _ = prefix_hits(df, True, None, 16, replicas=2)  # each replica's cache misses a prefix once
    np.testing.assert_array_equal(two, [0, 0, 0, 96, 0, 0])
    off, w0 = prefix_hits(df, False, None, 16)
    assert not off.any() and w0 == 0
    declared, _ = prefix_hits(df, True, 0.5, 16)
    np.testing.assert_array_equal(declared, [50, 50, 20, 50, 20, 25])


def test_analytical_prefix_hits_cut_ttft_like_the_des():
    from moesim.sim.serving.analytical import analyse

    sc_off, sc_on = _scenario({"prefix_caching": False}), _scenario({"prefix_caching": True})
    off, on = analyse(load(sc_off)), analyse(load(sc_on))
    # (0.81 since a mean prompt of 256.x tokens is one chunk, not 256 tokens and a second chunk; the DES: 0.76)
    assert on["ttft_mean_s"] < 0.85 * off["ttft_mean_s"]
    des_off, des_on = _run(False).summary, _run(True).summary
    # the same direction and about the same size as the simulator's own saving
    a = on["ttft_mean_s"] / off["ttft_mean_s"]
    d = des_on["ttft_mean_s"] / des_off["ttft_mean_s"]
    assert abs(a - d) < 0.25


@pytest.mark.parametrize("kind", ["vllm", "ideal"])
def test_overlapping_scheduler_admits_two_steps_later(tmp_path: Path, kind: str):
    """vLLM's async scheduling decides step n+1 while step n runs: a request that arrives during step n joins
    step n+2; without overlap it joins step n+1."""
    (tmp_path / "t.csv").write_text("arrival_s,input_tokens,output_tokens\n0,16,400\n0.1,16,4\n")
    sc = {
        "model": "llama-3.1-8b",
        "gpu": "H100-SXM",
        "layout": {"tp": 1},
        "replicas": 1,
        "engine": {"kind": kind},
        "workload": {"trace": "t.csv"},
    }
    res = run(sc, "des", base_dir=tmp_path)
    q = res.requests.set_index("request_id")
    steps = res.steps.sort_values("start_s").reset_index(drop=True)
    arrive = float(q.loc[1, "engine_arrival_s"])
    ends = (steps["start_s"] + steps["duration_s"]).to_numpy()
    k = int(np.searchsorted(ends, arrive))  # the step running when the request reaches the scheduler
    assert steps["start_s"][k] <= arrive < ends[k]
    joins = k + 2 if kind == "vllm" else k + 1
    assert q.loc[1, "scheduled_s"] == pytest.approx(steps["start_s"][joins])
