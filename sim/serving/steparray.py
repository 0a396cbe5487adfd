"""The analytical step's op-level parts in array form: many step shapes costed without decomposing each.

`StepTimer.expected` decomposes every step shape (`model.ops.decompose`), times each op with the cost model and
decomposes it again on one device for S-MBU/S-MFU (`model.cap.utilisation_exact`): about 0.5 ms per shape, and
an analytical sweep meets tens of thousands of distinct shapes (the fixed point of `sim.serving.analytical` tries a
new prompt chunk on every iterate). Here a shape's op list is not rebuilt: within one *class* of shapes (the
step's phase and which kinds of sequence the whole batch and its busiest attention group hold: decoding, padding
of a CUDA graph, a prompt chunk with or without cached context) each op's FLOPs, bytes, link bytes and messages
are linear in eleven moments of the batch (1; per whole batch and per attention group: sequences, tokens,
sum of new x cached tokens, sum of squared new tokens, sum of cached tokens). The coefficients come from
`decompose` at a few seeded shapes of the class, the same whichever shape asked first (so a sweep's rows do not
depend on the order of its points), by least squares on scaled columns, and are CHECKED against `decompose`
at every one of them and at held-out ones (relative 1e-10 on every field; op names, kinds, counts, dtypes and
kernel launches equal); an op that is not of that form (the routed experts, whose busiest GPU's pairs and active
experts are an expectation over the routing; DeepEP's all-to-all, timed by its own model) must belong to the MoE
block: it is rebuilt by `model.ops._moe_routed_ops` at the whole batch's tokens (the ops rebuilt read no others),
memoised across the timers of a sweep, and checked equal to the decomposed op at every fitting shape. A class
where any of this fails is costed by the scalar path, as is anything this module does not cover
(a cost model other than the roofline, two-batch overlap, an engine whose host issues launches while the GPU
waits): `supported` says which. With per-layer routing or placement the scalar path itself takes every op but the
routed experts and the expert-parallel all-to-all from the layer-set estimate (layer-averaged loads on the first
layer's placement), and those two from per-layer sums memoised by tokens; the array form fits that estimate and
adds the same sums (`StepArray._per_layer_parts`).

The op times are then the roofline's (`model.roofline.RooflineCostModel.op_time`) on arrays [shapes, ops]:
max(FLOP / peak, bytes / bandwidth) + max(intra, inter link time), link time = bytes / link bandwidth +
messages x latency where the op sends anything. The parts vector is `StepTimer._compute`'s (other compute,
all-to-all, other comm, routed experts, rho = 1, one-device bytes, one-device FLOP, kernel launches, attention
launches, 0, 0), equal to it within float rounding (tests/test_steparray.py; the full
`examples/sweep-mixtral-gpu-choice.yaml` sweep: 3,840 rows, 36 of 46 columns bit-identical, the rest within
2.1e-13 relative). A fit is checked only at the shapes it samples (log-uniform over 1-1,024 sequences, contexts up
to 32,768, chunks up to 8,192 tokens): a kink outside them in a fitted op would go unseen; the MoE block's
saturating ops are never fitted for that reason (`_T_ALL_OPS`), and sliding-window or chunked attention fails
the check and stays on the scalar path. `expected` is `StepTimer.expected` on those parts.

Per step shape the analytical engine asks for one step at a time (its fixed points are sequential), so the one-shape
path is kept lean (issue 22): `StepArray._eval_one` is `_eval` on a vector instead of a one-row matrix, and
`StepArray._lean_cost` does `StepTimer._combine`'s and `StepTimer._host_overlap`'s arithmetic for one step in Python
floats (IEEE doubles, the same operations in the same order: the same values) instead of building a dozen one-element
arrays and a `StepBlock`; it is checked equal to `_combine` on each timer's first `_LEAN_CHECKS` shapes and dropped
for a timer where it is not (`LEAN` and `EVAL_ONE` switch them off; tests/test_sweep_speed.py compares both ways).

Units: seconds, bytes, FLOP. Shapes: ``moments`` [k, 11]; op fields [k, ops].
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from moesim.model import Batch
from moesim.model.a2a import is_deepep
from moesim.model.layout import Layout
from moesim.model.op_record import Op, OpContext
from moesim.model.ops import _layer_sets_memo, _moe_routed_ops, decompose
from moesim.model.roofline import RooflineCostModel
from moesim.sim.serving.steptime import _COMM, _NO_HOST_COST, StepCost, StepTimer

#: Op fields the roofline reads, fitted per op.
_FIELDS = ("flops", "weight_bytes", "kv_bytes", "act_bytes", "intra_bytes", "inter_bytes", "intra_msgs", "inter_msgs")
#: Off: `expected` takes the scalar path always (tests of the scalar path's memos compare it bit for bit).
ENABLED = True
#: Off: a timer with per-layer routing or placement takes the scalar path (as before 2026-12-05; the reference of
#: `benchmarks.sweep --share-ab`).
PER_LAYER = True
#: Off: `StepArray.expected` combines the parts with `StepTimer._combine` (one-row arrays and a `StepBlock`) rather
#: than `StepArray._lean_cost` (the same operations on Python floats); tests compare the two bit for bit.
LEAN = True
#: Off: `StepArray.parts` evaluates its one shape by `StepArray._eval` (a one-row block) rather than `_eval_one`.
EVAL_ONE = True
#: Shapes per timer on which `_lean_cost` is checked equal to `StepTimer._combine` before it is trusted alone.
_LEAN_CHECKS = 8
#: MoE-block ops always rebuilt at the step's tokens, never fitted: their fields depend on the whole batch's tokens
#: through the routing's expectations (the busiest GPU's pairs, the active experts, the GPUs a token is sent to),
#: which saturate and switch regime (`model.ops.moe_block_m`): a fit on some shapes says nothing of others.
_T_ALL_OPS = frozenset({"routed_experts", "ep_dispatch", "ep_combine", "dp_gather", "dp_scatter"})
#: Relative tolerance of the fit's check against `decompose` (per field, against the field's largest value).
_RTOL = 1e-10
#: Fitted classes kept across timers (cleared when full): the op fields do not depend on the GPU but through the
#: GEMM dtype, so the same class serves every GPU, batch limit and workload of a sweep.
_CLASSES: dict[tuple, Any] = {}
_MAX_CLASSES = 1 << 11
#: MoE-block ops by (what the op fields depend on, one device, phase, tokens, attention tokens) (`StepArray._block`).
_BLOCKS: dict[tuple, Any] = {}
#: `StepArray`'s keys of what the op fields depend on, numbered (a tuple holding a layout and a precision costs a
#: hash of every field at every look-up; an int does not). Numbers are never reused: a cleared table only misses.
_KEY_IDS: dict[tuple, int] = {}
_KEY_COUNT = itertools.count()


def _key_id(key: tuple) -> int:
    """The number of ``key`` in `_KEY_IDS` (given the next one when new)."""
    hit = _KEY_IDS.get(key)
    if hit is None:
        if len(_KEY_IDS) >= 1 << 14:
            _KEY_IDS.clear()
        hit = _KEY_IDS[key] = next(_KEY_COUNT)
    return hit


def _pattern(shape: tuple[int, int, int, int, int]) -> tuple[int, ...]:
    """Which of a shape's (b, ctx, pads, chunk, chunk_ctx) are nonzero (1), and whether its chunk is one token (1)
    or more (2): what `StepArray._samples` keeps of the shape that asks for a class's fit."""
    b, ctx, pads, chunk, chunk_ctx = shape
    return (int(b > 0), int(ctx > 0), int(pads > 0), 0 if not chunk else 1 if chunk == 1 else 2, int(chunk_ctx > 0))


