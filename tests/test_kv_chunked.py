"""Llama 4's chunked-local layers keep only their chunk of KV cache (vLLM's hybrid KV-cache manager): the memory
estimate and the serving capacity count a long request at full length on its 12 global layers and at most 8,192
tokens on the 36 chunked ones; models without chunked layers are unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moesim.model import Layout, Precision, get_gpu, load_model
from moesim.model.memory import estimate_memory, kv_bytes_per_token, kv_groups
from moesim.sim.serving.capacity import check_requests_fit, replica_capacity
from moesim.sim.serving.serve import load


def _built(model: str, gpu: str, tp: int):
    return load({
        "model": model, "gpu": gpu, "layout": {"tp": tp}, "replicas": 1,
        "workload": {"arrival": "poisson", "rate": 1, "requests": 4, "input": 512, "output": 64},
    })  # fmt: skip


def test_llama4_groups_as_vllm_does():
    scout = load_model("llama-4-scout")
    g = kv_groups(scout, Layout(tp=4), Precision())
    # 12 NoPE global layers and 36 chunked ones: groups of 12, one full and three local (vLLM's "3 local : 1 full")
    assert (g.group_layers, g.full_groups, g.local_groups, g.local_tokens) == (12, 1, 3, 8192)
    per_layer = kv_bytes_per_token(scout, Layout(tp=4), Precision(), range(1))
    assert g.page_bytes_per_token == 12 * per_layer
    assert g.bytes_for(100_000) == per_layer * (12 * 100_000 + 36 * 8192)
    assert g.bytes_for(4096) == per_layer * 48 * 4096  # inside one chunk every layer holds every token
    off = kv_groups(scout, Layout(tp=4), Precision(), hybrid=False)  # the hybrid manager off: all full length
    assert (off.group_layers, off.local_groups) == (48, 0)


def test_blocks_never_decrease_and_match_plain_paging_without_chunks():
    scout = kv_groups(load_model("llama-4-scout"), Layout(tp=4), Precision())
    tokens = np.arange(0, 40_000, 7)
    b = scout.blocks(tokens, 16)
    assert np.all(np.diff(b) >= 0)  # a decode run's block growth is never negative
    assert scout.blocks(8192, 16) == 4 * 512 and scout.blocks(8193, 16) == 513 + 3 * 512
    plain = kv_groups(load_model("mixtral-8x7b"), Layout(tp=2), Precision())
    assert (plain.group_layers, plain.full_groups, plain.local_groups) == (32, 1, 0)
    assert np.array_equal(plain.blocks(tokens, 16), -(-tokens // 16))


def test_memory_sequences_at_long_context():
    mem = estimate_memory(load_model("llama-4-scout"), Layout(tp=4), get_gpu("H100-SXM"), Precision())
    full = mem.kv_capacity_tokens  # every layer at full length: what vLLM logs as the KV cache size
    assert mem.sequences_at(8192) == full // 8192  # within one chunk nothing changes
    assert mem.sequences_at(131_072) >= 3.5 * (full // 131_072)  # 12 vs 3 sequences at 128k tokens
    mix = estimate_memory(load_model("mixtral-8x7b"), Layout(tp=2), get_gpu("H100-SXM"), Precision())
    assert mix.sequences_at(131_072) == mix.kv_capacity_tokens // 131_072


def test_serving_capacity_counts_the_chunk():
    built = _built("llama-4-scout", "H100-SXM", 4)
    cap = replica_capacity(built, built.pools[0])
    bs = built.pools[0].engine.block_size
    assert cap.kv_groups is not None and cap.kv_groups.local_groups == 3
    assert cap.kv_tokens == cap.kv_blocks // 4 * bs  # the size at full length, as vLLM reports it
    # a 131k-token request takes a full group's blocks and three 8,192-token windows' (9,728 of them): the cache holds
    # 4 x 131,072 / 9,728 / 16 = 3.37 times as many such requests as its full-length size says
    per_request = int(cap.blocks(131_072, bs))
    assert per_request == 131_072 // bs + 3 * 8192 // bs
    ratio = 4 * 131_072 / (bs * per_request)
    assert cap.kv_blocks / per_request == pytest.approx(ratio * cap.kv_tokens / 131_072, rel=1e-3)
    assert ratio > 3.3
    # a request of 1M tokens: more than the full-length size, yet it fits with the chunked layers at 8,192 tokens
    long = pd.DataFrame({"request_id": [0], "input_tokens": [900_000], "output_tokens": [100_000]})
    assert cap.kv_tokens < 1_000_000
    check_requests_fit(built, long, {"mixed": cap})  # no error
    mix = _built("mixtral-8x7b", "H100-SXM", 2)
    mcap = replica_capacity(mix, mix.pools[0])
    assert mcap.kv_groups is None and mcap.kv_tokens == mcap.kv_blocks * bs
    assert mcap.blocks(np.int64(1000), bs) == -(-1000 // bs)


@pytest.mark.parametrize("engine", ["des", "analytical"])
def test_llama4_long_requests_simulate(engine):
    from moesim.sim.serving.serve import run

    sc = {
        "model": "llama-4-scout", "gpu": "H100-SXM", "layout": {"tp": 4}, "replicas": 1,
        "engine": {"max_batch": 64, "max_tokens": 8192, "chunked_prefill": True},
        "workload": {"arrival": "poisson", "rate": 0.05, "requests": 6, "input": 200_000, "output": 8},
        "seed": 0,
    }  # fmt: skip
    s = run(sc, engine).summary
    assert s["completed"] == 6
