"""Engine profiles and the host time of a serving step.

A real engine spends CPU time around every GPU step: its scheduler picks the sequences (a base cost plus a cost
per running sequence), it prepares the inputs (block tables, positions, slot mappings: a base cost plus a cost per
scheduled token), it samples (the host side of logits processing and sampling, per step and per sequence) and it
launches the step's kernels, one by one in an eager step (``launch_s`` each) or as one replay of a captured CUDA
graph (``graph_replay_s``) for a decode step whose batch, padded up to the next capture size, has a graph. Before
the scheduler, the API server parses each request, waits for the tokeniser's micro-batch window to close
(``tokenize_wait_s``) and tokenises its prompt, one request at a time (``api_servers`` processes per replica, so a
burst queues: `sim.serving.metrics.api_queue_wait`); after it, outputs are detokenised.

The sampler's GPU kernels are part of the step's ops; which sampler runs is the profile's setting ``sampling``
(`sampling_rule`): vLLM gives a request that sets no sampling parameters the model's generation_config.json
defaults (``engines/generation_config.yaml``), and with top-p set vLLM 0.15 sorts every sequence's logits each step.

An `EngineProfile` holds those costs for one engine kind and version: YAML files shipped in
``sim/serving/engines/`` (one per kind, each parameter with its value, unit and source), or a user's file (e.g.
written by ``moesim fit-engine``), with a scenario's ``engine:`` overrides on top. `engine_profile` resolves it
once per pool; `host_cost` gives one step's host seconds; `step_time` puts GPU and host time together.

How host time meets GPU time (the profile's ``overlap``):
- ``false``: the CPU schedules, prepares, launches, waits and samples in turn: duration = scheduler + prepare +
  forward + sampling. The forward is a producer-consumer pipeline (`launch_pipeline`): the CPU issues the step's
  launches one after another (``launch_s`` per kernel, ``graph_replay_s`` per graph), a launch is asynchronous,
  and the GPU runs each kernel once it is issued and the previous one is done. Kernels shorter than a launch
  starve the GPU, longer ones let the CPU run ahead: the forward lies between max(GPU, launches) and their sum.
- ``true`` (vLLM's async scheduling, SGLang's overlap scheduler): the CPU work of step n+1 (scheduling, input
  preparation, launches) runs while the GPU runs step n, so in steady state the slower of the two sets the pace:
  duration = max(GPU, scheduler + prepare + sampling + launches).
The exposed host parts (what the step pays beyond its GPU time) always sum with the GPU time to the duration.

Units: seconds; counts of sequences, tokens and kernel launches.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from moesim.model.errors import MoesimError
from moesim.model.ops import SAMPLING
from moesim.model.ops import kernel_launches as model_kernel_launches

if TYPE_CHECKING:  # pragma: no cover
    from moesim.model.op_record import Op


class EngineSpec(Protocol):
    """What `engine_profile` reads of a scenario's ``engine:`` (`sim.serving.scenario.EngineSpec`; not imported
    here, the scenario module validates ``host`` against `PARAMS`)."""

    kind: str
    version: str | None
    profile: str | None
    cuda_graphs: bool | None
    attention_backend: str | None
    moe_kernel: str | None
    prefix_caching: bool | None
    stream: bool
    host: dict[str, float] | None

    def model_dump_json(self) -> str: ...


#: The host-cost parameters of a profile, by name: what each prices. Every one is in seconds.
PARAMS: dict[str, str] = {
    "scheduler_base_s": "scheduler, per engine step, s",
    "scheduler_per_seq_s": "scheduler, per running sequence per step, s",
    "prepare_base_s": "input preparation (block tables, positions, slot mapping), per step, s",
    "prepare_per_token_s": "input preparation, per scheduled token, s",
    "sampling_base_s": "host side of logits processing and sampling, per step, s",
    "sampling_per_seq_s": "host side of logits processing and sampling, per sequence, s",
    "launch_s": "CPU cost of one GPU kernel launch in an eager step (framework dispatch + cudaLaunchKernel), s",
    "graph_replay_s": "CPU cost of one captured CUDA graph replay, s",
    "api_per_request_s": "API server (HTTP, request parsing), per request, before the scheduler, s",
    "tokenize_per_token_s": "tokenisation, per prompt token, before the scheduler, s",
    "tokenize_wait_s": "the tokeniser's micro-batching window a prompt waits before it is tokenised, per request, s",
    "detokenize_per_token_s": "detokenisation, per output token, on the way back to the client, s",
    "stream_per_seq_s": "API server output handling per running request per step: a streamed token waits for its "
    "step's whole batch to be processed, s",
}

#: Where shipped profiles live (package data).
ENGINES_DIR = Path(__file__).with_name("engines")

#: Newest shipped version of each kind (used when ``engine.version`` is not set).
DEFAULT_VERSION = {"vllm": "0.15.1", "sglang": "0.5.6"}

_SETTINGS = (
    "cuda_graphs",
    "capture_sizes",
    "mixed_graphs",
    "overlap",
    "attention_backend",
    "moe_kernel",
    "prefix_caching",
    "stream_chunk_tokens",
    "sampling",
    "routes_padding",
    "api_servers",
)
#: Settings a profile may leave out, with their default.
_OPTIONAL_SETTINGS: dict[str, Any] = {"sampling": "greedy", "routes_padding": True, "api_servers": 1}
#: `EngineProfile.sampling` values: a sampler rule of `model.ops.SAMPLING`, or ``generation_config``.
SAMPLING_SETTINGS = (*SAMPLING, "generation_config")
#: The models' generation-config sampling defaults, by moesim preset (package data).
GENERATION_CONFIG_FILE = ENGINES_DIR / "generation_config.yaml"
#: The rule of a model whose generation config moesim does not know: greedy, moesim's sampler before the setting.
UNKNOWN_GENERATION_RULE = "greedy"


@dataclass(frozen=True)
class EngineProfile:
    """One engine's host costs and settings, resolved for a pool.

    Attributes:
        kind: ``vllm``, ``sglang`` or ``ideal``.
        version: the engine version the profile describes.
        cuda_graphs: decode steps replay captured CUDA graphs.
        capture_sizes: decode batch sizes (sequences) with a captured graph, ascending; a decode step runs at the
            next size >= its sequences, and eagerly beyond the largest.
        mixed_graphs: how prefill and mixed steps with at most ``max(capture_sizes)`` tokens run with graphs on:
            ``piecewise`` (vLLM V1: the layers between attention calls replayed as graphs, attention eager) or
            ``none`` (eager).
        overlap: the host work of the next step overlaps this step's GPU time (see the module docstring).
        attention_backend: the attention kernel the engine runs.
        moe_kernel: the fused-MoE kernel the engine runs.
        prefix_caching: the engine reuses the KV cache of shared prompt prefixes.
        stream: the client streams tokens.
        stream_chunk_tokens: output tokens the engine hands to its detokeniser at once for a non-streamed request
            (SGLang 50, vLLM 1; 0: all at the end); the client still gets one response, after the last group is
            detokenised (`sim.serving.metrics.client_times`; see the profile's source).
        routes_padding: the rows a decode graph replay pads (up to its capture size, and on every attention-DP
            rank up to the busiest rank's) are routed to experts like real tokens (vLLM: they run the whole
            forward), or masked out of the top-k (SGLang's ``num_token_non_padded``): their attention and dense
            layers still run, their expert GEMMs and all-to-all traffic do not.
        api_servers: API server processes per replica (vLLM's ``--api-server-count``, default 1): the requests
            queue for them first come, first served (`sim.serving.metrics.api_queue_wait`).
        sampling: how the engine samples a request that sets no sampling parameters: a rule of
            `model.ops.SAMPLING` (``greedy``: moesim's default), or ``generation_config`` (the model's
            generation_config.json defaults, `sampling_rule`).
        host: host-cost parameters by name (`PARAMS`), s.
        sources: where each value comes from, by parameter or setting name.
        path: the profile file it was read from ("" for ``ideal``).
    """

    kind: str
    version: str
    cuda_graphs: bool
    capture_sizes: tuple[int, ...]
    mixed_graphs: str
    overlap: bool
    attention_backend: str
    moe_kernel: str
    prefix_caching: bool
    stream: bool
    stream_chunk_tokens: int
    host: Mapping[str, float] = field(default_factory=dict)
    sampling: str = "greedy"
    sources: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    routes_padding: bool = True
    api_servers: int = 1

    @property
    def ideal(self) -> bool:
        """No host time at all: the step is its kernels and collectives (the old behaviour)."""
        return self.kind == "ideal"

    def padded_batch(self, seqs: int) -> int | None:
        """The capture size a decode step of ``seqs`` sequences replays (>= seqs), or None: it runs eagerly."""
        if not self.cuda_graphs or not self.capture_sizes or seqs > self.capture_sizes[-1]:
            return None
        return self.capture_sizes[bisect.bisect_left(self.capture_sizes, seqs)]


@dataclass(frozen=True)
class HostCost:
    """One step's host seconds by part (raw CPU work, not what the step exposes), and what it launched.

    Attributes:
        scheduler_s, prepare_s, sampling_s: CPU seconds of the scheduler, input preparation and sampling.
        launch_s: CPU seconds launching the step's kernels or replaying its graphs.
        launches: kernels launched one by one (eager kernels).
        graphs: CUDA graph replays.
    """

    scheduler_s: float = 0.0
    prepare_s: float = 0.0
    sampling_s: float = 0.0
    launch_s: float = 0.0
    launches: int = 0
    graphs: int = 0

    @property
    def total_s(self) -> float:
        return self.scheduler_s + self.prepare_s + self.sampling_s + self.launch_s


def kernel_launches(ops: Sequence[Op]) -> int:
    """GPU kernel launches of a step's op list (`model.ops.kernel_launches`: ``kernels`` x ``count`` per op)."""
    return int(model_kernel_launches(ops))


def attention_launches(ops: Sequence[Op]) -> int:
    """Launches of the step's attention ops (run eagerly between the pieces of a piecewise graph)."""
    att = [op for op in ops if op.kind == "attention"]
    return kernel_launches(att) if att else 0


def graph_mode(profile: EngineProfile, phase: str, seqs: int, tokens: int) -> str:
    """How a step runs: ``eager``, ``full`` (decode: one captured graph) or ``piecewise`` (vLLM V1)."""
    if profile.ideal or not profile.cuda_graphs or not profile.capture_sizes:
        return "eager"
    if phase == "decode":
        return "full" if seqs <= profile.capture_sizes[-1] else "eager"
    if profile.mixed_graphs == "piecewise" and tokens <= profile.capture_sizes[-1]:
        return "piecewise"
    return "eager"


def host_cost(
    profile: EngineProfile,
    seqs: int,
    tokens: int,
    launches: int,
    mode: str = "eager",
    attention: int = 0,
    pieces: int = 0,
) -> HostCost:
    """One step's host seconds, split by part.

    Args:
        profile: the engine.
        seqs: sequences in the step (running sequences the scheduler walks; sequences sampled).
        tokens: tokens scheduled in the step.
        launches: kernel launches of the step when it runs eagerly (`kernel_launches`).
        mode: `graph_mode`: ``eager`` (``launches`` x launch_s), ``full`` (one graph_replay_s) or ``piecewise``
            (``pieces`` graph replays plus the ``attention`` launches between them).
        attention: attention kernel launches of the step (piecewise mode).
        pieces: graphs replayed in piecewise mode (layers + 1).
    """
    if profile.ideal or seqs <= 0:
        return HostCost()
    h = profile.host
    if mode == "full":
        launch, n_launch, n_graph = h["graph_replay_s"], 0, 1
    elif mode == "piecewise":
        launch = pieces * h["graph_replay_s"] + attention * h["launch_s"]
        n_launch, n_graph = attention, pieces
    else:
        launch, n_launch, n_graph = launches * h["launch_s"], launches, 0
    return HostCost(
        scheduler_s=h["scheduler_base_s"] + seqs * h["scheduler_per_seq_s"],
        prepare_s=h["prepare_base_s"] + tokens * h["prepare_per_token_s"],
        sampling_s=h["sampling_base_s"] + seqs * h["sampling_per_seq_s"],
        launch_s=launch,
        launches=n_launch,
        graphs=n_graph,
    )


def launch_pipeline(items: Sequence[tuple[float, float, int]]) -> float:
    """Seconds from the first launch until the GPU finishes, for launch items issued back to back by one CPU thread.

    Args:
        items: in issue order, (CPU seconds to issue one, GPU seconds it runs, repetitions); a kernel, a captured
            graph (it runs its kernels back to back) or a block of them.

    The GPU starts item i when the CPU has issued it and item i-1 is done:
    end_i = max(end_{i-1}, issued_i) + gpu_i, issued_i = issued_{i-1} + cpu_i.
    """
    issued = end = 0.0
    for cpu, gpu, reps in items:
        for _ in range(reps):
            issued += cpu
            end = max(end, issued) + gpu
    return end


def op_items(ops: Sequence[Op], seconds: Sequence[float], launch_s: float) -> list[tuple[float, float, int]]:
    """The launch items of an eager forward (`launch_pipeline`): every kernel of every op in execution order.

    ``seconds`` [ops] holds each op's time per occurrence, s; an op's kernels share it evenly.
    """
    return [
        (launch_s, sec / max(int(getattr(op, "kernels", 1)), 1), max(int(getattr(op, "kernels", 1)), 1))
        for op, sec, _ in _layer_order(ops, seconds)
    ]


def piecewise_items(
    ops: Sequence[Op], seconds: Sequence[float], launch_s: float, replay_s: float
) -> list[tuple[float, float, int]]:
    """The launch items of a piecewise-graph forward (vLLM V1): per layer, one graph replay running the layer's
    kernels other than attention, then the attention kernels launched eagerly; a last graph for the head."""
    items: list[tuple[float, float, int]] = []
    piece = 0.0
    for op, sec, count in _layer_order(ops, seconds):
        if op.kind == "attention":
            items.append((replay_s, piece, 1))
            piece = 0.0
            k = max(int(getattr(op, "kernels", 1)), 1)
            items.append((launch_s, sec / k, k * count))
        else:
            piece += sec * count
    items.append((replay_s, piece, 1))
    return items


def _layer_order(ops: Sequence[Op], seconds: Sequence[float]) -> list[tuple[Op, float, int]]:
    """Ops in execution order, a layer set's per-layer sequence repeated per layer: (op, seconds, 1)."""
    out: list[tuple[Op, float, int]] = []
    i = 0
    while i < len(ops):
        j = i
        while j + 1 < len(ops) and ops[j + 1].group == ops[i].group and ops[j + 1].count == ops[i].count:
            j += 1
        block = list(zip(ops[i : j + 1], seconds[i : j + 1], strict=True))
        for _ in range(int(ops[i].count)):
            out += [(op, sec, 1) for op, sec in block]
        i = j + 1
    return out


def exposed(
    profile: EngineProfile, gpu_s: float, host: HostCost, forward_s: float | None = None
) -> tuple[float, float, float, float]:
    """What each host part adds to a step of ``gpu_s`` GPU seconds: (scheduler, prepare, sampling, launch), s.

    ``forward_s``: the forward's seconds from its first launch (`launch_pipeline`); None: max(GPU, launches), the
    pipeline's lower bound. ``gpu_s + sum(exposed) == duration`` (see the module docstring for the two overlap
    rules). With overlap, the host time beyond the GPU time is shared over the parts in proportion to their CPU
    seconds.
    """
    parts = (host.scheduler_s, host.prepare_s, host.sampling_s, host.launch_s)
    if profile.overlap:
        total = sum(parts)
        extra = max(total - gpu_s, 0.0)
        if extra <= 0.0 or total <= 0.0:
            return 0.0, 0.0, 0.0, 0.0
        f = extra / total
        return tuple(p * f for p in parts)  # type: ignore[return-value]
    forward = max(gpu_s, host.launch_s) if forward_s is None else forward_s
    return host.scheduler_s, host.prepare_s, host.sampling_s, max(forward - gpu_s, 0.0)


# ---- profiles ------------------------------------------------------------------------------------------------


def _ideal(spec: EngineSpec) -> EngineProfile:
    return EngineProfile(
        kind="ideal",
        version="-",
        cuda_graphs=bool(spec.cuda_graphs),
        capture_sizes=(),
        mixed_graphs="none",
        overlap=False,
        attention_backend=spec.attention_backend or "any",
        moe_kernel=spec.moe_kernel or "any",
        prefix_caching=bool(spec.prefix_caching),
        stream=spec.stream,
        stream_chunk_tokens=1,
        host=dict.fromkeys(PARAMS, 0.0),
        sources=dict.fromkeys(PARAMS, "ideal: no host time"),
    )


def _check_value(name: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise MoesimError(
            f"{where}: host parameter {name} = {value!r} is not a finite number of seconds",
            "give a number >= 0, in seconds (e.g. 5e-6)",
        )
    if value < 0:
        raise MoesimError(f"{where}: host parameter {name} = {value!r} is negative", "give a number >= 0, in seconds")
    return float(value)


def _check_name(name: Any, where: str) -> str:
    if name not in PARAMS:
        raise MoesimError(
            f"{where}: unknown host parameter {name!r}",
            f"use one of {', '.join(PARAMS)} (sim/serving/host.py: PARAMS)",
        )
    return str(name)


_FILES: dict[tuple[str, int], Any] = {}


def _read(path: Path, where: str) -> dict[str, Any]:
    from moesim.sim.common import read_yaml

    try:  # parsed files memoised by modification time: a fit (moesim fit-engine) resolves thousands of overrides
        key: tuple[str, int] | None = (str(path), path.stat().st_mtime_ns)
    except OSError:
        key = None
    if key is None or key not in _FILES:
        parsed = read_yaml(path, "an engine profile YAML")
        if key is None:
            return _check_read(parsed, where)
        _FILES[key] = parsed
    return _check_read(copy.deepcopy(_FILES[key]), where)


def _check_read(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MoesimError(f"{where}: expected a mapping, got {type(data).__name__}", "see sim/serving/engines/*.yaml")
    allowed = {"kind", "version", "description", "settings", "host", "sources"}
    for key in data:
        if key not in allowed:
            raise MoesimError(f"{where}: unknown key {key!r}", f"use {', '.join(sorted(allowed))}")
    return data


def _shipped_path(kind: str, version: str | None) -> Path:
    if kind not in DEFAULT_VERSION:
        raise MoesimError(
            f"engine.kind: unknown engine {kind!r}", f"use one of {', '.join([*DEFAULT_VERSION, 'ideal'])}"
        )
    ver = version or DEFAULT_VERSION[kind]
    path = ENGINES_DIR / f"{kind}.yaml"
    shipped = str(_read(path, str(path)).get("version"))
    if ver != shipped:
        raise MoesimError(
            f"engine.version: no {kind} profile for version {ver!r} (shipped: {shipped})",
            f"set engine.version: {shipped!r}, or give engine.profile: a profile YAML for {ver} "
            "(moesim fit-engine writes one)",
        )
    return path


def _merge(base: dict[str, Any], top: dict[str, Any], where: str) -> dict[str, Any]:
    """A profile file on top of the shipped one of its kind: settings, host values and sources by name."""
    out = {**base, "settings": dict(base.get("settings") or {}), "host": dict(base.get("host") or {})}
    out["sources"] = dict(base.get("sources") or {})
    for key in ("kind", "version", "description"):
        if key in top:
            out[key] = top[key]
    for key in ("settings", "host", "sources"):
        sub = top.get(key) or {}
        if not isinstance(sub, dict):
            raise MoesimError(f"{where}: {key} must be a mapping, got {type(sub).__name__}", "see engines/*.yaml")
        out[key].update(sub)
    return out


def _build(data: dict[str, Any], where: str, spec: EngineSpec, overrides: Mapping[str, float]) -> EngineProfile:
    settings = data.get("settings") or {}
    for key in settings:
        if key not in _SETTINGS:
            raise MoesimError(f"{where}: unknown setting {key!r}", f"use {', '.join(_SETTINGS)}")
    missing = [k for k in _SETTINGS if k not in settings and k not in _OPTIONAL_SETTINGS]
    settings = {**_OPTIONAL_SETTINGS, **settings}
    if missing:
        raise MoesimError(f"{where}: settings lack {', '.join(missing)}", "see sim/serving/engines/*.yaml")
    host: dict[str, float] = {}
    sources: dict[str, str] = {str(k): str(v) for k, v in (data.get("sources") or {}).items()}
    for name, entry in (data.get("host") or {}).items():
        _check_name(name, where)
        if isinstance(entry, dict):
            unit = entry.get("unit", "s")
            if unit != "s":
                raise MoesimError(f"{where}: host parameter {name} has unit {unit!r}", "give every value in s")
            host[name] = _check_value(name, entry.get("value"), where)
            if entry.get("source"):
                sources[name] = str(entry["source"])
        else:
            host[name] = _check_value(name, entry, where)
    missing = [k for k in PARAMS if k not in host]
    if missing:
        raise MoesimError(f"{where}: host lacks {', '.join(missing)}", "give every parameter of PARAMS (seconds)")
    for name, value in overrides.items():
        host[_check_name(name, "engine.host")] = _check_value(name, value, "engine.host")
        sources[name] = "scenario engine.host override"
    sizes = settings["capture_sizes"]
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise MoesimError(f"{where}: capture_sizes must be a list of whole numbers >= 1", "e.g. [1, 2, 4, 8, 16]")
    mixed = settings["mixed_graphs"]
    if mixed not in ("piecewise", "none"):
        raise MoesimError(f"{where}: mixed_graphs {mixed!r}", "use piecewise or none")
    if settings["sampling"] not in SAMPLING_SETTINGS:
        raise MoesimError(f"{where}: sampling {settings['sampling']!r}", f"use one of {', '.join(SAMPLING_SETTINGS)}")
    chunk = settings["stream_chunk_tokens"]
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise MoesimError(f"{where}: stream_chunk_tokens {chunk!r}", "give a whole number >= 0 (0: whole output)")
    if not isinstance(settings["routes_padding"], bool):
        raise MoesimError(f"{where}: routes_padding {settings['routes_padding']!r}", "give true or false")
    servers = settings["api_servers"]
    if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
        raise MoesimError(f"{where}: api_servers {servers!r}", "give a whole number >= 1 (API server processes)")

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return EngineProfile(
        kind=str(data.get("kind")),
        version=str(data.get("version")),
        cuda_graphs=bool(pick(spec.cuda_graphs, settings["cuda_graphs"])),
        capture_sizes=tuple(sorted(set(sizes))),
        mixed_graphs=mixed,
        overlap=bool(settings["overlap"]),
        attention_backend=str(pick(spec.attention_backend, settings["attention_backend"])),
        moe_kernel=str(pick(spec.moe_kernel, settings["moe_kernel"])),
        prefix_caching=bool(pick(spec.prefix_caching, settings["prefix_caching"])),
        stream=spec.stream,
        stream_chunk_tokens=chunk,
        host=host,
        sampling=str(settings["sampling"]),
        sources=sources,
        path=where,
        routes_padding=settings["routes_padding"],
        api_servers=servers,
    )


def engine_profile(spec: EngineSpec, base_dir: str | Path = ".") -> EngineProfile:
    """The engine profile of a pool: the shipped profile of ``spec.kind``/``spec.version`` (or ``spec.profile``'s
    file, relative to ``base_dir``, on top of the shipped profile of its kind), with ``spec``'s overrides.

    ``kind: ideal`` gives every host cost 0. Memoised by (spec, file modification time).

    Raises:
        MoesimError: an unknown kind, version, setting or parameter name; a negative or non-finite value.
    """
    if spec.kind == "ideal" and not spec.profile:
        return _ideal(spec)
    path = None
    stamp = 0.0
    if spec.profile:
        path = Path(base_dir) / spec.profile
        try:
            stamp = path.stat().st_mtime
        except OSError:
            stamp = -1.0  # read_yaml names the missing file
    key = spec.model_dump_json()
    return _cached(key, str(path) if path else "", stamp, spec)


_MEMO: dict[tuple[str, str, float], EngineProfile] = {}


def _cached(key: str, path: str, stamp: float, spec: EngineSpec) -> EngineProfile:
    hit = _MEMO.get((key, path, stamp))
    if hit is not None:
        return hit
    if path:
        top = _read(Path(path), path)
        kind = top.get("kind", spec.kind)
        if kind == "ideal":
            raise MoesimError(f"{path}: kind ideal takes no profile file", "drop engine.profile or set a real kind")
        base_path = _shipped_path(str(kind), None)
        data = _merge(_read(base_path, str(base_path)), top, path)
        data.setdefault("kind", kind)
        where = path
    else:
        base_path = _shipped_path(spec.kind, spec.version)
        data = _read(base_path, str(base_path))
        where = str(base_path)
    prof = _build(data, where, spec, spec.host or {})
    if len(_MEMO) > 256:
        _MEMO.clear()
    _MEMO[(key, path, stamp)] = prof
    return prof


# ---- sampling ------------------------------------------------------------------------------------------------

_GENERATION: dict[str, dict[str, Any]] = {}


def generation_defaults(model: str) -> dict[str, Any] | None:
    """The sampling fields the generation_config.json of moesim preset ``model`` sets (``temperature``, ``top_p``,
    ``top_k``, ``repetition_penalty``; `GENERATION_CONFIG_FILE`), or None when moesim does not know that file."""
    if not _GENERATION:
        from moesim.sim.common import read_yaml

        data = read_yaml(GENERATION_CONFIG_FILE, "the generation-config defaults")
        _GENERATION.update({str(k): dict(v) for k, v in (data or {}).items()})
    hit = _GENERATION.get(model)
    return None if hit is None else {k: v for k, v in hit.items() if k not in ("hf_id", "source")}


def sampling_rule(profile: EngineProfile | None, model: str) -> str:
    """The sampler rule (`model.ops.SAMPLING`) of a decode step of preset ``model`` under ``profile``.

    ``profile.sampling`` a rule: that rule. ``generation_config``: what vLLM does with the model's defaults
    (`generation_defaults`) for a request that sets none: temperature (default 1.0) below 1e-5 is greedy
    (vllm/sampling_params.py ``_SAMPLING_EPS``); top-p below 1 with top-k above 0 is ``top_k_top_p``, top-p alone
    ``top_p`` (both the sort-based filter of vLLM 0.15, `model.ops.sampler_op`); top-k alone (vLLM's ``topk``
    path, no sort) and neither are ``random``. A model moesim has no generation config for:
    `UNKNOWN_GENERATION_RULE`. No profile (``ideal`` timers): greedy.
    """
    if profile is None or profile.ideal:
        return "greedy"
    if profile.sampling != "generation_config":
        return profile.sampling
    gen = generation_defaults(model)
    if gen is None:
        return UNKNOWN_GENERATION_RULE
    if float(gen.get("temperature", 1.0)) < 1e-5:
        return "greedy"
    top_p = float(gen.get("top_p", 1.0)) < 1.0
    top_k = int(gen.get("top_k", 0) or 0) > 0
    return "top_k_top_p" if top_p and top_k else "top_p" if top_p else "random"
