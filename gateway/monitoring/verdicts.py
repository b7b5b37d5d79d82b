"""Radiologists' verdicts on AI results (IHE AIRA): accept, modify or reject.

A verdict is on a job's result as a whole (no finding) or on one of its findings. There is
one *current* verdict per (job, finding): a new one supersedes it, and the old one is kept
with ``superseded_at`` set, so the history stays. A verdict comes from the API, the
dashboard, or a DICOM object a viewer sent (:mod:`gateway.monitoring.linking`); each is
written with who and when, audited and put on the study's timeline in one transaction.

The **agreement rate** is accepted ÷ (accepted + modified + rejected) over current
verdicts: a modification counts as disagreement, since the device's result was not used as
it stood.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from gateway.access.audit import Actor, AuditEvent, add
from gateway.errors import GatewayError
from gateway.index.database import Database
from gateway.index.study_state import record_event
from gateway.index.tables import FindingRow, JobRow, StudyRow, VerdictRow, utcnow
from gateway.jobs.states import JobState

MAX_ID = 2**63 - 1
UID = r"^[0-9]+(\.[0-9]+)*$"
# Text a person typed: line breaks and tabs, no other control characters (no NUL reaches
# the database; PostgreSQL refuses it in text).
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
Coordinate = Annotated[float, Field(ge=0, le=100_000)]


class Verdict(StrEnum):
    ACCEPT = "accept"
    MODIFY = "modify"
    REJECT = "reject"


class VerdictSource(StrEnum):
    API = "api"
    DASHBOARD = "dashboard"
    DICOM = "dicom"  # an assessment object (KOS or SR) a viewer sent


class AssessmentError(GatewayError):
    """A verdict that cannot be recorded; the message says why."""


class UnknownJob(AssessmentError):
    """No such job (or none in the caller's region)."""


class NotAssessable(AssessmentError):
    """The job has no result to judge (not inferred)."""


class UnknownFinding(AssessmentError):
    """The finding is not one of the job's."""


class CorrectedLocation(BaseModel):
    """Where the radiologist puts the finding instead: the image and source pixel indices,
    as :class:`gateway.inference.findings.Location` has them (no mask)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sop_instance_uid: str | None = Field(default=None, max_length=64, pattern=UID)
    centre: list[Coordinate] | None = Field(
        default=None,
        min_length=2,
        max_length=3,
        description="(row, column) or (slice, row, column)",
    )
    box: list[tuple[Coordinate, Coordinate]] | None = Field(
        default=None, min_length=2, max_length=3, description="(start, stop) per axis"
    )
    slice_index: int | None = Field(default=None, ge=0, le=100_000)


class AssessmentCreate(BaseModel):
    """Body of ``POST /api/v1/jobs/{job_id}/assessment``."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    finding_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="None: the verdict is on the whole result"
    )
    comment: str | None = Field(default=None, max_length=2000, pattern=TEXT)
    location: CorrectedLocation | None = Field(
        default=None, description="The corrected location (with verdict modify only)"
    )

    @model_validator(mode="after")
    def _location_only_when_modified(self) -> AssessmentCreate:
        if self.location is not None and self.verdict != Verdict.MODIFY:
            raise ValueError("a corrected location goes with verdict modify")
        return self


class AssessmentPublic(BaseModel):
    """A verdict as recorded."""

    model_config = ConfigDict(extra="forbid")

    id: int
    job_id: int
    finding_id: int | None
    label_code: str | None
    verdict: Verdict
    comment: str | None
    location: CorrectedLocation | None
    source: VerdictSource
    author: str
    created_at: datetime
    superseded_at: datetime | None

    @property
    def current(self) -> bool:
        return self.superseded_at is None


