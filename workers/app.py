"""The whole gateway as ``aigw serve`` runs it: ingest, assembly, dispatch to the registered
devices, the re-drive that sends due tasks, delivery, and — in the embedded default — the
worker in the same process.

This is the composition root: the only place where the gateway's parts and the workers'
tasks meet (imports run models, pacs_adapters → gateway → workers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from gateway.access.audit import SYSTEM, AuditEvent, record, record_configuration
from gateway.access.retention import AuditRetention
from gateway.delivery.destinations import Destinations, load_destinations
from gateway.delivery.outbox import OutboxDispatcher
from gateway.delivery.send import Delivery
from gateway.devices.registry import DeviceRegistry
from gateway.external.receive import ResultReceiver
from gateway.index.tables import utcnow
from gateway.inference.lease import runner_stale_s
from gateway.jobs.broker import BrokerProbe, BrokerWatch
from gateway.jobs.dispatch import Dispatcher
from gateway.jobs.redrive import JobRedrive, RedrivePolicy
from gateway.jobs.task_queue import CeleryTasks, create_celery
from gateway.monitoring.linking import AssessmentLinker
from gateway.monitoring.notices import MalfunctionParams
from gateway.monitoring.sender import MonitoringSender
from gateway.settings import Settings
from workers.serve import Gateway, Parts, Service, retry_backoff
from workers.worker import EmbeddedWorker, report_context

log = logging.getLogger(__name__)


def prepare_registry(parts: Parts) -> DeviceRegistry:
    """Register the seed devices (the reference zoo) and apply regions.yaml's enablement and
    the modes device versions start in (a mode set for a version stands)."""
    registry = DeviceRegistry(parts.db, parts.store, parts.settings.ae_title)
    devices_dir = parts.settings.devices_dir
    if devices_dir is not None and devices_dir.is_dir():
        added = registry.register_folder(devices_dir)
        if added:
            log.info("devices registered from the seed folder", extra={"devices": added})
        for key in added:
            detail = {"device": key, "from": "devices_dir"}
            record(
                parts.db, SYSTEM, AuditEvent.DEVICE_REGISTERED, "aigw serve start", detail=detail
            )
    registry.set_regions(parts.directory.devices, parts.directory.start_modes)
    return registry


def build_gateway(settings: Settings, clock: Callable[[], datetime] = utcnow) -> Gateway:
    """``clock``: what the monitoring sender takes for now (which month ended last)."""
    parts = Parts.build(settings)
    record_configuration(parts.db, settings, "aigw serve start")
    registry = prepare_registry(parts)
    app = create_celery(settings)
    destinations = load_destinations(settings.destinations_file)
    services: list[Service] = [AuditRetention(parts.db, settings)]
    if settings.embedded_worker:
        services.append(EmbeddedWorker(app, parts))
    services.append(outbox_dispatcher(parts, destinations))
    services.append(
        MonitoringSender(
            parts.db,
            destinations,
            MalfunctionParams.of(settings),
            settings.monitoring_check_every_s,
            clock,
        )
    )
    redrive = job_redrive(parts, CeleryTasks(app, settings))
    services.append(redrive)
    dispatcher = Dispatcher(settings, parts.db, registry, after_record=redrive.kick)
    # Radiologists' assessment objects become verdicts before the study is routed again.
    linker = AssessmentLinker(parts.db, parts.store, settings.uid_root, then=dispatcher)
    return Gateway(
        parts,
        on_complete=linker,
        services=services,
        device_results=ResultReceiver(report_context(parts)),
    )


def job_redrive(parts: Parts, tasks: CeleryTasks) -> JobRedrive:
    settings = parts.settings
    backoff = retry_backoff(settings)
    policy = RedrivePolicy(
        poll_s=settings.redrive_poll_s,
        backoff=backoff,
        lease_s=backoff.max_s,
        requeue_after_s=settings.job_requeue_after_s,
        # A dead worker's task comes back from the broker by itself first.
        running_grace_s=settings.job_requeue_after_s + settings.broker_visibility_timeout_s,
        runner_stale_s=runner_stale_s(settings),
    )
    return JobRedrive(parts.db, tasks, BrokerWatch(BrokerProbe(settings.broker_url)), policy)


def outbox_dispatcher(parts: Parts, destinations: Destinations | None = None) -> OutboxDispatcher:
    settings = parts.settings
    delivery = Delivery(
        parts.db,
        parts.store,
        destinations or load_destinations(settings.destinations_file),
        calling_ae=settings.ae_title,
        timeout_s=settings.delivery_timeout_s,
    )
    return OutboxDispatcher(
        parts.db,
        delivery,
        poll_s=settings.outbox_poll_s,
        backoff_first_s=settings.outbox_backoff_s,
        backoff_max_s=settings.outbox_max_backoff_s,
        lease_s=settings.delivery_timeout_s * 4,
        dependency_backoff=retry_backoff(settings),
    )
