"""Post-processing of a what-if sweep's results table: Pareto fronts, the CAP table, the cheapest configuration
for a throughput target, heatmaps, a Pareto scatter, a MoE-CAP radar and the dashboard's data files.

The input is the sweep's results DataFrame, one row per sweep point. Columns this module reads (any may be
missing or all-NaN; what cannot be computed comes out as NaN or is skipped):

- identity and axes: ``point_id``, ``label`` (one readable label per configuration; the rows of a rate sweep
  share it), ``model``, ``gpu``, ``gpus``, ``layout``, ``tp``, ``ep``, ``dp_attn``, ``pp``, ``precision``,
  ``max_batch``, ``workload``, ``rate`` (req/s; NaN for a capacity-search point), ``routing_skew``,
  ``placement``, ``engine``, ``status`` (``ok``, ``overloaded`` or ``error``).
- metrics: ``ttft_p50_s``, ``ttft_p99_s``, ``tpot_p50_s``, ``tpot_p99_s`` (s), ``throughput_tok_s`` (output
  tokens/s), ``usd_per_mtok`` ($ per million output tokens), ``usd_per_hour`` ($/h for the whole
  configuration), ``s_mbu``, ``s_mfu`` (fractions 0..1), ``energy_j_per_token`` (J), ``slo_attainment``
  (0..1), ``accuracy`` (score 0..100), ``accuracy_benchmark``.
- capacity search: ``capacity_req_s`` (req/s), ``capacity_tok_s`` (the highest output tokens/s meeting the
  SLOs), ``capacity_usd_per_mtok`` ($ per million output tokens at that capacity), ``capacity_tpot_s``,
  ``capacity_ttft_s`` (s); NaN where the search found nothing.

A row *meets the SLOs* when it is a capacity row with a finite positive ``capacity_tok_s``, or an ``ok``
rate row whose ``slo_attainment`` is >= 0.99 (no attainment filter when that column is missing or all-NaN).

Every function is pure: DataFrames in, a DataFrame, an array, a dict or the paths written out. matplotlib
is imported only when a plot is drawn (`sim.plots` owns the Agg-only figure handling); every file is
written to a temporary name beside its target and moved into place with `os.replace`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from moesim.model.errors import MoesimError
from moesim.sim.plots import _figure_class, _fmt_s

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_DPI = 110
_SLO_OK = 0.99  # slo_attainment at or above which a rate point meets the SLOs
_CHUNK = 1024  # rows compared at once in `pareto_mask`
_HEATMAP_AXES = ("gpu", "precision", "layout", "gpus", "max_batch", "workload", "routing_skew", "placement")
_RADAR_MAX = 6
_FRONT_LABELS = 12  # at most this many Pareto points are labelled on pareto.png
_ANNOTATE_MAX_CELLS = 400  # heatmaps with more cells are drawn without numbers

#: Columns of `cap_table`, in order.
CAP_COLUMNS = (
    "label",
    "model",
    "gpu",
    "gpus",
    "layout",
    "precision",
    "workload",
    "cost_usd_per_mtok",
    "usd_per_hour",
    "s_per_token",
    "throughput_tok_s",
    "accuracy",
    "accuracy_benchmark",
    "s_mbu",
    "s_mfu",
    "energy_j_per_token",
    "pareto",
)
_IDENTITY = ("model", "gpu", "gpus", "layout", "precision", "workload", "accuracy_benchmark")

# Row tiers used to pick one row per configuration (lower is better).
_TIER_CAPACITY = 0  # capacity row with a finite positive capacity_tok_s
_TIER_SLO = 1  # ok rate row meeting the SLOs
_TIER_OK = 2  # ok rate row missing the SLOs
_TIER_NONE = 3  # anything else: failed, overloaded, capacity search found nothing


# --------------------------------------------------------------------------------------------------------------
# column helpers


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    """Column ``col`` as float64 [rows]; NaN where missing or not numeric."""
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _usable(df: pd.DataFrame, col: str) -> bool:
    """Whether ``col`` exists and holds at least one finite number."""
    return col in df.columns and bool(np.isfinite(_num(df, col)).any())


def _ok(df: pd.DataFrame) -> np.ndarray:
    """Bool [rows]: ``status`` is ``ok`` (every row when there is no ``status`` column)."""
    if "status" not in df.columns:
        return np.ones(len(df), dtype=bool)
    return (df["status"].astype("string").str.strip().str.lower() == "ok").fillna(False).to_numpy(dtype=bool)


def _labels(df: pd.DataFrame) -> pd.Series:
    """Configuration label per row (str): ``label``, else ``point_id``, else ``row <i>``."""
    out = pd.Series([f"row {i}" for i in range(len(df))], index=df.index, dtype=object)
    for col in ("point_id", "label"):  # label wins where both are set
        if col in df.columns:
            vals = df[col]
            out = out.where(vals.isna(), vals.astype(str))
    return out


def _tiers(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Tier (int [rows], see ``_TIER_*``) and ranking score (float [rows], output tok/s, higher is better)."""
    n = len(df)
    rate = _num(df, "rate")
    cap = _num(df, "capacity_tok_s")
    thr = _num(df, "throughput_tok_s")
    is_cap = np.isnan(rate) if "capacity_tok_s" in df.columns else np.zeros(n, dtype=bool)
    ok = _ok(df)
    meets = _num(df, "slo_attainment") >= _SLO_OK if _usable(df, "slo_attainment") else np.ones(n, dtype=bool)
    tier = np.full(n, _TIER_NONE, dtype=int)
    rate_ok = ~is_cap & ok
    tier[rate_ok] = _TIER_OK
    tier[rate_ok & meets] = _TIER_SLO
    cap_ok = is_cap & np.isfinite(cap) & (cap > 0)
    tier[cap_ok] = _TIER_CAPACITY
    score = np.where(tier == _TIER_CAPACITY, cap, np.where(tier < _TIER_NONE, thr, np.nan))
    return tier, np.where(np.isfinite(score), score, -np.inf)


