"""Which replica of an expert a token goes to is the engine's rule (`placement.layertime.slot_routes`).

``random`` (vLLM: a replica per token at random) splits an expert evenly; ``nearest`` (SGLang's
``_find_nearest_expert``: the rank's own GPU's replica, else its node's first, else a fixed fair pick) keeps a
node's tokens at home where the node holds a replica and loads that node's first replica with them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.model.hardware import get_cluster
from moesim.placement.api import place
from moesim.placement.ilp import IlpOptions
from moesim.placement.layertime import (
    layer_cost,
    layer_time_bound,
    layer_time_parts,
    nearest_node_inbound,
    slot_routes,
)
from moesim.placement.metrics import gpu_loads, plan_metrics
from moesim.placement.synthetic import synthetic_trace

#: 2 nodes x 2 GPUs, 2 slots per GPU, 6 experts: expert 0 on GPU 0 and GPU 2 (two nodes), expert 1 on GPUs 0 and 1
#: (one node), the rest once. Slots: GPU 0 [0, 1], GPU 1 [2, 1], GPU 2 [0, 3], GPU 3 [4, 5].
P2L = np.array([0, 1, 2, 1, 0, 3, 4, 5])


def test_random_splits_evenly_and_nearest_follows_sglang():
    rnd = slot_routes(P2L, 6, 4, 2, "random")
    assert np.allclose(rnd, np.where(np.isin(P2L, [0, 1]), 0.5, 1.0)[None, :].repeat(4, axis=0))
    near = slot_routes(P2L, 6, 4, 2, "nearest")
    # expert 0 (slots 0 and 4): GPU 0 and GPU 2 keep their own, GPU 1 its node's first (slot 0), GPU 3 slot 4
    assert near[:, 0].tolist() == [1, 1, 0, 0] and near[:, 4].tolist() == [0, 0, 1, 1]
    # expert 1 (slots 1 and 3, both on node 0): GPUs 0 and 1 their own; node 1 holds none: fair, half each
    assert near[:, 1].tolist() == [1, 0, 0.5, 0.5] and near[:, 3].tolist() == [0, 1, 0.5, 0.5]
    # experts with one replica: every GPU sends there
    assert (near[:, [2, 5, 6, 7]] == 1).all()
    for routes in (rnd, near):  # each GPU sends each expert's tokens once in all
        for e in range(6):
            assert np.allclose(routes[:, e == P2L].sum(axis=1), 1.0)


def test_same_node_preference_only_when_it_narrows():
    # expert 0 twice on node 0 (GPUs 0 and 1), nowhere else: node 0's GPUs keep their own, node 1's pick fairly
    p2l = np.array([0, 1, 0, 2, 3, 4, 5, 6])
    near = slot_routes(p2l, 7, 4, 2, "nearest")
    assert near[:, 0].tolist() == [1, 0, 0.5, 0.5] and near[:, 2].tolist() == [0, 1, 0.5, 0.5]
    with pytest.raises(MoesimError, match="replica choice 'closest'"):
        slot_routes(p2l, 7, 4, 2, "closest")
    with pytest.raises(MoesimError, match="replica choice"):
        replace(layer_cost(get_cluster("hgx-h200-x2"), 1024, 512, 2, 16), replica_choice="closest")


def test_a_replica_on_every_node_keeps_its_tokens_at_home():
    # every expert on both nodes: no token needs the NIC under nearest; under random half of them go across
    p2l = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    tokens = np.array([[0, 1], [2, 3], [0, 3]])
    near = nearest_node_inbound(p2l, 4, 4, 2, tokens, slot_routes(p2l, 4, 4, 2, "nearest"))
    assert np.allclose(near, 0.0)
    rnd = nearest_node_inbound(p2l, 4, 4, 2, tokens, slot_routes(p2l, 4, 4, 2, "random"))
    assert (rnd > 0).all()


def _case(rule: str):
    st = synthetic_trace(2, 32, 4, tokens=512, alpha=1.2, n_group=4, topk_group=2, seed=2)
    cost = replace(layer_cost(get_cluster("hgx-h200-x2"), 2048, 1024, 4, 8), replica_choice=rule)
    return st, cost


def test_random_rule_through_the_routes_gives_the_symmetric_nic():
    """The per-source-node NIC sum under ``random`` routes equals the symmetric `node_hits` rule the layer time
    keeps for ``random`` (so ``nearest`` differs from it by the rule only)."""
    st, cost = _case("random")
    rng = np.random.default_rng(0)
    w, tokens = st.counts[0], st.token_sample(0, 256, rng)
    for _ in range(5):
        p2l = np.concatenate([np.arange(32), rng.permutation(32)[:8]])
        rng.shuffle(p2l)
        inbound = nearest_node_inbound(p2l, 32, 8, 4, tokens, slot_routes(p2l, 32, 8, 4, "random"))
        parts = layer_time_parts(p2l, w, 8, 4, tokens, cost)
        assert np.isclose(inbound.max() * cost.tokens_per_gpu * cost.nic_s_per_token / 4, parts["nic"], rtol=1e-9)


def test_bound_stays_below_every_plan_under_nearest_and_loads_are_kept():
    st, cost = _case("nearest")
    rng = np.random.default_rng(1)
    for i in range(2):
        w, tokens = st.counts[i], st.token_sample(i, 256, rng)
        lb = layer_time_bound(w, 40, 8, 4, cost)
        for _ in range(20):
            p2l = np.concatenate([np.arange(32), rng.integers(0, 32, 8)])
            rng.shuffle(p2l)
            parts = layer_time_parts(p2l, w, 8, 4, tokens, cost)
            assert all(parts[k] >= lb[k] * (1 - 1e-12) for k in ("gemm", "nic", "total"))
            loads = gpu_loads(p2l, w, 8, "nearest", 4)
            assert np.isclose(loads.sum(), w.sum())  # the rule moves load between replicas, never loses it


def test_place_scores_plans_under_the_rule_and_never_loses_to_eplb():
    st = synthetic_trace(4, 64, 6, tokens=1024, alpha=1.0, n_group=8, topk_group=4, seed=3)
    cost = layer_cost(get_cluster("hgx-h200-x2"), 2048, 1024, 6, 16, dtype="fp8", replica_choice="nearest")
    res = place(st, 16, 8, 16, ("eplb", "ilp"), 8, IlpOptions(time_limit=60.0, cost=cost))
    e, i = res["eplb"], res["ilp"]
    assert i.layer_time_s is not None and e.layer_time_s is not None
    assert (i.layer_time_s <= e.layer_time_s * (1 + 1e-9)).all()
    m = plan_metrics(i.plan, st, "nearest")
    assert m["max_load_ratio"] == pytest.approx(i.metrics["max_load_ratio"])
    assert i.layer_time_s.mean() < e.layer_time_s.mean()
    # 2 nodes x 3 GPUs, expert 0 twice on node 0 (GPUs 0, 1) and once on node 1 (GPU 3): under the rule GPU 3's
    # replica takes node 1's three GPUs (1/2 of the load), GPU 0's its own and GPU 2's (1/3), GPU 1's its own (1/6)
    stacked = np.array([0, 1, 0, 2, 3, 4, 0, 5, 6, 7, 8, 9])
    w = np.array([6.0, *[1.0] * 9])
    share = gpu_loads(stacked, w, 6, "nearest", 3)[0]
    assert share[[0, 1, 3]] == pytest.approx([6 / 3 + 1, 6 / 6 + 1, 6 / 2 + 1])
    assert gpu_loads(stacked, w, 6, "random", 3)[0][[0, 1, 3]] == pytest.approx([3, 3, 3])


def test_cli_resolves_auto_and_refuses_an_unknown_rule(tmp_path, capsys):
    import json

    base = ["place", "--stats", "synthetic", "--model", "qwen3-30b-a3b", "--gpus", "16", "--gpus-per-node", "8",
            "--tokens", "256", "--method", "eplb", "--json"]  # fmt: skip
    for extra, want in (
        ([], "random"),
        (["--export", "sglang"], "nearest"),
        (["--replica-choice", "nearest"], "nearest"),
    ):
        assert main([*base, "--out", str(tmp_path / want / str(len(extra))), *extra]) == 0
        assert json.loads(capsys.readouterr().out)["layer_cost"]["replica_choice"] == want
    assert main([*base, "--out", str(tmp_path / "mixed"), "--export", "sglang,trtllm"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["layer_cost"]["replica_choice"] == "random"
    assert "--replica-choice nearest places it for SGLang" in " ".join(cap.err.split())
    assert main([*base, "--out", str(tmp_path / "bad"), "--replica-choice", "closest"]) == 1
    err = capsys.readouterr().err
    assert "unknown --replica-choice 'closest'" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


# ---- the serving simulators under the rule (`Layout.replica_choice`; SGLang scenarios set it) ----------------------


def _placement_random(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """64 experts + 16 redundant on 16 GPUs (5 slots each, no GPU holding two replicas of one expert), loads."""
    rng = np.random.default_rng(seed)
    while True:
        p2l = np.concatenate([np.arange(64), rng.permutation(64)[:16]])
        rng.shuffle(p2l)
        if all(len(set(row)) == 5 for row in p2l.reshape(16, 5).tolist()):
            return p2l, rng.dirichlet(np.ones(64))


def test_fanout_by_source_reduces_to_the_symmetric_rule():
    from moesim.model.a2a import selection_fanout, selection_fanout_by_source
    from moesim.model.routing import _fanout, _fanout_by_source, inclusion_probs

    p2l, loads = _placement_random()
    for n_group, topk_group in ((1, 1), (8, 4)):
        sym = _fanout(16, 8, 6, 64, n_group, topk_group, loads, p2l)
        assert _fanout_by_source(16, 8, 6, 64, n_group, topk_group, loads, p2l, "random") == sym
    pi = inclusion_probs(loads, 6)
    assert selection_fanout_by_source(16, 8, 6, 64, pi, p2l, "random") == selection_fanout(16, 8, 6, 64, loads, p2l)


def test_every_expert_on_every_node_keeps_the_dispatch_at_home_under_nearest():
    from moesim.model.a2a import selection_fanout
    from moesim.model.routing import token_fanout

    p2l = np.concatenate([np.arange(32), np.arange(32)])  # 32 experts on node 0's 8 GPUs and again on node 1's
    for rule, home in (("random", False), ("nearest", True)):
        normal = token_fanout(16, 8, 4, 32, 1, 1, None, p2l, rule)
        low = selection_fanout(16, 8, 4, 32, None, p2l, rule)
        assert (normal.inter == 0 and low.inter == 0) == home, (rule, normal, low)


def test_an_sglang_scenario_times_its_steps_by_the_nearest_rule(tmp_path):
    from moesim.model.batch import Batch
    from moesim.sim.serving.serve import load
    from moesim.sim.serving.steptime import StepTimer

    p2l = np.concatenate([np.arange(8), np.arange(8)])  # Mixtral's 8 experts on each of two 8-GPU nodes
    np.save(tmp_path / "p2l.npy", p2l)
    inter = {}
    for kind in ("vllm", "sglang"):
        sc = {"model": "mixtral-8x7b", "gpu": "H100-SXM", "nodes": 2, "gpus_per_node": 8,
              "layout": {"tp": 1, "dp_attn": 16, "ep": 16}, "placement": str(tmp_path / "p2l.npy"),
              "engine": {"kind": kind}, "workload": {"rate": 1, "requests": 10}}  # fmt: skip
        built = load(sc)
        pool = built.pools[0]
        assert pool.layout.replica_choice == ("nearest" if kind == "sglang" else "random")
        t = StepTimer(built.model, pool.layout, pool.cluster, built.precision, phys_to_log=built.phys_to_log)
        est = t.estimate(Batch((4096,), (0,), "prefill"))
        inter[kind] = sum(op.inter_bytes * op.count for op in est.ops if op.name == "ep_dispatch")
    assert inter["vllm"] > 0 and inter["sglang"] == 0  # SGLang's ranks use their own node's replica


def test_decode_parts_follow_the_rule_and_stay_above_the_bound():
    st, cost = _case("nearest")
    both = replace(cost, phase="both", decode_share=0.7, decode_tokens_per_gpu=4.0)
    rng = np.random.default_rng(4)
    w, tokens = st.counts[0], st.token_sample(0, 256, rng)
    lb = layer_time_bound(w, 40, 8, 4, both)
    moved = 0
    for _ in range(10):
        p2l = np.concatenate([np.arange(32), rng.integers(0, 32, 8)])
        rng.shuffle(p2l)
        parts = layer_time_parts(p2l, w, 8, 4, tokens, both)
        assert parts["total"] >= lb["total"] * (1 - 1e-12) and parts["decode"] >= lb["decode"] * (1 - 1e-12)
        other = layer_time_parts(p2l, w, 8, 4, tokens, replace(both, replica_choice="random"))
        moved += not np.isclose(parts["decode"], other["decode"])
    assert moved > 0  # the rule reaches the decode (low-latency) parts
    # no replica: every rule prices the same
    assert layer_time_parts(np.arange(32), w, 8, 4, tokens, both)["total"] == pytest.approx(
        layer_time_parts(np.arange(32), w, 8, 4, tokens, replace(both, replica_choice="random"))["total"]
    )


def test_simulate_json_says_which_replica_rule_timed_a_redundant_placement(tmp_path, capsys):
    import json

    import yaml

    p2l = np.concatenate([np.arange(8), np.arange(8)])
    np.save(tmp_path / "p2l.npy", p2l)
    for kind, want in (("vllm", "random"), ("sglang", "nearest")):
        sc = {"model": "mixtral-8x7b", "gpu": "H100-SXM", "nodes": 2, "gpus_per_node": 8,
              "layout": {"tp": 1, "dp_attn": 16, "ep": 16}, "placement": "p2l.npy",
              "engine": {"kind": kind}, "workload": {"rate": 2, "requests": 20}}  # fmt: skip
        f = tmp_path / f"{kind}.yaml"
        f.write_text(yaml.safe_dump(sc))
        assert main(["simulate", str(f), "--engine", "analytical", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["replica_choice"] == want
