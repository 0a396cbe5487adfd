"""Import a torch.profiler Chrome trace (``prof.export_chrome_trace``) into kernel tables.

Events are complete (``"ph": "X"``) events with ``ts`` and ``dur`` in µs; ``time_s = dur * 1e-6``
and every table row is one occurrence (nothing is averaged). Shapes come from the ``Input Dims``
and ``Input type`` args that ``record_shapes=True`` adds to ``cpu_op`` events.

- CPU trace (no ``kernel`` events): each thread's ``cpu_op`` events are nested by time and walked
  from the top. The **outermost** op with a parser (`_OPS`) becomes one row and its children are not
  looked at (``aten::linear`` is mapped, the ``aten::addmm`` inside it is not). An op with no parser
  and no mappable descendant is unmapped with its whole time; one with mappable descendants gives
  only its self time (its time minus its children's) to unmapped, and its children are walked.
  Thus ``mapped_s + unmapped_s`` is the time of the top-level ops.
- CUDA trace: only GPU events (``kernel``, ``gpu_memcpy``, ``gpu_memset``) are counted. A kernel's
  kind comes from its name (`_PATTERNS`); its shape from the ``cpu_op`` that launched it (kernel
  ``External id``, else the ``cuda_runtime`` launch with the same ``correlation``) or the outermost
  ancestor of that op with a parser of the same kind. Kernels of one kind launched under one op
  call are summed into one row (the fused-MoE op's two GEMM kernels are one grouped_gemm row).
  NCCL kernels take ``Collective name``/``In msg nelems``/``Group size``/``dtype`` from their own
  args or the launching ops (``record_param_comms``); ``gpu_memcpy`` takes its ``bytes`` arg.

Unmapped reasons: "unknown op" (CPU op with no parser), "unknown kernel" (no name pattern), "no shape"
(no launching op with a parser, or no ``Input Dims``), "no hidden size" (router), "host copy" (H2D/D2H).

Shape rules: gemm ``m, n, k`` with batch dims folded into ``m`` (``bmm`` [B, M, K] @ [B, K, N] gives
m = B * M: same FLOPs); attention from q [B, H, Lq, D] and k [B, Hkv, Lkv, D] (``_flash_attention_forward``:
[B, L, H, D]); router from ``aten::topk`` on [tokens, experts] with ``hidden`` = ``k`` of the latest
earlier GEMM on the same thread whose output is [tokens, experts] (the gate), else unmapped "no hidden
size" (the row's time is the top-k alone); permute from ``index_select`` (dispatch) and ``index_add_``
/ ``scatter_add_`` (combine): rows moved = tokens * top_k when a multiple of the source rows, else
tokens = rows moved, top_k = 1; memcpy bytes = elements x element size of ``copy_``'s source / ``clone``.
"""

from __future__ import annotations

import bisect
import gzip
import math
import re
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.model import inputs
from moesim.model.errors import MoesimError
from moesim.profiling.tables import SHAPE_COLUMNS, TableError, check_table

Shape = dict[str, Any]
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset")
# (kind, substrings of the lower-cased kernel name), first match wins; the matched word names the family.
_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("router", ("topk", "softmax")),
    ("permute", ("indexselect", "index_select", "indexfunc", "scatter_gather", "scatter_add", "permute")),
    ("grouped_gemm", ("fused_moe", "moe")),
    ("gemm", ("nvjet", "cutlass", "xmma", "cublas", "sgemm", "gemm")),
    ("memcpy", ("memcpy", "copy")),
)
_NCCL = (("allreduce", "all_reduce"), ("allgather", "all_gather"), ("reducescatter", "reduce_scatter"))
_NCCL += (("alltoall", "all_to_all"), ("sendrecv", "all_to_all"))
_TYPES = {"float": ("fp32", 4), "float32": ("fp32", 4), "double": ("fp64", 8), "half": ("fp16", 2)}
_TYPES |= {"float16": ("fp16", 2), "bfloat16": ("bf16", 2), "long int": ("int64", 8), "int": ("int32", 4)}
_TYPES |= {"short int": ("int16", 2), "signed char": ("int8", 1), "unsigned char": ("uint8", 1), "bool": ("bool", 1)}


@dataclass(frozen=True)
class TraceImport:
    """An imported trace.

    Attributes:
        tables: op kind -> rows (op, impl, dtype, time_s [s], the kind's shape columns, name, source).
        unmapped: one row per unmapped event name: name, count, total_s [s], reason; by total_s, descending.
        mapped_s: seconds in table rows; unmapped_s: seconds counted but not mapped.
        device: "cuda" when the trace has kernel events, else "cpu".
    """

    tables: dict[str, pd.DataFrame]
    unmapped: pd.DataFrame
    mapped_s: float
    unmapped_s: float
    device: str


