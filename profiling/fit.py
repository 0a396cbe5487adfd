"""Predictors of an op's efficiency from its shape, and how one is chosen.

Every predictor learns ``y = ln(measured time / reference time)`` over
log2-shape features, where the reference is the op's roofline on the
measured device (`profiling.calibrate`): y is smooth in the shape even where
the time jumps by orders of magnitude, and a predictor that knows y for one
device predicts another device through that device's roofline.

Methods:

- ``knn``: inverse-distance-weighted mean of y over the k nearest measured
  shapes (interpolation in log-shape space);
- ``local``: a linear fit of y over the nearest measured shapes, weighted by
  distance (local linear interpolation: follows gradients that ``knn``
  flattens);
- ``poly2``: a ridge-regularised quadratic in the features, fitted globally
  (a roofline-efficiency curve per regime: smooth, needs few points);
- ``constant``: the median y (one efficiency factor for the kind);
- ``ensemble``: the mean y of several of the above (`fit_tied`).

`choose` cross-validates each (with narrow and wide neighbourhoods) on the
training rows; `fit_tied` keeps every candidate within `TIE` of the lowest
error and averages them. The lowest error alone is often a near-tie decided
by the random folds: on the committed H100 tables the single best candidate
was the same at only 69% of seeds, and two tied neighbourhoods could differ
by a third beyond the measured shapes; their average is steadier and more
accurate on held-out rows (benchmarks/RESULTS.md section 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("knn", "local", "poly2", "constant", "ensemble")
#: Candidates whose cross-validated error is within this fraction of the lowest are averaged (`fit_tied`).
TIE = 0.03
LN2 = float(np.log(2.0))


def _poly_terms(x: np.ndarray) -> np.ndarray:
    n, d = x.shape
    cols = [np.ones(n)] + [x[:, i] for i in range(d)]
    cols += [x[:, i] * x[:, j] for i in range(d) for j in range(i, d)]
    return np.column_stack(cols)


def _kdtree(x: np.ndarray) -> Any:
    """scipy's cKDTree over the rows of ``x`` [n, d]; scipy.spatial is imported on first use (0.4 s)."""
    from scipy.spatial import cKDTree

    return cKDTree(x)


