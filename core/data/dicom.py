"""DICOM files (what scanners write) read through pydicom: pixels in, patient data never kept.

Only the elements needed to draw the pixels are read from a file (``specific_tags``): pydicom
skips past every other element, patient name, ID, birth date, accession number and institution
included, without reading its value. The caps (file size, pixels, frames) are checked from the
header before anything is decoded. Grayscale pixels go through the modality LUT (rescale slope and
intercept) and the header's VOI LUT or window when there is one, MONOCHROME1 is inverted, and the
result is kept at full depth (a ``"F"`` image) for the dataset's window; colour DICOMs become RGB.
"""

from __future__ import annotations

import io
import logging
from collections import Counter

import numpy as np
from PIL import Image

from core.data import limits
from core.errors import DataError

__all__ = ["DICOM_EXTENSIONS", "FRAME_CHOICES", "KEPT_TAGS", "DicomNotes", "is_dicom", "read_dicom"]

DICOM_EXTENSIONS = (".dcm", ".dicom")
# "middle": one image per file, its middle frame; "each": one image per frame.
FRAME_CHOICES = ("middle", "each")
# Everything the app reads from a header; no other element's value is ever read.
KEPT_TAGS = (
    "Modality", "PhotometricInterpretation", "SamplesPerPixel", "PlanarConfiguration", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence", "PixelData",
)
_KEPT_IN_WORDS = "modality, photometric interpretation, window and rescale"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")
_NO_IMAGE = {"SR": "a structured report", "RTSTRUCT": "an RT structure set", "RTPLAN": "an RT plan",
             "PR": "a presentation state", "KO": "a key object selection", "DOC": "a document"}
_SUPPORTED_BITS = (8, 16, 32)

_pydicom = None


def _library():
    """pydicom, imported on first use and told never to log element values (they may name a patient)."""
    global _pydicom
    if _pydicom is None:
        import pydicom
        import pydicom.pixels

        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)
        _pydicom = pydicom
    return _pydicom


def is_dicom(data: bytes) -> bool:
    """Whether bytes are a DICOM file: the "DICM" marker after the 128-byte preamble."""
    return len(data) >= 132 and bytes(data[128:132]) == b"DICM"


class DicomNotes:
    """What an upload's DICOM files were, for its report: never a value that could name a patient."""

    def __init__(self):
        self.files = 0
        self.modalities: Counter[str] = Counter()
        self.header_windows = 0
        self.frames: list[tuple[str, int, int]] = []  # (file, frames in it, frames used)

    def notes(self) -> list[str]:
        if not self.files:
            return []
        kinds = ", ".join(f"{m} ×{n}" if n > 1 else m for m, n in sorted(self.modalities.items()))
        lines = [f"{self.files} DICOM file(s)" + (f" ({kinds})" if kinds else "") + ": only their pixels and "
                 f"{_KEPT_IN_WORDS} were read. Patient name, ID, birth date, accession number, institution "
                 "and every other header field were dropped unread and are not kept anywhere."]
        if self.header_windows:
            lines.append(f"{self.header_windows} DICOM file(s) carried their own window (VOI LUT), "
                         "applied before the dataset's window.")
        for name, total, used in self.frames[:5]:
            lines.append(f"{name} has {total} frames: " + (f"all {total} were used, one image each."
                                                           if used == total else f"frame {used} (the middle one) was used."))
        if len(self.frames) > 5:
            lines.append(f"… and {len(self.frames) - 5} more multi-frame file(s).")
        return lines


