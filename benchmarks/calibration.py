"""Benchmark sections 5 and 6: the calibrated cost model's error on shapes it was not fitted on.

5. The H100 SXM reference data (AIConfigurator's kernel database): import,
   calibrate on a random 80% of the shapes, measure the error on the other
   20%; repeated over several seeds of the split.
6. This machine's CPU: profile GEMMs and grouped GEMMs (``--quick`` grid),
   calibrate the same way, and predict the skewed grouped GEMMs from the
   balanced ones (the skew model).

Targets (issue 3): held-out MAPE <= 10% for gemm and grouped GEMM (H100:
bf16 and fp8; CPU: fp32), skew model MAPE <= 15%.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from profiling.aiconfigurator import import_aiconfigurator
from profiling.calibrate import calibrate

TARGETS = {"gemm": 10.0, "grouped_gemm": 10.0}


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _table(cals: list, seeds: list[int]) -> tuple[list[str], dict[str, float]]:
    """Rows per fit: method, rows, MAPE at seed 0, mean and worst over the seeds, P90 at seed 0."""
    keyed: dict[str, list] = {}
    for cal in cals:
        for f in cal.fits:
            keyed.setdefault(f"{f.kind}|{f.dtype}|{f.impl}", []).append(f)
    lines, worst = [], {}
    for key, fits in keyed.items():
        kind, dtype, impl = key.split("|")
        mapes = np.array([f.mape for f in fits])
        target = TARGETS.get(kind)
        verdict = ("met" if mapes.mean() <= target else "**missed**") if target else "-"
        lines.append(
            f"| {kind} | {dtype} | {impl} | {fits[0].predictor.method}:{fits[0].predictor.k} | "
            f"{fits[0].rows_fit} / {fits[0].rows_holdout} | {fits[0].mape:.1f}% | {mapes.mean():.1f}% | "
            f"{mapes.max():.1f}% | {fits[0].p90:.1f}% | {(target and f'<= {target:.0f}%') or '-'} | {verdict} |"
        )
        worst[key] = float(mapes.mean())
    return lines, worst


HEADER = [
    "| kind | dtype | impl | method:k (seed 0) | fitted / held out | MAPE seed 0 | MAPE mean | MAPE worst "
    "| P90 APE seed 0 | target | |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def bench_calibration_h100(data: Path, quick: bool) -> tuple[str, dict]:
    """Section 5 (see the module docstring)."""
    title = "## 5. Calibrated cost model on the H100 reference kernels"
    if not data.is_dir():
        return f"{title}\n\nSkipped: ../shared/data/aiconfigurator-h100-sxm is not present.\n", {}
    seeds = [0] if quick else [0, 1, 2, 3, 4]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        import_aiconfigurator(data, tmp)
        cals = []
        for s in seeds:
            _log(f"H100 calibration, seed {s}")
            cals.append(calibrate([tmp], holdout=0.2, seed=s, kinds=["gemm", "grouped_gemm"]))
        wall = (time.perf_counter() - t0) / len(seeds)
    lines, stats = _table(cals, seeds)
    text = [
        title,
        "",
        "`moesim import ../shared/data/aiconfigurator-h100-sxm --out T && moesim calibrate T --out F "
        f"--holdout 0.2 --seed S`, for seeds {seeds}: each (kind, dtype, kernel) is fitted on a random 80% of "
        "its shapes (the method chosen by 5-fold cross-validation inside those 80%) and scored on the other 20%. "
        "MAPE and P90 are absolute percentage errors of the predicted time. fp8 includes the per-tensor "
        "(`vllm_default`, `vllm_fused_moe`) and the block-scaled (`:fp8_block`) kernels.",
        "",
        *HEADER,
        *lines,
        "",
        f"One import + calibration takes {wall:.0f} s on this machine.",
        "",
    ]
    return "\n".join(text), stats


def bench_calibration_cpu(quick: bool) -> tuple[str, dict]:
    """Section 6 (see the module docstring)."""
    title = "## 6. Calibrated cost model on this CPU's own kernels"
    try:
        import torch
    except ImportError:
        return f"{title}\n\nSkipped: torch is not installed (pip install 'moesim[profile]').\n", {}
    from profiling.runner import profile

    seeds = [0] if quick else [0, 1, 2, 3, 4]
    with tempfile.TemporaryDirectory() as tmp:
        _log("profiling this CPU (gemm, moe; quick grid)")
        run = profile("cpu", tmp, mode="quick", ops=["gemm", "moe"])
        cals = [calibrate([tmp], holdout=0.2, seed=s) for s in seeds]
        moe = pd.read_parquet(Path(tmp) / "grouped_gemm.parquet")
    lines, stats = _table(cals, seeds)
    skew = [c.skew for c in cals]
    skew_mape = np.array([s["mape"] for s in skew])
    naive = np.array([s["balanced_assumption_mape"] for s in skew])
    by = ", ".join(f"{k} {v:.1f}%" for k, v in skew[0]["by_distribution"].items())
    n_skew = int((moe["distribution"] != "balanced").sum())
    stats["skew_mape"] = float(skew_mape.mean())
    text = [
        title,
        "",
        f"`moesim profile --device cpu --quick --ops gemm,moe` ({run.meta['device']}, {run.meta['threads']} "
        f"threads, torch {torch.__version__}, fp32; {run.wall_s:.0f} s; measured peak "
        f"{run.hardware.peak('fp32') / 1e9:.0f} GFLOP/s, copy bandwidth {run.hardware.bandwidth() / 1e9:.1f} GB/s), "
        f"then calibrated as in section 5 for seeds {seeds}. Grouped GEMMs are the torch per-expert loop.",
        "",
        *HEADER,
        *lines,
        "",
        f"**Skew model** ({n_skew} grouped GEMMs with power-law token counts over the experts, predicted from "
        f"the balanced fit): MAPE {skew_mape[0]:.1f}% at seed 0, {skew_mape.mean():.1f}% mean over the seeds "
        f"(target <= 15%: {'met' if skew_mape.mean() <= 15 else '**missed**'}); by distribution at seed 0: {by}. "
        f"Treating the same layers as balanced would miss by {naive.mean():.1f}%.",
        "",
        "The noise floor: on this 2-core VM the median of 20 back-to-back calls of one GEMM varies by about 9% "
        "from one moment to the next, so a single profile's rows carry errors of that order; the profiler "
        "pools samples from several passes over the grid to average the drift out.",
        "",
    ]
    return "\n".join(text), stats
