"""The placement objective under two-batch overlap: a layer priced as the serving simulators price it
(`placement.layertime.Overlap`, `model.tbo.steady_layer_s`, `StepTimer.overlap_terms`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.model import Layout, Precision, load_model, tbo
from moesim.model.errors import MoesimError
from moesim.model.hardware import get_gpu, make_cluster
from moesim.placement.layertime import Overlap, layer_cost, layer_time_bound, layer_time_parts
from moesim.sim.serving.steptime import StepTimer

CLUSTER = make_cluster(get_gpu("H200-SXM"), nodes=2, gpus_per_node=8)


def _run(strategy: str, comp: dict, d: float, c: float, slow: float, capped: dict, n: int) -> float:
    """`tbo.stages_time` of ``n`` identical layers, s."""
    full = {k: np.full((1, n), v) for k, v in comp.items()}
    cap = {k: np.full((1, n), capped.get(k, 0.0)) for k in tbo.CLASSES}
    return float(tbo.stages_time(strategy, full, np.full((1, n), d), np.full((1, n), c), slow, cap)[0])


@pytest.mark.parametrize("strategy", sorted(tbo.STRATEGIES))
def test_steady_layer_is_what_one_more_layer_adds(strategy):
    """`steady_layer_s` is what one more identical layer adds to the stage program (any strategy, slowdown and SM
    cap), and for SGLang's decode order it is the closed form: both micro-batches' computation plus each one's
    dispatch and combine excess over its window."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        comp = {name: float(v) for name, v in zip(tbo.CLASSES, rng.uniform(0, 1, 4), strict=True)}
        d, c = (float(v) for v in rng.uniform(0, 1.5, 2))
        slow = float(rng.choice([1.0, 1.22]))
        capped = {name: comp[name] * float(rng.uniform()) for name in ("prep", "core", "shared")}
        got = tbo.steady_layer_s(strategy, comp, d, c, slow, capped)

        runs = [_run(strategy, comp, d, c, slow, capped, n) for n in (6, 5)]
        assert got == pytest.approx(runs[0] - runs[1], rel=1e-9, abs=1e-12)
        if strategy == "decode" and slow == 1.0:
            p, co, s, e = (comp[n] for n in tbo.CLASSES)
            capped_free = tbo.steady_layer_s(strategy, comp, d, c)
            assert capped_free == pytest.approx(2 * (p + co + s + e) + 2 * (max(d - s - p, 0) + max(c - co, 0)))


def _cost(overlap=(None, None), phase="prefill"):
    return layer_cost(CLUSTER, 7168, 2048, 8, 16, dtype="fp8", tokens_per_gpu=2048, phase=phase,
                      decode_tokens_per_gpu=64, overlap=overlap)  # fmt: skip


