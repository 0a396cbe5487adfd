"""Routing statistics from the files serving and training engines write.

`load_stats` reads one file, a directory or a glob of same-format files (rank files are merged) and returns
`RoutingStats` over MoE layers. Formats (``fmt``; ``"auto"`` picks one from the extension and content):

- ``sglang``: SGLang's expert-distribution recorder dumps, ``torch.save``-d dicts (sgl-project/sglang
  python/sglang/srt/eplb/expert_distribution.py, ``_StatAccumulator.dump`` / ``_DetailAccumulator.dump``):
  ``stat`` mode ``{"logical_count": [B, num_hidden_layers, N]}`` (summed over B); ``per_pass`` / ``per_token``
  ``{"records": [...], "last_physical_to_logical_map": [layers, P]}`` whose records hold ``global_physical_count``
  [layers, P] or ``topk_ids_of_layer`` [layers, tokens, 8] of PHYSICAL ids (-1 padded), folded onto logical experts
  through that map. The very old recorder's CSV ``layer_id,expert_id,count`` is read as ``csv``.
- ``vllm``: vLLM's ``CompletionOutput.routed_experts`` (vllm/outputs.py), logical ids [tokens, num_hidden_layers, k]
  as ``.npy``, or ``.npz`` of per-request arrays (concatenated over tokens). Dense layers are all zeros there.
- ``megatron``: Megatron-Core ``router_trace_rank{r}.jsonl`` (megatron/core/transformer/moe/router_trace.py):
  ``{"step", "stage", "block", "layer", "rank", "num_tokens", "topk", "top_indices": [tokens][k]}``; MTP records
  are skipped.
- ``moecap``: MoE-CAP JSONL (Auto-CAP/MoE-CAP moe_cap/extracted_expert_dist): per-pass records with
  ``expert_counts`` [L][E] are summed; the per-pass timing records carry only a scalar ``expert_activation``.
- ``csv``: long ``layer,expert,count`` (also ``layer_id``/``expert_id``, ``tokens``/``load``) or wide
  (one row per MoE layer, one column per expert, optional header).
- ``npz``: ``counts`` (or ``loads`` / ``logical_count``) [L, N], optional ``topk`` [T, L, k], ``coactivation``
  [L, N, N], ``transitions`` [L-1, N, N], ``top_k``: what `save_stats_npz` writes.
- ``json``: ``{"counts": [[...]]}`` (or SGLang's ``{"logical_count": ...}``), or the vLLM-Ascend / MindSpeed
  token-collect layout ``{"<moe layer>": {"<expert>": count}}``.

Rows are layers as the producer numbers them (decoder-layer index for SGLang, vLLM, Megatron). With
``moe_layer_ids`` (decoder index of each MoE layer) the MoE rows are kept and the dense rows, which must be empty,
dropped; without it every row is kept and an empty (dense) row is an error.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from moesim.model import inputs
from moesim.model.errors import MoesimError
from moesim.placement.stats import RoutingStats

FORMATS = ("sglang", "vllm", "megatron", "moecap", "csv", "npz", "json")
_HINTS = {
    "sglang": "give an unmodified dump from SGLang's /dump_expert_distribution_record",
    "vllm": "save CompletionOutput.routed_experts with np.save / np.savez",
    "megatron": "give the router_trace_rank*.jsonl files written with --moe-routing-trace-path",
    "moecap": "give MoE-CAP's JSONL with per-layer 'expert_counts' records",
    "csv": "use columns layer,expert,count or one row of per-expert counts per MoE layer",
    "npz": "write it with placement.importers.save_stats_npz",
    "json": 'use {"counts": [[per-expert counts] per MoE layer]}',
}
_COUNT_KEYS = ("counts", "loads", "logical_count")
_EXTENSIONS = {".pt", ".pth", ".npy", ".npz", ".csv", ".tsv", ".json", ".jsonl", ".ndjson"}
Raw = dict[str, Any]  # counts [L, N] | topk [T, L, k], optional layers [L] labels, top_k, coactivation, transitions


def load_stats(
    path: str | Path, num_experts: int | None = None, moe_layer_ids: list[int] | None = None, fmt: str = "auto"
) -> RoutingStats:
    """Routing statistics from ``path`` (a file, a directory or a glob of files in one format).

    Args:
        path: the file(s); rank files of one run are merged (counts summed, traces concatenated).
        num_experts: routed experts per layer N of the model; data with another N is an error.
        moe_layer_ids: decoder-layer index of each MoE layer, to drop dense rows from per-decoder-layer data.
        fmt: one of `FORMATS` or ``"auto"``.
    Returns:
        `RoutingStats` with counts [L_moe, N] (token-expert pairs) and, where the file has one, the trace.
    """
    name = str(path)
    paths = _expand(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise MoesimError(f"{name}: unknown statistics format {fmt!r}", f"give --format auto, {', '.join(FORMATS)}")
    kinds = {_detect(p) for p in paths} if fmt == "auto" else {fmt}
    if len(kinds) > 1:
        raise MoesimError(f"{name}: files in several formats ({', '.join(sorted(kinds))})", "give one format at a time")
    fmt = kinds.pop()
    with _reading(name, fmt):
        raw = _READERS[fmt](paths, num_experts)
        return _finish(raw, name, num_experts, moe_layer_ids)


def save_stats_npz(stats: RoutingStats, path: str | Path) -> None:
    """Write ``stats`` as an ``.npz`` that `load_stats` reads back, whole or not at all (`model.outputs.write_file`)."""
    arrays = {"counts": stats.counts} | ({} if stats.top_k is None else {"top_k": np.asarray(stats.top_k)})
    if stats.topk is not None:  # a trace re-derives co-activation and transitions; without one they are all there is
        arrays["topk"] = stats.topk.astype(np.int32)
    else:
        arrays |= {k: getattr(stats, k) for k in ("coactivation", "transitions") if getattr(stats, k) is not None}
    from moesim.model.outputs import write_file

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, numpy would append ".npz" to it
            np.savez_compressed(f, **arrays)

    write_file(path, write)


# files and formats --------------------------------------------------------------------------------------------------
@contextmanager
def _reading(name: str | Path, fmt: str) -> Iterator[None]:
    """Turn any exception other than `MoesimError` into a one-line `MoesimError` naming the file."""
    try:
        yield
    except MoesimError:
        raise
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise MoesimError(f"cannot read {name} as {fmt} routing statistics ({detail})", _HINTS[fmt]) from None


def _expand(path: str | Path) -> list[Path]:
    """The files ``path`` names: itself, the statistics files in a directory, or the matches of a glob."""
    p, text = Path(path), str(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _EXTENSIONS)
        traces = [f for f in files if f.name.startswith("router_trace_rank") and f.suffix == ".jsonl"]
        files = traces or files  # Megatron's trace directory also holds router_state_rank*.pt
    elif p.is_file():
        files = [p]
    elif any(c in text for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(text) if Path(f).is_file())
    else:
        raise MoesimError(f"no such file or directory: {text}", "check the path to the routing statistics")
    if not files:
        raise MoesimError(f"{text}: no routing-statistics files found", f"expected one of {sorted(_EXTENSIONS)}")
    return files


def _detect(p: Path) -> str:
    """The format of one file, from its extension and (for .npz / JSON) its first keys."""
    ext = p.suffix.lower()
    fixed = {".pt": "sglang", ".pth": "sglang", ".npy": "vllm", ".csv": "csv", ".tsv": "csv"}
    if ext in fixed:
        return fixed[ext]
    if ext == ".npz":
        _check_binary(p, "npz")
        with _reading(p, "npz"), np.load(p, allow_pickle=False) as z:
            return "npz" if set(z.files) & {*_COUNT_KEYS, "topk"} else "vllm"
    if ext in (".json", ".jsonl", ".ndjson"):
        head = inputs.read_bytes(p, "routing statistics", _HINTS["json"], limit=1 << 20)  # the reader checks the rest
        first = next((line for line in head.decode("utf-8", "replace").splitlines() if line.strip()), "")
        try:
            rec = json.loads(first)
        except (ValueError, RecursionError):
            return "json"  # a pretty-printed JSON document (or a broken one, which the JSON reader reports)
        if isinstance(rec, dict) and "top_indices" in rec:
            return "megatron"
        if isinstance(rec, dict) and {"expert_counts", "expert_activation", "aggregated_expert_counts"} & set(rec):
            return "moecap"
        return "json"
    raise MoesimError(
        f"{p}: cannot tell the statistics format from the extension {ext!r}", f"give --format ({', '.join(FORMATS)})"
    )


def _per_file(read_one: Callable[[Path, int | None], Raw], fmt: str) -> Callable[[list[Path], int | None], Raw]:
    """A reader of several files from a reader of one: the files' statistics merged."""

    def read(paths: list[Path], n: int | None) -> Raw:
        raws = []
        for p in paths:
            with _reading(p, fmt):
                raws.append(read_one(p, n))
        return _merge(raws)

    return read


