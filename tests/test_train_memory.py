"""Training memory as the frameworks keep it: each saving by its expected bytes, MTP, uneven pipeline layouts,
the published layouts that ran fit, and the bad-input lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fast_inputs import train_scenario  # tests/fast_inputs.py

from moesim.dashboard.cli import main
from moesim.model import MoesimError, RooflineCostModel
from moesim.sim.training.pipeline import parse_pipeline_layout, split_stage_units
from moesim.sim.training.train import load, run
from moesim.sim.training.train_cost import unit_costs
from moesim.sim.training.train_memory import E5M6_TILE_BYTES, FP8_TILE_BYTES, KINDS

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
K = {k: i for i, k in enumerate(KINDS)}


def small(**over: object) -> dict:
    """OLMoE (16 MoE layers, 64 experts, top-8, h 2048, i 1024) on one 8-GPU H100 node, TP2 EP4 PP2."""
    return train_scenario({"layout": {"tp": 2}, "batch": {"global_batch": 16}}, over)


def kinds(**over: object) -> np.ndarray:
    """Saved bytes by kind of decoder layer 0 (unit 1) for one micro-batch."""
    uc = unit_costs(load(small(**over)), RooflineCostModel())
    assert uc.act_kinds is not None
    return uc.act_kinds[1]


T, H, W, TP = 1024, 2048, 1024, 2  # tokens per micro-batch, hidden, expert width, tensor parallelism


def test_expert_tensors_are_the_pairs_times_their_widths() -> None:
    k = kinds(activations={"probs_in_act": False})
    fc1 = k[K["expert_fc1_in"]]  # P x h x 2
    assert k[K["moe_act_in"]] == pytest.approx(fc1 * 2 * W / H)
    assert k[K["moe_act_out"]] == pytest.approx(fc1 * W / H)
    assert k[K["expert_out"]] == pytest.approx(fc1)  # the unpermutation keeps every expert output
    folded = kinds()  # Megatron >= v0.13: the routing weight multiplies inside the activation
    assert folded[K["expert_out"]] == pytest.approx(fc1 / H * 4.0 / 2.0)  # one fp32 weight per pair instead


def test_each_saving_removes_its_tensors_and_nothing_else() -> None:
    base = kinds(recompute="selective", activations={"recompute_modules": []})
    cases = {
        "layernorm": (["attn_norm_out", "mlp_norm_out"], 2 * T / TP * H * 2),  # sequence-parallel norm outputs
        "moe_act": (["moe_act_out"], base[K["expert_fc1_in"]] * W / H),
        "core_attn": ([], T * (16 // TP) * 4.0),  # FlashAttention's fp32 log-sum-exp only
        "moe": (["router", "expert_fc1_in", "moe_act_in", "moe_act_out", "expert_out"], None),
    }
    for module, (gone, nbytes) in cases.items():
        k = kinds(recompute="selective", activations={"recompute_modules": [module]})
        for name in gone:
            assert k[K[name]] == 0.0, (module, name)
        saved = base.sum() - k.sum()
        expected = nbytes if nbytes is not None else sum(base[K[g]] for g in gone)
        assert saved == pytest.approx(expected), module


def test_fp8_caching_and_e5m6_keep_fewer_bytes_per_element() -> None:
    bf = kinds(precision={"gemm": "fp8"})
    f8 = kinds(precision={"gemm": "fp8"}, activations={"moe_act_input": "fp8", "attn_out": "e5m6"})
    assert f8[K["moe_act_in"]] == pytest.approx(bf[K["moe_act_in"]] * FP8_TILE_BYTES / 2.0)
    out = T * (16 // TP) * 128  # attention output elements of 8 heads x 128
    assert bf[K["core_attn_out"]] == pytest.approx(out * (2.0 + FP8_TILE_BYTES) + T * 8 * 4.0)  # bf16 + fp8 copy
    assert f8[K["core_attn_out"]] == pytest.approx(out * E5M6_TILE_BYTES + T * 8 * 4.0)  # one E5M6 copy
    assert bf[K["expert_fc1_in"]] == pytest.approx(kinds()[K["expert_fc1_in"]] * FP8_TILE_BYTES / 2.0)


def test_cross_entropy_keeps_fp32_softmax_unless_transformer_engine_writes_the_bf16_gradient() -> None:
    heads = {}
    for ce in ("unfused", "fused", "te"):
        uc = unit_costs(load(small(activations={"cross_entropy": ce})), RooflineCostModel())
        heads[ce] = (uc.act_bytes[-1], uc.work_bytes[-1])
    logits = T * 50304 / TP
    assert heads["unfused"][0] - heads["te"][0] == pytest.approx(logits * 2.0)
    assert heads["fused"][0] == heads["unfused"][0] and heads["fused"][1] < heads["unfused"][1]


def test_offloading_moves_a_modules_input_to_host_memory() -> None:
    setup = load(small())
    base = unit_costs(setup, RooflineCostModel())
    off = unit_costs(load(small(activations={"offload_modules": ["expert_fc1"]})), RooflineCostModel())
    assert off.host_bytes is not None and base.act_kinds is not None
    assert np.allclose(base.act_bytes - off.act_bytes, off.host_bytes)
    assert off.host_bytes[1] == pytest.approx(base.act_kinds[1, K["expert_fc1_in"]])


def test_full_recompute_keeps_each_layers_input_and_reruns_its_forward() -> None:
    none = unit_costs(load(small()), RooflineCostModel())
    full = unit_costs(load(small(recompute="full")), RooflineCostModel())
    assert full.act_bytes[1:-1] == pytest.approx(np.full(16, T / TP * H * 2.0))
    assert full.b[1:-1].sum() == pytest.approx(none.b[1:-1].sum() + none.f[1:-1].sum())


def test_selective_recompute_pays_the_forward_of_what_it_drops() -> None:
    none = unit_costs(load(small()), RooflineCostModel())
    moe = unit_costs(
        load(small(recompute="selective", activations={"recompute_modules": ["moe"]})), RooflineCostModel()
    )
    extra = moe.b[1] - none.b[1]
    assert extra[0] > 0 and extra[2] > 0  # the experts' kernels and the dispatch/combine run again
    assert (extra <= none.f[1] + 1e-12).all()


# ---- multi-token prediction --------------------------------------------------------------------------------


def dsv3(**over: object) -> dict:
    sc: dict = {
        "model": "deepseek-v3", "gpu": "H800", "nodes": 32, "gpus_per_node": 8,
        "layout": {"tp": 1, "pp": 4, "ep": 64, "zero": 1},
        "batch": {"global_batch": 128, "micro_batch": 1, "seq_len": 4096},
    }  # fmt: skip
    sc.update(over)
    return sc


def test_mtp_adds_a_layer_like_the_last_one_and_a_head_on_the_last_stage() -> None:
    plain = unit_costs(load(dsv3()), RooflineCostModel())
    setup = load(dsv3(mtp_layers=1))
    mtp = unit_costs(setup, RooflineCostModel())
    assert mtp.units == plain.units + 1 == 61 + 3
    assert mtp.expert_params[62] == plain.expert_params[61]  # the MTP layer's experts: an MoE layer's
    h = 7168
    eh_proj_and_norms = 2 * h * h + 2 * h
    embedding_copy = 129280 * h  # Megatron builds the embedding where the MTP layer runs
    assert mtp.dense_params[62] == pytest.approx(plain.dense_params[61] + eh_proj_and_norms)
    assert mtp.dense_params[63] == pytest.approx(plain.dense_params[62] + embedding_copy)
    assert mtp.f[62].sum() > plain.f[61].sum()  # its decoder layer, eh_proj and its own head
    assert setup.stage_units[-1][-3:] == (61, 62, 63)  # the last layer, the MTP layer, the head


# ---- uneven pipeline layouts -------------------------------------------------------------------------------


def test_uneven_layouts_place_every_unit_once_in_order() -> None:
    ds = parse_pipeline_layout("Et*3|(tt|)*29,m|L", 32, 61, 1)  # Megatron's own PP16 VPP2 example
    assert [u for s in ds for u in s] == list(range(64))
    assert ds[0] == [0, 1, 2, 3] and ds[-2] == [62] and ds[-1] == [63]
    first_last = split_stage_units(61, 16, pp=16, first=3, last=2)
    assert [len(s) for s in first_last] == [4] + [4] * 14 + [3]  # embedding + 3, 4 x 14, 2 + head
    assert [u for s in first_last for u in s] == list(range(63))
    qwen = split_stage_units(94, 32, pp=8, account_embedding=True, account_loss=True)
    assert all(len(s) == 3 for s in qwen) and qwen[0][0] == 0 and qwen[-1][-1] == 95
    vpp = split_stage_units(32, 8, pp=4, first=4, last=12)  # ranks 4, 8, 8, 12 layers over 2 chunks each
    assert [len(s) for s in vpp] == [3, 4, 4, 6, 2, 4, 4, 7]


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"layout": {"pp": 4, "ep": 2, "first_stage_layers": 3, "last_stage_layers": 2}},
         "leave 11 of the 16 layers for 2 other pipeline ranks: the stage sizes do not add up"),
        ({"layout": {"pipeline_layout": "Et*7|t*8L"}}, "places 15 decoder layers, the model has 16"),
        ({"layout": {"pipeline_layout": "Et*8|t*8|L"}}, "has 3 stages, the layout needs 2"),
        ({"layout": {"account_for_embedding": True, "pp": 4, "ep": 2}}, "do not split evenly"),
        ({"mtp_layers": 1}, "mtp_layers=1 but olmoe-1b-7b has no multi-token-prediction layers"),
        ({"activations": {"recompute_modules": ["attention"]}}, "activations.recompute_modules"),
        ({"activations": {"recompute_modules": ["moe"]}}, "recompute_modules is set but recompute is 'none'"),
    ],
)  # fmt: skip
def test_bad_layouts_and_mtp_are_one_error(over: dict, needle: str) -> None:
    with pytest.raises(MoesimError, match=needle):
        run(small(**over))


def test_cli_bad_mtp_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for over, needle in (({"mtp_layers": 2}, "no multi-token-prediction layers"),
                         ({"layout": {"first_stage_layers": 20}}, "the stage sizes do not add up")):  # fmt: skip
        path = tmp_path / "bad.yaml"
        path.write_text(json.dumps(small(**over)))
        assert main(["train", str(path), "--json"]) == 1
        cap = capsys.readouterr()
        lines = [x for x in cap.err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in cap.err and cap.out == ""


# ---- the published configurations that ran fit ------------------------------------------------------------

PUBLISHED = [
    "train-deepseek-v3-h800.yaml",  # DeepSeek-V3 report: 2,048 H800, PP16 DualPipe EP64 (80 GB)
    "train-deepseek-v3-megatron-h100.yaml",  # Megatron-MoE-ModelZoo: 1,024 H100, TP2 PP8 VPP4 EP64
    "train-mixtral-8x7b-h100.yaml",  # Megatron MoE README: 64 H100, TP1 EP8 PP4 VP8
    "train-mixtral-8x22b-h100.yaml",  # Megatron MoE README: 128 H100, TP4 EP2 PP8 VP7
    "train-qwen3-235b-h100.yaml",  # Megatron-MoE-ModelZoo: 256 H100, TP2 PP8 VPP4 EP32
]


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configurations_fit_and_say_what_dominates(name: str) -> None:
    s = run(ROOT / "examples" / name, cost_model=RooflineCostModel()).summary
    assert s["fits"], s["memory_verdict"]
    assert s["mem_per_gpu_gib"] < 80.0
    kinds_gib = s["activations_by_kind_gib"]
    assert sum(kinds_gib.values()) == pytest.approx(s["mem_by_component_gib"]["activations"], rel=1e-6)
    assert s["memory_dominant"].split()[0] in s["mem_by_component_gib"]


def test_deepseek_v3_published_layout_is_the_one_expressed() -> None:
    setup = load(ROOT / "examples" / "train-deepseek-v3-h800.yaml")
    assert setup.mtp == 1 and len(setup.stage_units) == 16
    assert setup.stage_units[0] == (0, 1, 2, 3) and setup.stage_units[-1] == (60, 61, 62, 63)


def test_offload_copies_show_only_beyond_the_computation() -> None:
    fast = unit_costs(load(small(activations={"offload_modules": ["expert_fc1"]})), RooflineCostModel())
    slow = unit_costs(load(small(activations={"offload_modules": ["expert_fc1"], "offload_gbps": 0.01})),
                      RooflineCostModel())  # fmt: skip
    base = unit_costs(load(small()), RooflineCostModel())
    assert fast.host_bytes is not None
    copy_s = fast.host_bytes[1] / 0.01e9
    assert slow.f[1, 0] == pytest.approx(copy_s - base.f[1, 1])  # the copy outlasts the layer: the copy is the time
    # at 64 GB/s, 17 MB of OLMoE's dispatched tokens take 0.27 ms: longer than the layer's 0.14 ms of kernels
    assert fast.f[1, 0] == pytest.approx(max(base.f[1, 0], fast.host_bytes[1] / 64e9 - base.f[1, 1]))
    assert fast.f[1, 0] > base.f[1, 0]
