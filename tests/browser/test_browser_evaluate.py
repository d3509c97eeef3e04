"""Mistakes you can click, in a real browser: a click on a confusion-matrix cell opens its images."""

import re
import time

import pytest

from tests.browser.browser_helpers import assert_no_exception, open_app, serve, sync_api

pytestmark = pytest.mark.browser

expect = sync_api.expect

# The centre of the fullest cell of the counts matrix, in page pixels, with its classes and count.
# The clickable markers (the chart's second trace) carry (true, predicted, count) per cell.
FULLEST_CELL = """plot => {
  const cells = plot.data[1].customdata;
  const [t, p, n] = cells.reduce((best, c) => (c[2] > best[2] ? c : best));
  const xa = plot._fullLayout.xaxis, ya = plot._fullLayout.yaxis, box = plot.getBoundingClientRect();
  return {x: box.left + xa._offset + xa.l2p(p), y: box.top + ya._offset + ya.l2p(t), t, p, n};
}"""


def untrained_run(data_dir) -> tuple[str, list[str]]:
    """A finished run on disk, as the command line leaves it, whose head never trained: it makes mistakes."""
    import torch

    from core import models
    from core.cli import OWNER
    from core.data import demo_dataset
    from core.runs import RunRecord, RunStore, new_run_id

    classes = list(demo_dataset("source").classes)
    store = RunStore(data_dir)
    record = store.create(RunRecord(
        id=new_run_id(), status="finished", created=time.time(), backbone=models.DEFAULT_BACKBONE,
        pretrained=True, classes=classes, config={"epochs": 1, "image_size": 64, "seed": 0}, owner=OWNER,
        dataset="Demo shapes (source look)"))
    torch.manual_seed(3)
    store.save_model(record.id, models.classifier(models.load(), len(classes), classes=classes, image_size=64))
    return record.id, classes


@pytest.fixture(scope="module")
def server_with_a_run(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("evaluate-data")
    run_id, classes = untrained_run(data_dir)
    for url in serve(tmp_path_factory, data_dir):
        yield url, run_id, classes


def test_a_click_on_a_confusion_matrix_cell_shows_the_images_behind_it(server_with_a_run, page):
    url, run_id, classes = server_with_a_run
    open_app(page, url)
    page.goto(f"{url}/evaluate?run={run_id}")
    counts = page.locator(".js-plotly-plot").filter(has_text="Confusion matrix (counts)")
    expect(counts).to_be_visible(timeout=120_000)
    expect(counts.locator(".nsewdrag").first).to_be_visible()  # plotly has laid the chart out
    cell = counts.evaluate(FULLEST_CELL)
    true, said, n = classes[cell["t"]], classes[cell["p"]], cell["n"]
    assert n > 0
    page.mouse.move(cell["x"], cell["y"])
    page.mouse.click(cell["x"], cell["y"])

    shown = min(n, 24)
    expect(page.get_by_text(re.compile(rf"^Showing {shown} of {n} "))).to_be_visible(timeout=120_000)
    captions = page.get_by_test_id("stImageCaption").filter(
        has_text=re.compile(rf"^{re.escape(true)} → {re.escape(said)} · \d+% sure · loss \d+\.\d\d$"))
    expect(captions).to_have_count(shown)
    # the click also set the pickers, so the keyboard path shows where one is
    expect(page.get_by_role("combobox", name="True class")).to_have_value(true)
    expect(page.get_by_role("combobox", name="Predicted class")).to_have_value(said)
    assert_no_exception(page)


# The centres of the counts matrix's empty cells, in page pixels (as FULLEST_CELL finds a cell).
ZERO_CELLS = """plot => {
  const xa = plot._fullLayout.xaxis, ya = plot._fullLayout.yaxis, box = plot.getBoundingClientRect();
  return plot.data[1].customdata.filter(c => c[2] === 0)
    .map(([t, p]) => ({x: box.left + xa._offset + xa.l2p(p), y: box.top + ya._offset + ya.l2p(t)}));
}"""


def colour(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"[\d.]+", text)[:3])


def test_zero_cells_of_the_confusion_matrix_stay_readable_in_dark_mode(server_with_a_run, browser):
    """A zero is a count like the others: its "0" must stand out from a dark page as from a light one."""
    import io

    from PIL import Image

    from tests.browser.browser_helpers import fresh_page

    url, run_id, _ = server_with_a_run
    for page in fresh_page(browser, color_scheme="dark"):
        open_app(page, url)
        page.goto(f"{url}/evaluate?run={run_id}")
        counts = page.locator(".js-plotly-plot").filter(has_text="Confusion matrix (counts)")
        expect(counts).to_be_visible(timeout=120_000)
        expect(counts.locator(".nsewdrag").first).to_be_visible()
        page.wait_for_timeout(500)  # plotly draws the cells' text after the axes
        background = colour(page.get_by_test_id("stApp").evaluate("el => getComputedStyle(el).backgroundColor"))
        assert sum(background) < 150, f"the page is not dark: {background}"
        zeros = counts.evaluate(ZERO_CELLS)
        assert zeros, "an untrained head leaves some cells empty"
        shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        for cell in zeros:
            x, y = round(cell["x"]), round(cell["y"])
            patch = shot.crop((x - 8, y - 8, x + 8, y + 8)).getdata()
            # the "0" in the cell: some of its pixels far from the page's colour
            contrast = max(sum(abs(a - b) for a, b in zip(pixel, background, strict=True)) for pixel in patch)
            assert contrast > 200, f"the zero at {cell} barely shows: {contrast}"
