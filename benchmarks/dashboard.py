"""Benchmark section 11: the dashboard's first render per page, with the built-in defaults.

- AppTest, fresh process: a new Python process per page runs the page once through
  `streamlit.testing.v1.AppTest` (the app's navigation, then the page script) with nothing cached and no
  moesim module imported yet (streamlit itself is imported before the clock starts, as a running server
  has it), and without the warm-up `moesim dashboard` does before serving (`dashboard.server`).
- AppTest, modules loaded: in the same process, `st.cache_data` cleared, the page run again: the first
  visit to a page once another page has loaded the packages.
- Browser: a new ``moesim dashboard`` server per page (warmed up, as it always is) and Debian's chromium
  (Playwright); this is the first page a user opens after the server starts. The clock runs
  from ``page.goto`` until the page's title shows and the app has gone idle (no running indicator,
  progress bar or spinner). Skipped when chromium or playwright is missing. The same with a plain
  ``streamlit run dashboard/app.py`` (no warm-up) shows what the warm-up saves.

Run: ``python -m benchmarks.dashboard`` (or ``make bench``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the dashboard tests' server and browser helpers

from moesim.dashboard.ui import PAGES  # noqa: E402

TARGET_S = 2.0
_CHILD = """
import json, sys, time
import streamlit as st
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=300)
at.switch_page(sys.argv[2])
t0 = time.perf_counter(); at.run(); cold = time.perf_counter() - t0
errors = [e.value for e in at.exception] + [e.value for e in at.error]
st.cache_data.clear()
at2 = AppTest.from_file(sys.argv[1], default_timeout=300)
at2.switch_page(sys.argv[2])
t0 = time.perf_counter(); at2.run(); warm = time.perf_counter() - t0
print(json.dumps({"cold_s": cold, "modules_loaded_s": warm, "errors": errors, "charts": len(at.get("plotly_chart"))}))
"""


def apptest_times(script: str) -> dict:
    """A page's AppTest times in a fresh process (see the module docstring)."""
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ROOT / "dashboard" / "app.py"), script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def browser_time(url_path: str, title: str, app: Path | None = None) -> float | None:
    """Seconds from goto to the page's title shown and the app idle, on a fresh server (None: no browser).

    ``app``: serve this Streamlit script (as `moesim dashboard` serves its own) instead of the dashboard.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        return None
    from dashboard_server import free_port, running_dashboard
    from test_dashboard_browser import FLAGS, settle

    from moesim.dashboard.cli.serve_app import streamlit_command, wait_ready

    with contextlib.ExitStack() as stack:
        if app:  # plain Streamlit, the dashboard's server flags
            port = free_port()
            proc = subprocess.Popen(streamlit_command(app, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.callback(lambda: (proc.terminate(), proc.wait(timeout=30)))
            url = f"http://127.0.0.1:{port}"
            wait_ready(proc, url, 60.0)
        else:
            url = stack.enter_context(running_dashboard())["url"]
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=chromium, args=FLAGS)
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            t0 = time.monotonic()
            page.goto(f"{url}/{url_path}")
            page.get_by_role("heading", name=title, level=1).wait_for(timeout=120_000)
            done = settle(page, 120.0)  # the render ended when the idle spell began
            b.close()
        return done - t0


_REFERENCES = {
    "a blank Streamlit page (a title)": 'import streamlit as st\nst.title("Reference")\n',
    "a title and one small plotly chart": (
        "import plotly.graph_objects as go\nimport streamlit as st\n"
        'st.title("Reference")\nst.plotly_chart(go.Figure(go.Scatter(x=[1, 2], y=[1, 2])))\n'
    ),
}


def bench_dashboard(quick: bool = False) -> tuple[str, dict]:
    """Section 11 (see the module docstring)."""
    rows, stats = [], {}
    refs = []
    with tempfile.TemporaryDirectory(prefix="moesim-bench-ref-") as tmp:
        for name, code in _REFERENCES.items():
            app = Path(tmp) / "app.py"
            app.write_text(code)
            b = browser_time("", "Reference", app)
            stats[name] = b
            print(f"{name}: {b}", file=sys.stderr, flush=True)
            if b is not None:
                refs.append(f"{name} {b:.2f} s")
    for script, title, _icon, url in PAGES:
        a = apptest_times(script)
        b = browser_time(url, title)
        plain = browser_time(url, title, ROOT / "dashboard" / "app.py")
        stats[url] = {**a, "browser_s": b, "browser_unwarmed_s": plain}
        print(f"{title}: {stats[url]}", file=sys.stderr, flush=True)
        worst = max(a["cold_s"], b or 0.0)
        ok = "met" if worst < TARGET_S and not a["errors"] else "**missed**"
        rows.append(
            f"| {title} | {a['cold_s']:.2f} s | {a['modules_loaded_s']:.2f} s | "
            + (f"{b:.2f} s" if b is not None else "not run")
            + " | "
            + (f"{plain:.2f} s" if plain is not None else "not run")
            + f" | {a['charts']} | {ok} |"
        )
    doc = __doc__.split("\n\n")[1]
    lines = ["## 11. Dashboard: first render per page", "", doc, ""]
    lines += [
        "| page | AppTest, fresh process | AppTest, modules loaded | browser, fresh server "
        f"| browser, unwarmed server | plots | < {TARGET_S:g} s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if refs:
        lines += [f"For reference, the same browser measure of Streamlit alone on this machine: {'; '.join(refs)}.", ""]
    return "\n".join(lines), stats


if __name__ == "__main__":
    text, _ = bench_dashboard("--quick" in sys.argv)
    print(text)
