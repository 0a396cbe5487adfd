"""The training simulator's Python API: a training scenario in, step time, breakdown, memory and cost out.

    from moesim.sim.training.train import run
    res = run("examples/train-mixtral-8x7b-h100.yaml")
    res.summary["step_s"], res.summary["breakdown"], res.tasks

One step, as simulated (SimPy, `sim.training.pipeline`):

1. ZeRO-1/2 parameter all-gather over data parallelism (the previous
   optimizer step's result): each stage's first forward waits for its
   gather (``overlap_param_gather``), or every forward waits for all of them;
2. the pipeline schedule's forwards and backwards of every micro-batch, each
   task's time from `sim.training.train_cost` (compute, straggler, all-to-all and
   tensor-parallel communication, chunk-pair overlap), activations sent
   between ranks; ZeRO-2 reduce-scatters and ZeRO-3 gathers run beside each
   task on their own stream;
3. ZeRO-0/1 gradient reduction over data parallelism (all-reduce, or
   reduce-scatter), layer by layer as the last micro-batch's backward frees
   each layer's gradients (``overlap_grad_reduce``), else after it;
4. a global synchronisation (the gradient norm for clipping), then the Adam
   step on each GPU's shard (memory-bound).

NIC contention (`nic_contention`, breakdown ``nic_contention``): on a rail-optimised
HGX node each GPU has its own NIC, and both a GPU's data-parallel traffic (NCCL's
hierarchical ring sends the node-level part of the collective over the GPU's own
NIC, `model.ops.collective`) and its expert-parallel inter-node traffic (DeepEP
sends a token's copy for another node over the GPU's own RDMA NIC,
deepseek-ai/DeepEP@README.md) use it. Where the parameter gathers (step 1) or the
gradient buckets (step 3) overlap tasks whose all-to-alls cross nodes, both share
the NIC fairly (`nic_contention`): the buckets and gathers take longer, and so
does each overlapped task's EP communication (hidden like the rest of it inside a
chunk pair). Only bytes that cross nodes count: a data-parallel group inside a
node (``dp <= gpus_per_node / tp``, `train_cost.dp_collective_parts`) or EP
inside a node puts nothing on the NIC. The EP side's NIC time is each
all-to-all's ``inter_bytes`` at the NIC's bandwidth (`train_cost.ep_nic_seconds`).
A probe of the step without contention finds which tasks overlap which transfers;
the step is then run with those tasks' EP lengthened, and the buckets lengthen by
what they lose to the tasks they overlap in that run (one fixed-point iteration,
never faster than without contention). ``nic_contention`` in the breakdown is the
exposed time it adds (EP seconds of the tasks plus the buckets' later end; the
parameter gathers' own lengthening stays where their wait is counted, ``dp_comm`` or
``pp_bubble``), averaged over pipeline ranks like the other entries. ZeRO-2/3's per-task reduce-scatters and gathers
(beside each task on their own stream) do not contend in this model.

EP communication overlap: ``overlap: chunk_pairs`` makes DualPipe's ``FB`` tasks
(a forward and a backward chunk of two micro-batches) hide each one's all-to-all
and TP communication under the other's computation, on the SMs communication
leaves (``comm_sm_fraction``). ``overlap: ep_a2a`` is Megatron-Core's EP A2A overlap
(``--overlap-moe-expert-parallel-comm``, "combined 1F1B":
NVIDIA/Megatron-LM@megatron/core/pipeline_parallel/combined_1f1b.py, docs.nvidia.com/
megatron-core/developer-guide/nightly/user-guide/features/moe_a2a_overlap.html): in
the steady phase of interleaved 1F1B (or every micro-batch at pp 1) a backward and
the next forward run as one ``FB`` task (`pipeline.combined_1f1b`; the first forward
and last backward alone), each one's dispatch and combine hidden under the other's
computation on the SMs communication leaves; TP collectives stay exposed.
Megatron's ``--delay-wgrad-compute`` (weight gradients after the combine) is not
modelled separately: the pair's backward includes its weight gradients.

A calibrated cost model is used with ``extrapolate`` on (training's layers
are larger than most kernel tables reach; see `CalibratedCostModel`).
Every data-parallel replica runs the same program; the pipeline simulated is
the one with the busiest expert-parallel GPUs (skewed routing makes every
all-to-all wait for the busiest GPU of its group). What is not modelled:
the kernels' slowdown from communication sharing the SMs outside chunk pairs,
contention on the NIC between EP and pipeline sends or ZeRO-2/3 per-task traffic,
congestion in the network beyond the GPU's own NIC, and per-micro-batch variation of routing.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import simpy

from moesim.model import CostModel, Layout, RooflineCostModel
from moesim.model.batch import Batch
from moesim.model.cap import usd_per_gpu_second
from moesim.model.dtypes import DTYPE_BYTES
from moesim.model.errors import MoesimError
from moesim.model.hardware import GIB, make_cluster
from moesim.model.ops import decompose
from moesim.sim.fidelity import training_check
from moesim.sim.training.pipeline import PipelineRun, StageCost, TaskRecord, combined_1f1b, run_pipeline, schedule
from moesim.sim.training.train_cost import (
    UnitCosts,
    chunk_units,
    dp_collective_parts,
    dp_collective_seconds,
    optimizer_seconds,
    p2p_seconds,
    precision_of,
    unit_costs,
)
from moesim.sim.training.train_memory import KINDS
from moesim.sim.training.train_result import TrainResult
from moesim.sim.training.train_scenario import (
    TrainScenario,
    TrainSetup,
    build_training,
    load_train_scenario,
    parse_train_scenario,
)

#: Breakdown keys, in the order they add up to the step time (seconds per step, averaged over pipeline ranks).
BREAKDOWN = (
    "compute", "straggler", "ep_comm", "tp_comm", "pp_bubble", "dp_comm", "nic_contention", "optimizer",
)  # fmt: skip


def load(
    scenario: str | Path | TrainScenario | dict,
    cost_model: CostModel | None = None,
    base_dir: str | Path | None = None,
) -> TrainSetup:
    """Validate and build a training scenario given as a path, a mapping or a `TrainScenario`.

    Relative paths in it (routing file, cost model) resolve against ``base_dir``: by default the
    file's folder for a path, the working directory otherwise.
    """
    if isinstance(scenario, (str, Path)):
        sc, base = load_train_scenario(scenario), Path(scenario).parent
    elif isinstance(scenario, dict):
        sc, base = parse_train_scenario(scenario), Path(".")
    else:
        sc, base = scenario, Path(".")
    return build_training(sc, Path(base_dir) if base_dir is not None else base, cost_model)


def _stage_costs(setup: TrainSetup, uc: UnitCosts, cm: CostModel) -> tuple[list[StageCost], list[list[int]]]:
    """Per pipeline stage, its `StageCost` and its units."""
    stages = setup.pp * (1 if setup.schedule == "dualpipe" else setup.virtual)
    units = [list(u) for u in setup.stage_units] or chunk_units(setup.model.num_layers, stages)
    pbytes = DTYPE_BYTES[setup.scenario.precision.params]
    gbytes = DTYPE_BYTES[setup.scenario.precision.grads]
    nic_frac = uc.ep_nic_frac if uc.ep_nic_frac is not None else np.zeros(uc.units)
    out = []
    for us in units:
        dense, expert = float(uc.dense_params[us].sum()), float(uc.expert_params[us].sum())
        dp_f = dp_b = 0.0
        if setup.zero >= 2:
            dp_b = dp_collective_seconds(setup, cm, "reduce_scatter", dense * gbytes, expert * gbytes)
        if setup.zero == 3:
            gather = dp_collective_seconds(setup, cm, "all_gather", dense * pbytes, expert * pbytes)
            dp_f, dp_b = gather, dp_b + gather
        out.append(
            StageCost(
                tuple(uc.f[us].sum(axis=0)),  # type: ignore[arg-type]
                tuple(uc.b[us].sum(axis=0)),  # type: ignore[arg-type]
                tuple(uc.w[us].sum(axis=0)),  # type: ignore[arg-type]
                dp_f,
                dp_b,
                float(uc.act_bytes[us].sum()),
                *(float((cost[us, 2] * nic_frac[us]).sum()) for cost in (uc.f, uc.b, uc.w)),
                float(uc.a2a_exposed[us].sum()) if uc.a2a_exposed is not None else 0.0,
            )
        )
    return out, units


def nic_contention(
    tasks: list[tuple[float, float, float]], flows: list[tuple[float, float, float]]
) -> tuple[list[float], list[float]]:
    """Seconds each task's EP traffic and each data-parallel transfer lose sharing one GPU's NIC.

    ``tasks``: (start s, end s, NIC-busy s of its EP all-to-alls); ``flows``: (start s, end s, NIC-busy s) of the
    data-parallel transfers on the same GPU. Both sides are taken to spread their NIC-busy seconds evenly over their
    span. Two transfers that each would fill the link share it fairly (the fluid max-min fair-share model of one
    link): NCCL and DeepEP each drive the GPU's own NIC over RDMA, and nothing prioritises one over the other by
    default; DeepEP's README ("Traffic isolation", deepseek-ai/DeepEP@README.md) recommends putting expert-parallel
    and other traffic on separate InfiniBand virtual lanes "to prevent interference", and even then the lanes share
    the port's wire by weighted round-robin arbitration (equal weights: equal shares). While both run, each moves at
    half the rate, so if, in their common window, the task has ``a`` and the
    flow ``b`` NIC-busy seconds, both finish ``min(a, b)`` seconds later (the smaller one waits for as many bytes of
    the other as it has itself; the larger one for all of the smaller's). Summed over the disjoint windows (a GPU
    runs one task and one data-parallel transfer at a time); zero where nothing overlaps or either side has no
    inter-node bytes. Returns (per task, per flow) lost seconds, each at most its own NIC-busy seconds.
    """
    t_lost = [0.0] * len(tasks)
    f_lost = [0.0] * len(flows)
    for i, (ts, te, tn) in enumerate(tasks):
        if tn <= 0 or te <= ts:
            continue
        for j, (fs, fe, fn) in enumerate(flows):
            if fn <= 0 or fe <= fs:
                continue
            window = min(te, fe) - max(ts, fs)
            if window <= 0:
                continue
            d = min(tn * window / (te - ts), fn * window / (fe - fs))
            t_lost[i] += d
            f_lost[j] += d
    return t_lost, f_lost


def _rank_stages(setup: TrainSetup, stages: int) -> list[list[int]]:
    """Stages each pipeline rank runs."""
    pp = setup.pp
    if setup.schedule == "dualpipe":
        return [sorted({r, pp - 1 - r}) for r in range(pp)]
    return [[s for s in range(stages) if s % pp == r] for r in range(pp)]


def _memory(setup: TrainSetup, uc: UnitCosts, units: list[list[int]], run: PipelineRun) -> pd.DataFrame:
    """Bytes per GPU of each pipeline rank by component."""
    sc, pr = setup.scenario, setup.scenario.precision
    pb, gb = DTYPE_BYTES[pr.params], DTYPE_BYTES[pr.grads]
    mb = 0.0 if pr.master == "none" or pr.params == "fp32" else DTYPE_BYTES[pr.master]
    sb = 2 * DTYPE_BYTES[pr.optimizer_states]
    z, dp, edp = setup.zero, setup.grad_dp, setup.edp
    rows = []
    for r, stages in enumerate(_rank_stages(setup, len(units))):
        us = [u for s in stages for u in units[s]]
        dense, expert = float(uc.dense_params[us].sum()), float(uc.expert_params[us].sum())

        def shard(nbytes_per: float, stage: int, dense: float = dense, expert: float = expert) -> float:
            return nbytes_per * (dense / (dp if z >= stage else 1) + expert / (edp if z >= stage else 1))

        row = {
            "rank": r,
            "params": shard(pb, 3),
            "grads": shard(gb, 2),
            "master_weights": shard(mb, 1),
            "optimizer_states": shard(sb, 1),
            "activations": run.peak_act_bytes[r],
            "working": float(uc.work_bytes[us].max()),
            "comm_buffers": uc.a2a_bytes if setup.model.is_moe and setup.ep > 1 else 0.0,
            "reserved": sc.mem_reserved_gib * GIB,
        }
        if z == 3:  # the gathered layers: the one running and the one prefetched
            per_unit = (uc.dense_params[us] + uc.expert_params[us]) * pb
            row["params"] += 2.0 * float(np.sort(per_unit)[-2:].sum() if len(us) > 1 else per_unit.sum())
        row["total"] = sum(v for k, v in row.items() if k != "rank")
        row["inflight_microbatches"] = run.peak_inflight[r]
        # the peak's activations by kind: the rank's stages' mix (exact when its stages keep the same mix)
        if uc.act_kinds is not None:
            mix = uc.act_kinds[us].sum(axis=0)
            share = mix / mix.sum() if mix.sum() > 0 else mix
            for kind, x in zip(KINDS, share, strict=True):
                row[f"act_{kind}"] = float(x * run.peak_act_bytes[r])
        if uc.host_bytes is not None:
            per_mb = float(uc.host_bytes[us].sum()) / max(1, len(stages))
            row["host_offloaded"] = per_mb * run.peak_inflight[r]
        rows.append(row)
    return pd.DataFrame(rows)


def _model_flops_per_token(setup: TrainSetup) -> float:
    """Forward FLOP per token of the whole model: activated experts only, causal attention, LM head on every token."""
    m, seq = setup.model, setup.scenario.batch.seq_len
    gpu = setup.cluster.gpu
    one = make_cluster(gpu, gpus_per_node=1, nodes=1, name="one device")
    ops = decompose(m, Batch.prefill(1, seq), Layout(), one, precision_of(setup), mla_absorb=False)
    body = sum(op.flops * op.count for op in ops if op.group != "head")
    return body / seq + 2.0 * m.hidden_size * m.vocab_size


def simulate_training(setup: TrainSetup, cost_model: CostModel | None = None) -> TrainResult:
    """Simulate ``setup.scenario.steps`` optimizer steps (see the module docstring)."""
    t_wall = time.perf_counter()
    sc = setup.scenario
    cm = cost_model or setup.cost_model or RooflineCostModel()
    if hasattr(cm, "with_extrapolation") and not getattr(cm, "extrapolate", True):
        cm = cm.with_extrapolation()  # a calibrated model: keep the largest measured shapes' efficiency beyond them
    uc = unit_costs(setup, cm)
    costs, units = _stage_costs(setup, uc, cm)
    sched = schedule(setup.schedule, setup.pp, setup.microbatches, setup.virtual)
    if sc.overlap == "ep_a2a":  # Megatron's combined 1F1B: steady-phase backward + next forward as one pair
        sched = combined_1f1b(sched if setup.pp > 1 else schedule("1f1b", 1, setup.microbatches))
    p2p = p2p_seconds(setup, cm, uc.tokens_per_gpu) if setup.pp > 1 else 0.0
    pb, gb = DTYPE_BYTES[sc.precision.params], DTYPE_BYTES[sc.precision.grads]
    rank_stages = _rank_stages(setup, len(units))
    # end-of-step collectives per unit: ZeRO-0 all-reduce, ZeRO-1 reduce-scatter; ZeRO-1/2 parameter gather
    grad_kind = {0: "all_reduce", 1: "reduce_scatter"}.get(setup.zero)
    red, red_nic = (
        np.array([
            dp_collective_parts(setup, cm, grad_kind, uc.dense_params[u] * gb, uc.expert_params[u] * gb)
            if grad_kind
            else (0.0, 0.0)
            for u in range(uc.units)
        ]).reshape(-1, 2).T.tolist()
    )  # fmt: skip
    gather, gather_nic = (
        np.array([
            dp_collective_parts(setup, cm, "all_gather", uc.dense_params[u] * pb, uc.expert_params[u] * pb)
            if setup.zero in (1, 2)
            else (0.0, 0.0)
            for u in range(uc.units)
        ]).reshape(-1, 2).T.tolist()
    )  # fmt: skip
    opt = []
    for stages in rank_stages:
        us = [u for s in stages for u in units[s]]
        shard = 1 if setup.zero == 0 else None
        local = float(
            uc.dense_params[us].sum() / (shard or setup.grad_dp) + uc.expert_params[us].sum() / (shard or setup.edp)
        )
        opt.append(optimizer_seconds(setup, cm, local))
    nic_possible = any(max(c.nic_f, c.nic_b, c.nic_w) > 0 for c in costs) and (any(red_nic) or any(gather_nic))

    def one_step(
        env: simpy.Environment,
        start: float,
        rows: list[dict[str, Any]],
        ep_extra: dict | None = None,
        gather_extra: dict[tuple[int, int], float] | None = None,
    ) -> tuple[PipelineRun, list[float], list[float]]:
        """One step's pipeline and data-parallel traffic from ``start``; rows of the DP link appended to ``rows``.

        Returns the run, per rank when its last gradient bucket ended, and the same without NIC contention.
        """
        links = [simpy.Resource(env, capacity=1) for _ in range(setup.pp)]

        def on_link(r: int, what: str, dur: float, nic: float, lost: float) -> Any:
            with links[r].request() as req:
                yield req
                t0 = env.now
                yield env.timeout(dur)
                rows.append(
                    {"rank": r, "what": what, "start_s": t0, "end_s": env.now, "nic_s": nic, "nic_lost_s": lost}
                )

        gathered: dict[tuple[int, int], simpy.Event] = {}
        if setup.zero in (1, 2) and any(gather):
            all_done = []
            for r, stages in enumerate(rank_stages):
                for s in stages:
                    dur = sum(gather[u] for u in units[s]) + (gather_extra or {}).get((r, s), 0.0)
                    nic = sum(gather_nic[u] for u in units[s])
                    lost = (gather_extra or {}).get((r, s), 0.0)
                    gathered[(r, s)] = env.process(on_link(r, f"param all-gather stage {s}", dur, nic, lost))
                    all_done.append(gathered[(r, s)])
            if not sc.layout.overlap_param_gather:
                barrier = simpy.AllOf(env, all_done)
                gathered = dict.fromkeys(gathered, barrier)  # type: ignore[arg-type]

        def ready(r: int, s: int, gathered: dict = gathered) -> simpy.Event | None:
            return gathered.get((r, s))

        run = run_pipeline(
            sched, costs, p2p, overlap=sc.overlap != "none", sm_frac=sc.comm_sm_fraction, env=env,
            ready=ready if gathered else None, start=start, ep_extra=ep_extra, hide_tp=sc.overlap == "chunk_pairs",
        )  # fmt: skip
        # gradient reduction, bucket per unit, as the last backward of each stage frees its units' gradients;
        # each rank's data-parallel link takes the buckets in order (after its parameter gathers); a bucket
        # lengthens by what it loses to the EP traffic of the tasks it overlaps on the NIC (`nic_contention`)
        rank_done = [run.rank_end[r] for r in range(setup.pp)]
        done0 = list(rank_done)
        if grad_kind:
            free = [start] * setup.pp
            for row in rows:
                if row["start_s"] >= start:
                    free[row["rank"]] = max(free[row["rank"]], row["end_s"])
            free0 = list(free)
            by_rank: dict[int, list[tuple[float, float, float]]] = {}
            for t in run.tasks:
                by_rank.setdefault(t.rank, []).append((t.start, t.end, t.ep_nic))
            buckets = []
            for (r, s), rec in run.last_grad_task.items():
                us = list(reversed(units[s]))  # backward order: last layer first
                weights = np.array([uc.b[u].sum() + uc.w[u].sum() for u in us])
                frac = np.cumsum(weights) / weights.sum() if weights.sum() > 0 else np.ones(len(us))
                for u, x in zip(us, frac, strict=True):
                    at = rec.start + x * (rec.end - rec.start) if sc.layout.overlap_grad_reduce else run.rank_end[r]
                    buckets.append((at, r, u))
            for at, r, u in sorted(buckets):
                t0 = max(at, free[r])
                lost = 0.0
                if nic_possible and red_nic[u] > 0:
                    lost = sum(nic_contention(by_rank.get(r, []), [(t0, t0 + red[u], red_nic[u])])[1])
                free[r] = t0 + red[u] + lost
                free0[r] = max(at, free0[r]) + red[u]
                rows.append({
                    "rank": r, "what": f"grad {grad_kind} unit {u}", "start_s": t0, "end_s": free[r],
                    "nic_s": red_nic[u], "nic_lost_s": lost,
                })  # fmt: skip
                rank_done[r] = max(rank_done[r], free[r])
                done0[r] = max(done0[r], free0[r])
        return run, rank_done, done0

    env = simpy.Environment()
    comm_rows: list[dict[str, Any]] = []
    all_tasks: list[TaskRecord] = []
    step_rows: list[dict[str, float]] = []
    sums = dict.fromkeys(BREAKDOWN, 0.0)
    run: PipelineRun | None = None
    ep_extra: dict | None = None
    gather_extra: dict[tuple[int, int], float] | None = None
    if nic_possible:  # a probe step without contention finds which tasks overlap which DP transfers on the NIC
        probe_rows: list[dict[str, Any]] = []
        probe, _, _ = one_step(simpy.Environment(), 0.0, probe_rows)
        ep_extra, gather_extra = {}, {}
        for r in range(setup.pp):
            mine = [t for t in probe.tasks if t.rank == r]
            flows = [row for row in probe_rows if row["rank"] == r]
            t_lost, f_lost = nic_contention(
                [(t.start, t.end, t.ep_nic) for t in mine], [(x["start_s"], x["end_s"], x["nic_s"]) for x in flows]
            )
            ep_extra.update({t.key: d for t, d in zip(mine, t_lost, strict=True) if d > 0})
            for x, d in zip(flows, f_lost, strict=True):
                if x["what"].startswith("param all-gather stage ") and d > 0:
                    gather_extra[(r, int(x["what"].rsplit(" ", 1)[1]))] = d

    for step in range(sc.steps):
        start = env.now
        run, rank_done, done0 = one_step(env, start, comm_rows, ep_extra, gather_extra)
        sync = max(rank_done)
        end = sync + max(opt)
        if end > env.now:
            env.run(until=end)
        for r in range(setup.pp):
            mine = [t for t in run.tasks if t.rank == r]
            parts = np.array([t.parts for t in mine]).sum(axis=0)
            busy = float(parts.sum())
            lost = float(sum(t.nic_s for t in mine))
            sums["compute"] += parts[0]
            sums["straggler"] += parts[1]
            sums["ep_comm"] += parts[2] - lost
            sums["tp_comm"] += parts[3]
            first = min(t.start for t in mine)
            gather_wait = first - start if r == 0 else 0.0
            sums["dp_comm"] += parts[4] + max(0.0, done0[r] - run.rank_end[r]) + gather_wait
            sums["nic_contention"] += lost + (rank_done[r] - max(done0[r], run.rank_end[r]))
            sums["pp_bubble"] += (run.rank_end[r] - start) - busy - gather_wait + (sync - rank_done[r])
            sums["optimizer"] += end - sync
        all_tasks += run.tasks
        step_rows.append({"step": step, "start_s": start, "end_s": end})
    assert run is not None
    n = sc.steps * setup.pp
    breakdown = {k: v / n for k, v in sums.items()}
    steps = pd.DataFrame(step_rows)
    step_s = float((steps["end_s"] - steps["start_s"]).mean())
    memory = _memory(setup, uc, units, run)
    tasks = pd.DataFrame(
        [
            {
                "rank": t.rank, "kind": t.kind, "mb": t.mb, "stage": t.s, "mb2": t.mb2, "stage2": t.s2,
                "start_s": t.start, "end_s": t.end, "compute_s": t.parts[0], "straggler_s": t.parts[1],
                "ep_comm_s": t.parts[2], "tp_comm_s": t.parts[3], "dp_comm_s": t.parts[4],
                "ep_nic_s": t.ep_nic, "nic_contention_s": t.nic_s,
            }
            for t in all_tasks
        ]
    )  # fmt: skip
    summary = _summary(setup, uc, step_s, breakdown, memory, cm)
    summary["wall_s"] = time.perf_counter() - t_wall
    return TrainResult(summary, setup, tasks, memory, pd.DataFrame(comm_rows), steps, uc)


def _dominant(row: pd.Series, comps: list[str]) -> str:
    """What dominates the fullest GPU's memory, e.g. ``activations 52% (expert_fc1_in 31%)``."""
    total = float(row["total"])
    if total <= 0:
        return ""
    top = max(comps, key=lambda c: float(row[c]))
    text = f"{top} {float(row[top]) / total:.0%}"
    acts = {k: float(row[f"act_{k}"]) for k in KINDS if f"act_{k}" in row}
    if top == "activations" and acts and sum(acts.values()) > 0:
        k = max(acts, key=lambda x: acts[x])
        text += f" ({k} {acts[k] / total:.0%} of the total)"
    return text


