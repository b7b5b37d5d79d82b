"""``/api/v1/devices/{device}/modes``: shadow or live, per device version and region — read,
and set (audited with who and when in the same transaction)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from gateway.access import audit
from gateway.access.audit import AuditEvent
from gateway.access.http import (
    Caller,
    Context,
    action_of,
    client_ip,
    not_found,
    require_change,
    require_region_access,
)
from gateway.api.errors import COMMON, responses
from gateway.api.params import DeviceKeyPath, RegionPath, VersionedDevicePath
from gateway.devices.modes import DeviceMode, ModeChange, ModeSetting, modes_of, set_mode
from gateway.devices.registry import RegistryError

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], responses=responses(*COMMON))


class ModeBody(BaseModel):
    """Body of the mode change: ``{"mode": "live"}``."""

    model_config = ConfigDict(extra="forbid")

    mode: DeviceMode


@router.get("/{device_key}/modes", responses=responses(404))
def modes(context: Context, caller: Caller, device_key: DeviceKeyPath) -> list[ModeSetting]:
    """The version's mode (``ID``: the newest version) in each region it is enabled in or
    has a mode set for, and where the mode comes from (set, regions.yaml, default)."""
    try:
        found = modes_of(context.db, device_key)
    except RegistryError:
        raise not_found(f"device {device_key}") from None
    return [m for m in found if caller.sees_region(m.region)]


@router.put("/{device_key}/modes/{region}", responses=responses(400, 403, 404))
def change_mode(
    context: Context,
    caller: Caller,
    request: Request,
    device_key: VersionedDevicePath,
    region: RegionPath,
    body: ModeBody,
) -> ModeSetting:
    """Set ``ID@VERSION`` shadow or live in a region (admin; region_admin for its own). Jobs
    created from now on take the new mode; jobs already created keep theirs."""
    require_change(caller)
    require_region_access(caller, region)

    def audited(session: Session, change: ModeChange) -> None:
        audit.add(
            session,
            caller.actor,
            AuditEvent.DEVICE_MODE_CHANGED,
            action_of(request),
            region=change.region,
            client_ip=client_ip(request),
            detail=change.detail(),
        )

    try:
        change = set_mode(context.db, device_key, region, body.mode, caller.name, audited)
    except RegistryError as exc:
        raise not_found(str(exc).removeprefix("no ")) from None
    return next(m for m in modes_of(context.db, change.device) if m.region == region)
