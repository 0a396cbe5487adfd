"""Issue 21: context parallelism in training (``layout.cp``; Megatron's ``--context-parallel-size`` with Transformer
Engine's ring attention). Each sequence is cut into ``2 x cp`` chunks, a rank holds chunks ``r`` and
``2 cp - 1 - r``; every op but the core attention sees ``seq_len / cp`` tokens; the keys and values pass round the
ring beside the attention (`train_cost.cp_ring_seconds`); dense gradients are reduced over ``dp x cp``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fast_inputs import train_scenario  # tests/fast_inputs.py

from moesim.model import Batch, RooflineCostModel
from moesim.model.errors import MoesimError
from moesim.model.op_record import Op
from moesim.model.roofline import OpTime
from moesim.sim.training import train_cost
from moesim.sim.training.train import load, simulate_training
from moesim.sim.training.train_cost import cp_batch, cp_ring_seconds, sequence_hot_factor, unit_costs

ROOT = Path(__file__).resolve().parents[1]


def _full_pairs(seq: int) -> int:
    return seq * (seq + 1) // 2


@pytest.mark.parametrize("cp", [2, 4, 8])
def test_a_rank_computes_its_share_of_the_causal_attention(cp: int) -> None:
    seq = 4096
    c = seq // (2 * cp)
    b = cp_batch(1, seq, cp)
    assert b.tokens == seq // cp and b.phase == "prefill"
    # rank 0's chunks 0 and 2cp-1: c^2 (2cp - 1) + c (c + 1) query-key pairs, the same on every rank
    assert b.attention_pairs() == c * c * (2 * cp - 1) + c * (c + 1)
    every = [
        Batch((c, c), (r * c, (2 * cp - 1 - r) * c)).attention_pairs() for r in range(cp)
    ]  # rank r's chunks r and 2cp-1-r
    assert len(set(every)) == 1
    assert sum(every) == _full_pairs(seq)  # the ranks together compute the whole sequence's attention once
    # a sliding window caps the pairs of each chunk exactly
    assert b.attention_pairs(window=128) == Batch((c, c), (0, (2 * cp - 1) * c)).attention_pairs(window=128)
    assert cp_batch(3, seq, 1) == Batch.prefill(3, seq)


def test_attention_groups_get_both_chunks_of_their_sequences() -> None:
    b = cp_batch(4, 4096, 2)  # four sequences' slices, dealt round-robin to 2 attention groups
    parts = b.split(2)
    assert [p.tokens for p in parts] == [4096, 4096]  # two slices of 2,048 tokens each
    assert parts[0].attention_pairs() == parts[1].attention_pairs()


def _cp(cp: int, seq: int, **layout: int) -> dict:
    return train_scenario({"layout": {"cp": cp, **layout}, "batch": {"seq_len": seq}})


def test_cp_splits_everything_but_attention_by_the_sequence() -> None:
    cm = RooflineCostModel()
    # the same GPUs: tp1 cp2 pp2 (dp 2) at 2,048 tokens per sequence against tp1 pp2 (dp 4) at 1,024
    two = load(_cp(2, 2048))
    one = load(_cp(1, 1024))
    assert (two.cp, two.dp, two.gpus, two.grad_dp) == (2, 2, 8, 4)
    assert (one.cp, one.dp, one.gpus, one.grad_dp) == (1, 4, 8, 4)
    assert two.edp == one.edp and two.microbatches == 2 * one.microbatches  # half the dp, the same global batch
    u2, u1 = unit_costs(two, cm), unit_costs(one, cm)
    assert u2.tokens_per_gpu == u1.tokens_per_gpu == 1024
    # the core attention computes a longer context's pairs: 2,048-token sequences' rank slice against 1,024
    pairs2 = cp_batch(1, 2048, 2).attention_pairs()
    assert pairs2 / Batch.prefill(1, 1024).attention_pairs() == pytest.approx(2.0, rel=2e-3)
    # one GPU's work: every unit's forward FLOP beyond the attention's is the same
    extra = u2.flops[1:-1, 0] - u1.flops[1:-1, 0]
    heads, d = two.model.attention.num_heads, two.model.attention.head_dim
    assert extra == pytest.approx(np.full_like(extra, 2.0 * (pairs2 - _full_pairs(1024)) * heads * 2 * d), rel=1e-9)
    assert u2.f[1:-1].sum() > u1.f[1:-1].sum()
    # activations kept per micro-batch: the same tokens per GPU, so the same bytes
    assert u2.act_bytes.sum() == pytest.approx(u1.act_bytes.sum(), rel=1e-9)
    # the job's step: twice the tokens (sequences twice as long) on the same GPUs, each GPU's micro-batch the same
    # size but for its longer attention, and twice the micro-batches per pipeline (a smaller bubble): about the
    # same tokens per second per GPU
    r2, r1 = simulate_training(two, cm), simulate_training(one, cm)
    assert r2.summary["layout"].startswith("TP1 CP2 PP2 DP2")
    assert r2.summary["gpus"] == r1.summary["gpus"] == 8
    ratio = r2.summary["tokens_per_s_per_gpu"] / r1.summary["tokens_per_s_per_gpu"]
    assert 0.8 < ratio < 1.2


def test_dense_gradients_are_reduced_over_dp_times_cp() -> None:
    cm = RooflineCostModel()
    two, one = load(_cp(2, 2048)), load(_cp(1, 1024))
    # the same dense bytes over the same dp x cp = 4 GPUs
    assert train_cost.dp_collective_seconds(two, cm, "reduce_scatter", 1e9, 0.0) == pytest.approx(
        train_cost.dp_collective_seconds(one, cm, "reduce_scatter", 1e9, 0.0)
    )
    # ZeRO-1 shards the optimizer over dp x cp: the same memory for master weights and states
    m2, m1 = simulate_training(two, cm).memory, simulate_training(one, cm).memory
    for col in ("master_weights", "optimizer_states"):
        assert float(m2[col].max()) == pytest.approx(float(m1[col].max()), rel=1e-9)


class _SlowLink(RooflineCostModel):
    """The roofline, but a point-to-point send takes ``hop`` seconds."""

    def __init__(self, hop: float) -> None:
        super().__init__()
        self.hop = hop

    def op_time(self, op: Op, cluster):  # type: ignore[no-untyped-def]
        if op.kind == "p2p":
            return OpTime(self.hop, 0.0, 0.0, 0.0, "inter-link", source="test link")
        return super().op_time(op, cluster)


def test_the_ring_adds_what_the_attention_does_not_hide() -> None:
    setup = load(_cp(4, 4096))
    attn = Op("attention", "attention", "L", 1, 0.0, 0.0, 0.0, 0.0, shape={"tokens": 1024.0})
    a = setup.model.attention
    f, b, why = cp_ring_seconds(setup, _SlowLink(1e-3), attn, 2e-3, 6e-3)
    # 3 transfers of 1 ms against 0.5 ms of attention each forward; backward: 2 ms against 1.5 ms
    assert f == pytest.approx(3 * (1e-3 - 0.5e-3)) and b == pytest.approx(3 * (2e-3 - 1.5e-3))
    assert "cp=4" in why and "NVLink" in why
    assert cp_ring_seconds(setup, _SlowLink(1e-6), attn, 2e-3, 6e-3)[:2] == (0.0, 0.0)
    # the bytes of one transfer: the rank's tokens x its KV heads x (head dim + value dim), bf16
    seen: list[Op] = []

    class Spy(RooflineCostModel):
        def op_time(self, op: Op, cluster):  # type: ignore[no-untyped-def]
            seen.append(op)
            return super().op_time(op, cluster)

    cp_ring_seconds(setup, Spy(), attn, 1.0, 1.0)
    assert seen[0].intra_bytes == pytest.approx(1024 * a.num_kv_heads * (a.head_dim + a.v_head_dim) * 2)
    # a ring of tp x cp GPUs over more than a node sends over the network
    wide = load(train_scenario({"nodes": 2, "layout": {"cp": 16, "ep": 4, "pp": 1}, "batch": {"seq_len": 4096}}))
    cp_ring_seconds(wide, Spy(), attn, 1.0, 1.0)
    assert seen[-1].inter_bytes > 0 and seen[-1].intra_bytes == 0


def test_the_ring_shows_in_the_step_when_the_link_is_slow() -> None:
    setup = load(_cp(2, 2048))
    fast, slow = unit_costs(setup, RooflineCostModel()), unit_costs(setup, _SlowLink(0.05))
    assert slow.f[1:-1, 3].sum() > fast.f[1:-1, 3].sum() + 0.04 * setup.model.num_layers
    assert any(k.startswith("cp_ring") for k in slow.kernel_sources["assumed"])


def test_a_slice_of_a_sequence_routes_like_a_sequence() -> None:
    routing = {"routing": {"distribution": "uniform", "capacity_factor": None, "sequence_cv": 0.8}}
    two = load(train_scenario(_cp(2, 2048), routing))
    one = load(train_scenario(_cp(1, 1024), routing))
    assert sequence_hot_factor(two) == sequence_hot_factor(one) > 1.0


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"layout": {"cp": 3}, "batch": {"seq_len": 1024}}, "not a multiple of 2 x cp = 6"),
        ({"layout": {"cp": 4, "pp": 4}}, "does not divide the 8 GPUs"),
        ({"layout": {"cp": 2, "ep": 8}}, "does not divide the tp x cp x dp = 4 GPUs"),
    ],
)
def test_bad_cp_layouts_fail_with_one_line(over: dict, needle: str) -> None:
    with pytest.raises(MoesimError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load(train_scenario(over))


def test_mla_up_projects_its_own_latents_and_passes_full_heads_round_the_ring() -> None:
    """MLA with context parallelism (Megatron-Core computes K and V from the rank's own latents, then the ring passes
    them on): ``kv_b_proj`` on the rank's tokens only, the attention on its pairs, the ring's bytes every local head's
    key (nope + rope) and value dims."""
    cm = RooflineCostModel()
    mla = {"model": "deepseek-v2-lite", "layout": {"ep": 4}}
    two = load(train_scenario(_cp(2, 2048), mla))
    one = load(train_scenario(_cp(1, 1024), mla))
    u2, u1 = unit_costs(two, cm), unit_costs(one, cm)
    assert u2.tokens_per_gpu == u1.tokens_per_gpu == 1024
    a = two.model.attention
    heads, dq = a.num_heads, a.qk_nope_head_dim + a.qk_rope_head_dim
    pairs2 = cp_batch(1, 2048, 2).attention_pairs()
    # every layer's forward FLOP beyond the cp=1 run's is the attention's extra pairs (the up-projection is the same)
    extra = u2.flops[1:-1, 0] - u1.flops[1:-1, 0]
    want = 2.0 * (pairs2 - _full_pairs(1024)) * heads * (dq + a.v_head_dim)
    assert extra == pytest.approx(np.full_like(extra, want), rel=1e-9)
    seen: list[Op] = []

    class Spy(RooflineCostModel):
        def op_time(self, op: Op, cluster):  # type: ignore[no-untyped-def]
            if op.name == "cp_ring":
                seen.append(op)
            return super().op_time(op, cluster)

    unit_costs(two, Spy())
    assert seen and seen[0].intra_bytes == pytest.approx(1024 * heads * (dq + a.v_head_dim) * 2)


def test_cli_says_cp_in_the_layout(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "cp.yaml"
    path.write_text(yaml.safe_dump(_cp(2, 2048)))
    out = subprocess.run(
        [sys.executable, "-m", "moesim.dashboard.cli", "train", str(path), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert '"layout": "TP1 CP2 PP2 DP2' in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_cp(3, 1024)))
    out = subprocess.run(
        [sys.executable, "-m", "moesim.dashboard.cli", "train", str(bad)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "2 x cp" in out.stderr
