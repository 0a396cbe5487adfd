"""The analytical engine against the discrete-event engine at low load, where the decode batch is a few sequences.

    python -m benchmarks.low_load            # prints the table (about 3 minutes on this 2-core machine)

The analytical engine's fixed point prices the step at the mean decode batch rounded to a whole one
(`sim.serving.analytical.pool_state`). Where that batch is a few sequences the step time is a steep staircase in
the batch (a MoE decode step's active experts grow with it, and CUDA-graph padding rounds it up to a capture size):
Mixtral-8x7B on H100-SXM x8 TP8 bf16, a decode step of 1, 2, 3-4, 5-8 sequences takes 1.43, 2.07, 2.91, 3.66 ms. The
map b -> rate x (output - 1) x step(round(b)) then has a spurious fixed point below the real batch: from one
sequence the iterates approach 1.5 from below and never round up, so the answer is the one-sequence step.

The batch a request decodes in fluctuates: with Poisson arrivals, each running request sees the others as
Poisson(b) (an M/G/infinity system), so its tokens take E[step(1 + N)], N ~ Poisson(b), on average. The column
"Poisson mixture" is that fixed point, b = rate x (output - 1) x E[step(1 + N)], each step from
`analytical.aggregate_step` at a whole batch: a prototype of a mechanism moesim does not have yet, computed here,
not in moesim. The discrete-event engine (DES) is the reference: it schedules every step.

Configurations from `examples/sweep-mixtral-gpu-choice.yaml` (chat workload, max_batch 256); the DES runs
max(600, 300 x rate) requests at the configuration's seed. Units: ms and sequences.
"""

from __future__ import annotations

import math
import time

import numpy as np
import yaml

from benchmarks.engines import ROOT

#: (GPU, GPUs, layout, precision, rate req/s): low load on one replica (the first four) and on four, and a moderate
#: load where the batch is large (the last).
CASES = [
    ("H100-SXM", 8, {"tp": 8}, "bf16", 4.0),
    ("H200-SXM", 1, {"tp": 1}, "bf16", 1.0),
    ("A100-SXM-80GB", 2, {"tp": 2}, "fp8", 2.0),
    ("H100-SXM", 8, {"tp": 2, "dp_attn": 1, "ep": 2}, "bf16", 4.0),
    ("H100-SXM", 8, {"tp": 8}, "bf16", 16.0),
]


def _model(gpu: str, gpus: int, layout: dict, precision: str, rate: float) -> tuple:
    from moesim.sim.sweeps import sweep_eval
    from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

    m = yaml.safe_load((ROOT / "examples" / "sweep-mixtral-gpu-choice.yaml").read_text())
    m["axes"].update(gpu=[gpu], gpus=[gpus], layout=[layout], precision=[precision], max_batch=[256], rate=[rate])
    m["axes"]["workload"] = {"chat": m["axes"]["workload"]["chat"]}
    spec = parse_sweep(m)
    (point,) = expand(spec).points
    sweep_eval._CACHE.clear()
    return sweep_eval._analytical(point, spec), spec, point.values["label"]


def poisson_mixture(model: object, rate: float) -> tuple[float, float]:
    """(decode batch, mean step s) of b = rate x (output - 1) x E[step(1 + N)], N ~ Poisson(b), for one replica at
    ``rate`` req/s; each step `aggregate_step`'s at a whole batch (the prompts that arrive ride it)."""
    from moesim.sim.serving import analytical as A

    timer = model.timers["mixed"]
    prompts = model.inp - model.hits
    ctx = int(model.mean_in + model.mean_out / 2)
    budget = model.pools["mixed"].engine.max_tokens
    out = model.mean_out - 1
    b, tau = 1.0, None
    for _ in range(200):
        n = np.arange(int(b + 8 * math.sqrt(b) + 8))
        w = np.exp(-b + n * math.log(b) - np.array([math.lgamma(x + 1.0) for x in n]))
        w /= w.sum()
        steps = []
        for k in (n + 1).tolist():
            d = A._decode_step(timer, k, ctx).duration_s
            steps.append(A.aggregate_step(timer, k, ctx, d, rate, tau or d, prompts, max(budget - k, 1))[0])
        new_tau = float(w @ np.array(steps))
        new_b = rate * out * new_tau
        if tau is not None and abs(new_tau - tau) <= 1e-5 * tau and abs(new_b - b) <= 1e-3 * b:
            return new_b, new_tau
        tau = new_tau if tau is None else 0.5 * (tau + new_tau)
        b = 0.5 * (b + new_b)
    return b, tau or math.nan


def main() -> None:
    from moesim.sim.sweeps import sweep_eval

    t0 = time.perf_counter()
    lines = [
        "| configuration | rate req/s | TPOT mean ms: analytical (rounded batch) / Poisson mixture / DES | "
        "analytical / DES | mixture / DES | decode batch: analytical / mixture / DES | E2E mean s: analytical / DES |",
        "|---|---|---|---|---|---|---|",
    ]
    for gpu, gpus, layout, precision, rate in CASES:
        model, spec, label = _model(gpu, gpus, layout, precision, rate)
        s = model.summary(rate)
        mb, mt = poisson_mixture(model, rate / model.pools["mixed"].replicas)
        d = sweep_eval._des(model.built, rate, spec.seed, int(max(600, rate * 300)))
        a_t, d_t = s["tpot_mean_s"], d["tpot_mean_s"]
        lines.append(
            f"| {label} | {rate:g} | {a_t * 1e3:.2f} / {mt * 1e3:.2f} / {d_t * 1e3:.2f} | "
            f"{a_t / d_t:.2f} | {mt / d_t:.2f} | {s['mean_batch']:.2f} / {mb:.2f} / {d['mean_batch']:.2f} | "
            f"{s['e2e_mean_s']:.3f} / {d['e2e_mean_s']:.3f} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))
    print(f"\nComputed in {time.perf_counter() - t0:.0f} s of wall time.")


if __name__ == "__main__":
    main()
