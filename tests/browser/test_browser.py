"""The main flows in a real browser: headless Chromium driven by Playwright against a live server."""

import re
import time

import pytest

from tests.browser.browser_helpers import (
    assert_no_exception,
    go_to,
    new_context,
    open_app,
    set_epochs,
    sync_api,
    wait_for_status,
)

pytestmark = pytest.mark.browser



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
