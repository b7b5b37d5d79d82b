"""From a finished job to its results: SR, flag images, GSPS, SEG and SEMD, stored and queued.

The builders are pure functions of a :class:`~gateway.results.input.ReportInput`; this
module gathers that input (the job's findings, its source instances from the object store,
the device's manifest, the sending organisation), runs each builder, stores what they
return, and in one transaction records a results row per object and an outbox row per
destination. A builder that cannot produce its result (the SEMD without the patient's
СНИЛС, say) leaves a ``withheld`` row that says why; the others go ahead. A job run in
shadow mode (:mod:`gateway.devices.modes`) has its results built and stored like any other,
but no outbox rows: nothing of it leaves the gateway.

Running twice for a job is harmless: object keys and UIDs are derived from the job, and a
job whose results are recorded is skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
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
from gateway.inference.decode import volume_order
from gateway.inference.findings import Finding
from gateway.inference.masks import decode_mask
from gateway.jobs.states import JobState
from gateway.results import flags, gsps, seg, sr
from gateway.results.encoding import part10
from gateway.results.input import Organisation, ReportFinding, ReportInput
from gateway.results.semd import document as semd
from gateway.results.semd.config import SemdConfig
from gateway.results.semd.facts import SemdMissing
from gateway.results.semd.validation import validate_semd

log = logging.getLogger(__name__)

STORED = "stored"
WITHHELD = "withheld"


@dataclass
class ReportContext:
    db: Database
    store: ObjectStore
    registry: DeviceRegistry
    destinations: Destinations
    semd_config: SemdConfig | None
    semd_reference_dir: Path | None = None
    semd_key_image_max_px: int = 1024  # settings.semd_key_image_max_px
    uid_root: str | None = None  # settings.uid_root: the organisation's root for result UIDs


@dataclass
class _Artifact:
    kind: ResultKind
    data: bytes | None = None
    name: str = ""
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # withheld: why


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
        report = gather_input(context, job_id)
        if not report.sources:
            raise ValueError("the analysed series has no stored instances any more")
    except StorageError as exc:
        if _inputs_present(context, job_id):
            raise  # the object store is briefly away: the task retries
        return _withhold_all(context, job_id, f"inputs gone from the object store: {exc}")
    except DatabaseError:
        raise  # the database is briefly away: the task retries; never "inputs unreadable"
    except Exception as exc:  # not transient: withheld rows say why, nothing retries forever
        return _withhold_all(context, job_id, f"inputs unreadable: {exc.__class__.__name__}: {exc}")
    artifacts = build_artifacts(report, context)
    study_uid = str(report.sources[0].StudyInstanceUID)
    for artifact in artifacts:
        if artifact.data is not None:
            context.store.put(_key(study_uid, job_id, artifact.name), artifact.data)
    try:
        return _record(context, job_id, study_uid, report.organisation.name, artifacts)
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
    report = gather_input(context, job_id)
    artifact = _semd(report, context, None)
    study_uid = str(report.sources[0].StudyInstanceUID)
    if artifact.data is not None:
        context.store.put(_key(study_uid, job_id, artifact.name), artifact.data)
    try:
        _record(context, job_id, study_uid, report.organisation.name, [artifact], adding=True)
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
    artifacts = [_Artifact(kind, reason=reason) for kind in (ResultKind.SR, ResultKind.SEMD)]
    try:
        return _record(context, job_id, "", source or "", artifacts)
    except IntegrityError:
        return 0


# --- gathering the input --------------------------------------------------------------


def gather_input(context: ReportContext, job_id: int) -> ReportInput:
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
        recorded = [Finding.from_row(row) for row in rows]
        device_key, study_type, service = job.device_key, job.study_type, job.service_code
        completed = job.finished_at or utcnow()
        started = job.started_at or completed
    manifest = context.registry.manifest(device_key)
    sources: list[Dataset] = [dcmread(io.BytesIO(context.store.get(key))) for key in keys]
    if manifest.input_spec is not None and manifest.input_spec.dims == 3:
        sources = volume_order(sources)
    findings = [_with_mask(finding, context.store) for finding in recorded]
    return ReportInput(
        job_id=job_id,
        device=manifest,
        study_type=study_type,
        service_code=service,
        sources=sources,
        findings=findings,
        organisation=organisation,
        started_at=started,
        completed_at=completed,
        uid_root=context.uid_root,
    )


def _with_mask(finding: Finding, store: ObjectStore) -> ReportFinding:
    key = finding.location.mask_key
    return ReportFinding.of(finding, decode_mask(store.get(key)) if key else None)


# --- building -------------------------------------------------------------------------


def build_artifacts(report: ReportInput, context: ReportContext) -> list[_Artifact]:
    """Every result of the job; a builder's failure withholds its result, not the others."""
    artifacts: list[_Artifact] = []
    artifacts += _attempt(ResultKind.SR, lambda: [sr.build_sr(report)])
    # The flag images' drawings, kept for the SEMD's key image: no second decode.
    drawn: list[flags.FlagImage] = []

    def flag_images() -> list[Dataset]:
        drawn.extend(flags.build_flags(report))
        return [flag.dataset for flag in drawn]

    artifacts += _attempt(ResultKind.SC, flag_images)
    artifacts += _attempt(ResultKind.GSPS, lambda: _optional(gsps.build_gsps(report)))
    if any(f.mask is not None for f in report.findings):
        artifacts += _attempt(ResultKind.SEG, lambda: _optional(seg.build_seg(report)))
    artifacts.append(_semd(report, context, drawn[0].drawing if drawn else None))
    return artifacts


