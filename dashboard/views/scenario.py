"""Scenario: build a serving or training scenario (widgets, an example or an uploaded YAML) and run it."""

from __future__ import annotations

import copy

import pandas as pd
import streamlit as st

from moesim.dashboard.format import fmt_bytes, fmt_count, fmt_number, fmt_pct, fmt_rate, fmt_seconds, fmt_usd
from moesim.dashboard.logic import cap, charts
from moesim.dashboard.logic import scenario as sl
from moesim.dashboard.ui import (
    HELP,
    cost_model_badge,
    csv_bytes,
    guarded,
    json_bytes,
    mfu_label,
    page_header,
    smfu_note,
    smfu_value,
)
from moesim.sim.fidelity import check_line

page_header(
    "Scenario",
    "One deployment in detail. Serving: the analytical model answers at once; the discrete-event simulation "
    "replays every request. Training: one optimizer step through the pipeline schedule.",
)

SOURCES = ["Widgets", "Example file", "Upload a YAML"]
opened = st.session_state.get("scenario_opened")
if opened:
    SOURCES.append("Opened from another page")
with st.sidebar:
    st.subheader("Scenario")
    source = st.radio("Start from", SOURCES, key="scenario_source", horizontal=False)

mapping: dict | None = None
base_dir = str(sl.REPO)
origin = ""
if source == "Widgets":
    with st.sidebar:
        kind = st.radio("Kind", ["Serving", "Training"], key="sc_kind", horizontal=True)
        with guarded():
            models = cap.moe_models()
            gpus = cap.gpu_names()
        if kind == "Serving":
            d = sl.SERVING_DEFAULT
            model = st.selectbox("Model", models, index=models.index(d["model"]), key="sc_model")
            gpu = st.selectbox("GPU", gpus, index=gpus.index(d["gpu"]), key="sc_gpu")
            c1, c2 = st.columns(2)
            nodes = c1.number_input("Nodes", 1, 1024, d["nodes"], key="sc_nodes")
            gpn = c2.number_input("GPUs per node", 1, 16, d["gpus_per_node"], key="sc_gpn")
            c1, c2, c3, c4 = st.columns(4)
            tp = c1.number_input("TP", 1, 1024, d["layout"]["tp"], key="sc_tp", help="tensor parallel")
            dp = c2.number_input("DP-attn", 1, 1024, d["layout"]["dp_attn"], key="sc_dp", help="attention DP")
            ep = c3.number_input("EP", 1, 1024, d["layout"]["ep"], key="sc_ep", help="expert parallel")
            pp = c4.number_input("PP", 1, 256, d["layout"]["pp"], key="sc_pp", help="pipeline parallel")
            weights = st.selectbox("Weight precision", ["bf16", "fp8", "int4"], key="sc_weights")
            c1, c2 = st.columns(2)
            max_batch = c1.number_input("Max batch", 1, 65_536, d["engine"]["max_batch"], key="sc_max_batch")
            max_tokens = c2.number_input("Token budget", 1, 1_048_576, d["engine"]["max_tokens"], key="sc_max_tokens")
            st.markdown("**Workload**")
            wl = d["workload"]
            c1, c2 = st.columns(2)
            rate = c1.number_input("Rate (req/s)", 0.001, 1e6, wl["rate"], key="sc_rate")
            requests = c2.number_input("Requests", 10, 1_000_000, wl["requests"], key="sc_requests")
            c1, c2 = st.columns(2)
            in_mean = c1.number_input("Mean prompt", 1, 131_072, wl["input"]["mean"], key="sc_in")
            out_mean = c2.number_input("Mean output", 1, 32_768, wl["output"]["mean"], key="sc_out")
            skew = st.slider("Routing skew (0: uniform)", 0.0, 2.0, 0.0, 0.05, key="sc_skew", help="power-law exponent")
            c1, c2 = st.columns(2)
            ttft = c1.number_input("TTFT SLO (s)", 0.001, 600.0, d["slo"]["ttft_s"], key="sc_ttft", help=HELP["ttft"])
            tpot = c2.number_input("TPOT SLO (s)", 0.0001, 10.0, d["slo"]["tpot_s"], key="sc_tpot", help=HELP["tpot"])
            mapping = copy.deepcopy(d)
            mapping.update(name=f"{model}-{gpu}", model=model, gpu=gpu, nodes=int(nodes), gpus_per_node=int(gpn))
            mapping["precision"] = {"weights": weights}
            mapping["layout"] = {"tp": int(tp), "dp_attn": int(dp), "ep": int(ep), "pp": int(pp)}
            mapping["engine"] |= {"max_batch": int(max_batch), "max_tokens": int(max_tokens)}
            mapping["workload"] |= {"rate": float(rate), "requests": int(requests)}
            mapping["workload"]["input"] = {**wl["input"], "mean": int(in_mean), "max": max(8 * int(in_mean), 8192)}
            mapping["workload"]["output"] = {**wl["output"], "mean": int(out_mean), "max": max(8 * int(out_mean), 4096)}
            routing = {"distribution": "power", "exponent": skew} if skew > 0 else {"distribution": "uniform"}
            mapping["routing"] = routing
            mapping["slo"] = {"ttft_s": float(ttft), "tpot_s": float(tpot)}
        else:
            d = sl.TRAINING_DEFAULT
            model = st.selectbox("Model", models, index=models.index(d["model"]), key="tr_model")
            gpu = st.selectbox("GPU", gpus, index=gpus.index(d["gpu"]), key="tr_gpu")
            c1, c2 = st.columns(2)
            nodes = c1.number_input("Nodes", 1, 4096, d["nodes"], key="tr_nodes")
            gpn = c2.number_input("GPUs per node", 1, 16, d["gpus_per_node"], key="tr_gpn")
            c1, c2, c3 = st.columns(3)
            tp = c1.number_input("TP", 1, 64, d["layout"]["tp"], key="tr_tp")
            pp = c2.number_input("PP", 1, 128, d["layout"]["pp"], key="tr_pp")
            ep = c3.number_input("EP", 1, 1024, d["layout"]["ep"], key="tr_ep")
            c1, c2, c3 = st.columns(3)
            zero = c1.selectbox("ZeRO stage", [0, 1, 2, 3], index=1, key="tr_zero")
            vstages = c2.number_input("Virtual stages", 1, 64, d["layout"]["virtual_stages"], key="tr_v")
            cp = c3.number_input("CP", 1, 64, 1, key="tr_cp", help="context parallelism: a sequence over CP GPUs")
            c1, c2, c3 = st.columns(3)
            gbs = c1.number_input("Global batch", 1, 1_000_000, d["batch"]["global_batch"], key="tr_gbs")
            mbs = c2.number_input("Micro batch", 1, 1024, d["batch"]["micro_batch"], key="tr_mbs")
            seq = c3.number_input("Sequence", 1, 1_048_576, d["batch"]["seq_len"], key="tr_seq")
            gemm = st.selectbox("GEMM precision", ["bf16", "fp8"], key="tr_gemm")
            recompute = st.selectbox("Recompute", ["none", "selective", "full"], key="tr_recompute")
            mapping = copy.deepcopy(d)
            mapping.update(name=f"{model}-{gpu}-train", model=model, gpu=gpu, nodes=int(nodes), gpus_per_node=int(gpn))
            mapping["layout"] |= {"tp": int(tp), "pp": int(pp), "ep": int(ep), "zero": int(zero), "cp": int(cp)}
            mapping["layout"] |= {"virtual_stages": int(vstages), "schedule": "interleaved" if vstages > 1 else "1f1b"}
            mapping["batch"] = {"global_batch": int(gbs), "micro_batch": int(mbs), "seq_len": int(seq)}
            mapping["precision"] = {"gemm": gemm}
            mapping["recompute"] = recompute
