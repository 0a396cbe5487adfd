"""Placement by predicted MoE-layer time: no doubled experts on a GPU, the physical objective, the time limit."""

from __future__ import annotations

import time

import numpy as np
import pytest

from moesim.model.errors import MoesimError
from moesim.model.hardware import get_cluster, make_cluster
from moesim.placement.api import place
from moesim.placement.baselines import duplicate_slots, rebalance_experts, repack_no_duplicates
from moesim.placement.exporters import export_plan
from moesim.placement.ilp import IlpOptions
from moesim.placement.layertime import layer_cost, layer_time_parts
from moesim.placement.plan import PlacementPlan
from moesim.placement.synthetic import synthetic_trace


def _cost(cluster: str, gpus: int, gpus_per_node: int = 8):
    c = get_cluster(cluster)
    c = make_cluster(c.gpu, nodes=c.nodes, gpus_per_node=gpus_per_node)
    return layer_cost(c, 7168, 2048, 8, gpus, dtype="fp8", tokens_per_gpu=1024)


def test_eplb_stacks_replicas_and_the_repack_does_not():
    w = np.array([50.0, 30, 10, 10])
    base = rebalance_experts(w[None], 8, 1, 1, 4)[0]
    assert duplicate_slots(base, 4)  # EPLB puts expert 0 four times on one GPU
    packed = repack_no_duplicates(base[0], w, 4, 4)
    assert not duplicate_slots(packed, 4)
    assert (np.bincount(packed, minlength=4) == np.bincount(base[0], minlength=4)).all()  # EPLB's replica counts


def test_no_method_writes_a_doubled_expert():
    st = synthetic_trace(2, 16, 2, tokens=400, alpha=1.5, seed=3)
    res = place(st, 4, 4, 16, ("round-robin", "eplb", "ilp"), options=IlpOptions(time_limit=20, workers=1))
    for r in res.values():
        assert not duplicate_slots(r.plan.phys_to_log, 4), r.method
    assert res["eplb"].metrics["layers_repacked"] >= 1


def test_export_refuses_a_doubled_expert(tmp_path):
    p2l = np.array([[0, 0, 1, 2, 3, 1]])  # GPU 0 holds expert 0 twice
    plan = PlacementPlan(p2l, num_experts=4, num_gpus=3, gpus_per_node=3, moe_layer_ids=[0], num_hidden_layers=1)
    with pytest.raises(MoesimError, match="MoE layer 0 puts two replicas of expert 0 on GPU 0"):
        export_plan(plan, "sglang", tmp_path)
    assert not list(tmp_path.iterdir())


def test_layer_time_rewards_balance_and_counts_the_nic_only_across_nodes():
    w = np.array([8.0, 1, 1, 1, 1, 1, 1, 2])
    tokens = np.array([[0, 7], [0, 1], [2, 3]])
    one = _cost("hgx-h200", 4)
    bad = np.array([0, 7, 1, 2, 3, 4, 5, 6])  # the two heaviest experts share GPU 0
    good = np.array([0, 1, 7, 2, 3, 4, 5, 6])
    t_bad, t_good = (layer_time_parts(p, w, 4, 4, tokens, one) for p in (bad, good))
    assert t_good["gemm"] < t_bad["gemm"] and t_good["total"] < t_bad["total"]
    assert t_bad["nic"] == 0.0  # one node: no NIC
    two = _cost("hgx-h200-x2", 4, 2)
    spread = layer_time_parts(bad, w, 4, 2, tokens, two)
    assert spread["nic"] > 0 and spread["total"] > t_bad["total"] - one.fixed_s + two.fixed_s - 1e-12


def test_physical_ilp_never_loses_to_eplb_and_is_deterministic():
    st = synthetic_trace(3, 64, 4, tokens=1024, alpha=1.0, affinity=2.0, seed=5)
    opts = IlpOptions(time_limit=60, cost=_cost("hgx-h200-x2", 16), workers=1)
    a = place(st, 16, 8, 16, ("eplb", "ilp"), options=opts)
    b = place(st, 16, 8, 16, ("ilp",), options=opts)
    e, i = a["eplb"].layer_time_s, a["ilp"].layer_time_s
    assert e is not None and i is not None
    assert (i <= e * (1 + 1e-12)).all()
    assert a["ilp"].metrics["layer_time_s"] == pytest.approx(float(i.mean()))
    assert np.array_equal(a["ilp"].plan.phys_to_log, b["ilp"].plan.phys_to_log)
    assert not duplicate_slots(a["ilp"].plan.phys_to_log, 16)


