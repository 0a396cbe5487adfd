"""Kernel identity: the AIConfigurator importer keeps every quantisation its own table dtype, and the calibrated cost
model times an op only with the fit of its own quantisation (block-scaled fp8 never with the per-tensor fp8 fit),
falling back visibly where that table is missing.

Synthetic tables on the H100 spec (no GPU, no network); the real database in ../shared/data is used only when
present.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.model import Batch, Layout, estimate_step, load_model, make_cluster
from moesim.model.achievable import AchievableCostModel
from moesim.model.dtypes import Precision
from moesim.model.errors import MoesimError
from moesim.model.hardware import get_gpu
from moesim.model.roofline import RooflineCostModel
from moesim.profiling.aiconfigurator import DTYPES, convert, import_aiconfigurator
from moesim.profiling.calibrate import calibrate
from moesim.profiling.costmodel import CalibratedCostModel, Calibration, kernel_of, source_class
from moesim.profiling.opshapes import TABLE_DTYPES, row_op, table_dtype
from moesim.profiling.tables import TableError, write_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aiconfigurator-h100-sxm"
#: Measured / roofline of each synthetic kernel: block-scaled fp8 is 2x slower than per-tensor here.
SLOWDOWN = {"bf16": 1.5, "fp8": 1.5, "fp8_block": 3.0, "int4": 2.0}


def _h100():
    return get_gpu("H100-SXM")


def _cluster():
    return make_cluster(_h100(), num_gpus=1)


def _gemm_rows(dtype: str) -> pd.DataFrame:
    roof, cl, rows = RooflineCostModel(), _cluster(), []
    for m, n, k in itertools.product([1, 4, 16, 64, 256, 1024, 4096], [1024, 4096, 14336], [1024, 4096, 14336]):
        op = row_op("gemm", {"m": m, "n": n, "k": k, "dtype": dtype})
        t = roof.op_time(op, cl).seconds * SLOWDOWN[dtype] + 5e-6
        rows.append({"op": "gemm", "impl": "vllm_default", "dtype": dtype, "m": m, "n": n, "k": k, "time_s": t})
    return pd.DataFrame(rows)


def _moe_rows(dtype: str, impl: str) -> pd.DataFrame:
    roof, cl, rows = RooflineCostModel(), _cluster(), []
    for tokens in [1, 4, 16, 64, 256, 1024, 4096]:
        r = {"tokens": tokens, "hidden": 4096, "inter": 14336, "experts": 8, "top_k": 2, "dtype": dtype}
        t = roof.op_time(row_op("grouped_gemm", r), cl).seconds * SLOWDOWN[dtype] + 20e-6
        rows.append({"op": "grouped_gemm", "impl": impl, **r, "time_s": t})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cal(tmp_path_factory) -> Calibration:
    """bf16, per-tensor fp8 and block-scaled fp8 GEMMs and fused MoE; int4 MoE (Marlin)."""
    out = tmp_path_factory.mktemp("aic")
    meta = {"source": "synthetic", "device_key": "H100-SXM", "hardware": _h100().model_dump()}
    write_table(pd.concat([_gemm_rows(d) for d in ("bf16", "fp8", "fp8_block")]), out / "gemm.parquet", meta)
    moe = [_moe_rows(d, "vllm_fused_moe") for d in ("bf16", "fp8", "fp8_block")]
    write_table(pd.concat([*moe, _moe_rows("int4", "vllm_marlin_int4_moe")]), out / "grouped_gemm.parquet", meta)
    return calibrate([out], holdout=0.0)


# --- importer ---------------------------------------------------------------------------------


def test_every_public_quant_mode_maps_to_its_own_table_dtype(tmp_path):
    """AIConfigurator's GEMM and MoE quant modes (w4a16_mxfp4 included) import, each keeping its identity."""
    shape = {"num_tokens": 64, "hidden_size": 2048, "inter_size": 768, "topk": 8, "num_experts": 128}
    moe = pd.DataFrame({"moe_dtype": list(DTYPES), "latency": 0.1, "kernel_source": "vllm_fused_moe"} | shape)
    out = convert("moe_perf", moe, tmp_path)
    got = dict(zip(moe["moe_dtype"], out["dtype"] + "|" + out["impl"], strict=True))
    assert got["fp8"] == "fp8|vllm_fused_moe" and got["fp8_block"] == "fp8_block|vllm_fused_moe"
    assert got["w4a16_mxfp4"] == "w4a16_mxfp4|vllm_fused_moe" and got["int4_wo"] == "int4|vllm_fused_moe"
    assert got["fp8_static"] == "fp8|vllm_fused_moe:fp8_static"  # a variant of per-tensor fp8: its own fit
    assert len(set(got.values())) == len(got)  # no two quant modes share a table
    for r in out.to_dict("records"):  # every row builds an op with its format's bytes and math
        op = row_op("grouped_gemm", r)
        assert op.bytes > 0 and op.flops > 0
        if r["dtype"] in ("fp8_block", "w4a16_mxfp4"):
            assert table_dtype(op) == r["dtype"]  # the op asks for the table it came from
    mx = row_op("grouped_gemm", out[moe["moe_dtype"] == "w4a16_mxfp4"].iloc[0].to_dict())
    assert mx.dtype == "bf16" and mx.shape["w_bytes"] == pytest.approx(0.5 + 1 / 32)  # MXFP4 weights, 16-bit math
    assert set(TABLE_DTYPES) <= {d for d, _ in DTYPES.values()}


