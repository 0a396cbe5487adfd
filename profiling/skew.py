"""The skew model: one GPU's fused-MoE layer under imbalanced routing, predicted from balanced measurements.

What a fused-MoE kernel (vLLM's ``fused_moe``, SGLang's, ours in `profiling.triton_moe`) does on the busiest
GPU of an expert-parallel group, and what skew changes in it:

- token-dependent work, set by the batch's N tokens and the P (token, expert) pairs on this GPU, not by how
  the pairs are spread: the top-k ids are masked, sorted and padded by expert (``moe_align_block_size``), the
  pairs' rows are gathered and the outputs summed back per token (``moe_sum``);
- the launch floor: paid once per layer, whatever the spread;
- expert work, per active expert e with ``c_e`` pairs: its weights are read once (an expert without pairs
  is skipped), its ``c_e`` rows are padded to the kernel's row block, and its GEMMs run on them. This part
  is what skew moves: one hot expert runs a large GEMM, many cold ones read their weights for a few rows.

Write the layer's time as ``t = C(N, P) + sum_e g(c_e)``: C is the token-dependent work and the floor, g one
expert's work. A balanced measurement of the same N and P over ``P / n`` active experts of n pairs each is
``phi(n) = C(N, P) + (P / n) g(n)``, so ``g(n) = (n / P) (phi(n) - C)`` and, as the shares ``c_e / P`` sum
to 1,

    t(counts) = sum over active experts e of  (c_e / P) * phi(c_e)

a pair-weighted mean of balanced layers, each as busy per expert as e is: C and the floor are counted once
and at the real N, the weights are read once per real active expert, and each expert's GEMM efficiency is
that of a GEMM of its own size. With every active expert at n pairs it is ``phi(n)``, the balanced
measurement. `phi` is the calibrated cost model's time of the fused-MoE op at (N, P, ``P / n`` active
experts); beyond the measured range it keeps the fit's efficiency at the edge of the range and applies it
to the op's own roofline (`CalibratedCostModel.with_extrapolation`, source ``clamped``), so a hot expert
larger than any measured one is not timed at the bare roofline. An expert's work is convex in its pairs
(a weight read, then work per row), so the same pairs on the same active experts never take less time
skewed than balanced: the prediction is held at or above ``phi(P / A)`` for A active experts.

`predict_per_expert_sum` is the previous model, kept for comparison: each expert as 1/L of a balanced layer
of L experts at its count, with N grown to match (the token-dependent work and the roofline then grow with
the hot expert, and the floor is split across experts). `predict_balanced` is "assume balanced": the
balanced layer with the same pairs over every local expert.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from moesim.model.errors import MoesimError
from moesim.model.hardware import ClusterSpec, make_cluster
from moesim.profiling.costmodel import CalibratedCostModel, Calibration, Fit
from moesim.profiling.opshapes import row_op

__all__ = ["expert_counts_of", "predict_balanced", "predict_per_expert_sum", "predict_skewed", "skew_error"]


def expert_counts_of(row: dict[str, Any], where: str = "expert_counts") -> np.ndarray:
    """The row's ``expert_counts``: [local experts] float, finite and >= 0; else `MoesimError` naming ``where``."""
    raw = row.get("expert_counts")
    try:
        counts = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        counts = np.asarray([math.nan])
    if counts.ndim != 1 or counts.size == 0 or not np.isfinite(counts).all() or (counts < 0).any():
        shown = str(raw if raw is None or np.ndim(raw) == 0 else list(np.ravel(raw))[:8])[:80]
        raise MoesimError(
            f"{where} = {shown}: pairs per local expert must be a non-empty list of finite numbers >= 0",
            "give one non-negative count per local expert (no NaN, inf or negative values)",
        )
    return counts


def _grouped_fit(model: CalibratedCostModel, hardware_key: str) -> Fit:
    fit = next((f for f in model.calibration.fits if f.device_key == hardware_key and f.kind == "grouped_gemm"), None)
    if fit is None:
        raise MoesimError(
            f"no balanced grouped_gemm measurements of {hardware_key} to predict skewed ones from",
            "profile with --ops moe (it times balanced and skewed distributions)",
        )
    return fit


def _layer_s(model: CalibratedCostModel, row: dict[str, Any], pairs: float, active: float, cl: ClusterSpec) -> float:
    """Time (s) of the row's fused-MoE layer with ``pairs`` pairs spread evenly over ``active`` experts."""
    return model.op_time(row_op("grouped_gemm", {**row, "pairs": pairs, "active_experts": active}), cl).seconds


