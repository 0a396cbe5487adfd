"""A calibration and the cost model it makes: `Fit`, `Calibration`, its file (`save`, `load`) and
`CalibratedCostModel`.

`profiling.calibrate` fits the predictors from measured tables (and asks `profiling.skew` for the skew
model's error); this module holds what a fit is, how a calibration is written and read, and how a
`CalibratedCostModel` predicts an op's time from it, so the skew model and the fitting both build on it.

The file written (`save`) is one parquet: the training points (features and y per fit) with every fit's
method, coefficients, range, device and errors in its metadata.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from moesim.model.a2a import is_deepep
from moesim.model.allreduce import DEFAULT_MAX_BYTES, custom_ar_group
from moesim.model.allreduce import seconds as engine_allreduce_seconds
from moesim.model.errors import HardwareError, MoesimError
from moesim.model.hardware import ClusterSpec, HardwareSpec, make_cluster
from moesim.model.ops import Op, expert_gemm_pair, gemm
from moesim.model.roofline import OpTime, RooflineCostModel
from moesim.profiling import fit as fitlib
from moesim.profiling.opshapes import FEATURES, FLAGS, features, table_dtype
from moesim.profiling.tables import COLLECTIVES, check_parquet
from moesim.profiling.transfer import achieved_bandwidth, band_for, default_bands, derated_seconds, derating_applies

META_KEY = b"moesim_calibration"
#: How far (log2 units, i.e. doublings) beyond the measured range a feature may go before the roofline takes over.
RANGE_SLACK = 0.5
#: Farthest a query may be from its nearest measured shape (log2 units) before the roofline takes over.
MAX_GAP = 2.0


#: The op families whose kernel an engine chooses, and the op kinds (`model.ops.Op.kind`) each one times.
FAMILY_KINDS: dict[str, tuple[str, ...]] = {"moe": ("grouped_gemm",), "attention": ("attention",)}
#: Kernel names meaning "no preference: the fastest measured kernel" (the calibration's own choice).
FASTEST = ("fastest", "any")


@dataclass(frozen=True)
class Kernel:
    """One kernel an engine may run for an op family, and the table ``impl`` names that time it.

    Attributes:
        family: ``moe`` or ``attention`` (`FAMILY_KINDS`).
        name: moesim's name for it (what ``engine.moe_kernel`` / ``engine.attention_backend`` say).
        impls: table ``impl`` values that measured this kernel, the closest to the engine's own first.
        nearest: kernels to time the op with, in order, when no table has this one (the fallback, shown in the
            op's source); none measured either: the roofline.
        aliases: other spellings engines use (vLLM's ``--attention-backend FLASH_ATTN``, SGLang's ``fa3``...).
        about: what it is, and where it comes from.
    """

    family: str
    name: str
    impls: tuple[str, ...]
    nearest: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    about: str = ""


#: The kernels moesim knows. A table's ``impl`` not listed here is used only with no preference (the fastest).
KERNELS: tuple[Kernel, ...] = (
    Kernel(
        "moe", "triton",
        ("vllm_fused_moe", "fused_moe_triton", "triton_graph", "triton"), ("marlin",),
        ("fused_moe", "fused_moe_triton", "vllm_fused_moe", "triton_experts"),
        "vLLM's fused-MoE Triton kernel (TritonExperts, vllm/model_executor/layers/fused_moe/fused_moe.py), the "
        "unquantized default on CUDA (vllm/model_executor/layers/fused_moe/oracle/unquantized.py "
        "select_unquantized_moe_backend); tables: AIConfigurator's vllm_fused_moe (vLLM 0.19 kernels), else our "
        "Triton kernel of the same layout (profiling/triton_moe.py, triton_graph: replayed from a CUDA graph). "
        "Each quantisation is its own table (dtype fp8: per-tensor scales, fp8_block: 128 x 128 blocks). "
        "Nearest: Marlin, what vLLM runs for int4 (GPTQ/AWQ) MoE instead of this kernel "
        "(vllm/model_executor/layers/quantization/gptq_marlin.py GPTQMarlinMoEMethod)",
    ),
    Kernel(
        "moe", "sglang_triton", ("sglang_fused_moe", "sglang_triton"), ("triton",), ("sglang", "sglang_fused_moe"),
        "SGLang's fused-MoE Triton kernel (python/sglang/srt/layers/moe/fused_moe_triton, adapted from vLLM's), "
        "what --moe-runner-backend auto runs for unquantized MoE (python/sglang/srt/server_args.py)",
    ),
    Kernel(
        "moe", "deepgemm", ("deepgemm", "deep_gemm", "vllm_deepgemm_moe"), ("cutlass", "triton"), ("deep_gemm",),
        "DeepGEMM grouped GEMM (fp8 block-scaled; github.com/deepseek-ai/DeepGEMM): vLLM's DeepGemmExperts "
        "(VLLM_USE_DEEP_GEMM), SGLang's --moe-runner-backend deep_gemm",
    ),
    Kernel(
        "moe", "cutlass", ("cutlass", "vllm_cutlass_moe", "flashinfer_cutlass"), ("triton",),
        ("cutlass_moe", "flashinfer_cutlass"),
        "CUTLASS grouped GEMM (vLLM's CutlassExpertsFp8, FlashInfer's CUTLASS fused MoE)",
    ),
    Kernel(
        "moe", "marlin", ("vllm_marlin_int4_moe", "marlin"), ("triton",), ("marlin_moe", "vllm_marlin_int4_moe"),
        "Marlin mixed-precision MoE (int4 weights, 16-bit math: vLLM's fused_marlin_moe for GPTQ/AWQ checkpoints); "
        "table: AIConfigurator's vllm_marlin_int4_moe",
    ),
    Kernel(
        "moe", "torch_loop", ("torch_loop",), (), ("loop", "naive"),
        "a Python loop of per-expert GEMMs, run eagerly (profiling/kernels.py prepare_grouped_gemm): the unfused "
        "fallback; its time is mostly the host's launches",
    ),
    Kernel(
        "attention", "flash_attn", ("flash_attn", "fa3", "fa2", "vllm_flash_attn"), ("torch_sdpa",),
        ("flash_attn_3", "fa3", "fa2", "flash_attention", "flash_attn_backend"),
        "FlashAttention (FA3 on Hopper): vLLM's FLASH_ATTN backend, first for non-MLA models below sm100 "
        "(vllm/platforms/cuda.py _get_backend_priorities; FA3 on sm90: vllm/v1/attention/backends/fa_utils.py "
        "get_flash_attn_version); SGLang's fa3, its default on Hopper (docs/backend/attention_backend.md). "
        "Nearest table: torch SDPA, whose bf16 path is PyTorch's FlashAttention-2 kernel",
    ),
    Kernel(
        "attention", "flashinfer", ("flashinfer", "vllm_flashinfer"), ("flash_attn", "torch_sdpa"), (),
        "FlashInfer (vLLM FLASHINFER, SGLang flashinfer: SGLang's default below Hopper)",
    ),
    Kernel(
        "attention", "triton", ("triton_attn", "triton"), ("flash_attn", "torch_sdpa"), ("triton_attn",),
        "Triton attention (vLLM TRITON_ATTN, SGLang triton)",
    ),
    Kernel(
        "attention", "flashmla", ("flashmla",), ("flash_attn", "torch_sdpa"), ("flash_mla",),
        "FlashMLA (MLA decode; github.com/deepseek-ai/FlashMLA)",
    ),
    Kernel(
        "attention", "torch_sdpa", ("torch_sdpa",), (), ("sdpa", "torch_native", "torch"),
        "torch.nn.functional.scaled_dot_product_attention (SGLang torch_native); what `moesim profile` times",
    ),
)  # fmt: skip
_BY_NAME: dict[tuple[str, str], Kernel] = {(k.family, k.name): k for k in KERNELS}
#: The MoE kernel an engine runs for a quantised format in place of its unquantised fused-MoE Triton kernel
#: (``triton``, ``sglang_triton``), by table dtype (`table_dtype`): int4 (GPTQ / AWQ W4A16) experts run Marlin
#: (vllm-project/vllm@vllm/model_executor/layers/quantization/gptq_marlin.py ``GPTQMarlinMoEMethod``,
#: awq_marlin.py ``AWQMarlinMoEMethod``; SGLang imports the same method; every int4_wo MoE row of AIConfigurator's vLLM
#: database is ``kernel_source: vllm_marlin_int4_moe``). A checkpoint's format (`model.hf_config.checkpoint_weights`)
#: thus picks its kernel; a kernel the engine names outright (DeepGEMM, CUTLASS, Marlin) is kept.
QUANT_MOE_KERNELS: dict[str, str] = {"int4": "marlin"}
_ALIASES: dict[tuple[str, str], str] = {(k.family, a.lower()): k.name for k in KERNELS for a in (k.name, *k.aliases)}


def resolve_kernel(family: str, name: str | None, where: str = "") -> str | None:
    """moesim's name of the ``family`` kernel spelled ``name`` (case-insensitive, engines' spellings accepted).

    None, ``fastest`` or ``any``: None (no preference). An unknown family or kernel: `MoesimError` naming the
    choices; ``where`` names the key it came from (e.g. ``engine.moe_kernel``).
    """
    where = where or {"moe": "engine.moe_kernel", "attention": "engine.attention_backend"}.get(family, family)
    if family not in FAMILY_KINDS:
        raise MoesimError(f"unknown kernel family {family!r}", f"use one of {', '.join(FAMILY_KINDS)}")
    if name is None or name.strip().lower() in FASTEST:
        return None
    hit = _ALIASES.get((family, name.strip().lower()))
    if hit is None:
        known = [k.name for k in KERNELS if k.family == family]
        raise MoesimError(
            f"{where}: unknown {family} kernel {name!r}",
            f"use one of {', '.join([*known, 'fastest'])} (or leave it unset for the engine's default)",
        )
    return hit


def kernel_family(kind: str) -> str | None:
    """The family (`FAMILY_KINDS`) whose kernel times ops of ``kind``, or None."""
    return next((f for f, kinds in FAMILY_KINDS.items() if kind in kinds), None)


def base_impl(impl: str) -> str:
    """A table ``impl`` without its variant suffix (``vllm_default:fp8_static`` -> ``vllm_default``)."""
    return impl.split(":", 1)[0]


def kernel_of(kind: str, impl: str) -> str | None:
    """The kernel (``family:name``, e.g. ``moe:triton``) a table of op ``kind`` measured as ``impl`` times, or None.

    A variant suffix (``:fp8_static``, `profiling.aiconfigurator.DTYPES`) names the same kernel.
    """
    family = kernel_family(kind)
    hit = next((k for k in KERNELS if k.family == family and base_impl(impl) in k.impls), None)
    return f"{hit.family}:{hit.name}" if hit else None


def fit_dtype(dtype: str, impl: str) -> str:
    """The table dtype a fit of ``dtype`` and ``impl`` times: ``dtype``, except fp8 imported with impl
    ``...:fp8_block`` before block-scaled fp8 became its own dtype: ``fp8_block`` (never a per-tensor fp8 op)."""
    return "fp8_block" if dtype == "fp8" and impl.endswith(":fp8_block") else dtype


#: Router table ``impl`` values whose times include the softmax and top-k along with the router GEMM: ``moesim
#: profile`` before the top-k became its own kind (commit 35ec13d; the H100 tables in ``profiling/data/h100-sxm``:
#: ``torch.topk(torch.softmax((x @ w.t()).float(), -1), k)``). Router tables profiled since time the GEMM alone
#: (``torch_gemm``, `profiling.kernels.prepare_router`). Where such a table times a step's router op, that op's
#: ``topk_softmax`` op costs nothing more (`CalibratedCostModel.op_time`), so the top-k is counted once.
ROUTER_WITH_TOPK_IMPLS = ("torch",)
#: Why a cost model timing a serving engine's kernels (`CalibratedCostModel.kernels` set) does not use such a table:
#: vLLM and SGLang run the router as one GEMM and one fused softmax-top-k kernel (``topk_softmax``:
#: vllm-project/vllm@csrc/moe/topk_softmax_kernels.cu, called by ``fused_topk``; SGLang's ``select_experts`` calls
#: sgl-kernel's ``topk_softmax``), not torch's softmax and top-k, and the table was timed eagerly: on the H100 it
#: reads a median of 40-61 us per call at 1 to 1,024 tokens, not growing with the tokens: the host launching its
#: kernels, not the GPU running them (a decode step replays them from a CUDA graph; an eager step's launches are the
#: host model's, `sim.serving.host`).
ROUTER_UNFUSED_NOTE = "the router table times an unfused torch softmax + top-k, launched eagerly"
#: GEMM table ``impl`` values that time a serving engine's own GEMMs as its steps run them: AIConfigurator's
#: ``vllm_default`` (vLLM 0.19's linear layers, cuBLAS and CUTLASS, each shape timed back to back). With an engine's
#: kernels named (`CalibratedCostModel.kernels`) a GEMM is timed from such a table on the cluster's GPU before any
#: other: ``moesim profile`` times each call alone between CUDA events after an L2 flush, which on the H100 reads
#: 4-8 us more per call than back to back below 300 us (345 shapes both measured; median 1.26-1.59x under 50 us),
#: a cost a step's kernels, replayed from a CUDA graph one after another, do not pay (benchmarks/RESULTS.md
#: section 29).
ENGINE_GEMM_IMPLS = ("vllm_default",)
#: The largest tensor-parallel all-reduce message (bytes) a serving engine runs in its own kernels rather than
#: NCCL's on one node: vLLM's and SGLang's custom all-reduce (one-shot / two-shot over CUDA IPC buffers) take
#: messages up to their buffer's default ``max_size`` of 8 MiB (vllm/distributed/device_communicators/
#: custom_all_reduce.py, ``CustomAllreduce(max_size=8192 * 1024)``), at 2 GPUs, or at 4, 6 or 8 GPUs that NVLink
#: connects all to all; on Hopper and Blackwell vLLM hands part of that range, and larger messages up to 32-128 MiB,
#: to PyTorch's symmetric-memory all-reduce (``CUSTOM_ALL_REDUCE_MAX_SIZES``, ``SYMM_MEM_ALL_REDUCE_MAX_SIZES`` in
#: all_reduce_utils.py), not to NCCL either. Within vLLM's custom all-reduce limits `model.allreduce` times them
#: (`CalibratedCostModel.op_time`); beyond them no table here times the engine's kernel: NCCL's table stands in and
#: says so (`CalibratedCostModel.engine_all_reduce`).
ENGINE_ALL_REDUCE_MAX_BYTES = DEFAULT_MAX_BYTES


def includes_topk(fit: Fit) -> bool:
    """Whether ``fit`` is a router fit whose measured times include the softmax and top-k (`ROUTER_WITH_TOPK_IMPLS`)."""
    return fit.kind == "router" and base_impl(fit.impl) in ROUTER_WITH_TOPK_IMPLS


#: Provenance classes of an `OpTime.source`, in the order `source_class` tests them.
SOURCE_CLASSES = ("fallback", "transferred", "measured", "achievable", "roofline")
#: Op kinds whose decode ops and whole-prompt ops no table covers are timed by the achievable model
#: (`model.achievable`) instead of the bare roofline: attention, whose decode is FlashAttention's paged split-KV kernel
#: (`model.achievable.decode_attention`) that no table here measured, and whose GQA shapes (2 KV heads per GPU at TP4)
#: lie outside the SDPA table. Such kinds never follow a table's edge (`CalibratedCostModel._edge`).
ACHIEVABLE_KINDS = frozenset({"attention"})
#: Op kinds that, where no table reaches, take the achievable model's time rather than the roofline's: the fused-MoE
#: layer, which the achievable model times kernel by kernel (tiles, waves, the Triton kernel's fraction) and which
#: it predicts within 12.7-19.6% MAPE of AIConfigurator's measured H100 layers against the roofline's 30.4-37.5%
#: (benchmarks/RESULTS.md section 25; a DeepSeek-V3 EP64 decode step's DeepEP-dispatched fp8 experts, which no
#: table measures: 13 ms against the roofline's 5.6 ms).
ACHIEVABLE_FALLBACK_KINDS = frozenset({"grouped_gemm"})


#: bf16 and fp16 run the same tensor-core kernels at the same rate and move the same bytes on every NVIDIA GPU
#: since Ampere (their dense peaks are equal in every datasheet moesim reads): an op of one times from the other's
#: table where its own is missing (``16-bit twin`` in the source, measured). AIConfigurator's releases before its
#: ``bfloat16`` mode name their 16-bit tables ``float16`` (`profiling.aiconfigurator.DTYPES`).
SIXTEEN_BIT = {"bf16": "fp16", "fp16": "bf16"}


def source_class(source: str) -> str:
    """``fallback``, ``transferred``, ``measured``, ``achievable`` or ``roofline``: where an `OpTime.source` says its
    time came from (a table followed along its edge, ``edge ... measured: ...``, counts as its table's class).

    ``fallback``: the engine's kernel had no table and another kernel's stood in; ``transferred``: a table measured
    on another GPU, or in another format (``dtype-transfer``: an fp8 GEMM timed from the bf16 table); ``measured``:
    the kernel's own table on this GPU; ``achievable``: no table covers it and the achievable model (published
    figures, `model.achievable`) times it; anything else is the roofline.
    """
    if source.startswith("fallback"):
        return "fallback"
    if source.startswith("achievable"):
        return "achievable"
    if "transfer:" in source or "dtype-transfer" in source:
        return "transferred"
    if "measured:" in source:
        return "measured"
    return "roofline"


@dataclass
class Fit:
    """One calibrated predictor and what it is worth.

    Attributes:
        kind, dtype, impl: what was measured.
        device_key: the measured device's key (``cpu``, ``H100-SXM``...).
        hardware: the measured device's spec (the reference roofline).
        predictor: the fitted `profiling.fit.Predictor`.
        lo, hi: the measured range of each feature (log2).
        rows_fit, rows_holdout: rows fitted and held out.
        mape, p90: held-out mean and 90th-percentile absolute % error.
        scores: inner-validation MAPE (%) of every method.
        reference: ``roofline``, or ``nominal`` where the device's spec lacks
            a figure the roofline needs (such a fit cannot be transferred).
        floor_s: the fastest fitted call, s: added to the reference so that
            tiny shapes, which the launch and dispatch overhead bounds rather
            than the roofline, have a target that varies smoothly.
        holdout: the held-out rows' measured and predicted times (s), for the report.
    """

    kind: str
    dtype: str
    impl: str
    device_key: str
    hardware: HardwareSpec
    predictor: fitlib.Predictor
    lo: np.ndarray
    hi: np.ndarray
    rows_fit: int
    rows_holdout: int
    mape: float
    p90: float
    scores: dict[str, float]
    reference: str = "roofline"
    floor_s: float = 0.0
    holdout: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def key(self) -> str:
        """``kind/dtype/impl@device``."""
        return f"{self.kind}/{self.dtype}/{self.impl}@{self.device_key}"

    @property
    def median_ratio(self) -> float:
        """Median measured / reference time over the fitted rows (lower: closer to the roofline)."""
        return float(np.exp(np.median(self.predictor.y)))

    def summary(self) -> dict[str, Any]:
        """The fit's figures as a JSON-ready dict."""
        return {
            "kind": self.kind,
            "dtype": self.dtype,
            "impl": self.impl,
            "kernel": kernel_of(self.kind, self.impl),
            "device": self.device_key,
            "method": self.predictor.label,
            "rows_fit": self.rows_fit,
            "rows_holdout": self.rows_holdout,
            "mape": round(self.mape, 3),
            "p90_ape": round(self.p90, 3),
            "median_ratio_to_reference": round(self.median_ratio, 4),
            "reference": self.reference,
            "floor_s": self.floor_s,
        }