def test_unknown_dtype_is_one_error_line_naming_it(tmp_path):
    raw = pd.DataFrame({"gemm_dtype": ["bfloat16", "fp6_e3m2"], "m": 1, "n": 2, "k": 3, "latency": 0.1})
    with pytest.raises(TableError) as exc:
        convert("gemm_perf", raw, tmp_path / "gemm_perf.parquet")
    line = exc.value.one_line()
    assert "\n" not in line and "gemm_perf.parquet" in line and "'fp6_e3m2'" in line and "w4a16_mxfp4" in line
    nccl = pd.DataFrame({"op_name": ["all_reduce"], "nccl_dtype": ["fp4"], "num_gpus": 2, "message_size": 8})
    with pytest.raises(TableError, match=r"unknown nccl_dtype\(s\) fp4"):
        convert("nccl_perf", nccl.assign(latency=0.1), tmp_path)
    bf = convert("nccl_perf", nccl.assign(nccl_dtype="bfloat16", latency=0.1), tmp_path)
    assert list(bf["dtype"]) == ["bf16"] and list(bf["bytes"]) == [16]  # 2 bytes an element


def test_unknown_moe_kernel_source_is_imported_and_said(tmp_path, capsys):
    raw = pd.DataFrame({"moe_dtype": ["bfloat16"] * 2, "kernel_source": ["vllm_fused_moe", "my_cool_moe"]}
                       | {"num_tokens": 8, "hidden_size": 2048, "inter_size": 768, "topk": 8, "num_experts": 128}
                       | {"latency": [0.1, 0.2], "device": "NVIDIA H100 80GB HBM3"})  # fmt: skip
    raw.to_parquet(tmp_path / "moe_perf.parquet")
    summary = import_aiconfigurator(tmp_path / "moe_perf.parquet", tmp_path / "out")
    assert summary["kernels"]["grouped_gemm/bf16/vllm_fused_moe"] == "moe:triton"
    assert summary["unmapped"] == ["grouped_gemm/bf16/my_cool_moe"]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning:") and "'my_cool_moe'" in err[0]
    assert kernel_of("grouped_gemm", "vllm_fused_moe:fp8_static") == "moe:triton"


def test_expert_parallel_moe_rows_are_left_out_and_counted(tmp_path, capsys):
    """AIConfigurator's EP rows time vLLM's EP without an all-to-all (every GPU scans the group's tokens); moesim's
    EP layers are dispatched, so those rows are not imported, and the summary and one stderr note say how many."""
    raw = pd.DataFrame({"moe_dtype": "fp8_block", "kernel_source": "vllm_fused_moe", "num_tokens": [256, 256, 16384]}
                       | {"hidden_size": 7168, "inter_size": 2048, "topk": 8, "num_experts": 256, "moe_tp_size": 1}
                       | {"moe_ep_size": [1, 64, 64], "latency": [0.5, 0.17, 3.35]}
                       | {"device": "NVIDIA H100 80GB HBM3"})  # fmt: skip
    assert list(convert("moe_perf", raw, tmp_path)["tokens"]) == [256]
    raw.to_parquet(tmp_path / "moe_perf.parquet")
    summary = import_aiconfigurator(tmp_path / "moe_perf.parquet", tmp_path / "out")
    assert summary["left_out"] == {"moe_perf.parquet": 2} and summary["rows"] == {"grouped_gemm": 1}
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("note:") and "2 expert-parallel rows" in err[0]


# --- the cost model: one quantisation, one kernel -----------------------------------------------


