"""Benchmark section 29: MoE serving against real vLLM runs of Mixtral-8x7B on H100 (held out), and the fused-MoE
kernel against its measured times.

Runs (read, not re-measured; none of them was used to build or fit moesim): four vLLM v0.15.1 runs of
``mistralai/Mixtral-8x7B-v0.1`` on 2 x H100 (TP2, FP16 weights, CUDA graphs on, prefix caching and chunked prefill
on, ``--max-num-seqs 128 --max-num-batched-tokens 2048``), measured by the inference-sim project with the
inference-perf client (streaming completions, ``ignore_eos``): repository inference-sim/training at commit
c4f03409b4489891482bcd63797cfe3a92fc262d, folders ``default_args/20260218-120914-mixtral-8x7b-v0-1-tp2-codegen``,
``-130541-...-general``, ``-135247-...-reasoning``, ``-141024-...-roleplay``: each folder's ``profile.yaml`` /
``results/config.yaml`` (workload: shared-prefix prompts of 10 groups x 10 prompts, system prompt and question
lengths, ``max_tokens``, Poisson-like constant-rate stages) and ``results/summary_lifecycle_metrics.json`` (the
figures in `RUNS` below: means and P90s of request latency and time to first token, mean prompt and output
tokens, failed requests). The same project's dense runs are ``../shared/data/vllm-e2e-dense``, whose README gives
the method and metric definitions; its leaderboard's error table (inference-sim/sim-to-real-accuracy-validation
results/cluster_2000req/error_records.csv) carries the same values for the general and codegen runs. No licence is
stated for these measurements: only the few summary figures a comparison needs are quoted here, with their source.

Each run goes through ``moesim validate`` (`sim.serving.validate`) as a RUNS.csv row, exactly as a user's own
measurements would, with the shipped vLLM profile and each cost model: the roofline; ``achievable`` (published
kernel efficiencies, no tables); ``achievable`` without the Triton fused-MoE figure (``moe_fraction``, the model
before it); calibrated on our H100 SXM tables (``profiling/data/h100-sxm/full-bf16``: our Triton fused-MoE
kernel, not vLLM's); and calibrated on those plus AIConfigurator's H100 kernel database imported with ``moesim
import`` (vLLM 0.19's own fused-MoE kernel and GEMMs, timed back to back; when
``../shared/data/aiconfigurator-h100-sxm`` is present). The reasoning run is overloaded (3,294 of 4,800 requests
failed at the client's 300 s timeout) and is reported but left out of the error summary, as ``moesim validate``
does.

Second table (when the AIConfigurator data is present): the ``achievable`` model's time of vLLM's fused-MoE layer
against its measured time in that database (bf16, no expert parallelism, every token count and expert shape),
with and without ``moe_fraction``; the figure was read from the TP1 rows at 8,192 tokens and more, the other
rows are held out.

The calibrated models are also run on the dense runs of ``../shared/data/vllm-e2e-dense`` (section 12's), when present.

Run: ``python -m benchmarks.moe_vllm_runs [--des] [--print]`` (about a minute; ``--des`` adds the discrete-event
engine with the achievable model, about three minutes more); writes section 29 of RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moesim.sim.serving.validate import read_runs, validate  # noqa: E402

AIC = ROOT.parent / "shared" / "data" / "aiconfigurator-h100-sxm"
DENSE = ROOT.parent / "shared" / "data" / "vllm-e2e-dense"
SOURCE = "inference-sim/training@c4f03409 default_args/20260218-*-mixtral-8x7b-v0-1-tp2-*"
TITLE = "## 29. MoE serving against real vLLM Mixtral runs (held out; issue 19)"

#: Columns shared by the four runs (their exp-config.yaml and results/config.yaml; vLLM's defaults otherwise).
COMMON = {
    "model": "mistralai/Mixtral-8x7B-v0.1", "gpu": "H100", "tp": 2, "vllm_version": "0.15.1", "max_num_seqs": 128,
    "max_num_batched_tokens": 2048, "max_model_len": 4096, "block_size": 16, "gpu_memory_utilization": 0.9,
    "prefix_caching": True, "chunked_prefill": True, "dataset": "inference-perf synthetic shared_prefix",
    "resolved_sp_num_groups": 10, "resolved_sp_num_prompts_per_group": 10, "ignore_eos": True,
}  # fmt: skip
#: Per run: workload label, stages (req/s; s), system prompt tokens, max_tokens, and the measured summary
#: (summary_lifecycle_metrics.json: prompt_len.mean, output_len.mean, failures.count, request_latency mean / p90,
#: time_to_first_token mean / p90, seconds there, milliseconds here).
RUNS: tuple[dict[str, Any], ...] = (
    {"experiment_id": "mixtral-8x7b-tp2-codegen", "workload_label": "codegen", "stage_rates_req_per_s": "5;10",
     "stage_durations_s": "600;600", "sp_system_prompt_len_tokens": 100, "sp_output_len_tokens": 247,
     "input_len_mean_tokens": 589.41, "output_len_mean_tokens": 243.29066666666668, "n_requests_failed": 0,
     "e2e_mean_ms": 4675.230160187726, "e2e_p90_ms": 4831.558039489027,
     "ttft_mean_ms": 58.854975121278484, "ttft_p90_ms": 63.86209999909624},
    {"experiment_id": "mixtral-8x7b-tp2-general", "workload_label": "general", "stage_rates_req_per_s": "8;20",
     "stage_durations_s": "600;600", "sp_system_prompt_len_tokens": 100, "sp_output_len_tokens": 248,
     "input_len_mean_tokens": 570.68, "output_len_mean_tokens": 245.38142857142856, "n_requests_failed": 0,
     "e2e_mean_ms": 5038.638279881672, "e2e_p90_ms": 5228.9313355460765,
     "ttft_mean_ms": 68.93669608209858, "ttft_p90_ms": 75.78027602285146},
    {"experiment_id": "mixtral-8x7b-tp2-roleplay", "workload_label": "roleplay", "stage_rates_req_per_s": "6",
     "stage_durations_s": "1200", "sp_system_prompt_len_tokens": 150, "sp_output_len_tokens": 251,
     "input_len_mean_tokens": 782.25, "output_len_mean_tokens": 247.91847222222222, "n_requests_failed": 0,
     "e2e_mean_ms": 4684.723604656756, "e2e_p90_ms": 4844.859253242612,
     "ttft_mean_ms": 60.50911733013992, "ttft_p90_ms": 63.41933971270919},
    {"experiment_id": "mixtral-8x7b-tp2-reasoning", "workload_label": "reasoning", "stage_rates_req_per_s": "4",
     "stage_durations_s": "1200", "sp_system_prompt_len_tokens": 100, "sp_output_len_tokens": 1448,
     "input_len_mean_tokens": 1075.6374501992032, "output_len_mean_tokens": 1419.6865869853918,
     "n_requests_failed": 3294, "e2e_mean_ms": 156420.99856354102, "e2e_p90_ms": 271321.0081025027,
     "ttft_mean_ms": 103034.83809073607, "ttft_p90_ms": 212575.11159451678},
)  # fmt: skip
#: The study's other Mixtral runs (inference-sim/sim-to-real-accuracy-validation@9bcf9391
#: results/cluster_2000req/error_records.csv, column ``actual``, stage -1 = the whole run; the same value on every
#: simulator's row, rounded here to 0.01 ms): folder, model, workload label, GPU, TP, DP, CPU KV offload,
#: gpu_memory_utilization, max_num_batched_tokens, then mean E2E, P90 E2E, mean TTFT, P90 TTFT, mean ITL (ms). Only
#: these columns are recorded, as for the dense study's ground-truth rows: the workload is the label's inference-perf
#: profile (`sim.serving.validate.LABEL_PROFILES`, an assumption each run's note names), and no failure counts. A
#: run whose measured mean TTFT exceeds `SATURATED_TTFT_MS` queued its requests for seconds: it is marked overloaded
#: (left out of the error summary) whatever moesim predicts for it.
STUDY_RUNS = """\
folder,model,label,gpu,tp,dp,offload,util,mnbt,e2e_mean,e2e_p90,ttft_mean,ttft_p90,itl_mean
27-mixtral-8x7b-tp2-general-2,8x7B,general,H100,2,1,0,0.9,1024,94377.02,224690.40,75824.88,205333.46,76.05
27-mixtral-8x7b-tp2-general-lite-2-1,8x7B,general-lite,H100,2,1,0,0.9,1024,4451.42,4774.97,54.21,60.23,18.04
28-mixtral-8x7b-tp2-general-2,8x7B,general,H100,2,1,0,0.9,8192,5031.17,5218.41,63.71,68.53,20.33
29-mixtral-8x7b-tp2-general-2,8x7B,general,H100,2,1,1,0.9,2048,5023.15,5205.39,65.65,69.48,20.25
30-mixtral-8x7b-tp2-general-2,8x7B,general,H100,2,1,0,0.95,2048,5000.20,5176.76,63.78,68.52,20.21
31-mixtral-8x7b-tp4-general-4,8x7B,general,H100,4,1,0,0.9,2048,2799.51,2977.54,37.03,41.07,11.26
32-mixtral-8x7b-tp2-general-2-2,8x7B,general,H100,2,2,0,0.9,2048,4802.88,5033.51,56.68,65.44,19.57
42-mixtral-8x7b-tp2-general-2,8x7B,general,A100-80GB,2,1,0,0.9,2048,111205.43,258770.25,101666.03,248973.68,39.01
49-mixtral-8x22b-tp8-general-8,8x22B-Instruct,general,H100,8,1,0,0.9,2048,4825.59,5000.93,61.84,68.18,19.22
50-mixtral-8x22b-tp8-codegen-8,8x22B-Instruct,codegen,H100,8,1,0,0.9,2048,4447.05,4474.00,58.17,60.13,17.79
51-mixtral-8x22b-tp8-roleplay-8,8x22B-Instruct,roleplay,H100,8,1,0,0.9,2048,4509.58,4539.46,57.69,59.88,17.76
53-mixtral-8x22b-tp8-reasoning-8,8x22B-Instruct,reasoning,H100,8,1,0,0.9,2048,30969.62,33590.93,939.63,3565.40,20.83
53-mixtral-8x22b-tp8-reasoning-lite-8-1,8x22B,reasoning-lite,H100,8,1,0,0.9,2048,26005.53,26410.34,65.64,64.90,18.21
56-mixtral-8x7b-tp2-general-2-1,8x7B,general,H100,2,1,0,0.9,2048,5033.74,5224.78,62.91,68.29,20.38
"""
#: `STUDY_RUNS` model column -> Hugging Face id (the error table's ``model``).
STUDY_MODELS = {
    "8x7B": "mistralai/Mixtral-8x7B-v0.1",
    "8x22B-Instruct": "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "8x22B": "mistralai/Mixtral-8x22B-v0.1",
}
#: Mean TTFT (ms) above which a run counts as saturated (see `STUDY_RUNS`): the unsaturated runs measure 37-69 ms.
SATURATED_TTFT_MS = 1000.0
KEYS = ("e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms", "e2e_p90_ms", "ttft_p90_ms")


def _log(msg: str) -> None:
    print(f"[moe_vllm_runs {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def runs_csv(path: Path) -> Path:
    """Write `RUNS` and `STUDY_RUNS` as a RUNS.csv (``tpot_derived_mean_ms`` = (mean e2e - mean TTFT) / (mean output
    - 1); a study run is overloaded when saturated)."""
    df = pd.DataFrame([{**COMMON, **r} for r in RUNS])
    df["tpot_derived_mean_ms"] = (df.e2e_mean_ms - df.ttft_mean_ms) / (df.output_len_mean_tokens - 1)
    study = pd.read_csv(io.StringIO(STUDY_RUNS)).rename(columns={
        "folder": "experiment_id", "label": "workload_label", "offload": "cpu_kv_offload",
        "util": "gpu_memory_utilization", "mnbt": "max_num_batched_tokens", "e2e_mean": "e2e_mean_ms",
        "e2e_p90": "e2e_p90_ms", "ttft_mean": "ttft_mean_ms", "ttft_p90": "ttft_p90_ms",
        "itl_mean": "tpot_derived_mean_ms",
    })  # fmt: skip
    study["model"] = study.model.map(STUDY_MODELS)
    study["cpu_kv_offload"] = study.cpu_kv_offload.astype(bool)
    study["n_requests_failed"] = (study.ttft_mean_ms > SATURATED_TTFT_MS).astype(int)
    pd.concat([df, study], ignore_index=True).to_csv(path, index=False)
    return path


def _without_moe_figure():
    """The achievable model as it was before ``moe_fraction``: the fused-MoE layer at cuBLAS' fraction."""
    from moesim.model.achievable import ACHIEVABLE, AchievableCostModel

    return AchievableCostModel({k: dataclasses.replace(v, moe_fraction={}) for k, v in ACHIEVABLE.items()})


