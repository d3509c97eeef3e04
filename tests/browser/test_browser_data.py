"""Bringing images the way a class does, in a real browser: webcam bursts, single-image classes,
a new dataset of one's own, and every page at projector sizes.

Chromium's fake camera (`--use-fake-device-for-media-stream`) stands in for a webcam and its fake
permission prompt (`--use-fake-ui-for-media-stream`) says yes, so the Data page's burst camera gets frames.
"""

import re

import pytest

from tests.browser.browser_helpers import (
    assert_no_exception,
    chromium,
    click_until,
    fresh_page,
    go_to,
    new_context,
    open_app,
    set_epochs,
    set_text,
    sync_api,
    wait_for_status,
    wait_until_idle,
)

pytestmark = pytest.mark.browser

expect = sync_api.expect
PAGE_TITLES = {"Lessons", "Data", "Model", "Train", "Feature maps", "Saliency", "Microscope", "Domain shift", "Few-shot", "Evaluate",
               "Use the model"}


@pytest.fixture(scope="module")
def browser():
    """The shared Chromium (browser_helpers.chromium), with a fake webcam that needs no permission click."""
    yield from chromium("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


@pytest.fixture
def page(browser):
    yield from fresh_page(browser, permissions=["camera"])


# Records the text of every link the sidebar menu ever shows, from the first paint on.
RECORD_MENU = """
window.__menu = new Set();
new MutationObserver(() => {
  document.querySelectorAll('[data-testid=stSidebarNav] a').forEach(a => window.__menu.add(a.innerText.trim()));
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def test_the_first_page_after_a_start_never_lists_the_raw_files_of_pages(server, browser):
    """Runs first in this module, on a server nobody has opened yet."""
    context = new_context(browser)
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


# --- bringing one's own images ----------------------------------------------------------------------


def png(colour, variant: int, size: int = 40) -> bytes:
    """A small PNG, different for every (colour, variant)."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), colour)
    ImageDraw.Draw(img).rectangle((4 + variant, 6, 20 + 2 * variant, 30), fill=(255 - colour[0], 255, 255 - colour[2]))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def data_heading(page):
    return page.get_by_role("heading", name=re.compile(r": \d+ images in \d+ classes"))


# A widget only that source draws: the webcam and single images both have a "Class name" box, so
# an idle check alone, passed before the click's rerun began on a busy machine, let a name be typed
# into the old source's box just before the rerun replaced it.
SOURCE_READY = {"Webcam": lambda page: page.get_by_label("Frames to record", exact=True),
                "Single images": lambda page: page.get_by_test_id("stFileUploader")}


def choose_source(page, name: str):
    # the page's first run on a busy machine can take a while after its title shows
    option = page.get_by_test_id("stRadio").filter(has_text="Bring images from").get_by_text(name, exact=True)
    option.click(timeout=90_000)
    expect(SOURCE_READY[name](page)).to_be_visible(timeout=60_000)
    wait_until_idle(page)


def add_single_images(page, class_name: str, files: dict[str, bytes], added: int | None = None):
    # set_text returns once the name's rerun has ended: files picked in the middle of it were lost
    # on a busy CI machine (the Add button never came)
    set_text(page, "Class name", class_name)
    page.locator("[data-testid=stFileUploader] input[type=file]").set_input_files(
        [{"name": name, "mimeType": "image/png", "buffer": payload} for name, payload in files.items()])
    n = len(files)
    add = page.get_by_role("button", name=f"Add {n} image{'s' if n != 1 else ''} to '{class_name}'")
    expect(add).to_be_enabled(timeout=90_000)
    wait_until_idle(page)
    add.click()
    added = n if added is None else added
    expect(page.get_by_text(re.compile(rf"Added {added} images? to '{re.escape(class_name)}'")).first).to_be_visible(
        timeout=30_000)


def thumbnails(page):
    return page.get_by_test_id("stImageCaption").filter(has_text=re.compile(r"^frame \d+$"))


def record_burst(page, class_name: str, frames: int, seconds: int = 1):
    """One click on the burst button records every frame (no click per frame)."""
    set_text(page, "Class name", class_name)
    set_text(page, "Frames to record", str(frames))
    set_text(page, "Over (seconds)", str(seconds))
    wait_until_idle(page)
    record = page.get_by_role("button", name=f"Record {frames} frames over {seconds} s")
    # enabled once the class has a name and the fake camera's stream plays
    expect(record).to_be_enabled(timeout=30_000)
    record.click()
    expect(page.get_by_test_id("stProgress")).to_contain_text(f"{frames} / {frames} frames recorded", timeout=60_000)
    expect(thumbnails(page)).to_have_count(frames)
    wait_until_idle(page)


def preview_of(page, class_name: str):
    """The file names shown under a class's preview thumbnails."""
    heading = page.get_by_test_id("stMarkdown").filter(has_text=re.compile(rf"^{re.escape(class_name)} \(\d+\)$"))
    row = heading.locator("xpath=ancestor::*[@data-testid='stElementContainer'][1]/following-sibling::*[1]")
    return row.get_by_test_id("stImageCaption")


def test_two_classes_of_single_images_in_a_row_each_hold_exactly_their_own_files(server, page):
    open_app(page, server)
    choose_source(page, "Single images")
    apples = {f"apple-{i}.png": png((200, 30, 30), i) for i in range(3)}
    berries = {f"berry-{i}.png": png((40, 40, 200), i) for i in range(2)}
    add_single_images(page, "apple", apples)
    add_single_images(page, "berry", berries)
    expect(data_heading(page)).to_have_text("Your images (apple, berry): 5 images in 2 classes")
    expect(preview_of(page, "apple")).to_have_text(sorted(apples))
    expect(preview_of(page, "berry")).to_have_text(sorted(berries))
    # the same photo offered for a third class is refused, with a warning that names its class
    add_single_images(page, "cherry", {"apple-0.png": apples["apple-0.png"], "cherry.png": png((90, 0, 40), 1)}, added=1)
    expect(page.get_by_text("'apple-0.png' is already in class 'apple'")).to_be_visible()
    expect(data_heading(page)).to_have_text("Your images (apple, berry, cherry): 6 images in 3 classes")
    assert_no_exception(page)


def test_a_class_named_like_markup_shows_as_typed_on_the_counts_chart(server, page):
    """Plotly reads <b>, <br> and entities in tick labels: a class name must reach it escaped."""
    open_app(page, server)
    choose_source(page, "Single images")
    add_single_images(page, "<b>bold</b>", {f"b-{i}.png": png((10, 160, 90), i) for i in range(2)})
    expect(data_heading(page)).to_have_text("Your images (<b>bold</b>): 2 images in 1 classes")
    ticks = page.locator(".js-plotly-plot .ytick text")
    expect(ticks).to_have_text(["<b>bold</b>"], timeout=30_000)
    # markup read as markup would have made a bold tspan out of "bold"
    expect(page.locator(".js-plotly-plot .ytick tspan")).to_have_count(0)
    assert_no_exception(page)


def test_a_webcam_burst_fills_a_class_with_n_frames(server, page):
    open_app(page, server)
    choose_source(page, "Webcam")
    record_burst(page, "wave", 6, seconds=2)
    # one frame removed, then the rest added: the class holds exactly what the thumbnails showed
    page.get_by_role("button", name="Remove").nth(1).click()  # frame 2 goes
    expect(thumbnails(page)).to_have_text([f"frame {i}" for i in range(1, 6)])
    wait_until_idle(page)
    # a double click on Add adds the frames once
    page.get_by_role("button", name="Add 5 frames to 'wave'").dblclick()
    expect(page.get_by_text("Added 5 images to 'wave': it now holds 5. (a new dataset)").first).to_be_visible(
        timeout=30_000)
    expect(data_heading(page)).to_have_text("Your images (wave): 5 images in 1 classes")
    wait_until_idle(page)
    expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)
    expect(data_heading(page)).to_have_text("Your images (wave): 5 images in 1 classes")
    assert_no_exception(page)


