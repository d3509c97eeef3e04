"""Specification of core.data: safe decoding, hostile archives, datasets, demo data and splits."""

import io
import stat
import struct
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core import data
from core.data import (
    ImageDataset,
    LoadReport,
    dataset_warnings,
    demo_dataset,
    limits,
    load_images,
    load_zip,
    open_image,
    split,
)
from core.errors import ConfigError, DataError

# --- builders ------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png(color=(200, 30, 30), size=(16, 16)) -> bytes:
    return encode(Image.new("RGB", size, color))


def noisy_png(size=(32, 32), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels, "RGB"))


def build_zip(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """Entries are (name or ZipInfo, bytes); a name ending in '/' is a folder."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are a case worth testing
        for name, payload in entries:
            zf.writestr(name, payload)
    return buf.getvalue()


# Two classes of two images each: every archive case adds its oddity to these.
GOOD = [
    ("cats/1.png", png((200, 30, 30))),
    ("cats/2.png", png((210, 40, 30))),
    ("dogs/1.png", png((30, 30, 200))),
    ("dogs/2.png", png((30, 40, 210))),
]


def good_plus(*extra):
    return build_zip(GOOD + list(extra))


def special_entry(name: str, mode: int, payload: bytes = b"target") -> tuple:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so the high 16 bits of external_attr are st_mode
    info.external_attr = mode << 16
    return info, payload


def central_directory(buf: bytes):
    """(offset, name bytes) of every central directory record, found from the end record."""
    end = buf.rfind(b"PK\x05\x06")
    pos = struct.unpack_from("<I", buf, end + 16)[0]
    while buf[pos : pos + 4] == b"PK\x01\x02":
        n, e, c = struct.unpack_from("<HHH", buf, pos + 28)
        yield pos, bytes(buf[pos + 46 : pos + 46 + n])
        pos += 46 + n + e + c


def mark_encrypted(payload: bytes, names=None) -> bytes:
    """Set flag bit 0x1 ("encrypted") in the local and central headers of the named entries."""
    buf = bytearray(payload)
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        offsets = {i.filename: i.header_offset for i in zf.infolist()}
    chosen = set(offsets) if names is None else set(names)
    for name in chosen:
        struct.pack_into("<H", buf, offsets[name] + 6, struct.unpack_from("<H", buf, offsets[name] + 6)[0] | 1)
    for pos, raw in list(central_directory(bytes(buf))):
        if raw.decode("utf-8") in chosen:
            struct.pack_into("<H", buf, pos + 8, struct.unpack_from("<H", buf, pos + 8)[0] | 1)
    return bytes(buf)


def declare_size(payload: bytes, name: str, size: int) -> bytes:
    """Make the central directory lie about an entry's uncompressed size."""
    buf = bytearray(payload)
    for pos, raw in list(central_directory(payload)):
        if raw == name.encode():
            struct.pack_into("<I", buf, pos + 24, size)
    return bytes(buf)


def declare_entry_count(payload: bytes, count: int) -> bytes:
    buf = bytearray(payload)
    end = buf.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", buf, end + 8, count, count)
    return bytes(buf)


def declare_directory_size(payload: bytes, size: int) -> bytes:
    buf = bytearray(payload)
    struct.pack_into("<I", buf, buf.rfind(b"PK\x05\x06") + 12, size)
    return bytes(buf)


def rename_bytes(payload: bytes, old: bytes, new: bytes) -> bytes:
    """Swap raw name bytes (same length) everywhere, leaving the UTF-8 flag as it was."""
    assert len(old) == len(new)
    return payload.replace(old, new)


def bzip2_entry(name, payload):
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_BZIP2
    return info, payload


# --- hostile and odd archives --------------------------------------------------------------

# (build, patched limits, outcome, where, fragment). Outcomes: "skipped" (entry `where` is in
# report.skipped with a reason containing `fragment`), "ignored" (no trace at all), "warning",
# "classes" (`where` is the class list), "error" (DataError matching `fragment`).
ARCHIVE_CASES = [
    pytest.param(lambda: good_plus(("../evil.png", png())), {}, "skipped", "../evil.png", "outside",
                 id="zip-slip"),
    pytest.param(lambda: good_plus(("cats/../../evil.png", png())), {}, "skipped", "evil.png", "outside",
                 id="zip-slip-inside-folder"),
    pytest.param(lambda: good_plus(("/etc/x.png", png())), {}, "skipped", "/etc/x.png", "outside",
                 id="absolute-path"),
    pytest.param(lambda: good_plus(("C:\\x.png", png())), {}, "skipped", "C:\\x.png", "outside",
                 id="drive-letter"),
    pytest.param(lambda: good_plus(("cats\\..\\..\\evil.png", png())), {}, "skipped", "evil.png", "outside",
                 id="backslash-zip-slip"),
    pytest.param(lambda: good_plus(special_entry("cats/link.png", stat.S_IFLNK | 0o777, b"/etc/passwd")),
                 {}, "skipped", "cats/link.png", "symbolic link", id="symlink"),
    pytest.param(lambda: good_plus(special_entry("cats/fifo.png", stat.S_IFIFO | 0o644)),
                 {}, "skipped", "cats/fifo.png", "not a regular file", id="fifo"),
    pytest.param(lambda: good_plus(("cats/bomb.png", bytes(3 << 20))), {}, "skipped", "cats/bomb.png",
                 "zip bomb", id="zip-bomb-ratio"),
    pytest.param(lambda: declare_size(good_plus(("cats/lie.png", bytes(3 << 20))), "cats/lie.png", 100),
                 {}, "skipped", "cats/lie.png", "damaged", id="size-header-lies"),
    pytest.param(lambda: good_plus(("cats/big.png", noisy_png((40, 40)))), {"MAX_TOTAL_UNCOMPRESSED": 2000},
                 "error", None, "Unpacked, this ZIP would be", id="total-size-cap"),
    pytest.param(lambda: good_plus(("cats/big.png", noisy_png((40, 40)))), {"MAX_FILE_BYTES": 2000},
                 "skipped", "cats/big.png", "images up to 2.0 KB", id="file-size-cap"),
    pytest.param(lambda: build_zip(GOOD), {"MAX_ENTRIES": 3}, "error", None, "at most 3",
                 id="too-many-entries"),
    pytest.param(lambda: declare_entry_count(build_zip(GOOD), 1), {"MAX_ENTRIES": 3}, "error", None,
                 "at most 3", id="end-record-understates-entries"),
    pytest.param(lambda: declare_directory_size(build_zip(GOOD), 10**8), {}, "error", None,
                 "lists too many entries", id="end-record-announces-huge-directory"),
    pytest.param(lambda: good_plus(("cats/more.zip", build_zip(GOOD))), {}, "skipped", "cats/more.zip",
                 "archive inside the archive", id="nested-zip"),
    pytest.param(lambda: good_plus(("dogs/more.tar.gz", b"\x1f\x8b" + bytes(40))), {}, "skipped",
                 "dogs/more.tar.gz", "archive inside the archive", id="nested-tar-gz"),
    pytest.param(lambda: mark_encrypted(good_plus(("cats/secret.png", png())), ["cats/secret.png"]), {},
                 "skipped", "cats/secret.png", "encrypted", id="one-encrypted-entry"),
    pytest.param(lambda: mark_encrypted(build_zip(GOOD)), {}, "error", None,
                 "Password-protected ZIPs are not supported", id="all-encrypted"),
    pytest.param(lambda: good_plus(("readme.txt", b"hi")),
                 {}, "classes", ["cats", "dogs"], None, id="plain-readme-beside-images"),
    pytest.param(lambda: mark_encrypted(build_zip(GOOD + [("readme.txt", b"hi")]), [n for n, _ in GOOD]),
                 {}, "error", None, "Password-protected", id="encrypted-images-plain-readme"),
    pytest.param(lambda: good_plus(bzip2_entry("cats/b.png", png())), {}, "skipped", "cats/b.png",
                 "compression method", id="bzip2-entry"),
    pytest.param(lambda: b"this is not a zip file at all", {}, "error", None, "not a readable ZIP",
                 id="not-a-zip"),
    pytest.param(lambda: build_zip(GOOD)[: len(build_zip(GOOD)) // 2], {}, "error", None,
                 "not a readable ZIP", id="truncated-zip"),
    pytest.param(lambda: b"", {}, "error", None, "not a readable ZIP", id="empty-file"),
    pytest.param(lambda: rename_bytes(build_zip([("cäts/1.png", png())] + GOOD), "cä".encode(), b"c\xff\xfe"),
                 {}, "error", None, "not a readable ZIP", id="utf8-flag-with-invalid-utf8-name"),
    pytest.param(lambda: good_plus(("__MACOSX/cats/._1.png", b"\x00\x05junk"), ("cats/._2.png", b"junk"),
                                   ("cats/.DS_Store", b"junk"), ("dogs/Thumbs.db", b"junk"),
                                   ("desktop.ini", b"[junk]")),
                 {}, "ignored", None, None, id="os-junk-ignored-quietly"),
    pytest.param(lambda: build_zip([("flowers/", b"")] + [("flowers/" + n, b) for n, b in GOOD]), {},
                 "classes", ["cats", "dogs"], None, id="one-wrapping-folder"),
    pytest.param(lambda: build_zip([("home/me/flowers/" + n, b) for n, b in GOOD]), {},
                 "classes", ["cats", "dogs"], None, id="several-wrapping-folders"),
    pytest.param(lambda: build_zip([("flowers/" + n, b) for n, b in GOOD] + [("flowers/x.png", png())]),
                 {}, "skipped", "flowers/x.png", "not inside a class folder", id="stray-file-in-wrapper"),
    pytest.param(lambda: good_plus(("readme.png", png())), {}, "skipped", "readme.png",
                 "not inside a class folder", id="file-outside-class-folders"),
    pytest.param(lambda: good_plus(("notes.txt", b"hello")), {}, "skipped", "notes.txt",
                 "not an image file", id="non-image-file"),
    pytest.param(lambda: good_plus(("birds/", b"")), {}, "warning", None, "'birds' has no usable images",
                 id="empty-class-folder"),
    pytest.param(lambda: good_plus(("fish/fake.jpg", b"hello")), {}, "warning", None,
                 "'fish' has no usable images", id="class-without-usable-images"),
    pytest.param(lambda: good_plus(("cats/indoor/3.png", png())), {}, "warning", None,
                 "sub-folders of 'cats'", id="nested-class-folders-use-first-level"),
    pytest.param(lambda: rename_bytes(build_zip([(n.replace("cats", "cafX"), b) for n, b in GOOD]),
                                      b"cafX", b"caf\xe9"),
                 {}, "classes", ["caf\u0398", "dogs"], None, id="cp437-name"),
    pytest.param(lambda: rename_bytes(build_zip([(n.replace("cats", "KXXse"), b) for n, b in GOOD]),
                                      b"KXXse", "Käse".encode()),
                 {}, "classes", ["dogs", "Käse"], None, id="utf8-name-without-flag"),
    pytest.param(lambda: build_zip([(n.replace("cats", "ca\nts\x7f"), b) for n, b in GOOD]), {},
                 "classes", ["ca?ts?", "dogs"], None, id="control-characters-in-names"),
    pytest.param(lambda: good_plus(("cats/fake.jpg", b"just some text")), {}, "skipped", "cats/fake.jpg",
                 "not an image", id="text-named-jpg"),
    pytest.param(lambda: good_plus(("cats/cut.png", noisy_png((64, 64))[:1500])), {}, "skipped",
                 "cats/cut.png", "cut short", id="truncated-png"),
    pytest.param(lambda: good_plus(("cats/huge.png", png(size=(64, 64)))), {"MAX_IMAGE_PIXELS": 1000},
                 "skipped", "cats/huge.png", "too many pixels", id="decompression-bomb"),
    pytest.param(lambda: build_zip(GOOD), {"MAX_TOTAL_PIXELS": 600}, "error", None, "megapixels",
                 id="dataset-pixel-cap"),
    pytest.param(lambda: build_zip(GOOD[:2]), {}, "error", None, "one folder per class",
                 id="single-class"),
    pytest.param(lambda: build_zip([("1.png", png()), ("2.png", png())]), {}, "error", None,
                 "one folder per class", id="no-folders"),
]


@pytest.mark.parametrize("build, caps, outcome, where, fragment", ARCHIVE_CASES)
def test_hostile_and_odd_archives_are_handled(build, caps, outcome, where, fragment, monkeypatch):
    payload = build()
    for name, value in caps.items():
        monkeypatch.setattr(limits, name, value)
    if outcome == "error":
        with pytest.raises(DataError, match=fragment):
            load_zip(payload)
        return
    ds, report = load_zip(payload)
    assert isinstance(report, LoadReport)
    assert report.loaded == len(ds)
    if outcome == "classes":
        assert ds.classes == where
        return
    assert ds.classes == ["cats", "dogs"] and min(ds.counts().values()) >= 2
    if outcome == "skipped":
        assert any(where in name and fragment in reason for name, reason in report.skipped), report.skipped
    elif outcome == "ignored":
        assert report.skipped == [] and report.warnings == []
    elif outcome == "warning":
        assert any(fragment in w for w in report.warnings), report.warnings


def test_a_zip_gives_sorted_classes_and_images_in_rgb_with_their_entry_names():
    ds, report = load_zip(build_zip(list(reversed(GOOD))))
    assert ds.classes == ["cats", "dogs"]
    assert ds.labels == [0, 0, 1, 1]
    assert sorted(ds.names) == sorted(n for n, _ in GOOD)
    image, label = ds[0]
    assert image.mode == "RGB" and label == 0
    assert report.skipped == [] and report.loaded == 4


def test_a_zip_can_be_read_from_a_path(tmp_path):
    path = tmp_path / "pets.zip"
    path.write_bytes(build_zip(GOOD))
    assert load_zip(path)[0].counts() == load_zip(str(path))[0].counts() == {"cats": 2, "dogs": 2}
    with pytest.raises(DataError, match="no file"):
        load_zip(tmp_path / "missing.zip")


def test_reading_a_zip_writes_nothing_to_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load_zip(good_plus(("../evil.png", png()), ("/tmp/abs.png", png())))
    assert list(tmp_path.iterdir()) == []


# --- decoding: every mode, orientation, frames and sizes -----------------------------------

GRADIENT = np.arange(256)


def gray_array(values, dtype):
    return np.tile(np.asarray(values, dtype=dtype), (2, 1))


def palette_with_transparency() -> bytes:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0, 1])
    return encode(img, "PNG", transparency=0)


