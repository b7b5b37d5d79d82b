"""Orthanc's REST API as a result destination: POST /instances (orthanc-api-client)."""

from __future__ import annotations

from orthanc_api_client import OrthancApiClient
from orthanc_api_client.exceptions import HttpError, OrthancApiException


class OrthancError(Exception):
    """Orthanc could not be reached or refused the instance."""


def upload_instance(
    url: str, data: bytes, username: str | None, password: str | None, timeout_s: float
) -> str:
    """Store one Part-10 instance; returns Orthanc's instance id. Storing the same instance
    again is harmless: Orthanc keeps one copy."""
    client = OrthancApiClient(url, user=username, pwd=password)
    try:
        response = client.post("instances", data=data, timeout=timeout_s)
        answer = response.json()
    except HttpError as exc:
        raise OrthancError(f"Orthanc refused the instance: HTTP {exc.http_status_code}") from exc
    except OrthancApiException as exc:
        raise OrthancError(f"Orthanc unreachable: {exc.msg}") from exc
    except ValueError as exc:
        raise OrthancError("Orthanc answered something that is not JSON") from exc
    item = answer[0] if isinstance(answer, list) and answer else answer
    if not isinstance(item, dict) or "ID" not in item:
        raise OrthancError(f"Orthanc answered without an instance id: {str(answer)[:200]}")
    return str(item["ID"])
