"""fp8 GEMMs in training timed from what fp8 measured, and calibrations whose fits do not depend on each other.

The tables are the committed H100 measurements: ``full-bf16`` (bf16 GEMMs and grouped GEMMs) and
``quick-fp8_fp16`` (fp8 GEMMs through ``torch._scaled_mm``, per-tensor scales). No fp8 grouped-GEMM table exists,
so an fp8 routed-experts layer is the bf16 layer's measured time scaled by what fp8 gains over bf16 on one expert's
dense GEMMs, both measured (`CalibratedCostModel._grouped_by_dense_ratio`); without the fp8 table it keeps the
older transfer (bf16's efficiency at the fp8 peak) and says so.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from moesim.model.hardware import get_cluster
from moesim.model.ops import experts_gemms, fused_moe_op, gemm
from moesim.profiling.calibrate import calibrate, group_rng
from moesim.profiling.costmodel import CalibratedCostModel, Calibration

DATA = Path(__file__).resolve().parent.parent / "profiling" / "data" / "h100-sxm"
BF16, FP8 = DATA / "full-bf16", DATA / "quick-fp8_fp16"
KINDS = ["gemm", "grouped_gemm"]


@cache
def _cal(*paths: Path) -> Calibration:
    return calibrate(list(paths), holdout=0.0, kinds=KINDS)


def _experts(dtype: str, w_bytes: float):
    """Qwen3-235B's routed experts at EP32 in training: 2,048 tokens x 32 ranks, top-8, 4 experts per GPU."""
    tokens, ep, k = 2048 * 32, 32, 8
    return experts_gemms(fused_moe_op(tokens / ep, tokens * k / ep, 4, 4096, 1536, k, 128, ep, w_bytes, 2.0, dtype))


def test_a_tables_fit_does_not_depend_on_the_other_tables_calibrated_with_it():
    alone = {f.key: f for f in _cal(BF16).fits}
    both = {f.key: f for f in _cal(BF16, FP8).fits}
    assert set(alone) < set(both)
    cl = get_cluster("dgx-h100")
    op = _experts("bf16", 2.0)
    for key, f in alone.items():
        g = both[key]
        assert (f.predictor.method, getattr(f.predictor, "k", 0)) == (g.predictor.method, getattr(g.predictor, "k", 0))
        assert f.scores == g.scores
    one = CalibratedCostModel(_cal(BF16)).with_extrapolation().op_time(op, cl)
    two = CalibratedCostModel(_cal(BF16, FP8)).with_extrapolation().op_time(op, cl)
    assert one.seconds == two.seconds and one.source == two.source


def test_one_tables_calibration_is_as_before():
    """A calibration of a single table draws as the shared generator did for its first table (no fit moved)."""
    import numpy as np

    a = group_rng(0, "grouped_gemm", "bf16", "triton_graph", "H100-SXM").random(3)
    assert (a == np.random.default_rng(0).random(3)).all()
    assert (group_rng(1, "gemm", "fp8", "torch", "H100-SXM").random(3) != a).all()


def test_fp8_experts_take_the_measured_dense_ratio():
    cl = get_cluster("dgx-h100")
    cm = CalibratedCostModel(_cal(BF16, FP8)).with_extrapolation()
    bf16, fp8 = cm.op_time(_experts("bf16", 2.0), cl), cm.op_time(_experts("fp8", 1.0), cl)
    assert "by the measured dense-GEMM ratio" in fp8.source and "4096 rows per expert" in fp8.source
    rows = 4096
    dense = {
        dt: sum(
            cm.op_time(gemm(n, "", 1, rows, nn, kk, wb, 2.0, dt), cl).seconds
            for n, nn, kk in (("up", 3072, 4096), ("down", 4096, 1536))
        )
        for dt, wb in (("fp8", 1.0), ("bf16", 2.0))
    }
    assert fp8.seconds == pytest.approx(bf16.seconds * dense["fp8"] / dense["bf16"], rel=1e-12)
    # measured on the H100: fp8 gains less than the peaks' 2x, more than nothing
    assert 0.45 < fp8.seconds / bf16.seconds < 0.9


def test_without_an_fp8_table_the_old_transfer_stays_and_says_so():
    cl = get_cluster("dgx-h100")
    cm = CalibratedCostModel(_cal(BF16)).with_extrapolation()
    t = cm.op_time(_experts("fp8", 1.0), cl)
    assert "dtype-transfer bf16->fp8" in t.source and "dense-GEMM ratio" not in t.source
    # bf16's efficiency at twice the peak: close to half the bf16 time
    assert t.seconds / cm.op_time(_experts("bf16", 2.0), cl).seconds < 0.62


