"""``moesim validate`` and ``moesim fit-engine``: the serving simulator against measured runs, and a profile fitted
on them (`sim.serving.validate`, `sim.serving.fit_engine`)."""

from __future__ import annotations

import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from moesim.dashboard.cli._common import emit_json, err, out
from moesim.dashboard.cli.profile import progress_bar
from moesim.model import MoesimError
from moesim.model.limits import MAX_REQUESTS


class Engine(str, Enum):
    des = "des"
    analytical = "analytical"


class CvBy(str, Enum):
    model = "model"
    none = "none"


#: What `moesim validate` writes into --out.
VALIDATE_FILES = frozenset(
    {"runs.csv", "stages.csv", "summary.json", "predicted_vs_measured.png", "scenarios", "traces"}
)


def _cost_model(value: str | None):
    """``roofline`` (or nothing): the roofline; else a calibration file from 'moesim calibrate'."""
    if value is None or value == "roofline":
        return None, "roofline"
    from moesim.dashboard.cli.roofline import load_cost_model

    return load_cost_model(Path(value)), str(value)


def _only(value: str | None) -> list[str] | None:
    if not value:
        return None
    ids = [v.strip() for v in value.split(",") if v.strip()]
    if not ids:
        raise MoesimError("--only: no experiment id given", "e.g. --only run-a,run-b")
    return ids


def _profile(value: Path | None) -> str | None:
    if value is None:
        return None
    if not value.is_file():
        raise MoesimError(f"--engine-profile {value} does not exist", "give an engine profile YAML (moesim fit-engine)")
    return str(value.resolve())


def _table(summary: dict[str, Any], title: str) -> Table:
    from moesim.sim.serving.validate import METRICS

    t = Table(title=title)
    t.add_column("metric")
    t.add_column("median |error|", justify="right")
    t.add_column("P90 |error|", justify="right")
    t.add_column("median signed", justify="right")
    t.add_column("runs", justify="right")
    for key, (label, _) in METRICS.items():
        s = summary.get(key) or {}
        if not s.get("runs"):
            continue
        t.add_row(
            label,
            f"{s['median_abs_error']:.1%}",
            f"{s['p90_abs_error']:.1%}",
            f"{s['median_signed_error']:+.1%}",
            str(s["runs"]),
        )
    return t


