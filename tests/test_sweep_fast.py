"""The vectorised analytical sweep against the per-point reference path.

`Analytical.summaries` (many rates at once) and `sweep_eval.evaluate_task` (a configuration's rates as one
batch) must give the figures of `Analytical.summary` and `sweep_eval.evaluate` point by point, to float
rounding; bad rates keep their errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fast_inputs import SWEEP_BASE  # tests/fast_inputs.py

from moesim.model.errors import MoesimError
from moesim.sim.serving.analytical import Analytical, _row_percentiles
from moesim.sim.serving.metrics import percentiles
from moesim.sim.serving.scenario import build, parse_scenario
from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

BASE = SWEEP_BASE | {"gpu": "H100-SXM"}
# light load to overload: ok points, packed prefill, diverging batches and max_batch limits all appear
RATES = [0.5, 4.0, 32.0, 256.0, 1024.0, 4096.0]


def _scenario(**over: object):
    wl = dict(BASE["workload"]) | {"rate": 1.0}
    return build(parse_scenario(BASE | {"workload": wl} | over))


def _same(a: object, b: object, key: str) -> None:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), key
        else:
            assert a == pytest.approx(b, rel=1e-12, abs=1e-300), key
    elif isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b), key
        for k in a:
            _same(a[k], b[k], f"{key}.{k}")
    else:
        assert a == b, key


@pytest.mark.parametrize("layout", [{"tp": 2}, {"tp": 1, "dp_attn": 2, "ep": 2}])
def test_summaries_equal_summary_rate_by_rate(layout):
    model = Analytical(_scenario(layout=layout, precision={"weights": "fp8"}), 0)
    fast = model.summaries(RATES)
    ref = Analytical(_scenario(layout=layout, precision={"weights": "fp8"}), 0)
    statuses = set()
    for rate, got in zip(RATES, fast, strict=True):
        want = ref.summary(rate)
        assert set(got) == set(want)
        for k in want:
            if k != "wall_s":
                _same(got[k], want[k], f"rate {rate}: {k}")
        statuses.add(want["overloaded"])
    assert statuses == {True, False}  # the comparison covers both regimes


def test_sweep_rows_equal_the_per_point_path():
    data = {
        "name": "fast",
        "base": BASE,
        "axes": {
            "gpus": [2, 4],
            "layout": [{"tp": "gpus"}, {"tp": 1, "dp_attn": "gpus", "ep": "gpus"}],
            "max_batch": [32, 256],
            "rate": RATES,
        },
    }
    spec = parse_sweep(data)
    points = expand(spec).points
    fast = sweep_eval.evaluate_task(points, spec)
    sweep_eval._CACHE.clear()  # the reference builds its own models
    ref = [sweep_eval.evaluate(p, spec) for p in points]
    assert len(fast) == len(ref) == len(points)
    for got, want in zip(fast, ref, strict=True):
        assert list(got) == list(want)
        for k in want:
            if k != "wall_s":
                _same(got[k], want[k], f"{want['label']} @ {want['rate']}: {k}")
    assert {r["status"] for r in ref} == {"ok", "overloaded"}


def test_bad_rates_keep_their_errors():
    model = Analytical(_scenario(layout={"tp": 2}), 0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(MoesimError, match="request rate must be > 0"):
            model.summaries([1.0, bad])
    assert model.summaries([]) == []


def test_row_percentiles_equal_percentiles():
    rng = np.random.default_rng(3)
    a = rng.lognormal(size=(5, 777))
    a[2, :10] = np.inf
    a[4, 3] = np.nan  # a row with NaN takes the reference itself
    for got, row in zip(_row_percentiles(a), a, strict=True):
        want = percentiles(row)
        for k in want:
            _same(got[k], want[k], k)


def test_capacity_probe_stops_only_a_certain_miss():
    """`sweep_eval._probe` against a full simulation (`sweep_eval._des`): a probe that meets the SLOs runs to the
    end and gives the same summary; an overloaded one stops early, and the full run misses the SLOs too."""
    wl = dict(BASE["workload"], rate=1.0, output={"dist": "lognormal", "mean": 32, "cv": 1.0, "max": 256})
    built = build(
        parse_scenario({k: v for k, v in BASE.items() if k != "offload"} | {"workload": wl, "layout": {"tp": 2}})
    )
    slo = (90, 0.2, 0.05)
    light = sweep_eval._probe(built, 2.0, 0, 30, *slo)
    full = sweep_eval._des(built, 2.0, 0, 30)
    assert sweep_eval.meets(full, *slo) and not light.get("stopped_early")
    for k in full:
        if "wall" not in k:  # wall_s, simulated_s_per_wall_s: this machine's speed
            _same(light[k], full[k], k)
    heavy = sweep_eval._probe(built, 3000.0, 0, 300, *slo)
    assert heavy["stopped_early"] and heavy["completed"] < 300 and not sweep_eval.meets(heavy, *slo)
    assert not sweep_eval.meets(sweep_eval._des(built, 3000.0, 0, 300), *slo)
