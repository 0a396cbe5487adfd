"""A serving deployment's phases as the expert-placement objective needs them (`placement.layertime`): how its
time splits between prefill and decode steps, at how many tokens per GPU (`phase_profile`, from a DES run), whether
DeepEP dispatches fp8 (`dispatch_fp8`), and how its two-batch overlap hides a layer's transfers (`deployment_overlap`,
from its step timer). `moesim place --simulate` asks for them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from moesim.placement.layertime import Overlap
from moesim.sim.serving.capacity import make_timer, replica_capacity
from moesim.sim.serving.scenario import Built


def phase_profile(steps: Any, ep: int, requests: Any = None) -> dict[str, float]:
    """The phases a DES run spent its time in, for the per-phase placement objective (`placement.layertime`):
    ``decode_share`` (the share of step time in pure-decode steps, which DeepEP runs in low-latency mode; every
    other step runs its normal mode), ``decode_tokens_per_gpu`` and ``prefill_tokens_per_gpu`` (each phase's
    tokens per step over the ``ep`` GPUs of the expert-parallel group, weighted by step time); with the run's
    ``requests`` table also ``mean_input_tokens`` and ``mean_output_tokens``."""
    dur = steps["duration_s"].to_numpy(float)
    dec = (steps["decode_seqs"] == steps["seqs"]).to_numpy() & (steps["seqs"] > 0).to_numpy()
    tok = steps["tokens"].to_numpy(float)
    total = float(dur.sum())

    def per_gpu(mask: Any, default: float) -> float:
        return float(np.average(tok[mask], weights=dur[mask])) / ep if dur[mask].sum() > 0 else default

    out = {
        "decode_share": float(dur[dec].sum()) / total if total > 0 else 0.0,
        "decode_tokens_per_gpu": max(per_gpu(dec, 1.0), 1e-3),
        "prefill_tokens_per_gpu": max(per_gpu(~dec, 1.0), 1.0),
    }
    if requests is not None and len(requests):
        out["mean_input_tokens"] = float(requests["input_tokens"].mean())
        out["mean_output_tokens"] = float(requests["output_tokens"].mean())
    return out


def dispatch_fp8(built: Built) -> bool:
    """Whether DeepEP dispatches fp8 in ``built``'s deployment: where the weights are block-scaled fp8, as the
    serving simulators decide it (`model.ops`)."""
    p = built.precision
    return p.weights == "fp8" and getattr(p, "fp8_scaling", "tensor") == "block"


def deployment_overlap(built: Built, prof: dict[str, float], label: str) -> tuple[Overlap | None, Overlap | None]:
    """(prefill, decode) two-batch overlap (`placement.layertime.Overlap`) of ``built``'s deployment at the
    operating point ``prof`` (`phase_profile` of its DES run, with its requests' mean lengths; without them the
    workload's own sample), as its serving step timer prices it (`StepTimer.overlap_terms`); (None, None) where the
    deployment does not overlap two batches. ``label`` names the scenario in each `Overlap`'s source.

    The batches it is measured on: decode, ``decode_tokens_per_gpu x EP`` sequences (at least 2) at the requests'
    mean context (prompt plus half the output); prefill, ``prefill_tokens_per_gpu x EP`` tokens as prompts of the
    mean prompt length (at least 2), each on the pool that runs the phase. Attention's time, which the plan does not
    change, sets how much of each transfer it hides."""
    if built.scenario.routing.overlap != "two_batch":
        return None, None
    if "mean_input_tokens" not in prof:  # no DES run measured them: the workload's own sample
        from moesim.sim.serving.workload import generate

        df = generate(built.workload, built.scenario.seed, built.base_dir)
        prof = {**prof, "mean_input_tokens": float(df["input_tokens"].mean()),
                "mean_output_tokens": float(df["output_tokens"].mean())}  # fmt: skip
    mean_in = max(prof.get("mean_input_tokens", 1.0), 1.0)
    ctx = int(mean_in + prof.get("mean_output_tokens", 0.0) / 2)
    ep = built.pools[0].layout.ep
    seqs = max(2, round(prof["decode_tokens_per_gpu"] * ep))
    tokens = max(2, round(prof["prefill_tokens_per_gpu"] * ep))
    n = max(2, math.ceil(tokens / mean_in))
    batches = {
        "prefill": (np.full(n, max(1, tokens // n)), np.zeros(n, np.int64)),
        "decode": (np.ones(seqs, np.int64), np.full(seqs, ctx, np.int64)),
    }
    out: list[Overlap | None] = []
    timers: dict[int, Any] = {}
    for name, (new, cached) in batches.items():
        # the pool that runs the phase (a disaggregated scenario's prefill or decode pool)
        j = next((i for i, p in enumerate(built.pools) if p.role in ("mixed", name)), 0)
        if j not in timers:
            pool = built.pools[j]
            timers[j] = make_timer(built, pool, replica_capacity(built, pool), 0)
        t = timers[j].overlap_terms(new, cached)
        if t is None:
            out.append(None)
            continue
        where = f"{name} {int(new.sum()):,} tokens in {new.size:,} sequences, context {int(cached.max()):,}"
        out.append(
            Overlap(
                t["strategy"], t["prep"], t["core"], t["shared"], t["slow"], t["capped_prep"], t["capped_core"],
                t["capped_shared"], t["experts_capped"],
                source=f"{t['strategy']} order, attention timed by {label}'s step timer at {where}",
            )
        )  # fmt: skip
    return out[0], out[1]
