"""What the browser tests share: a live server of the app, headless Chromium, and page steps that wait.

Importing this module skips the importing test module where Chromium is missing, except in CI
(``CI`` set), where a missing browser is an error: CI must run the browser tests.
"""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must run the browser tests, but {CHROMIUM} is missing (scripts/ensure-chromium.sh).")
    pytest.skip("Chromium is not installed: run scripts/ensure-chromium.sh", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp_path_factory, data_dir=None):
    """Start the app on a free port (a server of its own), yield its URL, and check its log at the end."""
    port = free_port()
    data_dir = data_dir or tmp_path_factory.mktemp("server-data")
    env = {**os.environ, "TRANSFER_LAB_DATA_DIR": str(data_dir), "TRANSFER_LAB_MAX_CONCURRENT_RUNS": "2"}
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        log.seek(0)
        raise RuntimeError("The app did not start:\n" + log.read())
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.seek(0)
    output = log.read()
    assert "Traceback" not in output, output


def chromium(*extra_args: str):
    """Headless Chromium for a module's tests (a generator for a fixture), with ``extra_args`` on top."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", *extra_args],
        )
        yield browser
        browser.close()


def new_context(browser, **context_options):
    """A browser context whose actions wait up to 90 s for the page to take them: on a busy 2-core
    CI machine a rerun after a click can hold the page longer than Playwright's default 30 s (a
    sidebar click timed out that way)."""
    context = browser.new_context(**{"viewport": {"width": 1400, "height": 1000}, **context_options})
    context.set_default_timeout(90_000)
    return context


def fresh_page(browser, **context_options):
    """A page in a browser context of its own (cookies, storage), closed after the test (a fixture's generator)."""
    context = new_context(browser, **context_options)
    yield context.new_page()
    context.close()


def open_app(page, url):
    page.goto(url)
    page.get_by_role("heading", name="Data").wait_for(timeout=60_000)


def go_to(page, name: str):
    page.get_by_test_id("stSidebarNav").get_by_text(name, exact=True).click()
    page.get_by_role("heading", name=name).first.wait_for(timeout=60_000)


def assert_no_exception(page):
    assert page.get_by_test_id("stException").count() == 0


def wait_until_idle(page):
    """Until the app's script run is over: a click in the middle of a rerun may be lost, and a widget
    the rerun replaces stays on screen beside the new one until it ends."""
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === 'notRunning'",
        timeout=60_000)


def click_until(page, button, effect, tries: int = 3, wait_ms: int = 60_000):
    """Clicks ``button`` until ``effect`` shows. Beside a CPU hog, a click that landed as the page's
    last rerun ended once had no effect at all (the button stayed enabled, nothing started); a
    user clicks again, and so does this, up to ``tries`` times, each after the page is idle."""
    for _ in range(tries - 1):
        wait_until_idle(page)
        button.click()
        try:
            sync_api.expect(effect).to_be_visible(timeout=wait_ms)
            return
        except AssertionError:
            pass
    wait_until_idle(page)
    button.click()
    sync_api.expect(effect).to_be_visible(timeout=wait_ms)


def set_text(page, label: str, value: str):
    """Types a value and waits until the app's rerun has kept it. The idle check before typing can
    pass just before a rerun begins, and a box that rerun replaces loses what was typed, so it types
    again (at most three times) until the box holds the value once the page is idle."""
    box = page.get_by_label(label, exact=True)
    for _ in range(3):
        # until the last rerun has ended: a widget it replaced stays on screen beside the new one
        # till then (two "Class name" boxes on a busy CI machine, right after an add)
        wait_until_idle(page)
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(500)  # the rerun Enter starts, then its end
        wait_until_idle(page)
        if box.input_value() == value:
            return
    sync_api.expect(box).to_have_value(value)


def set_epochs(page, epochs: int):
    wait_until_idle(page)
    page.get_by_text("Training settings").click()
    set_text(page, "Epochs", str(epochs))


def wait_for_status(page, status: str, timeout_s: float = 240):
    page.get_by_role("heading", name=re.compile(rf"Run [0-9a-f]{{16}} — {status}")).wait_for(timeout=timeout_s * 1000)


def wait_idle(page, timeout_s: float = 60):
    """Until the app has no script run in progress (the 'Running…' indicator is gone)."""
    page.wait_for_timeout(300)
    page.get_by_test_id("stStatusWidgetRunningIcon").wait_for(state="detached", timeout=timeout_s * 1000)


def upload_zip(page, name: str, payload: bytes):
    """Upload an archive and press 'Load this ZIP' once the server has it."""
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
        files=[{"name": name, "mimeType": "application/zip", "buffer": payload}])
    page.get_by_test_id("stFileChipName").filter(has_text=name).wait_for(timeout=60_000)
    page.get_by_test_id("stFileChipIconSpinner").wait_for(state="detached", timeout=60_000)
    wait_idle(page)
    page.get_by_role("button", name="Load this ZIP").click()
