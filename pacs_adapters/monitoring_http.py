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

from pacs_adapters.http_post import post_acknowledged


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
    body = json.dumps(document, ensure_ascii=False).encode("utf-8")
    return post_acknowledged(
        url,
        headers,
        token,
        timeout_s,
        client_cert,
        ca_file,
        failure=NoticeError,
        receiver="notice receiver",
        content=body,
    )
