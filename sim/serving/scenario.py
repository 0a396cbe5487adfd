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
               input: {dist: lognormal, mean: 512, cv: 1.0}, output: {dist: lognormal, mean: 256, cv: 1.0},
               shared_prefix: {tokens: 100, groups: 10}}   # optional: 10 system prompts of 100 tokens
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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from moesim.model import ClusterSpec, CostAssumptions, CostModel, Layout, ModelSpec, Precision
from moesim.model.errors import MoesimError
from moesim.model.hf_config import load_model
from moesim.model.inputs import StrictInput
from moesim.model.limits import (
    MAX_BATCH,
    MAX_CAPACITY_FACTOR,
    MAX_GPUS,
    MAX_GPUS_PER_NODE,
    MAX_SEED,
    MAX_STEP_TOKENS,
    MAX_TOKENS,
)
from moesim.sim.common import (  # noqa: F401  (re-exported: serving scenarios' public names)
    check_power_exponent,
    max_power_exponent,
    one_line,
    power_law_loads,
    read_array,
    read_yaml,
    scenario_cluster,
    scenario_loads,
    validate_mapping,
)
from moesim.sim.serving.workload import Workload, parse_workload

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


class _Strict(StrictInput):
    """Unknown keys, NaN and infinity are refused everywhere in a scenario,
    and so is true/false for a number (`model.inputs.StrictInput`)."""


class LayoutSpec(_Strict):
    """A parallel layout (see `model.layout.Layout`).

    Attributes:
        tp: tensor-parallel size of attention and dense layers, GPUs.
        ep: expert-parallel size of the MoE layers, GPUs; it divides the routed experts, or the slots of the
            scenario's placement when that has redundant experts (256 + 32 = 288 slots: EP 72 or 144).
        dp_attn: data-parallel attention groups (DP attention, as SGLang's ``--enable-dp-attention``), GPUs.
        pp: pipeline stages.
    """

    tp: int = Field(1, ge=1, le=MAX_GPUS)
    ep: int = Field(1, ge=1, le=MAX_GPUS)
    dp_attn: int = Field(1, ge=1, le=MAX_GPUS)
    pp: int = Field(1, ge=1, le=MAX_GPUS)
    #: who runs the EP dispatch/combine all-to-alls: ``deepep`` (DeepEP normal for prefill and mixed steps,
    #: low-latency for decode, as SGLang and vLLM run EP) or ``nccl`` (`model.a2a`)
    a2a_backend: Literal["deepep", "nccl"] = "deepep"

    def build(self) -> Layout:
        return Layout(tp=self.tp, ep=self.ep, dp_attn=self.dp_attn, pp=self.pp, a2a_backend=self.a2a_backend)


