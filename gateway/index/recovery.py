"""Crash recovery at start-up, before the SCP accepts anything.

An object written without its index row (a crash between the write and the commit) was never
acknowledged — the sender still has it and will send it again — so it is removed. Temp files
of interrupted writes go too. Index rows whose object is missing are reported, never hidden.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from gateway.index.database import Database
from gateway.index.object_store import FolderStore, ObjectStore
from gateway.index.tables import InstanceRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryReport:
    partial_writes_removed: int
    orphans_removed: int
    missing_objects: int


def recover(db: Database, store: ObjectStore) -> RecoveryReport:
    partial = store.remove_partial_writes() if isinstance(store, FolderStore) else 0
    with db.session() as session:
        indexed = set(session.scalars(select(InstanceRow.object_key)))
    present = set(store.keys("studies/"))
    orphans = sorted(present - indexed)
    for key in orphans:
        store.delete(key)
    missing = len(indexed - present)
    report = RecoveryReport(partial, len(orphans), missing)
    if partial or orphans:
        log.warning("recovered after an unclean stop", extra=report.__dict__)
    if missing:
        log.error("indexed instances whose objects are missing", extra={"count": missing})
    return report
