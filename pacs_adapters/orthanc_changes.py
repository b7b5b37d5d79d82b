"""Reading from an Orthanc over REST: its ``/changes`` log, a study's instances, an
instance's DICOM file.

Everything Orthanc answers is outside input: JSON of the wrong shape is an error, and a file
is read in chunks and refused once it passes the caller's bound, before it is all in memory.
Every failure (unreachable, HTTP error, bad answer, too large) is one :class:`OrthancError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pacs_adapters.orthanc_rest import OrthancError

STABLE_STUDY = "StableStudy"


class InstanceTooLarge(OrthancError):
    """An instance's file is larger than the caller accepts."""


class Change(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: int = Field(alias="Seq", ge=0)
    change_type: str = Field(alias="ChangeType", max_length=64)
    resource_id: str = Field(alias="ID", max_length=128)


class Changes(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    changes: list[Change] = Field(alias="Changes", max_length=10_000)
    last: int = Field(alias="Last", ge=0)
    done: bool = Field(alias="Done")


@dataclass(frozen=True)
class OrthancServer:
    url: str
    username: str | None = None
    password: str | None = None
    timeout_s: float = 30.0


class OrthancReader:
    """One HTTP client to one Orthanc (close it with :meth:`close`)."""

    def __init__(self, server: OrthancServer) -> None:
        auth = (server.username, server.password or "") if server.username else None
        self._client = httpx.Client(
            base_url=server.url.rstrip("/"), auth=auth, timeout=server.timeout_s
        )

    def close(self) -> None:
        self._client.close()

    def changes(self, since: int, limit: int = 100) -> Changes:
        answer = self._json("/changes", params={"since": since, "limit": limit})
        try:
            return Changes.model_validate(answer)
        except ValidationError as exc:
            raise OrthancError(f"Orthanc's /changes is not what was expected: {exc}") from exc

    def study_instances(self, study_id: str) -> list[str]:
        """The Orthanc ids of the study's instances (empty when the study is gone)."""
        try:
            answer = self._json(f"/studies/{_safe_id(study_id)}/instances")
        except _NotFound:
            return []
        if not isinstance(answer, list) or not all(
            isinstance(item, dict) and isinstance(item.get("ID"), str) for item in answer
        ):
            raise OrthancError("Orthanc's study instances are not a list of ids")
        return [_safe_id(item["ID"]) for item in answer]

    def instance_file(self, instance_id: str, max_bytes: int) -> bytes | None:
        """The instance's Part-10 file; None when it is gone. Over ``max_bytes`` is an
        error, found before more than that is read."""
        try:
            with self._client.stream("GET", f"/instances/{_safe_id(instance_id)}/file") as reply:
                if reply.status_code == 404:
                    return None
                _check(reply)
                chunks, size = [], 0
                for chunk in reply.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise InstanceTooLarge(f"instance over {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise OrthancError(f"Orthanc unreachable: {exc.__class__.__name__}") from exc

    def _json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        try:
            reply = self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise OrthancError(f"Orthanc unreachable: {exc.__class__.__name__}") from exc
        if reply.status_code == 404:
            raise _NotFound(path)
        _check(reply)
        try:
            return reply.json()
        except ValueError as exc:
            raise OrthancError("Orthanc answered something that is not JSON") from exc


class _NotFound(OrthancError):
    pass


def _check(reply: httpx.Response) -> None:
    if reply.status_code != 200:
        raise OrthancError(f"Orthanc answered HTTP {reply.status_code}")


def _safe_id(value: str) -> str:
    # Orthanc's ids are SHA-1 based, dash-separated hex; anything else never reaches a URL.
    if not value or len(value) > 64 or any(c not in "0123456789abcdef-" for c in value):
        raise OrthancError("Orthanc gave a resource id that is not one of its ids")
    return value
