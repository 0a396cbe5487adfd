"""Contention between data-parallel and expert-parallel traffic on a GPU's NIC (`train.nic_contention`)."""

from __future__ import annotations

from typing import Any

import pytest
from fast_inputs import train_scenario  # tests/fast_inputs.py

from moesim.model import RooflineCostModel
from moesim.sim.training import train
from moesim.sim.training.train import BREAKDOWN, load, nic_contention, simulate_training
from moesim.sim.training.train_cost import dp_collective_parts


def _olmoe(nodes: int, ep: int, **layout: Any) -> dict:
    """OLMoE on ``nodes`` 8-GPU H100 nodes, PP2, EP ``ep``, interleaved over two chunks per GPU."""
    lay = {"pp": 2, "ep": ep, "schedule": "interleaved", "virtual_stages": 2, **layout}
    return train_scenario({"nodes": nodes, "layout": lay, "batch": {"global_batch": 16 * nodes, "seq_len": 1024}})


def _both(sc: dict, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """The summary with contention, and without it (`nic_contention` answering zero)."""
    setup = load(sc)
    cm = RooflineCostModel()
    with_it = simulate_training(setup, cm).summary
    with monkeypatch.context() as m:
        m.setattr(train, "nic_contention", lambda tasks, flows: ([0.0] * len(tasks), [0.0] * len(flows)))
        without = simulate_training(setup, cm).summary
    return with_it, without


def test_fair_share_loses_the_smaller_side_to_both() -> None:
    # a task [0, 2] with 1 s of NIC traffic and a bucket [0, 2] with 3 s: each loses min(1, 3) = 1 s
    t, f = nic_contention([(0.0, 2.0, 1.0)], [(0.0, 2.0, 3.0)])
    assert t == [pytest.approx(1.0)] and f == [pytest.approx(1.0)]
    # half the task's span overlaps: its NIC seconds there are 0.5, the bucket's 3 -> 0.5 each
    t, f = nic_contention([(0.0, 2.0, 1.0)], [(1.0, 2.0, 3.0)])
    assert t == [pytest.approx(0.5)] and f == [pytest.approx(0.5)]


def test_no_overlap_or_no_nic_traffic_costs_nothing() -> None:
    assert nic_contention([(0.0, 1.0, 1.0)], [(1.0, 2.0, 1.0)]) == ([0.0], [0.0])  # back to back
    assert nic_contention([(0.0, 1.0, 0.0)], [(0.0, 1.0, 1.0)]) == ([0.0], [0.0])  # EP inside the node
    assert nic_contention([(0.0, 1.0, 1.0)], [(0.0, 1.0, 0.0)]) == ([0.0], [0.0])  # DP over NVLink


def test_loss_never_exceeds_a_sides_own_nic_seconds() -> None:
    tasks = [(0.0, 1.0, 0.4), (1.0, 3.0, 2.0), (3.0, 4.0, 0.1)]
    flows = [(0.5, 2.0, 1.5), (2.0, 5.0, 0.2)]
    t, f = nic_contention(tasks, flows)
    assert all(0 <= d <= n + 1e-12 for d, (_, _, n) in zip(t, tasks, strict=True))
    assert all(0 <= d <= n + 1e-12 for d, (_, _, n) in zip(f, flows, strict=True))
    assert sum(t) == pytest.approx(sum(f))


def test_dp_traffic_uses_the_nic_only_when_its_group_crosses_nodes() -> None:
    one = load(train_scenario({"nodes": 1, "layout": {"pp": 2, "ep": 4}}))
    four = load(_olmoe(4, 16))
    cm = RooflineCostModel()
    t1, nic1 = dp_collective_parts(one, cm, "reduce_scatter", 1e9, 0.0)
    t4, nic4 = dp_collective_parts(four, cm, "reduce_scatter", 1e9, 0.0)
    assert t1 > 0 and nic1 == 0.0
    assert 0 < nic4 <= t4


def test_contention_when_both_cross_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    with_it, without = _both(_olmoe(4, 16), monkeypatch)
    assert with_it["breakdown"]["nic_contention"] > 0
    assert without["breakdown"]["nic_contention"] == 0
    assert with_it["step_s"] > without["step_s"]
    assert sum(with_it["breakdown"][k] for k in BREAKDOWN) == pytest.approx(with_it["step_s"], rel=1e-9)


@pytest.mark.parametrize(
    "sc",
    [
        _olmoe(4, 4),  # DP crosses nodes, EP stays in one: no EP bytes on the NIC
        train_scenario({"nodes": 1, "layout": {"pp": 2, "ep": 4}}),  # everything on NVLink
        _olmoe(4, 16, zero=0, overlap_grad_reduce=False),  # both cross, but no DP transfer overlaps a task
    ],
    ids=["ep-in-node", "one-node", "no-overlap"],
)
def test_no_contention_without_shared_nic_traffic_in_time(sc: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    with_it, without = _both(sc, monkeypatch)
    assert with_it["breakdown"]["nic_contention"] == 0
    assert with_it["step_s"] == pytest.approx(without["step_s"], rel=1e-12)


@pytest.mark.parametrize(
    "layout",
    [
        {"schedule": "1f1b", "virtual_stages": 1},
        {},
        {"zero": 0},
        {"overlap_param_gather": True, "zero": 2},
        {"schedule": "dualpipe", "virtual_stages": 1},
    ],
)
def test_contention_never_makes_a_step_faster(layout: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    sc = _olmoe(4, 16, **layout)
    if layout.get("schedule") == "dualpipe":
        sc["overlap"] = "chunk_pairs"
    with_it, without = _both(sc, monkeypatch)
    assert with_it["step_s"] >= without["step_s"] - 1e-12
    assert with_it["breakdown"]["nic_contention"] >= 0
