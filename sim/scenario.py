"""Serving scenarios: the YAML a user writes, validated, and the objects built from it.

A scenario names a model, a cluster, a parallel layout, an engine, a workload,
the routing behaviour and the service-level objectives. Every section is
optional except ``model``; unknown keys are errors. Example::

    name: mixtral-ep8
    model: mixtral-8x7b            # preset or a config.json path
    cluster: dgx-h100              # preset; or gpu: H100-SXM with nodes / gpus_per_node
    layout: {tp: 1, dp_attn: 8, ep: 8, pp: 1}
    replicas: auto                 # cluster GPUs / layout GPUs
    router: least_outstanding      # or round_robin
    precision: {weights: bf16, kv_cache: bf16}
    engine: {max_batch: 256, max_tokens: 8192, chunked_prefill: true, block_size: 16, mem_fraction: 0.9}
    workload: {arrival: poisson, rate: 20, requests: 10000,
               input: {dist: lognormal, mean: 512, cv: 1.0}, output: {dist: lognormal, mean: 256, cv: 1.0}}
    routing: {distribution: power, exponent: 1.2, capacity_factor: null, overlap: none}
    placement: null                # an SGLang --init-expert-location JSON or a .npy [moe_layers, slots]
    offload: {enabled: false}
    slo: {ttft_s: 2.0, tpot_s: 0.1}
    seed: 0

Prefill/decode disaggregation replaces ``layout``/``replicas`` by two pools::

    disaggregation:
      prefill: {replicas: 1, layout: {tp: 8}}
      decode: {replicas: 1, layout: {dp_attn: 8, ep: 8}}
      kv_link: auto                # intra (NVLink) when a prefill and a decode replica share a node, else inter (NIC)
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moesim.model import ClusterSpec, CostAssumptions, CostModel, Layout, ModelSpec, Precision, inputs
from moesim.model.errors import MoesimError
from moesim.model.hardware import get_cluster, get_gpu, make_cluster
from moesim.model.hf_config import load_model
from moesim.model.limits import (
    MAX_BATCH,
    MAX_CAPACITY_FACTOR,
    MAX_GPUS,
    MAX_GPUS_PER_NODE,
    MAX_SEED,
    MAX_STEP_TOKENS,
    MAX_TOKENS,
)
from moesim.sim.workload import Workload, parse_workload

#: Host-to-GPU bandwidth per GPU per direction when offloading, bytes/s: the PCIe
#: spec figure of the GPU's host link (PCIe 4.0 x16: 32 GB/s; 5.0 x16: 64 GB/s).
PCIE_BW = {
    "A100-SXM-80GB": 32e9,
    "L40S": 32e9,
    "RTX-4090": 32e9,
    "H100-SXM": 64e9,
    "H100-PCIe": 64e9,
    "H800": 64e9,
    "H200-SXM": 64e9,
    "B200": 64e9,
    "MI300X": 64e9,
}


class _Strict(BaseModel):
    """Unknown keys, NaN and infinity are refused everywhere in a scenario."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LayoutSpec(_Strict):
    """A parallel layout (see `model.layout.Layout`)."""

    tp: int = Field(1, ge=1, le=MAX_GPUS)
    ep: int = Field(1, ge=1, le=MAX_GPUS)
    dp_attn: int = Field(1, ge=1, le=MAX_GPUS)
    pp: int = Field(1, ge=1, le=MAX_GPUS)

    def build(self) -> Layout:
        return Layout(tp=self.tp, ep=self.ep, dp_attn=self.dp_attn, pp=self.pp)


