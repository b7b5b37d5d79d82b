"""The one way a job's task reaches the broker: re-driven from the database when it is due.

A job is recorded ``queued`` and due now; this service of ``aigw serve`` claims due jobs
(:mod:`gateway.index.due`: their next attempt moves one lease ahead), sends their task, and
records the outcome while the claim holds — sent: due again only after
``job_requeue_after_s`` (the safety net for a message lost without anyone noticing);
failed: due again after a backoff bounded by ``retry_max_backoff_s``. Inferred jobs without
results get their report task the same way (workers send it themselves when they finish;
this is for the message that never arrived).

Each round first looks at the broker (:class:`~gateway.jobs.broker.BrokerWatch`): while it
is down nothing is sent; when it returns, or restarted, every job whose message may have
been lost is made due now, so the backlog moves within a round of the broker's return.

Each round also ends every ``sent`` job past its deadline (an external device that did not
answer in time): that needs no broker, so it runs even while the broker is down.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from gateway.errors import DatabaseError
from gateway.index.database import Database
from gateway.index.due import Backoff, claim_rows, settle
from gateway.index.tables import JobRow, utcnow
from gateway.jobs.broker import MEMORY_IDENTITY, BrokerChange, BrokerWatch
from gateway.jobs.states import due_to_infer, due_to_report, fail_overdue, make_due_now

log = logging.getLogger(__name__)


class TaskKind(StrEnum):
    INFER = "infer"
    REPORT = "report"


class TaskSender(Protocol):
    def infer(self, job_id: int, queue: str, priority: int) -> None: ...

    def report(self, job_id: int) -> None: ...


@dataclass(frozen=True)
class RedrivePolicy:
    poll_s: float  # how often a round runs (a kick runs one at once)
    backoff: Backoff  # after a failed send
    lease_s: float  # an abandoned claim is due again after this
    requeue_after_s: float  # a sent task is sent again after this if nothing moved
    running_grace_s: float  # a running job is sent again after running this long
    runner_stale_s: float | None = None  # ... or when its heartbeat is this old


@dataclass(frozen=True)
class _Claimed:
    job_id: int
    queue: str
    priority: int
    sends: int


class JobRedrive:
    """Sends what is due, every ``policy.poll_s`` or at once when kicked (a thread)."""

    def __init__(
        self,
        db: Database,
        tasks: TaskSender,
        watch: BrokerWatch,
        policy: RedrivePolicy,
        batch: int = 200,
    ) -> None:
        self.db, self.tasks, self.watch, self.policy = db, tasks, watch, policy
        self.batch = batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._database_down = False
        self._thread = threading.Thread(target=self._run, name="redrive", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def kick(self) -> None:
        """Run a round now (new jobs were recorded)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                if self._database_down:
                    log.info("re-drive: database reachable again")
                self._database_down = False
            except DatabaseError as exc:  # back soon; every claim is in the database
                if not self._database_down:
                    log.warning("re-drive: database unavailable", extra={"error": str(exc)})
                self._database_down = True
            except Exception:  # never let the only re-drive thread die
                log.exception("re-drive: unexpected error")
            self._wake.wait(self.policy.poll_s)
            self._wake.clear()

    def run_once(self) -> int:
        """One round: look at the broker, then send every due task; returns how many."""
        overdue = fail_overdue(self.db, utcnow())
        if overdue:
            log.warning("external devices did not answer in time", extra={"jobs": overdue})
        change = self.watch.observe()
        if change == BrokerChange.DOWN:
            return 0
        if change in (BrokerChange.FIRST, BrokerChange.RESTARTED):
            # In-memory: running jobs died with the previous process's worker thread.
            running = self.watch.identity == MEMORY_IDENTITY
            count = make_due_now(self.db, running=running)
            if count:
                log.info("jobs made due", extra={"count": count, "broker": str(change)})
        return self._drive(TaskKind.INFER) + self._drive(TaskKind.REPORT)

    def _drive(self, kind: TaskKind) -> int:
        sent = 0
        while not self._stop.is_set():
            claims, lease_until = self._claim(kind)
            count, all_sent = self._send(kind, claims, lease_until)
            sent += count
            if not all_sent or len(claims) < self.batch:
                break
        return sent

    def _claim(self, kind: TaskKind) -> tuple[list[_Claimed], datetime]:
        now = utcnow()
        lease_until = now + timedelta(seconds=self.policy.lease_s)
        due = (
            due_to_infer(now, self.policy.running_grace_s, self.policy.runner_stale_s)
            if kind == TaskKind.INFER
            else due_to_report(now, self.policy.requeue_after_s)
        )
        with self.db.session() as session:
            rows = claim_rows(
                session,
                JobRow,
                due,
                order_by=[JobRow.priority.desc(), JobRow.id],
                counter=JobRow.sends,
                limit=self.batch,
                lease_until=lease_until,
                skip_locked=not self.db.is_sqlite,
            )
            return [_Claimed(r.id, r.queue, r.priority, r.sends) for r in rows], lease_until

    def _send(
        self, kind: TaskKind, claims: list[_Claimed], lease_until: datetime
    ) -> tuple[int, bool]:
        """Send each claim's task until one fails; (how many were sent, all of them?)."""
        sent: list[int] = []
        failed: tuple[_Claimed, Exception] | None = None
        for claim in claims:
            try:
                if kind == TaskKind.INFER:
                    self.tasks.infer(claim.job_id, claim.queue, claim.priority)
                else:
                    self.tasks.report(claim.job_id)
            except Exception as exc:  # the broker's errors are transport-specific
                failed = (claim, exc)
                break  # the broker is away: the rest stay claimed until their lease ends
            sent.append(claim.job_id)
        self._record(sent, failed, lease_until)
        if failed is not None:
            log.warning(
                "task not sent; will retry",
                extra={"kind": str(kind), "job_id": failed[0].job_id, "error": str(failed[1])},
            )
        return len(sent), failed is None

    def _record(
        self, sent: list[int], failed: tuple[_Claimed, Exception] | None, lease_until: datetime
    ) -> None:
        now = utcnow()
        again = now + timedelta(seconds=self.policy.requeue_after_s)
        with self.db.session() as session:
            for job_id in sent:
                settle(session, JobRow, job_id, lease_until, next_attempt_at=again)
            if failed is not None:
                claim, exc = failed
                retry = now + timedelta(seconds=self.policy.backoff.delay_s(claim.sends))
                error = f"send failed: {exc.__class__.__name__}: {exc}"[:2000]
                settle(
                    session,
                    JobRow,
                    claim.job_id,
                    lease_until,
                    next_attempt_at=retry,
                    last_error=error,
                )
