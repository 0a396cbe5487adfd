"""Issue 21, fourth round: dropless routing concentrated per sequence (``routing.sequence_cv``), and the model FLOPs
Megatron's later versions count (the Megatron-MoE-ModelZoo Qwen3 TFLOP/s).

A router balanced over the corpus rather than within each micro-batch sends a sequence's tokens to its domain's
experts; an EP group routes the tokens of ``micro_batch x dp_attn`` sequences, so the busiest GPU carries
``1 + cv / sqrt(n) x E[max of ep standard normals]`` times the mean (`train_cost.sequence_hot_factor`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fast_inputs import train_scenario  # tests/fast_inputs.py

from moesim.model import RooflineCostModel
from moesim.model.errors import MoesimError
from moesim.model.hf_config import load_model
from moesim.model.routing import expected_max_normal
from moesim.sim.training import train_cost
from moesim.sim.training.train import load, run
from moesim.sim.training.train_cost import sequence_hot_factor, unit_costs

ROOT = Path(__file__).resolve().parents[1]
ALL = set(train_cost.MECHANISMS)


@pytest.fixture
def mechanisms(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """`train_cost.MECHANISMS`, restored after the test."""
    monkeypatch.setattr(train_cost, "MECHANISMS", set(ALL))
    return train_cost.MECHANISMS


def _sc(cv: float | None, **batch: int) -> dict:
    routing = {"distribution": "uniform", "capacity_factor": None}
    if cv is not None:
        routing["sequence_cv"] = cv
    return train_scenario({"routing": routing, "batch": batch})


def test_the_hot_factor_follows_the_sequences_per_ep_group(mechanisms: set[str]) -> None:
    setup = load(_sc(0.8))
    ep, n = setup.ep, setup.group_layout.dp_attn  # OLMoE, TP1 EP4: an EP group routes 4 sequences of MBS 1
    assert (ep, n) == (4, 4)
    z = expected_max_normal(np.zeros(ep), np.ones(ep))
    assert z == pytest.approx(1.0294, abs=2e-3)  # the expected max of 4 standard normals
    assert sequence_hot_factor(setup) == pytest.approx(1.0 + 0.8 / 2.0 * z)
    # four sequences per micro-batch: half the deviation
    four = load(_sc(0.8, micro_batch=4, global_batch=32))
    assert sequence_hot_factor(four) - 1.0 == pytest.approx((sequence_hot_factor(setup) - 1.0) / 2.0)
    # none without the key, at 0, or with the mechanism off
    assert sequence_hot_factor(load(_sc(None))) == 1.0
    assert sequence_hot_factor(load(_sc(0.0))) == 1.0
    mechanisms.discard("sequence_concentration")
    assert sequence_hot_factor(setup) == 1.0


def test_concentration_slows_the_experts_and_all_to_alls_only(mechanisms: set[str]) -> None:
    cm = RooflineCostModel()
    base = unit_costs(load(_sc(None)), cm)
    hot = unit_costs(load(_sc(0.8)), cm)
    moe = [i for i in range(1, base.f.shape[0] - 1) if base.f[i, 2] > 0]
    assert moe, "no MoE layer"
    for i in moe:
        assert hot.f[i, 1] > base.f[i, 1]  # straggler: the busiest GPU's extra pairs
        assert hot.f[i, 2] == pytest.approx(base.f[i, 2] * sequence_hot_factor(load(_sc(0.8))))  # its a2a bytes
        assert hot.f[i, 0] == base.f[i, 0] and hot.f[i, 3] == base.f[i, 3]  # balanced compute, TP untouched
    # memory and model FLOP stay at the mean (the busiest GPU changes from layer to layer)
    assert np.array_equal(hot.act_bytes, base.act_bytes) and np.array_equal(hot.flops, base.flops)
    assert "x1.4" in hot.kernel_sources["assumed"]["routing sequence_concentration"]
    assert "routing sequence_concentration" not in base.kernel_sources["assumed"]
    # the mechanism off restores the old numbers exactly
    mechanisms.discard("sequence_concentration")
    off = unit_costs(load(_sc(0.8)), cm)
    assert np.array_equal(off.f, base.f) and np.array_equal(off.b, base.b) and np.array_equal(off.w, base.w)


def test_a_step_is_slower_with_concentration_and_equal_without() -> None:
    plain = run(_sc(None), cost_model=RooflineCostModel()).summary
    zero = run(_sc(0.0), cost_model=RooflineCostModel()).summary
    hot = run(_sc(1.0), cost_model=RooflineCostModel()).summary
    assert zero["step_s"] == plain["step_s"]
    assert hot["step_s"] > plain["step_s"]
    assert hot["breakdown"]["straggler"] > plain["breakdown"]["straggler"]
    # memory: only the all-to-all receive buffers grow (sized for the busiest GPU's pairs)
    grown = {k for k, v in hot["mem_by_component_gib"].items() if v != pytest.approx(plain["mem_by_component_gib"][k])}
    assert grown == {"comm_buffers"}


def test_sequence_cv_with_token_dropping_is_one_error_line() -> None:
    sc = _sc(0.5)
    sc["routing"]["capacity_factor"] = 1.25
    with pytest.raises(MoesimError) as e:
        load(sc)
    assert "routing.sequence_cv=0.5" in str(e.value) and "capacity_factor=1.25" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(MoesimError):  # negative: the schema refuses it
        load(_sc(-0.1))


def test_megatron_flops_count_the_query_width_and_the_causal_half() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.training import megatron_flops_per_token

    q = load_model("qwen3-235b-a22b")  # 64 heads x 128 = 8,192 against hidden 4,096
    # the ModelZoo's H100 row: 19.7 s per step of 2,048 x 4,096 tokens on 256 GPUs at 245 TFLOP/s per GPU
    implied = 245e12 / (2048 * 4096 / 19.7 / 256)
    assert megatron_flops_per_token(q, 4096, 151936, causal=True) == pytest.approx(implied, rel=0.01)
    assert megatron_flops_per_token(q, 4096, 151936) > 1.1 * implied  # without the halving: 13% more
    m = load_model("mixtral-8x7b")  # query width = hidden: MCore v0.9's formula, unchanged
    h, L, v = 4096, 32, m.vocab_size
    old = 12.0 * h * h * L * (1 + 8 / 32 + 4096 / h + 14336 / h * 2 * 1.5) + 6.0 * h * v
    assert megatron_flops_per_token(m, 4096, v) == pytest.approx(old)
