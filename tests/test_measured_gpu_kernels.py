"""Measured kernel figures of the L40S and the H200 in the achievable cost model (`model/presets/achievable.yaml`,
RESULTS section 34): the L40S's GEMMs and FA2 decode stream at what vLLM's kernels reach on a real L40S, not at the
L40's STREAM triad, and its GEMMs reach their measured fraction of the peak, not the H100's; the H200's GEMMs of a
few rows stream at their measured rate, above the store stream its other kernels keep.

The measured times quoted below are rows of AIConfigurator's tables (ai-dynamo/aiconfigurator 0.8.0,
``systems/data/l40s/vllm/0.14.0`` and ``h200_sxm/vllm/0.12.0``, Apache-2.0), which are not in this repository; the
figures were fitted on hundreds of rows (``python -m benchmarks.a100_kernels --aic-l40s DIR --aic-h200 DIR``) and
these few rows check them by hand."""

from __future__ import annotations

import dataclasses

import pytest

from moesim.model import get_gpu, make_cluster
from moesim.model.achievable import ACHIEVABLE, AchievableCostModel, decode_attention
from moesim.model.attention_ops import kv_write_op
from moesim.model.hardware import AchievedFigure
from moesim.profiling.opshapes import row_op

L40S = get_gpu("L40S")
ONE = make_cluster(L40S, num_gpus=1)


def _gemm_s(params, m: int, n: int, k: int, dtype: str = "fp16") -> float:
    cm = AchievableCostModel({"L40S": params})
    return cm.op_time(row_op("gemm", {"dtype": dtype, "m": m, "n": n, "k": k}), ONE).seconds


def test_l40s_figures_are_measured_not_borrowed():
    """Its streaming rates and GEMM fractions come from its own tables; what is still borrowed says so."""
    p = ACHIEVABLE["L40S"]
    assert p.dram_bw.value == pytest.approx(0.708e12) and "l40s/vllm/0.14.0" in p.dram_bw.source
    assert p.gemm_bw is not None and p.gemm_bw.value == pytest.approx(0.7045e12)
    assert p.gemm_fraction["bf16"].value == p.gemm_fraction["fp16"].value == pytest.approx(0.7378)
    # fp8 keeps the H100's figure and says why: the collector's fp8 rows are not vLLM's fp8 GEMM alone
    assert p.gemm_fraction["fp8"].value == ACHIEVABLE["H100-SXM"].gemm_fraction["fp8"].value
    assert any(r.startswith("gemm_fraction.fp8") and "1,435" in r for r in p.reused)
    assert p.fa2_decode() is not None and p.fa2_decode().ctas_per_sm == 1
    reused = " ".join(p.reused)
    assert "kernel_s" in reused or "H100-SXM" in reused  # the per-kernel floor is still the H100's
    assert not any(r.startswith(("dram_bw", "gemm_bw", "gemm_fraction.bf16", "gemm_fraction.fp16")) for r in p.reused)


def test_l40s_decode_gemm_streams_at_its_measured_rate():
    """A 16-row GEMM of 1 GB of weights (16 x 65,536 x 8,192) is its bytes at ``gemm_bw`` plus one kernel's fixed
    time: 1.532 ms, where vLLM's measured 1.527 ms and the L40's triad gave 1.349 ms (-12%)."""
    p = ACHIEVABLE["L40S"]
    m, n, k = 16, 65536, 8192
    nbytes = (m * k + k * n + m * n) * 2.0
    t = _gemm_s(p, m, n, k)
    assert t == pytest.approx(p.kernel_s.value + nbytes / 0.7045e12, rel=1e-9)
    assert t == pytest.approx(1.5271e-3, rel=0.02)
    old = dataclasses.replace(p, dram_bw=AchievedFigure(value=0.80e12, source="L40 triad"), gemm_bw=None)
    assert _gemm_s(old, m, n, k) < 0.9 * 1.5271e-3


def test_l40s_compute_bound_gemm_at_its_measured_fraction():
    """8,192^3 in 16 bits: 4.05 ms measured (272 TFLOP/s, 75% of the 362 TFLOP/s peak); at 73.8% the achievable
    model gives 4.14 ms (+2.4%; its tiles and waves on 142 SMs), at the H100's 84% it gave 3.63 ms (-10%)."""
    p = ACHIEVABLE["L40S"]
    t = _gemm_s(p, 8192, 8192, 8192)
    assert t == pytest.approx(4.0455e-3, rel=0.03)
    h100 = ACHIEVABLE["H100-SXM"].gemm_fraction
    old = dataclasses.replace(p, gemm_fraction={"bf16": h100["bf16"], "fp16": h100["bf16"], "fp8": h100["fp8"]})
    assert _gemm_s(old, 8192, 8192, 8192) < 0.92 * 4.0455e-3


