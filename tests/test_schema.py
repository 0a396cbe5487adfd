"""``moesim schema``: the input files' JSON Schemas, the generated configuration reference, and the schemas of
every command's ``--json`` summary (each command run on a small input and its output validated)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from moesim.dashboard.cli import main
from moesim.dashboard.json_schemas import (
    CONFIG_KINDS,
    OUTPUT_SCHEMAS,
    config_schema,
    output_schema,
    reference_markdown,
)
from moesim.model.errors import MoesimError
from moesim.sim.serving.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
REFERENCE = EXAMPLES / "CONFIG_REFERENCE.md"
REGENERATE = "moesim schema --markdown > examples/CONFIG_REFERENCE.md"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _kind(path: Path) -> str:
    return "training" if path.name.startswith("train-") else "sweep" if path.name.startswith("sweep-") else "serving"


def _errors(schema: dict, doc: object) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


def _properties(schema: dict):
    """(object name, key, property) of the root and every ``$defs`` object."""
    for name, sub in [("root", schema), *schema.get("$defs", {}).items()]:
        for key, prop in sub.get("properties", {}).items():
            yield name, key, prop


def _numeric(prop: dict) -> bool:
    kinds = [prop, *prop.get("anyOf", [])]
    return any(p.get("type") in ("number", "integer") and "enum" not in p for p in kinds)


# ---------------------------------------------------------------- input files


@pytest.mark.parametrize("kind", list(CONFIG_KINDS))
def test_every_key_has_a_type_a_description_and_numbers_a_unit(kind):
    schema = config_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    keys = list(_properties(schema))
    assert len(keys) > 20
    undocumented = [f"{name}.{key}" for name, key, prop in keys if len(prop.get("description", "")) < 8]
    assert not undocumented, f"add a description (Field or the class's Attributes: docstring) for {undocumented}"
    unitless = [f"{n}.{k}" for n, k, p in keys if _numeric(p) and "x-unit" not in p and k != "seed"]
    assert not unitless, f"give these numeric keys a unit (dashboard/json_schemas.py UNITS): {unitless}"
    typeless = [f"{n}.{k}" for n, k, p in keys if not ({"type", "$ref", "anyOf", "enum", "const"} & set(p))]
    assert not typeless, typeless


def test_units_and_defaults_come_through():
    serving = config_schema("serving")
    slo = serving["$defs"]["SloSpec"]["properties"]["ttft_s"]
    assert slo["x-unit"] == "s" and slo["default"] is None
    engine = serving["$defs"]["EngineSpec"]["properties"]
    assert engine["max_batch"]["default"] == 256 and engine["max_tokens"]["x-unit"] == "tokens"
    assert serving["$defs"]["Workload"]["properties"]["rate"]["x-unit"] == "req/s"
    assert serving["required"] == ["model"]
    assert _errors(serving, {"model": "mixtral-8x7b", "precision": {"weight": "fp8"}})  # weights, kv_cache, ...
    assert not _errors(serving, {"model": "mixtral-8x7b", "precision": {"weights": "fp8", "kv_cache": "fp8"}})
    training = config_schema("training")
    assert set(training["required"]) == {"model", "batch"}
    assert training["$defs"]["TrainActivations"]["properties"]["offload_gbps"]["x-unit"] == "GB/s"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_validates_against_its_schema(path):
    doc = yaml.safe_load(path.read_text())
    assert _errors(config_schema(_kind(path)), doc) == []


@pytest.mark.parametrize(
    "change, where",
    [
        (lambda d: d.update(modle="x"), "modle"),  # a typo: unknown keys are errors
        (lambda d: d.pop("model"), "model"),
        (lambda d: d.update(engine={"max_batch": 0}), "max_batch"),
        (lambda d: d.update(slo={"ttft_s": "fast"}), "ttft_s"),
        (lambda d: d.update(router="random"), "router"),
        (lambda d: d["workload"].update(arrivals="poisson"), "arrivals"),
    ],
)
def test_the_schema_refuses_what_the_models_refuse(change, where):
    doc = yaml.safe_load((EXAMPLES / "mixtral-8x7b-ep8.yaml").read_text())
    change(doc)
    errors = _errors(config_schema("serving"), doc)
    assert errors and any(where in e for e in errors), errors
    with pytest.raises(MoesimError):
        parse_scenario(doc)


def test_sweep_axes_are_named():
    doc = yaml.safe_load((EXAMPLES / "sweep-mixtral-gpu-choice.yaml").read_text())
    doc["axes"]["gpu_count"] = [1, 2]
    assert _errors(config_schema("sweep"), doc)


def test_the_reference_page_matches_the_models():
    assert REFERENCE.exists(), f"examples/CONFIG_REFERENCE.md is missing; generate it: {REGENERATE}"
    assert REFERENCE.read_text() == reference_markdown(), (
        f"examples/CONFIG_REFERENCE.md differs from the models; regenerate it: {REGENERATE}"
    )


def test_the_reference_page_lists_every_key():
    page = reference_markdown()
    for kind in CONFIG_KINDS:
        for _, key, _ in _properties(config_schema(kind)):
            assert f"| `{key}` |" in page, key


def test_schema_command(capsys):
    code, out, _ = _cli(capsys, "schema", "training", "--json")
    assert code == 0 and json.loads(out) == config_schema("training") and out.count("\n") == 1
    code, out, _ = _cli(capsys, "schema", "output:simulate")
    assert code == 0 and json.loads(out)["required"] == OUTPUT_SCHEMAS["simulate"]["required"]
    code, out, _ = _cli(capsys, "schema", "--markdown")
    assert code == 0 and out == reference_markdown()
    code, out, err = _cli(capsys, "schema", "scenario")
    assert code == 1 and out == "" and err.startswith("error: schema: unknown kind 'scenario'") and "serving" in err
    code, _, err = _cli(capsys, "schema", "output:nope")
    assert code == 1 and err.startswith("error:")
    code, _, err = _cli(capsys, "schema")
    assert code == 1 and "serving" in err


# ---------------------------------------------------------------- --json outputs

SCENARIO = """
model: mixtral-8x7b
gpu: H100-SXM
layout: {tp: 2}
replicas: 1
workload: {arrival: poisson, rate: 2, requests: 40, input: 128, output: 32}
slo: {ttft_s: 2.0, tpot_s: 0.1}
"""
EP_SCENARIO = """
model: mixtral-8x7b
gpu: H100-SXM
layout: {tp: 1, dp_attn: 8, ep: 8}
workload: {arrival: poisson, rate: 4, requests: 40, input: 128, output: 16}
"""
SWEEP = """
name: tiny
base: {model: mixtral-8x7b, workload: {arrival: poisson, requests: 50, input: 128, output: 32},
       slo: {ttft_s: 2.0, tpot_s: 0.1}}