def _moments(new: np.ndarray, cached: np.ndarray) -> list[float]:
    """(sequences, tokens, sum new x cached, sum new^2, sum cached) of a batch."""
    n, c = new.astype(float), cached.astype(float)
    return [float(n.size), float(n.sum()), float((n * c).sum()), float((n * n).sum()), float(c.sum())]


def _kinds(new: np.ndarray, cached: np.ndarray) -> tuple[str, ...]:
    """The kinds of sequence in a batch: d (one new token, cached context), p (one new token, none: a graph's
    padding or a fresh one-token prompt), c (a chunk with cached context), f (a chunk from scratch)."""
    one, warm = new == 1, cached > 0
    kinds = (("d", one & warm), ("p", one & ~warm), ("c", ~one & warm), ("f", ~one & ~warm))
    return tuple(k for k, m in kinds if m.any())


def _attn_group(new: np.ndarray, cached: np.ndarray, dp: int) -> tuple[np.ndarray, np.ndarray]:
    """The busiest attention group of `model.batch.Batch.split` (round-robin) by (tokens, sequences), as
    `decompose` picks it."""
    if dp <= 1 or new.size <= 1:
        return new, cached
    best, pick = None, 0
    for g in range(min(dp, new.size)):
        key = (int(new[g::dp].sum()), len(new[g::dp]))
        if best is None or key > best:
            best, pick = key, g
    return new[pick::dp], cached[pick::dp]