class EngineSpec(_Strict):
    """A replica's scheduler, modelled on vLLM V1 and SGLang.

    Attributes:
        max_batch: most sequences in one step.
        max_tokens: token budget per step (prefill chunks plus decode tokens).
        chunked_prefill: split prompts across steps to fill the budget; off:
            a prompt is scheduled whole or waits.
        block_size: KV-cache tokens per block (paged attention).
        mem_fraction: usable share of device memory (weights + KV + activations).
        kind: the engine whose host costs and kernels are modelled (`sim.serving.host`): ``vllm``, ``sglang``,
            or ``ideal`` (kernels and collectives only, no host time: the optimistic bound).
        version: the engine version of the profile (None: the newest profile of ``kind`` shipped).
        profile: path of an engine profile YAML (e.g. written by ``moesim fit-engine``); replaces the shipped one.
        cuda_graphs: decode steps replay captured CUDA graphs (vLLM without ``--enforce-eager``, SGLang without
            ``--disable-cuda-graph``); None: the profile's default.
        attention_backend: the attention kernel the engine runs (e.g. ``flash_attn``, ``flashinfer``,
            ``triton``); None: the profile's default.
        moe_kernel: the fused-MoE kernel the engine runs (e.g. ``triton``, ``deepgemm``); None: the profile's.
        prefix_caching: reuse the KV cache of shared prompt prefixes (vLLM automatic prefix caching, SGLang's
            radix cache); None: the profile's default.
        prefix_hit_rate: declared share of prompt tokens found in the prefix cache (0..1); None: from the
            requests' shared prefixes when the workload gives them, else 0.
        stream: the client streams tokens (what "first token" means for TTFT; see docs).
        host: overrides of the profile's host-cost parameters by name (seconds, see the profile).
        replica_choice: which replica of an expert a token goes to, when the placement has redundant experts
            (`model.routing.slot_routes`): ``random`` (vLLM: a replica drawn per token; SGLang before
            sgl-project/sglang#9849, in expectation), ``nearest`` (SGLang since #9849, merged 2025-08-31: the
            rank's own GPU's replica, else its node's first, else a fixed fair pick) or ``auto``: ``nearest`` for
            ``kind: sglang`` (the shipped profile is 0.5.6), else ``random``.
    """

    max_batch: int = Field(256, ge=1, le=MAX_BATCH)
    max_tokens: int = Field(8192, ge=1, le=MAX_STEP_TOKENS)
    chunked_prefill: bool = True
    block_size: int = Field(16, ge=1, le=MAX_TOKENS)
    mem_fraction: float = Field(0.9, gt=0, le=1)
    kind: Literal["vllm", "sglang", "ideal"] = "vllm"
    version: str | None = Field(None, min_length=1, max_length=64)
    profile: str | None = Field(None, min_length=1, max_length=4096)
    cuda_graphs: bool | None = None
    attention_backend: str | None = Field(None, min_length=1, max_length=64)
    moe_kernel: str | None = Field(None, min_length=1, max_length=64)
    prefix_caching: bool | None = None
    prefix_hit_rate: float | None = Field(None, ge=0, le=1)
    stream: bool = True
    host: dict[str, float] | None = None
    replica_choice: Literal["auto", "random", "nearest"] = "auto"

    @field_validator("host")
    @classmethod
    def _host(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        from moesim.sim.serving.host import PARAMS

        for name, value in (v or {}).items():
            if name not in PARAMS:
                raise ValueError(f"unknown host parameter {name!r}; use one of {', '.join(PARAMS)}")
            if value < 0:
                raise ValueError(f"host parameter {name} = {value!r} is negative; give seconds >= 0")
        return v


class PoolSpec(_Strict):
    """One pool of a disaggregated deployment.

    Attributes:
        replicas: engines in the pool.
        layout: each replica's parallel layout.
        engine: each replica's scheduler settings (None: the scenario's ``engine``).
    """

    replicas: int = Field(1, ge=1, le=MAX_GPUS)
    layout: LayoutSpec = LayoutSpec()
    engine: EngineSpec | None = None


class DisaggSpec(_Strict):
    """Prefill/decode disaggregation: two pools and the link that carries the KV cache.

    Attributes:
        prefill: the pool that runs prompts and sends their KV cache.
        decode: the pool that receives the KV cache and generates the output tokens.
        kv_link: the link the KV cache crosses: ``intra`` (NVLink), ``inter`` (the NIC), ``auto`` (intra when a
            prefill and a decode replica share a node, else inter).
    """

    prefill: PoolSpec
    decode: PoolSpec
    kv_link: Literal["auto", "intra", "inter"] = "auto"


class RoutingSpec(_Strict):
    """How tokens pick experts, and what the MoE layer does with them.

    Attributes:
        distribution: ``uniform``; ``power`` (expert popularity falls as
            rank^-exponent, a fresh random order per layer); ``file`` (loads
            [moe_layers, experts] or [experts] from ``file``: .npy, .csv or .json).
        exponent: the power law's exponent (``distribution: power``).
        file: the loads file for ``distribution: file``, relative to the scenario.
        capacity_factor: None: dropless; else each expert takes at most
            ceil(factor x tokens x top_k / experts) pairs per step and drops the rest.
        overlap: ``none``; ``two_batch``: two micro-batches whose operations the engine
            interleaves at yield points, each dispatch and combine hidden only behind
            the other micro-batch's stages between its issue and its wait (DeepSeek's
            two-batch overlap as SGLang runs it; vLLM's dual-batch overlap order for
            ``engine.kind: vllm``).
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
    """Service-level objectives (None: not set, always met).

    Attributes:
        ttft_s: time to first token a request must meet, s.
        tpot_s: time per output token (after the first) a request must meet, s.
    """

    ttft_s: float | None = Field(None, gt=0)
    tpot_s: float | None = Field(None, gt=0)


class CostSpec(_Strict):
    """How GPU time is priced (`model.cap.CostAssumptions`).

    Attributes:
        pricing: ``cloud`` ($/GPU-hour), ``capex`` (purchase price amortised plus energy) or ``auto`` (cloud
            where the GPU has a cloud price).
        years: amortisation period of the purchase price (capex), years.
        utilisation: share of wall time the GPUs do this work (capex only).
    """

    pricing: Literal["auto", "cloud", "capex"] = "auto"
    years: float = Field(5.0, gt=0, le=100)
    utilisation: float = Field(1.0, gt=0, le=1)


class Scenario(_Strict):
    """A serving scenario (see the module docstring).

    Attributes:
        name: the scenario's name in reports.
        model: a model preset (``moesim models``) or the path of a Hugging Face config.json.
        cluster: a cluster preset (``moesim clusters``); or give ``gpu`` (with ``nodes`` / ``gpus_per_node``).
        gpu: a GPU preset (``moesim gpus``) when no ``cluster`` is named.
        nodes: nodes of the cluster (with ``gpu``, or to resize ``cluster``).
        gpus_per_node: GPUs per node (with ``gpu``, or to resize ``cluster``).
        hardware: a YAML file of extra GPU and cluster definitions, relative to the scenario (`model.hardware`).
        precision: dtypes by key: ``weights`` (bf16, fp8, fp8_block, int4, ...), ``kv_cache``, ``fp8_scaling``
            (`model.dtypes.Precision`); without ``weights``: the checkpoint's own (its config's
            ``quantization_config``: fp8_block for DeepSeek-V3, fp4 for gpt-oss, else bf16); KV cache bf16.
        layout: the parallel layout of one replica.
        replicas: engine replicas, or ``auto``: the cluster's GPUs over the layout's.
        router: how requests are spread over replicas.
        engine: each replica's scheduler and engine profile.
        disaggregation: prefill and decode pools in place of ``layout`` / ``replicas`` (None: no disaggregation).
        workload: the requests: arrivals, counts, lengths or a trace (`sim.serving.workload.Workload`).
        routing: how tokens pick experts.
        placement: an expert placement file (SGLang's ``--init-expert-location`` JSON, or a .npy
            [moe_layers, slots] of expert ids; ``moesim place --redundant N`` writes slots for redundant experts),
            relative to the scenario; None: experts in blocks.
        offload: routed experts in host memory.
        slo: the service-level objectives goodput and SLO attainment count against.
        cost: how GPU time is priced.
        cost_model: a calibration file from ``moesim calibrate``, relative to the scenario; ``achievable``: the
            roofline plus published kernel efficiencies (`model.achievable`); None or ``roofline``: the roofline
            (every time a lower bound, not a prediction).
        seed: random seed of the workload and the routing.
    """

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


def parse_scenario(data: Any, where: str = "scenario") -> Scenario:
    """Validate a scenario mapping; `MoesimError` with one line naming the bad key."""
    sc = validate_mapping(Scenario, data, where, "examples/*.yaml", "sim/serving/scenario.py")
    parse_workload(sc.workload, f"{where}: workload")
    return sc


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

    @property
    def expert_slots(self) -> int | None:
        """Routed-expert slots per MoE layer of the placement (more than the experts with redundant ones), for
        `model.memory.estimate_memory`; None without a placement (one slot per expert)."""
        return None if self.phys_to_log is None else int(np.shape(self.phys_to_log)[-1])


def _placement(sc: Scenario, model: ModelSpec, base: Path) -> np.ndarray | None:
    if not sc.placement or model.moe is None:
        return None
    arr = read_array(base / sc.placement, "placement")
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
    return arr  # its slots split over the expert-parallel GPUs: `Layout.check`


def _check_prefix_cache(pool: Pool, base: Path) -> None:
    """A declared prefix hit rate needs prefix caching on (`sim.serving.replica`)."""
    if pool.engine.prefix_hit_rate is None or pool.role == "decode":
        return
    from moesim.sim.serving.host import engine_profile

    if not engine_profile(pool.engine, base).prefix_caching:
        raise MoesimError(
            f"engine.prefix_hit_rate: {pool.engine.prefix_hit_rate:g} is declared, but prefix caching is off "
            f"for the {pool.engine.kind} engine",
            "set engine.prefix_caching: true, or remove prefix_hit_rate",
        )


def _pool_cluster(cluster: ClusterSpec, layout: Layout) -> ClusterSpec:
    """The cluster one replica sees: as many nodes as its GPUs span."""
    nodes = max(1, -(-layout.num_gpus // cluster.gpus_per_node))
    return cluster.model_copy(update={"nodes": nodes})


def _engine_layout(lay: Layout, engine: EngineSpec) -> Layout:
    """``lay`` with the engine's rule for which replica of an expert a token goes to (`EngineSpec.replica_choice`;
    ``auto``: SGLang's ranks pick their nearest replica, sgl-project/sglang#9849 and #10874; vLLM draws one per
    token)."""
    rule = engine.replica_choice
    if rule == "auto":
        rule = "nearest" if engine.kind == "sglang" else "random"
    return replace(lay, replica_choice=rule)


def build(sc: Scenario, base_dir: str | Path = ".", cost_model: CostModel | None = None) -> Built:
    """Build a scenario's objects; `MoesimError` on anything that does not fit together."""
    base = Path(base_dir)
    model = load_model(sc.model if not sc.model.endswith(".json") else str(base / sc.model))
    # unset weights: the checkpoint's own format (its quantization_config, `ModelSpec.checkpoint_weights`)
    own = model.checkpoint_weights
    own = "fp8" if own == "fp8_block" and "fp8_scaling" in sc.precision else own  # an explicit scaling wins
    precision = Precision(**({"weights": own} | dict(sc.precision)))
    workload = parse_workload(sc.workload, "workload")
    phys = _placement(sc, model, base)  # its slots decide which expert-parallel sizes fit (`Layout.check`)
    slots = None if phys is None else int(phys.shape[-1])
    if sc.disaggregation:
        d = sc.disaggregation
        specs = [("prefill", d.prefill), ("decode", d.decode)]
        gpus_needed = sum(p.replicas * p.layout.build().num_gpus for _, p in specs)
        cluster = scenario_cluster(sc, base, gpus_needed)
        pools, first = [], 0
        for role, p in specs:
            lay = _engine_layout(p.layout.build(), p.engine or sc.engine)
            lay.check(model, slots)
            pools.append(Pool(role, p.replicas, lay, p.engine or sc.engine, _pool_cluster(cluster, lay), first))
            first += p.replicas * lay.num_gpus
    else:
        lay = _engine_layout(sc.layout.build(), sc.engine)
        lay.check(model, slots)
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
    from moesim.profiling.costmodel import resolve_kernel

    for pool in pools:  # the kernels the engine names, checked here; unset: the engine profile's (sim.serving.kernels)
        resolve_kernel("moe", pool.engine.moe_kernel, "engine.moe_kernel")
        resolve_kernel("attention", pool.engine.attention_backend, "engine.attention_backend")
    from moesim.sim.serving.host import engine_profile

    for pool in pools:  # the engine profile (kind, version, file, host overrides), checked before any work
        engine_profile(pool.engine, base)
    for pool in pools:
        _check_prefix_cache(pool, base)
    if cost_model is None and sc.cost_model and sc.cost_model.strip().lower() != "roofline":
        from moesim.model.achievable import named_cost_model
        from moesim.profiling.calibrate import CalibratedCostModel

        cost_model = named_cost_model(sc.cost_model) or CalibratedCostModel.from_file(base / sc.cost_model)
    return Built(
        scenario=sc,
        model=model,
        cluster=cluster,
        precision=precision,
        pools=tuple(pools),
        workload=workload,
        loads=scenario_loads(sc, model, base),
        phys_to_log=phys,
        cost_model=cost_model,
        assumptions=CostAssumptions(pricing=sc.cost.pricing, years=sc.cost.years, utilisation=sc.cost.utilisation),
        base_dir=base,
    )
