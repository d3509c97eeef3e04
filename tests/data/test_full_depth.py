"""Specification of images of more than 8 bits: read at full depth, seen through the dataset's window."""

import io

import numpy as np
import pytest
from PIL import Image

from core.data import (
    ImageDataset,
    Window,
    add_images,
    default_window,
    encode_images,
    load_zip,
    normalise,
    read_image,
    split,
)
from core.data.multitask import MultiTaskDataset
from tests.toys import dicom_bytes

RAMP = np.arange(4096).reshape(64, 64)  # a 12-bit ramp, 0..4095, one pixel per level


def saved(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


RAMP_FILES = [
    pytest.param(lambda: saved(RAMP.astype(np.uint16), "PNG"), "ramp.png", id="png-16-bit"),
    pytest.param(lambda: saved(RAMP.astype(np.uint16), "TIFF"), "ramp.tif", id="tiff-16-bit"),
    pytest.param(lambda: saved(RAMP.astype(">u2"), "TIFF"), "ramp.tif", id="tiff-16-bit-big-endian"),
    pytest.param(lambda: saved(RAMP.astype(np.float32), "TIFF"), "ramp.tif", id="tiff-32-bit-float"),
    pytest.param(lambda: dicom_bytes(RAMP.astype(np.uint16)), "ramp.dcm", id="dicom-12-bit"),
]


@pytest.mark.parametrize("payload, name", RAMP_FILES)
def test_a_12_bit_ramp_keeps_its_levels_and_maps_monotonically_to_the_model_input(payload, name):
    img = read_image(payload(), name)
    levels = np.asarray(img)
    assert img.mode == "F" and len(np.unique(levels)) >= 1000  # not 17 grey levels, nor 256
    ds = ImageDataset([img, Image.new("RGB", (64, 64), (10, 20, 30))], [0, 1], ["ramp", "photo"])
    x = encode_images(ds, 64)[0, 0].numpy().astype(int)  # what the model reads, red channel
    order = np.argsort(levels.ravel(), kind="stable")
    assert (np.diff(x.ravel()[order]) >= 0).all()  # monotonic: a brighter pixel never reads darker
    assert x.min() == 0 and x.max() == 255 and len(np.unique(x)) == 256  # the window spans all 8 bits
    mean, std = np.full((1, 3, 1, 1), 0.5, np.float32), np.full((1, 3, 1, 1), 0.25, np.float32)
    floats = normalise(encode_images(ds, 64)[:1], *map(__import__("torch").from_numpy, (mean, std)))
    assert (np.diff(floats[0, 0].numpy().ravel()[order]) >= 0).all()


def test_eight_bit_images_are_unchanged_and_need_no_window():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB")
    ds = ImageDataset([photo], [0], ["a"])
    assert ds.window is None and ds.full_depth == []
    assert np.array_equal(np.asarray(ds[0][0]), np.asarray(photo))


def test_the_default_window_spans_the_0_5_to_99_5_percentiles_of_the_whole_dataset():
    values = np.arange(1000, 3000, dtype=np.float32).reshape(40, 50)
    hot = values.copy()
    hot[0, :5] = 60_000  # a few hot pixels must not squeeze everything else into a few grey levels
    ds = ImageDataset([Image.fromarray(values, "F"), Image.fromarray(hot, "F")], [0, 1], ["a", "b"])
    pooled = np.concatenate([values.ravel(), hot.ravel()])
    low, high = np.percentile(pooled, [0.5, 99.5])
    assert ds.window.low == pytest.approx(low) and ds.window.high == pytest.approx(high)
    assert not ds.window_chosen
    seen = np.asarray(ds[1][0])[..., 0]
    assert seen[0, :5].tolist() == [255] * 5 and seen[20, 10] == pytest.approx(
        255 * (values[20, 10] - low) / (high - low), abs=1)


def test_a_chosen_window_changes_what_the_model_sees_and_splits_keep_it():
    ds, _ = load_zip(_ramp_zip())
    default = ds.window
    narrow = ds.with_window(Window.from_centre_width(2048, 400))
    assert narrow.window_chosen and narrow.window == Window(1848, 2248)
    assert narrow.fingerprint != ds.fingerprint  # runs and caches tell the two apart
    seen = np.asarray(narrow[0][0])[..., 0]
    assert seen[RAMP < 1848].max() == 0 and seen[RAMP > 2248].min() == 255
    train, val = split(narrow, 0.5, 0)
    assert train.window == val.window == narrow.window  # the halves are not windowed on their own
    assert np.array_equal(np.asarray(train[0][0]), np.asarray(narrow[train_index(narrow, train)][0]))
    back = narrow.with_window(None)
    assert back.window == default and not back.window_chosen and back.fingerprint == ds.fingerprint


def train_index(ds, part) -> int:
    return ds.names.index(part.names[0])


def test_a_chosen_window_stays_when_images_are_added_and_a_default_one_follows_the_data():
    ds, _ = load_zip(_ramp_zip())
    brighter = ("bright.dcm", dicom_bytes(RAMP.astype(np.uint16), rescale=(1, 5000)))
    chosen = ds.with_window(Window(0, 1000))
    assert add_images(chosen, [brighter], "a")[0].window == Window(0, 1000)
    grown, _ = add_images(ds, [brighter], "a")
    assert grown.window == default_window(grown.full_depth) and grown.window != ds.window
    assert len(grown.without_class("b").full_depth) == len(grown.full_depth) - 2


def test_the_same_full_depth_image_is_not_added_twice_whatever_the_window():
    ds, _ = load_zip(_ramp_zip())
    again = ("copy.dcm", dicom_bytes(RAMP.astype(np.uint16)))
    _, report = add_images(ds.with_window(Window(100, 200)), [again, ("ok.png", saved(np.zeros((4, 4), np.uint8), "PNG"))], "a")
    assert [name for name, _ in report.skipped] == ["copy.dcm"]


def test_a_multi_task_dataset_windows_its_full_depth_images_and_hands_its_window_on():
    imgs = [Image.fromarray(RAMP.astype(np.float32), "F"), Image.fromarray((RAMP * 2).astype(np.float32), "F")]
    mt = MultiTaskDataset(imgs, {"kind": ["x", "y"], "side": ["l", "r"]}, {"kind": [0, 1], "side": [1, 0]})
    assert mt.window == default_window(imgs)
    assert mt[0][0].mode == "RGB"
    narrow = mt.with_window(Window(0, 100))
    assert narrow.as_single_task("kind").window == Window(0, 100)
    assert narrow.subset([1]).window == Window(0, 100)
    assert np.asarray(narrow.subset([1])[0][0])[0, 30, 0] == 153  # value 60 of 0..100


def _ramp_zip() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c in ("a", "b"):
            for k in range(2):
                zf.writestr(f"{c}/{k}.png", saved((RAMP + 7 * k + (c == "b")).astype(np.uint16), "PNG"))
    return buf.getvalue()