def _merge(raws: list[Raw]) -> Raw:
    """Sum counts (and co-activation), concatenate traces; the files must cover the same layers."""
    if len(raws) == 1:
        return raws[0]
    layers = [r.get("layers") for r in raws]
    if any(lay != layers[0] for lay in layers):
        raise MoesimError(f"rank files cover different layers: {layers[0]} vs {layers[-1]}", "merge files of one run")
    if all(r.get("topk") is not None for r in raws):
        k = max(r["topk"].shape[2] for r in raws)
        padded = [np.pad(r["topk"], ((0, 0), (0, 0), (0, k - r["topk"].shape[2])), constant_values=-1) for r in raws]
        return {"topk": np.concatenate(padded), "layers": layers[0], "top_k": raws[0].get("top_k")}
    n = max(r["counts"].shape[1] if r.get("counts") is not None else int(r["topk"].max()) + 1 for r in raws)
    for r in raws:
        if r.get("topk") is not None:
            r["counts"], r["coactivation"] = _bincount(r["topk"], n), _coactivation(r["topk"], n)
    out: Raw = {"counts": sum(_pad(r["counts"], n) for r in raws), "layers": layers[0], "top_k": raws[0].get("top_k")}
    if all(r.get("coactivation") is not None for r in raws):
        out["coactivation"] = sum(_pad(r["coactivation"], n) for r in raws)
    return out


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad the expert axes (all but the first) of ``a`` to ``n``."""
    return np.pad(a, [(0, 0)] + [(0, n - s) for s in a.shape[1:]])


def _bincount(topk: np.ndarray, n: int) -> np.ndarray:
    """[L, n] picks per layer and expert of a trace [T, L, k] (-1 ignored)."""
    return np.stack(
        [np.bincount(ids[ids >= 0], minlength=n) for ids in np.moveaxis(topk, 1, 0).reshape(topk.shape[1], -1)]
    )


def _coactivation(topk: np.ndarray, n: int) -> np.ndarray:
    """[L, n, n] tokens choosing both experts, from a trace [T, L, k] (-1 ignored)."""
    out = np.zeros((topk.shape[1], n, n))
    for layer in range(topk.shape[1]):
        ids = topk[:, layer, :]
        h = np.zeros((ids.shape[0], n + 1), np.float32)
        np.put_along_axis(h, np.where(ids >= 0, ids, n), 1.0, axis=1)
        out[layer] = h[:, :n].T @ h[:, :n]
    return out


def _finish(raw: Raw, name: str, num_experts: int | None, moe_layer_ids: list[int] | None) -> RoutingStats:
    """Check the expert count, keep the MoE rows, and build `RoutingStats`."""
    topk, counts = raw.get("topk"), raw.get("counts")
    if topk is not None:
        topk = np.asarray(topk)
        if topk.ndim != 3 or topk.size == 0 or topk.dtype.kind not in "iu":
            raise MoesimError(f"{name}: expected integer expert ids [tokens, layers, k], got {topk.dtype} "
                              f"{list(topk.shape)}", "store the router's top-k ids")  # fmt: skip
        hi, lo = int(topk.max()), int(topk.min())
        if lo < -1 or (num_experts is not None and hi >= num_experts):
            msg = f"{name}: expert ids {lo}..{hi} outside 0..{(num_experts or hi + 1) - 1} (-1: no entry)"
            raise MoesimError(msg, "check that the trace is for this model (number of routed experts)")
        if counts is None:
            counts = _bincount(topk, num_experts or hi + 1)
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or 0 in counts.shape:
        raise MoesimError(f"{name}: expected counts [layers, experts], got shape {list(counts.shape)}", "fix the file")
    if num_experts is not None and counts.shape[1] != num_experts:
        model = f"[{len(moe_layer_ids) if moe_layer_ids else '?'} MoE layers, {num_experts} experts]"
        msg = f"{name}: data has [{counts.shape[0]} layers, {counts.shape[1]} experts] but the model has {model}"
        raise MoesimError(msg, "give statistics recorded on this model")
    n_rows = counts.shape[0]
    labels = list(raw.get("layers") or range(n_rows))
    empty = [i for i in range(n_rows) if not np.any(counts[i] != 0)]
    rows = list(range(n_rows))
    if moe_layer_ids and n_rows != len(moe_layer_ids):
        missing = sorted(set(moe_layer_ids) - set(labels))
        if missing:
            msg = f"{name}: {n_rows} layers {labels[:3]}.. lack the model's MoE layers {missing[:3]}"
            raise MoesimError(msg, "give statistics of this model (one row per decoder layer or per MoE layer)")
        rows = [labels.index(i) for i in moe_layer_ids]
        loaded = [labels[i] for i in range(n_rows) if i not in rows and i not in empty]
        if loaded:
            msg = f"{name}: layers {loaded[:5]} are dense in the model but have expert load"
            raise MoesimError(msg, "give --model the model the statistics were recorded on")
    elif empty:
        msg = f"{name}: layers {[labels[i] for i in empty][:8]} have no expert load (dense layers?)"
        raise MoesimError(msg, "give --model the model they were recorded on, so its dense layers are dropped")
    extra: dict[str, Any] = {}
    n = counts.shape[1]
    for key, shape in (("topk", (n_rows,)), ("coactivation", (n_rows, n, n)), ("transitions", (n_rows - 1, n, n))):
        a = topk if key == "topk" else raw.get(key)
        if a is not None and (a.shape[1:2] if key == "topk" else np.shape(a)) != shape:
            raise MoesimError(f"{name}: {key} of shape {list(np.shape(a))} does not fit counts {[n_rows, n]}", "fix it")
        if a is not None and key == "coactivation":
            extra[key] = np.asarray(a, dtype=float)[rows]
        elif a is not None and key == "transitions" and rows == list(range(n_rows)):  # only between kept layers
            extra[key] = np.asarray(a, dtype=float)
    top_k = raw.get("top_k") or (None if topk is None else topk.shape[2])
    trace = None if topk is None else topk[:, rows, :]
    return RoutingStats(counts[rows], None if top_k is None else int(top_k), trace, name, **extra)


# readers ------------------------------------------------------------------------------------------------------------
def _np(x: Any) -> np.ndarray:
    """A torch tensor, list or array as a numpy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _torch_load(p: Path) -> Any:
    try:
        with warnings.catch_warnings():  # torch's import-time warnings would come before moesim's one-line messages
            warnings.simplefilter("ignore")
            import torch
    except ImportError:
        raise MoesimError(
            f"{p}: reading SGLang .pt dumps needs torch", "pip install 'moesim[profile]' (torch), or convert to .npz"
        ) from None
    inputs.read_bytes(p, "an SGLang recorder dump", _HINTS["sglang"], limit=64)  # a folder, an empty file
    # weights_only: SGLang's dumps hold only dicts, lists, numbers and tensors (its own test loads them this way),
    # so a file that needs arbitrary unpickling is refused rather than run.
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = f"{p}: not a torch file of plain tensors, dicts and lists ({type(exc).__name__}; no full unpickling)"
        raise MoesimError(msg, _HINTS["sglang"]) from None


