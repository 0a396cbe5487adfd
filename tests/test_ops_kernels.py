"""The engine kernels between the GEMMs (norms, rotary embedding, activation, KV-cache write, top-k, fused-MoE
alignment and sum, sampler): FLOPs and bytes by hand, launches counted, nothing counted twice in training, and
their profile grids."""

from __future__ import annotations

import pytest

from moesim.model import Batch, Layout, Precision, decompose, get_gpu, load_model, make_cluster
from moesim.model.errors import MoesimError
from moesim.model.ops import ENGINE_KINDS, experts_gemms, fused_moe_parts, kernel_launches

ONE = make_cluster(get_gpu("H100-SXM"), num_gpus=1)


def _one(ops, name):
    found = [op for op in ops if op.name == name]
    assert len(found) >= 1, f"no op {name}"
    return found[0]


@pytest.fixture(scope="module")
def llama():
    # Llama-3-8B: hidden 4096, 32 layers, 32 q heads and 8 kv heads of 128, FFN 14336, vocab 128256
    return decompose(load_model("llama-3-8b"), Batch.decode(4, 100), Layout(), ONE)


def test_fused_add_rms_norm_by_hand(llama):
    t, h = 4, 4096
    for name in ("attn_norm", "ffn_norm"):
        op = _one(llama, name)
        assert (op.kind, op.count, op.kernels) == ("norm", 32, 1)
        assert op.flops == 5 * t * h  # add, square-accumulate, scale, weight
        assert op.act_bytes == 4 * t * h * 2  # input and residual read, residual and output written, bf16
        assert op.weight_bytes == h * 2
    final = _one(llama, "final_norm")
    assert (final.group, final.count, final.act_bytes) == ("head", 1, 4 * t * h * 2)


def test_rope_and_kv_write_by_hand(llama):
    t, q, kv, d = 4, 32, 8, 128
    rope = _one(llama, "rope")
    assert rope.flops == 3 * t * (q + kv) * d
    # q and k rotated in place (read and written), each token's position (int64) and cos/sin row (bf16)
    assert rope.act_bytes == 2 * t * (q + kv) * d * 2 + t * (8 + d * 2)
    kvw = _one(llama, "kv_write")
    assert kvw.kv_bytes == t * kv * (d + d) * 2  # K and V of the new tokens into the cache
    assert kvw.act_bytes == t * (kv * 2 * d * 2 + 8)  # read from the qkv output, and the slot mapping
    att = _one(llama, "attention")
    assert att.kv_bytes == 4 * 101 * kv * 2 * d * 2  # attention only reads the cache now


def test_activation_is_its_own_kernel_and_not_in_the_down_gemm(llama):
    t, w, h = 4, 14336, 4096
    act = _one(llama, "ffn_act")
    assert act.kind == "activation" and act.flops == 5 * t * w
    assert act.act_bytes == 3 * t * w * 2  # reads gate and up, writes their product
    down = _one(llama, "ffn_down")
    assert down.act_bytes == (t * w + t * h) * 2  # its input and output only


def test_sampler_greedy_and_random():
    v, rows = 128256, 4
    m = load_model("llama-3-8b")
    greedy = _one(decompose(m, Batch.decode(rows, 100), Layout(), ONE), "sampler")
    assert (greedy.kind, greedy.kernels) == ("sampling", 2)
    assert greedy.act_bytes == rows * v * (2 + 4) + rows * v * 4  # bf16 -> fp32 cast, arg-max
    rand = _one(decompose(m, Batch.decode(rows, 100), Layout(), ONE, sampling="random"), "sampler")
    assert rand.kernels == 6 and rand.act_bytes == rows * v * (2 + 20 + 20)
    with pytest.raises(MoesimError, match="sampling 'nucleus'"):
        decompose(m, Batch.decode(rows, 100), Layout(), ONE, sampling="nucleus")


