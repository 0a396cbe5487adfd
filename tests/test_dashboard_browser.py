"""A real browser on a running ``moesim dashboard``: every page opens, its main action runs, no error shows.

Playwright drives Debian's chromium (/usr/bin/chromium; ``make test`` installs it when missing). Each page is
loaded, its main (primary) button clicked, and a screenshot saved under ``$MOESIM_TEST_OUT/browser/``
(default: ``test-output/browser/`` in the repository) before and after the click.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from dashboard_server import running_dashboard  # tests/dashboard_server.py

from moesim.dashboard.ui import PAGES

pytest.importorskip("streamlit")
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MOESIM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# the running indicator (shown about half a second into a run), progress bars, spinners, and the skeletons of
# elements a running script has not drawn yet
BUSY = (
    '[data-testid="stStatusWidget"], [data-testid="stProgress"], [data-testid="stSpinner"], [data-testid="stSkeleton"]'
)
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
OUT = Path(os.environ.get("MOESIM_TEST_OUT", ROOT / "test-output")) / "browser"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def server():
    with running_dashboard() as info:
        yield info["url"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def settle(page, timeout_s: float = 240.0) -> float:
    """Wait until the app has been idle (no running indicator, progress bar or spinner) for 1.5 s.

    Returns the `time.monotonic` instant the idle spell began (when the render ended).
    """
    t0 = time.monotonic()
    quiet_since = None
    while time.monotonic() - t0 < timeout_s:
        if page.locator(BUSY).count() == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 1.5:
                return quiet_since
        else:
            quiet_since = None
        page.wait_for_timeout(200)
    raise AssertionError(f"the app was still running after {timeout_s:.0f} s")


def errors(page) -> list[str]:
    return [e.inner_text() for e in page.locator(ERRORS).all()]


@pytest.mark.parametrize("script,title,url", [(p[0], p[1], p[3]) for p in PAGES])
def test_page_in_a_real_browser(server: str, browser, script: str, title: str, url: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # the first render after a server start can be blank: load once, then again for the screenshot
        page.goto(f"{server}/{url}")
        page.get_by_role("heading", name=title, level=1).wait_for(timeout=120_000)
        settle(page)
        page.reload()
        page.get_by_role("heading", name=title, level=1).wait_for(timeout=120_000)
        settle(page)
        assert errors(page) == []
        page.screenshot(path=str(OUT / f"{url}.png"), full_page=True)

        # a button with a tooltip carries the test id twice (its tooltip wrapper): one label is one action
        labels = set(page.locator('[data-testid="stBaseButton-primary"]').all_inner_texts())
        assert len(labels) == 1, f"{title}: expected one main action, got {labels}"
        label = labels.pop()
        page.get_by_role("button", name=label).click()
        page.wait_for_timeout(1000)
        settle(page)
        try:  # the action's result is drawn: at least one chart (waited for, in case the render is slow)
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)
            settle(page)
        finally:
            page.screenshot(path=str(OUT / f"{url}-after.png"), full_page=True)
        assert errors(page) == [], f"{title} after '{label}'"
    finally:
        page.close()
