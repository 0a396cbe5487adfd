"""The achievable cost model against real H100 SXM kernel tables, beside the roofline (`model.achievable`).

Every row of AIConfigurator's H100 SXM kernel database (vLLM 0.19 kernels, ``../shared/data/aiconfigurator-h100-sxm``,
imported with `profiling.aiconfigurator.import_aiconfigurator`) and of moesim's own H100 SXM tables
(``profiling/data/h100-sxm``: ``full-bf16``, ``quick-fp8_fp16``) is turned into its op (`profiling.opshapes.row_op`)
and timed by the roofline and by the achievable model on the H100-SXM preset. Per kernel family (kind, dtype,
kernel): rows, MAPE and P90 of the absolute percentage error, and the median predicted / measured (below 1: too
fast). Nothing is fitted: the achievable model's figures are the published ones in `model.achievable.ACHIEVABLE`.

Timing conventions differ (profiling/data/h100-sxm/README.md): AIConfigurator times kernels back to back (weights
of small GEMMs warm in the 50 MB L2), moesim's tables flush the L2 before each call and time it alone between CUDA
events (the events' cost is in the time).

A second check at the level of a whole decode step: Llama-3.2-1B, one sequence, bf16, on an H100 SXM. Hazy Research
("Look Ma, No Bubbles", hazyresearch.stanford.edu/blog/2025-05-27-no-bubbles) measured vLLM and SGLang at "at most
50%" of the H100's bandwidth on this workload (CUDA graphs on), the rest lost between some hundred small kernels.
The step's bytes over its predicted time, as a share of 3.35 TB/s, is printed for both models.

Run: ``python -m benchmarks.achievable [--max-rows N]`` (markdown on stdout; about a minute).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.model.achievable import AchievableCostModel
from moesim.model.hardware import get_gpu, make_cluster
from moesim.model.roofline import RooflineCostModel
from moesim.profiling.aiconfigurator import import_aiconfigurator
from moesim.profiling.opshapes import row_ops
from moesim.profiling.tables import read_table

ROOT = Path(__file__).resolve().parents[1]
OURS = [ROOT / "profiling" / "data" / "h100-sxm" / r for r in ("full-bf16", "quick-fp8_fp16")]
AIC_DATA = ROOT.parent / "shared" / "data" / "aiconfigurator-h100-sxm"
KINDS = ("gemm", "grouped_gemm", "attention", "memcpy")


def _families(folder: Path, label: str) -> list[tuple[str, str, pd.DataFrame]]:
    out = []
    for kind in KINDS:
        path = folder / f"{kind}.parquet"
        if not path.is_file():
            continue
        df, _ = read_table(path)
        for (dtype, impl), sub in df.groupby(["dtype", "impl"]):
            out.append((f"{label} {kind}", f"{dtype} {impl}", sub))
    return out


def score(families: list[tuple[str, str, pd.DataFrame]], max_rows: int) -> list[dict]:
    """Roofline and achievable APE per family (at most ``max_rows`` rows each, seed 0)."""
    one = make_cluster(get_gpu("H100-SXM"), gpus_per_node=1, nodes=1)
    models = {"roofline": RooflineCostModel(), "achievable": AchievableCostModel()}
    rows = []
    for where, fam, sub in families:
        if len(sub) > max_rows:
            sub = sub.sample(max_rows, random_state=0)
        kind = where.split()[-1]
        ops = row_ops(kind, sub)
        meas = sub["time_s"].to_numpy(float)
        row = {"table": where, "family": fam, "rows": len(sub)}
        for name, cm in models.items():
            pred = np.array([cm.op_time(op, one).seconds for op in ops])
            ape = np.abs(pred / meas - 1.0)
            row[name] = (float(np.mean(ape)), float(np.percentile(ape, 90)), float(np.median(pred / meas)))
        rows.append(row)
        print(f"bench: {where} {fam}: {len(sub)} rows", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| table | family | rows | roofline MAPE | P90 | median pred/meas | achievable MAPE | P90 | median pred/meas "
        "|\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        a, b = r["roofline"], r["achievable"]
        lines.append(
            f"| {r['table']} | {r['family']} | {r['rows']:,} | {a[0]:.1%} | {a[1]:.1%} | {a[2]:.2f} | "
            f"{b[0]:.1%} | {b[1]:.1%} | {b[2]:.2f} |"
        )
    return "\n".join(lines)


def llama_1b_decode() -> str:
    """Bandwidth share of a Llama-3.2-1B decode step (batch 1, 96 cached tokens) on an H100 SXM, per model. The
    config is Llama-3.1-8B's preset with Llama-3.2-1B's published sizes (hidden 2048, 16 layers, 32 heads, 8 KV
    heads, head_dim 64, FFN 8192, tied embeddings)."""
    import json

    from moesim.model import Batch, Layout, Precision, load_model
    from moesim.model.ops import kernel_launches
    from moesim.model.roofline import estimate_step

    cfg = json.loads((ROOT / "model" / "presets" / "llama-3.1-8b.json").read_text())
    cfg.update(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32)
    cfg.update(num_key_value_heads=8, head_dim=64, tie_word_embeddings=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(cfg))
        model = load_model(str(path))
    one = make_cluster(get_gpu("H100-SXM"), gpus_per_node=1, nodes=1)
    lines = ["| model | step | kernels | bytes | share of 3.35 TB/s |", "|---|---|---|---|---|"]
    for cm in (RooflineCostModel(), AchievableCostModel()):
        e = estimate_step(model, Batch.decode(1, 96), Layout(), one, Precision(), cm)
        moved = sum(o.bytes * o.count for o in e.ops)
        lines.append(
            f"| {cm.name} | {e.step_s * 1e3:.3f} ms | {kernel_launches(e.ops)} | {moved / 1e9:.2f} GB | "
            f"{moved / e.step_s / 3.35e12:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-rows", type=int, default=40_000, help="rows per family at most (sampled, seed 0)")
    args = ap.parse_args()
    families = []
    with tempfile.TemporaryDirectory() as tmp:
        if AIC_DATA.is_dir():
            import_aiconfigurator(AIC_DATA, Path(tmp) / "aic")
            families += _families(Path(tmp) / "aic", "aiconfigurator")
        for folder in OURS:
            families += _families(folder, f"moesim {folder.name}")
        print(markdown(score(families, args.max_rows)))
    print()
    print(llama_1b_decode())


if __name__ == "__main__":
    main()
