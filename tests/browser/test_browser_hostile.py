"""Text stays text: every page walked with a hostile ZIP, a hostile labels.csv and a hostile link shows
each name as typed. No link, image, bold, maths or coloured span is made from user text, and no
request leaves the machine (a Markdown image in a name would make the browser fetch it)."""

import csv
import io
import zipfile

import pytest

from tests.browser.browser_helpers import (
    assert_no_exception,
    go_to,
    set_epochs,
    sync_api,
    upload_zip,
    wait_for_status,
    wait_idle,
)

pytestmark = pytest.mark.browser

expect = sync_api.expect
OUTSIDE = "http://zqhost.invalid"  # never resolvable; a request to it is a request that left

# ZIP folder names cannot hold "/", so the URLs are in labels.csv and the link
FOLDERS = ["**zqbold**", "_zqem_", "~~zqdel~~", ":red[zqred]", "$zqmath^2$", "www.zqexample.org",
           "zq@zqexample.org", "<zqtag>", "`zqcode`", "# zqhead", "x\u202ezqtxt.exe", "c\u0430t zq", "cat zq"]
LABELS = [f"[zqlink]({OUTSIDE}/phish)", f"![zqimg]({OUTSIDE}/t.png)", ":blue[zqblue]", "**zqbold**"]
LINK = (f"/?strategy=[zqlink]({OUTSIDE}/phish)&kernel=![zqimg]({OUTSIDE}/k.png)&epochs=:red[zqred]"
        f"&{'zq' * 5000}=1")
# what an element's whole text would be if Markdown had been applied to the name around it
FORMATTED = ["zqbold", "zqem", "zqdel", "zqred", "zqblue", "zqcode", "zqhead", "zqtag"]

FIND_MARKUP = """(formatted) => {
  const found = [];
  const sel = 'a, img, strong, b, em, i, del, s, code, h1, h2, h3, h4, h5, h6, .katex, [style*="color"], [class*="olor"]';
  for (const el of document.querySelectorAll(sel)) {
    const text = (el.textContent || '').trim();
    // a heading's own anchor (href="#its-text") is Streamlit's, on this page: not a link made from the text
    const href = (el.getAttribute('href') || '').startsWith('#') ? '' : (el.getAttribute('href') || '');
    const attrs = [href, el.getAttribute('src') || '', el.getAttribute('alt') || ''].join(' ');
    if (attrs.includes('zq')) found.push(`${el.tagName} ${attrs.slice(0, 80)}`);
    else if (el.matches('a:not([href^="#"]), img, .katex') && text.includes('zq')) found.push(`${el.tagName} ${text.slice(0, 80)}`);
    else if (formatted.includes(text)) found.push(`${el.tagName} ${text}`);
  }
  return found;
}"""


def png(k: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 24), ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256)).save(buf, "PNG")
    return buf.getvalue()


def hostile_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c, folder in enumerate(FOLDERS):
            for i in range(3):
                zf.writestr(f"{folder}/{i}.png", png(c * 3 + i))
    return buf.getvalue()


def hostile_labels_zip() -> bytes:
    buf, text = io.BytesIO(), io.StringIO()
    rows = [["path", "**zqtask**", "kind"]]
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(12):
            zf.writestr(f"img/{i}.png", png(i))
            rows.append([f"img/{i}.png", LABELS[i % len(LABELS)], ("x\u202ezqtxt.exe", "plain")[i % 2]])
        csv.writer(text).writerows(rows)
        zf.writestr("labels.csv", text.getvalue())
    return buf.getvalue()


PAGES = ["Data", "Model", "Train", "Evaluate", "Use the model", "Feature maps", "Saliency", "Domain shift",
         "Few-shot", "Lessons"]


def check(page, where: str, left: list[str]):
    wait_idle(page, 90)
    page.wait_for_timeout(500)
    assert_no_exception(page)
    markup = page.evaluate(FIND_MARKUP, FORMATTED)
    assert not markup, f"{where}: elements made from user text: {markup}"
    assert not left, f"{where}: requests left the machine: {left}"


def walk(page, left, why: str):
    for name in PAGES:
        go_to(page, name)
        check(page, f"{name} ({why})", left)


def choose_zip_source(page):
    option = page.get_by_test_id("stRadio").filter(has_text="Bring images from").get_by_text(
        "ZIP of class folders", exact=True)
    expect(option).to_be_visible(timeout=90_000)
    option.click()
    page.get_by_test_id("stFileUploaderDropzoneInput").wait_for(state="attached", timeout=60_000)


def test_no_page_makes_markup_from_user_text_or_fetches_what_it_names(server, page):
    left: list[str] = []
    page.on("request", lambda r: left.append(r.url) if not r.url.startswith((server, "data:", "blob:")) else None)
    page.goto(server + LINK)
    page.get_by_role("heading", name="Data").wait_for(timeout=60_000)
    expect(page.get_by_text("Some of this link's settings were not used")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("[zqlink](http", exact=False).first).to_be_visible()  # as typed, not a link
    expect(page.get_by_text("zq" * 20 + "…", exact=False).first).to_be_visible()  # cut, not 10,000 characters
    check(page, "the hostile link", left)

    choose_zip_source(page)
    upload_zip(page, "**zqbold**.zip", hostile_zip())
    expect(page.get_by_text("look alike but are written with different characters").first).to_be_attached(
        timeout=60_000)
    expect(page.get_by_text("xzqtxt.exe").first).to_be_attached()  # the override is gone, not obeyed
    check(page, "Data, after the hostile ZIP", left)

    go_to(page, "Train")
    set_epochs(page, 1)
    wait_idle(page)
    page.get_by_role("button", name="Train", exact=True).click()
    wait_for_status(page, "finished", 240)
    walk(page, left, "hostile class names, one run")

    go_to(page, "Data")
    choose_zip_source(page)
    upload_zip(page, "tasks.zip", hostile_labels_zip())
    expect(page.get_by_text("images labelled for 2 tasks", exact=False).first).to_be_visible(timeout=60_000)
    walk(page, left, "hostile labels.csv")
