"""Sweep files: axes over serving configurations, the constraints that prune them, and the points they expand to.

A sweep names a base serving scenario (any keys of `sim.serving.scenario.Scenario`) and
axes; the points are the product of the axes, each a scenario. Example::

    name: mixtral-gpu-choice
    base:                              # a scenario mapping, or the path of a scenario YAML
      model: mixtral-8x7b
      workload: {arrival: poisson, requests: 2000, input: {dist: lognormal, mean: 512}, output: {mean: 256}}
      slo: {ttft_s: 1.0, tpot_s: 0.05}
      offload: {enabled: true}         # offload experts only where they do not fit (L40S)
    axes:
      gpu: [A100-SXM-80GB, H100-SXM, H200-SXM, L40S]
      gpus: [2, 4, 8]                  # GPUs of the deployment (whole nodes beyond one node)
      layout: [{tp: 1, dp_attn: gpus, ep: gpus}, {tp: 2}, {tp: 8}]   # 'gpus': the point's GPU count
      precision: [bf16, fp8, int4]     # weight dtype, or {weights: fp8, kv_cache: fp8}
      max_batch: [64, 256]
      workload: {chat: {input: {mean: 512}}, rag: {input: {mean: 4096}}}   # variants merged into base.workload
      rate: {start: 1, stop: 64, num: 7, scale: log}                     # req/s; or a list
      routing_skew: [0, 1.2]           # 0: uniform routing; else power-law popularity exponent
      placement: [default, eplb]       # default (blocks), round-robin, eplb, ilp; or {method: eplb, redundant: 8}
    constraints: {memory_fits: true, layout_divides: true, max_gpus: null}
    engine: analytical                 # or des
    metrics: [ttft_p99_s, tpot_p99_s, throughput_tok_s, usd_per_mtok]   # extra summary keys to keep
    capacity: {percentile: 99, ttft_s: 1.0, tpot_s: 0.05}              # per point: the highest rate meeting both
    target: {throughput_tok_s: 20000}  # the cheapest configuration delivering this under the SLOs

Each point has a ``point_id``: a hash of everything that determines its
result (its scenario, engine, capacity search, placement and seed), so a
resumed sweep recognises the points already done whatever their order.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError

from moesim.model import Layout, Precision
from moesim.model.errors import MoesimError
from moesim.model.hardware import get_gpu
from moesim.model.hf_config import load_model
from moesim.model.inputs import StrictInput
from moesim.model.limits import (
    MAX_BATCH,
    MAX_GPUS,
    MAX_RATE,
    MAX_REQUESTS,
    MAX_SECONDS,
    MAX_SEED,
    MAX_STEP_TOKENS,
    MAX_SWEEP_POINTS,
)
from moesim.model.memory import estimate_memory
from moesim.sim.common import max_power_exponent, one_line, read_yaml, validate_mapping
from moesim.sim.serving.scenario import parse_scenario

#: Axis names in expansion order (the slowest-varying first).
AXES = (
    "model",
    "gpu",
    "gpus",
    "layout",
    "precision",
    "max_batch",
    "max_tokens",
    "offload",
    "routing_skew",
    "placement",
    "workload",
    "rate",
)
PLACEMENT_METHODS = ("default", "round-robin", "eplb", "ilp")
#: Summary keys every sweep keeps (``metrics`` adds to them).
DEFAULT_METRICS = (
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p90_s",
    "tpot_p99_s",
    "e2e_p99_s",
    "throughput_req_s",
    "throughput_tok_s",
    "goodput_req_s",
    "slo_attainment",
    "mean_batch",
    "s_mbu",
    "s_mfu",
    "usd_per_mtok",
    "energy_j_per_token",
    "overloaded",
)


class _Strict(StrictInput):
    """Unknown keys, NaN and infinity are refused everywhere in the file,
    and so is true/false for a number (`model.inputs.StrictInput`)."""


class RateRange(_Strict):
    """``num`` rates from ``start`` to ``stop`` req/s, evenly on a ``log`` or ``linear`` scale."""

    start: float = Field(gt=0, le=MAX_RATE)
    stop: float = Field(gt=0, le=MAX_RATE)
    num: int = Field(ge=1, le=10_000)
    scale: Literal["log", "linear"] = "log"

    def values(self) -> list[float]:
        if self.num == 1:
            return [self.start]
        f = np.geomspace if self.scale == "log" else np.linspace
        return [float(round(x, 9)) for x in f(self.start, self.stop, self.num)]


class Constraints(_Strict):
    """What prunes a point before it runs.

    Attributes:
        memory_fits: the weights on the fullest GPU plus one KV block fit in
            ``engine.mem_fraction`` of its memory (with offload enabled: the
            non-expert weights do).
        layout_divides: the layout divides the model (heads, experts, widths)
            and the point's GPUs (a whole number of replicas, whole nodes).
        max_gpus: drop points with more GPUs.
    """

    memory_fits: bool = True
    layout_divides: bool = True
    max_gpus: int | None = Field(None, ge=1, le=MAX_GPUS)


class CapacitySpec(_Strict):
    """Capacity search: per point, the highest request rate whose TTFT and TPOT percentiles meet the SLOs.

    Attributes:
        percentile: 50, 90 or 99.
        ttft_s, tpot_s: the SLOs, s (None: the base scenario's ``slo``).
        min_rate, max_rate: the search range, req/s.
        tolerance: stop when the bracket's high/low ratio is at most 1 + tolerance.
        duration_s: simulated seconds of arrivals per discrete-event run, at least: a run at rate r replays
            r x max(duration_s, the probe horizon) requests (within ``requests`` .. ``max_requests``); the
            horizon is what an overload needs to show (`sweep_eval.probe_horizon`: the running set's fill plus
            2 x the TTFT SLO / tolerance).
        requests, max_requests: fewest and most requests per discrete-event run.
    """

    percentile: Literal[50, 90, 99] = 99
    ttft_s: float | None = Field(None, gt=0)
    tpot_s: float | None = Field(None, gt=0)
    min_rate: float = Field(0.01, gt=0, le=MAX_RATE)
    max_rate: float = Field(10_000.0, gt=0, le=MAX_RATE)
    tolerance: float = Field(0.05, gt=0, lt=1)
    duration_s: float = Field(60.0, gt=0, le=MAX_SECONDS)
    requests: int = Field(100, ge=10, le=MAX_REQUESTS)
    max_requests: int = Field(20_000, ge=10, le=MAX_REQUESTS)


class TargetSpec(_Strict):
    """A throughput to reach: output tokens/s under the SLOs.

    Attributes:
        throughput_tok_s: output tokens/s the deployment must deliver while meeting the SLOs.
    """

    throughput_tok_s: float = Field(gt=0, le=1e15)


class PlacementOptions(_Strict):
    """How the ``placement`` axis's ILP runs: wall seconds per plan and its MIP gap.

    Attributes:
        time_limit: the ILP solver's wall-clock limit per plan, s.
        mip_gap: the relative MIP gap at which the solver stops.
    """

    time_limit: float = Field(10.0, gt=0, le=MAX_SECONDS)
    mip_gap: float = Field(1e-3, ge=0, le=1)


class SweepSpec(_Strict):
    """A validated sweep file (see the module docstring).

    Attributes:
        name: the sweep's name in reports.
        description: free text shown in reports.
        base: the base serving scenario: a mapping of scenario keys (``moesim schema serving``), or the path of a
            scenario YAML relative to the sweep file.
        axes: axis name -> the values it takes (`AXES`; a list, or for ``rate`` a {start, stop, num, scale}
            range in req/s, for ``workload`` a mapping of named variants); the points are their product.
        constraints: what prunes a point before it runs.
        engine: ``analytical`` (closed-form steady state) or ``des`` (discrete-event simulation) per point.
        metrics: summary keys kept per point beyond `DEFAULT_METRICS`.
        capacity: per point, search the highest request rate meeting the SLOs (None: run each rate given).
        target: the cheapest configuration delivering this throughput under the SLOs (None: none picked).
        placement_options: how the ``placement`` axis's ILP runs.
        accuracy_benchmark: the benchmark whose accuracy the reports join per model and precision (None: none).
        seed: random seed of every point.
    """

    name: str = "sweep"
    description: str = ""
    base: dict[str, Any] | str
    axes: dict[str, Any] = Field(default_factory=dict)
    constraints: Constraints = Constraints()
    engine: Literal["analytical", "des"] = "analytical"
    metrics: list[str] = Field(default_factory=list)
    capacity: CapacitySpec | None = None
    target: TargetSpec | None = None
    placement_options: PlacementOptions = PlacementOptions()
    accuracy_benchmark: str | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)


@dataclass
class Point:
    """One configuration of a sweep.

    Attributes:
        point_id: 16 hex digits identifying the point's result.
        config_key: the same without the rate (points sharing it reuse one built model).
        scenario: the scenario mapping it runs.
        values: its axis values as flat columns (model, gpu, gpus, tp, ep, ..., rate).
        placement: {"method", "redundant"}.
    """

    point_id: str
    config_key: str
    scenario: dict[str, Any]
    values: dict[str, Any]
    placement: dict[str, Any] = field(default_factory=dict)


@dataclass
class Expansion:
    """The points of a sweep and what the constraints pruned (reason -> count)."""

    points: list[Point]
    pruned: dict[str, int]
    total: int


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, mappings recursively (new objects; inputs untouched)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def read_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML; a relative ``base`` path resolves against the sweep's folder."""
    p = Path(path)
    data = read_yaml(p, "a sweep YAML")
    if isinstance(data, dict) and isinstance(data.get("base"), str):
        data = {**data, "base": str(p.parent / data["base"])}
    return parse_sweep(data, str(p))


def parse_sweep(data: Any, where: str = "sweep") -> SweepSpec:
    """Validate a sweep mapping; `MoesimError` with one line naming the bad key."""
    spec = validate_mapping(SweepSpec, data, where, "examples/sweep-*.yaml", "sim/sweeps/sweep_spec.py")
    unknown = [a for a in spec.axes if a not in AXES]
    if unknown:
        raise MoesimError(f"{where}: axes: unknown axis '{unknown[0]}'", f"use any of {', '.join(AXES)}")
    if spec.capacity is not None and "rate" in spec.axes:
        raise MoesimError(
            f"{where}: a capacity search finds the rate itself, so the 'rate' axis cannot be swept with it",
            "drop axes.rate or the capacity section",
        )
    return spec


def base_scenario(spec: SweepSpec) -> dict[str, Any]:
    """The base scenario mapping (read from its file when ``base`` is a path)."""
    if isinstance(spec.base, str):
        data = read_yaml(spec.base, "a scenario YAML (the sweep's base)")
        if not isinstance(data, dict):
            raise MoesimError(f"{spec.base}: expected a scenario mapping", "see examples/*.yaml")
        return data
    return dict(spec.base)


def _axis_values(name: str, raw: Any) -> list[tuple[str, Any]]:
    """(column label, value) pairs of one axis; `MoesimError` on an empty or malformed axis."""
    if name == "rate" and isinstance(raw, dict):
        try:
            raw = RateRange.model_validate(raw).values()
        except ValidationError as exc:
            raise MoesimError(one_line(exc, "axes.rate"), "give start, stop (req/s > 0), num and scale") from None
    if name == "workload" and isinstance(raw, dict):
        items = list(raw.items())
        if not items:
            raise MoesimError("axis 'workload' is empty", "give at least one named workload variant or drop the axis")
        for k, v in items:
            if not isinstance(v, dict):
                raise MoesimError(
                    f"axes.workload.{k}: expected a mapping of workload keys", "see sim/serving/workload.py"
                )
        return [(str(k), v) for k, v in items]
    if name == "layout":
        raw = _layouts(raw)
    if not isinstance(raw, list):
        raw = [raw]
    if not raw:
        raise MoesimError(f"axis '{name}' is empty", f"give at least one value for {name} or drop the axis")
    out = []
    for v in raw:
        if name == "workload":
            if not isinstance(v, dict):
                raise MoesimError("axes.workload: expected mappings of workload keys", "see sim/serving/workload.py")
            out.append((str(v.get("name", f"w{len(out)}")), {k: x for k, x in v.items() if k != "name"}))
        elif name in ("gpus", "max_batch", "max_tokens"):
            top = {"gpus": MAX_GPUS, "max_batch": MAX_BATCH, "max_tokens": MAX_STEP_TOKENS}[name]
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
                raise MoesimError(
                    f"axes.{name}: {v!r} is not a whole number from 1 to {top:,}",
                    f"give {name} as integers from 1 to {top:,}",
                )
            out.append((str(v), v))
        elif name in ("rate", "routing_skew"):
            bad = not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
            if bad or v < 0 or (name == "rate" and (v == 0 or v > MAX_RATE)):
                what = (
                    f"rates must be > 0 and <= {MAX_RATE:g} req/s" if name == "rate" else "the skew is an exponent >= 0"
                )
                raise MoesimError(f"axes.{name}: {v!r} is not allowed: {what}", f"fix the {name} values")
            out.append((str(v), float(v)))
        elif name == "offload":
            if not isinstance(v, bool):
                raise MoesimError(f"axes.offload: {v!r} is not true or false", "give offload: [false, true]")
            out.append((str(v), v))
        else:
            label = json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)
            out.append((label, _placement(v) if name == "placement" else v))
    return out


