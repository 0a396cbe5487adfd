"""Routing-statistics importers and placement exporters, on files built the way each producer writes them."""

from __future__ import annotations

import json
import shlex
import sys

import numpy as np
import pytest
import yaml

from moesim.model.errors import MoesimError
from moesim.placement.exporters import FILES, FORMATS, export_plan, launch_flags, read_plan
from moesim.placement.importers import load_stats, save_stats_npz
from moesim.placement.plan import PlacementPlan
from moesim.placement.stats import RoutingStats

# SGLang fixtures: 3 decoder layers (layer 0 dense), 4 logical experts, 6 physical slots (the note's example map).
P2L = [[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 0, 1], [3, 2, 0, 1, 3, 3]]


def _ids(rows: list[list[list[int]]]) -> np.ndarray:
    """[layers, tokens, 8] int32 physical ids, -1 padded to SGLang's 8 columns."""
    a = np.full((3, len(rows[0]), 8), -1, np.int32)
    for layer, per_token in enumerate(rows):
        for t, ids in enumerate(per_token):
            a[layer, t, : len(ids)] = ids
    return a


def _record(torch, pass_id: int, rows: list[list[list[int]]], rank: int = 0) -> dict:
    ids = _ids(rows)
    return {
        "forward_pass_id": pass_id,
        "rank": rank,
        "gatherer_key": "primary",
        "input_ids": list(range(ids.shape[1])),
        "positions": list(range(ids.shape[1])),
        "extend_seq_lens": None,
        "forward_mode": 2,
        "topk_ids_of_layer": torch.from_numpy(ids),
        "misc_objects": [],
        "global_physical_count": torch.zeros((3, 6), dtype=torch.int32),
    }


# pass 1: two tokens, pass 2: one token; layer 0 dense (all -1)
PASS1 = [[[], []], [[4, 2], [5, 3]], [[0, 3], [2, 5]]]
PASS2 = [[[]], [[1, 4]], [[4, 1]]]
# through P2L: layer 1 maps 4->0, 5->1; layer 2 maps 0->3, 1->2, 2->0, 3->1, 4->3, 5->3
TRACE12 = [[[0, 2], [3, 1]], [[1, 3], [0, 3]], [[1, 0], [3, 2]]]


def test_sglang_per_token_maps_physical_to_logical(tmp_path):
    torch = pytest.importorskip("torch")
    f = tmp_path / "expert_distribution_recorder_1717000000.1_0.pt"
    recs = [_record(torch, 1, PASS1), _record(torch, 2, PASS2)]
    torch.save({"records": recs, "last_physical_to_logical_map": torch.tensor(P2L)}, f)
    s = load_stats(f, num_experts=4, moe_layer_ids=[1, 2])
    assert s.top_k == 2 and s.topk.tolist() == TRACE12
    assert s.counts.tolist() == [[2, 2, 1, 1], [1, 1, 1, 3]]
    with pytest.raises(MoesimError, match="dense"):  # layer 0 has no load and nobody said it is dense
        load_stats(f)


def test_sglang_rank_directory_merges_and_counts_tp_duplicates_once(tmp_path):
    torch = pytest.importorskip("torch")
    p2l = torch.tensor(P2L)
    torch.save({"records": [_record(torch, 1, PASS1), _record(torch, 2, PASS2)], "last_physical_to_logical_map": p2l},
               tmp_path / "expert_distribution_recorder_1.0_0.pt")  # fmt: skip
    rank1 = [_record(torch, 1, PASS1, rank=1), _record(torch, 3, [[[]], [[0, 1]], [[3, 2]]], rank=1)]
    torch.save(
        {"records": rank1, "last_physical_to_logical_map": p2l}, tmp_path / "expert_distribution_recorder_1.0_1.pt"
    )
    s = load_stats(tmp_path, moe_layer_ids=[1, 2])
    assert s.num_tokens == 4  # pass 1 again on rank 1 (TP) is not counted twice
    assert sorted(map(tuple, s.topk[:, 0].tolist())) == sorted([(0, 2), (1, 3), (1, 0), (0, 1)])
    assert s.counts[1].tolist() == [2, 2, 1, 3]  # rank 1's pass 3, layer 2: slots 3, 2 -> experts 1, 0