def _cluster(hw: HardwareSpec, gpus: int = 1) -> ClusterSpec:
    return make_cluster(hw, gpus_per_node=max(gpus, hw.node.gpus_per_node), nodes=1)


def reference_times(ops: list[Op], hw: HardwareSpec) -> tuple[np.ndarray, str]:
    """Roofline seconds of ``ops`` on ``hw`` ([n]), and ``roofline`` or ``nominal``.

    Where ``hw`` lacks a figure the roofline needs (a CPU's links, an
    unprofiled peak), every op gets the nominal reference 1 TFLOP/s,
    100 GB/s memory, 10 GB/s links: y then still varies smoothly with the
    shape, but the fit cannot be carried to another device.
    """
    roof = RooflineCostModel()
    try:
        cl = _cluster(hw, max(int(op.shape.get("gpus", 1)) for op in ops))
        return np.array([roof.op_time(op, cl).seconds for op in ops]), "roofline"
    except HardwareError:
        t = [max(op.flops / 1e12, op.bytes / 1e11, (op.intra_bytes + op.inter_bytes) / 1e10) for op in ops]
        return np.array(t) + 1e-7, "nominal"


@dataclass
class Calibration:
    """Every fit of a calibration, the skew model's error when skewed rows were measured, and the uncertainty band
    of a prediction transferred to another GPU (``transfer_bands``: ``kind/dtype`` -> P50/P90 relative error,
    `profiling.transfer.TRANSFER_BANDS` unless given)."""

    fits: list[Fit]
    skew: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    transfer_bands: dict[str, dict[str, Any]] = field(default_factory=default_bands)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: per fit, the skew model and the transfer bands."""
        return {
            "fits": [f.summary() for f in self.fits],
            "skew": self.skew,
            "sources": self.sources,
            "transfer_bands": self.transfer_bands,
        }


def is_calibration_file(path: Path) -> bool:
    """Whether ``path`` is a calibration moesim wrote (a parquet with `save`'s metadata)."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        return bool(raw) and str(json.loads(raw).get("format", "")).startswith("moesim-calibration/")
    except (OSError, ValueError, AttributeError, pa.ArrowException):
        return False


def check_out(path: str | Path, force: bool = False) -> None:
    """Raise `MoesimError` unless `save` may write ``path``: a folder, or a file that is not a calibration
    moesim wrote (without ``force``), is refused. Checked before the fit, so a long fit never ends in a refusal."""
    path = Path(path)
    if path.is_dir():
        raise MoesimError(f"--out {path} is a folder", "give --out a file path, e.g. calibration.parquet")
    if path.exists() and not force and not is_calibration_file(path):
        raise MoesimError(
            f"--out {path} exists and is not a calibration moesim wrote; refusing to overwrite it",
            "give --out a new file name, or add --force",
        )


def save(cal: Calibration, path: str | Path, force: bool = False) -> Path:
    """Write ``cal`` to ``path`` (one parquet file), whole or not at all (`model.outputs.write_file`).

    An existing ``path`` is replaced only when it is a calibration moesim wrote (`is_calibration_file`), or with
    ``force``.
    """
    from moesim.model.outputs import write_file

    path = Path(path)
    frames = []
    for i, f in enumerate(cal.fits):
        d = pd.DataFrame(f.predictor.x, columns=[f"x{j}" for j in range(f.predictor.x.shape[1])])
        d.insert(0, "fit", i)
        d["y"] = f.predictor.y
        frames.append(d)
    data = pd.concat(frames, ignore_index=True)
    meta = {
        "format": "moesim-calibration/1",
        "fits": [
            f.summary()
            | {"predictor": f.predictor.to_json(), "lo": f.lo.tolist(), "hi": f.hi.tolist()}
            | {"hardware": f.hardware.model_dump(), "scores": f.scores}
            for f in cal.fits
        ],
        "skew": cal.skew,
        "sources": cal.sources,
        "transfer_bands": cal.transfer_bands,
    }
    table = pa.Table.from_pandas(data, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    return write_file(path, lambda tmp: pq.write_table(table, tmp), owned=is_calibration_file, force=force)


class _Outdated(Exception):
    """A calibration file whose fits use fewer shape features than this version (written before features were
    added): it cannot be read, only remade from its tables."""


def load(path: str | Path) -> Calibration:
    """Read a calibration written by `save`."""
    path = Path(path)
    if not path.is_file():
        raise MoesimError(f"{path}: no such calibration file", "write one with 'moesim calibrate TABLES --out FILE'")
    check_parquet(path, "a calibration file", "write one with 'moesim calibrate TABLES --out FILE'")
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        data = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException):
        raw = None
    if not raw:
        raise MoesimError(
            f"{path}: not a moesim calibration file", "write one with 'moesim calibrate TABLES --out FILE'"
        )
    try:
        return _from_parts(json.loads(raw), data)
    except _Outdated as exc:
        raise MoesimError(
            f"{path}: a calibration written by an older moesim ({exc})",
            "write it again from its tables with 'moesim calibrate TABLES --out FILE'",
        ) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError, ValidationError) as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:120]
        raise MoesimError(
            f"{path}: a damaged moesim calibration file ({detail})", "write it again with 'moesim calibrate'"
        ) from None


