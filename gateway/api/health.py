"""``/healthz`` (the process answers), ``/readyz`` (database, object store and broker
reachable) and ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from kombu.connection import Connection
from pydantic import BaseModel

from gateway.access.http import Context
from gateway.api.metrics import render
from gateway.errors import GatewayError

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="alive")


@router.get("/readyz", responses={503: {"model": Health, "description": "Not ready"}})
def readyz(context: Context, response: Response) -> Health:
    checks: dict[str, str] = {}
    for name, check in (("database", context.db.check), ("object_store", context.store.check)):
        try:
            check()
            checks[name] = "ok"
        except GatewayError as exc:
            checks[name] = str(exc)
    checks["broker"] = _broker(context.settings.broker_url)
    ready = all(value == "ok" for value in checks.values())
    response.status_code = 200 if ready else 503
    return Health(status="ready" if ready else "not ready", checks=checks)


def _broker(url: str) -> str:
    if url.startswith("memory://"):
        return "ok"  # the in-process broker is there as long as this process is
    try:
        with Connection(url, connect_timeout=2) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # kombu raises transport-specific errors
        return f"broker unreachable: {exc.__class__.__name__}"
    return "ok"


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(context: Context) -> Response:
    return Response(render(context.metrics), media_type="text/plain; version=0.0.4")
