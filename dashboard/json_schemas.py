"""JSON Schemas of moesim's input files and of its commands' ``--json`` summaries.

Input files (``moesim schema serving|training|sweep``): generated from the pydantic models that validate them
(`sim.serving.scenario.Scenario`, `sim.training.train_scenario.TrainScenario`, `sim.sweeps.sweep_spec.SweepSpec`).
Every key carries its type, default, description and, where it has one, its unit (``x-unit``). A key's description
is its ``Field(description=...)`` or, failing that, its entry in the model class's ``Attributes:`` docstring section
(or a ``#:`` comment above it), so the reference page never drifts from the code's own documentation; a key's unit
is its ``json_schema_extra={"unit": ...}``, else what its name says (``_s``: s, ``_gib``: GiB, ...), else `UNITS`.

Output summaries (``moesim schema output:<command>``): hand-written schemas of the keys every ``--json``
summary holds, with their types (tests/test_schema.py runs each command and validates its output).

`reference_markdown` renders examples/CONFIG_REFERENCE.md (regenerate: ``moesim schema --markdown >
examples/CONFIG_REFERENCE.md``).
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import textwrap
import typing
from typing import Any

from pydantic import BaseModel

from moesim.model.errors import MoesimError

#: Input-file kinds: the model that validates each, where its examples are, and what the file is.
CONFIG_KINDS: dict[str, tuple[str, str, str]] = {
    "serving": ("moesim.sim.serving.scenario:Scenario", "examples/*.yaml (not train-*/sweep-*)", "a serving scenario"),
    "training": ("moesim.sim.training.train_scenario:TrainScenario", "examples/train-*.yaml", "a training scenario"),
    "sweep": ("moesim.sim.sweeps.sweep_spec:SweepSpec", "examples/sweep-*.yaml", "a sweep file"),
}

#: Units from a key's name suffix (the repository's naming convention: units in names).
SUFFIX_UNITS: tuple[tuple[str, str], ...] = (
    ("_tok_s", "tokens/s"),
    ("_req_s", "req/s"),
    ("_gbps", "GB/s"),
    ("_gib", "GiB"),
    ("_bytes", "bytes"),
    ("_s", "s"),
)

#: Units of keys whose name does not say it, ``Class.key`` or ``key`` (every model). Counts of things name the
#: thing; ``1`` marks a dimensionless ratio or share.
UNITS: dict[str, str] = {
    "tp": "GPUs",
    "ep": "GPUs",
    "dp_attn": "GPUs",
    "pp": "stages",
    "etp": "GPUs",
    "cp": "GPUs",
    "dp": "GPUs",
    "nodes": "nodes",
    "gpus_per_node": "GPUs",
    "replicas": "replicas",
    "max_batch": "sequences",
    "max_tokens": "tokens",
    "block_size": "tokens",
    "mem_fraction": "1",
    "prefix_hit_rate": "1",
    "host": "s",
    "exponent": "1",
    "capacity_factor": "1",
    "max_violation": "1",
    "sequence_cv": "1",
    "cache_experts": "expert slots",
    "kv_fraction": "1",
    "host_bw": "bytes/s",
    "years": "years",
    "utilisation": "1",
    "rate": "req/s",
    "cv": "1",
    "concurrency": "clients",
    "requests": "requests",
    "time_scale": "1",
    "max_input": "tokens",
    "max_output": "tokens",
    "LengthDist.value": "tokens",
    "LengthDist.low": "tokens",
    "LengthDist.high": "tokens",
    "LengthDist.mean": "tokens",
    "LengthDist.min": "tokens",
    "LengthDist.max": "tokens",
    "LengthDist.values": "tokens",
    "LengthDist.weights": "1",
    "Workload.input": "tokens",
    "Workload.output": "tokens",
    "SharedPrefix.tokens": "tokens",
    "SharedPrefix.groups": "prefixes",
    "virtual_stages": "model chunks per GPU",
    "first_stage_layers": "layers",
    "last_stage_layers": "layers",
    "global_batch": "sequences",
    "micro_batch": "sequences",
    "seq_len": "tokens",
    "offload_gbps": "GB/s",
    "mtp_layers": "layers",
    "comm_sm_fraction": "1",
    "steps": "optimizer steps",
    "RateRange.start": "req/s",
    "RateRange.stop": "req/s",
    "RateRange.num": "rates",
    "max_gpus": "GPUs",
    "percentile": "percentile",
    "min_rate": "req/s",
    "max_rate": "req/s",
    "tolerance": "1",
    "max_requests": "requests",
    "time_limit": "s",
    "mip_gap": "1",
}


def _model(kind: str) -> type[BaseModel]:
    if kind not in CONFIG_KINDS:
        raise MoesimError(
            f"schema: unknown kind {kind!r}",
            f"use one of {', '.join(CONFIG_KINDS)}, or output:<command> ({', '.join(OUTPUT_SCHEMAS)})",
        )
    module, name = CONFIG_KINDS[kind][0].split(":")
    import importlib

    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------- descriptions from the models' docs


def _docstring_attributes(cls: type) -> dict[str, str]:
    """``name -> text`` from a Google-style ``Attributes:`` section of ``cls``'s docstring (``a, b: text`` too)."""
    doc = inspect.getdoc(cls) or ""
    found: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return found
    names: list[str] = []
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        m = re.match(r"^ {4}([A-Za-z_][\w, ]*):\s*(.*)$", line)
        if m:
            names = [n.strip() for n in m.group(1).split(",")]
            for n in names:
                found[n] = m.group(2).strip()
        elif line.strip() and names:
            for n in names:
                found[n] += " " + line.strip()
    return found


