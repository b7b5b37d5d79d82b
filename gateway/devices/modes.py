"""Shadow and live: how each device version works in each region.

A **shadow** version runs, records its findings and builds every result, but nothing is
delivered; a **live** one delivers. The mode of (version, region) is, in this order:

1. the mode set for that version in that region (API, ``aigw models mode``), kept in
   ``device_modes`` with who set it and when;
2. else the mode regions.yaml names for the device in that region (``mode: live``), which
   every version of the device starts in there;
3. else ``shadow``: a newly registered version delivers nothing until someone says so.

regions.yaml is applied again at every start, but it only says where versions *start*: a mode
set for a version stands across restarts. A job records the mode of its device version when
it is created (:func:`mode_of` in the dispatcher's transaction), so a study analysed in
shadow stays shadow even if the mode changes later.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.devices.registry import RegistryError, split_key
from gateway.index.database import Database
from gateway.index.tables import (
    DeviceMode,
    DeviceModeRow,
    DeviceRegionRow,
    DeviceRow,
    RegionRow,
    utcnow,
)

__all__ = ["DeviceMode", "ModeChange", "ModeSetting", "mode_of", "modes_of", "set_mode"]

DEFAULT_MODE = DeviceMode.SHADOW


class ModeSetting(BaseModel):
    """The mode of one version in one region, and where it comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str  # ID@VERSION
    region: str
    mode: DeviceMode
    source: str  # "set" (device_modes), "regions.yaml", "default"
    changed_at: datetime | None
    changed_by: str | None


class ModeChange(BaseModel):
    """What :func:`set_mode` changed; the caller audits it in the same transaction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str
    region: str
    before: DeviceMode
    after: DeviceMode

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def detail(self) -> dict[str, object]:
        return {"device": self.device, "from": self.before.value, "to": self.after.value}


def mode_of(session: Session, device_id: str, version: str, region: str) -> DeviceMode:
    """The mode of ``device_id@version`` in ``region`` now, inside the caller's transaction."""
    return _setting(session, device_id, version, region).mode


def _setting(session: Session, device_id: str, version: str, region: str) -> ModeSetting:
    key = f"{device_id}@{version}"
    row = session.scalars(
        select(DeviceModeRow).where(
            DeviceModeRow.device_id == device_id,
            DeviceModeRow.version == version,
            DeviceModeRow.region_code == region,
        )
    ).one_or_none()
    if row is not None:
        return ModeSetting(
            device=key,
            region=region,
            mode=DeviceMode(row.mode),
            source="set",
            changed_at=row.changed_at,
            changed_by=row.changed_by,
        )
    start = session.scalar(
        select(DeviceRegionRow.start_mode).where(
            DeviceRegionRow.device_id == device_id, DeviceRegionRow.region_code == region
        )
    )
    if start is not None and start != DEFAULT_MODE:
        return ModeSetting(
            device=key,
            region=region,
            mode=DeviceMode(start),
            source="regions.yaml",
            changed_at=None,
            changed_by=None,
        )
    return ModeSetting(
        device=key,
        region=region,
        mode=DEFAULT_MODE,
        source="default",
        changed_at=None,
        changed_by=None,
    )


def modes_of(db: Database, device_key: str) -> list[ModeSetting]:
    """The mode of one version (``ID@VERSION``, or ``ID``: the newest) in every region it is
    enabled in or has a mode set for, in region order."""
    with db.session() as session:
        device_id, version = _version(session, device_key)
        regions = set(
            session.scalars(
                select(DeviceRegionRow.region_code).where(DeviceRegionRow.device_id == device_id)
            )
        ) | set(
            session.scalars(
                select(DeviceModeRow.region_code).where(
                    DeviceModeRow.device_id == device_id, DeviceModeRow.version == version
                )
            )
        )
        return [_setting(session, device_id, version, region) for region in sorted(regions)]


def set_mode(
    db: Database,
    device_key: str,
    region: str,
    mode: DeviceMode,
    changed_by: str,
    audit: Callable[[Session, ModeChange], None],
) -> ModeChange:
    """Set the mode of ``ID@VERSION`` (``ID``: the newest version) in ``region``. ``audit``
    records the change in the same transaction: the mode changes and is audited, or neither.
    Setting the mode a version already has is recorded too (who confirmed it, and when)."""
    with db.write_lock, db.session() as session:
        if session.get(RegionRow, region) is None:
            raise RegistryError(f"no region {region}")
        device_id, version = _version(session, device_key)
        before = _setting(session, device_id, version, region).mode
        row = session.scalars(
            select(DeviceModeRow).where(
                DeviceModeRow.device_id == device_id,
                DeviceModeRow.version == version,
                DeviceModeRow.region_code == region,
            )
        ).one_or_none()
        if row is None:
            row = DeviceModeRow(device_id=device_id, version=version, region_code=region)
            session.add(row)
        row.mode, row.changed_at, row.changed_by = mode.value, utcnow(), changed_by[:100]
        change = ModeChange(
            device=f"{device_id}@{version}", region=region, before=before, after=mode
        )
        audit(session, change)
        return change


def _version(session: Session, device_key: str) -> tuple[str, str]:
    """(id, version) of a registered version; ``ID`` alone names the newest."""
    device_id, version = split_key(device_key)
    query = select(DeviceRow.version).where(DeviceRow.device_id == device_id)
    if version is not None:
        query = query.where(DeviceRow.version == version)
    found = session.scalars(query.order_by(DeviceRow.id.desc())).first()
    if found is None:
        raise RegistryError(f"no device {device_key}")
    return device_id, found
