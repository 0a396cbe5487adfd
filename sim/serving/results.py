"""What a serving simulation produced: the `SimResult` record and the step-table columns.

`request_table` turns the simulator's per-request arrays (seconds, token counts) into the
request table of `sim.serving.metrics`, adding the derived latencies queue_s, ttft_s, tpot_s, e2e_s.
`STEP_COLUMNS` names the fields of one engine step's row, in the order the DES records them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.sim.serving.capacity import Capacity

#: One prefill-to-decode KV transfer's row.
TRANSFER_COLUMNS = ["request_id", "src_replica", "dst_replica", "start_s", "duration_s", "bytes"]


STEP_COLUMNS = [
    "replica",
    "pool",
    "start_s",
    "duration_s",
    "phase",
    "tokens",
    "prefill_tokens",
    "decode_seqs",
    "seqs",
    "kv_used_frac",
    "waiting",
    "running",
    "compute_s",
    "comm_s",
    "straggler_s",
    "fetch_s",
    "dropped_pairs",
    "pairs",
    "bytes",
    "flops",
]


@dataclass
class SimResult:
    """What a simulation produced.

    Attributes:
        requests: one row per request (see `sim.serving.metrics`).
        itl: every inter-token latency, s.
        steps: one row per engine step (`STEP_COLUMNS`).
        kv_transfers: prefill-to-decode KV transfers (empty without disaggregation).
        gpu_busy_s: per replica, each GPU's busy seconds.
        capacities: per pool role, its replicas' memory verdict.
        wall_s: wall time of the simulation.
        gpus_per_replica: each replica's GPU count.
    """

    requests: pd.DataFrame
    itl: np.ndarray
    steps: pd.DataFrame
    kv_transfers: pd.DataFrame
    gpu_busy_s: dict[int, np.ndarray]
    capacities: dict[str, Capacity]
    wall_s: float
    gpus_per_replica: dict[int, int]


def request_table(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """The request table from per-request arrays [n] (request_id, replica, prefill_replica, arrival_s,
    input_tokens, output_tokens, scheduled_s, first_token_s, finish_s, preemptions), with the derived
    latencies in seconds: queue_s, ttft_s, tpot_s (NaN for one-token outputs) and e2e_s."""
    req = pd.DataFrame(columns)
    req["queue_s"] = req["scheduled_s"] - req["arrival_s"]
    req["ttft_s"] = req["first_token_s"] - req["arrival_s"]
    req["tpot_s"] = (req["finish_s"] - req["first_token_s"]) / (req["output_tokens"] - 1).where(
        req["output_tokens"] > 1
    )
    req["e2e_s"] = req["finish_s"] - req["arrival_s"]
    return req
