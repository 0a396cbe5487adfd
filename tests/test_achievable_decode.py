"""FlashAttention's paged split-KV decode in the achievable model (`model.achievable.decode_attention`), and the
calibrated model's use of it and of its tables' edges where no table covers a shape (`profiling.costmodel`)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from moesim.model import Batch, Layout, decompose, get_gpu, load_model, make_cluster
from moesim.model.achievable import (
    ACHIEVABLE,
    PAGE_TOKENS,
    AchievableCostModel,
    decode_attention,
    decode_block_k,
    fa_num_splits,
    is_paged_decode,
)
from moesim.model.dtypes import Precision
from moesim.model.roofline import RooflineCostModel
from moesim.profiling.costmodel import CalibratedCostModel, Calibration, Fit, source_class
from moesim.profiling.fit import Predictor
from moesim.profiling.opshapes import row_op

H100 = ACHIEVABLE["H100-SXM"]


@pytest.fixture
def tp4():
    return make_cluster(get_gpu("H100-SXM"), gpus_per_node=4, nodes=1)


def _attention(model: str, seqs: int, ctx: int, tp: int = 1):
    """The first attention op of a decode step of ``seqs`` sequences at ``ctx`` cached tokens."""
    cl = make_cluster(get_gpu("H100-SXM"), gpus_per_node=max(tp, 1), nodes=1)
    ops = decompose(load_model(model), Batch.decode(seqs, ctx), Layout(tp=tp), cl, Precision())
    return next(op for op in ops if op.kind == "attention"), cl


def test_fa_num_splits_matches_flash_attention_heuristic():
    # flash_api.cpp's own example: batch x heads = 48 on 108 SMs -> 2 splits (efficiency 0.89 beats 3's 0.67)
    assert fa_num_splits(48, 108, 64) == 2
    assert fa_num_splits(106, 132, 64) == 1  # >= 0.8 x SMs: no split
    assert fa_num_splits(2, 132, 1) == 1  # one key block: nothing to split
    # 64 CTAs on 132 SMs with 6 key blocks: 2 splits (0.97 of a wave)
    assert fa_num_splits(64, 132, 6) == 2
    assert decode_block_k(64) == 256 and decode_block_k(128) == 128 and decode_block_k(256) == 64


def test_decode_attention_by_hand():
    """Llama-3.1-8B, 32 sequences of 700 cached tokens (8 KV heads of 128, bf16): no split; pages of 16 keys."""
    op, _ = _attention("llama-3.1-8b", 32, 700)
    assert is_paged_decode(op)
    bw, sms, c, rate = 3.02e12, 132, 1.83, 629.5e12
    d = decode_attention(op, bw, sms, c, rate)
    # each sequence holds 701 keys (700 cached + the new one): 704 read in pages of 16
    lp = math.ceil(701 / PAGE_TOKENS) * PAGE_TOKENS
    per_key = 2 * 128 * 2  # K and V of one KV head, bf16
    kv = 32 * lp * 8 * per_key
    t_fix = c * 4 * 128 * 128 * 128 / (rate / sms)  # FA3's 1.83 blocks of 128 x 128 at its rate: 3.2 us
    assert t_fix == pytest.approx(3.2e-6, rel=0.02)
    longest = math.ceil(lp / 128) * 128 * per_key / (bw / sms) + t_fix
    assert d.splits == 1 and d.ctas == 32 * 8 and d.kernels == 1 and d.combine_s == 0.0
    assert d.seconds == pytest.approx(max(kv / bw, longest)) and d.seconds == pytest.approx(kv / bw)
    # 2 KV heads (TP4's share of 8): 64 CTAs, too few to stream the bytes: the longest CTA and its fixed time bind
    op4, _ = _attention("llama-3.1-70b", 32, 700, tp=4)
    d4 = decode_attention(op4, bw, sms, c, rate)
    kv4 = 32 * lp * 2 * per_key
    assert d4.splits == 2 and d4.ctas == 128 and d4.seconds > 1.3 * kv4 / bw


def test_small_batch_splits_the_keys_and_adds_the_combine_kernel():
    op, cl = _attention("llama-2-70b", 4, 4000, tp=4)  # 2 KV heads per GPU: 8 CTAs without splits
    d = decode_attention(op, 3.02e12, 132, 1.83, 629.5e12)
    assert d.splits > 1 and d.kernels == 2 and d.combine_s > 0
    t = AchievableCostModel().op_time(op, cl)
    assert t.seconds == pytest.approx(2 * H100.kernel_s.value + d.seconds + d.combine_s)


def test_slope_per_running_sequence_grows_with_the_context():
    """The step's attention time per extra running sequence grows with the context (its pages of 16 keys), and
    exceeds the bare KV bytes most at short contexts (the partly filled last page)."""
    model = AchievableCostModel()

    def attn(seqs: int, ctx: int) -> float:
        op, cl = _attention("llama-3.1-8b", seqs, ctx)
        return model.op_time(op, cl).seconds

    slopes = [(attn(128, ctx) - attn(64, ctx)) / 64 for ctx in (256, 1024, 4096, 16384)]
    assert all(b > a for a, b in itertools.pairwise(slopes)), slopes
    per_key = 32 / 32 * 8 * 2 * 128 * 2  # one layer's K and V of one key, bf16 (the op is one layer's)
    bare = [per_key * (ctx + 1) / 3.02e12 for ctx in (256, 1024, 4096, 16384)]
    over = [s / b for s, b in zip(slopes, bare, strict=True)]
    assert over[0] > over[-1] > 1.0, over


def test_mla_and_prefill_keep_their_own_models():
    op, _ = _attention("deepseek-v2-lite", 8, 512)
    assert op.shape["form"].startswith("mla") and not is_paged_decode(op)
    cl = make_cluster(get_gpu("H100-SXM"), gpus_per_node=1, nodes=1)
    ops = decompose(load_model("llama-3.1-8b"), Batch.prefill(2, 512), Layout(), cl, Precision())
    assert not is_paged_decode(next(op for op in ops if op.kind == "attention"))


# --- the calibrated model where its tables do not cover a shape -------------------------------------------------


def _table_fit(kind: str, lo: list[float], hi: list[float], ratio: float, h100) -> Fit:
    """A fit of ``kind`` that predicts a constant ``ratio`` to the roofline over the range ``lo..hi`` (log2)."""
    x = np.array([lo, hi], float)
    pred = Predictor("constant", x, np.full(2, math.log(ratio)), np.array([math.log(ratio)]), 0)
    return Fit(kind, "bf16", "torch_sdpa" if kind == "attention" else "torch", h100.key, h100, pred,
               np.array(lo, float), np.array(hi, float), 2, 0, 1.0, 1.0, {})  # fmt: skip


def test_attention_outside_the_table_is_timed_by_the_achievable_model(tp4):
    h100 = tp4.gpu
    # an SDPA table measured at 4..128 KV heads: a TP4 Llama-2-70B layer (2 KV heads per GPU) lies outside it
    fit = _table_fit("attention", [0, 0, 6, 2, 2, 6], [8, 14, 16, 7, 7, 8], 1.2, h100)
    model = CalibratedCostModel(Calibration([fit]))
    op, _ = _attention("llama-2-70b", 64, 700, tp=4)
    t = model.op_time(op, tp4)
    assert t.source.startswith("achievable: kv_heads=2^1.0 outside measured") and source_class(t.source) == "achievable"
    assert t.seconds == pytest.approx(AchievableCostModel().op_time(op, tp4).seconds)
    assert t.seconds > RooflineCostModel().op_time(op, tp4).seconds


def test_an_op_beyond_its_table_follows_the_edge_continuous_and_monotone(tp4):
    h100 = tp4.gpu
    fit = _table_fit("permute", [0, 11, 1, 0], [14, 13, 3, 1], 3.0, h100)  # tokens measured up to 2^14
    model = CalibratedCostModel(Calibration([fit]))
    roof = RooflineCostModel()

    def at(tokens: float):
        op = row_op("permute", {"tokens": tokens, "hidden": 7168, "top_k": 8, "direction": "combine", "dtype": "bf16"})
        return model.op_time(op, tp4), roof.op_time(op, tp4)

    edge, _ = at(2**14)
    assert edge.source.startswith("measured:")
    times = []
    for tokens in (2**14 + 1, 2**15, 2**16, 2**17):
        t, r = at(tokens)
        assert t.source.startswith("edge tokens=") and "->2^14.0 measured:permute" in t.source
        assert t.seconds == pytest.approx(3.0 * r.seconds)  # the edge's ratio to the roofline
        assert source_class(t.source) == "measured"
        times.append(t.seconds)
    assert times[0] == pytest.approx(edge.seconds, rel=1e-3)  # continuous at the edge
    assert all(b > a for a, b in itertools.pairwise(times))  # grows with the op
    assert times[-1] > at(2**17)[1].seconds  # not the bare roofline it fell to before


def test_edge_is_reported_in_a_step(tp4):
    h100 = tp4.gpu
    fit = _table_fit("attention", [0, 0, 6, 2, 2, 6], [8, 14, 16, 7, 7, 8], 1.2, h100)
    model = CalibratedCostModel(Calibration([fit]))
    ops = decompose(load_model("llama-2-70b"), Batch.decode(32, 700), Layout(tp=4), tp4, Precision())
    srcs = pd.Series([model.op_time(op, tp4).source for op in ops if op.kind == "attention"])
    assert srcs.str.startswith("achievable: ").all()


def test_a_gemm_never_takes_less_than_the_same_gemm_with_fewer_rows(tp4):
    """A table whose fit dips between measured row counts (here: 2x the roofline at 32 rows, 1x at 40): 40 rows
    take at least the 32-row time, and the source says so; 32 and 64 rows (powers of two) keep their own."""
    h100 = tp4.gpu
    x = np.array([[5.0, 12.0, 12.0, 1.0, 1.0], [np.log2(40.0), 12.0, 12.0, 1.0, 0.0]])
    y = np.log([2.0, 1.0])
    pred = Predictor("knn", x, y, np.zeros(0), 1)
    fit = Fit("gemm", "bf16", "torch", h100.key, h100, pred, x.min(axis=0), x.max(axis=0), 2, 0, 1.0, 1.0, {})
    model = CalibratedCostModel(Calibration([fit]))
    roof = RooflineCostModel()

    def op(m: int):
        return row_op("gemm", {"m": m, "n": 4096, "k": 4096, "dtype": "bf16"})

    t32, t40 = model.op_time(op(32), tp4), model.op_time(op(40), tp4)
    assert t32.seconds == pytest.approx(2.0 * roof.op_time(op(32), tp4).seconds)
    assert t40.seconds == pytest.approx(t32.seconds) and t40.source.endswith("[>= m=32 rows]")
    assert t40.seconds > roof.op_time(op(40), tp4).seconds * 1.5  # the fit alone said 1x the roofline
    # with extrapolation (the training simulator) the fit's own time stands
    assert model.with_extrapolation().op_time(op(40), tp4).seconds < t32.seconds
