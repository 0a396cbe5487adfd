"""The bad-input catalogue (issue 17): every command x every class of bad input, in-process.

Each case is data: an id, the argv (paths relative to the case's working folder), the exit codes it may
end with, the files it needs, and the paths it may create when it succeeds. Every case runs
``dashboard.cli.main(argv)`` inside a fresh working folder ``tmp_path/work`` that holds a precious file,
a folder of the user's (``keep/``) and a link to it, a folder holding a ``.git``, a plain file and the
fixture inputs;
``tmp_path`` itself holds one more precious file (what ``--out ..`` would reach). Each case asserts:

- the exit code is one the case allows (1: bad input, 2: bad usage, 0 only where the input is valid);
- a failing command prints exactly one stderr line starting with ``error:``, not an "internal error", naming
  what is at fault (the flag, key, name or path in ``mentions``) and not blaming ``--out`` for another flag;
- no ``Traceback`` on stdout or stderr, and no exception escapes ``main``;
- the file tree of ``tmp_path`` (paths, sizes, mtimes) is unchanged, except for the paths a succeeding
  case may create;
- it ends within `CASE_LIMIT_S` seconds (SIGALRM) and allocates at most `CASE_MEMORY_BYTES` more address
  space (RLIMIT_AS), so a hang or a runaway allocation fails its case instead of the machine.

To extend it, add a `Case` to one of the ``_*_cases`` builders (or a bad-file class to `bad_files`).
"""

from __future__ import annotations

import copy
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from fast_inputs import REPO, SERVE, SWEEP, TABLES, TRAIN, bounded  # tests/fast_inputs.py

from moesim.dashboard.cli import main

#: Wall seconds one case may take before it counts as a hang.
CASE_LIMIT_S = 20.0
#: Address space, bytes, a case may add to the test process (a runaway allocation fails the case).
CASE_MEMORY_BYTES = 6 << 30
PRECIOUS = b"the user's data: never lose it\n"

#: Deletes a key in `merged`.
DROP = object()

# ---------------------------------------------------------------- valid inputs (fast)

HARDWARE: dict[str, Any] = {
    "TEST-GPU": {
        "name": "a test GPU",
        "vendor": "nvidia",
        "peak_flops": {"fp32": 60.0e12, "bf16": 1000.0e12},
        "memory_gib": 80,
        "memory_bandwidth": 4.0e12,
        "tdp_w": 700,
        "node": {"gpus_per_node": 8, "intra_bw": 400.0e9, "inter_bw": 50.0e9},
    }
}


def _trace_events() -> dict[str, Any]:
    """A torch.profiler trace with one GEMM (an aten::mm launching a cutlass kernel), for ``moesim import``."""
    bf16 = "c10::BFloat16"
    op = {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 7, "tid": 7, "ts": 100.0, "dur": 20.0}
    op["args"] = {"External id": 10, "Input Dims": [[128, 256], [256, 512]], "Input type": [bf16, bf16]}
    launch = {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 7, "tid": 7, "ts": 105.0, "dur": 3}
    launch["args"] = {"External id": 10, "cbid": 211, "correlation": 1000}
    kernel_name = "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>(Params)"
    kernel = {"ph": "X", "cat": "kernel", "name": kernel_name, "pid": 0, "tid": 7, "ts": 130.0, "dur": 40.0}
    kernel["args"] = {"stream": 7, "correlation": 1000, "External id": 10, "device": 0, "grid": [1, 1, 1]}
    meta = {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "python"}}
    return {"schemaVersion": 1, "traceEvents": [meta, op, launch, kernel]}


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, nested mappings key by key; a value `DROP` deletes the key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def yml(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False).encode()


def olmoe_config(**over: Any) -> bytes:
    """The OLMoE preset's config.json with ``over`` replacing keys (``num_hidden_layers: 1e9`` and so on)."""
    cfg = json.loads((REPO / "model" / "presets" / "olmoe-1b-7b.json").read_text())
    return json.dumps({**cfg, **over}).encode()


# ---------------------------------------------------------------- bad files

#: 40 kB of nested YAML flow sequences / JSON arrays (a RecursionError in a naive reader).
NESTED = b"[" * 20_000 + b"]" * 20_000
BINARY = bytes(range(256)) * 8


def bad_files(valid: bytes, json_syntax: bool = False) -> dict[str, bytes | None]:
    """The bad-file classes for a slot whose valid content is ``valid``: name -> content (None: missing,
    ``b"/"``: a folder). ``utf16`` holds the valid content in UTF-16 (read or refused, never a traceback)."""
    return {
        "missing": None,
        "folder": b"/",
        "binary": BINARY,
        "utf16": valid.decode("latin-1").encode("utf-16"),
        "empty": b"",
        "list": b"[1, 2]\n" if json_syntax else b"- 1\n- 2\n",
        "scalar": b'"just some words"\n' if json_syntax else b"just some words\n",
        "nested": NESTED,
        "bad-syntax": b'{"key": [1,\n' if json_syntax else b"key: [unclosed\n  other: {\n",
    }


# ---------------------------------------------------------------- the case type


@dataclass(frozen=True)
class Case:
    """One catalogue entry.

    Attributes:
        id: ``command/what``.
        argv: the command line, paths relative to the working folder.
        codes: the exit codes it may end with (0 only where the input is valid).
        files: files to create first, relative path -> bytes (``b"/"``: a folder).
        creates: paths (relative to the working folder) a succeeding run may create.
        mentions: what the error line must name (case-insensitive): the flag, key, name or path at fault.
        flag: the output flag at fault (``--trace``, ``--report``): an error line that names ``--out`` must name
            it too, so the message does not blame the wrong flag.
    """

    id: str
    argv: tuple[str, ...]
    codes: frozenset[int]
    files: dict[str, bytes] = field(default_factory=dict)
    creates: tuple[str, ...] = ()
    mentions: str = ""
    flag: str = ""


BAD = frozenset({1})
USAGE = frozenset({2})
#: Refused, by typer (2) or by moesim's own check (1): which one is a detail.
REFUSED = frozenset({1, 2})
#: Valid or refused with one line (UTF-16 files, steep skews).
EITHER = frozenset({0, 1})
#: A seed out of range (negative, above 2**63): valid, or refused by typer or by moesim.
SEED = frozenset({0, 1, 2})
OK = frozenset({0})


def case(
    id: str,
    argv: list[str],
    codes: frozenset[int] = BAD,
    files: dict[str, bytes] | None = None,
    creates: tuple[str, ...] = (),
    mentions: str = "",
) -> Case:
    return Case(id, tuple(argv), codes, dict(files or {}), tuple(creates), mentions)


def last_key(over: dict[str, Any]) -> str:
    """The innermost key set last in ``over`` (the one a case breaks, by convention); "" when none."""
    for key, value in reversed(over.items()):
        if value is DROP:
            continue
        if isinstance(value, dict) and value:
            return last_key(value) or key
        return key
    return ""


