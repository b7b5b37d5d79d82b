"""The audit log: every read of patient-level data — who, when, what, from where — and
every DICOM association accepted or refused at the edge.

Written in its own transaction before the data is returned, so a read that leaves no audit
row does not happen (a failing audit write fails the request). An association decision is
written before the association goes on; when the database is down (no instance can be
stored either) the SCP logs the decision instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from gateway.access.tokens import Principal
from gateway.index.database import Database
from gateway.index.tables import AuditRow, utcnow
from gateway.ingest.refusals import AssociationDecision

DICOM_ROLE = "dicom"  # the audit row's role for a DICOM peer (no API token)
ASSOCIATION_ACCEPTED = "DICOM association accepted"
ASSOCIATION_REFUSED = "DICOM association refused"


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    at: datetime
    token_id: int | None
    token_name: str
    role: str
    action: str
    study_uid: str | None
    region: str | None
    client_ip: str | None
    detail: dict[str, Any]


def record(
    db: Database,
    who: Principal,
    action: str,
    *,
    study_uid: str | None = None,
    region: str | None = None,
    client_ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """One access. ``action`` names the endpoint (``GET /api/v1/studies/{uid}``)."""
    with db.write_lock, db.session() as session:
        session.add(
            AuditRow(
                at=utcnow(),
                token_id=who.token_id,
                token_name=who.name,
                role=who.role.value,
                action=action[:200],
                study_uid=study_uid,
                region_code=region,
                client_ip=client_ip,
                detail=detail or {},
            )
        )


def record_association(db: Database, decision: AssociationDecision) -> None:
    """One association request, accepted or refused, under the calling AE's name and the
    region of the source it matched (so a region's admins see their senders)."""
    printable = "".join(c for c in decision.calling_ae if c.isprintable())
    with db.write_lock, db.session() as session:
        session.add(
            AuditRow(
                at=utcnow(),
                token_id=None,
                token_name=printable[:100] or "(no calling AE)",
                role=DICOM_ROLE,
                action=ASSOCIATION_ACCEPTED if decision.accepted else ASSOCIATION_REFUSED,
                study_uid=None,
                region_code=decision.region,
                client_ip=decision.peer[:64],
                detail=decision.model_dump(mode="json", exclude={"accepted", "peer", "region"}),
            )
        )


def query(
    db: Database,
    *,
    region: str | None = None,
    study_uid: str | None = None,
    token_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 500,
) -> list[AuditEntry]:
    """Newest first. ``region`` limits to accesses of that region's data."""
    stmt = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
    if region is not None:
        stmt = stmt.where(AuditRow.region_code == region)
    if study_uid is not None:
        stmt = stmt.where(AuditRow.study_uid == study_uid)
    if token_id is not None:
        stmt = stmt.where(AuditRow.token_id == token_id)
    if since is not None:
        stmt = stmt.where(AuditRow.at >= since)
    if until is not None:
        stmt = stmt.where(AuditRow.at < until)
    with db.session() as session:
        return [
            AuditEntry(
                id=row.id,
                at=row.at,
                token_id=row.token_id,
                token_name=row.token_name,
                role=row.role,
                action=row.action,
                study_uid=row.study_uid,
                region=row.region_code,
                client_ip=row.client_ip,
                detail=row.detail or {},
            )
            for row in session.scalars(stmt)
        ]
