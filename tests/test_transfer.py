"""Transfer of measured kernel times to another GPU (`profiling.transfer`): the derated H100 -> H200 transfer, where it
applies, the uncertainty band a transferred time carries, and where the band is shown (roofline, simulate --json,
the dashboard's caption).

Tables: the committed H100 SXM quick-bf16 run (GEMMs, grouped GEMMs, copies), calibrated in about a second.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from moesim.dashboard.cli import main
from moesim.dashboard.logic.scenario import provenance_caption
from moesim.model import make_cluster
from moesim.model.hardware import get_gpu
from moesim.model.ops import Op
from moesim.profiling import transfer
from moesim.profiling.calibrate import calibrate
from moesim.profiling.costmodel import CalibratedCostModel, Calibration, load, save, source_class
from moesim.profiling.opshapes import row_op
from moesim.sim.serving.serve import run

DATA = Path(__file__).resolve().parent.parent / "profiling" / "data" / "h100-sxm"
BANDS = {"gemm/bf16": {"p50": 0.1, "p90": 0.3}, "*": {"p50": 0.2, "p90": 0.5}}


@cache
def _cal() -> Calibration:
    return calibrate([DATA / "quick-bf16"], holdout=0.0, kinds=["gemm", "grouped_gemm", "memcpy"])


def _model(bands: dict | None = None) -> CalibratedCostModel:
    cal = _cal()
    return CalibratedCostModel(replace(cal, transfer_bands=BANDS if bands is None else bands))


def _on(key: str):
    return make_cluster(get_gpu(key), num_gpus=1)


def _gemm(m: int) -> Op:
    return row_op("gemm", {"m": m, "n": 8192, "k": 8192, "dtype": "bf16"})


def test_a_transferred_op_carries_a_finite_band_and_a_measured_op_none():
    model = _model()
    there, here = model.op_time(_gemm(64), _on("H200-SXM")), model.op_time(_gemm(64), _on("H100-SXM"))
    assert source_class(there.source) == "transferred" and there.band == (0.1, 0.3)  # its own family's band
    assert source_class(here.source) == "measured" and here.band is None
    copy = row_op("memcpy", {"bytes": 2**28, "dtype": "fp32"})
    t = model.op_time(copy, _on("H200-SXM"))
    assert t.band == (0.2, 0.5) and all(math.isfinite(b) for b in t.band)  # no memcpy band: the pooled one


def test_the_shipped_bands_are_measured_finite_and_ordered():
    assert {"*", "gemm/bf16", "gemm/fp8", "grouped_gemm/bf16"} <= set(transfer.TRANSFER_BANDS)
    for b in transfer.TRANSFER_BANDS.values():
        assert 0 < b["p50"] <= b["p90"] < 5 and b["rows"] > 100
    t = CalibratedCostModel(_cal()).op_time(_gemm(64), _on("H200-SXM"))  # a new calibration stores them
    assert t.band == (transfer.TRANSFER_BANDS["gemm/bf16"]["p50"], transfer.TRANSFER_BANDS["gemm/bf16"]["p90"])


def test_derated_transfer_gains_the_achieved_bandwidth_ratio_on_the_explained_time_only():
    h100, h200 = get_gpu("H100-SXM"), get_gpu("H200-SXM")
    gain = transfer.ACHIEVED_BW["H200-SXM"][0] / transfer.ACHIEVED_BW["H100-SXM"][0]
    assert 1.2 < gain < h200.bandwidth() / h100.bandwidth()  # less than the datasheet's 1.43
    op = Op("copy", "memcpy", "", 1, 0.0, 0.0, 0.0, 3.02e9, dtype="fp32")  # 3.02 GB: 1 ms at the achieved rate
    t, share = transfer.derated_seconds(op, 1e-3, h100, h200)
    assert share == pytest.approx(1.0) and t == pytest.approx(1e-3 / gain)  # streams at the achieved rate
    t, share = transfer.derated_seconds(op, 2e-3, h100, h200)  # half its time is not the stream: unchanged
    assert share == pytest.approx(0.5) and t == pytest.approx(1e-3 / gain + 1e-3)
    flops = Op("mm", "gemm", "", 1, 1e15, 1e6, 0.0, 0.0, dtype="bf16")  # compute-bound: the same die, no gain
    assert transfer.derated_seconds(flops, 1.2, h100, h200)[0] == pytest.approx(1.2)


def test_derating_applies_only_where_it_is_defined():
    h100, h200, b200 = get_gpu("H100-SXM"), get_gpu("H200-SXM"), get_gpu("B200")
    assert transfer.derating_applies(_gemm(8), h100, h200) is None
    assert "collective" in transfer.derating_applies(Op("ar", "all_reduce", "", 1, 0, 0, 0, 0), h100, h200)
    assert "different compute die" in transfer.derating_applies(_gemm(8), h100, b200)
    assert "no achieved-bandwidth figure for H800" in transfer.derating_applies(_gemm(8), h100, get_gpu("H800"))
    model = _model()
    derated = model.op_time(_gemm(1), _on("H200-SXM"))
    assert "derated: achieved bandwidth x1.29" in derated.source
    carried = model.op_time(_gemm(1), _on("RTX-4090"))  # another die without figures: the ratio is carried
    assert "ratio carried" in carried.source and carried.band == (0.1, 0.3)
    measured = model.op_time(_gemm(1), _on("H100-SXM")).seconds
    assert measured / 1.43 < derated.seconds < measured  # memory-bound, but less than the datasheet gain


def test_across_dies_the_achievable_model_carries_the_measured_time():
    """H100 tables timing an A100: the measured time scales by the achievable model's A100 / H100 time (both GPUs
    have their own published figures), not by the datasheet rooflines; a GPU without its own figures carries the
    ratio as before."""
    from moesim.model.achievable import AchievableCostModel

    model, ach = _model(), AchievableCostModel()
    for m in (1, 64, 4096):
        op = _gemm(m)
        here, there = model.op_time(op, _on("H100-SXM")), model.op_time(op, _on("A100-SXM-80GB"))
        scale = ach.op_time(op, _on("A100-SXM-80GB")).seconds / ach.op_time(op, _on("H100-SXM")).seconds
        assert f"achievable ratio x{scale:.2f} A100-SXM-80GB/H100-SXM" in there.source
        assert there.seconds == pytest.approx(here.seconds * scale, rel=1e-9)
        assert there.band == (0.1, 0.3)  # still a transfer, with its band
        roof = model._roof
        # the A100's achieved bandwidth is 86% of its datasheet's, the H100's 90%: memory-bound shapes come out
        # slower than the rooflines' ratio would have them
        if m == 1:
            ratio = roof.op_time(op, _on("A100-SXM-80GB")).seconds / roof.op_time(op, _on("H100-SXM")).seconds
            assert scale > ratio
    carried = model.op_time(_gemm(1), _on("RTX-4090"))  # no achievable figures of its own: the ratio is carried
    assert "ratio carried" in carried.source


def test_the_h100_achieved_bandwidth_is_the_committed_copy_measurement():
    df = pd.read_parquet(DATA / "full-bf16" / "memcpy.parquet")
    measured = float((2 * df["bytes"] / df["time_s"]).max())  # read + written
    assert transfer.ACHIEVED_BW["H100-SXM"][0] == pytest.approx(measured, rel=0.01)


def test_the_calibration_file_keeps_the_bands(tmp_path):
    cal = replace(_cal(), transfer_bands={"gemm/bf16": {"p50": 0.07, "p90": 0.21, "rows": 9, "basis": "test"}})
    again = load(save(cal, tmp_path / "cal.parquet"))
    assert again.transfer_bands == cal.transfer_bands
    t = CalibratedCostModel(again).op_time(_gemm(64), _on("H200-SXM"))
    assert t.band == (0.07, 0.21)
    assert transfer.band_for(again.transfer_bands, "grouped_gemm", "bf16") is None  # no family, no pooled band


def test_step_band_weights_ops_by_time_and_ignores_measured_ones():
    band = transfer.step_band([3.0, 1.0], [None, (0.2, 0.4)])
    assert band == pytest.approx({"p50": 0.05, "p90": 0.1, "transferred_share": 0.25})
    assert transfer.band_text(transfer.step_band([1.0], [None])) == ""
    errs = transfer.bands_from_errors({"gemm/bf16": [0.1, 0.2, 0.3], "gemm/fp8": [0.5]})
    assert errs["gemm/*"]["rows"] == 4 and errs["*"]["p50"] == pytest.approx(0.25)


def test_roofline_shows_the_band_of_a_transferred_step(tmp_path, capsys):
    path = save(replace(_cal(), transfer_bands=BANDS), tmp_path / "cal.parquet")
    args = ["roofline", "mixtral-8x7b", "--gpu", "H200-SXM", "--tp", "8", "--batch", "8", "--cost-model", str(path)]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    gemms = [op for op in out["ops"] if op["source"].startswith("transfer:gemm")]
    assert gemms and all(op["band_p50"] == 0.1 and op["band_p90"] == 0.3 for op in gemms)
    band = out["transfer_band"]
    assert 0 < band["transferred_share"] <= 1 and 0 < band["p50"] <= 0.2 and band["p50"] < band["p90"]
    assert main(args) == 0
    assert "expected error of the step" in capsys.readouterr().out
    assert main([*args[:-2], "--json"]) == 0  # the roofline: nothing transferred
    assert json.loads(capsys.readouterr().out)["transfer_band"]["transferred_share"] == 0


def test_simulate_provenance_and_the_dashboard_caption_carry_the_band():
    scenario = {
        "model": "qwen1.5-moe-a2.7b",
        "gpu": "H200-SXM",
        "layout": {"tp": 1},
        "engine": {"kind": "vllm", "moe_kernel": "triton"},
        "workload": {"arrival": "poisson", "rate": 2, "requests": 20, "input": {"dist": "fixed", "value": 256},
                     "output": {"dist": "fixed", "value": 16}},
    }  # fmt: skip
    prov = run(scenario, "analytical", cost_model=_model()).summary["cost_provenance"]
    band = prov["decode"]["band"]
    assert band["transferred_share"] > 0.1 and 0 < band["p50"] < band["p90"]
    assert "expected error of the step" in provenance_caption(prov)
    assert provenance_caption(None) == ""


def test_a_transfer_beyond_the_measured_range_carries_the_wider_beyond_band():
    """A GEMM with more rows than the table measured is answered along the table's edge; transferred, it takes the
    ``beyond:`` band (the extrapolation's error too), and falls back to the in-range band where a calibration has
    none."""
    bands = {**BANDS, "beyond:gemm/bf16": {"p50": 0.4, "p90": 1.6}}
    model = _model(bands)
    m_max = int(2 ** next(f for f in model.calibration.fits if f.kind == "gemm").hi[0])
    far = model.op_time(_gemm(8 * m_max), _on("H200-SXM"))
    assert far.source.startswith(("edge ", "clamped ")) and far.band == (0.4, 1.6)
    assert model.op_time(_gemm(64), _on("H200-SXM")).band == (0.1, 0.3)  # inside the range: the in-range band
    assert _model().op_time(_gemm(8 * m_max), _on("H200-SXM")).band == (0.1, 0.3)  # no beyond band: in-range one
    shipped = transfer.TRANSFER_BANDS
    assert (
        shipped["beyond:*"]["p90"] > shipped["*"]["p90"]
        and shipped["beyond:gemm/bf16"]["p50"] > shipped["gemm/bf16"]["p50"]
    )
