"""Expert placement: statistics, EPLB, the ILP, metrics, `moesim place`, and plans in the serving simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.placement.api import place
from moesim.placement.baselines import rebalance_experts, round_robin
from moesim.placement.ilp import IlpOptions, solve_layer
from moesim.placement.metrics import gpu_loads, layer_sends, load_lower_bound, replica_bound
from moesim.placement.plan import PlacementPlan
from moesim.placement.stats import RoutingStats
from moesim.placement.synthetic import synthetic_trace

# deepseek-ai/EPLB README: the example and its printed output
EPLB_WEIGHT = np.array(
    [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86], [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
)
EPLB_PHY2LOG = np.array(
    [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1], [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
)


def test_eplb_reproduces_its_readme_example():
    phy2log, log2phy, logcnt = rebalance_experts(EPLB_WEIGHT, 16, 4, 2, 8)
    np.testing.assert_array_equal(phy2log, EPLB_PHY2LOG)
    for layer in range(2):
        assert logcnt[layer].sum() == 16
        for e in range(12):
            slots = log2phy[layer, e][log2phy[layer, e] >= 0]
            assert len(slots) == logcnt[layer, e]
            assert (phy2log[layer, slots] == e).all()


def test_eplb_global_policy_when_groups_do_not_divide_nodes():
    w = np.array([[10.0, 1, 1, 1, 1, 1, 1, 1]])
    phy2log, _, logcnt = rebalance_experts(w, 12, 1, 2, 4)  # 1 group on 2 nodes: global
    assert logcnt[0, 0] == 5  # the hot expert takes all four extra slots
    assert phy2log.shape == (1, 12)


def test_round_robin_is_linear():
    np.testing.assert_array_equal(round_robin(2, 4, 6), [[0, 1, 2, 3, 0, 1]] * 2)


def test_stats_from_trace_counts_coactivation_transitions():
    topk = np.array([[[0, 1], [2, 3]], [[0, 2], [2, 1]], [[1, 0], [3, -1]]])  # [T=3, L=2, k=2]
    st = RoutingStats.from_topk(topk, 4)
    np.testing.assert_array_equal(st.counts, [[3, 2, 1, 0], [0, 1, 2, 2]])
    co = st.coactivation_counts()
    np.testing.assert_array_equal(np.diag(co[0]), st.counts[0])
    assert co[0][0, 1] == 2 and co[0][0, 2] == 1 and co[0][1, 2] == 0
    tr = st.transition_counts()
    assert tr.shape == (1, 4, 4)
    assert tr[0][0, 2] == 2 and tr[0][1, 3] == 2 and tr[0][0, 3] == 2 and tr[0][1, 0] == 0
    assert tr.sum() == 4 + 4 + 2  # k x k pairs per token, the padded pick left out


@pytest.mark.parametrize(
    "counts, match",
    [
        ([[1.0, np.nan]], "NaN"),
        ([[1.0, -2.0]], "negative"),
        ([[0.0, 0.0]], "loads of layer 0 are all zero"),
        ([1.0, 2.0], "shape"),
    ],
)
def test_stats_reject_bad_counts(counts, match):
    with pytest.raises(MoesimError, match=match):
        RoutingStats(np.array(counts))


def test_synthetic_is_seeded_skewed_and_group_limited():
    a = synthetic_trace(3, 64, 6, tokens=2000, alpha=1.2, n_group=8, topk_group=3, seed=7)
    b = synthetic_trace(3, 64, 6, tokens=2000, alpha=1.2, n_group=8, topk_group=3, seed=7)
    np.testing.assert_array_equal(a.topk, b.topk)
    groups = a.topk // 8
    assert max(len(set(row)) for row in groups.reshape(-1, 6).tolist()) <= 3
    share = np.sort(a.shares()[0])[::-1]
    assert share[0] > 4 * share[32]  # power law, not uniform
    c = synthetic_trace(2, 32, 2, tokens=4000, alpha=0.0, affinity=4.0, seed=1)
    c0 = synthetic_trace(2, 32, 2, tokens=4000, alpha=0.0, affinity=0.0, seed=1)
    top = np.sort(c.transition_counts()[0].ravel())[::-1][:32].sum() / c.transition_counts()[0].sum()
    top0 = np.sort(c0.transition_counts()[0].ravel())[::-1][:32].sum() / c0.transition_counts()[0].sum()
    assert top > 2 * top0  # affinity concentrates layer-to-layer transitions on partner pairs


def test_gpu_loads_split_replicas_equally():
    p2l = np.array([[0, 1, 0, 2]])  # 2 GPUs: {0, 1}, {0, 2}; expert 0 has two replicas
    loads = gpu_loads(p2l, np.array([[8.0, 2.0, 4.0]]), 2)
    np.testing.assert_allclose(loads, [[4 + 2, 4 + 4]])
    assert replica_bound(np.array([8.0, 2.0, 4.0]), 4) == 4.0
    np.testing.assert_allclose(load_lower_bound(np.array([[8.0, 2.0, 4.0]]), 4, 2), [7.0])


def test_sends_count_a_node_once_per_token():
    p2l = np.array([0, 1, 2, 3])  # 4 nodes of one GPU each
    tokens = np.array([[0, 1], [2, -1]])  # hits 2 nodes, then 1 node
    assert layer_sends(p2l, 4, 4, tokens) == pytest.approx((2 + 1) / 2 * 3 / 4)
    assert layer_sends(p2l, 4, 1, tokens) == 0.0


def test_ilp_small_layer_optimal_and_beats_eplb():
    w = np.array([100.0, 60, 30, 20, 5])
    base = rebalance_experts(w[None], 10, 1, 1, 5)[0][0]
    res = solve_layer(w, 10, 5, 5, np.zeros((1, 2), np.int64), base, IlpOptions(), 30.0)
    assert res.stages[0].status == "optimal" and res.stages[0].gap <= 1e-4
    p2l = res.phys_to_log
    assert p2l.size == 10 and set(p2l) == set(range(5))
    assert all(len(set(g)) == 2 for g in p2l.reshape(5, 2).tolist())  # same slots per GPU, no duplicate
    mine, greedy = gpu_loads(p2l[None], w[None], 5).max(), gpu_loads(base[None], w[None], 5).max()
    assert mine <= greedy
    assert mine == pytest.approx(res.objective * w.sum() / 5)
    # brute force over every replica count (sum 10) and pairing confirms the optimum
    assert mine == pytest.approx(_brute_force(w, 10, 5), rel=1e-4)


def _brute_force(w: np.ndarray, slots: int, gpus: int) -> float:
    """Least busiest-GPU load over all replica counts and assignments with 2 slots per GPU (small cases)."""
    from itertools import product

    best = np.inf
    n = w.size
    for cnt in product(range(1, gpus + 1), repeat=n):
        if sum(cnt) != slots:
            continue
        items = sorted((w[e] / cnt[e], e) for e in range(n) for _ in range(cnt[e]))

        def pair(rest: list, cur: float) -> float:
            if not rest:
                return cur
            (a, ea), out = rest[0], np.inf
            for j in range(1, len(rest)):
                if rest[j][1] != ea and a + rest[j][0] < out:
                    out = min(out, pair(rest[1:j] + rest[j + 1 :], max(cur, a + rest[j][0])))
            return out

        best = min(best, pair(items, 0.0))
    return float(best)


def test_ilp_multi_node_never_worse_than_greedy_and_honest_status():
    st = synthetic_trace(4, 32, 4, tokens=800, alpha=1.0, n_group=4, topk_group=2, seed=3)
    out = place(st, 8, 4, 8, ("eplb", "ilp"), 4, IlpOptions(time_limit=4, workers=1))
    e, i = out["eplb"], out["ilp"]
    assert (i.layer_max_load <= e.layer_max_load * (1 + 1e-9)).all()
    assert i.plan.phys_to_log.shape == (4, 40)
    for row in i.plan.gpu_experts()[0]:
        assert len(set(row.tolist())) == 5
    m = i.metrics
    assert m["status"] in ("optimal", "work limit", "time limit")
    assert m["reproducible"] == (m["status"] != "time limit")
    if m["status"] != "optimal":
        assert m["gap"] is None or m["gap"] > 0 or m["layers_fallback"] > 0
    assert 0 < m["balancedness"] <= 1 and m["max_over_lb"] >= 1 - 1e-9


def test_ilp_many_replicas_on_few_gpus_per_node():
    """Mixtral on 4 GPUs in 2-GPU nodes with 4 redundant slots: the node stage used to dead-end (a hot expert's
    last replica had room only on a node where it already sat on every GPU) and crash with a ValueError."""
    st = synthetic_trace(32, 8, 2, tokens=4096, alpha=1.0, affinity=2.0, seed=0)  # Mixtral's 32 MoE layers
    out = place(st, 4, 2, 4, ("eplb", "ilp"), options=IlpOptions(time_limit=2, workers=1, seed=0))
    plan = out["ilp"].plan
    assert plan.phys_to_log.shape == (32, 12)
    counts = plan.logcnt()
    assert (counts >= 1).all() and (counts.sum(axis=1) == 12).all()
    assert out["ilp"].metrics["max_load_ratio"] <= out["eplb"].metrics["max_load_ratio"] + 1e-9


def test_pattern_stage_gives_up_on_a_huge_enumeration():
    """64 experts + 8 redundant on 8 GPUs of one node: C(64 x 8, 9) candidate patterns, few under the load bound.
    The stage must hand over to the next one at once (it used to enumerate for minutes past its time limit)."""
    from moesim.placement.ilp import _pattern_stage

    w = np.random.default_rng(0).pareto(1.5, 64) + 1.0
    start = np.zeros((64, 8), np.int64)
    start[np.arange(64), np.arange(64) % 8] = 1
    start[np.argsort(-w)[:8], np.arange(8)[::-1]] += 1  # the 8 hottest get a second replica
    assert _pattern_stage(w, 72, 8, start, IlpOptions(workers=1), time_limit=2.0) is None


def test_pattern_stage_cut_off_is_a_count_not_seconds():
    """Whether the exact pattern model runs depends on ``max_candidates``, never on the time left."""
    from moesim.placement.ilp import _pattern_stage

    w = np.array([100.0, 60, 30, 20, 5])
    start = np.zeros((5, 5), np.int64)
    start[[0, 0, 1, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 2, 3, 4, 0, 1]] = 1
    assert _pattern_stage(w, 10, 5, start, IlpOptions(max_candidates=10), time_limit=1e6) is None
    found = _pattern_stage(w, 10, 5, start, IlpOptions(), time_limit=1e-3)
    assert found is not None and found[0].shape == (5, 2)


def test_ilp_cbc_fallback_solver():
    w = np.array([50.0, 30, 10, 10])
    base = rebalance_experts(w[None], 8, 1, 1, 4)[0][0]
    res = solve_layer(w, 8, 4, 4, np.zeros((1, 1), np.int64), base, IlpOptions(solver="cbc"), 20.0)
    assert res.stages[0].status == "optimal"
    # EPLB stacks expert 0 four times on one GPU; the baseline moesim compares with is that plan without duplicates
    from moesim.placement.baselines import repack_no_duplicates

    packed = repack_no_duplicates(base, w, 4, 4)
    assert gpu_loads(res.phys_to_log[None], w[None], 4).max() <= gpu_loads(packed[None], w[None], 4).max()


def test_migration_weight_keeps_the_current_plan():
    st = synthetic_trace(1, 8, 2, tokens=500, alpha=0.5, seed=2)
    cur = PlacementPlan(np.array([[1, 0, 3, 2, 5, 4, 7, 6, 1, 0, 3, 2, 5, 4, 7, 6]]), 8, 8, 8)
    out = place(
        st, 8, 8, 8, ("ilp",), options=IlpOptions(migration_weight=10.0, workers=1), current=cur, expert_bytes=1e6
    )
    assert out["ilp"].metrics["migration_bytes"] <= 2e6


@pytest.mark.parametrize(
    "gpus, gpn, redundant, match",
    [(8, 8, 3, "split evenly"), (8, 3, 0, "nodes"), (4, 4, -1, ">= 0"), (2, 2, 14, "exceed")],
)
def test_place_rejects_bad_shapes(gpus, gpn, redundant, match):
    st = synthetic_trace(1, 8, 2, tokens=100, seed=0)
    with pytest.raises(MoesimError, match=match):
        place(st, gpus, gpn, redundant, ("eplb",))


def test_cli_place_json_and_exports(tmp_path, capsys):
    out = tmp_path / "pl"
    rc = main(
        [
            "place",
            "--stats",
            "synthetic",
            "--model",
            "mixtral-8x7b",
            "--gpus",
            "8",
            "--redundant",
            "0",
            "--tokens",
            "500",
            "--time-limit",
            "10",
            "--export",
            "sglang,trtllm",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    for m in ("round-robin", "eplb", "ilp"):
        assert {"max_load_ratio", "inter_node_sends_per_token", "solve_s", "gap"} <= set(d["methods"][m])
    assert d["methods"]["ilp"]["max_load_ratio"] <= d["methods"]["eplb"]["max_load_ratio"] + 1e-9
    sg = json.loads((out / "export" / "sglang_expert_location.json").read_text())
    assert list(sg) == ["physical_to_logical_map"] and len(sg["physical_to_logical_map"]) == 32
    assert "--ep-num-redundant-experts 0" in d["exports"]["sglang"]["flags"]
    assert d["methods"]["ilp"]["status"] == "optimal" and d["methods"]["ilp"]["gap"] == 0.0
    assert PlacementPlan.from_json(out / "plan_ilp.json").num_slots == 8


@pytest.mark.parametrize(
    "args, match",
    [
        (["--redundant", "3"], "split evenly"),
        (["--method", "magic"], "unknown placement method"),
        (["--export", "ollama"], "unknown export format"),
        (["--model", "deepseek-v3"], "has \\[32 layers, 8 experts\\] but the model has \\[58 MoE layers"),
    ],
)
def test_cli_place_bad_input_one_line_nothing_written(tmp_path, capsys, args, match):
    stats = tmp_path / "s.npz"
    st = synthetic_trace(32, 8, 2, tokens=100, seed=0)
    np.savez(stats, counts=st.counts)
    out = tmp_path / "out"
    rc = main(["place", "--stats", str(stats), "--gpus", "8", "--out", str(out), *args])
    e = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and e[-1].startswith("error:") and "Traceback" not in "\n".join(e)
    import re

    assert re.search(match, e[-1])
    assert not out.exists()


def test_cli_place_rejects_nan_stats(tmp_path, capsys):
    stats = tmp_path / "s.csv"
    stats.write_text("1,2,3,4,5,6,7,nan\n")
    rc = main(["place", "--stats", str(stats), "--gpus", "8", "--out", str(tmp_path / "o")])
    assert rc == 1 and "NaN" in capsys.readouterr().err


def test_serving_scenario_takes_a_plan(tmp_path):
    from moesim.sim.serving.serve import run

    st = synthetic_trace(32, 8, 2, tokens=4000, alpha=1.5, seed=5)
    np.save(tmp_path / "loads.npy", st.shares())
    good = place(st, 8, 8, 8, ("eplb",))["eplb"].plan
    hot = np.argsort(-st.counts, axis=1)  # per layer, experts hottest first
    bad = np.concatenate([hot[:, :2], np.tile(hot[:, 2:], (1, 3))[:, :14]], axis=1)  # the two hottest share GPU 0
    base = yaml.safe_load(Path("examples/mixtral-8x7b-ep8.yaml").read_text())
    base["workload"].update(requests=200, input={"dist": "fixed", "value": 4096}, output={"dist": "fixed", "value": 8})
    base["routing"] = {"distribution": "file", "file": "loads.npy"}
    ttft = {}
    for name, plan in (("good", good), ("bad", PlacementPlan(bad, 8, 8, 8))):
        plan.to_json(tmp_path / f"{name}.json")
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(dict(base, placement=f"{name}.json")))
        ttft[name] = run(tmp_path / f"{name}.yaml", "analytical").summary
    key = next(k for k in ttft["good"] if "ttft" in k and isinstance(ttft["good"][k], float))
    assert ttft["good"][key] < ttft["bad"][key]


def _plan_bytes(out: dict, tmp: Path, name: str) -> bytes:
    out["ilp"].plan.to_json(tmp / name)
    return (tmp / name).read_bytes()


def test_ilp_same_inputs_same_plan_bytes_at_the_work_limit(tmp_path):
    """Two layers on 2 nodes whose node-stage search is cut by the work limit (5 branch-and-bound nodes), not by
    the (generous) time limit: solved twice in one process and once in two worker processes, the plan files are
    byte-identical (no wall-clock seconds in them), and the status says the cut was the reproducible one."""
    st = synthetic_trace(2, 16, 2, tokens=400, alpha=1.0, seed=3)
    plans, metrics = [], []
    for workers in (1, 1, 2):
        opts = IlpOptions(time_limit=600.0, work_limit=5, workers=workers, seed=1)
        out = place(st, 4, 2, 4, ("ilp",), options=opts)
        plans.append(_plan_bytes(out, tmp_path, f"plan_{len(plans)}.json"))
        metrics.append(out["ilp"].metrics)
    assert plans[0] == plans[1] == plans[2]
    for m in metrics:
        assert m["status"] == "work limit" and m["reproducible"] is True
        assert m["layers_work_limit"] >= 1 and m["layers_time_limit"] == 0 and m["work_limit"] == 5
    assert {k: v for k, v in metrics[0].items() if k not in ("solve_s", "solver_seconds")} == {
        k: v for k, v in metrics[2].items() if k not in ("solve_s", "solver_seconds")
    }
    assert "solve_s" not in json.loads(plans[0])["info"]


def test_ilp_report_says_a_time_limited_plan_may_differ():
    from moesim.placement.api import _ilp_report
    from moesim.placement.ilp import LayerResult, StageReport

    p2l = np.arange(4)
    done = LayerResult(p2l, [StageReport("work limit", 1.0, 0.9, 0.1, 0.5, 5)], objective=1.0, baseline_objective=1.1)
    cut = LayerResult(p2l, [StageReport("time limit", 1.0, 0.8, 0.2, 9.0, 2)], objective=1.0, baseline_objective=1.1)
    ok = _ilp_report([done, done], IlpOptions(work_limit=5))
    assert ok["status"] == "work limit" and ok["reproducible"] is True and ok["nodes"] == 10
    bad = _ilp_report([done, cut], IlpOptions(work_limit=5))
    assert bad["status"] == "time limit" and bad["reproducible"] is False and bad["layers_time_limit"] == 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_place_json_stdout_is_one_object(tmp_path, workers):
    """HiGHS prints a banner from C code to fd 1 when a process makes its first solver: with --json the whole
    stdout must still be one JSON object (the banner goes to stderr), in this process and in worker processes."""
    import subprocess
    import sys

    moesim = Path(sys.executable).with_name("moesim")
    cmd = [str(moesim)] if moesim.exists() else [sys.executable, "-m", "moesim.dashboard.cli"]
    args = ["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--method", "all", "--json"]
    args += ["--time-limit", "5", "--tokens", "500", "--workers", workers, "--out", str(tmp_path / "pl")]
    proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert isinstance(d, dict) and d["best"] == "ilp" and d["methods"]["ilp"]["status"] == "optimal"
    assert "Traceback" not in proc.stderr
