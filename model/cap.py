"""CAP metrics: cost, accuracy and performance of one step.

Performance: S-MBU and S-MFU, MoE-CAP's sparsity-aware utilisations (only the
activated experts' weights and FLOPs count), in two modes:

``exact`` (moesim's own): the bytes of every weight the step reads (all
non-expert weights, the distinct experts the batch activates, embedding rows)
plus the KV cache read and written, and the FLOPs of every op with top-k
routed experts, the real shared experts, exact causal attention (MLA in the
form the engine runs) and the LM head, all from `model.ops.decompose` on one
device; divided by ``step time x GPUs x peak``.

``moecap``: the MoE-CAP benchmark's reference code (Auto-CAP/MoE-CAP,
``moe_cap/utils/basic_utils.py``, ``deepseek_utils.py``, ``qwen_utils.py``,
``continuous_batching_utils.py``) reproduced with its quirks: routed-expert
FLOPs counted once per token (not top-k); DeepSeek shared experts counted as
2 x ``moe_intermediate_size``; MLA attention FLOPs as plain MHA; attention FLOPs
from the batch's summed context times throughput; no LM head, embedding or
router; one bytes-per-parameter for weights and KV; the activated-expert
count averaged over all layers (dense layers count zero). The path is chosen
by ``model_type`` where MoE-CAP matches a substring of the model id.

Cost: dollars per million tokens from cloud $/GPU-hour, or from capex
amortisation plus energy. Energy per token: GPUs x board power (TDP) x
step time / tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from moesim.model.batch import Batch
from moesim.model.dtypes import Precision
from moesim.model.errors import MoesimError
from moesim.model.hardware import HardwareSpec, make_cluster
from moesim.model.layout import Layout
from moesim.model.ops import decompose
from moesim.model.routing import expected_distinct_experts
from moesim.model.spec import ModelSpec

if TYPE_CHECKING:
    from moesim.model.roofline import StepEstimate

#: MoE-CAP's bytes per parameter by weight dtype (``get_model_precision_bytes``).
MOECAP_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "fp4": 0.5}


@dataclass(frozen=True)
class Utilisation:
    """S-MBU and S-MFU of one step and what they were computed from.

    Attributes:
        mode: ``exact`` or ``moecap``.
        smbu: sparse memory-bandwidth utilisation (fraction, may exceed 1 in
            ``moecap`` mode, which does not clamp).
        smfu: sparse model-FLOPs utilisation (fraction).
        bytes: bytes counted per step.
        flops: FLOP counted per step (``moecap``: FLOP per token x tokens/s x step).
        peak_dtype: dtype whose peak FLOP/s is the S-MFU denominator.
    """

    mode: str
    smbu: float
    smfu: float
    bytes: float
    flops: float
    peak_dtype: str


def _check_step(step_s: float) -> None:
    if step_s <= 0:
        raise MoesimError(f"step time must be > 0 s, got {step_s}", "give a positive step time")


def utilisation_exact(
    model: ModelSpec,
    batch: Batch,
    gpu: HardwareSpec,
    step_s: float,
    num_gpus: int,
    precision: Precision | None = None,
    **routing: object,
) -> Utilisation:
    """moesim's exact S-MBU and S-MFU (see the module docstring)."""
    _check_step(step_s)
    p = precision or Precision()
    dtype = p.gemm_compute_dtype(gpu.peak_flops)
    nbytes, flops = _exact_counts(model, batch, gpu, p, dtype, routing)
    return Utilisation(
        "exact",
        nbytes / (step_s * num_gpus * gpu.bandwidth()),
        flops / (step_s * num_gpus * gpu.peak(dtype)),
        nbytes,
        flops,
        dtype,
    )


#: `_exact_counts` entries (model, bytes, FLOP) by (model id, batch, precision, GEMM dtype) (cleared when full).
_COUNTS_MEMO: dict[tuple, tuple[ModelSpec, float, float]] = {}


def _exact_counts(
    model: ModelSpec, batch: Batch, gpu: HardwareSpec, p: Precision, dtype: str, routing: dict[str, object]
) -> tuple[float, float]:
    """(bytes, FLOP) of ``batch``'s step on one device (`utilisation_exact`). The decomposition reads the GPU
    only through the GEMM dtype, so without routing arguments it is memoised by (model, batch, precision, dtype):
    a sweep asks for the same step on every GPU and layout."""
    # the model by id (see `model.ops._pieces_memo`), the batch by its fields (not the object: it caches arrays)
    key = (id(model), batch.new_tokens, batch.cached_tokens, batch.phase, p, dtype) if not routing else None
    hit = _COUNTS_MEMO.get(key) if key is not None else None
    if hit is not None and hit[0] is model:
        return hit[1], hit[2]
    one = make_cluster(gpu, gpus_per_node=1, nodes=1, name="one device")
    ops = decompose(model, batch, Layout(), one, p, **routing)  # type: ignore[arg-type]
    nbytes = sum((op.weight_bytes + op.kv_bytes) * op.count for op in ops)
    flops = sum(op.flops * op.count for op in ops)
    if key is not None:
        if len(_COUNTS_MEMO) >= 1 << 13:
            _COUNTS_MEMO.clear()
        _COUNTS_MEMO[key] = (model, nbytes, flops)
    return nbytes, flops


