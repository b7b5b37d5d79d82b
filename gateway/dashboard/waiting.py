"""How many studies wait, and why: each study that the gateway still owes a step counted
once, at its earliest step (routing, queued for analysis, in analysis, with an external
device's vendor, results being built, results being delivered), with the oldest wait and
the last transient error of the step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from sqlalchemy import select

from gateway.delivery.outbox import OutboxState
from gateway.index.database import Database
from gateway.index.study_state import ROUTING_STATE
from gateway.index.tables import JobRow, OutboxRow, ResultRow, StudyRow, utcnow
from gateway.jobs.states import JobState, unreported


class Step(IntEnum):
    """What a study waits for, in the order it meets them."""

    ROUTING = 1
    QUEUED = 2
    RUNNING = 3
    SENT = 4
    REPORTING = 5
    DELIVERING = 6


STEP_TITLES = {
    Step.ROUTING: "ожидают маршрутизации",
    Step.QUEUED: "в очереди на анализ",
    Step.RUNNING: "идёт анализ",
    Step.SENT: "ожидают ответа ИИ-сервиса",
    Step.REPORTING: "формируются результаты",
    Step.DELIVERING: "доставляются результаты",
}


@dataclass(frozen=True)
class WaitingStudies:
    step: Step
    title: str
    studies: int
    oldest_s: float
    retrying: int  # studies whose step last met an error and is tried again
    last_error: str | None


@dataclass
class _Wait:
    step: Step
    since: datetime
    error: str | None


def waiting_studies(db: Database, region: str | None = None) -> list[WaitingStudies]:
    """The steps with studies waiting (empty: nothing waits), scoped to ``region``."""
    now = utcnow()
    found: dict[int, _Wait] = {}
    with db.session() as session:
        for step, query in _queries().items():
            if region is not None:
                query = query.where(StudyRow.region_code == region)
            for study_id, since, error in session.execute(query):
                if since is None:
                    continue
                held = found.get(study_id)
                if held is None or step < held.step or (step == held.step and since < held.since):
                    found[study_id] = _Wait(step, since, error or (held.error if held else None))
    summary = []
    for step in Step:
        waits = [w for w in found.values() if w.step == step]
        if waits:
            oldest = min(w.since for w in waits)
            errors = [w.error for w in waits if w.error]
            summary.append(
                WaitingStudies(
                    step,
                    STEP_TITLES[step],
                    len(waits),
                    max(0.0, (now - oldest).total_seconds()),
                    len(errors),
                    errors[0][:200] if errors else None,
                )
            )
    return summary


def _queries() -> dict[Step, Any]:  # Select over (study id, since, last error)
    jobs = select(JobRow.study_id, JobRow.created_at, JobRow.last_error).join(StudyRow)
    return {
        Step.ROUTING: select(StudyRow.id, StudyRow.completed_at, StudyRow.last_error).where(
            StudyRow.state == ROUTING_STATE.value
        ),
        Step.QUEUED: jobs.where(JobRow.state == JobState.QUEUED.value),
        Step.RUNNING: select(JobRow.study_id, JobRow.started_at, JobRow.last_error)
        .join(StudyRow)
        .where(JobRow.state == JobState.RUNNING.value),
        Step.SENT: select(JobRow.study_id, JobRow.started_at, JobRow.last_error)
        .join(StudyRow)
        .where(JobRow.state == JobState.SENT.value),
        Step.REPORTING: select(JobRow.study_id, JobRow.finished_at, JobRow.last_error)
        .join(StudyRow)
        .where(unreported()),
        Step.DELIVERING: select(JobRow.study_id, OutboxRow.created_at, OutboxRow.last_error)
        .join(ResultRow, ResultRow.id == OutboxRow.result_id)
        .join(JobRow, JobRow.id == ResultRow.job_id)
        .join(StudyRow, StudyRow.id == JobRow.study_id)
        .where(OutboxRow.state == OutboxState.PENDING.value),
    }
