"""Output safety of simulate, train, sweep, demo and --trace: nothing moesim did not write is lost.

A folder holding a precious file survives every command; an earlier output of the same command is replaced;
``--force`` replaces a foreign folder but never ``.``, ``..``, ``/``, the home folder or a ``.git``; files get the
user's umask; an unwritable path or a full disk is one error line with nothing left behind; a second sweep into a
running sweep's folder refuses; ``kill -9`` of a sweep does not leave its workers running.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model import outputs
from moesim.model.errors import MoesimError

REPO = Path(__file__).resolve().parents[1]

SERVE = {
    "model": "mixtral-8x7b",
    "cluster": "dgx-h100",
    "layout": {"tp": 1, "dp_attn": 8, "ep": 8},
    "workload": {
        "arrival": "poisson",
        "rate": 20,
        "requests": 20,
        "input": {"dist": "lognormal", "mean": 256, "cv": 1.0, "max": 1024},
        "output": {"dist": "lognormal", "mean": 32, "cv": 1.0, "max": 128},
    },
}
TRAIN = {
    "model": "olmoe-1b-7b",
    "gpu": "H100-SXM",
    "nodes": 1,
    "gpus_per_node": 8,
    "layout": {"tp": 1, "pp": 2, "ep": 4, "zero": 1},
    "batch": {"global_batch": 32, "micro_batch": 1, "seq_len": 1024},
}
SWEEP = {
    "name": "t",
    "base": {
        "model": "mixtral-8x7b",
        "gpu": "H100-SXM",
        "workload": {
            "arrival": "poisson",
            "requests": 200,
            "input": {"dist": "lognormal", "mean": 256, "cv": 1.0},
            "output": {"dist": "lognormal", "mean": 64, "cv": 1.0},
        },
        "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
    },
    "axes": {"gpus": [2, 4], "layout": [{"tp": "gpus"}], "rate": [1, 8]},
}


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """The three input files, in ``tmp_path/in``."""
    d = tmp_path / "in"
    d.mkdir()
    files = {"simulate": d / "serve.yaml", "train": d / "train.yaml", "sweep": d / "sweep.yaml"}
    for name, data in (("simulate", SERVE), ("train", TRAIN), ("sweep", SWEEP)):
        files[name].write_text(yaml.safe_dump(data))
    return files


def argv(command: str, inputs: dict[str, Path], out: str | Path, *extra: str) -> list[str]:
    """The fastest argv of ``command`` writing into ``out``."""
    if command == "demo":
        return ["demo", "--out", str(out), "--no-profile", *extra]
    tail = ["--workers", "1"] if command == "sweep" else []
    return [command, str(inputs[command]), "--out", str(out), "--json", *tail, *extra]


def run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_error(code: int, err: str) -> str:
    """The one ``error:`` line of a failed command (and no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("sweep", "simulating"))]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def precious(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "summary.json").write_text("{}")  # looks like an output, but other files say it is not one
    return folder


COMMANDS = ("simulate", "train", "sweep", "demo")


# ---------------------------------------------------------------- a folder moesim did not write


@pytest.mark.parametrize("extra", [(), ("--fresh",)], ids=["sweep", "sweep --fresh"])
def test_precious_folder_survives_sweep(capsys, tmp_path, inputs, extra):
    mine = precious(tmp_path / "mine")
    before = tree(tmp_path)
    code, _, err = run(capsys, argv("sweep", inputs, mine, *extra))
    assert "refusing to replace it" in one_error(code, err) and "--force" in err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_precious_folder_survives(capsys, tmp_path, inputs, command):
    mine = precious(tmp_path / "mine")
    before = tree(tmp_path)
    code, _, err = run(capsys, argv(command, inputs, mine))
    line = one_error(code, err)
    assert f"--out {mine} already holds files moesim did not write" in line and "--force" in line
    assert tree(tmp_path) == before
    # the output of another command is not this one's either
    (mine / "notes.txt").unlink()
    other = {"simulate": "train"}.get(command, "simulate")
    (mine / outputs.MARKER).write_text(json.dumps({"command": other}))
    code, _, err = run(capsys, argv(command, inputs, mine))
    assert f"the output of 'moesim {other}'" in one_error(code, err)


