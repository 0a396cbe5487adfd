"""Exact fast paths of the MoE block's rebuild (issue 22): identically distributed GPUs in `expected_max_normal`, and
`fused_moe_op`'s fields summed without building `fused_moe_parts`' ops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.model import ops, routing
from moesim.model.ops import fused_moe_op, fused_moe_parts
from moesim.model.routing import _emn_grid, expected_max_normal, gpu_loads


@pytest.mark.parametrize("g", [2, 4, 8, 16, 64])
def test_iid_normals_equal_the_grid(g):
    """Equal means and spreads: mean + std x E[max of g standard normals], equal to the integral on the grid."""
    rng = np.random.default_rng(g)
    for _ in range(50):
        m, s = float(rng.uniform(0.0, 1e5)), float(rng.uniform(1e-3, 1e3))
        fast = expected_max_normal(np.full(g, m), np.full(g, s))
        grid = _emn_grid(np.full(g, m), np.full(g, s))
        assert math.isclose(fast, grid, rel_tol=1e-12, abs_tol=1e-9 * s), (m, s, fast, grid)
    # E[max of 2 standard normals] = 1 / sqrt(pi), to the erf approximation's 1.5e-7 (`routing._normal_cdf`)
    assert math.isclose(routing._iid_max_normal(2), 1.0 / math.sqrt(math.pi), rel_tol=1e-6)


def test_unequal_normals_keep_the_grid():
    mean, std = np.array([10.0, 10.0, 11.0]), np.array([1.0, 1.0, 1.0])
    assert expected_max_normal(mean, std) == _emn_grid(mean, std)
    mean, std = np.array([10.0, 10.0]), np.array([1.0, 0.0])  # one constant: the grid's floor
    assert expected_max_normal(mean, std) == _emn_grid(mean, std)


def test_uniform_gpu_loads_use_the_iid_path():
    """Uniform routing over 8 GPUs: the busiest GPU's pairs by the fast path, equal to the grid's."""
    for tokens in (1, 7, 100, 4096):
        load = gpu_loads(tokens, 2, 8, num_experts=8 * 4)
        std = np.sqrt(tokens * routing._slot_moments(np.full(32, 1 / 32), 2, 8, None)[2])
        want = min(max(_emn_grid(load.mean_pairs, std), load.mean_pairs.max()), tokens * 2)
        assert math.isclose(load.busiest_pairs, want, rel_tol=1e-12)


@pytest.mark.parametrize("ep", [1, 2, 8])
def test_fused_moe_op_sums_equal_its_parts_bit_for_bit(ep):
    rng = np.random.default_rng(ep)
    for _ in range(200):
        tokens = int(rng.integers(1, 20000))
        experts = int(rng.choice([8, 64, 128, 256]))
        top_k = int(rng.choice([1, 2, 8]))
        pairs = float(rng.uniform(0.5, tokens * top_k))
        active = float(rng.uniform(1.0, experts / ep))
        hidden, width = int(rng.choice([2048, 4096, 7168])), int(rng.choice([256, 1408, 14336]))
        wb, ab = float(rng.choice([1.0, 2.0, 0.5625])), float(rng.choice([1.0, 2.0]))
        op = fused_moe_op(tokens, pairs, active, hidden, width, top_k, experts, ep, wb, ab, "bf16")
        parts = fused_moe_parts(
            tokens if ep == 1 else pairs / top_k, pairs, active, hidden, width, experts // ep, top_k, wb, ab, "bf16",
            reduce=ep == 1,
        )  # fmt: skip
        assert op.flops == sum(o.flops for o in parts)
        assert op.weight_bytes == sum(o.weight_bytes for o in parts)
        assert op.act_bytes == sum(o.act_bytes for o in parts)
        assert op.kernels == sum(o.kernels for o in parts)
    assert ops._fused_moe_totals is not None


@pytest.mark.parametrize(
    "name,layout",
    [
        ("mixtral-8x7b", {"tp": 4}),
        ("mixtral-8x7b", {"tp": 4, "ep": 4}),
        ("mixtral-8x7b", {"dp_attn": 4, "ep": 4}),
        ("mixtral-8x7b", {"dp_attn": 4}),
        ("deepseek-v3", {"dp_attn": 8, "ep": 8}),
        ("qwen3-30b-a3b", {}),
    ],
)
def test_routed_ops_are_the_moe_blocks_middle(name, layout, cluster8):
    """`_moe_routed_ops` (what the sweeps rebuild) is `_moe_ops`' run of whole-batch ops, equal op for op, and the
    block's other ops read only the attention group's tokens."""
    from moesim.model import Batch, Layout, Precision, load_model
    from moesim.model.op_record import OpContext
    from moesim.model.ops import _layer_sets_memo, _moe_ops, _moe_routed_ops

    m = load_model(name)
    lay = Layout(**layout)
    for whole, attn in ((Batch.prefill(1, 3000), Batch.prefill(1, 700)), (Batch.decode(64, 100), Batch.decode(9, 50))):
        c = OpContext(m, whole, attn, lay, cluster8, Precision(), "bf16")
        g = next(g for g in _layer_sets_memo(m, lay.stage_layers(m)[0], False) if g.is_moe)
        block, routed = _moe_ops(c, g, None, None), _moe_routed_ops(c, g, None, None)
        i = [op.name for op in block].index(routed[0].name)
        assert block[i : i + len(routed)] == routed
        assert any(op.name == "routed_experts" for op in routed)
        rest = block[:i] + block[i + len(routed) :]
        again = _moe_ops(OpContext(m, attn, attn, lay, cluster8, Precision(), "bf16"), g, None, None)
        assert [op for op in again if op.name not in {o.name for o in routed}] == rest


def test_gpu_load_takes_its_mean_once():
    load = gpu_loads(100, 2, 4, num_experts=8)
    assert load.mean_gpu_pairs == float(load.mean_pairs.mean())
    # the busiest GPU's expected active slots: E[max], never below the largest expectation (`expected_max_active`)
    assert load.max_active_experts == max(load.busiest_active, float(load.active_experts.max()))
    assert load.imbalance == load.busiest_pairs / float(load.mean_pairs.mean())