def _calibrations(work: Path) -> list[tuple[str, Any]]:
    """Our H100 tables calibrated as section 12 calibrates them, and with AIConfigurator's import (``work/aic``,
    written by `bench` when the data is present) beside them."""
    from benchmarks.serving_validation import _calibration
    from moesim.profiling.calibrate import CalibratedCostModel, calibrate, save

    ours = _calibration(work)
    if ours is None:
        return []
    out: list[tuple[str, Any]] = [("calibrated: our H100 tables", CalibratedCostModel.from_file(ours))]
    if (work / "aic").is_dir():
        tables = ROOT / "profiling" / "data" / "h100-sxm" / "full-bf16"
        save(calibrate([tables, work / "aic"]), work / "ours-aic.json")
        label = "calibrated: our H100 tables + AIConfigurator's vLLM kernels"
        out.append((label, CalibratedCostModel.from_file(work / "ours-aic.json")))
    return out


def _cell(s: dict[str, Any], key: str) -> str:
    m = s.get(key) or {}
    if not m.get("runs"):
        return "-"
    return f"{m['median_abs_error']:.1%} / {m['p90_abs_error']:.1%} ({m['median_signed_error']:+.1%})"


def _kernel_table(aic: Path) -> tuple[list[str], dict[str, Any]]:
    """The achievable model against AIConfigurator's vLLM fused-MoE times (imported under ``aic``), with and
    without ``moe_fraction``."""
    from moesim.model import get_gpu, make_cluster
    from moesim.model.achievable import AchievableCostModel
    from moesim.profiling.opshapes import row_ops
    from moesim.profiling.tables import read_table

    table = read_table(aic / "grouped_gemm.parquet")
    df = table[0] if isinstance(table, tuple) else table
    df = df[(df.impl == "vllm_fused_moe") & (df.dtype == "bf16") & (df.ep == 1)].reset_index(drop=True)
    cluster = make_cluster(get_gpu("H100-SXM"), num_gpus=8)
    ops = row_ops("grouped_gemm", df)
    for name, cm in (("with", AchievableCostModel()), ("without", _without_moe_figure())):
        df[name] = np.array([cm.op_time(o, cluster).seconds for o in ops]) / df.time_s.to_numpy()
    df["read"] = (df.moe_tp == 1) & (df.tokens >= 8192)
    df["tokens_bin"] = pd.cut(df.tokens, [0, 64, 256, 1024, 4096, 1 << 30], labels=[
        "1-64", "65-256", "257-1,024", "1,025-4,096", "> 4,096"])  # fmt: skip
    lines = [
        "| rows | tokens | count | predicted / measured, median: without -> with | median abs error: without -> with"
        " | P90 abs error: without -> with |",
        "|---|---|---|---|---|---|",
    ]
    stats: dict[str, Any] = {}
    for read, group in df.groupby("read"):
        for tb, g in group.groupby("tokens_bin", observed=True):
            e0, e1 = (g.without - 1).abs(), (g["with"] - 1).abs()
            lines.append(
                f"| {'figure read here' if read else 'held out'} | {tb} | {len(g)} | {g.without.median():.2f} -> "
                f"{g['with'].median():.2f} | {e0.median():.1%} -> {e1.median():.1%} | {e0.quantile(0.9):.1%} -> "
                f"{e1.quantile(0.9):.1%} |"
            )
    held = df[~df.read]
    for name in ("without", "with"):
        err = (held[name] - 1).abs()
        stats[name] = {"median_abs": float(err.median()), "p90_abs": float(err.quantile(0.9)), "rows": len(held)}
    mix = df[(df.experts == 8) & (df.inter == 14336) & (df.moe_tp == 2)].sort_values("tokens")
    pairs = zip(mix.tokens, mix.without, mix["with"], strict=True)
    stats["mixtral_tp2"] = {int(t): (float(a), float(b)) for t, a, b in pairs}
    return lines, stats