def palette_opaque() -> bytes:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0, 1])
    return encode(img, "PNG")


def one_bit() -> bytes:
    img = Image.new("1", (2, 1), 0)
    img.putpixel((0, 0), 1)
    return encode(img, "PNG")


def two_pixels(mode, a, b, fmt="PNG") -> bytes:
    img = Image.new(mode, (2, 1))
    img.putpixel((0, 0), a)
    img.putpixel((1, 0), b)
    return encode(img, fmt)


# (bytes, {(x, y): expected RGB}); tolerance 3 per channel.
MODE_CASES = [
    pytest.param(one_bit(), {(0, 0): (255, 255, 255), (1, 0): (0, 0, 0)}, id="mode-1"),
    pytest.param(two_pixels("L", 100, 7), {(0, 0): (100, 100, 100), (1, 0): (7, 7, 7)}, id="mode-L"),
    pytest.param(two_pixels("LA", (50, 0), (50, 255)), {(0, 0): (255, 255, 255), (1, 0): (50, 50, 50)},
                 id="mode-LA-transparent-on-white"),
    pytest.param(palette_with_transparency(), {(0, 0): (255, 255, 255), (1, 0): (0, 0, 255)},
                 id="mode-P-with-transparency"),
    pytest.param(palette_opaque(), {(0, 0): (255, 0, 0), (1, 0): (0, 0, 255)}, id="mode-P"),
    pytest.param(two_pixels("RGBA", (255, 0, 0, 0), (0, 0, 255, 128)),
                 {(0, 0): (255, 255, 255), (1, 0): (127, 127, 255)}, id="mode-RGBA-composited-on-white"),
    pytest.param(two_pixels("CMYK", (255, 0, 0, 0), (0, 0, 0, 255), "TIFF"),
                 {(0, 0): (0, 255, 255), (1, 0): (0, 0, 0)}, id="mode-CMYK"),
    pytest.param(encode(Image.fromarray(gray_array(GRADIENT * 257, np.uint16))),
                 {(0, 0): (0, 0, 0), (128, 0): (128, 128, 128), (255, 0): (255, 255, 255)},
                 id="mode-I;16-spans-range-not-clamped"),
    pytest.param(encode(Image.fromarray(gray_array(GRADIENT * 257, ">u2")), "TIFF"),
                 {(0, 0): (0, 0, 0), (64, 0): (64, 64, 64), (255, 0): (255, 255, 255)}, id="mode-I;16B"),
    pytest.param(encode(Image.fromarray(gray_array(GRADIENT * 257, np.int32)), "TIFF"),
                 {(0, 0): (0, 0, 0), (200, 0): (200, 200, 200)}, id="mode-I-16-bit-values"),
    pytest.param(encode(Image.fromarray(gray_array((GRADIENT - 128) * 10_000, np.int32)), "TIFF"),
                 {(0, 0): (0, 0, 0), (100, 0): (100, 100, 100), (255, 0): (255, 255, 255)},
                 id="mode-I-wide-values-stretched"),
    pytest.param(encode(Image.fromarray(gray_array(GRADIENT / 127.5 - 1.0, np.float32)), "TIFF"),
                 {(0, 0): (0, 0, 0), (100, 0): (100, 100, 100), (255, 0): (255, 255, 255)},
                 id="mode-F-scaled-by-min-max"),
    pytest.param(encode(Image.new("RGB", (4, 4), (220, 20, 20)).convert("YCbCr"), "TIFF"),
                 {(0, 0): (220, 20, 20)}, id="mode-YCbCr"),
    pytest.param(encode(Image.new("LAB", (4, 4), (138, 208, 195)), "TIFF"), {(0, 0): (251, 9, 11)},
                 id="mode-LAB"),
]


