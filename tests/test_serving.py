"""The serving simulator end to end: `sim.serving.serve.run` on small scenarios, and ``moesim simulate``.

Pins what the discrete-event engine (DES) promises: every request completes exactly once with consistent
timestamps, Little's law holds on the engine's own bookkeeping, no step beats the roofline, the analytical
model agrees with the DES at moderate load, and the MoE physics (skew, capacity factor, offloading), the
scheduler (preemption, pipeline parallelism, replicas, closed loops, disaggregation) and the CLI behave.

Every scenario is small (at most 800 requests) and uses the roofline cost model; runs shared by several
tests are cached per module.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model import count_params
from moesim.model.errors import MoesimError
from moesim.sim.serving.engine import make_timer, replica_capacity
from moesim.sim.serving.serve import ServeResult, load, run

MIXTRAL_EP8 = {"model": "mixtral-8x7b", "cluster": "dgx-h100", "layout": {"tp": 1, "dp_attn": 8, "ep": 8}}


def poisson(requests: int, rate: float, inp: float = 512, out: float = 256, max_in: int = 4096, max_out: int = 512):
    """A Poisson workload with lognormal lengths (cv 1)."""
    return {
        "arrival": "poisson",
        "rate": rate,
        "requests": requests,
        "input": {"dist": "lognormal", "mean": inp, "cv": 1.0, "max": max_in},
        "output": {"dist": "lognormal", "mean": out, "cv": 1.0, "max": max_out},
    }


def moderate(requests: int = 800, seed: int = 0, **extra) -> dict:
    """Mixtral-8x7B on one DGX-H100, TP1 x DP-attention 8, EP8, Poisson 20 req/s (about 20 decoding)."""
    return {**MIXTRAL_EP8, "workload": poisson(requests, 20), "seed": seed, **extra}


@cache
def _des(key: str) -> ServeResult:
    scenarios = {
        "moderate": moderate(),
        "uniform": moderate(300),
        "power": moderate(300, routing={"distribution": "power", "exponent": 1.2}),
        "power_cf1": moderate(300, routing={"distribution": "power", "exponent": 1.2, "capacity_factor": 1.0}),
    }
    return run(scenarios[key], "des")


def check_requests(res: ServeResult) -> None:
    """Every request finished once, its timestamps are ordered, and it emitted exactly output_tokens tokens.

    The engine keeps no per-request token count in its output; the inter-token latencies count them: a
    request that emitted n tokens contributes n - 1 gaps, and its gaps sum to finish - first token.
    """
    q = res.requests
    s = res.summary
    assert q["request_id"].is_unique and len(q) == s["requests"] == s["completed"]
    assert q["finish_s"].notna().all() and q["first_token_s"].notna().all() and q["scheduled_s"].notna().all()
    assert (q["arrival_s"] <= q["scheduled_s"]).all()
    assert (q["scheduled_s"] <= q["first_token_s"]).all()
    assert (q["first_token_s"] <= q["finish_s"]).all()
    single = q["output_tokens"] == 1
    assert (q.loc[single, "first_token_s"] == q.loc[single, "finish_s"]).all()
    assert len(res.itl) == int((q["output_tokens"] - 1).sum())
    assert (res.itl > 0).all()
    assert res.itl.sum() == pytest.approx(float((q["finish_s"] - q["first_token_s"]).sum()), rel=1e-9)
    # the engine's step-time decomposition is exact, and the KV cache never overflows
    st = res.steps
    parts = st["compute_s"] + st["comm_s"] + st["straggler_s"] + st["fetch_s"]
    np.testing.assert_allclose(parts, st["duration_s"], rtol=1e-9, atol=1e-15)
    assert (st["duration_s"] > 0).all() and st["kv_used_frac"].max() <= 1.0


# ---- 1-5: the moderate-load Mixtral run ---------------------------------------------------------------


def test_every_request_completes_exactly_once():
    res = _des("moderate")
    check_requests(res)
    assert res.summary["preemptions"] == 0 and res.summary["dropped_frac"] == 0.0
    assert set(res.steps["phase"]) >= {"decode", "mixed"}


def test_littles_law_on_the_engines_bookkeeping():
    """Time-average of the engine's waiting + running counts = arrival rate x mean sojourn (measured: 0.2%)."""
    s = _des("moderate").summary
    assert s["littles_law_error"] < 0.02
    assert s["littles_law_identity_error"] < 1e-9


