"""The Profiles & calibration page, driven through `AppTest`, and its logic module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from moesim.dashboard.logic import profiles as logic

APP = Path(__file__).parents[1] / "dashboard/app.py"
COMMITTED = Path(__file__).parents[1] / "profiling/data"


def _page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.switch_page("views/profiles.py")
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _errors_table(at: AppTest) -> pd.DataFrame:
    tables = [d.value for d in at.dataframe if "mape" in d.value.columns]
    assert len(tables) == 1
    return tables[0]


def _choose(at: AppTest, kind: str, folder: str | None = None) -> AppTest:
    """Select the first source of ``kind`` (its label as `logic.sources` names it) and, for a folder, type it."""
    label = next(s.label for s in logic.sources() if s.kind == kind)
    at.selectbox(key="profiles_source").select(label).run()
    if folder is not None:
        key = {"local": "profiles_local_dir", "imported": "profiles_import_dir"}[kind]
        at.text_input(key=key).input(folder).run()
    return at


def test_defaults_show_the_committed_quick_bf16_calibration():
    at = _page()
    _ok(at)
    assert at.title[0].value == "Profiles & calibration"
    assert at.selectbox(key="profiles_source").value.startswith("h100-sxm / quick-bf16")
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # the scatter and the error bars
    errors = _errors_table(at)
    assert {"gemm", "grouped_gemm", "attention", "router", "permute", "memcpy"} <= {
        f.split("/")[0] for f in errors["fit"]
    }
    gemm = errors[errors["fit"] == "gemm/bf16/torch@H100-SXM"].iloc[0]
    assert gemm["rows_holdout"] > 0 and 0 < gemm["mape"] < 50
    assert any("torch" in d.value.columns for d in at.dataframe)  # the per-file metadata (torch version)


def test_every_committed_set_calibrates():
    at = _page()
    committed = [o for o in at.selectbox(key="profiles_source").options if "committed" in o]
    expected = sorted(f"{p.parent.name} / {p.name}" for p in COMMITTED.glob("*/*") if any(p.glob("*.parquet")))
    assert sorted(o.split(" (")[0] for o in committed) == expected
    for label in committed:
        at.selectbox(key="profiles_source").select(label).run()
        _ok(at)
        assert len(at.get("plotly_chart")) == 2
        assert len(_errors_table(at)) > 0
        if "fp8" in label:
            assert "gemm/fp8/torch@H100-SXM" in set(_errors_table(at)["fit"])


def test_missing_folder_is_one_error(tmp_path):
    at = _choose(_page(), "local", str(tmp_path / "nowhere"))
    assert not at.exception
    assert len(at.error) == 1 and "no such file or folder" in at.error[0].value
    assert not at.get("plotly_chart")


def test_folder_without_tables_is_one_error(tmp_path):
    at = _choose(_page(), "imported", str(tmp_path))
    assert not at.exception
    assert len(at.error) == 1 and "no .parquet tables" in at.error[0].value


def test_corrupt_table_is_one_error(tmp_path):
    (tmp_path / "gemm.parquet").write_bytes(b"this is not parquet")
    at = _choose(_page(), "imported", str(tmp_path))
    assert not at.exception
    assert len(at.error) == 1 and "not a readable parquet table" in at.error[0].value


def test_empty_import_folder_asks_for_one():
    at = _choose(_page(), "imported")
    _ok(at)
    assert any("Enter a folder" in i.value for i in at.info)


def test_quick_profile_without_torch_says_how_to_install(monkeypatch):
    monkeypatch.setattr(logic, "torch_available", lambda: False)
    at = _page()
    at.button(key="profiles_run").click().run()
    _ok(at)
    assert any("pip install -e '.[profile]'" in w.value for w in at.warning)


def test_quick_profile_button_profiles_this_machine():
    pytest.importorskip("torch")
    at = _page()
    at.button(key="profiles_run").click().run()
    _ok(at)
    run = at.session_state["profiles_quick"]
    assert set(run["rows"]) == {"gemm", "grouped_gemm"} and Path(run["folder"]).is_dir()
    assert at.selectbox(key="profiles_source").value == "Quick profile run here"
    fits = set(_errors_table(at)["fit"])
    assert {"gemm/fp32/torch@cpu", "grouped_gemm/fp32/torch_loop@cpu"} <= fits
    assert len(at.get("plotly_chart")) == 2
    at.run()  # the run persists across reruns
    _ok(at)
    assert at.selectbox(key="profiles_source").value == "Quick profile run here"
    shutil.rmtree(run["folder"])


@pytest.mark.skipif(not logic.SHARED.is_dir(), reason="../shared/data is not present")
def test_shared_reference_data_is_offered_and_imported():
    shared = [s for s in logic.sources() if s.kind == "shared"]
    assert shared
    aic = next((s for s in shared if logic.is_aiconfigurator(s.path)), None)
    if aic is None:
        pytest.skip("no AIConfigurator folder in ../shared/data")
    folder = logic.tables_folder(aic.path)
    assert Path(folder).is_relative_to(logic.cache_root()) and logic.tables_folder(aic.path) == folder
    tables = logic.load_set(folder, logic.signature(folder))
    assert len(tables.tables["gemm"]) > 10_000 and "H100-SXM" in set(tables.hardware["device_key"])


def test_sources_are_discovered_by_listing(tmp_path):
    for gpu, run in (("b200", "quick-bf16"), ("a100", "full-fp16"), ("a100", "empty")):
        (tmp_path / "data" / gpu / run).mkdir(parents=True)
    for gpu, run in (("b200", "quick-bf16"), ("a100", "full-fp16")):
        (tmp_path / "data" / gpu / run / "gemm.parquet").write_bytes(b"")
    found = logic.sources(tmp_path / "data", tmp_path / "absent")
    assert [s.label.split(" (")[0] for s in found if s.kind == "committed"] == ["a100 / full-fp16", "b200 / quick-bf16"]
    assert [s.kind for s in found if s.kind != "committed"] == ["local", "imported"]


def test_scatter_is_log_log_with_the_identity_line():
    folder = str(COMMITTED / "h100-sxm" / "quick-fp8_fp16")
    view = logic.calibrate_set(folder, logic.signature(folder), 0.2, 0)
    fig = logic.scatter_figure(view)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert fig.data[-1].name.startswith("y = x")
    kinds = {t.legendgroup for t in fig.data[:-1]}
    assert kinds == {"gemm", "grouped_gemm"}
    assert len(fig.data) - 1 == int((view.errors["rows_holdout"] > 0).sum())
    assert sum(len(t.x) for t in fig.data[:-1]) == len(view.points) == view.errors["rows_holdout"].sum()
