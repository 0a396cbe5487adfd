"""On what it runs: GPU datasheets (`HardwareSpec`) and clusters (`ClusterSpec`).

GPU presets live in ``model/presets/gpus.yaml`` and cluster presets in
``model/presets/clusters.yaml``; a user adds or overrides GPUs with a YAML file
of the same schema (``--hardware FILE``). Units: FLOP/s, bytes/s, GiB,
watts, seconds, US dollars. Link bandwidths are bytes/s per GPU per direction.

The local CPU is the preset ``cpu``: its memory size is read from
``/proc/meminfo``; its peak FLOP/s, memory bandwidth and power stay unknown
until ``moesim profile`` measures them.
"""

from __future__ import annotations

import difflib
import platform
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from moesim.model import inputs
from moesim.model.errors import HardwareError, MoesimError
from moesim.model.inputs import StrictInput
from moesim.model.limits import MAX_GPUS, MAX_GPUS_PER_NODE, MAX_HW_VALUE

PRESET_DIR = Path(__file__).parent / "presets"
GIB = 2**30


class NodeSpec(StrictInput):
    """The server a GPU usually ships in (links per GPU, per direction)."""

    gpus_per_node: int = Field(gt=0, le=MAX_GPUS_PER_NODE)
    intra_bw: float | None = Field(gt=0, le=MAX_HW_VALUE, description="GPU-GPU link bytes/s per GPU per direction")
    intra_latency_s: float | None = Field(ge=0, le=3600, description="per-collective latency inside a node, s")
    inter_bw: float | None = Field(gt=0, le=MAX_HW_VALUE, description="NIC bytes/s per GPU per direction")
    inter_latency_s: float | None = Field(ge=0, le=3600, description="per-collective latency across nodes, s")


class AchievedFigure(StrictInput):
    """One published figure of what a GPU's kernels reach (`AchievableSpec`): its value, where it comes from (a
    URL or repo@path and what was measured) and, where it is another GPU's figure, why (``reused``)."""

    value: float = Field(gt=0, le=MAX_HW_VALUE)
    source: str = Field(min_length=1)
    reused: str | None = None


class AttentionKernel(StrictInput):
    """Which FlashAttention the serving engine runs on a GPU (`AchievableSpec.attention_kernel`), with its source.

    ``fa3`` (Hopper): the query heads of a KV head are packed as the rows of one CTA in every batch. ``fa2``
    (Ampere, Ada): packed only in a batch of one query per sequence; a batch that also holds a prompt runs one
    CTA per (sequence, query head), whose 64-row tile a decoding sequence fills with one row
    (`moesim.model.achievable.fa2_mixed_attention`)."""

    value: Literal["fa2", "fa3"]
    source: str = Field(min_length=1)


class AchievableSpec(StrictInput):
    """What real kernels reach on a GPU: the figures of the ``achievable`` cost model (`moesim.model.achievable`),
    from ``model/presets/achievable.yaml`` or a ``--hardware`` entry's ``achievable:`` block.

    Attributes:
        dram_bw: bytes/s a streaming kernel reaches (device copy or STREAM triad).
        gemm_fraction: fraction (0..1] of the dtype's dense peak a large GEMM reaches, per compute dtype and
            ``fp8_block`` (block-scaled fp8).
        moe_fraction: fraction (0..1] of the dtype's dense peak that the Triton fused-MoE kernel's grouped GEMMs
            (vLLM's ``fused_moe``, SGLang's copy of it) reach on a large batch, per compute dtype; a dtype without
            one takes ``gemm_fraction``'s.
        block_fp8_bw: bytes/s a memory-bound block-scaled fp8 GEMM streams its weights at (None: ``dram_bw``).
        gemm_bw: bytes/s a memory-bound dense GEMM (the engine's cuBLAS GEMM at a few rows) moves its operands at,
            where the engine's GEMMs were measured (None: ``dram_bw``).
        attention_fraction: fraction (0..1] of the dense peak FlashAttention's forward pass reaches.
        attention_cta_blocks: key blocks' worth of time each attention CTA spends outside its key loop.
        attention_kernel: the FlashAttention the engine runs (`AttentionKernel`; None: ``fa3``'s packing).
        attention_ctas_per_sm: CTAs of FA2's split-KV decode kernel one SM holds at once (its shared memory over
            the kernel's tiles; None: unmeasured).
        attention_sm_bw: bytes/s the FA2 decode CTAs of one SM stream their keys at together, at most (None: no
            cap).
        sms: streaming multiprocessors (compute units).
        kernel_s: fixed device time per kernel launch, s.
    """

    dram_bw: AchievedFigure
    gemm_fraction: dict[str, AchievedFigure]
    moe_fraction: dict[str, AchievedFigure] = {}  # noqa: RUF012 - pydantic copies it
    block_fp8_bw: AchievedFigure | None = None
    gemm_bw: AchievedFigure | None = None
    attention_fraction: AchievedFigure
    attention_cta_blocks: AchievedFigure
    attention_kernel: AttentionKernel | None = None
    attention_ctas_per_sm: AchievedFigure | None = None
    attention_sm_bw: AchievedFigure | None = None
    sms: AchievedFigure
    kernel_s: AchievedFigure

    @model_validator(mode="after")
    def _fractions(self) -> AchievableSpec:
        for name, fig in [*((f"gemm_fraction.{k}", v) for k, v in self.gemm_fraction.items()),
                          *((f"moe_fraction.{k}", v) for k, v in self.moe_fraction.items()),
                          ("attention_fraction", self.attention_fraction)]:  # fmt: skip
            if fig.value > 1.0:
                raise ValueError(f"{name}: a fraction of the peak must be at most 1, got {fig.value!r}")
        if "bf16" not in self.gemm_fraction:
            raise ValueError("gemm_fraction: needs a bf16 entry (other dtypes fall back to it)")
        if self.kernel_s.value >= 1.0:
            raise ValueError(f"kernel_s: seconds per kernel launch must be under 1, got {self.kernel_s.value!r}")
        return self