def test_no_step_is_faster_than_its_roofline():
    """Each step takes at least max(weight-read time, FLOP time), both computed here from the model's shapes.

    Memory: with TP1 x DP-attention 8 every GPU holds all non-expert weights (attention, router, norms) and
    one expert per MoE layer (EP8). Each layer's attention waits for the DP group with the most sequences,
    which reads all its attention weights, and each MoE layer waits for the GPU with the most pairs, which
    reads at least one expert. Layers run one after the other, so a step lasts at least (non-expert bytes of
    a GPU + one expert per MoE layer) / the GPU's peak memory bandwidth, whatever the batch. The embedding
    table (a gather) and the LM head are left out, which only loosens the bound. Measured: decode steps take
    about 1.15x this bound.

    Compute: the step's new tokens need 2 x (active non-embedding parameters) FLOP each; spread perfectly
    over the replica's 8 GPUs at the dense BF16 peak that is a lower bound (attention FLOP left out).
    """
    res = _des("moderate")
    m, gpu, prec = res.built.model, res.built.cluster.gpu, res.built.precision
    c = count_params(m)
    assert m.moe is not None and res.built.pools[0].layout.ep == m.moe.num_experts == 8
    wbytes = min(prec.weight_bytes, prec.unquantized_bytes)
    non_expert = sum(v for k, v in c.by_component.items() if k not in ("routed_experts", "embeddings"))
    one_expert_per_layer = c.by_component["routed_experts"] / m.moe.num_experts
    mem_bound = (non_expert + one_expert_per_layer) * wbytes / gpu.memory_bandwidth
    active = c.active - c.active_by_component["embeddings"]
    flop_bound = 2.0 * active * res.steps["tokens"].to_numpy() / (8 * gpu.peak("bf16"))
    bound = np.maximum(mem_bound, flop_bound)
    dur = res.steps["duration_s"].to_numpy()
    assert (dur >= bound).all(), f"fastest step at {np.min(dur / bound):.3f} x its roofline"
    decode = (res.steps["phase"] == "decode").to_numpy()
    assert np.median(dur[decode] / mem_bound) < 1.5  # the bound is tight, not vacuous
    big = res.steps["tokens"].to_numpy() >= 2048
    assert big.any() and (dur[big] >= flop_bound[big]).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_analytical_matches_des_at_moderate_load(seed):
    """Within 10% on throughput, TPOT, E2E and TTFT (measured over seeds 0-8: 0.93-1.07).

    The DES throughput divides by the makespan, which includes the drain of the last requests after the
    last arrival; the analytical one is the steady state. Outputs capped at 512 tokens keep that drain
    (about 2.5 s) small against 40 s of arrivals: the analytical throughput comes out 4-7% higher.
    """
    des = _des("moderate") if seed == 0 else run(moderate(seed=seed), "des")
    ana = run(moderate(seed=seed), "analytical").summary
    assert not ana["overloaded"]
    for key in ("throughput_tok_s", "tpot_mean_s", "e2e_mean_s", "ttft_mean_s"):
        ratio = ana[key] / des.summary[key]
        assert 0.9 <= ratio <= 1.1, f"{key}: analytical / DES = {ratio:.3f}"


def test_sampled_decode_steps_match_the_expected_busiest_gpu():
    """Uniform routing on EP8: the DES's mean step (routing drawn per step) matches `StepTimer.expected`.

    Same batches, same timer as the engine builds: 300 draws per batch of 16-256 sequences with mixed
    contexts. The analytical step waits for the expected busiest GPU, the DES for each draw's busiest.
    Measured: within 0.8%.
    """
    built = load(moderate())
    pool = built.pools[0]
    timer = make_timer(built, pool, replica_capacity(built, pool), seed=3)
    rng = np.random.default_rng(0)
    for b in (16, 32, 64, 128, 256):
        new = np.ones(b, np.int64)
        cached = rng.integers(64, 2048, size=b)
        costs = timer.sample_run(new, np.repeat(cached[None, :], 300, axis=0))
        sampled = np.mean([c.duration_s for c in costs])
        expected = timer.expected(new, cached).duration_s
        assert sampled == pytest.approx(expected, rel=0.05), f"batch {b}: {sampled / expected:.3f}"
        assert all(c.dropped_pairs == 0 and c.fetch_s == 0 for c in costs)


