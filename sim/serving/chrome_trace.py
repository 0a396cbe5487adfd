"""A simulated serving run as a Chrome trace, for chrome://tracing and Perfetto (ui.perfetto.dev).

The file is the Trace Event Format's JSON object form, ``{"traceEvents": [...], "displayTimeUnit": "ms"}``:
complete events (``"ph": "X"``) with ``ts`` and ``dur`` in microseconds, ``pid``/``tid`` placing them, and
metadata events (``"ph": "M"``) naming processes (``process_name``) and threads (``thread_name``) through
``args.name``.

Layout: one process per replica (``replica 0 (decode pool)``; pid = replica + 1), one thread per GPU of the
replica (``GPU 3``; tid = GPU + 1). Each engine step is a slice named by its phase (``prefill``, ``decode`` or
``mixed``) on every GPU, holding sub-slices laid end to end:

- GPU 0 is drawn as the busiest GPU: ``compute`` lasts compute_s + straggler_s, then ``all-to-all`` (comm_s),
  then ``expert fetch`` (fetch_s).
- Every other GPU: ``compute`` (compute_s), ``straggler wait`` (straggler_s, idle while the busiest GPU
  finishes), ``all-to-all``, ``expert fetch``.

Host time (`sim.serving.host`): each replica has a ``host (CPU)`` thread (tid = `HOST_TID`, drawn first) where
each step's CPU work is laid end to end from the step's start: ``schedule``, ``prepare inputs``, ``launch`` (kernel
launches, or CUDA graph replays), ``sampling`` (raw CPU seconds, hidden behind the GPU or not; the columns
``*_cpu_s`` of the steps table). On the GPU threads, the step's GPU work starts after the host time it exposes
before the forward (scheduler_s + prepare_s); the exposed launch and sampling time is the idle gap at its end.
Steps tables without host columns (older runs) draw no host slices.

This is a simplification: the simulator reports only the wait behind the busiest GPU beyond the mean one,
not which GPU was busiest nor each GPU's own wait, and the wait happens inside every MoE layer, not once per
step. The all-to-all therefore starts at the same time on every GPU, as a collective does. When the
components add up to more than the step (rounding), they are scaled down to fit it; the step slice's args
keep the true seconds. KV-cache transfers (prefill → decode under disaggregation) are slices on extra
``KV transfer`` threads of the destination replica (more lanes when transfers overlap).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.model.errors import MoesimError
from moesim.sim.common import is_moesim_trace
from moesim.sim.serving.metrics import require_columns

STEP_COLUMNS = ("replica", "start_s", "duration_s", "phase", "compute_s", "comm_s", "straggler_s", "fetch_s")
KV_COLUMNS = ("request_id", "src_replica", "dst_replica", "start_s", "duration_s", "bytes")
_STEP_ARGS = ("tokens", "seqs", "prefill_tokens", "decode_seqs", "kv_used_frac", "waiting")
#: Exposed host seconds by part (added to the step's args) and the raw CPU seconds drawn on the host thread.
_HOST_ARGS = ("scheduler_s", "prepare_s", "sampling_s", "launch_s", "host_s", "launches", "graphs", "padded_batch")
_HOST_SLICES = (
    ("schedule", "scheduler_cpu_s"),
    ("prepare inputs", "prepare_cpu_s"),
    ("launch", "launch_cpu_s"),
    ("sampling", "sampling_cpu_s"),
)
#: Thread id of each replica's host (CPU) track.
HOST_TID = 100000


def _jsonable(v: Any) -> Any:
    """A numpy or pandas scalar as a plain JSON value (NaN and infinities become None)."""
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _gpu_counts(gpus_per_replica: dict[int, int] | int, replicas: list[int]) -> dict[int, int]:
    """GPUs of each replica in ``replicas``, checked."""
    if isinstance(gpus_per_replica, dict):
        missing = [r for r in replicas if r not in gpus_per_replica]
        if missing:
            raise MoesimError(
                f"gpus_per_replica has no entry for replica(s) {missing}",
                "give a GPU count for every replica, or one int for all",
            )
        counts = {r: int(gpus_per_replica[r]) for r in replicas}
    else:
        counts = dict.fromkeys(replicas, int(gpus_per_replica))
    bad = {r: g for r, g in counts.items() if g < 1}
    if bad:
        raise MoesimError(f"gpus_per_replica {bad} is below 1", "pass a positive GPU count per replica")
    return counts


def _ns(seconds: np.ndarray) -> np.ndarray:
    """Seconds as int64 nanoseconds (NaN as 0)."""
    return np.rint(np.nan_to_num(seconds) * 1e9).astype(np.int64)


def _slice(name: str, cat: str, pid: int, tid: int, start_ns: int, end_ns: int, args: dict | None = None) -> dict:
    """A complete ("X") event from integer nanoseconds; ts and dur in µs."""
    event = {
        "name": name,
        "cat": cat,
        "ph": "X",
        "pid": pid,
        "tid": tid,
        "ts": start_ns / 1000,
        "dur": (end_ns - start_ns) / 1000,
    }
    if args:
        event["args"] = args
    return event


def _meta(kind: str, pid: int, tid: int, args: dict) -> dict:
    """A metadata ("M") event such as ``process_name`` or ``thread_sort_index``."""
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": args}


#: Steps turned into events at a time while streaming (bounds the memory a long run's trace needs).
CHUNK_STEPS = 2000


def _step_events(sel: pd.DataFrame, gpus: dict[int, int], chunk: int = CHUNK_STEPS) -> Iterator[list[dict]]:
    """Phase slices and their sub-slices, on every GPU, for the steps in ``sel``: lists of events, ``chunk`` steps
    of one replica at a time (the edges are computed for the whole replica first, so chunks join seamlessly)."""
    arg_cols = [c for c in (*_STEP_ARGS, *_HOST_ARGS) if c in sel.columns]
    host_cols = all(c in sel.columns for _, c in _HOST_SLICES)
    for replica, grp in sel.groupby("replica", sort=True):
        grp = grp.sort_values("start_s", kind="stable")
        pid = int(replica) + 1
        start = _ns(grp["start_s"].to_numpy(float))
        end = _ns(grp["start_s"].to_numpy(float) + grp["duration_s"].to_numpy(float))
        end[:-1] = np.minimum(end[:-1], start[1:])  # slices of one GPU never overlap (float rounding)
        end = np.maximum(end, start)
        parts = [np.clip(np.nan_to_num(grp[c].to_numpy(float)), 0.0, None) for c in STEP_COLUMNS[4:]]
        compute, comm, straggler, fetch = parts
        total = compute + comm + straggler + fetch
        room = (end - start) / 1e9
        lead = _col(grp, "scheduler_s") + _col(grp, "prepare_s")  # exposed host time before the forward
        lead = np.minimum(lead, room)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(total > room - lead, (room - lead) / total, 1.0)
        host_edges = _host_edges(grp, start, end) if host_cols else None
        step_start = start
        start = np.minimum(start + _ns(lead), end)
        # Sub-slice edges (ns) on a non-busiest GPU; GPU 0 merges [b0, b2] into one compute slice.
        b0 = start
        b1 = np.minimum(start + _ns(compute * scale), end)
        b2 = np.minimum(start + _ns((compute + straggler) * scale), end)
        b3 = np.minimum(start + _ns((compute + straggler + comm) * scale), end)
        b4 = np.minimum(start + _ns(total * scale), end)
        phases = grp["phase"].astype(str).to_numpy()
        true_s = np.column_stack(parts)
        for lo in range(0, len(grp), chunk):
            hi = min(lo + chunk, len(grp))
            events: list[dict] = []
            if host_edges is not None:
                events.extend(_host_events(grp, pid, host_edges, lo, hi))
            rows = grp.iloc[lo:hi]
            arg_rows = rows[arg_cols].to_dict("records") if arg_cols else [{} for _ in range(hi - lo)]
            cols = (b0[lo:hi], b1[lo:hi], b2[lo:hi], b3[lo:hi], b4[lo:hi], end[lo:hi], step_start[lo:hi])
            for i, (s0, s1, s2, s3, s4, e, st) in enumerate(zip(*(c.tolist() for c in cols), strict=True)):
                args = {k: _jsonable(v) for k, v in arg_rows[i].items()}
                args.update(
                    zip(("compute_s", "comm_s", "straggler_s", "fetch_s"), true_s[lo + i].tolist(), strict=True)
                )
                phase = str(phases[lo + i])
                for g in range(gpus[int(replica)]):
                    tid = g + 1
                    events.append(_slice(phase, "step", pid, tid, st, e, args))
                    subs = (
                        [("compute", "compute", s0, s2)]
                        if g == 0
                        else [("compute", "compute", s0, s1), ("straggler wait", "straggler", s1, s2)]
                    )
                    subs += [("all-to-all", "comm", s2, s3), ("expert fetch", "fetch", s3, s4)]
                    events.extend(_slice(name, cat, pid, tid, a, b) for name, cat, a, b in subs if b > a)
            yield events


def _col(grp: pd.DataFrame, name: str) -> np.ndarray:
    """A column as non-negative floats [rows] (zeros when the table lacks it)."""
    if name not in grp.columns:
        return np.zeros(len(grp))
    return np.clip(np.nan_to_num(grp[name].to_numpy(float)), 0.0, None)


def _host_edges(grp: pd.DataFrame, start: np.ndarray, end: np.ndarray) -> list[np.ndarray]:
    """Edges [ns] of the host (CPU) slices of one replica's steps: raw CPU parts end to end from each step's start;
    ``len(_HOST_SLICES) + 1`` arrays [rows]."""
    edges = [start.copy()]
    for _, col in _HOST_SLICES:
        edges.append(np.minimum(edges[-1] + _ns(_col(grp, col)), end))
    return edges


def _host_events(grp: pd.DataFrame, pid: int, edges: list[np.ndarray], lo: int, hi: int) -> list[dict]:
    """The host (CPU) slices of rows ``lo:hi`` of one replica's steps (``edges`` from `_host_edges`)."""
    events: list[dict] = []
    rows = grp.iloc[lo:hi]
    graphs, launches = _col(rows, "graphs"), _col(rows, "launches")
    for k, (name, col) in enumerate(_HOST_SLICES):
        sec = _col(rows, col)
        edge, nxt = edges[k][lo:hi], edges[k + 1][lo:hi]
        for i in np.flatnonzero(nxt > edge).tolist():
            label = "graph replay" if name == "launch" and graphs[i] > 0 and launches[i] == 0 else name
            args = {"cpu_s": float(sec[i])}
            if name == "launch":
                args |= {"launches": int(launches[i]), "graphs": int(graphs[i])}
            events.append(_slice(label, "host", pid, HOST_TID, int(edge[i]), int(nxt[i]), args))
    return events


