"""Fitting an engine profile's host costs on measured runs: ``moesim fit-engine RUNS.csv``.

A few host-cost parameters of the engine profile (`sim.serving.host.PARAMS`, each in seconds) are chosen to
minimise the log prediction errors of the runs of a RUNS.csv (`sim.serving.validate`):

    minimise  sum over runs r, metrics k of  rho( log(predicted_rk / measured_rk) )

over mean E2E, mean TTFT and mean ITL (`FIT_METRICS`), with ``rho`` the soft-L1 loss of
`scipy.optimize.least_squares` (scale 0.1: a run off by more than ~10 % weighs linearly, not quadratically, so one
run whose workload is only assumed cannot pull the fit alone). Each parameter is bounded to [0, `BOUNDS`], a
physically meaningful range (no negative cost; no per-step cost above a few milliseconds), and searched in units
of its bound. Runs overloaded when measured are left out.

Cross-validation by model: for each model of the file, the parameters are fitted on the runs of the other models
(starting from the fit on all runs) and the held-out model's runs are predicted with them; the median and P90 of
those held-out errors are the figures to trust for a model that was not measured.

The inner loop uses the analytical engine by default (each run in milliseconds; the DES takes minutes per
full replay, see `sim.serving.validate`); check the final profile with
``moesim validate RUNS.csv --engine des --engine-profile engine.yaml``.

The profile written (`profile_yaml`) holds every host parameter: the fitted ones with the source
"fitted by moesim fit-engine on RUNS.csv (N runs, date)", the others as the base profile had them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.model import CostModel
from moesim.model.errors import MoesimError
from moesim.sim.serving.validate import (
    METRICS,
    Run,
    _safe,
    error_summary,
    predict,
    run_requests,
    today,
    write_trace_csv,
)

#: Parameters fitted by default: the scheduler's per-step and per-sequence costs (decode step time), input
#: preparation per token (prefill chunks) and the API server per request (TTFT).
DEFAULT_PARAMS = ("scheduler_base_s", "scheduler_per_seq_s", "prepare_per_token_s", "api_per_request_s")

#: Upper bound of each host parameter, s: generous physical ceilings (measured values sit one to two orders of
#: magnitude below: microsoft/vidur cpu_overheads.csv has vLLM's scheduler at 41 us + 15.5 us per sequence and
#: input preparation at 0.21 ms per step; a CUDA kernel launch costs 5-10 us of CPU), except the per-sequence
#: costs, bounded at vLLM v0's measured slopes (the same file: scheduler 15.5 us, sampler 7.8 us per sequence;
#: V1's scheduler and sampler do less per sequence, so these are upper bounds for V1). A per-sequence host cost
#: lengthens every step by its cost x the decode batch, and the batch grows with the step (B = rate x output
#: tokens x step), so the decode batch is B0 / (1 - rate x output tokens x cost): a fit that took the cost model's
#: missing per-sequence GPU time as host time (74-120 us with the roofline model, the bound was 200 us) ran away on
#: held-out high-rate runs (Llama-3.1-8B at 20 req/s x 247 tokens x 120 us = 0.59: 2.4x the batch), which put the
#: roofline model's cross-validated P90 at 89 % (E2E) and 107 % (TTFT) against 40 % and 50 % in-sample.
BOUNDS: dict[str, float] = {
    "scheduler_base_s": 5e-3,
    "scheduler_per_seq_s": 1.55e-5,
    "prepare_base_s": 5e-3,
    "prepare_per_token_s": 2e-5,
    "sampling_base_s": 5e-3,
    "sampling_per_seq_s": 7.8e-6,
    "launch_s": 5e-5,
    "graph_replay_s": 1e-3,
    "api_per_request_s": 0.2,
    "tokenize_per_token_s": 1e-4,
    "tokenize_wait_s": 0.05,
    "detokenize_per_token_s": 1e-4,
    "stream_per_seq_s": 5e-4,
}

#: Host parameters the GPU-side step results depend on (the launch wait of an eager forward): no reuse with these.
_LAUNCH_PARAMS = frozenset({"launch_s", "graph_replay_s"})

#: Metrics the fit minimises the log error of.
FIT_METRICS = ("e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms")

#: Grid of the coordinate sweep before the least-squares search, as shares of each parameter's bound.
SCAN = (0.0, 3e-3, 0.03, 0.1, 0.3, 1.0)

#: Residual of a run the simulator could not predict (NaN), in log units (a factor e^3 = 20).
_MISS = 3.0


def check_params(names: Sequence[str]) -> tuple[str, ...]:
    """The parameter names, checked against `sim.serving.host.PARAMS`."""
    from moesim.sim.serving.host import PARAMS

    out = []
    for name in names:
        name = name.strip()
        if name not in PARAMS or name not in BOUNDS:
            raise MoesimError(f"--params: unknown host parameter {name!r}", f"use some of {', '.join(PARAMS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise MoesimError("--params: no parameter named", f"e.g. --params {','.join(DEFAULT_PARAMS)}")
    return tuple(out)


def base_profile(kind: str = "vllm", profile: str | None = None):
    """The engine profile the fit starts from (`sim.serving.host.EngineProfile`)."""
    from moesim.sim.serving.host import engine_profile
    from moesim.sim.serving.scenario import EngineSpec

    return engine_profile(EngineSpec(kind=kind, profile=str(Path(profile).resolve()) if profile else None))


class Problem:
    """The runs of a fit with their requests and traces prepared once; `predict` a parameter vector.

    Args:
        runs: the runs (overloaded ones are kept for reporting, left out of residuals).
        workdir: where the trace CSVs go.
        engine, cost_model, profile: as `sim.serving.validate.predict`.
        max_requests: replay the first N arrivals of each run (None: all).
        seed: the staged workloads' seed.
    """

    def __init__(
        self,
        runs: Sequence[Run],
        workdir: Path,
        engine: str = "analytical",
        cost_model: CostModel | None = None,
        profile: str | None = None,
        max_requests: int | None = None,
        seed: int = 0,
    ) -> None:
        from moesim.sim.serving.validate import measured_over

        self.runs, self.engine, self.cost_model, self.profile = list(runs), engine, cost_model, profile
        self.prepared: list[tuple[Run, pd.DataFrame, Path, dict[str, float]]] = []
        for run in self.runs:
            req = run_requests(run, max_requests, seed)
            sub = max_requests is not None and len(req) < len(run_requests(run, None, seed))
            trace = write_trace_csv(req, workdir / "traces" / f"{_safe(run.run_id)}.csv")
            self.prepared.append((run, req, trace, measured_over(run, req, sub)))
        self.evaluations = 0
        #: per run, the step timers' GPU-side results, reused while the fitted parameters leave them unchanged
        self.gpu_memo: list[dict[str, dict]] = [{} for _ in self.prepared]
        self.reuse_gpu = engine == "analytical"

    def predict(self, host: dict[str, float], which: Sequence[int] | None = None) -> pd.DataFrame:
        """Per run: run_id, model, status, measured_/predicted_/error_<metric> with host values ``host`` (s)."""
        records = []
        for i in which if which is not None else range(len(self.prepared)):
            run, req, trace, measured = self.prepared[i]
            rec: dict[str, Any] = {"run_id": run.run_id, "model": run.model_id, "gpu": run.gpu, "tp": run.tp}
            try:
                memo = self.gpu_memo[i] if self.reuse_gpu and not set(host) & _LAUNCH_PARAMS else None
                pred = predict(run, req, trace, self.engine, self.cost_model, self.profile, host, memo)
                rec["status"] = "overloaded" if run.overloaded else "ok"
                rec["note"] = f"simulator: overloaded ({pred.reason})" if pred.overloaded else ""
                for key in METRICS:
                    p, m = pred.metrics[key], measured[key]
                    rec[f"measured_{key}"], rec[f"predicted_{key}"] = m, p
                    rec[f"error_{key}"] = p / m - 1 if m > 0 and math.isfinite(p) else math.nan
            except MoesimError as exc:
                rec["status"], rec["note"] = "error", exc.one_line()
            records.append(rec)
        self.evaluations += 1
        return pd.DataFrame(records)

    def fit_indices(self, exclude_model: str | None = None) -> list[int]:
        """Runs a fit uses: not overloaded when measured, not of ``exclude_model``."""
        return [
            i for i, (run, *_rest) in enumerate(self.prepared) if not run.overloaded and run.model_id != exclude_model
        ]


def _soft_l1(r: np.ndarray, scale: float = 0.1) -> np.ndarray:
    """scipy's soft-L1 loss of residuals ``r`` at ``scale``: 2 s^2 (sqrt(1 + (r/s)^2) - 1)."""
    return 2 * scale**2 * (np.sqrt(1 + (r / scale) ** 2) - 1)


