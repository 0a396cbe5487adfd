"""A real ``moesim dashboard`` for the tests and the benchmark: a free loopback port and a running server."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
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
        [sys.executable, "-m", "dashboard.cli", "dashboard", "--port", str(port), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "moesim dashboard printed nothing"
        yield json.loads(line)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
