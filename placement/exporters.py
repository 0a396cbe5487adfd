"""`PlacementPlan` in the files serving engines load, with the launch flags that go with them.

Formats (`FORMATS`), each checked against what its consumer requires before anything is written, each file written
whole or not at all (`model.outputs.write_file`):

- ``sglang``: ``sglang_expert_location.json`` = ``{"physical_to_logical_map": [num_hidden_layers][S]}`` for
  ``--init-expert-location`` (sgl-project/sglang python/sglang/srt/eplb/expert_location.py,
  ``compute_initial_expert_location_metadata``: the dict is passed as ``**kwargs`` to ``init_by_mapping``, so no
  other key is allowed; rows are decoder layers, dense ones filled with ``arange(S) % N``).
- ``eplb``: DeepSeek EPLB's ``rebalance_experts`` result (github.com/deepseek-ai/EPLB) ``phy2log`` [L, S],
  ``log2phy`` [L, N, max replicas] (-1 padded), ``logcnt`` [L, N] as ``eplb_plan.npz`` and ``eplb_plan.json``.
- ``vllm``: ``vllm_expert_map.json`` = vLLM's ``EplbState.physical_to_logical_map`` [MoE layers][S]
  (vllm/distributed/eplb/eplb_state.py) with ``num_redundant_experts`` and ``num_logical_experts``. Upstream vLLM's
  ``EPLBConfig`` (vllm/config/parallel.py) has no field that loads a map from a file (PRs #14544 and #26176 were
  closed, #53022 is open), so the flags only set the same redundancy; the file is for evaluation and patched loaders.
- ``vllm-ascend``: ``vllm_ascend_expert_map.json`` for ``eplb_config.expert_map_path`` (vllm-project/vllm-ascend
  vllm_ascend/eplb/core/eplb_utils.py ``expert_file_to_tensor``): ``{"moe_layer_count", "layer_list": [{"layer_id",
  "device_count", "device_list": [{"device_id", "device_expert"}]}]}``, layers by MoE ordinal, devices by EP rank.
- ``trtllm``: ``trtllm_load_balancer.yaml`` = TensorRT-LLM's ``MoeLoadBalancerConfig`` (tensorrt_llm/llmapi/
  llm_args.py) ``{num_slots, initial_global_assignments: {decoder layer index: [S]}, layer_updates_per_iter: 0}``
  and ``trtllm_extra_llm_api_options.yaml`` pointing ``moe_config.load_balancer`` at it.

MTP layers (DeepSeek-V3's layer 61, `PlacementPlan.mtp_layers`): TensorRT-LLM builds the MTP layer as
``DeepseekV3MTP(model_config, num_hidden_layers + i, ...)`` (tensorrt_llm/_torch/models/modeling_deepseekv3.py,
modeling_speculative.py) and its MoE asks ``MoeLoadBalancerConfig.get_layer_initial_global_assignments(layer_idx)``,
which raises ``KeyError`` for a missing layer (tensorrt_llm/llmapi/llm_args.py): so ``trtllm`` gets one entry per
MTP layer, keyed ``num_hidden_layers + i``, holding the last MoE layer's plan (routing statistics cover the decoder
layers only; the MTP layer follows the last one). SGLang needs none: only the target worker reads
``--init-expert-location`` (python/sglang/srt/model_executor/model_runner.py: ``if not self.is_draft_worker``) with
one row per decoder layer; the NextN draft shares that global metadata (sgl-project/sglang PR #16044). vLLM loads
no map from a file, and its EPLB keeps a draft model's experts as a model of their own (vllm-project/vllm PR #57549,
DSpark drafts), so its file stays [MoE layers][S]; vLLM-Ascend's and EPLB's files also stay per MoE layer (not
checked for MTP).

Slot convention everywhere: GPU (EP rank) g holds slots ``g*S/G .. (g+1)*S/G - 1``.
"""

from __future__ import annotations

import io
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from moesim.model.errors import MoesimError
from moesim.placement.plan import PlacementPlan

FORMATS = ("sglang", "eplb", "vllm", "vllm-ascend", "trtllm")
FILES = {
    "sglang": ("sglang_expert_location.json",),
    "eplb": ("eplb_plan.npz", "eplb_plan.json"),
    "vllm": ("vllm_expert_map.json",),
    "vllm-ascend": ("vllm_ascend_expert_map.json",),
    "trtllm": ("trtllm_extra_llm_api_options.yaml", "trtllm_load_balancer.yaml"),
}


