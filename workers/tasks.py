"""Celery tasks. ``infer`` runs one job through the inference pipeline and, when it has
findings, queues ``report``, which builds and stores the job's results and their outbox rows.
A job of an external device is sent to its vendor instead (:mod:`gateway.external.send`)
and ends the task ``sent``: its results come back through the SCP, not through ``report``.

``acks_late`` with ``reject_on_worker_lost``: a task whose worker dies is delivered again,
and the pipeline is idempotent, so it completes once. Transient errors (database, object
store) are retried in the task with a bounded backoff; when the retries run out the job is
handed back to the database — queued again (infer) or due again (report), with the error —
where the gateway's re-drive picks it up: a dependency that is away never becomes a job's
final outcome. Only what is wrong with the input itself (a decode error, inputs gone from
the object store, a bad model) ends a job ``failed``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import Retry

from gateway.errors import DatabaseError, StorageError
from gateway.external.send import SendContext, is_external_job, send_job
from gateway.index.due import DEFAULT_BACKOFF, Backoff
from gateway.inference.pipeline import InferenceContext, TransientError, run_job
from gateway.jobs.states import JobState, fail_job, hand_back, missing_inputs, report_due
from gateway.jobs.task_queue import INFER_TASK, REPORT_TASK, InferPayload, send_report
from gateway.results.build import ReportContext, build_results

log = logging.getLogger(__name__)


def register_tasks(
    app: Celery,
    context: Callable[[], InferenceContext],
    reports: Callable[[], ReportContext],
    max_retries: int,
    backoff: Backoff = DEFAULT_BACKOFF,
    sending: Callable[[], SendContext] | None = None,
) -> None:
    @app.task(  # type: ignore[untyped-decorator]
        name=INFER_TASK,
        bind=True,
        shared=False,  # each app (each gateway in a test process) keeps its own task
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=None,  # counted below: the database being away is never a last try
    )
    def infer(task: Task, payload: dict[str, Any]) -> str:
        job_id = InferPayload.model_validate(payload).job_id
        ctx = context()
        retries = int(task.request.retries or 0)
        try:
            # Redis may deliver this very message again while it runs (visibility timeout):
            # the copy has the same task id and retry count, and is skipped.
            runner = f"{task.request.id}:{retries}"
            if sending is not None and is_external_job(ctx.db, ctx.registry, job_id):
                state = send_job(sending(), job_id, runner=runner)
            else:
                state = run_job(ctx, job_id, runner=runner)
        except TransientError as exc:
            if retries < max_retries:
                log.warning(
                    "job will be retried",
                    extra={"job_id": job_id, "reason": str(exc), "retry": retries + 1},
                )
                _retry(task, exc, backoff.delay_s(retries + 1))
            return _give_back_job(task, ctx, job_id, str(exc), backoff)
        if state == JobState.INFERRED.value:
            _send_report(app, ctx, job_id)
        return state

    @app.task(  # type: ignore[untyped-decorator]
        name=REPORT_TASK,
        bind=True,
        shared=False,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=None,
    )
    def report(task: Task, payload: dict[str, Any]) -> int:
        job_id = InferPayload.model_validate(payload).job_id
        ctx = reports()
        retries = int(task.request.retries or 0)
        try:
            return build_results(ctx, job_id)
        except (StorageError, DatabaseError) as exc:
            if retries < max_retries:
                log.warning(
                    "results will be retried",
                    extra={"job_id": job_id, "reason": str(exc), "retry": retries + 1},
                )
                _retry(task, exc, backoff.delay_s(retries + 1))
            try:
                report_due(ctx.db, job_id, str(exc), backoff.max_s)
            except DatabaseError as again:  # nowhere to hand it back: keep the message
                raise task.retry(exc=again, countdown=backoff.max_s) from again
            log.warning("results handed back to the gateway", extra={"job_id": job_id})
            return 0


def _retry(task: Task, exc: Exception, countdown: float) -> None:
    """Retry through the broker; returns only when the broker cannot take the retry (it is
    away too), and the caller hands the work back to the database instead."""
    try:
        raise task.retry(exc=exc, countdown=countdown)
    except Retry:
        raise
    except Exception as failed:  # kombu's errors are transport-specific
        log.warning("retry not sent: the broker is away", extra={"error": str(failed)[:200]})


def _give_back_job(
    task: Task, ctx: InferenceContext, job_id: int, error: str, backoff: Backoff
) -> str:
    """Retries ran out: fail the job only when its inputs are really gone, otherwise queue
    it again in the database (the re-drive sends it when due)."""
    try:
        missing = missing_inputs(ctx.db, ctx.store, job_id)
        if missing:
            fail_job(ctx.db, job_id, f"inputs gone from the object store: {missing[:3]}")
            return JobState.FAILED.value
        handed = hand_back(ctx.db, job_id, error, backoff.max_s)
    except DatabaseError as exc:  # nowhere to hand it back: keep the message
        raise task.retry(exc=exc, countdown=backoff.max_s) from exc
    if not handed:
        return "skipped"  # another run finished it meanwhile
    log.warning("job handed back to the gateway", extra={"job_id": job_id, "reason": error})
    return JobState.QUEUED.value


def _send_report(app: Celery, ctx: InferenceContext, job_id: int) -> None:
    try:
        send_report(app, job_id)
    except Exception as exc:  # the broker is away: the gateway sends it when it is back
        log.warning("report not sent; due in the database", extra={"job_id": job_id})
        # The database too: the re-drive's grace finds it.
        with contextlib.suppress(DatabaseError):
            report_due(ctx.db, job_id, f"report not sent: {exc.__class__.__name__}")
