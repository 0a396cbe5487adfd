"""How a model is split across GPUs: tensor, expert, data-parallel attention, pipeline.

A `Layout` of ``tp x dp_attn`` GPUs per pipeline stage and ``pp`` stages uses
``tp * dp_attn * pp`` GPUs (vLLM's ``--tensor-parallel-size`` x
``--data-parallel-size`` with ``--enable-expert-parallel``; SGLang's
``--tp`` with ``--dp`` and ``--enable-dp-attention``):

- attention, dense FFN layers, shared experts and the LM head are split
  ``tp`` ways and replicated over the ``dp_attn`` groups, each group serving
  its own share of the batch's sequences;
- MoE layers split the routed experts ``ep`` ways over a stage's GPUs; the
  remaining ``tp * dp_attn / ep`` ways split each expert's intermediate
  width (expert tensor parallelism, ``moe_tp``);
- layers are split into ``pp`` contiguous stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.model.errors import LayoutError
from moesim.model.limits import MAX_GPUS
from moesim.model.spec import ModelSpec


@dataclass(frozen=True)
class Layout:
    """A parallel layout (see the module docstring).

    Attributes:
        tp: tensor-parallel size of attention and dense layers.
        ep: expert-parallel size of MoE layers (divides ``tp * dp_attn``).
        dp_attn: data-parallel attention groups per stage.
        pp: pipeline stages.
        a2a_backend: who runs the EP dispatch and combine all-to-alls: ``deepep`` (DeepEP's normal and
            low-latency kernels, as SGLang and vLLM run EP) or ``nccl`` (`model.a2a`).
        replica_choice: which replica of an expert a token goes to, the engine's rule (`model.routing.
            slot_routes`): ``random`` (vLLM) or ``nearest`` (SGLang); it matters only with redundant experts.
    """

    tp: int = 1
    ep: int = 1
    dp_attn: int = 1
    pp: int = 1
    a2a_backend: str = "deepep"
    replica_choice: str = "random"

    def __post_init__(self) -> None:
        if self.a2a_backend not in ("deepep", "nccl"):
            raise LayoutError(
                f"a2a_backend '{self.a2a_backend}' is not one of deepep, nccl", "use a2a_backend: deepep or nccl"
            )
        if self.replica_choice not in ("random", "nearest"):
            raise LayoutError(
                f"replica_choice '{self.replica_choice}' is not one of random, nearest",
                "use random (vLLM) or nearest (SGLang)",
            )
        for name in ("tp", "ep", "dp_attn", "pp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_GPUS:
                raise LayoutError(
                    f"--{name.replace('_', '-')} must be a positive integer up to {MAX_GPUS:,}, got {value!r}",
                    f"use a value from 1 to {MAX_GPUS:,}",
                )
        if self.num_gpus > MAX_GPUS:
            raise LayoutError(
                f"layout tp={self.tp} x dp_attn={self.dp_attn} x pp={self.pp} = {self.num_gpus:,} GPUs, over the "
                f"limit of {MAX_GPUS:,}",
                "use smaller parallel sizes",
            )
        if self.stage_gpus % self.ep:
            raise LayoutError(
                f"ep={self.ep} does not divide the {self.stage_gpus} GPUs of a stage (tp x dp_attn)",
                "pick ep dividing tp x dp_attn",
            )

    @property
    def stage_gpus(self) -> int:
        """GPUs per pipeline stage: ``tp * dp_attn``."""
        return self.tp * self.dp_attn

    @property
    def num_gpus(self) -> int:
        """GPUs the layout uses: ``tp * dp_attn * pp``."""
        return self.stage_gpus * self.pp

    @property
    def moe_tp(self) -> int:
        """Ways each routed expert's intermediate width is split."""
        return self.stage_gpus // self.ep

    def label(self) -> str:
        """E.g. ``TP8``, ``TP1xDP8 EP8``, ``TP4 PP2``."""
        parts = [f"TP{self.tp}" + (f"xDP{self.dp_attn}" if self.dp_attn > 1 else "")]
        if self.ep > 1:
            parts.append(f"EP{self.ep}")
        if self.pp > 1:
            parts.append(f"PP{self.pp}")
        return " ".join(parts)

    def stage_layers(self, model: ModelSpec) -> list[range]:
        """Layers of each pipeline stage, as even as possible (earlier stages get the extra)."""
        base, extra = divmod(model.num_layers, self.pp)
        out, start = [], 0
        for s in range(self.pp):
            n = base + (1 if s < extra else 0)
            out.append(range(start, start + n))
            start += n
        return out

    def check(self, model: ModelSpec, slots: int | None = None) -> None:
        """Raise `LayoutError` naming every way the layout fails to divide ``model``.

        ``slots``: routed-expert slots per MoE layer of the expert placement (more than the experts when some
        are replicated: SGLang's ``--ep-num-redundant-experts``, DeepSeek's EPLB), None without one. With slots
        the expert-parallel size must divide the slots, not the experts: 256 experts + 32 redundant = 288 slots
        split 72 or 144 ways, as SGLang's and DeepSeek's decode deployments run DeepSeek-V3.
        """
        a, problems = model.attention, []
        if a.num_heads % self.tp:
            problems.append(f"tp={self.tp} does not divide the {a.num_heads} attention heads")
        if a.kind != "mla" and a.num_kv_heads % self.tp and self.tp % a.num_kv_heads:
            problems.append(f"tp={self.tp} and the {a.num_kv_heads} KV heads do not divide each other")
        if model.num_dense_layers and model.dense_intermediate_size % self.tp:
            problems.append(f"tp={self.tp} does not divide the dense FFN width {model.dense_intermediate_size}")
        if model.moe is not None and model.is_moe:
            moe = model.moe
            if slots is not None and slots % self.ep:
                problems.append(f"ep={self.ep} does not divide the placement's {slots} expert slots")
            elif slots is None and moe.num_experts % self.ep:
                problems.append(
                    f"ep={self.ep} does not divide the {moe.num_experts} routed experts (with redundant experts, "
                    "give a placement whose slots it divides: moesim place --gpus EP --redundant N --export sglang)"
                )
            if moe.intermediate_size % self.moe_tp:
                problems.append(
                    f"expert TP={self.moe_tp} (tp x dp_attn / ep) does not divide "
                    f"the expert width {moe.intermediate_size}"
                )
            if moe.shared_intermediate_size % self.tp:
                problems.append(f"tp={self.tp} does not divide the shared-expert width {moe.shared_intermediate_size}")
        elif self.ep > 1:
            problems.append(f"ep={self.ep} on a dense model (no routed experts)")
        if self.pp > model.num_layers:
            problems.append(f"pp={self.pp} exceeds the {model.num_layers} layers")
        if problems:
            raise LayoutError(
                f"layout {self.label()} does not fit {model.name}: " + "; ".join(problems),
                "choose tp/ep/pp that divide the model's heads, experts (or the placement's slots) and widths",
            )
