"""Training simulation: `load_train_scenario`, `build_training`, `simulate_training`, `run`, `write_outputs`.

Modules: `train_scenario` (the YAML, validated, and the `TrainSetup` built from it), `train_cost` (per-microbatch
compute, communication and optimizer seconds), `pipeline` (1F1B, GPipe, interleaved and DualPipe schedules run
as discrete events), `train` (the runner behind ``moesim train``), `train_result` and `train_plots` (the
result, its figures and Perfetto trace). Does not import `moesim.sim.serving`; what both need is in
`moesim.sim.common`.
"""

from moesim.sim.training.pipeline import PipelineRun, run_pipeline, schedule
from moesim.sim.training.train import load, run, simulate_training, write_outputs
from moesim.sim.training.train_result import TrainResult
from moesim.sim.training.train_scenario import TrainScenario, TrainSetup, build_training, load_train_scenario

__all__ = [
    "PipelineRun",
    "TrainResult",
    "TrainScenario",
    "TrainSetup",
    "build_training",
    "load",
    "load_train_scenario",
    "run",
    "run_pipeline",
    "schedule",
    "simulate_training",
    "write_outputs",
]
