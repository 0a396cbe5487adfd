"""A calibration and the cost model it makes: `Fit`, `Calibration`, its file (`save`, `load`) and
`CalibratedCostModel`.

`profiling.calibrate` fits the predictors from measured tables (and asks `profiling.skew` for the skew
model's error); this module holds what a fit is, how a calibration is written and read, and how a
`CalibratedCostModel` predicts an op's time from it, so the skew model and the fitting both build on it.

The file written (`save`) is one parquet: the training points (features and y per fit) with every fit's
method, coefficients, range, device and errors in its metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from moesim.model.errors import HardwareError, MoesimError
from moesim.model.hardware import ClusterSpec, HardwareSpec, make_cluster
from moesim.model.ops import Op
from moesim.model.roofline import OpTime, RooflineCostModel
from moesim.profiling import fit as fitlib
from moesim.profiling.opshapes import FEATURES, FLAGS, features, table_dtype
from moesim.profiling.tables import COLLECTIVES, check_parquet

META_KEY = b"moesim_calibration"
#: How far (log2 units, i.e. doublings) beyond the measured range a feature may go before the roofline takes over.
RANGE_SLACK = 0.5
#: Farthest a query may be from its nearest measured shape (log2 units) before the roofline takes over.
MAX_GAP = 2.0


@dataclass
class Fit:
    """One calibrated predictor and what it is worth.

    Attributes:
        kind, dtype, impl: what was measured.
        device_key: the measured device's key (``cpu``, ``H100-SXM``...).
        hardware: the measured device's spec (the reference roofline).
        predictor: the fitted `profiling.fit.Predictor`.
        lo, hi: the measured range of each feature (log2).
        rows_fit, rows_holdout: rows fitted and held out.
        mape, p90: held-out mean and 90th-percentile absolute % error.
        scores: inner-validation MAPE (%) of every method.
        reference: ``roofline``, or ``nominal`` where the device's spec lacks
            a figure the roofline needs (such a fit cannot be transferred).
        floor_s: the fastest fitted call, s: added to the reference so that
            tiny shapes, which the launch and dispatch overhead bounds rather
            than the roofline, have a target that varies smoothly.
        holdout: the held-out rows' measured and predicted times (s), for the report.
    """

    kind: str
    dtype: str
    impl: str
    device_key: str
    hardware: HardwareSpec
    predictor: fitlib.Predictor
    lo: np.ndarray
    hi: np.ndarray
    rows_fit: int
    rows_holdout: int
    mape: float
    p90: float
    scores: dict[str, float]
    reference: str = "roofline"
    floor_s: float = 0.0
    holdout: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def key(self) -> str:
        """``kind/dtype/impl@device``."""
        return f"{self.kind}/{self.dtype}/{self.impl}@{self.device_key}"

    @property
    def median_ratio(self) -> float:
        """Median measured / reference time over the fitted rows (lower: closer to the roofline)."""
        return float(np.exp(np.median(self.predictor.y)))

    def summary(self) -> dict[str, Any]:
        """The fit's figures as a JSON-ready dict."""
        return {
            "kind": self.kind,
            "dtype": self.dtype,
            "impl": self.impl,
            "device": self.device_key,
            "method": self.predictor.method,
            "rows_fit": self.rows_fit,
            "rows_holdout": self.rows_holdout,
            "mape": round(self.mape, 3),
            "p90_ape": round(self.p90, 3),
            "median_ratio_to_reference": round(self.median_ratio, 4),
            "reference": self.reference,
            "floor_s": self.floor_s,
        }


def _cluster(hw: HardwareSpec, gpus: int = 1) -> ClusterSpec:
    return make_cluster(hw, gpus_per_node=max(gpus, hw.node.gpus_per_node), nodes=1)


