"""Training scenarios: the YAML a user writes for ``moesim train``, validated and built.

A training scenario names a model, a cluster, a parallel layout, the batch,
the dtypes, the optimizer, activation recomputation, the routing behaviour
and the overlap of communication with computation. Every section is
optional except ``model``, ``cluster`` (or ``gpu``) and ``batch``; unknown
keys are errors. Example::

    name: mixtral-8x7b-h100
    model: mixtral-8x7b
    gpu: H100-SXM                  # or cluster: dgx-h100-x4
    nodes: 8
    layout: {tp: 1, pp: 4, ep: 8, etp: 1, zero: 1, schedule: interleaved, virtual_stages: 8}
    batch: {global_batch: 256, micro_batch: 1, seq_len: 4096}
    precision: {gemm: bf16, grads: fp32, master: fp32, optimizer_states: fp32}
    recompute: none                # none | selective | full
    routing: {distribution: uniform, capacity_factor: null}
    overlap: none                  # none | chunk_pairs
    steps: 1

Layout (Megatron-Core's terms, "MoE parallel folding"): the ``tp x pp x dp``
GPUs (``dp`` = the rest) run attention and dense layers with tensor
parallelism ``tp`` and data parallelism ``dp``; MoE layers fold the same
GPUs of a pipeline stage into expert parallelism ``ep`` times expert tensor
parallelism ``etp`` times expert data parallelism ``edp = tp x dp / (ep x
etp)``. ``ep x etp`` must be a multiple of ``tp``: a group of ``ep x etp``
GPUs exchanges tokens in the all-to-all, and inside it ``ep x etp / tp``
data-parallel attention groups each process their own micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from moesim.model import ClusterSpec, CostAssumptions, CostModel, Layout, ModelSpec
from moesim.model.errors import LayoutError, MoesimError
from moesim.model.hf_config import load_model
from moesim.model.limits import (
    MAX_BATCH,
    MAX_CAPACITY_FACTOR,
    MAX_GPUS,
    MAX_GPUS_PER_NODE,
    MAX_LAYERS,
    MAX_MICROBATCHES,
    MAX_PIPELINE_TASKS,
    MAX_SEED,
    MAX_TOKENS,
)
from moesim.sim.common import power_law_loads, read_yaml, scenario_cluster, scenario_loads, validate_mapping

#: Pipeline schedules: GPipe (all forwards, then all backwards), 1F1B
#: (PipeDream-flush, Megatron's default), interleaved 1F1B over
#: ``virtual_stages`` model chunks per GPU (Megatron), DualPipe (DeepSeek-V3:
#: bidirectional, two chunks per GPU, zero-bubble weight-gradient splitting).
SCHEDULES = ("gpipe", "1f1b", "interleaved", "dualpipe")


class _Strict(BaseModel):
    """Unknown keys, NaN and infinity are refused everywhere in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TrainLayout(_Strict):
    """A training layout (see the module docstring).

    Attributes:
        tp: tensor-parallel size of attention, dense layers and the LM head.
        pp: pipeline stages (ranks of a pipeline).
        ep: expert-parallel size.
        etp: expert tensor-parallel size (None: ``tp`` without expert
            parallelism, else 1).
        dp: data-parallel size (None: every GPU left, cluster GPUs / (tp x pp)).
        zero: ZeRO stage: 0 (replicated), 1 (optimizer states and fp32 master
            weights sharded over data parallelism), 2 (+ gradients), 3 (+
            parameters, gathered layer by layer; FSDP).
        fsdp: PyTorch FSDP full sharding; the same as ``zero: 3``.
        sequence_parallel: with ``tp > 1``, norms and residuals split along
            the sequence (Megatron's sequence parallelism): activations / tp.
        schedule: one of `SCHEDULES`.
        virtual_stages: model chunks per GPU for ``interleaved``.
        overlap_grad_reduce: the data-parallel gradient reduction overlaps
            the last micro-batch's backward (Megatron's ``--overlap-grad-reduce``).
        overlap_param_gather: ZeRO's parameter all-gather after the optimizer
            overlaps the next step's first forwards (``--overlap-param-gather``).
    """

    tp: int = Field(1, ge=1, le=MAX_GPUS)
    pp: int = Field(1, ge=1, le=MAX_GPUS)
    ep: int = Field(1, ge=1, le=MAX_GPUS)
    etp: int | None = Field(None, ge=1, le=MAX_GPUS)
    dp: int | None = Field(None, ge=1, le=MAX_GPUS)
    zero: Literal[0, 1, 2, 3] = 1
    fsdp: bool = False
    sequence_parallel: bool = True
    schedule: str = "1f1b"
    virtual_stages: int = Field(1, ge=1, le=MAX_LAYERS)
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True


