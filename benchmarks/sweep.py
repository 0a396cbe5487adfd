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
- Old against new (``--old REV``, default 466109d; ``--old none`` skips it): the same two sweeps on the code of
  commit REV (``git archive REV`` into a temporary folder, run in a subprocess whose ``PYTHONPATH`` makes
  ``import moesim`` that code), timed the same way; the analytical rows compared column by column (equal to
  float rounding: rel 1e-12), the capacities compared configuration by configuration (new / old).
  ``--old-results DIR`` takes the old run's ``analytical.parquet`` / ``des.parquet`` / ``timing.json`` from
  an earlier run instead (``--keep DIR`` keeps this run's there).

- Shared timers on and off (``--share-ab``, alone): the capacity search of 8 H100 configurations of
  `benchmarks/sweep-des-capacity.yaml` (2 and 8 GPUs, TP or EP, fp8, batch 256, routing skew 0 and 1) in this
  process, each configuration three ways in alternating order: as the code of 91c4171 (its routing banks,
  `RoutingBank.LEGACY`; per-layer routing on the scalar step path, `steparray.PER_LAYER` off; every timer its
  own, `sim.serving.capacity.SHARE` off), with today's banks and array-form per-layer steps alone, and
  shared (the analytical model and the probes share tables, step costs and per seed routing banks); CPU seconds
  (``time.process_time``) of each, the capacity columns compared (shared and alone identical by construction:
  `tests/test_step_share.py`; the legacy path's within the simulation's sampling noise).

- Old against new per configuration (``--legacy-ab N``, alone): every N-th configuration of
  `benchmarks/sweep-des-capacity.yaml` evaluated as 91c4171 (the three switches above) and as today, interleaved
  over 2 forked processes; CPU seconds per evaluation and the capacities compared.

- The capacity probes' horizon (``--horizon-ab N``, alone): every N-th configuration of
  `benchmarks/sweep-des-capacity.yaml` searched three ways over 2 forked processes: every probe replaying the
  file's 6 s of arrivals alone (as before `sweep_eval.probe_horizon`), with today's horizon, and with 60 s of
  arrivals (the reference); capacities over the reference's, simulations and CPU seconds.

- The analytical capacity against an independent simulated one (``--capacity-reference N``, alone): every N-th
  configuration, the discrete-event capacity with 60 s of arrivals, 5% tolerance, its bracket opened at 0.6x the
  analytical answer, beside the analytical capacity with the step-level mixed pool and with each prompt alone.

- Old against new, analytical only (``--analytical-ab REV [--pairs N]``, alone): the analytical sweep above on the
  code of commit REV and on this tree, alternately, each in a fresh subprocess; CPU seconds (``time.process_time``)
  and points per second of each, and the rows compared bit for bit.

Run: ``python -m benchmarks.sweep [--quick] [--old REV | --old-results DIR] [--keep DIR]`` (``make bench``
runs it without the old code), ``python -m benchmarks.sweep --share-ab``, ``python -m benchmarks.sweep
--legacy-ab 3``, ``python -m benchmarks.sweep --analytical-ab HEAD``, ``python -m benchmarks.sweep --horizon-ab 9``.
"""

from __future__ import annotations

import json
import math
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

import numpy as np  # noqa: E402
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
    res.results.to_parquet(tmp / "analytical.parquet")
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
    df.to_parquet(tmp / "des.parquet")
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


_OLD_SCRIPT = """
import json, sys, time
from pathlib import Path

def main():
    import moesim
    from moesim.sim.sweeps.sweep import run_sweep
    from moesim.sim.sweeps.sweep_spec import parse_sweep
    spec_a, spec_d, out = parse_sweep(json.loads(sys.argv[1])), parse_sweep(json.loads(sys.argv[2])), Path(sys.argv[3])
    timing = {"moesim": moesim.__file__}
    ra = run_sweep(spec_a, out / "a", workers=1, post=False)
    ra.results.to_parquet(out / "analytical.parquet")
    timing["analytical_run_s"], timing["analytical_points_per_s"] = ra.summary["run_s"], ra.summary["points_per_s"]
    rd = run_sweep(spec_d, out / "d", workers=2, post=False)
    rd.results.to_parquet(out / "des.parquet")
    timing["des_run_s"] = rd.summary["run_s"]
    (out / "timing.json").write_text(json.dumps(timing))

if __name__ == "__main__":
    main()
"""


def _specs(quick: bool) -> tuple[dict, dict]:
    """The analytical and the discrete-event sweep files as mappings (``quick``: the 12-configuration one)."""
    ana = yaml.safe_load((ROOT / "examples" / "sweep-mixtral-gpu-choice.yaml").read_text())
    des = yaml.safe_load((ROOT / "benchmarks" / "sweep-des-capacity.yaml").read_text())
    if quick:
        des["axes"] |= {"gpu": ["H100-SXM"], "gpus": [2, 8], "max_batch": [256], "routing_skew": [0]}
        des["axes"]["precision"] = ["fp8", "bf16"]
    return ana, des


def _old_run(rev: str, quick: bool, tmp: Path) -> Path:
    """Both sweeps on the code of commit ``rev`` in a subprocess; returns the folder of its results."""
    code = tmp / "old-code"
    (code / "moesim").mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code / "moesim")], input=archive, check=True)
    script = tmp / "old_sweeps.py"
    script.write_text(_OLD_SCRIPT)
    ana, des = _specs(quick)
    out = tmp / "old"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(code))
    cmd = [sys.executable, str(script), json.dumps(ana), json.dumps(des), str(out)]
    subprocess.run(cmd, check=True, cwd=tmp, env=env)
    timing = json.loads((out / "timing.json").read_text())
    if not timing["moesim"].startswith(str(code)):
        raise RuntimeError(f"the old run imported {timing['moesim']}, not the code of {rev}")
    return out


def _compare(new_dir: Path, old_dir: Path) -> dict:
    """The new results against the old: analytical columns equal to float rounding, capacities by configuration."""
    out: dict = {"timing": json.loads((old_dir / "timing.json").read_text())}
    a_new = pd.read_parquet(new_dir / "analytical.parquet").set_index("point_id")
    a_old = pd.read_parquet(old_dir / "analytical.parquet").set_index("point_id")
    common = a_new.index.intersection(a_old.index)
    differ = {}
    for c in a_old.columns.intersection(a_new.columns):
        if c == "wall_s":
            continue
        x, y = a_old.loc[common, c], a_new.loc[common, c]
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            same = np.isclose(x, y, rtol=1e-12, atol=0.0, equal_nan=True) | (x == y)
        else:
            same = (x == y) | (x.isna() & y.isna())
        if not same.all():
            differ[c] = int((~same).sum())
    out["analytical_points_compared"] = len(common)
    out["analytical_columns_differing"] = differ
    cols = ["label", "capacity_req_s", "capacity_runs"]
    d_new = pd.read_parquet(new_dir / "des.parquet").set_index("point_id")[cols]
    d_old = pd.read_parquet(old_dir / "des.parquet").set_index("point_id")[cols]
    both = d_old.merge(d_new, left_index=True, right_index=True, suffixes=("_old", "_new"))
    both = both.drop(columns="label_new").rename(columns={"label_old": "label"})
    both["ratio"] = both["capacity_req_s_new"] / both["capacity_req_s_old"]
    out["des_table"] = both.reset_index(drop=True)
    r = both["ratio"].dropna()
    out["des_configurations"] = len(both)
    out["des_equal"] = int((both["capacity_req_s_new"] == both["capacity_req_s_old"]).sum())
    out["des_ratio_median"] = float(r.median()) if len(r) else None
    out["des_ratio_range"] = (float(r.min()), float(r.max())) if len(r) else None
    out["des_found_old_new"] = (int(both["capacity_req_s_old"].notna().sum()), int(r.size))
    out["des_runs_old_new"] = (int(both["capacity_runs_old"].sum()), int(both["capacity_runs_new"].sum()))
    return out


def _comparison_lines(c: dict, rev: str, a: dict, d: dict) -> list[str]:
    t = c["timing"]
    lo, hi = c["des_ratio_range"] or (math.nan, math.nan)
    lines = [
        f"Against the code of {rev} (same machine, same run):",
        "",
        "| measure | old | new | new / old |",
        "|---|---|---|---|",
        f"| analytical sweep, points/s/core | {t['analytical_points_per_s']:,.0f} | "
        f"{a['points_per_s_per_core']:,.0f} | {a['points_per_s_per_core'] / t['analytical_points_per_s']:.1f}x |",
        f"| discrete-event capacity sweep, 2 processes, s | {t['des_run_s']:.0f} | {d['local_s']:.0f} | "
        f"{d['local_s'] / t['des_run_s']:.2f} |",
        f"| discrete-event simulations | {c['des_runs_old_new'][0]} | {c['des_runs_old_new'][1]} | |",
        "",
        f"Analytical rows: {c['analytical_points_compared']} points compared, columns differing beyond float "
        f"rounding (rel 1e-12): {c['analytical_columns_differing'] or 'none'}.",
        f"Capacities: found in {c['des_found_old_new'][0]} (old) and {c['des_found_old_new'][1]} (new) of "
        f"{c['des_configurations']} configurations; identical in {c['des_equal']}; new / old "
        f"{c['des_ratio_median']:.3f} at the median ({lo:.3f} to {hi:.3f}).",
        "",
        "| configuration | capacity old, req/s | capacity new, req/s | new / old | runs old | runs new |",
        "|---|---|---|---|---|---|",
    ]
    for row in c["des_table"].itertuples():
        lines.append(
            f"| {row.label} | {row.capacity_req_s_old:.2f} | {row.capacity_req_s_new:.2f} | {row.ratio:.3f} | "
            f"{row.capacity_runs_old} | {row.capacity_runs_new} |"
        )
    return [*lines, ""]


def bench_sweep(
    quick: bool = False, old: str | None = None, old_results: Path | None = None, keep: Path | None = None
) -> tuple[str, dict]:
    """Section 10 (see the module docstring). ``old``: a commit to compare against (None: none);
    ``old_results``: an earlier old run's results folder instead; ``keep``: a folder for this run's results."""
    tmp = Path(tempfile.mkdtemp(prefix="moesim-bench-sweep-"))
    cmp = None
    try:
        r = _resume(tmp)
        print(f"resume: {r}", file=sys.stderr, flush=True)
        a = _analytical(tmp)
        print(f"analytical: {a}", file=sys.stderr, flush=True)
        d = _des(tmp, quick)
        print(f"discrete-event: {d}", file=sys.stderr, flush=True)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("analytical.parquet", "des.parquet"):
                shutil.copy(tmp / name, keep / name)
        if old_results is None and old is not None:
            old_results = _old_run(old, quick, tmp)
        if old_results is not None:
            cmp = _compare(tmp, old_results)
            print(f"old against new: { ({k: v for k, v in cmp.items() if k != 'des_table'}) }", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = __doc__.split("\n\n")[1]
    lines = ["## 10. Sweeps: analytical speed, discrete-event capacity search, resume", "", doc, ""]
    lines += [
        "| measure | result | target |",
        "|---|---|---|",
        f"| analytical sweep, {a['points']:,} points ({a['configurations']} configurations), one core | "
        f"{a['points_per_s_per_core']:,.0f} points/s ({a['run_s']:.1f} s; expansion {a['expand_s']:.2f} s, "
        f"{a['expand_points_per_s']:,.0f} points/s) | ≥ 10,000 points/s/core |",
        f"| discrete-event capacity search, {d['points']} configurations, 2 local processes | "
        f"{d['local_s']:.0f} s ({d['des_runs']:,} simulations, {d['runs_per_point']:.1f} per configuration) | "
        "≤ 120 s |",
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
    if cmp is not None:
        lines += _comparison_lines(cmp, old or str(old_results), a, d)
        cmp["des_table"] = cmp["des_table"].to_dict("records")
    return "\n".join(lines), {"analytical": a, "des": d, "resume": r, "old_against_new": cmp}


def share_ab() -> tuple[str, dict]:
    """``--share-ab`` (see the module docstring): a markdown table and the figures."""
    from moesim.sim.serving import capacity as capmod
    from moesim.sim.serving import steparray
    from moesim.sim.serving.steptime import RoutingBank
    from moesim.sim.sweeps import sweep_eval

    data = yaml.safe_load((ROOT / "benchmarks" / "sweep-des-capacity.yaml").read_text())
    data["axes"] |= {"gpu": ["H100-SXM"], "gpus": [2, 8], "max_batch": [256], "routing_skew": [0, 1.0]}
    data["axes"]["precision"] = ["fp8"]
    spec = parse_sweep(data)
    cols = ("capacity_req_s", "capacity_runs", "capacity_tok_s", "capacity_ttft_s", "capacity_tpot_s")
    # (label, RoutingBank.LEGACY and not steparray.PER_LAYER, capacity.SHARE)
    variants = (("legacy", True, False), ("alone", False, False), ("shared", False, True))
    rows, total = [], dict.fromkeys(("legacy", "alone", "shared"), 0.0)
    try:
        for i, p in enumerate(expand(spec).points):
            got = {}
            for label, legacy, share in variants if i % 2 == 0 else variants[::-1]:
                RoutingBank.LEGACY, steparray.PER_LAYER, capmod.SHARE = legacy, not legacy, share
                sweep_eval._CACHE.clear()
                if not share:
                    sweep_eval._analytical(p, spec)  # the build, outside the timing (shared: built inside it)
                t0 = time.process_time()
                row = sweep_eval.evaluate(p, spec)
                cpu = time.process_time() - t0
                total[label] += cpu
                got[label] = ([row[c] for c in cols], cpu)
            same = got["shared"][0] == got["alone"][0]
            rows.append((p.values["label"], got, same))
            print(f"share-ab: {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        RoutingBank.LEGACY, steparray.PER_LAYER, capmod.SHARE = False, True, True
    lines = [
        "| configuration | CPU s: as 91c4171 | today's, alone | shared | legacy / shared | "
        "capacity req/s (runs): as 91c4171 | today's | shared = alone |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, got, same in rows:
        (lc, lr), (nc, nr) = got["legacy"][0][:2], got["shared"][0][:2]
        lines.append(
            f"| {label} | {got['legacy'][1]:.2f} | {got['alone'][1]:.2f} | {got['shared'][1]:.2f} | "
            f"{got['legacy'][1] / got['shared'][1]:.2f}x | {lc:.2f} ({lr}) | {nc:.2f} ({nr}) | {same} |"
        )
    lines.append(
        f"| all | {total['legacy']:.1f} | {total['alone']:.1f} | {total['shared']:.1f} | "
        f"{total['legacy'] / total['shared']:.2f}x | | | {all(r[2] for r in rows)} |"
    )
    return "\n".join(lines), {"cpu_s": total, "rows": rows}


def _legacy_work(args: tuple[int, str]) -> dict:
    """One configuration ``i`` of `benchmarks/sweep-des-capacity.yaml` evaluated as 91c4171 (``legacy``) or today
    (``new``) in this worker process (`legacy_ab`): its capacity columns and CPU seconds."""
    from moesim.sim.serving import capacity as capmod
    from moesim.sim.serving import steparray
    from moesim.sim.serving.steptime import RoutingBank
    from moesim.sim.sweeps import sweep_eval

    i, variant = args
    spec = read_sweep(ROOT / "benchmarks" / "sweep-des-capacity.yaml")
    p = expand(spec).points[i]
    legacy = variant == "legacy"
    RoutingBank.LEGACY, steparray.PER_LAYER, capmod.SHARE = legacy, not legacy, not legacy
    sweep_eval._CACHE.clear()
    t0 = time.process_time()
    row = sweep_eval.evaluate(p, spec)
    cpu = time.process_time() - t0
    keep = ("label", "capacity_req_s", "capacity_runs", "capacity_ttft_s", "status")
    return {"i": i, "variant": variant, "cpu_s": cpu} | {k: row[k] for k in keep}


def legacy_ab(every: int) -> tuple[str, dict]:
    """``--legacy-ab N``: every N-th configuration of `benchmarks/sweep-des-capacity.yaml` as 91c4171 (its routing
    banks, per-layer steps on the scalar path, no shared timers) and as today, interleaved over 2 forked processes,
    CPU seconds per evaluation (``time.process_time``) and the capacities compared."""
    from multiprocessing import get_context

    n = len(expand(read_sweep(ROOT / "benchmarks" / "sweep-des-capacity.yaml")).points)
    tasks: list[tuple[int, str]] = []
    for j, i in enumerate(range(0, n, every)):
        tasks += [(i, "legacy"), (i, "new")] if j % 2 == 0 else [(i, "new"), (i, "legacy")]
    with get_context("fork").Pool(2) as pool:
        df = pd.DataFrame(pool.map(_legacy_work, tasks, chunksize=1))
    w = df.pivot(index="i", columns="variant")
    cap, cpu = w["capacity_req_s"], w["cpu_s"]
    skew = w["label"]["new"].str.contains("skew1")
    same = (cap["legacy"] == cap["new"]) | (cap["legacy"].isna() & cap["new"].isna())
    lines = [
        f"Every {every}th configuration ({len(w)}), 2 processes: CPU s as 91c4171 {cpu['legacy'].sum():.1f}, today "
        f"{cpu['new'].sum():.1f} ({cpu['legacy'].sum() / cpu['new'].sum():.2f}x; routing skew 0: "
        f"{cpu['legacy'][~skew].sum():.1f} -> {cpu['new'][~skew].sum():.1f}, skew 1: {cpu['legacy'][skew].sum():.1f} "
        f"-> {cpu['new'][skew].sum():.1f}); simulations {int(w['capacity_runs']['legacy'].sum())} -> "
        f"{int(w['capacity_runs']['new'].sum())}; capacities identical in {int(same.sum())}/{len(w)}.",
    ]
    for i in w.index[~same]:
        lines.append(
            f"- {w['label']['new'][i]}: {cap['legacy'][i]:.2f} -> {cap['new'][i]:.2f} req/s (p99 TTFT at it "
            f"{w['capacity_ttft_s']['legacy'][i]:.3f} -> {w['capacity_ttft_s']['new'][i]:.3f} s)"
        )
    return "\n".join(lines), {"rows": df.to_dict("records")}


def _horizon_work(args: tuple[int, str]) -> dict:
    """One configuration ``i`` of `benchmarks/sweep-des-capacity.yaml` searched one way (`horizon_ab`): ``window``
    (every probe replays the file's ``duration_s`` alone, as before the probe horizon), ``horizon`` (today's
    search) or ``long`` (``duration_s`` 60, the reference); its capacity columns and CPU seconds."""
    from moesim.sim.sweeps import sweep_eval

    i, variant = args
    spec = read_sweep(ROOT / "benchmarks" / "sweep-des-capacity.yaml")
    if variant == "long":
        spec = spec.model_copy(update={"capacity": spec.capacity.model_copy(update={"duration_s": 60.0})})
    p = expand(spec).points[i]
    real = sweep_eval.probe_horizon
    if variant == "window":
        sweep_eval.probe_horizon = lambda cap, *a: cap.duration_s  # type: ignore[assignment]
    try:
        sweep_eval._CACHE.clear()
        t0 = time.process_time()
        row = sweep_eval.evaluate(p, spec)
        cpu = time.process_time() - t0
    finally:
        sweep_eval.probe_horizon = real
    keep = ("label", "capacity_req_s", "capacity_analytical_req_s", "capacity_runs", "capacity_horizon_s", "status")
    return {"i": i, "variant": variant, "cpu_s": cpu} | {k: row[k] for k in keep}


def horizon_ab(every: int) -> tuple[str, dict]:
    """``--horizon-ab N``: every N-th configuration of `benchmarks/sweep-des-capacity.yaml` searched with probes of
    the file's 6 s of arrivals alone, with today's probe horizon (`sweep_eval.probe_horizon`), and with 60 s of
    arrivals (the reference: an overload of a few percent has time to show), over 2 forked processes; capacities
    over the reference's, simulations and CPU seconds."""
    from multiprocessing import get_context

    n = len(expand(read_sweep(ROOT / "benchmarks" / "sweep-des-capacity.yaml")).points)
    tasks = [(i, v) for i in range(0, n, every) for v in ("window", "horizon", "long")]
    with get_context("fork").Pool(2) as pool:
        df = pd.DataFrame(pool.map(_horizon_work, tasks, chunksize=1))
    w = df.pivot(index="i", columns="variant")
    cap, ref = w["capacity_req_s"], w["capacity_req_s"]["long"]
    an = w["capacity_analytical_req_s"]["horizon"]
    lines = [
        "| configuration | analytical req/s | 6 s window: req/s (runs) | horizon s | today: req/s (runs) | "
        "60 s: req/s (runs) | 6 s / 60 s | today / 60 s | analytical / 60 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in w.index:
        runs = w["capacity_runs"].loc[i]
        lines.append(
            f"| {w['label']['horizon'][i]} | {an[i]:.1f} | {cap['window'][i]:.1f} ({runs['window']}) | "
            f"{w['capacity_horizon_s']['horizon'][i]:.1f} | {cap['horizon'][i]:.1f} ({runs['horizon']}) | "
            f"{ref[i]:.1f} ({runs['long']}) | {cap['window'][i] / ref[i]:.3f} | {cap['horizon'][i] / ref[i]:.3f} | "
            f"{an[i] / ref[i]:.3f} |"
        )
    cpu = w["cpu_s"].sum()
    q = {v: np.quantile(cap[v] / ref, [0.0, 0.5, 1.0]) for v in ("window", "horizon")}
    qa = np.quantile(an / ref, [0.0, 0.5, 1.0])
    lines += [
        "",
        f"Every {every}th configuration ({len(w)}): capacity over the 60 s search's, min / median / max: 6 s window "
        f"{q['window'][0]:.3f} / {q['window'][1]:.3f} / {q['window'][2]:.3f}; today's horizon {q['horizon'][0]:.3f} / "
        f"{q['horizon'][1]:.3f} / {q['horizon'][2]:.3f}; the analytical model {qa[0]:.3f} / {qa[1]:.3f} / "
        f"{qa[2]:.3f}. Simulations {int(w['capacity_runs']['window'].sum())} / "
        f"{int(w['capacity_runs']['horizon'].sum())} / {int(w['capacity_runs']['long'].sum())}, CPU s "
        f"{cpu['window']:.1f} / {cpu['horizon']:.1f} / {cpu['long']:.1f} (6 s window / today / 60 s).",
    ]
    return "\n".join(lines), {"rows": df.to_dict("records")}


def _reference_work(i: int) -> dict:
    """Configuration ``i`` of `benchmarks/sweep-des-capacity.yaml` (`capacity_reference`): the discrete-event capacity
    with 60 s of arrivals and a 5% tolerance, its bracket opened at 0.6x the analytical answer (so the answer does
    not lean toward it), and the analytical capacity with the step-level mixed pool on and off."""
    from moesim.sim.serving import analytical
    from moesim.sim.sweeps import sweep_eval

    spec = read_sweep(ROOT / "benchmarks" / "sweep-des-capacity.yaml")
    p = expand(spec).points[i]
    an = {}
    for on in (True, False):
        analytical.AGGREGATE = on
        sweep_eval._CACHE.clear()
        m = sweep_eval._analytical(p, spec)
        ttft, tpot = sweep_eval._slos(spec, m.built)
        an[on] = sweep_eval._bisect_analytical(m, spec.capacity, ttft, tpot)[0]
    analytical.AGGREGATE = True
    fine = spec.model_copy(
        update={"capacity": spec.capacity.model_copy(update={"duration_s": 60.0, "tolerance": 0.05})}
    )
    found, fail, _, runs, _ = sweep_eval._des_search(m.built, fine, 0.6 * an[True], ttft, tpot, 60.0)
    ref = found * 1.05**0.5 if fail else found  # the middle of the final bracket
    dp = p.values["layout"].get("dp_attn", 1) if isinstance(p.values.get("layout"), dict) else 1
    return {"i": i, "label": p.values["label"], "reference": ref, "runs": runs, "steps": an[True],
            "alone": an[False], "dp_attn": "TP1xDP" in p.values["label"] or (dp not in (1, None))}  # fmt: skip


def capacity_reference(every: int) -> tuple[str, dict]:
    """``--capacity-reference N``: every N-th configuration of `benchmarks/sweep-des-capacity.yaml`, the analytical
    capacity (the step-level mixed pool, `analytical.aggregate_step`, and each prompt priced alone) over a
    discrete-event capacity found independently of it (`_reference_work`), over 2 forked processes."""
    from multiprocessing import get_context

    n = len(expand(read_sweep(ROOT / "benchmarks" / "sweep-des-capacity.yaml")).points)
    with get_context("fork").Pool(2) as pool:
        df = pd.DataFrame(pool.map(_reference_work, range(0, n, every), chunksize=1))
    lines = [
        "| configuration | simulated req/s (runs) | analytical, steps | each prompt alone | steps / simulated | alone "
        "/ simulated |",
        "|---|---|---|---|---|---|",
    ]
    for r in df.itertuples():
        lines.append(
            f"| {r.label} | {r.reference:.1f} ({r.runs}) | {r.steps:.1f} | {r.alone:.1f} | {r.steps / r.reference:.3f} "
            f"| {r.alone / r.reference:.3f} |"
        )
    lines.append("")
    for name, mask in (("without data-parallel attention", ~df["dp_attn"]), ("with it", df["dp_attn"])):
        sub = df[mask]
        for col, what in (("steps", "steps"), ("alone", "each prompt alone")):
            x = (sub[col] / sub["reference"]).to_numpy()
            q = np.quantile(x, [0.0, 0.5, 1.0])
            near = int((np.abs(np.log(x)) <= np.log(1.1)).sum())
            lines.append(
                f"- {len(sub)} configurations {name}, {what}: min / median / max {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}, "
                f"mean |log ratio| {np.mean(np.abs(np.log(x))):.3f}, within 10%: {near}"
            )
    return "\n".join(lines), {"rows": df.to_dict("records")}


_AB_SCRIPT = """
import json, sys, time
from pathlib import Path

def main():
    import moesim
    from moesim.sim.sweeps.sweep import run_sweep
    from moesim.sim.sweeps.sweep_spec import read_sweep
    spec, out = read_sweep(Path(sys.argv[1])), Path(sys.argv[2])
    t0 = time.process_time()
    res = run_sweep(spec, out / "run", workers=1, post=False)
    cpu = time.process_time() - t0
    res.results.to_parquet(out / "rows.parquet")
    s = res.summary
    info = {"moesim": moesim.__file__, "cpu_s": cpu, "points": s["points"], "points_per_s": s["points_per_s"]}
    (out / "timing.json").write_text(json.dumps(info))

if __name__ == "__main__":
    main()
"""


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, int]:
    """Columns of two analytical sweeps' rows that are not bit-identical (NaN equal to NaN; ``wall_s`` left out),
    with the number of rows that differ; the rows matched by ``point_id``."""
    a, b = a.set_index("point_id").sort_index(), b.set_index("point_id").sort_index()
    if list(a.index) != list(b.index):
        return {"<points>": len(a.index.symmetric_difference(b.index))}
    differ = {}
    for c in a.columns.union(b.columns):
        if c == "wall_s":
            continue
        if c not in a or c not in b:
            differ[c] = len(a)
            continue
        x, y = a[c], b[c]
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            xv, yv = x.to_numpy(float), y.to_numpy(float)
            same = (xv == yv) | (np.isnan(xv) & np.isnan(yv))
        else:
            same = (x.astype(str) == y.astype(str)).to_numpy()
        if not same.all():
            differ[c] = int((~same).sum())
    return differ


def _largest_change(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
    """The largest relative difference per float column of two sweeps' rows matched by ``point_id`` (only the
    columns that differ; ``wall_s`` left out; NaN equal to NaN), and ``status`` as the number of rows whose status
    differs."""
    a, b = a.set_index("point_id").sort_index(), b.set_index("point_id").sort_index()
    if list(a.index) != list(b.index):
        return {}
    out: dict[str, float] = {}
    for c in a.columns.intersection(b.columns):
        if c == "wall_s" or a[c].dtype.kind != "f" or b[c].dtype.kind != "f":
            continue
        x, y = a[c].to_numpy(float), b[c].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(x - y) / np.maximum(np.abs(x), np.abs(y))
        rel = np.where((x == y) | (np.isnan(x) & np.isnan(y)), 0.0, np.nan_to_num(rel, nan=1.0))
        if rel.max() > 0:
            out[c] = float(rel.max())
    if "status" in a and "status" in b and (a["status"] != b["status"]).any():
        out["status"] = float((a["status"] != b["status"]).sum())
    return out


def analytical_ab(rev: str, pairs: int = 3) -> tuple[str, dict]:
    """``--analytical-ab REV`` (issue 22): the analytical sweep of `examples/sweep-mixtral-gpu-choice.yaml` on one
    core with the code of commit REV and with this tree, alternately (``pairs`` times each, old first), each in a
    fresh subprocess whose ``PYTHONPATH`` makes ``import moesim`` that code; CPU seconds of `run_sweep`
    (``time.process_time``, so other load on the machine counts less than in wall time), points per second as the
    sweep reports them (wall), and the rows compared bit for bit (every column but ``wall_s``)."""
    tmp = Path(tempfile.mkdtemp(prefix="moesim-bench-ab-"))
    try:
        old, new = tmp / "old-code", tmp / "new-code"
        (old / "moesim").mkdir(parents=True)
        new.mkdir()
        (new / "moesim").symlink_to(ROOT)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old / "moesim")], input=archive, check=True)
        script = tmp / "ab.py"
        script.write_text(_AB_SCRIPT)
        example = ROOT / "examples" / "sweep-mixtral-gpu-choice.yaml"
        runs: list[dict] = []
        for i in range(pairs):
            for variant, code in (("old", old), ("new", new)):
                out = tmp / f"{variant}-{i}"
                out.mkdir()
                env = dict(os.environ, PYTHONPATH=str(code))
                subprocess.run([sys.executable, str(script), str(example), str(out)], check=True, cwd=tmp, env=env)
                info = json.loads((out / "timing.json").read_text())
                if not info["moesim"].startswith(str(code)):
                    raise RuntimeError(f"the {variant} run imported {info['moesim']}, not {code}")
                runs.append({"variant": variant, "pair": i, "load": os.getloadavg()[0], **info, "dir": str(out)})
                print(f"{variant} {i}: {info['cpu_s']:.2f} CPU s, {info['points_per_s']:.0f} points/s", file=sys.stderr)
        ref = pd.read_parquet(Path(runs[0]["dir"]) / "rows.parquet")
        differ = {r["variant"] + str(r["pair"]): _same_rows(ref, pd.read_parquet(Path(r["dir"]) / "rows.parquet"))
                  for r in runs[1:]}  # fmt: skip
        largest = {r["variant"] + str(r["pair"]): _largest_change(ref, pd.read_parquet(Path(r["dir"]) / "rows.parquet"))
                   for r in runs[1:] if r["variant"] == "new"}  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    df = pd.DataFrame(runs).drop(columns="dir")
    cpu = df.groupby("variant")["cpu_s"].median()
    pps = df.groupby("variant")["points_per_s"].median()
    points = int(df["points"].iloc[0])
    lines = [
        f"`python -m benchmarks.sweep --analytical-ab {rev}` ({pairs} pairs, old first; load average "
        f"{df['load'].min():.1f}-{df['load'].max():.1f} after the runs):",
        "",
        f"| code | CPU s per sweep ({points:,} points) | points per CPU second | points/s (wall, as reported) |",
        "|---|---|---|---|",
    ]
    for v, name in (("old", rev), ("new", "this tree")):
        runs_v = df[df["variant"] == v]
        lines.append(
            f"| {name} | {cpu[v]:.2f} ({', '.join(f'{x:.2f}' for x in runs_v['cpu_s'])}) | {points / cpu[v]:,.0f} | "
            f"{pps[v]:,.0f} |"
        )
    same = all(not d for d in differ.values())
    lines += [
        "",
        f"Speed-up {cpu['old'] / cpu['new']:.2f}x in CPU time (medians). Rows against the first old run: "
        + ("bit-identical in every column of every run." if same else f"differ: {differ}"),
    ]
    if not same:
        biggest = {k: f"{v:.2g}" for k, v in largest.get("new0", {}).items()}
        lines.append(f"Largest relative change per column, new against old (status: rows that changed): {biggest}")
    return "\n".join(lines), {"runs": df.to_dict("records"), "differ": differ, "largest": largest}


def _arg(name: str, default: str | None) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


if __name__ == "__main__" and "--capacity-reference" in sys.argv:
    print(capacity_reference(int(_arg("--capacity-reference", "7") or 7))[0])
elif __name__ == "__main__" and "--horizon-ab" in sys.argv:
    print(horizon_ab(int(_arg("--horizon-ab", "9") or 9))[0])
elif __name__ == "__main__" and "--analytical-ab" in sys.argv:
    print(analytical_ab(_arg("--analytical-ab", "HEAD") or "HEAD", int(_arg("--pairs", "3") or 3))[0])
elif __name__ == "__main__" and "--share-ab" in sys.argv:
    print(share_ab()[0])
elif __name__ == "__main__" and "--legacy-ab" in sys.argv:
    print(legacy_ab(int(_arg("--legacy-ab", "3") or 3))[0])
elif __name__ == "__main__":
    rev = _arg("--old", "466109d")
    prior = _arg("--old-results", None)
    kept = _arg("--keep", None)
    text, s = bench_sweep(
        "--quick" in sys.argv,
        old=None if rev in (None, "none") or prior else rev,
        old_results=Path(prior) if prior else None,
        keep=Path(kept) if kept else None,
    )
    print(text)
    print(s, file=sys.stderr)