class HardwareSpec(StrictInput):
    """One accelerator's datasheet.

    Attributes:
        key: preset name (``H100-SXM``).
        name: marketing name.
        peak_flops: dense peak FLOP/s (OP/s for int8) per dtype; a dtype the
            hardware lacks is absent.
        memory_gib: device memory as marketed, GiB.
        memory_total_gib: device memory the CUDA runtime reports in total (``torch.cuda.mem_get_info``), GiB: what a
            serving engine's memory fraction multiplies (vLLM's ``total_gpu_memory``, SGLang's total); None where no
            measurement names it (``memory_gib`` is used). Less than the marketed figure: the driver's own
            reservation, and on GDDR6 boards with ECC on (L40S) the ECC's share.
        memory_bandwidth: device-memory bandwidth, bytes/s (None: unmeasured).
        tdp_w: board power, W (None: unknown).
        price_usd: purchase price per GPU, USD (None: unknown).
        cloud_usd_per_hour: on-demand rental per GPU-hour, USD (None: unknown).
        node: the reference server's links (None where unmeasured).
        sources: where each figure comes from.
        achievable: what real kernels reach on it (`AchievableSpec`; None: no figures of its own).
    """

    key: str
    name: str
    vendor: str
    peak_flops: dict[str, Annotated[float, Field(ge=0, le=MAX_HW_VALUE)]]
    memory_gib: float = Field(gt=0, le=MAX_HW_VALUE)
    memory_total_gib: float | None = Field(default=None, gt=0, le=MAX_HW_VALUE)
    memory_bandwidth: float | None = Field(gt=0, le=MAX_HW_VALUE)
    tdp_w: float | None = Field(gt=0, le=MAX_HW_VALUE)
    price_usd: float | None = Field(default=None, gt=0, le=MAX_HW_VALUE)
    cloud_usd_per_hour: float | None = Field(default=None, gt=0, le=MAX_HW_VALUE)
    node: NodeSpec
    sources: dict[str, str] = Field(default_factory=dict)
    achievable: AchievableSpec | None = None

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes."""
        return self.memory_gib * GIB

    @property
    def engine_memory_bytes(self) -> float:
        """Device memory a serving engine's memory fraction multiplies, bytes: ``memory_total_gib`` where measured,
        else ``memory_gib``."""
        return (self.memory_total_gib or self.memory_gib) * GIB

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; `HardwareError` if it has none."""
        value = self.peak_flops.get(dtype)
        if value is None or value <= 0:
            if not self.peak_flops:
                raise HardwareError(
                    f"{self.key}: peak FLOP/s not measured",
                    "measure it with 'moesim profile' or give a --hardware file",
                )
            raise HardwareError(
                f"{self.key} has no {dtype} peak (it has: {', '.join(self.peak_flops)})",
                "pick a dtype it supports with --dtype",
            )
        return value

    def bandwidth(self) -> float:
        """Memory bandwidth in bytes/s; `HardwareError` when unmeasured."""
        if self.memory_bandwidth is None:
            raise HardwareError(
                f"{self.key}: memory bandwidth unknown", "measure it with 'moesim profile' or give a --hardware file"
            )
        return self.memory_bandwidth


