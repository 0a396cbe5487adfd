"""``moesim models``, ``gpus``, ``clusters`` and ``inspect``: the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moesim.dashboard.cli._common import emit_json, gib, out, params, si
from moesim.dashboard.summaries import cluster_row, gpu_row, inspect_summary, model_row
from moesim.model import list_clusters, list_gpus, load_model, preset_names

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
HardwareOpt = Annotated[
    Path | None, typer.Option("--hardware", help="A YAML file of extra GPUs (schema of model/presets/gpus.yaml).")
]


def models(json_out: JsonOpt = False) -> None:
    """List the model presets (real Hugging Face config.json files).

    Example: moesim models --json
    """
    rows = [model_row(load_model(n)) for n in preset_names()]
    if json_out:
        emit_json({"models": rows})
        return
    t = Table(title="Model presets (moesim inspect NAME for details)")
    for col in ("name", "family", "layers", "hidden", "attention", "experts", "total", "active", "context"):
        t.add_column(col, justify="left" if col in ("name", "family", "attention") else "right")
    for r in rows:
        experts = (
            "dense"
            if not r["experts"]
            else (
                f"{r['experts']} top-{r['top_k']}" + (f" +{r['shared_experts']} shared" if r["shared_experts"] else "")
            )
        )
        t.add_row(
            r["name"],
            r["family"],
            str(r["layers"]),
            str(r["hidden"]),
            r["attention"],
            experts,
            params(r["total_params"]),
            params(r["active_params"]),
            f"{r['max_context']:,}",
        )
    out.print(t)


def gpus(hardware: HardwareOpt = None, json_out: JsonOpt = False) -> None:
    """List the GPU presets: dense peak FLOP/s, memory, bandwidth, power, prices, links.

    Example: moesim gpus --json
    """
    rows = [gpu_row(g) for g in list_gpus(hardware).values()]
    if json_out:
        emit_json({"gpus": rows})
        return
    t = Table(title="GPU presets (dense peaks; links per GPU per direction)")
    for col in ("key", "bf16", "fp8", "fp4", "memory", "bandwidth", "TDP", "price", "cloud", "intra", "inter"):
        t.add_column(col, justify="left" if col == "key" else "right")
    for r in rows:
        pf = r["peak_flops"]
        bw = r["memory_bandwidth"]
        t.add_row(
            r["key"],
            si(pf["bf16"], "FLOP/s") if "bf16" in pf else "-",
            si(pf["fp8"], "FLOP/s") if "fp8" in pf else "-",
            si(pf["fp4"], "FLOP/s") if "fp4" in pf else "-",
            f"{r['memory_gib']:g} GiB",
            si(bw, "B/s") if bw else "unmeasured",
            f"{r['tdp_w']:g} W" if r["tdp_w"] else "-",
            f"${r['price_usd']:,.0f}" if r["price_usd"] else "-",
            f"${r['cloud_usd_per_hour']:.2f}/h" if r["cloud_usd_per_hour"] else "-",
            si(r["node"]["intra_bw"], "B/s") if r["node"]["intra_bw"] else "-",
            si(r["node"]["inter_bw"], "B/s") if r["node"]["inter_bw"] else "-",
        )
    out.print(t)
    out.print("Sources: 'moesim gpus --json' (sources per figure) and model/presets/gpus.yaml.")


def clusters(json_out: JsonOpt = False) -> None:
    """List the cluster presets (GPU, nodes, links).

    Example: moesim clusters
    """
    rows = [cluster_row(c) for c in list_clusters().values()]
    if json_out:
        emit_json({"clusters": rows})
        return
    t = Table(title="Cluster presets (use with --cluster)")
    for col in ("name", "gpu", "GPUs", "per node", "intra", "inter", "latency intra/inter"):
        t.add_column(col, justify="left" if col in ("name", "gpu") else "right")
    for r in rows:
        t.add_row(
            r["name"],
            r["gpu"],
            str(r["num_gpus"]),
            str(r["gpus_per_node"]),
            si(r["intra_bw"], "B/s"),
            si(r["inter_bw"], "B/s"),
            f"{r['intra_latency_s'] * 1e6:.1f} / {r['inter_latency_s'] * 1e6:.1f} µs",
        )
    out.print(t)


def inspect(
    model: Annotated[str, typer.Argument(help="A preset name (see 'moesim models') or a config.json path.")],
    json_out: JsonOpt = False,
) -> None:
    """Parameters (total, active, per component and layer), weight bytes per dtype, KV bytes per token.

    Example: moesim inspect deepseek-v3    or    moesim inspect ./config.json --json
    """
    s = inspect_summary(load_model(model))
    if json_out:
        emit_json(s)
        return
    moe = s["moe"]
    shape = (
        f"{s['layers']} layers, hidden {s['hidden']}, {s['attention'].upper()} "
        f"{s['heads']} heads / {s['kv_heads']} kv, vocab {s['vocab']:,}"
    )
    if moe:
        shape += (
            f"; {moe['experts']} experts top-{moe['top_k']} (width {moe['expert_width']})"
            + (f", shared width {moe['shared_width']}" if moe["shared_width"] else "")
            + f", {s['moe_layers']} MoE layers"
        )
    out.print(f"[bold]{s['name']}[/bold] ({s['family']}): {shape}")
    out.print(
        f"total {params(s['total_params'])}, active {params(s['active_params'])} "
        f"({params(s['active_params_excl_input_embedding'])} without the input embedding)"
        + (f"; {s['mtp_layers_excluded']} MTP layer(s) not counted" if s["mtp_layers_excluded"] else "")
    )
    pub = s["published"]
    if pub:
        how = "embeddings counted" if pub["convention"] == "all" else "input embedding not counted"
        out.print(
            f"published: {params(pub['total_params'])} total ({pub['total_error']:+.2%}"
            + (
                f", which counts {params(pub['not_modelled_params'])} not modelled here: the vision tower"
                if pub.get("not_modelled_params")
                else ""
            )
            + "), "
            f"{params(pub['active_params'])} active, {how} ({pub['active_error']:+.2%}); {pub['source']}"
        )
    t = Table(title="Parameters by component")
    t.add_column("component")
    t.add_column("total", justify="right")
    t.add_column("active per token", justify="right")
    for c in s["components"]:
        if s["by_component"][c]:
            t.add_row(c, params(s["by_component"][c]), params(s["active_by_component"][c]))
    out.print(t)
    t = Table(title="Per layer")
    t.add_column("layers")
    t.add_column("count", justify="right")
    for c in s["components"]:
        if c != "embeddings":
            t.add_column(c, justify="right")
    for g in s["layer_groups"]:
        t.add_row(
            g["layers"],
            str(g["count"]),
            *[
                params(g["by_component"].get(c, 0)) if g["by_component"].get(c) else "-"
                for c in s["components"]
                if c != "embeddings"
            ],
        )
    out.print(t)
    out.print(
        "weights: "
        + ", ".join(f"{d} {gib(b)}" for d, b in s["weight_bytes"].items())
        + "  (embeddings, LM head, router, norms stay 16-bit)"
    )
    windows = s["attention_detail"]["sliding_windows"]
    note = (
        f"; {s['attention_detail']['sliding_layers']} layers use a {windows} token window, capping their share"
        if windows
        else ""
    )
    chunks = s["attention_detail"].get("attention_chunks")
    if chunks:
        note += (
            f"; {s['attention_detail']['chunked_layers']} layers attend in {chunks} token chunks, capping their share"
        )
    out.print(
        "KV cache per token: "
        + ", ".join(f"{d} {b / 1024:,.1f} KiB" for d, b in s["kv_bytes_per_token"].items())
        + note
    )
