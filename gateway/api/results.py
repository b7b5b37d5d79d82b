"""``/api/v1/results``: result objects (SR, SC, GSPS, SEG, SEMD) and their bytes."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status

from gateway.access.http import Caller, Context, audit_read, not_found
from gateway.errors import StorageError
from gateway.index.read_model import ResultItem, result_location

router = APIRouter(prefix="/api/v1/results", tags=["results"])

MEDIA_TYPES = {"semd": "application/xml"}  # everything else is a DICOM object
SUFFIXES = {"semd": "xml"}


@router.get("/{result_id}")
def result(context: Context, caller: Caller, request: Request, result_id: int) -> ResultItem:
    """What a result is and where it was delivered (a SEMD's JSON sidecar is in ``meta``)."""
    found = result_location(context.db, result_id, caller.region)
    if found is None:
        raise not_found(f"result {result_id}")
    audit_read(context, request, caller, study_uid=found.study_uid, region=found.region)
    return found.result


@router.get(
    "/{result_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/dicom": {}, "application/xml": {}}}},
)
def content(context: Context, caller: Caller, request: Request, result_id: int) -> Response:
    """The result's bytes as stored: DICOM (SR, SC, GSPS, SEG) or the SEMD CDA document."""
    found = result_location(context.db, result_id, caller.region)
    if found is None:
        raise not_found(f"result {result_id}")
    if found.object_key is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"result {result_id} was withheld: {found.result.reason or 'no reason recorded'}",
        )
    audit_read(context, request, caller, study_uid=found.study_uid, region=found.region)
    try:
        data = context.store.get(found.object_key)
    except StorageError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    kind = found.result.kind
    name = f"{kind}-{found.result.sop_instance_uid or result_id}.{SUFFIXES.get(kind, 'dcm')}"
    return Response(
        data,
        media_type=MEDIA_TYPES.get(kind, "application/dicom"),
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
