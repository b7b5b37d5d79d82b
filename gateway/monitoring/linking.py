"""Assessment objects sent to the gateway, linked as verdicts: the completion hook in front of
the dispatcher.

A viewer that sends a radiologist's assessment (an SR or a Key Object Selection, IHE AIRA)
sends it into the study it assesses, so it arrives like any instance: the study reopens and
completes again. :class:`AssessmentLinker` then reads every assessment object of the study
not linked yet (:mod:`gateway.monitoring.aira`); one that references our result objects of a
job of the same study becomes a verdict on that job — on the findings whose tracking UIDs it
names, else on the whole result — written as a ``dicom`` verdict under the calling AE. An
object whose verdict cannot be read is noted on the study's timeline and not linked.

When all that arrived since the study was last routed are such assessment objects, the
study goes back to ``routed`` and is not routed again: a radiologist's verdict must not
start a second analysis (and a second copy of every result). Otherwise the dispatcher gets
the completion as before. When the object store or the database is away the hook raises, and
the assembler hands the completion over again after its backoff; an object that cannot be
read at all is logged and skipped, and any other failure of the linking is logged and the
study routed as before: a study is never held back for a verdict.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

from pydicom import dcmread
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.access.audit import DICOM_ROLE, Actor
from gateway.errors import DatabaseError, StorageError
from gateway.index.database import Database
from gateway.index.object_store import ObjectStore
from gateway.index.study_state import StudyState, record_event, set_state
from gateway.index.tables import (
    FindingRow,
    InstanceRow,
    JobRow,
    ResultRow,
    SeriesRow,
    StudyRow,
    VerdictRow,
    utcnow,
)
from gateway.ingest.assembly import CompletionHook, StudyCompleted
from gateway.monitoring.aira import ASSESSMENT_CLASSES, Assessment, read_assessment
from gateway.monitoring.verdicts import AssessmentCreate, Recording, VerdictSource, record_in
from gateway.results.header import finding_tracking_uid

log = logging.getLogger(__name__)

ACTION = "DICOM assessment object received"


@dataclass
class _Object:
    sop_instance_uid: str
    object_key: str
    calling_ae: str
    received_at: object


@dataclass
class LinkOutcome:
    verdicts: list[int] = field(default_factory=list)  # verdict ids written now
    assessments: set[str] = field(default_factory=set)  # objects about our results (any time)


class AssessmentLinker:
    """The completion hook: link assessment objects, then route unless only they arrived."""

    def __init__(
        self, db: Database, store: ObjectStore, uid_root: str | None, then: CompletionHook
    ) -> None:
        self.db, self.store, self.uid_root, self.then = db, store, uid_root, then

    def __call__(self, completed: StudyCompleted) -> None:
        try:
            outcome = link_study(self.db, self.store, self.uid_root, completed.study_uid)
            if outcome.assessments and self._only_assessments(completed, outcome):
                return
        except (DatabaseError, StorageError):
            raise  # ours, and transient: the assembler hands the completion over again
        except Exception:  # a bug must not hold a study back for a verdict
            log.exception("assessments not linked", extra={"study_uid": completed.study_uid})
        self.then(completed)

    def _only_assessments(self, completed: StudyCompleted, outcome: LinkOutcome) -> bool:
        """Put the study back to routed when nothing but assessments arrived since it was
        routed; True when it did."""
        with self.db.write_lock, self.db.session() as session:
            study = session.scalars(
                select(StudyRow).where(StudyRow.study_uid == completed.study_uid).with_for_update()
            ).one()
            if study.state != StudyState.COMPLETE or study.completed_at != completed.completed_at:
                return False
            routed_at = session.scalar(
                select(func.max(JobRow.study_completed_at)).where(JobRow.study_id == study.id)
            )
            if routed_at is None:
                return False
            arrived = set(
                session.scalars(
                    select(InstanceRow.sop_instance_uid)
                    .join(SeriesRow, InstanceRow.series_id == SeriesRow.id)
                    .where(SeriesRow.study_id == study.id, InstanceRow.received_at > routed_at)
                )
            )
            if not arrived or not arrived <= outcome.assessments:
                return False
            set_state(
                session,
                study,
                StudyState.ROUTED,
                utcnow(),
                detail={
                    "reason": "only assessments of AI results arrived",
                    "objects": len(arrived),
                },
            )
        log.info(
            "assessments linked; study not routed again",
            extra={"study_uid": completed.study_uid, "verdicts": len(outcome.verdicts)},
        )
        return True


def link_study(
    db: Database, store: ObjectStore, uid_root: str | None, study_uid: str
) -> LinkOutcome:
    """Link the study's assessment objects not linked yet; see the module's docstring."""
    outcome = LinkOutcome()
    with db.session() as session:
        study_id = session.scalar(select(StudyRow.id).where(StudyRow.study_uid == study_uid))
        if study_id is None:
            return outcome
        objects = _assessment_objects(session, study_id)
        ours = _our_results(session, study_id)
        linked = set(
            session.scalars(
                select(VerdictRow.object_uid).where(
                    VerdictRow.object_uid.in_([o.sop_instance_uid for o in objects])
                )
            )
        )
    for obj in objects:
        if obj.sop_instance_uid in ours:
            continue  # one of our own results come back
        if obj.sop_instance_uid in linked:
            outcome.assessments.add(obj.sop_instance_uid)
            continue
        data = store.get(obj.object_key)
        try:
            assessment = read_assessment(dcmread(io.BytesIO(data), stop_before_pixels=True))
        except Exception as exc:  # a sender's malformed object; the others still count
            log.warning(
                "assessment object not readable",
                extra={"object": obj.sop_instance_uid, "error": f"{exc.__class__.__name__}"},
            )
            continue
        jobs = sorted({ours[uid] for uid in assessment.references if uid in ours})
        if not jobs:
            continue  # not about our results
        outcome.assessments.add(obj.sop_instance_uid)
        outcome.verdicts += _link(db, uid_root, study_uid, study_id, obj, assessment, jobs)
    return outcome


def _assessment_objects(session: Session, study_id: int) -> list[_Object]:
    """The current version of each SR / KOS instance of the study."""
    rows = session.execute(
        select(
            InstanceRow.sop_instance_uid,
            InstanceRow.object_key,
            InstanceRow.calling_ae,
            InstanceRow.received_at,
            InstanceRow.version,
        )
        .join(SeriesRow, InstanceRow.series_id == SeriesRow.id)
        .where(SeriesRow.study_id == study_id, InstanceRow.sop_class_uid.in_(ASSESSMENT_CLASSES))
        .order_by(InstanceRow.sop_instance_uid, InstanceRow.version)
    ).all()
    newest = {row.sop_instance_uid: row for row in rows}  # the highest version wins
    return [
        _Object(r.sop_instance_uid, r.object_key, r.calling_ae, r.received_at)
        for r in newest.values()
    ]


def _our_results(session: Session, study_id: int) -> dict[str, int]:
    """SOP Instance UID of each of our stored DICOM results in the study → its job."""
    rows = session.execute(
        select(ResultRow.sop_instance_uid, ResultRow.job_id)
        .join(JobRow, ResultRow.job_id == JobRow.id)
        .where(JobRow.study_id == study_id, ResultRow.sop_instance_uid.is_not(None))
    )
    return {uid: job_id for uid, job_id in rows if uid}


def _link(
    db: Database,
    uid_root: str | None,
    study_uid: str,
    study_id: int,
    obj: _Object,
    assessment: Assessment,
    jobs: list[int],
) -> list[int]:
    with db.write_lock, db.session() as session:
        if assessment.verdict is None:
            record_event(
                session,
                study_id,
                "assessment_unread",
                utcnow(),
                detail={"object": obj.sop_instance_uid, "jobs": jobs},
                note=f"no verdict read from the assessment object: {assessment.how}",
            )
            return []
        by = Recording(
            actor=Actor(f"DICOM {obj.calling_ae}"[:100], DICOM_ROLE),
            source=VerdictSource.DICOM,
            action=ACTION,
            object_uid=obj.sop_instance_uid,
        )
        written = []
        for job_id in jobs:
            tracked = _tracked(session, uid_root, study_uid, job_id, assessment.tracking_uids)
            targets: list[int | None] = list(tracked) or [None]
            for finding_id in targets:
                body = AssessmentCreate(
                    verdict=assessment.verdict, finding_id=finding_id, comment=assessment.comment
                )
                written.append(record_in(session, job_id, None, body, by).id)
    log.info(
        "assessment linked",
        extra={"object": obj.sop_instance_uid, "jobs": jobs, "verdict": assessment.verdict},
    )
    return written


def _tracked(
    session: Session, uid_root: str | None, study_uid: str, job_id: int, named: set[str]
) -> list[int]:
    """The job's findings whose tracking UIDs (as the SR and SEG wrote them) are ``named``."""
    if not named:
        return []
    ids = session.scalars(
        select(FindingRow.id).where(FindingRow.job_id == job_id).order_by(FindingRow.id)
    ).all()
    return [
        finding_id
        for index, finding_id in enumerate(ids, start=1)
        if finding_tracking_uid(uid_root, study_uid, job_id, index) in named
    ]
