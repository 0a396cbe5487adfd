"""The moesim CLI: --help with an example, --json, one-line errors, the demo report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.dashboard.cli import main

COMMANDS = ("models", "gpus", "clusters", "inspect", "roofline", "simulate", "train", "demo", "dashboard")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "Example: moesim " + command in " ".join(out.split())
    assert "--json" in out


def test_models_and_inspect_json(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    models = json.loads(out)["models"]
    assert len(models) == 23 and all(m["total_params"] >= m["active_params"] for m in models)
    code, out, _ = run(capsys, "inspect", "qwen3-30b-a3b", "--json")
    s = json.loads(out)
    assert s["total_params"] == pytest.approx(30.5e9, rel=0.01)
    assert s["active_params"] < s["total_params"]
    assert set(s["weight_bytes"]) >= {"bf16", "fp8", "int4"} and s["kv_bytes_per_token"]["bf16"] > 0


def test_inspect_a_config_path(capsys, tmp_path):
    src = Path(__file__).parents[1] / "model" / "presets" / "olmoe-1b-7b.json"
    shutil.copy(src, tmp_path / "config.json")
    code, out, _ = run(capsys, "inspect", str(tmp_path / "config.json"))
    assert code == 0 and "total 6.92 B" in out


def test_gpus_and_clusters_json(capsys):
    gpus = json.loads(run(capsys, "gpus", "--json")[1])["gpus"]
    assert {g["key"] for g in gpus} >= {"H100-SXM", "MI300X", "cpu"}
    clusters = json.loads(run(capsys, "clusters", "--json")[1])["clusters"]
    assert any(c["name"] == "dgx-h100" for c in clusters)


def test_roofline_json(capsys):
    code, out, err = run(
        capsys,
        "roofline",
        "mixtral-8x7b",
        "--gpu",
        "H100-SXM",
        "--tp",
        "8",
        "--phase",
        "decode",
        "--batch",
        "64",
        "--ctx",
        "2048",
        "--json",
    )
    assert code == 0, err
    s = json.loads(out)
    assert s["step_s"] > 0 and s["tokens_per_s"] == pytest.approx(64 / s["step_s"])
    assert s["memory"]["fits"] and s["layout"]["tp"] == 8
    assert 0 < s["cap"]["smbu"] <= 1 and 0 < s["cap"]["smfu"] <= 1
    assert s["cap"]["usd_per_mtok"] > 0 and s["cap"]["accuracy"]
    assert {op["op"] for op in s["ops"]} >= {"qkv_proj", "attention", "routed_experts", "attn_allreduce"}


def test_roofline_human_output(capsys):
    code, out, _ = run(
        capsys,
        "roofline",
        "deepseek-v2-lite",
        "--tp",
        "2",
        "--ep",
        "2",
        "--phase",
        "prefill",
        "--batch",
        "2",
        "--ctx",
        "512",
    )
    assert code == 0
    for text in ("routed_experts", "ep_dispatch", "step", "memory: fits", "performance", "cost", "accuracy"):
        assert text in out


@pytest.mark.parametrize(
    "argv,code,text",
    [
        (["roofline", "mixtral-8x7b", "--gpu", "H100"], 1, "unknown GPU 'H100'"),
        (["roofline", "mixtral-8x7b", "--tp", "3"], 1, "tp=3 does not divide"),
        (["roofline", "mixtral-8x7b", "--batch", "-1"], 2, "--batch"),
        (["roofline", "mixtral-8x7b", "--phase", "warmup"], 2, "--phase"),
        (["roofline", "mixtral-8x7b", "--dtype", "fp7"], 1, "unknown weight dtype 'fp7'"),
        (["inspect", "nonesuch"], 1, "unknown model 'nonesuch'"),
        (["roofline", "mixtral-8x7b", "--gpu", "cpu", "--dtype", "fp32"], 1, "cpu"),
        (["nosuchcommand"], 2, "nosuchcommand"),
    ],
)
def test_errors_are_one_line(capsys, argv, code, text):
    got, out, err = run(capsys, *argv)
    assert got == code
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], err
    assert "Traceback" not in err and out == ""


def test_ignore_memory_reports_anyway(capsys):
    code, out, _ = run(capsys, "roofline", "deepseek-v3", "--tp", "8", "--ignore-memory", "--json")
    assert code == 0 and json.loads(out)["memory"]["fits"] is False


def test_console_script_error_has_no_traceback(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "mixtral", "hidden_size": 4096}))
    p = subprocess.run(
        [sys.executable, "-c", "from dashboard.cli import run; run()", "inspect", str(bad)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "missing keys" in p.stderr and "num_local_experts" in p.stderr


def test_demo_writes_a_report(capsys, tmp_path):
    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "demo", "--out", str(out_dir), "--json")
    assert code == 0, err
    s = json.loads(out)
    assert (out_dir / "report.md").is_file() and (out_dir / "summary.json").is_file()
    for plot in s["plots"]:
        assert (out_dir / plot).stat().st_size > 10_000
    assert len(s["decode_sweep"]) >= 10 and "demo:" in err
    here = s["this_machine"]
    assert here["peak_fp32_flops"] > 1e9 and {f["kind"] for f in here["fits"]} == {"gemm", "grouped_gemm"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]  # no temporary left


def test_demo_never_replaces_a_folder_that_is_not_a_report(capsys, tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "demo", "--out", str(precious), "--no-profile")
    assert code == 1 and "refusing to replace it" in err and "--force" in err
    assert (precious / "notes.txt").read_text() == "keep me"
    # an earlier report is replaced (without the CPU profile: test_demo_writes_a_report runs that)
    code, _, _ = run(capsys, "demo", "--out", str(tmp_path / "report"), "--no-profile")
    assert code == 0 and (tmp_path / "report" / "report.md").is_file()
    (tmp_path / "report" / "report.md").write_text("an earlier report")
    code, _, _ = run(capsys, "demo", "--out", str(tmp_path / "report"), "--no-profile")
    assert code == 0 and (tmp_path / "report" / "report.md").read_text() != "an earlier report"


def test_prefill_needs_a_prompt(capsys):
    code, _, err = run(capsys, "roofline", "mixtral-8x7b", "--phase", "prefill", "--ctx", "0")
    assert code == 1 and "prompt len must be >= 1" in err
