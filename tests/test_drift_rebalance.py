"""Rebalancing under drift: chunked moves (SGLang --eplb-rebalance-layers-per-chunk), requests in flight charged the
pause, and the ILP's migration term keeping what it can of the current plan (GPUs renumbered, layer time kept)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fast_inputs import DRIFT  # tests/fast_inputs.py

from moesim.model.errors import MoesimError
from moesim.model.hardware import get_cluster, get_gpu, make_cluster
from moesim.placement.affinity import align
from moesim.placement.api import place
from moesim.placement.ilp import IlpOptions
from moesim.placement.layertime import layer_cost, layer_time
from moesim.placement.metrics import migration_bytes
from moesim.placement.plan import PlacementPlan
from moesim.placement.synthetic import synthetic_trace
from moesim.sim.serving.drift import (
    DriftSpec,
    _window_workload,
    charge_in_flight,
    drift_windows,
    migration_cost,
    parse_policy,
    simulate_drift,
)
from moesim.sim.serving.serve import load

SCENARIO = DRIFT


def _plans(layers: int = 4) -> tuple[PlacementPlan, PlacementPlan]:
    rng = np.random.default_rng(0)
    old = np.stack([rng.permutation(8) for _ in range(layers)])
    new = np.stack([rng.permutation(8) for _ in range(layers)])
    kw = dict(num_experts=8, num_gpus=4, gpus_per_node=4)
    return PlacementPlan(old, **kw), PlacementPlan(new, **kw)


def test_chunks_split_the_same_pause():
    old, new = _plans(4)
    one = make_cluster(get_gpu("H100-SXM"), nodes=1, gpus_per_node=4)
    whole = migration_cost(old, new, 1e9, one)
    chunked = migration_cost(old, new, 1e9, one, layers_per_chunk=1)
    assert len(whole.chunk_pauses_s) == 1 and len(chunked.chunk_pauses_s) == 4
    assert sum(chunked.chunk_pauses_s) == pytest.approx(whole.pause_s) == pytest.approx(chunked.pause_s)
    assert chunked.max_stall_s < whole.max_stall_s == pytest.approx(whole.pause_s)
    assert chunked.bytes == whole.bytes
    with pytest.raises(MoesimError, match="layers-per-chunk"):
        migration_cost(old, new, 1e9, one, layers_per_chunk=0)


def test_arrivals_wait_for_their_chunk_then_the_rest(tmp_path):
    built = load(SCENARIO)
    _, held, stalled = _window_workload(built, 24, 0, (), tmp_path)
    assert not held.any() and not stalled.any()
    _, held1, _ = _window_workload(built, 24, 0, (10.0,), tmp_path)
    _, held4, stalled4 = _window_workload(built, 24, 0, (2.5,) * 4, tmp_path)
    assert held1.max() == pytest.approx(10.0)  # the first arrival (t = 0) waits the whole pause
    assert held4.max() == pytest.approx(2.5) and stalled4.max() == pytest.approx(7.5)
    assert np.allclose(held1, held4 + stalled4)  # the same total wait, part of it while running


def test_requests_in_flight_wait_out_the_pause():
    req = pd.DataFrame(
        {
            "arrival_s": [0.0, 1.0, 2.0],
            "ttft_s": [0.5, 1.5, 0.2],
            "e2e_s": [1.0, 3.0, 0.5],
            "tpot_s": [0.1, 0.1, 0.1],
            "finish_s": [1.0, 4.0, 2.5],
            "output_tokens": [6, 11, 4],
        }
    )
    out = charge_in_flight(req, 2.0, 1.0)
    assert out["e2e_s"].tolist() == [1.0, 4.0, 1.5]  # the first finished before the rebalance
    assert out["ttft_s"].tolist() == [0.5, 2.5, 1.2]  # both first tokens came after it started
    assert out["tpot_s"].tolist() == pytest.approx([0.1, 0.1, 0.1])  # none was decoding when it started
    out2 = charge_in_flight(req, 3.0, 1.0)
    assert out2["tpot_s"].tolist() == pytest.approx([0.1, 0.2, 0.1])  # request 1 decoding: 1 s over 10 gaps


def test_rebalancing_charges_the_previous_window_and_chunks_shorten_the_stall():
    built = load(SCENARIO)
    ws = drift_windows(built, DriftSpec(windows=3, drift=1.0, skew=1.5, tokens_per_window=256, seed=0))
    pol = [parse_policy("eplb:1")]
    whole = simulate_drift(built, ws, pol, requests_per_window=24).to_dict()["policies"]["eplb:1"]
    chunked = simulate_drift(built, ws, pol, requests_per_window=24, layers_per_chunk=4).to_dict()["policies"]
    chunked = chunked["eplb:1"]
    assert chunked["overall"]["pause_s"] == pytest.approx(whole["overall"]["pause_s"])
    assert chunked["overall"]["max_stall_s"] < whole["overall"]["max_stall_s"]
    assert [w["chunks"] for w in chunked["windows"] if w["rebalanced"]] == [8, 8]  # 32 layers, 4 at a time


def test_ilp_with_a_current_plan_moves_nothing_when_the_routing_did_not_change():
    """The same statistics again: the ILP's plan is the current one up to GPU numbers, which `align` undoes."""
    st = synthetic_trace(3, 64, 8, tokens=512, alpha=1.0, n_group=8, topk_group=4, seed=0)
    cost = layer_cost(get_cluster("hgx-h200-x2"), 4096, 1024, 8, 16, dtype="fp8", tokens_per_gpu=256)
    opts = IlpOptions(cost=cost, workers=1, time_limit=60)
    first = place(st, 16, 8, 16, ("ilp",), 8, opts)["ilp"].plan
    rng = np.random.default_rng(1)
    shuffled = first.phys_to_log.reshape(3, 2, 8, -1)[:, ::-1][:, :, rng.permutation(8)].reshape(3, -1)
    cur = PlacementPlan(shuffled, num_experts=64, num_gpus=16, gpus_per_node=8)
    again = place(st, 16, 8, 16, ("ilp",), 8, IlpOptions(cost=cost, workers=1, time_limit=60, migration_weight=1e-6),
                  current=cur)["ilp"].plan  # fmt: skip
    assert migration_bytes(cur, again, 1.0) == 0


def test_align_keeps_layer_time_and_undoes_a_renumbering():
    st = synthetic_trace(1, 64, 8, tokens=512, alpha=1.0, seed=2)
    cost = layer_cost(get_cluster("hgx-h200-x2"), 4096, 1024, 8, 16, dtype="fp8", tokens_per_gpu=256)
    p = place(st, 16, 8, 16, ("eplb",), 8)["eplb"].plan.phys_to_log[0]
    rng = np.random.default_rng(3)
    perm = np.concatenate([8 + rng.permutation(8), rng.permutation(8)])  # nodes swapped, GPUs shuffled
    q = p.reshape(16, -1)[perm].reshape(-1)
    back = align(q, p, 16, 8)
    assert (back.reshape(16, -1) == p.reshape(16, -1)).all()
    tok = st.token_sample(0, 256, rng)
    assert layer_time(back, st.counts[0], 16, 8, tok, cost) == pytest.approx(
        layer_time(q, st.counts[0], 16, 8, tok, cost)
    )
