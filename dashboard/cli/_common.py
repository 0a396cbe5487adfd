"""Shared pieces of the CLI: consoles, JSON output, number formatting, errors."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import typer
from rich.console import Console

#: Human output goes to stdout; progress and errors to stderr.
out = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


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
