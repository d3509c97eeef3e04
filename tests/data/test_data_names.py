"""Class names that look alike, warnings that stay few, and a split that can be judged."""

import io
import unicodedata
import zipfile

import pytest
from PIL import Image

from core.data import ImageDataset, check_split, dataset_warnings, load_zip, split
from core.errors import DataError


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def zip_of(folders: dict[str, int]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, (folder, n) in enumerate(folders.items()):
            for i in range(n):
                zf.writestr(f"{folder}/{i}.png", png((k * 20 % 256, i * 30 % 256, 0)))
    return buf.getvalue()


def dataset(counts: dict[str, int]) -> ImageDataset:
    ds = ImageDataset()
    for k, (name, n) in enumerate(counts.items()):
        ds = ds.with_images([Image.new("RGB", (4, 4), (k % 256, i, 0)) for i in range(n)], name)
    return ds


@pytest.mark.parametrize("spelling", [
    unicodedata.normalize("NFD", "café"),  # e + combining accent
    "ca\u200bfé",  # a zero-width space
    "\u202ecafé",  # a right-to-left override
    "café\ufeff",  # a byte-order mark
])
def test_look_alike_spellings_of_a_class_name_become_one_class(spelling):
    ds = dataset({"café": 3}).with_images([Image.new("RGB", (4, 4))], spelling)
    assert ds.classes == ["café"] and ds.counts() == {"café": 4}


def test_a_zip_with_look_alike_folder_names_loads_them_as_one_class():
    ds, _ = load_zip(zip_of({"café": 2, unicodedata.normalize("NFD", "café"): 2, "tea": 2}))
    assert ds.classes == ["café", "tea"] and ds.counts()["café"] == 4


def test_names_that_differ_only_in_case_stay_apart_with_a_warning():
    ds = dataset({"Cat": 6, "cat": 6, "dog": 6})
    assert ds.classes == ["Cat", "cat", "dog"]
    warnings = [w for w in dataset_warnings(ds) if "upper and lower case" in w]
    assert len(warnings) == 1 and "'Cat' / 'cat'" in warnings[0]


def test_thousands_of_one_image_classes_give_one_short_warning_not_thousands():
    ds = dataset({f"class {i}": 1 for i in range(2000)})
    warnings = dataset_warnings(ds)
    assert len(warnings) <= 3
    few = next(w for w in warnings if "fewer than" in w)
    assert "2,000 classes" in few and "and 1,995 more" in few and len(few) < 400


def test_a_split_with_no_validation_image_is_refused_with_what_to_do():
    train, val = split(dataset({"a": 1, "b": 1, "c": 1}), 0.25, 0)
    assert len(val) == 0
    with pytest.raises(DataError, match="validation split is empty.*Add"):
        check_split(train, val)
    check_split(*split(dataset({"a": 2, "b": 1}), 0.25, 0))  # one validation image is enough


def test_names_that_look_alike_in_other_scripts_stay_apart_with_a_warning_that_shows_the_difference():
    ds = dataset({"cat": 6, "c\u0430t": 6, "dog": 6})  # a Cyrillic "а"
    assert len(ds.classes) == 3
    warnings = [w for w in dataset_warnings(ds) if "look alike" in w]
    assert len(warnings) == 1 and "'cat' / 'c\\u0430t'" in warnings[0]
    assert not [w for w in dataset_warnings(dataset({"cat": 6, "cot": 6, "Cat": 6})) if "look alike" in w]


def test_a_class_name_longer_than_the_cap_is_refused_with_its_length():
    with pytest.raises(DataError) as refused:
        dataset({"x" * 100_000: 2, "dog": 2})
    assert "at most 100 characters" in str(refused.value) and "100,000" in str(refused.value)


def labelled_zip(csv_text: str, files="ab") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, n in enumerate(files):
            zf.writestr(f"img/{n}.png", png((i * 60, 0, 0)))
        zf.writestr("labels.csv", csv_text)
    return buf.getvalue()


def test_multitask_labels_and_task_names_are_cleaned_as_class_names_are():
    rlo = "x\u202etxt.exe"  # shown as "xexe.txt" with the override
    ds, _ = load_zip(labelled_zip(f"path,\u200bkind\nimg/a.png,{rlo}\nimg/b.png,plain\n"))
    assert ds.tasks == {"kind": ["plain", "xtxt.exe"]}


def test_look_alike_multitask_labels_are_warned():
    _, report = load_zip(labelled_zip("path,animal\nimg/a.png,cat\nimg/b.png,c\u0430t\n"))
    assert any("look alike" in w and "'animal'" in w for w in report.warnings)


@pytest.mark.parametrize("cell, words", [
    ("y" * 100_000, ["at most 100 characters", "row 3"]),  # the 100 KB label that took 8.8 s to draw
    ("z" * 1_000_000, ["characters long or more", "at most 100 characters"]),  # was "check its quotes"
])
def test_an_overlong_label_in_labels_csv_is_refused_with_what_is_wrong(cell, words):
    with pytest.raises(DataError) as refused:
        load_zip(labelled_zip(f"path,kind\nimg/a.png,short\nimg/b.png,{cell}\n"))
    for word in words:
        assert word in str(refused.value)
    assert "quotes" not in str(refused.value)


def test_a_labels_csv_with_a_million_rows_is_refused_before_it_is_all_parsed():
    import tracemalloc

    text = "path,kind\n" + "img/a.png,x\n" * 1_000_000
    archive = labelled_zip(text)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as refused:
            load_zip(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "at most 20,000" in str(refused.value)
    assert peak < 80 * 2**20  # the text itself (12 MB, and its decoded copy), not a million parsed rows (+230 MB)
