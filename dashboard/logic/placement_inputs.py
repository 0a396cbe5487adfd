"""The Placement studio's inputs: model and GPU choices, routing statistics (synthetic or uploaded), layout checks.

Statistics are plain dicts: ``counts`` [L, N] (token, expert) pairs per MoE layer and routed expert, ``topk``
[T, L, k] int32 expert ids per token (or None), ``top_k``, ``source``, ``digest``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from moesim.model import MoesimError, list_gpus, load_model, preset_names
from moesim.placement import (
    RoutingStats,
    load_stats,
    place,
    synthetic_trace,
)

DEFAULT_MODEL = "mixtral-8x7b"
DEFAULT_GPU = "H100-SXM"


# models -------------------------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False)
def moe_presets() -> list[str]:
    """Names of the model presets with routed experts, sorted."""
    return [name for name in preset_names() if load_model(name).is_moe]


@st.cache_data(show_spinner=False)
def gpu_names() -> list[str]:
    """GPU keys the simulator knows, without the host CPU."""
    return [k for k in list_gpus() if k != "cpu"]


@st.cache_data(show_spinner=False)
def model_info(name: str) -> dict[str, Any]:
    """What placement needs of a preset: ``moe_layer_ids`` [L] (decoder index of each MoE layer), ``num_layers``
    (decoder layers), ``num_experts`` N, ``top_k``, ``n_group`` and ``topk_group`` (DeepSeek group routing)."""
    spec = load_model(name)
    if spec.moe is None or not spec.is_moe:
        raise MoesimError(f"model {name} has no MoE layers", "choose an MoE model")
    moe = spec.moe
    return {
        "moe_layer_ids": [i for i, m in enumerate(spec.moe_layers) if m],
        "num_layers": spec.num_layers,
        "num_experts": moe.num_experts,
        "top_k": moe.top_k,
        "n_group": moe.n_group,
        "topk_group": moe.topk_group if moe.n_group > 1 else 1,
    }


# routing statistics -------------------------------------------------------------------------------------------------
def _stats_dict(stats: RoutingStats, source: str) -> dict[str, Any]:
    topk = None if stats.topk is None else stats.topk.astype(np.int32)
    h = hashlib.blake2b(stats.counts.tobytes(), digest_size=12)
    if topk is not None:
        h.update(topk.tobytes())
    return {"counts": stats.counts, "topk": topk, "top_k": stats.top_k, "source": source, "digest": h.hexdigest()}


def _stats(d: dict[str, Any]) -> RoutingStats:
    """`RoutingStats` back from a statistics dict."""
    return RoutingStats(counts=d["counts"], top_k=d["top_k"], topk=d["topk"], source=d["source"])


@st.cache_data(show_spinner=False, max_entries=8)
def synthetic_stats(model: str, tokens: int, skew: float, seed: int) -> dict[str, Any]:
    """A synthetic per-token trace for ``model`` (power-law popularity with exponent ``skew``, layer-to-layer
    affinity, the model's group routing), as a statistics dict (see the module docstring)."""
    info = model_info(model)
    stats = synthetic_trace(
        len(info["moe_layer_ids"]),
        info["num_experts"],
        info["top_k"],
        tokens=tokens,
        alpha=skew,
        affinity=2.0,
        n_group=info["n_group"],
        topk_group=info["topk_group"],
        seed=seed,
    )
    return _stats_dict(stats, f"synthetic ({tokens:,} tokens, skew {skew:g}, seed {seed})")


def _safe_name(name: str, i: int) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name).lstrip(".") or "upload"
    return base if i == 0 else f"{i}_{base}"


@st.cache_data(show_spinner=False, max_entries=8)
def uploaded_stats(model: str, files: tuple[tuple[str, bytes], ...]) -> dict[str, Any]:
    """Statistics from uploaded files (name, content), read with `placement.load_stats` for ``model``.

    One file is read as itself; several as the rank files of one run (merged). Raises `MoesimError` naming the
    uploaded file (not the temporary path) when the data cannot be read or does not fit the model.
    """
    if not files:
        raise MoesimError("no routing-statistics file uploaded", "upload a file")
    info = model_info(model)
    names = ", ".join(name for name, _ in files)
    with tempfile.TemporaryDirectory(prefix="moesim-upload-") as tmp:
        folder = Path(tmp)
        paths = []
        for i, (name, data) in enumerate(files):
            paths.append(folder / _safe_name(name, i))
            paths[-1].write_bytes(data)
        try:
            stats = load_stats(
                paths[0] if len(paths) == 1 else folder,
                num_experts=info["num_experts"],
                moe_layer_ids=info["moe_layer_ids"],
            )
            stats.check_shape(len(info["moe_layer_ids"]), info["num_experts"], f"model {model}")
        except MoesimError as exc:
            msg = exc.message.replace(f"{folder}{os.sep}", "").replace(str(folder), "the uploaded files")
            raise MoesimError(msg, exc.hint) from None
    return _stats_dict(stats, names)


def stats_caption(stats: dict[str, Any]) -> str:
    """One line describing a statistics dict."""
    layers, n = stats["counts"].shape
    trace = f"a trace of {stats['topk'].shape[0]:,} tokens" if stats["topk"] is not None else "counts only"
    k = f", top-{stats['top_k']}" if stats["top_k"] else ""
    return f"{stats['source']}: {layers} MoE layers x {n} experts{k}, {trace}, {stats['counts'].sum():,.0f} pairs."


# placement ----------------------------------------------------------------------------------------------------------
def node_size(num_gpus: int, gpus_per_node: int) -> int:
    """GPUs per node the expert-parallel group uses: a group smaller than a node sits on one node."""
    return min(num_gpus, gpus_per_node)


def check_layout(num_experts: int, num_gpus: int, gpus_per_node: int, redundant: int) -> None:
    """Raise the library's `MoesimError` when ``num_experts`` + ``redundant`` slots do not fit ``num_gpus`` GPUs in
    nodes of ``gpus_per_node`` (a round-robin placement of one dummy layer, microseconds)."""
    place(RoutingStats(np.ones((1, num_experts))), num_gpus, gpus_per_node, redundant, ("round-robin",))
