"""Benchmark sections 5 to 7: the calibrated cost model's error on shapes it was not fitted on.

5. The H100 SXM reference data (AIConfigurator's kernel database): import,
   calibrate on a random 80% of the shapes, measure the error on the other
   20%; repeated over several seeds of the split.
6. This machine's CPU: profile GEMMs and grouped GEMMs (``--quick`` grid),
   calibrate the same way, and predict the skewed grouped GEMMs from the
   balanced ones (the skew model).

7. Our own H100 SXM tables (``profiling/data/h100-sxm``, measured with
   ``moesim profile --device cuda``): the held-out error of a calibration on
   each profile run, then how well a calibration fitted on all of them
   predicts AIConfigurator's independent bf16 GEMM and fused-MoE latencies
   (the cross-check is skipped when ../shared/data is absent). Run alone:
   ``python -m benchmarks.calibration`` (prints the section).

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

from moesim.model.hardware import get_gpu, make_cluster
from moesim.profiling.aiconfigurator import import_aiconfigurator
from moesim.profiling.calibrate import CalibratedCostModel, calibrate
from moesim.profiling.opshapes import row_ops
from moesim.profiling.tables import read_table, table_files

TARGETS = {"gemm": 10.0, "grouped_gemm": 10.0}
ROOT = Path(__file__).resolve().parents[1]
H100_TABLES = ROOT / "profiling" / "data" / "h100-sxm"
AIC_DATA = ROOT.parent / "shared" / "data" / "aiconfigurator-h100-sxm"


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _label(p: object) -> str:
    """A predictor's ``method:k`` (its members' for an average of tied candidates)."""
    return p.label if getattr(p, "method", "") == "ensemble" else f"{p.method}:{p.k}"  # type: ignore[attr-defined]


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
            f"| {kind} | {dtype} | {impl} | {_label(fits[0].predictor)} | "
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
    from moesim.profiling.runner import profile

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


def _ape_stats(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Rows, median and 90th-percentile absolute % error, and the median predicted / measured ratio."""
    ratio = np.asarray(predicted, float) / np.asarray(measured, float)
    ape = np.abs(ratio - 1.0) * 100.0
    if not len(ape):
        return {"rows": 0, "median_ape": float("nan"), "p90_ape": float("nan"), "median_ratio": float("nan")}
    return {
        "rows": len(ape),
        "median_ape": float(np.median(ape)),
        "p90_ape": float(np.percentile(ape, 90)),
        "median_ratio": float(np.median(ratio)),
    }


def _runs(tables: Path) -> list[Path]:
    """The profile-run folders under ``tables`` (each holds one run's parquet tables)."""
    return sorted({f.parent for f in table_files([tables])})


def heldout_errors(tables: Path, seeds: list[int]) -> list[dict]:
    """Held-out error of a calibration on each profile run under ``tables``, per (kind, dtype, impl).

    Each run is calibrated on its own (runs of one dtype share shapes: pooling them would hold out shapes
    whose twin from the other run is fitted). The held-out rows of every seed are pooled.
    """
    out = []
    for run in _runs(tables):
        held: dict[tuple[str, str, str], list] = {}
        for s in seeds:
            for f in calibrate([run], holdout=0.2, seed=s).fits:
                held.setdefault((f.kind, f.dtype, f.impl), []).append(f)
        for (kind, dtype, impl), fits in held.items():
            h = pd.concat([f.holdout for f in fits], ignore_index=True)  # empty under 10 rows: nothing held out
            if h.empty:
                stats = _ape_stats(np.array([]), np.array([]))
            else:
                stats = _ape_stats(h["predicted_s"].to_numpy(), h["measured_s"].to_numpy())
            mape = float(np.mean([f.mape for f in fits])) if not h.empty else float("nan")
            out.append(
                {"run": run.name, "kind": kind, "dtype": dtype, "impl": impl, "rows_fit": fits[0].rows_fit}
                | {"method": _label(fits[0].predictor), "mape": mape}
                | {"held_out": fits[0].rows_holdout, "held_out_pooled": stats["rows"]}
                | {"median_ape": stats["median_ape"], "p90_ape": stats["p90_ape"]}
            )
    return out


