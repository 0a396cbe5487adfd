"""Benchmark section 9: expert placement, the ILP against DeepSeek's greedy EPLB.

Synthetic routing (`placement.synthetic`): 4,096 tokens, per-layer power-law
popularity (alpha 1), cross-layer affinity 2 nats, DeepSeek-V3's
group-limited routing (8 groups, 4 per token) for the DeepSeek-V3 shape.
The ILP minimises the predicted MoE-layer time (`placement.layertime`: grouped
GEMM per GPU, DeepEP normal-mode dispatch + combine over NVLink and the NIC,
4,096 tokens per GPU; DeepSeek-V3 fp8 on HGX H200 nodes, Mixtral bf16 on one
HGX H200): on several nodes a count-limited search (node starts, then swaps out
of the busiest node's NIC, then swaps lowering the slowest GPU's GEMM within
its node, `placement.nicsearch`, on 2,048 of the 4,096 tokens, the plans compared
on the other 2,048; the layer time reported on all 4,096), on one node with two slots per
GPU an exact enumeration of replica counts with a proof (`placement.exact`: gap
0 by construction, no MIP), all deterministic, within a 30 s wall-clock cap for
the whole call (5 s for Mixtral); a layer cut by the cap keeps its best plan so far
(never worse than EPLB's) and is not reproducible. "Lower bound": `layertime.layer_time_bound` per layer (mean
GPU's GEMM + max(mean GPU's NVLink, busiest node's NIC if every token reached
one node)); its NIC part is weak, so a gap there is not all room. "EPLB" is
`rebalance_experts` exactly as EPLB picks its policy (hierarchical when the 8
groups divide over the nodes), repacked so no GPU holds two replicas of one
expert (its replica counts and nodes kept).

Run: ``python -m benchmarks.placement`` (or ``make bench``); ``--replica-choice``: the DeepSeek-V3 shapes scored
under SGLang's replica rule (`bench_replica_choice`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from moesim.model.errors import MoesimError  # noqa: E402
from moesim.model.hardware import get_cluster  # noqa: E402
from moesim.placement.api import place  # noqa: E402
from moesim.placement.baselines import duplicate_slots  # noqa: E402
from moesim.placement.exporters import check_no_duplicates  # noqa: E402
from moesim.placement.ilp import IlpOptions  # noqa: E402
from moesim.placement.layertime import (  # noqa: E402
    LayerCost,
    balanced_time_parts,
    layer_cost,
    layer_time_bound,
    layer_time_parts,
)
from moesim.placement.metrics import plan_metrics  # noqa: E402
from moesim.placement.stats import RoutingStats  # noqa: E402
from moesim.placement.synthetic import synthetic_trace  # noqa: E402

#: The per-phase objective at the operating point `moesim place --simulate examples/deepseek-v3-dp32-ep32.yaml` (300
#: requests) measured on its DES run with EPLB's plan (2026-12-04): 73.8% of the time in pure-decode steps (DeepEP
#: low-latency mode) at 0.56 tokens per GPU, the rest in normal mode at 137 tokens per GPU (time-weighted means);
#: the scenario dispatches bf16 (fp8 weights with per-tensor scales).
PHASES = {"phase": "both", "decode_share": 0.738, "decode_tokens_per_gpu": 0.56, "tokens_per_gpu": 137,
          "fp8_dispatch": False}  # fmt: skip


def _case(
    name: str,
    layers: int,
    experts: int,
    top_k: int,
    groups: int,
    gpus: int,
    gpn: int,
    redundant: int,
    time_limit: float,
    cluster: str,
    shape: tuple[int, int, str],
    mip_gap: float = 1e-4,
    phases: dict | None = None,
) -> tuple[str, dict]:
    st = synthetic_trace(
        layers,
        experts,
        top_k,
        tokens=4096,
        alpha=1.0,
        affinity=2.0,
        n_group=groups,
        topk_group=4 if groups > 1 else 1,
        seed=1,
    )
    t0 = time.perf_counter()
    hidden, inter, dtype = shape
    cost = layer_cost(get_cluster(cluster), hidden, inter, top_k, gpus, dtype=dtype, **(phases or {}))
    opts = IlpOptions(time_limit=time_limit, cost=cost, mip_gap=mip_gap)
    res = place(st, gpus, gpn, redundant, ("eplb", "ilp"), groups, opts)
    wall = time.perf_counter() - t0
    e, i = res["eplb"], res["ilp"]
    for r in res.values():
        check_no_duplicates(r.plan, f"{name} {r.method}")  # what export checks: raises on a doubled expert
    dups = sum(len(duplicate_slots(r.plan.phys_to_log, gpus)) for r in res.values())
    assert i.layer_time_s is not None and e.layer_time_s is not None
    tr = i.layer_time_s / e.layer_time_s
    slots = experts + redundant
    lb = np.array([layer_time_bound(st.counts[k], slots, gpus, gpn, cost)["total"] for k in range(layers)])
    ratio = i.layer_max_load / e.layer_max_load
    se, si = e.metrics["inter_node_sends_per_token"], i.metrics["inter_node_sends_per_token"]
    d = {
        "wall_s": wall,
        "ilp_solve_s": i.metrics["solve_s"],
        "eplb_policy": e.metrics["policy"],
        "layers": layers,
        "layers_not_worse": int((ratio <= 1 + 1e-9).sum()),
        "busiest_change_mean": float(ratio.mean() - 1),
        "eplb_max_load_ratio": e.metrics["max_load_ratio"],
        "ilp_max_load_ratio": i.metrics["max_load_ratio"],
        "eplb_sends": se,
        "ilp_sends": si,
        "sends_change": (si / se - 1) if se else None,
        "gap": i.metrics["gap"],
        "layers_optimal": i.metrics["layers_optimal"],
        "layers_fallback": i.metrics["layers_fallback"],
        "layers_time_limit": i.metrics.get("layers_time_limit", 0),
        "eplb_layer_time_ms": float(e.layer_time_s.mean() * 1e3),
        "ilp_layer_time_ms": float(i.layer_time_s.mean() * 1e3),
        "layer_time_change_mean": float(tr.mean() - 1),
        "layers_time_not_worse": int((tr <= 1 + 1e-9).sum()),
        "status": i.metrics["status"],
        "duplicates": dups,
        "bound_ms": float(lb.mean() * 1e3),
        "eplb_over_bound": float((e.layer_time_s / lb).mean() - 1),
        "ilp_over_bound": float((i.layer_time_s / lb).mean() - 1),
    }
    if gpus > gpn and not phases:  # where the time goes across nodes: each plan as it is and perfectly balanced
        for key, r in (("eplb", e), ("ilp", i)):
            tok = [st.topk[:, k, :] for k in range(layers)]
            act = [
                layer_time_parts(r.plan.phys_to_log[k], st.counts[k], gpus, gpn, tok[k], cost) for k in range(layers)
            ]
            bal = [
                balanced_time_parts(r.plan.phys_to_log[k], st.counts[k], gpus, gpn, tok[k], cost) for k in range(layers)
            ]
            for part in ("total", "gemm", "nvlink", "nic"):
                d[f"{key}_{part}_ms"] = float(np.mean([a[part] for a in act]) * 1e3)
                d[f"{key}_balanced_{part}_ms"] = float(np.mean([b[part] for b in bal]) * 1e3)
            d[f"{key}_nodes_per_token"] = float(np.mean([b["nodes_per_token"] for b in bal]))
            d[f"{key}_balanced_vs_eplb"] = float(np.mean([b["total"] for b in bal] / e.layer_time_s) - 1)
    sends = "-" if not se else f"{se:.2f} → {si:.2f} ({si / se - 1:+.1%})"
    row = (
        f"| {name} | {wall:.1f} s | {d['eplb_layer_time_ms']:.3f} → {d['ilp_layer_time_ms']:.3f} ms "
        f"({d['layer_time_change_mean']:+.1%}) | {d['layers_time_not_worse']}/{layers} | {d['status']} | "
        f"{d['layers_not_worse']}/{layers} | "
        f"{d['eplb_max_load_ratio']:.3f} → {d['ilp_max_load_ratio']:.3f} ({d['busiest_change_mean']:+.1%}) | "
        f"{sends} | {d['layers_optimal']}/{layers} | "
        f"{'-' if d['gap'] is None else format(d['gap'], '.2%')} | {d['layers_time_limit']}/{layers} | "
        f"{d['bound_ms']:.3f} ms: EPLB {d['eplb_over_bound']:+.1%}, ILP {d['ilp_over_bound']:+.1%} |"
    )
    return row, d


def _held_out(gpus: int, cluster: str, redundant: int, rule: str = "random") -> dict:
    """The DeepSeek-V3-shaped case on ``gpus`` GPUs placed on the first 4,096 tokens of an 8,192-token trace (same
    knobs as `_case`) and scored on the other 4,096: what a plan is worth on routing it was not fitted to; replicas
    picked by the replica rule ``rule`` (`layertime.LayerCost.replica_choice`)."""
    layers, experts, top_k, gpn = 58, 256, 8, 8
    st = synthetic_trace(layers, experts, top_k, tokens=8192, alpha=1.0, affinity=2.0, n_group=8, topk_group=4, seed=1)
    fit = RoutingStats.from_topk(st.topk[:4096], experts, source="synthetic, first half")
    cost = layer_cost(get_cluster(cluster), 7168, 2048, top_k, gpus, dtype="fp8", replica_choice=rule)
    t0 = time.perf_counter()
    res = place(fit, gpus, gpn, redundant, ("eplb", "ilp"), 8, IlpOptions(time_limit=30.0, cost=cost))
    wall = time.perf_counter() - t0
    out: dict = {"wall_s": wall}
    held = st.topk[4096:]
    for key, r in res.items():
        p2l = r.plan.phys_to_log
        loads = [np.bincount(held[:, k].ravel(), minlength=experts).astype(float) for k in range(layers)]
        out[key] = np.array(
            [layer_time_parts(p2l[k], loads[k], gpus, gpn, held[:, k], cost)["total"] for k in range(layers)]
        )
        out[key + "_bal"] = np.array(
            [balanced_time_parts(p2l[k], loads[k], gpus, gpn, held[:, k], cost)["total"] for k in range(layers)]
        )
        out[key + "_fit"] = r.layer_time_s
    e, i = out["eplb"], out["ilp"]
    return {
        "wall_s": wall,
        "fit_change": float((out["ilp_fit"] / out["eplb_fit"]).mean() - 1),
        "held_change": float((i / e).mean() - 1),
        "held_worst": float((i / e).max() - 1),
        "held_not_worse": int((i <= e * (1 + 1e-9)).sum()),
        "eplb_balanced_vs_eplb": float((out["eplb_bal"] / e).mean() - 1),
        "ilp_balanced_vs_eplb": float((out["ilp_bal"] / e).mean() - 1),
        "layers": layers,
    }


def bench_placement(quick: bool = False) -> tuple[str, dict]:
    """Section 9 (see the module docstring)."""
    title = "## 9. Expert placement: ILP vs DeepSeek EPLB"
    stats: dict = {}
    lines = [title, "", __doc__.split("\n\n")[1].replace("\n", " "), ""]
    try:
        place(synthetic_trace(2, 256, 8, tokens=64, seed=0), 64, 8, 32, ("eplb",), 8)
        literal = "accepted"
    except MoesimError as exc:
        literal = f"refused: `{exc.one_line()}`"
    lines += [
        f"The issue's literal shape (256 experts + 32 redundant on 64 GPUs) is {literal}. So DeepSeek-V3 is "
        "run at 64 GPUs with 64 redundant slots (5 per GPU) and at 32 GPUs on 4 nodes with 32 redundant "
        "(9 per GPU, DeepSeek's prefill deployment).",
        "",
    ]
    lines += [
        "| case | place() wall | predicted MoE-layer time EPLB → ILP (mean change) | layers ILP ≤ EPLB | ILP status "
        "| layers with busiest GPU ≤ EPLB | busiest/mean EPLB → ILP (mean change per layer) | remote nodes per token "
        "EPLB → ILP | layers proven optimal | worst gap | layers cut by the clock (not reproducible) "
        "| lower bound of the layer time (mean), each method above it (mean per layer) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ds, mx = (7168, 2048, "fp8"), (4096, 14336, "bf16")  # hidden, expert FFN width, weight dtype (HF configs)
    cases = [
        ("DeepSeek-V3 shape, 58 layers, 64 GPUs / 8 nodes, +64", 58, 256, 8, 8, 64, 8, 64, 30.0, "hgx-h200-x8", ds),
        ("DeepSeek-V3 shape, 58 layers, 32 GPUs / 4 nodes, +32", 58, 256, 8, 8, 32, 8, 32, 30.0, "hgx-h200-x4", ds),
        (
            "DeepSeek-V3 shape, 32 GPUs, per-phase objective (the --simulate operating point)",
            58,
            256,
            8,
            8,
            32,
            8,
            32,
            30.0,
            "hgx-h200-x4",
            ds,
            1e-4,
            PHASES,
        ),
        ("Mixtral-8x7B, 32 layers, 8 GPUs / 1 node, +0", 32, 8, 2, 1, 8, 8, 0, 5.0, "hgx-h200", mx, 0.0),
        ("Mixtral-8x7B, 32 layers, 8 GPUs / 1 node, +8", 32, 8, 2, 1, 8, 8, 8, 5.0, "hgx-h200", mx, 0.0),
    ]
    for case in cases[3:] if quick else cases:
        row, d = _case(*case)
        lines.append(row)
        stats[case[0]] = d
    multi = [(k, d) for k, d in stats.items() if "eplb_balanced_total_ms" in d]
    if multi:
        lines += [
            "",
            "Where the time goes across nodes (mean over the layers, ms; `layertime.layer_time_parts` as placed, and "
            "`layertime.balanced_time_parts`: the same plan with every GPU at the mean GEMM and NVLink and every "
            "node's NIC at the mean, i.e. the same replicas and nodes reached per token, perfectly balanced):",
            "",
            "| case | plan | total | GEMM | NVLink | NIC | nodes reached per token "
            "| perfectly balanced: total (vs EPLB as placed, mean per layer) | GEMM | NIC |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, d in multi:
            for key in ("eplb", "ilp"):
                lines.append(
                    f"| {name} | {key.upper()} | {d[key + '_total_ms']:.3f} | {d[key + '_gemm_ms']:.3f} | "
                    f"{d[key + '_nvlink_ms']:.3f} | {d[key + '_nic_ms']:.3f} | {d[key + '_nodes_per_token']:.3f} | "
                    f"{d[key + '_balanced_total_ms']:.3f} ({d[key + '_balanced_vs_eplb']:+.1%}) | "
                    f"{d[key + '_balanced_gemm_ms']:.3f} | {d[key + '_balanced_nic_ms']:.3f} |"
                )
    if not quick:
        ho = _held_out(32, "hgx-h200-x4", 32)
        stats["held_out_32"] = ho
        lines += [
            "",
            "Held out (32 GPUs / 4 nodes, +32; placed on the first 4,096 tokens of an 8,192-token trace, scored on the "
            f"other 4,096; place() wall {ho['wall_s']:.1f} s): ILP against EPLB {ho['fit_change']:+.1%} on the "
            f"tokens placed on, {ho['held_change']:+.1%} held out (mean per layer; worst layer "
            f"{ho['held_worst']:+.1%}, {ho['held_not_worse']}/{ho['layers']} layers not worse); each plan perfectly "
            f"balanced, held out: EPLB's {ho['eplb_balanced_vs_eplb']:+.1%}, "
            f"the ILP's {ho['ilp_balanced_vs_eplb']:+.1%}.",
        ]
    lines += [
        "",
        f"On this machine ({os.cpu_count()} cores). Remote nodes per token: expected nodes other than the "
        "token's own that its dispatch reaches per MoE layer. Gap: the largest relative gap over the layers' "
        "solves: HiGHS' own for a MIP stage (its model status, not PuLP's), 0 for the exact enumeration (proven by "
        "its bound, `placement.exact`).",
        "",
    ]
    return "\n".join(lines), stats


def _scored(p2l: np.ndarray, st: RoutingStats, gpus: int, cost: LayerCost) -> np.ndarray:
    """[L] predicted layer time of plans ``p2l`` [L, S] on all of ``st``'s tokens, 8 GPUs per node, s."""
    return np.array(
        [layer_time_parts(p2l[k], st.counts[k], gpus, 8, st.topk[:, k], cost)["total"] for k in range(p2l.shape[0])]
    )


