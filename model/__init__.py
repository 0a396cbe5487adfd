"""moesim's model package: what is simulated, on what, and what a step costs.

Public API:

- specs: `ModelSpec` (from a HF ``config.json``: `load_model`,
  `model_from_config`, `preset_names`), `HardwareSpec`, `ClusterSpec`
  (`get_gpu`, `list_gpus`, `get_cluster`, `list_clusters`, `make_cluster`),
  `Layout`, `Batch`, `Precision`;
- parameters: `count_params`, `ParamCounts`;
- the operator model: `decompose`, `Op`;
- routing arithmetic: `expected_distinct_experts`, `gpu_loads`, `token_fanout`;
- the roofline: `CostModel`, `RooflineCostModel`, `OpTime`, `estimate_step`,
  `StepEstimate`;
- memory: `estimate_memory`, `MemoryEstimate`;
- CAP: `cap_metrics`, `CapMetrics`, `CostAssumptions`, `utilisation_exact`,
  `utilisation_moecap`, `load_accuracy`, `accuracy_for`;
- errors: `MoesimError` and its subclasses.
"""

from moesim.model.accuracy import accuracy_for, load_accuracy
from moesim.model.batch import Batch
from moesim.model.cap import (
    CapMetrics,
    CostAssumptions,
    Utilisation,
    cap_metrics,
    usd_per_gpu_second,
    utilisation_exact,
    utilisation_moecap,
)
from moesim.model.dtypes import DTYPE_BYTES, KV_DTYPES, WEIGHT_DTYPES, Precision, dtype_bytes
from moesim.model.errors import ConfigError, HardwareError, LayoutError, MoesimError
from moesim.model.hardware import (
    ClusterSpec,
    HardwareSpec,
    NodeSpec,
    get_cluster,
    get_gpu,
    list_clusters,
    list_gpus,
    local_cpu,
    make_cluster,
)
from moesim.model.hf_config import SUPPORTED_FAMILIES, load_model, model_from_config, preset_names
from moesim.model.layout import Layout
from moesim.model.memory import MemoryEstimate, estimate_memory, kv_bytes_per_token, weight_bytes_per_gpu
from moesim.model.ops import Op, collective, decompose, experts_op, gemm
from moesim.model.params import (
    COMPONENTS,
    LayerSet,
    ParamCounts,
    count_params,
    layer_groups,
    layer_sets,
    published_active,
    published_params,
)
from moesim.model.roofline import CostModel, OpTime, RooflineCostModel, StepEstimate, estimate_step
from moesim.model.routing import GpuLoad, expected_distinct_experts, gpu_loads, token_fanout
from moesim.model.spec import AttentionSpec, ModelSpec, MoESpec

__all__ = [
    "COMPONENTS",
    "DTYPE_BYTES",
    "KV_DTYPES",
    "SUPPORTED_FAMILIES",
    "WEIGHT_DTYPES",
    "AttentionSpec",
    "Batch",
    "CapMetrics",
    "ClusterSpec",
    "ConfigError",
    "CostAssumptions",
    "CostModel",
    "GpuLoad",
    "HardwareError",
    "HardwareSpec",
    "LayerSet",
    "Layout",
    "LayoutError",
    "MemoryEstimate",
    "MoESpec",
    "ModelSpec",
    "MoesimError",
    "NodeSpec",
    "Op",
    "OpTime",
    "ParamCounts",
    "Precision",
    "RooflineCostModel",
    "StepEstimate",
    "Utilisation",
    "accuracy_for",
    "cap_metrics",
    "collective",
    "count_params",
    "decompose",
    "dtype_bytes",
    "estimate_memory",
    "estimate_step",
    "expected_distinct_experts",
    "experts_op",
    "gemm",
    "get_cluster",
    "get_gpu",
    "gpu_loads",
    "kv_bytes_per_token",
    "layer_groups",
    "layer_sets",
    "list_clusters",
    "list_gpus",
    "load_accuracy",
    "load_model",
    "local_cpu",
    "make_cluster",
    "model_from_config",
    "preset_names",
    "published_active",
    "published_params",
    "token_fanout",
    "usd_per_gpu_second",
    "utilisation_exact",
    "utilisation_moecap",
    "weight_bytes_per_gpu",
]
