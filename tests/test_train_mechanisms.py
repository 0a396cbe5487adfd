"""Issue 21, second round: kernel and collective mechanisms behind the training optimism (`train_cost.MECHANISMS`).

FlashAttention's backward efficiency, the fp32 main-grad traffic of the weight gradient, and tensor-parallel
collectives at NCCL's measured H100 speed; each visible in ``kernel_sources`` and each replaced by a measured table.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fast_inputs import train_scenario  # tests/fast_inputs.py

from moesim.model import ClusterSpec, RooflineCostModel
from moesim.model.batch import Batch
from moesim.model.ops import Op, collective, decompose, gemm
from moesim.model.roofline import OpTime
from moesim.sim.training import train_cost
from moesim.sim.training.train import load
from moesim.sim.training.train_cost import (
    attention_bwd_ratio,
    backward_seconds,
    nccl_seconds,
    precision_of,
    sequence_parallel_collectives,
    training_ops,
    unit_costs,
    wgrad_traffic_seconds,
)

ALL = set(train_cost.MECHANISMS)


class Measured:
    """The roofline, except that ops of ``kinds`` take ``seconds`` from a 'measured' table."""

    def __init__(self, kinds: set[str], seconds: float = 1e-3) -> None:
        self.kinds, self.seconds, self.roof = kinds, seconds, RooflineCostModel()

    def op_time(self, op: Op, cluster: ClusterSpec) -> OpTime:
        if op.kind in self.kinds:
            return OpTime(self.seconds, 0.0, 0.0, 0.0, "measured", "measured:test (knn)")
        return self.roof.op_time(op, cluster)


@pytest.fixture
def mechanisms(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """`train_cost.MECHANISMS`, restored after the test."""
    monkeypatch.setattr(train_cost, "MECHANISMS", set(ALL))
    return train_cost.MECHANISMS


def _setup():
    return load(train_scenario({}))


def _attention_op() -> tuple[Op, ClusterSpec]:
    setup = _setup()
    lay, sc = setup.group_layout, setup.scenario
    batch = Batch.prefill(sc.batch.micro_batch * lay.dp_attn, sc.batch.seq_len)
    ops = training_ops(decompose(setup.model, batch, lay, setup.cluster, precision_of(setup), mla_absorb=False))
    return next(op for op in ops if op.kind == "attention"), setup.cluster


# ---- FlashAttention's backward efficiency ---------------------------------------------------------------------


def test_attention_bwd_ratio_is_the_flop_ratio_at_the_papers_tflops() -> None:
    assert attention_bwd_ratio(4096) == pytest.approx(2.5 * 368 / 310)  # FA2, arXiv 2407.08608 figs 5-6
    assert attention_bwd_ratio(4096, "flash_attn3") == pytest.approx(2.5 * 638 / 542)
    assert attention_bwd_ratio(4096, "cudnn") == pytest.approx(2.5 * 609 / 499)
    assert attention_bwd_ratio(100) == pytest.approx(2.5 * 309 / 214)  # held at the shortest measured length
    assert attention_bwd_ratio(1 << 20) == pytest.approx(2.5 * 370 / 322)
    mid = attention_bwd_ratio(2896)  # between 2k and 4k
    assert attention_bwd_ratio(4096) < mid < attention_bwd_ratio(2048)
    assert all(attention_bwd_ratio(s) > 2.5 for s in (512, 4096, 16384))  # backward always below forward's rate


def test_attention_backward_takes_the_ratio_without_a_table_and_the_table_with_one(mechanisms: set[str]) -> None:
    op, cluster = _attention_op()
    fwd = np.array([1e-3, 0.0, 0.0, 0.0])
    src = train_cost._Sources()
    b, _ = backward_seconds(op, fwd, RooflineCostModel(), cluster, src)
    seq = op.shape.get("kv_read", op.shape.get("tokens"))
    assert b[0] == pytest.approx(attention_bwd_ratio(seq) * 1e-3)
    assert "2407.08608" in src.summary()["assumed"]["attention.bwd attention_bwd"]
    b_tab, _ = backward_seconds(op, fwd, Measured({"attention_bwd"}, 7e-3), cluster, train_cost._Sources())
    assert b_tab[0] == 7e-3  # a measured attention_bwd table replaces the ratio
    mechanisms.discard("attn_bwd_efficiency")
    b_old, _ = backward_seconds(op, fwd, RooflineCostModel(), cluster, train_cost._Sources())
    assert b_old[0] == pytest.approx(2.5e-3)


# ---- the weight gradient's fp32 main-grad traffic ---------------------------------------------------------------


def test_wgrad_takes_at_least_its_fp32_main_grad_traffic(mechanisms: set[str]) -> None:
    cluster = _setup().cluster
    roof = RooflineCostModel()
    thin = gemm("expert_down", "x", 1, 64, 4096, 4096, 2.0, 2.0, "bf16")  # few tokens, a big weight
    t4, t2 = wgrad_traffic_seconds(thin, 4.0, roof, cluster), wgrad_traffic_seconds(thin, 2.0, roof, cluster)
    nbytes = (64 * 4096 * 2) * 2.0 + 2 * 4096 * 4096 * 4.0  # operands (bf16) + main_grad read and written (fp32)
    assert t4 == pytest.approx(nbytes / cluster.gpu.memory_bandwidth, rel=0.05)
    assert t4 > t2 > 0.0
    assert wgrad_traffic_seconds(thin, 0.0, roof, cluster) == 0.0
    fwd = np.array([1e-6, 0.0, 0.0, 0.0])
    src = train_cost._Sources()
    _, w = backward_seconds(thin, fwd, roof, cluster, src, main_grad_bytes=4.0)
    assert w[0] == pytest.approx(t4)
    assert "expert_down.wgrad fp32_main_grad" in src.summary()["assumed"]
    _, w0 = backward_seconds(thin, fwd, roof, cluster, train_cost._Sources())  # no main_grad: the ratio
    assert w0[0] == pytest.approx(1e-6)
    # a compute-bound wgrad keeps its time; a measured wgrad table is used as it is
    fat = np.array([5e-3, 0.0, 0.0, 0.0])
    assert backward_seconds(thin, fat, roof, cluster, train_cost._Sources(), 4.0)[1][0] == pytest.approx(5e-3)
    tab = Measured({"gemm_wgrad"}, 2e-7)
    assert backward_seconds(thin, fwd, tab, cluster, train_cost._Sources(), 4.0)[1][0] == pytest.approx(2e-7)


def test_grouped_wgrad_traffic_counts_every_local_experts_main_grad() -> None:
    setup = _setup()
    lay, sc = setup.group_layout, setup.scenario
    batch = Batch.prefill(sc.batch.micro_batch * lay.dp_attn, sc.batch.seq_len)
    ops = training_ops(decompose(setup.model, batch, lay, setup.cluster, precision_of(setup), mla_absorb=False))
    g = next(op for op in ops if op.kind == "grouped_gemm")
    s = g.shape
    t = wgrad_traffic_seconds(g, 4.0, RooflineCostModel(), setup.cluster)
    floor = 2 * s["experts"] * 3 * s["hidden"] * s["inter"] * 4.0 / setup.cluster.gpu.memory_bandwidth
    assert t >= floor * 0.95


# ---- tensor-parallel collectives at NCCL's measured speed ------------------------------------------------------


def test_tp_collective_follows_nccls_measured_line_and_never_beats_the_link() -> None:
    cluster = _setup().cluster
    op = collective("tp_gather", "all_gather", "x", 1, 2.0**25, 4, 8)  # 32 MiB over 4 GPUs of a node
    assert op is not None
    want = 65.545e-6 + (2**25 - 2**24) * (352.420e-6 - 65.545e-6) / (2**27 - 2**24)
    assert nccl_seconds(op, 1e-6, cluster) == pytest.approx(want)
    assert nccl_seconds(op, 1.0, cluster) == 1.0  # at least the roofline
    roof = RooflineCostModel().op_time(op, cluster).seconds
    assert nccl_seconds(op, roof, cluster) > roof  # NCCL reaches less than NVLink's peak
    across = collective("tp_gather", "all_gather", "x", 1, 2.0**25, 16, 8)
    assert nccl_seconds(across, 1e-6, cluster) is None  # multi-node: the link model stays
    three = collective("tp_gather", "all_gather", "x", 1, 2.0**25, 3, 8)
    assert nccl_seconds(three, 1e-6, cluster) is None  # no measured group of 3
    other = cluster.model_copy(update={"gpu": cluster.gpu.model_copy(update={"key": "A100-SXM"})})
    assert nccl_seconds(op, 1e-6, other) is None  # measured on H100 only


def test_unit_costs_with_and_without_the_mechanisms(mechanisms: set[str]) -> None:
    setup = load(train_scenario({"layout": {"tp": 2, "ep": 4}}))
    on = unit_costs(setup, RooflineCostModel())
    mechanisms.clear()
    off = unit_costs(setup, RooflineCostModel())
    assert on.f[:, 0].sum() <= off.f[:, 0].sum()  # forward computation: only the router shrinks (its SP shard)
    assert on.b[1:-1, 0].sum() > off.b[1:-1, 0].sum()  # attention backward below its forward's rate
    assert on.f[1:-1, 3].sum() > off.f[1:-1, 3].sum()  # TP collectives at NCCL's speed
    assert on.w[1:-1, 0].sum() >= off.w[1:-1, 0].sum()
    assert on.kernel_sources is not None
    assert any("NCCL_H100" in why for why in on.kernel_sources["assumed"].values())


def test_nccl_all_to_all_in_a_node_is_timed_at_nccls_speed_but_deepep_is_not(mechanisms: set[str]) -> None:
    setup = load(train_scenario({"layout": {"a2a_backend": "nccl"}}))  # EP4 inside one node, NCCL's all-to-all
    lay, sc = setup.group_layout, setup.scenario
    batch = Batch.prefill(sc.batch.micro_batch * lay.dp_attn, sc.batch.seq_len)
    ops = training_ops(decompose(setup.model, batch, lay, setup.cluster, precision_of(setup), mla_absorb=False))
    a2a = next(op for op in ops if op.kind == "all_to_all")
    cluster = setup.cluster
    nccl = replace(a2a, shape={**a2a.shape, "backend": "nccl", "gpus": 8, "bytes": 2.0**26})
    want = 72.485e-6 + (2**26 - 2**24) * (404.170e-6 - 72.485e-6) / (2**27 - 2**24)
    assert nccl_seconds(nccl, 1e-9, cluster) == pytest.approx(want)
    deepep = replace(nccl, shape={**nccl.shape, "backend": "deepep", "mode": "normal"})
    assert nccl_seconds(deepep, 1e-9, cluster) is None  # DeepEP keeps `model.a2a`'s model
    on = unit_costs(setup, RooflineCostModel())
    mechanisms.discard("ep_nccl")
    off = unit_costs(setup, RooflineCostModel())
    assert a2a.shape.get("backend") == "nccl" and a2a.inter_bytes == 0
    assert on.f[1:-1, 2].sum() > off.f[1:-1, 2].sum()
    assert np.allclose(on.f[:, 0], off.f[:, 0])


# ---- sequence parallelism's collectives ------------------------------------------------------------------------


def _tp_ops(over: dict) -> tuple[list[Op], object]:
    setup = load(train_scenario(over))
    lay, sc = setup.group_layout, setup.scenario
    batch = Batch.prefill(sc.batch.micro_batch * lay.dp_attn, sc.batch.seq_len)
    return training_ops(decompose(setup.model, batch, lay, setup.cluster, precision_of(setup), mla_absorb=False)), lay


def test_sequence_parallel_runs_gather_and_scatter_per_region_and_none_around_ep_experts() -> None:
    ops, lay = _tp_ops({"layout": {"tp": 2, "ep": 4}})
    names = [op.name for op in ops if op.kind in ("all_reduce", "all_gather", "reduce_scatter")]
    assert "attn_allreduce" in names and "tp_gather" in names  # serving's op model
    sp = sequence_parallel_collectives(ops, lay.moe_tp, 2)
    router, router_sp = (next(op for op in xs if op.kind == "router") for xs in (ops, sp))
    assert router_sp.shape["tokens"] == router.shape["tokens"] / 2 and router_sp.flops == router.flops / 2
    kinds = {op.name: op.kind for op in sp if op.kind in ("all_reduce", "all_gather", "reduce_scatter")}
    assert kinds.get("attn_gather") == "all_gather" and kinds.get("attn_scatter") == "reduce_scatter"
    assert "attn_allreduce" not in kinds and "tp_gather" not in kinds  # the EP experts take the sequence shard
    ar = next(op for op in ops if op.name == "attn_allreduce")
    ag = next(op for op in sp if op.name == "attn_gather")
    assert ag.intra_bytes == pytest.approx(ar.intra_bytes / 2) and ag.shape["bytes"] == ar.shape["bytes"]
    # the bytes a layer moves: all-reduce + all-gather (serving) against all-gather + reduce-scatter (Megatron SP)
    per_layer = lambda xs: sum(op.intra_bytes for op in xs if op.group == ar.group and op.kind != "all_to_all")  # noqa: E731
    assert per_layer(sp) == pytest.approx(per_layer(ops) * 2 / 3)


def test_unit_costs_use_sequence_parallel_collectives_only_with_sequence_parallelism(mechanisms: set[str]) -> None:
    on = unit_costs(load(train_scenario({"layout": {"tp": 2, "ep": 4}})), RooflineCostModel())
    off_sp = unit_costs(
        load(train_scenario({"layout": {"tp": 2, "ep": 4, "sequence_parallel": False}})), RooflineCostModel()
    )
    mechanisms.discard("sp_collectives")
    before = unit_costs(load(train_scenario({"layout": {"tp": 2, "ep": 4}})), RooflineCostModel())
    assert on.f[1:-1, 3].sum() < before.f[1:-1, 3].sum()  # 2 collectives of one activation a layer instead of 3
    assert off_sp.f[1:-1, 3].sum() == pytest.approx(before.f[1:-1, 3].sum())
