"""Every file moesim reads, given a bad file, gives one ``error:`` line naming the file: no traceback, nothing written.

Bad files: binary data, UTF-16 text, an empty file, a folder where a file belongs, a 40 kB nest of brackets (a
RecursionError before `model.inputs`), a list or a scalar where a mapping belongs. Commands run in-process through
`dashboard.cli.main`, each from an empty working folder, which must stay empty.
"""

from __future__ import annotations

import importlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.model.inputs import MAX_DEPTH, check_magic, parse_json, parse_yaml, read_json, read_text, read_yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mixtral-8x7b-ep8.yaml"

#: Bad contents by kind; None: a folder. ``list`` and ``scalar`` are valid YAML and JSON of the wrong shape.
BAD: dict[str, bytes | None] = {
    "binary": bytes(range(256)) * 4,
    "utf16": "model: mixtral-8x7b\n".encode("utf-16"),
    "empty": b"",
    "folder": None,
    "nested": b"[" * 20_000 + b"]" * 20_000,
    "list": b"[1, 2]\n",
    "scalar": b"42\n",
}


def _scenario(tmp: Path, **extra: object) -> Path:
    """A serving scenario (examples/mixtral-8x7b-ep8.yaml) with ``extra`` keys, written into ``tmp``."""
    data = yaml.safe_load(EXAMPLE.read_text()) | extra
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


Argv = Callable[[Path, Path], list[str]]
_SYNTHETIC = ["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--tokens", "64"]

#: command -> (the bad file's name, argv from (the bad file, a scratch folder that must not appear)).
COMMANDS: dict[str, tuple[str, Argv]] = {
    "simulate": ("s.yaml", lambda f, out: ["simulate", str(f), "--out", str(out)]),
    "train": ("t.yaml", lambda f, out: ["train", str(f), "--out", str(out)]),
    "sweep": ("w.yaml", lambda f, out: ["sweep", str(f), "--out", str(out), "--workers", "1"]),
    "place-json": ("stats.json", lambda f, out: ["place", "--stats", str(f), "--gpus", "8", "--out", str(out)]),
    "place-jsonl": ("stats.jsonl", lambda f, out: ["place", "--stats", str(f), "--gpus", "8", "--out", str(out)]),
    "place-csv": ("stats.csv", lambda f, out: ["place", "--stats", str(f), "--gpus", "8", "--out", str(out)]),
    "place-npz": ("stats.npz", lambda f, out: ["place", "--stats", str(f), "--gpus", "8", "--out", str(out)]),
    "place-npy": ("stats.npy", lambda f, out: ["place", "--stats", str(f), "--gpus", "8", "--out", str(out)]),
    "place-current": (
        "plan.json",
        lambda f, out: [*_SYNTHETIC, "--method", "eplb", "--current", str(f), "--out", str(out)],
    ),
    "calibrate": ("t.parquet", lambda f, out: ["calibrate", str(f), "--out", str(out / "c.parquet")]),
    "import": ("gemm_perf.parquet", lambda f, out: ["import", str(f), "--out", str(out)]),
    "import-trace": (
        "trace.json",
        lambda f, out: ["import", str(f), "--format", "trace", "--gpu", "H100-SXM", "--out", str(out)],
    ),
    "inspect": ("config.json", lambda f, out: ["inspect", str(f)]),
    "roofline": ("config.json", lambda f, out: ["roofline", str(f)]),
    "hardware": ("gpus.yaml", lambda f, out: ["roofline", "mixtral-8x7b", "--hardware", str(f)]),
    "accuracy-csv": ("acc.csv", lambda f, out: ["roofline", "mixtral-8x7b", "--accuracy-csv", str(f)]),
    "cost-model": ("c.parquet", lambda f, out: ["simulate", str(EXAMPLE), "--cost-model", str(f)]),
    "workload-trace": (
        "trace.jsonl",
        lambda f, out: ["simulate", str(_scenario(f.parent, workload={"rate": 5, "trace": f.name})), "--json"],
    ),
    "routing-file": (
        "loads.json",
        lambda f, out: [
            "simulate",
            str(_scenario(f.parent, routing={"distribution": "file", "file": f.name})),
            "--engine",
            "analytical",
        ],
    ),
    "placement-file": (
        "p2l.npy",
        lambda f, out: ["simulate", str(_scenario(f.parent, placement=f.name)), "--engine", "analytical"],
    ),
}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_error(rc: int, out: str, err: str) -> str:
    """A non-zero exit, exactly one ``error:`` line on stderr, no traceback; returns the error line."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc != 0, (out, err)
    assert len(errors) == 1, err
    assert "Traceback" not in out + err
    return errors[0]


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_file_is_one_error_line(
    command: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name, argv = COMMANDS[command]
    data = BAD[kind]
    files, cwd = tmp_path / "files", tmp_path / "cwd"
    files.mkdir()
    cwd.mkdir()
    bad = files / name
    if data is None:
        bad.mkdir()
    else:
        bad.write_bytes(data)
    out = tmp_path / "out"
    args = argv(bad, out)  # may write the scenario that refers to the bad file
    monkeypatch.chdir(cwd)
    before = _tree(tmp_path)
    rc, stdout, stderr = run_cli(args, capsys)
    line = assert_one_error(rc, stdout, stderr)
    assert "internal error" not in line
    assert _tree(tmp_path) == before, "a failed command wrote files"
    # a file that is there is named by its name ("42" is a valid CSV of one expert's load: the layout is refused)
    if data is not None and (command, kind) != ("place-csv", "scalar"):
        assert name in line, line


def test_messages_name_the_problem(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    cases = {
        b"": "is empty",
        "a: 1".encode("utf-16"): "UTF-16 text, not UTF-8",
        b"a: \x00\x01": "not UTF-8 text",
        b"a: \xff\xfe\xfd": "not UTF-8 text",
        b"a: [1": "not valid YAML at line 1",
        b"[" * 40_000: f"nested more than {MAX_DEPTH} levels",
        b"&a [*a]": "refers to itself",
        b"a: " + b"9" * 5000: "a number with more than 4300 digits",
    }
    for data, expected in cases.items():
        f.write_bytes(data)
        with pytest.raises(MoesimError, match=expected.replace("[", r"\[")) as e:
            read_yaml(f, "a scenario YAML")
        assert str(f) in e.value.message
    with pytest.raises(MoesimError, match="is a folder, not a scenario YAML"):
        read_yaml(tmp_path, "a scenario YAML")
    with pytest.raises(MoesimError, match="no such file"):
        read_text(tmp_path / "nope.yaml")
    if Path("/dev/zero").exists():  # reading it would never end
        with pytest.raises(MoesimError, match="device"):
            read_text("/dev/zero")
    f.write_bytes(b"\xef\xbb\xbfmodel: m\n")  # a UTF-8 byte-order mark is fine
    assert read_yaml(f) == {"model": "m"}


def test_alias_bomb_is_refused_quickly() -> None:
    """A "billion laughs" YAML (aliases of aliases) would hang whatever walks it; it is refused at once."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    with pytest.raises(MoesimError, match="aliases are expanded"):
        parse_yaml("\n".join(lines), "bomb.yaml")
    shared = parse_yaml("base: &b {tp: 1}\nx: *b\ny: *b\n", "ok.yaml")  # ordinary aliases are fine
    assert shared["x"] == shared["y"] == {"tp": 1}


