"""A checkpoint's ``quantization_config`` sets its default weights and so its kernel: fp8 block-scaled (DeepSeek-V3),
MXFP4 (gpt-oss), AWQ/GPTQ int4 (Marlin), compressed-tensors; an unknown method is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.model import Batch, Layout, Precision, load_model
from moesim.model.errors import ConfigError
from moesim.model.hardware import get_gpu, make_cluster
from moesim.model.hf_config import PRESET_DIR, checkpoint_weights, model_from_config
from moesim.model.ops import decompose
from moesim.profiling.costmodel import QUANT_MOE_KERNELS
from moesim.profiling.opshapes import table_dtype

MIXTRAL = json.loads((PRESET_DIR / "mixtral-8x7b.json").read_text())


def _with(q: dict | None) -> dict:
    return {**MIXTRAL, "quantization_config": q} if q is not None else dict(MIXTRAL)


@pytest.mark.parametrize(
    ("q", "weights"),
    [
        (None, "bf16"),
        ({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128], "activation_scheme": "dynamic"},
         "fp8_block"),
        ({"quant_method": "fp8", "activation_scheme": "static"}, "fp8"),
        ({"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200}, "fp8"),
        ({"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}, "fp4"),
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}, "int4"),
        ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}, "int4"),
        ({"quant_method": "modelopt", "quant_algo": "FP8"}, "fp8"),
        ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
            "targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
            "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}}}}, "fp8"),
        ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
            "targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "block",
                                               "block_structure": [128, 128]}}}}, "fp8_block"),
        ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
            "targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128},
            "input_activations": None}}}, "int4"),
        ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
            "targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
            "input_activations": {"num_bits": 8, "type": "int", "strategy": "token"}}}}, "int8"),
    ],
)  # fmt: skip
def test_quant_methods_map_to_weights(q, weights):
    spec = model_from_config(_with(q))
    assert spec.checkpoint_weights == weights and Precision(weights=weights)  # a name Precision takes
    assert bool(spec.quantization) == (q is not None)


@pytest.mark.parametrize(
    ("q", "key"),
    [
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "quant_method='bitsandbytes'"),
        ({"quant_method": "gptq", "bits": 8}, "quantization_config.bits=8"),
        ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "quant_algo='NVFP4'"),
        ({"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size=[128]"),
        ({"quant_method": "compressed-tensors", "config_groups": {"g": {"targets": ["Linear"],
          "weights": {"num_bits": 4, "type": "float", "group_size": 16},
          "input_activations": {"num_bits": 4, "type": "float"}}}}, "config_groups.g"),
        ("fp8", "quantization_config='fp8'"),
    ],
)  # fmt: skip
def test_unknown_quantization_is_one_line(q, key):
    with pytest.raises(ConfigError) as exc:
        model_from_config({**MIXTRAL, "quantization_config": q})
    line = exc.value.one_line()
    assert key in line and "\n" not in line and "remove quantization_config" in line


def test_other_block_shapes_are_a_visible_approximation():
    weights, how = checkpoint_weights({"quantization_config": {"quant_method": "fp8", "weight_block_size": [64, 64]}})
    assert weights == "fp8_block" and "sized and timed as 128 x 128" in how


def test_presets_from_quantized_configs():
    v3 = load_model("deepseek-v3")
    assert v3.checkpoint_weights == "fp8_block" and "128 x 128" in v3.quantization
    oss = load_model("gpt-oss-120b")
    assert oss.checkpoint_weights == "fp4" and "kept in 16 bits" in oss.quantization  # attention stays bf16 there
    for name in ("llama-4-scout", "llama-4-maverick", "mixtral-8x7b", "qwen3-235b-a22b"):
        assert load_model(name).checkpoint_weights == "bf16"


def test_default_precision_follows_the_checkpoint(tmp_path: Path):
    from moesim.sim.serving.serve import load

    sc = {
        "model": "deepseek-v3",
        "cluster": "hgx-h200-x2",
        "layout": {"tp": 1, "dp_attn": 16, "ep": 16},
        "workload": {"arrival": "poisson", "rate": 1, "requests": 10, "input": 512, "output": 64},
    }
    built = load(sc)
    assert (built.precision.weights, built.precision.fp8_scaling) == ("fp8", "block")
    assert load({**sc, "precision": {"weights": "bf16"}}).precision.weights == "bf16"  # an explicit choice stands
    tensor = load({**sc, "precision": {"fp8_scaling": "tensor"}}).precision
    assert (tensor.weights, tensor.fp8_scaling) == ("fp8", "tensor")
    # the block-scaled kernel times the experts, and dispatch sends fp8 (DeepEP)
    ops = decompose(built.model, Batch.decode(8, 512), Layout(tp=1, dp_attn=16, ep=16),
                    make_cluster(get_gpu("H200-SXM"), num_gpus=16), built.precision)  # fmt: skip
    assert table_dtype(next(o for o in ops if o.kind == "grouped_gemm")) == "fp8_block"


def test_roofline_default_dtype_is_the_checkpoint(capsys):
    from moesim.dashboard.cli import main

    args = ["roofline", "deepseek-v3", "--cluster", "hgx-h200-x2", "--dp-attn", "16", "--ep", "16", "--json"]
    assert main(args) == 0
    own = json.loads(capsys.readouterr().out)
    assert (own["dtype"], own["fp8_scaling"]) == ("fp8", "block") and "128 x 128" in own["quantization"]
    assert main([*args, "--dtype", "bf16"]) == 0
    bf16 = json.loads(capsys.readouterr().out)
    assert bf16["memory"]["weight_bytes"] > 1.9 * own["memory"]["weight_bytes"]


def test_int4_experts_run_marlin_where_the_engine_runs_triton():
    """vLLM runs GPTQ/AWQ experts with Marlin: an int4 MoE op under the engine's ``triton`` is timed by the Marlin
    table as the engine's own kernel, not as a fallback; a triton int4 table is not used for it."""
    from dataclasses import replace

    import pandas as pd

    from moesim.profiling.calibrate import calibrate
    from moesim.profiling.costmodel import CalibratedCostModel, Calibration, source_class
    from moesim.profiling.opshapes import row_ops

    run = PRESET_DIR.parents[1] / "profiling" / "data" / "h100-sxm" / "quick-bf16"
    bf16 = next(f for f in calibrate([run], holdout=0.0, kinds=["grouped_gemm"]).fits if f.impl == "triton_graph")
    marlin = replace(bf16, dtype="int4", impl="vllm_marlin_int4_moe")
    triton = replace(bf16, dtype="int4", impl="vllm_fused_moe", floor_s=bf16.floor_s + 1e-3)  # clearly slower
    df = pd.read_parquet(run / "grouped_gemm.parquet")
    row = df[(df["impl"] == "triton_graph") & (df["hidden"] == 4096) & (df["tokens"] == 64)].iloc[[0]]
    op = row_ops("grouped_gemm", row.assign(dtype="int4"))[0]
    assert table_dtype(op) == "int4" and QUANT_MOE_KERNELS["int4"] == "marlin"
    cl = make_cluster(get_gpu("H100-SXM"), num_gpus=1)
    t = CalibratedCostModel(Calibration([triton, marlin]), kernels={"moe": "triton"}).op_time(op, cl)
    assert t.source.startswith("measured:grouped_gemm/int4/vllm_marlin_int4_moe") and t.source.endswith(
        "[kernel marlin]"
    )
    assert source_class(t.source) == "measured"
    bf16_op = row_ops("grouped_gemm", row)[0]  # unquantised experts keep the engine's triton
    t16 = CalibratedCostModel(Calibration([bf16]), kernels={"moe": "triton"}).op_time(bf16_op, cl)
    assert t16.source.endswith("[kernel triton]")
