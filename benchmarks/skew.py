"""The skew model against skewed measurements: a fused grouped GEMM on this CPU under power-law routing.

Two steps, each runnable alone:

- ``measure``: times one MoE layer's routed experts, as a fused kernel runs them, on rank 0 of an
  expert-parallel group of EP 1, 8, 64 and 256, for batches of N tokens routed by a power law (exponents
  1.01 and 1.2, drawn as `placement.synthetic` draws them: Gumbel top-k over ``log rank^-a`` popularity in a
  random expert order) and for balanced batches of the same N (rank 0 given 1/4, 1 or 4 times the group's mean
  pairs, spread evenly over all its local experts, a quarter or a sixteenth of them). Writes one
  ``grouped_gemm`` table (``profiling/data/cpu-epyc-skew/``).
- ``report``: calibrates on the balanced rows only and predicts the skewed rows three ways: the skew model
  (`profiling.skew.predict_skewed`), the previous per-expert sum (`profiling.skew.predict_per_expert_sum`),
  and "assume balanced" (the balanced layer with the same pairs over every local expert,
  `profiling.skew.predict_balanced`); MAPE per EP size. Also the op the discrete-event simulator times for one
  GPU (`sim.serving.steptime.expert_op`: the GPU's pairs spread evenly over its active experts; it knows each
  GPU's pairs and active experts, not each expert's count), with the step's real N (what it does now) and with
  N = pairs x ep / top_k (before: the N at which the GPU's pairs are the mean load). The same comparison on the
  H100 tables' skewed rows (``profiling/data/h100-sxm/full-bf16``, ``torch_loop``, EP 1 only).

The kernel (`fused_moe_cpu`) is one pass as vLLM's fused MoE makes it, not a Python loop over experts: one
stable sort of the (token, expert) pairs by expert, one gather of the routed tokens' rows, two grouped GEMMs
(``torch._grouped_mm``: one call each over all local experts, per-expert row offsets; ATen loops over the
groups in C++, so an expert costs no Python launch), one SiLU-and-multiply, one weighted scatter-add back to
the tokens. Expert parallelism as vLLM's all-gather dispatch runs it (``--all2all-backend
allgather_reducescatter``, vLLM's default since vllm-project/vllm#33728 removed ``naive``): every rank's fused
MoE sees the whole group's N tokens and their top-k ids, and experts of other ranks are masked out, so the
token-dependent work (masking, sorting the N x top_k ids, the output sum) grows with N and the expert work with
the pairs that land on rank 0. Our Triton kernel under
``TRITON_INTERPRET=1`` was not used: the interpreter runs each Triton program as numpy in Python, so its time
is the interpreter's, not a kernel's.

Run: ``.venv/bin/python -m benchmarks.skew measure`` (about 3 min on one core), then
``.venv/bin/python -m benchmarks.skew report [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TABLE_DIR = ROOT / "profiling" / "data" / "cpu-epyc-skew"
#: The committed H100 tables with skewed rows (``torch_loop``, power-law routing at EP 1).
H100_DIR = ROOT / "profiling" / "data" / "h100-sxm" / "full-bf16"
#: The layer timed: DeepSeek-V3's routing (256 experts, top 8) on a small expert (hidden 512, width 256), bf16.
EXPERTS, TOP_K, HIDDEN, INTER, DTYPE = 256, 8, 512, 256, "bf16"
EPS = (1, 8, 64, 256)
TOKENS = (32, 128, 512, 2048, 8192)
ALPHAS = (1.01, 1.2)
SEEDS = (0, 1, 2)
#: Balanced rows over all L local experts and over L/4 and L/16 of them (where that leaves at least one).
SUBSETS = (1, 4, 16)
#: Rank 0's pairs in balanced rows, as multiples of the group's mean N x top_k / ep.
SHARES = (0.25, 1.0, 4.0)
#: Passes over the whole grid (in a new random order each); a row's time is its fastest call in all of them.
PASSES = 3
IMPL = "torch_grouped_mm"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the routing rank 0 sees -----------------------------------------------------------------------------------


def power_topk(tokens: int, alpha: float, seed: int, experts: int = EXPERTS, top_k: int = TOP_K) -> np.ndarray:
    """[tokens, top_k] distinct expert ids: Gumbel top-k over ``log p``, ``p ∝ rank^-alpha`` in a random order.

    The draw of `placement.synthetic.synthetic_trace` with popularity only (one layer).
    """
    from moesim.placement.synthetic import power_law

    rng = np.random.default_rng(seed)
    logits = np.log(power_law(experts, alpha, rng))[None, :] + rng.gumbel(size=(tokens, experts))
    return np.argpartition(-logits, top_k - 1, axis=1)[:, :top_k]


def topk_from_counts(counts: np.ndarray, tokens: int, experts: int = EXPERTS, top_k: int = TOP_K) -> np.ndarray:
    """[tokens, top_k] expert ids giving rank 0's local experts ``0 .. len(counts) - 1`` exactly ``counts`` pairs.

    The local pairs fill the (token, slot) places slot-major (slot 0 of every token, then slot 1...), so they
    spread over the tokens; the places left go to other ranks' experts (ids ``len(counts) ..``, cycling).
    A token may list one expert twice when a count exceeds the tokens' slots: the kernel treats every pair
    alike. Needs ``sum(counts) <= tokens * top_k`` and, with no other rank (``len(counts) == experts``),
    equality.
    """
    local = len(counts)
    pairs = int(np.sum(counts))
    assert pairs <= tokens * top_k and (local < experts or pairs == tokens * top_k)
    flat = np.empty(tokens * top_k, np.int64)
    flat[:pairs] = np.repeat(np.arange(local), counts)
    if pairs < flat.size:
        flat[pairs:] = local + np.arange(flat.size - pairs) % (experts - local)
    return flat.reshape(top_k, tokens).T.copy()


def balanced_counts(pairs: int, local: int, active: int) -> np.ndarray:
    """[local] pairs per local expert: ``pairs`` as equal as integers allow over the first ``active`` experts."""
    c = np.zeros(local, np.int64)
    c[:active] = pairs // active
    c[: pairs % active] += 1
    return c


def rank0_counts(topk: np.ndarray, ep: int, experts: int = EXPERTS) -> np.ndarray:
    """Pairs per local expert of rank 0, [experts / ep] ints (experts ``0 .. experts/ep - 1``)."""
    local = experts // ep
    flat = topk.reshape(-1)
    return np.bincount(flat[flat < local], minlength=local)


# --- the fused kernel --------------------------------------------------------------------------------------------


def fused_moe_cpu(x: Any, topk_ids: Any, topk_w: Any, w13: Any, w2: Any, local: int) -> Any:
    """Routed experts of rank 0 (experts ``0 .. local - 1``) for all N tokens, one fused pass (module docstring).

    Args:
        x: [N, H] tokens. topk_ids: [N, k] int64 expert ids. topk_w: [N, k] routing weights.
        w13: [local, H, 2 I] gate and up projections. w2: [local, I, H] down projection.
        local: experts on this rank.
    Returns:
        [N, H]: the weighted sum of each token's local experts' outputs (zero for tokens with none).
    """
    import torch
    import torch.nn.functional as F

    k, inter = topk_ids.shape[1], w2.shape[1]
    flat = topk_ids.reshape(-1)
    pair = torch.nonzero(flat < local).squeeze(1)  # local pair ids t * k + j
    expert = flat[pair]
    order = torch.sort(expert, stable=True).indices
    pair, expert = pair[order], expert[order]
    offs = torch.cumsum(torch.bincount(expert, minlength=local), 0).to(torch.int32)  # [local] end row per expert
    token = pair // k
    h = torch._grouped_mm(x[token], w13, offs=offs)  # [P, 2 I]
    y = torch._grouped_mm(F.silu(h[:, :inter]) * h[:, inter:], w2, offs=offs)  # [P, H]
    y = y * topk_w.reshape(-1)[pair].unsqueeze(1)
    return torch.zeros_like(x).index_add_(0, token, y)


def _time(fn: Any, flush: Any, reps: int) -> list[float]:
    """Seconds of ``reps`` calls of ``fn``, each after writing ``flush`` (64 MiB: twice this CPU's L3)."""
    fn()
    out = []
    for _ in range(reps):
        flush.add_(1.0)
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _shapes(quick: bool) -> list[dict[str, Any]]:
    """Every row to time: ep, tokens, distribution, and a seed (skewed) or the pairs and active experts (balanced).

    Balanced rows: rank 0's pairs ``P = share x N top_k / ep`` for shares 1/4, 1 and 4 (rank 0 receiving a
    quarter of, the mean, or four times the mean load of the group: the range power-law routing gives it), each
    over all L local experts, L/4 and L/16 of them; so the table spans N, P and the active experts apart, as
    the skewed rows need. Power-law rows: exponents `ALPHAS`, seeds `SEEDS`.
    """
    tokens = TOKENS[:3] if quick else TOKENS
    rows: list[dict[str, Any]] = []
    for ep in EPS:
        local = EXPERTS // ep
        for n in tokens:
            for share in SHARES:
                pairs = round(share * n * TOP_K / ep)
                if pairs < 1 or pairs > n * TOP_K or (ep == 1 and pairs != n * TOP_K):
                    continue
                for active in sorted({max(1, local // sub) for sub in SUBSETS}, reverse=True):
                    if active <= pairs and pairs / active <= n:
                        rows.append({"ep": ep, "tokens": n, "distribution": "balanced", "pairs": pairs,
                                     "active": active})  # fmt: skip
            for a in ALPHAS:
                for seed in SEEDS[: 1 if quick else None]:
                    rows.append({"ep": ep, "tokens": n, "distribution": f"power:{a}", "seed": seed})
    return rows


def measure(out_dir: Path = TABLE_DIR, quick: bool = False, reps: int = 3, passes: int = PASSES) -> pd.DataFrame:
    """Time every shape of `_shapes` on one thread and write ``out_dir/grouped_gemm.parquet``.

    Each shape is called ``reps`` times (after one untimed call) in each of ``passes`` passes over the grid,
    in a new random order per pass, so a burst of other work on the shared cores cannot spoil all of a row's
    calls; ``time_s`` is the fastest call. The table's hardware is this CPU with the peak and bandwidth one
    thread reaches (`probe_hardware`), so the calibration's reference is a roofline.
    """
    import torch

    from moesim.profiling.runner import probe_hardware
    from moesim.profiling.tables import write_table
    from moesim.profiling.timing import Timer, environment

    torch.set_num_threads(1)
    hardware = probe_hardware("cpu", [DTYPE], Timer("cpu"))  # one thread's bf16 GEMM peak and copy bandwidth
    _log(f"probe: bf16 {hardware.peak_flops[DTYPE] / 1e9:.0f} GFLOP/s, {hardware.memory_bandwidth / 1e9:.1f} GB/s")
    torch.manual_seed(0)
    dt = torch.bfloat16
    flush = torch.zeros(16 * 2**20, dtype=torch.float32)
    weights = {
        ep: (torch.randn(EXPERTS // ep, HIDDEN, 2 * INTER, dtype=dt) * 0.05,
             torch.randn(EXPERTS // ep, INTER, HIDDEN, dtype=dt) * 0.05)
        for ep in EPS
    }  # fmt: skip
    shapes = _shapes(quick)
    for s in shapes:
        local = EXPERTS // s["ep"]
        if s["distribution"] == "balanced":
            s["ids"] = topk_from_counts(balanced_counts(s["pairs"], local, s["active"]), s["tokens"])
        else:
            a = float(s["distribution"].split(":")[1])
            s["ids"] = power_topk(s["tokens"], a, 1000 * s["ep"] + 10 * s["tokens"] + s["seed"])
        s["counts"] = rank0_counts(s["ids"], s["ep"])
        s["samples"] = []
    shapes = [s for s in shapes if s["counts"].sum() > 0]  # rank 0 without pairs runs no expert
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for p in range(passes):
        for i, j in enumerate(rng.permutation(len(shapes))):
            s = shapes[int(j)]
            n, local = s["tokens"], EXPERTS // s["ep"]
            w13, w2 = weights[s["ep"]]
            x = torch.randn(n, HIDDEN, dtype=dt)
            topk_ids = torch.from_numpy(s["ids"].astype(np.int64))
            topk_w = torch.full((n, TOP_K), 1.0 / TOP_K, dtype=dt)
            s["samples"] += _time(lambda: fused_moe_cpu(x, topk_ids, topk_w, w13, w2, local), flush, reps)  # noqa: B023
            if i % 25 == 0:
                _log(f"pass {p + 1}/{passes}: {i}/{len(shapes)} ({time.perf_counter() - started:.0f} s)")
    rows = []
    for s in shapes:
        counts, samples = s["counts"], s["samples"]
        rows.append({
            "op": "grouped_gemm", "impl": IMPL, "dtype": DTYPE,
            "time_s": float(min(samples)), "time_p10_s": float(np.percentile(samples, 10)),
            "time_median_s": float(np.median(samples)), "time_p90_s": float(np.percentile(samples, 90)),
            "reps": len(samples), "threads": 1, "tokens": s["tokens"], "hidden": HIDDEN, "inter": INTER,
            "experts": EXPERTS, "top_k": TOP_K, "ep": s["ep"], "moe_tp": 1, "distribution": s["distribution"],
            "seed": s.get("seed", -1), "pairs": int(counts.sum()), "active_experts": int((counts > 0).sum()),
            "max_expert_tokens": int(counts.max()), "expert_counts": [int(c) for c in counts],
            "flops": 6.0 * counts.sum() * HIDDEN * INTER,
        })  # fmt: skip
    df = pd.DataFrame(rows)
    meta = environment("cpu") | {
        "hardware": hardware.model_dump(),
        "source": "benchmarks/skew.py measure: fused_moe_cpu (sort + gather + 2 torch._grouped_mm + scatter-add)",
        "threads": 1,
        "timing": f"fastest of {reps} calls x {passes} passes (random order), each after a 64 MiB write",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(df, out_dir / "grouped_gemm.parquet", meta)
    return df


# --- the comparison --------------------------------------------------------------------------------------------


def skew_mape(table: pd.DataFrame, hardware: Any, holdout: float = 0.0) -> dict[str, Any]:
    """Calibrate on ``table``'s balanced rows, predict its skewed rows; MAPE (%) per EP size and overall.

    Args:
        table: grouped-GEMM rows of one kernel (`profiling.tables` columns, ``expert_counts`` on skewed rows).
        hardware: the `HardwareSpec` they were measured on.
        holdout: fraction of balanced rows held out of the fit (0: fit on all of them).
    Returns:
        ``{"by_ep": {ep: {"rows", "new", "old", "balanced", "des_real_n", "des_pairs_n"}}, "all": {...}, "fit": fit
        summary}``, MAPE in %; ``des_*``: the simulator's per-GPU op (`sim.serving.steptime.expert_op`) with the
        step's real N and with N = pairs x ep / top_k.
    """
    import tempfile

    from moesim.model.hardware import make_cluster
    from moesim.profiling.calibrate import calibrate
    from moesim.profiling.costmodel import CalibratedCostModel
    from moesim.profiling.opshapes import row_op
    from moesim.profiling.skew import predict_balanced, predict_per_expert_sum, predict_skewed
    from moesim.profiling.tables import write_table
    from moesim.sim.serving.steptime import expert_op

    skewed = table[table["distribution"].astype(str) != "balanced"]
    with tempfile.TemporaryDirectory() as tmp:
        write_table(table, Path(tmp) / "grouped_gemm.parquet", {"hardware": hardware.model_dump()})
        cal = calibrate([tmp], holdout=holdout)
    fit = next(f for f in cal.fits if f.kind == "grouped_gemm")
    model = CalibratedCostModel(type(cal)([fit]))
    rows = skewed.to_dict("records")
    meas = skewed["time_s"].to_numpy(float)
    cl = make_cluster(hardware, num_gpus=1)

    def _des(r: dict[str, Any], real_n: bool) -> float:
        template = row_op("grouped_gemm", {**r, "pairs": None})  # the layer's balanced op, as `StepTimer` builds it
        op = expert_op(template, float(r["pairs"]), float(r["active_experts"]), float(r["tokens"]) if real_n else None)
        return model.op_time(op, cl).seconds

    preds = {
        "new": [predict_skewed(model, r, hardware.key) for r in rows],
        "old": [predict_per_expert_sum(model, r, hardware.key) for r in rows],
        "balanced": [predict_balanced(model, r, hardware.key) for r in rows],
        "des_real_n": [_des(r, True) for r in rows],
        "des_pairs_n": [_des(r, False) for r in rows],
    }
    ape = {k: np.abs(np.asarray(v) / meas - 1.0) * 100 for k, v in preds.items()}
    eps = skewed["ep"].to_numpy(int)

    def _stats(mask: np.ndarray) -> dict[str, Any]:
        return {"rows": int(mask.sum())} | {k: round(float(a[mask].mean()), 2) for k, a in ape.items()}

    out = {
        "by_ep": {int(e): _stats(eps == e) for e in sorted(set(eps))},
        "by_distribution": {
            str(d): _stats(skewed["distribution"].to_numpy() == d) for d in sorted(set(skewed["distribution"]))
        },
        "all": _stats(np.ones(len(rows), bool)),
        "fit": fit.summary(),
        "balanced_rows": int(len(table) - len(skewed)),
    }
    return out


def _lines(res: dict[str, Any]) -> list[str]:
    lines = [
        "| EP | skewed rows | skew model MAPE | previous per-expert sum | assume balanced | simulator's GPU op, real N "
        "| simulator's GPU op, N from pairs (before) |",
        "|---|---|---|---|---|---|---|",
    ]
    for ep, s in [*res["by_ep"].items(), ("all", res["all"])]:
        lines.append(
            f"| {ep} | {s['rows']} | {s['new']:.1f}% | {s['old']:.1f}% | {s['balanced']:.1f}% | {s['des_real_n']:.1f}% "
            f"| {s['des_pairs_n']:.1f}% |"
        )
    return lines


def report(table_dir: Path = TABLE_DIR, h100_dir: Path | None = H100_DIR) -> tuple[str, dict[str, Any]]:
    """The MAPE tables (markdown) and their figures, from the committed tables: this CPU's, and the H100's
    skewed rows of their own kernel (``h100``; skipped when ``h100_dir`` is None or has no skewed rows)."""
    from moesim.model.hardware import HardwareSpec
    from moesim.profiling.tables import read_table

    df, meta = read_table(table_dir / "grouped_gemm.parquet")
    res = skew_mape(df, HardwareSpec(**meta["hardware"]))
    lines = [
        f"Skew model on {meta.get('device', 'this CPU')} ({IMPL}, {DTYPE}, {EXPERTS} experts top-{TOP_K}, "
        f"hidden {HIDDEN}, width {INTER}; fitted on {res['balanced_rows']} balanced rows, fit "
        f"{res['fit']['method']}):",
        "",
        *_lines(res),
    ]
    path = None if h100_dir is None else h100_dir / "grouped_gemm.parquet"
    if path is not None and path.is_file():
        h, hmeta = read_table(path)
        skewed = h[h["distribution"].astype(str) != "balanced"]
        if len(skewed):
            impl = str(skewed["impl"].iloc[0])
            res["h100"] = skew_mape(h[h["impl"] == impl], HardwareSpec(**hmeta["hardware"]))
            lines += [
                "",
                f"The same on {hmeta.get('device', 'the H100')} ({impl}, its balanced rows of every shape fitted: "
                f"{res['h100']['balanced_rows']} rows, fit {res['h100']['fit']['method']}):",
                "",
                *_lines(res["h100"]),
            ]
    return "\n".join(lines), res


def main(argv: list[str] | None = None) -> int:
    """``measure`` or ``report`` (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.skew",
        description="Skewed fused-MoE measurements on this CPU and the skew model's error on them. "
        "Example: python -m benchmarks.skew measure && python -m benchmarks.skew report --json",
    )
    p.add_argument("step", choices=("measure", "report"))
    p.add_argument("--out", type=Path, default=TABLE_DIR, help="table folder (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="measure: fewer token counts and seeds")
    p.add_argument("--json", action="store_true", help="report: one JSON object on stdout")
    a = p.parse_args(argv)
    if a.step == "measure":
        df = measure(a.out, quick=a.quick)
        _log(f"wrote {len(df)} rows to {a.out / 'grouped_gemm.parquet'}")
        if a.json:
            print(json.dumps({"rows": len(df), "path": str(a.out / "grouped_gemm.parquet")}))
        return 0
    text, res = report(a.out)
    print(json.dumps(res) if a.json else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
