"""Study assembly: a study is complete after a quiet period with no new instances, when its
archive's expected count is held (:mod:`gateway.ingest.expected`), when the association that
delivered it is released (:mod:`gateway.ingest.release`), or at once on request. Completion
hands the study to one function, the next stage's entry point.

The timers live in the database (``last_received_at`` + the source's quiet period), not in
memory, so a restart after ``kill -9`` resumes them, and several SCP processes can ingest
while one assembler decides.

The hand-over is durable too (:mod:`gateway.index.due`): a complete study is due to be
handed over; the assembler claims it, calls the hook, and records the outcome — handed
over, or the hook's error and the next attempt after a backoff. A hook that fails because
the database or the broker is away is tried again within the longest backoff of their
return; a process that dies mid-hook leaves a claim that ends with its lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from gateway.errors import DatabaseError, UnknownStudy
from gateway.index.database import Database
from gateway.index.due import DEFAULT_BACKOFF, Backoff, claim_rows, settle
from gateway.index.instances import held_instance_counts
from gateway.index.study_state import OPEN_STATES, ROUTING_STATE, StudyState, set_state
from gateway.index.tables import SourceRow, StudyRow, utcnow
from gateway.ingest.expected import EXPECTED_REASON, Candidate, ExpectedCounts
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


@dataclass(frozen=True)
class _Claim:
    study_id: int
    completed: StudyCompleted
    attempt: int
    lease_until: datetime


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


MIN_PAUSE_S = 0.02  # between ticks that wait for a quiet period's end


class Assembler:
    def __init__(
        self,
        db: Database,
        directory: SourceDirectory,
        default_quiet_s: float,
        on_complete: CompletionHook = log_completion,
        clock: Callable[[], datetime] = utcnow,
        backoff: Backoff = DEFAULT_BACKOFF,
        batch: int = 50,
        expected: ExpectedCounts | None = None,
    ) -> None:
        self.db = db
        self.directory = directory
        self.default_quiet_s = default_quiet_s
        self.on_complete = on_complete
        self.clock = clock
        self.backoff = backoff
        self.batch = batch
        self.expected = expected
        self._database_down = False
        self._wake = threading.Event()
        # When the next open study's quiet period ends (found by the last tick): the loop
        # wakes then, not up to a poll later.
        self._next_quiet_at: datetime | None = None

    def wake(self) -> None:
        """Tick now rather than after the poll interval (a study was completed elsewhere,
        e.g. on release, and waits to be handed over)."""
        self._wake.set()

    def quiet_period(self, source_name: str) -> timedelta:
        source = self.directory.by_name(source_name)
        seconds = source.quiet_period_s if source and source.quiet_period_s else None
        return timedelta(seconds=seconds or self.default_quiet_s)

    def tick(self) -> list[StudyCompleted]:
        """Complete every study whose quiet period has passed or whose expected count is
        held, then hand every complete study that is due over to the hook; returns those
        handed over or tried."""
        now = self.clock()
        self._next_quiet_at = None  # a tick that fails (database away) waits a whole poll
        quiet, candidates = self._open(now)
        for study_uid in quiet:
            self.complete(study_uid, reason="quiet_period", only_if_quiet=True)
        if self.expected is not None and candidates:
            for study_uid in self.expected.ready(c for c in candidates if c.study_uid not in quiet):
                self.complete(study_uid, reason=EXPECTED_REASON)
        return self.hand_over()

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

    def _open(self, now: datetime) -> tuple[list[str], list[Candidate]]:
        """The open studies whose quiet period has passed, and the open studies of sources
        that ask their archive for the expected count (with how many instances each holds)."""
        with self.db.session() as session:
            rows = session.execute(
                select(StudyRow.id, StudyRow.study_uid, StudyRow.last_received_at, SourceRow.name)
                .join(SourceRow)
                .where(StudyRow.state.in_(OPEN_STATES))
            ).all()
            asking = {
                study_id: (uid, source)
                for study_id, uid, _last, name in rows
                if self.expected is not None
                and (source := self.directory.by_name(name)) is not None
                and source.query is not None
            }
            held = held_instance_counts(session, asking)
        ends = [(uid, last + self.quiet_period(name)) for _id, uid, last, name in rows]
        quiet = [uid for uid, end in ends if end <= now]
        self._next_quiet_at = min((end for _uid, end in ends if end > now), default=None)
        candidates = [
            Candidate(uid, source, held.get(study_id, 0))
            for study_id, (uid, source) in asking.items()
        ]
        return quiet, candidates

    def hand_over(self) -> list[StudyCompleted]:
        """Claim the complete studies that are due, offer each to the hook, record how it
        went: handed over (nothing due any more), or due again after a backoff."""
        offered = []
        for claim in self._claim():
            offered.append(claim.completed)
            try:
                self.on_complete(claim.completed)
            except Exception as exc:  # any failure of the next stage: try again later
                self._failed(claim, exc)
            else:
                with self.db.session() as session:  # the hook may have moved it on already
                    settle(
                        session, StudyRow, claim.study_id, claim.lease_until, next_attempt_at=None
                    )
        return offered

    def _claim(self) -> list[_Claim]:
        now = self.clock()
        # An abandoned claim (the process died, the database went away mid-hook) is due
        # again after the longest backoff: recovery stays within that bound.
        lease_until = now + timedelta(seconds=self.backoff.max_s)
        due = (StudyRow.state == ROUTING_STATE.value) & (StudyRow.next_attempt_at <= now)
        with self.db.session() as session:
            rows = claim_rows(
                session,
                StudyRow,
                due,
                order_by=[StudyRow.next_attempt_at, StudyRow.id],
                counter=StudyRow.attempts,
                limit=self.batch,
                lease_until=lease_until,
                skip_locked=not self.db.is_sqlite,
            )
            return [
                _Claim(
                    study.id,
                    StudyCompleted(
                        study_uid=study.study_uid,
                        source=study.source.name,
                        region=study.region_code,
                        completed_at=study.completed_at or now,
                        reason="complete",
                    ),
                    study.attempts,
                    lease_until,
                )
                for study in rows
            ]

    def _failed(self, claim: _Claim, exc: Exception) -> None:
        retry_in = self.backoff.delay_s(claim.attempt)
        error = f"{exc.__class__.__name__}: {exc}"[:2000]
        log.warning(
            "completion hook failed; will retry",
            extra={
                "study_uid": claim.completed.study_uid,
                "attempt": claim.attempt,
                "retry_in_s": retry_in,
                "error": error[:300],
            },
        )
        with self.db.session() as session:
            settle(
                session,
                StudyRow,
                claim.study_id,
                claim.lease_until,
                next_attempt_at=self.clock() + timedelta(seconds=retry_in),
                last_error=error,
            )

    def run(self, stop: threading.Event, poll_s: float) -> None:
        """Tick every ``poll_s``, or at once when woken, until ``stop`` is set (call
        :meth:`wake` after setting it to end without waiting); a failing tick (database
        away) is logged once per outage and retried."""
        while not stop.is_set():
            self._wake.clear()  # before the tick: a wake during it means tick again
            try:
                self.tick()
                if self._database_down:
                    log.info("assembly: database reachable again")
                self._database_down = False
            except DatabaseError as exc:
                if not self._database_down:
                    log.warning("assembly: database unavailable", extra={"error": str(exc)})
                self._database_down = True
            except Exception:
                log.exception("assembly tick failed; retrying")
            self._wake.wait(self.pause(poll_s))

    def pause(self, poll_s: float) -> float:
        """Seconds until the next tick: when the next open study's quiet period ends (and
        :data:`MIN_PAUSE_S`, which lets studies that fall quiet together share a tick), at
        most ``poll_s``. A study sent in a burst used to be completed up to a poll, and the
        previous tick's hand-over, after its quiet period (30 chest radiographs: ~1 s)."""
        if self._next_quiet_at is None:
            return poll_s
        left = (self._next_quiet_at - self.clock()).total_seconds()
        return min(poll_s, max(left, 0.0) + MIN_PAUSE_S)
