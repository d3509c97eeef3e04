"""Specification of DICOM reading: scanners' files in, pixels kept exactly, patient data never kept."""

import io
import logging
import pickle
import warnings
import zipfile

import numpy as np
import pytest

from core.data import LoadReport, add_images, limits, load_images, load_zip, read_image
from core.data.datasets import ImageDataset
from core.errors import DataError
from tests.toys import DICOM_PATIENT, dicom_bytes, dicom_zip, twelve_bit_scan

SCAN = twelve_bit_scan(0, 1)


def zipped(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in entries:
            zf.writestr(name, payload)
    return buf.getvalue()


def good(n=2):
    return [(f"{c}/{i}.dcm", dicom_bytes(twelve_bit_scan(k, 10 * k + i))) for k, c in enumerate("ab") for i in range(n)]


def values(payload, name="x.dcm"):
    img = read_image(payload, name)
    return img.mode, np.asarray(img)


def test_pixels_go_through_the_rescale_slope_and_intercept():
    mode, hu = values(dicom_bytes(SCAN, modality="CT", rescale=(2, -1024)))
    assert mode == "F" and np.array_equal(hu, SCAN * 2.0 - 1024)


def test_the_headers_window_is_applied_when_present():
    mode, seen = values(dicom_bytes(SCAN, window=(1000, 400)))
    assert mode == "F"
    assert (seen[SCAN <= 800] == seen.min()).all() and (seen[SCAN >= 1200] == seen.max()).all()
    inside = (SCAN > 850) & (SCAN < 1150)
    assert np.corrcoef(seen[inside], SCAN[inside])[0, 1] > 0.99  # linear inside the window


def test_monochrome1_is_inverted_so_bright_stays_bright():
    _, plain = values(dicom_bytes(SCAN))
    _, inverted = values(dicom_bytes(SCAN, photometric="MONOCHROME1"))
    assert np.array_equal(inverted, 4095 - plain)


def test_rgb_dicoms_stay_rgb_and_8_bit_grayscale_ones_unchanged():
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    mode, seen = values(dicom_bytes(rgb, photometric="RGB", bits_stored=8))
    assert mode == "RGB" and np.array_equal(seen, rgb)
    grey = rgb[..., 0].copy()
    mode, seen = values(dicom_bytes(grey, bits_stored=8))
    assert mode == "RGB" and np.array_equal(seen[..., 1], grey)


def test_a_multi_frame_file_gives_its_middle_frame_or_every_frame_and_says_so():
    frames = np.stack([np.full((8, 8), 100 * (k + 1), np.uint16) for k in range(5)])
    archive = zipped(good() + [("a/cine.dcm", dicom_bytes(frames))])
    ds, report = load_zip(archive)
    cine = [i for i, n in enumerate(ds.names) if "cine" in n]
    assert len(cine) == 1 and np.asarray(ds.full_depth_image(cine[0]))[0, 0] == 300
    assert any("cine.dcm has 5 frames: frame 3 (the middle one)" in note for note in report.notes)
    ds, report = load_zip(archive, frames="each")
    assert [n for n in ds.names if "cine" in n] == [f"a/cine.dcm [frame {k}]" for k in range(1, 6)]
    assert any("all 5 were used" in note for note in report.notes)


def test_rle_compressed_pixels_are_decoded():
    from pydicom import dcmread
    from pydicom.uid import RLELossless

    ds = dcmread(io.BytesIO(dicom_bytes(SCAN)))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    buf = io.BytesIO()
    ds.save_as(buf)
    assert np.array_equal(values(buf.getvalue())[1], SCAN)


def jpeg_ls_without_decoder() -> bytes:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    return dicom_bytes(None, syntax=JPEGLSLossless, Rows=8, Columns=8, SamplesPerPixel=1, BitsAllocated=16,
                       BitsStored=12, HighBit=11, PixelRepresentation=0, PhotometricInterpretation="MONOCHROME2",
                       PixelData=encapsulate([b"\xff\xd8" + b"\x00" * 30 + b"\xff\xd9"]))


def no_pixel_data(modality) -> bytes:
    from pydicom.uid import BasicTextSRStorage

    return dicom_bytes(None, modality=modality, sop_class=BasicTextSRStorage)


def cut(payload: bytes, n: int) -> bytes:
    return payload[:-n]


def with_header(payload: bytes, **tags) -> bytes:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(payload))
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


# Each bad file sits in an archive of good ones: it is skipped with its reason, and nothing else is lost.
BAD_FILES = [
    pytest.param(lambda: with_header(dicom_bytes(SCAN), PixelData=SCAN.tobytes()[:-100]),
                 "cut short: its pixel data has 4,508 of the 4,608 bytes", id="truncated-pixel-buffer"),
    pytest.param(lambda: with_header(dicom_bytes(SCAN), PixelData=SCAN.tobytes() + b"\x00" * 64),
                 "its pixel data is 4,672 bytes, but its header declares 4,608", id="pixel-data-longer-than-declared"),
    pytest.param(lambda: cut(dicom_bytes(SCAN), 1000), "cut short", id="file-cut-in-the-pixels"),
    pytest.param(lambda: with_header(dicom_bytes(SCAN), BitsAllocated=12), "12-bit pixels, which this app does not read",
                 id="unsupported-bit-depth"),
    pytest.param(lambda: dicom_bytes(np.zeros((1000, 2, 2), np.uint16)), "has 1,000 frames; files of up to 256",
                 id="a-thousand-frames"),
    pytest.param(lambda: with_header(dicom_bytes(SCAN), Rows=20_000, Columns=20_000),
                 "too many pixels", id="pixel-cap-from-the-header-before-decoding"),
    pytest.param(jpeg_ls_without_decoder, "no decoder for it is installed on this server. Ask for the Python "
                 "package(s)", id="compressed-without-decoder-names-the-package"),
    pytest.param(lambda: no_pixel_data("SR"), "holds no image (a structured report)", id="structured-report"),
    pytest.param(lambda: no_pixel_data("RTSTRUCT"), "holds no image (an RT structure set)", id="rt-structure-set"),
    pytest.param(lambda: dicom_bytes(SCAN)[:600], "no pixel data although it is an image", id="cut-before-the-pixels"),
    pytest.param(lambda: with_header(dicom_bytes(SCAN), PhotometricInterpretation="PALETTE COLOR"),
                 "colour model PALETTE COLOR", id="palette-colour"),
]