class TrainBatch(_Strict):
    """The batch of one optimizer step, in sequences of ``seq_len`` tokens."""

    global_batch: int = Field(ge=1, le=MAX_BATCH)
    micro_batch: int = Field(1, ge=1, le=MAX_BATCH)
    seq_len: int = Field(ge=1, le=MAX_TOKENS)


class TrainPrecision(_Strict):
    """Training dtypes.

    Attributes:
        gemm: the linear layers' GEMMs run in ``bf16`` or ``fp8`` (weights and
            activations cast per tile, as Transformer Engine and DeepSeek-V3 do).
        params: dtype of the model weights the forward reads (bf16).
        grads: dtype the gradients are accumulated and reduced in.
        master: dtype of the optimizer's master weights.
        optimizer_states: dtype of Adam's two moments (DeepSeek-V3 keeps bf16).
        dispatch: dtype of the tokens the forward all-to-all dispatches
            (DeepSeek-V3 quantises them to fp8; combines and backward stay bf16).
    """

    gemm: Literal["bf16", "fp8"] = "bf16"
    params: Literal["bf16", "fp32"] = "bf16"
    grads: Literal["fp32", "bf16"] = "fp32"
    master: Literal["fp32", "bf16", "none"] = "fp32"
    optimizer_states: Literal["fp32", "bf16"] = "fp32"
    dispatch: Literal["bf16", "fp8"] = "bf16"


class TrainRouting(_Strict):
    """How tokens pick experts during training.

    Attributes:
        distribution: ``uniform``; ``power`` (expert popularity falls as
            rank^-exponent, a fresh random order per layer); ``file`` (loads
            [moe_layers, experts] or [experts] from ``file``).
        exponent: the power law's exponent.
        max_violation: instead of ``exponent``, the balance level as MaxVio,
            the busiest expert's load over the mean minus 1 (the metric of
            Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing"): the
            power law is given the exponent that produces it.
        file: the loads file for ``distribution: file``.
        capacity_factor: None: dropless; else each expert takes at most
            ceil(factor x pairs / experts) pairs per micro-batch and drops the rest.
    """

    distribution: Literal["uniform", "power", "file"] = "uniform"
    exponent: float = Field(1.0, ge=0)
    max_violation: float | None = Field(None, ge=0)
    file: str | None = None
    capacity_factor: float | None = Field(None, gt=0, le=MAX_CAPACITY_FACTOR)


class TrainCost(_Strict):
    """How GPU time is priced (`model.cap.CostAssumptions`)."""

    pricing: Literal["auto", "cloud", "capex"] = "auto"
    years: float = Field(5.0, gt=0, le=100)
    utilisation: float = Field(1.0, gt=0, le=1)


