"""Benchmark section 8: the training simulator against published MoE training runs with stated layouts.

Each run is an example scenario (``examples/train-*.yaml``) whose comments give every setting, its source and every
setting that had to be guessed. Published figures (read from the sources, not re-measured):

- DeepSeek-V3 technical report (arXiv 2412.19437, sections 3.1, 3.2 and 4.2): 2,048 H800 GPUs, PP16 (DualPipe),
  EP64, ZeRO-1, FP8 GEMMs, 4K sequences; "each trillion tokens requires only 180K H800 GPU hours".
- Megatron-LM's MoE README (NVIDIA/Megatron-LM megatron/core/transformer/moe/README.md): "468 TFLOPS for Mixtral 8X7B
  bf16 training" (MCore v0.9) with its reference mapping (64 H100, TP1 EP8 PP4 VP8, MBS1 GBS256, seq 4096).
  TFLOPS there are Megatron's model FLOPs (`megatron_flops_per_token`).
- Megatron-Core MoE technical report (arXiv 2603.07685, section 8 performance table, read through a summary note of
  the report): DeepSeek-V3 on 1,024 H100, seq 4096: 368 TFLOPS and 1,412 tokens/s per GPU.
- NVIDIA Megatron-MoE-ModelZoo best_practice/qwen3/readme.md, H100 table: Qwen3-235B-A22B on 256 H100, seq 4096,
  GBS 2048, five layouts with their step times (19.7, 17.6, 17.6, 24.2 and 29.0 s); its "Long Context" H100 table,
  sequences of 16K, 32K, 64K and 128K tokens on context parallelism 1, 2, 4 and 8, TP4 PP8 VPP4 EP8, GBS 256:
  295, 335, 368 and 389 TFLOP/s per GPU with forced load balancing (237, 277, 320, 357 dropless), Megatron's causal
  model FLOPs. The 32K-128K rows were added after context parallelism was built (held out; the 16K row is the one
  ``routing.sequence_cv`` was fitted on).
- NVIDIA Megatron-Bridge's performance summary (NVIDIA-NeMo/Megatron-Bridge docs/performance-summary-archive.md,
  26.04.01 NeMo container, DGX-H100 pre-training rows, forced balance, dropless), each run's settings read from its
  performance recipe (scripts/performance/configs/...): Qwen3-30B-A3B on 16 H100 (FP8, EP16, 8,960 tokens/s per
  GPU), Qwen3-235B-A22B on 256 H100 (FP8, TP2 PP8 VP4 EP32, GBS 8192, 1,712) and gpt-oss-120b on 64 H100 (BF16,
  PP4 EP8, 5,824). Held out: added after the model's mechanisms were built, none of them fitted to these runs.

Ratio: predicted over reported throughput (above 1: the simulator is optimistic). Pairs: every two runs of one model
on one GPU type at one sequence length from one source, ranked by reported and by predicted throughput per GPU.

Run: ``python -m benchmarks.training`` (or ``make bench``); ``--mechanisms`` adds each run's ratio with none, each
and all of the kernel and collective mechanisms of ``sim.training.train_cost.MECHANISMS``; ``--fit-sequence-cv``
recomputes the Qwen3 examples' ``routing.sequence_cv`` from the 16K forced/dropless pair (`fit_sequence_cv`);
``--long-context`` the long-context rows forced and dropless, with the 16K row's ``sequence_cv`` (`long_context`);
``--overlap-split`` prints how the combined-1F1B layer pair compares with the published overlap gain
(`overlap_split`); ``--bridge-decomposition`` what each difference between the ModelZoo's BF16 and Megatron-Bridge's
FP8 Qwen3-235B rows is worth in moesim (`bridge_decomposition`).
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moesim.model.hf_config import load_model  # noqa: E402
from moesim.model.spec import ModelSpec  # noqa: E402
from moesim.sim.training.train import run  # noqa: E402
from moesim.sim.training.train_scenario import load_train_scenario  # noqa: E402

EXAMPLES = ROOT / "examples"
ZOO_QWEN3 = "github.com/NVIDIA/Megatron-MoE-ModelZoo best_practice/qwen3/readme.md (H100 table)"
ZOO_QWEN3_LONG = "github.com/NVIDIA/Megatron-MoE-ModelZoo best_practice/qwen3/readme.md (H100 Long Context table)"
BRIDGE = (
    "github.com/NVIDIA-NeMo/Megatron-Bridge docs/performance-summary-archive.md (26.04.01 NeMo container, "
    "DGX-H100 pre-training)"
)
#: (example file, label, source, what is reported: gpu_hours_per_btok | megatron_tflops | megatron_tflops_causal |
#: tokens_per_s_per_gpu |
#: step_s, the reported value, its code version where the source names one)
RUNS: tuple[tuple[str, str, str, str, float, str], ...] = (
    ("train-deepseek-v3-h800.yaml", "DeepSeek-V3, 2,048 H800, PP16 DualPipe EP64 ZeRO-1, FP8",
     "arXiv 2412.19437 s4.2", "gpu_hours_per_btok", 180.0, ""),
    ("train-mixtral-8x7b-h100.yaml", "Mixtral-8x7B, 64 H100, TP1 EP8 PP4 VP8, BF16, NCCL a2a",
     "github.com/NVIDIA/Megatron-LM megatron/core/transformer/moe/README.md", "megatron_tflops", 468.0, "MCore v0.9"),
    ("train-deepseek-v3-megatron-h100.yaml", "DeepSeek-V3, 1,024 H100, TP2 PP8 VPP4 EP64, FP8 block, EP overlap",
     "arXiv 2603.07685 s8", "tokens_per_s_per_gpu", 1412.0, ""),
    ("train-qwen3-235b-h100.yaml", "Qwen3-235B, 256 H100, TP2 EP32 PP8 VPP4, DeepEP", ZOO_QWEN3, "step_s", 19.7,
     "moe_dev f3e6c5"),
    ("train-qwen3-235b-h100-a2a-overlap.yaml", "Qwen3-235B, same + EP a2a overlap (combined 1F1B)", ZOO_QWEN3,
     "step_s", 17.6, "moe_dev f3e6c5"),
    ("train-qwen3-235b-h100-fsdp-ep8.yaml", "Qwen3-235B, TP2 EP8 PP1 FSDP MBS4, full recompute, DeepEP", ZOO_QWEN3,
     "step_s", 17.6, "main 1e057005"),
    ("train-qwen3-235b-h100-ep8-pp32.yaml", "Qwen3-235B, TP2 EP8 PP32 VPP3, NCCL a2a", ZOO_QWEN3, "step_s", 24.2,
     "main 1e057005"),
    ("train-qwen3-235b-h100-tp4-ep8.yaml", "Qwen3-235B, TP4 EP8 PP8 VPP4, no recompute, DeepEP", ZOO_QWEN3,
     "step_s", 29.0, "main 1e057005"),
    ("train-qwen3-235b-h100-16k.yaml", "Qwen3-235B, 16K seq, TP4 EP8 PP8 VPP4, recompute norm+moe, forced balance",
     ZOO_QWEN3_LONG, "megatron_tflops_causal", 295.0, ""),
    ("train-qwen3-235b-h100-32k.yaml", "Qwen3-235B, 32K seq, TP4 CP2 EP8 PP8 VPP4, recompute norm+moe, forced "
     "balance", ZOO_QWEN3_LONG, "megatron_tflops_causal", 335.0, ""),
    ("train-qwen3-235b-h100-64k.yaml", "Qwen3-235B, 64K seq, TP4 CP4 EP8 PP8 VPP4, recompute norm+moe, forced "
     "balance", ZOO_QWEN3_LONG, "megatron_tflops_causal", 368.0, ""),
    ("train-qwen3-235b-h100-128k.yaml", "Qwen3-235B, 128K seq, TP4 CP8 EP8 PP8 VPP4, recompute norm+moe, forced "
     "balance", ZOO_QWEN3_LONG, "megatron_tflops_causal", 389.0, ""),
    ("train-qwen3-30b-a3b-h100-bridge.yaml", "Qwen3-30B-A3B, 16 H100, EP16, FP8 current, HybridEP, forced balance",
     BRIDGE, "tokens_per_s_per_gpu", 8960.0, "NeMo 26.04.01"),
    ("train-qwen3-235b-h100-bridge-fp8.yaml", "Qwen3-235B, 256 H100, TP2 EP32 PP8 VPP4, FP8 current, NCCL a2a + "
     "overlap, forced balance", BRIDGE, "tokens_per_s_per_gpu", 1712.0, "NeMo 26.04.01"),
    ("train-gpt-oss-120b-h100-bridge.yaml", "gpt-oss-120b, 64 H100, EP8 PP4, BF16, NCCL a2a, forced balance",
     BRIDGE, "tokens_per_s_per_gpu", 5824.0, "NeMo 26.04.01"),
)  # fmt: skip


def megatron_flops_per_token(m: ModelSpec, seq_len: int, padded_vocab: int, causal: bool = False) -> float:
    """Megatron-LM's ``num_floating_point_operations`` per token for a GQA MoE model with SwiGLU experts, FLOP.

    ``12 h^2 L [(1 + g/a + s/h) q/h + (F / h) k 3/2] + 6 h V`` with ``q`` the query projection width (heads x
    head dim; Qwen3-235B: 8,192 against h 4,096), routed experts ``k`` per token, no shared experts. ``causal``:
    Megatron's later form, which halves the attention term (``s / h / 2``: "only half of the attention matrix is
    non-zero", NVIDIA/Megatron-LM megatron/training/training.py). MCore v0.9 (the Mixtral row) has no halving; the
    ModelZoo's Qwen3 TFLOPS use it: 245 TFLOP/s at 19.7 s per step is 147.3 GFLOP per token; this gives 148.0
    causal and 166.9 without the halving.
    """
    assert m.moe is not None
    a, h = m.attention, m.hidden_size
    q_ratio = a.num_heads * a.head_dim / h
    attn = (1 + a.num_kv_heads / a.num_heads + seq_len / h / (2.0 if causal else 1.0)) * q_ratio
    ffn = m.moe.intermediate_size / h * m.moe.top_k * 1.5
    return 12.0 * h * h * m.num_layers * (attn + ffn) + 6.0 * h * padded_vocab


def reported_tokens_per_s_per_gpu(name: str, kind: str, value: float, summary: dict) -> float:
    """The published throughput of a run as tokens/s per GPU (the tokens of a step from the scenario)."""
    if kind == "gpu_hours_per_btok":
        return 1e9 / (value * 3600.0)
    if kind in ("megatron_tflops", "megatron_tflops_causal"):
        sc = load_train_scenario(EXAMPLES / name)
        m = load_model(sc.model)
        causal = kind == "megatron_tflops_causal"
        return value * 1e12 / megatron_flops_per_token(m, sc.batch.seq_len, m.vocab_size, causal)
    if kind == "tokens_per_s_per_gpu":
        return value
    if kind == "step_s":
        return summary["tokens_per_step"] / value / summary["gpus"]
    raise ValueError(kind)


def unexplained_ms_per_layer_microbatch(name: str, reported_tokens_per_s_per_gpu: float, summary: dict) -> float:
    """(reported step - predicted step) / (micro-batches x decoder layers per pipeline rank), milliseconds.

    The reported step is the step that gives the reported throughput for the scenario's tokens per step; layers per
    rank: the model's decoder layers over ``layout.pp``, what each micro-batch runs on each rank (under DualPipe a
    micro-batch crosses one of a rank's two stages, in either direction). Positive: reality is slower than moesim by
    that much per layer and micro-batch.
    """
    sc = load_train_scenario(EXAMPLES / name)
    layers = load_model(sc.model).num_layers / sc.layout.pp
    reported_step_s = summary["tokens_per_step"] / (reported_tokens_per_s_per_gpu * summary["gpus"])
    return (reported_step_s - summary["step_s"]) / (summary["microbatches"] * layers) * 1e3


def work_correlation(per_layer_ms: list[float], ratios: list[float]) -> tuple[float, float, float, float]:
    """(Spearman rank correlation, its two-sided p-value, median ratio of the runs below the median run's work,
    median ratio of the rest) between the predicted ms per layer and micro-batch and the predicted / reported
    ratio: a cost missing from moesim that is fixed per layer and micro-batch (host launches, CPU-GPU syncs) makes
    the runs with the least work per layer the most optimistic (a negative correlation)."""
    import numpy as np
    from scipy.stats import spearmanr

    g, r = np.asarray(per_layer_ms), np.asarray(ratios)
    rho, p = spearmanr(g, r)
    small = g < np.sort(g)[len(g) // 2]  # below the median run (the middle one of an odd count)
    return float(rho), float(p), float(np.median(r[small])), float(np.median(r[~small]))


def _without_overlap(name: str) -> dict:
    """The example's prediction with ``overlap: none`` (moesim before Megatron's EP overlap was modelled)."""
    import yaml

    data = yaml.safe_load((EXAMPLES / name).read_text())
    data["overlap"] = "none"
    return run(data, base_dir=EXAMPLES).summary


def bench_training(quick: bool = False) -> tuple[str, dict]:
    """Section 8 (see the module docstring)."""
    title = "## 8. Training simulator against published training runs"
    rows, stats, per, gaps, work = [], {}, [], [], []
    t0 = time.perf_counter()
    for name, label, source, kind, value, code in RUNS:
        s = run(EXAMPLES / name).summary
        rep = reported_tokens_per_s_per_gpu(name, kind, value, s)
        ratio = s["tokens_per_s_per_gpu"] / rep
        sc = load_train_scenario(EXAMPLES / name)
        before = None
        if sc.overlap == "ep_a2a":
            before = _without_overlap(name)["tokens_per_s_per_gpu"] / rep
        stats[name] = {"reported_tokens_per_s_per_gpu": rep, "tokens_per_s_per_gpu": s["tokens_per_s_per_gpu"],
                       "predicted_over_reported_throughput": ratio, "ratio_without_ep_a2a": before,
                       "step_s": s["step_s"], "mfu": s["mfu"], "mem_per_gpu_gib": s["mem_per_gpu_gib"],
                       "fits": s["fits"], "breakdown": s["breakdown"]}  # fmt: skip
        per.append((name, label, sc.model, s["gpu"], rep, s["tokens_per_s_per_gpu"], code, sc.batch.seq_len, source))
        gap = unexplained_ms_per_layer_microbatch(name, rep, s)
        stats[name]["unexplained_ms_per_layer_microbatch"] = gap
        work.append(s["work_ms_per_layer_microbatch"])  # the step per decoder layer and micro-batch, ms
        gaps.append(f"| {label} | {s['microbatches']} | {work[-1]:.2f} | {ratio:.2f} | {gap:+.2f} |")
        shown = {"step_s": f"{value:g} s per step", "gpu_hours_per_btok": f"{value:g} GPU-hours per B tokens",
                 "megatron_tflops": f"{value:g} TFLOP/s per GPU",
                 "megatron_tflops_causal": f"{value:g} TFLOP/s per GPU",
                 "tokens_per_s_per_gpu": f"{value:,g} tokens/s per GPU"}  # fmt: skip
        rows.append(
            f"| {label} | {source} | {shown[kind]} = {rep:,.0f} tok/s/GPU | {s['tokens_per_s_per_gpu']:,.0f} "
            f"({s['step_s']:.2f} s) | {ratio:.2f}" + (f" (without ep_a2a {before:.2f})" if before else "")
            + f" | {s['mfu']:.1%} | {'yes' if s['fits'] else 'NO'} {s['mem_per_gpu_gib']:.1f} GiB |"
        )  # fmt: skip
    wall = time.perf_counter() - t0
    ratios = [v["predicted_over_reported_throughput"] for v in stats.values()]
    within = sum(abs(r - 1.0) <= 0.15 for r in ratios)
    pairs, agree, ranked = [], 0, 0
    for a, b in itertools.combinations(per, 2):
        if a[2] != b[2] or a[3] != b[3] or a[7] != b[7] or a[8] != b[8]:
            continue  # a pair differs only in layout or precision: one model, GPU, sequence length and source
        real = a[4] > b[4]
        pred = a[5] > b[5]
        tie = abs(a[4] - b[4]) <= 1e-9 * a[4]
        ok = real == pred
        agree += ok and not tie
        ranked += not tie
        note = "" if a[6] == b[6] else f" (code {a[6]} vs {b[6]})"
        verdict = "tie reported, not counted" if tie else ("yes" if ok else "NO")
        pairs.append(
            f"| {a[1]} vs {b[1]} | {'equal' if tie else ('first' if real else 'second') + ' faster'} | "
            f"{'first' if pred else 'second'} faster | {verdict}{note} |"
        )
    rho, p_rho, small_med, large_med = work_correlation(work, ratios)
    stats["summary"] = {"runs": len(ratios), "within_15pct": within, "pairs": ranked, "pairs_agree": agree,
                        "median_ratio": sorted(ratios)[len(ratios) // 2], "wall_s": wall,
                        "work_spearman": rho, "work_spearman_p": p_rho}  # fmt: skip
    text = [
        title,
        "",
        "Predicted with `moesim train examples/<file>` (kernel times from the H100 SXM tables in "
        "`profiling/data/h100-sxm`, calibrated on load). Ratio: predicted over reported throughput (above 1: "
        "optimistic); for runs with `overlap: ep_a2a` (Megatron's `--overlap-moe-expert-parallel-comm`) the ratio "
        "moesim gave before that overlap was modelled is in brackets.",
        "",
        "| run | source | reported | predicted tok/s/GPU (step) | predicted / reported | MFU (bf16 peak) "
        "| fits 80 GB |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Within +-15%: {within} of {len(ratios)} runs; median ratio {stats['summary']['median_ratio']:.2f}.",
        "",
        "Pairs of runs of one model on one GPU type at one sequence length from one source (ordered by throughput per "
        "GPU; runs of different sources differ in more than layout or precision: code, batch, routing):",
        "",
        "| pair | reported | predicted | same order |",
        "|---|---|---|---|",
        *pairs,
        "",
        f"{agree} of {ranked} pairs ranked as reported (ties not counted). Simulated in {wall:.1f} s of wall time "
        "in all.",
        "",
        "Reported minus predicted step time, per decoder layer and micro-batch that one pipeline rank runs "
        "(`unexplained_ms_per_layer_microbatch`): the size a per-layer cost missing from moesim (host launches, "
        "CPU-GPU syncs) would need to close each run's gap; a cost of that kind should come out alike for alike "
        "micro-batches.",
        "",
        "| run | micro-batches per pipeline | predicted ms per layer and micro-batch | predicted / reported | "
        "unexplained ms per layer and micro-batch |",
        "|---|---|---|---|---|",
        *gaps,
        "",
        f"The less work per layer and micro-batch, the more optimistic the prediction: Spearman's rank correlation "
        f"between the predicted ms per layer and micro-batch and the ratio {rho:+.2f} (p = {p_rho:.3f}, "
        f"{len(ratios)} runs); median ratio {small_med:.2f} for the runs below the median work per layer and "
        f"micro-batch ({sorted(work)[len(work) // 2]:.2f} ms), {large_med:.2f} for the rest (`work_correlation`).",
        "",
    ]
    return "\n".join(text), stats


def bench_mechanisms() -> str:
    """Each run's ratio with every mechanism of `train_cost.MECHANISMS`, with none, and with each one alone (the
    before/after of issue 21's second round). About 7 x the main table's wall time."""
    from moesim.sim.training import train_cost

    saved = set(train_cost.MECHANISMS)
    configs = [("none", set())] + [(m, {m}) for m in sorted(saved)] + [("all", saved)]
    cols: dict[str, list[float]] = {}
    try:
        for label, mech in configs:
            train_cost.MECHANISMS.clear()
            train_cost.MECHANISMS.update(mech)
            ratios = []
            for name, _, _, kind, value, _ in RUNS:
                s = run(EXAMPLES / name).summary
                ratios.append(s["tokens_per_s_per_gpu"] / reported_tokens_per_s_per_gpu(name, kind, value, s))
            cols[label] = ratios
    finally:
        train_cost.MECHANISMS.clear()
        train_cost.MECHANISMS.update(saved)
    head = "| run | " + " | ".join(c for c, _ in configs) + " |"
    lines = [head, "|---" * (len(configs) + 1) + "|"]
    for i, r in enumerate(RUNS):
        lines.append(f"| {r[1]} | " + " | ".join(f"{cols[c][i]:.2f}" for c, _ in configs) + " |")
    med = [sorted(cols[c])[len(RUNS) // 2] for c, _ in configs]
    lines.append("| median | " + " | ".join(f"{x:.2f}" for x in med) + " |")
    return "\n".join(["Predicted / reported throughput by mechanism (none; each alone; all):", "", *lines, ""])


def overlap_split(name: str = "train-qwen3-235b-h100-a2a-overlap.yaml", ratio: float = 17.6 / 19.7) -> str:
    """How far moesim's combined-1F1B layer pair (`train_cost.combined_layer_seconds`) is from the published gain.

    Takes the pieces of the scenario's first MoE layer (attention and MLP nodes' computation, dispatch and combine
    seconds, SM share), prints the pair's time over the same pieces run in turn, then the scaling of the
    computation ``c`` and of the all-to-alls ``a`` that keeps the serial sum fixed and gives the published
    overlapped / plain step ratio ``ratio`` (ModelZoo: 17.6 s / 19.7 s), and the pair's ratio at larger SM shares.
    """
    from moesim.sim.training import train_cost
    from moesim.sim.training.train import load

    setup = load(EXAMPLES / name)
    cm = setup.cost_model
    if hasattr(cm, "with_extrapolation"):
        cm = cm.with_extrapolation()
    seen: list[tuple[float, ...]] = []
    orig = train_cost.combined_layer_seconds

    def spy(*args: float) -> float:
        seen.append(args)
        return orig(*args)

    train_cost.combined_layer_seconds = spy
    try:
        train_cost.unit_costs(setup, cm)
    finally:
        train_cost.combined_layer_seconds = orig
    fa, fm, bab, bm, bw, fd, fc, bd, bc, sm = seen[0]
    comp, comm = (fa, fm, bab, bm, bw), (fd, fc, bd, bc)
    serial = sum(comp) + sum(comm)
    out = [
        f"{name}, first MoE layer: computation {sum(comp) * 1e3:.2f} ms (attention fwd {fa * 1e3:.2f}, MLP fwd "
        f"{fm * 1e3:.2f}, attention bwd {bab * 1e3:.2f}, MLP bwd {bm * 1e3:.2f} + wgrad {bw * 1e3:.2f}), "
        f"all-to-alls {sum(comm) * 1e3:.2f} ms; the pair takes {orig(*comp, *comm, sm) * 1e3:.2f} ms = "
        f"{orig(*comp, *comm, sm) / serial:.3f} of the two in turn (published step ratio {ratio:.3f})."
    ]
    best = (1.0, 1.0, orig(*comp, *comm, sm) / serial)
    for i in range(1, 400):
        c = 1.0 + 0.005 * i
        a = (serial - c * sum(comp)) / sum(comm)
        if a <= 0:
            break
        r = orig(*(x * c for x in comp), *(x * a for x in comm), sm) / serial
        if abs(r - ratio) < abs(best[2] - ratio):
            best = (c, a, r)
    out.append(
        f"Same serial time, pair ratio {best[2]:.3f}: computation x{best[0]:.2f} and all-to-alls x{best[1]:.2f}."
    )
    out.append(
        "Pair ratio by SM share of the communication: "
        + ", ".join(f"{f:.3f}: {orig(*comp, *comm, f) / serial:.3f}" for f in (sm, 24 / 132, 0.25, 0.5))
        + "."
    )
    return "\n".join(out)


#: The ModelZoo's Long Context H100 table, 16K row (TP4 EP8, DeepEP, BF16): TFLOP/s per GPU with forced load
#: balancing and dropless (github.com/NVIDIA/Megatron-MoE-ModelZoo best_practice/qwen3/readme.md).
LONG_16K_FORCED_DROPLESS = (295.0, 237.0)
#: The whole Long Context H100 table: (example, context-parallel size, forced, dropless TFLOP/s per GPU).
LONG_CONTEXT = (
    ("train-qwen3-235b-h100-16k.yaml", 1, 295.0, 237.0),
    ("train-qwen3-235b-h100-32k.yaml", 2, 335.0, 277.0),
    ("train-qwen3-235b-h100-64k.yaml", 4, 368.0, 320.0),
    ("train-qwen3-235b-h100-128k.yaml", 8, 389.0, 357.0),
)
#: The Qwen3 examples' ``routing.sequence_cv`` (`fit_sequence_cv` on the 16K row).
QWEN3_SEQUENCE_CV = 0.76


def long_context(cv: float = QWEN3_SEQUENCE_CV) -> str:
    """The ModelZoo's long-context rows (`LONG_CONTEXT`): each example forced (as it is) and dropless (its routing
    concentrated per sequence with ``cv``, the value fitted on the 16K row), predicted and reported model TFLOP/s per
    GPU, their ratio, and the dropless/forced ratio both ways; the dropless ratio also as it would be if a
    sequence's context-parallel slices routed as one (``train_cost.sequence_hot_factor`` with ``n`` divided by cp),
    the hypothesis these rows decide against. A markdown table."""
    import copy

    import yaml

    from moesim.sim.training import train_cost

    lines = [
        "| seq (cp) | forced: reported / predicted TFLOP/s, ratio | dropless: reported / predicted, ratio | "
        "dropless/forced: reported | predicted | if slices routed as one |",
        "|---|---|---|---|---|---|",
    ]
    for name, cp, forced, dropless in LONG_CONTEXT:
        base = yaml.safe_load((EXAMPLES / name).read_text())
        m = load_model(base["model"])
        f_tok = megatron_flops_per_token(m, base["batch"]["seq_len"], m.vocab_size, causal=True)
        tflops = []
        for conc in (None, cv, "one"):
            d = copy.deepcopy(base)
            if conc is not None:
                d["routing"]["sequence_cv"] = cv
            hot = train_cost.sequence_hot_factor
            if conc == "one":  # a sequence's cp slices counted as one sequence: n / cp

                def one(setup, hot=hot):  # type: ignore[no-untyped-def]
                    h = hot(setup)
                    n = max(1, setup.scenario.batch.micro_batch * setup.group_layout.dp_attn)
                    return 1.0 + (h - 1.0) * (n / max(1.0, n / setup.cp)) ** 0.5

                train_cost.sequence_hot_factor = one
            try:
                tps = run(d, base_dir=EXAMPLES).summary["tokens_per_s_per_gpu"]
            finally:
                train_cost.sequence_hot_factor = hot
            tflops.append(tps * f_tok / 1e12)
        pf, pd, p1 = tflops
        lines.append(
            f"| {base['batch']['seq_len'] // 1024}K ({cp}) | {forced:g} / {pf:.0f}, {pf / forced:.3f} | "
            f"{dropless:g} / {pd:.0f}, {pd / dropless:.3f} | {dropless / forced:.3f} | {pd / pf:.3f} | "
            f"{p1 / pf:.3f} |"
        )
    return "\n".join(lines)


def fit_sequence_cv(steps: int = 12) -> tuple[float, float]:
    """``routing.sequence_cv`` at which moesim's 16K TP4 EP8 step (``train-qwen3-235b-h100-16k.yaml``) is slower
    dropless than forced by the published ratio 295 / 237 (bisection on [0, 3]); returns (cv, the forced step's s).
    The Qwen3 examples run dropless with this value (inferred, not measured)."""
    import copy

    import yaml

    base = yaml.safe_load((EXAMPLES / "train-qwen3-235b-h100-16k.yaml").read_text())
    forced, dropless = LONG_16K_FORCED_DROPLESS
    target = forced / dropless

    def step(cv: float) -> float:
        d = copy.deepcopy(base)
        d["routing"]["sequence_cv"] = cv
        return run(d, base_dir=EXAMPLES).summary["step_s"]

    s0 = step(0.0)
    lo, hi = 0.0, 3.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if step(mid) / s0 < target else (lo, mid)
    return 0.5 * (lo + hi), s0


def bridge_decomposition() -> str:
    """What moesim says each difference between the ModelZoo's Qwen3-235B BF16 overlap row and Megatron-Bridge's FP8
    row of the same layout (TP2 PP8 VP4 EP32) is worth: the first example edited one difference at a time, in turn,
    until it is the second (`examples/train-qwen3-235b-h100-bridge-fp8.yaml`), predicted tokens/s per GPU each."""
    import copy

    import yaml

    d = yaml.safe_load((EXAMPLES / "train-qwen3-235b-h100-a2a-overlap.yaml").read_text())
    fp8_tables = ["../profiling/data/h100-sxm/full-bf16", "../profiling/data/h100-sxm/quick-fp8_fp16"]

    def no_recompute(x: dict) -> None:
        x["recompute"] = "none"
        x["activations"].pop("recompute_modules", None)
        x["precision"]["grads"] = "bf16"

    steps = [
        ("ModelZoo overlap row as shipped (BF16, DeepEP, GBS 2048, dropless with sequence_cv 0.76, recompute "
         "norm+act)", lambda x: None),
        ("GBS 8192", lambda x: x["batch"].update(global_batch=8192)),
        ("forced balance", lambda x: x.update(routing={"distribution": "uniform", "capacity_factor": None})),
        ("NCCL all-to-all dispatcher", lambda x: x["layout"].update(a2a_backend="nccl")),
        ("no recompute, bf16 gradients", no_recompute),
        ("FP8 current scaling, measured fp8 GEMMs (= the Bridge example)",
         lambda x: (x["precision"].update(gemm="fp8", fp8_recipe="current"), x.update(cost_model=fp8_tables))),
    ]  # fmt: skip
    lines = ["| change (cumulative) | predicted tokens/s per GPU | step s |", "|---|---|---|"]
    for label, edit in steps:
        edit(d)
        s = run(copy.deepcopy(d), base_dir=EXAMPLES).summary
        lines.append(f"| {label} | {s['tokens_per_s_per_gpu']:,.0f} | {s['step_s']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(bench_training()[0])
    if "--mechanisms" in sys.argv[1:]:
        print(bench_mechanisms())
    if "--overlap-split" in sys.argv[1:]:
        print(overlap_split())
    if "--bridge-decomposition" in sys.argv[1:]:
        print(bridge_decomposition())
    if "--long-context" in sys.argv[1:]:
        print(long_context())
    if "--fit-sequence-cv" in sys.argv[1:]:
        cv, s0 = fit_sequence_cv()
        print(
            f"routing.sequence_cv reproducing the 16K dropless/forced ratio {LONG_16K_FORCED_DROPLESS[0]:g} / "
            f"{LONG_16K_FORCED_DROPLESS[1]:g}: {cv:.3f} (forced step {s0:.2f} s)"
        )