def reference_times(ops: list[Op], hw: HardwareSpec) -> tuple[np.ndarray, str]:
    """Roofline seconds of ``ops`` on ``hw`` ([n]), and ``roofline`` or ``nominal``.

    Where ``hw`` lacks a figure the roofline needs (a CPU's links, an
    unprofiled peak), every op gets the nominal reference 1 TFLOP/s,
    100 GB/s memory, 10 GB/s links: y then still varies smoothly with the
    shape, but the fit cannot be carried to another device.
    """
    roof = RooflineCostModel()
    try:
        cl = _cluster(hw, max(int(op.shape.get("gpus", 1)) for op in ops))
        return np.array([roof.op_time(op, cl).seconds for op in ops]), "roofline"
    except HardwareError:
        t = [max(op.flops / 1e12, op.bytes / 1e11, (op.intra_bytes + op.inter_bytes) / 1e10) for op in ops]
        return np.array(t) + 1e-7, "nominal"


@dataclass
class Calibration:
    """Every fit of a calibration, and the skew model's error when skewed rows were measured."""

    fits: list[Fit]
    skew: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: per fit, and the skew model."""
        return {"fits": [f.summary() for f in self.fits], "skew": self.skew, "sources": self.sources}


def is_calibration_file(path: Path) -> bool:
    """Whether ``path`` is a calibration moesim wrote (a parquet with `save`'s metadata)."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        return bool(raw) and str(json.loads(raw).get("format", "")).startswith("moesim-calibration/")
    except (OSError, ValueError, AttributeError, pa.ArrowException):
        return False


def check_out(path: str | Path, force: bool = False) -> None:
    """Raise `MoesimError` unless `save` may write ``path``: a folder, or a file that is not a calibration
    moesim wrote (without ``force``), is refused. Checked before the fit, so a long fit never ends in a refusal."""
    path = Path(path)
    if path.is_dir():
        raise MoesimError(f"--out {path} is a folder", "give --out a file path, e.g. calibration.parquet")
    if path.exists() and not force and not is_calibration_file(path):
        raise MoesimError(
            f"--out {path} exists and is not a calibration moesim wrote; refusing to overwrite it",
            "give --out a new file name, or add --force",
        )


def save(cal: Calibration, path: str | Path, force: bool = False) -> Path:
    """Write ``cal`` to ``path`` (one parquet file), whole or not at all (`model.outputs.write_file`).

    An existing ``path`` is replaced only when it is a calibration moesim wrote (`is_calibration_file`), or with
    ``force``.
    """
    from moesim.model.outputs import write_file

    path = Path(path)
    frames = []
    for i, f in enumerate(cal.fits):
        d = pd.DataFrame(f.predictor.x, columns=[f"x{j}" for j in range(f.predictor.x.shape[1])])
        d.insert(0, "fit", i)
        d["y"] = f.predictor.y
        frames.append(d)
    data = pd.concat(frames, ignore_index=True)
    meta = {
        "format": "moesim-calibration/1",
        "fits": [
            f.summary()
            | {"predictor": f.predictor.to_json(), "lo": f.lo.tolist(), "hi": f.hi.tolist()}
            | {"hardware": f.hardware.model_dump(), "scores": f.scores}
            for f in cal.fits
        ],
        "skew": cal.skew,
        "sources": cal.sources,
    }
    table = pa.Table.from_pandas(data, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    return write_file(path, lambda tmp: pq.write_table(table, tmp), owned=is_calibration_file, force=force)


def load(path: str | Path) -> Calibration:
    """Read a calibration written by `save`."""
    path = Path(path)
    if not path.is_file():
        raise MoesimError(f"{path}: no such calibration file", "write one with 'moesim calibrate TABLES --out FILE'")
    check_parquet(path, "a calibration file", "write one with 'moesim calibrate TABLES --out FILE'")
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        data = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException):
        raw = None
    if not raw:
        raise MoesimError(
            f"{path}: not a moesim calibration file", "write one with 'moesim calibrate TABLES --out FILE'"
        )
    try:
        return _from_parts(json.loads(raw), data)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError, ValidationError) as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:120]
        raise MoesimError(
            f"{path}: a damaged moesim calibration file ({detail})", "write it again with 'moesim calibrate'"
        ) from None