def test_serving_fp8_experts_are_not_rescaled():
    """Without extrapolation (serving) an fp8 grouped GEMM with no fp8 grouped table is not timed from bf16's."""
    cl = get_cluster("dgx-h100")
    cm = CalibratedCostModel(_cal(BF16, FP8))
    assert "dense-GEMM ratio" not in cm.op_time(_experts("fp8", 1.0), cl).source


def test_the_fp8_training_example_takes_the_measured_fp8_table():
    """examples/train-qwen3-30b-a3b-h100-bridge.yaml names the fp8 GEMM table beside the bf16 ones; without it the
    same run takes bf16's efficiency at the fp8 peak and comes out faster than the measured fp8 GEMMs allow."""
    import yaml

    from moesim.sim.training.train import run

    examples = Path(__file__).resolve().parent.parent / "examples"
    doc = yaml.safe_load((examples / "train-qwen3-30b-a3b-h100-bridge.yaml").read_text())
    assert doc["precision"]["gemm"] == "fp8" and any("quick-fp8" in p for p in doc["cost_model"])
    measured = run(dict(doc), base_dir=examples).summary
    assert "quick-fp8_fp16" in measured["cost_model"]
    transferred = run({**doc, "cost_model": doc["cost_model"][0]}, base_dir=examples).summary
    assert measured["tokens_per_s_per_gpu"] < transferred["tokens_per_s_per_gpu"]


def test_a_dtype_transfer_is_a_transfer():
    from moesim.profiling.costmodel import source_class

    assert source_class("dtype-transfer bf16->fp8 measured:grouped_gemm/bf16/triton_graph@H100-SXM (local)") == (
        "transferred"
    )
    assert source_class("measured:gemm/fp8/torch@H100-SXM (local)") == "measured"


def test_training_says_where_its_forward_time_came_from(capsys):
    """The summary splits the forward kernels' time by source (shares summing to 1) and names each op kind's source;
    the report prints it in one line. The fp8 example's GEMMs are measured; with the bf16 tables only they are a
    dtype transfer, and that share shows."""
    import yaml

    from moesim.dashboard.cli import main
    from moesim.sim.training.train import run

    examples = Path(__file__).resolve().parent.parent / "examples"
    doc = yaml.safe_load((examples / "train-qwen3-30b-a3b-h100-bridge.yaml").read_text())
    ks = run(dict(doc), base_dir=examples).summary["kernel_sources"]
    assert sum(ks["forward_share"].values()) == pytest.approx(1.0)
    assert ks["forward"]["gemm"].startswith("measured:gemm/fp8/torch")
    assert ks["forward"]["all_to_all"].startswith("deepep-") and ks["forward_share"]["achievable"] > 0.2
    bf16_only = run({**doc, "cost_model": doc["cost_model"][0]}, base_dir=examples).summary["kernel_sources"]
    assert "dtype-transfer bf16->fp8" in bf16_only["forward"]["gemm"]
    assert bf16_only["forward_share"]["transferred"] > ks["forward_share"]["transferred"] + 0.1
    assert main(["train", str(examples / "train-qwen3-30b-a3b-h100-bridge.yaml")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("forward kernel time by source"))
    assert "measured" in line and "achievable" in line and "(all_to_all)" in line


def test_near_tied_candidates_are_averaged_and_survive_a_save(tmp_path):
    """A table whose best cross-validated candidates tie within `fit.TIE` is fitted as their mean (an ``ensemble``
    predictor), which predicts between its members, is saved and loaded with them, and names them in sources."""
    import numpy as np

    from moesim.profiling import fit as fitlib
    from moesim.profiling.calibrate import load, save

    cal = _cal(BF16)
    ens = [f for f in cal.fits if f.predictor.method == "ensemble"]
    assert ens, "the H100 tables have near-tied candidates"
    f = ens[0]
    p = f.predictor
    assert len(p.members) >= 2 and p.label.startswith("ensemble ") and "+" in p.label
    best = min(f.scores.values())
    assert all(f.scores[f"{m}:{k}"] <= best * (1 + fitlib.TIE) for m, k, _ in p.members)
    x = p.x[:5] + 0.3
    parts = [fitlib.fit(m, p.x, p.y, k).predict(x) for m, k, _ in p.members]
    assert np.allclose(p.predict(x), np.mean(parts, axis=0))
    back = load(save(cal, tmp_path / "cal.parquet"))
    q = next(g for g in back.fits if g.key == f.key).predictor
    assert q.members == p.members and np.allclose(q.predict(x), p.predict(x))
    src = CalibratedCostModel(cal).with_extrapolation().op_time(_experts("bf16", 2.0), get_cluster("dgx-h100")).source
    assert "(" in src and ")" in src
