"""Celery tasks. ``infer`` runs one job through the inference pipeline and, when it has
findings, queues ``report``, which builds and stores the job's results and their outbox rows.

``acks_late`` with ``reject_on_worker_lost``: a task whose worker dies is delivered again,
and the pipeline is idempotent, so it completes once. Transient errors retry with
exponential backoff; when retries run out the job is failed with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from gateway.errors import DatabaseError, StorageError
from gateway.inference.pipeline import InferenceContext, TransientError, run_job
from gateway.jobs.states import JobState, fail_job
from gateway.jobs.task_queue import INFER_TASK, REPORT_TASK, InferPayload, send_report
from gateway.results.build import ReportContext, build_results

log = logging.getLogger(__name__)


def register_tasks(
    app: Celery,
    context: Callable[[], InferenceContext],
    reports: Callable[[], ReportContext],
    max_retries: int,
) -> None:
    @app.task(  # type: ignore[untyped-decorator]
        name=INFER_TASK,
        bind=True,
        shared=False,  # each app (each gateway in a test process) keeps its own task
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=max_retries,
    )
    def infer(task: Task, payload: dict[str, Any]) -> str:
        job_id = InferPayload.model_validate(payload).job_id
        ctx = context()
        try:
            state = run_job(ctx, job_id)
        except TransientError as exc:
            retries = int(task.request.retries or 0)
            if retries >= max_retries:
                fail_job(ctx.db, job_id, f"gave up after {retries} retries: {exc}")
                return JobState.FAILED.value
            log.warning(
                "job will be retried",
                extra={"job_id": job_id, "reason": str(exc), "retry": retries + 1},
            )
            raise task.retry(exc=exc, countdown=min(300, 2**retries)) from exc
        if state == JobState.INFERRED.value:
            send_report(app, job_id)  # a lost message is re-sent by the gateway's sweeper
        return state

    @app.task(  # type: ignore[untyped-decorator]
        name=REPORT_TASK,
        bind=True,
        shared=False,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=max_retries,
    )
    def report(task: Task, payload: dict[str, Any]) -> int:
        job_id = InferPayload.model_validate(payload).job_id
        try:
            return build_results(reports(), job_id)
        except (StorageError, DatabaseError) as exc:
            retries = int(task.request.retries or 0)
            log.warning("results will be retried", extra={"job_id": job_id, "reason": str(exc)})
            raise task.retry(exc=exc, countdown=min(300, 2 ** (retries + 1))) from exc
