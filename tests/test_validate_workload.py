"""What `moesim validate` assumes about a measured run's workload and engine (issue 19): the tokens the engine
generated under ``ignore_eos``, prefix caching left unrecorded, the prompt set of a label-only run, and the
analytical engine's prompt chunks. TEST INPUT only (no reference data needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.sim.serving.analytical import Analytical, pool_state
from moesim.sim.serving.serve import load
from moesim.sim.serving.validate import latency_metrics, predict, read_runs, run_requests, write_trace_csv


def _per_request(path: Path, n: int = 40, counted: int = 24) -> None:
    """TEST INPUT: Poisson arrivals at 2 req/s, 300-token prompts, ``counted`` output tokens as a client counted
    them; latencies invented."""
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(0.5, n)) * 1e3
    pd.DataFrame(
        {
            "arrival_time_ms": t,
            "input_tokens": 300,
            "output_tokens": counted,
            "has_error": False,
            "e2e_ms": 500.0,
            "ttft_ms": 30.0,
        }
    ).to_csv(path, index=False)


def _runs(folder: Path, **extra) -> Path:
    """TEST INPUT: one replayed run (r), one staged run (s) and one run with only a workload label (l)."""
    _per_request(folder / "r.csv")
    rows = pd.DataFrame(
        {
            "experiment_id": ["r", "s", "l"],
            "model": ["meta-llama/Llama-3.1-8B-Instruct"] * 3,
            "gpu": ["H100"] * 3,
            "tp": [1, 1, 1],
            "max_num_seqs": [64, 64, 64],
            "max_num_batched_tokens": [2048, 2048, 2048],
            "per_request_file": ["r.csv", None, None],
            "stage_rates_req_per_s": [None, "2", None],
            "stage_durations_s": [None, "10", None],
            "input_len_mean_tokens": [None, 300, None],
            "output_len_mean_tokens": [None, 24, None],
            "workload_label": [None, None, "general"],
            "e2e_mean_ms": [500.0, 500.0, 2000.0],
            "ttft_mean_ms": [30.0, 30.0, 30.0],
        }
    )
    for k, v in extra.items():
        rows[k] = v
    path = folder / "RUNS.csv"
    rows.to_csv(path, index=False)
    return path


def test_ignore_eos_runs_generate_max_tokens_and_are_measured_by_the_count(tmp_path):
    """inference-perf sends max_tokens with ignore_eos and counts the output by re-tokenising the text: the engine
    generated max_tokens; the recorded count (which can be shorter) is what the metrics divide by."""
    path = _runs(tmp_path, ignore_eos=[True, True, None], sp_output_len_tokens=[32, 32, None])
    r, s, lab = read_runs(path)
    assert r.max_tokens == 32 and s.max_tokens == 32 and lab.max_tokens is None
    req = run_requests(r)
    assert (req["output_tokens"] == 32).all() and (req["output_measured"] == 24).all()
    staged = run_requests(s)
    assert (staged["output_tokens"] == 32).all() and (staged["output_measured"] == 24).all()
    assert any("generated 32 tokens" in n for n in s.notes)
    # without ignore_eos the recorded lengths are what the engine generated
    plain = read_runs(_runs(tmp_path, ignore_eos=[False, None, None], sp_output_len_tokens=[32, 32, None]))
    assert plain[0].max_tokens is None and (run_requests(plain[0])["output_tokens"] == 24).all()


def test_itl_divides_by_the_counted_tokens(tmp_path):
    """The predicted ITL is computed as the study's: (mean E2E - mean TTFT) / (mean counted output - 1), while the
    simulated requests decode max_tokens: 31 decode steps over 23 counted intervals."""
    path = _runs(tmp_path, ignore_eos=[True, True, None], sp_output_len_tokens=[32, 32, None])
    run = read_runs(path, only=["r"])[0]
    req = run_requests(run)
    trace = write_trace_csv(req, tmp_path / "t.csv")
    both = predict(run, req, trace, engine="analytical").metrics
    same = read_runs(_runs(tmp_path), only=["r"])[0]  # generates what it counted (24)
    req24 = run_requests(same)
    one = predict(same, req24, write_trace_csv(req24, tmp_path / "t24.csv"), engine="analytical").metrics
    # same TTFT, 31 vs 23 decode steps: the ITL over counted tokens grows by about 31 / 23
    assert both["ttft_mean_ms"] == pytest.approx(one["ttft_mean_ms"], rel=0.05)
    assert both["itl_mean_ms"] / one["itl_mean_ms"] == pytest.approx(31 / 23, rel=0.06)
    m = latency_metrics(np.array([330.0]), np.array([20.0]), np.array([32]))
    assert m["itl_mean_ms"] == pytest.approx(10.0)


def test_unrecorded_prefix_caching_takes_the_engine_default(tmp_path):
    """vLLM V1 caches prefixes by default: an empty prefix_caching cell is the profile's default (on), said in the
    notes; a recorded false stays off."""
    runs = read_runs(_runs(tmp_path))
    assert all(r.engine["prefix_caching"] is True for r in runs)
    assert all(any("prefix caching not recorded" in n for n in r.notes) for r in runs)
    off = read_runs(_runs(tmp_path, prefix_caching=[False, False, False]))
    assert all(r.engine["prefix_caching"] is False for r in off)
    assert not any("prefix caching not recorded" in n for r in off for n in r.notes)


def test_label_only_run_assumes_the_studys_prompt_set(tmp_path):
    """A run known only by its workload label gets inference-perf's shared_prefix prompt set of the study's
    recorded runs (10 groups x 10 prompts): request i sends prompt i mod 100, named in the notes."""
    runs = read_runs(_runs(tmp_path))
    lab = runs[2]
    assert lab.prompt_set == 100 and any("prompt set assumed" in n for n in lab.notes)
    req = run_requests(lab)
    np.testing.assert_array_equal(req["prefix_id"][:250], np.arange(250) % 100)
    assert (req["prefix_tokens"] == req["input_tokens"]).all()
    # a replayed or staged run without a recorded dataset keeps no prompt set
    assert runs[0].prompt_set == 0 and runs[1].prompt_set == 0


def _pool(tmp_path: Path, prompt: int, cost_model=None):
    df = pd.DataFrame({"arrival_s": np.arange(200) / 4.0, "input_tokens": prompt, "output_tokens": 64})
    df.to_csv(tmp_path / "w.csv", index=False)
    sc = {
        "name": "t",
        "model": "llama-3.1-8b",
        "gpu": "H100-SXM",
        "engine": {"kind": "vllm", "max_batch": 64, "max_tokens": 2048},
        "workload": {"trace": "w.csv"},
    }
    built = load(sc, cost_model, base_dir=tmp_path)
    a = Analytical(built)
    return a, a.pools["mixed"]


def test_a_prompt_of_a_fraction_over_a_whole_token_is_one_chunk(tmp_path):
    """A mean of 18.3 computed prompt tokens fits one chunk (it was 18 tokens and then a second chunk of 0.3,
    doubling the mixed steps)."""
    a, pool = _pool(tmp_path, 300)
    st = pool_state(a.timers["mixed"], a.caps["mixed"], pool, 4.0, 300.0, 64.0, "mixed", cached=300 - 18.3)
    assert st.chunks == 1 and st.chunk == 19
    whole = pool_state(a.timers["mixed"], a.caps["mixed"], pool, 4.0, 300.0, 64.0, "mixed")
    assert whole.chunks == 1 and whole.chunk == 300


def test_a_mixed_step_is_never_shorter_than_the_decode_step(tmp_path, capsys):
    """A mixed step runs the decode step's sequences plus a prompt chunk: the steady state never prices it below
    the decode step, even where the calibrated tables do (Llama-3.1-8B, 8 decodes + a 24-token chunk on the
    committed H100 tables: the chunk's GEMM rows and attention come from other tables than the decode step's), and
    TTFT never gains from a prompt."""
    from moesim.dashboard.cli import main
    from moesim.dashboard.cli.roofline import load_cost_model
    from moesim.sim.serving.analytical import _steps

    root = Path(__file__).resolve().parents[1]
    assert main(["calibrate", str(root / "profiling/data/h100-sxm/full-bf16"), "--out", str(tmp_path / "c.json")]) == 0
    capsys.readouterr()
    a, pool = _pool(tmp_path, 300, load_cost_model(str(tmp_path / "c.json")))
    dec, mix = _steps(a.timers["mixed"], 8, 400, 24, 286)
    assert mix.duration_s < dec.duration_s  # the tables' noise this guards against
    for cached in (0.0, 280.0, 286.0, 299.0):
        st = pool_state(a.timers["mixed"], a.caps["mixed"], pool, 4.0, 300.0, 64.0, "mixed", cached=cached)
        assert st.t_mixed >= st.t_decode and not st.overloaded
        assert st.tau >= st.t_decode * (1 - 1e-12)
    _states, ttft, _e2e, _tpot = a.solve(4.0)
    assert math.isfinite(float(ttft.mean()))


def _bench_json(path: Path, **over) -> None:
    """TEST INPUT in the layout of vLLM's benchmark_serving.py --save-result (its keys; figures invented): three
    requests sent at once, the third with no output text (TTFT 0)."""
    import json

    data = {
        "backend": "vllm",
        "request_rate": "inf",
        "input_lens": [13, 329, 205],
        "output_lens": [120, 101, 0],
        "ttfts": [0.0634, 0.0631, 0.0],
        "itls": [[0.05, 0.07], [0.06], []],
        "errors": ["", "", ""],
        "mean_ttft_ms": 42.2,
    } | over
    path.write_text(json.dumps(data))


def test_a_benchmark_serving_result_is_a_per_request_file(tmp_path):
    """`read_bench_json`: vLLM's benchmark_serving result read as a per-request table (arrival 0 at rate inf; TTFT and
    E2E in ms, unknown where no text came; errors marked); a finite rate draws gamma gaps of mean 1 / rate, the same
    at every read; and a RUNS.csv row naming the file replays it through `moesim validate`'s reader."""
    from moesim.sim.serving.validate import read_bench_json

    f = tmp_path / "bench.json"
    _bench_json(f)
    df = read_bench_json(f)
    assert (df["arrival_time_ms"] == 0).all() and df["input_tokens"].tolist() == [13, 329, 205]
    assert df["ttft_ms"].iloc[:2].tolist() == pytest.approx([63.4, 63.1]) and math.isnan(df["ttft_ms"].iloc[2])
    assert df["e2e_ms"].iloc[0] == pytest.approx(63.4 + 120.0) and not df["has_error"].any()
    _bench_json(f, request_rate=4.0, input_lens=[100] * 2000, output_lens=[10] * 2000, ttfts=[0.1] * 2000,
                itls=[[0.01]] * 2000, errors=[""] * 1999 + ["timeout"])  # fmt: skip
    a, b = read_bench_json(f), read_bench_json(f)
    assert a.equals(b) and a["has_error"].sum() == 1
    gaps = np.diff(a["arrival_time_ms"].to_numpy())
    assert a["arrival_time_ms"].iloc[0] == 0 and gaps.mean() == pytest.approx(250.0, rel=0.06)
    _bench_json(tmp_path / "r.json")
    rows = pd.DataFrame(
        {"experiment_id": ["b"], "model": ["llama-3-8b"], "gpu": ["H100"], "tp": [1], "per_request_file": ["r.json"],
         "e2e_mean_ms": [1000.0], "ttft_mean_ms": [63.0]}
    )  # fmt: skip
    rows.to_csv(tmp_path / "RUNS.csv", index=False)
    (run,) = read_runs(tmp_path / "RUNS.csv")
    req = run_requests(run)
    assert len(req) == 3 and (req["arrival_s"] == 0).all() and req["output_tokens"].tolist() == [120, 101, 1]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not valid JSON"),
        ('{"input_lens": [1, 2]}', "not a vLLM benchmark_serving result"),
        ('{"input_lens": [1, 2], "output_lens": [3]}', "input_lens has 2 requests, output_lens 1"),
        ('{"input_lens": [1, -2], "output_lens": [3, 4]}', "input_lens must be a list of whole numbers >= 0"),
        ('{"input_lens": [1], "output_lens": [3], "ttfts": [NaN]}', "ttfts must hold finite seconds >= 0"),
        ('{"input_lens": [1], "output_lens": [3], "request_rate": -1}', "request_rate must be inf or a number > 0"),
        ('{"input_lens": [1], "output_lens": [3], "itls": [[0.1], [0.2]]}', "itls must be a list of 1 lists"),
    ],
)
def test_a_bad_benchmark_result_is_one_error_line(tmp_path, text: str, says: str) -> None:
    from moesim.model.errors import MoesimError
    from moesim.sim.serving.validate import read_bench_json

    f = tmp_path / "bad.json"
    f.write_text(text)
    with pytest.raises(MoesimError) as exc:
        read_bench_json(f)
    assert says in exc.value.one_line() and str(f) in exc.value.one_line()
