"""The serving simulator against measured runs: ``moesim validate RUNS.csv``.

A RUNS.csv holds one measured serving deployment per row (the format of the reference data
``vllm-e2e-dense/experiments.csv``: extra columns are ignored). Each row becomes a serving scenario (model,
GPU, layout, engine settings, workload), runs through the simulator, and its predicted metrics are set against
the measured ones.

RUNS.csv columns (units in the names; a metric in seconds may be given as ``*_s`` instead of ``*_ms``):

=================================  ========  ====================================================================
column                             required  meaning
=================================  ========  ====================================================================
experiment_id                      yes       the run's name (unique)
model                              yes       Hugging Face id (mapped by `HF_PRESETS`), a moesim preset, or a
                                             config.json path
gpu                                yes       ``H100``, ``A100-80GB``, ``L40S`` (`GPU_NAMES`) or a moesim GPU key
tp                                 yes       tensor-parallel degree per replica
dp                                           data-parallel replicas (empty: 1)
max_num_seqs                                 vLLM ``--max-num-seqs`` (empty: vLLM's default for the GPU, 1024 on
                                             >= 70 GiB GPUs other than A100, else 256; vllm/engine/arg_utils.py
                                             get_batch_defaults)
max_num_batched_tokens                       tokens per step (empty: the same defaults, 8192 / 2048)
block_size                                   KV-cache block, tokens (empty: 16)
gpu_memory_utilization                       vLLM ``--gpu-memory-utilization`` (empty: 0.9)
kv_blocks_total_gpu                          recorded KV capacity, blocks (reported beside moesim's estimate,
                                             kv_blocks_moesim; not imposed: moesim sizes the cache from memory)
prefix_caching, chunked_prefill              booleans (empty: the engine profile's default / on)
cuda_graphs_enforce_eager                    boolean: ``--enforce-eager`` (empty: the profile's default)
engine_kind, vllm_version                    ``vllm`` (default) or ``sglang``; the engine version (empty: newest)
workload_label                                ``general``, ``codegen``, ``roleplay``, ``reasoning``,
                                             ``general-lite``, ``reasoning-lite``: the inference-perf profile of
                                             `LABEL_PROFILES`
workload_in_folder_name                      the workload in the run's folder name: ``<label>-lite`` there names
                                             the workload instead of the label (`_lite_folder`)
per_request_file                             parquet or CSV (path relative to RUNS.csv) with arrival_time_ms,
                                             input_tokens, output_tokens, has_error (and e2e_ms, ttft_ms):
                                             replayed; failed requests too when the client's timeout is known
                                             (their lengths from the prompt set, see below), else left out. Or
                                             the ``.json`` result of vLLM's ``benchmark_serving.py
                                             --save-result`` (`read_bench_json`)
client_timeout_s                             the load generator's total timeout per request, s (empty: 300 s
                                             when load_generator is inference-perf, aiohttp's default; else
                                             none): the simulator's clients give up as the measured ones did
stage_rates_req_per_s                        ``8;20``: Poisson load stages (without per_request_file)
per_stage_file                               parquet or CSV (path relative to RUNS.csv) with stage_index (0-based;
                                             negative rows, the whole run, are skipped), e2e_mean_ms, ttft_mean_ms
                                             and tpot_derived_mean_ms per load stage: compared stage by stage
                                             (`stage_rows`; without it, the per-request file's latencies)
stage_durations_s                            ``600;600``
input_len_mean_tokens                        mean prompt length of a staged workload
output_len_mean_tokens                       mean output length of a staged workload
sp_system_prompt_len_tokens                  shared system prompt: with prefix caching, the prefix hit rate is its
                                             whole blocks over the mean prompt (when the prompt set below is
                                             unknown)
dataset, resolved_sp_num_groups,             inference-perf's ``shared_prefix`` dataset: a finite set of
resolved_sp_num_prompts_per_group            groups x prompts_per_group prompts, request i sending prompt
                                             i mod that number (`PROMPT_SET`); with prefix caching each repeat
                                             finds its whole prompt's full blocks cached
sp_output_len_tokens, ignore_eos             the client's ``max_tokens`` and ``ignore_eos``: when both are set the
                                             engine generated ``max_tokens`` for every request (see below)
n_requests_failed                            > 0 marks the run overloaded (client time-outs); set against the
                                             simulator's failed requests (`sim.serving.workload` timeout_s)
e2e_mean_ms, ttft_mean_ms          yes       measured mean end-to-end latency and time to first token
tpot_derived_mean_ms                         (mean e2e - mean TTFT) / (mean output - 1): the per-token decode
                                             time ("ITL" in reports)
e2e_p90_ms, ttft_p90_ms                      measured P90s
=================================  ========  ====================================================================

A row's workload is, in order: the replayed ``per_request_file``; else the stages with the mean lengths; else the
label's profile (`LABEL_PROFILES`, an assumption that the report names). Predicted metrics are computed exactly as
the measured ones: means and P90s over completed requests, ITL as the ratio of means above.

A run with failed requests is overloaded: it is reported but left out of the error summary. Its clients gave up
(inference-perf: aiohttp's total timeout of 300 s), so the simulated clients give up after the same time
(``workload.timeout_s``) and the discrete-event engine aborts those requests as vLLM does: the report sets the
simulator's failed requests and the arrival of the first against the measured ones, and a run counts as predicted
overloaded when the simulator failed requests too. A replayed run then replays its failed requests as well (they were
sent and loaded the engine until they were aborted): a failed row records no lengths, so it takes its prompt's (the
same prompt of the set, below) or the mean successful prompt, and the generated length (``max_tokens`` under
ignore_eos, else the mean successful output).

The prompt set of inference-perf's shared_prefix dataset (kubernetes-sigs/inference-perf@
inference_perf/datagen/shared_prefix_datagen.py: ``_generate_prompts`` builds num_groups x num_prompts_per_group
prompts, each a group's system prompt and a question, once; ``load_lazy_data`` sends prompt ``data_index %
len(prompts)``): a run of thousands of requests repeats the same prompts, and an engine with prefix caching computes
only the last partial block of a repeat. The reference runs show it: their per-request input lengths repeat with
period 100 (10 x 10) in 98-99.7% of requests, and in the 9 runs that were not overloaded the mean TTFT of the first
100 requests (cold cache) is 1.25-2.9x that of the next 100 at the same load (e.g. CodeLlama-34B TP2 codegen: 72 ms
vs 44 ms). Replayed and staged runs with a known prompt set
get ``prefix_id`` = request index mod the set's size and ``prefix_tokens`` = the prompt (the shortest of that id's
rows), so the simulator's prefix cache (full blocks, LRU eviction) decides the hits; without one, the shared system
prompt's whole blocks are a declared hit rate.

Output lengths: inference-perf counts a request's output tokens by re-tokenising the streamed text on the client
(kubernetes-sigs/inference-perf@inference_perf/apis/completion.py ``process_response``: ``tokenizer.count_tokens(
output_text, add_special_tokens=False)``) and sends ``max_tokens`` with ``ignore_eos``, so vLLM generates
``max_tokens`` tokens for every request (it stops at max_tokens only). Text that does not round-trip (special tokens
a base model emits past its EOS, skipped in detokenisation) makes the count shorter: the Llama-2-7B runs count 195-209
tokens of 247-251 generated. The simulated requests generate ``max_tokens``; the metrics divide by the recorded
counts, as the study's ITL does (``output_measured``). Evidence in the data: inference-perf's own inter-event P90 (a
decode step, ``ip_itl_p90_ms``) is 9.2 ms in the Llama-2-7B codegen run against a derived ITL of 10.6 ms (x 1.15),
while CodeLlama-34B's, whose counts match ``max_tokens``, is 15.4 against 14.8 ms.

Speed: the discrete-event engine replays a 16,800-request run in about a minute (measured with the shipped vLLM
profile on a loaded 2-core machine: 74 s for Llama-2-7B, 39 s for CodeLlama-34B TP2; 180 s before host costs made
the steps longer and fewer); ``max_requests`` replays the first N arrivals of each run instead, and the measured
metrics are then recomputed over the same N requests from the per-request file (a staged run without one is
compared with its whole-run figures, and the report says so). The first N arrivals cover the first load stage
first: a subsample of a two-stage run under-represents its busier stage. The analytical engine solves each load
stage in closed form (about 0.1 s per run).

Units: latencies in ms in the reports (``*_ms``), s inside the simulator; rates in requests/s.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.model import CostModel, inputs
from moesim.model.errors import MoesimError

#: Hugging Face ids -> moesim presets: every preset under the id its config was read from (model/presets/SOURCES.md,
#: checked by tests/test_validate_moe.py), plus the Instruct twins whose config.json has the same architecture.
HF_PRESETS: dict[str, str] = {
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "codellama/CodeLlama-34b-Instruct-hf": "codellama-34b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "Qwen/Qwen3-14B": "qwen3-14b",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b",
    "mistralai/Mistral-Nemo-Instruct-2407": "mistral-nemo-12b",
    "01-ai/Yi-34B": "yi-34b",
    "meta-llama/Meta-Llama-3-8B": "llama-3-8b",
    "meta-llama/Meta-Llama-3-70B": "llama-3-70b",
    "mistralai/Mixtral-8x7B-v0.1": "mixtral-8x7b",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b",
    "mistralai/Mixtral-8x22B-v0.1": "mixtral-8x22b",
    "mistralai/Mixtral-8x22B-Instruct-v0.1": "mixtral-8x22b",
    "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "deepseek-ai/DeepSeek-V2-Lite": "deepseek-v2-lite",
    "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b",
    "Qwen/Qwen3-235B-A22B": "qwen3-235b-a22b",
    "Qwen/Qwen1.5-MoE-A2.7B": "qwen1.5-moe-a2.7b",
    "allenai/OLMoE-1B-7B-0924": "olmoe-1b-7b",
    "databricks/dbrx-base": "dbrx",
    "databricks/dbrx-instruct": "dbrx",
    "openai/gpt-oss-120b": "gpt-oss-120b",
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": "llama-4-scout",
    "meta-llama/Llama-4-Maverick-17B-128E-Instruct": "llama-4-maverick",
}

#: GPU names of the reference data -> moesim GPU keys (model/presets/gpus.yaml); the study's figures spec lists
#: "H100-80GB SXM, A100-80GB SXM, L40S".
GPU_NAMES: dict[str, str] = {"H100": "H100-SXM", "A100-80GB": "A100-SXM-80GB", "L40S": "L40S", "H200": "H200-SXM"}

#: inference-perf workload profiles by label (vllm-e2e-dense README, "Workload"): stages (req/s, s), mean prompt
#: and output tokens. Prompt = the mean measured prompt length of the replayed runs of that label (574-575, 591-593,
#: 786-787, 1081-1083 tokens; system prompt + question in the profile, tokenised); output = the profile's
#: sp_output_len. ``general-lite`` is "same token distributions as General at 6 rps peak" (the study's figures
#: spec); its stage rates are not recorded: assumed General's 8 -> 20 req/s shape scaled to a 6 req/s peak.
#: ``prompts``: the distinct prompts inference-perf's shared_prefix dataset cycles through; every run whose profile is
#: recorded resolved 10 groups x 10 prompts (the README: "results/config.yaml ... shows 10 x 10 for every run"; the
#: profiles are "identical across models"), assumed for the label-only runs of the same study and load generator.
LABEL_PROFILES: dict[str, dict[str, Any]] = {
    "general": {
        "rates": (8.0, 20.0),
        "durations": (600.0, 600.0),
        "input": 575,
        "output": 248,
        "system": 100,
        "prompts": 100,
    },
    "codegen": {
        "rates": (5.0, 10.0),
        "durations": (600.0, 600.0),
        "input": 593,
        "output": 247,
        "system": 100,
        "prompts": 100,
    },
    "roleplay": {"rates": (6.0,), "durations": (1200.0,), "input": 787, "output": 251, "system": 150, "prompts": 100},
    "reasoning": {
        "rates": (4.0,),
        "durations": (1200.0,),
        "input": 1082,
        "output": 1448,
        "system": 100,
        "prompts": 100,
    },
    "general-lite": {
        "rates": (2.4, 6.0),
        "durations": (600.0, 600.0),
        "input": 575,
        "output": 248,
        "system": 100,
        "prompts": 100,
    },
    # assumed: reasoning's lengths at general-lite's 0.3 load scale (6 / 20 req/s peak) -> 0.3 x 4 = 1.2 req/s
    "reasoning-lite": {
        "rates": (1.2,),
        "durations": (1200.0,),
        "input": 1082,
        "output": 1448,
        "system": 100,
        "prompts": 100,
    },
}


def _lite_folder(label: Any, folder: Any) -> bool:
    """Whether a row's folder name ``<label>-lite`` names its workload instead of its ``workload_label``.

    When ``workload_label`` and ``workload_in_folder_name`` differ (5 trainval rows: general vs general-lite,
    reasoning vs reasoning-lite; the data's README: "the study's files do not say which is right"), the folder's
    "-lite" name is used. Evidence in ../shared/data/vllm-e2e-dense per_stage: the decode step grows between the two
    stages by the KV read of the added running requests (ITL slope per running request). Under general-lite (2.4 ->
    6 req/s) Yi-34B TP2 gives 0.046 ms/request and Mistral-Nemo TP2 0.037, matching CodeLlama-34B TP2's 0.040-0.041
    measured at known rates (runs 57 and 20260218-150304); under general (8 -> 20 req/s) they would give 0.014 and
    0.011. Llama-3.1-70B TP4 keeps its TTFT flat (52 -> 54 ms) where Llama-2-70B TP4 at 20 req/s queues (57 -> 121
    ms, run 20260217-202857); Llama-2-7B reasoning at 4 req/s fails 85% of requests on the same deployment as run 67.
    """
    return label is not None and folder is not None and str(folder) == f"{label}-lite" and str(folder) in LABEL_PROFILES


#: Metrics compared: key -> (label, measured column). ITL is the per-output-token decode time.
#: inference-perf's client timeout when its ``timeout`` is not set: aiohttp's default total timeout, s
#: (kubernetes-sigs/inference-perf@inference_perf/client/modelserver/openai_client.py passes aiohttp's sentinel,
#: so aiohttp's ``ClientTimeout(total=5 * 60)`` applies; the reference runs' failed requests end 300.0-301.0 s after
#: they were sent).
INFERENCE_PERF_TIMEOUT_S = 300.0

METRICS: dict[str, tuple[str, str]] = {
    "e2e_mean_ms": ("mean E2E", "e2e_mean_ms"),
    "ttft_mean_ms": ("mean TTFT", "ttft_mean_ms"),
    "itl_mean_ms": ("mean ITL", "tpot_derived_mean_ms"),
    "e2e_p90_ms": ("P90 E2E", "e2e_p90_ms"),
    "ttft_p90_ms": ("P90 TTFT", "ttft_p90_ms"),
}

REQUIRED = ("experiment_id", "model", "gpu", "tp", "e2e_mean_ms", "ttft_mean_ms")

#: Time columns: the unit suffixes accepted and their factor to ms.
_TIME_UNITS = {"_ms": 1.0, "_s": 1e3}
#: A metric column without its unit is refused (what it would be called with one).
_UNITLESS = {
    "e2e_mean": "e2e_mean_ms",
    "ttft_mean": "ttft_mean_ms",
    "e2e_p90": "e2e_p90_ms",
    "ttft_p90": "ttft_p90_ms",
    "tpot_derived_mean": "tpot_derived_mean_ms",
    "itl_mean": "tpot_derived_mean_ms",
    "tpot_mean": "tpot_derived_mean_ms",
    "stage_rates": "stage_rates_req_per_s",
    "stage_durations": "stage_durations_s",
    "input_len_mean": "input_len_mean_tokens",
    "output_len_mean": "output_len_mean_tokens",
    "arrival_time": "arrival_time_ms",
}
_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


# ---------------------------------------------------------------- reading RUNS.csv


@dataclass(frozen=True)
class Run:
    """One measured run, resolved.

    Attributes:
        run_id: the row's experiment_id.
        model_id: the model as written (Hugging Face id); ``model`` the moesim preset or config path.
        gpu: moesim GPU key. tp, dp: layout and replicas.
        engine: the scenario's ``engine:`` mapping (settings of the row).
        per_request: the per-request file (absolute), or None.
        per_stage: the per-stage file (absolute), or None: measured means per load stage.
        stage_means: the per-stage file read (`read_per_stage`): load stage -> its measured means, ms ({} without).
        stages: load stages (rate req/s, duration s).
        input_mean, output_mean: mean prompt / output tokens of a staged workload.
        measured: measured metrics by `METRICS` key, ms (NaN: not measured).
        overloaded: the run had failed requests (left out of the error summary).
        notes: what was assumed for this row.
        prompt_set: distinct prompts the load generator sends in turn (inference-perf shared_prefix: groups x
            prompts per group), 0 when unknown.
        max_tokens: output tokens the engine generated per request when the client sent ``ignore_eos`` with a
            fixed ``max_tokens`` (``sp_output_len_tokens``), else None (the recorded lengths are what it generated).
        client_timeout_s: the load generator's total timeout per request, s (None: none known).
        failed: measured failed requests (count).
    """

    run_id: str
    model_id: str
    model: str
    gpu: str
    tp: int
    dp: int
    engine: dict[str, Any]
    per_request: Path | None
    stages: tuple[tuple[float, float], ...]
    input_mean: float
    output_mean: float
    measured: dict[str, float]
    overloaded: bool
    kv_blocks: float = math.nan
    notes: tuple[str, ...] = ()
    prompt_set: int = 0  # distinct prompts the load generator cycles through (0: unknown)
    max_tokens: int | None = None  # tokens generated per request under ignore_eos (None: the recorded lengths)
    client_timeout_s: float | None = None  # the load generator's total timeout per request, s
    failed: float = 0.0  # measured failed requests
    per_stage: Path | None = None  # measured means per load stage (`read_per_stage`)
    stage_means: dict[int, dict[str, float]] = field(default_factory=dict)  # the per-stage file, read once


def _cell(row: pd.Series, col: str) -> Any:
    v = row.get(col)
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
        return None
    return v


def _number(row: pd.Series, col: str, where: str, integer: bool = False, positive: bool = True) -> float | None:
    v = _cell(row, col)
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise MoesimError(f"{where}: {col} = {v!r} is not a number", f"give {col} as a number") from None
    if not math.isfinite(x) or (positive and x <= 0) or x < 0:
        raise MoesimError(f"{where}: {col} = {v!r} is out of range", f"give {col} as a finite number > 0")
    if integer and x != int(x):
        raise MoesimError(f"{where}: {col} = {v!r} is not a whole number", f"give {col} as a whole number")
    return x


def _bool(row: pd.Series, col: str, where: str) -> bool | None:
    v = _cell(row, col)
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise MoesimError(f"{where}: {col} = {v!r} is not a boolean", f"give {col} as true or false")


def _list(row: pd.Series, col: str, where: str) -> tuple[float, ...] | None:
    v = _cell(row, col)
    if v is None:
        return None
    try:
        vals = tuple(float(p) for p in str(v).split(";") if p.strip())
    except ValueError:
        raise MoesimError(f"{where}: {col} = {v!r}", f"give {col} as numbers separated by ';', e.g. 8;20") from None
    if not vals or not all(math.isfinite(x) and x > 0 for x in vals):
        raise MoesimError(f"{where}: {col} = {v!r} holds a value <= 0", f"give {col} as positive numbers")
    return vals


def check_columns(columns: Sequence[str], path: str | Path) -> dict[str, str]:
    """The metric columns of a RUNS.csv with their units: ``{canonical *_ms name: column as written}``.

    Raises:
        MoesimError: a required column is missing, or a time column has no unit (``e2e_mean`` for ``e2e_mean_ms``).
    """
    cols = set(columns)
    for bare, named in _UNITLESS.items():
        if bare in cols:
            raise MoesimError(
                f"{path}: column {bare} has no unit",
                f"rename it {named} (times in ms, or *_s for seconds; lengths in tokens; rates in req/s)",
            )
    found: dict[str, str] = {}
    for name in ("e2e_mean_ms", "ttft_mean_ms", "tpot_derived_mean_ms", "e2e_p90_ms", "ttft_p90_ms"):
        stem = name[: -len("_ms")]
        for suffix in _TIME_UNITS:
            if stem + suffix in cols:
                found[name] = stem + suffix
                break
    missing = [c for c in REQUIRED if c not in cols and c not in found]
    if missing:
        raise MoesimError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            f"RUNS.csv needs {', '.join(REQUIRED)} (see 'moesim validate --help' and sim/serving/validate.py)",
        )
    return found


def _model_name(value: str) -> str:
    return HF_PRESETS.get(value, value)


def _gpu_name(value: str) -> str:
    return GPU_NAMES.get(value, value)


def _default_batch(gpu: str) -> tuple[int, int]:
    """vLLM's default (max_num_seqs, max_num_batched_tokens) for the OpenAI server on ``gpu``.

    Source: vllm-project/vllm vllm/engine/arg_utils.py (get_batch_defaults): 1024 / 8192 on GPUs with >= 70 GiB
    other than A100, else 256 / 2048.
    """
    try:
        from moesim.model.hardware import get_gpu

        big = get_gpu(gpu).memory_bytes >= 70 * 2**30 and "A100" not in gpu.upper()
    except (MoesimError, AttributeError):
        big = False
    return (1024, 8192) if big else (256, 2048)


def read_runs(path: str | Path, only: Sequence[str] | None = None) -> list[Run]:
    """The runs of a RUNS.csv (see the module docstring), in file order; ``only``: those experiment ids.

    Raises:
        MoesimError: an unreadable file, a missing column, a time column without unit, a bad value (one line
            naming the row and the column), an ``only`` id that is not in the file.
    """
    path = Path(path)
    df = _read_table(path, "a RUNS.csv", "give the path of a RUNS.csv", dtype={"experiment_id": str})
    units = check_columns(list(df.columns), path)
    if df.empty:
        raise MoesimError(f"{path}: no rows", "add one row per measured run")
    ids = df["experiment_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise MoesimError(f"{path}: experiment_id {dup.iloc[0]!r} appears twice", "give each run a unique id")
    if only:
        unknown = [i for i in only if i not in set(ids)]
        if unknown:
            raise MoesimError(f"--only: {unknown[0]!r} is not an experiment_id of {path}", "list ids from the file")
        df = df[ids.isin(set(only))]
    runs = []
    for i, row in df.iterrows():
        runs.append(_run(row, f"{path} row {int(i) + 2} ({row['experiment_id']})", path.parent, units))
    return runs


def _run(row: pd.Series, where: str, base: Path, units: dict[str, str]) -> Run:
    notes: list[str] = []
    for col in ("model", "gpu"):
        if _cell(row, col) is None:
            raise MoesimError(f"{where}: {col} is empty", f"give the run's {col}")
    model_id = str(row["model"]).strip()
    gpu = _gpu_name(str(row["gpu"]).strip())
    tp = _number(row, "tp", where, integer=True)
    if tp is None:
        raise MoesimError(f"{where}: tp is empty", "give the tensor-parallel degree (1 for none)")
    dp = _number(row, "dp", where, integer=True) or 1.0
    seqs_default, tokens_default = _default_batch(gpu)
    max_seqs = _number(row, "max_num_seqs", where, integer=True)
    if max_seqs is None:
        notes.append(f"max_num_seqs not recorded: vLLM default {seqs_default}")
    max_tokens = _number(row, "max_num_batched_tokens", where, integer=True)
    engine: dict[str, Any] = {
        "kind": str(_cell(row, "engine_kind") or "vllm"),
        "max_batch": int(max_seqs or seqs_default),
        "max_tokens": int(max_tokens or tokens_default),
        "block_size": int(_number(row, "block_size", where, integer=True) or 16),
        "mem_fraction": float(_number(row, "gpu_memory_utilization", where) or 0.9),
        "stream": True,
    }
    if engine["mem_fraction"] > 1:
        raise MoesimError(f"{where}: gpu_memory_utilization {engine['mem_fraction']} > 1", "give a share in (0, 1]")
    chunked = _bool(row, "chunked_prefill", where)
    engine["chunked_prefill"] = True if chunked is None else chunked
    prefix = _bool(row, "prefix_caching", where)
    if prefix is not None:
        engine["prefix_caching"] = prefix
    eager = _bool(row, "cuda_graphs_enforce_eager", where)
    if eager is not None:
        engine["cuda_graphs"] = not eager
    version = _cell(row, "vllm_version")
    if version is not None and engine["kind"] == "vllm":
        engine["version"] = str(version)
    measured: dict[str, float] = {}
    for key, (_, col) in METRICS.items():
        name = units.get(col)
        value = _number(row, name, where, positive=False) if name else None
        measured[key] = math.nan if value is None else value * _TIME_UNITS["_ms" if name.endswith("_ms") else "_s"]
    for key in ("e2e_mean_ms", "ttft_mean_ms"):
        if math.isnan(measured[key]):
            raise MoesimError(f"{where}: {units.get(key, key)} is empty", "give the measured value (ms)")
    # the workload: replay, else stages, else the label's profile
    per_request = _file_cell(row, "per_request_file", base, where)
    per_stage = _file_cell(row, "per_stage_file", base, where)
    # read here: a corrupt file fails the whole validation before any run
    stage_means = read_per_stage(per_stage) if per_stage is not None else {}
    rates, durations = _list(row, "stage_rates_req_per_s", where), _list(row, "stage_durations_s", where)
    label = _cell(row, "workload_label")
    folder = _cell(row, "workload_in_folder_name")
    label_disagrees = folder is not None and label is not None and str(folder) != str(label)
    if _lite_folder(label, folder):
        notes.append(f"workload label {label!r}, folder name {folder!r}: the folder's used (validate._lite_folder)")
        label, label_disagrees = folder, False
    profile = LABEL_PROFILES.get(str(label)) if label is not None else None
    in_mean = _number(row, "input_len_mean_tokens", where)
    out_mean = _number(row, "output_len_mean_tokens", where)
    if rates is None and per_request is None:
        if profile is None:
            raise MoesimError(
                f"{where}: no workload (per_request_file, stage_rates_req_per_s or a known workload_label)",
                f"give one; known labels: {', '.join(LABEL_PROFILES)}",
            )
        rates, durations = profile["rates"], profile["durations"]
        notes.append(f"workload assumed from label {label!r}: {';'.join(f'{r:g}' for r in rates)} req/s")
    if rates is not None and (durations is None or len(durations) != len(rates)):
        raise MoesimError(
            f"{where}: stage_durations_s does not match stage_rates_req_per_s", "give one duration (s) per stage rate"
        )
    if per_request is None and (in_mean is None or out_mean is None):
        if profile is None:
            raise MoesimError(
                f"{where}: a staged workload needs input_len_mean_tokens and output_len_mean_tokens",
                "give the mean lengths (tokens) or a per_request_file",
            )
        in_mean, out_mean = in_mean or profile["input"], out_mean or profile["output"]
        notes.append(f"lengths assumed from label {label!r}: {in_mean:g} in / {out_mean:g} out tokens")
    if label_disagrees:
        notes.append(f"workload ambiguous: label {label!r}, folder name {folder!r}")
    system = _number(row, "sp_system_prompt_len_tokens", where)
    if system is None and profile is not None and per_request is None:
        system = float(profile["system"])
    prompt_set = _prompt_set(row, where)
    if not prompt_set and per_request is None and profile is not None and _cell(row, "dataset") is None:
        prompt_set = int(profile["prompts"])
        notes.append(f"prompt set assumed: inference-perf shared_prefix, {prompt_set} prompts")
    if engine.get("prefix_caching") is None:
        # not recorded: the engine's default (vLLM V1: automatic prefix caching on)
        from moesim.sim.serving.host import engine_profile
        from moesim.sim.serving.scenario import EngineSpec

        if engine_profile(EngineSpec(**engine)).prefix_caching:
            engine["prefix_caching"] = True
            notes.append("prefix caching not recorded: the engine's default (on)")
    if engine.get("prefix_caching") and system and not prompt_set:
        # vLLM caches whole blocks: the shared system prompt's full blocks are hits (per-request data does not
        # say which requests share it; every one does in inference-perf's shared_prefix dataset)
        hit_tokens = math.floor(system / engine["block_size"]) * engine["block_size"]
        mean_in = in_mean or _per_request_mean_input(per_request)
        if mean_in:
            engine["prefix_hit_rate"] = round(min(hit_tokens / mean_in, 1.0), 4)
    failed = _number(row, "n_requests_failed", where, positive=False) or 0.0
    timeout = _number(row, "client_timeout_s", where)
    generator = str(_cell(row, "load_generator") or "").strip().lower()
    if timeout is None and generator == "inference-perf":
        timeout = INFERENCE_PERF_TIMEOUT_S
        if failed:
            notes.append(f"client timeout {timeout:g} s: inference-perf's default (aiohttp's total timeout)")
    # with ignore_eos the engine generates max_tokens for every request; the recorded output lengths are the
    # client's re-tokenised count of the streamed text, which can be shorter (module docstring)
    max_out = _number(row, "sp_output_len_tokens", where, integer=True)
    generated = int(max_out) if max_out and _bool(row, "ignore_eos", where) else None
    if generated and out_mean and abs(out_mean / generated - 1) > 0.05:
        notes.append(f"engine generated {generated} tokens per request (ignore_eos), client counted {out_mean:.0f}")
    return Run(
        run_id=str(row["experiment_id"]),
        model_id=model_id,
        model=_model_name(model_id),
        gpu=gpu,
        tp=int(tp),
        dp=int(dp),
        engine=engine,
        per_request=per_request,
        stages=tuple(zip(rates, durations, strict=True)) if rates is not None else (),
        input_mean=float(in_mean or math.nan),
        output_mean=float(out_mean or math.nan),
        measured=measured,
        overloaded=failed > 0,
        kv_blocks=_number(row, "kv_blocks_total_gpu", where) or math.nan,
        notes=tuple(notes),
        prompt_set=prompt_set,
        max_tokens=generated,
        client_timeout_s=timeout,
        failed=failed,
        per_stage=per_stage,
        stage_means=stage_means,
    )


def _file_cell(row: pd.Series, col: str, base: Path, where: str) -> Path | None:
    """The file a row's ``col`` names (absolute, or relative to RUNS.csv's folder ``base``), None where empty; a
    missing file is one `MoesimError` naming it."""
    file = _cell(row, col)
    if file is None:
        return None
    path = Path(str(file)) if Path(str(file)).is_absolute() else base / str(file)
    if not path.is_file():
        raise MoesimError(f"{where}: {col} {path} does not exist", "fix the path (relative to RUNS.csv)")
    return path


def _prompt_set(row: pd.Series, where: str) -> int:
    """Distinct prompts of an inference-perf shared_prefix workload (groups x prompts per group), 0 if unknown."""
    dataset = _cell(row, "dataset")
    if dataset is None or "shared_prefix" not in str(dataset):
        return 0
    groups = _number(row, "resolved_sp_num_groups", where, integer=True)
    per = _number(row, "resolved_sp_num_prompts_per_group", where, integer=True)
    return int(groups * per) if groups and per else 0


def _read_table(path: Path, what: str, hint: str, **csv_kwargs: Any) -> pd.DataFrame:
    """A parquet (by its suffix) or CSV table read through `model.inputs` (a missing, empty, binary or non-UTF-8
    file, or a file that is not a parquet file, is one `MoesimError` naming it)."""
    if path.suffix == ".parquet":
        data = inputs.read_bytes(path, what, hint)
        inputs.check_magic(data, ".parquet", path, hint, noun="a readable parquet table")
        reader: Callable[[], pd.DataFrame] = lambda: pd.read_parquet(io.BytesIO(data))  # noqa: E731
    else:
        text = inputs.read_text(path, what, hint)
        reader = lambda: pd.read_csv(io.StringIO(text), **csv_kwargs)  # noqa: E731
    try:
        return reader()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        raise MoesimError(f"{path}: not a readable table ({' '.join(str(exc).split())[:120]})", hint) from None


#: Seed of the arrivals `read_bench_json` draws for a result file of a finite request rate.
BENCH_ARRIVAL_SEED = 0


def read_bench_json(path: Path) -> pd.DataFrame:
    """A result file of vLLM's ``benchmark_serving.py --save-result`` (also ``vllm bench serve``) as a per-request
    table: arrival_time_ms, input_tokens, output_tokens, has_error, ttft_ms, e2e_ms [requests].

    Read: ``input_lens`` and ``output_lens`` (tokens, one per request sent), ``ttfts`` (s) and ``itls`` (s, a list per
    request) where present, ``errors`` (an empty string for a success) and ``request_rate``. The file does not record
    when each request was sent: at rate ``inf`` every request is sent at once (arrival 0, what the client does); at a
    finite rate the arrivals are drawn as the client draws them, gaps of a gamma law of mean 1 / rate and shape
    ``burstiness`` (1, Poisson, when the file has none), seeded (`BENCH_ARRIVAL_SEED`): the same law, not the same
    times. A request whose TTFT is 0 got no text (an error, or an empty output): its TTFT and E2E are unknown (NaN).

    Raises:
        MoesimError: not JSON, not such a result (no ``input_lens`` / ``output_lens``), lists of different lengths, a
            length that is not a whole number >= 0, a time that is negative or not finite, or a bad request rate.
    """
    hint = "give the file benchmark_serving.py --save-result wrote, or a CSV with arrival_time_ms, input_tokens, ..."
    where = f"per_request_file {path}"
    try:
        data = json.loads(inputs.read_text(path, "a per_request_file", hint))
    except json.JSONDecodeError as exc:
        raise MoesimError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})", hint) from None
    if not isinstance(data, dict) or "input_lens" not in data or "output_lens" not in data:
        raise MoesimError(f"{where}: not a vLLM benchmark_serving result (no input_lens and output_lens)", hint)

    def lengths(key: str) -> np.ndarray:
        vals = data[key]
        if not isinstance(vals, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vals
        ):
            raise MoesimError(f"{where}: {key} must be a list of whole numbers >= 0", hint)
        return np.asarray(vals, np.int64)

    inp, out = lengths("input_lens"), lengths("output_lens")
    n = len(inp)
    if len(out) != n or n == 0:
        raise MoesimError(f"{where}: input_lens has {n} requests, output_lens {len(out)}", hint)

    def seconds(vals: Any, key: str) -> np.ndarray:
        try:
            arr = np.asarray(vals, float)
        except (TypeError, ValueError):
            raise MoesimError(f"{where}: {key} must hold numbers (seconds)", hint) from None
        if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise MoesimError(f"{where}: {key} must hold finite seconds >= 0", hint)
        return arr

    ttft = seconds(data["ttfts"], "ttfts") if "ttfts" in data else np.full(n, np.nan)
    if len(ttft) != n:
        raise MoesimError(f"{where}: ttfts has {len(ttft)} requests, input_lens {n}", hint)
    itls = data.get("itls")
    if itls is not None and (not isinstance(itls, list) or len(itls) != n):
        raise MoesimError(f"{where}: itls must be a list of {n} lists (one per request)", hint)
    decode = np.array([seconds(x, "itls").sum() for x in itls]) if itls is not None else np.full(n, np.nan)
    errors = data.get("errors")
    failed = np.array([bool(e) for e in errors]) if isinstance(errors, list) and len(errors) == n else np.zeros(n, bool)
    rate_raw = data.get("request_rate", "inf")
    rate = math.inf if rate_raw in ("inf", None) else rate_raw
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise MoesimError(f"{where}: request_rate must be inf or a number > 0, got {rate_raw!r}", hint)
    if math.isinf(rate):
        arrival = np.zeros(n)
    else:
        shape = float(data.get("burstiness") or 1.0)
        if not math.isfinite(shape) or shape <= 0:
            raise MoesimError(f"{where}: burstiness must be a number > 0", hint)
        gaps = np.random.default_rng(BENCH_ARRIVAL_SEED).gamma(shape, 1.0 / (rate * shape), n)
        arrival = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    seen = ttft > 0  # no text, no first token seen: unknown
    return pd.DataFrame(
        {
            "arrival_time_ms": 1e3 * arrival,
            "input_tokens": inp,
            "output_tokens": out,
            "has_error": failed,
            "ttft_ms": np.where(seen & ~failed, 1e3 * ttft, np.nan),
            "e2e_ms": np.where(seen & ~failed, 1e3 * (ttft + decode), np.nan),
        }
    )


def _read_requests(path: Path) -> pd.DataFrame:
    if path.suffix == ".json":
        return read_bench_json(path)
    df = _read_table(path, "a per_request_file", "check per_request_file (a parquet or CSV, relative to RUNS.csv)")
    if "arrival_time_ms" not in df.columns and "arrival_time" in df.columns:
        raise MoesimError(f"per_request_file {path}: column arrival_time has no unit", "rename it arrival_time_ms")
    need = ("arrival_time_ms", "input_tokens", "output_tokens")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise MoesimError(f"per_request_file {path}: missing column {missing[0]}", f"give {', '.join(need)}")
    return df


_MEAN_INPUT: dict[str, float] = {}


def _per_request_mean_input(path: Path | None) -> float | None:
    if path is None:
        return None
    key = str(path)
    if key not in _MEAN_INPUT:
        df = _read_requests(path)
        ok = ~df["has_error"].astype(bool) if "has_error" in df.columns else np.ones(len(df), bool)
        _MEAN_INPUT[key] = float(df.loc[ok, "input_tokens"].mean())
    return _MEAN_INPUT[key]


# ---------------------------------------------------------------- requests of a run


def run_requests(run: Run, max_requests: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The requests a run replays, in arrival order.

    Columns: arrival_s (s from the first), input_tokens, output_tokens, stage (0-based load stage), measured_failed
    (the client gave up on it), and, from a per-request file, the measured e2e_ms and ttft_ms (NaN without one).
    Failed requests of a per-request file are replayed when the run's client timeout is known (the engine served
    them until it aborted them; their lengths, which the file does not record, are their prompt's in the prompt set,
    else the mean successful prompt, and the generated length), else left out (the measured latencies cover
    successes only); output_tokens is what the engine generates (the run's
    ``max_tokens`` under ignore_eos, else the recorded length) and output_measured the recorded (client-counted)
    length that the metrics divide by. A staged workload draws Poisson arrivals per stage
    (seeded; the recorded inter-arrival CV is about 1) with the mean lengths. ``max_requests``: the first N.
    """
    if run.per_request is not None:
        df = _read_requests(run.per_request)
        bad = df["has_error"].astype(bool).to_numpy() if "has_error" in df.columns else np.zeros(len(df), bool)
        if run.client_timeout_s is None or bad.all():
            df, bad = df[~bad], bad[~bad]
        t = df["arrival_time_ms"].to_numpy(float) / 1e3
        sent = df["request_index"].to_numpy(np.int64) if "request_index" in df.columns else np.arange(len(df))
        inp = df["input_tokens"].to_numpy(np.int64).copy()
        rec_out = df["output_tokens"].to_numpy(np.int64)
        gen = rec_out.copy()
        if bad.any():  # a failed row records no lengths: its prompt's (the same prompt of the set), else the mean
            fill = np.full(len(df), round(float(inp[~bad].mean())), np.int64)
            if run.prompt_set:
                pid = sent % run.prompt_set
                ok_len = pd.Series(inp[~bad]).groupby(pid[~bad]).min()
                known = pd.Series(pid).map(ok_len).to_numpy(float)
                fill = np.where(np.isfinite(known), np.nan_to_num(known), fill).astype(np.int64)
            inp[bad] = fill[bad]
            gen[bad] = round(float(rec_out[~bad].mean()))
        out = pd.DataFrame(
            {
                "sent": sent,
                "arrival_s": t - (t.min() if len(t) else 0.0),
                "input_tokens": np.maximum(inp, 1),
                "output_tokens": np.maximum(gen, 1)
                if run.max_tokens is None
                else np.full(len(df), run.max_tokens, np.int64),
                "output_measured": rec_out,
                "e2e_ms": np.where(bad, np.nan, df["e2e_ms"].to_numpy(float)) if "e2e_ms" in df.columns else np.nan,
                "ttft_ms": np.where(bad, np.nan, df["ttft_ms"].to_numpy(float)) if "ttft_ms" in df.columns else np.nan,
                "measured_failed": bad,
            }
        )
        edges = np.cumsum([d for _, d in run.stages]) if run.stages else np.array([])
        out["stage"] = np.searchsorted(edges[:-1], out["arrival_s"].to_numpy(), side="right") if len(edges) else 0
    else:
        rng = np.random.default_rng(seed)
        parts, start = [], 0.0
        for k, (rate, dur) in enumerate(run.stages):
            n = max(int(rng.poisson(rate * dur)), 1)
            times = np.sort(rng.uniform(start, start + dur, n))
            parts.append(pd.DataFrame({"arrival_s": times, "stage": k}))
            start += dur
        out = pd.concat(parts, ignore_index=True)
        out["sent"] = np.arange(len(out))
        out["measured_failed"] = False  # not known per request
        out["input_tokens"] = max(round(run.input_mean), 1)
        out["output_tokens"] = run.max_tokens or max(round(run.output_mean), 1)
        out["output_measured"] = max(round(run.output_mean), 1)
        out["e2e_ms"], out["ttft_ms"] = np.nan, np.nan
    out = out.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    if run.prompt_set:
        # the load generator's n-th request sends prompt n mod the set: a repeat is the same whole prompt
        pid = out["sent"].to_numpy(np.int64) % run.prompt_set
        out["prefix_id"] = pid
        out["prefix_tokens"] = out.groupby(pid)["input_tokens"].transform("min").to_numpy(np.int64)
    out = out.drop(columns="sent")
    if max_requests is not None:
        out = out.iloc[:max_requests].reset_index(drop=True)
    return out


