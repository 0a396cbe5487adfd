"""The serving simulator's Python API: a scenario in, DataFrames and a summary out.

    from moesim.sim.serving.serve import run
    res = run("examples/mixtral-8x7b-ep8.yaml", engine="des")
    res.summary["ttft_p99_s"], res.requests, res.steps

`run` validates and builds the scenario, runs the discrete-event engine or
the analytical model, and adds the CAP figures (S-MBU, S-MFU, dollars and
energy per token) to the latency summary. `write_outputs` writes what the
CLI leaves in ``--out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.model import CostModel
from moesim.model.cap import usd_per_gpu_second
from moesim.model.errors import MoesimError
from moesim.sim.common import clean_json
from moesim.sim.serving.engine import Progress, SimResult, simulate
from moesim.sim.serving.host import engine_profile
from moesim.sim.serving.kernels import cost_provenance, mean_running
from moesim.sim.serving.metrics import METRIC_DEFINITIONS, latency_summary, littles_law, ttft_basis
from moesim.sim.serving.scenario import Built, Scenario, build, load_scenario, parse_scenario
from moesim.sim.serving.steptime import step_breakdown


@dataclass
class ServeResult:
    """A run's results.

    Attributes:
        summary: flat JSON-ready figures (units in the keys).
        requests, steps, kv_transfers: per-request, per-step and per-transfer
            tables (empty for the analytical engine).
        itl: every inter-token latency, s.
        built: the scenario's objects.
    """

    summary: dict[str, Any]
    built: Built
    requests: pd.DataFrame = field(default_factory=pd.DataFrame)
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    kv_transfers: pd.DataFrame = field(default_factory=pd.DataFrame)
    itl: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sim: SimResult | None = None


def load(
    scenario: str | Path | Scenario | dict, cost_model: CostModel | None = None, base_dir: str | Path | None = None
) -> Built:
    """Validate and build a scenario given as a path, a mapping or a `Scenario`.

    Relative paths in it (routing file, placement, cost model) resolve against ``base_dir``: by default
    the file's folder for a path, the working directory otherwise.
    """
    if isinstance(scenario, (str, Path)):
        sc, base = load_scenario(scenario), Path(scenario).parent
    elif isinstance(scenario, dict):
        sc, base = parse_scenario(scenario), Path(".")
    else:
        sc, base = scenario, Path(".")
    return build(sc, Path(base_dir) if base_dir is not None else base, cost_model)


def des_summary(built: Built, res: SimResult) -> dict[str, Any]:
    """Latency, throughput, goodput and the CAP figures of a discrete-event run."""
    sc = built.scenario
    s: dict[str, Any] = {"engine": "des"}
    s |= latency_summary(res.requests, res.itl, res.steps, slo_ttft_s=sc.slo.ttft_s, slo_tpot_s=sc.slo.tpot_s)
    # the summary's ttft/tpot/itl/e2e are the client's (the request path, `sim.serving.metrics`)
    s["ttft_basis"] = ttft_basis(engine_profile(built.pools[0].engine, built.base_dir).stream)
    s["metric_definitions"] = METRIC_DEFINITIONS
    gpu = built.cluster.gpu
    gpus = built.gpus
    span = s["simulated_s"]
    steps = res.steps
    # S-MBU / S-MFU: bytes and FLOP the steps needed over what the replicas' GPUs could move in the run
    bw, peak = gpu.bandwidth(), gpu.peak(built.precision.gemm_compute_dtype(gpu.peak_flops))
    s["s_mbu"] = float(steps["bytes"].sum() / (span * gpus * bw)) if span > 0 else math.nan
    s["s_mfu"] = float(steps["flops"].sum() / (span * gpus * peak)) if span > 0 else math.nan
    busy = np.concatenate([v for v in res.gpu_busy_s.values()]) / span if span > 0 else np.zeros(1)
    s["gpu_busy_mean"] = float(busy.mean())
    s["gpu_busy_min"] = float(busy.min())
    s["gpu_busy_max"] = float(busy.max())
    try:
        per_s, basis = usd_per_gpu_second(gpu, built.assumptions)
    except MoesimError as exc:
        per_s, basis = math.nan, f"unpriced: {exc.one_line()}"
    done = res.requests["finish_s"].notna()
    out_tokens = float(res.requests.loc[done, "output_tokens"].sum())
    s["usd_per_mtok"] = gpus * per_s * span / out_tokens * 1e6 if out_tokens else math.nan
    s["cost_basis"] = basis
    s["energy_j_per_token"] = gpus * gpu.tdp_w * span / out_tokens if gpu.tdp_w and out_tokens else None
    s["gpus"] = gpus
    s["replicas"] = sum(p.replicas for p in built.pools)
    s["steps"] = len(steps)
    s["mean_step_s"] = float(steps["duration_s"].mean()) if len(steps) else math.nan
    # where a mean step's seconds go, by phase: kernels, collectives, launches, scheduler, prepare, sampling
    s["step_breakdown"] = step_breakdown(steps)
    s["engine_profile"] = engine_summary(built)
    # Little's law from the engine's own bookkeeping: time-average of (waiting + running) over lambda x W;
    # each step's counts hold until the replica's next step starts (pipelined steps overlap), at most its duration
    if len(steps) and span > 0 and done.any():
        gap = steps.groupby("replica")["start_s"].shift(-1) - steps["start_s"]
        held = np.minimum(steps["duration_s"], gap.fillna(np.inf))
        in_sys = float(((steps["waiting"] + steps["running"]) * held).sum() / span)
        lam = float(done.sum() / span)
        w = float(res.requests.loc[done, "engine_e2e_s"].mean())  # the engine's sojourn: what it counts
        s["littles_law_error"] = abs(in_sys - lam * w) / in_sys if in_sys > 0 else math.nan
    s["littles_law_identity_error"] = littles_law(res.requests)["rel_error"]
    s["memory"] = {role: c.verdict for role, c in res.capacities.items()}
    s["wall_s"] = res.wall_s
    s["simulated_s_per_wall_s"] = span / res.wall_s if res.wall_s > 0 else math.nan
    return s


def engine_summary(built: Built) -> dict[str, Any]:
    """Per pool role: the engine profile its steps were timed with (kind, version, CUDA graphs, overlap, file)."""
    out: dict[str, Any] = {}
    for pool in built.pools:
        prof = engine_profile(pool.engine, built.base_dir)
        out[pool.role] = {
            "kind": prof.kind,
            "version": prof.version,
            "cuda_graphs": prof.cuda_graphs,
            "overlap": prof.overlap,
            "profile": prof.path,
        }
    return out


def cost_model_name(cost_model: CostModel | None) -> str:
    """What a summary's ``cost_model`` says: ``roofline`` (no calibration: every time is a lower bound, not a
    prediction) or the calibrated model's name (``calibrated:<file>``)."""
    return "roofline" if cost_model is None else str(getattr(cost_model, "name", type(cost_model).__name__))


