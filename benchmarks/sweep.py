"""Benchmark section 10: sweeps. Analytical points per second per core, a discrete-event capacity sweep
on local processes and on a Dask LocalCluster, and resume after kill -9.

- Analytical: `examples/sweep-mixtral-gpu-choice.yaml` (every point a rate of a configuration) in this
  process (one core), timed from the first point to the last (expansion timed apart), with the shards
  written as usual.
- Discrete-event capacity search: `benchmarks/sweep-des-capacity.yaml` (216 Mixtral-8x7B configurations,
  each a bisection on seeded simulations), with 2 local worker processes, then on a 2-worker Dask
  `LocalCluster` on 127.0.0.1 (one thread per worker).
- Resume: the discrete-event sweep of `tests/test_sweep.py` style, started as a real process, killed with
  SIGKILL once its first shard lands, then run again; points lost and points stored twice are counted.

Run: ``python -m benchmarks.sweep [--quick]`` (or ``make bench``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from moesim.sim.sweeps.sweep import read_shards, run_sweep  # noqa: E402
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep, read_sweep  # noqa: E402


def _analytical(tmp: Path) -> dict:
    spec = read_sweep(ROOT / "examples" / "sweep-mixtral-gpu-choice.yaml")
    t0 = time.perf_counter()
    exp = expand(spec)
    expand_s = time.perf_counter() - t0
    res = run_sweep(spec, tmp / "analytical", workers=1, post=False)
    s = res.summary
    configs = res.results["config_key"].nunique()
    return {
        "points": s["points"],
        "configurations": int(configs),
        "expand_s": expand_s,
        "expand_points_per_s": len(exp.points) / expand_s,
        "run_s": s["run_s"],
        "points_per_s_per_core": s["points_per_s"],
        "status": s["status"],
    }


def _des(tmp: Path, quick: bool) -> dict:
    spec_path = ROOT / "benchmarks" / "sweep-des-capacity.yaml"
    spec = read_sweep(spec_path)
    if quick:  # 12 configurations
        data = yaml.safe_load(spec_path.read_text())
        data["axes"] |= {"gpu": ["H100-SXM"], "gpus": [2, 8], "max_batch": [256], "routing_skew": [0]}
        data["axes"]["precision"] = ["fp8", "bf16"]
        spec = parse_sweep(data)
    out: dict = {"points": len(expand(spec).points)}
    res = run_sweep(spec, tmp / "des-local", workers=2)
    df = res.results
    out["local_s"] = res.summary["run_s"]
    out["status"] = res.summary["status"]
    out["des_runs"] = int(df["capacity_runs"].sum())
    out["runs_per_point"] = float(df["capacity_runs"].mean())
    found = df["capacity_req_s"].notna()
    out["found"] = int(found.sum())
    ratio = (df.loc[found, "capacity_req_s"] / df.loc[found, "capacity_analytical_req_s"]).dropna()
    out["des_over_analytical_median"] = float(ratio.median()) if len(ratio) else None
    out["des_over_analytical_range"] = (float(ratio.min()), float(ratio.max())) if len(ratio) else None
    out["cheapest"] = (
        res.summary.get("cap_table_top", [{}])[0].get("label") if res.summary.get("cap_table_top") else None
    )
    try:
        from distributed import LocalCluster
    except ImportError:
        out["dask_s"] = None
        return out
    with LocalCluster(
        host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        res_d = run_sweep(spec, tmp / "des-dask", dask=cluster.scheduler_address)
    out["dask_s"] = res_d.summary["run_s"]
    cols = ["point_id", "capacity_req_s"]
    a = df[cols].set_index("point_id")["capacity_req_s"]
    b = res_d.results[cols].set_index("point_id")["capacity_req_s"].reindex(a.index)
    out["dask_same_results"] = bool(((a == b) | (a.isna() & b.isna())).all())
    return out


def _resume(tmp: Path) -> dict:
    data = {
        "name": "resume",
        "base": {
            "model": "mixtral-8x7b",
            "gpu": "H100-SXM",
            "workload": {
                "arrival": "poisson",
                "requests": 60,
                "input": {"dist": "lognormal", "mean": 256, "cv": 1.0},
                "output": {"dist": "lognormal", "mean": 64, "cv": 1.0},
            },
        },
        "axes": {"gpus": [2, 4, 8], "layout": [{"tp": "gpus"}], "precision": ["bf16", "fp8"], "rate": [2, 4, 8, 16]},
        "engine": "des",
    }
    f = tmp / "resume.yaml"
    f.write_text(yaml.safe_dump(data))
    out_dir = tmp / "resume"
    cmd = [sys.executable, "-m", "moesim.dashboard.cli", "sweep", str(f), "--out", str(out_dir), "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((out_dir / "shards").glob("part-*")):
        time.sleep(0.05)
    if proc.poll() is not None:
        raise RuntimeError(f"the sweep to kill exited first with code {proc.returncode}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_shards(out_dir)
    res = run_sweep(f, out_dir, workers=1, post=False)
    stored = pd.concat([pd.read_parquet(p) for p in (out_dir / "shards").glob("part-*.parquet")])
    expected = {p.point_id for p in expand(read_sweep(f)).points}
    return {
        "points": len(expected),
        "done_at_kill": len(before),
        "evaluated_on_resume": res.summary["evaluated_now"],
        "lost": len(expected - set(stored["point_id"])),
        "stored_twice": int(stored["point_id"].duplicated().sum()),
    }


def bench_sweep(quick: bool = False) -> tuple[str, dict]:
    """Section 10 (see the module docstring)."""
    tmp = Path(tempfile.mkdtemp(prefix="moesim-bench-sweep-"))
    try:
        r = _resume(tmp)
        print(f"resume: {r}", file=sys.stderr, flush=True)
        a = _analytical(tmp)
        print(f"analytical: {a}", file=sys.stderr, flush=True)
        d = _des(tmp, quick)
        print(f"discrete-event: {d}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = __doc__.split("\n\n")[1]
    lines = ["## 10. Sweeps: analytical speed, discrete-event capacity search, resume", "", doc, ""]
    lines += [
        "| measure | result | target |",
        "|---|---|---|",
        f"| analytical sweep, {a['points']:,} points ({a['configurations']} configurations), one core | "
        f"{a['points_per_s_per_core']:,.0f} points/s ({a['run_s']:.1f} s; expansion {a['expand_s']:.2f} s, "
        f"{a['expand_points_per_s']:,.0f} points/s) | ≥ 2,000 points/s/core |",
        f"| discrete-event capacity search, {d['points']} configurations, 2 local processes | "
        f"{d['local_s']:.0f} s ({d['des_runs']:,} simulations, {d['runs_per_point']:.1f} per configuration) | "
        "≤ 600 s |",
        "| the same on a 2-worker Dask LocalCluster | "
        + (f"{d['dask_s']:.0f} s (same capacities: {d['dask_same_results']})" if d.get("dask_s") else "not run")
        + " | about the local time |",
        f"| resume after kill -9 ({r['points']} discrete-event points, killed with {r['done_at_kill']} stored) | "
        f"{r['lost']} lost, {r['stored_twice']} stored twice, {r['evaluated_on_resume']} run on resume | "
        "0 lost, 0 repeated |",
        "",
    ]
    if d.get("des_over_analytical_median") is not None:
        lo, hi = d["des_over_analytical_range"]
        lines += [
            f"Capacity found in {d['found']}/{d['points']} configurations; the simulated capacity over the "
            f"analytical model's is {d['des_over_analytical_median']:.2f} at the median ({lo:.2f} to {hi:.2f}).",
            "",
        ]
    return "\n".join(lines), {"analytical": a, "des": d, "resume": r}


if __name__ == "__main__":
    text, s = bench_sweep("--quick" in sys.argv)
    print(text)
    print(s, file=sys.stderr)
