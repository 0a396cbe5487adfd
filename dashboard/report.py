"""The demo report: inspect and roofline a preset model on a preset cluster,
sweep the decode batch, and write ``report.md``, ``summary.json`` and PNG plots.

Plots need matplotlib (the ``report`` extra). The report is written to a
temporary folder beside ``out_dir`` and moved into place only when complete
(`model.outputs.output_dir`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moesim.dashboard.format import fmt_by_key, fmt_count, fmt_number, fmt_pct, fmt_rate, fmt_seconds, fmt_usd
from moesim.dashboard.summaries import RooflineRun, inspect_summary, roofline_summary, run_roofline
from moesim.model import (
    Batch,
    ClusterSpec,
    CostModel,
    Layout,
    MoesimError,
    Precision,
    get_cluster,
    load_model,
)
from moesim.model.outputs import output_dir

DEMO_MODEL = "mixtral-8x7b"
DEMO_CLUSTER = "dgx-h100"
DEMO_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DEMO_CTX = 2048


def _layouts(cluster: ClusterSpec, model_experts: int) -> dict[str, Layout]:
    n = cluster.gpus_per_node
    out = {f"TP{n}": Layout(tp=n)}
    if model_experts and model_experts % n == 0:
        out[f"TP1xDP{n} EP{n}"] = Layout(tp=1, dp_attn=n, ep=n)
    return out


def _plots(out: Path, runs: dict[str, RooflineRun], sweep: list[dict[str, Any]], cluster: ClusterSpec) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MoesimError("plots need matplotlib", "pip install 'moesim[report]'") from exc
    import numpy as np

    gpu = cluster.gpu
    files = []
    # 1. roofline chart
    fig, ax = plt.subplots(figsize=(7.5, 5))
    peak, bw = gpu.peak("bf16"), gpu.bandwidth()
    x = np.logspace(-1, 4, 200)
    ax.loglog(x, np.minimum(peak, x * bw), "k-", lw=1.5, label=f"{gpu.key} bf16 roofline")
    for (name, run), marker in zip(runs.items(), "os^D", strict=False):
        tab = run.estimate.table()
        tab = tab[(tab["flops"] > 0) & (tab["bytes"] > 0)]
        inten = tab["flops"] / tab["bytes"]
        perf = tab["flops"] / tab["time_s"]
        ax.scatter(inten, perf, s=20 + 400 * tab["share"], marker=marker, alpha=0.6, label=name)
    ax.axvline(peak / bw, color="grey", ls=":", lw=1)
    ax.set_xlabel("arithmetic intensity (FLOP / byte of device memory)")
    ax.set_ylabel("attained FLOP/s on the roofline")
    ax.set_title("Ops on the roofline (marker area = share of step time)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roofline.png", dpi=110)
    plt.close(fig)
    files.append("roofline.png")
    # 2. step-time breakdown, as shares so that decode and prefill read side by side
    fig, ax = plt.subplots(figsize=(8, 0.9 * len(runs) + 1.6))
    kinds = sorted({k for r in runs.values() for k in r.estimate.breakdown()})
    left = np.zeros(len(runs))
    for kind in kinds:
        vals = np.array([100 * r.estimate.breakdown().get(kind, 0.0) / r.estimate.step_s for r in runs.values()])
        ax.barh(list(runs), vals, left=left, label=kind)
        left += vals
    for i, r in enumerate(runs.values()):
        ax.text(101, i, fmt_seconds(r.estimate.step_s), va="center", fontsize=8)
    ax.set_xlim(0, 115)
    ax.set_xlabel("share of step time (%)")
    ax.set_title("Where the step time goes (total step time at the right)")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    fig.savefig(out / "breakdown.png", dpi=110)
    plt.close(fig)
    files.append("breakdown.png")
    # 3. decode batch sweep
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({r["layout"] for r in sweep}):
        rows = [r for r in sweep if r["layout"] == name]
        bs = [r["batch"] for r in rows]
        a1.loglog(bs, [r["tokens_per_s"] for r in rows], "o-", label=name)
        a2.semilogx(bs, [100 * r["smbu"] for r in rows], "o-", label=f"{name} S-MBU")
        a2.semilogx(bs, [100 * r["smfu"] for r in rows], "s--", label=f"{name} S-MFU")
        for r in rows:
            if not r["fits"]:
                a1.plot(r["batch"], r["tokens_per_s"], "rx", ms=9)
    a1.set_xlabel("decode batch (sequences)")
    a1.set_ylabel("output tokens/s (red x: KV does not fit)")
    a2.set_xlabel("decode batch (sequences)")
    a2.set_ylabel("%")
    a1.set_title(f"Decode throughput, ctx {DEMO_CTX}")
    a2.set_title("Sparse utilisation (exact mode)")
    a1.legend(fontsize=8)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "batch_sweep.png", dpi=110)
    plt.close(fig)
    files.append("batch_sweep.png")
    # 4. memory per GPU
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    names = list(runs)
    w = np.array([r.memory.weight_bytes for r in runs.values()]) / 2**30
    kv = np.array([r.memory.kv_bytes for r in runs.values()]) / 2**30
    act = np.array([r.memory.activation_bytes for r in runs.values()]) / 2**30
    ax.barh(names, w, label="weights")
    ax.barh(names, kv, left=w, label="KV cache")
    ax.barh(names, act, left=w + kv, label="activations")
    usable = next(iter(runs.values())).memory.usable_bytes / 2**30
    ax.axvline(usable, color="red", ls="--", label=f"usable {usable:.0f} GiB")
    ax.set_xlabel("GiB on the fullest GPU")
    ax.set_title("Memory per GPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)
    files.append("memory.png")
    return files


REPORT_FILES = frozenset(
    {
        "report.md",
        "summary.json",
        "roofline.png",
        "breakdown.png",
        "batch_sweep.png",
        "memory.png",
        "profile",
        "serving",
    }
)


def is_report(folder: Path) -> bool:
    """Whether ``folder`` is a demo report written before moesim marked its outputs (only `REPORT_FILES`)."""
    names = {p.name for p in folder.iterdir()}
    return "summary.json" in names and names <= REPORT_FILES


#: The demo's serving scenario: the Mixtral EP8 example, shortened.
DEMO_SCENARIO: dict[str, Any] = {
    "name": "demo: mixtral-8x7b EP8 on dgx-h100",
    "model": "mixtral-8x7b",
    "cluster": "dgx-h100",
    "layout": {"tp": 1, "dp_attn": 8, "ep": 8},
    "workload": {
        "arrival": "poisson",
        "rate": 20,
        "requests": 1000,
        "input": {"dist": "lognormal", "mean": 512, "cv": 1.0, "max": 8192},
        "output": {"dist": "lognormal", "mean": 256, "cv": 1.0, "max": 4096},
    },
    "routing": {"distribution": "power", "exponent": 1.2},
    "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
}


def _serving(folder: Path, cost_model: CostModel | None) -> dict[str, Any]:
    """Simulate the demo's serving scenario (discrete-event and analytical); outputs under ``folder``."""
    from moesim.sim.serving.serve import run, write_outputs

    res = run(DEMO_SCENARIO, "des", cost_model=cost_model)
    write_outputs(res, folder)
    ana = run(DEMO_SCENARIO, "analytical", cost_model=cost_model).summary
    keys = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p50_s", "throughput_tok_s", "s_mbu", "s_mfu")
    return {
        "scenario": DEMO_SCENARIO,
        "des": {k: res.summary[k] for k in (*keys, "straggler_frac", "goodput_req_s", "usd_per_mtok", "wall_s")},
        "analytical": {k: ana[k] for k in keys},
    }


