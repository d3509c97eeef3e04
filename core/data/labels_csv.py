"""ZIPs whose ``labels.csv`` gives each image one label per task: read as a ``MultiTaskDataset``.

``labels.csv``: a header row, then one row per image: its path inside the ZIP (or relative to the
folder holding ``labels.csv``), then one class name per task; an empty cell means the image is not
labelled for that task. Anything that would make the dataset wrong raises ``DataError``.
"""

from __future__ import annotations

import csv
import io
import zipfile

from core.data import limits
from core.data.datasets import LoadReport
from core.data.entries import (
    Entry,
    decode_entries,
    display_name,
    entry_problem,
    is_junk,
    mark_images,
    read_entry,
    safe_parts,
)
from core.data.multitask import MISSING, MultiTaskDataset
from core.data.names import check_name_length, described, look_alike_groups, normalise_name, some, sorted_names
from core.errors import DataError

__all__ = ["LABELS_CSV", "is_labelled_archive", "load_labelled_archive"]

LABELS_CSV = "labels.csv"


def _csv_entries(zf: zipfile.ZipFile) -> list:
    found = []
    for info in zf.infolist():
        parts = safe_parts(display_name(info))
        if parts and not is_junk(parts) and parts[-1].lower() == LABELS_CSV and not info.is_dir():
            found.append((len(parts), parts, info))
    return sorted(found, key=lambda f: f[0])


def is_labelled_archive(zf: zipfile.ZipFile) -> bool:
    """Whether a ZIP carries a ``labels.csv`` (then it is read as a multi-task dataset)."""
    return bool(_csv_entries(zf))


def load_labelled_archive(zf: zipfile.ZipFile, frames: str = "middle") -> tuple[MultiTaskDataset, LoadReport]:
    """A ``MultiTaskDataset`` and ``LoadReport`` from an open ZIP holding ``labels.csv``; ``frames`` as
    for ``load_zip`` (every frame of a multi-frame DICOM carries its file's labels)."""
    found = _csv_entries(zf)
    if len(found) > 1 and found[0][0] == found[1][0]:
        raise DataError("This ZIP holds more than one labels.csv at the same level; keep exactly one.")
    _, csv_parts, csv_info = found[0]
    header, body = _read_rows(zf, csv_info)
    tasks = header[1:]
    entries, by_path = _image_entries(zf, csv_parts[:-1])
    rows_of = _match_rows(body, header, by_path)
    strays = sorted(k for k in entries if k not in rows_of)
    if strays:
        raise DataError(f"{len(strays)} image(s) in the ZIP have no row in labels.csv, so no label at all: "
                        f"{some(strays, 3)}. Add a row for each or remove them from the ZIP.")

    report = LoadReport()
    planned = []
    for key, r in sorted(rows_of.items(), key=lambda kv: kv[1]):
        cells = [body[r - 2][0].strip()] + [_name(cell, f"A label in row {r} of labels.csv") for cell in body[r - 2][1:]]
        cells += [""] * (len(header) - len(cells))
        planned.append((entries[key], cells[1:]))
    items = decode_entries(zf, planned, report, check=entry_problem, frames=frames)
    if not items:
        raise DataError("None of the images listed in labels.csv could be read.")
    classes, labels = _task_labels(items, tasks, report)
    report.loaded = len(items)
    return MultiTaskDataset([i[0] for i in items], classes, labels, [i[2] for i in items]), report


