"""Post-processing of a what-if sweep's results table: Pareto fronts, the CAP table, the cheapest configuration
for a throughput target, heatmaps, a Pareto scatter, a MoE-CAP radar and the dashboard's data files.

The input is the sweep's results DataFrame, one row per sweep point. Columns this module reads (any may be
missing or all-NaN; what cannot be computed comes out as NaN or is skipped):

- identity and axes: ``point_id``, ``label`` (one readable label per configuration; the rows of a rate sweep
  share it), ``model``, ``gpu``, ``gpus``, ``layout``, ``tp``, ``ep``, ``dp_attn``, ``pp``, ``precision``,
  ``max_batch``, ``workload``, ``rate`` (req/s; NaN for a capacity-search point), ``routing_skew``,
  ``placement``, ``engine``, ``status`` (``ok``, ``overloaded`` or ``error``).
- metrics: ``ttft_p50_s``, ``ttft_p99_s``, ``tpot_p50_s``, ``tpot_p99_s`` (s), ``throughput_tok_s`` (output
  tokens/s), ``usd_per_mtok`` ($ per million output tokens), ``usd_per_hour`` ($/h for the whole
  configuration), ``s_mbu``, ``s_mfu`` (fractions 0..1), ``energy_j_per_token`` (J), ``slo_attainment``
  (0..1), ``accuracy`` (score 0..100), ``accuracy_benchmark``.
- capacity search: ``capacity_req_s`` (req/s), ``capacity_tok_s`` (the highest output tokens/s meeting the
  SLOs), ``capacity_usd_per_mtok`` ($ per million output tokens at that capacity), ``capacity_tpot_s``,
  ``capacity_ttft_s`` (s); NaN where the search found nothing.

A row *meets the SLOs* when it is a capacity row with a finite positive ``capacity_tok_s``, or an ``ok``
rate row whose ``slo_attainment`` is >= 0.99 (no attainment filter when that column is missing or all-NaN).

Every function is pure: DataFrames in, a DataFrame, an array, a dict or the paths written out. matplotlib
is imported only when a plot is drawn (`sim.serving.plots` owns the Agg-only figure handling); every file is
written to a temporary name beside its target and moved into place with `os.replace`.

Where the parts live: `cap` (column helpers, `write_atomic`, `pareto_mask`, `front_2d`, `cap_objectives`,
`cap_table`, `cheapest_meeting`, and the throughput-interactivity frontier: `frontier_points`,
`frontier_records`, `best_at_speed`), `sweep_plots` (`write_plots`, `radar_values`, `RADAR_AXES`); this module
re-exports them and holds `write_dashboard_data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from moesim.sim.sweeps.cap import (
    CAP_COLUMNS,
    FRONTIER_COLUMNS,
    _jsonable,
    best_at_speed,
    best_at_speed_per_workload,
    cap_objectives,
    cap_table,
    cheapest_meeting,
    front_2d,
    frontier_points,
    frontier_records,
    pareto_mask,
    write_atomic,
)
from moesim.sim.sweeps.sweep_plots import RADAR_AXES, radar_values, write_plots

__all__ = [
    "CAP_COLUMNS",
    "FRONTIER_COLUMNS",
    "RADAR_AXES",
    "best_at_speed",
    "best_at_speed_per_workload",
    "cap_objectives",
    "cap_table",
    "cheapest_meeting",
    "front_2d",
    "frontier_points",
    "frontier_records",
    "pareto_mask",
    "radar_values",
    "write_atomic",
    "write_dashboard_data",
    "write_plots",
]


# --------------------------------------------------------------------------------------------------------------
# dashboard data


def write_dashboard_data(df: pd.DataFrame, out_dir: str | Path, target_tok_s: float | None = None) -> dict[str, Any]:
    """Write ``cap_table.csv`` (`cap_table`), ``pareto.parquet`` (``df``'s rows on the front of
    `pareto_mask` over `cap_objectives`) and ``frontier.csv`` (`frontier_points`: every operating point meeting
    the SLOs on the throughput-interactivity plane, its frontier flagged) into ``out_dir`` (created if missing),
    each atomically.

    Args:
        df: the sweep results table, [points].
        out_dir: the directory to write into.
        target_tok_s: output tokens/s for `cheapest_meeting`; None skips it.

    Returns:
        A JSON-ready dict: ``points`` (rows of ``df``), ``configurations`` (rows of the CAP table),
        ``pareto_points`` (rows in ``pareto.parquet``), ``objectives`` (column -> min/max), ``cheapest``
        (`cheapest_meeting`'s dict, or None), ``cap_table_top`` (up to 10 Pareto rows of the CAP table,
        cheapest first: label, cost_usd_per_mtok, s_per_token, throughput_tok_s, throughput_basis, rate_req_s,
        accuracy) and ``frontier`` (`frontier_records`: the throughput-interactivity frontier, fastest per user
        first, each point with its figures and configuration).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = cap_table(df)
    objectives = cap_objectives(df)
    front = df[pareto_mask(df, objectives)].reset_index(drop=True)
    write_atomic(out / "cap_table.csv", lambda tmp: table.to_csv(tmp, index=False))
    write_atomic(out / "pareto.parquet", lambda tmp: front.to_parquet(tmp, index=False))
    points = frontier_points(df)
    write_atomic(out / "frontier.csv", lambda tmp: points.to_csv(tmp, index=False))
    cols = ["label", "cost_usd_per_mtok", "s_per_token", "throughput_tok_s", "throughput_basis", "rate_req_s"]
    cols.append("accuracy")
    top = table[table["pareto"]].head(10)[cols]
    return {
        "points": len(df),
        "configurations": len(table),
        "pareto_points": len(front),
        "objectives": dict(objectives),
        "cheapest": cheapest_meeting(df, target_tok_s) if target_tok_s is not None else None,
        "cap_table_top": [{k: _jsonable(v) for k, v in r.items()} for r in top.to_dict("records")],
        "frontier": frontier_records(points),
    }