def utilisation_moecap(
    model: ModelSpec,
    batch: Batch,
    gpu: HardwareSpec,
    step_s: float,
    num_gpus: int,
    precision: Precision | None = None,
    expert_activation: float | None = None,
    engine: str = "sglang",
) -> Utilisation | None:
    """MoE-CAP's S-MBU and S-MFU for one forward pass (None for a dense model).

    Args:
        model, batch, gpu: the pass; ``gpu`` gives the peak bandwidth and the
            dense peak FLOP/s (MoE-CAP halves its with-sparsity table to the same).
        step_s: the pass's latency (MoE-CAP's ``tpot`` in decode, ``ttft`` in prefill), s.
        num_gpus: GPUs serving the model (``tp x pp`` in SGLang).
        precision: its weight dtype sets both bytes per parameter (for weights
            and KV alike) and the FLOP/s column.
        expert_activation: MoE-CAP's measured distinct experts per layer,
            averaged over all layers; None: the uniform-routing expectation
            for the batch's tokens, times MoE layers / layers.
        engine: ``sglang`` (``seq_lens_sum`` = running context) or ``vllm``
            (``seq_lens_sum`` = scheduled tokens, ``batch_size`` = tokens).
    """
    if not model.is_moe or model.moe is None:
        return None
    _check_step(step_s)
    if engine not in ("sglang", "vllm"):
        raise MoesimError(f"unknown engine '{engine}'", "use sglang or vllm")
    p = precision or Precision()
    a, moe, h, n_layers = model.attention, model.moe, model.hidden_size, model.num_layers
    size_p = MOECAP_BYTES[p.weights]
    deepseek = model.family in ("deepseek_v2", "deepseek_v3")
    expert = moe.intermediate_size * 3 * h
    if deepseek:
        heads, nope, rope, dv = a.num_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim
        q = h * a.q_lora_rank + a.q_lora_rank * heads * (nope + rope) if a.q_lora_rank else h * heads * (nope + rope)
        attn = h * (a.kv_lora_rank + rope) + a.kv_lora_rank * heads * (nope + dv) + dv * heads * h + q
        kv_per_token = n_layers * (a.kv_lora_rank + rope)
    else:
        d = a.head_dim
        attn = h * (a.num_heads * d + a.num_kv_heads * d * 2) + a.num_heads * d * h
        kv_per_token = 2 * n_layers * d * a.num_kv_heads
    if engine == "sglang":
        seq_lens_sum = batch.kv_tokens_read()  # running context, current tokens included
        batch_size = batch.sequences
    else:
        seq_lens_sum = batch.tokens  # tokens scheduled in the pass
        batch_size = batch.tokens
    if expert_activation is None:
        per_moe_layer = expected_distinct_experts(batch.tokens, moe.top_k, moe.num_experts)
        expert_activation = per_moe_layer * model.num_moe_layers / n_layers
    kv = seq_lens_sum * kv_per_token
    if deepseek:
        score = seq_lens_sum * n_layers * a.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim)
    else:
        score = seq_lens_sum * n_layers * a.num_heads * a.head_dim * 2
    n_moe, n_dense = model.num_moe_layers, model.num_dense_layers
    dense = model.dense_intermediate_size * 3 * h
    if deepseek:
        shared = moe.intermediate_size * 3 * h * 2  # MoE-CAP hard-codes two shared experts
        mbu_params = n_layers * attn + n_moe * (expert_activation * expert + shared) + n_dense * dense + kv
        mfu_params = n_layers * attn + n_moe * (expert + shared) + n_dense * dense + score
    elif model.family == "qwen2_moe":
        shared = moe.shared_intermediate_size * 3 * h
        mbu_params = n_layers * (expert_activation * expert + shared + attn) + kv
        mfu_params = n_layers * (attn + expert + shared) + score
    elif model.family == "qwen3_moe":
        mbu_params = n_moe * expert_activation * expert + n_dense * dense + n_layers * attn + kv
        mfu_params = n_moe * expert + n_dense * dense + n_layers * attn + score
    else:
        mbu_params = n_layers * (expert_activation * expert + attn) + kv
        mfu_params = n_layers * (attn + expert) + score
    throughput = batch_size / step_s if batch.phase == "decode" else seq_lens_sum / step_s
    dtype = "fp32" if p.weights == "fp32" else ("bf16" if p.weights in ("bf16", "fp16") else p.weights)
    if dtype not in gpu.peak_flops:
        dtype = "bf16"
    nbytes = mbu_params * size_p
    flops_per_s = mfu_params * 2 * throughput
    return Utilisation(
        "moecap",
        nbytes / step_s / (num_gpus * gpu.bandwidth()),
        flops_per_s / (num_gpus * gpu.peak(dtype)),
        nbytes,
        flops_per_s * step_s,
        dtype,
    )


