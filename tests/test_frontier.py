"""The throughput-interactivity frontier (output tok/s per GPU against output tok/s per user), the best
configuration at a per-user speed, the two-axis fronts the plots draw, and the CAP table's throughput basis."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.model.errors import MoesimError
from moesim.sim.sweeps import sweep_plots
from moesim.sim.sweeps.cap import (
    best_at_speed,
    best_at_speed_per_workload,
    cap_table,
    front_2d,
    frontier_points,
    frontier_records,
)

NAN = math.nan


def random_sweep(seed: int, n: int = 300) -> pd.DataFrame:
    """Rate rows of random configurations: tok/s and TPOT drawn at random, on a coarse grid so ties happen."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "point_id": [f"p{i}" for i in range(n)],
            "label": [f"cfg{i % 40}" for i in range(n)],
            "gpu": rng.choice(["H100-SXM", "H200-SXM", "A100-SXM-80GB"], n),
            "gpus": rng.choice([1, 2, 4, 8], n),
            "precision": rng.choice(["bf16", "fp8"], n),
            "rate": rng.choice([1.0, 2.0, 4.0, 8.0], n),
            "status": rng.choice(["ok", "ok", "ok", "overloaded"], n),
            "throughput_tok_s": rng.integers(1, 60, n) * 100.0,
            "tpot_p50_s": rng.integers(1, 40, n) * 0.002,
            "slo_attainment": rng.choice([1.0, 1.0, 0.5], n),
            "usd_per_mtok": rng.uniform(0.1, 5.0, n),
        }
    )


def test_frontier_per_workload() -> None:
    """Two workloads: a frontier in each; a point of one does not dominate a point of the other."""
    df = pd.concat(
        [random_sweep(1).assign(workload="chat"), random_sweep(2).assign(workload="long")], ignore_index=True
    )
    df["point_id"] = [f"p{i}" for i in range(len(df))]
    points = frontier_points(df)
    check_frontier(points)
    assert set(points.loc[points["frontier"], "workload"]) == {"chat", "long"}
    per = best_at_speed_per_workload(df, 100.0)
    assert [b["workload"] for b in per] == ["chat", "long"]
    for b in per:
        sub = points[(points["workload"] == b["workload"]) & (points["tok_s_per_user"] >= 100.0)]
        assert b["tok_s_per_gpu"] == pytest.approx(sub["tok_s_per_gpu"].max())


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """a = (x, y) dominates b when both are maximised."""
    return bool(np.all(a >= b) and np.any(a > b))


def check_frontier(points: pd.DataFrame) -> None:
    """Within each workload, frontier points are non-dominated and every other point is dominated by one."""
    groups = points.groupby("workload").groups.values() if "workload" in points else [points.index]
    for idx in groups:
        sub = points.loc[idx]
        xy = sub[["tok_s_per_user", "tok_s_per_gpu"]].to_numpy()
        on = sub["frontier"].to_numpy(dtype=bool)
        assert on.any()
        for i in np.flatnonzero(on):
            assert not any(dominates(xy[j], xy[i]) for j in range(len(xy))), sub.iloc[i]
        for i in np.flatnonzero(~on):
            assert any(dominates(xy[j], xy[i]) for j in np.flatnonzero(on)), sub.iloc[i]


@pytest.mark.parametrize("seed", range(5))
def test_frontier_on_random_data(seed: int) -> None:
    df = random_sweep(seed)
    points = frontier_points(df)
    meets = (df["status"] == "ok") & (df["slo_attainment"] >= 0.99)
    assert len(points) == meets.sum()  # every point meeting the SLOs, nothing else
    check_frontier(points)
    row = df.set_index("point_id").loc[points["point_id"].iloc[0]]
    assert points["tok_s_per_gpu"].iloc[0] == pytest.approx(row["throughput_tok_s"] / row["gpus"])
    assert points["tok_s_per_user"].iloc[0] == pytest.approx(1.0 / row["tpot_p50_s"])
    all_ok = frontier_points(df, slos=False)
    assert len(all_ok) == (df["status"] == "ok").sum()
    check_frontier(all_ok)


@pytest.mark.parametrize("seed", range(5))
def test_front_2d_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 15, 200).astype(float), rng.integers(0, 15, 200).astype(float)
    on = front_2d(x, y, "min", "min")
    pts = np.column_stack([-x, -y])  # minimising x, y = maximising -x, -y
    for i in range(len(x)):
        dominated = any(dominates(pts[j], pts[i]) for j in range(len(x)))
        assert on[i] == (not dominated)


