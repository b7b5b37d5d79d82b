"""From a finished job to its results: SR, flag images, GSPS, SEG and SEMD, stored and queued.

The builders are pure functions of a :class:`~gateway.results.input.ReportInput`; this
module gathers what the database holds of the job (its findings, its source instances' keys,
the device's manifest, the sending organisation) as a
:class:`~gateway.results.artifacts.BuildRequest`, has the objects built from it — in a
results child (:mod:`gateway.results.build_pool`) where the worker has them, else in this
thread — stores what comes back, and in one transaction records a results row per object
and an outbox row per destination. A builder that cannot produce its result (the SEMD
without the patient's СНИЛС, say) leaves a ``withheld`` row that says why; the others go
ahead. A job run in shadow mode (:mod:`gateway.devices.modes`) has its results built and
stored like any other, but no outbox rows: nothing of it leaves the gateway.

Running twice for a job is harmless: object keys and UIDs are derived from the job, and a
job whose results are recorded is skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError

from gateway.delivery.destinations import Destinations, ResultKind
from gateway.delivery.outbox import enqueue
from gateway.devices.modes import DeviceMode
from gateway.devices.registry import DeviceRegistry
from gateway.errors import DatabaseError, StorageError
from gateway.index.database import Database
from gateway.index.instances import current_instance_keys
from gateway.index.object_store import ObjectStore
from gateway.index.study_state import record_event
from gateway.index.tables import FindingRow, JobRow, ResultRow, SourceRow, StudyRow, utcnow
from gateway.inference.findings import Finding
from gateway.jobs.states import JobState
from gateway.results.artifacts import (
    Artifact,
    BuildOptions,
    BuildRequest,
    InputsUnreadable,
    build_job,
    build_semd,
    load_input,
    store_artifacts,
)
from gateway.results.build_pool import BuildPool
from gateway.results.input import Organisation

log = logging.getLogger(__name__)

STORED = "stored"
WITHHELD = "withheld"


@dataclass
class ReportContext:
    db: Database
    store: ObjectStore
    registry: DeviceRegistry
    destinations: Destinations
    options: BuildOptions
    uid_root: str | None = None  # settings.uid_root: the organisation's root for result UIDs
    builder: BuildPool | None = None  # children that build the objects; None: this thread

    def close(self) -> None:
        if self.builder is not None:
            self.builder.close()


def build_results(context: ReportContext, job_id: int) -> int:
    """Build, store and queue a job's results; returns how many objects were stored."""
    with context.db.session() as session:
        job = session.get(JobRow, job_id)
        if job is None or job.state != JobState.INFERRED.value:
            return 0
        done = session.scalar(select(exists().where(ResultRow.job_id == job_id)))
        if done:
            return 0
    try:
        request = _request(context, job_id)
        artifacts = _build(context, request)
    except StorageError as exc:
        if _inputs_present(context, job_id):
            raise  # the object store is briefly away: the task retries
        return _withhold_all(context, job_id, f"inputs gone from the object store: {exc}")
    except DatabaseError:
        raise  # the database is briefly away: the task retries; never "inputs unreadable"
    except InputsUnreadable as exc:  # not transient: withheld rows say why, nothing retries
        return _withhold_all(context, job_id, str(exc))
    except Exception as exc:  # the results child died, or could not send its answer back
        reason = f"results not built: {exc.__class__.__name__}: {exc}"
        return _withhold_all(context, job_id, reason)
    try:
        return _record(context, job_id, request.organisation.name, artifacts)
    except IntegrityError:  # another worker recorded this job's results first
        return 0


def build_semd_of_findings(context: ReportContext, job_id: int) -> bool:
    """An external device's job: the SEMD from the findings its vendor's SR gave, recorded
    beside the vendor's own objects and queued like ours (once per job). False when the
    job has one already."""
    with context.db.session() as session:
        if session.scalar(
            select(
                exists().where(ResultRow.job_id == job_id, ResultRow.kind == ResultKind.SEMD.value)
            )
        ):
            return False
    request = gather_request(context, job_id)
    artifact = build_semd(load_input(request, context.store), context.options, None)
    store_artifacts([artifact], context.store, request.study_uid, job_id)
    try:
        _record(context, job_id, request.organisation.name, [artifact], adding=True)
    except IntegrityError:  # a concurrent SR of the same job recorded it first
        return False
    return True


def _inputs_present(context: ReportContext, job_id: int) -> bool:
    with context.db.session() as session:
        job = session.get(JobRow, job_id)
        if job is None:
            return False
        keys = current_instance_keys(session, job.series_uids or [job.series_uid])
    try:
        return bool(keys) and all(context.store.exists(key) for key in keys)
    except StorageError:
        return True  # cannot tell: treat as transient


def _withhold_all(context: ReportContext, job_id: int, reason: str) -> int:
    log.error("results not built", extra={"job_id": job_id, "reason": reason})
    with context.db.session() as session:
        source = session.scalar(
            select(SourceRow.name)
            .join(StudyRow, StudyRow.source_id == SourceRow.id)
            .join(JobRow, JobRow.study_id == StudyRow.id)
            .where(JobRow.id == job_id)
        )
    artifacts = [Artifact(kind, reason=reason) for kind in (ResultKind.SR, ResultKind.SEMD)]
    try:
        return _record(context, job_id, source or "", artifacts)
    except IntegrityError:
        return 0


# --- gathering the input --------------------------------------------------------------


