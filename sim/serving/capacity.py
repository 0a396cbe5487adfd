"""Replica memory capacity and the checks that a workload's requests can ever be served.

`replica_capacity` says what one replica of a pool holds: KV-cache blocks and tokens left after
weights and activations (`model.memory.estimate_memory`), offloading routed experts to host
memory when the scenario allows it. `check_requests_fit` refuses a workload holding a request
no replica could ever serve (over the model's context, over one replica's KV cache, or an
unchunked prompt over the step budget): such a request would otherwise wait forever; the DES
and the analytical engine share it. `make_timer` builds a pool's `StepTimer` from its capacity; inside
`shared_timers` the timers of the same replica and seed share their routing banks, tables and step-cost memo
across runs (`sim.serving.steptime.TimerShare`: the same results, bit for bit, without drawing them again).

Units: tokens, blocks, bytes (GiB where a name says so).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from moesim.model import Batch, estimate_memory
from moesim.model.errors import MoesimError
from moesim.model.memory import KvGroups
from moesim.sim.serving.host import engine_profile
from moesim.sim.serving.kernels import pool_cost_model
from moesim.sim.serving.scenario import PCIE_BW, Built, Pool
from moesim.sim.serving.steptime import BankStore, Offload, StepTimer, TimerShare


@dataclass(frozen=True)
class Capacity:
    """What one replica's memory holds.

    Attributes:
        kv_blocks: KV-cache blocks of the replica (all its attention-DP groups).
        kv_tokens: the same in tokens.
        weight_gib: weights resident on the fullest GPU, GiB.
        offload: the expert cache when experts are offloaded (None: all resident).
        verdict: one line on how memory is used.
        kv_groups: how the layers share the blocks (`model.memory.KvGroups`: chunked-local layers of Llama 4 hold
            their chunk only, gpt-oss's sliding-window layers their window); None: one block per ``block_size``
            tokens of a request, every layer full length.
            With groups, ``kv_blocks`` counts pages of one group and ``kv_tokens`` the tokens a request holding
            every layer at full length could use (what vLLM logs as the KV cache size).
    """

    kv_blocks: int
    kv_tokens: int
    weight_gib: float
    offload: Offload | None
    verdict: str
    kv_groups: KvGroups | None = None

    def blocks(self, tokens: Any, block_size: int) -> Any:
        """KV blocks (pages) a request of ``tokens`` cached tokens holds (int or int array, like ``tokens``)."""
        if self.kv_groups is None:
            return -(-tokens // block_size)
        return self.kv_groups.blocks(tokens, block_size)

    def at_length(self, held: int, block_size: int) -> Capacity:
        """This capacity with ``kv_tokens`` the tokens the cache holds when every request holds ``held`` tokens:
        ``kv_blocks x held / blocks(held)`` (never below the full-length ``kv_tokens``), for a model that counts a
        request in tokens (the analytical engine). Without chunked or sliding-window layers it is ``self``."""
        if self.kv_groups is None or held <= 0:
            return self
        tokens = self.kv_blocks * held // int(self.blocks(held, block_size))
        return replace(self, kv_tokens=max(self.kv_tokens, tokens))


def replica_capacity(built: Built, pool: Pool) -> Capacity:
    """KV blocks of one replica of ``pool``, offloading experts if the scenario allows it."""
    m, lay, p, gpu = built.model, pool.layout, built.precision, pool.cluster.gpu
    eng = pool.engine
    probe = Batch.prefill(1, min(eng.max_tokens, 4096))
    mem = estimate_memory(m, lay, gpu, p, mem_fraction=eng.mem_fraction, expert_slots=built.expert_slots)
    act = 0.0
    try:
        probe_timer = StepTimer(m, lay, pool.cluster, p, phys_to_log=built.phys_to_log)
        act = max(op.act_bytes for op in probe_timer.estimate(probe).ops)
    except MoesimError:
        act = 0.0
    free = mem.usable_bytes - mem.weight_bytes - act
    groups = mem.kv_groups if mem.kv_groups is not None and mem.kv_groups.local_groups else None
    # a block (page) holds block_size tokens of one KV-cache group's layers: all of them without chunked layers
    per_token = groups.page_bytes_per_token if groups is not None else mem.kv_bytes_per_token
    off = built.scenario.offload
    offload = None
    weights = mem.weight_bytes
    if off.enabled and m.moe is not None:
        experts = mem.weights_by_component.get("routed_experts", 0.0)
        slots = ((built.expert_slots or m.moe.num_experts) // lay.ep) * m.num_moe_layers // lay.pp
        expert_bytes = experts / max(slots, 1)
        resident_other = mem.weight_bytes - experts
        budget = mem.usable_bytes - resident_other - act
        if budget <= 0:
            raise MoesimError(
                f"{m.name} does not fit on {gpu.key} even with every expert offloaded: the other weights need "
                f"{resident_other / 2**30:.1f} GiB of {mem.usable_bytes / 2**30:.1f} GiB usable",
                "use more GPUs, a smaller dtype, or a GPU with more memory",
            )
        cache = off.cache_experts or int(budget * (1 - off.kv_fraction) // expert_bytes)
        cache = max(1, min(cache, slots))
        if cache < slots:
            bw = off.host_bw or PCIE_BW.get(gpu.key, 32e9)
            offload = Offload(cache, expert_bytes, bw)
            weights = resident_other + cache * expert_bytes
            free = mem.usable_bytes - weights - act
    if free <= 0 or (per_token and free < per_token * eng.block_size):
        short = (-free) / 2**30 if free <= 0 else 0.0
        raise MoesimError(
            f"{m.name} ({p.weights}) does not fit on {lay.label()} of {gpu.key}: weights {weights / 2**30:.1f} GiB "
            f"leave no room for a KV cache (short by {short:.1f} GiB)",
            "enable offload, use more GPUs per replica (tp/ep/pp), a smaller dtype or a GPU with more memory",
        )
    tokens_per_group = int(free // per_token) if per_token else 10**9
    blocks = (tokens_per_group // eng.block_size) * lay.dp_attn
    tokens = blocks * eng.block_size if groups is None else blocks // groups.groups * eng.block_size
    local = (
        f" ({groups.local_groups} of {groups.groups} layer groups {'sliding-window' if groups.sliding else 'chunked'}:"
        f" a request holds at most {groups.local_tokens:,} tokens on those)"
        if groups is not None
        else ""
    )
    verdict = f"weights {weights / 2**30:.1f} GiB/GPU, KV cache {tokens:,} tokens per replica{local}" + (
        f", {offload.cache_experts} of {slots} expert slots cached per GPU" if offload else ""
    )
    return Capacity(blocks, tokens, weights / 2**30, offload, verdict, groups)


def _first_over(need: np.ndarray, room: int) -> tuple[int, int] | None:
    """(index of the first entry of ``need`` [n] above ``room``, how many are), or None when all fit."""
    over = np.flatnonzero(need > room)
    return (int(over[0]), int(over.size)) if over.size else None


def _more(count: int) -> str:
    return f" (and {count - 1:,} more)" if count > 1 else ""


def check_requests_fit(built: Built, requests: pd.DataFrame, caps: dict[str, Capacity]) -> None:
    """Refuse a workload holding a request that no replica could ever serve, before simulating it.

    Both engines call this once they know the requests and each pool's KV cache: a request whose
    tokens exceed the model's context (``max_position_embeddings``, vLLM's rule: prompt + output),
    whose KV cache alone exceeds one replica's (its longest moment holds input + output - 1 tokens;
    a prefill pool holds the prompt only), or whose prompt exceeds ``engine.max_tokens`` when
    prefill is not chunked, would wait forever in the DES and make the analytical model's
    throughput meaningless.

    Args:
        built: the scenario's objects.
        requests: the workload's table (`sim.serving.workload.generate`): request_id, input_tokens, output_tokens.
        caps: each pool role's replica capacity (`replica_capacity`).

    Raises:
        MoesimError: one line naming the first such request (its id and token counts) and the room.
    """
    inp = requests["input_tokens"].to_numpy(np.int64)
    out = requests["output_tokens"].to_numpy(np.int64)
    rid = requests["request_id"].to_numpy()
    m = built.model
    cap_hint = "cap the lengths with workload.max_input / workload.max_output"
    context = m.max_position_embeddings
    if context > 0:
        hit = _first_over(inp + out, context)
        if hit is not None:
            i, n = hit
            raise MoesimError(
                f"workload: request {int(rid[i])} has {int(inp[i]):,} input + {int(out[i]):,} output tokens, "
                f"over {m.name}'s context of {context:,} tokens (max_position_embeddings){_more(n)}",
                f"{cap_hint} so that input + output <= {context:,}",
            )
    for pool in built.pools:
        cap, eng = caps[pool.role], pool.engine
        held = inp if pool.role == "prefill" else inp + out - 1  # tokens in the cache at the request's longest
        blocks = cap.blocks(held, eng.block_size)
        hit = _first_over(blocks, cap.kv_blocks)
        if hit is not None:
            i, n = hit
            raise MoesimError(
                f"workload: request {int(rid[i])} needs {int(held[i]):,} tokens of KV cache "
                f"({int(inp[i]):,} input + {int(out[i]):,} output), more than the {cap.kv_tokens:,} tokens "
                f"a {pool.role} replica holds ({pool.layout.label()} of {pool.cluster.gpu.key}){_more(n)}",
                f"{cap_hint}, or give each replica more memory (more GPUs per replica, a smaller "
                "precision.kv_cache, engine.mem_fraction)",
            )
        if not eng.chunked_prefill and pool.role != "decode":
            hit = _first_over(inp, eng.max_tokens)
            if hit is not None:
                i, n = hit
                raise MoesimError(
                    f"workload: request {int(rid[i])} has a {int(inp[i]):,}-token prompt, more than "
                    f"engine.max_tokens {eng.max_tokens:,} with chunked_prefill off{_more(n)}",
                    f"{cap_hint}, raise engine.max_tokens, or set engine.chunked_prefill: true",
                )


#: Whether `shared_timers` shares anything (False: every timer its own, the reference the tests and
#: `benchmarks.sweep --share-ab` compare against)
SHARE = True
#: `shared_timers`' registry while one is open: configuration key -> (the objects the key names, kept alive so that
#: their ids stay theirs; the tables; the step-cost memo; the routing banks by seed)
_SHARED: dict[tuple, tuple[tuple, dict, dict, dict[int, BankStore]]] | None = None
#: The scope of the open `shared_timers` block (None: its registry is its own and keyed by objects)
_SCOPE: str | None = None
#: Registries of the latest scopes, kept across blocks (`shared_timers`' ``scope``), most recent last
_SCOPES: OrderedDict[str, dict] = OrderedDict()
#: How many scopes' registries `_SCOPES` keeps (each holds one replica configuration's tables, memo and banks)
SCOPES_KEPT = 2


@contextlib.contextmanager
def shared_timers(scope: str | None = None) -> Iterator[None]:
    """Within this block, `make_timer` gives the timers of the same replica (the same model, pool, loads,
    placement, precision, cost model, routing physics and expert cache, as objects: the runs of one built
    configuration at several request rates, and its analytical model) one grouped-GEMM table and step-cost memo,
    and those of the same replica and seed one store of routing banks (`TimerShare`), so a later run reuses what an
    earlier one computed. The tables and memo are functions of the timer's arguments and their keys (no seed: the
    routing draws are never memoised), a bank of its seed and key, so every run's results are those of a run alone
    (`tests/test_step_share.py`). Nested blocks share the outer one's registry.

    ``scope``: a key the caller guarantees names everything a step timer is built from but the pool's batch limit
    (``engine.max_batch``, which no timer reads): the sweep's `sim.sweeps.sweep_eval.timer_key`. The blocks of one
    scope share one registry, kept for the last `SCOPES_KEPT` scopes, so that the configurations of a sweep that
    differ only in their batch limit, workload or SLOs reuse one another's tables, step costs and banks; within a
    scope a timer is named by its pool's role and expert cache, not by the objects of its configuration."""
    global _SHARED, _SCOPE
    if _SHARED is not None or not SHARE:
        yield
        return
    if scope is None:
        registry: dict = {}
    else:
        registry = _SCOPES.pop(scope, None) or {}
        _SCOPES[scope] = registry
        while len(_SCOPES) > SCOPES_KEPT:
            _SCOPES.popitem(last=False)
    _SHARED, _SCOPE = registry, scope
    try:
        yield
    finally:
        _SHARED, _SCOPE = None, None


