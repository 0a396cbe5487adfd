"""The roofline cost model and step estimates."""

from __future__ import annotations

import pytest

from moesim.model import (
    Batch,
    CostModel,
    Layout,
    OpTime,
    RooflineCostModel,
    decompose,
    estimate_step,
    load_model,
)


def test_op_time_is_max_of_compute_and_memory_plus_link(cluster8):
    ops = decompose(load_model("mixtral-8x7b"), Batch.decode(64, 2048), Layout(tp=8), cluster8)
    rm = RooflineCostModel()
    for op in ops:
        t = rm.op_time(op, cluster8)
        compute = op.flops / cluster8.gpu.peak(op.dtype)
        memory = op.bytes / 4e12
        link = max(
            op.intra_bytes / 400e9 + op.intra_msgs * 5e-6 if op.intra_bytes or op.intra_msgs else 0.0,
            op.inter_bytes / 50e9 + op.inter_msgs * 20e-6 if op.inter_bytes or op.inter_msgs else 0.0,
        )
        assert t.seconds == pytest.approx(max(compute, memory) + link)
        assert t.seconds >= max(compute, memory)
    experts = next(op for op in ops if op.name == "routed_experts")
    assert rm.op_time(experts, cluster8).bound == "memory"  # decode experts stream weights


def test_prefill_gemms_are_compute_bound(cluster8):
    est = estimate_step(load_model("llama-3-8b"), Batch.prefill(8, 2048), Layout(tp=8), cluster8)
    gemms = est.table().query("kind == 'gemm' and op != 'lm_head'")
    assert (gemms["bound"] == "compute").all()


def test_step_is_sum_of_op_times(cluster8):
    est = estimate_step(load_model("deepseek-v2-lite"), Batch.decode(32, 1024), Layout(tp=2, pp=2), cluster8)
    tab = est.table()
    assert est.step_s == pytest.approx((tab["time_s"] * tab["count"]).sum())
    assert sum(est.stage_seconds()) == pytest.approx(est.step_s)
    assert sum(est.breakdown().values()) == pytest.approx(est.step_s)
    assert sum(est.bound_shares().values()) == pytest.approx(1.0)
    assert est.tokens_per_s == pytest.approx(32 / est.step_s)


class Doubling:
    """A stand-in calibrated model: twice the roofline."""

    name = "doubling"

    def op_time(self, op, cluster):
        t = RooflineCostModel().op_time(op, cluster)
        return OpTime(2 * t.seconds, t.compute_s, t.memory_s, t.link_s, t.bound, "test")


def test_cost_model_protocol(cluster8):
    assert isinstance(RooflineCostModel(), CostModel)
    assert isinstance(Doubling(), CostModel)
    m, b, lay = load_model("olmoe-1b-7b"), Batch.decode(16, 512), Layout(tp=2)
    base = estimate_step(m, b, lay, cluster8)
    doubled = estimate_step(m, b, lay, cluster8, cost_model=Doubling())
    assert doubled.step_s == pytest.approx(2 * base.step_s) and doubled.cost_model == "doubling"


def test_more_tensor_parallelism_is_faster_in_decode(cluster8):
    m, b = load_model("mixtral-8x7b"), Batch.decode(64, 2048)
    steps = [estimate_step(m, b, Layout(tp=tp), cluster8).step_s for tp in (1, 2, 4, 8)]
    assert steps == sorted(steps, reverse=True)
