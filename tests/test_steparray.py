"""The analytical step's op parts in array form (`sim.serving.steparray`) against the scalar path.

`StepArray.expected` must give `StepTimer.expected`'s step (every `StepCost` field within 1e-9 relative) for the
analytical engine's shapes: decode steps (padded to a CUDA graph's capture size or not), mixed steps with a prompt
chunk with and without cached context, one-token chunks, prefill-only steps; on tensor-parallel and
attention-data-parallel / expert-parallel layouts, bf16 and fp8, on a GPU with fp8 GEMMs and one without. What it
does not cover (another cost model, two-batch overlap, a class whose ops are not of the linear form) must take the
scalar path and give its numbers bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fast_inputs import SWEEP_BASE  # tests/fast_inputs.py

from moesim.sim.serving import steparray
from moesim.sim.serving.steparray import StepArray, _attn_group, _batch, _describe, _kinds, _moments
from moesim.sim.serving.steptime import StepTimer
from moesim.sim.sweeps import sweep_eval
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

FIELDS = (
    "duration_s", "compute_s", "comm_s", "straggler_s", "fetch_s", "bytes", "flops", "scheduler_s", "prepare_s",
    "sampling_s", "launch_s", "host_s", "launches", "graphs", "padded_batch",
)  # fmt: skip

SWEEP = {
    "name": "steparray",
    "base": SWEEP_BASE,
    "axes": {
        "gpu": ["A100-SXM-80GB", "H100-SXM"],
        "gpus": [4],
        "layout": [{"tp": "gpus"}, {"tp": 1, "dp_attn": "gpus", "ep": "gpus"}],
        "precision": ["bf16", "fp8"],
        "rate": [0.5, 8.0, 64.0],
    },
}

#: (decoding sequences, context, prompt chunk, chunk's cached tokens): decode (graph-padded or beyond the largest
#: capture size), mixed with and without cached context, one-token chunks, prefill only.
SHAPES = [
    (1, 10, 0, 0), (3, 700, 0, 0), (13, 2048, 0, 0), (64, 900, 0, 0), (300, 1500, 0, 0), (600, 300, 0, 0),
    (1, 100, 7, 0), (5, 512, 300, 0), (17, 3000, 2000, 1500), (129, 800, 4000, 64), (250, 4096, 3800, 3000),
    (0, 0, 512, 0), (0, 0, 4000, 0), (0, 0, 900, 2000), (8, 600, 1, 600), (9, 600, 1, 20), (40, 1, 1, 0),
]  # fmt: skip


def _timers() -> list[StepTimer]:
    spec = parse_sweep(SWEEP)
    seen, out = set(), []
    for p in expand(spec).points:
        if p.config_key in seen:
            continue
        seen.add(p.config_key)
        out.extend(sweep_eval._analytical(p, spec).timers.values())
    return out


def _close(got: object, want: object, what: str, rtol: float = 1e-9) -> None:
    a, b = float(got), float(want)  # type: ignore[arg-type]
    assert a == b or abs(a - b) <= rtol * max(abs(a), abs(b)), f"{what}: {a} vs {b}"


def _scalar(timer: StepTimer, b: int, ctx: int, chunk: int, cc: int):
    new = np.concatenate([np.ones(b, np.int64), [chunk]]) if chunk else np.ones(b, np.int64)
    cached = np.concatenate([np.full(b, ctx, np.int64), [cc]]) if chunk else np.full(b, ctx, np.int64)
    return timer.expected(new, cached)


def test_describe_matches_the_arrays():
    """The class key, moments and token counts computed without the batch equal those of the batch itself
    (`Batch.split`'s round-robin groups, the busiest first by tokens then sequences)."""
    rng = np.random.default_rng(3)
    for _ in range(400):
        dp = int(rng.choice([1, 2, 3, 4, 8]))
        b = int(rng.integers(0, 40))
        chunk = int(rng.choice([0, 1, int(rng.integers(2, 50))]))
        pads = 0 if chunk else int(rng.integers(0, 20))
        if b + pads + (1 if chunk else 0) == 0:
            continue
        ctx, cc = int(rng.choice([0, int(rng.integers(1, 900))])), int(rng.choice([0, int(rng.integers(1, 900))]))
        new, cached = _batch(b, ctx, pads, chunk, cc)
        a_new, a_cached = _attn_group(new, cached, dp)
        phase = "decode" if int(new.max()) == 1 else "prefill" if int(cached.max()) == 0 else "mixed"
        key, row, t_all, t_attn = _describe(b, ctx, pads, chunk, cc, dp)
        assert key == (phase, _kinds(new, cached), _kinds(a_new, a_cached)), (b, ctx, pads, chunk, cc, dp)
        assert row == [1.0, *_moments(new, cached), *_moments(a_new, a_cached)]
        assert (t_all, t_attn) == (int(new.sum()), int(a_new.sum()))


def test_expected_equals_the_scalar_path():
    timers = _timers()
    assert len(timers) == 8
    used = 0
    for timer in timers:
        sa = StepArray(timer)
        assert sa.supported
        for b, ctx, chunk, cc in SHAPES:
            got, want = sa.expected(b, ctx, chunk, cc), _scalar(timer, b, ctx, chunk, cc)
            for f in FIELDS:
                _close(getattr(got, f), getattr(want, f), f"{timer.layout.label()} {(b, ctx, chunk, cc)} {f}")
        used += sum(v is not None for v in sa._timed.values())
        assert any(k[0] == "mixed" for k in sa._timed)
    assert used >= 8 * 4  # decode, padded decode, mixed, prefill classes at least: the array form answered


def test_padded_decode_uses_the_array_form():
    """A decode step padded to a capture size is priced at the padded batch (the dummies hold no cache)."""
    timer = _timers()[0]
    assert timer._padded((13, 13, "decode")) > 13  # the engine replays a graph
    sa = StepArray(timer)
    got = sa.expected(13, 2048)
    assert any(v is not None and "p" in k[1] for k, v in sa._timed.items())
    assert got.padded_batch == timer._padded((13, 13, "decode"))
    _close(got.duration_s, _scalar(timer, 13, 2048, 0, 0).duration_s, "padded decode")


def test_unsupported_timers_take_the_scalar_path():
    """Two-batch overlap (and any cost model but the roofline) are the scalar path's: bit for bit."""
    timer = _timers()[1]
    timer.overlap = "two_batch"
    sa = StepArray(timer)
    assert not sa.supported
    for b, ctx, chunk, cc in SHAPES[:8]:
        got, want = sa.expected(b, ctx, chunk, cc), _scalar(timer, b, ctx, chunk, cc)
        assert [getattr(got, f) for f in FIELDS] == [getattr(want, f) for f in FIELDS]


def test_a_class_not_of_the_linear_form_falls_back(monkeypatch):
    """Where the fit does not reproduce `decompose` for an op outside the MoE block, the class is refused and the
    scalar path answers, bit for bit."""
    steparray._CLASSES.clear()
    monkeypatch.setattr(
        steparray, "_lstsq", lambda x, y: (np.zeros((x.shape[1], y.shape[1])), np.zeros(y.shape[1], bool))
    )
    timer = _timers()[2]
    sa = StepArray(timer)
    for b, ctx, chunk, cc in SHAPES[:10]:
        got, want = sa.expected(b, ctx, chunk, cc), _scalar(timer, b, ctx, chunk, cc)
        assert [getattr(got, f) for f in FIELDS] == [getattr(want, f) for f in FIELDS]
    assert sa._timed and all(v is None for v in sa._timed.values())
    steparray._CLASSES.clear()


def _rows() -> list[dict]:
    sweep_eval._CACHE.clear()
    spec = parse_sweep(SWEEP)
    tasks: list[list] = []
    for p in expand(spec).points:
        if tasks and tasks[-1][0].config_key == p.config_key:
            tasks[-1].append(p)
        else:
            tasks.append([p])
    return [row for t in tasks for row in sweep_eval.evaluate_task(t, spec)]


def _walk(got: object, want: object, key: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), key
        for k in want:
            _walk(got[k], want[k], f"{key}.{k}")
    elif isinstance(want, float) and not isinstance(want, bool):
        if math.isnan(want):
            assert math.isnan(float(got)), key  # type: ignore[arg-type]
        else:
            _close(got, want, key)
    else:
        assert got == want, key


@pytest.mark.parametrize("seed", [0])
def test_sweep_rows_equal_to_the_scalar_path(monkeypatch, seed):
    """A 24-point analytical sweep (overloaded points included) with the array form and without: every column
    within 1e-9 relative, the same statuses."""
    fast = _rows()
    monkeypatch.setattr(steparray, "ENABLED", False)
    ref = _rows()
    assert len(fast) == len(ref) == 24
    assert {r["status"] for r in ref} >= {"ok", "overloaded"}
    for got, want in zip(fast, ref, strict=True):
        for k in want:
            if k != "wall_s":
                _walk(got[k], want[k], f"{want['label']} @ {want['rate']}: {k}")


def test_many_shapes_at_once_equal_one_by_one():
    """`parts_many` (one array evaluation per class) gives what `parts` gives shape by shape."""
    timer = _timers()[3]
    sa = StepArray(timer)
    shapes = [(b, ctx, 0, chunk, cc) for b, ctx, chunk, cc in SHAPES] + [(13, 2048, 3, 0, 0), (1, 5, 15, 0, 0)]
    many = sa.parts_many(shapes)
    assert many.shape == (len(shapes), 11) and not np.isnan(many).any()
    for s, row in zip(shapes, many, strict=True):
        one = sa.parts(*s)
        assert one is not None
        np.testing.assert_allclose(row, one, rtol=1e-12, atol=0)


def test_per_layer_routing_equals_the_scalar_path():
    """Per-layer routing (a power-law skew: each MoE layer its own loads) on TP and EP layouts: the array form of the
    layer-set estimate plus the per-layer experts and all-to-all (`StepArray._per_layer_parts`) gives
    `StepTimer.expected`'s step within 1e-9 relative, and answers (not the scalar fallback)."""
    axes = SWEEP["axes"] | {"gpu": ["H100-SXM"], "precision": ["fp8"], "rate": [1.0], "routing_skew": [1.0]}
    spec = parse_sweep(SWEEP | {"axes": axes})
    timers = [t for p in expand(spec).points for t in sweep_eval._analytical(p, spec).timers.values()]
    assert len(timers) == 2 and all(np.ndim(t.loads) == 2 for t in timers)
    for timer in timers:
        sa = StepArray(timer)
        assert sa.supported and sa._per_layer
        for b, ctx, chunk, cc in SHAPES:
            got, want = sa.expected(b, ctx, chunk, cc), _scalar(timer, b, ctx, chunk, cc)
            for f in FIELDS:
                _close(getattr(got, f), getattr(want, f), f"{timer.layout.label()} {(b, ctx, chunk, cc)} {f}")
        assert sum(v is not None for v in sa._timed.values()) >= 4
        shapes = [(b, ctx, 0, chunk, cc) for b, ctx, chunk, cc in SHAPES]
        many = sa.parts_many(shapes)
        for row, s in zip(many, shapes, strict=True):
            one = sa.parts(*s)
            assert one is not None
            np.testing.assert_allclose(row, one, rtol=1e-12, atol=0)


def test_a_class_fit_does_not_depend_on_which_shape_asked_first():
    """A class is fitted on seeded shapes of its pattern, never on the shape that asked for it: two shapes of one
    class asked in either order (and in a fresh table each time) give the same floats. Before, the asking shape led
    the fit's samples and its scale, and a sweep's rows then depended on which point a worker had solved first (in
    the last bits, which a fixed point can carry further)."""
    pairs = [((5, 512, 300, 0), (40, 2000, 1200, 0)), ((17, 3000, 2000, 1500), (250, 4096, 3800, 3000))]
    for timer in _timers()[:4]:
        for one, two in pairs:
            keys = {
                _describe(b, ctx, 0, chunk, cc, max(timer.layout.dp_attn, 1))[0] for b, ctx, chunk, cc in (one, two)
            }
            assert len(keys) == 1  # one class
            got = []
            for order in ((one, two), (two, one)):
                steparray._CLASSES.clear()
                sa = StepArray(timer)
                costs = {shape: sa.expected(*shape) for shape in order}
                got.append([[getattr(costs[s], f) for f in FIELDS] for s in (one, two)])
            assert got[0] == got[1], (timer.layout.label(), one, two)
