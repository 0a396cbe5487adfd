"""Post-processing of a sweep's results table: Pareto masks, the CAP table, the cheapest configuration for a
throughput target, the PNGs and the dashboard's data files, on small hand-made tables."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.model.errors import MoesimError
from moesim.sim.sweeps import sweep_plots, sweep_report
from moesim.sim.sweeps.sweep_report import (
    CAP_COLUMNS,
    cap_objectives,
    cap_table,
    cheapest_meeting,
    pareto_mask,
    write_dashboard_data,
    write_plots,
)

NAN = math.nan
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------------------------
# pareto_mask


def brute_force_front(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The front by definition, O(n^2) in Python: ``values`` [n, k] minimised, NaN already as +inf."""
    n = len(values)
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if ok[i]:
            out[i] = not any(
                ok[j] and np.all(values[j] <= values[i]) and np.any(values[j] < values[i]) for j in range(n)
            )
    return out


def test_pareto_mask_hand_made_front() -> None:
    """Cost and s/token both minimised; NaN is the worst value; non-ok rows are off the front and dominate nothing.

    row  cost  s/token  status      front?
    a    1     10       ok          yes (cheapest)
    b    2     5        ok          yes
    c    3     5        ok          no  (b is cheaper at the same speed)
    d    4     1        ok          yes
    e    2     5        ok          yes (identical to b: ties are kept)
    f    NaN   0.5      ok          yes (unknown cost is worst, but nothing is faster)
    g    0.5   0.1      overloaded  no  (and it would dominate everything if it counted)
    h    5     20       ok          no
    i    NaN   2        ok          no  (d is cheaper and faster)
    """
    df = pd.DataFrame(
        {
            "cost": [1, 2, 3, 4, 2, NAN, 0.5, 5, NAN],
            "spt": [10, 5, 5, 1, 5, 0.5, 0.1, 20, 2],
            "status": ["ok"] * 6 + ["overloaded"] + ["ok"] * 2,
        },
        index=list("abcdefghi"),
    )
    mask = pareto_mask(df, {"cost": "min", "spt": "min"})
    assert mask.dtype == bool and mask.shape == (9,)
    assert list(df.index[mask]) == ["a", "b", "d", "e", "f"]


def test_pareto_mask_directions_and_three_objectives() -> None:
    """'max' prefers larger values; with three objectives a row survives by being best in any one."""
    df = pd.DataFrame({"tok_s": [100.0, 200.0, 150.0, 200.0], "cost": [1.0, 3.0, 3.0, 2.0]})
    assert pareto_mask(df, {"tok_s": "max", "cost": "min"}).tolist() == [True, False, False, True]
    assert pareto_mask(df, {"tok_s": "min", "cost": "min"}).tolist() == [True, False, False, False]
    df["acc"] = [NAN, 90.0, 95.0, NAN]  # unknown accuracy is worst: row 2 is now best in accuracy
    assert pareto_mask(df, {"tok_s": "max", "cost": "min", "acc": "max"}).tolist() == [True, True, True, True]
    df["acc"] = [NAN, 90.0, 80.0, 90.0]  # row 3 dominates rows 1 and 2 (more or equal tok/s, cheaper, same acc)
    assert pareto_mask(df, {"tok_s": "max", "cost": "min", "acc": "max"}).tolist() == [True, False, False, True]


def test_pareto_mask_edge_cases() -> None:
    """No status column: every row counts; all-NaN objective: a tie; empty and all-failed tables; bad direction."""
    df = pd.DataFrame({"x": [1.0, 2.0, 1.0], "y": [NAN, NAN, NAN]})
    assert pareto_mask(df, {"x": "min", "y": "min"}).tolist() == [True, False, True]
    assert pareto_mask(df, {"x": "min", "missing": "max"}).tolist() == [True, False, True]
    assert pareto_mask(df, {}).tolist() == [True, True, True]
    assert pareto_mask(df.iloc[:0], {"x": "min"}).shape == (0,)
    assert not pareto_mask(df.assign(status="error"), {"x": "min"}).any()
    with pytest.raises(MoesimError, match="direction"):
        pareto_mask(df, {"x": "smallest"})


