"""Several labels per image in a real browser: a ZIP with a labels.csv that leaves some cells
empty is uploaded on the Data page, trained with a head per task, and evaluated task by task."""

import csv
import io
import re
import time
import zipfile

import pytest

from tests.browser.browser_helpers import (
    assert_no_exception,
    go_to,
    open_app,
    set_epochs,
    sync_api,
    upload_zip,
    wait_for_status,
    wait_idle,
)

pytestmark = pytest.mark.browser

expect = sync_api.expect
COLOURS = {"red": (200, 40, 40), "blue": (40, 60, 200)}


def picture(colour: str, shape: str, variant: int, size: int = 32) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (235, 235, 225))
    box = (5 + variant % 4, 5 + variant % 3, size - 6, size - 5 - variant % 2)
    (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def labelled_zip(n: int = 16) -> bytes:
    """``n`` pictures in images/, labels.csv with a colour and a shape column; every fourth image has
    no shape label and every fifth no colour label (never both): empty cells."""
    rows, buf = [], io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            colour, shape = ("red", "blue")[i % 2], ("circle", "square")[(i // 2) % 2]
            zf.writestr(f"images/{i:02d}.png", picture(colour, shape, i))
            rows.append([f"images/{i:02d}.png", "" if i % 5 == 4 else colour, "" if i % 4 == 3 else shape])
        text = io.StringIO()
        csv.writer(text).writerows([["path", "colour", "shape"], *rows])
        zf.writestr("labels.csv", text.getvalue())
    return buf.getvalue()


def choose_zip_source(page):
    # the first script run after a server start can take a while on a busy machine
    option = page.get_by_test_id("stRadio").filter(has_text="Bring images from").get_by_text(
        "ZIP of class folders", exact=True)
    expect(option).to_be_visible(timeout=90_000)
    option.click()
    page.get_by_test_id("stFileUploaderDropzoneInput").wait_for(state="attached", timeout=60_000)


def test_a_zip_with_labels_csv_and_gaps_loads_trains_a_head_per_task_and_is_evaluated_per_task(server, page):
    started = time.perf_counter()
    open_app(page, server)
    choose_zip_source(page)
    upload_zip(page, "tasks.zip", labelled_zip())
    expect(page.get_by_role("heading", name="tasks.zip: 16 images labelled for 2 tasks")).to_be_visible(timeout=60_000)
    # the gaps are said, not hidden
    expect(page.get_by_text(re.compile(r"are not labelled for 'shape'")).first).to_be_visible()

    go_to(page, "Train")
    expect(page.get_by_text("All 2 tasks at once: one shared backbone, a head per task")).to_be_visible(timeout=60_000)
    set_epochs(page, 1)
    wait_idle(page)
    loaded = time.perf_counter()
    page.get_by_role("button", name="Train", exact=True).click()
    wait_for_status(page, "finished", 180)
    trained = time.perf_counter()
    for task in ("colour", "shape"):  # one final figure per task, beside the overall one
        expect(page.get_by_text(f"Validation accuracy: {task}", exact=True)).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Validation accuracy by task").first).to_be_attached()  # the per-task curves

    go_to(page, "Evaluate")
    expect(page.get_by_text("Validation accuracy: shape", exact=True)).to_be_visible(timeout=60_000)
    expect(page.get_by_text(re.compile(r"Confusion matrix of colour")).first).to_be_attached(timeout=60_000)
    page.get_by_label("Task", exact=True).click()
    page.get_by_role("option", name="shape", exact=True).click()
    expect(page.get_by_text(re.compile(r"Confusion matrix of shape")).first).to_be_attached(timeout=60_000)
    expect(page.get_by_text(re.compile(r"validation images labelled for this task count"))).to_be_visible()
    assert_no_exception(page)
    print(f"\nupload and Train page {loaded - started:.1f} s, training {trained - loaded:.1f} s, "
          f"evaluation {time.perf_counter() - trained:.1f} s")
