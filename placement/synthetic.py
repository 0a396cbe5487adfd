"""Synthetic routing traces for tests and what-ifs (seedable).

A token's router logits at MoE layer l are

    log p_l(e)                      per-layer power-law popularity
  + drift  * tau * (log p'_l(e) - log p_l(e))   popularity drifting over time tau in [0, 1)
  + domain * [e in the token's domain's experts] co-activation (expert specialisation)
  + affinity * [e is the partner of an expert the token chose at layer l-1]
  + Gumbel noise,

and the token keeps the top-k (with DeepSeek's group-limited routing when
``n_group > 1``: the ``topk_group`` groups with the largest sum of their top-2
scores first). Gumbel top-k samples k distinct experts with probabilities
proportional to exp(logit), so with only popularity the load shares follow
the power law ``p_l(e) ∝ rank^-alpha``.
"""

from __future__ import annotations

import math

import numpy as np

from moesim.model.errors import MoesimError
from moesim.placement.stats import RoutingStats


def power_law(num_experts: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Popularity [N] summing to 1, ``∝ rank^-alpha`` over a random permutation of the experts."""
    p = np.arange(1, num_experts + 1, dtype=float) ** -alpha
    return rng.permutation(p / p.sum())


def synthetic_trace(
    num_layers: int,
    num_experts: int,
    top_k: int,
    tokens: int = 4096,
    alpha: float = 1.0,
    drift: float = 0.0,
    affinity: float = 0.0,
    domains: int = 0,
    domain_strength: float = 0.0,
    n_group: int = 1,
    topk_group: int = 1,
    seed: int = 0,
) -> RoutingStats:
    """A per-token top-k trace [tokens, num_layers, top_k] with its statistics.

    Args:
        num_layers: MoE layers L.
        num_experts: routed experts per layer N.
        top_k: experts per token k.
        tokens: tokens T in the trace (in time order).
        alpha: power-law exponent of expert popularity (0: uniform).
        drift: 0..1, how far popularity moves towards a second power law by
            the end of the trace.
        affinity: logit bonus (nats) for the layer-(l+1) partner of each expert
            the token chose at layer l (each layer pairs experts by a random
            permutation), as ExFlow observed in real models.
        domains: number of token domains (0: none); each domain prefers
            ``N / domains`` experts per layer, drawn at random.
        domain_strength: logit bonus (nats) of a token's domain experts.
        n_group, topk_group: DeepSeek group-limited routing (1, 1: off).
        seed: random seed; the same arguments give the same trace.
    """
    if min(num_layers, num_experts, top_k, tokens) < 1 or top_k > num_experts:
        raise MoesimError(
            f"synthetic trace: need layers, experts, top_k, tokens >= 1 and top_k <= experts "
            f"(got {num_layers}, {num_experts}, {top_k}, {tokens})",
            "fix the sizes",
        )
    knobs = {"alpha": alpha, "affinity": affinity, "domains": domains, "domain_strength": domain_strength}
    for name, value in knobs.items():
        if not (math.isfinite(value) and value >= 0):
            flag = " (the skew, --skew)" if name == "alpha" else ""
            raise MoesimError(f"synthetic trace: {name}{flag} = {value} is not a finite number >= 0", "give 0 or more")
    if not 0 <= drift <= 1:
        raise MoesimError(f"synthetic trace: drift = {drift} is outside [0, 1]", "give drift from 0 to 1")
    if n_group > 1 and (
        num_experts % n_group or not 1 <= topk_group <= n_group or top_k > topk_group * (num_experts // n_group)
    ):
        raise MoesimError(
            f"synthetic trace: {num_experts} experts do not split into {n_group} groups with topk_group={topk_group}",
            "choose n_group dividing the experts and topk_group <= n_group",
        )
    rng = np.random.default_rng(seed)
    tau = (np.arange(tokens) / tokens)[:, None]
    dom_of_token = rng.integers(0, domains, size=tokens) if domains else None
    topk = np.empty((tokens, num_layers, top_k), np.int64)
    prev: np.ndarray | None = None
    rows = np.arange(tokens)[:, None]
    for layer in range(num_layers):
        base = np.log(power_law(num_experts, alpha, rng))
        logits = np.broadcast_to(base, (tokens, num_experts)).copy()
        if drift:
            logits += drift * tau * (np.log(power_law(num_experts, alpha, rng)) - base)
        if domains:
            pref = np.zeros((domains, num_experts))
            for d in range(domains):
                pref[d, rng.choice(num_experts, size=max(1, num_experts // domains), replace=False)] = domain_strength
            logits += pref[dom_of_token]
        if affinity and prev is not None:
            partner = rng.permutation(num_experts)
            logits[rows, partner[prev]] += affinity
        logits += rng.gumbel(size=logits.shape)
        if n_group > 1:
            g = logits.reshape(tokens, n_group, -1)
            top2 = -np.sort(-g, axis=2)[:, :, : min(2, g.shape[2])].sum(axis=2)
            keep = np.argsort(-top2, axis=1)[:, :topk_group]
            mask = np.full((tokens, n_group), -np.inf)
            np.put_along_axis(mask, keep, 0.0, axis=1)
            logits = (g + mask[:, :, None]).reshape(tokens, num_experts)
        pick = np.argpartition(-logits, top_k - 1, axis=1)[:, :top_k]
        topk[:, layer, :] = pick
        prev = pick
    return RoutingStats.from_topk(topk, num_experts, source="synthetic")
