"""``moesim simulate``: a serving scenario through the discrete-event engine or the analytical model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moesim.dashboard.cli._common import emit_json, note, out, progress_bar, seconds
from moesim.dashboard.cli.a2a_flag import A2aBackendOpt, check_backend
from moesim.dashboard.cli.roofline import ROOFLINE_NOTE, load_cost_model, mode_label, pct_text
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
        Path | None,
        typer.Option(
            help="Write a Chrome trace (Perfetto, chrome://tracing) of every step on every GPU (des only), streamed. "
            "A path ending in .gz is gzip-compressed; a trace of more than 2 million events is written "
            "compressed to PATH.gz (ui.perfetto.dev opens .json.gz). What was written is said on stderr.",
        ),
    ] = None,
    trace_window: Annotated[
        str | None,
        typer.Option(
            "--trace-window",
            metavar="START:END",
            help="Trace only the steps overlapping this span of simulated seconds, e.g. 60:90 (or 60: to the end).",
        ),
    ] = None,
    cost_model: Annotated[
        Path | None, typer.Option(help="A calibration from 'moesim calibrate' (default: the roofline).")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=MAX_SEED, help="Override the scenario's seed.")] = None,
    a2a_backend: A2aBackendOpt = None,
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

    Example: moesim simulate examples/mixtral-8x7b-ep8.yaml --out runs/mixtral --trace runs/mixtral.json.gz

    Only a window: moesim simulate examples/mixtral-8x7b-ep8.yaml --trace runs/t.json --trace-window 60:65

    Another all-to-all backend: moesim simulate examples/mixtral-8x7b-ep8.yaml --a2a-backend nccl
    """
    from moesim.model.outputs import check_replaceable
    from moesim.sim.serving.chrome_trace import check_trace_path, parse_window
    from moesim.sim.serving.serve import is_output, run, write_outputs

    if trace and engine is Engine.analytical:
        raise MoesimError("--trace needs the discrete-event engine", "drop --trace or use --engine des")
    if trace_window is not None and not trace:
        raise MoesimError(f"--trace-window {trace_window} needs --trace", "add --trace FILE, or drop --trace-window")
    window = parse_window(trace_window) if trace_window is not None else None
    backend = check_backend(a2a_backend)
    if out_dir:  # refuse before the work, not after it
        check_replaceable(out_dir, "simulate", force, legacy=is_output)
    if trace:
        check_trace_path(trace, force)
    cm = load_cost_model(cost_model)
    with progress_bar("simulating") as update:
        if backend is None:
            res = run(scenario, engine.value, cost_model=cm, seed=seed, progress=update)
        else:  # the scenario with its layouts' a2a_backend replaced; its paths still resolve from its folder
            from moesim.dashboard.cli.a2a_flag import serving_scenario

            sc = serving_scenario(scenario, backend)
            res = run(sc, engine.value, cost_model=cm, seed=seed, progress=update, base_dir=scenario.parent)
    s = res.summary
    from moesim.dashboard.cli.a2a_flag import serving_backends

    s["a2a_backend"] = serving_backends(res.built)
    if isinstance(s.get("cost_provenance"), dict):
        s["cost_provenance"]["a2a_backend"] = s["a2a_backend"]
    phys = res.built.phys_to_log
    if phys is not None and res.built.model.moe is not None and phys.shape[-1] > res.built.model.moe.num_experts:
        # redundant experts: which replica a token goes to is the engine's rule (`engine.replica_choice`)
        rules = sorted({p.layout.replica_choice for p in res.built.pools})
        s["replica_choice"] = rules[0] if len(rules) == 1 else ",".join(rules)
        if isinstance(s.get("cost_provenance"), dict):
            s["cost_provenance"]["replica_choice"] = s["replica_choice"]
    if trace:
        from moesim.sim.serving.chrome_trace import write_chrome_trace

        assert res.sim is not None
        info = write_chrome_trace(
            res.steps,
            trace,
            gpus_per_replica=res.sim.gpus_per_replica,
            kv_transfers=res.kv_transfers,
            window=window,
            force=force,
        )
        s["trace"] = info
        line = trace_note(info, trace)
        if window and not info["steps_written"] and len(res.steps):
            ends = res.steps["start_s"] + res.steps["duration_s"]
            line += (
                f" (no step in the window: the run's steps span {res.steps['start_s'].min():,.1f}-{ends.max():,.1f} s)"
            )
        note(line)
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
    failed = s.get("failed") or 0
    gave_up = f", {failed:,} failed: their clients gave up (workload.timeout_s)" if failed == failed and failed else ""
    lines = [
        f"requests {s['requests']:,} ({s['completed']:,} completed{gave_up}) over {s['simulated_s']:.1f} s simulated",
        f"throughput {s['throughput_req_s']:.2f} req/s, {s['throughput_tok_s']:,.0f} output tok/s; "
        f"goodput {s['goodput_req_s']:.2f} req/s (SLO attainment {s['slo_attainment']:.1%})",
        f"S-MBU {pct_text(s['s_mbu'])}  S-MFU {pct_text(s['s_mfu'])} ({mode_label(s['cost_model'])})  "
        f"${s['usd_per_mtok']:.3g} per M output tokens "
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
    if s["cost_model"] == "roofline":
        lines.append(ROOFLINE_NOTE)
    if s.get("checked_against"):
        from moesim.sim.fidelity import check_line

        lines.append(check_line(s["checked_against"]))
    for line in lines:
        out.print(line)
    if out_dir:
        out.print(f"wrote {out_dir}/ (summary.json, requests.parquet, steps.parquet, plots)")


def trace_note(info: dict, asked: Path | None = None) -> str:
    """What a trace holds, in one line for stderr, e.g. ``trace: wrote runs/t.json.gz (101,234 of 101,234 steps,
    4,048,000 events, 61.2 MB gzip of 598 MB JSON, 0-1,203.4 s); open it in ui.perfetto.dev``.

    ``asked``: the path given to --trace; when the trace went to ``asked.gz`` instead (too large for plain JSON),
    the line says why.
    """
    from moesim.dashboard.cli._common import si
    from moesim.sim.serving.chrome_trace import GZIP_ABOVE_EVENTS

    steps = f"{info['steps_written']:,} of {info['steps_total']:,} steps"
    size = si(info["bytes"], "B")
    if info["gzip"]:
        size += f" gzip of {si(info['json_bytes'], 'B')} JSON"
    if info.get("window_s"):
        lo, hi = info["window_s"]
        span = f"window {lo:,.6g}-{'end' if hi is None else f'{hi:,.6g}'} s"
    else:
        span = "the whole run"
    if info.get("span_s"):
        span += f", steps from {info['span_s'][0]:,.1f} to {info['span_s'][1]:,.1f} s"
    kv = f", {info['kv_transfers_written']:,} KV transfers" if info.get("kv_transfers_written") else ""
    if asked is not None and str(asked) != info["path"]:
        kv += f"; compressed, not {asked}: more than {GZIP_ABOVE_EVENTS:,} events"
    return (
        f"trace: wrote {info['path']} ({steps}{kv}, {info['events']:,} events, {size}; {span}); "
        "open it in ui.perfetto.dev"
    )
