"""Parameter counts: every weight tensor of a model, its component and sharding.

One list (`layer_tensors`, `model_tensors`) is the single source of truth for
parameter counts (`count_params`, ``moesim inspect``) and for weight bytes per
GPU under a parallel layout (`model.memory`).

Active parameters are the weights one token's forward pass uses: everything
but the routed experts, plus ``top_k`` of them per MoE layer. Publishers
differ on embeddings: Mistral, Qwen, Databricks and AllenAI count the input
embedding and the LM head (``active``); DeepSeek and OpenAI leave out the
input embedding, a row lookup (``active_excl_input_embedding``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import pandas as pd

from moesim.model.spec import ModelSpec

Component = Literal["attention", "dense_ffn", "routed_experts", "shared_experts", "router", "norms", "embeddings"]
#: How a parallel layout splits a tensor across GPUs:
#: ``heads`` / ``ffn`` / ``vocab``: divided by the tensor-parallel size;
#: ``kv_heads``: divided by min(tp, kv heads) (replicated beyond);
#: ``experts``: divided by the expert-parallel size and the expert-TP size;
#: ``replicated``: a full copy on every GPU.
Shard = Literal["heads", "kv_heads", "ffn", "vocab", "experts", "replicated"]

COMPONENTS: tuple[str, ...] = (
    "attention",
    "dense_ffn",
    "routed_experts",
    "shared_experts",
    "router",
    "norms",
    "embeddings",
)


@dataclass(frozen=True)
class Tensor:
    """One weight tensor (or a bias) of one layer.

    Attributes:
        name: HF-style name without the layer prefix (``q_proj``...).
        component: which part of the model it belongs to.
        params: number of parameters (all experts together for routed ones).
        shard: how a layout splits it (see `Shard`).
        quantized: stored at the linear-weight dtype; False: kept in 16-bit.
    """

    name: str
    component: Component
    params: int
    shard: Shard
    quantized: bool


def _attention(m: ModelSpec) -> list[Tensor]:
    a, h = m.attention, m.hidden_size
    out: list[Tensor] = []
    if a.kind == "mla":
        heads_qk = a.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim)
        if a.q_lora_rank:
            out += [
                Tensor("q_a_proj", "attention", h * a.q_lora_rank, "replicated", True),
                Tensor("q_a_layernorm", "attention", a.q_lora_rank, "replicated", False),
                Tensor("q_b_proj", "attention", a.q_lora_rank * heads_qk, "heads", True),
            ]
        else:
            out.append(Tensor("q_proj", "attention", h * heads_qk, "heads", True))
        out += [
            Tensor("kv_a_proj_with_mqa", "attention", h * (a.kv_lora_rank + a.qk_rope_head_dim), "replicated", True),
            Tensor("kv_a_layernorm", "attention", a.kv_lora_rank, "replicated", False),
            Tensor(
                "kv_b_proj",
                "attention",
                a.kv_lora_rank * a.num_heads * (a.qk_nope_head_dim + a.v_head_dim),
                "heads",
                True,
            ),
            Tensor("o_proj", "attention", a.num_heads * a.v_head_dim * h, "heads", True),
        ]
        return out
    kv_width = a.num_kv_heads * a.head_dim
    out += [
        Tensor("q_proj", "attention", h * a.q_dim, "heads", True),
        Tensor("k_proj", "attention", h * kv_width, "kv_heads", True),
        Tensor("v_proj", "attention", h * a.num_kv_heads * a.v_head_dim, "kv_heads", True),
        Tensor("o_proj", "attention", a.num_heads * a.v_head_dim * h, "heads", True),
    ]
    if a.qkv_bias:
        out += [
            Tensor("q_bias", "attention", a.q_dim, "heads", False),
            Tensor("kv_bias", "attention", kv_width + a.num_kv_heads * a.v_head_dim, "kv_heads", False),
        ]
    if a.o_bias:
        out.append(Tensor("o_bias", "attention", h, "replicated", False))
    if a.qk_norm == "head":
        out.append(Tensor("qk_norm", "attention", 2 * a.head_dim, "replicated", False))
    elif a.qk_norm == "full":
        out += [
            Tensor("q_norm", "attention", a.q_dim, "heads", False),
            Tensor("k_norm", "attention", kv_width, "kv_heads", False),
        ]
    if a.sinks:
        out.append(Tensor("sinks", "attention", a.num_heads, "heads", False))
    return out


def _ffn(h: int, width: int, component: Component, shard: Shard, bias: bool, n: int = 1) -> list[Tensor]:
    """A gated (SwiGLU-style) FFN: gate and up (h -> width), down (width -> h); ``n`` copies."""
    out = [
        Tensor("gate_up_proj", component, n * 2 * h * width, shard, True),
        Tensor("down_proj", component, n * width * h, shard, True),
    ]
    if bias:
        out += [
            Tensor("gate_up_bias", component, n * 2 * width, shard, False),
            Tensor("down_bias", component, n * h, "replicated" if shard != "experts" else shard, False),
        ]
    return out


def layer_tensors(m: ModelSpec, layer: int) -> tuple[Tensor, ...]:
    """The weight tensors of decoder layer ``layer`` (norms included)."""
    return _layer_tensors(m, m.moe_layers[layer])


@lru_cache(maxsize=256)
def _layer_tensors(m: ModelSpec, is_moe: bool) -> tuple[Tensor, ...]:
    h = m.hidden_size
    out = _attention(m)
    out.append(Tensor("layernorms", "norms", 2 * h, "replicated", False))
    if is_moe and m.moe is not None:
        moe = m.moe
        out.append(Tensor("router", "router", h * moe.num_experts, "replicated", False))
        if moe.router_bias:
            out.append(Tensor("router_bias", "router", moe.num_experts, "replicated", False))
        if moe.score_correction_bias:
            out.append(Tensor("e_score_correction_bias", "router", moe.num_experts, "replicated", False))
        out += _ffn(h, moe.intermediate_size, "routed_experts", "experts", moe.expert_bias, n=moe.num_experts)
        if moe.shared_intermediate_size:
            out += _ffn(h, moe.shared_intermediate_size, "shared_experts", "ffn", False)
            if moe.shared_expert_gate:
                out.append(Tensor("shared_expert_gate", "shared_experts", h, "replicated", False))
    else:
        out += _ffn(h, m.dense_intermediate_size, "dense_ffn", "ffn", m.mlp_bias)
    return tuple(out)


def embedding_tensors(m: ModelSpec) -> tuple[Tensor, ...]:
    """Input embedding, final norm and (unless tied) the LM head."""
    out = [
        Tensor("embed_tokens", "embeddings", m.vocab_size * m.hidden_size, "vocab", False),
        Tensor("final_norm", "norms", m.hidden_size, "replicated", False),
    ]
    if not m.tie_embeddings:
        out.append(Tensor("lm_head", "embeddings", m.vocab_size * m.hidden_size, "vocab", False))
    return tuple(out)


@dataclass(frozen=True)
class LayerGroup:
    """Consecutive layers of one structure: ``first``..``last`` inclusive."""

    first: int
    last: int
    is_moe: bool
    window: int | None
    chunk: int | None = None
    rope: bool = True

    @property
    def count(self) -> int:
        """Number of layers in the group."""
        return self.last - self.first + 1

    @property
    def label(self) -> str:
        """E.g. ``3-60 moe``, ``0 dense``, ``0-2 moe chunk8192`` or ``3 moe nope``."""
        span = f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"
        return f"{span} {_kind(self.is_moe, self.window, self.chunk, self.rope)}"


def _kind(is_moe: bool, window: int | None, chunk: int | None, rope: bool) -> str:
    """``moe`` / ``dense``, then ``swa<window>`` or ``chunk<chunk>`` when the attention is local, ``nope`` without
    rotary embedding."""
    local = (f" swa{window}" if window else "") + (f" chunk{chunk}" if chunk else "")
    return ("moe" if is_moe else "dense") + local + ("" if rope else " nope")


def layer_groups(m: ModelSpec, layers: Iterable[int] | None = None) -> list[LayerGroup]:
    """Runs of consecutive layers with the same FFN kind, attention window, attention chunk and rotary use."""
    groups: list[LayerGroup] = []
    for i in layers if layers is not None else range(m.num_layers):
        key = (m.moe_layers[i], m.windows[i], m.chunk_of(i), m.uses_rope(i))
        g = groups[-1] if groups else None
        if g is not None and g.last == i - 1 and (g.is_moe, g.window, g.chunk, g.rope) == key:
            groups[-1] = LayerGroup(g.first, i, g.is_moe, g.window, g.chunk, g.rope)
        else:
            groups.append(LayerGroup(i, i, *key))
    return groups


@dataclass(frozen=True)
class LayerSet:
    """Layers of one structure, consecutive or not (an op model unit).

    Attributes:
        layers: the layer indices, ascending.
        is_moe: MoE FFN (else dense).
        window: sliding-attention window, or None.
        chunk: chunked-local-attention chunk (tokens), or None.
        rope: the layers rotate q and k (False: Llama 4's NoPE layers).
    """

    layers: tuple[int, ...]
    is_moe: bool
    window: int | None
    chunk: int | None = None
    rope: bool = True

    @property
    def count(self) -> int:
        """Number of layers in the set."""
        return len(self.layers)

    @property
    def first(self) -> int:
        """The lowest layer index."""
        return self.layers[0]

    @property
    def label(self) -> str:
        """``3-60 moe`` when consecutive, else e.g. ``moe swa128 x18`` or ``moe chunk8192 x36``."""
        kind = _kind(self.is_moe, self.window, self.chunk, self.rope)
        lo, hi = self.layers[0], self.layers[-1]
        if hi - lo + 1 == len(self.layers):
            return f"{lo} {kind}" if lo == hi else f"{lo}-{hi} {kind}"
        return f"{kind} x{len(self.layers)}"


def layer_sets(m: ModelSpec, layers: Iterable[int] | None = None, split_moe: bool = False) -> list[LayerSet]:
    """Layers grouped by (MoE or dense, window, chunk, rotary use), in order of first appearance.

    With ``split_moe`` every MoE layer is its own set (per-layer routing).
    """
    sets: dict[tuple[object, ...], list[int]] = {}
    for i in layers if layers is not None else range(m.num_layers):
        key: tuple[object, ...] = (m.moe_layers[i], m.windows[i], m.chunk_of(i), m.uses_rope(i))
        if split_moe and m.moe_layers[i]:
            key = (*key, i)
        sets.setdefault(key, []).append(i)
    return [LayerSet(tuple(ls), bool(k[0]), k[1], k[2], bool(k[3])) for k, ls in sets.items()]  # type: ignore[arg-type]


@dataclass(frozen=True)
class ParamCounts:
    """Total and active parameters of a model, by component.

    Attributes:
        total: all parameters (DeepSeek MTP layers excluded).
        active: parameters one token uses, input embedding and LM head included.
        active_excl_input_embedding: ``active`` without the input embedding.
        by_component: total parameters per component (see `COMPONENTS`).
        active_by_component: active parameters per component.
        per_layer: per layer group, parameters per component.
    """

    total: int
    active: int
    active_excl_input_embedding: int
    by_component: dict[str, int]
    active_by_component: dict[str, int]
    per_layer: list[tuple[LayerGroup, dict[str, int]]] = field(default_factory=list)


def count_params(m: ModelSpec) -> ParamCounts:
    """Count total and active parameters, by component and by layer group."""
    total = dict.fromkeys(COMPONENTS, 0)
    active = dict.fromkeys(COMPONENTS, 0)
    per_layer = []
    for g in layer_groups(m):
        comp = dict.fromkeys(COMPONENTS, 0)
        for t in _layer_tensors(m, g.is_moe):
            comp[t.component] += t.params
            share = (m.moe.top_k / m.moe.num_experts) if t.component == "routed_experts" and m.moe else 1.0
            active[t.component] += round(t.params * share) * g.count
        for c in COMPONENTS:
            total[c] += comp[c] * g.count
        per_layer.append((g, {c: v for c, v in comp.items() if v}))
    for t in embedding_tensors(m):
        total[t.component] += t.params
        active[t.component] += t.params
    embed = m.vocab_size * m.hidden_size
    all_active = sum(active.values())
    return ParamCounts(
        total=sum(total.values()),
        active=all_active,
        active_excl_input_embedding=all_active - embed,
        by_component=total,
        active_by_component=active,
        per_layer=per_layer,
    )


PUBLISHED_CSV = Path(__file__).parent / "data" / "published_params.csv"


def published_params() -> pd.DataFrame:
    """Publishers' total and active parameter counts of the presets.

    Columns: model, total, active (parameters), convention (``all``: input
    embedding and LM head counted; ``excl_input``: input embedding left out,
    as DeepSeek and OpenAI count), not_modelled (parameters the published
    total counts that moesim does not model: Llama 4's vision encoder, adapter
    and projector, summed from ``vision_config`` as ``model/presets/SOURCES.md``
    shows; compare ``count_params(m).total + not_modelled`` with ``total``),
    source (URL).
    """
    return pd.read_csv(PUBLISHED_CSV)


def published_active(c: ParamCounts, convention: str) -> int:
    """Our active count in a publisher's ``convention``."""
    return c.active if convention == "all" else c.active_excl_input_embedding
