"""The entries of a ZIP archive: which are safe to read, reading one within its declared size, and
decoding the planned ones under one upload's pixel budget. ``core.data.archives`` and
``core.data.labels_csv`` label what this module reads."""

from __future__ import annotations

import io
import re
import stat
import struct
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from core.data import limits
from core.data.datasets import LoadReport
from core.data.dicom import is_dicom
from core.data.images import IMAGE_EXTENSIONS, BudgetExceeded, Upload, decode_file, frame_name, skip_reason
from core.data.names import human_bytes
from core.errors import DataError

__all__ = ["Entry", "display_name", "safe_parts", "is_junk", "extension", "mark_images", "entry_problem",
           "read_entry", "check_directory_size", "too_many_entries", "skipped_hint", "decode_entries"]

_ARCHIVE_EXTENSIONS = (
    ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".lz", ".cab", ".jar",
)
_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
_READ_CHUNK = 1 << 16


@dataclass
class Entry:
    info: zipfile.ZipInfo
    name: str  # as shown to the person
    parts: list[str]  # path parts, "." and empty parts dropped
    image: bool = False  # an image by its extension, or a DICOM by its content (see mark_images)



def display_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if not info.flag_bits & 0x800:
        # Many tools write UTF-8 names without setting the flag; zipfile read them as cp437.
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    # Names end up in the page and in class names: no control characters.
    return re.sub(r"[\x00-\x1f\x7f]", "?", name)


def safe_parts(name: str) -> list[str] | None:
    """The path's parts, or None when it is absolute, has a drive letter or climbs out with ..."""
    path = name.replace("\\", "/")
    if path.startswith("/"):
        return None
    parts = path.split("/")
    if re.match(r"^[A-Za-z]:", parts[0]):
        return None
    parts = [p for p in parts if p not in ("", ".")]
    if ".." in parts:
        return None
    return parts


def is_junk(parts: list[str]) -> bool:
    base = parts[-1]
    return (
        any(p.lower() == "__macosx" for p in parts)
        or base.startswith("._")
        or base.lower() in _JUNK_NAMES
    )


def extension(filename: str) -> str:
    dot = filename.rfind(".")
    return filename[dot:].lower() if dot > 0 else ""




def _may_be_dicom(ext: str) -> bool:
    """Scanners name files IM000001 or by their UID (1.2.840.113619.2.55.3): no extension, or digits."""
    return ext == "" or ext[1:].isdigit()


