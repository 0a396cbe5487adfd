"""Numbers as people read them: one helper per kind of quantity, each with its unit.

Every page, report and summary of the dashboard formats its figures here, so that a user never sees a float's
repr (``10.079368399``), an exponent (``1.66e+4``), ``None`` or ``nan``, or a wrong prefix ("7.5B B/s")::

    fmt_seconds(8.22e-6)      # '8.22 µs'
    fmt_bytes(62 * 2**30)     # '62.0 GiB'
    fmt_rate(7.5e9, "B/s")    # '7.50 GB/s'
    fmt_count(16_600)         # '16,600'
    fmt_pct(0.781)            # '78.1%'
    fmt_usd(0.1234)           # '$0.123'

A missing value (None, NaN) is written `MISSING`; an infinite latency (an overloaded run) `OVERLOADED`.
"""

from __future__ import annotations

import math
from typing import Any

#: How a missing figure (None, NaN) is written.
MISSING = "–"
#: How an infinite time (a queue that grows without bound: an overloaded run) is written.
OVERLOADED = "overloaded"
#: SI prefixes from 10^-9 to 10^15.
_SI = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))
_SI_SMALL = ((1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def _sig(v: float, digits: int = 3) -> str:
    """``v`` to ``digits`` significant figures, never in exponent notation (``12.3``, ``0.0123``, ``123``)."""
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    return f"{v:,.{max(0, digits - 1 - mag)}f}"


def fmt_number(v: Any, digits: int = 3) -> str:
    """A plain figure without a unit: integers with thousands separators, else ``digits`` significant figures;
    SI suffixes (k, M, G, ...) from a million up, ``×10⁻ⁿ`` below 0.001 ('-' style `MISSING` when absent)."""
    if _missing(v):
        return MISSING
    if isinstance(v, bool):
        return str(v)
    x = float(v)
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if abs(x) >= 1e6:
        return fmt_si(x, "", digits)
    if float(x).is_integer():
        return f"{int(x):,}"
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    if 0 < abs(x) < 1e-3:
        mant, exp = f"{x:.{digits - 1}e}".split("e")
        sup = str(int(exp)).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
        return f"{mant}×10{sup}"
    return _sig(x, digits)


def fmt_si(v: Any, unit: str, digits: int = 3) -> str:
    """``v`` with an SI prefix and ``unit``: ``fmt_si(7.5e9, "B/s")`` -> '7.50 GB/s', ``fmt_si(3e-6, "s")`` ->
    '3.00 µs'."""
    if _missing(v):
        return MISSING
    x = float(v)
    if math.isinf(x):
        return f"∞ {unit}".strip()
    sep = " "
    a = abs(x)
    if a == 0:
        return f"0{sep}{unit}".rstrip()
    for scale, prefix in _SI:
        if a >= scale * 0.9995:
            return f"{x / scale:.{_decimals(x / scale, digits)}f}{sep}{prefix}{unit}".rstrip()
    for scale, prefix in _SI_SMALL:
        if a >= scale * 0.9995:
            return f"{x / scale:.{_decimals(x / scale, digits)}f}{sep}{prefix}{unit}".rstrip()
    return f"{x / 1e-9:.{_decimals(x / 1e-9, digits)}f}{sep}n{unit}".rstrip()


def _decimals(x: float, digits: int) -> int:
    a = abs(x)
    if a >= 99.95:
        return max(0, digits - 3)
    if a >= 9.995:
        return max(0, digits - 2)
    return max(0, digits - 1)


def fmt_seconds(v: Any, digits: int = 3) -> str:
    """A duration: ns, µs, ms, s below ten minutes, then 'min' (below 2 h), 'h' and 'days'; `OVERLOADED` for an
    infinite time."""
    if _missing(v):
        return MISSING
    x = float(v)
    if math.isinf(x):
        return OVERLOADED
    a = abs(x)
    if a >= 86400:
        return f"{fmt_number(x / 86400)} days"
    if a >= 7200:
        return f"{x / 3600:,.{_decimals(x / 3600, digits)}f} h"
    if a >= 600:
        return f"{x / 60:.{_decimals(x / 60, digits)}f} min"
    return fmt_si(x, "s", digits)


def fmt_bytes(v: Any, digits: int = 3) -> str:
    """A size in binary units (B, KiB, MiB, GiB, TiB), as GPU memory is quoted by nvidia-smi and the engines."""
    if _missing(v):
        return MISSING
    x = float(v)
    if math.isinf(x):
        return "∞ B"
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if abs(x) >= 1024**power * 0.9995:
            y = x / 1024**power
            return f"{y:.{_decimals(y, digits)}f} {unit}"
    return f"{x:,.0f} B"


def fmt_rate(v: Any, unit: str = "/s", digits: int = 3) -> str:
    """A rate with an SI prefix: ``fmt_rate(7.5e9, "B/s")`` -> '7.50 GB/s', ``fmt_rate(1.2e15, "FLOP/s")`` ->
    '1.20 PFLOP/s'; plain thousands separators for counts per second below a million (``12,345 tok/s``)."""
    if _missing(v):
        return MISSING
    x = float(v)
    if unit in ("B/s", "FLOP/s") or abs(x) >= 1e6:
        return fmt_si(x, unit, digits)
    if abs(x) >= 100:
        return f"{x:,.0f} {unit}"
    return f"{_sig(x, digits)} {unit}"


def fmt_count(v: Any) -> str:
    """A count: ``16,600``; from ten million up with an SI suffix (``12.3 M``)."""
    if _missing(v):
        return MISSING
    x = float(v)
    if abs(x) >= 1e7:
        return fmt_si(x, "")
    return f"{round(x):,}"


def fmt_pct(v: Any, digits: int = 1, signed: bool = False) -> str:
    """A fraction (0.781) as a percentage ('78.1%'; with ``signed`` '+78.1%')."""
    if _missing(v):
        return MISSING
    return f"{float(v) * 100:{'+' if signed else ''}.{digits}f}%"


def fmt_usd(v: Any) -> str:
    """US dollars: three significant figures below $1,000 (``$0.123``, ``$12.3``), whole dollars above."""
    if _missing(v):
        return MISSING
    x = float(v)
    if abs(x) >= 1000:
        return f"${x:,.0f}"
    return f"${_sig(x, 3)}"


def fmt_ratio(v: Any, digits: int = 2) -> str:
    """A ratio (busiest over mean, x reference): ``1.23×``."""
    if _missing(v):
        return MISSING
    return f"{float(v):.{digits}f}×"


def fmt_by_key(key: str, v: Any) -> str:
    """A summary figure formatted by its key's unit suffix (``_s`` seconds, ``_bytes`` bytes, ``_gib`` GiB,
    ``_tok_s`` tokens/s, ``_usd``/``usd_`` dollars, ``mfu``/``mbu``/``attainment``/``_frac`` fractions)."""
    k = key.lower()
    if isinstance(v, str):
        return v
    if _missing(v):
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if k.endswith(("tok_s", "tokens_per_s")):
        return fmt_rate(v, "tok/s")
    if k.endswith(("req_s", "rps")):
        return fmt_rate(v, "req/s")
    if k.endswith("_s") or k.endswith("_seconds"):
        return fmt_seconds(v)
    if k.endswith("_bytes"):
        return fmt_bytes(v)
    if k.endswith("_gib"):
        return fmt_bytes(float(v) * 2**30)
    if "usd" in k or k.endswith("_cost"):
        return fmt_usd(v)
    if any(t in k for t in ("mfu", "mbu", "attainment", "_frac", "share", "utilisation", "utilization")):
        return fmt_pct(v)
    return fmt_number(v)