elif source == "Example file":
    with st.sidebar:
        kind = st.radio("Kind", ["Serving", "Training"], key="sc_ex_kind", horizontal=True)
        ex = sl.examples(kind.lower())
        names = list(ex)
    if not names:  # installed from a wheel: examples/ stays in the repository
        st.info(
            "No example scenarios: examples/ comes with the repository, not the installed package. "
            "Start from widgets or upload a YAML."
        )
        st.stop()
    with st.sidebar:
        first = names.index("mixtral-8x7b-ep8") if "mixtral-8x7b-ep8" in names else 0
        name = st.selectbox("Example", names, index=first, key="sc_example")
    with guarded():
        mapping = sl.read_example(ex[name])
    base_dir, origin = str(ex[name].parent), f"examples/{ex[name].name}"
elif source == "Upload a YAML":
    with st.sidebar:
        up = st.file_uploader("Scenario YAML", type=["yaml", "yml"], key="sc_upload")
    if up is None:
        st.info("Upload a serving or training scenario YAML (see examples/*.yaml) in the sidebar.")
        st.stop()
    with guarded():
        mapping = sl.parse_yaml(up.getvalue(), up.name)
    origin = f"upload {up.name} (relative paths resolve against {base_dir})"
else:
    assert opened is not None
    mapping, base_dir, origin = opened["mapping"], opened["base_dir"], opened["source"]

