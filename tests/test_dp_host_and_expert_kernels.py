"""Two step-timer mechanisms found against SGLang's published DeepSeek-V3 runs (benchmarks/moe_published.py):

- with attention data-parallel over ``dp_attn`` ranks, each rank runs its own scheduler, sampler and launches, so a
  step's host time is one rank's (its sequences and tokens), and a decode graph is replayed at the busiest rank's
  capture size on every rank;
- the discrete-event step's routed-experts op carries the launches of its own pair count, so the achievable cost
  model times its grouped GEMMs (and not one kernel at the peak) as the analytical step does.
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.model.achievable import AchievableCostModel
from moesim.model.dtypes import Precision
from moesim.model.hardware import get_gpu, make_cluster
from moesim.model.hf_config import load_model
from moesim.model.layout import Layout
from moesim.model.ops import experts_op, fused_moe_kernels, fused_moe_parts
from moesim.sim.serving.host import EngineProfile, engine_profile
from moesim.sim.serving.scenario import EngineSpec
from moesim.sim.serving.steptime import StepTimer, busiest_rank_tokens, expert_op

DS = load_model("deepseek-v3")
H100 = make_cluster(get_gpu("H100-SXM"), gpus_per_node=8, nodes=4)
FP8 = Precision(weights="fp8_block")


def _timer(dp: int, profile: EngineProfile | None, cost_model=None) -> StepTimer:
    return StepTimer(DS, Layout(tp=1, dp_attn=dp, ep=dp), H100, FP8, cost_model, profile=profile)


def test_host_time_is_one_dp_ranks() -> None:
    prof = engine_profile(EngineSpec(kind="sglang", cuda_graphs=False))
    t32 = _timer(32, prof)
    assert t32.host_shape(32 * 100, 32 * 100) == (100, 100)
    assert t32.host_shape(3201, 3201) == (101, 101)  # the busiest rank of a round-robin deal
    assert _timer(1, prof).host_shape(3200, 3200) == (3200, 3200)
    # a decode step of 32 ranks x 64 sequences costs the host what one rank's 64 sequences cost
    n = 32 * 64
    step = t32.expected(np.ones(n, np.int64), np.full(n, 1000))
    h = prof.host
    per_rank = h["scheduler_base_s"] + 64 * h["scheduler_per_seq_s"] + h["sampling_base_s"]
    per_rank += 64 * h["sampling_per_seq_s"]
    assert step.scheduler_cpu_s + step.sampling_cpu_s == pytest.approx(per_rank, rel=1e-9)
    whole = h["scheduler_base_s"] + n * h["scheduler_per_seq_s"] + h["sampling_base_s"] + n * h["sampling_per_seq_s"]
    assert step.scheduler_cpu_s + step.sampling_cpu_s < whole / 10


def test_decode_graph_padded_per_rank() -> None:
    prof = engine_profile(EngineSpec(kind="sglang", cuda_graphs=True))
    t = _timer(32, prof)
    rank = prof.padded_batch(3)
    assert rank is not None and rank >= 3
    # 65 sequences over 32 ranks: the busiest holds 3, every rank replays that rank's capture size
    assert t._padded((65, 65, "decode")) == 32 * rank
    assert t._padded((65, 65 * 100, "prefill")) == 65


def test_des_expert_op_is_timed_as_its_kernels() -> None:
    """Above 1,024 pairs vLLM's alignment takes two launches: the DES op built from the one-token template must say
    so, or the achievable model cannot split it into its grouped GEMMs and times it at the peak."""
    ach = AchievableCostModel()
    t = _timer(32, None, ach)
    gd = FP8.gemm_compute_dtype(H100.gpu.peak_flops)
    moe = DS.moe
    for tokens in (64, 2048, 16384 * 32):
        pairs = tokens * moe.top_k // 32
        ref = experts_op(tokens, DS.hidden_size, moe.intermediate_size, moe.top_k, moe.num_experts, 32, FP8, gd)
        des = expert_op(t._template, pairs, min(8, pairs), float(tokens))
        local = moe.num_experts // 32
        parts = fused_moe_parts(
            pairs / moe.top_k, pairs, 8, DS.hidden_size, 2048, local, moe.top_k, 1.0, 2.0, "fp8", reduce=False
        )
        assert des.kernels == sum(p.kernels for p in parts) == fused_moe_kernels(pairs, local, reduce=False)
        a, b = ach.op_time(ref, H100).seconds, ach.op_time(des, H100).seconds
        assert b == pytest.approx(a, rel=0.02), tokens
    # the DES step and the analytical step of a large prefill agree (they differed 1.27x before)
    n = 32 * 4
    new, cached = np.full(n, 4096), np.zeros(n, np.int64)
    assert t.sample(new, cached).duration_s == pytest.approx(t.expected(new, cached).duration_s, rel=0.02)


def test_busiest_rank_tokens_is_the_round_robin_deal() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        n, dp = int(rng.integers(1, 80)), int(rng.integers(1, 40))
        new = rng.integers(1, 500, n) if rng.random() < 0.5 else np.ones(n, np.int64)
        deal = [int(new[g::dp].sum()) for g in range(min(dp, n))]
        assert busiest_rank_tokens(new, dp) == (int(new.sum()) if dp <= 1 else max(deal))


def test_redundant_expert_slots_take_memory(tmp_path) -> None:
    """256 experts in 288 slots over EP32: each GPU holds 9 experts' weights, not 8 (fewer KV blocks)."""
    from moesim.model.memory import weight_bytes_per_gpu
    from moesim.sim.serving.capacity import replica_capacity
    from moesim.sim.serving.scenario import build, parse_scenario

    layers = DS.num_moe_layers
    plan = np.tile(np.concatenate([np.arange(256), np.arange(32)]), (layers, 1))
    np.save(tmp_path / "plan.npy", plan)
    base = {
        "model": "deepseek-v3",
        "gpu": "H100-SXM",
        "nodes": 4,
        "gpus_per_node": 8,
        "precision": {"weights": "fp8_block"},
        "layout": {"tp": 1, "dp_attn": 32, "ep": 32},
        "workload": {"rate": 1, "requests": 4, "input": 64, "output": 8},
    }
    caps = []
    for extra in ({}, {"placement": "plan.npy"}):
        built = build(parse_scenario({**base, **extra}), tmp_path)
        caps.append(replica_capacity(built, built.pools[0]))
    routed = weight_bytes_per_gpu(DS, Layout(tp=1, dp_attn=32, ep=32), FP8)[0]["routed_experts"]
    extra_gib = (caps[1].weight_gib - caps[0].weight_gib) * 2**30
    assert extra_gib == pytest.approx(routed * 32 / 256, rel=1e-9)  # one more expert per GPU
    assert caps[1].kv_tokens < caps[0].kv_tokens


