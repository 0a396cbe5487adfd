"""CAP table, Pareto front and cheapest configuration of a what-if sweep (pure pandas/numpy), plus the column
helpers and the atomic file writer the other sweep-report modules share.

Input: the sweep results DataFrame, one row per point (columns and units: see `sweep_report`). Outputs are
DataFrames, boolean masks [points] or dicts; costs in $ per million output tokens, latencies in s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.model.errors import MoesimError

_SLO_OK = 0.99  # slo_attainment at or above which a rate point meets the SLOs
_CHUNK = 1024  # rows compared at once in `pareto_mask`

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
    "throughput_basis",
    "rate_req_s",
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
    - ``throughput_basis``: what that throughput is: ``capacity`` (the highest rate meeting the SLOs, found by
      the sweep's capacity search) or ``offered load`` (the best offered rate of a rate sweep: what was asked
      of the configuration, not what it could serve); empty when there are no figures.
    - ``rate_req_s``: the request rate of that row, req/s (the capacity, or the offered rate).
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
    tier = sel["_tier"].to_numpy()
    out["throughput_basis"] = np.where(tier == _TIER_CAPACITY, "capacity", np.where(usable, "offered load", ""))
    out["rate_req_s"] = np.where(
        tier == _TIER_CAPACITY, _num(sel, "capacity_req_s"), np.where(usable, _num(sel, "rate"), np.nan)
    )
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
# throughput-interactivity frontier

#: Columns of `frontier_points`, in order (the configuration columns of `FRONTIER_CONFIG` follow them).
FRONTIER_COLUMNS = (
    "label",
    "point_id",
    "tok_s_per_user",
    "tok_s_per_gpu",
    "tpot_s",
    "throughput_tok_s",
    "gpus",
    "rate_req_s",
    "at_capacity",
    "meets_slos",
    "usd_per_mtok",
    "frontier",
)
#: Configuration columns carried by each frontier point (those present in the sweep table).
FRONTIER_CONFIG = ("model", "gpu", "gpus", "layout", "tp", "ep", "dp_attn", "pp", "precision", "max_batch",
                   "workload", "routing_skew", "placement", "engine")  # fmt: skip


def frontier_points(df: pd.DataFrame, *, slos: bool = True) -> pd.DataFrame:
    """Every operating point of a sweep on the throughput-interactivity plane, its frontier flagged.

    The plane serving planners read: output tokens/s per GPU (y, what the hardware yields) against output
    tokens/s per user (x, = 1 / time per output token, what each user sees), one point per (configuration,
    operating point); the frontier is the points no other point beats on both. This is the view of NVIDIA
    AIConfigurator (``tokens/s/gpu`` against ``tokens/s/user``, front by ``get_pareto_front`` and the best
    configuration at a TPOT by ``get_best_configs_under_tpot_constraint``, ai-dynamo/aiconfigurator@
    src/aiconfigurator/sdk/pareto_analysis.py) and of SemiAnalysis InferenceMAX ("Token Throughput per GPU"
    against "Interactivity (tok/s/user)", https://newsletter.semianalysis.com/p/inferencemax-open-source-inference).
    Both count output (generated) tokens per GPU; so does this. Like theirs, a frontier holds one workload:
    points serving different requests (a chat and a long-prompt workload) do not compare, so with a
    ``workload`` column the frontier is found within each workload.

    A point is a row of ``df`` whose ``status`` is ``ok``: a rate row at its offered rate (``throughput_tok_s``,
    ``tpot_p50_s``), or a capacity row at its capacity (``capacity_tok_s``; ``tpot_p50_s`` at that rate, else
    ``capacity_tpot_s``). Per GPU divides by ``gpus`` (the configuration's GPUs in all); per user is
    1 / TPOT p50 (the median request's decode speed; AIConfigurator's ``tokens/s/user`` is 1000 / TPOT ms).

    Args:
        df: the sweep results table, [points].
        slos: keep only points meeting the SLOs (capacity rows, rate rows with ``slo_attainment`` >= 0.99;
            every ok row when there is no attainment); False keeps every ok point.

    Returns:
        DataFrame [points with finite positive figures], `FRONTIER_COLUMNS` then the `FRONTIER_CONFIG`
        columns present, sorted by ``tok_s_per_user`` ascending: ``tok_s_per_user`` (output tok/s per user),
        ``tok_s_per_gpu`` (output tok/s per GPU), ``tpot_s`` (s), ``throughput_tok_s`` (output tok/s of the
        configuration), ``rate_req_s`` (offered req/s; the capacity for a capacity row), ``at_capacity``,
        ``meets_slos`` (bool), ``usd_per_mtok`` ($ per M output tokens), ``frontier`` (bool, on its
        workload's front).
    """
    tier, _ = _tiers(df)
    at_cap = tier == _TIER_CAPACITY
    thr = np.where(at_cap, _num(df, "capacity_tok_s"), _num(df, "throughput_tok_s"))
    tpot = _num(df, "tpot_p50_s")
    tpot = np.where(at_cap & ~np.isfinite(tpot), _num(df, "capacity_tpot_s"), tpot)
    gpus = _num(df, "gpus")
    rate = np.where(at_cap, _num(df, "capacity_req_s"), _num(df, "rate"))
    cost = np.where(at_cap & np.isfinite(_num(df, "capacity_usd_per_mtok")), _num(df, "capacity_usd_per_mtok"),
                    _num(df, "usd_per_mtok"))  # fmt: skip
    meets = tier <= _TIER_SLO
    keep = (meets if slos else tier <= _TIER_OK) & (thr > 0) & (tpot > 0) & (gpus > 0)
    keep &= np.isfinite(thr) & np.isfinite(tpot) & np.isfinite(gpus)
    out = pd.DataFrame(
        {
            "label": _labels(df).to_numpy()[keep],
            "point_id": df["point_id"].astype(str).to_numpy()[keep] if "point_id" in df else np.arange(len(df))[keep],
            "tok_s_per_user": 1.0 / tpot[keep],
            "tok_s_per_gpu": thr[keep] / gpus[keep],
            "tpot_s": tpot[keep],
            "throughput_tok_s": thr[keep],
            "gpus": gpus[keep],
            "rate_req_s": rate[keep],
            "at_capacity": at_cap[keep],
            "meets_slos": meets[keep],
            "usd_per_mtok": cost[keep],
        }
    )
    for col in FRONTIER_CONFIG:
        if col in df.columns and col != "gpus":
            out[col] = df[col].to_numpy()[keep]
    out["frontier"] = False
    for _, idx in _workload_groups(out).items():
        sub = out.loc[idx]
        out.loc[idx, "frontier"] = front_2d(sub["tok_s_per_user"].to_numpy(), sub["tok_s_per_gpu"].to_numpy(),
                                            "max", "max")  # fmt: skip
    out = out[[*FRONTIER_COLUMNS, *(c for c in out.columns if c not in FRONTIER_COLUMNS)]]
    return out.sort_values(["tok_s_per_user", "tok_s_per_gpu"], ascending=[True, False], kind="stable").reset_index(
        drop=True
    )


def _workload_groups(points: pd.DataFrame) -> dict[str, pd.Index]:
    """Row index per workload (one group ``""`` when there is no ``workload`` column)."""
    if "workload" not in points.columns:
        return {"": points.index}
    return {str(k): v for k, v in points.groupby(points["workload"].astype(str), sort=True).groups.items()}


def front_2d(x: np.ndarray, y: np.ndarray, x_best: str, y_best: str) -> np.ndarray:
    """Bool [points]: the points no other point dominates on the two axes ``x``, ``y`` [points] alone.

    ``x_best``/``y_best`` are ``"min"`` or ``"max"``; NaN is the worst value (`pareto_mask`'s rules, so ties are
    all kept). This is the front a two-axis plot must draw: a three-axis front drawn on two axes puts points
    on the line that the plot's own axes show dominated.
    """
    t = pd.DataFrame({"x": np.asarray(x, dtype=float), "y": np.asarray(y, dtype=float)})
    return pareto_mask(t, {"x": x_best, "y": y_best})


def frontier_records(points: pd.DataFrame) -> list[dict[str, Any]]:
    """The frontier rows of `frontier_points` as JSON-ready dicts, fastest per user first, each with its
    figures and a ``config`` dict (the `FRONTIER_CONFIG` values of the point)."""
    front = points[points["frontier"]].sort_values("tok_s_per_user", ascending=False)
    return [_frontier_record(r) for r in front.to_dict("records")]


def _frontier_record(r: dict[str, Any]) -> dict[str, Any]:
    if isinstance(r.get("gpus"), float) and float(r["gpus"]).is_integer():
        r = {**r, "gpus": int(r["gpus"])}
    rec = {k: _jsonable(r.get(k)) for k in FRONTIER_COLUMNS if k != "frontier"}
    rec["config"] = {k: _jsonable(r[k]) for k in FRONTIER_CONFIG if k in r and _jsonable(r[k]) is not None}
    return rec


def best_at_speed(
    df: pd.DataFrame, tok_s_per_user: float, *, workload: str | None = None, slos: bool = True
) -> dict[str, Any] | None:
    """The configuration yielding the most output tokens/s per GPU while each user gets at least
    ``tok_s_per_user`` output tokens/s (AIConfigurator's ``get_best_configs_under_tpot_constraint``:
    TPOT <= 1 / ``tok_s_per_user``, the most ``tokens/s/gpu``).

    Ties on tokens/s per GPU go to the faster point per user (so the answer is on the frontier), then to the
    lower $ per M output tokens.

    Args:
        df: the sweep results table, [points].
        tok_s_per_user: output tokens/s each user must see, > 0.
        workload: only the points of this workload (None: every point; give one when the sweep has several,
            see `best_at_speed_per_workload`).
        slos: as in `frontier_points`.

    Returns:
        The chosen point as `frontier_records` writes one (with ``frontier`` True: the answer is always on
        the frontier), plus ``asked_tok_s_per_user``; None when no point is that fast.

    Raises:
        MoesimError: ``tok_s_per_user`` is not a positive finite number.
    """
    if not (math.isfinite(tok_s_per_user) and tok_s_per_user > 0):
        raise MoesimError(f"per-user speed {tok_s_per_user} tok/s", "give a positive output tokens/s per user")
    pts = frontier_points(df, slos=slos)
    if workload is not None:
        pts = pts[pts["workload"].astype(str) == workload] if "workload" in pts.columns else pts.iloc[:0]
    fast = pts[pts["tok_s_per_user"] >= tok_s_per_user * (1.0 - 1e-12)]
    if fast.empty:
        return None
    cost = fast["usd_per_mtok"].fillna(np.inf).to_numpy()
    order = np.lexsort((cost, -fast["tok_s_per_user"].to_numpy(), -fast["tok_s_per_gpu"].to_numpy()))
    rec = _frontier_record(fast.iloc[int(order[0])].to_dict())
    rec["frontier"] = bool(fast["frontier"].iloc[int(order[0])])
    rec["asked_tok_s_per_user"] = float(tok_s_per_user)
    return rec


def best_at_speed_per_workload(df: pd.DataFrame, tok_s_per_user: float, *, slos: bool = True) -> list[dict[str, Any]]:
    """`best_at_speed` for each workload of ``df`` (one entry when there is no ``workload`` column), each record
    with ``workload``; a workload with no point that fast is left out."""
    if not (math.isfinite(tok_s_per_user) and tok_s_per_user > 0):
        raise MoesimError(f"per-user speed {tok_s_per_user} tok/s", "give a positive output tokens/s per user")
    names = sorted({str(w) for w in df["workload"].dropna()}) if "workload" in df.columns else [None]
    out = []
    for w in names:
        best = best_at_speed(df, tok_s_per_user, workload=w, slos=slos)
        if best is not None:
            out.append(best | {"workload": w})
    return out
