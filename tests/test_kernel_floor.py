"""A kernel no table covers takes at least the shortest kernel the calibration timed back to back on that GPU
(`CalibratedCostModel.kernel_floor`): the roofline's 0.02-1 us for a tiny norm or KV-cache write is below what any
kernel takes when a step replays them one after another. Collectives, and calibrations with no back-to-back table,
keep the bare roofline; another GPU of the vendor takes the measured GPU's floor."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from moesim.model.hardware import get_gpu, local_cpu, make_cluster
from moesim.model.op_record import collective, memory_op
from moesim.model.roofline import RooflineCostModel
from moesim.profiling.calibrate import CalibratedCostModel, calibrate
from moesim.profiling.costmodel import ENGINE_GEMM_IMPLS, Calibration

RUN = Path(__file__).resolve().parents[1] / "profiling" / "data" / "h100-sxm" / "quick-bf16"


@pytest.fixture(scope="module")
def ours() -> Calibration:
    return calibrate([RUN], holdout=0.0, kinds=["gemm"])


def _norm(tokens: int) -> object:
    b = tokens * 4096 * 2.0
    return memory_op(
        "attn_norm",
        "norm",
        "attn",
        1,
        flops=4.0 * tokens * 4096,
        read=2 * b,
        written=2 * b,
        dtype="bf16",
        shape={"tokens": tokens, "hidden": 4096},
    )


def test_an_uncovered_kernel_pays_the_back_to_back_floor(ours):
    engine = [replace(f, impl=ENGINE_GEMM_IMPLS[0], floor_s=2.5e-6) for f in ours.fits if f.kind == "gemm"]
    cm = CalibratedCostModel(Calibration([*ours.fits, *engine]))
    h100 = make_cluster(get_gpu("H100-SXM"), num_gpus=8)
    assert cm.kernel_floor("H100-SXM") == (2.5e-6, f"gemm/bf16/{ENGINE_GEMM_IMPLS[0]}@H100-SXM")
    for tokens in (1, 64, 65536):
        op = _norm(tokens)
        roof = RooflineCostModel().op_time(op, h100)
        got = cm.op_time(op, h100)
        assert got.seconds == pytest.approx(roof.seconds + 2.5e-6, rel=1e-12)
        assert "kernel floor" in got.source and got.source.startswith("roofline: no measured norm")
    assert cm.op_time(_norm(1), h100).bound == "kernel"
    # a collective keeps its link model (its latency holds its launch), whatever the floor
    ar = collective("attn_allreduce", "all_reduce", "attn", 1, 1e6, 8, 8)
    assert cm.op_time(ar, h100).seconds == pytest.approx(RooflineCostModel().op_time(ar, h100).seconds)
    # on another GPU of the vendor that no table timed back to back, the measured GPU's floor, said to be carried
    h200 = make_cluster(get_gpu("H200-SXM"), num_gpus=1)
    assert cm.kernel_floor("H200-SXM") is None  # no vendor named: nothing to carry it by
    assert cm.kernel_floor("H200-SXM", "nvidia") == (2.5e-6, f"gemm/bf16/{ENGINE_GEMM_IMPLS[0]}@H100-SXM, transferred")
    got = cm.op_time(_norm(64), h200)
    assert got.seconds == pytest.approx(RooflineCostModel().op_time(_norm(64), h200).seconds + 2.5e-6, rel=1e-12)
    assert "@H100-SXM, transferred)" in got.source
    # never across vendors: this machine's CPU gets no GPU's floor
    cpu = local_cpu()
    assert cm.kernel_floor(cpu.key, cpu.vendor) is None


def test_per_call_tables_give_no_floor(ours):
    # moesim profile's tables time each call between CUDA events: their floor holds the events' cost, not a step's
    cm = CalibratedCostModel(ours)
    h100 = make_cluster(get_gpu("H100-SXM"), num_gpus=1)
    assert cm.kernel_floor("H100-SXM") is None
    op = _norm(64)
    assert cm.op_time(op, h100).seconds == pytest.approx(RooflineCostModel().op_time(op, h100).seconds)