def _optional(dataset: Dataset | None) -> list[Dataset]:
    return [dataset] if dataset is not None else []


def _attempt(kind: ResultKind, build: Callable[[], list[Dataset]]) -> list[_Artifact]:
    try:
        datasets = build()
    except Exception as exc:  # a builder's bug must not lose the other results
        log.exception("result not built", extra={"kind": kind.value})
        return [_Artifact(kind, reason=f"{exc.__class__.__name__}: {exc}")]
    return [
        _Artifact(
            kind,
            data=part10(ds),
            name=f"{kind.value}-{index}.dcm",
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
        )
        for index, ds in enumerate(datasets, start=1)
    ]


def _semd(
    report: ReportInput, context: ReportContext, key_image: flags.Drawing | None
) -> _Artifact:
    if context.semd_config is None:
        return _Artifact(ResultKind.SEMD, reason="SEMD not configured (no semd_file)")
    try:
        jpeg = None
        if key_image is not None:
            jpeg = flags.key_image_jpeg(key_image, context.semd_key_image_max_px)
        document = semd.build_semd(report, context.semd_config, jpeg)
    except SemdMissing as exc:
        return _Artifact(ResultKind.SEMD, reason=str(exc), meta={"missing": exc.missing})
    except Exception as exc:
        log.exception("SEMD not built")
        return _Artifact(ResultKind.SEMD, reason=f"{exc.__class__.__name__}: {exc}")
    if context.semd_reference_dir is not None:
        problems = validate_semd(document.xml, context.semd_reference_dir)
        if problems:
            return _Artifact(
                ResultKind.SEMD,
                reason=f"SEMD invalid ({len(problems)} problems): {problems[0]}",
                meta={"problems": problems[:50]},
            )
    return _Artifact(
        ResultKind.SEMD,
        data=document.xml,
        name="semd.xml",
        meta={"document_id": document.document_id, "metadata": document.metadata},
    )


# --- recording ------------------------------------------------------------------------


def _key(study_uid: str, job_id: int, name: str) -> str:
    return f"results/{study_uid}/job-{job_id}/{name}"


def _record(
    context: ReportContext,
    job_id: int,
    study_uid: str,
    source: str,
    artifacts: list[_Artifact],
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
                state=STORED if artifact.data is not None else WITHHELD,
                reason=artifact.reason,
                object_key=_key(study_uid, job_id, artifact.name) if artifact.data else None,
                sop_instance_uid=artifact.sop_instance_uid,
                series_instance_uid=artifact.series_instance_uid,
                sha256=hashlib.sha256(artifact.data).hexdigest() if artifact.data else None,
                size=len(artifact.data) if artifact.data else None,
                meta=artifact.meta,
                created_at=now,
            )
            session.add(row)
            session.flush()
            if artifact.data is not None:
                stored += 1
                if not shadow:
                    enqueue(session, row, context.destinations.for_result(source, artifact.kind))
        withheld = {a.kind.value: a.reason for a in artifacts if a.data is None}
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