def bench_replica_choice() -> str:
    """The DeepSeek-V3 shapes of section 9 under SGLang's replica rule (`layertime.slot_routes`, ``nearest``: a
    rank's own GPU's replica, else its node's first, else a fixed fair pick), against the rule the section prices
    (``random``, vLLM's). Per shape: EPLB's plan; the ILP placed for ``random`` (what moesim exported for SGLang
    before the rule was modelled) and for ``nearest``; each scored under ``nearest`` on all 4,096 tokens."""
    lines = [
        "| case | EPLB, ms | ILP placed for random: ms, vs EPLB, layers not worse | ILP placed for nearest: ms, vs "
        "EPLB, layers not worse | busiest/mean EPLB / random-ILP / nearest-ILP | remote nodes per token EPLB / "
        "random-ILP / nearest-ILP | place() wall (random, nearest) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, gpus, cluster, red in (
        ("DeepSeek-V3 shape, 58 layers, 64 GPUs / 8 nodes, +64", 64, "hgx-h200-x8", 64),
        ("DeepSeek-V3 shape, 58 layers, 32 GPUs / 4 nodes, +32", 32, "hgx-h200-x4", 32),
    ):
        st = synthetic_trace(58, 256, 8, tokens=4096, alpha=1.0, affinity=2.0, n_group=8, topk_group=4, seed=1)
        rnd = layer_cost(get_cluster(cluster), 7168, 2048, 8, gpus, dtype="fp8")
        near = layer_cost(get_cluster(cluster), 7168, 2048, 8, gpus, dtype="fp8", replica_choice="nearest")
        walls, res = [], {}
        for key, cost in (("random", rnd), ("nearest", near)):
            t0 = time.perf_counter()
            res[key] = place(st, gpus, 8, red, ("eplb", "ilp"), 8, IlpOptions(time_limit=30.0, cost=cost))
            walls.append(time.perf_counter() - t0)

        e, ir, i_n = (
            _scored(r.plan.phys_to_log, st, gpus, near)
            for r in (res["nearest"]["eplb"], res["random"]["ilp"], res["nearest"]["ilp"])
        )
        pairs = (("eplb", res["nearest"]["eplb"]), ("ir", res["random"]["ilp"]), ("in", res["nearest"]["ilp"]))
        m = {k: plan_metrics(r.plan, st, "nearest") for k, r in pairs}
        lines.append(
            f"| {name} | {e.mean() * 1e3:.3f} | {ir.mean() * 1e3:.3f}, {(ir / e).mean() - 1:+.1%}, "
            f"{int((ir <= e * (1 + 1e-9)).sum())}/58 | {i_n.mean() * 1e3:.3f}, {(i_n / e).mean() - 1:+.1%}, "
            f"{int((i_n <= e * (1 + 1e-9)).sum())}/58 | "
            + " / ".join(f"{m[k]['max_load_ratio']:.3f}" for k in ("eplb", "ir", "in"))
            + " | "
            + " / ".join(f"{m[k]['inter_node_sends_per_token']:.2f}" for k in ("eplb", "ir", "in"))
            + f" | {walls[0]:.1f} s, {walls[1]:.1f} s |"
        )
    ho = _held_out(32, "hgx-h200-x4", 32, "nearest")
    lines += [
        "",
        "Held out under `nearest` (32 GPUs / 4 nodes, +32; placed on the first 4,096 tokens of an 8,192-token trace, "
        f"scored on the other 4,096; place() wall {ho['wall_s']:.1f} s): ILP against EPLB {ho['fit_change']:+.1%} on "
        f"the tokens placed on, {ho['held_change']:+.1%} held out (mean per layer; worst layer "
        f"{ho['held_worst']:+.1%}, {ho['held_not_worse']}/{ho['layers']} layers not worse).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if "--replica-choice" in sys.argv:
        print(bench_replica_choice())
        raise SystemExit(0)
    text, s = bench_placement("--quick" in sys.argv)
    print(text)
    print(
        {k: {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in d.items()} for k, d in s.items()},
        file=sys.stderr,
    )