def _buckets(values: pd.Series, name: str) -> pd.Series:
    edges = [0, 16, 256, 4096, np.inf]
    labels = [f"{name} <= 16", f"{name} 17..256", f"{name} 257..4096", f"{name} > 4096"]
    return pd.cut(values, edges, labels=labels)


def cross_check(tables: Path, aic: Path, dtype: str = "bf16") -> dict[str, dict]:
    """How well a calibration on ``tables`` predicts AIConfigurator's ``dtype`` GEMM and fused-MoE latencies.

    The calibration is fitted on every row of ``tables`` (no hold-out); each AIConfigurator row becomes the op
    the simulator would build (`profiling.opshapes.row_ops`) and `CalibratedCostModel` predicts it on an H100
    SXM. A prediction is ``measured`` where the shape lies inside our measured range, else ``roofline`` (the
    model falls back to the roofline there). Also the direct comparison where both measured the same shape:
    our median time / AIConfigurator's.

    Returns per kind: ``all``, ``measured``, ``roofline`` (`_ape_stats`), ``by_size`` (measured rows by m or
    tokens), ``fallback`` (why rows fell back) and ``same_shape`` (ratio stats of identical shapes).
    """
    model = CalibratedCostModel(calibrate([tables], holdout=0.0, seed=0))
    cluster = make_cluster(get_gpu("H100-SXM"), num_gpus=1)
    with tempfile.TemporaryDirectory() as tmp:
        import_aiconfigurator(aic, tmp)
        ref = {k: read_table(Path(tmp) / f"{k}.parquet")[0] for k in ("gemm", "grouped_gemm")}
    ours = {k: pd.concat([read_table(f)[0] for f in table_files([tables]) if f.stem == k]) for k in ref}
    out: dict[str, dict] = {}
    for kind, df in ref.items():
        df = df[df["dtype"] == dtype].reset_index(drop=True)
        times = [model.op_time(op, cluster) for op in row_ops(kind, df)]
        pred = np.array([t.seconds for t in times])
        source = pd.Series([t.source.split(":")[0] for t in times])
        why = pd.Series([t.source.split(":", 1)[1].strip() for t in times])
        why = why.map(lambda w: w.split("=")[0] if "=" in w.split()[0] else "no measured shape near")
        meas = df["time_s"].to_numpy()
        inside = (source == "measured").to_numpy()
        size = _buckets(df["m" if kind == "gemm" else "tokens"], "m" if kind == "gemm" else "tokens")
        by_size = {
            str(b): _ape_stats(pred[inside & (size == b).to_numpy()], meas[inside & (size == b).to_numpy()])
            for b in size.cat.categories
        }
        if kind == "gemm":
            keys, mine = ["m", "n", "k"], ours[kind][ours[kind]["dtype"] == dtype]
        else:
            keys = ["hidden", "inter", "experts", "top_k", "moe_tp", "ep", "tokens"]
            mine = ours[kind][(ours[kind]["dtype"] == dtype) & (ours[kind]["distribution"] == "balanced")]
            mine = mine[mine["impl"] == "triton_graph"]
        same = mine.groupby(keys, as_index=False)["time_s"].median().merge(df[[*keys, "time_s"]], on=keys)
        out[kind] = {
            "all": _ape_stats(pred, meas),
            "measured": _ape_stats(pred[inside], meas[inside]),
            "roofline": _ape_stats(pred[~inside], meas[~inside]),
            "by_size": by_size,
            "fallback": why[~inside].value_counts().head(4).to_dict(),
            "same_shape": _ape_stats(same["time_s_x"].to_numpy(), same["time_s_y"].to_numpy()),
        }
    return out


def _pct(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.1f}%"


