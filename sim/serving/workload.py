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

The client's timeout (``timeout_s``; None: the client waits as long as it takes): a request whose last chunk has
not reached the client ``timeout_s`` after it was sent fails. The client closes the connection, and the engine
aborts the request at its next step: its KV cache is freed, and it leaves the queue if it was still waiting (vLLM
and SGLang abort a request whose client disconnects). This is aiohttp's total timeout, which inference-perf leaves at
aiohttp's default of 300 s unless its ``timeout`` is set (kubernetes-sigs/inference-perf@inference_perf/client/
modelserver/openai_client.py: ``aiohttp.ClientTimeout(total=timeout)`` if set, else aiohttp's default
``ClientTimeout(total=300)``; the reference runs of ``vllm-e2e-dense`` fail their requests 300.0-301.0 s after
sending them); vLLM's benchmark client waits 6 hours (``AIOHTTP_TIMEOUT``, vllm-project/vllm@benchmarks/
backend_request_func.py) and SGLang's ``bench_serving`` 20 hours. Failed requests are left out of the latency
percentiles, as the benchmark clients leave them out (`sim.serving.metrics`).

Shared prefixes (prefix caching): ``shared_prefix: {tokens: N, groups: G}`` gives G system prompts of
N tokens; each request draws one (uniformly, seeded, after its lengths) and its prompt is that prefix
followed by its ``input`` tokens (as inference-perf's shared_prefix data generator builds prompts),
so input_tokens includes the N prefix tokens. The table then has ``prefix_id`` (0 .. G-1) and
``prefix_tokens``; a csv/jsonl trace can give the same two columns per row (`traces`). Whether
a prefix is found in the cache is the replica's part (`sim.serving.replica`).

Trace formats (``trace``: a path, relative ones resolved against the scenario's folder;
``trace_format``) and their readers are in `traces`; `read_trace` and `write_trace` are
re-exported here.

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
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from moesim.model.errors import MoesimError
from moesim.model.inputs import StrictInput
from moesim.model.limits import MAX_CV, MAX_RATE, MAX_REQUESTS, MAX_SECONDS, MAX_TOKENS, MIN_CV
from moesim.sim.serving.traces import (
    AZURE_COLUMNS,  # noqa: F401 (re-exported)
    BYTES_PER_TOKEN,  # noqa: F401 (re-exported)
    COLUMNS,  # noqa: F401 (re-exported)
    HUMAN_ROLES,  # noqa: F401 (re-exported)
    MODEL_ROLES,  # noqa: F401 (re-exported)
    TRACE_COLUMNS,  # noqa: F401 (re-exported)
    TraceFormat,
    _show,
    estimate_tokens,  # noqa: F401 (re-exported)
    read_trace,
    write_trace,  # noqa: F401 (re-exported)
)

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


class LengthDist(StrictInput):
    """A distribution of token counts (whole numbers >= 1); see the module docstring.

    Attributes:
        dist: fixed, uniform, lognormal or empirical.
        value: fixed length, tokens.
        low, high: uniform bounds, tokens, inclusive.
        mean, cv: lognormal mean (tokens) and coefficient of variation of the lengths.
        min, max: lognormal clip, tokens (min defaults to 1).
        values, weights: empirical lengths (tokens) and their relative weights.
    """

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


class SharedPrefix(StrictInput):
    """Shared prompt prefixes: ``groups`` system prompts of ``tokens`` tokens each; every request draws one group
    (uniformly, seeded) and its prompt is that prefix followed by its own ``input`` tokens.

    Modelled on inference-perf's shared_prefix data generator (kubernetes-sigs/inference-perf@
    inference_perf/datagen/shared_prefix_datagen.py: ``num_groups`` system prompts of ``system_prompt_len`` tokens,
    each prompt = system prompt + question, prompts shuffled) and SGLang's ``generated-shared-prefix`` dataset
    (sgl-project/sglang@python/sglang/bench_serving.py). An engine with prefix caching computes a prefix once
    (`sim.serving.replica`).

    Attributes:
        tokens: prefix length, tokens (added to every prompt).
        groups: distinct prefixes.
    """

    tokens: int = Field(ge=1, le=MAX_TOKENS)
    groups: int = Field(1, ge=1, le=MAX_REQUESTS)


_DEFAULT_INPUT = LengthDist(dist="lognormal", mean=512, cv=1.0)
_DEFAULT_OUTPUT = LengthDist(dist="lognormal", mean=256, cv=1.0)


class Workload(StrictInput):
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
        shared_prefix: shared prompt prefixes (`SharedPrefix`); the prompt is the prefix plus ``input`` tokens.
        timeout_s: the client's total timeout per request, s (None: none; see the module docstring).
    """

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
    shared_prefix: SharedPrefix | None = None
    timeout_s: float | None = Field(None, gt=0, le=MAX_SECONDS)

    @model_validator(mode="after")
    def _check(self) -> Workload:
        given = self.model_fields_set
        sp = self.shared_prefix
        if sp is not None and self.max_input is not None and self.max_input <= sp.tokens:
            raise _fail(
                f"{self.max_input} leaves no room after the {sp.tokens}-token shared prefix",
                "make max_input larger than shared_prefix.tokens",
                "max_input",
            )
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
        model = {"input": LengthDist, "output": LengthDist, "shared_prefix": SharedPrefix}.get(str(loc[0]), Workload)
        keys = list((model if len(loc) > 1 else Workload).model_fields)
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
    elif kind == "bool_for_number":  # `model.inputs.StrictInput`
        msg, hint = f"must be a number, not {_show(got)}", "give a number"
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
    """The requests of ``w``: columns request_id, arrival_s (s), input_tokens, output_tokens, and prefix_id (int64,
    -1: no shared prefix) and prefix_tokens (tokens, part of input_tokens) when ``w.shared_prefix`` or the trace
    gives shared prefixes.

    Deterministic for a ``seed``. A relative ``w.trace`` is resolved against ``base_dir``
    (the scenario file's folder), else the working directory.

    Raises:
        MoesimError: an unreadable trace, or arrival settings that clash with it.
    """
    rng = np.random.default_rng(seed)
    prefix_id: np.ndarray | None = None
    prefix_tokens: np.ndarray | None = None
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
            if "prefix_id" in trace.columns:
                prefix_id, prefix_tokens = trace["prefix_id"].to_numpy()[keep], trace["prefix_tokens"].to_numpy()[keep]
        else:
            if w.arrival != "closed" and w.rate is None:
                raise MoesimError(
                    f"workload.rate: required, since {path.name} has no arrival times",
                    "set rate (requests/s), or arrival: closed with concurrency",
                )
            arrivals = _arrivals(w, rng)
            rows = rng.integers(0, len(trace), size=len(arrivals))
            inputs, outputs = trace["input_tokens"].to_numpy()[rows], trace["output_tokens"].to_numpy()[rows]
            if "prefix_id" in trace.columns:
                prefix_id, prefix_tokens = trace["prefix_id"].to_numpy()[rows], trace["prefix_tokens"].to_numpy()[rows]
        if w.shared_prefix is not None and prefix_id is not None:
            raise MoesimError(
                f"workload.shared_prefix: {path.name} has its own prefix_id and prefix_tokens columns",
                "remove shared_prefix to use the trace's prefixes, or drop those columns",
            )
    if w.shared_prefix is not None:  # drawn after the lengths, so the lengths do not change with it
        sp = w.shared_prefix
        prefix_id = rng.integers(0, sp.groups, size=len(arrivals))
        prefix_tokens = np.full(len(arrivals), sp.tokens)
        inputs = np.asarray(inputs) + sp.tokens
    if w.max_input is not None:
        inputs = np.minimum(inputs, w.max_input)
    if w.max_output is not None:
        outputs = np.minimum(outputs, w.max_output)
    table = pd.DataFrame(
        {
            "request_id": np.arange(len(arrivals), dtype=np.int64),
            "arrival_s": np.asarray(arrivals, dtype=np.float64),
            "input_tokens": np.asarray(inputs, dtype=np.int64),
            "output_tokens": np.asarray(outputs, dtype=np.int64),
        }
    )
    if prefix_id is not None and prefix_tokens is not None:
        table["prefix_id"] = np.asarray(prefix_id, dtype=np.int64)
        table["prefix_tokens"] = np.minimum(np.asarray(prefix_tokens, dtype=np.int64), table["input_tokens"])
    return table


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
    if w.shared_prefix is not None:
        sp = w.shared_prefix
        parts += [f"shared prefix {sp.tokens} tokens x {sp.groups} group{'s' if sp.groups != 1 else ''}"]
    parts += [f"input <= {w.max_input}"] if w.max_input is not None else []
    parts += [f"output <= {w.max_output}"] if w.max_output is not None else []
    return ", ".join(parts)
