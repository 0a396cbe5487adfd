"""Memory per GPU: weights under a layout, the KV cache, activations, and a verdict.

Weights per GPU follow each tensor's sharding (`model.params.Tensor.shard`);
with pipeline parallelism the fullest stage is reported. The KV cache per
token counts the layers of that stage: GQA caches ``ceil(kv_heads / tp)`` heads
per GPU, MLA caches its latent in full on every TP rank. ``mem_fraction`` of
the device is usable (vLLM's default ``gpu_memory_utilization`` is 0.9).

Chunked local attention (Llama 4: ``attention_chunk_size`` 8192 on 3 of every 4 layers) keeps only the current
chunk's KV: vLLM's hybrid KV-cache manager (on for chunked local attention by default in current vLLM:
``VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE`` defaults to 1 in vllm-project/vllm@vllm/envs.py; releases
before that defaulted to 0 and kept every token on every layer) splits a stage's attention layers into KV-cache
groups of equal size, one block table each, sharing one pool of pages (vllm-project/vllm@docs/design/
hybrid_kv_cache_manager.md): a full-attention group holds a block for every token of a request, a chunked-local
group only those of the chunk being attended (``ChunkedLocalAttentionManager`` frees the blocks before it).
Sliding-window layers (gpt-oss: ``sliding_window`` 128 on alternate layers) form groups the same way (the hybrid
manager is on for them by default): ``SlidingWindowManager.remove_skipped_blocks`` frees every block wholly before
token ``computed - window + 1`` (vllm-project/vllm@vllm/v1/core/single_type_kv_cache_manager.py), so a request holds
at most ``cdiv(window - 1, block_size) + 1`` blocks on such a group, the ``+ 1`` because the window need not start at
a block boundary (``SlidingWindowSpec.max_memory_usage_bytes``, vllm-project/vllm@vllm/v1/kv_cache_interface.py).
`kv_groups` says how a stage's layers group; `KvGroups.blocks` counts a request's pages.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.model.batch import Batch
from moesim.model.dtypes import Precision, dtype_bytes
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
class KvGroups:
    """How vLLM's hybrid KV-cache manager groups one pipeline stage's attention layers (see the module docstring).

    A page holds ``block_size`` tokens of every layer of one group; a request holds, per group, a page for each block
    of its tokens (full attention) or of the tokens it still attends (chunked local attention: at most ``local_tokens``
    since the chunk's start; sliding window: the last ``local_tokens``, one block of slack). Without local layers it is
    one group of all the stage's layers: a request holds ``ceil(tokens / block_size)`` pages, as a plain paged cache
    does.

    Attributes:
        group_layers: layers per group (vLLM: the smallest layer count among the attention types; a type whose count
            is not a multiple of it gets a padded group).
        full_groups: groups of full-attention layers.
        local_groups: groups of local layers (chunked or sliding-window).
        local_tokens: most tokens a request attends per local layer: the chunk (``attention_chunk_size``) or the
            window (``sliding_window``) (0 without local layers; the largest when a stage mixes sizes). A
            chunked-prefill step that crosses a chunk start, or whose new tokens outrun the window, briefly holds the
            new tokens too (vLLM sizes its admission for window + ``max_num_batched_tokens``); not counted.
        page_bytes_per_token: KV bytes one group holds per token on one GPU (a page is this x ``block_size``).
        sliding: the local layers slide a window (True) rather than attend in chunks (False).
    """

    group_layers: int
    full_groups: int
    local_groups: int
    local_tokens: int
    page_bytes_per_token: float
    sliding: bool = False

    @property
    def groups(self) -> int:
        """KV-cache groups (block tables) of a request."""
        return self.full_groups + self.local_groups

    def local_blocks(self, block_size: int) -> int:
        """Most pages a request holds on one local group: ``cdiv(chunk, block_size)``, or for a sliding window
        ``cdiv(window - 1, block_size) + 1`` (vLLM's ``SlidingWindowSpec.max_memory_usage_bytes`` with no new
        tokens)."""
        if self.sliding:
            return -(-(self.local_tokens - 1) // block_size) + 1
        return -(-self.local_tokens // block_size)

    def blocks(self, tokens: Any, block_size: int) -> Any:
        """Pages a request of ``tokens`` cached tokens holds (int or int array, like ``tokens``), non-decreasing in
        ``tokens``: a local group holds ``min(cdiv(tokens, block_size), local_blocks)`` (the most it holds at any
        length up to ``tokens``; a sliding group's count alternates between ``local_blocks`` and one less)."""
        full = -(-tokens // block_size)
        if not self.local_groups:
            return full if self.full_groups == 1 else full * self.full_groups
        local = np.minimum(full, self.local_blocks(block_size))
        return self.full_groups * full + self.local_groups * local

    def bytes_for(self, tokens: float) -> float:
        """KV bytes a request of ``tokens`` cached tokens holds on one GPU (before block rounding)."""
        local = min(tokens, self.local_tokens) if self.local_groups else 0.0
        return self.page_bytes_per_token * (self.full_groups * tokens + self.local_groups * local)


def kv_groups(
    model: ModelSpec, layout: Layout, precision: Precision, layers: range | None = None, *, hybrid: bool = True
) -> KvGroups:
    """The KV-cache groups of ``layers`` (default: all) on one GPU (`KvGroups`).

    ``hybrid=False``: vLLM with the hybrid manager off (``--disable-hybrid-kv-cache-manager``, or releases that
    turned it off for chunked local attention): one group, every layer holding every token. A layer that is both
    chunked and windowed counts as chunked.
    """
    layers = layers if layers is not None else range(model.num_layers)
    n = len(layers)
    spans = {i: model.chunk_of(i) or model.windows[i] or 0 for i in layers} if hybrid else {}
    local = sum(1 for v in spans.values() if v)
    full = n - local
    if not local or not full:
        group, n_full, n_local = max(n, 1), int(full > 0 or not local), int(local > 0 and not full)
    else:
        group = min(full, local)
        n_full, n_local = -(-full // group), -(-local // group)
    span = max(spans.values()) if local else 0
    sliding = local > 0 and not any(model.chunk_of(i) for i in layers)
    page = kv_bytes_per_token(model, layout, precision, range(group))
    return KvGroups(group, n_full, n_local, int(span), page, sliding)


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
        kv_groups: the fullest stage's KV-cache groups (`kv_groups`): what one request's cache costs
            (`sequences_at`).
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
    kv_groups: KvGroups | None = None

    def sequences_at(self, context_tokens: int) -> int:
        """Sequences of ``context_tokens`` cached tokens each whose KV cache fits beside the weights and activations
        (chunked and sliding-window layers holding their chunk or window only: `KvGroups.bytes_for`;
        ``kv_capacity_tokens // context_tokens`` without such layers)."""
        free = self.usable_bytes - self.weight_bytes - self.activation_bytes
        if context_tokens <= 0 or free <= 0:
            return 0
        if self.kv_groups is None or not self.kv_groups.local_groups:
            return self.kv_capacity_tokens // context_tokens
        return int(free // self.kv_groups.bytes_for(context_tokens))


def estimate_memory(
    model: ModelSpec,
    layout: Layout,
    gpu: HardwareSpec,
    precision: Precision | None = None,
    batch: Batch | None = None,
    activation_bytes: float = 0.0,
    mem_fraction: float = DEFAULT_MEM_FRACTION,
    expert_slots: int | None = None,
) -> MemoryEstimate:
    """Weights, KV cache and activations on the fullest GPU against ``mem_fraction`` of its memory.

    Args:
        model, layout, gpu, precision: what runs where.
        batch: the step's batch (its KV cache and, with ``dp_attn``, the
            busiest group's share); None: weights only.
        activation_bytes: the step's peak activation bytes (from the op model).
        mem_fraction: usable share of device memory.
        expert_slots: routed-expert slots per MoE layer over the expert-parallel group when a placement adds
            redundant experts (SGLang's ``--ep-num-redundant-experts``: 256 experts in 288 slots); each slot holds
            a whole expert's weights, so a GPU holds ``expert_slots / ep`` experts, not ``experts / ep``. None: one
            slot per expert.
    """
    p = precision or Precision()
    per_stage = weight_bytes_per_gpu(model, layout, p)
    if expert_slots and model.moe is not None and expert_slots != model.moe.num_experts:
        scale = expert_slots / model.moe.num_experts
        per_stage = [{k: v * scale if k == "routed_experts" else v for k, v in st.items()} for st in per_stage]
    stages = layout.stage_layers(model)
    s = max(range(len(per_stage)), key=lambda i: sum(per_stage[i].values()))
    weights = sum(per_stage[s].values())
    per_token = kv_bytes_per_token(model, layout, p, stages[s])
    kv = 0.0
    if batch is not None:
        group = max(batch.split(layout.dp_attn), key=lambda b: b.kv_tokens_read())
        kv = kv_bytes_for_batch(model, layout, p, group, stages[s])
    capacity = gpu.engine_memory_bytes  # what the engine's memory fraction multiplies (the CUDA-reported total)
    usable = capacity * mem_fraction
    free = usable - weights - activation_bytes
    tokens = int(max(free, 0.0) // per_token) if per_token else 0
    need = weights + kv + activation_bytes
    where = f"{gpu.key} ({capacity / GIB:g} GiB x {mem_fraction:.2f} = {usable / GIB:.1f} GiB usable)"
    # a smaller weight dtype only where one exists (DeepSeek-V3's checkpoint is already fp8)
    smaller = [d for d in ("fp8", "int4") if dtype_bytes(d) < dtype_bytes(p.weights.removesuffix("_block"))]
    options = ["more GPUs (--tp/--ep/--pp)"] + ([f"a smaller --dtype ({', '.join(smaller)})"] if smaller else [])
    fix = f"{', '.join(options)} or a GPU with more memory"
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
    groups = kv_groups(model, layout, p, stages[s])
    return MemoryEstimate(
        capacity, usable, weights, per_stage[s], per_token, kv, activation_bytes, tokens, need <= usable, verdict, fix,
        groups,
    )  # fmt: skip
