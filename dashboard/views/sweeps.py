"""Sweep explorer: load a sweep's results or run a small one; filter, heatmaps, the Pareto front, open a point."""

from __future__ import annotations

import streamlit as st

from moesim.dashboard.format import fmt_number
from moesim.dashboard.logic import cap, charts
from moesim.dashboard.logic import sweeps as sw
from moesim.dashboard.logic.scenario import open_scenario
from moesim.dashboard.ui import HELP, csv_bytes, guarded, page_header, parquet_bytes
from moesim.model import MoesimError
from moesim.sim.sweeps.sweep_report import best_at_speed_per_workload, cap_table, frontier_points

page_header(
    "Sweep explorer",
    "Every point of a what-if sweep: filter by any axis, compare two axes on a heatmap, find the Pareto "
    "front over cost, seconds per token and accuracy, and open any point as a scenario.",
)

with st.sidebar:
    st.subheader("Results")
    source = st.radio("Source", ["Run a small sweep here", "A sweep folder", "Upload results"], key="sw_source")

if source == "Run a small sweep here":
    text = st.text_area("Sweep YAML (see examples/sweep-*.yaml)", sw.SMALL_SWEEP, height=300, key="sw_yaml")
    with guarded():
        n, pruned = sw.count_points(text)
    left, right = st.columns([3, 2])
    left.markdown(
        f"**{n} points** to evaluate"
        + (f"; {sum(pruned.values())} pruned ({', '.join(f'{k}: {v}' for k, v in pruned.items())})" if pruned else "")
    )
    if right.button("Run the sweep", type="primary", help="Runs here, in one process, into a temporary folder."):
        bar = st.progress(0.0, text="sweeping")
        with guarded():
            df, summary, folder = sw.run_small_sweep(
                text, progress=lambda i, n, label: bar.progress(i / max(n, 1), text=f"{i}/{n} {label}")
            )
            st.session_state["sw_ran"] = {"text": text, "df": df, "summary": summary, "folder": folder}
        bar.empty()
    ran = st.session_state.get("sw_ran")
    if not ran or ran["text"] != text:
        st.info("Edit the sweep if you like, then run it. A bigger sweep belongs on the command line: "
                "`moesim sweep SWEEP.yaml --out DIR`, then load DIR here.")  # fmt: skip
        st.stop()
    df, folder = ran["df"], ran["folder"]
    manifest = sw.load_folder(folder)[1]
    s = ran["summary"]
    st.caption(f"{s['points']} points in {s['run_s']:.1f} s, written to {folder}")
elif source == "A sweep folder":
    with st.sidebar:
        folder = st.text_input("Folder (moesim sweep --out)", key="sw_folder", placeholder="runs/mixtral-gpus")
    if not folder:
        st.info("Give the `--out` folder of a `moesim sweep` run in the sidebar.")
        st.stop()
    with guarded():
        df, manifest = sw.load_folder(folder)
else:
    with st.sidebar:
        up = st.file_uploader("results.parquet (or a CSV of rows)", type=["parquet", "csv"], key="sw_upload")
    if up is None:
        st.info("Upload a sweep's results.parquet in the sidebar.")
        st.stop()
    with guarded():
        df = sw.read_upload(up.getvalue(), up.name)
    manifest = None

counts = df["status"].value_counts().to_dict()
c = st.columns(4)
c[0].metric("Points", len(df))
c[1].metric("ok", counts.get("ok", 0))
c[2].metric("Overloaded", counts.get("overloaded", 0), help="The offered rate exceeds what the configuration serves.")
c[3].metric("Errors / SLO unmet", counts.get("error", 0) + counts.get("slo_unmet", 0))

axes = sw.axes_of(df)
with st.sidebar:
    st.subheader("Filter")
    chosen = {}
    for col in axes:
        values = sw.sorted_values(list(df[col].dropna().unique()))
        chosen[col] = st.multiselect(
            col, values, default=values, key=f"sw_f_{col}",
            format_func=lambda v: fmt_number(v) if isinstance(v, float) else str(v),
        )  # fmt: skip
    ok_only = st.checkbox("ok points only", value=True, key="sw_ok")
view = sw.filter_rows(df, chosen, ok_only)
if view.empty:
    st.warning("No point passes the filters: widen them in the sidebar.")
    st.stop()

