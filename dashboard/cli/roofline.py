"""``moesim roofline``: one step of a batch on the roofline, its memory and CAP metrics."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moesim.dashboard.cli._common import EXIT_DOES_NOT_FIT, emit_json, err, finite, out, seconds, si
from moesim.dashboard.cli.a2a_flag import A2aBackendOpt, check_backend
from moesim.dashboard.cli.catalog import HardwareOpt, JsonOpt
from moesim.dashboard.summaries import RooflineRun, roofline_summary, run_roofline
from moesim.model import (
    Batch,
    CostAssumptions,
    CostModel,
    Layout,
    MoesimError,
    Precision,
    get_cluster,
    get_gpu,
    load_accuracy,
    load_model,
    make_cluster,
)
from moesim.model.limits import MAX_BATCH, MAX_TOKENS


class Phase(str, Enum):
    decode = "decode"
    prefill = "prefill"


class Pricing(str, Enum):
    auto = "auto"
    cloud = "cloud"
    capex = "capex"


#: Printed under every report a roofline cost model produced (no calibration, ``cost_model: roofline`` in --json).
ROOFLINE_NOTE = (
    "roofline: every kernel timed at peak FLOP/s or bandwidth, so the times above are lower bounds and throughput, "
    "MFU, S-MBU and S-MFU upper bounds, not predictions; for predictions: moesim calibrate, then --cost-model"
)


def mode_label(cost_model: str) -> str:
    """``roofline``, ``achievable`` or ``calibrated``: the label next to a utilisation (MFU, S-MBU, S-MFU) in a
    report."""
    return cost_model if cost_model in ("roofline", "achievable") else "calibrated"


def pct_text(value: float, digits: int = 1) -> str:
    """A utilisation as a percentage; above 100% flagged as an artefact of how it was counted, not a real one."""
    text = f"{value:.{digits}%}"
    if value > 1:
        text += " (above 100%: an artefact of the counting, e.g. MoE-CAP's code, not a utilisation)"
    return text


def load_cost_model(path: Path | str | None) -> CostModel | None:
    """The cost model ``--cost-model`` names: None or ``roofline``: the roofline (None); ``achievable``: the roofline
    plus published achievable bandwidth, GEMM throughput, tile/wave quantisation and a kernel floor
    (`model.achievable`); else the calibrated cost model in the file ``path``. The two names win over files of the
    same name (give ``./achievable`` for such a file)."""
    from moesim.model.achievable import named_cost_model

    if path is None:
        return None
    named = named_cost_model(str(path))
    if named is not None or str(path) == "roofline":
        return named
    from moesim.profiling.calibrate import CalibratedCostModel

    return CalibratedCostModel.from_file(path)


def build_cluster(
    gpu: str, cluster: str | None, gpus_needed: int, nodes: int | None, gpus_per_node: int | None, hardware: Path | None
):
    """The cluster of --cluster, else --gpu sized to hold the layout."""
    if cluster:
        c = get_cluster(cluster, hardware)
        if nodes or gpus_per_node:
            c = make_cluster(c.gpu, nodes=nodes or c.nodes, gpus_per_node=gpus_per_node or c.gpus_per_node)
        return c
    return make_cluster(get_gpu(gpu, hardware), num_gpus=gpus_needed, nodes=nodes, gpus_per_node=gpus_per_node)


def roofline(
    model: Annotated[str, typer.Argument(help="A preset name (see 'moesim models') or a config.json path.")],
    gpu: Annotated[str, typer.Option(help="GPU preset (see 'moesim gpus').")] = "H100-SXM",
    cluster: Annotated[
        str | None, typer.Option(help="Cluster preset (see 'moesim clusters'); overrides --gpu.")
    ] = None,
    phase: Annotated[
        Phase, typer.Option(help="decode: one token per sequence; prefill: whole prompts.")
    ] = Phase.decode,
    batch: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="Sequences in the batch.")] = 64,
    ctx: Annotated[
        int,
        typer.Option(
            min=0, max=MAX_TOKENS, help="decode: cached context per sequence; prefill: prompt length (tokens)."
        ),
    ] = 2048,
    tp: Annotated[int, typer.Option(min=1, help="Tensor-parallel size of attention and dense layers.")] = 1,
    ep: Annotated[int, typer.Option(min=1, help="Expert-parallel size of MoE layers (divides tp x dp-attn).")] = 1,
    dp_attn: Annotated[int, typer.Option("--dp-attn", min=1, help="Data-parallel attention groups.")] = 1,
    pp: Annotated[int, typer.Option(min=1, help="Pipeline stages.")] = 1,
    a2a_backend: A2aBackendOpt = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="Linear-layer weights: fp32, bf16, fp16, fp8 (per-tensor scales), fp8_block (128x128 block scales), "
            "int8, int4 (W4A16), fp4 (MXFP4). Default: the checkpoint's, from its config's quantization_config "
            "(deepseek-v3: fp8_block, gpt-oss: fp4), else bf16."
        ),
    ] = None,
    kv_dtype: Annotated[str, typer.Option("--kv-dtype", help="KV cache: fp32, bf16, fp16, fp8.")] = "bf16",
    nodes: Annotated[int | None, typer.Option(min=1, help="Nodes (default: enough for the layout).")] = None,
    gpus_per_node: Annotated[int | None, typer.Option("--gpus-per-node", min=1, help="GPUs per node.")] = None,
    mla_absorb: Annotated[
        bool | None,
        typer.Option(
            "--mla-absorb/--no-mla-absorb", help="MLA weight-absorbed form (default: decode yes, prefill no)."
        ),
    ] = None,
    mem_fraction: Annotated[
        float,
        typer.Option(
            "--mem-fraction", callback=finite("--mem-fraction", 0.05, 1.0), help="Usable share of GPU memory."
        ),
    ] = 0.9,
    ignore_memory: Annotated[
        bool,
        typer.Option(
            "--ignore-memory",
            help="A layout that does not fit: exit 0 with a warning (without it: the report, an error line, exit 3).",
        ),
    ] = False,
    pricing: Annotated[
        Pricing, typer.Option(help="cloud $/GPU-hour, capex (price amortised + energy), or auto.")
    ] = Pricing.auto,
    years: Annotated[
        float, typer.Option(callback=finite("--years", 0.1, 100.0), help="capex amortisation period, years.")
    ] = 5.0,
    utilisation: Annotated[
        float, typer.Option(callback=finite("--utilisation", 0.01, 1.0), help="capex: share of time the GPUs work.")
    ] = 1.0,
    pue: Annotated[float, typer.Option(callback=finite("--pue", 1.0, 10.0), help="Facility power / IT power.")] = 1.56,
    usd_per_kwh: Annotated[
        float,
        typer.Option(
            "--usd-per-kwh", callback=finite("--usd-per-kwh", 0.0001, 100.0), help="Electricity price, $/kWh."
        ),
    ] = 0.08,
    accuracy_csv: Annotated[
        Path | None,
        typer.Option(
            "--accuracy-csv", help="Extra published scores (model,precision,benchmark,setting,score,source,note)."
        ),
    ] = None,
    cost_model: Annotated[
        Path | None,
        typer.Option(
            "--cost-model",
            help="'achievable' (published kernel efficiencies, no tables needed) or a calibration file from "
            "'moesim calibrate' (default: the roofline).",
        ),
    ] = None,
    hardware: HardwareOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ops per layer (FLOPs, bytes, comm bytes, time, bound), the step time, memory and CAP metrics.

    Example: moesim roofline mixtral-8x7b --gpu H100-SXM --tp 8 --phase decode --batch 64 --ctx 2048

    NCCL all-to-all instead of DeepEP: moesim roofline deepseek-v3 --cluster hgx-h200-x2 --dp-attn 16 --ep 16
    --a2a-backend nccl

    A layout whose weights and KV cache do not fit in GPU memory still gets its report ("fits": false in --json),
    then one error line and exit code 3, as 'moesim train' does (1: bad input, 2: bad usage).
    """
    m = load_model(model)
    lay = Layout(tp=tp, ep=ep, dp_attn=dp_attn, pp=pp, a2a_backend=check_backend(a2a_backend) or "deepep")
    c = build_cluster(gpu, cluster, lay.num_gpus, nodes, gpus_per_node, hardware)
    b = Batch.decode(batch, ctx) if phase == Phase.decode else Batch.prefill(batch, ctx)
    cost = CostAssumptions(
        pricing=pricing.value, years=years, utilisation=utilisation, pue=pue, usd_per_kwh=usd_per_kwh
    )
    run = run_roofline(
        m,
        b,
        lay,
        c,
        Precision(weights=m.checkpoint_weights if dtype is None else dtype, kv_cache=kv_dtype),
        cost,
        load_accuracy(accuracy_csv),
        mem_fraction,
        mla_absorb,
        load_cost_model(cost_model),
    )
    if json_out:
        extra = {"a2a_backend": lay.a2a_backend, "fp8_scaling": run.estimate.precision.fp8_scaling}
        extra["quantization"] = m.quantization  # how the checkpoint's own weights were read (default --dtype)
        emit_json({**roofline_summary(run), "fits": run.memory.fits, **extra})
    else:
        print_roofline(run)
    if not run.memory.fits:
        if ignore_memory:
            err.print(f"warning: {run.memory.verdict} (fix: {run.memory.fix})", markup=False, soft_wrap=True)
            return
        fail = MoesimError(f"{m.name} {lay.label()} {run.memory.verdict}", f"{run.memory.fix}; or pass --ignore-memory")
        err.print(f"error: {fail.one_line()}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_DOES_NOT_FIT)


def print_roofline(run: RooflineRun) -> None:
    """The human-readable roofline report."""
    est, mem, cap = run.estimate, run.memory, run.cap
    c = est.cluster
    out.print(
        f"[bold]{est.model.name}[/bold] on {c.name} ({c.num_gpus} GPUs), {est.layout.label()}, "
        f"{est.batch.describe()}, weights {est.precision.weights}"
        + (" (128x128 block scales)" if est.precision.fp8_scaling == "block" else "")
        + f", KV {est.precision.kv_cache}"
    )
    t = Table(title="Ops on the busiest GPU (per occurrence; 'total' = time x layers)")
    for col in (
        "layers",
        "op",
        "kind",
        "x",
        "FLOP",
        "mem bytes",
        "NVLink bytes",
        "NIC bytes",
        "time",
        "total",
        "bound",
        "share",
    ):
        t.add_column(col, justify="left" if col in ("layers", "op", "kind", "bound") else "right")
    for r in est.table().itertuples():
        t.add_row(
            r.group,
            r.op,
            r.kind,
            str(r.count),
            si(r.flops),
            si(r.bytes, "B"),
            si(r.intra_bytes, "B") if r.intra_bytes else "-",
            si(r.inter_bytes, "B") if r.inter_bytes else "-",
            seconds(r.time_s),
            seconds(r.total_s),
            r.bound,
            f"{r.share:.1%}",
        )
    out.print(t)
    if est.cost_model != "roofline":
        kinds: dict[str, int] = {}
        for time in est.times:
            kinds[time.source.split(":")[0]] = kinds.get(time.source.split(":")[0], 0) + 1
        out.print(
            "op times: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + " (each op's source in --json)"
        )
        from moesim.profiling.transfer import band_text, estimate_band

        band = band_text(estimate_band(est.ops, est.times))
        if band:
            out.print(band + " (per op: band_p50/band_p90 in --json)")
    shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(est.bound_shares().items(), key=lambda kv: -kv[1]))
    out.print(f"step {seconds(est.step_s)} ({est.cost_model}); {est.tokens_per_s:,.0f} tokens/s; bound: {shares}")
    if est.cost_model == "roofline":
        out.print(ROOFLINE_NOTE)
    if est.layout.pp > 1:
        out.print(
            "stages: "
            + ", ".join(seconds(s) for s in est.stage_seconds())
            + f"; {est.pipelined_tokens_per_s:,.0f} tokens/s with {est.layout.pp} steps in flight"
        )
    out.print(f"memory: {mem.verdict}; KV cache {mem.kv_bytes_per_token / 1024:,.1f} KiB per token per GPU")
    moecap = (
        f"; MoE-CAP code: S-MBU {pct_text(cap.moecap.smbu)}, S-MFU {pct_text(cap.moecap.smfu, 2)}" if cap.moecap else ""
    )
    out.print(
        f"[bold]performance[/bold]: {seconds(cap.s_per_token)} per token per sequence, "
        f"S-MBU {pct_text(cap.exact.smbu)}, S-MFU {pct_text(cap.exact.smfu, 2)} ({cap.exact.peak_dtype} peak, "
        f"{mode_label(est.cost_model)}){moecap}"
    )
    out.print(
        f"[bold]cost[/bold]: ${cap.usd_per_mtok:,.4g} per million tokens ({cap.cost_basis}); "
        f"{cap.energy_j_per_token:.3g} J per token at TDP"
    )
    if len(cap.accuracy):
        acc = "; ".join(
            f"{r.benchmark} {r.setting} {r.score:g}".replace("  ", " ") for r in cap.accuracy.head(4).itertuples()
        )
        out.print(
            f"[bold]accuracy[/bold] ({est.precision.weights}, published): {acc} "
            f"(+{max(0, len(cap.accuracy) - 4)} more rows; sources in --json)"
        )
    else:
        out.print(
            f"[bold]accuracy[/bold]: no published score for {est.model.name} at {est.precision.weights} "
            "(add rows with --accuracy-csv)"
        )
