"""``--a2a-backend deepep|nccl``: who runs the expert-parallel dispatch and combine, for ``moesim roofline``,
``simulate``, ``sweep`` and ``train``.

The flag overrides the scenario's ``layout.a2a_backend`` (`model.layout.Layout`; in a disaggregated serving
scenario, both pools' layouts; in a sweep, the base scenario's layout and every ``axes.layout`` entry). Left out,
the scenario's own choice stands (``deepep`` unless it says otherwise). The backend a run used is in its ``--json``
(``a2a_backend``, and in ``cost_provenance``), and each all-to-all op's source names the model that timed it
(``deepep-normal:``, ``deepep-low_latency:``, else the NCCL roofline or table: `model.a2a`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from moesim.model.a2a import A2A_BACKENDS
from moesim.model.errors import MoesimError

#: The option, as each command declares it (None: the scenario's own backend).
A2aBackendOpt = Annotated[
    str | None,
    typer.Option(
        "--a2a-backend",
        metavar="deepep|nccl",
        help="Expert-parallel all-to-all backend, overriding the scenario's layout.a2a_backend: deepep (DeepEP's "
        "normal kernels for prefill and training, low-latency for decode) or nccl (NCCL all-to-all).",
    ),
]


def check_backend(value: str | None) -> str | None:
    """``value`` as a backend name (case-insensitive), None when not given; `MoesimError` (one line) otherwise."""
    if value is None:
        return None
    name = value.strip().lower()
    if name not in A2A_BACKENDS:
        raise MoesimError(
            f"--a2a-backend {value!r} is not one of {', '.join(A2A_BACKENDS)}",
            "give --a2a-backend deepep (DeepEP's kernels) or --a2a-backend nccl (NCCL all-to-all)",
        )
    return name


def serving_scenario(path: Any, backend: str) -> Any:
    """The serving scenario at ``path`` with every layout's ``a2a_backend`` set to ``backend``."""
    from moesim.sim.serving.scenario import load_scenario

    sc = load_scenario(path)
    update: dict[str, Any] = {"layout": sc.layout.model_copy(update={"a2a_backend": backend})}
    if sc.disaggregation is not None:
        d = sc.disaggregation
        pools = {
            role: pool.model_copy(update={"layout": pool.layout.model_copy(update={"a2a_backend": backend})})
            for role, pool in (("prefill", d.prefill), ("decode", d.decode))
        }
        update["disaggregation"] = d.model_copy(update=pools)
    return sc.model_copy(update=update)


def serving_backends(built: Any) -> str | dict[str, str]:
    """The backend a built serving scenario runs: one name, or per pool role where they differ."""
    names = {pool.role: pool.layout.a2a_backend for pool in built.pools}
    first = next(iter(names.values()))
    return first if all(v == first for v in names.values()) else names


def training_scenario(path: Any, backend: str) -> Any:
    """The training scenario at ``path`` with its layout's ``a2a_backend`` set to ``backend``."""
    from moesim.sim.training.train_scenario import load_train_scenario

    sc = load_train_scenario(path)
    return sc.model_copy(update={"layout": sc.layout.model_copy(update={"a2a_backend": backend})})


def sweep_spec(path: Any, backend: str) -> Any:
    """The sweep at ``path`` with ``a2a_backend`` set in its base scenario's layout and in every ``axes.layout``."""
    from moesim.sim.sweeps.sweep_spec import base_scenario, read_sweep

    spec = read_sweep(path)
    base = base_scenario(spec)
    base = {**base, "layout": {**(base.get("layout") or {}), "a2a_backend": backend}}
    axes = dict(spec.axes)
    if "layout" in axes:
        raw = axes["layout"]
        items = raw if isinstance(raw, list) else [raw]
        items = [{**v, "a2a_backend": backend} if isinstance(v, dict) else v for v in items]
        axes["layout"] = items if isinstance(raw, list) else items[0]
    return spec.model_copy(update={"base": base, "axes": axes})