@pytest.mark.parametrize("seed", range(5))
def test_best_at_speed_is_the_brute_force_answer_and_on_the_frontier(seed: int) -> None:
    df = random_sweep(seed)
    points = frontier_points(df)
    for speed in (30.0, 100.0, 250.0, 499.0):
        best = best_at_speed(df, speed)
        fast = points[points["tok_s_per_user"] >= speed]
        if fast.empty:
            assert best is None
            continue
        assert best["tok_s_per_gpu"] == pytest.approx(fast["tok_s_per_gpu"].max())
        assert best["tok_s_per_user"] >= speed and best["frontier"] and best["asked_tok_s_per_user"] == speed
        assert best["config"]["gpu"] in {"H100-SXM", "H200-SXM", "A100-SXM-80GB"}
    assert best_at_speed(df, 1e9) is None
    for bad in (0.0, -1.0, NAN, math.inf):
        with pytest.raises(MoesimError, match="per-user speed"):
            best_at_speed(df, bad)


def test_capacity_rows_use_the_capacity() -> None:
    df = pd.DataFrame(
        {
            "label": ["a", "b", "c"],
            "gpus": [8, 4, 4],
            "rate": [NAN, NAN, NAN],
            "status": ["ok", "ok", "slo_unmet"],
            "capacity_req_s": [10.0, 5.0, NAN],
            "capacity_tok_s": [8000.0, 2000.0, NAN],
            "capacity_tpot_s": [0.02, 0.01, NAN],
            "tpot_p50_s": [0.01, NAN, NAN],
            "throughput_tok_s": [8000.0, 2000.0, NAN],
        }
    )
    points = frontier_points(df).set_index("label")
    assert list(points.index) == ["a", "b"]
    assert points.loc["a", "tok_s_per_gpu"] == 1000.0 and points.loc["a", "tok_s_per_user"] == 100.0
    assert points.loc["b", "tok_s_per_user"] == 100.0  # no p50 TPOT: the capacity TPOT
    assert points["at_capacity"].all() and points.loc["a", "rate_req_s"] == 10.0
    assert list(points[points["frontier"]].index) == ["a"]  # b: as fast per user, fewer tok/s per GPU
    records = frontier_records(points.reset_index())
    assert records[0]["label"] == "a" and records[0]["gpus"] == 8 and isinstance(records[0]["config"], dict)


def test_cap_table_names_the_throughput_basis() -> None:
    """A capacity row's throughput is the capacity; a rate row's is the offered load, labelled so."""
    cap = pd.DataFrame({"label": ["a"], "rate": [NAN], "status": ["ok"], "capacity_req_s": [10.0],
                        "capacity_tok_s": [8000.0], "usd_per_hour": [10.0], "tpot_p50_s": [0.01]})  # fmt: skip
    rate = pd.DataFrame({"label": ["b", "b"], "rate": [2.0, 64.0], "status": ["ok", "ok"],
                         "slo_attainment": [1.0, 1.0], "throughput_tok_s": [500.0, 16000.0],
                         "usd_per_mtok": [1.0, 0.1], "tpot_p50_s": [0.01, 0.02]})  # fmt: skip
    t = cap_table(pd.concat([cap, rate], ignore_index=True)).set_index("label")
    assert t.loc["a", "throughput_basis"] == "capacity" and t.loc["a", "rate_req_s"] == 10.0
    assert t.loc["b", "throughput_basis"] == "offered load" and t.loc["b", "rate_req_s"] == 64.0


def accuracy_only_table() -> pd.DataFrame:
    """A CAP table where C is on the three-axis front by accuracy alone: A beats it on cost and on speed."""
    return pd.DataFrame(
        {
            "label": ["A", "B", "C"],
            "gpu": ["H100-SXM"] * 3,
            "cost_usd_per_mtok": [1.0, 2.0, 1.5],
            "s_per_token": [0.010, 0.005, 0.012],
            "throughput_tok_s": [1000.0, 2000.0, 800.0],
            "accuracy": [70.0, 70.0, 80.0],
            "pareto": [True, True, True],
        }
    )


