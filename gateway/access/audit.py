"""The audit trail: every read of patient-level data, every login (and failure and
lockout), every change to tokens and devices (their shadow / live modes included), every
radiologist's verdict, the configuration loaded at start, and every DICOM association
accepted or refused at the edge — who, when, what, from where.

A read writes its row in its own transaction before the data leaves the server, and a
change writes its row in the change's own transaction where the change is ours (tokens,
sessions, region enablement): a request whose audit row cannot be written is refused
(:class:`AuditError` → 503), never served unlogged. Rows carry ids, UIDs, account names and
addresses — never patient names, IDs or birth dates. A refused association's decision is
written before the rejection is sent; an accepted one's on a thread of its own while the
A-ASSOCIATE-AC goes out, and before any C-STORE of that association is served or its release
answered. When the database is down (no instance can be stored either) the SCP logs the
decision instead.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.errors import DatabaseError, GatewayError
from gateway.index.database import Database
from gateway.index.tables import AuditRow, utcnow
from gateway.ingest.refusals import AssociationDecision
from gateway.settings import Settings

DICOM_ROLE = "dicom"  # the role of a DICOM peer (no API token)
ASSOCIATION_ACCEPTED = "DICOM association accepted"  # the action of an association event
ASSOCIATION_REFUSED = "DICOM association refused"

# The settings that name a configuration file read at start (certificates included, so a
# swapped one shows; private keys are not hashed into the trail).
CONFIG_FILE_SETTINGS = (
    "config_file",
    "sources_file",
    "regions_file",
    "routing_file",
    "destinations_file",
    "semd_file",
    "dicom_tls_cert_file",
    "dicom_tls_client_ca_file",
    "http_tls_cert_file",
)


class AuditEvent(StrEnum):
    READ = "read"  # patient-level data shown (API, dashboard)
    RESULT_DOWNLOADED = "result_downloaded"  # a result's bytes (API content, flag image)
    RESULT_EXPORTED = "result_exported"  # aigw results --out
    LOGIN_SUCCEEDED = "login_succeeded"
    LOGIN_FAILED = "login_failed"
    LOGIN_LOCKED = "login_locked"  # an account or peer address reached the failure limit
    SESSION_ENDED = "session_ended"  # logout, idle, too old, token revoked
    TOKEN_CREATED = "token_created"
    TOKEN_REVOKED = "token_revoked"
    DEVICE_REGISTERED = "device_registered"
    DEVICE_ENABLED = "device_enabled"
    DEVICE_DISABLED = "device_disabled"
    DEVICE_REGION_ENABLED = "device_region_enabled"
    DEVICE_REGION_DISABLED = "device_region_disabled"
    DEVICE_MODE_CHANGED = "device_mode_changed"  # shadow / live per (version, region)
    VERDICT_RECORDED = "verdict_recorded"  # a radiologist's accept / modify / reject
    INSTANCES_STORED = "instances_stored"  # a DICOMweb STOW-RS request, by a source's token
    CONFIG_LOADED = "config_loaded"
    ASSOCIATION_ACCEPTED = "association_accepted"  # a DICOM peer, at the edge
    ASSOCIATION_REFUSED = "association_refused"


class AuditError(GatewayError):
    """The audit row could not be written; whatever it was to record must not happen."""


@dataclass(frozen=True)
class Actor:
    """Who did it: a token's holder, an operator at the command line, or the gateway."""

    name: str
    role: str
    token_id: int | None = None


SYSTEM = Actor("aigw", "system")


def operator() -> Actor:
    """The person running an ``aigw`` command on this machine (no token: the OS account)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = f"uid {os.getuid()}"
    return Actor(f"{user}@{socket.gethostname()}"[:100], "operator")


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    at: datetime
    event: AuditEvent
    token_id: int | None
    token_name: str
    role: str
    action: str
    study_uid: str | None
    region: str | None
    client_ip: str | None
    detail: dict[str, Any]


class AuditFilter(BaseModel):
    """What ``query`` selects; the API and ``aigw audit`` build one."""

    model_config = ConfigDict(extra="forbid")

    events: list[AuditEvent] = Field(default_factory=list, description="Empty: every event.")
    region: str | None = None
    study_uid: str | None = None
    token_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=500, ge=1, le=100_000)


def add(
    session: Session,
    actor: Actor,
    event: AuditEvent,
    action: str,
    *,
    study_uid: str | None = None,
    region: str | None = None,
    client_ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """One event in the caller's transaction: it commits, or fails, with the change."""
    session.add(
        AuditRow(
            at=utcnow(),
            event=event.value,
            token_id=actor.token_id,
            token_name=_printable(actor.name)[:100],
            role=actor.role[:16],
            action=_printable(action)[:200],
            study_uid=study_uid[:64] if study_uid else None,
            region_code=region,
            client_ip=client_ip[:64] if client_ip else None,
            detail=detail or {},
        )
    )


