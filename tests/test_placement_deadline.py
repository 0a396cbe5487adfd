"""The placement's wall-clock cap: the whole call keeps ``time_limit`` (+10% and a small constant), each stage gets
what is left, and a layer the clock cuts keeps the best plan found so far (never worse than EPLB's)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from moesim.model.hardware import get_cluster
from moesim.placement.api import place
from moesim.placement.ilp import IlpOptions
from moesim.placement.ilp_stages import _gpu_stage, _incidence
from moesim.placement.layertime import layer_cost
from moesim.placement.synthetic import synthetic_trace

#: Each test asserts a wall-clock limit: `make test` runs them alone, after the parallel run (pyproject markers).
pytestmark = pytest.mark.wall_clock

#: Seconds over the limit the tests allow besides its 10%: a layer's result after its cap (`ilp.RESULT_S`) and the
#: scheduler's jitter on a loaded 2-core machine.
SLACK_S = 0.3


@pytest.fixture(scope="module")
def deepseek_32() -> tuple:
    """64 DeepSeek-V3-shaped layers on 32 GPUs / 4 nodes (+32 slots), the physical objective: uncapped, its search
    takes 0.15-0.5 s a layer on one core (48 layers: 7.4 s on one worker, 5.6 s on two, 2026-12-06), several times
    the 2.5 s and 2 s caps given below on a machine up to about 3 times faster. With 16 layers (before) the uncapped
    search finished inside the caps on a fast day and the tests saw no cut."""
    st = synthetic_trace(64, 256, 8, tokens=4096, alpha=1.0, affinity=2.0, n_group=8, topk_group=4, seed=1)
    cost = layer_cost(get_cluster("hgx-h200-x4"), 7168, 2048, 8, 32, dtype="fp8")
    return st, cost


def test_a_small_limit_is_kept_and_cut_layers_keep_their_gain(deepseek_32):
    st, cost = deepseek_32
    limit = 2.5
    t0 = time.monotonic()
    res = place(st, 32, 8, 32, ("eplb", "ilp"), 8, IlpOptions(time_limit=limit, cost=cost, workers=1))
    wall = time.monotonic() - t0
    assert wall <= 1.1 * limit + SLACK_S, wall
    i, e = res["ilp"], res["eplb"]
    assert i.metrics["status"] == "time limit" and i.metrics["reproducible"] is False  # the cap did cut it
    assert i.layer_time_s is not None and e.layer_time_s is not None
    assert (i.layer_time_s <= e.layer_time_s * (1 + 1e-12)).all()  # a cut layer never loses to EPLB
    # a layer cut mid-search keeps the swaps made so far: the plan still beats EPLB's (it kept EPLB's before)
    assert i.layer_time_s.mean() < 0.99 * e.layer_time_s.mean()


def test_a_deadline_given_bounds_the_call_whatever_the_time_limit(deepseek_32):
    st, cost = deepseek_32
    t0 = time.monotonic()
    res = place(st, 32, 8, 32, ("round-robin", "eplb", "ilp"), 8, IlpOptions(time_limit=600, cost=cost, workers=2),
                deadline=t0 + 2.0)  # fmt: skip
    assert time.monotonic() - t0 <= 1.1 * 2.0 + SLACK_S
    assert res["ilp"].metrics["status"] == "time limit"


def test_no_time_left_keeps_eplb_and_its_scores(deepseek_32):
    st, cost = deepseek_32
    res = place(st, 32, 8, 32, ("eplb", "ilp"), 8, IlpOptions(cost=cost, workers=2), deadline=time.monotonic())
    i, e = res["ilp"], res["eplb"]
    assert np.array_equal(i.plan.phys_to_log, e.plan.phys_to_log)
    n = st.num_layers
    assert i.metrics["layers_fallback"] == n and i.metrics["layers_time_limit"] == n
    assert i.metrics["layer_time_s"] == e.metrics["layer_time_s"]
    assert i.metrics["cross_layer_locality"] == e.metrics["cross_layer_locality"]
    assert i.plan.method == "ilp" and "solve_s" not in i.plan.info


def test_a_stage_whose_model_build_used_the_time_returns_its_warm_start():
    w = np.array([9.0, 7, 5, 4, 3, 2, 1, 1])
    a = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1]])
    start_p2l = np.array([0, 4, 2, 6, 1, 5, 3, 7])  # GPUs 0-1 on node 0, 2-3 on node 1, two slots each
    start = _incidence(start_p2l, 8, 4)
    slots, rep = _gpu_stage(w, np.ones(8, np.int64), a, 2, 2, start, IlpOptions(), 0.0, None)
    assert rep.status == "time limit"
    assert np.array_equal(_incidence(slots.reshape(-1), 8, 4), start)
    slots, rep = _gpu_stage(w, np.ones(8, np.int64), a, 2, 2, start, IlpOptions(), 30.0, None)
    assert rep.status == "optimal"


def test_the_place_command_keeps_its_time_limit(tmp_path, capsys):
    """The CLI's clock starts when the command does: the statistics, every method and the files are inside it."""
    from moesim.dashboard.cli import main

    limit = 3.0
    args = ["place", "--stats", "synthetic", "--model", "deepseek-v3", "--gpus", "32", "--redundant", "32"]
    args += ["--gpu", "H200-SXM", "--tokens", "2048", "--time-limit", str(limit), "--workers", "1", "--json"]
    t0 = time.monotonic()
    assert main([*args, "--out", str(tmp_path / "pl")]) == 0
    assert time.monotonic() - t0 <= 1.1 * limit + SLACK_S
    d = json.loads(capsys.readouterr().out)
    assert d["methods"]["ilp"]["status"] == "time limit"
