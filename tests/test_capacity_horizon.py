"""The capacity search's probe horizon: long enough for an overload to show (`sim.sweeps.sweep_eval.probe_horizon`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import CapacitySpec, expand, parse_sweep

BASE = {
    "model": "mixtral-8x7b",
    "gpu": "H100-SXM",
    "workload": {
        "arrival": "poisson",
        "requests": 200,
        "input": {"dist": "lognormal", "mean": 256, "cv": 1.0},
        "output": {"dist": "lognormal", "mean": 64, "cv": 1.0, "max": 512},
    },
    "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
}


def test_fill_fraction_solves_the_mean_excess() -> None:
    """x* / E[X] with E[(X - x*)+] = E[X] t / (1 + t): ln((1 + t) / t) for exponential holds, 1 / (1 + t) for equal
    ones (every hold ends at once), and the sample's own mean excess equals the target at x*."""
    rng = np.random.default_rng(0)
    for t in (0.05, 0.15, 0.5):
        assert sweep_eval.fill_fraction(rng.exponential(100.0, 200_000), t) == pytest.approx(
            math.log((1 + t) / t), rel=0.02
        )
        assert sweep_eval.fill_fraction(np.full(50, 64.0), t) == pytest.approx(1 / (1 + t), rel=1e-12)
    x = rng.lognormal(4.0, 1.0, 5_000)
    f = sweep_eval.fill_fraction(x, 0.15)
    assert np.maximum(x - f * x.mean(), 0).mean() == pytest.approx(x.mean() * 0.15 / 1.15, rel=1e-9)
    assert sweep_eval.fill_fraction(np.zeros(3), 0.15) == 0.0 and sweep_eval.fill_fraction(np.array([]), 0.1) == 0.0


class _Model:
    """An analytical model's two figures `probe_horizon` reads: the mean E2E at a rate and the output lengths."""

    def __init__(self, e2e: float, out: np.ndarray) -> None:
        self.e2e, self.out = e2e, out
        self.asked: list[float] = []

    def summary(self, rate: float) -> dict:
        self.asked.append(rate)
        return {"e2e_mean_s": self.e2e}


def test_probe_horizon_is_the_fill_plus_twice_the_slo_over_the_tolerance() -> None:
    cap = CapacitySpec(duration_s=6.0, tolerance=0.15)
    out = np.full(10, 128.0)
    m = _Model(3.0, out)
    assert sweep_eval.probe_horizon(cap, m, 20.0, 1.0) == pytest.approx(3.0 / 1.15 + 2.0 / 0.15)
    assert m.asked == [20.0]
    assert sweep_eval.probe_horizon(cap, m, 0.0, 1.0) > 6.0 and m.asked[-1] == cap.min_rate  # no analytical answer
    # the spec's window where it is longer; no TTFT SLO: nothing waits on the queue, the window alone
    assert sweep_eval.probe_horizon(CapacitySpec(duration_s=60.0, tolerance=0.15), m, 20.0, 1.0) == 60.0
    assert sweep_eval.probe_horizon(cap, m, 20.0, None) == 6.0
    assert sweep_eval.probe_horizon(cap, _Model(math.nan, out), 20.0, 1.0) == pytest.approx(2.0 / 0.15)
    assert sweep_eval.des_requests(cap, 100.0, 20.0) == 2000 and sweep_eval.des_requests(cap, 100.0) == 600


def _search(monkeypatch: pytest.MonkeyPatch, old_window: bool) -> tuple[dict, object]:
    data = {
        "name": "h",
        "base": BASE,
        "axes": {"gpus": [2], "layout": [{"tp": 2}], "precision": ["fp8"]},
        "engine": "des",
        "capacity": {"percentile": 90, "duration_s": 2, "tolerance": 0.2, "max_requests": 4000},
    }
    spec = parse_sweep(data)
    (p,) = expand(spec).points
    if old_window:  # every probe replays duration_s of arrivals, as before the horizon
        monkeypatch.setattr(sweep_eval, "probe_horizon", lambda cap, *a: cap.duration_s)
    sweep_eval._CACHE.clear()
    row = sweep_eval.evaluate(p, spec)
    assert row["status"] == "ok", row["error"]
    return row, sweep_eval._built(p, spec)


def test_capacity_is_sustainable_only_with_the_horizon(monkeypatch: pytest.MonkeyPatch) -> None:
    """The found rate less the tolerance meets the SLOs over 4x the found run's window of arrivals; with probes of
    ``duration_s`` (2 s) alone, the search passes a rate whose longer run misses them (the queue had no time to
    grow)."""
    slo = (90, 0.5, 0.05)

    def long_run_meets(row: dict, built: object) -> bool:
        rate = row["capacity_req_s"] / 1.2
        n = math.ceil(rate * 4 * row["capacity_horizon_s"])
        return sweep_eval.meets(sweep_eval._des(built, rate, 0, n), *slo)

    row, built = _search(monkeypatch, old_window=False)
    assert row["capacity_horizon_s"] > 2 * 0.5 / 0.2 and row["capacity_runs"] >= 2
    assert long_run_meets(row, built)
    monkeypatch.undo()
    old, built = _search(monkeypatch, old_window=True)
    assert old["capacity_horizon_s"] == pytest.approx(max(2.0, 100 / old["capacity_req_s"]), rel=0.01)  # 100: fewest
    assert old["capacity_req_s"] > 1.2 * row["capacity_req_s"]
    assert not long_run_meets(old, built)
