"""Sliding-window layers (gpt-oss: ``sliding_window`` 128 on alternate layers) hold only their window of KV cache, as
vLLM's hybrid KV-cache manager keeps it (``SlidingWindowManager`` frees the blocks wholly before the window): the
memory estimate, the serving capacity, the DES block count, the KV-transfer bytes and the analytical engine's token
capacity count a long request at full length on the full-attention layers and at most the window (plus one block of
slack) on the sliding ones. The attention ops read only the window."""

from __future__ import annotations

import numpy as np

from moesim.model import Batch, Layout, Precision, get_gpu, load_model, make_cluster
from moesim.model.memory import estimate_memory, kv_bytes_per_token, kv_groups
from moesim.model.ops import decompose
from moesim.sim.serving.capacity import replica_capacity
from moesim.sim.serving.serve import load


def _vllm_sliding_blocks(tokens: np.ndarray, window: int, block_size: int) -> np.ndarray:
    """Blocks vLLM's ``SlidingWindowManager`` holds for a request of ``tokens`` computed tokens: every block from the
    one holding token ``tokens - window + 1`` (``remove_skipped_blocks``) to the last."""
    first = np.maximum(tokens - window + 1, 0) // block_size
    return -(-tokens // block_size) - first


def test_gpt_oss_groups_one_full_one_sliding():
    m = load_model("gpt-oss-120b")
    g = kv_groups(m, Layout(), Precision())
    assert (g.group_layers, g.full_groups, g.local_groups, g.local_tokens, g.sliding) == (18, 1, 1, 128, True)
    per_layer = kv_bytes_per_token(m, Layout(), Precision(), range(1))
    assert g.page_bytes_per_token == 18 * per_layer
    assert g.bytes_for(10_000) == per_layer * 18 * (10_000 + 128)  # the KV-transfer bytes of a 10k-token request
    assert g.bytes_for(100) == per_layer * 36 * 100
    scout = kv_groups(load_model("llama-4-scout"), Layout(tp=4), Precision())
    assert not scout.sliding and scout.local_blocks(16) == 512  # chunks keep cdiv(chunk, block)


def test_sliding_blocks_bound_vllm_and_never_decrease():
    g = kv_groups(load_model("gpt-oss-120b"), Layout(), Precision())
    for bs in (16, 32, 64):
        tokens = np.arange(1, 5000)
        vllm = _vllm_sliding_blocks(tokens, 128, bs)
        assert g.local_blocks(bs) == vllm.max() == -(-127 // bs) + 1  # the window's blocks plus one of slack
        mine = g.blocks(tokens, bs) - -(-tokens // bs)  # the sliding group's share
        assert np.all(mine >= vllm) and np.all(np.diff(g.blocks(tokens, bs)) >= 0)
    assert g.blocks(128, 16) == 8 + 8 and g.blocks(10_000, 16) == 625 + 9


def test_attention_reads_only_the_window():
    m = load_model("gpt-oss-120b")
    ops = decompose(m, Batch([1] * 4, [32_768] * 4, "decode"), Layout(), make_cluster(get_gpu("H100-SXM"), num_gpus=1))
    reads = {o.shape.get("window"): o.shape["kv_read"] for o in ops if o.name == "attention"}
    assert reads == {128: 4 * 128, None: 4 * 32_769}


def test_memory_and_serving_capacity_double_at_long_context():
    mem = estimate_memory(load_model("gpt-oss-120b"), Layout(), get_gpu("H100-SXM"), Precision(weights="fp4"))
    assert mem.sequences_at(32_768) >= 1.95 * (mem.kv_capacity_tokens // 32_768)
    built = load({
        "model": "gpt-oss-120b", "gpu": "H100-SXM", "replicas": 1,
        "workload": {"arrival": "poisson", "rate": 1, "requests": 4, "input": 512, "output": 64},
    })  # fmt: skip
    cap = replica_capacity(built, built.pools[0])
    bs = built.pools[0].engine.block_size
    assert cap.kv_groups is not None and cap.kv_groups.sliding and "sliding-window" in cap.verdict
    assert cap.kv_tokens == cap.kv_blocks // 2 * bs  # vLLM's logged size: every layer at full length
    assert cap.kv_blocks // cap.blocks(32_768, bs) >= 2 * (cap.kv_tokens // 32_768) - 1
    # the analytical engine's token capacity at a request's held length: the full-length size while a request
    # fits in the window, about twice it for long requests
    assert cap.at_length(100, bs).kv_tokens == cap.kv_tokens
    long = cap.at_length(32_768, bs).kv_tokens
    assert long == cap.kv_blocks * 32_768 // (2048 + 9) and long > 1.99 * cap.kv_tokens
    mix = load({
        "model": "mixtral-8x7b", "gpu": "H100-SXM", "layout": {"tp": 2}, "replicas": 1,
        "workload": {"arrival": "poisson", "rate": 1, "requests": 4, "input": 512, "output": 64},
    })  # fmt: skip
    mcap = replica_capacity(mix, mix.pools[0])
    assert mcap.kv_groups is None and mcap.at_length(32_768, bs) is mcap


def test_analytical_counts_the_chunk_for_long_requests():
    from moesim.sim.serving.analytical import Analytical

    built = load({
        "model": "llama-4-scout", "gpu": "H100-SXM", "layout": {"tp": 4}, "replicas": 1,
        "engine": {"max_batch": 256, "max_tokens": 8192, "chunked_prefill": True},
        "workload": {"arrival": "poisson", "rate": 0.5, "requests": 50, "input": 65_536, "output": 1024},
    })  # fmt: skip
    a = Analytical(built)
    full = replica_capacity(built, built.pools[0])
    assert a.caps["mixed"].kv_tokens > 2.5 * full.kv_tokens  # 12 full-length layers of 48, the rest 8,192 tokens
    states = a.solve(0.5)[0]
    assert not states["mixed"].overloaded, states["mixed"].reason  # 12 requests of 66k tokens fit (full length: 7)


def test_des_runs_a_request_longer_than_the_full_length_cache():
    from moesim.sim.serving.serve import run

    sc = {
        "model": "gpt-oss-120b", "gpu": "H100-SXM", "replicas": 1,
        "engine": {"max_batch": 8, "max_tokens": 8192, "chunked_prefill": True, "mem_fraction": 0.79},
        "workload": {"arrival": "poisson", "rate": 1, "requests": 2, "input": 60_000, "output": 8},
    }  # fmt: skip
    cap = replica_capacity(load(sc), load(sc).pools[0])
    assert cap.kv_tokens < 60_000 < cap.kv_blocks // 2 * 16 * 2  # too long at full length, fits with the window
    res = run(sc, engine="des")
    assert res.summary["completed"] == 2


def test_every_layer_windowed_is_one_sliding_group():
    import dataclasses

    mix = load_model("mixtral-8x7b")  # Mistral-style: sliding_window on every layer (Mixtral's own config has null)
    windowed = dataclasses.replace(mix, windows=(4096,) * mix.num_layers)
    g = kv_groups(windowed, Layout(tp=2), Precision())
    assert (g.group_layers, g.full_groups, g.local_groups, g.local_tokens, g.sliding) == (32, 0, 1, 4096, True)
    assert g.blocks(100_000, 16) == 256 + 1 and g.blocks(1000, 16) == 63
    assert g.bytes_for(100_000) == kv_bytes_per_token(mix, Layout(tp=2), Precision()) * 4096
