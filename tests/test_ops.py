"""The operator model against hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.model import Batch, Layout, LayoutError, Precision, decompose, load_model, make_cluster


def by_name(ops, name):
    found = [op for op in ops if op.name == name]
    assert found, f"no op {name}"
    return found[0]


def test_gemm_flops_and_bytes_by_hand(cluster8):
    # Mixtral-8x7B, TP8, decode B=64: qkv is [64 x 4096] @ [4096 x (4 q + 1 k + 1 v heads) * 128]
    ops = decompose(load_model("mixtral-8x7b"), Batch.decode(64, 2048), Layout(tp=8), cluster8)
    qkv = by_name(ops, "qkv_proj")
    m, k, n = 64, 4096, 4 * 128 + 2 * 128
    assert qkv.flops == 2 * m * n * k
    assert qkv.weight_bytes == k * n * 2
    assert qkv.act_bytes == (m * k + m * n) * 2
    assert qkv.count == 32
    head = by_name(ops, "lm_head")  # one row per sequence, vocab split 8 ways
    assert head.flops == 2 * 64 * (32000 // 8) * 4096


def test_gqa_decode_attention_by_hand(cluster8):
    ops = decompose(load_model("mixtral-8x7b"), Batch.decode(64, 2048), Layout(tp=8), cluster8)
    att = by_name(ops, "attention")
    pairs = 64 * (2048 + 1)  # each new token sees its 2048 cached tokens and itself
    assert att.flops == 2 * pairs * 4 * (128 + 128)  # 4 q heads per GPU, QK^T + PV
    kv_tokens = 64 * 2049  # read every cached token once (the new ones included)
    assert att.kv_bytes == kv_tokens * 1 * (128 + 128) * 2  # one kv head per GPU, bf16
    # the new tokens are written by reshape_and_cache_flash, a kernel of its own
    assert by_name(ops, "kv_write").kv_bytes == 64 * 1 * (128 + 128) * 2


def test_prefill_attention_is_causal(cluster8):
    m = load_model("llama-3-8b")
    ops = decompose(m, Batch.prefill(2, 4), Layout(), make_cluster(cluster8.gpu, num_gpus=1))
    att = by_name(ops, "attention")
    assert att.flops == 2 * (2 * (4 * 5 // 2)) * 32 * 256  # 10 causal pairs per 4-token prompt


def test_sliding_window_caps_pairs():
    b = Batch((5,), (10,))
    # token i sees 10 + i + 1 keys, capped at 12: 11, 12, 12, 12, 12
    assert b.attention_pairs(12) == 11 + 12 * 4
    assert b.attention_pairs() == sum(11 + i for i in range(5))
    assert b.kv_tokens_read(12) == 12
    oss = decompose(load_model("gpt-oss-120b"), Batch.decode(4, 1000), Layout(), make_cluster(_gpu(), num_gpus=1))
    windowed = [op for op in oss if op.kind == "attention" and op.shape["window"] == 128]
    assert windowed and windowed[0].shape["pairs"] == 4 * 128 and windowed[0].count == 18


def _gpu():
    from moesim.model import get_gpu

    return get_gpu("H100-SXM")


def test_mla_absorbed_and_plain_forms(cluster8):
    m = load_model("deepseek-v3")
    one = make_cluster(cluster8.gpu, num_gpus=1)
    b = Batch.decode(8, 1000)
    t, pairs, heads = 8, 8 * 1001, 128
    absorbed = decompose(m, b, Layout(), one, mla_absorb=True)
    att = by_name(absorbed, "attention")
    assert att.flops == 2 * pairs * heads * (2 * 512 + 64)
    assert att.kv_bytes == 8 * 1001 * (512 + 64) * 2  # the latent is read once for all heads
    assert by_name(absorbed, "kv_write").kv_bytes == 8 * (512 + 64) * 2  # concat_and_cache_mla
    assert by_name(absorbed, "q_absorb").flops == 2 * t * heads * 128 * 512
    assert by_name(absorbed, "v_absorb").flops == 2 * t * heads * 512 * 128
    plain = decompose(m, b, Layout(), one, mla_absorb=False)
    assert by_name(plain, "attention").flops == 2 * pairs * heads * (192 + 128)
    assert by_name(plain, "kv_b_proj").flops == 2 * (8 * 1001) * heads * 256 * 512
    # default: absorbed for decode, plain for prefill
    assert any(op.name == "q_absorb" for op in decompose(m, b, Layout(), one))
    assert not any(op.name == "q_absorb" for op in decompose(m, Batch.prefill(1, 64), Layout(), one))


def test_routed_experts_single_gpu_is_exact(cluster8):
    m = load_model("mixtral-8x7b")
    one = make_cluster(cluster8.gpu, num_gpus=1)
    ops = decompose(m, Batch.decode(3, 100), Layout(), one)
    ex = by_name(ops, "routed_experts")
    assert ex.shape["pairs"] == 3 * 2
    pairs, h, w = 6, 4096, 14336
    # two grouped GEMMs (6 FLOP per pair x h x w), SiLU-and-multiply (5 per pair x w), the routing weight
    # multiplied into the down GEMM's output and moe_sum's adds (1 each per pair x h)
    assert ex.flops == 6 * pairs * h * w + 5 * pairs * w + 2 * pairs * h
    assert ex.kernels == 5  # moe_align, gate_up, silu_and_mul, down, moe_sum
    distinct = 8 * (1 - (1 - 2 / 8) ** 3)
    assert ex.weight_bytes == pytest.approx(distinct * 3 * 4096 * 14336 * 2)


def test_collective_bytes(cluster8):
    ops = decompose(load_model("mixtral-8x7b"), Batch.decode(64, 2048), Layout(tp=8), cluster8)
    ar = by_name(ops, "attn_allreduce")
    assert ar.intra_bytes == pytest.approx(2 * 7 / 8 * 64 * 4096 * 2)  # ring all-reduce, bf16
    assert ar.inter_bytes == 0 and ar.intra_msgs == 1
    two_nodes = make_cluster(cluster8.gpu, nodes=2)
    ops = decompose(load_model("llama-3-70b"), Batch.decode(16, 128), Layout(tp=16), two_nodes)
    ar = by_name(ops, "attn_allreduce")
    message = 16 * 8192 * 2
    assert ar.intra_bytes == pytest.approx(2 * 7 / 8 * message)
    assert ar.inter_bytes == pytest.approx(2 * 1 / 2 * message / 8)


def test_ep_dispatch_uniform_by_hand(cluster8):
    # Mixtral EP8 x DP8: one expert per GPU; a token goes to the GPUs of its 2 experts
    m = load_model("mixtral-8x7b")
    ops = decompose(m, Batch.decode(64, 128), Layout(tp=1, dp_attn=8, ep=8, a2a_backend="nccl"), cluster8)
    d = by_name(ops, "ep_dispatch")
    # per source token, each of the 7 other GPUs is hit with probability 2/8
    assert d.intra_bytes == pytest.approx(64 / 8 * 7 * (2 / 8) * 4096 * 2)
    # DeepEP low-latency (decode): the same selections, each message with its 16-byte header
    deepep = by_name(decompose(m, Batch.decode(64, 128), Layout(tp=1, dp_attn=8, ep=8), cluster8), "ep_dispatch")
    assert deepep.intra_bytes == pytest.approx(64 / 8 * 7 * (2 / 8) * (4096 * 2 + 16))
    ex = by_name(ops, "routed_experts")
    assert ex.shape["mean_pairs"] == pytest.approx(64 * 2 / 8)
    assert ex.shape["pairs"] > ex.shape["mean_pairs"]  # the busiest GPU's expected share


def test_per_layer_loads_split_moe_layers(cluster8):
    m = load_model("mixtral-8x7b")
    loads = np.tile(np.full(8, 1 / 8), (32, 1))
    loads[5] = [0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    ops = decompose(m, Batch.decode(64, 128), Layout(tp=1, dp_attn=8, ep=8), cluster8, loads=loads)
    experts = [op for op in ops if op.name == "routed_experts"]
    assert len(experts) == 32 and all(op.count == 1 for op in experts)
    assert max(experts, key=lambda op: op.flops) is experts[5]


def test_layout_errors(cluster8):
    m = load_model("mixtral-8x7b")
    with pytest.raises(LayoutError, match="tp=3 does not divide the 32 attention heads"):
        decompose(m, Batch.decode(1, 1), Layout(tp=3), cluster8)
    with pytest.raises(LayoutError, match="ep=3 does not divide"):
        Layout(tp=8, ep=3)
    with pytest.raises(LayoutError, match="needs 16 GPUs"):
        decompose(m, Batch.decode(1, 1), Layout(tp=8, pp=2), cluster8)
    with pytest.raises(LayoutError, match="ep=2 on a dense model"):
        decompose(load_model("llama-3-8b"), Batch.decode(1, 1), Layout(tp=2, ep=2), cluster8)
    with pytest.raises(LayoutError, match="positive"):
        Layout(tp=0)


def test_pipeline_stages(cluster8):
    m = load_model("llama-3-8b")
    ops = decompose(m, Batch.decode(8, 128), Layout(tp=2, pp=4), cluster8)
    assert {op.stage for op in ops} == {0, 1, 2, 3}
    assert sum(op.count for op in ops if op.name == "pp_send") == 3
    assert by_name(ops, "lm_head").stage == 3 and by_name(ops, "embedding").stage == 0


def test_fp8_runs_at_fp8_peak_and_int4_at_bf16(cluster8):
    m = load_model("mixtral-8x7b")
    fp8 = decompose(m, Batch.decode(8, 128), Layout(tp=8), cluster8, Precision(weights="fp8"))
    assert by_name(fp8, "routed_experts").dtype == "fp8"
    int4 = decompose(m, Batch.decode(8, 128), Layout(tp=8), cluster8, Precision(weights="int4"))
    ex = by_name(int4, "routed_experts")
    assert ex.dtype == "bf16"
    assert ex.weight_bytes == pytest.approx(by_name(fp8, "routed_experts").weight_bytes * (0.5 + 2 / 128))
