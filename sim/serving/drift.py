"""Serving while the routing drifts: a static plan against periodic rebalancing (SGLang's EPLB, moesim's ILP).

The question an operator asks before ``--enable-eplb``: does moving expert weights every so often pay for the pause
it costs? A deployment is simulated window by window:

- **windows**: window 0 is the profiling run the first plan is made from; windows 1..W are served. Each has its
  own routing statistics: slices, in time order, of one synthetic trace whose expert popularity drifts
  (`placement.synthetic.synthetic_trace` with ``drift``: by the end of the trace the logits have moved ``drift`` of
  the way to a second power law), or one real statistics file per window (`placement.importers.load_stats`).
- **policies** (`parse_policy`): ``static`` (EPLB's plan of window 0, kept; ``static:ilp`` the ILP's),
  ``eplb:K`` (SGLang ``--enable-eplb``: every K windows DeepSeek's EPLB re-places the experts from the loads
  recorded over the last K windows) and ``ilp:K`` (moesim's ILP on the same statistics, with the plan in place as
  ``current`` and its migration term: a copy costs its transfer seconds spread over the K windows' steps).
  A rebalance only sees windows already served: the plan of window w comes from windows before w.
- **migration** (`migration_cost`): what SGLang does (sgl-project/sglang@python/sglang/srt/eplb/eplb_manager.py:
  ``EPLBManager.on_forward_pass_end`` counts forward passes and after ``--eplb-rebalance-num-iterations``
  (default 1000, python/sglang/srt/server_args.py) runs ``rebalance`` inside the scheduler loop, so no batch runs
  until it returns; python/sglang/srt/eplb/expert_location_updater.py ``update_expert_weights_single_layer`` moves
  layer after layer with P2P isend/irecv: a slot whose expert changed copies it from the same GPU if it is there,
  else from a GPU of its own node that holds it, else across nodes). Each new (layer, GPU, expert) copies
  ``expert_bytes`` (gate, up and down projections in the weights' dtype); per layer the copies run in parallel and
  the layer takes the busiest GPU's NVLink or NIC bytes (sent or received) over the cluster's link bandwidth plus
  the link latency; the layers run one after another. Serving pauses that long.
- **serving** (`simulate_drift`): every window is one run of the discrete-event simulator (`sim.serving.engine`)
  with the window's routing shares as the scenario's loads and the policy's plan as its ``placement``; every
  policy sees the same requests in a window (the same seed). A rebalance starts at the window's start, taken as
  the previous window's last arrival: the previous window's requests still running then wait it out
  (`charge_in_flight`: E2E, TTFT if their first token came after, TPOT over their output); requests arriving
  during it are held until its chunk ends (the DES serves the backlog after), then wait out the later chunks while
  running, and their latencies count from their true arrival. With ``layers_per_chunk`` (SGLang
  ``--eplb-rebalance-layers-per-chunk``) the same total pause comes in chunks with a step between them: a request
  running through the whole rebalance waits as long, but no step stalls longer than one chunk (``max_stall_s``)
  and arrivals start sooner. ``engine="analytical"`` times each window with the closed-form model instead (faster,
  no pause in the latencies).

Units: seconds, bytes; loads in (token, expert) pairs.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from moesim.model.errors import MoesimError
from moesim.placement.api import place
from moesim.placement.ilp import IlpOptions
from moesim.placement.layertime import layer_cost
from moesim.placement.metrics import gpu_loads, migration_bytes
from moesim.placement.plan import PlacementPlan
from moesim.placement.stats import RoutingStats
from moesim.placement.synthetic import synthetic_trace
from moesim.sim.serving.scenario import Built
from moesim.sim.serving.serve import cost_model_name

#: Most served windows (--windows).
MAX_WINDOWS = 1000
#: Fewest / most tokens per window in a synthetic drifting trace (each holds [tokens, moe_layers, top_k] ids).
MIN_WINDOW_TOKENS, MAX_WINDOW_TOKENS = 16, 1_000_000
#: Most power-law exponent of a synthetic trace (--skew); 100 already puts all load on one expert.
MAX_SKEW = 100.0
#: Policy names (`parse_policy`).
POLICIES = ("static", "eplb", "ilp")

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class DriftSpec:
    """A synthetic drifting routing.

    Attributes:
        windows: served windows W (plus window 0, the profiling run).
        drift: 0..1, how far expert popularity moves towards a second power law over all W + 1 windows.
        skew: power-law exponent of expert popularity (0: uniform).
        tokens_per_window: tokens of routing trace per window.
        seed: the trace's seed.
    """

    windows: int = 8
    drift: float = 1.0
    skew: float = 1.0
    tokens_per_window: int = 1024
    seed: int = 0

    def check(self) -> None:
        """Raise one `MoesimError` line for a parameter out of range."""
        if not 1 <= self.windows <= MAX_WINDOWS:
            raise MoesimError(
                f"drift: windows = {self.windows} is outside 1..{MAX_WINDOWS}", "give --windows from 1 to 1000"
            )
        if not (math.isfinite(self.drift) and 0 <= self.drift <= 1):
            raise MoesimError(
                f"drift: --drift = {self.drift:g} is outside [0, 1]",
                "give --drift from 0 (routing fixed) to 1 (popularity moves all the way to a new power law)",
            )
        if not (math.isfinite(self.skew) and 0 <= self.skew <= MAX_SKEW):
            raise MoesimError(
                f"drift: --skew = {self.skew:g} is outside [0, {MAX_SKEW:g}]", "give --skew from 0 to 100"
            )
        if not MIN_WINDOW_TOKENS <= self.tokens_per_window <= MAX_WINDOW_TOKENS:
            raise MoesimError(
                f"drift: --window-tokens = {self.tokens_per_window} is outside "
                f"{MIN_WINDOW_TOKENS}..{MAX_WINDOW_TOKENS}",
                "give --window-tokens from 16 to 1000000",
            )


@dataclass(frozen=True)
class Policy:
    """A placement policy: ``name`` static/eplb/ilp, the ``method`` that makes its plans, rebalance ``interval``
    in windows (0: never)."""

    name: str
    method: str
    interval: int

    @property
    def label(self) -> str:
        return self.name if not self.interval else f"{self.name}:{self.interval}"


def parse_policy(text: str) -> Policy:
    """``static`` | ``static:eplb`` | ``static:ilp`` | ``eplb:K`` | ``ilp:K`` (K windows between rebalances)."""
    name, _, arg = text.strip().partition(":")
    fix = "give static, static:ilp, eplb:K or ilp:K (K: windows between rebalances, e.g. eplb:2)"
    if name == "static":
        if arg not in ("", "eplb", "ilp"):
            raise MoesimError(f"policy {text!r}: a static plan is made by eplb or ilp, not {arg!r}", fix)
        return Policy("static" if arg in ("", "eplb") else "static:ilp", arg or "eplb", 0)
    if name not in ("eplb", "ilp"):
        raise MoesimError(f"unknown policy {text!r}", fix)
    try:
        k = int(arg or "1")
    except ValueError:
        raise MoesimError(f"policy {text!r}: the interval {arg!r} is not a whole number of windows", fix) from None
    if not 1 <= k <= MAX_WINDOWS:
        raise MoesimError(f"policy {text!r}: the interval {k} is outside 1..{MAX_WINDOWS} windows", fix)
    return Policy(name, name, k)


# ---- routing windows ------------------------------------------------------------------------------------------
def drift_windows(built: Built, spec: DriftSpec) -> list[RoutingStats]:
    """W + 1 windows of routing statistics (window 0: profiling) cut in time order from one drifting trace."""
    spec.check()
    model = built.model
    moe = _moe(built)
    total = (spec.windows + 1) * spec.tokens_per_window
    trace = synthetic_trace(
        model.num_moe_layers,
        moe.num_experts,
        moe.top_k,
        tokens=total,
        alpha=spec.skew,
        drift=spec.drift,
        n_group=moe.n_group,
        topk_group=moe.topk_group if moe.n_group > 1 else 1,
        seed=spec.seed,
    )
    assert trace.topk is not None
    t = spec.tokens_per_window
    return [
        RoutingStats.from_topk(trace.topk[i * t : (i + 1) * t], moe.num_experts, source=f"synthetic window {i}")
        for i in range(spec.windows + 1)
    ]


def stats_windows(built: Built, paths: Sequence[str | Path], fmt: str = "auto") -> list[RoutingStats]:
    """One window per statistics file, in the order given (the first: the profiling window)."""
    from moesim.placement.importers import load_stats

    if len(paths) < 2:
        raise MoesimError(
            f"drift: {len(paths)} statistics file given; need at least 2 (the first is the profiling window)",
            "give --stats once per window, in time order",
        )
    model, moe = built.model, _moe(built)
    ids = [i for i, m in enumerate(model.moe_layers) if m]
    out = []
    for p in paths:
        st = load_stats(p, num_experts=moe.num_experts, moe_layer_ids=ids, fmt=fmt)
        st.check_shape(len(ids), moe.num_experts, f"model {model.name}")
        out.append(st)
    return out


def _moe(built: Built) -> Any:
    if built.model.moe is None or not built.model.is_moe:
        raise MoesimError(f"drift: model {built.model.name} has no MoE layers", "choose an MoE model's scenario")
    return built.model.moe


def merge(windows: Sequence[RoutingStats]) -> RoutingStats:
    """The statistics of several windows together (traces concatenated when every window has one)."""
    if all(w.topk is not None for w in windows):
        topk = np.concatenate([w.topk for w in windows])  # type: ignore[misc]
        return RoutingStats.from_topk(topk, windows[0].num_experts, source="recorded windows")
    return RoutingStats(counts=sum(w.counts for w in windows), top_k=windows[0].top_k, source="recorded windows")


# ---- migration ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    """One rebalance's weight moves: bytes in total, over NVLink and over the NIC, and the pause, s."""

    bytes: float = 0.0
    intra_bytes: float = 0.0
    inter_bytes: float = 0.0
    copies: int = 0
    pause_s: float = 0.0
    chunk_pauses_s: tuple[float, ...] = ()

    @property
    def max_stall_s(self) -> float:
        """The longest stall one step sees: the slowest chunk's copies (the whole pause when not chunked), s."""
        return max(self.chunk_pauses_s, default=self.pause_s)


