"""Import AIConfigurator's kernel database (``gemm_perf``, ``moe_perf``, ``nccl_perf``, attention; parquet or text).

The format, as ai-dynamo/aiconfigurator ships it (one file per op family,
``latency`` in milliseconds; ``*_perf.parquet``, or ``*_perf.txt`` with the same
columns as comma-separated text, as its PyPI wheel ships every GPU's tables under
``aiconfigurator/systems/data/<gpu>/<engine>/<version>/``, the NCCL table under
``<gpu>/nccl/<version>/``):

- ``gemm_perf``: ``gemm_dtype`` (`DTYPES`), ``m, n, k``:
  C[m, n] = A[m, k] @ B[k, n];
- ``moe_perf``: ``moe_dtype`` (`DTYPES`), ``kernel_source`` (the engine's
  kernel: ``vllm_fused_moe``, ``vllm_marlin_int4_moe``...), ``num_tokens,
  hidden_size, inter_size, topk, num_experts, moe_tp_size,
  moe_ep_size, distribution``: one fused MoE layer on one GPU of the EP/TP
  group (no all-to-all);
- ``nccl_perf``: ``op_name`` (all_gather, all_reduce, alltoall,
  reduce_scatter), ``nccl_dtype`` (`NCCL_DTYPES`), ``num_gpus``,
  ``message_size``. The message size counts elements, not bytes: at the
  same ``message_size`` a half all-gather takes about twice as long as an
  int8 one, as it moves twice the bytes; bytes = elements x element size.
- ``context_attention_perf`` and ``generation_attention_perf`` (the wheel's text tables): the engine's attention
  forward over ``batch_size`` sequences of ``num_heads`` / ``num_key_value_heads`` heads of ``head_dim``, whole
  prompts of ``isl`` tokens or one new token over a sequence of ``step`` tokens, its ``kv_cache_dtype`` (16-bit
  rows only); ``kernel_source`` the backend (``vllm_flash_attn``, ``vllm_flashinfer``), the KV-cache write of the
  new tokens in the timing.

AIConfigurator's expert-parallel MoE rows (``moe_ep_size`` > 1) are left out of the import, and the summary
counts them (``left_out``): they time vLLM's expert parallelism without an all-to-all, in which every GPU holds
every token of the group and its fused-MoE kernel aligns and scans all of them for its local experts (on the H100,
DeepSeek-V3's fp8 layer at EP64: 0.17 ms at 256 tokens for 32 local pairs, 3.35 ms at 16,384 tokens for 2,048 local
pairs, where the same 2,048 pairs over 32 experts at EP8 take 1.0 ms: the time follows the group's tokens, not the
GPU's pairs). moesim's expert-parallel layers are dispatched (DeepEP, or the NCCL all-to-all): a GPU's kernel sees
only the pairs sent to it, so those rows would time a layer moesim never runs (a DeepSeek-V3 EP64 decode step's
experts at 195 ms, 15x the achievable model's 13 ms).

Mapped to moesim tables (`profiling.tables`): every quantisation scheme stays
its own table dtype, so each kernel gets its own fit and the cost model never
times one scheme with another's (`DTYPES`: bfloat16 -> bf16, fp8 (per-tensor
scales) -> fp8, fp8_block -> fp8_block, int4_wo -> int4, w4a16_mxfp4 ->
w4a16_mxfp4...); ``impl`` is the ``kernel_source`` (`profiling.costmodel.KERNELS`
names the engine kernel it measured); ``time_s`` = latency / 1000. A dtype
outside `DTYPES` is refused with one line naming it; a MoE ``kernel_source``
that is no engine kernel moesim knows is imported, listed under ``unmapped``
in the summary and warned about on stderr (its fit times MoE only when the
engine asks for no kernel in particular).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.profiling.costmodel import kernel_family, kernel_of
from moesim.profiling.runner import cuda_preset
from moesim.profiling.tables import TableError, check_parquet, check_table_folder, table_writer, write_table_folder

#: AIConfigurator's GEMM and MoE quant modes -> (moesim table dtype, impl suffix). Source: GEMMQuantMode and
#: MoEQuantMode in ai-dynamo/aiconfigurator@032de3f76714545c74d81d247cdb1a3f93f388c9
#: src/aiconfigurator/sdk/common.py (``float16`` is the 16-bit mode's name in releases before ``bfloat16``).
#: Table dtypes outside `model.dtypes` are described in `profiling.opshapes.TABLE_DTYPES`. The suffix keeps a
#: variant of one format's kernel apart (its own fit; `profiling.costmodel.kernel_of` reads past it).
DTYPES: dict[str, tuple[str, str]] = {
    "bfloat16": ("bf16", ""),
    "float16": ("fp16", ""),
    "fp8": ("fp8", ""),  # W8A8 e4m3, per-tensor scales
    "fp8_static": ("fp8", ":fp8_static"),  # per-tensor, static activation scale
    "fp8_ootb": ("fp8", ":fp8_ootb"),  # TensorRT's out-of-the-box fp8 GEMM
    "fp8_block": ("fp8_block", ""),  # 128 x 128 weight blocks, 1 x 128 activation groups (DeepSeek-V3's fp8)
    "sq": ("int8", ""),  # W8A8 int8 (SmoothQuant)
    "int8_wo": ("int8_wo", ""),  # W8A16
    "int4_wo": ("int4", ""),  # W4A16, group scales (GPTQ/AWQ: Marlin in vLLM)
    "w4afp8": ("w4afp8", ""),  # int4 weights, fp8 activations
    "w4a16_mxfp4": ("w4a16_mxfp4", ""),  # MXFP4 weights, 16-bit math (gpt-oss on Hopper)
    "w4a8_mxfp4_mxfp8": ("w4a8_mxfp4_mxfp8", ""),  # MXFP4 weights, MXFP8 activations (Blackwell)
    "nvfp4": ("nvfp4", ""),  # NVFP4 weights and activations (Blackwell)
}
#: AIConfigurator's ``nccl_dtype`` (CommQuantMode, same file) -> (moesim dtype, bytes per element).
NCCL_DTYPES: dict[str, tuple[str, int]] = {
    "half": ("fp16", 2),
    "bfloat16": ("bf16", 2),
    "float": ("fp32", 4),
    "int8": ("int8", 1),
    "fp8": ("fp8", 1),
}
#: The columns both attention tables share (`convert`).
_ATTENTION = ("batch_size", "num_heads", "num_key_value_heads", "head_dim", "kv_cache_dtype", "latency")
NCCL_OPS = {
    "all_gather": "all_gather",
    "all_reduce": "all_reduce",
    "alltoall": "all_to_all",
    "reduce_scatter": "reduce_scatter",
}
FILES = {
    "gemm_perf": ("gemm_dtype", "m", "n", "k", "latency"),
    "moe_perf": ("moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "latency"),
    "nccl_perf": ("op_name", "nccl_dtype", "num_gpus", "message_size", "latency"),
    "context_attention_perf": (*_ATTENTION, "isl"),
    "generation_attention_perf": (*_ATTENTION, "step"),
}


def _need(df: pd.DataFrame, cols: tuple[str, ...], where: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise TableError(f"{where}: missing column(s) {', '.join(missing)}", "is this an AIConfigurator *_perf table?")
    if df.empty:
        raise TableError(f"{where}: the table is empty", "give a non-empty AIConfigurator table")


def _impl(df: pd.DataFrame, dtype_col: str) -> pd.Series:
    """The rows' ``impl``: their ``kernel_source``, with the dtype's variant suffix (`DTYPES`)."""
    src = df["kernel_source"].astype(str) if "kernel_source" in df else pd.Series("aiconfigurator", index=df.index)
    return src + df[dtype_col].astype(str).map(lambda d: DTYPES.get(d, ("", ""))[1])  # unknown: `_dtype` refuses


def _dtype(df: pd.DataFrame, col: str, where: Path) -> pd.Series:
    """The rows' moesim table dtype; `TableError` naming every value moesim cannot map (no row is dropped)."""
    unknown = sorted(set(df[col].astype(str)) - set(DTYPES))
    if unknown:
        raise TableError(
            f"{where}: {col} {', '.join(map(repr, unknown))} is no kernel moesim can map",
            f"known: {', '.join(DTYPES)}; drop those rows or map them in profiling/aiconfigurator.py DTYPES",
        )
    return df[col].astype(str).map(lambda d: DTYPES[d][0])