def _plans() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loads [32], tokens [T, 4] that use experts of both halves, and two plans: ``near`` keeps each token's
    experts on one node (node 0: experts 0-15) and is unbalanced; ``spread`` balances the GPUs and sends every token
    to both nodes."""
    rng = np.random.default_rng(0)
    w = np.r_[np.full(16, 1.3), np.full(16, 1.0)]
    tok = np.array([rng.choice(16, 4, replace=False) + 16 * (i % 2) for i in range(512)])
    near = np.arange(32)
    spread = np.array([e for pair in zip(range(16), range(16, 32), strict=True) for e in pair])
    return w, tok, near, spread


def test_hidden_transfers_stop_counting_and_balance_decides():
    """Without overlap the transfers are a barrier: the plan reaching fewer nodes wins on its NIC. With stages long
    enough to hide every transfer (SGLang's decode order hides a dispatch behind the own shared experts and the
    other micro-batch's attention preparation, a combine behind the other's attention core) the NIC no longer
    counts, only the slowest GPU's experts do, so the balanced plan wins; the layer then costs both micro-batches'
    shared and routed experts. With a short preparation the dispatch shows again."""
    w, tok, near, spread = _plans()
    plain = _cost()
    big = Overlap("decode", prep_s=1.0, core_s=1.0, shared_s=1e-5)
    hid = _cost((big, None))
    a, b = (layer_time_parts(p, w, 16, 8, tok, plain) for p in (near, spread))
    assert b["nic"] > a["nic"] and b["gemm"] < a["gemm"]
    assert a["total"] < b["total"]
    a2, b2 = (layer_time_parts(p, w, 16, 8, tok, hid) for p in (near, spread))
    assert b2["total"] < a2["total"]
    from moesim.placement.layertime import replica_gemm_s

    cnt = np.bincount(spread, minlength=32)
    pairs = (w / w.sum() * 2048 * 16 * 8 / cnt)[spread]
    half = replica_gemm_s(0.5 * pairs, hid).reshape(16, -1).sum(axis=1).max()
    assert b2["total"] == pytest.approx(2 * (big.shared_s + half), rel=1e-9)
    short = _cost((Overlap("decode", prep_s=1e-6, core_s=1.0, shared_s=1e-5), None))
    assert layer_time_parts(spread, w, 16, 8, tok, short)["total"] > 2 * (1e-6 + half) + 1e-6


def test_with_only_the_experts_the_micro_batches_hide_each_others_transfers():
    """With no attention and no shared experts each micro-batch's experts are all that hides the other's transfers:
    the layer takes at least the longer of both micro-batches' experts and both micro-batches' transfers (one
    communication stream), at most their sum, and less than the plain layer, whose transfers hide behind
    nothing."""
    from moesim.placement.layertime import replica_gemm_s

    w, tok, near, spread = _plans()
    plain = _cost()
    none = _cost((Overlap("extend", 0.0, 0.0, 0.0), None))
    for p in (near, spread):
        got = layer_time_parts(p, w, 16, 8, tok, none)
        cnt = np.bincount(p, minlength=32)
        pairs = (w / w.sum() * 2048 * 16 * 8 / cnt)[p]
        experts = 2 * replica_gemm_s(0.5 * pairs, none).reshape(16, -1).sum(axis=1).max()
        transfers = 2 * none.fixed_s + max(got["nvlink"], got["nic"])
        assert max(experts, transfers) - 1e-12 <= got["total"] <= experts + transfers + 1e-12
        assert got["total"] < layer_time_parts(p, w, 16, 8, tok, plain)["total"]


def test_the_bound_holds_under_overlap():
    """`layer_time_bound` stays below every plan with overlap in either phase."""
    ov = (Overlap("extend", 2e-4, 3e-4, 5e-5, slow=1.22, capped_prep_s=1e-4), Overlap("decode", 1e-5, 3e-5, 1e-5))
    cost = _cost(ov, phase="both")
    rng = np.random.default_rng(2)
    w = rng.pareto(1.0, 32) + 0.1
    lb = layer_time_bound(w, 48, 16, 8, cost)["total"]
    for _ in range(10):
        p2l = np.r_[np.arange(32), rng.choice(32, 16, replace=False)]
        p2l = p2l[rng.permutation(48)]
        tok = np.array([rng.choice(32, 8, replace=False, p=w / w.sum()) for _ in range(256)])
        assert layer_time_parts(p2l, w, 16, 8, tok, cost)["total"] >= lb - 1e-15


@pytest.mark.parametrize(
    "kw,match",
    [({"strategy": "zigzag"}, "strategy 'zigzag'"), ({"prep_s": -1.0}, "finite and >= 0"),
     ({"slow": 0.5}, "slowdown >= 1"), ({"core_s": float("nan")}, "finite")],
)  # fmt: skip
def test_bad_overlap_is_one_clear_error(kw, match):
    args = {"strategy": "extend", "prep_s": 1e-4, "core_s": 1e-4, "shared_s": 0.0, **kw}
    with pytest.raises(MoesimError, match=match):
        Overlap(**args)


def test_overlap_terms_are_the_classes_the_step_timer_overlaps():
    """`StepTimer.overlap_terms` hands out the per-layer classes `_combine` overlaps: run through `model.tbo` with
    the step's own experts and transfers they give back the timer's step (GPU time)."""
    model = load_model("deepseek-v3")
    cluster = make_cluster(get_gpu("H100-SXM"), nodes=4, gpus_per_node=8)
    lay = Layout(ep=32, dp_attn=32, a2a_backend="deepep")
    t = StepTimer(model, lay, cluster, Precision(weights="fp8_block"), overlap="two_batch")
    for new, cached in ((np.ones(2048, np.int64), np.full(2048, 1500)), (np.full(8, 1024), np.zeros(8, np.int64))):
        terms = t.overlap_terms(new, cached)
        assert terms is not None and terms["strategy"] in tbo.STRATEGIES
        parts = t._parts(new, cached, exact=True)
        n, rho = t.n_moe, parts[4]
        comp = {name: np.full((1, n), terms[name]) for name in ("prep", "core", "shared")}
        comp["experts"] = np.full((1, n), 0.5 * rho * parts[3] / n)
        capped = None
        if terms["capped_prep"] or terms["capped_core"] or terms["capped_shared"] or terms["experts_capped"]:
            capped = {name: np.full((1, n), terms[f"capped_{name}"]) for name in ("prep", "core", "shared")}
            capped["experts"] = comp["experts"] * float(terms["experts_capped"])
        d = np.full((1, n), parts[14] / (2 * n))
        c = np.full((1, n), (parts[1] - parts[14]) / (2 * n))
        moe = tbo.layers_time(terms["strategy"], comp, d, c, terms["slow"], capped)[0]
        rest = rho * (parts[0] - parts[11:14].sum())
        step = t.expected(new, cached)
        gpu = step.compute_s + step.comm_s + step.fetch_s + step.straggler_s
        assert moe + rest + parts[2] == pytest.approx(gpu, rel=1e-9)
    assert terms["slow"] > 1 and terms["strategy"] == "extend"  # prefill: DeepEP's normal kernels hold SMs
    plain = StepTimer(model, lay, cluster, Precision(weights="fp8_block"))
    assert plain.overlap_terms(np.ones(64, np.int64), np.full(64, 100)) is None


def _scenario(tmp_path, overlap: str) -> str:
    sc = tmp_path / f"sc-{overlap}.yaml"
    sc.write_text(
        "name: t\nmodel: mixtral-8x7b\ncluster: dgx-h100\nlayout: {tp: 1, dp_attn: 8, ep: 8}\n"
        "engine: {max_batch: 64, max_tokens: 4096, chunked_prefill: true, block_size: 16}\n"
        "workload: {arrival: poisson, rate: 5, requests: 20, input: {dist: fixed, value: 256}, "
        f"output: {{dist: fixed, value: 16}}}}\nrouting: {{distribution: uniform, overlap: {overlap}}}\nseed: 0\n"
    )
    return str(sc)


def _place(capsys, argv: list[str]) -> tuple[int | None, pytest.CaptureResult]:
    """``moesim`` with ``argv``: its exit code and what it printed."""
    from moesim.dashboard.cli import main

    return main(argv), capsys.readouterr()


@pytest.mark.parametrize("overlap", ["two_batch", "none"])
def test_place_simulate_prices_the_scenarios_overlap(tmp_path, capsys, overlap):
    """`moesim place --simulate` prices each phase under the scenario's two-batch overlap (its attention timed by
    the scenario's step timer), and says so; a scenario without it keeps the plain layer."""
    argv = ["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--redundant", "8",
            "--method", "eplb", "--time-limit", "5", "--tokens", "512", "--simulate", _scenario(tmp_path, overlap),
            "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    code, cap = _place(capsys, argv)
    assert code in (0, None), cap.err[-2000:]
    cost = json.loads(cap.out)["layer_cost"]
    if overlap == "none":
        assert cost["overlap"] == [None, None] and "two-batch" not in cost["source"]
        return
    pre, dec = cost["overlap"]
    assert pre["strategy"] == dec["strategy"] == "vllm_dbo"  # the scenario names no engine: vLLM's order
    assert pre["core_s"] > 0 and dec["core_s"] > 0 and pre["prep_s"] > dec["prep_s"]
    assert "prefill under two-batch overlap" in cost["source"] and "decode under two-batch overlap" in cost["source"]


@pytest.mark.parametrize(
    "args,match",
    [(["--model", "qwen3-30b-a3b", "--gpus", "8"], "serves mixtral-8x7b, not --model qwen3-30b-a3b"),
     (["--model", "mixtral-8x7b", "--gpus", "16"], "expert-parallel group is 8 GPUs, not --gpus 16")],
)  # fmt: skip
def test_a_scenario_that_cannot_take_the_plans_is_one_line_before_any_work(tmp_path, capsys, args, match):
    """``--simulate`` with a scenario of another model, or of another expert-parallel size, stops at once with one
    line naming both (it used to place every layer, then fail in the simulation on a temporary file's shape)."""
    argv = ["place", "--stats", "synthetic", *args, "--redundant", "8", "--method", "eplb",
            "--simulate", _scenario(tmp_path, "two_batch"), "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    code, cap = _place(capsys, argv)
    assert code == 1 and cap.out == ""
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in cap.err
    assert "placing" not in cap.err and not (tmp_path / "out").exists()