def test_two_webcam_classes_and_one_of_single_images_train_on_a_new_dataset_without_the_demo(server, page):
    open_app(page, server)
    choose_source(page, "Webcam")
    for class_name in ("left", "right"):
        record_burst(page, class_name, 5)
        page.get_by_role("button", name=f"Add 5 frames to '{class_name}'").click()
        expect(page.get_by_text(re.compile(rf"Added 5 images to '{class_name}'")).first).to_be_visible(timeout=30_000)
    choose_source(page, "Single images")
    add_single_images(page, "mug", {f"mug-{i}.png": png((120, 80, 20), i) for i in range(5)})
    expect(data_heading(page)).to_have_text("Your images (left, right, mug): 15 images in 3 classes")
    go_to(page, "Train")
    set_epochs(page, 1)
    page.get_by_role("button", name="Train", exact=True).click()
    wait_for_status(page, "finished")
    expect(page.get_by_text("Validation accuracy", exact=True)).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("stSidebar")).to_contain_text("Data: Your images (left, right, mug) — 15 images, 3 classes")
    assert_no_exception(page)


# --- projector sizes ----------------------------------------------------------------------------

# What does not fit: the page scrolling sideways, an element whose content runs past the window,
# and metric values or widget labels cut short (their text wider than their box).
OVERFLOW = """() => {
  const width = window.innerWidth;
  const problems = [];
  const main = document.querySelector('[data-testid=stMain]');
  if (main && main.scrollWidth > main.clientWidth + 1) problems.push(`main scrolls sideways: ${main.scrollWidth} > ${main.clientWidth}`);
  const describe = el => `${el.dataset.testid || el.tagName}: "${(el.innerText || '').slice(0, 60)}"`;
  for (const el of main.querySelectorAll('[data-testid]')) {
    if (el.closest('[data-testid=stDataFrame], .js-plotly-plot, [data-testid=stExpanderDetails][hidden]')) continue;
    const box = el.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 1) problems.push(`wider than the window (${Math.round(box.right)} > ${width}): ${describe(el)}`);
  }
  for (const el of main.querySelectorAll('*')) {
    if (el.closest('[data-testid=stDataFrame], .js-plotly-plot') || !el.innerText) continue;
    const style = getComputedStyle(el);
    const clips = style.textOverflow === 'ellipsis' || style.overflowX === 'hidden' || style.overflowX === 'clip';
    if (clips && el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1) problems.push(`cut short: ${describe(el)}`);
  }
  // a chart's title is SVG text: cut when it runs past the chart's own box
  for (const plot of main.querySelectorAll('.js-plotly-plot')) {
    const frame = plot.getBoundingClientRect();
    for (const title of plot.querySelectorAll('.gtitle')) {
      const box = title.getBoundingClientRect();
      if (box.left < frame.left - 1 || box.right > frame.right + 1) problems.push(`chart title cut: "${title.textContent.slice(0, 60)}"`);
    }
  }
  return problems;
}"""


