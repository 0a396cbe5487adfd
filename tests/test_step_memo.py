"""The analytical sweep's memoised step costing against the same code with every memo bypassed.

`model.ops` memoises a step's context-free pieces (MoE block, norms, embedding and head) by their inputs and the
layer sets by model; `model.cap.utilisation_exact` memoises its (bytes, FLOP) by (model, batch, precision, GEMM
dtype); `sim.serving.analytical` memoises the decode step by (batch, context). None may change a number: a small
sweep over two GPUs (one without fp8 GEMMs), two precisions and two layouts must give bit-identical rows.
"""

from __future__ import annotations

import math

import pytest
from fast_inputs import SWEEP_BASE  # tests/fast_inputs.py

from moesim.model import cap, ops
from moesim.model.batch import Batch
from moesim.model.dtypes import Precision
from moesim.model.hardware import get_gpu, make_cluster
from moesim.model.hf_config import load_model
from moesim.model.layout import Layout
from moesim.sim.serving import analytical, steparray
from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

SWEEP = {
    "name": "memo",
    "base": SWEEP_BASE,
    "axes": {
        "gpu": ["A100-SXM-80GB", "H100-SXM"],
        "gpus": [2],
        "layout": [{"tp": "gpus"}, {"tp": 1, "dp_attn": "gpus", "ep": "gpus"}],
        "precision": ["bf16", "fp8"],
        "rate": [0.5, 8.0, 64.0, 1024.0],
    },
}


def _clear() -> None:
    sweep_eval._CACHE.clear()
    ops._PIECES_MEMO.clear()
    ops._SETS_MEMO.clear()
    cap._COUNTS_MEMO.clear()


def _rows() -> list[dict]:
    spec = parse_sweep(SWEEP)
    points = expand(spec).points
    tasks: list[list] = []
    for p in points:
        if tasks and tasks[-1][0].config_key == p.config_key:
            tasks[-1].append(p)
        else:
            tasks.append([p])
    return [row for t in tasks for row in sweep_eval.evaluate_task(t, spec)]


def _same(a: object, b: object, key: str) -> None:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), key
    elif isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b), key
        for k in a:
            _same(a[k], b[k], f"{key}.{k}")
    else:
        assert a == b, key  # bit-identical


def test_sweep_rows_identical_without_the_memos(monkeypatch):
    monkeypatch.setattr(steparray, "ENABLED", False)  # the scalar path's memos (the array form: test_steparray.py)
    _clear()
    fast = _rows()
    assert ops._PIECES_MEMO and cap._COUNTS_MEMO  # the memos were used
    _clear()
    monkeypatch.setattr(ops, "_pieces_memo", lambda model, key, make: make())
    monkeypatch.setattr(ops, "_layer_sets_memo", lambda model, stage, split: ops.layer_sets(model, stage, split))
    monkeypatch.setattr(cap, "_COUNTS_MEMO", _NoMemo())
    monkeypatch.setattr(
        analytical, "_decode_step", lambda timer, b, ctx: _unmemoised_decode(timer, b, ctx), raising=True
    )
    ref = _rows()
    _clear()
    assert len(fast) == len(ref) == 32
    assert {r["status"] for r in ref} >= {"ok", "overloaded"}
    for got, want in zip(fast, ref, strict=True):
        for k in want:
            if k != "wall_s":
                _same(got[k], want[k], f"{want['label']} @ {want['rate']}: {k}")


class _NoMemo(dict):
    """A dict that never keeps anything (the memo bypassed)."""

    def __setitem__(self, key: object, value: object) -> None:
        return None


def _unmemoised_decode(timer, b: int, ctx: int):
    import numpy as np

    step = timer.expected(np.ones(b, np.int64), np.full(b, ctx, np.int64))
    if timer.offload:
        step.duration_s += timer.expected_fetch(float(b))
    return step


@pytest.mark.parametrize("layout", [Layout(tp=2), Layout(tp=1, dp_attn=2, ep=2)])
def test_decompose_memo_keeps_every_op(layout):
    """Memoised pieces are the very ops a fresh decomposition builds, across contexts, phases and models."""
    mixtral, other = load_model("mixtral-8x7b"), load_model("olmoe-1b-7b")
    cluster = make_cluster(get_gpu("H100-SXM"), gpus_per_node=8, nodes=1)
    p = Precision(weights="fp8")
    batches = [Batch.decode(16, 100), Batch.decode(16, 900), Batch((1,) * 8 + (300,), (500,) * 8 + (0,), "mixed")]
    for model in (mixtral, other, mixtral):
        for b in batches:
            got = ops.decompose(model, b, layout, cluster, p)
            ops._PIECES_MEMO.clear()
            ops._SETS_MEMO.clear()
            want = ops.decompose(model, b, layout, cluster, p)
            assert got == want


def test_utilisation_memo_reads_the_gpu_dtype():
    """The (bytes, FLOP) memo is keyed by the GEMM dtype: fp8 weights on an A100 (no fp8 GEMMs) and on an H100 keep
    their own dtypes and the same counts a fresh decomposition gives."""
    model, b, p = load_model("mixtral-8x7b"), Batch.decode(8, 256), Precision(weights="fp8")
    got = [cap.utilisation_exact(model, b, get_gpu(g), 1.0, 1, p) for g in ("A100-SXM-80GB", "H100-SXM")]
    cap._COUNTS_MEMO.clear()
    for g, u in zip(("A100-SXM-80GB", "H100-SXM"), got, strict=True):
        want = cap.utilisation_exact(model, b, get_gpu(g), 1.0, 1, p)
        cap._COUNTS_MEMO.clear()
        assert u == want
    assert got[0].peak_dtype != got[1].peak_dtype
