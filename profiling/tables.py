"""Kernel tables: the columns every measured or imported table has, and their checks.

A table is one parquet file of one op kind. Every row is one shape timed on
one device. Columns (units in the names; times are seconds):

Common to every kind:

- ``op``: the op kind (`KINDS`), the same names `model.ops.Op.kind` uses,
  plus ``permute`` and ``memcpy``;
- ``impl``: the implementation timed (``torch``, ``torch_loop``, ``triton``,
  ``vllm_fused_moe``, ``nccl``...);
- ``dtype``: the weights' (or tensors') dtype in `model.dtypes` names
  (``fp32``, ``bf16``, ``fp16``, ``fp8``, ``int4``...);
- ``time_s``: the median time of one call, s;
- optional ``time_p10_s``, ``time_p90_s`` (the spread, s), ``reps`` (timed
  repetitions) and ``threads`` (CPU threads used).

Shape columns per kind (`SHAPE_COLUMNS`, required; `OPTIONAL_COLUMNS` may be
absent and take the default shown):

- ``gemm``: ``m, n, k``: C[m, n] = A[m, k] @ B[k, n];
- ``grouped_gemm``: ``tokens, hidden, inter, experts, top_k``: one MoE
  layer's routed experts (gate_up [hidden -> 2 inter] then down [inter ->
  hidden]) for ``tokens`` tokens each routed to ``top_k`` of ``experts``;
  optional ``ep`` (1; the GPU holds experts / ep of them), ``moe_tp`` (1;
  ``inter`` is split that many ways), ``distribution`` (``balanced`` or
  ``power:<exponent>``), ``pairs`` (token-expert pairs computed on this GPU;
  default tokens x top_k / ep), ``active_experts`` (local experts with at
  least one token; default min(local experts, pairs)) and
  ``max_expert_tokens`` (the busiest expert's pairs);
- ``attention``: ``batch, q_len, kv_len, heads, kv_heads, head_dim``:
  ``batch`` sequences of ``q_len`` new tokens attending causally to
  ``kv_len`` tokens each (prefill: q_len == kv_len; decode: q_len == 1);
- ``router``: ``tokens, hidden, experts, top_k``: router GEMM, softmax, top-k;
- ``permute``: ``tokens, hidden, top_k, direction``: the dispatch gather
  (``dispatch``) or the weighted combine scatter (``combine``);
- ``memcpy``: ``bytes``: a device-to-device copy of that many bytes;
- ``all_reduce``, ``all_gather``, ``reduce_scatter``, ``all_to_all``:
  ``bytes, gpus``: the full tensor's bytes on one GPU over ``gpus`` ranks.

Metadata (device, driver, torch and triton versions, host, date, threads,
the source of the numbers) rides in the parquet file's key-value metadata
under ``moesim`` as JSON (`read_table`, `write_table`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model.errors import MoesimError

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
KINDS = ("gemm", "grouped_gemm", "attention", "router", "permute", "memcpy", *COLLECTIVES)
COMMON_COLUMNS = ("op", "impl", "dtype", "time_s")
SHAPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "grouped_gemm": ("tokens", "hidden", "inter", "experts", "top_k"),
    "attention": ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim"),
    "router": ("tokens", "hidden", "experts", "top_k"),
    "permute": ("tokens", "hidden", "top_k", "direction"),
    "memcpy": ("bytes",),
    **{c: ("bytes", "gpus") for c in COLLECTIVES},
}
OPTIONAL_COLUMNS: dict[str, dict[str, Any]] = {
    "grouped_gemm": {"ep": 1, "moe_tp": 1, "distribution": "balanced"},
}
META_KEY = b"moesim"


class TableError(MoesimError):
    """A kernel table that cannot be used (missing columns, empty, unknown op)."""


def check_table(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate a kernel table and fill optional columns; returns a copy.

    Raises `TableError` naming the file and the problem: an empty table, a
    missing column, an unknown op kind, or a time that is not positive.
    """
    if df.empty:
        raise TableError(f"{where}: the table is empty", "profile again or pick a table with rows")
    missing = [c for c in COMMON_COLUMNS if c not in df.columns]
    if missing:
        raise TableError(
            f"{where}: missing column(s) {', '.join(missing)}", "a kernel table needs op, impl, dtype and time_s"
        )
    unknown = sorted(set(df["op"].astype(str)) - set(KINDS))
    if unknown:
        raise TableError(f"{where}: unknown op kind(s) {', '.join(unknown)}", f"use one of {', '.join(KINDS)}")
    out = df.copy()
    for kind in out["op"].unique():
        need = [c for c in SHAPE_COLUMNS[kind] if c not in out.columns]
        if need:
            raise TableError(
                f"{where}: {kind} rows need column(s) {', '.join(need)}",
                f"a {kind} table has columns {', '.join(COMMON_COLUMNS + SHAPE_COLUMNS[kind])}",
            )
        for col, default in OPTIONAL_COLUMNS.get(kind, {}).items():
            if col not in out.columns:
                out[col] = default
            else:
                out[col] = out[col].fillna(default)
    times = pd.to_numeric(out["time_s"], errors="coerce")
    if times.isna().any() or (times <= 0).any():
        raise TableError(f"{where}: time_s has missing or non-positive values", "times are seconds, > 0")
    out["time_s"] = times.astype(float)
    return out


def write_table(df: pd.DataFrame, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``df`` to ``path`` (parquet) with ``meta`` as JSON metadata, atomically."""
    path = Path(path)
    check_table(df, str(path))
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    merged = {**(table.schema.metadata or {}), META_KEY: json.dumps(meta, default=str).encode()}
    table = table.replace_schema_metadata(merged)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The moesim metadata of a table file ({} when it has none)."""
    raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read and validate one table; returns (rows, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file", "give a .parquet table or a folder of them")
    try:
        df = pd.read_parquet(path)
        meta = read_meta(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise TableError(
            f"{path}: not a readable parquet table ({exc})", "give a table moesim wrote or imported"
        ) from None
    return check_table(df, str(path)), meta


def table_files(paths: list[str | Path]) -> list[Path]:
    """The ``.parquet`` files named by ``paths`` (files, or folders searched recursively).

    A folder search leaves out hidden files and calibrations (``*calibration.parquet``, as ``moesim profile``
    suggests writing beside the tables and the demo does), which are not measurement tables.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*.parquet")
                if not f.name.startswith(".") and not f.name.endswith("calibration.parquet")
            )
            if not found:
                raise TableError(f"{p}: no .parquet tables in this folder", "profile or import into it first")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise TableError(f"{p}: no such file or folder", "give table files or folders of them")
    return files


def load_tables(paths: list[str | Path]) -> list[tuple[pd.DataFrame, dict[str, Any], Path]]:
    """Read every table under ``paths``: [(rows, metadata, file)]."""
    return [(*read_table(f), f) for f in table_files(paths)]
