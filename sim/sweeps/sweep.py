"""Running a sweep: local processes or a Dask cluster, parquet shards, resume after any interruption.

    from moesim.sim.sweeps.sweep import run_sweep
    res = run_sweep("examples/sweep-mixtral-gpu-choice.yaml", "runs/mixtral", workers=2)
    res.results  # one row per point (see `sim.sweeps.sweep_eval`), res.summary: JSON-ready figures

Results are appended to ``OUT/shards/`` as parquet files, each written to a
temporary name and renamed into place only once complete, so a shard is
either whole or absent, whatever kills the process (even ``kill -9``).
Rows are flushed at least every ``flush_s`` seconds. Restarting the same
sweep into the same folder reads the shards, skips every point whose
``point_id`` they hold, and runs the rest: no point is lost and none appears
twice; at most the last ``flush_s`` seconds of work are redone. Finished
shards are never rewritten.

When every point is done, ``results.parquet`` (all rows, with accuracy
scores), the post-processing (`sim.sweeps.sweep_report`: CAP table, Pareto front,
cheapest configuration for a throughput target, plots) and ``summary.json``
are written into ``OUT``.

``OUT`` is a sweep's own folder (`model.outputs.MARKER` marks it): a new sweep
goes only into a new or empty folder, or into an earlier sweep's folder
(resumed; ``fresh`` discards it first); any other folder is refused unless
``force``, and a dangerous one (``/``, the home or working folder, a ``.git``)
always. ``OUT/.lock`` holds the running sweep's pid, so a second sweep into
the same folder refuses while the first runs. Local workers exit when the
sweep's process goes, even after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.model import outputs
from moesim.model.errors import MoesimError
from moesim.sim.common import clean_json
from moesim.sim.sweeps.sweep_eval import evaluate_task, timer_key
from moesim.sim.sweeps.sweep_report import write_atomic
from moesim.sim.sweeps.sweep_spec import Expansion, Point, SweepSpec, _hash, base_scenario, expand, read_sweep

Progress = Callable[[int, int, str], None]
#: The lock file in a sweep's folder while a sweep runs into it (holds the pid).
LOCK = ".lock"
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


#: Most discrete-event points per task (`_tasks`).
DES_CHUNK = 4


def _tasks(points: list[Point], spec: SweepSpec) -> list[list[Point]]:
    """Points grouped into a worker's units of work, so that what one configuration's step timers computed serves the
    others built alike (`sweep_eval.timer_key`: the same configuration but for its batch limit, workload and SLOs).

    Analytical points: each configuration's points together (in chunks of at most `ANALYTICAL_CHUNK`, whose rates
    `sweep_eval.evaluate_rates` solves at once), and the configurations of one timer key packed into tasks of at most
    `ANALYTICAL_CHUNK` points, so one worker builds their shared step timers and curves once. Discrete-event
    points of a capacity search: those of one timer key in tasks of at most `DES_CHUNK`, so one worker's searches
    reuse one another's step-cost tables and routing banks (`sim.serving.capacity.shared_timers`); other
    discrete-event points: one task each. Groups come in the order of their first point."""
    if spec.engine == "des" and spec.capacity is None:
        return [[p] for p in points]
    keys: dict[str, str] = {}  # configuration -> its timer key
    groups: dict[str, dict[str, list[Point]]] = {}  # timer key -> configuration -> its points
    for p in points:
        key = keys.get(p.config_key)
        if key is None:
            key = keys[p.config_key] = timer_key(p)
        groups.setdefault(key, {}).setdefault(p.config_key, []).append(p)
    size = DES_CHUNK if spec.engine == "des" else ANALYTICAL_CHUNK
    tasks: list[list[Point]] = []
    for configs in groups.values():
        task: list[Point] = []
        for pts in configs.values():
            step = 1 if spec.engine == "des" else size  # a configuration's rates stay together (`evaluate_rates`)
            pieces = [pts[i : i + step] for i in range(0, len(pts), step)]
            for piece in pieces:
                if task and len(task) + len(piece) > size:
                    tasks.append(task)
                    task = []
                task.extend(piece)
        if task:
            tasks.append(task)
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
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.parquet"
    tmp = d / f".{name}.tmp"
    try:
        d.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(tmp, index=False)
        os.chmod(tmp, 0o666 & ~outputs.umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, d / name)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise outputs.write_error(d / name, exc) from None
    return d / name


def is_sweep_output(folder: Path) -> bool:
    """Whether ``folder`` holds a sweep written before moesim marked its outputs (``manifest.json`` or shards),
    or only what a sweep killed while claiming it leaves (its lock, a temporary marker file)."""
    if (folder / "manifest.json").is_file() or (folder / "shards").is_dir():
        return True
    names = [p.name for p in folder.iterdir()]
    return bool(names) and all(n == LOCK or n.startswith(f".{outputs.MARKER}{outputs._TAG}") for n in names)


def _lock_owner(out: Path) -> int | None:
    """The pid in ``out/.lock`` when that process is alive (a stale or unreadable lock: None)."""
    try:
        pid = int((out / LOCK).read_text().strip() or "0")
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # alive, someone else's
        return pid
    return pid


def _refuse_locked(out: Path) -> None:
    pid = _lock_owner(out)
    if pid is not None:
        raise MoesimError(
            f"another moesim sweep (pid {pid}) is running into --out {out}",
            f"wait for it to finish, stop it (kill {pid}), or give another --out folder",
        )


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` a sweep may not write into (no side effects; see the module docstring)."""
    outputs.check_replaceable(out, "sweep", force, legacy=is_sweep_output)
    if out.is_dir():
        _refuse_locked(out)