def test_block_scaled_fp8_is_timed_by_its_own_fit(cal):
    cm, cl = CalibratedCostModel(cal), _cluster()
    shape = {"m": 64, "n": 4096, "k": 4096}
    tensor = row_op("gemm", shape | {"dtype": "fp8"})
    block = row_op("gemm", shape | {"dtype": "fp8_block"})
    tt, tb = cm.op_time(tensor, cl), cm.op_time(block, cl)
    assert tt.source.startswith("measured:gemm/fp8/") and tb.source.startswith("measured:gemm/fp8_block/")
    roof = RooflineCostModel()
    for op, t, d in ((tensor, tt, "fp8"), (block, tb, "fp8_block")):  # each its own kernel's synthetic time
        assert t.seconds == pytest.approx(roof.op_time(op, cl).seconds * SLOWDOWN[d] + 5e-6, rel=0.1), d
    assert tb.seconds > 1.15 * tt.seconds
    # through the model: fp8_block weights ask for the block-scaled table, on GEMMs and on the fused MoE
    est = estimate_step(
        load_model("mixtral-8x7b"), Batch.decode(16, 1024), Layout(tp=1), cl, Precision("fp8_block"), cm
    )
    src = {(op.kind, table_dtype(op)): t.source for op, t in zip(est.ops, est.times, strict=True)}
    assert ("gemm", "fp8") not in src and src[("gemm", "fp8_block")].startswith("measured:gemm/fp8_block/")
    assert src[("grouped_gemm", "fp8_block")].startswith("measured:grouped_gemm/fp8_block/")
    engine = cm.with_kernels({"moe": "triton"})
    moe = next(op for op in est.ops if op.kind == "grouped_gemm")
    assert engine.op_time(moe, cl).source.startswith("measured:grouped_gemm/fp8_block/vllm_fused_moe@H100-SXM")


def test_missing_block_table_falls_back_visibly_never_to_per_tensor(cal, capsys):
    no_block = Calibration([f for f in cal.fits if f.dtype != "fp8_block"])
    cm, cl = CalibratedCostModel(no_block), _cluster()
    block = row_op("gemm", {"m": 64, "n": 4096, "k": 4096, "dtype": "fp8_block"})
    t = cm.op_time(block, cl)
    assert t.source.startswith("roofline: no measured gemm/fp8_block table") and source_class(t.source) == "roofline"
    assert "kernel floor (gemm/bf16/vllm_default@H100-SXM)" in t.source  # the back-to-back table's shortest kernel
    moe = row_op("grouped_gemm", _moe_rows("fp8_block", "x").iloc[3].to_dict())
    t = cm.with_kernels({"moe": "triton"}).op_time(moe, cl)
    # a grouped GEMM no table reaches takes the achievable model's time (costmodel.ACHIEVABLE_FALLBACK_KINDS)
    assert t.source.startswith("achievable: no table for triton") and "fp8_block" in t.source
    assert source_class(t.source) == "achievable" and t.seconds == AchievableCostModel().op_time(moe, cl).seconds
    assert "warning: no measured triton table" in capsys.readouterr().err


def test_int4_under_the_triton_engine_is_timed_by_marlin(cal, capsys):
    """vLLM runs Marlin for int4 (GPTQ/AWQ) MoE whatever kernel the engine names for 16-bit MoE
    (`costmodel.QUANT_MOE_KERNELS`), so Marlin's table times it as the engine's own kernel: measured, no warning."""
    cm, cl = CalibratedCostModel(cal).with_kernels({"moe": "triton"}), _cluster()
    op = row_op("grouped_gemm", _moe_rows("int4", "x").iloc[3].to_dict())
    t = cm.op_time(op, cl)
    assert t.source.startswith("measured:grouped_gemm/int4/vllm_marlin") and t.source.endswith("[kernel marlin]")
    assert source_class(t.source) == "measured" and "warning:" not in capsys.readouterr().err


def test_old_block_scaled_imports_still_time_only_block_ops(cal):
    """A calibration imported before fp8_block was its own dtype (dtype fp8, impl ...:fp8_block) stays apart."""
    old = [f for f in cal.fits if f.kind == "gemm" and f.dtype in ("fp8", "fp8_block")]
    renamed = [f if f.dtype == "fp8" else replace(f, dtype="fp8", impl="x:fp8_block") for f in old]
    cm, cl = CalibratedCostModel(Calibration(renamed)), _cluster()
    shape = {"m": 64, "n": 4096, "k": 4096}
    assert cm.op_time(row_op("gemm", shape | {"dtype": "fp8_block"}), cl).source.startswith("measured:gemm/fp8_block")
    assert cm.op_time(row_op("gemm", shape | {"dtype": "fp8"}), cl).source.startswith("measured:gemm/fp8/vllm")


