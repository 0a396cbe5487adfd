"""``moesim calibrate --report``: the error table and measured-vs-predicted plots per op kind."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from moesim.model.errors import MoesimError
from moesim.profiling.calibrate import Calibration


def write_report(cal: Calibration, folder: str | Path) -> list[Path]:
    """Write ``errors.csv``, ``errors.md`` and one ``<kind>.png`` per op kind; returns the files."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MoesimError("--report needs matplotlib", "pip install 'moesim[report]'") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([f.summary() for f in cal.fits])
    files = [folder / "errors.csv", folder / "errors.md"]
    table.to_csv(files[0], index=False)
    files[1].write_text(
        table.to_markdown(index=False) + "\n" if _has_tabulate() else table.to_string(index=False) + "\n"
    )
    for kind in sorted({f.kind for f in cal.fits}):
        fits = [f for f in cal.fits if f.kind == kind and len(f.holdout)]
        if not fits:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 5))
        lo, hi = float("inf"), 0.0
        for f in fits:
            h = f.holdout
            ax.scatter(
                h["measured_s"], h["predicted_s"], s=8, alpha=0.6, label=f"{f.dtype}/{f.impl}: MAPE {f.mape:.1f}%"
            )
            lo = min(lo, h["measured_s"].min(), h["predicted_s"].min())
            hi = max(hi, h["measured_s"].max(), h["predicted_s"].max())
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="measured (s)", ylabel="predicted (s)")
        ax.set_title(f"{kind}: held-out shapes on {fits[0].device_key}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        path = folder / f"{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