def test_pareto_png_draws_its_own_two_axis_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    seen: dict[str, object] = {}
    real = sweep_plots._numbered

    def spy(ax, side, x, y, names, title):
        seen.update(x=list(x), y=list(y), names=list(names))
        return real(ax, side, x, y, names, title)

    monkeypatch.setattr(sweep_plots, "_numbered", spy)
    path = sweep_plots._write_pareto(accuracy_only_table(), tmp_path / "pareto.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert seen["x"] == [1.0, 2.0] and seen["y"] == pytest.approx([10.0, 5.0])  # A, B; C is dominated here (ms)
    assert [n.split(":")[0] for n in seen["names"]] == ["A", "B"]


def test_dashboard_figures_use_their_own_front_and_carry_the_configuration() -> None:
    pytest.importorskip("streamlit")
    from moesim.dashboard.logic import cap

    fig = cap.pareto_figure(accuracy_only_table())
    front = next(t for t in fig.data if t.name.startswith("cost-speed front"))
    assert list(front.x) == pytest.approx([5.0, 10.0]) and list(front.y) == [2.0, 1.0]  # B, A: not C
    three = next(t for t in fig.data if "accuracy front" in t.name)
    assert len(three.x) == 3  # three-axis membership drawn apart
    assert fig.layout.xaxis.title.text == "time per output token (ms)"
    df = random_sweep(0)
    points = frontier_points(df)
    fig = cap.frontier_figure(points, best_at_speed(df, 100.0))
    line = next(t for t in fig.data if t.name.startswith("frontier"))
    assert len(line.x) == points["frontier"].sum()
    assert all("gpu" in str(c[3]) and "precision" in str(c[3]) for c in line.customdata)  # hover: the config
    assert fig.layout.yaxis.title.text == "output tokens/s per GPU"
    table = cap.frontier_table(points)
    assert len(table) == points["frontier"].sum() and table["tok_s_per_user"].is_monotonic_decreasing


def test_real_sweep_json_has_the_frontier_and_best_at_speed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = {
        "name": "frontier",
        "base": {
            "model": "mixtral-8x7b",
            "gpu": "H100-SXM",
            "workload": {
                "arrival": "poisson",
                "requests": 200,
                "input": {"dist": "lognormal", "mean": 256, "cv": 1.0},
                "output": {"dist": "lognormal", "mean": 64, "cv": 1.0},
            },
            "slo": {"ttft_s": 2.0, "tpot_s": 0.1},
        },
        "axes": {
            "gpus": [2, 4],
            "layout": [{"tp": "gpus"}, {"dp_attn": "gpus", "ep": "gpus"}],
            "precision": ["fp8"],
            "rate": [1, 4, 16],
        },
        "engine": "analytical",
    }
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    out = tmp_path / "o"
    assert main(["sweep", str(f), "--out", str(out), "--workers", "1", "--json", "--at-tps-user", "50"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["frontier"] and "frontier.png" in s["files"] and "frontier.csv" in s["files"]
    for p in s["frontier"]:
        assert p["config"]["gpu"] == "H100-SXM" and p["config"]["precision"] == "fp8" and p["tok_s_per_gpu"] > 0
    points = frontier_points(pd.read_parquet(out / "results.parquet"))
    check_frontier(points)
    assert {p["point_id"] for p in s["frontier"]} == set(points.loc[points["frontier"], "point_id"])
    (best,) = s["best_at_tps_user"]  # one workload: one answer
    assert best["tok_s_per_user"] >= 50 and best["frontier"]
    assert best["tok_s_per_gpu"] == pytest.approx(points.loc[points["tok_s_per_user"] >= 50, "tok_s_per_gpu"].max())
    assert s["cap_table_top"][0]["throughput_basis"] == "offered load"
    assert main(["sweep", str(f), "--out", str(out), "--workers", "1", "--at-tps-user", "1e9"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "no point meeting the SLOs reaches" in text and "Throughput vs interactivity" in text
    assert "offered load" in text


def test_cap_page_names_the_best_configuration_at_a_speed() -> None:
    pytest.importorskip("streamlit")
    pytest.importorskip("plotly")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py"), default_timeout=180)
    at.switch_page("views/cap.py")
    at.run()
    at.number_input(key="cap_tps_user").set_value(20.0).run()
    assert not at.exception and not at.error
    assert any("output tok/s per GPU" in s.value for s in at.success)
    at.number_input(key="cap_tps_user").set_value(1e7).run()
    assert any("No point meeting the SLOs" in w.value for w in at.warning)
