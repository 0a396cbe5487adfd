"""Serving workloads: when requests arrive and how long their prompts and outputs are.

A workload is the ``workload:`` section of a scenario file. `parse_workload` validates it
into a `Workload`; `generate` turns that into a request table with the columns

=============  =======  ==================================================================
request_id     int64    0 .. n-1, in arrival order
arrival_s      float64  arrival time in seconds from the start, ascending; NaN for a
                        closed loop, whose arrivals the simulator decides
input_tokens   int64    prompt length in tokens, >= 1
output_tokens  int64    generated length in tokens, >= 1
=============  =======  ==================================================================

Arrival processes (``arrival``; ``rate`` in requests/s):

- ``poisson``: exponential gaps with mean 1/rate; the first request arrives after the first gap.
- ``gamma``: gamma gaps with shape 1/cv² and mean 1/rate, ``cv`` being the coefficient of
  variation of the gaps (1 is Poisson, above 1 is burstier); first request after the first gap.
- ``constant``: gaps of exactly 1/rate; the first request arrives at 0 s.
- ``closed``: ``concurrency`` clients, each sending its next request ``think_s`` seconds after
  its previous response; arrival_s is NaN.

``requests`` requests are made (default 1000). With ``duration_s``, arrivals at or before that
time are kept instead, capped by ``requests`` only when ``requests`` is given too (at most
`MAX_REQUESTS` otherwise); a closed loop still gets ``requests`` rows and leaves ``duration_s``
to the simulator.

Length distributions (``input``, ``output``; token counts, whole numbers >= 1; a bare number
is short for ``{dist: fixed, value: N}``):

- ``fixed``: ``value``.
- ``uniform``: ``low`` .. ``high``, both inclusive.
- ``lognormal``: ``mean`` and ``cv`` of the token counts themselves (not of their log):
  sigma² = ln(1 + cv²), mu = ln(mean) - sigma²/2; samples are rounded, then clipped to
  [``min`` (default 1), ``max`` (default `model.limits.MAX_TOKENS`)].
- ``empirical``: ``values``, drawn with optional ``weights`` (normalised).

``max_input`` / ``max_output`` clip every length, synthetic or replayed.

Trace formats (``trace``: a path, relative ones resolved against the scenario's folder;
``trace_format``; `read_trace` returns arrival_s, input_tokens, output_tokens):

- ``csv``: a header naming ``input_tokens``, ``output_tokens`` and optionally ``arrival_s``
  (or ``timestamp``), both in seconds; other columns are ignored.
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

A trace with arrival times (azure; csv/jsonl with arrival_s) is replayed: its times, shifted
so the first is 0 and divided by ``time_scale``, and its lengths; ``arrival``, ``rate``,
``cv``, ``concurrency`` and ``think_s`` must then be left out, and ``requests`` caps the
replay only when given. A trace without arrival times (sharegpt; csv/jsonl without arrival_s)
is an empirical joint distribution of (input, output): rows are drawn with replacement,
seeded, and arrivals come from the arrival process. A length of 0 counts as 1 token; a length that is
not a whole number from 0 to `model.limits.MAX_TOKENS` (negative, fractional, NaN, 1e308) is refused,
naming its line or record and its column.

Limits (`model.limits`): ``requests`` and ``concurrency`` at most MAX_REQUESTS, token counts at most
MAX_TOKENS, ``rate`` at most MAX_RATE, ``duration_s`` / ``think_s`` at most MAX_SECONDS, ``cv`` in
[MIN_CV, MAX_CV]; NaN and infinity are refused everywhere.
"""

from __future__ import annotations

import difflib
import gzip
import io
import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from moesim.model.errors import MoesimError
from moesim.model.inputs import decode_text, parse_json, read_bytes
from moesim.model.limits import MAX_CV, MAX_RATE, MAX_REQUESTS, MAX_SECONDS, MAX_TOKENS, MIN_CV

COLUMNS = ("request_id", "arrival_s", "input_tokens", "output_tokens")
TRACE_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
#: UTF-8 bytes per token assumed when estimating ShareGPT lengths without a tokenizer.
BYTES_PER_TOKEN = 4
#: Most requests a workload may hold (``requests``, ``concurrency``, a duration-bound or replayed workload):
#: `model.limits.MAX_REQUESTS`; token counts per prompt or output are at most `model.limits.MAX_TOKENS`.
HUMAN_ROLES = frozenset({"human", "user"})
MODEL_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard", "bing", "model"})
TraceFormat = Literal["auto", "csv", "jsonl", "azure", "sharegpt"]

