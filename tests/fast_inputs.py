"""Shared by tests (the bad-input tests first): small valid inputs that run in well under a second, and a guard
that turns a hang or a runaway allocation into a failure of one case instead of the machine."""

from __future__ import annotations

import contextlib
import copy
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Committed kernel tables (a real H100, quick bf16 grid): the input for calibrate and import cases.
TABLES = REPO / "profiling" / "data" / "h100-sxm" / "quick-bf16"

#: A serving scenario: Mixtral TP8 on one H100 node, 20 fixed-length requests.
SERVE: dict[str, Any] = {
    "model": "mixtral-8x7b",
    "gpu": "H100-SXM",
    "nodes": 1,
    "gpus_per_node": 8,
    "layout": {"tp": 8},
    "workload": {"arrival": "poisson", "rate": 5, "requests": 20, "input": 128, "output": 16},
}
#: A drift scenario (tests/test_drift*.py): Mixtral EP4 on four H100s, prefill-heavy so that the expert GEMMs are
#: compute-bound and imbalance costs time.
DRIFT: dict[str, Any] = {
    "model": "mixtral-8x7b",
    "gpu": "H100-SXM",
    "nodes": 1,
    "gpus_per_node": 4,
    "layout": {"tp": 1, "dp_attn": 4, "ep": 4},
    "workload": {"arrival": "poisson", "rate": 20, "requests": 24, "input": 4096, "output": 4},
}
#: A sweep's base scenario without its GPU (tests/test_step_memo.py, tests/test_sweep_fast.py): Mixtral with chunked
#: prefill, lognormal lengths, expert offload allowed and an SLO, so packed prefill, offload and SLO columns appear.
SWEEP_BASE: dict[str, Any] = {
    "model": "mixtral-8x7b",
    "engine": {"max_tokens": 4096, "chunked_prefill": True},
    "workload": {
        "arrival": "poisson",
        "requests": 300,
        "input": {"dist": "lognormal", "mean": 512, "cv": 1.0, "max": 4096},
        "output": {"dist": "lognormal", "mean": 128, "cv": 1.0, "max": 1024},
    },
    "offload": {"enabled": True},
    "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
}
#: A training scenario: OLMoE on one H100 node, PP2 x EP4.
TRAIN: dict[str, Any] = {
    "model": "olmoe-1b-7b",
    "gpu": "H100-SXM",
    "nodes": 1,
    "gpus_per_node": 8,
    "layout": {"tp": 1, "pp": 2, "ep": 4, "zero": 1},
    "batch": {"global_batch": 32, "micro_batch": 1, "seq_len": 1024},
}


def train_scenario(*overs: dict[str, Any]) -> dict[str, Any]:
    """A copy of `TRAIN` with each mapping of ``overs`` laid over it in turn: a mapping value merges into the
    scenario's mapping of that key one level deep (``{"layout": {"pp": 4}}`` keeps tp, ep and zero)."""
    sc = copy.deepcopy(TRAIN)
    for over in overs:
        for key, value in over.items():
            sc[key] = {**sc[key], **value} if isinstance(value, dict) and isinstance(sc.get(key), dict) else value
    return sc


#: A one-point analytical sweep.
SWEEP: dict[str, Any] = {
    "name": "t",
    "engine": "analytical",
    "base": {
        "model": "mixtral-8x7b",
        "gpu": "H100-SXM",
        "workload": {"arrival": "poisson", "requests": 20, "input": 128, "output": 16},
    },
    "axes": {"gpus": [8], "layout": [{"tp": "gpus"}], "rate": [1]},
}


@contextlib.contextmanager
def bounded(limit_s: float, memory_bytes: int, timeout: type[BaseException]) -> Iterator[None]:
    """Raise ``timeout`` after ``limit_s`` seconds (SIGALRM), and cap the address space ``memory_bytes`` above
    today's (RLIMIT_AS; no cap where /proc is missing). Both are restored on exit."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise timeout(f"ran past {limit_s:.0f} s (a hang)")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        status = []
    vm = next((int(x.split()[1]) * 1024 for x in status if x.startswith("VmSize:")), 0)
    if vm and (old_limit[0] == resource.RLIM_INFINITY or old_limit[0] > vm + memory_bytes):
        resource.setrlimit(resource.RLIMIT_AS, (vm + memory_bytes, old_limit[1]))
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)
