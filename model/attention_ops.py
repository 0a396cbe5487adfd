"""Attention ops of one layer group on one GPU: projections, core attention, TP all-reduce.

MHA/GQA: a fused QKV projection, attention over the KV cache, the output
projection. MLA (DeepSeek) in two forms:

- plain (prefill in SGLang/vLLM): the latent is up-projected to per-head K
  and V for every cached token (``kv_b_proj``), then ordinary attention with
  qk dim ``nope + rope`` and v dim ``v_head_dim``;
- absorbed (decode): ``W_UK`` is folded into the query (``q_absorb``),
  attention runs over the cached latent as multi-query attention with qk dim
  ``kv_lora + rope`` and v dim ``kv_lora``, and ``W_UV`` is applied to the
  output (``v_absorb``).

Core attention FLOPs: 2 per multiply-add over causal query-key pairs
(`Batch.attention_pairs`, window-capped, chunk-local): ``2 * pairs * heads * (d_qk + d_v)``.
KV bytes: every cached token of a sequence is read once (FlashAttention-style,
one pass per KV head). The step's new tokens are written by a kernel of their
own before attention (``kv_write``: vLLM's ``reshape_and_cache_flash``, MLA's
``concat_and_cache_mla``), after the rotary embedding of q and k (``rope``:
vLLM's ``rotary_embedding``); Qwen3-style per-head q/k norms and MLA's latent
norms are RMSNorm kernels (``qk_norm``, ``q_a_norm``, ``kv_a_norm``).
"""

from __future__ import annotations

from moesim.model.allreduce import engine_op
from moesim.model.op_record import Op, OpContext, collective, gemm, memory_op
from moesim.model.params import LayerSet


def rope_op(group: str, count: int, tokens: int, heads: int, kv_heads: int, rot_dim: int, ab: float, dt: str) -> Op:
    """Rotary embedding of q and k in place: vLLM ``rotary_embedding`` (vllm-project/vllm@csrc/pos_encoding_kernels.cu).

    One thread block per token reads its position (int64) and its cos/sin row ([rot_dim] in the model dtype),
    then reads and writes the ``rot_dim`` rotated elements of each of ``heads`` query and ``kv_heads`` key
    heads: ``x cos - y sin`` and ``y cos + x sin``, 3 FLOP per element. One launch.
    """
    rotated = float(tokens) * (heads + kv_heads) * rot_dim
    return memory_op(
        "rope",
        "rope",
        group,
        count,
        flops=3.0 * rotated,
        read=rotated * ab + tokens * (8.0 + rot_dim * ab),
        written=rotated * ab,
        dtype=dt,
        shape={"tokens": tokens, "heads": heads, "kv_heads": kv_heads, "rot_dim": rot_dim},
    )


def kv_write_op(group: str, count: int, tokens: int, width: int, ab: float, kvb: float, dt: str) -> Op:
    """The new tokens' K and V (or MLA latent) copied into the paged KV cache at their slots.

    vLLM ``reshape_and_cache_flash`` / ``concat_and_cache_mla`` (vllm-project/vllm@csrc/cache_kernels.cu): one
    thread block per token reads its slot (int64) and its ``width`` elements (K and V of the local KV heads, or
    the latent and rope key) and writes them in the cache's dtype. One launch.
    """
    return memory_op(
        "kv_write",
        "kv_write",
        group,
        count,
        flops=0.0,
        read=float(tokens) * (width * ab + 8.0),
        written=0.0,
        kv_bytes=float(tokens) * width * kvb,
        dtype=dt,
        shape={"tokens": tokens, "width": width, "kv_bytes": kvb},
    )


def _rms(
    name: str, group: str, count: int, tokens: int, rows: int, width: int, ab: float, dt: str, kernels: int,
    weight: int | None = None,
) -> Op:  # fmt: skip
    """A plain ``rms_norm`` over ``tokens x rows`` rows of ``width`` (vllm-project/vllm@csrc/layernorm_kernels.cu):
    reads and writes each row once, reads the weights (``weight`` elements; default ``width`` per launch);
    4 FLOP per element."""
    n = float(tokens) * rows * width
    return memory_op(
        name,
        "norm",
        group,
        count,
        flops=4.0 * n,
        read=n * ab,
        written=n * ab,
        weight_bytes=(width * kernels if weight is None else weight) * ab,
        dtype=dt,
        shape={"tokens": tokens * rows, "hidden": width, "residual": 0},
        kernels=kernels,
    )


