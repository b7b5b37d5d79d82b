"""Worker start-up: the in-process worker of the embedded default, and ``aigw worker``.

A worker process builds its own inference context from the settings (database, object
store, registry, onnxruntime sessions); a GPU node runs one worker per GPU, each pinned with
``CUDA_VISIBLE_DEVICES`` and listening on its pool's queue. ``aigw worker`` may start before
any of its dependencies: it waits for the database (and for the gateway to have migrated
it), the object store and the broker, each with one log line, then starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from celery import Celery
from celery.app.trace import setup_worker_optimizations

from gateway.delivery.destinations import load_destinations
from gateway.devices.registry import DeviceRegistry
from gateway.external.send import SendContext
from gateway.inference.decode_pool import DecodePool
from gateway.inference.lease import lease_seconds
from gateway.inference.pipeline import InferenceContext
from gateway.inference.pixel_checks import PixelBudget
from gateway.ingest.receive import Ingest
from gateway.jobs.priors import PriorFetch
from gateway.jobs.task_queue import CPU_QUEUE, DEFAULT_INFER_QUEUE, REPORTS_QUEUE, create_celery
from gateway.results.build import ReportContext
from gateway.results.semd.config import SemdConfig, load_semd_config
from gateway.settings import Settings
from models.runtime import SessionCache
from workers.dependencies import wait_for_broker
from workers.serve import Parts, retry_backoff
from workers.tasks import register_tasks

log = logging.getLogger(__name__)


def inference_context(parts: Parts) -> InferenceContext:
    settings = parts.settings
    return InferenceContext(
        db=parts.db,
        store=parts.store,
        registry=DeviceRegistry(parts.db, parts.store),
        sessions=SessionCache(settings.inference_providers),
        max_batch=settings.inference_max_batch,
        lease_s=lease_seconds(settings),
        budget=PixelBudget(settings.max_pixels_per_frame, settings.max_pixels_per_job),
        decoder=(
            DecodePool(settings.decode_memory_limit_mb, settings.worker_concurrency)
            if settings.decode_memory_limit_mb
            else None
        ),
        priors=PriorFetch(
            settings, parts.db, Ingest(parts.db, parts.store), parts.directory, parts.source_ids
        ),
    )


def report_context(parts: Parts) -> ReportContext:
    settings = parts.settings
    return ReportContext(
        db=parts.db,
        store=parts.store,
        registry=DeviceRegistry(parts.db, parts.store),
        destinations=load_destinations(settings.destinations_file),
        semd_config=semd_config(settings),
        semd_reference_dir=settings.semd_reference_dir,
        semd_key_image_max_px=settings.semd_key_image_max_px,
        uid_root=settings.uid_root,
    )


def send_context(parts: Parts) -> SendContext:
    settings = parts.settings
    return SendContext(
        db=parts.db,
        store=parts.store,
        registry=DeviceRegistry(parts.db, parts.store, settings.ae_title),
        calling_ae=settings.ae_title,
        timeout_s=settings.delivery_timeout_s,
        lease_s=lease_seconds(settings),
    )


def semd_config(settings: Settings) -> SemdConfig | None:
    """The SEMD configuration; without the file SEMDs are withheld (and say so)."""
    if not settings.semd_file.is_file():
        log.warning(
            "no SEMD configuration: SEMDs will not be written",
            extra={"file": str(settings.semd_file)},
        )
        return None
    return load_semd_config(settings.semd_file)


def all_queues(settings: Settings) -> list[str]:
    return list(
        dict.fromkeys(
            [DEFAULT_INFER_QUEUE, *settings.device_queues.values(), REPORTS_QUEUE, CPU_QUEUE]
        )
    )


class EmbeddedWorker:
    """A Celery worker in a thread of ``aigw serve``, on the in-memory broker.

    It is Celery's bare ``WorkController``, embedded as ``celery.contrib.testing`` embeds
    one, not the worker program ``app.Worker``: that one also prints a banner, renames the
    process, tries to take over the process's signals, and warns about running as root with
    advice (``--uid``) meant for a worker process, not for a thread that takes only JSON
    from its own process.
    """

    def __init__(self, app: Celery, parts: Parts) -> None:
        context = inference_context(parts)
        self._decoder = context.decoder
        reports = report_context(parts)
        sending = send_context(parts)
        register_tasks(
            app,
            lambda: context,
            lambda: reports,
            parts.settings.job_max_retries,
            retry_backoff(parts.settings),
            lambda: sending,
        )
        # What app.Worker does first: the pool's threads run tasks through this app (it
        # becomes the process's current app) on Celery's fast tracing path.
        setup_worker_optimizations(app)
        self.worker = app.WorkController(
            pool="threads",
            concurrency=parts.settings.worker_concurrency,
            queues=all_queues(parts.settings),
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel=parts.settings.log_level,
        )
        self._thread = threading.Thread(target=self.worker.start, name="celery-worker", daemon=True)

    def start(self) -> None:
        if self._decoder is not None:
            self._decoder.warm()
        self._thread.start()

    def stop(self) -> None:
        self.worker.stop(in_sighandler=False)
        self._thread.join(timeout=15)
        if self._decoder is not None:
            self._decoder.close()


def run_worker(settings: Settings, queues: Sequence[str] | None, concurrency: int | None) -> None:
    """``aigw worker``: a separate worker process (distributed mode)."""
    parts = Parts.build(settings, migrate=False)
    wait_for_broker(settings.broker_url, retry_backoff(settings))
    app = create_celery(settings)
    context = inference_context(parts)
    if context.decoder is not None:
        context.decoder.warm()
    reports = report_context(parts)
    sending = send_context(parts)
    register_tasks(
        app,
        lambda: context,
        lambda: reports,
        settings.job_max_retries,
        retry_backoff(settings),
        lambda: sending,
    )
    worker = app.Worker(
        pool="threads",
        concurrency=concurrency or settings.worker_concurrency,
        queues=list(queues or all_queues(settings)),
        loglevel=settings.log_level,
    )
    log.info("worker starting", extra={"queues": list(queues or all_queues(settings))})
    worker.start()
