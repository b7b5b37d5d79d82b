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

from pacs_adapters.http_post import post_acknowledged


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
    files = {
        "document": ("semd.xml", document, "application/xml"),
        "metadata": (
            "metadata.json",
            json.dumps(metadata, ensure_ascii=False).encode(),
            "application/json",
        ),
    }
    return post_acknowledged(
        url,
        headers,
        token,
        timeout_s,
        client_cert,
        ca_file,
        failure=RegionalError,
        receiver="regional system",
        files=files,
    )
