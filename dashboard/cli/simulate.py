"""``moesim simulate``: a serving scenario through the discrete-event engine or the analytical model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moesim.dashboard.cli._common import emit_json, out, seconds
from moesim.dashboard.cli.profile import progress_bar
from moesim.dashboard.cli.roofline import load_cost_model
from moesim.model import MoesimError
from moesim.model.limits import MAX_SEED


class Engine(str, Enum):
    des = "des"
    analytical = "analytical"


def simulate(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML (see examples/*.yaml and sim/serving/scenario.py).")],
    engine: Annotated[
        Engine, typer.Option(help="des: discrete-event simulation; analytical: closed-form steady state.")
    ] = Engine.des,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for summary.json, requests.parquet, steps.parquet and plots."),
    ] = None,
    trace: Annotated[
        Path | None, typer.Option(help="Write a Chrome trace (Perfetto) of the steps per GPU (des only).")
    ] = None,
    cost_model: Annotated[
        Path | None, typer.Option(help="A calibration from 'moesim calibrate' (default: the roofline).")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=MAX_SEED, help="Override the scenario's seed.")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing --out folder or --trace file that moesim did not write (without it, only an "
            "earlier 'moesim simulate' output is replaced). Still refuses /, the home folder, the working folder "
            "and folders holding a .git.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")] = False,
) -> None:
    """Simulate a serving deployment: latency percentiles, throughput, goodput, S-MBU/S-MFU, cost.

    Example: moesim simulate examples/mixtral-8x7b-ep8.yaml --out runs/mixtral --trace runs/mixtral.json
    """
    from moesim.model.outputs import check_replaceable
    from moesim.sim.serving.chrome_trace import check_trace_path
    from moesim.sim.serving.serve import is_output, run, write_outputs

    if trace and engine is Engine.analytical:
        raise MoesimError("--trace needs the discrete-event engine", "drop --trace or use --engine des")
    if out_dir:  # refuse before the work, not after it
        check_replaceable(out_dir, "simulate", force, legacy=is_output)
    if trace:
        check_trace_path(trace, force)
    cm = load_cost_model(cost_model)
    with progress_bar("simulating") as update:
        res = run(scenario, engine.value, cost_model=cm, seed=seed, progress=update)
    s = res.summary
    if trace:
        from moesim.sim.serving.chrome_trace import write_chrome_trace

        assert res.sim is not None
        info = write_chrome_trace(
            res.steps,
            trace,
            gpus_per_replica=res.sim.gpus_per_replica,
            kv_transfers=res.kv_transfers,
            max_steps=5000,
            force=force,
        )
        s["trace"] = {"path": str(trace), **info}
    if out_dir:
        write_outputs(res, out_dir, force=force)
        s["out"] = str(out_dir)
    if as_json:
        emit_json(s)
        return
    b = res.built
    t = Table(title=f"{b.scenario.name}: {b.model.name} on {b.cluster.name} ({s['engine']})", show_header=True)
    t.add_column("metric")
    t.add_column("mean", justify="right")
    t.add_column("p50", justify="right")
    t.add_column("p90", justify="right")
    t.add_column("p99", justify="right")
    for key, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "end-to-end"), ("queue", "queue")):
        if f"{key}_p50_s" in s and s[f"{key}_p50_s"] == s[f"{key}_p50_s"]:
            t.add_row(label, *(seconds(s[f"{key}_{q}_s"]) for q in ("mean", "p50", "p90", "p99")))
    out.print(t)
    lines = [
        f"requests {s['requests']:,} ({s['completed']:,} completed) over {s['simulated_s']:.1f} s simulated",
        f"throughput {s['throughput_req_s']:.2f} req/s, {s['throughput_tok_s']:,.0f} output tok/s; "
        f"goodput {s['goodput_req_s']:.2f} req/s (SLO attainment {s['slo_attainment']:.1%})",
        f"S-MBU {s['s_mbu']:.1%}  S-MFU {s['s_mfu']:.1%}  ${s['usd_per_mtok']:.3g} per M output tokens "
        f"({s['cost_basis']})",
    ]
    if s["engine"] == "des":
        lines.append(
            f"mean batch {s['mean_batch']:.1f}, KV use mean {s['mean_kv_used']:.1%} max {s['max_kv_used']:.1%}, "
            f"preemptions {s['preemptions']}, dropped pairs {s['dropped_frac']:.2%}, "
            f"straggler {s['straggler_frac']:.1%} of step time, expert fetch {s['fetch_frac']:.1%}"
        )
        lines.append(
            f"{s['steps']:,} steps in {s['wall_s']:.1f} s wall "
            f"({s['simulated_s_per_wall_s']:.1f} simulated s per wall s)"
        )
    elif s.get("overloaded"):
        lines.append(f"overloaded: {s['overload_reason']}")
    for line in lines:
        out.print(line)
    if out_dir:
        out.print(f"wrote {out_dir}/ (summary.json, requests.parquet, steps.parquet, plots)")
    if trace:
        out.print(f"wrote {trace} ({s['trace']['events']:,} events; open in ui.perfetto.dev)")