# What a box shows only in part, at any depth: text that a box hiding its overflow cuts (a metric's
# label or value, a button, a widget's label or the value of a select), an input whose value is
# wider than it or that shows nothing, and a table's header cut by the next column. A table is
# drawn on a canvas, so HEADERS (run before the page's own scripts) records where each header's
# text is drawn and how wide it is.
CUT = r"""() => {
  const problems = [];
  const main = document.querySelector('[data-testid=stMain]');
  const describe = el => (el.closest('[data-testid]')?.dataset.testid || el.tagName);
  const skip = '[data-testid=stDataFrame], .js-plotly-plot, [data-testid=stExpanderDetails][hidden], [data-testid=stCode]';
  const shown = el => { const b = el.getBoundingClientRect(); return b.width > 0 && b.height > 0 && getComputedStyle(el).visibility !== 'hidden'; };
  // text that a box which hides its overflow (or ends it with "…") does not show whole
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  while (walker.nextNode()) {
    const node = walker.currentNode, text = node.textContent.trim(), el = node.parentElement;
    if (!text || el.closest(skip) || !shown(el)) continue;
    range.selectNodeContents(node);
    const r = range.getBoundingClientRect();
    if (r.width === 0) continue;
    for (let a = el; a && a !== main; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (!['hidden', 'clip'].includes(s.overflowX) && s.textOverflow !== 'ellipsis') continue;
      const b = a.getBoundingClientRect();
      if (r.right > b.right + 1 || r.left < b.left - 1) { problems.push(`cut: "${text.slice(0, 60)}" (${describe(el)})`); break; }
    }
  }
  // inputs: a value wider than its box, or a box that shows nothing
  for (const input of main.querySelectorAll('input:not([type=file]):not([type=hidden]):not([type=checkbox]):not([type=radio])')) {
    if (!shown(input) || input.closest(skip)) continue;
    const label = input.getAttribute('aria-label') || input.closest('[data-testid]')?.innerText.split('\n')[0] || '';
    if (input.scrollWidth > input.clientWidth + 1) problems.push(`input cut: ${label} = "${input.value}"`);
    const select = input.closest('[data-testid=stSelectbox]');
    if (input.type === 'number' && input.value === '') problems.push(`input empty: ${label}`);
    if (select && input.value === '' && !input.placeholder) problems.push(`select empty: ${label}`);
  }
  // table headers, drawn on a canvas (recorded by the page's init script)
  for (const [canvas, drawn] of (window.__headers || new Map())) {
    if (!canvas.isConnected || !shown(canvas) || canvas.clientHeight > 60) continue;
    const cells = [...drawn.values()].sort((p, q) => p.x - q.x);
    cells.forEach((cell, i) => {
      const end = i + 1 < cells.length ? cells[i + 1].x : canvas.clientWidth;
      if (cell.text.endsWith('…') || cell.x + cell.w > end - 2) problems.push(`table header cut: "${cell.text}"`);
    });
  }
  return problems;
}"""
HEADERS = r"""(() => {
  const fill = CanvasRenderingContext2D.prototype.fillText;
  window.__headers = new Map();
  CanvasRenderingContext2D.prototype.fillText = function (text, x, y, ...rest) {
    const canvas = this.canvas;
    if (canvas.clientHeight && canvas.clientHeight <= 60) {
      const t = this.getTransform(), ratio = canvas.width / canvas.clientWidth || 1;
      if (!window.__headers.has(canvas)) window.__headers.set(canvas, new Map());
      window.__headers.get(canvas).set(String(text),
        {text: String(text), x: (t.a * x + t.e) / ratio, w: this.measureText(String(text)).width * t.a / ratio});
    }
    return fill.call(this, text, x, y, ...rest);
  };
})();"""


