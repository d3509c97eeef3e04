"""Teaching in a real browser: nothing is fetched from the internet, and links carry a setup.

Headless Chromium driven by Playwright against a live server (test_browser's fixtures).
"""

from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.browser

try:  # `python -m pytest` puts the repository on sys.path; plain `pytest` puts tests/ there
    from tests.test_browser import assert_no_exception, browser, go_to, open_app, page, server, sync_api  # noqa: F401
except ImportError:
    from test_browser import assert_no_exception, browser, go_to, open_app, page, server, sync_api  # noqa: F401

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