# ---------------------------------------------------------------- the catalogue, command by command

OUTS = ("out",)
SIM = ["--engine", "analytical", "--json"]


def serve(
    id: str, over: dict[str, Any], codes: frozenset[int] = BAD, engine: str = "analytical", mentions: str | None = None
) -> Case:
    """``moesim simulate`` on `SERVE` with ``over`` merged in; the error names `last_key` unless ``mentions``."""
    argv = ["simulate", "case.yaml", "--engine", engine, "--out", "out", "--json"]
    files = {"case.yaml": yml(merged(SERVE, over))}
    m = last_key(over) if mentions is None else mentions
    return case(f"simulate/{id}", argv, codes, files, OUTS if 0 in codes else (), m)


def serve_text(id: str, text: str, codes: frozenset[int] = BAD, engine: str = "analytical") -> Case:
    """``moesim simulate`` on `SERVE` with one line of raw YAML appended to its workload (YAML 1.1 spellings)."""
    body = yml(merged(SERVE, {"workload": DROP})).decode() + "workload:\n" + text
    argv = ["simulate", "case.yaml", "--engine", engine, "--out", "out", "--json"]
    return case(f"simulate/{id}", argv, codes, {"case.yaml": body.encode()}, OUTS if 0 in codes else ())


def train(
    id: str,
    over: dict[str, Any],
    codes: frozenset[int] = BAD,
    files: dict[str, bytes] | None = None,
    mentions: str | None = None,
) -> Case:
    """``moesim train`` on `TRAIN` with ``over`` merged in; the error names `last_key` unless ``mentions``."""
    argv = ["train", "case.yaml", "--out", "out", "--json"]
    files = {"case.yaml": yml(merged(TRAIN, over)), **(files or {})}
    m = last_key(over) if mentions is None else mentions
    return case(f"train/{id}", argv, codes, files, OUTS if 0 in codes else (), m)


def sweep(id: str, over: dict[str, Any], codes: frozenset[int] = BAD, mentions: str | None = None) -> Case:
    """``moesim sweep`` (one local worker) on `SWEEP` with ``over`` merged in; the error names `last_key`."""
    argv = ["sweep", "case.yaml", "--out", "out", "--workers", "1", "--json"]
    files = {"case.yaml": yml(merged(SWEEP, over))}
    m = last_key(over) if mentions is None else mentions
    return case(f"sweep/{id}", argv, codes, files, OUTS if 0 in codes else (), m)


PLACE = ["place", "--stats", "synthetic", "--model", "olmoe-1b-7b", "--gpus", "8", "--method", "eplb"]
PLACE += ["--tokens", "256"]


def place(
    id: str, extra: list[str], codes: frozenset[int] = BAD, files: dict[str, bytes] | None = None, mentions: str = ""
) -> Case:
    """``moesim place`` (EPLB on a small synthetic OLMoE trace) with ``extra`` flags."""
    argv = [*PLACE, "--out", "out", "--json", *extra]
    return case(f"place/{id}", argv, codes, files, OUTS if 0 in codes else (), mentions)


ROOF = ["roofline", "mixtral-8x7b", "--gpu", "H100-SXM", "--tp", "8", "--json"]


