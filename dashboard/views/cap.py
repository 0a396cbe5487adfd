"""CAP overview: cost, accuracy and performance of models x GPUs x layouts x precisions, side by side."""

from __future__ import annotations

import streamlit as st

from moesim.dashboard.logic import cap, charts
from moesim.dashboard.logic.scenario import open_scenario
from moesim.dashboard.ui import HELP, csv_bytes, fmt, guarded, page_header
from moesim.sim.sweeps.cap import best_at_speed, frontier_points

page_header(
    "CAP overview",
    "Cost, Accuracy and Performance of serving configurations on the analytical model: pick models, GPUs, "
    "layouts and precisions; each configuration is sized to the GPU count you choose.",
)
D = cap.DEFAULTS
with st.sidebar:
    st.subheader("Configurations")
    with guarded():
        models = st.multiselect("Models", cap.moe_models(), default=D["models"], key="cap_models")
        gpus = st.multiselect("GPUs", cap.gpu_names(), default=D["gpus"], key="cap_gpus")
    num_gpus = st.select_slider("GPUs per configuration", cap.GPU_COUNTS, value=D["num_gpus"], key="cap_num_gpus")
    layouts = st.multiselect("Layouts", list(cap.LAYOUTS), default=D["layouts"], key="cap_layouts")
    precisions = st.multiselect("Weight precision", cap.PRECISIONS, default=D["precisions"], key="cap_precisions")
    st.subheader("Workload and SLOs")
    rate = st.number_input("Request rate (req/s)", 0.01, 100_000.0, D["rate"], key="cap_rate")
    input_mean = st.number_input("Mean prompt (tokens)", 1, 131_072, D["input_mean"], key="cap_input")
    output_mean = st.number_input("Mean output (tokens)", 1, 32_768, D["output_mean"], key="cap_output")
    ttft = st.number_input("TTFT SLO, p99 (s)", 0.001, 600.0, D["ttft_s"], key="cap_ttft", help=HELP["ttft"])
    tpot = st.number_input("TPOT SLO, p99 (s)", 0.0001, 10.0, D["tpot_s"], key="cap_tpot", help=HELP["tpot"])

missing = [name for name, v in (("a model", models), ("a GPU", gpus), ("a layout", layouts)) if not v]
missing += ["a precision"] if not precisions else []
if missing:
    st.warning(f"Pick at least {', '.join(missing)} in the sidebar.")
    st.stop()

args = (models, gpus, num_gpus, layouts, precisions, rate, input_mean, output_mean, ttft, tpot)
capacity_key = repr(args)
left, right = st.columns([3, 2])
with left:
    at_capacity = st.session_state.get("cap_capacity_for") == capacity_key
    st.markdown(
        "**At capacity**: each configuration at the highest rate whose p99 TTFT and TPOT meet the SLOs."
        if at_capacity
        else f"**At {rate:g} req/s** offered to every configuration. Size each one to its SLOs instead:"
    )
with right:
    run_capacity = st.button(
        "Find each configuration's capacity",
        type="primary",
        width="stretch",
        disabled=at_capacity,
        help="Bisect each configuration's request rate on the analytical model until the SLOs are just met.",
    )
if run_capacity:
    bar = st.progress(0.0, text="finding capacities")
    with guarded():
        cap.evaluate_grid(
            cap.grid_mapping(*args, capacity=True),
            progress=lambda i, n, label: bar.progress(i / n, text=f"{i}/{n} {label}"),
        )
    st.session_state["cap_capacity_for"] = capacity_key
    st.rerun()  # draw the page again at capacity, the button disabled

with guarded(), st.spinner("evaluating"):
    results, table, pruned, scenarios = cap.evaluate_grid(cap.grid_mapping(*args, capacity=at_capacity))

if pruned:
    st.info(
        "Left out before running: "
        + ", ".join(f"{n} ({reason.replace('_', ' ')})" for reason, n in pruned.items())
        + ". `memory_fits`: the weights do not fit; `layout_divides`: the layout does not divide the model or GPUs."
    )
bad = cap.failed_rows(results)
usable = table[table["cost_usd_per_mtok"].notna()]
if usable.empty:
    st.error("No configuration gave figures (see the reasons below): lower the rate, relax the SLOs or add GPUs.")
    st.dataframe(bad, hide_index=True)
    st.stop()

best = usable.iloc[0]
fastest = usable.sort_values("s_per_token").iloc[0]
c1, c2, c3, c4 = st.columns(4)
c1.metric("Configurations", f"{len(table)}", help="Evaluated after pruning; rows without figures are listed below.")
c2.metric("Cheapest", fmt(best["cost_usd_per_mtok"], "$") + "/M tok", help=HELP["cost"])
c2.caption(str(best["label"]))
c3.metric("Fastest", fmt(fastest["s_per_token"], "s") + "/token", help=HELP["s_per_token"])
c3.caption(str(fastest["label"]))
c4.metric("On the Pareto front", int(usable["pareto"].sum()), help=HELP["pareto"])

