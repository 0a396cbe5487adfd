"""How far off moesim's predictions of a kind have been where they were checked against real runs.

Each figure comes from a section of ``benchmarks/RESULTS.md`` (measured there, with the command that reproduces it)
and is copied here so that a summary can say it next to the prediction (``checked_against`` in ``moesim simulate``
and ``moesim train`` summaries); ``tests/test_fidelity.py`` checks that the two agree. A prediction of a kind no real
run has checked says so rather than borrowing another kind's figure.

Kinds:

- serving, dense models (no expert parallelism to speak of): 38 real vLLM v0.15.1 runs of dense models
  (``../shared/data/vllm-e2e-dense``), section 12, leave-model-out cross-validation of the analytical engine:
  median and P90 of |predicted / measured - 1| of mean E2E, TTFT and ITL, by cost model;
- serving, MoE models with expert parallelism: SGLang's published DeepSeek-V3 throughput on H100 (prefill EP32,
  decode EP72), section 28: the range of predicted / published tokens/s per node, by cost model;
- serving, MoE models without expert parallelism (tensor-parallel experts): 15 real vLLM v0.15.1 runs of
  Mixtral-8x7B and -8x22B at TP2-TP8 on H100 that no part of moesim was fitted on, section 29, analytical engine:
  median and P90 of |predicted / measured - 1| of mean E2E, TTFT and ITL, by cost model (calibrated: the H100
  tables with AIConfigurator's vLLM kernels);
- training: fifteen published MoE training runs with stated layouts, section 8: predicted / reported throughput,
  with the committed H100 kernel tables (calibrated).

And the GPU (``gpu`` in a serving check): the serving references are H100 runs but for section 12's A100 and L40S
runs; section 32 checks the A100 against the H100 under one engine (published vLLM runs of four models on both):
the predicted A100 / H100 ratio of median TPOT against the measured one. Another GPU is timed from its datasheet and
published kernel efficiencies (`model.achievable`) and no real run has checked it; the check says so.
"""

from __future__ import annotations

import math
from typing import Any

