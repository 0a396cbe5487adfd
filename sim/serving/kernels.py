"""Which kernel each pool's engine runs, and where a step's time comes from.

A real engine runs one specific kernel per op family: vLLM's fused-MoE Triton kernel, SGLang's, DeepGEMM, Marlin;
FlashAttention, FlashInfer or Triton attention. The scenario's ``engine:`` names them (``moe_kernel``,
``attention_backend``); unset, the engine profile's default (`sim.serving.host.engine_profile`) applies.
`pool_cost_model` hands the pool's step timer the scenario's cost model timing those kernels
(`profiling.costmodel.CalibratedCostModel.with_kernels`; the roofline has no kernels and is returned as is).

`cost_provenance` says where the time of a representative decode step and prefill step comes from: per op kind
the source of its time (`OpTime.source`), and the share of the step's time that is measured (the engine's kernel,
measured on this GPU), transferred (measured on another GPU), fallback (another kernel's table stood in for the
engine's) or roofline.

Units: seconds; tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.model import Batch, CostModel, estimate_step
from moesim.model.errors import MoesimError
from moesim.profiling.costmodel import FAMILY_KINDS, SOURCE_CLASSES, resolve_kernel, source_class
from moesim.profiling.transfer import estimate_band
from moesim.sim.serving.host import engine_profile
from moesim.sim.serving.scenario import Built, EngineSpec, Pool
from moesim.sim.serving.workload import generate

#: Decode batch of the representative step when the caller gives none: sequences (capped by engine.max_batch).
DECODE_BATCH = 64
_KEYS = {"moe": ("moe_kernel", "engine.moe_kernel"), "attention": ("attention_backend", "engine.attention_backend")}


def engine_kernels(engine: EngineSpec, base_dir: Any = ".") -> dict[str, str | None]:
    """Family (``moe``, ``attention``) -> the kernel ``engine`` runs (moesim's name; None: the fastest measured).

    ``engine.moe_kernel`` / ``engine.attention_backend`` when set, else the engine profile's default
    (``ideal``: ``any``, the fastest). `MoesimError` naming the choices for an unknown kernel.
    """
    prof = engine_profile(engine, base_dir)
    out: dict[str, str | None] = {}
    for family, (attr, where) in _KEYS.items():
        mine = getattr(engine, attr)
        name = mine if mine is not None else getattr(prof, attr)
        where = where if mine is not None else f"{where} (the {prof.kind} {prof.version} profile's default)"
        out[family] = resolve_kernel(family, name, where)
    return out


def pool_cost_model(built: Built, pool: Pool) -> CostModel | None:
    """The cost model of ``pool``'s steps: the scenario's, timing the kernels the pool's engine runs.

    None (the roofline) stays None: the roofline times no kernel in particular.
    """
    kernels = engine_kernels(pool.engine, built.base_dir)
    cm = built.cost_model
    if cm is None or not hasattr(cm, "with_kernels"):
        return cm
    return cm.with_kernels(kernels)


def _mean_lengths(built: Built) -> tuple[float, float]:
    """Mean prompt and output tokens of the scenario's workload (its seed's sample)."""
    df = generate(built.workload, seed=built.scenario.seed, base_dir=built.base_dir)
    if df.empty:
        raise MoesimError("the workload has no requests", "set workload.requests >= 1 or give a non-empty trace")
    return float(df["input_tokens"].mean()), float(df["output_tokens"].mean())


def step_provenance(built: Built, pool: Pool, batch: Batch) -> dict[str, Any]:
    """Where the time of ``batch`` on ``pool`` comes from.

    Returns ``step_s`` (s), ``ops`` (op kind -> the source of the largest share of that kind's time),
    ``share`` (`SOURCE_CLASSES` -> share of the step's time, summing to 1) and ``band`` (the step's expected
    error from its ops transferred from another GPU's tables: ``p50``, ``p90`` fractions of the step,
    ``transferred_share``; `profiling.transfer.step_band`).
    """
    cm = pool_cost_model(built, pool)
    est = estimate_step(
        built.model, batch, pool.layout, pool.cluster, built.precision, cm, mla_absorb=batch.phase != "prefill",
        loads=built.loads, phys_to_log=built.phys_to_log,
    )  # fmt: skip
    by_class = dict.fromkeys(SOURCE_CLASSES, 0.0)
    by_kind: dict[str, dict[str, float]] = {}
    for op, t in zip(est.ops, est.times, strict=True):
        s = t.seconds * op.count
        by_class[source_class(t.source)] += s
        kind = by_kind.setdefault(op.kind, {})
        kind[t.source] = kind.get(t.source, 0.0) + s
    total = sum(by_class.values())
    return {
        "step_s": est.step_s,
        "ops": {k: max(v.items(), key=lambda kv: kv[1])[0] for k, v in sorted(by_kind.items())},
        "share": {c: (v / total if total > 0 else 0.0) for c, v in by_class.items()},
        "band": estimate_band(est.ops, est.times),
    }


def cost_provenance(
    built: Built, decode_batch: float | None = None, lengths: tuple[float, float] | None = None
) -> dict[str, Any]:
    """The provenance of a representative decode and prefill step (see the module docstring).

    Decode: ``decode_batch`` sequences (default `DECODE_BATCH`, at most ``engine.max_batch``) at the mean prompt
    plus half the mean output of cached context; prefill: one mean prompt (at most ``engine.max_tokens``).
    Disaggregated: each on its own pool. Returns ``cost_model``, ``kernels`` (family -> kernel, ``fastest``
    where the engine has no preference; per pool role when the pools differ), ``decode`` and ``prefill``
    (`step_provenance` with the step's shape). ``lengths``: the mean prompt and output tokens when the caller has
    the run's requests (else the workload is drawn again, `_mean_lengths`).
    """
    pools = {p.role: p for p in built.pools}
    dec, pre = pools.get("decode", pools.get("mixed")), pools.get("prefill", pools.get("mixed"))
    assert dec is not None and pre is not None
    mean_in, mean_out = lengths if lengths is not None else _mean_lengths(built)
    b = int(max(1, min(dec.engine.max_batch, round(decode_batch or DECODE_BATCH))))
    ctx = int(max(1, round(mean_in + mean_out / 2)))
    prompt = int(max(1, min(round(mean_in), pre.engine.max_tokens)))
    kernels = {
        p.role: {f: k or "fastest" for f, k in engine_kernels(p.engine, built.base_dir).items()} for p in built.pools
    }
    first = next(iter(kernels.values()))
    cm = pool_cost_model(built, dec)
    out: dict[str, Any] = {
        "cost_model": cm.name if cm is not None else "roofline",
        "kernels": first if all(v == first for v in kernels.values()) else kernels,
        "families": {f: list(kinds) for f, kinds in FAMILY_KINDS.items()},
    }
    out["decode"] = {"sequences": b, "context_tokens": ctx, **step_provenance(built, dec, Batch.decode(b, ctx))}
    out["prefill"] = {"prompt_tokens": prompt, **step_provenance(built, pre, Batch.prefill(1, prompt))}
    return out


def mean_running(steps: Any) -> float | None:
    """Mean sequences of a DES run's decode steps (``phase == "decode"``; None without any)."""
    if steps is None or len(steps) == 0 or not {"phase", "decode_seqs"} <= set(steps.columns):
        return None
    seqs = np.asarray(steps.loc[steps["phase"] == "decode", "decode_seqs"], float)
    seqs = seqs[seqs > 0]
    return float(seqs.mean()) if seqs.size else None