axes: {gpu: [H100-SXM], gpus: [2], layout: [{tp: 2}], rate: [1, 4]}
"""
TRAIN = """
model: qwen3-30b-a3b
gpu: H100-SXM
nodes: 1
layout: {tp: 1, pp: 1, ep: 8}
batch: {global_batch: 16, micro_batch: 1, seq_len: 1024}
"""
#: TEST INPUT: one staged run with invented latencies (the format of tests/test_validate.py).
RUNS = (
    "experiment_id,model,gpu,tp,max_num_seqs,max_num_batched_tokens,per_request_file,stage_rates_req_per_s,"
    "stage_durations_s,input_len_mean_tokens,output_len_mean_tokens,e2e_mean_ms,ttft_mean_ms,n_requests_failed,"
    "tpot_derived_mean_ms\n"
    "c,meta-llama/Llama-3.1-8B-Instruct,A100-80GB,2,64,2048,,2;4,5;5,400,20,380,50,0,17.3\n"
)
TABLES = ROOT / "profiling" / "data" / "h100-sxm" / "quick-bf16"

#: command -> (its schema, argv given the tmp folder, the cost model expected in the summary or None)
RUNS_OF = {
    "simulate-des": ("simulate", lambda t: ["simulate", str(t / "sc.yaml")], "roofline"),
    "simulate-analytical": (
        "simulate",
        lambda t: ["simulate", str(t / "sc.yaml"), "--engine", "analytical"],
        "roofline",
    ),
    "train-roofline": ("train", lambda t: ["train", str(t / "train.yaml")], "roofline"),
    "train-calibrated": (
        "train",
        lambda t: ["train", str(EXAMPLES / "train-mixtral-8x7b-h100.yaml")],
        "calibrated:",
    ),
    "roofline": (
        "roofline",
        lambda t: ["roofline", "mixtral-8x7b", "--gpu", "H100-SXM", "--tp", "8", "--phase", "decode", "--batch", "64"],
        "roofline",
    ),
    "sweep": (
        "sweep",
        lambda t: ["sweep", str(t / "sw.yaml"), "--out", str(t / "swout"), "--workers", "1"],
        "roofline",
    ),
    "place": (
        "place",
        lambda t: ["place", "--stats", "synthetic", "--model", "mixtral-8x7b", "--gpus", "8", "--method", "eplb",
                   "--out", str(t / "pl")],
        "roofline",
    ),
    "validate": (
        "validate",
        lambda t: ["validate", str(t / "RUNS.csv"), "--engine", "analytical", "--out", str(t / "v")],
        "roofline",
    ),
    "drift": (
        "drift",
        lambda t: ["drift", str(t / "ep.yaml"), "--policy", "static", "--policy", "eplb:1", "--windows", "1",
                   "--window-requests", "8", "--window-tokens", "64"],
        "roofline",
    ),
    "calibrate": ("calibrate", lambda t: ["calibrate", str(TABLES), "--out", str(t / "cal.parquet")], None),
}  # fmt: skip


def test_every_output_schema_is_exercised():
    from test_json_stdout import COMMANDS  # tests/test_json_stdout.py validates the other commands' summaries

    assert {schema for schema, _, _ in RUNS_OF.values()} | {argv[0] for _, argv in COMMANDS} == set(OUTPUT_SCHEMAS)


@pytest.mark.parametrize("run", list(RUNS_OF))
def test_every_json_output_validates_against_its_schema(run, tmp_path, capsys):
    schema_name, argv, cost_model = RUNS_OF[run]
    (tmp_path / "sc.yaml").write_text(SCENARIO)
    (tmp_path / "sw.yaml").write_text(SWEEP)
    (tmp_path / "train.yaml").write_text(TRAIN)
    (tmp_path / "RUNS.csv").write_text(RUNS)
    (tmp_path / "ep.yaml").write_text(EP_SCENARIO)
    code, out, err = _cli(capsys, *argv(tmp_path), "--json")
    assert code == 0, err
    assert out.count("\n") == 1, "--json prints one JSON object on one line"
    doc = json.loads(out)
    schema = output_schema(schema_name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert _errors(schema, doc) == []
    if cost_model is not None:
        assert doc["cost_model"].startswith(cost_model)
    # the schema can fail: without a required key, or with one of the wrong type, the summary is refused
    first = schema["required"][0]
    assert _errors(schema, {k: v for k, v in doc.items() if k != first})
    assert _errors(schema, {**doc, first: [object.__name__]})


def test_roofline_reports_say_they_are_lower_bounds(tmp_path, capsys):
    (tmp_path / "sc.yaml").write_text(SCENARIO)
    code, out, _ = _cli(capsys, "simulate", str(tmp_path / "sc.yaml"), "--engine", "analytical")
    assert code == 0 and "lower bound" in out and "(roofline)" in out
    code, out, _ = _cli(capsys, "roofline", "deepseek-v3", "--cluster", "hgx-h200-x2", "--dp-attn", "16", "--ep", "16",
                        "--dtype", "fp8", "--batch", "512", "--ctx", "4096")  # fmt: skip
    assert code == 0 and "lower bound" in out
    assert "above 100%: an artefact" in " ".join(out.split())  # MoE-CAP's code counts S-MFU 7-8x too high here
    code, out, _ = _cli(capsys, "train", str(EXAMPLES / "train-mixtral-8x7b-h100.yaml"))
    assert code == 0 and "lower bound" not in out and "calibrated" in out
