"""Benchmark section 12: serving predictions against real vLLM runs, before and after fitting the engine profile.

Data: ``../shared/data/vllm-e2e-dense`` (real vLLM v0.15.1 measurements of dense models on H100, A100-80GB and
L40S by the inference-sim project; see its README). Skipped when absent.

Figures (median and P90 of |predicted / measured - 1| per metric, overloaded runs left out):

1. before any fitting: every usable run through the analytical engine (each load stage solved at its own rate)
   with the shipped vLLM profile; the 12 runs with per-request data replayed whole through the DES;
2. ``moesim fit-engine`` on all runs with leave-model-out cross-validation (analytical inner loop): in sample and
   cross-validated;
3. the fitted profile checked with the DES on the replayed runs.

Equivalent commands (the figures quoted in the closing note come from them)::

    moesim validate ../shared/data/vllm-e2e-dense/experiments.csv --engine analytical --out runs/before
    moesim fit-engine ../shared/data/vllm-e2e-dense/experiments.csv --out vllm-fitted.yaml --cv model
    moesim validate ../shared/data/vllm-e2e-dense/experiments.csv --engine des \\
        --only <the 12 per-request runs> --engine-profile vllm-fitted.yaml --out runs/after-des
    (and the same with --cost-model achievable, and with --cost-model FILE from
    'moesim calibrate profiling/data/h100-sxm/full-bf16 --out FILE')

Run: ``python -m benchmarks.serving_validation [--quick]`` writes this section into benchmarks/RESULTS.md
(replacing an earlier section 12); ``benchmarks/run.py`` includes it.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moesim.sim.serving.fit_engine import DEFAULT_PARAMS, Problem, fit_engine, profile_yaml  # noqa: E402
from moesim.sim.serving.validate import METRICS, read_runs, validate  # noqa: E402

# with the roofline and with a calibration of the shipped H100 SXM tables

DATA = ROOT.parent / "shared" / "data" / "vllm-e2e-dense"
TITLE = "## 12. Serving against real vLLM runs (vllm-e2e-dense), before and after fit-engine"
KEYS = ("e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms", "e2e_p90_ms", "ttft_p90_ms")


def _row(label: str, s: dict[str, Any]) -> str:
    cells = []
    for key in KEYS:
        m = s.get(key) or {}
        cells.append(f"{m['median_abs_error']:.1%} / {m['p90_abs_error']:.1%}" if m.get("runs") else "-")
    return f"| {label} | {s.get('runs_compared', s.get(KEYS[0], {}).get('runs', 0))} | " + " | ".join(cells) + " |"


def _misses(rows, limit: float = 0.25) -> list[str]:
    out = []
    for _, r in rows.iterrows():
        if r.get("status") != "ok":
            continue
        bad = [
            f"{METRICS[k][0]} {r[f'error_{k}']:+.0%}"
            for k in ("e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms")
            if abs(r.get(f"error_{k}", 0) or 0) > limit
        ]
        if bad:
            out.append(f"- `{r['run_id']}`: {', '.join(bad)}" + (f" ({r['note']})" if r.get("note") else ""))
    return out


def _log(msg: str) -> None:
    print(f"[serving_validation {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _calibration(work: Path) -> Path | None:
    """A calibration of the shipped H100 SXM tables (``profiling/data/h100-sxm/full-bf16``), or None."""
    tables = ROOT / "profiling" / "data" / "h100-sxm" / "full-bf16"
    if not tables.is_dir():
        return None
    from moesim.profiling.calibrate import calibrate, save

    path = work / "h100-cal.json"
    save(calibrate([tables]), path)  # as 'moesim calibrate profiling/data/h100-sxm/full-bf16 --out FILE'
    return path


def _one(label: str, runs, replay, work: Path, cm, des_requests: int | None, quick: bool, stats: dict) -> list[str]:
    """Before / fit with CV / after rows for one cost model."""
    runs_csv = DATA / "experiments.csv"
    t0 = time.perf_counter()
    before = validate(runs, work / "before", "analytical", cm)
    stats["before_analytical"] = before.summary | {"wall_s": time.perf_counter() - t0}
    _log(f"{label}: before, analytical: {stats['before_analytical']['e2e_mean_ms']}")
    rows = [_row(f"{label}: before, analytical, shipped vLLM profile", before.summary)]
    if not quick:
        t0 = time.perf_counter()
        before_des = validate(replay, work / "before-des", "des", cm, max_requests=des_requests)
        stats["before_des"] = before_des.summary | {"wall_s": time.perf_counter() - t0}
        _log(f"{label}: before, DES: {stats['before_des']['e2e_mean_ms']} in {stats['before_des']['wall_s']:.0f} s")
        rows.append(_row(f"{label}: before, DES, replayed runs", before_des.summary))
        stats["before_des_rows"] = before_des.rows.to_dict(orient="records")
    t0 = time.perf_counter()
    problem = Problem(runs if not quick else replay, work / "fit", "analytical", cm)
    fit = fit_engine(problem, DEFAULT_PARAMS, cv=True, max_nfev=4 if quick else 10, cv_nfev=2 if quick else 4)
    stats["fit"] = {"values_s": fit.values, "start_s": fit.start, "fit_s": time.perf_counter() - t0, **fit.summary}
    stats["cv_rows"] = fit.cv_rows.to_dict(orient="records")
    stats["before_rows"] = before.rows.to_dict(orient="records")
    _log(f"{label}: fit {fit.values}; cv {fit.summary.get('cv', {}).get('e2e_mean_ms')}")
    rows += [
        _row(f"{label}: fit-engine in sample, analytical", fit.summary["fit"]),
        _row(f"{label}: fit-engine leave-model-out CV, analytical", fit.summary.get("cv", {})),
    ]
    prof = work / "vllm-fitted.yaml"
    prof.write_text(profile_yaml(fit, runs_csv, len(problem.fit_indices())))
    if not quick:
        t0 = time.perf_counter()
        after_des = validate(replay, work / "after-des", "des", cm, profile=str(prof), max_requests=des_requests)
        stats["after_des"] = after_des.summary | {"wall_s": time.perf_counter() - t0}
        _log(f"{label}: after, DES: {stats['after_des']['e2e_mean_ms']}")
        rows.append(_row(f"{label}: after, DES with the fitted profile, replayed runs", after_des.summary))
        stats["after_des_rows"] = after_des.rows.to_dict(orient="records")
    fitted = ", ".join(f"{k} {fit.start[k]:.3g} -> {v:.3g} s" for k, v in fit.values.items())
    notes = [
        f"{label}: fitted {fitted}; {fit.summary['evaluations']} evaluations in {stats['fit']['fit_s']:.0f} s. "
        "Runs off by more than 25 % on a mean metric in the cross-validation:",
        "",
        *(_misses(fit.cv_rows) or ["- none"]),
        "",
    ]
    if "after_des_rows" in stats:
        notes += [
            f"{label}: replayed runs off by more than 25 % in the DES with the fitted profile:",
            "",
            *(_misses(pd.DataFrame(stats["after_des_rows"])) or ["- none"]),
            "",
        ]
    stats["_rows"], stats["_notes"] = rows, notes
    return rows


def bench_serving_validation(quick: bool = False) -> tuple[str, dict]:
    """Section 12 (see the module docstring)."""
    if not (DATA / "experiments.csv").is_file():
        return f"{TITLE}\n\nSkipped: ../shared/data/vllm-e2e-dense is not present.\n", {}
    runs = read_runs(DATA / "experiments.csv")
    replay = [r for r in runs if r.per_request is not None]
    des_requests = 500 if quick else None
    stats: dict[str, Any] = {"roofline": {}, "achievable": {}, "calibrated": {}}
    rows: list[str] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="moesim-bench-") as work:
        w = Path(work)
        rows += _one("roofline", runs, replay, w / "roofline", None, des_requests, quick, stats["roofline"])
        notes += stats["roofline"].pop("_notes")
        stats["roofline"].pop("_rows")
        from moesim.model.achievable import AchievableCostModel

        ach = AchievableCostModel()
        rows += _one("achievable", runs, replay, w / "achievable", ach, des_requests, quick, stats["achievable"])
        notes += stats["achievable"].pop("_notes")
        stats["achievable"].pop("_rows")
        cal = _calibration(w)
        if cal is not None:
            from moesim.profiling.calibrate import CalibratedCostModel

            cm = CalibratedCostModel.from_file(cal)
            rows += _one("calibrated", runs, replay, w / "calibrated", cm, des_requests, quick, stats["calibrated"])
            notes += stats["calibrated"].pop("_notes")
            stats["calibrated"].pop("_rows")
    des = stats["roofline"].get("before_des", {})
    lines = [
        TITLE,
        "",
        "Real vLLM v0.15.1 runs of dense models (inference-sim project; `../shared/data/vllm-e2e-dense`, "
        f"{len(runs)} runs, {sum(r.overloaded for r in runs)} overloaded and left out, {len(replay)} with "
        "per-request arrivals and lengths, replayed). Other runs: Poisson stages of their workload label's profile "
        "(`sim/serving/validate.py` LABEL_PROFILES; an assumption named in each run's note). Cells: median / P90 of "
        "|predicted / measured - 1|. ITL = (mean E2E - mean TTFT) / (mean output - 1), the study's per-token "
        "figure. Achievable: the roofline plus published kernel efficiencies (`model/achievable.py`), no tables. "
        "Calibrated: the H100 SXM tables of `profiling/data/h100-sxm/full-bf16` (A100 and L40S runs fall "
        "back visibly where a table is missing). fit-engine fits "
        f"{', '.join(DEFAULT_PARAMS)} (bounds in `sim/serving/fit_engine.py` BOUNDS) with the analytical engine in "
        "the loop; CV: each model predicted by a fit on the others.",
        "",
        "| configuration | runs | mean E2E | mean TTFT | mean ITL | P90 E2E | P90 TTFT |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *notes,
        "A fitted value at its bound means the fit used that parameter to absorb time the model lacks elsewhere "
        "(kernels), not a measured host cost.",
        "",
    ]
    if des:
        lines += [
            f"Speed: the DES replayed the {len(replay)} runs ({des_requests or 'all'} requests each) in "
            f"{des['wall_s']:.0f} s; the analytical engine solves all {len(runs)} runs in "
            f"{stats['roofline']['before_analytical']['wall_s']:.1f} s.",
            "",
        ]
    return "\n".join(lines), stats


def replace_section(path: Path, number: int, text: str) -> None:
    """Put ``text`` into ``path`` in place of an earlier section ``number`` of RESULTS.md (or at the end), written
    through a temporary file. The old section's dated ``### `` subsections that ``text`` does not carry (the
    hand-written history of what changed and why) are kept after it: a benchmark rewrites its own table, never the
    notes beneath it."""
    old = path.read_text() if path.is_file() else "# moesim benchmark results\n"
    pattern = re.compile(rf"^## {number}\. .*?(?=^## \d+\. |\Z)", re.S | re.M)

    def merged(m: re.Match) -> str:
        subs = re.findall(r"^### .*?(?=^### |\Z)", m.group(0), re.S | re.M)
        kept = [sub for sub in subs if sub.splitlines()[0] not in text]
        if not kept:
            return text
        return text.rstrip("\n") + "\n\n" + "".join(kept).rstrip("\n") + "\n\n"

    new = pattern.sub(merged, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new)
    tmp.replace(path)


def write_section(text: str, path: Path) -> None:
    """Put ``text`` into ``path`` in place of an earlier section 12 (or at the end)."""
    replace_section(path, 12, text)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="replayed runs only, no DES, short fits")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure and per-run row here")
    args = ap.parse_args()
    section, stats = bench_serving_validation(args.quick)
    write_section(section, args.out)
    if args.json:
        from moesim.sim.common import clean_json

        args.json.write_text(clean_json(stats) + "\n")
    print(section)
