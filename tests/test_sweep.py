"""Sweeps: the file, its expansion and pruning, evaluation, capacity search, shards and resume, Dask, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.sim.sweeps.sweep import read_shards, run_sweep
from moesim.sim.sweeps.sweep_eval import evaluate, meets
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep, read_sweep

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "model": "mixtral-8x7b",
    "gpu": "H100-SXM",
    "workload": {
        "arrival": "poisson",
        "requests": 200,
        "input": {"dist": "lognormal", "mean": 256, "cv": 1.0},
        "output": {"dist": "lognormal", "mean": 64, "cv": 1.0},
    },
    "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
}


def sweep(**over: object) -> dict:
    d = {
        "name": "t",
        "base": BASE,
        "axes": {
            "gpus": [2, 4],
            "layout": [{"tp": "gpus"}, {"dp_attn": "gpus", "ep": "gpus"}],
            "precision": ["bf16", "fp8"],
            "rate": [1, 8],
        },
    }
    d.update(over)
    return d


def write(tmp_path: Path, data: dict, name: str = "sweep.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


# ---------------------------------------------------------------- the file and its points


def test_expansion_counts_labels_and_stable_ids():
    spec = parse_sweep(sweep())
    exp = expand(spec)
    assert exp.total == 16 and len(exp.points) == 16 and exp.pruned == {}
    ids = [p.point_id for p in exp.points]
    assert len(set(ids)) == 16
    assert [p.point_id for p in expand(parse_sweep(sweep())).points] == ids  # same sweep, same ids
    p = exp.points[-1]
    assert (p.values["gpus"], p.values["ep"], p.values["dp_attn"], p.values["replicas"]) == (4, 4, 4, 1)
    assert p.scenario["workload"]["rate"] == 8.0 and p.scenario["nodes"] == 1 and p.scenario["gpus_per_node"] == 4
    # the rates of one configuration share its key; configurations differ
    assert exp.points[0].config_key == exp.points[1].config_key != exp.points[2].config_key
    # a rate range expands on a log scale
    spec = parse_sweep(sweep(axes={"gpus": [2], "layout": [{"tp": 2}], "rate": {"start": 1, "stop": 100, "num": 3}}))
    assert [p.values["rate"] for p in expand(spec).points] == [1.0, 10.0, 100.0]


def test_constraints_prune_with_reasons():
    axes = {
        "gpus": [1, 3, 8],
        "layout": [{"tp": 1}, {"tp": 8}, {"dp_attn": "gpus", "ep": "gpus"}],
        "precision": ["bf16", "fp8"],
        "rate": [1],
    }
    exp = expand(parse_sweep(sweep(axes=axes)))
    shapes = {(p.values["gpus"], p.values["layout"], p.values["precision"]) for p in exp.points}
    # bf16 Mixtral (~87 GiB) does not fit one 80 GiB GPU, fp8 does; EP3 does not divide 8 experts; TP8 needs 8 GPUs
    assert shapes == {
        (1, "TP1", "fp8"),
        (3, "TP1", "fp8"),
        (8, "TP1", "fp8"),
        (8, "TP8", "bf16"),
        (8, "TP8", "fp8"),
        (8, "TP1xDP8 EP8", "bf16"),
        (8, "TP1xDP8 EP8", "fp8"),
    }
    # bf16 on 1 GPU: TP1 and DP1 EP1 (the same layout) by memory; fp8 on 1 GPU: DP1 EP1 repeats TP1
    assert exp.pruned == {"memory_fits": 4, "layout_divides": 6, "duplicate": 1}
    assert sum(exp.pruned.values()) + len(exp.points) == exp.total == 18
    # without the memory constraint the bf16 one-GPU point stays
    exp = expand(parse_sweep(sweep(axes=axes, constraints={"memory_fits": False})))
    assert (1, "TP1", "bf16") in {(p.values["gpus"], p.values["layout"], p.values["precision"]) for p in exp.points}


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"axes": {"gpu": []}}, "axis 'gpu' is empty"),
        ({"axes": {"rate": []}}, "axis 'rate' is empty"),
        ({"axes": {"gpu": ["H100-SXM", "B300X"]}}, "axis 'gpu': unknown GPU"),
        ({"axes": {"model": ["mixtral-8x7b", "gpt-9"]}}, "axis 'model': unknown model 'gpt-9'"),
        ({"axes": {"colour": ["red"]}}, "unknown axis 'colour'"),
        ({"axes": {"rate": [1, -2]}}, "rates must be > 0"),
        ({"axes": {"precision": ["fp9"]}}, "unknown weight dtype 'fp9'"),
        ({"axes": {"gpus": [1], "precision": ["bf16"], "rate": [1]}}, "the constraints prune all 2 points"),
        ({"capacity": {"ttft_s": 1}}, "capacity search finds the rate itself"),
        ({"engine": "fast"}, "engine"),
    ],
)
def test_bad_sweeps_give_one_clear_line(over, message, tmp_path, capsys):
    data = sweep()
    data.update(over) if "axes" not in over else data.update({"axes": {**data["axes"], **over["axes"]}})
    if over.get("axes", {}).get("colour"):
        data["axes"] = over["axes"]
    with pytest.raises(MoesimError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(parse_sweep(data))
    out = tmp_path / "out"
    code = main(["sweep", str(write(tmp_path, data)), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert not out.exists()  # nothing written for a sweep that cannot run


def test_read_sweep_resolves_a_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    spec = read_sweep(write(tmp_path, sweep(base="base.yaml")))
    assert len(expand(spec).points) == 16


# ---------------------------------------------------------------- evaluation


def test_analytical_point_matches_the_analytical_model():
    from moesim.sim.serving.analytical import Analytical
    from moesim.sim.serving.scenario import build, parse_scenario

    spec = parse_sweep(sweep())
    p = expand(spec).points[5]
    row = evaluate(p, spec)
    assert row["status"] == "ok", row["error"]
    direct = Analytical(build(parse_scenario(p.scenario)), spec.seed).summary(p.values["rate"])
    for k in ("ttft_p99_s", "tpot_p50_s", "throughput_tok_s", "s_mbu", "usd_per_mtok"):
        assert row[k] == pytest.approx(direct[k], rel=1e-12), k
    assert row["usd_per_hour"] == pytest.approx(p.values["gpus"] * 3.49, rel=0.2)  # H100 preset cloud price


def test_des_capacity_search_brackets_the_slo(tmp_path):
    data = sweep(
        axes={"gpus": [2], "layout": [{"tp": 2}], "precision": ["fp8"]},
        engine="des",
        capacity={"percentile": 90, "ttft_s": 0.2, "tpot_s": 0.02, "duration_s": 5, "tolerance": 0.2},
    )
    spec = parse_sweep(data)
    (p,) = expand(spec).points
    row = evaluate(p, spec)
    assert row["status"] == "ok", row["error"]
    lo, hi = row["capacity_req_s"], row["capacity_fail_req_s"]
    assert 0 < lo < hi <= lo * 1.2 + 1e-9 and row["capacity_runs"] >= 2
    assert row["capacity_tok_s"] > 0 and row["capacity_ttft_s"] <= 0.2
    # the same seeded simulations, each the search's window of arrivals: the low end meets the SLOs, the high end not
    from moesim.sim.sweeps.sweep_eval import _analytical, _built, _des, des_requests, probe_horizon

    b, cap = _built(p, spec), spec.capacity
    window = probe_horizon(cap, _analytical(p, spec), row["capacity_analytical_req_s"], 0.2)
    assert row["capacity_horizon_s"] == pytest.approx(window, rel=0.01) and window >= 5
    assert meets(_des(b, lo, spec.seed, des_requests(cap, lo, window)), 90, 0.2, 0.02)
    assert not meets(_des(b, hi, spec.seed, des_requests(cap, hi, window)), 90, 0.2, 0.02)


# ---------------------------------------------------------------- running, shards, resume


def test_run_writes_results_and_resumes_without_repeats(tmp_path):
    f = write(tmp_path, sweep())
    out = tmp_path / "out"
    res = run_sweep(f, out, workers=1, flush_s=0.0)
    df = res.results
    assert len(df) == 16 and df["point_id"].is_unique and set(df["status"]) <= {"ok", "overloaded"}
    assert res.summary["evaluated_now"] == 16 and res.summary["shards_written"] >= 2
    for name in ("results.parquet", "cap_table.csv", "pareto.parquet", "summary.json", "manifest.json"):
        assert (out / name).is_file(), name
    assert pd.read_parquet(out / "results.parquet")["accuracy"].notna().all()  # MMLU for bf16 and fp8 Mixtral
    # drop one shard: exactly its points run again, nothing else
    shards = sorted((out / "shards").glob("part-*.parquet"))
    lost = set(pd.read_parquet(shards[0])["point_id"])
    shards[0].unlink()
    res2 = run_sweep(f, out, workers=1)
    assert res2.summary["evaluated_now"] == len(lost) and res2.summary["done_before"] == 16 - len(lost)
    assert len(res2.results) == 16 and res2.results["point_id"].is_unique
    cols = ["point_id", "ttft_p99_s", "throughput_tok_s"]
    pd.testing.assert_frame_equal(res2.results[cols], df[cols])  # the same figures, in the sweep's order
    # a different sweep into the same folder is refused
    with pytest.raises(MoesimError, match="holds the results of a different sweep"):
        run_sweep(write(tmp_path, sweep(name="other"), "other.yaml"), out)


#: The sweep CLI in a subprocess, made slow and stoppable through a test-only wrapper of its one-worker loop:
#: each point takes at least 0.25 s (so the CLI's first flush, after 2 s, comes before all 12 points are done on
#: any machine), and once a shard exists the process evaluates one more point (kept unflushed in its buffer,
#: so the kill loses it) and then holds, after touching the gate file, until it is killed.
_SLOW_SWEEP = """
import sys, time
from pathlib import Path
import moesim.sim.sweeps.sweep, moesim.sim.sweeps.sweep_eval
from moesim.dashboard.cli import main

