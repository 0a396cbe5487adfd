"""Where a token's dispatch goes under DeepSeek's group-limited routing: moesim's rule against the router itself.

DeepEP's normal mode (prefill) sends a token once to each other node holding one of its experts and once to each
GPU there (`model.a2a`), so its NIC and NVLink bytes follow the probability that a node or a GPU holds one of the
token's experts (`model.routing.token_fanout`). DeepSeek-V3's router scores each of its 8 expert groups by its best
two experts, keeps 4 groups and takes the token's 8 experts among theirs. This benchmark routes 16,384 tokens with
that router (`placement.synthetic`: power-law expert popularity of exponent ``alpha`` with Gumbel noise per token,
the same rule), places the experts as identity blocks or with EPLB's redundant slots (`placement.baselines`, each
(token, expert) sent to one of the expert's replicas at random), counts the busiest GPU's NVLink and NIC tokens per
source token (`Fanout.intra` / ``.inter``) and compares three rules on the trace's own loads:

- ``independent``: a set is missed only if each of the token's picks misses it independently, ``1 - prod(1 - pi)``
  (moesim's rule with loads or replicas before 2026-12-06);
- ``pool``: the token's groups chosen at random, its 8 experts drawn from their 128 without regard to which group
  (moesim's exact rule under uniform routing before 2026-12-06; here with the trace's loads);
- ``grouped``: moesim's rule now (`model.routing.grouped_hit_probability`: each chosen group gives its best
  expert, the other picks drawn by load from the chosen groups).

A second table does the same without expert groups (a plain top-k router: Qwen3-style 128 experts top-8, and 64
top-6; identity placement), where moesim keeps independent picks with loads: successive sampling (the grouped
rule without groups) is exact at uniform popularity but falls well short on the GPU holding the hottest experts.

Run: ``python -m benchmarks.routing_fanout`` (about 15 s). Prints two markdown tables and the largest errors.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moesim.model.routing import (  # noqa: E402
    fanout_of_hits,
    group_subset_probs,
    grouped_hit_probability,
    inclusion_probs,
    slot_inclusion,
)
from moesim.placement.baselines import rebalance_experts, repack_no_duplicates  # noqa: E402
from moesim.placement.synthetic import synthetic_trace  # noqa: E402

EXPERTS, TOP_K, N_GROUP, TOPK_GROUP, TOKENS = 256, 8, 8, 4, 16384
ALPHAS = (0.0, 0.8, 1.0, 1.5)
#: (GPUs, nodes, redundant slots)
SHAPES = ((32, 4, 0), (32, 4, 32), (64, 8, 64))
RULES = ("independent", "pool", "grouped")


def fanout(p_gpu: np.ndarray, p_node: np.ndarray, gpus: int, nodes: int) -> tuple[float, float]:
    """(intra, inter) tokens per source token of the busiest GPU, as `model.routing.token_fanout` counts them."""
    f = fanout_of_hits(p_gpu, p_node, gpus // nodes)
    return f.intra, f.inter


def hit_shares(gpu: np.ndarray, gpus: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Share of a trace's tokens that reach each GPU [G] and each node [nodes], from each token's GPUs [T, k]."""
    hit_gpu = np.zeros((gpu.shape[0], gpus), bool)
    np.put_along_axis(hit_gpu, gpu, True, axis=1)
    hit_node = np.zeros((gpu.shape[0], nodes), bool)
    np.put_along_axis(hit_node, gpu // (gpus // nodes), True, axis=1)
    return hit_gpu.mean(axis=0), hit_node.mean(axis=0)


def _pool_hit(sets: list[np.ndarray], slot_load: np.ndarray, slot_group: np.ndarray) -> np.ndarray:
    """The pool rule: groups as `group_subset_probs` chooses them, then all 8 picks drawn by load from the pool."""
    group_load = np.bincount(slot_group, weights=slot_load, minlength=N_GROUP)
    members, p = group_subset_probs(group_load, TOP_K, TOPK_GROUP)
    load_g = members @ group_load
    pool = TOPK_GROUP * EXPERTS // N_GROUP
    out = []
    for s in sets:
        share = (members @ np.bincount(slot_group[s], weights=slot_load[s], minlength=N_GROUP)) / load_g
        miss = np.prod([np.clip(1 - share / (1 - i / pool), 0, 1) for i in range(TOP_K)], axis=0)
        out.append(1 - miss @ p)
    return np.array(out)


def case(alpha: float, gpus: int, nodes: int, redundant: int) -> dict:
    """The trace's own fan-out and each rule's, for one popularity and placement."""
    st = synthetic_trace(1, EXPERTS, TOP_K, tokens=TOKENS, alpha=alpha, n_group=N_GROUP, topk_group=TOPK_GROUP)
    counts = st.counts[:1]
    slots = EXPERTS + redundant
    if redundant:
        p2l = rebalance_experts(counts, slots, N_GROUP, nodes, gpus)[0][0]
        p2l = repack_no_duplicates(p2l, counts[0], gpus, gpus // nodes)
    else:
        p2l = np.arange(EXPERTS)
    per = slots // gpus
    rng = np.random.default_rng(1)
    replicas = [np.flatnonzero(p2l == e) for e in range(EXPERTS)]
    slot = np.array([[replicas[e][rng.integers(len(replicas[e]))] for e in row] for row in st.topk[:, 0, :]])
    gpu = slot // per
    p_gpu, p_node = hit_shares(gpu, gpus, nodes)
    trace = fanout(p_gpu, p_node, gpus, nodes)

    slot_pi = slot_inclusion(inclusion_probs(counts[0] / counts[0].sum(), TOP_K), p2l)
    slot_load, slot_group = slot_pi / TOP_K, p2l // (EXPERTS // N_GROUP)
    gpu_sets = [np.arange(g * per, (g + 1) * per) for g in range(gpus)]
    size = gpus // nodes
    sets = gpu_sets + [np.concatenate(gpu_sets[n * size : (n + 1) * size]) for n in range(nodes)]
    hits = {
        "independent": np.array([1 - np.prod(1 - slot_pi[s]) for s in sets]),
        "pool": _pool_hit(sets, slot_load, slot_group),
        "grouped": grouped_hit_probability(
            sets, slot_load, slot_group, TOP_K, N_GROUP, TOPK_GROUP, TOPK_GROUP * EXPERTS // N_GROUP
        ),
    }
    out = {"alpha": alpha, "gpus": gpus, "nodes": nodes, "redundant": redundant, "trace": trace,
           "nodes_per_token": float(p_node.sum())}  # fmt: skip
    for rule, h in hits.items():
        out[rule] = fanout(h[:gpus], h[gpus:], gpus, nodes)
        out[rule + "_nodes_per_token"] = float(h[gpus:].sum())
    return out


#: Without groups: (experts, top_k, GPUs, nodes).
PLAIN = ((128, 8, 16, 2), (128, 8, 32, 4), (64, 6, 16, 2))


def case_plain(experts: int, top_k: int, gpus: int, nodes: int, alpha: float) -> dict:
    """The trace's fan-out of a plain top-k router and the independent and successive-sampling rules'."""
    st = synthetic_trace(1, experts, top_k, tokens=TOKENS, alpha=alpha)
    per, size = experts // gpus, gpus // nodes
    gpu = st.topk[:, 0, :] // per
    slot_pi = slot_inclusion(inclusion_probs(st.counts[0] / st.counts[0].sum(), top_k), np.arange(experts))
    gpu_sets = [np.arange(g * per, (g + 1) * per) for g in range(gpus)]
    sets = gpu_sets + [np.concatenate(gpu_sets[n * size : (n + 1) * size]) for n in range(nodes)]
    ind = np.array([1 - np.prod(1 - slot_pi[s]) for s in sets])
    succ = grouped_hit_probability(sets, slot_pi / top_k, np.zeros(experts, np.int64), top_k, 1, 1, experts)
    return {
        "shape": f"{experts} experts top-{top_k}, {gpus} / {nodes}",
        "alpha": alpha,
        "trace": fanout(*hit_shares(gpu, gpus, nodes), gpus, nodes),
        "independent": fanout(ind[:gpus], ind[gpus:], gpus, nodes),
        "successive": fanout(succ[:gpus], succ[gpus:], gpus, nodes),
    }


def main() -> list[dict]:
    t0 = time.perf_counter()
    rows = [case(a, g, n, r) for a in ALPHAS for g, n, r in SHAPES]
    print("| popularity exponent | GPUs / nodes + redundant | trace NVLink / NIC tokens | "
          + " | ".join(f"{r}: NVLink / NIC error" for r in RULES) + " | nodes per token: trace / " + " / ".join(RULES)
          + " |")  # fmt: skip
    print("|---|---|---|" + "---|" * len(RULES) + "---|")
    for r in rows:
        t = r["trace"]
        errs = " | ".join(f"{r[k][0] / t[0] - 1:+.1%} / {r[k][1] / t[1] - 1:+.1%}" for k in RULES)
        npt = " / ".join(f"{r[k + '_nodes_per_token']:.2f}" for k in RULES)
        print(f"| {r['alpha']:g} | {r['gpus']} / {r['nodes']} + {r['redundant']} | {t[0]:.3f} / {t[1]:.3f} | "
              f"{errs} | {r['nodes_per_token']:.2f} / {npt} |")  # fmt: skip
    print()
    for k in RULES:
        intra = max(abs(r[k][0] / r["trace"][0] - 1) for r in rows)
        inter = max(abs(r[k][1] / r["trace"][1] - 1) for r in rows)
        print(f"- {k}: largest |error| NVLink {intra:.1%}, NIC {inter:.1%}")
    plain = [case_plain(*shape, a) for shape in PLAIN for a in (0.0, 1.0, 1.5)]
    print("\nWithout groups (identity placement):\n")
    print("| router, GPUs / nodes | popularity exponent | trace NVLink / NIC tokens | independent: error | "
          "successive: error |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in plain:
        t = r["trace"]
        errs = " | ".join(
            f"{r[k][0] / t[0] - 1:+.1%} / {r[k][1] / t[1] - 1:+.1%}" for k in ("independent", "successive")
        )
        print(f"| {r['shape']} | {r['alpha']:g} | {t[0]:.3f} / {t[1]:.3f} | {errs} |")
    print()
    for k in ("independent", "successive"):
        intra = max(abs(r[k][0] / r["trace"][0] - 1) for r in plain)
        inter = max(abs(r[k][1] / r["trace"][1] - 1) for r in plain)
        print(f"- without groups, {k}: largest |error| NVLink {intra:.1%}, NIC {inter:.1%}")
    print(f"\n{len(rows) + len(plain)} cases in {time.perf_counter() - t0:.0f} s.")
    return rows


if __name__ == "__main__":
    main()
