"""Completion on release: for a source that sends one study per association, the study is
complete as soon as the association that delivered it is released.

The C-STORE handler notes which studies each association delivered (only for sources with
``complete_on_release``); on A-RELEASE those studies are completed in the index at once —
the same transaction the quiet period uses, which makes the hand-over due now — and the
assembler is woken to hand them over. Nothing lives only in memory: a process that dies
between the release and that commit leaves the study open, and its quiet period completes
it. An A-ABORT (or a connection that just drops) completes nothing: the sender did not say
it was done, so the quiet period decides.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from gateway.errors import DatabaseError

log = logging.getLogger(__name__)

RELEASE_REASON = "association_released"

# (study uid, reason) → True when the study was open and is now complete.
Complete = Callable[[str, str], bool]


class ReleaseCompletion:
    """Which studies each open association delivered; completes them on release.

    ``complete`` marks a study complete in the index (:meth:`Assembler.complete`); ``wake``
    tells the assembler there is something to hand over (a no-op in a process without
    one: it finds the study on its next tick).
    """

    def __init__(self, complete: Complete, wake: Callable[[], None] = lambda: None) -> None:
        self._complete = complete
        self._wake = wake
        self._lock = threading.Lock()
        # Keyed by the association itself, weakly: one whose connection just dropped
        # (neither released nor aborted) leaves no entry behind once it is gone.
        self._delivered: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()

    def delivered(self, assoc: Any, study_uid: str) -> None:
        """An instance of ``study_uid`` was stored (or was already held) on ``assoc``."""
        with self._lock:
            self._delivered.setdefault(assoc, set()).add(study_uid)

    def released(self, assoc: Any) -> list[str]:
        """The association was released: complete what it delivered; returns the studies
        completed now."""
        completed = [
            study_uid
            for study_uid in sorted(self._forget(assoc))
            if self._complete_quietly(study_uid)
        ]
        if completed:
            self._wake()
        return completed

    def aborted(self, assoc: Any) -> None:
        """The association was aborted: nothing it delivered is completed."""
        self._forget(assoc)

    def pending(self) -> int:
        """Associations with delivered studies not yet released (for tests and metrics)."""
        with self._lock:
            return len(self._delivered)

    def _forget(self, assoc: Any) -> set[str]:
        with self._lock:
            return self._delivered.pop(assoc, set())

    def _complete_quietly(self, study_uid: str) -> bool:
        try:
            return self._complete(study_uid, RELEASE_REASON)
        except DatabaseError as exc:
            # The study stays open: its quiet period completes it once the index is back.
            log.warning(
                "completion on release failed; the quiet period will complete the study",
                extra={"study_uid": study_uid, "error": str(exc)[:300]},
            )
            return False
