"""Memory per GPU: weights under a layout, the KV cache, activations, and a verdict.

Weights per GPU follow each tensor's sharding (`model.params.Tensor.shard`);
with pipeline parallelism the fullest stage is reported. The KV cache per
token counts the layers of that stage: GQA caches ``ceil(kv_heads / tp)`` heads
per GPU, MLA caches its latent in full on every TP rank. ``mem_fraction`` of
the device is usable (vLLM's default ``gpu_memory_utilization`` is 0.9).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from moesim.model.batch import Batch
from moesim.model.dtypes import Precision
from moesim.model.hardware import GIB, HardwareSpec
from moesim.model.layout import Layout
from moesim.model.params import Tensor, embedding_tensors, layer_tensors
from moesim.model.spec import ModelSpec

DEFAULT_MEM_FRACTION = 0.9


def params_per_gpu(t: Tensor, model: ModelSpec, layout: Layout) -> float:
    """Parameters of ``t`` held by one GPU."""
    if t.shard in ("heads", "ffn", "vocab"):
        return t.params / layout.tp
    if t.shard == "kv_heads":
        kv = model.attention.num_kv_heads
        return t.params * (-(-kv // layout.tp)) / kv
    if t.shard == "experts":
        return t.params / layout.stage_gpus
    return float(t.params)


def weight_bytes_per_gpu(model: ModelSpec, layout: Layout, precision: Precision) -> list[dict[str, float]]:
    """Weight bytes one GPU of each pipeline stage holds, by component, one dict per stage."""
    stages = layout.stage_layers(model)
    out = []
    for s, layers in enumerate(stages):
        comp: dict[str, float] = defaultdict(float)
        tensors = [t for i in layers for t in layer_tensors(model, i)]
        for t in embedding_tensors(model):
            first = t.name == "embed_tokens" and s == 0
            last = t.name in ("lm_head", "final_norm") and s == len(stages) - 1
            tied_head = model.tie_embeddings and t.name == "embed_tokens" and s == len(stages) - 1 and s > 0
            if first or last or tied_head:
                tensors.append(t)
        for t in tensors:
            nbytes = precision.weight_bytes if t.quantized else precision.unquantized_bytes
            comp[t.component] += params_per_gpu(t, model, layout) * nbytes
        out.append(dict(comp))
    return out


def kv_bytes_per_token(model: ModelSpec, layout: Layout, precision: Precision, layers: range | None = None) -> float:
    """KV-cache bytes one GPU stores per token of a sequence (all its layers, no window cap)."""
    a = model.attention
    layers = layers if layers is not None else range(model.num_layers)
    if a.kind == "mla":
        per_layer = a.kv_cache_elems_per_token
    else:
        per_layer = -(-a.num_kv_heads // layout.tp) * (a.head_dim + a.v_head_dim)
    return len(layers) * per_layer * precision.kv_bytes


def kv_bytes_for_batch(
    model: ModelSpec, layout: Layout, precision: Precision, batch: Batch, layers: range | None = None
) -> float:
    """KV-cache bytes ``batch`` holds after its step on one GPU, sliding windows capped.

    A chunked-local-attention layer (Llama 4) holds the chunks the step's tokens fall in: vLLM's
    ``ChunkedLocalAttentionSpec`` frees the blocks of earlier chunks (vllm-project/vllm@vllm/v1/kv_cache_interface.py).
    """
    layers = layers if layers is not None else range(model.num_layers)
    per_token_layer = kv_bytes_per_token(model, layout, precision, range(1))
    # the cache after the step: cached + new, window-capped or chunk-local
    spans = Counter((model.windows[i], model.chunk_of(i)) for i in layers)
    return float(sum(n * batch.kv_tokens_read(w, c) for (w, c), n in spans.items()) * per_token_layer)


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory on the fullest GPU.

    Attributes:
        capacity_bytes: device memory, bytes.
        usable_bytes: ``capacity_bytes x mem_fraction``.
        weight_bytes: weights on the fullest GPU, bytes.
        weights_by_component: those weight bytes per component.
        kv_bytes_per_token: KV bytes per token of a sequence on that GPU.
        kv_bytes: KV bytes the batch holds on that GPU (0 without a batch).
        activation_bytes: the largest op's activations in the step, bytes.
        kv_capacity_tokens: tokens of KV cache that fit beside weights and activations.
        fits: weights, the batch's KV cache and activations fit in usable memory.
        verdict: one line saying so, or by how much it does not fit.
        fix: how to make it fit (empty when it fits).
    """

    capacity_bytes: float
    usable_bytes: float
    weight_bytes: float
    weights_by_component: dict[str, float]
    kv_bytes_per_token: float
    kv_bytes: float
    activation_bytes: float
    kv_capacity_tokens: int
    fits: bool
    verdict: str
    fix: str = ""


def estimate_memory(
    model: ModelSpec,
    layout: Layout,
    gpu: HardwareSpec,
    precision: Precision | None = None,
    batch: Batch | None = None,
    activation_bytes: float = 0.0,
    mem_fraction: float = DEFAULT_MEM_FRACTION,
) -> MemoryEstimate:
    """Weights, KV cache and activations on the fullest GPU against ``mem_fraction`` of its memory.

    Args:
        model, layout, gpu, precision: what runs where.
        batch: the step's batch (its KV cache and, with ``dp_attn``, the
            busiest group's share); None: weights only.
        activation_bytes: the step's peak activation bytes (from the op model).
        mem_fraction: usable share of device memory.
    """
    p = precision or Precision()
    per_stage = weight_bytes_per_gpu(model, layout, p)
    stages = layout.stage_layers(model)
    s = max(range(len(per_stage)), key=lambda i: sum(per_stage[i].values()))
    weights = sum(per_stage[s].values())
    per_token = kv_bytes_per_token(model, layout, p, stages[s])
    kv = 0.0
    if batch is not None:
        group = max(batch.split(layout.dp_attn), key=lambda b: b.kv_tokens_read())
        kv = kv_bytes_for_batch(model, layout, p, group, stages[s])
    capacity = gpu.memory_bytes
    usable = capacity * mem_fraction
    free = usable - weights - activation_bytes
    tokens = int(max(free, 0.0) // per_token) if per_token else 0
    need = weights + kv + activation_bytes
    where = f"{gpu.key} ({gpu.memory_gib:g} GiB x {mem_fraction:.2f} = {usable / GIB:.1f} GiB usable)"
    fix = "more GPUs (--tp/--ep/--pp), a smaller --dtype (fp8, int4) or a GPU with more memory"
    if weights + activation_bytes > usable:
        verdict = (
            f"does not fit: weights need {weights / GIB:.1f} GiB per GPU on {where}, "
            f"short by {(weights + activation_bytes - usable) / GIB:.1f} GiB"
        )
    elif need > usable:
        verdict = (
            f"does not fit: weights {weights / GIB:.1f} GiB + KV cache {kv / GIB:.1f} GiB "
            f"+ activations {activation_bytes / GIB:.2f} GiB exceed {where} by "
            f"{(need - usable) / GIB:.1f} GiB"
        )
        fix = f"a smaller batch or context, --kv-dtype fp8, or {fix}"
    else:
        fix = ""
        verdict = (
            f"fits: weights {weights / GIB:.1f} GiB + KV cache {kv / GIB:.1f} GiB + activations "
            f"{activation_bytes / GIB:.2f} GiB of {where}; room for {tokens:,} KV tokens"
        )
    return MemoryEstimate(
        capacity, usable, weights, per_stage[s], per_token, kv, activation_bytes, tokens, need <= usable, verdict, fix
    )
