"""Uploaded weights files, each kept once under its content's hash for as long as a run may need it.

A run records the path of the file it started from, so that path must never change meaning: a
later upload gets a new name (its own hash), and a refused upload never replaces anything. Each
file is charged to whoever uploaded it (``owners.json``: file -> {owner: when}), within a quota
per person; the disk cap (``RunStore.enforce_cap``) removes an owner's unused uploads before any run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import CheckpointError

__all__ = ["Upload", "UploadStore", "stored_suffix", "OWNERS"]

OWNERS = "owners.json"

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

    def __init__(self, data_dir: str | Path, quota_bytes: int | None = None):
        self.root = Path(data_dir) / "uploads"
        self.quota_bytes = quota_bytes

    def add(self, content: bytes, name: str, check: Callable[[Path], object] | None = None, owner: str = "",
            in_use: Iterable[str | Path | None] = ()) -> Upload:
        """Keep ``content`` if ``check(path)`` accepts it (raises otherwise, leaving nothing behind).

        ``check`` reads the file under the person's own name, so its messages quote that name. The file
        is charged to ``owner``: beyond their quota their oldest uploads that no run uses (``in_use``)
        make room, and when that is not enough the upload is refused before it is written.
        """
        suffix = stored_suffix(name)
        shown = _display_name(name)
        sha = hashlib.sha256(content).hexdigest()
        target = self.root / f"{sha}{suffix}"
        if owner and self.quota_bytes is not None and not self._charged(target, owner):
            self._make_room(owner, len(content), in_use, shown)
        self.root.mkdir(parents=True, exist_ok=True)
        incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            candidate = incoming / shown  # its suffix says how to read it
            candidate.write_bytes(content)
            if check is not None:
                check(candidate)
            if target.is_file():
                target.touch()  # the same bytes again: still wanted, so prune's clock starts over
            else:
                os.replace(candidate, target)  # whole or not at all
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        if owner:
            self._charge(target, owner)
        return Upload(target, shown, sha)

    # --- who uploaded what ---------------------------------------------------------------
    def _owners(self) -> dict[str, dict[str, float]]:
        try:
            return json.loads((self.root / OWNERS).read_text())
        except (OSError, ValueError):
            return {}

    def _save_owners(self, owners: dict) -> None:
        tmp = self.root / f"{OWNERS}.tmp"
        tmp.write_text(json.dumps(owners))
        os.replace(tmp, self.root / OWNERS)

    def _charged(self, path: Path, owner: str) -> bool:
        return owner in self._owners().get(path.name, {})

    def _charge(self, path: Path, owner: str) -> None:
        owners = self._owners()
        owners.setdefault(path.name, {})[owner] = time.time()
        self._save_owners(owners)

    def owners_of(self, path: Path) -> list[str]:
        """Who uploaded this file (each is charged its whole size)."""
        return list(self._owners().get(Path(path).name, {}))

    def usage_of(self, owner: str) -> dict[Path, float]:
        """``owner``'s uploads still stored: path -> when they last uploaded it."""
        return {self.root / name: who[owner] for name, who in self._owners().items()
                if owner in who and (self.root / name).is_file()}

    def remove(self, path: Path) -> int:
        """Delete a stored upload (it must be unused); returns the bytes freed."""
        path = Path(path)
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            size = 0
        owners = self._owners()
        if owners.pop(path.name, None) is not None:
            self._save_owners(owners)
        return size

    def _make_room(self, owner: str, incoming: int, in_use: Iterable[str | Path | None], shown: str) -> None:
        """Remove ``owner``'s oldest unused uploads until ``incoming`` more bytes fit their quota."""
        used = {Path(p).resolve() for p in in_use if p}
        mine = sorted(self.usage_of(owner).items(), key=lambda kv: kv[1])
        total = sum(p.stat().st_size for p, _ in mine)
        spare = [p for p, _ in mine if p.resolve() not in used and len(self.owners_of(p)) == 1]
        if total + incoming - sum(p.stat().st_size for p in spare) > self.quota_bytes:
            raise CheckpointError(
                f"{shown} ({incoming / 2**20:.0f} MB) does not fit the {self.quota_bytes / 2**20:.0f} MB one person may "
                f"upload: your weights files take {total / 2**20:.0f} MB, and your runs still use them. Remove "
                "runs you no longer need, or upload a smaller file.")
        for path in spare:
            if total + incoming <= self.quota_bytes:
                break
            total -= self.remove(path)

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
            self.remove(path)
            removed.append(path)
        for stale in self.root.glob(".incoming-*"):  # left by a server killed mid-check
            if now - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        return removed
