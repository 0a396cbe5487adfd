"""``moesim demo``: the main job on built-in defaults, writing a report with plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moesim.dashboard.cli._common import emit_json, err, out
from moesim.dashboard.cli.catalog import JsonOpt
from moesim.dashboard.cli.roofline import load_cost_model
from moesim.dashboard.report import DEMO_CLUSTER, DEMO_MODEL, build_demo_report


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.md, summary.json and the plots.")] = Path(
        "moesim-report"
    ),
    model: Annotated[str, typer.Option(help="Model preset or config.json.")] = DEMO_MODEL,
    cluster: Annotated[str, typer.Option(help="Cluster preset (see 'moesim clusters').")] = DEMO_CLUSTER,
    profile_here: Annotated[
        bool, typer.Option("--profile/--no-profile", help="Profile this machine briefly and calibrate on it first.")
    ] = True,
    cost_model: Annotated[
        Path | None, typer.Option("--cost-model", help="Time the cluster's ops with this calibration file.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing --out folder that moesim did not write (without it, only an earlier "
            "'moesim demo' report is replaced). Still refuses /, the home folder, the working folder and folders "
            "holding a .git.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Profile this machine briefly and calibrate; estimate a preset MoE model on a preset cluster; write a report.

    Example: moesim demo --out moesim-report
    """
    summary = build_demo_report(
        out_dir,
        model,
        cluster,
        progress=lambda s: err.print(f"[dim]demo:[/dim] {s}"),
        profile_here=profile_here,
        cost_model=load_cost_model(cost_model),
        force=force,
    )
    if json_out:
        emit_json(summary)
        return
    out.print(f"report written to {summary['out_dir']}/report.md with {len(summary['plots'])} plots")
    here = summary["this_machine"]
    if "skipped" not in here:
        errs = ", ".join(f"{f['kind']} {f['mape']:.1f}%" for f in here["fits"])
        out.print(
            f"  this machine: {here['peak_fp32_flops'] / 1e9:.0f} GFLOP/s fp32, "
            f"{here['memory_bandwidth'] / 1e9:.1f} GB/s; held-out MAPE {errs}"
        )
    for name, r in summary["runs"].items():
        out.print(
            f"  {name}: step {r['step_s'] * 1e3:.3f} ms, {r['tokens_per_s']:,.0f} tokens/s, "
            f"S-MBU {r['cap']['smbu']:.1%}, ${r['cap']['usd_per_mtok']:.4g}/M tokens"
        )
