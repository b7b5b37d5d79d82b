"""Expected counts: a study of a source with ``query`` is complete once the gateway holds as
many instances as the source's archive says the study has (study-level C-FIND,
NumberOfStudyRelatedInstances).

The archive is asked once per study, not per instance: the answer is cached, and asked
again only after the source's ``refresh_s`` while fewer instances are held (the archive may
still have been receiving). An archive that does not answer is left alone for ``refresh_s``
(one timeout per outage, not one per study and tick), and its studies complete by their
quiet period; the warning is logged once per study.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.ingest.sources import ArchiveQuery, Source
from pacs_adapters.dicom_find import study_instance_count
from pacs_adapters.dicom_scu import Peer, ScuError

log = logging.getLogger(__name__)

EXPECTED_REASON = "expected_count"

# (the archive, our calling AE, study uid) → the count, None when the archive lacks the study;
# raises ScuError when the archive cannot be asked.
Finder = Callable[[ArchiveQuery, str, str], int | None]


def find_with_scu(query: ArchiveQuery, calling_ae: str, study_uid: str) -> int | None:
    peer = Peer(
        host=query.host,
        port=query.port,
        called_ae=query.ae_title,
        calling_ae=query.calling_ae or calling_ae,
        timeout_s=query.timeout_s,
    )
    return study_instance_count(peer, study_uid)


@dataclass(frozen=True)
class Candidate:
    """An open study of a source with ``query``, and how many instances it holds."""

    study_uid: str
    source: Source
    held: int


@dataclass(frozen=True)
class _Answer:
    count: int | None  # None: no usable answer
    asked_at: float


class ExpectedCounts:
    """Which candidates hold as many instances as their archive expects (thread-confined:
    the assembler's thread asks)."""

    def __init__(
        self,
        calling_ae: str,
        find: Finder = find_with_scu,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.calling_ae = calling_ae
        self.find = find
        self.clock = clock
        self._answers: dict[str, _Answer] = {}
        self._archive_away_until: dict[str, float] = {}  # source name → monotonic time
        self._warned: set[str] = set()

    def ready(self, candidates: Iterable[Candidate]) -> list[str]:
        """The study uids among ``candidates`` that hold their expected count."""
        candidates = list(candidates)
        self._forget_all_but({c.study_uid for c in candidates})
        return [
            c.study_uid
            for c in candidates
            if (expected := self._expected(c)) is not None and c.held >= expected
        ]

    def known(self, study_uid: str) -> int | None:
        """The archive's count for an open study as last asked; None when not (yet) known."""
        answer = self._answers.get(study_uid)
        return answer.count if answer else None

    def _expected(self, candidate: Candidate) -> int | None:
        query = candidate.source.query
        if query is None:
            return None
        now = self.clock()
        answer = self._answers.get(candidate.study_uid)
        if answer is not None and (
            now - answer.asked_at < query.refresh_s
            or (answer.count is not None and candidate.held >= answer.count)
        ):
            return answer.count
        if self._archive_away_until.get(candidate.source.name, 0.0) > now:
            return answer.count if answer else None
        count = self._ask(candidate, query, now)
        self._answers[candidate.study_uid] = _Answer(count, now)
        return count

    def _ask(self, candidate: Candidate, query: ArchiveQuery, now: float) -> int | None:
        try:
            count = self.find(query, self.calling_ae, candidate.study_uid)
        except ScuError as exc:
            self._archive_away_until[candidate.source.name] = now + query.refresh_s
            self._warn_once(candidate, "archive did not answer the C-FIND", str(exc))
            return None
        if count is None:
            self._warn_once(candidate, "archive does not know the study", "")
        return count

    def _warn_once(self, candidate: Candidate, what: str, error: str) -> None:
        if candidate.study_uid in self._warned:
            return
        self._warned.add(candidate.study_uid)
        log.warning(
            f"expected count: {what}; the quiet period completes the study",
            extra={
                "study_uid": candidate.study_uid,
                "source": candidate.source.name,
                "error": error[:300],
            },
        )

    def _forget_all_but(self, open_uids: set[str]) -> None:
        # A study no longer open needs no answer; reopened (superseded), it is asked anew.
        for uid in [uid for uid in self._answers if uid not in open_uids]:
            del self._answers[uid]
        self._warned &= open_uids
