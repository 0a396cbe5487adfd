"""``moesim sweep``: a what-if sweep over serving configurations, with capacity search and CAP post-processing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moesim.dashboard.cli._common import emit_json, err, out, seconds
from moesim.dashboard.cli.a2a_flag import A2aBackendOpt, check_backend
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
    at_tps_user: Annotated[
        float | None,
        typer.Option(
            "--at-tps-user",
            help="Also name the configuration with the most output tokens/s per GPU while each user gets at least "
            "this many output tokens/s (1 / time per output token), among the points meeting the SLOs; one per "
            "workload.",
        ),
    ] = None,
    a2a_backend: A2aBackendOpt = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the summary as one JSON object on stdout (with 'frontier': the throughput-interactivity "
            "frontier, each point with its configuration; with --at-tps-user, 'best_at_tps_user': the best point "
            "per workload).",
        ),
    ] = False,
) -> None:
    """Sweep models, GPUs, cluster sizes, layouts, precisions, batch limits, workloads, rates, routing skew and
    expert placement; keep latency, throughput, S-MBU/S-MFU, cost and accuracy per point; find each
    configuration's capacity under the SLOs; write the CAP table, the Pareto front and plots.

    Results go to --out as parquet shards as they finish: an interrupted sweep (Ctrl-C, a crash, kill -9)
    resumes where it stopped when run again with the same --out.

    The throughput-interactivity frontier (output tokens/s per GPU against output tokens/s per user) goes to
    frontier.png and frontier.csv; --at-tps-user 50 names the best configuration at 50 tokens/s per user.

    Example: moesim sweep examples/sweep-mixtral-gpu-choice.yaml --workers 2 --out runs/mixtral-gpus --at-tps-user 50

    Every point on NCCL all-to-all: moesim sweep examples/sweep-deepseek-v3-layouts.yaml --out r --a2a-backend nccl
    """
    import os

    from moesim.model.errors import MoesimError
    from moesim.sim.sweeps.sweep import run_sweep

    if at_tps_user is not None and not (0 < at_tps_user < float("inf")):
        raise MoesimError(f"--at-tps-user {at_tps_user}", "give a positive output tokens/s per user, e.g. 50")
    backend = check_backend(a2a_backend)
    if backend is not None:  # the sweep with every layout's a2a_backend replaced (a resume needs the same flag)
        from moesim.dashboard.cli.a2a_flag import sweep_spec

        spec = sweep_spec(sweep_file, backend)
    with progress_bar("sweep") as update:
        n = workers if workers is not None else os.cpu_count() or 1
        what = sweep_file if backend is None else spec
        res = run_sweep(what, out_dir, workers=n, dask=dask, fresh=fresh, progress=update, force=force)
    s = res.summary
    s["a2a_backend"] = backend or "scenario"
    s["cost_model"] = _cost_model(sweep_file)
    if at_tps_user is not None:
        from moesim.sim.sweeps.cap import best_at_speed_per_workload

        s["best_at_tps_user"] = best_at_speed_per_workload(res.results, at_tps_user) if len(res.results) else []
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
        for col in ("configuration", "$/M tok", "s/token", "output tok/s", "tok/s measured at", "accuracy"):
            t.add_column(col, justify="left" if col in ("configuration", "tok/s measured at") else "right")
        for r in table:
            acc = r.get("accuracy")
            t.add_row(
                str(r["label"]),
                f"{r['cost_usd_per_mtok']:.3g}" if r.get("cost_usd_per_mtok") is not None else "-",
                seconds(r["s_per_token"]) if r.get("s_per_token") is not None else "-",
                f"{r['throughput_tok_s']:,.0f}" if r.get("throughput_tok_s") is not None else "-",
                _basis(r),
                f"{acc:.1f}" if acc is not None else "-",
            )
        out.print(t)
        if any(r.get("throughput_basis") == "offered load" for r in table):
            out.print(
                "offered load: the throughput at the highest request rate tried that met the SLOs, not the "
                "configuration's capacity (add 'capacity:' to the sweep to search for it)"
            )
    _print_frontier(s.get("frontier") or [])
    for best in s.get("best_at_tps_user") or []:
        out.print(
            f"best at >= {_fig(best['asked_tok_s_per_user'])} tok/s per user"
            + (f" ({best['workload']})" if best.get("workload") else "")
            + f": {best['label']} ({_at(best)}): {_fig(best['tok_s_per_gpu'])} output tok/s per GPU, "
            f"{_fig(best['tok_s_per_user'])} tok/s per user"
        )
    if at_tps_user is not None and not s.get("best_at_tps_user"):
        out.print(f"no point meeting the SLOs reaches {_fig(at_tps_user)} output tok/s per user")
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
    if s["cost_model"] == "roofline":
        from moesim.dashboard.cli.roofline import ROOFLINE_NOTE

        out.print(ROOFLINE_NOTE)
    out.print(f"wrote {s['out']}/ ({', '.join(s.get('files', []))})")


def _fig(v: float) -> str:
    """A rate for a table: whole numbers with separators from 100 up, else 3 significant digits."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _basis(r: dict) -> str:
    """What a CAP row's throughput is: ``capacity (R req/s)`` or ``offered load R req/s``."""
    rate = r.get("rate_req_s")
    at = f"{rate:.3g} req/s" if rate is not None else "?"
    return {"capacity": f"capacity ({at})", "offered load": f"offered load {at}"}.get(r.get("throughput_basis"), "-")


def _at(p: dict) -> str:
    """Where a frontier point was measured: at capacity or at an offered rate."""
    rate = p.get("rate_req_s")
    rate_s = f"{rate:.3g} req/s" if rate is not None else "? req/s"
    return f"at capacity, {rate_s}" if p.get("at_capacity") else f"{rate_s} offered"


def _print_frontier(points: list[dict], most: int = 12) -> None:
    """The throughput-interactivity frontier as a table, fastest per user first (at most ``most`` rows)."""
    if not points:
        return
    t = Table(title=f"Throughput vs interactivity: the frontier ({len(points)} points, fastest per user first)")
    for col in ("tok/s per user", "tok/s per GPU", "configuration", "at"):
        t.add_column(col, justify="right" if col.startswith("tok") else "left")
    step = max(1, -(-len(points) // most))
    for p in points[::step]:
        t.add_row(_fig(p["tok_s_per_user"]), _fig(p["tok_s_per_gpu"]), str(p["label"]), _at(p))
    out.print(t)


def _cost_model(sweep_file: Path) -> str:
    """The points' cost model: the base scenario's calibration (``calibrated:<file>``) or ``roofline``."""
    from moesim.sim.sweeps.sweep_spec import base_scenario, read_sweep

    cm = base_scenario(read_sweep(sweep_file)).get("cost_model")
    if not cm or str(cm) in ("roofline", "achievable"):
        return str(cm or "roofline")
    return f"calibrated:{Path(str(cm)).name}"
