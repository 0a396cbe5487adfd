"""What is simulated: a model's architecture as frozen dataclasses.

`ModelSpec` is read from a Hugging Face ``config.json`` by
`model.hf_config.model_from_config`; everything downstream (parameter counts,
the operator model, memory, CAP metrics) reads only these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AttentionKind = Literal["mha", "gqa", "mla"]


@dataclass(frozen=True)
class AttentionSpec:
    """One decoder layer's self-attention.

    Attributes:
        kind: ``mha`` (kv heads == heads), ``gqa`` (fewer kv heads) or ``mla``
            (DeepSeek's multi-head latent attention).
        num_heads: query heads.
        num_kv_heads: key/value heads (MLA: equal to ``num_heads`` once the
            latent is up-projected).
        head_dim: query/key head dimension (MLA: nope + rope dims).
        v_head_dim: value head dimension.
        qkv_bias: q, k and v projections carry a bias.
        o_bias: the output projection carries a bias.
        qk_norm: ``head`` (RMSNorm over each head, Qwen3), ``l2`` (a weightless
            RMS norm over each head, on RoPE layers only, Llama 4), ``full`` (over the
            whole q and k projections, OLMoE) or ``none``.
        sinks: one learned attention-sink logit per head (gpt-oss).
        q_lora_rank: MLA query low-rank dimension (None: a full q projection).
        kv_lora_rank: MLA compressed KV dimension (the cached latent).
        qk_nope_head_dim: MLA per-head query/key dimension without RoPE.
        qk_rope_head_dim: MLA decoupled RoPE key dimension (cached, shared by
            all heads).
    """

    kind: AttentionKind
    num_heads: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: Literal["none", "head", "full", "l2"] = "none"
    sinks: bool = False
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0

    @property
    def q_dim(self) -> int:
        """Width of all query heads together (elements)."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of all key heads together (elements; values use v_head_dim)."""
        return self.num_kv_heads * self.head_dim

    @property
    def kv_cache_elems_per_token(self) -> int:
        """Cached elements per token per layer, before any sharding.

        GQA/MHA cache K and V for every kv head; MLA caches one compressed
        latent plus the shared RoPE key.
        """
        if self.kind == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim
        return self.num_kv_heads * (self.head_dim + self.v_head_dim)


@dataclass(frozen=True)
class MoESpec:
    """The routed-expert block of a MoE layer.

    Attributes:
        num_experts: routed experts per MoE layer.
        top_k: experts each token is routed to.
        intermediate_size: each routed expert's FFN width.
        shared_intermediate_size: total FFN width of the always-active shared
            experts (0: none). DeepSeek: ``n_shared_experts x
            moe_intermediate_size``; Qwen1.5-MoE: ``shared_expert_intermediate_size``.
        num_shared_experts: how many shared experts that width is made of.
        shared_expert_gate: a sigmoid gate (hidden -> 1) scales the shared
            expert's output (Qwen1.5-MoE).
        n_group: expert groups for group-limited routing (1: none).
        topk_group: groups a token may choose experts from.
        scoring: router score function, ``softmax`` or ``sigmoid``.
        router_bias: the router linear carries a bias (gpt-oss).
        score_correction_bias: a per-expert bias added for selection only
            (DeepSeek-V3's auxiliary-loss-free balancing).
        expert_bias: each expert's projections carry biases (gpt-oss).
    """

    num_experts: int
    top_k: int
    intermediate_size: int
    shared_intermediate_size: int = 0
    num_shared_experts: int = 0
    shared_expert_gate: bool = False
    n_group: int = 1
    topk_group: int = 1
    scoring: str = "softmax"
    router_bias: bool = False
    score_correction_bias: bool = False
    expert_bias: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, dense or MoE.

    Attributes:
        name: preset name or the config's path.
        family: the config's ``model_type`` (``mixtral``, ``deepseek_v3``...).
        hidden_size: residual-stream width.
        num_layers: decoder layers (DeepSeek's MTP layers excluded).
        vocab_size: vocabulary entries.
        tie_embeddings: the LM head shares the input embedding matrix.
        attention: the self-attention of every layer.
        dense_intermediate_size: FFN width of the dense (non-MoE) layers
            (0 when every layer is MoE).
        moe: the routed experts, or None for a dense model.
        moe_layers: per layer, True where the FFN is a MoE block.
        windows: per layer, the sliding-attention window in tokens, or None
            for full attention.
        chunks: per layer, the chunk of chunked local attention in tokens
            (Llama 4's RoPE layers: a token attends only to the earlier tokens
            of its own ``attention_chunk_size`` chunk), or None; empty (the
            default) means no layer is chunked. See `chunk_of`.
        rope: per layer, False where the layer applies no rotary embedding
            (Llama 4's NoPE layers); empty (the default): every layer does.
            See `uses_rope`.
        mlp_bias: dense FFN projections carry biases.
        mtp_layers: DeepSeek-V3 multi-token-prediction layers in the
            checkpoint, not counted in ``num_layers`` or the parameters.
        max_position_embeddings: longest context the config declares.
        checkpoint_weights: the linear layers' weight format the checkpoint ships (a `model.dtypes.WEIGHT_DTYPES`
            name: ``bf16``, ``fp8`` per-tensor/channel, ``fp8_block``, ``int4`` W4A16, ``fp4`` MXFP4...), read from
            the config's ``quantization_config`` (`model.hf_config.checkpoint_weights`): the precision a scenario,
            ``moesim roofline`` or a sweep uses when it names none.
        quantization: how ``checkpoint_weights`` was read, in words (empty for an unquantized checkpoint).
    """

    name: str
    family: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    tie_embeddings: bool
    attention: AttentionSpec
    dense_intermediate_size: int
    moe: MoESpec | None
    moe_layers: tuple[bool, ...]
    windows: tuple[int | None, ...]
    mlp_bias: bool = False
    mtp_layers: int = 0
    max_position_embeddings: int = 0
    chunks: tuple[int | None, ...] = ()
    rope: tuple[bool, ...] = ()
    checkpoint_weights: str = "bf16"
    quantization: str = ""

    def chunk_of(self, layer: int) -> int | None:
        """The attention chunk of ``layer`` in tokens, or None when the layer is not chunked."""
        return self.chunks[layer] if self.chunks else None

    def uses_rope(self, layer: int) -> bool:
        """True when ``layer`` rotates q and k (False on Llama 4's NoPE layers)."""
        return self.rope[layer] if self.rope else True

    @property
    def is_moe(self) -> bool:
        """True when at least one layer is a MoE block."""
        return self.moe is not None and any(self.moe_layers)

    @property
    def num_moe_layers(self) -> int:
        """Number of MoE layers."""
        return sum(self.moe_layers)

    @property
    def num_dense_layers(self) -> int:
        """Number of layers with a dense FFN."""
        return self.num_layers - self.num_moe_layers