@pytest.mark.xfail(
    strict=True,
    reason="model.ops.experts_op charges the busiest GPU max_g E[active experts on g], under one expert "
    "when a step routes fewer pairs than there are GPUs; the DES draws at least one",
)
def test_expected_single_sequence_decode_reads_at_least_one_expert_per_layer():
    # TP8 x EP8, one scheduler: with DP attention every rank would replay its batch-1 graph, 8 tokens routed
    built = load({**moderate(), "layout": {"tp": 8, "ep": 8}})
    pool = built.pools[0]
    timer = make_timer(built, pool, replica_capacity(built, pool), seed=0)
    new, cached = np.ones(1, np.int64), np.array([500])
    sampled = np.mean([c.duration_s for c in timer.sample_run(new, np.repeat(cached[None, :], 100, axis=0))])
    assert timer.expected(new, cached).duration_s == pytest.approx(sampled, rel=0.05)  # measured: 0.47x


# ---- 6-7: routing skew and the capacity factor ---------------------------------------------------------


def test_power_law_skew_costs_tpot_and_stragglers():
    """Power-law routing (exponent 1.2) vs uniform, same seed and arrivals (measured: TPOT +4.5%,
    straggler share of step time 0.13 vs 0.04, TTFT +33%)."""
    uni, skew = _des("uniform").summary, _des("power").summary
    assert skew["tpot_mean_s"] > 1.02 * uni["tpot_mean_s"]
    assert skew["ttft_mean_s"] > uni["ttft_mean_s"]
    assert skew["straggler_frac"] > 0 and skew["straggler_frac"] > 2 * uni["straggler_frac"]
    assert skew["dropped_frac"] == uni["dropped_frac"] == 0.0


def test_capacity_factor_drops_pairs_under_skew():
    """Capacity factor 1.0: each expert takes at most its even share, so the popular ones drop
    (measured: 37% of pairs); dropless (null) drops none, and dropping cuts the skew's TPOT cost."""
    capped, dropless = _des("power_cf1"), _des("power")
    assert capped.summary["dropped_frac"] > 0.1
    assert dropless.summary["dropped_frac"] == 0 and (dropless.steps["dropped_pairs"] == 0).all()
    assert (capped.steps["dropped_pairs"] <= capped.steps["pairs"]).all()
    assert capped.summary["tpot_mean_s"] < dropless.summary["tpot_mean_s"]
    check_requests(capped)


# ---- 8-11: scheduler and deployment shapes --------------------------------------------------------------


def test_tiny_kv_cache_preempts_and_still_completes():
    """A KV cache of about 4,000 tokens (mem_fraction chosen here from two capacity probes) under 20 req/s:
    requests are preempted and recomputed, every one still finishes, and the cache never overflows."""

    def scenario(fraction: float) -> dict:
        return {
            "model": "mixtral-8x7b",
            "gpu": "H100-SXM",
            "layout": {"tp": 2},
            "replicas": 1,
            "engine": {"mem_fraction": fraction},
            "workload": poisson(80, 20, max_in=1024, max_out=512),
        }

    def kv_tokens(fraction: float) -> int:
        built = load(scenario(fraction))
        return replica_capacity(built, built.pools[0]).kv_tokens

    hi, lo = kv_tokens(1.0), kv_tokens(0.9)
    fraction = 1.0 - (hi - 4000) / ((hi - lo) / 0.1)  # KV tokens are linear in mem_fraction
    assert 2000 <= kv_tokens(fraction) <= 6000  # holds any one request (at most 1,536 tokens), not all
    res = run(scenario(fraction), "des")
    check_requests(res)
    assert res.summary["preemptions"] > 0
    assert res.summary["preemptions"] == int(res.requests["preemptions"].sum())
    assert res.summary["max_kv_used"] > 0.9


def test_offloading_fetches_experts_and_without_it_does_not_fit():
    """Qwen3-30B-A3B (57 GiB of BF16 weights) on one 48 GB L40S: offloaded experts are fetched over PCIe."""
    scenario = {
        "model": "qwen3-30b-a3b",
        "gpu": "L40S",
        "layout": {"tp": 1},
        "workload": poisson(12, 2, inp=128, out=16, max_in=1024, max_out=64),
    }
    with pytest.raises(MoesimError, match="does not fit"):
        run(scenario, "des")
    res = run({**scenario, "offload": {"enabled": True}}, "des")
    check_requests(res)
    assert res.summary["fetch_frac"] > 0 and (res.steps["fetch_s"] > 0).any()
    assert "expert slots cached" in res.summary["memory"]["mixed"]


