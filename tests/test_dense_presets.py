"""The dense presets of the models measured in ../shared/data/vllm-e2e-dense (issue 19).

Each preset is a Hugging Face ``config.json`` (sources in model/presets/SOURCES.md). These tests pin
the architecture moesim reads from each file against an exact count computed by hand from the
published architecture, and check the family-specific details (explicit ``head_dim``, QKV bias,
QK-norm, a Llama-3.1 ``rope_scaling`` block, a disabled sliding window).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from moesim.model import count_params, load_model, preset_names

#: Slug -> the Hugging Face repository whose config.json the preset is (as in SOURCES.md).
HF_REPOS = {
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-70b": "meta-llama/Llama-2-70b-hf",
    "codellama-34b": "codellama/CodeLlama-34b-Instruct-hf",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B-Instruct",
    "qwen3-14b": "Qwen/Qwen3-14B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "mistral-nemo-12b": "mistralai/Mistral-Nemo-Instruct-2407",
    "yi-34b": "01-ai/Yi-34B",
}

SOURCES = Path(__file__).parents[1] / "model" / "presets" / "SOURCES.md"
EXPERIMENTS = Path(__file__).parents[2] / "shared" / "data" / "vllm-e2e-dense" / "experiments.csv"


def dense_by_hand(
    hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int, ffn: int, vocab: int, *, qkv_bias: bool = False
) -> int:
    """Parameters of a Llama-style dense decoder: GQA attention, SwiGLU MLP, two RMSNorms per
    layer, a final RMSNorm, and an untied input embedding and LM head (all presets here untie)."""
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * q + 2 * hidden * kv + q * hidden + ((q + 2 * kv) if qkv_bias else 0)
    mlp = 3 * hidden * ffn
    return layers * (attention + mlp + 2 * hidden) + hidden + 2 * vocab * hidden


#: (hidden, layers, heads, kv heads, head dim, intermediate, vocab, qkv bias) from each model's card or paper.
ARCHITECTURES = {
    "llama-2-7b": (4096, 32, 32, 32, 128, 11008, 32000, False),
    "llama-2-70b": (8192, 80, 64, 8, 128, 28672, 32000, False),
    "codellama-34b": (8192, 48, 64, 8, 128, 22016, 32000, False),
    "llama-3.1-8b": (4096, 32, 32, 8, 128, 14336, 128256, False),
    "llama-3.1-70b": (8192, 80, 64, 8, 128, 28672, 128256, False),
    "qwen2.5-7b": (3584, 28, 28, 4, 128, 18944, 152064, True),
    "mistral-nemo-12b": (5120, 40, 32, 8, 128, 14336, 131072, False),
    "yi-34b": (7168, 60, 56, 8, 128, 20480, 64000, False),
}


def test_every_measured_model_has_a_preset_and_a_source_row():
    sources = SOURCES.read_text()
    for slug, repo in HF_REPOS.items():
        assert slug in preset_names()
        assert f"| {slug} | {repo} |" in sources, f"{slug} has no row in SOURCES.md"


@pytest.mark.skipif(not EXPERIMENTS.is_file(), reason="../shared/data/vllm-e2e-dense is absent")
def test_every_model_in_the_measured_runs_is_covered():
    with EXPERIMENTS.open(newline="") as f:
        measured = {row["model"] for row in csv.DictReader(f)}
    assert measured <= set(HF_REPOS.values()), measured - set(HF_REPOS.values())


@pytest.mark.parametrize("slug", sorted(ARCHITECTURES))
def test_parameter_count_by_hand(slug):
    *dims, bias = ARCHITECTURES[slug]
    m = load_model(slug)
    assert not m.is_moe and not m.tie_embeddings
    assert count_params(m).total == dense_by_hand(*dims, qkv_bias=bias)


def test_exact_counts_published_with_the_checkpoints():
    """Mistral-Nemo's GGUF conversion reports ``general.parameter_count`` 12,247,782,400
    (ollama/ollama#8277); Llama-2-7B is the well-known 6,738,415,616."""
    assert count_params(load_model("mistral-nemo-12b")).total == 12_247_782_400
    assert count_params(load_model("llama-2-7b")).total == 6_738_415_616


def test_qwen3_14b_has_qk_norm_and_no_bias():
    m = load_model("qwen3-14b")
    assert m.attention.qk_norm == "head" and not m.attention.qkv_bias
    h, q, kv = 5120, 40 * 128, 8 * 128
    attention = h * q + 2 * h * kv + q * h + 2 * 128  # q_norm and k_norm weights
    total = 40 * (attention + 3 * h * 17408 + 2 * h) + h + 2 * 151936 * h
    assert count_params(m).total == total


def test_family_details():
    nemo = load_model("mistral-nemo-12b")
    # Nemo's head_dim (128) is explicit and differs from hidden/heads (5120/32 = 160).
    assert nemo.attention.head_dim == 128 and nemo.hidden_size // nemo.attention.num_heads == 160
    assert nemo.windows == (None,) * 40  # sliding_window is null
    qwen25 = load_model("qwen2.5-7b")
    assert qwen25.attention.qkv_bias and not qwen25.attention.o_bias
    assert qwen25.windows == (None,) * 28  # sliding_window 131072 but use_sliding_window false
    llama31 = load_model("llama-3.1-8b")  # rope_scaling is a llama3 block; eos_token_id is a list
    assert llama31.max_position_embeddings == 131072 and llama31.attention.kind == "gqa"
    assert load_model("llama-2-7b").attention.kind == "mha"
    assert load_model("codellama-34b").max_position_embeddings == 16384
