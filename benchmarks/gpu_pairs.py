"""Benchmark section 32: one model, one engine and one client on an A100 and on an H100 (held out; issue 19).

Why: on ``../shared/data/vllm-e2e-dense`` (section 12) moesim is 15-23% optimistic on every A100-80GB run and
right on the H100 runs of the same models: the measured A100 / H100 ratio of mean ITL there is 1.97-2.18 for the
three models run on both, moesim's 1.59-1.70 (the two GPUs' achievable DRAM bandwidths, 3.02 / 1.76 TB/s, and
their kernels). Either moesim's A100 is wrong or that study's A100 machine is slower than a usual one. These runs
tell which: a second, independent pair of machines. (Since AIConfigurator's measured A100 kernels, section 34,
moesim's own ratio for these dense models is 1.69-1.92 and these files' 1.51-1.72 disagree with that study's:
section 32's note.)

Runs (read, not re-measured; none was used to build or fit moesim): LambdaLabsML/vllm-benchmark, the
``results/prompt_10/<N>x<GPU>/`` JSON files of vLLM's ``benchmark_serving.py`` (`RUNS` gives each file and its
commit), measured by Lambda on 1, 2, 4 and 8 x A100-80GB-SXM and H100-80GB-SXM on 7-8 September 2024 with vLLM
v0.5.4's OpenAI server (the ``vllm/vllm-openai:v0.5.4`` image, README.md and benchmark_v0.md;
``--max-num-seqs 1024 --gpu-memory-utilization 0.95``, tensor parallel over the GPUs, CUDA graphs on, default
flags otherwise: benchmark.py), the client (``benchmark_serving.py --dataset-name sharegpt --num-prompts 10``)
sending the same 10 ShareGPT prompts at once (request rate inf, streamed, greedy: its ``temperature 0``). The
repository states no licence: only the figures a comparison needs are quoted, with their source. Each file gives
every request's prompt and output tokens and TTFT, and the mean and median TPOT ((latency - TTFT) / (output
tokens - 1) per request, requests of one output token left out).

What moesim runs: the DES on exactly those 10 requests, all arriving at 0, with the shipped vLLM profile (v0.15,
vLLM V1: its host costs are not v0.5.4's, whose scheduler, input preparation and API server ran between the GPU's
steps, not beside them; the ratio of two GPUs under one engine is what this benchmark is for) and greedy
sampling, on the ``achievable`` cost model and the roofline.
Outputs of 0 tokens in a file (the client counted no token of an empty text) count as 1 generated token.

Run: ``python -m benchmarks.gpu_pairs [--print]`` (a few seconds); writes section 32 of RESULTS.md (``--out FILE``
to write elsewhere).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving_validation import replace_section  # noqa: E402
from moesim.sim.serving.engine import simulate  # noqa: E402
from moesim.sim.serving.metrics import with_derived  # noqa: E402
from moesim.sim.serving.serve import load  # noqa: E402

TITLE = "## 32. One engine on an A100 and an H100: published vLLM pairs (held out; issue 19)"
REPO = "LambdaLabsML/vllm-benchmark"
#: Per run (the file ``results/prompt_10/...`` of `REPO` at the commit named, its ``date``): moesim preset, GPU,
#: tensor-parallel size, every request's prompt and output tokens and TTFT (s; 0 where the client got no token:
#: left out of the TTFT here, as their one-token outputs are out of the TPOT), and the file's mean and median TPOT
#: (ms). The 10 prompts are the same ShareGPT ones in every file, counted by each model's tokenizer.
RUNS: tuple[dict[str, Any], ...] = (
    {"key": "llama-3-8b-tp1-a100", "preset": "llama-3-8b", "gpu": "A100-SXM-80GB", "tp": 1,
     "commit": "f093afe9",
     "path": "results/prompt_10/1xA100-80GB-SXM/Meta-Llama-3-8B-Instruct_tp1_len2048.json", "date": "20240908-071536",
     "inputs": (13, 25, 27, 10, 329, 29, 399, 328, 4, 205), "outputs": (120, 507, 233, 194, 101, 741, 9, 3, 6, 31),
     "ttfts": (0.1279, 0.1277, 0.1267, 0.1267, 0.1264, 0.1269, 0.1269, 0.1268, 0.1264, 0.1265),
     "tpot_mean_ms": 18.0295, "tpot_median_ms": 12.0137},
    {"key": "llama-3-8b-tp1-h100", "preset": "llama-3-8b", "gpu": "H100-SXM", "tp": 1,
     "commit": "a4f9f437",
     "path": "results/prompt_10/1xH100-80GB-SXM/Meta-Llama-3-8B-Instruct_tp1_len2048.json", "date": "20240907-082731",
     "inputs": (13, 25, 27, 10, 329, 29, 399, 328, 4, 205), "outputs": (120, 429, 233, 194, 101, 741, 9, 3, 6, 31),
     "ttfts": (0.0634, 0.0631, 0.0628, 0.0626, 0.0622, 0.0621, 0.062, 0.0619, 0.0619, 0.0622),
     "tpot_mean_ms": 11.1055, "tpot_median_ms": 7.5583},
    {"key": "mistral-nemo-12b-tp1-a100", "preset": "mistral-nemo-12b", "gpu": "A100-SXM-80GB", "tp": 1,
     "commit": "f093afe9",
     "path": "results/prompt_10/1xA100-80GB-SXM/Mistral-Nemo-Instruct-2407_tp1_len2048.json", "date": "20240908-074902",
     "inputs": (13, 27, 28, 12, 336, 29, 405, 331, 4, 206), "outputs": (124, 494, 241, 103, 0, 770, 0, 0, 7, 28),
     "ttfts": (0.1846, 0.1843, 0.1838, 0.1837, 0.0, 0.1836, 0.0, 0.0, 0.1828, 0.1827),
     "tpot_mean_ms": 18.8136, "tpot_median_ms": 17.6041},
    {"key": "mistral-nemo-12b-tp1-h100", "preset": "mistral-nemo-12b", "gpu": "H100-SXM", "tp": 1,
     "commit": "a4f9f437",
     "path": "results/prompt_10/1xH100-80GB-SXM/Mistral-Nemo-Instruct-2407_tp1_len2048.json", "date": "20240907-083205",
     "inputs": (13, 27, 28, 12, 336, 29, 405, 331, 4, 206), "outputs": (124, 816, 241, 95, 0, 770, 0, 0, 7, 28),
     "ttfts": (0.0833, 0.083, 0.0827, 0.0826, 0.0, 0.0824, 0.0, 0.0, 0.082, 0.0819),
     "tpot_mean_ms": 11.4439, "tpot_median_ms": 10.8023},
    {"key": "llama-3-70b-tp2-a100", "preset": "llama-3-70b", "gpu": "A100-SXM-80GB", "tp": 2, "commit": "f093afe9",
     "path": "results/prompt_10/2xA100-80GB-SXM/Meta-Llama-3-70B-Instruct_tp2_len2048.json", "date": "20240908-081524",
     "inputs": (13, 25, 27, 10, 329, 29, 399, 328, 4, 205), "outputs": (120, 723, 233, 194, 101, 741, 0, 0, 6, 31),
     "ttfts": (0.5078, 0.5075, 0.5069, 0.5068, 0.5067, 0.506, 0.0, 0.0, 0.5061, 0.5058),
     "tpot_mean_ms": 58.6875, "tpot_median_ms": 50.9155},
    {"key": "llama-3-70b-tp2-h100", "preset": "llama-3-70b", "gpu": "H100-SXM", "tp": 2, "commit": "a4f9f437",
     "path": "results/prompt_10/2xH100-80GB-SXM/Meta-Llama-3-70B-Instruct_tp2_len2048.json", "date": "20240907-092435",
     "inputs": (13, 25, 27, 10, 329, 29, 399, 328, 4, 205), "outputs": (120, 661, 233, 194, 101, 741, 0, 0, 6, 35),
     "ttfts": (0.2199, 0.2196, 0.2192, 0.2191, 0.219, 0.2188, 0.0, 0.0, 0.2186, 0.2186),
     "tpot_mean_ms": 33.5100, "tpot_median_ms": 29.5383},
    {"key": "mixtral-8x7b-tp2-a100", "preset": "mixtral-8x7b", "gpu": "A100-SXM-80GB", "tp": 2, "commit": "f093afe9",
     "path": "results/prompt_10/2xA100-80GB-SXM/Mixtral-8x7B-Instruct-v0.1_tp2_len2048.json", "date": "20240908-085324",
     "inputs": (14, 30, 28, 12, 375, 29, 487, 369, 5, 236), "outputs": (129, 971, 273, 207, 118, 928, 0, 26, 9, 49),
     "ttfts": (1.7241, 1.7238, 1.7237, 1.7236, 1.723, 1.7231, 0.0, 1.7223, 1.7227, 1.7225),
     "tpot_mean_ms": 25.7727, "tpot_median_ms": 26.6446},
    {"key": "mixtral-8x7b-tp2-h100", "preset": "mixtral-8x7b", "gpu": "H100-SXM", "tp": 2, "commit": "a4f9f437",
     "path": "results/prompt_10/2xH100-80GB-SXM/Mixtral-8x7B-Instruct-v0.1_tp2_len2048.json", "date": "20240907-092949",
     "inputs": (14, 30, 28, 12, 375, 29, 487, 369, 5, 236), "outputs": (129, 971, 273, 207, 118, 928, 0, 26, 9, 48),
     "ttfts": (1.8472, 1.8468, 1.8465, 1.8463, 1.8462, 1.846, 0.0, 1.8459, 1.8457, 1.8457),
     "tpot_mean_ms": 16.5152, "tpot_median_ms": 16.9262},
    {"key": "llama-3-8b-tp2-a100", "preset": "llama-3-8b", "gpu": "A100-SXM-80GB", "tp": 2, "commit": "f093afe9",
     "path": "results/prompt_10/2xA100-80GB-SXM/Meta-Llama-3-8B-Instruct_tp2_len2048.json", "date": "20240908-075914",
     "inputs": (13, 25, 27, 10, 329, 29, 399, 328, 4, 205), "outputs": (120, 659, 233, 194, 101, 741, 9, 3, 6, 38),
     "ttfts": (0.0993, 0.0997, 0.0988, 0.0987, 0.0988, 0.0983, 0.0984, 0.0983, 0.0982, 0.098),
     "tpot_mean_ms": 11.7842, "tpot_median_ms": 7.9288},
    {"key": "llama-3-8b-tp2-h100", "preset": "llama-3-8b", "gpu": "H100-SXM", "tp": 2, "commit": "a4f9f437",
     "path": "results/prompt_10/2xH100-80GB-SXM/Meta-Llama-3-8B-Instruct_tp2_len2048.json", "date": "20240907-092217",
     "inputs": (13, 25, 27, 10, 329, 29, 399, 328, 4, 205), "outputs": (120, 510, 233, 194, 101, 741, 9, 3, 6, 31),
     "ttfts": (0.0544, 0.0538, 0.0538, 0.0537, 0.0536, 0.0534, 0.0534, 0.0533, 0.0533, 0.0532),
     "tpot_mean_ms": 5.9364, "tpot_median_ms": 5.2565},
    {"key": "mixtral-8x7b-tp4-a100", "preset": "mixtral-8x7b", "gpu": "A100-SXM-80GB", "tp": 4, "commit": "f093afe9",
     "path": "results/prompt_10/4xA100-80GB-SXM/Mixtral-8x7B-Instruct-v0.1_tp4_len2048.json", "date": "20240908-100826",
     "inputs": (14, 30, 28, 12, 375, 29, 487, 369, 5, 236), "outputs": (129, 308, 273, 207, 118, 928, 0, 26, 9, 48),
     "ttfts": (1.6792, 1.6784, 1.6783, 1.6783, 1.678, 1.6778, 0.0, 1.6776, 1.6777, 1.6774),
     "tpot_mean_ms": 14.6729, "tpot_median_ms": 14.9297},
    {"key": "mixtral-8x7b-tp4-h100", "preset": "mixtral-8x7b", "gpu": "H100-SXM", "tp": 4, "commit": "a4f9f437",
     "path": "results/prompt_10/4xH100-80GB-SXM/Mixtral-8x7B-Instruct-v0.1_tp4_len2048.json", "date": "20240907-110456",
     "inputs": (14, 30, 28, 12, 375, 29, 487, 369, 5, 236), "outputs": (129, 529, 273, 207, 118, 928, 0, 26, 9, 49),
     "ttfts": (1.751, 1.7507, 1.7503, 1.7502, 1.7501, 1.7499, 0.0, 1.7498, 1.7497, 1.7496),
     "tpot_mean_ms": 9.6797, "tpot_median_ms": 9.8983},
    {"key": "mixtral-8x7b-tp8-a100", "preset": "mixtral-8x7b", "gpu": "A100-SXM-80GB", "tp": 8, "commit": "f093afe9",
     "path": "results/prompt_10/8xA100-80GB-SXM/Mixtral-8x7B-Instruct-v0.1_tp8_len2048.json", "date": "20240908-122123",
     "inputs": (14, 30, 28, 12, 375, 29, 487, 369, 5, 236), "outputs": (129, 971, 273, 207, 118, 928, 0, 26, 9, 49),
     "ttfts": (1.7166, 1.7156, 1.7155, 1.7154, 1.7153, 1.7151, 0.0, 1.7149, 1.7149, 1.7148),
     "tpot_mean_ms": 9.8537, "tpot_median_ms": 10.1090},
    {"key": "mixtral-8x7b-tp8-h100", "preset": "mixtral-8x7b", "gpu": "H100-SXM", "tp": 8, "commit": "a4f9f437",
     "path": "results/prompt_10/8xH100-80GB-SXM/Mixtral-8x7B-Instruct-v0.1_tp8_len2048.json", "date": "20240907-173659",
     "inputs": (14, 30, 28, 12, 375, 29, 487, 369, 5, 236), "outputs": (129, 717, 273, 207, 118, 928, 0, 26, 9, 48),
     "ttfts": (1.7324, 1.7318, 1.7316, 1.7315, 1.7314, 1.7312, 0.0, 1.7311, 1.7309, 1.7309),
     "tpot_mean_ms": 6.8835, "tpot_median_ms": 6.7985},
)  # fmt: skip


def _scenario(run: dict[str, Any], folder: Path, cost_model: str) -> dict[str, Any]:
    """The moesim scenario of ``run``: its 10 requests as a trace at time 0, greedy sampling."""
    trace = folder / f"{run['key']}.csv"
    pd.DataFrame(
        {"arrival_s": 0.0, "input_tokens": run["inputs"], "output_tokens": [max(int(o), 1) for o in run["outputs"]]}
    ).to_csv(trace, index=False)
    profile = folder / "greedy.yaml"
    profile.write_text("kind: vllm\nsettings: {sampling: greedy}\n")
    gpus = int(run["tp"])
    return {
        "name": run["key"],
        "model": run["preset"],
        "gpu": run["gpu"],
        "gpus_per_node": 8,
        "nodes": 1,
        "layout": {"tp": gpus},
        "replicas": 1,
        "precision": {"weights": "bf16", "kv_cache": "bf16"},
        "engine": {"max_batch": 1024, "max_tokens": 2048, "mem_fraction": 0.95, "kind": "vllm",
                   "profile": str(profile)},
        "workload": {"trace": str(trace)},
        "cost_model": cost_model,
    }  # fmt: skip


def client_figures(req: pd.DataFrame, served: np.ndarray) -> dict[str, float]:
    """Mean TTFT, mean and median TPOT (ms) of a DES request table [requests] as benchmark_serving computes them,
    over the ``served`` requests [bool, requests] (those the measured client got a token of): the table's client
    ``ttft_s`` and ``tpot_s`` (`sim.serving.metrics.with_derived`: (latency - TTFT) / (output - 1), NaN for one
    output token, which the mean and median leave out)."""
    req = with_derived(req)
    ttft = req["ttft_s"].to_numpy(float)[served]
    tpot = req["tpot_s"].to_numpy(float)[served]
    tpot = tpot[~np.isnan(tpot)]
    return {"ttft_ms": 1e3 * float(ttft.mean()), "tpot_mean_ms": 1e3 * float(tpot.mean()),
            "tpot_median_ms": 1e3 * float(np.median(tpot))}  # fmt: skip


def predict(run: dict[str, Any], cost_model: str, folder: Path) -> dict[str, float]:
    """The DES's figures (`client_figures`) of ``run`` on ``cost_model``."""
    built = load(_scenario(run, folder, cost_model), base_dir=folder)
    res = simulate(built, 0)
    req = res.requests.sort_values("request_id")
    return client_figures(req, np.asarray(run["ttfts"]) > 0)