def export_plan(plan: PlacementPlan, fmt: str, out_dir: str | Path, final_dir: str | Path | None = None) -> list[Path]:
    """Write ``plan`` in engine format ``fmt`` under ``out_dir``; returns the files, first the one to give
    `launch_flags` (for ``trtllm`` the extra-options YAML, which names the load-balancer YAML by absolute path).

    Nothing is written unless the plan passes the consumer's checks; each file is written whole or not at all
    (`model.outputs.write_file`), the file the others name last. ``final_dir``: where the files will live when
    ``out_dir`` is a staging folder renamed into place later (a file naming another names it there); default
    ``out_dir``.
    """
    from moesim.model.outputs import write_file

    _check_fmt(fmt)
    plan.validate()
    check_no_duplicates(plan, f"{fmt} export")
    _check_rows(plan.phys_to_log, plan.num_experts, plan.num_gpus, f"{fmt} export")
    out_dir = Path(out_dir)
    final = Path(final_dir) if final_dir is not None else out_dir
    paths = [out_dir / name for name in FILES[fmt]]
    contents = _RENDER[fmt](plan, [final / name for name in FILES[fmt]])
    for p, data in reversed(list(zip(paths, contents, strict=True))):
        write_file(p, lambda tmp, data=data: Path(tmp).write_bytes(data))
    return paths


def launch_flags(plan: PlacementPlan, fmt: str, file_path: str | Path) -> str:
    """The engine command-line flags that load ``file_path`` (written by `export_plan`), for a shell."""
    _check_fmt(fmt)
    f, g, r = shlex.quote(str(file_path)), plan.num_gpus, plan.num_redundant
    if fmt == "sglang":  # server_args.py: deepep forces ep_size = tp_size; static dispatch needs every expert placed
        flags = (
            f"--init-expert-location {f} --ep-num-redundant-experts {r} --ep-dispatch-algorithm static "
            f"--tp-size {g} --ep-size {g} --moe-a2a-backend deepep"
        )
        if plan.num_nodes > 1:
            flags += f" --nnodes {plan.num_nodes}  # plus --node-rank and --dist-init-addr on each node"
        return flags
    if fmt == "eplb":
        return f"# {f}: DeepSeek EPLB (phy2log, log2phy, logcnt) arrays; no engine reads it from the command line"
    if fmt == "vllm":
        cfg = shlex.quote(json.dumps({"num_redundant_experts": r}))
        return (
            f"--tensor-parallel-size {g} --enable-expert-parallel --enable-eplb --eplb-config {cfg}  "
            f"# upstream vLLM cannot load {f} (no expert-map file option); it starts from its linear placement "
            "with the same redundancy and rebalances online"
        )
    if fmt == "vllm-ascend":
        cfg = shlex.quote(json.dumps({"eplb_config": {"expert_map_path": str(file_path)}}))
        return f"--enable-expert-parallel --additional-config {cfg}"
    return f"--extra_llm_api_options {f}  # trtllm-serve / trtllm-bench with EP size {g}"


def read_plan(
    path: str | Path,
    fmt: str,
    num_experts: int,
    num_gpus: int,
    gpus_per_node: int,
    moe_layer_ids: list[int] | None = None,
    num_hidden_layers: int | None = None,
) -> PlacementPlan:
    """Read a plan back from a file `export_plan` wrote (or an engine's own file in that format).

    For ``sglang`` (rows per decoder layer) ``moe_layer_ids`` picks the MoE rows (default: all rows);
    for ``trtllm`` the layer keys are the decoder indices (``path`` may also be the extra-options YAML).
    """
    _check_fmt(fmt)
    path = Path(path)
    try:
        p2l, layer_ids = _PARSE[fmt](path, num_experts, num_gpus)
    except MoesimError:
        raise
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise MoesimError(f"cannot read {path} as a {fmt} expert placement ({detail})", _HINT[fmt]) from None
    if fmt == "sglang" and moe_layer_ids:
        if max(moe_layer_ids) >= len(p2l):
            raise MoesimError(
                f"{path}: {len(p2l)} rows but MoE layer {max(moe_layer_ids)}", "give num_hidden_layers rows"
            )
        num_hidden_layers = num_hidden_layers or len(p2l)
        p2l = [p2l[i] for i in moe_layer_ids]
    mtp = 0
    cut = num_hidden_layers or (max(moe_layer_ids) + 1 if moe_layer_ids else 0)
    if layer_ids is not None and cut and layer_ids[-1] >= cut:  # TensorRT-LLM's MTP entries, keyed past the decoder
        keep = [i for i, k in enumerate(layer_ids) if k < cut]
        mtp, p2l, layer_ids = len(layer_ids) - len(keep), [p2l[i] for i in keep], [layer_ids[i] for i in keep]
    if layer_ids is not None and moe_layer_ids and list(moe_layer_ids) != layer_ids:
        raise MoesimError(f"{path}: layers {layer_ids} but moe_layer_ids {list(moe_layer_ids)}", "name the same model")
    ids = list(moe_layer_ids or layer_ids or range(len(p2l)))
    if len(ids) != len(p2l):
        raise MoesimError(f"{path}: {len(p2l)} MoE layers but {len(ids)} moe_layer_ids", "give one id per MoE layer")
    rows = np.asarray(p2l, dtype=np.int64)
    _check_rows(rows, num_experts, num_gpus, str(path))
    return PlacementPlan(
        rows, num_experts, num_gpus, gpus_per_node, ids, num_hidden_layers or 0, method=f"read:{fmt}", mtp_layers=mtp
    )


