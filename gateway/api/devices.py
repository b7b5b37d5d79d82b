"""``/api/v1/devices``: the registry — list, detail, enable/disable (per version and per
region), and registration by upload (manifest + ONNX file, validated all-or-nothing)."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import delete, select
from starlette.datastructures import UploadFile

from gateway.access import audit
from gateway.access.audit import AuditEvent
from gateway.access.http import (
    Caller,
    Context,
    action_of,
    audit_change,
    client_ip,
    limited_body,
    not_found,
    require_change,
    require_region_access,
)
from gateway.access.tokens import Principal, Role
from gateway.api.errors import COMMON, responses
from gateway.api.params import DeviceIdPath, DeviceKeyPath, RegionPath, VersionedDevicePath
from gateway.devices.registry import RegisteredDevice, RegistryError
from gateway.index.tables import DeviceRegionRow, DeviceRow, RegionRow
from models.manifest import DeviceManifest, ManifestError, load_manifest

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], responses=responses(*COMMON))


class DevicePublic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    id: str
    version: str
    name: str
    name_ru: str
    vendor: str
    group: str
    registration_number: str | None
    clinical_use: bool
    notice_ru: str
    notice_en: str
    enabled: bool
    regions: list[str]
    study_types: list[str]
    runtime: str = Field(default="onnx", description="onnx, or external: the vendor's service")


class DeviceDetail(DevicePublic):
    manifest: DeviceManifest
    registered_at: datetime | None


class Enabled(BaseModel):
    """Body of the enable/disable calls: ``{"enabled": true}``."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool


