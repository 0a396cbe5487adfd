"""Kernel identity and grouped-GEMM alignment on the real H100 kernel database (issue 20, items 3 and 4).

Reads ../shared/data/aiconfigurator-h100-sxm (AIConfigurator's vLLM 0.19 kernels on an H100 SXM; skipped when
absent) and prints two markdown tables:

1. Per kernel (bf16, per-tensor fp8, block-scaled fp8, int4 Marlin), GEMM and MoE: the held-out error of the
   public cost model (`CalibratedCostModel.op_time`, which now times each quantisation with its own fit) against
   the error of timing the same held-out rows with the per-tensor fp8 fit (the fit the old fastest-kernel choice
   gave block-scaled fp8 ops). 20% of each table's rows are held out (seed 0); the fits see the rest.
2. Grouped GEMM with and without the alignment flags (expert width and hidden size modulo 16, 64, 128): the
   held-out error (same split, same method choice) over all rows and over rows whose expert width after the TP
   split is not a multiple of 64, and leave-one-width-out: every misaligned expert width predicted by a fit that
   never saw that width.

Run: .venv/bin/python benchmarks/kernel_identity.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.model import make_cluster
from moesim.model.hardware import HardwareSpec
from moesim.profiling import fit as fitlib
from moesim.profiling.aiconfigurator import import_aiconfigurator
from moesim.profiling.calibrate import calibrate
from moesim.profiling.costmodel import CalibratedCostModel, Fit, reference_times
from moesim.profiling.opshapes import FEATURES, feature_matrix, row_ops
from moesim.profiling.tables import load_tables, write_table

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "aiconfigurator-h100-sxm"
KINDS = ("gemm", "grouped_gemm")
SEED = 0


def _split(df: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """20% of the rows of each (op, dtype, impl) held out: (train, test)."""
    test = np.zeros(len(df), bool)
    for _, idx in df.groupby(["op", "dtype", "impl"]).indices.items():
        pick = rng.permutation(idx)[: round(0.2 * len(idx))]
        test[pick] = True
    return df[~test], df[test]


def _ape(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    return np.abs(pred / true - 1.0) * 100.0


def _by_fit(f: Fit, df: pd.DataFrame, kind: str) -> np.ndarray:
    """Times of ``df``'s rows as ``f`` predicts them (its ratio on the rows' own roofline), s."""
    ops = row_ops(kind, df)
    ref, _ = reference_times(ops, f.hardware)
    return np.exp(f.predictor.predict(feature_matrix(ops))) * (ref + f.floor_s)


def kernel_table(tables: Path, tmp: Path) -> str:
    """Table 1 (see the module docstring)."""
    rng = np.random.default_rng(SEED)
    train_dir, rows = tmp / "train", []
    train_dir.mkdir()
    tests = {}
    for df, meta, path in load_tables([tables]):
        kind = str(df["op"].iloc[0])
        if kind not in KINDS:
            continue
        df = df[df.get("distribution", pd.Series("balanced", index=df.index)).astype(str) == "balanced"]
        train, test = _split(df.reset_index(drop=True), rng)
        write_table(train.reset_index(drop=True), train_dir / path.name, meta)
        tests[kind] = test
    cal = calibrate([train_dir], holdout=0.0, seed=SEED)
    cm = CalibratedCostModel(cal)
    hw: HardwareSpec = cal.fits[0].hardware
    cluster = make_cluster(hw, num_gpus=8)
    fp8 = {f.kind: f for f in cal.fits if f.dtype == "fp8" and ":" not in f.impl}
    out = [
        "| op | kernel (table dtype / impl) | held-out rows | own fit: MAPE % | P90 % | source of its times "
        "| per-tensor fp8 fit: MAPE % | P90 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, test in tests.items():
        for (dtype, impl), part in test.groupby(["dtype", "impl"], sort=True):
            ops = row_ops(kind, part)
            times = [cm.op_time(op, cluster) for op in ops]
            own = _ape(np.array([t.seconds for t in times]), part["time_s"].to_numpy())
            srcs = sorted({t.source.split(" (")[0] for t in times})
            other = _ape(_by_fit(fp8[kind], part, kind), part["time_s"].to_numpy())
            rows.append((kind, dtype, impl, len(part), own, other))
            out.append(
                f"| {kind} | {dtype} / {impl} | {len(part)} | {own.mean():.1f} | {np.percentile(own, 90):.1f} | "
                f"{'; '.join(srcs)} | {other.mean():.1f} | {np.percentile(other, 90):.1f} |"
            )
    return "\n".join(out)


def _fit_err(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """APE (%) on ``test`` of the method `fitlib.choose` picks on ``train`` (fixed seed)."""
    (method, k), _ = fitlib.choose(x[train], y[train], np.random.default_rng(SEED))
    pred = fitlib.fit(method, x[train], y[train], k)
    return fitlib.ape(pred.predict(x[test]), y[test])


def _mean(e: np.ndarray) -> str:
    """Mean of ``e`` to one decimal, ``-`` when there is none."""
    e = e[np.isfinite(e)]
    return f"{e.mean():.1f}" if e.size else "-"


def alignment_table(tables: Path) -> str:
    """Table 2 (see the module docstring)."""
    df, meta, _ = next((d, m, p) for d, m, p in load_tables([tables]) if str(d["op"].iloc[0]) == "grouped_gemm")
    df = df[df["distribution"].astype(str) == "balanced"]
    hw = HardwareSpec(**meta["hardware"])
    sizes = len(FEATURES["grouped_gemm"]) - 6  # the columns before the six alignment flags
    out = [
        "| table dtype | rows | misaligned widths (inter / moe_tp) | held-out MAPE %: without flags | with flags "
        "| held-out misaligned rows | their MAPE %: without | with | leave-one-width-out MAPE %: without | with |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dtype, _impl), part in df.groupby(["dtype", "impl"], sort=True):
        part = part.reset_index(drop=True)
        ops = row_ops("grouped_gemm", part)
        x = feature_matrix(ops)
        roof, _ = reference_times(ops, hw)
        times = part["time_s"].to_numpy(float)
        width = (part["inter"] // part["moe_tp"]).to_numpy()
        mis = width % 64 != 0
        order = np.random.default_rng(SEED).permutation(len(part))
        cut = round(0.2 * len(part))
        test, train = order[:cut], order[cut:]
        y = np.log(times / (roof + times[train].min()))
        errs = {}
        for label, cols in (("without", x[:, :sizes]), ("with", x)):
            e = _fit_err(cols, y, train, test)
            lowo = []
            for w in sorted(set(width[mis])):
                held = np.flatnonzero(width == w)
                lowo.append(_fit_err(cols, y, np.flatnonzero(width != w), held))
            errs[label] = (e, e[mis[test]], np.concatenate(lowo) if lowo else np.array([]))
        ws = ", ".join(str(w) for w in sorted(set(width[mis]))) or "none"
        a, b = ([_mean(e) for e in errs[label]] for label in ("without", "with"))
        out.append(
            f"| {dtype} | {len(part)} | {ws} | {a[0]} | {b[0]} | {int(mis[test].sum())} | "
            f"{a[1]} | {b[1]} | {a[2]} | {b[2]} |"
        )
    return "\n".join(out)


def main() -> int:
    if not DATA.is_dir():
        print(f"Skipped: {DATA} is not present.")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tables = Path(tmp) / "aic"
        import_aiconfigurator(DATA, tables)
        print("## Kernel identity: each quantisation timed by its own fit\n")
        print(kernel_table(tables, Path(tmp)))
        print("\n## Grouped-GEMM alignment flags\n")
        print(alignment_table(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
