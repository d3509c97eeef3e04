"""One browser is one person: tabs opened together share one owner, so the per-person limit counts
across them and a refresh hides none of the runs they started."""

import re

import pytest

from tests.browser.browser_helpers import new_context, sync_api, wait_idle, wait_until_idle

pytestmark = pytest.mark.browser

expect = sync_api.expect
SLOW = "/train?strategy=full&epochs=60"
FULL = re.compile(r"You (already )?have 2 runs training or waiting")  # runs that are still training when the third tab asks


def test_tabs_opened_together_are_one_person_with_one_share_of_the_queue(server, browser):
    context = new_context(browser)
    try:
        tabs = [context.new_page() for _ in range(3)]
        for tab in tabs:  # together: none has the cookie when its session starts
            tab.goto(server + SLOW, wait_until="commit")
        for tab in tabs:
            expect(tab.get_by_role("button", name="Train", exact=True)).to_be_visible(timeout=90_000)
        tabs[0].wait_for_timeout(2500)  # the tabs that lost the race for the cookie reload (within 1.5 s)
        for tab in tabs:
            expect(tab.get_by_role("button", name="Train", exact=True)).to_be_visible(timeout=90_000)
            wait_idle(tab)
        page_owners = {c["value"] for c in context.cookies() if c["name"] == "transfer_lab_owner"}
        assert len(page_owners) == 1
        for tab in tabs[:2]:
            wait_until_idle(tab)
            tab.get_by_role("button", name="Train", exact=True).click()
            expect(tab.get_by_role("heading", name="Your runs")).to_be_visible(timeout=90_000)
        third = tabs[2]
        wait_until_idle(third)
        third.get_by_role("button", name="Train", exact=True).click()
        # the two runs of the other tabs are this person's: the limit of two is reached
        expect(third.get_by_text(FULL).first).to_be_visible(timeout=60_000)
        expect(third.get_by_role("heading", name=re.compile(r"^Run [0-9a-f]{16}"))).to_have_count(0)  # no third run
        third.reload()  # and after a refresh both are still theirs (their share is still used)
        expect(third.get_by_text(FULL).first).to_be_visible(timeout=90_000)
        for tab in tabs[:2]:
            tab.get_by_role("button", name="Stop").first.click()
    finally:
        context.close()
