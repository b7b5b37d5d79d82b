"""Dispatch: what happens when a study is complete. Route it and record its jobs, due now.

This is the completion hook of :mod:`gateway.ingest.assembly`, which offers each completion
until it has been routed (a hook that raises is offered again after a backoff). It is
idempotent: a completion offered again finds the study already routed and does nothing.
A study fetched as a prior for another study's job starts no job: it is not applicable.
The jobs are recorded due; :mod:`gateway.jobs.redrive` sends their tasks (kicked at once
after the commit), so a broker that is away delays them and loses none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from gateway.devices.modes import DeviceMode, mode_of
from gateway.devices.registry import DeviceRegistry
from gateway.index.database import Database
from gateway.index.study_state import StudyState, set_state
from gateway.index.tables import JobRow, StudyRow, utcnow
from gateway.ingest.assembly import StudyCompleted
from gateway.jobs.states import JobState
from gateway.jobs.task_queue import queue_for
from gateway.routing import PlannedJob, RoutingDecision, facts_from_index, load_rules, route
from gateway.settings import Settings

log = logging.getLogger(__name__)

# A study fetched as a job's prior (gateway.jobs.priors) is held, never analysed itself.
PRIOR_REASON = "a prior study, fetched for comparison"


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
        next_attempt_at=now,  # its task is due at once (gateway.jobs.redrive)
        sends=0,
    )


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: DeviceRegistry,
        after_record: Callable[[], None] = lambda: None,
        rules_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.after_record = after_record  # the re-drive's kick: send the new jobs now
        self.rules = load_rules(rules_file or settings.routing_file)

    def __call__(self, completed: StudyCompleted) -> None:
        devices = self.registry.active_for_region(completed.region)
        with self.db.session() as session:
            facts = facts_from_index(session, completed.study_uid)
        decision = route(facts, self.rules, devices)
        if self._record(completed, decision):
            self.after_record()

    def _record(self, completed: StudyCompleted, decision: RoutingDecision) -> list[int]:
        with self.db.session() as session:
            study = session.scalars(
                select(StudyRow).where(StudyRow.study_uid == completed.study_uid).with_for_update()
            ).one()
            if study.state != StudyState.COMPLETE or study.completed_at != completed.completed_at:
                return []  # already routed, or reopened since: this completion is stale
            now = utcnow()
            if not decision.jobs or study.prior:
                reason = (
                    PRIOR_REASON
                    if study.prior
                    else decision.not_applicable_reason or "no rule matched"
                )
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
            return [r.id for r in rows]
