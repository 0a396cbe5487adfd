"""A serving engine's GEMMs are timed from the table that measured them as the engine runs them (AIConfigurator's
``vllm_default``: back to back), ahead of ``moesim profile``'s per-call timing, when both cover the GPU; without an
engine the calibration's own choice stands."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from moesim.model.hardware import get_gpu, make_cluster
from moesim.model.op_record import gemm
from moesim.profiling.calibrate import CalibratedCostModel, calibrate
from moesim.profiling.costmodel import ENGINE_GEMM_IMPLS, Calibration

RUN = Path(__file__).resolve().parents[1] / "profiling" / "data" / "h100-sxm" / "quick-bf16"


@pytest.fixture(scope="module")
def both() -> Calibration:
    ours = calibrate([RUN], holdout=0.0, kinds=["gemm"])
    engine = [replace(f, impl=ENGINE_GEMM_IMPLS[0]) for f in ours.fits if f.kind == "gemm"]
    return Calibration([*ours.fits, *engine])


def test_an_engines_gemm_reads_the_engines_own_table(both):
    cluster = make_cluster(get_gpu("H100-SXM"), num_gpus=1)
    op = gemm("qkv_proj", "g", 1, 32, 6144, 4096, 2.0, 2.0, "bf16")
    plain = CalibratedCostModel(both).op_time(op, cluster)
    engine = CalibratedCostModel(both).with_kernels({"moe": "triton"}).op_time(op, cluster)
    assert "gemm/bf16/torch@H100-SXM" in plain.source, plain.source
    assert f"gemm/bf16/{ENGINE_GEMM_IMPLS[0]}@H100-SXM" in engine.source and "the engine's GEMM" in engine.source
    # on another GPU the engine's table is not preferred over the calibration's choice (both would transfer)
    h200 = make_cluster(get_gpu("H200-SXM"), num_gpus=1)
    moved = CalibratedCostModel(both).with_kernels({"moe": "triton"}).op_time(op, h200)
    assert "gemm/bf16/torch@H100-SXM" in moved.source, moved.source