def test_disaggregation_transfers_every_kv_cache():
    """Prefill on one TP2 replica, decode on another (dgx-h100): one KV transfer per request with more than
    one output token, from the prefill replica to the decode replica after its first token; a request
    landing on the decode replica waits at most for the step in progress (no ITL beyond transfer + 2 steps)."""
    scenario = {
        "model": "mixtral-8x7b",
        "cluster": "dgx-h100",
        "disaggregation": {
            "prefill": {"replicas": 1, "layout": {"tp": 2}},
            "decode": {"replicas": 1, "layout": {"tp": 2}},
        },
        "workload": poisson(100, 5, inp=256, out=64, max_in=2048),
    }
    res = run(scenario, "des")
    check_requests(res)
    q, tr = res.requests.set_index("request_id"), res.kv_transfers
    multi = q.index[q["output_tokens"] > 1]
    assert len(tr) > 0 and sorted(tr["request_id"]) == sorted(multi)
    assert (tr["src_replica"] == 0).all() and (tr["dst_replica"] == 1).all() and (tr["bytes"] > 0).all()
    assert (q["prefill_replica"] == 0).all() and (q.loc[multi, "replica"] == 1).all()
    assert (tr["start_s"].to_numpy() >= q.loc[tr["request_id"], "first_token_s"].to_numpy()).all()
    assert (q.loc[multi, "ttft_s"] < q.loc[multi, "e2e_s"]).all()
    assert set(res.steps["pool"]) == {"prefill", "decode"}
    land = (tr["start_s"] + tr["duration_s"]).to_numpy() - q.loc[tr["request_id"], "first_token_s"].to_numpy()
    decode_step = res.steps.loc[res.steps["pool"] == "decode", "duration_s"].max()
    assert res.itl.max() <= land.max() + 2 * decode_step + 1e-9
    assert res.summary["littles_law_error"] < 0.02


def test_pipeline_parallel_overlaps_steps():
    """PP2: a new batch starts after the slowest stage, so the replica's steps overlap in time; GPUs are
    busy at most all the time and Little's law still holds on the bookkeeping."""
    res = run({**MIXTRAL_EP8, "layout": {"tp": 1, "pp": 2}, "replicas": 1, "workload": poisson(80, 5)}, "des")
    check_requests(res)
    st = res.steps
    ends = (st["start_s"] + st["duration_s"]).to_numpy()
    assert (st["start_s"].to_numpy()[1:] < ends[:-1]).mean() > 0.3
    assert res.summary["gpu_busy_max"] <= 1.0
    assert res.summary["littles_law_error"] < 0.02


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding"])
def test_replicas_and_routers(router):
    """Four TP2 replicas of Mixtral on a DGX-H100 (replicas: auto)."""
    res = run(
        {**MIXTRAL_EP8, "layout": {"tp": 2}, "router": router, "workload": poisson(120, 10, inp=256, out=64)}, "des"
    )
    check_requests(res)
    replica = res.requests["replica"].to_numpy()
    assert res.summary["replicas"] == 4 and res.summary["gpus"] == 8
    if router == "round_robin":
        assert (replica == np.arange(len(replica)) % 4).all()
    else:
        assert set(replica) == {0, 1, 2, 3}
    assert set(res.steps["replica"]) == {0, 1, 2, 3}
    assert res.summary["littles_law_error"] < 0.02


def test_closed_loop_keeps_concurrency_requests_in_flight():
    """Eight clients, no think time: each sends its next request when its previous one finishes, so at most
    (and at first exactly) eight are in the system, and a new request is admitted within about a step."""
    workload = {
        "arrival": "closed",
        "concurrency": 8,
        "requests": 100,
        "input": {"dist": "lognormal", "mean": 256, "cv": 1.0, "max": 2048},
        "output": {"dist": "lognormal", "mean": 64, "cv": 1.0, "max": 512},
    }
    res = run({**MIXTRAL_EP8, "layout": {"tp": 2}, "replicas": 1, "workload": workload}, "des")
    check_requests(res)
    q = res.requests
    times = np.concatenate([q["arrival_s"], q["finish_s"]])
    delta = np.concatenate([np.ones(len(q)), -np.ones(len(q))])
    order = np.lexsort((delta, times))  # at equal times a finish (-1) goes before the arrival it releases
    assert np.cumsum(delta[order]).max() == 8
    # client c sends requests c, c + 8, c + 16, ..., each when the last chunk of its previous one arrives
    np.testing.assert_array_equal(q["arrival_s"].to_numpy()[8:], q["client_finish_s"].to_numpy()[:-8])
    assert res.summary["queue_mean_s"] <= 2 * res.summary["mean_step_s"]


