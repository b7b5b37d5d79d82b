"""Retention: audit events older than ``audit_retention_days`` are deleted, with dashboard
sessions past their lifetime and login failures that can no longer lock anything.

``aigw serve`` runs it as a service: once at start (before anything is served) and then
every hour, so a gateway that runs for months keeps the period and one that restarts
often does not wait for a timer.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from gateway.access import audit
from gateway.access.login import LoginPolicy, prune_failures
from gateway.access.sessions import prune_sessions
from gateway.errors import GatewayError
from gateway.index.database import Database
from gateway.index.tables import utcnow
from gateway.settings import Settings

log = logging.getLogger(__name__)

EVERY_S = 3600.0


@dataclass(frozen=True)
class Pruned:
    audit_events: int
    sessions: int
    login_failures: int


def prune_once(db: Database, settings: Settings) -> Pruned:
    now = utcnow()
    events = 0
    if settings.audit_retention_days:
        events = audit.prune(db, now - timedelta(days=settings.audit_retention_days))
    sessions = prune_sessions(db, now - timedelta(seconds=settings.session_max_age_s))
    failures = prune_failures(
        db, LoginPolicy(settings.login_max_failures, settings.login_lockout_s)
    )
    return Pruned(events, sessions, failures)


class AuditRetention:
    """The service: ``start`` prunes at once, then a thread prunes every ``every_s``."""

    def __init__(self, db: Database, settings: Settings, every_s: float = EVERY_S) -> None:
        self.db, self.settings, self.every_s = db, settings, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-retention", daemon=True)

    def start(self) -> None:
        self._prune()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._prune()

    def _prune(self) -> None:
        try:
            pruned = prune_once(self.db, self.settings)
        except GatewayError as exc:  # the database briefly away: the next round prunes
            log.warning("audit retention failed", extra={"error": str(exc)[:200]})
            return
        if pruned.audit_events or pruned.sessions:
            log.info("audit retention", extra=pruned.__dict__)