def bench(des: bool = False) -> tuple[str, dict[str, Any]]:
    """Section 29 (see the module docstring)."""
    from moesim.model.achievable import AchievableCostModel

    t0 = time.perf_counter()
    stats: dict[str, Any] = {"runs": {}}
    rows: list[str] = []
    per_run: list[str] = []
    with tempfile.TemporaryDirectory(prefix="moesim-moe-runs-") as tmp:
        work = Path(tmp)
        if AIC.is_dir():
            from moesim.profiling.aiconfigurator import import_aiconfigurator

            import_aiconfigurator(AIC, work / "aic")
        runs = read_runs(runs_csv(work / "runs.csv"))
        models: list[tuple[str, Any]] = [
            ("roofline", None),
            ("achievable", AchievableCostModel()),
            ("achievable without moe_fraction (before)", _without_moe_figure()),
            *_calibrations(work),
        ]
        engines = [("analytical", m) for m in models]
        if des:
            engines.append(("des", models[1]))
        for i, (engine, (label, cm)) in enumerate(engines):
            t1 = time.perf_counter()
            res = validate(runs, work / f"out{i}", engine, cm)
            wall = time.perf_counter() - t1
            s = res.summary
            stats["runs"][f"{label} / {engine}"] = {**s, "rows": res.rows.to_dict(orient="records"), "wall_s": wall}
            _log(f"{label} / {engine}: E2E {s['e2e_mean_ms']} in {wall:.0f} s")
            cells = " | ".join(_cell(s, k) for k in KEYS)
            ov = s["overload"]
            over = f"{ov['measured']} / {ov['predicted']} / {ov['both']}"
            rows.append(f"| {label} | {engine} | {s.get('runs_compared', 0)} of {len(runs)} | {cells} | {over} |")
            for r in res.rows.to_dict(orient="records"):
                per_run.append(
                    f"| {label} | {engine} | {r['run_id']} | "
                    + " | ".join(
                        f"{r.get('measured_' + k, float('nan')):,.1f} / {r.get('predicted_' + k, float('nan')):,.1f}"
                        for k in ("e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms")
                    )
                    + f" | {r['status']} |"
                )
        dense_rows: list[str] = []
        if (DENSE / "experiments.csv").is_file():  # the same calibrations on the dense runs of section 12
            dense = read_runs(DENSE / "experiments.csv")
            for i, (label, cm) in enumerate(m for m in models if m[0].startswith("calibrated")):
                res = validate(dense, work / f"dense{i}", "analytical", cm)
                s = res.summary
                stats["dense"] = {**stats.get("dense", {}), label: s}
                cells = " | ".join(_cell(s, k) for k in KEYS[:3])
                dense_rows.append(f"| {label} | {s.get('runs_compared', 0)} of {len(dense)} | {cells} |")
        kernel_lines: list[str] = []
        if (work / "aic").is_dir():
            kernel_lines, stats["kernel"] = _kernel_table(work / "aic")
    wall = time.perf_counter() - t0
    out = [
        TITLE,
        "",
        f"Measured runs: {len(RUNS)} with their profiles, {SOURCE}, and {len(STUDY_RUNS.splitlines()) - 1} more of the "
        "same study "
        "from its error table (module docstring: the runs, what was read from where, what was assumed): vLLM "
        "v0.15.1, Mixtral-8x7B at TP2 (1,024 / 2,048 / 8,192 batched tokens, DP2, CPU KV offload, A100-80GB), at "
        "TP4, and Mixtral-8x22B at TP8, H100 unless named. `python -m benchmarks.moe_vllm_runs` puts them through "
        "`moesim validate` (the same RUNS.csv a user would write) with the shipped vLLM profile. Cells: median / P90 "
        "of |predicted / measured - 1| (median signed error) over the runs the real server sustained "
        f"(overloaded: failed requests, or a measured mean TTFT above {SATURATED_TTFT_MS / 1e3:.0f} s); ITL = "
        "(mean E2E - mean TTFT) / (mean output - 1).",
        "",
        "| cost model | engine | runs | mean E2E | mean TTFT | mean ITL | P90 E2E | P90 TTFT | overloaded: measured / "
        "predicted / both |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Per run, measured / predicted (ms):",
        "",
        "| cost model | engine | run | mean E2E | mean TTFT | mean ITL | status |",
        "|---|---|---|---|---|---|---|",
        *per_run,
        "",
    ]
    if dense_rows:
        out += [
            "The same calibrations on the 38 dense runs of section 12 (`vllm-e2e-dense`, analytical engine, shipped "
            "profile, no fit; section 12's CV figures are for our tables alone):",
            "",
            "| cost model | runs | mean E2E | mean TTFT | mean ITL |",
            "|---|---|---|---|---|",
            *dense_rows,
            "",
        ]
    if kernel_lines:
        k = stats["kernel"]
        out += [
            "The fused-MoE layer alone: `achievable` against vLLM 0.19's fused-MoE kernel as AIConfigurator measured "
            "it on an H100 SXM (bf16, balanced routing, no expert parallelism; every expert shape and TP size of "
            "the database), without and with `moe_fraction` (50.35% of the bf16 peak, read from the TP1 rows at "
            "8,192 tokens and more):",
            "",
            *kernel_lines,
            "",
            f"All {k['with']['rows']} held-out rows: median absolute error {k['without']['median_abs']:.1%} -> "
            f"{k['with']['median_abs']:.1%}, P90 {k['without']['p90_abs']:.1%} -> {k['with']['p90_abs']:.1%}. "
            "Mixtral-8x7B at TP2 (the runs above), predicted / measured without -> with: "
            + ", ".join(
                f"{t:,}: {a:.2f} -> {b:.2f}"
                for t, (a, b) in k["mixtral_tp2"].items()
                if t in (32, 256, 512, 1024, 4096, 16384)
            )
            + ".",
            "",
        ]
    out += [f"Computed in {wall:.0f} s of wall time.", ""]
    return "\n".join(out) + "\n", stats


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure and per-run row here")
    ap.add_argument("--des", action="store_true", help="also run the discrete-event engine (achievable model)")
    ap.add_argument("--print", action="store_true", help="print the section instead of writing RESULTS.md")
    args = ap.parse_args()
    text, stats = bench(args.des)
    if args.print:
        print(text)
    else:
        from benchmarks.serving_validation import replace_section

        replace_section(args.out, 29, text)
    if args.json:
        from moesim.sim.common import clean_json

        args.json.write_text(clean_json(stats) + "\n")
