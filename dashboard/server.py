"""The process ``moesim dashboard`` starts: warm up, then Streamlit's own command line.

    python -m dashboard.server run dashboard/app.py --server.port 8501 ...

Streamlit imports a page's modules and fills the packages' own caches (model presets, built scenarios,
step timers) only when the first browser session runs the page, so the first page a user opens would pay
for all of it (`benchmarks/dashboard.py` times both, section 11 of benchmarks/RESULTS.md). The warm-up does
that work before the server answers: every page's modules imported, the CAP overview's
default configurations evaluated on the analytical model and the Scenario page's default scenario built,
all through the packages' module-level caches (`st.cache_data` needs a session, so its entries are still
made on first use). A failing warm-up is reported on stderr and the server starts anyway.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import time


def warm() -> float:
    """Import the app's modules and fill the packages' caches for the default pages; seconds spent."""
    t0 = time.perf_counter()
    import plotly.graph_objects as go

    import moesim.dashboard.logic.cap as cap
    import moesim.dashboard.logic.charts
    import moesim.dashboard.logic.placement
    import moesim.dashboard.logic.profiles
    import moesim.dashboard.logic.scenario as scenario
    import moesim.dashboard.logic.sweeps
    import moesim.dashboard.ui  # noqa: F401
    from moesim.sim.serving.serve import load
    from moesim.sim.sweeps.sweep_eval import evaluate
    from moesim.sim.sweeps.sweep_spec import expand, parse_sweep

    go.Figure(go.Scatter(x=[0.0], y=[0.0])).to_json()  # plotly loads its validators on the first figure
    d = cap.DEFAULTS
    spec = parse_sweep(
        cap.grid_mapping(
            d["models"], d["gpus"], d["num_gpus"], d["layouts"], d["precisions"],
            d["rate"], d["input_mean"], d["output_mean"], d["ttft_s"], d["tpot_s"],
        )
    )  # fmt: skip
    for point in expand(spec).points:
        evaluate(point, spec)
    load(scenario.SERVING_DEFAULT)
    return time.perf_counter() - t0


def main() -> None:
    """Warm up (see the module docstring), then run ``streamlit`` with this process's arguments.

    The scratch folder ``moesim dashboard`` made for this server (``MOESIM_DASHBOARD_SCRATCH``) is removed
    when this process exits, also when ``moesim dashboard`` was killed first (it then gets SIGTERM).
    """
    scratch = os.environ.get("MOESIM_DASHBOARD_SCRATCH")
    if scratch and os.path.basename(scratch).startswith("moesim-dashboard-"):
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    try:
        print(f"moesim dashboard: warmed up in {warm():.1f} s", file=sys.stderr, flush=True)
    except Exception as exc:  # a warm-up is an optimisation: never a reason not to serve
        print(f"moesim dashboard: warm-up skipped ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
    from streamlit.web import cli

    sys.argv = ["streamlit", *sys.argv[1:]]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