@pytest.mark.parametrize("payload, reason", BAD_FILES)
def test_a_bad_dicom_is_skipped_with_its_reason_and_loses_nothing_else(payload, reason):
    ds, report = load_zip(zipped(good() + [("a/bad.dcm", payload())]))
    assert len(ds) == 4 and ds.counts() == {"a": 2, "b": 2}
    (name, why), = report.skipped
    assert name == "a/bad.dcm" and reason in why, why
    images, report = load_images([("bad.dcm", payload()), ("ok.dcm", dicom_bytes(SCAN))], "scans")
    assert len(images) == 1 and report.skipped[0][0] == "bad.dcm" and reason in report.skipped[0][1]


def test_jpeg_ls_message_names_a_package_that_decodes_it():
    with pytest.raises(DataError) as err:
        read_image(jpeg_ls_without_decoder(), "x.dcm")
    assert "pylibjpeg-libjpeg" in str(err.value) or "pyjpegls" in str(err.value)


def test_the_pixel_budget_is_taken_from_the_header_before_decoding(monkeypatch):
    monkeypatch.setattr(limits, "MAX_TOTAL_PIXELS", 3 * 48 * 48)
    with pytest.raises(DataError, match="megapixels"):
        load_zip(zipped(good(2)))


def test_extension_less_dicoms_are_found_by_their_marker_in_zips_labels_csv_and_single_uploads():
    entries = [(f"study/{c}/IM{i:04d}", payload) for (c, i, payload) in
               ((n.split("/")[0], k, p) for k, (n, p) in enumerate(good()))]
    entries += [("study/a/1.2.840.113619.2.55.3", dicom_bytes(SCAN)), ("study/README", b"plain text"),
                ("study/b/DICOMDIR", no_pixel_data(""))]
    ds, report = load_zip(zipped(entries))
    assert ds.counts() == {"a": 3, "b": 2}
    reasons = dict(report.skipped)
    assert "not an image file" in reasons["study/README"] and "holds no image" in reasons["study/b/DICOMDIR"]

    csv = "path,kind\n" + "".join(f"{n},{n.split('/')[1]}\n" for n, _ in entries[:4])
    mt, _ = load_zip(zipped(entries[:4] + [("labels.csv", csv)]))
    assert len(mt) == 4 and mt.window is not None

    images, _ = load_images([("IM0001", dicom_bytes(SCAN))], "scans")
    assert images[0].mode == "F"


def test_a_dicom_without_the_marker_gets_a_reason_that_says_so():
    _, report = load_images([("old.dcm", dicom_bytes(SCAN, preamble=False))], "scans")
    assert "DICM" in report.skipped[0][1]


def test_a_deflated_data_set_is_refused_before_it_is_inflated():
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    with pytest.raises(DataError, match="deflate-compressed"):
        read_image(dicom_bytes(SCAN, syntax=DeflatedExplicitVRLittleEndian), "x.dcm")


def test_patient_data_is_never_kept_in_the_dataset_or_the_report():
    ds, report = load_zip(dicom_zip(per_class=3))
    grown, more = add_images(ds, [("extra.dcm", dicom_bytes(twelve_bit_scan(0, 99)))], "round")
    held = pickle.dumps((ds, report, grown, more))
    for text in (DICOM_PATIENT, DICOM_PATIENT.split("^")[0], "ID-Zqxwv", "Hospital of", "19500101"):
        assert text.encode() not in held, text
    assert any("Patient name, ID, birth date" in note for note in report.notes)


def test_reading_never_logs_or_warns_a_patients_name(caplog):
    # A value that breaks its VR's rules is what makes pydicom warn, quoting the value.
    payload = dicom_bytes(SCAN, patient=DICOM_PATIENT + "\\" * 3 + "x" * 80, PatientSex="NOT-A-SEX " + DICOM_PATIENT)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_images([("p.dcm", payload)], "scans")
        load_zip(zipped(good() + [("a/p.dcm", payload)]))
    assert DICOM_PATIENT not in caplog.text
    assert not [w for w in caught if DICOM_PATIENT in str(w.message)]


def test_the_report_keeps_its_notes_when_built_by_position():
    assert LoadReport(1, [], []).notes == [] and ImageDataset().window is None


def test_jpeg_compressed_pixels_are_decoded_where_a_decoder_is_installed():
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ramp = (np.add.outer(np.arange(32), np.arange(32)) * 4).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp, "L").save(buf, "JPEG", quality=95)
    payload = dicom_bytes(None, syntax=JPEGBaseline8Bit, Rows=32, Columns=32, SamplesPerPixel=1, BitsAllocated=8,
                          BitsStored=8, HighBit=7, PixelRepresentation=0, PhotometricInterpretation="MONOCHROME2",
                          PixelData=encapsulate([buf.getvalue()]))
    mode, seen = values(payload)
    assert mode == "RGB" and np.abs(seen[..., 0].astype(int) - ramp).max() <= 2
