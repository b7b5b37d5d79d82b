"""One HTTP POST to a receiver that acknowledges with 2xx (the regional system's SEMD
intake, the receiver of device notices): TLS options, the request, and the acknowledgement.

A receiver's answer is untrusted: only a 2xx counts, and the id it names is cut to 200
characters before anything stores it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

ACK_MAX_CHARS = 200


def tls_options(
    client_cert: tuple[Path, Path | None] | None, ca_file: Path | None
) -> tuple[str | tuple[str, str] | None, str | bool]:
    """httpx's ``cert`` and ``verify`` for a client certificate and a CA bundle."""
    cert: str | tuple[str, str] | None = None
    if client_cert is not None:
        certificate, key = client_cert
        cert = (str(certificate), str(key)) if key is not None else str(certificate)
    return cert, str(ca_file) if ca_file is not None else True


def post_acknowledged(
    url: str,
    headers: dict[str, str],
    token: str | None,
    timeout_s: float,
    client_cert: tuple[Path, Path | None] | None,
    ca_file: Path | None,
    *,
    failure: type[Exception],
    receiver: str,
    **body: Any,
) -> str:
    """POST ``body`` (httpx's ``content=`` or ``files=``); returns the receiver's id for what
    it took, or the HTTP status. Raises ``failure`` naming ``receiver`` when it is unreachable
    or answers anything but 2xx."""
    if token:
        headers = {**headers, "Authorization": f"Bearer {token}"}
    cert, verify = tls_options(client_cert, ca_file)
    try:
        with httpx.Client(timeout=timeout_s, cert=cert, verify=verify) as client:
            response = client.post(url, headers=headers, **body)
    except httpx.HTTPError as exc:
        raise failure(f"{receiver} unreachable: {exc.__class__.__name__}") from exc
    if not response.is_success:
        raise failure(f"{receiver} answered HTTP {response.status_code}")
    try:
        answer = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(answer, dict) and answer.get("id"):
        return str(answer["id"])[:ACK_MAX_CHARS]
    return f"HTTP {response.status_code}"