# checks -------------------------------------------------------------------------------------------------------------
_HINT = {
    "sglang": 'expected {"physical_to_logical_map": [[...] per decoder layer]}',
    "eplb": "expected phy2log / log2phy / logcnt arrays (eplb_plan.npz or .json)",
    "vllm": "expected the vllm_expert_map.json moesim writes",
    "vllm-ascend": "expected {moe_layer_count, layer_list: [{device_list: [{device_expert}]}]}",
    "trtllm": "expected a load_balancer YAML with num_slots and initial_global_assignments",
}


def check_no_duplicates(plan: PlacementPlan, what: str) -> None:
    """Refuse a plan with two replicas of one logical expert on one GPU (SGLang and TensorRT-LLM load it but waste
    the slot; vLLM-Ascend's loader collapses it), naming the first MoE layer, GPU and expert."""
    from moesim.placement.baselines import duplicate_slots

    bad = duplicate_slots(plan.phys_to_log, plan.num_gpus)
    if bad:
        layer, gpu, e = bad[0]
        raise MoesimError(
            f"{what}: MoE layer {layer} puts two replicas of expert {e} on GPU {gpu} ({len(bad)} such GPUs in all)",
            "re-plan with moesim place (its plans never double an expert on a GPU)",
        )


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise MoesimError(f"unknown placement format {fmt!r}", f"use one of {', '.join(FORMATS)}")


def _check_rows(rows: Any, n: int, g: int, what: str) -> None:
    """What every consumer requires: a rectangular [L, S] map, S a multiple of G (SGLang's, TRT-LLM's asserts),
    every expert in every layer (SGLang static dispatch, TRT-LLM ``set(...) == set(range(N))``)."""
    try:
        rows = np.asarray(rows, dtype=np.int64)
    except (TypeError, ValueError):
        raise MoesimError(f"{what}: layers have different numbers of slots", "give S slots in every layer") from None
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] < n or rows.shape[1] % g:
        raise MoesimError(
            f"{what}: map of shape {list(rows.shape)} for {n} experts on {g} GPUs",
            f"give >= {n} slots per layer, a multiple of {g}",
        )
    for layer, row in enumerate(rows):
        if set(row.tolist()) != set(range(n)):
            raise MoesimError(f"{what}: MoE layer {layer} does not hold exactly experts 0..{n - 1}", "fix the plan")


# writers: plan -> file contents (bytes, in FILES order) -------------------------------------------------------------
def _json(obj: Any) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _render_sglang(plan: PlacementPlan, paths: list[Path]) -> list[bytes]:
    return [_json({"physical_to_logical_map": plan.dense_rows().tolist()})]


