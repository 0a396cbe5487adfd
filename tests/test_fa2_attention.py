"""FlashAttention 2 below Hopper (`model.achievable.fa2_mixed_attention`) and a GPU's own GEMM streaming rate
(`AchievableParams.gemm_bw`), in the achievable cost model."""

from __future__ import annotations

import dataclasses
import math

import pytest

from moesim.model import Batch, Layout, decompose, get_gpu, load_model, make_cluster
from moesim.model.achievable import (
    ACHIEVABLE,
    DECODE_BLOCK_M,
    PAGE_TOKENS,
    AchievableCostModel,
    Fa2Decode,
    attention_compute_s,
    decode_attention,
    decode_block_k,
    fa2_mixed_attention,
    is_fa2_unpacked,
)
from moesim.model.dtypes import Precision
from moesim.model.errors import HardwareError
from moesim.model.hardware import list_gpus
from moesim.model.op_record import Op
from moesim.profiling.opshapes import row_op


def _ops(model: str, batch: Batch, gpu: str = "A100-SXM-80GB", tp: int = 1) -> tuple[list[Op], object]:
    cl = make_cluster(get_gpu(gpu), gpus_per_node=max(tp, 1), nodes=1)
    return decompose(load_model(model), batch, Layout(tp=tp), cl, Precision()), cl


def _attention(model: str, batch: Batch, gpu: str = "A100-SXM-80GB", tp: int = 1) -> tuple[Op, object]:
    ops, cl = _ops(model, batch, gpu, tp)
    return next(op for op in ops if op.kind == "attention"), cl


def _mixed(decoding: int = 24, ctx: int = 700, prompt: int = 512) -> Batch:
    """``decoding`` sequences of one new token at ``ctx`` cached tokens, and one prompt chunk of ``prompt``."""
    return Batch((1,) * decoding + (prompt,), (ctx,) * decoding + (0,), "mixed")


def test_which_gpus_run_fa2():
    """vLLM runs FA3 on Hopper and FA2 below it (fa_utils.get_flash_attn_version); the figure carries its source."""
    assert ACHIEVABLE["A100-SXM-80GB"].attention_kernel == "fa2"
    assert ACHIEVABLE["L40S"].attention_kernel == "fa2"
    assert ACHIEVABLE["H100-SXM"].attention_kernel == "fa3"
    assert ACHIEVABLE["H200-SXM"].attention_kernel == "fa3"
    spec = get_gpu("A100-SXM-80GB").achievable
    assert "seqlenq_ngroups_swapped" in spec.attention_kernel.source


def test_mixed_batch_marks_its_decoding_sequences():
    """A batch with a prompt says how many sequences decode and how many keys they read; a pure decode step or a
    pure prefill carries no such field (its shape is as before)."""
    op, _ = _attention("qwen3-14b", _mixed(24, 700, 512))
    assert op.shape["decode_seqs"] == 24 and op.shape["decode_kv_read"] == 24 * 701
    assert is_fa2_unpacked(op)
    dec, _ = _attention("qwen3-14b", Batch.decode(24, 700))
    pre, _ = _attention("qwen3-14b", Batch.prefill(2, 512))
    assert "decode_seqs" not in dec.shape and "decode_seqs" not in pre.shape
    assert not is_fa2_unpacked(dec) and not is_fa2_unpacked(pre)
    # a sliding window caps the keys a decoding sequence reads, as kv_tokens_read does
    b = Batch((1, 1, 300), (5000, 100, 0), "mixed")
    assert b.one_query(window=4096) == (2, 4096 + 101)
    assert b.one_query() == (2, 5001 + 101)