@pytest.mark.parametrize("payload, expected", MODE_CASES)
def test_every_mode_becomes_correct_rgb(payload, expected):
    img = open_image(payload, "x")
    assert img.mode == "RGB"
    for xy, rgb in expected.items():
        assert np.abs(np.subtract(img.getpixel(xy), rgb)).max() <= 3, (xy, img.getpixel(xy), rgb)


def test_hsv_and_other_in_memory_modes_become_rgb_when_added_to_a_dataset():
    hsv = Image.new("HSV", (4, 4), (0, 255, 255))
    ds = ImageDataset().with_images([hsv, Image.new("RGBA", (4, 4), (0, 0, 0, 0))], "red")
    assert ds[0][0].mode == "RGB" and ds[0][0].getpixel((0, 0)) == (255, 0, 0)
    assert ds[1][0].getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = open_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95), "phone.jpg")
    assert out.size == (20, 40)
    top, bottom = np.asarray(out)[2, 10], np.asarray(out)[-3, 10]
    assert top[0] > 200 and top[2] < 50  # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_animated_gif_and_multipage_tiff_give_their_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    tiff = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert open_image(gif).getpixel((4, 4)) == (255, 0, 0)
    assert open_image(tiff).getpixel((4, 4)) == (255, 0, 0)


