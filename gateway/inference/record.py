"""The record stage: a job's findings and its end state, written in one transaction with
whatever other jobs finished — or started (:mod:`gateway.inference.start`) — at the same
moment (group commit).

Each job's write is what it was alone — the row locked, left alone if another run already
finished it, its old findings replaced, ``inferred`` set with its timings — so redelivery
still never duplicates; only the commit (and its fsync) is shared. A group whose
transaction fails is written again one job at a time, so one job's failure is its own.
The caller waits for its job's commit: nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from gateway.index.database import Database
from gateway.index.tables import FindingRow, JobRow
from gateway.inference.findings import Finding
from gateway.inference.start import Start, StartedJob, write_start
from gateway.jobs.states import DONE_STATES, JobState, set_job_state

log = logging.getLogger(__name__)

MAX_GROUP = 64  # jobs per transaction


@dataclass(frozen=True)
class Outcome:
    """What one job's run produced, to be recorded."""

    job_id: int
    findings: list[Finding]
    timings_ms: dict[str, float]


def write_outcome(session: Session, outcome: Outcome) -> bool:
    """One job's findings and state in ``session``; False when it had ended meanwhile."""
    job = session.get(JobRow, outcome.job_id, with_for_update=True)  # one runner records
    if job is None or job.state in DONE_STATES:
        return False
    # Core statements, not the unit of work: no objects to track, evaluate or flush (the
    # session holds no FindingRow of this job to keep in step).
    session.execute(
        delete(FindingRow).where(FindingRow.job_id == outcome.job_id),
        execution_options={"synchronize_session": False},
    )
    if outcome.findings:
        values = [finding.row_values(outcome.job_id) for finding in outcome.findings]
        session.execute(insert(FindingRow), values)
    job.timings_ms = outcome.timings_ms
    positive = any(f.positive for f in outcome.findings)
    detail = {"positive": positive, "timings_ms": outcome.timings_ms}
    set_job_state(session, job, JobState.INFERRED, detail)
    return True


Write = Outcome | Start  # what the recorder commits: a job's end, or its start
_Waiting = tuple[Write, "Future[Any]"]


def _write(session: Session, write: Write) -> bool | StartedJob | None:
    if isinstance(write, Start):
        return write_start(session, write)
    return write_outcome(session, write)


class GroupRecorder:
    """One thread that commits every job write waiting — outcomes and starts — in one
    transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: list[_Waiting] = []
        self._changed = threading.Condition()
        self._closed = False
        # Job writes per transaction, for tests and the benchmark: the recent ones only (a
        # worker runs for months).
        self.groups: deque[int] = deque(maxlen=65536)
        self._thread = threading.Thread(target=self._loop, name="recorder", daemon=True)
        self._thread.start()

    def record(self, outcome: Outcome) -> bool:
        """Record ``outcome`` and return once it is committed (False: the job had ended);
        raises what the database raised."""
        done: bool = self._submit(outcome)
        return done

    def start(self, start: Start) -> StartedJob | None:
        """Claim the job for ``start.runner`` and return it with its keys once committed
        (None: it had ended, or a live copy of the delivery runs it); raises what the
        database raised."""
        started: StartedJob | None = self._submit(start)
        return started

    def _submit(self, write: Write) -> Any:
        future: Future[Any] = Future()
        with self._changed:
            if self._closed:
                raise RuntimeError("the recorder is closed")
            self._waiting.append((write, future))
            self._changed.notify()
        return future.result()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if not self._waiting:
                    return
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            self._commit(group)

    def _commit(self, group: Sequence[_Waiting]) -> None:
        self.groups.append(len(group))
        try:
            with self.db.session() as session:
                # Rows locked in id order: two workers' groups never wait on each other in
                # a cycle (PostgreSQL would end one as a deadlock).
                order = sorted(range(len(group)), key=lambda i: group[i][0].job_id)
                wrote = {i: _write(session, group[i][0]) for i in order}
                written = [wrote[i] for i in range(len(group))]
        except Exception as exc:
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            log.warning(
                "a group of job records failed; recorded one by one",
                extra={"jobs": len(group), "error": str(exc)[:200]},
            )
            for one in group:
                self._commit([one])
            return
        for (_done, future), result in zip(group, written, strict=True):
            future.set_result(result)
