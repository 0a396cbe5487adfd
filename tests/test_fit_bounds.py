"""fit-engine's bounds on the per-sequence host costs: vLLM v0's measured slopes (microsoft/vidur
cpu_overheads.csv: scheduler 15.5 us, sampler 7.8 us per sequence), upper bounds for V1. A looser bound let a fit
take the cost model's missing per-sequence GPU time as host time, which ran away on held-out high-rate runs through
the batch-step feedback (`sim.serving.fit_engine.BOUNDS`)."""

from __future__ import annotations

import pytest

from moesim.sim.serving.fit_engine import BOUNDS, base_profile


def test_per_sequence_costs_are_bounded_by_the_measured_v0_slopes():
    assert BOUNDS["scheduler_per_seq_s"] == pytest.approx(15.5e-6)
    assert BOUNDS["sampling_per_seq_s"] == pytest.approx(7.8e-6)


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_shipped_profiles_start_inside_the_bounds(kind):
    host = base_profile(kind).host
    for name, bound in BOUNDS.items():
        assert 0.0 <= host[name] <= bound, name
