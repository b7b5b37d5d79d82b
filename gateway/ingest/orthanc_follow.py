"""Following an Orthanc: studies it reports stable are fetched over REST and complete at once.

For a source with ``orthanc:`` in sources.yaml, one thread reads the Orthanc's ``/changes``
from where it last stopped. Each ``StableStudy`` (Orthanc saw no new instance of it for its
``StableAge``) is fetched instance by instance (``/instances/{id}/file``) into the same
durable ingest as a C-STORE (:meth:`Ingest.receive`: stored, indexed, committed), and then
completed through the assembler (reason ``orthanc_stable_study``), which hands it over.

The cursor — the last change dealt with, and the Orthanc's URL it belongs to — is written to
the index after each change, so a restart goes on from there (another URL starts from 0). A
change is passed only once all its instances are stored: if Orthanc or the index is away, or
an instance is refused for a reason that may pass, the follower stops at that change and
tries it again on its next poll. An instance refused for good (not DICOM, too large) is
logged and the study completed with the rest, as a sender's bad instance would be.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlsplit

from gateway.errors import DatabaseError
from gateway.index.database import Database
from gateway.index.tables import OrthancCursorRow, utcnow
from gateway.ingest.receive import Ingest, Outcome, Sender
from gateway.ingest.release import Complete
from gateway.ingest.sources import OrthancFollow, Source
from pacs_adapters.orthanc_changes import (
    STABLE_STUDY,
    InstanceTooLarge,
    OrthancReader,
    OrthancServer,
)
from pacs_adapters.orthanc_rest import OrthancError

log = logging.getLogger(__name__)

STABLE_REASON = "orthanc_stable_study"


class _TryAgain(Exception):
    """The change cannot be dealt with now; the follower stops at it."""


class OrthancFollower:
    def __init__(
        self,
        db: Database,
        ingest: Ingest,
        source: Source,
        source_id: int,
        complete: Complete,
        max_instance_bytes: int,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if source.orthanc is None:
            raise ValueError(f"source {source.name!r} follows no Orthanc")
        self.config: OrthancFollow = source.orthanc
        self.db = db
        self.ingest = ingest
        self.source_id = source_id
        self.complete = complete
        self.max_instance_bytes = max_instance_bytes
        self.wake = wake
        self.clock = clock
        self.sender = Sender(
            source=source,
            source_id=source_id,
            calling_ae=source.ae_title,
            address=urlsplit(self.config.url).hostname,
        )
        self._away = False

    def poll(self) -> list[str]:
        """Read the changes since the cursor and fetch every stable study among them;
        returns the study uids completed."""
        reader = OrthancReader(
            OrthancServer(
                self.config.url, self.config.username, self.config.password, self.config.timeout_s
            )
        )
        completed: list[str] = []
        try:
            since = self._cursor()
            while True:
                page = reader.changes(since)
                for change in page.changes:
                    if change.change_type == STABLE_STUDY:
                        completed += self._fetch_study(reader, change.resource_id)
                    since = change.seq
                    self._save_cursor(since)
                if page.done or not page.changes:
                    # Orthanc's Last moves past changes that are not listed (filtered out).
                    if page.last > since:
                        self._save_cursor(page.last)
                    return completed
        except _TryAgain:
            return completed
        finally:
            reader.close()

    def _fetch_study(self, reader: OrthancReader, study_id: str) -> list[str]:
        study_uids: set[str] = set()
        for instance_id in reader.study_instances(study_id):
            try:
                data = reader.instance_file(instance_id, self.max_instance_bytes)
            except InstanceTooLarge:
                log.warning(
                    "Orthanc instance over max_instance_bytes; not fetched",
                    extra={"source": self.sender.source.name, "orthanc_instance": instance_id},
                )
                continue
            if data is None:  # deleted meanwhile
                continue
            outcome = self.ingest.receive(data, self.sender)
            if outcome.status.is_success and outcome.study_uid:
                study_uids.add(outcome.study_uid)
            elif _may_pass(outcome):
                raise _TryAgain(outcome.reason)
        completed = [uid for uid in sorted(study_uids) if self.complete(uid, STABLE_REASON)]
        if completed:
            self.wake()
        return completed

    def _cursor(self) -> int:
        with self.db.session() as session:
            row = session.get(OrthancCursorRow, self.source_id)
            return row.last_change if row and row.url == self.config.url else 0

    def _save_cursor(self, last_change: int) -> None:
        with self.db.session() as session:
            row = session.get(OrthancCursorRow, self.source_id)
            if row is None:
                row = OrthancCursorRow(source_id=self.source_id)
                session.add(row)
            row.url, row.last_change, row.updated_at = self.config.url, last_change, self.clock()

    def run(self, stop: threading.Event) -> None:
        """Poll every ``poll_s`` until ``stop`` is set; an outage is logged once."""
        while not stop.is_set():
            try:
                self.poll()
                if self._away:
                    log.info("Orthanc followed again", extra={"source": self.sender.source.name})
                self._away = False
            except (OrthancError, DatabaseError) as exc:
                if not self._away:
                    log.warning(
                        "Orthanc not followed for now; will retry",
                        extra={"source": self.sender.source.name, "error": str(exc)[:300]},
                    )
                self._away = True
            except Exception:
                log.exception("Orthanc follower failed; retrying")
            stop.wait(self.config.poll_s)


def _may_pass(outcome: Outcome) -> bool:
    # 0xA7xx: out of resources (store full, database away) — may pass; others are the data.
    return (int(outcome.status) & 0xFF00) == 0xA700
