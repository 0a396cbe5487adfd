"""The analytical engine against the discrete-event engine at low load, where the decode batch is a few sequences.

    python -m benchmarks.low_load            # prints the table (about 20 s on this 2-core machine)
    python -m benchmarks.low_load --idle     # mean TTFT with and without arrivals to an idle replica (section 27)
    python -m benchmarks.low_load --lag      # the step decided ahead of an arrival, against the DES's (section 27)

The analytical engine's fixed point priced the step at the mean decode batch rounded to a whole one
(`sim.serving.analytical.pool_state`, before 2026-12-07 late). Where that batch is a few sequences the step time is
a steep staircase in the batch (a MoE decode step's active experts grow with it, and CUDA-graph padding rounds it up
to a capture size): Mixtral-8x7B on H100-SXM x8 TP8 bf16, a decode step of 1, 2, 3-4, 5-8 sequences takes 1.43,
2.07, 2.91, 3.66 ms. The map b -> rate x (output - 1) x step(round(b)) then has a spurious fixed point below the
real batch: from one sequence the iterates approach 1.5 from below and never round up, so the answer is the
one-sequence step.

The batch a request decodes in fluctuates. With Poisson arrivals and a constant step, each running request sees
the others as Poisson(b) (an M/G/infinity system), so its tokens take E[step(1 + N)], N ~ Poisson(b), on average
(`analytical.mixed_decode`, `PRODUCT_FORM` off). With a step that grows with the batch, a crowded spell drains
slower and lasts longer: the batch is a processor-sharing queue with a state-dependent rate, whose stationary law
has the product form pi(n) ~ prod_{i <= n} load x step(i) / i, insensitive to the output lengths
(`analytical.busy_decode`, `PRODUCT_FORM` on, the default). The table gives the analytical engine with the rounded
batch (before 2026-12-07, `BATCH_MIXTURE` off), with the Poisson law and with the product form against the
discrete-event engine (DES), which schedules every step.

The DES's own run is a sample: its requests' lengths and arrivals are one draw of the workload, whose decode work
can differ from the workload's mean by a few percent. The column "product form on the DES's requests" gives the
analytical engine the same requests at the rate their arrivals realise, so what is left there against the DES is
the model's error alone.

Configurations from `examples/sweep-mixtral-gpu-choice.yaml` (chat workload, max_batch 256); the DES runs
max(600, 300 x rate) requests at the configuration's seed. Units: ms and sequences.
"""

from __future__ import annotations

import sys
import time

import yaml

from benchmarks.engines import ROOT

#: (GPU, GPUs, layout, precision, rate req/s): low load on one replica (the first three) and on four (the fourth), and
#: a moderate load where the batch is large (the last).
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


def _own_requests(model, rate: float, seed: int, requests: int) -> dict:
    """The analytical engine (product form) on the discrete-event run's own requests: the same sample of lengths,
    at the rate its arrivals realise (`Analytical.workload_rate`), so that what is left against the DES is the
    model's, not the sample's (a run of 1,200 requests at 4 req/s realised 3.89 req/s and outputs of mean 253.2
    tokens where the workload's mean is 259.4: 5% less decode work)."""
    from moesim.sim.serving.analytical import Analytical
    from moesim.sim.serving.workload import generate
    from moesim.sim.sweeps import sweep_eval

    b = sweep_eval._with_rate(model.built, rate, requests)
    own = Analytical(b, seed, timers=model.timers, sample=generate(b.workload, seed, b.base_dir))
    return own.summary(own.workload_rate)


