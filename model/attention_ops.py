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
(`Batch.attention_pairs`, window-capped): ``2 * pairs * heads * (d_qk + d_v)``.
KV bytes: every cached token of a sequence is read once (FlashAttention-style,
one pass per KV head) and the step's new tokens are written.
"""

from __future__ import annotations

from moesim.model.op_record import Op, OpContext, collective, gemm
from moesim.model.params import LayerSet


def attention_ops(c: OpContext, g: LayerSet, absorb: bool) -> list[Op]:
    """Ops of the attention block of layer group ``g`` (see the module docstring)."""
    m, lay, p = c.model, c.layout, c.precision
    a, h, b = m.attention, m.hidden_size, c.attn_batch
    t, label, n = b.tokens, g.label, g.count
    ab, wb, kvb = p.activation_bytes, p.weight_bytes, p.kv_bytes
    dt, at = c.gemm_dtype, p.attention_compute_dtype()
    heads = a.num_heads // lay.tp
    pairs = b.attention_pairs(g.window)
    kv_read = b.kv_tokens_read(g.window)
    shape = {"batch": b.sequences, "tokens": t, "kv_read": kv_read, "pairs": pairs, "heads": heads, "window": g.window}
    ops: list[Op] = []
    if a.kind != "mla":
        kvh = -(-a.num_kv_heads // lay.tp)  # kv heads per GPU, replicated when fewer than tp
        d, dv = a.head_dim, a.v_head_dim
        ops.append(gemm("qkv_proj", label, n, t, heads * d + kvh * (d + dv), h, wb, ab, dt))
        ops.append(
            Op(
                "attention",
                "attention",
                label,
                n,
                flops=2.0 * pairs * heads * (d + dv),
                weight_bytes=0.0,
                kv_bytes=(kv_read + t) * kvh * (d + dv) * kvb,
                act_bytes=t * heads * (d + dv) * ab,
                dtype=at,
                shape={**shape, "kv_heads": kvh, "head_dim": d, "form": a.kind},
            )
        )
        ops.append(gemm("o_proj", label, n, t, h, heads * dv, wb, ab, dt))
    else:
        nope, rope, lora, dv = a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank, a.v_head_dim
        latent = (lora + rope) * kvb  # bytes of one cached token
        if a.q_lora_rank:
            ops.append(gemm("q_a_proj", label, n, t, a.q_lora_rank, h, wb, ab, dt))
            ops.append(gemm("q_b_proj", label, n, t, heads * (nope + rope), a.q_lora_rank, wb, ab, dt))
        else:
            ops.append(gemm("q_proj", label, n, t, heads * (nope + rope), h, wb, ab, dt))
        ops.append(gemm("kv_a_proj", label, n, t, lora + rope, h, wb, ab, dt))
        if absorb:
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
            ops.append(
                Op(
                    "attention",
                    "attention",
                    label,
                    n,
                    flops=2.0 * pairs * heads * (2 * lora + rope),
                    weight_bytes=0.0,
                    kv_bytes=(kv_read + t) * latent,
                    act_bytes=t * heads * (2 * lora + rope) * ab,
                    dtype=at,
                    shape={**shape, "kv_heads": 1, "head_dim": lora + rope, "form": "mla_absorbed"},
                )
            )
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
        else:
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
                    kv_bytes=t * latent,
                    act_bytes=(t * heads * (nope + rope + dv) + kv_read * (width + rope)) * ab,
                    dtype=at,
                    shape={**shape, "kv_heads": heads, "head_dim": nope + rope, "form": "mla"},
                )
            )
        ops.append(gemm("o_proj", label, n, t, h, heads * dv, wb, ab, dt))
    ar = collective("attn_allreduce", "all_reduce", label, n, t * h * ab, lay.tp, c.cluster.gpus_per_node)
    return ops + ([ar] if ar else [])
