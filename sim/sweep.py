"""Running a sweep: local processes or a Dask cluster, parquet shards, resume after any interruption.

    from sim.sweep import run_sweep
    res = run_sweep("examples/sweep-mixtral-gpu-choice.yaml", "runs/mixtral", workers=2)
    res.results  # one row per point (see `sim.sweep_eval`), res.summary: JSON-ready figures

Results are appended to ``OUT/shards/`` as parquet files, each written to a
temporary name and renamed into place only once complete, so a shard is
either whole or absent, whatever kills the process (even ``kill -9``).
Rows are flushed at least every ``flush_s`` seconds. Restarting the same
sweep into the same folder reads the shards, skips every point whose
``point_id`` they hold, and runs the rest: no point is lost and none appears
twice; at most the last ``flush_s`` seconds of work are redone. Finished
shards are never rewritten.

When every point is done, ``results.parquet`` (all rows, with accuracy
scores), the post-processing (`sim.sweep_report`: CAP table, Pareto front,
cheapest configuration for a throughput target, plots) and ``summary.json``
are written into ``OUT``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from model.errors import MoesimError
from sim.serve import clean_json
from sim.sweep_eval import evaluate_task
from sim.sweep_report import write_atomic
from sim.sweep_spec import Expansion, Point, SweepSpec, _hash, base_scenario, expand, read_sweep

Progress = Callable[[int, int, str], None]
#: Points per task for the analytical engine (the rates of one configuration go together).
ANALYTICAL_CHUNK = 64


@dataclass
class SweepResult:
    """A finished sweep: every row, and the summary printed by ``moesim sweep --json``."""

    results: pd.DataFrame
    summary: dict[str, Any]


def spec_hash(spec: SweepSpec) -> str:
    """Identifies the sweep's definition (its base scenario read in), for the resume check."""
    return _hash({"spec": spec.model_dump(), "base": base_scenario(spec)})


def _tasks(points: list[Point], spec: SweepSpec) -> list[list[Point]]:
    """Points grouped by configuration, in order; a discrete-event point is a task of its own."""
    if spec.engine == "des":
        return [[p] for p in points]
    tasks: list[list[Point]] = []
    for p in points:
        if tasks and tasks[-1][0].config_key == p.config_key and len(tasks[-1]) < ANALYTICAL_CHUNK:
            tasks[-1].append(p)
        else:
            tasks.append([p])
    return tasks


def read_shards(out: Path) -> pd.DataFrame:
    """Every row in ``out/shards/`` (temporary leftovers of a killed run are removed, never read)."""
    d = out / "shards"
    if not d.is_dir():
        return pd.DataFrame()
    for tmp in d.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    frames = []
    for f in sorted(d.glob("part-*.parquet")):
        try:
            frames.append(pd.read_parquet(f))
        except Exception as exc:  # not ours to repair: say which file and stop
            raise MoesimError(
                f"shard {f} is unreadable ({type(exc).__name__})", "move it away; its points will be run again"
            ) from None
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates("point_id", keep="first")


def _write_shard(out: Path, rows: list[dict[str, Any]]) -> Path:
    d = out / "shards"
    d.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.parquet"
    tmp = d / f".{name}.tmp"
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, d / name)
    return d / name


