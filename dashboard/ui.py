"""What every page of the Streamlit app shares: errors shown as messages, metric tooltips, choices, downloads.

Pages stay thin: they draw widgets, call the cached functions of their
``dashboard.logic`` module and hand the results to plotly. Errors a user can
cause (`MoesimError`: a bad upload, an infeasible layout) appear as one
``st.error`` line naming the problem and the fix, never as a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import traceback
from collections.abc import Iterator
from typing import Any

import pandas as pd
import streamlit as st

from moesim.model import MoesimError

#: The pages, in navigation order: (script under dashboard/views/, title, icon, url path).
PAGES: tuple[tuple[str, str, str, str], ...] = (
    ("views/cap.py", "CAP overview", ":material/radar:", "cap"),
    ("views/scenario.py", "Scenario", ":material/play_circle:", "scenario"),
    ("views/sweeps.py", "Sweep explorer", ":material/grid_on:", "sweeps"),
    ("views/placement.py", "Placement studio", ":material/hub:", "placement"),
    ("views/profiles.py", "Profiles & calibration", ":material/speed:", "profiles"),
)

#: One-sentence explanations shown as tooltips next to each metric (units in the text).
HELP: dict[str, str] = {
    "cost": "Cost: US dollars per million output tokens, GPU time priced at the cloud rate "
    "(or capex over the GPU's life) divided by the tokens it produced. Lower is better.",
    "s_per_token": "Performance: seconds per output token for one request (TPOT at the configuration's "
    "capacity, or its median TPOT at the chosen rate). Lower is better; MoE-CAP draws it on the P axis.",
    "accuracy": "Accuracy: the published benchmark score (0-100) of the model at this weight precision "
    "(model/data/accuracy.csv); blank when none is published. moesim does not guess accuracy.",
    "s_mbu": "S-MBU, sparsity-aware memory-bandwidth utilisation (MoE-CAP): bytes the steps really read "
    "(only the experts the tokens activated, plus the KV cache) over what the GPUs could read in the same "
    "time. 0-100%.",
    "s_mfu": "S-MFU, sparsity-aware model-FLOP utilisation (MoE-CAP): FLOP of the activated experts and "
    "attention over the GPUs' peak FLOP in the same time. 0-100%.",
    "throughput": "Output tokens per second the whole configuration delivers (at its capacity: the highest "
    "request rate that still meets the TTFT and TPOT SLOs).",
    "ttft": "Time to first token: arrival to the first output token, seconds (queueing + prefill).",
    "tpot": "Time per output token after the first, seconds (decode step time seen by one request).",
    "e2e": "End-to-end latency: arrival to the last output token, seconds.",
    "goodput": "Requests per second that met every SLO.",
    "usd_per_hour": "US dollars per hour for all the configuration's GPUs.",
    "pareto": "On the Pareto front: no other configuration is at least as good on cost, seconds per token "
    "and accuracy and better on one of them.",
}


def show_error(exc: BaseException) -> None:
    """One message on the page: the problem and its fix for a `MoesimError`, a short report for a bug."""
    if isinstance(exc, MoesimError):
        st.error(exc.one_line(), icon=":material/error:")
    else:
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" ({last.filename.rsplit('/', 1)[-1]}:{last.lineno})" if last else ""
        st.error(
            f"internal error {type(exc).__name__}: {exc}{where}. Please report it with the inputs you used.",
            icon=":material/bug_report:",
        )


@contextlib.contextmanager
def guarded(stop: bool = True) -> Iterator[None]:
    """Run a block; a failure shows as one page message (`show_error`) and, with ``stop``, ends the run.

    ``st.stop`` and page switches pass through untouched.
    """
    try:
        yield
    except MoesimError as exc:
        show_error(exc)
        if stop:
            st.stop()
    except Exception as exc:
        if type(exc).__module__.startswith("streamlit"):  # StopException, RerunException, page switches
            raise
        show_error(exc)
        if stop:
            st.stop()


def fmt(v: Any, kind: str = "") -> str:
    """A figure for a caption: ``s`` seconds with a unit, ``%`` a fraction, ``$`` dollars; '-' when missing."""
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if kind == "s":
        v = float(v)
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
    if kind == "%":
        return f"{float(v):.1%}"
    if kind == "$":
        return f"${float(v):,.3g}"
    if isinstance(v, float):
        return f"{v:,.3g}"
    return str(v)


def csv_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as UTF-8 CSV, without the index."""
    return df.to_csv(index=False).encode()


def parquet_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as a Parquet file in memory."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON (NaN written as null)."""
    from moesim.sim.common import clean_json

    return (json.dumps(json.loads(clean_json(obj)), indent=1) + "\n").encode()


def page_header(title: str, caption: str) -> None:
    """The page's title and a one-line description of what it is for."""
    st.title(title)
    st.caption(caption)
