"""The achievable cost model (`model.achievable`): each mechanism pinned by hand, the roofline as its lower bound,
the visible fallback for a GPU without figures, and its selection by name everywhere a cost model is chosen."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model import Batch, Layout, RooflineCostModel, decompose, estimate_step, get_gpu, load_model, make_cluster
from moesim.model.a2a import is_deepep
from moesim.model.achievable import (
    ACHIEVABLE,
    GEMM_TILE_K,
    AchievableCostModel,
    gemm_compute_s,
    grouped_gemm_compute_s,
    named_cost_model,
    params_for,
)
from moesim.model.allreduce import applies as engine_allreduce_applies
from moesim.model.dtypes import Precision
from moesim.model.op_record import collective, gemm, memory_op
from moesim.model.ops import experts_gemms, experts_op

ROOT = Path(__file__).resolve().parents[1]
H100 = ACHIEVABLE["H100-SXM"]


@pytest.fixture
def one_h100():
    return make_cluster(get_gpu("H100-SXM"), gpus_per_node=1, nodes=1)


def test_memory_op_is_fixed_time_plus_bytes_at_the_achievable_bandwidth(one_h100):
    op = memory_op("norm", "norm", "", 1, flops=0.0, read=3e8, written=1e8, dtype="bf16", shape={}, kernels=1)
    t = AchievableCostModel().op_time(op, one_h100)
    assert H100.dram_bw.value == 3.02e12 and H100.kernel_s.value == 4.0e-6
    assert t.seconds == pytest.approx(4.0e-6 + 4e8 / 3.02e12)
    assert t.bound == "memory" and t.source == "achievable"


def test_fixed_time_is_paid_once_per_kernel_and_can_bind(one_h100):
    tiny = memory_op("x", "norm", "", 1, flops=0.0, read=1024.0, written=0.0, dtype="bf16", shape={}, kernels=3)
    t = AchievableCostModel().op_time(tiny, one_h100)
    assert t.seconds == pytest.approx(3 * 4.0e-6 + 1024 / 3.02e12)
    assert t.bound == "kernel"


def test_gemm_tile_and_wave_quantisation_by_hand():
    peak, frac, sms = 1000e12, 0.8, 132
    per_sm = frac * peak / sms
    # 132 tiles of 256x128 fill one wave exactly: the time is the FLOPs at fraction x peak
    m, n, k = 256 * 12, 128 * 11, 4096
    assert gemm_compute_s(m, n, k, peak, frac, sms) == pytest.approx(2.0 * m * n * k / (frac * peak))
    # one row more: some tile choice needs a second wave or pads; never faster than the aligned shape
    assert gemm_compute_s(m + 1, n, k, peak, frac, sms) > gemm_compute_s(m, n, k, peak, frac, sms)
    # a single row still pays a whole 64x64 tile over K padded to GEMM_TILE_K
    t1 = gemm_compute_s(1, 64, 100, peak, frac, sms)
    assert t1 == pytest.approx(2.0 * 64 * 64 * math.ceil(100 / GEMM_TILE_K) * GEMM_TILE_K / per_sm)
    assert gemm_compute_s(0, 64, 64, peak, frac, sms) == 0.0
    # waves: 133 tiles of the best shape take two waves when no tile fits in one
    assert gemm_compute_s(64 * 133, 64, 64, peak, frac, sms) == pytest.approx(
        min(
            math.ceil(math.ceil(64 * 133 / tm) * math.ceil(64 / tn) / sms) * 2.0 * tm * tn * 64 / per_sm
            for tm, tn in ((256, 128), (128, 256), (128, 128), (128, 64), (64, 128), (64, 64))
        )
    )


def test_grouped_gemm_pads_each_experts_rows_to_the_block():
    per_sm, sms = 1e12, 132
    # 8 experts, 8 rows in all: each expert's one row padded to a 16-row block; 4 column blocks of 32
    t = grouped_gemm_compute_s(8, 8, 128, 64, 16, 32, per_sm, sms)
    assert t == pytest.approx(1 * 2.0 * 16 * 32 * 64 / per_sm)  # 32 tiles: one wave
    assert grouped_gemm_compute_s(0, 8, 128, 64, 16, 32, per_sm, sms) == 0.0


def test_compute_bound_gemm_runs_at_the_published_fraction(one_h100):
    op = gemm("big", "", 1, 256 * 12, 128 * 11, 8192, 2.0, 2.0, "bf16")
    t = AchievableCostModel().op_time(op, one_h100)
    expect = 4.0e-6 + op.flops / (H100.gemm("bf16") * 989.4e12)
    assert t.seconds == pytest.approx(expect)
    assert H100.gemm("bf16") == pytest.approx(832 / 989.4) and H100.gemm("fp8") == pytest.approx(1476 / 1978.9)
    assert t.bound == "compute"


def test_attention_cta_model_by_hand(one_h100):
    m = load_model("llama-3.1-8b")
    ops = decompose(m, Batch.prefill(4, 8192), Layout(), one_h100)
    att = next(o for o in ops if o.kind == "attention")
    t = AchievableCostModel().op_time(att, one_h100)
    rate, c = 629.5e12, 1.83
    assert H100.attention_fraction.value * 989.4e12 == pytest.approx(rate) and H100.attention_cta_blocks.value == c
    pairs = 4 * 8192 * 8193 // 2
    n_mean = pairs / (4 * 64 * 128 * 128)  # 64 query blocks per sequence, 128 x 128 pairs per block
    balanced = att.flops / rate * (n_mean + c) / n_mean  # 8,192 CTAs fill the 132 SMs
    longest = (8192 / 128 + c) * 2 * (128 + 128) * 128 * 128 / (rate / 132)  # the last query block: 64 key blocks
    assert t.seconds == pytest.approx(4.0e-6 + max(balanced, longest))
    # short sequences lose more to each CTA's fixed blocks: a lower achieved rate
    short = next(o for o in decompose(m, Batch.prefill(64, 512), Layout(), one_h100) if o.kind == "attention")
    t_short = AchievableCostModel().op_time(short, one_h100)
    assert short.flops / t_short.compute_s < att.flops / t.compute_s < rate
    # decode: the FLOPs at the rate, the KV read at the achievable bandwidth (memory-bound)
    dec = next(o for o in decompose(m, Batch.decode(8, 4096), Layout(), one_h100) if o.kind == "attention")
    td = AchievableCostModel().op_time(dec, one_h100)
    assert td.compute_s == pytest.approx(dec.flops / rate) and td.bound == "memory"
    assert ACHIEVABLE["A100-SXM-80GB"].attention_fraction.value == 0.5894  # measured: vLLM's causal FA2 prefill


def test_fused_moe_is_timed_kernel_by_kernel(one_h100):
    p = Precision()
    op = experts_op(1, 4096, 14336, 2, 8, 1, p, "bf16", balanced=True)
    t = AchievableCostModel().op_time(op, one_h100)
    # one token: weight streaming of two experts plus one fixed time per kernel of the layer
    assert t.seconds >= op.kernels * 4.0e-6 + op.weight_bytes / 3.02e12
    assert t.seconds == pytest.approx(op.kernels * 4.0e-6 + op.bytes / 3.02e12, rel=0.02)
    two = experts_gemms(op)  # training's experts: the two grouped GEMMs only
    assert AchievableCostModel().op_time(two, one_h100).seconds < t.seconds


def test_never_faster_than_the_roofline_and_links_unchanged(cluster8):
    rm, am = RooflineCostModel(), AchievableCostModel()
    for model, batch, lay in (
        ("mixtral-8x7b", Batch.decode(64, 2048), Layout(tp=8)),
        ("mixtral-8x7b", Batch.prefill(4, 4096), Layout(tp=2, ep=4, dp_attn=4)),
        ("deepseek-v3", Batch.decode(32, 1024), Layout(tp=1, ep=8, dp_attn=8)),
    ):
        for op in decompose(load_model(model), batch, lay, cluster8):
            r, a = rm.op_time(op, cluster8), am.op_time(op, cluster8)
            if engine_allreduce_applies(op, cluster8):  # the engine's custom all-reduce: its published times
                assert "custom all-reduce" in a.source, op.name
                continue
            assert a.seconds >= r.seconds * (1 - 1e-12), op.name
            assert a.link_s == pytest.approx(r.link_s)
            if is_deepep(op) or (not op.flops and not op.bytes):
                assert a.seconds == pytest.approx(r.seconds)  # collectives and DeepEP: the roofline's link model
    ar = collective("ar", "all_reduce", "", 1, 1e6, 8, 8)
    assert ar is not None and am.op_time(ar, cluster8).seconds == pytest.approx(rm.op_time(ar, cluster8).seconds)


def test_unknown_gpu_falls_back_visibly(cluster8, one_h100):
    p = params_for(cluster8.gpu)  # TEST-GPU: not a preset with figures
    assert p.reused and "TEST-GPU" in p.reused[0] and "H100-SXM" in p.reused[0]
    assert p.dram_bw.value == pytest.approx(4e12 * 3.02e12 / 3.35e12)
    op = memory_op("x", "norm", "", 1, flops=0.0, read=1e9, written=0.0, dtype="bf16", shape={})
    t = AchievableCostModel().op_time(op, cluster8)
    assert t.source.startswith("achievable:reused") and "TEST-GPU" in t.source
    b200 = make_cluster(get_gpu("B200"), gpus_per_node=1, nodes=1)
    assert "B200" in AchievableCostModel().op_time(op, b200).source
    assert AchievableCostModel().op_time(op, one_h100).source == "achievable"
    # a GPU that borrows some figures says which
    assert any("H100-SXM" in r for r in ACHIEVABLE["L40S"].reused)
    assert ACHIEVABLE["H100-SXM"].reused == ()


def test_gpu_without_a_bandwidth_is_one_hardware_error(h100):
    from moesim.model.errors import HardwareError

    blind = make_cluster(h100.model_copy(update={"key": "BLIND", "memory_bandwidth": None}), num_gpus=1)
    op = memory_op("x", "norm", "", 1, flops=0.0, read=1e6, written=0.0, dtype="bf16", shape={})
    with pytest.raises(HardwareError, match="memory bandwidth unknown"):
        AchievableCostModel().op_time(op, blind)


def test_every_figure_has_a_source_and_a_sane_value():
    for key, p in ACHIEVABLE.items():
        gpu = get_gpu(key)
        assert p.gpu == key
        assert 0 < p.dram_bw.value <= gpu.bandwidth(), key
        for fig in (p.dram_bw, p.attention_fraction, p.sms, p.kernel_s, *p.gemm_fraction.values()):
            assert fig.source.strip(), key
        assert all(0 < f.value <= 1 for f in (p.attention_fraction, *p.gemm_fraction.values())), key
        assert 0 < p.kernel_s.value < 1e-4 and p.sms.value >= 1


def test_a_step_is_slower_than_the_roofline_and_says_achievable(one_h100):
    m = load_model("llama-3.1-8b")
    roof = estimate_step(m, Batch.decode(32, 1024), Layout(), one_h100)
    ach = estimate_step(m, Batch.decode(32, 1024), Layout(), one_h100, cost_model=AchievableCostModel())
    assert ach.cost_model == "achievable" and set(ach.table()["source"]) == {"achievable"}
    assert 1.05 < ach.step_s / roof.step_s < 3.0


def test_selected_by_name(tmp_path, capsys):
    from moesim.dashboard.cli.roofline import load_cost_model, mode_label

    assert isinstance(load_cost_model("achievable"), AchievableCostModel)
    assert isinstance(load_cost_model(Path("achievable")), AchievableCostModel)
    assert load_cost_model("roofline") is None and load_cost_model(None) is None
    assert named_cost_model("roofline") is None and mode_label("achievable") == "achievable"
    rc = main(["roofline", "llama-3.1-8b", "--batch", "8", "--cost-model", "achievable", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["cost_model"] == "achievable"


def test_scenarios_resolve_cost_model_achievable(tmp_path):
    from moesim.sim.serving.serve import load
    from moesim.sim.training.train import load as load_train

    sc = yaml.safe_load((ROOT / "examples" / "mixtral-8x7b-tp8.yaml").read_text())
    sc["cost_model"] = "achievable"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sc))
    assert load(tmp_path / "s.yaml").cost_model.name == "achievable"
    sc["cost_model"] = "roofline"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(sc))
    assert load(tmp_path / "r.yaml").cost_model is None
    tr = yaml.safe_load((ROOT / "examples" / "train-mixtral-8x7b-h100.yaml").read_text())
    tr["cost_model"] = "achievable"
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(tr))
    assert load_train(tmp_path / "t.yaml").cost_model.name == "achievable"


def test_bad_cost_model_name_is_one_error_line(capsys):
    rc = main(["roofline", "llama-3.1-8b", "--cost-model", "achieveable"])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1
