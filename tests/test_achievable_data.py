"""The achievable cost model's figures as GPU data (``model/presets/achievable.yaml``, a ``--hardware`` file's
``achievable:`` block), one source of the achieved DRAM bandwidth, and the block-scaled fp8 kernel (the
activation-quantisation kernel, CUTLASS' fraction and streaming rate)."""

from __future__ import annotations

import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model import get_gpu, make_cluster
from moesim.model.achievable import (
    ACHIEVABLE,
    AchievableCostModel,
    act_quant_op,
    gemm_compute_s,
    is_block_fp8,
    params_for,
    vllm_fp8_tile,
)
from moesim.model.dtypes import FP8_BLOCK_SCALE_BYTES, Precision
from moesim.model.errors import HardwareError
from moesim.model.hardware import PRESET_DIR, list_gpus
from moesim.model.op_record import gemm
from moesim.model.ops import experts_op
from moesim.profiling import transfer

BLOCK_W = 1.0 + FP8_BLOCK_SCALE_BYTES


@pytest.fixture
def one_h100():
    return make_cluster(get_gpu("H100-SXM"), gpus_per_node=1, nodes=1)


def _entry(**achievable) -> dict:
    """A --hardware GPU entry (the H100-SXM datasheet under a new key) with an ``achievable:`` block."""
    base = get_gpu("H100-SXM").model_dump(exclude={"key", "achievable"})
    figs = yaml.safe_load((PRESET_DIR / "achievable.yaml").read_text())["H100-SXM"]
    figs.update(achievable)
    return {"MY-GPU": {**base, "achievable": figs}}


def test_the_figures_are_gpu_data_and_every_preset_row_is_read():
    raw = yaml.safe_load((PRESET_DIR / "achievable.yaml").read_text())
    gpus = list_gpus()
    assert set(raw) <= set(gpus) and set(raw) == set(ACHIEVABLE)
    for key, entry in raw.items():
        assert gpus[key].achievable is not None
        assert ACHIEVABLE[key].dram_bw.value == entry["dram_bw"]["value"]
    assert get_gpu("RTX-4090").achievable is None  # no figures: the visible H100-SXM fallback
    assert params_for(get_gpu("RTX-4090")).reused
    assert get_gpu("B200").achievable is not None and params_for(get_gpu("B200")).reused  # its own, some reused


def test_a_hardware_file_sets_its_own_figures(tmp_path, one_h100):
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(_entry(dram_bw={"value": 1.5e12, "source": "my STREAM run"})))
    gpu = get_gpu("MY-GPU", path)
    p = params_for(gpu)
    assert p.dram_bw.value == 1.5e12 and p.reused == () and AchievableCostModel().source(gpu) == "achievable"
    op = gemm("x", "", 1, 1, 8192, 8192, 2.0, 2.0, "bf16")  # one row: memory-bound
    mine = AchievableCostModel().op_time(op, make_cluster(gpu, gpus_per_node=1, nodes=1)).seconds
    ours = AchievableCostModel().op_time(op, one_h100).seconds
    assert mine - 4.0e-6 == pytest.approx((ours - 4.0e-6) * 3.02 / 1.5, rel=1e-3)
    # a new GPU's own measured bandwidth is the transfer's figure too (one source)
    assert transfer.achieved_bandwidth(gpu) == 1.5e12


def test_a_preset_key_overridden_without_figures_keeps_the_presets(tmp_path):
    entry = get_gpu("H100-SXM").model_dump(exclude={"key", "achievable"})
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump({"H100-SXM": entry}))
    assert get_gpu("H100-SXM", path).achievable == get_gpu("H100-SXM").achievable


