"""Memory per GPU: weights under a layout, KV cache, verdicts."""

from __future__ import annotations

import pytest

from moesim.model import (
    Batch,
    Layout,
    Precision,
    count_params,
    estimate_memory,
    get_gpu,
    kv_bytes_per_token,
    load_model,
    weight_bytes_per_gpu,
)


def test_single_gpu_weights_are_the_checkpoint():
    for name in ("mixtral-8x7b", "deepseek-v3", "qwen1.5-moe-a2.7b"):
        m = load_model(name)
        assert sum(weight_bytes_per_gpu(m, Layout(), Precision())[0].values()) == 2 * count_params(m).total


def test_mixtral_tp8_weights_by_hand():
    m = load_model("mixtral-8x7b")
    c = count_params(m)
    replicated = 32 * (4096 * 8 + 2 * 4096) + 4096  # router, layer norms, final norm
    expected = ((c.total - replicated) / 8 + replicated) * 2
    assert sum(weight_bytes_per_gpu(m, Layout(tp=8), Precision())[0].values()) == pytest.approx(expected)


def test_quantized_weights_keep_embeddings_16_bit():
    m = load_model("mixtral-8x7b")
    w = weight_bytes_per_gpu(m, Layout(), Precision(weights="fp8"))[0]
    assert w["embeddings"] == 2 * 2 * 32000 * 4096
    assert w["routed_experts"] == count_params(m).by_component["routed_experts"] * 1.0


def test_kv_per_token():
    mixtral = load_model("mixtral-8x7b")
    assert kv_bytes_per_token(mixtral, Layout(), Precision()) == 32 * 8 * 256 * 2
    assert kv_bytes_per_token(mixtral, Layout(tp=8), Precision()) == 32 * 1 * 256 * 2
    assert kv_bytes_per_token(mixtral, Layout(tp=16), Precision()) == 32 * 1 * 256 * 2  # replicated
    v3 = load_model("deepseek-v3")
    mla = 61 * (512 + 64) * 2
    assert kv_bytes_per_token(v3, Layout(), Precision()) == mla
    assert kv_bytes_per_token(v3, Layout(tp=8), Precision()) == mla  # MLA latent is not sharded
    assert kv_bytes_per_token(v3, Layout(), Precision(kv_cache="fp8")) == mla / 2


def test_sliding_window_caps_kv():
    oss = load_model("gpt-oss-120b")
    est = estimate_memory(oss, Layout(), get_gpu("H100-SXM"), Precision(weights="fp4"), Batch.decode(1, 10000))
    per_layer = 8 * 128 * 2
    assert est.kv_bytes == pytest.approx(per_layer * (18 * 10001 + 18 * 128))


def test_verdicts():
    h100 = get_gpu("H100-SXM")
    big = estimate_memory(load_model("deepseek-v3"), Layout(tp=8), h100)
    assert not big.fits and big.verdict.startswith("does not fit") and "short by" in big.verdict and big.fix
    ok = estimate_memory(load_model("mixtral-8x7b"), Layout(tp=8), h100, batch=Batch.decode(64, 2048))
    assert ok.fits and ok.verdict.startswith("fits") and ok.kv_capacity_tokens > 64 * 2049
    full = estimate_memory(load_model("mixtral-8x7b"), Layout(tp=2), h100, batch=Batch.decode(512, 32000))
    assert not full.fits and "KV cache" in full.verdict and "--kv-dtype fp8" in full.fix


def test_the_fix_suggests_only_a_smaller_weight_dtype():
    """The "does not fit" hint names a smaller --dtype only where one exists: bf16 weights get fp8 and int4,
    fp8 (block-scaled too) only int4, int4 none."""
    model, gpu = load_model("mixtral-8x7b"), get_gpu("RTX-4090")
    fixes = {w: estimate_memory(model, Layout(), gpu, Precision(weights=w)).fix for w in ("bf16", "fp8_block", "int4")}
    assert "a smaller --dtype (fp8, int4)" in fixes["bf16"]
    assert "a smaller --dtype (int4)" in fixes["fp8_block"]
    assert "--dtype" not in fixes["int4"] and fixes["int4"].endswith("or a GPU with more memory")
