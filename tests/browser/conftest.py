"""The browser tests' fixtures: one live server and one Chromium per test module, a fresh page per test.

The helpers they use (and the Chromium check) are in browser_helpers.py; these fixtures import it
when first used, so a machine without Chromium skips the browser tests instead of failing here.
"""

import pytest


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free port with a data folder of its own (two training slots)."""
    from tests.browser.browser_helpers import serve

    yield from serve(tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    from tests.browser.browser_helpers import chromium

    yield from chromium()


@pytest.fixture
def page(browser):
    """A page in a browser context of its own (cookies, storage), closed after the test."""
    from tests.browser.browser_helpers import fresh_page

    yield from fresh_page(browser)
