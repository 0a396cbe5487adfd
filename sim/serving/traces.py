"""Trace files: reading and writing request tables in CSV, JSONL, Azure and ShareGPT formats.

`read_trace` returns a table with the columns arrival_s (float64, seconds from the first
request, ascending; NaN throughout for a trace without times), input_tokens and output_tokens
(int64 token counts). `write_trace` saves a request table from `workload.generate` as CSV or
JSONL. How a trace becomes a workload (replayed or drawn from) is `workload.generate`'s part.

Trace formats (``trace``: a path, relative ones resolved against the scenario's folder;
``trace_format``; `read_trace` returns arrival_s, input_tokens, output_tokens):

- ``csv``: a header naming ``input_tokens``, ``output_tokens`` and optionally ``arrival_s``
  (or ``timestamp``), both in seconds; other columns are ignored.
  Optional shared-prefix columns ``prefix_id`` (any name; an empty cell: no shared prefix) and
  ``prefix_tokens`` (the prefix's length in tokens, part of input_tokens, the same on every row of
  one prefix_id): requests with the same prefix_id start with the same prompt tokens, which an
  engine with prefix caching computes once (`sim.serving.replica`).
- ``jsonl``: one JSON object per line with the same keys.
- ``azure``: the Azure LLM inference traces of the Azure Public Dataset
  (``AzureLLMInferenceTrace_code.csv`` / ``_conv.csv``, 2023, and ``*_1week.csv``, 2024): the
  header ``TIMESTAMP,ContextTokens,GeneratedTokens``, TIMESTAMP a wall-clock date-time:
  2023 like ``2023-11-16 18:15:46.6805900`` (no zone, 7 fractional digits), 2024 like
  ``2024-05-10 00:00:00.009930+00:00`` (UTC, 6 fractional digits, the fraction dropped on
  whole seconds). Sources: github.com/Azure/AzurePublicDataset, AzureLLMInferenceDataset2023.md
  and AzureLLMInferenceDataset2024.md (schema), data/AzureLLMInferenceTrace_conv.csv (first
  rows), analysis/AzureLLMInferenceDataset2024.ipynb (2024 rows, read with date_format="mixed").
  Zone-less times are taken as UTC; only differences matter.
- ``sharegpt``: a JSON list. Each element is either a ShareGPT record, as in
  ``ShareGPT_V3_unfiltered_cleaned_split.json`` used by vLLM's benchmark_serving, whose
  ``conversations`` list holds turns ``{"from": ..., "value": text}``: the first ``human``
  (or ``user``) turn is the prompt and the first ``gpt`` (or ``assistant``, ``chatgpt``,
  ``bard``, ``bing``, ``model``) turn after it the output; records without such a pair
  (fewer than 2 turns) are skipped. Lengths are estimated without a tokenizer as
  ceil(UTF-8 bytes / 4), about right for English under BPE tokenizers and only an estimate.
  Or a pair ``[input, output]``, or an object ``{"input_tokens": .., "output_tokens": ..}``.
- ``auto``: ``.jsonl`` is jsonl, ``.json`` sharegpt, ``.csv`` azure when the header has
  TIMESTAMP and ContextTokens and csv otherwise (a trailing ``.gz`` is allowed).

A length of 0 counts as 1 token; a length that is not a whole number from 0 to
`model.limits.MAX_TOKENS` (negative, fractional, NaN, 1e308) is refused, naming its line or
record and its column.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from moesim.model.errors import MoesimError
from moesim.model.inputs import decode_text, parse_json, read_bytes
from moesim.model.limits import MAX_TOKENS

COLUMNS = ("request_id", "arrival_s", "input_tokens", "output_tokens")
TRACE_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")
#: Optional columns of a request table and of csv/jsonl traces: the shared prompt prefix of each request.
PREFIX_COLUMNS = ("prefix_id", "prefix_tokens")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
#: UTF-8 bytes per token assumed when estimating ShareGPT lengths without a tokenizer.
BYTES_PER_TOKEN = 4
HUMAN_ROLES = frozenset({"human", "user"})
MODEL_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard", "bing", "model"})
TraceFormat = Literal["auto", "csv", "jsonl", "azure", "sharegpt"]


def _show(value: Any) -> str:
    """A value as a user wrote it: 'abc', -1, 2.5."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


