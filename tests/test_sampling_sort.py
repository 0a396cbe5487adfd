"""vLLM 0.15's sort-based top-k/top-p sampler: its bytes and launches (`model.ops.sampler_op`), its time in the
achievable model against the published H100 kernel timings (`model.achievable.sort_sampler_time`), the rule an
engine profile picks per model (`sim.serving.host.sampling_rule`, the models' generation_config defaults), and the
decode step it adds to (`sim.serving.steptime.StepTimer`)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from moesim.model import Batch, Layout, decompose, get_gpu, load_model, make_cluster
from moesim.model.achievable import (
    SORT_BW_FRACTION,
    SORT_KERNEL_S,
    AchievableCostModel,
    is_sort_sampler,
    sort_sampler_time,
)
from moesim.model.dtypes import Precision
from moesim.model.errors import MoesimError
from moesim.model.op_record import memory_op
from moesim.model.ops import SORT_BYTES_PER_LOGIT, SORT_KERNELS, sampler_op
from moesim.model.roofline import RooflineCostModel
from moesim.profiling.costmodel import CalibratedCostModel, Calibration, source_class
from moesim.sim.serving.host import engine_profile, generation_defaults, sampling_rule
from moesim.sim.serving.scenario import EngineSpec
from moesim.sim.serving.steptime import StepTimer

H100 = make_cluster(get_gpu("H100-SXM"), gpus_per_node=1, nodes=1)
ACH = AchievableCostModel()


def test_top_p_sampler_bytes_and_launches_by_hand():
    rows, v = 8, 128256
    n = rows * v
    greedy, top_p = sampler_op(rows, v, 2.0, "greedy"), sampler_op(rows, v, 2.0, "top_p")
    assert greedy.act_bytes == n * (2 + 4 + 4) and not is_sort_sampler(greedy)
    # cast 6, temperature 8, sort 156, top-p softmax 16 + cumsum 8 + compare 5 + masked_fill 9, scatter 16,
    # softmax 16, exponential 4, division 12, arg-max 4
    assert top_p.act_bytes == pytest.approx(n * (6 + 8 + 156 + 38 + 16 + 16 + 4 + 12 + 4))
    assert top_p.kernels == 2 + SORT_KERNELS + 6 + 1 + 4 == 24
    assert top_p.shape["sort_bytes"] == n * SORT_BYTES_PER_LOGIT and is_sort_sampler(top_p)
    both = sampler_op(rows, v, 2.0, "top_k_top_p")
    assert both.act_bytes == pytest.approx(top_p.act_bytes + n * 14) and both.kernels == top_p.kernels + 5
    # decompose carries the rule to the step's sampler
    ops = decompose(load_model("llama-3.1-8b"), Batch.decode(rows, 100), Layout(), H100, sampling="top_p")
    assert next(op for op in ops if op.name == "sampler").act_bytes == top_p.act_bytes
    with pytest.raises(MoesimError, match="sampling 'nucleus' is not one of greedy, random, top_p"):
        decompose(load_model("llama-3.1-8b"), Batch.decode(rows, 100), Layout(), H100, sampling="nucleus")


def _apply_only(rows: int, vocab: int, sort_bytes: float = SORT_BYTES_PER_LOGIT, sort_kernels: int = SORT_KERNELS):
    """vLLM's ``apply_top_k_top_p_pytorch`` alone with top-p (what the published benchmarks time): the sort, then
    softmax, cumsum, 1 - p, compare, last-column set, masked_fill (38 bytes per logit) and scatter (16)."""
    n = float(rows * vocab)
    return memory_op(
        "apply_top_p", "sampling", "head", 1, flops=0.0, read=n * (sort_bytes / 2 + 37.0),
        written=n * (sort_bytes / 2 + 17.0), dtype="fp32",
        shape={"sequences": rows, "vocab": vocab, "sort_bytes": n * sort_bytes, "sort_kernels": sort_kernels},
        kernels=sort_kernels + 7,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "vocab", "measured_ms", "rel"),
    [
        (4, 32768, 0.179, 0.01),  # vllm-project/vllm#42191 (H100): one of the two points the figures come from
        (56, 32768, 0.393, 0.01),  # vllm-project/vllm#33538: the other
        (512, 131072, 8.787, 0.05),  # held out: #33538, PyTorch's segmented-sort path at >= 128 rows
        (1024, 131072, 16.312, 0.06),  # held out: #33538
    ],
)
def test_sort_time_reproduces_the_published_h100_timings(rows, vocab, measured_ms, rel):
    t = ACH.op_time(_apply_only(rows, vocab), H100)
    assert t.seconds * 1e3 == pytest.approx(measured_ms, rel=rel)
    # the sort's bytes at the bare achievable bandwidth (no sort fraction) would be far too fast at size
    if rows >= 512:
        bw = ACH.params(H100.gpu).dram_bw.value
        assert _apply_only(rows, vocab).bytes / bw < 0.6 * measured_ms * 1e-3


def test_single_row_sort_path_within_a_quarter():
    # held out: #42191, 1 row of 32768 (PyTorch's single-segment path: index fill and a pairs sort, 7 kernels, 108 B)
    t = ACH.op_time(_apply_only(1, 32768, sort_bytes=108.0, sort_kernels=7), H100)
    assert t.seconds * 1e3 == pytest.approx(0.094, rel=0.25)


def test_sort_sampler_time_splits_fixed_and_memory():
    op = sampler_op(16, 151936, 2.0, "top_k_top_p")
    fixed, memory = sort_sampler_time(op, 3.02e12, 4e-6)
    assert fixed == pytest.approx(SORT_KERNELS * SORT_KERNEL_S + (op.kernels - SORT_KERNELS) * 4e-6)
    sort_b = op.shape["sort_bytes"]
    assert memory == pytest.approx(sort_b / (SORT_BW_FRACTION * 3.02e12) + (op.bytes - sort_b) / 3.02e12)
    t = ACH.op_time(op, H100)
    assert t.seconds == pytest.approx(fixed + memory) and t.bound == "memory"
    # per sequence on an H100 at Llama-3.1's vocabulary: ~18 us (the slope the vllm-e2e-dense runs lacked)
    per_seq = (ACH.op_time(sampler_op(64, 128256, 2.0, "top_p"), H100).seconds
               - ACH.op_time(sampler_op(16, 128256, 2.0, "top_p"), H100).seconds) / 48  # fmt: skip
    assert 15e-6 < per_seq < 22e-6
    # slower GPUs pay in proportion to their own achievable bandwidth
    a100 = make_cluster(get_gpu("A100-SXM-80GB"), gpus_per_node=1, nodes=1)
    ratio = ACH.params(H100.gpu).dram_bw.value / ACH.params(a100.gpu).dram_bw.value
    big = sampler_op(64, 128256, 2.0, "top_p")
    assert sort_sampler_time(big, ACH.params(a100.gpu).dram_bw.value, 4e-6)[1] == pytest.approx(
        sort_sampler_time(big, ACH.params(H100.gpu).dram_bw.value, 4e-6)[1] * ratio
    )


def test_calibrated_model_times_the_sort_sampler_with_the_achievable_model():
    # no table measures the sampler: the sort takes the achievable model's time, not the bare roofline's
    model = CalibratedCostModel(Calibration([]))
    op = sampler_op(32, 128256, 2.0, "top_p")
    t = model.op_time(op, H100)
    assert source_class(t.source) == "achievable" and t.source.startswith("achievable: ")
    assert t.seconds == pytest.approx(ACH.op_time(op, H100).seconds)
    assert t.seconds > 2.0 * RooflineCostModel().op_time(op, H100).seconds
    assert source_class(model.op_time(sampler_op(32, 128256, 2.0, "greedy"), H100).source) == "roofline"


def _profile(**settings):
    prof = engine_profile(EngineSpec(kind="vllm"))
    return replace(prof, **settings)


def test_sampling_rule_follows_the_generation_config():
    prof = engine_profile(EngineSpec(kind="vllm"))
    assert prof.sampling == "generation_config"  # the shipped vLLM profile
    assert sampling_rule(prof, "llama-3.1-8b") == "top_p"  # temperature 0.6, top_p 0.9
    assert sampling_rule(prof, "qwen3-14b") == "top_k_top_p"  # top_k 20, top_p 0.95
    assert sampling_rule(prof, "codellama-34b") == "random"  # no sampling fields: vLLM's temperature 1.0
    assert sampling_rule(prof, "mixtral-8x7b") == "greedy"  # generation config unknown to moesim: as before
    assert sampling_rule(_profile(sampling="greedy"), "qwen3-14b") == "greedy"
    assert sampling_rule(None, "qwen3-14b") == "greedy"
    assert sampling_rule(engine_profile(EngineSpec(kind="ideal")), "qwen3-14b") == "greedy"
    assert sampling_rule(engine_profile(EngineSpec(kind="sglang")), "qwen3-14b") == "greedy"
    assert generation_defaults("qwen2.5-7b") == {"temperature": 0.7, "top_k": 20, "top_p": 0.8,
                                                 "repetition_penalty": 1.05}  # fmt: skip
    assert generation_defaults("no-such-model") is None


def test_a_bad_sampling_setting_is_one_line(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("kind: vllm\nsettings:\n  sampling: nucleus\n")
    with pytest.raises(MoesimError, match=r"sampling 'nucleus'") as err:
        engine_profile(EngineSpec(kind="vllm", profile=str(f)))
    assert "\n" not in str(err.value) and "generation_config" in err.value.hint


def test_decode_step_grows_by_the_sampler_per_sequence():
    """Llama-3.1-8B decode steps on an H100 under the shipped vLLM profile (top-p from its generation config) against
    the same profile sampling greedily: the difference is the sort sampler, ~0.2 ms plus ~18 us per sequence."""
    model = load_model("llama-3.1-8b")
    top_p, greedy = engine_profile(EngineSpec(kind="vllm")), _profile(sampling="greedy")
    timers = {
        name: StepTimer(model, Layout(), H100, Precision(), ACH, profile=prof)
        for name, prof in (("top_p", top_p), ("greedy", greedy))
    }
    assert timers["top_p"].sampling == "top_p" and timers["greedy"].sampling == "greedy"

    def extra(b: int) -> float:
        new, cached = np.ones(b, int), np.full(b, 700)
        return timers["top_p"].expected(new, cached).gpu_s - timers["greedy"].expected(new, cached).gpu_s

    lo, hi = extra(16), extra(64)
    want = ACH.op_time(sampler_op(16, 128256, 2.0, "top_p"), H100).seconds
    want -= ACH.op_time(sampler_op(16, 128256, 2.0, "greedy"), H100).seconds
    assert lo == pytest.approx(want, rel=0.05)
    assert (hi - lo) / 48 == pytest.approx(18e-6, rel=0.2)
    assert math.isfinite(hi) and hi > lo > 1e-4