def _read_sglang(paths: list[Path], n: int | None) -> Raw:
    """SGLang recorder dumps (all modes); rank files merged, records repeated on several TP ranks counted once."""
    if all(p.suffix.lower() in (".csv", ".tsv") for p in paths):  # the very old recorder
        return _per_file(_read_csv, "sglang")(paths, n)
    counts, traces, seen = None, [], set()
    for p in paths:
        with _reading(p, "sglang"):
            d = _torch_load(p)
            if not isinstance(d, dict) or not ({"logical_count", "records"} & set(d)):
                keys = list(d)[:5] if isinstance(d, dict) else type(d).__name__
                raise MoesimError(f"{p}: not an SGLang recorder dump (keys {keys})", _HINTS["sglang"])
            if "logical_count" in d:  # stat / stat_approx: already all-reduced over ranks, logical ids
                lc = _np(d["logical_count"]).astype(float)
                if lc.ndim not in (2, 3):
                    raise MoesimError(f"{p}: logical_count has shape {list(lc.shape)}", "expected [B, layers, N]")
                counts = _add(counts, lc.sum(0) if lc.ndim == 3 else lc)
                continue
            p2l = _np(d["last_physical_to_logical_map"]).astype(np.int64)  # [layers, P]
            num_log = n or int(p2l.max()) + 1
            for rec in d["records"]:
                if "topk_ids_of_layer" in rec:  # per_token: physical ids [layers, tokens, 8], -1 padded
                    ids = _np(rec["topk_ids_of_layer"]).astype(np.int64)
                    key = (rec.get("forward_pass_id"), _digest(ids))
                    if key in seen or ids.shape[1] == 0:
                        continue
                    seen.add(key)
                    if ids.shape[0] != p2l.shape[0] or ids.max() >= p2l.shape[1]:
                        raise MoesimError(f"{p}: topk_ids_of_layer {list(ids.shape)} does not fit the map "
                                          f"{list(p2l.shape)}", _HINTS["sglang"])  # fmt: skip
                    layer = np.arange(ids.shape[0])[:, None, None]
                    traces.append(np.where(ids >= 0, p2l[layer, np.maximum(ids, 0)], -1).transpose(1, 0, 2))
                else:  # per_pass: physical counts [layers, P]
                    phys = _np(rec["global_physical_count"]).astype(float)
                    key = (rec.get("forward_pass_id"), _digest(phys))
                    if key in seen:
                        continue
                    seen.add(key)
                    folded = np.zeros((p2l.shape[0], num_log))
                    np.add.at(folded, (np.arange(p2l.shape[0])[:, None], p2l), phys)
                    counts = _add(counts, folded)
    if traces:
        if counts is not None:
            raise MoesimError("mix of per_token and count dumps", "give the dumps of one recorder mode")
        trace = np.concatenate(traces)
        used = np.flatnonzero((trace >= 0).any(axis=(0, 1)))  # SGLang pads top-k to 8 columns with -1
        return {"topk": trace[:, :, : int(used.max()) + 1] if used.size else trace}
    if counts is None:
        raise MoesimError(f"{paths[0]}: the dump holds no records", "record some traffic before dumping")
    return {"counts": counts}


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(a.tobytes(), digest_size=16).digest()