def _select(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: ``df``'s chosen rows plus ``_label``, ``_tier``, ``_score`` columns.

    The chosen row is the best by tier (capacity row, then ok rows meeting the SLOs, then other ok rows,
    then anything) and within a tier the highest output tok/s; configurations keep their first-seen order.
    """
    tier, score = _tiers(df)
    work = df.reset_index(drop=True).assign(_label=_labels(df).to_numpy(), _tier=tier, _score=score)
    work["_order"] = np.arange(len(work))
    first_seen = work.groupby("_label", sort=False)["_order"].transform("min")
    work["_first"] = first_seen
    work = work.sort_values(["_first", "_tier", "_score", "_order"], ascending=[True, True, False, True])
    return work.drop_duplicates("_label", keep="first").drop(columns=["_order", "_first"]).reset_index(drop=True)


def _row_metrics(sel: pd.DataFrame) -> dict[str, np.ndarray]:
    """Cost ($/M output tokens), s per output token and output tok/s [configs] of `_select`'s rows by tier."""
    tier = sel["_tier"].to_numpy()
    capacity = tier == _TIER_CAPACITY
    rated = (tier == _TIER_SLO) | (tier == _TIER_OK)
    cap_tok = _num(sel, "capacity_tok_s")
    with np.errstate(divide="ignore", invalid="ignore"):
        derived_cost = _num(sel, "usd_per_hour") * 1e6 / (3600.0 * cap_tok)
    cap_cost = np.where(
        np.isfinite(_num(sel, "capacity_usd_per_mtok")), _num(sel, "capacity_usd_per_mtok"), derived_cost
    )
    cap_spt = np.where(np.isfinite(_num(sel, "capacity_tpot_s")), _num(sel, "capacity_tpot_s"), _num(sel, "tpot_p50_s"))
    nan = np.full(len(sel), np.nan)
    return {
        "cost_usd_per_mtok": np.where(capacity, cap_cost, np.where(rated, _num(sel, "usd_per_mtok"), nan)),
        "s_per_token": np.where(capacity, cap_spt, np.where(rated, _num(sel, "tpot_p50_s"), nan)),
        "throughput_tok_s": np.where(capacity, cap_tok, np.where(rated, _num(sel, "throughput_tok_s"), nan)),
    }


def _jsonable(v: Any) -> Any:
    """``v`` as a plain Python value: numpy scalars unwrapped, NaN, infinity and NA as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or (np.ndim(v) == 0 and not isinstance(v, str) and pd.isna(v)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def write_atomic(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it to ``path``.

    A file inside a sweep's own folder: `model.outputs.write_file` (fsync, the umask's permissions, an
    `OSError` as one `MoesimError` line) with no ownership check.
    """
    from moesim.model.outputs import write_file

    return write_file(path, write)


# --------------------------------------------------------------------------------------------------------------
# Pareto front, CAP table, cheapest configuration


def pareto_mask(df: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """Rows of ``df`` that no other row dominates over ``objectives``.

    Row ``j`` dominates row ``i`` when it is at least as good in every objective and strictly better in one;
    identical rows do not dominate each other, so ties are all kept. NaN (or a missing column) counts as the
    worst possible value of that objective, so a row with unknown accuracy can still be on the front by cost
    and speed. Rows whose ``status`` is not ``ok`` are never on the front and dominate nothing.

    Rows are deduplicated and sorted lexicographically, so a row is compared only with the front found
    among the rows before it and with its own chunk: O(rows x front) comparisons, vectorised in chunks.

    Args:
        df: the table, [rows].
        objectives: column -> ``"min"`` or ``"max"``. With no objectives every ok row is on the front.

    Returns:
        bool array [rows], True on the front.

    Raises:
        MoesimError: a direction other than ``min`` or ``max``.
    """
    for col, direction in objectives.items():
        if direction not in ("min", "max"):
            raise MoesimError(f"objective '{col}' has direction '{direction}'", "use 'min' or 'max'")
    n = len(df)
    mask = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(_ok(df))
    if rows.size == 0:
        return mask
    if not objectives:
        mask[rows] = True
        return mask
    cols = []
    for col, direction in objectives.items():
        v = _num(df, col)[rows]
        v = -v if direction == "max" else v
        cols.append(np.where(np.isnan(v), np.inf, v))  # NaN is the worst value (all objectives minimised here)
    values = np.column_stack(cols)  # [ok rows, objectives], smaller is better
    uniq, inverse = np.unique(values, axis=0, return_inverse=True)  # sorted lexicographically, no duplicates
    inverse = inverse.ravel()
    # A unique row can only be dominated by a lexicographically smaller one, and (by transitivity) then by one
    # on the front; so each chunk is checked against the front so far and against itself.
    if uniq.shape[1] == 2:  # every earlier row has a <= first objective: dominated iff one has a <= second
        before = np.concatenate([[np.inf], np.minimum.accumulate(uniq[:-1, 1])])
        on_front = uniq[:, 1] < before
        on_front[0] = True  # the lexicographically first row is never dominated, even when it is (inf, inf)
        mask[rows] = on_front[inverse]
        return mask
    on_front = np.zeros(len(uniq), dtype=bool)
    front = np.empty((0, values.shape[1]))
    for start in range(0, len(uniq), _CHUNK):
        chunk = uniq[start : start + _CHUNK]
        dominated = _dominated_by(chunk, front) | _dominated_by(chunk, chunk)
        on_front[start : start + len(chunk)] = ~dominated
        front = np.concatenate([front, chunk[~dominated]])
    mask[rows] = on_front[inverse]
    return mask


def _dominated_by(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Bool [points]: some row of ``others`` [m, k] dominates the row of ``points`` [c, k] (minimisation)."""
    if others.shape[0] == 0:
        return np.zeros(points.shape[0], dtype=bool)
    all_le = np.ones((points.shape[0], others.shape[0]), dtype=bool)
    any_lt = np.zeros_like(all_le)
    for k in range(points.shape[1]):
        p, o = points[:, k, None], others[None, :, k]
        all_le &= o <= p
        any_lt |= o < p
    return (all_le & any_lt).any(axis=1)


def cap_objectives(df: pd.DataFrame) -> dict[str, str]:
    """The CAP objectives (column -> ``"min"``/``"max"``) for a sweep table or a `cap_table`.

    - cost, min: ``cost_usd_per_mtok`` when present (a `cap_table`), else ``capacity_usd_per_mtok`` when it
      has a finite value, else ``usd_per_mtok`` ($ per million output tokens);
    - performance, min: ``s_per_token`` (a `cap_table`), else ``capacity_tpot_s`` when it has a finite value,
      else ``tpot_p50_s`` (s per output token);
    - accuracy, max: ``accuracy`` (score 0..100), only when it has at least two distinct finite values.

    Args:
        df: a sweep results table or a `cap_table`.

    Returns:
        The objectives, at most three; an objective none of whose columns is in ``df`` is left out.
    """
    out: dict[str, str] = {}
    for names in (
        ("cost_usd_per_mtok", "capacity_usd_per_mtok", "usd_per_mtok"),
        ("s_per_token", "capacity_tpot_s", "tpot_p50_s"),
    ):
        *preferred, fallback = names
        chosen = next((c for c in preferred if _usable(df, c)), fallback if fallback in df.columns else None)
        chosen = chosen or next((c for c in preferred if c in df.columns), None)  # all-NaN: still an objective
        if chosen is not None:
            out[chosen] = "min"
    acc = _num(df, "accuracy")
    if np.unique(acc[np.isfinite(acc)]).size >= 2:
        out["accuracy"] = "max"
    return out


def cap_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (rows sharing ``label``) with its cost, speed and accuracy, cheapest first.

    The row kept per configuration: its capacity row when the capacity search found a positive capacity;
    else, of a rate sweep, the ok row with the highest ``throughput_tok_s`` among those meeting the SLOs
    (``slo_attainment`` >= 0.99), or failing that the best ok row; a configuration with no such row keeps
    its identity with NaN metrics and is never on the front.

    Columns:

    - ``label``, ``model``, ``gpu``, ``gpus`` (GPUs in all), ``layout``, ``precision``, ``workload``: identity.
    - ``cost_usd_per_mtok``: $ per million output tokens (``capacity_usd_per_mtok`` at capacity, or
      ``usd_per_hour`` over the capacity when that is missing; ``usd_per_mtok`` for a rate row).
    - ``usd_per_hour``: $/h for the whole configuration.
    - ``s_per_token``: s per output token (``capacity_tpot_s``, else ``tpot_p50_s``).
    - ``throughput_tok_s``: output tokens/s (``capacity_tok_s`` for a capacity row).
    - ``accuracy``: score 0..100 (NaN when unknown); ``accuracy_benchmark``: its benchmark.
    - ``s_mbu``, ``s_mfu``: sparsity-aware bandwidth and compute utilisation, fractions 0..1.
    - ``energy_j_per_token``: J per output token.
    - ``pareto``: bool, on the front of `pareto_mask` over `cap_objectives` of this table.

    Args:
        df: the sweep results table, [points].

    Returns:
        DataFrame [configurations] with `CAP_COLUMNS`, sorted by ``cost_usd_per_mtok`` ascending (NaN last).
    """
    sel = _select(df)
    out = pd.DataFrame({"label": sel["_label"].astype(str)})
    for col in _IDENTITY[:6]:
        out[col] = sel[col].to_numpy() if col in sel.columns else np.nan
    metrics = _row_metrics(sel)
    usable = sel["_tier"].to_numpy() < _TIER_NONE
    out["cost_usd_per_mtok"] = metrics["cost_usd_per_mtok"]
    out["usd_per_hour"] = _num(sel, "usd_per_hour")
    out["s_per_token"] = metrics["s_per_token"]
    out["throughput_tok_s"] = metrics["throughput_tok_s"]
    out["accuracy"] = _num(sel, "accuracy")
    out["accuracy_benchmark"] = sel["accuracy_benchmark"].to_numpy() if "accuracy_benchmark" in sel else np.nan
    for col in ("s_mbu", "s_mfu", "energy_j_per_token"):
        out[col] = np.where(usable, _num(sel, col), np.nan)
    status = np.where(usable, "ok", "none")
    out["pareto"] = pareto_mask(out.assign(status=status), cap_objectives(out))
    out = out.sort_values(["cost_usd_per_mtok", "s_per_token"], kind="stable", na_position="last")
    return out.reset_index(drop=True)[list(CAP_COLUMNS)]


def cheapest_meeting(df: pd.DataFrame, target_tok_s: float) -> dict[str, Any] | None:
    """The cheapest configuration delivering ``target_tok_s`` output tokens/s under the SLOs.

    A configuration's capacity (output tok/s) is its ``capacity_tok_s``, or, of a rate sweep, the highest
    ``throughput_tok_s`` of its ok rows with ``slo_attainment`` >= 0.99. Of the configurations whose capacity
    reaches the target, the one with the lowest ``usd_per_hour`` wins (ties: higher capacity). When none does,
    replicas are added: the winner minimises ``ceil(target / capacity) * usd_per_hour`` (ties: fewer replicas).
    Configurations without a finite ``usd_per_hour`` are not candidates.

    Args:
        df: the sweep results table, [points].
        target_tok_s: output tokens/s to deliver, > 0.

    Returns:
        The chosen row's values (plain Python; NaN as None) plus ``label``, ``config_capacity_tok_s``
        (tok/s of one replica), ``replicas_needed``, ``total_usd_per_hour`` ($/h for all replicas) and
        ``meets_as_is`` (True when one replica suffices); None when no configuration has a positive capacity.

    Raises:
        MoesimError: ``target_tok_s`` is not a positive finite number.
    """
    if not (math.isfinite(target_tok_s) and target_tok_s > 0):
        raise MoesimError(f"throughput target {target_tok_s} tok/s", "give a positive output tokens/s target")
    sel = _select(df)
    capacity = sel["_score"].to_numpy()
    price = _num(sel, "usd_per_hour")
    cand = np.flatnonzero((sel["_tier"].to_numpy() <= _TIER_SLO) & (capacity > 0) & np.isfinite(price))
    if cand.size == 0:
        return None
    # ceil with a relative tolerance so that a capacity equal to the target up to rounding needs one replica
    replicas = np.ceil(target_tok_s / capacity[cand] * (1.0 - 1e-12)).astype(int)
    as_is = replicas <= 1
    if as_is.any():
        pick = cand[as_is]
        best = pick[np.lexsort((-capacity[pick], price[pick]))[0]]
        n_rep = 1
    else:
        total = replicas * price[cand]
        order = np.lexsort((-capacity[cand], replicas, total))[0]
        best, n_rep = cand[order], int(replicas[order])
    row = sel.iloc[best]
    out = {str(k): _jsonable(v) for k, v in row.items() if not str(k).startswith("_")}
    out.update(
        label=str(row["_label"]),
        config_capacity_tok_s=float(capacity[best]),
        replicas_needed=n_rep,
        total_usd_per_hour=float(n_rep * price[best]),
        meets_as_is=n_rep == 1,
    )
    return out


# --------------------------------------------------------------------------------------------------------------
# plots


def _esc(text: object) -> str:
    """``text`` as a string matplotlib draws literally (dollar signs escaped, so no mathtext)."""
    return str(text).replace("$", r"\$")


def _natural_key(text: str) -> tuple[tuple[int, float, str], ...]:
    """Sort key that orders the numbers inside ``text`` numerically ('TP2' before 'TP10')."""
    return tuple((0, float(t), "") if t.isdigit() else (1, 0.0, t.lower()) for t in re.split(r"(\d+)", text) if t)


def _fmt_val(v: object) -> str:
    """An axis value as a short tick label."""
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else f"{float(v):.4g}"
    return str(v)


def _fmt_cell(v: float) -> str:
    """A heatmap value: whole numbers with thousands separators from 1000 up, else 3 significant digits."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _categories(values: pd.Series) -> tuple[list[Any], np.ndarray]:
    """Sorted distinct non-null values of ``values`` and each row's index into them (-1 for null)."""
    present = values.dropna()
    distinct = list(pd.unique(present))
    if pd.api.types.is_numeric_dtype(present):
        distinct.sort()
    else:
        distinct.sort(key=lambda v: _natural_key(str(v)))
    lookup = {v: i for i, v in enumerate(distinct)}
    codes = np.array([-1 if pd.isna(v) else lookup[v] for v in values], dtype=int)
    return distinct, codes


def _heatmap_axes(df: pd.DataFrame) -> list[str]:
    """Up to two of `_HEATMAP_AXES` with the most distinct values (> 1 each), the one with more first."""
    counts = [(c, int(df[c].nunique(dropna=True))) for c in _HEATMAP_AXES if c in df.columns]
    varying = [(c, k) for c, k in counts if k > 1]
    varying.sort(key=lambda ck: -ck[1])  # stable: ties keep _HEATMAP_AXES order
    return [c for c, _ in varying[:2]]


def _heatmap_metrics(df: pd.DataFrame) -> list[tuple[str, str, str, int]]:
    """(column, title, unit, tier of the rows it is read from) of the throughput and cost heatmaps."""
    if _usable(df, "capacity_tok_s"):
        out = [("capacity_tok_s", "Capacity: highest output tok/s meeting the SLOs", "output tokens/s", _TIER_CAPACITY)]
        if _usable(df, "capacity_usd_per_mtok"):
            out.append(
                ("capacity_usd_per_mtok", "Cost at capacity", "$ per M output tokens", _TIER_CAPACITY),
            )
        return out
    out = [("throughput_tok_s", "Best output tok/s among points meeting the SLOs", "output tokens/s", _TIER_SLO)]
    if "usd_per_mtok" in df.columns:
        out.append(("usd_per_mtok", "Lowest cost among points meeting the SLOs", "$ per M output tokens", _TIER_SLO))
    return out


def _draw_heatmap(
    fig: Figure, grid: np.ndarray, x: tuple[str, list[Any]], y: tuple[str, list[Any]] | None, best: str, unit: str
) -> None:
    """Draw ``grid`` [rows, cols] (NaN: no qualifying point) with tick labels, numbers and a colorbar."""
    import matplotlib

    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["viridis" if best == "max" else "viridis_r"].with_extremes(bad="#e0e0e0")
    masked = np.ma.masked_invalid(grid)
    im = ax.imshow(masked, aspect="auto", cmap=cmap, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=_esc(f"{unit} ({'higher' if best == 'max' else 'lower'} is better)"))
    ax.set_xticks(range(len(x[1])))
    tilt = len(x[1]) > 4
    ax.set_xticklabels([_esc(_fmt_val(v)) for v in x[1]], rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_xlabel(x[0])
    if y is None:
        ax.set_yticks([])
    else:
        ax.set_yticks(range(len(y[1])))
        ax.set_yticklabels([_esc(_fmt_val(v)) for v in y[1]])
        ax.set_ylabel(y[0])
    if grid.size <= _ANNOTATE_MAX_CELLS:
        size = 9 if grid.size <= 64 else 7
        for (r, c), v in np.ndenumerate(grid):
            if np.isfinite(v):
                light = float(im.norm(v)) > 0.5 if best == "max" else float(im.norm(v)) < 0.5
                colour = "black" if light else "white"
                ax.text(c, r, _fmt_cell(v), ha="center", va="center", fontsize=size, color=colour)
            else:
                ax.text(c, r, "–", ha="center", va="center", fontsize=size, color="#777777")


def _write_heatmaps(df: pd.DataFrame, out: Path, axes: Sequence[str]) -> list[Path]:
    """``heatmap_<metric>.png`` over ``axes`` (1 or 2 column names) for the throughput and cost metrics."""
    figure = _figure_class()
    tier, _ = _tiers(df)
    xcats, xcode = _categories(df[axes[0]])
    ycats, ycode = _categories(df[axes[1]]) if len(axes) > 1 else ([None], np.zeros(len(df), dtype=int))
    written = []
    for col, title, unit, want in _heatmap_metrics(df):
        best = "max" if col.endswith("tok_s") else "min"
        v = _num(df, col)
        keep = (tier == want) & np.isfinite(v) & (xcode >= 0) & (ycode >= 0)
        if not keep.any():
            continue
        cells = pd.DataFrame({"y": ycode[keep], "x": xcode[keep], "v": v[keep]}).groupby(["y", "x"])["v"]
        agg = cells.max() if best == "max" else cells.min()
        grid = np.full((len(ycats), len(xcats)), np.nan)
        grid[agg.index.get_level_values(0), agg.index.get_level_values(1)] = agg.to_numpy()
        width = min(20.0, max(6.5, 2.5 + 1.0 * len(xcats)))
        height = min(16.0, max(2.8, 1.8 + 0.6 * len(ycats)))
        fig = figure(figsize=(width, height), layout="constrained")
        _draw_heatmap(fig, grid, (axes[0], xcats), (axes[1], ycats) if len(axes) > 1 else None, best, unit)
        over = f"best over the other axes ({'max' if best == 'max' else 'min'})"
        fig.suptitle(_esc(f"{title}\n{over}"), fontsize=11)
        written.append(_save_atomic(fig, out / f"heatmap_{col}.png"))
    return written


def _save_atomic(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as PNG at the module's dpi through a temp file and `os.replace`, and release its memory."""
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=_DPI, format="png"))
    finally:
        fig.clear()


def _no_data(ax: Axes, text: str = "no data") -> None:
    """Write ``text`` in the middle of ``ax``."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _write_pareto(table: pd.DataFrame, path: Path) -> Path:
    """``pareto.png``: cost vs s per output token of every configuration of ``table`` (a `cap_table`)."""
    figure = _figure_class()
    fig = figure(figsize=(10.0, 7.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    cost, spt = _num(table, "cost_usd_per_mtok"), _num(table, "s_per_token")
    shown = np.isfinite(cost) & (cost > 0) & np.isfinite(spt) & (spt > 0)
    t = table[shown].reset_index(drop=True)
    ax.set_xlabel(_esc("cost ($ per million output tokens, log scale)"))
    ax.set_ylabel("seconds per output token (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    if t.empty:
        _no_data(ax)
        fig.suptitle("Cost vs speed per configuration")
        return _save_atomic(fig, path)
    x, y = t["cost_usd_per_mtok"].to_numpy(float), t["s_per_token"].to_numpy(float)
    acc = _num(t, "accuracy")
    if np.isfinite(acc).any():
        known = np.isfinite(acc)
        sc = ax.scatter(x[known], y[known], c=acc[known], cmap="plasma", s=40, zorder=2)
        fig.colorbar(sc, ax=ax, label="accuracy (score 0-100)")
        if (~known).any():
            ax.scatter(x[~known], y[~known], facecolors="none", edgecolors="grey", s=40, label="accuracy unknown")
    else:
        gpus = t["gpu"].astype(str) if "gpu" in t.columns else pd.Series(["?"] * len(t))
        for i, g in enumerate(sorted(gpus.unique(), key=_natural_key)):
            sel = (gpus == g).to_numpy()
            ax.scatter(x[sel], y[sel], color=f"C{i % 10}", s=40, label=_esc(g), zorder=2)
    front = np.flatnonzero(t["pareto"].to_numpy(dtype=bool))
    if front.size:
        front = front[np.argsort(x[front], kind="stable")]
        ax.plot(x[front], y[front], color="black", linestyle="--", linewidth=1, zorder=1)
        ax.scatter(x[front], y[front], facecolors="none", edgecolors="black", s=130, linewidths=1.5, zorder=3,
                   label=f"Pareto front ({front.size})")  # fmt: skip
        labelled = front[np.unique(np.linspace(0, front.size - 1, min(front.size, _FRONT_LABELS)).round().astype(int))]
        for i in labelled:
            ax.annotate(_esc(t["label"].iloc[i]), (x[i], y[i]), xytext=(6, 6), textcoords="offset points", fontsize=7)
    from matplotlib.ticker import LogFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers ("0.6", "20"): clearer and faster than mathtext 6×10⁻¹
        axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.legend(loc="best", fontsize=8)
    objectives = ", ".join(f"{c} ({d})" for c, d in cap_objectives(table).items())
    fig.suptitle(_esc(f"Cost vs speed per configuration; Pareto front over {objectives}"), fontsize=11)
    return _save_atomic(fig, path)


#: The MoE-CAP radar's axes, in `radar_values` column order.
RADAR_AXES = ("Cost (cheapest / cost)", "Performance (fastest s/token / s/token)", "Accuracy (score / 100)",
              "S-MBU", "S-MFU")  # fmt: skip


def radar_values(table: pd.DataFrame) -> np.ndarray:
    """[configs, 5] radar coordinates 0..1 (outer is better) of a `cap_table`: `RADAR_AXES`.

    Cost and performance are relative to the best configuration in ``table`` (1: the cheapest, the fastest);
    accuracy is the score over 100; S-MBU and S-MFU are fractions. Missing values are 0.
    """
    cost, spt = _num(table, "cost_usd_per_mtok"), _num(table, "s_per_token")
    with np.errstate(divide="ignore", invalid="ignore"):
        good_cost = cost[np.isfinite(cost) & (cost > 0)]
        good_spt = spt[np.isfinite(spt) & (spt > 0)]
        c = good_cost.min() / cost if good_cost.size else np.full(len(table), np.nan)
        p = good_spt.min() / spt if good_spt.size else np.full(len(table), np.nan)
    vals = np.column_stack([c, p, _num(table, "accuracy") / 100.0, _num(table, "s_mbu"), _num(table, "s_mfu")])
    vals = np.where(np.isfinite(vals), vals, 0.0)
    return np.clip(vals, 0.0, 1.0)


def _radar_rows(table: pd.DataFrame, labels: Sequence[str] | None) -> np.ndarray:
    """Positions in ``table`` (a `cap_table`) of the radar's configurations, int [<= 6].

    ``labels`` in their order, or by default the Pareto front, cheapest first.

    Raises:
        MoesimError: an unknown label, or more than six.
    """
    if labels is None:
        return np.flatnonzero(table["pareto"].to_numpy(dtype=bool))[:_RADAR_MAX]  # the table is cheapest first
    index = {str(lab): i for i, lab in enumerate(table["label"])}
    unknown = [str(lab) for lab in labels if str(lab) not in index]
    if unknown:
        raise MoesimError(f"unknown configuration label(s) {unknown}", "pick labels from cap_table(df)['label']")
    if len(labels) > _RADAR_MAX:
        raise MoesimError(f"{len(labels)} radar configurations", f"pick at most {_RADAR_MAX}")
    return np.array([index[str(lab)] for lab in labels], dtype=int)


def _write_radar(table: pd.DataFrame, path: Path, chosen: np.ndarray) -> Path:
    """``cap_radar.png``: the MoE-CAP radar of the configurations at positions ``chosen`` [<= 6] of ``table``."""
    figure = _figure_class()
    names = ["Cost\n(cheapest / cost)", "Performance\n(fastest s/token / s/token)", "Accuracy\n(score / 100)",
             "S-MBU", "S-MFU"]  # fmt: skip
    raw = [_num(table, c)[chosen] for c in ("cost_usd_per_mtok", "s_per_token", "accuracy", "s_mbu", "s_mfu")]
    names = [n if np.isfinite(r).any() else f"{n} (n/a)" for n, r in zip(names, raw, strict=True)]
    fig = figure(figsize=(9.0, 9.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1, projection="polar")
    angles = np.linspace(0.0, 2.0 * np.pi, len(names), endpoint=False)
    ax.set_xticks(angles)
    ax.set_theta_offset(np.pi / 2.0)  # Cost at the top, the other axes clockwise
    ax.set_theta_direction(-1)
    ax.set_xticklabels(names, fontsize=9)
    ax.tick_params(axis="x", pad=10)
    for text, angle in zip(ax.get_xticklabels(), angles, strict=True):  # keep the axis names off the circle
        side = np.sin(angle)  # > 0: right half (clockwise from the top)
        text.set_horizontalalignment("left" if side > 0.1 else "right" if side < -0.1 else "center")
    ax.set_ylim(0.0, 1.0)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0.25", "0.5", "0.75", "1"], fontsize=7)
    if chosen.size == 0:
        _no_data(ax, "no configuration to show")
    else:
        vals = radar_values(table)[chosen]
        closed = np.append(angles, angles[0])
        for i, (row, v) in enumerate(zip(chosen, vals, strict=True)):
            cost, spt = float(table["cost_usd_per_mtok"].iloc[row]), float(table["s_per_token"].iloc[row])
            text = f"{table['label'].iloc[row]}: {cost:.3g} $/Mtok, {_fmt_s(spt)}/token"
            ax.plot(closed, np.append(v, v[0]), color=f"C{i}", linewidth=1.6, label=_esc(text))
            ax.fill(closed, np.append(v, v[0]), color=f"C{i}", alpha=0.12)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), fontsize=8)
    fig.suptitle("MoE-CAP radar (every axis 0..1, outer is better)", fontsize=11)
    return _save_atomic(fig, path)


def write_plots(
    df: pd.DataFrame,
    out_dir: str | Path,
    heatmap_axes: tuple[str, str] | None = None,
    *,
    radar_labels: Sequence[str] | None = None,
) -> list[Path]:
    """Write the sweep's PNGs into ``out_dir`` (created if missing).

    - ``heatmap_<metric>.png`` for the throughput metric (``capacity_tok_s``, else ``throughput_tok_s`` of the
      points meeting the SLOs; output tok/s, best = max) and the cost metric (``capacity_usd_per_mtok``, else
      ``usd_per_mtok``; $ per M output tokens, best = min): a grid over two axes, each cell the best value over
      the other axes, annotated, with a colorbar. Default axes: the two of gpu, precision, layout, gpus,
      max_batch, workload, routing_skew, placement with the most distinct values (> 1); one row when only one
      varies; no heatmap when none varies (or the metric has no qualifying value).
    - ``pareto.png``: cost ($/M output tokens, log x) vs s per output token (log y) per configuration of
      `cap_table`, coloured by accuracy when known else by GPU; the Pareto front ringed, joined and labelled
      (at most 12 labels).
    - ``cap_radar.png``: the MoE-CAP radar (cost, performance, accuracy, S-MBU, S-MFU; each 0..1, outer is
      better) of up to six configurations: ``radar_labels``, else the front of `cap_table`, cheapest first.

    Args:
        df: the sweep results table, [points].
        out_dir: the directory to write into.
        heatmap_axes: (x axis, y axis) column names for the heatmaps, drawn as given; None chooses them.
        radar_labels: configuration labels for the radar (at most six); None: the Pareto front.

    Returns:
        The paths written: heatmaps, then ``pareto.png``, then ``cap_radar.png``.

    Raises:
        MoesimError: matplotlib is not installed; a heatmap axis or radar label is unknown.
    """
    _figure_class()  # fail before creating anything when matplotlib is missing
    if heatmap_axes is not None:
        missing = [a for a in heatmap_axes if a not in df.columns]
        if missing or len(set(heatmap_axes)) != len(heatmap_axes):
            raise MoesimError(f"heatmap axes {list(heatmap_axes)}", "name two different columns of the sweep table")
    table = cap_table(df)
    radar = _radar_rows(table, radar_labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    axes = list(heatmap_axes) if heatmap_axes is not None else _heatmap_axes(df)
    written = _write_heatmaps(df, out, axes) if axes and len(df) else []
    written.append(_write_pareto(table, out / "pareto.png"))
    written.append(_write_radar(table, out / "cap_radar.png", radar))
    return written


# --------------------------------------------------------------------------------------------------------------
# dashboard data


def write_dashboard_data(df: pd.DataFrame, out_dir: str | Path, target_tok_s: float | None = None) -> dict[str, Any]:
    """Write ``cap_table.csv`` (`cap_table`) and ``pareto.parquet`` (``df``'s rows on the front of
    `pareto_mask` over `cap_objectives`) into ``out_dir`` (created if missing), each atomically.

    Args:
        df: the sweep results table, [points].
        out_dir: the directory to write into.
        target_tok_s: output tokens/s for `cheapest_meeting`; None skips it.

    Returns:
        A JSON-ready dict: ``points`` (rows of ``df``), ``configurations`` (rows of the CAP table),
        ``pareto_points`` (rows in ``pareto.parquet``), ``objectives`` (column -> min/max), ``cheapest``
        (`cheapest_meeting`'s dict, or None) and ``cap_table_top`` (up to 10 Pareto rows of the CAP table,
        cheapest first: label, cost_usd_per_mtok, s_per_token, throughput_tok_s, accuracy).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = cap_table(df)
    objectives = cap_objectives(df)
    front = df[pareto_mask(df, objectives)].reset_index(drop=True)
    write_atomic(out / "cap_table.csv", lambda tmp: table.to_csv(tmp, index=False))
    write_atomic(out / "pareto.parquet", lambda tmp: front.to_parquet(tmp, index=False))
    top = table[table["pareto"]].head(10)[["label", "cost_usd_per_mtok", "s_per_token", "throughput_tok_s", "accuracy"]]
    return {
        "points": len(df),
        "configurations": len(table),
        "pareto_points": len(front),
        "objectives": dict(objectives),
        "cheapest": cheapest_meeting(df, target_tok_s) if target_tok_s is not None else None,
        "cap_table_top": [{k: _jsonable(v) for k, v in r.items()} for r in top.to_dict("records")],
    }