st.subheader("MoE-CAP radar", help="Each axis 0..1, outer is better. " + HELP["cost"] + " " + HELP["s_per_token"])
front = usable[usable["pareto"]]
labels = st.multiselect(
    "Configurations on the radar (at most 6; default: the Pareto front, cheapest first)",
    list(usable["label"]),
    default=list(front["label"].head(6)),
    max_selections=6,
    key=f"cap_radar_labels_{hash((capacity_key, at_capacity)) & 0xFFFFFFFF:x}",  # a new grid: its own front
)
chosen = usable.set_index("label").loc[labels].reset_index() if labels else front.head(6)
st.plotly_chart(charts.cap_radar(chosen), key="cap_radar")

a, b = st.columns(2)
with a:
    st.plotly_chart(cap.pareto_figure(usable), key="cap_pareto")
with b:
    st.plotly_chart(charts.utilisation_bars(usable), key="cap_util")

st.subheader("All configurations", help="One row per configuration, cheapest first.")
cc = st.column_config
#: the columns shown (the label names the configuration); the CSV download below holds every column
shown = ["label", "cost_usd_per_mtok", "s_per_token", "throughput_tok_s", "throughput_basis",
         "rate_req_s", "accuracy", "s_mbu", "s_mfu", "pareto"]  # fmt: skip
st.dataframe(
    table,
    hide_index=True,
    column_order=[c for c in shown if c in table.columns],
    column_config={
        "cost_usd_per_mtok": cc.NumberColumn("$/M tok", help=HELP["cost"], format="%.3f"),
        "usd_per_hour": cc.NumberColumn("$/h", help=HELP["usd_per_hour"], format="%.2f"),
        "s_per_token": cc.NumberColumn("s/token", help=HELP["s_per_token"], format="%.4f"),
        "throughput_tok_s": cc.NumberColumn("tok/s", help=HELP["throughput"], format="%.0f"),
        "throughput_basis": cc.TextColumn(
            "tok/s at", help="capacity: the highest rate meeting the SLOs; offered load: the rate asked of it"
        ),
        "rate_req_s": cc.NumberColumn("req/s", format="%.3g"),
        "accuracy": cc.NumberColumn("accuracy", help=HELP["accuracy"], format="%.1f"),
        "s_mbu": cc.ProgressColumn(
            "S-MBU", help=HELP["s_mbu"], min_value=0.0, max_value=1.0, format="percent", width="small"
        ),
        "s_mfu": cc.ProgressColumn(
            "S-MFU", help=HELP["s_mfu"], min_value=0.0, max_value=1.0, format="percent", width="small"
        ),
        "energy_j_per_token": cc.NumberColumn("J/token", format="%.3f"),
        "pareto": cc.CheckboxColumn("Pareto", help=HELP["pareto"]),
    },
)
st.subheader(
    "Throughput vs interactivity",
    help="Output tokens/s per GPU (what the hardware yields) against output tokens/s per user (1 / time per "
    "output token: what each user sees), every point meeting the SLOs; the frontier holds the points no other "
    "beats on both (NVIDIA AIConfigurator's and InferenceMAX's view). Hover a point for its configuration.",
)
points = frontier_points(results)
speed = st.number_input(
    "Best configuration at this speed per user (output tok/s per user; 0: none)",
    min_value=0.0,
    value=0.0,
    step=10.0,
    key="cap_tps_user",
)
best = best_at_speed(results, speed) if speed > 0 and len(points) else None
st.plotly_chart(cap.frontier_figure(points, best), key="cap_frontier")
with st.container():
    if speed > 0:
        if best:
            st.success(
                f"**{best['label']}**: {fmt(best['tok_s_per_gpu'])} output tok/s per GPU at "
                f"{fmt(best['tok_s_per_user'])} tok/s per user"
            )
        else:
            st.warning(f"No point meeting the SLOs gives {speed:g} output tok/s per user.")
    cap.frontier_dataframe(points)

if not bad.empty:
    with st.expander(f"{len(bad)} points without figures"):
        st.dataframe(bad, hide_index=True)

d1, d2, d3 = st.columns([2, 1, 1])
with d1:
    pick = st.selectbox("Open a configuration as a scenario", list(usable["label"]), key="cap_open_pick")
with d2:
    st.write("")
    if st.button("Open in Scenario", key="cap_open"):
        open_scenario(scenarios[pick], f"CAP overview: {pick}")
with d3:
    st.write("")
    st.download_button("Download the table (CSV)", csv_bytes(table), "cap_table.csv", "text/csv", key="cap_csv")
