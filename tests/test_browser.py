"""The main flows in a real browser: headless Chromium driven by Playwright against a live server."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent

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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory)


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


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


@pytest.fixture
def page(browser):
    yield from fresh_page(browser)


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


def test_every_page_opens_without_an_exception(server, page):
    open_app(page, server)
    sync_api.expect(page.get_by_text("Demo shapes (source look): 80 images in 4 classes")).to_be_visible(timeout=60_000)
    for name in ["Lessons", "Model", "Train", "Feature maps", "Saliency", "Domain shift", "Evaluate", "Use the model", "Data"]:
        go_to(page, name)
        page.wait_for_timeout(300)
        assert_no_exception(page)


def test_a_page_link_opened_first_works_in_a_new_browser(server, browser):
    """A student pastes the teacher's link to a page: it opens with the session set up."""
    context = new_context(browser)
    try:
        page = context.new_page()
        page.goto(f"{server}/train")
        page.get_by_role("heading", name="Train").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Train", exact=True).wait_for(timeout=60_000)
        assert_no_exception(page)
    finally:
        context.close()


def test_training_the_demo_set_draws_live_curves_and_a_final_accuracy(server, page, tmp_path):
    open_app(page, server)
    go_to(page, "Train")
    set_epochs(page, 2)
    clicked = time.perf_counter()
    page.get_by_role("button", name="Train", exact=True).click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    first_curve = time.perf_counter() - clicked
    wait_for_status(page, "finished")
    # the page redraws once more without its timer when the run ends: wait for the final metrics
    page.get_by_text("Validation accuracy", exact=True).wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "trained.png"), full_page=True)
    value = page.get_by_test_id("stMetricValue").first.inner_text()
    assert float(value.rstrip("%")) > 50, value  # four classes: chance is 25%
    assert re.search(r"run=[0-9a-f]{16}", page.url)
    print(f"\nclick to first curve: {first_curve:.1f} s")
    assert_no_exception(page)


def test_a_run_survives_a_page_switch_and_a_browser_refresh(server, page):
    open_app(page, server)
    go_to(page, "Model")
    page.get_by_text("Fine-tune all", exact=True).click()
    page.wait_for_timeout(500)
    go_to(page, "Train")
    set_epochs(page, 3)
    page.get_by_role("button", name="Train", exact=True).click()
    wait_for_status(page, "(preparing|running|queued)", 60)
    run_url = page.url
    assert "run=" in run_url
    go_to(page, "Data")
    go_to(page, "Train")
    wait_for_status(page, "(preparing|running|finished)", 60)
    page.reload()  # the address bar points at the Train page and the run: it opens there
    page.get_by_role("heading", name="Train").first.wait_for(timeout=60_000)
    wait_for_status(page, "finished")
    assert page.url.split("run=")[1][:16] == run_url.split("run=")[1][:16]
    assert_no_exception(page)
