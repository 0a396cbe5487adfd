"""moesim expert placement: routing statistics, solvers (ILP and the greedy
baselines it must beat) and `PlacementPlan` exporters for serving engines.
Built on `model` only.
"""

from moesim.placement.api import METHODS, PlacementResult, place
from moesim.placement.baselines import rebalance_experts, round_robin
from moesim.placement.exporters import FORMATS, export_plan, launch_flags, read_plan
from moesim.placement.ilp import IlpOptions
from moesim.placement.importers import load_stats, save_stats_npz
from moesim.placement.metrics import gpu_loads, plan_metrics
from moesim.placement.plan import PlacementPlan
from moesim.placement.stats import RoutingStats
from moesim.placement.synthetic import synthetic_trace

__all__ = [
    "FORMATS",
    "METHODS",
    "IlpOptions",
    "PlacementPlan",
    "PlacementResult",
    "RoutingStats",
    "export_plan",
    "gpu_loads",
    "launch_flags",
    "load_stats",
    "place",
    "plan_metrics",
    "read_plan",
    "rebalance_experts",
    "round_robin",
    "save_stats_npz",
    "synthetic_trace",
]