def _lines(p: Path, fmt: str) -> list[str]:
    """The lines of a text file (`model.inputs.read_text`: a binary, UTF-16 or empty file is one error line)."""
    return inputs.read_text(p, f"{fmt} routing statistics", _HINTS[fmt]).splitlines()


def _check_binary(p: Path, fmt: str) -> None:
    """`MoesimError` unless ``p`` starts as a ``.npz`` (by its extension) or else a ``.npy`` file does."""
    head = inputs.read_bytes(p, f"{fmt} routing statistics", _HINTS[fmt], limit=64)
    where = f"cannot read {p} as {fmt} routing statistics: it"
    inputs.check_magic(head, ".npz" if p.suffix.lower() == ".npz" else ".npy", where, _HINTS[fmt])


def _records(p: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, one a line."""
    for i, line in enumerate(_lines(p, fmt), 1):
        try:
            rec = json.loads(line) if line.strip() else None
        except (ValueError, RecursionError):
            raise MoesimError(f"{p}: line {i}: not a JSON object on one line", _HINTS[fmt]) from None
        if isinstance(rec, dict):
            yield rec


def _add(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    if a is None:
        return b
    if a.shape != b.shape:
        raise MoesimError(f"files disagree on shape: {list(a.shape)} vs {list(b.shape)}", "merge files of one run")
    return a + b


def _read_vllm(p: Path, n: int | None) -> Raw:
    """vLLM routed_experts [tokens, num_hidden_layers, k] (.npy, or .npz of per-request arrays)."""
    _check_binary(p, "vllm")
    if p.suffix.lower() == ".npz":
        with np.load(p, allow_pickle=False) as z:
            parts = [z[key] for key in z.files]
    else:
        parts = [np.load(p, allow_pickle=False)]
    parts = [a for a in parts if a.size]
    if not parts or any(a.ndim != 3 or a.shape[1:] != parts[0].shape[1:] for a in parts):
        shapes = [list(a.shape) for a in parts[:3]]
        raise MoesimError(f"{p}: expected int arrays [tokens, layers, k] of one shape, got {shapes}", _HINTS["vllm"])
    trace = np.concatenate(parts).astype(np.int64)
    if trace.shape[2] > 1:  # a dense layer is all zeros; a routed one never repeats an expert within a token
        trace[:, (trace == 0).all(axis=(0, 2)), :] = -1
    return {"topk": trace}


def _read_megatron(p: Path, n: int | None) -> Raw:
    """One Megatron-Core router trace file; a token trace when every step covers every layer with equal tokens."""
    recs: list[tuple[int, int, np.ndarray]] = []  # (step, layer, top_indices [t, k])
    for r in _records(p, "megatron"):
        ids = np.asarray(r["top_indices"], dtype=np.int64).reshape(-1, int(r["topk"]))
        if ids.shape[0] != int(r.get("num_tokens", ids.shape[0])):
            raise MoesimError(f"{p}: num_tokens {r['num_tokens']} but {ids.shape[0]} rows", _HINTS["megatron"])
        if r.get("block", "decoder") != "mtp" and ids.size:
            recs.append((int(r.get("step", 0)), int(r["layer"]), ids))
    if not recs:
        raise MoesimError(f"{p}: no decoder routing records", _HINTS["megatron"])
    layers = sorted({layer for _, layer, _ in recs})
    steps: dict[int, dict[int, np.ndarray]] = {}
    whole = True
    for step, layer, ids in recs:
        whole &= layer not in steps.setdefault(step, {})
        steps[step][layer] = ids
    whole &= (
        all(sorted(s) == layers and len({a.shape for a in s.values()}) == 1 for s in steps.values())
        and len({ids.shape[1] for _, _, ids in recs}) == 1
    )
    if whole:
        trace = np.concatenate([np.stack([s[layer] for layer in layers], axis=1) for s in steps.values()])
        return {"topk": trace, "layers": layers}
    hi = max(int(ids.max()) for _, _, ids in recs)
    num = n or hi + 1
    if min(int(ids.min()) for _, _, ids in recs) < 0 or hi >= num:
        raise MoesimError(f"{p}: expert ids outside 0..{num - 1}", "check that the trace is for this model")
    row = {layer: i for i, layer in enumerate(layers)}
    counts, co = np.zeros((len(layers), num)), np.zeros((len(layers), num, num))
    for _, layer, ids in recs:
        counts[row[layer]] += np.bincount(ids[ids >= 0], minlength=num)
        co[row[layer]] += _coactivation(ids[:, None, :], num)[0]
    return {"counts": counts, "coactivation": co, "layers": layers, "top_k": int(recs[0][2].shape[1])}


def _read_moecap(p: Path, n: int | None) -> Raw:
    """MoE-CAP JSONL: the sum of the records' per-layer ``expert_counts`` [L][E]."""
    counts, scalar_only = None, False
    for r in _records(p, "moecap"):
        if "expert_counts" in r:
            counts = _add(counts, np.asarray(r["expert_counts"], dtype=float))
        elif "aggregated_expert_counts" in r:  # stat mode: [passes][L][E]
            counts = _add(counts, np.asarray(r["aggregated_expert_counts"], dtype=float).sum(0))
        else:
            scalar_only |= "expert_activation" in r
    if counts is None:
        what = "only the scalar 'expert_activation' (distinct experts per layer, averaged)" if scalar_only else "no"
        hint = (
            "record with MoE-CAP's expert-distribution recorder (per-pass records with 'expert_counts', "
            "/dump_expert_distribution?summary_only=false) or SGLang's --expert-distribution-recorder-mode stat"
        )
        raise MoesimError(f"{p}: MoE-CAP records carry {what} instead of per-layer expert counts", hint)
    return {"counts": counts}


def _read_csv(p: Path, n: int | None) -> Raw:
    """Long ``layer,expert,count`` or wide (row per layer, column per expert) CSV."""
    text = inputs.read_text(p, "a CSV of routing statistics", _HINTS["csv"], empty_ok=True)
    rows = [r for r in csv.reader(io.StringIO(text), delimiter="\t" if p.suffix == ".tsv" else ",") if r]
    rows = [[c.strip() for c in r] for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise MoesimError(f"{p}: empty CSV", _HINTS["csv"])
    head = [c.lower() for c in rows[0]]
    has_header = any(c.isidentifier() and c not in ("nan", "inf") for c in head)
    body = rows[1:] if has_header else rows
    col = {c: i for i, c in enumerate(head)}
    pick = [next((col[c] for c in names if c in col), None) for names in
            (("layer", "layer_id"), ("expert", "expert_id"), ("count", "tokens", "load"))]  # fmt: skip
    if has_header and None not in pick:
        data = np.asarray([[_number(r[i], p) for i in pick] for r in body]).reshape(-1, 3)
        ids = data[:, :2]
        if (ids < 0).any() or (ids % 1).any() or not np.isfinite(ids).all():
            raise MoesimError(f"{p}: layer and expert ids must be integers >= 0", _HINTS["csv"])
        layers = sorted({int(x) for x in data[:, 0]})
        counts = np.zeros((len(layers), n or int(data[:, 1].max()) + 1))
        if n is not None and data[:, 1].max() >= n:
            raise MoesimError(f"{p}: expert id {int(data[:, 1].max())} but the model has {n} experts", _HINTS["csv"])
        np.add.at(counts, (np.searchsorted(layers, data[:, 0]), data[:, 1].astype(int)), data[:, 2])
        return {"counts": counts, "layers": layers}
    labelled = has_header and head[0] in ("layer", "layer_id", "moe_layer")
    values = np.asarray([[_number(c, p) for c in r] for r in body])
    if values.ndim != 2:
        raise MoesimError(f"{p}: rows have different lengths", _HINTS["csv"])
    if labelled:
        return {"counts": values[:, 1:], "layers": [int(x) for x in values[:, 0]]}
    return {"counts": values}


def _number(cell: str, p: Path) -> float:
    """A CSV cell as a float; `MoesimError` naming the file and the cell when it is not a number."""
    try:
        return float(cell)
    except ValueError:
        shown = cell if len(cell) <= 24 else cell[:20] + "..."
        raise MoesimError(f"{p}: {shown!r} is not a number", _HINTS["csv"]) from None


def _read_npz(p: Path, n: int | None) -> Raw:
    """moesim's own ``.npz`` (see `save_stats_npz`)."""
    _check_binary(p, "npz")
    with np.load(p, allow_pickle=False) as z:
        key = next((k for k in _COUNT_KEYS if k in z.files), None)
        if key is None and "topk" not in z.files:
            raise MoesimError(f"{p}: no 'counts' or 'topk' array (has {z.files[:6]})", _HINTS["npz"])
        raw: Raw = {k: z[k] for k in ("topk", "coactivation", "transitions") if k in z.files}
        if key is not None:
            counts = z[key]
            raw["counts"] = counts.sum(0) if counts.ndim == 3 else counts
        if "top_k" in z.files:
            raw["top_k"] = int(z["top_k"])
    return raw


def _read_json(p: Path, n: int | None) -> Raw:
    """``{"counts": [[...]]}`` / ``{"logical_count": ...}`` or a token-collect ``{"layer": {"expert": count}}``."""
    d = inputs.read_json(p, "JSON routing statistics", _HINTS["json"])
    if isinstance(d, list):
        return {"counts": np.asarray(d, dtype=float)}
    if not isinstance(d, dict) or not d:
        raise MoesimError(f"{p}: expected a JSON object of per-layer expert counts", _HINTS["json"])
    key = next((k for k in _COUNT_KEYS if k in d), None)
    if key is not None:
        counts = np.asarray(d[key], dtype=float)
        return {"counts": counts.sum(0) if counts.ndim == 3 else counts}
    if not all(str(k).lstrip("-").isdigit() for k in d):
        hint = "this is a placement plan, not statistics" if "physical_to_logical_map" in d else _HINTS["json"]
        raise MoesimError(f"{p}: unknown JSON statistics layout (keys {list(d)[:5]})", hint)
    layers = sorted(int(k) for k in d)
    per_layer = [d[str(k)] for k in layers]
    if all(isinstance(v, dict) for v in per_layer):
        num = n or 1 + max((int(e) for v in per_layer for e in v), default=-1)
        counts = np.zeros((len(layers), num))
        for i, v in enumerate(per_layer):
            for e, c in v.items():
                if not 0 <= int(e) < num:
                    raise MoesimError(f"{p}: expert id {e} outside 0..{num - 1}", "check the number of experts")
                counts[i, int(e)] = float(c)
    else:
        counts = np.asarray(per_layer, dtype=float)
    return {"counts": counts, "layers": layers}


_READERS: dict[str, Callable[[list[Path], int | None], Raw]] = {
    "sglang": _read_sglang,
    "vllm": _per_file(_read_vllm, "vllm"),
    "megatron": _per_file(_read_megatron, "megatron"),
    "moecap": _per_file(_read_moecap, "moecap"),
    "csv": _per_file(_read_csv, "csv"),
    "npz": _per_file(_read_npz, "npz"),
    "json": _per_file(_read_json, "json"),
}