class ClusterSpec(StrictInput):
    """GPUs, how many per node and nodes, and the links between them.

    Attributes:
        name: preset name or a description.
        gpu: the accelerator.
        gpus_per_node: GPUs in one node.
        nodes: nodes.
        intra_bw: intra-node link bytes/s per GPU per direction (None: unmeasured).
        intra_latency_s: per-collective latency inside a node, s.
        inter_bw: inter-node NIC bytes/s per GPU per direction (None: unmeasured).
        inter_latency_s: per-collective latency across nodes, s.
    """

    name: str
    gpu: HardwareSpec
    gpus_per_node: int = Field(gt=0, le=MAX_GPUS_PER_NODE)
    nodes: int = Field(gt=0, le=MAX_GPUS)
    intra_bw: float | None = Field(gt=0, le=MAX_HW_VALUE)
    intra_latency_s: float | None = Field(ge=0, le=3600)
    inter_bw: float | None = Field(gt=0, le=MAX_HW_VALUE)
    inter_latency_s: float | None = Field(ge=0, le=3600)

    @property
    def num_gpus(self) -> int:
        """GPUs in the cluster."""
        return self.gpus_per_node * self.nodes

    def link(self, kind: str) -> tuple[float, float]:
        """(bytes/s, latency s) of the ``intra`` or ``inter`` link; `HardwareError` if unmeasured."""
        bw = self.intra_bw if kind == "intra" else self.inter_bw
        lat = self.intra_latency_s if kind == "intra" else self.inter_latency_s
        if bw is None or lat is None:
            where = "intra-node" if kind == "intra" else "inter-node"
            raise HardwareError(
                f"{self.gpu.key}: {where} link bandwidth or latency unknown",
                "give --hardware with node links, or a cluster with measured links",
            )
        return bw, lat


def _one_line(exc: ValidationError, where: str) -> str:
    errs = exc.errors()
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    got = first.get("input")
    shown = f", got {got!r}" if isinstance(got, (int, float, str)) and first["type"] != "missing" else ""
    return f"{where}: {loc}: {first['msg']}{shown}{more}"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = inputs.read_yaml(path, "a hardware YAML file", "give the path of a hardware YAML file")
    except MoesimError as exc:
        raise HardwareError(exc.message, exc.hint) from None
    if not isinstance(data, dict):
        raise HardwareError(f"{path}: must map names to entries", "see model/presets/gpus.yaml")
    return data


def _parse_gpus(data: dict[str, Any], where: str) -> dict[str, HardwareSpec]:
    out = {}
    for key, entry in data.items():
        if not isinstance(entry, dict):
            raise HardwareError(f"{where}: {key}: must be a mapping", "see model/presets/gpus.yaml")
        try:
            out[str(key)] = HardwareSpec(key=str(key), **entry)
        except ValidationError as exc:
            raise HardwareError(_one_line(exc, f"{where}: {key}"), "see model/presets/gpus.yaml") from None
        except TypeError as exc:
            raise HardwareError(f"{where}: {key}: {exc}", "see model/presets/gpus.yaml") from None
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "local CPU"


def _meminfo_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return 1.0


@lru_cache(maxsize=1)
def local_cpu() -> HardwareSpec:
    """This machine's CPU as a `HardwareSpec`: memory size only, until profiled.

    Its peak FLOP/s and memory bandwidth are left unknown: a datasheet-style
    estimate from the nominal clock can fall below what the CPU reaches, and
    a roofline must not be slower than the hardware. ``moesim profile``
    measures both.
    """
    return HardwareSpec(
        key="cpu",
        name=_cpu_name(),
        vendor="cpu",
        peak_flops={},
        memory_gib=round(_meminfo_gib(), 1),
        memory_bandwidth=None,
        tdp_w=None,
        node=NodeSpec(gpus_per_node=1, intra_bw=None, intra_latency_s=None, inter_bw=None, inter_latency_s=None),
        sources={
            "peak_flops": "not measured: run 'moesim profile --device cpu'",
            "memory": "/proc/meminfo MemTotal",
            "memory_bandwidth": "not measured: run 'moesim profile --device cpu'",
            "tdp": "unknown for this host",
            "node": "one process; links not measured",
        },
    )


def _achievable_presets() -> dict[str, AchievableSpec]:
    """``model/presets/achievable.yaml``: the published achievable figures per GPU preset key."""
    out = {}
    for key, entry in _read_yaml(PRESET_DIR / "achievable.yaml").items():
        try:
            out[str(key)] = AchievableSpec(**entry)
        except ValidationError as exc:
            hint = "see model/presets/achievable.yaml"
            raise HardwareError(_one_line(exc, f"achievable.yaml: {key}"), hint) from None
    return out