@pytest.mark.parametrize("k", [2, 3])
def test_pareto_mask_matches_definition_on_random_tables(k: int) -> None:
    """Random small-integer tables (many ties, NaNs, failed rows) against the brute-force definition."""
    rng = np.random.default_rng(k)
    for _ in range(3):
        n = 250
        values = rng.integers(0, 6, (n, k)).astype(float)
        values[rng.random((n, k)) < 0.1] = NAN
        cols = [f"o{i}" for i in range(k)]
        df = pd.DataFrame(values, columns=cols).assign(status=np.where(rng.random(n) < 0.1, "error", "ok"))
        directions = {c: ("max" if i % 2 else "min") for i, c in enumerate(cols)}
        signed = np.column_stack([-values[:, i] if i % 2 else values[:, i] for i in range(k)])
        expected = brute_force_front(np.where(np.isnan(signed), np.inf, signed), (df["status"] == "ok").to_numpy())
        np.testing.assert_array_equal(pareto_mask(df, directions), expected)


def test_pareto_mask_scales_to_20k_rows() -> None:
    """20k rows that are all on the front (the worst case) in 2-D, and 20k random rows in 3-D."""
    rng = np.random.default_rng(0)
    x = rng.random(20_000)
    assert pareto_mask(pd.DataFrame({"a": x, "b": 1.0 - x}), {"a": "min", "b": "min"}).all()
    df = pd.DataFrame(rng.random((20_000, 3)), columns=["a", "b", "c"])
    mask = pareto_mask(df, {"a": "min", "b": "min", "c": "max"})
    front = df[mask].to_numpy() * [1, 1, -1]
    others = df[~mask].to_numpy()[:200] * [1, 1, -1]
    # every off-front row checked is dominated by a front row, and no front row by another
    assert all(((front <= r).all(axis=1) & (front < r).any(axis=1)).any() for r in others)
    assert not any(((front <= r).all(axis=1) & (front < r).any(axis=1)).any() for r in front)


# ------------------------------------------------------------------------------------------------------------------
# cap_objectives, cap_table


def rate_sweep() -> pd.DataFrame:
    """Three configurations swept over rate, and one that always failed.

    A: rate 2 is the fastest point meeting the SLOs (rate 3 misses them, rate 4 is overloaded).
    B: never meets the SLOs: its best ok row (rate 2) stands for it.
    D: one point, cheaper and faster than B's.
    C: every point errored.
    """
    rows = [
        ("A", 1.0, "ok", 100.0, 1.00, 10.0, 0.01),
        ("A", 2.0, "ok", 200.0, 0.995, 5.0, 0.02),
        ("A", 3.0, "ok", 300.0, 0.95, 3.4, 0.03),
        ("A", 4.0, "overloaded", 400.0, 1.00, 2.5, 0.04),
        ("B", 1.0, "ok", 150.0, 0.50, 8.0, 0.05),
        ("B", 2.0, "ok", 250.0, 0.90, 4.8, 0.06),
        ("C", 1.0, "error", NAN, NAN, NAN, NAN),
        ("D", 1.0, "ok", 120.0, 1.00, 4.0, 0.05),
    ]
    df = pd.DataFrame(
        rows, columns=["label", "rate", "status", "throughput_tok_s", "slo_attainment", "usd_per_mtok", "tpot_p50_s"]
    )
    df["point_id"] = [f"p{i}" for i in range(len(df))]
    df["gpu"] = df["label"].map({"A": "H100-SXM", "B": "L40S", "C": "L40S", "D": "H200-SXM"})
    df["usd_per_hour"] = df["label"].map({"A": 3.6, "B": 2.0, "C": 1.0, "D": 4.0})
    df["s_mbu"] = np.linspace(0.1, 0.8, len(df))
    df["model"], df["gpus"], df["layout"], df["precision"], df["workload"] = "m", 8, "TP1xDP8 EP8", "fp8", "chat"
    return df


def test_cap_objectives_fallbacks() -> None:
    """Capacity columns when they hold a number; accuracy only with two distinct known scores."""
    df = rate_sweep()
    assert cap_objectives(df) == {"usd_per_mtok": "min", "tpot_p50_s": "min"}
    df["capacity_usd_per_mtok"] = NAN  # present but empty: still the fallbacks
    df["capacity_tpot_s"] = NAN
    df["accuracy"] = [70.0] * 7 + [NAN]  # one distinct value: no accuracy objective
    assert cap_objectives(df) == {"usd_per_mtok": "min", "tpot_p50_s": "min"}
    df.loc[0, ["capacity_usd_per_mtok", "capacity_tpot_s"]] = [1.0, 0.01]
    df.loc[1, "accuracy"] = 71.0
    assert cap_objectives(df) == {"capacity_usd_per_mtok": "min", "capacity_tpot_s": "min", "accuracy": "max"}
    assert cap_objectives(cap_table(df)) == {"cost_usd_per_mtok": "min", "s_per_token": "min", "accuracy": "max"}


