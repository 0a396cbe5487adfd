"""The Streamlit app: navigation, the CAP overview, Scenario and Sweep explorer pages (AppTest), and the CLI.

The Placement studio and Profiles pages have their own test files; the real-browser test is
tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")
from dashboard_server import free_port, running_dashboard  # tests/dashboard_server.py
from streamlit.testing.v1 import AppTest

from moesim.dashboard.logic import sweeps as sw
from moesim.dashboard.ui import PAGES

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
EXAMPLES = ROOT / "examples"


def page(name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page(f"views/{name}.py")
    return at.run()


def clean(at: AppTest) -> None:
    """No exception and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def primary(at: AppTest):
    """The page's one main-action button."""
    buttons = [b for b in at.button if b.proto.type == "primary"]
    assert len(buttons) == 1, [b.label for b in buttons]
    return buttons[0]


def charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


@pytest.mark.parametrize("script,title", [(p[0], p[1]) for p in PAGES])
def test_every_page_renders_with_defaults(script: str, title: str) -> None:
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page(script)
    at.run()
    clean(at)
    assert at.title[0].value == title
    primary(at)


def test_default_page_is_the_cap_overview() -> None:
    at = AppTest.from_file(APP, default_timeout=180).run()
    clean(at)
    assert at.title[0].value == "CAP overview"


# --- CAP overview ---------------------------------------------------------------------------------------------


def test_cap_defaults_show_radar_pareto_bars_and_table() -> None:
    at = page("cap")
    clean(at)
    assert charts(at) == 4  # radar, Pareto, utilisation, throughput-interactivity frontier
    table = at.dataframe[0].value
    assert len(table) == 8  # 2 models x 2 GPUs x 1 layout x 2 precisions, none pruned
    assert table["pareto"].any()
    assert (table["cost_usd_per_mtok"].dropna() > 0).all()
    assert table["cost_usd_per_mtok"].is_monotonic_increasing  # cheapest first
    helps = [m.help for m in at.metric]
    assert all(helps), "every metric explains itself in a tooltip"


def test_cap_capacity_button_sizes_every_configuration() -> None:
    at = page("cap")
    # keep the click short: one model, one GPU, one layout, one precision
    at.multiselect(key="cap_models").set_value(["mixtral-8x7b"])
    at.multiselect(key="cap_gpus").set_value(["H100-SXM"])
    at.multiselect(key="cap_layouts").set_value(["TP over all GPUs"])
    at.multiselect(key="cap_precisions").set_value(["fp8"])
    at.run()
    before = at.dataframe[0].value
    primary(at).click().run()
    clean(at)
    after = at.dataframe[0].value
    assert len(after) == 1
    # at capacity the configuration carries more traffic than at the default 20 req/s
    assert after["throughput_tok_s"].iloc[0] > 2 * before["throughput_tok_s"].iloc[0]
    assert primary(at).disabled


def test_cap_edge_inputs() -> None:
    at = page("cap")
    at.multiselect(key="cap_layouts").set_value(["DP-attention + EP over all GPUs", "TP2 + EP2 replicas"])
    at.select_slider(key="cap_num_gpus").set_value(1).run()
    clean(at)
    # 1 GPU: TP2 + EP2 needs 2, so it is pruned and said so; the rest run (experts offloaded where needed)
    assert any("Left out" in i.value and "layout divides" in i.value for i in at.info)
    assert len(at.dataframe[0].value) == 8
    at.select_slider(key="cap_num_gpus").set_value(64).run()
    clean(at)
    at.multiselect(key="cap_models").set_value([]).run()
    assert not at.exception
    assert "Pick at least a model" in at.warning[0].value


def test_cap_nothing_fits_is_a_message() -> None:
    at = page("cap")
    at.multiselect(key="cap_models").set_value(["deepseek-v3"])
    at.multiselect(key="cap_gpus").set_value(["L40S"])
    at.select_slider(key="cap_num_gpus").set_value(1)
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "No configuration gave figures" in at.error[0].value
    reasons = at.dataframe[0].value
    assert len(reasons) == 2 and set(reasons["status"]) == {"overloaded"}
    assert (reasons["error"].str.len() > 0).all()  # each says why


def test_cap_open_in_scenario() -> None:
    at = page("cap")
    at.button(key="cap_open").click().run()
    clean(at)
    assert at.title[0].value == "Scenario"
    assert at.radio(key="scenario_source").value == "Opened from another page"


