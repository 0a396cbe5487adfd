"""A real ``moesim dashboard`` for the tests and the benchmark: a free loopback port and a running server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_dashboard(port: int | None = None) -> Iterator[dict]:
    """A real ``moesim dashboard --json`` on 127.0.0.1 (a free port by default): its JSON line; stopped on exit."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moesim.dashboard.cli", "dashboard", "--port", str(port), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group: the Streamlit child can be ended with it
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "moesim dashboard printed nothing"
        yield json.loads(line)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """End ``proc`` (started with ``start_new_session=True``) and every process in its group.

    SIGTERM to ``proc`` first (``moesim dashboard`` then stops its Streamlit server itself), then, after
    ``grace_s`` seconds or once ``proc`` is gone, SIGKILL to whatever is left in the group; ``proc`` is reaped.
    """
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    t0 = time.monotonic()
    while group_alive(proc.pid) and time.monotonic() - t0 < grace_s:  # the child's own graceful exit
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still running (zombies excepted, on Linux)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp
                return True
    return False