@pytest.mark.parametrize(
    "size, expected",
    [((1, 1), (1, 1)), ((1, 500), (1, 500)), ((1, 5000), (1, 512)), ((2000, 1000), (512, 256))],
    ids=["1x1", "1x500", "1x5000-downscaled", "2000x1000-downscaled"],
)
def test_tiny_and_extreme_images_are_accepted_and_large_ones_downscaled(size, expected):
    assert open_image(png(size=size)).size == expected


def test_large_jpegs_are_decoded_at_reduced_scale_and_fit_max_side():
    out = open_image(encode(Image.new("RGB", (3000, 1500), (10, 200, 10)), "JPEG"))
    assert out.size == (512, 256)


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"", "empty"),
        (b"just some text", "not an image"),
        (encode(Image.new("RGB", (4, 4)), "PPM"), "not an image"),
        (encode(Image.new("RGB", (16, 16)), "ICO"), "not an image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),
        (noisy_png((64, 64))[:1500], "cut short"),
        (encode(Image.open(io.BytesIO(noisy_png((64, 64)))), "JPEG")[:1500], "cut short"),
    ],
    ids=["empty", "text", "ppm-not-allowed", "ico-not-allowed", "eps-not-allowed", "truncated-png",
         "truncated-jpeg"],
)
def test_files_that_are_not_allowed_images_raise_data_error(payload, fragment):
    with pytest.raises(DataError, match=fragment):
        open_image(payload, "upload.jpg")


