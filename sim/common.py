"""What the serving, training and sweep simulators share: reading a YAML into a validated model, the cluster a
scenario names, expert routing loads, and writing JSON summaries, traces and figures.

Public: `read_yaml`, `validate_mapping`, `one_line`, `scenario_cluster`, `scenario_loads`, `power_law_loads`,
`max_power_exponent`, `check_power_exponent`, `read_array`, `clean_json`, `is_moesim_trace`, `write_trace_json`,
`figure_class`, `fmt_s`. Imports only `moesim.model` (and `moesim.placement.stats` when a routing file is read),
so `sim.serving`, `sim.training` and `sim.sweeps` can all import it without importing each other.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from moesim.model import ClusterSpec, ModelSpec, inputs
from moesim.model.errors import MoesimError
from moesim.model.hardware import get_cluster, get_gpu, make_cluster

if TYPE_CHECKING:
    from matplotlib.figure import Figure


#: pydantic's bound errors: (context key, operator) for a message like "must be <= 10,000,000".
_BOUND_OPS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def one_line(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    what = err["msg"]
    if err["type"] == "extra_forbidden":
        what = "unknown key"
    bound = _BOUND_OPS.get(err["type"])
    if bound is not None:
        limit = (err.get("ctx") or {}).get(bound[0])
        if isinstance(limit, (int, float)):
            what = f"must be {bound[1]} {f'{limit:,}' if isinstance(limit, int) else f'{limit:g}'}"
    elif err["type"] == "finite_number":
        what = "must be a finite number"
    got = err.get("input")
    shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f", got {got!r}"
    return f"{where}: {loc}: {what}{shown}"


_M = TypeVar("_M", bound=BaseModel)


def validate_mapping(cls: type[_M], data: Any, where: str, examples: str, source: str) -> _M:
    """``data`` validated as the pydantic model ``cls``; `MoesimError` with one line naming the bad key.

    ``examples`` and ``source`` name the example files and the module the hint points to.
    """
    inputs.expect_mapping(data, where, f"see {examples}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise MoesimError(one_line(exc, where), f"fix that key (see {examples} and {source})") from None


def read_yaml(path: str | Path, what: str = "a scenario YAML") -> Any:
    """The parsed YAML of ``path``; `MoesimError` naming the file when it is missing, a folder, empty, not UTF-8
    text, not valid YAML or nested too deeply (`model.inputs.read_yaml`)."""
    return inputs.read_yaml(path, what, f"give the path of {what} (see examples/)")


def power_law_loads(num_layers: int, num_experts: int, exponent: float, seed: int) -> np.ndarray:
    """Load shares [num_layers, num_experts]: rank^-exponent popularity, a random order per layer."""
    rng = np.random.default_rng(seed)
    base = np.arange(1, num_experts + 1, dtype=float) ** -exponent
    base /= base.sum()
    return np.stack([base[rng.permutation(num_experts)] for _ in range(num_layers)])


def max_power_exponent(num_experts: int, top_k: int) -> float:
    """The largest power-law exponent whose busiest expert a top-k router can serve: rank^-exponent shares,
    the first at most 1/top_k (a token picks an expert at most once). Rounded down to 3 decimals.

    The first share is 1 / H, H = sum over ranks r of r^-exponent, which falls from ``num_experts`` (exponent 0)
    towards 1, so the answer solves H = top_k (bisection; infinite when top_k is 1).
    """
    if top_k <= 1:
        return math.inf
    if top_k >= num_experts:
        return 0.0
    ranks = np.arange(1, num_experts + 1, dtype=float)

    def harmonic(a: float) -> float:
        return float(np.sum(ranks**-a))

    lo, hi = 0.0, 1.0
    while harmonic(hi) >= top_k:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if harmonic(mid) >= top_k else (lo, mid)
    return math.floor(lo * 1000) / 1000


def check_power_exponent(exponent: float, num_experts: int, top_k: int, key: str = "routing.exponent") -> None:
    """`MoesimError` naming ``key`` and the largest exponent that works when ``exponent`` is too steep for top-k."""
    top = max_power_exponent(num_experts, top_k)
    if exponent <= top:
        return
    share = 1.0 / float(np.sum(np.arange(1, num_experts + 1, dtype=float) ** -exponent))
    raise MoesimError(
        f"{key}={exponent:g} is too steep for top-{top_k} routing over {num_experts} experts: the busiest expert "
        f"would get {share:.0%} of the (token, expert) pairs, but a token picks it at most once (at most 1/{top_k})",
        f"use {key} <= {top:g} for this model",
    )


#: Keys of a JSON routing or placement file that hold its array, in the order they are tried.
_ARRAY_KEYS = ("physical_to_logical_map", "loads", "logical_count")


def read_array(path: Path, what: str) -> np.ndarray:
    """The float array in a ``.npy``, ``.csv`` or ``.json`` file (a list, or an object with one of `_ARRAY_KEYS`).

    Raises:
        MoesimError: a missing, empty, unreadable, binary or malformed file, naming it.
    """
    fix = "give a .npy, .csv or .json file (see sim/serving/scenario.py: RoutingSpec)"
    if path.suffix == ".npy":
        data = inputs.read_bytes(path, f"a {what} file", fix)
        inputs.check_magic(data, ".npy", f"{what} file {path}", fix)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False).astype(float)
        except (ValueError, OSError, EOFError, TypeError) as exc:
            detail = " ".join(str(exc).split())[:100]
            raise MoesimError(f"{what} file {path} is not a readable .npy array ({detail})", fix) from None
    if path.suffix == ".csv":
        text = inputs.read_text(path, f"a {what} file", fix)
        try:
            return np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2)
        except ValueError as exc:
            detail = " ".join(str(exc).split())[:100]
            raise MoesimError(f"{what} file {path} is not a CSV of numbers ({detail})", fix) from None
    data = inputs.read_json(path, f"a {what} file", fix)
    if isinstance(data, dict):
        key = next((k for k in _ARRAY_KEYS if k in data), None)
        if key is None:
            raise MoesimError(f"{what} file {path} has none of the keys {', '.join(_ARRAY_KEYS)}", fix)
        data = data[key]
    try:
        arr = np.asarray(data, dtype=float)
    except (ValueError, TypeError):
        raise MoesimError(f"{what} file {path}: not a rectangular array of numbers", fix) from None
    if arr.ndim == 0:
        raise MoesimError(f"{what} file {path} holds one number, not an array", fix)
    return arr


def scenario_loads(sc: Any, model: ModelSpec, base: Path) -> np.ndarray | None:
    """Expert load shares [moe_layers, experts] from ``sc.routing`` (``distribution``, ``exponent``,
    ``file``) and ``sc.seed``, or None for uniform routing; serving and training scenarios share it."""
    moe = model.moe
    r = sc.routing
    if moe is None or not model.is_moe or r.distribution == "uniform":
        return None
    n_moe = model.num_moe_layers
    if r.distribution == "power":
        check_power_exponent(r.exponent, moe.num_experts, moe.top_k)
        return power_law_loads(n_moe, moe.num_experts, r.exponent, sc.seed)
    if not r.file:
        raise MoesimError("routing.distribution is 'file' but routing.file is not set", "give routing.file")
    arr = read_array(base / r.file, "routing")
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (n_moe, arr.size)).copy()
    if arr.ndim == 3:  # SGLang logical_count [passes, layers, experts]
        arr = arr.sum(axis=0)
    if arr.ndim == 2 and arr.shape[0] == model.num_layers and n_moe != model.num_layers:
        arr = arr[np.asarray(model.moe_layers, bool)]
    if arr.shape != (n_moe, moe.num_experts):
        raise MoesimError(
            f"routing file {r.file}: expected loads [{n_moe} MoE layers, {moe.num_experts} experts], "
            f"got shape {list(arr.shape)}",
            "give one row per MoE layer (or one row for all) with one column per expert",
        )
    from moesim.placement.stats import validate_counts

    validate_counts(arr, f"routing file {r.file}")
    return arr / arr.sum(axis=1, keepdims=True)


def scenario_cluster(sc: Any, base: Path, gpus_needed: int) -> ClusterSpec:
    """The cluster ``sc`` names (``cluster``, or ``gpu`` with ``nodes`` / ``gpus_per_node``; ``hardware``)."""
    hw = str(base / sc.hardware) if sc.hardware else None
    if sc.cluster:
        c = get_cluster(sc.cluster, hw)
        if sc.nodes or sc.gpus_per_node:
            c = make_cluster(c.gpu, nodes=sc.nodes or c.nodes, gpus_per_node=sc.gpus_per_node or c.gpus_per_node)
        return c
    if not sc.gpu:
        raise MoesimError("the scenario names neither a cluster nor a gpu", "add cluster: dgx-h100 or gpu: H100-SXM")
    return make_cluster(get_gpu(sc.gpu, hw), num_gpus=gpus_needed, nodes=sc.nodes, gpus_per_node=sc.gpus_per_node)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def clean_json(summary: dict[str, Any]) -> str:
    """One JSON object; NaN and infinity become null."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v

    return json.dumps(fix(summary), default=_json_default)


