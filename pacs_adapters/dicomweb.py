"""DICOMweb STOW-RS (dicomweb-client): one instance to a result destination
(:func:`stow_instance`), a series to an external device's vendor (:func:`stow_series`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
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


# Instances per STOW-RS request: a long CT series goes as several bounded requests rather
# than one body of gigabytes the vendor's proxy may refuse.
STOW_MAX_INSTANCES = 64


@dataclass(frozen=True)
class StowTarget:
    """A DICOMweb service to store into: its base URL (``…/studies`` is appended), bearer
    token, timeout for connect and each answer, and for https its CA (and our client
    certificate, when it asks for one)."""

    url: str
    token: str
    timeout_s: float
    ca_file: Path | None = None
    client_cert: tuple[Path, Path] | None = None

    def __repr__(self) -> str:  # never the token, in a traceback or a log
        return f"StowTarget(url={self.url!r})"


def stow_series(
    target: StowTarget, datasets: Sequence[Dataset], max_instances: int = STOW_MAX_INSTANCES
) -> int:
    """STOW-RS the instances of one series, ``max_instances`` per multipart request; the
    number stored. Raises :class:`StowError` when the server is away, refuses the request,
    lists an instance in its Failed SOP Sequence or leaves one out of its Referenced SOP
    Sequence (PS3.18 10.5.3): the caller sends the series again, which replaces the copy."""
    session = requests.Session()
    if target.ca_file is not None:
        session.verify = str(target.ca_file)
    if target.client_cert is not None:
        session.cert = (str(target.client_cert[0]), str(target.client_cert[1]))
    client = DICOMwebClient(
        target.url,
        session=session,
        headers={"Authorization": f"Bearer {target.token}"},
        timeout=target.timeout_s,
    )
    # The caller's task retries with its own backoff, without holding a worker for the
    # library's (five tries, up to 30 s of sleeping).
    client.set_http_retry_params(retry=False)
    stored = 0
    try:
        for start in range(0, len(datasets), max_instances):
            batch = datasets[start : start + max_instances]
            stored += _checked(_post(client, batch), batch)
    finally:
        session.close()
    return stored


def _post(client: DICOMwebClient, batch: Sequence[Dataset]) -> Dataset:
    try:
        return client.store_instances(list(batch))
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise StowError(f"STOW-RS refused: HTTP {status}") from exc
    except requests.RequestException as exc:
        raise StowError(f"STOW-RS server unreachable: {exc.__class__.__name__}") from exc
    except ValueError as exc:  # an answer that is not DICOM JSON or XML
        raise StowError(f"STOW-RS answer unreadable: {exc}") from exc


def _checked(answer: Dataset, batch: Sequence[Dataset]) -> int:
    failed = answer.get("FailedSOPSequence")
    if failed:
        reason = failed[0].get("FailureReason", "?")
        raise StowError(f"STOW-RS failed {len(failed)} of {len(batch)} instances: reason {reason}")
    taken = {
        str(item.get("ReferencedSOPInstanceUID", ""))
        for item in answer.get("ReferencedSOPSequence", [])
    }
    missing = [ds for ds in batch if str(ds.SOPInstanceUID) not in taken]
    if missing:
        raise StowError(f"STOW-RS did not report {len(missing)} of {len(batch)} instances stored")
    return len(batch)
