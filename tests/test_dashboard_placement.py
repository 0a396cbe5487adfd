"""The Placement studio page (AppTest) and its logic module (`dashboard.logic.placement`)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")
from streamlit.testing.v1 import AppTest

from moesim.dashboard.logic import placement as lp
from moesim.model import MoesimError
from moesim.placement import FORMATS, PlacementPlan, RoutingStats, read_plan, save_stats_npz, synthetic_trace

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


def _page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.switch_page("views/placement.py")
    at.run()
    assert not at.exception
    return at


def _set(at: AppTest, **values: float) -> AppTest:
    """Set the page's number inputs (keys without the page's ``pl_`` prefix) and rerun."""
    for key, v in values.items():
        at.number_input(key=f"pl_{key}").set_value(v)
    return at.run()


@pytest.fixture(scope="module")
def ran() -> AppTest:
    """The page after pressing the main action with the built-in defaults."""
    at = _page()
    at.button(key="pl_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def test_defaults_render_without_solving() -> None:
    at = _page()
    assert not at.error
    assert [t.value for t in at.title] == ["Placement studio"]
    charts = at.get("plotly_chart")
    assert len(charts) == 1  # the expert-load heatmap, nothing solved yet
    assert '"type":"heatmap"' in charts[0].proto.spec.replace(" ", "")
    primary = [b for b in at.button if b.proto.type == "primary"]
    assert [b.label for b in primary] == ["Run greedy vs ILP"]
    assert not at.dataframe and not at.get("download_button")
    assert any("Run greedy vs ILP" in i.value for i in at.info)


def test_run_shows_ilp_against_greedy(ran: AppTest) -> None:
    metrics = ran.dataframe[0].value.merge(ran.dataframe[1].value, on="method")  # the balance and solver tables
    assert list(metrics["method"]) == ["round-robin (before)", "greedy EPLB", "ILP"]
    rr, eplb, ilp = metrics["busiest_over_mean"]
    assert eplb < rr and ilp <= eplb * (1 + 1e-9)  # greedy beats round-robin; the ILP never loses to greedy
    assert metrics["status"].iloc[2] in ("optimal", "work limit", "time limit")
    assert len(ran.get("plotly_chart")) == 1 + 2 + 3  # heatmap, per-GPU bars + per-layer lines, three GPU maps
    latency = ran.dataframe[2].value.merge(ran.dataframe[3].value, on="plan")  # analytical and DES columns
    assert len(latency) == 3 and np.isfinite(latency[["tpot_ms", "ttft_p99_ms", "straggler_share"]]).all().all()
    assert latency["tpot_ms"].iloc[1] < latency["tpot_ms"].iloc[0]  # balanced experts decode faster
    buttons = ran.get("download_button")
    assert len(buttons) >= len(FORMATS)
    assert [b.label for b in buttons[: len(FORMATS)]] == list(FORMATS)
    assert all(b.proto.ignore_rerun for b in buttons)  # a download does not rerun the page


def test_results_survive_reruns(ran: AppTest) -> None:
    urls = {b.label: b.proto.url for b in ran.get("download_button")}
    ran.selectbox(key="pl_layer").select(5).run()
    ran.radio(key="pl_plan_choice").set_value("eplb").run()
    assert not ran.exception and not ran.error
    assert len(ran.dataframe[0].value) == 3
    assert any("MoE layer 5" in c.proto.spec for c in ran.get("plotly_chart"))
    after = {b.label: b.proto.url for b in ran.get("download_button")}
    assert after["plan (moesim JSON)"] != urls["plan (moesim JSON)"]  # now the greedy plan's files
    assert after["comparison (CSV)"] == urls["comparison (CSV)"]


def test_ilp_failure_keeps_the_greedy_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lp, "ilp_cap_s", lambda time_limit: 0.05)  # the ILP's process is stopped at once
    at = _set(_page(), seed=7)
    at.button(key="pl_run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "the ILP ran past" in at.error[0].value
    assert list(at.dataframe[0].value["method"]) == ["round-robin (before)", "greedy EPLB"]
    assert at.radio(key="pl_plan_choice").options == ["greedy EPLB"]
    assert len(at.get("download_button")) >= len(FORMATS)


def test_smallest_inputs() -> None:
    at = _page()
    at.slider(key="pl_skew").set_value(0.0)
    at = _set(at, gpus=1, gpus_per_node=1, redundant=0, time_limit=0.5, tokens=64, seed=0)
    assert not at.error
    at.button(key="pl_run").click().run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 3
    # Mixtral's 87 GiB of weights cannot be served by one 80 GB GPU: the simulator says so in one line
    assert len(at.error) == 1 and "does not fit" in at.error[0].value and "(fix:" in at.error[0].value
    assert len(at.get("download_button")) >= len(FORMATS)


def test_largest_inputs_show_the_layout_error() -> None:
    at = _page()
    at.slider(key="pl_skew").set_value(3.0)
    at = _set(at, gpus=1024, gpus_per_node=64, redundant=4096, time_limit=600.0, tokens=16384, seed=2**31 - 1)
    assert not at.exception
    assert len(at.error) == 1 and "do not split evenly over 1024 GPUs" in at.error[0].value
    assert not [b for b in at.button if b.proto.type == "primary"]  # nothing to run on an infeasible layout


@pytest.mark.parametrize(
    ("gpus", "per_node", "message"),
    [(3, 8, "do not split evenly over 3 GPUs"), (16, 8, "over 16 GPUs"), (12, 8, "12 GPUs do not split into nodes")],
)
def test_infeasible_layout(gpus: int, per_node: int, message: str) -> None:
    at = _set(_page(), gpus=gpus, gpus_per_node=per_node)
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value and "(fix:" in at.error[0].value


def _upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.radio(key="pl_source").set_value("Upload").run()
    at.file_uploader(key="pl_upload").set_value((name, data, "application/octet-stream"))
    return at.run()


def _npz(stats: RoutingStats) -> bytes:
    """``stats`` as the bytes of the .npz the library's `save_stats_npz` writes."""
    with tempfile.TemporaryDirectory() as tmp:
        save_stats_npz(stats, Path(tmp) / "s.npz")
        return (Path(tmp) / "s.npz").read_bytes()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("trace.npy", b"garbage", "cannot read trace.npy"),
        ("stats.txt", b"1,2,3", "extension '.txt'"),
        ("wrong.npz", None, "7 experts] but the model has [32 MoE layers, 8 experts]"),
    ],
)
def test_invalid_upload_shows_one_error(name: str, data: bytes | None, message: str) -> None:
    data = data if data is not None else _npz(synthetic_trace(32, 7, 2, tokens=128))
    at = _upload(_page(), name, data)
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value
    assert "moesim-upload" not in at.error[0].value  # the temporary folder stays out of the message
    assert not at.get("plotly_chart")


