"""Teaching in a real browser: nothing is fetched from the internet, and links carry a setup.

Headless Chromium driven by Playwright against a live server (the fixtures of tests/browser/conftest.py).
"""

from urllib.parse import urlparse

import pytest

from tests.browser.browser_helpers import assert_no_exception, go_to, open_app, sync_api

pytestmark = pytest.mark.browser

PAGES = ["Model", "Train", "Feature maps", "Saliency", "Domain shift", "Evaluate", "Use the model", "Data"]


def test_no_request_leaves_the_machine_while_every_page_loads(server, page):
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    open_app(page, server)
    sync_api.expect(page.get_by_text("80 images in 4 classes").first).to_be_visible(timeout=60_000)
    for name in PAGES:
        go_to(page, name)
        page.wait_for_timeout(500)
    page.reload()
    page.get_by_role("heading", name="Data").wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    outside = sorted({url for url in requests
                      if urlparse(url).scheme not in ("data", "blob") and urlparse(url).hostname != "127.0.0.1"})
    assert requests, "no request was recorded at all"
    assert outside == [], outside
    assert_no_exception(page)


def test_a_link_with_settings_opens_the_page_with_them_applied(server, page):
    # Until the server has run app.py once, Streamlit runs a page's file alone for a page URL (its
    # old pages/ mode): open the app first so this test does not depend on the order of tests.
    open_app(page, server)
    page.goto(f"{server}/train?data=target&per_class=10&strategy=full&epochs=3&lr=0.0003&lock=epochs")
    page.get_by_role("heading", name="Train").first.wait_for(timeout=60_000)
    summary = page.get_by_test_id("stMain").get_by_test_id("stMarkdownContainer").filter(has_text="(40 images)")
    sync_api.expect(summary).to_be_visible(timeout=60_000)
    sync_api.expect(summary).to_contain_text("Fine-tune all")
    sync_api.expect(summary).to_contain_text("3 epochs")
    page.get_by_text("Training settings").click()
    epochs = page.get_by_label("Epochs", exact=True)
    sync_api.expect(epochs).to_have_value("3")
    sync_api.expect(epochs).to_be_disabled()  # the link locked it
    sync_api.expect(page.get_by_text("Set by your teacher's link: Epochs.")).to_be_visible()
    # the address bar keeps the setup after a page switch, so a refresh or a copy carries it on
    go_to(page, "Data")
    sync_api.expect(page.get_by_text("Demo shapes (target look): 40 images in 4 classes")).to_be_visible()
    page.wait_for_function("() => location.search.includes('epochs=3') && location.search.includes('data=target')",
                           timeout=30_000)
    assert_no_exception(page)


def test_a_link_with_garbage_parameters_opens_normally_with_a_note(server, page):
    page.goto(f"{server}/?epochs=many&backbone=alexnet&zzz=%3Cscript%3E&lock=everything")
    page.get_by_role("heading", name="Data").wait_for(timeout=60_000)
    note = page.get_by_test_id("stAlertContentInfo").filter(has_text="Some of this link's settings were not used")
    sync_api.expect(note).to_be_visible(timeout=60_000)
    sync_api.expect(note).to_contain_text("epochs=many")
    sync_api.expect(note).to_contain_text("'zzz'")
    sync_api.expect(page.get_by_text("Demo shapes (source look): 80 images in 4 classes")).to_be_visible()
    assert_no_exception(page)
