"""HTTP endpoints served beside the SCP. Liveness and readiness for now; the REST API and
the dashboard grow here (a router per resource) without touching the serve process."""

from __future__ import annotations

from fastapi import FastAPI, Response
from pydantic import BaseModel

from gateway.database import Database
from gateway.errors import GatewayError
from gateway.object_store import ObjectStore


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


def create_app(db: Database, store: ObjectStore) -> FastAPI:
    app = FastAPI(
        title="AI imaging gateway",
        version="0.1.0",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
    )

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(status="alive")

    @app.get("/readyz")
    def readyz(response: Response) -> Health:
        checks: dict[str, str] = {}
        for name, check in (("database", db.check), ("object_store", store.check)):
            try:
                check()
                checks[name] = "ok"
            except GatewayError as exc:
                checks[name] = str(exc)
        ready = all(value == "ok" for value in checks.values())
        response.status_code = 200 if ready else 503
        return Health(status="ready" if ready else "not ready", checks=checks)

    return app
