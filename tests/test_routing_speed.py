"""`model.routing.expected_max_normal`'s fast form: the in-place normal CDF is the textbook formula bit for bit,
and the adaptive grid agrees with a very fine one (the DES calls it per MoE layer per step-table token count)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.model import routing
from moesim.model.routing import _normal_cdf, expected_max_normal, gpu_loads


def _cdf_textbook(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 as written before the in-place form."""
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-z * z)
    return 0.5 * (1.0 + np.sign(x) * erf)


def _emn_grid(mean: np.ndarray, std: np.ndarray, n: int) -> float:
    """The integral on a fixed grid of ``n`` points over the whole range (the form before; fine ``n``: the truth)."""
    std = np.maximum(std, 1e-12)
    lo, hi = float((mean - 9.0 * std).min()), float((mean + 9.0 * std).max())
    x = np.linspace(lo, hi, n)
    cdf = np.prod(_cdf_textbook((x[:, None] - mean[None, :]) / std[None, :]), axis=1)
    return hi - float(np.sum((cdf[1:] + cdf[:-1]) * 0.5 * np.diff(x)))


def test_normal_cdf_in_place_is_the_textbook_formula_bit_for_bit():
    x = np.random.default_rng(0).normal(0.0, 4.0, (300, 7))
    x[0, :3] = (0.0, -0.0, 40.0)
    before = x.copy()
    assert np.array_equal(_normal_cdf(x), _cdf_textbook(x))
    assert np.array_equal(x, before)  # the argument is left alone


@pytest.mark.parametrize("gpus", [2, 8, 32, 256])
def test_expected_max_normal_matches_a_fine_grid(gpus):
    rng = np.random.default_rng(gpus)
    worst_new, worst_old = 0.0, 0.0
    for _ in range(40 if gpus <= 32 else 8):  # the 40,001-point truth at 256 GPUs costs ~0.5 s a draw
        mean = rng.uniform(0, 100, gpus) * rng.choice([0.0, 0.01, 1.0])
        std = rng.uniform(0.01, 10, gpus) * rng.choice([0.01, 1.0])
        truth = _emn_grid(mean, std, 40001)
        worst_new = max(worst_new, abs(expected_max_normal(mean, std) / truth - 1))
        worst_old = max(worst_old, abs(_emn_grid(mean, std, 2049) / truth - 1))
    assert worst_new < 1e-6
    assert worst_new <= max(worst_old, 1e-8)  # at least as close as the fixed 2,049-point grid it replaced


def test_busiest_gpu_of_skewed_routing_matches_a_fine_grid():
    """DeepSeek-V3-like layer: 256 experts, top-8, EP32, Zipf-skewed loads, 1 to 16k tokens."""
    loads = 1.0 / np.arange(1, 257) ** 0.8
    loads /= loads.sum()
    for tokens in (1, 7, 64, 512, 4096, 16384):
        got = gpu_loads(tokens, 8, 32, loads=loads)
        ps, mu, var = routing._slot_moments(loads, 8, 32, None)
        truth = _emn_grid(tokens * mu, np.sqrt(tokens * var), 40001)
        want = min(max(truth, float(tokens * mu.max())), tokens * min(8, ps.shape[1]))
        assert got.busiest_pairs == pytest.approx(want, rel=1e-10)


def test_expected_max_normal_edge_cases():
    assert expected_max_normal(np.array([5.0]), np.array([2.0])) == 5.0
    assert expected_max_normal(np.array([1.0, 3.0]), np.zeros(2)) == 3.0
    assert expected_max_normal(np.zeros(2), np.ones(2)) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-6)
    # one GPU far above the rest: its mean (the others never reach it)
    assert expected_max_normal(np.array([0.0, 0.0, 1000.0]), np.ones(3)) == pytest.approx(1000.0, rel=1e-12)
    # a GPU without spread (a constant c) next to a noisy one Y ~ N(m, s^2): E[max(c, Y)] in closed form
    c, m, s = 10.0, 9.0, 2.0
    a = (c - m) / s
    phi, cdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(a / math.sqrt(2)))
    want = c * cdf + m * (1 - cdf) + s * phi
    assert expected_max_normal(np.array([c, m]), np.array([0.0, s])) == pytest.approx(want, rel=1e-6)
    assert expected_max_normal(np.array([c, m, 50.0]), np.array([0.0, s, 0.0])) == 50.0
