"""Every page answers at its own name: /data opens the Data page (served at the root), as /train
opens the Train page, with the link's settings kept."""

import pytest

from tests.browser.browser_helpers import assert_no_exception, sync_api

pytestmark = pytest.mark.browser

expect = sync_api.expect


def test_the_data_pages_own_name_opens_it_with_the_links_settings(server, page):
    page.goto(server + "/data?epochs=3")
    expect(page.get_by_role("heading", name="Data").first).to_be_visible(timeout=90_000)
    expect(page.get_by_text("Bring images from").first).to_be_visible(timeout=60_000)
    expect(page).to_have_url(server + "/?epochs=3")
    expect(page.get_by_text("Page not found")).to_have_count(0)
    assert_no_exception(page)
