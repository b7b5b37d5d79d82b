"""Priors: a job whose device asks for them (the manifest's ``priors``) gets the patient's
earlier studies from the source's archive before it runs.

The archive (the source's ``query``) is asked for the patient's studies by Patient ID within
``within_years`` before the current study (study-level C-FIND); a match that is the current
study, has none of the device's modalities (``same_modality``) or names another patient
(Patient's Name differs where both are known: one ID, two issuers) is left out; the newest
``max`` remain. Each not held yet is recorded in the index first as a prior study, so the
instances the archive then sends (C-MOVE to the gateway's SCP, or C-GET on our own
association, through the one ingest) land in a study that starts no job of its own. The
job records the priors it got (``jobs.prior_study_uids``) and the study's timeline says
what was found, fetched or why not; a job asked again (a redelivery) reuses that record.

Anything that goes wrong with the archive — no answer, nothing found, a failed retrieve —
leaves the job without those priors, never failed; the index being away is transient (the
job's run is retried).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from gateway.index.database import Database
from gateway.index.patient_names import folded
from gateway.index.study_state import StudyState, record_event
from gateway.index.tables import JobRow, SeriesRow, StudyEventRow, StudyRow, utcnow
from gateway.ingest.receive import Ingest, Sender
from gateway.ingest.scp import storage_sop_classes
from gateway.ingest.sources import ArchiveQuery, Retrieve, Source, SourceDirectory
from gateway.settings import Settings
from models.manifest import DeviceManifest, Priors
from pacs_adapters.dicom_find import ArchiveStudy, patient_studies
from pacs_adapters.dicom_retrieve import Receiver, Retrieved, get_study, move_study
from pacs_adapters.dicom_scu import Peer, ScuError

log = logging.getLogger(__name__)

PRIORS_EVENT = "priors"
_OUT_OF_RESOURCES = 0xA700

# The archive's calls, injectable for tests of what the gateway does with their answers.
FindStudies = Callable[[Peer, str, str, str], list[ArchiveStudy]]
MoveStudy = Callable[[Peer, str, str, float], Retrieved]
GetStudy = Callable[[Peer, str, Sequence[str], Receiver, float], Retrieved]


@dataclass(frozen=True)
class _Current:
    """What the prior query needs of the job and its study."""

    job_id: int
    study_id: int
    study_uid: str
    source_name: str
    source_id: int
    region: str
    patient_id: str | None
    patient_name: str | None
    study_date: str | None


@dataclass
class _Outcome:
    """What one look for priors found and fetched: the timeline's detail."""

    found: int = 0
    chosen: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    none: str | None = None


