"""Routing statistics: per-layer expert loads, co-activation and transitions.

Everything placement needs comes from one of two sources:

- a per-token top-k trace ``topk`` [T, L, k] of logical expert ids (int,
  ``-1`` where a token has no entry, e.g. a dropped pick), from which loads,
  co-activation and layer-to-layer transitions are exact counts; or
- aggregated counts ``counts`` [L, N] (how many (token, expert) pairs each
  expert received per MoE layer), optionally with a co-activation tensor
  [L, N, N] and transitions [L-1, N, N] that a producer already summed.

``L`` counts MoE layers only (dense layers have no experts to place).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moesim.model.errors import MoesimError


@dataclass
class RoutingStats:
    """Routing statistics of one model over a workload.

    Attributes:
        counts: (token, expert) pairs per MoE layer and logical expert, [L, N],
            float, non-negative.
        top_k: experts per token (None when only counts are known).
        topk: optional per-token trace [T, L, k] of logical expert ids, int64,
            -1 for no entry.
        source: where the statistics came from (a file name or "synthetic").
        coactivation: optional [L, N, N] counts of tokens that chose both e and
            f in one layer (diagonal: tokens that chose e). Derived from
            ``topk`` when not given.
        transitions: optional [L-1, N, N] counts of (token, e at layer l,
            f at layer l+1). Derived from ``topk`` when not given.
    """

    counts: np.ndarray
    top_k: int | None = None
    topk: np.ndarray | None = None
    source: str = ""
    coactivation: np.ndarray | None = field(default=None, repr=False)
    transitions: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=float)
        validate_counts(self.counts, self.source or "routing statistics")
        if self.topk is not None:
            self.topk = np.asarray(self.topk, dtype=np.int64)

    @classmethod
    def from_topk(cls, topk: np.ndarray, num_experts: int, source: str = "") -> RoutingStats:
        """Statistics from a per-token trace ``topk`` [T, L, k] (or [T, k] for one layer)."""
        topk = np.asarray(topk)
        if topk.ndim == 2:
            topk = topk[:, None, :]
        if topk.ndim != 3 or topk.shape[0] == 0:
            raise MoesimError(
                f"{source or 'trace'}: expected top-k expert ids [tokens, moe_layers, k], got shape {list(topk.shape)}",
                "give one row of k expert ids per token and MoE layer",
            )
        if topk.dtype.kind == "f" and (not np.isfinite(topk).all() or (topk % 1).any()):
            raise MoesimError(f"{source or 'trace'}: expert ids must be integers", "store the router's top-k ids")
        topk = topk.astype(np.int64)
        if (topk >= num_experts).any() or (topk < -1).any():
            raise MoesimError(
                f"{source or 'trace'}: expert ids outside 0..{num_experts - 1} (max {int(topk.max())})",
                "check that the trace is for this model (number of routed experts)",
            )
        _, n_layers, k = topk.shape
        counts = np.zeros((n_layers, num_experts))
        for layer in range(n_layers):
            ids = topk[:, layer, :].ravel()
            counts[layer] = np.bincount(ids[ids >= 0], minlength=num_experts)
        return cls(counts=counts, top_k=k, topk=topk, source=source)

    @property
    def num_layers(self) -> int:
        """MoE layers L."""
        return self.counts.shape[0]

    @property
    def num_experts(self) -> int:
        """Logical experts per layer N."""
        return self.counts.shape[1]

    @property
    def num_tokens(self) -> int | None:
        """Tokens in the trace (None without a trace)."""
        return None if self.topk is None else self.topk.shape[0]

    def shares(self) -> np.ndarray:
        """Load shares [L, N]: each row sums to 1."""
        return self.counts / self.counts.sum(axis=1, keepdims=True)

    def _onehot(self, layer: int) -> np.ndarray:
        """[T, N] float32: 1 where the token chose the expert in ``layer``."""
        assert self.topk is not None
        ids = self.topk[:, layer, :]
        m = np.zeros((ids.shape[0], self.num_experts + 1), np.float32)  # last column absorbs -1
        np.put_along_axis(m, np.where(ids >= 0, ids, self.num_experts), 1.0, axis=1)
        return np.ascontiguousarray(m[:, :-1])  # contiguous: a strided operand takes numpy's slow matmul path

    def coactivation_counts(self) -> np.ndarray | None:
        """[L, N, N] tokens choosing both experts in a layer (None without a trace or a given tensor)."""
        if self.coactivation is None and self.topk is not None:
            self.coactivation = np.stack([(h.T @ h) for h in (self._onehot(i) for i in range(self.num_layers))])
        return self.coactivation

    def transition_counts(self) -> np.ndarray | None:
        """[L-1, N, N] (e at layer l, f at layer l+1) pair counts over tokens (None when unknown)."""
        if self.transitions is None and self.topk is not None and self.num_layers > 1:
            n = self.num_experts
            out = np.zeros((self.num_layers - 1, n, n))
            for i in range(self.num_layers - 1):  # pair counts by bincount: a [T, N] one-hot matmul is ~50x slower
                e, f = self.topk[:, i, :, None], self.topk[:, i + 1, None, :]
                ok = (e >= 0) & (f >= 0)
                idx = (np.broadcast_to(e, ok.shape) * n + np.broadcast_to(f, ok.shape))[ok]
                out[i] = np.bincount(idx, minlength=n * n).reshape(n, n)
            self.transitions = out
        return self.transitions

    def token_sample(self, layer: int, m: int, rng: np.random.Generator) -> np.ndarray:
        """Up to ``m`` tokens' expert sets for ``layer``, [m, k] int64 (-1 padded).

        From the trace when there is one; otherwise drawn independently from
        the layer's load shares (no co-activation information).
        """
        if self.topk is not None:
            idx = rng.choice(self.topk.shape[0], size=min(m, self.topk.shape[0]), replace=False)
            return self.topk[idx, layer, :]
        k = self.top_k or 1
        p = self.shares()[layer]
        g = np.log(np.maximum(p, 1e-300))[None, :] + rng.gumbel(size=(m, p.size))
        return np.argsort(-g, axis=1)[:, :k]

    def check_shape(self, num_layers: int, num_experts: int, what: str) -> None:
        """Raise when the statistics do not match ``what``'s [MoE layers, experts]."""
        if self.counts.shape != (num_layers, num_experts):
            raise MoesimError(
                f"{self.source or 'routing statistics'} has [{self.num_layers} MoE layers, {self.num_experts} experts] "
                f"but {what} has [{num_layers}, {num_experts}]",
                "give statistics recorded on the same model, or name the model they came from",
            )

    def select_layers(self, layers: list[int]) -> RoutingStats:
        """The statistics of the given MoE-layer indices only."""
        co = self.coactivation_counts()
        return RoutingStats(
            counts=self.counts[layers],
            top_k=self.top_k,
            topk=None if self.topk is None else self.topk[:, layers, :],
            source=self.source,
            coactivation=None if co is None else co[layers],
        )