def allgather_ep_rows(df: pd.DataFrame) -> pd.Series:
    """Which rows of a ``moe_perf`` table are expert-parallel (``moe_ep_size`` > 1): vLLM's EP without an
    all-to-all, which the import leaves out (module docstring)."""
    if "moe_ep_size" not in df:
        return pd.Series(False, index=df.index)
    return df["moe_ep_size"].astype(int) > 1


def attention_16bit(df: pd.DataFrame) -> pd.Series:
    """Which rows of an attention table keep a 16-bit KV cache (the ones imported: an fp8 cache is another kernel)."""
    return df["kv_cache_dtype"].astype(str).isin(("float16", "bfloat16"))


def _attention_rows(name: str, df: pd.DataFrame, where: Path) -> pd.DataFrame:
    """An attention table as moesim's ``attention`` rows (`profiling.opshapes.row_op`): ``context_attention_perf``
    whole prompts of ``isl`` tokens (causal, from scratch), ``generation_attention_perf`` one new token over a
    sequence of ``step`` tokens (its cache and the new one: AIConfigurator's collector logs the sequence length as
    ``step``). Only 16-bit caches (`attention_16bit`). AIConfigurator times the engine's attention forward in a CUDA
    graph, the KV-cache write of the new tokens included (ai-dynamo/aiconfigurator collector/vllm/collect_attn.py), a
    few us of a decode step's attention that moesim also charges as its ``kv_write`` op."""
    keep = df[attention_16bit(df)]
    if keep.empty:
        raise TableError(f"{where}: no rows of a 16-bit KV cache", "moesim imports 16-bit caches' attention only")
    prefill = name.startswith("context")
    q_len = keep["isl"].astype(int) if prefill else pd.Series(1, index=keep.index)
    kv_len = keep["isl"].astype(int) if prefill else keep["step"].astype(int)
    dtype = keep["kv_cache_dtype"].astype(str).map(lambda d: DTYPES[d][0])
    out = pd.DataFrame({"op": "attention", "impl": _impl(keep, "kv_cache_dtype"), "dtype": dtype}, index=keep.index)
    out["batch"] = keep["batch_size"].astype(int)
    out["q_len"] = q_len
    out["kv_len"] = kv_len
    out["heads"] = keep["num_heads"].astype(int)
    out["kv_heads"] = keep["num_key_value_heads"].astype(int)
    out["head_dim"] = keep["head_dim"].astype(int)
    return out


