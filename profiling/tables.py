"""Kernel tables: the columns every measured or imported table has, and their checks.

A table is one parquet file of one op kind. Every row is one shape timed on
one device. Columns (units in the names; times are seconds):

Common to every kind:

- ``op``: the op kind (`KINDS`), the same names `model.ops.Op.kind` uses,
  plus ``permute`` and ``memcpy``;
- ``impl``: the implementation timed (``torch``, ``torch_loop``, ``triton``,
  ``vllm_fused_moe``, ``nccl``...);
- ``dtype``: the weights' (or tensors') dtype in `model.dtypes` names
  (``fp32``, ``bf16``, ``fp16``, ``fp8``, ``int4``...), or the kernel's
  quantisation scheme where one format has several (``fp8_block``,
  ``w4a16_mxfp4``...: `profiling.opshapes.TABLE_DTYPES`);
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
- training's kernels (`TRAIN_TABLE_KINDS`, `model.train_ops`): ``gemm_dgrad``, ``gemm_wgrad`` (the forward
  GEMM's ``m, n, k``: dA = dC B^T, dB = A^T dC), ``grouped_gemm_dgrad``, ``grouped_gemm_wgrad`` (the forward
  grouped GEMM's columns; the two expert GEMMs only, no activation), ``attention_bwd`` (attention's columns),
  ``norm_bwd`` (``tokens, hidden``), ``rope_bwd`` (rope's), ``activation_bwd`` (``tokens, width``: SwiGLU),
  ``permute_bwd`` (permute's), ``cross_entropy`` and ``cross_entropy_bwd`` (``tokens, vocab``), and fp8's
  ``quantize``, ``cast_transpose`` (``tokens, width``, optional ``group_cols``: elements per fp32 scale in a
  row, 128) and ``amax`` (``tokens, width``);
- ``all_reduce``, ``all_gather``, ``reduce_scatter``, ``all_to_all``:
  ``bytes, gpus``: the full tensor's bytes on one GPU over ``gpus`` ranks.

Metadata (device, driver, torch and triton versions, host, date, threads,
the source of the numbers) rides in the parquet file's key-value metadata
under ``moesim`` as JSON (`read_table`, `write_table`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from moesim.model import inputs
from moesim.model.errors import MoesimError

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
#: The inference engines' memory-bound kernels between the GEMMs (`model.ops.ENGINE_KINDS`).
ENGINE_TABLE_KINDS = ("norm", "rope", "activation", "kv_write", "topk_softmax", "sampling")
#: Training's kernels (`model.train_ops`): the backward of each forward kind, the cross-entropy, the fp8 casts.
TRAIN_TABLE_KINDS = (
    "gemm_dgrad", "gemm_wgrad", "grouped_gemm_dgrad", "grouped_gemm_wgrad", "attention_bwd", "norm_bwd", "rope_bwd",
    "activation_bwd", "permute_bwd", "cross_entropy", "cross_entropy_bwd", "quantize", "cast_transpose", "amax",
)  # fmt: skip
KINDS = (
    "gemm", "grouped_gemm", "attention", "router", "permute", "memcpy", *ENGINE_TABLE_KINDS, *COLLECTIVES,
    *TRAIN_TABLE_KINDS,
)  # fmt: skip
COMMON_COLUMNS = ("op", "impl", "dtype", "time_s")
SHAPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "grouped_gemm": ("tokens", "hidden", "inter", "experts", "top_k"),
    "attention": ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim"),
    "router": ("tokens", "hidden", "experts", "top_k"),
    "permute": ("tokens", "hidden", "top_k", "direction"),
    "memcpy": ("bytes",),
    "norm": ("tokens", "hidden", "residual"),
    "rope": ("tokens", "heads", "kv_heads", "rot_dim"),
    "activation": ("tokens", "width"),
    "kv_write": ("tokens", "width"),
    "topk_softmax": ("tokens", "experts", "top_k"),
    "sampling": ("sequences", "vocab"),
    **{c: ("bytes", "gpus") for c in COLLECTIVES},
    "gemm_dgrad": ("m", "n", "k"),
    "gemm_wgrad": ("m", "n", "k"),
    "grouped_gemm_dgrad": ("tokens", "hidden", "inter", "experts", "top_k"),
    "grouped_gemm_wgrad": ("tokens", "hidden", "inter", "experts", "top_k"),
    "attention_bwd": ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim"),
    "norm_bwd": ("tokens", "hidden"),
    "rope_bwd": ("tokens", "heads", "kv_heads", "rot_dim"),
    "activation_bwd": ("tokens", "width"),
    "permute_bwd": ("tokens", "hidden", "top_k", "direction"),
    "cross_entropy": ("tokens", "vocab"),
    "cross_entropy_bwd": ("tokens", "vocab"),
    "quantize": ("tokens", "width"),
    "cast_transpose": ("tokens", "width"),
    "amax": ("tokens", "width"),
}
OPTIONAL_COLUMNS: dict[str, dict[str, Any]] = {
    "grouped_gemm": {"ep": 1, "moe_tp": 1, "distribution": "balanced"},
    "grouped_gemm_dgrad": {"ep": 1, "moe_tp": 1, "distribution": "balanced"},
    "grouped_gemm_wgrad": {"ep": 1, "moe_tp": 1, "distribution": "balanced"},
    "norm_bwd": {"residual": 0},
    "quantize": {"group_cols": 128},
    "cast_transpose": {"group_cols": 128},
    "sampling": {"sampling": "greedy"},
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


def table_writer(df: pd.DataFrame, meta: dict[str, Any], where: str) -> Callable[[str], None]:
    """Check ``df`` (`check_table`, naming ``where``) now; returns ``write(path)``, which writes it as parquet
    with ``meta`` as JSON metadata (for `model.outputs.write_file` or `write_table_folder`)."""
    check_table(df, where)
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    merged = {**(table.schema.metadata or {}), META_KEY: json.dumps(meta, default=str).encode()}
    table = table.replace_schema_metadata(merged)
    return lambda tmp: pq.write_table(table, tmp)


def write_table(df: pd.DataFrame, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``df`` to ``path`` (parquet) with ``meta`` as JSON metadata, whole or not at all."""
    from moesim.model.outputs import write_file

    return write_file(path, table_writer(df, meta, str(path)))


