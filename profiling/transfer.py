"""How a kernel measured on GPU A predicts its time on GPU B, and how far such a prediction is trusted.

**Carrying the ratio** (what `profiling.costmodel.CalibratedCostModel` did alone before): the fit predicts the ratio
measured / roofline on A, and the time on B is that ratio times B's roofline. Every second of the kernel then
scales with B's datasheet: a memory-bound kernel gets B's whole bandwidth gain (H100 SXM -> H200: 4.8 / 3.35 =
1.43x), including the part of its time that no HBM stream explains (launch, memory latency, tile tails, the
dequantisation a Marlin int4 or block-scaled fp8 kernel does on the SMs).

**Derated transfer** (`derated_seconds`), for two GPUs with the same compute die (same tensor peaks, so the same
SMs at the same clocks: H100 SXM, H800, H200) where both have a measured streaming bandwidth (`ACHIEVED_BW`):

- the time on A, t_A (the fit on A's own roofline), splits into the part the *achieved* bandwidth and compute
  explain, b_A = max(bytes / achieved_bw_A, FLOPs / peak), and the rest, u = t_A - b_A;
- on B the explained part runs at B's achieved bandwidth, b_B = max(bytes / achieved_bw_B, FLOPs / peak), and u,
  a property of the SMs (same die), is unchanged: t_B = b_B + u.

So a kernel that streams at the achieved bandwidth on A gains the achieved-bandwidth ratio (H100 -> H200:
3.90 / 3.02 = 1.29x, not 1.43x: HBM3e reaches a smaller share of its datasheet figure), and a kernel that sits far
above the bandwidth roof on A (Marlin int4 and block-scaled fp8 at small batches) gains correspondingly less.
Collectives (link-bound) and pairs without both figures, or with different dies, carry the ratio (the source says
which).

**Uncertainty band** (`band_for`): a transferred prediction carries the P50 and P90 absolute relative error of its
family, measured by cross-transfer between two independent measurements of one GPU (`TRANSFER_BANDS`, written by
``python -m benchmarks.transfer``): the floor of what transfer can do. The calibration file stores the bands it
was made with (`profiling.costmodel.Calibration.transfer_bands`).

Units: seconds, bytes, bytes/s, FLOP; band errors are fractions (0.05 = 5%).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from moesim.model.errors import HardwareError
from moesim.model.hardware import HardwareSpec, list_gpus
from moesim.model.ops import Op
from moesim.profiling.tables import COLLECTIVES


def _own_bandwidths() -> dict[str, tuple[float, str]]:
    """Each GPU preset's own measured streaming bandwidth (bytes/s, source) from ``model/presets/achievable.yaml``
    (`HardwareSpec.achievable.dram_bw`); a figure reused from another GPU is left out."""
    out = {}
    for key, gpu in list_gpus().items():
        fig = gpu.achievable.dram_bw if gpu.achievable is not None else None
        if fig is not None and not fig.reused:
            out[key] = (fig.value, fig.source)
    return out


#: Measured streaming bandwidth of a GPU (bytes/s), and where the figure comes from. Keys: `HardwareSpec.key`.
#: One source with the achievable cost model: ``model/presets/achievable.yaml`` (own figures only).
ACHIEVED_BW: dict[str, tuple[float, str]] = _own_bandwidths()
_PRESET_KEYS = frozenset(list_gpus())

#: Op kinds the derating is defined for: every kernel bound by HBM or tensor cores. Collectives are bound by links,
#: whose gain is the link model's (carried).
DERATED_KINDS = "every non-collective kind"

#: Key prefix of the bands of transfers answered beyond the measured range (the fit followed along the table's edge
#: or clamped to it): ``beyond:gemm/bf16``, ``beyond:*``.
BEYOND = "beyond:"


#: Band of a transferred prediction, per ``kind/dtype`` (``kind/*``: every dtype of the kind, ``*``: every family):
#: P50 and P90 absolute relative error (fractions) of cross-transfer between AIConfigurator's H100 SXM tables (vLLM
#: 0.19 kernels) and moesim's own (profiling/data/h100-sxm: full-bf16, quick-fp8_fp16), both directions pooled,
#: rows where the source's fit answered inside its measured range (not followed along the table's edge nor clamped).
#: Measured by ``python -m benchmarks.transfer`` (4,000 target rows per pair and direction at most, seed 0;
#: 2026-12-06, after the edge-followed rows were left out of it).
_BASIS = "cross-transfer aiconfigurator-h100-sxm <-> profiling/data/h100-sxm (benchmarks/transfer.py)"
TRANSFER_BANDS: dict[str, dict[str, Any]] = {
    key: {"p50": p50, "p90": p90, "rows": rows, "basis": _BASIS}
    for key, p50, p90, rows in (
        ("*", 0.1818, 0.4458, 4350),
        ("gemm/*", 0.1815, 0.4317, 3831),
        ("gemm/bf16", 0.1549, 0.4317, 2300),
        ("gemm/fp8", 0.2134, 0.4313, 1531),
        ("grouped_gemm/*", 0.1875, 0.5774, 519),
        ("grouped_gemm/bf16", 0.1875, 0.5774, 519),
        # answered beyond the measured range (followed along the table's edge): the extrapolation's error too
        (BEYOND + "*", 0.3208, 1.1976, 5925),
        (BEYOND + "gemm/*", 0.3755, 1.2722, 4560),
        (BEYOND + "gemm/bf16", 0.4746, 1.6106, 2153),
        (BEYOND + "gemm/fp8", 0.3404, 0.6119, 2407),
        (BEYOND + "grouped_gemm/*", 0.1405, 0.7723, 1365),
        (BEYOND + "grouped_gemm/bf16", 0.1405, 0.7723, 1365),
    )
}


@dataclass(frozen=True)
class Band:
    """The error a transferred prediction is expected to have.

    Attributes:
        p50, p90: median and 90th-percentile absolute relative error (fractions: 0.05 = 5%).
        basis: which measured family it comes from (``gemm/bf16``, ``grouped_gemm/*``, ``*``) and how.
    """

    p50: float
    p90: float
    basis: str


def default_bands() -> dict[str, dict[str, Any]]:
    """A copy of `TRANSFER_BANDS` (what a new calibration stores)."""
    return {k: dict(v) for k, v in TRANSFER_BANDS.items()}


def band_for(bands: Mapping[str, Mapping[str, Any]], kind: str, dtype: str, beyond: bool = False) -> Band | None:
    """The band of a transferred ``kind`` op of ``dtype``: its own family's, else its kind's, else the pooled one.

    ``bands``: ``kind/dtype`` -> ``{"p50": fraction, "p90": fraction, ...}`` (`TRANSFER_BANDS`' layout). ``beyond``:
    the op lies beyond the table's measured range (its time followed the table's edge or was clamped to it): the
    ``beyond:`` bands first, which measure that extrapolation too, then the in-range ones (a calibration file
    written before they existed). None when no band applies (an empty table).
    """
    keys = (f"{kind}/{dtype}", f"{kind}/*", "*")
    for key in (*(BEYOND + k for k in keys if beyond), *keys):
        b = bands.get(key)
        if b is not None and math.isfinite(float(b.get("p50", math.nan))) and math.isfinite(float(b["p90"])):
            return Band(float(b["p50"]), float(b["p90"]), f"{key}: {b.get('basis', _BASIS)}")
    return None


def bands_from_errors(errors: Mapping[str, Iterable[float]], basis: str = _BASIS) -> dict[str, dict[str, Any]]:
    """Bands from absolute relative errors (fractions) per ``kind/dtype``, with ``kind/*`` and ``*`` pooled.

    ``errors``: ``kind/dtype`` -> errors of the rows transferred in that family. Returns `TRANSFER_BANDS`' layout
    (``p50``, ``p90``, ``rows``, ``basis``); families with no rows are left out.
    """
    import numpy as np

    pooled: dict[str, list[float]] = {}
    for key, errs in errors.items():
        e = [float(x) for x in errs]
        prefix = BEYOND if key.startswith(BEYOND) else ""
        pooled.setdefault(key, []).extend(e)
        pooled.setdefault(key.split("/")[0] + "/*", []).extend(e)
        pooled.setdefault(prefix + "*", []).extend(e)
    out = {}
    for key, e in sorted(pooled.items()):
        if e:
            a = np.asarray(e, float)
            out[key] = {"p50": float(np.median(a)), "p90": float(np.percentile(a, 90)), "rows": len(a), "basis": basis}
    return out


def achieved_bandwidth(hw: HardwareSpec, table: Mapping[str, tuple[float, str]] | None = None) -> float | None:
    """``hw``'s measured streaming bandwidth (bytes/s): ``table``'s (default `ACHIEVED_BW`, the presets' own
    figures); for a GPU that is no preset (a ``--hardware`` file's new key), its own ``achievable.dram_bw``; else
    None."""
    hit = (ACHIEVED_BW if table is None else table).get(hw.key)
    if hit:
        return float(hit[0])
    own = hw.achievable.dram_bw if hw.achievable is not None else None
    if table is None and hw.key not in _PRESET_KEYS and own is not None and not own.reused:
        return float(own.value)
    return None


def same_die(a: HardwareSpec, b: HardwareSpec) -> bool:
    """Whether ``a`` and ``b`` have the same tensor peaks (one compute die at one clock: the same SMs)."""
    return bool(a.peak_flops) and dict(a.peak_flops) == dict(b.peak_flops)


def derating_applies(
    op: Op, src: HardwareSpec, dst: HardwareSpec, table: Mapping[str, tuple[float, str]] | None = None
) -> str | None:
    """None when `derated_seconds` times ``op`` from ``src`` on ``dst``, else why the ratio is carried instead."""
    if op.kind in COLLECTIVES:
        return "collective: link-bound, ratio carried"
    if not same_die(src, dst):
        return f"different compute die {src.key}/{dst.key}: ratio carried"
    missing = [hw.key for hw in (src, dst) if achieved_bandwidth(hw, table) is None or hw.memory_bandwidth is None]
    if missing:
        return f"no achieved-bandwidth figure for {','.join(dict.fromkeys(missing))}: ratio carried"
    return None


def derated_seconds(
    op: Op,
    t_src: float,
    src: HardwareSpec,
    dst: HardwareSpec,
    table: Mapping[str, tuple[float, str]] | None = None,
) -> tuple[float, float]:
    """``op``'s time on ``dst`` from its time ``t_src`` (s) on ``src`` (see the module docstring).

    Call only where `derating_applies` returns None. Returns (seconds on ``dst``, the share of ``t_src`` the
    achieved roofline explains, 0..1).
    """
    bw_a, bw_b = achieved_bandwidth(src, table), achieved_bandwidth(dst, table)
    assert bw_a is not None and bw_b is not None
    try:
        compute = op.flops / src.peak(op.dtype) if op.flops else 0.0  # same die: the same on both
    except HardwareError:
        compute = 0.0
    bound_a = max(op.bytes / bw_a, compute)
    bound_b = max(op.bytes / bw_b, compute)
    if bound_a <= 0.0 or t_src <= 0.0:
        return t_src, 0.0
    if bound_a >= t_src:  # faster than the achieved roofline (L2-resident): the whole time scales
        return t_src * bound_b / bound_a, 1.0
    return bound_b + (t_src - bound_a), bound_a / t_src


def step_band(seconds: Iterable[float], bands: Iterable[tuple[float, float] | None]) -> dict[str, float]:
    """The band of a sum of op times, each with its own band or none (measured, roofline).

    Errors are taken as fully correlated (one GPU, one software stack): the step's P50 / P90 error is the
    time-weighted sum of its ops'. Returns ``p50``, ``p90`` (fractions of the step) and ``transferred_share``
    (share of the time that has a band).
    """
    total = p50 = p90 = banded = 0.0
    for s, b in zip(seconds, bands, strict=True):
        total += s
        if b is not None:
            banded += s
            p50 += s * b[0]
            p90 += s * b[1]
    if total <= 0.0:
        return {"p50": 0.0, "p90": 0.0, "transferred_share": 0.0}
    return {"p50": p50 / total, "p90": p90 / total, "transferred_share": banded / total}


def estimate_band(ops: Iterable[Op], times: Iterable[Any]) -> dict[str, float]:
    """`step_band` of a step estimate: ``ops`` with their `model.roofline.OpTime` ``times`` (each op x its count)."""
    ops, times = list(ops), list(times)
    seconds = [t.seconds * op.count for op, t in zip(ops, times, strict=True)]
    return step_band(seconds, [getattr(t, "band", None) for t in times])


def band_text(band: Mapping[str, float]) -> str:
    """One line for a step's band (`step_band`), or ``""`` when nothing in it was transferred."""
    if band.get("transferred_share", 0.0) <= 0.0:
        return ""
    return (
        f"transferred from another GPU's tables: {band['transferred_share']:.0%} of the step; expected error of the "
        f"step +/-{band['p50']:.0%} (P50), +/-{band['p90']:.0%} (P90)"
    )