def test_cap_table_rate_sweep_picks_the_right_row() -> None:
    table = cap_table(rate_sweep())
    assert tuple(table.columns) == CAP_COLUMNS
    assert table["label"].tolist() == ["D", "B", "A", "C"]  # by cost ascending, NaN last
    rows = table.set_index("label")
    assert rows.loc["A", "throughput_tok_s"] == 200.0  # highest SLO-meeting ok row, not rate 3 or 4
    assert rows.loc["A", "cost_usd_per_mtok"] == 5.0
    assert rows.loc["A", "s_per_token"] == 0.02
    assert rows.loc["A", "s_mbu"] == pytest.approx(0.2)  # from that same row (the second of eight)
    assert rows.loc["B", "throughput_tok_s"] == 250.0  # no SLO-meeting row: the best ok row
    assert rows.loc["B", "cost_usd_per_mtok"] == 4.8
    assert math.isnan(rows.loc["C", "cost_usd_per_mtok"]) and math.isnan(rows.loc["C", "throughput_tok_s"])
    assert rows.loc["C", "usd_per_hour"] == 1.0 and rows.loc["C", "gpu"] == "L40S"
    # D (4.0 $/Mtok, 0.05 s) dominates B (4.8, 0.06); A is the fastest; C has nothing to offer
    assert rows["pareto"].to_dict() == {"D": True, "B": False, "A": True, "C": False}


def test_cap_table_capacity_rows() -> None:
    """A capacity row stands as it is; a missing capacity cost is derived from $/h; no capacity: NaN metrics."""
    df = pd.DataFrame(
        {
            "label": ["X", "Y", "Z"],
            "rate": [NAN, NAN, NAN],
            "status": ["ok", "ok", "overloaded"],
            "throughput_tok_s": [900.0, 1500.0, 10.0],
            "usd_per_mtok": [99.0, 99.0, 99.0],
            "tpot_p50_s": [0.5, 0.5, 0.5],
            "usd_per_hour": [7.2, 36.0, 1.0],
            "capacity_tok_s": [1000.0, 2000.0, NAN],
            "capacity_usd_per_mtok": [2.0, NAN, NAN],
            "capacity_tpot_s": [0.03, 0.02, NAN],
            "accuracy": [NAN, 75.0, 80.0],
        }
    )
    rows = cap_table(df).set_index("label")
    assert rows.loc["X", ["cost_usd_per_mtok", "throughput_tok_s", "s_per_token"]].tolist() == [2.0, 1000.0, 0.03]
    assert rows.loc["Y", "cost_usd_per_mtok"] == pytest.approx(36.0 * 1e6 / (3600.0 * 2000.0))  # 5 $/Mtok
    assert rows.loc["Y", "throughput_tok_s"] == 2000.0
    assert math.isnan(rows.loc["Z", "s_per_token"])
    assert rows["pareto"].to_dict() == {"X": True, "Y": True, "Z": False}  # Z: best accuracy but no capacity


# ------------------------------------------------------------------------------------------------------------------
# cheapest_meeting


def capacity_sweep() -> pd.DataFrame:
    """Capacities (output tok/s) and prices ($/h): A 1000 at $10, B 3000 at $25, C 500 at $3, D none at $1."""
    return pd.DataFrame(
        {
            "label": ["A", "B", "C", "D"],
            "gpu": ["H100-SXM", "H200-SXM", "L40S", "L4"],
            "rate": [NAN] * 4,
            "status": ["ok"] * 4,
            "usd_per_hour": [10.0, 25.0, 3.0, 1.0],
            "capacity_tok_s": [1000.0, 3000.0, 500.0, NAN],
            "capacity_usd_per_mtok": [10e6 / 3.6e6, 25e6 / 10.8e6, 3e6 / 1.8e6, NAN],
        }
    )


def test_cheapest_meeting_as_is() -> None:
    df = capacity_sweep()
    best = cheapest_meeting(df, 800.0)
    assert best is not None
    assert (best["label"], best["replicas_needed"], best["meets_as_is"]) == ("A", 1, True)
    assert best["total_usd_per_hour"] == 10.0 and best["config_capacity_tok_s"] == 1000.0
    assert best["gpu"] == "H100-SXM" and best["rate"] is None  # the row's own values, NaN as None
    assert cheapest_meeting(df, 1000.0)["label"] == "A"  # a capacity equal to the target meets it
    # only B meets 2000 as it is: it wins although two A replicas ($20/h) would cost less
    assert (cheapest_meeting(df, 2000.0)["label"], cheapest_meeting(df, 2000.0)["meets_as_is"]) == ("B", True)
    json.dumps(best, allow_nan=False)