def residuals(rows: pd.DataFrame) -> np.ndarray:
    """log(predicted / measured) per run and `FIT_METRICS` metric; `_MISS` where the simulator gave nothing."""
    out = []
    for _, r in rows.iterrows():
        for key in FIT_METRICS:
            m, p = r.get(f"measured_{key}", math.nan), r.get(f"predicted_{key}", math.nan)
            if not (isinstance(m, float) and m > 0):
                continue
            out.append(math.log(p / m) if isinstance(p, float) and p > 0 and math.isfinite(p) else _MISS)
    return np.asarray(out, float)


@dataclass
class Fit:
    """A fit's result.

    Attributes:
        params: fitted parameter names. values: fitted values, s. start: starting values, s.
        rows: per-run predictions with the fitted values (in-sample).
        cv_rows: per-run predictions of each model's runs by the fit on the other models (empty without CV).
        cv_values: per held-out model, the values fitted without it, s.
        summary: error summaries (``fit``, ``cv``), evaluations, wall seconds.
    """

    params: tuple[str, ...]
    values: dict[str, float]
    start: dict[str, float]
    rows: pd.DataFrame
    cv_rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    cv_values: dict[str, dict[str, float]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _solve(
    problem: Problem,
    params: tuple[str, ...],
    start: dict[str, float],
    which: list[int],
    max_nfev: int,
    progress: Callable[[str], None] | None,
    label: str,
    scan: bool = True,
) -> tuple[dict[str, float], int]:
    from scipy.optimize import least_squares

    ub = np.array([BOUNDS[p] for p in params])
    z0 = np.clip(np.array([start[p] for p in params]) / ub, 0.0, 1.0)

    def fun(z: np.ndarray) -> np.ndarray:
        host = {p: float(v) for p, v in zip(params, np.clip(z, 0, 1) * ub, strict=True)}
        r = residuals(problem.predict(host, which))
        if progress:
            progress(f"{label}: evaluation {problem.evaluations}, cost {0.5 * float(np.sum(r**2)):.4g}")
        return r

    # host time that the GPU time hides (async scheduling) has no gradient: before the local search, one sweep
    # over each parameter in turn on the grid SCAN (shares of its bound), keeping the best value found
    best = z0.copy()
    best_cost = float(np.sum(_soft_l1(fun(best))))
    for j in range(len(params)) if scan else ():
        for share in SCAN:
            z = best.copy()
            z[j] = share
            if z[j] == best[j]:
                continue
            cost = float(np.sum(_soft_l1(fun(z))))
            if cost < best_cost:
                best, best_cost = z, cost
    res = least_squares(
        fun, best, bounds=(0.0, 1.0), loss="soft_l1", f_scale=0.1, diff_step=0.01, max_nfev=max_nfev, x_scale=1.0
    )
    return {p: float(v) for p, v in zip(params, np.clip(res.x, 0, 1) * ub, strict=True)}, int(res.nfev)


def fit_engine(
    problem: Problem,
    params: Sequence[str] = DEFAULT_PARAMS,
    cv: bool = True,
    max_nfev: int = 10,
    progress: Callable[[str], None] | None = None,
    cv_nfev: int = 4,
) -> Fit:
    """Fit ``params`` on the problem's runs, then (``cv``) leave each model out in turn (see the module docstring).

    ``max_nfev`` / ``cv_nfev``: most iterations of `scipy.optimize.least_squares` (each costs one evaluation of
    every run plus one per parameter for the Jacobian) for the fit and for each cross-validation refit, which
    starts from the fit on all runs.

    Raises:
        MoesimError: an unknown parameter, or no run to fit on.
    """
    t0 = time.perf_counter()
    params = check_params(params)
    base = base_profile(problem.runs[0].engine.get("kind", "vllm") if problem.runs else "vllm", problem.profile)
    start = {p: float(base.host[p]) for p in params}
    which = problem.fit_indices()
    if not which:
        raise MoesimError("no run to fit on: every run is overloaded", "give runs without failed requests")
    values, nfev = _solve(problem, params, start, which, max_nfev, progress, "fit")
    rows = problem.predict(values)
    fit = Fit(params, values, start, rows)
    summary: dict[str, Any] = {"fit": error_summary(rows), "start": error_summary(problem.predict(start))}
    models = sorted({problem.runs[i].model_id for i in which})
    if cv and len(models) > 1:
        parts = []
        for model in models:
            train = problem.fit_indices(exclude_model=model)
            held = [i for i, (run, *_r) in enumerate(problem.prepared) if run.model_id == model]
            if not train:
                continue
            vals, n = _solve(problem, params, values, train, cv_nfev, progress, f"cv without {model}", scan=False)
            nfev += n
            fit.cv_values[model] = vals
            parts.append(problem.predict(vals, held))
        fit.cv_rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        summary["cv"] = error_summary(fit.cv_rows)
        summary["cv_models"] = models
    summary.update(evaluations=problem.evaluations, nfev=nfev, wall_s=time.perf_counter() - t0)
    fit.summary = summary
    return fit


def profile_yaml(fit: Fit, runs_path: str | Path, n_runs: int, kind: str = "vllm", profile: str | None = None) -> str:
    """The engine profile YAML of a fit: every host parameter (fitted ones with their provenance), the base
    profile's settings. Read by ``engine: {profile: FILE}`` and ``moesim validate --engine-profile FILE``."""
    import yaml

    base = base_profile(kind, profile)
    stamp = f"fitted by moesim fit-engine on {Path(runs_path).name} ({n_runs} runs, {today()})"
    cv = fit.summary.get("cv") or {}
    cv_text = ""
    if cv:
        cv_text = "; leave-model-out CV median |error| " + ", ".join(
            f"{METRICS[k][0]} {cv[k]['median_abs_error']:.1%}" for k in FIT_METRICS if k in cv
        )
    host = {}
    for name, value in base.host.items():
        if name in fit.values:
            host[name] = {
                "value": float(f"{fit.values[name]:.6g}"),
                "unit": "s",
                "source": f"{stamp}; bounds [0, {BOUNDS[name]:g}] s{cv_text}",
            }
        else:
            host[name] = {"value": float(value), "unit": "s", "source": base.sources.get(name, "base profile")}
    settings = {
        "cuda_graphs": base.cuda_graphs,
        "capture_sizes": list(base.capture_sizes),
        "mixed_graphs": base.mixed_graphs,
        "overlap": base.overlap,
        "attention_backend": base.attention_backend,
        "moe_kernel": base.moe_kernel,
        "prefix_caching": base.prefix_caching,
        "stream_chunk_tokens": base.stream_chunk_tokens,
        "sampling": base.sampling,  # the base's sampler rule: a fit must not fall back to greedy
        "routes_padding": base.routes_padding,  # and its padded rows' routing (SGLang masks them)
    }
    doc = {
        "kind": base.kind,
        "version": base.version,
        "description": f"{base.kind} {base.version} host costs {stamp}",
        "settings": settings,
        "host": host,
    }
    head = f"# {MARKER} on {Path(runs_path).name}: {', '.join(fit.params)} fitted; see docs (moesim fit-engine)\n"
    return head + yaml.safe_dump(doc, sort_keys=False, width=120)


#: First line of every profile fit-engine writes (a file without it is not replaced without --force).
MARKER = "engine profile written by moesim fit-engine"


def is_fit_profile(path: Path) -> bool:
    """Whether ``path`` is a profile written by `profile_yaml`."""
    try:
        with open(path, encoding="utf-8") as f:
            return MARKER in f.readline()
    except (OSError, UnicodeDecodeError):
        return False
