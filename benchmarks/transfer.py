"""Transfer of a calibration to another GPU: cross-transfer between two independent H100 SXM measurements, and the
derated H100 -> H200 transfer (`profiling.transfer`).

1. **Cross-transfer (the floor of what transfer can do).** AIConfigurator's H100 SXM kernel database (vLLM 0.19
   kernels, ``../shared/data/aiconfigurator-h100-sxm``) and moesim's own H100 SXM tables
   (``profiling/data/h100-sxm``: ``full-bf16``, ``quick-fp8_fp16``; torch/cuBLAS and our Triton fused MoE) measure
   one GPU with different software. Each side is calibrated on all its rows; the fit of a kernel family then
   predicts the other side's rows of that family, in both directions, three ways:

   (a) carrying the fit over (measured / roofline ratio times the target's roofline),
   (b) the derated transfer (the achieved-bandwidth gain on the part of the time the achieved roofline explains),
   (c) reusing the source time unchanged.

   The target is the same GPU (a copy of the H100 SXM spec under another key, so the cost model takes its transfer
   path; for (b) it is given the H100's own achieved bandwidth): all three agree by construction, and their error
   is what transfer cannot do better than: the software difference between two measurements of one GPU. Only rows
   the source's fit answers (inside its measured range) count; the coverage is reported. These errors are the
   uncertainty bands (`profiling.transfer.TRANSFER_BANDS`) a transferred prediction carries.

2. **H100 -> H200, predicted gain per family** (no H200 measurement in the tree to score against): the median
   speed-up t(H100) / t(H200) each way predicts for the rows of every measured family: (a) carrying the ratio,
   (b) derated, (c) unchanged (1.00).

Run: ``python -m benchmarks.transfer`` (prints the markdown; ``--quick``: 1,000 rows per pair). Units: APE in %.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.model.hardware import get_gpu, make_cluster
from moesim.profiling import transfer
from moesim.profiling.aiconfigurator import import_aiconfigurator
from moesim.profiling.calibrate import calibrate
from moesim.profiling.costmodel import CalibratedCostModel, Calibration, Fit, source_class
from moesim.profiling.opshapes import row_ops
from moesim.profiling.tables import read_table

ROOT = Path(__file__).resolve().parents[1]
OURS = [ROOT / "profiling" / "data" / "h100-sxm" / r for r in ("full-bf16", "quick-fp8_fp16")]
AIC_DATA = ROOT.parent / "shared" / "data" / "aiconfigurator-h100-sxm"
KINDS = ["gemm", "grouped_gemm"]
#: (family, our impl, AIConfigurator's impl): the same kernel family measured by both (fp8: per-tensor scales).
PAIRS = [("gemm/bf16", "torch", "vllm_default"), ("gemm/fp8", "torch", "vllm_default")]
PAIRS += [("grouped_gemm/bf16", "triton_graph", "vllm_fused_moe")]
TARGET_KEY = "H100-SXM (target)"


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _rows(paths: list[Path], kind: str, dtype: str, impl: str) -> pd.DataFrame:
    """Balanced rows of ``kind``/``dtype`` measured as ``impl`` (or ``impl:variant``) in the tables under ``paths``."""
    frames = []
    for p in paths:
        f = p / f"{kind}.parquet"
        if f.is_file():
            frames.append(read_table(f)[0])
    df = pd.concat(frames, ignore_index=True)
    df = df[(df["dtype"] == dtype) & (df["impl"].astype(str).str.split(":").str[0] == impl)]
    if "distribution" in df:
        df = df[df["distribution"].astype(str) == "balanced"]
    return df.reset_index(drop=True)


def _fit(cal: Calibration, kind: str, dtype: str, impl: str) -> Fit:
    hits = [f for f in cal.fits if f.kind == kind and f.dtype == dtype and f.impl.split(":")[0] == impl]
    assert hits, f"no {kind}/{dtype}/{impl} fit"
    return hits[0]


def _in_range(source: str) -> bool:
    """Whether a table's time answers its op inside the measured range: not followed along the table's edge beyond
    it (``edge ...``, `CalibratedCostModel._edge`) nor clamped to it (``clamped ...``), which is extrapolation, not
    the move between GPUs the band measures."""
    return not source.startswith(("edge ", "clamped "))


def _predict(fit: Fit, ops: list) -> dict[str, np.ndarray]:
    """Times of ``ops`` from ``fit`` (s): (c) on the H100 itself, (a) carried and (b) derated to the renamed copy.

    ``ok``: the rows the fit answers (measured on the H100, transferred to the copy).
    """
    h100 = get_gpu("H100-SXM")
    same, target = make_cluster(h100, num_gpus=1), make_cluster(h100.model_copy(update={"key": TARGET_KEY}), num_gpus=1)
    table = transfer.ACHIEVED_BW
    times: dict[str, list] = {}
    # (a): the copy has no achieved-bandwidth figure, the ratio is carried; (b): it has the H100's own
    for mode, achieved in (("a", table), ("b", {**table, TARGET_KEY: table["H100-SXM"]})):
        transfer.ACHIEVED_BW = achieved
        try:
            model = CalibratedCostModel(Calibration([fit], transfer_bands={}))
            times[mode] = [model.op_time(op, target) for op in ops]
        finally:
            transfer.ACHIEVED_BW = table
    model = CalibratedCostModel(Calibration([fit], transfer_bands={}))
    times["c"] = [model.op_time(op, same) for op in ops]
    answered = [
        source_class(c.source) == "measured" and source_class(b.source) == "transferred"
        for c, b in zip(times["c"], times["b"], strict=True)
    ]
    ok = [a and _in_range(c.source) for a, c in zip(answered, times["c"], strict=True)]
    beyond = [a and not _in_range(c.source) for a, c in zip(answered, times["c"], strict=True)]
    assert all("derated" in t.source for t, good in zip(times["b"], ok, strict=True) if good)
    out = {m: np.array([t.seconds for t in ts]) for m, ts in times.items()}
    return out | {"ok": np.asarray(ok, bool), "beyond": np.asarray(beyond, bool)}


def _ape(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.abs(pred / meas - 1.0) * 100.0


def cross_transfer(aic: Path, limit: int, seed: int = 0) -> tuple[pd.DataFrame, dict[str, list[float]]]:
    """Section 1: one row per (direction, family), and the errors of (b) per family (fractions) for the bands."""
    with tempfile.TemporaryDirectory() as tmp:
        import_aiconfigurator(aic, tmp)
        _log("calibrating AIConfigurator's H100 tables and ours")
        cal = {"aiconfigurator": calibrate([tmp], holdout=0.0, seed=seed, kinds=KINDS)}
        cal["moesim"] = calibrate(OURS, holdout=0.0, seed=seed, kinds=KINDS)
        rows = {
            (side, fam): _rows([Path(tmp)] if side == "aiconfigurator" else OURS, *fam.split("/"), impl)
            for fam, mine, theirs in PAIRS
            for side, impl in (("moesim", mine), ("aiconfigurator", theirs))
        }
    lines, errors = [], {}
    rng = np.random.default_rng(seed)
    for fam, mine, theirs in PAIRS:
        kind, dtype = fam.split("/")
        impls = {"moesim": mine, "aiconfigurator": theirs}
        for src, dst in (("aiconfigurator", "moesim"), ("moesim", "aiconfigurator")):
            df = rows[(dst, fam)]
            if len(df) > limit:
                df = df.iloc[np.sort(rng.choice(len(df), limit, replace=False))].reset_index(drop=True)
            t0 = time.perf_counter()
            p = _predict(_fit(cal[src], kind, dtype, impls[src]), row_ops(kind, df))
            meas, ok = df["time_s"].to_numpy(float), p["ok"]
            assert np.allclose(p["a"][ok], p["c"][ok], rtol=1e-9) and np.allclose(p["b"][ok], p["c"][ok], rtol=1e-9)
            e = {m: _ape(p[m][ok], meas[ok]) for m in "abc"}
            errors.setdefault(fam, []).extend((e["b"] / 100.0).tolist())
            far = p["beyond"]  # rows answered only by following the table beyond its range: a band of their own
            errors.setdefault(transfer.BEYOND + fam, []).extend((_ape(p["b"][far], meas[far]) / 100.0).tolist())
            lines.append(
                {"family": fam, "src": f"{src} {impls[src]}", "dst": f"{dst} {impls[dst]}", "rows": int(ok.sum())}
                | {"of": len(df), "median_ratio": float(np.median(p["b"][ok] / meas[ok]))}
                | {f"{m}_{s}": f(e[m]) for m in "abc" for s, f in (("mape", np.mean), ("p90", _p90))}
            )
            _log(f"{fam} {src} -> {dst}: {ok.sum()} of {len(df)} rows in {time.perf_counter() - t0:.1f} s")
    return pd.DataFrame(lines), errors


def _p90(x: np.ndarray) -> float:
    return float(np.percentile(x, 90)) if len(x) else float("nan")


def h200_gains(aic: Path, limit: int, seed: int = 0) -> pd.DataFrame:
    """Section 2: median predicted speed-up H100 -> H200 per family, carried vs derated."""
    h100, h200 = make_cluster(get_gpu("H100-SXM"), num_gpus=1), make_cluster(get_gpu("H200-SXM"), num_gpus=1)
    out = []
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        import_aiconfigurator(aic, tmp)
        sides = {"aiconfigurator": [Path(tmp)], "moesim": OURS}
        for side, paths in sides.items():
            cal = calibrate(paths, holdout=0.0, seed=seed, kinds=[*KINDS, "attention"] if side == "moesim" else KINDS)
            for fit in cal.fits:
                if fit.impl == "torch_loop":
                    continue  # host-bound Python loop: not a kernel family an engine runs
                df = _rows(paths, fit.kind, fit.dtype, fit.impl.split(":")[0])
                if len(df) > limit:
                    df = df.iloc[np.sort(rng.choice(len(df), limit, replace=False))].reset_index(drop=True)
                model = CalibratedCostModel(Calibration([fit]))
                ops = row_ops(fit.kind, df)
                t100 = np.array([model.op_time(op, h100).seconds for op in ops])
                derated = [model.op_time(op, h200) for op in ops]
                t200b = np.array([t.seconds for t in derated])
                ok = np.array([source_class(t.source) == "transferred" for t in derated])
                table = transfer.ACHIEVED_BW
                transfer.ACHIEVED_BW = {k: v for k, v in table.items() if k != "H200-SXM"}  # (a): ratio carried
                try:
                    carried = CalibratedCostModel(Calibration([fit]))
                    t200a = np.array([carried.op_time(op, h200).seconds for op in ops])
                finally:
                    transfer.ACHIEVED_BW = table
                ga, gb = t100[ok] / t200a[ok], t100[ok] / t200b[ok]
                pair = (h100.gpu, h200.gpu)
                share = np.array([transfer.derated_seconds(op, t, *pair)[1] for op, t in zip(ops, t100, strict=True)])
                out.append(
                    {"side": side, "family": f"{fit.kind}/{fit.dtype}", "impl": fit.impl, "rows": int(ok.sum())}
                    | {"a_median": float(np.median(ga)), "a_p10": _pct(ga, 10), "a_p90": _pct(ga, 90)}
                    | {"b_median": float(np.median(gb)), "b_p10": _pct(gb, 10), "b_p90": _pct(gb, 90)}
                    | {"share": float(np.median(share[ok]))}
                )
    return pd.DataFrame(out)


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def markdown(cross: pd.DataFrame, bands: dict, gains: pd.DataFrame, limit: int, wall: float) -> str:
    """Both sections as markdown."""
    text = ["## Transfer between GPUs: cross-transfer floor and derated H100 -> H200", ""]
    text += [
        f"`python -m benchmarks.transfer` ({wall:.0f} s): at most {limit:,} target rows per family and direction "
        "(seed 0), rows the source's fit answers only. (a) carry the fit's ratio over, (b) derated transfer, "
        "(c) reuse the source time; both sides are the H100 SXM, so (a) = (b) = (c) by construction (checked).",
        "",
        "| family | from | to | rows (of) | (a) MAPE | (a) P90 | (b) MAPE | (b) P90 | (c) MAPE | (c) P90 "
        "| median predicted / measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cross.itertuples():
        text.append(
            f"| {r.family} | {r.src} | {r.dst} | {r.rows:,} ({r.of:,}) | {r.a_mape:.1f}% | {r.a_p90:.1f}% "
            f"| {r.b_mape:.1f}% | {r.b_p90:.1f}% | {r.c_mape:.1f}% | {r.c_p90:.1f}% | {r.median_ratio:.2f} |"
        )
    text += ["", "Bands (both directions pooled; P50 / P90 absolute error, what `TRANSFER_BANDS` holds):", ""]
    text += ["| family | rows | P50 | P90 |", "|---|---|---|---|"]
    text += [f"| {k} | {v['rows']:,} | {v['p50']:.1%} | {v['p90']:.1%} |" for k, v in bands.items()]
    text += [
        "",
        "Predicted speed-up H100 SXM -> H200 (t(H100) / t(H200); median, P10..P90 over the family's rows):",
        "",
    ]
    text += [
        "| side | family | impl | rows | share of the H100 time the achieved roofline explains (median) "
        "| (a) carried | (b) derated | (c) unchanged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in gains.itertuples():
        text.append(
            f"| {r.side} | {r.family} | {r.impl} | {r.rows:,} | {r.share:.0%} "
            f"| {r.a_median:.2f} ({r.a_p10:.2f}..{r.a_p90:.2f}) "
            f"| {r.b_median:.2f} ({r.b_p10:.2f}..{r.b_p90:.2f}) | 1.00 |"
        )
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run both sections and print the markdown (and the bands as Python for `TRANSFER_BANDS`)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 target rows per family and direction")
    ap.add_argument("--data", type=Path, default=AIC_DATA, help="the AIConfigurator H100 SXM folder")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"Skipped: {args.data} is not present.")
        return
    limit = 1000 if args.quick else 4000
    t0 = time.perf_counter()
    cross, errors = cross_transfer(args.data, limit)
    bands = transfer.bands_from_errors(errors)
    gains = h200_gains(args.data, limit)
    print(markdown(cross, bands, gains, limit, time.perf_counter() - t0))
    short = {k: {"p50": round(v["p50"], 4), "p90": round(v["p90"], 4), "rows": v["rows"]} for k, v in bands.items()}
    print("TRANSFER_BANDS =", short)


if __name__ == "__main__":
    main()