# --- Scenario ---------------------------------------------------------------------------------------------------


def test_scenario_analytical_then_des() -> None:
    at = page("scenario")
    clean(at)
    assert charts(at) == 3  # percentiles, op breakdown, memory
    assert len(at.get("download_button")) == 2  # YAML, summary
    primary(at).click().run()
    clean(at)
    assert charts(at) == 7  # 3 CDFs, time series, op breakdown, causes, memory
    assert len(at.get("download_button")) == 4
    assert "requests over" in " ".join(c.value for c in at.caption)


def test_scenario_training_widgets() -> None:
    at = page("scenario")
    at.radio(key="sc_kind").set_value("Training").run()
    clean(at)
    assert charts(at) == 2  # breakdown, memory per rank
    assert [m.label for m in at.metric][:2] == ["Step time", "Tokens/s"]


def test_scenario_training_context_parallel_widget() -> None:
    at = page("scenario")
    at.radio(key="sc_kind").set_value("Training").run()
    one = at.metric[1].value
    at.number_input(key="tr_cp").set_value(2).run()  # Mixtral on 64 GPUs: TP1 CP2 PP4 DP8, the same batch
    clean(at)
    assert at.metric[1].value != one
    at.number_input(key="tr_cp").set_value(3).run()  # 4,096 tokens do not split into 6 chunks: one message
    assert not at.exception
    assert len(at.error) == 1 and "2 x cp" in at.error[0].value


def test_scenario_edge_values() -> None:
    at = page("scenario")
    for key, lo in (("sc_rate", 0.001), ("sc_requests", 10), ("sc_in", 1), ("sc_out", 1), ("sc_max_batch", 1)):
        at.number_input(key=key).set_value(lo)
    at.run()
    clean(at)
    at = page("scenario")
    at.number_input(key="sc_rate").set_value(1e6).run()
    assert not at.exception
    assert any("Overloaded" in w.value for w in at.warning)


def test_scenario_infeasible_layout_is_a_message() -> None:
    at = page("scenario")
    at.number_input(key="sc_tp").set_value(3).run()  # 3 does not divide Mixtral's heads nor 8 GPUs
    assert not at.exception
    assert len(at.error) == 1
    assert "fix:" in at.error[0].value


@pytest.mark.parametrize(
    "name,data",
    [
        ("bad.yaml", b"model: [unclosed"),
        ("binary.yaml", b"\xff\xfe\x00garbage"),
        ("list.yaml", b"- 1\n- 2\n"),
        ("unknown-key.yaml", b"model: mixtral-8x7b\ncluster: dgx-h100\nlayot: {tp: 8}\n"),
        ("unknown-gpu.yaml", b"model: mixtral-8x7b\ngpu: Z9000\nworkload: {rate: 1}\n"),
    ],
)
def test_scenario_invalid_upload_is_one_message(name: str, data: bytes) -> None:
    at = page("scenario")
    at.radio(key="scenario_source").set_value("Upload a YAML").run()
    at.file_uploader(key="sc_upload").set_value((name, data, "application/yaml")).run()
    assert not at.exception
    assert len(at.error) == 1
    assert charts(at) == 0


def test_scenario_upload_example() -> None:
    at = page("scenario")
    at.radio(key="scenario_source").set_value("Upload a YAML").run()
    data = (EXAMPLES / "mixtral-8x7b-tp8.yaml").read_bytes()
    at.file_uploader(key="sc_upload").set_value(("mixtral-8x7b-tp8.yaml", data, "application/yaml")).run()
    clean(at)
    assert charts(at) == 3


def test_scenario_every_example_runs() -> None:
    at = page("scenario")
    at.radio(key="scenario_source").set_value("Example file").run()
    for kind in ("Serving", "Training"):
        at.radio(key="sc_ex_kind").set_value(kind).run()
        for name in at.selectbox(key="sc_example").options:
            at.selectbox(key="sc_example").set_value(name).run()
            clean(at)
            assert charts(at) >= 2, name


FIXED_LENGTHS = b"""name: fixed-lengths
model: mixtral-8x7b
cluster: dgx-h100
layout: {tp: 1, dp_attn: 8, ep: 8}
workload: {rate: 5, requests: 60, input: 512, output: 128}
"""