def test_fa2_mixed_attention_by_hand():
    """The decoding sequences' 64-row tiles over whole key blocks, plus the prompt's part as a prompt alone."""
    op, _ = _attention("qwen3-14b", _mixed(24, 700, 512))
    s = op.shape
    heads, d = s["heads"], s["head_dim"]
    assert heads == 40 and d == 128
    rate, sms, cta = 0.73 * 312e12, 108, 1.83
    per_pair = 2.0 * heads * (d + d)  # QK and PV over every head
    lp = math.ceil(701 / PAGE_TOKENS) * PAGE_TOKENS  # 704 keys in whole pages
    keys = math.ceil(lp / decode_block_k(d)) * decode_block_k(d)  # 768: six key blocks of 128
    decode = 24 * DECODE_BLOCK_M * keys * per_pair / rate  # 24 x 40 CTAs fill the 108 SMs
    prompt = Op(
        "attention", "attention", op.group, op.count, flops=per_pair * 512 * 513 / 2, weight_bytes=0.0,
        kv_bytes=0.0, act_bytes=0.0, dtype=op.dtype,
        shape={**s, "batch": 1, "tokens": 512, "kv_read": 512, "pairs": 512 * 513 // 2},
    )  # fmt: skip
    want = decode + attention_compute_s(prompt, rate, sms, cta)
    assert fa2_mixed_attention(op, rate, sms, cta) == pytest.approx(want, rel=1e-12)
    # 64 rows for the one that counts: 64 x 768 / 701 = 70x the decoding sequences' useful work
    assert DECODE_BLOCK_M * keys / 701 == pytest.approx(70.1, abs=0.1)


def test_fa2_prices_a_mixed_step_dearer_than_fa3_packing():
    """On the A100 a mixed step's attention is compute-bound on the unpacked tiles (Qwen3-14B, 24 decoding at 700
    and a 512-token chunk: 133 us a layer, 1.6x the 85 us of timing every sequence as a 21-query prompt, as
    before); a pure decode step and the H100 are unchanged."""
    cm = AchievableCostModel()
    a100 = ACHIEVABLE["A100-SXM-80GB"]
    packed = AchievableCostModel({"A100-SXM-80GB": dataclasses.replace(a100, attention_kernel="fa3")})
    op, cl = _attention("qwen3-14b", _mixed(24, 700, 512))
    fa2, fa3 = cm.op_time(op, cl), packed.op_time(op, cl)
    assert fa2.bound == "compute" and fa2.seconds > 1.5 * fa3.seconds
    dec, cl = _attention("qwen3-14b", Batch.decode(24, 700))
    assert cm.op_time(dec, cl).compute_s == packed.op_time(dec, cl).compute_s  # the mixed-batch rule is not used
    h100_op, h100 = _attention("qwen3-14b", _mixed(24, 700, 512), "H100-SXM")
    bare = dataclasses.replace(
        h100_op, shape={k: v for k, v in h100_op.shape.items() if k not in ("decode_seqs", "decode_kv_read")}
    )
    assert cm.op_time(h100_op, h100).seconds == cm.op_time(bare, h100).seconds


def test_a100_gemms_stream_at_their_measured_rate():
    """A memory-bound GEMM on the A100 moves its bytes at ``gemm_bw`` (AIConfigurator's A100 vLLM GEMM table),
    other kernels at ``dram_bw``; a GPU without the figure (the H100) streams GEMMs at ``dram_bw``."""
    a100 = ACHIEVABLE["A100-SXM-80GB"]
    assert a100.gemm_bw is not None and a100.gemm_bw.value == pytest.approx(1.454e12)
    assert "aiconfigurator" in a100.gemm_bw.source and a100.gemm_stream_bw() < a100.dram_bw.value
    h100 = ACHIEVABLE["H100-SXM"]
    assert h100.gemm_bw is None and h100.gemm_stream_bw() == h100.dram_bw.value
    cm = AchievableCostModel()
    ops, cl = _ops("qwen3-14b", Batch.decode(16, 700))
    qkv = next(op for op in ops if op.name == "qkv_proj")
    t = cm.op_time(qkv, cl)
    assert t.bound == "memory"
    assert t.seconds == pytest.approx(a100.kernel_s.value + qkv.bytes / 1.454e12, rel=1e-9)
    # AIConfigurator measured this very GEMM (16 x 7168 x 5120) at 58.1 us; the copy rate gave 46.0 us
    assert t.seconds == pytest.approx(58.1e-6, rel=0.06)
    norm = next(op for op in ops if op.kind != "gemm" and op.bytes and not op.flops)
    assert cm.op_time(norm, cl).memory_s == pytest.approx(norm.bytes / a100.dram_bw.value, rel=1e-9)


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        ("attention_kernel: {value: fa4, source: x}", "attention_kernel"),
        ("gemm_bw: {value: -1.0, source: x}", "gemm_bw"),
    ],
)
def test_bad_figures_in_a_hardware_file(tmp_path, block, fragment):
    f = tmp_path / "gpu.yaml"
    f.write_text(f"""
MY-GPU:
  name: My accelerator
  vendor: other
  peak_flops: {{bf16: 5.0e+14}}
  memory_gib: 64
  memory_bandwidth: 2.0e+12
  tdp_w: 500
  node: {{gpus_per_node: 4, intra_bw: 1.0e+11, intra_latency_s: 1.0e-5, inter_bw: 2.5e+10, inter_latency_s: 3.0e-5}}
  achievable:
    dram_bw: {{value: 1.8e+12, source: x}}
    gemm_fraction: {{bf16: {{value: 0.8, source: x}}}}
    attention_fraction: {{value: 0.7, source: x}}
    attention_cta_blocks: {{value: 1.8, source: x}}
    sms: {{value: 100, source: x}}
    kernel_s: {{value: 4.0e-6, source: x}}
    {block}
""")
    with pytest.raises(HardwareError) as e:
        list_gpus(f)
    line = e.value.one_line()
    assert "\n" not in line and fragment in line


