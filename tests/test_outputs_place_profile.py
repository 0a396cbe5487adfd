"""Output safety of ``moesim place``, ``calibrate``, ``import`` and ``profile``, and stopping ``moesim dashboard``.

Each writing command is pointed at a folder holding a user's precious file (refused, the file intact), at its
own earlier output (accepted), at a user's file (refused without ``--force``), at a file, a read-only folder and
a full disk (one error line, nothing left behind). The dashboard is stopped by SIGTERM and by ``kill -9`` of
``moesim dashboard``: its Streamlit server goes too, the port is freed and its private scratch folder removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from moesim.dashboard.cli import main
from moesim.model.outputs import MARKER
from moesim.placement.plan import PlacementPlan
from moesim.profiling.tables import read_table, write_table

ROOT = Path(__file__).resolve().parents[1]
PLACE = ["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--tokens", "200"]
PLACE += ["--method", "eplb,round-robin", "--export", "sglang,trtllm"]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), for before/after comparisons."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


def one_error(code: int, err: str, *words: str) -> None:
    """Exit 1 with exactly one ``error:`` line holding ``words``, and no traceback."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and "Traceback" not in err, err
    assert sum(x.startswith("error:") for x in lines) == 1 and lines[-1].startswith("error:"), err
    assert all(w in lines[-1] for w in words), lines[-1]


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    """A folder moesim did not write, holding a user's file."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("years of work\n")
    return d


def full_disk(monkeypatch) -> None:
    """Every write through `model.outputs` fails as on a full disk (at the fsync stage, after the data)."""

    def enospc() -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("moesim.model.outputs.umask", enospc)


# --- moesim place ---------------------------------------------------------------------------------------------------
def test_place_refuses_a_folder_it_did_not_write_and_replaces_its_own(capsys, tmp_path, precious):
    before = tree(precious)
    code, _, err = run(capsys, *PLACE, "--out", str(precious))
    one_error(code, err, str(precious), "--force")
    assert tree(precious) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]

    out = tmp_path / "pl"
    assert run(capsys, *PLACE, "--out", str(out), "--json")[0] == 0
    assert (out / MARKER).is_file() and PlacementPlan.from_json(out / "plan_eplb.json").num_gpus == 8
    # the TensorRT-LLM options name the load-balancer file where it ended up, not the staging folder
    opts = (out / "export" / "trtllm_extra_llm_api_options.yaml").read_text()
    assert str((out / "export" / "trtllm_load_balancer.yaml").resolve()) in opts and ".moesim-tmp-" not in opts
    (out / "plan_round-robin.json").unlink()
    code, o, _ = run(capsys, *PLACE, "--out", str(out), "--json")  # its own earlier output: replaced whole
    assert code == 0 and json.loads(o)["out"] == str(out) and (out / "plan_round-robin.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "pl"]  # no staging folder left

    code, _, _ = run(capsys, *PLACE, "--out", str(precious), "--force")  # --force replaces it
    assert code == 0 and not (precious / "notes.txt").exists() and (precious / "summary.json").is_file()


def test_place_recognises_an_older_output_without_marker(capsys, tmp_path):
    old = tmp_path / "old"
    (old / "export").mkdir(parents=True)
    for name in ("summary.json", "plan_eplb.json", "export/sglang_expert_location.json"):
        (old / name).write_text("{}")
    assert run(capsys, *PLACE, "--out", str(old))[0] == 0 and (old / MARKER).is_file()
    (old / "mine.txt").write_text("x")
    (old / MARKER).unlink()  # an older output a user added a file to is not recognised
    code, _, err = run(capsys, *PLACE, "--out", str(old))
    one_error(code, err, str(old), "--force")
    assert (old / "mine.txt").is_file()


def test_place_force_still_refuses_dangerous_folders(capsys, tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "keep.txt").write_text("x")
    monkeypatch.chdir(tmp_path / "work")
    code, _, err = run(capsys, *PLACE, "--out", ".", "--force")
    one_error(code, err, "working folder")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    code, _, err = run(capsys, *PLACE, "--out", str(repo), "--force")
    one_error(code, err, ".git")
    assert (tmp_path / "work" / "keep.txt").is_file() and (repo / ".git").is_dir()


def test_place_out_is_a_file_or_the_disk_is_full(capsys, tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("mine")
    code, _, err = run(capsys, *PLACE, "--out", str(f))
    one_error(code, err, str(f), "not a folder")
    assert f.read_text() == "mine"
    full_disk(monkeypatch)
    code, _, err = run(capsys, *PLACE, "--out", str(tmp_path / "o"))
    one_error(code, err, "no space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_place_into_a_read_only_folder(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run(capsys, *PLACE, "--out", str(ro / "o"))
        one_error(code, err, "permission denied")
        assert not any(ro.iterdir())
    finally:
        ro.chmod(0o755)


# --- moesim calibrate -----------------------------------------------------------------------------------------------
@pytest.fixture
def tables(tmp_path: Path, h100) -> Path:
    """A folder of two small synthetic tables (the shapes of test_profiling's, fewer rows)."""
    from test_profiling import gemm_table, moe_table

    d = tmp_path / "tables"
    d.mkdir()
    meta = {"source": "synthetic", "device_key": h100.key, "hardware": h100.model_dump()}
    write_table(gemm_table(h100).iloc[::3], d / "gemm.parquet", meta)
    write_table(moe_table(h100), d / "moe.parquet", meta)
    return d


def test_calibrate_never_overwrites_a_users_file(capsys, tmp_path, tables):
    mine = tmp_path / "mine.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(mine)
    before = mine.read_bytes()
    code, _, err = run(capsys, "calibrate", str(tables), "--out", str(mine))
    one_error(code, err, str(mine), "--force")
    assert mine.read_bytes() == before
    table = tables / "gemm.parquet"  # a moesim table is not a calibration either
    before = table.read_bytes()
    code, _, err = run(capsys, "calibrate", str(tables), "--out", str(table))
    one_error(code, err, "not a calibration")
    assert table.read_bytes() == before

    cal = tmp_path / "cal.parquet"
    assert run(capsys, "calibrate", str(tables), "--out", str(cal))[0] == 0
    first = cal.stat().st_mtime_ns
    assert run(capsys, "calibrate", str(tables), "--out", str(cal), "--seed", "1")[0] == 0  # its own file: replaced
    assert cal.stat().st_mtime_ns >= first and not list(tmp_path.glob(".cal.parquet*"))
    assert run(capsys, "calibrate", str(tables), "--out", str(mine), "--force")[0] == 0  # --force overwrites
    from moesim.profiling.calibrate import is_calibration_file

    assert is_calibration_file(mine)


def test_calibrate_report_folder_and_bad_outs(capsys, tmp_path, tables, precious):
    pytest.importorskip("matplotlib")
    before = tree(precious)
    code, _, err = run(capsys, "calibrate", str(tables), "--out", str(tmp_path / "c.parquet"), "--report",
                       str(precious))  # fmt: skip
    one_error(code, err, str(precious), "--force")
    assert tree(precious) == before and not (tmp_path / "c.parquet").exists()
    rep = tmp_path / "rep"
    for _ in range(2):  # a new folder, then its own report again
        code, _, _ = run(capsys, "calibrate", str(tables), "--out", str(tmp_path / "c.parquet"), "--report", str(rep))
        assert code == 0 and (rep / "errors.csv").is_file() and (rep / MARKER).is_file()
    code, _, err = run(capsys, "calibrate", str(tables), "--out", str(tables))
    one_error(code, err, "is a folder")
    code, _, err = run(capsys, "calibrate", str(tables), "--out", str(precious / "notes.txt" / "c.parquet"))
    one_error(code, err, "cannot write")
    assert tree(precious) == before


def test_calibrate_on_a_full_disk_leaves_nothing(capsys, tmp_path, tables, monkeypatch):
    full_disk(monkeypatch)
    code, _, err = run(capsys, "calibrate", str(tables), "--out", str(tmp_path / "c.parquet"))
    one_error(code, err, "no space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]


# --- moesim import --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    with torch.profiler.profile(record_shapes=True) as prof:
        torch.mm(torch.randn(8, 16), torch.randn(16, 32))
    path = tmp_path_factory.mktemp("trace") / "t.json"
    prof.export_chrome_trace(str(path))
    return path


def test_import_adds_to_its_folder_and_never_over_a_users_file(capsys, tmp_path, trace, precious):
    before = tree(precious)
    code, _, err = run(capsys, "import", str(trace), "--out", str(precious))
    one_error(code, err, str(precious), "--force")
    assert tree(precious) == before

    out = tmp_path / "imp"
    assert run(capsys, "import", str(trace), "--out", str(out))[0] == 0
    (out / "calibration.parquet").write_bytes(b"")  # not a table: a later run must leave it alone
    assert run(capsys, "import", str(trace), "--out", str(out), "--force")[0] == 0
    assert (out / "calibration.parquet").read_bytes() == b"" and read_table(out / "trace_gemm.parquet")[0]["m"][0] == 8
    (out / "calibration.parquet").unlink()
    assert run(capsys, "import", str(trace), "--out", str(out))[0] == 0  # its own folder again: tables replaced

    (out / "unmapped.csv").write_text("my own list\n")  # a user's file under a name import writes
    code, _, err = run(capsys, "import", str(trace), "--out", str(out))
    one_error(code, err, "unmapped.csv", "--force")
    assert (out / "unmapped.csv").read_text() == "my own list\n"

    code, _, _ = run(capsys, "import", str(trace), "--out", str(precious), "--force")  # adds; deletes nothing
    assert code == 0 and (precious / "notes.txt").read_text() == "years of work\n"
    assert (precious / "trace_gemm.parquet").is_file() and not (precious / MARKER).exists()


def test_import_out_is_a_file_or_the_disk_is_full(capsys, tmp_path, trace, monkeypatch):
    f = tmp_path / "file"
    f.write_text("mine")
    code, _, err = run(capsys, "import", str(trace), "--out", str(f))
    one_error(code, err, str(f), "not a folder")
    code, _, err = run(capsys, "import", str(trace), "--out", str(f / "sub"))
    one_error(code, err, str(f))
    assert f.read_text() == "mine"
    full_disk(monkeypatch)
    code, _, err = run(capsys, "import", str(trace), "--out", str(tmp_path / "o"))
    one_error(code, err, "no space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --- moesim profile -------------------------------------------------------------------------------------------------
def test_profile_refuses_before_timing_anything(capsys, tmp_path, precious):
    before = tree(precious)
    t0 = time.perf_counter()
    code, _, err = run(capsys, "profile", "--ops", "memcpy", "--out", str(precious))
    one_error(code, err, str(precious), "--force")
    assert time.perf_counter() - t0 < 20 and tree(precious) == before
    f = tmp_path / "file"
    f.write_text("mine")
    code, _, err = run(capsys, "profile", "--ops", "memcpy", "--out", str(f))
    one_error(code, err, str(f))


def test_profile_adds_tables_to_its_own_folder(tmp_path):
    pytest.importorskip("torch")
    from moesim.model.errors import MoesimError
    from moesim.profiling.runner import profile

    out = tmp_path / "prof"
    run1 = profile("cpu", out, mode="tiny", ops=["memcpy"])
    assert set(run1.tables) == {"memcpy"} and (out / MARKER).is_file() and (out / "hardware.yaml").is_file()
    (out / "calibration.parquet").write_bytes(b"a user's bytes")
    run2 = profile("cpu", out, mode="tiny", ops=["memcpy"])  # again into its own folder: kept what is there
    assert run2.tables["memcpy"] == out / "memcpy.parquet" and (out / "calibration.parquet").read_bytes()
    (out / "hardware.yaml").write_text("my: notes\n")  # not a device spec: never overwritten
    t0 = time.perf_counter()
    with pytest.raises(MoesimError, match=r"hardware\.yaml, which moesim did not write"):
        profile("cpu", out, mode="tiny", ops=["memcpy"])
    assert (out / "hardware.yaml").read_text() == "my: notes\n"
    assert time.perf_counter() - t0 < 5.0  # refused before timing anything (a tiny run takes longer)


# --- moesim dashboard -----------------------------------------------------------------------------------------------
def _port_free(port: int) -> bool:
    """Whether a new server could listen on ``port`` (as servers bind: TIME_WAIT leftovers do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _gone(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` ends (or is a zombie) within ``timeout_s`` seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_moesim_dashboard_stops_its_server(sig):
    pytest.importorskip("streamlit")
    from dashboard_server import free_port, stop_group  # tests/dashboard_server.py

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moesim.dashboard.cli", "dashboard", "--port", str(port), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        child = info["pid"]
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        scratch = Path(next(e for e in env if e.startswith(b"MOESIM_DASHBOARD_SCRATCH=")).split(b"=", 1)[1].decode())
        assert scratch.is_dir() and scratch.stat().st_mode & 0o077 == 0  # private to this server
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        assert _gone(child, 20), "the Streamlit server outlived moesim dashboard"
        t0 = time.monotonic()
        while not _port_free(port) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert _port_free(port) and not scratch.exists()
    finally:
        with contextlib.suppress(Exception):
            stop_group(proc, grace_s=5)


def test_a_read_only_out_is_one_line_for_every_command(capsys, tmp_path, tables, trace, monkeypatch):
    """The real chmod case is `test_place_into_a_read_only_folder` (skipped as root, who may write anyway)."""

    def denied(*_args, **_kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    ro = tmp_path / "ro"
    ro.mkdir()
    access = os.access
    monkeypatch.setattr("moesim.model.outputs.tempfile.mkdtemp", denied)
    monkeypatch.setattr("moesim.model.outputs.tempfile.mkstemp", denied)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not str(path).startswith(str(ro)) and access(path, mode))
    for argv in (
        [*PLACE, "--out", str(ro / "p")],
        ["calibrate", str(tables), "--out", str(ro / "c.parquet")],
        ["import", str(trace), "--out", str(ro / "i")],
        ["profile", "--ops", "memcpy", "--out", str(ro / "t")],
    ):
        code, _, err = run(capsys, *argv)
        one_error(code, err, str(ro), "permission denied")
        assert not any(ro.iterdir()), argv[0]
