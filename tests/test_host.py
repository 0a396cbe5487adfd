"""Engine profiles and host time per step (`sim.serving.host`, `StepTimer` with a profile).

Pins: the shipped profiles load with every parameter sourced; bad input is one `MoesimError` each; ``kind: ideal``
reproduces the kernel-only step exactly; eager steps pay one launch per kernel of the op list; decode steps with
CUDA graphs run padded to the next capture size and pay one graph replay; every step's parts sum to its
duration; ``moesim simulate --json`` reports the per-phase breakdown; the Chrome trace draws host slices.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.model.ops import kernel_launches
from moesim.sim.serving.chrome_trace import HOST_TID, write_chrome_trace
from moesim.sim.serving.host import (
    ENGINES_DIR,
    PARAMS,
    EngineProfile,
    engine_profile,
    exposed,
    host_cost,
    launch_pipeline,
)
from moesim.sim.serving.scenario import EngineSpec, parse_scenario
from moesim.sim.serving.serve import load, run
from moesim.sim.serving.steptime import BREAKDOWN_PARTS, StepCost, StepTimer

MIXTRAL_EP8 = {"model": "mixtral-8x7b", "cluster": "dgx-h100", "layout": {"tp": 1, "dp_attn": 8, "ep": 8}}
WORKLOAD = {
    "arrival": "poisson",
    "rate": 20,
    "requests": 120,
    "input": {"dist": "lognormal", "mean": 512, "cv": 1.0, "max": 2048},
    "output": {"dist": "lognormal", "mean": 64, "cv": 1.0, "max": 256},
}


def _timer(profile: EngineProfile | None, seed: int = 0) -> StepTimer:
    built = load({**MIXTRAL_EP8, "workload": WORKLOAD})
    pool = built.pools[0]
    return StepTimer(
        built.model, pool.layout, pool.cluster, built.precision, None, None, None, seed=seed, profile=profile
    )


def _parts_sum(c: StepCost) -> float:
    return c.compute_s + c.comm_s + c.straggler_s + c.fetch_s + c.scheduler_s + c.prepare_s + c.sampling_s + c.launch_s


def _write_profile(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ---- profiles --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_shipped_profiles_load_with_every_parameter_sourced(kind: str) -> None:
    prof = engine_profile(EngineSpec(kind=kind))
    assert prof.kind == kind and prof.cuda_graphs and prof.overlap
    assert set(prof.host) == set(PARAMS)
    raw = yaml.safe_load((ENGINES_DIR / f"{kind}.yaml").read_text())
    for name in PARAMS:  # value, unit and source in the file
        entry = raw["host"][name]
        assert entry["unit"] == "s" and entry["source"] and entry["value"] >= 0
    assert list(prof.capture_sizes) == sorted(prof.capture_sizes) and prof.capture_sizes[0] == 1
    # vLLM's default capture sizes: 1, 2, 4, multiples of 8 to 248, multiples of 16 from 256 to 512
    if kind == "vllm":
        assert prof.capture_sizes == (1, 2, 4, *range(8, 256, 8), *range(256, 513, 16))
        assert prof.mixed_graphs == "piecewise" and prof.stream_chunk_tokens == 1


def test_overrides_and_ideal() -> None:
    prof = engine_profile(EngineSpec(kind="vllm", cuda_graphs=False, host={"launch_s": 1e-5}, stream=False))
    assert not prof.cuda_graphs and prof.host["launch_s"] == 1e-5 and not prof.stream
    assert "override" in prof.sources["launch_s"]
    ideal = engine_profile(EngineSpec(kind="ideal"))
    assert ideal.ideal and all(v == 0 for v in ideal.host.values())
    assert host_cost(ideal, 64, 64, 500) == host_cost(ideal, 1, 1, 1)


def test_profile_file_on_top_of_shipped(tmp_path: Path) -> None:
    path = _write_profile(tmp_path, {"kind": "vllm", "version": "fit", "host": {"launch_s": 3e-6}})
    prof = engine_profile(EngineSpec(profile=path))
    assert prof.version == "fit" and prof.host["launch_s"] == 3e-6
    assert prof.host["scheduler_base_s"] == engine_profile(EngineSpec()).host["scheduler_base_s"]


@pytest.mark.parametrize(
    ("engine", "needle"),
    [
        ({"kind": "tgi"}, "engine.kind"),
        ({"kind": "vllm", "version": "0.1.0"}, "version"),
        ({"host": {"launch_s": -1e-6}}, "negative"),
        ({"host": {"launch_s": float("nan")}}, "launch_s"),
        ({"host": {"launch_s": float("inf")}}, "launch_s"),
        ({"host": {"kernel_s": 1e-6}}, "unknown host parameter"),
    ],
)
def test_bad_engine_input_is_one_error(engine: dict, needle: str) -> None:
    with pytest.raises(MoesimError) as err:
        load(parse_scenario({**MIXTRAL_EP8, "engine": engine, "workload": WORKLOAD}))
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"kind": "tgi"}, "unknown engine 'tgi'"),
        ({"kind": "vllm", "host": {"launch_s": -1.0}}, "negative"),
        ({"kind": "vllm", "host": {"launch_s": ".nan"}}, "not a finite number"),
        ({"kind": "vllm", "host": {"launch_s": {"value": 1.0, "unit": "ms"}}}, "unit"),
        ({"kind": "vllm", "host": {"kernel_s": 1.0}}, "unknown host parameter"),
        ({"kind": "vllm", "settings": {"overlap": True, "graphs": 1}}, "unknown setting"),
        ({"kind": "vllm", "speed": 2}, "unknown key"),
    ],
)
def test_bad_profile_file_is_one_error(tmp_path: Path, data: dict, needle: str) -> None:
    path = _write_profile(tmp_path, data)
    if data.get("host", {}).get("launch_s") == ".nan":
        path_text = Path(path).read_text().replace("'.nan'", ".nan")
        Path(path).write_text(path_text)
    with pytest.raises(MoesimError) as err:
        engine_profile(EngineSpec(profile=path))
    assert needle in str(err.value)


def test_cli_refuses_unknown_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump({**MIXTRAL_EP8, "engine": {"kind": "sglang", "version": "9.9"}, "workload": WORKLOAD}))
    assert main(["simulate", str(sc), "--json"]) != 0
    err = capsys.readouterr().err
    assert "error:" in err and "version" in err and "Traceback" not in err


# ---- the step ----------------------------------------------------------------------------------------------------


def test_ideal_equals_the_kernel_only_step() -> None:
    """`kind: ideal` gives exactly the step of a timer with no engine profile (the computation before host time)."""
    old, ideal = _timer(None, seed=3), _timer(engine_profile(EngineSpec(kind="ideal")), seed=3)
    rng = np.random.default_rng(0)
    for seqs in (1, 7, 30, 200):
        cached = rng.integers(0, 2000, size=seqs)
        for new in (np.ones(seqs, np.int64), rng.integers(1, 300, size=seqs)):
            a, b = old.sample(new, cached), ideal.sample(new, cached)
            assert a.duration_s == b.duration_s and a.compute_s == b.compute_s and a.pairs == b.pairs
            assert b.duration_s == pytest.approx(a.compute_s + a.comm_s + a.straggler_s + a.fetch_s, rel=1e-12)
            assert b.host_s == 0 and b.launch_s == 0 and b.graphs == 0
            ea, eb = old.expected(new, cached), ideal.expected(new, cached)
            assert ea.duration_s == eb.duration_s
    run_a = old.sample_run(np.ones(16, np.int64), np.arange(5)[:, None] + np.full((5, 16), 100))
    run_b = ideal.sample_run(np.ones(16, np.int64), np.arange(5)[:, None] + np.full((5, 16), 100))
    assert [c.duration_s for c in run_a] == [c.duration_s for c in run_b]


def test_eager_step_pays_one_launch_per_kernel() -> None:
    prof = engine_profile(EngineSpec(kind="vllm", cuda_graphs=False))
    timer = _timer(prof)
    new, cached = np.ones(30, np.int64), np.full(30, 1000, np.int64)
    c = timer.expected(new, cached)
    est = timer.estimate(__import__("moesim.model", fromlist=["Batch"]).Batch(tuple(new), tuple(cached), "decode"))
    assert c.launches == kernel_launches(est.ops) > 100 and c.graphs == 0 and c.padded_batch == 30
    assert c.launch_cpu_s == pytest.approx(c.launches * prof.host["launch_s"])
    # DP attention over 8 ranks, each its own scheduler: the busiest rank's ceil(30 / 8) = 4 sequences and tokens
    assert timer.host_shape(30, 30) == (4, 4)
    assert c.scheduler_cpu_s == pytest.approx(prof.host["scheduler_base_s"] + 4 * prof.host["scheduler_per_seq_s"])
    assert c.prepare_cpu_s == pytest.approx(prof.host["prepare_base_s"] + 4 * prof.host["prepare_per_token_s"])
    assert c.sampling_cpu_s == pytest.approx(prof.host["sampling_base_s"] + 4 * prof.host["sampling_per_seq_s"])
    # no overlap: scheduler, prepare and sampling add; the forward is the launch pipeline, between
    # max(GPU, launches) and their sum
    serial = EngineProfile(**{**prof.__dict__, "overlap": False})
    gpu = _timer(None).expected(new, cached).duration_s
    for launch_s in (prof.host["launch_s"], 1e-4):
        slow = EngineProfile(**{**serial.__dict__, "host": {**serial.host, "launch_s": launch_s}})
        s = _timer(slow).expected(new, cached)
        rest = s.scheduler_cpu_s + s.prepare_cpu_s + s.sampling_cpu_s
        assert s.scheduler_s + s.prepare_s + s.sampling_s == pytest.approx(rest)
        lo, hi = gpu + rest + max(s.launch_cpu_s - gpu, 0.0), gpu + rest + s.launch_cpu_s
        assert lo - 1e-12 <= s.duration_s <= hi + 1e-12
    assert s.launch_s > s.launch_cpu_s - gpu > 0  # launch-bound at 100 us a launch: the GPU starves
    # with overlap the step is max(GPU, all CPU work)
    over = EngineProfile(**{**slow.__dict__, "overlap": True})
    c = _timer(over).expected(new, cached)
    assert c.duration_s == pytest.approx(max(gpu, c.host_s))


def test_decode_graph_runs_padded_and_replays_once() -> None:
    prof = engine_profile(EngineSpec(kind="vllm"))
    timer, ideal = _timer(prof), _timer(None)
    new, cached = np.ones(30, np.int64), np.full(30, 1000, np.int64)
    c = timer.expected(new, cached)
    assert c.padded_batch == 32 and c.graphs == 1 and c.launches == 0
    assert c.launch_cpu_s == pytest.approx(prof.host["graph_replay_s"])
    # the GPU time of 32 sequences, the 2 dummies holding no cache
    parts = ideal._compute(np.ones(32, np.int64), np.concatenate([cached, [0, 0]]), True)
    assert c.compute_s + c.comm_s == pytest.approx(parts[0] + parts[1] + parts[2] + parts[3], rel=1e-12)
    unpadded = ideal.expected(new, cached)
    assert c.flops > unpadded.flops and c.compute_s + c.comm_s > unpadded.duration_s
    sampled = timer.sample(new, cached)
    assert sampled.padded_batch == 32 and sampled.pairs == 32 * 2 * 32  # dummies are routed: 32 tokens x top-2 x L
    # 30 sequences over 8 DP ranks: each rank replays the busiest rank's (4 sequences) capture size, 4
    assert timer._padded((30, 30, "decode")) == 8 * prof.padded_batch(4) == 32
    # beyond the largest capture size on a rank (600 each): eager, unpadded
    big = timer.expected(np.ones(8 * 600, np.int64), np.full(8 * 600, 100, np.int64))
    assert big.padded_batch == 8 * 600 and big.graphs == 0 and big.launches > 0
    # prefill of at most 512 tokens: piecewise graphs (layers + 1) with the attention launched eagerly
    pre = timer.expected(np.array([400]), np.array([0]))
    assert pre.graphs == timer.n_layers + 1 and 0 < pre.launches < 200
    long = timer.expected(np.array([4000]), np.array([0]))
    assert long.graphs == 0 and long.launches > pre.launches


@pytest.mark.parametrize("overlap", [False, True])
def test_breakdown_sums_to_duration(overlap: bool) -> None:
    base = engine_profile(EngineSpec(kind="sglang", cuda_graphs=False))
    prof = EngineProfile(**{**base.__dict__, "overlap": overlap, "host": {**base.host, "launch_s": 3e-5}})
    timer = _timer(prof)
    for c in [
        timer.sample(np.ones(40, np.int64), np.full(40, 700)),
        timer.sample(np.array([1, 1, 900]), np.array([10, 20, 0])),
        *timer.sample_run(np.ones(8, np.int64), np.arange(4)[:, None] + np.full((4, 8), 50)),
        timer.expected(np.array([2000]), np.array([0])),
    ]:
        assert _parts_sum(c) == pytest.approx(c.duration_s, rel=1e-12)
        assert c.host_exposed_s <= c.host_s + 1e-15


def test_launch_pipeline() -> None:
    # 3 kernels of 1 s each, launched 2 s apart: the GPU starves (ends at 2 + 1, 4 + 1, 6 + 1)
    assert launch_pipeline([(2.0, 1.0, 3)]) == 7.0
    # launched 0.1 s apart: the CPU runs ahead, the GPU is the bottleneck
    assert launch_pipeline([(0.1, 1.0, 3)]) == pytest.approx(3.1)
    # a long kernel hides the launches of the short ones after it
    assert launch_pipeline([(0.5, 5.0, 1), (0.5, 0.1, 4)]) == pytest.approx(5.9)


def test_exposed_rules() -> None:
    prof = engine_profile(EngineSpec(kind="vllm", cuda_graphs=False))
    hc = host_cost(prof, 10, 10, 100)
    assert exposed(prof, 1.0, hc) == (0.0, 0.0, 0.0, 0.0)  # overlap: hidden behind a long GPU step
    ex = exposed(prof, 0.0, hc)
    assert sum(ex) == pytest.approx(hc.total_s)


# ---- summary, table and trace ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eager_run():
    return run({**MIXTRAL_EP8, "workload": WORKLOAD, "engine": {"kind": "sglang", "cuda_graphs": False}}, "des")


def test_steps_table_and_summary_breakdown(eager_run) -> None:
    steps = eager_run.steps
    parts = sum(steps[c] for cols in BREAKDOWN_PARTS.values() for c in cols)
    assert np.allclose(parts, steps["duration_s"], rtol=1e-9, atol=1e-12)
    assert (steps["launches"] > 0).all() and (steps["graphs"] == 0).all()
    bd = eager_run.summary["step_breakdown"]
    assert {"decode", "mixed"} <= set(bd)
    for entry in bd.values():
        assert sum(entry[k] for k in BREAKDOWN_PARTS) == pytest.approx(entry["step_s"], rel=1e-9)
        assert sum(entry["share"].values()) == pytest.approx(1.0)
    assert eager_run.summary["engine_profile"]["mixed"]["kind"] == "sglang"


def test_analytical_reports_the_breakdown() -> None:
    res = run({**MIXTRAL_EP8, "workload": WORKLOAD, "engine": {"kind": "vllm", "cuda_graphs": False}}, "analytical")
    bd = res.summary["step_breakdown"]
    assert bd["decode"]["launches"] > 0 and bd["decode"]["host_cpu_s"] > 0
    assert sum(bd["decode"][k] for k in BREAKDOWN_PARTS) == pytest.approx(bd["decode"]["step_s"], rel=1e-9)
    # the decode step is the mean over the batch a request decodes in (`analytical.mixed_decode`), the breakdown's at
    # the fixed point's batch and the summary's at the iterate before it: equal within the fixed point's tolerance
    assert bd["decode"]["step_s"] == pytest.approx(res.summary["decode_step_s"], rel=1e-4)


def test_cli_json_has_the_breakdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump({**MIXTRAL_EP8, "workload": {**WORKLOAD, "requests": 40}}))
    assert main(["simulate", str(sc), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    dec = summary["step_breakdown"]["decode"]
    assert {*BREAKDOWN_PARTS, "share", "step_s", "graphs", "padded_batch"} <= set(dec)
    assert dec["graphs"] == 1.0  # vLLM by default: decode steps replay a captured graph


def test_trace_has_host_slices(eager_run, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    write_chrome_trace(eager_run.steps, path, gpus_per_replica=8, max_steps=200)
    events = json.loads(path.read_text())["traceEvents"]
    host = [e for e in events if e.get("ph") == "X" and e["tid"] == HOST_TID]
    assert {e["name"] for e in host} == {"schedule", "prepare inputs", "launch", "sampling"}
    assert all(e["cat"] == "host" and e["dur"] >= 0 for e in host)
    names = [e for e in events if e.get("ph") == "M" and e["tid"] == HOST_TID and e["name"] == "thread_name"]
    assert names and names[0]["args"]["name"] == "host (CPU)"
    # host slices of a step stay inside it
    steps = [e for e in events if e.get("cat") == "step" and e["tid"] == 1]
    first = steps[0]
    end = first["ts"] + first["dur"]
    inside = [e for e in host if e["pid"] == first["pid"] and first["ts"] - 1e-3 <= e["ts"] < end - 1e-3]
    assert len(inside) == 4 and max(e["ts"] + e["dur"] for e in inside) <= end + 1e-3
