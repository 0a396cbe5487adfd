"""Importing torch.profiler Chrome traces: a real CPU trace, a hand-made CUDA trace, bad files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from moesim.profiling.tables import TableError, check_table
from moesim.profiling.trace_import import import_chrome_trace


def _only(df, **where):
    """The one row of ``df`` whose columns equal ``where``."""
    rows = df
    for col, value in where.items():
        rows = rows[rows[col] == value]
    assert len(rows) == 1, f"expected one row with {where}, got {len(rows)}"
    return rows.iloc[0]


@pytest.fixture(scope="module")
def cpu_trace(tmp_path_factory) -> Path:
    """A real trace of a few ops, recorded with shapes on the CPU."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    a, b = torch.randn(32, 64), torch.randn(64, 48)
    q, kv = torch.randn(2, 4, 10, 8), torch.randn(2, 2, 12, 8)
    x, gate = torch.randn(20, 16), torch.randn(8, 16)
    idx = torch.tensor([0, 3, 5])
    dst = torch.empty(20, 16)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        torch.mm(a, b)
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        logits = F.linear(x, gate)  # the router's gate: [20, 16] -> [20, 8]
        torch.topk(logits.softmax(-1), 2, dim=-1)
        x.index_select(0, idx)
        dst.copy_(x)
        torch.relu(x)
    path = tmp_path_factory.mktemp("trace") / "cpu.json"
    prof.export_chrome_trace(str(path))
    return path


def test_cpu_trace_maps_ops_with_shapes(cpu_trace):
    imp = import_chrome_trace(cpu_trace)
    assert imp.device == "cpu"
    assert {"gemm", "attention", "router", "permute", "memcpy"} <= set(imp.tables)
    for kind, df in imp.tables.items():
        check_table(df, kind)
        assert (df["op"] == kind).all() and (df["source"] == "trace").all()
        assert (df["time_s"] > 0).all()
        assert df["impl"].str.startswith("trace:").all()
    gemm = imp.tables["gemm"]
    mm = _only(gemm, name="aten::mm")
    assert (mm.m, mm.n, mm.k, mm["dtype"]) == (32, 48, 64, "fp32")
    gate = _only(gemm, name="aten::linear")  # outermost op: the aten::addmm inside is not counted again
    assert (gate.m, gate.n, gate.k) == (20, 8, 16)
    assert "aten::addmm" not in set(gemm["name"])
    attn = _only(imp.tables["attention"], name="aten::scaled_dot_product_attention")
    shape = (attn.batch, attn.q_len, attn.kv_len, attn.heads, attn.kv_heads, attn.head_dim)
    assert shape == (2, 10, 12, 4, 2, 8)
    router = _only(imp.tables["router"], name="aten::topk")
    assert (router.tokens, router.hidden, router.experts, router.top_k) == (20, 16, 8, 2)
    perm = _only(imp.tables["permute"], name="aten::index_select")
    assert (perm.tokens, perm.hidden, perm.top_k, perm.direction) == (3, 16, 1, "dispatch")
    copy = _only(imp.tables["memcpy"], name="aten::copy_")
    assert copy.bytes == 20 * 16 * 4
    un = imp.unmapped
    assert list(un.columns) == ["name", "count", "total_s", "reason"]
    assert _only(un, name="aten::relu").reason == "unknown op"
    assert list(un["total_s"]) == sorted(un["total_s"], reverse=True)
    assert imp.mapped_s == pytest.approx(sum(df["time_s"].sum() for df in imp.tables.values()))
    assert imp.mapped_s > 0 and imp.unmapped_s == pytest.approx(un["total_s"].sum())


def _op(name: str, ext: int, ts: float, dur: float, **args) -> dict:
    return {"ph": "X", "cat": "cpu_op", "name": name, "pid": 7, "tid": 7, "ts": ts, "dur": dur, "args": args}


def _launch(ext: int, corr: int, ts: float) -> dict:
    args = {"External id": ext, "cbid": 211, "correlation": corr}
    event = {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 7, "tid": 7, "ts": ts, "dur": 3}
    return {**event, "args": args}


def _kernel(name: str, corr: int, ts: float, dur: float, ext: int | None = None) -> dict:
    args = {"queued": 0, "device": 0, "context": 1, "stream": 7, "correlation": corr, "grid": [1, 1, 1]}
    if ext is not None:
        args["External id"] = ext
    return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": ts, "dur": dur, "args": args}