@pytest.mark.parametrize("command", ("simulate", "train", "sweep"))
def test_rerun_into_its_own_output_and_force(capsys, tmp_path, inputs, command):
    out = tmp_path / "run"
    for _ in range(2):  # an earlier output of the same command is replaced (sweep: resumed)
        code, _, err = run(capsys, argv(command, inputs, out))
        assert code == 0, err
        assert outputs.marker_command(out) == command and (out / "summary.json").is_file()
    if command == "sweep":
        code, _, err = run(capsys, argv(command, inputs, out, "--fresh"))
        assert code == 0 and json.loads((out / "summary.json").read_text())["evaluated_now"] == 4, err
        assert not (out / ".lock").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    # --force replaces a folder moesim did not write
    mine = precious(tmp_path / "mine")
    code, _, err = run(capsys, argv(command, inputs, mine, "--force"))
    assert code == 0, err
    assert not (mine / "notes.txt").exists() and outputs.marker_command(mine) == command


def test_outputs_written_before_markers_are_replaced(capsys, tmp_path, inputs):
    for command, names in (
        ("simulate", ["summary.json", "requests.parquet", "steps.parquet", "timeline.png"]),
        ("train", ["summary.json", "tasks.parquet", "memory.csv"]),
        ("sweep", ["manifest.json"]),
    ):
        old = tmp_path / f"old-{command}"
        old.mkdir()
        for name in names:
            (old / name).write_text("{}")
        code, _, err = run(capsys, argv(command, inputs, old, *(["--fresh"] if command == "sweep" else [])))
        assert code == 0, err
        assert outputs.marker_command(old) == command
    from moesim.dashboard.report import REPORT_FILES, is_report

    (tmp_path / "report").mkdir()
    for name in REPORT_FILES:
        (tmp_path / "report" / name).write_text("")
    assert is_report(tmp_path / "report")
    (tmp_path / "report" / "notes.txt").write_text("")
    assert not is_report(tmp_path / "report")


# ---------------------------------------------------------------- folders never replaced


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", [".", "..", "/", "home", "git"])
def test_dangerous_out_is_refused_even_with_force(capsys, tmp_path, inputs, monkeypatch, command, where):
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("keep me")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = {"home": str(tmp_path / "home"), "git": str(tmp_path / "repo")}.get(where, where)
    before = tree(tmp_path)
    for extra in ((), ("--force",)):
        code, _, err = run(capsys, argv(command, inputs, out, *extra))
        assert f"refusing to write into --out {out}" in one_error(code, err)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- --trace


@pytest.mark.parametrize("command", ("simulate", "train"))
def test_trace_never_overwrites_a_file_moesim_did_not_write(capsys, tmp_path, inputs, command):
    trace = tmp_path / "trace.json"
    trace.write_text('{"traceEvents": []}')  # someone else's trace
    before = tree(tmp_path)
    code, _, err = run(capsys, [command, str(inputs[command]), "--trace", str(trace), "--json"])
    line = one_error(code, err)
    assert f"--trace {trace} exists and was not written by moesim" in line and "--force" in line
    assert tree(tmp_path) == before
    code, _, err = run(capsys, [command, str(inputs[command]), "--trace", str(trace), "--json", "--force"])
    assert code == 0, err
    assert json.loads(trace.read_text())["otherData"]["generator"].startswith("moesim")
    code, _, err = run(capsys, [command, str(inputs[command]), "--trace", str(trace), "--json"])  # its own: replaced
    assert code == 0, err
    code, _, err = run(capsys, [command, str(inputs[command]), "--trace", str(tmp_path), "--json"])
    assert f"--trace {tmp_path} is a folder" in one_error(code, err)
    code, _, err = run(capsys, [command, str(inputs[command]), "--trace", str(trace / "x.json"), "--json"])
    assert "cannot write" in one_error(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "trace.json"]


# ---------------------------------------------------------------- permissions, unwritable paths, a full disk


def test_files_get_the_users_umask(capsys, tmp_path, inputs):
    old = os.umask(0o027)
    try:
        for command in ("simulate", "train", "sweep"):
            code, _, err = run(capsys, argv(command, inputs, tmp_path / command))
            assert code == 0, err
        code, _, err = run(capsys, ["simulate", str(inputs["simulate"]), "--trace", str(tmp_path / "t.json")])
        assert code == 0, err
    finally:
        os.umask(old)
    paths = [p for c in ("simulate", "train", "sweep") for p in (tmp_path / c).rglob("*")]
    paths += [tmp_path / c for c in ("simulate", "train", "sweep")] + [tmp_path / "t.json"]
    assert any(p.parent.name == "shards" for p in paths)
    for p in paths:
        want = 0o750 if p.is_dir() else 0o640
        assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode))


@pytest.mark.parametrize("command", COMMANDS)
def test_out_under_a_file_is_one_line_and_leaves_nothing(capsys, tmp_path, inputs, command):
    (tmp_path / "afile").write_text("x")
    before = tree(tmp_path)
    code, _, err = run(capsys, argv(command, inputs, tmp_path / "afile" / "out"))
    assert "cannot write" in one_error(code, err)
    code, _, err = run(capsys, argv(command, inputs, tmp_path / "afile"))
    assert "exists and is not a folder" in one_error(code, err)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("command", ("simulate", "train", "sweep"))
