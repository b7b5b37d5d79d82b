"""Worker start-up: the in-process worker of the embedded default, and ``aigw worker``.

A worker process builds its own inference context from the settings (database, object
store, registry, onnxruntime sessions, the decode pool and the devices' batchers); a GPU node
runs one worker per GPU, each pinned with ``CUDA_VISIBLE_DEVICES`` and listening on its
pool's queue. Inference and results run in two pools of threads, each consuming its own
queues (``worker_concurrency`` on the infer queues, ``report_concurrency`` on ``reports``
and ``cpu``): a study's results, seconds of CPU, never hold a thread a job could use.

``aigw worker`` may start before any of its dependencies: it waits for the database (and for
the gateway to have migrated it), the object store and the broker, each with one log line,
then starts.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

from celery import Celery
from celery.app.trace import setup_worker_optimizations
from celery.worker import WorkController
from kombu.asynchronous import set_event_loop

from gateway.delivery.destinations import load_destinations
from gateway.devices.registry import DeviceRegistry
from gateway.external.send import SendContext
from gateway.inference.batcher import Batcher, BatchLimits
from gateway.inference.decode_pool import DecodePool
from gateway.inference.gpu_decode import select_backend
from gateway.inference.lease import lease_seconds
from gateway.inference.pipeline import InferenceContext
from gateway.inference.pixel_checks import PixelBudget
from gateway.ingest.receive import Ingest
from gateway.jobs.priors import PriorFetch
from gateway.jobs.task_queue import CPU_QUEUE, DEFAULT_INFER_QUEUE, REPORTS_QUEUE, create_celery
from gateway.results.artifacts import BuildOptions
from gateway.results.build import ReportContext
from gateway.results.build_pool import BuildPool
from gateway.results.semd.config import SemdConfig, load_semd_config
from gateway.settings import Settings
from models.runtime import GPU_PROVIDERS, GpuOptions, SessionCache, usable_providers
from workers.dependencies import wait_for_broker
from workers.serve import Parts, retry_backoff
from workers.tasks import register_tasks

log = logging.getLogger(__name__)


def inference_context(parts: Parts) -> InferenceContext:
    settings = parts.settings
    # Decided here, before any decode: gpu.decode_backend gpu on a node that cannot decode
    # on the GPU stops the worker at start, naming what is missing.
    select_backend(settings.gpu.decode_backend, settings.gpu.cuda_device_id)
    gpu = GpuOptions(settings.gpu.cuda_device_id, settings.trt_engine_cache_dir)
    on_gpu = usable_providers(settings.inference_providers)[0] in GPU_PROVIDERS
    threads, runners = cpu_runs(settings, on_gpu)
    sessions = SessionCache(settings.inference_providers, intra_op_threads=threads, gpu=gpu)
    return InferenceContext(
        db=parts.db,
        store=parts.store,
        registry=DeviceRegistry(parts.db, parts.store),
        sessions=sessions,
        max_batch=settings.inference_max_batch,
        lease_s=lease_seconds(settings),
        budget=PixelBudget(settings.max_pixels_per_frame, settings.max_pixels_per_job),
        decoder=(
            DecodePool(settings.decode_memory_limit_mb, settings.decode_processes, settings)
            if settings.decode_memory_limit_mb
            else None
        ),
        priors=PriorFetch(
            settings, parts.db, Ingest(parts.db, parts.store), parts.directory, parts.source_ids
        ),
        batcher=Batcher(
            BatchLimits(
                max_batch=settings.inference_max_batch,
                max_wait_s=settings.inference_max_wait_ms / 1000,
                max_queued=settings.inference_queue_images,
                runners=runners,
            )
        ),
    )


def cpu_runs(settings: Settings, on_gpu: bool) -> tuple[int, int]:
    """onnxruntime threads per run (0: its default) and the runs a device's batcher makes at
    once. By default (0) one run at a time on every core: a lone study's inference is as
    quick as the cores allow. Set, on a CPU node: ``inference_intra_op_threads`` per run and
    as many runs side by side as fill the cores (``decode_processes``), for throughput where
    many cores would otherwise be spread thin over one small model. A GPU runs one batch at
    a time."""
    threads = settings.inference_intra_op_threads
    if on_gpu or threads == 0:
        return 0, 1
    return threads, max(1, settings.decode_processes // threads)


def report_context(parts: Parts, processes: int = 0) -> ReportContext:
    """``processes``: results children for a pool of that many results tasks (none where
    ``decode_memory_limit_mb`` is 0, or 0: each object built in the calling thread)."""
    settings = parts.settings
    options = BuildOptions(
        semd_config=semd_config(settings),
        semd_reference_dir=settings.semd_reference_dir,
        semd_key_image_max_px=settings.semd_key_image_max_px,
    )
    builder = None
    if processes and settings.decode_memory_limit_mb:
        builder = BuildPool(processes, settings.decode_memory_limit_mb, settings, options)
    return ReportContext(
        db=parts.db,
        store=parts.store,
        registry=DeviceRegistry(parts.db, parts.store),
        destinations=load_destinations(settings.destinations_file),
        options=options,
        uid_root=settings.uid_root,
        builder=builder,
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
        environ=os.environ,
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


def inference_queues(settings: Settings) -> list[str]:
    return list(dict.fromkeys([DEFAULT_INFER_QUEUE, *settings.device_queues.values()]))


RESULTS_QUEUES = (REPORTS_QUEUE, CPU_QUEUE)


def all_queues(settings: Settings) -> list[str]:
    return [*inference_queues(settings), *RESULTS_QUEUES]


def split_queues(queues: Sequence[str]) -> tuple[list[str], list[str]]:
    """The inference queues and the results queues among ``queues``: each pool takes its own."""
    results = [queue for queue in queues if queue in RESULTS_QUEUES]
    return [queue for queue in queues if queue not in RESULTS_QUEUES], results


class EmbeddedWorker:
    """The Celery workers in threads of ``aigw serve``, on the in-memory broker: one pool
    for inference, one for results.

    Each is Celery's bare ``WorkController``, embedded as ``celery.contrib.testing`` embeds
    one, not the worker program ``app.Worker``: that one also prints a banner, renames the
    process, tries to take over the process's signals, and warns about running as root with
    advice (``--uid``) meant for a worker process, not for a thread that takes only JSON
    from its own process.
    """

    def __init__(self, app: Celery, parts: Parts) -> None:
        settings = parts.settings
        self._context = inference_context(parts)
        self._reports = reports = report_context(parts, settings.report_concurrency)
        sending = send_context(parts)
        # A second app for the results pool: a worker's queue selection is the app's
        # (app.amqp.queues), so two pools on one app would both consume the last one's
        # queues. The memory transport's queues are the process's, so both apps see them.
        results_app = create_celery(settings)
        for each in (app, results_app):
            register_tasks(
                each,
                lambda: self._context,
                lambda: reports,
                settings.job_max_retries,
                retry_backoff(settings),
                lambda: sending,
            )
        # What app.Worker does first: the pool's threads run tasks through this app (it
        # becomes the process's current app) on Celery's fast tracing path.
        setup_worker_optimizations(app)
        self.workers = [
            _controller(app, inference_queues(settings), settings.worker_concurrency, settings),
            _controller(results_app, list(RESULTS_QUEUES), settings.report_concurrency, settings),
        ]
        self._threads = [
            threading.Thread(target=worker.start, name=f"celery-{name}", daemon=True)
            for worker, name in zip(self.workers, ("infer", "results"), strict=True)
        ]

    @property
    def worker(self) -> WorkController:
        """The inference pool's controller."""
        return self.workers[0]

    def start(self) -> None:
        if self._context.decoder is not None:
            self._context.decoder.warm()
        if self._reports.builder is not None:
            self._reports.builder.warm()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(in_sighandler=False)
        for thread in self._threads:
            thread.join(timeout=15)
        self._context.close()
        self._reports.close()