@pytest.mark.wall_clock  # run alone, after the parallel run (`make test`)
def test_the_whole_call_keeps_the_time_limit():
    st = synthetic_trace(6, 256, 8, tokens=2048, alpha=1.0, n_group=8, topk_group=4, seed=1)
    limit = 3.0
    t0 = time.perf_counter()
    res = place(st, 64, 8, 64, ("eplb", "ilp"), 8, IlpOptions(time_limit=limit, workers=1, work_limit=10**6))
    assert time.perf_counter() - t0 <= 1.1 * limit
    assert not duplicate_slots(res["ilp"].plan.phys_to_log, 64)


def test_current_plan_of_another_shape_is_one_line():
    st = synthetic_trace(2, 8, 2, tokens=200, seed=0)
    cur = PlacementPlan(np.tile(np.arange(8), (3, 1)), num_experts=8, num_gpus=4, gpus_per_node=4)
    with pytest.raises(MoesimError, match="current plan is \\[3 layers, 8 slots\\]"):
        place(st, 4, 4, 0, ("eplb",), current=cur)


def test_place_simulate_reports_the_des_with_each_plan(tmp_path, capsys):
    import json

    from moesim.dashboard.cli import main

    sc = tmp_path / "sc.yaml"
    sc.write_text(
        "name: t\nmodel: mixtral-8x7b\ncluster: dgx-h100\nlayout: {tp: 1, dp_attn: 8, ep: 8}\n"
        "engine: {max_batch: 64, max_tokens: 4096, chunked_prefill: true, block_size: 16}\n"
        "workload: {arrival: poisson, rate: 5, requests: 20, input: {dist: fixed, value: 256}, "
        "output: {dist: fixed, value: 16}}\nrouting: {distribution: uniform}\nseed: 0\n"
    )
    argv = ["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--redundant", "8",
            "--method", "eplb,ilp", "--time-limit", "5", "--tokens", "512", "--simulate", str(sc),
            "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    cap = capsys.readouterr()
    assert code in (0, None), cap.err[-2000:]
    out = json.loads(cap.out)
    sim = out["simulate"]
    assert set(sim) == {"scenario", "eplb", "ilp"} and sim["eplb"]["tpot_mean_s"] > 0
    assert out["methods"]["ilp"]["layer_time_s"] <= out["methods"]["eplb"]["layer_time_s"] * (1 + 1e-9)


def _brute_force_one_node(w: np.ndarray, gpus: int, cost) -> float:
    """Least layer time over every plan of 2 slots per GPU, distinct experts per GPU, every expert placed."""
    from itertools import combinations, combinations_with_replacement

    best = np.inf
    pairs = list(combinations(range(w.size), 2))
    for pick in combinations_with_replacement(pairs, gpus):
        p2l = np.array(pick).reshape(-1)
        if np.bincount(p2l, minlength=w.size).min() == 0:
            continue
        best = min(best, layer_time_parts(p2l, w, gpus, gpus, np.zeros((1, 2), np.int64), cost)["total"])
    return best


@pytest.mark.parametrize("w", [[90.0, 4, 3, 3], [40.0, 30, 20, 10], [5.0, 5, 5, 5], [70.0, 25, 4, 1], [1.0, 1, 1, 97]])
def test_exact_one_node_matches_brute_force_and_proves_it(w):
    from moesim.placement.exact import exact_one_node

    w = np.array(w)
    cost = layer_cost(get_cluster("hgx-h200"), 4096, 14336, 2, 5, dtype="bf16", tokens_per_gpu=512)
    opts = IlpOptions(cost=cost)
    slots, rep = exact_one_node(w, 10, 5, opts)
    assert rep.status == "optimal" and rep.gap == 0.0
    assert all(len(set(row)) == 2 for row in slots.tolist())  # never two replicas of one expert on a GPU
    got = layer_time_parts(slots.reshape(-1), w, 5, 5, np.zeros((1, 2), np.int64), cost)["total"]
    assert got == pytest.approx(rep.objective + cost.fixed_s, rel=1e-12)
    assert got == pytest.approx(_brute_force_one_node(w, 5, cost), rel=1e-12)


def test_mixtral_plus_8_is_proven_optimal_within_five_seconds_and_deterministic():
    st = synthetic_trace(8, 8, 2, tokens=1024, alpha=1.0, affinity=2.0, seed=1)
    cost = layer_cost(get_cluster("hgx-h200"), 4096, 14336, 2, 8, dtype="bf16")
    opts = IlpOptions(time_limit=5, cost=cost, mip_gap=0.0, workers=1)
    t0 = time.perf_counter()
    a = place(st, 8, 8, 8, ("eplb", "ilp"), options=opts)
    assert time.perf_counter() - t0 < 5
    b = place(st, 8, 8, 8, ("ilp",), options=opts)
    m = a["ilp"].metrics
    assert m["status"] == "optimal" and m["gap"] == 0.0 and m["layers_optimal"] == 8
    assert (a["ilp"].layer_time_s <= a["eplb"].layer_time_s * (1 + 1e-12)).all()
    assert np.array_equal(a["ilp"].plan.phys_to_log, b["ilp"].plan.phys_to_log)


def test_trtllm_gets_an_entry_for_the_mtp_layer_and_reads_back(tmp_path):
    from moesim.placement.exporters import read_plan

    p2l = np.array([[0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 2, 3]])
    plan = PlacementPlan(p2l, 4, 3, 3, moe_layer_ids=[1, 2], num_hidden_layers=3, mtp_layers=1)
    assert PlacementPlan.from_dict(plan.to_dict()).mtp_layers == 1
    assert "mtp_layers" not in PlacementPlan(p2l, 4, 3, 3).to_dict()  # older plan files keep their bytes
    files = export_plan(plan, "trtllm", tmp_path)
    text = files[1].read_text()
    assert "  3: [3, 2, 1, 0, 2, 3]\n" in text  # decoder layers 0..2, the MTP layer is 3: the last MoE layer's plan
    back = read_plan(files[1], "trtllm", 4, 3, 3, moe_layer_ids=[1, 2], num_hidden_layers=3)
    assert np.array_equal(back.phys_to_log, p2l) and back.mtp_layers == 1
    sg = export_plan(plan, "sglang", tmp_path)[0].read_text()
    assert sg.count("[") == 1 + 3  # SGLang: one row per decoder layer, none for the MTP layer (draft worker)


def test_layer_time_bound_is_below_every_plan():
    from moesim.placement.layertime import layer_time_bound

    st = synthetic_trace(2, 32, 4, tokens=512, alpha=1.2, n_group=4, topk_group=2, seed=2)
    cost = _cost("hgx-h200-x2", 8, 4)
    rng = np.random.default_rng(0)
    for i in range(2):
        w, tokens = st.counts[i], st.token_sample(i, 256, rng)
        lb = layer_time_bound(w, 40, 8, 4, cost)
        assert lb["nic"] > 0 and lb["gemm"] > 0
        for _ in range(20):
            p2l = np.concatenate([np.arange(32), rng.integers(0, 32, 8)])
            rng.shuffle(p2l)
            parts = layer_time_parts(p2l, w, 8, 4, tokens, cost)
            assert all(parts[k] >= lb[k] * (1 - 1e-12) for k in ("gemm", "nic", "total"))


def test_nic_search_lowers_the_busiest_node_and_is_deterministic():
    from moesim.placement.ilp_stages import _incidence
    from moesim.placement.nicsearch import nic_search

    st = synthetic_trace(1, 64, 8, tokens=1024, alpha=1.0, n_group=8, topk_group=4, seed=4)
    cost = _cost("hgx-h200-x4", 32, 8)
    w, tokens = st.counts[0], st.token_sample(0, 512, np.random.default_rng(0))
    p2l = np.concatenate([np.arange(64), np.argsort(-w)[:32]])  # 96 slots: the 32 heaviest twice, 3 per GPU
    a0 = _incidence(p2l, 64, 4)
    r = np.bincount(p2l, minlength=64)
    a = nic_search(a0, w, r, tokens, 8, cost, passes=30)
    b = nic_search(a0, w, r, tokens, 8, cost, passes=30)
    assert a is not None and np.array_equal(a, b)
    assert (a.sum(axis=1) == r).all() and (a.sum(axis=0) == a0.sum(axis=0)).all() and a.max() <= 8
    from moesim.placement.nicsearch import _hits

    idx = np.where(tokens >= 0, tokens, 64)
    assert _hits(a, r, idx).max() < _hits(a0, r, idx).max()


@pytest.mark.parametrize("r", [[3, 1, 1, 1], [2, 2, 1, 1], [4, 2, 1, 1], [2, 2, 2, 2]])
def test_pairing_search_is_exact_where_the_fold_doubles_an_expert(r):
    from itertools import permutations

    from moesim.placement.exact import _best_pairing

    r = np.array(r)
    f, g = np.array([5.0, 4.0, 2.0, 1.0]), np.array([1.0, 3.0, 0.5, 2.0])
    items = np.repeat(np.arange(4), r)
    best = np.inf
    for perm in set(permutations(items.tolist())):
        pairs = np.array(perm).reshape(-1, 2)
        if (pairs[:, 0] != pairs[:, 1]).all():
            best = min(best, (f[pairs[:, 0]] + f[pairs[:, 1]]).max() + (g[pairs[:, 0]] + g[pairs[:, 1]]).max())
    got = _best_pairing(f, g, r, np.inf, [10**6])
    assert got is not None and got[0] == pytest.approx(best)
    assert sorted(e for p in got[1] for e in p) == items.tolist()