class Registered(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: DevicePublic
    new: bool


def _public(device: RegisteredDevice, who: Principal) -> DevicePublic:
    m = device.manifest
    return DevicePublic(
        key=m.key,
        id=m.id,
        version=m.version,
        name=m.name,
        name_ru=m.name_ru,
        vendor=m.vendor,
        group=m.group.value,
        registration_number=m.registration.number if m.registration else None,
        clinical_use=m.provenance.clinical_use,
        notice_ru=m.provenance.notice_ru,
        notice_en=m.provenance.notice_en,
        enabled=device.enabled,
        regions=[r for r in device.regions if who.sees_region(r)],
        study_types=[t.type for t in m.study_types],
        runtime=m.runtime.value,
    )


@router.get("")
def devices(context: Context, caller: Caller) -> list[DevicePublic]:
    """Every registered version, oldest first per device."""
    return [_public(d, caller) for d in context.registry.devices()]


@router.get("/{device_key}", responses=responses(404))
def device(context: Context, caller: Caller, device_key: DeviceKeyPath) -> DeviceDetail:
    """``ID`` (newest version) or ``ID@VERSION``, with its whole manifest."""
    try:
        found = context.registry.get(device_key)
    except RegistryError:
        raise not_found(f"device {device_key}") from None
    with context.db.session() as session:
        registered_at = session.scalar(
            select(DeviceRow.registered_at).where(
                DeviceRow.device_id == found.manifest.id,
                DeviceRow.version == found.manifest.version,
            )
        )
    return DeviceDetail(
        **_public(found, caller).model_dump(),
        manifest=found.manifest,
        registered_at=registered_at,
    )


@router.patch("/{device_key}", responses=responses(400, 403, 404))
def set_enabled(
    context: Context,
    caller: Caller,
    request: Request,
    device_key: VersionedDevicePath,
    body: Enabled,
) -> DevicePublic:
    """Enable or disable one version everywhere (admin): a disabled version gets no jobs."""
    _require_admin(caller)
    try:
        context.registry.set_enabled(device_key, body.enabled)
        changed = context.registry.get(device_key)
    except RegistryError:
        raise not_found(f"device {device_key}") from None
    event = AuditEvent.DEVICE_ENABLED if body.enabled else AuditEvent.DEVICE_DISABLED
    audit_change(context, request, caller, event, detail={"device": device_key})
    return _public(changed, caller)


@router.put("/{device_id}/regions/{region}", responses=responses(400, 403, 404))
def set_region(
    context: Context,
    caller: Caller,
    request: Request,
    device_id: DeviceIdPath,
    region: RegionPath,
    body: Enabled,
) -> DevicePublic:
    """Enable or disable a device (every version) in a region. A region admin may change
    only its own region. ``regions.yaml`` seeds this table again when the gateway starts."""
    require_change(caller)
    require_region_access(caller, region)
    with context.db.write_lock, context.db.session() as session:
        if session.get(RegionRow, region) is None:
            raise not_found(f"region {region}")
        if session.scalar(select(DeviceRow.id).where(DeviceRow.device_id == device_id)) is None:
            raise not_found(f"device {device_id}")
        row = session.get(DeviceRegionRow, (device_id, region))
        if body.enabled and row is None:
            session.add(DeviceRegionRow(device_id=device_id, region_code=region))
        elif not body.enabled and row is not None:
            session.execute(
                delete(DeviceRegionRow).where(
                    DeviceRegionRow.device_id == device_id, DeviceRegionRow.region_code == region
                )
            )
        # In the change's own transaction: enabled or disabled and audited, or neither.
        audit.add(
            session,
            caller.actor,
            AuditEvent.DEVICE_REGION_ENABLED if body.enabled else AuditEvent.DEVICE_REGION_DISABLED,
            action_of(request),
            region=region,
            client_ip=client_ip(request),
            detail={"device": device_id, "changed": (row is None) == body.enabled},
        )
    return _public(context.registry.get(device_id), caller)


UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["manifest", "model"],
                    "properties": {
                        "manifest": {"type": "string", "format": "binary"},
                        "model": {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=UPLOAD_SCHEMA,
    responses=responses(400, 403, 413),
)
async def register(context: Context, caller: Caller, request: Request) -> Registered:
    """Register a device version from an upload: ``manifest`` (YAML) and ``model`` (ONNX;
    none for an external device). Both are validated as by ``aigw models register``; a bad
    one changes nothing."""
    _require_admin(caller)
    limit = context.settings.api_max_upload_bytes
    await limited_body(request, limit)
    form = await request.form(max_part_size=limit)
    manifest_part, model_part = form.get("manifest"), form.get("model")
    if not isinstance(manifest_part, UploadFile):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "multipart form needs two files: manifest (YAML) and model (ONNX)",
        )
    with tempfile.TemporaryDirectory(prefix="aigw-upload-") as folder:
        manifest_path = Path(folder) / "manifest.yaml"
        manifest_path.write_bytes(await manifest_part.read())
        shown = "manifest (uploaded)"  # the upload's name, never the server's folder
        try:
            manifest = load_manifest(manifest_path)
            shown = f"{manifest.key} (uploaded)"
            if not manifest.is_external:
                if not isinstance(model_part, UploadFile):
                    raise ManifestError("an ONNX device's upload needs its model (ONNX)")
                model_path = Path(folder) / manifest.onnx.file  # inside: the manifest checks
                model_path.parent.mkdir(parents=True, exist_ok=True)
                model_path.write_bytes(await model_part.read())
            device, new = context.registry.register(manifest_path)
        except (ManifestError, RegistryError) as exc:
            message = str(exc).replace(str(manifest_path), shown).replace(folder, "(upload)")
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message) from exc
    if new:
        audit_change(
            context,
            request,
            caller,
            AuditEvent.DEVICE_REGISTERED,
            detail=_registered_detail(device),
        )
    return Registered(device=_public(device, caller), new=new)


def _registered_detail(device: RegisteredDevice) -> dict[str, object]:
    detail: dict[str, object] = {"device": device.key, "runtime": device.manifest.runtime.value}
    if not device.manifest.is_external:
        detail["model_sha256"] = device.manifest.onnx.sha256
    return detail


def _require_admin(who: Principal) -> None:
    if who.role != Role.ADMIN:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin token can do this")
