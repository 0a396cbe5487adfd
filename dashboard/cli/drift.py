"""``moesim drift``: serving latency over time while the routing drifts, under a static plan and under rebalancing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moesim.dashboard.cli._common import emit_json, err, out, progress_bar
from moesim.model.errors import MoesimError
from moesim.model.limits import MAX_SECONDS


def drift(
    scenario: Annotated[Path, typer.Argument(help="A serving scenario YAML with expert parallelism (layout.ep >= 2).")],
    policy: Annotated[
        list[str],
        typer.Option(help="static | static:ilp | eplb:K | ilp:K (K windows between rebalances); repeat to compare."),
    ] = ["static", "eplb:1", "ilp:1"],  # noqa: B006 (typer reads the default)
    windows: Annotated[int, typer.Option(help="Served windows (after one profiling window).")] = 8,
    drift_: Annotated[
        float,
        typer.Option("--drift", help="0..1: how far expert popularity moves to a new power law over all windows."),
    ] = 1.0,
    skew: Annotated[float, typer.Option(help="Power-law exponent of expert popularity (0: uniform).")] = 1.0,
    window_tokens: Annotated[int, typer.Option(help="Tokens of synthetic routing trace per window.")] = 1024,
    window_requests: Annotated[int, typer.Option(help="Requests served (simulated) per window.")] = 200,
    stats: Annotated[
        list[str] | None,
        typer.Option(
            help="Real statistics, one file per window in time order (the first: profiling); "
            "replaces the synthetic drift."
        ),
    ] = None,
    redundant: Annotated[
        int | None, typer.Option(help="Redundant expert slots per layer (default: one per EP GPU).")
    ] = None,
    engine: Annotated[str, typer.Option(help="des (a discrete-event run per window) or analytical.")] = "des",
    layers_per_chunk: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="A rebalance moves this many layers at a time, a step between chunks (SGLang "
            "--eplb-rebalance-layers-per-chunk; default: all layers in one pause).",
        ),
    ] = None,
    time_limit: Annotated[float, typer.Option(help="Wall-clock cap of one ILP placement, s.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic drifting trace.")] = 0,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write drift.json and latency_over_time.png here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """Simulate serving while the routing drifts: a static plan against SGLang-style EPLB and moesim's ILP.

    Example: moesim drift examples/mixtral-8x7b-ep8.yaml --policy static --policy eplb:2 --policy ilp:2
    --windows 6 --drift 1 --skew 1.2 --window-requests 200 --out runs/drift

    Window 0 is the profiling run the first plan comes from; every served window is one discrete-event run with the
    window's routing and the policy's plan. A rebalance copies expert weights between GPUs (bytes over NVLink or
    the NIC, layer by layer, as SGLang's expert_location_updater does) and pauses serving that long.
    """
    from moesim.sim.common import clean_json
    from moesim.sim.serving.drift import DriftSpec, drift_windows, parse_policy, simulate_drift, stats_windows
    from moesim.sim.serving.serve import load

    if not (0 < time_limit <= MAX_SECONDS):
        raise MoesimError(f"--time-limit = {time_limit:g} is outside (0, {MAX_SECONDS:g}] s", "give seconds > 0")
    pols = [parse_policy(p) for p in policy]
    labels = [p.label for p in pols]
    if len(set(labels)) != len(labels):
        raise MoesimError(f"--policy {labels[0]} is given twice", "give each policy once")
    spec = DriftSpec(windows=windows, drift=drift_, skew=skew, tokens_per_window=window_tokens, seed=seed)
    spec.check()  # before the scenario is built: a bad drift parameter is one line, at once
    built = load(scenario)
    ws = stats_windows(built, stats) if stats else drift_windows(built, spec)
    with progress_bar("drift") as update:
        res = simulate_drift(
            built,
            ws,
            pols,
            redundant=redundant,
            requests_per_window=window_requests,
            engine=engine,
            ilp_time_limit=time_limit,
            progress=update,
            layers_per_chunk=layers_per_chunk,
        )
    res.info |= {"drift": None if stats else drift_, "skew": None if stats else skew, "stats": stats}
    data = {"cost_model": res.info["cost_model"], **res.to_dict()}  # top level, as every predicting command
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "drift.json").write_text(clean_json(data) + "\n")
        _plot(data, out_dir / "latency_over_time.png")
        err.print(f"wrote {out_dir / 'drift.json'} and latency_over_time.png", markup=False)
    if as_json:
        emit_json(data)
        return
    table = Table(title=f"{built.scenario.name}: {len(ws) - 1} windows, {engine}")
    for col in (
        "policy",
        "TPOT mean",
        "TPOT p90",
        "TTFT mean",
        "E2E mean",
        "E2E p90",
        "busiest/mean",
        "moved",
        "paused",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for label, d in data["policies"].items():
        o = d["overall"]
        table.add_row(
            label,
            f"{o['tpot_mean_s'] * 1e3:.2f} ms",
            f"{o['tpot_p90_s'] * 1e3:.2f} ms",
            f"{o['ttft_mean_s'] * 1e3:.1f} ms",
            f"{o['e2e_mean_s']:.3f} s",
            f"{o['e2e_p90_s']:.3f} s",
            f"{o['max_load_ratio']:.3f}",
            f"{o['migration_bytes'] / 1e9:.1f} GB",
            f"{o['pause_s'] * 1e3:.1f} ms",
        )
    out.print(table)


def _plot(data: dict, path: Path) -> None:
    """TPOT and E2E means per window, one line per policy; rebalances marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, d in data["policies"].items():
        ws = d["windows"]
        x = [w["window"] for w in ws]
        for ax, key, scale in zip(axes, ("tpot_mean_s", "e2e_mean_s", "max_load_ratio"), (1e3, 1.0, 1.0), strict=True):
            (line,) = ax.plot(x, [(w[key] or float("nan")) * scale for w in ws], marker="o", label=label)
            rb = [w["window"] for w in ws if w["rebalanced"]]
            ax.plot(rb, [(w[key] or float("nan")) * scale for w in ws if w["rebalanced"]], "x", color=line.get_color())
    for ax, title in zip(axes, ("TPOT mean, ms", "E2E mean, s", "busiest GPU / mean"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("window (x: rebalanced before it)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
