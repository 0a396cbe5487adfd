"""Benchmark section 31: real runs past their capacity, the clients' timeout and the requests that failed (issue 19).

Runs (read, not re-measured): the overloaded runs among the reference data, those whose clients gave up on requests.
inference-perf, which drove them, fails a request when aiohttp's total timeout of 300 s passes before its response
has arrived (`sim.serving.validate.INFERENCE_PERF_TIMEOUT_S`), and vLLM aborts it then.

- ``../shared/data/vllm-e2e-dense``: every run with failed requests and a per-request file (Llama-2-7B TP1,
  Llama-2-70B TP4 and CodeLlama-34B TP2, each 4,800 requests at 4 req/s of the reasoning workload on H100; which
  requests failed and when they were sent are known);
- the Mixtral-8x7B TP2 reasoning run of section 29 (`benchmarks.moe_vllm_runs.RUNS`, inference-sim/training@c4f03409:
  4,800 requests at 4 req/s, 3,294 failed; staged Poisson arrivals, so only the count is compared).

Each goes through ``moesim validate --engine des`` as a user's RUNS.csv row would: the simulated clients give up
after the same 300 s (``workload.timeout_s``) and the discrete-event engine aborts their requests; the failed
requests of a per-request file are replayed too (they loaded the engine until they were aborted). The analytical
engine ("analytical, now") runs the same rows: its slot recursion takes the clients' deadlines
(`sim.serving.analytical.fifo_aborts`). "Before" is what
``moesim validate`` did until 2026-12-06: failed requests left out of the replay and no client timeout, so a run
counted as predicted overloaded only with unfinished requests, which the discrete-event engine never leaves.

Cost models: ``achievable`` (no tables) and, when ``../shared/data/aiconfigurator-h100-sxm`` is present, the
calibrated model of section 29 (our H100 tables and AIConfigurator's vLLM kernels).

Run: ``python -m benchmarks.overload [--print]`` (about six minutes); without ``--print`` it writes section 31
of RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moesim.sim.serving.validate import read_runs, validate  # noqa: E402

DENSE = ROOT.parent / "shared" / "data" / "vllm-e2e-dense"
AIC = ROOT.parent / "shared" / "data" / "aiconfigurator-h100-sxm"
TITLE = "## 31. Past capacity: the clients' timeout and the requests that failed (issue 19)"


def _log(msg: str) -> None:
    print(f"[overload {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def runs_csv(work: Path) -> Path | None:
    """The overloaded runs as one RUNS.csv (absolute per-request paths); None without the reference data."""
    from benchmarks.moe_vllm_runs import runs_csv as moe_runs

    parts = []
    if (DENSE / "experiments.csv").is_file():
        d = pd.read_csv(DENSE / "experiments.csv")
        d = d[(d["n_requests_failed"].fillna(0) > 0) & d["per_request_file"].notna()].copy()
        d["per_request_file"] = [str(DENSE / p) for p in d["per_request_file"]]
        d["per_stage_file"] = None
        parts.append(d)
    m = pd.read_csv(moe_runs(work / "moe.csv"))
    parts.append(m[m["experiment_id"] == "mixtral-8x7b-tp2-reasoning"].assign(load_generator="inference-perf"))
    if not parts:
        return None
    path = work / "runs.csv"
    pd.concat(parts, ignore_index=True).to_csv(path, index=False)
    return path


def _fmt(x: float, spec: str = ",.0f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def bench() -> tuple[str, dict[str, Any]]:
    """Section 31 (see the module docstring)."""
    from moesim.model.achievable import AchievableCostModel

    t0 = time.perf_counter()
    stats: dict[str, Any] = {}
    table: list[str] = []
    with tempfile.TemporaryDirectory(prefix="moesim-overload-") as tmp:
        work = Path(tmp)
        path = runs_csv(work)
        models: list[tuple[str, Any]] = [("achievable", AchievableCostModel())]
        if AIC.is_dir():
            from benchmarks.moe_vllm_runs import _calibrations
            from moesim.profiling.aiconfigurator import import_aiconfigurator

            import_aiconfigurator(AIC, work / "aic")
            models += [c for c in _calibrations(work) if "AIConfigurator" in c[0]]
        runs = read_runs(path)
        before = [dataclasses.replace(r, client_timeout_s=None) for r in runs]
        for label, cm in models:
            for engine, when, rs in (("des", "before", before), ("des", "now", runs), ("analytical", "now", runs)):
                t1 = time.perf_counter()
                res = validate(rs, work / f"{label[:10]}-{engine}-{when}", engine, cm)
                _log(f"{label} / {engine} / {when}: {time.perf_counter() - t1:.0f} s")
                stats[f"{label} / {engine} / {when}"] = res.rows.to_dict(orient="records")
                for r in res.rows.to_dict(orient="records"):
                    cells = [
                        f"{_fmt(r.get(f'measured_{k}'), spec)} / {_fmt(r.get(f'predicted_{k}'), spec)}"
                        for k, spec in (("failed", ",.0f"), ("first_failed_s", ",.1f"))
                    ] + [
                        f"{_fmt(r[f'measured_{k}'] / 1e3, ',.1f')} / {_fmt(r[f'predicted_{k}'] / 1e3, ',.1f')}"
                        for k in ("e2e_mean_ms", "ttft_mean_ms")
                    ]
                    over = "yes" if r.get("predicted_overloaded") else "no"
                    table.append(f"| {label} | {engine}, {when} | {r['run_id']} | {' | '.join(cells)} | {over} |")
    wall = time.perf_counter() - t0
    out = [
        TITLE,
        "",
        "`python -m benchmarks.overload` (module docstring: the runs and what was assumed). Each cell is measured / "
        "predicted. Failed: requests whose client gave up (300 s); first failed: when the first of them was sent, s "
        "from the first request (measured only with a per-request file); E2E and TTFT: means over the requests that "
        "did not fail, s; overloaded: whether the simulator failed requests too (the measured runs all did).",
        "",
        "| cost model | engine, code | run | failed | first failed (s) | mean E2E (s) | mean TTFT (s) | overloaded |",
        "|---|---|---|---|---|---|---|---|",
        *table,
        "",
        f"Computed in {wall:.0f} s of wall time.",
        "",
    ]
    return "\n".join(out) + "\n", stats


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--print", action="store_true", help="print the section instead of writing RESULTS.md")
    args = ap.parse_args()
    if not (DENSE / "experiments.csv").is_file():
        print("../shared/data/vllm-e2e-dense is absent: nothing to compare", file=sys.stderr)
        sys.exit(0)
    text, _stats = bench()
    if args.print:
        print(text)
    else:
        from benchmarks.serving_validation import replace_section

        replace_section(args.out, 31, text)