def open_sidebar(page):
    """Unfold the sidebar whichever way the window left it (a narrow one may fold it), and wait for its menu."""
    nav = page.get_by_test_id("stSidebarNav")
    expand = page.get_by_test_id("stExpandSidebarButton")
    # drawn, open or folded: a folded sidebar keeps its menu in the page, hidden, so look only at
    # what is visible (the first match alone could be the hidden menu)
    expect(nav.or_(expand).filter(visible=True).first).to_be_visible(timeout=30_000)
    try:  # the page is drawn: a folded sidebar shows its expand button at once
        expect(expand).to_be_visible(timeout=2_000)
    except AssertionError:
        pass  # open
    else:
        expand.click()
    expect(nav).to_be_visible()


def expand_sidebar(page):
    """Unfold the sidebar that close_sidebar folded."""
    page.get_by_test_id("stExpandSidebarButton").click()
    expect(page.get_by_test_id("stSidebarNav")).to_be_visible()


def close_sidebar(page):
    page.get_by_test_id("stSidebar").hover()
    page.get_by_test_id("stSidebarCollapseButton").locator("button").click()
    expect(page.get_by_test_id("stSidebarNav")).not_to_be_visible()


def train_one_demo_epoch(page, server):
    """Open the app and train the demo set for one epoch, to the run's "finished"."""
    open_app(page, server)
    wait_until_idle(page)
    go_to(page, "Train")
    set_epochs(page, 1)
    page.get_by_role("button", name="Train", exact=True).click()
    wait_for_status(page, "finished")