def _controller(
    app: Celery, queues: list[str], concurrency: int, settings: Settings
) -> WorkController:
    """A pool of its own. Each gets its own event loop: kombu keeps one loop per process
    (``kombu.asynchronous``'s current loop, used on Redis), and a second controller built
    while the first one's loop is current shares it — with its own timer never ticked, so
    its retries (tasks with a countdown) were received and never run."""
    set_event_loop(None)
    return app.WorkController(
        pool="threads",
        concurrency=concurrency,
        queues=queues,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel=settings.log_level,
    )


def run_worker(settings: Settings, queues: Sequence[str] | None, concurrency: int | None) -> None:
    """``aigw worker``: a separate worker process (distributed mode). The inference pool is
    the worker program; the results pool runs beside it in a thread and stops with it."""
    parts = Parts.build(settings, migrate=False)
    wait_for_broker(settings.broker_url, retry_backoff(settings))
    app = create_celery(settings)
    context = inference_context(parts)
    if context.decoder is not None:
        context.decoder.warm()
    infer_queues, results_queues = split_queues(list(queues or all_queues(settings)))
    main_queues, main_concurrency = infer_queues, concurrency or settings.worker_concurrency
    results_concurrency = settings.report_concurrency if results_queues else 0
    if not infer_queues:  # a results-only worker
        main_queues, main_concurrency = results_queues, concurrency or settings.report_concurrency
        results_concurrency = main_concurrency
    reports = report_context(parts, results_concurrency)
    if reports.builder is not None:
        reports.builder.warm()
    sending = send_context(parts)
    register_tasks(
        app,
        lambda: context,
        lambda: reports,
        settings.job_max_retries,
        retry_backoff(settings),
        lambda: sending,
    )
    beside: WorkController | None = None
    if infer_queues and results_queues:  # its own app: a worker's queue selection is its app's
        results_app = create_celery(settings)
        register_tasks(
            results_app,
            lambda: context,
            lambda: reports,
            settings.job_max_retries,
            retry_backoff(settings),
            lambda: sending,
        )
        beside = _controller(results_app, results_queues, settings.report_concurrency, settings)
        threading.Thread(target=beside.start, name="celery-results", daemon=True).start()
    set_event_loop(None)  # the inference pool's own loop, not the results pool's
    worker = app.Worker(
        pool="threads",
        concurrency=main_concurrency,
        queues=main_queues,
        loglevel=settings.log_level,
    )
    log.info("worker starting", extra={"queues": infer_queues, "results_queues": results_queues})
    try:
        worker.start()
    finally:
        if beside is not None:
            beside.stop(in_sighandler=False)
        context.close()
        reports.close()
