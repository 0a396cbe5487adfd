"""Expert parallelism over a placement with redundant expert slots: an EP size that divides the slots, not the
experts (SGLang's ``--ep-num-redundant-experts``: DeepSeek-V3's 256 experts + 32 redundant = 288 slots over 72
GPUs in the SGLang team's decode deployment, or over 144 in DeepSeek's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.model import MoesimError
from moesim.model.batch import Batch
from moesim.model.hardware import get_gpu
from moesim.model.hf_config import load_model
from moesim.model.layout import Layout, LayoutError
from moesim.model.memory import estimate_memory
from moesim.sim.serving.capacity import make_timer, replica_capacity
from moesim.sim.serving.scenario import build, parse_scenario
from moesim.sim.serving.serve import run

# Mixtral-8x7B: 8 experts, top-2, 32 MoE layers; one redundant slot makes 9, which 3 GPUs split 3 each
MODEL = "mixtral-8x7b"


def _scenario(tmp_path: Path, ep: int, placement: np.ndarray | None) -> dict:
    d = {
        "name": f"redundant-ep{ep}",
        "model": MODEL,
        "gpu": "H100-SXM",
        "nodes": 1,
        "gpus_per_node": 8,
        "layout": {"tp": 1, "dp_attn": ep, "ep": ep},
        "replicas": 1,
        "engine": {"max_batch": 64, "max_tokens": 4096},
        "workload": {"rate": 4, "requests": 12, "input": 256, "output": 16},
        "seed": 0,
    }
    if placement is not None:
        np.save(tmp_path / "plan.npy", placement)
        d["placement"] = "plan.npy"
    return d


def _nine_slots() -> np.ndarray:
    """Every MoE layer: experts 0..7 and a replica of expert 0, three slots per GPU, no GPU with two of one."""
    return np.broadcast_to(np.array([0, 1, 2, 3, 4, 5, 6, 7, 0]), (32, 9)).copy()


def test_ep_that_divides_the_slots_runs_and_keeps_three_experts_per_gpu(tmp_path):
    built = build(parse_scenario(_scenario(tmp_path, 3, _nine_slots())), tmp_path)
    pool = built.pools[0]
    assert built.expert_slots == 9
    timer = make_timer(built, pool, replica_capacity(built, pool), 0)
    assert timer.per_gpu == 3
    experts = [op for op in timer.estimate(Batch.prefill(3, 512)).ops if op.name == "routed_experts"]
    assert experts and all(op.shape["experts"] == 3 for op in experts)
    # the DES and the analytical engine both run it
    for engine in ("des", "analytical"):
        res = run(_scenario(tmp_path, 3, _nine_slots()), engine, base_dir=tmp_path)
        assert res.summary["completed"] == 12
        assert np.isfinite(res.summary["tpot_mean_s"]) and res.summary["tpot_mean_s"] > 0


def test_redundant_slots_hold_more_weights_per_gpu(tmp_path):
    """Three slots per GPU on EP3 hold 3/8 of the experts' weights, against 2/8 on EP4 without replicas."""
    model = load_model(MODEL)
    gpu = get_gpu("H100-SXM")
    three = estimate_memory(model, Layout(ep=3, dp_attn=3), gpu, expert_slots=9).weights_by_component
    two = estimate_memory(model, Layout(ep=4, dp_attn=4), gpu).weights_by_component
    assert three["routed_experts"] == pytest.approx(two["routed_experts"] * 9 / 3 / (8 / 4))


def test_an_ep_size_that_divides_neither_names_the_fix(tmp_path):
    # no placement: 8 experts over 3 GPUs
    with pytest.raises(LayoutError, match=r"ep=3 does not divide the 8 routed experts \(with redundant experts"):
        build(parse_scenario(_scenario(tmp_path, 3, None)), tmp_path)
    # a placement of 10 slots over 3 GPUs
    ten = np.broadcast_to(np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1]), (32, 10)).copy()
    with pytest.raises(MoesimError, match="ep=3 does not divide the placement's 10 expert slots"):
        build(parse_scenario(_scenario(tmp_path, 3, ten)), tmp_path)
