"""Each sent study's outcome, read from the gateway's database: its state and when its
result was ready."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gateway.index.study_state import StudyState
from gateway.jobs.states import DONE_STATES

FINISHED_STUDY_STATES = (StudyState.NOT_APPLICABLE.value, StudyState.FAILED.value)


@dataclass(frozen=True)
class StudyOutcome:
    study_uid: str
    state: str
    last_received_at: datetime
    result_at: datetime | None  # None: not finished
    end: Literal["outbox.delivered_at", "jobs.finished_at", "none"]
    failed_jobs: int


def read_outcomes(database_url: str, study_uids: Sequence[str]) -> dict[str, StudyOutcome]:
    """Each study's state and the time its result was ready, read with Core statements on
    short connections (no ORM session, no write lock taken on the gateway's database)."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.index.tables import JobRow, OutboxRow, ResultRow, StudyRow

    studies_t, jobs_t = StudyRow.__table__, JobRow.__table__
    results_t, outbox_t = ResultRow.__table__, OutboxRow.__table__
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            studies = connection.execute(
                select(studies_t.c.id, studies_t.c.study_uid, studies_t.c.state,
                       studies_t.c.last_received_at)
            ).all()  # fmt: skip
            jobs = connection.execute(
                select(jobs_t.c.id, jobs_t.c.study_id, jobs_t.c.state, jobs_t.c.finished_at)
            ).all()
            try:
                deliveries = connection.execute(
                    select(results_t.c.job_id, outbox_t.c.delivered_at).join(
                        outbox_t, outbox_t.c.result_id == results_t.c.id
                    )
                ).all()
            except SQLAlchemyError:  # no results/outbox tables in this database yet
                deliveries = []
    finally:
        engine.dispose()
    wanted = set(study_uids)
    jobs_by_study: dict[int, list[Any]] = {}
    for job in jobs:
        jobs_by_study.setdefault(job.study_id, []).append(job)
    delivered: dict[int, list[datetime | None]] = {}
    for job_id, delivered_at in deliveries:
        delivered.setdefault(job_id, []).append(delivered_at)
    return {
        row.study_uid: _outcome(row, jobs_by_study.get(row.id, []), delivered)
        for row in studies
        if row.study_uid in wanted
    }


def _outcome(
    study: Any, jobs: list[Any], delivered: dict[int, list[datetime | None]]
) -> StudyOutcome:
    received = study.last_received_at
    failed = sum(1 for job in jobs if job.state == "failed")
    if not jobs or any(job.state not in DONE_STATES for job in jobs):
        return StudyOutcome(study.study_uid, study.state, received, None, "none", failed)
    deliveries = [at for job in jobs for at in delivered.get(job.id, [])]
    if deliveries and all(at is not None for at in deliveries):
        end = max(at for at in deliveries if at is not None)
        return StudyOutcome(
            study.study_uid, study.state, received, end, "outbox.delivered_at", failed
        )
    end = max(job.finished_at for job in jobs)
    return StudyOutcome(study.study_uid, study.state, received, end, "jobs.finished_at", failed)


def wait_for_results(
    database_url: str, study_uids: Sequence[str], timeout_s: float, alive: Callable[[], bool]
) -> dict[str, StudyOutcome]:
    """Poll until every study has its result (or ended without one), or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcomes = read_outcomes(database_url, study_uids)
        finished = [o for o in outcomes.values() if o.result_at or o.state in FINISHED_STUDY_STATES]
        if len(finished) == len(study_uids) or time.monotonic() > deadline or not alive():
            return outcomes
        time.sleep(0.5)