def _profile_here(folder: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Profile this machine's GEMMs and grouped GEMMs briefly, calibrate, and plot the held-out error.

    Returns the summary for the report ({"skipped": reason} when torch is
    not installed).
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "torch is not installed (pip install torch==2.13.0 triton)"}
    from moesim.profiling.calibrate import calibrate, save
    from moesim.profiling.report import write_report
    from moesim.profiling.runner import profile

    progress("profile this CPU briefly (GEMMs and grouped GEMMs, fp32)")
    run = profile("cpu", folder, mode="tiny", ops=["gemm", "moe"])
    progress("calibrate on the measured tables (20% of shapes held out)")
    cal = calibrate([folder], holdout=0.2, seed=0)
    save(cal, folder / "calibration.parquet")
    plots = [p for p in write_report(cal, folder / "calibration-report") if p.suffix == ".png"]
    return {
        "device": run.meta["device"],
        "threads": run.meta["threads"],
        "peak_fp32_flops": run.hardware.peak("fp32"),
        "memory_bandwidth": run.hardware.bandwidth(),
        "rows": run.rows,
        "wall_s": run.wall_s,
        "fits": [f.summary() for f in cal.fits],
        "skew": cal.skew,
        "plots": [str(p.relative_to(folder.parent)) for p in plots],
    }