sweep_file, out, gate = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
real = moesim.sim.sweeps.sweep_eval.evaluate_task
after_shard = 0

def slow(task, spec):
    global after_shard
    if (out / "shards").is_dir() and any((out / "shards").glob("part-*.parquet")):
        after_shard += 1
        if after_shard > 1:
            gate.touch()
            time.sleep(600)
    rows = real(task, spec)
    time.sleep(0.25)
    return rows

moesim.sim.sweeps.sweep.evaluate_task = moesim.sim.sweeps.sweep_eval.evaluate_task = slow
sys.exit(main(["sweep", sweep_file, "--out", str(out), "--workers", "1", "--json"]))
"""


def test_kill_9_mid_sweep_loses_nothing_and_repeats_nothing(tmp_path):
    """A real process killed with SIGKILL mid-sweep (a shard written, points left, one point unflushed), resumed."""
    data = sweep(
        engine="des",
        axes={"gpus": [2, 4], "layout": [{"tp": "gpus"}], "precision": ["bf16", "fp8"], "rate": [2, 4, 8]},
    )
    data["base"] = {**BASE, "workload": {**BASE["workload"], "requests": 40}}
    f = write(tmp_path, data)
    out, gate = tmp_path / "out", tmp_path / "holding"
    cmd = [sys.executable, "-c", _SLOW_SWEEP, str(f), str(out), str(gate)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and not gate.exists():
            time.sleep(0.05)
        if not gate.exists() or proc.poll() is not None:
            proc.kill()
            err = proc.communicate()[1].decode()[-2000:]
            pytest.fail(f"the sweep was not held mid-work (exit {proc.returncode}): {err}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "shards").glob("part-*.parquet")}
    done = read_shards(out)
    assert 0 < len(done) < 12 and done["point_id"].is_unique
    # resume: only the missing points run, the finished shards are untouched
    res = run_sweep(f, out, workers=1)
    assert res.summary["done_before"] == len(done) and res.summary["evaluated_now"] == 12 - len(done)
    expected = {p.point_id for p in expand(read_sweep(f)).points}
    assert set(res.results["point_id"]) == expected and res.results["point_id"].is_unique
    shards_now = pd.concat([pd.read_parquet(p) for p in (out / "shards").glob("part-*.parquet")])
    assert shards_now["point_id"].is_unique and len(shards_now) == 12  # no point stored twice
    for name, digest in before.items():
        assert hashlib.sha256((out / "shards" / name).read_bytes()).hexdigest() == digest
    assert not list((out / "shards").glob(".*.tmp"))


def test_local_processes_and_dask_give_the_same_rows(tmp_path):
    distributed = pytest.importorskip("distributed")
    f = write(tmp_path, sweep())
    one = run_sweep(f, tmp_path / "one", workers=1, post=False).results
    two = run_sweep(f, tmp_path / "two", workers=2, post=False).results
    # a point that raises is recorded with status "error" and no figures: say why first (spawned workers import the
    # code afresh from disk, so a source file edited while the test runs shows up here, in them only)
    for name, rows in (("workers=1", one), ("workers=2", two)):
        assert not (rows["status"] == "error").any(), (name, sorted(set(rows.loc[rows["status"] == "error", "error"])))
    cols = ["point_id", "label", "ttft_p99_s", "tpot_p50_s", "throughput_tok_s", "usd_per_mtok", "status"]
    pd.testing.assert_frame_equal(one[cols], two[cols])
    with distributed.LocalCluster(
        host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        res = run_sweep(f, tmp_path / "dask", dask=cluster.scheduler_address, post=False)
    assert res.summary["workers"] == 2 and res.summary["dask"].startswith("tcp://127.0.0.1:")
    pd.testing.assert_frame_equal(one[cols], res.results[cols])


def test_rows_do_not_depend_on_what_a_worker_solved_before():
    """A point's row is a function of the point: solved cold, or after the same configurations at other rates and
    in reverse order, every float column is the same to the bit (a worker's memos and fitted classes carry over
    from one task to the next; `assert_frame_equal` above allows 1e-5). Before, the fitted step classes and the
    prompts' priced work followed whatever shape or rate asked first."""
    from moesim.sim.serving import steparray
    from moesim.sim.sweeps import sweep_eval
    from moesim.sim.sweeps.sweep import _tasks

    def rows(spec, order=1):
        tasks = _tasks(expand(spec).points, spec)
        return {r["point_id"]: r for t in tasks[::order] for r in sweep_eval.evaluate_task(t, spec)}

    spec = parse_sweep(sweep(axes={**sweep()["axes"], "rate": [1, 4, 8]}))
    sweep_eval._CACHE.clear()
    steparray._CLASSES.clear()
    cold = rows(spec)
    sweep_eval._CACHE.clear()
    steparray._CLASSES.clear()
    rows(parse_sweep(sweep(axes={**sweep()["axes"], "rate": [0.5, 30]})), -1)  # warm-up: other rates, reversed
    sweep_eval._CACHE.clear()  # the models are built again; the classes fitted in the warm-up stay
    warm = rows(spec, -1)
    floats = [k for k, v in next(iter(cold.values())).items() if isinstance(v, float) and k != "wall_s"]
    assert len(floats) > 10 and len(cold) == 24
    for pid, row in cold.items():
        assert {k: row[k] for k in floats} == pytest.approx(
            {k: warm[pid][k] for k in floats}, rel=0, abs=0, nan_ok=True
        )


