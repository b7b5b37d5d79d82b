"""``/api/v1/rules/test``: upload DICOM files, see which routing rules match and why."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from starlette.datastructures import UploadFile

from gateway.access.http import Caller, Context, limited_body
from gateway.errors import ConfigError
from gateway.routing import (
    RoutingDecision,
    RoutingError,
    explain_files,
    facts_from_datasets,
    load_rules,
    route,
)
from models.manifest import DeviceManifest

router = APIRouter(prefix="/api/v1/rules", tags=["routing"])


class RulesTest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    region: str | None
    source: str | None
    explanation: str  # the same text as ``aigw rules test``
    decision: RoutingDecision


TEST_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "region": {"type": "string"},
                        "source": {"type": "string"},
                    },
                }
            }
        },
    }
}


@router.post("/test", openapi_extra=TEST_SCHEMA)
async def rules_test(context: Context, caller: Caller, request: Request) -> RulesTest:
    """Routing explained for uploaded files of one study against the configured rules and
    the devices enabled in the region (a region-scoped token tests its own region)."""
    limit = context.settings.api_max_upload_bytes
    await limited_body(request, limit)
    form = await request.form(max_part_size=limit)
    files = [part for part in form.getlist("file") if isinstance(part, UploadFile)]
    if not files:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "upload at least one DICOM file as 'file'"
        )
    region = caller.scoped_region(_text(form.get("region")))
    source = _text(form.get("source"))
    try:
        rules = load_rules(context.settings.routing_file)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    devices = _devices(context, region)
    with tempfile.TemporaryDirectory(prefix="aigw-rules-") as folder:
        paths = []
        for number, part in enumerate(files):
            path = Path(folder) / f"{number:04d}.dcm"
            path.write_bytes(await part.read())
            paths.append(path)
        datasets = []
        for part, path in zip(files, paths, strict=True):
            try:
                datasets.append(dcmread(path, stop_before_pixels=True))
            except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"{part.filename or path.name}: not readable as DICOM ({exc})",
                ) from exc
        try:
            decision = route(facts_from_datasets(datasets, source, region), rules, devices)
        except RoutingError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        text = explain_files(paths, rules, devices, region=region, source=source)
    for part, path in zip(files, paths, strict=True):
        text = text.replace(str(path), part.filename or path.name)
    return RulesTest(region=region, source=source, explanation=text, decision=decision)


def _devices(context: Context, region: str | None) -> list[DeviceManifest]:
    if region is not None:
        return context.registry.active_for_region(region)
    newest: dict[str, DeviceManifest] = {}
    for device in context.registry.devices():
        if device.enabled:
            newest[device.manifest.id] = device.manifest
    return list(newest.values())


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None
