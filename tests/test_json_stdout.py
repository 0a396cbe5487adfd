"""Every command's ``--json``: stdout is exactly one JSON object (progress, warnings and solver logs go to stderr).

The commands run in this process (``dashboard.cli.main``) with ``capfd``, which captures file descriptors 1 and 2,
so output written by C code or child processes straight to fd 1 is caught too. ``moesim place`` also runs in a
fresh process in tests/test_placement.py (HiGHS prints its banner from C code once per process, when the first
solver is made, so only a fresh process shows it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from fast_inputs import SERVE, SWEEP, TABLES, TRAIN  # tests/fast_inputs.py

from moesim.dashboard.cli import main
from moesim.dashboard.json_schemas import OUTPUT_SCHEMAS, output_schema


def _trace() -> dict[str, Any]:
    """A torch.profiler trace with one GEMM (an aten::mm launching a cutlass kernel), for ``moesim import``."""
    bf16 = "c10::BFloat16"
    op = {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 7, "tid": 7, "ts": 100.0, "dur": 20.0}
    op["args"] = {"External id": 10, "Input Dims": [[128, 256], [256, 512]], "Input type": [bf16, bf16]}
    launch = {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 7, "tid": 7, "ts": 105.0, "dur": 3}
    launch["args"] = {"External id": 10, "cbid": 211, "correlation": 1000}
    name = "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>(Params)"
    kernel = {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": 130.0, "dur": 40.0}
    kernel["args"] = {"stream": 7, "correlation": 1000, "External id": 10, "device": 0, "grid": [1, 1, 1]}
    meta = {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "python"}}
    return {"schemaVersion": 1, "traceEvents": [meta, op, launch, kernel]}


PLACE = ["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--method", "all", "--json"]
PLACE += ["--time-limit", "5", "--tokens", "500", "--out", "pl"]

#: (id, argv) run in a folder holding serve.yaml, train.yaml, sweep.yaml and trace.json.
COMMANDS: list[tuple[str, list[str]]] = [
    ("models", ["models", "--json"]),
    ("gpus", ["gpus", "--json"]),
    ("clusters", ["clusters", "--json"]),
    ("inspect", ["inspect", "mixtral-8x7b", "--json"]),
    ("roofline", ["roofline", "mixtral-8x7b", "--gpu", "H100-SXM", "--tp", "8", "--json"]),
    ("simulate-des", ["simulate", "serve.yaml", "--out", "sim", "--json"]),
    ("simulate-analytical", ["simulate", "serve.yaml", "--engine", "analytical", "--json"]),
    ("train", ["train", "train.yaml", "--out", "tr", "--json"]),
    ("sweep", ["sweep", "sweep.yaml", "--out", "sw", "--workers", "1", "--json"]),
    ("calibrate", ["calibrate", str(TABLES), "--out", "cal.parquet", "--json"]),
    ("import", ["import", "trace.json", "--out", "imp", "--json"]),
    ("profile", ["profile", "--device", "cpu", "--quick", "--ops", "memcpy", "--out", "prof", "--json"]),
    ("demo", ["demo", "--no-profile", "--out", "rep", "--json"]),
    ("place", [*PLACE, "--workers", "1"]),
    ("validate", ["validate", "RUNS.csv", "--engine", "analytical", "--out", "val", "--json"]),
    ("fit-engine", ["fit-engine", "RUNS.csv", "--out", "fit.yaml", "--cv", "none", "--max-evals", "2", "--json"]),
]

#: Two TEST-INPUT measured runs (invented latencies) for ``validate`` and ``fit-engine``: staged Poisson loads.
RUNS = """experiment_id,model,gpu,tp,max_num_seqs,stage_rates_req_per_s,stage_durations_s,input_len_mean_tokens,\
output_len_mean_tokens,e2e_mean_ms,ttft_mean_ms
a,meta-llama/Llama-3.1-8B-Instruct,H100,1,64,2,5,300,40,400,30
b,Qwen/Qwen2.5-7B-Instruct,H100,1,64,3,5,500,30,350,35
"""


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with the commands' input files (serve.yaml, train.yaml, sweep.yaml, trace.json, RUNS.csv)."""
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(SERVE))
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    (tmp_path / "trace.json").write_text(json.dumps(_trace()))
    (tmp_path / "RUNS.csv").write_text(RUNS.replace("\\\n", ""))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[name for name, _ in COMMANDS])
def test_json_stdout_is_one_object(inputs: Path, capfd: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code = main(argv)
    out, err = capfd.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert isinstance(doc, dict), out[:300]
    assert "Traceback" not in err
    # and it validates against the command's output schema (`moesim schema output:<command>`)
    schema = output_schema(argv[0])
    problems = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
    assert problems == [], problems[:5]


def test_every_command_with_json_has_an_output_schema() -> None:
    assert {argv[0] for _, argv in COMMANDS} <= set(OUTPUT_SCHEMAS)