# --- folders of tables (``moesim profile`` and ``moesim import`` write them) ---------------------------------------
#: The commands whose outputs are folders of tables; each may add tables to a folder the other wrote.
TABLE_COMMANDS = ("profile", "import")
#: The columns of ``unmapped.csv`` (``moesim import`` of a trace).
UNMAPPED_COLUMNS = ("name", "count", "total_s", "reason")


def owned_table_file(path: Path) -> bool:
    """Whether moesim wrote ``path``, a file in a folder of tables: a parquet with moesim metadata (a table or a
    calibration), a ``hardware.yaml`` holding one device spec, an ``unmapped.csv`` with its header."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        if path.suffix == ".parquet":  # a table (`META_KEY`) or a calibration (`profiling.calibrate.save`)
            return bool({META_KEY, b"moesim_calibration"} & set(pq.read_schema(path).metadata or {}))
        if path.name == "hardware.yaml":
            d = yaml.safe_load(path.read_text(encoding="utf-8"))
            return (
                isinstance(d, dict)
                and len(d) == 1
                and all(isinstance(v, dict) and "peak_flops" in v for v in d.values())
            )
        if path.name == "unmapped.csv":
            with open(path, encoding="utf-8") as f:
                return f.readline().strip() == ",".join(UNMAPPED_COLUMNS)
    except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError, pa.ArrowException):
        return False
    return False


def is_table_folder(folder: Path) -> bool:
    """Whether ``folder`` was written by an older ``moesim profile``/``import`` (before output markers): every
    entry is a file moesim writes there (`owned_table_file`) or an older moesim's ``.NAME.tmp``."""
    try:
        entries = list(folder.iterdir())
        return bool(entries) and all(
            (e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file()) or owned_table_file(e) for e in entries
        )
    except OSError:
        return False


