"""Training scenarios calibrate a folder of tables once per process while its files stay as they are."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from moesim.sim.training import train_scenario as ts

calmod = importlib.import_module("moesim.profiling.calibrate")  # the module (the package exports its function)

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "profiling" / "data" / "h100-sxm" / "quick-bf16"


@pytest.fixture()
def tables(tmp_path: Path) -> Path:
    if not TABLES.is_dir():
        pytest.skip("the committed H100 SXM tables are absent")
    return Path(shutil.copytree(TABLES, tmp_path / "quick-bf16"))


def test_a_folder_is_calibrated_once_until_a_table_changes(tables: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list] = []
    real = calmod.calibrate

    def counting(paths, **kw):
        calls.append(list(paths))
        return real(paths, **kw)

    monkeypatch.setattr(calmod, "calibrate", counting)
    monkeypatch.setattr(ts, "_CALIBRATIONS", {})
    first = ts._load_cost_model(str(tables), tables.parent)
    second = ts._load_cost_model(str(tables), tables.parent)
    assert len(calls) == 1 and second is not first and second.calibration is first.calibration
    assert second.name == first.name == "calibrated:quick-bf16"

    table = sorted(tables.rglob("*.parquet"))[0]
    table.write_bytes(table.read_bytes())  # rewritten: a new modification time
    ts._load_cost_model(str(tables), tables.parent)
    assert len(calls) == 2
    extra = tables / "notes.txt"  # any file added under the folder counts
    extra.write_text("measured again")
    ts._load_cost_model(str(tables), tables.parent)
    assert len(calls) == 3


def test_at_most_the_kept_number_of_calibrations(tables: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ts, "_CALIBRATIONS", {})
    monkeypatch.setattr(ts, "_CALIBRATIONS_KEPT", 2)
    for i in range(3):
        (tables / f"run-{i}.txt").write_text(str(i))
        ts._load_cost_model(str(tables), tables.parent)
    assert len(ts._CALIBRATIONS) == 2
