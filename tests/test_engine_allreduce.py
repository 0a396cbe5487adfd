"""A serving engine's tensor-parallel all-reduce on one NVLink node runs the engine's own kernels (vLLM's and
SGLang's custom all-reduce, vLLM's symmetric-memory one), not NCCL's: no table here measures them, so NCCL's table
stands in and the source says so (``fallback``, one stderr line). Without an engine (training), across nodes, and
above `ENGINE_ALL_REDUCE_MAX_BYTES` NCCL's table is the kernel's own. The time is NCCL's table's either way."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from moesim.model import make_cluster
from moesim.model.hardware import get_gpu
from moesim.model.op_record import collective
from moesim.model.roofline import RooflineCostModel
from moesim.profiling.calibrate import calibrate
from moesim.profiling.costmodel import ENGINE_ALL_REDUCE_MAX_BYTES, CalibratedCostModel, Calibration, source_class
from moesim.profiling.opshapes import row_op
from moesim.profiling.tables import write_table


@pytest.fixture(scope="module")
def cal(tmp_path_factory) -> Calibration:
    """A synthetic NCCL all-reduce table on the H100: 1.8x the link model, 2-8 GPUs, 4 KB to 64 MB."""
    h100 = get_gpu("H100-SXM")
    roof, cl, rows = RooflineCostModel(), make_cluster(h100, num_gpus=8), []
    for gpus, n in itertools.product((2, 4, 8), [2.0**e for e in range(12, 27)]):
        t = roof.op_time(row_op("all_reduce", {"bytes": n, "gpus": gpus, "dtype": "fp16"}), cl).seconds * 1.8
        rows.append({"op": "all_reduce", "impl": "nccl", "dtype": "fp16", "bytes": n, "gpus": gpus, "time_s": t})
    out = tmp_path_factory.mktemp("nccl")
    meta = {"source": "synthetic", "device_key": "H100-SXM", "hardware": h100.model_dump()}
    write_table(pd.DataFrame(rows), out / "all_reduce.parquet", meta)
    return calibrate([out], holdout=0.0)


def test_the_engines_all_reduce_is_a_visible_nccl_stand_in(cal, capsys):
    h100 = make_cluster(get_gpu("H100-SXM"), num_gpus=8)
    plain = CalibratedCostModel(cal)
    engine = plain.with_kernels({"moe": "triton"})
    decode = collective("attn_allreduce", "all_reduce", "attn", 1, 64 * 6144 * 2.0, 8, 8)
    t_plain, t_engine = plain.op_time(decode, h100), engine.op_time(decode, h100)
    assert source_class(t_plain.source) == "measured" and "fallback" not in t_plain.source
    assert source_class(t_engine.source) == "fallback", t_engine.source
    assert t_engine.source.startswith("fallback: no table of the engine's custom all-reduce, used nccl; measured:")
    assert t_engine.seconds == pytest.approx(t_plain.seconds)  # the same table's time
    assert "warning: no table of the engine's custom all-reduce on H100-SXM" in capsys.readouterr().err
    # above the engine's buffer, NCCL's table is the engine's kernel too
    big = collective("attn_allreduce", "all_reduce", "attn", 1, 2.0 * ENGINE_ALL_REDUCE_MAX_BYTES, 8, 8)
    assert source_class(engine.op_time(big, h100).source) == "measured"
    # across nodes: NCCL (and the roofline's multi-node model here)
    two_nodes = make_cluster(get_gpu("H100-SXM"), num_gpus=16)
    wide = collective("attn_allreduce", "all_reduce", "attn", 1, 64 * 6144 * 2.0, 16, 8)
    assert "fallback" not in engine.op_time(wide, two_nodes).source


def test_pcie_nodes_run_the_custom_kernel_only_at_two_gpus(cal):
    engine = CalibratedCostModel(cal).with_kernels({"moe": "triton"})
    pcie = make_cluster(get_gpu("H100-PCIe"), num_gpus=4)
    for gpus, want in ((2, True), (4, False)):
        op = collective("attn_allreduce", "all_reduce", "attn", 1, 1e5, gpus, 8)
        assert engine.engine_all_reduce(op, pcie) is want