def test_precision_says_block_scaled():
    p = Precision("fp8_block")
    assert (p.weights, p.fp8_scaling) == ("fp8", "block") and p == Precision("fp8", fp8_scaling="block")
    assert p.weight_bytes == pytest.approx(1 + 4 / 128**2) and Precision("fp8").weight_bytes == 1.0
    with pytest.raises(MoesimError, match=r"fp8_scaling .block. with int4 weights"):
        Precision("int4", fp8_scaling="block")
    with pytest.raises(MoesimError, match="unknown fp8_scaling"):
        Precision("fp8", fp8_scaling="row")


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/aiconfigurator-h100-sxm is not present")
def test_real_database_imports_with_every_kernel_named(tmp_path):
    summary = import_aiconfigurator(DATA, tmp_path / "aic")
    assert summary["unmapped"] == [] and summary["left_out"]["moe_perf.parquet"] > 0
    kernels = summary["kernels"]
    assert kernels["grouped_gemm/fp8_block/vllm_fused_moe"] == "moe:triton"
    assert kernels["grouped_gemm/int4/vllm_marlin_int4_moe"] == "moe:marlin"
    assert {k.split("/")[1] for k in kernels if k.startswith("gemm/")} == {"bf16", "fp8", "fp8_block"}
    assert np.isfinite(list(summary["rows"].values())).all()


def test_a_table_whose_dtype_no_kernel_maps_is_one_error_line(tmp_path):
    """A moesim table (profiled or hand-made) with a dtype the cost model cannot map: refused, not fitted as 16-bit."""
    meta = {"source": "synthetic", "device_key": "H100-SXM", "hardware": _h100().model_dump()}
    write_table(_gemm_rows("bf16").assign(dtype="fp6"), tmp_path / "gemm.parquet", meta)
    with pytest.raises(TableError) as exc:
        calibrate([tmp_path])
    line = exc.value.one_line()
    assert "\n" not in line and "gemm.parquet" in line and "'fp6'" in line and "fp8_block" in line


# --- the wheel's text tables, and 16-bit twins -------------------------------------------------


def _text_gemm(path: Path, device: str = "NVIDIA A100-SXM4-80GB") -> pd.DataFrame:
    """A ``gemm_perf.txt`` as AIConfigurator's PyPI wheel ships it (comma-separated, ``float16`` for 16 bits),
    timed at 1.5x the A100's roofline plus 5 us."""
    a100 = make_cluster(get_gpu("A100-SXM-80GB"), num_gpus=1)
    roof, rows = RooflineCostModel(), []
    for m, n, k in itertools.product([1, 4, 16, 64, 256, 1024, 4096], [1024, 4096, 14336], [1024, 4096, 14336]):
        t = roof.op_time(row_op("gemm", {"m": m, "n": n, "k": k, "dtype": "fp16"}), a100).seconds * 1.5 + 5e-6
        rows.append({"framework": "VLLM", "version": "0.14.0", "device": device, "op_name": "gemm",
                     "kernel_source": "vllm_default", "gemm_dtype": "float16", "m": m, "n": n, "k": k,
                     "latency": t * 1e3})  # fmt: skip
    df = pd.DataFrame(rows)
    df.to_csv(path, index=False)
    return df


def test_wheel_text_tables_import_like_parquet(tmp_path):
    """AIConfigurator's PyPI wheel ships each GPU's tables as ``*_perf.txt``: the importer reads them as it reads the
    parquet files (the device from the ``device`` column), and the CLI takes the folder or the file."""
    src = tmp_path / "a100" / "vllm" / "0.14.0"
    src.mkdir(parents=True)
    raw = _text_gemm(src / "gemm_perf.txt")
    (src / "mla_bmm_perf.txt").write_text("not,a,table,moesim,reads\n")  # other families are ignored
    summary = import_aiconfigurator(src, tmp_path / "out")
    assert summary["rows"] == {"gemm": len(raw)} and summary["device"] == ["NVIDIA A100-SXM4-80GB"]
    assert summary["kernels"] == {"gemm/fp16/vllm_default": None}
    from moesim.profiling.tables import read_table

    df, meta = read_table(tmp_path / "out" / "gemm.parquet")
    assert meta["device_key"] == "A100-SXM-80GB" and set(df["dtype"]) == {"fp16"}
    assert np.allclose(df["time_s"].to_numpy(), raw["latency"].to_numpy() / 1e3)


