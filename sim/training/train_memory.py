"""What a training step keeps between a micro-batch's forward and its backward, as the frameworks keep it.

Every tensor a training op saves for its backward is named here, with its
bytes per micro-batch on one GPU (the busiest GPU of an expert-parallel group)
and the kind it belongs to (`KINDS`). A `Policy`, resolved from the scenario,
says which of them are dropped (recomputed in the backward), kept in a lower
precision, or moved to host memory; the same policy says which forward ops the
backward re-runs, so memory saved and time paid come from one list.

Per layer and micro-batch (T tokens of one attention group, T/tp with
sequence parallelism for the norms and residuals, P routed (token, expert)
pairs on the busiest GPU; ``a`` bytes per bf16 element, ``g`` per GEMM input:
``a``, or 1 + 4/128 for fp8 with one fp32 scale per 1x128 tile):

- ``attn_norm_in``, ``mlp_norm_in``: each block's residual input (the
  RMSNorm's input), T/tp x h x a each;
- ``attn_norm_out``, ``mlp_norm_out``: the norm outputs the block's first
  GEMMs keep for their weight gradient, T/tp x h x g each (Megatron's
  ``layernorm`` recompute drops them);
- ``mla_latent``: MLA's compressed q and kv latents, input of the
  up-projections and of their own norms, T x (q_lora + kv_lora) x (a + g);
- ``core_attn_in``: FlashAttention's q, k, v (MLA: the up-projections'
  outputs, dropped by ``mla_up_proj``); ``core_attn_out``: its output, kept
  once for FlashAttention's and the output projection's backward (bf16, plus
  an fp8 copy for an fp8 projection; DeepSeek-V3: one E5M6 copy), and the
  fp32 log-sum-exp (dropped by ``core_attn``);
- ``mlp``: the dense FFN's and shared experts' SwiGLU input and output
  (dropped by ``mlp`` / ``shared_experts``);
- ``router``: fp32 scores [T, E], top-k indices and weights;
- ``expert_fc1_in``: the dispatched tokens, P x h x g; ``moe_act_in``: the
  SwiGLU input, P x 2i (bf16, or fp8 as DeepSeek-V3 keeps it);
  ``moe_act_out``: the SwiGLU output, P x i x g (dropped by ``moe_act``);
  ``expert_out``: the experts' outputs the unpermutation keeps for the
  routing weights' gradient, P x h x a, unless the weights multiply inside
  the activation (``probs_in_act``, Megatron-Core since v0.13);
- ``head``: the LM head's input and what the cross-entropy keeps: fp32
  softmax (Megatron's unfused and fused kernels) or the bf16 gradient
  (Transformer Engine's kernel), T x V/tp each.

``moe`` recompute (standard checkpointing of the whole MoE block) keeps only
the block's input; ``full`` recompute keeps only each layer's input (T/tp x h
x a). An offloaded module's input (`OFFLOAD_OF`) leaves the GPU after the
forward; one layer's worth comes back at a time for the backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.model.ops import Op

#: Saved-activation kinds, in the order of the breakdown.
KINDS = (
    "attn_norm_in",
    "attn_norm_out",
    "mla_latent",
    "core_attn_in",
    "core_attn_out",
    "mlp_norm_in",
    "mlp_norm_out",
    "mlp",
    "router",
    "expert_fc1_in",
    "moe_act_in",
    "moe_act_out",
    "expert_out",
    "head",
)
#: Bytes per element of an fp8 tensor with one fp32 scale per 1 x 128 tile (DeepSeek-V3 report section 3.3.2,
#: "fine-grained quantization"; Transformer Engine's blockwise recipe keeps the same).
FP8_TILE_BYTES = 1.0 + 4.0 / 128
#: DeepSeek-V3's E5M6 (12 bits) with a power-of-2 scale per 1 x 128 tile (report section 3.3.3).
E5M6_TILE_BYTES = 1.5 + 4.0 / 128
#: Megatron offload module -> the saved kind that is its input.
OFFLOAD_OF = {
    "attn_norm": "attn_norm_in",
    "qkv_linear": "attn_norm_out",
    "core_attn": "core_attn_in",
    "attn_proj": "core_attn_out",
    "mlp_norm": "mlp_norm_in",
    "expert_fc1": "expert_fc1_in",
    "moe_act": "moe_act_in",
}
#: Megatron's default ``--recompute-modules`` (megatron/training/arguments.py).
DEFAULT_SELECTIVE = ("core_attn",)
_MLA_UP = {"q_b_proj", "kv_b_proj"}


@dataclass(frozen=True)
class Policy:
    """What the framework keeps (see the module docstring).

    Attributes:
        mode: ``none``, ``selective`` or ``full`` recomputation.
        recompute: Megatron modules recomputed under ``selective``.
        act_bytes: bytes per bf16 activation element (4 for fp32 training).
        gemm_in_bytes: bytes per GEMM input kept for the weight gradient.
        fp8: the linear layers run in fp8.
        moe_act_in_bytes: bytes per element of the routed experts' SwiGLU input.
        attn_out_bytes: bytes per element of the kept attention output (both copies).
        probs_in_act: routing weights applied inside the experts' activation.
        ce_saved_bytes, ce_transient_bytes: bytes per logit the cross-entropy keeps
            until the backward / holds beside that while it runs.
        offload: saved kinds moved to host memory.
    """

    mode: str = "none"
    recompute: frozenset[str] = frozenset()
    act_bytes: float = 2.0
    gemm_in_bytes: float = 2.0
    fp8: bool = False
    moe_act_in_bytes: float = 2.0
    attn_out_bytes: float = 2.0
    probs_in_act: bool = True
    ce_saved_bytes: float = 4.0
    ce_transient_bytes: float = 6.0
    offload: frozenset[str] = frozenset()

    def drops(self, *modules: str) -> bool:
        """True when selective recomputation drops a tensor any of ``modules`` recompute."""
        return self.mode == "selective" and any(m in self.recompute for m in modules)


#: Cross-entropy bytes per logit element: (kept until the backward, in flight beside it). Megatron's
#: ``vocab_parallel_cross_entropy`` (megatron/core/tensor_parallel/cross_entropy.py) casts the bf16 logits to
#: fp32 and saves the fp32 softmax; the fused kernel (megatron/core/fusions/fused_cross_entropy.py) upcasts once
#: and overwrites that copy in place; Transformer Engine's ``parallel_cross_entropy``
#: (transformer_engine/pytorch/cross_entropy.py) computes the gradient in the forward into the bf16 logits.
CE_BYTES = {"unfused": (4.0, 2.0 + 4.0), "fused": (4.0, 2.0), "te": (2.0, 0.0)}


def make_policy(scenario: object, act_bytes: float) -> Policy:
    """The `Policy` of a `TrainScenario` (its ``recompute``, ``precision`` and ``activations``)."""
    acts = scenario.activations  # type: ignore[attr-defined]
    fp8 = scenario.precision.gemm == "fp8"  # type: ignore[attr-defined]
    g = FP8_TILE_BYTES if fp8 else act_bytes
    modules = acts.recompute_modules if acts.recompute_modules is not None else DEFAULT_SELECTIVE
    attn = E5M6_TILE_BYTES if acts.attn_out == "e5m6" else act_bytes + (g if fp8 else 0.0)
    saved, transient = CE_BYTES[acts.cross_entropy]
    return Policy(
        mode=scenario.recompute,  # type: ignore[attr-defined]
        recompute=frozenset(modules),
        act_bytes=act_bytes,
        gemm_in_bytes=g,
        fp8=fp8,
        moe_act_in_bytes=FP8_TILE_BYTES if acts.moe_act_input == "fp8" else act_bytes,
        attn_out_bytes=attn,
        probs_in_act=acts.probs_in_act,
        ce_saved_bytes=saved * act_bytes / 2.0,
        ce_transient_bytes=transient * act_bytes / 2.0,
        offload=frozenset(OFFLOAD_OF[m] for m in acts.offload_modules),
    )


def recompute_modules_of(op: Op, moe_block: bool, mla: bool) -> tuple[str, ...]:
    """The Megatron recompute modules whose re-run includes ``op``'s forward (empty: none)."""
    name, kind = op.name, op.kind
    if name == "norms":
        return ("layernorm",)
    if name in _MLA_UP or (name == "rope" and mla):
        return ("mla_up_proj",)
    if kind == "attention":
        return ("core_attn",)
    if name == "moe_swiglu":
        return ("moe_act", "moe")
    if name in ("ffn_gate_up", "ffn_down") or (name == "swiglu" and not moe_block):
        return ("mlp",)
    if name in ("shared_gate_up", "shared_down", "shared_expert_gate") or (name == "swiglu" and moe_block):
        return ("shared_experts", "moe")
    if moe_block and kind in ("router", "topk_softmax", "all_to_all", "grouped_gemm", "permute"):
        return ("moe",)
    return ()


