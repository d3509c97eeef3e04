"""Medical images in a real browser: a ZIP of two classes of synthetic 12-bit DICOMs is loaded on the
Data page (with its window control), trained end to end, and looked at on Feature maps and Saliency
through the same window; the patient's name inside the files is found nowhere afterwards."""

import io
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from core import data
from tests.browser.browser_helpers import (
    assert_no_exception,
    go_to,
    open_app,
    serve,
    set_epochs,
    sync_api,
    upload_zip,
    wait_for_status,
    wait_idle,
)
from tests.toys import DICOM_PATIENT, dicom_zip

pytestmark = pytest.mark.browser

expect = sync_api.expect
SECRETS = (DICOM_PATIENT, DICOM_PATIENT.split("^")[0], "ID-" + DICOM_PATIENT, "Hospital of")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app and the data folder it keeps its runs in."""
    data_dir = tmp_path_factory.mktemp("dicom-server-data")
    server = serve(tmp_path_factory, data_dir)
    yield next(server), data_dir
    next(server, None)


def no_secret_in(blob: bytes | str, where: str) -> None:
    blob = blob if isinstance(blob, bytes) else blob.encode()
    for secret in SECRETS:
        assert secret.encode() not in blob, f"{secret!r} found in {where}"


def shown_image(page, url: str, caption: str) -> np.ndarray:
    """The pixels of the image the page shows above ``caption``, as the browser fetched them."""
    figure = page.get_by_test_id("stImage").filter(has_text=caption).first
    expect(figure).to_be_visible(timeout=60_000)
    src = figure.locator("img").get_attribute("src")
    body = page.request.get(src if src.startswith("http") else url + src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(float)


def test_a_zip_of_12_bit_dicoms_trains_end_to_end_and_every_page_sees_it_through_its_window(served, page, tmp_path):
    url, data_dir = served
    archive = dicom_zip(per_class=8)
    open_app(page, url)
    option = page.get_by_test_id("stRadio").filter(has_text="Bring images from").get_by_text(
        "ZIP of class folders", exact=True)
    expect(option).to_be_visible(timeout=90_000)
    option.click()
    page.get_by_test_id("stFileUploaderDropzoneInput").wait_for(state="attached", timeout=60_000)
    upload_zip(page, "scans.zip", archive)
    expect(page.get_by_role("heading", name="scans.zip: 16 images in 2 classes")).to_be_visible(timeout=60_000)
    # the uploader lets go of the archive (its headers name the patient) once its pixels are in
    expect(page.get_by_test_id("stFileChipName").filter(has_text="scans.zip")).to_have_count(0, timeout=60_000)
    expect(page.get_by_role("heading", name="Window (images of more than 8 bits)")).to_be_visible()
    expect(page.get_by_text(re.compile(r"16 DICOM file\(s\) \(CR ×16\): only their pixels"))).to_be_visible()
    expect(page.get_by_text("Window centre")).to_be_visible()
    expect(page.get_by_role("button", name="Use this window")).to_be_visible()
    wait_idle(page)
    page.set_viewport_size({"width": 1400, "height": 1500})
    page.get_by_role("heading", name="scans.zip: 16 images in 2 classes").evaluate("e => e.scrollIntoView()")
    page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / "data-page-dicom-window.png"))
    print(f"\nscreenshot: {tmp_path / 'data-page-dicom-window.png'}")
    page.set_viewport_size({"width": 1400, "height": 1000})
    no_secret_in(page.content(), "the Data page")

    go_to(page, "Train")
    set_epochs(page, 1)
    wait_idle(page)
    page.get_by_role("button", name="Train", exact=True).click()
    wait_for_status(page, "finished", 240)
    no_secret_in(page.content(), "the Train page")

    # Feature maps shows the dataset's first image exactly as the Data page's window makes it
    expected_ds, _ = data.load_zip(archive)
    expected = np.asarray(expected_ds[0][0]).astype(float)
    go_to(page, "Feature maps")
    seen = shown_image(page, url, expected_ds.names[0])
    assert seen.shape == expected.shape
    assert np.abs(seen - expected).mean() < 6  # JPEG on the way to the browser, nothing more
    assert seen.max() > 200 and seen.min() < 50  # full contrast, not 17 grey levels near black
    assert_no_exception(page)
    no_secret_in(page.content(), "the Feature maps page")

    go_to(page, "Saliency")
    expect(page.get_by_role("heading", name="fine-tuned")).to_be_visible(timeout=120_000)
    expect(page.get_by_test_id("stImage").filter(has_text="Grad-CAM").first).to_be_visible(timeout=120_000)
    assert_no_exception(page)
    no_secret_in(page.content(), "the Saliency page")

    go_to(page, "Use the model")
    page.get_by_role("button", name=re.compile("Export as safetensors")).click()
    download_button = page.get_by_role("button", name=re.compile("Download the safetensors"))
    expect(download_button).to_be_visible(timeout=120_000)
    with page.expect_download() as download:
        download_button.click()
    bundle = open(download.value.path(), "rb").read()
    no_secret_in(bundle, "the export")
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        for name in zf.namelist():
            no_secret_in(zf.read(name), f"the export's {name}")

    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "run.json" for p in files)
    for path in files:
        no_secret_in(path.read_bytes(), str(path.relative_to(data_dir)))
