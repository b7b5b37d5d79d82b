"""``/api/v1/rules/test``: upload DICOM files, see which routing rules match and why."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from starlette.datastructures import UploadFile

from gateway.access.http import Caller, Context, limited_body
from gateway.api.errors import COMMON, responses
from gateway.api.params import NAME_PATTERN, REGION_PATTERN
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

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/rules", tags=["routing"], responses=responses(*COMMON))


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
                        "file": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "format": "binary"},
                        },
                        "region": {"type": "string", "pattern": REGION_PATTERN},
                        "source": {"type": "string", "pattern": NAME_PATTERN},
                    },
                }
            }
        },
    }
}


@router.post("/test", openapi_extra=TEST_SCHEMA, responses=responses(400, 413))
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
    region = caller.scoped_region(_field(form.get("region"), "region", REGION_PATTERN))
    source = _field(form.get("source"), "source", NAME_PATTERN)
    try:
        rules = load_rules(context.settings.routing_file)
    except ConfigError as exc:
        log.error("routing rules not loadable", extra={"error": str(exc)[:300]})
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the routing rules cannot be loaded now"
        ) from exc
    devices = _devices(context, region)
    with tempfile.TemporaryDirectory(prefix="aigw-rules-") as folder:
        paths = []
        for number, part in enumerate(files):
            path = Path(folder) / f"{number:04d}.dcm"
            path.write_bytes(await part.read())
            paths.append(path)
        datasets = []
        for part, path in zip(files, paths, strict=True):
            name = _shown_name(part, path)
            try:
                datasets.append(dcmread(path, stop_before_pixels=True))
            except InvalidDicomError as exc:
                raise _unreadable(name, str(exc).replace(str(path), name)) from exc
            except Exception as exc:  # pydicom raises what it meets in hostile bytes
                raise _unreadable(name, exc.__class__.__name__) from exc
        try:
            decision = route(facts_from_datasets(datasets, source, region), rules, devices)
            text = explain_files(paths, rules, devices, region=region, source=source)
        except RoutingError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc).replace(folder, "(upload)")
            ) from exc
    for part, path in zip(files, paths, strict=True):
        text = text.replace(str(path), _shown_name(part, path))
    return RulesTest(region=region, source=source, explanation=text, decision=decision)


def _devices(context: Context, region: str | None) -> list[DeviceManifest]:
    if region is not None:
        return context.registry.active_for_region(region)
    newest: dict[str, DeviceManifest] = {}
    for device in context.registry.devices():
        if device.enabled:
            newest[device.manifest.id] = device.manifest
    return list(newest.values())


def _field(value: object, name: str, pattern: str) -> str | None:
    """A text field of the form, absent or blank as None; anything else must match."""
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        return None
    if not re.fullmatch(pattern, text):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: must match {pattern}")
    return text


def _shown_name(part: UploadFile, path: Path) -> str:
    """The uploaded file's own name as the client gave it (printable, short), else ours."""
    given = "".join(c for c in (part.filename or "") if c.isprintable())[:128]
    return given or path.name


def _unreadable(name: str, why: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: not readable as DICOM ({why})"
    )