def validate(
    runs_csv: Annotated[Path, typer.Argument(help="RUNS.csv: one measured run per row (see sim/serving/validate.py).")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for runs.csv, summary.json, the plot, scenarios/ and traces/.")
    ],
    engine_profile: Annotated[
        Path | None, typer.Option(help="An engine profile YAML (e.g. from 'moesim fit-engine'); default: shipped.")
    ] = None,
    cost_model: Annotated[
        str | None,
        typer.Option(help="'roofline' (default), 'achievable' or a calibration file from 'moesim calibrate'."),
    ] = None,
    engine: Annotated[
        Engine, typer.Option(help="des: discrete-event replay; analytical: closed form per load stage (fast).")
    ] = Engine.des,
    only: Annotated[str | None, typer.Option(help="Comma-separated experiment ids to run (default: all).")] = None,
    max_requests: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_REQUESTS,
            help="Replay only the first N arrivals of each run (the DES takes ~1 min per 16,800-request run); "
            "measured metrics are then recomputed over the same requests when per-request data exists.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the Poisson arrivals of staged workloads.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an --out folder moesim did not write.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary and rows as one JSON object.")] = False,
) -> None:
    """Run every measured deployment of RUNS.csv through the simulator: predicted vs measured per metric.

    Reports mean E2E, mean TTFT, mean ITL ((mean e2e - mean TTFT) / (mean output - 1)) and P90s per run, the median
    and P90 absolute relative error per metric (overloaded runs flagged and left out), and a scatter plot. Runs of
    two or more load stages are also compared stage by stage (stages.csv; per GPU in the summary): the ITL error at
    the first and last stage, and how much the ITL rises per request decoding at once, measured and predicted.

    Example: moesim validate ../shared/data/vllm-e2e-dense/experiments.csv --engine analytical --out runs/validate
    """
    import yaml

    from moesim.model.outputs import check_replaceable, output_dir
    from moesim.sim.common import clean_json
    from moesim.sim.serving.validate import read_runs, scatter_plot, scenario_for
    from moesim.sim.serving.validate import validate as run_validation

    check_replaceable(out_dir, "validate", force)
    runs = read_runs(runs_csv, _only(only))
    cm, cm_name = _cost_model(cost_model)
    profile = _profile(engine_profile)
    if engine is Engine.des and max_requests is None:
        err.print(
            f"note: the DES replays every request of {len(runs)} runs (about 1 min per 16,800-request run); "
            "--max-requests N replays the first N of each, --engine analytical solves them in seconds",
            markup=False,
        )
    with output_dir(out_dir, "validate", force=force) as tmp:
        with progress_bar("validating") as update:
            res = run_validation(
                runs, tmp, engine.value, cm, profile, max_requests=max_requests, seed=seed, progress=update
            )
        res.summary.update(runs_csv=str(runs_csv), cost_model=cm_name)
        (tmp / "scenarios").mkdir(exist_ok=True)
        for run in runs:
            from moesim.sim.serving.validate import _safe

            sc = scenario_for(run, f"../traces/{_safe(run.run_id)}.csv", profile)
            if cm is not None:  # replayable with 'moesim simulate' as validated
                sc["cost_model"] = cm_name if cm_name == "achievable" else str(Path(cm_name).resolve())
            (tmp / "scenarios" / f"{_safe(run.run_id)}.yaml").write_text(yaml.safe_dump(sc, sort_keys=False))
        res.rows.to_csv(tmp / "runs.csv", index=False)
        if len(res.stages):
            res.stages.to_csv(tmp / "stages.csv", index=False)
        (tmp / "summary.json").write_text(clean_json(res.summary) + "\n")
        plot = scatter_plot(res.rows, tmp / "predicted_vs_measured.png", f"{runs_csv.name}: {engine.value}, {cm_name}")
    res.summary["out"] = str(out_dir)
    res.summary["plot"] = str(out_dir / plot.name) if plot else None
    if as_json:
        emit_json({**res.summary, "rows": res.rows.to_dict(orient="records")})
        return
    t = Table(title=f"{runs_csv.name}: predicted vs measured ({engine.value}, {cm_name})")
    for col in ("run", "status", "E2E ms meas/pred", "TTFT ms meas/pred", "ITL ms meas/pred", "note"):
        t.add_column(col, overflow="fold")
    for _, r in res.rows.iterrows():
        cells = []
        for key in ("e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms"):
            m, p = r.get(f"measured_{key}"), r.get(f"predicted_{key}")
            cells.append(f"{m:,.1f} / {p:,.1f} ({p / m - 1:+.0%})" if isinstance(p, float) and m and p == p else "-")
        status = str(r["status"])
        mf, pf = r.get("measured_failed"), r.get("predicted_failed")
        if status == "overloaded" and isinstance(mf, float) and mf == mf:  # failed requests, measured / predicted
            pred = f" / {pf:,.0f}" if isinstance(pf, float) and pf == pf else ""
            status += f" (failed {mf:,.0f}{pred})"
        t.add_row(str(r["run_id"])[:40], status, *cells, str(r.get("note") or "")[:80])
    out.print(t)
    out.print(_table(res.summary, f"error over {res.summary['runs_compared']} runs (overloaded and failed left out)"))
    ov = res.summary.get("overload")
    if ov and (ov["measured"] or ov["predicted"]):
        out.print(
            f"overloaded: {ov['measured']} measured, {ov['predicted']} predicted, {ov['both']} both "
            "(predicted_overloaded in runs.csv; the discrete-event engine fails requests past the client's timeout)"
        )
    for gpu, g in (res.summary.get("stages") or {}).items():
        out.print(
            f"{gpu}, {g['runs']} staged runs: mean ITL error {g['itl_error_first_stage']:+.1%} at the first stage, "
            f"{g['itl_error_last_stage']:+.1%} at the last; ITL rise per request decoding at once "
            f"{g['itl_slope_measured_ms_per_request']:.3f} ms measured, predicted x"
            f"{g['itl_slope_predicted_over_measured']:.2f} (median of {g['slope_runs']} runs; stages.csv)"
        )
    staged = "stages.csv, " if len(res.stages) else ""
    wrote = f"runs.csv, {staged}summary.json, {'predicted_vs_measured.png, ' if plot else ''}scenarios/"
    out.print(f"wrote {out_dir}/ ({wrote})")