def _flag_cases() -> list[Case]:
    """Bad flag values: negative, zero, NaN, inf, 1e18, non-numeric, unknown names."""
    cs: list[Case] = []
    # roofline: every numeric flag
    for flag, values in {
        "--batch": ["-1", "0", "abc", "1e18", "1000000000000000000", "nan"],
        "--ctx": ["-1", "abc", "1000000000000", "1e12"],
        "--tp": ["0", "-1", "3", "abc"],
        "--ep": ["0", "3"],
        "--pp": ["0", "1000000000"],
        "--dp-attn": ["0"],
        "--nodes": ["0", "-2"],
        "--gpus-per-node": ["0"],
        "--pue": ["nan", "inf", "-1", "0.5"],
        "--usd-per-kwh": ["inf", "nan", "-1", "0"],
        "--mem-fraction": ["nan", "0", "2", "inf"],
        "--years": ["nan", "inf", "0", "-5"],
        "--utilisation": ["nan", "0", "2"],
        "--dtype": ["fp9", ""],
        "--kv-dtype": ["int3"],
        "--phase": ["both"],
        "--pricing": ["free"],
    }.items():
        for v in values:
            named = v if flag in ("--dtype", "--kv-dtype", "--phase", "--pricing") else flag[2:]  # names the value
            cs.append(case(f"roofline/{flag[2:]}={v or 'empty'}", [*ROOF, flag, v], REFUSED, mentions=named))
    cs += [
        case("roofline/unknown-model", ["roofline", "gpt-9", "--json"], mentions="gpt-9"),
        case("roofline/unknown-gpu", ["roofline", "mixtral-8x7b", "--gpu", "B300X", "--json"], mentions="B300X"),
        case("roofline/unknown-cluster", ["roofline", "mixtral-8x7b", "--cluster", "moon-base"], mentions="moon-base"),
        case("roofline/dense-model-ep", ["roofline", "llama-3-8b", "--ep", "8", "--dp-attn", "8", "--json"]),
        case("roofline/does-not-fit", ["roofline", "deepseek-v3", "--gpu", "L40S", "--json"], frozenset({3})),
        case("roofline/unknown-flag", [*ROOF, "--colour", "red"], USAGE, mentions="--colour"),
        case("roofline/missing-model", ["roofline", "--json"], USAGE),
        case("models/unknown-flag", ["models", "--colour"], USAGE),
        case("models/extra-argument", ["models", "mixtral"], USAGE),
        case("clusters/unknown-flag", ["clusters", "--bogus"], USAGE),
        case("gpus/unknown-flag", ["gpus", "--bogus"], USAGE),
        case("inspect/unknown-model", ["inspect", "gpt-9", "--json"], mentions="gpt-9"),
        case("inspect/no-model", ["inspect"], USAGE),
        case("moesim/unknown-command", ["frobnicate"], USAGE),
    ]
    # simulate flags (the scenario is valid)
    sim = ["simulate", "serve.yaml", "--json"]
    cs += [
        case("simulate/engine=warp", [*sim, "--engine", "warp"], USAGE),
        case("simulate/seed=nan", [*sim, "--engine", "analytical", "--seed", "nan"], USAGE),
        case("simulate/seed=1e30", [*sim, "--engine", "analytical", "--seed", "1e30"], USAGE),
        case("simulate/seed=huge", [*sim, "--engine", "analytical", "--seed", str(10**30)], SEED),
        case("simulate/seed=-1", [*sim, "--engine", "analytical", "--seed", "-1"], SEED),
        case("simulate/seed=-1-des", [*sim, "--seed", "-1"], SEED),
        case("simulate/trace-with-analytical", [*sim, "--engine", "analytical", "--trace", "t.json"]),
        case("simulate/no-scenario", ["simulate", "--json"], USAGE),
        case("simulate/unknown-flag", [*sim, "--bogus"], USAGE),
    ]
    # train flags
    cs += [
        case("train/unknown-flag", ["train", "train.yaml", "--bogus"], USAGE),
        case("train/no-scenario", ["train"], USAGE),
    ]
    # sweep flags
    sw = ["sweep", "sweep.yaml", "--json"]
    for v in ("-3", "0", "abc", "nan", "1e18"):
        cs.append(case(f"sweep/workers={v}", [*sw, "--out", "out", "--workers", v], REFUSED, mentions="workers"))
    cs += [
        case("sweep/no-out", sw, USAGE),
        case("sweep/dask-garbage", [*sw, "--out", "out", "--dask", "::not an address::"]),
    ]
    # place flags
    for flag, values in {
        "--gpus": ["0", "-3", "abc", "1e18", "1000000000000000000", "3"],
        "--gpus-per-node": ["0", "-8", "3"],
        "--redundant": ["-1", "3", "1000000000000"],
        "--method": ["magic", ""],
        "--time-limit": ["inf", "nan", "-1", "0"],
        "--mip-gap": ["nan", "1", "-1", "inf"],
        "--traffic-weight": ["nan", "inf", "-1"],
        "--migration-weight": ["nan", "-1"],
        "--groups": ["3", "-1", "1000"],
        "--workers": ["-3"],
        "--solver": ["gurobi"],
        "--tokens": ["0", "-1", "1e12", "1000000000000"],
        "--skew": ["nan", "inf", "-1"],
        "--seed": ["nan", "abc"],
        "--export": ["pdf"],
    }.items():
        for v in values:
            extra = [flag, v] if flag != "--time-limit" else ["--method", "ilp", flag, v]
            cs.append(place(f"{flag[2:]}={v or 'empty'}", extra, REFUSED, mentions=flag[2:]))
    cs += [
        place("seed=-1", ["--seed", "-1"], SEED),
        case(
            "place/format=xml",
            ["place", "--stats", "loads.csv", "--gpus", "2", "--format", "xml", "--out", "out"],
            REFUSED,
            {"loads.csv": b"layer,e0,e1,e2,e3\n0,5,1,2,3\n1,2,2,4,1\n"},
        ),
        place("model-unknown", ["--model", "gpt-9"], mentions="gpt-9"),
        place("model-dense", ["--model", "llama-3-8b"]),
        case("place/synthetic-without-model", ["place", "--stats", "synthetic", "--gpus", "8", "--out", "out"]),
        case("place/no-stats", ["place", "--gpus", "8"], USAGE),
        case("place/no-gpus", ["place", "--stats", "synthetic", "--model", "olmoe-1b-7b"], USAGE),
    ]
    # calibrate flags
    cal = ["calibrate", str(TABLES), "--out", "cal.parquet", "--json"]
    for v in ("nan", "2", "-0.1", "inf"):
        cs.append(case(f"calibrate/holdout={v}", [*cal, "--holdout", v], REFUSED, mentions="holdout"))
    cs += [
        case("calibrate/kinds=bogus", [*cal, "--kinds", "bogus"], mentions="bogus"),
        case("calibrate/seed=abc", [*cal, "--seed", "abc"], USAGE),
        case("calibrate/seed=-1", [*cal, "--seed", "-1"], SEED, creates=("cal.parquet",)),
        case("calibrate/no-out", ["calibrate", str(TABLES)], USAGE),
        case("calibrate/no-paths", ["calibrate", "--out", "cal.parquet"], USAGE),
    ]
    # profile flags (all refused before any measuring)
    prof = ["profile", "--device", "cpu", "--quick", "--out", "prof", "--json"]
    cs += [
        case("profile/device=tpu", ["profile", "--device", "tpu", "--out", "prof"], USAGE),
        case("profile/ops=bogus", [*prof, "--ops", "bogus"], mentions="bogus"),
        case("profile/ops=empty", [*prof, "--ops", ","], mentions="ops"),
        case("profile/dtype=fp9", [*prof, "--ops", "gemm", "--dtype", "fp9"], mentions="fp9"),
        case("profile/dtype=fp8-on-cpu", [*prof, "--ops", "gemm", "--dtype", "fp8"], mentions="fp8"),
    ]
    # import flags
    cs += [
        case("import/format=xml", ["import", "trace.json", "--out", "imp", "--format", "xml"], USAGE),
        case("import/gpu-unknown", ["import", "trace.json", "--out", "imp", "--gpu", "B300X"], mentions="B300X"),
        case("import/no-out", ["import", "trace.json"], USAGE),
    ]
    # demo and dashboard flags (all refused before a server or a profile starts)
    cs += [
        case("demo/model-unknown", ["demo", "--no-profile", "--out", "rep", "--model", "gpt-9"], mentions="gpt-9"),
        case(
            "demo/cluster-unknown",
            ["demo", "--no-profile", "--out", "rep", "--cluster", "moon-base"],
            mentions="moon-base",
        ),
        case("dashboard/port=-1", ["dashboard", "--port", "-1"], REFUSED),
        case("dashboard/port=0", ["dashboard", "--port", "0"], REFUSED),
        case("dashboard/port=70000", ["dashboard", "--port", "70000"], REFUSED),
        case("dashboard/port=abc", ["dashboard", "--port", "abc"], USAGE),
        case("dashboard/unknown-flag", ["dashboard", "--bogus"], USAGE),
        *[
            case(f"dashboard/timeout={v}", ["dashboard", "--port", "8599", "--timeout", v], REFUSED)
            for v in ("nan", "inf", "-1", "0", "abc", "1e18")
        ],
    ]
    return cs


