"""Patient's Name (PN) as the index matches it: case folded, so that QIDO-RS matching
(PS3.4 C.2.2.2.1 lets PN match insensitive to case) and the prior query's same-patient check
agree on every backend (SQLite's ``lower`` folds ASCII only; Cyrillic names must fold too).
"""

from __future__ import annotations


def folded(name: str | None) -> str | None:
    """``name`` for matching: case folded, each component trimmed, trailing empty
    components dropped (``Ivanov^Ivan^^`` and ``IVANOV^IVAN`` are one name)."""
    if not name:
        return None
    groups = []
    for group in name.split("="):  # alphabetic, ideographic, phonetic representations
        groups.append("^".join(part.strip() for part in group.split("^")).rstrip("^"))
    return "=".join(groups).rstrip("=").casefold()[:200] or None


def folded_pattern(pattern: str) -> str:
    """A QIDO-RS PatientName value folded like the names it is matched against (``*`` and
    ``?`` keep their meaning); an empty value matches no name."""
    return folded(pattern) or ""
