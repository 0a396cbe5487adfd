"""GPU and cluster presets, user hardware files, clear errors."""

from __future__ import annotations

import pytest

from moesim.model import HardwareError, get_cluster, get_gpu, list_clusters, list_gpus, make_cluster

GPUS = ("A100-SXM-80GB", "H100-SXM", "H100-PCIe", "H800", "H200-SXM", "B200", "MI300X", "L40S", "RTX-4090")


def test_presets_and_sources():
    gpus = list_gpus()
    assert set(GPUS) <= set(gpus) and "cpu" in gpus
    for key in GPUS:
        g = gpus[key]
        assert g.peak("bf16") > 0 and g.bandwidth() > 0 and g.tdp_w > 0
        for figure in ("peak_flops", "memory", "tdp", "price", "cloud", "node"):
            assert g.sources.get(figure), f"{key} has no source for {figure}"
        assert g.node.intra_latency_s is not None and g.node.inter_latency_s is not None


def test_dense_peaks():
    assert get_gpu("h100-sxm").peak("bf16") == pytest.approx(989.4e12)  # 1,979 sparse / 2
    assert get_gpu("B200").peak("fp4") == pytest.approx(9e15)
    with pytest.raises(HardwareError, match="A100-SXM-80GB has no fp8 peak"):
        get_gpu("A100-SXM-80GB").peak("fp8")


def test_unknown_gpu_suggests():
    with pytest.raises(HardwareError) as e:
        get_gpu("H100")
    assert "H100-SXM or H100-PCIe" in e.value.one_line()


def test_cpu_is_unmeasured_until_profiled():
    cpu = get_gpu("cpu")
    assert cpu.memory_gib > 0
    with pytest.raises(HardwareError, match="not measured"):
        cpu.peak("fp32")
    with pytest.raises(HardwareError, match="bandwidth unknown"):
        cpu.bandwidth()


def test_user_hardware_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("""
MY-GPU:
  name: My accelerator
  vendor: other
  peak_flops: {bf16: 5.0e+14}
  memory_gib: 64
  memory_bandwidth: 2.0e+12
  tdp_w: 500
  node: {gpus_per_node: 4, intra_bw: 1.0e+11, intra_latency_s: 1.0e-5, inter_bw: 2.5e+10, inter_latency_s: 3.0e-5}
""")
    g = get_gpu("my-gpu", f)
    assert g.peak("bf16") == 5e14 and g.price_usd is None
    assert make_cluster(g, num_gpus=8).nodes == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("MY-GPU:\n  name: x\n  vendor: y\n  peak_flops: {bf16: -1}\n")
    with pytest.raises(HardwareError) as e:
        get_gpu("MY-GPU", bad)
    assert "\n" not in e.value.one_line() and "MY-GPU" in e.value.one_line()
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [unclosed")
    with pytest.raises(HardwareError, match="not valid YAML"):
        list_gpus(broken)


def test_clusters():
    assert get_cluster("dgx-h100").num_gpus == 8
    assert get_cluster("h800-x256").num_gpus == 2048
    assert all(c.gpu.key for c in list_clusters().values())
    with pytest.raises(HardwareError, match="unknown cluster"):
        get_cluster("nope")
