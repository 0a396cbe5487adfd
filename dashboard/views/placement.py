"""Placement studio: routing statistics in; round-robin, greedy EPLB and the ILP compared; engine files out."""

from __future__ import annotations

import streamlit as st

from moesim.dashboard.format import fmt_pct, fmt_rate, fmt_ratio, fmt_seconds
from moesim.dashboard.logic import placement as lp
from moesim.dashboard.ui import cost_model_badge, csv_bytes, guarded, json_bytes, page_header, show_error

page_header(
    "Placement studio",
    "Which GPU should hold which expert? Load or generate routing statistics, place the experts with round-robin, "
    "DeepSeek's greedy EPLB and moesim's ILP, compare their balance and simulated latency, and download the plan "
    "for SGLang, vLLM, TensorRT-LLM or EPLB.",
)

# 1. routing statistics ----------------------------------------------------------------------------------------------
st.subheader("Routing statistics")
left, right = st.columns([1, 2.4])
with left:
    presets = lp.moe_presets()
    model = st.selectbox(
        "Model",
        presets,
        index=presets.index(lp.DEFAULT_MODEL),
        key="pl_model",
        help="The MoE model whose experts are placed: its MoE layers, routed experts and top-k shape the statistics "
        "and the simulated engine.",
    )
    source = st.radio(
        "Statistics",
        ["Synthetic", "Upload"],
        horizontal=True,
        key="pl_source",
        help="Synthetic: a seeded per-token routing trace with power-law expert popularity. Upload: what an engine "
        "recorded (SGLang dumps, vLLM routed_experts, Megatron router traces, MoE-CAP JSONL, CSV, NPZ, JSON).",
    )
    if source == "Synthetic":
        skew = st.slider(
            "Skew exponent",
            0.0,
            3.0,
            1.0,
            0.1,
            key="pl_skew",
            help="Expert popularity falls as rank^-skew within each layer: 0 is uniform routing, 1 is Zipf-like, "
            "larger is more skewed (a few hot experts).",
        )
        tokens = st.number_input(
            "Tokens", 64, 16384, 4096, 256, key="pl_tokens", help="Tokens in the synthetic trace (each picks top-k)."
        )
        seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="pl_seed", help="Same seed, same trace and ILP sample.")
    else:
        seed = 0
        files = st.file_uploader(
            "Routing statistics",
            accept_multiple_files=True,
            key="pl_upload",
            help="One file, or the rank files of one run (merged). Formats: SGLang .pt, vLLM .npy/.npz, Megatron "
            "router_trace_rank*.jsonl, MoE-CAP .jsonl, .csv (layer,expert,count or wide), moesim .npz, .json.",
        )
with guarded(), st.spinner("Reading the routing statistics..."):
    if source == "Synthetic":
        stats = lp.synthetic_stats(model, int(tokens), float(skew), int(seed))
    elif not files:
        st.info("Upload a routing-statistics file recorded on this model to continue.", icon=":material/upload:")
        st.stop()
    else:
        stats = lp.uploaded_stats(model, tuple((f.name, f.getvalue()) for f in files))
with right:
    st.plotly_chart(lp.loads_figure(stats["counts"]), key="pl_loads_heatmap")
    st.caption(lp.stats_caption(stats))
num_layers, num_experts = stats["counts"].shape

# 2. placement -------------------------------------------------------------------------------------------------------
st.subheader("Placement")
cols = st.columns(4)
gpus = cols[0].number_input(
    "GPUs (EP size)", 1, 1024, 4, key="pl_gpus", help="GPUs holding the experts: the expert-parallel group."
)
per_node = cols[1].number_input(
    "GPUs per node",
    1,
    64,
    8,
    key="pl_gpus_per_node",
    help="GPUs in one server; the EP group spans GPUs / this many nodes (a group smaller than a node uses one node).",
)
redundant = cols[2].number_input(
    "Redundant expert slots",
    0,
    4096,
    0,
    key="pl_redundant",
    help="Extra slots per MoE layer beyond one per expert, for replicas of hot experts. Experts + redundant must "
    "be a multiple of the GPUs.",
)
time_limit = cols[3].number_input(
    "ILP time limit (s)",
    0.5,
    600.0,
    2.0,
    0.5,
    key="pl_time_limit",
    help="Wall-clock budget of the ILP over all layers. The solver may overrun it; the page stops it after "
    "4 x the limit + 20 s.",
)
gpn = lp.node_size(int(gpus), int(per_node))
with guarded():
    lp.check_layout(num_experts, int(gpus), gpn, int(redundant))
