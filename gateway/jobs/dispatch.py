"""Dispatch: what happens when a study is complete. Route it, record its jobs, queue them.

This is the completion hook of :mod:`gateway.ingest.assembly`. It is idempotent: a completion
offered again after a restart finds the study already routed and does nothing, and jobs
recorded but never queued (a crash between commit and send) are queued again at start-up.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from celery import Celery
from sqlalchemy import select

from gateway.devices.modes import DeviceMode, mode_of
from gateway.devices.registry import DeviceRegistry
from gateway.index.database import Database
from gateway.index.study_state import StudyState, set_state
from gateway.index.tables import JobRow, StudyRow, utcnow
from gateway.ingest.assembly import StudyCompleted
from gateway.jobs.states import JobState, pending_jobs
from gateway.jobs.task_queue import queue_for, send_infer
from gateway.routing import PlannedJob, RoutingDecision, facts_from_index, load_rules, route
from gateway.settings import Settings

log = logging.getLogger(__name__)


def job_row(
    study_id: int,
    completed_at: datetime,
    planned: PlannedJob,
    queue: str,
    now: datetime,
    mode: DeviceMode = DeviceMode.LIVE,
) -> JobRow:
    """The queued job row for one planned (series, device) analysis of one completion, in
    the mode its device version has in the study's region now."""
    return JobRow(
        study_id=study_id,
        study_completed_at=completed_at,
        series_uid=planned.series_uid,
        series_uids=list(planned.series_uids),  # a whole-study job reads every one
        device_key=f"{planned.device_id}@{planned.device_version}",
        study_type=str(planned.study_type),
        service_code=planned.service_code,
        rule=planned.rule,
        priority=int(planned.priority),
        queue=queue,
        state=JobState.QUEUED.value,
        mode=mode.value,
        attempts=0,
        timings_ms={},
        created_at=now,
    )


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: DeviceRegistry,
        app: Celery,
        rules_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.app = app
        self.rules = load_rules(rules_file or settings.routing_file)

    def __call__(self, completed: StudyCompleted) -> None:
        devices = self.registry.active_for_region(completed.region)
        with self.db.session() as session:
            facts = facts_from_index(session, completed.study_uid)
        decision = route(facts, self.rules, devices)
        for job_id, queue, priority in self._record(completed, decision):
            send_infer(self.app, self.settings, job_id, queue, priority)

    def _record(
        self, completed: StudyCompleted, decision: RoutingDecision
    ) -> list[tuple[int, str, int]]:
        with self.db.session() as session:
            study = session.scalars(
                select(StudyRow).where(StudyRow.study_uid == completed.study_uid).with_for_update()
            ).one()
            if study.state != StudyState.COMPLETE or study.completed_at != completed.completed_at:
                return []  # already routed, or reopened since: this completion is stale
            now = utcnow()
            if not decision.jobs:
                reason = decision.not_applicable_reason or "no rule matched"
                set_state(session, study, StudyState.NOT_APPLICABLE, now, detail={"reason": reason})
                log.info(
                    "study not applicable", extra={"study_uid": study.study_uid, "reason": reason}
                )
                return []
            rows = []
            for planned in decision.jobs:
                queue = queue_for(self.settings, planned.device_id)
                mode = mode_of(
                    session, planned.device_id, planned.device_version, study.region_code
                )
                row = job_row(study.id, completed.completed_at, planned, queue, now, mode)
                session.add(row)
                rows.append(row)
            session.flush()
            set_state(
                session,
                study,
                StudyState.ROUTED,
                now,
                detail={
                    "jobs": [
                        {
                            "job_id": r.id,
                            "device": r.device_key,
                            "series_uid": r.series_uid,
                            "study_type": r.study_type,
                            "priority": r.priority,
                            "mode": r.mode,
                        }
                        for r in rows
                    ]
                },
            )
            log.info("study routed", extra={"study_uid": study.study_uid, "jobs": len(rows)})
            return [(r.id, r.queue, r.priority) for r in rows]

    def requeue_pending(self) -> int:
        jobs = pending_jobs(self.db)
        for job in jobs:
            send_infer(self.app, self.settings, job.id, job.queue, job.priority)
        if jobs:
            log.info("pending jobs queued again", extra={"count": len(jobs)})
        return len(jobs)