_PARAMS = {
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "lognormal": ("mean", "cv", "min", "max"),
    "empirical": ("values", "weights"),
}
_REQUIRED = {"fixed": ("value",), "uniform": ("low", "high"), "lognormal": ("mean", "cv"), "empirical": ("values",)}


def _fail(msg: str, hint: str, field: str | None = None) -> PydanticCustomError:
    """A validation error that `parse_workload` turns into ``<where>.<field>: msg (fix: hint)``."""
    return PydanticCustomError("moesim", "{msg}", {"msg": msg, "hint": hint, "field": field})


class LengthDist(BaseModel):
    """A distribution of token counts (whole numbers >= 1); see the module docstring.

    Attributes:
        dist: fixed, uniform, lognormal or empirical.
        value: fixed length, tokens.
        low, high: uniform bounds, tokens, inclusive.
        mean, cv: lognormal mean (tokens) and coefficient of variation of the lengths.
        min, max: lognormal clip, tokens (min defaults to 1).
        values, weights: empirical lengths (tokens) and their relative weights.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dist: Literal["fixed", "uniform", "lognormal", "empirical"]
    value: int | None = Field(None, ge=1, le=MAX_TOKENS)
    low: int | None = Field(None, ge=1, le=MAX_TOKENS)
    high: int | None = Field(None, ge=1, le=MAX_TOKENS)
    mean: float | None = Field(None, ge=1, le=MAX_TOKENS)
    cv: float | None = Field(None, ge=MIN_CV, le=MAX_CV)
    min: int = Field(1, ge=1, le=MAX_TOKENS)
    max: int | None = Field(None, ge=1, le=MAX_TOKENS)
    values: list[Annotated[int, Field(ge=1, le=MAX_TOKENS)]] | None = Field(None, min_length=1, max_length=MAX_REQUESTS)
    weights: list[Annotated[float, Field(ge=0, le=1e300)]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"dist": "fixed", "value": data}
        return data

    @model_validator(mode="after")
    def _check(self) -> LengthDist:
        params = _PARAMS[self.dist]
        for name in sorted(self.model_fields_set - {"dist", *params}):
            raise _fail(f"not used by dist {self.dist}", f"{self.dist} takes {', '.join(params)}", name)
        for name in _REQUIRED[self.dist]:
            if getattr(self, name) is None:
                raise _fail(f"required by dist {self.dist}", f"set {name}", name)
        if self.dist == "uniform" and self.low > self.high:
            raise _fail(f"{self.low} is above high {self.high}", "make low <= high", "low")
        if self.dist == "lognormal" and self.max is not None and self.max < self.min:
            raise _fail(f"{self.max} is below min {self.min}", "make min <= max", "max")
        if self.dist == "empirical" and self.weights is not None:
            if len(self.weights) != len(self.values):
                raise _fail(
                    f"{len(self.weights)} weights for {len(self.values)} values", "give one weight per value", "weights"
                )
            if sum(self.weights) <= 0:
                raise _fail("all weights are 0", "give at least one positive weight", "weights")
        return self


_DEFAULT_INPUT = LengthDist(dist="lognormal", mean=512, cv=1.0)
_DEFAULT_OUTPUT = LengthDist(dist="lognormal", mean=256, cv=1.0)


class Workload(BaseModel):
    """A serving workload: arrival process, request count and lengths, or a trace to replay.

    Attributes:
        arrival: poisson, gamma, constant or closed (see the module docstring).
        rate: open-loop arrival rate, requests/s.
        cv: gamma's coefficient of variation of the inter-arrival gaps.
        concurrency: closed-loop clients.
        think_s: closed-loop pause between a client's response and its next request, s.
        requests: how many requests.
        duration_s: stop arrivals after this time, s.
        input, output: prompt and output length distributions, tokens.
        trace: path of a trace to replay or to draw lengths from.
        trace_format: auto, csv, jsonl, azure or sharegpt.
        time_scale: replay speed-up; trace arrival times are divided by it.
        max_input, max_output: clip on every prompt / output length, tokens.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    arrival: Literal["poisson", "gamma", "constant", "closed"] = "poisson"
    rate: float | None = Field(None, gt=0, le=MAX_RATE)
    cv: float = Field(2.0, ge=MIN_CV, le=MAX_CV)
    concurrency: int | None = Field(None, ge=1, le=MAX_REQUESTS)
    think_s: float = Field(0.0, ge=0, le=MAX_SECONDS)
    requests: int = Field(1000, ge=1, le=MAX_REQUESTS)
    duration_s: float | None = Field(None, gt=0, le=MAX_SECONDS)
    input: LengthDist = _DEFAULT_INPUT
    output: LengthDist = _DEFAULT_OUTPUT
    trace: str | None = None
    trace_format: TraceFormat = "auto"
    time_scale: float = Field(1.0, ge=1e-9, le=1e9)
    max_input: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_output: int | None = Field(None, ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _check(self) -> Workload:
        given = self.model_fields_set
        if self.trace is None:
            for name in ("trace_format", "time_scale"):
                if name in given:
                    raise _fail("only used with a trace", f"set trace, or remove {name}", name)
        else:
            for name in ("input", "output"):
                if name in given:
                    raise _fail("lengths come from the trace", f"remove {name}, or remove trace", name)
        if self.arrival == "closed":
            if self.concurrency is None:
                raise _fail("required by arrival closed", "set concurrency, the number of clients", "concurrency")
            if self.rate is not None:
                raise _fail("not used by arrival closed", "remove rate, or use arrival poisson", "rate")
        else:
            for name in ("concurrency", "think_s"):
                if name in given:
                    raise _fail(f"only used by arrival closed, not {self.arrival}", f"remove {name}", name)
            if self.rate is None and self.trace is None:
                raise _fail(f"required by arrival {self.arrival}", "set rate in requests/s", "rate")
        if "cv" in given and self.arrival != "gamma":
            raise _fail(f"only used by arrival gamma, not {self.arrival}", "remove cv, or set arrival: gamma", "cv")
        return self


# ---------------------------------------------------------------- validation errors


def _show(value: Any) -> str:
    """A value as a user wrote it: 'abc', -1, 2.5."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _loc_text(where: str, loc: tuple[Any, ...]) -> str:
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _from_validation(exc: ValidationError, where: str) -> MoesimError:
    """The first pydantic error as one MoesimError naming the key, the problem and the fix."""
    errors = exc.errors()
    err = errors[0]
    loc, kind, ctx, got = tuple(err["loc"]), err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "moesim":
        loc += (ctx["field"],) if ctx.get("field") else ()
        msg, hint = ctx["msg"], ctx["hint"]
    elif kind == "extra_forbidden":
        keys = list((LengthDist if loc[0] in ("input", "output") and len(loc) > 1 else Workload).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        msg = "unknown key"
        hint = (f"did you mean {close[0]}? " if close else "") + f"valid keys: {', '.join(keys)}"
    elif kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        limit = f"{ctx[key]:,}" if isinstance(ctx[key], int) else f"{ctx[key]:g}"
        msg, hint = f"must be {op} {limit}, got {_show(got)}", f"give a value {op} {limit}"
    elif kind == "missing":
        msg, hint = "required", f"set {loc[-1]}"
    elif kind == "literal_error":
        msg, hint = f"must be one of {ctx['expected']}, got {_show(got)}", f"use one of {ctx['expected']}"
    elif kind == "finite_number":
        msg, hint = f"must be a finite number, got {_show(got)}", "give a finite number"
    elif kind.startswith("int_"):
        msg, hint = f"must be a whole number, got {_show(got)}", "give a whole number"
    elif kind.startswith("float_"):
        msg, hint = f"must be a number, got {_show(got)}", "give a number"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        msg, hint = f"must be a mapping of keys, got {_show(got)}", "write it as key: value lines"
    else:
        msg, hint = err["msg"][:1].lower() + err["msg"][1:], "check the value"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return MoesimError(f"{_loc_text(where, loc)}: {msg}", hint)


def parse_workload(data: dict[str, Any] | None, where: str = "workload") -> Workload:
    """Validate a ``workload:`` mapping (from YAML) into a `Workload`.

    Raises:
        MoesimError: the first problem, as ``<where>.<key>: <problem> (fix: <hint>)``.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MoesimError(f"{where}: must be a mapping of keys, got {_show(data)}", "write it as key: value lines")
    try:
        return Workload.model_validate(data)
    except ValidationError as exc:
        raise _from_validation(exc, where) from None


# ---------------------------------------------------------------- sampling


def sample_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` token counts drawn from ``dist``: int64 array, shape [n], every value >= 1."""
    if dist.dist == "fixed":
        out = np.full(n, dist.value)
    elif dist.dist == "uniform":
        out = rng.integers(dist.low, dist.high, size=n, endpoint=True)
    elif dist.dist == "lognormal":
        sigma2 = math.log1p(dist.cv**2)
        draws = rng.lognormal(math.log(dist.mean) - sigma2 / 2, math.sqrt(sigma2), size=n)
        out = np.clip(np.rint(draws), dist.min, dist.max if dist.max is not None else MAX_TOKENS)
    else:
        p = None if dist.weights is None else np.asarray(dist.weights) / sum(dist.weights)
        out = rng.choice(np.asarray(dist.values), size=n, p=p)
    return out.astype(np.int64)


def _gaps(w: Workload, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` inter-arrival gaps in seconds: shape [n]."""
    if w.arrival == "poisson":
        return rng.exponential(1.0 / w.rate, size=n)
    if w.arrival == "gamma":
        shape = 1.0 / w.cv**2
        return rng.gamma(shape, 1.0 / (w.rate * shape), size=n)
    return np.full(n, 1.0 / w.rate)


def _arrivals(w: Workload, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in seconds, ascending: shape [n] (NaN for a closed loop)."""
    if w.arrival == "closed":
        return np.full(w.requests, np.nan)
    if w.duration_s is None:
        n = w.requests
        return np.arange(n) / w.rate if w.arrival == "constant" else np.cumsum(_gaps(w, rng, n))
    capped = "requests" in w.model_fields_set
    limit = w.requests if capped else MAX_REQUESTS
    expected = w.rate * w.duration_s
    if not capped and expected > MAX_REQUESTS:
        raise MoesimError(
            f"workload.duration_s: {w.duration_s:g} s at {w.rate:g} req/s is about {expected:.3g} requests, "
            f"over the limit of {MAX_REQUESTS}",
            "lower rate or duration_s, or set requests to cap the count",
        )
    if w.arrival == "constant":
        return np.arange(min(limit, math.floor(expected) + 1)) / w.rate
    chunk = int(min(limit, expected + 6 * math.sqrt(expected) + 16))
    times = np.empty(0)
    while len(times) < limit and (len(times) == 0 or times[-1] <= w.duration_s):
        start = times[-1] if len(times) else 0.0
        times = np.concatenate([times, start + np.cumsum(_gaps(w, rng, chunk))])
    return times[times <= w.duration_s][:limit]


def _resolve(trace: str, base_dir: Path | None) -> Path:
    path = Path(trace).expanduser()
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


def generate(w: Workload, seed: int = 0, base_dir: Path | None = None) -> pd.DataFrame:
    """The requests of ``w``: columns request_id, arrival_s (s), input_tokens, output_tokens.

    Deterministic for a ``seed``. A relative ``w.trace`` is resolved against ``base_dir``
    (the scenario file's folder), else the working directory.

    Raises:
        MoesimError: an unreadable trace, or arrival settings that clash with it.
    """
    rng = np.random.default_rng(seed)
    if w.trace is None:
        arrivals = _arrivals(w, rng)
        inputs, outputs = sample_lengths(w.input, len(arrivals), rng), sample_lengths(w.output, len(arrivals), rng)
    else:
        path = _resolve(w.trace, base_dir)
        trace = read_trace(path, w.trace_format)
        if trace["arrival_s"].notna().all():
            clash = sorted(w.model_fields_set & {"arrival", "rate", "cv", "concurrency", "think_s"})
            if clash:
                raise MoesimError(
                    f"workload.{clash[0]}: {path.name} has its own arrival times",
                    f"remove {', '.join(clash)} to replay them, or use a trace without arrival_s",
                )
            arrivals = trace["arrival_s"].to_numpy() / w.time_scale
            keep = np.ones(len(arrivals), bool) if w.duration_s is None else arrivals <= w.duration_s
            if "requests" in w.model_fields_set:
                keep &= np.arange(len(arrivals)) < w.requests
            arrivals = arrivals[keep]
            if len(arrivals) > MAX_REQUESTS:
                raise MoesimError(
                    f"workload.trace: {path.name} replays {len(arrivals):,} requests, over the limit of "
                    f"{MAX_REQUESTS:,}",
                    "set workload.requests or workload.duration_s to replay part of it",
                )
            inputs, outputs = trace["input_tokens"].to_numpy()[keep], trace["output_tokens"].to_numpy()[keep]
        else:
            if w.arrival != "closed" and w.rate is None:
                raise MoesimError(
                    f"workload.rate: required, since {path.name} has no arrival times",
                    "set rate (requests/s), or arrival: closed with concurrency",
                )
            arrivals = _arrivals(w, rng)
            rows = rng.integers(0, len(trace), size=len(arrivals))
            inputs, outputs = trace["input_tokens"].to_numpy()[rows], trace["output_tokens"].to_numpy()[rows]
    if w.max_input is not None:
        inputs = np.minimum(inputs, w.max_input)
    if w.max_output is not None:
        outputs = np.minimum(outputs, w.max_output)
    return pd.DataFrame(
        {
            "request_id": np.arange(len(arrivals), dtype=np.int64),
            "arrival_s": np.asarray(arrivals, dtype=np.float64),
            "input_tokens": np.asarray(inputs, dtype=np.int64),
            "output_tokens": np.asarray(outputs, dtype=np.int64),
        }
    )


# ---------------------------------------------------------------- traces

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


def _from_columns(df: pd.DataFrame, path: Path, label: Callable[[int], str], hint: str) -> pd.DataFrame:
    """A csv/jsonl table as a trace: arrival from arrival_s or timestamp (if any), lengths."""
    if df.empty:
        raise MoesimError(f"{path}: empty trace (no requests)", hint)
    df = df.rename(columns=lambda c: str(c).strip())
    missing = [c for c in ("input_tokens", "output_tokens") if c not in df.columns]
    if missing:
        raise MoesimError(f"{path}: missing column {', '.join(missing)}", hint)
    time_col = next((c for c in ("arrival_s", "timestamp") if c in df.columns), None)
    n = len(df)
    arrival = np.full(n, np.nan) if time_col is None else _seconds(df[time_col], path, time_col, label)
    return pd.DataFrame(
        {
            "arrival_s": arrival,
            "input_tokens": _counts(df["input_tokens"], path, "input_tokens", label),
            "output_tokens": _counts(df["output_tokens"], path, "output_tokens", label),
        }
    )


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
    """A trace file as columns arrival_s (s, from 0, ascending; NaN without times), input_tokens, output_tokens.

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
    table = df[[c for c in COLUMNS if c in df.columns]]
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


# ---------------------------------------------------------------- description


def _dist_text(d: LengthDist) -> str:
    if d.dist == "fixed":
        return f"fixed {d.value}"
    if d.dist == "uniform":
        return f"uniform({d.low}-{d.high})"
    if d.dist == "empirical":
        return f"empirical({len(d.values)} values)"
    clip = "" if d.min == 1 and d.max is None else f" in [{d.min}, {d.max if d.max is not None else 'inf'}]"
    return f"lognormal(mean {d.mean:g}, cv {d.cv:g}){clip}"


def describe(w: Workload) -> str:
    """One line for people, e.g. "Poisson 20 req/s, 1000 requests, input lognormal(mean 512, cv 1), ..."."""
    given = w.model_fields_set
    name = Path(w.trace).name if w.trace else ""
    replay = w.trace is not None and w.rate is None and w.arrival != "closed"
    if replay:
        head = f"Replay of {name}" + (f" at {w.time_scale:g}x speed" if w.time_scale != 1 else "")
    elif w.arrival == "closed":
        head = f"Closed loop, {w.concurrency} clients" + (f", think {w.think_s:g} s" if w.think_s else "")
    else:
        kind = {"poisson": "Poisson", "gamma": f"Gamma(cv {w.cv:g})", "constant": "Constant"}[w.arrival]
        head = f"{kind} {w.rate:g} req/s"
    if w.duration_s is not None:
        count = f"for {w.duration_s:g} s" + (f" (at most {w.requests} requests)" if "requests" in given else "")
    elif replay and "requests" not in given:
        count = "all requests"
    else:
        count = f"{w.requests} requests"
    parts = [head, count]
    parts += [f"lengths from {name}"] if w.trace else [f"input {_dist_text(w.input)}", f"output {_dist_text(w.output)}"]
    parts += [f"input <= {w.max_input}"] if w.max_input is not None else []
    parts += [f"output <= {w.max_output}"] if w.max_output is not None else []
    return ", ".join(parts)
