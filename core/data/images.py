"""Decoding one image file safely: an allow-list of formats, caps read from the header before
anything is decoded, every colour mode turned into RGB, EXIF orientation applied, and the result
downscaled so its longest side is at most ``limits.MAX_SIDE``.

Images of more than 8 bits (16-bit PNG and TIFF, 32-bit integer and float TIFF, DICOM) are kept at
full depth as grayscale ``"F"`` images: a dataset's window (``core.data.window``) turns them into
what the model sees. DICOM files go to ``core.data.dicom``.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings

import numpy as np
from PIL import Image

from core.data import limits
from core.data.dicom import DICOM_EXTENSIONS, DicomNotes, is_dicom, read_dicom
from core.data.names import human_bytes
from core.data.window import Window, apply_window, default_window, is_full_depth
from core.errors import DataError

__all__ = ["IMAGE_FORMATS", "IMAGE_EXTENSIONS", "PixelBudget", "BudgetExceeded", "Upload", "open_image",
           "read_image", "decode", "decode_file", "frame_name", "normalise_image", "image_digest", "skip_reason"]

# Pillow decoders we let near user bytes (multi-picture JPEGs come through the JPEG one).
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
) + DICOM_EXTENSIONS
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class PixelBudget:
    """Decoded pixels left for one upload; running out fails the whole upload."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, pixels: int) -> None:
        if self.used + pixels > self.limit:
            raise BudgetExceeded(
                f"These images add up to more than {self.limit / 1e6:g} megapixels. "
                "Use fewer or smaller images: about 1000 pixels on the long side is plenty."
            )
        self.used += pixels


class BudgetExceeded(DataError):
    pass


class Upload:
    """What the files of one upload share: the pixel budget, how multi-frame DICOMs are read
    (``"middle"`` frame or ``"each"`` frame), and what their DICOM headers were, for the report."""

    def __init__(self, frames: str = "middle"):
        self.budget = PixelBudget(limits.MAX_TOTAL_PIXELS)
        self.frames = frames
        self.dicom = DicomNotes()


def open_image(data: bytes, name: str = "", window: Window | None = None) -> Image.Image:
    """Decode one image file into an RGB image whose longest side is at most `limits.MAX_SIDE`.

    An image of more than 8 bits is seen through ``window`` (a dataset's), or else its own
    0.5–99.5 percentile window; a multi-frame DICOM gives its middle frame. Raises `DataError` for
    anything that is not a readable image in an allowed format, a truncated file, or an image with
    more than `limits.MAX_IMAGE_PIXELS` pixels.
    """
    img = read_image(data, name)
    if is_full_depth(img):
        return apply_window(img, window or default_window([img]))
    return img


def read_image(data: bytes, name: str = "") -> Image.Image:
    """Like `open_image`, but an image of more than 8 bits comes back at full depth (mode ``"F"``)."""
    return decode_file(data, name, Upload())[0][0]


def frame_name(name: str, frame: int | None) -> str:
    """The name of one frame of a multi-frame file, as the dataset and the report show it."""
    return name if frame is None else f"{name} [frame {frame}]"


def decode_file(data: bytes, name: str, upload: Upload) -> list[tuple[Image.Image, int | None]]:
    """Every picture of one file, ``(image, frame number or None)``: one, or one per frame used of
    a multi-frame DICOM. A DICOM is recognised by its "DICM" marker whatever its name."""
    label = _checked_size(data, name)
    if is_dicom(data) or _extension(name) in DICOM_EXTENSIONS:
        pictures = read_dicom(bytes(data), label, upload.budget, upload.frames, upload.dicom)
        for img, _ in pictures:
            img.thumbnail((limits.MAX_SIDE, limits.MAX_SIDE))
        return pictures
    return [(decode(data, name, upload.budget), None)]


