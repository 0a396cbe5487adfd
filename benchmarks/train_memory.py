"""Training memory of published MoE training runs that ran: peak per GPU and what dominates it.

Each configuration ran on 80 GB GPUs, with the layout its source states (the example file cites it and names
every setting that had to be guessed):

- DeepSeek-V3 technical report (arXiv 2412.19437): 2,048 H800, PP16 DualPipe, EP64, FP8
  (``examples/train-deepseek-v3-h800.yaml``);
- Megatron-MoE-ModelZoo DeepSeek-V3 best practice: 1,024 H100, TP2 PP8 VPP4 EP64, FP8, MTP, layout
  ``Et|(tt|)*30mL`` (``examples/train-deepseek-v3-megatron-h100.yaml``);
- Megatron-LM MoE README, reference mappings: Mixtral-8x7B on 64 H100 (TP1 EP8 PP4 VP8) and Mixtral-8x22B on
  128 H100 (TP4 EP2 PP8 VP7) (``examples/train-mixtral-8x{7,22}b-h100.yaml``);
- Megatron-MoE-ModelZoo Qwen3-235B-A22B: 256 H100, TP2 PP8 VPP4 EP32 (``examples/train-qwen3-235b-h100.yaml``), and
  the other layouts of its H100 table and its Long Context rows (16K-128K, context parallelism 1-8)
  (``examples/train-qwen3-235b-h100-*.yaml``);
- NVIDIA Megatron-Bridge's performance recipes (docs/performance-summary-archive.md, 26.04.01, DGX-H100):
  Qwen3-30B-A3B on 16 H100, Qwen3-235B-A22B in FP8 on 256 H100, gpt-oss-120b on 64 H100
  (``examples/train-*-bridge*.yaml``).

Run: ``python -m benchmarks.train_memory``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moesim.model import RooflineCostModel  # noqa: E402
from moesim.sim.training.train import run  # noqa: E402

EXAMPLES = ROOT / "examples"
#: (example file, the run as its source states it)
RUNS = (
    ("train-deepseek-v3-h800.yaml", "DeepSeek-V3, 2,048 H800, PP16 DualPipe EP64, FP8, MTP 1"),
    ("train-deepseek-v3-megatron-h100.yaml", "DeepSeek-V3, 1,024 H100, TP2 PP8 VPP4 EP64, FP8, MTP 1 (Megatron)"),
    ("train-mixtral-8x7b-h100.yaml", "Mixtral-8x7B, 64 H100, TP1 EP8 PP4 VP8, BF16 (Megatron)"),
    ("train-mixtral-8x22b-h100.yaml", "Mixtral-8x22B, 128 H100, TP4 EP2 PP8 VP7, BF16 (Megatron)"),
    ("train-qwen3-235b-h100.yaml", "Qwen3-235B-A22B, 256 H100, TP2 PP8 VPP4 EP32, BF16 (Megatron)"),
    ("train-qwen3-235b-h100-a2a-overlap.yaml", "Qwen3-235B-A22B, same + EP all-to-all overlap (Megatron)"),
    ("train-qwen3-235b-h100-fsdp-ep8.yaml", "Qwen3-235B-A22B, 256 H100, TP2 EP8 PP1 FSDP MBS4, full recompute"),
    ("train-qwen3-235b-h100-ep8-pp32.yaml", "Qwen3-235B-A22B, 256 H100, TP2 EP8 PP32 VPP3, NCCL a2a"),
    ("train-qwen3-235b-h100-tp4-ep8.yaml", "Qwen3-235B-A22B, 256 H100, TP4 EP8 PP8 VPP4, no recompute"),
    ("train-qwen3-235b-h100-16k.yaml", "Qwen3-235B-A22B, 256 H100, 16K seq, TP4 EP8 PP8 VPP4, recompute norm+moe"),
    ("train-qwen3-235b-h100-32k.yaml", "Qwen3-235B-A22B, 256 H100, 32K seq, TP4 CP2 EP8 PP8 VPP4"),
    ("train-qwen3-235b-h100-64k.yaml", "Qwen3-235B-A22B, 256 H100, 64K seq, TP4 CP4 EP8 PP8 VPP4"),
    ("train-qwen3-235b-h100-128k.yaml", "Qwen3-235B-A22B, 256 H100, 128K seq, TP4 CP8 EP8 PP8 VPP4"),
    ("train-qwen3-30b-a3b-h100-bridge.yaml", "Qwen3-30B-A3B, 16 H100, EP16, FP8, no recompute (Megatron-Bridge)"),
    (
        "train-qwen3-235b-h100-bridge-fp8.yaml",
        "Qwen3-235B-A22B, 256 H100, TP2 PP8 VP4 EP32, FP8, no recompute (Bridge)",
    ),
    ("train-gpt-oss-120b-h100-bridge.yaml", "gpt-oss-120b, 64 H100, PP4 EP8, BF16, recompute norm+act (Bridge)"),
)


def bench_train_memory() -> tuple[str, dict]:
    """Peak memory per GPU of each published run and its breakdown (the roofline times the pipeline)."""
    rows, stats = [], {}
    for name, label in RUNS:
        s = run(EXAMPLES / name, cost_model=RooflineCostModel()).summary
        c = s["mem_by_component_gib"]
        kinds = sorted(s["activations_by_kind_gib"].items(), key=lambda kv: -kv[1])[:3]
        stats[name] = {"mem_per_gpu_gib": s["mem_per_gpu_gib"], "fits": s["fits"], "components": c}
        rows.append(
            f"| {label} | {s['mem_per_gpu_gib']:.1f} | {'yes' if s['fits'] else 'no'} | {c['params']:.1f} | "
            f"{c['grads']:.1f} | {c['master_weights'] + c['optimizer_states']:.1f} | {c['activations']:.1f} | "
            f"{c['working'] + c['comm_buffers']:.1f} | " + ", ".join(f"{k} {v:.1f}" for k, v in kinds) + " |"
        )
    text = [
        "## Training memory of published runs (GiB per GPU, fullest pipeline rank)",
        "",
        "| run | peak | fits 80 GB | weights | grads | master + Adam | activations | working + buffers "
        "| largest activations |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    return "\n".join(text), stats


if __name__ == "__main__":
    print(bench_train_memory()[0])
