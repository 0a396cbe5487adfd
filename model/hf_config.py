"""Read a `ModelSpec` from a Hugging Face ``config.json`` (a path or a dict).

Supported ``model_type`` values: llama, mistral, qwen2, qwen3 (dense);
mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, dbrx, gpt_oss,
llama4 / llama4_text (MoE). A config that lacks a key the family needs, or holds
inconsistent values, raises `ConfigError` listing every such key at once.

A ``quantization_config`` sets the checkpoint's weight format (`checkpoint_weights`:
DeepSeek-V3's block-scaled fp8 is ``fp8_block``, gpt-oss's MXFP4 ``fp4``, AWQ/GPTQ
``int4``), which scenarios, ``moesim roofline`` and sweeps use when they name no
weights; a ``quant_method`` moesim cannot map is one `ConfigError` line, not a silent
16-bit fallback (that would double the weights' memory and pick another kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from moesim.model import inputs
from moesim.model.errors import ConfigError, MoesimError
from moesim.model.limits import MAX_CONTEXT, MAX_EXPERTS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH
from moesim.model.spec import AttentionSpec, ModelSpec, MoESpec

PRESET_DIR = Path(__file__).parent / "presets"

_FIX = "use the model's original config.json from its Hugging Face repository"

#: The largest value each integer key may hold (`model.limits`); other keys: `MAX_WIDTH`.
_LIMITS = {
    "num_hidden_layers": MAX_LAYERS,
    "n_layers": MAX_LAYERS,
    "first_k_dense_replace": MAX_LAYERS,
    "decoder_sparse_step": MAX_LAYERS,
    "moe_layer_freq": MAX_LAYERS,
    "num_nextn_predict_layers": MAX_LAYERS,
    "num_local_experts": MAX_EXPERTS,
    "num_experts": MAX_EXPERTS,
    "n_routed_experts": MAX_EXPERTS,
    "moe_num_experts": MAX_EXPERTS,
    "num_experts_per_tok": MAX_EXPERTS,
    "moe_top_k": MAX_EXPERTS,
    "experts_per_token": MAX_EXPERTS,
    "n_group": MAX_EXPERTS,
    "topk_group": MAX_EXPERTS,
    "n_shared_experts": MAX_EXPERTS,
    "vocab_size": MAX_VOCAB,
    "max_position_embeddings": MAX_CONTEXT,
    "max_seq_len": MAX_CONTEXT,
    "sliding_window": MAX_CONTEXT,
    "interleave_moe_layer_step": MAX_LAYERS,
    "no_rope_layer_interval": MAX_LAYERS,
    "attention_chunk_size": MAX_CONTEXT,
}


class _Keys:
    """Reads keys from a config, collecting every missing or bad one."""

    def __init__(self, cfg: Mapping[str, Any], family: str, where: str) -> None:
        self.cfg = cfg
        self.family = family
        self.where = where
        self.missing: list[str] = []
        self.bad: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        """An optional key (``default`` when absent or null)."""
        value = self.cfg.get(key, default)
        return default if value is None else value

    def int(self, key: str, default: int | None = None, *, minimum: int = 1) -> int:
        """A required integer key (or ``default`` when given and absent), from ``minimum`` to its limit
        (`_LIMITS`, else `MAX_WIDTH`)."""
        value = self.cfg.get(key)
        if value is None:
            if default is not None:
                return default
            self.missing.append(key)
            return minimum
        top = _LIMITS.get(key, MAX_WIDTH)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= top:
            self.bad.append(f"{key}={value!r} (need an integer from {minimum} to {top:,})")
            return minimum
        return value

    def optional_int(self, key: str, *, minimum: int = 0) -> int | None:
        """An optional integer key: None when absent or null, else checked as `int` does."""
        return None if self.cfg.get(key) is None else self.int(key, minimum=minimum)

    def check(self, ok: bool, text: str) -> None:
        """Record an inconsistency unless ``ok``."""
        if not ok:
            self.bad.append(text)

    def raise_if_any(self) -> None:
        """Raise one `ConfigError` naming every missing and inconsistent key."""
        parts = []
        if self.missing:
            parts.append("missing keys: " + ", ".join(self.missing))
        if self.bad:
            parts.append("inconsistent keys: " + "; ".join(self.bad))
        if parts:
            raise ConfigError(f"{self.where} ({self.family}): " + "; ".join(parts), _FIX)


def _gqa(
    k: _Keys, hidden: int, *, qkv_bias: bool = False, qk_norm: str = "none", sinks: bool = False, o_bias: bool = False
) -> AttentionSpec:
    heads = k.int("num_attention_heads")
    kv_heads = k.int("num_key_value_heads", heads)
    head_dim = k.int("head_dim", max(hidden // heads, 1))
    k.check(heads % kv_heads == 0, f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    k.check(
        "head_dim" in k.cfg or hidden % heads == 0,
        f"hidden_size={hidden} is not a multiple of num_attention_heads={heads}",
    )
    return AttentionSpec(
        kind="mha" if kv_heads == heads else "gqa",
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        v_head_dim=head_dim,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        qk_norm=qk_norm,
        sinks=sinks,  # type: ignore[arg-type]
    )


def _windows(k: _Keys, layers: int) -> tuple[int | None, ...]:
    """Per-layer sliding windows from ``sliding_window`` and ``layer_types``."""
    window = k.optional_int("sliding_window", minimum=1)
    types = k.get("layer_types")
    if types is not None and not isinstance(types, list):
        k.check(False, f"layer_types={types!r} (need a list with one entry per layer)")
        types = None
    if types is not None:
        k.check(len(types) == layers, f"layer_types has {len(types)} entries, not num_hidden_layers={layers}")
        k.check(
            window is not None or "sliding_attention" not in types,
            "layer_types has sliding_attention layers but sliding_window is null",
        )
        return tuple(window if t == "sliding_attention" else None for t in types[:layers])
    if window is not None and k.get("use_sliding_window", True):
        return (window,) * layers
    return (None,) * layers


def _qwen_moe_layers(k: _Keys, layers: int) -> tuple[bool, ...]:
    step = k.int("decoder_sparse_step", 1)
    dense = set(k.get("mlp_only_layers", []))
    return tuple(i not in dense and (i + 1) % step == 0 for i in range(layers))


def _llama4(k: _Keys, name: str) -> ModelSpec:
    """Llama 4 (Scout, Maverick): the text model of ``Llama4ForConditionalGeneration``.

    The multimodal config nests the language model under ``text_config``; a text-only checkpoint
    (``model_type: llama4_text``) holds the same keys at the top. The vision tower
    (``vision_config``: encoder, adapter, projector) is not modelled. Meanings, from
    huggingface/transformers@src/transformers/models/llama4/configuration_llama4.py and
    modeling_llama4.py, and vllm-project/vllm@vllm/model_executor/models/llama4.py:

    - MoE layers: ``moe_layers`` when given, else every ``interleave_moe_layer_step``-th layer
      counted from ``step - 1`` (Scout: step 1, all 48; Maverick: step 2, the odd layers).
    - A MoE layer: ``num_local_experts`` routed experts of width ``intermediate_size``, top
      ``num_experts_per_tok`` by sigmoid of the router logits, beside one always-on shared expert
      of the same width (``Llama4TextMoe.shared_expert``); the router has no bias.
    - A dense layer: a SwiGLU MLP of width ``intermediate_size_mlp``.
    - Attention: ``no_rope_layers[i]`` is 1 on RoPE layers and 0 on NoPE layers (when the list is
      empty, every ``no_rope_layer_interval``-th layer, default 4, is NoPE). RoPE layers attend
      in chunks of ``attention_chunk_size`` tokens (vLLM's ``ChunkedLocalAttention``); NoPE
      layers attend globally. A ``layer_types`` list (``chunked_attention`` / ``full_attention``)
      overrides that derivation. ``use_qk_norm`` (default true) is a weightless per-head RMS norm
      (``Llama4TextL2Norm``) on RoPE layers: a kernel, no parameters (``qk_norm="l2"``).
    - ``tie_word_embeddings`` sits at the top of the multimodal config (default false).
    """
    outer = k
    if k.family == "llama4":
        text = k.cfg.get("text_config")
        if not isinstance(text, Mapping):
            raise ConfigError(
                f"{k.where} (llama4): "
                + ("missing keys: text_config" if text is None else f"text_config={text!r} is not a JSON object"),
                "a llama4 config.json nests the language model's keys under text_config; " + _FIX,
            )
        k = _Keys(text, k.family, k.where)
    hidden, layers = k.int("hidden_size"), k.int("num_hidden_layers")
    step = k.int("interleave_moe_layer_step", 1)
    listed = k.get("moe_layers")
    if listed is not None:
        ok = isinstance(listed, list) and all(isinstance(i, int) and 0 <= i < layers for i in listed)
        k.check(ok, f"moe_layers={listed!r} (need a list of layer indices from 0 to {layers - 1})")
        moe_set = set(listed) if ok else set()
    else:
        moe_set = set(range(step - 1, layers, step))
    moe_layers = tuple(i in moe_set for i in range(layers))
    width = k.int("intermediate_size")
    moe = MoESpec(
        num_experts=k.int("num_local_experts"),
        top_k=k.int("num_experts_per_tok"),
        intermediate_size=width,
        shared_intermediate_size=width,
        num_shared_experts=1,
        scoring="sigmoid",
    )
    dense = k.int("intermediate_size_mlp") if not all(moe_layers) else 0  # Scout: no dense layer
    chunk = k.optional_int("attention_chunk_size", minimum=1)
    rope = _llama4_rope_layers(k, layers)
    chunks = tuple(chunk if local else None for local in _llama4_local_layers(k, layers, rope))
    bias = bool(k.get("attention_bias", False))
    qk_norm = "l2" if k.get("use_qk_norm", True) else "none"  # transformers' default is True
    tie = outer.get("tie_word_embeddings", k.get("tie_word_embeddings", False))
    spec = _spec(
        k,
        name,
        hidden,
        layers,
        _gqa(k, hidden, qkv_bias=bias, o_bias=bias, qk_norm=qk_norm),
        dense_intermediate_size=dense,
        moe=moe if any(moe_layers) else None,
        moe_layers=moe_layers,
        chunks=chunks if chunk else (),
        rope=rope,
    )
    outer.missing += [f"text_config.{m}" for m in k.missing] if outer is not k else []
    outer.bad += k.bad if outer is not k else []
    return replace(spec, tie_embeddings=bool(tie))


def _llama4_local_layers(k: _Keys, layers: int, rope: tuple[bool, ...]) -> tuple[bool, ...]:
    """Per layer, True where Llama 4 attends in chunks: from ``layer_types`` when given, else the RoPE layers."""
    types = k.get("layer_types")
    if types is None:
        return rope
    ok = isinstance(types, list) and len(types) >= layers
    ok = ok and all(t in ("chunked_attention", "full_attention") for t in types[:layers])
    k.check(ok, f"layer_types={types!r} (need chunked_attention or full_attention for each of {layers} layers)")
    return tuple(t == "chunked_attention" for t in types[:layers]) if ok else (False,) * layers


def _llama4_rope_layers(k: _Keys, layers: int) -> tuple[bool, ...]:
    """Per layer, True where Llama 4 applies RoPE: ``no_rope_layers`` (1 = RoPE), else every layer but each
    ``no_rope_layer_interval``-th (default 4)."""
    rope = k.get("no_rope_layers")
    if rope:  # an empty list means "derive it", as transformers does
        ok = isinstance(rope, list) and len(rope) >= layers and all(v in (0, 1) for v in rope[:layers])
        k.check(ok, f"no_rope_layers={rope!r} (need 0 or 1 for each of {layers} layers)")
        return tuple(bool(v) for v in rope[:layers]) if ok else (False,) * layers
    interval = k.int("no_rope_layer_interval", 4)
    return tuple((i + 1) % interval != 0 for i in range(layers))


def _spec(k: _Keys, name: str, hidden: int, layers: int, attention: AttentionSpec, **fields: Any) -> ModelSpec:
    """A `ModelSpec` with the keys every family shares read from the config.

    ``fields`` gives the family-specific ones (``moe``, ``moe_layers``,
    ``dense_intermediate_size``...); windows default to full attention.
    """
    fields.setdefault("windows", (None,) * layers)
    fields.setdefault("moe", None)
    fields.setdefault("moe_layers", (fields["moe"] is not None,) * layers)
    fields.setdefault("max_position_embeddings", k.int("max_position_embeddings", 0, minimum=0))
    return ModelSpec(
        name=name,
        family=k.family,
        hidden_size=hidden,
        num_layers=layers,
        vocab_size=k.int("vocab_size"),
        tie_embeddings=bool(k.get("tie_word_embeddings", False)),
        attention=attention,
        **fields,
    )


def _dense(k: _Keys, name: str) -> ModelSpec:
    hidden, layers = k.int("hidden_size"), k.int("num_hidden_layers")
    attention = _gqa(
        k,
        hidden,
        qkv_bias=bool(k.get("attention_bias", k.family == "qwen2")),
        o_bias=bool(k.get("attention_bias", False)),
        qk_norm="head" if k.family == "qwen3" else "none",
    )
    return _spec(
        k,
        name,
        hidden,
        layers,
        attention,
        dense_intermediate_size=k.int("intermediate_size"),
        windows=_windows(k, layers),
        mlp_bias=bool(k.get("mlp_bias", False)),
    )


def _mixtral(k: _Keys, name: str) -> ModelSpec:
    hidden, layers = k.int("hidden_size"), k.int("num_hidden_layers")
    moe = MoESpec(
        num_experts=k.int("num_local_experts"),
        top_k=k.int("num_experts_per_tok"),
        intermediate_size=k.int("intermediate_size"),
    )
    return _spec(
        k, name, hidden, layers, _gqa(k, hidden), dense_intermediate_size=0, moe=moe, windows=_windows(k, layers)
    )


def _qwen_moe(k: _Keys, name: str) -> ModelSpec:
    hidden, layers = k.int("hidden_size"), k.int("num_hidden_layers")
    qwen2 = k.family == "qwen2_moe"
    shared = k.int("shared_expert_intermediate_size", 0, minimum=0) if qwen2 else 0
    moe = MoESpec(
        num_experts=k.int("num_experts"),
        top_k=k.int("num_experts_per_tok"),
        intermediate_size=k.int("moe_intermediate_size"),
        shared_intermediate_size=shared,
        num_shared_experts=1 if shared else 0,
        shared_expert_gate=bool(shared),
    )
    moe_layers = _qwen_moe_layers(k, layers)
    dense_width = k.int("intermediate_size") if not all(moe_layers) else k.int("intermediate_size", 0, minimum=0)
    attention = _gqa(
        k,
        hidden,
        qkv_bias=qwen2 or bool(k.get("attention_bias", False)),
        o_bias=False if qwen2 else bool(k.get("attention_bias", False)),
        qk_norm="none" if qwen2 else "head",
    )
    return _spec(
        k,
        name,
        hidden,
        layers,
        attention,
        dense_intermediate_size=dense_width,
        moe=moe,
        moe_layers=moe_layers,
        windows=_windows(k, layers) if k.get("use_sliding_window", False) else (None,) * layers,
    )


def _olmoe(k: _Keys, name: str) -> ModelSpec:
    hidden, layers = k.int("hidden_size"), k.int("num_hidden_layers")
    moe = MoESpec(
        num_experts=k.int("num_experts"),
        top_k=k.int("num_experts_per_tok"),
        intermediate_size=k.int("intermediate_size"),
    )
    return _spec(
        k,
        name,
        hidden,
        layers,
        _gqa(
            k,
            hidden,
            qkv_bias=bool(k.get("attention_bias", False)),
            o_bias=bool(k.get("attention_bias", False)),
            qk_norm="full",
        ),
        dense_intermediate_size=0,
        moe=moe,
    )


def _deepseek(k: _Keys, name: str) -> ModelSpec:
    hidden, layers = k.int("hidden_size"), k.int("num_hidden_layers")
    heads = k.int("num_attention_heads")
    q_lora = k.optional_int("q_lora_rank")
    nope, rope = k.int("qk_nope_head_dim"), k.int("qk_rope_head_dim")
    attention = AttentionSpec(
        kind="mla",
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=nope + rope,
        v_head_dim=k.int("v_head_dim"),
        qkv_bias=bool(k.get("attention_bias", False)),
        o_bias=bool(k.get("attention_bias", False)),
        q_lora_rank=int(q_lora) if q_lora else None,
        kv_lora_rank=k.int("kv_lora_rank"),
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope,
    )
    experts = k.optional_int("n_routed_experts")
    first_dense = k.int("first_k_dense_replace", 0, minimum=0)
    freq = k.int("moe_layer_freq", 1)
    moe = None
    moe_layers: tuple[bool, ...] = (False,) * layers
    if experts:
        n_group = k.int("n_group", 1)
        topk_group = k.int("topk_group", 1)
        n_shared = k.int("n_shared_experts", 0, minimum=0)
        width = k.int("moe_intermediate_size")
        moe = MoESpec(
            num_experts=int(experts),
            top_k=k.int("num_experts_per_tok"),
            intermediate_size=width,
            shared_intermediate_size=n_shared * width,
            num_shared_experts=n_shared,
            n_group=n_group,
            topk_group=topk_group,
            scoring=str(k.get("scoring_func", "softmax")),
            score_correction_bias=k.get("topk_method") == "noaux_tc",
        )
        k.check(int(experts) % n_group == 0, f"n_routed_experts={experts} is not a multiple of n_group={n_group}")
        k.check(topk_group <= n_group, f"topk_group={topk_group} > n_group={n_group}")
        k.check(first_dense <= layers, f"first_k_dense_replace={first_dense} > num_hidden_layers={layers}")
        moe_layers = tuple(i >= first_dense and i % freq == 0 for i in range(layers))
    return _spec(
        k,
        name,
        hidden,
        layers,
        attention,
        dense_intermediate_size=k.int("intermediate_size"),
        moe=moe,
        moe_layers=moe_layers,
        mtp_layers=k.int("num_nextn_predict_layers", 0, minimum=0),
    )


def _dbrx(k: _Keys, name: str) -> ModelSpec:
    hidden, layers = k.int("d_model"), k.int("n_layers")
    heads = k.int("n_heads")
    attn, ffn = k.get("attn_config", {}), k.get("ffn_config", {})
    sub_a = _Keys(attn, k.family, k.where)
    sub_f = _Keys(ffn, k.family, k.where)
    kv_heads = sub_a.int("kv_n_heads")
    moe = MoESpec(
        num_experts=sub_f.int("moe_num_experts"),
        top_k=sub_f.int("moe_top_k"),
        intermediate_size=sub_f.int("ffn_hidden_size"),
    )
    k.missing += [f"attn_config.{m}" for m in sub_a.missing] + [f"ffn_config.{m}" for m in sub_f.missing]
    k.bad += sub_a.bad + sub_f.bad
    k.check(hidden % heads == 0, f"d_model={hidden} is not a multiple of n_heads={heads}")
    k.check(heads % kv_heads == 0, f"n_heads={heads} is not a multiple of attn_config.kv_n_heads={kv_heads}")
    head_dim = max(hidden // heads, 1)
    attention = AttentionSpec(
        kind="mha" if kv_heads == heads else "gqa",
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        v_head_dim=head_dim,
    )
    return _spec(
        k,
        name,
        hidden,
        layers,
        attention,
        dense_intermediate_size=0,
        moe=moe,
        max_position_embeddings=k.int("max_seq_len", 0, minimum=0),
    )


def _gpt_oss(k: _Keys, name: str) -> ModelSpec:
    hidden, layers = k.int("hidden_size"), k.int("num_hidden_layers")
    top_key = "num_experts_per_tok" if k.cfg.get("num_experts_per_tok") is not None else "experts_per_token"
    top_k = k.optional_int(top_key, minimum=1)
    if top_k is None:
        k.missing.append("num_experts_per_tok")
    moe = MoESpec(
        num_experts=k.int("num_local_experts"),
        top_k=int(top_k or 1),
        intermediate_size=k.int("intermediate_size"),
        router_bias=True,
        expert_bias=True,
    )
    bias = bool(k.get("attention_bias", True))
    return _spec(
        k,
        name,
        hidden,
        layers,
        _gqa(k, hidden, qkv_bias=bias, o_bias=bias, sinks=True),
        dense_intermediate_size=0,
        moe=moe,
        windows=_windows(k, layers),
    )


#: ``quantization_config.quant_method`` values moesim reads (`checkpoint_weights`), and what each means.
QUANT_METHODS = {
    "fp8": "fp8 e4m3 weights; with weight_block_size (DeepSeek-V3, Qwen3-FP8: [128, 128]) block-scaled (fp8_block), "
    "else per-tensor scales (vLLM Fp8LinearMethod / Fp8MoEMethod, vllm/model_executor/layers/quantization/fp8.py)",
    "fbgemm_fp8": "fp8 weights with per-channel scales and dynamic per-token activations (fp8; Llama 4 Maverick FP8)",
    "mxfp4": "MXFP4 experts (fp4; gpt-oss: 4-bit values, one 8-bit scale per 32), 16-bit math on Hopper",
    "awq": "4-bit integer weights, 16-bit activations (int4 W4A16; vLLM runs Marlin: awq_marlin.py)",
    "gptq": "4-bit integer weights, 16-bit activations (int4 W4A16; vLLM runs Marlin: gptq_marlin.py)",
    "compressed-tensors": "llm-compressor's config_groups: fp8 (tensor/channel or block), int8 W8A8, int4 W4A16",
    "modelopt": "NVIDIA ModelOpt: quant_algo FP8 (fp8)",
}
_QUANT_FIX = (
    f"moesim reads quant_method {', '.join(QUANT_METHODS)}; to model this checkpoint anyway, remove "
    "quantization_config from the config.json and choose the weights with --dtype or precision.weights"
)


def checkpoint_weights(cfg: Mapping[str, Any], where: str = "config") -> tuple[str, str]:
    """The weight format a checkpoint ships, from its ``quantization_config``: (a `model.dtypes.WEIGHT_DTYPES` name,
    how it was read in words).

    No ``quantization_config``: (``bf16``, ``""``): a 16-bit checkpoint (fp16 ones run the same 16-bit kernels).
    ``quant_method`` (`QUANT_METHODS`): ``fp8`` with ``weight_block_size`` -> ``fp8_block`` (vLLM's block-scaled
    path: ``Fp8Config.weight_block_size``, vllm-project/vllm@vllm/model_executor/layers/quantization/fp8.py), without
    -> ``fp8``; ``fbgemm_fp8`` -> ``fp8``; ``mxfp4`` -> ``fp4``; ``awq`` / ``gptq`` with ``bits: 4`` -> ``int4``;
    ``compressed-tensors`` -> the ``Linear`` group's weights (8-bit float: ``fp8``, or ``fp8_block`` with the
    ``block`` strategy; 8-bit int with 8-bit int activations: ``int8``; 4-bit int without activation quantization:
    ``int4``); ``modelopt`` with ``quant_algo: FP8`` -> ``fp8``. What moesim sizes and times differently from the
    checkpoint is said in the text (a block shape other than 128 x 128 is sized with 128 x 128 scales; layers the
    checkpoint leaves in 16 bits, e.g. gpt-oss's attention, take the same format as the others).

    Raises:
        ConfigError: one line naming the key and value moesim cannot map (another quant_method, another bit
            width, NVFP4...); the hint lists what it reads.
    """
    q = cfg.get("quantization_config")
    if q is None:
        return "bf16", ""
    if not isinstance(q, Mapping):
        raise ConfigError(f"{where}: quantization_config={q!r} is not a JSON object", _QUANT_FIX)
    method = str(q.get("quant_method", "")).lower().replace("_", "-") if q.get("quant_method") else ""
    method = {"fbgemm-fp8": "fbgemm_fp8"}.get(method, method)
    kept = q.get("modules_to_not_convert") or q.get("ignore") or []
    keep = f"; {len(kept)} module patterns kept in 16 bits are sized and timed like the others" if kept else ""
    if method == "fp8":
        block = q.get("weight_block_size")
        if block is None:
            return "fp8", f"quantization_config: fp8, per-tensor scales{keep}"
        if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise ConfigError(
                f"{where}: quantization_config.weight_block_size={block!r} (need two positive integers)", _QUANT_FIX
            )
        note = "" if block == [128, 128] else f" (sized and timed as 128 x 128; the checkpoint's are {block})"
        return "fp8_block", f"quantization_config: fp8, {block[0]} x {block[1]} weight blocks{note}{keep}"
    if method == "fbgemm_fp8":
        return "fp8", f"quantization_config: fbgemm_fp8, per-channel scales{keep}"
    if method == "mxfp4":
        return "fp4", f"quantization_config: mxfp4{keep}"
    if method in ("awq", "gptq"):
        bits = q.get("bits", q.get("w_bit"))
        if bits != 4:
            raise ConfigError(
                f"{where}: quantization_config.bits={bits!r} with quant_method {method} (moesim models 4-bit only)",
                _QUANT_FIX,
            )
        group = q.get("group_size", q.get("q_group_size", 128))
        note = "" if group == 128 else f" (sized with one scale per 128; the checkpoint's group is {group})"
        return "int4", f"quantization_config: {method} 4-bit, group {group}{note}{keep}"
    if method == "compressed-tensors":
        return _compressed_tensors(q, where, keep)
    if method == "modelopt":
        algo = str(q.get("quant_algo", "")).upper()
        if algo == "FP8":
            return "fp8", f"quantization_config: modelopt FP8{keep}"
        raise ConfigError(
            f"{where}: quantization_config.quant_algo={q.get('quant_algo')!r} with quant_method modelopt "
            "(moesim reads FP8 only; NVFP4 has no precision setting here)",
            _QUANT_FIX,
        )
    raise ConfigError(f"{where}: quantization_config.quant_method={q.get('quant_method')!r} is not one moesim reads",
                      _QUANT_FIX)  # fmt: skip


def _compressed_tensors(q: Mapping[str, Any], where: str, keep: str) -> tuple[str, str]:
    """`checkpoint_weights` of a ``compressed-tensors`` config: its ``Linear`` group (else its first)."""
    groups = q.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise ConfigError(f"{where}: quantization_config.config_groups is missing or empty", _QUANT_FIX)
    items = list(groups.items())
    name, group = next(((n, g) for n, g in items if "Linear" in (g or {}).get("targets", [])), items[0])
    w, a = (group or {}).get("weights") or {}, (group or {}).get("input_activations") or {}
    bits, kind, strategy = w.get("num_bits"), w.get("type"), w.get("strategy")
    text = f"quantization_config: compressed-tensors {name}: {bits}-bit {kind} weights ({strategy})"
    if bits == 8 and kind == "float":
        if strategy == "block":
            block = w.get("block_structure") or [128, 128]
            note = "" if list(block) == [128, 128] else f" (sized and timed as 128 x 128; the checkpoint's are {block})"
            return "fp8_block", text + note + keep
        return "fp8", text + keep
    if bits == 8 and kind == "int" and a.get("num_bits") == 8 and a.get("type") == "int":
        return "int8", text + ", int8 activations" + keep
    if bits == 4 and kind == "int" and not a:
        return "int4", text + ", 16-bit activations" + keep
    raise ConfigError(
        f"{where}: quantization_config.config_groups.{name}: {bits}-bit {kind} weights with "
        f"{a.get('num_bits', 16)}-bit activations have no precision setting in moesim",
        _QUANT_FIX,
    )


_PARSERS: dict[str, Callable[[_Keys, str], ModelSpec]] = {
    "llama": _dense,
    "mistral": _dense,
    "qwen2": _dense,
    "qwen3": _dense,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen_moe,
    "qwen3_moe": _qwen_moe,
    "olmoe": _olmoe,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "dbrx": _dbrx,
    "gpt_oss": _gpt_oss,
    "llama4": _llama4,
    "llama4_text": _llama4,
}

SUPPORTED_FAMILIES = tuple(_PARSERS)


def model_from_config(config: Mapping[str, Any] | str | Path, name: str | None = None) -> ModelSpec:
    """Build a `ModelSpec` from a HF ``config.json`` given as a dict or a path.

    Raises:
        ConfigError: unreadable JSON, an unsupported ``model_type``, or missing
            or inconsistent keys (all named in one message).
    """
    where = "config"
    if not isinstance(config, Mapping):
        path = Path(config)
        where = str(path)
        try:
            config = inputs.read_json(
                path, "a config.json", "give a preset name (see 'moesim models') or the path of a config.json"
            )
        except MoesimError as exc:
            raise ConfigError(exc.message, exc.hint) from None
        if not isinstance(config, Mapping):
            raise ConfigError(f"{path}: a config.json must hold a JSON object", _FIX)
    family = config.get("model_type")
    if family is None:
        raise ConfigError(f"{where}: missing keys: model_type", _FIX)
    parser = _PARSERS.get(str(family))
    if parser is None:
        raise ConfigError(
            f"{where}: unsupported model_type '{family}'", f"supported families are {', '.join(SUPPORTED_FAMILIES)}"
        )
    keys = _Keys(config, str(family), where)
    spec = parser(keys, name or where)
    if spec.moe is not None:
        moe = spec.moe
        keys.check(
            moe.top_k <= moe.num_experts, f"top-k={moe.top_k} exceeds the number of routed experts={moe.num_experts}"
        )
        keys.check(
            moe.top_k <= moe.num_experts // moe.n_group * moe.topk_group,
            f"top-k={moe.top_k} exceeds the experts in topk_group={moe.topk_group} groups",
        )
    keys.raise_if_any()
    weights, how = checkpoint_weights(config, where)  # Llama 4: the multimodal config's top level holds it
    return replace(spec, checkpoint_weights=weights, quantization=how)


def preset_names() -> list[str]:
    """Names of the model presets shipped under ``model/presets/``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


@lru_cache(maxsize=32)
def _load_preset(name: str) -> ModelSpec:
    """A shipped preset, read once per process (a sweep builds thousands of scenarios; `ModelSpec` is frozen)."""
    return model_from_config(PRESET_DIR / f"{name}.json", name=name)


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A preset by name (case-insensitive) or a ``config.json`` path.

    A directory holding a ``config.json`` (a downloaded HF snapshot) works too.
    """
    text = str(name_or_path)
    preset = PRESET_DIR / f"{text.lower()}.json"
    if preset.is_file() and not Path(text).exists():
        return _load_preset(text.lower())
    path = Path(text)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists() and path.suffix != ".json":
        raise ConfigError(
            f"unknown model '{text}'",
            f"pick a preset from 'moesim models' ({', '.join(preset_names())}) or give a config.json path",
        )
    return model_from_config(path, name=path.parent.name if path.name == "config.json" else path.stem)
