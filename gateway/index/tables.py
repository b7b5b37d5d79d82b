"""The index: what arrived, from whom, in which state. SQLAlchemy 2 declarative tables.

Alembic migrations in ``gateway/migrations`` create exactly these tables; a test checks that
the two never drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class RegionRow(Base):
    __tablename__ = "regions"

    code: Mapped[str] = mapped_column(String(2), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))


class SourceRow(Base):
    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(300), default="")
    ae_title: Mapped[str] = mapped_column(String(16))
    frmo_oid: Mapped[str | None] = mapped_column(String(64))
    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code"))


class OrthancCursorRow(Base):
    """The last entry of an Orthanc's ``/changes`` that a source's follower has dealt with:
    a restart goes on from there instead of fetching everything again."""

    __tablename__ = "orthanc_cursors"

    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"), primary_key=True)
    # The Orthanc the cursor belongs to: another one (the URL changed) starts from 0.
    url: Mapped[str] = mapped_column(String(300))
    last_change: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StudyRow(Base):
    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code"), index=True)
    state: Mapped[str] = mapped_column(String(32), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    # For QIDO-RS matching and the prior query's same-patient check; never logged.
    patient_name: Mapped[str | None] = mapped_column(String(200))
    patient_name_folded: Mapped[str | None] = mapped_column(String(200))  # patient_names
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    patient_age_years: Mapped[int | None] = mapped_column(Integer)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_description: Mapped[str | None] = mapped_column(String(200))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # While ``complete``: when routing is next due (see gateway.index.due), how often it
    # was tried for this completion, and why the last try failed. NULL: nothing due.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    # Fetched from the archive as a prior for a job (gateway.jobs.priors): stored like any
    # study, never routed.
    prior: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    source: Mapped[SourceRow] = relationship()
    series: Mapped[list[SeriesRow]] = relationship(back_populates="study")
    events: Mapped[list[StudyEventRow]] = relationship(
        back_populates="study", order_by="StudyEventRow.id"
    )


class SeriesRow(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(200))
    series_number: Mapped[int | None] = mapped_column(Integer)
    protocol_name: Mapped[str | None] = mapped_column(String(64))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime())

    study: Mapped[StudyRow] = relationship(back_populates="series")
    instances: Mapped[list[InstanceRow]] = relationship(back_populates="series")


class InstanceRow(Base):
    """One stored version of one SOP instance; the highest version is the current one."""

    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "version"),
        UniqueConstraint("sop_instance_uid", "sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    object_key: Mapped[str] = mapped_column(String(250), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    image_type: Mapped[str | None] = mapped_column(String(200))
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    image_position: Mapped[str | None] = mapped_column(String(200))
    image_orientation: Mapped[str | None] = mapped_column(String(200))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    photometric_interpretation: Mapped[str | None] = mapped_column(String(32))
    view_position: Mapped[str | None] = mapped_column(String(16))
    calling_ae: Mapped[str] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())

    series: Mapped[SeriesRow] = relationship(back_populates="instances")


class StudyEventRow(Base):
    """The study's timeline: every state transition and notable event, timestamped."""

    __tablename__ = "study_events"
    __table_args__ = (Index("ix_study_events_study_at", "study_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    note: Mapped[str | None] = mapped_column(Text)

    study: Mapped[StudyRow] = relationship(back_populates="events")


class DeviceRow(Base):
    """A registered AI device version: its validated manifest and where its ONNX file is."""

    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("device_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128))
    vendor: Mapped[str] = mapped_column(String(128))
    group: Mapped[str] = mapped_column(String(32))
    registration_number: Mapped[str | None] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    onnx_key: Mapped[str] = mapped_column(String(250))
    sha256: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(default=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeviceMode(StrEnum):
    """How a device version works in a region: ``shadow`` analyses and keeps its results but
    delivers nothing; ``live`` delivers. Here, beside its tables, because regions.yaml (read by
    ingest) names modes as well as the registry (:mod:`gateway.devices.modes`) does."""

    SHADOW = "shadow"
    LIVE = "live"


class DeviceRegionRow(Base):
    """A device enabled in a region (seeded from regions.yaml), and the mode its versions
    start in there until one is set for a version (:class:`DeviceModeRow`)."""

    __tablename__ = "device_regions"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code"), primary_key=True)
    start_mode: Mapped[str] = mapped_column(String(16), default=DeviceMode.SHADOW.value)


class DeviceModeRow(Base):
    """The mode set for one device version in one region, by whom and when (the audit log
    keeps every change)."""

    __tablename__ = "device_modes"
    __table_args__ = (UniqueConstraint("device_id", "version", "region_code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code"))
    mode: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    changed_by: Mapped[str] = mapped_column(String(100))


class JobRow(Base):
    """One (series, device) analysis. ``study_completed_at`` ties it to one completion of the
    study, so re-offering the same completion after a restart creates nothing twice."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("study_id", "series_uid", "device_key", "study_completed_at"),
        Index("ix_jobs_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_completed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    series_uid: Mapped[str] = mapped_column(String(64))
    series_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    device_key: Mapped[str] = mapped_column(String(100))
    study_type: Mapped[str] = mapped_column(String(32))
    service_code: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32), index=True)
    # The device version's mode in the study's region when the job was created: a study
    # analysed in shadow stays shadow whatever the mode becomes later.
    mode: Mapped[str] = mapped_column(String(16), default=DeviceMode.LIVE.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    timings_ms: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Renewed by the worker running it (gateway.inference.lease): a fresh heartbeat means a
    # live runner holds the job, so another delivery of its task is skipped.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    runner: Mapped[str | None] = mapped_column(String(200))  # the delivery that runs it
    # When its task (infer while queued or running, report while inferred without results)
    # is next due to be sent (see gateway.jobs.redrive), how often it was sent, and why the
    # last send or run failed transiently. NULL: due only after the state's grace.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sends: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    # The prior studies handed to the job (gateway.jobs.priors); NULL: not looked for yet.
    prior_study_uids: Mapped[list[str] | None] = mapped_column(JSON)

    findings: Mapped[list[FindingRow]] = relationship(
        back_populates="job", order_by="FindingRow.id"
    )


class FindingRow(Base):
    """What a device said about one label: probability, decision, where, how big."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    label_code: Mapped[str] = mapped_column(String(16))
    label_scheme: Mapped[str] = mapped_column(String(16))
    label_ru: Mapped[str] = mapped_column(String(200))
    label_en: Mapped[str] = mapped_column(String(200))
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool]
    location: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    measurements: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)

    job: Mapped[JobRow] = relationship(back_populates="findings")


class ResultRow(Base):
    """One object a job's results consist of (SR, flag images, GSPS, SEG, SEMD), stored in the
    object store; or, with ``state`` withheld, one that could not be written and why."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # sr, sc, gsps, seg, semd
    state: Mapped[str] = mapped_column(String(16))  # stored, withheld
    reason: Mapped[str | None] = mapped_column(Text)
    object_key: Mapped[str | None] = mapped_column(String(250), unique=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NoticeRow(Base):
    """A document the gateway sends about its devices rather than about a study: the monthly
    usage report of one device version, or a malfunction notice. ``key`` names it once (per
    device version and month, per device version and day), so it is created and delivered
    once; ``payload`` is the document exactly as it is sent."""

    __tablename__ = "monitoring_notices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # usage_report, malfunction
    key: Mapped[str] = mapped_column(String(200), unique=True)
    device_key: Mapped[str] = mapped_column(String(100), index=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OutboxRow(Base):
    """One delivery of one result (or one notice) to one destination, retried until
    acknowledged."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("result_id", "destination"),
        UniqueConstraint("notice_id", "destination"),
        CheckConstraint(
            "(result_id IS NULL) <> (notice_id IS NULL)", name="ck_outbox_result_or_notice"
        ),
        Index("ix_outbox_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int | None] = mapped_column(ForeignKey("results.id"), index=True)
    notice_id: Mapped[int | None] = mapped_column(ForeignKey("monitoring_notices.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    protocol: Mapped[str] = mapped_column(String(16))  # dicom, orthanc, stow, http
    state: Mapped[str] = mapped_column(String(16))  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    remote_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ApiTokenRow(Base):
    """An API token: only the sha256 of its secret is kept; the secret is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))  # gateway.access.tokens.Role
    region_code: Mapped[str | None] = mapped_column(ForeignKey("regions.code"))
    # The source (sources.yaml name) a STOW-RS sender with this token stores as; None: the
    # token cannot store. A name, not a key: sources come and go with the configuration.
    source_name: Mapped[str | None] = mapped_column(String(64))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditRow(Base):
    """One audited event: a read of patient-level data, a login, a change to tokens or
    devices, the configuration loaded at start — who, when, what, from where."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"), Index("ix_audit_log_event", "event"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    event: Mapped[str] = mapped_column(String(32))  # gateway.access.audit.AuditEvent
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    token_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(200))
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    region_code: Mapped[str | None] = mapped_column(String(2))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DashboardSessionRow(Base):
    """A dashboard session: the cookie is a random secret, of which only the sha256 is kept.
    It ends at logout, when idle or too old, or with its token."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    client_ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    end_reason: Mapped[str | None] = mapped_column(String(16))


class LoginFailureRow(Base):
    """Failed dashboard logins counted per account (token id) and per peer address; a key
    that reaches ``login_max_failures`` is locked until ``locked_until``."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)  # account:7, peer:10.0.0.5
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime())
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class VerdictRow(Base):
    """A radiologist's verdict on a job's result (``finding_id`` None) or on one finding:
    accept, modify or reject. A new verdict on the same (job, finding) supersedes the current
    one, which is kept with ``superseded_at`` set: the history stays."""

    __tablename__ = "verdicts"
    __table_args__ = (Index("ix_verdicts_job_current", "job_id", "superseded_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id"))
    label_code: Mapped[str | None] = mapped_column(String(16))
    verdict: Mapped[str] = mapped_column(String(16))  # gateway.monitoring.verdicts.Verdict
    comment: Mapped[str | None] = mapped_column(Text)
    location: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(16))  # api, dashboard, dicom
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    author: Mapped[str] = mapped_column(String(100))
    object_uid: Mapped[str | None] = mapped_column(String(64), index=True)  # a DICOM assessment
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PseudonymStudyRow(Base):
    """A study as one external device (vendor) sees it: de-identified with ``seed``, so a
    resent series gets the same pseudonymised UIDs, under ``pseudo_study_uid`` and
    ``pseudo_patient_id``. Never logged: it is the key to re-identification."""

    __tablename__ = "pseudonym_studies"
    # Per device: a device sent studies as they are (deidentify: false) has pseudonyms
    # equal to the originals, which another such device shares.
    __table_args__ = (
        UniqueConstraint("study_uid", "device_id"),
        UniqueConstraint("pseudo_study_uid", "device_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(64))
    seed: Mapped[str] = mapped_column(String(64))
    pseudo_study_uid: Mapped[str] = mapped_column(String(64))
    pseudo_patient_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PseudonymRow(Base):
    """One UID of a study sent to a vendor and the UID it was given there; ``job_id`` names
    the job that sent an instance (or series), so what comes back finds its job."""

    __tablename__ = "pseudonyms"
    __table_args__ = (UniqueConstraint("link_id", "original_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    link_id: Mapped[int] = mapped_column(ForeignKey("pseudonym_studies.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    kind: Mapped[str] = mapped_column(String(16))  # study, series, instance, other
    original_uid: Mapped[str] = mapped_column(String(64))
    pseudo_uid: Mapped[str] = mapped_column(String(64), index=True)