def bench_calibration_h100_tables(
    tables: Path = H100_TABLES, aic: Path = AIC_DATA, quick: bool = False
) -> tuple[str, dict]:
    """Section 7 (see the module docstring)."""
    title = "## 7. Calibration on our own H100 SXM tables, and against AIConfigurator"
    runs = _runs(tables) if tables.is_dir() and any(tables.rglob("*.parquet")) else []
    if not runs:
        return f"{title}\n\nSkipped: no tables under {tables}.\n", {}
    seeds = [0] if quick else [0, 1, 2, 3, 4]
    t0 = time.perf_counter()
    _log(f"H100 tables: held-out error over seeds {seeds}")
    errors = heldout_errors(tables, seeds)
    meta = read_table(table_files([runs[0]])[0])[1]
    text = [
        title,
        "",
        f"Tables: {', '.join(r.name for r in runs)} under `{tables.relative_to(ROOT)}` ({meta.get('device')}, "
        f"driver {meta.get('driver')}, torch {meta.get('torch')}, triton {meta.get('triton')}). Each run is "
        f"calibrated on its own, `moesim calibrate RUN --holdout 0.2 --seed S` for seeds {seeds}; the held-out "
        "rows of all seeds are pooled. APE: absolute percentage error of the predicted time. A table of fewer "
        "than 10 rows is fitted whole (nothing held out: `-`).",
        "",
        "| run | kind | dtype | impl | method (seed 0) | fitted / held out (per seed) | median APE | P90 APE | MAPE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    text += [
        f"| {e['run']} | {e['kind']} | {e['dtype']} | {e['impl']} | {e['method']} | {e['rows_fit']} / "
        f"{e['held_out']} | {_pct(e['median_ape'])} | {_pct(e['p90_ape'])} | {_pct(e['mape'])} |"
        for e in errors
    ]
    stats: dict = {"heldout": errors}
    if not aic.is_dir():
        text += ["", "Cross-check skipped: ../shared/data/aiconfigurator-h100-sxm is not present.", ""]
        return "\n".join(text), stats
    _log("H100 tables: cross-check against AIConfigurator")
    xc = cross_check(tables, aic)
    stats["cross_check"] = xc
    text += [
        "",
        "**Cross-check.** A calibration fitted on all of these tables (`--holdout 0`) predicts every bf16 row of "
        "AIConfigurator's H100 SXM database (vLLM 0.19 kernels: cuBLAS GEMMs, `vllm_fused_moe`), imported with "
        "`moesim import`. `measured`: the shape is inside our measured range; `roofline`: outside it, where the "
        "model falls back to the roofline. Ratio: predicted / AIConfigurator (median). `same shape`: our "
        "measured time / theirs where both timed the identical shape (no model involved).",
        "",
        "| kind | rows | predicted from | rows | median APE | P90 APE | median ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, r in xc.items():
        for part in ("all", "measured", "roofline", "same_shape"):
            p = r[part]
            text.append(
                f"| {kind} | {r['all']['rows']:,} | {part.replace('_', ' ')} | {p['rows']:,} | "
                f"{_pct(p['median_ape'])} | {_pct(p['p90_ape'])} | {p['median_ratio']:.2f} |"
            )
        for b, p in r["by_size"].items():
            text.append(
                f"| {kind} | | measured, {b} | {p['rows']:,} | {_pct(p['median_ape'])} | {_pct(p['p90_ape'])} | "
                f"{p['median_ratio']:.2f} |"
            )
    fall = "; ".join(f"{k}: " + ", ".join(f"{w} {n:,}" for w, n in r["fallback"].items()) for k, r in xc.items())
    text += ["", f"Why rows fell back to the roofline (first feature out of range, or no shape near): {fall}.", ""]
    text.append(f"Section time: {time.perf_counter() - t0:.0f} s.")
    text.append("")
    return "\n".join(text), stats


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Section 7: calibration on our H100 tables and the cross-check.")
    ap.add_argument("--quick", action="store_true", help="one hold-out seed instead of five")
    ap.add_argument("--tables", type=Path, default=H100_TABLES)
    ap.add_argument("--aic", type=Path, default=AIC_DATA)
    args = ap.parse_args()
    print(bench_calibration_h100_tables(args.tables, args.aic, args.quick)[0])
