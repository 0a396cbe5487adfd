"""The analytical engine at low load, where the decode batch is a few sequences (`analytical.mixed_decode`,
`BATCH_MIXTURE`).

Before, the fixed point priced the decode step at the mean batch rounded to a whole one. A MoE decode step is a
steep staircase in a small batch (active experts, CUDA-graph padding), and on Mixtral-8x7B H100-SXM x8 TP8 bf16 at
4 req/s the iterates approached 1.5 sequences from below and never rounded up: TPOT 1.46 ms where the
discrete-event engine runs a batch of 3.1 at 2.72 ms (`benchmarks/low_load.py`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from moesim.sim.serving import analytical
from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

ROOT = Path(__file__).resolve().parents[1]


def _model() -> tuple[object, object]:
    m = yaml.safe_load((ROOT / "examples" / "sweep-mixtral-gpu-choice.yaml").read_text())
    m["axes"].update(gpu=["H100-SXM"], gpus=[8], layout=[{"tp": 8}], precision=["bf16"], max_batch=[256], rate=[4.0])
    m["axes"]["workload"] = {"chat": m["axes"]["workload"]["chat"]}
    spec = parse_sweep(m)
    (point,) = expand(spec).points
    sweep_eval._CACHE.clear()
    return sweep_eval._analytical(point, spec), spec


def test_mixed_decode_is_the_poisson_mean_of_the_steps() -> None:
    model, _ = _model()
    timer = model.timers["mixed"]
    ctx = 640

    def step(k: int) -> float:
        return analytical._decode_step(timer, k, ctx).duration_s

    b = 1.5
    by_hand = sum(math.exp(-b) * b**n / math.factorial(n) * step(min(1 + n, 256)) for n in range(40))
    assert analytical.mixed_decode(timer, b, ctx, 256) == pytest.approx(by_hand, rel=1e-9)
    # the batch a request decodes in: itself and the others, so more than the mean batch rounded
    assert analytical.mixed_decode(timer, b, ctx, 256) > step(2)
    # no others: its own step; capped at max_batch
    assert analytical.mixed_decode(timer, 0.0, ctx, 256) == step(1)
    assert analytical.mixed_decode(timer, 50.0, ctx, 4) == pytest.approx(step(4), rel=1e-12)


def test_low_load_batch_is_not_stuck_below_the_simulated_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 4 req/s the analytical batch and TPOT are near the discrete-event engine's (600 requests); with the mixture
    off, the rounded batch sticks at 1.5 and TPOT comes out about half the simulation's."""
    model, spec = _model()
    a = model.summary(4.0)
    d = sweep_eval._des(model.built, 4.0, spec.seed, 600)
    assert a["tpot_mean_s"] == pytest.approx(d["tpot_mean_s"], rel=0.25)
    assert a["mean_batch"] > 2.5
    monkeypatch.setattr(analytical, "BATCH_MIXTURE", False)
    model, _ = _model()
    assert model.summary(4.0)["mean_batch"] < 2.0