assert mapping is not None
kind = sl.kind_of(mapping)
with guarded():
    sl.validate(mapping)
if origin:
    st.caption(f"{kind} scenario from {origin}")
yaml_text = sl.to_yaml(mapping)
with st.expander("Scenario YAML"):
    st.code(yaml_text, language="yaml")
fname = f"{mapping.get('name', 'scenario')}.yaml"
st.download_button("Download the scenario YAML", yaml_text.encode(), fname, "application/yaml", key="sc_dl_yaml")

if kind == "training":
    with guarded(), st.spinner("simulating one training step"):
        res = sl.run_training(mapping, base_dir)
    s = res["summary"]
    roofline = cost_model_badge(s["cost_model"])
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Step time", fmt_seconds(s["step_s"]), help="One optimizer step, seconds.")
    c2.metric("Tokens/s", fmt_rate(s["tokens_per_s"], "tok/s"), help="Training tokens per second, all GPUs.")
    c3.metric(
        mfu_label("MFU", roofline),
        fmt_pct(s["mfu"]),
        help="Model FLOP per second over the GPUs' peak."
        + (" Roofline mode: an upper bound, not a prediction." if roofline else ""),
    )
    c4.metric("Memory/GPU", fmt_bytes(s["mem_per_gpu_gib"] * 2**30), help=s["memory_verdict"])
    c5.metric("$ per B tokens", fmt_usd(s["usd_per_btok"]), help=s["cost_basis"])
    if not s["fits"]:
        st.warning(s["memory_verdict"])
    st.caption(f"{s['layout']} on {s['cluster']}; cost model: {s['cost_model']}")
    if s.get("checked_against"):  # how far off training predictions were against published runs
        st.caption(check_line(s["checked_against"]))
    st.plotly_chart(sl.training_breakdown_chart(s["breakdown"], s["step_s"]), key="tr_breakdown")
    mem = res["memory"]
    parts = [c for c in mem.columns if c not in ("rank", "total", "inflight_microbatches")]
    by_rank = {f"rank {int(r['rank'])}": {c: float(r[c]) for c in parts} for _, r in mem.iterrows()}
    gpu_bytes = sl.gpu_memory_bytes(s.get("gpu"))
    st.plotly_chart(sl.memory_chart(by_rank, "Memory per GPU by pipeline rank", gpu_bytes), key="tr_memory")
    d1, d2 = st.columns(2)
    d1.download_button("Summary (JSON)", json_bytes(s), "summary.json", "application/json", key="tr_dl_summary")
    d2.download_button("Tasks (CSV)", csv_bytes(res["tasks"]), "tasks.csv", "text/csv", key="tr_dl_tasks")
    st.stop()

# serving
des_key = yaml_text + base_dir
kept = st.session_state.get("sc_des")
ran_des = kept is not None and kept[0] == des_key
st.markdown("**Discrete-event simulation** of every request." if ran_des else "**Analytical model** (steady state).")
click = st.button(
    "Run the discrete-event simulation",
    type="primary",
    disabled=ran_des,
    help="Replays the workload's requests through the scheduler, step by step (seconds to minutes).",
)
if click:
    bar = st.progress(0.0, text="simulating")

    def progress(done: float, total: float, text: str) -> None:
        bar.progress(min(1.0, done / total) if total else 0.0, text=text or "simulating")

    with guarded():
        st.session_state["sc_des"] = (des_key, sl.run_serving(mapping, "des", base_dir, progress))
    st.rerun()  # draw the page again with the simulation's results, the button disabled

engine = "des" if ran_des else "analytical"
if ran_des:
    res = st.session_state["sc_des"][1]