def record(
    db: Database,
    actor: Actor,
    event: AuditEvent,
    action: str,
    *,
    study_uid: str | None = None,
    region: str | None = None,
    client_ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """One event in its own transaction; :class:`AuditError` when it cannot be written."""
    try:
        with db.write_lock, db.session() as session:
            add(
                session,
                actor,
                event,
                action,
                study_uid=study_uid,
                region=region,
                client_ip=client_ip,
                detail=detail,
            )
    except (DatabaseError, IntegrityError) as exc:
        raise AuditError(f"the audit log cannot be written: {exc.__class__.__name__}") from exc


def record_association(db: Database, decision: AssociationDecision) -> None:
    """One association request, accepted or refused, under the calling AE's name and the
    region of the source it matched (so a region's admins see their senders)."""
    calling_ae = _printable(decision.calling_ae)
    record(
        db,
        Actor(calling_ae or "(no calling AE)", DICOM_ROLE),
        AuditEvent.ASSOCIATION_ACCEPTED if decision.accepted else AuditEvent.ASSOCIATION_REFUSED,
        ASSOCIATION_ACCEPTED if decision.accepted else ASSOCIATION_REFUSED,
        region=decision.region,
        client_ip=decision.peer,
        detail=decision.model_dump(mode="json", exclude={"accepted", "peer", "region"}),
    )


def record_configuration(db: Database, settings: Settings, action: str) -> list[Path]:
    """One ``config_loaded`` event per configuration file in use, with its sha256."""
    recorded = []
    for setting, path in configuration_files(settings):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        record(
            db,
            SYSTEM,
            AuditEvent.CONFIG_LOADED,
            action,
            detail={"setting": setting, "file": str(path.resolve()), "sha256": digest},
        )
        recorded.append(path)
    return recorded


def configuration_files(settings: Settings) -> list[tuple[str, Path]]:
    """The configuration files the settings name that exist (optional ones may not)."""
    found = []
    for setting in CONFIG_FILE_SETTINGS:
        path = getattr(settings, setting)
        if isinstance(path, Path) and path.is_file():
            found.append((setting, path))
    return found


def query(
    db: Database,
    selection: AuditFilter | None = None,
    **criteria: Any,
) -> list[AuditEntry]:
    """Newest first. ``region`` limits to events about that region's data or accounts;
    ``criteria`` are :class:`AuditFilter` fields, for a filter given inline."""
    f = selection or AuditFilter(**criteria)
    stmt = select(AuditRow).order_by(AuditRow.id.desc()).limit(f.limit)
    if f.events:
        stmt = stmt.where(AuditRow.event.in_([e.value for e in f.events]))
    if f.region is not None:
        stmt = stmt.where(AuditRow.region_code == f.region)
    if f.study_uid is not None:
        stmt = stmt.where(AuditRow.study_uid == f.study_uid)
    if f.token_id is not None:
        stmt = stmt.where(AuditRow.token_id == f.token_id)
    if f.since is not None:
        stmt = stmt.where(AuditRow.at >= f.since)
    if f.until is not None:
        stmt = stmt.where(AuditRow.at < f.until)
    with db.session() as session:
        return [_entry(row) for row in session.scalars(stmt)]


def _entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        event=AuditEvent(row.event),
        token_id=row.token_id,
        token_name=row.token_name,
        role=row.role,
        action=row.action,
        study_uid=row.study_uid,
        region=row.region_code,
        client_ip=row.client_ip,
        detail=row.detail or {},
    )


def prune(db: Database, before: datetime) -> int:
    """Delete events older than ``before`` (the retention period); returns how many."""
    with db.write_lock, db.session() as session:
        result = session.execute(delete(AuditRow).where(AuditRow.at < before))
        return int(getattr(result, "rowcount", 0) or 0)


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable())
