"""The record stage: a job's findings and its end state, written in one transaction with
whatever other jobs finished — or started (:mod:`gateway.inference.start`) — at the same
moment (group commit).

Each job's write is what it was alone — the row locked, left alone if another run already
finished it, its old findings replaced, ``inferred`` set with its timings — so redelivery
still never duplicates; only the transaction is shared, its rows locked, decided and
written as a group in Core statements (:mod:`gateway.inference.group_write`: the ORM's
unit of work was ~40 % of this thread's time). A group whose
transaction fails is written again one job at a time, so one job's failure is its own.
The caller waits for its job's commit: nothing is acknowledged before it is durable.

A job whose batch has run announces its outcome (:meth:`GroupRecorder.ending`): a group
waits for announced outcomes up to :data:`ANNOUNCED_WAIT_S`, so the jobs of one batch
share one transaction; a lone job, announced by nobody else, never waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from gateway.index.database import Database, KeptConnection
from gateway.index.tables import utcnow
from gateway.inference.findings import Finding
from gateway.inference.group_write import GroupWrite, LockedJob, lock_jobs
from gateway.inference.start import Start, StartedJob, start_job, started_jobs
from gateway.jobs.states import DONE_STATES, JobState

log = logging.getLogger(__name__)

MAX_GROUP = 64  # jobs per transaction
# How long a group waits for the outcome of a job announced as about to end (its batch
# ran; its postprocess runs): the jobs of one batch end within a millisecond or two of each
# other, and one transaction for them all costs the CPU of one (a transaction is most of
# what a job's record costs), where each alone would cost its own.
ANNOUNCED_WAIT_S = 0.003


@dataclass(frozen=True)
class Outcome:
    """What one job's run produced, to be recorded."""

    job_id: int
    findings: list[Finding]
    timings_ms: dict[str, float]


def end_job(group: GroupWrite, job: LockedJob | None, outcome: Outcome) -> bool:
    """The locked ``job``'s findings and end state in ``group``; False when it had ended
    meanwhile (another run recorded it)."""
    if job is None or job.state in DONE_STATES:
        return False
    group.replace_findings(job.id, [f.row_values(job.id) for f in outcome.findings])
    positive = any(f.positive for f in outcome.findings)
    detail = {"positive": positive, "timings_ms": outcome.timings_ms}
    group.move(job, JobState.INFERRED, detail, timings_ms=outcome.timings_ms)
    return True


class Ending:
    """A job's announced outcome (:meth:`GroupRecorder.ending`), recorded once."""

    def __init__(self, recorder: GroupRecorder) -> None:
        self.recorder = recorder
        self.submitted = False

    def record(self, outcome: Outcome) -> bool:
        """:meth:`GroupRecorder.record`, as the announced outcome."""
        self.submitted = True
        done: bool = self.recorder._submit(outcome, announced=True)
        return done


Write = Outcome | Start  # what the recorder commits: a job's end, or its start
_Waiting = tuple[Write, "Future[Any]"]


def write_group(connection: Connection, writes: Sequence[Write]) -> list[Any]:
    """Every write of a group in ``connection``'s transaction; each one's answer, in their
    order: an outcome's bool, a start's :class:`StartedJob` or None."""
    jobs = lock_jobs(connection, (write.job_id for write in writes))
    group = GroupWrite(utcnow())
    decided: dict[int, bool] = {}
    # In id order as the rows were locked; a job's own writes as they came (sort is stable).
    for i in sorted(range(len(writes)), key=lambda i: writes[i].job_id):
        write = writes[i]
        job = jobs.get(write.job_id)
        if isinstance(write, Start):
            decided[i] = start_job(group, job, write)
        else:
            decided[i] = end_job(group, job, write)
    group.flush(connection)
    claimed = {writes[i].job_id for i, ok in decided.items() if ok and isinstance(writes[i], Start)}
    started = started_jobs(connection, [jobs[job_id] for job_id in sorted(claimed)])
    return [_answer(write, decided[i], started) for i, write in enumerate(writes)]


def _answer(write: Write, wrote: bool, started: dict[int, StartedJob]) -> bool | StartedJob | None:
    if isinstance(write, Start):
        return started[write.job_id] if wrote else None
    return wrote


class GroupRecorder:
    """One thread that commits every job write waiting — outcomes and starts — in one
    transaction."""

    def __init__(self, db: Database, announced_wait_s: float = ANNOUNCED_WAIT_S) -> None:
        self.db = db
        self.announced_wait_s = announced_wait_s
        self._writer = KeptConnection(db)  # used by the recorder's thread only
        self._waiting: list[_Waiting] = []
        self._changed = threading.Condition()
        self._closed = False
        self._announced = 0  # outcomes announced (GroupRecorder.ending) and not yet submitted
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

    @contextmanager
    def ending(self) -> Iterator[Ending]:
        """Announce a job's outcome for as long as the block runs (its postprocess): groups
        wait a little for it. :meth:`Ending.record` inside the block records it; a block
        left without (the postprocess failed) withdraws the announcement."""
        with self._changed:
            self._announced += 1
        ending = Ending(self)
        try:
            yield ending
        finally:
            if not ending.submitted:
                with self._changed:
                    self._announced -= 1
                    self._changed.notify()

    def start(self, start: Start) -> StartedJob | None:
        """Claim the job for ``start.runner`` and return it with its keys once committed
        (None: it had ended, or a live copy of the delivery runs it); raises what the
        database raised."""
        started: StartedJob | None = self._submit(start)
        return started

    def _submit(self, write: Write, announced: bool = False) -> Any:
        future: Future[Any] = Future()
        with self._changed:
            if announced:
                self._announced -= 1
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
        if not self._thread.is_alive():
            self._writer.release()

    def _loop(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if not self._waiting:
                    return
                self._wait_for_announced()
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            self._commit(group)

    def _wait_for_announced(self) -> None:
        """With the lock held and writes waiting: wait up to ``announced_wait_s`` for the
        outcomes announced to arrive (or a full group)."""
        deadline = time.monotonic() + self.announced_wait_s
        while self._announced > 0 and len(self._waiting) < MAX_GROUP and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._changed.wait(timeout=left)

    def _commit(self, group: Sequence[_Waiting]) -> None:
        self.groups.append(len(group))
        try:
            with self._writer.transaction() as connection:
                written = write_group(connection, [write for write, _future in group])
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
