"""What every endpoint depends on: the app's parts, the authenticated caller, the audit
trail of reads and changes, the upload size cap; and the HTTPS context the app is served
with, and the session cookie's flags that follow from it."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from gateway.access import audit
from gateway.access.audit import AuditError, AuditEvent
from gateway.access.tokens import Principal, authenticate
from gateway.devices.registry import DeviceRegistry
from gateway.errors import ConfigError
from gateway.index.database import Database
from gateway.index.object_store import ObjectStore
from gateway.ingest.scp import DeviceResults
from gateway.settings import Settings
from pacs_adapters.tls import TlsConfigError, server_context

log = logging.getLogger(__name__)

# A study UID given as a query filter: what a UID can be, so nothing longer or stranger
# reaches the index or the audit log (whose column holds 64 characters).
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
MAX_ID = 2**63 - 1  # the index's integer columns are signed 64-bit
UidQuery = Annotated[str | None, Query(max_length=64, pattern=UID_PATTERN)]


@dataclass(frozen=True)
class ApiContext:
    """The parts an app was built with (one per app; tests build several side by side)."""

    db: Database
    store: ObjectStore
    settings: Settings
    registry: DeviceRegistry
    metrics: CollectorRegistry
    # An external device's results sent by STOW-RS (a token bound to a ``kind: device``
    # source) go here, as its C-STOREs do; None: refused.
    device_results: DeviceResults | None = None


def get_context(request: Request) -> ApiContext:
    return cast(ApiContext, request.app.state.context)


Context = Annotated[ApiContext, Depends(get_context)]

_bearer = HTTPBearer(auto_error=False, description="An API token: aigw tokens create")


def get_caller(
    context: Context,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "an API token is required: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    found = authenticate(context.db, credentials.credentials)
    if found is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown or revoked token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return found


Caller = Annotated[Principal, Depends(get_caller)]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def audit_read(
    context: ApiContext,
    request: Request,
    who: Principal,
    *,
    study_uid: str | None,
    region: str | None,
    detail: dict[str, object] | None = None,
    event: AuditEvent = AuditEvent.READ,
) -> None:
    """Record a patient-level read before its data leaves the server; a read that cannot
    be recorded is refused (503), never served unlogged."""
    try:
        audit.record(
            context.db,
            who.actor,
            event,
            action_of(request),
            study_uid=study_uid,
            region=region,
            client_ip=client_ip(request),
            detail=dict(detail or {}),
        )
    except AuditError as exc:
        log.error("read refused: audit log unavailable", extra={"action": action_of(request)})
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the audit log cannot be written now, so the data is not served; try again later",
        ) from exc


def audit_change(
    context: ApiContext,
    request: Request,
    who: Principal,
    event: AuditEvent,
    *,
    region: str | None = None,
    detail: dict[str, object] | None = None,
) -> None:
    """Record a change made through a part that keeps its own transaction (the registry).
    When the row cannot be written the caller hears so (503) and the log says what."""
    try:
        audit.record(
            context.db,
            who.actor,
            event,
            action_of(request),
            region=region,
            client_ip=client_ip(request),
            detail=dict(detail or {}),
        )
    except AuditError as exc:
        log.error(
            "change made but not audited",
            extra={"event": event.value, "token_id": who.token_id, "detail": detail},
        )
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the change was made, but its audit event ({event.value}) could not be written",
        ) from exc


def action_of(request: Request) -> str:
    """``METHOD path``: never the query string, which may carry search terms."""
    return f"{request.method} {request.url.path}"


def require_change(who: Principal) -> None:
    if not who.can_change:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {who.role.value} cannot change this")


def require_region_access(who: Principal, region: str) -> None:
    """For changes aimed at a region (not study lookups, which answer 404 instead)."""
    if not who.sees_region(region):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"this token is limited to region {who.region}"
        )


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no {what}")


async def limited_body(request: Request, limit: int) -> None:
    """Refuse a body over ``limit`` before it is parsed: by its Content-Length, or — for a
    chunked body — by counting it as it arrives. The body is then cached for the form
    parser, so nothing over the cap is ever spooled to disk."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "bad Content-Length") from None
        if size > limit:
            raise _too_large(size, limit)
    received = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(received, limit)
        chunks.append(chunk)
    # Starlette reads a cached body from here (request.form() then parses it).
    request._body = b"".join(chunks)


def _too_large(size: int, limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"upload of {size} bytes is over the limit of {limit} bytes (api_max_upload_bytes)",
    )


def https_options(settings: Settings) -> dict[str, Any]:
    """``uvicorn.Config`` arguments that serve HTTPS (BCP 195 profile) when
    ``http_tls_cert_file`` is set; none otherwise."""
    cert, key = settings.http_tls_cert_file, settings.http_tls_key_file
    if cert is None or key is None:  # settings allow both or neither
        return {}
    try:
        context = server_context(cert, key, None)
    except TlsConfigError as exc:
        raise ConfigError(str(exc)) from exc
    context.set_alpn_protocols(["http/1.1"])
    factory: Callable[[Any, Any], ssl.SSLContext] = lambda _config, _default: context  # noqa: E731
    return {"ssl_context_factory": factory}


def secure_cookies(settings: Settings, request: Request) -> bool:
    """Session cookies are Secure when we serve HTTPS, or the request came over it (a TLS
    terminator in front that says so)."""
    return settings.http_tls or request.url.scheme == "https"