def _from_parts(meta: dict[str, Any], data: pd.DataFrame) -> Calibration:
    """A `Calibration` from `save`'s metadata and rows."""
    fits = []
    for i, m in enumerate(meta["fits"]):
        rows = data[data["fit"] == i]
        d = len(FEATURES[m["kind"]])
        have = sum(1 for j in range(d) if f"x{j}" in rows.columns and rows[f"x{j}"].notna().any())
        if have < d and len(rows):
            raise _Outdated(f"its {m['kind']} fits have {have} shape features, this moesim uses {d}")
        x = rows[[f"x{j}" for j in range(d)]].to_numpy(float)
        p = m["predictor"]
        members = tuple((str(m), int(k), tuple(float(c) for c in cs)) for m, k, cs in p.get("members", []))
        pred = fitlib.Predictor(
            p["method"], x, rows["y"].to_numpy(float), np.asarray(p["coef"], float), p["k"], members
        )
        fits.append(
            Fit(
                m["kind"],
                m["dtype"],
                m["impl"],
                m["device"],
                HardwareSpec(**m["hardware"]),
                pred,
                np.asarray(m["lo"]),
                np.asarray(m["hi"]),
                m["rows_fit"],
                m["rows_holdout"],
                m["mape"],
                m["p90_ape"] if m["p90_ape"] is not None else math.nan,
                m.get("scores", {}),
                m.get("reference", "roofline"),
                m.get("floor_s", 0.0),
            )
        )
    bands = meta.get("transfer_bands")  # files written before the bands existed: today's defaults
    return Calibration(fits, meta.get("skew", {}), meta.get("sources", []), default_bands() if bands is None else bands)