def test_l40s_decode_attention_streams_at_its_measured_rate():
    """64 sequences of 4,095 keys, 32 query and 8 KV heads of 128 (1.07 GB of cache): FA2's decode plus the KV write
    that AIConfigurator's timing holds, 1.53 ms at 0.708 TB/s against 1.496 ms measured (at 0.80 TB/s: 1.35 ms)."""
    p = ACHIEVABLE["L40S"]
    op = row_op("attention", {"dtype": "fp16", "batch": 64, "q_len": 1, "kv_len": 4095, "heads": 32,
                              "kv_heads": 8, "head_dim": 128})  # fmt: skip
    write = kv_write_op("x", 1, 64, 8 * 2 * 128, 2.0, 2.0, "fp16")

    def total(params) -> float:
        rate = L40S.peak("fp16") * params.attention_fraction.value
        d = decode_attention(op, params.dram_bw.value, 142, params.attention_cta_blocks.value, rate,
                             params.fa2_decode())  # fmt: skip
        cm = AchievableCostModel({"L40S": params})
        return d.seconds + d.combine_s + d.kernels * params.kernel_s.value + cm.op_time(write, ONE).seconds

    assert total(p) == pytest.approx(1.4963e-3, rel=0.05)
    old = dataclasses.replace(p, dram_bw=AchievedFigure(value=0.80e12, source="L40 triad"))
    assert total(old) < 0.92 * 1.4963e-3
    # the cache's bytes at the device's rate bound it from below: the kernel is memory-bound here
    assert total(p) >= 64 * 4096 * 8 * 128 * 2 * 2 / p.dram_bw.value


def test_h200_decode_gemm_streams_at_its_measured_rate():
    """On the H200 a 16-row GEMM of 1 GB of weights takes 4 us + bytes / 4.086 TB/s = 0.267 ms (measured 0.264 ms),
    where the store stream's 3.90 TB/s, which its other kernels keep, gave 0.280 ms (+6%); its GEMM fraction stays
    the H100's (the same die: the fit over the compute-bound rows comes from mid-size shapes, section 34)."""
    h200 = get_gpu("H200-SXM")
    cl = make_cluster(h200, num_gpus=1)
    p = ACHIEVABLE["H200-SXM"]
    assert p.gemm_bw is not None and p.gemm_stream_bw() == pytest.approx(4.086e12)
    assert p.gemm_stream_bw() > p.dram_bw.value
    assert p.gemm_fraction["bf16"].value == ACHIEVABLE["H100-SXM"].gemm_fraction["bf16"].value
    m, n, k = 16, 65536, 8192
    op = row_op("gemm", {"dtype": "fp16", "m": m, "n": n, "k": k})
    t = AchievableCostModel().op_time(op, cl)
    assert t.seconds == pytest.approx(p.kernel_s.value + (m * k + k * n + m * n) * 2.0 / 4.086e12, rel=1e-9)
    assert t.seconds == pytest.approx(0.26383e-3, rel=0.03)
    old = dataclasses.replace(p, gemm_bw=None)
    assert AchievableCostModel({"H200-SXM": old}).op_time(op, cl).seconds > 1.05 * 0.26383e-3
    # a norm (not a GEMM) still streams at dram_bw
    norm = row_op("memcpy", {"dtype": "fp16", "bytes": 1e9})
    assert AchievableCostModel().op_time(norm, cl).memory_s == pytest.approx(2e9 / p.dram_bw.value, rel=1e-9)


def test_b200_has_its_own_figures():
    """The B200 had no preset (the H100's fractions and 132 SMs on its datasheet); now its 148 SMs, its GEMMs'
    streaming rate (6.573 TB/s) and 16-bit fraction (75.0%) are its own, the rest says whose it reuses. 16,384^3 in
    16 bits: measured 5.70 ms; 5.22 ms now (-8%), 4.66 ms before (-18%)."""
    from moesim.model.achievable import _fallback

    b200 = get_gpu("B200")
    cl = make_cluster(b200, num_gpus=1)
    p = ACHIEVABLE["B200"]
    assert p.sms.value == 148 and p.gemm_stream_bw() == pytest.approx(6.573e12)
    assert p.gemm_fraction["bf16"].value == p.gemm_fraction["fp16"].value == pytest.approx(0.7495)
    reused = " ".join(p.reused)
    assert "attention_fraction" in reused and "FlashInfer" in reused and "dram_bw" in reused
    op = row_op("gemm", {"dtype": "fp16", "m": 16384, "n": 16384, "k": 16384})
    now = AchievableCostModel().op_time(op, cl).seconds
    before = AchievableCostModel({"B200": _fallback("B200", b200.memory_bandwidth)}).op_time(op, cl).seconds
    assert now == pytest.approx(5.702e-3, rel=0.10)
    assert before < 0.85 * 5.702e-3