def _file_cases() -> list[Case]:
    """Every slot that reads a file x every bad-file class."""
    slots: list[tuple[str, Callable[[str], list[str]], bytes, str, tuple[str, ...]]] = [
        # (id, argv for the file, valid content, file name suffix, what a succeeding run creates)
        ("simulate", lambda f: ["simulate", f, "--engine", "analytical", "--out", "out", "--json"], yml(SERVE), ".yaml",
         OUTS),
        ("train", lambda f: ["train", f, "--out", "out", "--json"], yml(TRAIN), ".yaml", OUTS),
        ("sweep", lambda f: ["sweep", f, "--out", "out", "--workers", "1", "--json"], yml(SWEEP), ".yaml", OUTS),
        ("inspect", lambda f: ["inspect", f, "--json"], olmoe_config(), ".json", ()),
        ("gpus--hardware", lambda f: ["gpus", "--hardware", f, "--json"], yml(HARDWARE), ".yaml", ()),
        ("roofline--hardware", lambda f: [*ROOF, "--hardware", f], yml(HARDWARE), ".yaml", ()),
        ("roofline-model", lambda f: ["roofline", f, "--json"], olmoe_config(), ".json", ()),
        ("simulate--cost-model", lambda f: ["simulate", "serve.yaml", *SIM, "--cost-model", f], BINARY, ".parquet",
         ()),
        ("place--stats", lambda f: ["place", "--stats", f, "--gpus", "2", "--method", "eplb", "--out", "out"],
         b"layer,e0,e1,e2,e3\n0,5,1,2,3\n1,2,2,4,1\n", ".csv", OUTS),
        ("place--current", lambda f: [*PLACE, "--out", "out", "--current", f], BINARY, ".json", ()),
        ("calibrate", lambda f: ["calibrate", f, "--out", "cal.parquet", "--json"], BINARY, ".parquet", ()),
        ("import", lambda f: ["import", f, "--out", "imp", "--json"], json.dumps(_trace_events()).encode(), ".json",
         ("imp",)),
        ("demo--cost-model", lambda f: ["demo", "--no-profile", "--out", "rep", "--cost-model", f], BINARY,
         ".parquet", ()),
    ]  # fmt: skip
    cs: list[Case] = []
    for slot, argv, valid, suffix, creates in slots:
        for kind, content in bad_files(valid, json_syntax=suffix == ".json").items():
            name = f"input{suffix}"
            files = {} if content is None else {name: content}
            if kind == "utf16" and valid is BINARY:
                continue  # a binary format has no UTF-16 spelling
            codes = EITHER if kind == "utf16" else BAD
            cs.append(case(f"{slot}/file-{kind}", argv(name), codes, files, creates, mentions=name))
    # files named inside a scenario
    for kind, content in bad_files(b"0.5,0.5\n").items():
        files = {} if content is None else {"loads.csv": content}
        over = {"routing": {"distribution": "file", "file": "loads.csv"}}
        c = serve(f"routing-file-{kind}", over, EITHER if kind == "utf16" else BAD, mentions="loads.csv")
        cs.append(replace(c, files={**c.files, **files}))
        c = train(f"routing-file-{kind}", over, BAD, files, mentions="loads.csv")
        cs.append(c)
    for kind, content in bad_files(b"input_tokens,output_tokens\n100,10\n200,20\n").items():
        files = {} if content is None else {"trace.csv": content}
        over = {"workload": {"trace": "trace.csv", "trace_format": "csv", "input": DROP, "output": DROP}}
        c = serve(f"trace-file-{kind}", over, EITHER if kind == "utf16" else BAD, mentions="trace.csv")
        cs.append(replace(c, files={**c.files, **files}))
    # unknown keys and nested junk in mappings
    cs += [
        serve("unknown-key", {"colour": "blue"}),
        serve("unknown-nested-key", {"engine": {"turbo": True}}),
        serve("unknown-workload-key", {"workload": {"speed": 3}}),
        serve("nested-junk", {"layout": {"tp": {"a": {"b": [1, {"c": None}]}}}}),
        serve("layout-a-list", {"layout": [8]}),
        serve("workload-a-string", {"workload": "lots"}),
        train("unknown-key", {"colour": "blue"}),
        train("nested-junk", {"batch": {"global_batch": [[[[32]]]]}}),
        sweep("unknown-key", {"colour": "blue"}),
        sweep("unknown-axis", {"axes": {"colour": ["red"]}}),
        sweep("base-junk", {"base": {"model": {"name": ["x"]}}}, mentions="model"),
        sweep("base-missing-file", {"base": "nowhere.yaml"}),
        case("gpus--hardware/unknown-key", ["gpus", "--hardware", "hw.yaml", "--json"], BAD,
             {"hw.yaml": yml(merged(HARDWARE, {"TEST-GPU": {"colour": "red"}}))}),
        case("gpus--hardware/peak_flops=.inf", ["gpus", "--hardware", "hw.yaml", "--json"], BAD,
             {"hw.yaml": yml(merged(HARDWARE, {"TEST-GPU": {"peak_flops": {"bf16": float("inf")}}}))}),
        case("gpus--hardware/peak_flops=.nan", ["gpus", "--hardware", "hw.yaml", "--json"], BAD,
             {"hw.yaml": yml(merged(HARDWARE, {"TEST-GPU": {"peak_flops": {"bf16": float("nan")}}}))}),
        case("gpus--hardware/memory=-80", ["gpus", "--hardware", "hw.yaml", "--json"], BAD,
             {"hw.yaml": yml(merged(HARDWARE, {"TEST-GPU": {"memory_gib": -80}}))}),
        case("gpus--hardware/memory_total=-1", ["gpus", "--hardware", "hw.yaml", "--json"], BAD,
             {"hw.yaml": yml(merged(HARDWARE, {"TEST-GPU": {"memory_total_gib": -1}}))}),
        case("gpus--hardware/bandwidth=.inf", ["gpus", "--hardware", "hw.yaml", "--json"], BAD,
             {"hw.yaml": yml(merged(HARDWARE, {"TEST-GPU": {"memory_bandwidth": float("inf")}}))}),
        case("roofline--hardware/peak_flops=.inf",
             ["roofline", "mixtral-8x7b", "--gpu", "TEST-GPU", "--tp", "8", "--hardware", "hw.yaml"], BAD,
             {"hw.yaml": yml(merged(HARDWARE, {"TEST-GPU": {"peak_flops": {"bf16": float("inf")}}}))}),
        case("inspect/unknown-family", ["inspect", "cfg.json", "--json"], BAD,
             {"cfg.json": olmoe_config(model_type="not-a-model", architectures=["Nope"])}),
        case("inspect/num_hidden_layers=1e9", ["inspect", "cfg.json", "--json"], BAD,
             {"cfg.json": olmoe_config(num_hidden_layers=1e9)}),
        case("inspect/num_hidden_layers=1000000000", ["inspect", "cfg.json", "--json"], BAD,
             {"cfg.json": olmoe_config(num_hidden_layers=1_000_000_000)}),
        case("inspect/num_experts=-4", ["inspect", "cfg.json", "--json"], BAD,
             {"cfg.json": olmoe_config(num_experts=-4)}),
        case("inspect/hidden_size=nan", ["inspect", "cfg.json", "--json"], BAD,
             {"cfg.json": olmoe_config(hidden_size=float("nan"))}),
        case("roofline/num_hidden_layers=1e9", ["roofline", "cfg.json", "--json"], BAD,
             {"cfg.json": olmoe_config(num_hidden_layers=1_000_000_000)}),
        case("inspect/nested-json", ["inspect", "cfg.json", "--json"], BAD, {"cfg.json": NESTED}),
    ]  # fmt: skip
    return cs


def loads_csv(layers: int, experts: int, kind: str) -> bytes:
    """A routing-loads CSV [layers, experts] broken as ``kind``: all-zero, negative, nan, inf or wrong-shape."""
    if kind == "wrong-shape":
        return b"1,1,1\n" * 5
    row = ["1"] * experts
    if kind == "all-zero":
        row = ["0"] * experts
    else:
        row[1] = {"negative": "-1", "nan": "nan", "inf": "inf"}[kind]
    return ((",".join(row) + "\n") * layers).encode()