def attention_ops(c: OpContext, g: LayerSet, absorb: bool, core: bool = False) -> list[Op]:
    """Ops of the attention block of layer group ``g`` (see the module docstring). ``core``: only the ops that
    depend on every sequence's context, ``attention`` and MLA's ``kv_b_proj`` (the rest depend on the batch's
    tokens alone), the ones `sim.serving.steptime` builds for each step."""
    m, lay, p = c.model, c.layout, c.precision
    a, h, b = m.attention, m.hidden_size, c.attn_batch
    t, label, n = b.tokens, g.label, g.count
    ab, wb, kvb = p.activation_bytes, p.weight_bytes, p.kv_bytes
    dt, at = c.gemm_dtype, p.attention_compute_dtype()
    heads = a.num_heads // lay.tp
    pairs = b.attention_pairs(g.window, g.chunk)
    kv_read = b.kv_tokens_read(g.window, g.chunk)
    shape = {"batch": b.sequences, "tokens": t, "kv_read": kv_read, "pairs": pairs, "heads": heads, "window": g.window}
    if g.chunk:
        shape["chunk"] = g.chunk
    if a.kind != "mla" and t > b.sequences:  # a batch with prompts: which sequences decode (FA2 runs them unpacked)
        one, one_kv = b.one_query(g.window, g.chunk)
        if one:
            shape["decode_seqs"], shape["decode_kv_read"] = one, one_kv
    ops: list[Op] = []
    if a.kind != "mla":
        kvh = -(-a.num_kv_heads // lay.tp)  # kv heads per GPU, replicated when fewer than tp
        d, dv = a.head_dim, a.v_head_dim
        act = p.activations
        if not core:
            ops.append(gemm("qkv_proj", label, n, t, heads * d + kvh * (d + dv), h, wb, ab, dt))
            # q_norm and k_norm: two rms_norm launches, per head (Qwen3) or over q and k (OLMoE); Llama 4's
            # weightless per-head norm runs after the rotary on RoPE layers only (vllm-project/vllm@vllm/
            # model_executor/models/llama4.py: ``use_qk_norm = config.use_qk_norm and not self.nope``)
            if a.qk_norm in ("head", "full") or (a.qk_norm == "l2" and g.rope):
                weight = 2 * d if a.qk_norm == "head" else 0 if a.qk_norm == "l2" else (heads + kvh) * d
                ops.append(_rms("qk_norm", label, n, t, heads + kvh, d, ab, act, 2, weight))
            if g.rope:  # Llama 4's NoPE layers skip the rotary embedding
                ops.append(rope_op(label, n, t, heads, kvh, d, ab, act))
            ops.append(kv_write_op(label, n, t, kvh * (d + dv), ab, kvb, act))
        ops.append(
            Op(
                "attention",
                "attention",
                label,
                n,
                flops=2.0 * pairs * heads * (d + dv),
                weight_bytes=0.0,
                kv_bytes=kv_read * kvh * (d + dv) * kvb,
                act_bytes=t * heads * (d + dv) * ab,
                dtype=at,
                shape={**shape, "kv_heads": kvh, "head_dim": d, "form": a.kind},
            )
        )
        if not core:
            ops.append(gemm("o_proj", label, n, t, h, heads * dv, wb, ab, dt))
    else:
        nope, rope, lora, dv = a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank, a.v_head_dim
        latent = (lora + rope) * kvb  # bytes of one cached token
        act = p.activations
        if not core:
            if a.q_lora_rank:
                ops.append(gemm("q_a_proj", label, n, t, a.q_lora_rank, h, wb, ab, dt))
                ops.append(_rms("q_a_norm", label, n, t, 1, a.q_lora_rank, ab, act, 1))
                ops.append(gemm("q_b_proj", label, n, t, heads * (nope + rope), a.q_lora_rank, wb, ab, dt))
            else:
                ops.append(gemm("q_proj", label, n, t, heads * (nope + rope), h, wb, ab, dt))
            ops.append(gemm("kv_a_proj", label, n, t, lora + rope, h, wb, ab, dt))
            ops.append(_rms("kv_a_norm", label, n, t, 1, lora, ab, act, 1))
            ops.append(rope_op(label, n, t, heads, 1, rope, ab, act))  # q_pe of every head and the shared k_pe
            ops.append(kv_write_op(label, n, t, lora + rope, ab, kvb, act))  # concat_and_cache_mla
        if absorb and not core:
            ops.append(
                Op(
                    "q_absorb",
                    "gemm",
                    label,
                    n,
                    flops=2.0 * t * heads * nope * lora,
                    weight_bytes=heads * nope * lora * wb,
                    kv_bytes=0.0,
                    act_bytes=t * heads * (nope + lora) * ab,
                    dtype=dt,
                    shape={"m": t, "n": lora, "k": nope, "batch": heads},
                )
            )
        if absorb:
            ops.append(
                Op(
                    "attention",
                    "attention",
                    label,
                    n,
                    flops=2.0 * pairs * heads * (2 * lora + rope),
                    weight_bytes=0.0,
                    kv_bytes=kv_read * latent,
                    act_bytes=t * heads * (2 * lora + rope) * ab,
                    dtype=at,
                    shape={**shape, "kv_heads": 1, "head_dim": lora + rope, "form": "mla_absorbed"},
                )
            )
        if absorb and not core:
            ops.append(
                Op(
                    "v_absorb",
                    "gemm",
                    label,
                    n,
                    flops=2.0 * t * heads * lora * dv,
                    weight_bytes=heads * lora * dv * wb,
                    kv_bytes=0.0,
                    act_bytes=t * heads * (lora + dv) * ab,
                    dtype=dt,
                    shape={"m": t, "n": dv, "k": lora, "batch": heads},
                )
            )
        if not absorb:
            width = heads * (nope + dv)
            ops.append(
                Op(
                    "kv_b_proj",
                    "gemm",
                    label,
                    n,
                    flops=2.0 * kv_read * width * lora,
                    weight_bytes=lora * width * wb,
                    kv_bytes=kv_read * latent,
                    act_bytes=kv_read * width * ab,
                    dtype=dt,
                    shape={"m": kv_read, "n": width, "k": lora},
                )
            )
            ops.append(
                Op(
                    "attention",
                    "attention",
                    label,
                    n,
                    flops=2.0 * pairs * heads * (nope + rope + dv),
                    weight_bytes=0.0,
                    kv_bytes=0.0,
                    act_bytes=(t * heads * (nope + rope + dv) + kv_read * (width + rope)) * ab,
                    dtype=at,
                    shape={**shape, "kv_heads": heads, "head_dim": nope + rope, "form": "mla"},
                )
            )
        if not core:
            ops.append(gemm("o_proj", label, n, t, h, heads * dv, wb, ab, dt))
    if core:
        return ops
    ar = engine_op(collective("attn_allreduce", "all_reduce", label, n, t * h * ab, lay.tp, c.cluster.gpus_per_node))
    return ops + ([ar] if ar else [])