#: Section 12 (rerun 2026-12-08, the L40S's measured kernels): leave-model-out CV, analytical engine;
#: metric -> (median, P90) of |error|.
SERVING_DENSE: dict[str, dict[str, tuple[float, float]]] = {
    "achievable": {"e2e": (0.020, 0.071), "ttft": (0.022, 0.110), "itl": (0.025, 0.058)},
    "calibrated": {"e2e": (0.098, 0.205), "ttft": (0.031, 0.155), "itl": (0.083, 0.159)},
    "roofline": {"e2e": (0.277, 0.401), "ttft": (0.154, 0.407), "itl": (0.288, 0.430)},
}
#: Section 29's dense table (rerun 2026-12-08): section 12's 38 runs with the calibrated model given vLLM's own H100
#: GEMMs (our H100 tables calibrated with AIConfigurator's vLLM 0.19 H100 tables), analytical engine, shipped profile,
#: no fit; metric -> (median, P90) of |error| over the 38 runs and, signed median, over the 32 H100 runs alone.
SERVING_DENSE_ENGINE_KERNELS: dict[str, Any] = {
    "abs_error": {"e2e": (0.042, 0.223), "ttft": (0.035, 0.158), "itl": (0.027, 0.174)},
    "h100_signed": {"e2e": 0.026, "ttft": -0.018, "itl": 0.017},
}
#: Section 28 (2026-12-06): predicted / published tokens/s per node, (lowest, highest) over its five cases.
SERVING_MOE_EP: dict[str, tuple[float, float]] = {"achievable": (1.16, 1.47), "roofline": (1.38, 2.12)}
#: Section 29 (rerun 2026-12-07 evening, the engine's custom all-reduce): 15 sustained real vLLM Mixtral runs,
#: analytical engine; metric -> (median, P90) of |error| ("calibrated": our H100 tables plus AIConfigurator's vLLM
#: kernels).
SERVING_MOE_TP: dict[str, dict[str, tuple[float, float]]] = {
    "achievable": {"e2e": (0.039, 0.079), "ttft": (0.127, 0.193), "itl": (0.049, 0.067)},
    "calibrated": {"e2e": (0.009, 0.024), "ttft": (0.081, 0.157), "itl": (0.011, 0.030)},
    "roofline": {"e2e": (0.224, 0.359), "ttft": (0.283, 0.417), "itl": (0.233, 0.353)},
}
#: Section 32 (rerun 2026-12-07 late evening, the A100's measured kernels): A100 / H100 ratio of median TPOT, seven
#: model and tensor-parallel pairs under one engine,
#: by cost model: the measured and the predicted ratios' (lowest, highest), and the largest |predicted / measured - 1|
#: of a pair's ratios.
GPU_PAIRS: dict[str, dict[str, Any]] = {
    "achievable": {"pairs": 7, "measured": (1.49, 1.72), "predicted": (1.52, 1.92), "worst": 0.1698},
    "roofline": {"pairs": 7, "measured": (1.49, 1.72), "predicted": (1.55, 1.68), "worst": 0.066},
}
#: Section 33 (2026-12-07 late evening, the A100's measured kernels): the A100 runs of section 12 load stage by load
#: stage, by cost model: the median
#: signed ITL error at the first (light) and last (busy) stage, and the median of predicted / measured ITL rise per
#: request decoding at once.
A100_STAGES: dict[str, dict[str, float]] = {
    "achievable": {"first": 0.049, "last": -0.031, "rise": 0.75},
    "calibrated": {"first": 0.183, "last": 0.134, "rise": 0.82},
    "roofline": {"first": -0.371, "last": -0.456, "rise": 0.38},
}
#: Section 33 (2026-12-08, the running set's prefixes shared): the two L40S runs of section 12, by cost model: the
#: median signed ITL error at the first (light) load stage (the busy stage of one of them ran at its KV cache's
#: edge, the section's note).
L40S_FIRST_STAGE: dict[str, float] = {"achievable": 0.033, "calibrated": 0.213, "roofline": -0.254}
#: The GPU the serving references ran on (`serving_check`).
REFERENCE_GPU = "H100-SXM"
#: Section 8 (2026-12-06): predicted / reported throughput of fifteen runs with the calibrated H100 tables.
TRAINING: dict[str, Any] = {
    "lowest": 0.97,
    "median": 1.30,
    "highest": 1.96,
    "runs": 15,
    "within_15pct": 2,
    "pairs": "6/9",
    # predicted GPU work per decoder layer and micro-batch (ms) of the median run, and the median ratio of the runs
    # below it and of the rest: the less work per layer, the more optimistic (a per-layer cost not modelled)
    "work_median_ms": 17.14,
    "ratio_below": 1.54,
    "ratio_above": 1.21,
}


def cost_model_class(name: str | None) -> str:
    """``roofline``, ``achievable`` or ``calibrated`` for a summary's ``cost_model`` name (a calibration's name
    starts with ``calibrated``; None: the roofline)."""
    if not name or name == "roofline":
        return "roofline"
    if name.startswith("achievable"):
        return "achievable"
    return "calibrated"


