"""A classroom in a real browser: bad uploads, five people training at once, a refresh mid-run.

Headless Chromium driven by Playwright against one live server that trains at most two runs at
once (TRANSFER_LAB_MAX_CONCURRENT_RUNS=2), so a class of five makes some runs wait in the queue.
"""

import io
import os
import re
import time
import zipfile

import pytest

from tests.browser.browser_helpers import (
    assert_no_exception,
    go_to,
    new_context,
    open_app,
    set_epochs,
    sync_api,
    upload_zip,
    wait_idle,
)

pytestmark = pytest.mark.browser

DEMO_HEADING = "Demo shapes (source look): 80 images in 4 classes"
RUN_IN_URL = re.compile(r"[?&]run=([0-9a-f]{16})")
QUEUE_MESSAGE = re.compile(r"Waiting for a free training slot: number \d+ in the queue\.")


# --- archives, built in memory ----------------------------------------------------------------


def png(colour, shape: int, size: int = 32) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(img)
    box = (4 + shape % 5, 4 + shape % 3, size - 5, size - 4 - shape % 4)
    (draw.ellipse if shape % 2 else draw.rectangle)(box, fill=(255 - colour[0], 255 - colour[1], 255 - colour[2]))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def class_zip(classes: list[str], per_class: int = 6) -> bytes:
    """A ZIP with one folder per class, each holding ``per_class`` small PNGs."""
    palette = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 180, 30)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for c, name in enumerate(classes):
            for i in range(per_class):
                zf.writestr(f"{name}/{name}_{i}.png", png(palette[c % len(palette)], i))
    return buf.getvalue()


