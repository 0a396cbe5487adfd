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

import numpy as np
import pytest
import yaml

from moesim.sim.serving import analytical
from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

ROOT = Path(__file__).resolve().parents[1]


def _model(**axes: object) -> tuple[object, object]:
    m = yaml.safe_load((ROOT / "examples" / "sweep-mixtral-gpu-choice.yaml").read_text())
    m["axes"].update(gpu=["H100-SXM"], gpus=[8], layout=[{"tp": 8}], precision=["bf16"], max_batch=[256], rate=[4.0])
    workload = str(axes.pop("workload", "chat"))
    m["axes"].update(axes)
    m["axes"]["workload"] = {workload: m["axes"]["workload"][workload]}
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
    """At 4 req/s the analytical batch and TPOT are near the discrete-event engine's (600 requests; 1.08 of its TPOT
    with 1,200); with the law of the batch off, the rounded batch sticks at 1.5 and TPOT comes out about half the
    simulation's. The breakdown's decode step is the summary's, under the same law."""
    model, spec = _model()
    a = model.summary(4.0)
    d = sweep_eval._des(model.built, 4.0, spec.seed, 600)
    assert a["tpot_mean_s"] == pytest.approx(d["tpot_mean_s"], rel=0.15)
    assert a["mean_batch"] > 2.5
    assert a["step_breakdown"]["decode"]["step_s"] == pytest.approx(a["decode_step_s"], rel=1e-9)
    monkeypatch.setattr(analytical, "BATCH_MIXTURE", False)
    model, _ = _model()
    assert model.summary(4.0)["mean_batch"] < 2.0


class _Step:
    def __init__(self, s: float) -> None:
        self.duration_s = s


class _Timer:
    def __init__(self) -> None:
        self._memo: dict = {}


#: A decode step's staircase in its batch (s): Mixtral-8x7B H100-SXM x8 TP8 bf16's first steps, then slowly rising.
STAIRS = [1.43e-3, 2.07e-3, 2.91e-3, 2.91e-3, *[3.66e-3] * 4, *(3.66e-3 + 1e-4 * k for k in range(1, 400))]


def _steps_of(table: list[float]):
    def step(timer: object, b: int, ctx: int) -> _Step:
        return _Step(table[b - 1])

    return step


def _simulate(rate: float, mean_out: int, lengths: str, steps: int, seed: int = 0) -> float:
    """Mean step per decoded token (s) of continuous batching with the `STAIRS` steps: Poisson arrivals join at the
    next step, every running sequence gets a token per step and leaves after its own output length."""
    rng = np.random.default_rng(seed)
    t, area, tokens, running = 0.0, 0.0, 0, np.zeros(0, np.int64)
    arrivals = np.cumsum(rng.exponential(1 / rate, steps))
    nxt = 0
    for _ in range(steps):
        k = int(np.searchsorted(arrivals, t, side="right"))
        if k > nxt:
            new = rng.geometric(1 / mean_out, k - nxt) if lengths == "geometric" else np.full(k - nxt, mean_out)
            running, nxt = np.concatenate([running, new]), k
        if not len(running):
            t = arrivals[nxt]
            continue
        n = len(running)
        d = STAIRS[n - 1]
        t, area, tokens = t + d, area + n * d, tokens + n
        running = running[running > 1] - 1
    return area / tokens


def test_busy_decode_is_the_product_form_and_matches_a_step_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """`busy_decode` against a step-level simulation of the same steps: a token's mean step within 2.5% for
    geometric and for fixed output lengths (the law is insensitive to them), where Poisson around the fixed point
    (`mixed_decode`'s law) is 4% over; with a constant step it is the Poisson law exactly; past what the steps at
    max_batch can serve it says so."""
    monkeypatch.setattr(analytical, "_decode_step", _steps_of(STAIRS))
    rate, out = 8.0, 150
    law = analytical.busy_decode(_Timer(), rate * out, 0, 0.0, 256)
    assert law is not None
    per_token, decoding = law
    assert decoding == pytest.approx(rate * out * per_token, rel=1e-12)  # Little's law
    for lengths in ("geometric", "fixed"):
        assert per_token == pytest.approx(_simulate(rate, out, lengths, 400_000), rel=0.025), lengths
    # the same steps, Poisson around the fixed point: b = load x E[step(1 + N)], N ~ Poisson(b)
    b = 1.0
    for _ in range(200):
        b = 0.5 * b + 0.5 * rate * out * analytical.mixed_decode(_Timer(), b, 0, 256)
    assert b / (rate * out) > 1.03 * per_token
    # a constant step: Poisson(load x s), a token's step s
    monkeypatch.setattr(analytical, "_decode_step", _steps_of([2e-3] * 512))
    per_token, decoding = analytical.busy_decode(_Timer(), 1500.0, 0, 1e-4, 256)
    assert per_token == pytest.approx(2.1e-3, rel=1e-9) and decoding == pytest.approx(1500 * 2.1e-3, rel=1e-9)
    # 256 sequences at 2.1 ms serve 121,905 tokens/s: more does not settle
    assert analytical.busy_decode(_Timer(), 130_000.0, 0, 1e-4, 256) is None


@pytest.mark.parametrize(
    ("axes", "rate"),
    [
        ({"gpu": ["A100-SXM-80GB"], "precision": ["int4"], "max_batch": [64], "workload": "long-prompt"}, 8.0),
        (
            {"gpu": ["H100-SXM"], "gpus": [1], "layout": [{"tp": 1}], "precision": ["fp8"], "workload": "long-prompt"},
            4.0,
        ),
    ],
)
def test_a_batch_near_a_half_has_a_steady_state(axes: dict, rate: float) -> None:
    """The prompts' time per step is read between the whole batches around b (`busy_decode`'s caller): at the
    rounded batch alone the map from b jumped where b crossed a half, the iterates cycled between 1.48 and 2.5 (8.08
    and 8.5) sequences and the sweep said "no steady state" at a load the configuration serves."""
    model, _ = _model(**axes)
    s = model.summary(rate)
    assert not s["overloaded"], s["overload_reason"]
    assert 1.0 < s["mean_batch"] < 12.0


def test_a_decode_pool_takes_the_law_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A disaggregated decode pool (examples/deepseek-v3-pd.yaml) decodes under `busy_decode`'s law with no prompts:
    its TPOT is a token's mean step under it, above the step at the rounded batch, and the breakdown's decode entry
    is the summary's decode step. Against the DES on this example: TPOT 0.989 -> 1.001 of it."""
    from moesim.sim.serving.analytical import Analytical
    from moesim.sim.serving.scenario import build, load_scenario

    def summary() -> dict:
        return Analytical(build(load_scenario(ROOT / "examples" / "deepseek-v3-pd.yaml"))).summary()

    on = summary()
    assert on["step_breakdown"]["decode"]["step_s"] == pytest.approx(on["decode_step_s"], rel=1e-9)
    monkeypatch.setattr(analytical, "PF_DECODE", False)
    off = summary()
    assert on["tpot_mean_s"] > off["tpot_mean_s"] * 1.005
    # the prefill pool is not touched: TTFT moves only through the decode pool's wait for a slot (5e-5 here)
    assert on["ttft_mean_s"] == pytest.approx(off["ttft_mean_s"], rel=1e-3)
