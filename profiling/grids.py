"""Shape grids for the microbenchmarks, taken from the preset models.

Every grid point is a dict of the kind's shape columns (`profiling.tables`).
The (N, K) of dense GEMMs, the expert widths, head counts and router sizes
come from the preset models' layers. On the CPU (and on any device in
``quick`` mode) a layer that would be slow to time is sharded as tensor or
expert parallelism would shard it (TP divides a projection's width, EP the
experts a device holds) until it fits the mode's size budget, so the grid
still has the models' shapes, only split across more devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from moesim.model.hf_config import load_model, preset_names

Shape = dict[str, Any]


@dataclass(frozen=True)
class Budget:
    """Size limits of a grid (elements and bytes are per device)."""

    gemm_nk: int  # largest N x K of a dense GEMM
    gemm_m: tuple[int, ...]  # GEMM rows (tokens)
    gemm_shapes: int  # (N, K) pairs kept
    expert_bytes: float  # local expert weights (fp32 bytes) of a grouped GEMM
    moe_configs: int  # MoE presets kept
    moe_tokens: tuple[int, ...]
    skew_exponents: tuple[float, ...]
    skew_pairs: tuple[int, ...]
    attn_heads: int  # most query heads per device
    prefill_len: tuple[int, ...]
    decode_batch: tuple[int, ...]
    decode_kv: tuple[int, ...]
    attn_configs: int
    router_tokens: tuple[int, ...]
    memcpy_bytes: tuple[int, ...]
    collective_bytes: tuple[int, ...]


def _pow2(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(2**i for i in range(lo, hi + 1))


def _half_octaves(hi: int) -> tuple[int, ...]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24... up to 2^hi: powers of two and the points midway (x1.5) between them."""
    return tuple(sorted({2**i for i in range(hi + 1)} | {3 * 2**i for i in range(hi - 1)}))


BUDGETS: dict[tuple[str, str], Budget] = {
    ("cpu", "quick"): Budget(
        gemm_nk=2**23,
        gemm_m=_half_octaves(10),
        gemm_shapes=8,
        expert_bytes=96e6,
        moe_configs=3,
        moe_tokens=_half_octaves(10),
        skew_exponents=(0.6, 1.2, 2.0),
        skew_pairs=(64, 128, 256),
        attn_heads=8,
        prefill_len=(128, 512, 1024),
        decode_batch=(1, 8, 32),
        decode_kv=(256, 1024, 4096),
        attn_configs=2,
        router_tokens=_pow2(0, 11),
        memcpy_bytes=_pow2(16, 27),
        collective_bytes=_pow2(10, 22)[::2],
    ),
    ("cpu", "tiny"): Budget(  # the demo's and the tests' few seconds
        gemm_nk=2**22,
        gemm_m=_half_octaves(7),
        gemm_shapes=4,
        expert_bytes=8e6,
        moe_configs=1,
        moe_tokens=_half_octaves(6),
        skew_exponents=(1.2,),
        skew_pairs=(32,),
        attn_heads=4,
        prefill_len=(64, 128),
        decode_batch=(1, 4),
        decode_kv=(128, 512),
        attn_configs=1,
        router_tokens=(1, 16, 128),
        memcpy_bytes=_pow2(16, 22)[::2],
        collective_bytes=(4096, 65536),
    ),
    ("cpu", "full"): Budget(
        gemm_nk=2**25,
        gemm_m=_pow2(0, 11),
        gemm_shapes=40,
        expert_bytes=400e6,
        moe_configs=12,
        moe_tokens=_pow2(0, 11),
        skew_exponents=(0.4, 0.8, 1.2, 1.6, 2.0),
        skew_pairs=(64, 256, 1024),
        attn_heads=16,
        prefill_len=(128, 256, 512, 1024, 2048, 4096),
        decode_batch=(1, 4, 16, 64),
        decode_kv=(256, 1024, 4096, 16384),
        attn_configs=6,
        router_tokens=_pow2(0, 12)[::2],
        memcpy_bytes=_pow2(12, 29),
        collective_bytes=_pow2(10, 26),
    ),
    ("cuda", "tiny"): Budget(
        gemm_nk=2**24,
        gemm_m=_half_octaves(10),
        gemm_shapes=4,
        expert_bytes=1e9,
        moe_configs=1,
        moe_tokens=_half_octaves(10),
        skew_exponents=(1.2,),
        skew_pairs=(1024,),
        attn_heads=32,
        prefill_len=(512, 2048),
        decode_batch=(1, 16),
        decode_kv=(1024, 8192),
        attn_configs=1,
        router_tokens=(1, 256, 4096),
        memcpy_bytes=_pow2(20, 28)[::2],
        collective_bytes=_pow2(12, 24)[::4],
    ),
    ("cuda", "quick"): Budget(
        gemm_nk=2**27,
        gemm_m=(1, 8, 32, 128, 512, 2048, 8192),
        gemm_shapes=20,
        expert_bytes=8e9,
        moe_configs=4,
        moe_tokens=(1, 4, 16, 64, 256, 1024, 4096),
        skew_exponents=(0.6, 1.2, 2.0),
        skew_pairs=(256, 4096),
        attn_heads=128,
        prefill_len=(512, 2048, 8192),
        decode_batch=(1, 16, 128),
        decode_kv=(1024, 8192, 32768),
        attn_configs=3,
        router_tokens=(1, 64, 1024, 8192),
        memcpy_bytes=_pow2(16, 30)[::2],
        collective_bytes=_pow2(10, 28)[::3],
    ),
    ("cuda", "full"): Budget(
        gemm_nk=2**29,
        gemm_m=_pow2(0, 14),
        gemm_shapes=80,
        expert_bytes=40e9,
        moe_configs=12,
        moe_tokens=_pow2(0, 14),
        skew_exponents=(0.4, 0.8, 1.2, 1.6, 2.0),
        skew_pairs=(256, 2048, 16384),
        attn_heads=128,
        prefill_len=(256, 512, 1024, 2048, 4096, 8192, 16384),
        decode_batch=(1, 4, 16, 64, 256),
        decode_kv=(512, 2048, 8192, 32768, 131072),
        attn_configs=8,
        router_tokens=_pow2(0, 14)[::2],
        memcpy_bytes=_pow2(12, 31),
        collective_bytes=_pow2(10, 30),
    ),
}


