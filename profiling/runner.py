"""``moesim profile``: run the microbenchmarks over the grids and write the tables.

The run writes, under ``--out``: one parquet table per op kind
(``gemm.parquet``, ``grouped_gemm.parquet``...; columns in
`profiling.tables`), each carrying the run's metadata, and
``hardware.yaml``: the device's `HardwareSpec` (for the CPU, the peak FLOP/s
and memory bandwidth measured by a probe; for a known GPU, its datasheet
entry). Tables are written only when the run completes, each whole, added to
what the folder holds: an existing ``--out`` must be new, empty or a folder of
moesim tables (or ``--force``), and a file moesim did not write is never
overwritten without ``--force`` (`profiling.tables.write_table_folder`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from moesim.model.errors import HardwareError, MoesimError
from moesim.model.hardware import HardwareSpec, NodeSpec, list_gpus, local_cpu
from moesim.profiling import grids
from moesim.profiling.tables import TRAIN_TABLE_KINDS, check_table_folder, table_writer, write_table_folder

#: ``--ops`` names and the table kinds they fill.
OP_GROUPS = {
    "gemm": ("gemm",),
    "moe": ("grouped_gemm",),
    "attention": ("attention",),
    "router": ("router",),
    "permute": ("permute",),
    "memcpy": ("memcpy",),
    "norm": ("norm",),
    "rope": ("rope",),
    "activation": ("activation",),
    "kv_write": ("kv_write",),
    "topk_softmax": ("topk_softmax",),
    "sampling": ("sampling",),
    "collective": ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"),
    # training's kernels at training sizes (`model.train_ops`; `grids.train_shapes`): not in the default run
    "train": TRAIN_TABLE_KINDS,
}
#: ``--ops`` groups a run without ``ops`` times.
DEFAULT_GROUPS = tuple(g for g in OP_GROUPS if g != "train")
#: Training kinds timed in fp8 when fp8 is asked for (on CUDA); the others take the run's 16-bit dtypes.
FP8_TRAIN_KINDS = ("gemm_dgrad", "gemm_wgrad")
#: CUDA device names (as torch reports them) to GPU presets.
CUDA_NAMES = {
    "H100 80GB HBM3": "H100-SXM",
    "H100 PCIe": "H100-PCIe",
    "H800": "H800",
    "H200": "H200-SXM",
    "A100-SXM4-80GB": "A100-SXM-80GB",
    "A100 80GB": "A100-SXM-80GB",
    "B200": "B200",
    "L40S": "L40S",
    "RTX 4090": "RTX-4090",
}

Progress = Callable[[int, int, str], None]
#: Sweeps over the grid per mode. The speed of a shared machine drifts over
#: seconds (on the 2-core CI VM the median of 20 back-to-back calls varies
#: by about 9%), so each shape is timed in several short visits spread over
#: the run and its samples pooled: the drift averages out.
PASSES = {"tiny": 3, "quick": 6, "full": 8}
#: Seconds one visit to a shape may spend repeating its call (after the minimum repetitions) before it stops short
#: of the target spread, per mode. On an idle CPU a visit reaches its spread well within 0.05 s; under load none
#: does, and each runs to the budget. The tiny grid's 225 visits (`profile("cpu", mode="tiny", ops=["gemm",
#: "moe"])`, then `calibrate(holdout=0.2, seed=0)`; this project's 2-core VM, 2026-12-06), 11 idle runs at each
#: budget: 3.6-4.9 s at 0.05 s, 3.3-6.7 s at 0.2 s (`ProfileRun.wall_s`); held-out MAPE, median (range), gemm
#: 11.0% (9.4-13.8) at 0.05 s and 13.1% (8.2-20.5) at 0.2 s, grouped GEMM 4.7% (1.6-22.3) and 6.0% (2.0-22.9):
#: the same tables. With two busy processes on the cores: 11.5-16.7 s at 0.05 s against 18.6-30.0 s at 0.2 s,
#: for no better tables (gemm 31-108% either way): a longer budget buys nothing the passes do not.
VISIT_BUDGET_S = {"tiny": 0.05, "quick": 0.05, "full": 0.2}


@dataclass
class ProfileRun:
    """What a profile run wrote: tables per kind, the hardware, what was skipped, wall time (s)."""

    out: Path
    tables: dict[str, Path]
    rows: dict[str, int]
    hardware: HardwareSpec
    skipped: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MoesimError(
            "torch is not installed", "pip install 'moesim[profile]' (or torch==2.13.0 on a CPU)"
        ) from None
    return torch


def check_device(device: str) -> None:
    """Raise a one-line error when ``device`` cannot be profiled here."""
    torch = _import_torch()
    if device not in ("cpu", "cuda"):
        raise MoesimError(f"unknown device '{device}'", "use --device cpu or --device cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise HardwareError("--device cuda: torch sees no CUDA GPU on this machine", "use --device cpu here")


def cuda_preset(device_name: str) -> HardwareSpec | None:
    """The GPU preset whose name torch reports (``NVIDIA H100 80GB HBM3`` -> H100-SXM), or None."""
    for pattern, key in CUDA_NAMES.items():
        if pattern in device_name:
            return list_gpus()[key]
    return None


def probe_hardware(device: str, dtypes: list[str], timer: Any) -> HardwareSpec:
    """The device's spec: for a known GPU its preset, else peak FLOP/s and bandwidth measured now.

    The probe times one large GEMM per dtype (2 n^3 FLOP, n = 2048 on the CPU,
    8192 on CUDA) and one large copy (2 x 256 MiB moved on the CPU, 2 x 1 GiB
    on CUDA); the measured figures are what this device reaches, a lower
    bound of its true peak.
    """
    import torch

    from moesim.profiling.kernels import torch_dtype

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        preset = cuda_preset(name)
        if preset is not None:
            return preset
    n = 2048 if device == "cpu" else 8192
    peaks: dict[str, float] = {}
    for dt in dtypes:
        if dt not in ("fp32", "fp16", "bf16"):
            continue
        a = torch.randn(n, n, device=device, dtype=torch_dtype(dt))
        peaks[dt] = 2.0 * n**3 / timer(lambda a=a: torch.mm(a, a)).median_s
    size = (256 if device == "cpu" else 1024) * 2**20
    src = torch.randn(size // 4, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2.0 * size / timer(lambda: dst.copy_(src)).median_s
    base = local_cpu() if device == "cpu" else None
    sources = {"peak_flops": f"measured by moesim profile: {n}^3 GEMM", "memory_bandwidth": "measured: 256 MiB copy"}
    return HardwareSpec(
        key="cpu" if device == "cpu" else "cuda",
        name=base.name if base else torch.cuda.get_device_name(0),
        vendor="cpu" if device == "cpu" else "nvidia",
        peak_flops=peaks,
        memory_gib=base.memory_gib if base else torch.cuda.get_device_properties(0).total_memory / 2**30,
        memory_bandwidth=bandwidth,
        tdp_w=None,
        node=NodeSpec(gpus_per_node=1, intra_bw=None, intra_latency_s=None, inter_bw=None, inter_latency_s=None),
        sources=sources,
    )


def plan(device: str, mode: str, ops: list[str], dtypes: list[str]) -> list[tuple[str, dict[str, Any], str]]:
    """The (kind, shape, dtype) points a run times, in order."""
    b = grids.BUDGETS[(device, mode)]
    points: list[tuple[str, dict[str, Any], str]] = []
    for op in ops:
        if op == "gemm":
            points += [("gemm", s, d) for d in dtypes for s in grids.gemm_shapes(b)]
        elif op == "moe":
            moe_dtypes = [d for d in dtypes if d != "fp8"]
            points += [("grouped_gemm", s, d) for d in moe_dtypes for s in grids.grouped_gemm_shapes(b)]
            points += [("grouped_gemm", s, d) for d in moe_dtypes[:1] for s in grids.skew_shapes(b)]
            if device == "cuda":
                points += [("grouped_gemm_triton", s, d) for d in moe_dtypes for s in grids.grouped_gemm_shapes(b)]
        elif op in ("attention", "router", "permute", "memcpy", "norm", "rope", "activation", "kv_write",
                    "topk_softmax", "sampling"):  # fmt: skip
            shapes = getattr(grids, f"{op}_shapes")(b)
            # copies are timed by bytes; the router's logits are fp32 (`model.ops.topk_op`)
            kind_dtypes = ["fp32"] if op in ("memcpy", "topk_softmax") else [d for d in dtypes if d != "fp8"]
            points += [(op, s, d) for d in kind_dtypes for s in shapes]
        elif op == "train":
            shapes = grids.train_shapes(grids.TRAIN_BUDGETS[(device, mode)], b)
            points += [(k, s, d) for d in dtypes for k, s in shapes if d != "fp8" or k in FP8_TRAIN_KINDS]
    return points


def profile(
    device: str,
    out: str | Path,
    *,
    mode: str = "quick",
    ops: list[str] | None = None,
    dtypes: list[str] | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> ProfileRun:
    """Time every grid point of ``ops`` on ``device`` and write the tables under ``out``.

    Args:
        device: ``cpu`` or ``cuda``.
        out: output folder (created).
        mode: ``quick`` (about 2.5 minutes on a 2-core CPU), ``full``, or
            ``tiny`` (seconds: the demo's and the tests' grid).
        ops: ``--ops`` names (`OP_GROUPS`); default all but ``train`` (`DEFAULT_GROUPS`).
        dtypes: dtypes to time; default fp32 on the CPU (this CPU has no
            16-bit matrix hardware), bf16 on CUDA.
        progress: called as progress(done, total, label) after each point.
        force: write into an existing folder moesim did not write, over files of the same names
            (`profiling.tables.write_table_folder`; other files are never touched).
    """
    check_device(device)
    import torch

    from moesim.profiling.kernels import PREPARE, Pool
    from moesim.profiling.timing import Timer, environment, summarise

    ops = list(ops or DEFAULT_GROUPS)
    unknown = [o for o in ops if o not in OP_GROUPS]
    if unknown:
        raise MoesimError(f"unknown op group(s) {', '.join(unknown)}", f"use --ops with {','.join(OP_GROUPS)}")
    dtypes = list(dtypes or (["fp32"] if device == "cpu" else ["bf16"]))
    for dt in dtypes:
        if dt not in ("fp32", "fp16", "bf16", "fp8") or (dt == "fp8" and device == "cpu"):
            raise MoesimError(f"cannot profile dtype '{dt}' on {device}", "use fp32, fp16 or bf16 (fp8 on CUDA only)")
    started = time.perf_counter()
    out = Path(out)
    check_table_folder(out, "profile", force, ("hardware.yaml",))  # before minutes of timing, not after
    passes = PASSES[mode]
    budget = VISIT_BUDGET_S[mode]
    # the first pass warms every shape up; later visits are timed straight away (their cold first call,
    # if any, is one sample of several under the median)
    timers = [Timer(device, warmup=1 if p == 0 else 0, min_reps=2, max_reps=20, budget_s=budget) for p in range(2)]
    hardware = probe_hardware(device, dtypes, Timer(device))
    points = plan(device, mode, ops, dtypes)
    with_collectives = "collective" in ops
    total = passes * len(points) + (1 if with_collectives else 0)
    pool = Pool(device)
    samples: list[list[float]] = [[] for _ in points]
    extras: list[dict[str, Any]] = [{} for _ in points]
    failed: dict[int, str] = {}
    for p in range(passes):
        for i, (kind, shape, dtype) in enumerate(points):
            label = f"pass {p + 1}/{passes} {kind} {dtype} " + " ".join(
                f"{k}={v}" for k, v in shape.items() if k != "skew_set"
            )
            if i not in failed:
                fn = None  # the last point's operands go before this one's are drawn (a large one needs the room)
                try:
                    fn, extras[i] = PREPARE[kind]({k: v for k, v in shape.items() if k != "skew_set"}, dtype, pool)
                    samples[i] += timers[min(p, 1)].samples(fn)
                except Exception as exc:  # this device cannot run it (a torch, Triton or cuBLAS error)
                    # one failing point must not cost the whole run; it is listed in `skipped` with its error
                    first = (str(exc).strip().splitlines() or [""])[0][:120]
                    failed[i] = f"{label}: {type(exc).__name__}: {first}"
            if progress:
                progress(p * len(points) + i + 1, total, label)
    rows: dict[str, list[dict[str, Any]]] = {}
    for i, (kind, shape, dtype) in enumerate(points):
        if i in failed:
            continue
        t = summarise(samples[i])
        table = "grouped_gemm" if kind == "grouped_gemm_triton" else kind
        rows.setdefault(table, []).append(
            {"op": table, "dtype": dtype, **shape, **extras[i], "skew_set": bool(shape.get("skew_set"))}
            | {"time_s": t.median_s, "time_p10_s": t.p10_s, "time_p90_s": t.p90_s, "reps": t.reps}
        )
    skipped = sorted(set(failed.values()))
    if with_collectives:
        from moesim.profiling.collectives import bench_collectives

        world = torch.cuda.device_count() if device == "cuda" else 2
        if world < 2:
            skipped.append("collectives: need at least 2 ranks (1 GPU here)")
        else:
            sizes = list(grids.BUDGETS[(device, mode)].collective_bytes)
            coll, missing = bench_collectives(device, world, sizes)
            skipped += [f"{op}: not implemented by {'nccl' if device == 'cuda' else 'gloo'}" for op in missing]
            for r in coll:
                rows.setdefault(r["op"], []).append(r)
        if progress:
            progress(total, total, "collectives")
    meta = environment(device) | {
        "source": "moesim profile",
        "mode": mode,
        "dtypes": dtypes,
        "device_key": hardware.key,
        "hardware": hardware.model_dump(),
    }
    files: dict[str, Callable[[str], None]] = {}
    for kind, kind_rows in rows.items():
        df = pd.DataFrame(kind_rows)
        if kind != "grouped_gemm":
            df = df.drop(columns=["skew_set"], errors="ignore")
        files[f"{kind}.parquet"] = table_writer(df, meta, str(out / f"{kind}.parquet"))
    hw_text = yaml.safe_dump({hardware.key: hardware.model_dump(exclude={"key"})}, sort_keys=False)
    files["hardware.yaml"] = lambda tmp: Path(tmp).write_text(hw_text, encoding="utf-8")
    paths = write_table_folder(out, "profile", files, force)  # adds to a folder of tables; never deletes
    written = {kind: paths[f"{kind}.parquet"] for kind in rows}
    return ProfileRun(
        out, written, {k: len(v) for k, v in rows.items()}, hardware, skipped, time.perf_counter() - started, meta
    )
