"""A real profile of this CPU (the tiny grid), collectives over gloo, and the profiling commands end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from moesim.dashboard.cli import main
from moesim.model import Batch, Layout, Precision, estimate_step, list_gpus, load_model, make_cluster
from moesim.profiling.calibrate import CalibratedCostModel, calibrate, save
from moesim.profiling.opshapes import row_op
from moesim.profiling.tables import read_table, write_table

torch = pytest.importorskip("torch")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "aiconfigurator-h100-sxm"


@pytest.fixture(scope="module")
def cpu_tables(tmp_path_factory):
    from moesim.profiling.runner import profile

    out = tmp_path_factory.mktemp("cpu")
    seen = []
    run = profile("cpu", out, mode="tiny", ops=["gemm", "moe", "attention", "router", "permute", "memcpy"],
                  progress=lambda done, total, label: seen.append((done, total)))  # fmt: skip
    assert seen[-1][0] == seen[-1][1] and run.skipped == []
    return run


def test_profile_writes_tables_with_metadata(cpu_tables):
    run = cpu_tables
    assert set(run.tables) == {"gemm", "grouped_gemm", "attention", "router", "permute", "memcpy"}
    df, meta = read_table(run.tables["gemm"])
    assert meta["device_type"] == "cpu" and meta["threads"] == torch.get_num_threads()
    assert meta["torch"] == torch.__version__ and meta["host"] and meta["date"]
    assert (df["time_p10_s"] <= df["time_s"]).all() and (df["time_s"] <= df["time_p90_s"]).all()
    assert (df["reps"] >= 4).all()  # two passes of at least two
    moe, _ = read_table(run.tables["grouped_gemm"])
    skewed = moe[moe["distribution"] != "balanced"]
    assert len(skewed) and all(sum(c) == p for c, p in zip(skewed["expert_counts"], skewed["pairs"], strict=True))
    # the measured CPU spec is a hardware file the rest of moesim reads
    cpu = list_gpus(run.out / "hardware.yaml")["cpu"]
    assert cpu.peak("fp32") == run.hardware.peak("fp32") > 1e9 and cpu.bandwidth() > 1e8


def test_cpu_tables_calibrate_and_drive_an_estimate(cpu_tables, tmp_path):
    cal = calibrate([cpu_tables.out])
    kinds = {f.kind for f in cal.fits}
    assert {"gemm", "grouped_gemm", "attention", "router", "permute", "memcpy"} <= kinds
    assert cal.skew["rows"] >= 1
    model = CalibratedCostModel.from_file(save(cal, tmp_path / "cal.parquet"))
    cpu = list_gpus(cpu_tables.out / "hardware.yaml")["cpu"]
    cluster = make_cluster(cpu, num_gpus=1)
    gemm, _ = read_table(cpu_tables.tables["gemm"])
    n, k = int(gemm["n"].iloc[0]), int(gemm["k"].iloc[0])
    t = model.op_time(row_op("gemm", {"m": 5, "n": n, "k": k, "dtype": "fp32"}), cluster)
    assert t.source.startswith("measured:gemm/fp32/torch@cpu") and t.seconds > 0
    # a preset model's layers are larger than the tiny grid: the table followed along its edge, the achievable model
    # (attention) or the roofline times them, and says why
    est = estimate_step(load_model("olmoe-1b-7b"), Batch.decode(4, 64), Layout(), cluster,
                        Precision("fp32", "fp32"), cost_model=model)  # fmt: skip
    starts = ("measured:", "roofline: ", "edge ", "achievable: ")
    assert all(t.source.startswith(starts) for t in est.times) and est.step_s > 0
    assert any(t.source.startswith("edge ") and "measured:" in t.source for t in est.times)


def test_collectives_over_gloo():
    from moesim.profiling.collectives import bench_collectives

    rows, skipped = bench_collectives("cpu", 2, [4096, 2**24], reps=3)
    ops = {r["op"] for r in rows}
    assert {"all_reduce", "all_gather", "all_to_all"} <= ops | set(skipped)
    assert all(r["time_s"] > 0 and r["gpus"] == 2 and r["impl"] == "gloo" for r in rows)
    # the fastest repetitions (p10): a median of 3 can be two scheduler stalls when other tests load the CPUs
    big = {r["op"]: r["time_p10_s"] for r in rows if r["bytes"] == 2**24}
    small = {r["op"]: r["time_p10_s"] for r in rows if r["bytes"] == 4096}
    assert all(big[op] > small[op] for op in big)


# --- commands ---------------------------------------------------------------------------------


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_profile_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "profile", "--device", "cuda", "--out", str(tmp_path / "x"))
    assert code == 1 and err.count("\n") == 1 and "no CUDA GPU" in err and not (tmp_path / "x").exists()


def test_calibrate_bad_tables_are_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "calibrate", str(tmp_path / "missing"), "--out", str(tmp_path / "c.parquet"))
    assert code == 1 and "no such file or folder" in err and err.count("\n") == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"op": ["gemm"], "impl": ["x"], "dtype": ["fp32"], "time_s": [1.0]}).to_parquet(bad / "g.parquet")
    code, _, err = _run(capsys, "calibrate", str(bad), "--out", str(tmp_path / "c.parquet"))
    assert code == 1 and "gemm rows need column(s) m, n, k" in err
    pd.DataFrame({"op": ["conv"], "impl": ["x"], "dtype": ["fp32"], "time_s": [1.0]}).to_parquet(bad / "g.parquet")
    code, _, err = _run(capsys, "calibrate", str(bad), "--out", str(tmp_path / "c.parquet"))
    assert code == 1 and "unknown op kind(s) conv" in err
    pd.DataFrame({"op": [], "impl": [], "dtype": [], "time_s": []}).to_parquet(bad / "g.parquet")
    code, _, err = _run(capsys, "calibrate", str(bad), "--out", str(tmp_path / "c.parquet"))
    assert code == 1 and "empty" in err and not (tmp_path / "c.parquet").exists()


def test_calibrate_json_and_roofline_with_the_cost_model(capsys, tmp_path, cpu_tables):
    cal = tmp_path / "cal.parquet"
    code, out, _ = _run(capsys, "calibrate", str(cpu_tables.out), "--out", str(cal), "--json", "--report",
                        str(tmp_path / "rep"))  # fmt: skip
    assert code == 0
    summary = json.loads(out)
    gemm = next(f for f in summary["fits"] if f["kind"] == "gemm")
    assert gemm["rows_fit"] + gemm["rows_holdout"] == len(read_table(cpu_tables.tables["gemm"])[0])
    assert gemm["mape"] >= 0 and gemm["p90_ape"] >= 0 and (tmp_path / "rep" / "gemm.png").stat().st_size > 1000
    hw = str(cpu_tables.out / "hardware.yaml")
    code, out, err = _run(capsys, "roofline", "olmoe-1b-7b", "--gpu", "cpu", "--hardware", hw, "--dtype", "fp32",
                          "--kv-dtype", "fp32", "--batch", "2", "--ctx", "64", "--cost-model", str(cal), "--json",
                          "--ignore-memory")  # fmt: skip
    assert code == 0, err
    r = json.loads(out)
    assert r["cost_model"] == "calibrated:cal.parquet"
    assert any(op["source"].startswith("measured:") for op in r["ops"])


def test_import_trace_and_bad_sources(capsys, tmp_path):
    code, _, err = _run(capsys, "import", str(tmp_path / "nothing.json"), "--out", str(tmp_path / "o"))
    assert code == 1 and err.count("\n") == 1
    with torch.profiler.profile(record_shapes=True) as prof:
        torch.mm(torch.randn(8, 16), torch.randn(16, 32))
    trace = tmp_path / "t.json"
    prof.export_chrome_trace(str(trace))
    code, out, _ = _run(capsys, "import", str(trace), "--out", str(tmp_path / "o"), "--json")
    assert code == 0 and json.loads(out)["rows"]["gemm"] == 1
    df, _ = read_table(tmp_path / "o" / "trace_gemm.parquet")
    assert (df["m"].iloc[0], df["n"].iloc[0], df["k"].iloc[0]) == (8, 32, 16)


@pytest.mark.skipif(not SHARED.is_dir(), reason="reference data ../shared/data/aiconfigurator-h100-sxm absent")
def test_import_aiconfigurator_reference(capsys, tmp_path):
    code, out, _ = _run(capsys, "import", str(SHARED), "--out", str(tmp_path / "aic"), "--json")
    assert code == 0
    s = json.loads(out)
    assert s["rows"]["gemm"] == 101003 and s["device"] == ["NVIDIA H100 80GB HBM3"]
    # 15,498 MoE rows, of which the expert-parallel ones are left out and counted (aiconfigurator.allgather_ep_rows)
    assert s["rows"]["grouped_gemm"] + s["left_out"]["moe_perf.parquet"] == 15498
    assert s["rows"]["grouped_gemm"] == 6588
    moe, meta = read_table(tmp_path / "aic" / "grouped_gemm.parquet")
    assert meta["device_key"] == "H100-SXM" and set(moe["dtype"]) == {"bf16", "fp8", "fp8_block", "int4"}
    write_table(moe.head(3), tmp_path / "x.parquet", meta)  # an imported table is a valid moesim table