def _render_eplb(plan: PlacementPlan, paths: list[Path]) -> list[bytes]:
    """EPLB's tuple. Note: EPLB orders an expert's replicas in ``log2phy`` by replica rank; here by slot order."""
    arrays = {"phy2log": plan.phys_to_log, "log2phy": plan.log2phy(), "logcnt": plan.logcnt()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return [buf.getvalue(), _json({k: v.tolist() for k, v in arrays.items()})]


def _render_vllm(plan: PlacementPlan, paths: list[Path]) -> list[bytes]:
    return [
        _json(
            {
                "physical_to_logical_map": plan.phys_to_log.tolist(),
                "num_redundant_experts": plan.num_redundant,
                "num_logical_experts": plan.num_experts,
            }
        )
    ]


def _render_vllm_ascend(plan: PlacementPlan, paths: list[Path]) -> list[bytes]:
    layers = [
        {
            "layer_id": i,
            "device_count": plan.num_gpus,
            "device_list": [{"device_id": g, "device_expert": e.tolist()} for g, e in enumerate(per_gpu)],
        }
        for i, per_gpu in enumerate(plan.gpu_experts())
    ]
    return [_json({"moe_layer_count": plan.num_layers, "layer_list": layers})]


def _render_trtllm(plan: PlacementPlan, paths: list[Path]) -> list[bytes]:
    """Int keys (decoder-layer indices, ``Dict[int, List[int]]``) and flow-style lists, as the generator writes."""
    keyed = list(zip(plan.moe_layer_ids, plan.phys_to_log, strict=True))
    keyed += [(plan.num_hidden_layers + i, plan.phys_to_log[-1]) for i in range(plan.mtp_layers)]  # MTP: see top
    rows = "".join(f"  {int(d)}: {json.dumps(r.tolist())}\n" for d, r in keyed)
    balancer = f"num_slots: {plan.num_slots}\ninitial_global_assignments:\n{rows}layer_updates_per_iter: 0\n"
    options = {"enable_attention_dp": True, "moe_config": {"load_balancer": str(paths[1].resolve())}}
    return [yaml.safe_dump(options, sort_keys=False).encode(), balancer.encode()]


_RENDER: dict[str, Callable[[PlacementPlan, list[Path]], list[bytes]]] = {
    "sglang": _render_sglang,
    "eplb": _render_eplb,
    "vllm": _render_vllm,
    "vllm-ascend": _render_vllm_ascend,
    "trtllm": _render_trtllm,
}


# readers: file -> (rows [L][S], layer ids or None) ------------------------------------------------------------------
def _parse_sglang(path: Path, n: int, g: int) -> tuple[list, list[int] | None]:
    d = json.loads(path.read_text())
    if not isinstance(d, dict) or set(d) != {"physical_to_logical_map"}:
        raise MoesimError(f"{path}: keys {list(d)[:5]} (SGLang accepts only physical_to_logical_map)", _HINT["sglang"])
    return d["physical_to_logical_map"], None


def _parse_eplb(path: Path, n: int, g: int) -> tuple[list, list[int] | None]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in ("phy2log", "log2phy", "logcnt")}
    else:
        d = {k: np.asarray(v) for k, v in json.loads(path.read_text()).items()}
    p2l = np.asarray(d["phy2log"], dtype=np.int64)
    check = PlacementPlan(p2l, n, g, g)
    if not (np.array_equal(d["logcnt"], check.logcnt()) and np.array_equal(d["log2phy"], check.log2phy())):
        raise MoesimError(f"{path}: logcnt / log2phy disagree with phy2log", "write all three from one plan")
    return p2l.tolist(), None


def _parse_vllm(path: Path, n: int, g: int) -> tuple[list, list[int] | None]:
    d = json.loads(path.read_text())
    rows = d["physical_to_logical_map"]
    slots = len(rows[0]) if rows else 0
    if int(d.get("num_logical_experts", n)) != n or int(d.get("num_redundant_experts", slots - n)) != slots - n:
        raise MoesimError(f"{path}: expert counts disagree with the {n}-expert model", _HINT["vllm"])
    return rows, None


def _parse_vllm_ascend(path: Path, n: int, g: int) -> tuple[list, list[int] | None]:
    d = json.loads(path.read_text())
    layers = d["layer_list"]
    if int(d["moe_layer_count"]) != len(layers):
        raise MoesimError(
            f"{path}: moe_layer_count {d['moe_layer_count']} but {len(layers)} layers", _HINT["vllm-ascend"]
        )
    if any(len(layer["device_list"]) != g for layer in layers):
        raise MoesimError(f"{path}: a layer does not list {g} devices", "export for the same number of GPUs")
    return [[e for dev in layer["device_list"] for e in dev["device_expert"]] for layer in layers], None


def _parse_trtllm(path: Path, n: int, g: int) -> tuple[list, list[int] | None]:
    d = yaml.safe_load(path.read_text())
    if isinstance(d, dict) and "moe_config" in d:  # the extra-options file: follow load_balancer
        lb = d["moe_config"]["load_balancer"]
        d = yaml.safe_load((path.parent / lb).read_text()) if isinstance(lb, str) else lb
    assign = d["initial_global_assignments"]
    if not all(isinstance(k, int) for k in assign):
        raise MoesimError(f"{path}: initial_global_assignments keys must be int layer indices", _HINT["trtllm"])
    if any(len(v) != int(d["num_slots"]) for v in assign.values()):
        raise MoesimError(f"{path}: an assignment list is not num_slots={d['num_slots']} long", _HINT["trtllm"])
    keys = sorted(assign)
    return [assign[k] for k in keys], keys


_PARSE: dict[str, Callable[[Path, int, int], tuple[list, list[int] | None]]] = {
    "sglang": _parse_sglang,
    "eplb": _parse_eplb,
    "vllm": _parse_vllm,
    "vllm-ascend": _parse_vllm_ascend,
    "trtllm": _parse_trtllm,
}
