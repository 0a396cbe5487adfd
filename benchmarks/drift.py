"""Benchmark: serving while the routing drifts, static plan against SGLang-style EPLB and moesim's ILP.

`sim.serving.drift`: window 0 is the profiling run, then ``WINDOWS`` served windows, each a discrete-event run of
``REQUESTS`` requests with that window's routing (slices of one synthetic trace, power law alpha 1.2, drift 1: by
the end expert popularity has moved to a new power law) and the policy's plan. A rebalance copies expert weights
(bytes over NVLink / the NIC, layer by layer, as SGLang's expert_location_updater does) and pauses serving.

Cases: Mixtral-8x7B EP8 on one DGX H100 (8 redundant slots), prefill-heavy so the expert GEMMs are compute-bound;
a DeepSeek-V3-shaped case (EP32 on four HGX H200 nodes, fp8, 32 redundant slots; the ILP capped at 30 s per
placement). A table checks the analytical engine against the DES on the static windows of the Mixtral case.

Run: ``python -m benchmarks.drift`` (a few minutes; ``--quick`` for fewer windows).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moesim.sim.serving.drift import DriftSpec, drift_windows, parse_policy, simulate_drift  # noqa: E402
from moesim.sim.serving.serve import load  # noqa: E402

MIXTRAL = {
    "name": "mixtral-8x7b-ep8",
    "model": "mixtral-8x7b",
    "cluster": "dgx-h100",
    "layout": {"tp": 1, "dp_attn": 8, "ep": 8},
    "workload": {"arrival": "poisson", "rate": 12, "requests": 100, "input": 4096, "output": 64},
}
DSV3 = {
    "name": "deepseek-v3-ep32",
    "model": "deepseek-v3",
    "gpu": "H200-SXM",
    "nodes": 4,
    "gpus_per_node": 8,
    "precision": {"weights": "fp8_block"},
    "layout": {"tp": 1, "dp_attn": 32, "ep": 32},
    "workload": {"arrival": "poisson", "rate": 16, "requests": 100, "input": 2048, "output": 64},
}


def _table(title: str, res, wall: float) -> list[str]:
    d = res.to_dict()
    head = "| policy | TPOT mean ms | TPOT p90 ms | TTFT mean ms | E2E mean s | E2E p90 s | busiest/mean | moved GB "
    lines = [f"### {title} ({wall:.0f} s wall)", "", head + "| paused ms | longest stall ms |", "|---" * 10 + "|"]
    for label, p in d["policies"].items():
        o = p["overall"]
        lines.append(
            f"| {label} | {o['tpot_mean_s'] * 1e3:.2f} | {o['tpot_p90_s'] * 1e3:.2f} | {o['ttft_mean_s'] * 1e3:.1f} | "
            f"{o['e2e_mean_s']:.3f} | {o['e2e_p90_s']:.3f} | {o['max_load_ratio']:.3f} | "
            f"{o['migration_bytes'] / 1e9:.1f} | {o['pause_s'] * 1e3:.1f} | {o['max_stall_s'] * 1e3:.1f} |"
        )
    lines += ["", "Per window (TTFT mean ms / busiest-over-mean; * rebalanced before the window):", ""]
    labels = list(d["policies"])
    lines.append("| window | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(labels) + 1) + "|")
    for i in range(len(d["policies"][labels[0]]["windows"])):
        cells = []
        for label in labels:
            w = d["policies"][label]["windows"][i]
            cells.append(f"{w['ttft_mean_s'] * 1e3:.1f} / {w['max_load_ratio']:.2f}{'*' if w['rebalanced'] else ''}")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def case(
    sc: dict,
    policies: tuple[str, ...],
    windows: int,
    requests: int,
    engine: str = "des",
    limit: float = 60.0,
    chunk: int | None = None,
):
    built = load(sc)
    ws = drift_windows(built, DriftSpec(windows=windows, drift=1.0, skew=1.2, tokens_per_window=1024, seed=0))
    t0 = time.perf_counter()
    res = simulate_drift(
        built,
        ws,
        [parse_policy(p) for p in policies],
        requests_per_window=requests,
        engine=engine,
        ilp_time_limit=limit,
        layers_per_chunk=chunk,
        progress=lambda d, n, label: print(f"  {sc['name']} {engine}: {d}/{n} {label}", file=sys.stderr, flush=True),
    )
    return res, time.perf_counter() - t0


def main(quick: bool = False) -> str:
    w = 3 if quick else 6
    out = ["## Routing drift: static plan vs periodic rebalancing", ""]
    res, wall = case(MIXTRAL, ("static", "eplb:2", "ilp:2"), w, 100)
    out += _table(f"Mixtral-8x7B EP8, DGX H100, {w} windows x 100 requests, DES", res, wall)
    ana, wall_a = case(MIXTRAL, ("static",), w, 100, engine="analytical")
    des_w = res.to_dict()["policies"]["static"]["windows"]
    ana_w = ana.to_dict()["policies"]["static"]["windows"]
    out += [f"### Analytical vs DES, Mixtral static windows (analytical {wall_a:.1f} s wall)", ""]
    out += ["| window | TTFT mean ms DES | analytical | TPOT mean ms DES | analytical |", "|---" * 5 + "|"]
    for a, b in zip(des_w, ana_w, strict=True):
        out.append(
            f"| {a['window']} | {a['ttft_mean_s'] * 1e3:.1f} | {b['ttft_mean_s'] * 1e3:.1f} | "
            f"{a['tpot_mean_s'] * 1e3:.2f} | {b['tpot_mean_s'] * 1e3:.2f} |"
        )
    out.append("")
    res, wall = case(DSV3, ("static", "eplb:2", "ilp:2"), w, 100, limit=30.0)
    out += _table(f"DeepSeek-V3 EP32 fp8, 4 x HGX H200, {w} windows x 100 requests, DES", res, wall)
    # SGLang --eplb-rebalance-layers-per-chunk 8: the same copies in 8 pauses of up to 8 layers, a step between them
    res, wall = case(DSV3, ("eplb:2", "ilp:2"), w, 100, limit=30.0, chunk=8)
    out += _table(f"DeepSeek-V3 EP32, rebalancing 8 layers at a time, {w} windows x 100 requests, DES", res, wall)
    return "\n".join(out)


if __name__ == "__main__":
    print(main("--quick" in sys.argv))
