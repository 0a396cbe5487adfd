"""The training simulator: schedules, consistency, memory, routing, CLI and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fast_inputs import train_scenario  # tests/fast_inputs.py

from moesim.dashboard.cli import main
from moesim.model import MoesimError, RooflineCostModel
from moesim.sim.training.pipeline import StageCost, run_pipeline, schedule
from moesim.sim.training.train import BREAKDOWN, load, run, simulate_training
from moesim.sim.training.train_cost import unit_costs

ROOT = Path(__file__).resolve().parents[1]


def small(**over: object) -> dict:
    """OLMoE on one 8-GPU H100 node (PP2 x EP4): a fast MoE scenario to vary."""
    return train_scenario(over)


# ---- schedules --------------------------------------------------------------------------------------------


def _unit(stages: int, f: float = 1.0, b: float = 1.0, w: float = 1.0) -> list[StageCost]:
    return [StageCost((f, 0, 0, 0), (b, 0, 0, 0), (w, 0, 0, 0), act_bytes=1.0) for _ in range(stages)]


@pytest.mark.parametrize(("pp", "m"), [(2, 4), (4, 8), (8, 16)])
def test_1f1b_bubble_is_pp_minus_one_forward_backwards(pp: int, m: int) -> None:
    sched = schedule("1f1b", pp, m)
    res = run_pipeline(sched, _unit(pp), 0.0)
    # F = 1, B = 2 (input + weight gradients): bubble (pp - 1)(F + B)
    assert res.makespan == pytest.approx(m * 3 + (pp - 1) * 3)
    assert res.peak_inflight[0] == pp and res.peak_inflight[-1] == 1
    assert len(res.tasks) == 2 * pp * m


@pytest.mark.parametrize(("pp", "m", "v"), [(2, 4, 2), (4, 8, 2), (4, 16, 4)])
def test_interleaved_bubble_shrinks_by_v(pp: int, m: int, v: int) -> None:
    sched = schedule("interleaved", pp, m, v)
    res = run_pipeline(sched, _unit(pp * v, 1 / v, 1 / v, 1 / v), 0.0)
    assert res.makespan == pytest.approx(m * 3 + (pp - 1) * 3 / v)
    seen = {(t.mb, t.s, t.kind) for t in res.tasks}
    assert len(seen) == len(res.tasks) == 2 * m * pp * v


@pytest.mark.parametrize(("pp", "m", "w"), [(4, 8, 1.0), (8, 20, 0.5), (16, 40, 0.25)])
def test_dualpipe_bubble_matches_the_published_formula(pp: int, m: int, w: float) -> None:
    """DeepSeek-V3 Table 2: bubble (PP/2 - 1)(F&B + B - 3W); activations PP + 1 micro-batch stages.

    The formula holds where a forward takes as long as the input-gradient backward.
    """
    sched = schedule("dualpipe", pp, m)
    f, b = 1.0, 1.0  # b: the input-gradient part of a backward; w: its weight-gradient part
    res = run_pipeline(sched, _unit(pp, f, b, w), 0.0)
    fb = f + b + w  # a chunk pair without overlap
    per_rank = m * (f + b + w)  # each rank runs every micro-batch through one stage of each direction
    assert res.makespan == pytest.approx(per_rank + (pp / 2 - 1) * (fb + (b + w) - 3 * w))
    assert max(res.peak_inflight) == pp + 1
    kinds = {k: sum(t.kind == k for t in res.tasks) for k in ("F", "B", "W", "FB")}
    assert kinds["F"] + kinds["FB"] == m * pp and kinds["B"] + kinds["FB"] == m * pp


def test_dualpipe_rejects_odd_shapes() -> None:
    with pytest.raises(MoesimError, match="even"):
        schedule("dualpipe", 3, 12)
    with pytest.raises(MoesimError, match="unknown schedule"):
        schedule("zigzag", 2, 4)


def test_p2p_delay_adds_to_the_critical_path() -> None:
    sched = schedule("1f1b", 4, 8)
    base = run_pipeline(sched, _unit(4), 0.0).makespan
    late = run_pipeline(sched, _unit(4), 0.1).makespan
    assert late > base + 0.5  # (pp - 1) sends forward and back at least


# ---- consistency ------------------------------------------------------------------------------------------


def test_without_communication_or_bubbles_the_step_is_the_sum_of_op_times() -> None:
    sc = small(layout={"tp": 1, "pp": 1, "ep": 1, "dp": 1}, nodes=1, gpus_per_node=1,
               batch={"global_batch": 4, "micro_batch": 1, "seq_len": 512})  # fmt: skip
    setup = load(sc)
    cm = RooflineCostModel()
    res = simulate_training(setup, cm)
    uc = unit_costs(setup, cm)
    assert uc.f[:, 1:].sum() == 0 and uc.b[:, 1:].sum() == 0  # one GPU: no straggler, no communication
    ops_s = setup.microbatches * float(uc.f.sum() + uc.b.sum() + uc.w.sum())
    b = res.summary["breakdown"]
    assert b["pp_bubble"] == pytest.approx(0.0, abs=1e-12) and b["dp_comm"] == 0.0
    assert res.summary["step_s"] == pytest.approx(ops_s + b["optimizer"], rel=1e-12)
    # the forward is the op model's ops, each timed once
    from moesim.model.batch import Batch
    from moesim.model.ops import decompose
    from moesim.sim.training.train_cost import precision_of

    ops = decompose(setup.model, Batch.prefill(1, 512), setup.group_layout, setup.cluster, precision_of(setup),
                    mla_absorb=False)  # fmt: skip
    body = sum(cm.op_time(op, setup.cluster).seconds * op.count for op in ops if op.group != "head")
    assert body < uc.f.sum() < 1.3 * body  # plus the LM head over every token and the elementwise kernels


def test_doubling_data_parallelism_doubles_tokens_per_second_minus_the_reduction() -> None:
    common = {"layout": {"tp": 1, "pp": 1, "ep": 2, "zero": 0, "overlap_grad_reduce": False}}
    a = run(small(**common, nodes=1, gpus_per_node=2, batch={"global_batch": 8, "micro_batch": 1, "seq_len": 1024}))
    b = run(small(**common, nodes=2, gpus_per_node=2, batch={"global_batch": 16, "micro_batch": 1, "seq_len": 1024}))
    sa, sb = a.summary, b.summary
    assert sb["microbatches"] == sa["microbatches"]
    added = sb["breakdown"]["dp_comm"] - sa["breakdown"]["dp_comm"]
    assert added > 0  # crossing into a second node slows the gradient all-reduce
    assert sb["step_s"] == pytest.approx(sa["step_s"] + added, rel=1e-9)
    assert sb["tokens_per_s"] == pytest.approx(2 * sa["tokens_per_s"] * sa["step_s"] / (sa["step_s"] + added))


@pytest.mark.parametrize("schedule_name", ["gpipe", "1f1b", "interleaved", "dualpipe"])
def test_breakdown_adds_up_to_the_step(schedule_name: str) -> None:
    lay = {"schedule": schedule_name, "virtual_stages": 2 if schedule_name == "interleaved" else 1}
    res = run(small(layout=lay))
    s = res.summary
    assert set(s["breakdown"]) == set(BREAKDOWN)
    assert sum(s["breakdown"].values()) == pytest.approx(s["step_s"], rel=1e-9)
    assert all(v >= -1e-12 for v in s["breakdown"].values())
    assert s["tokens_per_s"] == pytest.approx(s["tokens_per_step"] / s["step_s"])


def test_steps_repeat_identically() -> None:
    res = run(small(steps=3))
    d = (res.steps["end_s"] - res.steps["start_s"]).to_numpy()
    assert np.allclose(d, d[0]) and res.steps["start_s"].iloc[1] == pytest.approx(res.steps["end_s"].iloc[0])


def test_chunk_pair_overlap_hides_all_to_all_time() -> None:
    lay = {"pp": 2, "ep": 4, "schedule": "dualpipe"}
    plain = run(small(layout=lay, nodes=2, gpus_per_node=4)).summary
    over = run(small(layout=lay, nodes=2, gpus_per_node=4, overlap="chunk_pairs", comm_sm_fraction=0.0)).summary
    assert over["breakdown"]["ep_comm"] < 0.5 * plain["breakdown"]["ep_comm"]
    assert over["step_s"] < plain["step_s"]


def test_fp8_gemms_are_faster_than_bf16() -> None:
    bf = run(small()).summary
    f8 = run(small(precision={"gemm": "fp8"})).summary
    assert f8["step_s"] < bf["step_s"] and f8["s_mfu_peak_dtype"] == "fp8"


# ---- memory -----------------------------------------------------------------------------------------------


def test_zero_stages_shrink_memory() -> None:
    totals = [run(small(layout={"zero": z}, nodes=4)).summary["mem_by_component_gib"] for z in (0, 1, 2, 3)]
    assert totals[0]["optimizer_states"] > totals[1]["optimizer_states"] == pytest.approx(totals[2]["optimizer_states"])
    assert totals[1]["grads"] > totals[2]["grads"]
    assert totals[2]["params"] > totals[3]["params"]
    mems = [sum(t.values()) for t in totals]
    assert mems == sorted(mems, reverse=True)


def test_recomputation_trades_memory_for_time() -> None:
    out = {m: run(small(recompute=m)).summary for m in ("none", "selective", "full")}
    act = [out[m]["mem_by_component_gib"]["activations"] for m in ("none", "selective", "full")]
    assert act[0] > act[1] > act[2]
    assert out["none"]["step_s"] <= out["selective"]["step_s"] < out["full"]["step_s"]


def test_a_layout_too_small_does_not_fit_and_says_by_how_much() -> None:
    s = run(small(model="mixtral-8x7b", layout={"tp": 1, "pp": 1, "ep": 1, "dp": 1, "zero": 0}, nodes=1,
                  gpus_per_node=1, batch={"global_batch": 1, "micro_batch": 1, "seq_len": 1024})).summary  # fmt: skip
    assert not s["fits"]
    short = s["mem_per_gpu_gib"] - 80
    assert s["memory_verdict"].startswith(f"does not fit, by {short:.1f} GiB")


# ---- routing ----------------------------------------------------------------------------------------------


def test_skewed_routing_makes_stragglers_and_a_capacity_factor_drops_tokens() -> None:
    uni = run(small()).summary
    skew = run(small(routing={"distribution": "power", "exponent": 0.6})).summary
    capped = run(small(routing={"distribution": "power", "exponent": 0.6, "capacity_factor": 1.0})).summary
    assert skew["breakdown"]["straggler"] > 3 * uni["breakdown"]["straggler"]
    assert skew["step_s"] > uni["step_s"]
    assert uni["token_drop_frac"] == 0.0 and skew["token_drop_frac"] == 0.0
    assert 0.05 < capped["token_drop_frac"] < 0.9
    assert capped["breakdown"]["straggler"] < skew["breakdown"]["straggler"]


def test_max_violation_sets_the_busiest_experts_load() -> None:
    setup = load(small(routing={"max_violation": 0.5}))
    assert setup.loads is not None
    assert setup.loads.max(axis=1) * setup.loads.shape[1] == pytest.approx(np.full(setup.loads.shape[0], 1.5), rel=1e-6)


# ---- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"layout": {"tp": 3}}, "does not divide the 8 GPUs"),
        ({"layout": {"pp": 32, "ep": 1}, "nodes": 4}, "exceed the 16 layers"),
        ({"batch": {"global_batch": 4, "micro_batch": 8}}, "micro_batch=8 is larger than global_batch=4"),
        ({"layout": {"schedule": "zigzag"}}, "unknown schedule 'zigzag'"),
        ({"layout": {"schedule": "interleaved", "virtual_stages": 2}, "batch": {"global_batch": 12}}, "multiple"),
        ({"layout": {"pp": 1, "schedule": "dualpipe"}}, "even pp"),
        ({"layout": {"ep": 3}}, "does not divide"),
        ({"batch": {"global_batch": 30}}, "not a multiple of micro_batch=1 x dp=4"),
        ({"layout": {"zero": 5}}, "layout.zero"),
        ({"colour": "blue"}, "colour: unknown key"),
    ],
)
def test_bad_input_is_one_error(over: dict, needle: str) -> None:
    with pytest.raises(MoesimError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        run(small(**over))


def test_cli_bad_input_one_line_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(small(layout={"pp": 32})))
    out = tmp_path / "out"
    assert main(["train", str(path), "--out", str(out), "--json"]) == 1
    cap = capsys.readouterr()
    lines = [x for x in cap.err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in cap.err and cap.out == ""
    assert "does not divide the 8 GPUs" in lines[0] and "(fix:" in lines[0]
    assert not out.exists()


# ---- CLI and outputs --------------------------------------------------------------------------------------


def test_cli_json_out_and_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(small()))
    out, trace = tmp_path / "run", tmp_path / "trace.json"
    assert main(["train", str(path), "--out", str(out), "--trace", str(trace), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    for key in ("step_s", "tokens_per_s", "mfu", "mem_per_gpu_gib", "fits", "breakdown", "gpu_hours_per_btok",
                "wall_s", "s_mfu", "token_drop_frac", "usd_per_btok"):  # fmt: skip
        assert key in s
    assert s["gpu_hours_per_btok"] == pytest.approx(s["gpus"] * s["step_s"] / 3600 / s["tokens_per_step"] * 1e9)
    assert sorted(p.name for p in out.iterdir()) == [
        ".moesim-output", "breakdown.png", "memory.csv", "schedule.png", "summary.json", "tasks.parquet"
    ]  # fmt: skip
    doc = json.loads(trace.read_text())
    names = {e["name"] for e in doc["traceEvents"] if e["ph"] == "X"}
    assert any(n.startswith("F mb0") for n in names) and "optimizer" in names
    assert main(["train", "--help"]) == 0
    assert "Example: moesim train" in " ".join(capsys.readouterr().out.split())


def test_examples_run(tmp_path: Path) -> None:
    for name in ("train-mixtral-8x7b-h100.yaml", "train-deepseek-v3-h800.yaml"):
        res = run(ROOT / "examples" / name)
        s = res.summary
        assert s["cost_model"].startswith("calibrated:")
        assert 0.2 < s["mfu"] < 0.9 and s["step_s"] > 0
    assert s["gpus"] == 2048 and s["layout"] == "TP1 PP16 DP128 EP64 ZeRO-1 dualpipe"
