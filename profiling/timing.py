"""Timing a kernel properly, and recording what it ran on.

`time_call` warms up, then repeats until the spread is small or the budget
is spent, and returns the median with the 10th and 90th percentiles. On
CUDA each repetition is bracketed by CUDA events and the L2 cache is flushed
before it (a write over a buffer larger than L2), so a kernel does not read
its operands from the cache a previous repetition left warm. The flush also
keeps the GPU busy while the host launches the call, so the events bracket
the GPU's work, not the launch: on an H100 SXM a 1 x 2048 x 768 bf16 GEMM
timed 7.1 us this way and 38.6 us without the flush (the host's launch then
falls between the events), and 3.2 us replayed back to back from a CUDA
graph with its weights warm in L2. On the CPU
`time.perf_counter` brackets each call (torch CPU ops are synchronous) and
the thread count is recorded with the table.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Timing:
    """A timed call: median and spread of the repetitions, seconds."""

    median_s: float
    p10_s: float
    p90_s: float
    reps: int

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative spread of the repetitions."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else 0.0


def summarise(samples: list[float]) -> Timing:
    """Median, 10th and 90th percentiles of ``samples`` (s)."""
    a = np.asarray(samples)
    return Timing(float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)), len(a))


class Timer:
    """Times callables on one device (``cpu`` or ``cuda``).

    Args:
        device: ``cpu`` or ``cuda``.
        warmup: untimed calls first.
        min_reps, max_reps: timed repetitions, at least and at most.
        budget_s: stop repeating (after ``min_reps``) once this much time is spent, s.
        spread: stop once (p90 - p10) / median falls below this.
        flush_bytes: bytes written before each CUDA repetition to flush L2
            (0: no flush).
    """

    def __init__(
        self,
        device: str,
        *,
        warmup: int = 2,
        min_reps: int = 5,
        max_reps: int = 100,
        budget_s: float = 0.5,
        spread: float = 0.05,
        flush_bytes: int = 256 * 2**20,
    ) -> None:
        self.device, self.warmup, self.min_reps, self.max_reps = device, warmup, min_reps, max_reps
        self.budget_s, self.target_spread = budget_s, spread
        self._flush = None
        if device == "cuda" and flush_bytes:
            import torch

            self._flush = torch.empty(flush_bytes // 4, dtype=torch.float32, device="cuda")

    def _done(self, samples: list[float], started: float) -> bool:
        if len(samples) < self.min_reps:
            return False
        if len(samples) >= self.max_reps or time.perf_counter() - started > self.budget_s:
            return True
        return summarise(samples).spread < self.target_spread

    def __call__(self, fn: Callable[[], Any]) -> Timing:
        """Time ``fn()`` (see the class docstring); returns its `Timing`."""
        return summarise(self.samples(fn))

    def samples(self, fn: Callable[[], Any]) -> list[float]:
        """The seconds of each timed repetition of ``fn()`` (after the warm-up)."""
        for _ in range(self.warmup):
            fn()
        samples: list[float] = []
        started = time.perf_counter()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            while not self._done(samples, started):
                if self._flush is not None:
                    self._flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) * 1e-3)
        else:
            while not self._done(samples, started):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        return samples


def environment(device: str) -> dict[str, Any]:
    """What a table was measured on: device, driver, versions, threads, host, date."""
    import torch

    meta: dict[str, Any] = {
        "device_type": device,
        "host": socket.gethostname(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta["device"] = props.name
        meta["cuda"] = torch.version.cuda
        meta["gpu_count"] = torch.cuda.device_count()
        meta["sm_count"] = props.multi_processor_count
        meta["driver"] = _nvidia_driver()
    else:
        from moesim.model.hardware import _cpu_name

        meta["device"] = _cpu_name()
        meta["driver"] = platform.release()
    return meta


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from /proc, or None."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
    except OSError:
        return None
    for part in first.split():
        if part[:3].replace(".", "").isdigit() and "." in part:
            return part
    return first.strip() or None