def _cuda_trace() -> dict:
    """torch.profiler's layout: cpu_op -> cuda_runtime launch -> kernel, linked by External id / correlation."""
    bf16 = "c10::BFloat16"
    comms = {
        "Collective name": "allreduce",
        "dtype": "BFloat16",
        "In msg nelems": 1 << 20,
        "Out msg nelems": 1 << 20,
        "Group size": 8,
    }
    relu = "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous)::launch_clamp>"
    cutlass = "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>(Params)"
    events = [
        {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "python"}},
        _op("aten::mm", 10, 100.0, 20.0, **{"Input Dims": [[128, 256], [256, 512]], "Input type": [bf16, bf16]}),
        _launch(10, 1000, 105.0),
        _kernel(cutlass, 1000, 130.0, 40.0, ext=10),
        _op("c10d::allreduce_", 20, 200.0, 30.0, **{"Input Dims": [[1 << 20]], "Input type": [bf16]}),
        _op("record_param_comms", 21, 202.0, 20.0, **comms),
        _launch(21, 1001, 207.0),
        _kernel("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)", 1001, 210.0, 80.0, 21),
        _op("aten::relu", 30, 300.0, 10.0, **{"Input Dims": [[128, 512]], "Input type": [bf16]}),
        _launch(30, 1002, 302.0),
        _kernel(relu, 1002, 310.0, 6.0),
        _kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", 1003, 400.0, 12.0),  # no launcher
    ]
    return {"schemaVersion": 1, "traceEvents": events, "traceName": "hand-made"}


@pytest.mark.parametrize("gz", [False, True])
def test_cuda_trace_maps_kernels_by_name_and_launcher(tmp_path, gz):
    text = json.dumps(_cuda_trace())
    path = tmp_path / ("t.json.gz" if gz else "t.json")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    imp = import_chrome_trace(path)
    assert imp.device == "cuda"
    assert set(imp.tables) == {"gemm", "all_reduce"}
    gemm = imp.tables["gemm"].iloc[0]
    assert (gemm.m, gemm.n, gemm.k, gemm["dtype"], gemm.impl) == (128, 512, 256, "bf16", "trace:cutlass")
    assert gemm.time_s == pytest.approx(40e-6)
    ar = imp.tables["all_reduce"].iloc[0]
    assert (ar.bytes, ar.gpus, ar["dtype"], ar.impl) == (2 << 20, 8, "bf16", "trace:nccl")
    assert ar.time_s == pytest.approx(80e-6)
    un = imp.unmapped.set_index("name")["reason"].to_dict()
    assert un == {
        "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous)::launch_clamp>": "unknown kernel",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "no shape",
    }
    assert imp.mapped_s == pytest.approx(120e-6)
    assert imp.unmapped_s == pytest.approx(18e-6)  # the CPU-side ops are not counted on a CUDA trace


def test_kernel_linked_through_runtime_correlation(tmp_path):
    """A kernel with no External id of its own finds its op through the launch's correlation."""
    half = ["c10::Half"] * 3
    events = [
        _op("aten::linear", 1, 0.0, 50.0, **{"Input Dims": [[4, 32, 512], [16, 512], [16]], "Input type": half}),
        _op("aten::addmm", 2, 5.0, 40.0, **{"Input Dims": [[16], [128, 512], [512, 16]], "Input type": half}),
        _launch(2, 77, 10.0),
        _kernel("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN", 77, 60.0, 9.0),
    ]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": events}))
    gemm = import_chrome_trace(path).tables["gemm"].iloc[0]
    assert (gemm.m, gemm.n, gemm.k, gemm["dtype"], gemm.impl) == (128, 16, 512, "fp16", "trace:nvjet")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such trace file"),
        (b"this is not json", "not valid JSON"),
        (b"", "is empty"),
        (b"\x1f\x8b broken", "damaged gzip"),
        ("{}".encode("utf-16"), "UTF-16"),
        (b"[" * 50000, "nested more than"),
        (b'{"schemaVersion": 1}', "no traceEvents"),
        (b'{"traceEvents": [{"ph": "M", "name": "process_name"}]}', "no complete"),
    ],
)
def test_bad_files_raise_table_error(tmp_path, content, message):
    path = tmp_path / "trace.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TableError, match=message) as err:
        import_chrome_trace(path)
    assert "\n" not in err.value.message and err.value.hint
