"""Issue 21, third round: the MoE combine's unpermute as Megatron runs it with ``--moe-permute-fusion``.

The committed ``permute`` tables time the combine as PyTorch's atomic ``index_add_`` (about 10x the dispatch gather
at training sizes); Transformer Engine's fused unpermute is a gather on the dispatch kernel's grid, so mechanism
``permute_fusion`` (`train_cost.fused_unpermute_seconds`) times it as the dispatch gather at the same shape.
"""

from __future__ import annotations

import numpy as np
import pytest
from fast_inputs import train_scenario  # tests/fast_inputs.py

from moesim.model import ClusterSpec, RooflineCostModel
from moesim.model.ops import Op
from moesim.model.roofline import OpTime
from moesim.sim.training import train_cost
from moesim.sim.training.train import load
from moesim.sim.training.train_cost import fused_unpermute_seconds, unit_costs

ALL = set(train_cost.MECHANISMS)


class AtomicCombine:
    """The roofline, except that ``permute`` ops are 'measured': the dispatch gather takes ``gather_s`` and the
    combine (an atomic scatter-add) ``combine_s``."""

    def __init__(self, gather_s: float = 1e-4, combine_s: float = 1e-3) -> None:
        self.gather_s, self.combine_s, self.roof = gather_s, combine_s, RooflineCostModel()

    def op_time(self, op: Op, cluster: ClusterSpec) -> OpTime:
        if op.kind == "permute":
            t = self.combine_s if op.shape.get("direction") == "combine" else self.gather_s
            return OpTime(t, 0.0, 0.0, 0.0, "measured", "measured:test permute (knn)")
        return self.roof.op_time(op, cluster)


@pytest.fixture
def mechanisms(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """`train_cost.MECHANISMS`, restored after the test."""
    monkeypatch.setattr(train_cost, "MECHANISMS", set(ALL))
    return train_cost.MECHANISMS


def _permute(direction: str) -> Op:
    shape = {"tokens": 2048.0, "hidden": 4096, "top_k": 8, "direction": direction}
    return Op("unpermute", "permute", "x", 1, 0.0, 0.0, 0.0, 2.0 * 2048 * 8 * 4096 * 2, dtype="bf16", shape=shape)


def test_the_fused_unpermute_is_timed_as_the_dispatch_gather(mechanisms: set[str]) -> None:
    cluster = load(train_scenario({})).cluster
    cm = AtomicCombine()
    src = train_cost._Sources()
    combine = _permute("combine")
    assert fused_unpermute_seconds(combine, 1e-3, cm, cluster, src) == pytest.approx(1e-4)
    assert "permute_fusion" in src.summary()["assumed"]["unpermute permute"]
    # the dispatch side and every other kind keep the cost model's time
    assert fused_unpermute_seconds(_permute("dispatch"), 1e-4, cm, cluster, train_cost._Sources()) == 1e-4
    norm = Op("norms", "memcpy", "x", 1, 0.0, 0.0, 0.0, 1e6, dtype="bf16", shape={"bytes": 5e5})
    assert fused_unpermute_seconds(norm, 3e-5, cm, cluster, train_cost._Sources()) == 3e-5
    # never above the table's own combine time
    slow_gather = AtomicCombine(gather_s=5e-3, combine_s=1e-3)
    assert fused_unpermute_seconds(combine, 1e-3, slow_gather, cluster, train_cost._Sources()) == 1e-3
    mechanisms.discard("permute_fusion")
    assert fused_unpermute_seconds(combine, 1e-3, cm, cluster, train_cost._Sources()) == 1e-3


def test_a_moe_step_is_faster_with_the_fusion_by_the_combines_saving(mechanisms: set[str]) -> None:
    setup = load(train_scenario({}))
    cm = AtomicCombine()
    on = unit_costs(setup, cm)
    mechanisms.discard("permute_fusion")
    off = unit_costs(setup, cm)
    moe_units = [i for i in range(1, on.f.shape[0] - 1) if on.f[i].sum() != off.f[i].sum()]
    assert moe_units, "no MoE layer changed"
    for i in moe_units:  # one combine per MoE layer: forward 0.9 ms cheaper, its backward (ratio 1) as much
        assert off.f[i, 0] - on.f[i, 0] == pytest.approx(0.9e-3, rel=1e-6)
        assert off.b[i, 0] - on.b[i, 0] == pytest.approx(0.9e-3, rel=1e-6)
    assert np.all(on.f[:, 2] == off.f[:, 2])  # communication untouched
    assert "unpermute permute" in on.kernel_sources["assumed"]
    assert "unpermute permute" not in off.kernel_sources["assumed"]
