"""The Triton fused-MoE kernel's own fraction of the peak (``moe_fraction`` in model/presets/achievable.yaml): what
it changes (a serving engine's fused-MoE layer on a large batch), what it leaves alone (decode-sized layers, which
stream weights; training's grouped GEMMs; GPUs without the figure), and the measured table it comes from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from moesim.model import Batch, Layout, decompose, get_gpu, load_model, make_cluster
from moesim.model.achievable import ACHIEVABLE, AchievableCostModel, params_for
from moesim.model.ops import experts_gemms

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aiconfigurator-h100-sxm"


def _without_figure(key: str = "H100-SXM") -> AchievableCostModel:
    return AchievableCostModel({**ACHIEVABLE, key: dataclasses.replace(ACHIEVABLE[key], moe_fraction={})})


def _experts(tokens: int, gpu: str = "H100-SXM", tp: int = 2):
    cluster = make_cluster(get_gpu(gpu), num_gpus=tp)
    ops = decompose(load_model("mixtral-8x7b"), Batch((tokens,), (0,), "prefill"), Layout(tp=tp), cluster)
    return next(o for o in ops if o.name == "routed_experts"), cluster


def test_the_figure_slows_a_large_fused_moe_layer_by_the_ratio_of_the_fractions():
    op, cluster = _experts(16384)
    p = params_for(cluster.gpu)
    assert p.moe("bf16") == pytest.approx(0.5035) and p.moe("fp8") == p.gemm("fp8")  # no fp8 figure: the GEMM's
    with_fig = AchievableCostModel().op_time(op, cluster)
    without = _without_figure().op_time(op, cluster)
    assert with_fig.bound == without.bound == "compute"
    ratio = with_fig.seconds / without.seconds
    assert 0.9 * p.gemm("bf16") / p.moe("bf16") < ratio <= p.gemm("bf16") / p.moe("bf16")


def test_decode_sized_layers_training_gemms_and_other_gpus_keep_their_times():
    op, cluster = _experts(32)  # 64 pairs: the weights stream, the fraction does not matter
    assert AchievableCostModel().op_time(op, cluster).seconds == _without_figure().op_time(op, cluster).seconds
    big, cluster = _experts(16384)
    gemms = experts_gemms(big)  # training's two grouped GEMMs (Megatron / TE, not the Triton kernel)
    assert AchievableCostModel().op_time(gemms, cluster).seconds == _without_figure().op_time(gemms, cluster).seconds
    _, cl = _experts(16384, "A100-SXM-80GB")
    assert not params_for(cl.gpu).moe_fraction  # no figure: the GEMM fraction, as before
    _, cl200 = _experts(16384, "H200-SXM")
    assert params_for(cl200.gpu).moe_fraction["bf16"].reused  # the H100's, said so


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/aiconfigurator-h100-sxm is not present")
def test_against_the_measured_vllm_kernel_on_large_batches(tmp_path):
    """AIConfigurator's vLLM fused-MoE table, bf16, no expert parallelism, above 4,096 tokens: the rows the figure
    was not read from (TP > 1, or under 8,192 tokens) come out closer to the measured times with it than without."""
    from moesim.profiling.aiconfigurator import import_aiconfigurator
    from moesim.profiling.opshapes import row_ops
    from moesim.profiling.tables import read_table

    import_aiconfigurator(DATA, tmp_path / "aic")
    table = read_table(tmp_path / "aic" / "grouped_gemm.parquet")
    df = table[0] if isinstance(table, tuple) else table
    df = df[(df.impl == "vllm_fused_moe") & (df.dtype == "bf16") & (df.ep == 1) & (df.tokens > 4096)]
    held = df[~((df.moe_tp == 1) & (df.tokens >= 8192))]
    assert len(held) > 200
    cluster = make_cluster(get_gpu("H100-SXM"), num_gpus=8)
    ops = row_ops("grouped_gemm", held)
    measured = held.time_s.to_numpy()
    err = {
        name: np.abs(np.array([cm.op_time(o, cluster).seconds for o in ops]) / measured - 1)
        for name, cm in (("with", AchievableCostModel()), ("without", _without_figure()))
    }
    assert np.median(err["with"]) < 0.7 * np.median(err["without"])
    assert np.quantile(err["with"], 0.9) < np.quantile(err["without"], 0.9)