def _batch(b: int, ctx: int, pads: int, chunk: int, chunk_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """The analytical engine's batch: ``b`` decoding sequences at context ``ctx``, then ``chunk`` prompt tokens
    at ``chunk_ctx`` cached ones (if any), or ``pads`` graph-padding sequences (one token, no cache)."""
    new = np.ones(b + pads + (1 if chunk else 0), np.int64)
    cached = np.zeros(new.size, np.int64)
    cached[:b] = ctx
    if chunk:
        new[-1], cached[-1] = chunk, chunk_ctx
    return new, cached


def _group_moments(n_dec: int, ctx: int, n_pad: int, has_chunk: bool, chunk: int, cc: int) -> list[float]:
    """`_moments` of ``n_dec`` decoding sequences at ``ctx``, ``n_pad`` padding ones and maybe the chunk."""
    h = 1 if has_chunk else 0
    one = n_dec + n_pad
    return [
        float(one + h),
        float(one + h * chunk),
        float(n_dec * ctx + h * chunk * cc),
        float(one + h * chunk * chunk),
        float(n_dec * ctx + h * cc),
    ]


def _group_kinds(n_dec: int, ctx: int, n_pad: int, has_chunk: bool, chunk: int, cc: int) -> tuple[str, ...]:
    """`_kinds` of the same sequences."""
    one, many = has_chunk and chunk == 1, has_chunk and chunk > 1
    out = []
    if (n_dec > 0 and ctx > 0) or (one and cc > 0):
        out.append("d")
    if (n_dec > 0 and ctx == 0) or n_pad > 0 or (one and cc == 0):
        out.append("p")
    if many:
        out.append("c" if cc > 0 else "f")
    return tuple(out)


def _describe(b: int, ctx: int, pads: int, chunk: int, cc: int, dp: int) -> tuple[tuple, list[float], int, int]:
    """(class key, moments row [11], whole-batch tokens, attention-group tokens) of `_batch`'s batch, without
    building it: the same as `_kinds`, `_moments` and `_attn_group` on the arrays (tests/test_steparray.py)."""
    hc = chunk > 0
    seqs = b + pads + (1 if hc else 0)
    phase = "decode" if chunk <= 1 else "mixed" if (cc > 0 or (b > 0 and ctx > 0)) else "prefill"
    whole = (b, ctx, pads, hc, chunk, cc)
    if dp <= 1 or seqs <= 1:
        attn = whole
    else:  # `Batch.split` deals sequences round-robin; `decompose` attends the first busiest group
        best = None
        for g in range(min(dp, seqs)):
            n_dec = len(range(g, b, dp))
            n_pad = len(range(b + (g - b) % dp, b + pads, dp))
            has = hc and b % dp == g
            k = (n_dec + n_pad + (chunk if has else 0), n_dec + n_pad + (1 if has else 0))
            if best is None or k > best[0]:
                best = (k, (n_dec, ctx, n_pad, has, chunk, cc))
        attn = best[1]  # type: ignore[index]
    kw, mw = _group_kinds(*whole), _group_moments(*whole)
    ka, ma = (kw, mw) if attn is whole else (_group_kinds(*attn), _group_moments(*attn))
    return (phase, kw, ka), [1.0, *mw, *ma], int(mw[1]), int(ma[1])


@dataclass
class _Class:
    """One fitted class: per op its fitted fields or its place in the MoE block, and the step's constants."""

    names: list[tuple[str, str, str]]  # (name, kind, group) of each decomposed op
    linear: np.ndarray  # [ops] bool: fitted
    coef: np.ndarray  # [11, fields * linear ops]
    scale: np.ndarray  # [11] column scales
    ops: list[Op]  # one decomposed op list (dtypes, counts, kernels, shapes of the fitted ops)
    moe: list[tuple[int, str]]  # (op index, layer-set label) of the ops rebuilt from the MoE block
    util_coef: np.ndarray  # [11, 2]: one-device (bytes, FLOP) of the fitted ops
    util_moe: list[tuple[str, str]]  # (name, label) of the one-device ops rebuilt from the MoE block
    has_flops: np.ndarray  # [linear ops] bool: FLOP at some fitting shape (the roofline reads the peak only then)
    launches: float
    attention: float


class StepArray:
    """`StepTimer._compute`'s parts of the analytical step for many shapes at once (see the module docstring).

    Args:
        timer: the replica's step timer; its memo holds the rebuilt MoE-block op times.
    """

    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer
        t = timer
        prof = t.profile
        self.supported = (
            type(t.cost_model) is RooflineCostModel
            and t.overlap != "two_batch"
            and (prof is None or prof.ideal or bool(prof.overlap))
            and (PER_LAYER or (np.ndim(t.loads) != 2 and np.ndim(t.phys) != 2))
        )
        #: per-layer routing or placement: `StepTimer._compute` takes the other ops from the layer-set estimate (the
        #: layer-averaged loads on the first layer's placement, as `StepTimer.estimate(per_layer=False)`), the routed
        #: experts from `StepTimer._expected_experts` and the expert-parallel all-to-all from `StepTimer._layer_a2a`
        #: (both memoised by tokens); so does `_per_layer_parts` here
        self._per_layer = t.moe is not None and (np.ndim(t.loads) == 2 or np.ndim(t.phys) == 2)
        self._loads = np.asarray(t.loads).mean(axis=0) if np.ndim(t.loads) == 2 else t.loads
        self._phys = np.asarray(t.phys)[0] if np.ndim(t.phys) == 2 else t.phys
        self._dp = max(t.layout.dp_attn, 1)
        #: what the op fields depend on (`_fit`, `_block`): not the GPU but through the GEMM dtype
        self._gkey = (
            id(t.model), t.layout, t.cluster.gpus_per_node, t.cluster.num_gpus, t.precision, t._gemm_dtype,
            None if t.loads is None else np.asarray(t.loads).tobytes(),
            None if t.phys is None else np.asarray(t.phys).tobytes(),
        )  # fmt: skip
        self._gid = _key_id(self._gkey)
        self._one_id = _key_id((id(t.model), t.precision, t._gemm_dtype, "one device"))
        self._timed: dict[tuple, Any] = {}  # (*class key, pattern) -> per-op roofline constants here (or None)
        #: `_lean_cost` in place of `StepTimer._combine` (off once a check finds them different), shapes checked
        self._lean = LEAN
        self._lean_checked = 0
        self._ones_n = np.ones(max(t.n_moe, 1))  # `_lean_cost`'s per-layer expert shares, times each share
        self._links2: dict[int, tuple] = {}  # `_eval_one`'s link constants per timed class (by its id in `_timed`)
        self._moe_memo: dict[tuple, np.ndarray] = {}
        self._moe_sets: dict[bool, list] = {}  # `_block`'s MoE layer sets, on the replica (False) and one device

    # ---- the public entry ------------------------------------------------------------------------------------
    def expected(self, b: int, ctx: int, chunk: int = 0, chunk_ctx: int = 0) -> StepCost:
        """`StepTimer.expected` of ``b`` sequences decoding at context ``ctx`` and a prompt chunk of ``chunk``
        tokens at ``chunk_ctx`` cached ones (0: none), the op-level parts from the array form where it applies."""
        t = self.timer
        seqs = b + (1 if chunk else 0)
        # `steptime._shape` of `_batch`'s arrays, without them: decode (one new token each), prefill (no cache), mixed
        phase = "decode" if chunk <= 1 else "prefill" if not ((b and ctx) or (chunk and chunk_ctx)) else "mixed"
        shape = (seqs, b + chunk, phase) if seqs else (0, 0, "decode")
        padded = t._padded(shape)
        pads = padded - seqs if padded > seqs else 0
        # the scalar path interpolates a decode step of several contexts on its grid (`StepTimer.decode_parts`):
        # that one, and a padded step holding a chunk, stay on it
        uneven = phase == "decode" and not pads and chunk and chunk_ctx != ctx and b
        masked = pads and t.moe is not None and not t._routes_padding()  # masked padding: the scalar path splits it
        scalar = not ENABLED or not self.supported or not seqs or uneven or (pads and chunk) or masked
        parts = None if scalar else self.parts(b, ctx, pads, chunk, chunk_ctx)
        if parts is None:
            return t.expected(*_batch(b, ctx, 0, chunk, chunk_ctx))
        dp = max(t.layout.dp_attn, 1)
        # the busiest DP rank's tokens as `_batch` deals them (`steptime.busiest_rank_tokens`): the chunk sits at
        # index b, with the b // dp decodes of its rank
        rank = -(-b // dp) if not chunk else max(-(-b // dp), b // dp + chunk)
        step = (*shape, padded, rank)  # `host_shape` reads it only with DP attention
        if self._lean:
            try:
                cost = self._lean_cost(parts, step)
            except Exception:  # a host model the lean form cannot call: `_combine` answers (and raises, if it must)
                self._lean = False
                return self._combine(parts, step)
            if self._lean_checked >= _LEAN_CHECKS:
                return cost
            # checked against `StepTimer._combine` on this timer's first shapes: any difference (a term the lean
            # form does not know) and this timer takes `_combine` from then on
            ref = self._combine(parts, step)
            self._lean_checked += 1
            if _same_cost(cost, ref):
                return cost
            self._lean = False
            return ref
        return self._combine(parts, step)

    def _combine(self, parts: np.ndarray, step: tuple) -> StepCost:
        """`StepTimer.expected`'s step from its parts [11] (`StepTimer._combine` on one row)."""
        t = self.timer
        n = max(t.n_moe, 1)
        layers = np.full((1, n), parts[3] / n)
        one = np.zeros(1)
        return t._combine(
            parts[None, :], layers, one, one, np.zeros((1, 1)), np.zeros((1, max(t.layout.ep, 1))), step
        ).cost(0)

    def _lean_cost(self, parts: np.ndarray, step: tuple) -> StepCost:
        """`_combine` of one step in Python floats: the same operations in the same order as `StepTimer._combine`
        and `StepTimer._host_overlap` on a one-row block (IEEE double either way, so the same values), for the
        timers `supported` admits (no two-batch overlap; no host, an ideal one or an overlapping scheduler),
        without a dozen one-element arrays and a `StepBlock` per step."""
        t = self.timer
        other, a2a, comm, e_total, _, nbytes, flops, launches, att, _, _ = parts.tolist()
        n = max(t.n_moe, 1)
        # `_combine`'s sum over the layers of equal shares (the same reduction as `np.full(n, share).sum()`)
        experts = e_total if n == 1 else float(np.add.reduce(self._ones_n * (e_total / n)))
        compute = other + experts - 0.0
        total = other + experts + a2a + comm + 0.0
        padded = step[3]
        host = _NO_HOST_COST
        prof = t.profile
        if prof is not None and not prof.ideal:  # `_host_block` -> `_host_overlap` (one row, overlapping)
            host, total = t._host_one(total, step, round(launches), round(att))  # one DP-attention rank's scheduler
        return StepCost(
            duration_s=total,
            compute_s=compute,
            comm_s=a2a + comm,
            straggler_s=0.0,
            fetch_s=0.0,
            pairs=0,
            dropped_pairs=0,
            bytes=nbytes,
            flops=flops,
            gpu_wait_s=np.zeros(max(t.layout.ep, 1)),
            padded_batch=padded,
            **host,
        )

    def parts(self, b: int, ctx: int, pads: int, chunk: int, chunk_ctx: int) -> np.ndarray | None:
        """The parts [11] of `StepTimer._compute` (exact) for the batch of `_batch`; None where the array form
        does not apply (the caller takes the scalar path)."""
        key, row, t_all, _ = _describe(b, ctx, pads, chunk, chunk_ctx, self._dp)
        timed = self._class(key, (b, ctx, pads, chunk, chunk_ctx))
        if timed is None:
            return None
        if EVAL_ONE:
            out = self._eval_one(timed, key[0], row, t_all)
        else:
            out = self._eval(timed, key[0], np.array([row]), [t_all])[0]
        return self._per_layer_parts(out, key[0], t_all) if self._per_layer else out

    def _per_layer_parts(self, parts: np.ndarray, phase: str, tokens: int) -> np.ndarray:
        """``parts`` [11] of the layer-set estimate with `StepTimer._compute`'s per-layer terms in place: the routed
        experts on each layer's expected busiest GPU, and each layer's all-to-all where there is expert parallelism
        (a step of ``tokens`` tokens in ``phase``)."""
        t = self.timer
        out = parts.copy()
        out[3] = t._expected_experts(tokens)
        a2a = t._layer_a2a(tokens, phase)
        if a2a is not None:
            out[1] = a2a[0]
        return out

    def parts_many(self, shapes: list[tuple[int, int, int, int, int]]) -> np.ndarray:
        """The parts [k, 11] of ``k`` shapes (b, ctx, pads, chunk, chunk_ctx) at once: one array evaluation per
        class and `_pattern`; a row of NaN where the array form does not apply."""
        out = np.full((len(shapes), 11), np.nan)
        groups: dict[tuple, list[tuple[int, list[float], int]]] = {}
        for i, s in enumerate(shapes):
            key, row, t_all, _ = _describe(*s, self._dp)
            groups.setdefault((key, _pattern(s)), []).append((i, row, t_all))
        for (key, _), members in groups.items():
            timed = self._class(key, shapes[members[0][0]])
            if timed is not None:
                idx = [i for i, _, _ in members]
                out[idx] = self._eval(timed, key[0], np.array([r for _, r, _ in members]), [t for _, _, t in members])
                if self._per_layer:
                    for i, _, t_all in members:
                        out[i] = self._per_layer_parts(out[i], key[0], t_all)
        return out

    def _class(self, key: tuple, shape: tuple[int, int, int, int, int]) -> tuple | None:
        """The fitted class of ``key`` with its op constants on this timer's cluster (None: the scalar path's), kept
        per class and `_pattern` of ``shape``, as `_fit` fits it (so which pattern of a class asked first decides
        nothing here either)."""
        at = (*key, _pattern(shape))
        timed = self._timed.get(at, False)
        if timed is False:
            cls = self._fit(key, shape)
            timed = self._timed[at] = None if cls is None else self._time_consts(cls)
        return timed

    def _eval(self, timed: tuple, phase: str, rows: np.ndarray, t_alls: list[int]) -> np.ndarray:
        """Parts [k, 11] of ``k`` shapes of one class from their moment rows [k, 11] and whole-batch tokens [k]."""
        cls, peak_inv, bw_inv, links, count_class = timed
        m = rows / cls.scale
        fields = (m @ cls.coef).reshape(len(rows), len(_FIELDS), -1)  # [k, fields, linear ops]
        flops, wb, kvb, actb, ib, eb, im, em = (fields[:, j] for j in range(len(_FIELDS)))
        local = np.maximum(flops * peak_inv, (wb + kvb + actb) * bw_inv)
        (ibw, ilat, isend), (ebw, elat, esend) = links
        intra = np.where(isend, ib * ibw + im * ilat, 0.0)
        inter = np.where(esend, eb * ebw + em * elat, 0.0)
        sec = local + np.maximum(intra, inter)  # [k, linear ops], s
        out = np.zeros((len(rows), 11))
        out[:, :4] = sec @ count_class
        out[:, 4] = 1.0
        out[:, 5:7] = m @ cls.util_coef
        out[:, 7], out[:, 8] = cls.launches, cls.attention
        if cls.moe or cls.util_moe:
            extra = np.array([self._moe_parts(cls, phase, t) for t in t_alls])  # [k, 7]
            out[:, :4] += extra[:, :4]
            out[:, 5:7] += extra[:, 4:6]
            out[:, 7] += extra[:, 6]
        return out

    def _eval_one(self, timed: tuple, phase: str, row: list[float], t_all: int) -> np.ndarray:
        """`_eval` of one shape, parts [11]: the same operations on the same values (a vector where `_eval` has a
        one-row matrix: numpy's matmul takes the same vector-matrix product for both), without its per-call
        reshaping and stacking."""
        cls, peak_inv, bw_inv, links, count_class = timed
        link = self._links2.get(id(timed))
        if link is None:  # (intra, inter) stacked: [2, 1] inverse bandwidths and latencies, [2, linear ops] sends
            (ibw, ilat, isend), (ebw, elat, esend) = links
            link = (np.array([[ibw], [ebw]]), np.array([[ilat], [elat]]), np.stack([isend, esend]))
            self._links2[id(timed)] = link
        bw2, lat2, send2 = link
        m = np.array(row) / cls.scale
        f = (m @ cls.coef).reshape(len(_FIELDS), -1)  # flops, weight, kv, act bytes, intra, inter bytes, msgs
        local = np.maximum(f[0] * peak_inv, (f[1] + f[2] + f[3]) * bw_inv)
        # `_eval`'s max(intra, inter) of the link times, each where the op sends on that link
        link = np.where(send2, f[4:6] * bw2 + f[6:8] * lat2, 0.0)
        sec = local + np.maximum(link[0], link[1])  # [linear ops], s
        out = np.empty(11)
        out[:4] = sec @ count_class
        out[4] = 1.0
        out[5:7] = m @ cls.util_coef
        out[7], out[8], out[9], out[10] = cls.launches, cls.attention, 0.0, 0.0
        if cls.moe or cls.util_moe:
            extra = self._moe_parts(cls, phase, t_all)  # [7]
            out[:4] += extra[:4]
            out[5:7] += extra[4:6]
            out[7] += extra[6]
        return out

    # ---- the MoE block's non-linear ops ------------------------------------------------------------------------
    def _moe_parts(self, cls: _Class, phase: str, t_all: int) -> np.ndarray:
        """(other, all-to-all, comm, experts s; one-device bytes, FLOP; kernel launches) of the class's ops rebuilt
        from the MoE block at the whole batch's tokens, memoised."""
        key = (id(cls), phase, t_all)
        hit = self._moe_memo.get(key)
        if hit is None:
            t = self.timer
            out = [0.0] * 7  # summed in Python floats: the same additions, in the same order, as on an array
            block = self._block(phase, t_all, one=False)
            for i, label in cls.moe:
                op = block[(cls.names[i][0], label)]
                out[_class_of(op)] += t.cost_model.op_time(op, t.cluster).seconds * op.count
                out[6] += op.kernels * op.count
            if cls.util_moe:
                block = self._block(phase, t_all, one=True)
                for name, label in cls.util_moe:
                    op = block[(name, label)]
                    out[4] += (op.weight_bytes + op.kv_bytes) * op.count
                    out[5] += op.flops * op.count
            if len(self._moe_memo) >= 1 << 15:
                self._moe_memo.clear()
            hit = self._moe_memo[key] = np.array(out)
        return hit

    def _block(self, phase: str, t_all: int, one: bool) -> dict[tuple[str, str], Op]:
        """The MoE blocks' routed ops by (name, layer-set label) at ``t_all`` tokens (`model.ops._moe_routed_ops`),
        on the replica or (``one``) on one device as `utilisation_exact` decomposes it (no routing statistics).

        The ops rebuilt from it (`_T_ALL_OPS`) read the whole batch's tokens only, so the attention group is given
        the same tokens, and on one device (no expert parallelism, no all-to-all) the phase is not read: `_fit_class`
        checks both against `decompose` at every fitting shape. Memoised across timers of the same model, layout
        and precision (the ops do not depend on the GPU but through the GEMM dtype; on one device not on the layout
        either), so a sweep builds each once for all its GPUs, batch limits and workloads."""
        t = self.timer
        if one:
            phase = "prefill"
            key: tuple = (self._one_id, t_all)
        else:
            key = (self._gid, phase, t_all)
        hit = _BLOCKS.get(key)
        if hit is not None and hit[0] is self.timer.model:
            return hit[1]
        lay, cluster = (Layout(), t._one) if one else (t.layout, t.cluster)
        loads, phys = (None, None) if one else (self._loads, self._phys)
        whole = Batch((t_all,), (0,), phase)
        whole.__dict__["tokens"] = t_all  # its cached `Batch.tokens` (the sum of one count), not rebuilt from arrays
        ctx = OpContext(t.model, whole, whole, lay, cluster, t.precision, t._gemm_dtype)
        sets = self._moe_sets.get(one)
        if sets is None:  # the MoE layer sets of the pipeline stages, in order
            sets = [g for st in lay.stage_layers(t.model) for g in _layer_sets_memo(t.model, st, False) if g.is_moe]
            self._moe_sets[one] = sets
        ops: dict[tuple[str, str], Op] = {}
        for g in sets:
            # `_moe_routed_ops` itself: `_BLOCKS` memoises it here already (its own memo's key, with the loads' bytes
            # and a hash of the layout and precision, cost more than it saved)
            ops.update({(op.name, op.group): op for op in _moe_routed_ops(ctx, g, loads, phys)})
        if len(_BLOCKS) >= 1 << 15:
            _BLOCKS.clear()
        _BLOCKS[key] = (t.model, ops)
        return ops

    # ---- fitting a class ---------------------------------------------------------------------------------------
    def _fit(self, key: tuple, shape: tuple[int, int, int, int, int]) -> _Class | None:
        """The class of ``key`` (memoised across timers of the same model, layout and precision), fitted on
        shapes of ``shape``'s `_pattern` (b, ctx, pads, chunk, chunk_ctx); None where it is not of the linear form.
        The fit is a function of the class and the pattern only, never of which shape asked first: a sweep's rows
        do not depend on the order its points are evaluated in, or on what a worker evaluated before."""
        t = self.timer
        pattern = _pattern(shape)
        gkey = (self._gkey, key, pattern)
        hit = _CLASSES.get(gkey)
        if hit is not None and hit[0] is t.model:
            return hit[1]
        try:
            cls = self._fit_class(key, pattern)
        except Exception:  # any surprise in the array form: the scalar path answers (and raises)
            cls = None
        if len(_CLASSES) >= _MAX_CLASSES:
            _CLASSES.clear()
        _CLASSES[gkey] = (t.model, cls)
        return cls

    def _samples(self, key: tuple, pattern: tuple[int, ...], n: int) -> tuple[list[tuple], np.ndarray]:
        """Up to ``n`` shapes of class ``key`` and `_pattern` ``pattern``, spread log-uniformly over the ranges a
        serving step meets (seeded: the same shapes whichever shape of the class asked), and their moment rows
        [shapes, 11]."""
        b, ctx, pads, chunk, chunk_ctx = pattern
        rng = np.random.default_rng(12345)
        draws = np.exp(rng.uniform(0.0, 1.0, (200 * n, 5)) * np.log([1024, 32768, 256, 8192, 16384]))
        out: list[tuple] = []
        rows: list[list[float]] = []
        seen: set[tuple] = set()
        ints = draws.astype(np.int64)
        # converted to Python ints a chunk at a time (most classes fill up from the first few hundred draws)
        for d in (d for lo in range(0, len(ints), 4 * n) for d in ints[lo : lo + 4 * n].tolist()):
            if len(out) >= n:
                break
            s = (
                d[0] if b else 0,
                d[1] if ctx else 0,
                d[2] if pads else 0,
                (1 if chunk == 1 else max(d[3], 2)) if chunk else 0,
                d[4] if chunk_ctx else 0,
            )
            if s in seen:
                continue
            k, row, _, _ = _describe(*s, self._dp)
            if k == key:
                out.append(s)
                rows.append(row)
                seen.add(s)
        return out, np.array(rows)

    def _fit_class(self, key: tuple, pattern: tuple[int, ...]) -> _Class | None:
        t = self.timer
        cand, design = self._samples(key, pattern, 24)
        if not cand:
            return None
        scale = np.maximum(np.abs(design).max(axis=0), 1.0)
        x = design / scale
        rank = int(np.linalg.matrix_rank(x, tol=1e-9))
        use = min(len(cand), rank + 4)  # the fit's shapes and, beyond the rank, its check
        if use < rank + 3:
            return None
        x, cand = x[:use], cand[:use]
        phase = key[0]
        ops_all, util_all, tokens = [], [], []
        for s in cand:
            new, cached = _batch(*s)
            batch = Batch(tuple(new.tolist()), tuple(cached.tolist()), phase)
            ops_all.append(t.estimate(batch, per_layer=False).ops)
            util_all.append(decompose(t.model, batch, Layout(), t._one, t.precision))  # as `utilisation_exact`
            tokens.append(_describe(*s, self._dp)[2:])
        ref = ops_all[0]
        names = [(op.name, op.kind, op.group) for op in ref]
        for ops in ops_all[1:]:
            if [(op.name, op.kind, op.group) for op in ops] != names:
                return None
            if [(op.count, op.dtype, op.stage) for op in ops] != [(op.count, op.dtype, op.stage) for op in ref]:
                return None
        vals = np.array([[[float(getattr(op, f)) for f in _FIELDS] for op in ops] for ops in ops_all])  # [k, ops, F]
        coef, fits = _lstsq(x, vals.reshape(len(cand), -1))
        ok = fits.reshape(len(ref), len(_FIELDS)).all(axis=1)
        moe_names = self._moe_names()
        linear = np.zeros(len(ref), bool)
        moe: list[tuple[int, str]] = []
        for i, op in enumerate(ref):
            kernels_same = all(ops[i].kernels == op.kernels for ops in ops_all)
            if ok[i] and kernels_same and not is_deepep(op) and op.name not in _T_ALL_OPS:
                linear[i] = True
            elif (op.name, op.group) in moe_names:
                moe.append((i, op.group))
            else:
                return None
        # the rebuilt MoE-block ops equal the decomposed ones at every fitting shape
        for (t_all, _), ops in zip(tokens, ops_all, strict=True):
            block = self._block(phase, t_all, one=False)
            if not all(_same_op(block[(names[i][0], label)], ops[i]) for i, label in moe):
                return None
        # launches of the fitted ops: constant in the class (the rebuilt ones' are counted at the step's tokens)
        launches = {
            float(sum(op.kernels * op.count for op, k in zip(ops, linear, strict=True) if k)) for ops in ops_all
        }
        attention = {float(sum(op.kernels * op.count for op in ops if op.kind == "attention")) for ops in ops_all}
        if len(launches) != 1 or len(attention) != 1 or any(ref[i].kind == "attention" for i, _ in moe):
            return None
        # one device (`utilisation_exact`): (bytes, FLOP) per op, fitted, or rebuilt from the MoE block
        uref = util_all[0]
        unames = [(op.name, op.group) for op in uref]
        if any([(op.name, op.group) for op in ops] != unames for ops in util_all[1:]):
            return None
        uvals = np.array(
            [[[(op.weight_bytes + op.kv_bytes) * op.count, op.flops * op.count] for op in ops] for ops in util_all]
        )  # [k, ops, 2]
        ucoef, ufits = _lstsq(x, uvals.reshape(len(cand), -1))
        ufit = ufits.reshape(len(uref), 2).all(axis=1)
        ufit &= np.array([n not in _T_ALL_OPS for n, _ in unames], bool)  # rebuilt always: see `_T_ALL_OPS`
        util_moe = [(n, g) for (n, g), f in zip(unames, ufit, strict=True) if not f]
        if any(u not in moe_names for u in util_moe):
            return None
        for (t_all, _), ops in zip(tokens, util_all, strict=True):
            block = self._block(phase, t_all, one=True)
            byname = {(op.name, op.group): op for op in ops}
            if not all(_same_op(block[u], byname[u]) for u in util_moe):
                return None
        keep = np.repeat(ufit, 2)
        util_coef = ucoef[:, keep].reshape(x.shape[1], -1, 2).sum(axis=1)
        coef_of = coef.reshape(x.shape[1], len(ref), len(_FIELDS))[:, linear, :]  # [11, linear ops, fields]
        return _Class(
            names=names,
            linear=linear,
            coef=np.ascontiguousarray(coef_of.transpose(0, 2, 1).reshape(x.shape[1], -1)),
            scale=scale,
            ops=list(ref),
            moe=moe,
            util_coef=util_coef,
            util_moe=util_moe,
            has_flops=(vals[:, linear, 0] != 0).any(axis=0),
            launches=launches.pop(),
            attention=attention.pop(),
        )

    def _moe_names(self) -> set[tuple[str, str]]:
        """(name, layer-set label) of the ops `model.ops._moe_routed_ops` builds for this model, on the replica and on
        one device (any tokens): the MoE block's ops that read the whole batch's tokens."""
        if self.timer.moe is None:
            return set()
        return set(self._block("prefill", 8, one=False)) | set(self._block("prefill", 8, one=True))

    def _time_consts(self, cls: _Class) -> tuple | None:
        """Per fitted op on this timer's cluster: 1 / peak, 1 / bandwidth, the link constants and its class
        column (count-weighted); None where the hardware lacks a figure an op needs (the scalar path says so)."""
        t = self.timer
        gpu = t.cluster.gpu
        lin = [op for op, keep in zip(cls.ops, cls.linear, strict=True) if keep]
        try:
            flops = zip(lin, cls.has_flops, strict=True)
            peak_inv = np.array([1.0 / gpu.peak(op.dtype) if f else 0.0 for op, f in flops])
            bw_inv = np.full(len(lin), 1.0 / gpu.bandwidth())
            links = []
            for kind in ("intra", "inter"):
                fields = ("intra_bytes", "intra_msgs") if kind == "intra" else ("inter_bytes", "inter_msgs")
                sends = np.array([bool(getattr(op, fields[0]) or getattr(op, fields[1])) for op in lin])
                if sends.any():
                    bw, lat = t.cluster.link(kind)
                    links.append((1.0 / bw, lat, sends))
                else:
                    links.append((0.0, 0.0, sends))
        except Exception:  # a missing figure: the scalar path raises the proper error
            return None
        count_class = np.zeros((len(lin), 4))
        for j, op in enumerate(lin):
            count_class[j, _class_of(op)] = op.count
        return cls, peak_inv, bw_inv, links, count_class


def _class_of(op: Op) -> int:
    """`StepTimer._split`'s part of an op: 0 other compute, 1 all-to-all, 2 other comm, 3 routed experts."""
    if op.name == "routed_experts":
        return 3
    if op.kind == "all_to_all":
        return 1
    return 2 if op.kind in _COMM else 0


def _same_op(a: Op, b: Op) -> bool:
    """Whether two ops are the same but for their pipeline stage."""
    try:
        return bool(replace(a, stage=b.stage) == b)
    except Exception:  # uncomparable shapes (arrays): not provably the same
        return False


def _same_cost(a: StepCost, b: StepCost) -> bool:
    """Whether two steps are equal field by field (the same types and values, NaN equal to NaN), ``gpu_wait_s``
    included."""
    for f in fields(StepCost):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "gpu_wait_s":
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                return False
        elif type(x) is not type(y) or not (x == y or (x != x and y != y)):
            return False
    return True


def _lstsq(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares coefficients [cols, outputs] of ``y`` [k, outputs] on ``x`` [k, cols], and per output
    whether the fit reproduces every row within `_RTOL` of the output's largest magnitude."""
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    err = np.abs(x @ coef - y)
    tol = _RTOL * np.maximum(np.abs(y).max(axis=0), 1e-300)
    return coef, (err <= tol).all(axis=0)


def step_array(timer: StepTimer) -> StepArray:
    """The timer's `StepArray` (made on first use, kept on the timer)."""
    sa = timer.__dict__.get("_step_array")
    if sa is None:
        sa = timer.__dict__["_step_array"] = StepArray(timer)
    return sa


def expected(timer: StepTimer, b: int, ctx: int, chunk: int = 0, chunk_ctx: int = 0) -> StepCost:
    """`StepTimer.expected` of the analytical engine's step (``b`` sequences decoding at ``ctx``, a prompt chunk
    of ``chunk`` tokens at ``chunk_ctx``), through the array form (`StepArray.expected`)."""
    return step_array(timer).expected(b, ctx, chunk, chunk_ctx)
