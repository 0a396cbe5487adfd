"""The step an overlapping scheduler decided before an arrival's (`analytical.busy_step`, `LAG_AT_BATCH`).

With vLLM's async scheduling (and SGLang's overlap scheduler) the next step is decided while the current one runs,
so an arrival that finds its replica busy waits out what is left of the step running, then the step decided
ahead, then its own. The analytical engine charged the decided step as the mean step per decoded token, which
weighs a step by the sequences it decodes; at a batch of a few sequences that overstates the step an arrival
finds (Mixtral-8x7B H100-SXM x8 TP2 EP2, 4 req/s: 12.66 ms per token, the discrete-event engine's 11.77 ms;
`python -m benchmarks.low_load --lag`). It is now the busy replica's mean step under the batch's stationary law as
an arrival sees it, checked here against the discrete-event engine's own steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.sim.serving import analytical
from moesim.sim.serving.analytical import Analytical
from moesim.sim.serving.engine import simulate
from moesim.sim.serving.metrics import step_after_instant_s
from moesim.sim.serving.workload import generate
from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

ROOT = Path(__file__).resolve().parents[1]


def _model(layout: dict, rate: float) -> tuple[object, object]:
    m = yaml.safe_load((ROOT / "examples" / "sweep-mixtral-gpu-choice.yaml").read_text())
    m["axes"].update(gpu=["H100-SXM"], gpus=[8], layout=[layout], precision=["bf16"], max_batch=[256], rate=[rate])
    m["axes"]["workload"] = {"chat": m["axes"]["workload"]["chat"]}
    spec = parse_sweep(m)
    (point,) = expand(spec).points
    sweep_eval._CACHE.clear()
    return sweep_eval._analytical(point, spec), spec


def test_busy_step_is_the_busy_laws_time_mean_of_the_step() -> None:
    model, _ = _model({"tp": 8}, 4.0)
    timer = model.timers["mixed"]
    ctx, extra, cap = 640, 0.4e-3, 256
    load = 4.0 * 250
    law = analytical._busy_law(timer, load, ctx, extra, cap)
    by_hand = sum(law[n] * (analytical._decode_step(timer, n, ctx).duration_s + extra) for n in range(1, len(law)))
    assert analytical.busy_step(timer, load, ctx, extra, cap) == pytest.approx(by_hand / law[1:].sum(), rel=1e-12)
    # the step grows with the batch: the mean step per decoded token weighs the long steps of big batches more
    per_token = analytical.busy_decode(timer, load, ctx, extra, cap)[0]
    assert analytical.busy_step(timer, load, ctx, extra, cap) < per_token
    # a law that does not settle has no mean step
    assert analytical.busy_step(timer, 1e9, ctx, extra, cap) is None


def test_step_after_instant_weighs_each_step_by_its_duration() -> None:
    # one replica: steps of 1, 3 and 1 s back to back, then a gap and a step of 2 s; a second replica's two steps
    steps = pd.DataFrame(
        {
            "replica": [0, 0, 0, 0, 1, 1],
            "start_s": [0.0, 1.0, 4.0, 9.0, 0.0, 2.0],
            "duration_s": [1.0, 3.0, 1.0, 2.0, 2.0, 4.0],
        }
    )
    # pairs that follow at once: (1, 3), (3, 1) and (2, 4): (1x3 + 3x1 + 2x4) / (1 + 3 + 2)
    assert step_after_instant_s(steps) == pytest.approx(14.0 / 6.0)
    assert math.isnan(step_after_instant_s(steps.iloc[[3]]))


@pytest.mark.parametrize(("layout", "rate"), [({"tp": 2, "dp_attn": 1, "ep": 2}, 4.0), ({"tp": 8}, 16.0)])
def test_the_step_decided_ahead_is_the_discrete_event_engines(layout: dict, rate: float) -> None:
    """Low load (a few sequences decoding, where the two figures part) and moderate load: the analytical step
    decided ahead is within 3% of the discrete-event engine's step after a random instant, on its own requests;
    at low load the mean step per decoded token (the old figure) is more than 4% above it."""
    model, spec = _model(layout, rate)
    n = int(max(600, rate * 75))
    b = sweep_eval._with_rate(model.built, rate, n)
    ahead = step_after_instant_s(simulate(b, spec.seed).steps)
    own = Analytical(b, spec.seed, timers=model.timers, sample=generate(b.workload, spec.seed, b.base_dir))
    r = own.workload_rate
    pool = own.pools["mixed"]
    s = own._mixed(r)[0]
    lag = own._lag(own.timers["mixed"], pool, r / pool.replicas, s)
    assert lag == pytest.approx(ahead, rel=0.03)
    if rate < 10:
        assert s.tau > 1.04 * ahead


def test_the_switch_moves_only_ttft(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _model({"tp": 2, "dp_attn": 1, "ep": 2}, 4.0)
    on = model.summary(4.0)
    monkeypatch.setattr(analytical, "LAG_AT_BATCH", False)
    off = model.summary(4.0)
    assert on["ttft_mean_s"] < off["ttft_mean_s"]
    for key in ("tpot_mean_s", "mean_batch", "throughput_tok_s"):
        assert on[key] == off[key]
    assert np.isfinite(on["ttft_p99_s"])
