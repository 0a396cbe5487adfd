"""The skew model: a grouped GEMM under imbalanced routing, predicted from balanced measurements.

What an imbalanced token distribution changes in a grouped GEMM over
experts: each expert's GEMMs run on its own token count (the busiest expert
runs longest), experts without tokens are skipped (their weights are not
read), and small counts waste the tile padding that balanced counts fill.
The model sums per-expert times:

    t(counts) = sum over experts e with counts[e] > 0 of  t_bal(counts[e]) / L

where t_bal(n) is the calibrated time of the same layer with all L local
experts receiving n pairs each (a balanced shape, so t_bal(n) / L is one
expert's share of it). This is exact for a loop of per-expert GEMMs and for
a fused kernel whose tiles are spread evenly over the device; it
underestimates a fused kernel whose busiest expert's tiles run alone at the
tail of the grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from moesim.model.errors import MoesimError
from moesim.model.hardware import make_cluster
from moesim.profiling.costmodel import CalibratedCostModel, Calibration
from moesim.profiling.opshapes import row_op


def predict_skewed(model: CalibratedCostModel, row: dict[str, Any], hardware_key: str) -> float:
    """Predicted time (s) of one grouped-GEMM row with ``expert_counts`` ([local experts] ints)."""
    counts = np.asarray(row["expert_counts"], dtype=float)
    local = len(counts)
    ep, top_k = int(row.get("ep", 1) or 1), int(row["top_k"])
    fit = next((f for f in model.calibration.fits if f.device_key == hardware_key and f.kind == "grouped_gemm"), None)
    if fit is None:
        raise MoesimError(
            f"no balanced grouped_gemm measurements of {hardware_key} to predict skewed ones from",
            "profile with --ops moe (it times balanced and skewed distributions)",
        )
    cluster = make_cluster(fit.hardware, num_gpus=1)
    total = 0.0
    for n in np.unique(counts[counts > 0]):
        same = int((counts == n).sum())
        bal = {**row, "tokens": n * local * ep / top_k, "pairs": n * local, "active_experts": local}
        total += same * model.op_time(row_op("grouped_gemm", bal), cluster).seconds / local
    return total


def skew_error(cal: Calibration, skewed: pd.DataFrame, hardware_key: str) -> dict[str, Any]:
    """MAPE (%) of `predict_skewed` on measured skewed rows, per distribution and overall."""
    if "expert_counts" not in skewed.columns:
        return {"rows": 0, "note": "skewed rows carry no expert_counts"}
    impl = str(skewed["impl"].iloc[0])
    skewed = skewed[skewed["impl"] == impl]
    fits = [f for f in cal.fits if f.kind == "grouped_gemm" and f.impl == impl and f.device_key == hardware_key]
    if not fits:
        return {"rows": 0, "note": f"no balanced {impl} grouped_gemm rows to predict the skewed ones from"}
    model = CalibratedCostModel(type(cal)(fits))  # the balanced fit of the same kernel
    rows = skewed.to_dict("records")
    pred = np.array([predict_skewed(model, r, hardware_key) for r in rows])
    meas = skewed["time_s"].to_numpy(float)
    ape = np.abs(pred / meas - 1.0) * 100
    by = pd.Series(ape).groupby(skewed["distribution"].to_numpy()).mean()
    # the naive alternative: the balanced time of the same total pairs (ignores the skew)
    naive = np.array([_balanced_same_total(model, r, hardware_key) for r in rows])
    return {
        "impl": impl,
        "rows": len(rows),
        "mape": round(float(ape.mean()), 3),
        "p90_ape": round(float(np.percentile(ape, 90)), 3),
        "by_distribution": {k: round(float(v), 3) for k, v in by.items()},
        "balanced_assumption_mape": round(float((np.abs(naive / meas - 1.0) * 100).mean()), 3),
    }


def _balanced_same_total(model: CalibratedCostModel, row: dict[str, Any], hardware_key: str) -> float:
    counts = np.asarray(row["expert_counts"], dtype=float)
    bal = {**row, "distribution": "balanced", "expert_counts": [counts.sum() / len(counts)] * len(counts)}
    return predict_skewed(model, bal, hardware_key)
