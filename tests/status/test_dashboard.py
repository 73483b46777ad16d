"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) while a job runs.

CI installs ``chromium`` (see ``.ci/run``); elsewhere the test skips when no Chromium is found,
but under ``CI`` a missing browser fails instead of hiding the test.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from running import Daemon, customers_csv, set_simulator_faults, start_daemon

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SLOW_DELIVERY = """
[convert]
chunk_max_records = 200

[upload]
concurrency = 1
requests_per_second = 100
"""

ROW_STATE = """() => {
  const row = [...document.querySelectorAll("tr.job")]
    .find((r) => r.querySelector(".expand").textContent.endsWith("/slow.csv"));
  if (!row) return null;
  return {
    id: row.dataset.jobId,
    state: row.querySelector(".state").textContent,
    percent: Number(row.querySelector(".bar").getAttribute("aria-valuenow")),
    label: row.querySelector(".progress-label").textContent,
    rows: row.querySelector(".rows").textContent,
    rejected: row.querySelector(".rejected").textContent,
    chunks: row.querySelector(".chunks").textContent,
    reasons: row.querySelector(".reasons").textContent,
    uploader: document.getElementById("uploader-state").textContent,
    chart: document.getElementById("line-records").getAttribute("points"),
  };
}"""


def chromium_path() -> str:
    found = os.environ.get("BULKD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: .ci/run should have installed Debian's chromium")
    pytest.skip("no chromium on this machine (apt-get install chromium, as .ci/run does)")


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    executable = chromium_path()
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


@pytest.fixture
def slow_daemon(tmp_path: Path) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path, config_extra=SLOW_DELIVERY)
    try:
        set_simulator_faults(daemon, {"latency_seconds": 0.12})
        yield daemon
    finally:
        daemon.stop()


def test_the_page_shows_a_job_progress_and_finish(page: Any, slow_daemon: Daemon, tmp_path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(slow_daemon.url + "/?refresh=0.2")

    # The status token is required: the page asks for it, then keeps it for the session.
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", slow_daemon.token)
    page.click("#login button")
    page.wait_for_selector("#no-jobs:not([hidden])")

    slow_daemon.drop("slow.csv", customers_csv(3000, bad_every=100))
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = page.evaluate(ROW_STATE)
        if state is not None and (not seen or state != seen[-1]):
            seen.append(state)
        if state is not None and state["state"] == "archived":
            break
        page.wait_for_timeout(50)
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    assert seen, "the job never appeared on the page"
    final = seen[-1]
    assert final["state"] == "archived", seen[-5:]
    assert final["percent"] == 100
    assert (final["rows"], final["rejected"], final["chunks"]) == ("3,000", "30", "15/15")
    assert "format 30" in final["reasons"]
    delivering = [s for s in seen if s["state"] == "delivering"]
    partial = sorted({s["percent"] for s in delivering if 0 < s["percent"] < 100})
    assert len(partial) >= 2, f"progress was not seen moving: {[s['label'] for s in seen]}"
    assert any(s["uploader"] == "uploading" for s in seen)
    assert final["chart"], "the throughput chart stayed empty"

    page.click(f'tr.job[data-job-id="{final["id"]}"] .expand')
    page.wait_for_selector("tr.detail .rejects tbody tr")
    reasons = page.inner_text("tr.detail .rejects tbody")
    assert "date_of_birth" in reasons
    assert "format" in reasons
    assert "101" in reasons  # row 100 sits on line 101
    assert page.inner_text("tr.detail .upload-ids") != "–"
    assert errors == []


def test_the_page_shows_uploads_paused_on_401(page: Any, slow_daemon: Daemon) -> None:
    set_simulator_faults(slow_daemon, {"post_errors": {"401": 1.0}})
    page.goto(slow_daemon.url + "/?refresh=0.2")
    page.fill("#token", slow_daemon.token)
    page.click("#login button")
    slow_daemon.drop("refused.csv", customers_csv(50))
    page.wait_for_selector("#uploader[data-state='paused']", timeout=30_000)
    assert page.is_visible("#uploader-banner")
    assert "401" in page.inner_text("#uploader-banner")
