"""moesim: performance modelling and simulation for Mixture-of-Experts training and serving.

Installed, the repository's folders are the subpackages of this one namespace (see pyproject.toml's
``package-dir``): `moesim.model` (specs, the op model, roofline, memory, CAP metrics), `moesim.profiling`
(kernel measurements and calibration), `moesim.placement` (expert placement), `moesim.sim` (the serving
and training simulators, sweeps) and `moesim.dashboard` (the CLI and the Streamlit app). Imports flow one
way: model <- profiling, placement <- sim <- dashboard.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:  # the one version source is pyproject.toml, read from the installed distribution's metadata
    __version__ = version("moesim")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
