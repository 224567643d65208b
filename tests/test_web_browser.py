"""The dashboard in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium, never a browser
download), against real runs on the sshd fleet.

With FLEETSHARD_SCREENSHOTS=DIR set, the tests also save docs screenshots there (live.png, history.png).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from clihelp import fleetshard
from fakesuite import FakeSuite, specs
from fleet import SshFleet, WriteInventory

CHROMIUM = Path("/usr/bin/chromium")
EVIL_NAME = "t02<img src=x onerror=alert(1)>"
EVIL_FILE = f"tests/{EVIL_NAME}.test"
SCREENSHOTS = os.environ.get("FLEETSHARD_SCREENSHOTS")

try:
    from playwright.sync_api import Browser, Page, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # pragma: no cover - playwright is in the test extra
    sync_playwright = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install playwright; no browser download is needed)")
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium (Debian package `chromium`)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Watched:
    """A page with everything it requested and every console error it logged."""

    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def outside(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("data:", self.origin))]


def watch(browser: Browser, origin: str, **context: Any) -> Watched:
    page = browser.new_context(**context).new_page()
    watched = Watched(page, origin)
    page.on("request", lambda request: watched.requests.append(request.url))
    page.on("console", lambda msg: watched.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: watched.errors.append(str(exc)))
    return watched


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def read_url(proc: subprocess.Popen[str], pattern: str, timeout: float = 60.0) -> str:
    """The URL a fleetshard process prints on stderr (a line matching ``pattern``)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match.group(1)
    raise AssertionError("no URL printed: " + "".join(seen))


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_history_pages_in_a_browser(browser: Browser, fleet: SshFleet, fleet_inventory: WriteInventory,
                                    tmp_path: Path) -> None:
    fs = FakeSuite(tmp_path, fleet.root, specs(8, 0.15, **{"tests/t03.test": {"fail_once": 1},
                                                            "tests/t06.test": {"duration": 0.5}}))
    inv = fleet_inventory(slots=1, suite=fs.suite())
    assert fleetshard("run", "-i", inv, "--retry-failed-tests", "1").code == 0       # t03 is flaky
    (fs.dir / "spec.json").write_text('{"tests/t05.test": {"fail": true}}')
    assert fleetshard("run", "-i", inv).code == 1
    with subprocess.Popen([sys.executable, "-m", "fleetshard", "serve", "127.0.0.1:0", "-i", str(inv)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        try:
            url = read_url(proc, r"history dashboard at (\S+)")
            w = watch(browser, origin_of(url), viewport={"width": 1280, "height": 900})
            page = w.page
            page.goto(url)
            rows = page.locator("table tbody tr")
            assert rows.count() == 2
            assert page.locator("svg.spark circle").count() == 2
            assert "tests failed" in rows.nth(0).inner_text() and "passed" in rows.nth(1).inner_text()
            if SCREENSHOTS:
                page.screenshot(path=str(Path(SCREENSHOTS) / "history.png"), full_page=True)
            page.click("text=Flaky tests")
            assert "test_t03.test" in page.inner_text("main")
            page.click("text=Machines")
            assert all(page.locator(f"td:text-is('{h}')").count() == 1 for h in ("h1", "h2", "h3", "h4"))
            page.click("text=Runs")
            page.locator("table tbody tr").nth(0).locator("a").first.click()
            assert page.locator(".lane[data-machine]").count() == 4           # the report's timeline
            assert "test_t05.test" in page.inner_text("main")
            page.click("text=what if…")
            page.fill("input[name=changes]", "without:h4, slots:h1=2")
            page.click("text=Simulate")
            text = page.inner_text("main")
            assert "simulation from recorded durations" in text and "simulated: without:h4, slots:h1=2" in text
            assert w.errors == [] and w.outside() == []
        finally:
            stop(proc)
    fs.cleanup()


def test_live_page_of_a_real_run(browser: Browser, fleet: SshFleet, fleet_inventory: WriteInventory,
                                 tmp_path: Path) -> None:
    """The live page follows a run on the sshd fleet and becomes its report; stdout stays as without it."""
    # The failing test's name is HTML: the page must show it as text. h1 and h2 run at the same speed, so
    # t01 (watched while it runs) ends well before t09, and the run (and its page) goes on after it.
    fs = FakeSuite(tmp_path, fleet.root, specs(9, 0.2, **{EVIL_FILE: {"fail": True, "duration": 0.1},
                                                           "tests/t01.test": {"duration": 5.0},
                                                           "tests/t09.test": {"duration": 9.0}}))
    inv = fleet_inventory(machines=["h1", "h2"], slots=1, suite=fs.suite(shards=10))
    # nothing listens on port 9: the webhook fails, and its URL (a secret) must not reach the page
    argv = [sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--serve", "127.0.0.1:0",
            "--serve-grace", "20", "--notify", "http://127.0.0.1:9/hook-SECRET123"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        try:
            url = read_url(proc, r"live dashboard at (\S+)")
            w = watch(browser, origin_of(url), viewport={"width": 1280, "height": 900})
            page = w.page
            page.goto(url)
            for name in ("h1", "h2"):                                  # every machine has its row
                page.wait_for_selector(f".row[data-machine={name}]", timeout=60_000)
            # lanes grow: a running shard's block widens as time passes (t01's, or t09's on a slow day)
            t01 = page.locator(".block[title*='tests/t01.test']")
            try:
                page.wait_for_selector(".block.running[title*='tests/t01.test']", timeout=20_000)
            except PlaywrightTimeout:
                pass                                   # a loaded machine: t01 was over before the page saw it
            key = page.locator(".block.running").first.get_attribute("data-key", timeout=30_000)
            growing = page.locator(f".block[data-key='{key}']")
            first = growing.bounding_box()
            assert first is not None
            widths = []                        # the time axis may rescale once (a new ETA): look a few times
            for _ in range(8):
                page.wait_for_timeout(400)
                later = growing.bounding_box()
                assert later is not None
                widths.append(later["width"])
                if later["width"] > first["width"]:
                    break
            assert max(widths) > first["width"], (first, widths)
            # the tail of a shard streams on click: what it printed, then what it prints, then its end
            t01.click()
            page.wait_for_selector("#tail:has-text('HOST h')", timeout=20_000)
            assert "Output of" in page.inner_text("#tail-title")
            first_seen = page.inner_text("#tail").splitlines()
            page.wait_for_selector("#tail:has-text('ended: passed')", timeout=30_000)
            final = page.inner_text("#tail").splitlines()
            assert "PASS tests/t01.test" in final
            if not any("ended:" in line for line in first_seen):      # it was still running: more came
                assert len(final) > len(first_seen) and final[:len(first_seen)] == first_seen
            # a failure shows up, with its test's name, while the run still goes on (t09 runs)
            page.wait_for_selector(".failure code.test-name:has-text('onerror')", timeout=20_000)
            assert EVIL_NAME in page.inner_text(".failure code.test-name") and page.locator("img").count() == 0
            assert page.locator("header.running").count() == 1
            if SCREENSHOTS:
                page.screenshot(path=str(Path(SCREENSHOTS) / "live.png"), full_page=True)
            # at the end the page is the run's report
            page.wait_for_selector("h2:has-text('Summary')", timeout=60_000)   # the report's
            page.wait_for_selector(".lane[data-machine]:not(.row)", timeout=30_000)
            page.wait_for_function("document.querySelector('header').className === 'fail'", timeout=30_000)
            assert "Failures" in page.inner_text("main") and EVIL_NAME in page.inner_text("main")
            assert page.locator("img").count() == 0
            snapshot = page.request.get(url.split("?")[0] + "api/snapshot").text()
            assert "SECRET123" not in page.content() and "SECRET123" not in snapshot
            assert proc.wait(timeout=30) == 1                            # it exits once the page has the report
            out = proc.stdout.read() if proc.stdout else ""
            assert "dashboard" not in out and "FAILED" in out
            assert w.errors == [] and w.outside() == [], (w.errors, w.outside())
        finally:
            stop(proc)
    fs.cleanup()