def measured_over(run: Run, req: pd.DataFrame, subsampled: bool) -> dict[str, float]:
    """The measured metrics to compare with: the row's, or recomputed over ``req`` when subsampled and the
    per-request latencies are known (ms)."""
    if not subsampled or req["e2e_ms"].isna().all():
        return dict(run.measured)
    return latency_metrics(req["e2e_ms"].to_numpy(), req["ttft_ms"].to_numpy(), req["output_measured"].to_numpy())


def latency_metrics(e2e_ms: np.ndarray, ttft_ms: np.ndarray, output_tokens: np.ndarray) -> dict[str, float]:
    """`METRICS` from per-request latencies [requests] (ms) and output lengths [requests] (tokens), computed as the
    reference data computes them: means and P90s (numpy's linear interpolation) over the requests that finished;
    ITL = (mean e2e - mean TTFT) / (mean output - 1)."""
    ok = np.isfinite(e2e_ms) & np.isfinite(ttft_ms)
    if not ok.any():
        return dict.fromkeys(METRICS, math.nan)
    e, t, o = e2e_ms[ok], ttft_ms[ok], output_tokens[ok].astype(float)
    denom = o.mean() - 1
    return {
        "e2e_mean_ms": float(e.mean()),
        "ttft_mean_ms": float(t.mean()),
        "itl_mean_ms": float((e.mean() - t.mean()) / denom) if denom > 0 else math.nan,
        "e2e_p90_ms": float(np.percentile(e, 90)),
        "ttft_p90_ms": float(np.percentile(t, 90)),
    }