class EngineSpec(_Strict):
    """A replica's scheduler, modelled on vLLM V1 and SGLang.

    Attributes:
        max_batch: most sequences in one step.
        max_tokens: token budget per step (prefill chunks plus decode tokens).
        chunked_prefill: split prompts across steps to fill the budget; off:
            a prompt is scheduled whole or waits.
        block_size: KV-cache tokens per block (paged attention).
        mem_fraction: usable share of device memory (weights + KV + activations).
    """

    max_batch: int = Field(256, ge=1, le=MAX_BATCH)
    max_tokens: int = Field(8192, ge=1, le=MAX_STEP_TOKENS)
    chunked_prefill: bool = True
    block_size: int = Field(16, ge=1, le=MAX_TOKENS)
    mem_fraction: float = Field(0.9, gt=0, le=1)


class PoolSpec(_Strict):
    """One pool of a disaggregated deployment."""

    replicas: int = Field(1, ge=1, le=MAX_GPUS)
    layout: LayoutSpec = LayoutSpec()
    engine: EngineSpec | None = None


class DisaggSpec(_Strict):
    """Prefill/decode disaggregation: two pools and the link that carries the KV cache."""

    prefill: PoolSpec
    decode: PoolSpec
    kv_link: Literal["auto", "intra", "inter"] = "auto"


class RoutingSpec(_Strict):
    """How tokens pick experts, and what the MoE layer does with them.

    Attributes:
        distribution: ``uniform``; ``power`` (expert popularity falls as
            rank^-exponent, a fresh random order per layer); ``file`` (loads
            [moe_layers, experts] or [experts] from ``file``: .npy, .csv or .json).
        capacity_factor: None: dropless; else each expert takes at most
            ceil(factor x tokens x top_k / experts) pairs per step and drops the rest.
        overlap: ``none``; ``two_batch``: two micro-batches, one's all-to-all
            hidden under the other's computation (DeepSeek's two-batch overlap).
    """

    distribution: Literal["uniform", "power", "file"] = "uniform"
    exponent: float = Field(1.0, ge=0)
    file: str | None = None
    capacity_factor: float | None = Field(None, gt=0, le=MAX_CAPACITY_FACTOR)
    overlap: Literal["none", "two_batch"] = "none"


class OffloadSpec(_Strict):
    """Experts in host memory, fetched over PCIe on a miss into an LRU cache on the GPU.

    Attributes:
        enabled: offload routed experts that do not fit.
        cache_experts: expert slots per GPU kept resident (None: as many as fit
            after reserving ``kv_fraction`` of usable memory for the KV cache).
        kv_fraction: share of usable memory kept for the KV cache when sizing the cache.
        host_bw: host-to-GPU bytes/s per GPU (None: the GPU's PCIe spec figure, `PCIE_BW`).
    """

    enabled: bool = False
    cache_experts: int | None = Field(None, ge=1, le=MAX_GPUS)
    kv_fraction: float = Field(0.2, gt=0, lt=1)
    host_bw: float | None = Field(None, gt=0)


class SloSpec(_Strict):
    """Service-level objectives (None: not set, always met)."""

    ttft_s: float | None = Field(None, gt=0)
    tpot_s: float | None = Field(None, gt=0)


class CostSpec(_Strict):
    """How GPU time is priced (`model.cap.CostAssumptions`)."""

    pricing: Literal["auto", "cloud", "capex"] = "auto"
    years: float = Field(5.0, gt=0, le=100)
    utilisation: float = Field(1.0, gt=0, le=1)


class Scenario(_Strict):
    """A serving scenario (see the module docstring)."""

    name: str = "scenario"
    model: str
    cluster: str | None = None
    gpu: str | None = None
    nodes: int | None = Field(None, ge=1, le=MAX_GPUS)
    gpus_per_node: int | None = Field(None, ge=1, le=MAX_GPUS_PER_NODE)
    hardware: str | None = None
    precision: dict[str, str] = Field(default_factory=dict)
    layout: LayoutSpec = LayoutSpec()
    replicas: int | Literal["auto"] = "auto"
    router: Literal["round_robin", "least_outstanding"] = "least_outstanding"
    engine: EngineSpec = EngineSpec()
    disaggregation: DisaggSpec | None = None
    workload: dict[str, Any] = Field(default_factory=dict)
    routing: RoutingSpec = RoutingSpec()
    placement: str | None = None
    offload: OffloadSpec = OffloadSpec()
    slo: SloSpec = SloSpec()
    cost: CostSpec = CostSpec()
    cost_model: str | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= MAX_GPUS:
            raise ValueError(f"must be 'auto' or a whole number from 1 to {MAX_GPUS:,}")
        return v