class _Ev:
    """One complete event; ``parent``/``children`` link CPU-side events nested on one thread."""

    __slots__ = ("args", "cat", "children", "dur", "name", "parent", "thread", "ts")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.name, self.cat = str(raw.get("name", "")), str(raw.get("cat", "")).lower()
        self.ts, self.dur = float(raw.get("ts", 0.0)), float(raw.get("dur", 0.0))
        self.thread = (raw.get("pid"), raw.get("tid"))
        self.args: dict[str, Any] = {k.lower(): v for k, v in (raw.get("args") or {}).items()}
        self.parent: _Ev | None = None
        self.children: list[_Ev] = []


def _dtype(type_name: Any) -> tuple[str, int | None]:
    """(moesim dtype name, bytes per element) of a torch "Input type" / NCCL dtype string."""
    t = str(type_name).lower().removeprefix("c10::").removeprefix("torch.")
    return ("fp8", 1) if "float8" in t else _TYPES.get(t, (t or "unknown", None))


def _gemm(a: list[int], b: list[int]) -> Shape:
    batch = max(math.prod(a[:-2]), math.prod(b[:-2]))
    return {"m": batch * (a[-2] if len(a) > 1 else 1), "n": b[-1] if len(b) > 1 else 1, "k": a[-1]}


def _attn(q: list[int], k: list[int], blhd: bool) -> Shape:
    q, k = ([1, *q], [1, *k]) if len(q) == 3 else (q, k)
    (b, lq, h, d), (lk, hk) = (q, k[1:3]) if blhd else ((q[0], q[2], q[1], q[3]), (k[2], k[1]))
    return {"batch": b, "q_len": lq, "kv_len": lk, "heads": h, "kv_heads": hk, "head_dim": d}