def test_sweep_memory_constraint_counts_redundant_slots() -> None:
    from moesim.sim.sweeps.sweep_spec import _fits

    args = ("deepseek-v3", 1, 8, 8, 1, "H200-SXM", "fp8_block", "bf16", 0.9, False)
    assert _fits(*args) is None  # 256 experts over 8 H200s: about 84 GB of weights each
    assert _fits(*args, 256) == "memory_fits"  # 512 slots: every GPU holds twice the routed experts


def test_sglang_masks_padded_rows_out_of_the_routing() -> None:
    """One decoding sequence on Mixtral DP4 x EP4 with graphs: every rank replays a batch-1 graph (4 rows). vLLM
    routes the 3 padded rows like tokens; SGLang masks them out of the top-k (num_token_non_padded), so its experts
    and all-to-all carry the one real token."""
    mix = load_model("mixtral-8x7b")
    lay = Layout(tp=1, dp_attn=4, ep=4)
    cl = make_cluster(get_gpu("H100-SXM"), gpus_per_node=4, nodes=1)
    new, cached = np.ones(1, np.int64), np.array([300])
    steps = {}
    for kind in ("vllm", "sglang"):
        prof = engine_profile(EngineSpec(kind=kind, cuda_graphs=True))
        t = StepTimer(mix, lay, cl, Precision(), AchievableCostModel(), profile=prof)
        assert t._padded((1, 1, "decode")) == 4 * prof.padded_batch(1) == 4
        sampled = t.sample(new, cached)
        assert sampled.padded_batch == 4
        assert sampled.pairs == (4 if kind == "vllm" else 1) * mix.moe.top_k * mix.num_moe_layers
        steps[kind] = t.expected(new, cached)
    assert engine_profile(EngineSpec(kind="sglang")).routes_padding is False
    assert steps["sglang"].compute_s < steps["vllm"].compute_s  # fewer experts' weights read