#: Columns of a per-stage file (`read_per_stage`), ms: the stage means compared stage by stage.
STAGE_METRICS: dict[str, str] = {"e2e_mean_ms": "e2e_mean_ms", "ttft_mean_ms": "ttft_mean_ms",
                                 "itl_mean_ms": "tpot_derived_mean_ms"}  # fmt: skip


def read_per_stage(path: Path) -> dict[int, dict[str, float]]:
    """A per-stage file: load stage (0-based) -> its measured means (`STAGE_METRICS` keys, ms). Rows with a
    negative ``stage_index`` (the whole run) are skipped. A missing column or a negative or non-finite mean is one
    `MoesimError` naming it."""
    hint = "give a table with stage_index, e2e_mean_ms, ttft_mean_ms and tpot_derived_mean_ms per load stage"
    df = _read_table(path, "a per_stage_file", hint)
    need = ["stage_index", *STAGE_METRICS.values()]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise MoesimError(f"per_stage_file {path}: no column {', '.join(missing)}", hint)
    out: dict[int, dict[str, float]] = {}
    for _, row in df.iterrows():
        k = int(row["stage_index"])
        if k < 0:
            continue
        vals = {key: float(row[col]) for key, col in STAGE_METRICS.items()}
        bad = [key for key, v in vals.items() if not math.isfinite(v) or v < 0]
        if bad:
            raise MoesimError(f"per_stage_file {path}: stage {k} has {bad[0]} = {vals[bad[0]]}", hint)
        out[k] = vals
    return out