class VerdictCounts(BaseModel):
    """Current verdicts by kind, and the agreement rate with the counts it is made of."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accepted: int
    modified: int
    rejected: int
    total: int
    agreement_rate: float | None = Field(description="accepted ÷ total; None without verdicts")

    @classmethod
    def of(cls, verdicts: Iterable[Verdict | str]) -> VerdictCounts:
        given = [Verdict(v) for v in verdicts]
        accepted = given.count(Verdict.ACCEPT)
        return cls(
            accepted=accepted,
            modified=given.count(Verdict.MODIFY),
            rejected=given.count(Verdict.REJECT),
            total=len(given),
            agreement_rate=accepted / len(given) if given else None,
        )


def public(row: VerdictRow) -> AssessmentPublic:
    return AssessmentPublic(
        id=row.id,
        job_id=row.job_id,
        finding_id=row.finding_id,
        label_code=row.label_code,
        verdict=Verdict(row.verdict),
        comment=row.comment,
        location=CorrectedLocation.model_validate(row.location) if row.location else None,
        source=VerdictSource(row.source),
        author=row.author,
        created_at=row.created_at,
        superseded_at=row.superseded_at,
    )


@dataclass(frozen=True)
class Recording:
    """Who records a verdict, from where, and what the audit log calls it."""

    actor: Actor
    source: VerdictSource
    action: str
    client_ip: str | None = None
    object_uid: str | None = None  # the DICOM assessment object's SOP Instance UID


def record_verdict(
    db: Database, job_id: int, region: str | None, body: AssessmentCreate, by: Recording
) -> AssessmentPublic:
    """Record a verdict on job ``job_id`` (confined to ``region`` when given)."""
    with db.write_lock, db.session() as session:
        return record_in(session, job_id, region, body, by)


def record_in(
    session: Session, job_id: int, region: str | None, body: AssessmentCreate, by: Recording
) -> AssessmentPublic:
    """:func:`record_verdict` inside the caller's transaction."""
    query = select(JobRow, StudyRow).join(StudyRow, JobRow.study_id == StudyRow.id)
    query = query.where(JobRow.id == job_id)
    if region is not None:
        query = query.where(StudyRow.region_code == region)
    found = session.execute(query.with_for_update(of=JobRow)).one_or_none()
    if found is None:
        raise UnknownJob(f"no job {job_id}")
    job, study = found
    if job.state != JobState.INFERRED:
        raise NotAssessable(f"job {job_id} is {job.state}: it has no result to judge")
    label = _label(session, job_id, body.finding_id)
    now = utcnow()
    previous = session.scalars(
        select(VerdictRow).where(
            VerdictRow.job_id == job_id,
            _same_finding(body.finding_id),
            VerdictRow.superseded_at.is_(None),
        )
    ).all()
    for old in previous:
        old.superseded_at = now
    row = VerdictRow(
        job_id=job_id,
        finding_id=body.finding_id,
        label_code=label,
        verdict=body.verdict.value,
        comment=body.comment,
        location=body.location.model_dump(mode="json", exclude_none=True)
        if body.location
        else None,
        source=by.source.value,
        token_id=by.actor.token_id,
        author=by.actor.name[:100],
        object_uid=by.object_uid,
        created_at=now,
    )
    session.add(row)
    session.flush()
    detail = {
        "job": job_id,
        "finding": body.finding_id,
        "verdict": body.verdict.value,
        "source": by.source.value,
        "replaces": [old.id for old in previous],
    }
    add(
        session,
        by.actor,
        AuditEvent.VERDICT_RECORDED,
        by.action,
        study_uid=study.study_uid,
        region=study.region_code,
        client_ip=by.client_ip,
        detail={**detail, "verdict_id": row.id},
    )
    record_event(session, study.id, "verdict", now, detail={**detail, "by": row.author})
    return public(row)


def _label(session: Session, job_id: int, finding_id: int | None) -> str | None:
    if finding_id is None:
        return None
    finding = session.get(FindingRow, finding_id)
    if finding is None or finding.job_id != job_id:
        raise UnknownFinding(f"finding {finding_id} is not a finding of job {job_id}")
    return finding.label_code


def _same_finding(finding_id: int | None) -> ColumnElement[bool]:
    if finding_id is None:
        return VerdictRow.finding_id.is_(None)
    return VerdictRow.finding_id == finding_id


def history(db: Database, job_id: int, region: str | None) -> list[AssessmentPublic] | None:
    """Every verdict on the job, oldest first (the current ones have no ``superseded_at``);
    None when there is no such job in ``region``."""
    with db.session() as session:
        query = select(StudyRow.id).join(JobRow, JobRow.study_id == StudyRow.id)
        query = query.where(JobRow.id == job_id)
        if region is not None:
            query = query.where(StudyRow.region_code == region)
        if session.scalar(query) is None:
            return None
        rows = session.scalars(
            select(VerdictRow).where(VerdictRow.job_id == job_id).order_by(VerdictRow.id)
        )
        return [public(row) for row in rows]


def current_by_job(session: Session, job_ids: list[int]) -> dict[int, list[VerdictRow]]:
    """The current verdicts of each job."""
    found: dict[int, list[VerdictRow]] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        rows = session.scalars(
            select(VerdictRow).where(
                VerdictRow.job_id.in_(chunk), VerdictRow.superseded_at.is_(None)
            )
        )
        for row in rows:
            found.setdefault(row.job_id, []).append(row)
    return found