def test_text_and_parquet_of_one_table_or_a_corrupt_text_are_one_error_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    raw = _text_gemm(src / "gemm_perf.txt")
    raw.to_parquet(src / "gemm_perf.parquet")
    with pytest.raises(TableError) as exc:
        import_aiconfigurator(src, tmp_path / "out")
    assert "both a .parquet and a .txt of gemm_perf" in exc.value.one_line()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "gemm_perf.txt").write_bytes(b"\x00\x01\x02garbage\xff\xfe\n\x00,,\n")
    with pytest.raises(TableError) as exc:
        import_aiconfigurator(bad, tmp_path / "out2")
    line = exc.value.one_line()
    assert "\n" not in line and "gemm_perf.txt" in line
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())  # nothing half-written


def test_a_16_bit_table_of_this_gpu_times_the_other_16_bit_format(tmp_path):
    """bf16 and fp16 run the same kernels at the same rate: a bf16 op on the A100 takes the A100's own fp16 table
    (``16-bit twin``, measured) before the H100's bf16 table transferred, and a GPU with only the bf16 table keeps
    it as before."""
    src = tmp_path / "src"
    src.mkdir()
    raw = _text_gemm(src / "gemm_perf.txt")
    import_aiconfigurator(src, tmp_path / "a100")
    h100 = tmp_path / "h100"
    h100.mkdir()
    meta = {"source": "synthetic", "device_key": "H100-SXM", "hardware": _h100().model_dump()}
    write_table(_gemm_rows("bf16"), h100 / "gemm.parquet", meta)
    cm = CalibratedCostModel(calibrate([h100, tmp_path / "a100"], holdout=0.0))
    a100 = make_cluster(get_gpu("A100-SXM-80GB"), num_gpus=1)
    op = row_op("gemm", {"m": 16, "n": 4096, "k": 4096, "dtype": "bf16"})
    t = cm.op_time(op, a100)
    assert t.source.startswith("16-bit twin fp16->bf16 measured:gemm/fp16/vllm_default@A100-SXM-80GB")
    assert source_class(t.source) == "measured"
    row = raw[(raw.m == 16) & (raw.n == 4096) & (raw.k == 4096)].latency.iloc[0] / 1e3
    assert t.seconds == pytest.approx(row, rel=0.05)
    on_h100 = cm.op_time(op, _cluster())
    assert on_h100.source.startswith("measured:gemm/bf16/vllm_default@H100-SXM")


def test_wheel_attention_tables_import_as_attention_rows(tmp_path, capsys):
    """The wheel's ``context_attention_perf`` (whole prompts of ``isl``) and ``generation_attention_perf`` (one new
    token over a sequence of ``step``) become one ``attention`` table of the engine's backend; fp8-cache rows are
    left out and counted, as the expert-parallel MoE rows are."""
    head = {"framework": "VLLM", "version": "0.14.0", "device": "NVIDIA A100-SXM4-80GB"}
    head |= {"kernel_source": "vllm_flash_attn", "num_heads": 32, "num_key_value_heads": 8, "head_dim": 128}
    pd.DataFrame([{**head, "op_name": "context_attention", "batch_size": 2, "isl": 1024, "kv_cache_dtype": "float16",
                   "latency": 0.9}]).to_csv(tmp_path / "context_attention_perf.txt", index=False)  # fmt: skip
    gen = [{**head, "op_name": "generation_attention", "batch_size": 64, "isl": 1, "step": 4095,
            "kv_cache_dtype": kv, "latency": lat} for kv, lat in (("float16", 1.5), ("fp8", 0.9))]  # fmt: skip
    pd.DataFrame(gen).to_csv(tmp_path / "generation_attention_perf.txt", index=False)
    summary = import_aiconfigurator(tmp_path, tmp_path / "out")
    assert summary["rows"] == {"attention": 2} and summary["left_out"] == {"generation_attention_perf.txt": 1}
    assert summary["kernels"] == {"attention/fp16/vllm_flash_attn": "attention:flash_attn"}
    assert "1 rows of an fp8 KV cache left out" in capsys.readouterr().err
    from moesim.profiling.tables import read_table

    df, meta = read_table(tmp_path / "out" / "attention.parquet")
    rows = df.sort_values("q_len").to_dict("records")
    assert (rows[0]["q_len"], rows[0]["kv_len"], rows[0]["batch"]) == (1, 4095, 64)
    assert (rows[1]["q_len"], rows[1]["kv_len"], rows[1]["batch"]) == (1024, 1024, 2)
    assert rows[0]["time_s"] == pytest.approx(1.5e-3) and "context_attention_perf" in meta["source"]
    assert "generation_attention_perf" in meta["source"]
    op = row_op("attention", rows[0])
    assert op.shape["kv_read"] == 64 * 4095 and op.shape["tokens"] == 64
