"""The API's path and query parameters, each bounded where it is declared.

Whatever a parameter accepts, the index can hold: ids fit a signed 64-bit integer, offsets
and limits their documented ranges, names their own alphabet (no NUL or control characters
reach a query), dates are ``YYYY-MM-DD`` and times RFC 3339 with their zone. The OpenAPI
shows every bound, so a client (or schemathesis) knows what will be refused.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, AwareDatetime, BeforeValidator

from gateway.access.http import MAX_ID, UID_PATTERN

MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # sources, destinations (their YAML names)
IDENTIFIER_PATTERN = r"^[a-z0-9][a-z0-9_.-]{1,63}$"  # device ids, study types
DEVICE_PATTERN = r"^[A-Za-z0-9._-]{1,64}(@[A-Za-z0-9._+-]{1,64})?$"  # ID or ID@VERSION
VERSIONED_DEVICE_PATTERN = r"^[A-Za-z0-9._-]{1,64}@[A-Za-z0-9._+-]{1,64}$"
UNVERSIONED_DEVICE_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
MODALITY_PATTERN = r"^[A-Z0-9_ ]{1,16}$"  # DICOM CS
REGION_PATTERN = r"^\d{2}$"

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})?")


def _iso_date(value: object) -> object:
    # Without this a number is taken as a Unix time: ?study_date_to=0 meant 1970-01-01.
    if isinstance(value, str) and not _DATE.fullmatch(value):
        raise ValueError("a date as YYYY-MM-DD")
    return value


def _iso_datetime(value: object) -> object:
    if isinstance(value, str):
        if not _DATETIME.fullmatch(value):
            raise ValueError("a date and time with its timezone (RFC 3339), e.g. 2026-01-01T08:00Z")
        return re.sub(r"(\.\d{6})\d+", r"\1", value)  # microseconds are all Python keeps
    return value


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("a time this close to year 1 or 9999 is out of range in UTC") from None


IsoDate = Annotated[date, BeforeValidator(_iso_date)]
Instant = Annotated[AwareDatetime, BeforeValidator(_iso_datetime), AfterValidator(_in_utc)]

IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="An id (1 to 2^63-1).")]
UidPath = Annotated[str, Path(max_length=64, pattern=UID_PATTERN)]
DeviceKeyPath = Annotated[str, Path(pattern=DEVICE_PATTERN, description="ID or ID@VERSION")]
VersionedDevicePath = Annotated[
    str, Path(pattern=VERSIONED_DEVICE_PATTERN, description="ID@VERSION")
]
DeviceIdPath = Annotated[str, Path(pattern=UNVERSIONED_DEVICE_PATTERN, description="A device ID")]
RegionPath = Annotated[str, Path(pattern=REGION_PATTERN, description="Two-digit region code")]

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"1 to {MAX_LIMIT}")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"0 to {MAX_OFFSET}")]
IdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
RegionQuery = Annotated[str | None, Query(pattern=REGION_PATTERN)]
NameQuery = Annotated[str | None, Query(pattern=NAME_PATTERN)]
IdentifierQuery = Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)]
DeviceQuery = Annotated[str | None, Query(pattern=DEVICE_PATTERN, description="ID or ID@VERSION")]
ModalityQuery = Annotated[str | None, Query(pattern=MODALITY_PATTERN)]
DateQuery = Annotated[IsoDate | None, Query(description="YYYY-MM-DD")]
InstantQuery = Annotated[
    Instant | None, Query(description="RFC 3339 with its zone; a time without one is refused")
]