def _comment_docs(cls: type) -> dict[str, str]:
    """``name -> text`` from ``#:`` comments directly above a field in ``cls``'s source."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in src.splitlines():
        s = line.strip()
        if s.startswith("#:"):
            pending.append(s[2:].strip())
            continue
        m = re.match(r"^([A-Za-z_]\w*)\s*:", s)
        if m and pending:
            found[m.group(1)] = " ".join(pending)
        pending = []
    return found


def _submodels(tp: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a type annotation (``X | None``, ``list[X]``, ...)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(tp):
        out += _submodels(arg)
    return out


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``root`` by its fields, by class name."""
    seen: dict[str, type[BaseModel]] = {}
    todo = [root]
    while todo:
        cls = todo.pop()
        if cls.__name__ in seen:
            continue
        seen[cls.__name__] = cls
        for f in cls.model_fields.values():
            todo += _submodels(f.annotation)
    return seen


def _unit(cls_name: str, key: str, prop: dict[str, Any]) -> str | None:
    if "unit" in prop:
        return str(prop.pop("unit"))
    for name in (f"{cls_name}.{key}", key):
        if name in UNITS:
            return UNITS[name]
    for suffix, unit in SUFFIX_UNITS:
        if key.endswith(suffix):
            return unit
    return None


def _annotate(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """Fill each property's ``description`` (from the class's docs) and ``x-unit``; drop pydantic's titles."""
    docs = {**_docstring_attributes(cls), **_comment_docs(cls)}
    schema.pop("title", None)
    schema["description"] = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    for key, prop in schema.get("properties", {}).items():
        prop.pop("title", None)
        field = cls.model_fields.get(key)
        if not prop.get("description") and key in docs:
            prop["description"] = docs[key]
        if field is not None and field.description:
            prop["description"] = field.description
        if "description" in prop:  # one line, reST's double backticks as Markdown's single ones
            prop["description"] = " ".join(prop["description"].split()).replace("``", "`")
        unit = _unit(cls.__name__, key, prop)
        if unit:
            prop["x-unit"] = unit


def config_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a ``kind`` file: ``serving``, ``training`` or ``sweep``."""
    root = _model(kind)
    models = _models(root)
    schema = root.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    if kind == "serving":  # the workload mapping is validated by its own model (`sim.serving.workload`)
        _inline_workload(schema, defs, models)
        import dataclasses

        from moesim.model.dtypes import Precision

        names = [f.name for f in dataclasses.fields(Precision)]  # the keys `Precision(**precision)` takes
        schema["properties"]["precision"]["propertyNames"] = {"enum": names}
    _annotate(schema, root)
    module_doc = inspect.getdoc(inspect.getmodule(root)) or ""
    schema["description"] = " ".join(module_doc.split("\n\n")[0].split())
    for name, sub in defs.items():
        if name in models:
            _annotate(sub, models[name])
    if "LengthDist" in defs:  # an integer is shorthand for a fixed length (`LengthDist._shorthand`)
        for wl in ("Workload",):
            for key in ("input", "output"):
                prop = defs[wl]["properties"][key]
                ref = {"$ref": prop.pop("$ref")}
                prop["anyOf"] = [ref, {"type": "integer", "minimum": 1, "description": "a fixed length, tokens"}]
    if kind == "sweep":
        from moesim.sim.sweeps.sweep_spec import AXES

        axes = schema["properties"]["axes"]
        axes["propertyNames"] = {"enum": list(AXES)}
        base = schema["properties"]["base"]
        base.setdefault(
            "description",
            "the base serving scenario: a mapping of scenario keys (see 'moesim schema serving'), or the path of a "
            "scenario YAML relative to the sweep file",
        )
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"moesim {kind} file ({CONFIG_KINDS[kind][2]})"
    return schema


def _inline_workload(schema: dict[str, Any], defs: dict[str, Any], models: dict[str, type[BaseModel]]) -> None:
    from moesim.sim.serving.workload import Workload

    wl = Workload.model_json_schema(mode="validation")
    for name, sub in wl.pop("$defs", {}).items():
        defs[name] = sub
    defs["Workload"] = wl
    models.update(_models(Workload))
    prop = schema["properties"]["workload"]
    schema["properties"]["workload"] = {"$ref": "#/$defs/Workload", "description": prop.get("description", "")}


# ---------------------------------------------------------------- the reference page


def _type_text(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return f"object ([{_ref_name(prop['$ref'])}](#{_ref_name(prop['$ref']).lower()}))"
    if "anyOf" in prop:
        return " or ".join(_type_text(p, defs) for p in prop["anyOf"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return ", ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    t = prop.get("type", "any")
    if t == "array":
        return f"list of {_type_text(prop.get('items', {}), defs)}"
    if t == "object" and "additionalProperties" in prop and isinstance(prop["additionalProperties"], dict):
        return f"mapping of {_type_text(prop['additionalProperties'], defs)}"
    bounds = []
    for k, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if k in prop:
            bounds.append(f"{sym} {prop[k]:g}" if isinstance(prop[k], float) else f"{sym} {prop[k]:,}")
    return f"{t}{' (' + ', '.join(bounds) + ')' if bounds else ''}"


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _cell(text: str) -> str:
    """One table cell: one line, reST's double backticks as Markdown's single ones, pipes escaped."""
    return " ".join(str(text).split()).replace("``", "`").replace("|", "\\|")


def _default_text(prop: dict[str, Any], required: bool) -> str:
    if required:
        return "**required**"
    if "default" not in prop:
        return "(empty)"
    d = prop["default"]
    if isinstance(d, dict):  # a section: its keys that differ from null, when that is short
        d = {k: v for k, v in d.items() if v is not None}
        if len(json.dumps(d)) > 60:
            return "each key's default"
    return f"`{json.dumps(d)}`"


def _object_table(schema: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    rows = ["| key | type | unit | default | description |", "|---|---|---|---|---|"]
    required = set(schema.get("required", []))
    for key, prop in schema.get("properties", {}).items():
        rows.append(
            f"| `{key}` | {_cell(_type_text(prop, defs))} | {_cell(prop.get('x-unit', ''))} | "
            f"{_cell(_default_text(prop, key in required))} | {_cell(prop.get('description', ''))} |"
        )
    return rows


def reference_markdown() -> str:
    """The configuration reference page (examples/CONFIG_REFERENCE.md), generated from `config_schema`."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by `moesim schema --markdown > examples/CONFIG_REFERENCE.md`; do not edit by hand:",
        "     tests/test_schema.py fails when this page and the models disagree -->",
        "",
        "Every key of moesim's input files, generated from the pydantic models that validate them. Unknown keys are",
        "errors. `moesim schema serving|training|sweep --json` prints the same as a JSON Schema (draft 2020-12) an",
        "editor can validate YAML against (e.g. VS Code's YAML extension: "
        "`# yaml-language-server: $schema=serving.schema.json`).",
        "Units: `s` seconds, `req/s` requests per second, `1` a dimensionless ratio or share.",
        "",
    ]
    for kind, (_, examples, what) in CONFIG_KINDS.items():
        schema = config_schema(kind)
        defs = schema.get("$defs", {})
        lines += [f"## {kind}: {what}", "", f"`moesim schema {kind}`; examples: `{examples}`.", ""]
        lines += [_cell(schema["description"]), ""]
        lines += [*_object_table(schema, defs), ""]
        for name in _reachable(schema, defs):
            sub = defs[name]
            lines += [f"### {name}", "", _cell(sub.get("description", "")), ""]
            if sub.get("properties"):
                lines += [*_object_table(sub, defs), ""]
    return "\n".join(lines).rstrip() + "\n"