def _manifest(out: Path, spec: SweepSpec, exp: Expansion, resume: bool) -> None:
    """Create ``out/manifest.json``, or check that ``out`` holds this sweep when resuming."""
    h = spec_hash(spec)
    m = out / "manifest.json"
    if m.is_file():
        try:
            old = json.loads(m.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("spec_hash") != h:
            raise MoesimError(
                f"{out} holds the results of a different sweep ({old.get('name', 'unknown')})",
                "give a new --out folder, or --fresh to discard those results",
            )
        return
    if not resume and (out / "shards").is_dir() and any((out / "shards").iterdir()):
        raise MoesimError(f"{out}/shards holds results without a manifest", "give a new --out folder or --fresh")
    out.mkdir(parents=True, exist_ok=True)
    info = {"name": spec.name, "spec_hash": h, "points": len(exp.points), "spec": spec.model_dump()}
    write_atomic(m, lambda p: Path(p).write_text(json.dumps(info, indent=1, default=str) + "\n"))


class _Local:
    """A process pool (spawned workers), or the calling process itself for one worker."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = None
        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))

    def run(self, tasks: list[list[Point]], spec: SweepSpec):
        if self.pool is None:
            for t in tasks:
                yield evaluate_task(t, spec)
            return
        from concurrent.futures import FIRST_COMPLETED, wait

        pending = set()
        it = iter(tasks)
        for t in it:  # keep a bounded queue so an interrupt leaves little work in flight
            pending.add(self.pool.submit(evaluate_task, t, spec))
            if len(pending) >= 4 * self.workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(self.pool.submit(evaluate_task, nxt, spec))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


class _Dask:
    """Tasks on a dask.distributed cluster through a `Client`."""

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise MoesimError("--dask needs dask.distributed", "pip install 'moesim[dask]'") from None
        try:
            self.client = Client(address, timeout=f"{timeout_s}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise MoesimError(
                f"cannot reach the Dask scheduler at {address}: {reason}",
                "start one ('dask scheduler' and 'dask worker ADDRESS'), check the address, or drop --dask",
            ) from None
        self.workers = len(self.client.scheduler_info().get("workers", {}))

    def run(self, tasks: list[list[Point]], spec: SweepSpec):
        from distributed import as_completed

        spec_f = self.client.scatter(spec, broadcast=True)
        futures = [self.client.submit(evaluate_task, t, spec_f, pure=False) for t in tasks]
        try:
            for f in as_completed(futures, loop=self.client.loop):
                yield f.result()
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self.client.close()


def run_sweep(
    sweep: str | Path | SweepSpec,
    out: str | Path,
    workers: int = 1,
    dask: str | None = None,
    fresh: bool = False,
    flush_s: float = 2.0,
    progress: Progress | None = None,
    post: bool = True,
    dask_timeout_s: float = 10.0,
) -> SweepResult:
    """Run (or resume) a sweep into ``out``; see the module docstring.

    Args:
        sweep: a sweep YAML path or a validated spec.
        out: the results folder.
        workers: local processes (1: this process).
        dask: a Dask scheduler address; the sweep runs there instead.
        fresh: discard results already in ``out``.
        flush_s: seconds between shard writes at most.
        progress: called with (points done, points, label).
        post: write results.parquet, the CAP table, the Pareto front and the plots at the end.
        dask_timeout_s: how long to try reaching the Dask scheduler, s.
    """
    if workers < 1:
        raise MoesimError(f"--workers must be >= 1, got {workers}", "give 1 or more")
    t0 = time.perf_counter()
    spec = read_sweep(sweep) if not isinstance(sweep, SweepSpec) else sweep
    exp = expand(spec)
    out = Path(out)
    cluster = _Dask(dask, dask_timeout_s) if dask else None  # reach the scheduler before writing anything
    try:
        if fresh and out.exists():
            import shutil

            shutil.rmtree(out)
        _manifest(out, spec, exp, resume=not fresh)
        have = read_shards(out)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    done_ids = set(have["point_id"]) if len(have) else set()
    todo = [p for p in exp.points if p.point_id not in done_ids]
    total, done = len(exp.points), len(exp.points) - len(todo)
    resumed = done
    runner = cluster or _Local(min(workers, max(1, len(todo))))
    buffer: list[dict[str, Any]] = []
    last = time.perf_counter()
    t_run = time.perf_counter()
    shards = 0
    try:
        if progress:
            progress(done, total, f"{resumed} done before" if resumed else spec.name)
        for rows in runner.run(_tasks(todo, spec), spec):
            buffer.extend(rows)
            done += len(rows)
            if progress:
                progress(done, total, rows[-1]["label"])
            if time.perf_counter() - last >= flush_s:
                _write_shard(out, buffer)
                shards += 1
                buffer, last = [], time.perf_counter()
    finally:
        if buffer:  # what finished before an interrupt is kept
            _write_shard(out, buffer)
            shards += 1
        runner.close()
    run_s = time.perf_counter() - t_run
    df = read_shards(out)
    ids = set(order := {p.point_id: i for i, p in enumerate(exp.points)})
    df = df[df["point_id"].isin(ids)]
    df = df.iloc[df["point_id"].map(order).argsort()].reset_index(drop=True)  # the sweep's own order
    statuses = df["status"].value_counts().to_dict() if len(df) else {}
    summary: dict[str, Any] = {
        "name": spec.name,
        "out": str(out),
        "engine": spec.engine,
        "points": total,
        "pruned": exp.pruned,
        "combinations": exp.total,
        "evaluated_now": total - resumed,
        "done_before": resumed,
        "shards_written": shards,
        "workers": runner.workers if isinstance(runner, _Dask) else workers,
        "dask": dask,
        "status": statuses,
        "run_s": run_s,
        "points_per_s": (total - resumed) / run_s if run_s > 0 and total > resumed else None,
    }
    if post:
        from sim.sweep_post import finish

        df, extra = finish(df, spec, out)
        summary |= extra
    summary["wall_s"] = time.perf_counter() - t0
    write_atomic(out / "summary.json", lambda p: Path(p).write_text(clean_json(summary) + "\n"))
    return SweepResult(df, summary)