class TrainScenario(_Strict):
    """A training scenario (see the module docstring).

    Attributes:
        recompute: activation recomputation: ``none``; ``selective`` (core
            attention, norms and activation functions recomputed in the
            backward, Megatron's selective mode); ``full`` (each layer's
            forward re-run in the backward, only its input kept).
        overlap: ``none``; ``chunk_pairs``: a forward chunk and a backward
            chunk of two micro-batches run together, each one's all-to-all
            and tensor-parallel communication hidden under the other's
            computation (DeepSeek-V3's DualPipe chunk pairs); the computation
            then runs on the SMs communication leaves (``comm_sm_fraction``).
        comm_sm_fraction: share of SMs the overlapped communication takes
            (DeepSeek-V3: 20 of the H800's 132).
        mem_reserved_gib: memory per GPU outside the model's tensors (CUDA
            context, NCCL, allocator fragmentation): an assumption to set from
            your own runs.
        steps: optimizer steps simulated back to back.
        cost_model: a calibration file from ``moesim calibrate``, or measured
            table folders (one or a list, relative to the scenario) calibrated
            on load, e.g. ``profiling/data/h100-sxm/full-bf16``; None: the roofline.
    """

    name: str = "train"
    model: str
    cluster: str | None = None
    gpu: str | None = None
    nodes: int | None = Field(None, ge=1, le=MAX_GPUS)
    gpus_per_node: int | None = Field(None, ge=1, le=MAX_GPUS_PER_NODE)
    hardware: str | None = None
    layout: TrainLayout = TrainLayout()
    batch: TrainBatch
    precision: TrainPrecision = TrainPrecision()
    recompute: Literal["none", "selective", "full"] = "none"
    routing: TrainRouting = TrainRouting()
    overlap: Literal["none", "chunk_pairs"] = "none"
    comm_sm_fraction: float = Field(20 / 132, ge=0, lt=1)
    mem_reserved_gib: float = Field(0.0, ge=0, le=1e6)
    steps: int = Field(1, ge=1, le=1000)
    cost: TrainCost = TrainCost()
    cost_model: str | list[str] | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)


def parse_train_scenario(data: Any, where: str = "scenario") -> TrainScenario:
    """Validate a training-scenario mapping; `MoesimError` with one line naming the bad key."""
    sc = validate_mapping(TrainScenario, data, where, "examples/train-*.yaml", "sim/training/train_scenario.py")
    if sc.layout.schedule not in SCHEDULES:
        raise MoesimError(
            f"{where}: layout.schedule: unknown schedule {sc.layout.schedule!r}", f"use one of {', '.join(SCHEDULES)}"
        )
    return sc


def load_train_scenario(path: str | Path) -> TrainScenario:
    """Read and validate a training-scenario YAML file."""
    return parse_train_scenario(read_yaml(path, "a training scenario YAML"), str(Path(path)))