def test_moe_topk_and_fused_moe_parts_by_hand():
    # Mixtral-8x7B on one GPU, 4 tokens: 8 experts, top-2, hidden 4096, expert width 14336
    ops = decompose(load_model("mixtral-8x7b"), Batch.decode(4, 100), Layout(), ONE)
    t, e, k, h, w = 4, 8, 2, 4096, 14336
    topk = _one(ops, "topk_softmax")
    assert topk.flops == t * e * (5 + k) and topk.act_bytes == t * e * 4 + t * k * 12
    pairs = t * k
    ex = _one(ops, "routed_experts")
    active = ex.shape["active_experts"]  # the expected distinct experts of 4 tokens: 8 (1 - (6/8)^4)
    assert active == pytest.approx(8 * (1 - (6 / 8) ** 4))
    parts = {p.name: p for p in fused_moe_parts(t, pairs, active, h, w, e, k, 2.0, 2.0, "bf16", reduce=True)}
    assert list(parts) == ["moe_align", "gate_up", "act", "down", "moe_sum"]
    padded = pairs + e * (16 - 1)  # block of 16 rows (tokens <= experts), every expert's run padded
    assert parts["moe_align"].act_bytes == 4 * pairs + 4 * (padded + padded / 16 + e + 1)
    assert parts["act"].act_bytes == 3 * pairs * w * 2
    assert parts["moe_sum"].act_bytes == (pairs * h + t * h) * 2
    assert parts["gate_up"].weight_bytes == pytest.approx(active * h * 2 * w * 2)
    assert ex.kernels == 5
    assert ex.act_bytes == pytest.approx(sum(p.act_bytes for p in parts.values()))
    assert ex.weight_bytes == pytest.approx(sum(p.weight_bytes for p in parts.values()))
    # expert parallelism: the combine sums each token's top-k outputs, no moe_sum here
    cluster8 = make_cluster(get_gpu("H100-SXM"), num_gpus=8)
    ep = decompose(load_model("mixtral-8x7b"), Batch.decode(64, 100), Layout(tp=1, dp_attn=8, ep=8), cluster8)
    assert _one(ep, "routed_experts").kernels == 4


def test_kernel_launches_count_every_op(llama):
    # per layer: 2 norms, qkv, rope, kv_write, attention, o_proj, gate_up, act, down; then embedding, final
    # norm, LM head and the greedy sampler's two
    assert kernel_launches(llama) == 32 * 10 + 1 + 1 + 1 + 2
    assert kernel_launches(llama) == sum(op.kernels * op.count for op in llama)
    qwen = decompose(load_model("qwen3-30b-a3b"), Batch.decode(4, 100), Layout(), ONE)
    # Qwen3 has per-head q/k norms (2 launches), a router and its top-k, and 6 fused-MoE launches per layer
    # (128 experts: moe_align_block_size takes its two-kernel path above 64 experts)
    layer = 2 + 1 + 2 + 1 + 1 + 1 + 1 + 1 + 1 + 6
    assert kernel_launches(qwen) == 48 * layer + 1 + 1 + 1 + 2


def test_mla_norms_rope_and_latent_write():
    m = load_model("deepseek-v3")
    ops = decompose(m, Batch.decode(8, 1000), Layout(), ONE)
    t = 8
    assert _one(ops, "q_a_norm").act_bytes == 2 * t * 1536 * 2
    assert _one(ops, "kv_a_norm").act_bytes == 2 * t * 512 * 2
    assert _one(ops, "rope").flops == 3 * t * (128 + 1) * 64  # q_pe of every head and the shared k_pe
    assert _one(ops, "kv_write").kv_bytes == t * (512 + 64) * 2  # concat_and_cache_mla


def test_training_counts_nothing_twice():
    from moesim.sim.training.train_cost import _SERVING_ONLY, training_ops

    m = load_model("mixtral-8x7b")
    p = Precision()
    ops = decompose(m, Batch.prefill(1, 512), Layout(), ONE, p, mla_absorb=False)
    kept = training_ops(ops)
    assert not [op for op in kept if op.kind in _SERVING_ONLY]  # training's own norms, rope and SwiGLU replace them
    assert {"topk_softmax"} == {op.kind for op in kept} & ENGINE_KINDS
    ex = next(op for op in kept if op.kind == "grouped_gemm")
    s, ab = ex.shape, p.activation_bytes
    assert ex.kernels == 2 and ex.flops == pytest.approx(
        6 * s["pairs"] * s["hidden"] * s["inter"] + s["pairs"] * s["hidden"]
    )
    assert ex.act_bytes == pytest.approx((2 * s["pairs"] * s["hidden"] + 3 * s["pairs"] * s["inter"]) * ab)
    assert experts_gemms(ex).act_bytes == pytest.approx(ex.act_bytes)  # idempotent


