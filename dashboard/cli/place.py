"""``moesim place``: expert placement from routing statistics, compared across methods, exported for engines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from moesim.dashboard.cli._common import emit_json, err, finite, out
from moesim.model.errors import MoesimError
from moesim.model.limits import MAX_EXPERTS, MAX_GPUS, MAX_GPUS_PER_NODE, MAX_SECONDS, MAX_SEED

#: Most tokens in a synthetic routing trace (--tokens); the trace holds [tokens, top_k] per MoE layer.
MAX_TRACE_TOKENS = 1_000_000
#: Most ILP worker processes (--workers).
MAX_WORKERS = 1024
#: Most branch-and-bound nodes per ILP solve (--work-limit; HiGHS' mip_max_nodes is a 32-bit integer).
MAX_WORK_LIMIT = 2**31 - 1
#: Wall seconds kept off the placement's deadline for writing the plans, the summary and the exports: the DeepSeek-V3
#: 64-GPU case with three methods wrote its plans and summary in 0.03 s and all five export formats in 0.12 s more
#: (g23, 2026-12-05, 2 cores at load 2-4).
WRITE_S = 0.2


def _stats(stats: str, model: str | None, fmt: str, tokens: int, skew: float, seed: int) -> tuple[Any, Any]:
    """(RoutingStats, ModelSpec or None) for --stats/--model."""
    from moesim.model.hf_config import load_model
    from moesim.placement.importers import load_stats
    from moesim.placement.synthetic import synthetic_trace

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


def check_scenario(scenario: Path, built: Any, st: Any, spec: Any, gpus: int) -> None:
    """One error line, before any work, where ``--simulate``'s scenario (``built``, loaded from ``scenario``) cannot
    take the plans: another model than ``--model`` (its MoE layers and experts are what the plans place), statistics
    of another shape, or an expert-parallel group of other than ``--gpus`` GPUs."""
    m = built.model
    if spec is not None and m.name != spec.name:
        raise MoesimError(
            f"--simulate {scenario} serves {m.name}, not --model {spec.name}",
            f"give --model {m.name}, or a scenario of {spec.name}",
        )
    if m.moe is None or (st.num_layers, st.num_experts) != (m.num_moe_layers, m.moe.num_experts):
        shape = "no MoE layers" if m.moe is None else f"{m.num_moe_layers} MoE layers of {m.moe.num_experts} experts"
        raise MoesimError(
            f"--simulate {scenario}: its model {m.name} has {shape}, the statistics "
            f"{st.num_layers} layers of {st.num_experts} experts",
            "give statistics and a scenario of the same model",
        )
    ep = built.pools[0].layout.ep
    if ep != gpus:
        raise MoesimError(
            f"--simulate {scenario}: its expert-parallel group is {ep} GPUs, not --gpus {gpus}",
            "give --gpus the scenario's layout.ep",
        )


def _replica_rule(choice: str, built: Any, formats: tuple[str, ...]) -> str:
    """``--replica-choice`` resolved (`placement.layertime.REPLICA_CHOICES`): ``auto`` is SGLang's ``nearest`` when
    the --simulate scenario ``built`` runs SGLang (every pool) or every export format is sglang, else ``random``."""
    from moesim.placement.layertime import REPLICA_CHOICES

    if choice != "auto":
        if choice not in REPLICA_CHOICES:
            raise MoesimError(
                f"unknown --replica-choice {choice!r}",
                "use auto, random (vLLM: a random replica per token) or nearest (SGLang: its GPU's, then its node's)",
            )
        return choice
    if built is not None:  # the scenario's engine (`EngineSpec.replica_choice`, resolved in each pool's layout)
        return "nearest" if all(p.layout.replica_choice == "nearest" for p in built.pools) else "random"
    return "nearest" if formats and all(f == "sglang" for f in formats) else "random"


def simulate_plans(
    scenario: Path, results: dict[str, Any], counts: Any, work: Path, phases: dict[str, Any] | None = None
) -> dict[str, dict[str, float]]:
    """Run the serving DES of ``scenario`` once per method's plan (EPLB's, the ILP's...) with the routing loads of
    the statistics (``routing: {distribution: file}``, [MoE layers, experts] ``counts``) and the plan as its
    ``placement:`` (a .npy [MoE layers, slots]); returns per method the mean and p99 TTFT, TPOT and E2E, s.
    Files go under ``work``. ``phases``: filled per method with `phase_profile` of its run."""
    import numpy as np

    from moesim.model.inputs import read_yaml
    from moesim.sim.serving.place_phases import phase_profile
    from moesim.sim.serving.serve import run

    data = read_yaml(scenario, "a --simulate scenario", "give a serving scenario YAML")
    if not isinstance(data, dict):
        raise MoesimError(f"--simulate {scenario}: not a scenario mapping", "give a serving scenario YAML")
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "loads.npy", np.asarray(counts, float))
    out: dict[str, dict[str, float]] = {}
    for m in ("eplb", "ilp", "round-robin"):
        if m not in results:
            continue
        np.save(work / f"plan_{m}.npy", results[m].plan.phys_to_log)
        sc = dict(data)
        sc["routing"] = {**(data.get("routing") or {}), "distribution": "file", "file": str(work / "loads.npy")}
        sc["routing"].pop("exponent", None)
        sc["placement"] = str(work / f"plan_{m}.npy")
        err.print(f"  simulating {scenario.name} with the {m} plan")
        res = run(sc, "des", base_dir=scenario.parent)
        summary = res.summary
        out[m] = {k: float(summary[k]) for k in summary if k.split("_")[0] in ("ttft", "tpot", "e2e") and
                  k.endswith(("mean_s", "p99_s"))}  # fmt: skip
        if phases is not None and res.steps is not None:
            phases[m] = phase_profile(res.steps, res.built.pools[0].layout.ep, res.requests)
    return out


def is_place_output(folder: Path) -> bool:
    """Whether ``folder`` was written by an older ``moesim place`` (before output markers): only its file names."""
    from moesim.placement.exporters import FILES

    exports = {n for names in FILES.values() for n in names}
    try:
        entries = list(folder.iterdir())
        if not (folder / "summary.json").is_file():
            return False
        for e in entries:
            if e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file():
                continue  # an older moesim's temporary file
            if e.name == "export" and e.is_dir() and not e.is_symlink():
                if not all(x.is_file() and (x.name in exports or x.name.endswith(".tmp")) for x in e.iterdir()):
                    return False
            elif not (
                e.is_file() and (e.name == "summary.json" or (e.name.startswith("plan_") and e.suffix == ".json"))
            ):
                return False
    except OSError:
        return False
    return True


def place(
    stats: Annotated[
        str,
        typer.Option(
            help="Routing statistics: an SGLang/vLLM/Megatron/MoE-CAP/CSV/NPZ/JSON file or folder, or "
            "'synthetic' (power-law loads for --model)."
        ),
    ],
    gpus: Annotated[int, typer.Option(min=1, max=MAX_GPUS, help="GPUs holding experts (the expert-parallel size).")],
    gpus_per_node: Annotated[int, typer.Option(min=1, max=MAX_GPUS_PER_NODE, help="GPUs per node.")] = 8,
    redundant: Annotated[
        int,
        typer.Option(
            min=0,
            max=MAX_EXPERTS,
            help="Redundant expert slots per layer (experts + redundant must be a multiple of --gpus).",
        ),
    ] = 0,
    method: Annotated[str, typer.Option(help="ilp, eplb, round-robin, or all.")] = "all",
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder for the plans, comparison and exports (default moesim-placement: not 'placement', the name "
            "of moesim's own package folder).",
        ),
    ] = Path("moesim-placement"),
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
    time_limit: Annotated[
        float,
        typer.Option(
            callback=finite("--time-limit", 0.0, MAX_SECONDS, lo_open=True),
            help="Wall-clock cap in seconds of the whole command, counted from its start (the statistics, every "
            "method, the files; not Python's start-up before it, about 1 s, nor --simulate's DES runs and step "
            "timer): a safety cap, not the search's budget. A solve it stops "
            "reports status 'time limit' (reproducible: false), and its plan may differ from run to run and machine "
            "to machine; give a larger cap or a smaller --work-limit for a reproducible plan.",
        ),
    ] = 60.0,
    work_limit: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_WORK_LIMIT,
            help="ILP branch-and-bound nodes per MIP solve (HiGHS' mip_max_nodes, CBC's maxNodes): the search's "
            "deterministic cut-off (status 'work limit'). The same inputs, --work-limit and --seed give the same plan "
            "on any machine and any --workers, as long as --time-limit does not stop a solve first.",
        ),
    ] = 500,
    mip_gap: Annotated[
        float,
        typer.Option(callback=finite("--mip-gap", 0.0, 1.0, hi_open=True), help="ILP relative MIP gap to stop at."),
    ] = 1e-4,
    traffic_weight: Annotated[
        float,
        typer.Option(
            callback=finite("--traffic-weight", 0.0, 1e6),
            help="ILP weight of one remote node per token, in units of busiest/mean load.",
        ),
    ] = 0.05,
    migration_weight: Annotated[
        float,
        typer.Option(
            callback=finite("--migration-weight", 0.0, 1e6), help="ILP weight of one expert copy moved from --current."
        ),
    ] = 0.0,
    current: Annotated[
        Path | None, typer.Option(help="The plan in place now (a plan JSON from moesim place), for migration cost.")
    ] = None,
    groups: Annotated[
        int, typer.Option(min=0, max=MAX_EXPERTS, help="Expert groups for EPLB (default: the model's n_group, else 1).")
    ] = 0,
    objective: Annotated[
        str,
        typer.Option(
            help="ILP objective: 'time' (predicted MoE-layer time from the GPUs, links and model shape: grouped GEMM "
            "per GPU plus DeepEP dispatch/combine over NVLink and the NIC; needs --model) or 'weight' (busiest/mean "
            "load + --traffic-weight x remote nodes per token). Default: time with --model, else weight."
        ),
    ] = "auto",
    gpu: Annotated[
        str, typer.Option(help="GPU preset of the nodes, for --objective time (moesim hardware lists them).")
    ] = "H100-SXM",
    batch_tokens: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_TRACE_TOKENS,
            help="Tokens per GPU per MoE layer step for --objective time (4096: DeepEP's normal-mode setting).",
        ),
    ] = 4096,
    phase: Annotated[
        str,
        typer.Option(
            help="Serving phases the time objective prices: 'prefill' (DeepEP normal mode at --batch-tokens), "
            "'decode' (low-latency mode at --decode-tokens), 'both' (weighted by --decode-share) or 'auto': with "
            "--simulate, both, with the share and tokens per GPU measured on the scenario's DES run with EPLB's plan; "
            "else prefill."
        ),
    ] = "auto",
    decode_share: Annotated[
        float | None,
        typer.Option(
            callback=finite("--decode-share", 0.0, 1.0),
            help="Share of the deployment's time in decode steps, for --phase both (default: measured by --simulate, "
            "else 0.5).",
        ),
    ] = None,
    decode_tokens: Annotated[
        float | None,
        typer.Option(
            callback=finite("--decode-tokens", 0.0, float(MAX_TRACE_TOKENS), lo_open=True),
            help="Tokens per GPU of a decode step for --phase decode/both (default: measured by --simulate, else 128, "
            "DeepEP's low-latency benchmark setting).",
        ),
    ] = None,
    replica_choice: Annotated[
        str,
        typer.Option(
            help="The engine's rule for which replica of an expert a token goes to, for --objective time: 'random' "
            "(vLLM: a replica at random per token), 'nearest' (SGLang: the rank's own GPU's replica, else its "
            "node's first, else a fixed fair pick per rank) or 'auto': nearest when --simulate names an SGLang "
            "scenario or every --export format is sglang, else random."
        ),
    ] = "auto",
    affinity: Annotated[
        bool,
        typer.Option(
            "--affinity/--no-affinity",
            help="Cross-layer affinity (ExFlow): permute each ILP layer's GPUs, inside nodes and nodes as wholes (no "
            "layer's predicted time changes), to keep consecutive layers' expert pairs on one GPU, and report the "
            "dispatch time an engine with context-coherent expert parallelism would save. Off by default: SGLang, "
            "vLLM and TensorRT-LLM dispatch and combine at every layer, so none saves anything by it.",
        ),
    ] = False,
    simulate: Annotated[
        Path | None,
        typer.Option(
            help="A serving scenario YAML: run its discrete-event simulation with EPLB's plan and with the ILP's "
            "(the statistics as its routing loads) and report TTFT/TPOT/E2E side by side. The objective then takes "
            "the phases' shares and tokens per GPU from its run with EPLB's plan and, where the scenario overlaps "
            "two batches (routing.overlap: two_batch), prices each layer under that overlap with attention timed "
            "by the scenario's step timer (layer_cost.overlap in --json)."
        ),
    ] = None,
    solver: Annotated[str, typer.Option(help="highs (highspy) or cbc.")] = "highs",
    workers: Annotated[int, typer.Option(min=0, max=MAX_WORKERS, help="ILP processes (0: one per CPU core).")] = 0,
    fmt: Annotated[
        str, typer.Option("--format", help="Stats format (auto, sglang, vllm, megatron, moecap, csv, npz, json).")
    ] = "auto",
    tokens: Annotated[int, typer.Option(min=1, max=MAX_TRACE_TOKENS, help="Tokens in a synthetic trace.")] = 4096,
    skew: Annotated[
        float,
        typer.Option(
            callback=finite("--skew", 0.0, 100.0), help="Power-law exponent of a synthetic trace's expert popularity."
        ),
    ] = 1.0,
    seed: Annotated[
        int,
        typer.Option(
            min=0, max=MAX_SEED, help="Seed of the synthetic trace, the ILP's token sample and HiGHS' random_seed."
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as one JSON object on stdout.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing --out folder that moesim place did not write (never /, the home folder, "
            "the working folder or a folder holding .git). Without it such a folder is refused; an earlier "
            "'moesim place' output is replaced.",
        ),
    ] = False,
) -> None:
    """Place experts on GPUs with the ILP, DeepSeek's EPLB and round-robin; compare; export for engines.

    Example: moesim place --stats synthetic --model deepseek-v3 --gpus 64 --gpus-per-node 8 --redundant 64
    --method all --time-limit 60 --export sglang,trtllm --out runs/placement

    Example (end-to-end effect): moesim place --stats synthetic --model deepseek-v3 --gpus 32 --redundant 32
    --gpu H200-SXM --simulate examples/deepseek-v3-dp32-ep32.yaml

    Example (for SGLang, whose ranks pick their nearest replica): moesim place --stats synthetic --model deepseek-v3
    --gpus 32 --redundant 32 --gpu H200-SXM --export sglang --out runs/placement-sglang

    Reproducible: the same inputs give the same plan files on any machine and with any --workers, unless
    --time-limit stops an ILP solve: then the status says 'time limit' (reproducible: false) and the plan depends
    on the machine's speed and load. The search stops deterministically at --work-limit nodes per solve; the time
    limit is only a cap. With --json, stdout is exactly one JSON object (solver output goes to stderr).
    """
    t_cmd = time.monotonic()  # --time-limit counts from here (what ran before: Python's start and imports, ~1 s)
    sim_s = 0.0  # seconds measuring --simulate's deployment (DES run, step timer) before the placement: off the clock
    from moesim.model.outputs import check_replaceable, output_dir
    from moesim.placement.api import METHODS
    from moesim.placement.api import place as run_place
    from moesim.placement.exporters import FORMATS, export_plan, launch_flags
    from moesim.placement.ilp import IlpOptions
    from moesim.placement.plan import PlacementPlan, write_text_atomic

    check_replaceable(out_dir, "place", force, legacy=is_place_output)  # before the solve, not after it
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
    built_sc = None
    if simulate is not None:
        from moesim.sim.serving.place_phases import deployment_overlap, dispatch_fp8
        from moesim.sim.serving.serve import load

        built_sc = load(simulate)  # once: the checks, the dispatch dtype and the overlap read it
        check_scenario(simulate, built_sc, st, spec, gpus)
    if groups and st.num_experts % groups:
        raise MoesimError(
            f"--groups {groups} does not divide the {st.num_experts} experts",
            "give --groups a divisor of the expert count, or leave it out (the model's n_group)",
        )
    cur = PlacementPlan.from_json(current) if current else None
    n_group = groups or (spec.moe.n_group if spec else 1)
    moe_ids = [i for i, m in enumerate(spec.moe_layers) if m] if spec else None
    expert_bytes = 3.0 * spec.hidden_size * spec.moe.intermediate_size * 2 if spec else 0.0
    if objective not in ("auto", "time", "weight"):
        raise MoesimError(f"unknown --objective {objective!r}", "use time or weight")
    if objective == "time" and spec is None:
        raise MoesimError("--objective time needs --model (the expert shape)", "add --model, or --objective weight")
    cost = None
    presim: dict[str, dict[str, float]] = {}
    prof: dict[str, float] = {}
    if gpus % gpus_per_node:
        raise MoesimError(f"{gpus} GPUs do not split into nodes of {gpus_per_node}", "fix --gpus-per-node")
    rule = _replica_rule(replica_choice, built_sc, formats)
    if replica_choice == "auto" and rule == "random" and "sglang" in formats:
        # a plan is specific to the rule: placed for one, it loses to EPLB on many layers under the other (RESULTS 9)
        err.print(
            "  note: the plan is placed for a random replica per token (vLLM's rule, the other exports); SGLang's "
            "ranks pick their nearest replica: --replica-choice nearest places it for SGLang"
        )
    if objective == "time" or (objective == "auto" and spec is not None):
        from moesim.model.hardware import get_gpu, make_cluster
        from moesim.placement.layertime import DEFAULT_DECODE_TOKENS_PER_GPU, PHASES, layer_cost

        assert spec is not None and spec.moe is not None
        cluster = make_cluster(get_gpu(gpu), nodes=gpus // gpus_per_node, gpus_per_node=gpus_per_node)
        dtype = "fp8" if spec.family.startswith("deepseek_v3") else "bf16"  # DeepSeek-V3 ships fp8 weights
        if phase not in ("auto", *PHASES):
            raise MoesimError(f"unknown --phase {phase!r}", "use auto, prefill, decode or both")
        kind = phase if phase != "auto" else "both" if simulate is not None else "prefill"
        share = 0.5 if decode_share is None else decode_share
        dec_tok = float(DEFAULT_DECODE_TOKENS_PER_GPU if decode_tokens is None else decode_tokens)
        pre_tok, fp8_dispatch = float(batch_tokens), None
        if built_sc is not None and kind != "prefill":
            fp8_dispatch = dispatch_fp8(built_sc)
        if simulate is not None and kind != "prefill" and (decode_share is None or decode_tokens is None):
            # the phases as the deployment runs them: its DES run with EPLB's plan (SGLang's own rebalancer)
            import tempfile

            err.print(f"  measuring the phases of {simulate.name} with EPLB's plan")
            t_sim = time.monotonic()
            first = run_place(st, gpus, gpus_per_node, redundant, ("eplb",), n_group, IlpOptions(seed=seed), moe_ids,
                              spec.num_layers, expert_bytes, cur, None, mtp_layers=spec.mtp_layers)  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="moesim-place-sim-") as work:
                measured: dict[str, Any] = {}
                presim = simulate_plans(simulate, first, st.counts, Path(work), measured)
            sim_s = time.monotonic() - t_sim
            prof = measured["eplb"]
            share = prof["decode_share"] if decode_share is None else share
            dec_tok = prof["decode_tokens_per_gpu"] if decode_tokens is None else dec_tok
            pre_tok = prof["prefill_tokens_per_gpu"]
        overlap = (None, None)
        if simulate is not None and built_sc is not None:  # the layer priced as its simulators price it
            t_ov = time.monotonic()  # measuring the deployment, like its DES runs: off the placement's clock
            overlap = deployment_overlap(built_sc, {**prof, "decode_tokens_per_gpu": dec_tok,
                                                    "prefill_tokens_per_gpu": pre_tok}, simulate.name)  # fmt: skip
            sim_s += time.monotonic() - t_ov
        cost = layer_cost(
            cluster, spec.hidden_size, spec.moe.intermediate_size, spec.moe.top_k, gpus, dtype=dtype,
            tokens_per_gpu=pre_tok, phase=kind, decode_share=share, decode_tokens_per_gpu=dec_tok,
            fp8_dispatch=fp8_dispatch, overlap=overlap, replica_choice=rule,
        )  # fmt: skip
    opts = IlpOptions(
        cost=cost,
        time_limit=time_limit,
        work_limit=work_limit,
        mip_gap=mip_gap,
        traffic_weight=traffic_weight,
        migration_weight=migration_weight,
        workers=workers or None,
        solver=solver,
        seed=seed,
        affinity=affinity,
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
        mtp_layers=spec.mtp_layers if spec else 0,
        deadline=t_cmd + sim_s + time_limit - WRITE_S,
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
        if i.layer_time_s is not None and e.layer_time_s is not None:
            ratio = i.layer_time_s / e.layer_time_s
            summary["ilp_vs_eplb"]["layer_time_change"] = float(ratio.mean() - 1)
            summary["ilp_vs_eplb"]["layers_time_not_worse"] = int((ratio <= 1 + 1e-9).sum())
    if cost is not None:
        summary["layer_cost"] = cost.as_dict()
        summary["cost_model"] = "roofline"  # layer times: grouped GEMMs on the roofline (placement.layertime)
    if simulate is not None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="moesim-place-sim-") as work:
            # EPLB's plan does not depend on the objective: its run measuring the phases stands
            todo = {m: r for m, r in results.items() if m not in presim}
            sims = {**presim, **simulate_plans(simulate, todo, st.counts, Path(work))}
            sims = {m: sims[m] for m in results if m in sims}
        summary["simulate"] = {"scenario": str(simulate), **sims}
    # everything is computed; now write into a staging folder that replaces --out whole (model.outputs)
    exports: dict[str, Any] = {}
    with output_dir(out_dir, "place", force=force, legacy=is_place_output) as tmp:
        for f in formats:
            files = export_plan(results[best].plan, f, tmp / "export", final_dir=out_dir / "export")
            final = [out_dir / "export" / p.name for p in files]
            exports[f] = {"files": [str(p) for p in final], "flags": launch_flags(results[best].plan, f, final[0])}
        for m, r in results.items():
            r.plan.to_json(tmp / f"plan_{m}.json")
        summary["exports"] = exports
        summary["out"] = str(out_dir)
        write_text_atomic(tmp / "summary.json", json.dumps(summary, indent=1, default=float))
    if as_json:
        emit_json(summary)
        return
    t = Table(title=f"expert placement: {st.num_layers} MoE layers x {st.num_experts} experts on {gpus} GPUs")
    for col in (
        "method",
        "layer time",
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
            f"{x['layer_time_s'] * 1e3:.3f} ms" if "layer_time_s" in x else "-",
            f"{x['max_load_ratio']:.3f}",
            f"{x['max_load_ratio_worst']:.3f}",
            f"{x['max_over_lb']:.3f}",
            f"{x['inter_node_sends_per_token']:.2f}",
            "-" if loc is None else f"{loc:.1%}",
            f"{x['solve_s']:.2f} s",
            "-" if x.get("gap") is None else f"{x['gap']:.2%}",
            str(x.get("status", ""))
            + (f", {x['layers_fallback']} layers kept EPLB's" if x.get("layers_fallback") else "")
            + (" (not reproducible)" if x.get("reproducible") is False else ""),
        )
    out.print(t)
    if summary.get("cost_model") == "roofline":
        out.print("layer time: its grouped GEMMs are timed on the roofline (a lower bound), not by a calibrated model")
    lc = summary.get("layer_cost", {})
    if any(o is not None for o in lc.get("overlap", ())) or lc.get("replica_choice") == "nearest":
        out.print(f"layer time priced for {lc['source']}")
    elif lc:
        out.print("replicas: a random one per token (vLLM's rule; --replica-choice nearest for SGLang's)")
    if "ilp_vs_eplb" in summary:
        c = summary["ilp_vs_eplb"]
        sends = "" if c["sends_change"] is None else f", remote nodes per token {c['sends_change']:+.1%}"
        lt = (
            f"predicted MoE-layer time {c['layer_time_change']:+.1%} on average, not worse on "
            f"{c['layers_time_not_worse']}/{st.num_layers} layers; "
            if "layer_time_change" in c
            else ""
        )
        out.print(
            f"ILP vs EPLB: {lt}busiest GPU {c['busiest_load_change']:+.1%} on average, not worse on "
            f"{c['layers_busiest_not_worse']}/{st.num_layers} layers{sends}"
        )
    for m, r in results.items():
        if "affinity_saving_s" in r.metrics:
            out.print(
                f"{m}: an engine with context-coherent expert parallelism (ExFlow) would save "
                f"{r.metrics['affinity_saving_s'] * 1e3:.3f} ms of dispatch per step (all layers); SGLang, vLLM and "
                "TensorRT-LLM save none"
            )
    if "simulate" in summary:
        sim = summary["simulate"]
        ts = Table(title=f"serving DES of {sim['scenario']} with each plan")
        ts.add_column("metric")
        names = [m for m in sim if m != "scenario"]
        for m in names:
            ts.add_column(m, justify="right")
        for k in ("ttft_mean_s", "ttft_p99_s", "tpot_mean_s", "tpot_p99_s", "e2e_mean_s", "e2e_p99_s"):
            ts.add_row(k, *(f"{sim[m][k] * 1e3:.2f} ms" if k in sim[m] else "-" for m in names))
        out.print(ts)
    for f, x in exports.items():
        out.print(f"{f}: {', '.join(x['files'])}\n  {x['flags']}")
    out.print(f"plans and summary.json in {out_dir}")
