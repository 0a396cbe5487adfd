"""`PlacementPlan`: which physical expert slot holds which logical expert.

A plan for a model with L MoE layers, N routed experts per layer and S
physical slots per layer on G GPUs (S/G slots each, G/gpus_per_node nodes):

- ``phys_to_log`` [L, S]: the logical expert of each slot; GPU g holds slots
  ``g*S/G .. (g+1)*S/G - 1`` (SGLang's, vLLM's and TRT-LLM's convention);
- every expert has at least one slot in every layer. A GPU may hold two
  replicas of one expert (EPLB's packing allows it; moesim's ILP never does).

Plans are saved as JSON (``to_json`` / ``from_json``); the engine formats are
in `placement.exporters`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moesim.model import inputs
from moesim.model.errors import MoesimError


@dataclass
class PlacementPlan:
    """Expert placement of one model on one cluster.

    Attributes:
        phys_to_log: [L, S] int64 logical expert per physical slot per MoE layer.
        num_experts: logical routed experts per layer N.
        num_gpus: GPUs G holding experts (the expert-parallel size).
        gpus_per_node: GPUs per node.
        moe_layer_ids: the decoder-layer index of each MoE layer, [L]
            (default ``0..L-1``); engines keyed by decoder layer need it.
        num_hidden_layers: decoder layers of the model (default: last MoE layer + 1).
        method: the solver that made the plan.
        info: solver report (objective, bound, gap, status, ...; no wall-clock seconds: same inputs, same file).
        mtp_layers: multi-token-prediction layers after the decoder layers (DeepSeek-V3's layer 61): an engine that
            keys its plan by layer and runs the MTP layer's MoE from it (TensorRT-LLM) needs an entry for each.
    """

    phys_to_log: np.ndarray
    num_experts: int
    num_gpus: int
    gpus_per_node: int
    moe_layer_ids: list[int] = field(default_factory=list)
    num_hidden_layers: int = 0
    method: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    mtp_layers: int = 0

    def __post_init__(self) -> None:
        self.phys_to_log = np.asarray(self.phys_to_log, dtype=np.int64)
        if self.phys_to_log.ndim == 1:
            self.phys_to_log = self.phys_to_log[None, :]
        if not self.moe_layer_ids:
            self.moe_layer_ids = list(range(self.phys_to_log.shape[0]))
        if not self.num_hidden_layers:
            self.num_hidden_layers = max(self.moe_layer_ids) + 1
        self.validate()

    # shape -------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """MoE layers L."""
        return self.phys_to_log.shape[0]

    @property
    def num_slots(self) -> int:
        """Physical slots per layer S."""
        return self.phys_to_log.shape[1]

    @property
    def num_redundant(self) -> int:
        """Slots beyond one per expert, S - N."""
        return self.num_slots - self.num_experts

    @property
    def slots_per_gpu(self) -> int:
        """S / G."""
        return self.num_slots // self.num_gpus

    @property
    def num_nodes(self) -> int:
        """G / gpus_per_node."""
        return self.num_gpus // self.gpus_per_node

    def gpu_of_slot(self) -> np.ndarray:
        """[S] the GPU of each slot."""
        return np.arange(self.num_slots) // self.slots_per_gpu

    def logcnt(self) -> np.ndarray:
        """[L, N] replicas of each logical expert."""
        return np.stack([np.bincount(row, minlength=self.num_experts) for row in self.phys_to_log])

    def log2phy(self) -> np.ndarray:
        """[L, N, max replicas] the slots of each expert in slot order, -1 padded (EPLB's ``log2phy``)."""
        cnt = self.logcnt()
        out = np.full((self.num_layers, self.num_experts, int(cnt.max())), -1, np.int64)
        for layer, row in enumerate(self.phys_to_log):
            fill = np.zeros(self.num_experts, np.int64)
            for slot, e in enumerate(row):
                out[layer, e, fill[e]] = slot
                fill[e] += 1
        return out

    def gpu_experts(self) -> np.ndarray:
        """[L, G, S/G] logical experts on each GPU."""
        return self.phys_to_log.reshape(self.num_layers, self.num_gpus, self.slots_per_gpu)

    def dense_rows(self) -> np.ndarray:
        """[num_hidden_layers, S]: one row per decoder layer, dense layers filled with the identity-like
        ``arange(S) % N`` (SGLang's ``--init-expert-location`` shape)."""
        out = np.tile(np.arange(self.num_slots) % self.num_experts, (self.num_hidden_layers, 1))
        out[self.moe_layer_ids] = self.phys_to_log
        return out

    # checks ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise a one-line error unless the plan is a well-formed placement."""
        p, n, g = self.phys_to_log, self.num_experts, self.num_gpus
        if self.gpus_per_node < 1 or g < 1 or g % self.gpus_per_node:
            raise MoesimError(f"plan: {g} GPUs do not split into nodes of {self.gpus_per_node}", "fix gpus_per_node")
        if p.shape[1] % g:
            raise MoesimError(
                f"plan: {p.shape[1]} slots do not split evenly over {g} GPUs",
                f"make experts + redundant a multiple of {g}",
            )
        if p.size and ((p < 0).any() or (p >= n).any()):
            raise MoesimError(f"plan: expert ids outside 0..{n - 1}", "check the number of experts")
        if len(self.moe_layer_ids) != p.shape[0] or (self.num_hidden_layers <= max(self.moe_layer_ids, default=-1)):
            raise MoesimError(
                f"plan: {len(self.moe_layer_ids)} MoE layer ids for {p.shape[0]} layers "
                f"(hidden layers {self.num_hidden_layers})",
                "give one decoder-layer index per MoE layer",
            )
        for layer, row in enumerate(p):
            missing = np.setdiff1d(np.arange(n), row)
            if missing.size:
                raise MoesimError(
                    f"plan: MoE layer {layer} gives expert {int(missing[0])} no slot",
                    "every expert needs at least one replica",
                )

    # native JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-able data."""
        return {
            "format": "moesim-placement-plan/1",
            "method": self.method,
            "num_experts": self.num_experts,
            "num_gpus": self.num_gpus,
            "gpus_per_node": self.gpus_per_node,
            "num_hidden_layers": self.num_hidden_layers,
            "moe_layer_ids": list(map(int, self.moe_layer_ids)),
            "physical_to_logical_map": self.phys_to_log.tolist(),
            "info": self.info,
        } | ({"mtp_layers": self.mtp_layers} if self.mtp_layers else {})  # absent when 0: older files stay the same

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "plan") -> PlacementPlan:
        """Inverse of `to_dict`."""
        fix = "write it with 'moesim place'"
        inputs.expect_mapping(d, what, fix)
        try:
            return cls(
                phys_to_log=np.asarray(d["physical_to_logical_map"], dtype=np.int64),
                num_experts=int(d["num_experts"]),
                num_gpus=int(d["num_gpus"]),
                gpus_per_node=int(d["gpus_per_node"]),
                moe_layer_ids=[int(x) for x in d.get("moe_layer_ids", [])],
                num_hidden_layers=int(d.get("num_hidden_layers", 0)),
                method=str(d.get("method", "")),
                info=dict(d.get("info", {})),
                mtp_layers=int(d.get("mtp_layers", 0)),
            )
        except KeyError as exc:
            raise MoesimError(f"{what}: not a moesim placement plan (no key {exc})", fix) from None
        except (TypeError, ValueError, OverflowError) as exc:
            detail = " ".join(str(exc).split())[:120]
            raise MoesimError(f"{what}: not a moesim placement plan ({detail})", fix) from None

    def to_json(self, path: str | Path) -> None:
        """Write the plan as JSON (atomically)."""
        write_text_atomic(Path(path), json.dumps(self.to_dict()))

    @classmethod
    def from_json(cls, path: str | Path) -> PlacementPlan:
        """Read a plan written by `to_json`."""
        fix = "give a plan JSON written by 'moesim place' (plan_<method>.json)"
        d = inputs.read_json(path, "a placement plan JSON", fix)
        return cls.from_dict(inputs.expect_mapping(d, path, fix), str(path))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (`model.outputs.write_text`: temporary name, fsync, rename).

    An `OSError` (a read-only folder, a full disk) becomes one `MoesimError` line naming ``path``.
    """
    from moesim.model.outputs import write_text

    write_text(path, text)
