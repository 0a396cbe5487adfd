"""Benchmark section 33: the serving simulator against real vLLM runs load stage by load stage (issue 19).

Why: section 12 compares each run's whole-run means. Most of its runs have two load stages (inference-perf's
profiles: 2.4 -> 5.9 req/s under ``general-lite``, 8 -> 20 under ``general``, each with a per-stage file of the
measured means), so how the error moves with load can be read too. Where the decode step's cost per running
request is wrong, the ITL error grows from the light stage to the busy one, which the whole-run mean hides.

What it runs: ``moesim validate ../shared/data/vllm-e2e-dense/experiments.csv --engine analytical`` with the
``achievable`` cost model, the roofline and a calibration of the shipped H100 SXM tables
(``profiling/data/h100-sxm/full-bf16``), shipped vLLM profile, no fit; then `sim.serving.validate.stage_summary`
per GPU and tensor-parallel size: the median signed ITL error at the first and the last stage, and the median of
predicted over measured ITL rise per request decoding at once (each side's own Little's-law running count,
``rate x (mean E2E - mean TTFT)``).

Run: ``python -m benchmarks.stage_errors [--print]`` (about a minute); writes section 33 of RESULTS.md (``--out FILE``
to write elsewhere). Skips cleanly without ``../shared/data/vllm-e2e-dense``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving_validation import DATA, replace_section  # noqa: E402

TITLE = "## 33. Serving against real vLLM runs, load stage by load stage (issue 19)"


def _cost_models(work: Path) -> list[tuple[str, Any]]:
    """(label, cost model) for the achievable model, the roofline and the calibrated H100 tables."""
    from benchmarks.serving_validation import _calibration
    from moesim.model.achievable import AchievableCostModel
    from moesim.profiling.calibrate import CalibratedCostModel

    out: list[tuple[str, Any]] = [("achievable", AchievableCostModel()), ("roofline", None)]
    cal = _calibration(work)
    if cal is not None:
        out.append(("calibrated (H100 tables)", CalibratedCostModel.from_file(cal)))
    return out


def _pct(x: float) -> str:
    return "-" if x != x else f"{x:+.1%}"


def _ratio(x: float) -> str:
    return "-" if x != x else f"{x:.2f}"


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The section's table: one row per cost model, GPU and tensor-parallel size."""
    lines = [
        "| cost model | GPU | TP | staged runs | ITL error, first stage | ITL error, last stage | ITL rise per "
        "decoding request, measured ms | predicted / measured rise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, summary in results.items():
        for gpu, g in summary.items():
            rows = [("all", g), *sorted(g["by_tp"].items(), key=lambda kv: int(kv[0]))]
            for tp, f in rows:
                lines.append(
                    f"| {label} | {gpu} | {tp} | {f['runs']} | {_pct(f['itl_error_first_stage'])} | "
                    f"{_pct(f['itl_error_last_stage'])} | {_ratio(f['itl_slope_measured_ms_per_request'])} | "
                    f"{_ratio(f['itl_slope_predicted_over_measured'])} ({f['slope_runs']}) |"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--print", action="store_true", help="print the section instead of writing RESULTS.md")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = ap.parse_args(argv)
    if not (DATA / "experiments.csv").is_file():
        print(f"skipped: {DATA} not present", file=sys.stderr)
        return 0
    from moesim.sim.serving.validate import read_runs, validate

    t0 = time.perf_counter()
    runs = read_runs(DATA / "experiments.csv")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, cm in _cost_models(work):
            res = validate(runs, work / label.split()[0], "analytical", cm)
            results[label] = res.summary["stages"]
            print(f"[stage_errors] {label}: {len(res.stages)} stage rows", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    lines = [
        TITLE,
        "",
        "Real vLLM v0.15.1 runs of dense models (`../shared/data/vllm-e2e-dense`, section 12), the runs of two load "
        "stages with a per-stage file, overloaded runs left out; analytical engine, shipped vLLM profile, no fit "
        "(`python -m benchmarks.stage_errors`). ITL error: predicted / measured - 1 of the stage's mean ITL, median "
        "over the runs. Rise: the mean ITL's change from the first stage to the last per request decoding at once "
        "added (Little's law on each side's own means); the last column is the median over runs of predicted / "
        "measured rise (in brackets the runs with a rise on both sides).",
        "",
        *table(results),
        "",
        f"Computed in {wall:.0f} s of wall time.",
        "",
    ]
    text = "\n".join(lines)
    if args.print:
        print(text)
        return 0
    replace_section(args.out, 33, text)
    print(f"wrote {TITLE!r} to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
