"""The analytical sweep's shortcuts (issue 22) against the paths they stand in for, bit for bit.

- `StepArray._lean_cost` (a step's parts combined in Python floats) against `StepTimer._combine` on a one-row
  block, and `StepArray._eval_one` against `StepArray._eval`: every `StepCost` field identical on the analytical
  engine's shapes, on TP and EP layouts, bf16 and fp8, an engine with a host model and one without.
- The lean form is checked against `_combine` on a timer's first shapes: one that differs (or raises) is dropped for
  that timer and `_combine`'s step returned.
- A sweep's configurations share `replica_capacity` and the workload sample as they share their timers; an
  `Analytical` built alone (its own capacities, sample and timers) gives the same summaries; the memoised expert
  fetch is `StepTimer.expected_fetch`'s.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fast_inputs import SWEEP_BASE  # tests/fast_inputs.py

from moesim.sim.serving import steparray
from moesim.sim.serving.analytical import Analytical, _fetch
from moesim.sim.serving.steparray import StepArray, _same_cost
from moesim.sim.serving.steptime import StepTimer
from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

SWEEP = {
    "name": "sweep-speed",
    "base": SWEEP_BASE,
    "axes": {
        "gpu": ["A100-SXM-80GB", "H100-SXM"],
        "gpus": [4],
        "layout": [{"tp": "gpus"}, {"tp": 1, "dp_attn": "gpus", "ep": "gpus"}],
        "precision": ["bf16", "fp8"],
        "rate": [0.5, 8.0, 64.0],
    },
}

#: (decoding sequences, context, prompt chunk, chunk's cached tokens), as tests/test_steparray.py's SHAPES.
SHAPES = [
    (1, 10, 0, 0), (3, 700, 0, 0), (13, 2048, 0, 0), (64, 900, 0, 0), (300, 1500, 0, 0), (600, 300, 0, 0),
    (1, 100, 7, 0), (5, 512, 300, 0), (17, 3000, 2000, 1500), (129, 800, 4000, 64), (250, 4096, 3800, 3000),
    (0, 0, 512, 0), (0, 0, 4000, 0), (0, 0, 900, 2000), (8, 600, 1, 600), (9, 600, 1, 20), (40, 1, 1, 0),
    (2, 7000, 5000, 0), (33, 1, 2, 1), (255, 255, 8000, 8000),
]  # fmt: skip


def _points() -> tuple[object, list]:
    spec = parse_sweep(SWEEP)
    seen, out = set(), []
    for p in expand(spec).points:
        if p.config_key not in seen:
            seen.add(p.config_key)
            out.append(p)
    return spec, out


def _timers() -> list[StepTimer]:
    sweep_eval._CACHE.clear()
    spec, points = _points()
    return [t for p in points for t in sweep_eval._analytical(p, spec).timers.values()]


def _ideal(timer: StepTimer) -> StepTimer:
    """A copy of ``timer`` without a host model (`StepCost`'s host fields stay 0)."""
    t = object.__new__(StepTimer)
    t.__dict__.update(timer.__dict__)
    t.__dict__.pop("_step_array", None)
    t._memo = {}
    t.profile = None
    return t


def test_lean_cost_and_eval_one_equal_combine_and_eval(monkeypatch):
    timers = _timers()
    assert len(timers) == 8 and all(t.profile is not None and not t.profile.ideal for t in timers)
    timers += [_ideal(timers[0]), _ideal(timers[3])]
    compared = 0
    for timer in timers:
        sa = StepArray(timer)
        assert sa.supported
        for b, ctx, chunk, cc in SHAPES:
            monkeypatch.setattr(steparray, "LEAN", True)
            monkeypatch.setattr(steparray, "EVAL_ONE", True)
            fast = StepArray(timer)
            fast._lean_checked = steparray._LEAN_CHECKS  # the lean form alone, unchecked
            got = fast.expected(b, ctx, chunk, cc)
            monkeypatch.setattr(steparray, "LEAN", False)
            monkeypatch.setattr(steparray, "EVAL_ONE", False)
            want = StepArray(timer).expected(b, ctx, chunk, cc)
            assert _same_cost(got, want), (timer.layout.label(), (b, ctx, chunk, cc), got, want)
            assert fast._lean
            compared += any(v is not None for v in fast._timed.values())
            seqs = b + (1 if chunk else 0)
            pads = max(timer._padded((seqs, b + chunk, "decode" if chunk <= 1 else "mixed")) - seqs, 0)
            if not (pads and chunk):
                one, ref = sa.parts(b, ctx, pads, chunk, cc), None
                if one is not None:
                    monkeypatch.setattr(steparray, "EVAL_ONE", False)
                    ref = sa.parts(b, ctx, pads, chunk, cc)
                    monkeypatch.setattr(steparray, "EVAL_ONE", True)
                    assert np.array_equal(one, ref), (timer.layout.label(), (b, ctx, chunk, cc))
    assert compared >= len(timers) * len(SHAPES) // 2  # the array form answered most shapes (not the scalar path)


def test_a_lean_step_that_differs_is_dropped(monkeypatch):
    """A lean step that differs from `_combine`'s (here: its duration nudged) is caught by the check on the timer's
    first shapes: the timer returns `_combine`'s steps from then on."""
    timer = _timers()[0]
    ref = StepArray(timer)
    ref._lean = False
    want = [ref.expected(*s) for s in SHAPES[:6]]
    real = StepArray._lean_cost

    def nudged(self, parts, step):
        cost = real(self, parts, step)
        cost.duration_s = math.nextafter(cost.duration_s, math.inf)
        return cost

    monkeypatch.setattr(StepArray, "_lean_cost", nudged)
    sa = StepArray(timer)
    got = [sa.expected(*s) for s in SHAPES[:6]]
    assert not sa._lean and sa._lean_checked == 1
    assert all(_same_cost(g, w) for g, w in zip(got, want, strict=True))


def test_a_lean_step_that_raises_is_dropped(monkeypatch):
    """A lean form that cannot run (say, a host model with a new signature) gives way to `_combine` for the timer."""
    timer = _timers()[1]
    ref = StepArray(timer)
    ref._lean = False
    want = [ref.expected(*s) for s in SHAPES[:4]]

    def broken(self, parts, step):
        raise TypeError("host_cost() got an unexpected keyword argument")

    monkeypatch.setattr(StepArray, "_lean_cost", broken)
    sa = StepArray(timer)
    got = [sa.expected(*s) for s in SHAPES[:4]]
    assert not sa._lean
    assert all(_same_cost(g, w) for g, w in zip(got, want, strict=True))


def _same_summary(got: dict, want: dict, key: str = "") -> None:
    assert list(got) == list(want), key
    for k, v in want.items():
        if k == "wall_s":
            continue
        g = got[k]
        if isinstance(v, dict):
            _same_summary(g, v, f"{key}.{k}")
        elif isinstance(v, float) and math.isnan(v):
            assert isinstance(g, float) and math.isnan(g), f"{key}.{k}"
        else:
            assert g == v and type(g) is type(v), f"{key}.{k}: {g!r} vs {v!r}"


@pytest.mark.parametrize("max_batch", [64, 256])
def test_shared_capacities_and_sample_give_the_same_summaries(max_batch):
    """Configurations that share timers share `replica_capacity` and the workload sample: each `Analytical` of the
    sweep gives, rate by rate, the summaries of one built alone from its own scenario."""
    sweep_eval._CACHE.clear()
    data = SWEEP | {"axes": SWEEP["axes"] | {"gpu": ["L40S", "H100-SXM"], "max_batch": [max_batch, 128]}}
    spec = parse_sweep(data)
    points = expand(spec).points
    rates = sorted({p.values["rate"] for p in points})
    shared_caps = 0
    for p in {p.config_key: p for p in points}.values():
        try:
            model = sweep_eval._analytical(p, spec)
        except Exception as exc:  # a configuration that does not fit: the same error alone
            with pytest.raises(type(exc)):
                Analytical(sweep_eval._built(p, spec), spec.seed)
            continue
        alone = Analytical(sweep_eval._built(p, spec), spec.seed)
        assert alone.caps == model.caps and alone.timers is not model.timers
        shared_caps += model.caps is not None
        for got, want in zip(model.summaries(rates), alone.summaries(rates), strict=True):
            _same_summary(got, want, p.values["label"])
    assert shared_caps >= 4


def test_memoised_fetch_is_expected_fetch():
    """`analytical._fetch` (memoised by tokens) returns `StepTimer.expected_fetch` of the same tokens."""
    sweep_eval._CACHE.clear()
    axes = SWEEP["axes"] | {"gpu": ["L40S"], "gpus": [1], "layout": [{"tp": 1}], "precision": ["bf16"]}
    spec = parse_sweep(SWEEP | {"axes": axes})
    timers = [t for p in expand(spec).points for t in sweep_eval._analytical(p, spec).timers.values()]
    offloaded = [t for t in timers if t.offload]
    assert offloaded
    for t in offloaded[:2]:
        for tokens in (1, 7, 64, 300, 4097):
            assert _fetch(t, tokens) == t.expected_fetch(float(tokens))
            assert _fetch(t, tokens) == t._memo[("analytic_fetch", tokens)]
