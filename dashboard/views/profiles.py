"""Profiles & calibration: measured kernel tables, the cost model calibrated on them and its error, and a
quick profile of this machine."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from moesim.dashboard.format import fmt_count, fmt_seconds
from moesim.dashboard.logic import profiles as logic
from moesim.dashboard.ui import csv_bytes, guarded, page_header, show_error

HELP = {
    "source": "Where the measured tables come from: GPU runs committed in profiling/data, this machine's "
    "tables (moesim profile writes profiles/local), tables imported with moesim import (or a raw "
    "AIConfigurator folder, converted here), the shared reference data, or the quick profile run on this page.",
    "holdout": "Share of each fit's shapes set aside before fitting; the error is measured on them only "
    "(0: fit everything and report the inner cross-validation error instead).",
    "seed": "Seed of the random held-out split and of the method choice.",
    "scatter": "Each marker is a held-out shape: its measured time against the time the calibrated cost model "
    "predicts without having seen it. On the dotted line y = x the prediction is exact; above it the model is "
    "too slow, below it too fast.",
    "mape": "MAPE, mean absolute percentage error: the mean over the held-out shapes of "
    "|predicted - measured| / measured, in %. Lower is better.",
    "p90": "90th percentile of the absolute percentage error: 90% of the held-out shapes are predicted at least "
    "this well.",
    "ratio": "Median measured time over the reference (the op's roofline on the measured device plus the "
    "fastest call): 1 is at the roofline, higher is slower.",
    "quick": "Times GEMMs and grouped GEMMs in fp32 on this machine's CPU over the demo's small grid "
    f"(moesim profile --device cpu with the tiny grid: {logic.quick_profile_promise()}), "
    "writes the tables to a temporary folder and calibrates on them.",
}
QUICK_KEY = "profiles_quick"

page_header(
    "Profiles & calibration",
    "Measured kernel tables (committed GPU runs, this machine's, imported ones), the cost model calibrated on "
    "them and its error on shapes it was not fitted on.",
)

# -- this machine: the quick profile (handled first, so that its result can be selected below in this run)
col_src, col_run = st.columns([3, 2], gap="large")
with col_run, st.container(border=True):
    st.markdown("**Profile this machine**")
    st.caption(HELP["quick"])
    if st.button("Run a quick profile here", type="primary", key="profiles_run", help=HELP["quick"]):
        if not logic.torch_available():
            st.warning(
                "Profiling needs torch, which is not installed here (the optional `profile` extra). "
                "Install it with `pip install -e '.[profile]'` (on a CPU-only machine: `pip install torch triton`).",
                icon=":material/info:",
            )
        else:
            with st.status("Profiling this CPU...", expanded=True) as status:
                bar = st.progress(0.0, text="probing peak FLOP/s and memory bandwidth")
                last = [0.0]
                began = time.perf_counter()

                def progress(done: int, total: int, label: str) -> None:
                    now = time.perf_counter()
                    if now - last[0] > 0.25 or done == total:  # a busy progress bar steals time from the kernels
                        last[0] = now
                        left = (now - began) * (total - done) / max(done, 1)
                        bar.progress(
                            done / max(total, 1), text=f"{done}/{total}, about {fmt_seconds(left)} left: {label[:50]}"
                        )

                try:
                    run = logic.run_quick_profile(
                        progress, previous=(st.session_state.get(QUICK_KEY) or {}).get("folder")
                    )
                except Exception as exc:  # one message, as guarded() shows it, and the status marked failed
                    status.update(label="The quick profile failed", state="error")
                    show_error(exc)
                    st.stop()
                bar.empty()  # a finished bar left on the page reads as work still running
                status.update(
                    label=f"Profiled this CPU in {fmt_seconds(run['wall_s'])}", state="complete", expanded=False
                )
            st.session_state[QUICK_KEY] = run
            st.session_state["profiles_source"] = "quick"
    quick = st.session_state.get(QUICK_KEY)
    if quick:
        rows = ", ".join(f"{k} {fmt_count(n)}" for k, n in quick["rows"].items())
        st.caption(
            f"Last run: {quick['device']} ({quick['threads']} threads), {rows} rows in {fmt_seconds(quick['wall_s'])}; "
            f"tables in `{quick['folder']}`."
        )
        for s in quick["skipped"]:
            st.caption(f"skipped: {s}")

# -- the source of tables
sources = {s.label: s for s in logic.sources()}
if quick:
    sources = {"Quick profile run here": logic.Source("Quick profile run here", "quick", quick["folder"])} | sources
labels = list(sources)
if st.session_state.get("profiles_source") == "quick" or st.session_state.get("profiles_source") not in labels:
    st.session_state["profiles_source"] = labels[0]
with col_src:
    label = st.selectbox("Measured tables", labels, key="profiles_source", help=HELP["source"])
    source = sources[label]
    folder = source.path
    if source.kind == "local":
        folder = st.text_input(
            "Folder of this machine's tables",
            logic.LOCAL_DEFAULT,
            key="profiles_local_dir",
            help="A folder moesim profile wrote (its --out; profiles/local by default), relative to where the "
            "dashboard was started or absolute.",
        )
    elif source.kind == "imported":
        folder = st.text_input(
            "Folder of imported tables",
            "",
            key="profiles_import_dir",
            placeholder="a moesim import --out folder, or an AIConfigurator folder of *_perf.parquet",
            help="Tables written by moesim import, or AIConfigurator's raw kernel database (converted here).",
        )
    c1, c2 = st.columns(2)
    holdout = c1.slider("Held-out share", 0.0, 0.5, 0.2, 0.05, key="profiles_holdout", help=HELP["holdout"])
    seed = int(c2.number_input("Split seed", 0, 10_000, 0, key="profiles_seed", help=HELP["seed"]))

if not folder.strip():
    st.info("Enter a folder of tables above.", icon=":material/folder_open:")
    st.stop()

with guarded():
    with st.spinner("Reading the tables (an AIConfigurator folder is converted once)..."):
        tables_dir = logic.tables_folder(folder.strip())
        sig = logic.signature(tables_dir)
        tables = logic.load_set(tables_dir, sig)
    n_rows = sum(len(t) for t in tables.tables.values())
    with st.spinner(f"Calibrating on {fmt_count(n_rows)} rows..."):
        cal = logic.calibrate_set(tables_dir, sig, float(holdout), seed)

# -- what was measured, where
num = st.column_config.NumberColumn
st.subheader("Tables")
st.caption(f"`{tables_dir}`: {len(tables.files)} files, {fmt_count(n_rows)} rows.")
shown_cols = [c for c in logic.FILE_COLUMNS if c in tables.files]
st.dataframe(tables.files[shown_cols], hide_index=True, key="profiles_files")
with st.expander("Every file's metadata (library versions, grid, machine)"):
    st.dataframe(tables.files, hide_index=True, key="profiles_files_all")
if not tables.hardware.empty:
    st.caption("Devices measured (peak FLOP/s and memory bandwidth: datasheet for a known GPU, probed on a CPU)")
    st.dataframe(logic.hardware_display(tables.hardware), hide_index=True, key="profiles_hardware")

# -- calibration and its error
st.subheader("Calibration", help=HELP["scatter"])
left, right = st.columns(2)
left.plotly_chart(logic.scatter_figure(cal), key="profiles_scatter")
right.plotly_chart(logic.error_bars(cal), key="profiles_error_bars")

st.dataframe(
    logic.errors_display(cal.errors),
    hide_index=True,
    key="profiles_errors",
    column_config={
        "fit": st.column_config.TextColumn("fit", help="op kind / dtype / implementation @ measured device"),
        "mape": num("MAPE (%)", help=HELP["mape"], format="%.1f", width="small"),
        "p90_ape": num("P90 (%)", help=HELP["p90"], format="%.1f", width="small"),
        "median_ratio_to_reference": num("x reference", help=HELP["ratio"], format="%.2f", width="small"),
        "error_on": st.column_config.TextColumn("error on", help=HELP["holdout"]),
        "rows_fit": num("fitted", help="rows the fit was made on", width="small"),
        "rows_holdout": num("held out", help="rows set aside: the error is measured on them", width="small"),
        "floor_us": num(
            "floor (µs)", format="%.1f", help="fastest fitted call, µs: the launch floor added to the roofline"
        ),
    },
)
if cal.skew:
    s = cal.skew
    st.caption(
        f"Skew model: {s['rows']} grouped GEMMs with skewed routing predicted from the balanced fit: MAPE "
        f"{s['mape']:.1f}% (treating them as balanced: {s['balanced_assumption_mape']:.1f}%)."
    )
st.download_button(
    "Error table (CSV)", csv_bytes(cal.errors), f"{Path(tables_dir).name}-errors.csv", "text/csv", key="profiles_dl"
)

# -- the rows themselves
st.subheader("Measured rows per op kind")
tabs = st.tabs([f"{k} ({len(t):,})" for k, t in tables.tables.items()])
for tab, (kind, t) in zip(tabs, tables.tables.items(), strict=True):
    with tab:
        if len(t) > logic.MAX_ROWS_SHOWN:
            st.caption(f"The first {fmt_count(logic.MAX_ROWS_SHOWN)} of {fmt_count(len(t))} rows. Times in µs.")
        else:
            st.caption("Times in µs (time: median of the timed calls; p10/p90: their spread).")
        shown, times = logic.rows_display(t.head(logic.MAX_ROWS_SHOWN))
        st.dataframe(shown, hide_index=True, key=f"profiles_{kind}", column_config=times)