def test_full_disk_is_one_line_and_keeps_the_previous_output(capsys, tmp_path, inputs, monkeypatch, command):
    out = tmp_path / "run"
    code, _, err = run(capsys, argv(command, inputs, out, *(["--fresh"] if command == "sweep" else [])))
    assert code == 0, err
    before = tree(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", full)  # publishing a folder
    monkeypatch.setattr(os, "replace", full)  # publishing a file (a sweep's shards and summary)
    code, _, err = run(capsys, argv(command, inputs, out, *(["--fresh"] if command == "sweep" else [])))
    assert "no space left on the device" in one_error(code, err)
    monkeypatch.undo()
    assert tree(tmp_path) == before  # sweep --fresh could not set the old results aside: all still there


def test_sweep_full_disk_mid_run_is_one_line(capsys, tmp_path, inputs, monkeypatch):
    import moesim.sim.sweeps.sweep as sweep_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sweep_module.pd.DataFrame, "to_parquet", full)
    out = tmp_path / "run"
    code, _, err = run(capsys, argv("sweep", inputs, out))
    assert "no space left on the device" in one_error(code, err)
    assert not (out / ".lock").exists() and not list((out / "shards").glob(".*"))


# ---------------------------------------------------------------- one sweep per folder at a time


def test_a_second_sweep_into_a_running_sweeps_folder_refuses(capsys, tmp_path, inputs):
    from moesim.sim.sweeps.sweep import run_sweep

    out = tmp_path / "run"
    assert run(capsys, argv("sweep", inputs, out))[0] == 0
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{owner.pid}\n")
        before = tree(tmp_path)
        for extra in ((), ("--fresh",), ("--fresh", "--force")):
            code, _, err = run(capsys, argv("sweep", inputs, out, *extra))
            line = one_error(code, err)
            assert f"another moesim sweep (pid {owner.pid}) is running into --out {out}" in line
        assert tree(tmp_path) == before
    finally:
        owner.kill()
        owner.wait()
    # its process is gone: the stale lock is taken over, and removed at the end
    code, _, err = run(capsys, argv("sweep", inputs, out, "--fresh"))
    assert code == 0, err
    assert not (out / ".lock").exists()
    # what a sweep killed while claiming its folder leaves behind is no obstacle either
    claimed = tmp_path / "claimed"
    claimed.mkdir()
    (claimed / ".lock").write_text(f"{owner.pid}\n")
    (claimed / f".{outputs.MARKER}.moesim-tmp-{owner.pid}.x.tmp").write_text("")
    code, _, err = run(capsys, argv("sweep", inputs, claimed))
    assert code == 0, err
    assert not [p.name for p in claimed.iterdir() if p.name.startswith(".") and p.name != outputs.MARKER]

    # removed on an interrupt too
    def interrupt(done: int, total: int, label: str) -> None:
        assert (out / ".lock").read_text().strip() == str(os.getpid())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(inputs["sweep"], out, fresh=True, progress=interrupt)
    assert not (out / ".lock").exists()
    with pytest.raises(MoesimError, match="refusing to replace it"):
        run_sweep(inputs["sweep"], precious(tmp_path / "mine"))


# ---------------------------------------------------------------- kill -9 of a sweep ends its workers


def _children(pid: int) -> dict[int, str]:
    """The child processes of ``pid`` (from /proc): pid -> command line."""
    kids = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids[int(d.name)] = cmd
    return kids


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_kill_9_of_a_sweep_ends_its_workers(tmp_path):
    data = {
        **SWEEP,
        "engine": "des",
        "axes": {
            "gpus": [2, 4],
            "layout": [{"tp": "gpus"}],
            "precision": ["bf16", "fp8"],
            "rate": [2, 4, 8, 16, 32, 64],
        },
    }
    data["base"] = {**SWEEP["base"], "workload": {**SWEEP["base"]["workload"], "requests": 1500}}
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(data))
    cmd = [
        sys.executable,
        "-m",
        "moesim.dashboard.cli",
        "sweep",
        str(f),
        "--out",
        str(tmp_path / "out"),
        "--workers",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: dict[int, str] = {}
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            workers = {p: c for p, c in _children(proc.pid).items() if "spawn_main" in c}
            if len(workers) >= 2:
                break
            time.sleep(0.05)
        # let them start up and take points (without the watchdog they would now outlive a kill -9)
        time.sleep(1.0)
        assert len(workers) >= 2 and proc.poll() is None, "the sweep's workers did not start"
        assert all(_alive(p) for p in workers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "workers outlived their sweep"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
