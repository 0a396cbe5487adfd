"""moesim benchmarks: accuracy and speed targets, written to benchmarks/RESULTS.md.

Run with ``make bench`` (or ``python benchmarks/run.py [--quick]``). Sections:

1. parameter counts against the publishers' figures;
2. analytical step estimates per second on one core;
3. routing arithmetic (busiest GPU, distinct experts) against Monte Carlo;
4. the roofline against real H100 SXM kernel timings (AIConfigurator's
   database in ../shared/data/aiconfigurator-h100-sxm; skipped when absent):
   a roofline is a lower bound, so measured time / roofline time should be >= 1;
5. the calibrated cost model's held-out error on the H100 reference kernels;
6. the same on this CPU's own kernels (profiled here; needs torch), and the
   skew model (`benchmarks/calibration.py`);
7. the same on our own H100 SXM tables (profiling/data/h100-sxm), and how
   well a calibration on them predicts the AIConfigurator H100 kernels;
8. training against published runs (`benchmarks/training.py`);
9. expert placement, the ILP against EPLB (`benchmarks/placement.py`);
10. sweeps: analytical points per second, a discrete-event capacity sweep
    locally and on Dask, resume after kill -9 (`benchmarks/sweep.py`);
11. the dashboard's first render per page (`benchmarks/dashboard.py`);
12. serving against real vLLM runs, before and after ``moesim fit-engine`` (`benchmarks/serving_validation.py`).

Sections 13-34 of RESULTS.md come from standalone scripts, not run here: `benchmarks/skew.py`,
`benchmarks/kernel_identity.py`, `benchmarks/transfer.py`, `benchmarks/alltoall.py`, `benchmarks/train_memory.py`,
`benchmarks/des_speed.py`, `benchmarks/drift.py`, `benchmarks/achievable.py`, `benchmarks/engines.py` (27),
`benchmarks/moe_published.py` (28), `benchmarks/moe_vllm_runs.py` (29), `benchmarks/overload.py` (31) and
`benchmarks/gpu_pairs.py` (32), `benchmarks/stage_errors.py` (33) and `benchmarks/a100_kernels.py` (34, with
AIConfigurator's A100 and L40S tables fetched as its docstring says) (and the
Llama-4 rows of section 1, the kernel tables of `profiling/data/cpu-epyc-train`, the trace-import coverage of
tests/test_trace_import.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.calibration import (  # noqa: E402
    bench_calibration_cpu,
    bench_calibration_h100,
    bench_calibration_h100_tables,
)
from benchmarks.dashboard import bench_dashboard  # noqa: E402
from benchmarks.placement import bench_placement  # noqa: E402
from benchmarks.serving_validation import bench_serving_validation, replace_section  # noqa: E402
from benchmarks.sweep import bench_sweep  # noqa: E402
from benchmarks.training import bench_training  # noqa: E402
from moesim.model import (  # noqa: E402
    Batch,
    Layout,
    Precision,
    RooflineCostModel,
    count_params,
    estimate_step,
    experts_op,
    gemm,
    get_cluster,
    get_gpu,
    gpu_loads,
    load_model,
    local_cpu,
    make_cluster,
    preset_names,
    published_active,
    published_params,
)

DATA = ROOT.parent / "shared" / "data" / "aiconfigurator-h100-sxm"


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def bench_params() -> tuple[str, dict]:
    pub = published_params().set_index("model")
    rows, worst_total = [], 0.0
    for name in preset_names():
        c = count_params(load_model(name))
        p = pub.loc[name]
        te = (c.total + p["not_modelled"]) / p["total"] - 1  # + the vision tower Llama 4's totals count
        ae = published_active(c, p["convention"]) / p["active"] - 1
        worst_total = max(worst_total, abs(te))
        rows.append(
            f"| {name} | {c.total / 1e9:.2f} | {p['total'] / 1e9:g} | {te:+.2%} | "
            f"{published_active(c, p['convention']) / 1e9:.3f} | {p['active'] / 1e9:g} | {ae:+.2%} | "
            f"{p['convention']} |"
        )
    text = [
        "## 1. Parameter counts against published figures",
        "",
        "Target: totals within 1%. Actives are compared in each publisher's convention (`all`: input",
        "embedding and LM head counted; `excl_input`: input embedding left out); most are published",
        "with two significant figures.",
        "",
        "| model | total (B) | published | error | active (B) | published | error | convention |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Largest total error: {worst_total:.2%} (target 1%: {'met' if worst_total <= 0.01 else 'MISSED'}).",
        "",
    ]
    return "\n".join(text), {"worst_total_error": worst_total}


def bench_speed(quick: bool) -> tuple[str, dict]:
    cluster = get_cluster("hgx-h200-x8")
    configs = []
    for name in ("mixtral-8x7b", "deepseek-v3", "qwen3-235b-a22b", "gpt-oss-120b", "llama-3-70b"):
        m = load_model(name)
        for lay in (
            Layout(tp=8),
            Layout(tp=8, ep=8) if m.is_moe else Layout(tp=4, pp=2),
            Layout(tp=1, dp_attn=8, ep=8) if m.is_moe else Layout(tp=8, pp=2),
        ):
            for batch in (Batch.decode(b, 4096) for b in (1, 16, 64, 256)):
                configs.append((m, batch, lay))
            configs.append((m, Batch.prefill(4, 4096), lay))
    precision = Precision(weights="fp8")
    t0 = time.perf_counter()
    for m, b, lay in configs:  # first pass: routing caches cold
        estimate_step(m, b, lay, cluster, precision)
    cold = time.perf_counter() - t0
    reps = 2 if quick else 10
    t0 = time.perf_counter()
    for _ in range(reps):
        for m, b, lay in configs:
            estimate_step(m, b, lay, cluster, precision)
    warm = time.perf_counter() - t0
    n = len(configs)
    per_s = n * reps / warm
    text = [
        "## 2. Analytical step estimates per second (one core)",
        "",
        f"{n} configurations (5 models x 3 layouts x 5 batches, fp8, 64 H200s): "
        f"first pass {n / cold:,.0f} estimates/s (routing caches cold), then {per_s:,.0f} estimates/s "
        f"over {reps} passes. Each estimate decomposes the step into ops and times them on the roofline.",
        "",
    ]
    return "\n".join(text), {"estimates_per_s": per_s, "cold_per_s": n / cold}


def bench_routing() -> tuple[str, dict]:
    rng = np.random.default_rng(1)
    rows, worst = [], 0.0
    for tokens, experts, k, gpus, alpha in (
        (64, 64, 8, 8, 0.0),
        (256, 256, 8, 32, 0.0),
        (1024, 128, 8, 8, 0.0),
        (256, 64, 6, 8, 1.0),
        (2048, 256, 8, 16, 0.8),
    ):
        weights = 1.0 / np.arange(1, experts + 1) ** alpha
        big = np.argpartition(-(np.log(weights) + rng.gumbel(size=(200_000 // k, experts))), k - 1, axis=1)[:, :k]
        loads = np.bincount(big.ravel(), minlength=experts) / big.size if alpha else None
        trials = max(20, 60_000 // tokens)
        maxes = []
        for _ in range(trials):
            g = np.log(weights) + rng.gumbel(size=(tokens, experts))
            picks = np.argpartition(-g, k - 1, axis=1)[:, :k]
            maxes.append(np.bincount(picks.ravel() // (experts // gpus), minlength=gpus).max())
        mc = float(np.mean(maxes))
        model = gpu_loads(tokens, k, gpus, loads=loads, num_experts=experts).busiest_pairs
        err = model / mc - 1
        worst = max(worst, abs(err))
        rows.append(f"| {tokens} | {experts} | {k} | {gpus} | {alpha:g} | {mc:.1f} | {model:.1f} | {err:+.2%} |")
    text = [
        "## 3. Busiest GPU's routed pairs: model against Monte Carlo",
        "",
        "Expected (token, expert) pairs on the busiest of `gpus` expert-parallel GPUs; skew is a",
        "power law with exponent alpha over expert popularity (0: uniform).",
        "",
        "| tokens | experts | top-k | gpus | alpha | Monte Carlo | model | error |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Largest error: {worst:.2%}.",
        "",
    ]
    return "\n".join(text), {"worst_busiest_error": worst}


def _violations(label: str, sub: pd.DataFrame, measured_s: np.ndarray, roofline_s: np.ndarray) -> str | None:
    """Describe the rows that beat the roofline: their bound and largest operand."""
    bad = measured_s < roofline_s
    if not bad.any():
        return None
    v = sub[bad]
    largest = (np.maximum.reduce([v["m"] * v["k"], v["k"] * v["n"], v["m"] * v["n"]]) * 2).max() / 1e6
    return (
        f"- {label}: {int(bad.sum())} of {len(sub):,} rows beat the roofline by up to "
        f"{1 - (measured_s / roofline_s).min():.0%}; all have n <= {int(v['n'].max())} and operands of at most "
        f"{largest:.0f} MB (bf16), small enough to stay in the H100's 50 MB L2 between the harness's repetitions."
    )


def _ratio_rows(label: str, measured_s: np.ndarray, roofline_s: np.ndarray) -> str:
    ratio = measured_s / roofline_s
    q = np.percentile(ratio, [10, 50, 90])
    return (
        f"| {label} | {len(ratio):,} | {np.mean(ratio >= 1):.2%} | {ratio.min():.2f} | {q[0]:.2f} | "
        f"{q[1]:.2f} | {q[2]:.2f} |"
    )


def bench_real_h100(quick: bool) -> tuple[str, dict]:
    if not DATA.is_dir():
        return (
            "## 4. Roofline against real H100 kernels\n\nSkipped: ../shared/data/aiconfigurator-h100-sxm "
            "is not present.\n",
            {},
        )
    gpu = get_gpu("H100-SXM")
    one = make_cluster(gpu, gpus_per_node=1, nodes=1)
    rm = RooflineCostModel()
    rows, stats, notes = [], {}, []
    g = pd.read_parquet(DATA / "gemm_perf.parquet")
    m = pd.read_parquet(DATA / "moe_perf.parquet")
    if quick:
        g, m = g.sample(5000, random_state=0), m.sample(2000, random_state=0)
    for dtype, label in (("bfloat16", "bf16"), ("fp8", "fp8"), ("fp8_block", "fp8")):
        sub = g[g["gemm_dtype"] == dtype]
        wb = 2.0 if label == "bf16" else 1.0
        roof = np.array(
            [
                rm.op_time(gemm("gemm", "", 1, int(r.m), int(r.n), int(r.k), wb, wb, label), one).seconds
                for r in sub.itertuples()
            ]
        )
        meas = sub["latency"].to_numpy() / 1e3
        rows.append(_ratio_rows(f"GEMM {dtype}", meas, roof))
        note = _violations(f"GEMM {dtype}", sub, meas, roof)
        notes += [note] if note else []
        stats[f"gemm_{dtype}_lower_bound_share"] = float(np.mean(meas >= roof))
    for dtype, weights, peak in (
        ("bfloat16", "bf16", "bf16"),
        ("fp8", "fp8", "fp8"),
        ("fp8_block", "fp8", "fp8"),
        ("int4_wo", "int4", "bf16"),
    ):
        sub = m[m["moe_dtype"] == dtype]
        p = Precision(weights=weights)
        roof = np.array(
            [
                rm.op_time(
                    experts_op(
                        int(r.num_tokens),
                        int(r.hidden_size),
                        int(r.inter_size) // int(r.moe_tp_size),
                        int(r.topk),
                        int(r.num_experts),
                        int(r.moe_ep_size),
                        p,
                        peak,
                        balanced=True,
                    ),
                    one,
                ).seconds
                for r in sub.itertuples()
            ]
        )
        meas = sub["latency"].to_numpy() / 1e3
        rows.append(_ratio_rows(f"MoE layer {dtype}", meas, roof))
        if (meas < roof).any():
            notes.append(f"- MoE layer {dtype}: {int((meas < roof).sum())} rows beat the roofline.")
        stats[f"moe_{dtype}_lower_bound_share"] = float(np.mean(meas >= roof))
    text = [
        "## 4. Roofline against real H100 SXM kernel timings",
        "",
        "Measured latencies from AIConfigurator's kernel database (vLLM 0.19.0 kernels on an H100 SXM;",
        "see ../shared/data/aiconfigurator-h100-sxm/README.md) against moesim's roofline time for the",
        "same shape (GEMM: `model.gemm`; MoE layer: `model.experts_op` with balanced routing, the",
        "harness's distribution), with the H100-SXM preset's dense peaks and 3.35 TB/s. A ratio",
        "measured / roofline below 1 means the kernel beat the roofline.",
        "",
        "| kernels | rows | measured >= roofline | min ratio | p10 | median | p90 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *(notes or ["No measurement beat the roofline."]),
        "",
    ]
    return "\n".join(text), stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and sampled kernel tables")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = ap.parse_args()
    sections = []
    for name, fn in (
        ("parameter counts", bench_params),
        ("analytical speed", lambda: bench_speed(args.quick)),
        ("routing vs Monte Carlo", bench_routing),
        ("roofline vs real H100 kernels", lambda: bench_real_h100(args.quick)),
        ("calibration on H100 kernels", lambda: bench_calibration_h100(DATA, args.quick)),
        ("calibration on this CPU", lambda: bench_calibration_cpu(args.quick)),
        ("calibration on our H100 tables", lambda: bench_calibration_h100_tables(aic=DATA, quick=args.quick)),
        ("training vs published runs", lambda: bench_training(args.quick)),
        ("expert placement", lambda: bench_placement(args.quick)),
        ("sweeps", lambda: bench_sweep(args.quick)),
        ("dashboard first render", lambda: bench_dashboard(args.quick)),
        ("serving vs real vLLM runs", lambda: bench_serving_validation(args.quick)),
    ):
        log(name)
        t0 = time.perf_counter()
        text, _ = fn()
        sections.append(text)
        log(f"{name}: {time.perf_counter() - t0:.1f} s")
    cpu = local_cpu().name
    stamp = (
        f"Sections 1-12 written by `make bench` ({'--quick' if args.quick else 'full'}) on "
        f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {cpu}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. The other sections come from the standalone scripts named in them."
    )
    # each section in place of its earlier text; the sections the standalone scripts wrote are kept
    if not args.out.is_file():
        args.out.write_text(f"# moesim benchmark results\n\n{stamp}\n")
    for text in sections:
        number = int(re.match(r"## (\d+)\.", text.lstrip()).group(1))
        replace_section(args.out, number, text)
    old = args.out.read_text()
    _, _, rest = old.partition("\n## ")
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(f"# moesim benchmark results\n\n{stamp}\n\n## {rest}" if rest else old)
    tmp.replace(args.out)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
