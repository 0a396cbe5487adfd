"""``python -m dashboard.cli``: the moesim command line."""

from moesim.dashboard.cli import run

run()