def evaluate() -> tuple[pd.DataFrame, float]:
    """Every run on both cost models: one row per (run, cost model)."""
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in RUNS:
            for cm in ("achievable", "roofline"):
                p = predict(run, cm, Path(tmp))
                ttfts = np.asarray(run["ttfts"])
                rows.append(
                    {"key": run["key"], "model": run["preset"], "gpu": run["gpu"], "tp": run["tp"], "cost_model": cm,
                     "ttft_meas": 1e3 * float(ttfts[ttfts > 0].mean()), "ttft_pred": p["ttft_ms"],
                     "tpot_meas": run["tpot_mean_ms"], "tpot_pred": p["tpot_mean_ms"],
                     "tpot_med_meas": run["tpot_median_ms"], "tpot_med_pred": p["tpot_median_ms"]}
                )  # fmt: skip
    return pd.DataFrame(rows), time.perf_counter() - t0


#: Presets whose measured TTFT is a start-up cost, not the prompts' prefill: every Mixtral file's first batch
#: waits about 1.7 s on either GPU and at every tensor-parallel size (vLLM v0.5.4 compiles its Triton fused-MoE
#: kernels at their first call), so its TTFT is not compared.
STARTUP_TTFT = frozenset({"mixtral-8x7b"})


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, tensor-parallel size and cost model: A100 / H100 of mean and median TPOT and mean TTFT, measured
    and predicted."""
    out = []
    for (model, tp, cm), g in df.groupby(["model", "tp", "cost_model"], sort=False):
        a, h = g[g.gpu == "A100-SXM-80GB"], g[g.gpu == "H100-SXM"]
        if len(a) != 1 or len(h) != 1:
            continue
        a, h = a.iloc[0], h.iloc[0]
        row = {"model": model, "tp": tp, "cost_model": cm}
        for k in ("tpot", "tpot_med", "ttft"):
            row[f"{k}_meas"] = a[f"{k}_meas"] / h[f"{k}_meas"]
            row[f"{k}_pred"] = a[f"{k}_pred"] / h[f"{k}_pred"]
        out.append(row)
    return pd.DataFrame(out)


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%" if math.isfinite(x) else "-"


def _median_abs(x: pd.Series) -> str:
    return f"{100 * float(np.median(np.abs(x))):.1f}%" if len(x) else "-"


def render(df: pd.DataFrame, rat: pd.DataFrame, wall: float) -> str:
    lines = [TITLE, ""]
    lines.append(
        f"Published runs: {REPO}, `results/prompt_10/` (module docstring of `benchmarks/gpu_pairs.py`: engine, "
        "flags, client, what moesim runs). Predicted with `python -m benchmarks.gpu_pairs`: the DES on each run's "
        "own 10 requests. Error: predicted / measured - 1. TPOT's median is the comparison that counts: a "
        "request of 3 to 9 output tokens has a TPOT of one or two streamed chunks (v0.5.4's server streamed about "
        "ten tokens per chunk at these batches: mean ITL 8-10x mean TPOT in every file), which its mean carries."
    )
    lines += ["", "| run | GPU | cost model | median TPOT ms: measured / predicted | error | mean TPOT ms: measured / "
              "predicted | error | mean TTFT ms: measured / predicted | error |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in df.itertuples():
        startup = r.model in STARTUP_TTFT
        ttft = f"{r.ttft_meas:.1f} / {r.ttft_pred:.1f}"
        lines.append(
            f"| {r.model} TP{r.tp} | {r.gpu} | {r.cost_model} | {r.tpot_med_meas:.2f} / {r.tpot_med_pred:.2f} | "
            f"{_pct(r.tpot_med_pred / r.tpot_med_meas - 1)} | {r.tpot_meas:.2f} / {r.tpot_pred:.2f} | "
            f"{_pct(r.tpot_pred / r.tpot_meas - 1)} | {ttft} | "
            f"{'start-up' if startup else _pct(r.ttft_pred / r.ttft_meas - 1)} |"
        )
    lines += ["", "Median |error| by GPU and cost model (TTFT without the Mixtral files):", "",
              "| GPU | cost model | median TPOT | mean TPOT | mean TTFT |", "|---|---|---|---|---|"]  # fmt: skip
    for (gpu, cm), g in df.groupby(["gpu", "cost_model"], sort=False):
        t = g[~g.model.isin(STARTUP_TTFT)]
        lines.append(
            f"| {gpu} | {cm} | {_median_abs(g.tpot_med_pred / g.tpot_med_meas - 1)} | "
            f"{_median_abs(g.tpot_pred / g.tpot_meas - 1)} | {_median_abs(t.ttft_pred / t.ttft_meas - 1)} |"
        )
    lines += ["", "A100 / H100, the same model, tensor-parallel size, engine and requests:", ""]
    lines += ["| model | cost model | median TPOT: measured | predicted | mean TPOT: measured | predicted | "
              "mean TTFT: measured | predicted |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rat.itertuples():
        startup = r.model in STARTUP_TTFT
        lines.append(
            f"| {r.model} TP{r.tp} | {r.cost_model} | {r.tpot_med_meas:.2f} | {r.tpot_med_pred:.2f} | "
            f"{r.tpot_meas:.2f} | {r.tpot_pred:.2f} | {'-' if startup else f'{r.ttft_meas:.2f}'} | "
            f"{'-' if startup else f'{r.ttft_pred:.2f}'} |"
        )
    lines += ["", f"Computed in {wall:.0f} s of wall time."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--print", action="store_true", help="print the section instead of writing RESULTS.md")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md", help="file to write into")
    args = ap.parse_args()
    df, wall = evaluate()
    text = render(df, ratios(df), wall)
    if args.print:
        print(text)
    else:
        replace_section(args.out, 32, text)  # keeps the section's dated notes
        print(f"wrote {TITLE!r} to {args.out}")


if __name__ == "__main__":
    main()
