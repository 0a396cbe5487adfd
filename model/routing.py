"""Routing arithmetic: which experts and GPUs a batch's tokens reach.

Conventions (arrays in, arrays out, shapes in the docstrings):

- ``loads``: per-expert load shares, shape [E] (or [L, E] per MoE layer),
  non-negative, each row summing to 1: the fraction of (token, expert) pairs
  an expert receives. Uniform routing is ``1/E`` each.
- a token picks ``top_k`` distinct experts, so expert e's inclusion
  probability per token is ``pi_e = top_k * loads[e]`` (must be <= 1).
- ``phys_to_log``: shape [S] (or [L, S]), the logical expert of each
  physical expert slot; GPU g holds slots ``g*S/G .. (g+1)*S/G - 1``. An
  expert with r replicas has its tokens split evenly over them (as engines
  dispatch). Default: ``arange(E)``, contiguous blocks of E/G experts.

Tokens are independent. Under uniform routing the distinct-expert count and,
without expert groups, the chance that a set of experts is hit are exact
(hypergeometric). With a load vector or replicas they use the independence
approximation across a token's k picks. Under DeepSeek's group-limited routing
(a token's experts all in ``topk_group`` of ``n_group`` groups) the chance that
a set is hit follows `grouped_hit_probability`, with or without loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import combinations

import numpy as np

from moesim.model.errors import MoesimError


def inclusion_probs(loads: np.ndarray, top_k: int) -> np.ndarray:
    """Per-expert inclusion probability per token, shape like ``loads``.

    Args:
        loads: load shares, shape [..., E], rows summing to 1.
        top_k: experts per token.
    Raises:
        MoesimError: negative shares, rows not summing to 1, or a share above
            1/top_k (no expert can be in more than every token's top-k).
    """
    loads = np.asarray(loads, dtype=float)
    if (loads < 0).any() or not np.allclose(loads.sum(axis=-1), 1.0, atol=1e-6):
        raise MoesimError(
            "expert loads must be non-negative shares summing to 1 per layer", "normalise the per-expert counts"
        )
    pi = top_k * loads
    if (pi > 1 + 1e-9).any():
        raise MoesimError(
            f"an expert's load share exceeds 1/top_k = {1 / top_k:.4g}", "loads must be shares of (token, expert) pairs"
        )
    return np.minimum(pi, 1.0)


def expected_distinct_experts(
    tokens: int, top_k: int, num_experts: int | None = None, loads: np.ndarray | None = None
) -> float:
    """Expected number of distinct experts ``tokens`` tokens activate.

    Uniform (``loads`` None): exactly ``E * (1 - (1 - k/E)**T)``, since each
    token includes a given expert with probability k/E independently of the
    other tokens. With ``loads`` [E]: ``sum_e 1 - (1 - pi_e)**T``.
    """
    if loads is None:
        if num_experts is None:
            raise MoesimError("need num_experts or loads", "pass one")
        return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)
    pi = inclusion_probs(loads, top_k)
    return float((1.0 - (1.0 - pi) ** tokens).sum())


def default_placement(num_experts: int) -> np.ndarray:
    """Identity placement: slot e holds expert e, shape [E]."""
    return np.arange(num_experts)


#: The engines' rules for which replica of an expert a token goes to (`slot_routes`): ``random`` (vLLM: a replica
#: drawn per token) and ``nearest`` (SGLang: the rank's own GPU's replica, else its node's first, else a fixed fair
#: pick; sgl-project/sglang#9849, #10874).
REPLICA_CHOICES = ("random", "nearest")
REPLICA_FIX = "use random (vLLM: a replica per token at random) or nearest (SGLang: its GPU's, then its node's)"


def slot_routes(p2l: np.ndarray, n: int, num_gpus: int, gpus_per_node: int, rule: str) -> np.ndarray:
    """[G, S] share of GPU g's tokens of expert ``p2l[s]`` that go to slot s under the replica rule ``rule``
    (`REPLICA_CHOICES`; each row sums to 1 over the slots of every expert placed).

    ``random``: 1 / replicas on every replica. ``nearest`` (SGLang's ``_find_nearest_expert``): 1 on GPU g's own
    replica (its first), else on the first replica of g's node when the node holds some but not all of them, else
    1 / replicas on every replica (the ranks' fixed fair picks, in expectation; an expert with one replica: 1 on
    it)."""
    s_count = p2l.size
    per = s_count // num_gpus
    cnt = np.maximum(np.bincount(p2l, minlength=n), 1).astype(float)
    fair = np.broadcast_to(1.0 / cnt[p2l], (num_gpus, s_count))
    if rule == "random":
        return np.array(fair)
    if rule != "nearest":
        raise MoesimError(f"replica choice {rule!r} is not one of {', '.join(REPLICA_CHOICES)}", REPLICA_FIX)
    slot = np.arange(s_count)
    gpu_of = slot // per
    node_of = gpu_of // gpus_per_node
    nodes = num_gpus // gpus_per_node
    big = s_count  # "no such slot"
    own = np.full((num_gpus, n), big)
    np.minimum.at(own, (gpu_of, p2l), slot)  # each GPU's first slot of each expert
    first_on_node = np.full((nodes, n), big)
    np.minimum.at(first_on_node, (node_of, p2l), slot)
    on_node = np.zeros((nodes, n))
    np.add.at(on_node, (node_of, p2l), 1.0)
    g_node = np.arange(num_gpus) // gpus_per_node
    narrows = (on_node[g_node] > 0) & (on_node[g_node] < cnt)  # [G, n]
    target = np.where(own < big, own, np.where(narrows, first_on_node[g_node], big))  # [G, n]
    picked = target < big  # [G, n]
    routes = np.where(picked[:, p2l], 0.0, fair)  # [G, S]: the fair picks where no nearer replica is
    g_idx, e_idx = np.nonzero(picked)
    routes[g_idx, target[g_idx, e_idx]] = 1.0
    return routes


def slot_shares(p2l: np.ndarray, n: int, num_gpus: int, gpus_per_node: int, rule: str) -> np.ndarray | None:
    """[S] share of its expert's tokens each slot of ``p2l`` receives when every GPU holds an equal share of the
    tokens and sends them by ``rule`` (`slot_routes` averaged over the GPUs; sums to 1 over an expert's slots);
    None for ``random``, whose shares are 1 / replicas (`slot_inclusion`'s default), and where no expert has two
    replicas."""
    if rule == "random" or np.bincount(p2l, minlength=n).max() <= 1:
        return None
    key = (np.asarray(p2l).tobytes(), n, num_gpus, gpus_per_node, rule)
    hit = _SHARES.get(key)
    if hit is None:
        if len(_SHARES) >= 1024:
            _SHARES.clear()
        hit = _SHARES[key] = slot_routes(p2l, n, num_gpus, gpus_per_node, rule).mean(axis=0)
        hit.flags.writeable = False
    return hit


#: `slot_shares` by (placement bytes, experts, GPUs, node size, rule) (cleared when full).
_SHARES: dict[tuple, np.ndarray] = {}


def slot_inclusion(pi: np.ndarray, phys_to_log: np.ndarray, share: np.ndarray | None = None) -> np.ndarray:
    """Per-slot inclusion probability, shape [S]: pi of its expert over its replica count, or times ``share`` [S]
    (the share of its expert's tokens a slot receives, `slot_shares`) where the engine's rule splits unevenly."""
    replicas = np.bincount(phys_to_log, minlength=pi.shape[-1])
    if (replicas[np.unique(phys_to_log)] == 0).any() or phys_to_log.max() >= pi.shape[-1]:
        raise MoesimError("placement names an expert the model does not have", "check phys_to_log")
    if share is not None:
        return pi[phys_to_log] * share
    return pi[phys_to_log] / replicas[phys_to_log]


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF of ``x`` (any shape), Abramowitz & Stegun 7.1.26's erf, |error| < 1.5e-7.

    Computed in place on one temporary (the same operations as the textbook form, bit for bit:
    tests/test_routing_speed.py), ``x`` left unchanged."""
    sign = np.sign(x)
    z = np.abs(x)
    z /= math.sqrt(2.0)
    t = z * 0.3275911
    t += 1.0
    np.divide(1.0, t, out=t)
    poly = t * 1.061405429
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += c
        poly *= t
    z *= z
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # poly * exp(-z^2)
    np.subtract(1.0, poly, out=poly)  # erf(|x| / sqrt 2)
    poly *= sign
    poly += 1.0
    poly *= 0.5
    return poly


#: Grid points per standard deviation (the smallest GPU's) of `expected_max_normal`'s integral, and the grid's
#: bounds in points. The trapezoid rule on a smooth integrand flat at both ends converges faster than any power of
#: the spacing: at sigma / 8 it is within 1e-11 of a 40,001-point grid on DeepSeek-V3's per-layer loads (32 GPUs,
#: 1-16k tokens) and closer than the fixed 2,049-point grid used before on spread-out means
#: (tests/test_routing_speed.py).
_EMN_PER_SIGMA = 8.0
_EMN_POINTS = (65, 2049)


def expected_max_normal(mean: np.ndarray, std: np.ndarray) -> float:
    """E[max_g X_g] for independent normals X_g ~ N(mean[g], std[g]^2), shape [G].

    With F the CDF of the maximum (the product of the normal CDFs),
    ``E[max] = hi - integral_lo^hi F(x) dx`` over a range ``[lo, hi]`` holding
    all of its mass: ``hi`` the highest mean[g] + 9 std[g], ``lo`` the highest mean[g] - 9 std[g] (below it that
    GPU's CDF, hence F, is under Phi(-9) = 1e-19) or a GPU without spread (a constant) above it, on a grid of
    `_EMN_PER_SIGMA` points per smallest standard deviation (`_EMN_POINTS` bounds the count). The max of real,
    negatively correlated per-GPU loads is slightly lower.
    """
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    if mean.size == 1 or (std <= 0).all():
        return float(mean.max())
    if mean.ndim == 1 and std.ndim == 1 and std[0] > 0 and (mean == mean[0]).all() and (std == std[0]).all():
        # identically distributed (uniform routing over identical GPUs): E[max] = mean + std x E[max of G standard
        # normals], the same integral on the same grid in standard units (equal to rounding: tests/test_routing_iid.py)
        return float(mean[0]) + float(std[0]) * _iid_max_normal(mean.size)
    return _emn_grid(mean, std)


@lru_cache(maxsize=256)
def _iid_max_normal(g: int) -> float:
    """E[max of ``g`` independent standard normals], by `expected_max_normal`'s grid (145 points)."""
    return _emn_grid(np.zeros(g), np.ones(g))


def _emn_grid(mean: np.ndarray, std: np.ndarray) -> float:
    """`expected_max_normal`'s integral on its grid, ``mean`` and ``std`` [G] float, not all ``std`` <= 0."""
    fixed = std <= 0  # constants: E[max(c, Y)] = hi - integral_c^hi F_Y for the largest c
    floor = float(mean[fixed].max()) if fixed.any() else -math.inf
    mean, std = mean[~fixed], std[~fixed]
    lo = float((mean - 9.0 * std).max())
    # a GPU whose mean + 9 std is below ``lo`` has a CDF of at least Phi(9) = 1 - 1e-19 all over [lo, hi]: it leaves
    # F unchanged, so it is left out of the product and of the grid's spacing (8 of 8 GPUs evaluated before, 3.5 on
    # average in a skewed Mixtral EP8 capacity search)
    keep = mean + 9.0 * std > lo
    mean, std = mean[keep], std[keep]
    hi = float((mean + 9.0 * std).max())
    if floor >= hi:
        return floor
    span = (hi - lo) / float(std.min()) * _EMN_PER_SIGMA
    if floor > lo:  # F is not flat at the constant: the trapezoid's error is O(spacing^2), the finest grid
        lo, span = floor, float(_EMN_POINTS[1])
    n = int(min(max(math.ceil(span), _EMN_POINTS[0]), _EMN_POINTS[1])) | 1
    x = np.linspace(lo, hi, n)
    z = x[:, None] - mean[None, :]
    z /= std[None, :]
    cdf = np.prod(_normal_cdf(z), axis=1)
    return hi - float(np.sum((cdf[1:] + cdf[:-1]) * 0.5 * np.diff(x)))


@dataclass(frozen=True)
class GpuLoad:
    """Routed (token, expert) pairs per GPU of an expert-parallel group, one layer.

    Attributes:
        mean_pairs: expected pairs per GPU, shape [G].
        busiest_pairs: expected pairs on the busiest GPU, sampling noise included.
        active_experts: expected distinct expert slots with >= 1 token, per GPU, shape [G].
        busiest_active: expected active slots on the GPU with the most, E[max over GPUs] (`expected_max_active`);
            NaN: not computed (`max_active_experts` falls back to the largest expectation).
    """

    mean_pairs: np.ndarray
    busiest_pairs: float
    active_experts: np.ndarray
    busiest_active: float = math.nan

    @cached_property
    def mean_gpu_pairs(self) -> float:
        """The mean GPU's expected pairs (taken once: a memoised load serves many steps)."""
        return float(self.mean_pairs.mean())

    @cached_property
    def max_active_experts(self) -> float:
        """The busiest GPU's expected active expert slots: E[max over GPUs] where computed (a decode step of a few
        tokens lights a handful of each GPU's experts, and the GPU that drew the most reads the most weights: 8
        tokens of DeepSeek-V3 on 16 GPUs light 5.9 on the busiest against at most 4.05 expected on any one),
        else the most expected on one GPU (taken once)."""
        if math.isfinite(self.busiest_active):
            return max(self.busiest_active, float(self.active_experts.max()))
        return float(self.active_experts.max())

    @property
    def imbalance(self) -> float:
        """Busiest GPU's expected pairs over the mean GPU's."""
        mean = self.mean_gpu_pairs
        return self.busiest_pairs / mean if mean > 0 else 1.0

    @property
    def busiest_gpu(self) -> int:
        """Index of the GPU with the most expected pairs."""
        return int(np.argmax(self.mean_pairs))


def gpu_loads(
    tokens: int,
    top_k: int,
    num_gpus: int,
    loads: np.ndarray | None = None,
    phys_to_log: np.ndarray | None = None,
    num_experts: int | None = None,
    share: np.ndarray | None = None,
) -> GpuLoad:
    """Pairs each GPU receives when ``tokens`` tokens are routed (one MoE layer).

    Args:
        tokens: tokens routed in this step (all of the EP group's tokens).
        top_k: experts per token.
        num_gpus: GPUs of the expert-parallel group.
        loads: load shares [E]; None: uniform over ``num_experts``.
        phys_to_log: placement [S] with S divisible by ``num_gpus``; None: identity.
        num_experts: E when ``loads`` is None.
        share: [S] share of its expert's tokens each slot receives (`slot_shares`: the engine's replica rule);
            None: an expert's replicas split it evenly.

    The per-token count on GPU g has mean ``sum pi_slot`` and variance
    ``sum pi(1-pi) + c((sum pi)^2 - sum pi^2)`` with ``c = -(E-k)/(k(E-1))``,
    the hypergeometric variance under uniform routing; over T tokens the
    busiest GPU's expected count is the expected max of the per-GPU normals,
    clipped to what the GPU can hold.
    """
    if loads is None and phys_to_log is None:
        if num_experts is None:
            raise MoesimError("need num_experts or loads", "pass one")
        return _uniform_gpu_loads(int(tokens), top_k, num_gpus, num_experts)
    return _gpu_loads(tokens, top_k, num_gpus, loads, phys_to_log, num_experts, share)


@lru_cache(maxsize=4096)
def _uniform_gpu_loads(tokens: int, top_k: int, num_gpus: int, num_experts: int) -> GpuLoad:
    load = _gpu_loads(tokens, top_k, num_gpus, None, None, num_experts)
    load.mean_pairs.flags.writeable = False
    load.active_experts.flags.writeable = False
    return load


def _gpu_loads(
    tokens: int,
    top_k: int,
    num_gpus: int,
    loads: np.ndarray | None,
    phys_to_log: np.ndarray | None,
    num_experts: int | None,
    share: np.ndarray | None = None,
) -> GpuLoad:
    if loads is None:
        if num_experts is None:
            raise MoesimError("need num_experts or loads", "pass one")
        loads = np.full(num_experts, 1.0 / num_experts)
    ps, mu, var = _slot_moments(np.asarray(loads, float), top_k, num_gpus, phys_to_log, share)
    mean = tokens * mu
    busiest = expected_max_normal(mean, np.sqrt(tokens * var))
    cap = tokens * min(top_k, ps.shape[1])
    hit = 1.0 - (1.0 - ps) ** tokens  # [G, S/G]: each slot's chance of at least one of the tokens
    active = hit.sum(axis=1)
    return GpuLoad(
        mean_pairs=mean,
        busiest_pairs=float(min(max(busiest, mean.max()), cap)),
        active_experts=active,
        busiest_active=expected_max_active(hit),
    )


def expected_max_active(hit: np.ndarray) -> float:
    """E[max over GPUs of the active slots] when slot s of GPU g is active with probability ``hit`` [G, S/G]
    (independently across slots and GPUs): each GPU's count is Poisson-binomial (its distribution built slot by
    slot), P(max <= m) = prod_g P(count_g <= m), and E[max] = sum_m P(max > m). Exact up to the independence
    (a token's top-k experts are distinct, which couples the slots slightly)."""
    g, per = hit.shape
    if g == 0 or per == 0:
        return 0.0
    pmf = np.zeros((g, per + 1))
    pmf[:, 0] = 1.0
    for s in range(per):
        q = hit[:, s : s + 1]
        pmf[:, 1:] = pmf[:, 1:] * (1 - q) + pmf[:, :-1] * q
        pmf[:, 0] *= 1 - q[:, 0]
    cdf = np.clip(np.cumsum(pmf, axis=1), 0.0, 1.0)  # [G, per + 1]
    return float(np.sum(1.0 - np.prod(cdf[:, :-1], axis=0)))


#: `_slot_moments` results by (loads, placement, top_k, GPUs): they do not depend on the token count, which the
#: serving simulators vary step by step (bounded; cleared when full)
_MOMENTS: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_MOMENTS_MAX = 2048


def _slot_moments(
    loads: np.ndarray, top_k: int, num_gpus: int, phys_to_log: np.ndarray | None, share: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token inclusion moments of each GPU's slots: (ps [G, S/G], mean [G], variance [G]) of the count one token
    adds to each GPU (see `gpu_loads`; ``share``: its replica shares); memoised on the arrays' bytes, read-only
    arrays."""
    placement = None if phys_to_log is None else np.asarray(phys_to_log)
    key = (loads.tobytes(), None if placement is None else placement.tobytes(), top_k, num_gpus)
    if share is not None:
        key += (np.asarray(share, float).tobytes(),)
    hit = _MOMENTS.get(key)
    if hit is not None:
        return hit
    pi = inclusion_probs(loads, top_k)
    n_exp = pi.shape[-1]
    if placement is None:
        placement = default_placement(n_exp)
    if placement.size % num_gpus:
        raise MoesimError(
            f"{placement.size} expert slots do not split evenly over {num_gpus} GPUs",
            "give every GPU the same number of slots",
        )
    ps = slot_inclusion(pi, placement, share).reshape(num_gpus, -1)  # [G, S/G]
    mu = ps.sum(axis=1)
    c = -(n_exp - top_k) / (top_k * (n_exp - 1)) if n_exp > 1 else 0.0
    var = np.maximum((ps * (1 - ps)).sum(axis=1) + c * (mu**2 - (ps**2).sum(axis=1)), 0.0)
    for a in (ps, mu, var):
        a.flags.writeable = False
    if len(_MOMENTS) >= _MOMENTS_MAX:
        _MOMENTS.clear()
    hit = _MOMENTS[key] = (ps, mu, var)
    return hit


def limits_groups(n_group: int, topk_group: int, top_k: int) -> bool:
    """Whether group-limited routing restricts a token: fewer groups kept than there are, and at most one per pick
    (``n_group`` = ``topk_group`` keeps every group: no limit)."""
    return n_group > 1 and topk_group < n_group and topk_group <= top_k


def hit_probability(
    expert_sets: list[np.ndarray], top_k: int, num_experts: int, n_group: int = 1, topk_group: int = 1
) -> np.ndarray:
    """P(a token has at least one of its experts in each set), shape [len(expert_sets)], under uniform routing.

    Without groups (``n_group`` 1) exact: ``1 - comb(E - |set|, k) / comb(E, k)``. With DeepSeek's group-limited
    routing, `grouped_hit_probability`'s rule with every expert's load ``1 / E``.

    Args:
        expert_sets: per destination, the logical experts it holds.
        top_k, num_experts, n_group, topk_group: the routing rule.
    """
    if limits_groups(n_group, topk_group, top_k):
        load = np.full(num_experts, 1.0 / num_experts)
        per_group = num_experts // n_group
        group = np.arange(num_experts) // per_group
        return grouped_hit_probability(expert_sets, load, group, top_k, n_group, topk_group, topk_group * per_group)
    total = math.comb(num_experts, top_k)
    return np.array([1.0 - math.comb(num_experts - len(np.unique(m)), top_k) / total for m in expert_sets])


#: `group_subset_probs`' fixed point: iterations at most, and the largest error left in a group's condition.
SUBSET_FIT_ITERS, SUBSET_FIT_TOL = 1000, 1e-9


def group_subset_probs(group_loads: np.ndarray, top_k: int, topk_group: int) -> tuple[np.ndarray, np.ndarray]:
    """Which ``topk_group`` of the expert groups a token's experts come from under group-limited routing
    (DeepSeek-V3's ``n_group`` / ``topk_group``), given the groups' load shares (the routing of
    `grouped_hit_probability`).

    Every subset G of ``topk_group`` groups gets P(G) proportional to the product of its groups' weights (the
    fixed-size maximum-entropy design), the weights fitted so that each expert keeps its load share ``load_e``: an
    expert e of group g is a token's pick with probability about ``Q_g load_e / L_g + (top_k - topk_group)
    sum over G containing g of P(G) load_e / L_G`` (Q_g: P(g chosen); L_g, L_G: the loads of g and of G), which
    is ``top_k load_e`` when ``Q_g / L_g + (top_k - topk_group) R_g = top_k`` (R_g: the sum over G containing g
    of P(G) / L_G) for every loaded group. Uniform loads give every subset the same probability. A group with so
    large a share that no P meets its condition (more than about 40% of all pairs in one of DeepSeek-V3's 8 groups)
    is left where `SUBSET_FIT_ITERS` rounds of the fit put it: chosen by nearly every token.

    Args:
        group_loads: [n_group] load shares of the groups (non-negative, summing to 1).
        top_k, topk_group: experts and groups per token.
    Returns:
        (members [C, n_group] 0/1 of each subset, P [C]), C = comb(n_group, topk_group).
    """
    w = np.asarray(group_loads, float)
    n = w.size
    members = np.zeros((math.comb(n, topk_group), n))
    for i, chosen in enumerate(combinations(range(n), topk_group)):
        members[i, list(chosen)] = 1.0
    live = w > 0
    load_g = members @ w
    if live.sum() <= topk_group:  # no more loaded groups than a token takes: every subset holding them all
        p = np.where((members[:, live].sum(axis=1) == live.sum()) & (load_g > 0), 1.0, 0.0)
        return members, p / p.sum()
    allowed = ~members[:, ~live].any(axis=1)  # subsets of loaded groups only
    inv_g = np.where(allowed, 1.0 / np.where(load_g > 0, load_g, 1.0), 0.0)
    inv_w = 1.0 / np.where(live, w, 1.0)
    log_a = np.zeros(n)
    for _ in range(SUBSET_FIT_ITERS):
        log_p = np.where(allowed, members @ log_a, -np.inf)
        p = np.exp(log_p - log_p.max())
        p /= p.sum()
        r = ((p @ members) * inv_w + (top_k - topk_group) * ((p * inv_g) @ members)) / top_k
        if np.abs(r[live] - 1.0).max() < SUBSET_FIT_TOL:
            break
        log_a -= np.log(np.where(live, r, 1.0))
    return members, p


def grouped_hit_probability(
    slot_sets: list[np.ndarray],
    slot_load: np.ndarray,
    slot_group: np.ndarray,
    top_k: int,
    n_group: int,
    topk_group: int,
    pool_experts: int,
) -> np.ndarray:
    """P(a token has at least one of its experts in each set of slots), shape [len(slot_sets)], under
    group-limited routing with per-slot loads.

    DeepSeek-V3's router scores each group by its best experts, keeps ``topk_group`` groups and takes its
    ``top_k`` experts among theirs, so a token's experts lie in its chosen groups only and nearly always include
    each chosen group's best one. The rule here: the token takes ``topk_group`` groups (`group_subset_probs`), one
    expert in each (in proportion to the loads within that group), then its other ``top_k - topk_group`` experts
    one after another among all the chosen groups' experts, in proportion to their loads, an average expert's share
    leaving the pool with each pick (successive sampling); an expert's load is split over its replicas. It misses
    a set holding a share ``w_g`` of each chosen group's load, ``W`` of the chosen groups' load, with probability
    ``prod over chosen g of (1 - w_g) x prod over i < top_k - topk_group of (1 - W / (1 - (topk_group + i) /
    N))``, N the chosen groups' experts (``pool_experts``). Without groups (``n_group`` 1) it is successive
    sampling of all ``top_k`` picks, exact for uniform loads but up to 25% low on the busiest GPU's NVLink under
    skew, where independent picks stay within 4% (`benchmarks/routing_fanout.py`): `token_fanout` uses those
    without groups.

    Against DeepSeek's rule itself (`placement.synthetic`'s group-limited router on power-law popularity,
    benchmarks/RESULTS.md section 28) it gives the nodes a token reaches within 3% where independent picks
    (``1 - prod(1 - pi)``) are up to 28% high, and the busiest NIC's dispatch within 8.2% (independent picks:
    up to +28%); it is up to 16% low on the busiest GPU's NVLink when one GPU holds the hottest experts without
    replicas (independent picks: within 7%).

    Args:
        slot_sets: per destination (GPU or node), the slot indices it holds.
        slot_load: [S] each slot's share of the (token, expert) pairs (summing to 1).
        slot_group: [S] the expert group of each slot's expert.
        top_k, n_group, topk_group: the routing rule (``n_group`` 1: no groups).
        pool_experts: experts of the chosen groups (``topk_group x experts per group``).
    """
    load = np.asarray(slot_load, float)
    grouped = limits_groups(n_group, topk_group, top_k)
    grp = np.asarray(slot_group, np.int64) if grouped else np.zeros(load.size, np.int64)
    ng, tg = (n_group, topk_group) if grouped else (1, 1)
    group_load = np.bincount(grp, weights=load, minlength=ng)
    members, p = group_subset_probs(group_load, top_k, tg)
    load_g = members @ group_load  # [C]
    in_set = np.stack(
        [
            np.bincount(grp[np.asarray(s, np.int64)], weights=load[np.asarray(s, np.int64)], minlength=ng)
            for s in slot_sets
        ]
    )  # fmt: skip  [sets, n_group]
    share_g = in_set / np.where(group_load > 0, group_load, 1.0)  # each group's share in the set
    first = np.exp(np.log(np.clip(1.0 - share_g, 1e-300, 1.0)) @ members.T)  # [sets, C]
    share = (in_set @ members.T) / np.where(load_g > 0, load_g, 1.0)  # [sets, C]
    step = 1.0 - (tg + np.arange(top_k - tg)) / float(pool_experts)
    rest = np.prod(np.clip(1.0 - share[..., None] / step, 0.0, 1.0), axis=-1)
    return 1.0 - (first * rest) @ p


@dataclass(frozen=True)
class Fanout:
    """Expected all-to-all destinations per token for the busiest GPU.

    Attributes:
        intra: tokens sent or received over intra-node links per source token
            (a token goes once to each other GPU of its node holding one of
            its experts).
        inter: tokens sent or received over the NIC per source token (a
            token crosses to a node once however many of its experts live
            there, as DeepEP sends).
    """

    intra: float
    inter: float


def token_fanout(
    num_gpus: int,
    gpus_per_node: int,
    top_k: int,
    num_experts: int,
    n_group: int = 1,
    topk_group: int = 1,
    loads: np.ndarray | None = None,
    phys_to_log: np.ndarray | None = None,
    replica_choice: str = "random",
) -> Fanout:
    """Dispatch fan-out of an EP group of ``num_gpus`` GPUs, ``gpus_per_node`` per node.

    Every GPU is a source of an equal share of tokens. Per GPU, the bytes it
    sends (its tokens x hit probability of each other GPU / node) and
    receives (other sources x its own hit probability) are compared and the
    busiest GPU's larger side is returned, per source token. Under the
    ``nearest`` replica rule (`slot_routes`) each source node has its own hit
    probabilities, its replicas chosen as its GPUs choose them.
    """
    if loads is None and phys_to_log is None:
        return _uniform_fanout(num_gpus, gpus_per_node, top_k, num_experts, n_group, topk_group)
    if replica_choice != "random" and (phys_to_log is None or np.bincount(phys_to_log).max() <= 1):
        replica_choice = "random"  # one replica per expert: every rule sends the same way
    key = (
        num_gpus, gpus_per_node, top_k, num_experts, n_group, topk_group,
        None if loads is None else np.asarray(loads, float).tobytes(),
        None if phys_to_log is None else np.asarray(phys_to_log).tobytes(), replica_choice,
    )  # fmt: skip
    hit = _FANOUT_MEMO.get(key)
    if hit is None:
        if len(_FANOUT_MEMO) >= 4096:
            _FANOUT_MEMO.clear()
        hit = _FANOUT_MEMO[key] = _fanout(
            num_gpus, gpus_per_node, top_k, num_experts, n_group, topk_group, loads, phys_to_log, replica_choice
        )
    return hit


#: `token_fanout`'s results for given loads or placements, keyed by their bytes (cleared when full).
_FANOUT_MEMO: dict[tuple, Fanout] = {}


@lru_cache(maxsize=1024)
def _uniform_fanout(
    num_gpus: int, gpus_per_node: int, top_k: int, num_experts: int, n_group: int, topk_group: int
) -> Fanout:
    return _fanout(num_gpus, gpus_per_node, top_k, num_experts, n_group, topk_group, None, None)


def _fanout(
    num_gpus: int,
    gpus_per_node: int,
    top_k: int,
    num_experts: int,
    n_group: int,
    topk_group: int,
    loads: np.ndarray | None,
    phys_to_log: np.ndarray | None,
    replica_choice: str = "random",
) -> Fanout:
    placement = default_placement(num_experts) if phys_to_log is None else np.asarray(phys_to_log)
    per_gpu = placement.size // num_gpus
    node_size = min(gpus_per_node, num_gpus)
    nodes = -(-num_gpus // node_size)
    if replica_choice != "random" and num_gpus % node_size == 0:
        return _fanout_by_source(num_gpus, node_size, top_k, num_experts, n_group, topk_group, loads, placement,
                                 replica_choice)  # fmt: skip
    uniform = loads is None and placement.size == num_experts and len(np.unique(placement)) == num_experts
    if uniform:
        gpu_sets = [placement[g * per_gpu : (g + 1) * per_gpu] for g in range(num_gpus)]
    else:
        gpu_sets = [np.arange(g * per_gpu, (g + 1) * per_gpu) for g in range(num_gpus)]
    node_sets = [np.concatenate(gpu_sets[n * node_size : (n + 1) * node_size]) for n in range(nodes)]
    if uniform:
        p_gpu = hit_probability(gpu_sets, top_k, num_experts, n_group, topk_group)
        p_node = hit_probability(node_sets, top_k, num_experts, n_group, topk_group)
    else:
        pi = inclusion_probs(np.full(num_experts, 1.0 / num_experts) if loads is None else loads, top_k)
        hit = _slot_hits(slot_inclusion(pi, placement), [*gpu_sets, *node_sets], placement, top_k, num_experts,
                         n_group, topk_group)  # fmt: skip
        p_gpu, p_node = hit[:num_gpus], hit[num_gpus:]
    return fanout_of_hits(p_gpu, p_node, node_size)


def _slot_hits(
    slot_pi: np.ndarray, sets: list[np.ndarray], placement: np.ndarray, top_k: int, num_experts: int, n_group: int,
    topk_group: int,
) -> np.ndarray:  # fmt: skip
    """The chance that a token hits each of ``sets`` (slot index arrays) given per-slot inclusion ``slot_pi`` [S]:
    DeepSeek's grouped router (`grouped_hit_probability`) or independent picks (within 4% of a top-k router's trace
    under skew, benchmarks/routing_fanout.py)."""
    if limits_groups(n_group, topk_group, top_k):
        per_group = num_experts // n_group
        return grouped_hit_probability(sets, slot_pi / top_k, placement // per_group, top_k, n_group, topk_group,
                                       topk_group * per_group)  # fmt: skip
    return np.array([1.0 - float(np.prod(1.0 - slot_pi[s])) for s in sets])


def _fanout_by_source(
    num_gpus: int, node_size: int, top_k: int, num_experts: int, n_group: int, topk_group: int,
    loads: np.ndarray | None, placement: np.ndarray, rule: str,
) -> Fanout:  # fmt: skip
    """`_fanout` under a per-rank replica rule (`slot_routes`): the hit probabilities of each source node's tokens,
    its GPUs' routes averaged; per GPU the larger of what it sends (from its own node's hits) and what it receives
    (from every other source's hits on it), the busiest GPU's per link class, per source token."""
    nodes = num_gpus // node_size
    per_gpu = placement.size // num_gpus
    pi = inclusion_probs(np.full(num_experts, 1.0 / num_experts) if loads is None else loads, top_k)
    routes = slot_routes(placement, num_experts, num_gpus, node_size, rule)
    gpu_sets = [np.arange(g * per_gpu, (g + 1) * per_gpu) for g in range(num_gpus)]
    node_sets = [np.concatenate(gpu_sets[n * node_size : (n + 1) * node_size]) for n in range(nodes)]
    p_gpu = np.zeros((nodes, num_gpus))
    p_node = np.zeros((nodes, nodes))
    for src in range(nodes):
        share = routes[src * node_size : (src + 1) * node_size].mean(axis=0)
        hit = _slot_hits(pi[placement] * share, [*gpu_sets, *node_sets], placement, top_k, num_experts, n_group,
                         topk_group)  # fmt: skip
        p_gpu[src], p_node[src] = hit[:num_gpus], hit[num_gpus:]
    node_of = np.arange(num_gpus) // node_size
    own = p_gpu[node_of, np.arange(num_gpus)]  # [G]: a source GPU's node-mates' chance of hitting it
    same = p_gpu[node_of] * (node_of[None, :] == node_of[:, None])  # [G, G]: hits of g's node on g's node's GPUs
    sent_intra = same.sum(axis=1) - own
    recv_intra = own * (node_size - 1)
    sent_inter = p_node.sum(axis=1)[node_of] - p_node[node_of, node_of]
    # every other node's GPUs send to g's node; its GPUs share the receiving (equal node sizes: one to one)
    recv_inter = (p_node.sum(axis=0) - np.diag(p_node))[node_of]
    intra = float(np.maximum(sent_intra, recv_intra).max())
    inter = float(np.maximum(sent_inter, recv_inter).max()) if nodes > 1 else 0.0
    return Fanout(intra=intra, inter=inter)


def fanout_of_hits(p_gpu: np.ndarray, p_node: np.ndarray, gpus_per_node: int) -> Fanout:
    """The busiest GPU's `Fanout` from the chance that a token hits each GPU ``p_gpu`` [G] and each node ``p_node``
    [nodes] (GPUs numbered node by node, ``gpus_per_node`` to a node, the last node possibly smaller): per GPU the
    larger of what it sends (its tokens to the other GPUs of its node, and once to each other node) and receives
    (each source's tokens that hit it), per source token."""
    num_gpus, nodes = p_gpu.size, p_node.size
    node_of = np.arange(num_gpus) // gpus_per_node
    in_node = np.bincount(node_of, minlength=nodes)
    sent_intra = np.array([p_gpu[node_of == node_of[g]].sum() - p_gpu[g] for g in range(num_gpus)])
    recv_intra = p_gpu * (in_node[node_of] - 1)
    sent_inter = np.array([p_node.sum() - p_node[node_of[g]] for g in range(num_gpus)])
    recv_inter = p_node[node_of] * (num_gpus - in_node[node_of]) / in_node[node_of]
    intra = float(np.maximum(sent_intra, recv_intra).max())
    inter = float(np.maximum(sent_inter, recv_inter).max()) if nodes > 1 else 0.0
    return Fanout(intra=intra, inter=inter)


#: `draw_slot_counts` picks each token's experts one token at a time (distinct experts, exact) up to this many tokens
#: per layer; above, it draws the pairs as a multinomial with the finite-population correction (see there).
EXACT_TOKENS = 32


def draw_slot_counts(
    rng: np.random.Generator, pairs: int, rows: int, slot_p: np.ndarray, slot_expert: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Routing samples of ``pairs`` (token, expert) pairs, ``rows`` per layer: (pairs each slot receives
    [D, rows, S], float; whether it received any [D, rows, S], bool).

    Each token picks ``top_k`` distinct experts, expert e with inclusion probability ``pi_e`` = top_k x the summed
    ``slot_p`` of its slots, then one of e's slots in proportion to their ``slot_p`` (the replica rule's split).
    Up to `EXACT_TOKENS` tokens (``pairs`` a multiple of ``top_k``) the draw is exact, token by token: Sampford's
    method (`_sampford`; a uniformly random ``top_k``-subset where the ``pi`` are equal), or where an expert's
    ``pi`` passes `SAMPFORD_MAX` systematic sampling over a random order of the experts (`_systematic`); both give
    the exact inclusion probabilities ``pi`` and never an expert twice. Above, the pairs are a multinomial over
    the slots (the chain of conditional binomials), each slot's deviation from its mean times sqrt((E - k) /
    (E - 1)), so each slot's and each GPU's variance and the slots' covariances are those of distinct picks
    (exactly under uniform routing, `_slot_moments`' correction under skew); the hit flags are the multinomial's.
    A slot without pairs then holds a small fraction of one (its mean x (1 - the factor)); where that matters, at
    a few pairs per slot, the draw is the exact one.

    A multinomial of the pairs alone (the sampler before 2026-12-07) lets a token pick one expert twice: with
    Mixtral's 8 experts and top 2, one token then activates 1.875 experts on average, not 2 (the discrete-event
    decode step of one sequence was 3.7% faster than the analytical step), and a GPU's pairs vary 8% more in
    standard deviation than distinct picks allow (E = 8, k = 2).

    Args:
        rng: the generator drawn from.
        pairs: (token, expert) pairs per layer (tokens x ``top_k``).
        rows: samples per layer.
        slot_p: [D, S] each slot's share of the pairs (rows summing to 1).
        slot_expert: [D, S] the logical expert of each slot.
        top_k: experts per token.
    """
    slot_p = np.asarray(slot_p, float)
    d, s = slot_p.shape
    n_exp = int(np.max(slot_expert)) + 1
    if pairs <= 0:
        return np.zeros((d, rows, s)), np.zeros((d, rows, s), bool)
    tokens = pairs // top_k
    if tokens > EXACT_TOKENS or pairs % top_k:
        counts = np.empty((d, rows, s), np.int64)
        rem = np.full((d, rows), pairs, np.int64)
        left = np.ones(d)
        for j in range(s - 1):
            q = np.clip(slot_p[:, j] / np.maximum(left, 1e-300), 0.0, 1.0)
            x = rng.binomial(rem, q[:, None])
            counts[:, :, j] = x
            rem -= x
            left -= slot_p[:, j]
        counts[:, :, -1] = rem
        mean = pairs * slot_p[:, None, :]
        fpc = math.sqrt((n_exp - top_k) / (n_exp - 1)) if n_exp > 1 else 1.0
        return mean + fpc * (counts - mean), counts > 0
    return _exact_counts(rng, tokens, rows, slot_p, np.asarray(slot_expert, np.int64).reshape(d, s), top_k)


#: `_exact_counts` draws by Sampford's method while every inclusion probability is at most this (each try is
#: accepted with a fair chance: 7 in 8 for Mixtral's 8 experts and top 2, about 9 in 10 for 256 and top 8), else by
#: systematic sampling over a random order (an argsort of the experts per token: 5-10x the time).
SAMPFORD_MAX = 0.75


class _Inverse:
    """Inverse-CDF sampling from each of D discrete distributions at once (``weights`` [D, E], rows not all 0): the
    layers' cumulative tables laid end to end, layer d's shifted by d, with a guide table of 4E bins per layer (Chen
    and Asau 1974) so that a draw starts at its bin's first index and steps on at most a few entries: O(1) per draw
    where a binary search over all D x E entries took 3 times as long."""

    def __init__(self, weights: np.ndarray) -> None:
        d, e = weights.shape
        shift = np.arange(d, dtype=float)[:, None]
        c = np.cumsum(weights, axis=1)
        self.cum = (c / c[:, -1:] + shift).reshape(-1)  # layer d's last entry is d + 1 exactly
        self.e, self.bins = e, 4 * e
        grid = np.arange(self.bins) / self.bins
        self.guide = np.searchsorted(self.cum, (grid[None, :] + shift).reshape(-1), side="right")

    def draw(self, u: np.ndarray, layer: np.ndarray) -> np.ndarray:
        """Expert ids (0..E-1) for uniforms ``u`` in [0, 1) of layers ``layer`` (broadcast together)."""
        # below layer + 1 however u + layer rounds (u a hair under 1 plus a layer of 58 rounds to 59.0, the next
        # layer's first entry), so a draw never steps out of its layer
        x = np.minimum(u + layer, np.nextafter(layer + 1.0, -np.inf))
        idx = self.guide[layer * self.bins + np.minimum((u * self.bins).astype(np.int64), self.bins - 1)]
        while True:
            step = self.cum[idx] <= x
            if not step.any():
                return idx - layer * self.e
            idx = idx + step


def _sampford(rng: np.random.Generator, pi: np.ndarray, k: int, r: int) -> np.ndarray:
    """[D, r, k] expert ids for each of D layers' ``pi`` [D, E]: ``k`` distinct per row, expert e in a row of layer d
    with probability ``pi[d, e]`` exactly (each row of pi summing to k, each below 1). Sampford's method (Sampford
    1967; Tille, Sampling Algorithms, 2006, 7.6): the first pick with probability pi / k, the other k - 1 with
    replacement in proportion to pi / (1 - pi), the row kept if all k differ, else drawn again. Uniform pi: a
    uniformly random k-subset. Every layer's rows drawn together (`_Inverse`)."""
    d = pi.shape[0]
    first_t, rest_t = _Inverse(pi), _Inverse(pi / (1.0 - pi))
    out = np.empty((d * r, k), np.int64)
    layer = np.repeat(np.arange(d), r)
    todo = np.arange(d * r)
    while todo.size:
        m = todo.size
        lay = layer[todo]
        first = first_t.draw(rng.random(m), lay)[:, None]
        rest = rest_t.draw(rng.random((m, k - 1)), lay[:, None])
        got = np.concatenate([first, rest], axis=1)
        srt = np.sort(got, axis=1)
        ok = (srt[:, 1:] != srt[:, :-1]).all(axis=1)
        out[todo[ok]] = got[ok]
        todo = todo[~ok]
    return out.reshape(d, r, k)


def _systematic(rng: np.random.Generator, pi: np.ndarray, k: int, r: int) -> np.ndarray:
    """[r, k] expert ids by systematic sampling over a random order of the experts per row (Madow's): exact
    inclusion probabilities ``pi`` (sum k, each at most 1), never an expert twice."""
    order = np.argsort(rng.random((r, pi.size)), axis=1)
    cum = np.cumsum(pi[order], axis=1)
    cum[:, -1] = k  # the intervals tile [0, k) exactly
    prev = np.concatenate([np.zeros((r, 1)), cum[:, :-1]], axis=1)
    u = rng.random((r, 1))
    take = np.floor(cum - u) > np.floor(prev - u)
    return order[take].reshape(r, k)


def _exact_counts(
    rng: np.random.Generator, tokens: int, rows: int, slot_p: np.ndarray, slot_expert: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """`draw_slot_counts`' exact draw of D layers (``slot_p``, ``slot_expert`` [D, S]): [D, rows, S] pairs and hit
    flags."""
    d, s = slot_p.shape
    n_exp = int(slot_expert.max()) + 1
    pi = np.stack([np.bincount(slot_expert[i], weights=slot_p[i], minlength=n_exp) for i in range(d)]) * top_k
    live = np.count_nonzero(pi > 0, axis=1)
    if d > 1 and (live < top_k).any():  # a layer with fewer experts than top_k: each takes all it has
        parts = [_exact_counts(rng, tokens, rows, slot_p[i : i + 1], slot_expert[i : i + 1], top_k) for i in range(d)]
        return np.concatenate([x[0] for x in parts]), np.concatenate([x[1] for x in parts])
    k = min(top_k, int(live.min()))
    pi = pi * (k / pi.sum(axis=1, keepdims=True))
    if (pi.max(axis=1) > 1.0 + 1e-12).any():
        raise MoesimError(
            "an expert's share of the pairs exceeds 1/top_k after the experts without a slot were left out",
            "give every expert with load a slot in the placement",
        )
    r = rows * tokens
    picks = np.empty((d, r, k), np.int64)
    samp = pi.max(axis=1) <= SAMPFORD_MAX
    if samp.any():
        picks[samp] = _sampford(rng, pi[samp], k, r)
    for i in np.flatnonzero(~samp):
        picks[i] = _systematic(rng, pi[i], k, r)
    counts = np.zeros((d, rows, s))
    row = np.repeat(np.arange(rows), tokens * k)
    for i in range(d):  # each pick to one of its expert's slots, in proportion to their shares
        slots = _to_slots(rng, picks[i], slot_p[i], slot_expert[i], n_exp)
        counts[i] = np.bincount(row * s + slots.reshape(-1), minlength=rows * s).reshape(rows, s)
    return counts, counts > 0


def _to_slots(
    rng: np.random.Generator, picks: np.ndarray, slot_p: np.ndarray, slot_expert: np.ndarray, n_exp: int
) -> np.ndarray:
    """The slot each pick (expert ids, any shape) lands on: its expert's only slot, or one of its replicas drawn in
    proportion to their ``slot_p``."""
    reps = np.bincount(slot_expert, minlength=n_exp)
    if reps.max() <= 1:
        slot_of = np.full(n_exp, -1, np.int64)
        slot_of[slot_expert] = np.arange(slot_expert.size)
        return slot_of[picks]
    rmax = int(reps.max())
    order = np.argsort(slot_expert, kind="stable")  # the slots grouped by expert, in order
    owner = slot_expert[order]
    start = np.concatenate([[0], np.cumsum(reps)[:-1]])
    j = np.arange(slot_expert.size) - start[owner]  # each slot's place among its expert's replicas
    by_expert = np.zeros((n_exp, rmax), np.int64)  # each expert's slots, in order
    by_expert[owner, j] = order
    tot = np.maximum(np.bincount(slot_expert, weights=slot_p, minlength=n_exp), 1e-300)
    share = slot_p[order] / tot[owner]
    edge = np.full((n_exp, rmax), np.inf)  # cumulative share of an expert's replicas before the last
    run = np.zeros(n_exp)
    for r in range(rmax - 1):  # replica by replica (an expert has at most rmax), each expert's running share
        at = np.flatnonzero((j == r) & (r + 1 < reps[owner]))
        run[owner[at]] += share[at]
        edge[owner[at], r] = run[owner[at]]
    at = (rng.random(picks.shape)[..., None] >= edge[picks]).sum(axis=-1)
    return by_expert[picks, at]
