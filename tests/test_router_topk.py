"""The router's softmax and top-k are counted once: a router table that timed them with the GEMM (the H100 tables'
``torch`` router) leaves the step's ``topk_softmax`` op nothing to add; a GEMM-only router table does not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from moesim.model import Batch, Layout, Precision, load_model
from moesim.model.hardware import get_gpu, make_cluster
from moesim.model.ops import decompose, topk_op
from moesim.model.roofline import estimate_step
from moesim.profiling.calibrate import CalibratedCostModel, calibrate
from moesim.profiling.costmodel import Calibration, includes_topk

RUN = Path(__file__).resolve().parents[1] / "profiling" / "data" / "h100-sxm" / "full-bf16"


@pytest.fixture(scope="module")
def cal() -> Calibration:
    return calibrate([RUN], holdout=0.0, kinds=["router", "gemm"])


def _parts(cm: CalibratedCostModel, batch: Batch) -> tuple[float, float, str, float]:
    """(router s, top-k s, top-k source, step s) of a Mixtral-8x7B TP8 step on the H100."""
    m, lay = load_model("mixtral-8x7b"), Layout(tp=8)
    cluster = make_cluster(get_gpu("H100-SXM"), num_gpus=8)
    est = estimate_step(m, batch, lay, cluster, Precision(), cm)
    pairs = list(zip(est.ops, est.times, strict=True))
    router = sum(t.seconds * o.count for o, t in pairs if o.kind == "router")
    topk = [(t.seconds * o.count, t.source) for o, t in pairs if o.kind == "topk_softmax"]
    assert len(topk) == 1
    return router, topk[0][0], topk[0][1], est.step_s


def test_the_h100_router_table_includes_the_top_k(cal):
    router = [f for f in cal.fits if f.kind == "router"]
    assert router and all(f.impl == "torch" and includes_topk(f) for f in router)


def test_top_k_inside_a_measured_router_costs_nothing_more(cal):
    cm = CalibratedCostModel(cal)
    for batch in (Batch.decode(64, 2048), Batch.prefill(1, 1024)):
        router, topk, source, _ = _parts(cm, batch)
        assert router > 0 and topk == 0.0
        assert source.startswith("measured: included in router/bf16/torch@H100-SXM"), source


def test_a_gemm_only_router_table_leaves_the_top_k_its_own_time(cal):
    gemm_only = Calibration([replace(f, impl="torch_gemm") if f.kind == "router" else f for f in cal.fits])
    cm = CalibratedCostModel(gemm_only)
    batch = Batch.prefill(1, 1024)
    router, topk, source, step = _parts(cm, batch)
    assert topk > 0 and "included in router" not in source
    # the same router table read as GEMM + top-k: the step is shorter by exactly the top-k's time
    with_topk = _parts(CalibratedCostModel(cal), batch)
    assert with_topk[0] == pytest.approx(router) and with_topk[3] == pytest.approx(step - topk)


def test_top_k_without_its_router_shape_is_timed_alone(cal):
    cm = CalibratedCostModel(cal)
    cluster = make_cluster(get_gpu("H100-SXM"), num_gpus=1)
    alone = cm.op_time(topk_op("", 1, 1024, 8, 2), cluster)  # a table row's op: no hidden width
    assert alone.seconds > 0 and "included" not in alone.source
    ops = decompose(load_model("mixtral-8x7b"), Batch.decode(8, 512), Layout(), cluster)
    assert next(o for o in ops if o.kind == "topk_softmax").shape["hidden"] == 4096


def test_a_router_outside_its_table_follows_its_edge_with_the_top_k_inside():
    # Mixtral's router width is outside the quick grid: the router follows the table along its edge (the edge's
    # ratio, which holds the softmax and top-k, times the roofline), so the top-k stays inside it, counted once
    quick = calibrate([RUN.parent / "quick-bf16"], holdout=0.0, kinds=["router"])
    router, topk, source, _ = _parts(CalibratedCostModel(quick), Batch.decode(64, 2048))
    assert router > 0 and topk == 0.0 and source.startswith("measured: included in router/bf16/torch@"), source


def test_an_engines_router_is_its_gemm_and_one_fused_top_k(cal):
    """With a serving engine's kernels named (vLLM, SGLang: one router GEMM and the fused ``topk_softmax`` kernel),
    the unfused eager router table is not the engine's path: the router is timed as its GEMM from the GEMM table and
    the top-k as one small kernel; without an engine (training, the CLI's roofline) the table times it as before."""
    engine = CalibratedCostModel(cal).with_kernels({"moe": "triton", "attention": "flash_attn"})
    batch = Batch.decode(32, 700)
    router, topk, source, _ = _parts(engine, batch)
    legacy = _parts(CalibratedCostModel(cal), batch)
    assert legacy[1] == 0.0 and topk > 0 and source.startswith("achievable:"), source
    m, lay = load_model("mixtral-8x7b"), Layout(tp=8)
    cluster = make_cluster(get_gpu("H100-SXM"), num_gpus=8)
    est = estimate_step(m, batch, lay, cluster, Precision(), engine)
    src = next(t.source for o, t in zip(est.ops, est.times, strict=True) if o.kind == "router")
    assert "gemm/bf16/torch@H100-SXM" in src and "router GEMM" in src, src
    # the eager table reads the host's launches (a median of 40-61 us at any decode size); the GEMM and the top-k a
    # fraction of that, per layer
    per_layer = (router + topk) / m.num_layers
    assert per_layer < 0.5 * (legacy[0] + legacy[1]) / m.num_layers and 4e-6 < per_layer < 20e-6
