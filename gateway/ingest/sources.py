"""Who may send: calling AE titles (optionally with IP ranges) mapped to sources and regions.

``configs/sources.yaml`` lists the archives / medical organisations; ``configs/regions.yaml``
names the subjects of the RF by their two-digit codes. Both are untrusted input: a bad file
is refused as a whole with the reason, never half applied.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from sqlalchemy import select

from gateway.errors import ConfigError
from gateway.index.database import Database
from gateway.index.tables import DeviceMode, RegionRow, SourceRow
from gateway.ingest.tls import TlsIdentity, normalise_fingerprint
from gateway.uids import is_valid_uid
from models.yaml_file import load_model

RegionCode = Annotated[str, StringConstraints(pattern=r"^\d{2}$")]
AETitle = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[ -\[\]-~]+$")]


OPEN_SOURCE_NAME = "open"
OPEN_REGION = "00"


class SourceCheck(StrEnum):
    """The check of the source directory that refused a sender."""

    CALLING_AE = "calling_ae"
    PEER_ADDRESS = "peer_address"
    TLS_IDENTITY = "tls_identity"


class Region(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: RegionCode
    name: str = Field(min_length=1)


class Retrieve(StrEnum):
    """How a prior study is fetched from the archive."""

    MOVE = "move"  # C-MOVE to the gateway's own SCP (the archive opens the association)
    GET = "get"  # C-GET: the instances come back on the gateway's own association


class ArchiveQuery(BaseModel):
    """The source's archive as a Query/Retrieve SCP: asked how many instances a study has
    (NumberOfStudyRelatedInstances), so the study completes once that many are held, and
    for a patient's prior studies (C-FIND, then C-MOVE or C-GET) when a device wants them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    ae_title: AETitle
    calling_ae: AETitle | None = Field(
        default=None, description="Our AE title toward the archive; the gateway's by default."
    )
    timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Connect, association and answer, each."
    )
    refresh_s: float = Field(
        default=30.0,
        gt=0,
        description="An answer is asked again after this long while fewer instances are "
        "held; an archive that did not answer is asked again after this long.",
    )
    retrieve: Retrieve = Field(
        default=Retrieve.MOVE, description="How priors are fetched: C-MOVE or C-GET."
    )
    move_destination: AETitle | None = Field(
        default=None,
        description="The AE title the archive knows the gateway's SCP by (C-MOVE's "
        "destination); the gateway's own by default.",
    )
    retrieve_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="A whole C-MOVE or C-GET of one study."
    )