def read_dicom(data: bytes, label: str, budget=None, frames: str = "middle",
               notes: DicomNotes | None = None) -> list[tuple[Image.Image, int | None]]:
    """The pictures of one DICOM file: ``(image, frame number or None)``, one per frame used.

    Grayscale images come back at full depth (mode ``"F"``) unless they hold 8 bits untouched by
    any LUT; colour ones as RGB. ``budget.take(pixels)`` is called before decoding. Raises
    `DataError` (its message starting with ``label``) for anything that cannot be used.
    """
    if frames not in FRAME_CHOICES:
        raise ValueError(f"frames must be one of {FRAME_CHOICES}")
    if not is_dicom(data):
        raise DataError(f"{label} is not a DICOM file this app can read (it lacks the 'DICM' marker); "
                        "export it from the viewer as a DICOM file.")
    pydicom = _library()
    syntax = _transfer_syntax(data, label)
    if syntax == _DEFLATED:
        raise DataError(f"{label} is stored deflate-compressed as a whole, which is not read; "
                        "export it uncompressed or with compressed pixels instead.")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), specific_tags=list(KEPT_TAGS))
    except Exception:  # pydicom raises many kinds on damaged or hostile bytes
        raise DataError(f"{label} is a damaged DICOM file and cannot be read; export it again.") from None
    modality = _text(ds, "Modality")
    if "PixelData" not in ds:
        kind = _NO_IMAGE.get(modality) or _sop_class(pydicom, ds)
        if kind.endswith("Image Storage"):
            raise DataError(f"{label} has no pixel data although it is an image ({kind[2:]}): it may be cut "
                            "short. Export it again.")
        raise DataError(f"{label} holds no image ({kind}), so there is nothing to train on.")
    count, used = _check_header(ds, label, syntax, frames)
    if budget is not None:
        budget.take(int(ds.Rows) * int(ds.Columns) * len(used))
    pictures = [(_picture(pydicom, ds, label, i, count), i + 1 if count > 1 else None) for i in used]
    if notes is not None:
        notes.files += 1
        if modality:
            notes.modalities[modality] += 1
        if int(ds.get("SamplesPerPixel", 1) or 1) == 1 and _has_voi(ds):
            notes.header_windows += 1
        if count > 1:
            notes.frames.append((label.strip("'\""), count, len(used) if len(used) > 1 else used[0] + 1))
    return pictures


def _transfer_syntax(data: bytes, label: str) -> str:
    """The file meta's transfer syntax, read before the data set (a deflated one would be inflated whole)."""
    from pydicom.filereader import _read_file_meta_info

    try:
        fp = io.BytesIO(data)
        fp.seek(132)
        meta = _read_file_meta_info(fp)
        return str(meta.TransferSyntaxUID)
    except Exception:
        raise DataError(f"{label} has a damaged DICOM file header (no transfer syntax); export it again.") from None


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def _sop_class(pydicom, ds) -> str:
    uid = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    name = pydicom.uid.UID(str(uid)).name if uid else ""
    return f"a {name}" if name and not name[0].isdigit() else "no pixel data"


def _has_voi(ds) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)