def zip_slip() -> bytes:
    """Every entry climbs out of the archive (../evil.jpg and friends)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        image = png((10, 10, 10), 1)
        for name in ["../evil.jpg", "../cats/evil.jpg", "../../dogs/evil.jpg", "cats/../../evil.jpg"]:
            zf.writestr(name, image)
    return buf.getvalue()


# --- page helpers -----------------------------------------------------------------------------


def choose_zip_source(page):
    page.get_by_text("ZIP of class folders", exact=True).click()
    page.get_by_test_id("stFileUploaderDropzoneInput").wait_for(state="attached", timeout=60_000)


def error_for(page, name: str) -> str:
    alert = page.get_by_test_id("stAlert").filter(has_text=f"{name}:")
    alert.wait_for(timeout=60_000)
    return alert.inner_text()


def run_id_of(page, timeout_s: float = 60) -> str:
    page.wait_for_url(RUN_IN_URL, timeout=timeout_s * 1000)
    return RUN_IN_URL.search(page.url).group(1)


def dropdown_options(page, label: str) -> list[str]:
    """The option texts of a selectbox or multiselect, read by opening it."""
    box = page.get_by_label(label).first
    box.click()
    options = page.get_by_role("option")
    try:
        options.first.wait_for(timeout=2_000)
    except sync_api.TimeoutError:
        box.press("ArrowDown")  # a selectbox (a combobox) opens from the keyboard
        options.first.wait_for(timeout=10_000)
    texts = options.all_inner_texts()
    page.keyboard.press("Escape")
    page.wait_for_timeout(200)
    return texts


# --- the tests --------------------------------------------------------------------------------


def test_a_bad_upload_keeps_the_dataset_and_a_good_one_replaces_it(server, page):
    open_app(page, server)
    choose_zip_source(page)
    wait_idle(page)
    assert_no_exception(page)
    sync_api.expect(page.get_by_text(DEMO_HEADING)).to_be_visible(timeout=60_000)

    upload_zip(page, "x.zip", os.urandom(4096))
    message = error_for(page, "x.zip")
    assert "unchanged" in message, message
    assert "not a readable ZIP" in message, message
    sync_api.expect(page.get_by_text(DEMO_HEADING)).to_be_visible(timeout=60_000)

    upload_zip(page, "slip.zip", zip_slip())
    message = error_for(page, "slip.zip")
    assert "unchanged" in message, message
    assert "outside the archive" in message, message  # the skipped entries are named, with the reason
    sync_api.expect(page.get_by_text(DEMO_HEADING)).to_be_visible(timeout=60_000)

    upload_zip(page, "fruit.zip", class_zip(["apples", "pears"], per_class=4))
    page.get_by_text("fruit.zip: 8 images in 2 classes").wait_for(timeout=60_000)
    sync_api.expect(page.get_by_text(DEMO_HEADING)).to_have_count(0, timeout=60_000)
    # The old error is drawn until the rerun that loaded the ZIP ends (Streamlit clears stale
    # elements at the end of a run), so wait for that run rather than read a frame mid-run.
    wait_idle(page)
    page.get_by_test_id("stAlert").filter(has_text="unchanged").wait_for(state="detached", timeout=30_000)
    assert_no_exception(page)


def test_a_refresh_mid_run_finds_the_run_again(server, page):
    open_app(page, server)
    go_to(page, "Model")
    page.get_by_text("Fine-tune all", exact=True).click()
    wait_idle(page)
    go_to(page, "Train")
    set_epochs(page, 3)
    page.get_by_role("button", name="Train", exact=True).click()
    run_id = run_id_of(page)
    page.get_by_role("heading", name=re.compile(rf"Run {run_id} — (queued|preparing|running)")).wait_for(timeout=60_000)
    page.reload()
    page.get_by_role("heading", name="Train").first.wait_for(timeout=60_000)
    go_to(page, "Train")
    # .first: while the page reruns, the run's old heading can stand beside the new one
    page.get_by_role("heading", name=re.compile(rf"Run {run_id} — ")).first.wait_for(timeout=60_000)
    page.get_by_role("heading", name=f"Run {run_id} — finished").wait_for(timeout=400_000)  # minutes on a busy machine
    assert run_id_of(page) == run_id
    assert_no_exception(page)


def test_five_sessions_train_at_once_and_each_sees_only_its_own_runs(server, browser):
    n = 5
    contexts = [new_context(browser) for _ in range(n)]
    try:
        pages = [context.new_page() for context in contexts]
        for k, page in enumerate(pages):
            open_app(page, server)
            choose_zip_source(page)
            upload_zip(page, f"session{k}.zip", class_zip([f"apples_{k}", f"pears_{k}"]))
            page.get_by_text(f"session{k}.zip: 12 images in 2 classes").wait_for(timeout=60_000)
            go_to(page, "Train")
            set_epochs(page, 1)
            wait_idle(page)

        clicked = {}
        for k, page in enumerate(pages):  # press Train in all five, as fast as the pages allow
            page.get_by_role("button", name="Train", exact=True).click()
            clicked[k] = time.perf_counter()
        run_ids = [run_id_of(page) for page in pages]
        assert len(set(run_ids)) == n, run_ids

        queued_seen: set[int] = set()
        finished: dict[int, float] = {}
        deadline = time.time() + 420  # a few seconds each when the machine is idle; minutes when it is not
        while len(finished) < n and time.time() < deadline:
            for k, page in enumerate(pages):
                if k in finished:
                    continue
                if page.get_by_text(QUEUE_MESSAGE).count():
                    queued_seen.add(k)
                if page.get_by_role("heading", name=f"Run {run_ids[k]} — finished").count():
                    finished[k] = time.perf_counter() - clicked[k]
                assert page.get_by_role("heading", name=re.compile(rf"Run {run_ids[k]} — (failed|diverged|cancelled)")).count() == 0
            page.wait_for_timeout(250)
        if len(finished) < n:
            stuck = {k: pages[k].locator("section.main, [data-testid=stMain]").first.inner_text()[:1500]
                     for k in range(n) if k not in finished}
            pytest.fail(f"finished: {sorted(finished)} of {n}; the others show:\n{stuck}")
        print(f"\nclick to finished: {', '.join(f'{finished[k]:.1f} s' for k in range(n))}; "
              f"queue message seen in sessions {sorted(queued_seen) or 'none (the queue drained between polls)'}")

        for k, page in enumerate(pages):
            wait_idle(page)
            text = page.locator("body").inner_text()
            assert run_ids[k] in text
            assert f"session{k}.zip" in text
            for j in range(n):
                if j != k:
                    assert run_ids[j] not in text, f"session {k} shows session {j}'s run"
                    assert f"session{j}.zip" not in text, f"session {k} shows session {j}'s dataset"
            # one run each in the session's lists, however many the server holds
            assert len(dropdown_options(page, "Reopen a run")) == 1
            assert len(dropdown_options(page, "Runs to overlay")) == 1
            assert_no_exception(page)

        # a fresh browser with session 0's link sees that run, read-only, and nobody's run list
        fresh = new_context(browser)
        contexts.append(fresh)
        other = fresh.new_page()
        other.goto(pages[0].url)  # .../train?run=<its run>
        other.get_by_role("heading", name=f"Run {run_ids[0]} — finished").wait_for(timeout=60_000)
        sync_api.expect(other.get_by_text("Opened from a shared link")).to_be_visible(timeout=60_000)
        sync_api.expect(other.get_by_role("heading", name="Your runs")).to_have_count(0)
        text = other.locator("body").inner_text()
        assert all(run_ids[j] not in text for j in range(1, n))
    finally:
        for context in contexts:
            context.close()
