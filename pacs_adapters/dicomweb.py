"""DICOMweb STOW-RS as a result destination (dicomweb-client)."""

from __future__ import annotations

import io

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.errors import InvalidDicomError


class StowError(Exception):
    """The DICOMweb server could not be reached or did not store the instance."""


def stow_instance(url: str, data: bytes, token: str | None, timeout_s: float) -> str:
    """STOW-RS one instance; returns its SOP Instance UID once the server reports it stored.
    The same instance again replaces (or is acknowledged as) the stored one."""
    try:
        dataset = dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise StowError(f"not a DICOM Part-10 instance: {exc}") from exc
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = DICOMwebClient(url, headers=headers, timeout=timeout_s)
    try:
        answer = client.store_instances([dataset])
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise StowError(f"STOW-RS refused: HTTP {status}") from exc
    except requests.RequestException as exc:
        raise StowError(f"STOW-RS server unreachable: {exc.__class__.__name__}") from exc
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        reason = failed[0].get("FailureReason", "?")
        raise StowError(f"STOW-RS failed the instance: reason {reason}")
    return str(dataset.SOPInstanceUID)