def test_pixel_cap_is_checked_from_the_header(monkeypatch):
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="too many pixels"):
        open_image(png(size=(11, 10)))
    assert open_image(png(size=(10, 10))).size == (10, 10)


def test_pillows_decompression_bomb_warning_is_an_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="too many pixels"):
        open_image(png(size=(16, 16)))


def test_file_size_cap(monkeypatch):
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 100)
    with pytest.raises(DataError, match="images up to 100 bytes"):
        open_image(noisy_png())


def test_load_images_skips_bad_files_with_reasons_and_caps_pixels(monkeypatch):
    images, report = load_images([("a.png", png()), ("b.txt", b"text"), ("c.png", png())], "cats")
    assert len(images) == report.loaded == 2
    assert [name for name, _ in report.skipped] == ["b.txt"]
    images, report = load_images([("b.txt", b"text")], "cats")
    assert images == [] and "None of the 1 files" in report.warnings[0]
    with pytest.raises(DataError, match="name"):
        load_images([], "  ")
    monkeypatch.setattr(limits, "MAX_TOTAL_PIXELS", 300)
    with pytest.raises(DataError, match="megapixels"):
        load_images([("a.png", png()), ("c.png", png())], "cats")


# --- fuzzing: only DataError ever escapes --------------------------------------------------