def _from_parts(meta: dict[str, Any], data: pd.DataFrame) -> Calibration:
    """A `Calibration` from `save`'s metadata and rows."""
    fits = []
    for i, m in enumerate(meta["fits"]):
        rows = data[data["fit"] == i]
        d = len(FEATURES[m["kind"]])
        x = rows[[f"x{j}" for j in range(d)]].to_numpy(float)
        p = m["predictor"]
        pred = fitlib.Predictor(p["method"], x, rows["y"].to_numpy(float), np.asarray(p["coef"], float), p["k"])
        fits.append(
            Fit(
                m["kind"],
                m["dtype"],
                m["impl"],
                m["device"],
                HardwareSpec(**m["hardware"]),
                pred,
                np.asarray(m["lo"]),
                np.asarray(m["hi"]),
                m["rows_fit"],
                m["rows_holdout"],
                m["mape"],
                m["p90_ape"] if m["p90_ape"] is not None else math.nan,
                m.get("scores", {}),
                m.get("reference", "roofline"),
                m.get("floor_s", 0.0),
            )
        )
    return Calibration(fits, meta.get("skew", {}), meta.get("sources", []))


class CalibratedCostModel:
    """A `CostModel` from measured tables, with the roofline where they do not reach.

    For an op it looks up the fit of the op's kind and dtype (`table_dtype`;
    a collective, timed by its bytes, takes any dtype's table) measured on the
    cluster's GPU; several implementations of one kind: the fastest (lowest
    median ratio to the reference), as an engine would pick.
    On another GPU it transfers a fit: the predicted ratio times that GPU's
    roofline, so compute-bound shapes scale with the peak and memory-bound
    shapes with the bandwidth. Each `OpTime.source` says which: ``measured:``,
    ``transfer:`` or ``roofline:`` with the reason.

    With ``extrapolate`` (the training simulator's choice, where layers are
    larger than most kernel benchmarks reach): an op outside the measured
    range in some sizes takes the ratio at the nearest edge of the range in
    those sizes (efficiency saturates; the source says ``clamped``), however
    far its nearest measured shape is; an op whose dtype has no table (fp8
    grouped GEMM) takes the 16-bit table's ratio to its own roofline, and a
    copy any dtype's copy table (``dtype-transfer``).
    """

    def __init__(self, calibration: Calibration, name: str = "calibrated", extrapolate: bool = False) -> None:
        self.calibration, self.name, self.extrapolate = calibration, name, extrapolate
        self._roof = RooflineCostModel()
        self._by_key: dict[tuple[str, str], list[Fit]] = {}
        for f in sorted(calibration.fits, key=lambda f: f.median_ratio):
            self._by_key.setdefault((f.kind, f.dtype), []).append(f)
            if f.kind in COLLECTIVES:  # timed by bytes: any dtype's table will do, 16-bit first
                self._by_key.setdefault((f.kind, "*"), []).append(f)
        for key, fits in self._by_key.items():
            if key[1] == "*":
                fits.sort(key=lambda f: f.dtype not in ("bf16", "fp16"))
        self._cache: dict[tuple[Any, ...], OpTime] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> CalibratedCostModel:
        """Load a calibration file written by ``moesim calibrate``."""
        return cls(load(path), name=f"calibrated:{Path(path).name}")

    def with_extrapolation(self) -> CalibratedCostModel:
        """The same fits with ``extrapolate`` on (see the class docstring)."""
        return CalibratedCostModel(self.calibration, self.name + "+extrapolated", extrapolate=True)

    def _pick(self, op: Op, cluster: ClusterSpec) -> tuple[Fit | None, bool]:
        fits = self._by_key.get((op.kind, table_dtype(op))) or self._by_key.get((op.kind, "*"), [])
        if not fits and self.extrapolate:
            fits = self._by_key.get((op.kind, "bf16")) or self._by_key.get((op.kind, "fp16"), [])
            if not fits and op.kind == "memcpy":
                fits = [f for (k, _), fs in self._by_key.items() if k == "memcpy" for f in fs]
            fits = [f for f in fits if f.reference == "roofline"]
            same = [f for f in fits if f.device_key == cluster.gpu.key]
            return (same[0], False) if same else ((fits[0], True) if fits else (None, False))
        same = [f for f in fits if f.device_key == cluster.gpu.key]
        if same:
            return same[0], False
        movable = [f for f in fits if f.reference == "roofline"]
        return (movable[0], True) if movable else (None, False)

    def op_time(self, op: Op, cluster: ClusterSpec) -> OpTime:
        """The op's time from its fit, or its roofline with the reason (see the class docstring)."""
        fit, transfer = self._pick(op, cluster)
        kind = f"{op.kind}/{table_dtype(op)}"
        if fit is None:
            return replace(self._roof.op_time(op, cluster), source=f"roofline: no measured {kind} table")
        if op.kind in COLLECTIVES and op.inter_bytes > 0:
            return replace(self._roof.op_time(op, cluster), source="roofline: multi-node collectives not measured")
        f = features(op)
        if f is None:
            return replace(self._roof.op_time(op, cluster), source=f"roofline: {op.name} has no {kind} shape")
        key = (fit.key, cluster.gpu.key, cluster.gpus_per_node, op.kind, op.dtype, f, self.extrapolate)
        key += (op.flops, op.bytes, op.intra_bytes, op.inter_bytes, op.intra_msgs, op.inter_msgs)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        x = np.asarray(f)
        sizes = np.array([name not in FLAGS for name in FEATURES[op.kind]])
        outside = np.flatnonzero(sizes & ((x < fit.lo - RANGE_SLACK) | (x > fit.hi + RANGE_SLACK)))
        clamped = ""
        if outside.size and self.extrapolate:
            x = x.copy()
            x[outside] = np.clip(x[outside], fit.lo[outside], fit.hi[outside])
            clamped = "clamped " + ",".join(FEATURES[op.kind][j] for j in outside) + " "
            outside = outside[:0]
        if table_dtype(op) != fit.dtype and op.kind not in COLLECTIVES:
            clamped += f"dtype-transfer {fit.dtype}->{table_dtype(op)} "
        if outside.size:
            j = int(outside[0])
            name = FEATURES[op.kind][j]
            why = f"{name}=2^{x[j]:.1f} outside measured 2^{fit.lo[j]:.1f}..2^{fit.hi[j]:.1f} of {fit.key}"
            out = replace(self._roof.op_time(op, cluster), source=f"roofline: {why}")
        elif (
            not self.extrapolate and fit.predictor.method in ("knn", "local") and fit.predictor.nearest(x)[0] > MAX_GAP
        ):
            out = replace(self._roof.op_time(op, cluster), source=f"roofline: no measured shape near it in {fit.key}")
        else:
            ratio = float(np.exp(fit.predictor.predict(x)[0]))
            if transfer:
                ref = self._roof.op_time(op, cluster)
                src = f"{clamped}transfer:{fit.key}->{cluster.gpu.key} ({fit.predictor.method})"
            else:
                ref = (
                    self._roof.op_time(op, _same_device(cluster, fit.hardware)) if fit.reference == "roofline" else None
                )
                src = f"{clamped}measured:{fit.key} ({fit.predictor.method})"
            if ref is None:  # nominal reference
                t = ratio * (reference_times([op], fit.hardware)[0][0] + fit.floor_s)
                out = OpTime(t, 0.0, 0.0, 0.0, "measured", src)
            else:
                t = ratio * (ref.seconds + fit.floor_s)
                out = OpTime(t, ref.compute_s, ref.memory_s, ref.link_s, ref.bound, src)
        self._cache[key] = out
        return out


def _same_device(cluster: ClusterSpec, hw: HardwareSpec) -> ClusterSpec:
    """``cluster`` with its GPU replaced by the measured spec (links kept where the spec has none)."""
    links = {k: getattr(hw.node, k) for k in ("intra_bw", "intra_latency_s", "inter_bw", "inter_latency_s")}
    links = {k: v if v is not None else getattr(cluster, k) for k, v in links.items()}
    return cluster.model_copy(update={"gpu": hw, **links})
