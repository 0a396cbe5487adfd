"""The largest counts moesim accepts from a user, in one place.

Every count read from a scenario, a sweep, a model config.json, a hardware file, a trace or a
command-line flag is checked against one of these before any work starts, so a typo such as
``requests: 1000000000000`` gives one error line naming the limit instead of a hang, an
``OverflowError`` or an out-of-memory crash. Each limit is far above any real deployment
(the largest public models, clusters and benchmarks) and low enough to keep memory and time sane.
"""

from __future__ import annotations

#: Requests in one serving workload (generated, or replayed from a trace).
MAX_REQUESTS = 10_000_000
#: Tokens in one request's prompt or output, or one training sequence (10 M: the longest contexts today).
MAX_TOKENS = 10_000_000
#: Request rate, requests/s.
MAX_RATE = 1e9
#: Durations and times given by a user (duration_s, think_s), seconds (about 31 years).
MAX_SECONDS = 1e9
#: Coefficient of variation of a length or arrival-gap distribution (both bounds).
MIN_CV, MAX_CV = 1e-3, 1e3
#: GPUs of a cluster, and any parallel size or replica count.
MAX_GPUS = 1_000_000
#: GPUs per node.
MAX_GPUS_PER_NODE = 1024
#: Sequences in one batch (serving max_batch, training global batch, roofline --batch).
MAX_BATCH = 10_000_000
#: Tokens (new + cached) of all sequences of one batch (roofline --batch x --ctx); keeps attention pair
#: counts inside int64.
MAX_BATCH_TOKENS = 1_000_000_000
#: Tokens in one engine step's budget (engine.max_tokens) or one placement trace (--tokens).
MAX_STEP_TOKENS = 100_000_000
#: Micro-batches per pipeline per training step.
MAX_MICROBATCHES = 10_000
#: Pipeline tasks one training run simulates (steps x micro-batches x pp x virtual stages x 3 passes).
MAX_PIPELINE_TASKS = 1_000_000
#: Decoder layers of a model config.json.
MAX_LAYERS = 1000
#: Routed experts per MoE layer.
MAX_EXPERTS = 16_384
#: Widths of a model config.json (hidden sizes, FFN widths, heads, head dims, ranks).
MAX_WIDTH = 1_048_576
#: Vocabulary entries and context length of a model config.json.
MAX_VOCAB = 16_777_216
MAX_CONTEXT = 134_217_728
#: A seed: numpy's generators take any non-negative integer; moesim keeps them to 64 bits.
MAX_SEED = 2**63 - 1
#: Capacity factor of token-dropping MoE routing.
MAX_CAPACITY_FACTOR = 1000.0
#: Hardware figures: FLOP/s, bytes/s, bytes and watts above these are typos.
MAX_HW_VALUE = 1e21
#: Points of one sweep (the product of its axes' lengths).
MAX_SWEEP_POINTS = 100_000
