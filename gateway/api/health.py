"""``/healthz`` (the process answers), ``/readyz`` (database, object store and broker
reachable), ``/api/v1/health`` (healthy, or degraded with the reasons: a dependency down or
an item waiting longer than its state's bound) and ``/metrics`` (Prometheus text format).

None of them needs a token: they say how the gateway is, never anything about a patient."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from gateway.access.http import Context
from gateway.api.backlog import HealthReport, assess, dependencies
from gateway.api.metrics import render

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="alive")


@router.get("/readyz", responses={503: {"model": Health, "description": "Not ready"}})
def readyz(context: Context, response: Response) -> Health:
    checks = dependencies(context.db, context.store, context.settings.broker_url)
    ready = all(value == "ok" for value in checks.values())
    response.status_code = 200 if ready else 503
    return Health(status="ready" if ready else "not ready", checks=checks)


@router.get("/api/v1/health")
def health(context: Context) -> HealthReport:
    """``healthy``, or ``degraded`` with every reason (200 either way: a degraded gateway
    still takes studies in; ``/readyz`` is the one that answers 503)."""
    return assess(context.db, context.store, context.settings)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(context: Context) -> Response:
    return Response(render(context.metrics), media_type="text/plain; version=0.0.4")
