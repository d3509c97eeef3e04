"""Uploaded weights files, each kept once under its content's hash for as long as a run may need it.

A run records the path of the file it started from, so that path must never change meaning: a
later upload gets a new name (its own hash), and a refused upload never replaces anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import CheckpointError

__all__ = ["Upload", "UploadStore", "stored_suffix"]

# Both torch.save formats are read the same way (core.models.read_state_dict), so one suffix serves.
_SUFFIXES = {".safetensors": ".safetensors", ".pt": ".pt", ".pth": ".pt", ".bin": ".pt", ".ckpt": ".pt"}
_STORED = re.compile(r"[0-9a-f]{64}\.(safetensors|pt)")
DAY = 24 * 3600.0


@dataclass(frozen=True)
class Upload:
    """A stored upload: where it is, and the name its owner gave it (for messages)."""

    path: Path
    name: str
    sha256: str


def stored_suffix(name: str) -> str:
    """The suffix a weights file is stored under, or a CheckpointError naming what is accepted."""
    suffix = _SUFFIXES.get(Path(name).suffix.lower())
    if suffix is None:
        raise CheckpointError(f"{_display_name(name)}: weights must be a .safetensors, .pt or .pth file.")
    return suffix


def _display_name(name: str) -> str:
    # The browser sends a base name; keep only that, printable and short, so messages can quote it.
    base = Path(name.replace("\\", "/")).name
    stem = "".join(ch for ch in Path(base).stem if ch.isprintable()).strip()[:100]
    return (stem or "weights") + Path(base).suffix.lower()


class UploadStore:
    """``<data_dir>/uploads/<sha256>.safetensors|.pt``, shared by everyone (equal files are kept once)."""

    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir) / "uploads"

    def add(self, content: bytes, name: str, check: Callable[[Path], object] | None = None) -> Upload:
        """Keep ``content`` if ``check(path)`` accepts it (raises otherwise, leaving nothing behind).

        ``check`` reads the file under the person's own name, so its messages quote that name.
        """
        suffix = stored_suffix(name)
        shown = _display_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            candidate = incoming / shown  # its suffix says how to read it
            candidate.write_bytes(content)
            if check is not None:
                check(candidate)
            sha = hashlib.sha256(content).hexdigest()
            target = self.root / f"{sha}{suffix}"
            if target.is_file():
                target.touch()  # the same bytes again: still wanted, so prune's clock starts over
            else:
                os.replace(candidate, target)  # whole or not at all
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        return Upload(target, shown, sha)

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.glob("*") if p.is_file() and _STORED.fullmatch(p.name))

    def usage_bytes(self) -> int:
        """Bytes under ``uploads/``, stored files and any upload still being checked."""
        if not self.root.exists():
            return 0
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def prune(self, in_use: Iterable[str | Path | None], min_age_s: float = DAY) -> list[Path]:
        """Remove stored files no run refers to (``in_use``) and nobody uploaded for ``min_age_s``.

        The age keeps a file someone has just chosen but not trained from yet.
        """
        keep = {Path(p).resolve() for p in in_use if p}
        now = time.time()
        removed = []
        for path in self.files():
            if path.resolve() in keep or now - path.stat().st_mtime < min_age_s:
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
        for stale in self.root.glob(".incoming-*"):  # left by a server killed mid-check
            if now - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        return removed