def _spread(items: list[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced through ``items`` (all when there are fewer)."""
    if len(items) <= n:
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


@lru_cache(maxsize=1)
def _models() -> tuple[Any, ...]:
    return tuple(load_model(name) for name in preset_names())


def gemm_shapes(b: Budget) -> list[Shape]:
    """Dense GEMMs: every linear layer's (N, K) of every preset, TP-sharded to fit, times ``b.gemm_m``."""
    nk: set[tuple[int, int]] = set()
    for m in _models():
        a, h = m.attention, m.hidden_size
        dv = a.v_head_dim
        layers = [(a.num_heads * a.head_dim + 2 * a.num_kv_heads * dv, h, 0), (h, a.num_heads * dv, 1)]
        if m.dense_intermediate_size:
            layers += [(2 * m.dense_intermediate_size, h, 0), (h, m.dense_intermediate_size, 1)]
        if m.moe is not None:
            i = m.moe.intermediate_size
            layers += [(2 * i, h, 0), (h, i, 1)]
        for n, k, split in layers:
            tp = 1
            while n * k // tp > b.gemm_nk and tp < 64:
                tp *= 2
            nk.add((n // tp, k) if split == 0 else (n, k // tp))
    pairs = _spread(sorted(nk, key=lambda p: p[0] * p[1]), b.gemm_shapes)
    return [{"m": m, "n": n, "k": k} for n, k in pairs for m in b.gemm_m]


def moe_configs(b: Budget) -> list[Shape]:
    """One MoE layer per preset MoE model: (hidden, inter, experts, top_k, ep, moe_tp) fitted to the budget."""
    out: dict[tuple[int, ...], Shape] = {}
    for m in _models():
        if m.moe is None:
            continue
        h, i, e, k = m.hidden_size, m.moe.intermediate_size, m.moe.num_experts, m.moe.top_k
        ep, tp = 1, 1
        while (e // ep) * 3 * h * (i // tp) * 4 > b.expert_bytes:
            if e // ep > 8 and e % (ep * 2) == 0:  # keep 8 local experts; then split their width
                ep *= 2
            else:
                tp *= 2
        key = (h, i // tp, e // ep, k)
        out.setdefault(key, {"hidden": h, "inter": i, "experts": e, "top_k": k, "ep": ep, "moe_tp": tp})
    configs = sorted(out.values(), key=lambda c: (c["hidden"], c["inter"] // c["moe_tp"]))
    return _spread(configs, b.moe_configs)


def grouped_gemm_shapes(b: Budget) -> list[Shape]:
    """Balanced grouped GEMMs over ``b.moe_tokens`` for every MoE config."""
    return [{**c, "tokens": t, "distribution": "balanced"} for c in moe_configs(b) for t in b.moe_tokens]


def skew_shapes(b: Budget) -> list[Shape]:
    """Balanced and power-law-skewed grouped GEMMs on one config, for the skew model.

    The config is the smallest MoE config with at least 8 local experts; the
    balanced rows cover pairs per expert from 1 to the total of the largest
    skewed case, so that the busiest expert stays inside the measured range.
    """
    configs = [c for c in moe_configs(b) if c["experts"] // c["ep"] >= 8] or moe_configs(b)
    c = configs[0]
    local, k = c["experts"] // c["ep"], c["top_k"]
    rows: list[Shape] = []
    for n in _pow2(0, int(np.log2(max(b.skew_pairs)))):
        rows.append({**c, "tokens": n * local * c["ep"] // k or 1, "distribution": "balanced", "skew_set": True})
    for pairs in b.skew_pairs:
        for a in b.skew_exponents:
            tokens = max(1, pairs * c["ep"] // k)
            rows.append({**c, "tokens": tokens, "distribution": f"power:{a:g}", "skew_set": True})
    return rows


def attention_configs(b: Budget) -> list[Shape]:
    """(heads, kv_heads, head_dim) per preset, TP-sharded to at most ``b.attn_heads`` query heads."""
    out: set[tuple[int, int, int]] = set()
    for m in _models():
        a = m.attention
        heads, kvh = a.num_heads, a.num_kv_heads
        while heads > b.attn_heads:
            heads //= 2
            kvh = max(1, kvh // 2)
        d = 128 if a.kind == "mla" else a.head_dim
        out.add((heads, kvh, d))
    return [{"heads": h, "kv_heads": kv, "head_dim": d} for h, kv, d in _spread(sorted(out), b.attn_configs)]


def attention_shapes(b: Budget) -> list[Shape]:
    """Causal prefill (one sequence of L tokens) and decode (one token over kv_len cached) per config."""
    rows: list[Shape] = []
    for c in attention_configs(b):
        rows += [{**c, "batch": 1, "q_len": n, "kv_len": n} for n in b.prefill_len]
        rows += [{**c, "batch": bs, "q_len": 1, "kv_len": kv} for bs in b.decode_batch for kv in b.decode_kv]
    return rows


def router_shapes(b: Budget) -> list[Shape]:
    """Router GEMM + softmax + top-k per distinct (hidden, experts, top_k) of the presets."""
    cfgs = sorted({(m.hidden_size, m.moe.num_experts, m.moe.top_k) for m in _models() if m.moe is not None})
    cfgs = _spread(cfgs, 4 if b.moe_configs <= 4 else len(cfgs))
    return [{"tokens": t, "hidden": h, "experts": e, "top_k": k} for h, e, k in cfgs for t in b.router_tokens]


def permute_shapes(b: Budget) -> list[Shape]:
    """Dispatch gather and combine scatter per distinct (hidden, top_k) of the presets."""
    cfgs = sorted({(m.hidden_size, m.moe.top_k) for m in _models() if m.moe is not None})
    cfgs = _spread(cfgs, 3 if b.moe_configs <= 4 else len(cfgs))
    return [
        {"tokens": t, "hidden": h, "top_k": k, "direction": d}
        for h, k in cfgs
        for t in b.router_tokens
        for d in ("dispatch", "combine")
    ]


def memcpy_shapes(b: Budget) -> list[Shape]:
    """Copies of ``b.memcpy_bytes`` bytes."""
    return [{"bytes": n} for n in b.memcpy_bytes]


def collective_shapes(b: Budget) -> list[Shape]:
    """Message sizes for each collective (the ranks are added by the runner)."""
    return [{"bytes": n} for n in b.collective_bytes]


# ---- the engines' memory-bound kernels between the GEMMs (`model.ops.ENGINE_KINDS`) ----


def _n_configs(b: Budget) -> int:
    """Distinct preset sizes kept per engine kernel: 1 in the tiny grids, up to 4."""
    return max(1, min(4, b.moe_configs))


def _rows(b: Budget) -> tuple[int, ...]:
    """Token counts of the engine kernels: every other router token count (their times are smooth in rows)."""
    return b.router_tokens[::2] if len(b.router_tokens) > 4 else b.router_tokens


def norm_shapes(b: Budget) -> list[Shape]:
    """RMSNorm, plain and with the residual add, over `_rows` token counts of each preset's hidden size."""
    hidden = _spread(sorted({m.hidden_size for m in _models()}), _n_configs(b))
    return [{"tokens": t, "hidden": h, "residual": r} for h in hidden for t in _rows(b) for r in (0, 1)]


def rope_shapes(b: Budget) -> list[Shape]:
    """Rotary embedding of q and k for each attention config (`attention_configs`), rot_dim = head_dim."""
    return [
        {"tokens": t, "heads": c["heads"], "kv_heads": c["kv_heads"], "rot_dim": c["head_dim"]}
        for c in attention_configs(b)
        for t in _rows(b)
    ]


def _width_cap(b: Budget) -> int:
    """The widest activation row timed: N x K budget of a dense GEMM / 1024 (TP splits wider layers)."""
    return max(1024, b.gemm_nk // 1024)


def activation_shapes(b: Budget) -> list[Shape]:
    """SiLU-and-multiply over each preset's dense and expert FFN width, halved (as TP splits it) to fit."""
    widths: set[int] = set()
    for m in _models():
        for w in (m.dense_intermediate_size, m.moe.intermediate_size if m.moe is not None else 0):
            while w > _width_cap(b):
                w //= 2
            if w:
                widths.add(w)
    return [{"tokens": t, "width": w} for w in _spread(sorted(widths), _n_configs(b)) for t in _rows(b)]


def kv_write_shapes(b: Budget) -> list[Shape]:
    """KV-cache writes of kv_heads x (K + V) elements per token for each attention config."""
    widths = sorted({c["kv_heads"] * 2 * c["head_dim"] for c in attention_configs(b)})
    return [{"tokens": t, "width": w} for w in widths for t in _rows(b)]


def topk_softmax_shapes(b: Budget) -> list[Shape]:
    """Router top-k over each preset's (experts, top_k)."""
    cfgs = _spread(sorted({(m.moe.num_experts, m.moe.top_k) for m in _models() if m.moe is not None}), 4)
    return [{"tokens": t, "experts": e, "top_k": k} for e, k in cfgs for t in _rows(b)]


def sampling_shapes(b: Budget) -> list[Shape]:
    """Greedy and random sampling over ``b.decode_batch`` sequences for each preset's vocabulary."""
    vocabs = _spread(sorted({m.vocab_size for m in _models()}), _n_configs(b))
    return [
        {"sequences": n, "vocab": v, "sampling": rule}
        for v in vocabs
        for n in b.decode_batch
        for rule in ("greedy", "random")
    ]


# ---- training's kernels (`model.train_ops`): backward passes and fp8 casts at training sizes ----


@dataclass(frozen=True)
class TrainBudget:
    """Size limits of the training kernels' grids (per device).

    ``tokens``: rows of a micro-batch's token-wise kernels (micro-batch x sequence on one GPU); ``expert_rows``:
    token-expert pairs per local expert (thousands in training); ``gemm_nk``, ``gemm_shapes``: as `Budget`'s;
    ``expert_bytes``: local expert weights (fp32 bytes) of a grouped GEMM; ``seq_len``: causal attention lengths;
    ``attn_heads``: most query heads; ``logits``: most tokens x vocab elements of a cross-entropy (the vocabulary
    is halved, as vocab-parallel TP splits it, until it fits); ``configs``: preset sizes kept per kind.
    """

    tokens: tuple[int, ...]
    gemm_nk: int
    gemm_shapes: int
    expert_rows: tuple[int, ...]
    expert_bytes: float
    seq_len: tuple[int, ...]
    attn_heads: int
    logits: int
    configs: int


TRAIN_BUDGETS: dict[tuple[str, str], TrainBudget] = {
    ("cpu", "tiny"): TrainBudget((64, 256), 2**20, 2, (32, 128), 4e6, (128,), 2, 2**21, 1),
    ("cpu", "quick"): TrainBudget((256, 1024, 4096), 2**21, 3, (128, 512, 2048), 24e6, (512, 1024), 4, 2**25, 2),
    ("cpu", "full"): TrainBudget((256, 1024, 4096), 2**22, 6, (128, 512, 2048), 96e6, (512, 1024, 2048), 8, 2**26, 3),
    ("cuda", "tiny"): TrainBudget((1024, 4096), 2**24, 2, (512, 2048), 1e9, (2048,), 16, 2**28, 1),
    ("cuda", "quick"): TrainBudget(
        (1024, 4096, 16384), 2**27, 8, (512, 2048, 8192), 8e9, (2048, 4096), 128, 2**31, 3
    ),
    ("cuda", "full"): TrainBudget(
        (512, 1024, 2048, 4096, 8192, 16384), 2**29, 20, (256, 1024, 4096, 16384), 40e9, (1024, 2048, 4096, 8192),
        128, 2**32, 6,
    ),
}  # fmt: skip


def _as_budget(t: TrainBudget, b: Budget) -> Budget:
    """``b`` with the training budget's GEMM, expert and attention limits (for the forward grids' helpers)."""
    from dataclasses import replace

    return replace(
        b, gemm_nk=t.gemm_nk, gemm_shapes=t.gemm_shapes, expert_bytes=t.expert_bytes, moe_configs=t.configs,
        attn_heads=t.attn_heads, attn_configs=t.configs,
    )  # fmt: skip


def train_shapes(t: TrainBudget, b: Budget) -> list[tuple[str, Shape]]:
    """(kind, shape) of every training kernel (`model.train_ops.TRAIN_KINDS`) at training sizes.

    GEMM dgrad and wgrad over the presets' (N, K) (TP-sharded to ``t.gemm_nk``) at ``t.tokens`` rows; the experts'
    grouped dgrad and wgrad at ``t.expert_rows`` pairs per local expert; attention backward at ``t.seq_len``;
    the memory-bound kernels' backward, the cross-entropy and the fp8 casts at ``t.tokens`` rows.
    """
    bb = _as_budget(t, b)
    out: list[tuple[str, Shape]] = []
    nk = {(s["n"], s["k"]) for s in gemm_shapes(replace_m(bb))}
    for n, k in sorted(nk):
        for m in t.tokens:
            out += [("gemm_dgrad", {"m": m, "n": n, "k": k}), ("gemm_wgrad", {"m": m, "n": n, "k": k})]
    for c in moe_configs(bb):
        local = c["experts"] // c["ep"]
        for rows in t.expert_rows:
            s = {**c, "tokens": max(1, rows * local * c["ep"] // c["top_k"]), "distribution": "balanced"}
            out += [("grouped_gemm_dgrad", s), ("grouped_gemm_wgrad", s)]
    for c in attention_configs(bb):
        out += [("attention_bwd", {**c, "batch": 1, "q_len": n, "kv_len": n}) for n in t.seq_len]
        out += [
            ("rope_bwd", {"tokens": n, "heads": c["heads"], "kv_heads": c["kv_heads"], "rot_dim": c["head_dim"]})
            for n in t.tokens
        ]
    hidden = _spread(sorted({m.hidden_size for m in _models()}), t.configs)
    out += [("norm_bwd", {"tokens": n, "hidden": h}) for h in hidden for n in t.tokens]
    widths = sorted({s["width"] for s in activation_shapes(bb)})
    out += [("activation_bwd", {"tokens": n, "width": w}) for w in _spread(widths, t.configs) for n in t.tokens]
    cfgs = _spread(sorted({(m.hidden_size, m.moe.top_k) for m in _models() if m.moe is not None}), t.configs)
    out += [
        ("permute_bwd", {"tokens": n, "hidden": h, "top_k": k, "direction": d})
        for h, k in cfgs
        for n in t.tokens
        for d in ("dispatch", "combine")
    ]
    for v in _spread(sorted({m.vocab_size for m in _models()}), t.configs):
        for n in t.tokens:
            while n * v > t.logits and v > 1024:
                v //= 2
            out += [("cross_entropy", {"tokens": n, "vocab": v}), ("cross_entropy_bwd", {"tokens": n, "vocab": v})]
    # fp8 casts of the GEMMs' inputs: every hidden size and (sharded) expert width, 1 x 128 groups; per token too
    cast_widths = _spread(sorted({w for w in (*hidden, *widths) if w % 128 == 0}), t.configs + 1)
    for w in cast_widths:
        for n in t.tokens:
            out += [
                ("quantize", {"tokens": n, "width": w, "group_cols": 128}),
                ("quantize", {"tokens": n, "width": w, "group_cols": w}),
                ("cast_transpose", {"tokens": n, "width": w, "group_cols": 128}),
                ("amax", {"tokens": n, "width": w}),
            ]
    return out


def replace_m(b: Budget) -> Budget:
    """``b`` with one GEMM row count: `gemm_shapes` then lists each (N, K) once."""
    from dataclasses import replace

    return replace(b, gemm_m=(1,))