def _kv_events(kv: pd.DataFrame, gpus: dict[int, int]) -> tuple[list[dict], dict[int, int]]:
    """KV-transfer slices on lanes of each destination replica, and the lanes each replica needed."""
    events: list[dict] = []
    lanes_used: dict[int, int] = {}
    for replica, grp in kv.groupby("dst_replica", sort=True):
        grp = grp.sort_values("start_s", kind="stable")
        pid = int(replica) + 1
        start = _ns(grp["start_s"].to_numpy(float))
        end = np.maximum(_ns(grp["start_s"].to_numpy(float) + grp["duration_s"].to_numpy(float)), start)
        lane_end: list[int] = []  # greedy interval colouring: first lane free by this start
        rows = zip(start.tolist(), end.tolist(), grp[list(KV_COLUMNS)].to_dict("records"), strict=True)
        for s, e, row in rows:
            lane = next((k for k, free_at in enumerate(lane_end) if free_at <= s), len(lane_end))
            if lane == len(lane_end):
                lane_end.append(e)
            lane_end[lane] = e
            dur_s = row["duration_s"]
            args = {
                "request_id": _jsonable(row["request_id"]),
                "src_replica": _jsonable(row["src_replica"]),
                "bytes": _jsonable(row["bytes"]),
                "GB_per_s": _jsonable(row["bytes"] / dur_s / 1e9) if dur_s and dur_s > 0 else None,
            }
            events.append(_slice("KV transfer", "kv", pid, gpus[int(replica)] + 1 + lane, s, e, args))
        lanes_used[int(replica)] = len(lane_end)
    return events, lanes_used