def test_sglang_per_pass_and_stat(tmp_path):
    torch = pytest.importorskip("torch")
    c1 = torch.zeros((3, 6), dtype=torch.int32)
    c1[1] = torch.tensor([1, 0, 0, 0, 2, 0])
    c1[2] = torch.tensor([0, 0, 0, 0, 5, 1])
    c2 = torch.zeros((3, 6), dtype=torch.int32)
    c2[1] = torch.tensor([0, 1, 1, 1, 0, 1])
    c2[2] = torch.tensor([1, 1, 1, 1, 0, 0])
    recs = [{"forward_pass_id": i, "rank": 0, "gatherer_key": "primary", "global_physical_count": c}
            for i, c in enumerate([c1, c2])]  # fmt: skip
    torch.save({"records": recs, "last_physical_to_logical_map": torch.tensor(P2L)}, tmp_path / "pp_0.pt")
    s = load_stats(tmp_path / "pp_0.pt", moe_layer_ids=[1, 2])
    assert s.topk is None and s.counts.tolist() == [[3, 2, 1, 1], [1, 1, 1, 7]]

    lc = [[[0, 0, 0, 0], [5, 1, 0, 2], [3, 3, 1, 1]], [[0, 0, 0, 0], [2, 2, 2, 2], [0, 4, 4, 0]]]
    stat = {
        "rank": 0,
        "logical_count": torch.tensor(lc, dtype=torch.int32),
        "average_utilization_rate_over_window": None,
    }
    torch.save(stat, tmp_path / "expert_distribution_recorder_1717000000.123456.pt")
    s = load_stats(tmp_path / "expert_distribution_recorder_1717000000.123456.pt", 4, [1, 2])
    assert s.counts.tolist() == [[7, 3, 2, 4], [3, 7, 5, 1]]
    with pytest.raises(MoesimError, match=r"\[3 layers, 4 experts\].*8 experts"):
        load_stats(tmp_path / "expert_distribution_recorder_1717000000.123456.pt", num_experts=8)


def test_sglang_old_csv_and_missing_torch(tmp_path, monkeypatch):
    f = tmp_path / "expert_distribution_rank0_timestamp1.csv"
    f.write_text("layer_id,expert_id,count\n1,0,5\n1,3,2\n2,1,4\n2,2,1\n1,0,1\n")
    s = load_stats(f, num_experts=4, moe_layer_ids=[1, 2], fmt="sglang")
    assert s.counts.tolist() == [[6, 0, 0, 2], [0, 4, 1, 0]]
    (tmp_path / "d.pt").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MoesimError, match="needs torch") as e:
        load_stats(tmp_path / "d.pt")
    assert "moesim[profile]" in e.value.hint


def test_vllm_routed_experts(tmp_path):
    a = np.zeros((3, 3, 2), np.int32)  # decoder layer 0 dense: zeros
    a[:, 1:, :] = TRACE12
    np.save(tmp_path / "routed.npy", a)
    s = load_stats(tmp_path / "routed.npy", num_experts=4, moe_layer_ids=[1, 2])
    assert s.topk.tolist() == TRACE12 and s.counts.tolist() == [[2, 2, 1, 1], [1, 1, 1, 3]]
    np.savez(tmp_path / "reqs.npz", req0=a[:2], req1=a[2:])
    assert load_stats(tmp_path / "reqs.npz", 4, [1, 2]).topk.tolist() == TRACE12
    with pytest.raises(MoesimError, match=r"layers \[0\] have no expert load"):
        load_stats(tmp_path / "routed.npy")
    with pytest.raises(MoesimError, match=r"outside 0..2"):
        load_stats(tmp_path / "routed.npy", num_experts=3, moe_layer_ids=[1, 2])