def check_table_folder(out: str | Path, command: str, force: bool = False, names: tuple[str, ...] = ()) -> None:
    """Raise `MoesimError` unless ``command`` (``profile`` or ``import``) may add tables to ``out``.

    ``out`` may be absent, empty, an earlier output of ``profile``/``import`` (its marker, or only their files),
    or with ``force`` any folder but a dangerous one (`model.outputs.dangerous`); of the files ``names`` to be
    written there, one that exists must be moesim's (`owned_table_file`) unless ``force``. Checked before the
    work, so a long profile never ends in a refusal; `write_table_folder` checks again.
    """
    from moesim.model.outputs import check_replaceable, marker_command

    out = Path(out)
    wrote = marker_command(out) if out.is_dir() and not out.is_symlink() else None
    check_replaceable(out, wrote if wrote in TABLE_COMMANDS else command, force, legacy=is_table_folder)
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise MoesimError(f"--out {out}: {probe} is a file, not a folder", "give --out a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MoesimError(f"cannot write {out}: permission denied (read-only)", "choose a writable path for --out")
    for name in () if force else names:
        p = out / name
        if p.is_symlink() or (p.exists() and not owned_table_file(p)):
            raise MoesimError(
                f"--out {out} holds {name}, which moesim did not write; refusing to overwrite it",
                "give --out a new folder, or add --force to overwrite it",
            )


def write_table_folder(
    out: str | Path, command: str, files: dict[str, Callable[[str], None]], force: bool = False
) -> dict[str, Path]:
    """Write ``files`` (name -> ``write(tmp_path)``) into the folder ``out``, adding to what is there.

    Nothing is deleted: a file of the same name is replaced only when moesim wrote it (`owned_table_file`) or
    with ``force``; the others stay. Each file is written whole (`model.outputs.write_file`); if one fails, the
    files this call created are removed again (and ``out``, when this call created it), so an error leaves no
    new file behind. A new or empty folder gets moesim's output marker (`model.outputs.MARKER`).

    Returns:
        name -> the path written.
    """
    from moesim.model.outputs import MARKER, write_file, write_text

    out = Path(out)
    check_table_folder(out, command, force, tuple(files))
    created = [p for p in (out, *out.parents) if not p.exists()]
    fresh = not out.exists() or not any(out.iterdir())
    existed = {name for name in files if (out / name).exists()}
    written: dict[str, Path] = {}
    try:
        for name, write in files.items():
            written[name] = write_file(out / name, write)
        if fresh:
            write_text(out / MARKER, json.dumps({"command": command, "pid": os.getpid(), "time": time.time()}))
    except BaseException:
        for name, p in written.items():
            if name not in existed:
                p.unlink(missing_ok=True)
        if fresh:
            (out / MARKER).unlink(missing_ok=True)
        for p in created:  # innermost first; only folders this call made, and only while empty
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    return written


def read_meta(path: str | Path) -> dict[str, Any]:
    """The moesim metadata of a table file ({} when it has none)."""
    raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    if not raw:
        return {}
    where = f"{path} (its moesim metadata)"
    return inputs.expect_mapping(inputs.parse_json(raw, where), where, "give a table moesim wrote or imported")


def check_parquet(path: str | Path, what: str, hint: str) -> None:
    """`TableError` naming ``path`` unless it is a file that starts as a parquet file does (`model.inputs`: a
    folder, an empty file, text or another binary format is refused before pyarrow reads it)."""
    try:
        head = inputs.read_bytes(path, what, hint, limit=4)
        inputs.check_magic(head, ".parquet", path, hint, noun="a readable parquet table")
    except MoesimError as exc:
        raise TableError(exc.message, exc.hint) from None


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read and validate one table; returns (rows, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file", "give a .parquet table or a folder of them")
    check_parquet(path, "a kernel table", "give a table moesim wrote or imported")
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


def folder_signature(folder: str | Path, pattern: str = "*.parquet") -> tuple[tuple[str, int, int], ...]:
    """(path, bytes, modification time in ns) of every entry matching ``pattern`` under ``folder``, sorted; () where
    ``folder`` is not a folder. A key for caches of what was read from it: a file added, removed or rewritten
    changes it."""
    folder = Path(folder)
    if not folder.is_dir():
        return ()
    return tuple((str(f), (s := f.stat()).st_size, s.st_mtime_ns) for f in sorted(folder.rglob(pattern)))