#: What every moesim trace holds near its end (``otherData``, written compactly after ``traceEvents``).
_GENERATOR = b'"otherData":{"generator":"moesim'


def is_moesim_trace(path: Path) -> bool:
    """Whether ``path`` is a Chrome trace moesim wrote (its ``otherData.generator`` starts with ``moesim``).

    Reads the first and the last 64 KiB only, so a large file costs nothing to check. A gzip-compressed trace
    (``.json.gz``) is recognised by its first 64 KiB decompressed, where moesim names itself in the first event.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if head.startswith(b"\x1f\x8b"):
                import gzip
                import zlib

                f.seek(0)
                try:
                    with gzip.GzipFile(fileobj=f) as z:
                        start = z.read(65536)
                except (EOFError, zlib.error):  # cut short or corrupt
                    return False
                return start.startswith(b'{"traceEvents":') and b'"generator":"moesim' in start
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read()
    except OSError:
        return False
    return head.startswith(b'{"traceEvents":') and _GENERATOR in tail


def write_trace_json(doc: dict, path: Path, force: bool = False) -> None:
    """Write ``doc`` as compact JSON to ``path`` through `model.outputs.write_file` (temp file, fsync, rename).

    An existing file is replaced only when it is a moesim trace (`is_moesim_trace`), or with ``force``.
    """
    from moesim.model.outputs import write_file

    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)  # one-shot dumps uses the C encoder

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_file(path, write, owned=is_moesim_trace, force=force, flag="--trace")


def figure_class() -> type[Figure]:
    """`matplotlib.figure.Figure`, or `MoesimError` when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401  (the top-level import fails first when the extra is missing)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MoesimError("plots need matplotlib", "pip install 'moesim[report]'") from exc
    return Figure


def fmt_s(x: float) -> str:
    """A time in s as a short string in µs, ms or s."""
    if not np.isfinite(x):
        return "n/a"
    if abs(x) < 1e-3:
        return f"{x * 1e6:.3g} µs"
    if abs(x) < 1.0:
        return f"{x * 1e3:.3g} ms"
    return f"{x:.3g} s"
