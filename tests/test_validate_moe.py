"""``moesim validate`` on MoE runs: every preset is found under the Hugging Face id its config was read from (the
id a RUNS.csv names), so a measured Mixtral or DeepSeek run is simulated instead of refused."""

from __future__ import annotations

import re

from moesim.model import preset_names
from moesim.model.hardware import PRESET_DIR
from moesim.sim.serving.validate import HF_PRESETS, _model_name


def _sources() -> dict[str, str]:
    """slug -> Hugging Face id, from model/presets/SOURCES.md (its table rows and its bold section heads)."""
    text = (PRESET_DIR / "SOURCES.md").read_text()
    found = dict(re.findall(r"^\| ([a-z0-9.-]+) \| ([\w.-]+/[\w.-]+) \|", text, re.M))
    found.update({slug: hf for slug, hf in re.findall(r"^\*\*([a-z0-9.-]+) \(([\w.-]+/[\w.-]+)", text, re.M)})
    return found


def test_every_preset_maps_from_the_id_its_config_came_from():
    sources = _sources()
    assert set(sources) == set(preset_names())  # SOURCES.md documents every preset
    for slug, hf in sources.items():
        assert HF_PRESETS.get(hf) == slug, hf
    assert set(HF_PRESETS.values()) <= set(preset_names())
    assert _model_name("mistralai/Mixtral-8x7B-v0.1") == "mixtral-8x7b"
    assert _model_name("mixtral-8x7b") == "mixtral-8x7b"  # a preset name passes through
