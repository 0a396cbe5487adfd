"""Op times on the roofline, behind the `CostModel` protocol, and step estimates.

An op's roofline time is ``max(FLOPs / peak, bytes / bandwidth)`` on the
device plus its link time ``max over link classes of (bytes / link bandwidth
+ messages x latency)`` (intra-node and inter-node links work in parallel).
No efficiency factor is applied: the roofline is the hardware's limit, a
lower bound that measured kernels calibrate upward (``profiling``).

The one exception is the expert-parallel dispatch and combine that DeepEP runs
(``Layout.a2a_backend: deepep``, the default): its time is DeepEP's mechanism,
a fixed cost per call plus the bytes at the fraction of each link DeepEP is
published to reach (`model.a2a.deepep_time`; the source says ``deepep-...``),
never the bare link roofline, which is 2 to 5 times too fast for it. The NCCL
backend keeps the link roofline above.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import pandas as pd

from moesim.model.a2a import deepep_time, is_deepep
from moesim.model.batch import Batch
from moesim.model.dtypes import Precision
from moesim.model.hardware import ClusterSpec
from moesim.model.layout import Layout
from moesim.model.ops import Op, decompose
from moesim.model.spec import ModelSpec


@dataclass(frozen=True)
class OpTime:
    """How long one occurrence of an op takes and what bounds it.

    Attributes:
        seconds: the op's time, s.
        compute_s: FLOPs / peak, s.
        memory_s: device-memory bytes / bandwidth, s.
        link_s: the slower link class's time, s.
        bound: ``compute``, ``memory``, ``intra-link`` or ``inter-link``.
        source: where the time comes from (``roofline`` or a measured table).
        band: for a time transferred from another GPU's measurements, the (P50, P90) absolute relative error
            expected of it (fractions: 0.05 = 5%; `profiling.transfer`); None otherwise.
    """

    seconds: float
    compute_s: float
    memory_s: float
    link_s: float
    bound: str
    source: str = "roofline"
    band: tuple[float, float] | None = None


def link_seconds(op: Op, cluster: ClusterSpec) -> tuple[float, float]:
    """(intra-node, inter-node) link time of ``op``, s: each class's bytes / its bandwidth + messages x its
    latency (0 where the op sends nothing over it)."""
    intra = inter = 0.0
    if op.intra_bytes or op.intra_msgs:
        bw, lat = cluster.link("intra")
        intra = op.intra_bytes / bw + op.intra_msgs * lat
    if op.inter_bytes or op.inter_msgs:
        bw, lat = cluster.link("inter")
        inter = op.inter_bytes / bw + op.inter_msgs * lat
    return intra, inter


@runtime_checkable
class CostModel(Protocol):
    """Anything that times an op on a cluster (roofline, calibrated tables...)."""

    name: str

    def op_time(self, op: Op, cluster: ClusterSpec) -> OpTime:
        """Time one occurrence of ``op`` on ``cluster``."""
        ...


class RooflineCostModel:
    """The hardware's limit: peak FLOP/s, peak bandwidth, link bandwidth and latency."""

    name = "roofline"

    def op_time(self, op: Op, cluster: ClusterSpec) -> OpTime:
        """Roofline time of ``op`` (see the module docstring)."""
        if is_deepep(op):  # DeepEP dispatch / combine: its own model, `model.a2a`
            t = deepep_time(op, cluster)
            return OpTime(t.seconds, 0.0, 0.0, t.seconds, t.bound, t.source)
        gpu = cluster.gpu
        compute = op.flops / gpu.peak(op.dtype) if op.flops else 0.0
        memory = op.bytes / gpu.bandwidth() if op.bytes else 0.0
        intra, inter = link_seconds(op, cluster)
        local, link = max(compute, memory), max(intra, inter)
        if link > local:
            bound = "inter-link" if inter >= intra else "intra-link"
        else:
            bound = "compute" if compute >= memory else "memory"
        return OpTime(local + link, compute, memory, link, bound)