def fits(page) -> list[str]:
    """What overflows its box on the page once it is drawn (OVERFLOW's findings)."""
    wait_until_idle(page)
    page.wait_for_timeout(500)  # plotly lays its charts out after the script run
    return page.evaluate(OVERFLOW)


def menu_pages(page) -> list[str]:
    """Every page the sidebar's menu lists, in its order."""
    # each link reads "icon name\nPage name": the icon is a ligature of the Material font
    return [text.split("\n")[-1].strip() for text in page.get_by_test_id("stSidebarNavLink").all_inner_texts()]


def cut_on_page(page) -> list[str]:
    """OVERFLOW's and CUT's findings, once every table on the page has been drawn."""
    wait_until_idle(page)
    page.evaluate("() => document.querySelectorAll('[data-testid=stMain] [data-testid=stDataFrame]')"
                  ".forEach(table => table.scrollIntoView())")  # a table draws itself once in view
    page.wait_for_timeout(500)
    return fits(page) + page.evaluate(CUT)


@pytest.mark.parametrize("size", [(1024, 768), (800, 600)])
def test_every_page_fits_a_projector_after_a_demo_run(server, page, size):
    """Every page of the menu, as the app leaves the sidebar: nothing cut or empty, and below 900 px
    the sidebar narrows to leave the page room."""
    page.context.add_init_script(HEADERS)
    train_one_demo_epoch(page, server)
    # the run in the Compare table too: its headers ("val loss") were cut even at 1400 px
    table = page.get_by_test_id("stDataFrame").first
    for _ in range(3):  # a rerun that lands while the menu is open redraws it under the click
        wait_until_idle(page)
        page.get_by_role("combobox", name="Runs to overlay").click()
        try:
            page.get_by_role("option").first.click(timeout=20_000)
        except sync_api.TimeoutError:
            pass
        page.keyboard.press("Escape")
        try:
            expect(table).to_be_visible(timeout=30_000)
            break
        except AssertionError:
            pass
    expect(table).to_be_visible(timeout=30_000)
    page.set_viewport_size({"width": size[0], "height": size[1]})
    open_sidebar(page)
    sidebar = page.get_by_test_id("stSidebar").bounding_box()["width"]
    assert sidebar <= (200 if size[0] < 900 else 300), sidebar
    names = menu_pages(page)
    assert {"Lessons", "Few-shot", "Domain shift", "Train"} <= set(names), names
    problems = {}
    for name in names:
        go_to(page, name)
        found = cut_on_page(page)
        if found:
            problems[name] = found
        assert_no_exception(page)
    assert not problems, "\n".join(f"{name}: {p}" for name, found in problems.items() for p in found)


# How big each feature-map heatmap is drawn, and its colour bar (SVG boxes, in CSS pixels).
HEATMAP_SIZES = """() => [...document.querySelectorAll('[data-testid=stMain] .js-plotly-plot')]
  .filter(plot => plot.querySelector('.hm image'))
  .map(plot => {
    const size = el => { const b = el ? el.getBoundingClientRect() : {width: 0, height: 0}; return [Math.round(b.width), Math.round(b.height)]; };
    return {title: plot.querySelector('.gtitle')?.textContent || '', chart: size(plot), map: size(plot.querySelector('.hm image')),
            bar: size(plot.querySelector('.colorbar'))};
  })"""


