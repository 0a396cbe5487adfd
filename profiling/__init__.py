"""moesim profiling: kernel microbenchmarks (torch, Triton) on the device at hand,
importers for measurements made elsewhere, and calibration of a `CostModel`.

Built on `model` only. Importing this package needs no torch: torch and
Triton are imported by the microbenchmarks when they run (the ``profile``
extra).

Public API:

- measuring: `profile` (``moesim profile``), `ProfileRun`;
- tables: `read_table`, `write_table`, `check_table`, `load_tables`,
  `KINDS`, `TableError` (columns and units in `profiling.tables`);
- importers: `import_aiconfigurator`, `import_chrome_trace`, `import_trace`;
- calibration: `calibrate`, `save`, `load`, `Calibration`, `Fit`,
  `CalibratedCostModel`; the skew model `predict_skewed`.
"""

import os
import warnings

# torch and Triton, imported by the microbenchmarks, warn on stderr about CUDA drivers, NumPy builds and
# deprecations; those lines would come before moesim's own one-line messages (and its one JSON object).
# MOESIM_DEBUG=1 shows them.
if os.environ.get("MOESIM_DEBUG") != "1":
    for _module in (r"torch(\.|$)", r"triton(\.|$)"):
        warnings.filterwarnings("ignore", module=_module)

from moesim.profiling.aiconfigurator import import_aiconfigurator
from moesim.profiling.calibrate import calibrate
from moesim.profiling.costmodel import CalibratedCostModel, Calibration, Fit, load, save
from moesim.profiling.runner import ProfileRun, profile
from moesim.profiling.skew import predict_skewed
from moesim.profiling.tables import KINDS, TableError, check_table, load_tables, read_table, write_table
from moesim.profiling.trace_import import import_chrome_trace, import_trace

__all__ = [
    "KINDS",
    "CalibratedCostModel",
    "Calibration",
    "Fit",
    "ProfileRun",
    "TableError",
    "calibrate",
    "check_table",
    "import_aiconfigurator",
    "import_chrome_trace",
    "import_trace",
    "load",
    "load_tables",
    "predict_skewed",
    "profile",
    "read_table",
    "save",
    "write_table",
]
