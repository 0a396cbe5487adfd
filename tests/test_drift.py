"""`moesim drift`: serving while the routing drifts, under a static plan and under rebalancing (sim.serving.drift)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fast_inputs import DRIFT  # tests/fast_inputs.py

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.placement.metrics import migration_bytes
from moesim.placement.plan import PlacementPlan
from moesim.sim.serving.drift import (
    DriftSpec,
    drift_windows,
    migration_cost,
    parse_policy,
    simulate_drift,
)
from moesim.sim.serving.serve import load

SCENARIO = DRIFT
SPEC = DriftSpec(windows=3, drift=1.0, skew=1.5, tokens_per_window=256, seed=0)


def _run(policies: tuple[str, ...] = ("static", "eplb:1")) -> dict:
    built = load(SCENARIO)
    res = simulate_drift(built, drift_windows(built, SPEC), [parse_policy(p) for p in policies], requests_per_window=24)
    return res.to_dict()


@pytest.fixture(scope="module")
def result() -> dict:
    return _run()


def test_static_plan_degrades_under_drift_and_rebalancing_recovers(result):
    static, eplb = (result["policies"][k]["windows"] for k in ("static", "eplb:1"))
    assert static[0]["max_load_ratio"] == eplb[0]["max_load_ratio"]  # the same first plan
    assert static[-1]["max_load_ratio"] > static[0]["max_load_ratio"] + 0.1  # popularity moved away from the plan
    assert eplb[-1]["max_load_ratio"] < static[-1]["max_load_ratio"] - 0.1
    # the balanced plan serves the (compute-bound) prefill faster in the last window
    assert eplb[-1]["e2e_mean_s"] < static[-1]["e2e_mean_s"]


def test_migration_is_charged(result):
    static, eplb = (result["policies"][k] for k in ("static", "eplb:1"))
    assert static["overall"]["migration_bytes"] == 0 and static["overall"]["pause_s"] == 0
    moved = [w for w in eplb["windows"] if w["rebalanced"]]
    assert [w["window"] for w in moved] == [2, 3]
    expert = result["info"]["expert_bytes"]
    for w in moved:
        assert w["migration_bytes"] > 0 and w["migration_bytes"] % expert == 0
        assert w["pause_s"] >= expert / 450e9  # at least one expert over one NVLink


def test_migration_cost_by_hand():
    """Two GPUs per node swap one expert each: one copy each way per layer over NVLink; across nodes over the NIC."""
    from moesim.model.hardware import get_gpu, make_cluster

    old = PlacementPlan(np.array([[0, 1, 2, 3]] * 2), num_experts=4, num_gpus=2, gpus_per_node=2)
    new = PlacementPlan(np.array([[0, 2, 1, 3]] * 2), num_experts=4, num_gpus=2, gpus_per_node=2)
    one = make_cluster(get_gpu("H100-SXM"), nodes=1, gpus_per_node=2)
    bw, lat = one.link("intra")
    m = migration_cost(old, new, 1e9, one)
    assert m.copies == 4 and m.bytes == migration_bytes(old, new, 1e9) == 4e9 and m.inter_bytes == 0
    assert m.pause_s == pytest.approx(2 * (1e9 / bw + lat))
    two = make_cluster(get_gpu("H100-SXM"), nodes=2, gpus_per_node=1)
    old2 = PlacementPlan(old.phys_to_log, num_experts=4, num_gpus=2, gpus_per_node=1)
    new2 = PlacementPlan(new.phys_to_log, num_experts=4, num_gpus=2, gpus_per_node=1)
    nic_bw, nic_lat = two.link("inter")
    m2 = migration_cost(old2, new2, 1e9, two)
    assert m2.inter_bytes == 4e9 and m2.pause_s == pytest.approx(2 * (1e9 / nic_bw + nic_lat))


def test_same_seed_same_results(result):
    assert json.dumps(_run(), sort_keys=True) == json.dumps(result, sort_keys=True)


def test_policies_parse():
    assert parse_policy("eplb:3").interval == 3 and parse_policy("static").interval == 0
    assert parse_policy("static:ilp").method == "ilp"
    for bad in ("eplb:0", "eplb:x", "lru:2", "static:rr"):
        with pytest.raises(MoesimError):
            parse_policy(bad)


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--drift", "1.5"], "--drift = 1.5 is outside [0, 1]"),
        (["--drift", "nan"], "--drift = nan is outside [0, 1]"),
        (["--skew", "-1"], "--skew = -1 is outside"),
        (["--windows", "0"], "windows = 0 is outside"),
        (["--window-tokens", "2"], "--window-tokens = 2 is outside"),
        (["--policy", "eplb:0"], "policy 'eplb:0'"),
    ],
)
def test_bad_drift_parameters_are_one_line(capsys, tmp_path, argv, text):
    sc = tmp_path / "s.yaml"
    sc.write_text(json.dumps(SCENARIO))
    code = main(["drift", str(sc), *argv])
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], cap.err
    assert "fix:" in lines[0] and cap.out == ""


def test_cli_json_is_one_object(capsys, tmp_path):
    sc = tmp_path / "s.yaml"
    sc.write_text(json.dumps(SCENARIO | {"workload": SCENARIO["workload"] | {"input": 128}}))
    argv = ["drift", str(sc), "--policy", "static", "--policy", "eplb:1", "--windows", "2", "--window-requests", "8"]
    code = main([*argv, "--window-tokens", "64", "--json", "--out", str(tmp_path / "o")])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    data = json.loads(cap.out)
    assert set(data["policies"]) == {"static", "eplb:1"} and len(data["policies"]["static"]["windows"]) == 2
    assert (tmp_path / "o" / "drift.json").exists() and (tmp_path / "o" / "latency_over_time.png").exists()


def test_help_has_an_example(capsys):
    code = main(["drift", "--help"])
    text = capsys.readouterr().out
    assert code == 0 and "Example: moesim drift" in text and "--policy" in text


def test_the_ilp_policy_prices_replicas_as_the_scenarios_engine_picks_them(result):
    """vLLM (the default engine) draws a replica per token; an SGLang scenario's ILP policy prices its nearest rule."""
    assert result["info"]["replica_choice"] == "random"
    sc = dict(load(SCENARIO).scenario.model_dump(exclude_none=True))
    sc["engine"] = {**sc.get("engine", {}), "kind": "sglang"}
    built = load(sc)
    res = simulate_drift(built, drift_windows(built, SPEC), [parse_policy("static")], requests_per_window=8)
    assert res.to_dict()["info"]["replica_choice"] == "nearest"
