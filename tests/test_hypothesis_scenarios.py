"""Generated scenario mappings fed to the validators: each returns a validated object or raises `MoesimError`.

The mappings start from valid serving, training and sweep scenarios and are broken at random: values
replaced by junk of the wrong type (NaN, infinity, huge and negative numbers, strings, lists, nested
mappings), keys removed, unknown keys added; or they are junk from the top. Whatever the validator makes
of one, it must never raise anything but `MoesimError` (no ``TypeError``, ``OverflowError``,
``RecursionError``, pydantic ``ValidationError`` ...). Runs are bounded and derandomised, so CI is
reproducible.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from fast_inputs import bounded  # noqa: E402  (tests/fast_inputs.py)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from moesim.model.errors import MoesimError  # noqa: E402
from moesim.sim.serving.scenario import build, parse_scenario  # noqa: E402
from moesim.sim.sweeps.sweep_spec import expand, parse_sweep  # noqa: E402
from moesim.sim.training.train_scenario import build_training, parse_train_scenario  # noqa: E402

SERVE: dict[str, Any] = {
    "name": "h",
    "model": "mixtral-8x7b",
    "gpu": "H100-SXM",
    "nodes": 1,
    "gpus_per_node": 8,
    "layout": {"tp": 8, "ep": 1, "dp_attn": 1, "pp": 1},
    "replicas": "auto",
    "engine": {"max_batch": 64, "max_tokens": 4096, "chunked_prefill": True, "block_size": 16, "mem_fraction": 0.9},
    "workload": {
        "arrival": "poisson",
        "rate": 5,
        "requests": 20,
        "input": {"dist": "lognormal", "mean": 128, "cv": 1.0, "max": 1024},
        "output": 16,
    },
    "routing": {"distribution": "power", "exponent": 1.2, "capacity_factor": 1.5},
    "offload": {"enabled": False, "kv_fraction": 0.2},
    "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
    "cost": {"pricing": "auto", "years": 5, "utilisation": 1.0},
    "seed": 0,
}
TRAIN: dict[str, Any] = {
    "name": "h",
    "model": "olmoe-1b-7b",
    "gpu": "H100-SXM",
    "nodes": 1,
    "gpus_per_node": 8,
    "layout": {"tp": 1, "pp": 2, "ep": 4, "zero": 1, "schedule": "1f1b", "virtual_stages": 1},
    "batch": {"global_batch": 32, "micro_batch": 1, "seq_len": 1024},
    "precision": {"gemm": "bf16", "params": "bf16", "grads": "fp32"},
    "recompute": "none",
    "routing": {"distribution": "power", "exponent": 0.5, "capacity_factor": None},  # 1.0 is too steep for top-8
    "overlap": "none",
    "steps": 1,
    "seed": 0,
}
SWEEP: dict[str, Any] = {
    "name": "h",
    "engine": "analytical",
    "base": {
        "model": "mixtral-8x7b",
        "gpu": "H100-SXM",
        "workload": {"arrival": "poisson", "requests": 20, "input": 128, "output": 16},
    },
    "axes": {
        "gpus": [4, 8],
        "layout": [{"tp": "gpus"}],
        "precision": ["bf16", "fp8"],
        "rate": {"start": 1, "stop": 8, "num": 2, "scale": "log"},
        "routing_skew": [0, 1.2],
    },
    "constraints": {"memory_fits": True, "layout_divides": True, "max_gpus": 8},
    "target": {"throughput_tok_s": 1000},
    "seed": 0,
}

#: Values a user (or an attacker) might write anywhere.
SPECIAL = [
    0,
    -1,
    1,
    2,
    3,
    0.5,
    1e308,
    -1e308,
    10**18,
    2**63,
    -(2**63),
    math.nan,
    math.inf,
    -math.inf,
    "",
    "auto",
    "gpus",
]
SPECIAL += ["fixed", "uniform", "power", "file", "H100-SXM", "mixtral-8x7b", "bf16", "fp8", "1e12", ".nan", "true"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(SPECIAL),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _paths(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of the nested mapping ``data``."""
    out: list[tuple[str, ...]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    return out


def _apply(base: dict[str, Any], ops: list[tuple[str, tuple[str, ...], Any, str]]) -> dict[str, Any]:
    """``base`` with each (operation, path, junk, new key) applied: set the path to junk, drop it, or add a key."""
    data = copy.deepcopy(base)
    for op, path, junk, new_key in ops:
        parent: Any = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue  # an earlier operation replaced a mapping on the way
        if op == "set":
            parent[path[-1]] = junk
        elif op == "drop":
            parent.pop(path[-1], None)
        else:
            parent[new_key] = junk
    return data


def broken(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Mappings near ``base`` with one to four things broken, or junk from the top."""
    ops = st.lists(
        st.tuples(
            st.sampled_from(["set", "set", "drop", "add"]),
            st.sampled_from(_paths(base)),
            st.one_of(st.sampled_from(SPECIAL), st.sampled_from(SPECIAL), JUNK),  # mostly the right kind of wrong
            st.text(min_size=1, max_size=6),
        ),
        min_size=1,
        max_size=3,
    )
    near = ops.map(lambda o: _apply(base, o))
    return st.one_of(near, near, near, st.dictionaries(st.text(max_size=8), JUNK, max_size=4), JUNK)


BOUNDED = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


#: Relative files named in a scenario resolve here (read only).
HERE = Path(__file__).resolve().parent
#: Wall seconds and extra address space (bytes) one call may take before it counts as a hang or a runaway.
CALL_LIMIT_S = 10.0
CALL_MEMORY_BYTES = 4 << 30


class Hang(Exception):
    """A validator ran past `CALL_LIMIT_S`."""


def _only_moesim_errors(call, data: Any) -> Any:
    """``call(data)``, with any exception other than `MoesimError` reported as a failure naming the input."""
    try:
        with bounded(CALL_LIMIT_S, CALL_MEMORY_BYTES, Hang):
            return call(data)
    except MoesimError as exc:
        assert "\n" not in exc.one_line(), exc.one_line()
        return None
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__}: {str(exc)[:300]}\ninput: {data!r}"[:2000], pytrace=False)


@BOUNDED
@given(broken(SERVE))
def test_serving_scenarios_validate_or_raise_moesim_error(data: Any) -> None:
    sc = _only_moesim_errors(parse_scenario, data)
    if sc is not None:
        _only_moesim_errors(lambda s: build(s, HERE), sc)


@BOUNDED
@given(broken(TRAIN))
def test_training_scenarios_validate_or_raise_moesim_error(data: Any) -> None:
    sc = _only_moesim_errors(parse_train_scenario, data)
    if sc is not None:
        _only_moesim_errors(lambda s: build_training(s, HERE), sc)


@BOUNDED
@given(broken(SWEEP))
def test_sweeps_validate_or_raise_moesim_error(data: Any) -> None:
    spec = _only_moesim_errors(parse_sweep, data)
    if spec is not None:
        _only_moesim_errors(expand, spec)


def test_the_bases_are_valid(tmp_path: Path) -> None:
    """The unbroken mappings pass, so the broken ones test the validators, not a bad base."""
    build(parse_scenario(SERVE), tmp_path)
    build_training(parse_train_scenario(TRAIN), tmp_path)
    assert expand(parse_sweep(SWEEP)).points