def test_cheapest_meeting_scale_out() -> None:
    """4000 tok/s: A needs 4 x $10 = $40/h, B 2 x $25 = $50/h, C 8 x $3 = $24/h; D has no capacity."""
    best = cheapest_meeting(capacity_sweep(), 4000.0)
    assert best is not None
    assert (best["label"], best["replicas_needed"], best["meets_as_is"]) == ("C", 8, False)
    assert best["total_usd_per_hour"] == 24.0


def test_cheapest_meeting_rate_sweep_uses_slo_meeting_rows() -> None:
    """X reaches 900 tok/s only while missing the SLOs, so its capacity is 500; Y delivers 800."""
    df = pd.DataFrame(
        {
            "label": ["X", "X", "Y"],
            "rate": [1.0, 2.0, 1.0],
            "status": ["ok", "ok", "ok"],
            "throughput_tok_s": [500.0, 900.0, 800.0],
            "slo_attainment": [1.0, 0.98, 1.0],
            "usd_per_hour": [2.0, 2.0, 5.0],
        }
    )
    assert (cheapest_meeting(df, 700.0)["label"], cheapest_meeting(df, 700.0)["replicas_needed"]) == ("Y", 1)
    best = cheapest_meeting(df, 1600.0)  # X: 4 x $2 = $8/h, Y: 2 x $5 = $10/h
    assert (best["label"], best["replicas_needed"], best["total_usd_per_hour"]) == ("X", 4, 8.0)
    assert best["throughput_tok_s"] == 500.0  # the row that set X's capacity


def test_cheapest_meeting_none_and_bad_target() -> None:
    df = capacity_sweep().iloc[3:]
    assert cheapest_meeting(df, 100.0) is None
    assert cheapest_meeting(rate_sweep().assign(status="error"), 100.0) is None
    with pytest.raises(MoesimError):
        cheapest_meeting(capacity_sweep(), 0.0)


# ------------------------------------------------------------------------------------------------------------------
# plots and dashboard data


def grid_sweep() -> pd.DataFrame:
    """Capacity points over 2 GPUs x 3 precisions x 2 batch sizes, with accuracy per precision."""
    rows = []
    for gpu, price, speed in (("H100-SXM", 28.0, 1.0), ("L40S", 9.6, 0.3)):
        for prec, gain, acc in (("bf16", 1.0, 70.0), ("fp8", 1.6, 69.5), ("int4", 2.0, 66.0)):
            for batch in (64, 256):
                cap = 4000.0 * speed * gain * (1.0 + batch / 256)
                rows.append(
                    {
                        "point_id": f"{gpu}-{prec}-{batch}",
                        "label": f"{gpu} x8 TP1xDP8 EP8 {prec} b{batch}",
                        "model": "mixtral-8x7b",
                        "gpu": gpu,
                        "gpus": 8,
                        "layout": "TP1xDP8 EP8",
                        "precision": prec,
                        "max_batch": batch,
                        "workload": "chat",
                        "rate": NAN,
                        "status": "ok",
                        "usd_per_hour": price,
                        "capacity_tok_s": cap,
                        "capacity_usd_per_mtok": price * 1e6 / 3600.0 / cap,
                        "capacity_tpot_s": 0.02 / (speed * gain),
                        "tpot_p50_s": 0.02 / (speed * gain),
                        "usd_per_mtok": price * 1e6 / 3600.0 / cap,
                        "s_mbu": 0.3 + 0.1 * gain,
                        "s_mfu": 0.1 * gain,
                        "accuracy": acc,
                        "accuracy_benchmark": "MMLU",
                    }
                )
    return pd.DataFrame(rows)


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_write_plots_writes_heatmaps_pareto_and_radar(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    paths = write_plots(grid_sweep(), tmp_path / "plots")
    names = [p.name for p in paths]
    assert names == ["heatmap_capacity_tok_s.png", "heatmap_capacity_usd_per_mtok.png", "pareto.png", "frontier.png",
                     "cap_radar.png"]  # fmt: skip
    for p in paths:
        assert_png(p)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names)  # no temp files left