@dataclass(frozen=True)
class TrainSetup:
    """A training scenario's objects, checked to fit together.

    Attributes:
        scenario: the validated scenario.
        model, cluster: what trains where (the cluster as large as the job).
        tp, pp, dp, ep, etp, edp: parallel sizes (see the module docstring).
        zero: the ZeRO stage (3 for FSDP).
        schedule, virtual: the pipeline schedule and model chunks per GPU
            (2 for DualPipe: each GPU holds stage r and stage pp-1-r).
        microbatches: micro-batches per pipeline per step.
        group_layout: the `Layout` of one all-to-all group of ``ep x etp``
            GPUs as the op model sees it (``tp``, ``dp_attn = ep x etp / tp``, ``ep``).
        loads: expert load shares [moe_layers, experts], or None (uniform).
        cost_model: a calibrated model named by the scenario, or None.
        assumptions: how GPU time is priced.
    """

    scenario: TrainScenario
    model: ModelSpec
    cluster: ClusterSpec
    tp: int
    pp: int
    dp: int
    ep: int
    etp: int
    edp: int
    zero: int
    schedule: str
    virtual: int
    microbatches: int
    group_layout: Layout
    loads: np.ndarray | None
    cost_model: CostModel | None
    assumptions: CostAssumptions

    @property
    def gpus(self) -> int:
        """GPUs of the job: ``tp x pp x dp``."""
        return self.tp * self.pp * self.dp

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step: global batch x sequence length."""
        b = self.scenario.batch
        return b.global_batch * b.seq_len

    def label(self) -> str:
        """E.g. ``TP1 PP16 DP128 EP64 ZeRO-1 dualpipe``."""
        parts = [f"TP{self.tp}", f"PP{self.pp}", f"DP{self.dp}"]
        if self.ep > 1:
            parts.append(f"EP{self.ep}")
        if self.etp > 1:
            parts.append(f"ETP{self.etp}")
        parts.append("FSDP" if self.scenario.layout.fsdp else f"ZeRO-{self.zero}")
        sched = self.schedule + (f"(v={self.virtual})" if self.schedule == "interleaved" else "")
        return " ".join(parts) + (" " + sched if self.pp > 1 else "")


def _power_for_maxvio(num_layers: int, num_experts: int, max_violation: float, seed: int) -> np.ndarray:
    """Power-law loads whose busiest expert carries (1 + max_violation) x the mean load."""
    target = 1.0 + max_violation
    if target >= num_experts:
        raise MoesimError(
            f"routing.max_violation={max_violation} needs one expert to carry more than all the load",
            f"give a value below {num_experts - 1}",
        )
    lo, hi = 0.0, 1.0

    def peak(a: float) -> float:
        w = np.arange(1, num_experts + 1, dtype=float) ** -a
        return float(w[0] / w.mean())

    while peak(hi) < target:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if peak(mid) < target else (lo, mid)
    return power_law_loads(num_layers, num_experts, 0.5 * (lo + hi), seed)


def _loads(sc: TrainScenario, model: ModelSpec, base: Path) -> np.ndarray | None:
    moe = model.moe
    if moe is not None and model.is_moe and sc.routing.max_violation is not None:
        top = moe.num_experts / moe.top_k - 1  # a token picks an expert at most once: its share is at most 1/top_k
        if sc.routing.max_violation > top + 1e-9:
            raise MoesimError(
                f"routing.max_violation={sc.routing.max_violation:g} is too high for top-{moe.top_k} routing over "
                f"{moe.num_experts} experts: the busiest expert can carry at most {top + 1:g}x the mean load",
                f"use routing.max_violation <= {top:g} for this model",
            )
        return _power_for_maxvio(model.num_moe_layers, moe.num_experts, sc.routing.max_violation, sc.seed)
    return scenario_loads(sc, model, base)


def _load_cost_model(spec: str | list[str], base: Path) -> CostModel:
    """A calibration file, or table folders calibrated now (everything fitted, nothing held out)."""
    from moesim.profiling.calibrate import CalibratedCostModel, calibrate

    paths = [base / p for p in ([spec] if isinstance(spec, str) else spec)]
    for p in paths:
        if not p.exists():
            raise MoesimError(f"cost_model {p} not found", "give a calibration file or a folder of measured tables")
    if len(paths) == 1 and paths[0].is_file():
        return CalibratedCostModel.from_file(paths[0])
    return CalibratedCostModel(calibrate(paths, holdout=0.0), name="calibrated:" + "+".join(p.name for p in paths))


def build_training(sc: TrainScenario, base_dir: str | Path = ".", cost_model: CostModel | None = None) -> TrainSetup:
    """Build a training scenario's objects; `MoesimError` on anything that does not fit together."""
    base = Path(base_dir)
    model = load_model(sc.model if not sc.model.endswith(".json") else str(base / sc.model))
    lay, b = sc.layout, sc.batch
    tp, pp, ep = lay.tp, lay.pp, lay.ep
    etp = lay.etp if lay.etp is not None else (tp if ep == 1 else 1)
    zero = 3 if lay.fsdp else lay.zero
    gpus_hint = tp * pp * (lay.dp or 1)
    cluster = scenario_cluster(sc, base, gpus_hint if lay.dp else max(gpus_hint, ep * etp * pp))
    if cluster.num_gpus % (tp * pp):
        raise MoesimError(
            f"layout tp={tp} x pp={pp} does not divide the {cluster.num_gpus} GPUs of {cluster.name}",
            "pick tp and pp whose product divides the GPU count, or set layout.dp",
        )
    dp = lay.dp if lay.dp is not None else cluster.num_gpus // (tp * pp)
    if tp * pp * dp > cluster.num_gpus:
        raise MoesimError(
            f"layout tp={tp} x pp={pp} x dp={dp} needs {tp * pp * dp} GPUs but {cluster.name} has {cluster.num_gpus}",
            "lower dp, tp or pp, or add nodes",
        )
    group = ep * etp
    if group % tp:
        raise MoesimError(
            f"ep={ep} x etp={etp} = {group} is not a multiple of tp={tp}",
            "moesim folds each tensor-parallel group inside one expert-parallel group: pick ep x etp = k x tp",
        )
    if (tp * dp) % group:
        raise MoesimError(
            f"ep={ep} x etp={etp} = {group} does not divide the tp x dp = {tp * dp} GPUs of a pipeline stage",
            "pick ep and etp whose product divides tp x dp",
        )
    if model.is_moe and model.moe is not None:
        if model.moe.num_experts % ep:
            raise MoesimError(
                f"ep={ep} does not divide the {model.moe.num_experts} experts of {model.name}",
                "pick an ep that divides the expert count",
            )
    elif ep > 1:
        raise MoesimError(f"ep={ep} on a dense model ({model.name} has no routed experts)", "use ep: 1")
    if lay.schedule == "dualpipe":
        virtual = 2
    elif lay.schedule == "interleaved":
        virtual = lay.virtual_stages
        if virtual < 2:
            raise MoesimError(
                "the interleaved schedule needs layout.virtual_stages >= 2", "set virtual_stages: 2 or more"
            )
    else:
        if lay.virtual_stages != 1:
            raise MoesimError(
                f"layout.virtual_stages={lay.virtual_stages} needs schedule: interleaved",
                "set schedule: interleaved or virtual_stages: 1",
            )
        virtual = 1
    chunks = pp * (1 if lay.schedule == "dualpipe" else virtual)
    if chunks > model.num_layers:
        raise MoesimError(
            f"pp={pp} x virtual_stages={virtual} = {chunks} pipeline chunks exceed the {model.num_layers} layers "
            f"of {model.name}",
            "use fewer pipeline stages or virtual stages",
        )
    if b.micro_batch > b.global_batch:
        raise MoesimError(
            f"micro_batch={b.micro_batch} is larger than global_batch={b.global_batch}",
            "make the micro-batch at most the global batch",
        )
    if b.global_batch % (b.micro_batch * dp):
        raise MoesimError(
            f"global_batch={b.global_batch} is not a multiple of micro_batch={b.micro_batch} x dp={dp}",
            f"use a global batch that is a multiple of {b.micro_batch * dp}",
        )
    m = b.global_batch // (b.micro_batch * dp)
    if m > MAX_MICROBATCHES:
        raise MoesimError(
            f"global_batch={b.global_batch} / (micro_batch={b.micro_batch} x dp={dp}) = {m:,} micro-batches per "
            f"pipeline, over the limit of {MAX_MICROBATCHES:,}",
            "raise batch.micro_batch or lower batch.global_batch",
        )
    tasks = sc.steps * m * pp * virtual * 3
    if tasks > MAX_PIPELINE_TASKS:
        raise MoesimError(
            f"steps={sc.steps} x {m:,} micro-batches x pp={pp} x {virtual} chunks x 3 passes = {tasks:,} pipeline "
            f"tasks to simulate, over the limit of {MAX_PIPELINE_TASKS:,}",
            "lower steps or batch.global_batch, or raise batch.micro_batch",
        )
    if lay.schedule == "interleaved" and m % pp:
        raise MoesimError(
            f"the interleaved schedule needs micro-batches per pipeline ({m}) to be a multiple of pp={pp}",
            "change global_batch, micro_batch or pp (Megatron-Core requires the same)",
        )
    if lay.schedule == "dualpipe":
        if pp % 2 or pp < 2:
            raise MoesimError(f"DualPipe needs an even pp >= 2, got pp={pp}", "use an even number of pipeline stages")
        if m < 2 * pp or m % 2:
            raise MoesimError(
                f"DualPipe needs an even number of micro-batches per pipeline >= 2 x pp = {2 * pp}, got {m}",
                "raise global_batch or lower micro_batch or dp",
            )
    try:
        group_layout = Layout(tp=tp, ep=ep, dp_attn=group // tp, pp=1)
        group_layout.check(model)
    except LayoutError as exc:
        raise MoesimError(exc.message.replace("TP", "training TP", 1), exc.hint) from None
    if cost_model is None and sc.cost_model:
        cost_model = _load_cost_model(sc.cost_model, base)
    return TrainSetup(
        scenario=sc,
        model=model,
        cluster=cluster,
        tp=tp,
        pp=pp,
        dp=dp,
        ep=ep,
        etp=etp,
        edp=tp * dp // group,
        zero=zero,
        schedule=lay.schedule,
        virtual=virtual,
        microbatches=m,
        group_layout=group_layout,
        loads=_loads(sc, model, base),
        cost_model=cost_model,
        assumptions=CostAssumptions(pricing=sc.cost.pricing, years=sc.cost.years, utilisation=sc.cost.utilisation),
    )
