"""Llama 4 (Scout, Maverick): the config parser, parameter counts, interleaving and chunked attention."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from moesim.model import Batch, Layout, Precision, count_params, decompose, load_model, published_params
from moesim.model.errors import ConfigError
from moesim.model.hf_config import PRESET_DIR, model_from_config
from moesim.model.memory import kv_bytes_for_batch

H, VOCAB, LAYERS = 5120, 202048, 48
ATTENTION = H * 40 * 128 + 2 * H * 8 * 128 + 40 * 128 * H  # q, k, v, o; no biases, the L2 qk norm has no weight
EXPERT = 3 * H * 8192  # gate, up, down of one routed expert; the shared expert has the same width
DENSE = 3 * H * 16384  # intermediate_size_mlp
NORMS = 2 * H
EMBED = 2 * VOCAB * H + H  # input embedding, LM head (untied), final norm
NOPE = tuple(range(3, 48, 4))  # no_rope_layers is empty: every 4th layer is NoPE, global attention


def _config(name: str) -> dict:
    return json.loads((PRESET_DIR / f"{name}.json").read_text())


def _vision_tower(v: dict) -> int:
    """Parameters of the vision encoder, adapter and projector, counted by hand from ``vision_config``.

    transformers' modeling_llama4: Llama4UnfoldConvolution (patch linear without bias), class embedding,
    positional embedding over (image/patch)^2 + 1 positions, pre and post LayerNorms (weight and bias),
    per layer q/k/v/o with biases, fc1/fc2 with biases and two LayerNorms; the pixel-shuffle MLP adapter
    (fc1: hidden / ratio^2 -> projector_input_dim, fc2: -> projector_output_dim, no biases); the
    multi-modal projector (vision_output_dim -> text hidden, no bias).
    """
    h, i, n = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    patches = (v["image_size"] // v["patch_size"]) ** 2 + 1
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
    shuffled = int(h / v["pixel_shuffle_ratio"] ** 2)
    stem = v["num_channels"] * v["patch_size"] ** 2 * h + h + patches * h + 4 * h
    adapter = shuffled * v["projector_input_dim"] + v["projector_input_dim"] * v["projector_output_dim"]
    return stem + n * layer + adapter + v["vision_output_dim"] * H


def test_scout_parameters_by_hand():
    c = count_params(load_model("llama-4-scout"))
    per_layer = ATTENTION + NORMS + 16 * EXPERT + EXPERT + H * 16  # 16 routed, 1 shared, router
    assert c.total == LAYERS * per_layer + EMBED == 107_769_861_120
    assert c.active == LAYERS * (ATTENTION + NORMS + 2 * EXPERT + H * 16) + EMBED == 17_172_894_720


def test_maverick_parameters_by_hand():
    c = count_params(load_model("llama-4-maverick"))
    moe = ATTENTION + NORMS + 128 * EXPERT + EXPERT + H * 128
    assert c.total == 24 * (ATTENTION + NORMS + DENSE) + 24 * moe + EMBED == 400_711_848_960
    assert c.active == 24 * (ATTENTION + NORMS + DENSE) + 24 * (moe - 127 * EXPERT) + EMBED == 17_184_691_200


@pytest.mark.parametrize("name", ["llama-4-scout", "llama-4-maverick"])
def test_published_totals_count_the_vision_tower(name):
    """Meta's 109B / 400B count the whole checkpoint: the text model plus a vision tower of 0.87B that moesim
    does not model (text only, Scout is 107.77B: 1.1% under 109B). The CSV's ``not_modelled`` is that tower,
    counted here from the preset's own vision_config."""
    row = published_params().set_index("model").loc[name]
    vision = _vision_tower(_config(name)["vision_config"])
    assert vision == row["not_modelled"] == 871_932_416
    c = count_params(load_model(name))
    assert c.total + vision == pytest.approx(row["total"], rel=0.01)
    assert c.active == pytest.approx(row["active"], rel=0.025)  # 17B: the text model, embeddings counted


def test_interleaving_and_widths():
    scout, maverick = load_model("llama-4-scout"), load_model("llama-4-maverick")
    assert scout.moe_layers == (True,) * 48 and scout.dense_intermediate_size == 0
    assert maverick.moe_layers == tuple(i % 2 == 1 for i in range(48))  # interleave_moe_layer_step 2: 1, 3, ..., 47
    assert maverick.dense_intermediate_size == 16384
    for m, experts in ((scout, 16), (maverick, 128)):
        assert m.moe is not None
        assert (m.moe.num_experts, m.moe.top_k, m.moe.intermediate_size) == (experts, 1, 8192)
        assert (m.moe.shared_intermediate_size, m.moe.num_shared_experts, m.moe.scoring) == (8192, 1, "sigmoid")
        assert not m.moe.shared_expert_gate and not m.moe.router_bias
        assert m.attention.kind == "gqa" and not m.tie_embeddings
    assert (scout.attention.qk_norm, maverick.attention.qk_norm) == ("l2", "none")  # use_qk_norm true / false


def test_chunked_layers_are_the_rope_layers():
    for name in ("llama-4-scout", "llama-4-maverick"):
        m = load_model(name)
        assert m.chunks == tuple(None if i in NOPE else 8192 for i in range(48))
        assert m.rope == tuple(i not in NOPE for i in range(48))
        assert m.windows == (None,) * 48


