"""Collective microbenchmarks with torch.distributed over local processes.

On the CPU the ranks are processes of this machine talking over gloo on
127.0.0.1; on CUDA one process per GPU talks over NCCL. Each message size is
timed on every rank between barriers; the recorded time is the slowest
rank's median (a collective finishes when its last rank does). A collective
the backend does not implement (gloo has no reduce-scatter) is skipped and
reported.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(op: str, x: torch.Tensor, parts: list[torch.Tensor], out: torch.Tensor) -> None:
    if op == "all_reduce":
        dist.all_reduce(x)
    elif op == "all_gather":
        dist.all_gather_into_tensor(out, x[: len(parts[0])]) if x.is_cuda else dist.all_gather(
            parts, x[: len(parts[0])]
        )
    elif op == "reduce_scatter":
        getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)(parts[0], x)
    else:
        dist.all_to_all_single(out, x)


def _worker(rank: int, world: int, port: int, device: str, sizes: list[int], reps: int, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world)
    dev = f"cuda:{rank}" if device == "cuda" else "cpu"
    results: list[tuple[str, int, float, float, float, int]] = []
    skipped: set[str] = set()
    for op in OPS:
        for size in sizes:
            n = max(world, size // 4 // world * world)  # fp32 elements, divisible by the ranks
            x = torch.ones(n, device=dev)
            out = torch.empty(n, device=dev)
            parts = [torch.empty(n // world, device=dev) for _ in range(world)]
            try:
                _call(op, x, parts, out)
            except (RuntimeError, ValueError, NotImplementedError):
                skipped.add(op)
                break
            samples = []
            for _ in range(reps):
                dist.barrier()
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                _call(op, x, parts, out)
                if device == "cuda":
                    torch.cuda.synchronize()
                samples.append(time.perf_counter() - t0)
            a = np.asarray(samples)
            results.append(
                (op, n * 4, float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)), reps)
            )
    queue.put((rank, results, sorted(skipped)))
    dist.destroy_process_group()


def bench_collectives(
    device: str, world: int, sizes: list[int], reps: int = 10
) -> tuple[list[dict[str, Any]], list[str]]:
    """Time every collective over ``world`` local ranks for each message size (bytes).

    Returns (rows, skipped ops). Each row: op, bytes (the full fp32 tensor on
    one rank), gpus (ranks), time_s (the slowest rank's median, s),
    time_p10_s, time_p90_s, reps, impl (``gloo`` or ``nccl``), dtype fp32.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, device, sizes, reps, queue)) for r in range(world)]
    for p in procs:
        p.start()
    per_rank = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    impl = "nccl" if device == "cuda" else "gloo"
    by_key: dict[tuple[str, int], list[tuple[float, float, float, int]]] = {}
    for _, results, _ in per_rank:
        for op, nbytes, med, p10, p90, r in results:
            by_key.setdefault((op, nbytes), []).append((med, p10, p90, r))
    rows = []
    for (op, nbytes), vals in sorted(by_key.items()):
        med, p10, p90, r = max(vals)
        rows.append(
            {"op": op, "bytes": nbytes, "gpus": world, "time_s": med, "time_p10_s": p10, "time_p90_s": p90}
            | {"reps": r, "impl": impl, "dtype": "fp32"}
        )
    skipped = sorted({op for _, _, s in per_rank for op in s})
    return rows, skipped
