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

from moesim.dashboard.format import fmt_bytes, fmt_number, fmt_pct, fmt_seconds, fmt_usd
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
    """A figure for a caption (`dashboard.format`): ``s`` seconds, ``%`` a fraction, ``$`` dollars, ``B`` bytes;
    else a plain number. `format.MISSING` when absent."""
    if kind == "s":
        return fmt_seconds(v)
    if kind == "%":
        return fmt_pct(v)
    if kind == "$":
        return fmt_usd(v)
    if kind == "B":
        return fmt_bytes(v)
    if isinstance(v, str):
        return v
    return fmt_number(v)


def is_roofline(cost_model: str | None) -> bool:
    """Whether a result's ``cost_model`` (`sim.serving.serve.cost_model_name`) is the uncalibrated roofline."""
    return not cost_model or str(cost_model).startswith("roofline")


#: What the roofline badge's tooltip says.
ROOFLINE_HELP = (
    "No calibrated cost model: every op takes max(FLOP / peak FLOP/s, bytes / peak bandwidth), the roofline. "
    "Times are lower bounds and throughputs, MFU and S-MFU upper bounds, not predictions. Calibrate on measured "
    "kernel tables (moesim calibrate, the Profiles & calibration page) for predictions."
)


def cost_model_badge(cost_model: str | None) -> bool:
    """A badge above predicted figures: "roofline (lower bound)" without a calibrated cost model, else the
    calibrated model's name. Returns `is_roofline`."""
    if is_roofline(cost_model):
        st.badge("roofline (lower bound)", icon=":material/straighten:", color="orange", help=ROOFLINE_HELP)
        return True
    st.badge(f"calibrated: {cost_model}", icon=":material/verified:", color="green")
    return False


def mfu_label(name: str, roofline: bool) -> str:
    """A utilisation metric's label: ``MFU (roofline)`` in roofline mode (an upper bound, not a measurement)."""
    return f"{name} (roofline)" if roofline else name


def smfu_note(s_mfu: float | None, roofline: bool) -> str:
    """A caption when S-MFU exceeds 100% in roofline mode (an artefact of that mode), else ``""``."""
    if roofline and s_mfu is not None and s_mfu == s_mfu and s_mfu > 1.0:
        return (
            f"S-MFU {fmt_pct(s_mfu)} is above 100%: an artefact of roofline mode (MoE-CAP's FLOP count over a "
            "roofline step time, which is a lower bound), not a utilisation a GPU reaches."
        )
    return ""


def smfu_value(s_mfu: float | None, roofline: bool) -> str:
    """S-MFU as a metric value; marked with a dagger (see `smfu_note`) above 100% in roofline mode."""
    return fmt_pct(s_mfu) + (" †" if smfu_note(s_mfu, roofline) else "")


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


#: Page-wide CSS: headline metrics in a smaller font and narrower side padding of the main area, so that a
#: figure with its unit is not cut in a 1000 px window (four metrics a row beside the sidebar).
CSS = """<style>
[data-testid="stMetricValue"] { font-size: 1.5rem; }
[data-testid="stMainBlockContainer"] { padding-left: 2.5rem; padding-right: 2.5rem; }
</style>"""


def page_header(title: str, caption: str) -> None:
    """The page's title and a one-line description of what it is for."""
    st.html(CSS)
    st.title(title)
    st.caption(caption)
