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


# --- a training trace of the MoE stacks (DeepEP, DeepGEMM, Transformer Engine, FlashAttention, Megatron) ----------
# Kernel names as the stacks' code declares them and as published profiles print them (DeepEP
# csrc/kernels/internode.cu and internode_ll.cu; DeepGEMM fp8_gemm.cuh and impls/sm90_fp8_gemm_1d1d.cuh; TE
# transformer_engine/common and pytorch/triton/permutation.py; FlashAttention-2 flash_fwd_kernel/flash_bwd_*).
_K = {
    "ep_dispatch": "void deep_ep::internode::dispatch<false, 8, false, 7, 8>(int4*, float*, long*, float*, "
    "deep_ep::internode::SourceMeta*, int4 const*, float const*, long const*, float const*, int*, int*, int, int)",
    "ep_combine": "void deep_ep::internode::combine<false, 8, __nv_bfloat16, 16, 4, 4, 16, 24>(int4*, float*, "
    "bool const*, int4 const*, float const*, int const*, int, int, void**, int, int, int, int)",
    "ep_notify": "void deep_ep::internode::notify_dispatch<false, 8>(int const*, int*, int, int const*, int*, int)",
    "ep_ll": "void deep_ep::internode_ll::dispatch<true, 3, 10, 7168>(void*, float*, int*, long*, int*, void*, int)",
    "dg_grouped": "void deep_gemm::fp8_gemm_kernel<4096u, 7168u, 128u, 160u, 128u, 0u, 64u, 9u, 4u, 128u, 128u, 1u, "
    "true, (deep_gemm::GemmType)1>(__nv_bfloat16*, float*, int*, unsigned int, CUtensorMap_st, CUtensorMap_st)",
    "dg_dense": "void deep_gemm::fp8_gemm_kernel<24576u, 1536u, 256u, 128u, 128u, 0u, 128u, 1u, 3u, 128u, 128u, 2u, "
    "true, (deep_gemm::GemmType)0>(__nv_bfloat16*, float*, int*, unsigned int, CUtensorMap_st, CUtensorMap_st)",
    "dg_wgrad": "void deep_gemm::sm90_fp8_gemm_1d1d_impl<0u, 0u, 0u, 9u, 128u, 128u, 128u, 128u, 128u, 4u, 128u, "
    "256u, 1u, true, 132u, (deep_gemm::GemmType)3, float>(__nv_fp8_e4m3*, __nv_fp8_e4m3*, int*, unsigned int)",
    "te_cast_t": "void transformer_engine::(anonymous namespace)::block_scaled_1d_cast_transpose_kernel<true, false, "
    "true, float, __nv_bfloat16, __nv_fp8_e4m3, float, false>(__nv_bfloat16 const*, float const*, __nv_fp8_e4m3*)",
    "te_amax": "void transformer_engine::(anonymous namespace)::compute_amax_kernel<4, __nv_bfloat16>(float*, int)",
    "te_norm": "void transformer_engine::normalization::rmsnorm_fwd_tuned_kernel<transformer_engine::normalization::"
    "Kernel_traits<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, float, unsigned int, 7168u, 1u, 4u, 1u, 16u> >"
    "(transformer_engine::normalization::FwdParams)",
    "te_norm_bwd": "void transformer_engine::normalization::rmsnorm_bwd_tuned_kernel<transformer_engine::"
    "normalization::Kernel_traits<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, float, unsigned int, 7168u, 1u, 4u, "
    "1u, 16u> >(transformer_engine::normalization::BwdParams)",
    "te_rope": "void transformer_engine::fused_rope_forward_kernel<__nv_bfloat16>(__nv_bfloat16 const*, int)",
    "te_rope_bwd": "void transformer_engine::fused_rope_backward_kernel<__nv_bfloat16>(__nv_bfloat16 const*, int)",
    "te_swiglu": "void transformer_engine::gated_act_kernel<8ul, true, float, __nv_bfloat16, __nv_bfloat16>(int)",
    "te_dswiglu": "void transformer_engine::dgated_act_kernel<8ul, float, __nv_bfloat16, __nv_bfloat16>(int)",
    "te_router": "void transformer_engine::fused_topk_with_score_function_forward_kernel<float>(float const*, int)",
    "permute": "_permute_kernel",
    "unpermute": "_unpermute_kernel",
    "unpermute_bwd": "_unpermute_bwd_with_merging_probs_kernel",
    "fa_fwd": "void flash_fwd_kernel<Flash_fwd_kernel_traits<192, 128, 64, 8, false, false, cutlass::bfloat16_t, "
    "Flash_kernel_traits<192, 128, 64, 8, cutlass::bfloat16_t> >, false, true, false, false, true, true, false, "
    "false>(Flash_fwd_params)",
    "fa_bwd": "void flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<192, 64, 128, 8, 2, 4, 2, "
    "false, false, cutlass::bfloat16_t, Flash_kernel_traits<192, 64, 128, 8, cutlass::bfloat16_t> >, false, true, "
    "false, false, true, true, false>(Flash_bwd_params)",
    "fa_dot": "void flash_bwd_dot_do_o_kernel<true, Flash_bwd_kernel_traits<192, 64, 128, 8, 2, 4, 2, false, false, "
    "cutlass::bfloat16_t, Flash_kernel_traits<192, 64, 128, 8, cutlass::bfloat16_t> > >(Flash_bwd_params)",
    "nvjet": "nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NTN",
    "nccl_rs": "ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
    "ce": "void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>(float*)",
    "fill": "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, "
    "at::detail::Array<char*, 1> >(int, at::native::FillFunctor<float>, at::detail::Array<char*, 1>)",
    "mean": "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, "
    "float, float>, unsigned int, float, 4> >(at::native::ReduceOp<float, at::native::MeanOps<float, float, float, "
    "float>, unsigned int, float, 4>)",
}