def _check_header(ds, label: str, syntax: str, frames: str) -> tuple[int, list[int]]:
    """The caps and the shape, from the header alone: how many frames the file has and which are used."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = _text(ds, "PhotometricInterpretation")
    except Exception:
        raise DataError(f"{label} has a damaged DICOM header (its image size or bit depth is missing); "
                        "export it again.") from None
    if rows < 1 or cols < 1 or count < 1:
        raise DataError(f"{label} has no pixels.")
    if rows * cols > limits.MAX_IMAGE_PIXELS:
        raise DataError(f"{label} has too many pixels (over {limits.MAX_IMAGE_PIXELS / 1e6:g} megapixels); "
                        "resize it before uploading.")
    if count > limits.MAX_FRAMES:
        raise DataError(f"{label} has {count:,} frames; files of up to {limits.MAX_FRAMES} frames are read. "
                        "Export the frames you need as separate images.")
    if bits not in _SUPPORTED_BITS or not 1 <= stored <= bits:
        raise DataError(f"{label} stores {stored} bits in {bits}-bit pixels, which this app does not read; "
                        "export it with 8 or 16 bits per pixel.")
    if samples not in (1, 3) or (samples == 1 and not photometric.startswith("MONOCHROME")) or (
            samples == 3 and photometric not in _COLOUR):
        raise DataError(f"{label} uses the colour model {photometric or 'unknown'}, which this app does not read; "
                        "export it as grayscale (MONOCHROME2) or RGB.")
    _check_pixel_data(ds, label, syntax)
    used = list(range(count)) if frames == "each" else [count // 2]
    return count, used


def _check_pixel_data(ds, label: str, syntax: str) -> None:
    """Uncompressed pixels must be as long as the header says; compressed ones need a decoder."""
    pydicom = _library()
    if syntax in _NATIVE:
        expected = pydicom.pixels.utils.get_expected_length(ds)
        got = len(ds.PixelData)
        if got < expected:
            raise DataError(f"{label} is cut short: its pixel data has {got:,} of the {expected:,} bytes its "
                            "header declares. Export it again.")
        if got > expected + (expected % 2):  # one byte pads an odd length
            raise DataError(f"{label} is damaged: its pixel data is {got:,} bytes, but its header declares "
                            f"{expected:,}. Export it again.")
        return
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except Exception:
        name = pydicom.uid.UID(syntax).name or syntax
        raise DataError(f"{label} is compressed as {name}, which no DICOM decoder reads; "
                        "export it uncompressed.") from None
    if not decoder.is_available:
        name = pydicom.uid.UID(syntax).name
        options = "; or ".join(dep.split(" - requires ", 1)[-1] for dep in decoder.missing_dependencies)
        raise DataError(f"{label} is compressed as {name}, and no decoder for it is installed on this server. "
                        f"Ask for the Python package(s) {options} to be installed, or export it uncompressed.")


def _picture(pydicom, ds, label: str, index: int, count: int) -> Image.Image:
    try:
        arr = pydicom.pixels.pixel_array(ds, index=index if count > 1 else None)
    except Exception:
        raise DataError(f"{label} has pixel data that cannot be decoded (damaged or cut short); "
                        "export it again.") from None
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return _colour(arr, int(ds.get("BitsStored", ds.BitsAllocated)))
    return _grey(pydicom, ds, arr)


def _colour(arr: np.ndarray, stored: int) -> Image.Image:
    if arr.dtype != np.uint8:
        shift = max(stored - 8, 0)
        arr = np.clip(arr.astype(np.int64) >> shift, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _grey(pydicom, ds, arr: np.ndarray) -> Image.Image:
    """Through the modality and VOI LUTs, MONOCHROME1 inverted; 8 untouched bits stay an 8-bit image."""
    inverted = _text(ds, "PhotometricInterpretation") == "MONOCHROME1"
    rescaled = "ModalityLUTSequence" in ds or float(ds.get("RescaleSlope", 1) or 1) != 1 or float(
        ds.get("RescaleIntercept", 0) or 0) != 0
    if arr.dtype == np.uint8 and not rescaled and not _has_voi(ds):
        return Image.fromarray(255 - arr if inverted else arr, "L").convert("RGB")
    lo, hi = _stored_range(ds)
    values = pydicom.pixels.apply_modality_lut(arr, ds).astype(np.float64)
    lo, hi = sorted(pydicom.pixels.apply_modality_lut(np.array([lo, hi], arr.dtype), ds).astype(np.float64))
    if _has_voi(ds):
        values = pydicom.pixels.apply_voi_lut(values, ds, index=0).astype(np.float64)
        if "VOILUTSequence" in ds:  # a LUT's output has its own range: 0 .. 2**(its bits) - 1
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if inverted:  # within the range the values can take, so the histogram stays where it was
        values = lo + hi - values
    return Image.fromarray(values.astype(np.float32), "F")


def _stored_range(ds) -> tuple[int, int]:
    stored = int(ds.get("BitsStored", ds.BitsAllocated))
    if int(ds.get("PixelRepresentation", 0) or 0):
        return -(2 ** (stored - 1)), 2 ** (stored - 1) - 1
    return 0, 2 ** stored - 1