def parse_window(text: str, flag: str = "--trace-window") -> tuple[float, float]:
    """``START:END`` in simulated seconds as ``(start_s, end_s)``; either side may be empty (0 and no end).

    Raises `MoesimError` naming ``flag`` when the text is not two numbers with 0 <= START < END.
    Example: ``parse_window("60:90") == (60.0, 90.0)``; ``parse_window("120:") == (120.0, inf)``.
    """
    hint = f"give {flag} START:END in simulated seconds, e.g. {flag} 60:90 (or 60: for the rest of the run)"
    parts = text.split(":")
    if len(parts) != 2:
        raise MoesimError(f"{flag} {text!r} is not START:END", hint)
    try:
        lo = float(parts[0]) if parts[0].strip() else 0.0
        hi = float(parts[1]) if parts[1].strip() else math.inf
    except ValueError:
        raise MoesimError(f"{flag} {text!r} is not two numbers", hint) from None
    if not (math.isfinite(lo) and lo >= 0 and not math.isnan(hi) and hi > lo):
        raise MoesimError(f"{flag} {text!r} needs 0 <= START < END", hint)
    return lo, hi


def check_trace_path(path: str | Path, force: bool = False) -> None:
    """Raise `MoesimError` before any work when ``--trace path`` could not be written.

    A folder is refused; an existing file is replaced only when moesim wrote it, or with ``force``.
    """
    path = Path(path)
    if path.is_dir():
        raise MoesimError(f"--trace {path} is a folder", "give --trace a file path, e.g. runs/trace.json")
    if path.exists() and not force and not is_moesim_trace(path):
        raise MoesimError(
            f"--trace {path} exists and was not written by moesim; refusing to overwrite it",
            "give --trace a new file name, or add --force",
        )