def gather_request(context: ReportContext, job_id: int) -> BuildRequest:
    """What the database holds of the job: its device, findings and source keys."""
    with context.db.session() as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        study = session.get(StudyRow, job.study_id)
        assert study is not None
        source = study.source
        organisation = Organisation(
            name=source.name,
            title=source.title or source.name,
            frmo_oid=source.frmo_oid,
            region=study.region_code,
        )
        keys = current_instance_keys(session, job.series_uids or [job.series_uid])
        # In the order inference recorded them: tracking UIDs count findings in it.
        rows = session.scalars(
            select(FindingRow).where(FindingRow.job_id == job_id).order_by(FindingRow.id)
        )
        findings = [Finding.from_row(row) for row in rows]
        completed = job.finished_at or utcnow()
        study_uid, device_key = study.study_uid, job.device_key
        study_type, service_code = job.study_type, job.service_code
        started = job.started_at or completed
    # After the session: the registry opens its own (a second write transaction here would
    # wait on this one's lock).
    return BuildRequest(
        job_id=job_id,
        study_uid=study_uid,
        device=context.registry.manifest(device_key),
        study_type=study_type,
        service_code=service_code,
        source_keys=keys,
        findings=findings,
        organisation=organisation,
        started_at=started,
        completed_at=completed,
        uid_root=context.uid_root,
    )


def _request(context: ReportContext, job_id: int) -> BuildRequest:
    """:func:`gather_request`, with what is wrong with the job itself (a device gone from the
    registry, no instances left) as :class:`InputsUnreadable`."""
    try:
        request = gather_request(context, job_id)
    except (DatabaseError, StorageError):
        raise  # transient: the caller retries
    except Exception as exc:
        raise InputsUnreadable(f"inputs unreadable: {exc.__class__.__name__}: {exc}") from exc
    if not request.source_keys:
        raise InputsUnreadable(
            "inputs unreadable: the analysed series has no stored instances any more"
        )
    return request


def _build(context: ReportContext, request: BuildRequest) -> list[Artifact]:
    if context.builder is not None:
        return context.builder.build(request)
    return build_job(request, context.store, context.options)


# --- recording ------------------------------------------------------------------------


def _record(
    context: ReportContext,
    job_id: int,
    source: str,
    artifacts: list[Artifact],
    adding: bool = False,
) -> int:
    """``adding``: beside results the job has (an external device's objects), once per kind."""
    now = utcnow()
    stored = 0
    with context.db.session() as session:
        job = session.get(JobRow, job_id, with_for_update=True)
        assert job is not None
        recorded = exists().where(ResultRow.job_id == job_id)
        if adding:
            recorded = recorded.where(ResultRow.kind.in_([a.kind.value for a in artifacts]))
        if session.scalar(select(recorded)):
            return 0  # a concurrent report task recorded them first
        shadow = job.mode == DeviceMode.SHADOW
        for artifact in artifacts:
            row = ResultRow(
                job_id=job_id,
                kind=artifact.kind.value,
                state=STORED if artifact.object_key is not None else WITHHELD,
                reason=artifact.reason,
                object_key=artifact.object_key,
                sop_instance_uid=artifact.sop_instance_uid,
                series_instance_uid=artifact.series_instance_uid,
                sha256=artifact.sha256,
                size=artifact.size,
                meta=artifact.meta,
                created_at=now,
            )
            session.add(row)
            session.flush()
            if artifact.object_key is not None:
                stored += 1
                if not shadow:
                    enqueue(session, row, context.destinations.for_result(source, artifact.kind))
        withheld = {a.kind.value: a.reason for a in artifacts if a.object_key is None}
        record_event(
            session,
            job.study_id,
            "results",
            now,
            detail={"job": job_id, "stored": stored, "withheld": withheld, "shadow": shadow},
            note="; ".join(f"{k}: {v}" for k, v in withheld.items()) or None,
        )
    log.info(
        "results stored",
        extra={"job_id": job_id, "stored": stored, "withheld": withheld, "shadow": shadow},
    )
    return stored


def results_of(db: Database, study_uid: str) -> list[ResultRow]:
    """A study's result rows (detached), newest job first."""
    with db.session() as session:
        query = (
            select(ResultRow)
            .join(JobRow, JobRow.id == ResultRow.job_id)
            .join(StudyRow, StudyRow.id == JobRow.study_id)
            .where(StudyRow.study_uid == study_uid)
            .order_by(ResultRow.job_id.desc(), ResultRow.id)
        )
        rows = list(session.scalars(query))
        session.expunge_all()
        return rows


def export_results(
    db: Database, store: ObjectStore, study_uid: str, out: Path
) -> list[tuple[ResultRow, list[Path]]]:
    """Write a study's stored results under ``out/job-<id>/`` (the SEMD with its metadata
    as ``semd.json``); returns each result row with the files written for it."""
    written = []
    for row in results_of(db, study_uid):
        paths: list[Path] = []
        if row.object_key:
            target = out / f"job-{row.job_id}" / Path(row.object_key).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.get(row.object_key))
            paths.append(target)
            metadata = (row.meta or {}).get("metadata")
            if row.kind == ResultKind.SEMD.value and metadata:
                sidecar = target.with_suffix(".json")
                sidecar.write_text(json.dumps(metadata, ensure_ascii=False, indent=2), "utf-8")
                paths.append(sidecar)
        written.append((row, paths))
    return written