slots = num_experts + int(redundant)
st.caption(
    f"{num_experts} experts + {int(redundant)} redundant = {slots} slots per layer: {slots // int(gpus)} per GPU on "
    f"{int(gpus) // gpn} node(s) of {gpn} GPUs."
)
inputs = (stats["digest"], model, int(gpus), gpn, int(redundant), float(time_limit), int(seed))
if st.button(
    "Run greedy vs ILP",
    type="primary",
    key="pl_run",
    help="Place with round-robin and greedy EPLB (instant), then the ILP (up to its time limit).",
):
    with st.status("Placing experts...", expanded=True) as status:
        st.write("Round-robin and greedy EPLB...")
        with guarded():
            results = dict(lp.run_greedy(stats, model, int(gpus), gpn, int(redundant)))
        st.write(
            f"ILP: {num_layers} layers, time limit {fmt_seconds(float(time_limit))} "
            f"(stopped after {fmt_seconds(lp.ilp_cap_s(float(time_limit)))} at most)..."
        )
        ilp_error = None
        try:
            results["ilp"] = lp.run_ilp(stats, model, int(gpus), gpn, int(redundant), float(time_limit), int(seed))
        except Exception as exc:  # shown below; the greedy results stand
            if type(exc).__module__.startswith("streamlit"):
                raise
            ilp_error = exc
        status.update(label="Placed" if ilp_error is None else "Placed (ILP failed)", state="complete", expanded=False)
    st.session_state["pl_results"] = {"inputs": inputs, "results": results, "ilp_error": ilp_error}

last = st.session_state.get("pl_results")
if last is None or last["inputs"] != inputs:
    changed = last is not None
    st.info(
        ("The inputs changed since the last run. " if changed else "")
        + "Press **Run greedy vs ILP** to place the experts.",
        icon=":material/info:",
    )
    st.stop()
results, ilp_error = last["results"], last["ilp_error"]
if ilp_error is not None:
    show_error(ilp_error)

# results ------------------------------------------------------------------------------------------------------------
table = lp.metrics_table(results)
# two tables, balance and solver, each narrow enough to show all its columns
balance = ["method", *[c for c in lp.BALANCE_COLUMNS if c in table]]
solver = ["method", *[c for c in table if c not in balance]]
st.dataframe(table[balance], hide_index=True, key="pl_metrics_table", column_config=lp.column_config(lp.METRIC_COLUMNS))
solver_cfg = {k: st.column_config.TextColumn(v[0], help=v[2]) for k, v in lp.METRIC_COLUMNS.items() if k in solver}
st.dataframe(lp.solver_display(table[solver]), hide_index=True, key="pl_solver_table", column_config=solver_cfg)
base = results["round-robin"]["metrics"]["max_load_ratio"]
st.caption("Busiest GPU's load over the mean GPU's (1.00× is perfect balance), whole model:")
mcols = st.columns(len(results))
for col, (m, r) in zip(mcols, results.items(), strict=True):
    x = r["metrics"]
    col.metric(
        lp.LABELS[m],
        fmt_ratio(x["max_load_ratio"], 3),
        delta=None if m == "round-robin" else f"{fmt_pct(x['max_load_ratio'] / base - 1, signed=True)} vs round-robin",
        delta_color="inverse",
        help=lp.METRIC_COLUMNS["busiest_over_mean"][2],
    )
if "ilp" in results:
    x = results["ilp"]["metrics"]
    st.caption(
        f"ILP: status {x['status']}, MIP gap {fmt_pct(x.get('gap'))}, {x['layers_optimal']}/{num_layers} layers "
        f"proven optimal, {x['layers_fallback']} kept EPLB's plan, {fmt_seconds(x['solve_s'])} "
        f"({fmt_seconds(x['solver_seconds'])} in the solver)."
    )

layer = st.columns([1, 3])[0].selectbox(
    "MoE layer",
    list(range(num_layers)),
    key="pl_layer",
    help="The layer whose per-GPU loads and expert-to-GPU map are drawn.",
)
c1, c2 = st.columns(2)
c1.plotly_chart(lp.gpu_load_figure(results, layer), key="pl_gpu_loads")
c2.plotly_chart(lp.imbalance_figure(results), key="pl_imbalance")
tabs = st.tabs([lp.LABELS[m] for m in results])
for tab, (m, r) in zip(tabs, results.items(), strict=True):
    tab.plotly_chart(lp.expert_map_figure(r, stats["counts"], layer, lp.LABELS[m]), key=f"pl_map_{m}")

