"""The kernel an engine runs: the calibrated cost model times the engine's MoE and attention kernel, falls back
visibly where no table has it, and the simulate summary says where each op's time came from.

The tables are the committed H100 measurements (profiling/data/h100-sxm/quick-bf16): grouped GEMM measured as
``triton_graph`` (our Triton fused-MoE kernel, which stands for vLLM's ``triton``) and ``torch_loop``, attention as
``torch_sdpa`` only (so FlashAttention, vLLM's default, falls back to it).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pandas as pd
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model import make_cluster
from moesim.model.achievable import AchievableCostModel
from moesim.model.errors import MoesimError
from moesim.model.hardware import get_gpu
from moesim.model.roofline import RooflineCostModel
from moesim.profiling.calibrate import calibrate, save
from moesim.profiling.costmodel import (
    KERNELS,
    SOURCE_CLASSES,
    CalibratedCostModel,
    Calibration,
    kernel_of,
    resolve_kernel,
    source_class,
)
from moesim.profiling.opshapes import row_ops
from moesim.sim.serving.host import engine_profile
from moesim.sim.serving.kernels import engine_kernels
from moesim.sim.serving.scenario import EngineSpec
from moesim.sim.serving.serve import run

TABLES = Path(__file__).resolve().parent.parent / "profiling" / "data" / "h100-sxm" / "quick-bf16"


@cache
def _cal() -> Calibration:
    return calibrate([TABLES], holdout=0.0, kinds=["grouped_gemm", "attention"])


def _cluster():
    return make_cluster(get_gpu("H100-SXM"), num_gpus=1)


def _moe_op():
    """A measured grouped-GEMM shape: Mixtral-sized layer, 64 tokens, on one GPU."""
    df = pd.read_parquet(TABLES / "grouped_gemm.parquet")
    row = df[(df["impl"] == "triton_graph") & (df["hidden"] == 4096) & (df["tokens"] == 64)].iloc[[0]]
    return row_ops("grouped_gemm", row)[0]


def _scenario(**engine) -> dict:
    """Qwen1.5-MoE on one H100: its MoE layer (2048 x 1408, 60 experts, top 4) is in the measured grid."""
    return {
        "model": "qwen1.5-moe-a2.7b",
        "gpu": "H100-SXM",
        "layout": {"tp": 1},
        "engine": {"kind": "vllm", **engine},
        "workload": {
            "arrival": "poisson",
            "rate": 2,
            "requests": 40,
            "input": {"dist": "fixed", "value": 256},
            "output": {"dist": "fixed", "value": 32},
        },
    }


def test_kernel_names_resolve_with_engine_spellings():
    assert resolve_kernel("attention", "FLASH_ATTN") == "flash_attn"  # vLLM's --attention-backend
    assert resolve_kernel("attention", "fa3") == "flash_attn"  # SGLang's
    assert resolve_kernel("attention", "torch_native") == "torch_sdpa"
    assert resolve_kernel("moe", "deep_gemm") == "deepgemm"
    assert resolve_kernel("moe", "fastest") is None and resolve_kernel("moe", "any") is None
    assert resolve_kernel("moe", None) is None
    assert kernel_of("grouped_gemm", "vllm_fused_moe") == kernel_of("grouped_gemm", "triton_graph") == "moe:triton"
    assert kernel_of("grouped_gemm", "vllm_marlin_int4_moe") == "moe:marlin" and kernel_of("gemm", "torch") is None
    fits = {f["impl"]: f["kernel"] for f in _cal().summary()["fits"]}  # `moesim calibrate --json` names them
    assert fits == {"torch_sdpa": "attention:torch_sdpa", "torch_loop": "moe:torch_loop", "triton_graph": "moe:triton"}
    names = {(k.family, k.name) for k in KERNELS}
    assert all((k.family, n) in names for k in KERNELS for n in k.nearest)  # every fallback is a known kernel


def test_unknown_kernel_is_one_error_naming_the_choices():
    with pytest.raises(MoesimError) as exc:
        CalibratedCostModel(_cal(), kernels={"moe": "cublas_moe"})
    line = exc.value.one_line()
    assert "\n" not in line and "engine.moe_kernel" in line and "'cublas_moe'" in line
    assert all(k in line for k in ("triton", "deepgemm", "marlin", "fastest"))
    with pytest.raises(MoesimError, match=r"engine\.attention_backend: unknown attention kernel 'flash'"):
        run(_scenario(attention_backend="flash"), "analytical")


def test_preference_is_honoured_when_the_table_has_the_kernel(capsys):
    op, cl = _moe_op(), _cluster()
    cm = CalibratedCostModel(_cal())
    fastest = cm.op_time(op, cl)
    triton = cm.with_kernels({"moe": "triton"}).op_time(op, cl)
    loop = cm.with_kernels({"moe": "torch_loop"}).op_time(op, cl)
    assert "triton_graph" in fastest.source and "[kernel" not in fastest.source
    assert triton.source.startswith("measured:grouped_gemm/bf16/triton_graph@H100-SXM")
    assert triton.source.endswith("[kernel triton]") and triton.seconds == fastest.seconds
    assert loop.source.startswith("measured:grouped_gemm/bf16/torch_loop@H100-SXM")
    assert loop.source.endswith("[kernel torch_loop]")
    assert loop.seconds > 1.05 * triton.seconds  # the eager per-expert loop (its own table) is slower here
    assert source_class(loop.source) == "measured" and capsys.readouterr().err == ""


def test_missing_kernel_falls_back_visibly_and_warns_once(capsys):
    op, cl = _moe_op(), _cluster()
    cm = CalibratedCostModel(_cal()).with_kernels({"moe": "deepgemm"})
    t = cm.op_time(op, cl)
    again = cm.with_kernels({"moe": "deepgemm", "attention": None}).op_time(op, cl)
    triton = CalibratedCostModel(_cal(), kernels={"moe": "triton"}).op_time(op, cl)
    assert t.source.startswith("fallback: no deepgemm table, used triton; measured:grouped_gemm/bf16/triton_graph")
    assert source_class(t.source) == "fallback" and t.seconds == triton.seconds == again.seconds
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning: no measured deepgemm table") and "triton" in err[0]


def test_no_table_for_the_kernel_nor_its_nearest_is_the_achievable_model(capsys):
    op, cl = _moe_op(), _cluster()
    cal = Calibration([f for f in _cal().fits if f.impl != "torch_loop"])
    t = CalibratedCostModel(cal, kernels={"moe": "torch_loop"}).op_time(op, cl)
    # a grouped GEMM no table reaches takes the achievable model's time (costmodel.ACHIEVABLE_FALLBACK_KINDS)
    assert t.source.startswith("achievable: no table for torch_loop") and source_class(t.source) == "achievable"
    assert t.seconds == AchievableCostModel().op_time(op, cl).seconds > RooflineCostModel().op_time(op, cl).seconds
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "torch_loop" in err


def test_engine_defaults_come_from_the_engine_profile():
    for kind in ("vllm", "sglang"):
        spec = EngineSpec(kind=kind)
        prof = engine_profile(spec)
        want = {
            "moe": resolve_kernel("moe", prof.moe_kernel),
            "attention": resolve_kernel("attention", prof.attention_backend),
        }
        assert engine_kernels(spec) == want and all(want.values()), kind
    assert engine_kernels(EngineSpec(kind="ideal")) == {"moe": None, "attention": None}  # ideal: the fastest
    assert engine_kernels(EngineSpec(kind="vllm", moe_kernel="marlin"))["moe"] == "marlin"  # the scenario wins


def test_the_simulation_times_the_engines_kernel():
    cm = CalibratedCostModel(_cal())
    fast = run(_scenario(moe_kernel="triton"), "analytical", cost_model=cm).summary
    slow = run(_scenario(moe_kernel="torch_loop"), "analytical", cost_model=cm).summary
    assert slow["tpot_p50_s"] > 1.2 * fast["tpot_p50_s"]
    p = slow["cost_provenance"]
    assert p["kernels"] == {"moe": "torch_loop", "attention": "flash_attn"}
    assert "torch_loop" in p["decode"]["ops"]["grouped_gemm"]
    assert p["decode"]["step_s"] > fast["cost_provenance"]["decode"]["step_s"]


def test_simulate_json_lists_the_provenance(capsys, tmp_path):
    path = save(_cal(), tmp_path / "cal.parquet")
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(_scenario(moe_kernel="deepgemm", attention_backend="FLASH_ATTN")))
    code = main(["simulate", str(scenario), "--cost-model", str(path), "--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    p = json.loads(cap.out)["cost_provenance"]
    assert p["kernels"] == {"moe": "deepgemm", "attention": "flash_attn"}
    assert p["cost_model"].endswith("[attention=flash_attn,moe=deepgemm]")
    for phase in ("decode", "prefill"):
        step = p[phase]
        assert set(step["share"]) == set(SOURCE_CLASSES) and abs(sum(step["share"].values()) - 1) < 1e-9
        assert step["ops"]["grouped_gemm"].startswith("fallback: no deepgemm table, used triton")
        assert "flash_attn" in step["ops"]["attention"]  # torch SDPA's table stood in for FlashAttention
        assert step["share"]["fallback"] > 0.2 and step["step_s"] > 0
    warnings = [ln for ln in cap.err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2 and any("deepgemm" in w for w in warnings)  # once per missing kernel

    code = main(["simulate", str(scenario), "--json"])  # the roofline: every op's time is the roofline's
    cap = capsys.readouterr()
    assert code == 0, cap.err
    r = json.loads(cap.out)["cost_provenance"]
    assert r["cost_model"] == "roofline" and r["decode"]["share"]["roofline"] == 1.0
    assert "warning:" not in cap.err