def test_analysis_pages_fit_a_projector_after_computing_on_them(server, page):
    """Saliency with its sanity check, Domain shift with an analysis and a DAN comparison, and
    Feature maps' tiles, after a demo run: readable at 1024×768 beside the sidebar, usable at 800×600."""
    train_one_demo_epoch(page, server)

    sanity_done = page.get_by_text("Re-initialising BatchNorm resets its running statistics")
    go_to(page, "Saliency")
    expect(page.get_by_role("heading", name="fine-tuned")).to_be_visible(timeout=120_000)
    wait_until_idle(page)  # the maps are still being drawn: a click in the middle of that run is lost
    page.get_by_text("Sanity check: does the map depend").click()
    # started: its progress bar, or already its result
    started = page.get_by_test_id("stProgress").filter(has_text="Sanity check").or_(sanity_done)
    click_until(page, page.get_by_role("button", name="Run the sanity check"), started.first)
    expect(sanity_done).to_be_visible(timeout=300_000)

    dan_done = page.get_by_test_id("stMetricLabel").filter(has_text="Source val accuracy").first
    go_to(page, "Domain shift")
    expect(page.get_by_test_id("stMetricLabel").filter(has_text="MMD² (unbiased)")).to_be_visible(timeout=300_000)
    set_text(page, "Epochs", "1")
    page.get_by_role("button", name="Train plain and DAN").click()
    expect(dan_done).to_be_visible(timeout=300_000)

    problems = {}
    for (width, height), sidebar in [((1024, 768), "open"), ((800, 600), "closed")]:
        page.set_viewport_size({"width": width, "height": height})
        for name in ("Saliency", "Domain shift"):
            open_sidebar(page)
            go_to(page, name)
            if sidebar == "closed":
                close_sidebar(page)
            if name == "Saliency":
                page.get_by_text("Sanity check: does the map depend").click()
                expect(sanity_done).to_be_visible(timeout=120_000)
            else:
                expect(dan_done).to_be_visible(timeout=120_000)
            found = fits(page)
            if found:
                problems[f"{name} at {width}×{height}"] = found
            assert_no_exception(page)
    assert not problems, "\n".join(f"{name}: {p}" for name, found in problems.items() for p in found)

    # Feature maps at 1024×768 beside the sidebar: each map big enough to tell its 16 tiles apart,
    # not squeezed beside a colour bar
    page.set_viewport_size({"width": 1024, "height": 768})
    open_sidebar(page)
    go_to(page, "Feature maps")
    expect(page.locator("[data-testid=stMain] .js-plotly-plot .hm image")).to_have_count(3, timeout=120_000)
    wait_until_idle(page)
    page.wait_for_timeout(500)
    maps = page.evaluate(HEATMAP_SIZES)
    print(maps)
    assert len(maps) == 3, maps
    for m in maps:
        assert min(m["map"]) >= 150, m  # 4 × 4 tiles of at least ~37 px each
        assert m["map"][0] >= 0.6 * m["chart"][0], m  # the map, not its colour bar, fills the chart