def op_saved(op: Op, pol: Policy, v_head_dim: int, sp_div: int) -> dict[str, float]:
    """Bytes ``op`` saves for its backward under ``pol``, by kind (one occurrence, one GPU).

    ``v_head_dim``: the attention's value head size. The norm outputs and residuals are per
    block, not per op (`layer_saved`); ``full`` recomputation is applied by the caller.
    """
    s, name, a, g = op.shape, op.name, pol.act_bytes, pol.gemm_in_bytes
    if op.kind == "gemm":
        m, n, k = s["m"], s["n"], s["k"]
        dense = name.startswith("ffn_")
        owner = ("mlp",) if dense else ("shared_experts", "moe")
        if name in _MLA_UP:
            return {"mla_latent": m * k * (a + g)}
        if name.endswith("gate_up") and not pol.drops(*owner):
            return {"mlp": m * n * a}  # the SwiGLU input
        if name.endswith("_down") and not pol.drops(*owner):
            return {"mlp": m * k * g}  # the SwiGLU output, the down projection's input
        if name in ("lm_head", "mtp_head"):
            return {"head": m * k * a / sp_div + m * n * pol.ce_saved_bytes}
        if name == "eh_proj":
            return {"mlp_norm_out": m * k * g}  # MTP's concatenated normed hidden state and embedding
        return {}
    if op.kind == "attention":
        t, heads, d = s["tokens"], s["heads"], s["head_dim"]
        out: dict[str, float] = {}
        if s.get("form") == "mla":
            if not pol.drops("mla_up_proj"):
                out["core_attn_in"] = t * heads * (2 * d + v_head_dim) * a
        else:
            out["core_attn_in"] = t * (heads * d + s["kv_heads"] * (d + v_head_dim)) * a
        out["core_attn_out"] = t * heads * v_head_dim * pol.attn_out_bytes
        if not pol.drops("core_attn"):
            out["core_attn_out"] += t * heads * 4.0  # fp32 log-sum-exp
        return out
    if op.kind == "router":
        if pol.drops("moe"):
            return {}
        t, e, k = s["tokens"], s["experts"], s["top_k"]
        return {"router": t * e * 4.0 + t * k * 8.0}  # fp32 scores; top-k indices and weights
    if op.kind == "grouped_gemm":
        if pol.drops("moe"):
            return {}
        p, h, i = s["pairs"], s["hidden"], s["inter"]
        out = {"expert_fc1_in": p * h * g, "moe_act_in": p * 2 * i * pol.moe_act_in_bytes}
        if not pol.drops("moe_act"):
            out["moe_act_out"] = p * i * g
        out["expert_out"] = p * 4.0 if pol.probs_in_act else p * h * a
        return out
    return {}


def layer_saved(tokens: int, hidden: int, pol: Policy, sp_div: int) -> dict[str, float]:
    """Per-layer saved tensors that belong to no single op: the two residual inputs and the two norm outputs."""
    t = tokens / sp_div
    out = {"attn_norm_in": t * hidden * pol.act_bytes, "mlp_norm_in": t * hidden * pol.act_bytes}
    if not pol.drops("layernorm"):
        out["attn_norm_out"] = t * hidden * pol.gemm_in_bytes
        out["mlp_norm_out"] = t * hidden * pol.gemm_in_bytes
    return out


def kind_index() -> dict[str, int]:
    """Column of each kind in per-kind arrays."""
    return {k: i for i, k in enumerate(KINDS)}