def _starts_like_dicom(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    try:
        with zf.open(info) as f:
            return is_dicom(f.read(132))
    except Exception:  # encrypted, damaged: entry_problem or read_entry says why
        return False


def mark_images(zf: zipfile.ZipFile, entries: Sequence[Entry]) -> list[Entry]:
    """Mark which entries are images: by extension, or by the DICOM marker for names a scanner
    gives (no extension, or digits); only those entries' first 132 bytes are read. Returns them."""
    for entry in entries:
        ext = extension(entry.parts[-1])
        entry.image = ext in IMAGE_EXTENSIONS or (
            _may_be_dicom(ext) and not entry.info.is_dir() and _starts_like_dicom(zf, entry.info))
    return list(entries)


def entry_problem(entry: Entry) -> str | None:
    """Why an entry is not read, judged from its directory record alone; None if it is fine."""
    info = entry.info
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "it is a symbolic link; links are not followed"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return "it is not a regular file"
    if info.flag_bits & 0x1:
        return "it is encrypted (password-protected)"
    ext = extension(entry.parts[-1])
    if ext in _ARCHIVE_EXTENSIONS:
        return "it is an archive inside the archive; unpack it and zip its folders instead"
    if not entry.image:
        return "it is not an image file (use .jpg, .png, .gif, .bmp, .webp, .tif or .dcm)"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # bzip2/LZMA decompress a whole chunk at once, unbounded; real image zips use deflate.
        return "it uses an unusual compression method; zip the folders again with standard settings"
    if info.file_size > limits.MAX_FILE_BYTES:
        return (f"it is {human_bytes(info.file_size)} unpacked; images up to "
                f"{human_bytes(limits.MAX_FILE_BYTES)} are accepted")
    if info.file_size > limits.RATIO_EXEMPT_BYTES and (
        info.file_size > limits.MAX_COMPRESSION_RATIO * info.compress_size
    ):
        return (f"it is compressed more than {limits.MAX_COMPRESSION_RATIO}:1, the way zip bombs are; "
                "save genuine images as PNG or JPEG")
    return None


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The entry's bytes, never more than its header declared (or the per-file cap)."""
    limit = min(info.file_size, limits.MAX_FILE_BYTES)
    chunks = []
    got = 0
    try:
        with zf.open(info) as f:
            while True:
                chunk = f.read(min(_READ_CHUNK, limit + 1 - got))
                if not chunk:
                    break
                got += len(chunk)
                if got > limit:
                    raise DataError("it unpacks to more data than its header declares")
                chunks.append(chunk)
    except DataError:
        raise
    except Exception:  # zipfile, zlib and struct all raise on damaged entries
        raise DataError("it is damaged inside the archive and cannot be unpacked") from None
    return b"".join(chunks)




def check_directory_size(fp) -> None:
    """Refuse archives whose end record announces too many entries, before zipfile reads them."""
    try:
        fp.seek(0, io.SEEK_END)
        size = fp.tell()
        tail_len = min(size, 22 + 65535)
        fp.seek(size - tail_len)
        tail = fp.read(tail_len)
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or pos + 22 > len(tail):
            return  # zipfile will say it is not a zip
        entries, directory_size = struct.unpack("<HI", tail[pos + 10 : pos + 16])
        if entries == 0xFFFF or directory_size == 0xFFFFFFFF:
            # ZIP64: its own end record sits just before the 20-byte locator, as zipfile reads it.
            record_at = size - tail_len + pos - 20 - 56
            if record_at >= 0:
                fp.seek(record_at)
                record = fp.read(56)
                if record[:4] == b"PK\x06\x06":
                    entries, directory_size = struct.unpack("<QQ", record[32:48])
    except (OSError, struct.error, ValueError):
        return
    finally:
        try:
            fp.seek(0)
        except Exception:
            pass
    if entries > limits.MAX_ENTRIES:
        raise too_many_entries(entries)
    if directory_size > limits.MAX_ENTRIES * limits.MAX_DIRECTORY_BYTES_PER_ENTRY:
        raise too_many_entries(None)


def too_many_entries(n: int | None) -> DataError:
    held = f"holds {n} entries" if n is not None else "lists too many entries"
    return DataError(
        f"This ZIP {held}; at most {limits.MAX_ENTRIES} are accepted. Use fewer images per class."
    )



def skipped_hint(report: LoadReport) -> str:
    if not report.skipped:
        return ""
    shown = "; ".join(f"{name}: {reason.rstrip('.')}" for name, reason in report.skipped[:3])
    more = len(report.skipped) - 3
    return f" Skipped {len(report.skipped)} file(s) — {shown}" + (f"; and {more} more." if more > 0 else ".")



def decode_entries(zf: zipfile.ZipFile, planned: Sequence[tuple[Entry, Any]], report: LoadReport,
                   check: Callable[[Entry], str | None] | None = None,
                   frames: str = "middle") -> list[tuple[Image.Image, Any, str]]:
    """Decode the planned entries in order: ``(image, label, name)`` for each readable picture (one
    per frame used of a multi-frame DICOM, its name saying which).

    Every image of one upload shares one pixel budget; running out fails the whole upload. An entry
    that ``check`` finds a problem with, or that does not decode, is skipped with its reason. What
    the DICOM files were goes into ``report.notes``.
    """
    upload = Upload(frames)
    items = []
    for entry, label in planned:
        problem = check(entry) if check is not None else None
        if problem is not None:
            report.skipped.append((entry.name, problem))
            continue
        try:
            pictures = decode_file(read_entry(zf, entry.info), entry.parts[-1], upload)
        except BudgetExceeded:
            raise
        except DataError as e:
            report.skipped.append((entry.name, skip_reason(e, entry.parts[-1])))
            continue
        items += [(img, label, frame_name(entry.name, frame)) for img, frame in pictures]
    report.notes += upload.dicom.notes()
    return items
