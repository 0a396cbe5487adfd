"""Expert-parallel dispatch and combine (`model.a2a`): DeepEP's normal and low-latency kernels, the NCCL backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.model import Batch, Layout, MoesimError, Precision, a2a, decompose, get_gpu, load_model, make_cluster
from moesim.model.roofline import RooflineCostModel

AIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "aiconfigurator-h100-sxm"


def _ops(ep: int, phase: str, backend: str = "deepep", tokens: int = 4096, fp8: bool = True) -> tuple:
    """DeepEP's test setup: hidden 7168, top-8 of 256 experts, ``tokens`` per GPU, one group per node."""
    nodes = max(1, ep // 8)
    group = (nodes, min(nodes, 4)) if nodes > 1 and phase != "decode" else (1, 1)
    return a2a.ep_a2a_ops(
        "", 1, tokens=tokens * ep, hidden=7168, top_k=8, num_experts=256, ep=ep, stage_gpus=ep, gpus_per_node=8,
        moe_tp=1, act_bytes=2.0, backend=backend, phase=phase, fp8_dispatch=fp8, n_group=group[0],
        topk_group=group[1],
    )  # fmt: skip


def _h800(ep: int):
    return make_cluster(get_gpu("H800"), nodes=max(1, ep // 8))


def test_fixed_cost_dominates_a_small_batch() -> None:
    # 4 tokens per GPU, one H200 node: the published small-batch latency, nearly all of it the fixed cost
    h200 = make_cluster(get_gpu("H200-SXM"))
    for i, op in enumerate(_ops(8, "decode", tokens=4)):
        t = a2a.deepep_time(op, h200)
        assert t.seconds == pytest.approx(a2a.LL_SMALL_BATCH_S[i], rel=1e-9)
        assert t.fixed_s / t.seconds > 0.85
        # at one token per GPU it still pays at least 90% of the published 4-token latency, where moesim's NCCL
        # model charged one 7.1 us collective latency
        one = a2a.deepep_time(_ops(8, "decode", tokens=1)[i], h200)
        nccl = RooflineCostModel().op_time(_ops(8, "decode", "nccl", tokens=1)[i], h200)
        assert one.seconds >= 0.9 * a2a.LL_SMALL_BATCH_S[i] and one.seconds > 1.5 * nccl.seconds


def test_bandwidth_regime_reproduces_the_published_normal_kernels() -> None:
    # 4096 tokens per GPU: the bytes dominate, and the time is DeepEP's published bandwidth at every EP size
    for ep, (link, *bws) in a2a.DEEPEP_NORMAL.items():
        for i, op in enumerate(_ops(ep, "prefill")):
            t = a2a.deepep_time(op, _h800(ep))
            assert t.bound == f"{link}-link" and t.link_s / t.seconds > 0.95
            direction = op.shape["direction"]
            assert a2a._normal_logical_bytes(ep, direction) / t.seconds == pytest.approx(bws[i], rel=1e-9)


def test_low_latency_reproduces_the_published_latencies() -> None:
    for ep, times in a2a.DEEPEP_LL.items():
        for i, op in enumerate(_ops(ep, "decode", tokens=128)):
            assert a2a.deepep_time(op, _h800(ep)).seconds == pytest.approx(times[i], rel=1e-9)


def test_efficiencies_are_fractions_of_the_link() -> None:
    for (mode, direction, link), table in a2a._efficiencies().items():
        assert all(0.3 < e < 1.0 for e in table.values()), (mode, direction, link, table)
    # between published sizes: interpolated in log2(EP); beyond them: the nearest
    e16, e32 = (a2a.efficiency("normal", "dispatch", "inter", ep) for ep in (16, 32))
    assert min(e16, e32) < a2a.efficiency("normal", "dispatch", "inter", 24) < max(e16, e32)
    assert a2a.efficiency("normal", "dispatch", "inter", 1024) == a2a.efficiency("normal", "dispatch", "inter", 64)
    assert a2a.efficiency("normal", "dispatch", "intra", 4) == a2a.efficiency("normal", "dispatch", "intra", 8)


def test_fp8_dispatch_bytes_are_half_of_bf16_plus_scales() -> None:
    for phase in ("prefill", "decode"):
        fp8_d, fp8_c = _ops(8, phase, fp8=True)
        bf_d, bf_c = _ops(8, phase, fp8=False)
        header = a2a.LL_HEADER_BYTES if phase == "decode" else 0.0
        per = fp8_d.intra_bytes / (fp8_d.shape["token_bytes"])
        assert fp8_d.shape["token_bytes"] == 7168 * (1 + 4 / 128) + header
        assert fp8_d.intra_bytes == pytest.approx(per * (7168 * 2 * (1 + 4 / 128) / 2 + header))
        assert bf_d.intra_bytes == pytest.approx(per * (7168 * 2 + header))
        assert fp8_c.intra_bytes == bf_c.intra_bytes == pytest.approx(per * 7168 * 2)  # combine: bf16
        assert (fp8_d.shape["payload"], fp8_c.shape["payload"]) == ("fp8", "bf16")


def test_decompose_dispatches_fp8_for_block_scaled_weights(cluster8) -> None:
    m = load_model("deepseek-v3")
    lay = Layout(tp=1, dp_attn=8, ep=8)
    by = {w: decompose(m, Batch.prefill(8, 512), lay, cluster8, Precision(weights=w)) for w in ("fp8_block", "bf16")}
    d = {w: next(op for op in ops if op.name == "ep_dispatch") for w, ops in by.items()}
    c = {w: next(op for op in ops if op.name == "ep_combine") for w, ops in by.items()}
    assert d["fp8_block"].intra_bytes == pytest.approx(d["bf16"].intra_bytes * (1 + 4 / 128) / 2)
    assert c["fp8_block"].intra_bytes == pytest.approx(c["bf16"].intra_bytes)
    assert d["fp8_block"].shape["mode"] == "normal"
    decode = decompose(m, Batch.decode(8, 512), lay, cluster8, Precision(weights="fp8_block"))
    assert next(op for op in decode if op.name == "ep_dispatch").shape["mode"] == "low_latency"


def test_low_latency_sends_every_selection_normal_mode_deduplicates() -> None:
    # one node, 32 experts per GPU: a token's 8 experts land on ~5.3 distinct other GPUs, but 7 selections go out
    normal, _ = _ops(8, "prefill", tokens=128)
    low, _ = _ops(8, "decode", tokens=128)
    per_normal = normal.intra_bytes / normal.shape["token_bytes"]
    per_low = low.intra_bytes / low.shape["token_bytes"]
    assert per_low == pytest.approx(128 * 8 * 7 / 8)
    assert per_normal < 0.8 * per_low
    # a hot expert: its GPU receives more selections than uniform routing gives any GPU
    loads = [0.05] + [0.95 / 255] * 255
    hot = a2a.selection_fanout(8, 8, 8, 256, loads=loads)
    assert hot.intra > a2a.selection_fanout(8, 8, 8, 256).intra and hot.inter == 0.0


def test_provenance_names_the_model(cluster8) -> None:
    m = load_model("deepseek-v3")
    for phase, batch in (("normal", Batch.prefill(8, 512)), ("low_latency", Batch.decode(8, 512))):
        ops = decompose(m, batch, Layout(tp=1, dp_attn=8, ep=8), cluster8)
        t = RooflineCostModel().op_time(next(op for op in ops if op.kind == "all_to_all"), cluster8)
        assert t.source.startswith(f"deepep-{phase}:")
    ops = decompose(m, Batch.prefill(8, 512), Layout(tp=1, dp_attn=8, ep=8, a2a_backend="nccl"), cluster8)
    assert RooflineCostModel().op_time(next(op for op in ops if op.kind == "all_to_all"), cluster8).source == "roofline"


def test_nccl_backend_unchanged_when_chosen(cluster8) -> None:
    # moesim's earlier model: deduplicated bf16 tokens at the link roofline plus one collective latency
    m = load_model("mixtral-8x7b")
    lay = Layout(tp=1, dp_attn=8, ep=8, a2a_backend="nccl")
    for batch in (Batch.prefill(8, 256), Batch.decode(64, 128)):
        ops = decompose(m, batch, lay, cluster8, Precision(weights="fp8_block"))
        d, c = (next(op for op in ops if op.name == n) for n in ("ep_dispatch", "ep_combine"))
        src = batch.tokens / 8
        assert d.intra_bytes == c.intra_bytes == pytest.approx(src * 7 * (2 / 8) * 4096 * 2)
        t = RooflineCostModel().op_time(d, cluster8)
        assert t.seconds == pytest.approx(d.intra_bytes / 400e9 + 5e-6)
        assert a2a.compute_slowdown("nccl", "", "H800") == 1.0


@pytest.mark.skipif(not (AIC / "nccl_perf.parquet").exists(), reason="../shared/data/aiconfigurator-h100-sxm absent")
def test_calibrated_model_keeps_nccl_tables_for_nccl_only(tmp_path: Path) -> None:
    from moesim.profiling.aiconfigurator import import_aiconfigurator
    from moesim.profiling.calibrate import CalibratedCostModel, calibrate

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "nccl_perf.parquet").symlink_to(AIC / "nccl_perf.parquet")
    import_aiconfigurator(tmp_path / "src", tmp_path / "tables")
    cal = CalibratedCostModel(calibrate([tmp_path / "tables"], holdout=0.0, kinds=["all_to_all"]))
    h100 = make_cluster(get_gpu("H100-SXM"))
    nccl_d, _ = _ops(8, "prefill", "nccl", tokens=256)
    deep_d, _ = _ops(8, "prefill", tokens=256)
    assert cal.op_time(nccl_d, h100).source.startswith("measured:all_to_all")
    t = cal.op_time(deep_d, h100)
    assert t.source.startswith("deepep-normal:") and t.seconds == a2a.deepep_time(deep_d, h100).seconds


def test_sm_share_slows_overlapped_compute_in_normal_mode_only() -> None:
    assert a2a.compute_slowdown("deepep", "normal", "H800") == pytest.approx(132 / (132 - 24))
    assert a2a.compute_slowdown("deepep", "low_latency", "H800") == 1.0
    assert a2a.compute_slowdown("deepep", "normal", "unknown-gpu") == 1.0
    assert a2a.a2a_mode("deepep", "decode") == "low_latency" and a2a.a2a_mode("deepep", "mixed") == "normal"


def test_bad_backend_is_one_clear_line() -> None:
    with pytest.raises(MoesimError, match="a2a_backend 'gloo' is not one of deepep, nccl") as err:
        Layout(ep=8, tp=8, a2a_backend="gloo")
    assert err.value.hint
    with pytest.raises(MoesimError, match="a2a_backend 'gloo'"):
        a2a.a2a_mode("gloo", "decode")


def test_two_batch_overlap_pays_the_sms_deepep_normal_holds() -> None:
    from moesim.sim.serving.steptime import StepTimer

    m = load_model("qwen3-30b-a3b")
    lay = Layout(tp=1, dp_attn=8, ep=8)
    h800 = get_gpu("H800")
    same_sms_unknown = h800.model_copy(update={"key": "H800-no-sm-count"})  # no SM share charged
    durations = {}
    for gpu in (h800, same_sms_unknown):
        timer = StepTimer(m, lay, make_cluster(gpu), Precision(), overlap="two_batch")
        prefill = timer.expected(np.full(8, 512), np.zeros(8, dtype=int)).duration_s
        decode = timer.expected(np.ones(64, dtype=int), np.full(64, 1024)).duration_s
        durations[gpu.key] = (prefill, decode)
    (p_sm, d_sm), (p_free, d_free) = durations.values()
    assert p_sm > p_free * 1.001  # normal mode: compute under the all-to-all runs on 108 of 132 SMs
    assert d_sm == pytest.approx(d_free, rel=1e-12)  # low-latency holds no SMs


def test_scenarios_choose_the_backend() -> None:
    from moesim.sim.serving.scenario import build, parse_scenario
    from moesim.sim.training.train_scenario import parse_train_scenario

    base = {"model": "mixtral-8x7b", "cluster": "dgx-h100", "workload": {"requests": 4, "rate": 1.0}}
    for backend in ("deepep", "nccl"):
        sc = parse_scenario({**base, "layout": {"tp": 1, "dp_attn": 8, "ep": 8, "a2a_backend": backend}})
        assert build(sc).pools[0].layout.a2a_backend == backend
    assert parse_scenario({**base, "layout": {"tp": 8}}).layout.a2a_backend == "deepep"
    with pytest.raises(MoesimError, match="a2a_backend"):
        parse_scenario({**base, "layout": {"tp": 8, "a2a_backend": "gloo"}})
    train = {"model": "mixtral-8x7b", "gpu": "H100-SXM", "nodes": 1, "batch": {"global_batch": 8, "seq_len": 512}}
    assert parse_train_scenario({**train, "layout": {"ep": 8, "a2a_backend": "nccl"}}).layout.a2a_backend == "nccl"
    with pytest.raises(MoesimError, match="a2a_backend"):
        parse_train_scenario({**train, "layout": {"ep": 8, "a2a_backend": "gloo"}})
