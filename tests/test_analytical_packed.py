"""The analytical engine where every step turns mixed (the packed regime): no drop in the step time or the overload.

Below the packed regime `pool_state` prices each request's own prompt (`sim.serving.prefill_work`: long prompts cost
more per token once a chunk's GEMMs are compute-bound); the packed regime priced the mean prompt's chunk alone, so
the step time fell and the overload vanished where the regime changed, and a capacity bisection could land past
the first rate that fails (found on `benchmarks/sweep-des-capacity.yaml`: 23 of 72 configurations).
"""

from __future__ import annotations

import itertools

import numpy as np

from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

SWEEP = {
    "name": "packed",
    "base": {
        "model": "mixtral-8x7b",
        "gpus_per_node": 8,
        "engine": {"max_tokens": 8192, "chunked_prefill": True},
        "workload": {
            "arrival": "poisson",
            "input": {"dist": "lognormal", "mean": 512, "cv": 1.0, "max": 8192},
            "output": {"dist": "lognormal", "mean": 128, "cv": 1.0, "max": 2048},
        },
        "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
    },
    "axes": {
        "gpu": ["A100-SXM-80GB"],
        "gpus": [4],
        "layout": [{"tp": "gpus"}],
        "precision": ["bf16"],
        "max_batch": [128],
        "rate": [1.0],
    },
    "engine": "analytical",
}


def test_step_time_and_overload_are_monotone_across_the_packed_switch() -> None:
    spec = parse_sweep(SWEEP)
    (p,) = expand(spec).points
    sweep_eval._CACHE.clear()
    model = sweep_eval._analytical(p, spec)
    rates = np.linspace(40.0, 58.0, 19)
    states = [model.solve(float(r))[0]["mixed"] for r in rates]
    packed = [s.mixed_frac >= 1.0 for s in states]
    assert not packed[0] and packed[-1]  # the grid crosses the switch
    over = [s.overloaded for s in states]
    first = over.index(True)
    assert all(over[first:]), [(r, s.overloaded, s.reason) for r, s in zip(rates, states, strict=True)]
    taus = [s.tau for s in states[: first + 1]]  # up to the first overloaded rate (past it the state says only that)
    assert all(b >= a * (1 - 1e-9) for a, b in itertools.pairwise(taus)), taus
    # the pool is overloaded by the time every step is mixed, and stays so
    assert first <= packed.index(True)