def _extension(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _checked_size(data, name: str) -> str:
    """The file's label for messages, once its bytes are known to be of a size worth decoding."""
    label = f"{name!r}" if name else "This file"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("open_image expects the file's bytes")
    if len(data) == 0:
        raise DataError(f"{label} is empty.")
    if len(data) > limits.MAX_FILE_BYTES:
        raise DataError(
            f"{label} is {human_bytes(len(data))}; images up to "
            f"{human_bytes(limits.MAX_FILE_BYTES)} are accepted."
        )
    return label


def decode(data: bytes, name: str, budget: PixelBudget | None) -> Image.Image:
    """One image file (not DICOM) as RGB, or as ``"F"`` when it holds more than 8 bits."""
    label = _checked_size(data, name)
    # Pillow's bomb warning becomes an error; the header check below is the real guard,
    # since warning filters are process-wide and another thread may be changing them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hostile files must not flood the server's log
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(label) from None
        except Exception:  # any parser failure on hostile bytes means "not an image we read"
            raise DataError(
                f"{label} is not an image this app can read. "
                "Use JPEG, PNG, GIF, BMP, WEBP, TIFF or DICOM files."
            ) from None
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise DataError(f"{label} has no pixels.")
            if width * height > limits.MAX_IMAGE_PIXELS:
                raise _too_many_pixels(label)
            try:
                if img.format in ("JPEG", "MPO"):
                    # Decode big JPEGs at 1/2, 1/4 or 1/8 scale: much faster, less memory.
                    img.draft(img.mode, (limits.MAX_SIDE, limits.MAX_SIDE))
                if budget is not None:
                    budget.take(img.size[0] * img.size[1])
                img.load()
            except BudgetExceeded:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise _too_many_pixels(label) from None
            except Exception:
                raise DataError(
                    f"{label} is damaged or cut short and cannot be read; export it again."
                ) from None
            orientation = _orientation(img)
            rgb = _to_rgb(img, label)
    rgb.thumbnail((limits.MAX_SIDE, limits.MAX_SIDE))
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    if transpose is not None:
        rgb = rgb.transpose(transpose)
    return rgb


def _too_many_pixels(label: str) -> DataError:
    return DataError(
        f"{label} has too many pixels (over {limits.MAX_IMAGE_PIXELS / 1e6:g} megapixels); "
        "resize it before uploading."
    )


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block only costs us the orientation
        return 1


def normalise_image(img: Image.Image) -> Image.Image:
    """An image given as a PIL object (webcam, code) as RGB, at most `limits.MAX_SIDE` on a side;
    one of more than 8 bits (modes ``I;16``, ``I`` beyond 0..255, ``F``) as full-depth ``"F"``."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(img).__name__}")
    if img.mode in ("RGB", "F") and max(img.size) <= limits.MAX_SIDE:
        return img
    rgb = _to_rgb(img, "This image")
    rgb.thumbnail((limits.MAX_SIDE, limits.MAX_SIDE))
    return rgb


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """A new RGB image (transparency composited on white), or full-depth "F" for more than 8 bits."""
    try:
        return _convert(img)
    except DataError:
        raise
    except Exception:  # Pillow refuses some odd mode and metadata combinations
        raise DataError(
            f"{label} uses colour mode {img.mode}, which this app cannot convert."
        ) from None


def _convert(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        # Every level kept (a 12-bit X-ray has 4096): the dataset's window maps them to 8 bits later.
        values = np.asarray(img)
        if mode == "I" and values.size and 0 <= values.min() and values.max() <= 255:
            return _gray(values)  # 8-bit data held in 32-bit ints
        return Image.fromarray(values.astype(np.float32), "F")
    if mode == "F":
        return img.copy()
    if mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if mode == "RGB":
        return img.copy()
    return img.convert("RGB")


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")


def image_digest(img: Image.Image) -> str:
    """A hash of an image's pixels: the same file decoded twice, or one webcam frame sent twice, share it."""
    img = normalise_image(img)
    h = hashlib.blake2b(digest_size=16)
    h.update(struct.pack("<II", *img.size))
    h.update(img.tobytes())
    return h.hexdigest()


def skip_reason(error: DataError, filename: str) -> str:
    """Why a file was skipped, as shown next to its name: a leading repeat of the name is dropped."""
    message = str(error)
    for prefix in (f"{filename!r} ", "This file "):
        if message.startswith(prefix):
            return "it " + message[len(prefix):]
    return message
