"""What-if sweeps of serving scenarios: `read_sweep`, `expand` to points, `run_sweep` (local or Dask).

Modules: `sweep_spec` (the YAML: axes, constraints, targets), `sweep_eval` (one point: placement, capacity,
analytical or DES), `sweep` (the resumable runner, shards and lock), `sweep_post` (accuracy columns, the
finished table), `cap` (Pareto fronts and the cheapest point meeting the SLOs), `sweep_report` and
`sweep_plots` (report files and figures). Builds on `moesim.sim.serving`.
"""

from moesim.sim.sweeps.sweep import SweepResult, run_sweep
from moesim.sim.sweeps.sweep_spec import Expansion, Point, SweepSpec, expand, parse_sweep, read_sweep

__all__ = ["Expansion", "Point", "SweepResult", "SweepSpec", "expand", "parse_sweep", "read_sweep", "run_sweep"]
