"""Where results go: ``configs/destinations.yaml``.

Each destination is one receiver speaking one protocol — C-STORE back to the archive,
Orthanc's REST API, DICOMweb STOW-RS, or an HTTP POST of the SEMD to the regional system —
and takes the result kinds it is named for. Each source (sources.yaml) lists the
destinations of its studies' results; ``default`` covers sources not listed. An HTTP
destination of kind ``monitoring`` takes what the gateway says about its devices (the
monthly usage report, malfunction notices) rather than a study's results: it is not listed
per source, every one of them gets each notice. Secrets are never in the file: it names the
environment variable that holds them.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from gateway.errors import ConfigError
from models.yaml_file import load_model


class ResultKind(StrEnum):
    """What a destination takes: a kind of a job's result, or ``monitoring`` (notices about
    the devices: :class:`gateway.index.tables.NoticeRow`)."""

    SR = "sr"
    SC = "sc"
    GSPS = "gsps"
    SEG = "seg"
    SEMD = "semd"
    MONITORING = "monitoring"


DICOM_KINDS = (ResultKind.SR, ResultKind.SC, ResultKind.GSPS, ResultKind.SEG)
# What one HTTP destination can take: one payload shape per receiver URL.
HTTP_KINDS = ([ResultKind.SEMD], [ResultKind.MONITORING])


def _only_dicom(name: str, kinds: list[ResultKind], what: str) -> None:
    other = [kind.value for kind in kinds if kind not in DICOM_KINDS]
    if other:
        raise ValueError(f"{name}: {what} takes DICOM results, not {', '.join(other)}")


Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class _Destination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    kinds: list[ResultKind] = Field(default_factory=lambda: list(DICOM_KINDS), min_length=1)


class DicomDestination(_Destination):
    """C-STORE SCU to an archive's SCP, over DICOM TLS when ``tls`` is true."""

    protocol: Literal["dicom"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    ae_title: str = Field(min_length=1, max_length=16)
    tls: bool = Field(default=False, description="DICOM TLS (PS3.15 Annex B, BCP 195)")
    ca_file: Path | None = Field(
        default=None, description="CA certificates that verify the archive (default: system's)"
    )
    client_cert: Path | None = Field(default=None, description="our client certificate (PEM)")
    client_key: Path | None = None
    check_hostname: bool = Field(
        default=True, description="the archive's certificate must name host"
    )

    @model_validator(mode="after")
    def _dicom_only(self) -> DicomDestination:
        _only_dicom(self.name, self.kinds, "a DICOM archive")
        if not self.tls and (self.ca_file or self.client_cert or self.client_key):
            raise ValueError(f"{self.name}: ca_file / client_cert / client_key need tls: true")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError(f"{self.name}: client_key without client_cert")
        return self


class OrthancDestination(_Destination):
    """Orthanc's REST API (POST /instances)."""

    protocol: Literal["orthanc"]
    url: HttpUrl
    username: str | None = None
    password_env: str | None = Field(default=None, description="variable holding the password")

    @model_validator(mode="after")
    def _dicom_only(self) -> OrthancDestination:
        _only_dicom(self.name, self.kinds, "Orthanc")
        return self


class StowDestination(_Destination):
    """DICOMweb STOW-RS (``<url>/studies``)."""

    protocol: Literal["stow"]
    url: HttpUrl
    token_env: str | None = Field(default=None, description="variable holding a bearer token")

    @model_validator(mode="after")
    def _dicom_only(self) -> StowDestination:
        _only_dicom(self.name, self.kinds, "STOW-RS")
        return self


class HttpDestination(_Destination):
    """The regional system: HTTP POST of the SEMD and its metadata; or, with kinds
    ``[monitoring]``, a receiver of the device usage reports and malfunction notices (JSON)."""

    protocol: Literal["http"]
    url: HttpUrl
    token_env: str | None = Field(default=None, description="variable holding a bearer token")
    client_cert: Path | None = Field(default=None, description="TLS client certificate (PEM)")
    client_key: Path | None = None
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the server")
    kinds: list[ResultKind] = Field(default_factory=lambda: [ResultKind.SEMD], min_length=1)

    @model_validator(mode="after")
    def _semd_only(self) -> HttpDestination:
        if self.kinds not in HTTP_KINDS:
            raise ValueError(
                f"{self.name}: an HTTP destination takes either the SEMD ([semd]) or the "
                "monitoring notices ([monitoring])"
            )
        if self.client_key is not None and self.client_cert is None:
            raise ValueError(f"{self.name}: client_key without client_cert")
        return self


Destination = Annotated[
    DicomDestination | OrthancDestination | StowDestination | HttpDestination,
    Field(discriminator="protocol"),
]


class DestinationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destinations: list[Destination] = Field(default_factory=list)
    sources: dict[str, list[str]] = Field(
        default_factory=dict, description="source name → destination names"
    )
    default: list[str] = Field(default_factory=list, description="for sources not listed")

    @model_validator(mode="after")
    def _names_resolve(self) -> DestinationsFile:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate destination names: {', '.join(duplicates)}")
        wanted = {n for listed in self.sources.values() for n in listed} | set(self.default)
        unknown = sorted(wanted - set(names))
        if unknown:
            raise ValueError(f"unknown destinations named: {', '.join(unknown)}")
        return self


class Destinations:
    """The loaded file: which destinations take a given source's result of a given kind."""

    def __init__(self, config: DestinationsFile) -> None:
        self.config = config
        self.by_name = {d.name: d for d in config.destinations}

    def for_result(self, source: str, kind: ResultKind) -> list[Destination]:
        if kind == ResultKind.MONITORING:
            return []  # notices are not a study's results: see for_monitoring
        names = self.config.sources.get(source, self.config.default)
        return [self.by_name[n] for n in names if kind in self.by_name[n].kinds]

    def for_monitoring(self) -> list[Destination]:
        """Every destination of the usage reports and malfunction notices."""
        return [d for d in self.config.destinations if ResultKind.MONITORING in d.kinds]


def load_destinations(path: Path) -> Destinations:
    """The destinations file; none (results are kept, nothing is sent) when it is absent."""
    if not path.is_file():
        return Destinations(DestinationsFile())
    return Destinations(load_model(path, DestinationsFile, ConfigError, empty_ok=True))


def secret(variable: str | None) -> str | None:
    """A secret named by its environment variable; a named but unset one is an error."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise ConfigError(f"environment variable {variable} is not set")
    return value