def test_scenario_fixed_length_prompts_run() -> None:
    """``input: 512`` (a fixed length, which the docs allow) has no mean: the page used to show an internal error."""
    at = page("scenario")
    at.radio(key="scenario_source").set_value("Upload a YAML").run()
    at.file_uploader(key="sc_upload").set_value(("fixed.yaml", FIXED_LENGTHS, "application/yaml")).run()
    clean(at)
    assert charts(at) == 3
    primary(at).click().run()  # the discrete-event simulation too
    clean(at)
    assert "requests over" in " ".join(c.value for c in at.caption)


def test_scenario_logic_runs_every_example_and_length_form() -> None:
    """The Scenario page's logic (`run_serving`, `run_training`) on every example and every length distribution."""
    import yaml

    from moesim.dashboard.logic import scenario as sl

    for kind in ("serving", "training"):
        for name, path in sl.examples(kind).items():
            mapping = sl.read_example(path)
            if kind == "training":
                assert sl.run_training(mapping, str(path.parent))["summary"]["step_s"] > 0, name
            else:
                res = sl.run_serving(mapping, "analytical", str(path.parent))
                assert res["breakdown"] and res["breakdown_at"]["context"] >= 1, name
    base = yaml.safe_load(FIXED_LENGTHS)
    lengths = [
        (512, 128),
        ({"dist": "uniform", "low": 100, "high": 300}, {"dist": "fixed", "value": 64}),
        ({"dist": "empirical", "values": [100, 900], "weights": [1, 3]}, 50),
    ]
    for inp, outp in lengths:
        mapping = base | {"workload": base["workload"] | {"input": inp, "output": outp}}
        for engine in ("analytical", "des"):
            res = sl.run_serving(mapping, engine, str(ROOT))
            assert res["breakdown_at"]["context"] > 1, (inp, outp, engine)
    res = sl.run_serving(base, "analytical", str(ROOT))
    assert res["breakdown_at"]["context"] == 512 + 128 // 2


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"[" * 40_000, "nested more than"),
        ("model: mixtral-8x7b\n".encode("utf-16"), "UTF-16"),
        (b"\x00\x01binary", "not UTF-8 text"),
        (b"&a [*a]", "refers to itself"),
    ],
)
def test_uploaded_yaml_errors_are_one_message(data: bytes, expected: str) -> None:
    """The Scenario and Sweep pages' YAML readers (`model.inputs.parse_yaml`): one `MoesimError`, no RecursionError."""
    from moesim.dashboard.logic import scenario as sl
    from moesim.model.errors import MoesimError

    with pytest.raises(MoesimError, match=expected):
        sl.parse_yaml(data, "up.yaml")
    if data.isascii() and b"\x00" not in data:  # the sweep page's text area holds text
        with pytest.raises(MoesimError, match=expected):
            sw.parse_spec(data.decode())


# --- Sweep explorer ---------------------------------------------------------------------------------------------


def test_sweeps_run_small_sweep_then_explore(tmp_path: Path) -> None:
    at = page("sweeps")
    clean(at)
    assert "96 points" in at.markdown[0].value
    primary(at).click().run()
    clean(at)
    assert charts(at) == 3  # heatmap, Pareto, throughput-interactivity frontier
    points = at.dataframe[-1].value
    assert len(points) == (points["status"] == "ok").sum() > 0
    # narrowing a filter narrows the rows
    at.multiselect(key="sw_f_gpu").set_value(["H200-SXM"]).run()
    clean(at)
    assert set(at.dataframe[-1].value["gpu"]) == {"H200-SXM"}
    # a metric where lower is better pivots to the lowest value per cell
    at.selectbox(key="sw_metric").set_value("tpot_p50_s").run()
    clean(at)
    at.button(key="sw_open").click().run()
    clean(at)
    assert at.title[0].value == "Scenario"


def test_sweeps_filters_to_nothing_is_a_warning() -> None:
    at = page("sweeps")
    primary(at).click().run()
    at.multiselect(key="sw_f_gpu").set_value([]).run()
    assert not at.exception
    assert "No point passes" in at.warning[0].value


def test_sweeps_load_folder(tmp_path: Path) -> None:
    df, _, folder = sw.run_small_sweep(sw.SMALL_SWEEP.replace("num: 4", "num: 1"), tmp_path / "run")
    at = page("sweeps")
    at.radio(key="sw_source").set_value("A sweep folder").run()
    at.text_input(key="sw_folder").input(folder).run()
    clean(at)
    assert len(at.dataframe[-1].value) == (df["status"] == "ok").sum()
    assert not at.button(key="sw_open").disabled  # the manifest is there