def _decode_op(b: int, ctx: int, heads: int, kvh: int, d: int = 128) -> Op:
    """A paged-decode attention op of ``b`` sequences at ``ctx`` keys (16-bit KV), as a kernel table's row is one."""
    return row_op("attention", {"dtype": "fp16", "batch": b, "q_len": 1, "kv_len": ctx, "heads": heads,
                                "kv_heads": kvh, "head_dim": d})  # fmt: skip


def test_fa2_decode_rounds_and_per_sm_cap_by_hand():
    """Qwen3-14B's heads (40 query, 8 KV), 32 sequences of 1,024 keys on an A100: 256 CTAs (no split: they fill
    the SMs) in rounds of 2 x 108; the 216 of the first round draw min(25.0 GB/s / 2, 1.759 TB/s / 216) each,
    the last 40 min(25.0 GB/s, 1.759 TB/s / 40)."""
    p = ACHIEVABLE["A100-SXM-80GB"]
    fa2 = p.fa2_decode()
    assert fa2 == Fa2Decode(2, pytest.approx(24.99e9))
    op = _decode_op(32, 1024, 40, 8)
    bw, sms, cta = p.dram_bw.value, 108, p.attention_cta_blocks.value
    rate = 312e12 * p.attention_fraction.value
    d = decode_attention(op, bw, sms, cta, rate, fa2)
    assert d.splits == 1 and d.ctas == 256
    t_fix = cta * 4.0 * 128 * 128 * 128 / (rate / sms)
    per_cta = 8 * 128 * 512  # eight blocks of 128 keys, K and V of 128 fp16 values each
    first = per_cta / min(fa2.sm_bw / 2, bw / 216) + t_fix
    last = per_cta / min(fa2.sm_bw, bw / 40) + t_fix
    assert d.seconds == pytest.approx(first + last, rel=1e-12)
    # AIConfigurator measured 122.8 us with the KV write (vLLM 0.14, A100-SXM4-80GB): 105 us here without it (-14%),
    # the uncapped kernel 76 us
    total = d.seconds + d.combine_s + d.kernels * p.kernel_s.value
    assert total == pytest.approx(122.8e-6, rel=0.15)
    old = decode_attention(op, bw, sms, cta, rate)
    assert old.seconds + old.kernels * p.kernel_s.value < 0.7 * 122.8e-6


def test_fa2_splits_only_packed_heads():
    """FA2 splits a decode's keys only where it packs query heads: MHA (8 sequences of 2,048 keys, one head) runs
    one CTA per sequence over all 16 blocks, at one SM's rate: 56 us (measured 54.8 us with the KV write); GQA
    splits as FA3 does."""
    p = ACHIEVABLE["A100-SXM-80GB"]
    rate = 312e12 * p.attention_fraction.value
    args = (p.dram_bw.value, 108, p.attention_cta_blocks.value, rate)
    mha = decode_attention(_decode_op(8, 2048, 1, 1), *args, p.fa2_decode())
    assert mha.splits == 1 and mha.ctas == 8 and mha.kernels == 1
    assert mha.seconds + p.kernel_s.value == pytest.approx(54.8e-6, rel=0.15)
    assert decode_attention(_decode_op(8, 2048, 1, 1), *args).splits > 1  # FA3's rule splits it
    gqa = decode_attention(_decode_op(8, 2048, 8, 1), *args, p.fa2_decode())
    assert gqa.splits == decode_attention(_decode_op(8, 2048, 8, 1), *args).splits > 1


def test_fa2_decode_figures_leave_other_gpus_alone():
    """The H100 (FA3) has no FA2 figures; the L40S runs FA2's split rule without a measured per-SM cap."""
    assert ACHIEVABLE["H100-SXM"].fa2_decode() is None
    l40s = ACHIEVABLE["L40S"].fa2_decode()
    assert l40s is not None and l40s.sm_bw is None
    cm = AchievableCostModel()
    op, cl = _attention("llama-3.1-8b", Batch.decode(32, 700), "H100-SXM")
    p = ACHIEVABLE["H100-SXM"]
    d = decode_attention(op, p.dram_bw.value, 132, p.attention_cta_blocks.value, 989.4e12 * p.attention_fraction.value)
    assert cm.op_time(op, cl).memory_s == pytest.approx(d.seconds + d.combine_s, rel=1e-12)
