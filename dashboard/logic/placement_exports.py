"""The Placement studio's downloads: a plan written in an engine's format, and its launch flags.

A plan is ``PlacementPlan.to_dict``; files are returned as (name, bytes, MIME type, help).
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import streamlit as st

from moesim.placement import (
    FORMATS,
    PlacementPlan,
    export_plan,
    launch_flags,
)

# downloads ----------------------------------------------------------------------------------------------------------
_MIME = {".json": "application/json", ".yaml": "application/x-yaml", ".npz": "application/octet-stream"}


@st.cache_data(show_spinner=False, max_entries=64)
def export_file(plan: dict[str, Any], fmt: str) -> tuple[str, bytes, str, str]:
    """``plan`` (`PlacementPlan.to_dict`) in engine format ``fmt``: (download name, content, MIME type, the file
    the launch flags name).

    One file is offered as itself, several as a zip named ``{method}_{fmt}.zip``. TensorRT-LLM's options file names
    the balancer file by the absolute path it was written to; here that is the temporary folder, so the name is made
    relative (``trtllm_load_balancer.yaml``, resolved from where the server starts).
    """
    p = PlacementPlan.from_dict(plan)
    with tempfile.TemporaryDirectory(prefix="moesim-export-") as tmp:
        folder = Path(tmp).resolve()
        files = export_plan(p, fmt, folder)
        blobs = [(f.name, f.read_bytes().replace(f"{folder}{os.sep}".encode(), b"")) for f in files]
    first = blobs[0][0]
    if len(blobs) == 1:
        return first, blobs[0][1], _MIME.get(Path(first).suffix, "application/octet-stream"), first
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in blobs:
            z.writestr(name, data)
    return f"{p.method or 'plan'}_{fmt}.zip", buf.getvalue(), "application/zip", first


@st.cache_data(show_spinner=False, max_entries=16)
def flags_text(plan: dict[str, Any]) -> str:
    """The launch flags of every format for ``plan`` (`PlacementPlan.to_dict`), one commented block per engine,
    naming the files `export_file` offers."""
    p = PlacementPlan.from_dict(plan)
    blocks = [f"# moesim {p.method} plan: {p.num_layers} MoE layers, {p.num_slots} slots on {p.num_gpus} GPUs"]
    for fmt in FORMATS:
        name, _, _, first = export_file(plan, fmt)
        blocks.append(f"# {fmt} ({name})\n{launch_flags(p, fmt, first)}")
    return "\n\n".join(blocks) + "\n"