else:
    with guarded(), st.spinner("running the analytical model"):
        res = sl.run_analytical(mapping, base_dir)
s = res["summary"]
roofline = cost_model_badge(s.get("cost_model"))
if s.get("overloaded"):
    st.warning(f"Overloaded: {s['overload_reason']}")
c = st.columns(4)
c[0].metric("TTFT p99", fmt_seconds(s["ttft_p99_s"]), help=HELP["ttft"])
c[1].metric("TPOT p99", fmt_seconds(s["tpot_p99_s"]), help=HELP["tpot"])
c[2].metric("Output", fmt_rate(s["throughput_tok_s"], "tok/s"), help=HELP["throughput"])
c[3].metric("SLO met", fmt_pct(s["slo_attainment"]), help=HELP["goodput"])
c = st.columns(4)
c[0].metric(mfu_label("S-MBU", roofline), fmt_pct(s["s_mbu"]), help=HELP["s_mbu"])
c[1].metric(mfu_label("S-MFU", roofline), smfu_value(s["s_mfu"], roofline), help=HELP["s_mfu"])
c[2].metric("$/M tok", fmt_usd(s["usd_per_mtok"]), help=HELP["cost"] + f" Basis: {s['cost_basis']}.")
c[3].metric("Mean batch", fmt_number(s["mean_batch"]), help="Sequences per decode step, on average.")
note = smfu_note(s["s_mfu"], roofline)
if note:
    st.caption("† " + note)
caption = sl.provenance_caption(s.get("cost_provenance"))
if caption:
    st.caption(caption)
if s.get("checked_against"):  # how far off predictions of this kind were against real runs
    st.caption(check_line(s["checked_against"]))
slo = mapping.get("slo") or {}
if engine == "des":
    st.caption(
        f"{fmt_count(s['requests'])} requests over {fmt_seconds(s['simulated_s'])} simulated in "
        f"{fmt_seconds(s['wall_s'])} wall; KV use up to {fmt_pct(s['max_kv_used'], 0)}, "
        f"preemptions {fmt_count(s['preemptions'])}"
    )
    series = sl.latency_cdf_series(res)
    a, b, c2 = st.columns(3)
    ttft_cdf = charts.cdf({"TTFT": series["TTFT"]}, "TTFT", "log scale", slo.get("ttft_s"), True)
    tpot_cdf = charts.cdf({"TPOT": series["TPOT"]}, "TPOT", "log scale", slo.get("tpot_s"), True)
    a.plotly_chart(ttft_cdf, key="sc_cdf_ttft")
    b.plotly_chart(tpot_cdf, key="sc_cdf_tpot")
    e2e = charts.cdf({"E2E": series["end-to-end"]}, "End-to-end", "arrival to last token")
    st.caption("Share of requests at or below each latency; dashed: the SLO.")
    c2.plotly_chart(e2e, key="sc_cdf_e2e")
    if not res["series"].empty:
        st.plotly_chart(sl.series_chart(res["series"]), key="sc_series")
else:
    st.caption(
        f"Decode step {fmt_seconds(s['decode_step_s'])}, mixed step {fmt_seconds(s['mixed_step_s'])}. "
        "Run the discrete-event simulation for CDFs and time series."
    )
    st.plotly_chart(sl.percentile_chart(s, slo), key="sc_percentiles")

at = res["breakdown_at"]
st.plotly_chart(
    charts.stacked_bar(
        res["breakdown"], f"Decode step by op kind (batch {at['batch']}, context {at['context']})", "ms", 1e3
    ),
    key="sc_breakdown",
)
if res["components"]:
    st.plotly_chart(charts.stacked_bar(res["components"], "All steps by cause", "s"), key="sc_components")
st.plotly_chart(sl.memory_chart(res["memory"], capacity_bytes=res.get("gpu_bytes")), key="sc_memory")

d = st.columns(3)
d[0].download_button("Summary (JSON)", json_bytes(s), "summary.json", "application/json", key="sc_dl_summary")
if engine == "des":
    req: pd.DataFrame = res["requests"]
    d[1].download_button("Requests (CSV)", csv_bytes(req), "requests.csv", "text/csv", key="sc_dl_requests")
    d[2].download_button("Steps (CSV)", csv_bytes(res["steps"]), "steps.csv", "text/csv", key="sc_dl_steps")
