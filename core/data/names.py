"""Names a person sees: one spelling per class name, sizes and lists in words, a dataset's name."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Sequence

from core.data import limits
from core.errors import DataError

__all__ = ["human_bytes", "normalise_name", "clean_class_name", "check_name_length", "look_alike_key",
           "look_alike_groups", "described",
           "sorted_names", "some", "dataset_name"]


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def normalise_name(text: str) -> str:
    """One spelling per name a person sees: composed Unicode (NFC), and no invisible characters.

    Otherwise a decomposed "café", a zero-width space or a right-to-left override would each make
    a class that looks the same as another one but is not.
    """
    text = unicodedata.normalize("NFC", text)
    # Cf: format characters (zero-width spaces and joiners, direction overrides, BOM);
    # Cc: control characters (tabs, newlines) -- neither belongs in a class name.
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc"))
    return text.strip()


def check_name_length(name: str, what: str = "A class name") -> str:
    """``name`` itself, or a DataError when it is longer than ``limits.MAX_NAME_CHARS``."""
    most = limits.MAX_NAME_CHARS
    if len(name) > most:
        raise DataError(f"{what} may have at most {most} characters, but {name[:30]!r}… has {len(name):,}. "
                        "Give it a shorter name.")
    return name


def clean_class_name(name) -> str:
    cleaned = normalise_name(name) if isinstance(name, str) else ""
    if not cleaned:
        raise DataError("A class needs a name: type one in before adding images.")
    return check_name_length(cleaned)


@functools.cache
def _prototypes() -> dict[str, str]:
    """Each character that Unicode's confusables data (UTS #39) says looks like another -> one
    character of its group (the lowest code point), so look-alikes share a spelling."""
    from confusable_homoglyphs.confusables import confusables_data

    parent: dict[str, str] = {}

    def root(ch: str) -> str:
        while parent.setdefault(ch, ch) != ch:
            ch = parent[ch]
        return ch

    for ch, entries in confusables_data.items():
        for entry in entries:
            other = "".join(c for c in entry["c"] if unicodedata.category(c) != "Cf")  # drop direction marks
            if len(ch) == 1 and len(other) == 1:
                a, b = sorted((root(ch), root(other)))
                parent[b] = a
    return {ch: root(ch) for ch in parent if root(ch) != ch}


def look_alike_key(name: str) -> str:
    """What ``name`` looks like: compatibility forms folded (NFKC: "ｃａｔ" is "cat"), case folded,
    and every character replaced by one of its confusables group ("cаt" with a Cyrillic "а" is
    "cat"). Two names with the same key look the same to a person."""
    table = _prototypes()
    looks = "".join(table.get(ch, ch) for ch in unicodedata.normalize("NFKC", normalise_name(name)))
    # grouped before folding case too: "I" looks like "l" but folds to "i"
    return "".join(table.get(ch, ch) for ch in looks.casefold())


def look_alike_groups(names: Iterable[str]) -> list[list[str]]:
    """Names that look the same (``look_alike_key``) but differ beyond upper and lower case."""
    by_look: dict[str, list[str]] = {}
    for name in names:
        by_look.setdefault(look_alike_key(name), []).append(name)
    return [group for group in by_look.values() if len({n.casefold() for n in group}) > 1]


def described(groups: Sequence[Sequence[str]], shown: int = 5) -> str:
    """A few groups of look-alike names, escaped (``ascii``) so a reader sees where they differ."""
    text = "; ".join(" / ".join(ascii(n) for n in group) for group in groups[:shown])
    return text + (f"; and {len(groups) - shown:,} more" if len(groups) > shown else "")


def sorted_names(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda s: (s.casefold(), s))


def some(names: Sequence[str], shown: int = 5) -> str:
    """A few names, quoted, and how many more: a message stays short with 2,000 classes."""
    listed = ", ".join(repr(n) for n in names[:shown])
    return listed + (f" and {len(names) - shown:,} more" if len(names) > shown else "")


def _listed(names: Sequence[str], most: int = 3) -> str:
    """A dataset name's list of classes: the first few, unquoted, and how many more."""
    names = list(names)
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"


def dataset_name(classes: Sequence[str], base: str = "", base_classes: Sequence[str] = ()) -> str:
    """A dataset's name that says what it holds.

    ``base`` names the set it started from (the demo set, a ZIP) and ``base_classes`` are that set's
    classes; a dataset of one's own images alone is "Your images (mug, cup)".
    """
    classes = list(classes)
    kept = [c for c in classes if c in set(base_classes)]
    removed = [c for c in base_classes if c not in set(classes)]
    own = [c for c in classes if c not in set(base_classes)]
    part = ""
    if base and kept:
        part = base
        if removed:
            part += f" without {_listed(removed)}" if len(removed) <= len(kept) else f", only {_listed(kept)}"
    if not own:
        return part or "An empty dataset"
    return f"{part} + {_listed(own)}" if part else f"Your images ({_listed(own)})"

