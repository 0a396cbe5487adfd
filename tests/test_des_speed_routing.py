"""The DES with the fast busiest-GPU expectation (`model.routing.expected_max_normal`: adaptive grid, in-place
CDF) gives the results of the straightforward one (a fixed 2,049-point grid over the whole range, the textbook
CDF) on DeepSeek-V3 DP32/EP32, whose step tables ask for it per MoE layer per token count."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.model import ops, routing
from moesim.sim.serving.serve import run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "deepseek-v3-dp32-ep32.yaml"


def _emn_straightforward(mean: np.ndarray, std: np.ndarray) -> float:
    """`expected_max_normal` as it was: 2,049 points from the lowest mean - 9 std to the highest mean + 9 std."""
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    if mean.size == 1 or (std <= 0).all():
        return float(mean.max())
    std = np.maximum(std, 1e-12)
    lo, hi = float((mean - 9.0 * std).min()), float((mean + 9.0 * std).max())
    x = np.linspace(lo, hi, 2049)
    z = np.abs((x[:, None] - mean[None, :]) / std[None, :]) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    cdf = np.prod(0.5 * (1.0 + np.sign(x[:, None] - mean[None, :]) * (1.0 - poly * np.exp(-z * z))), axis=1)
    return hi - float(np.sum((cdf[1:] + cdf[:-1]) * 0.5 * np.diff(x)))


def _summary(monkeypatch: pytest.MonkeyPatch, straightforward: bool) -> tuple[dict, int]:
    ops._LOADS_MEMO.clear()  # busiest-GPU expectations memoised by the other run
    if straightforward:
        monkeypatch.setattr(routing, "expected_max_normal", _emn_straightforward)
    d = yaml.safe_load(EXAMPLE.read_text())
    d["workload"]["requests"] = 40
    res = run(d, "des", base_dir=EXAMPLE.parent)
    monkeypatch.undo()
    ops._LOADS_MEMO.clear()
    return res.summary, len(res.steps)


@pytest.mark.skipif(not EXAMPLE.exists(), reason="the DeepSeek-V3 example is absent")
def test_deepseek_des_results_equal_with_the_straightforward_busiest_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, steps_fast = _summary(monkeypatch, straightforward=False)
    ref, steps_ref = _summary(monkeypatch, straightforward=True)
    assert steps_fast == steps_ref
    keys = ("ttft_mean_s", "ttft_p90_s", "tpot_mean_s", "tpot_p90_s", "e2e_mean_s", "e2e_p90_s", "s_mbu", "s_mfu")
    for k in keys:
        assert fast[k] == pytest.approx(ref[k], rel=1e-9), k
