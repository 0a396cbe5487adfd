"""``--a2a-backend``: roofline, simulate, sweep and train run the backend asked for, say so in --json, and refuse a
bad name in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.dashboard.cli.a2a_flag import check_backend, sweep_spec
from moesim.model.errors import MoesimError
from moesim.sim.sweeps.sweep_spec import expand

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def _run(capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run


def test_check_backend_names():
    assert check_backend(None) is None
    assert check_backend(" NCCL ") == "nccl" and check_backend("deepep") == "deepep"
    with pytest.raises(MoesimError, match="--a2a-backend 'pplx' is not one of deepep, nccl"):
        check_backend("pplx")


def test_roofline_backend_changes_the_all_to_all(_run):
    args = ["roofline", "deepseek-v3", "--cluster", "hgx-h200-x2", "--dp-attn", "16", "--ep", "16", "--json"]
    runs = {}
    for backend in ("deepep", "nccl"):
        code, out, _ = _run(*args, "--a2a-backend", backend)
        assert code == 0, out
        runs[backend] = json.loads(out)
        assert runs[backend]["a2a_backend"] == backend
    sources = {b: {op["source"] for op in r["ops"] if op["kind"] == "all_to_all"} for b, r in runs.items()}
    assert all(s.startswith("deepep-") for s in sources["deepep"]), sources
    assert not any(s.startswith("deepep-") for s in sources["nccl"]), sources
    code, out, _ = _run(*args)  # no flag: the default backend
    assert code == 0 and json.loads(out)["a2a_backend"] == "deepep"


@pytest.mark.parametrize("command", ["roofline", "simulate", "sweep", "train"])
def test_bad_backend_is_one_error_line(_run, command, tmp_path):
    target = {
        "roofline": ["mixtral-8x7b"],
        "simulate": [str(EXAMPLES / "mixtral-8x7b-ep8.yaml")],
        "sweep": [str(EXAMPLES / "sweep-mixtral-gpu-choice.yaml"), "--out", str(tmp_path / "s")],
        "train": [str(EXAMPLES / "train-mixtral-8x7b-h100.yaml")],
    }[command]
    code, _, err = _run(command, *target, "--a2a-backend", "ucx")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and "--a2a-backend 'ucx'" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_simulate_overrides_the_scenario(_run):
    path = EXAMPLES / "mixtral-8x7b-ep8.yaml"
    assert yaml.safe_load(path.read_text())["layout"].get("a2a_backend", "deepep") == "deepep"
    tpot = {}
    for backend in ("nccl", None):
        flag = ["--a2a-backend", backend] if backend else []
        code, out, _ = _run("simulate", str(path), "--engine", "analytical", "--json", *flag)
        assert code == 0, out
        s = json.loads(out)
        assert s["a2a_backend"] == (backend or "deepep") == s["cost_provenance"]["a2a_backend"]
        tpot[backend] = s["tpot_p50_s"]
    assert tpot["nccl"] != tpot[None]  # the all-to-all is timed by another model


def test_train_overrides_the_scenario(_run):
    path = EXAMPLES / "train-mixtral-8x22b-h100.yaml"  # says a2a_backend: nccl
    steps = {}
    for backend in (None, "deepep"):
        flag = ["--a2a-backend", backend] if backend else []
        code, out, _ = _run("train", str(path), "--json", *flag)
        assert code in (0, 3), out
        s = json.loads(out)
        assert s["a2a_backend"] == (backend or "nccl")
        steps[backend] = s["step_s"]
    assert steps["deepep"] != steps[None]


def test_sweep_spec_sets_every_layout():
    spec = sweep_spec(EXAMPLES / "sweep-deepseek-v3-layouts.yaml", "nccl")
    exp = expand(spec)
    assert exp.points and all(p.scenario["layout"]["a2a_backend"] == "nccl" for p in exp.points)
