"""A key written twice in a YAML mapping, and true/false where a number belongs, are one error line each.

YAML's loaders keep the second of two equal keys silently (a second ``layout:`` block drops the first), and
pydantic's lax mode reads ``true`` as 1 (``tp: true`` would run TP1): `model.inputs` refuses both, for every input
file moesim reads through it and every pydantic model of an input (`model.inputs.StrictInput`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.model.inputs import StrictInput, _number_not_bool, parse_yaml

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "examples" / "mixtral-8x7b-ep8.yaml"
TRAIN = ROOT / "examples" / "train-mixtral-8x7b-h100.yaml"


def _one_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_duplicate_keys_name_both_lines() -> None:
    with pytest.raises(MoesimError, match=r"'layout' on lines 2 and 4: the second would silently replace") as e:
        parse_yaml("model: m\nlayout: {tp: 2}\nname: x\nlayout: {tp: 4}\n", "s.yaml")
    assert e.value.hint.startswith("keep one of them")
    with pytest.raises(MoesimError, match=r"'tp' on lines 2 and 3"):  # nested
        parse_yaml("layout:\n  tp: 2\n  tp: 4\n", "s.yaml")
    with pytest.raises(MoesimError, match=r"'ep' on line 1:"):  # a flow mapping on one line
        parse_yaml("layout: {ep: 2, ep: 8}\n", "s.yaml")
    with pytest.raises(MoesimError, match=r"the same key twice.*'1'"):  # keys compared as YAML reads them
        parse_yaml("axes:\n  - {'1': a, '1': b}\n", "s.yaml")


def test_merge_keys_and_equal_keys_in_different_mappings_are_fine() -> None:
    doc = "base: &b {tp: 2, ep: 2}\nover:\n  <<: *b\n  tp: 4\nother: {tp: 2}\n"
    assert parse_yaml(doc, "s.yaml") == {
        "base": {"tp": 2, "ep": 2},
        "over": {"tp": 4, "ep": 2},
        "other": {"tp": 2},
    }
    assert parse_yaml("a: 1\nb: [1, 1]\n", "s.yaml") == {"a": 1, "b": [1, 1]}


def test_duplicate_key_in_a_scenario_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for example, command in ((SERVE, "simulate"), (TRAIN, "train")):
        f = tmp_path / example.name
        f.write_text(example.read_text() + "\nname: second-name\n")
        line = _one_error([command, str(f), "--out", str(tmp_path / "out")], capsys)
        assert "the same key twice in one mapping: 'name'" in line and "(fix: keep one of them" in line
        assert not (tmp_path / "out").exists()


def _with(example: Path, tmp: Path, path: tuple[str, ...], value: object) -> Path:
    data = yaml.safe_load(example.read_text())
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    f = tmp / f"{'-'.join(path)}.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


@pytest.mark.parametrize(
    ("example", "command", "path"),
    [
        (TRAIN, "train", ("layout", "tp")),
        (TRAIN, "train", ("layout", "dp")),  # int | None
        (TRAIN, "train", ("batch", "micro_batch")),
        (SERVE, "simulate", ("layout", "ep")),
        (SERVE, "simulate", ("workload", "requests")),
        (SERVE, "simulate", ("workload", "rate")),  # a float
    ],
)
def test_true_or_false_for_a_number_is_refused(
    example: Path, command: str, path: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for value in (True, False):
        f = _with(example, tmp_path, path, value)
        line = _one_error([command, str(f), "--json"], capsys)
        assert ".".join(path) in line and "must be a number, not" in line, line


def test_booleans_still_take_true_and_false(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _with(_with(SERVE, tmp_path, ("engine", "chunked_prefill"), False), tmp_path, ("workload", "requests"), 50)
    assert main(["simulate", str(f), "--engine", "analytical", "--json"]) == 0
    capsys.readouterr()


def test_which_annotations_count_as_numbers() -> None:
    assert _number_not_bool(int) and _number_not_bool(float) and _number_not_bool(int | None)
    assert not _number_not_bool(bool) and not _number_not_bool(int | bool) and not _number_not_bool(str)
    assert not _number_not_bool(list[int])  # containers are not looked into

    class M(StrictInput):
        n: int = 1
        x: float | None = None
        flag: bool = False

    assert M(n=2, x=0.5, flag=True).flag is True
    for key in ("n", "x"):
        with pytest.raises(ValueError, match="must be a number, not true or false"):
            M(**{key: True})