# ---- 12-13: the command line ------------------------------------------------------------------------------


def _write(path: Path, scenario: dict) -> Path:
    path.write_text(yaml.safe_dump(scenario))
    return path


BAD = {
    "unknown key": ({**MIXTRAL_EP8, "workload": poisson(10, 5), "bogus": 1}, "bogus: unknown key"),
    "negative rate": ({**MIXTRAL_EP8, "workload": poisson(10, -5)}, "workload.rate"),
    "layout does not divide the cluster": (
        {**MIXTRAL_EP8, "layout": {"tp": 1, "pp": 3}, "workload": poisson(10, 5)},
        "does not divide the 8 GPUs",
    ),
    "ep does not divide a stage": (
        {**MIXTRAL_EP8, "layout": {"tp": 1, "dp_attn": 6, "ep": 4}, "workload": poisson(10, 5)},
        "ep=4 does not divide",
    ),
    "does not fit even offloaded": (
        {
            "model": "deepseek-v3",
            "gpu": "RTX-4090",
            "offload": {"enabled": True},
            "workload": poisson(10, 5),
            "precision": {"weights": "bf16"},
        },  # its own fp8_block non-expert weights (17 GiB) would fit in 24 GB
        "even with every expert offloaded",
    ),
    "empty trace": ({**MIXTRAL_EP8, "workload": {"trace": "empty.csv"}}, "empty trace"),
}


@pytest.mark.parametrize("case", BAD)
def test_cli_bad_input_is_one_error_line(capsys, tmp_path, case):
    scenario, text = BAD[case]
    (tmp_path / "empty.csv").write_text("")
    path = _write(tmp_path / "scenario.yaml", scenario)
    out_dir = tmp_path / "out"
    code = main(["simulate", str(path), "--out", str(out_dir), "--json"])
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], cap.err
    assert "Traceback" not in cap.err and cap.out == ""
    assert not out_dir.exists()


SUMMARY_KEYS = {
    "requests",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p99_s",
    "e2e_p50_s",
    "throughput_tok_s",
    "goodput_req_s",
    "s_mbu",
    "s_mfu",
    "usd_per_mtok",
    "simulated_s",
    "wall_s",
}


def test_cli_simulate_json_out_and_trace(capsys, tmp_path):
    path = _write(
        tmp_path / "scenario.yaml",
        {**moderate(200), "workload": poisson(200, 20, max_in=2048), "slo": {"ttft_s": 1.0, "tpot_s": 0.05}},
    )
    out_dir, trace = tmp_path / "run", tmp_path / "traces" / "run.json"
    code = main(["simulate", str(path), "--json", "--out", str(out_dir), "--trace", str(trace)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    s = json.loads(cap.out)  # one JSON object and nothing else
    assert isinstance(s, dict) and set(s) >= SUMMARY_KEYS
    assert s["engine"] == "des" and s["requests"] == s["completed"] == 200
    assert 0 < s["s_mbu"] < 1 and 0 < s["s_mfu"] < 1 and s["usd_per_mtok"] > 0
    assert s["ttft_p50_s"] <= s["ttft_p99_s"] and s["tpot_p50_s"] <= s["tpot_p99_s"]
    for name in ("summary.json", "requests.parquet", "steps.parquet", "latency_cdf.png", "timeline.png"):
        assert (out_dir / name).stat().st_size > 0, name
    assert json.loads((out_dir / "summary.json").read_text())["requests"] == 200
    events = json.loads(trace.read_text())["traceEvents"]
    assert isinstance(events, list) and events

    code = main(["simulate", str(path), "--engine", "analytical", "--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    a = json.loads(cap.out)
    assert a["engine"] == "analytical" and set(a) >= SUMMARY_KEYS and not a["overloaded"]
    assert a["requests"] == 200 and a["throughput_tok_s"] > 0 and a["tpot_p50_s"] > 0
