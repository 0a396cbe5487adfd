"""The end of a sweep: accuracy scores, the merged results, the CAP table, the Pareto front, the throughput-
interactivity frontier (`frontier.csv`, `frontier.png`, the summary's ``frontier``) and the plots.

Accuracy (the A of CAP) comes from the published scores in
`model.accuracy` for each (model, weight precision). One benchmark is used
for the whole sweep so scores compare: the sweep's ``accuracy_benchmark``,
else the benchmark that covers the most (model, precision) pairs of the
sweep. A pair with several published rows for it gets their mean; a pair
with none gets NaN (unknown, never guessed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.model.accuracy import load_accuracy
from moesim.model.errors import MoesimError
from moesim.sim.sweeps.sweep_spec import SweepSpec


def accuracy_columns(df: pd.DataFrame, benchmark: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """``df`` with ``accuracy`` (score 0-100, NaN: none published) and ``accuracy_benchmark`` added."""
    df = df.copy()
    table = load_accuracy()
    pairs = df[["model", "precision"]].drop_duplicates() if len(df) else pd.DataFrame(columns=["model", "precision"])
    rows = table.merge(pairs, on=["model", "precision"])
    if benchmark is None and len(rows):
        cover = pd.DataFrame(
            {
                "pairs": rows.drop_duplicates(["benchmark", "model", "precision"]).groupby("benchmark").size(),
                "n": rows.groupby("benchmark").size(),
            }
        ).reset_index()
        cover = cover.sort_values(["pairs", "n", "benchmark"], ascending=[False, False, True])
        benchmark = str(cover["benchmark"].iloc[0])
    if benchmark is not None:
        scores = rows[rows["benchmark"] == benchmark].groupby(["model", "precision"])["score"].mean()
        key = list(zip(df["model"], df["precision"], strict=True))
        df["accuracy"] = [float(scores.get(k, math.nan)) for k in key]
    else:
        df["accuracy"] = math.nan
    df["accuracy_benchmark"] = benchmark or ""
    return df, benchmark


def finish(df: pd.DataFrame, spec: SweepSpec, out: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Write ``results.parquet`` and the post-processing into ``out``; the rows and summary figures."""
    from moesim.sim.sweeps.sweep_report import write_atomic, write_dashboard_data, write_plots

    df, bench = accuracy_columns(df, spec.accuracy_benchmark)
    write_atomic(out / "results.parquet", lambda p: df.to_parquet(p, index=False))
    target = spec.target.throughput_tok_s if spec.target else None
    extra: dict[str, Any] = {"accuracy_benchmark": bench}
    extra |= write_dashboard_data(df, out, target)
    extra["target_tok_s"] = target
    try:
        plots = write_plots(df, out)
    except MoesimError as exc:  # matplotlib missing: the tables are still there
        plots, extra["plots_skipped"] = [], exc.one_line()
    extra["files"] = sorted(
        str(p.relative_to(out))
        for p in [out / "results.parquet", *out.glob("*.csv"), *out.glob("pareto.parquet"), *plots]
    )
    return df, extra
