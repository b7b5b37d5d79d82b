"""``/api/v1/results``: result objects (SR, SC, GSPS, SEG, SEMD) and their bytes."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request, Response, status

from gateway.access.audit import AuditEvent
from gateway.access.http import Caller, Context, audit_read, not_found
from gateway.api.errors import COMMON, responses
from gateway.api.params import IdPath
from gateway.errors import StorageError
from gateway.index.read_model import ResultItem, result_location

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/results", tags=["results"], responses=responses(*COMMON, 404))

MEDIA_TYPES = {"semd": "application/xml"}  # everything else is a DICOM object
SUFFIXES = {"semd": "xml"}


@router.get("/{result_id}")
def result(context: Context, caller: Caller, request: Request, result_id: IdPath) -> ResultItem:
    """What a result is and where it was delivered (a SEMD's JSON sidecar is in ``meta``)."""
    found = result_location(context.db, result_id, caller.region)
    if found is None:
        raise not_found(f"result {result_id}")
    audit_read(context, request, caller, study_uid=found.study_uid, region=found.region)
    return found.result


@router.get(
    "/{result_id}/content",
    response_class=Response,
    responses={
        200: {
            "description": "The stored object",
            "content": {
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                "application/xml": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **responses(409),
    },
)
def content(context: Context, caller: Caller, request: Request, result_id: IdPath) -> Response:
    """The result's bytes as stored: DICOM (SR, SC, GSPS, SEG) or the SEMD CDA document."""
    found = result_location(context.db, result_id, caller.region)
    if found is None:
        raise not_found(f"result {result_id}")
    if found.object_key is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"result {result_id} was withheld: {found.result.reason or 'no reason recorded'}",
        )
    audit_read(
        context,
        request,
        caller,
        study_uid=found.study_uid,
        region=found.region,
        detail={"result_id": result_id, "kind": found.result.kind},
        event=AuditEvent.RESULT_DOWNLOADED,
    )
    try:
        data = context.store.get(found.object_key)
    except StorageError as exc:
        log.warning("result not readable", extra={"result_id": result_id, "error": str(exc)})
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"result {result_id} cannot be read now"
        ) from exc
    kind = found.result.kind
    name = f"{kind}-{found.result.sop_instance_uid or result_id}.{SUFFIXES.get(kind, 'dcm')}"
    return Response(
        data,
        media_type=MEDIA_TYPES.get(kind, "application/dicom"),
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