@pytest.mark.parametrize("what", ["missing", "empty", "corrupt"])
def test_sweeps_bad_folder_is_one_message(tmp_path: Path, what: str) -> None:
    folder = tmp_path / "f"
    if what != "missing":
        folder.mkdir()
    if what == "corrupt":
        (folder / "results.parquet").write_bytes(b"PAR1 not really")
    at = page("sweeps")
    at.radio(key="sw_source").set_value("A sweep folder").run()
    at.text_input(key="sw_folder").input(str(folder)).run()
    assert not at.exception
    assert len(at.error) == 1


@pytest.mark.parametrize(
    "name,data",
    [
        ("results.parquet", b"garbage"),
        ("results.csv", b"a,b\n1,2\n"),
        ("results.csv", b"\xff\xfe\x00\x01"),
    ],
)
def test_sweeps_invalid_upload_is_one_message(name: str, data: bytes) -> None:
    at = page("sweeps")
    at.radio(key="sw_source").set_value("Upload results").run()
    at.file_uploader(key="sw_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception
    assert len(at.error) == 1


def test_sweeps_upload_results(tmp_path: Path) -> None:
    df, _, _ = sw.run_small_sweep(sw.SMALL_SWEEP.replace("num: 4", "num: 1"), tmp_path / "run")
    buf = tmp_path / "results.parquet"
    df.to_parquet(buf)
    at = page("sweeps")
    at.radio(key="sw_source").set_value("Upload results").run()
    at.file_uploader(key="sw_upload").set_value(("results.parquet", buf.read_bytes(), "application/octet-stream"))
    at.run()
    clean(at)
    assert charts(at) == 3
    assert at.button(key="sw_open").disabled  # no manifest with an upload


def test_pivot_takes_the_best_per_cell() -> None:
    df = pd.DataFrame(
        {"gpu": ["a", "a", "b"], "gpus": [1, 1, 2], "tpot_p50_s": [0.2, 0.1, 0.3], "throughput_tok_s": [5, 7, 1]}
    )
    z, xs, ys = sw.pivot(df, "gpu", "gpus", "tpot_p50_s")
    assert xs == ["a", "b"] and ys == [1, 2]
    assert z[0, 0] == 0.1 and z[1, 1] == 0.3 and z[0, 1] != z[0, 1]  # lowest latency; NaN for the empty cell
    z, _, _ = sw.pivot(df, "gpu", "gpus", "throughput_tok_s")
    assert z[0, 0] == 7  # highest throughput


def test_sweep_yaml_errors_are_messages() -> None:
    at = page("sweeps")
    at.text_area(key="sw_yaml").input("name: x\nbase: [").run()
    assert not at.exception and len(at.error) == 1
    at.text_area(key="sw_yaml").input(sw.SMALL_SWEEP.replace("H200-SXM", "H900")).run()
    assert not at.exception and len(at.error) == 1 and "H900" in at.error[0].value


# --- moesim dashboard -------------------------------------------------------------------------------------------


def _moesim(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moesim.dashboard.cli", *args], capture_output=True, text=True, **kw)


def test_server_warm_up_fills_the_packages_caches() -> None:
    from moesim.dashboard.server import warm
    from moesim.sim.sweeps import sweep_eval

    sweep_eval._CACHE.clear()
    assert warm() > 0
    assert sum(k.startswith("analytical:") for k in sweep_eval._CACHE) == 8  # the CAP overview's defaults


def test_dashboard_port_in_use_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _moesim("dashboard", "--port", str(port))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "not free" in r.stderr
    assert "Traceback" not in r.stderr


def test_dashboard_bad_port_is_one_line() -> None:
    r = _moesim("dashboard", "--port", "70000")
    assert r.returncode == 1 and "not a TCP port" in r.stderr and "Traceback" not in r.stderr


def test_dashboard_serves_on_loopback() -> None:
    port = free_port()
    with running_dashboard(port) as info:
        assert info["url"] == f"http://127.0.0.1:{port}" and info["port"] == port
        with urllib.request.urlopen(info["url"] + "/_stcore/health", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(info["url"] + "/", timeout=10) as r:
            assert b"<html" in r.read().lower()
        t0 = time.time()
    assert time.time() - t0 < 30
