"""``moesim train``: a training scenario through the pipeline simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moesim.dashboard.cli._common import EXIT_DOES_NOT_FIT, emit_json, err, note, out, seconds
from moesim.dashboard.cli.a2a_flag import A2aBackendOpt, check_backend
from moesim.dashboard.cli.roofline import ROOFLINE_NOTE, load_cost_model, mode_label, pct_text


def train(
    scenario: Annotated[Path, typer.Argument(help="Training scenario YAML (see examples/train-*.yaml).")],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for summary.json, tasks.parquet, memory.csv, schedule.png, breakdown.png."),
    ] = None,
    trace: Annotated[
        Path | None, typer.Option(help="Write a Chrome trace (Perfetto) of the pipeline schedule.")
    ] = None,
    cost_model: Annotated[
        Path | None,
        typer.Option(help="A calibration from 'moesim calibrate' (default: the scenario's, else the roofline)."),
    ] = None,
    ignore_memory: Annotated[
        bool,
        typer.Option(
            "--ignore-memory",
            help="A layout that does not fit: exit 0 with a warning (without it: the report, an error line, exit 3).",
        ),
    ] = False,
    a2a_backend: A2aBackendOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing --out folder or --trace file that moesim did not write (without it, only an "
            "earlier 'moesim train' output is replaced). Still refuses /, the home folder, the working folder "
            "and folders holding a .git.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")] = False,
) -> None:
    """Simulate MoE training steps: step time and its breakdown, tokens/s, MFU, memory per GPU, cost.

    Example: moesim train examples/train-mixtral-8x7b-h100.yaml --out runs/mixtral-train --trace runs/train.json

    Another all-to-all backend: moesim train examples/train-deepseek-v3-h800.yaml --a2a-backend nccl

    Long sequences split over GPUs (layout.cp, context parallelism): moesim train
    examples/train-qwen3-235b-h100-128k.yaml --json

    A layout that does not fit in GPU memory still gets its report ("fits": false in --json, outputs written),
    then one error line and exit code 3, as 'moesim roofline' does (1: bad input, 2: bad usage).
    """
    from moesim.model.outputs import check_replaceable
    from moesim.sim.serving.chrome_trace import check_trace_path
    from moesim.sim.training.train import is_output, run, write_outputs

    if out_dir:  # refuse before the work, not after it
        check_replaceable(out_dir, "train", force, legacy=is_output)
    if trace:
        check_trace_path(trace, force)
    backend = check_backend(a2a_backend)
    cm = load_cost_model(cost_model)
    note(f"simulating {scenario} ...")
    if backend is None:
        res = run(scenario, cost_model=cm)
    else:  # the scenario with its layout's a2a_backend replaced; its paths still resolve from its folder
        from moesim.dashboard.cli.a2a_flag import training_scenario

        res = run(training_scenario(scenario, backend), cost_model=cm, base_dir=scenario.parent)
    s = res.summary
    s["a2a_backend"] = res.setup.scenario.layout.a2a_backend
    if trace:
        from moesim.sim.training.train_plots import write_train_trace

        s["trace"] = {"path": str(trace), **write_train_trace(res, trace, force)}
        note(f"trace: wrote {trace} ({s['trace']['events']:,} events); open it in ui.perfetto.dev")
    if out_dir:
        write_outputs(res, out_dir, force=force)
        s["out"] = str(out_dir)
    if as_json:
        emit_json(s)
    else:
        _print_summary(s, out_dir)
    if not s["fits"]:
        if ignore_memory:
            err.print(f"warning: {s['memory_verdict']}", markup=False, soft_wrap=True)
            return
        fix = "more GPUs per stage (tp, pp, ep), ZeRO, recomputation or a smaller micro-batch; or pass --ignore-memory"
        err.print(f"error: {s['name']}: {s['memory_verdict']} (fix: {fix})", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_DOES_NOT_FIT)


def forward_sources_line(ks: dict) -> str:
    """One line: the forward kernels' time by where it came from (`kernel_sources["forward_share"]`), naming the
    op kinds behind each share that is not measured on this GPU; "" without the split."""
    from moesim.sim.training.train_cost import forward_class

    share, kinds = ks.get("forward_share") or {}, ks.get("forward") or {}
    if not share:
        return ""
    parts = []
    for cls, v in share.items():
        if v < 0.0005:
            continue
        named = sorted(k for k, src in kinds.items() if forward_class(src) == cls)
        parts.append(f"{cls} {v:.0%}" + (f" ({', '.join(named)})" if cls != "measured" and named else ""))
    return "forward kernel time by source: " + ", ".join(parts)


def _print_summary(s: dict, out_dir: Path | None) -> None:
    """The human-readable training report."""
    t = Table(title=f"{s['name']}: {s['model']} on {s['gpus']:,} x {s['gpu']} ({s['layout']})")
    t.add_column("step time part")
    t.add_column("seconds", justify="right")
    t.add_column("share", justify="right")
    for key, value in s["breakdown"].items():
        t.add_row(key.replace("_", " "), seconds(value), f"{value / s['step_s']:.1%}")
    t.add_row("step", seconds(s["step_s"]), "100%")
    out.print(t)
    out.print(
        f"{s['tokens_per_s']:,.0f} tokens/s ({s['tokens_per_s_per_gpu']:,.0f} per GPU), "
        f"MFU {pct_text(s['mfu'])} (bf16 peak, {mode_label(s['cost_model'])}), "
        f"S-MFU {pct_text(s['s_mfu'])} ({s['s_mfu_peak_dtype']} peak), "
        f"{s['model_tflops_per_gpu']:.0f} model TFLOP/s per GPU"
    )
    out.print(
        f"{s['gpu_hours_per_btok']:,.1f} GPU-hours and ${s['usd_per_btok']:,.0f} per billion tokens "
        f"({s['cost_basis']}); token drop rate {s['token_drop_frac']:.2%}"
    )
    mem = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in s["mem_by_component_gib"].items() if v > 0)
    out.print(f"memory per GPU {s['mem_per_gpu_gib']:.1f} GiB ({mem} GiB): {s['memory_verdict']}")
    out.print(
        f"simulated {s['microbatches']} micro-batches per pipeline in {s['wall_s']:.2f} s wall ({s['cost_model']})"
    )
    line = forward_sources_line(s.get("kernel_sources") or {})
    if line:
        out.print(line)
    if s["cost_model"] == "roofline":
        out.print(ROOFLINE_NOTE)
    if s.get("checked_against"):
        from moesim.sim.fidelity import check_line

        out.print(check_line(s["checked_against"]))
    if out_dir:
        out.print(f"wrote {out_dir}/ (summary.json, tasks.parquet, memory.csv, schedule.png, breakdown.png)")
