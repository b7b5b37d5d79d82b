"""The regional system's intake for SEMD documents: an HTTP POST per document.

The body is multipart: ``document`` (the unsigned CDA, application/xml) and ``metadata``
(application/json: document id, kind, patient, organisation). ``Idempotency-Key`` is the
document id, so a receiver that saw the document already can answer success without a
second copy; 2xx is the acknowledgement, anything else is retried.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx


class RegionalError(Exception):
    """The regional system could not be reached or did not accept the document."""


def post_semd(
    url: str,
    document: bytes,
    metadata: dict[str, Any],
    token: str | None,
    timeout_s: float,
    client_cert: tuple[Path, Path | None] | None = None,
    ca_file: Path | None = None,
) -> str:
    """POST one SEMD; returns the receiver's acknowledgement (its id for it, or the status)."""
    headers = {"Idempotency-Key": str(metadata.get("document_id", ""))}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    files = {
        "document": ("semd.xml", document, "application/xml"),
        "metadata": (
            "metadata.json",
            json.dumps(metadata, ensure_ascii=False).encode(),
            "application/json",
        ),
    }
    cert, verify = tls_options(client_cert, ca_file)
    try:
        with httpx.Client(timeout=timeout_s, cert=cert, verify=verify) as client:
            response = client.post(url, headers=headers, files=files)
    except httpx.HTTPError as exc:
        raise RegionalError(f"regional system unreachable: {exc.__class__.__name__}") from exc
    if not response.is_success:
        raise RegionalError(f"regional system answered HTTP {response.status_code}")
    try:
        answer = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(answer, dict) and answer.get("id"):
        return str(answer["id"])
    return f"HTTP {response.status_code}"


def tls_options(
    client_cert: tuple[Path, Path | None] | None, ca_file: Path | None
) -> tuple[str | tuple[str, str] | None, str | bool]:
    """httpx's ``cert`` and ``verify`` for a client certificate and a CA bundle."""
    cert: str | tuple[str, str] | None = None
    if client_cert is not None:
        certificate, key = client_cert
        cert = (str(certificate), str(key)) if key is not None else str(certificate)
    return cert, str(ca_file) if ca_file is not None else True