#: 30,000-token prompts: within Mixtral's context (32,768) but not the KV cache left by mem_fraction 0.1434 of the
#: 79.22 GiB an H100 reports (~6,600; the largest op's activations, 0.38 GiB at a 4,096-token prefill, are set aside
#: first).
KV_30K = {"engine": {"mem_fraction": 0.1434}, "workload": {"requests": 2, "input": 30_000}}


def _scenario_cases() -> list[Case]:
    """Bad scenario contents: unknown names, infeasible layouts, NaN/inf/huge counts, impossible prompts."""
    nan, inf = float("nan"), float("inf")
    cs = [
        serve("model-unknown", {"model": "gpt-9"}, mentions="gpt-9"),
        serve("gpu-unknown", {"gpu": "B300X"}, mentions="B300X"),
        serve("cluster-unknown", {"gpu": DROP, "nodes": DROP, "gpus_per_node": DROP, "cluster": "moon-base"},
              mentions="moon-base"),
        serve("model-missing", {"model": DROP}),
        serve("layout-tp3", {"layout": {"tp": 3}}),
        serve("layout-tp16-on-8", {"layout": {"tp": 16}}),
        serve("layout-ep3", {"layout": {"tp": 1, "dp_attn": 3, "ep": 3}}),
        serve("layout-tp0", {"layout": {"tp": 0}}),
        serve("layout-tp-nan", {"layout": {"tp": nan}}),
        serve("layout-tp-1e18", {"layout": {"tp": 10**18}}),
        serve("does-not-fit", {"layout": {"tp": 1}, "gpus_per_node": 1}, mentions="does not fit"),
        serve("nodes-1e18", {"nodes": 10**18}),
        serve("gpus_per_node-0", {"gpus_per_node": 0}),
        serve("replicas-0", {"replicas": 0}),
        serve("replicas-1e18", {"replicas": 10**18}),
        serve("replicas-nan", {"replicas": nan}),
        serve("max_batch-0", {"engine": {"max_batch": 0}}),
        serve("max_batch-1e18", {"engine": {"max_batch": 10**18}}),
        serve("max_tokens-1e18", {"engine": {"max_tokens": 10**18}}),
        serve("block_size-0", {"engine": {"block_size": 0}}),
        serve("mem_fraction-nan", {"engine": {"mem_fraction": nan}}),
        serve("mem_fraction-2", {"engine": {"mem_fraction": 2}}),
        serve("rate-nan", {"workload": {"rate": nan}}),
        serve("rate-inf", {"workload": {"rate": inf}}),
        serve("rate-1e308", {"workload": {"rate": 1e308}}),
        serve("rate-1e308-des", {"workload": {"rate": 1e308}}, engine="des"),
        serve("rate-negative", {"workload": {"rate": -5}}),
        serve("rate-zero", {"workload": {"rate": 0}}),
        serve("rate-string", {"workload": {"rate": "fast"}}),
        serve("requests-1e12", {"workload": {"requests": 10**12}}),
        serve_text("requests-1e12-yaml11", "  {arrival: poisson, rate: 5, requests: 1e12, input: 128, output: 16}\n"),
        serve_text("requests-1.0e+12", "  {arrival: poisson, rate: 5, requests: 1.0e+12, input: 128, output: 16}\n"),
        serve("requests-nan", {"workload": {"requests": nan}}),
        serve("requests-inf", {"workload": {"requests": inf}}),
        serve("requests-negative", {"workload": {"requests": -1}}),
        serve("requests-zero", {"workload": {"requests": 0}}),
        serve("requests-float", {"workload": {"requests": 2.5}}),
        serve("duration-inf", {"workload": {"requests": DROP, "duration_s": inf}}),
        serve("input-nan", {"workload": {"input": nan}}),
        serve("input-inf", {"workload": {"input": inf}}),
        serve("input-negative", {"workload": {"input": -5}}),
        serve("input-zero", {"workload": {"input": 0}}),
        serve("input-1e308", {"workload": {"input": 1e308}}),
        serve("output-1e18", {"workload": {"output": 10**18}}),
        serve("input-lognormal-cv-nan", {"workload": {"input": {"dist": "lognormal", "mean": 128, "cv": nan}}}),
        serve("input-lognormal-mean-inf", {"workload": {"input": {"dist": "lognormal", "mean": inf}}}),
        serve("input-uniform-low-gt-high", {"workload": {"input": {"dist": "uniform", "low": 100, "high": 10}}}),
        serve("input-empirical-empty", {"workload": {"input": {"dist": "empirical", "values": []}}}),
        serve("input-empirical-weights-zero",
              {"workload": {"input": {"dist": "empirical", "values": [1, 2], "weights": [0, 0]}}}),
        serve("input-dist-unknown", {"workload": {"input": {"dist": "zipf", "mean": 3}}}, mentions="dist"),
        serve("arrival-unknown", {"workload": {"arrival": "sometimes"}}),
        serve("closed-concurrency-0", {"workload": {"arrival": "closed", "rate": DROP, "concurrency": 0}}),
        serve("closed-concurrency-1e18", {"workload": {"arrival": "closed", "rate": DROP, "concurrency": 10**18}}),
        serve("input-50M", {"workload": {"requests": 2, "input": 50_000_000}}),
        serve("input-50M-des", {"workload": {"requests": 2, "input": 50_000_000}}, engine="des"),
        serve("prompt-longer-than-kv", KV_30K),
        serve("prompt-longer-than-kv-des", KV_30K, engine="des"),
        serve("prompt-longer-than-context", {"workload": {"requests": 2, "input": 100_000}}),
        serve("prompt-longer-than-context-des", {"workload": {"requests": 2, "input": 100_000}}, engine="des"),
        serve("prompt-longer-than-kv-no-chunking-des",
              {"engine": {"chunked_prefill": False, "max_tokens": 256}, "workload": {"requests": 2, "input": 20_000}},
              engine="des"),
        serve("routing-exponent-nan", {"routing": {"distribution": "power", "exponent": nan}}),
        serve("routing-exponent-inf", {"routing": {"distribution": "power", "exponent": inf}}),
        serve("routing-exponent-too-steep", {"routing": {"distribution": "power", "exponent": 60}}),
        serve("routing-exponent-too-steep-des", {"routing": {"distribution": "power", "exponent": 60}}, engine="des"),
        serve("routing-capacity-nan", {"routing": {"capacity_factor": nan}}),
        serve("routing-file-missing-key", {"routing": {"distribution": "file"}}),
        serve("offload-host_bw-inf", {"offload": {"enabled": True, "host_bw": inf}}),
        serve("offload-cache-1e18", {"offload": {"enabled": True, "cache_experts": 10**18}}),
        serve("slo-ttft-nan", {"slo": {"ttft_s": nan}}),
        serve("slo-tpot-negative", {"slo": {"tpot_s": -1}}),
        serve("cost-years-inf", {"cost": {"years": inf}}),
        serve("seed-nan", {"seed": nan}),
        serve("seed-1e30", {"seed": 1e30}),
        serve("seed-negative", {"seed": -1}, EITHER),
        serve("precision-unknown", {"precision": {"weights": "fp9"}}, mentions="fp9"),
        serve("placement-missing-file", {"placement": "nowhere.json"}, mentions="nowhere.json"),
        serve("cost_model-missing-file", {"cost_model": "nowhere.parquet"}, mentions="nowhere.parquet"),
        serve("disagg-junk", {"disaggregation": {"prefill": {"replicas": 0}, "decode": {}}}, mentions="replicas"),
        serve("model-config-1e9-layers", {"model": "big.json"}),
        # fixed-length prompts are valid (the docs allow a bare number): these must succeed
        serve("input-512-fixed", {"workload": {"input": 512}}, OK),
        serve("input-512-fixed-des", {"workload": {"input": 512}}, OK, engine="des"),
        serve("input-fixed-mapping", {"workload": {"input": {"dist": "fixed", "value": 512}}}, OK),
        serve("seed-negative-des", {"seed": -1}, EITHER, engine="des"),
    ]  # fmt: skip
    big = olmoe_config(num_hidden_layers=1_000_000_000)
    cs = [replace(c, files={**c.files, "big.json": big}) if "1e9" in c.id else c for c in cs]
    # traces with absurd token counts
    for name, body in {
        "input_tokens-1e308": "input_tokens,output_tokens\n1e308,10\n100,10\n",
        "input_tokens-nan": "input_tokens,output_tokens\nnan,10\n100,10\n",
        "input_tokens-inf": "input_tokens,output_tokens\ninf,10\n100,10\n",
        "input_tokens-negative": "input_tokens,output_tokens\n-5,10\n100,10\n",
        "input_tokens-text": "input_tokens,output_tokens\nmany,10\n100,10\n",
        "arrival-nan": "arrival_s,input_tokens,output_tokens\nnan,100,10\n1,100,10\n",
        "arrival-inf": "arrival_s,input_tokens,output_tokens\n0,100,10\ninf,100,10\n",
        "no-columns": "a,b\n1,2\n",
        "header-only": "input_tokens,output_tokens\n",
    }.items():
        over = {"workload": {"trace": "trace.csv", "trace_format": "csv", "input": DROP, "output": DROP}}
        if name.startswith("arrival"):
            over["workload"] |= {"rate": DROP, "arrival": DROP}
        c = serve(f"trace-{name}", over, mentions="trace.csv")
        cs.append(replace(c, files={**c.files, "trace.csv": body.encode()}))
    jsonl = b'{"input_tokens": 1e308, "output_tokens": 10}\n{"input_tokens": 100, "output_tokens": 10}\n'
    over = {"workload": {"trace": "trace.jsonl", "trace_format": "jsonl", "input": DROP, "output": DROP}}
    c = serve("trace-jsonl-input_tokens-1e308", over, mentions="input_tokens")
    cs.append(replace(c, files={**c.files, "trace.jsonl": jsonl}))
    # routing loads files: [MoE layers, experts] for Mixtral (32 x 8) and OLMoE (16 x 64)
    for name in ("all-zero", "negative", "nan", "inf", "wrong-shape"):
        over = {"routing": {"distribution": "file", "file": "loads.csv"}}
        c = serve(f"routing-loads-{name}", over, mentions="loads.csv")
        cs.append(replace(c, files={**c.files, "loads.csv": loads_csv(32, 8, name)}))
        cs.append(train(f"routing-loads-{name}", over, BAD, {"loads.csv": loads_csv(16, 64, name)}, "loads.csv"))
    # training scenarios
    cs += [
        train("model-unknown", {"model": "gpt-9"}, mentions="gpt-9"),
        train("gpu-unknown", {"gpu": "B300X"}, mentions="B300X"),
        train("batch-missing", {"batch": DROP}),
        train("global_batch-1e18", {"batch": {"global_batch": 10**18}}),
        train("global_batch-nan", {"batch": {"global_batch": float("nan")}}),
        train("global_batch-inf", {"batch": {"global_batch": float("inf")}}),
        train("global_batch-1.0e+18", {"batch": {"global_batch": 1e18}}),
        train("global_batch-not-multiple", {"batch": {"global_batch": 33}}),
        train("micro_batch-0", {"batch": {"micro_batch": 0}}),
        train("micro_batch-1e18", {"batch": {"micro_batch": 10**18, "global_batch": 10**18}}),
        train("seq_len-1e12", {"batch": {"seq_len": 10**12}}),
        train("seq_len-negative", {"batch": {"seq_len": -1}}),
        train("layout-pp32", {"layout": {"pp": 32}}),
        train("layout-ep3", {"layout": {"ep": 3}}),
        train("layout-tp0", {"layout": {"tp": 0}}),
        train("layout-zero5", {"layout": {"zero": 5}}),
        train("layout-schedule-unknown", {"layout": {"schedule": "zigzag"}}),
        train("virtual_stages-1e9", {"layout": {"schedule": "interleaved", "virtual_stages": 10**9}}),
        train("nodes-1e18", {"nodes": 10**18}),
        train("routing-exponent-nan", {"routing": {"distribution": "power", "exponent": float("nan")}}),
        train("routing-exponent-too-steep", {"routing": {"distribution": "power", "exponent": 60}}),
        train("routing-max_violation-nan", {"routing": {"distribution": "power", "max_violation": float("nan")}}),
        train("routing-max_violation-1e9", {"routing": {"distribution": "power", "max_violation": 1e9}}),
        train("comm_sm_fraction-nan", {"comm_sm_fraction": float("nan")}),
        train("mem_reserved-inf", {"mem_reserved_gib": float("inf")}),
        train("steps-1e9", {"steps": 10**9}),
        train("seed-nan", {"seed": float("nan")}),
        train("seed-negative", {"seed": -1}, EITHER),
        train("cost_model-missing", {"cost_model": "nowhere"}),
        train("precision-fp4", {"precision": {"gemm": "fp4"}}),
        train("num_hidden_layers-1e9", {"model": "big.json"}, BAD, {"big.json": olmoe_config(num_hidden_layers=10**9)}),
        train("num_hidden_layers-1.0e9", {"model": "big.json"}, BAD, {"big.json": olmoe_config(num_hidden_layers=1e9)}),
    ]  # fmt: skip
    # sweeps
    nan, inf = float("nan"), float("inf")
    cs += [
        sweep("engine-unknown", {"engine": "fast"}),
        sweep("axes-empty-rate", {"axes": {"rate": []}}),
        sweep("rate-nan", {"axes": {"rate": [nan]}}),
        sweep("rate-inf", {"axes": {"rate": [inf]}}),
        sweep("rate-1e308", {"axes": {"rate": [1e308]}}),
        sweep("rate-negative", {"axes": {"rate": [-1]}}),
        sweep("rate-range-num-1e12", {"axes": {"rate": {"start": 1, "stop": 2, "num": 10**12}}}),
        sweep("rate-range-nan", {"axes": {"rate": {"start": nan, "stop": 2, "num": 3}}}),
        sweep("gpus-0", {"axes": {"gpus": [0]}}),
        sweep("gpus-1e18", {"axes": {"gpus": [10**18]}}),
        sweep("gpus-nan", {"axes": {"gpus": [nan]}}),
        sweep("gpus-huge-product",
              {"axes": {"gpus": list(range(1, 2001)), "rate": {"start": 1, "stop": 9, "num": 10000}}},
              mentions="points"),
        sweep("model-unknown", {"axes": {"model": ["gpt-9"]}}, mentions="gpt-9"),
        sweep("gpu-unknown", {"axes": {"gpu": ["B300X"]}}, mentions="B300X"),
        sweep("precision-unknown", {"axes": {"precision": ["fp9"]}}, mentions="fp9"),
        sweep("routing_skew-nan", {"axes": {"routing_skew": [nan]}}),
        sweep("routing_skew-too-steep", {"axes": {"routing_skew": [60]}}),
        sweep("base-requests-1e12", {"base": {"workload": {"requests": 10**12}}}),
        sweep("base-model-unknown", {"base": {"model": "gpt-9"}}, mentions="gpt-9"),
        sweep("all-pruned", {"axes": {"gpus": [1], "precision": ["bf16"]}}, mentions="prune"),
        sweep("capacity-tolerance-nan", {"capacity": {"tolerance": nan}}),
        sweep("target-inf", {"target": {"throughput_tok_s": inf}}),
        sweep("placement-time-limit-inf", {"placement_options": {"time_limit": inf}}),
        sweep("seed-nan", {"seed": nan}),
    ]  # fmt: skip
    # place: routing statistics that make no sense
    for name, body in {
        "all-zero": "layer,e0,e1,e2,e3\n0,0,0,0,0\n1,0,0,0,0\n",
        "negative": "layer,e0,e1,e2,e3\n0,-1,2,3,4\n1,1,2,3,4\n",
        "nan": "layer,e0,e1,e2,e3\n0,nan,2,3,4\n1,1,2,3,4\n",
        "inf": "layer,e0,e1,e2,e3\n0,inf,2,3,4\n1,1,2,3,4\n",
        "huge": "layer,e0,e1,e2,e3\n0,1e308,2,3,4\n1,1,2,3,4\n",
    }.items():
        argv = ["place", "--stats", "loads.csv", "--gpus", "2", "--method", "eplb", "--out", "out", "--json"]
        cs.append(case(f"place/stats-{name}", argv, BAD, {"loads.csv": body.encode()}))
    cs += [
        place("skew-too-steep", ["--skew", "60"], EITHER),
        place("groups-not-dividing-gpus", ["--groups", "16", "--gpus", "4"], EITHER),
        case("place/current-wrong-shape", [*PLACE, "--out", "out", "--current", "plan.json"], BAD,
             {"plan.json": json.dumps({"physical_to_logical_map": [[0, 1]]}).encode()}),
        case("place/stats-json-nested", ["place", "--stats", "s.json", "--gpus", "2", "--out", "out"], BAD,
             {"s.json": NESTED}),
        case("place/stats-json-nan", ["place", "--stats", "s.json", "--gpus", "2", "--out", "out"], BAD,
             {"s.json": b'{"counts": [[1, NaN], [2, 3]]}'}),
        case("import/nested-json", ["import", "t.json", "--out", "imp"], BAD, {"t.json": NESTED}),
        case("import/no-events", ["import", "t.json", "--out", "imp"], BAD, {"t.json": b'{"schemaVersion": 1}'}),
        case("import/empty-folder", ["import", "adir", "--out", "imp"], BAD, {"adir": b"/"}),
        case("calibrate/empty-folder", ["calibrate", "adir", "--out", "cal.parquet"], BAD, {"adir": b"/"}),
    ]  # fmt: skip
    return cs