def stage_rows(run: Run, req: pd.DataFrame, pred: Prediction, subsampled: bool) -> list[dict[str, Any]]:
    """Predicted against measured per load stage of a run with two or more stages: one row per stage with its
    requests, its arrival rate (req/s: requests less one over the span of their arrivals), the means of
    `STAGE_METRICS` measured (the per-stage file's; without one, or when subsampled, the per-request file's
    latencies of the stage's requests) and predicted (the stage's requests), their errors, and the requests
    decoding at once by Little's law, ``rate x (mean E2E - mean TTFT)``, measured and predicted. [] for a run of
    one stage or without the prediction's per-request latencies."""
    stage = req["stage"].to_numpy() if "stage" in req else np.zeros(len(req), int)
    ks = np.unique(stage)
    if len(ks) < 2 or pred.e2e_ms is None or pred.ttft_ms is None:
        return []
    table = run.stage_means if not subsampled else {}
    arr, out_tok = req["arrival_s"].to_numpy(float), req["output_measured"].to_numpy()
    rows = []
    for k in ks:
        idx = stage == k
        a = arr[idx]
        span = float(a.max() - a.min()) if idx.sum() > 1 else 0.0
        rate = (idx.sum() - 1) / span if span > 0 else math.nan
        p = latency_metrics(pred.e2e_ms[idx], pred.ttft_ms[idx], out_tok[idx])
        if int(k) in table:
            m = table[int(k)]
        elif not req["e2e_ms"].isna().all():
            m = latency_metrics(req["e2e_ms"].to_numpy(float)[idx], req["ttft_ms"].to_numpy(float)[idx], out_tok[idx])
        else:
            m = dict.fromkeys(STAGE_METRICS, math.nan)
        rec: dict[str, Any] = {"run_id": run.run_id, "model": run.model_id, "gpu": run.gpu, "tp": run.tp,
                               "stage": int(k), "requests": int(idx.sum()), "rate_req_s": rate}  # fmt: skip
        for key in STAGE_METRICS:
            rec[f"measured_{key}"], rec[f"predicted_{key}"] = m[key], p[key]
            ok = m[key] > 0 and math.isfinite(p[key])
            rec[f"error_{key}"] = p[key] / m[key] - 1 if ok else math.nan
        for side, v in (("measured", m), ("predicted", p)):
            rec[f"{side}_running"] = rate * (v["e2e_mean_ms"] - v["ttft_mean_ms"]) / 1e3
        rows.append(rec)
    return rows


