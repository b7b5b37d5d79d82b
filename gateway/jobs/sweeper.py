"""Finding work whose message was lost, and queueing it again.

Jobs and reports live in the database; their Celery messages only say "go". A message can
be lost — a Redis restarted without persistence, a worker that died after acknowledging —
so a sweeper in ``aigw serve`` looks, every ``every_s``, for
- jobs still queued ``stale_after_s`` after they were queued, or running ``stale_after_s``
  plus ``running_grace_s`` after they started (a running job's task is redelivered by the
  broker itself when its worker dies, after the visibility timeout), and
- inferred jobs with no results ``report_after_s`` after they finished,
and sends their task again. Tasks are idempotent, so a message that was merely slow costs
a duplicate run, never a duplicate result; each job is re-sent at most once per
``stale_after_s`` by this process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.index.database import Database
from gateway.jobs.states import jobs_awaiting_results, stale_jobs

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        db: Database,
        resend_infer: Callable[[int, str, int], None],
        resend_report: Callable[[int], None],
        stale_after_s: float,
        running_grace_s: float = 0.0,
        report_after_s: float = 120.0,
        every_s: float = 30.0,
    ) -> None:
        self.db = db
        self.resend_infer, self.resend_report = resend_infer, resend_report
        self.stale_after_s, self.report_after_s = stale_after_s, report_after_s
        self.running_after_s = stale_after_s + running_grace_s
        self.every_s = every_s
        self._resent: dict[tuple[str, int], float] = {}  # (kind, job) → monotonic time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sweep()
            except Exception as exc:  # database or broker briefly away: next round
                log.warning("sweep failed", extra={"error": str(exc)[:200]})

    def sweep(self) -> int:
        """One round; returns how many tasks were sent again."""
        sent = 0
        for job_id, queue, priority in stale_jobs(
            self.db, self.stale_after_s, self.running_after_s
        ):
            if self._due(("infer", job_id)):
                log.warning("stale job queued again", extra={"job_id": job_id})
                self.resend_infer(job_id, queue, priority)
                sent += 1
        for job_id in jobs_awaiting_results(self.db, self.report_after_s):
            if self._due(("report", job_id)):
                log.warning("report queued again", extra={"job_id": job_id})
                self.resend_report(job_id)
                sent += 1
        return sent

    def _due(self, key: tuple[str, int]) -> bool:
        now = time.monotonic()
        last = self._resent.get(key)
        if last is not None and now - last < min(self.stale_after_s, self.report_after_s):
            return False
        self._resent[key] = now
        return True
