"""``moesim sweep``: a what-if sweep over serving configurations, with capacity search and CAP post-processing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moesim.dashboard.cli._common import emit_json, err, out, seconds
from moesim.dashboard.cli.profile import progress_bar

#: Most local worker processes (--workers).
MAX_WORKERS = 1024


def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(help="Sweep YAML (see examples/sweep-*.yaml and sim/sweeps/sweep_spec.py).")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Results folder; rerun into it to resume.")],
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=MAX_WORKERS, help="Local worker processes (default: the CPU count; 1: run in this process)."
        ),
    ] = None,
    dask: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address (tcp://HOST:PORT): run the points on that cluster instead."),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(help="Discard the results of an earlier sweep in --out and start again (other folders: --force)."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing --out folder that is not a sweep's output (without it, only a new or empty "
            "folder or an earlier sweep's is used). Still refuses /, the home folder, the working folder and "
            "folders holding a .git.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")] = False,
) -> None:
    """Sweep models, GPUs, cluster sizes, layouts, precisions, batch limits, workloads, rates, routing skew and
    expert placement; keep latency, throughput, S-MBU/S-MFU, cost and accuracy per point; find each
    configuration's capacity under the SLOs; write the CAP table, the Pareto front and plots.

    Results go to --out as parquet shards as they finish: an interrupted sweep (Ctrl-C, a crash, kill -9)
    resumes where it stopped when run again with the same --out.

    Example: moesim sweep examples/sweep-mixtral-gpu-choice.yaml --workers 2 --out runs/mixtral-gpus
    """
    import os

    from moesim.sim.sweeps.sweep import run_sweep

    with progress_bar("sweep") as update:
        n = workers if workers is not None else os.cpu_count() or 1
        res = run_sweep(sweep_file, out_dir, workers=n, dask=dask, fresh=fresh, progress=update, force=force)
    s = res.summary
    if as_json:
        emit_json(s)
        return
    pruned = ", ".join(f"{k} {n}" for k, n in sorted(s["pruned"].items())) or "none"
    where = f"Dask {s['dask']} ({s['workers']} workers)" if s["dask"] else f"{s['workers']} local worker(s)"
    out.print(
        f"{s['name']}: {s['points']:,} points of {s['combinations']:,} combinations (pruned: {pruned}); "
        f"{s['engine']} engine on {where}"
    )
    rate = f" ({s['points_per_s']:,.0f} points/s)" if s.get("points_per_s") else ""
    out.print(
        f"ran {s['evaluated_now']:,} points in {seconds(s['run_s'])}{rate}"
        + (f"; {s['done_before']:,} were already done" if s["done_before"] else "")
    )
    out.print("status: " + ", ".join(f"{k} {n:,}" for k, n in sorted(s["status"].items())))
    table = s.get("cap_table_top") or []
    if table:
        t = Table(title="CAP: the Pareto-optimal configurations (cheapest first)")
        for col in ("configuration", "$/M tok", "s/token", "tok/s", "accuracy"):
            t.add_column(col, justify="left" if col == "configuration" else "right")
        for r in table:
            acc = r.get("accuracy")
            t.add_row(
                str(r["label"]),
                f"{r['cost_usd_per_mtok']:.3g}" if r.get("cost_usd_per_mtok") is not None else "-",
                seconds(r["s_per_token"]) if r.get("s_per_token") is not None else "-",
                f"{r['throughput_tok_s']:,.0f}" if r.get("throughput_tok_s") is not None else "-",
                f"{acc:.1f}" if acc is not None else "-",
            )
        out.print(t)
    ch = s.get("cheapest")
    if ch:
        how = "as is" if ch.get("meets_as_is", True) else f"with {ch['replicas_needed']} copies"
        out.print(
            f"cheapest for {s['target_tok_s']:,.0f} tok/s: {ch['label']} {how}, ${ch['total_usd_per_hour']:,.2f}/h"
        )
    elif s.get("target_tok_s"):
        out.print(f"no configuration reaches {s['target_tok_s']:,.0f} tok/s under the SLOs")
    if s.get("plots_skipped"):
        err.print(f"note: plots skipped: {s['plots_skipped']}", markup=False)
    out.print(f"wrote {s['out']}/ ({', '.join(s.get('files', []))})")