def stage_summary(stages: pd.DataFrame) -> dict[str, Any]:
    """Per GPU over the runs of ``stages`` (`stage_rows`, runs with status ``ok``), and within it per tensor-parallel
    size (``by_tp``): the median signed ITL error of the first and of the last load stage, and the median of
    predicted over measured ITL slope, the mean ITL's rise from the first stage to the last per request decoding at
    once added (ms per request; both sides' own `stage_rows` running counts), with the measured slope's median.
    {} without staged runs."""
    if stages is None or not len(stages):
        return {}
    out: dict[str, Any] = {}
    for gpu, sub in stages.groupby("gpu", sort=True):
        out[str(gpu)] = _stage_figures(sub)
        out[str(gpu)]["by_tp"] = {str(int(tp)): _stage_figures(s) for tp, s in sub.groupby("tp", sort=True)}
    return out


def _stage_figures(sub: pd.DataFrame) -> dict[str, Any]:
    """`stage_summary`'s figures over the runs of ``sub``."""
    first, last, ratios, slopes = [], [], [], []
    for _, run in sub.groupby("run_id", sort=False):
        run = run.sort_values("stage")
        a, b = run.iloc[0], run.iloc[-1]
        first.append(a["error_itl_mean_ms"])
        last.append(b["error_itl_mean_ms"])
        dm = b["measured_running"] - a["measured_running"]
        dp = b["predicted_running"] - a["predicted_running"]
        if dm > 1 and dp > 1:
            sm = (b["measured_itl_mean_ms"] - a["measured_itl_mean_ms"]) / dm
            sp = (b["predicted_itl_mean_ms"] - a["predicted_itl_mean_ms"]) / dp
            if sm > 0:
                slopes.append(sm)
                ratios.append(sp / sm)
    return {
        "runs": int(sub["run_id"].nunique()),
        "itl_error_first_stage": float(np.nanmedian(first)) if np.isfinite(first).any() else math.nan,
        "itl_error_last_stage": float(np.nanmedian(last)) if np.isfinite(last).any() else math.nan,
        "itl_slope_measured_ms_per_request": float(np.median(slopes)) if slopes else math.nan,
        "itl_slope_predicted_over_measured": float(np.median(ratios)) if ratios else math.nan,
        "slope_runs": len(ratios),
    }


