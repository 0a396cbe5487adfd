"""Import AIConfigurator's kernel database (``gemm_perf``, ``moe_perf``, ``nccl_perf`` parquet).

The format, as ai-dynamo/aiconfigurator ships it (one file per op family,
``latency`` in milliseconds):

- ``gemm_perf``: ``gemm_dtype`` (bfloat16, fp8, fp8_block), ``m, n, k``:
  C[m, n] = A[m, k] @ B[k, n];
- ``moe_perf``: ``moe_dtype`` (bfloat16, fp8, fp8_block, int4_wo),
  ``num_tokens, hidden_size, inter_size, topk, num_experts, moe_tp_size,
  moe_ep_size, distribution``: one fused MoE layer on one GPU of the EP/TP
  group (no all-to-all);
- ``nccl_perf``: ``op_name`` (all_gather, all_reduce, alltoall,
  reduce_scatter), ``nccl_dtype`` (half, int8), ``num_gpus``,
  ``message_size``. The message size counts elements, not bytes: at the
  same ``message_size`` a half all-gather takes about twice as long as an
  int8 one, as it moves twice the bytes; bytes = elements x element size.

Mapped to moesim tables (`profiling.tables`): dtypes bfloat16 -> bf16,
fp8 and fp8_block -> fp8 (the block-scaled kernel keeps its name in
``impl``), int4_wo -> int4; ``time_s`` = latency / 1000.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from moesim.profiling.runner import cuda_preset
from moesim.profiling.tables import TableError, check_parquet, check_table_folder, table_writer, write_table_folder

DTYPES = {"bfloat16": "bf16", "fp8": "fp8", "fp8_block": "fp8", "int4_wo": "int4", "float16": "fp16"}
NCCL_BYTES = {"half": 2, "int8": 1, "bfloat16": 2, "float": 4, "fp8": 1}
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
}


def _need(df: pd.DataFrame, cols: tuple[str, ...], where: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise TableError(f"{where}: missing column(s) {', '.join(missing)}", "is this an AIConfigurator *_perf table?")
    if df.empty:
        raise TableError(f"{where}: the table is empty", "give a non-empty AIConfigurator table")


def _impl(df: pd.DataFrame, dtype_col: str) -> pd.Series:
    src = df["kernel_source"].astype(str) if "kernel_source" in df else pd.Series("aiconfigurator", index=df.index)
    return src.where(df[dtype_col] != "fp8_block", src + ":fp8_block")


def _dtype(df: pd.DataFrame, col: str, where: Path) -> pd.Series:
    unknown = sorted(set(df[col].astype(str)) - set(DTYPES))
    if unknown:
        raise TableError(f"{where}: unknown {col} value(s) {', '.join(unknown)}", f"known: {', '.join(DTYPES)}")
    return df[col].map(DTYPES)


def convert(name: str, df: pd.DataFrame, where: Path) -> pd.DataFrame:
    """One AIConfigurator table (``gemm_perf``, ``moe_perf`` or ``nccl_perf``) as moesim rows."""
    _need(df, FILES[name], where)
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
    else:
        ops = df["op_name"].map(NCCL_OPS)
        if ops.isna().any():
            bad = sorted(set(df.loc[ops.isna(), "op_name"].astype(str)))
            raise TableError(f"{where}: unknown op_name(s) {', '.join(bad)}", f"known: {', '.join(NCCL_OPS)}")
        size = df["nccl_dtype"].map(NCCL_BYTES)
        if size.isna().any():
            raise TableError(f"{where}: unknown nccl_dtype", f"known: {', '.join(NCCL_BYTES)}")
        out = pd.DataFrame({"op": ops, "impl": "nccl", "dtype": df["nccl_dtype"].map({"half": "fp16"}).fillna("int8")})
        out["bytes"] = (df["message_size"].astype(float) * size).astype("int64").to_numpy()
        out["gpus"] = df["num_gpus"].astype(int).to_numpy()
    out["time_s"] = t.to_numpy()
    return out


def import_aiconfigurator(src: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Convert every ``*_perf.parquet`` under ``src`` into moesim tables under ``out``.

    Returns a summary: the files written, rows per kind, and the device. The
    hardware in each table's metadata is the GPU preset named by the
    ``device`` column (``NVIDIA H100 80GB HBM3`` -> H100-SXM). Tables are added to ``out`` as
    `profiling.tables.write_table_folder` does (``force``: over files moesim did not write).
    """
    src, out = Path(src), Path(out)
    check_table_folder(out, "import", force)
    files = sorted(p for p in ([src] if src.is_file() else src.glob("*_perf.parquet")) if p.stem in FILES)
    if not files:
        raise TableError(f"{src}: no gemm_perf/moe_perf/nccl_perf .parquet files", "point at an AIConfigurator folder")
    converted: list[tuple[str, pd.DataFrame, dict[str, Any]]] = []
    for f in files:
        check_parquet(f, "an AIConfigurator table", "re-download the table")
        try:
            raw = pd.read_parquet(f)
        except (OSError, ValueError) as exc:
            raise TableError(f"{f}: not a readable parquet file ({exc})", "re-download the table") from None
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
        converted.append((f.stem, convert(f.stem, raw, f), meta))
    files, rows = {}, {}
    for stem, df, meta in converted:
        for kind, part in df.groupby("op", sort=True):
            name = f"{kind}.parquet" if stem != "nccl_perf" else f"nccl_{kind}.parquet"
            files[name] = table_writer(part.reset_index(drop=True), meta, str(out / name))
            rows[str(kind)] = rows.get(str(kind), 0) + len(part)
    written = [str(p) for p in write_table_folder(out, "import", files, force).values()]
    devices = sorted({m["device"] for _, _, m in converted})
    return {"out": str(out), "files": written, "rows": rows, "device": devices}