def _read_rows(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[list[str], list[list[str]]]:
    """labels.csv's header (stripped) and its non-empty rows after it, checked for shape."""
    if info.file_size > limits.MAX_CSV_BYTES:
        raise DataError(f"labels.csv is larger than {limits.MAX_CSV_BYTES // 2**20} MB; split the dataset.")
    raw = read_entry(zf, info)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError("labels.csv is not UTF-8 text; save it as 'CSV UTF-8' and zip it again.") from None
    rows = _rows(text)
    if len(rows) < 2:
        raise DataError("labels.csv needs a header row (path, then one column per task) and one row per image.")
    header = [rows[0][0].strip()] + [_name(cell, "A task name of labels.csv") for cell in rows[0][1:]]
    tasks = header[1:]
    if not tasks:
        raise DataError("labels.csv has no task columns: after the image path, add one column per task "
                        "(e.g. path,shape,colour).")
    if any(not t for t in tasks):
        raise DataError("A task column of labels.csv has no name in the header row; name every column.")
    if len(set(tasks)) != len(tasks):
        dup = next(t for t in tasks if tasks.count(t) > 1)
        raise DataError(f"labels.csv has two columns called {dup!r}; give every task its own name.")
    return header, rows[1:]


def _rows(text: str) -> list[list[str]]:
    """The non-empty rows of labels.csv, read one at a time: a file with more rows than a dataset may
    hold is refused once it has passed the limit, not after all of it is parsed."""
    rows = []
    try:
        for row in csv.reader(io.StringIO(text)):
            if not any(cell.strip() for cell in row):
                continue
            if len(rows) > limits.MAX_ENTRIES:  # the header and MAX_ENTRIES images are allowed
                raise DataError(f"labels.csv lists more than {limits.MAX_ENTRIES:,} images; at most "
                                f"{limits.MAX_ENTRIES:,} are accepted. Split the dataset.")
            rows.append(row)
    except csv.Error as e:
        if "field limit" in str(e):  # a cell longer than csv's field_size_limit (128 K characters)
            raise DataError(f"A cell of labels.csv is {csv.field_size_limit():,} characters long or more; a path or "
                            f"a name may have at most {limits.MAX_NAME_CHARS} characters. Check that cell.") from None
        raise DataError(f"labels.csv cannot be read as CSV ({e}); check its quotes.") from None
    return rows


def _name(cell: str, what: str) -> str:
    """A task or label name as a class name is kept: one spelling, nothing invisible, not too long."""
    return check_name_length(normalise_name(cell), what)


def _image_entries(zf: zipfile.ZipFile, base: list[str]) -> tuple[dict[str, Entry], dict[str, str]]:
    """Every image entry of the archive by its path, and the paths a row may use for each: from the
    archive's root, or from the folder ``base`` holding labels.csv."""
    candidates = []
    for info in zf.infolist():
        name = display_name(info)
        parts = safe_parts(name)
        if parts and not is_junk(parts) and not info.is_dir() and parts[-1].lower() != LABELS_CSV:
            candidates.append(Entry(info, name, parts))
    entries = {"/".join(e.parts): e for e in mark_images(zf, candidates) if e.image}
    by_path: dict[str, str] = {}
    for key in entries:
        by_path[key] = key
        if base and key.split("/")[:len(base)] == base:
            by_path.setdefault("/".join(key.split("/")[len(base):]), key)
    return entries, by_path


def _match_rows(body: list[list[str]], header: list[str], by_path: dict[str, str]) -> dict[str, int]:
    """Each listed image's entry key -> its row number in labels.csv (the header is row 1)."""
    rows_of: dict[str, int] = {}
    unknown, duplicates, unlabelled, ragged = [], [], [], []
    for r, row in enumerate(body, start=2):
        cells = [cell.strip() for cell in row]
        parts = safe_parts(cells[0]) if cells and cells[0] else None
        key = by_path.get("/".join(parts)) if parts else None
        if key is None:
            unknown.append(cells[0] if cells else f"row {r}")
            continue
        if key in rows_of:
            duplicates.append(cells[0])
            continue
        if len(cells) > len(header):
            ragged.append(r)
            continue
        rows_of[key] = r
        if not any(cells[1:]):
            unlabelled.append(cells[0])
    if unknown:
        raise DataError(f"labels.csv names {len(unknown)} image(s) that are not in the ZIP: {some(unknown, 3)}. "
                        "Write each path as it is inside the ZIP (e.g. images/cat1.jpg).")
    if duplicates:
        raise DataError(f"labels.csv lists {some(duplicates, 3)} more than once; keep one row per image.")
    if ragged:
        raise DataError(f"Row(s) {some([str(r) for r in ragged], 3)} of labels.csv have more cells than the "
                        "header has columns; check for stray commas.")
    if unlabelled:
        raise DataError(f"{len(unlabelled)} image(s) have no label for any task: {some(unlabelled, 3)}. "
                        "Give each at least one label or remove its row.")
    return rows_of


def _task_labels(items: list, tasks: list[str], report: LoadReport):
    """Each task's classes (sorted) and every image's label index per task (``MISSING`` where empty)."""
    classes = {t: sorted_names({item[1][k] for item in items if item[1][k]}) for k, t in enumerate(tasks)}
    few = [t for t in tasks if len(classes[t]) < 2]
    if few:
        counted = "; ".join(f"{t!r} has {len(classes[t])}" for t in few)
        raise DataError(f"Every task needs at least two classes, but {counted}. Add labels of another "
                        "class or drop that column from labels.csv.")
    labels = {t: [classes[t].index(item[1][k]) if item[1][k] else MISSING for item in items]
              for k, t in enumerate(tasks)}
    for t in tasks:
        alike = look_alike_groups(classes[t])
        if alike:
            report.warnings.append(f"Some labels of {t!r} look alike but are written with different characters "
                                   f"({described(alike)}): they are separate classes.")
    gaps = {t: sum(v == MISSING for v in labels[t]) for t in tasks}
    for t, n in gaps.items():
        if n:
            report.warnings.append(f"{n} image(s) are not labelled for {t!r}; they train the other tasks only.")
    return classes, labels
