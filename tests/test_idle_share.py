"""How many arrivals find their replica idle (`analytical.IDLE_SHARE`, `Analytical._idle_share`).

An arrival that finds its replica with nothing running starts a step at once: no step to wait out, none decided
ahead of it (`IDLE_ARRIVALS`). The analytical engine found those arrivals by replaying its own finish times, whose
decode steps are all the mean batch's; a nearly empty replica runs shorter steps than that, drains sooner and is
idle more often, so the replay found too few (H200-SXM TP1 at 1 req/s: 2% where the discrete-event engine finds
10%). The share is now P(N = 0) under the decode batch's stationary law (Poisson arrivals see time averages), given
to the arrivals after the replay's longest idle spells (`python -m benchmarks.low_load --idle`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from moesim.sim.serving import analytical
from moesim.sim.serving.analytical import Analytical
from moesim.sim.serving.engine import simulate
from moesim.sim.serving.metrics import idle_arrival_share
from moesim.sim.serving.serve import des_summary
from moesim.sim.serving.workload import generate
from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

ROOT = Path(__file__).resolve().parents[1]


def test_idle_arrival_share_counts_requests_scheduled_on_arrival() -> None:
    req = pd.DataFrame({"engine_arrival_s": [0.0, 1.0, 2.0, 3.0], "scheduled_s": [0.0, 1.004, 2.0, 3.2]})
    assert idle_arrival_share(req) == 0.5
    assert math.isnan(idle_arrival_share(req.iloc[:0]))


def _h200_at(rate: float) -> tuple[object, object]:
    m = yaml.safe_load((ROOT / "examples" / "sweep-mixtral-gpu-choice.yaml").read_text())
    m["axes"].update(gpu=["H200-SXM"], gpus=[1], layout=[{"tp": 1}], precision=["bf16"], max_batch=[256], rate=[rate])
    m["axes"]["workload"] = {"chat": m["axes"]["workload"]["chat"]}
    spec = parse_sweep(m)
    (point,) = expand(spec).points
    sweep_eval._CACHE.clear()
    return sweep_eval._analytical(point, spec), spec


def test_idle_share_is_the_discrete_event_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1 req/s on one H200 the law's idle share is within 0.02 of the discrete-event engine's, where the
    replay had found 0.023 (`benchmarks.low_load --idle`), and the mean TTFT moves toward the simulated one."""
    model, spec = _h200_at(1.0)
    b = sweep_eval._with_rate(model.built, 1.0, 600)
    res = simulate(b, spec.seed)
    des_share, des_ttft = idle_arrival_share(res.requests), des_summary(b, res)["ttft_mean_s"]

    def analytical_ttft() -> tuple[float, float | None]:
        own = Analytical(b, spec.seed, timers=model.timers, sample=generate(b.workload, spec.seed, b.base_dir))
        r = own.workload_rate
        pool = own.pools["mixed"]
        share = own._idle_share(own.timers["mixed"], pool, r / pool.replicas, own._mixed(r)[0])
        return own.summary(r)["ttft_mean_s"], share

    on, share = analytical_ttft()
    assert share == pytest.approx(des_share, abs=0.02)
    monkeypatch.setattr(analytical, "IDLE_SHARE", False)
    off, none = analytical_ttft()
    assert none is None
    assert abs(on / des_ttft - 1) < abs(off / des_ttft - 1)
    assert on < off