def test_json_depth_and_syntax() -> None:
    with pytest.raises(MoesimError, match="nested more than"):
        parse_json(b"[" * 50_000 + b"]" * 50_000, "deep.json")
    with pytest.raises(MoesimError, match=r"not valid JSON \(line 2, column 1"):
        parse_json('{"a": 1,\n}', "bad.json")
    assert parse_json(json.dumps([[1] * 3] * 3), "ok.json") == [[1, 1, 1]] * 3
    with pytest.raises(MoesimError, match=r"is not a \.npy file \(it holds text\)"):
        check_magic(b"hello", ".npy", "x.npy")


def test_read_json_names_the_kind_of_file(tmp_path: Path) -> None:
    with pytest.raises(MoesimError, match="is a folder, not a plan") as e:
        read_json(tmp_path, "a plan", "give --current a plan JSON")
    assert e.value.hint == "give --current a plan JSON"


# --- the CLI's last resort --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RecursionError("maximum recursion depth exceeded"), "internal error (RecursionError: maximum recursion"),
        (MemoryError(), "internal error (MemoryError: no message)"),
        (OverflowError("int too large"), "internal error (OverflowError: int too large)"),
        (KeyError("boom"), "internal error (KeyError: 'boom')"),
        (PermissionError(13, "Permission denied", "/x/y.yaml"), "error: /x/y.yaml: permission denied"),
        (OSError(28, "No space left on device", "/x/out"), "error: /x/out: no space left on the device"),
    ],
)
def test_unexpected_exception_is_one_line(
    exc: BaseException, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(_: object) -> None:
        raise exc

    monkeypatch.setattr("moesim.dashboard.cli.catalog.load_model", boom)
    monkeypatch.delenv("MOESIM_DEBUG", raising=False)
    rc, out, err = run_cli(["inspect", "mixtral-8x7b"], capsys)
    line = assert_one_error(rc, out, err)
    assert rc == 1 and expected in line, line
    if "internal error" in expected:
        assert line.endswith("please report it with the command")
    monkeypatch.setenv("MOESIM_DEBUG", "1")
    rc, out, err = run_cli(["inspect", "mixtral-8x7b"], capsys)
    assert rc == 1 and "Traceback" in err and expected in err


def test_torch_warnings_are_filtered_in_normal_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """profiling filters warnings raised inside torch and triton, so none comes before an ``error:`` line."""
    from moesim import profiling

    monkeypatch.delenv("MOESIM_DEBUG", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        importlib.reload(profiling)  # installs its filters (pytest restores the filters after each test)
        warnings.warn_explicit("CUDA initialization: driver too old", UserWarning, "cuda.py", 1, module="torch.cuda")
        warnings.warn_explicit("a kernel warning", UserWarning, "jit.py", 1, module="triton.runtime")
        warnings.warn_explicit("a moesim warning", UserWarning, "x.py", 1, module="moesim.sim.serving.engine")
    assert [str(w.message) for w in seen] == ["a moesim warning"]


# --- routing loads and skew ---------------------------------------------------------------------------------------


def _loads_file(tmp: Path, loads: np.ndarray) -> Path:
    np.save(tmp / "loads.npy", loads)
    return _scenario(tmp, routing={"distribution": "file", "file": "loads.npy"})


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda a: a.__setitem__(3, 0.0), "routing loads of layer 3 are all zero"),
        (lambda a: a.__setitem__((2, 5), -1.0), "negative load -1 at layer 2 expert 5"),
        (lambda a: a.__setitem__((4, 1), np.nan), "load at layer 4 expert 1 is NaN"),
    ],
)
def test_routing_loads_name_the_layer(
    edit: Callable[[np.ndarray], None], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loads = np.ones((32, 8))
    edit(loads)
    rc, out, err = run_cli(["simulate", str(_loads_file(tmp_path, loads)), "--engine", "analytical"], capsys)
    line = assert_one_error(rc, out, err)
    assert expected in line and "shape" not in line, line


def test_routing_skew_too_steep_names_the_key_and_the_largest_exponent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moesim.sim.serving.scenario import max_power_exponent

    top = max_power_exponent(8, 2)  # Mixtral: top-2 of 8 experts
    ranks = np.arange(1, 9, dtype=float)
    assert 2 * (1 / np.sum(ranks**-top)) <= 1 < 2 * (1 / np.sum(ranks ** -(top + 0.002)))  # the largest, to 3 decimals
    path = _scenario(tmp_path, routing={"distribution": "power", "exponent": 3.0}, workload={"rate": 2, "requests": 20})
    rc, out, err = run_cli(["simulate", str(path), "--engine", "analytical"], capsys)
    line = assert_one_error(rc, out, err)
    assert "routing.exponent=3 is too steep for top-2" in line and f"routing.exponent <= {top:g}" in line, line
    path = _scenario(tmp_path, routing={"distribution": "power", "exponent": top}, workload={"rate": 2, "requests": 20})
    assert run_cli(["simulate", str(path), "--engine", "analytical"], capsys)[0] == 0
    assert max_power_exponent(8, 1) == float("inf") and max_power_exponent(8, 8) == 0.0


def test_training_max_violation_too_high_names_the_largest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load((ROOT / "examples" / "train-mixtral-8x7b-h100.yaml").read_text())
    data["routing"] = {"distribution": "power", "max_violation": 5}
    data.pop("cost_model", None)  # a path relative to examples/
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    rc, out, err = run_cli(["train", str(path)], capsys)
    line = assert_one_error(rc, out, err)
    assert "routing.max_violation=5 is too high for top-2" in line and "routing.max_violation <= 3" in line, line


def test_yaml_read_by_libyaml_with_pythons_errors(tmp_path: Path) -> None:
    """YAML is parsed by libyaml where PyYAML has it; a refused document is read again by PyYAML, so every error
    keeps PyYAML's wording and line; libyaml's own depth limit (1,000 levels) reads as the nesting error."""
    from moesim.model import inputs

    if yaml.__with_libyaml__:
        assert inputs._SAFE_LOADER is yaml.CSafeLoader
    f = tmp_path / "x.yaml"
    for depth in (150, 999, 1_001, 5_000):  # below and above libyaml's limit, above MAX_DEPTH
        f.write_bytes(b"a: " + b"[" * depth + b"]" * depth + b"\n")
        with pytest.raises(MoesimError, match=f"nested more than {MAX_DEPTH} levels"):
            read_yaml(f, "a scenario YAML")
    f.write_bytes(b"a: 1\nb: [2\nc: 3\n")  # PyYAML names what it found; libyaml would not
    with pytest.raises(MoesimError, match=r"not valid YAML at line 3 \(expected ',' or '\]', but got ':'\)"):
        read_yaml(f, "a scenario YAML")
    f.write_bytes(b"model: mixtral-8x7b\nlayout: {tp: 2, ep: 2}\nrates: [1.5, 2]\n")
    assert read_yaml(f) == {"model": "mixtral-8x7b", "layout": {"tp": 2, "ep": 2}, "rates": [1.5, 2]}