def _measured_here(source: str) -> bool:
    """Whether an `OpTime.source` is a table measured on the GPU itself (clamped to its range or not), not one
    transferred from another GPU or dtype, nor a roofline."""
    return "measured:" in source and "transfer" not in source and not source.startswith(("roofline", "achievable"))


class CalibratedCostModel:
    """A `CostModel` from measured tables, with the roofline where they do not reach.

    For an op it looks up the fit of the op's kind and dtype (`table_dtype`;
    a collective, timed by its bytes, takes any dtype's table) measured on the
    cluster's GPU. Several implementations of one kind: with no kernel
    preference, the fastest (lowest median ratio to the reference); with one
    (``kernels``: family -> kernel name, `KERNELS`; a scenario's engine names
    them), the fit of that kernel, the one the engine runs. A preferred
    kernel without a table falls back to its nearest measured kernel
    (`Kernel.nearest`), else to the roofline, and says so: the source starts
    with ``fallback:`` or ``roofline: no table for``, and one warning line per
    missing kernel goes to stderr.
    On another GPU it transfers a fit: the predicted ratio times that GPU's
    roofline, so compute-bound shapes scale with the peak and memory-bound
    shapes with the bandwidth; between GPUs of one compute die with measured
    streaming bandwidths (H100 SXM -> H200) the derated transfer of
    `profiling.transfer` instead (the achieved-bandwidth gain on the part of
    the time the achieved roofline explains, the rest unchanged). A transferred
    time carries its family's uncertainty band (`OpTime.band`, from the
    calibration's ``transfer_bands``). Each `OpTime.source` says which: ``measured:``,
    ``transfer:``, ``fallback:`` or ``roofline:`` with the reason
    (`source_class` sorts them).

    With ``extrapolate`` (the training simulator's choice, where layers are
    larger than most kernel benchmarks reach): an op outside the measured
    range in some sizes takes the ratio at the nearest edge of the range in
    those sizes (efficiency saturates; the source says ``clamped``), however
    far its nearest measured shape is; an op whose dtype has no table (fp8
    grouped GEMM) takes the 16-bit table's ratio to its own roofline, and a
    copy any dtype's copy table (``dtype-transfer``); an fp8 grouped GEMM
    whose dense GEMMs are measured in fp8 and bf16 on the GPU takes the bf16
    grouped time times their measured ratio instead
    (`_grouped_by_dense_ratio`).
    """

    def __init__(
        self,
        calibration: Calibration,
        name: str = "calibrated",
        extrapolate: bool = False,
        kernels: Mapping[str, str | None] | None = None,
    ) -> None:
        self.calibration, self.name, self.extrapolate = calibration, name, extrapolate
        #: family -> moesim kernel name (None or absent: the fastest measured)
        self.kernels: dict[str, str] = {}
        for family, kernel in (kernels or {}).items():
            resolved = resolve_kernel(family, kernel)
            if resolved is not None:
                self.kernels[family] = resolved
        self._roof = RooflineCostModel()
        self._by_key: dict[tuple[str, str], list[Fit]] = {}
        fits = [f if fit_dtype(f.dtype, f.impl) == f.dtype else replace(f, dtype="fp8_block") for f in calibration.fits]
        for f in sorted(fits, key=lambda f: f.median_ratio):
            self._by_key.setdefault((f.kind, f.dtype), []).append(f)
            if f.kind in COLLECTIVES:  # timed by bytes: any dtype's table will do, 16-bit first
                self._by_key.setdefault((f.kind, "*"), []).append(f)
        for key, fits in self._by_key.items():
            if key[1] == "*":
                fits.sort(key=lambda f: f.dtype not in ("bf16", "fp16"))
        self._cache: dict[tuple[Any, ...], OpTime] = {}
        self._warned: set[tuple[str, ...]] = set()
        self._variants: dict[tuple[tuple[str, str], ...], CalibratedCostModel] = {}
        self._floors: dict[tuple[str, str | None], tuple[float, str] | None] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> CalibratedCostModel:
        """Load a calibration file written by ``moesim calibrate``."""
        return cls(load(path), name=f"calibrated:{Path(path).name}")

    def with_extrapolation(self) -> CalibratedCostModel:
        """The same fits with ``extrapolate`` on (see the class docstring)."""
        name = self.name + "+extrapolated"
        return CalibratedCostModel(self.calibration, name, extrapolate=True, kernels=self.kernels)

    def with_kernels(self, kernels: Mapping[str, str | None]) -> CalibratedCostModel:
        """The same fits timing each family's ``kernels`` entry (None, ``fastest``: the fastest measured).

        `MoesimError` naming the choices for an unknown kernel. The name gains the choices, e.g.
        ``calibrated:h100.parquet[moe=triton,attention=flash_attn]``; an empty choice returns ``self``.
        """
        chosen = {f: k for f, k in ((f, resolve_kernel(f, k)) for f, k in kernels.items()) if k is not None}
        if chosen == self.kernels:
            return self
        key = tuple(sorted(chosen.items()))
        hit = self._variants.get(key)
        if hit is None:
            base = self.name.split("[", 1)[0]
            label = f"{base}[{','.join(f'{f}={k}' for f, k in key)}]" if chosen else base
            hit = CalibratedCostModel(self.calibration, label, extrapolate=self.extrapolate, kernels=chosen)
            hit._warned, hit._variants = self._warned, self._variants  # one warning per missing kernel in all
            self._variants[key] = hit
        return hit

    def kernel_floor(self, gpu_key: str, vendor: str | None = None) -> tuple[float, str] | None:
        """(seconds, where from) of the shortest kernel a table timed back to back: the smallest ``floor_s`` of the
        engine GEMM tables (`ENGINE_GEMM_IMPLS`) measured on ``gpu_key``, with that fit's key; where none was
        measured there, the smallest of those measured on another GPU of the same ``vendor`` (the fit's key and
        ``transferred``); None without such a table (or with no ``vendor`` given, where ``gpu_key`` has none).

        A kernel replayed in a step, one after another, takes at least this long however few bytes it moves (its
        launch on the device, ramp-up and tail): on the H100, AIConfigurator's smallest GEMM, 2.44 us. The
        roofline's time of a tiny norm or KV-cache write (0.02-1 us) is below what any kernel takes. That floor is
        the GPU front end's, not its bandwidth's or peak's, so another GPU of the vendor takes the measured one's
        (checked on the A100 and L40S runs of `../shared/data/vllm-e2e-dense`: benchmarks/RESULTS.md section 29).
        Tables timed one call at a time between CUDA events (``moesim profile``'s) hold the events' own cost in
        their floor (a device copy's 3.97 us on the H100), which a step does not pay, so they give none."""
        key = (gpu_key, vendor)
        if key not in self._floors:
            fits = [
                f
                for f in self._by_key.get(("gemm", "bf16"), []) + self._by_key.get(("gemm", "fp16"), [])
                if base_impl(f.impl) in ENGINE_GEMM_IMPLS and f.floor_s > 0
            ]
            same = [f for f in fits if f.device_key == gpu_key]
            other = [f for f in fits if vendor is not None and f.hardware.vendor == vendor]
            best = min(same or other, key=lambda f: f.floor_s, default=None)
            if best is None:
                self._floors[key] = None
            else:
                self._floors[key] = (best.floor_s, best.key if same else f"{best.key}, transferred")
        return self._floors[key]

    def engine_all_reduce(self, op: Op, cluster: ClusterSpec) -> bool:
        """Whether ``op`` is a tensor-parallel all-reduce that the serving engine (`kernels` named) runs in its own
        kernels, not NCCL's: one node, 2 GPUs (or 4-8 NVLink-connected ones), at most `ENGINE_ALL_REDUCE_MAX_BYTES`."""
        if op.kind != "all_reduce" or not self.kernels or op.inter_bytes > 0:
            return False
        gpus, message = int(op.shape.get("gpus", 0)), float(op.shape.get("bytes", math.inf))
        return message <= ENGINE_ALL_REDUCE_MAX_BYTES and custom_ar_group(gpus, cluster)

    def _candidates(self, op: Op) -> list[Fit]:
        """The fits that may time ``op`` (fastest first), before the kernel choice and the device: those of the op's
        own quantisation (`table_dtype`: per-tensor fp8, block-scaled fp8, int4, MXFP4... each its own), never
        another's, but for a 16-bit op the other 16-bit format's after its own (`SIXTEEN_BIT`: so that the choice
        by device, `_on`, takes a table of this GPU in fp16 before a bf16 one transferred from another GPU); with
        ``extrapolate`` and none measured, the 16-bit table's (``dtype-transfer`` in the source)."""
        fits = self._by_key.get((op.kind, table_dtype(op))) or self._by_key.get((op.kind, "*"), [])
        if table_dtype(op) in SIXTEEN_BIT:  # the other 16-bit format's tables: the same kernels at the same speed
            fits = fits + self._by_key.get((op.kind, SIXTEEN_BIT[table_dtype(op)]), [])
        if not fits and self.extrapolate:
            fits = self._by_key.get((op.kind, "bf16")) or self._by_key.get((op.kind, "fp16"), [])
            if not fits and op.kind == "memcpy":
                fits = [f for (k, _), fs in self._by_key.items() if k == "memcpy" for f in fs]
            fits = [f for f in fits if f.reference == "roofline"]
        return fits

    def _on(self, fits: list[Fit], cluster: ClusterSpec) -> tuple[Fit | None, bool]:
        """The first of ``fits`` measured on the cluster's GPU, else the first that transfers (True)."""
        same = [f for f in fits if f.device_key == cluster.gpu.key]
        if same:
            return same[0], False
        movable = [f for f in fits if f.reference == "roofline"]
        return (movable[0], True) if movable else (None, False)

    def _pick(self, op: Op, cluster: ClusterSpec) -> tuple[Fit | None, bool, str]:
        """The fit timing ``op``, whether it is transferred, and the kernel-choice note for the source.

        The note is ``""`` (no preference: the fastest), `` [kernel K]`` (the preferred kernel's own table),
        ``fallback: no K table, used N; `` (a nearest kernel's) or, with no fit, the roofline's reason.
        """
        fits = self._candidates(op)
        family = kernel_family(op.kind)
        want = self.kernels.get(family) if family else None
        if family == "moe" and want in ("triton", "sglang_triton"):
            want = QUANT_MOE_KERNELS.get(table_dtype(op), want)
        if want is None:
            if op.kind == "gemm" and self.kernels:  # a serving engine's GEMM: its own table first (ENGINE_GEMM_IMPLS)
                fit, transfer = self._on([f for f in fits if base_impl(f.impl) in ENGINE_GEMM_IMPLS], cluster)
                if fit is not None and not transfer:
                    return fit, transfer, " [kernel: the engine's GEMM, timed back to back]"
            fit, transfer = self._on(fits, cluster)
            if fit is not None and self.engine_all_reduce(op, cluster):  # NCCL's table for the engine's own kernel
                self._warn(
                    ("all_reduce", cluster.gpu.key, fit.key),
                    f"no table of the engine's custom all-reduce on {cluster.gpu.key}; timing its all-reduce up to "
                    f"{ENGINE_ALL_REDUCE_MAX_BYTES // 2**20} MiB with NCCL's table ({fit.key})",
                )
                return fit, transfer, f"fallback: no table of the engine's custom all-reduce, used {fit.impl}; "
            return fit, transfer, ""
        chain = [want, *_BY_NAME[(family, want)].nearest]
        for i, name in enumerate(chain):
            impls = _BY_NAME[(family, name)].impls
            mine = sorted((f for f in fits if base_impl(f.impl) in impls), key=lambda f: impls.index(base_impl(f.impl)))
            fit, transfer = self._on(mine, cluster)
            if fit is None:
                continue
            if i == 0:
                return fit, transfer, f" [kernel {want}]"
            self._warn(
                (family, want, name, op.kind, fit.dtype, cluster.gpu.key),
                f"no measured {want} table for {op.kind}/{fit.dtype} on {cluster.gpu.key}; timing the engine's "
                f"{family} kernel with the {name} table ({fit.impl})",
            )
            return fit, transfer, f"fallback: no {want} table, used {name}; "
        kind = f"{op.kind}/{table_dtype(op)}"
        tried = " nor " + ", ".join(chain[1:]) if len(chain) > 1 else ""
        self._warn(
            (family, want, op.kind, table_dtype(op), cluster.gpu.key),
            f"no measured {want} table{tried} for {kind} on {cluster.gpu.key}; timing the engine's {family} kernel "
            "with the roofline",
        )
        return None, False, f"roofline: no table for {want}{tried} ({kind})"

    def _warn(self, key: tuple[str, ...], message: str) -> None:
        """One stderr line per missing kernel (per cost model)."""
        if key not in self._warned:
            self._warned.add(key)
            print(f"warning: {message}", file=sys.stderr)

    def op_time(self, op: Op, cluster: ClusterSpec) -> OpTime:
        """The op's time from its fit, or its roofline with the reason (see the class docstring)."""
        if is_deepep(op):  # DeepEP dispatch / combine: `model.a2a`'s model, never an NCCL all-to-all table
            return self._roof.op_time(op, cluster)
        engine_ar = engine_allreduce_seconds(op, cluster)  # the serving engine's custom all-reduce, not NCCL's table
        if engine_ar is not None:
            return OpTime(engine_ar[0], 0.0, 0.0, engine_ar[0], "intra-link", engine_ar[1])
        if op.kind == "topk_softmax":
            inside = self._topk_in_router(op, cluster)
            if inside is not None:
                return inside
        if op.kind == "router" and self._engine_router(op):
            return self._router_gemm(op, cluster)
        if op.kind == "grouped_gemm" and self.extrapolate and not self._by_key.get((op.kind, table_dtype(op))):
            scaled = self._grouped_by_dense_ratio(op, cluster)
            if scaled is not None:
                return scaled
        fit, transfer, note = self._pick(op, cluster)
        kind = f"{op.kind}/{table_dtype(op)}"
        if fit is None:
            why = note if note.startswith("roofline") else f"roofline: no measured {kind} table"
            return self._uncovered(op, cluster, why)
        fallback = note if note.startswith("fallback") else ""
        chosen = note if note.startswith(" [kernel") else ""
        # a roofline time keeps the kernel choice in its reason: " [kernel K]" or " [fallback for K]"
        wanted = self.kernels.get(kernel_family(op.kind) or "", "the engine's kernel")
        tag = chosen or (f" [fallback for {wanted}]" if fallback else "")
        if op.kind in COLLECTIVES and op.inter_bytes > 0:
            return replace(self._roof.op_time(op, cluster), source="roofline: multi-node collectives not measured")
        f = features(op)
        if f is None:
            return replace(self._roof.op_time(op, cluster), source=f"roofline: {op.name} has no {kind} shape")
        key = (fit.key, cluster.gpu.key, cluster.gpus_per_node, op.kind, op.dtype, f, self.extrapolate, note)
        key += (op.flops, op.bytes, op.intra_bytes, op.inter_bytes, op.intra_msgs, op.inter_msgs)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        x = np.asarray(f)
        sizes = np.array([name not in FLAGS for name in FEATURES[op.kind]])
        outside = np.flatnonzero(sizes & ((x < fit.lo - RANGE_SLACK) | (x > fit.hi + RANGE_SLACK)))
        clamped = ""
        if outside.size and self.extrapolate:
            x = x.copy()
            x[outside] = np.clip(x[outside], fit.lo[outside], fit.hi[outside])
            clamped = "clamped " + ",".join(FEATURES[op.kind][j] for j in outside) + " "
            outside = outside[:0]
        elif op.kind not in ACHIEVABLE_KINDS:  # beyond the measured range: follow the table along its edge
            beyond = np.flatnonzero(sizes & ((x < fit.lo) | (x > fit.hi)))
            if beyond.size:
                x, clamped = self._edge(op, fit, x, beyond)
            outside = outside[:0]
        if SIXTEEN_BIT.get(table_dtype(op)) == fit.dtype and op.kind not in COLLECTIVES:
            clamped += f"16-bit twin {fit.dtype}->{table_dtype(op)} "
        elif table_dtype(op) != fit.dtype and op.kind not in COLLECTIVES:
            clamped += f"dtype-transfer {fit.dtype}->{table_dtype(op)} "
        if outside.size:
            j = int(outside[0])
            name = FEATURES[op.kind][j]
            why = f"{name}=2^{x[j]:.1f} outside measured 2^{fit.lo[j]:.1f}..2^{fit.hi[j]:.1f} of {fit.key}"
            out = self._uncovered(op, cluster, f"roofline: {why}{tag}")
        elif not self.extrapolate and fit.predictor.neighbours and fit.predictor.nearest(x)[0] > MAX_GAP:
            why = f"roofline: no measured shape near it in {fit.key}{tag}"
            out = self._uncovered(op, cluster, why)
        else:
            ratio = float(np.exp(fit.predictor.predict(x)[0]))
            derated, band = None, None
            if transfer:
                ref = self._roof.op_time(op, cluster)
                derated, how = self._derated(op, fit, cluster, ratio)
                beyond = clamped.startswith(("edge ", "clamped "))  # beyond the measured range: its own band
                b = band_for(self.calibration.transfer_bands, op.kind, table_dtype(op), beyond=beyond)
                band = (b.p50, b.p90) if b is not None else None
                method = f"{fit.predictor.label}; {how}"
                src = f"{fallback}{clamped}transfer:{fit.key}->{cluster.gpu.key} ({method}){chosen}"
            else:
                ref = (
                    self._roof.op_time(op, _same_device(cluster, fit.hardware)) if fit.reference == "roofline" else None
                )
                src = f"{fallback}{clamped}measured:{fit.key} ({fit.predictor.label}){chosen}"
            if ref is None:  # nominal reference
                t = ratio * (reference_times([op], fit.hardware)[0][0] + fit.floor_s)
                out = OpTime(t, 0.0, 0.0, 0.0, "measured", src)
            else:
                t = derated if derated is not None else ratio * (ref.seconds + fit.floor_s)
                out = OpTime(t, ref.compute_s, ref.memory_s, ref.link_s, ref.bound, src, band)
            out = self._monotone_rows(op, cluster, out)
        self._cache[key] = out
        return out

    def _grouped_by_dense_ratio(self, op: Op, cluster: ClusterSpec) -> OpTime | None:
        """A grouped GEMM in a format with no grouped table of its own (fp8 routed experts: no fp8 grouped-GEMM
        table was measured) timed as the same layer in bf16 (its measured grouped table) times what that format
        gains over bf16 on one expert's dense GEMMs, both measured on this GPU: gate-up [rows, hidden] @ [hidden,
        2 inter] plus down [rows, inter] @ [inter, hidden], ``rows`` the pairs per active expert.

        The tensor cores' fp8 path does not run at the bf16 path's efficiency of its own, twice as high, peak:
        on the committed H100 tables (`torch._scaled_mm`, per-tensor scales) fp8 gains 1.21-2.04x over bf16 on
        the same shape at 2,048 rows (1.2-1.5x where the inner dimension is 768-2,048, as experts' are), while
        transferring bf16's efficiency to the fp8 peak gives 1.85-1.98x. None (the 16-bit table's ratio to the
        op's roofline, ``dtype-transfer`` in the source, as before) unless a bf16 grouped table and both dense
        tables are measured on the cluster's GPU and the op carries its experts' shape.
        """
        s = op.shape
        dtype = table_dtype(op)
        if dtype == "bf16" or not {"pairs", "active_experts", "hidden", "inter", "w_bytes", "a_bytes"} <= s.keys():
            return None
        key = ("grouped_by_dense", cluster.gpu.key, op.dtype, dtype, op.flops, op.bytes, tuple(sorted(s.items())))
        if key in self._cache:
            return self._cache[key]
        out = None
        wb = float(s["w_bytes"])
        twin = replace(
            op, dtype="bf16", weight_bytes=op.weight_bytes * 2.0 / wb if wb > 0 else op.weight_bytes,
            shape={**s, "w_bytes": 2.0},
        )  # fmt: skip
        grouped = self.op_time(twin, cluster)
        sums: dict[str, float] = {}
        srcs: dict[str, str] = {}
        for name, dt, b in (("low", op.dtype, wb), ("bf16", "bf16", 2.0)):
            up, down, _ = expert_gemm_pair(op, dt, b)
            rows = up.shape["m"]
            times = [self.op_time(up, cluster), self.op_time(down, cluster)]
            if not all(_measured_here(t.source) for t in times):
                break
            sums[name] = sum(t.seconds for t in times)
            srcs[name] = times[0].source.split("measured:", 1)[1].split(" ", 1)[0]
        if len(sums) == 2 and sums["bf16"] > 0 and _measured_here(grouped.source):
            r = sums["low"] / sums["bf16"]
            out = replace(
                grouped,
                seconds=grouped.seconds * r,
                source=f"dtype-transfer bf16->{dtype} by the measured dense-GEMM ratio {r:.3f} at {rows} rows per "
                f"expert ({srcs['low']} / {srcs['bf16']}); {grouped.source}",
            )
        self._cache[key] = out
        return out

    def _monotone_rows(self, op: Op, cluster: ClusterSpec, out: OpTime) -> OpTime:
        """A GEMM's table time, never below that of the same GEMM with fewer rows: ``m`` rows (one GEMM, not a
        batch) take at least the time of ``2^floor(log2 m)`` rows, whose work they contain (same weights, more
        activations). A fit between measured row counts can dip below both neighbours (the H100 bf16 table: a
        Llama-3.1-8B decode step's GEMMs at 40 rows 9% below 32 rows), which flattens a decode step's growth with
        the batch. Serving only (not with ``extrapolate``); the source gains ``[>= m=M rows]`` where it binds."""
        s = op.shape
        if self.extrapolate or op.kind != "gemm" or {"m", "n", "k"} - s.keys() or s.get("batch", 1) != 1:
            return out
        m = float(s["m"])
        lo = 2.0 ** math.floor(math.log2(m)) if m >= 2 else m
        if lo >= m:
            return out
        f = lo / m
        fewer = replace(op, flops=op.flops * f, act_bytes=op.act_bytes * f, shape={**s, "m": lo})
        t = self.op_time(fewer, cluster)
        if t.seconds <= out.seconds or source_class(t.source) not in ("measured", "transferred"):
            return out
        return replace(out, seconds=t.seconds, source=f"{out.source} [>= m={lo:.0f} rows]")

    def _uncovered(self, op: Op, cluster: ClusterSpec, why: str) -> OpTime:
        """``op``'s time where no table covers it; ``why`` is the roofline's reason (``roofline: ...``).

        Decode attention (one query per sequence, `model.achievable.is_paged_decode`) takes the achievable model's
        time (FlashAttention's paged split-KV decode at published figures, `model.achievable.decode_attention`) with
        the source ``achievable: <why>``, as do attention over whole prompts (`model.achievable.is_prompt_attention`:
        FlashAttention's forward over causal query blocks), grouped GEMMs (`ACHIEVABLE_FALLBACK_KINDS`), vLLM's sort
        sampler and an engine's fused top-k; every other op (mixed attention and prompts after a cached prefix
        included: the achievable model times a mixed batch as if every sequence were a prompt) the roofline's, with
        ``why`` as its source, plus, for each of its kernels, the shortest kernel the calibration timed back to back
        on that GPU, or on another GPU of its vendor (`kernel_floor`; not for collectives, whose link latency holds
        their launch)."""
        from moesim.model.achievable import (
            AchievableCostModel,
            is_paged_decode,
            is_prompt_attention,
            is_sort_sampler,
        )

        # vLLM's sort-based top-p sampler (no table measures it): the achievable model's sort (`is_sort_sampler`);
        # an engine's fused softmax-top-k kernel (`ROUTER_UNFUSED_NOTE`): one small kernel, its fixed time and bytes;
        # a grouped GEMM (`ACHIEVABLE_FALLBACK_KINDS`)
        small = op.kind == "topk_softmax" and bool(self.kernels)
        attn = op.kind in ACHIEVABLE_KINDS and (is_paged_decode(op) or is_prompt_attention(op))
        if attn or is_sort_sampler(op) or small or op.kind in ACHIEVABLE_FALLBACK_KINDS:
            t = AchievableCostModel().op_time(op, cluster)
            reused = f" ({t.source.split(':', 1)[1].strip()})" if ":" in t.source else ""
            return replace(t, source=f"achievable: {why.removeprefix('roofline: ')}{reused}")
        t = self._roof.op_time(op, cluster)
        kernel = op.kernels > 0 and op.kind not in (*COLLECTIVES, "p2p")  # DeepEP never gets here (`op_time`)
        floor = self.kernel_floor(cluster.gpu.key, cluster.gpu.vendor) if kernel else None
        if floor is not None:  # no kernel is shorter than the shortest a table timed back to back (kernel_floor)
            extra = op.kernels * floor[0]
            why = f"{why} + {op.kernels} x {floor[0] * 1e6:.2f} us kernel floor ({floor[1]})"
            return replace(t, seconds=t.seconds + extra, bound="kernel" if extra > t.seconds else t.bound, source=why)
        return replace(t, source=why)

    def _edge(self, op: Op, fit: Fit, x: np.ndarray, outside: np.ndarray) -> tuple[np.ndarray, str]:
        """``x`` with its size features at ``outside`` moved onto the edge of ``fit``'s measured range, and the
        source's note (``edge <feature>=2^x->2^edge ...``).

        The op is then timed at the edge's ratio to its own reference (the roofline plus the fit's floor), as the
        skew model carries a measured time to another shape: beyond the table the time keeps the table's last
        efficiency and grows as the roofline does, so it is continuous at the edge and never falls as the op grows
        where the roofline does not (a fit's own extrapolation past its last point, within `RANGE_SLACK`, could)."""
        x = x.copy()
        moved = np.clip(x[outside], fit.lo[outside], fit.hi[outside])
        names = FEATURES[op.kind]
        note = ",".join(f"{names[j]}=2^{x[j]:.1f}->2^{v:.1f}" for j, v in zip(outside, moved, strict=True))
        x[outside] = moved
        return x, f"edge {note} "

    def _engine_router(self, op: Op) -> bool:
        """Whether ``op`` (a router op) is a serving engine's router, timed as a GEMM (`ROUTER_UNFUSED_NOTE`): the
        model times an engine's kernels, and the router tables of the op's dtype time the unfused eager top-k."""
        if not self.kernels or "hidden" not in op.shape:
            return False
        fits = self._candidates(op)
        return bool(fits) and all(includes_topk(f) for f in fits)

    def _router_gemm(self, op: Op, cluster: ClusterSpec) -> OpTime:
        """A serving engine's router op timed as the GEMM it is (``tokens x hidden`` by ``hidden x experts``) from
        the GEMM tables; its ``topk_softmax`` op is then timed on its own (`_topk_in_router`)."""
        s = op.shape
        t, h, e = round(float(s["tokens"])), int(s["hidden"]), int(s["experts"])
        a_bytes = 2.0 if op.dtype in ("bf16", "fp16") else 4.0
        as_gemm = gemm(op.name, op.group, op.count, max(t, 1), e, h, a_bytes, a_bytes, op.dtype)
        out = self.op_time(as_gemm, cluster)
        return replace(out, source=f"{out.source} [router GEMM: {ROUTER_UNFUSED_NOTE}]")

    def _topk_in_router(self, op: Op, cluster: ClusterSpec) -> OpTime | None:
        """Zero seconds for a ``topk_softmax`` op whose router op (same tokens, experts, top-k and hidden width, 16-bit
        activations) is timed from a router table that already includes the softmax and top-k (`includes_topk`);
        None otherwise (the top-k is timed on its own). The source names that router table."""
        s = op.shape
        if "hidden" not in s:
            return None
        t, h, e, k = float(s["tokens"]), int(s["hidden"]), int(s["experts"]), int(s["top_k"])
        router = Op(
            "router", "router", op.group, op.count, flops=2.0 * t * h * e, weight_bytes=2.0 * h * e, kv_bytes=0.0,
            act_bytes=2.0 * t * h + 4.0 * t * e, dtype="bf16",
            shape={"tokens": t, "experts": e, "hidden": h, "top_k": k},
        )  # fmt: skip
        if self._engine_router(router):
            return None  # an engine's router: its GEMM alone, the fused top-k timed on its own
        fit, _, _ = self._pick(router, cluster)
        if fit is None or not includes_topk(fit):
            return None
        src = self.op_time(router, cluster).source
        if source_class(src) not in ("measured", "transferred") or fit.key not in src:
            return None  # the router op falls to the roofline, which counts the GEMM alone
        why = f"measured: included in {fit.key} (router GEMM + softmax + top-k)"
        return OpTime(0.0, 0.0, 0.0, 0.0, "measured", why)

    def _derated(self, op: Op, fit: Fit, cluster: ClusterSpec, ratio: float) -> tuple[float | None, str]:
        """``op``'s derated time (s) on ``cluster`` from ``fit`` measured on another GPU (`profiling.transfer`), and
        how it was carried: (seconds, ``derated: ...`` or ``achievable ratio ...``), or (None, why the ratio is
        carried instead).

        Between GPUs of one compute die, the achieved bandwidth derates the measured time (`derated_seconds`).
        Across dies, where both GPUs have their own published figures (`model.achievable.ACHIEVABLE`: achieved
        bandwidth, GEMM and attention fractions, SMs), the time measured on the source scales by the achievable
        model's time on the target over its time on the source: the GPUs' achieved, not datasheet, speeds, and
        their own tile and wave counts. Checked on the A100 runs of `../shared/data/vllm-e2e-dense` calibrated on
        H100 tables (benchmarks/RESULTS.md section 29). A GPU without its own figures carries the ratio."""
        why = derating_applies(op, fit.hardware, cluster.gpu)
        scaled = self._achievable_ratio(op, fit, cluster) if why and why.startswith("different compute die") else None
        if why is not None and scaled is None:
            return None, why
        t_src = ratio * (self._roof.op_time(op, _same_device(cluster, fit.hardware)).seconds + fit.floor_s)
        if scaled is not None:
            return t_src * scaled[0], scaled[1]
        t, share = derated_seconds(op, t_src, fit.hardware, cluster.gpu)
        gain = (achieved_bandwidth(cluster.gpu) or 1.0) / (achieved_bandwidth(fit.hardware) or 1.0)
        return t, f"derated: achieved bandwidth x{gain:.2f}, {share:.0%} of the time bandwidth/compute-bound"

    def _achievable_ratio(self, op: Op, fit: Fit, cluster: ClusterSpec) -> tuple[float, str] | None:
        """(the achievable model's time of ``op`` on ``cluster``'s GPU over its time on ``fit``'s, note): how
        `_derated` carries a measured time across compute dies; None where either GPU lacks its own published figures
        (`_own_achievable`), the op is a collective, or the achievable model cannot time it."""
        from moesim.model.achievable import AchievableCostModel

        src, dst = fit.hardware, cluster.gpu
        if op.kind in (*COLLECTIVES, "p2p") or not (_own_achievable(src) and _own_achievable(dst)):
            return None
        ach = AchievableCostModel()
        try:
            a_src = ach.op_time(op, _same_device(cluster, src)).seconds
            a_dst = ach.op_time(op, cluster).seconds
        except HardwareError:
            return None
        if not (a_src > 0 and a_dst > 0):
            return None
        return a_dst / a_src, f"achievable ratio x{a_dst / a_src:.2f} {dst.key}/{src.key}"


def _own_achievable(gpu: HardwareSpec) -> bool:
    """Whether ``gpu`` has published achievable figures of its own (its spec's block, or its preset's row: a spec
    read back from a calibration file keeps only the datasheet), not H100-SXM's reused wholesale."""
    from moesim.model.achievable import ACHIEVABLE

    return gpu.achievable is not None or gpu.key in ACHIEVABLE


def _same_device(cluster: ClusterSpec, hw: HardwareSpec) -> ClusterSpec:
    """``cluster`` with its GPU replaced by the measured spec (links kept where the spec has none)."""
    links = {k: getattr(hw.node, k) for k in ("intra_bw", "intra_latency_s", "inter_bw", "inter_latency_s")}
    links = {k: v if v is not None else getattr(cluster, k) for k, v in links.items()}
    return cluster.model_copy(update={"gpu": hw, **links})
