"""The HTTP side of the gateway: the REST API under ``/api/v1`` (a router per resource),
health, readiness and metrics, and the dashboard under ``/dashboard``.

``create_app`` builds one app from the parts it is given; nothing here exists before it is
called, so tests run several apps side by side.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from gateway.access import SessionSigner
from gateway.api import audit_routes, delivery, devices, directory, health, results, rules, studies
from gateway.api.deps import ApiContext
from gateway.database import Database
from gateway.metrics import metrics_registry
from gateway.object_store import ObjectStore
from gateway.registry import DeviceRegistry
from gateway.settings import Settings

__all__ = ["ApiContext", "create_app"]


def create_app(
    db: Database,
    store: ObjectStore,
    settings: Settings | None = None,
    registry: DeviceRegistry | None = None,
) -> FastAPI:
    """The app over ``db`` and ``store``. ``settings`` default to the environment's (pass
    the process's own); ``registry`` to a registry over the same parts."""
    from gateway.dashboard import dashboard_router  # the dashboard reads the API's parts

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
        registry=registry or DeviceRegistry(db, store),
        signer=SessionSigner(settings.session_secret, settings.session_max_age_s),
        metrics=metrics_registry(db),
    )
    for module in (health, studies, results, devices, directory, delivery, rules, audit_routes):
        app.include_router(module.router)
    app.include_router(dashboard_router())

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    return app