def _out_cases() -> list[Case]:
    """Bad ``--out`` (and ``--trace``, ``--report``) targets; none may lose or change a file."""
    writers: list[tuple[str, list[str], str]] = [
        # (id, argv before the flag, the flag)
        ("simulate", ["simulate", "serve.yaml", "--engine", "analytical", "--json"], "--out"),
        ("simulate-des", ["simulate", "serve.yaml", "--json"], "--out"),
        ("simulate--trace", ["simulate", "serve.yaml", "--json"], "--trace"),
        ("train", ["train", "train.yaml", "--json"], "--out"),
        ("train--trace", ["train", "train.yaml", "--json"], "--trace"),
        ("sweep-fresh", ["sweep", "sweep.yaml", "--workers", "1", "--fresh", "--json"], "--out"),
        ("place", [*PLACE, "--json"], "--out"),
        ("calibrate", ["calibrate", str(TABLES), "--json"], "--out"),
        ("calibrate--report", ["calibrate", str(TABLES), "--out", "cal.parquet", "--json"], "--report"),
        ("import", ["import", "trace.json", "--json"], "--out"),
        ("profile", ["profile", "--device", "cpu", "--quick", "--ops", "gemm", "--json"], "--out"),
        ("demo", ["demo", "--no-profile", "--json"], "--out"),
    ]
    # the targets: a folder the user owns with a precious file, the working folder, its parent, a file, a path
    # under a file, a folder holding .git, the precious file itself
    targets = {
        "keep": "keep",
        "dot": ".",
        "dotdot": "..",
        "dot-slash": "./",
        "keep-dotdot": "keep/..",
        "a-file": "afile.txt",
        "under-a-file": "afile.txt/sub",
        "git-repo": "repo",
        "precious-file": "precious.txt",
        "empty": "",  # Path("") is the working folder
        "symlink-to-keep": "link",  # a link to the user's folder
    }
    cs: list[Case] = []
    for wid, argv, flag in writers:
        for tid, target in targets.items():
            if flag == "--trace" and tid in ("dot-slash", "keep-dotdot"):
                continue
            named = {"under-a-file": "afile.txt", "empty": "", "dot-slash": ".", "symlink-to-keep": "link"}
            c = case(f"{wid}/out-{tid}", [*argv, flag, target], mentions=named.get(tid, target))
            cs.append(replace(c, flag=flag))
    # --force never reaches the working folder, its parent or a repository
    for wid, argv in (
        ("simulate", ["simulate", "serve.yaml", "--engine", "analytical", "--json"]),
        ("train", ["train", "train.yaml", "--json"]),
        ("sweep-fresh", ["sweep", "sweep.yaml", "--workers", "1", "--fresh", "--json"]),
        ("place", [*PLACE, "--json"]),
    ):
        for tid, target in (("dot", "."), ("dotdot", ".."), ("git-repo", "repo")):
            cs.append(case(f"{wid}/force-out-{tid}", [*argv, "--out", target, "--force"]))
    # sweep without --fresh resumes into a folder: it may add its files, never lose or change one
    sw = ["sweep", "sweep.yaml", "--workers", "1", "--json", "--out"]
    cs += [
        case("sweep/out-keep-resume", [*sw, "keep"], EITHER, creates=("keep/",)),
        case("sweep/out-a-file", [*sw, "afile.txt"]),
        case("sweep/out-under-a-file", [*sw, "afile.txt/sub"]),
        case("sweep/out-precious-file", [*sw, "precious.txt"]),
    ]
    return cs


