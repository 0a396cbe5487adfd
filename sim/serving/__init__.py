"""Serving simulation: `load_scenario`, `build`, `simulate` (DES), `Analytical`, `run`, `write_outputs`.

Modules: `scenario` (the YAML, validated, and the objects built from it), `workload` and `traces` (requests),
`steptime` (one engine step's cost), `host` (engine profiles: host time per step), `engine` with `replica`,
`capacity` and `results` (the SimPy simulator),
`analytical` (closed-form steady state), `metrics` (latency percentiles, Little's law), `plots` and
`chrome_trace` (figures and a Perfetto trace), `serve` (the runner behind ``moesim simulate``).
matplotlib is imported only when a plot is drawn.
"""

from moesim.sim.serving.analytical import Analytical, analyse
from moesim.sim.serving.capacity import check_requests_fit, replica_capacity
from moesim.sim.serving.engine import simulate
from moesim.sim.serving.host import PARAMS, EngineProfile, engine_profile
from moesim.sim.serving.results import SimResult
from moesim.sim.serving.scenario import Built, Scenario, build, load_scenario, parse_scenario
from moesim.sim.serving.serve import ServeResult, load, run, write_outputs
from moesim.sim.serving.workload import Workload, generate, parse_workload

__all__ = [
    "PARAMS",
    "Analytical",
    "Built",
    "EngineProfile",
    "Scenario",
    "ServeResult",
    "SimResult",
    "Workload",
    "analyse",
    "build",
    "check_requests_fit",
    "engine_profile",
    "generate",
    "load",
    "load_scenario",
    "parse_scenario",
    "parse_workload",
    "replica_capacity",
    "run",
    "simulate",
    "write_outputs",
]