VALID_IMAGES = [
    png(),
    noisy_png((8, 8)),
    encode(Image.new("RGB", (8, 8), (9, 9, 9)), "JPEG"),
    encode(Image.new("P", (8, 8)), "GIF"),
    encode(Image.new("RGB", (8, 8)), "BMP"),
    encode(Image.new("RGB", (8, 8)), "WEBP"),
    encode(Image.new("RGB", (8, 8)), "TIFF"),
]
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP",
         b"II*\x00", b"MM\x00*", b"PK\x03\x04", b"PK\x05\x06"]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mutated(seeds):
    """Valid files with a few bytes overwritten, or cut short: they reach deep into parsers."""
    def mutate(args):
        payload, edits, cut = args
        buf = bytearray(payload)
        for pos, value in edits:
            buf[pos % len(buf)] = value
        return bytes(buf[: max(1, len(buf) - cut)])

    return st.tuples(
        st.sampled_from(seeds),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
        st.integers(0, 64) | st.just(0),
    ).map(mutate)


def only_data_error(func, payload):
    try:
        func(payload)
    except DataError:
        pass


@FUZZ
@given(
    st.binary(max_size=600)
    | st.tuples(st.sampled_from(MAGIC), st.binary(max_size=300)).map(b"".join)
    | mutated(VALID_IMAGES)
)
def test_open_image_raises_only_data_error_on_any_bytes(payload):
    only_data_error(open_image, payload)


@FUZZ
@given(
    st.binary(max_size=600)
    | st.tuples(st.sampled_from(MAGIC), st.binary(max_size=300)).map(b"".join)
    | mutated([build_zip(GOOD), build_zip(GOOD, zipfile.ZIP_STORED)])
)
def test_load_zip_raises_only_data_error_on_any_bytes(payload):
    only_data_error(load_zip, payload)


# "~" becomes a NUL byte in the written archive: zipfile cannot write one itself.
NAME_TOKENS = list("ab.Z_é😀 \\:~") + ["..", "/", "__MACOSX", "._", "C:", "\n"]
NAME_PART = st.lists(st.sampled_from(NAME_TOKENS), min_size=1, max_size=6).map("".join)
ENTRY_NAME = st.lists(NAME_PART, min_size=1, max_size=4).map("/".join)
EXTENSION = st.sampled_from([".png", ".jpg", ".gif", ".txt", ".zip", "", "/"])
CONTENT = st.sampled_from(VALID_IMAGES) | st.binary(max_size=200)