#: Above this many events a trace whose path does not end in .gz is written gzip-compressed to ``PATH.gz``
#: instead (about 150 bytes of JSON per event, so ~300 MB uncompressed; Perfetto reads .json.gz directly).
GZIP_ABOVE_EVENTS = 2_000_000
#: zlib level: 1 compresses moesim's repetitive JSON about 8x at several times the speed of the default 9.
GZIP_LEVEL = 1


def estimate_events(steps: pd.DataFrame, gpus_per_replica: dict[int, int] | int) -> int:
    """About how many events the steps of ``steps`` become: five per step per GPU, plus four host slices."""
    if not len(steps):
        return 0
    per_replica = steps.groupby("replica").size()
    if isinstance(gpus_per_replica, dict):
        g = np.array([gpus_per_replica.get(int(r), 1) for r in per_replica.index])
    else:
        g = np.full(len(per_replica), int(gpus_per_replica))
    return int((per_replica.to_numpy() * (5 * g + 4)).sum())


def write_chrome_trace(
    steps: pd.DataFrame,
    path: str | Path,
    *,
    gpus_per_replica: dict[int, int] | int,
    kv_transfers: pd.DataFrame | None = None,
    max_steps: int | None = None,
    window: tuple[float, float] | None = None,
    compress: bool | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the steps (and KV transfers) of a simulated run as a Chrome trace JSON file, streamed.

    Every step is written unless ``window`` or ``max_steps`` narrows it. The events are produced and written a
    chunk of steps at a time (`CHUNK_STEPS`), so memory stays bounded however long the run; the file is
    gzip-compressed when ``path`` ends in ``.gz``, or when ``compress`` is None and the trace would hold more than
    `GZIP_ABOVE_EVENTS` events (it is then written to ``path`` + ``.gz``, the path returned). The file is written
    atomically: a failure leaves any previous file intact.

    Args:
        steps: per-step DataFrame (``replica``, ``pool``, ``start_s``, ``duration_s``, ``phase``,
            ``compute_s``, ``comm_s``, ``straggler_s``, ``fetch_s``, s; ``tokens``, ``seqs``,
            ``prefill_tokens``, ``decode_seqs``, ``kv_used_frac``, ``waiting`` go to the step slices' args).
        path: the JSON file to write (its directory is created if missing).
        gpus_per_replica: GPUs of each replica, or one count for all.
        kv_transfers: prefill → decode KV transfers (``request_id``, ``src_replica``, ``dst_replica``,
            ``start_s``, ``duration_s``, s, ``bytes``), or None / empty.
        max_steps: most steps written, the earliest by start time (≥ 0; None: all). KV transfers starting after
            the last written step ends are left out with them.
        window: ``(start_s, end_s)`` in simulated seconds: only the steps and KV transfers that overlap it
            (timestamps stay those of the run).
        compress: True: gzip; False: plain JSON whatever the size; None: by the suffix and the size (above).
        force: replace an existing file even when moesim did not write it (else refused).

    Returns:
        ``path`` (the file written), ``events`` (trace events written, metadata included), ``steps_written``,
        ``steps_total``, ``truncated`` (some steps were left out), ``kv_transfers_written``, ``bytes`` (the file's
        size), ``json_bytes`` (uncompressed), ``gzip``, ``window_s`` (``[start, end]`` asked, or None) and
        ``span_s`` (``[first start, last end]`` of the written steps, s; None when none).
    """
    require_columns(steps, STEP_COLUMNS, "steps")
    if max_steps is not None and max_steps < 0:
        raise MoesimError(f"max_steps = {max_steps} is negative", "pass 0 or more")
    kv = kv_transfers if kv_transfers is not None else pd.DataFrame(columns=list(KV_COLUMNS))
    require_columns(kv, KV_COLUMNS, "kv_transfers")

    sel = steps.sort_values("start_s", kind="stable")
    if window is not None:
        lo, hi = window
        s0, s1 = sel["start_s"].astype(float), (sel["start_s"] + sel["duration_s"]).astype(float)
        sel = sel[(s0 < hi) & ((s1 > lo) | (s0 >= lo))]
        k0 = kv["start_s"].astype(float)
        kv = kv[(k0 < hi) & (((k0 + kv["duration_s"].astype(float)) > lo) | (k0 >= lo))]
    if max_steps is not None and len(sel) > max_steps:
        sel = sel.iloc[:max_steps]
        cutoff = float((sel["start_s"] + sel["duration_s"]).max()) if len(sel) else -math.inf
        kv = kv[kv["start_s"].astype(float) <= cutoff]
    truncated = len(sel) < len(steps)
    replicas = sorted({int(r) for r in steps["replica"]} | {int(r) for r in kv["dst_replica"]})
    gpus = _gpu_counts(gpus_per_replica, replicas)
    pools = steps.groupby("replica")["pool"].first().to_dict() if "pool" in steps.columns else {}

    path = Path(path)
    gz = path.name.endswith(".gz") if compress is None else bool(compress)
    if compress is None and not gz and estimate_events(sel, gpus) > GZIP_ABOVE_EVENTS:
        gz, path = True, path.with_name(path.name + ".gz")

    kv_body, kv_lanes = _kv_events(kv, gpus)
    meta: list[dict] = []
    for r in replicas:
        pid = r + 1
        pool = pools.get(r)
        name = f"replica {r} ({pool} pool)" if pool else f"replica {r}"
        # the first event names moesim too, so a compressed trace is recognised from its start (`is_moesim_trace`)
        meta.append(_meta("process_name", pid, 0, {"name": name, **({"generator": "moesim"} if not meta else {})}))
        meta.append(_meta("process_sort_index", pid, 0, {"sort_index": r}))
        if any(c in steps.columns for _, c in _HOST_SLICES):
            meta.append(_meta("thread_name", pid, HOST_TID, {"name": "host (CPU)"}))
            meta.append(_meta("thread_sort_index", pid, HOST_TID, {"sort_index": -1}))
        for g in range(gpus[r]):
            meta.append(_meta("thread_name", pid, g + 1, {"name": f"GPU {g}"}))
            meta.append(_meta("thread_sort_index", pid, g + 1, {"sort_index": g}))
        for lane in range(kv_lanes.get(r, 0)):
            tid = gpus[r] + 1 + lane
            meta.append(_meta("thread_name", pid, tid, {"name": "KV transfer" + (f" {lane + 1}" if lane else "")}))
            meta.append(_meta("thread_sort_index", pid, tid, {"sort_index": gpus[r] + lane}))

    span = None
    if len(sel):
        span = [float(sel["start_s"].min()), float((sel["start_s"] + sel["duration_s"]).max())]
    summary: dict[str, Any] = {
        "events": 0,
        "steps_written": len(sel),
        "steps_total": len(steps),
        "truncated": truncated,
        "kv_transfers_written": len(kv),
    }
    chunks = _chain([meta], _step_events(sel, gpus), [kv_body])
    counts = _stream_trace(chunks, path, gz, summary, force)
    return {
        "path": str(path),
        **summary,
        "bytes": counts["bytes"],
        "json_bytes": counts["json_bytes"],
        "gzip": gz,
        "window_s": [window[0], window[1] if math.isfinite(window[1]) else None] if window else None,
        "span_s": span,
    }


def _chain(*parts: Any) -> Iterator[list[dict]]:
    """The event lists of each iterable of event lists, in order."""
    for part in parts:
        yield from part


def _stream_trace(chunks: Iterator[list[dict]], path: Path, gz: bool, summary: dict, force: bool) -> dict[str, int]:
    """Write ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}`` chunk by chunk.

    ``summary["events"]`` is counted as the chunks are written; ``otherData`` (written last) holds ``summary``.
    Returns ``bytes`` (the file's size) and ``json_bytes`` (the JSON text's size).
    """
    import gzip
    import json

    from moesim.model.outputs import write_file

    counts = {"bytes": 0, "json_bytes": 0}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as raw:
            f = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) if gz else raw
            try:
                n = 0

                def put(text: str) -> None:
                    nonlocal n
                    data = text.encode("utf-8")
                    n += len(data)
                    f.write(data)

                put('{"traceEvents":[')
                first = True
                for events in chunks:
                    if not events:
                        continue
                    text = json.dumps(events, separators=(",", ":"), allow_nan=False)[1:-1]
                    put(text if first else "," + text)
                    first = False
                    summary["events"] += len(events)
                tail = {"generator": "moesim", **summary}
                put('],"displayTimeUnit":"ms","otherData":' + json.dumps(tail, separators=(",", ":")) + "}")
                counts["json_bytes"] = n
            finally:
                if gz:
                    f.close()
        counts["bytes"] = Path(tmp).stat().st_size

    write_file(path, write, owned=is_moesim_trace, force=force, flag="--trace")
    return counts
