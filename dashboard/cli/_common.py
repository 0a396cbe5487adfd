"""Shared pieces of the CLI: consoles, JSON output, progress and ``--quiet``, number formatting, errors."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import typer
from rich.console import Console

#: Human output goes to stdout; progress and errors to stderr.
out = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)

#: Exit code of a command whose configuration does not fit in GPU memory (``moesim roofline``, ``moesim train``);
#: its report is still printed, with ``"fits": false`` in ``--json``. 1 is bad input, 2 bad usage.
EXIT_DOES_NOT_FIT = 3

#: When stderr is not a terminal (CI logs, nohup), a plain progress line each time another tenth of the work is
#: done, and at least every `PLAIN_EVERY_S` seconds (s) while it runs.
PLAIN_EVERY_FRAC = 0.1
PLAIN_EVERY_S = 30.0

_quiet = False


def set_quiet(value: bool) -> None:
    """Silence progress and informational lines on stderr (``moesim --quiet CMD``); errors still print."""
    global _quiet
    _quiet = bool(value)


def is_quiet() -> bool:
    """Whether ``--quiet`` was given, or the environment variable MOESIM_QUIET is set to anything but 0/empty."""
    return _quiet or os.environ.get("MOESIM_QUIET", "").strip().lower() not in ("", "0", "false", "no")


def note(message: str) -> None:
    """An informational line on stderr (what was written, what is being done), unless quiet."""
    if not is_quiet():
        err.print(message, markup=False, highlight=False, soft_wrap=True)


def _clock(s: float) -> str:
    """Seconds as ``42 s`` or ``3 min 05 s``."""
    s = max(0.0, s)
    return f"{s:.0f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


@contextmanager
def progress_bar(what: str, quiet: bool = False) -> Iterator[Callable[[int, int, str], None]]:
    """Progress on stderr, from the first update on; yields ``update(done, total, label)``.

    On a terminal, a live bar. Otherwise (CI logs, ``nohup``, a pipe) plain lines such as
    ``simulating: 30% (300/1,000), 12 s elapsed, eta 28 s, <label>`` each time another tenth is done
    (`PLAIN_EVERY_FRAC`) or `PLAIN_EVERY_S` seconds have passed. Nothing with ``quiet`` or `is_quiet`.
    Starting lazily keeps the stderr of a command that fails before any work to its one error line.
    """
    if quiet or is_quiet():
        yield lambda done, total, label: None
        return
    if not err.is_terminal:
        t0 = time.monotonic()
        last = {"t": t0, "tenth": 0}

        def plain(done: int, total: int, label: str) -> None:
            now = time.monotonic()
            frac = done / total if total > 0 else 0.0
            tenth = int(frac / PLAIN_EVERY_FRAC + 1e-9)
            if tenth <= last["tenth"] and now - last["t"] < PLAIN_EVERY_S:
                return
            last.update(t=now, tenth=max(tenth, last["tenth"]))
            elapsed = now - t0
            eta = f", eta {_clock(elapsed * (1 - frac) / frac)}" if 0 < frac < 1 else ""
            label = f", {label[:70]}" if label else ""
            err.print(
                f"{what}: {frac:.0%} ({done:,}/{total:,}), {_clock(elapsed)} elapsed{eta}{label}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

        yield plain
        return

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn(f"[bold]{what}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    # two refreshes a second: a busier bar thread steals time from the kernels being timed on a small CPU
    bar = Progress(*columns, console=err, transient=True, refresh_per_second=2)
    task = None

    def update(done: int, total: int, label: str) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("", total=total)
        bar.update(task, completed=done, total=total, description=label[:70])

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


def finite(
    flag: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
) -> Callable[[float | None], float | None]:
    """A typer ``callback`` for a float option: refuses NaN, infinity and values outside [lo, hi].

    ``lo_open`` / ``hi_open`` exclude the bound itself. The refusal is one usage-error line naming
    ``flag`` and the range, e.g. ``error: Invalid value for '--pue': must be a finite number >= 1, got nan``.

    Example: ``pue: Annotated[float, typer.Option(callback=finite("--pue", 1.0, 10.0))] = 1.56``
    """
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    rng = " and ".join(parts)

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        ok = math.isfinite(value)
        ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
        ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
        if not ok:
            raise typer.BadParameter(f"{flag} must be a finite number{' ' + rng if rng else ''}, got {value:g}")
        return value

    return check


def _default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """NaN and infinities become null so the output is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def emit_json(obj: dict[str, Any]) -> None:
    """Print ``obj`` as one JSON object on stdout."""
    sys.stdout.write(json.dumps(_clean(obj), default=_default) + "\n")
    sys.stdout.flush()


def si(value: float, unit: str = "", digits: int = 3) -> str:
    """``1.23 T`` style with SI prefixes (k, M, G, T, P)."""
    if value == 0:
        return f"0 {unit}".strip()
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}".strip()


def gib(nbytes: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{nbytes / 2**30:,.2f} GiB"


def seconds(value: float) -> str:
    """Seconds as s, ms or µs."""
    if value >= 1:
        return f"{value:.3g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def params(value: float) -> str:
    """A parameter count as e.g. ``46.70 B``."""
    if value >= 1e9:
        return f"{value / 1e9:,.2f} B"
    if value >= 1e6:
        return f"{value / 1e6:,.1f} M"
    return f"{value / 1e3:,.1f} k"