@pytest.mark.parametrize(
    ("figure", "value", "needle"),
    [
        ("dram_bw", {"value": -1.0, "source": "x"}, "achievable.dram_bw.value"),
        ("dram_bw", {"value": float("nan"), "source": "x"}, "achievable.dram_bw.value"),
        ("gemm_fraction", {"bf16": {"value": 1.2, "source": "x"}}, "at most 1"),
        ("attention_fraction", {"value": 1.01, "source": "x"}, "at most 1"),
        ("moe_fraction", {"bf16": {"value": 1.5, "source": "x"}}, "moe_fraction.bf16: a fraction"),
        ("kernel_s", {"value": 0.0, "source": "x"}, "achievable.kernel_s.value"),
        ("sms", {"value": 132}, "achievable.sms.source"),
    ],
)
def test_bad_figures_are_one_error_line(tmp_path, capsys, figure, value, needle):
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(_entry(**{figure: value})))
    with pytest.raises(HardwareError) as exc:
        get_gpu("MY-GPU", path)
    assert needle in exc.value.message and "\n" not in exc.value.message and "MY-GPU" in exc.value.message
    code = main(["roofline", "mixtral-8x7b", "--gpu", "MY-GPU", "--hardware", str(path), "--cost-model", "achievable"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len([line for line in err if line.startswith("error:")]) == 1 and "Traceback" not in err


def test_transfer_reads_the_same_bandwidths():
    for key, (bw, _) in transfer.ACHIEVED_BW.items():
        assert ACHIEVABLE[key].dram_bw.value == bw and not get_gpu(key).achievable.dram_bw.reused
    assert "H800" not in transfer.ACHIEVED_BW  # its figure is the H100's, reused: no measurement of its own


def test_block_scaled_fp8_gemm_quantises_its_input_then_runs_at_cutlass_rate(one_h100):
    m, n, k = 4096, 7168, 16384
    blk = gemm("x", "", 1, m, n, k, BLOCK_W, 2.0, "fp8")
    per = gemm("x", "", 1, m, n, k, 1.0, 2.0, "fp8")
    assert is_block_fp8(blk) and not is_block_fp8(per)
    h100 = ACHIEVABLE["H100-SXM"]
    assert h100.gemm("fp8_block") == pytest.approx(1358 / 1.2 / 1978.9)  # DeepGEMM's CUTLASS baseline
    t = AchievableCostModel().op_time(blk, one_h100)
    quant = 2 * 4.0e-6 + m * k * (2.0 + 1.0 + 4.0 / 128) / 3.02e12
    compute = gemm_compute_s(m, n, k, 1978.9e12, h100.gemm("fp8_block"), 132)
    assert t.seconds == pytest.approx(quant + compute) and t.bound == "compute"
    assert t.seconds > AchievableCostModel().op_time(per, one_h100).seconds
    # one row: the weights stream at the block-scaled kernel's rate (1.906 TB/s), not the copy's 3.02 TB/s
    row = gemm("x", "", 1, 1, n, k, BLOCK_W, 2.0, "fp8")
    t1 = AchievableCostModel().op_time(row, one_h100)
    quant = 4.0e-6 + k * (2.0 + 1.0 + 4 / 128) / 3.02e12
    gemm_s = 4.0e-6 + row.weight_bytes / 1.906e12 + (row.bytes - row.weight_bytes) / 3.02e12
    assert t1.seconds == pytest.approx(quant + gemm_s) and t1.bound == "memory"


def test_block_scaled_fused_moe_adds_one_quantisation_kernel_per_gemm(one_h100):
    blk = experts_op(64, 7168, 2048, 8, 32, 1, Precision(weights="fp8_block"), "fp8", balanced=True)
    per = experts_op(64, 7168, 2048, 8, 32, 1, Precision(weights="fp8"), "fp8", balanced=True)
    assert is_block_fp8(blk)
    tb, tp = AchievableCostModel().op_time(blk, one_h100), AchievableCostModel().op_time(per, one_h100)
    quants = act_quant_op("q", 64, 7168, 2.0).bytes + act_quant_op("q", 64 * 8, 2048, 2.0).bytes
    assert tb.seconds >= tp.seconds + 2 * 4.0e-6 + quants / 3.02e12 - 1e-12


def test_per_tensor_fp8_runs_the_tile_vllms_dispatch_picks(one_h100):
    tiles = [vllm_fp8_tile(m, 4096) for m in (1, 16, 64, 128, 129)]
    assert tiles == [(16, 64), (16, 64), (64, 64), (64, 128), (128, 128)]
    assert vllm_fp8_tile(64, 1280) == (16, 64)
    # m = 1024, n = 256: 8 x 2 tiles of 128 x 128 fill 16 of 132 SMs (no split-K): slower than the best tile
    op = gemm("x", "", 1, 1024, 256, 16384, 1.0, 2.0, "fp8")
    frac = ACHIEVABLE["H100-SXM"].gemm("fp8")
    fixed = gemm_compute_s(1024, 256, 16384, 1978.9e12, frac, 132, tiles=((128, 128),))
    assert AchievableCostModel().op_time(op, one_h100).compute_s == pytest.approx(fixed)
    assert fixed > gemm_compute_s(1024, 256, 16384, 1978.9e12, frac, 132)
