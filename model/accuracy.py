"""Accuracy, the A of CAP: published benchmark scores per model and precision.

The shipped table (``model/data/accuracy.csv``) holds only published figures,
each with its source URL. Users add rows from a CSV with the same columns:
``model,precision,benchmark,setting,score,source,note`` (score 0-100).
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import pandas as pd

from moesim.model.errors import MoesimError
from moesim.model.inputs import read_text

ACCURACY_CSV = Path(__file__).parent / "data" / "accuracy.csv"
COLUMNS = ("model", "precision", "benchmark", "setting", "score", "source", "note")
#: Precision names in published tables mapped to moesim's weight dtypes.
PRECISION_ALIASES = {"mxfp4": "fp4", "bfloat16": "bf16", "w4a16": "int4", "float16": "fp16"}


def _read(path: Path) -> pd.DataFrame:
    text = read_text(path, "an accuracy CSV", f"give the path of a CSV with the header {','.join(COLUMNS)}")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MoesimError(
            f"{path}: not a readable CSV ({' '.join(str(exc).split())})",
            f"write a CSV with the header {','.join(COLUMNS)}",
        ) from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise MoesimError(f"{path}: missing columns {', '.join(missing)}", f"use the header {','.join(COLUMNS)}")
    scores = pd.to_numeric(df["score"], errors="coerce")
    bad = df.index[scores.isna() | (scores < 0) | (scores > 100)]
    if len(bad):
        row = int(bad[0])
        raise MoesimError(
            f"{path}: line {row + 2}: score {df['score'][row]!r} is not a number in 0-100", "give scores as percentages"
        )
    df = df[list(COLUMNS)].copy()
    df["score"] = scores.astype(float)
    df["precision"] = df["precision"].str.lower().replace(PRECISION_ALIASES)
    df["model"] = df["model"].str.lower()
    return df


@lru_cache(maxsize=1)
def _shipped() -> pd.DataFrame:
    """The shipped table, read and validated once per process."""
    return _read(ACCURACY_CSV)


def load_accuracy(extra_csv: str | Path | None = None) -> pd.DataFrame:
    """The shipped table plus the rows of ``extra_csv`` (columns: see `COLUMNS`)."""
    df = _shipped().copy()
    if extra_csv:
        df = pd.concat([df, _read(Path(extra_csv))], ignore_index=True)
    return df


def accuracy_for(model: str, precision: str | None = None, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows for ``model`` (a preset name), optionally one precision only."""
    df = load_accuracy() if table is None else table
    rows = df[df["model"] == model.lower()]
    if precision is not None:
        rows = rows[rows["precision"] == PRECISION_ALIASES.get(precision, precision)]
    return rows.reset_index(drop=True)