def migration_cost(
    old: PlacementPlan, new: PlacementPlan, expert_bytes: float, cluster: Any, layers_per_chunk: int | None = None
) -> Migration:
    """The expert copies turning ``old`` into ``new`` as SGLang's updater makes them, and the serving pause, s.

    Per layer, every (GPU, expert) that ``new`` needs and ``old`` lacks on that GPU is copied from a GPU of the same
    node holding it (the least-used sender), else from one on another node; the layer takes
    ``max over GPUs of max(NVLink bytes / intra_bw, NIC bytes / inter_bw)`` (send or receive, whichever is more)
    plus the link latency, and layers run one after another (`expert_location_updater.py` updates them in a loop).

    ``layers_per_chunk`` (SGLang ``--eplb-rebalance-layers-per-chunk``, default None: every layer in one go): the
    layers are updated that many at a time, one forward pass between chunks (sgl-project/sglang@python/sglang/srt/
    eplb/eplb_manager.py ``rebalance`` yields after each chunk but the first); ``chunk_pauses_s`` holds each
    chunk's copy time.
    """
    if layers_per_chunk is not None and layers_per_chunk < 1:
        raise MoesimError(
            f"drift: --layers-per-chunk = {layers_per_chunk} is below 1", "give 1 or more layers, or leave it out"
        )
    g, gpn = new.num_gpus, new.gpus_per_node
    intra_bw, intra_lat = cluster.link("intra")
    inter = cluster.link("inter") if g > gpn else (math.inf, 0.0)
    total = intra = inter_b = 0.0
    copies = 0
    pause = 0.0
    per_layer: list[float] = []
    for a, b in zip(old.gpu_experts(), new.gpu_experts(), strict=True):
        before = pause
        holders: dict[int, list[int]] = {}
        for gpu, row in enumerate(a):
            for e in set(row.tolist()):
                holders.setdefault(e, []).append(gpu)
        nvl = np.zeros((g, 2))  # [GPU, send/recv] bytes over NVLink
        nic = np.zeros((g, 2))
        for gpu, (ra, rb) in enumerate(zip(a, b, strict=True)):
            for e in sorted(set(rb.tolist()) - set(ra.tolist())):
                near = [h for h in holders[e] if h // gpn == gpu // gpn]
                link = nvl if near else nic
                src = min(near or holders[e], key=lambda h: (link[h, 0], h))
                link[src, 0] += expert_bytes
                link[gpu, 1] += expert_bytes
                copies += 1
        if nvl.any() or nic.any():
            t_nvl = float(nvl.max()) / intra_bw
            t_nic = float(nic.max()) / inter[0] if nic.any() else 0.0
            pause += max(t_nvl, t_nic) + (inter[1] if nic.any() else intra_lat)
        intra += float(nvl[:, 1].sum())
        inter_b += float(nic[:, 1].sum())
        per_layer.append(pause - before)
    total = migration_bytes(old, new, expert_bytes)
    assert abs(total - intra - inter_b) <= 1e-6 * max(total, 1.0)
    k = layers_per_chunk or max(len(per_layer), 1)
    chunks = tuple(float(sum(per_layer[i : i + k])) for i in range(0, len(per_layer), k))
    return Migration(total, intra, inter_b, copies, pause, chunks)


def charge_in_flight(req: Any, boundary_s: float, pause_s: float) -> Any:
    """A window's requests with a rebalance that starts at ``boundary_s`` (its run's clock) and stalls every step
    ``pause_s`` in all: a request still running then waits it out (E2E; TTFT if its first token came after; TPOT
    spread over its output); a copy, the columns `_latencies` reads."""
    out = req.copy()
    if pause_s <= 0 or not len(out):
        return out
    finish = out["finish_s"].to_numpy(float)
    first = out["arrival_s"].to_numpy(float) + out["ttft_s"].to_numpy(float)
    live = np.isfinite(finish) & (finish > boundary_s)
    out.loc[live, "e2e_s"] = out.loc[live, "e2e_s"] + pause_s
    out.loc[live & (first > boundary_s), "ttft_s"] = out.loc[live & (first > boundary_s), "ttft_s"] + pause_s
    dec = live & (first <= boundary_s)
    gaps = np.maximum(out.loc[dec, "output_tokens"].to_numpy(float) - 1.0, 1.0)
    out.loc[dec, "tpot_s"] = out.loc[dec, "tpot_s"] + pause_s / gaps
    return out


def expert_bytes(built: Built) -> float:
    """Bytes of one routed expert of one layer on one GPU: gate, up and down (3 x hidden x width / moe_tp) in the
    weights' dtype."""
    moe = _moe(built)
    lay = built.pools[-1].layout
    return 3.0 * built.model.hidden_size * moe.intermediate_size / lay.moe_tp * built.precision.weight_bytes


# ---- the simulation -------------------------------------------------------------------------------------------
@dataclass
class WindowResult:
    """One served window under one policy (latencies over the window's requests, s)."""

    window: int
    rebalanced: bool
    migration: Migration
    max_load_ratio: float  # busiest GPU's load / mean, averaged over MoE layers, under the window's true routing
    summary: dict[str, float]
    iterations: float  # engine steps per replica in the window


@dataclass
class DriftResult:
    """Every policy's windows and totals."""

    policies: dict[str, list[WindowResult]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def overall(self, label: str) -> dict[str, float]:
        """A policy's figures over all served windows: request-weighted latency means, the mean of the windows' p90s,
        the mean busiest-GPU ratio, migration bytes and pause seconds summed, and the rebalance count."""
        ws = self.policies[label]
        n = np.array([w.summary.get("requests", 1.0) for w in ws], float)
        out: dict[str, float] = {}
        for key in LATENCY_KEYS:
            vals = np.array([w.summary.get(key, math.nan) for w in ws], float)
            out[key] = float(np.sum(vals * n) / n.sum()) if key.endswith("mean_s") else float(np.mean(vals))
        out["max_load_ratio"] = float(np.mean([w.max_load_ratio for w in ws]))
        out["migration_bytes"] = float(sum(w.migration.bytes for w in ws))
        out["pause_s"] = float(sum(w.migration.pause_s for w in ws))
        out["max_stall_s"] = float(max((w.migration.max_stall_s for w in ws), default=0.0))
        out["rebalances"] = float(sum(w.rebalanced for w in ws))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: info, per policy its windows and overall figures."""
        return {
            "info": self.info,
            "policies": {
                label: {
                    "overall": self.overall(label),
                    "windows": [
                        {
                            "window": w.window,
                            "rebalanced": w.rebalanced,
                            "max_load_ratio": w.max_load_ratio,
                            "iterations": w.iterations,
                            "migration_bytes": w.migration.bytes,
                            "migration_intra_bytes": w.migration.intra_bytes,
                            "migration_inter_bytes": w.migration.inter_bytes,
                            "migration_copies": w.migration.copies,
                            "pause_s": w.migration.pause_s,
                            "max_stall_s": w.migration.max_stall_s,
                            "chunks": len(w.migration.chunk_pauses_s),
                            **{k: w.summary.get(k) for k in LATENCY_KEYS},
                        }
                        for w in ws
                    ],
                }
                for label, ws in self.policies.items()
            },
        }


#: Latency figures per window (client view, s).
LATENCY_KEYS = ("ttft_mean_s", "ttft_p90_s", "tpot_mean_s", "tpot_p90_s", "e2e_mean_s", "e2e_p90_s")


def _latencies(req: Any, held_s: np.ndarray, stalled_s: np.ndarray | None = None) -> dict[str, float]:
    """Latency means and p90s of completed requests; ``held_s`` [n] seconds each was held by a pause (added to
    TTFT and E2E: they count from the true arrival); ``stalled_s`` [n] seconds of a chunked rebalance's later
    chunks each waited out while running (added to E2E, and to TPOT over its output)."""
    done = req["finish_s"].notna().to_numpy()
    stall = np.zeros(len(req)) if stalled_s is None else np.asarray(stalled_s, float)
    ttft = req["ttft_s"].to_numpy(float)[done] + held_s[done]
    e2e = req["e2e_s"].to_numpy(float)[done] + held_s[done] + stall[done]
    gaps = np.maximum(req["output_tokens"].to_numpy(float) - 1.0, 1.0)
    tpot = req["tpot_s"].to_numpy(float)[done] + (stall / gaps)[done]
    tpot = tpot[np.isfinite(tpot)]

    def stat(x: np.ndarray) -> tuple[float, float]:
        return (float(x.mean()), float(np.percentile(x, 90))) if x.size else (math.nan, math.nan)

    out: dict[str, float] = {"requests": float(len(req)), "completed": float(done.sum())}
    for name, x in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
        out[f"{name}_mean_s"], out[f"{name}_p90_s"] = stat(x)
    return out


def _window_workload(
    built: Built, requests: int, seed: int, pauses_s: Sequence[float], folder: Path
) -> tuple[Any, np.ndarray, np.ndarray]:
    """The window's requests as a replayed trace; a rebalance of chunks ``pauses_s`` runs from the window's start
    (one step between chunks, taken as short beside them): an arrival during a chunk is held to its end, then waits
    out the chunks after it while running. (workload, held [n], stalled [n]) seconds."""
    import pandas as pd

    from moesim.sim.serving.workload import Workload, generate

    w = built.workload.model_copy(update={"requests": requests})
    df = generate(w, seed=seed, base_dir=built.base_dir)
    arrival = df["arrival_s"].to_numpy(float)
    arrival = arrival - arrival.min()
    held, stalled = np.zeros(arrival.size), np.zeros(arrival.size)
    ends = np.cumsum(np.asarray(pauses_s, float))
    if ends.size:
        j = np.searchsorted(ends, arrival, side="right")  # the chunk running at each arrival (ends.size: none)
        during = j < ends.size
        end = np.where(during, ends[np.minimum(j, ends.size - 1)], arrival)
        held, stalled = end - arrival, np.where(during, ends[-1] - end, 0.0)
    total = float(ends[-1]) if ends.size else 0.0
    cols = {"arrival_s": arrival + held, "input_tokens": df["input_tokens"], "output_tokens": df["output_tokens"]}
    if "prefix_id" in df.columns:
        cols |= {"prefix_id": df["prefix_id"], "prefix_tokens": df["prefix_tokens"]}
    path = folder / f"window-{seed}-{total:.9g}-{len(pauses_s)}.csv"
    pd.DataFrame(cols).to_csv(path, index=False)
    return Workload(trace=str(path), trace_format="csv"), held, stalled


def simulate_drift(
    built: Built,
    windows: Sequence[RoutingStats],
    policies: Sequence[Policy],
    *,
    redundant: int | None = None,
    requests_per_window: int = 200,
    engine: str = "des",
    ilp_time_limit: float = 60.0,
    progress: Progress | None = None,
    layers_per_chunk: int | None = None,
) -> DriftResult:
    """Serve windows 1..W of ``windows`` under each policy (see the module docstring).

    Args:
        built: the scenario (one pool: its layout's ep GPUs hold the experts; the cluster gives the links).
        windows: routing statistics per window [W + 1], window 0 the profiling run.
        policies: from `parse_policy`.
        redundant: extra expert slots per layer (None: one per GPU, ep).
        requests_per_window: requests served in each window.
        engine: ``des`` (a discrete-event run per window) or ``analytical``.
        ilp_time_limit: wall-clock cap of one ILP placement, s.
        progress: called with (steps done, steps, label).
        layers_per_chunk: a rebalance updates this many layers at a time (`migration_cost`); None: all at once.
    """
    moe = _moe(built)
    if len(built.pools) != 1:
        raise MoesimError("drift: disaggregated scenarios are not supported yet", "give a scenario with one layout")
    if engine not in ("des", "analytical"):
        raise MoesimError(f"drift: unknown engine {engine!r}", "use --engine des or --engine analytical")
    if not 1 <= requests_per_window <= 1_000_000:
        raise MoesimError(
            f"drift: --window-requests = {requests_per_window} is outside 1..1000000", "give 1 or more requests"
        )
    pool = built.pools[0]
    ep = pool.layout.ep
    gpn = min(built.cluster.gpus_per_node, ep)
    if ep < 2:
        raise MoesimError(f"drift: the layout has ep={ep}; placement needs expert parallelism", "set layout.ep >= 2")
    red = ep if redundant is None else redundant
    n = moe.num_experts
    if red < 0 or (n + red) % ep:
        raise MoesimError(
            f"drift: {n} experts + {red} redundant slots do not split over ep={ep} GPUs",
            f"give --redundant so that experts + redundant is a multiple of {ep}",
        )
    for i, w in enumerate(windows):
        w.check_shape(built.model.num_moe_layers, n, f"model {built.model.name}")
        if w.counts.sum() <= 0:
            raise MoesimError(f"drift: window {i} has no routed tokens", "give windows with routing records")
    ebytes = expert_bytes(built)
    ids = [i for i, m in enumerate(built.model.moe_layers) if m]
    # the scenario's engine picks replicas as it does (`EngineSpec.replica_choice`, resolved in the pool's layout)
    rule = pool.layout.replica_choice
    cost = layer_cost(pool.cluster, built.model.hidden_size, moe.intermediate_size, moe.top_k, ep,
                      dtype="fp8" if built.precision.weights.startswith("fp8") else "bf16",
                      replica_choice=rule)  # fmt: skip
    groups = moe.n_group if moe.n_group > 1 and n % moe.n_group == 0 else 1
    kw = dict(num_gpus=ep, gpus_per_node=gpn, redundant=red, moe_layer_ids=list(range(len(ids))), expert_bytes=ebytes)
    served = len(windows) - 1
    if served < 1:
        raise MoesimError("drift: no window to serve", "give at least 2 windows (profiling + one served)")
    total_steps = len(policies) * served
    done = 0
    result = DriftResult(
        info={
            "scenario": built.scenario.name,
            "model": built.model.name,
            "ep": ep,
            "gpus_per_node": gpn,
            "redundant": red,
            "expert_bytes": ebytes,
            "windows": served,
            "requests_per_window": requests_per_window,
            "engine": engine,
            "cost_model": cost_model_name(built.cost_model),
            "pause_model": "SGLang EPLBManager.rebalance blocks the scheduler; layers copied one after another",
            # the rule the ILP policy's layer time prices (the serving simulation splits replicas evenly)
            "replica_choice": rule,
        }
    )

    def solve(method: str, stats: RoutingStats, current: PlacementPlan | None, steps: float) -> PlacementPlan:
        opts = IlpOptions(time_limit=ilp_time_limit, seed=built.scenario.seed, cost=cost, workers=1)
        if method == "ilp" and current is not None:
            # a copy's pause (bytes / NVLink) spread over the steps until the next rebalance, in layer-seconds
            bw, _ = pool.cluster.link("intra")
            opts = replace(opts, migration_weight=ebytes / bw / max(steps, 1.0))
        res = place(stats, methods=(method,), num_groups=groups, options=opts, current=current, **kw)  # type: ignore[arg-type]
        return res[method].plan

    initial: dict[str, PlacementPlan] = {}
    with tempfile.TemporaryDirectory(prefix="moesim-drift-") as tmp:
        for pol in policies:
            if pol.method not in initial:
                initial[pol.method] = solve(pol.method, windows[0], None, 0.0)
            plan = initial[pol.method]
            rows: list[WindowResult] = []
            steps_per_window = 0.0
            last: tuple[Any, np.ndarray, np.ndarray] | None = None  # the previous window's requests, held, stalled
            for w in range(1, served + 1):
                mig = Migration()
                rebalanced = bool(pol.interval) and w > 1 and (w - 1) % pol.interval == 0
                if rebalanced:
                    seen = merge(windows[max(0, w - pol.interval) : w])
                    new = solve(pol.method, seen, plan, steps_per_window * pol.interval)
                    mig = migration_cost(plan, new, ebytes, pool.cluster, layers_per_chunk)
                    plan = new
                    if last is not None and mig.pause_s > 0:
                        # the previous window's requests still running when the rebalance starts (its last arrival)
                        # wait out every chunk: its figures are charged now
                        req, h, st = last
                        boundary = float(req["arrival_s"].max()) if len(req) else 0.0
                        rows[-1].summary = _latencies(charge_in_flight(req, boundary, mig.pause_s), h, st)
                truth = windows[w]
                loads = gpu_loads(plan.phys_to_log, truth.counts, ep)
                ratio = float(np.mean(loads.max(axis=1) / loads.mean(axis=1)))
                chunks = mig.chunk_pauses_s if mig.pause_s > 0 else ()
                wl, held, stalled = _window_workload(
                    built, requests_per_window, built.scenario.seed + w, chunks, Path(tmp)
                )
                b = replace(built, loads=truth.shares(), phys_to_log=plan.phys_to_log, workload=wl)
                if engine == "des":
                    from moesim.sim.serving.engine import simulate

                    sim = simulate(b, built.scenario.seed)
                    summary = _latencies(sim.requests, held, stalled)
                    last = (sim.requests, held, stalled)
                    steps_per_window = len(sim.steps) / max(1, pool.replicas)
                else:
                    from moesim.sim.serving.analytical import analyse

                    s = analyse(b, built.scenario.seed)
                    summary = {k: float(s.get(k, math.nan)) for k in LATENCY_KEYS}
                    summary["requests"] = float(requests_per_window)
                    # steps per replica: the window's simulated seconds over one step's seconds
                    step_s = float(s.get("step_s", math.nan))
                    span = float(s.get("simulated_s", math.nan))
                    ok = math.isfinite(step_s) and step_s > 0 and math.isfinite(span)
                    steps_per_window = span / step_s if ok else float(requests_per_window)
                rows.append(WindowResult(w, rebalanced, mig, ratio, summary, steps_per_window))
                done += 1
                if progress is not None:
                    progress(done, total_steps, f"{pol.label} window {w}")
            result.policies[pol.label] = rows
    return result