def gpu_check(gpu: str | None, cost_model: str | None) -> dict[str, Any] | None:
    """What real runs say about serving predictions on ``gpu`` (a moesim GPU key; None: nothing to say) beside the
    kind's reference runs: ``gpu``, ``section`` (None: no real run on it) and ``note``."""
    if gpu is None or gpu == REFERENCE_GPU:
        return None
    cls = cost_model_class(cost_model)
    if gpu == "A100-SXM-80GB" and cls in GPU_PAIRS:
        g = GPU_PAIRS[cls]
        (m0, m1), (p0, p1) = g["measured"], g["predicted"]
        return {
            "gpu": gpu,
            "section": 32,
            "note": f"A100 / H100 of median TPOT under one engine (published vLLM runs, {g['pairs']} pairs): "
            f"predicted {p0:.2f}-{p1:.2f}, measured {m0:.2f}-{m1:.2f}, each pair within {g['worst']:.1%} (the dense "
            "pairs high: those vLLM 0.5.4 runs' H100 came out slower than predicted, their A100 within 10%); section "
            f"12's A100 runs (vLLM 0.15, an A100 2.0-2.2x slower than its H100), {_a100_stages(cls)}",
        }
    if gpu in ("A100-SXM-80GB", "L40S"):
        note = f"a few of section 12's dense runs were on {gpu}; the rest of the references ran on H100"
        if gpu == "A100-SXM-80GB":
            note += f"; {_a100_stages(cls)}"
        elif cls in L40S_FIRST_STAGE:
            measured = "" if cls == "roofline" else "; its achievable kernel figures measured (section 34)"
            note += f"{measured}; ITL {L40S_FIRST_STAGE[cls]:+.0%} at the light load stage of its two runs (section 33)"
        return {"gpu": gpu, "section": 12, "note": note}
    return {
        "gpu": gpu,
        "section": None,
        "note": f"no real run on {gpu}: its kernels are timed from its datasheet and published efficiencies "
        "(model.achievable) or tables transferred from another GPU, unchecked",
    }


def _a100_stages(cls: str) -> str:
    """What section 33 says of the A100 runs load stage by load stage, for cost model class ``cls``."""
    st = A100_STAGES[cls]
    return (
        f"load stage by load stage (section 33): ITL {st['first']:+.0%} at the light stage, {st['last']:+.0%} at the "
        f"busy one, each request decoding at once costing {st['rise']:.2f} of what it measured"
    )


def serving_check(is_moe: bool, ep: int, cost_model: str | None, gpu: str | None = None) -> dict[str, Any]:
    """What real runs say about a serving prediction of this kind: ``reference`` (the runs), ``section`` (of
    benchmarks/RESULTS.md), ``cost_model`` (the class the figure is for) and the figure (``abs_error``: metric ->
    [median, P90] of |predicted / measured - 1|; or ``predicted_over_measured``: [lowest, highest]), with ``note``
    saying which way it errs; ``reference`` None where no real run of this kind was checked. With ``gpu`` (a moesim
    GPU key) other than the references' H100, ``gpu_check`` says what runs on that GPU checked (`gpu_check`)."""
    out = _serving_check(is_moe, ep, cost_model)
    extra = gpu_check(gpu, cost_model)
    if extra is not None:
        out["gpu_check"] = extra
    return out


def _dense_note(cls: str) -> str:
    """Which way dense predictions of cost model class ``cls`` err (section 12)."""
    if cls == "roofline":
        return "a lower bound, too fast"
    if cls == "achievable":
        return "median / P90 of |predicted/measured - 1|"
    e = SERVING_DENSE_ENGINE_KERNELS
    a, h = e["abs_error"], e["h100_signed"]
    return (
        "median / P90 of |predicted/measured - 1| for our H100 tables alone (profiling/data/h100-sxm/full-bf16), "
        "too slow on the engine's GEMMs; calibrated with vLLM's own H100 GEMMs too (AIConfigurator's tables, "
        f"`moesim import`) E2E {a['e2e'][0]:.0%} / {a['e2e'][1]:.0%}, ITL {a['itl'][0]:.0%} / {a['itl'][1]:.0%} "
        f"(the H100 runs {h['e2e']:+.1%} / {h['itl']:+.1%} signed; the P90 from the A100 and L40S runs' transferred "
        "tables; section 29)"
    )