def _mrec(step: int, layer: int, ids: list[list[int]], block: str = "decoder") -> str:
    r = {"step": step, "stage": "pre_dispatch", "block": block, "layer": layer, "rank": 0,
         "num_tokens": len(ids), "topk": len(ids[0]), "top_indices": ids}  # fmt: skip
    return json.dumps(r) + "\n"


def test_megatron_router_trace(tmp_path):
    d = tmp_path / "trace"
    d.mkdir()
    (d / "router_trace_rank0.jsonl").write_text(
        _mrec(0, 1, [[0, 2], [1, 3]]) + _mrec(0, 2, [[3, 1], [0, 3]]) + _mrec(0, 1, [[2, 2]], "mtp")
        + _mrec(1, 1, [[1, 0]]) + _mrec(1, 2, [[3, 2]])
    )  # fmt: skip
    (d / "router_trace_rank1.jsonl").write_text(_mrec(0, 1, [[0, 1]]) + _mrec(0, 2, [[2, 3]]))
    (d / "router_state_rank0.pt").write_bytes(b"ignored")
    s = load_stats(d, num_experts=4, moe_layer_ids=[1, 2])
    assert s.topk.tolist() == [*TRACE12, [[0, 1], [2, 3]]]
    assert s.counts.tolist() == [[3, 3, 1, 1], [1, 1, 2, 4]]
    assert load_stats(str(d / "router_trace_rank*.jsonl"), 4).topk.tolist() == s.topk.tolist()  # a glob

    # unequal token counts per layer: counts and per-record co-activation, no trace
    f = tmp_path / "router_trace_rank0.jsonl"
    f.write_text(_mrec(0, 3, [[0, 1], [0, 2]]) + _mrec(0, 4, [[1, 2]]))
    s = load_stats(f, num_experts=3)
    assert s.topk is None and s.top_k == 2
    assert s.counts.tolist() == [[2, 1, 1], [0, 1, 1]]
    assert s.coactivation_counts()[0].tolist() == [[2, 1, 1], [1, 1, 0], [1, 0, 1]]
    assert load_stats(f, num_experts=3, moe_layer_ids=[3, 4]).num_layers == 2


def test_moecap(tmp_path):
    f = tmp_path / "expert_distribution_record.jsonl"
    timing = {"forward_pass_id": 1, "batch_size": 1, "latency": 0.1, "seq_lens_sum": 10, "forward_mode": "prefill",
              "expert_activation": 3.5}  # fmt: skip
    counts = {"forward_pass_id": 1, "rank": 0, "expert_counts": [[1, 0, 2], [0, 3, 0]], "timestamp": 1.0}
    f.write_text("\n".join(json.dumps(r) for r in [timing, counts, {**counts, "forward_pass_id": 2}]) + "\n")
    assert load_stats(f).counts.tolist() == [[2, 0, 4], [0, 6, 0]]
    f.write_text(json.dumps(timing) + "\n")
    with pytest.raises(MoesimError, match="only the scalar 'expert_activation'") as e:
        load_stats(f)
    assert "expert_counts" in e.value.hint


def test_csv_long_and_wide(tmp_path):
    f = tmp_path / "long.csv"
    f.write_text("layer,expert,tokens\n0,0,3\n0,2,1\n1,1,4\n")
    assert load_stats(f, num_experts=3).counts.tolist() == [[3, 0, 1], [0, 4, 0]]
    f.write_text("layer,e0,e1\n5,1,2\n7,3,4\n")
    s = load_stats(f, moe_layer_ids=[5, 7])
    assert s.counts.tolist() == [[1, 2], [3, 4]]
    f.write_text("1,2,3\n4,5,6\n")
    assert load_stats(f).counts.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_npz_round_trip(tmp_path):
    trace = np.array(TRACE12)
    s = RoutingStats.from_topk(trace, 4, "t")
    save_stats_npz(s, tmp_path / "s.npz")
    back = load_stats(tmp_path / "s.npz", num_experts=4)
    assert back.topk.tolist() == TRACE12 and back.counts.tolist() == s.counts.tolist() and back.top_k == 2
    co = RoutingStats(counts=s.counts, top_k=2, coactivation=s.coactivation_counts())
    save_stats_npz(co, tmp_path / "c.npz")
    back = load_stats(tmp_path / "c.npz")
    assert back.topk is None and np.array_equal(back.coactivation, s.coactivation_counts())
    assert not list(tmp_path.glob(".*tmp"))


