"""Security headers on every HTTP response, as one ASGI middleware.

- ``Content-Security-Policy``: the dashboard loads only its own stylesheet and images, runs
  no script at all (inline or not), posts forms only to itself, and may not be framed
  (``frame-ancestors 'none'``); API answers allow nothing. The interactive API docs
  (``/api/docs``, FastAPI's Swagger page) keep their script and are only kept unframed.
- ``Cache-Control: no-store`` on everything but the dashboard's static assets: pages and
  API answers carry patient data or depend on who asks.
- ``Strict-Transport-Security`` when the request came over HTTPS (uvicorn serving TLS, or a
  trusted proxy saying so), never over plain HTTP, where it would be ignored anyway.
- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
  ``X-Frame-Options: DENY`` for browsers that predate CSP's frame-ancestors.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DASHBOARD_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS_CSP = "frame-ancestors 'none'"
DOCS_PATHS = ("/api/docs", "/api/redoc")
STATIC_PREFIX = "/dashboard/static/"
HSTS = "max-age=31536000"


def headers_for(path: str, https: bool) -> dict[str, str]:
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }
    if path.startswith(DOCS_PATHS):
        headers["Content-Security-Policy"] = DOCS_CSP
    elif path.startswith("/dashboard") or path == "/":
        headers["Content-Security-Policy"] = DASHBOARD_CSP
    else:
        headers["Content-Security-Policy"] = API_CSP
    if not path.startswith(STATIC_PREFIX):
        headers["Cache-Control"] = "no-store"
    if https:
        headers["Strict-Transport-Security"] = HSTS
    return headers


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = headers_for(scope["path"], scope.get("scheme") == "https")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in wanted.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
