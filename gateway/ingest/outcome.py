"""Who sent an instance, and what became of it: the two values every ingest path shares."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from gateway.dimse_status import Status
from gateway.ingest.sources import Source


class Sender(BaseModel):
    """Who sent an instance, as established at association time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source
    source_id: int
    calling_ae: str
    address: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: Status
    reason: str = ""
    study_uid: str | None = None
    duplicate: bool = False
    version: int | None = None