def fit_engine(
    runs_csv: Annotated[Path, typer.Argument(help="RUNS.csv: one measured run per row (see sim/serving/validate.py).")],
    out_file: Annotated[Path, typer.Option("--out", help="The engine profile YAML to write.")],
    params: Annotated[
        str,
        typer.Option(help="Comma-separated host parameters to fit (sim/serving/host.py PARAMS)."),
    ] = "scheduler_base_s,scheduler_per_seq_s,prepare_per_token_s,api_per_request_s",
    cv: Annotated[
        CvBy, typer.Option(help="model: leave each model out in turn and predict it; none: no CV.")
    ] = CvBy.model,
    engine_profile: Annotated[Path | None, typer.Option(help="The profile to start from (default: shipped).")] = None,
    cost_model: Annotated[
        str | None,
        typer.Option(help="'roofline' (default), 'achievable' or a calibration file from 'moesim calibrate'."),
    ] = None,
    engine: Annotated[
        Engine, typer.Option(help="Engine of the inner loop: analytical (default, fast) or des (minutes per run).")
    ] = Engine.analytical,
    only: Annotated[str | None, typer.Option(help="Comma-separated experiment ids to fit on (default: all).")] = None,
    max_requests: Annotated[
        int | None, typer.Option(min=1, max=MAX_REQUESTS, help="Replay only the first N arrivals of each run.")
    ] = None,
    max_evals: Annotated[
        int,
        typer.Option(
            min=1, max=1000, help="Most least-squares iterations of the fit (each: every run once per parameter + 1)."
        ),
    ] = 10,
    cv_evals: Annotated[
        int, typer.Option(min=1, max=1000, help="Most iterations of each cross-validation refit (from the fit).")
    ] = 4,
    force: Annotated[bool, typer.Option("--force", help="Replace an --out file moesim did not write.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the fit as one JSON object.")] = False,
) -> None:
    """Fit host-cost parameters of the engine profile to measured runs; write a profile YAML.

    Minimises the log errors of mean E2E, TTFT and ITL over the runs (bounded, non-negative parameters), then
    cross-validates by leaving each model out. Use the result with 'engine: {profile: FILE}' in a scenario or
    'moesim validate --engine-profile FILE'; check it with 'moesim validate --engine des'.

    Example: moesim fit-engine ../shared/data/vllm-e2e-dense/experiments.csv --out vllm-fitted.yaml --cv model
    """
    from moesim.model.outputs import write_text
    from moesim.sim.serving.fit_engine import Problem, check_params, is_fit_profile, profile_yaml
    from moesim.sim.serving.fit_engine import fit_engine as run_fit
    from moesim.sim.serving.validate import read_runs

    names = check_params(params.split(","))
    if out_file.exists() and not force and not is_fit_profile(out_file):
        raise MoesimError(
            f"--out {out_file} exists and was not written by moesim fit-engine; refusing to overwrite it",
            "give --out a new file name, or add --force",
        )
    runs = read_runs(runs_csv, _only(only))
    cm, cm_name = _cost_model(cost_model)
    profile = _profile(engine_profile)
    with tempfile.TemporaryDirectory(prefix="moesim-fit-") as work:
        problem = Problem(runs, Path(work), engine.value, cm, profile, max_requests)
        with progress_bar("fitting") as update:
            fit = run_fit(
                problem,
                names,
                cv=cv is CvBy.model,
                max_nfev=max_evals,
                progress=lambda s: update(0, 1, s),
                cv_nfev=cv_evals,
            )
    kind = runs[0].engine.get("kind", "vllm")
    text = profile_yaml(fit, runs_csv, len(problem.fit_indices()), kind, profile)
    write_text(out_file, text, owned=is_fit_profile, force=force)
    result = {
        "out": str(out_file),
        "params": list(fit.params),
        "values_s": fit.values,
        "start_s": fit.start,
        "cv_values_s": fit.cv_values,
        "engine": engine.value,
        "cost_model": cm_name,
        "max_requests": max_requests,
        **fit.summary,
    }
    if as_json:
        emit_json(result)
        return
    t = Table(title=f"fitted on {runs_csv.name} ({engine.value}, {cm_name})")
    t.add_column("parameter")
    t.add_column("start", justify="right")
    t.add_column("fitted", justify="right")
    for name in fit.params:
        t.add_row(name, f"{fit.start[name]:.3g} s", f"{fit.values[name]:.3g} s")
    out.print(t)
    out.print(_table(fit.summary["start"], "before the fit (start values)"))
    out.print(_table(fit.summary["fit"], "after the fit (in sample)"))
    if "cv" in fit.summary:
        out.print(_table(fit.summary["cv"], "leave-model-out cross-validation (each model predicted by the others)"))
    out.print(f"wrote {out_file}")