# ---------------------------------------------------------------- one prediction


def scenario_for(run: Run, trace: str, profile: str | None = None, host: dict[str, float] | None = None) -> dict:
    """The serving scenario mapping of ``run`` replaying the trace CSV ``trace`` (a path)."""
    engine = dict(run.engine)
    if profile:
        engine["profile"] = str(profile)
        engine.pop("version", None)
    if host:
        engine["host"] = {k: float(v) for k, v in host.items()}
    return {
        "name": run.run_id,
        "model": run.model,
        "gpu": run.gpu,
        "layout": {"tp": run.tp},
        "replicas": run.dp,
        "engine": engine,
        "workload": {"trace": str(trace)}
        | ({"timeout_s": run.client_timeout_s} if run.client_timeout_s is not None else {}),
    }


@dataclass
class Prediction:
    """One run's prediction: metrics (ms), whether the simulator saw an overload, wall seconds."""

    metrics: dict[str, float]
    overloaded: bool = False
    reason: str = ""
    wall_s: float = 0.0
    kv_blocks: float = math.nan  # moesim's KV-cache capacity of one replica, blocks
    failed: float = math.nan  # requests whose client gave up (NaN: the engine does not model the timeout)
    first_failed_s: float = math.nan  # arrival of the first of them, s from the first request
    e2e_ms: np.ndarray | None = None  # per request [requests, in ``req``'s order], ms (NaN: not finished)
    ttft_ms: np.ndarray | None = None  # the same for the time to first token