#: pydantic's bound errors: (context key, operator) for a message like "must be <= 10,000,000".
_BOUND_OPS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _one_line(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    what = err["msg"]
    if err["type"] == "extra_forbidden":
        what = "unknown key"
    bound = _BOUND_OPS.get(err["type"])
    if bound is not None:
        limit = (err.get("ctx") or {}).get(bound[0])
        if isinstance(limit, (int, float)):
            what = f"must be {bound[1]} {f'{limit:,}' if isinstance(limit, int) else f'{limit:g}'}"
    elif err["type"] == "finite_number":
        what = "must be a finite number"
    got = err.get("input")
    shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f", got {got!r}"
    return f"{where}: {loc}: {what}{shown}"


_M = TypeVar("_M", bound=BaseModel)


def validate_mapping(cls: type[_M], data: Any, where: str, examples: str, source: str) -> _M:
    """``data`` validated as the pydantic model ``cls``; `MoesimError` with one line naming the bad key.

    ``examples`` and ``source`` name the example files and the module the hint points to.
    """
    inputs.expect_mapping(data, where, f"see {examples}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise MoesimError(_one_line(exc, where), f"fix that key (see {examples} and {source})") from None


def parse_scenario(data: Any, where: str = "scenario") -> Scenario:
    """Validate a scenario mapping; `MoesimError` with one line naming the bad key."""
    sc = validate_mapping(Scenario, data, where, "examples/*.yaml", "sim/scenario.py")
    parse_workload(sc.workload, f"{where}: workload")
    return sc


def read_yaml(path: str | Path, what: str = "a scenario YAML") -> Any:
    """The parsed YAML of ``path``; `MoesimError` naming the file when it is missing, a folder, empty, not UTF-8
    text, not valid YAML or nested too deeply (`model.inputs.read_yaml`)."""
    return inputs.read_yaml(path, what, f"give the path of {what} (see examples/)")


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file."""
    return parse_scenario(read_yaml(path), str(Path(path)))


@dataclass(frozen=True)
class Pool:
    """Replicas of one engine configuration.

    Attributes:
        role: ``mixed`` (prefill and decode), ``prefill`` or ``decode``.
        replicas: engines in the pool.
        layout: each replica's layout.
        engine: each replica's scheduler settings.
        cluster: the cluster one replica sees (its nodes and links).
        first_gpu: global index of the pool's first GPU.
    """

    role: str
    replicas: int
    layout: Layout
    engine: EngineSpec
    cluster: ClusterSpec
    first_gpu: int

    @property
    def gpus(self) -> int:
        return self.replicas * self.layout.num_gpus


@dataclass(frozen=True)
class Built:
    """A scenario's objects, ready to simulate.

    Attributes:
        scenario: the validated input.
        model, cluster, precision: what runs on what.
        pools: one ``mixed`` pool, or a ``prefill`` and a ``decode`` pool.
        workload: the workload spec.
        loads: expert load shares [moe_layers, experts] (None: uniform).
        phys_to_log: placement [moe_layers, slots] (None: round-robin blocks).
        cost_model: None: the roofline.
        assumptions: pricing.
        base_dir: where relative paths in the scenario resolve.
    """

    scenario: Scenario
    model: ModelSpec
    cluster: ClusterSpec
    precision: Precision
    pools: tuple[Pool, ...]
    workload: Workload
    loads: np.ndarray | None
    phys_to_log: np.ndarray | None
    cost_model: CostModel | None
    assumptions: CostAssumptions
    base_dir: Path

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools)


def power_law_loads(num_layers: int, num_experts: int, exponent: float, seed: int) -> np.ndarray:
    """Load shares [num_layers, num_experts]: rank^-exponent popularity, a random order per layer."""
    rng = np.random.default_rng(seed)
    base = np.arange(1, num_experts + 1, dtype=float) ** -exponent
    base /= base.sum()
    return np.stack([base[rng.permutation(num_experts)] for _ in range(num_layers)])


def max_power_exponent(num_experts: int, top_k: int) -> float:
    """The largest power-law exponent whose busiest expert a top-k router can serve: rank^-exponent shares,
    the first at most 1/top_k (a token picks an expert at most once). Rounded down to 3 decimals.

    The first share is 1 / H, H = sum over ranks r of r^-exponent, which falls from ``num_experts`` (exponent 0)
    towards 1, so the answer solves H = top_k (bisection; infinite when top_k is 1).
    """
    if top_k <= 1:
        return math.inf
    if top_k >= num_experts:
        return 0.0
    ranks = np.arange(1, num_experts + 1, dtype=float)

    def harmonic(a: float) -> float:
        return float(np.sum(ranks**-a))

    lo, hi = 0.0, 1.0
    while harmonic(hi) >= top_k:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if harmonic(mid) >= top_k else (lo, mid)
    return math.floor(lo * 1000) / 1000


def check_power_exponent(exponent: float, num_experts: int, top_k: int, key: str = "routing.exponent") -> None:
    """`MoesimError` naming ``key`` and the largest exponent that works when ``exponent`` is too steep for top-k."""
    top = max_power_exponent(num_experts, top_k)
    if exponent <= top:
        return
    share = 1.0 / float(np.sum(np.arange(1, num_experts + 1, dtype=float) ** -exponent))
    raise MoesimError(
        f"{key}={exponent:g} is too steep for top-{top_k} routing over {num_experts} experts: the busiest expert "
        f"would get {share:.0%} of the (token, expert) pairs, but a token picks it at most once (at most 1/{top_k})",
        f"use {key} <= {top:g} for this model",
    )


#: Keys of a JSON routing or placement file that hold its array, in the order they are tried.
_ARRAY_KEYS = ("physical_to_logical_map", "loads", "logical_count")


def _read_array(path: Path, what: str) -> np.ndarray:
    """The float array in a ``.npy``, ``.csv`` or ``.json`` file (a list, or an object with one of `_ARRAY_KEYS`).

    Raises:
        MoesimError: a missing, empty, unreadable, binary or malformed file, naming it.
    """
    fix = "give a .npy, .csv or .json file (see sim/scenario.py: RoutingSpec)"
    if path.suffix == ".npy":
        data = inputs.read_bytes(path, f"a {what} file", fix)
        inputs.check_magic(data, ".npy", f"{what} file {path}", fix)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False).astype(float)
        except (ValueError, OSError, EOFError, TypeError) as exc:
            detail = " ".join(str(exc).split())[:100]
            raise MoesimError(f"{what} file {path} is not a readable .npy array ({detail})", fix) from None
    if path.suffix == ".csv":
        text = inputs.read_text(path, f"a {what} file", fix)
        try:
            return np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2)
        except ValueError as exc:
            detail = " ".join(str(exc).split())[:100]
            raise MoesimError(f"{what} file {path} is not a CSV of numbers ({detail})", fix) from None
    data = inputs.read_json(path, f"a {what} file", fix)
    if isinstance(data, dict):
        key = next((k for k in _ARRAY_KEYS if k in data), None)
        if key is None:
            raise MoesimError(f"{what} file {path} has none of the keys {', '.join(_ARRAY_KEYS)}", fix)
        data = data[key]
    try:
        arr = np.asarray(data, dtype=float)
    except (ValueError, TypeError):
        raise MoesimError(f"{what} file {path}: not a rectangular array of numbers", fix) from None
    if arr.ndim == 0:
        raise MoesimError(f"{what} file {path} holds one number, not an array", fix)
    return arr


def scenario_loads(sc: Any, model: ModelSpec, base: Path) -> np.ndarray | None:
    """Expert load shares [moe_layers, experts] from ``sc.routing`` (``distribution``, ``exponent``,
    ``file``) and ``sc.seed``, or None for uniform routing; serving and training scenarios share it."""
    moe = model.moe
    r = sc.routing
    if moe is None or not model.is_moe or r.distribution == "uniform":
        return None
    n_moe = model.num_moe_layers
    if r.distribution == "power":
        check_power_exponent(r.exponent, moe.num_experts, moe.top_k)
        return power_law_loads(n_moe, moe.num_experts, r.exponent, sc.seed)
    if not r.file:
        raise MoesimError("routing.distribution is 'file' but routing.file is not set", "give routing.file")
    arr = _read_array(base / r.file, "routing")
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (n_moe, arr.size)).copy()
    if arr.ndim == 3:  # SGLang logical_count [passes, layers, experts]
        arr = arr.sum(axis=0)
    if arr.ndim == 2 and arr.shape[0] == model.num_layers and n_moe != model.num_layers:
        arr = arr[np.asarray(model.moe_layers, bool)]
    if arr.shape != (n_moe, moe.num_experts):
        raise MoesimError(
            f"routing file {r.file}: expected loads [{n_moe} MoE layers, {moe.num_experts} experts], "
            f"got shape {list(arr.shape)}",
            "give one row per MoE layer (or one row for all) with one column per expert",
        )
    from moesim.placement.stats import validate_counts

    validate_counts(arr, f"routing file {r.file}")
    return arr / arr.sum(axis=1, keepdims=True)


def _placement(sc: Scenario, model: ModelSpec, base: Path, ep_sizes: list[int]) -> np.ndarray | None:
    if not sc.placement or model.moe is None:
        return None
    arr = _read_array(base / sc.placement, "placement")
    n_moe, n_exp = model.num_moe_layers, model.moe.num_experts
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (n_moe, arr.size)).copy()
    if arr.ndim == 2 and arr.shape[0] == model.num_layers and n_moe != model.num_layers:
        arr = arr[np.asarray(model.moe_layers, bool)]  # SGLang: one row per hidden layer, dense rows filled
    fix = "export a plan with 'moesim place' or give SGLang's physical_to_logical_map"
    if arr.ndim != 2 or arr.shape[0] != n_moe:
        raise MoesimError(
            f"placement {sc.placement}: expected physical-to-logical expert ids [{n_moe} MoE layers, slots], "
            f"got shape {list(arr.shape)}",
            fix,
        )
    bad = ~np.isfinite(arr) | (arr < 0) | (arr >= n_exp) | (arr % 1 != 0)
    if bad.any():
        layer, slot = (int(i[0]) for i in np.nonzero(bad))
        raise MoesimError(
            f"placement {sc.placement}: layer {layer} slot {slot} holds {arr[layer, slot]:g}, not an expert id "
            f"in 0..{n_exp - 1}",
            fix,
        )
    arr = arr.astype(np.int64)
    for layer in arr:
        if len(set(layer.tolist())) != n_exp:
            raise MoesimError(f"placement {sc.placement}: some expert has no slot", "place every expert at least once")
    for ep in ep_sizes:
        if arr.shape[1] % ep:
            raise MoesimError(
                f"placement {sc.placement}: {arr.shape[1]} slots do not split over ep={ep} GPUs",
                "give every GPU the same number of slots",
            )
    return arr


def scenario_cluster(sc: Any, base: Path, gpus_needed: int) -> ClusterSpec:
    """The cluster ``sc`` names (``cluster``, or ``gpu`` with ``nodes`` / ``gpus_per_node``; ``hardware``)."""
    hw = str(base / sc.hardware) if sc.hardware else None
    if sc.cluster:
        c = get_cluster(sc.cluster, hw)
        if sc.nodes or sc.gpus_per_node:
            c = make_cluster(c.gpu, nodes=sc.nodes or c.nodes, gpus_per_node=sc.gpus_per_node or c.gpus_per_node)
        return c
    if not sc.gpu:
        raise MoesimError("the scenario names neither a cluster nor a gpu", "add cluster: dgx-h100 or gpu: H100-SXM")
    return make_cluster(get_gpu(sc.gpu, hw), num_gpus=gpus_needed, nodes=sc.nodes, gpus_per_node=sc.gpus_per_node)


def _pool_cluster(cluster: ClusterSpec, layout: Layout) -> ClusterSpec:
    """The cluster one replica sees: as many nodes as its GPUs span."""
    nodes = max(1, -(-layout.num_gpus // cluster.gpus_per_node))
    return cluster.model_copy(update={"nodes": nodes})


def build(sc: Scenario, base_dir: str | Path = ".", cost_model: CostModel | None = None) -> Built:
    """Build a scenario's objects; `MoesimError` on anything that does not fit together."""
    base = Path(base_dir)
    model = load_model(sc.model if not sc.model.endswith(".json") else str(base / sc.model))
    precision = Precision(**sc.precision) if sc.precision else Precision()
    workload = parse_workload(sc.workload, "workload")
    if sc.disaggregation:
        d = sc.disaggregation
        specs = [("prefill", d.prefill), ("decode", d.decode)]
        gpus_needed = sum(p.replicas * p.layout.build().num_gpus for _, p in specs)
        cluster = scenario_cluster(sc, base, gpus_needed)
        pools, first = [], 0
        for role, p in specs:
            lay = p.layout.build()
            lay.check(model)
            pools.append(Pool(role, p.replicas, lay, p.engine or sc.engine, _pool_cluster(cluster, lay), first))
            first += p.replicas * lay.num_gpus
    else:
        lay = sc.layout.build()
        lay.check(model)
        cluster = scenario_cluster(sc, base, lay.num_gpus if sc.replicas == "auto" else lay.num_gpus * int(sc.replicas))
        if sc.replicas == "auto":
            if cluster.num_gpus % lay.num_gpus:
                raise MoesimError(
                    f"layout {lay.label()} ({lay.num_gpus} GPUs) does not divide the {cluster.num_gpus} GPUs "
                    f"of {cluster.name}",
                    "pick a layout whose GPU count divides the cluster, or set replicas",
                )
            replicas = cluster.num_gpus // lay.num_gpus
        else:
            replicas = int(sc.replicas)
        pools = [Pool("mixed", replicas, lay, sc.engine, _pool_cluster(cluster, lay), 0)]
        gpus_needed = replicas * lay.num_gpus
    if gpus_needed > cluster.num_gpus:
        raise MoesimError(
            f"the scenario needs {gpus_needed} GPUs but {cluster.name} has {cluster.num_gpus}",
            "add nodes, or use fewer replicas or a smaller layout",
        )
    if cost_model is None and sc.cost_model:
        from moesim.profiling.calibrate import CalibratedCostModel

        cost_model = CalibratedCostModel.from_file(base / sc.cost_model)
    return Built(
        scenario=sc,
        model=model,
        cluster=cluster,
        precision=precision,
        pools=tuple(pools),
        workload=workload,
        loads=scenario_loads(sc, model, base),
        phys_to_log=_placement(sc, model, base, [p.layout.ep for p in pools]),
        cost_model=cost_model,
        assumptions=CostAssumptions(pricing=sc.cost.pricing, years=sc.cost.years, utilisation=sc.cost.utilisation),
        base_dir=base,
    )
