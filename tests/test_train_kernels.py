"""Training's own kernels (issue 21 items 1 and 2): measured backward kernels, the visible fallback, fp8 casts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fast_inputs import train_scenario  # tests/fast_inputs.py

from moesim.model import ClusterSpec, MoesimError, RooflineCostModel, train_ops
from moesim.model.ops import Op, gemm
from moesim.model.roofline import OpTime
from moesim.profiling import opshapes, tables
from moesim.sim.training import train_cost
from moesim.sim.training.train import load, simulate_training
from moesim.sim.training.train_cost import backward_seconds, fp8_cast_ops, unit_costs

ROOT = Path(__file__).resolve().parents[1]


def small(**over: object) -> dict:
    """OLMoE on one 8-GPU H100 node (as tests/test_training.py's)."""
    return train_scenario(over)


class Measured:
    """The roofline, except that ops of ``kinds`` take ``seconds`` from a 'measured' table."""

    def __init__(self, kinds: set[str], seconds: float = 1e-3) -> None:
        self.kinds, self.seconds, self.roof = kinds, seconds, RooflineCostModel()

    def op_time(self, op: Op, cluster: ClusterSpec) -> OpTime:
        if op.kind in self.kinds:
            return OpTime(self.seconds, 0.0, 0.0, 0.0, "measured", "measured:test (knn)")
        return self.roof.op_time(op, cluster)


# ---- the kinds and their tables ---------------------------------------------------------------------------


def test_training_kinds_are_table_kinds_with_features() -> None:
    assert set(train_ops.TRAIN_KINDS) == set(tables.TRAIN_TABLE_KINDS)
    row = {"dtype": "bf16", "m": 4096, "n": 1024, "k": 2048, "tokens": 4096, "hidden": 2048, "inter": 1024,
           "experts": 64, "top_k": 8, "batch": 1, "q_len": 4096, "kv_len": 4096, "heads": 16, "kv_heads": 16,
           "head_dim": 128, "rot_dim": 64, "width": 2048, "direction": "combine", "vocab": 50304}  # fmt: skip
    for kind in train_ops.TRAIN_KINDS:
        op = opshapes.row_op(kind, row)
        assert op.kind == kind
        f = opshapes.features(op)
        assert f is not None and len(f) == len(opshapes.FEATURES[kind]), kind
        assert op.flops >= 0 and op.bytes > 0, kind


def test_dgrad_and_wgrad_have_the_forward_flop_and_their_own_bytes() -> None:
    fwd = gemm("o_proj", "x", 1, 4096, 2048, 1024, 2.0, 2.0, "bf16")
    d, w = train_ops.gemm_dgrad(fwd), train_ops.gemm_wgrad(fwd)
    assert d.flops == w.flops == fwd.flops == 2.0 * 4096 * 2048 * 1024
    assert d.weight_bytes == 2048 * 1024 * 2.0  # the weight read once
    assert w.weight_bytes == 8.0 * 2048 * 1024  # the fp32 main gradient read and written
    assert d.act_bytes == w.act_bytes == (4096 * 2048 + 4096 * 1024) * 2.0


def test_profile_train_kinds_write_rows_and_calibrate_on_tiny_cpu_shapes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from moesim.profiling.calibrate import calibrate
    from moesim.profiling.costmodel import CalibratedCostModel, source_class
    from moesim.profiling.runner import profile

    run = profile("cpu", tmp_path / "t", mode="tiny", ops=["train"])
    assert set(run.rows) == set(train_ops.TRAIN_KINDS) and not run.skipped
    assert run.wall_s < 60
    cal = calibrate(sorted((tmp_path / "t").glob("*.parquet")), holdout=0.0)
    cm = CalibratedCostModel(cal).with_extrapolation()
    cluster = load(small()).cluster.model_copy(update={"gpu": run.hardware})
    fwd = gemm("o_proj", "x", 1, 256, 512, 512, 4.0, 4.0, "fp32")
    t = cm.op_time(train_ops.gemm_dgrad(fwd), cluster)
    assert source_class(t.source) == "measured" and t.seconds > 0


# ---- backward kernels from their tables, else the assumed ratio, visibly ----------------------------------


def test_backward_priced_from_a_measured_table_else_the_assumed_ratio() -> None:
    cluster = load(small()).cluster
    fwd_op = gemm("o_proj", "x", 1, 4096, 2048, 1024, 2.0, 2.0, "bf16")
    fwd = np.array([2e-3, 0.0, 0.0, 0.0])
    src = train_cost._Sources()
    b, w = backward_seconds(fwd_op, fwd, Measured({"gemm_dgrad", "gemm_wgrad"}, 5e-3), cluster, src)
    assert b[0] == w[0] == 5e-3
    assert src.summary()["measured"] == ["o_proj.dgrad gemm_dgrad", "o_proj.wgrad gemm_wgrad"]
    src = train_cost._Sources()
    b, w = backward_seconds(fwd_op, fwd, Measured({"gemm_dgrad"}, 5e-3), cluster, src)
    assert b[0] == 5e-3 and w[0] == 2e-3  # wgrad: BACKWARD's 1 x forward
    assert "assumed ratio 1 x forward" in src.summary()["assumed"]["o_proj.wgrad gemm_wgrad"]


def test_step_with_measured_tables_reports_them_and_changes_the_backward_only() -> None:
    setup = load(small())
    roof = unit_costs(setup, RooflineCostModel())
    assert roof.kernel_sources is not None and not roof.kernel_sources["measured"]
    assert "attention.bwd attention_bwd" in roof.kernel_sources["assumed"]
    meas = unit_costs(setup, Measured(set(train_ops.TRAIN_KINDS) - {"cross_entropy"}, 1e-4))
    assert "attention.bwd attention_bwd" in meas.kernel_sources["measured"]
    assert "routed_experts.wgrad grouped_gemm_wgrad" in meas.kernel_sources["measured"]
    assert np.allclose(meas.f, roof.f)  # the forward is the forward's
    assert not np.allclose(meas.b, roof.b) and not np.allclose(meas.w, roof.w)
    res = simulate_training(setup, Measured({"gemm_dgrad"}))
    assert any("gemm_dgrad" in k for k in res.summary["kernel_sources"]["measured"])


# ---- fp8: the casts around every fp8 GEMM -----------------------------------------------------------------


def test_fp8_gemm_gains_its_casts_with_their_bytes() -> None:
    op = gemm("o_proj", "x", 1, 4096, 2048, 1024, 1.0, 2.0, "fp8")
    casts = fp8_cast_ops(op, microbatches=4)
    by = {c.name: (part, c, reps) for part, c, reps in casts}
    assert set(by) == {"o_proj.x.cast", "o_proj.dy.cast", "o_proj.w.cast"}
    part, x, reps = by["o_proj.x.cast"]
    assert part == 0 and reps == 1.0 and x.kind == "cast_transpose"
    n = 4096 * 1024  # X [m, k] in bf16 read once, written row-wise and transposed in fp8 with a scale per 128
    assert x.act_bytes == pytest.approx(n * 2.0 + 2.0 * (n + n / 128 * 4.0))
    part, dy, _ = by["o_proj.dy.cast"]
    assert part == 1 and dy.shape == {"tokens": 4096, "width": 2048, "group_cols": 128}
    assert by["o_proj.w.cast"][2] == 0.25  # the weight once per step of 4 micro-batches
    assert fp8_cast_ops(replace(op, shape={**op.shape, "w_bytes": 2.0}, dtype="bf16"), 4) == []
    current = fp8_cast_ops(op, 4, "current")
    assert sum(c.kind == "amax" for _, c, _ in current) == 3


def test_fp8_step_pays_its_casts_and_says_so() -> None:
    bf16 = unit_costs(load(small()), RooflineCostModel())
    fp8 = load(small(precision={"gemm": "fp8"}))
    cost = unit_costs(fp8, RooflineCostModel())
    assert bf16.kernel_sources["fp8_cast_s"] == 0.0 and cost.kernel_sources["fp8_cast_s"] > 0
    assert any(k.endswith("cast_transpose") for k in cost.kernel_sources["assumed"])  # roofline-timed casts
    no_casts = pytest.MonkeyPatch.context()
    with no_casts as mp:
        mp.setattr(train_cost, "fp8_cast_ops", lambda *a, **k: [])
        bare = unit_costs(fp8, RooflineCostModel())
    added = (cost.f.sum() + cost.b.sum()) - (bare.f.sum() + bare.b.sum())
    assert added == pytest.approx(cost.kernel_sources["fp8_cast_s"], rel=1e-6)


@pytest.mark.parametrize(
    ("gpu", "recipe", "needle"),
    [("A100-SXM-80GB", "block", "no fp8 tensor cores"), ("H100-SXM", "mxfp8", "no block-scaled \\(MXFP8\\)")],
)
def test_fp8_recipe_the_gpu_cannot_run_is_one_error(gpu: str, recipe: str, needle: str) -> None:
    with pytest.raises(MoesimError, match=needle):
        load(small(gpu=gpu, precision={"gemm": "fp8", "fp8_recipe": recipe}))
    load(small(gpu="B200", precision={"gemm": "fp8", "fp8_recipe": "mxfp8"}))
