"""What a serving simulation produced: the `SimResult` record and the step-table columns.

`request_table` turns the simulator's per-request arrays (seconds, token counts) into the
request table of `sim.serving.metrics`, adding the derived latencies: the client's ttft_s, tpot_s, e2e_s
and the engine's engine_ttft_s, engine_tpot_s, engine_e2e_s, queue_s (see `sim.serving.metrics` for what
each means).
`STEP_COLUMNS` names the fields of one engine step's row, in the order the DES records them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

#: Step columns holding counts (integers).
_INT_COLUMNS = (
    "replica", "tokens", "prefill_tokens", "decode_seqs", "seqs", "waiting", "running", "dropped_pairs", "pairs",
    "launches", "graphs", "padded_batch",
)  # fmt: skip


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


class StepLog:
    """The step table as the DES records it: rows one at a time (a single step) or columns a block at a time (a
    folded decode run, `sim.serving.steptime.StepBlock`), in recording order; `frame` gives the
    `STEP_COLUMNS` DataFrame with every step, one row each (nothing is sampled or dropped)."""

    def __init__(self) -> None:
        self._rows: list[tuple] = []  # numeric fields of single steps (`_NUMERIC` order)
        self._blocks: list[np.ndarray] = []  # numeric fields of blocks, [k, len(_NUMERIC)] each
        self._kinds: list[int] = []  # per entry: its length k, negative for a single step
        self._text: list[tuple[str, str]] = []  # per entry: (pool, phase)

    def __len__(self) -> int:
        return int(np.abs(self._kinds).sum()) if self._kinds else 0

    def append(self, row: tuple) -> None:
        """One step's row, its fields in `STEP_COLUMNS` order."""
        self._rows.append(tuple(row[i] for i in _NUMERIC_AT))
        self._text.append((row[_POOL_AT], row[_PHASE_AT]))
        self._kinds.append(-1)

    def extend(self, columns: dict[str, Any], k: int) -> None:
        """``k`` steps at once: every `STEP_COLUMNS` name to an array [k] or one value for all ``k`` (``pool`` and
        ``phase`` one value)."""
        mat = np.empty((k, len(_NUMERIC)))
        for i, c in enumerate(_NUMERIC):
            mat[:, i] = columns[c]
        self._blocks.append(mat)
        self._text.append((columns["pool"], columns["phase"]))
        self._kinds.append(k)

    def frame(self) -> pd.DataFrame:
        """Every recorded step, one row each (`STEP_COLUMNS`)."""
        if not self._kinds:
            return pd.DataFrame(columns=STEP_COLUMNS)
        kinds = np.asarray(self._kinds)
        lengths = np.abs(kinds)
        n = int(lengths.sum())
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        full = np.empty((n, len(_NUMERIC)))
        if self._rows:
            full[offsets[kinds < 0]] = np.array(self._rows, dtype=float)
        if self._blocks:
            starts, ks = offsets[kinds > 0], kinds[kinds > 0]
            pos = np.repeat(starts - np.concatenate([[0], np.cumsum(ks)[:-1]]), ks) + np.arange(int(ks.sum()))
            full[pos] = np.concatenate(self._blocks)
        text = np.array(self._text, dtype=object)
        data: dict[str, Any] = {"pool": np.repeat(text[:, 0], lengths), "phase": np.repeat(text[:, 1], lengths)}
        for i, c in enumerate(_NUMERIC):
            data[c] = full[:, i].astype(np.int64) if c in _INT_COLUMNS else full[:, i]
        return pd.DataFrame(data, columns=STEP_COLUMNS)


#: Numeric step columns and where they sit in a `STEP_COLUMNS` row.
_NUMERIC = tuple(c for c in STEP_COLUMNS if c not in ("pool", "phase"))
_NUMERIC_AT = tuple(STEP_COLUMNS.index(c) for c in _NUMERIC)
_POOL_AT, _PHASE_AT = STEP_COLUMNS.index("pool"), STEP_COLUMNS.index("phase")
