"""Numbers with units: `dashboard.format`'s helpers, and every page's text (AppTest, default inputs) free of raw
figures (a float's repr, an exponent, ``None``, ``nan``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from moesim.dashboard.format import (
    MISSING,
    OVERLOADED,
    fmt_by_key,
    fmt_bytes,
    fmt_count,
    fmt_number,
    fmt_pct,
    fmt_rate,
    fmt_seconds,
    fmt_si,
    fmt_usd,
)
from moesim.dashboard.ui import PAGES, fmt, smfu_note, smfu_value

APP = str(Path(__file__).parents[1] / "dashboard/app.py")
#: A figure printed raw: a float's repr (5+ decimals), an exponent, Python's None, a NaN, an infinity.
RAW = re.compile(r"\b\d+\.\d{5,}\b|\b\d(?:\.\d+)?e[+-]?\d+\b|\bNone\b|\bnan\b|\bNaN\b|\binf\b")


@pytest.mark.parametrize(
    "value,expected",
    [
        (8.22e-6, "8.22 µs"),
        (10.079368399, "10.1 s"),
        (0.0123, "12.3 ms"),
        (0.05, "50.0 ms"),
        (90.0, "90.0 s"),
        (900.0, "15.0 min"),
        (7200.0, "2.00 h"),
        (math.inf, OVERLOADED),
        (None, MISSING),
        (math.nan, MISSING),
    ],
)
def test_fmt_seconds(value, expected) -> None:
    assert fmt_seconds(value) == expected


def test_fmt_bytes_rates_counts_pct_usd() -> None:
    assert fmt_bytes(62 * 2**30) == "62.0 GiB"
    assert fmt_bytes(48e9) == "44.7 GiB"
    assert fmt_bytes(512) == "512 B"
    assert fmt_rate(7.5e9, "B/s") == "7.50 GB/s"  # not "7.5B B/s"
    assert fmt_rate(989e12, "FLOP/s") == "989 TFLOP/s"
    assert fmt_rate(3993.4, "tok/s") == "3,993 tok/s"
    assert fmt_rate(3.4, "req/s") == "3.40 req/s"
    assert fmt_count(1.66e4) == "16,600"  # not "1.66e+4"
    assert fmt_count(3.2e8) == "320 M"
    assert fmt_pct(0.781) == "78.1%"
    assert fmt_pct(-0.05, signed=True) == "-5.0%" and fmt_pct(0.05, signed=True) == "+5.0%"
    assert fmt_usd(0.1234) == "$0.123" and fmt_usd(12345.6) == "$12,346"
    assert fmt_si(3e-6, "s") == "3.00 µs"


def test_fmt_number_never_prints_a_repr_or_an_exponent() -> None:
    assert fmt_number(10.079368399) == "10.1"
    assert fmt_number(1.66e4) == "16,600"
    assert fmt_number(2.5e9) == "2.50 G"
    assert fmt_number(8.22e-6) == "8.22×10⁻⁶"
    for v in (1e-12, 3.3e-5, 0.5, 1.0, 123.456, 1e5, 7.5e9, 1e20, -4.2e-7, None, math.nan, math.inf):
        assert not RAW.search(fmt_number(v)), v


def test_fmt_by_key_reads_the_unit_from_the_key() -> None:
    assert fmt_by_key("ttft_p99_s", 0.0315) == "31.5 ms"
    assert fmt_by_key("throughput_tok_s", 3993.4) == "3,993 tok/s"
    assert fmt_by_key("usd_per_mtok", 1.94) == "$1.94"
    assert fmt_by_key("s_mfu", 0.038) == "3.8%"
    assert fmt_by_key("mem_per_gpu_gib", 62.0) == "62.0 GiB"
    assert fmt_by_key("weight_bytes", None) == MISSING
    assert fmt_by_key("layout", "TP8") == "TP8"


def test_ui_fmt_delegates_and_s_mfu_above_100_percent_is_flagged_in_roofline_mode() -> None:
    assert fmt(0.0059, "s") == "5.90 ms" and fmt(0.5, "%") == "50.0%" and fmt(None) == MISSING
    assert smfu_note(1.05, roofline=True) and "artefact" in smfu_note(1.05, roofline=True)
    assert smfu_value(1.05, roofline=True).endswith("†")
    assert not smfu_note(1.05, roofline=False) and not smfu_note(0.4, roofline=True)


def page_text(at: AppTest) -> list[str]:
    """What a reader sees as text: titles, markdown, captions, metrics (labels, values, deltas) and messages
    (code blocks and inputs excepted: they show what the user typed)."""
    out: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "success", "error"):
        out += [str(e.value) for e in at.get(kind)]
    for m in at.metric:
        out += [str(m.label), str(m.value), str(m.delta or "")]
    return out


@pytest.mark.parametrize("script,title", [(p[0], p[1]) for p in PAGES])
def test_every_page_prints_its_figures_with_units(script: str, title: str) -> None:
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page(script)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    raw = [t for t in page_text(at) if RAW.search(t)]
    assert raw == [], f"{title}: raw figures in {raw}"


def test_scenario_metrics_carry_units_and_the_roofline_badge() -> None:
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("views/scenario.py")
    at.run()
    values = {m.label: m.value for m in at.metric}
    assert values["TTFT p99"].endswith(("ms", "s")) and values["Output"].endswith("tok/s")
    assert values["S-MFU (roofline)"].endswith(("%", "†"))
    assert any("badge[" in m.value and "roofline (lower bound)" in m.value for m in at.markdown)  # st.badge


def test_offloaded_experts_are_not_drawn_on_the_gpu() -> None:
    """The L40S offload example: the GPU row stays within the GPU's 48 GB; the offloaded experts have their row."""
    from moesim.dashboard.logic import scenario as sl

    ex = sl.examples("serving").get("qwen3-30b-a3b-l40s-offload")
    if ex is None:
        pytest.skip("examples/ not present")
    res = sl.run_analytical(sl.read_example(ex), str(ex.parent))
    mem = res["memory"]
    gpu_row = sum(mem["mixed"].values())
    assert gpu_row <= res["gpu_bytes"] * 1.0001
    host = mem["mixed" + sl.HOST_SUFFIX]
    assert host["routed experts offloaded to host"] > 10 * 2**30  # most of Qwen3-30B's 57 GiB of experts


def test_latency_axis_stops_at_the_cap_and_says_overloaded() -> None:
    """An overloaded run's percentiles (here e2e p99 of 6,296 s, and an infinite one) are drawn at 100 x the SLO,
    labelled "overloaded", instead of stretching the axis to billions of seconds."""
    from moesim.dashboard.logic import scenario as sl
    from moesim.dashboard.logic.charts import clip_seconds

    assert clip_seconds([0.5, 6296.0, math.inf], 100.0) == (
        [0.5, 100.0, 100.0],
        ["500 ms", *["overloaded (> 100 s)"] * 2],
    )
    summary = {f"{k}_{q}_s": 0.01 for k in ("ttft", "tpot", "e2e") for q in ("p50", "p90", "p99")}
    summary |= {"e2e_p99_s": 6296.0, "ttft_p99_s": math.inf}
    slo = {"ttft_s": 1.0, "tpot_s": 0.05}
    fig = sl.percentile_chart(summary, slo)
    top = max(max(t.y) for t in fig.data)
    assert top == sl.latency_cap_s(slo) == 100.0
    assert "overloaded" in fig.layout.title.text
    assert sum("overloaded" in s for t in fig.data for s in t.text) == 2
