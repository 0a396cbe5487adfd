"""Complete traces (every step, streamed, gzip, a window), progress lines off a terminal, ``--quiet``, and the
one exit code of a configuration that does not fit (issue 24, items 5-7)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.dashboard.cli._common import EXIT_DOES_NOT_FIT, progress_bar, set_quiet
from moesim.model.errors import MoesimError
from moesim.sim.common import is_moesim_trace
from moesim.sim.serving import chrome_trace
from moesim.sim.serving.chrome_trace import parse_window, write_chrome_trace

SCENARIO = {
    "name": "trace-test",
    "model": "mixtral-8x7b",
    "cluster": "dgx-h100",
    "layout": {"tp": 8},
    "engine": {"max_batch": 64, "max_tokens": 4096, "chunked_prefill": True, "block_size": 16},
    "workload": {
        "arrival": "poisson",
        "rate": 20,
        "requests": 60,
        "input": {"dist": "lognormal", "mean": 256, "cv": 1.0, "max": 2048},
        "output": {"dist": "lognormal", "mean": 64, "cv": 1.0, "max": 512},
    },
    "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
    "seed": 0,
}


@pytest.fixture(autouse=True)
def _loud(monkeypatch: pytest.MonkeyPatch):
    """Each test starts neither quiet by flag nor by environment."""
    monkeypatch.delenv("MOESIM_QUIET", raising=False)
    set_quiet(False)
    yield
    set_quiet(False)


def steps_table(n: int, replicas: int = 2) -> pd.DataFrame:
    """``n`` back-to-back 10 ms steps per replica (s), with the columns the trace needs."""
    rows = []
    for r in range(replicas):
        for i in range(n):
            rows.append(
                {
                    "replica": r,
                    "pool": "mixed",
                    "start_s": i * 0.01,
                    "duration_s": 0.01,
                    "phase": "decode",
                    "compute_s": 0.006,
                    "comm_s": 0.002,
                    "straggler_s": 0.001,
                    "fetch_s": 0.0,
                    "tokens": 8,
                }
            )
    return pd.DataFrame(rows)


def load_gz(path: Path) -> dict:
    """A gzip-compressed trace, read as a user would: ``json.load(gzip.open(path))``."""
    with gzip.open(path) as f:
        return json.load(f)


def phase_slices(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("cat") == "step"]


# ---------------------------------------------------------------- the trace writer


def test_a_long_run_keeps_every_step_streamed_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(chrome_trace, "CHUNK_STEPS", 7)  # many chunks: their joins must stay valid JSON
    steps = steps_table(6000)  # more than the 5,000 the CLI used to keep
    info = write_chrome_trace(steps, tmp_path / "t.json", gpus_per_replica=2)
    doc = json.loads((tmp_path / "t.json").read_text())
    step_events = phase_slices(doc["traceEvents"])
    assert len(step_events) == 2 * 6000 * 2  # every step of both replicas on both GPUs
    assert info["steps_written"] == info["steps_total"] == 12000 and info["truncated"] is False
    assert info["events"] == len(doc["traceEvents"]) == doc["otherData"]["events"]
    assert info["bytes"] == info["json_bytes"] == (tmp_path / "t.json").stat().st_size and not info["gzip"]
    last = max(e["ts"] + e["dur"] for e in step_events)
    assert last == pytest.approx(60.0 * 1e6)  # µs: the run's last step ends at 60 s
    # the chunks join seamlessly: one replica's GPU 0 steps lie end to end
    lane = sorted(e["ts"] for e in step_events if e["pid"] == 1 and e["tid"] == 1)
    assert np.allclose(np.diff(lane), 1e4)


def test_gz_path_is_gzip_that_json_load_reads(tmp_path: Path):
    path = tmp_path / "t.json.gz"
    info = write_chrome_trace(steps_table(300), path, gpus_per_replica=4)
    assert path.read_bytes()[:2] == b"\x1f\x8b" and info["gzip"] and info["bytes"] < info["json_bytes"] / 5
    doc = load_gz(path)
    assert len(phase_slices(doc["traceEvents"])) == 2 * 300 * 4 and doc["displayTimeUnit"] == "ms"
    assert is_moesim_trace(path)  # recognised, so a rerun may replace it
    write_chrome_trace(steps_table(10), path, gpus_per_replica=1)
    assert len(phase_slices(load_gz(path)["traceEvents"])) == 20


def test_a_large_trace_goes_to_path_gz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(chrome_trace, "GZIP_ABOVE_EVENTS", 1000)
    info = write_chrome_trace(steps_table(200), tmp_path / "t.json", gpus_per_replica=2)
    assert info["path"] == str(tmp_path / "t.json.gz") and info["gzip"] and not (tmp_path / "t.json").exists()
    assert len(phase_slices(load_gz(tmp_path / "t.json.gz")["traceEvents"])) == 800
    small = write_chrome_trace(steps_table(200), tmp_path / "p.json", gpus_per_replica=2, compress=False)
    assert small["path"] == str(tmp_path / "p.json") and not small["gzip"]


def test_a_foreign_gzip_file_is_not_replaced(tmp_path: Path):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"traceEvents": []}')
    before = path.read_bytes()
    with pytest.raises(MoesimError, match="not written by moesim"):
        write_chrome_trace(steps_table(5), path, gpus_per_replica=1)
    assert path.read_bytes() == before
    (tmp_path / "cut.json.gz").write_bytes(before[:12])  # cut short: not ours either, and no crash
    assert not is_moesim_trace(tmp_path / "cut.json.gz")


def test_window_keeps_the_steps_overlapping_it(tmp_path: Path):
    steps = steps_table(1000)  # 0-10 s, 10 ms steps
    info = write_chrome_trace(steps, tmp_path / "w.json", gpus_per_replica=1, window=(2.0, 3.0))
    events = phase_slices(json.loads((tmp_path / "w.json").read_text())["traceEvents"])
    starts = sorted({e["ts"] / 1e6 for e in events})
    assert starts[0] == pytest.approx(2.0) and starts[-1] == pytest.approx(2.99)
    assert info["steps_written"] == 2 * 100 and info["truncated"] and info["window_s"] == [2.0, 3.0]
    assert info["span_s"] == pytest.approx([2.0, 3.0])
    rest = write_chrome_trace(steps, tmp_path / "r.json", gpus_per_replica=1, window=parse_window("9.5:"))
    assert rest["steps_written"] == 2 * 50 and rest["window_s"] == [9.5, None]


@pytest.mark.parametrize("text", ["5", "a:b", "3:2", "2:2", "-1:4", "1:2:3", "nan:4", "inf:"])
def test_a_bad_window_is_refused(text: str):
    with pytest.raises(MoesimError, match="--trace-window"):
        parse_window(text)


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return path


def test_simulate_trace_says_on_stderr_what_it_wrote(scenario: Path, tmp_path: Path, capsys):
    trace = tmp_path / "t.json.gz"
    assert main(["simulate", str(scenario), "--trace", str(trace), "--json"]) == 0
    cap = capsys.readouterr()
    s = json.loads(cap.out)
    info = s["trace"]
    doc = load_gz(trace)
    assert info["steps_written"] == info["steps_total"] == s["steps"] > 0 and info["gzip"]
    assert len(phase_slices(doc["traceEvents"])) == s["steps"] * 8  # every step on each of the 8 GPUs
    line = next(ln for ln in cap.err.splitlines() if ln.startswith("trace: wrote"))
    assert str(trace) in line and f"{s['steps']:,} of {s['steps']:,} steps" in line
    assert f"{info['events']:,} events" in line and "gzip" in line and "the whole run" in line

    assert main(["simulate", str(scenario), "--trace", str(trace), "--trace-window", "1:2", "--json"]) == 0
    cap = capsys.readouterr()
    info = json.loads(cap.out)["trace"]
    assert 0 < info["steps_written"] < info["steps_total"] and info["window_s"] == [1.0, 2.0]
    assert "window 1-2 s" in cap.err

    assert main(["simulate", str(scenario), "--trace", str(trace), "--trace-window", "500:600", "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["trace"]["steps_written"] == 0 and "no step in the window" in cap.err


@pytest.mark.parametrize(
    "extra, text",
    [
        (["--trace-window", "9:3"], "--trace-window '9:3' needs 0 <= START < END"),
        (["--trace-window", "x"], "--trace-window 'x' is not START:END"),
        (["--trace-window", "1:2"], "--trace-window 1:2 needs --trace"),
    ],
)
def test_simulate_bad_window_is_one_error_line(scenario: Path, tmp_path: Path, capsys, extra, text):
    trace = [] if "needs --trace" in text else ["--trace", str(tmp_path / "t.json")]
    assert main(["simulate", str(scenario), *trace, *extra, "--json"]) == 1
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], cap.err
    assert cap.out == "" and not (tmp_path / "t.json").exists()


def test_progress_lines_off_a_terminal_and_quiet_silences_them(scenario: Path, capsys, monkeypatch):
    assert main(["simulate", str(scenario), "--json"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("simulating: ")]
    assert 3 <= len(lines) <= 12 and lines[-1].startswith("simulating: 100% (60/60)")  # about every tenth
    for argv in (["--quiet", "simulate", str(scenario), "--json"], ["-q", "simulate", str(scenario), "--json"]):
        assert main(argv) == 0
        cap = capsys.readouterr()
        assert cap.err == "" and json.loads(cap.out)["requests"] == 60
    assert main(["simulate", str(scenario), "--json"]) == 0  # --quiet lasts one command
    assert "simulating: " in capsys.readouterr().err
    monkeypatch.setenv("MOESIM_QUIET", "1")
    assert main(["simulate", str(scenario), "--json"]) == 0
    assert capsys.readouterr().err == ""


def test_quiet_still_prints_errors(tmp_path: Path, capsys):
    assert main(["--quiet", "simulate", str(tmp_path / "missing.yaml"), "--json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_plain_progress_every_tenth_and_every_30_s(capsys, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 40.0, 41.0, 42.0, 80.0])
    monkeypatch.setattr("moesim.dashboard.cli._common.time.monotonic", lambda: next(clock))
    with progress_bar("work") as update:
        update(5, 100, "a")  # 5%: nothing yet
        update(10, 100, "b")  # a tenth: a line
        update(12, 100, "c")  # 40 s later, same tenth: a line
        update(13, 100, "d")  # nothing
        update(14, 100, "e")  # nothing
        update(100, 100, "f")  # done: a line
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["work: 10% (10/100)", "work: 12% (12/100)", "work: 100% (100/100)"]
    assert "40 s elapsed" in lines[1] and "eta" in lines[1] and lines[2].endswith(", f")


# ---------------------------------------------------------------- does not fit: one exit code, one field


def test_roofline_and_train_that_do_not_fit_share_exit_code_and_field(tmp_path: Path, capsys):
    code, out, err = _run(capsys, "roofline", "deepseek-v3", "--tp", "8", "--json")
    assert code == EXIT_DOES_NOT_FIT == 3
    assert json.loads(out)["fits"] is False
    assert next(ln for ln in err.splitlines() if ln.startswith("error:")).count("does not fit") == 1

    train = {
        "name": "too-big",
        "model": "mixtral-8x7b",
        "gpu": "H100-SXM",
        "nodes": 1,
        "gpus_per_node": 1,
        "layout": {"tp": 1, "pp": 1, "ep": 1, "dp": 1, "zero": 0},
        "batch": {"global_batch": 1, "micro_batch": 1, "seq_len": 1024},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(train))
    code, out, err = _run(capsys, "train", str(path), "--json")
    assert code == EXIT_DOES_NOT_FIT
    assert json.loads(out)["fits"] is False
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "does not fit" in errors[0] and "--ignore-memory" in errors[0]

    code, out, err = _run(capsys, "train", str(path), "--json", "--ignore-memory")
    assert code == 0 and json.loads(out)["fits"] is False and "warning: does not fit" in err
    code, out, _ = _run(capsys, "roofline", "deepseek-v3", "--tp", "8")  # the human report, then the error
    assert code == EXIT_DOES_NOT_FIT and "memory: does not fit" in out


def test_fitting_configurations_say_fits_true(capsys):
    code, out, _ = _run(capsys, "roofline", "mixtral-8x7b", "--tp", "8", "--json")
    assert code == 0 and json.loads(out)["fits"] is True


def test_help_documents_the_exit_code(capsys):
    for command in ("roofline", "train"):
        assert main([command, "--help"]) == 0
        assert "exit code 3" in " ".join(capsys.readouterr().out.split())


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err
