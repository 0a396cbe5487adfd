"""``moesim place``: expert placement from routing statistics, compared across methods, exported for engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dashboard.cli._common import emit_json, err, out
from model.errors import MoesimError


def _stats(stats: str, model: str | None, fmt: str, tokens: int, skew: float, seed: int) -> tuple[Any, Any]:
    """(RoutingStats, ModelSpec or None) for --stats/--model."""
    from model.hf_config import load_model
    from placement.importers import load_stats
    from placement.synthetic import synthetic_trace

    spec = load_model(model) if model else None
    if spec is not None and spec.moe is None:
        raise MoesimError(f"model {model} has no MoE layers", "choose an MoE model (moesim models)")
    moe_ids = [i for i, m in enumerate(spec.moe_layers) if m] if spec else None
    if stats == "synthetic":
        if spec is None:
            raise MoesimError("--stats synthetic needs --model", "add --model deepseek-v3 (or another MoE preset)")
        moe = spec.moe
        st = synthetic_trace(
            len(moe_ids),
            moe.num_experts,
            moe.top_k,
            tokens=tokens,
            alpha=skew,
            affinity=2.0,
            n_group=moe.n_group,
            topk_group=moe.topk_group if moe.n_group > 1 else 1,
            seed=seed,
        )
        return st, spec
    st = load_stats(stats, num_experts=spec.moe.num_experts if spec else None, moe_layer_ids=moe_ids, fmt=fmt)
    if spec is not None:
        st.check_shape(len(moe_ids), spec.moe.num_experts, f"model {model}")
    return st, spec


def place(
    stats: Annotated[
        str,
        typer.Option(
            help="Routing statistics: an SGLang/vLLM/Megatron/MoE-CAP/CSV/NPZ/JSON file or folder, or "
            "'synthetic' (power-law loads for --model)."
        ),
    ],
    gpus: Annotated[int, typer.Option(help="GPUs holding experts (the expert-parallel size).")],
    gpus_per_node: Annotated[int, typer.Option(help="GPUs per node.")] = 8,
    redundant: Annotated[
        int, typer.Option(help="Redundant expert slots per layer (experts + redundant must be a multiple of --gpus).")
    ] = 0,
    method: Annotated[str, typer.Option(help="ilp, eplb, round-robin, or all.")] = "all",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the plans, comparison and exports.")] = Path(
        "placement"
    ),
    model: Annotated[
        str | None,
        typer.Option(
            help="Model preset or config.json: checks the stats' shape, gives the decoder "
            "layers for SGLang/TRT-LLM, the expert groups for EPLB, the expert bytes."
        ),
    ] = None,
    export: Annotated[
        str,
        typer.Option(
            help="Comma-separated engine formats for the best plan: sglang,eplb,vllm,vllm-ascend,trtllm (or all)."
        ),
    ] = "",
    time_limit: Annotated[float, typer.Option(help="ILP wall-time budget in seconds, all layers.")] = 60.0,
    mip_gap: Annotated[float, typer.Option(help="ILP relative MIP gap to stop at.")] = 1e-4,
    traffic_weight: Annotated[
        float, typer.Option(help="ILP weight of one remote node per token, in units of busiest/mean load.")
    ] = 0.05,
    migration_weight: Annotated[float, typer.Option(help="ILP weight of one expert copy moved from --current.")] = 0.0,
    current: Annotated[
        Path | None, typer.Option(help="The plan in place now (a plan JSON from moesim place), for migration cost.")
    ] = None,
    groups: Annotated[int, typer.Option(help="Expert groups for EPLB (default: the model's n_group, else 1).")] = 0,
    solver: Annotated[str, typer.Option(help="highs (highspy) or cbc.")] = "highs",
    workers: Annotated[int, typer.Option(help="ILP processes (0: one per CPU core).")] = 0,
    fmt: Annotated[
        str, typer.Option("--format", help="Stats format (auto, sglang, vllm, megatron, moecap, csv, npz, json).")
    ] = "auto",
    tokens: Annotated[int, typer.Option(help="Tokens in a synthetic trace.")] = 4096,
    skew: Annotated[float, typer.Option(help="Power-law exponent of a synthetic trace's expert popularity.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic trace and the ILP's token sample.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as one JSON object on stdout.")] = False,
) -> None:
    """Place experts on GPUs with the ILP, DeepSeek's EPLB and round-robin; compare; export for engines.

    Example: moesim place --stats synthetic --model deepseek-v3 --gpus 64 --gpus-per-node 8 --redundant 64
    --method all --time-limit 60 --export sglang,trtllm --out runs/placement
    """
    from placement.api import METHODS
    from placement.api import place as run_place
    from placement.exporters import FORMATS, export_plan, launch_flags
    from placement.ilp import IlpOptions
    from placement.plan import PlacementPlan, write_text_atomic

    methods = METHODS if method == "all" else tuple(m.strip() for m in method.split(","))
    formats = FORMATS if export == "all" else tuple(f.strip() for f in export.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise MoesimError(f"unknown export format {bad[0]!r}", f"choose from {', '.join(FORMATS)} or all")
    if solver not in ("highs", "cbc"):
        raise MoesimError(f"unknown solver {solver!r}", "use highs or cbc")
    if time_limit <= 0 or not 0 <= mip_gap < 1 or traffic_weight < 0 or migration_weight < 0:
        raise MoesimError("time limit must be > 0, MIP gap in [0, 1), weights >= 0", "fix the ILP options")
    st, spec = _stats(stats, model, fmt, tokens, skew, seed)
    cur = PlacementPlan.from_json(current) if current else None
    n_group = groups or (spec.moe.n_group if spec else 1)
    moe_ids = [i for i, m in enumerate(spec.moe_layers) if m] if spec else None
    expert_bytes = 3.0 * spec.hidden_size * spec.moe.intermediate_size * 2 if spec else 0.0
    opts = IlpOptions(
        time_limit=time_limit,
        mip_gap=mip_gap,
        traffic_weight=traffic_weight,
        migration_weight=migration_weight,
        workers=workers or None,
        solver=solver,
        seed=seed,
    )
    err.print(
        f"placing {st.num_experts} experts x {st.num_layers} MoE layers on {gpus} GPUs "
        f"({gpus // max(gpus_per_node, 1)} nodes), {redundant} redundant slots: {', '.join(methods)}"
    )

    def progress(name: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            err.print(f"  {name}: {done}/{total} layers")

    results = run_place(
        st,
        gpus,
        gpus_per_node,
        redundant,
        methods,
        n_group,
        opts,
        moe_ids,
        spec.num_layers if spec else 0,
        expert_bytes,
        cur,
        progress,
    )
    best = next(m for m in ("ilp", "eplb", "round-robin") if m in results)
    summary: dict[str, Any] = {
        "stats": stats,
        "model": model,
        "layers": st.num_layers,
        "experts": st.num_experts,
        "gpus": gpus,
        "gpus_per_node": gpus_per_node,
        "redundant": redundant,
        "best": best,
        "methods": {m: r.metrics for m, r in results.items()},
    }
    if "eplb" in results and "ilp" in results:
        e, i = results["eplb"], results["ilp"]
        summary["ilp_vs_eplb"] = {
            "busiest_load_change": float((i.layer_max_load / e.layer_max_load).mean() - 1),
            "layers_busiest_not_worse": int((i.layer_max_load <= e.layer_max_load * (1 + 1e-9)).sum()),
            "sends_change": (i.metrics["inter_node_sends_per_token"] / e.metrics["inter_node_sends_per_token"] - 1)
            if e.metrics["inter_node_sends_per_token"]
            else None,
        }
    # everything is computed; now write (each file through a temporary name)
    exports: dict[str, Any] = {}
    for f in formats:
        files = export_plan(results[best].plan, f, out_dir / "export")
        exports[f] = {"files": [str(p) for p in files], "flags": launch_flags(results[best].plan, f, files[0])}
    for m, r in results.items():
        r.plan.to_json(out_dir / f"plan_{m}.json")
    summary["exports"] = exports
    summary["out"] = str(out_dir)
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=1, default=float))
    if as_json:
        emit_json(summary)
        return
    t = Table(title=f"expert placement: {st.num_layers} MoE layers x {st.num_experts} experts on {gpus} GPUs")
    for col in (
        "method",
        "busiest/mean",
        "worst layer",
        "busiest/bound",
        "remote nodes/token",
        "same-GPU next layer",
        "solve",
        "gap",
        "status",
    ):
        t.add_column(col, justify="left" if col in ("method", "status") else "right")
    for m, r in results.items():
        x = r.metrics
        loc = x.get("cross_layer_locality")
        t.add_row(
            m,
            f"{x['max_load_ratio']:.3f}",
            f"{x['max_load_ratio_worst']:.3f}",
            f"{x['max_over_lb']:.3f}",
            f"{x['inter_node_sends_per_token']:.2f}",
            "-" if loc is None else f"{loc:.1%}",
            f"{x['solve_s']:.2f} s",
            "-" if x.get("gap") is None else f"{x['gap']:.2%}",
            str(x.get("status", ""))
            + (f", {x['layers_fallback']} layers kept EPLB's" if x.get("layers_fallback") else ""),
        )
    out.print(t)
    if "ilp_vs_eplb" in summary:
        c = summary["ilp_vs_eplb"]
        sends = "" if c["sends_change"] is None else f", remote nodes per token {c['sends_change']:+.1%}"
        out.print(
            f"ILP vs EPLB: busiest GPU {c['busiest_load_change']:+.1%} on average, not worse on "
            f"{c['layers_busiest_not_worse']}/{st.num_layers} layers{sends}"
        )
    for f, x in exports.items():
        out.print(f"{f}: {', '.join(x['files'])}\n  {x['flags']}")
    out.print(f"plans and summary.json in {out_dir}")
