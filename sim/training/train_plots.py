"""Pictures of a simulated training step: the pipeline schedule, the step-time breakdown, memory per GPU,
and a Chrome trace (Perfetto) of the schedule.

matplotlib is imported only when a plot is drawn (`sim.serving.plots` shares its Agg-only figure handling).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from moesim.model.hardware import GIB
from moesim.sim.common import figure_class, write_trace_json
from moesim.sim.training.train_result import TrainResult

_COLOURS = {"F": "#4C72B0", "B": "#DD8452", "W": "#55A868", "FB": "#8172B3"}
_MEMORY = (
    "params", "grads", "master_weights", "optimizer_states", "activations", "working", "comm_buffers", "reserved"
)  # fmt: skip


def write_train_plots(res: TrainResult, out: Path) -> list[Path]:
    """``schedule.png`` (the first step's tasks per pipeline rank) and ``breakdown.png`` (step time and memory)."""
    figure = figure_class()
    files = []
    tasks = res.tasks
    first = tasks[tasks["end_s"] <= float(res.steps["end_s"].iloc[0]) + 1e-12]
    fig = figure(figsize=(11.0, 1.2 + 0.35 * res.setup.pp), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for kind, part in first.groupby("kind"):
        for rank, rows in part.groupby("rank"):
            ax.broken_barh(
                list(zip(rows["start_s"], rows["end_s"] - rows["start_s"], strict=True)),
                (int(rank) - 0.4, 0.8),
                facecolors=_COLOURS.get(str(kind), "grey"),
                edgecolor="white",
                linewidth=0.2,
            )
    from matplotlib.patches import Patch

    names = {"F": "forward", "B": "backward", "W": "weight gradients", "FB": "forward + backward pair"}
    handles = [Patch(color=c, label=names[k]) for k, c in _COLOURS.items() if (first["kind"] == k).any()]
    ax.set_yticks(range(res.setup.pp))
    ax.set_yticklabels([f"rank {r}" for r in range(res.setup.pp)])
    ax.invert_yaxis()
    ax.set_xlabel("time in step (s)")
    ax.set_title(f"{res.setup.label()}: one step, {res.setup.microbatches} micro-batches per pipeline")
    ax.legend(handles=handles, loc="upper right", fontsize=8, ncol=4)
    fig.tight_layout()
    path = out / "schedule.png"
    fig.savefig(path)
    files.append(path)

    fig = figure(figsize=(11.0, 4.5), dpi=110)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    b = res.summary["breakdown"]
    left = 0.0
    for key, value in b.items():
        ax1.barh([0], [value], left=left, label=f"{key} {value:.3g} s")
        left += value
    ax1.set_yticks([])
    ax1.set_xlabel("seconds per step (mean over pipeline ranks)")
    ax1.set_title(f"step {res.summary['step_s']:.3g} s, MFU {res.summary['mfu']:.1%}")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8, ncol=2)
    mem = res.memory
    bottom = np.zeros(len(mem))
    for key in _MEMORY:
        vals = mem[key].to_numpy() / GIB
        if vals.any():
            ax2.bar(mem["rank"], vals, bottom=bottom, label=key)
            bottom += vals
    cap = res.setup.cluster.gpu.memory_gib
    ax2.axhline(cap, color="red", linestyle="--", linewidth=1, label=f"{cap:g} GiB")
    ax2.set_xlabel("pipeline rank")
    ax2.set_ylabel("GiB per GPU")
    ax2.set_title(res.summary["memory_verdict"][:60])
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = out / "breakdown.png"
    fig.savefig(path)
    files.append(path)
    return files


def write_train_trace(res: TrainResult, path: str | Path, force: bool = False) -> dict[str, int]:
    """Write the simulated steps as a Chrome trace: one thread per pipeline rank, one for its data-parallel link.

    Each task is a slice (``F mb3 s5``) whose args hold the seconds of its
    parts; data-parallel collectives (gradient reductions, parameter
    gathers) and the optimizer are slices on the rank's ``DP link`` thread.
    Written atomically; an existing ``path`` is replaced only when moesim wrote it, or with ``force``.
    """
    events: list[dict] = []
    pid = 1
    events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": res.setup.label()}})
    for r in range(res.setup.pp):
        for tid, name in ((2 * r + 1, f"rank {r} compute"), (2 * r + 2, f"rank {r} DP link")):
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})

    def us(x: float) -> float:
        return round(float(x) * 1e6, 3)

    for t in res.tasks.itertuples(index=False):
        name = f"{t.kind} mb{t.mb} s{t.stage}" + (f" + B mb{t.mb2} s{t.stage2}" if t.kind == "FB" else "")
        args = {k: float(getattr(t, k)) for k in ("compute_s", "straggler_s", "ep_comm_s", "tp_comm_s", "dp_comm_s")}
        events.append(
            {"ph": "X", "name": name, "cat": t.kind, "pid": pid, "tid": 2 * int(t.rank) + 1,
             "ts": us(t.start_s), "dur": us(t.end_s - t.start_s), "args": args}
        )  # fmt: skip
    for c in res.comm.itertuples(index=False):
        events.append(
            {"ph": "X", "name": str(c.what), "cat": "dp", "pid": pid, "tid": 2 * int(c.rank) + 2,
             "ts": us(c.start_s), "dur": us(c.end_s - c.start_s),
             "args": {k: float(getattr(c, k)) for k in ("nic_s", "nic_lost_s") if hasattr(c, k)}}
        )  # fmt: skip
    opt = res.summary["breakdown"]["optimizer"]
    for s in res.steps.itertuples(index=False):
        for r in range(res.setup.pp):
            if opt > 0 and math.isfinite(opt):
                events.append(
                    {"ph": "X", "name": "optimizer", "cat": "opt", "pid": pid, "tid": 2 * r + 1,
                     "ts": us(s.end_s - opt), "dur": us(opt)}
                )  # fmt: skip
    doc = {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"generator": "moesim train"}}
    write_trace_json(doc, Path(path), force)
    return {"events": len(events), "tasks": len(res.tasks)}