def _serving_check(is_moe: bool, ep: int, cost_model: str | None) -> dict[str, Any]:
    cls = cost_model_class(cost_model)
    if not is_moe:
        return {
            "reference": "38 real vLLM v0.15.1 runs of dense models (vllm-e2e-dense), each model left out of the fit",
            "section": 12,
            "cost_model": cls,
            "abs_error": {k: list(v) for k, v in SERVING_DENSE[cls].items()},
            "note": _dense_note(cls),
        }
    if ep > 1 and cls in SERVING_MOE_EP:
        lo, hi = SERVING_MOE_EP[cls]
        return {
            "reference": "SGLang's published DeepSeek-V3 runs on H100 (prefill EP32, decode EP72)",
            "section": 28,
            "cost_model": cls,
            "predicted_over_measured": [lo, hi],
            "note": f"optimistic: throughput predicted {lo:.2f}-{hi:.2f}x the published",
        }
    if ep == 1:
        note = {
            "roofline": "a lower bound, too fast",
            "achievable": "median / P90 of |predicted/measured - 1|, optimistic on every run",
            "calibrated": "median / P90 of |predicted/measured - 1| with vLLM's own fused-MoE kernel measured "
            "(AIConfigurator); with our Triton kernel's table instead +18% E2E",
        }[cls]
        return {
            "reference": "15 real vLLM v0.15.1 runs of Mixtral-8x7B / 8x22B at TP2-TP8 on H100, none used to fit",
            "section": 29,
            "cost_model": cls,
            "abs_error": {k: list(v) for k, v in SERVING_MOE_TP[cls].items()},
            "note": note,
        }
    why = "no real MoE run checked with this cost model"
    return {"reference": None, "section": None, "cost_model": cls, "note": why}


def training_check(cost_model: str | None, work_ms: float | None = None) -> dict[str, Any]:
    """What the published training runs (section 8) say about a training prediction with this cost model.

    ``work_ms``: the prediction's GPU work per decoder layer and micro-batch on a pipeline rank (ms: the step over
    micro-batches x layers per rank); the published runs with less of it than the median run came out more
    optimistic, and the note says which group this prediction falls in (``work_group``: ``below`` / ``above``)."""
    cls = cost_model_class(cost_model)
    if cls != "calibrated":
        return {"reference": None, "section": 8, "cost_model": cls, "note": "checked with the H100 kernel tables only"}
    t = TRAINING
    out: dict[str, Any] = {
        "reference": f"{t['runs']} published MoE training runs with stated layouts (DeepSeek-V3, Mixtral, Qwen3, "
        "gpt-oss)",
        "section": 8,
        "cost_model": cls,
        "predicted_over_measured": [t["lowest"], t["highest"]],
        "median": t["median"],
        "note": f"mostly optimistic: median {t['median']:.2f}x the reported throughput, {t['within_15pct']} of "
        f"{t['runs']} within 15%, {t['pairs']} same-model pairs ranked as reported",
    }
    if work_ms is not None and math.isfinite(work_ms):
        below = work_ms < t["work_median_ms"]
        side, ratio = ("below", t["ratio_below"]) if below else ("above", t["ratio_above"])
        out["work_ms_per_layer_microbatch"] = float(work_ms)
        out["work_group"] = side
        out["note"] += (
            f"; with {work_ms:.1f} ms of GPU work per layer and micro-batch, {'under' if below else 'at least'} the "
            f"median run's {t['work_median_ms']:g} ms, like runs that came out median {ratio:.2f}x"
        )
    return out


def check_line(check: dict[str, Any]) -> str:
    """One line for a report: ``checked against ...`` or ``not checked against real runs ...``, and what runs on the
    prediction's GPU say (``gpu_check``)."""
    line = _check_line(check)
    g = check.get("gpu_check")
    if g:
        where = f"benchmarks/RESULTS.md section {g['section']}" if g.get("section") else "benchmarks/RESULTS.md"
        line += f". On {g['gpu']}: {g['note']} ({where})"
    return line


def _check_line(check: dict[str, Any]) -> str:
    if check.get("reference") is None:
        return f"Not checked against real runs: {check['note']} (benchmarks/RESULTS.md)"
    if "abs_error" in check:
        e = check["abs_error"]
        figs = ", ".join(f"{k.upper()} {e[k][0]:.0%} / {e[k][1]:.0%}" for k in ("e2e", "ttft", "itl"))
        return (
            f"Checked against {check['reference']} ({check['cost_model']}): median / P90 error {figs}; "
            f"{check['note']} (benchmarks/RESULTS.md section {check['section']})"
        )
    return f"Checked against {check['reference']}: {check['note']} (benchmarks/RESULTS.md section {check['section']})"