def build_demo_report(
    out_dir: Path,
    model_name: str = DEMO_MODEL,
    cluster_name: str = DEMO_CLUSTER,
    progress: Callable[[str], None] = lambda s: None,
    profile_here: bool = True,
    cost_model: CostModel | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run the demo and write the report into ``out_dir``; returns the summary.

    Through `model.outputs.output_dir`: an existing ``out_dir`` is replaced only when it is an earlier demo
    report (or empty, or ``force``; never a dangerous folder); it is written whole or not at all.

    Steps: profile this machine briefly and calibrate on it (``profile_here``;
    tables, calibration file and error plots under ``profile/``); inspect the
    model; time decode and prefill steps on the cluster under two layouts
    with ``cost_model`` (default: the roofline); sweep the decode batch; plot.
    """
    model = load_model(model_name)
    cluster = get_cluster(cluster_name)
    precision = Precision()
    out_dir = Path(out_dir)
    with output_dir(out_dir, "demo", force=force, legacy=is_report) as tmp:
        here = _profile_here(tmp / "profile", progress) if profile_here else {"skipped": "--no-profile"}
        progress(f"inspect {model.name}")
        inspected = inspect_summary(model)
        layouts = _layouts(cluster, model.moe.num_experts if model.moe else 0)
        runs: dict[str, RooflineRun] = {}
        for name, lay in layouts.items():
            progress(f"decode B=64 ctx={DEMO_CTX} {name}")
            runs[f"decode {name}"] = run_roofline(
                model, Batch.decode(64, DEMO_CTX), lay, cluster, precision, cost_model=cost_model
            )
        first = next(iter(layouts))
        progress(f"prefill B=8 len={DEMO_CTX} {first}")
        runs[f"prefill {first}"] = run_roofline(
            model, Batch.prefill(8, DEMO_CTX), layouts[first], cluster, precision, cost_model=cost_model
        )
        sweep = []
        for name, lay in layouts.items():
            progress(f"decode batch sweep {name} ({len(DEMO_BATCHES)} points)")
            for b in DEMO_BATCHES:
                r = run_roofline(model, Batch.decode(b, DEMO_CTX), lay, cluster, precision, cost_model=cost_model)
                sweep.append(
                    {
                        "layout": name,
                        "batch": b,
                        "step_s": r.estimate.step_s,
                        "tokens_per_s": r.estimate.tokens_per_s,
                        "smbu": r.cap.exact.smbu,
                        "smfu": r.cap.exact.smfu,
                        "usd_per_mtok": r.cap.usd_per_mtok,
                        "fits": r.memory.fits,
                    }
                )
        progress("serving simulation (examples/mixtral-8x7b-ep8.yaml, 1,000 requests)")
        serving = _serving(tmp / "serving", cost_model)
        progress("plots")
        plots = _plots(tmp, runs, sweep, cluster)
        summary = {
            "model": model.name,
            "cluster": cluster.name,
            "gpus": cluster.num_gpus,
            "cost_model": cost_model.name if cost_model else "roofline",
            "total_params": inspected["total_params"],
            "active_params": inspected["active_params"],
            "this_machine": here,
            "runs": {k: roofline_summary(v, ops=False) for k, v in runs.items()},
            "decode_sweep": sweep,
            "serving": serving,
            "plots": plots + here.get("plots", []) + ["serving/latency_cdf.png", "serving/timeline.png"],
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        (tmp / "report.md").write_text(_markdown(summary, inspected))
    summary["out_dir"] = str(out_dir)
    return summary


def _machine_markdown(h: dict[str, Any]) -> list[str]:
    if "skipped" in h:
        return ["## This machine's kernels", "", f"Not profiled: {h['skipped']}.", ""]
    lines = [
        "## This machine's kernels",
        "",
        f"Profiled here for {fmt_seconds(h['wall_s'])} ({h['device']}, {h['threads']} threads, fp32, the tiny grid; "
        f"tables in `profile/`): measured peak {fmt_rate(h['peak_fp32_flops'], 'FLOP/s')}, copy bandwidth "
        f"{fmt_rate(h['memory_bandwidth'], 'B/s')}. Calibrated on 80% of the shapes; the error is on the other 20% "
        "(`profile/calibration.parquet`). A profile this brief holds few shapes, each timed a few times, so the "
        "error below is mostly this machine's timing noise; `moesim profile --quick` (about 2.5 minutes) times a "
        "larger grid more often, and `benchmarks/RESULTS.md` gives its error.",
        "",
        "| kind | impl | method | fitted | held out | MAPE | P90 APE |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in h["fits"]:
        lines.append(
            f"| {f['kind']} | {f['impl']} | {f['method']} | {fmt_count(f['rows_fit'])} | "
            f"{fmt_count(f['rows_holdout'])} | {fmt_pct(f['mape'] / 100)} | {fmt_pct(f['p90_ape'] / 100)} |"
        )
    if h.get("skew", {}).get("rows"):
        s = h["skew"]
        lines += [
            "",
            f"Skew model: {s['rows']} skewed grouped GEMMs predicted from balanced ones, "
            f"MAPE {fmt_pct(s['mape'] / 100)}.",
        ]
    return [*lines, ""]


def _markdown(s: dict[str, Any], inspected: dict[str, Any]) -> str:
    lines = [
        f"# moesim report: {s['model']} on {s['cluster']} ({s['gpus']} GPUs)",
        "",
        *(
            [
                "Roofline estimates (the hardware's limit): every op's time is max(FLOPs / peak,",
                "bytes / bandwidth) plus link time. Produced by `moesim demo`; give `--cost-model FILE`",
                "(a calibration of the cluster's GPU) to time the ops with measured kernels instead.",
            ]
            if s["cost_model"] == "roofline"
            else [f"Ops timed by the calibrated cost model `{s['cost_model']}`. Produced by `moesim demo`."]
        ),
        "",
        f"Parameters: {fmt_number(inspected['total_params'])} total, "
        f"{fmt_number(inspected['active_params'])} active per token.",
        "",
        "| run | step | tokens/s | S-MBU | "
        + ("S-MFU (roofline)" if s["cost_model"] == "roofline" else "S-MFU")
        + " | $/M tokens | memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in s["runs"].items():
        cap = r["cap"]
        lines.append(
            f"| {name} | {fmt_seconds(r['step_s'])} | {fmt_rate(r['tokens_per_s'], 'tok/s')} | "
            f"{fmt_pct(cap['smbu'])} | {fmt_pct(cap['smfu'])} | {fmt_usd(cap['usd_per_mtok'])} | "
            f"{'fits' if r['memory']['fits'] else 'does not fit'} |"
        )
    lines += [
        "",
        "## Decode batch sweep",
        "",
        "| layout | batch | step | tokens/s | S-MBU | S-MFU | fits |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["decode_sweep"]:
        lines.append(
            f"| {r['layout']} | {r['batch']} | {fmt_seconds(r['step_s'])} | {fmt_rate(r['tokens_per_s'], 'tok/s')} | "
            f"{fmt_pct(r['smbu'])} | {fmt_pct(r['smfu'])} | {'yes' if r['fits'] else 'no'} |"
        )
    lines += ["", *_machine_markdown(s["this_machine"])]
    sv = s.get("serving")
    if sv:
        lines += [
            "",
            f"## Serving: {sv['scenario']['name']}",
            "",
            f"Poisson {fmt_rate(sv['scenario']['workload']['rate'], 'req/s')}, "
            f"{fmt_count(sv['scenario']['workload']['requests'])} requests, "
            "power-law expert popularity (exponent 1.2); outputs in `serving/` (requests.parquet, steps.parquet, "
            "summary.json, plots).",
            "",
            "| figure | discrete-event | analytical |",
            "|---|---:|---:|",
        ]
        for k in sv["analytical"]:
            d, a = sv["des"][k], sv["analytical"][k]
            lines.append(f"| {k} | {fmt_by_key(k, d)} | {fmt_by_key(k, a)} |")
        lines.append(
            f"\nStraggler wait: {fmt_pct(sv['des']['straggler_frac'])} of step time; "
            f"{fmt_usd(sv['des']['usd_per_mtok'])} per million output tokens; "
            f"simulated in {fmt_seconds(sv['des']['wall_s'])}."
        )
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in s["plots"]] + [""]
    return "\n".join(lines)
