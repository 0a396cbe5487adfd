"""``moesim dashboard``: serve the Streamlit app on 127.0.0.1 until interrupted."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from moesim.dashboard.cli._common import emit_json, err, finite, out
from moesim.dashboard.cli.catalog import JsonOpt
from moesim.model import MoesimError

APP = Path(__file__).resolve().parent.parent / "app.py"
HOST = "127.0.0.1"
#: The environment variable naming the server's private scratch folder (`dashboard.logic.profiles.cache_root`).
SCRATCH_ENV = "MOESIM_DASHBOARD_SCRATCH"
#: Seconds the Streamlit server gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 5.0


class _Stopped(Exception):
    """SIGTERM or SIGHUP reached ``moesim dashboard``: stop the server and exit."""


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies, even by ``kill -9``
    (Linux ``prctl(PR_SET_PDEATHSIG)``); None where that is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no locks, no allocation-heavy work
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `_Stopped` inside the block (so ``finally`` stops the child), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):  # a second signal must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        raise _Stopped(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM ``proc``, wait up to ``grace_s`` seconds, then SIGKILL it and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise MoesimError(f"--port {port} is not a TCP port", "give a port from 1 to 65535, e.g. --port 8501")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the server binds: connections of a server stopped a moment ago (TIME_WAIT) do not hold the port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise MoesimError(
                f"port {port} on {HOST} is not free ({exc.strerror})", "stop what uses it or give another --port"
            ) from None


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float) -> float:
    """Seconds until the server answers its health check; `MoesimError` if it exits or times out."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise MoesimError(f"the Streamlit server exited with code {proc.returncode}", "see its output above")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)
    raise MoesimError(f"the Streamlit server did not answer within {timeout_s:.0f} s", "see its output above")


def streamlit_command(app: str | Path, port: int, warm: bool = False) -> list[str]:
    """The command that serves Streamlit script ``app`` on 127.0.0.1:``port``, headless, as the dashboard runs.

    ``warm``: through `dashboard.server`, which warms the app's modules and caches up before serving.
    """
    runner = "moesim.dashboard.server" if warm else "streamlit"
    cmd = [sys.executable, "-m", runner, "run", str(app), "--server.address", HOST, "--server.port", str(port)]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    return [*cmd, "--client.toolbarMode", "viewer"]


def dashboard(
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1.")] = 8501,
    timeout: Annotated[
        float,
        typer.Option(
            callback=finite("--timeout", 0.0, 3600.0, lo_open=True), help="Seconds to wait for the server to come up."
        ),
    ] = 60.0,
    json_out: JsonOpt = False,
) -> None:
    """Serve the dashboard (CAP overview, scenarios, sweeps, placement, profiles) on 127.0.0.1 until Ctrl-C.

    The server warms the pages up first (a few seconds), so the first page opened is quick. Ctrl-C, SIGTERM
    or SIGHUP stop it (the Streamlit server with it, also when this process is killed); its scratch files live
    in a private temporary folder removed when it stops.

    With --json, one object {url, port, pid, ready_s} is printed on stdout once the server answers.

    Needs the dashboard extra: pip install -e '.\\[dashboard]'.

    Example: moesim dashboard --port 8501
    """
    missing = [m for m in ("streamlit", "plotly") if importlib.util.find_spec(m) is None]
    if missing:
        raise MoesimError(f"the dashboard needs {' and '.join(missing)}", "pip install -e '.[dashboard]'")
    _check_port(port)
    url = f"http://{HOST}:{port}"
    cmd = streamlit_command(APP, port, warm=True)
    scratch = tempfile.mkdtemp(prefix="moesim-dashboard-")  # private (0700), one per server
    env = {**os.environ, "PYTHONUNBUFFERED": "1", SCRATCH_ENV: scratch}
    proc: subprocess.Popen | None = None
    stopped = False
    try:
        with stop_on_sigterm():
            try:
                # the server's own log goes to stderr so that --json leaves stdout to the one summary object
                proc = subprocess.Popen(
                    cmd, stdout=sys.stderr, stderr=sys.stderr, env=env, preexec_fn=die_with_parent()
                )
                ready = wait_ready(proc, url, timeout)
                info = {"url": url, "port": port, "pid": proc.pid, "ready_s": round(ready, 2), "app": str(APP)}
                if json_out:
                    emit_json(info)
                else:
                    out.print(f"moesim dashboard at {url} (ready in {ready:.1f} s); Ctrl-C stops it")
                proc.wait()
            except KeyboardInterrupt:
                err.print("stopping the dashboard")
                raise
            except _Stopped as exc:
                err.print(f"stopping the dashboard ({exc})")
                stopped = True
            finally:
                if proc is not None:
                    stop(proc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc is None or stopped:
        return
    if proc.returncode not in (0, -signal.SIGTERM):
        raise MoesimError(f"the Streamlit server exited with code {proc.returncode}", "see its output above")