@FUZZ
@given(st.lists(st.tuples(st.tuples(ENTRY_NAME, EXTENSION).map("".join), CONTENT), max_size=8),
       st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
def test_load_zip_raises_only_data_error_on_random_archives(entries, compression):
    payload = build_zip([(name, b"" if name.endswith("/") else content) for name, content in entries],
                        compression).replace(b"~", b"\x00")
    try:
        ds, report = load_zip(payload)
    except DataError:
        return
    assert len(ds.classes) >= 2 and report.loaded == len(ds)
    assert all(img.mode == "RGB" and max(img.size) <= limits.MAX_SIDE for img, _ in ds)


# --- datasets ------------------------------------------------------------------------------


def colour_dataset(counts: dict[str, int]) -> ImageDataset:
    ds = ImageDataset()
    for k, (name, n) in enumerate(counts.items()):
        ds = ds.with_images([Image.new("RGB", (4, 4), (k * 40, i, 0)) for i in range(n)], name)
    return ds


def test_with_images_adds_to_a_class_or_creates_it_and_leaves_the_original_alone():
    ds = colour_dataset({"a": 2})
    bigger = ds.with_images([Image.new("L", (1000, 10))], "b").with_images([Image.new("RGB", (2, 2))], "a")
    assert bigger.classes == ["a", "b"] and bigger.counts() == {"a": 3, "b": 1}
    assert bigger.names[-1] == "a-3" and bigger.names[2] == "b-1"
    assert bigger[2][0].mode == "RGB" and bigger[2][0].size == (512, 5)
    assert ds.counts() == {"a": 2} and len(ds) == 2


def test_a_dataset_keeps_its_own_copy_of_images_added_to_it():
    shot = Image.new("RGB", (4, 4), (0, 0, 0))
    ds = ImageDataset().with_images([shot], "webcam")
    shot.putpixel((0, 0), (255, 255, 255))
    assert ds[0][0].getpixel((0, 0)) == (0, 0, 0)


def test_class_lists_returned_by_a_dataset_cannot_change_it():
    ds = colour_dataset({"a": 1, "b": 1})
    ds.classes.append("c")
    ds.labels[0] = 1
    assert ds.classes == ["a", "b"] and ds.labels == [0, 1]


def test_without_class_relabels_and_merge_matches_classes_by_name():
    ds = colour_dataset({"a": 1, "b": 2, "c": 3})
    rest = ds.without_class("b")
    assert rest.classes == ["a", "c"] and rest.labels == [0, 1, 1, 1]
    with pytest.raises(DataError, match="no class"):
        ds.without_class("zebra")
    merged = rest.merge(colour_dataset({"c": 1, "d": 1}))
    assert merged.classes == ["a", "c", "d"] and merged.counts() == {"a": 1, "c": 4, "d": 1}


def test_subset_keeps_every_class():
    ds = colour_dataset({"a": 2, "b": 2})
    assert ds.subset([3, 0]).labels == [1, 0]
    assert ds.subset([]).classes == ["a", "b"]


def test_fingerprint_follows_pixels_and_labels():
    ds = colour_dataset({"a": 2, "b": 2})
    assert ds.fingerprint == colour_dataset({"a": 2, "b": 2}).fingerprint
    assert ds.fingerprint != colour_dataset({"a": 2, "b": 3}).fingerprint
    relabelled = ImageDataset(ds.images, [1, 0, 0, 1], ds.classes)
    assert relabelled.fingerprint != ds.fingerprint
    changed = ImageDataset([Image.new("RGB", (4, 4), (0, 0, 1))] + ds.images[1:], ds.labels, ds.classes)
    assert changed.fingerprint != ds.fingerprint


def test_from_items_sorts_classes():
    items = [(Image.new("RGB", (2, 2)), "zebra"), (Image.new("RGB", (2, 2)), "ant", "ant.png")]
    ds = ImageDataset.from_items(items)
    assert ds.classes == ["ant", "zebra"] and ds.labels == [1, 0] and ds.names[1] == "ant.png"


@pytest.mark.parametrize(
    "counts, fragment",
    [
        ({}, "empty"),
        ({"a": 10}, "at least two classes"),
        ({"a": 10, "b": 3}, "'b' has only 3 images"),
        ({"a": 20, "b": 6}, "unbalanced"),
    ],
    ids=["empty", "single-class", "few-images", "imbalance"],
)
def test_dataset_warnings(counts, fragment):
    assert any(fragment in w for w in dataset_warnings(colour_dataset(counts)))


def test_a_healthy_dataset_has_no_warnings():
    assert dataset_warnings(colour_dataset({"a": 10, "b": 8})) == []


# --- split ---------------------------------------------------------------------------------


def test_split_is_stratified_and_deterministic():
    ds = colour_dataset({"a": 10, "b": 5, "c": 2, "d": 1})
    train, val = split(ds, 0.2, seed=3)
    assert val.counts() == {"a": 2, "b": 1, "c": 1, "d": 0}
    assert train.counts() == {"a": 8, "b": 4, "c": 1, "d": 1}
    assert train.classes == val.classes == ds.classes
    assert sorted(train.names + val.names) == sorted(ds.names)
    again = split(ds, 0.2, seed=3)
    assert again[0].names == train.names and again[1].names == val.names
    others = [split(ds, 0.2, seed=s)[1].names for s in range(10)]
    assert len({tuple(n) for n in others}) > 1


def test_every_class_with_two_images_gets_one_on_each_side_even_at_extreme_fractions():
    ds = colour_dataset({"a": 2, "b": 3})
    for fraction in (0.01, 0.99):
        train, val = split(ds, fraction)
        assert min(train.counts().values()) >= 1 and min(val.counts().values()) >= 1


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), True])
def test_split_refuses_fractions_outside_zero_one(fraction):
    with pytest.raises(ConfigError):
        split(colour_dataset({"a": 3, "b": 3}), fraction)


