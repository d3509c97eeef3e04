"""The pinned-image player on the Train page and the Microscope, in a real browser."""

import re

import pytest

from tests.browser.browser_helpers import (
    assert_no_exception,
    click_until,
    go_to,
    open_app,
    set_epochs,
    sync_api,
    wait_for_status,
    wait_until_idle,
)

pytestmark = pytest.mark.browser


def test_a_run_plays_its_pinned_images_epoch_by_epoch_with_the_kept_epoch_marked(server, page):
    open_app(page, server)
    go_to(page, "Train")
    sync_api.expect(page.get_by_text("Pinned images — watched at every epoch (4)")).to_be_visible(timeout=60_000)
    set_epochs(page, 3)
    page.get_by_role("button", name="Train", exact=True).click()
    wait_for_status(page, "finished")
    sync_api.expect(page.get_by_text("Pinned images, epoch by epoch").first).to_be_visible(timeout=60_000)
    wait_until_idle(page)  # the run's last redraw: one player on the page
    player = page.locator(".js-plotly-plot").filter(
        has=page.locator(".gtitle", has_text=re.compile(r"Epoch \d of 3"))).first
    title = player.locator(".gtitle")
    sync_api.expect(title).to_contain_text("Epoch 3 of 3", timeout=60_000)
    sync_api.expect(title).to_contain_text("kept epoch")
    # the slider over the epochs, and play: the frames step from the first epoch to the last
    sync_api.expect(player.locator(".slider-container")).to_be_visible()
    # A frame shows for 0.7 s: the browser itself notes every title it draws (a poll from here could
    # miss a frame on a busy machine), and the frames must have started over from the first epoch.
    page.evaluate("""() => { window.__titles = [];
        setInterval(() => document.querySelectorAll('.gtitle').forEach(t => window.__titles.push(t.textContent)), 50); }""")
    # The run's fragment draws its ended state, then asks for the full rerun a second later: on a busy
    # machine that rerun can land after the page looked idle and redraw the player mid-animation,
    # which leaves it on the frame it had reached (fresh-clone CI: stuck at epoch 1). A user presses
    # Play again; so does this, once, and each try must go from epoch 1 to epoch 3.
    for attempt in range(2):
        wait_until_idle(page)
        page.evaluate("() => { window.__titles = []; }")
        player.locator(".updatemenu-button", has_text="Play").click()
        page.wait_for_function("() => window.__titles.some(t => t.includes('Epoch 1 of 3'))", timeout=20_000)
        try:
            sync_api.expect(title).to_contain_text("Epoch 3 of 3", timeout=20_000)
            break
        except AssertionError:
            if attempt:
                raise
    assert_no_exception(page)


def test_the_microscope_shows_a_channels_top_images_and_visualizes_it(server, page):
    open_app(page, server)
    go_to(page, "Microscope")
    sync_api.expect(page.get_by_role("heading", name=re.compile(r"channel 0 of \d+"))).to_be_visible(timeout=120_000)
    sync_api.expect(page.get_by_test_id("stImage")).to_have_count(9, timeout=60_000)  # the dataset examples
    page.get_by_role("spinbutton", name=re.compile("Channel")).fill("5")
    page.keyboard.press("Enter")
    sync_api.expect(page.get_by_role("heading", name=re.compile(r"channel 5 of \d+"))).to_be_visible(timeout=60_000)
    click_until(page, page.get_by_role("button", name="Visualize"), page.get_by_text(re.compile("Stop|Mean activation")))
    sync_api.expect(page.get_by_text("Mean activation of the channel on its visualization")).to_be_visible(
        timeout=240_000)
    sync_api.expect(page.get_by_test_id("stImage")).to_have_count(10)
    assert_no_exception(page)