def _share(built: Built, pool: Pool, cap: Capacity, seed: int) -> TimerShare | None:
    """The `TimerShare` of this timer in the open `shared_timers` block (None outside one)."""
    if _SHARED is None:
        return None
    r = built.scenario.routing
    if _SCOPE is not None:  # the scope names the configuration: the pool's role and expert cache name the timer
        key: tuple = ("scope", pool.role, cap.offload, r.capacity_factor, r.overlap, str(built.base_dir))
        objs: tuple = ()
    else:
        objs = (built.model, pool, built.loads, built.phys_to_log, built.precision, built.cost_model)
        key = (*map(id, objs), cap.offload, r.capacity_factor, r.overlap, str(built.base_dir))
    hit = _SHARED.get(key)
    if hit is None:
        hit = _SHARED[key] = (objs, {}, {}, {})
    _, tables, memo, banks = hit
    return TimerShare(banks.setdefault(int(seed), BankStore()), tables, memo)


def make_timer(built: Built, pool: Pool, cap: Capacity, seed: int) -> StepTimer:
    """The step timer of one replica of ``pool``: its model, layout, routing physics, expert cache and the
    engine profile of its ``engine:`` (host time per step, `sim.serving.host`); inside `shared_timers`, sharing
    what an earlier timer of the same replica and seed computed."""
    r = built.scenario.routing
    return StepTimer(
        built.model,
        pool.layout,
        pool.cluster,
        built.precision,
        pool_cost_model(built, pool),  # the scenario's cost model timing the kernels the pool's engine runs
        built.loads,
        built.phys_to_log,
        capacity_factor=r.capacity_factor,
        overlap=r.overlap,
        offload=cap.offload,
        seed=seed,
        max_pairs=pool.engine.max_tokens * (built.model.moe.top_k if built.model.moe else 1),
        profile=engine_profile(pool.engine, built.base_dir),
        share=_share(built, pool, cap, seed),
    )