class OrthancFollow(BaseModel):
    """An Orthanc the gateway follows: each study it reports stable (``StableStudy`` in its
    ``/changes``) is fetched over REST and is complete at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=300)
    username: str | None = Field(default=None, min_length=1, max_length=100)
    password: str | None = Field(default=None, max_length=200)
    poll_s: float = Field(default=1.0, gt=0, le=300, description="How often /changes is read.")
    timeout_s: float = Field(default=30.0, gt=0, le=300)


class SourceKind(StrEnum):
    """What a sender is: an archive sends studies; a device (an external AI device's
    service) sends results of the studies we sent it, which never enter study assembly."""

    ARCHIVE = "archive"
    DEVICE = "device"


class Source(BaseModel):
    """One sender: an archive (ЦАМИ / PACS) of a medical organisation, or an external AI
    device's service returning results (``kind: device``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: SourceKind = SourceKind.ARCHIVE
    title: str = Field(default="", description="Human-readable name of the organisation.")
    ae_title: AETitle
    hosts: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list, description="Allowed peer networks; empty means any address."
    )
    frmo_oid: str | None = Field(default=None, description="The organisation's OID in ФРМО.")
    region: RegionCode
    quiet_period_s: float | None = Field(
        default=None, gt=0, description="This source's quiet period; the default otherwise."
    )
    complete_on_release: bool = Field(
        default=False,
        description="The sender sends one study per association: a study is complete when "
        "the association that delivered it is released (an aborted one does not count).",
    )
    query: ArchiveQuery | None = Field(
        default=None,
        description="Ask this archive (C-FIND) how many instances a study has; complete "
        "once that many are held.",
    )
    orthanc: OrthancFollow | None = Field(
        default=None,
        description="Follow this Orthanc's StableStudy changes: fetch each such study over "
        "REST and complete it.",
    )
    tls_subject: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Subject CN of the client certificate; when set, only TLS with it.",
    )
    tls_fingerprint_sha256: str | None = Field(
        default=None,
        description="SHA-256 of the client certificate (hex, colons allowed); when set, "
        "only TLS with that certificate.",
    )

    @model_validator(mode="after")
    def _oid_is_an_oid(self) -> Source:
        if self.frmo_oid is not None and not is_valid_uid(self.frmo_oid):
            raise ValueError(f"frmo_oid {self.frmo_oid!r} is not a dotted-number OID")
        if self.kind == SourceKind.DEVICE and (self.query or self.orthanc):
            raise ValueError("a device source sends results: it has no query or orthanc")
        return self

    @field_validator("tls_fingerprint_sha256")
    @classmethod
    def _fingerprint_is_sha256(cls, value: str | None) -> str | None:
        return None if value is None else normalise_fingerprint(value)

    @property
    def requires_tls(self) -> bool:
        return self.tls_subject is not None or self.tls_fingerprint_sha256 is not None

    def tls_mismatch(self, identity: TlsIdentity | None) -> str | None:
        """None when the connection satisfies this source's TLS requirement; else why not."""
        if not self.requires_tls:
            return None
        if identity is None:
            return f"source {self.name!r} sends over TLS only; this association is plain TCP"
        if identity.fingerprint_sha256 is None:
            return f"source {self.name!r} needs a client certificate; none was presented"
        if self.tls_subject is not None and identity.subject != self.tls_subject:
            return (
                f"client certificate {identity.describe()} is not source {self.name!r}'s "
                f"CN={self.tls_subject}"
            )
        if (
            self.tls_fingerprint_sha256 is not None
            and identity.fingerprint_sha256 != self.tls_fingerprint_sha256
        ):
            return f"client certificate fingerprint is not source {self.name!r}'s"
        return None

    def admits(self, address: str) -> bool:
        if not self.hosts:
            return True
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(peer in network for network in self.hosts)


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[Source] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_unique(self) -> SourcesFile:
        names = [source.name for source in self.sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate source names: {', '.join(duplicates)}")
        return self


DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class RegionDevice(BaseModel):
    """A device enabled in a region, with the mode its versions start in there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: DeviceId
    mode: DeviceMode = Field(
        default=DeviceMode.SHADOW,
        description="shadow: new versions deliver nothing until set live; live: they deliver",
    )


class RegionsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    regions: dict[RegionCode, str] = Field(default_factory=dict)
    devices: dict[RegionCode, list[DeviceId | RegionDevice]] = Field(
        default_factory=dict,
        description="AI devices enabled in each region: an id, or {id, mode} to name the "
        "mode its versions start in",
    )

    @model_validator(mode="after")
    def _device_regions_known(self) -> RegionsFile:
        unknown = sorted(set(self.devices) - set(self.regions) - {OPEN_REGION})
        if unknown:
            raise ValueError(f"devices enabled in regions not listed under regions: {unknown}")
        for region, entries in self.devices.items():
            ids = [_entry(e).id for e in entries]
            twice = sorted({i for i in ids if ids.count(i) > 1})
            if twice:
                raise ValueError(f"region {region} lists a device more than once: {twice}")
        return self

    def enabled(self) -> dict[str, list[str]]:
        """Region → the device ids enabled there."""
        return {region: [_entry(e).id for e in entries] for region, entries in self.devices.items()}

    def start_modes(self) -> dict[str, dict[str, DeviceMode]]:
        """Region → device id → the mode its versions start in there."""
        return {
            region: {_entry(e).id: _entry(e).mode for e in entries}
            for region, entries in self.devices.items()
        }


def _entry(entry: str | RegionDevice) -> RegionDevice:
    return entry if isinstance(entry, RegionDevice) else RegionDevice(id=entry)


OPEN_SOURCE = Source(
    name=OPEN_SOURCE_NAME, title="Open mode (any calling AE)", ae_title="ANY", region=OPEN_REGION
)


class SourceDirectory:
    """Looks up the source of an association; knows the regions by code."""

    def __init__(
        self,
        sources: list[Source],
        regions: dict[str, str],
        open_mode: bool,
        devices: dict[str, list[str]] | None = None,
        start_modes: dict[str, dict[str, DeviceMode]] | None = None,
    ) -> None:
        self.sources = sources
        self.devices = devices or {}
        self.start_modes = start_modes or {}
        self.regions = {OPEN_REGION: "Открытый режим (без региона)", **regions}
        self.open_mode = open_mode
        unknown = sorted({s.region for s in sources} - set(self.regions))
        if unknown:
            raise ConfigError(f"sources name regions missing from the regions file: {unknown}")

    def match(
        self, calling_ae: str, address: str, identity: TlsIdentity | None = None
    ) -> Source | None:
        """The source for this calling AE at this address over this connection (``identity``
        None: plain TCP), or None when it is not allowed."""
        for source in self.sources:
            if (
                source.ae_title == calling_ae
                and source.admits(address)
                and source.tls_mismatch(identity) is None
            ):
                return source
        return OPEN_SOURCE if self.open_mode else None

    def why_not(
        self, calling_ae: str, address: str, identity: TlsIdentity | None
    ) -> tuple[SourceCheck, str]:
        """Which check refused this sender (call when :meth:`match` gave None)."""
        named = [s for s in self.sources if s.ae_title == calling_ae]
        if not named:
            return SourceCheck.CALLING_AE, f"calling AE {calling_ae!r} is not a configured source"
        placed = [s for s in named if s.admits(address)]
        if not placed:
            return (
                SourceCheck.PEER_ADDRESS,
                f"calling AE {calling_ae!r} may not send from {address}",
            )
        reasons = [s.tls_mismatch(identity) or "" for s in placed]
        return SourceCheck.TLS_IDENTITY, "; ".join(reasons)

    @property
    def has_devices(self) -> bool:
        return any(s.kind == SourceKind.DEVICE for s in self.sources)

    @property
    def names_tls_identities(self) -> list[str]:
        return [s.name for s in self.sources if s.requires_tls]

    def by_name(self, name: str) -> Source | None:
        if name == OPEN_SOURCE_NAME:
            return OPEN_SOURCE
        return next((s for s in self.sources if s.name == name), None)

    def all_sources(self) -> list[Source]:
        return [*self.sources, OPEN_SOURCE] if self.open_mode else list(self.sources)


def load_directory(sources_file: Path, regions_file: Path, open_mode: bool) -> SourceDirectory:
    sources = (
        load_model(sources_file, SourcesFile, ConfigError, empty_ok=True).sources
        if sources_file.is_file()
        else []
    )
    regions = (
        load_model(regions_file, RegionsFile, ConfigError, empty_ok=True)
        if regions_file.is_file()
        else RegionsFile()
    )
    if not sources_file.is_file() and not open_mode:
        raise ConfigError(f"sources file not found: {sources_file} (and open mode is off)")
    return SourceDirectory(
        sources, regions.regions, open_mode, regions.enabled(), regions.start_modes()
    )


def sync_directory(db: Database, directory: SourceDirectory) -> dict[str, int]:
    """Upsert the configured regions and sources; returns source name → row id."""
    with db.session() as session:
        existing_regions = {row.code: row for row in session.scalars(select(RegionRow))}
        for code, name in directory.regions.items():
            region = existing_regions.get(code)
            if region is None:
                session.add(RegionRow(code=code, name=name))
            else:
                region.name = name
        session.flush()
        rows = {row.name: row for row in session.scalars(select(SourceRow))}
        for source in directory.all_sources():
            row = rows.get(source.name)
            if row is None:
                row = SourceRow(name=source.name)
                session.add(row)
                rows[source.name] = row
            row.title = source.title
            row.ae_title = source.ae_title
            row.frmo_oid = source.frmo_oid
            row.region_code = source.region
        session.flush()
        return {name: row.id for name, row in rows.items()}