def _summary(
    setup: TrainSetup, uc: UnitCosts, step_s: float, breakdown: dict[str, float], memory: pd.DataFrame, cm: CostModel
) -> dict[str, Any]:
    sc, gpu, gpus = setup.scenario, setup.cluster.gpu, setup.gpus
    tokens = setup.tokens_per_step
    f_tok = _model_flops_per_token(setup)
    model_flops = 3.0 * f_tok * tokens
    executed = float(uc.flops.sum()) * setup.microbatches * setup.tp * setup.cp * setup.dp
    gemm_dtype = precision_of(setup).gemm_compute_dtype(gpu.peak_flops)
    # the step per decoder layer and micro-batch a pipeline rank runs, ms (`sim.fidelity.training_check`)
    work_ms = step_s / (setup.microbatches * setup.model.num_layers / setup.pp) * 1e3
    fullest = memory.loc[memory["total"].idxmax()]
    capacity = gpu.memory_bytes
    fits = bool(fullest["total"] <= capacity)
    short = (fullest["total"] - capacity) / GIB
    where = f"{gpu.key} ({gpu.memory_gib:g} GiB)"
    verdict = (
        f"fits: {fullest['total'] / GIB:.1f} GiB of {where} on pipeline rank {int(fullest['rank'])}"
        if fits
        else f"does not fit, by {short:.1f} GiB: pipeline rank {int(fullest['rank'])} needs "
        f"{fullest['total'] / GIB:.1f} GiB of {where}"
    )
    try:
        per_s, basis = usd_per_gpu_second(gpu, setup.assumptions)
    except MoesimError as exc:
        per_s, basis = math.nan, f"unpriced: {exc.one_line()}"
    gpu_s_per_tok = gpus * step_s / tokens
    comps = ["params", "grads", "master_weights", "optimizer_states", "activations", "working", "comm_buffers"]
    return {
        "name": sc.name,
        "model": setup.model.name,
        "cluster": setup.cluster.name,
        "gpu": gpu.key,
        "gpus": gpus,
        "layout": setup.label(),
        "microbatches": setup.microbatches,
        "tokens_per_step": tokens,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "tokens_per_s_per_gpu": tokens / step_s / gpus,
        "mfu": model_flops / (step_s * gpus * gpu.peak("bf16")),
        "s_mfu": executed / (step_s * gpus * gpu.peak(gemm_dtype)),
        "s_mfu_peak_dtype": gemm_dtype,
        "model_tflops_per_gpu": model_flops / step_s / gpus / 1e12,
        "model_flops_per_token": 3.0 * f_tok,
        "mem_per_gpu_gib": float(fullest["total"] / GIB),
        "mem_by_component_gib": {c: float(fullest[c] / GIB) for c in comps},
        "activations_by_kind_gib": {
            k: float(fullest[f"act_{k}"] / GIB) for k in KINDS if f"act_{k}" in fullest and fullest[f"act_{k}"] > 0
        },
        "memory_dominant": _dominant(fullest, comps),
        "fits": fits,
        "memory_verdict": verdict,
        "breakdown": {k: float(v) for k, v in breakdown.items()},
        "token_drop_frac": uc.drop_frac,
        "gpu_hours_per_btok": gpu_s_per_tok * 1e9 / 3600.0,
        "usd_per_btok": gpu_s_per_tok * 1e9 * per_s,
        "cost_basis": basis,
        "cost_model": getattr(cm, "name", type(cm).__name__),
        # how far off predictions of this kind were against published runs (`sim.fidelity`)
        "work_ms_per_layer_microbatch": work_ms,
        "checked_against": training_check(getattr(cm, "name", None), work_ms),
        # how each backward and fp8-cast kernel was timed: its own table, or the assumed ratio (`train_cost`)
        "kernel_sources": uc.kernel_sources or {},
    }


