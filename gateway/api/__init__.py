"""The HTTP side of the gateway: the REST API under ``/api/v1`` (a router per resource),
health, readiness and metrics, the DICOMweb server under ``/dicom-web``
(:mod:`gateway.dicomweb`) and the dashboard under ``/dashboard``.

``create_app`` builds one app from the parts it is given; nothing here exists before it is
called, so tests run several apps side by side.

Modules
-------
studies
    ``/api/v1/studies`` and ``/api/v1/jobs``: patient-level reads, each one audited.
assessments
    ``/api/v1/jobs/{job_id}/assessment``: radiologists' verdicts on a job's result.
results
    ``/api/v1/results``: result objects and their bytes.
devices
    ``/api/v1/devices``: the registry — list, detail, upload, enable and disable.
modes
    ``/api/v1/devices/{device}/modes``: shadow or live per version and region.
monitoring
    ``/api/v1/monitoring``: device figures and drift, the usage report, notices.
directory
    ``/api/v1/regions`` and ``/api/v1/sources``.
delivery
    ``/api/v1/destinations`` and ``/api/v1/outbox``.
rules
    ``/api/v1/rules/test``: routing explained for uploaded files.
audit_routes
    ``/api/v1/audit``: the audit trail (admins).
health
    ``/healthz``, ``/readyz``, ``/api/v1/health``, ``/metrics``.
backlog
    What waits in each working state and since when; healthy or degraded, with reasons.
metrics
    Prometheus metrics read from the index at scrape time (ages of the oldest items too).
errors
    ``ErrorResponse``, the one error schema, and the handlers that answer every error in it.
params
    Path and query parameters, each bounded (ids, offsets, limits, names, dates, times).
headers
    Security headers on every response: CSP, no-store, HSTS over HTTPS.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from gateway.access.http import ApiContext
from gateway.api import (
    assessments,
    audit_routes,
    delivery,
    devices,
    directory,
    health,
    modes,
    monitoring,
    results,
    rules,
    studies,
)
from gateway.api.errors import install_error_handlers, responses
from gateway.api.headers import SecurityHeaders
from gateway.api.metrics import metrics_registry
from gateway.dashboard import dashboard_router
from gateway.devices.registry import DeviceRegistry
from gateway.dicomweb import dicomweb_router
from gateway.index.database import Database
from gateway.index.object_store import ObjectStore
from gateway.ingest.refusals import EdgeCounters
from gateway.ingest.scp import DeviceResults
from gateway.settings import Settings

__all__ = ["ApiContext", "create_app"]


def create_app(
    db: Database,
    store: ObjectStore,
    settings: Settings | None = None,
    registry: DeviceRegistry | None = None,
    edge: EdgeCounters | None = None,
    device_results: DeviceResults | None = None,
) -> FastAPI:
    """The app over ``db`` and ``store``. ``settings`` default to the environment's (pass
    the process's own); ``registry`` to a registry over the same parts; ``edge`` is the
    DICOM SCP's refusal counters when the SCP runs in this process; ``device_results`` the
    external devices' receive path, for their results sent by STOW-RS."""

    settings = settings or Settings()
    app = FastAPI(
        title="AI imaging gateway",
        version="1.0.0",
        summary="Studies, jobs, results, AI devices, deliveries; region-scoped tokens.",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
    )
    app.state.context = ApiContext(
        db=db,
        store=store,
        settings=settings,
        registry=registry or DeviceRegistry(db, store, settings.ae_title),
        metrics=metrics_registry(db, edge, settings.stuck_after_s),
        device_results=device_results,
    )
    install_error_handlers(app)
    app.add_middleware(SecurityHeaders)
    for module in (
        health,
        studies,
        assessments,
        results,
        devices,
        modes,
        directory,
        delivery,
        rules,
        audit_routes,
        monitoring,
    ):
        app.include_router(module.router)
    app.include_router(dicomweb_router(responses))
    app.include_router(dashboard_router())

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    return app