@dataclass(frozen=True)
class CostAssumptions:
    """How a GPU-second is priced.

    Attributes:
        pricing: ``cloud`` ($/GPU-hour), ``capex`` (purchase price amortised
            plus energy) or ``auto`` (cloud where the GPU has a cloud price).
        years: amortisation period; hyperscalers depreciate servers over 5-6
            years (Microsoft and Alphabet 6, Meta 5.5 in their 2024-25 reports).
        utilisation: share of wall time the GPUs do this work (capex only).
        pue: facility power over IT power; 1.56 is the 2024 industry average
            of the Uptime Institute Global Data Center Survey.
        usd_per_kwh: electricity price; US industrial prices were 7.7-8.3
            cents/kWh in the largest regions in 2024 (EIA Electric Power
            Monthly, Table 5.6.B).
    """

    pricing: str = "auto"
    years: float = 5.0
    utilisation: float = 1.0
    pue: float = 1.56
    usd_per_kwh: float = 0.08

    def __post_init__(self) -> None:
        if self.pricing not in ("auto", "cloud", "capex"):
            raise MoesimError(f"unknown pricing '{self.pricing}'", "use auto, cloud or capex")
        for name in ("years", "utilisation", "pue", "usd_per_kwh"):
            if getattr(self, name) <= 0:
                raise MoesimError(f"{name} must be > 0, got {getattr(self, name)}", "give a positive value")
        if self.utilisation > 1:
            raise MoesimError(f"utilisation must be <= 1, got {self.utilisation}", "give a fraction")


def usd_per_gpu_second(gpu: HardwareSpec, a: CostAssumptions) -> tuple[float, str]:
    """Dollars per GPU-second of busy time and a note on the basis."""
    cloud = a.pricing == "cloud" or (a.pricing == "auto" and gpu.cloud_usd_per_hour)
    if cloud:
        if not gpu.cloud_usd_per_hour:
            raise MoesimError(f"{gpu.key} has no cloud price", "use --pricing capex or add cloud_usd_per_hour")
        return gpu.cloud_usd_per_hour / 3600.0, f"cloud ${gpu.cloud_usd_per_hour:g}/GPU-hour"
    if not gpu.price_usd:
        raise MoesimError(f"{gpu.key} has no purchase price", "add price_usd in a --hardware file")
    capex = gpu.price_usd / (a.years * 365.25 * 86400.0 * a.utilisation)
    if gpu.tdp_w is None:
        raise MoesimError(f"{gpu.key} has no board power (TDP)", "add tdp_w in a --hardware file")
    energy = gpu.tdp_w / 1000.0 * a.pue * a.usd_per_kwh / 3600.0
    return capex + energy, (
        f"capex ${gpu.price_usd:,.0f} over {a.years:g} y at {a.utilisation:.0%} use "
        f"+ {gpu.tdp_w:g} W x PUE {a.pue:g} at ${a.usd_per_kwh:g}/kWh"
    )


@dataclass(frozen=True)
class CapMetrics:
    """The CAP metrics of one step.

    Attributes:
        step_s: step latency, s.
        tokens_per_s: tokens computed per second.
        s_per_token: seconds per token per sequence (decode: the step; prefill:
            the step over the prompt length), MoE-CAP's performance axis.
        exact, moecap: S-MBU / S-MFU in each mode (``moecap`` None for dense).
        usd_per_mtok: dollars per million tokens computed.
        cost_basis: how a GPU-second was priced.
        energy_j_per_token: GPU board energy per token at TDP, J (None: TDP unknown).
        accuracy: published scores for the model at this precision.
    """

    step_s: float
    tokens_per_s: float
    s_per_token: float
    exact: Utilisation
    moecap: Utilisation | None
    usd_per_mtok: float
    cost_basis: str
    energy_j_per_token: float | None
    accuracy: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False)


def cap_metrics(
    est: StepEstimate,
    assumptions: CostAssumptions | None = None,
    accuracy: pd.DataFrame | None = None,
    **routing: object,
) -> CapMetrics:
    """Cost, accuracy and performance of a `StepEstimate`."""
    from moesim.model.accuracy import accuracy_for

    a = assumptions or CostAssumptions()
    gpus, gpu = est.layout.num_gpus, est.cluster.gpu
    try:
        per_s, basis = usd_per_gpu_second(gpu, a)
    except MoesimError as exc:
        per_s, basis = float("nan"), f"unpriced: {exc.one_line()}"
    seconds_per_token = est.step_s / max(1, max(est.batch.new_tokens))
    return CapMetrics(
        step_s=est.step_s,
        tokens_per_s=est.tokens_per_s,
        s_per_token=seconds_per_token,
        exact=utilisation_exact(est.model, est.batch, gpu, est.step_s, gpus, est.precision, **routing),
        moecap=utilisation_moecap(est.model, est.batch, gpu, est.step_s, gpus, est.precision),
        usd_per_mtok=gpus * per_s * est.step_s / est.tokens * 1e6,
        cost_basis=basis,
        energy_j_per_token=gpus * gpu.tdp_w * est.step_s / est.tokens if gpu.tdp_w else None,
        accuracy=accuracy_for(est.model.name, est.precision.weights, accuracy),
    )
