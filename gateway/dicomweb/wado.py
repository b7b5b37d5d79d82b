"""WADO-RS (PS3.18 10.4): a study, a series or an instance as ``multipart/related;
type="application/dicom"`` — the stored bytes, unchanged (transfer-syntax ``*``: the
gateway never transcodes, so a request for a particular other syntax is 406) — and their
metadata as the DICOM JSON Model, without bulk data (the Pixel Data is left out; other
large binary values are inline).

Originals and the gateway's own results alike; a study outside the caller's region is
answered exactly like an unknown one (404). Each answer is audited before its first byte
leaves, and generated object by object: an instance is read from the store when its part
is sent, and passed on a chunk at a time; from S3 the next few are fetched together
(:mod:`gateway.index.read_ahead`), within a budget of bytes per answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from fastapi import HTTPException, Request, status
from fastapi.responses import StreamingResponse

from gateway.access.http import ApiContext, audit_read, not_found
from gateway.access.tokens import Principal
from gateway.dicomweb.catalog import InstanceRecord, study_instances, study_region
from gateway.dicomweb.media import (
    DICOM,
    DICOM_JSON,
    NotAcceptable,
    check_multipart_dicom,
    choose_dataset_type,
)
from gateway.dicomweb.multipart import multipart_body, new_boundary
from gateway.dicomweb.qido import Headers
from gateway.index.object_store import ObjectStore
from gateway.index.read_ahead import ReadAhead, Wanted
from gateway.index.stored_headers import read_headers

log = logging.getLogger(__name__)

# Binary values up to this size are inline in metadata (base64); larger ones left out.
INLINE_BINARY_BYTES = 64 * 1024


def _found(
    context: ApiContext,
    caller: Principal,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
) -> tuple[list[InstanceRecord], str]:
    """The objects asked for and the study's region; 404 when none (or another region's)."""
    with context.db.session() as session:
        region = study_region(session, study_uid)
        if region is None or not caller.sees_region(region):
            raise not_found(f"study {study_uid}")
        records = study_instances(session, study_uid, series_uid, sop_uid)
    if not records:
        what = (
            f"instance {sop_uid}"
            if sop_uid
            else f"series {series_uid}"
            if series_uid
            else f"instances in study {study_uid}"
        )
        raise not_found(what)
    return records, region


def retrieve(
    context: ApiContext,
    request: Request,
    caller: Principal,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> StreamingResponse:
    records, region = _found(context, caller, study_uid, series_uid, sop_uid)
    headers = Headers(context.store)
    records = headers.complete_all(records)
    try:
        check_multipart_dicom(
            request.headers.get("accept"), {r.transfer_syntax_uid or "" for r in records}
        )
    except NotAcceptable as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, str(exc)) from exc
    audit_read(
        context,
        request,
        caller,
        study_uid=study_uid,
        region=region,
        detail={"objects": len(records), "series_uid": series_uid, "sop_instance_uid": sop_uid},
    )
    boundary = new_boundary()
    wanted = [Wanted(r.object_key, r.size_bytes) for r in records]
    return StreamingResponse(
        multipart_body(boundary, DICOM, ReadAhead(context.store, wanted)),
        media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}',
    )


def metadata(
    context: ApiContext,
    request: Request,
    caller: Principal,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> StreamingResponse:
    try:
        choose_dataset_type(request.headers.get("accept"), xml=False)
    except NotAcceptable as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, str(exc)) from exc
    records, region = _found(context, caller, study_uid, series_uid, sop_uid)
    audit_read(
        context,
        request,
        caller,
        study_uid=study_uid,
        region=region,
        detail={
            "objects": len(records),
            "series_uid": series_uid,
            "sop_instance_uid": sop_uid,
            "metadata": True,
        },
    )
    return StreamingResponse(_json_array(context.store, records), media_type=DICOM_JSON)


def _json_array(store: ObjectStore, records: list[InstanceRecord]) -> Iterator[bytes]:
    yield b"["
    written = 0
    for key, header in read_headers(store, [record.object_key for record in records]):
        if isinstance(header, Exception):
            # Stored objects were parsed when they came in; one that no longer parses is
            # left out here (and logged), not allowed to end the answer half-way.
            log.error(
                "stored object unreadable for metadata",
                extra={"object_key": key, "error": str(header)[:200]},
            )
            continue
        for element in list(header):
            if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
                value = element.value
                if isinstance(value, bytes | bytearray) and len(value) > INLINE_BINARY_BYTES:
                    del header[element.tag]
        yield (b"," if written else b"") + json.dumps(header.to_json_dict()).encode("utf-8")
        written += 1
    yield b"]"