def test_nope_layers_skip_rotary_and_qk_norm(cluster8):
    """NoPE layers launch no rotary kernel; Scout's weightless qk norm runs on the RoPE layers only."""
    for name, qk in (("llama-4-scout", True), ("llama-4-maverick", False)):
        ops = decompose(load_model(name), Batch.decode(8, 1000), Layout(tp=8), cluster8)
        groups = {op.group for op in ops if op.name == "attention"}
        assert sum(op.count for op in ops if op.name == "attention") == 48
        rope = {op.group: op.count for op in ops if op.name == "rope"}
        assert sum(rope.values()) == 36 and all("nope" not in g for g in rope) and any("nope" in g for g in groups)
        norms = [op for op in ops if op.name == "qk_norm"]
        assert sum(op.count for op in norms) == (36 if qk else 0)
        assert all(op.weight_bytes == 0 for op in norms)


def test_explicit_layer_lists_and_text_only_config():
    """A text-only checkpoint (llama4_text, keys at the top) with explicit moe_layers and no_rope_layers."""
    text = dict(_config("llama-4-maverick")["text_config"], num_hidden_layers=4)
    text.update(moe_layers=[0, 2], no_rope_layers=[0, 1, 1, 1], model_type="llama4_text")
    m = model_from_config(text)
    assert m.moe_layers == (True, False, True, False)
    assert m.chunks == (None, 8192, 8192, 8192) and m.rope == (False, True, True, True)
    m = model_from_config({**text, "attention_chunk_size": None})
    assert m.chunks == () and all(m.chunk_of(i) is None for i in range(4))
    types = ["full_attention", "chunked_attention", "full_attention", "full_attention"]
    assert model_from_config({**text, "layer_types": types}).chunks == (None, 8192, None, None)


def _brute_pairs(new: list[int], cached: list[int], chunk: int) -> tuple[int, int]:
    """Query-key pairs and KV tokens read, by listing every (query, key) of chunked causal attention."""
    pairs = kv = 0
    for n, c in zip(new, cached, strict=True):
        keys = set()
        for p in range(c, c + n):
            start = p // chunk * chunk
            pairs += p - start + 1
            keys.update(range(start, p + 1))
        kv += len(keys)
    return pairs, kv


def test_chunked_attention_by_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = int(rng.integers(1, 4))
        new = [int(x) for x in rng.integers(1, 40, b)]
        cached = [int(x) for x in rng.integers(0, 60, b)]
        batch = Batch(tuple(new), tuple(cached))
        chunk = int(rng.integers(1, 20))
        assert (batch.attention_pairs(chunk=chunk), batch.kv_tokens_read(chunk=chunk)) == _brute_pairs(
            new, cached, chunk
        )


def test_chunked_attention_caps_context_in_decode_and_prefill(cluster8):
    m = load_model("llama-4-scout")
    for ctx in (100, 8191, 8192, 100_000):
        ops = decompose(m, Batch.decode(4, ctx), Layout(tp=8), cluster8)
        chunked, full = (op for op in ops if op.name == "attention")
        assert chunked.group.startswith("moe chunk8192") and chunked.count == 36
        assert chunked.shape["kv_read"] == 4 * (ctx % 8192 + 1) <= 4 * 8192
        assert chunked.shape["pairs"] == 4 * (ctx % 8192 + 1)
        assert full.count == 12 and full.shape["kv_read"] == full.shape["pairs"] == 4 * (ctx + 1)
    # a 20,000-token prompt: chunks of 8192, 8192 and 3616 tokens, each attending causally within itself
    ops = decompose(m, Batch.prefill(1, 20_000), Layout(tp=8), cluster8)
    chunked, full = (op for op in ops if op.name == "attention")
    tri = lambda n: n * (n + 1) // 2  # noqa: E731
    assert chunked.shape["pairs"] == 2 * tri(8192) + tri(3616)
    assert full.shape["pairs"] == tri(20_000)
    assert chunked.flops / full.flops == pytest.approx((2 * tri(8192) + tri(3616)) / tri(20_000))


def test_kv_cache_of_chunked_layers_holds_one_chunk():
    m = load_model("llama-4-maverick")
    per_token_layer = 8 * 256 * 2  # 8 kv heads x (k + v) x 128 x bf16, TP1
    held = kv_bytes_for_batch(m, Layout(), Precision(), Batch.decode(2, 20_000))
    assert held == 2 * (36 * (20_000 % 8192 + 1) + 12 * 20_001) * per_token_layer


def _malformed(**changes: object) -> dict:
    cfg = copy.deepcopy(_config("llama-4-scout"))
    for key, value in changes.items():
        if key == "text_config":
            cfg["text_config"] = value
        elif value is None:
            del cfg["text_config"][key]
        else:
            cfg["text_config"][key] = value
    return cfg


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"text_config": None}, "missing keys: text_config"),
        ({"text_config": [1, 2]}, "text_config=[1, 2] is not a JSON object"),
        ({"hidden_size": None}, "missing keys: text_config.hidden_size"),
        ({"no_rope_layers": [1, 2, 3]}, "no_rope_layers=[1, 2, 3]"),
        ({"moe_layers": [0, 99]}, "moe_layers=[0, 99]"),
        ({"attention_chunk_size": 0}, "attention_chunk_size=0"),
        ({"interleave_moe_layer_step": 3, "intermediate_size_mlp": None}, "text_config.intermediate_size_mlp"),
    ],
)
def test_malformed_llama4_config_is_one_line(changes, needle):
    cfg = _malformed(**changes)
    if changes.get("text_config", 0) is None:
        del cfg["text_config"]
    with pytest.raises(ConfigError) as err:
        model_from_config(cfg)
    assert needle in err.value.message and "\n" not in err.value.message
    assert "(llama4)" in err.value.message and err.value.hint