# 3. simulated latency -----------------------------------------------------------------------------------------------
st.subheader("Simulated latency effect")
gpu_list = lp.gpu_names()
scols = st.columns(4)
gpu = scols[0].selectbox(
    "GPU", gpu_list, index=gpu_list.index(lp.DEFAULT_GPU), key="pl_sim_gpu", help="The GPU of the simulated engine."
)
rate = scols[1].number_input(
    "Request rate (req/s)", 0.1, 1000.0, 8.0, 1.0, key="pl_rate", help="Poisson arrivals at this rate."
)
requests = scols[2].number_input(
    "Requests",
    20,
    2000,
    100,
    20,
    key="pl_requests",
    help="Requests in the simulated workload (prompts ~512, outputs ~128).",
)
des = scols[3].toggle(
    "DES check",
    value=True,
    key="pl_des",
    help="Also run the discrete-event simulator (about 1 s per plan at the defaults): step-to-step routing noise, "
    "p99 latencies and the straggler share.",
)
sc = lp.scenario(model, gpu, int(gpus), gpn, float(rate), int(requests), int(seed))
with guarded(stop=False), st.spinner("Simulating the plans..."):
    sims = {m: lp.simulate_plan(sc, stats["counts"], r["phys_to_log"], des) for m, r in results.items()}
    cost_model_badge(next(iter(sims.values())).get("cost_model"))
    lat = lp.latency_table(sims)
    # the analytical model's columns, then the discrete-event simulation's: each table shows all its columns
    des_cols = ["plan", *[c for c in lat if c.startswith("des_") or c == "straggler_share"]]
    ana_cols = [c for c in lat if c not in des_cols[1:]]
    cfg = lp.column_config(lp.LATENCY_COLUMNS)
    st.dataframe(lat[ana_cols], hide_index=True, key="pl_latency_table", column_config=cfg)
    if len(des_cols) > 1:
        st.dataframe(lat[des_cols], hide_index=True, key="pl_des_table", column_config=cfg)
    over = [f"{lp.LABELS[m]}: {s['overload_reason']}" for m, s in sims.items() if s["overloaded"]]
    st.caption(
        f"Analytical model (closed form, the expected busiest GPU per MoE layer) of one {int(gpus)}-GPU EP replica "
        f"of {model} on {gpu} at {fmt_rate(float(rate), 'req/s')}, routing drawn from these statistics"
        + ("; discrete-event columns from one seeded run" if des else "")
        + "."
        + (f" Overloaded: {'; '.join(over)}." if over else "")
    )

# 4. downloads -------------------------------------------------------------------------------------------------------
st.subheader("Downloads")
choices = [m for m in ("ilp", "eplb") if m in results]
which = st.radio(
    "Plan",
    choices,
    format_func=lambda m: lp.LABELS[m],
    horizontal=True,
    key="pl_plan_choice",
    help="The placement written into the engine files.",
)
plan = results[which]["plan"]
with guarded(stop=False):
    dcols = st.columns(len(lp.FORMATS))
    for col, f in zip(dcols, lp.FORMATS, strict=True):
        name, data, mime, _ = lp.export_file(plan, f)
        col.download_button(
            f,
            data,
            file_name=name,
            mime=mime,
            key=f"pl_dl_{f}",
            on_click="ignore",
            icon=":material/download:",
            help=lp.FORMAT_HELP[f],
        )
    flags = lp.flags_text(plan)
    st.code(flags, language="bash")
    ecols = st.columns(3)
    ecols[0].download_button(
        "launch flags",
        flags.encode(),
        file_name=f"{which}_launch_flags.txt",
        mime="text/plain",
        key="pl_dl_flags",
        on_click="ignore",
        icon=":material/terminal:",
        help="Every engine's command-line flags for the files above.",
    )
    ecols[1].download_button(
        "plan (moesim JSON)",
        json_bytes(plan),
        file_name=f"plan_{which}.json",
        mime="application/json",
        key="pl_dl_plan",
        on_click="ignore",
        icon=":material/data_object:",
        help="The plan as moesim saves it (PlacementPlan.to_json), with the solver's report.",
    )
    ecols[2].download_button(
        "comparison (CSV)",
        csv_bytes(table),
        file_name="placement_comparison.csv",
        mime="text/csv",
        key="pl_dl_table",
        on_click="ignore",
        icon=":material/table:",
        help="The metrics table above.",
    )