def test_json_counts_and_token_collect(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"counts": [[1, 2], [3, 4]]}))
    assert load_stats(f).counts.tolist() == [[1, 2], [3, 4]]
    f.write_text(json.dumps({"0": {"0": 5, "2": 1}, "1": {"1": 7}}, indent=2))
    assert load_stats(f, num_experts=3).counts.tolist() == [[5, 0, 1], [0, 7, 0]]


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("bad.npz", b"PK\x03\x04garbage", "cannot read"),
        ("bad.json", b"{not json", "not valid JSON"),
        ("nan.json", b'{"counts": [[1, NaN], [2, 3]]}', "NaN"),
        ("neg.csv", b"1,-2\n3,4\n", "negative"),
        ("plan.json", b'{"physical_to_logical_map": [[0]]}', "unknown JSON"),
        ("x.parquet", b"", "cannot tell"),
        ("bad.npy", b"\x93NUMPY broken", "cannot read"),
    ],
)
def test_bad_inputs(tmp_path, name, data, match):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(MoesimError, match=match) as e:
        load_stats(tmp_path / name)
    assert name in e.value.message and e.value.hint


def test_bad_pt_and_missing_paths(tmp_path):
    torch = pytest.importorskip("torch")
    (tmp_path / "bad.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(MoesimError, match=r"bad\.pt"):
        load_stats(tmp_path / "bad.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(MoesimError, match="not an SGLang recorder dump"):
        load_stats(tmp_path / "other.pt")
    with pytest.raises(MoesimError, match="no such file"):
        load_stats(tmp_path / "nope.npz")
    with pytest.raises(MoesimError, match="unknown statistics format"):
        load_stats(tmp_path / "other.pt", fmt="parquet")


# exporters --------------------------------------------------------------------------------------------------------
P2L_PLAN = [[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3], [7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4]]


def _plan() -> PlacementPlan:
    """3 decoder layers (0 dense), 2 MoE layers, 8 experts + 4 redundant on 4 GPUs, 2 per node."""
    return PlacementPlan(np.array(P2L_PLAN), num_experts=8, num_gpus=4, gpus_per_node=2, moe_layer_ids=[1, 2],
                         num_hidden_layers=3)  # fmt: skip


def _round_trip(paths, fmt: str) -> None:
    back = read_plan(paths[0], fmt, 8, 4, 2, moe_layer_ids=[1, 2], num_hidden_layers=3)
    assert back.phys_to_log.tolist() == P2L_PLAN and back.moe_layer_ids == [1, 2]


def test_export_sglang(tmp_path):
    paths = export_plan(_plan(), "sglang", tmp_path)
    d = json.loads(paths[0].read_text())
    assert list(d) == ["physical_to_logical_map"]
    assert d["physical_to_logical_map"] == [[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3], *P2L_PLAN]  # dense row filled
    _round_trip(paths, "sglang")
    flags = shlex.split(launch_flags(_plan(), "sglang", paths[0]), comments=True)
    for a, b in [("--init-expert-location", str(paths[0])), ("--ep-num-redundant-experts", "4"), ("--ep-size", "4"),
                 ("--tp-size", "4"), ("--ep-dispatch-algorithm", "static"), ("--nnodes", "2")]:  # fmt: skip
        assert flags[flags.index(a) + 1] == b


def test_export_eplb(tmp_path):
    paths = export_plan(_plan(), "eplb", tmp_path)
    assert [p.name for p in paths] == ["eplb_plan.npz", "eplb_plan.json"]
    d = json.loads(paths[1].read_text())
    assert set(d) == {"phy2log", "log2phy", "logcnt"} and d["phy2log"] == P2L_PLAN
    assert d["logcnt"][0] == [2, 2, 2, 2, 1, 1, 1, 1]
    assert d["log2phy"][0][0] == [0, 8] and d["log2phy"][0][7] == [7, -1]  # slot order, -1 padded
    with np.load(paths[0]) as z:
        assert z["log2phy"].tolist() == d["log2phy"]
    for p in paths:
        _round_trip([p], "eplb")


def test_export_vllm(tmp_path):
    paths = export_plan(_plan(), "vllm", tmp_path)
    d = json.loads(paths[0].read_text())
    assert d == {"physical_to_logical_map": P2L_PLAN, "num_redundant_experts": 4, "num_logical_experts": 8}
    _round_trip(paths, "vllm")
    text = launch_flags(_plan(), "vllm", paths[0])
    flags = shlex.split(text, comments=True)
    assert "--enable-expert-parallel" in flags and "--enable-eplb" in flags
    assert json.loads(flags[flags.index("--eplb-config") + 1]) == {"num_redundant_experts": 4}
    assert "# upstream vLLM cannot load" in text


def test_export_vllm_ascend(tmp_path):
    paths = export_plan(_plan(), "vllm-ascend", tmp_path)
    d = json.loads(paths[0].read_text())
    assert d["moe_layer_count"] == 2 and len(d["layer_list"]) == 2
    layer = d["layer_list"][1]
    assert set(layer) == {"layer_id", "device_count", "device_list"} and layer["layer_id"] == 1
    assert layer["device_count"] == 4
    assert layer["device_list"][2] == {"device_id": 2, "device_expert": [1, 0, 7]}
    _round_trip(paths, "vllm-ascend")
    flags = shlex.split(launch_flags(_plan(), "vllm-ascend", paths[0]))
    cfg = json.loads(flags[flags.index("--additional-config") + 1])
    assert cfg == {"eplb_config": {"expert_map_path": str(paths[0])}}


def test_export_trtllm(tmp_path):
    paths = export_plan(_plan(), "trtllm", tmp_path)
    options, balancer = (yaml.safe_load(p.read_text()) for p in paths)
    assert balancer == {"num_slots": 12, "initial_global_assignments": {1: P2L_PLAN[0], 2: P2L_PLAN[1]},
                        "layer_updates_per_iter": 0}  # fmt: skip
    assert "  1: [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]" in paths[1].read_text()  # int keys, flow-style lists
    assert options == {"enable_attention_dp": True, "moe_config": {"load_balancer": str(paths[1].resolve())}}
    _round_trip(paths, "trtllm")  # through the options file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES["trtllm"])  # no temp files left
    _round_trip(paths[1:], "trtllm")
    assert shlex.split(launch_flags(_plan(), "trtllm", paths[0]), comments=True) == [
        "--extra_llm_api_options",
        str(paths[0]),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_refuses_bad_plan_and_writes_nothing(tmp_path, fmt):
    plan = _plan()
    plan.phys_to_log[1] = [0, 1, 2, 3, 4, 5, 6, 6, 0, 1, 2, 3]  # expert 7 lost in MoE layer 1
    with pytest.raises(MoesimError, match="expert 7 no slot"):
        export_plan(plan, fmt, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert len(FILES[fmt]) >= 1


def test_read_plan_rejects_extra_keys_and_wrong_sizes(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"physical_to_logical_map": P2L_PLAN, "extra": 1}))
    with pytest.raises(MoesimError, match="only physical_to_logical_map"):
        read_plan(f, "sglang", 8, 4, 2)
    paths = export_plan(_plan(), "vllm-ascend", tmp_path)
    with pytest.raises(MoesimError, match="does not list 2 devices"):
        read_plan(paths[0], "vllm-ascend", 8, 2, 2)
    paths = export_plan(_plan(), "vllm", tmp_path)
    with pytest.raises(MoesimError, match="expert counts disagree"):
        read_plan(paths[0], "vllm", 10, 4, 2)
    f.write_text("{broken")
    with pytest.raises(MoesimError, match="cannot read"):
        read_plan(f, "trtllm", 8, 4, 2)
