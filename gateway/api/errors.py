"""The API's one error schema, the handlers that answer every error in it, and the
``responses=`` each operation declares.

Whatever goes wrong — a refused token, a bad query value, malformed JSON, an unknown id, the
database away, a bug — the client gets :class:`ErrorResponse`: one sentence in ``detail``
and, for a request that failed validation, each bad field in ``errors``. Nothing of the
server's inside (paths, SQL, tracebacks) is in it; the log has those.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.access.audit import AuditError
from gateway.errors import DatabaseError, StorageError

log = logging.getLogger(__name__)

MAX_DETAIL = 1000


class FieldError(BaseModel):
    """One invalid part of a request: where, and what is wrong with it."""

    model_config = ConfigDict(extra="forbid")

    loc: list[str | int] = Field(description='e.g. ["query", "limit"] or ["body", "enabled"]')
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error the API answers."""

    model_config = ConfigDict(extra="forbid")

    detail: str = Field(description="What is wrong, in one sentence.")
    errors: list[FieldError] = Field(
        default_factory=list, description="For 422 from validation: each invalid field."
    )


DESCRIPTIONS = {
    400: "Malformed request: a body, multipart form or Content-Length that cannot be read.",
    401: "No token, or an unknown or revoked one.",
    403: "The token's role or region may not do this.",
    404: "No such object (or one outside the token's region).",
    409: "The object's state does not allow this.",
    413: "The upload is larger than api_max_upload_bytes.",
    422: "A parameter or body that is not valid; `errors` lists each one.",
    503: "The database, the object store or the audit log is unavailable; try again later.",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers an operation declares in the OpenAPI (with the one schema)."""
    return {code: {"model": ErrorResponse, "description": DESCRIPTIONS[code]} for code in codes}


BACKENDS: tuple[tuple[type[Exception], str], ...] = (
    (DatabaseError, "the index database"),
    (StorageError, "the object store"),
    (AuditError, "the audit log"),
)

# Every operation that takes a token and reads the index can answer these.
COMMON = (401, 422, 503)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(DatabaseError, _unavailable)
    app.add_exception_handler(StorageError, _unavailable)
    app.add_exception_handler(AuditError, _unavailable)
    app.add_exception_handler(Exception, _internal)


def error_response(
    status_code: int, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(detail=detail[:MAX_DETAIL])
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        # Starlette names the methods of the path's first route only; a client needs all.
        given = {m.strip() for m in headers.get("Allow", "").split(",") if m.strip()}
        headers["Allow"] = ", ".join(sorted(given | _documented_methods(request)))
    return error_response(exc.status_code, str(exc.detail), headers=headers)


def _documented_methods(request: Request) -> set[str]:
    """The methods the OpenAPI documents for the request's path."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return methods


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only where and what: pydantic's ``input`` would echo the request (patient data,
    # megabytes) back, and its ``ctx`` may hold exception objects.
    errors = [
        FieldError(
            loc=list(error.get("loc", ())), msg=str(error.get("msg", "")), type=error["type"]
        )
        for error in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors)
    body = ErrorResponse(detail=f"invalid request: {summary}"[:MAX_DETAIL], errors=errors)
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning(
        "request failed: a backend is unavailable",
        extra={"path": request.url.path, "error": f"{exc.__class__.__name__}: {exc}"[:300]},
    )
    what = next((name for kind, name in BACKENDS if isinstance(exc, kind)), "a backend")
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE, f"{what} is unavailable now; try again later"
    )


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request failed", extra={"path": request.url.path})
    return error_response(
        status.HTTP_500_INTERNAL_SERVER_ERROR, "internal error; the gateway's log has the details"
    )