@dataclass
class Predictor:
    """A fitted predictor of y from features x ([n, d] float arrays).

    Attributes:
        method: one of `METHODS`.
        x, y: the training points (kept for the neighbour methods).
        coef: the ``poly2`` coefficients, or the constant.
        k: neighbours used by ``knn`` and ``local``.
        members: for ``ensemble``, its members' (method, k, coef): the predictor is their mean.
    """

    method: str
    x: np.ndarray
    y: np.ndarray
    coef: np.ndarray
    k: int = 6
    members: tuple[tuple[str, int, tuple[float, ...]], ...] = ()

    def __post_init__(self) -> None:
        self._parts: list[Predictor] = []
        if self.method == "ensemble":
            tree = _kdtree(self.x) if any(m in ("knn", "local") for m, _, _ in self.members) else None
            for m, k, c in self.members:
                part = Predictor.__new__(Predictor)
                part.method, part.x, part.y, part.coef, part.k, part.members = m, self.x, self.y, np.asarray(c), k, ()
                part._parts, part._tree = [], tree if m in ("knn", "local") else None
                self._parts.append(part)
            self._tree = tree
            return
        self._tree = _kdtree(self.x) if self.method in ("knn", "local") else None

    @property
    def label(self) -> str:
        """How it predicts, for a source line: the method, or ``ensemble local:13+local:25``."""
        if self.method != "ensemble":
            return self.method
        return "ensemble " + "+".join(f"{m}:{k}" if m in ("knn", "local") else m for m, k, _ in self.members)

    @property
    def neighbours(self) -> bool:
        """Whether it predicts from the nearest training points (``knn``, ``local``, or an ensemble with one)."""
        return self.method in ("knn", "local") or any(m in ("knn", "local") for m, _, _ in self.members)

    def nearest(self, x: np.ndarray) -> np.ndarray:
        """Distance (log2 units) from each query row to the nearest training point: [n]."""
        tree = self._tree or _kdtree(self.x)
        return tree.query(np.atleast_2d(x), k=1)[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """y at each query row of ``x`` ([n, d]): [n]."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        if self.method == "ensemble":
            return np.mean([p.predict(x) for p in self._parts], axis=0)
        if self.method == "constant":
            return np.full(len(x), float(self.coef[0]))
        if self.method == "poly2":
            # a quadratic runs away outside its data: keep it within ln 2 of the fitted targets
            return np.clip(_poly_terms(x) @ self.coef, self.y.min() - LN2, self.y.max() + LN2)
        k = min(self.k, len(self.x))
        assert self._tree is not None
        dist, idx = self._tree.query(x, k=k)
        dist, idx = dist.reshape(len(x), k), idx.reshape(len(x), k)
        w = 1.0 / (dist + 1e-6) ** 2
        if self.method == "knn":
            return (w * self.y[idx]).sum(axis=1) / w.sum(axis=1)
        out = np.empty(len(x))
        for i in range(len(x)):
            xi, yi, wi = self.x[idx[i]], self.y[idx[i]], np.sqrt(1.0 / (dist[i] + 0.25) ** 2)
            a = np.column_stack([np.ones(k), xi - x[i]]) * wi[:, None]
            sol, *_ = np.linalg.lstsq(a, yi * wi, rcond=None)
            fallback = (w[i] * yi).sum() / w[i].sum()
            # a wild local plane (extrapolating from a degenerate neighbourhood) falls back to knn
            out[i] = sol[0] if yi.min() - 0.5 <= sol[0] <= yi.max() + 0.5 else fallback
        return out

    def to_json(self) -> dict[str, Any]:
        """The parameters that are not the training points."""
        out: dict[str, Any] = {"method": self.method, "coef": self.coef.tolist(), "k": self.k}
        if self.members:
            out["members"] = [[m, k, list(c)] for m, k, c in self.members]
        return out


def candidates(d: int) -> list[tuple[str, int]]:
    """(method, neighbours) pairs tried for ``d`` features: narrow and wide neighbourhoods, and the global fits."""
    neighbours = [("knn", 2), ("knn", 4), ("knn", 8), ("local", d + 2), ("local", 2 * d + 3), ("local", 4 * d + 4)]
    return [*neighbours, ("poly2", 0), ("constant", 0)]


def fit(method: str, x: np.ndarray, y: np.ndarray, k: int = 6) -> Predictor:
    """Fit ``method`` (with ``k`` neighbours where it uses them) to features ``x`` [n, d] and targets ``y`` [n]."""
    if method == "constant" or len(x) < 2:
        return Predictor("constant", x, y, np.array([float(np.median(y))]))
    if method == "poly2":
        a = _poly_terms(x)
        ridge = 1e-3 * np.eye(a.shape[1])
        ridge[0, 0] = 0.0
        coef = np.linalg.solve(a.T @ a + ridge * len(x), a.T @ y)
        return Predictor("poly2", x, y, coef)
    return Predictor(method, x, y, np.zeros(0), k)


def fit_tied(scores: dict[str, float], x: np.ndarray, y: np.ndarray, tie: float = TIE) -> Predictor:
    """The mean of every candidate of `choose`'s ``scores`` ({"method:k": validation MAPE %}) within ``tie`` (a
    fraction) of the lowest error, fitted to ``x`` [n, d], ``y`` [n]; the best alone where none ties it."""
    best = min(scores.values())
    tied = [key for key, v in scores.items() if v <= best * (1.0 + tie)]
    fits = [fit(m, x, y, int(k)) for m, k in (key.split(":") for key in tied)]
    if len(fits) == 1:
        return fits[0]
    members = tuple((f.method, f.k, tuple(float(c) for c in f.coef)) for f in fits)
    return Predictor("ensemble", x, y, np.zeros(0), 0, members)


def ape(pred_y: np.ndarray, true_y: np.ndarray) -> np.ndarray:
    """Absolute percentage error of times, from log-ratio targets: |exp(pred - true) - 1| x 100."""
    return np.abs(np.expm1(pred_y - true_y)) * 100.0


def choose(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[tuple[str, int], dict[str, float]]:
    """The (method, neighbours) with the lowest cross-validated MAPE on ``x`` [n, d], ``y`` [n].

    Five folds when there are fewer than 2,000 rows (small tables are noisy
    to split once), else one 20% split. Returns ((method, k), {"method:k":
    validation MAPE %}). Under 10 rows there is nothing to validate on:
    ``poly2`` if it has more rows than terms, else ``constant``.
    """
    n = len(x)
    if n < 10:
        return (("poly2", 0) if n > _poly_terms(x[:1]).shape[1] else ("constant", 0)), {}
    order = rng.permutation(n)
    folds = np.array_split(order, 5) if n < 2000 else [order[: n // 5]]
    scores: dict[str, float] = {}
    for method, k in candidates(x.shape[1]):
        if k and k > n - len(folds[0]):
            continue
        errs = []
        for val in folds:
            train = np.setdiff1d(order, val)
            errs.append(ape(fit(method, x[train], y[train], k).predict(x[val]), y[val]))
        scores[f"{method}:{k}"] = float(np.concatenate(errs).mean())
    best = min(scores, key=scores.__getitem__)
    method, k = best.split(":")
    return (method, int(k)), scores