def _layouts(raw: Any) -> list[Any]:
    """A list of layout mappings; a mapping of lists expands to their product."""
    if isinstance(raw, dict) and any(isinstance(v, list) for v in raw.values()):
        keys = list(raw)
        lists = [raw[k] if isinstance(raw[k], list) else [raw[k]] for k in keys]
        if any(not v for v in lists):
            raise MoesimError("axis 'layout' is empty", "give at least one value per layout key")
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]
    return raw if isinstance(raw, list) else [raw]


def _resolve_layout(raw: Any, gpus: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise MoesimError(f"axes.layout: {raw!r} is not a mapping", "give layouts like {tp: 1, dp_attn: 8, ep: 8}")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "a2a_backend":  # who runs the EP all-to-alls (model.layout.Layout checks the name), not a size
            out[k] = v
            continue
        if k not in ("tp", "ep", "dp_attn", "pp"):
            raise MoesimError(f"axes.layout: unknown key '{k}'", "use tp, ep, dp_attn, pp and a2a_backend")
        if v == "gpus":
            v = gpus
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise MoesimError(f"axes.layout.{k}: {v!r} is not a positive integer or 'gpus'", "fix the layout")
        out[k] = v
    return {"tp": 1, "ep": 1, "dp_attn": 1, "pp": 1} | out


def _placement(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"method": raw}
    if not isinstance(raw, dict) or raw.get("method") not in PLACEMENT_METHODS or set(raw) - {"method", "redundant"}:
        raise MoesimError(
            f"axes.placement: {raw!r} is not a placement method",
            f"use {', '.join(PLACEMENT_METHODS)}, or {{method: eplb, redundant: 8}}",
        )
    red = raw.get("redundant", 0)
    if not isinstance(red, int) or isinstance(red, bool) or not 0 <= red <= 16_384:
        raise MoesimError(f"axes.placement: redundant {red!r} is not an integer >= 0", "give redundant: 0 or more")
    return {"method": raw["method"], "redundant": red}


@lru_cache(maxsize=4096)
def _fits(
    model: str,
    tp: int,
    ep: int,
    dp: int,
    pp: int,
    gpu: str,
    weights: str,
    kv: str,
    frac: float,
    off: bool,
    redundant: int = 0,
):
    """None when the weights fit (``redundant`` expert slots' weights included); else the reason."""
    m = load_model(model)
    lay = Layout(tp=tp, ep=ep, dp_attn=dp, pp=pp)
    slots = m.moe.num_experts + redundant if m.moe is not None and redundant else None
    mem = estimate_memory(m, lay, get_gpu(gpu), Precision(weights, kv), mem_fraction=frac, expert_slots=slots)
    need = mem.weight_bytes + mem.kv_bytes_per_token * 16
    if off and m.moe is not None:
        need -= mem.weights_by_component.get("routed_experts", 0.0)
    return None if need < mem.usable_bytes else "memory_fits"


@lru_cache(maxsize=4096)
def _divides(model: str, tp: int, ep: int, dp: int, pp: int) -> str | None:
    try:
        Layout(tp=tp, ep=ep, dp_attn=dp, pp=pp).check(load_model(model))
    except MoesimError:
        return "layout_divides"
    return None


def _check_names(axis: str, values: list[Any]) -> None:
    """Every value of a ``model`` or ``gpu`` axis (or ``base.model``/``base.gpu``) names a preset or a file."""
    where = axis if axis.startswith("base.") else f"axis '{axis}'"
    for v in values:
        if not isinstance(v, str):
            raise MoesimError(f"{where}: {v!r} is not a name", f"give a {axis.split('.')[-1]} preset name or path")
        try:
            load_model(v) if axis.endswith("model") else get_gpu(v)
        except MoesimError as exc:
            raise MoesimError(f"{where}: {exc.message}", exc.hint) from None


#: The largest routing skew per (experts, top-k), computed once per sweep process.
_max_skew = lru_cache(maxsize=None)(max_power_exponent)


def _check_base(base: dict[str, Any], axes: dict[str, list[tuple[str, Any]]], capacity: bool) -> None:
    """Validate the base scenario once, with the first value of the axes that replace its keys.

    Its layout is left out (a sweep layout may say ``gpus``, resolved per point) and so is its model or GPU
    when an axis gives them; a base model or GPU that no axis replaces must exist.
    """
    probe = {k: v for k, v in copy.deepcopy(base).items() if k != "layout"}
    for name in ("model", "gpu"):
        if name in axes:
            probe[name] = axes[name][0][1]
            if name == "gpu":
                probe.pop("cluster", None)
        elif name in probe:
            _check_names(f"base.{name}", [probe[name]])
    probe.setdefault("model", "placeholder")
    if isinstance(probe.get("workload", {}), dict):
        wl = dict(probe.get("workload") or {})
        if "workload" in axes:
            wl = _merge(wl, axes["workload"][0][1])
        if "rate" in axes:
            wl["rate"] = axes["rate"][0][1]
        elif capacity:
            wl["rate"] = 1.0  # the capacity search's placeholder, as in `_point`
        probe["workload"] = wl
    parse_scenario(probe, "the sweep's base")


def expand(spec: SweepSpec) -> Expansion:
    """Every point of ``spec`` that passes its constraints.

    Raises:
        MoesimError: an empty or malformed axis, an unknown model or GPU, a
            base scenario that does not validate, or constraints that prune
            every point.
    """
    base = base_scenario(spec)
    axes = {name: _axis_values(name, spec.axes[name]) for name in AXES if name in spec.axes}
    for name in ("model", "gpu"):
        if name in axes:
            _check_names(name, [v for _, v in axes[name]])
    for _, p in axes.get("precision", []):
        try:
            Precision(**({"weights": p} if isinstance(p, str) else p))
        except (MoesimError, TypeError) as exc:
            what = exc.one_line() if isinstance(exc, MoesimError) else f"{p!r} has an unknown key"
            raise MoesimError(
                f"axis 'precision': {what}", "give a weight dtype or {weights: .., kv_cache: ..}"
            ) from None
    _check_base(base, axes, spec.capacity is not None)
    if "model" not in axes and not base.get("model"):
        raise MoesimError("the sweep names no model", "set base.model or axes.model")
    gpu0 = base.get("gpu")
    if "gpu" not in axes and not gpu0 and not base.get("cluster"):
        raise MoesimError("the sweep names no GPU", "set base.gpu (or base.cluster) or axes.gpu")
    rates = axes.pop("rate", None)
    names = list(axes)
    pruned: dict[str, int] = {}
    points: list[Point] = []
    total = 0
    seen: set[str] = set()
    eng = base.get("engine") or {}
    frac = float(eng.get("mem_fraction", 0.9))
    n_rates = len(rates) if rates else 1
    size = math.prod(len(axes[n]) for n in names) * n_rates
    if size > MAX_SWEEP_POINTS:
        raise MoesimError(
            f"the sweep's axes make {size:,} points, over the limit of {MAX_SWEEP_POINTS:,}",
            "sweep fewer values per axis, or split the sweep into several files",
        )
    for combo in itertools.product(*(axes[n] for n in names)):
        total += n_rates
        v = {n: val for n, (_, val) in zip(names, combo, strict=True)}
        labels = {n: lbl for n, (lbl, _) in zip(names, combo, strict=True)}
        reason, sc, values, placement = _point(spec, base, v, labels, frac)
        if reason:
            pruned[reason] = pruned.get(reason, 0) + n_rates
            continue
        ident = {"scenario": sc, "engine": spec.engine, "placement": placement, "seed": spec.seed}
        if spec.capacity is not None:
            ident["capacity"] = spec.capacity.model_dump()
        no_rate = copy.deepcopy(ident)
        no_rate["scenario"].get("workload", {}).pop("rate", None)
        key = _hash(no_rate)
        if key in seen:  # two axis values that make the same scenario (e.g. 'gpus' resolving alike)
            pruned["duplicate"] = pruned.get("duplicate", 0) + n_rates
            continue
        seen.add(key)
        for r in [r for _, r in rates] if rates else [None]:
            if r is None:
                sc_r, values_r = sc, values
            else:
                sc_r = {**sc, "workload": {**sc["workload"], "rate": r}}
                values_r = {**values, "rate": r}
            if r is None or not points or points[-1].config_key != key:  # one validation per configuration
                parse_scenario(sc_r, f"point {values['label']}")
            pid = _hash({**ident, "scenario": sc_r})
            points.append(Point(pid, key, sc_r, values_r, placement))
    if not points:
        why = ", ".join(f"{k} pruned {n}" for k, n in sorted(pruned.items()))
        raise MoesimError(
            f"the constraints prune all {total} points of the sweep ({why})",
            "relax constraints, add GPUs or memory, or choose layouts that divide the model and the GPUs"
            + (
                " (routing_skew_too_steep: lower routing_skew below the model's top-k limit)"
                if "routing_skew_too_steep" in pruned
                else ""
            ),
        )
    return Expansion(points, pruned, total)


def _point(
    spec: SweepSpec, base: dict[str, Any], v: dict[str, Any], labels: dict[str, str], frac: float
) -> tuple[str | None, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(prune reason or None, scenario mapping, flat column values, placement) of one combination."""
    c = spec.constraints
    sc = copy.deepcopy(base)
    model = v.get("model", base.get("model"))
    sc["model"] = model
    gpu = v.get("gpu", base.get("gpu"))
    if gpu is not None:
        sc["gpu"] = gpu
        sc.pop("cluster", None)
    gpn = int(base.get("gpus_per_node") or 8)
    gpus = v.get("gpus")
    if gpus is None:
        gpus = int(base.get("nodes") or 1) * gpn if gpu is not None else None
    lay_raw = v.get("layout", base.get("layout", {}))
    lay = _resolve_layout(lay_raw, gpus or 1)
    sc["layout"] = lay
    layout_gpus = lay["tp"] * lay["dp_attn"] * lay["pp"]
    if gpus is not None and gpu is not None:
        if c.max_gpus and gpus > c.max_gpus:
            return "max_gpus", sc, {}, {}
        if gpus > gpn and gpus % gpn:
            return "layout_divides", sc, {}, {}
        sc["nodes"], sc["gpus_per_node"] = (1, gpus) if gpus <= gpn else (gpus // gpn, gpn)
        sc["replicas"] = "auto"
    prec = v.get("precision", base.get("precision") or {})
    prec = {"weights": prec} if isinstance(prec, str) else dict(prec)
    sc["precision"] = prec
    engine = dict(base.get("engine") or {})
    for k in ("max_batch", "max_tokens"):
        if k in v:
            engine[k] = v[k]
    sc["engine"] = engine
    if "offload" in v:
        sc["offload"] = {**(base.get("offload") or {}), "enabled": v["offload"]}
    if "routing_skew" in v:
        s = v["routing_skew"]
        sc["routing"] = {**(base.get("routing") or {}), **({"distribution": "uniform"} if s == 0 else {})}
        if s:
            sc["routing"] |= {"distribution": "power", "exponent": s}
    wl = dict(base.get("workload") or {})
    if "workload" in v:
        wl = _merge(wl, v["workload"])
    if "rate" in v:
        wl["rate"] = v["rate"]
    elif spec.capacity is not None:
        wl["rate"] = 1.0  # a placeholder the capacity search replaces
    sc["workload"] = wl
    sc.setdefault("seed", spec.seed)
    skew = (
        (sc.get("routing") or {}).get("exponent", 0.0)
        if (sc.get("routing") or {}).get("distribution") == "power"
        else 0
    )
    if skew and isinstance(skew, (int, float)):
        moe = load_model(model).moe
        if moe is not None and skew > _max_skew(moe.num_experts, moe.top_k):
            return "routing_skew_too_steep", sc, {}, {}  # sim.serving.scenario.check_power_exponent says why
    placement = v.get("placement", {"method": "default", "redundant": 0})
    if placement["method"] != "default" and lay["ep"] == 1:
        return "placement_needs_ep", sc, {}, {}  # one GPU holds every expert: nothing to place
    # unset weights: the checkpoint's own (its quantization_config, `ModelSpec.checkpoint_weights`)
    own = load_model(model).checkpoint_weights if "weights" not in prec else "bf16"
    weights, kv = prec.get("weights", own), prec.get("kv_cache", "bf16")
    lay_t = (lay["tp"], lay["ep"], lay["dp_attn"], lay["pp"])
    if c.layout_divides:
        if gpus is not None and gpus % layout_gpus:
            return "layout_divides", sc, {}, {}
        if _divides(model, *lay_t):
            return "layout_divides", sc, {}, {}
        m = load_model(model)
        if m.moe is not None and (m.moe.num_experts + placement["redundant"]) % lay["ep"]:
            return "layout_divides", sc, {}, {}
    if c.memory_fits and gpu is not None:
        off = bool((sc.get("offload") or {}).get("enabled", False))
        try:
            fits = _fits(model, *lay_t, gpu, weights, kv, frac, off, placement["redundant"])
        except MoesimError:
            fits = "memory_fits"
        if fits:
            return fits, sc, {}, {}
    values = {
        "model": model,
        "gpu": gpu,
        "gpus": gpus,
        "nodes": sc.get("nodes"),
        "gpus_per_node": sc.get("gpus_per_node"),
        "tp": lay["tp"],
        "ep": lay["ep"],
        "dp_attn": lay["dp_attn"],
        "pp": lay["pp"],
        "layout": Layout(**lay).label(),
        "replicas": (gpus // layout_gpus) if gpus else None,
        "precision": weights,
        "kv_cache": kv,
        "max_batch": int(engine.get("max_batch", 256)),
        "max_tokens": int(engine.get("max_tokens", 8192)),
        "offload": bool((sc.get("offload") or {}).get("enabled", False)),
        "routing_skew": float(v.get("routing_skew", (base.get("routing") or {}).get("exponent", 0.0)))
        if (sc.get("routing") or {}).get("distribution") == "power"
        else 0.0,
        "placement": placement["method"] + (f"+{placement['redundant']}" if placement["redundant"] else ""),
        "workload": labels.get("workload", "base"),
        "rate": float(wl["rate"]) if wl.get("rate") and spec.capacity is None else math.nan,
        "engine": spec.engine,
    }
    values["label"] = (
        f"{gpu} x{gpus} {values['layout']} {weights} b{values['max_batch']}"
        + (f" {values['workload']}" if "workload" in v else "")
        + (f" skew{values['routing_skew']:g}" if "routing_skew" in v else "")
        + (f" {values['placement']}" if "placement" in v else "")
        + (" offload" if values["offload"] and "offload" in v else "")
        + (f" {model}" if "model" in v else "")
    )
    return None, sc, values, placement
