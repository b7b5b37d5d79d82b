"""``MonitoringSender``: a thread of ``aigw serve`` that, every ``monitoring_check_every_s``,
queues the usage reports of the month that ended last (once per device version: the notice
keys) and the malfunction notices of the last day. The outbox dispatcher delivers them.

Nothing is queued while no destination takes notices (kind ``monitoring``); the reports are
still there on demand (``aigw monitoring report``, the API). Only the month that ended last
is queued: a gateway that was stopped over two month ends sends the older month's reports by
``aigw monitoring send --month`` (they are built from the index at any time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from gateway.delivery.destinations import Destinations
from gateway.index.database import Database
from gateway.index.tables import utcnow
from gateway.monitoring.notices import MalfunctionParams, check_malfunctions, queue_usage_reports
from gateway.monitoring.report import Period

log = logging.getLogger(__name__)


class MonitoringSender:
    def __init__(
        self,
        db: Database,
        destinations: Destinations,
        malfunction: MalfunctionParams,
        every_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.targets = destinations.for_monitoring()
        self.malfunction = malfunction
        self.every_s = every_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitoring", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception as exc:  # database away, a bug: the next round tries again
                log.warning("monitoring check failed", extra={"error": str(exc)[:300]})
            self._stop.wait(self.every_s)

    def check(self) -> list[str]:
        """One round; returns the keys of the notices queued."""
        if not self.targets:
            return []
        now = self.clock()
        queued = queue_usage_reports(self.db, self.targets, Period.before(now), now)
        queued += check_malfunctions(self.db, self.targets, self.malfunction, now)
        return queued
