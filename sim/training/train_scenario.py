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
    # uneven stages: pipeline_layout: "Et*3|(tt|)*29,m|L", or first_stage_layers / last_stage_layers,
    # or account_for_embedding / account_for_loss (Megatron-Core's options)
    batch: {global_batch: 256, micro_batch: 1, seq_len: 4096}
    precision: {gemm: bf16, grads: fp32, master: fp32, optimizer_states: fp32}
    recompute: none                # none | selective | full
    activations: {recompute_modules: [core_attn], cross_entropy: unfused, probs_in_act: true}
    mtp_layers: 0                  # DeepSeek-V3 multi-token prediction depths
    routing: {distribution: uniform, capacity_factor: null}
    overlap: none                  # none | chunk_pairs (DualPipe) | ep_a2a (Megatron's combined 1F1B)
    steps: 1

Layout (Megatron-Core's terms, "MoE parallel folding"): the ``tp x cp x pp x dp``
GPUs (``dp`` = the rest) run attention and dense layers with tensor
parallelism ``tp``, context parallelism ``cp`` and data parallelism ``dp``; MoE layers fold the same
GPUs of a pipeline stage into expert parallelism ``ep`` times expert tensor
parallelism ``etp`` times expert data parallelism ``edp = tp x cp x dp / (ep x
etp)``. ``ep x etp`` must be a multiple of ``tp``: a group of ``ep x etp``
GPUs exchanges tokens in the all-to-all, and inside it ``ep x etp / tp``
attention groups each process their own tokens (data-parallel micro-batches, or context-parallel slices of one).

Context parallelism (Megatron-Core's ``--context-parallel-size``, Transformer Engine's ring attention with
``cp_comm_type p2p``): each sequence is cut into ``2 x cp`` chunks and context-parallel rank ``r`` holds chunks
``r`` and ``2 cp - 1 - r`` (the load-balanced causal split), so every op but the core attention sees
``seq_len / cp`` tokens, and the core attention runs that rank's queries against the keys before them, the keys
and values passing round the ring of ``cp`` ranks (`sim.training.train_cost.cp_ring_seconds`). Dense gradients
are reduced over ``dp x cp`` GPUs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from moesim.model import ClusterSpec, CostAssumptions, CostModel, Layout, ModelSpec
from moesim.model.errors import LayoutError, MoesimError
from moesim.model.hardware import HardwareSpec
from moesim.model.hf_config import load_model
from moesim.model.inputs import StrictInput
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

if TYPE_CHECKING:
    from moesim.profiling.costmodel import Calibration

#: Pipeline schedules: GPipe (all forwards, then all backwards), 1F1B
#: (PipeDream-flush, Megatron's default), interleaved 1F1B over
#: ``virtual_stages`` model chunks per GPU (Megatron), DualPipe (DeepSeek-V3:
#: bidirectional, two chunks per GPU, zero-bubble weight-gradient splitting).
SCHEDULES = ("gpipe", "1f1b", "interleaved", "dualpipe")


class _Strict(StrictInput):
    """Unknown keys, NaN and infinity are refused everywhere in the file,
    and so is true/false for a number (`model.inputs.StrictInput`)."""


class TrainLayout(_Strict):
    """A training layout (see the module docstring).

    Attributes:
        tp: tensor-parallel size of attention, dense layers and the LM head.
        cp: context-parallel size: each sequence split over ``cp`` GPUs (see the module docstring); ``seq_len``
            must be a multiple of ``2 x cp``.
        pp: pipeline stages (ranks of a pipeline).
        ep: expert-parallel size.
        etp: expert tensor-parallel size (None: ``tp`` without expert
            parallelism, else 1).
        dp: data-parallel size (None: every GPU left, cluster GPUs / (tp x cp x pp)).
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
        a2a_backend: who runs the EP dispatch and combine: ``deepep`` (DeepEP's normal kernels, as DeepSeek-V3
            trained and Megatron's ``flex`` dispatcher runs them) or ``nccl`` (Megatron's ``alltoall``
            dispatcher), `model.a2a`.
        pipeline_layout: Megatron-Core's ``--pipeline-model-parallel-layout``: the units of every pipeline
            stage, e.g. ``"Et|(tt|)*30mL"`` (`sim.training.pipeline.parse_pipeline_layout`).
        first_stage_layers, last_stage_layers: decoder layers of the first / last pipeline rank
            (``--decoder-first-pipeline-num-layers`` / ``--decoder-last-pipeline-num-layers``).
        account_for_embedding, account_for_loss: the embedding / the loss counts as a layer in the even
            split (``--account-for-embedding-in-pipeline-split`` / ``--account-for-loss-in-pipeline-split``).
    """

    tp: int = Field(1, ge=1, le=MAX_GPUS)
    cp: int = Field(1, ge=1, le=MAX_GPUS)
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
    a2a_backend: Literal["deepep", "nccl"] = "deepep"
    pipeline_layout: str | None = Field(None, min_length=1, max_length=10_000)
    first_stage_layers: int | None = Field(None, ge=0, le=MAX_LAYERS)
    last_stage_layers: int | None = Field(None, ge=0, le=MAX_LAYERS)
    account_for_embedding: bool = False
    account_for_loss: bool = False


class TrainBatch(_Strict):
    """The batch of one optimizer step, in sequences of ``seq_len`` tokens.

    Attributes:
        global_batch: sequences per optimizer step, over all data-parallel ranks.
        micro_batch: sequences per micro-batch on one data-parallel rank.
        seq_len: tokens per sequence.
    """

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
        fp8_recipe: how fp8 GEMMs scale (`sim.training.train_cost.FP8_RECIPES`): ``block`` (DeepSeek-V3's
            1 x 128 / 128 x 128 tiles, Transformer Engine's Float8BlockScaling), ``delayed`` (per-tensor, amax
            history), ``current`` (per-tensor, an amax pass per cast) or ``mxfp8`` (1 x 32 blocks with
            power-of-two scales: Blackwell's block-scaled tensor cores only).
    """

    gemm: Literal["bf16", "fp8"] = "bf16"
    params: Literal["bf16", "fp32"] = "bf16"
    grads: Literal["fp32", "bf16"] = "fp32"
    master: Literal["fp32", "bf16", "none"] = "fp32"
    optimizer_states: Literal["fp32", "bf16"] = "fp32"
    dispatch: Literal["bf16", "fp8"] = "bf16"
    fp8_recipe: Literal["block", "delayed", "current", "mxfp8"] = "block"


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
        sequence_cv: dropless routing concentrated per sequence: the coefficient of variation of one EP GPU's
            share of a single sequence's routed pairs (`train_cost.sequence_hot_factor`); None: none (a router
            balanced within every micro-batch, or Megatron's forced balancing).
    """

    distribution: Literal["uniform", "power", "file"] = "uniform"
    exponent: float = Field(1.0, ge=0)
    max_violation: float | None = Field(None, ge=0)
    file: str | None = None
    capacity_factor: float | None = Field(None, gt=0, le=MAX_CAPACITY_FACTOR)
    sequence_cv: float | None = Field(None, ge=0)


#: Megatron-Core's ``--recompute-modules`` (``--recompute-granularity selective``), NVIDIA/Megatron-LM@
#: megatron/core/transformer/moe/README.md ("Checkpointing") and transformer_config.py; ``shared_experts`` since
#: MCore v0.14. Output-discarding: ``layernorm``, ``mla_up_proj``, ``moe_act``; the others checkpoint the module.
RECOMPUTE_MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts")
#: Megatron-Core's fine-grained activation offloading (``--fine-grained-activation-offloading --offload-modules``,
#: NVIDIA/Megatron-LM@docs fine_grained_activation_offloading): each module's input goes to host memory after the
#: forward and comes back before its backward.
OFFLOAD_MODULES = ("attn_norm", "qkv_linear", "core_attn", "attn_proj", "mlp_norm", "expert_fc1", "moe_act")


class TrainActivations(_Strict):
    """How the saved activations are stored (`sim.training.train_memory`); defaults are Megatron-Core's.

    Attributes:
        recompute_modules: for ``recompute: selective``, the modules recomputed (`RECOMPUTE_MODULES`);
            None: Megatron's default ``[core_attn]``.
        moe_act_input: dtype the routed experts' SwiGLU input is kept in: ``bf16``, or ``fp8`` with one fp32
            scale per 1x128 tile (DeepSeek-V3 report, arXiv 2412.19437 section 3.3.3 "Low-Precision Activation").
        attn_out: dtype of the attention output kept for both FlashAttention's and the output projection's
            backward: ``bf16`` (plus an fp8 copy for an fp8 output projection, as Transformer Engine keeps
            it), or DeepSeek-V3's one ``e5m6`` copy (12 bits, power-of-2 scales per 1x128 tile; section 3.3.3).
        probs_in_act: the routing weights multiply the experts' SwiGLU output (Megatron-Core since v0.13,
            "moving the probs multiplication from unpermutation to activation function of GroupedMLP"), so
            the unpermutation keeps no expert outputs for the weights' gradient; False: it keeps them.
        cross_entropy: ``unfused`` (Megatron's ``vocab_parallel_cross_entropy``: fp32 softmax kept, an fp32 copy
            of the logits in flight), ``fused`` (``--cross-entropy-loss-fusion``: fp32 softmax kept in place of
            the fp32 logits), ``te`` (``--cross-entropy-fusion-impl te``: Transformer Engine's kernel writes the
            bf16 logits' gradient in place during the forward and keeps only that).
        offload_modules: modules whose saved input goes to host memory (`OFFLOAD_MODULES`).
        offload_gbps: host link bandwidth per direction for the offload copies, GB/s: PCIe Gen5 x16,
            64 GB/s each way (NVIDIA H100 datasheet: "PCIe Gen5 128 GB/s", both directions together). The
            copies run on their own stream; only the part longer than the unit's computation is exposed.
    """

    recompute_modules: list[Literal[RECOMPUTE_MODULES]] | None = None  # type: ignore[valid-type]
    moe_act_input: Literal["bf16", "fp8"] = "bf16"
    attn_out: Literal["bf16", "e5m6"] = "bf16"
    probs_in_act: bool = True
    cross_entropy: Literal["unfused", "fused", "te"] = "unfused"
    offload_modules: list[Literal[OFFLOAD_MODULES]] = []  # type: ignore[valid-type]  # noqa: RUF012 - pydantic copies it
    offload_gbps: float = Field(64.0, gt=0, le=1e5)


class TrainCost(_Strict):
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


class TrainScenario(_Strict):
    """A training scenario (see the module docstring).

    Attributes:
        name: the scenario's name in reports.
        model: a model preset (``moesim models``) or the path of a Hugging Face config.json.
        cluster: a cluster preset (``moesim clusters``); or give ``gpu`` (with ``nodes`` / ``gpus_per_node``).
        gpu: a GPU preset (``moesim gpus``) when no ``cluster`` is named.
        nodes: nodes of the cluster (with ``gpu``, or to resize ``cluster``).
        gpus_per_node: GPUs per node (with ``gpu``, or to resize ``cluster``).
        hardware: a YAML file of extra GPU and cluster definitions, relative to the scenario (`model.hardware`).
        layout: the parallel layout and pipeline schedule (`TrainLayout`).
        batch: the batch of one optimizer step (`TrainBatch`).
        precision: training dtypes (`TrainPrecision`).
        routing: how tokens pick experts (`TrainRouting`).
        cost: how GPU time is priced.
        seed: random seed of the routing.
        recompute: activation recomputation: ``none``; ``selective`` (the
            modules of ``activations.recompute_modules`` recomputed in the
            backward, Megatron's selective mode); ``full`` (each layer's
            forward re-run in the backward, only its input kept).
        activations: how saved activations are stored (`TrainActivations`).
        mtp_layers: multi-token-prediction depths trained (DeepSeek-V3: 1; Megatron's ``--mtp-num-layers``);
            the model's config must have them (``num_nextn_predict_layers``).
        overlap: ``none``; ``chunk_pairs``: a forward chunk and a backward
            chunk of two micro-batches run together, each one's all-to-all
            and tensor-parallel communication hidden under the other's
            computation (DeepSeek-V3's DualPipe chunk pairs); the computation
            then runs on the SMs communication leaves (``comm_sm_fraction``); needs schedule dualpipe.
            ``ep_a2a``: Megatron-Core's EP all-to-all overlap (``--overlap-moe-expert-parallel-comm``, combined
            1F1B): each steady-phase backward and the next forward run together, each one's dispatch and combine
            hidden under the other's computation (tensor-parallel collectives are not); needs schedule
            interleaved, or pp 1 (Megatron requires virtual pipeline stages when pp > 1).
        comm_sm_fraction: share of SMs the overlapped communication takes
            (DeepSeek-V3: 20 of the H800's 132).
        mem_reserved_gib: memory per GPU outside the model's tensors (CUDA
            context, NCCL, allocator fragmentation): an assumption to set from
            your own runs.
        steps: optimizer steps simulated back to back.
        cost_model: a calibration file from ``moesim calibrate``, or measured
            table folders (one or a list, relative to the scenario) calibrated
            on load, e.g. ``profiling/data/h100-sxm/full-bf16``; ``achievable``: the roofline plus published
            kernel efficiencies (`model.achievable`); None: the roofline.
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
    activations: TrainActivations = TrainActivations()
    mtp_layers: int = Field(0, ge=0, le=MAX_LAYERS)
    routing: TrainRouting = TrainRouting()
    overlap: Literal["none", "chunk_pairs", "ep_a2a"] = "none"
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
    if sc.activations.recompute_modules is not None and sc.recompute != "selective":
        raise MoesimError(
            f"{where}: activations.recompute_modules is set but recompute is {sc.recompute!r}",
            "set recompute: selective (Megatron reads --recompute-modules only with --recompute-granularity selective)",
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
        cp: context-parallel size (each sequence split over ``cp`` GPUs).
        zero: the ZeRO stage (3 for FSDP).
        schedule, virtual: the pipeline schedule and model chunks per GPU
            (2 for DualPipe: each GPU holds stage r and stage pp-1-r).
        microbatches: micro-batches per pipeline per step.
        group_layout: the `Layout` of one all-to-all group of ``ep x etp``
            GPUs as the op model sees it (``tp``, ``dp_attn = ep x etp / tp``, ``ep``).
        loads: expert load shares [moe_layers, experts], or None (uniform).
        cost_model: a calibrated model named by the scenario, or None.
        assumptions: how GPU time is priced.
        mtp: multi-token-prediction layers trained.
        stage_units: per pipeline stage (virtual-stage order), its units: 0 the embedding, 1..L the
            decoder layers, L+1..L+mtp the MTP layers, L+mtp+1 the LM head.
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
    mtp: int = 0
    stage_units: tuple[tuple[int, ...], ...] = ()
    cp: int = 1

    @property
    def gpus(self) -> int:
        """GPUs of the job: ``tp x cp x pp x dp``."""
        return self.tp * self.cp * self.pp * self.dp

    @property
    def grad_dp(self) -> int:
        """GPUs a dense parameter's gradient is reduced over, and its optimizer state sharded over: ``dp x cp``
        (context-parallel ranks hold the same weights and see different tokens)."""
        return self.dp * self.cp

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step: global batch x sequence length."""
        b = self.scenario.batch
        return b.global_batch * b.seq_len

    def label(self) -> str:
        """E.g. ``TP1 PP16 DP128 EP64 ZeRO-1 dualpipe``."""
        parts = [f"TP{self.tp}"] + ([f"CP{self.cp}"] if self.cp > 1 else []) + [f"PP{self.pp}", f"DP{self.dp}"]
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
    if sc.routing.sequence_cv and sc.routing.capacity_factor is not None:
        raise MoesimError(
            f"routing.sequence_cv={sc.routing.sequence_cv:g} describes dropless routing, but routing.capacity_factor="
            f"{sc.routing.capacity_factor:g} drops tokens",
            "set routing.capacity_factor: null, or leave routing.sequence_cv out",
        )
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


#: Calibrations of table folders made in this process (`_load_cost_model`), by `_tables_key`: the training
#: scenarios of a sweep, of a benchmark or of the dashboard's pages would each fit the same tables again (0.7-0.8 s
#: for the committed H100 SXM tables on this project's 2-core VM). At most `_CALIBRATIONS_KEPT` are kept.
_CALIBRATIONS: dict[tuple, Calibration] = {}
_CALIBRATIONS_KEPT = 8
#: Held while `_CALIBRATIONS` changes (the dashboard runs each session's page in its own thread).
_CALIBRATIONS_LOCK = threading.Lock()


def _tables_key(paths: list[Path]) -> tuple:
    """What a calibration of ``paths`` depends on: each path resolved, with the name, size (bytes) and modification
    time (ns) of every file and folder under it (`profiling.tables.folder_signature`; a file given alone: its own),
    so that a table added, removed or rewritten is calibrated again."""
    from moesim.profiling.tables import folder_signature

    return tuple(
        (str(p.resolve()), folder_signature(p, "*") or (p.stat().st_mtime_ns, p.stat().st_size)) for p in paths
    )


def _load_cost_model(spec: str | list[str], base: Path) -> CostModel:
    """A calibration file, or table folders calibrated now (everything fitted, nothing held out; calibrated once
    per process while the tables stay as they are, `_CALIBRATIONS`)."""
    from moesim.model.achievable import named_cost_model
    from moesim.profiling.calibrate import CalibratedCostModel, calibrate

    named = named_cost_model(spec) if isinstance(spec, str) else None
    if named is not None:
        return named
    paths = [base / p for p in ([spec] if isinstance(spec, str) else spec)]
    for p in paths:
        if not p.exists():
            raise MoesimError(f"cost_model {p} not found", "give a calibration file or a folder of measured tables")
    if len(paths) == 1 and paths[0].is_file():
        return CalibratedCostModel.from_file(paths[0])
    key = _tables_key(paths)
    cal = _CALIBRATIONS.get(key)
    if cal is None:
        cal = calibrate(paths, holdout=0.0)
        with _CALIBRATIONS_LOCK:
            while _CALIBRATIONS and len(_CALIBRATIONS) >= _CALIBRATIONS_KEPT:
                _CALIBRATIONS.pop(next(iter(_CALIBRATIONS)))  # the oldest
            if _CALIBRATIONS_KEPT > 0:
                _CALIBRATIONS[key] = cal
    return CalibratedCostModel(cal, name="calibrated:" + "+".join(p.name for p in paths))


def _check_fp8(p: TrainPrecision, gpu: HardwareSpec) -> None:
    """`MoesimError` for fp8 GEMMs on a GPU without fp8 tensor cores (no ``fp8`` peak: A100), or the ``mxfp8``
    recipe on a GPU without block-scaled (microscaling) tensor cores: those came with Blackwell (sm100) and its fp4
    peak (NVIDIA/TransformerEngine transformer_engine/pytorch/fp8.py check_mxfp8_support: "Device compute
    capability 10.0 or higher required for MXFP8 execution")."""
    if p.gemm != "fp8":
        return
    if "fp8" not in gpu.peak_flops:
        raise MoesimError(
            f"precision.gemm: fp8 on {gpu.key}, which has no fp8 tensor cores", "use precision.gemm: bf16 on this GPU"
        )
    if p.fp8_recipe == "mxfp8" and "fp4" not in gpu.peak_flops:
        raise MoesimError(
            f"precision.fp8_recipe: mxfp8 on {gpu.key}, which has no block-scaled (MXFP8) tensor cores",
            "use fp8_recipe: block (DeepSeek-V3's tiles), delayed or current on Hopper; mxfp8 needs Blackwell",
        )


def build_training(sc: TrainScenario, base_dir: str | Path = ".", cost_model: CostModel | None = None) -> TrainSetup:
    """Build a training scenario's objects; `MoesimError` on anything that does not fit together."""
    base = Path(base_dir)
    model = load_model(sc.model if not sc.model.endswith(".json") else str(base / sc.model))
    lay, b = sc.layout, sc.batch
    tp, cp, pp, ep = lay.tp, lay.cp, lay.pp, lay.ep
    etp = lay.etp if lay.etp is not None else (tp if ep == 1 else 1)
    zero = 3 if lay.fsdp else lay.zero
    _check_cp(cp, b.seq_len)
    tcp = tp * cp  # the model-parallel GPUs of one data-parallel rank of a pipeline stage
    sizes = f"tp={tp} x cp={cp}" if cp > 1 else f"tp={tp}"
    gpus_hint = tcp * pp * (lay.dp or 1)
    cluster = scenario_cluster(sc, base, gpus_hint if lay.dp else max(gpus_hint, ep * etp * pp))
    if cluster.num_gpus % (tcp * pp):
        raise MoesimError(
            f"layout {sizes} x pp={pp} does not divide the {cluster.num_gpus} GPUs of {cluster.name}",
            f"pick {'tp, cp' if cp > 1 else 'tp'} and pp whose product divides the GPU count, or set layout.dp",
        )
    dp = lay.dp if lay.dp is not None else cluster.num_gpus // (tcp * pp)
    if tcp * pp * dp > cluster.num_gpus:
        raise MoesimError(
            f"layout {sizes} x pp={pp} x dp={dp} needs {tcp * pp * dp} GPUs but {cluster.name} has {cluster.num_gpus}",
            f"lower dp, {'cp, ' if cp > 1 else ''}tp or pp, or add nodes",
        )
    group = ep * etp
    if group % tp:
        raise MoesimError(
            f"ep={ep} x etp={etp} = {group} is not a multiple of tp={tp}",
            "moesim folds each tensor-parallel group inside one expert-parallel group: pick ep x etp = k x tp",
        )
    if (tcp * dp) % group:
        stage = f"tp x cp x dp = {tcp * dp}" if cp > 1 else f"tp x dp = {tp * dp}"
        raise MoesimError(
            f"ep={ep} x etp={etp} = {group} does not divide the {stage} GPUs of a pipeline stage",
            f"pick ep and etp whose product divides {stage.split(' = ')[0]}",
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
    mtp = _mtp_layers(sc, model)
    stage_units = _stage_units(sc, model, chunks, pp, mtp)
    accounted = int(lay.account_for_embedding) + int(lay.account_for_loss)  # counted as layers in the split
    if chunks > model.num_layers + accounted and lay.pipeline_layout is None:
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
    _check_overlap(sc.overlap, lay.schedule, pp)
    try:
        group_layout = Layout(tp=tp, ep=ep, dp_attn=group // tp, pp=1, a2a_backend=sc.layout.a2a_backend)
        group_layout.check(model)
    except LayoutError as exc:
        raise MoesimError(exc.message.replace("TP", "training TP", 1), exc.hint) from None
    _check_fp8(sc.precision, cluster.gpu)
    if cost_model is None and sc.cost_model and sc.cost_model != "roofline":
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
        edp=tcp * dp // group,
        zero=zero,
        schedule=lay.schedule,
        virtual=virtual,
        microbatches=m,
        group_layout=group_layout,
        loads=_loads(sc, model, base),
        cost_model=cost_model,
        assumptions=CostAssumptions(pricing=sc.cost.pricing, years=sc.cost.years, utilisation=sc.cost.utilisation),
        mtp=mtp,
        stage_units=tuple(tuple(u) for u in stage_units),
        cp=cp,
    )


def _check_cp(cp: int, seq_len: int) -> None:
    """`MoesimError` for a context-parallel size the sequence cannot be split by (Megatron cuts each sequence into
    ``2 x cp`` equal chunks: `megatron.core.utils.get_batch_on_this_cp_rank`)."""
    if cp <= 1:
        return
    if seq_len % (2 * cp):
        raise MoesimError(
            f"batch.seq_len={seq_len} is not a multiple of 2 x cp = {2 * cp}",
            f"use a sequence length that is a multiple of {2 * cp} (each sequence is cut into 2 x cp chunks)",
        )


def _check_overlap(overlap: str, schedule: str, pp: int) -> None:
    """`MoesimError` for an overlap mode the pipeline schedule cannot run: DualPipe's chunk pairs exist only in
    DualPipe; Megatron's combined 1F1B (``ep_a2a``) pairs the steady phase of interleaved 1F1B, or every
    micro-batch when pp is 1 (Megatron-LM arguments: EP A2A overlap with pp > 1 needs virtual pipeline stages)."""
    if overlap == "chunk_pairs" and schedule != "dualpipe":
        raise MoesimError(
            f"overlap: chunk_pairs needs schedule: dualpipe, got schedule: {schedule}",
            "use overlap: ep_a2a (Megatron's combined 1F1B) with schedule: interleaved, or schedule: dualpipe",
        )
    if overlap == "ep_a2a" and not (schedule == "interleaved" or (pp == 1 and schedule in ("1f1b", "gpipe"))):
        raise MoesimError(
            f"overlap: ep_a2a (Megatron's combined 1F1B) cannot run with schedule: {schedule} and pp={pp}",
            "use schedule: interleaved with virtual_stages >= 2 (or pp: 1); DualPipe overlaps with chunk_pairs",
        )


def _mtp_layers(sc: TrainScenario, model: ModelSpec) -> int:
    """The MTP depth trained; `MoesimError` when the model's config has fewer MTP layers."""
    if sc.mtp_layers > model.mtp_layers:
        has = f"has {model.mtp_layers}" if model.mtp_layers else "has no"
        raise MoesimError(
            f"mtp_layers={sc.mtp_layers} but {model.name} {has} multi-token-prediction layers "
            f"(num_nextn_predict_layers={model.mtp_layers} in its config)",
            f"set mtp_layers to at most {model.mtp_layers}" if model.mtp_layers else "remove mtp_layers",
        )
    return sc.mtp_layers


def _stage_units(sc: TrainScenario, model: ModelSpec, stages: int, pp: int, mtp: int) -> list[list[int]]:
    """Units of each pipeline stage from the layout keys (`sim.training.pipeline`)."""
    from moesim.sim.training.pipeline import parse_pipeline_layout, split_stage_units

    lay = sc.layout
    uneven = lay.first_stage_layers is not None or lay.last_stage_layers is not None
    account = lay.account_for_embedding or lay.account_for_loss
    if sum((lay.pipeline_layout is not None, uneven, account)) > 1:
        raise MoesimError(
            "layout: pipeline_layout, first/last_stage_layers and account_for_embedding/loss are exclusive",
            "give one way to split the layers over the pipeline stages",
        )
    if (uneven or account) and pp == 1:
        raise MoesimError("layout: an uneven pipeline split needs pp > 1", "remove the split keys or raise pp")
    if lay.pipeline_layout is not None:
        return parse_pipeline_layout(lay.pipeline_layout, stages, model.num_layers, mtp)
    return split_stage_units(
        model.num_layers, stages, pp=pp, mtp=mtp,
        first=lay.first_stage_layers, last=lay.last_stage_layers,
        account_embedding=lay.account_for_embedding, account_loss=lay.account_for_loss,
    )  # fmt: skip