def write_trace_csv(req: pd.DataFrame, path: Path) -> Path:
    """The requests as a moesim trace CSV (arrival_s, input_tokens, output_tokens, and prefix_id, prefix_tokens
    when the run's prompt set is known)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["arrival_s", "input_tokens", "output_tokens"] + [c for c in ("prefix_id", "prefix_tokens") if c in req]
    req[cols].to_csv(path, index=False)
    return path


def predict(
    run: Run,
    req: pd.DataFrame,
    trace: Path,
    engine: str = "des",
    cost_model: CostModel | None = None,
    profile: str | None = None,
    host: dict[str, float] | None = None,
    gpu_memo: dict[str, dict] | None = None,
) -> Prediction:
    """Simulate ``run`` on the requests ``req`` (written at ``trace``) with the DES or the analytical engine.

    The analytical engine solves each load stage at its own rate (requests / span of its arrivals) and takes each
    request's latency (the client's: request path included, `Analytical.solve`) from its stage's steady state, the
    wait for a slot of the running set from the run's own arrival times (`sim.serving.analytical.fifo_waits`).
    ``gpu_memo`` (analytical only; a dict kept by the caller per run): the step timers' GPU-side results (kernel
    and collective times per batch shape, `StepTimer.gpu_results`) carried from one call to the next, for a fit that
    changes only host costs which those results do not depend on.
    """
    from moesim.sim.serving.serve import load
    from moesim.sim.serving.serve import run as run_scenario

    t0 = time.perf_counter()
    trace = Path(trace).resolve()
    sc = scenario_for(run, str(trace), profile, host)
    out = req["output_measured"].to_numpy()
    if engine == "des":
        res = run_scenario(sc, "des", cost_model=cost_model, base_dir=trace.parent)
        r = res.requests.sort_values("request_id")
        m = latency_metrics(r["e2e_s"].to_numpy(float) * 1e3, r["ttft_s"].to_numpy(float) * 1e3, out)
        failed = r["failed"].to_numpy(bool) if "failed" in r else np.zeros(len(r), bool)
        done = int((r["finish_s"].notna().to_numpy() | failed).sum())
        over = done < len(r) or bool(failed.any())
        reason = "; ".join(
            x
            for x in (
                f"{len(r) - done} requests unfinished" if done < len(r) else "",
                f"{int(failed.sum()):,} of {len(r):,} requests timed out at the client ({run.client_timeout_s:g} s)"
                if failed.any()
                else "",
            )
            if x
        )
        caps = res.sim.capacities if res.sim is not None else {}
        kv = float(next(iter(caps.values())).kv_blocks) if caps else math.nan
        first = float(r["arrival_s"].to_numpy(float)[failed].min()) if failed.any() else math.nan
        e2e_r, ttft_r = _aligned(r, req)
        return Prediction(m, over, reason, time.perf_counter() - t0, kv, float(failed.sum()), first, e2e_r, ttft_r)
    if engine != "analytical":
        raise MoesimError(f"unknown engine {engine!r}", "use des or analytical")
    from moesim.sim.serving.analytical import Analytical

    built = load(sc, cost_model, base_dir=trace.parent)
    model = Analytical(built)
    if gpu_memo is not None:
        for role, timer in model.timers.items():
            timer.reuse_gpu_results(gpu_memo.get(role, {}))
    n = len(req)
    ttft, e2e = np.full(n, np.nan), np.full(n, np.nan)
    arr, stage = req["arrival_s"].to_numpy(float), req["stage"].to_numpy()
    reasons = []
    for k in np.unique(stage):
        idx = stage == k
        a = arr[idx]
        span = float(a.max() - a.min()) if idx.sum() > 1 else 0.0
        rate = (idx.sum() - 1) / span if span > 0 else float(idx.sum())
        states, t, e, _ = model.solve(rate, arr)
        ttft[idx], e2e[idx] = t[idx], e[idx]
        reasons += [f"stage {k} {role}: {s.reason}" for role, s in states.items() if s.overloaded]
    if gpu_memo is not None:
        for role, timer in model.timers.items():
            gpu_memo[role] = timer.gpu_results()
    m = latency_metrics(e2e * 1e3, ttft * 1e3, out)
    kv = float(next(iter(model.caps.values())).kv_blocks) if model.caps else math.nan
    failed, first = math.nan, math.nan
    if run.client_timeout_s is not None and "mixed" in model.pools:  # the slot recursion's aborts (`fifo_aborts`)
        gone = np.isnan(e2e)
        failed = float(gone.sum())
        first = float(arr[gone].min()) if gone.any() else math.nan
        if gone.any():
            reasons.append(f"{int(failed):,} of {n:,} requests timed out at the client ({run.client_timeout_s:g} s)")
    over = bool(reasons)
    return Prediction(m, over, "; ".join(reasons), time.perf_counter() - t0, kv, failed, first, e2e * 1e3, ttft * 1e3)


def _aligned(r: pd.DataFrame, req: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The discrete-event engine's per-request E2E and TTFT (ms) in ``req``'s order, or (None, None) where its
    requests (``r``, sorted by request id) are not the trace's rows one for one (same count and arrivals)."""
    a, b = r["arrival_s"].to_numpy(float), req["arrival_s"].to_numpy(float)
    if len(a) != len(b) or not len(a) or not np.allclose(a - a.min(), b - b.min(), rtol=0.0, atol=1e-6):
        return None, None
    return r["e2e_s"].to_numpy(float) * 1e3, r["ttft_s"].to_numpy(float) * 1e3