def test_profile_grid_has_the_new_kinds_and_they_run():
    pytest.importorskip("torch")
    from moesim.profiling.kernels import PREPARE, Pool
    from moesim.profiling.opshapes import features, row_op
    from moesim.profiling.runner import OP_GROUPS, plan
    from moesim.profiling.tables import KINDS, SHAPE_COLUMNS

    new = ("norm", "rope", "activation", "kv_write", "topk_softmax", "sampling")
    points = plan("cpu", "tiny", list(OP_GROUPS), ["fp32"])
    kinds = {k for k, _, _ in points}
    assert set(new) <= kinds and set(new) <= set(KINDS)
    pool = Pool("cpu")
    for kind in new:
        shape, dtype = next((s, d) for k, s, d in points if k == kind)
        fn, _extra = PREPARE[kind](shape, dtype, pool)
        fn()
        assert set(SHAPE_COLUMNS[kind]) <= set(shape)
        op = row_op(kind, {**shape, "dtype": dtype})
        assert op.kind == kind and op.bytes > 0 and features(op) is not None


def test_calibrated_model_times_the_new_kinds_from_their_tables(tmp_path):
    """Synthetic tables (2x the roofline) of each new kind: a calibrated model finds them for decompose's ops, and
    an op no table covers falls back to the roofline visibly."""
    import itertools

    import pandas as pd

    from moesim.model import RooflineCostModel
    from moesim.profiling.calibrate import CalibratedCostModel, calibrate
    from moesim.profiling.opshapes import row_op
    from moesim.profiling.tables import write_table

    h100 = get_gpu("H100-SXM")
    grids = {
        "norm": [{"tokens": t, "hidden": h, "residual": r} for t, h, r in itertools.product(
            (1, 4, 16, 64, 256), (2048, 4096, 8192), (0, 1))],
        "rope": [{"tokens": t, "heads": q, "kv_heads": 8, "rot_dim": 128} for t, q in itertools.product(
            (1, 4, 16, 64, 256), (8, 32, 64))],
        "activation": [{"tokens": t, "width": w} for t, w in itertools.product((1, 4, 16, 64, 256), (4096, 14336))],
        "kv_write": [{"tokens": t, "width": w} for t, w in itertools.product((1, 4, 16, 64, 256), (1024, 2048, 4096))],
        "sampling": [{"sequences": n, "vocab": v, "sampling": "greedy"} for n, v in itertools.product(
            (1, 4, 16, 64), (32000, 128256))],
    }  # fmt: skip
    roof, cluster = RooflineCostModel(), make_cluster(h100, num_gpus=1)
    meta = {"source": "synthetic", "device_key": h100.key, "hardware": h100.model_dump()}
    for kind, shapes in grids.items():
        rows = []
        for s in shapes:
            t = 2.0 * roof.op_time(row_op(kind, {**s, "dtype": "bf16"}), cluster).seconds
            rows.append({"op": kind, "impl": "synthetic", "dtype": "bf16", **s, "time_s": t})
        write_table(pd.DataFrame(rows), tmp_path / f"{kind}.parquet", meta)
    model = CalibratedCostModel(calibrate([tmp_path], holdout=0.0, seed=0))
    ops = decompose(load_model("llama-3-8b"), Batch.decode(16, 100), Layout(), ONE)
    for name in ("attn_norm", "rope", "ffn_act", "kv_write", "sampler"):
        op = _one(ops, name)
        t = model.op_time(op, cluster)
        assert t.source.startswith(f"measured:{op.kind}/bf16/synthetic@H100-SXM"), (name, t.source)
        assert t.seconds > roof.op_time(op, cluster).seconds
    t = model.op_time(_one(ops, "qkv_proj"), cluster)
    assert t.source.startswith("roofline") and "gemm" in t.source
