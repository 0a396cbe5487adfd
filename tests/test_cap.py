"""CAP metrics: S-MBU and S-MFU in both modes against hand-worked examples; cost; accuracy."""

from __future__ import annotations

import pytest

from moesim.model import (
    Batch,
    CostAssumptions,
    HardwareSpec,
    Layout,
    MoesimError,
    NodeSpec,
    Precision,
    accuracy_for,
    cap_metrics,
    estimate_step,
    load_accuracy,
    load_model,
    usd_per_gpu_second,
    utilisation_exact,
    utilisation_moecap,
)


def gpu(bw: float, bf16: float) -> HardwareSpec:
    return HardwareSpec(
        key="G",
        name="g",
        vendor="nvidia",
        peak_flops={"bf16": bf16},
        memory_gib=80,
        memory_bandwidth=bw,
        tdp_w=700,
        node=NodeSpec(gpus_per_node=8, intra_bw=1e11, intra_latency_s=0, inter_bw=1e10, inter_latency_s=0),
    )


def test_moecap_mixtral_decode_by_hand():
    """MoE-CAP's default path: decode B=8 at 1024 tokens of context, 20 ms per step, H100 peaks
    as in its table (3.35 TB/s; 1979 TFLOP/s with sparsity, halved), 8 experts activated."""
    h100 = gpu(3.35e12, 1979e12 / 2)
    u = utilisation_moecap(load_model("mixtral-8x7b"), Batch.decode(8, 1023), h100, 0.020, 1, expert_activation=8.0)
    attention = 4096 * (32 * 128 + 8 * 128 * 2) + 32 * 128 * 4096
    expert = 14336 * 3 * 4096
    seq_lens_sum = 8 * 1024  # SGLang's running context, current token included
    kv = seq_lens_sum * 2 * 32 * 128 * 8
    smbu = (32 * (8 * expert + attention) + kv) * 2 / 0.020 / 3.35e12
    score = seq_lens_sum * 32 * 32 * 128 * 2
    smfu = (32 * (attention + expert) + score) * 2 * (8 / 0.020) / (1979e12 / 2)
    assert u.smbu == pytest.approx(smbu) and u.smbu == pytest.approx(1.4023, abs=1e-4)
    assert u.smfu == pytest.approx(smfu) and u.smfu == pytest.approx(0.0073789, abs=1e-7)


def test_moecap_deepseek_v2_lite_by_hand():
    """MoE-CAP's DeepSeek path: two shared experts hard-coded, dense layer 0, MLA weights,
    the activated-expert count averaged over all 27 layers (6 x 26 / 27 at batch 1)."""
    a100 = gpu(2.039e12, 624e12 / 2)
    u = utilisation_moecap(load_model("deepseek-v2-lite"), Batch.decode(1, 511), a100, 0.015, 1)
    attention = 2048 * 576 + 512 * 16 * 256 + 128 * 16 * 2048 + 2048 * 16 * 192
    expert, shared, dense = 1408 * 3 * 2048, 2 * 1408 * 3 * 2048, 10944 * 3 * 2048
    e_act = 6 * 26 / 27
    kv = 512 * 27 * 576
    smbu = (27 * attention + 26 * (e_act * expert + shared) + dense + kv) * 2 / 0.015 / 2.039e12
    score = 512 * 27 * 16 * (128 + 64) + 512 * 27 * 16 * 128
    smfu = (27 * attention + 26 * (expert + shared) + dense + score) * 2 * (1 / 0.015) / 312e12
    assert u.smbu == pytest.approx(smbu) and u.smbu == pytest.approx(0.14361, abs=1e-5)
    assert u.smfu == pytest.approx(smfu) and u.smfu == pytest.approx(5.061e-4, abs=1e-7)


