"""Shared fixtures: hardware built by hand so tests do not depend on preset prices."""

from __future__ import annotations

import pytest

from moesim.model import HardwareSpec, NodeSpec, make_cluster


@pytest.fixture
def h100() -> HardwareSpec:
    """An H100-SXM-like GPU with round numbers for hand computation."""
    return HardwareSpec(
        key="TEST-GPU",
        name="test",
        vendor="nvidia",
        peak_flops={"fp32": 60e12, "bf16": 1000e12, "fp8": 2000e12},
        memory_gib=80,
        memory_bandwidth=4e12,
        tdp_w=700,
        price_usd=30000,
        cloud_usd_per_hour=3.6,
        node=NodeSpec(gpus_per_node=8, intra_bw=400e9, intra_latency_s=5e-6, inter_bw=50e9, inter_latency_s=20e-6),
    )


@pytest.fixture
def cluster8(h100):
    """One node of eight test GPUs."""
    return make_cluster(h100, num_gpus=8)
