"""The figures `sim.fidelity` states next to each prediction are those of benchmarks/RESULTS.md, and each kind of
prediction names its own reference (or none)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moesim.sim.fidelity import (
    A100_STAGES,
    GPU_PAIRS,
    L40S_FIRST_STAGE,
    SERVING_DENSE,
    SERVING_DENSE_ENGINE_KERNELS,
    SERVING_MOE_EP,
    SERVING_MOE_TP,
    TRAINING,
    check_line,
    cost_model_class,
    serving_check,
    training_check,
)
from moesim.sim.serving.serve import run

RESULTS = (Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md").read_text()


def _section(n: int) -> str:
    m = re.search(rf"^## {n}\. .*?(?=^## \d+\. |\Z)", RESULTS, re.S | re.M)
    assert m, f"section {n}"
    return m.group(0)


@pytest.mark.parametrize("cls", ["achievable", "calibrated", "roofline"])
def test_dense_serving_figures_are_section_12s(cls: str) -> None:
    row = next(ln for ln in _section(12).splitlines() if ln.startswith(f"| {cls}: fit-engine leave-model-out CV"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    for metric, cell in zip(("e2e", "ttft", "itl"), cells[2:5], strict=True):
        med, p90 = (float(x.rstrip("%")) / 100 for x in cell.split(" / "))
        assert SERVING_DENSE[cls][metric] == pytest.approx((med, p90), abs=5e-4), (cls, metric)


def test_dense_engine_kernel_figures_are_section_29s() -> None:
    """The calibrated model with vLLM's own H100 GEMMs on the dense runs: section 29's dense table over the 38 runs
    and its note's signed medians over the H100 runs, and the dense calibrated note quotes them."""
    sec = _section(29)
    label = "| calibrated: our H100 tables + AIConfigurator's vLLM kernels | 38 of 41 |"
    row = next(ln for ln in sec.splitlines() if ln.startswith(label))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    got = SERVING_DENSE_ENGINE_KERNELS
    for metric, cell in zip(("e2e", "ttft", "itl"), cells[2:5], strict=True):
        med, p90 = (float(x.rstrip("%")) / 100 for x in cell.split(" (")[0].split(" / "))
        assert got["abs_error"][metric] == pytest.approx((med, p90), abs=5e-4), metric
    m = re.search(
        r"E2E ([+-][\d.]+)% / ([+-][\d.]+)%, TTFT ([+-][\d.]+)% / ([+-][\d.]+)%, ITL ([+-][\d.]+)% / ([+-][\d.]+)%", sec
    )
    assert m, "section 29's H100-only signed medians"
    ours_then_engine = [float(x) / 100 for x in m.groups()]
    assert ours_then_engine[1::2] == pytest.approx([got["h100_signed"][k] for k in ("e2e", "ttft", "itl")], abs=5e-4)
    note = serving_check(False, 1, "calibrated:x")["note"]
    assert "vLLM's own H100 GEMMs" in note and f"{got['abs_error']['e2e'][0]:.0%}" in note and "section 29" in note
    assert "vLLM" not in serving_check(False, 1, "achievable")["note"]


@pytest.mark.parametrize("cls", ["achievable", "roofline"])
def test_moe_serving_figures_are_section_28s(cls: str) -> None:
    ratios = [float(r.split("|")[6]) for r in _section(28).splitlines() if r.startswith("| ") and f"| {cls} |" in r]
    assert len(ratios) == 5
    assert SERVING_MOE_EP[cls] == (min(ratios), max(ratios))