# Every chart's tick labels: two of one axis drawn over each other (a log axis's labels did on
# Feature maps), or one that runs past its chart's box. Each label is measured along its own
# direction, so labels plotly slants past each other do not count as overlapping.
TICKS = r"""() => {
  const problems = [];
  const hidden = (el, plot) => {
    for (let a = el; a && a !== plot; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (s.display === 'none' || s.visibility === 'hidden' || s.opacity === '0') return true;
    }
    return false;
  };
  for (const plot of document.querySelectorAll('[data-testid=stMain] .js-plotly-plot')) {
    const frame = plot.getBoundingClientRect();
    const chart = plot.querySelector('.gtitle')?.textContent || 'untitled chart';
    const labels = [...plot.querySelectorAll('.xtick text, .ytick text')]
      .filter(t => t.textContent.trim() && !hidden(t, plot))
      .map(t => {
        const box = t.getBoundingClientRect(), local = t.getBBox(), m = t.getCTM();
        return {text: t.textContent, axis: t.parentElement.parentElement, box, w: local.width, h: local.height,
                angle: Math.atan2(m.b, m.a), x: box.left + box.width / 2, y: box.top + box.height / 2};
      })
      .filter(l => l.box.width > 0);
    for (const l of labels) {
      const b = l.box;
      if (b.left < frame.left - 1 || b.right > frame.right + 1 || b.top < frame.top - 1 || b.bottom > frame.bottom + 1)
        problems.push(`tick label cut by its chart: "${l.text}" (${chart})`);
    }
    labels.forEach((a, i) => labels.slice(i + 1).forEach(b => {
      if (a.axis !== b.axis || Math.abs(a.angle - b.angle) > 0.01) return;
      const ux = Math.cos(a.angle), uy = Math.sin(a.angle), dx = b.x - a.x, dy = b.y - a.y;
      const along = Math.abs(dx * ux + dy * uy), across = Math.abs(dy * ux - dx * uy);
      if (along < (a.w + b.w) / 2 - 1 && across < (a.h + b.h) / 2 - 1)
        problems.push(`tick labels overlap: "${a.text}" and "${b.text}" (${chart})`);
    }));
  }
  return problems;
}"""
PROJECTOR_SIZES = [(1024, 768), (800, 600)]


def at_projector_sizes(page, measure) -> dict[str, list[str]]:
    """``measure(page)``'s findings at each projector size, the sidebar open, for the page on screen."""
    problems = {}
    for width, height in PROJECTOR_SIZES:
        page.set_viewport_size({"width": width, "height": height})
        open_sidebar(page)
        found = measure(page)
        if found:
            problems[f"{width}×{height}"] = found
        assert_no_exception(page)
    page.set_viewport_size({"width": 1400, "height": 1000})
    return problems


def charts_fit(page) -> list[str]:
    """OVERFLOW's and TICKS' findings, once plotly has laid out the charts."""
    return fits(page) + page.evaluate(TICKS)


def test_a_lessons_table_webcam_frames_and_feature_map_axes_fit_a_projector(server, page):
    """What the walk over every page does not reach: a lesson's result table (its header "train_lo…"
    was cut), the webcam frames' Remove buttons (down to "× R") and the tick labels of Feature maps'
    log axis (drawn over each other), each at 1024×768 and 800×600."""
    page.context.add_init_script(HEADERS)
    problems = {}

    train_one_demo_epoch(page, server)
    go_to(page, "Feature maps")
    # the depth charts, drawn together (the heatmaps above them have no tick labels)
    expect(page.locator("[data-testid=stMain] .js-plotly-plot .ytick text").first).to_be_visible(timeout=120_000)
    for size, found in at_projector_sizes(page, charts_fit).items():
        problems[f"Feature maps at {size}"] = found

    # lesson 2: a table of runs, and the quickest to show one (three short runs at 64 px, about 20 s)
    go_to(page, "Lessons")
    lesson = page.get_by_test_id("stRadio").get_by_text(re.compile(r"^2\. "))
    lesson.click()
    expect(page.get_by_role("heading", name=re.compile(r"^2\. "))).to_be_visible(timeout=30_000)
    wait_until_idle(page)
    page.get_by_role("button", name="Run this experiment").click()
    outcome = page.get_by_text(re.compile(r"^Outcome: (as expected|not as expected)\.$|^The experiment did not finish"))
    expect(outcome).to_be_visible(timeout=300_000)
    assert outcome.inner_text().startswith("Outcome: "), outcome.inner_text()
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=30_000)
    for size, found in at_projector_sizes(page, cut_on_page).items():
        problems[f"Lessons at {size}"] = found

    go_to(page, "Data")
    choose_source(page, "Webcam")
    record_burst(page, "wave", 6)
    expect(page.get_by_role("button", name="Remove")).to_have_count(6)
    for size, found in at_projector_sizes(page, cut_on_page).items():
        problems[f"Data with webcam frames at {size}"] = found
    assert not problems, "\n".join(f"{where}: {p}" for where, found in problems.items() for p in found)