def convert(name: str, df: pd.DataFrame, where: Path) -> pd.DataFrame:
    """One AIConfigurator table (``gemm_perf``, ``moe_perf``, ``nccl_perf``, ``context_attention_perf`` or
    ``generation_attention_perf``) as moesim rows (a ``moe_perf`` table's expert-parallel rows left out:
    `allgather_ep_rows`; an attention table's fp8-cache rows: `attention_16bit`)."""
    _need(df, FILES[name], where)
    if name == "moe_perf":
        df = df[~allgather_ep_rows(df)]
    t = df["latency"].astype(float) / 1e3
    if name == "gemm_perf":
        out = pd.DataFrame({"op": "gemm", "impl": _impl(df, "gemm_dtype"), "dtype": _dtype(df, "gemm_dtype", where)})
        out[["m", "n", "k"]] = df[["m", "n", "k"]].astype(int).to_numpy()
    elif name == "moe_perf":
        out = pd.DataFrame(
            {"op": "grouped_gemm", "impl": _impl(df, "moe_dtype"), "dtype": _dtype(df, "moe_dtype", where)}
        )
        cols = {"num_tokens": "tokens", "hidden_size": "hidden", "inter_size": "inter", "topk": "top_k"}
        cols |= {"num_experts": "experts", "moe_tp_size": "moe_tp", "moe_ep_size": "ep"}
        for src, dst in cols.items():
            out[dst] = df[src].astype(int).to_numpy() if src in df else 1
        out["distribution"] = df["distribution"].astype(str).to_numpy() if "distribution" in df else "balanced"
    elif name.endswith("attention_perf"):
        out = _attention_rows(name, df, where)
        df = df.loc[out.index]
        t = t.loc[out.index]
    else:
        ops = df["op_name"].map(NCCL_OPS)
        if ops.isna().any():
            bad = sorted(set(df.loc[ops.isna(), "op_name"].astype(str)))
            raise TableError(f"{where}: unknown op_name(s) {', '.join(bad)}", f"known: {', '.join(NCCL_OPS)}")
        names = df["nccl_dtype"].astype(str)
        bad = sorted(set(names) - set(NCCL_DTYPES))
        if bad:
            raise TableError(f"{where}: unknown nccl_dtype(s) {', '.join(bad)}", f"known: {', '.join(NCCL_DTYPES)}")
        size = names.map(lambda d: NCCL_DTYPES[d][1])
        out = pd.DataFrame({"op": ops, "impl": "nccl", "dtype": names.map(lambda d: NCCL_DTYPES[d][0])})
        out["bytes"] = (df["message_size"].astype(float) * size).astype("int64").to_numpy()
        out["gpus"] = df["num_gpus"].astype(int).to_numpy()
    out["time_s"] = t.to_numpy()
    return out


def _tables_in(folder: Path) -> list[Path]:
    """The ``*_perf.parquet`` and ``*_perf.txt`` files of ``folder``."""
    return [*folder.glob("*_perf.parquet"), *folder.glob("*_perf.txt")]


def _read(f: Path) -> pd.DataFrame:
    """One AIConfigurator table, parquet or comma-separated text (the wheel's ``*_perf.txt``)."""
    if f.suffix == ".txt":
        try:
            return pd.read_csv(f, skipinitialspace=True)
        except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TableError(f"{f}: not a readable text table ({reason})", "re-download the table") from None
    check_parquet(f, "an AIConfigurator table", "re-download the table")
    try:
        return pd.read_parquet(f)
    except (OSError, ValueError) as exc:
        raise TableError(f"{f}: not a readable parquet file ({exc})", "re-download the table") from None