@pytest.mark.parametrize(
    ("cls", "label"),
    [
        ("achievable", "achievable"),
        ("calibrated", "calibrated: our H100 tables + AIConfigurator's vLLM kernels"),
        ("roofline", "roofline"),
    ],
)
def test_moe_tensor_parallel_figures_are_section_29s(cls: str, label: str) -> None:
    row = next(ln for ln in _section(29).splitlines() if ln.startswith(f"| {label} | analytical |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    for metric, cell in zip(("e2e", "ttft", "itl"), cells[3:6], strict=True):
        med, p90 = (float(x.rstrip("%")) / 100 for x in cell.split(" (")[0].split(" / "))
        assert SERVING_MOE_TP[cls][metric] == pytest.approx((med, p90), abs=5e-4), (cls, metric)


def test_training_figures_are_section_8s() -> None:
    s = _section(8)
    m = re.search(r"Within \+-15%: (\d+) of (\d+) runs; median ratio (\d+\.\d+)", s)
    assert m and (int(m.group(1)), int(m.group(2)), float(m.group(3))) == (
        TRAINING["within_15pct"],
        TRAINING["runs"],
        TRAINING["median"],
    )
    table = s.split("| run | source | reported |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    ratios = [float(re.match(r"\d+\.\d+", row.split("|")[5].strip()).group(0)) for row in table]
    assert len(ratios) == TRAINING["runs"]
    assert (min(ratios), max(ratios)) == (TRAINING["lowest"], TRAINING["highest"])
    done, total = TRAINING["pairs"].split("/")
    assert f"{done} of {total} pairs ranked as reported" in s
    w = re.search(
        r"median ratio (\d+\.\d+) for the runs below the median work per layer and micro-batch \((\d+\.\d+) ms\), "
        r"(\d+\.\d+) for the rest",
        s,
    )
    assert w and (float(w.group(1)), float(w.group(2)), float(w.group(3))) == (
        TRAINING["ratio_below"],
        TRAINING["work_median_ms"],
        TRAINING["ratio_above"],
    )


def test_a_training_check_says_which_work_group_it_is_in() -> None:
    below = training_check("calibrated:full-bf16", 6.1)
    above = training_check("calibrated:full-bf16", 48.5)
    assert below["work_group"] == "below" and above["work_group"] == "above"
    assert f"median {TRAINING['ratio_below']:.2f}x" in below["note"]
    assert f"median {TRAINING['ratio_above']:.2f}x" in above["note"]
    assert "work_group" not in training_check("calibrated:full-bf16")
    assert "work_group" not in training_check("calibrated:full-bf16", float("nan"))
    assert training_check("roofline", 6.1)["reference"] is None


def test_each_kind_names_its_reference() -> None:
    assert cost_model_class(None) == "roofline" and cost_model_class("calibrated:x") == "calibrated"
    assert cost_model_class("achievable") == "achievable"
    dense = serving_check(False, 1, "achievable")
    assert dense["section"] == 12 and dense["abs_error"]["itl"] == list(SERVING_DENSE["achievable"]["itl"])
    moe = serving_check(True, 32, "roofline")
    assert moe["section"] == 28 and moe["predicted_over_measured"] == list(SERVING_MOE_EP["roofline"])
    unchecked = serving_check(True, 8, "calibrated:h100")
    assert unchecked["reference"] is None and check_line(unchecked).startswith("Not checked")
    tp = serving_check(True, 1, "achievable")
    assert tp["section"] == 29 and tp["abs_error"]["itl"] == list(SERVING_MOE_TP["achievable"]["itl"])
    assert "section 29" in check_line(tp)
    assert training_check("calibrated:full-bf16")["median"] == TRAINING["median"]
    assert training_check("roofline")["reference"] is None
    assert "section 12" in check_line(dense) and "section 28" in check_line(moe)


def test_simulate_summary_says_how_far_off() -> None:
    sc = {
        "model": "mixtral-8x7b",
        "cluster": "dgx-h100",
        "layout": {"tp": 1, "dp_attn": 8, "ep": 8},
        "workload": {"rate": 2, "requests": 20, "input": 128, "output": 16},
        "cost_model": "achievable",
    }
    s = run(sc, "analytical").summary
    assert s["checked_against"]["section"] == 28 and s["checked_against"]["cost_model"] == "achievable"


@pytest.mark.parametrize(
    ("cls", "label"),
    [("achievable", "achievable"), ("calibrated", "calibrated (H100 tables)"), ("roofline", "roofline")],
)
def test_a100_stage_figures_are_section_33s(cls: str, label: str) -> None:
    row = next(ln for ln in _section(33).splitlines() if ln.startswith(f"| {label} | A100-SXM-80GB | all |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    st = A100_STAGES[cls]
    assert (st["first"], st["last"]) == pytest.approx(
        (float(cells[4].rstrip("%")) / 100, float(cells[5].rstrip("%")) / 100)
    )
    assert st["rise"] == float(cells[7].split(" (")[0])
    note = serving_check(False, 1, cls if cls != "calibrated" else "calibrated:h100", "A100-SXM-80GB")
    assert "section 33" in note["gpu_check"]["note"] and f"{st['rise']:.2f}" in note["gpu_check"]["note"]


@pytest.mark.parametrize(
    ("cls", "label"),
    [("achievable", "achievable"), ("roofline", "roofline"), ("calibrated", "calibrated (H100 tables)")],
)
def test_l40s_stage_figures_are_section_33s(cls: str, label: str) -> None:
    row = next(ln for ln in _section(33).splitlines() if ln.startswith(f"| {label} | L40S | all |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert L40S_FIRST_STAGE[cls] == pytest.approx(float(cells[4].rstrip("%")) / 100)
    note = serving_check(False, 1, cls if cls != "calibrated" else "calibrated:h100", "L40S")
    assert "section 33" in note["gpu_check"]["note"]
    assert ("section 34" in note["gpu_check"]["note"]) == (cls != "roofline")


@pytest.mark.parametrize("cls", ["achievable", "roofline"])
def test_gpu_pair_figures_are_section_32s(cls: str) -> None:
    rows = [ln for ln in _section(32).splitlines() if re.match(rf"^\| [\w.-]+ TP\d \| {cls} \| [\d.]+ \|", ln)]
    pairs = [(float(r.split("|")[3]), float(r.split("|")[4])) for r in rows]
    g = GPU_PAIRS[cls]
    assert len(pairs) == g["pairs"] == 7
    assert g["measured"] == (min(m for m, _ in pairs), max(m for m, _ in pairs))
    assert g["predicted"] == (min(p for _, p in pairs), max(p for _, p in pairs))
    assert g["worst"] == pytest.approx(max(abs(p / m - 1) for m, p in pairs), abs=5e-4)


def test_a_serving_check_says_what_its_gpu_was_checked_on() -> None:
    """The serving references ran on H100: an A100 prediction cites section 32's pairs (with the achievable and the
    roofline model), another GPU says no real run checked it; the H100 adds nothing; the line carries it."""
    assert "gpu_check" not in serving_check(False, 1, "achievable", "H100-SXM")
    a100 = serving_check(False, 1, "achievable", "A100-SXM-80GB")
    lo, hi = GPU_PAIRS["achievable"]["predicted"]
    assert a100["gpu_check"]["section"] == 32 and f"{lo:.2f}-{hi:.2f}" in a100["gpu_check"]["note"]
    assert "On A100-SXM-80GB:" in check_line(a100) and "section 32" in check_line(a100)
    assert serving_check(False, 1, "calibrated:h100", "A100-SXM-80GB")["gpu_check"]["section"] == 12
    h200 = serving_check(True, 8, "achievable", "H200-SXM")
    assert h200["gpu_check"]["section"] is None and "no real run on H200-SXM" in check_line(h200)
    sc = {
        "model": "llama-3.1-8b",
        "cluster": "dgx-a100",
        "layout": {"tp": 1},
        "workload": {"rate": 2, "requests": 20, "input": 128, "output": 16},
        "cost_model": "achievable",
    }
    s = run(sc, "analytical").summary
    assert s["checked_against"]["section"] == 12 and s["checked_against"]["gpu_check"]["section"] == 32