def _rows(src: int, moved: int, hidden: int, direction: str) -> Shape:
    tokens, top_k = (src, moved // src) if moved >= src and moved % src == 0 else (moved, 1)
    return {"tokens": tokens, "hidden": hidden, "top_k": top_k, "direction": direction}


def _nbytes(dims: list[int], type_name: Any) -> Shape:
    size = _dtype(type_name)[1]
    return {"bytes": math.prod(dims) * size} if size else {}


def _moe(d: list[list[int]], _: Any) -> Shape:
    """vLLM-style fused experts: x [T, H], w1 [E, 2I, H], w2 [E, H, I], topk weights/ids [T, K]."""
    x, ws = next(v for v in d if len(v) == 2), [i for i, v in enumerate(d) if len(v) == 3]
    top_k = next(v[1] for v in d[ws[-1] :] if len(v) == 2 and v[0] == x[0])
    inter = d[ws[1]][2] if len(ws) > 1 else d[ws[0]][1] // 2
    return {"tokens": x[0], "hidden": x[1], "inter": inter, "experts": d[ws[0]][0], "top_k": top_k}


_SDPA = ("_attention_math", "_flash_attention", "_efficient_attention", "_cudnn_attention", "_flash_attention_for_cpu")
_COMBINE = ("index_add_", "index_add", "scatter_add_", "scatter_add")
# op name -> (kind, index of the argument giving dtype, parser(Input Dims, Input type) -> shape)
_OPS: dict[str, tuple[str, int, Callable[[list[list[int]], list[Any]], Shape]]] = {
    **{f"aten::{n}": ("gemm", 1, lambda d, t: _gemm(d[0], d[1])) for n in ("mm", "matmul", "bmm", "_scaled_mm")},
    **{f"aten::{n}": ("gemm", 2, lambda d, t: _gemm(d[1], d[2])) for n in ("addmm", "baddbmm")},
    "aten::linear": ("gemm", 1, lambda d, t: {"m": math.prod(d[0][:-1]), "n": d[1][0], "k": d[0][-1]}),
    **{f"aten::_scaled_dot_product{s}": ("attention", 0, lambda d, t: _attn(d[0], d[1], False)) for s in _SDPA},
    "aten::scaled_dot_product_attention": ("attention", 0, lambda d, t: _attn(d[0], d[1], False)),
    **{f"aten::{n}_forward": ("attention", 0, lambda d, t: _attn(d[0], d[1], True)) for n in _SDPA[1:3]},
    "aten::index_select": ("permute", 0, lambda d, t: _rows(d[0][0], d[2][0], math.prod(d[0][1:]), "dispatch")),
    **{f"aten::{n}": ("permute", 0, lambda d, t: _rows(d[0][0], d[2][0], d[3][1], "combine")) for n in _COMBINE},
    "aten::copy_": ("memcpy", 1, lambda d, t: _nbytes(d[1], t[1])),
    "aten::clone": ("memcpy", 0, lambda d, t: _nbytes(d[0], t[0])),
    "aten::topk": ("router", 0, lambda d, t: {"tokens": math.prod(d[0][:-1]), "experts": d[0][-1]}),
}


def _parse(ev: _Ev, kind: str | None = None) -> tuple[str, Shape | None, str] | None:
    """(kind, shape or None, dtype) of a cpu_op with a parser (of ``kind`` if given), else None."""
    rule = ("grouped_gemm", 1, _moe) if re.search(r"fused_experts|fused_moe", ev.name) else _OPS.get(ev.name)
    if rule is None or (kind and rule[0] != kind):
        return None
    dims, types, conc = (ev.args.get(a) or [] for a in ("input dims", "input type", "concrete inputs"))
    try:
        shape: Shape | None = rule[2](dims, types)
        if rule[0] == "router":  # topk(input, k, dim): only along the last dim
            shape = {**shape, "top_k": int(conc[1])} if int(conc[2]) in (-1, len(dims[0]) - 1) else None
        elif rule[0] == "permute" and conc[1:2] not in ([], [""], ["0"]):  # rows (dim 0) only
            shape = None
    except (IndexError, TypeError, ValueError, StopIteration, ZeroDivisionError):
        shape = None
    return rule[0], (shape or None), _dtype(types[rule[1]] if len(types) > rule[1] else "")[0]


def _load(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise TableError(f"{p}: no such trace file", "give a file written by prof.export_chrome_trace")
    hint = "give a Chrome trace .json or .json.gz (prof.export_chrome_trace)"
    try:
        raw = inputs.read_bytes(p, "a Chrome trace", hint)
        if raw[:2] == inputs.MAGIC[".gz"]:
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as exc:
                raise TableError(f"{p}: a damaged gzip file ({type(exc).__name__})", hint) from None
        data = inputs.parse_json(raw, p, hint, check_depth=False)
    except TableError:
        raise
    except MoesimError as exc:
        raise TableError(exc.message, exc.hint) from None
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise TableError(f"{p}: not a Chrome trace (no traceEvents)", "export it with prof.export_chrome_trace")
    events = [e for e in data["traceEvents"] if isinstance(e, dict) and e.get("ph") == "X" and "dur" in e]
    if not events:
        raise TableError(f"{p}: the trace has no complete (ph X) events", "profile a region that runs ops")
    return events


def _nest(events: list[_Ev]) -> None:
    """Link events of one thread into trees by time containment (0.01 µs slack for rounding)."""
    by_thread: dict[Any, list[_Ev]] = defaultdict(list)
    for e in events:
        by_thread[e.thread].append(e)
    for evs in by_thread.values():
        stack: list[_Ev] = []
        for e in sorted(evs, key=lambda e: (e.ts, -e.dur)):
            while stack and e.ts + e.dur > stack[-1].ts + stack[-1].dur + 0.01:
                stack.pop()
            if stack:
                e.parent = stack[-1]
                stack[-1].children.append(e)
            stack.append(e)


class _Importer:
    """Collects table rows and unmapped (name, reason, µs) entries from one trace's events."""

    def __init__(self, raw: list[dict[str, Any]]) -> None:
        evs = [_Ev(r) for r in raw]
        self.ops = [e for e in evs if e.cat in ("cpu_op", "operator")]
        runtime = [e for e in evs if e.cat in ("cuda_runtime", "cuda_driver", "runtime")]
        self.gpu = [e for e in evs if e.cat in GPU_CATS]
        _nest(self.ops + runtime)
        self.by_ext = {e.args["external id"]: e for e in self.ops if e.args.get("external id")}
        self.by_corr = {e.args["correlation"]: e for e in runtime if e.args.get("correlation") is not None}
        self.order: dict[Any, list[_Ev]] = defaultdict(list)
        for e in sorted(self.ops, key=lambda e: e.ts):
            self.order[e.thread].append(e)
        self.starts = {t: [e.ts for e in evs] for t, evs in self.order.items()}
        self.rows: list[dict[str, Any]] = []
        self.unmapped: list[tuple[str, str, float]] = []

    def _row(self, kind: str, shape: Shape, dtype: str, family: str, name: str, dur_us: float) -> None:
        row = {"op": kind, "impl": f"trace:{family}", "dtype": dtype, "time_s": dur_us * 1e-6}
        self.rows.append({**row, **shape, "name": name, "source": "trace"})

    def _hidden(self, topk: _Ev, shape: Shape) -> int | None:
        """``k`` of the latest GEMM before ``topk`` on its thread with output [tokens, experts]."""
        ops, end = self.order[topk.thread], bisect.bisect_left(self.starts[topk.thread], topk.ts)
        for e in reversed(ops[max(0, end - 500) : end]):
            got = _parse(e, "gemm") if e.ts + e.dur <= topk.ts else None
            if got and got[1] and (got[1]["m"], got[1]["n"]) == (shape["tokens"], shape["experts"]):
                return got[1]["k"]
        return None

    def _shape(self, ev: _Ev, kind: str | None = None) -> tuple[str, Shape | None, str, str] | None:
        """(kind, shape, dtype, reason) for an op with a parser; router rows get ``hidden`` here."""
        got = _parse(ev, kind)
        if got is None:
            return None
        kind, shape, dtype = got
        if shape is not None and kind == "router":
            shape["hidden"] = self._hidden(ev, shape)
            if shape["hidden"] is None:
                return kind, None, dtype, "no hidden size"
        return kind, shape, dtype, "no shape"

    def cpu(self) -> None:
        memo: dict[int, bool] = {}

        def mappable(e: _Ev) -> bool:
            if id(e) not in memo:
                memo[id(e)] = _parse(e) is not None or any(mappable(c) for c in e.children)
            return memo[id(e)]

        def visit(e: _Ev) -> None:
            got = self._shape(e)
            if got is not None:
                kind, shape, dtype, reason = got
                if shape is None:
                    self.unmapped.append((e.name, reason, e.dur))
                else:
                    self._row(kind, shape, dtype, e.name.split("::")[-1], e.name, e.dur)
            elif not mappable(e):
                self.unmapped.append((e.name, "unknown op", e.dur))
            else:
                self_us = e.dur - sum(c.dur for c in e.children)
                self.unmapped += [(e.name, "unknown op", self_us)] if self_us > 0 else []
                for c in e.children:
                    visit(c)

        for e in sorted(self.ops, key=lambda e: e.ts):
            if e.parent is None:
                visit(e)

    def _classify(self, k: _Ev) -> tuple[str, str] | None:
        low = k.name.lower()
        if "nccl" in low:
            flat = low.replace("_", "")
            return next(((kind, "nccl") for word, kind in _NCCL if word in flat), None)
        if "memcpy" in k.cat:
            return "memcpy", "memcpy"
        return next(((kind, w) for kind, words in _PATTERNS for w in words if w in low), None)

    def _launcher(self, k: _Ev) -> _Ev | None:
        """The cpu_op (or, failing that, the runtime call) that launched kernel ``k``."""
        op = self.by_ext.get(k.args.get("external id"))
        rt = self.by_corr.get(k.args.get("correlation"))
        return op or (rt and self.by_ext.get(rt.args.get("external id"))) or rt

    def gpu_events(self) -> None:
        groups: dict[tuple[int, str], list[Any]] = {}
        for k in self.gpu:
            cls = self._classify(k)
            if cls is None:
                self.unmapped.append((k.name, "unknown kernel", k.dur))
                continue
            kind, family = cls
            chain, found, reason = [], None, "no shape"
            ev = self._launcher(k)
            while ev is not None:
                chain, ev = [*chain, ev], ev.parent
            if kind == "memcpy" and "memcpy" in k.cat and "dtod" not in k.name.lower().replace(" ", ""):
                reason = "host copy"
            elif family == "nccl":
                meta = next((e.args for e in [k, *chain] if "in msg nelems" in e.args), None)
                if meta and meta.get("group size"):
                    dtype, size = _dtype(meta.get("dtype", ""))
                    nelems = max(meta["in msg nelems"], meta.get("out msg nelems") or 0)
                    found = (k, kind, {"bytes": nelems * (size or 0), "gpus": meta["group size"]}, dtype)
            elif kind == "memcpy" and k.args.get("bytes"):
                types = next((e.args["input type"] for e in chain if e.args.get("input type")), [""])
                found = (k, kind, {"bytes": k.args["bytes"]}, _dtype(types[0])[0])
            else:
                for e in reversed(chain):  # outermost first
                    got = self._shape(e, kind)
                    if got is not None and got[1] is not None:
                        found = (e, kind, got[1], got[2])
                        break
                    reason = got[3] if got is not None else reason
            if found is None or not all(found[2].values()):
                self.unmapped.append((k.name, reason, k.dur))
                continue
            entry = groups.setdefault((id(found[0]), kind), [found, family, [], 0.0])
            entry[2] += [] if k.name in entry[2] else [k.name]
            entry[3] += k.dur
        for (_, kind), (found, family, names, dur) in groups.items():
            self._row(kind, found[2], found[3], family, " + ".join(names), dur)

    def result(self, device: str) -> TraceImport:
        tables: dict[str, pd.DataFrame] = {}
        df = pd.DataFrame(self.rows)
        for kind, rows in df.groupby("op", sort=False) if len(df) else []:
            shape = SHAPE_COLUMNS[kind]
            rows = rows[["op", "impl", "dtype", "time_s", *shape, "name", "source"]].reset_index(drop=True)
            rows = rows.astype({c: "int64" for c in shape if c != "direction"})
            tables[kind] = check_table(rows, f"trace:{kind}")
        un = pd.DataFrame(self.unmapped, columns=["name", "reason", "total_s"])
        un["total_s"] *= 1e-6
        un = un.groupby("name", as_index=False).agg(
            count=("total_s", "size"), total_s=("total_s", "sum"), reason=("reason", "first")
        )
        un = un.sort_values(["total_s", "name"], ascending=[False, True], ignore_index=True)
        mapped, unmapped_s = float(df["time_s"].sum()) if len(df) else 0.0, float(un["total_s"].sum())
        return TraceImport(tables, un[["name", "count", "total_s", "reason"]], mapped, unmapped_s, device)


def import_chrome_trace(path: str | Path) -> TraceImport:
    """Read a torch.profiler Chrome trace (``.json`` or gzip ``.json.gz``) into kernel tables.

    Raises `TableError` for a missing file, a file that is not a JSON Chrome trace, or a trace with no
    complete events. See the module docstring for the mapping rules.
    """
    imp = _Importer(_load(path))
    device = "cuda" if any(e.cat == "kernel" for e in imp.gpu) else "cpu"
    imp.gpu_events() if device == "cuda" else imp.cpu()
    return imp.result(device)


def import_trace(src: str | Path, out: str | Path, hardware: Any = None, force: bool = False) -> dict[str, Any]:
    """Import a trace into moesim tables under ``out`` (``trace_<kind>.parquet``) and ``unmapped.csv``.

    ``hardware`` (a `model.hardware.HardwareSpec`, or None) is the device the
    trace was taken on; its roofline becomes the calibration's reference.
    Returns a summary: files, rows per kind, device, mapped and unmapped
    seconds, and the ten costliest unmapped names. Files are added to ``out`` as
    `profiling.tables.write_table_folder` does (``force``: over files moesim did not write).
    """
    from moesim.profiling.tables import check_table_folder, table_writer, write_table_folder

    src, out = Path(src), Path(out)
    check_table_folder(out, "import", force)
    result = import_chrome_trace(src)
    if not result.tables:
        raise TableError(f"{src}: no event maps to an op kind moesim knows", "record the trace with record_shapes=True")
    meta = {
        "source": f"torch.profiler trace: {src.name}",
        "device_type": result.device,
        "device_key": hardware.key if hardware is not None else None,
        "hardware": hardware.model_dump() if hardware is not None else None,
    }
    writers = {
        f"trace_{k}.parquet": table_writer(df, meta, str(out / f"trace_{k}.parquet")) for k, df in result.tables.items()
    }
    writers["unmapped.csv"] = lambda tmp: result.unmapped.to_csv(tmp, index=False)
    paths = write_table_folder(out, "import", writers, force)
    files = [str(p) for name, p in paths.items() if name != "unmapped.csv"]
    unmapped = paths["unmapped.csv"]
    return {
        "format": "trace",
        "out": str(out),
        "files": files,
        "rows": {k: len(v) for k, v in result.tables.items()},
        "device": result.device,
        "mapped_s": result.mapped_s,
        "unmapped_s": result.unmapped_s,
        "unmapped_names": len(result.unmapped),
        "unmapped_csv": str(unmapped),
        "unmapped_top": result.unmapped.head(10).to_dict(orient="records"),
    }