class PriorFetch:
    """The priors hook of the inference context: ``(job id, manifest)`` → the series of the
    job's prior studies (empty when the device wants none or none could be had)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        ingest: Ingest,
        directory: SourceDirectory,
        source_ids: dict[str, int],
        *,
        find: FindStudies = patient_studies,
        move: MoveStudy = move_study,
        get: GetStudy = get_study,
        today: Callable[[], date] = lambda: utcnow().date(),
    ) -> None:
        self.settings = settings
        self.db = db
        self.ingest = ingest
        self.directory = directory
        self.source_ids = source_ids
        self.find, self.move, self.get, self.today = find, move, get, today

    def __call__(self, job_id: int, manifest: DeviceManifest) -> tuple[str, ...]:
        wanted = manifest.priors
        if wanted is None:
            return ()
        modalities = manifest.accepts.modalities if wanted.same_modality else None
        with self.db.session() as session:
            job = session.get(JobRow, job_id)
            recorded = None if job is None else job.prior_study_uids
        if recorded is None:
            recorded = self._look(job_id, wanted, modalities)
        return prior_series(self.db, recorded, modalities)

    def _look(self, job_id: int, wanted: Priors, modalities: list[str] | None) -> list[str]:
        current = self._current(job_id)
        if current is None:
            return []
        outcome = _Outcome()
        source = self.directory.by_name(current.source_name)
        query = source.query if source is not None else None
        if query is None:
            outcome.none = "the source names no archive to ask (query)"
        elif not current.patient_id:
            outcome.none = "the study has no Patient ID"
        else:
            self._find_and_fetch(current, query, wanted, modalities, outcome)
        self._record(current, outcome)
        return outcome.held

    def _find_and_fetch(
        self,
        current: _Current,
        query: ArchiveQuery,
        wanted: Priors,
        modalities: list[str] | None,
        outcome: _Outcome,
    ) -> None:
        peer = self._peer(query)
        until = _parse_date(current.study_date) or self.today()
        since = until - timedelta(days=round(365.25 * wanted.within_years))
        try:
            matches = self.find(peer, current.patient_id or "", _dicom(since), _dicom(until))
        except ScuError as exc:
            outcome.none = f"the archive did not answer the C-FIND: {str(exc)[:200]}"
            return
        outcome.found = len(matches)
        chosen = _choose(matches, current, modalities, wanted.max)
        outcome.chosen = [m.study_uid for m in chosen]
        if not chosen:
            outcome.none = "the archive holds no prior study that fits"
            return
        for match in chosen:
            self._fetch(current, query, peer, match, outcome)
        if not outcome.held:
            outcome.none = "no prior study could be fetched"

    def _fetch(
        self,
        current: _Current,
        query: ArchiveQuery,
        peer: Peer,
        match: ArchiveStudy,
        outcome: _Outcome,
    ) -> None:
        if _has_instances(self.db, match.study_uid):
            outcome.held.append(match.study_uid)  # held already (sent to us before)
            return
        placed = self._place(current, match)
        try:
            if query.retrieve == Retrieve.GET:
                receiver = self._receiver(current, query)
                classes = storage_sop_classes(self.settings)
                self.get(peer, match.study_uid, classes, receiver, query.retrieve_timeout_s)
            else:
                destination = query.move_destination or self.settings.ae_title
                self.move(peer, match.study_uid, destination, query.retrieve_timeout_s)
        except ScuError as exc:
            outcome.failed[match.study_uid] = str(exc)[:300]
        if _has_instances(self.db, match.study_uid):
            outcome.held.append(match.study_uid)
        elif placed:
            _unplace(self.db, match.study_uid)
            outcome.failed.setdefault(match.study_uid, "the archive sent no instance")

    def _current(self, job_id: int) -> _Current | None:
        with self.db.session() as session:
            found = session.execute(
                select(JobRow, StudyRow).join(StudyRow).where(JobRow.id == job_id)
            ).first()
            if found is None:
                return None
            job, study = found
            return _Current(
                job_id=job.id,
                study_id=study.id,
                study_uid=study.study_uid,
                source_name=study.source.name,
                source_id=study.source_id,
                region=study.region_code,
                patient_id=study.patient_id,
                patient_name=study.patient_name,
                study_date=study.study_date,
            )

    def _place(self, current: _Current, match: ArchiveStudy) -> bool:
        """Record the prior in the index before its instances arrive, so it is a prior from
        its first instance; False when another job placed it first."""
        now = utcnow()
        try:
            with self.db.session() as session:
                study = StudyRow(
                    study_uid=match.study_uid,
                    source_id=current.source_id,
                    region_code=current.region,
                    state=StudyState.RECEIVING.value,
                    patient_id=current.patient_id,
                    patient_name=current.patient_name,
                    patient_name_folded=folded(current.patient_name),
                    study_date=match.study_date,
                    study_description=match.study_description,
                    first_received_at=now,
                    last_received_at=now,
                    state_changed_at=now,
                    prior=True,
                )
                session.add(study)
                session.flush()
                record_event(
                    session,
                    study.id,
                    "state",
                    now,
                    state=StudyState.RECEIVING,
                    detail={"prior_for": current.study_uid, "job_id": current.job_id},
                )
        except IntegrityError:
            return False
        return True

    def _receiver(self, current: _Current, query: ArchiveQuery) -> Receiver:
        sender = Sender(
            source=self._source(current),
            source_id=current.source_id,
            calling_ae=query.ae_title,
            address=query.host[:64],
        )
        limit = self.settings.max_instance_bytes

        def receive(instance: bytes | Path) -> int:
            size = instance.stat().st_size if isinstance(instance, Path) else len(instance)
            if size > limit:
                return _OUT_OF_RESOURCES
            if isinstance(instance, Path):
                return int(self.ingest.receive_file(instance, sender).status)
            return int(self.ingest.receive(instance, sender).status)

        return receive

    def _source(self, current: _Current) -> Source:
        source = self.directory.by_name(current.source_name)
        assert source is not None  # checked before the archive was asked
        return source

    def _peer(self, query: ArchiveQuery) -> Peer:
        return Peer(
            host=query.host,
            port=query.port,
            called_ae=query.ae_title,
            calling_ae=query.calling_ae or self.settings.ae_title,
            timeout_s=query.timeout_s,
        )

    def _record(self, current: _Current, outcome: _Outcome) -> None:
        with self.db.session() as session:
            job = session.get(JobRow, current.job_id, with_for_update=True)
            if job is None:
                return
            job.prior_study_uids = list(outcome.held)
            detail: dict[str, object] = {
                "job_id": current.job_id,
                "device": job.device_key,
                "found": outcome.found,
                "chosen": outcome.chosen,
                "studies": outcome.held,
            }
            if outcome.failed:
                detail["failed"] = outcome.failed
            note = f"without priors: {outcome.none}" if outcome.none else None
            at = utcnow()
            record_event(session, current.study_id, PRIORS_EVENT, at, detail=detail, note=note)
        log.info(
            "priors looked for",
            extra={
                "job_id": current.job_id,
                "study_uid": current.study_uid,
                "priors": len(outcome.held),
                "why_none": outcome.none,
            },
        )


def prior_series(
    db: Database, study_uids: Sequence[str], modalities: Sequence[str] | None
) -> tuple[str, ...]:
    """The series of ``study_uids`` that hold instances (of ``modalities`` when given),
    newest study first."""
    if not study_uids:
        return ()
    query = (
        select(SeriesRow.series_uid)
        .join(StudyRow)
        .where(StudyRow.study_uid.in_(list(study_uids)), SeriesRow.instances.any())
        .order_by(StudyRow.study_date.desc(), SeriesRow.series_number, SeriesRow.id)
    )
    if modalities is not None:
        query = query.where(SeriesRow.modality.in_(list(modalities)))
    with db.session() as session:
        return tuple(session.scalars(query))


def _choose(
    matches: list[ArchiveStudy],
    current: _Current,
    modalities: list[str] | None,
    most: int,
) -> list[ArchiveStudy]:
    fitting = [
        m
        for m in matches
        if m.study_uid != current.study_uid
        and (modalities is None or not m.modalities or set(m.modalities) & set(modalities))
        and _same_name(m.patient_name, current.patient_name)
    ]
    unique = {m.study_uid: m for m in fitting}
    return sorted(unique.values(), key=lambda m: m.study_date or "", reverse=True)[:most]


def _same_name(theirs: str | None, ours: str | None) -> bool:
    """False only when both are known and differ (case, spacing and trailing empty
    components aside): another patient under the same ID."""
    theirs, ours = folded(theirs), folded(ours)
    if not theirs or not ours:
        return True
    return theirs.split("=")[0] == ours.split("=")[0]  # the alphabetic representations


def _has_instances(db: Database, study_uid: str) -> bool:
    with db.session() as session:
        count = session.scalar(
            select(func.count(SeriesRow.id))
            .join(StudyRow)
            .where(StudyRow.study_uid == study_uid, SeriesRow.instances.any())
        )
    return bool(count)


def _unplace(db: Database, study_uid: str) -> None:
    """Remove a placed prior that got no instance (it would otherwise show as an empty
    study); one that got a series meanwhile stays."""
    with db.session() as session:
        study = session.scalars(
            select(StudyRow).where(StudyRow.study_uid == study_uid, StudyRow.prior.is_(True))
        ).first()
        if study is None or study.series:
            return
        session.execute(delete(StudyEventRow).where(StudyEventRow.study_id == study.id))
        session.delete(study)


def _parse_date(value: str | None) -> date | None:
    try:
        return datetime.strptime(value or "", "%Y%m%d").date()
    except ValueError:
        return None


def _dicom(day: date) -> str:
    return day.strftime("%Y%m%d")