def _reachable(schema: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    """Names of the ``$defs`` reachable from ``schema``, in first-use order."""
    order: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref" and isinstance(v, str):
                    name = _ref_name(v)
                    if name not in order:
                        order.append(name)
                        walk(defs.get(name, {}))
                elif k != "$defs":
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema.get("properties", {}))
    return order


# ---------------------------------------------------------------- output schemas

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}
_ARR = {"type": "array"}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """An object schema: ``required`` keys and, when present, ``optional`` ones, with their schemas."""
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}, **extra}


#: The cost model a prediction came from: ``roofline`` (a lower bound, not a prediction) or a calibration's name.
COST_MODEL = {
    "type": "string",
    "minLength": 1,
    "description": "the cost model: 'roofline' (every time a lower bound) or 'calibrated:<file>'",
}

_LATENCY = {f"{k}_{q}_s": _NUM_OR_NULL for k in ("ttft", "tpot", "e2e") for q in ("mean", "p50", "p90", "p99")}
_ERRORS = _obj({"median_abs_error": _NUM_OR_NULL, "p90_abs_error": _NUM_OR_NULL, "runs": _INT})

#: ``--json`` summary schemas by command (``moesim schema output:<command>``): the keys every summary holds and
#: their types; a summary may hold more (engine-specific keys, keys added later).
OUTPUT_SCHEMAS: dict[str, dict[str, Any]] = {
    "simulate": _obj(
        {
            "engine": {"enum": ["des", "analytical"]},
            "cost_model": COST_MODEL,
            "requests": _INT,
            "completed": _INT,
            "failed": _NUM_OR_NULL,
            **_LATENCY,
            "throughput_req_s": _NUM,
            "throughput_tok_s": _NUM,
            "goodput_req_s": _NUM,
            "slo_attainment": _NUM_OR_NULL,
            "mean_batch": _NUM,
            "s_mbu": _NUM_OR_NULL,
            "s_mfu": _NUM_OR_NULL,
            "usd_per_mtok": _NUM_OR_NULL,
            "cost_basis": _STR,
            "energy_j_per_token": _NUM_OR_NULL,
            "gpus": _INT,
            "replicas": _INT,
            "simulated_s": _NUM,
            "step_breakdown": _OBJ,
            "wall_s": _NUM,
            "cost_provenance": _OBJ,
        }
    ),
    "train": _obj(
        {
            "name": _STR,
            "model": _STR,
            "gpu": _STR,
            "gpus": _INT,
            "layout": _STR,
            "cost_model": COST_MODEL,
            "step_s": _NUM,
            "tokens_per_s": _NUM,
            "tokens_per_s_per_gpu": _NUM,
            "mfu": _NUM,
            "s_mfu": _NUM,
            "s_mfu_peak_dtype": _STR,
            "model_tflops_per_gpu": _NUM,
            "mem_per_gpu_gib": _NUM,
            "mem_by_component_gib": {"type": "object", "additionalProperties": _NUM, "minProperties": 1},
            "fits": _BOOL,
            "memory_verdict": _STR,
            "breakdown": {"type": "object", "additionalProperties": _NUM, "minProperties": 1},
            "token_drop_frac": _NUM,
            "gpu_hours_per_btok": _NUM,
            "usd_per_btok": _NUM,
            "cost_basis": _STR,
            "microbatches": _INT,
            "work_ms_per_layer_microbatch": _NUM,
            "wall_s": _NUM,
            "kernel_sources": {
                "type": "object",
                "description": "how each kernel was timed: backward and fp8 kernels measured or assumed, and the "
                "forward kernels' time by source class (forward_share, summing to 1; forward: each op kind's source)",
                "properties": {
                    "forward_share": {"type": "object", "additionalProperties": _NUM},
                    "forward": {"type": "object", "additionalProperties": _STR},
                },
            },
        }
    ),
    "roofline": _obj(
        {
            "model": _STR,
            "gpu": _STR,
            "cluster": _obj({"name": _STR, "num_gpus": _INT, "gpus_per_node": _INT, "nodes": _INT}),
            "layout": _obj({"tp": _INT, "ep": _INT, "dp_attn": _INT, "pp": _INT, "gpus": _INT, "label": _STR}),
            "phase": {"enum": ["prefill", "decode"]},
            "batch": _INT,
            "tokens": _INT,
            "dtype": _STR,
            "kv_dtype": _STR,
            "cost_model": COST_MODEL,
            "fits": _BOOL,
            "step_s": _NUM,
            "tokens_per_s": _NUM,
            "stage_s": {"type": "array", "items": _NUM, "minItems": 1},
            "breakdown": {"type": "object", "additionalProperties": _NUM},
            "bound_shares": {"type": "object", "additionalProperties": _NUM},
            "memory": _obj(
                {
                    "fits": _BOOL,
                    "verdict": _STR,
                    "capacity_bytes": _NUM,
                    "usable_bytes": _NUM,
                    "weight_bytes": _NUM,
                    "kv_bytes": _NUM,
                    "kv_bytes_per_token": _NUM,
                }
            ),
            "cap": _obj(
                {
                    "s_per_token": _NUM,
                    "tokens_per_s": _NUM,
                    "smbu": _NUM,
                    "smfu": _NUM,
                    "smfu_peak_dtype": _STR,
                    "smbu_moecap": _NUM_OR_NULL,
                    "smfu_moecap": _NUM_OR_NULL,
                    "usd_per_mtok": _NUM,
                    "accuracy": _ARR,
                }
            ),
        }
    ),
    "sweep": _obj(
        {
            "name": _STR,
            "out": _STR,
            "engine": {"enum": ["analytical", "des"]},
            "cost_model": COST_MODEL,
            "points": _INT,
            "combinations": _INT,
            "pruned": {"type": "object", "additionalProperties": _INT},
            "evaluated_now": _INT,
            "done_before": _INT,
            "status": {"type": "object", "additionalProperties": _INT},
            "run_s": _NUM,
            "cap_table_top": {"type": "array", "items": _obj({"label": _STR})},
            "files": {"type": "array", "items": _STR},
            "wall_s": _NUM,
        }
    ),
    "place": _obj(
        {
            "stats": _STR,
            "model": {"type": ["string", "null"]},
            "layers": _INT,
            "experts": _INT,
            "gpus": _INT,
            "gpus_per_node": _INT,
            "redundant": _INT,
            "best": _STR,
            "methods": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": _obj(
                    {"max_load_ratio": _NUM, "balancedness": _NUM, "solve_s": _NUM, "status": _STR}
                ),
            },
            "exports": _OBJ,
            "out": _STR,
        },
        {"cost_model": COST_MODEL, "layer_cost": _OBJ},  # with --objective time (predicted layer times)
    ),
    "drift": _obj(
        {
            "cost_model": COST_MODEL,
            "info": _obj(
                {
                    "model": _STR,
                    "ep": _INT,
                    "redundant": _INT,
                    "windows": _INT,
                    "requests_per_window": _INT,
                    "engine": {"enum": ["des", "analytical"]},
                    "cost_model": COST_MODEL,
                    "expert_bytes": _NUM,
                }
            ),
            "policies": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": _obj(
                    {
                        "overall": _obj(
                            {
                                "ttft_mean_s": _NUM_OR_NULL,
                                "tpot_mean_s": _NUM_OR_NULL,
                                "e2e_mean_s": _NUM_OR_NULL,
                                "max_load_ratio": _NUM,
                                "migration_bytes": _NUM,
                                "pause_s": _NUM,
                            }
                        ),
                        "windows": {
                            "type": "array",
                            "minItems": 1,
                            "items": _obj(
                                {
                                    "window": _INT,
                                    "rebalanced": {"type": "boolean"},
                                    "max_load_ratio": _NUM,
                                    "migration_bytes": _NUM,
                                    "pause_s": _NUM,
                                    "ttft_mean_s": _NUM_OR_NULL,
                                    "tpot_mean_s": _NUM_OR_NULL,
                                    "e2e_mean_s": _NUM_OR_NULL,
                                }
                            ),
                        },
                    }
                ),
            },
        }
    ),
    "models": _obj(
        {
            "models": {
                "type": "array",
                "minItems": 1,
                "items": _obj({"name": _STR, "layers": _INT, "hidden": _INT, "experts": _INT, "total_params": _INT}),
            }
        }
    ),
    "gpus": _obj(
        {
            "gpus": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {"key": _STR, "peak_flops": _OBJ, "memory_gib": _NUM_OR_NULL, "memory_bandwidth": _NUM_OR_NULL}
                ),
            }
        }
    ),
    "clusters": _obj(
        {
            "clusters": {
                "type": "array",
                "minItems": 1,
                "items": _obj({"name": _STR, "gpu": _STR, "gpus_per_node": _INT, "nodes": _INT, "num_gpus": _INT}),
            }
        }
    ),
    "inspect": _obj(
        {
            "name": _STR,
            "layers": _INT,
            "hidden": _INT,
            "experts": _INT,
            "top_k": _INT,
            "total_params": _INT,
            "active_params": _INT,
            "by_component": _OBJ,
            "weight_bytes": _OBJ,
            "kv_bytes_per_token": _OBJ,
        }
    ),
    "import": _obj({"format": _STR, "out": _STR, "files": _ARR, "rows": _OBJ}, {"coverage": _OBJ, "mapped_s": _NUM}),
    "profile": _obj(
        {
            "out": _STR,
            "device": _STR,
            "mode": _STR,
            "rows": _OBJ,
            "tables": _OBJ,
            "peak_flops": _OBJ,
            "memory_bandwidth": _NUM,
            "wall_s": _NUM,
        }
    ),
    "demo": _obj(
        {
            "model": _STR,
            "cluster": _STR,
            "gpus": _INT,
            "cost_model": COST_MODEL,
            "runs": _OBJ,
            "serving": _OBJ,
            "plots": _ARR,
            "out_dir": _STR,
        }
    ),
    "fit-engine": _obj(
        {
            "out": _STR,
            "params": {"type": "array", "items": _STR},
            "values_s": _OBJ,
            "engine": {"enum": ["analytical", "des"]},
            "cost_model": COST_MODEL,
            "evaluations": _INT,
            "wall_s": _NUM,
        }
    ),
    "validate": _obj(
        {
            "runs": _INT,
            "runs_compared": _INT,
            "overload": _obj({"measured": _INT, "predicted": _INT, "both": _INT}),
            "engine": {"enum": ["analytical", "des"]},
            "cost_model": COST_MODEL,
            "e2e_mean_ms": _ERRORS,
            "ttft_mean_ms": _ERRORS,
            "itl_mean_ms": _ERRORS,
            "rows": {
                "type": "array",
                "items": _obj(
                    {
                        "run_id": _STR,
                        "model": _STR,
                        "gpu": _STR,
                        "status": _STR,
                        "measured_e2e_mean_ms": _NUM_OR_NULL,
                        "predicted_e2e_mean_ms": _NUM_OR_NULL,
                        "error_e2e_mean_ms": _NUM_OR_NULL,
                    }
                ),
            },
            "wall_s": _NUM,
        }
    ),
    "calibrate": _obj(
        {
            "fits": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "kind": _STR,
                        "dtype": _STR,
                        "impl": _STR,
                        "device": _STR,
                        "method": _STR,
                        "rows_fit": _INT,
                        "mape": _NUM_OR_NULL,
                    }
                ),
            },
            "sources": {"type": "array", "items": _STR},
            "out": _STR,
            "wall_s": _NUM,
        }
    ),
}


def output_schema(command: str) -> dict[str, Any]:
    """The JSON Schema of ``moesim <command> --json``'s summary."""
    if command not in OUTPUT_SCHEMAS:
        raise MoesimError(f"schema: no output schema for {command!r}", f"use one of {', '.join(OUTPUT_SCHEMAS)}")
    schema = copy.deepcopy(OUTPUT_SCHEMAS[command])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"moesim {command} --json"
    return schema


__all__ = ["CONFIG_KINDS", "OUTPUT_SCHEMAS", "config_schema", "output_schema", "reference_markdown"]