def main() -> None:
    from moesim.sim.serving import analytical
    from moesim.sim.sweeps import sweep_eval

    t0 = time.perf_counter()
    lines = [
        "| configuration | rate req/s | TPOT mean ms: rounded batch / Poisson / product form / DES | over DES: "
        "rounded / Poisson / product form | product form on the DES's requests: TPOT ms, over DES | decode batch: "
        "rounded / Poisson / product form / DES | E2E mean s: rounded / product form / DES |",
        "|---|---|---|---|---|---|---|",
    ]
    variants = ((False, False), (True, False), (True, True))  # (BATCH_MIXTURE, PRODUCT_FORM)
    for gpu, gpus, layout, precision, rate in CASES:
        got = []
        for mixture, product in variants:
            analytical.BATCH_MIXTURE, analytical.PRODUCT_FORM = mixture, product
            model, spec, label = _model(gpu, gpus, layout, precision, rate)
            got.append(model.summary(rate))
        analytical.BATCH_MIXTURE, analytical.PRODUCT_FORM = True, True
        n = int(max(600, rate * 300))
        d = sweep_eval._des(model.built, rate, spec.seed, n)
        own = _own_requests(model, rate, spec.seed, n)
        tpot = " / ".join(f"{g['tpot_mean_s'] * 1e3:.2f}" for g in got)
        ratio = " / ".join(f"{g['tpot_mean_s'] / d['tpot_mean_s']:.2f}" for g in got)
        batch = " / ".join(f"{g['mean_batch']:.2f}" for g in got)
        lines.append(
            f"| {label} | {rate:g} | {tpot} / {d['tpot_mean_s'] * 1e3:.2f} | {ratio} | {own['tpot_mean_s'] * 1e3:.2f}, "
            f"{own['tpot_mean_s'] / d['tpot_mean_s']:.2f} | {batch} / {d['mean_batch']:.2f} "
            f"| {got[0]['e2e_mean_s']:.3f} / {got[2]['e2e_mean_s']:.3f} / {d['e2e_mean_s']:.3f} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))
    print(f"\nComputed in {time.perf_counter() - t0:.0f} s of wall time.")


def _des_runs():
    """For each case of `CASES`: (its label, rate req/s, the scenario at that rate with max(600, 300 x rate)
    requests, the DES run and its summary, a maker of the analytical engine on the DES run's own requests)."""
    from moesim.sim.serving.analytical import Analytical
    from moesim.sim.serving.engine import simulate
    from moesim.sim.serving.serve import des_summary
    from moesim.sim.serving.workload import generate
    from moesim.sim.sweeps import sweep_eval

    for gpu, gpus, layout, precision, rate in CASES:
        model, spec, label = _model(gpu, gpus, layout, precision, rate)
        b = sweep_eval._with_rate(model.built, rate, int(max(600, rate * 300)))
        res = simulate(b, spec.seed)

        def own(b=b, seed=spec.seed, timers=model.timers) -> Analytical:
            return Analytical(b, seed, timers=timers, sample=generate(b.workload, seed, b.base_dir))

        yield label, rate, b, res, des_summary(b, res), own


def idle_arrivals() -> None:
    """``--idle``: mean TTFT of the analytical engine on the DES's own requests with every arrival charged a step
    (`analytical.IDLE_ARRIVALS` off), with the replay's idle arrivals charged none (on, `IDLE_SHARE` off), and with
    the share the batch's law finds idle (both on: P(N = 0), `Analytical._idle_share`), over the DES's; and the
    share of arrivals that find the replica idle, law / DES (`metrics.idle_arrival_share`)."""
    from moesim.sim.serving import analytical
    from moesim.sim.serving.metrics import idle_arrival_share

    print(
        "| configuration | rate req/s | idle arrivals: law / DES | TTFT mean ms: every arrival a step / replay's "
        "idle / law's idle / DES | over DES: every / replay / law |"
    )
    print("|---|---|---|---|---|")
    for label, rate, b, res, d, make in _des_runs():
        got, share = [], None
        for idle, law in ((False, False), (True, False), (True, True)):
            analytical.IDLE_ARRIVALS, analytical.IDLE_SHARE = idle, law
            own = make()
            r = own.workload_rate
            got.append(own.summary(r)["ttft_mean_s"])
            p = own.pools["mixed"]
            # the replay (and so the law's share) covers one replica or round-robin ones (`Analytical._mixed`)
            if law and (p.replicas == 1 or b.scenario.router == "round_robin"):
                share = own._idle_share(own.timers["mixed"], p, r / p.replicas, own._mixed(r)[0])
        analytical.IDLE_ARRIVALS, analytical.IDLE_SHARE = True, True
        t = d["ttft_mean_s"]
        law_share = "-" if share is None else f"{share:.3f}"
        print(
            f"| {label} | {rate:g} | {law_share} / {idle_arrival_share(res.requests):.3f} | "
            f"{' / '.join(f'{g * 1e3:.1f}' for g in got)} / {t * 1e3:.1f} | "
            f"{' / '.join(f'{g / t:.2f}' for g in got)} |",
            flush=True,
        )


def step_ahead() -> None:
    """``--lag``: the step an overlapping scheduler decided before an arrival's. The analytical engine's figure with
    `analytical.LAG_AT_BATCH` off (the mean step per decoded token) and on (`analytical.busy_step`: the busy
    replica's mean step as an arrival finds it) against the DES's own (`metrics.step_after_instant_s`), and the mean
    TTFT each gives on the DES's own requests, over the DES's."""
    from moesim.sim.serving import analytical
    from moesim.sim.serving.metrics import step_after_instant_s

    print(
        "| configuration | rate req/s | step decided ahead ms: per token (off) / at the arrival's batch (on) / DES "
        "| TTFT mean ms: off / on / DES | over DES: off -> on |"
    )
    print("|---|---|---|---|---|")
    for label, rate, _, res, d, make in _des_runs():
        lags, ttft = [], []
        for flag in (False, True):
            analytical.LAG_AT_BATCH = flag
            own = make()
            r = own.workload_rate
            p = own.pools["mixed"]
            s = own._mixed(r)[0]
            lags.append(own._lag(own.timers["mixed"], p, r / p.replicas, s))
            ttft.append(own.summary(r)["ttft_mean_s"])
        analytical.LAG_AT_BATCH = True
        t, ahead = d["ttft_mean_s"], step_after_instant_s(res.steps)
        print(
            f"| {label} | {rate:g} | {lags[0] * 1e3:.2f} / {lags[1] * 1e3:.2f} / {ahead * 1e3:.2f} | "
            f"{ttft[0] * 1e3:.1f} / {ttft[1] * 1e3:.1f} / {t * 1e3:.1f} | {ttft[0] / t:.2f} -> {ttft[1] / t:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    if "--idle" in sys.argv:
        idle_arrivals()
    elif "--lag" in sys.argv:
        step_ahead()
    else:
        main()