class _TrainingTrace:
    """Builds torch.profiler's layout: nested cpu_ops (forward on thread 7, autograd's backward on thread 8), a
    cudaLaunchKernel inside the innermost op, the kernel on stream 7 with grid and block, linked by External id and
    correlation. ``dur`` of each kernel in µs; kernels run back to back on the GPU timeline."""

    def __init__(self) -> None:
        self.events: list[dict] = [{"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "python"}}]
        self.cpu_ts, self.gpu_ts, self.ids = 0.0, 0.0, 100

    def add(self, ops: list[tuple[str, dict]], kernels: list[tuple[str, float, list[int]]], tid: int = 7) -> None:
        width = 10.0 * (len(kernels) + 1)
        ext = None
        for depth, (name, args) in enumerate(ops):  # outermost first, each inside the previous
            self.ids += 1
            ext = self.ids
            ts, dur = self.cpu_ts + depth, width + 2 * (len(ops) - depth)
            event = {"ph": "X", "cat": "cpu_op", "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur}
            self.events.append({**event, "args": {"External id": ext, **args}})
        for i, (name, dur, grid) in enumerate(kernels):
            self.ids += 1
            corr = self.ids
            if ext is not None:
                ts = self.cpu_ts + len(ops) + 10.0 * i
                rt = {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 7, "tid": tid, "ts": ts}
                self.events.append({**rt, "dur": 3.0, "args": {"External id": ext, "correlation": corr}})
            args = {"device": 0, "stream": 7, "correlation": corr, "grid": grid, "block": [128, 1, 1]}
            args |= {"External id": ext} if ext is not None else {}
            kernel = {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": self.gpu_ts, "dur": dur}
            self.events.append({**kernel, "args": args})
            self.gpu_ts += dur + 1.0
        self.cpu_ts += width + 2 * len(ops) + 5.0


def _training_trace() -> tuple[dict, dict[str, float]]:
    """A DeepSeek-V3-like layer, forward and backward, and the µs of kernel time per stack it holds."""
    bf16, one = "c10::BFloat16", [1, 1, 1]
    t = _TrainingTrace()
    dims = {"Input Dims": [[4096, 7168], [1536, 7168]], "Input type": [bf16, bf16]}
    t.add([("nn.Module: RMSNorm", {})], [(_K["te_norm"], 30.0, [132, 1, 1])])
    t.add([("aten::linear", dims)], [(_K["nvjet"], 200.0, [12, 32, 1])])
    dg_dims = {"Input Dims": [[4096, 1536], [4096, 12], [24576, 1536], [192, 12], [4096, 24576]]}
    t.add([("deep_gemm::gemm_fp8_fp8_bf16_nt", dg_dims)], [(_K["dg_dense"], 300.0, [132, 1, 1])])
    t.add([("nn.Module: Rotary", {})], [(_K["te_rope"], 20.0, [4096, 1, 1])])
    fa_dims = {"Input Dims": [[2, 4096, 128, 192], [2, 4096, 128, 192], [2, 4096, 128, 128]], "Input type": [bf16] * 3}
    t.add([("FlashAttnFunc", fa_dims)], [(_K["fa_fwd"], 900.0, [32, 2, 128])])
    t.add([("FlashAttnFunc", {})], [(_K["fa_fwd"], 880.0, [32, 2, 128])])  # a second layer, recorded without shapes
    t.add([("TopKRouter", {})], [(_K["te_router"], 15.0, [64, 1, 1])])
    t.add([("_moe_permute_mask_map", {})], [(_K["permute"], 40.0, [16384, 28, 1])])
    t.add([], [(_K["ep_notify"], 10.0, one), (_K["ep_dispatch"], 400.0, [24, 1, 1])])  # DeepEP: no cpu_op
    t.add([("Fp8Quantize", {})], [(_K["te_amax"], 5.0, [132, 1, 1]), (_K["te_cast_t"], 25.0, [56, 128, 1])])
    t.add([("GroupedMLP", {})], [(_K["dg_grouped"], 600.0, [132, 1, 1]), (_K["te_swiglu"], 30.0, [512, 1, 1])])
    t.add([], [(_K["ep_combine"], 450.0, [24, 1, 1]), (_K["ep_ll"], 60.0, [132, 1, 1])])
    t.add([("_moe_unpermute_mask_map", {})], [(_K["unpermute"], 35.0, [4096, 28, 1])])
    t.add([("aten::cross_entropy_loss", {})], [(_K["ce"], 12.0, one)])
    t.add([("aten::fill_", {})], [(_K["fill"], 3.0, one)])
    t.add([("aten::fill_", {})], [(_K["fill"], 4.0, one)])
    t.add([("aten::mean", {})], [(_K["mean"], 6.0, one)])
    # backward, on autograd's thread
    mm = {"Input Dims": [[4096, 1536], [1536, 7168]], "Input type": [bf16, bf16]}
    bwd = "autograd::engine::evaluate_function: "
    t.add([(bwd + "MmBackward0", {}), ("MmBackward0", {}), ("aten::mm", mm)], [(_K["nvjet"], 210.0, [12, 56, 1])], 8)
    fa_bwd = [(_K["fa_dot"], 50.0, [64, 2, 128]), (_K["fa_bwd"], 2000.0, [32, 2, 128])]
    t.add([(bwd + "FlashAttnFuncBackward", {}), ("FlashAttnFuncBackward", {})], fa_bwd, 8)
    t.add([(bwd + "GroupedMLPBackward", {})], [(_K["dg_wgrad"], 700.0, [132, 1, 1]), (_K["te_dswiglu"], 45.0, one)], 8)
    t.add([(bwd + "RMSNormBackward", {})], [(_K["te_norm_bwd"], 70.0, [132, 1, 1])], 8)
    t.add([(bwd + "RotaryBackward", {})], [(_K["te_rope_bwd"], 22.0, [4096, 1, 1])], 8)
    t.add([(bwd + "UnpermuteBackward", {})], [(_K["unpermute_bwd"], 38.0, [4096, 1, 1])], 8)
    comms = {"Collective name": "reduce_scatter", "dtype": "BFloat16", "In msg nelems": 1 << 24, "Group size": 8}
    t.add([("c10d::reduce_scatter_", {}), ("record_param_comms", comms)], [(_K["nccl_rs"], 500.0, one)], 8)
    stacks = {
        "deepep": 10 + 400 + 450 + 60,
        "deepgemm": 300 + 600 + 700,
        "transformer_engine": 30 + 20 + 15 + 5 + 25 + 30 + 45 + 70 + 22,
        "flash_attention": 900 + 880 + 50 + 2000,
        "megatron": 40 + 35 + 38,
        "cublas_cutlass": 200 + 210,
        "nccl": 500,
        "torch": 12,
        "unknown": 3 + 4 + 6,
    }
    return {"traceEvents": t.events}, stacks


def _named(imp, key: str):
    """The kernel report's row of kernel ``key`` of `_K`."""
    return _only(imp.kernels, name=_K[key])


def test_training_trace_recognises_the_moe_stacks(tmp_path):
    trace, _ = _training_trace()
    path = tmp_path / "train.json"
    path.write_text(json.dumps(trace))
    imp = import_chrome_trace(path)
    kinds = {key: (_named(imp, key).stack, _named(imp, key).kind) for key in _K}
    assert kinds == {
        "ep_dispatch": ("deepep", "all_to_all"),
        "ep_combine": ("deepep", "all_to_all"),
        "ep_notify": ("deepep", "all_to_all"),
        "ep_ll": ("deepep", "all_to_all"),
        "dg_grouped": ("deepgemm", "grouped_gemm"),
        "dg_dense": ("deepgemm", "gemm"),
        "dg_wgrad": ("deepgemm", "grouped_gemm_wgrad"),
        "te_cast_t": ("transformer_engine", "cast_transpose"),
        "te_amax": ("transformer_engine", "amax"),
        "te_norm": ("transformer_engine", "norm"),
        "te_norm_bwd": ("transformer_engine", "norm_bwd"),
        "te_rope": ("transformer_engine", "rope"),
        "te_rope_bwd": ("transformer_engine", "rope_bwd"),
        "te_swiglu": ("transformer_engine", "activation"),
        "te_dswiglu": ("transformer_engine", "activation_bwd"),
        "te_router": ("transformer_engine", "router"),
        "permute": ("megatron", "permute"),
        "unpermute": ("megatron", "permute"),
        "unpermute_bwd": ("megatron", "permute_bwd"),
        "fa_fwd": ("flash_attention", "attention"),
        "fa_bwd": ("flash_attention", "attention_bwd"),
        "fa_dot": ("flash_attention", "attention_bwd"),
        "nvjet": ("cublas_cutlass", "gemm"),
        "nccl_rs": ("nccl", "reduce_scatter"),
        "ce": ("torch", "cross_entropy"),
        "fill": ("unknown", ""),
        "mean": ("unknown", ""),
    }
    assert _named(imp, "nvjet").phase == "bwd+fwd"  # the forward linear and MmBackward0's aten::mm
    assert _named(imp, "dg_wgrad").phase == "bwd" and _named(imp, "te_norm").phase == "fwd"


def test_training_trace_reads_shapes_from_names_and_grids(tmp_path):
    trace, _ = _training_trace()
    path = tmp_path / "train.json"
    path.write_text(json.dumps(trace))
    imp = import_chrome_trace(path)
    shape = {key: (_named(imp, key)["shape"], _named(imp, key)["shape_from"]) for key in _K}
    assert shape["ep_dispatch"] == ("gpus=64 mode=internode", "name")  # 8 RDMA ranks x 8 NVLink peers
    assert shape["ep_ll"] == ("hidden=7168 mode=low_latency", "name")
    assert shape["dg_grouped"] == ("n=4096 k=7168 groups=9", "name")  # m comes at run time, from no op here
    assert shape["dg_wgrad"] == ("groups=9", "name")
    assert [_named(imp, key)["dtype"] for key in ("dg_grouped", "te_cast_t", "nvjet")] == ["fp8_block", "fp8", "bf16"]
    assert shape["te_norm"] == ("hidden=7168", "name")
    assert shape["permute"] == ("tokens=16384 direction=dispatch", "grid")
    assert shape["unpermute"] == ("tokens=4096 direction=combine", "grid")
    # FlashAttention: the op's Input Dims win where recorded; the grid (32 tiles of 128, batch 2, 128 heads) else
    fa = imp.tables["attention"]
    row = _only(fa, name=_K["fa_fwd"])
    assert (row.batch, row.q_len, row.kv_len, row.heads, row.kv_heads, row.head_dim) == (2, 4096, 4096, 128, 128, 192)
    assert row.shape_from == "op" and row.time_s == pytest.approx(900e-6)
    assert shape["fa_bwd"] == ("head_dim=192 kv_len_max=4096 batch=2 heads=128", "grid")
    # DeepGEMM's dense GEMM: n, k from its template, m from the launching op's [4096, 1536] input; fp8 block-scaled
    gemm = _only(imp.tables["gemm"], impl="trace:deepgemm")
    assert (gemm.m, gemm.n, gemm.k, gemm["dtype"], gemm.shape_from) == (4096, 24576, 1536, "fp8_block", "name+op")
    assert sorted(imp.tables["gemm"]["m"]) == [4096, 4096, 4096]
    assert set(imp.tables) == {"gemm", "attention", "reduce_scatter"}
    rs = imp.tables["reduce_scatter"].iloc[0]
    assert (rs.bytes, rs.gpus) == (2 << 24, 8)
    reasons = imp.unmapped.set_index("name")["reason"].to_dict()
    assert reasons[_K["fa_fwd"]] == "partial shape (no q_len, kv_len, kv_heads)"  # the layer recorded without shapes
    assert reasons[_K["ep_dispatch"]] == "partial shape (no bytes)"
    assert reasons[_K["te_cast_t"]] == "no shape"  # a table kind now (profiling.tables.TRAIN_TABLE_KINDS)
    assert reasons[_K["fill"]] == "unknown kernel"


def test_training_trace_coverage_per_stack_and_unknown_kernels(tmp_path):
    trace, stacks = _training_trace()
    path = tmp_path / "train.json"
    path.write_text(json.dumps(trace))
    imp = import_chrome_trace(path)
    cov = imp.coverage
    total = sum(stacks.values()) * 1e-6
    tabled = (200 + 210 + 300 + 900 + 500) * 1e-6  # two cuBLAS GEMMs, DeepGEMM's dense GEMM, one attention, NCCL
    assert cov["time_s"] == pytest.approx(total) and imp.mapped_s + imp.unmapped_s == pytest.approx(total)
    assert cov["tabled_s"] == pytest.approx(tabled) and cov["tabled_share"] == pytest.approx(tabled / total)
    assert cov["recognised_share"] == pytest.approx(1 - 13e-6 / total)
    by_stack = cov["by_stack"]
    assert {s: round(v["time_s"] * 1e6) for s, v in by_stack.items()} == stacks
    assert by_stack["deepgemm"]["tabled_share"] == pytest.approx(300 / 1600)
    assert by_stack["deepep"]["tabled_s"] == 0 and by_stack["nccl"]["tabled_share"] == pytest.approx(1.0)
    assert next(iter(by_stack)) == "flash_attention"  # costliest first
    assert cov["by_kind"]["attention_bwd"]["time_s"] == pytest.approx(2050e-6)
    top = cov["unrecognised_top"]
    assert [(u["name"], u["count"]) for u in top] == [(_K["fill"], 2), (_K["mean"], 1)]
    assert top[0]["total_s"] == pytest.approx(7e-6)
    json.dumps(cov)  # plain JSON for --json


def test_import_trace_json_reports_coverage(tmp_path, capsys):
    from moesim.dashboard.cli import main

    trace, stacks = _training_trace()
    path = tmp_path / "train.json"
    path.write_text(json.dumps(trace))
    code = main(["import", str(path), "--out", str(tmp_path / "out"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["rows"] == {"gemm": 3, "attention": 1, "reduce_scatter": 1}
    assert set(out["coverage"]["by_stack"]) == set(stacks)
    assert out["coverage"]["unrecognised_top"][0]["count"] == 2


def test_template_arguments_and_numbers():
    from moesim.profiling.trace_import import _num, _template_args

    name = "void deep_ep::intranode::combine<__nv_bfloat16, (int)8, (int)768, (int)4096>(T1 *, float *)"
    assert [_num(a) for a in _template_args(name, "intranode::combine")] == [None, 8, 768, 4096]
    assert _template_args("flash_fwd_kernel<A<1, 2>, true>(p)", "flash_fwd_kernel") == ["A<1, 2>", "true"]
    assert [_num(s) for s in ("128u", "(unsigned int)7168", "(deep_gemm::GemmType)3", "true", "4096ul", "x")] == [
        128, 7168, 3, 1, 4096, None,
    ]  # fmt: skip
    assert _template_args("no_template_kernel(int)", "no_template_kernel") == []


@pytest.mark.parametrize(
    ("name", "grid", "expected"),
    [  # names as published profiles of SGLang/DeepEP runs print them (nsys and torch.profiler demanglings)
        ("void deep_ep::intranode::dispatch<8, 768, 8192>(int4*, float*, int*, long*)", None,
         ("deepep", "all_to_all", {"gpus": 8, "mode": "intranode"})),
        ("void deep_ep::intranode::combine<__nv_bfloat16, (int)2, (int)768, (int)4096>(T1 *, float *)", None,
         ("deepep", "all_to_all", {"gpus": 2, "mode": "intranode"})),
        ("void deep_ep::internode_ll::combine<(bool)0, (int)6144, (int)11, (int)4>(void *, void *, int *)", None,
         ("deepep", "all_to_all", {"hidden": 6144, "mode": "low_latency"})),
        ("void deep_ep::intranode::cached_notify_combine<(int)8>(void **, int *, int, int, int, int)", None,
         ("deepep", "all_to_all", {})),
        ("void dpsk::gemm::fp8_gemm_kernel<7168u, 16384u, 128u, 56u, 128u, 6u, 128u, 128u, 1u, "
         "(dpsk::gemm::GemmType)0>(__nv_bfloat16*, float*, int*, unsigned int)", None,
         ("deepgemm", "gemm", {"n": 7168, "k": 16384})),
        ("void deep_gemm::fp8_gemm_kernel<7168u, 2048u, 256u, 112u, 128u, 0u, 32u, 4u, 3u, 128u, 128u, 1u, true, "
         "(deep_gemm::GemmType)2>(__nv_bfloat16*, float*, int*, unsigned int)", None,
         ("deepgemm", "grouped_gemm", {"n": 7168, "k": 2048, "groups": 4})),
        ("void deep_gemm::sm100_fp8_fp4_gemm_1d1d_impl<(cute::UMMA::Major)0, (cute::UMMA::Major)0, (unsigned int)128, "
         "(unsigned int)0>(int *)", None, ("deepgemm", "gemm", {})),
        ("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<flash::"
         "CollectiveMainloopFwdSm90<2, cute::tuple<cute::C<128>, cute::C<128>, cute::C<192> >, 128> > > >(Params)",
         [132, 1, 1], ("flash_attention", "attention", {})),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0", [8, 1, 1],
         ("transformer_engine", "attention", {})),
        ("void per_token_group_quant_8bit_kernel<__nv_bfloat16, c10::Float8_e4m3fn, false>(__nv_bfloat16 const*)",
         [64, 1, 1], ("other_fused", "quantize", {})),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float> >(int)", [1, 1, 1], None),
    ],
)  # fmt: skip
def test_recognise_published_kernel_names(name, grid, expected):
    from moesim.profiling.trace_import import _recognise

    got = _recognise(name, tuple(grid) if grid else None)
    assert (got[:3] if got else None) == expected


def test_deepgemm_expert_gemms_pair_into_a_grouped_gemm_row(tmp_path):
    """gate_up [m, 7168] -> 2 x 2048 and down [m, 2048] -> 7168 over 9 local experts: one grouped_gemm row with the
    rows the launching ops' inputs give; a lone gate_up stays unmapped with the reason."""
    down = _K["dg_grouped"].replace("<4096u, 7168u,", "<7168u, 2048u,")
    t = _TrainingTrace()
    rows = 9216  # token-expert pairs this GPU received, padded per expert
    t.add(
        [("gate_up", {"Input Dims": [[rows, 7168], [rows, 56], [9, 4096, 7168]]})],
        [(_K["dg_grouped"], 600.0, [132, 1, 1])],
    )
    t.add([("swiglu", {})], [(_K["te_swiglu"], 30.0, [512, 1, 1])])
    t.add([("down", {"Input Dims": [[rows, 2048], [rows, 16], [9, 7168, 2048]]})], [(down, 300.0, [132, 1, 1])])
    t.add(
        [("gate_up", {"Input Dims": [[512, 7168], [512, 56], [9, 4096, 7168]]})],
        [(_K["dg_grouped"], 50.0, [132, 1, 1])],
    )
    path = tmp_path / "moe.json"
    path.write_text(json.dumps({"traceEvents": t.events}))
    imp = import_chrome_trace(path)
    row = imp.tables["grouped_gemm"].iloc[0]
    assert len(imp.tables["grouped_gemm"]) == 1
    assert (row.tokens, row.hidden, row.inter, row.experts, row.top_k) == (rows, 7168, 2048, 9, 1)
    assert (row["dtype"], row.impl, row.time_s) == ("fp8_block", "trace:deepgemm", pytest.approx(900e-6))
    lone = _only(imp.unmapped, name=_K["dg_grouped"])
    assert lone.reason.startswith("partial shape (one grouped GEMM") and lone.total_s == pytest.approx(50e-6)
    assert imp.coverage["by_stack"]["deepgemm"]["tabled_share"] == pytest.approx(900 / 950)


def test_nccl_collective_without_a_table_kind_is_recognised(tmp_path):
    t = _TrainingTrace()
    t.add(
        [("c10d::broadcast_", {})],
        [("ncclDevKernel_Broadcast_RING_LL(ncclDevKernelArgsStorage<4096ul>)", 8.0, [1, 1, 1])],
    )
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"traceEvents": t.events}))
    row = import_chrome_trace(path).kernels.iloc[0]
    assert (row.stack, row.kind, row.reason) == ("nccl", "broadcast", "no broadcast table")
