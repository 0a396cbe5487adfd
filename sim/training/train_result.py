"""What a training simulation returns: `TrainResult` (made by `training.train`, drawn by `training.train_plots`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from moesim.sim.training.train_cost import UnitCosts
from moesim.sim.training.train_scenario import TrainSetup


@dataclass
class TrainResult:
    """A training simulation's results.

    Attributes:
        summary: flat JSON-ready figures (units in the keys).
        setup: the scenario's objects.
        tasks: every pipeline task of the simulated steps (rank, kind,
            micro-batch, stage, start_s, end_s and the parts of its time).
        memory: per pipeline rank, bytes per GPU by component.
        comm: data-parallel communication events (rank, what, start_s, end_s).
        steps: per step, start_s and end_s.
        costs: the per-unit costs the tasks were built from.
    """

    summary: dict[str, Any]
    setup: TrainSetup
    tasks: pd.DataFrame
    memory: pd.DataFrame
    comm: pd.DataFrame
    steps: pd.DataFrame
    costs: UnitCosts | None = field(default=None, repr=False)
