"""The receiver of the gateway's notices about its AI devices (the monthly usage report for
АИС Росздравнадзора, malfunction notices): an HTTP POST of one JSON document.

``Idempotency-Key`` is the notice's key (one per device version and month, or device version
and day), so a receiver that saw it already can answer success without keeping a second
copy; 2xx is the acknowledgement, anything else is retried.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from pacs_adapters.regional_http import tls_options


class NoticeError(Exception):
    """The receiver could not be reached or did not accept the notice."""


def post_notice(
    url: str,
    document: dict[str, Any],
    key: str,
    token: str | None,
    timeout_s: float,
    client_cert: tuple[Path, Path | None] | None = None,
    ca_file: Path | None = None,
) -> str:
    """POST one notice; returns the receiver's acknowledgement (its id, or the status)."""
    headers = {"Idempotency-Key": key, "Content-Type": "application/json; charset=utf-8"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps(document, ensure_ascii=False).encode("utf-8")
    cert, verify = tls_options(client_cert, ca_file)
    try:
        with httpx.Client(timeout=timeout_s, cert=cert, verify=verify) as client:
            response = client.post(url, headers=headers, content=body)
    except httpx.HTTPError as exc:
        raise NoticeError(f"notice receiver unreachable: {exc.__class__.__name__}") from exc
    if not response.is_success:
        raise NoticeError(f"notice receiver answered HTTP {response.status_code}")
    try:
        answer = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(answer, dict) and answer.get("id"):
        return str(answer["id"])[:200]
    return f"HTTP {response.status_code}"
