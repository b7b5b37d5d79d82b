"""The Celery app as the gateway sees it: a way to send tasks by name to named queues.

The gateway never imports task code (``workers`` registers the tasks on the same app). The
embedded default uses the in-memory broker with a worker thread in the same process; the
distributed mode points ``broker_url`` at Redis and runs ``aigw worker`` on GPU nodes.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.connection import Connection
from pydantic import BaseModel, ConfigDict

from gateway.jobs import memory_broker
from gateway.routing import Priority
from gateway.settings import Settings

INFER_TASK = "aigw.infer"
REPORT_TASK = "aigw.report"
DEFAULT_INFER_QUEUE = "infer"
REPORTS_QUEUE = "reports"  # SR, flag images, SEMD: CPU work, off the GPU workers
CPU_QUEUE = "cpu"


class InferPayload(BaseModel):
    """The infer and report tasks' only argument: ids, never pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: int


def unacked_restore_interval_s(settings: Settings) -> int:
    """How often the Redis transport looks for tasks whose worker died (kombu's default is
    10 × its interval, 100 s, whatever the visibility timeout): as often as it allows."""
    return min(10, settings.broker_visibility_timeout_s)


def create_celery(settings: Settings) -> Celery:
    app = Celery("aigw", broker=settings.broker_url, set_as_current=False)
    app.amqp.Connection = bounded_retries(settings.retry_max_backoff_s)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=CPU_QUEUE,
        task_queue_max_priority=10,
        task_default_priority=Priority.ROUTINE,
        broker_connection_retry_on_startup=True,
        # A worker whose broker went away reconnects for as long as it takes (Celery's
        # default gives up after 100 tries and the worker exits).
        broker_connection_max_retries=None,
        # A task running when the connection is lost finishes and records its result (its
        # acknowledgement is lost, and the task idempotent); cancelling it would leave its
        # job running with the message gone, if the broker lost it.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # A send that meets a broker outage fails fast: the job stays due in the database
        # and the gateway's re-drive sends it when the broker is back.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # Redis emulates priorities with one list per level; visibility_timeout is how long
        # an unacknowledged task waits before another worker gets it after a crash.
        broker_transport_options={
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
            "visibility_timeout": settings.broker_visibility_timeout_s,
            # kombu looks for abandoned tasks every 10 × this interval by default (100 s),
            # whatever the visibility timeout: look as often as the timeout allows.
            "unacked_restore_interval": unacked_restore_interval_s(settings),
            "unacked_restore_throttle": 1,
        },
    )
    if settings.broker_url.startswith("memory://"):
        # kombu's memory transport has no blocking read; this one wakes its consumers when
        # a task can be delivered, and looks again after at most this long regardless.
        app.conf.broker_transport = memory_broker.TRANSPORT
        app.conf.broker_transport_options["polling_interval"] = settings.memory_broker_poll_s
    return app


def bounded_retries(max_wait_s: float) -> type[Connection]:
    """kombu's connection, waiting at most ``max_wait_s`` between tries to reach a broker
    that went away. kombu's default grows to 30 s and Celery's worker passes no bound, so a
    worker would come back up to 30 s after a long outage ended."""

    class BoundedRetries(Connection):
        def ensure_connection(self, *args: Any, **kwargs: Any) -> Connection:
            kwargs.setdefault("interval_start", min(1.0, max_wait_s))
            kwargs.setdefault("interval_step", min(1.0, max_wait_s))
            kwargs.setdefault("interval_max", max_wait_s)
            return super().ensure_connection(*args, **kwargs)  # type: ignore[no-untyped-call,no-any-return]

    return BoundedRetries


def transport_priority(settings: Settings, priority: int) -> int:
    # kombu's Redis transport serves 0 first; AMQP and memory serve the highest first.
    return 9 - priority if settings.broker_url.startswith(("redis", "rediss")) else priority


def queue_for(settings: Settings, device_id: str) -> str:
    return settings.device_queues.get(device_id, DEFAULT_INFER_QUEUE)


def send_infer(app: Celery, settings: Settings, job_id: int, queue: str, priority: int) -> None:
    app.send_task(
        INFER_TASK,
        args=[InferPayload(job_id=job_id).model_dump()],
        queue=queue,
        priority=transport_priority(settings, priority),
    )


def send_report(app: Celery, job_id: int) -> None:
    app.send_task(REPORT_TASK, args=[InferPayload(job_id=job_id).model_dump()], queue=REPORTS_QUEUE)


class CeleryTasks:
    """The two sends the gateway's re-drive makes, on one app (see ``gateway.jobs.redrive``)."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def infer(self, job_id: int, queue: str, priority: int) -> None:
        send_infer(self.app, self.settings, job_id, queue, priority)

    def report(self, job_id: int) -> None:
        send_report(self.app, job_id)
