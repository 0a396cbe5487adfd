"""``python -m dashboard.cli``: the moesim command line."""

from dashboard.cli import run

run()
