"""Study assembly: a study is complete after a quiet period with no new instances, or at once
on request. Completion hands the study to one function, the next stage's entry point.

The timers live in the database (``last_received_at`` + the source's quiet period), not in
memory, so a restart after ``kill -9`` resumes them, and several SCP processes can ingest
while one assembler decides.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from gateway.errors import UnknownStudy
from gateway.index.database import Database
from gateway.index.study_state import OPEN_STATES, StudyState, set_state
from gateway.index.tables import SourceRow, StudyRow, utcnow
from gateway.ingest.sources import SourceDirectory

log = logging.getLogger(__name__)


class StudyCompleted(BaseModel):
    """What the next stage receives when a study is complete (ids, never pixels)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study_uid: str
    source: str
    region: str
    completed_at: datetime
    reason: str


CompletionHook = Callable[[StudyCompleted], None]


def log_completion(completed: StudyCompleted) -> None:
    """The hook used until a routing stage is plugged in."""
    log.info(
        "study complete",
        extra={
            "study_uid": completed.study_uid,
            "source": completed.source,
            "reason": completed.reason,
        },
    )


class Assembler:
    def __init__(
        self,
        db: Database,
        directory: SourceDirectory,
        default_quiet_s: float,
        on_complete: CompletionHook = log_completion,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.directory = directory
        self.default_quiet_s = default_quiet_s
        self.on_complete = on_complete
        self.clock = clock
        self._offered: set[tuple[str, datetime]] = set()

    def quiet_period(self, source_name: str) -> timedelta:
        source = self.directory.by_name(source_name)
        seconds = source.quiet_period_s if source and source.quiet_period_s else None
        return timedelta(seconds=seconds or self.default_quiet_s)

    def tick(self) -> list[StudyCompleted]:
        """Complete every study whose quiet period has passed, then offer completed studies
        to the hook (once per process; again after a restart — the hook is idempotent)."""
        now = self.clock()
        for study_uid in self._due(now):
            self.complete(study_uid, reason="quiet_period", only_if_quiet=True)
        return self._offer_completed()

    def complete(self, study_uid: str, reason: str = "manual", only_if_quiet: bool = False) -> bool:
        """Mark the study complete now; False when it was not open (or, with
        ``only_if_quiet``, when an instance arrived since it was found due)."""
        with self.db.session() as session:
            row = session.execute(
                select(StudyRow, SourceRow.name)
                .join(SourceRow)
                .where(StudyRow.study_uid == study_uid)
                .with_for_update()
            ).one_or_none()
            if row is None:
                raise UnknownStudy(f"no study {study_uid}")
            study, source_name = row
            now = self.clock()
            if study.state not in OPEN_STATES:
                return False
            if only_if_quiet and study.last_received_at + self.quiet_period(source_name) > now:
                return False
            study.completed_at = now
            set_state(session, study, StudyState.COMPLETE, now, detail={"reason": reason})
        log.info("study assembled", extra={"study_uid": study_uid, "reason": reason})
        return True

    def _due(self, now: datetime) -> list[str]:
        with self.db.session() as session:
            rows = session.execute(
                select(StudyRow.study_uid, StudyRow.last_received_at, SourceRow.name)
                .join(SourceRow)
                .where(StudyRow.state.in_(OPEN_STATES))
            ).all()
        return [uid for uid, last, source in rows if last + self.quiet_period(source) <= now]

    def _offer_completed(self) -> list[StudyCompleted]:
        with self.db.session() as session:
            rows = session.execute(
                select(
                    StudyRow.study_uid, StudyRow.completed_at, StudyRow.region_code, SourceRow.name
                )
                .join(SourceRow)
                .where(StudyRow.state == StudyState.COMPLETE.value)
            ).all()
        offered = []
        for study_uid, completed_at, region, source in rows:
            if completed_at is None or (study_uid, completed_at) in self._offered:
                continue
            completed = StudyCompleted(
                study_uid=study_uid,
                source=source,
                region=region,
                completed_at=completed_at,
                reason="complete",
            )
            try:
                self.on_complete(completed)
            except Exception:
                log.exception(
                    "completion hook failed; will retry after restart",
                    extra={"study_uid": study_uid},
                )
            self._offered.add((study_uid, completed_at))
            offered.append(completed)
        return offered

    def run(self, stop: threading.Event, poll_s: float) -> None:
        """Tick until ``stop`` is set; a failing tick (database away) is logged and retried."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("assembly tick failed; retrying")
            stop.wait(poll_s)