# ---------------------------------------------------------------- a validation


@dataclass
class Validation:
    """Predicted against measured, per run, and the error summary.

    Attributes:
        rows: one row per run: run_id, model, gpu, tp, status (``ok``, ``overloaded``: the measured run had
            failed requests, ``error``), note, ``measured_<metric>``, ``predicted_<metric>``, ``error_<metric>``
            (relative: predicted / measured - 1), predicted_overloaded (the simulator saw the run overloaded:
            requests its clients gave up on or unfinished, or an analytical stage past saturation),
            measured_failed and predicted_failed (requests whose client gave up; predicted NaN where the engine does
            not model the client's timeout: the analytical engine's disaggregated pools), measured_first_failed_s
            and predicted_first_failed_s (the arrival of the first of them, s from the first request; measured only
            from a per-request file), requests, subsampled, wall_s, kv_blocks_moesim and kv_blocks_recorded
            (KV-cache blocks per replica).
        summary: per metric, the median and P90 absolute relative error over the ``ok`` runs, counts,
            ``overload``: runs overloaded as measured, as predicted, and both, and ``stages`` (`stage_summary`).
        stages: one row per load stage of the runs with two or more (`stage_rows`), status ``ok`` runs only.
    """

    rows: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    stages: pd.DataFrame = field(default_factory=pd.DataFrame)


def error_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """Median and P90 of |predicted / measured - 1| per metric over the runs with status ``ok``."""
    ok = rows[rows["status"] == "ok"] if len(rows) else rows
    out: dict[str, Any] = {"runs": len(rows), "runs_compared": len(ok)}
    out["overload"] = {"measured": 0, "predicted": 0, "both": 0}
    if len(rows) and "predicted_overloaded" in rows:
        done = rows[rows["status"] != "error"]
        measured = (done["status"] == "overloaded").to_numpy(bool)
        predicted = done["predicted_overloaded"].eq(True).to_numpy(bool)  # NaN (an error row) is not True
        out["overload"] = {
            "measured": int(measured.sum()),
            "predicted": int(predicted.sum()),
            "both": int((measured & predicted).sum()),
        }
    for key in METRICS:
        col = f"error_{key}"
        err = ok[col].abs().dropna().to_numpy(float) if col in ok else np.zeros(0)
        out[key] = {
            "median_abs_error": float(np.median(err)) if len(err) else math.nan,
            "p90_abs_error": float(np.percentile(err, 90)) if len(err) else math.nan,
            "median_signed_error": float(np.median(ok[col].dropna())) if len(err) else math.nan,
            "runs": len(err),
        }
    return out


def validate(
    runs: Sequence[Run],
    workdir: Path,
    engine: str = "des",
    cost_model: CostModel | None = None,
    profile: str | None = None,
    host: dict[str, float] | None = None,
    max_requests: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> Validation:
    """Predict every run; traces go to ``workdir/traces``. A run that cannot be simulated (an unknown model, a
    layout that does not fit) is reported with status ``error`` and its one-line reason, and the others go on."""
    records: list[dict[str, Any]] = []
    staged: list[dict[str, Any]] = []
    for i, run in enumerate(runs):
        if progress:
            progress(i, len(runs), run.run_id)
        rec: dict[str, Any] = {"run_id": run.run_id, "model": run.model_id, "gpu": run.gpu, "tp": run.tp}
        notes = list(run.notes)
        try:
            req = run_requests(run, max_requests, seed)
            full = len(run_requests(run, None, seed)) if max_requests is not None else len(req)
            subsampled = len(req) < full
            if subsampled:
                what = (
                    "per-request measurements"
                    if run.per_request is not None
                    else "whole-run figures (no per-request data)"
                )
                notes.append(f"first {len(req):,} of {full:,} requests, compared with {what}")
            trace = write_trace_csv(req, workdir / "traces" / f"{_safe(run.run_id)}.csv")
            pred = predict(run, req, trace, engine, cost_model, profile, host)
            measured = measured_over(run, req, subsampled)
            rec.update(requests=len(req), subsampled=subsampled, wall_s=pred.wall_s)
            rec.update(kv_blocks_moesim=pred.kv_blocks, kv_blocks_recorded=run.kv_blocks)
            for key in METRICS:
                p, m = pred.metrics[key], measured[key]
                rec[f"measured_{key}"], rec[f"predicted_{key}"] = m, p
                rec[f"error_{key}"] = p / m - 1 if m > 0 and math.isfinite(p) else math.nan
            rec["predicted_overloaded"] = pred.overloaded
            if not run.overloaded:
                staged += stage_rows(run, req, pred, subsampled)
            mf = req["measured_failed"].to_numpy(bool) if "measured_failed" in req else np.zeros(len(req), bool)
            rec["measured_failed"] = float(mf.sum()) if mf.any() else run.failed
            rec["predicted_failed"] = pred.failed
            arr = req["arrival_s"].to_numpy(float)
            rec["measured_first_failed_s"] = float(arr[mf].min()) if mf.any() else math.nan
            rec["predicted_first_failed_s"] = pred.first_failed_s
            if pred.overloaded:
                notes.insert(0, f"simulator: overloaded ({pred.reason})")
            elif run.overloaded:
                notes.insert(0, "simulator: sustained")
            if run.overloaded:
                rec["status"] = "overloaded"
                notes.insert(0, "measured run overloaded (failed requests): left out of the summary")
            else:
                rec["status"] = "ok"
        except MoesimError as exc:
            rec["status"] = "error"
            notes.insert(0, exc.one_line())
        rec["note"] = "; ".join(notes)
        records.append(rec)
    if progress:
        progress(len(runs), len(runs), "done")
    rows = pd.DataFrame(records)
    stages = pd.DataFrame(staged)
    summary = error_summary(rows)
    summary.update(
        engine=engine,
        max_requests=max_requests,
        profile=profile,
        wall_s=float(rows.get("wall_s", pd.Series(dtype=float)).sum()),
        stages=stage_summary(stages),
    )
    return Validation(rows, summary, stages)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]


def scatter_plot(rows: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Predicted against measured per metric (log-log, the y = x line and +-10 % / +-25 % bands); None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = ["e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.2))
    for ax, key in zip(axes, keys, strict=True):
        seen: list[float] = []
        for status, marker in (("ok", "o"), ("overloaded", "x")):
            sub = rows[rows["status"] == status] if "status" in rows else rows.iloc[:0]
            if f"measured_{key}" not in sub:
                continue
            m, p = sub[f"measured_{key}"].to_numpy(float), sub[f"predicted_{key}"].to_numpy(float)
            keep = (m > 0) & (p > 0) & np.isfinite(m) & np.isfinite(p)
            ax.scatter(m[keep], p[keep], marker=marker, label=status, alpha=0.8)
            seen += [*m[keep], *p[keep]]
        lo, hi = (min(seen) / 1.5, max(seen) * 1.5) if seen else (1.0, 10.0)
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, xs, "k-", lw=1, label="y = x")
        for f, style in ((0.1, "--"), (0.25, ":")):
            ax.plot(xs, xs * (1 + f), "k" + style, lw=0.6, label=f"±{f:.0%}")
            ax.plot(xs, xs * (1 - f), "k" + style, lw=0.6)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured {METRICS[key][0]} (ms)")
        ax.set_ylabel(f"predicted {METRICS[key][0]} (ms)")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def today() -> str:
    """The UTC date, for provenance lines."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
