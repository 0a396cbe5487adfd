"""Megatron's EP all-to-all overlap (combined 1F1B, ``overlap: ep_a2a``): the schedule transform, the layer-level
two-stream pair, the simulated step, and overlap modes a schedule cannot run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from fast_inputs import train_scenario  # tests/fast_inputs.py

from moesim.dashboard.cli import main
from moesim.model import MoesimError, RooflineCostModel
from moesim.sim.training.pipeline import StageCost, combined_1f1b, run_pipeline, schedule
from moesim.sim.training.train import load, run, simulate_training
from moesim.sim.training.train_cost import combined_layer_seconds, unit_costs


def _two_nodes(**over: object) -> dict:
    """OLMoE on two 8-GPU H100 nodes, PP2 interleaved over two chunks, EP8."""
    lay = {"pp": 2, "ep": 8, "schedule": "interleaved", "virtual_stages": 2}
    base = train_scenario({"nodes": 2, "layout": lay, "batch": {"global_batch": 32, "seq_len": 1024}})
    return {**base, **over}


# ---- the schedule transform ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "pp", "m", "v"), [("interleaved", 2, 4, 2), ("interleaved", 4, 8, 3), ("1f1b", 1, 6, 1)]
)
def test_combined_1f1b_keeps_every_pass_once_and_pairs_the_steady_phase(kind: str, pp: int, m: int, v: int) -> None:
    base = schedule(kind, pp, m, v)
    comb = combined_1f1b(base)
    for r, (old, new) in enumerate(zip(base.orders, comb.orders, strict=True)):
        passes = Counter()
        for t in new:
            if t.kind in ("F", "FB"):
                passes[("F", t.mb, t.s)] += 1
            if t.kind == "B":
                passes[("B", t.mb, t.s)] += 1
            if t.kind == "FB":
                passes[("B", t.mb2, t.s2)] += 1
                assert t.mb != t.mb2, "a pair's forward must not feed its own backward"
        assert passes == Counter((t.kind, t.mb, t.s) for t in old), f"rank {r}"
        assert new[0].kind == "F" and new[-1].kind == "B"  # the first forward and the last backward run alone
        pairs = sum(old[i].kind == "B" and old[i + 1].kind == "F" for i in range(len(old) - 1))
        assert sum(t.kind == "FB" for t in new) == pairs > 0


def test_combined_1f1b_runs_without_deadlock_and_hides_ep_time() -> None:
    base = schedule("interleaved", 2, 4, 2)
    costs = [StageCost((1.0, 0, 1.0, 0), (2.0, 0, 1.0, 0), (0.0, 0, 0, 0), a2a_exposed=0.0) for _ in range(4)]
    plain = run_pipeline(base, costs, 0.01)
    comb = run_pipeline(combined_1f1b(base), costs, 0.01, overlap=True, hide_tp=False)
    assert comb.makespan < plain.makespan
    assert len(comb.tasks) < len(plain.tasks)


def test_combined_1f1b_refuses_gpipe_and_dualpipe() -> None:
    for kind, m in (("gpipe", 4), ("dualpipe", 8)):
        with pytest.raises(ValueError, match="1f1b or interleaved"):
            combined_1f1b(schedule(kind, 2, m))


# ---- the layer-level pair -----------------------------------------------------------------------------------


def test_pair_without_communication_is_the_computation() -> None:
    assert combined_layer_seconds(1, 2, 3, 4, 5, 0, 0, 0, 0, 0.2) == pytest.approx(15.0)


def test_pair_with_small_communication_hides_it_when_no_sms_are_taken() -> None:
    # every all-to-all shorter than the computation it runs beside: hidden completely (no SMs taken)
    t = combined_layer_seconds(2, 2, 2, 2, 1, 0.5, 0.5, 0.5, 0.5, 0.0)
    assert t == pytest.approx(9.0)


def test_pair_exposes_communication_longer_than_its_partner() -> None:
    t = combined_layer_seconds(1, 1, 1, 1, 0, 5, 5, 5, 5, 0.0)
    assert t >= 20.0  # the communication stream alone takes 20 s
    assert combined_layer_seconds(1, 1, 1, 1, 0, 5, 5, 5, 5, 0.0) <= 1 + 1 + 1 + 1 + 20


def test_pair_slows_with_the_sms_communication_takes() -> None:
    args = (2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    times = [combined_layer_seconds(*args, f) for f in (0.0, 0.1, 0.3)]
    assert times[0] < times[1] < times[2]


# ---- the simulated step -------------------------------------------------------------------------------------


def test_ep_a2a_hides_expert_parallel_time_in_a_step() -> None:
    cm = RooflineCostModel()
    plain = simulate_training(load(_two_nodes()), cm).summary
    over = simulate_training(load(_two_nodes(overlap="ep_a2a")), cm).summary
    assert plain["breakdown"]["ep_comm"] > 0
    assert over["breakdown"]["ep_comm"] < plain["breakdown"]["ep_comm"]
    assert over["step_s"] < plain["step_s"]
    assert over["breakdown"]["tp_comm"] == pytest.approx(plain["breakdown"]["tp_comm"])  # TP is not hidden


def test_ep_a2a_records_the_exposed_pair_time_per_unit() -> None:
    uc = unit_costs(load(_two_nodes(overlap="ep_a2a")), RooflineCostModel())
    assert uc.a2a_exposed is not None and uc.a2a_exposed[0] == 0.0 and uc.a2a_exposed[-1] == 0.0
    assert (uc.a2a_exposed[1:-1] >= 0).all()
    assert unit_costs(load(_two_nodes()), RooflineCostModel()).a2a_exposed is None


def test_ep_a2a_runs_at_pp_1() -> None:
    sc = train_scenario({"layout": {"pp": 1, "ep": 8}, "overlap": "ep_a2a"})
    s = run(sc, cost_model=RooflineCostModel()).summary
    assert s["step_s"] > 0


# ---- overlap modes a schedule cannot run: one line each -----------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "overlap", "needle"),
    [
        (
            {"schedule": "interleaved", "virtual_stages": 2},
            "chunk_pairs",
            "overlap: chunk_pairs needs schedule: dualpipe",
        ),
        ({"schedule": "1f1b"}, "chunk_pairs", "overlap: chunk_pairs needs schedule: dualpipe"),
        ({"schedule": "1f1b"}, "ep_a2a", "cannot run with schedule: 1f1b and pp=2"),
        ({"schedule": "gpipe"}, "ep_a2a", "cannot run with schedule: gpipe and pp=2"),
        ({"schedule": "dualpipe"}, "ep_a2a", "cannot run with schedule: dualpipe"),
    ],
)
def test_overlap_the_schedule_cannot_run_is_one_error(layout: dict, overlap: str, needle: str) -> None:
    with pytest.raises(MoesimError, match=needle):
        load(train_scenario({"layout": layout, "overlap": overlap}))


def test_cli_overlap_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(train_scenario({"layout": {"schedule": "1f1b"}, "overlap": "ep_a2a"})))
    assert main(["train", str(path), "--json"]) != 0
    cap = capsys.readouterr()
    lines = [x for x in cap.err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in cap.err and cap.out == ""
    assert "ep_a2a" in lines[0] and "(fix:" in lines[0]


# ---- pipeline splits that count the embedding and the loss as layers ----------------------------------------


def test_accounted_embedding_and_loss_may_give_one_layer_per_chunk() -> None:
    """OLMoE's 16 layers + embedding + loss = 18 = pp 6 x 3 chunks: one unit per chunk (refused before)."""
    lay = {"pp": 6, "ep": 1, "schedule": "interleaved", "virtual_stages": 3, "account_for_embedding": True,
           "account_for_loss": True}  # fmt: skip
    sc = train_scenario({"nodes": 6, "gpus_per_node": 1, "layout": lay, "batch": {"global_batch": 12, "seq_len": 256}})
    setup = load(sc)
    assert len(setup.stage_units) == 18
