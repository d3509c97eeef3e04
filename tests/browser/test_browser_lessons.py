"""Each lesson in a real browser: open it, click Run this experiment, see its outcome in the time a class waits."""

import re
import time

import pytest

from core.lessons import load_lessons
from tests.browser.browser_helpers import assert_no_exception, sync_api

pytestmark = pytest.mark.browser

expect = sync_api.expect
LESSONS, _ = load_lessons()


def test_the_lessons_page_opens_as_a_deep_link_and_is_first_in_the_menu(server, page):
    page.goto(f"{server}/lessons")
    expect(page.get_by_role("heading", name="Lessons").first).to_be_visible(timeout=120_000)
    expect(page.get_by_role("heading", name=f"1. {LESSONS[0].title}")).to_be_visible()
    links = page.get_by_test_id("stSidebarNav").locator("a")
    expect(links.first).to_contain_text("Lessons")
    assert_no_exception(page)


@pytest.mark.parametrize("number, lesson", list(enumerate(LESSONS, start=1)), ids=[x.slug for x in LESSONS])
def test_a_lesson_runs_and_shows_its_outcome_beside_the_expected_one(server, page, number, lesson):
    page.goto(f"{server}/lessons")
    expect(page.get_by_role("heading", name="Lessons").first).to_be_visible(timeout=120_000)
    page.get_by_test_id("stRadio").get_by_text(f"{number}. {lesson.title}", exact=True).click()
    expect(page.get_by_role("heading", name=f"{number}. {lesson.title}")).to_be_visible(timeout=30_000)
    expect(page.get_by_text(lesson.expected)).to_be_visible()
    clicked = time.perf_counter()
    page.get_by_role("button", name="Run this experiment").click()
    # the outcome, or the message of an experiment that failed (so a failure shows at once, with its reason)
    outcome = page.get_by_text(re.compile(r"^Outcome: (as expected|not as expected)\.$|^The experiment did not finish"))
    # a lesson runs in ≤ 60 s on two idle cores; CI shares its two with other jobs, hence the margin
    expect(outcome).to_be_visible(timeout=300_000)
    seconds = time.perf_counter() - clicked
    text = outcome.inner_text()
    print(f"\nlesson {number} ({lesson.slug}): click to outcome {seconds:.1f} s — {text}")
    assert text.startswith("Outcome: "), text
    assert_no_exception(page)