def run(
    scenario: str | Path | TrainScenario | dict,
    *,
    cost_model: CostModel | None = None,
    base_dir: str | Path | None = None,
) -> TrainResult:
    """Validate, build and simulate a training scenario (see the module docstring and `load`)."""
    setup = load(scenario, cost_model, base_dir)
    return simulate_training(setup, cost_model)


#: What `write_outputs` writes; a folder holding only these (and summary.json) is an earlier output.
OUTPUT_FILES = frozenset({"summary.json", "tasks.parquet", "memory.csv", "schedule.png", "breakdown.png"})


def is_output(folder: Path) -> bool:
    """Whether ``folder`` looks like a `write_outputs` folder written before moesim marked its outputs."""
    names = {p.name for p in folder.iterdir()}
    return "summary.json" in names and names <= OUTPUT_FILES


def write_outputs(res: TrainResult, out: str | Path, plots: bool = True, force: bool = False) -> list[Path]:
    """Write ``summary.json``, ``tasks.parquet``, ``memory.csv`` and plots into ``out`` (all or nothing).

    Through `model.outputs.output_dir`: an existing ``out`` is replaced only when it is an earlier
    ``moesim train`` output (or empty, or ``force``; never a dangerous folder).
    """
    from moesim.model.outputs import output_dir
    from moesim.sim.common import clean_json

    out = Path(out)
    with output_dir(out, "train", force=force, legacy=is_output) as tmp:
        (tmp / "summary.json").write_text(clean_json(res.summary) + "\n")
        res.tasks.to_parquet(tmp / "tasks.parquet", index=False)
        res.memory.to_csv(tmp / "memory.csv", index=False)
        files = [tmp / "summary.json", tmp / "tasks.parquet", tmp / "memory.csv"]
        if plots:
            from moesim.sim.training.train_plots import write_train_plots

            files += write_train_plots(res, tmp)
    return [out / f.name for f in files]