_CSV_HINT = "give a CSV with the header arrival_s,input_tokens,output_tokens; arrival_s is optional"
_JSONL_HINT = 'write one object per line, like {"arrival_s": 0.5, "input_tokens": 512, "output_tokens": 128}'
_AZURE_HINT = "use an Azure LLM trace CSV with the header TIMESTAMP,ContextTokens,GeneratedTokens"
_SHAREGPT_HINT = "give a JSON list of ShareGPT records with conversations, [input, output] pairs or token objects"


def _squash(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _text(path: Path, hint: str) -> str:
    """A trace file's text, gunzipped when its name ends in ``.gz``; `MoesimError` for a folder, an unreadable,
    damaged, binary or UTF-16 file (`model.inputs`). An empty file is the format reader's to report."""
    data = read_bytes(path, "a trace file", "check workload.trace (relative to the scenario file)", empty_ok=True)
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise MoesimError(f"{path}: a damaged gzip file ({_squash(exc)})", "download the file again") from None
    return decode_text(data, path, hint)


def _read_csv_file(path: Path, hint: str, **kwargs: Any) -> pd.DataFrame:
    text = _text(path, hint)
    try:
        return pd.read_csv(io.StringIO(text), skipinitialspace=True, **kwargs)
    except pd.errors.EmptyDataError:
        raise MoesimError(f"{path}: empty trace (no header, no rows)", hint) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise MoesimError(f"{path}: not a readable CSV ({_squash(exc)})", hint) from None


def _counts(values: pd.Series, path: Path, name: str, label: Callable[[int], str]) -> np.ndarray:
    """Token counts: whole numbers 0 .. `MAX_TOKENS` (0 raised to 1), int64 [n]; else a MoesimError naming the
    row and the column."""
    num = pd.to_numeric(values, errors="coerce").astype(np.float64).to_numpy()
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(num) | (num < 0) | (num % 1 != 0) | (num > MAX_TOKENS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = values.iloc[i]
        what = (
            f"no {name}"
            if pd.isna(raw)
            else f"{name} {_show(raw)} is not a token count (a whole number from 0 to {MAX_TOKENS:,})"
        )
        raise MoesimError(
            f"{path}: {label(i)}: {what}", f"give every {name} as a whole number from 0 to {MAX_TOKENS:,}"
        )
    return np.maximum(num.astype(np.int64), 1)


def _seconds(values: pd.Series, path: Path, name: str, label: Callable[[int], str]) -> np.ndarray:
    """Arrival times in seconds, float64 [n]; all NaN when the column is empty."""
    num = pd.to_numeric(values, errors="coerce").astype(np.float64).to_numpy()
    if values.isna().all():
        return np.full(len(values), np.nan)
    bad = ~np.isfinite(num)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = values.iloc[i]
        what = f"no {name}" if pd.isna(raw) else f"{name} {_show(raw)} is not a time in seconds"
        raise MoesimError(f"{path}: {label(i)}: {what}", f"give every {name} in seconds, or leave the column out")
    return num


def _prefixes(
    df: pd.DataFrame, inputs: np.ndarray, path: Path, label: Callable[[int], str]
) -> tuple[np.ndarray, np.ndarray]:
    """The shared-prefix columns of a csv/jsonl trace: (prefix_id codes, -1 for none; prefix_tokens), int64 [n].

    ``prefix_id`` names a prompt prefix (a system prompt, a few-shot preamble) that several requests share; any
    value works (a number or a string), an empty cell means no shared prefix. ``prefix_tokens`` is its length in
    tokens, a whole number from 0 to the row's input_tokens, the same on every row of one prefix_id.
    """
    n = len(df)
    if "prefix_id" not in df.columns and "prefix_tokens" not in df.columns:
        return np.full(n, -1, np.int64), np.zeros(n, np.int64)
    fix = "give prefix_id (any name; empty: none) and prefix_tokens (whole tokens, 0 to input_tokens) together"
    for need in ("prefix_id", "prefix_tokens"):
        if need not in df.columns:
            raise MoesimError(
                f"{path}: has {'prefix_tokens' if need == 'prefix_id' else 'prefix_id'} but no {need}", fix
            )
    ids = df["prefix_id"].map(lambda v: v if pd.isna(v) else str(v).strip() or None)
    codes = pd.factorize(ids, use_na_sentinel=True)[0].astype(np.int64)
    raw = df["prefix_tokens"]
    num = pd.to_numeric(raw, errors="coerce").astype(np.float64).to_numpy()
    num = np.where((codes < 0) & np.isnan(num), 0.0, num)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(num) | (num < 0) | (num % 1 != 0) | (num > MAX_TOKENS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = (
            "no prefix_tokens" if pd.isna(raw.iloc[i]) else f"prefix_tokens {_show(raw.iloc[i])} is not a token count"
        )
        raise MoesimError(f"{path}: {label(i)}: {what} (a whole number from 0 to {MAX_TOKENS:,})", fix)
    tokens = num.astype(np.int64)
    over = tokens > inputs
    if over.any():
        i = int(np.flatnonzero(over)[0])
        raise MoesimError(
            f"{path}: {label(i)}: prefix_tokens {tokens[i]} is longer than the prompt (input_tokens {inputs[i]})",
            "the prefix is part of the prompt: make prefix_tokens <= input_tokens",
        )
    none = (codes < 0) & (tokens > 0)
    if none.any():
        i = int(np.flatnonzero(none)[0])
        raise MoesimError(f"{path}: {label(i)}: prefix_tokens {tokens[i]} without a prefix_id", fix)
    for code in np.unique(codes[codes >= 0]):
        rows = np.flatnonzero(codes == code)
        lengths = tokens[rows]
        if (lengths != lengths[0]).any():
            j = int(rows[np.flatnonzero(lengths != lengths[0])[0]])
            raise MoesimError(
                f"{path}: {label(j)}: prefix_id {_show(df['prefix_id'].iloc[j])} has prefix_tokens {tokens[j]}, "
                f"but {lengths[0]} on {label(int(rows[0]))}",
                "one prefix_id names one prefix: give it the same prefix_tokens on every row",
            )
    return codes, tokens


def _from_columns(df: pd.DataFrame, path: Path, label: Callable[[int], str], hint: str) -> pd.DataFrame:
    """A csv/jsonl table as a trace: arrival from arrival_s or timestamp (if any), lengths, shared prefixes (if
    any)."""
    if df.empty:
        raise MoesimError(f"{path}: empty trace (no requests)", hint)
    df = df.rename(columns=lambda c: str(c).strip())
    missing = [c for c in ("input_tokens", "output_tokens") if c not in df.columns]
    if missing:
        raise MoesimError(f"{path}: missing column {', '.join(missing)}", hint)
    time_col = next((c for c in ("arrival_s", "timestamp") if c in df.columns), None)
    n = len(df)
    arrival = np.full(n, np.nan) if time_col is None else _seconds(df[time_col], path, time_col, label)
    inputs = _counts(df["input_tokens"], path, "input_tokens", label)
    out = pd.DataFrame(
        {
            "arrival_s": arrival,
            "input_tokens": inputs,
            "output_tokens": _counts(df["output_tokens"], path, "output_tokens", label),
        }
    )
    if "prefix_id" in df.columns or "prefix_tokens" in df.columns:
        out["prefix_id"], out["prefix_tokens"] = _prefixes(df, inputs, path, label)
    return out


def _read_csv(path: Path) -> pd.DataFrame:
    return _from_columns(_read_csv_file(path, _CSV_HINT), path, lambda i: f"line {i + 2}", _CSV_HINT)


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows, lines = [], []
    for number, text in enumerate(_text(path, _JSONL_HINT).splitlines(), 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MoesimError(f"{path}: line {number}: not valid JSON ({exc.msg})", _JSONL_HINT) from None
        except RecursionError:
            raise MoesimError(f"{path}: line {number}: nested too deeply", _JSONL_HINT) from None
        if not isinstance(row, dict):
            raise MoesimError(f"{path}: line {number}: not a JSON object", _JSONL_HINT)
        rows.append(row)
        lines.append(number)
    return _from_columns(pd.DataFrame.from_records(rows), path, lambda i: f"line {lines[i]}", _JSONL_HINT)


def _read_azure(path: Path) -> pd.DataFrame:
    df = _read_csv_file(path, _AZURE_HINT, dtype={"TIMESTAMP": str})
    missing = [c for c in AZURE_COLUMNS if c not in df.columns]
    if missing:
        raise MoesimError(f"{path}: missing column {', '.join(missing)}", _AZURE_HINT)
    if df.empty:
        raise MoesimError(f"{path}: empty trace (no requests)", _AZURE_HINT)
    raw = df["TIMESTAMP"]
    stamps = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
    if stamps.isna().any():  # odd but parseable forms: slower, per element
        stamps = pd.to_datetime(raw, format="mixed", utc=True, errors="coerce")
    if stamps.isna().any():
        i = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        what = "no TIMESTAMP" if pd.isna(raw.iloc[i]) else f"TIMESTAMP {_show(raw.iloc[i])} is not a date-time"
        raise MoesimError(f"{path}: line {i + 2}: {what}", "write times like 2023-11-16 18:15:46.6805900")

    def label(i: int) -> str:
        return f"line {i + 2}"

    return pd.DataFrame(
        {
            "arrival_s": (stamps - stamps.min()).dt.total_seconds().to_numpy(dtype=np.float64),
            "input_tokens": _counts(df["ContextTokens"], path, "ContextTokens", label),
            "output_tokens": _counts(df["GeneratedTokens"], path, "GeneratedTokens", label),
        }
    )


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` without a tokenizer: ceil(UTF-8 bytes / 4), at least 1 (an estimate)."""
    return max(1, -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN))


def _conversation_pair(turns: Any) -> tuple[int, int] | None:
    """(prompt, output) tokens of a ShareGPT conversation, or None when it has no such pair."""
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    roles = [str(t.get("from", "")).lower() if isinstance(t, dict) else "" for t in turns]
    human = next((i for i, r in enumerate(roles) if r in HUMAN_ROLES), None)
    if human is None:
        return None
    reply = next((i for i in range(human + 1, len(turns)) if roles[i] in MODEL_ROLES), None)
    texts = (turns[human].get("value"), turns[reply].get("value")) if reply is not None else (None, None)
    if not all(isinstance(t, str) for t in texts):
        return None
    return estimate_tokens(texts[0]), estimate_tokens(texts[1])


def _read_sharegpt(path: Path) -> pd.DataFrame:
    hint = "fix the JSON, or download the file again if it was cut short"
    data = parse_json(_text(path, _SHAREGPT_HINT), path, hint, check_depth=False)
    if not isinstance(data, list):
        raise MoesimError(f"{path}: expected a JSON list, got a JSON {type(data).__name__}", _SHAREGPT_HINT)
    if not data:
        raise MoesimError(f"{path}: empty trace (an empty list)", _SHAREGPT_HINT)
    pairs, records, skipped = [], [], 0
    for i, rec in enumerate(data):
        if isinstance(rec, dict) and "conversations" in rec:
            pair = _conversation_pair(rec["conversations"])
            if pair is None:
                skipped += 1
                continue
        elif isinstance(rec, list) and len(rec) == 2:
            pair = tuple(rec)
        elif isinstance(rec, dict) and "input_tokens" in rec and "output_tokens" in rec:
            pair = (rec["input_tokens"], rec["output_tokens"])
        else:
            raise MoesimError(
                f"{path}: record {i}: not a ShareGPT record, an [input, output] pair or a token object", _SHAREGPT_HINT
            )
        pairs.append(pair)
        records.append(i)
    if not pairs:
        raise MoesimError(
            f"{path}: no usable records ({skipped} conversation{'s' if skipped != 1 else ''} without a human turn"
            " followed by a gpt turn)",
            "give conversations with at least one human turn and a gpt reply",
        )

    def label(i: int) -> str:
        return f"record {records[i]}"

    table = pd.DataFrame(pairs, columns=["input_tokens", "output_tokens"], dtype=object)
    return pd.DataFrame(
        {
            "arrival_s": np.full(len(table), np.nan),
            "input_tokens": _counts(table["input_tokens"], path, "input tokens", label),
            "output_tokens": _counts(table["output_tokens"], path, "output tokens", label),
        }
    )


def _detect(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "sharegpt"
    if name.endswith(".csv"):
        header = _read_csv_file(path, _CSV_HINT, nrows=0).columns.str.strip()
        return "azure" if {"TIMESTAMP", "ContextTokens"} <= set(header) else "csv"
    raise MoesimError(
        f"{path}: cannot tell the trace format from the name",
        "use a .csv, .jsonl or .json file, or set workload.trace_format",
    )


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "azure": _read_azure, "sharegpt": _read_sharegpt}


def read_trace(path: str | Path, fmt: TraceFormat = "auto") -> pd.DataFrame:
    """A trace file as columns arrival_s (s, from 0, ascending; NaN without times), input_tokens, output_tokens,
    and prefix_id (int64 codes, -1: none) and prefix_tokens when a csv/jsonl trace has them.

    Formats: see the module docstring. Rows are sorted by arrival (stably) and shifted so the
    first arrives at 0 s.

    Raises:
        MoesimError: a missing, empty or corrupt file, naming the file, the problem and the fix.
    """
    path = Path(path)
    if not path.exists():  # a folder or a device: `_text` says so
        raise MoesimError(f"{path}: no such trace file", "check workload.trace (relative to the scenario file)")
    if fmt != "auto" and fmt not in _READERS:
        raise MoesimError(f"unknown trace format {fmt!r}", f"use auto or one of {', '.join(_READERS)}")
    df = _READERS[_detect(path) if fmt == "auto" else fmt](path)
    if df["arrival_s"].notna().all():
        df = df.sort_values("arrival_s", kind="stable", ignore_index=True)
        df["arrival_s"] -= df["arrival_s"].iloc[0]
    return df


def write_trace(df: pd.DataFrame, path: str | Path) -> None:
    """Save a request table (from `generate`) as CSV or JSONL, chosen by the extension."""
    path = Path(path)
    missing = [c for c in TRACE_COLUMNS if c not in df.columns]
    if missing:
        raise MoesimError(f"cannot write {path}: the table lacks {', '.join(missing)}", "pass a table from generate()")
    table = df[[c for c in (*COLUMNS, *PREFIX_COLUMNS) if c in df.columns]]
    if "prefix_id" in table.columns:  # -1 (no shared prefix) is written as an empty cell
        table = table.assign(prefix_id=table["prefix_id"].astype("Int64").mask(table["prefix_id"] < 0))
    name = path.name.lower().removesuffix(".gz")
    if not name.endswith((".csv", ".jsonl")):
        raise MoesimError(f"cannot write {path}: unknown extension", "name the file .csv or .jsonl")
    try:
        if name.endswith(".csv"):
            table.to_csv(path, index=False)
        else:
            table.to_json(path, orient="records", lines=True, double_precision=15)
    except OSError as exc:
        raise MoesimError(f"cannot write {path} ({_squash(exc)})", "check the folder exists and is writable") from None
