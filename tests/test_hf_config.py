"""Reading Hugging Face config.json files: every family, and clear errors."""

from __future__ import annotations

import json

import pytest

from moesim.model import ConfigError, load_model, model_from_config, preset_names
from moesim.model.hf_config import PRESET_DIR


@pytest.mark.parametrize("name", preset_names())
def test_presets_load(name):
    m = load_model(name)
    assert m.num_layers == len(m.moe_layers) == len(m.windows)
    assert m.hidden_size > 0 and m.vocab_size > 0


def test_family_details():
    v3 = load_model("deepseek-v3")
    assert v3.attention.kind == "mla" and v3.moe.n_group == 8 and v3.moe.topk_group == 4
    assert v3.moe_layers[:4] == (False, False, False, True) and v3.moe.num_shared_experts == 1
    assert load_model("deepseek-v2-lite").attention.q_lora_rank is None
    oss = load_model("gpt-oss-120b")
    assert oss.windows[:2] == (128, None) and oss.moe.top_k == 4 and oss.attention.sinks
    qwen15 = load_model("qwen1.5-moe-a2.7b")
    assert qwen15.moe.shared_intermediate_size == 5632 and qwen15.attention.qkv_bias
    assert load_model("dbrx").attention.num_kv_heads == 8
    assert not load_model("llama-3-8b").is_moe


def test_dict_and_directory_inputs(tmp_path):
    cfg = json.loads((PRESET_DIR / "mixtral-8x7b.json").read_text())
    assert model_from_config(cfg).num_layers == 32
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_model(tmp_path).hidden_size == 4096


def test_missing_keys_are_all_named():
    cfg = json.loads((PRESET_DIR / "deepseek-v3.json").read_text())
    for key in ("kv_lora_rank", "qk_rope_head_dim", "hidden_size"):
        cfg.pop(key)
    with pytest.raises(ConfigError) as e:
        model_from_config(cfg)
    text = e.value.one_line()
    assert "missing keys" in text and "kv_lora_rank" in text and "qk_rope_head_dim" in text and "hidden_size" in text
    assert "\n" not in text and "fix:" in text


def test_inconsistent_keys_are_named():
    cfg = json.loads((PRESET_DIR / "mixtral-8x7b.json").read_text())
    cfg["num_experts_per_tok"] = 9
    cfg["num_key_value_heads"] = 5
    with pytest.raises(ConfigError) as e:
        model_from_config(cfg)
    assert "top-k=9" in str(e.value) and "num_key_value_heads=5" in str(e.value)


def test_unsupported_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="unsupported model_type 'bert'"):
        model_from_config({"model_type": "bert"})
    with pytest.raises(ConfigError, match="model_type"):
        model_from_config({"hidden_size": 1})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(bad)
    with pytest.raises(ConfigError, match="unknown model 'nonesuch'"):
        load_model("nonesuch")
    with pytest.raises(ConfigError, match="need an integer"):
        model_from_config({**json.loads((PRESET_DIR / "llama-3-8b.json").read_text()), "hidden_size": "big"})