@dataclass(frozen=True)
class StepEstimate:
    """One forward step's ops and their times on the busiest GPU.

    Attributes:
        model, batch, layout, cluster, precision: what was estimated.
        ops: the ops (`model.ops.decompose`).
        times: each op's time, aligned with ``ops``.
        cost_model: the cost model's name.
    """

    model: ModelSpec
    batch: Batch
    layout: Layout
    cluster: ClusterSpec
    precision: Precision
    ops: tuple[Op, ...]
    times: tuple[OpTime, ...]
    cost_model: str

    @property
    def step_s(self) -> float:
        """Latency of the step through every pipeline stage, s."""
        return float(sum(t.seconds * op.count for op, t in zip(self.ops, self.times, strict=True)))

    @property
    def tokens(self) -> int:
        """Tokens computed in the step."""
        return self.batch.tokens

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second of one step in flight."""
        return self.tokens / self.step_s

    def stage_seconds(self) -> list[float]:
        """Time each pipeline stage spends on the step, s."""
        out = [0.0] * self.layout.pp
        for op, t in zip(self.ops, self.times, strict=True):
            out[op.stage] += t.seconds * op.count
        return out

    @property
    def pipelined_tokens_per_s(self) -> float:
        """Tokens per second with ``pp`` steps in flight (the slowest stage paces them)."""
        return self.tokens / max(self.stage_seconds())

    def breakdown(self) -> dict[str, float]:
        """Seconds per op kind (``gemm``, ``attention``, ``all_to_all``...)."""
        out: dict[str, float] = defaultdict(float)
        for op, t in zip(self.ops, self.times, strict=True):
            out[op.kind] += t.seconds * op.count
        return dict(out)

    def bound_shares(self) -> dict[str, float]:
        """Fraction of the step time spent in ops of each bound."""
        out: dict[str, float] = defaultdict(float)
        for op, t in zip(self.ops, self.times, strict=True):
            out[t.bound] += t.seconds * op.count / self.step_s
        return dict(out)

    def table(self) -> pd.DataFrame:
        """One row per op. Columns: group, op, kind, count, flops, bytes,
        weight_bytes, kv_bytes, act_bytes, intra_bytes, inter_bytes (per
        occurrence; FLOP and bytes), time_s (per occurrence), total_s
        (time_s x count), share (of the step), bound, dtype, stage, source
        (where the time comes from: the roofline, a measured table...), band_p50 and band_p90 (the
        expected error of a time transferred from another GPU, fractions; None otherwise)."""
        rows = [
            {
                "group": op.group,
                "op": op.name,
                "kind": op.kind,
                "count": op.count,
                "flops": op.flops,
                "bytes": op.bytes,
                "weight_bytes": op.weight_bytes,
                "kv_bytes": op.kv_bytes,
                "act_bytes": op.act_bytes,
                "intra_bytes": op.intra_bytes,
                "inter_bytes": op.inter_bytes,
                "time_s": t.seconds,
                "total_s": t.seconds * op.count,
                "bound": t.bound,
                "dtype": op.dtype,
                "stage": op.stage,
                "source": t.source,
                "band_p50": t.band[0] if t.band else None,
                "band_p90": t.band[1] if t.band else None,
            }
            for op, t in zip(self.ops, self.times, strict=True)
        ]
        df = pd.DataFrame(rows)
        df["share"] = df["total_s"] / df["total_s"].sum()
        return df


def estimate_step(
    model: ModelSpec,
    batch: Batch,
    layout: Layout,
    cluster: ClusterSpec,
    precision: Precision | None = None,
    cost_model: CostModel | None = None,
    **routing: object,
) -> StepEstimate:
    """Decompose a step into ops and time each with ``cost_model`` (default: roofline).

    ``routing`` passes ``loads``, ``phys_to_log`` and ``mla_absorb`` to
    `model.ops.decompose`.
    """
    p = precision or Precision()
    cm = cost_model or RooflineCostModel()
    ops = tuple(decompose(model, batch, layout, cluster, p, **routing))  # type: ignore[arg-type]
    times = tuple(cm.op_time(op, cluster) for op in ops)
    return StepEstimate(model, batch, layout, cluster, p, ops, times, cm.name)