# --- demo data -----------------------------------------------------------------------------


def test_demo_dataset_has_the_right_classes_and_counts():
    ds = demo_dataset("source", per_class=3, size=48)
    assert ds.classes == list(data.DEMO_CLASSES) and len(ds.classes) == 4
    assert ds.counts() == dict.fromkeys(ds.classes, 3)
    assert all(img.mode == "RGB" and img.size == (48, 48) for img, _ in ds)


def test_demo_dataset_is_deterministic_for_a_seed_and_varies_between_seeds():
    a = demo_dataset("target", per_class=3, seed=1, size=48)
    assert a.fingerprint == demo_dataset("target", per_class=3, seed=1, size=48).fingerprint
    assert a.fingerprint != demo_dataset("target", per_class=3, seed=2, size=48).fingerprint
    pixels = [np.asarray(img) for img, _ in a]
    assert all(not np.array_equal(pixels[0], p) for p in pixels[1:])


def test_demo_source_and_target_look_clearly_different():
    def stats(ds):
        pixels = np.stack([np.asarray(img, dtype=np.float32) for img, _ in ds])
        return pixels.mean(), pixels.std(axis=(1, 2)).mean()

    source, target = stats(demo_dataset("source", 5, size=48)), stats(demo_dataset("target", 5, size=48))
    assert source[0] - target[0] > 80  # light backgrounds against dark ones


def test_demo_dataset_rejects_unknown_domains_listing_the_valid_ones():
    with pytest.raises(ConfigError, match="source, target"):
        demo_dataset("cartoon")


# --- adding one's own images ---------------------------------------------------------------


def test_each_add_takes_exactly_the_files_given_for_its_class():
    ds, _ = data.add_images(ImageDataset(), [("a1.png", png((200, 0, 0))), ("a2.png", png((190, 0, 0)))], "apple")
    ds, _ = data.add_images(ds, [("b1.png", png((0, 0, 200)))], "berry")
    assert ds.counts() == {"apple": 2, "berry": 1}
    assert ds.names == ["a1.png", "a2.png", "b1.png"]


def test_a_file_already_in_another_class_is_not_added_and_gets_a_warning():
    ds, _ = data.add_images(ImageDataset(), [("astronaut.png", png((1, 2, 3)))], "coffee")
    ds2, report = data.add_images(ds, [("astronaut.png", png((1, 2, 3))), ("cat.png", png((9, 9, 9)))], "cat")
    assert ds2.counts() == {"coffee": 1, "cat": 1}
    assert report.loaded == 1
    assert any("already in class 'coffee'" in w for w in report.warnings)


def test_the_same_frame_added_twice_is_kept_once():
    frame = encode(Image.new("RGB", (32, 24), (40, 90, 10)), "JPEG")
    ds, _ = data.add_images(ImageDataset(), [("webcam-1.jpg", frame), ("webcam-2.jpg", frame)], "thumbs up")
    assert len(ds) == 1
    with pytest.raises(DataError, match="Nothing was added to 'thumbs up'"):
        data.add_images(ds, [("webcam-3.jpg", frame)], "thumbs up")


def test_adding_images_never_changes_the_dataset_it_was_given():
    ds = demo_dataset(per_class=5)
    before = ds.fingerprint
    data.add_images(ds, [("x.png", png())], "mug")
    assert ds.fingerprint == before and len(ds) == 20


def test_unreadable_files_are_skipped_with_a_reason():
    ds, report = data.add_images(ImageDataset(), [("ok.png", png()), ("bad.png", b"not an image")], "mug")
    assert len(ds) == 1 and [name for name, _ in report.skipped] == ["bad.png"]


@pytest.mark.parametrize("classes, expected", [
    (["circle", "square", "star", "triangle"], "Demo shapes (source look)"),
    (["circle", "square", "star", "triangle", "mug"], "Demo shapes (source look) + mug"),
    (["circle", "square", "star"], "Demo shapes (source look) without triangle"),
    (["circle", "mug"], "Demo shapes (source look), only circle + mug"),
    (["mug", "cup"], "Your images (mug, cup)"),
    (["a", "b", "c", "d", "e"], "Your images (a, b, c and 2 more)"),
    ([], "An empty dataset"),
])
def test_a_dataset_is_named_by_what_it_holds(classes, expected):
    assert data.dataset_name(classes, "Demo shapes (source look)", data.DEMO_CLASSES) == expected