def import_aiconfigurator(src: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Convert every ``*_perf.parquet`` or ``*_perf.txt`` under ``src`` into moesim tables under ``out``.

    Returns a summary: the files written, rows per kind, the device, the kernels (``kind/dtype/impl`` -> the
    engine kernel it times, `profiling.costmodel.kernel_of`), ``unmapped``: the MoE kernel sources that are
    no engine kernel moesim knows (one warning line each on stderr), and ``left_out``: per file, the
    expert-parallel MoE rows not imported (`allgather_ep_rows`; one note line on stderr). The
    hardware in each table's metadata is the GPU preset named by the
    ``device`` column (``NVIDIA H100 80GB HBM3`` -> H100-SXM). Tables are added to ``out`` as
    `profiling.tables.write_table_folder` does (``force``: over files moesim did not write).
    """
    src, out = Path(src), Path(out)
    check_table_folder(out, "import", force)
    files = sorted(p for p in ([src] if src.is_file() else _tables_in(src)) if p.stem in FILES)
    if not files:
        raise TableError(
            f"{src}: no gemm_perf/moe_perf/nccl_perf .parquet or .txt files", "point at an AIConfigurator folder"
        )
    stems = [f.stem for f in files]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise TableError(
            f"{src}: both a .parquet and a .txt of {', '.join(twice)}", "import one of them (point at the file)"
        )
    converted: list[tuple[str, pd.DataFrame, dict[str, Any]]] = []
    left_out: dict[str, int] = {}
    for f in files:
        raw = _read(f)
        device = str(raw["device"].iloc[0]) if "device" in raw and len(raw) else "unknown"
        preset = cuda_preset(device)
        meta = {
            "source": f"aiconfigurator: {f.name}",
            "device": device,
            "device_key": preset.key if preset else None,
            "hardware": preset.model_dump() if preset else None,
            "framework": str(raw["framework"].iloc[0]) if "framework" in raw and len(raw) else None,
            "version": str(raw["version"].iloc[0]) if "version" in raw and len(raw) else None,
        }
        if f.stem == "moe_perf":
            dropped = int(allgather_ep_rows(raw).sum())
            if dropped:
                left_out[f.name] = dropped
                print(
                    f"note: {f}: {dropped} expert-parallel rows (moe_ep_size > 1) left out: they time vLLM's EP "
                    "without an all-to-all (every GPU scans the group's tokens), which moesim does not run",
                    file=sys.stderr,
                )
        if f.stem.endswith("attention_perf") and "kv_cache_dtype" in raw:
            dropped = int((~attention_16bit(raw)).sum())
            if dropped:
                left_out[f.name] = dropped
                print(f"note: {f}: {dropped} rows of an fp8 KV cache left out (moesim imports 16-bit caches' "
                      "attention)", file=sys.stderr)  # fmt: skip
        converted.append((f.stem, convert(f.stem, raw, f), meta))
    files, rows, kernels = {}, {}, {}
    for _, df, _ in converted:
        for (kind, dtype, impl), _ in df.groupby(["op", "dtype", "impl"], sort=True):
            kernels[f"{kind}/{dtype}/{impl}"] = kernel_of(str(kind), str(impl))
    unmapped = sorted(k for k, v in kernels.items() if v is None and kernel_family(k.split("/")[0]) is not None)
    for k in unmapped:
        print(
            f"warning: {src}: {k}: kernel_source {k.split('/')[2]!r} is no engine kernel moesim knows; its fit times "
            "MoE only when the engine asks for no kernel in particular (add it to profiling/costmodel.py KERNELS)",
            file=sys.stderr,
        )
    parts: dict[str, tuple[list[pd.DataFrame], dict[str, Any]]] = {}  # the two attention tables share one
    for stem, df, meta in converted:
        for kind, part in df.groupby("op", sort=True):
            name = f"{kind}.parquet" if stem != "nccl_perf" else f"nccl_{kind}.parquet"
            if name in parts:
                parts[name][0].append(part)
                parts[name][1]["source"] += f", {meta['source'].removeprefix('aiconfigurator: ')}"
            else:
                parts[name] = ([part], dict(meta))
            rows[str(kind)] = rows.get(str(kind), 0) + len(part)
    for name, (dfs, meta) in parts.items():
        files[name] = table_writer(pd.concat(dfs, ignore_index=True), meta, str(out / name))
    written = [str(p) for p in write_table_folder(out, "import", files, force).values()]
    devices = sorted({m["device"] for _, _, m in converted})
    return {
        "out": str(out),
        "files": written,
        "rows": rows,
        "device": devices,
        "kernels": kernels,
        "unmapped": unmapped,
        "left_out": left_out,
    }