def _checked(built: Built, cost_model: str) -> dict[str, Any]:
    """How far off predictions of this kind were against real runs (`sim.fidelity.serving_check`)."""
    from moesim.sim.fidelity import serving_check

    ep = max(p.layout.ep for p in built.pools)
    return serving_check(built.model.is_moe, ep, cost_model, built.pools[0].cluster.gpu.key)


def run(
    scenario: str | Path | Scenario | dict,
    engine: str = "des",
    *,
    cost_model: CostModel | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
    base_dir: str | Path | None = None,
) -> ServeResult:
    """Simulate a serving scenario with ``engine`` ``des`` or ``analytical`` (paths resolve as in `load`)."""
    built = load(scenario, cost_model, base_dir)
    if engine == "analytical":
        from moesim.sim.serving.analytical import analyse

        summary = analyse(built, seed)
        summary["cost_provenance"] = cost_provenance(built)  # which kernel timed each op, from which table
        summary["cost_model"] = cost_model_name(built.cost_model)
        summary["checked_against"] = _checked(built, summary["cost_model"])
        return ServeResult(summary, built)
    if engine != "des":
        raise MoesimError(f"unknown engine '{engine}'", "use --engine des or --engine analytical")
    res = simulate(built, seed, progress)
    summary = des_summary(built, res)
    req = res.requests
    lengths = (float(req["input_tokens"].mean()), float(req["output_tokens"].mean())) if len(req) else None
    summary["cost_provenance"] = cost_provenance(built, mean_running(res.steps), lengths)
    summary["cost_model"] = cost_model_name(built.cost_model)
    summary["checked_against"] = _checked(built, summary["cost_model"])
    return ServeResult(summary, built, res.requests, res.steps, res.kv_transfers, res.itl, res)


#: What `write_outputs` writes; a folder holding only these (and summary.json) is an earlier output.
OUTPUT_FILES = frozenset(
    {"summary.json", "requests.parquet", "steps.parquet", "kv_transfers.parquet", "latency_cdf.png", "timeline.png"}
)


def is_output(folder: Path) -> bool:
    """Whether ``folder`` looks like a `write_outputs` folder written before moesim marked its outputs."""
    names = {p.name for p in folder.iterdir()}
    return "summary.json" in names and names <= OUTPUT_FILES


def write_outputs(res: ServeResult, out: str | Path, plots: bool = True, force: bool = False) -> list[Path]:
    """Write ``summary.json``, ``requests.parquet``, ``steps.parquet`` and the plots into ``out``.

    Through `model.outputs.output_dir`: an existing ``out`` is replaced only when it is an earlier
    ``moesim simulate`` output (or empty, or ``force``; never a dangerous folder), and everything is written
    into a temporary folder beside ``out`` first and moved into place at the end, so a failure leaves nothing.
    """
    from moesim.model.outputs import output_dir

    out = Path(out)
    with output_dir(out, "simulate", force=force, legacy=is_output) as tmp:
        files = [tmp / "summary.json"]
        (tmp / "summary.json").write_text(clean_json(res.summary) + "\n")
        if not res.requests.empty:
            res.requests.to_parquet(tmp / "requests.parquet", index=False)
            res.steps.to_parquet(tmp / "steps.parquet", index=False)
            files += [tmp / "requests.parquet", tmp / "steps.parquet"]
            if not res.kv_transfers.empty:
                res.kv_transfers.to_parquet(tmp / "kv_transfers.parquet", index=False)
            if plots:
                from moesim.sim.serving.plots import write_plots

                files += write_plots(res.requests, res.itl, res.steps, tmp)
    return [out / f.name for f in files]