def predict_skewed(model: CalibratedCostModel, row: dict[str, Any], hardware_key: str) -> float:
    """Predicted time (s) of one GPU's fused-MoE layer with the pairs of ``row["expert_counts"]``.

    Args:
        model: a calibration with balanced grouped-GEMM fits of ``hardware_key`` (its kernel choice applies).
        row: a grouped-GEMM table row (`profiling.tables` columns): ``tokens`` is the batch's N (the whole
            expert-parallel group's), ``expert_counts`` [local experts] the pairs each of this GPU's
            experts receives.
        hardware_key: the device to predict on.
    Returns:
        ``sum_e (c_e / P) phi(c_e)``, at least ``phi(P / A)`` (module docstring); 0.0 when no pair lands here.
    Raises:
        MoesimError: counts with NaN, inf or negative values; no grouped-GEMM fit of ``hardware_key``.
    """
    counts = expert_counts_of(row)
    fit = _grouped_fit(model, hardware_key)
    live = counts[counts > 0]
    pairs = float(live.sum())
    if pairs <= 0:
        return 0.0
    cl = make_cluster(fit.hardware, num_gpus=1)
    ext = model if model.extrapolate else model.with_extrapolation()
    sizes, same = np.unique(live, return_counts=True)
    phi = np.array([_layer_s(ext, row, pairs, pairs / n, cl) for n in sizes])
    skewed = float((same * sizes * phi).sum() / pairs)
    balanced = _layer_s(ext, row, pairs, float(live.size), cl)
    return max(skewed, balanced)


def predict_balanced(model: CalibratedCostModel, row: dict[str, Any], hardware_key: str) -> float:
    """ "Assume balanced" (s): the row's pairs spread evenly over every local expert, as a balanced batch has them.

    The balanced layer of ``pairs * ep / top_k`` tokens with ``pairs / L`` pairs on each of the L local experts
    (the previous model's baseline; it ignores both the spread and the batch's real N).
    """
    counts = expert_counts_of(row)
    bal = {**row, "distribution": "balanced", "expert_counts": [counts.sum() / len(counts)] * len(counts)}
    return predict_per_expert_sum(model, bal, hardware_key)


def predict_per_expert_sum(model: CalibratedCostModel, row: dict[str, Any], hardware_key: str) -> float:
    """The previous skew model (s), kept for comparison: ``sum_e t_bal(c_e) / L`` over the L local experts.

    ``t_bal(n)``: the balanced layer with all L experts at n pairs, of the ``n * L * ep / top_k`` tokens that
    give them (so N and the roofline grow with the hot expert, and the floor is split across experts).
    """
    counts = expert_counts_of(row)
    local = len(counts)
    ep, top_k = int(row.get("ep", 1) or 1), int(row["top_k"])
    fit = _grouped_fit(model, hardware_key)
    cl = make_cluster(fit.hardware, num_gpus=1)
    total = 0.0
    for n in np.unique(counts[counts > 0]):
        same = int((counts == n).sum())
        bal = {**row, "tokens": n * local * ep / top_k}
        total += same * _layer_s(model, bal, n * local, local, cl) / local
    return total


def skew_error(cal: Calibration, skewed: pd.DataFrame, hardware_key: str) -> dict[str, Any]:
    """MAPE (%) of `predict_skewed` on measured skewed rows, per distribution and overall, with the baselines'.

    ``balanced_assumption_mape``: `predict_balanced`'s; ``per_expert_sum_mape``: `predict_per_expert_sum`'s.
    """
    if "expert_counts" not in skewed.columns:
        return {"rows": 0, "note": "skewed rows carry no expert_counts"}
    impl = str(skewed["impl"].iloc[0])
    skewed = skewed[skewed["impl"] == impl]
    fits = [f for f in cal.fits if f.kind == "grouped_gemm" and f.impl == impl and f.device_key == hardware_key]
    if not fits:
        return {"rows": 0, "note": f"no balanced {impl} grouped_gemm rows to predict the skewed ones from"}
    model = CalibratedCostModel(type(cal)(fits))  # the balanced fit of the same kernel
    rows = skewed.to_dict("records")
    meas = skewed["time_s"].to_numpy(float)

    def _ape(predict: Any) -> np.ndarray:
        return np.abs(np.array([predict(model, r, hardware_key) for r in rows]) / meas - 1.0) * 100

    ape = _ape(predict_skewed)
    by = pd.Series(ape).groupby(skewed["distribution"].to_numpy()).mean()
    return {
        "impl": impl,
        "rows": len(rows),
        "mape": round(float(ape.mean()), 3),
        "p90_ape": round(float(np.percentile(ape, 90)), 3),
        "by_distribution": {k: round(float(v), 3) for k, v in by.items()},
        "balanced_assumption_mape": round(float(_ape(predict_balanced).mean()), 3),
        "per_expert_sum_mape": round(float(_ape(predict_per_expert_sum).mean()), 3),
    }
