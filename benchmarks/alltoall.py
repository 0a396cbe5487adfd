"""Expert-parallel all-to-all against DeepEP's published runs: moesim before (NCCL model) and after (DeepEP model).

For each published DeepEP configuration (`model.a2a.DEEPEP_NORMAL`, `DEEPEP_LL`: H800, deepseek-ai/DeepEP@
docs/legacy.md; the small-batch low-latency runs of `LL_SMALL_BATCH_S`; and DeepEP's own tests run on 8 and 2 x 8
H20 GPUs, deepseek-ai/DeepEP issue #138) it builds the dispatch and combine ops moesim would build for that setup
(`model.a2a.ep_a2a_ops`, the routing of DeepEP's tests) and times them with:

- ``roofline (before)``: the NCCL backend on the link roofline (moesim's model before: bf16 payload, one
  collective latency);
- ``NCCL calibrated (before)``: the NCCL backend timed by a calibration on the H100 NCCL all-to-all table of
  ../shared/data/aiconfigurator-h100-sxm (transferred to the cluster's GPU; skipped when the data is absent);
- ``DeepEP (after)``: the DeepEP model (`model.a2a.deepep_time`). The published H800 rows are what its efficiencies
  and fixed costs are derived from, so they reproduce by construction (``in-sample``); ``held-out`` times each EP
  size with that size left out of the efficiency table (interpolated or taken from the nearest other size), and the
  H20 rows are runs on another GPU and network that the model never saw.

The published time of a normal-mode row is the tests' byte count over the published bandwidth
(``_normal_logical_bytes``); of a low-latency row, the published latency. Run: ``python -m benchmarks.alltoall``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from moesim.model import a2a
from moesim.model.hardware import ClusterSpec, get_gpu, make_cluster
from moesim.model.roofline import CostModel, RooflineCostModel

ROOT = Path(__file__).resolve().parents[1]
AIC_DATA = ROOT.parent / "shared" / "data" / "aiconfigurator-h100-sxm"

#: DeepEP's tests on 8 x H20 (NVLink 900 GB/s bidirectional) and 2 x 8 H20 over ConnectX-6 RoCE (200 Gb/s,
#: ~25 GB/s per GPU), deepseek-ai/DeepEP issue #138 (tests/test_intranode.py and tests/test_internode.py output,
#: 24 SMs): (EP, link class, fp8 dispatch GB/s, combine GB/s) in the tests' logical bytes.
H20_RUNS = ((8, "intra", 326.56e9, 332.57e9), (16, "inter", 17.77e9, 22.66e9))
#: Small-batch low-latency on one H20 node (4 tokens per GPU, hidden 7168, top-8 of 256), the runbook that quotes
#: `model.a2a.LL_SMALL_BATCH_S`: dispatch 12.65 us, combine 12.99 us.
H20_LL_SMALL_S = (12.65e-6, 12.99e-6)


def h20_cluster(nodes: int) -> ClusterSpec:
    """8-GPU H20 nodes as DeepEP issue #138 ran them: NVLink 450 GB/s per direction, a 200 Gb/s NIC per GPU.

    The GPU's compute figures do not enter an all-to-all; the H100 SXM preset stands in for them. Latencies: the
    H100 SXM preset's (the same NVLink 4 / NVSwitch class) and its RDMA figure.
    """
    gpu = get_gpu("H100-SXM").model_copy(update={"key": "H20", "name": "H20 (links of DeepEP issue #138)"})
    return make_cluster(gpu, nodes=nodes, intra_bw=450e9, inter_bw=25e9)


def _ops(ep: int, mode: str, backend: str, tokens: int, hidden: int = 7168, top_k: int = 8) -> tuple[Any, Any]:
    """Dispatch and combine ops of DeepEP's test setup (256 experts; normal internode: one group per node)."""
    nodes = max(1, ep // 8)
    group = (nodes, min(nodes, 4)) if nodes > 1 and mode == "normal" else (1, 1)
    phase = "decode" if mode == "low_latency" else "prefill"
    return a2a.ep_a2a_ops(
        "", 1, tokens=tokens * ep, hidden=hidden, top_k=top_k, num_experts=256, ep=ep, stage_gpus=ep,
        gpus_per_node=8, moe_tp=1, act_bytes=2.0, backend=backend, phase=phase, fp8_dispatch=True,
        n_group=group[0], topk_group=group[1],
    )  # fmt: skip


def nccl_calibrated(aic: Path) -> CostModel | None:
    """A calibrated model fitted on the AIConfigurator H100 NCCL all-to-all table alone (None when absent)."""
    src = aic / "nccl_perf.parquet"
    if not src.exists():
        return None
    from moesim.profiling.aiconfigurator import import_aiconfigurator
    from moesim.profiling.calibrate import CalibratedCostModel, calibrate

    with tempfile.TemporaryDirectory() as tmp:
        only = Path(tmp) / "src"
        only.mkdir()
        (only / "nccl_perf.parquet").symlink_to(src)
        import_aiconfigurator(only, Path(tmp) / "tables")
        cal = calibrate([Path(tmp) / "tables"], holdout=0.0, kinds=["all_to_all"])
    return CalibratedCostModel(cal, name="nccl-calibrated")


def _row(
    what: str, ep: int, direction: str, published: float, ops: dict[str, Any], cluster: ClusterSpec, cal: Any
) -> dict[str, Any]:
    i = 0 if direction == "dispatch" else 1
    nccl, deep = ops["nccl"][i], ops["deepep"][i]
    out = {"config": what, "ep": ep, "direction": direction, "published_us": published * 1e6}
    out["roofline_us"] = RooflineCostModel().op_time(nccl, cluster).seconds * 1e6
    out["nccl_cal_us"] = cal.op_time(nccl, cluster).seconds * 1e6 if cal is not None else float("nan")
    out["nccl_cal_src"] = cal.op_time(nccl, cluster).source if cal is not None else "-"
    out["deepep_us"] = a2a.deepep_time(deep, cluster).seconds * 1e6
    out["heldout_us"] = a2a.deepep_time(deep, cluster, exclude_ep=ep).seconds * 1e6
    return out


def rows(aic: Path = AIC_DATA) -> list[dict[str, Any]]:
    """One row per (configuration, direction): published time and every model's, in us."""
    cal = nccl_calibrated(aic)
    out = []
    tok = a2a.DEEPEP_NORMAL_SETUP[0]
    for ep, (link, *_bw) in a2a.DEEPEP_NORMAL.items():
        cluster = make_cluster(get_gpu("H800"), nodes=max(1, ep // 8))
        ops = {b: _ops(ep, "normal", b, tok) for b in ("nccl", "deepep")}
        for i, d in enumerate(("dispatch", "combine")):
            t = a2a._normal_logical_bytes(ep, d) / _bw[i]
            out.append(_row(f"H800 normal {tok} tok/GPU ({link})", ep, d, t, ops, cluster, cal))
    tok = a2a.DEEPEP_LL_SETUP[0]
    for ep, times in a2a.DEEPEP_LL.items():
        cluster = make_cluster(get_gpu("H800"), nodes=max(1, ep // 8))
        ops = {b: _ops(ep, "low_latency", b, tok) for b in ("nccl", "deepep")}
        for i, d in enumerate(("dispatch", "combine")):
            out.append(_row(f"H800 low-latency {tok} tok/GPU", ep, d, times[i], ops, cluster, cal))
    gpu, small, _, _ = a2a.LL_SMALL_BATCH_SETUP
    for name, cluster, times in (
        (f"{gpu} low-latency {small} tok/GPU", make_cluster(get_gpu(gpu)), a2a.LL_SMALL_BATCH_S),
        (f"H20 low-latency {small} tok/GPU (unseen)", h20_cluster(1), H20_LL_SMALL_S),
    ):
        ops = {b: _ops(8, "low_latency", b, small) for b in ("nccl", "deepep")}
        for i, d in enumerate(("dispatch", "combine")):
            out.append(_row(name, 8, d, times[i], ops, cluster, cal))
    tok = a2a.DEEPEP_NORMAL_SETUP[0]
    for ep, link, *bws in H20_RUNS:
        cluster = h20_cluster(max(1, ep // 8))
        ops = {b: _ops(ep, "normal", b, tok) for b in ("nccl", "deepep")}
        for i, d in enumerate(("dispatch", "combine")):
            t = a2a._normal_logical_bytes(ep, d) / bws[i]
            out.append(_row(f"H20 normal {tok} tok/GPU ({link}, unseen)", ep, d, t, ops, cluster, cal))
    return out


def _err(pred: float, pub: float) -> str:
    return f"{pred / pub:.2f}" if pred == pred else "-"


def table(rs: list[dict[str, Any]]) -> str:
    """Markdown: times in us and each model's ratio to the published time (1.00 = exact)."""
    lines = [
        "| configuration | EP | call | published us | roofline (before) | NCCL calibrated (before) | DeepEP in-sample "
        "| DeepEP held-out |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rs:
        p = r["published_us"]
        lines.append(
            f"| {r['config']} | {r['ep']} | {r['direction']} | {p:.1f} | {r['roofline_us']:.1f} "
            f"({_err(r['roofline_us'], p)}) | {r['nccl_cal_us']:.1f} ({_err(r['nccl_cal_us'], p)}) | "
            f"{r['deepep_us']:.1f} ({_err(r['deepep_us'], p)}) | {r['heldout_us']:.1f} ({_err(r['heldout_us'], p)}) |"
        )
    return "\n".join(lines)


def summary(rs: list[dict[str, Any]]) -> str:
    """Median and worst absolute percentage error per model over the published H800 rows and the unseen rows."""
    out = []
    for label, pick in (("H800 published", lambda r: r["config"].startswith("H800")), ("unseen", _unseen)):
        sel = [r for r in rs if pick(r)]
        parts = []
        for col, name in (
            ("roofline_us", "roofline"),
            ("nccl_cal_us", "NCCL calibrated"),
            ("deepep_us", "DeepEP"),
            ("heldout_us", "DeepEP held-out"),
        ):
            errs = sorted(abs(r[col] / r["published_us"] - 1) * 100 for r in sel if r[col] == r[col])
            if errs:
                parts.append(f"{name} median {errs[len(errs) // 2]:.0f}% / max {errs[-1]:.0f}%")
        out.append(f"- {label} ({len(sel)} calls): " + "; ".join(parts))
    return "\n".join(out)


def _unseen(r: dict[str, Any]) -> bool:
    return "unseen" in r["config"]


def main() -> None:
    rs = rows()
    print(table(rs))
    print()
    print(summary(rs))
    cal_src = {r["nccl_cal_src"].split(" (")[0] for r in rs}
    print(f"\nNCCL-calibrated sources: {', '.join(sorted(cal_src))}", file=sys.stderr)


if __name__ == "__main__":
    main()