def stub_pareto_and_radar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the scatter, the frontier and the radar by empty files, so a test draws only the heatmaps."""
    monkeypatch.setattr(sweep_plots, "_write_pareto", lambda table, path: path)
    monkeypatch.setattr(sweep_plots, "_write_frontier", lambda points, path: path)
    monkeypatch.setattr(sweep_plots, "_write_radar", lambda table, path, rows: path)


def test_write_plots_no_heatmap_when_nothing_varies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    stub_pareto_and_radar(monkeypatch)
    df = grid_sweep()
    one = df[(df["gpu"] == "L40S") & (df["precision"] == "fp8")]  # only max_batch varies: a one-row heatmap
    assert [p.name for p in write_plots(one.iloc[:1], tmp_path / "one")] == ["pareto.png", "frontier.png",
                                                                             "cap_radar.png"]  # fmt: skip
    assert not list((tmp_path / "one").glob("heatmap_*"))
    assert sweep_plots._heatmap_axes(one) == ["max_batch"]
    assert sweep_plots._heatmap_axes(df) == ["precision", "gpu"]  # 3 precisions before 2 GPUs and 2 batches


def test_write_plots_rate_sweep_heatmaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rate sweep draws throughput and $/Mtok heatmaps on the axes given; unknown names fail before drawing."""
    pytest.importorskip("matplotlib")
    stub_pareto_and_radar(monkeypatch)
    df = grid_sweep()
    rate = df.drop(columns=[c for c in df.columns if c.startswith("capacity_")])
    rate = rate.assign(rate=1.0, throughput_tok_s=1000.0, slo_attainment=1.0)
    paths = write_plots(rate, tmp_path / "rate", heatmap_axes=("max_batch", "gpu"))
    assert [p.name for p in paths] == ["heatmap_throughput_tok_s.png", "heatmap_usd_per_mtok.png", "pareto.png",
                                       "frontier.png", "cap_radar.png"]  # fmt: skip
    for p in paths[:2]:
        assert_png(p)
    with pytest.raises(MoesimError, match="heatmap axes"):
        write_plots(df, tmp_path / "bad", heatmap_axes=("gpu", "colour"))
    with pytest.raises(MoesimError, match="unknown configuration"):
        write_plots(df, tmp_path / "bad", radar_labels=["no such configuration"])
    with pytest.raises(MoesimError, match="radar configurations"):
        write_plots(df, tmp_path / "bad", radar_labels=list(df["label"]))
    assert not (tmp_path / "bad").exists()


def test_write_plots_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that fails midway leaves neither the PNG nor its temp file."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def broken_savefig(self: Figure, fname: str, **kwargs: object) -> None:
        Path(fname).write_bytes(PNG_MAGIC)
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(MoesimError, match=r"cannot write .*: disk full"):  # one error line, not a traceback
        write_plots(grid_sweep(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_write_plots_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MoesimError, match="matplotlib") as err:
        write_plots(grid_sweep(), tmp_path / "plots")
    assert "moesim[report]" in err.value.hint
    assert not (tmp_path / "plots").exists()


def test_write_dashboard_data(tmp_path: Path) -> None:
    df = rate_sweep()
    summary = write_dashboard_data(df, tmp_path / "dash", target_tok_s=150.0)
    json.dumps(summary, allow_nan=False)
    assert summary["points"] == 8 and summary["configurations"] == 4
    assert summary["objectives"] == {"usd_per_mtok": "min", "tpot_p50_s": "min"}
    assert summary["cheapest"]["label"] == "A"  # only A (200 tok/s at $3.6/h) meets 150 tok/s under the SLOs
    table = pd.read_csv(tmp_path / "dash" / "cap_table.csv")
    assert table["label"].tolist() == ["D", "B", "A", "C"] and tuple(table.columns) == CAP_COLUMNS
    front = pd.read_parquet(tmp_path / "dash" / "pareto.parquet")
    assert len(front) == summary["pareto_points"]
    expected = df[pareto_mask(df, cap_objectives(df))]
    assert front["point_id"].tolist() == expected["point_id"].tolist()
    assert set(front["status"]) == {"ok"}
    assert sorted(p.name for p in (tmp_path / "dash").iterdir()) == ["cap_table.csv", "frontier.csv", "pareto.parquet"]
    assert write_dashboard_data(df, tmp_path / "dash")["cheapest"] is None


def test_module_is_importable_without_matplotlib_at_import_time() -> None:
    """matplotlib is imported lazily: the module's globals hold no matplotlib object."""
    assert not any(type(v).__module__.startswith("matplotlib") for v in vars(sweep_report).values())