def validate_counts(counts: np.ndarray, what: str, empty_rows: bool = False) -> None:
    """Raise a one-line error for counts that are not a finite, non-negative [L, N] array with load in every layer.

    Args:
        counts: [L, N] expert loads (token-expert pairs or shares) per MoE layer and expert.
        what: where they came from (a file name), for the message.
        empty_rows: accept layers whose loads are all zero.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] == 0 or counts.shape[1] == 0:
        raise MoesimError(
            f"{what}: expected expert loads [moe_layers, experts], got shape {list(counts.shape)}",
            "give one row of per-expert counts per MoE layer",
        )
    bad = ~np.isfinite(counts)
    if bad.any():
        layer, expert = (int(i[0]) for i in np.nonzero(bad))
        value = "NaN" if np.isnan(counts[layer, expert]) else "infinite"
        raise MoesimError(
            f"{what}: load at layer {layer} expert {expert} is {value}, not a finite number",
            "drop or repair the broken rows",
        )
    if (counts < 0).any():
        layer, expert = (int(i[0]) for i in np.nonzero(counts < 0))
        raise MoesimError(
            f"{what}: negative load {counts[layer, expert]:g} at layer {layer} expert {expert}",
            "loads are counts of routed tokens (or their shares), >= 0",
        )
    empty = np.flatnonzero(counts.sum(axis=1) <= 0)
    if empty.size and not empty_rows:
        more = f" (and {empty.size - 1} more layer{'s' if empty.size > 2 else ''})" if empty.size > 1 else ""
        raise MoesimError(
            f"{what}: routing loads of layer {int(empty[0])} are all zero{more}",
            "record more tokens, or drop the empty (dense) layers",
        )