def test_unreachable_dask_scheduler_is_one_line(tmp_path, capsys):
    pytest.importorskip("distributed")
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = write(tmp_path, sweep())
    with pytest.raises(MoesimError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        run_sweep(f, tmp_path / "out", dask=f"tcp://127.0.0.1:{port}", dask_timeout_s=1.0)
    assert not (tmp_path / "out").exists()  # nothing written before the cluster answered


# ---------------------------------------------------------------- the command


def test_cli_json_and_help(tmp_path, capsys):
    f = write(tmp_path, sweep(target={"throughput_tok_s": 400}))
    assert main(["sweep", str(f), "--out", str(tmp_path / "o"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["points"] == 16 and s["evaluated_now"] == 16 and s["status"]["ok"] >= 1
    assert s["cheapest"]["label"] and s["cheapest"]["total_usd_per_hour"] > 0
    assert "results.parquet" in s["files"] and "pareto.png" in s["files"]
    assert main(["sweep", "--help"]) == 0
    assert "Example: moesim sweep" in " ".join(capsys.readouterr().out.split())


def test_examples_expand():
    mix = expand(read_sweep(REPO / "examples" / "sweep-mixtral-gpu-choice.yaml"))
    assert {p.values["gpu"] for p in mix.points} == {"A100-SXM-80GB", "H100-SXM", "H200-SXM", "L40S"}
    assert {p.values["precision"] for p in mix.points} == {"bf16", "fp8", "int4"}
    ds = expand(read_sweep(REPO / "examples" / "sweep-deepseek-v3-layouts.yaml"))
    assert {p.values["gpus"] for p in ds.points} == {16, 24, 32, 48, 64} and ds.pruned["layout_divides"] > 0


def test_placement_axis_changes_the_expert_map():
    data = sweep(
        axes={
            "gpus": [8],
            "layout": [{"dp_attn": 8, "ep": 8}],
            "precision": ["fp8"],
            "routing_skew": [1.2],
            "placement": ["default", "eplb", {"method": "eplb", "redundant": 8}],
            "rate": [4],
        }
    )
    spec = parse_sweep(data)
    pts = expand(spec).points
    assert [p.values["placement"] for p in pts] == ["default", "eplb", "eplb+8"]
    from moesim.sim.sweeps.sweep_eval import _built

    maps = [_built(p, spec).phys_to_log for p in pts]
    assert maps[0] is None and maps[1].shape == (32, 8) and maps[2].shape == (32, 16)
    rows = [evaluate(p, spec) for p in pts]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    # the map reaches the step: with a second slot per GPU the decode step's busiest GPU (a few tokens, E[max active
    # slots] near 2) reads two experts' weights where it read one, which the better balance does not buy back
    assert rows[2]["tpot_p50_s"] > rows[0]["tpot_p50_s"]


def test_an_analytical_step_does_not_depend_on_what_its_timer_saw_before():
    """Workers share step timers between configurations; a step's figures must not depend on the order."""
    import numpy as np

    from moesim.sim.serving.engine import make_timer, replica_capacity
    from moesim.sim.sweeps.sweep_eval import _built

    spec = parse_sweep(sweep(axes={"gpus": [2], "layout": [{"tp": 2}], "precision": ["fp8"], "rate": [4]}))
    b = _built(expand(spec).points[0], spec)
    pool = b.pools[0]

    def timer():
        return make_timer(b, pool, replica_capacity(b, pool), 0)

    def batch(chunk: int) -> tuple[np.ndarray, np.ndarray]:  # 10 decoders at 300 tokens and one prompt chunk
        return np.array([1] * 10 + [chunk]), np.array([300] * 10 + [0])

    fresh = timer().expected(*batch(260)).duration_s
    t = timer()
    t.expected(*batch(256))  # a batch in the same memo bucket first
    assert t.expected(*batch(260)).duration_s == fresh


def test_tasks_keep_configurations_built_alike_in_one_task():
    """`sweep._tasks`: an analytical sweep's configurations that differ only in their batch limit or workload (one
    `timer_key`) go to one task, each configuration's rates together, so one worker builds their step timers once;
    other configurations go to other tasks; a discrete-event sweep without a capacity search keeps one point per
    task. Every point is in exactly one task."""
    from moesim.sim.sweeps.sweep import _tasks
    from moesim.sim.sweeps.sweep_eval import timer_key

    axes = {
        "gpus": [2],
        "layout": [{"tp": "gpus"}],
        "precision": ["bf16", "fp8"],
        "max_batch": [64, 256],
        "rate": [1, 2, 4],
    }
    spec = parse_sweep(sweep(axes=axes))
    points = expand(spec).points
    tasks = _tasks(points, spec)
    assert sorted(p.point_id for t in tasks for p in t) == sorted(p.point_id for p in points)
    assert len(tasks) == 2 and all(len(t) == 6 for t in tasks)
    for t in tasks:
        assert len({timer_key(p) for p in t}) == 1 and len({p.config_key for p in t}) == 2
        configs = [p.config_key for p in t]
        assert configs == sorted(configs, key=configs.index)  # each configuration's points are contiguous
    assert len({timer_key(t[0]) for t in tasks}) == 2
    des = parse_sweep(sweep(axes=axes, engine="des"))
    assert [len(t) for t in _tasks(expand(des).points, des)] == [1] * 12