def test_exact_mixtral_decode_by_hand():
    """moesim's exact mode: one token, top-2 experts, every weight it reads, KV read and written."""
    g = gpu(4e12, 1000e12)
    ctx = 1000
    u = utilisation_exact(load_model("mixtral-8x7b"), Batch.decode(1, ctx), g, 0.01, 1)
    attention = 4096 * (4096 + 2 * 1024) + 4096 * 4096
    expert = 3 * 4096 * 14336
    router = 4096 * 8
    head = 32000 * 4096
    norms = (2 * 32 + 1) * 4096  # two RMSNorm weights per layer and the final norm's
    weights = 32 * (attention + 2 * expert + router) + head + 4096 + norms  # + one embedding row
    kv = 32 * (ctx + 2) * 8 * 256  # read ctx + 1 tokens, write 1, per layer
    assert u.bytes == pytest.approx(2 * (weights + kv))
    # the memory-bound kernels' arithmetic (model.ops): per layer two fused add+RMSNorms (5 per element), rotary
    # embedding of 32 q and 8 k heads (3 per element), top-2 softmax over 8 experts (5 + 2 per logit),
    # SiLU-and-multiply of both experts (5 per element), the routing weight and moe_sum (1 each per pair and
    # element); then the final norm and the greedy sampler's arg-max over the vocabulary
    small = 32 * (2 * 5 * 4096 + 3 * 40 * 128 + 8 * 7 + 5 * 2 * 14336 + 2 * 2 * 4096) + 5 * 4096 + 32000
    flops = 2 * (32 * (attention + 2 * expert + router) + head) + 32 * 2 * (ctx + 1) * 32 * 256 + small
    assert u.flops == pytest.approx(flops)
    assert u.smbu == pytest.approx(u.bytes / 0.01 / 4e12)
    assert u.smfu == pytest.approx(flops / 0.01 / 1000e12)


def test_modes_differ_where_moecap_has_quirks():
    g = gpu(4e12, 1000e12)
    v3 = load_model("deepseek-v3")
    b = Batch.decode(1, 100)
    exact, moecap = utilisation_exact(v3, b, g, 0.05, 8), utilisation_moecap(v3, b, g, 0.05, 8)
    # MoE-CAP counts one routed expert's FLOPs per token (not 8) and two shared experts (V3 has one)
    assert moecap.flops < exact.flops
    assert utilisation_moecap(load_model("llama-3-8b"), b, g, 0.05, 1) is None


def test_cost_by_hand(h100, cluster8):
    est = estimate_step(load_model("mixtral-8x7b"), Batch.decode(64, 2048), Layout(tp=8), cluster8)
    cap = cap_metrics(est, CostAssumptions(pricing="cloud"))
    assert cap.usd_per_mtok == pytest.approx(8 * 3.6 / 3600 * est.step_s / 64 * 1e6)
    assert cap.energy_j_per_token == pytest.approx(8 * 700 * est.step_s / 64)
    per_s, basis = usd_per_gpu_second(h100, CostAssumptions(pricing="capex", years=5, utilisation=0.5))
    assert per_s == pytest.approx(30000 / (5 * 365.25 * 86400 * 0.5) + 0.7 * 1.56 * 0.08 / 3600)
    assert "capex" in basis
    with pytest.raises(MoesimError, match="utilisation"):
        CostAssumptions(utilisation=1.5)


def test_accuracy_table(tmp_path):
    df = load_accuracy()
    assert len(df) >= 100
    assert df["source"].str.startswith("http").all()
    assert df["score"].between(0, 100).all()
    assert len(accuracy_for("mixtral-8x7b", "bf16", df)) > 0
    assert len(accuracy_for("gpt-oss-120b", "fp4", df)) > 0  # published as mxfp4
    extra = tmp_path / "mine.csv"
    extra.write_text(
        "model,precision,benchmark,setting,score,source,note\n"
        "mixtral-8x7b,int4,MMLU,5-shot,68.0,https://example.org/eval,our run\n"
    )
    merged = load_accuracy(extra)
    assert len(merged) == len(df) + 1
    bad = tmp_path / "bad.csv"
    bad.write_text("model,precision,benchmark,setting,score,source,note\nx,bf16,MMLU,,high,u,\n")
    with pytest.raises(MoesimError, match="line 2: score 'high'"):
        load_accuracy(bad)
    (tmp_path / "cols.csv").write_text("model,score\nx,1\n")
    with pytest.raises(MoesimError, match="missing columns"):
        load_accuracy(tmp_path / "cols.csv")


def test_exact_peak_follows_precision():
    g = gpu(4e12, 1000e12)
    g = g.model_copy(update={"peak_flops": {"bf16": 1000e12, "fp8": 2000e12}})
    u = utilisation_exact(load_model("mixtral-8x7b"), Batch.decode(4, 10), g, 0.01, 1, Precision(weights="fp8"))
    assert u.peak_dtype == "fp8"
