"""``moesim dashboard``: serve the Streamlit app on 127.0.0.1 until interrupted."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from dashboard.cli._common import emit_json, err, out
from dashboard.cli.catalog import JsonOpt
from model import MoesimError

APP = Path(__file__).resolve().parent.parent / "app.py"
HOST = "127.0.0.1"


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise MoesimError(f"--port {port} is not a TCP port", "give a port from 1 to 65535, e.g. --port 8501")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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
    runner = "dashboard.server" if warm else "streamlit"
    cmd = [sys.executable, "-m", runner, "run", str(app), "--server.address", HOST, "--server.port", str(port)]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    return [*cmd, "--client.toolbarMode", "viewer"]


def dashboard(
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1.")] = 8501,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server to come up.")] = 60.0,
    json_out: JsonOpt = False,
) -> None:
    """Serve the dashboard (CAP overview, scenarios, sweeps, placement, profiles) on 127.0.0.1 until Ctrl-C.

    The server warms the pages up first (a few seconds), so the first page opened is quick.

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
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the server's own log goes to stderr so that --json leaves stdout to the one summary object
    proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env)
    try:
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
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    if proc.returncode not in (0, -signal.SIGTERM):
        raise MoesimError(f"the Streamlit server exited with code {proc.returncode}", "see its output above")