CATALOGUE: list[Case] = [*_flag_cases(), *_file_cases(), *_scenario_cases(), *_out_cases()]


# ---------------------------------------------------------------- running a case


class CaseTimeout(BaseException):
    """A case ran past `CASE_LIMIT_S` (a BaseException, so no ``except Exception`` in moesim swallows it)."""


@pytest.fixture
def guard() -> Iterator[None]:
    """SIGALRM after `CASE_LIMIT_S`, and an address-space limit `CASE_MEMORY_BYTES` above today's use."""
    with bounded(CASE_LIMIT_S, CASE_MEMORY_BYTES, CaseTimeout):
        yield


def _write(root: Path, files: dict[str, bytes]) -> None:
    """Create ``files`` under ``root``: bytes, ``b"/"`` a folder, ``b"->TARGET"`` a symbolic link to TARGET."""
    for rel, content in files.items():
        p = root / rel
        if content == b"/":
            p.mkdir(parents=True, exist_ok=True)
        elif content.startswith(b"->"):
            p.symlink_to(content[2:].decode())
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content)


def make_work(tmp_path: Path) -> Path:
    """``tmp_path/work`` with the user's files and the valid fixture inputs; returns it."""
    (tmp_path / "parent-precious.txt").write_bytes(PRECIOUS)
    work = tmp_path / "work"
    _write(
        work,
        {
            "precious.txt": PRECIOUS,
            "keep/precious.txt": PRECIOUS,
            "keep/notes/more.txt": PRECIOUS,
            "repo/.git/HEAD": b"ref: refs/heads/main\n",
            "repo/code.py": b"print('mine')\n",
            "afile.txt": PRECIOUS,
            "link": b"->keep",
            "serve.yaml": yml(SERVE),
            "train.yaml": yml(TRAIN),
            "sweep.yaml": yml(SWEEP),
            "trace.json": json.dumps(_trace_events()).encode(),
        },
    )
    return work


def tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every path under ``root``, links not followed: (kind, size in bytes, mtime in ns); folders carry no
    size or mtime (a temporary file made and removed inside one changes its mtime and nothing else)."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                entry = ("link:" + os.readlink(p), 0, 0)
            elif name in dirnames:
                entry = ("dir", 0, 0)
            else:
                entry = ("file", st.st_size, st.st_mtime_ns)
            out[os.path.relpath(p, root)] = entry
    return out


def _allowed(path: str, creates: tuple[str, ...]) -> bool:
    """Is ``path`` (relative to ``tmp_path``) one a succeeding case may create?"""
    rel = os.path.relpath(path, "work")
    return any(rel == c.rstrip("/") or rel.startswith(c.rstrip("/") + "/") for c in creates)


@pytest.mark.parametrize("c", CATALOGUE, ids=[c.id for c in CATALOGUE])
def test_bad_input(c: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, guard) -> None:
    work = make_work(tmp_path)
    _write(work, c.files)
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    try:
        code = main(list(c.argv))
    except CaseTimeout:
        raise
    except BaseException as exc:  # an exception out of main is a traceback for the user
        pytest.fail(f"main raised {type(exc).__name__}: {str(exc)[:300]}", pytrace=False)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    cap = capsys.readouterr()
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in cap.out and "Traceback" not in cap.err, cap.err[-2000:]
    assert code in c.codes, f"exit {code}, expected {sorted(c.codes)}; stderr: {cap.err[-600:]!r}"
    if code != 0:
        assert len(errors) == 1, f"{len(errors)} error lines: {cap.err[-1000:]!r}"
        assert "internal error" not in errors[0], errors[0]  # bad input is never a moesim bug
        assert c.mentions.lower() in errors[0].lower(), f"the error does not name {c.mentions!r}: {errors[0]!r}"
        if c.flag and c.flag != "--out":
            assert c.flag in errors[0] or "--out" not in errors[0], f"blames --out, not {c.flag}: {errors[0]!r}"
    else:
        assert not errors, errors
    after = tree(tmp_path)
    lost = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    new = sorted(p for p in set(after) - set(before) if code != 0 or not _allowed(p, c.creates))
    assert not lost, f"lost: {lost[:10]}"
    assert not changed, f"changed: {changed[:10]}"
    assert not new, f"left behind: {new[:10]}"


def test_the_catalogue_is_large_and_its_ids_unique() -> None:
    ids = [c.id for c in CATALOGUE]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert len(CATALOGUE) >= 200
    commands = {c.argv[0] for c in CATALOGUE}
    assert commands >= {"models", "gpus", "clusters", "inspect", "roofline", "simulate", "train", "place", "sweep",
                        "profile", "calibrate", "import", "demo", "dashboard"}  # fmt: skip


# ---------------------------------------------------------------- the same scenarios on the Scenario page

#: Catalogue cases whose input is a scenario file (serving or training): the Scenario page takes the same
#: files as an upload.
PAGE_CASES = [c for c in CATALOGUE if c.argv[:1] in (("simulate",), ("train",)) and "case.yaml" in c.files]


@pytest.mark.parametrize("c", PAGE_CASES, ids=lambda c: c.id)
def test_bad_scenario_on_the_scenario_page(c: Case, tmp_path: Path, guard) -> None:
    """An uploaded scenario runs through the page's logic (`dashboard.logic.scenario`) to a result or one
    `MoesimError`, which the page shows as one ``st.error`` line; anything else would be an "internal error"."""
    from moesim.dashboard.logic import scenario as page
    from moesim.model.errors import MoesimError

    _write(tmp_path, {k: v for k, v in c.files.items() if k != "case.yaml"})
    try:
        mapping = page.parse_yaml(c.files["case.yaml"], "case.yaml")
        if page.kind_of(mapping) == "training":
            page.run_training(mapping, str(tmp_path))
        else:
            engine = c.argv[c.argv.index("--engine") + 1] if "--engine" in c.argv else "des"
            page.run_serving(mapping, engine, str(tmp_path))
    except MoesimError as exc:
        assert 0 not in c.codes or c.codes != frozenset({0}), f"a valid input was refused: {exc.one_line()}"
        assert "\n" not in exc.one_line()
        return
    assert 0 in c.codes, "the page accepted what the CLI refuses"
