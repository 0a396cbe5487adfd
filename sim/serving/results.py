"""What a serving simulation produced: the `SimResult` record and the step-table columns.

`request_table` turns the simulator's per-request arrays (seconds, token counts) into the
request table of `sim.serving.metrics`, adding the derived latencies: the client's ttft_s, tpot_s, e2e_s
and the engine's engine_ttft_s, engine_tpot_s, engine_e2e_s, queue_s (see `sim.serving.metrics` for what
each means).
`STEP_COLUMNS` names the fields of one engine step's row, in the order the DES records them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.sim.serving.capacity import Capacity
from moesim.sim.serving.metrics import with_derived

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
    # host time (`sim.serving.host`): exposed seconds by part, the raw CPU seconds (total and by part), launches,
    # graph replays and the sequences the GPU ran (capture size of a graph replay);
    # duration_s = compute_s + comm_s + straggler_s + fetch_s + scheduler_s + prepare_s + sampling_s + launch_s
    "scheduler_s",
    "prepare_s",
    "sampling_s",
    "launch_s",
    "host_s",
    "scheduler_cpu_s",
    "prepare_cpu_s",
    "sampling_cpu_s",
    "launch_cpu_s",
    "launches",
    "graphs",
    "padded_batch",
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
        engine_itl: every gap between consecutive output tokens as the engine emits them, s (``itl`` is the
            client's: the gaps between streamed chunks, empty when not streamed); None: the same as ``itl``.
    """

    requests: pd.DataFrame
    itl: np.ndarray
    steps: pd.DataFrame
    kv_transfers: pd.DataFrame
    gpu_busy_s: dict[int, np.ndarray]
    capacities: dict[str, Capacity]
    wall_s: float
    gpus_per_replica: dict[int, int]
    engine_itl: np.ndarray | None = None


def request_table(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """The request table from per-request arrays [n] (request_id, replica, prefill_replica, arrival_s,
    engine_arrival_s, input_tokens, output_tokens, cached_tokens, scheduled_s, first_token_s, finish_s,
    client_first_s, client_finish_s, preemptions; the request-path and cache columns optional), with the derived
    latencies in seconds (`sim.serving.metrics.with_derived`): the client's ttft_s, tpot_s (NaN for one-token
    outputs), e2e_s and the engine's engine_ttft_s, engine_tpot_s, engine_e2e_s and queue_s."""
    return with_derived(pd.DataFrame(columns))
