"""Bringing images the way a class does, in a real browser: webcam bursts, single-image classes,
a new dataset of one's own, and every page at projector sizes.

Chromium's fake camera (`--use-fake-device-for-media-stream`) stands in for a webcam and its fake
permission prompt (`--use-fake-ui-for-media-stream`) says yes, so st.camera_input gets frames.
"""

import re

import pytest

pytestmark = pytest.mark.browser

# The server, go_to and friends are test_browser's; importing them also brings its Chromium check.
try:  # `python -m pytest` puts the repository on sys.path; plain `pytest` puts tests/ there
    from tests.test_browser import (CHROMIUM, assert_no_exception, go_to, open_app, server,  # noqa: F401
                                    set_epochs, sync_api, wait_for_status)
except ImportError:
    from test_browser import (CHROMIUM, assert_no_exception, go_to, open_app, server,  # noqa: F401
                              set_epochs, sync_api, wait_for_status)

expect = sync_api.expect
PAGE_TITLES = {"Data", "Model", "Train", "Feature maps", "Saliency", "Domain shift", "Evaluate", "Use the model"}


@pytest.fixture(scope="module")
def browser():
    """test_browser's Chromium, with a fake webcam that needs no permission click."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run",
                  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"])
    page = context.new_page()
    yield page
    context.close()


# Records the text of every link the sidebar menu ever shows, from the first paint on.
RECORD_MENU = """
window.__menu = new Set();
new MutationObserver(() => {
  document.querySelectorAll('[data-testid=stSidebarNav] a').forEach(a => window.__menu.add(a.innerText.trim()));
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def test_the_first_page_after_a_start_never_lists_the_raw_files_of_pages(server, browser):
    """Runs first in this module, on a server nobody has opened yet."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.add_init_script(RECORD_MENU)
        open_app(page, server)
        nav = page.get_by_test_id("stSidebarNav")
        expect(nav.get_by_text("Domain shift", exact=True)).to_be_visible(timeout=30_000)
        shown = set(page.evaluate("[...window.__menu]"))
        assert shown, "the menu was never drawn"
        # a link's text is its icon's name, then its title
        assert {s.split("\n")[-1] for s in shown} <= PAGE_TITLES, shown
    finally:
        context.close()
