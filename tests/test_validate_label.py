"""`moesim validate` on a label-only run whose workload label and folder name disagree (issue 19): the folder's
"-lite" profile is used and the note says so; a disagreement that is not "<label>-lite" stays a warning note.
TEST INPUT only (no reference data needed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from moesim.sim.serving.validate import LABEL_PROFILES, read_runs


def _runs(folder: Path, label: str, in_folder: str) -> Path:
    """TEST INPUT: one label-only run (no rates, no lengths, no per-request file); latencies invented."""
    path = folder / "RUNS.csv"
    pd.DataFrame(
        {
            "experiment_id": ["l"],
            "model": ["meta-llama/Llama-3.1-8B-Instruct"],
            "gpu": ["H100"],
            "tp": [1],
            "max_num_batched_tokens": [2048],
            "workload_label": [label],
            "workload_in_folder_name": [in_folder],
            "e2e_mean_ms": [2000.0],
            "ttft_mean_ms": [30.0],
        }
    ).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("label", "folder"), [("general", "general-lite"), ("reasoning", "reasoning-lite")])
def test_a_lite_folder_name_wins_over_the_label(tmp_path, label, folder):
    (run,) = read_runs(_runs(tmp_path, label, folder))
    lite = LABEL_PROFILES[folder]
    assert run.stages == tuple(zip(lite["rates"], lite["durations"], strict=True))
    assert run.stages != tuple(zip(LABEL_PROFILES[label]["rates"], LABEL_PROFILES[label]["durations"], strict=True))
    assert any(f"folder name {folder!r}: the folder's used" in n for n in run.notes)
    assert not any("ambiguous" in n for n in run.notes)


def test_reasoning_lite_keeps_reasonings_lengths_at_general_lites_load_scale():
    lite, full = LABEL_PROFILES["reasoning-lite"], LABEL_PROFILES["reasoning"]
    assert (lite["input"], lite["output"]) == (full["input"], full["output"])
    scale = max(LABEL_PROFILES["general-lite"]["rates"]) / max(LABEL_PROFILES["general"]["rates"])
    assert lite["rates"][0] == pytest.approx(scale * full["rates"][0])


def test_another_disagreement_keeps_the_label_and_says_so(tmp_path):
    (run,) = read_runs(_runs(tmp_path, "general", "codegen"))
    general = LABEL_PROFILES["general"]
    assert run.stages == tuple(zip(general["rates"], general["durations"], strict=True))
    assert "workload ambiguous: label 'general', folder name 'codegen'" in run.notes