@lru_cache(maxsize=8)
def _presets(extra: str | None) -> dict[str, HardwareSpec]:
    gpus = _parse_gpus(_read_yaml(PRESET_DIR / "gpus.yaml"), "gpus.yaml")
    for key, figures in _achievable_presets().items():
        if key in gpus and gpus[key].achievable is None:
            gpus[key] = gpus[key].model_copy(update={"achievable": figures})
    gpus["cpu"] = local_cpu()
    if extra:
        # a --hardware entry's own `achievable:` block wins; a preset key without one keeps the preset's figures
        for key, spec in _parse_gpus(_read_yaml(Path(extra)), extra).items():
            kept = gpus[key].achievable if key in gpus and spec.achievable is None else spec.achievable
            gpus[key] = spec.model_copy(update={"achievable": kept})
    return gpus


def list_gpus(hardware_file: str | Path | None = None) -> dict[str, HardwareSpec]:
    """All GPU presets and ``cpu``, overridden or extended by ``hardware_file``.

    ``moesim profile --device cpu`` writes a ``hardware.yaml`` whose ``cpu``
    entry carries the measured peak and bandwidth.
    """
    return dict(_presets(str(hardware_file) if hardware_file else None))


def _lookup(name: str, table: dict[str, Any], what: str, hint: str) -> Any:
    for key, value in table.items():
        if key.lower() == name.lower():
            return value
    close = [k for k in table if k.lower().startswith(name.lower())]
    close = close or difflib.get_close_matches(name, list(table), n=1, cutoff=0.5)
    guess = f"; did you mean {' or '.join(close[:3])}?" if close else ""
    raise HardwareError(f"unknown {what} '{name}'", f"{hint}: {', '.join(table)}{guess}")


def get_gpu(name: str, hardware_file: str | Path | None = None) -> HardwareSpec:
    """A GPU preset by name (case-insensitive); `HardwareError` if unknown."""
    return _lookup(name, list_gpus(hardware_file), "GPU", "pick one of")


@lru_cache(maxsize=1)
def _cluster_presets() -> dict[str, dict[str, Any]]:
    return _read_yaml(PRESET_DIR / "clusters.yaml")


def list_clusters() -> dict[str, ClusterSpec]:
    """All cluster presets, built."""
    return {name: get_cluster(name) for name in _cluster_presets()}


def make_cluster(
    gpu: HardwareSpec,
    *,
    num_gpus: int | None = None,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    name: str | None = None,
    **links: float,
) -> ClusterSpec:
    """A cluster of ``gpu`` with its reference node's links unless overridden.

    Args:
        gpu: the accelerator.
        num_gpus: GPUs needed; nodes = ceil(num_gpus / gpus_per_node) when
            ``nodes`` is not given.
        nodes: nodes (default 1, or enough for ``num_gpus``).
        gpus_per_node: GPUs per node (default: the reference node's).
        name: a label.
        links: overrides of intra_bw, intra_latency_s, inter_bw, inter_latency_s.
    """
    per_node = gpus_per_node or gpu.node.gpus_per_node
    if nodes is None:
        nodes = max(1, -(-(num_gpus or per_node) // per_node))
    if nodes * per_node > MAX_GPUS:
        raise HardwareError(
            f"a cluster of {nodes:,} nodes x {per_node:,} GPUs = {nodes * per_node:,} GPUs, over the limit of "
            f"{MAX_GPUS:,}",
            "use fewer nodes, replicas or a smaller layout",
        )
    base = gpu.node.model_dump(exclude={"gpus_per_node"})
    base.update({k: v for k, v in links.items() if v is not None})
    label = name or (f"{nodes}x{per_node} {gpu.key}" if nodes > 1 else f"{per_node}x {gpu.key}")
    try:
        return ClusterSpec(name=label, gpu=gpu, gpus_per_node=per_node, nodes=nodes, **base)
    except ValidationError as exc:
        raise HardwareError(_one_line(exc, f"cluster {label}"), "give positive link figures") from None


def get_cluster(name: str, hardware_file: str | Path | None = None) -> ClusterSpec:
    """A cluster preset by name (case-insensitive)."""
    entry = dict(_lookup(name, _cluster_presets(), "cluster", "pick one of"))
    gpu = get_gpu(str(entry.pop("gpu")), hardware_file)
    entry.pop("description", None)
    return make_cluster(gpu, name=name.lower(), **entry)