def _claim_out(out: Path, fresh: bool) -> Path:
    """Make ``out`` this sweep's folder: discard what may go, create it, mark it, lock it; returns the lock file.

    Call `_check_out` first. An earlier sweep's folder is kept (resumed) unless ``fresh``; anything else
    that passed the check (an empty folder, or a folder replaced with ``force``) is discarded.
    """
    if out.is_dir():
        _refuse_locked(out)  # again: one may have started since `_check_out`
        wrote = outputs.marker_command(out)
        ours = wrote == "sweep" or (wrote is None and is_sweep_output(out))
        if any(out.iterdir()) and (fresh or not ours):
            _discard(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise outputs.write_error(out, exc) from None
    if outputs.marker_command(out) != "sweep":
        info = {"command": "sweep", "pid": os.getpid(), "time": time.time()}
        outputs.write_text(out / outputs.MARKER, json.dumps(info))
    lock = out / LOCK
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~outputs.umask())
        except FileExistsError:
            _refuse_locked(out)
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        except OSError as exc:
            raise outputs.write_error(lock, exc) from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            lock.unlink(missing_ok=True)
            raise outputs.write_error(lock, exc) from None
        return lock
    raise MoesimError(f"cannot lock --out {out} ({lock} keeps reappearing)", "give another --out folder")


def _release(lock: Path) -> None:
    """Remove ``lock`` when it is still this process's."""
    with contextlib.suppress(OSError, ValueError):
        if int(lock.read_text().strip()) == os.getpid():
            lock.unlink()


def _discard(out: Path) -> None:
    """Remove ``out``: renamed aside first (a leftover name the next run removes), so it goes at once."""
    aside = out.parent / f".{out.name}{outputs._TAG}{os.getpid()}.old"
    try:
        os.rename(out, aside)
    except OSError as exc:
        raise outputs.write_error(out, exc) from None
    shutil.rmtree(aside, ignore_errors=True)


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
    info = {"name": spec.name, "spec_hash": h, "points": len(exp.points), "spec": spec.model_dump()}
    write_atomic(m, lambda p: Path(p).write_text(json.dumps(info, indent=1, default=str) + "\n"))


def _exit_with_parent(parent: int, poll_s: float = 0.25) -> None:
    """Worker initializer: end this process as soon as ``parent`` (the sweep's process) is gone.

    A daemon thread compares `os.getppid` with ``parent`` every ``poll_s`` seconds (portable; a ``kill -9`` of
    the parent cannot run any clean-up of its own, and the pool's queues do not tell idle workers).
    """
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="moesim-parent-watch", daemon=True).start()


class _Local:
    """A process pool (spawned workers that exit with this process), or the calling process itself for one worker."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = None
        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                workers, mp_context=mp.get_context("spawn"), initializer=_exit_with_parent, initargs=(os.getpid(),)
            )

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
        except (OSError, TimeoutError, ValueError) as exc:  # ValueError: an address distributed cannot parse
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
    force: bool = False,
) -> SweepResult:
    """Run (or resume) a sweep into ``out``; see the module docstring.

    Args:
        sweep: a sweep YAML path or a validated spec.
        out: the results folder.
        workers: local processes (1: this process).
        dask: a Dask scheduler address; the sweep runs there instead.
        fresh: discard results already in ``out`` (an earlier sweep's folder only, unless ``force``).
        flush_s: seconds between shard writes at most.
        progress: called with (points done, points, label).
        post: write results.parquet, the CAP table, the Pareto front and the plots at the end.
        dask_timeout_s: how long to try reaching the Dask scheduler, s.
        force: write into (replacing) an existing folder that is not a sweep's; never a dangerous one.
    """
    if workers < 1:
        raise MoesimError(f"--workers must be >= 1, got {workers}", "give 1 or more")
    t0 = time.perf_counter()
    spec = read_sweep(sweep) if not isinstance(sweep, SweepSpec) else sweep
    exp = expand(spec)
    out = Path(out)
    _check_out(out, force)
    cluster = _Dask(dask, dask_timeout_s) if dask else None  # reach the scheduler before writing anything
    try:
        lock = _claim_out(out, fresh)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        return _run_locked(spec, exp, out, cluster, workers, dask, fresh, flush_s, progress, post, t0)
    finally:
        _release(lock)


def _run_locked(
    spec: SweepSpec,
    exp: Expansion,
    out: Path,
    cluster: _Dask | None,
    workers: int,
    dask: str | None,
    fresh: bool,
    flush_s: float,
    progress: Progress | None,
    post: bool,
    t0: float,
) -> SweepResult:
    """`run_sweep` once ``out`` is claimed and locked (``t0``: its start, `time.perf_counter` seconds)."""
    try:
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
        try:
            if buffer:  # what finished before an interrupt is kept
                _write_shard(out, buffer)
                shards += 1
        finally:
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
        from moesim.sim.sweeps.sweep_post import finish

        df, extra = finish(df, spec, out)
        summary |= extra
    summary["wall_s"] = time.perf_counter() - t0
    write_atomic(out / "summary.json", lambda p: Path(p).write_text(clean_json(summary) + "\n"))
    return SweepResult(df, summary)