def test_valid_upload() -> None:
    stats = synthetic_trace(32, 8, 2, tokens=512, alpha=2.0, seed=3)
    at = _upload(_page(), "recorded.npz", _npz(stats))
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 1
    assert any(c.value.startswith("recorded.npz: 32 MoE layers x 8 experts") for c in at.caption)


# logic --------------------------------------------------------------------------------------------------------------
def test_exports_read_back_as_the_plan(tmp_path: Path) -> None:
    stats = lp.synthetic_stats("mixtral-8x7b", 512, 1.5, 1)
    greedy = lp.run_greedy(stats, "mixtral-8x7b", 4, 2, 4)["eplb"]
    plan = PlacementPlan.from_dict(greedy["plan"])
    for fmt in FORMATS:
        name, data, _, first = lp.export_file(greedy["plan"], fmt)
        folder = tmp_path / fmt
        folder.mkdir()
        if name.endswith(".zip"):
            zipfile.ZipFile(io.BytesIO(data)).extractall(folder)
        else:
            (folder / name).write_bytes(data)
        back = read_plan(folder / first, fmt, 8, 4, 2, plan.moe_layer_ids, plan.num_hidden_layers)
        assert np.array_equal(back.phys_to_log, plan.phys_to_log), fmt
    flags = lp.flags_text(greedy["plan"])
    assert all(f"# {fmt} (" in flags for fmt in FORMATS) and "--ep-num-redundant-experts 4" in flags
    assert "/tmp" not in flags and b"moesim-export" not in lp.export_file(greedy["plan"], "trtllm")[1]


def test_expert_map_accounts_for_every_pair() -> None:
    stats = lp.synthetic_stats("mixtral-8x7b", 256, 1.0, 2)
    res = lp.run_greedy(stats, "mixtral-8x7b", 4, 4, 4)["eplb"]
    z = lp.expert_map(res["phys_to_log"], stats["counts"], 4, 3)
    assert z.shape == (4, 8) and np.nansum(z) == pytest.approx(100.0)
    assert np.allclose(np.nansum(z, axis=1) / 100 * stats["counts"][3].sum(), res["gpu_loads"][3])


def test_ilp_is_stopped_at_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    stats = lp.synthetic_stats("mixtral-8x7b", 256, 1.0, 4)
    monkeypatch.setattr(lp, "ilp_cap_s", lambda time_limit: 0.05)
    with pytest.raises(MoesimError, match="ran past"):
        lp.run_ilp(stats, "mixtral-8x7b", 4, 4, 0, 0.75, 4)