st.subheader("Heatmap", help="Each cell holds the best value of the metric over the points in it.")
metrics = [m for m in sw.METRICS if m in view.columns and view[m].notna().any()]
if len(axes) >= 2 and metrics:
    h = st.columns(3)
    x = h[0].selectbox("x", axes, index=0, key="sw_x")
    y = h[1].selectbox("y", [a for a in axes if a != x], index=0, key="sw_y")
    metric = h[2].selectbox("metric", metrics, format_func=lambda m: sw.METRICS[m][0], key="sw_metric")
    z, xs, ys = sw.pivot(view, x, y, metric)
    label, lower = sw.METRICS[metric]
    title = f"{label} ({'lowest' if lower else 'highest'} per cell)"
    st.plotly_chart(charts.heatmap(z, xs, ys, title, label, x, y, reverse=lower), key="sw_heatmap")
else:
    st.info("A heatmap needs two axes that vary and a metric with values.")

st.subheader("Pareto front", help=HELP["pareto"])
table = cap_table(view)
st.plotly_chart(cap.pareto_figure(table), key="sw_pareto")
st.dataframe(
    table[table["pareto"]][
        ["label", "cost_usd_per_mtok", "s_per_token", "accuracy", "throughput_tok_s", "throughput_basis", "rate_req_s"]
    ],
    hide_index=True,
    column_config={
        "cost_usd_per_mtok": st.column_config.NumberColumn("$/M tok", help=HELP["cost"], format="%.3f"),
        "s_per_token": st.column_config.NumberColumn("s/token", help=HELP["s_per_token"], format="%.4f"),
        "accuracy": st.column_config.NumberColumn("accuracy", help=HELP["accuracy"], format="%.1f"),
        "throughput_tok_s": st.column_config.NumberColumn("tok/s", help=HELP["throughput"], format="%.0f"),
        "throughput_basis": st.column_config.TextColumn(
            "tok/s at", help="capacity: the highest rate meeting the SLOs; offered load: the rate asked of it"
        ),
        "rate_req_s": st.column_config.NumberColumn("req/s", format="%.3g"),
    },
)

st.subheader(
    "Throughput vs interactivity",
    help="Output tokens/s per GPU against output tokens/s per user (1 / time per output token) of every point "
    "meeting the SLOs; the frontier holds the points no other beats on both. Hover a point for its configuration.",
)
points = frontier_points(view)
speed = st.number_input(
    "Best configuration at this speed per user (output tok/s per user; 0: none)",
    min_value=0.0,
    value=0.0,
    step=10.0,
    key="sw_tps_user",
)
bests = best_at_speed_per_workload(view, speed) if speed > 0 and len(points) else []
st.plotly_chart(cap.frontier_figure(points, bests), key="sw_frontier")
f2 = st.container()
for best in bests:
    where = (
        f"at capacity, {best['rate_req_s']:.3g} req/s" if best["at_capacity"] else f"at {best['rate_req_s']:.3g} req/s"
    )
    f2.success(
        (f"{best['workload']}: " if best.get("workload") else "")
        + f"**{best['label']}** {where}: {best['tok_s_per_gpu']:,.0f} output tok/s per GPU at "
        f"{best['tok_s_per_user']:,.0f} tok/s per user"
    )
if speed > 0 and not bests:
    f2.warning(f"No point meeting the SLOs gives {speed:g} output tok/s per user.")
with f2:
    cap.frontier_dataframe(points)

st.subheader("Points")
st.dataframe(view, hide_index=True, height=300)
d = st.columns([2, 1, 1, 1])
rows = view.reset_index(drop=True)
names = [f"{r['label']} @ {r['rate']:g} req/s" if "rate" in rows and r["rate"] == r["rate"] else r["label"]
         for _, r in rows.iterrows()]  # fmt: skip
pick = d[0].selectbox("Open a point as a scenario", range(len(rows)), format_func=lambda i: names[i], key="sw_pick")
d[1].write("")
if d[1].button("Open in Scenario", key="sw_open", disabled=manifest is None,
               help="Needs the sweep's manifest.json (a folder, or a sweep run here)."):  # fmt: skip
    with guarded():
        scenarios = sw.spec_points(manifest["spec"])
        pid = rows.loc[pick, "point_id"]
        if pid not in scenarios:
            raise MoesimError(f"point {pid} is not in the sweep's manifest", "rerun the sweep into a new folder")
        open_scenario(scenarios[pid], f"sweep {manifest.get('name', '')}, point {names[pick]}")
d[2].download_button("Rows (CSV)", csv_bytes(view), "results.csv", "text/csv", key="sw_dl_csv")
d[3].download_button("Rows (Parquet)", parquet_bytes(view), "results.parquet", key="sw_dl_parquet")
