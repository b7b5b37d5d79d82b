"""STOW-RS (PS3.18 10.5): ``POST /dicom-web/studies[/{study}]``.

Each part of the multipart/related body is spooled to disk as it arrives and then goes
through the same durable ingest as a C-STORE (:meth:`Ingest.receive_file`): the same
parsing and validation, the object written and the index row committed before the instance
counts as stored. The sender is the source its token is bound to (``aigw tokens create
--source``), checked like a DICOM peer: the source must still be configured and admit the
client's address. What the gateway checks on top, before anything is stored: the SOP class
is one the SCP accepts, and the study is the URL's (when the URL names one). A token bound
to a ``kind: device`` source is an external device returning results: its parts go to the
external receive path (:class:`~gateway.ingest.scp.DeviceResults`) exactly as its C-STOREs
would, never into ingest.

The answer is the Store Instances Response (PS3.18 10.5.3): 200 when every instance was
stored, 202 when some failed, 409 when all failed, each failure with its reason code.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request, status
from fastapi.responses import Response
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from gateway.access import audit
from gateway.access.audit import AuditError, AuditEvent
from gateway.access.http import ApiContext, action_of, client_ip
from gateway.access.tokens import Principal
from gateway.dicomweb.media import DICOM, NotAcceptable, choose_dataset_type, encode_one
from gateway.dicomweb.multipart import (
    BadMultipart,
    BodyTooLarge,
    Part,
    parse_media_type,
    spool_parts,
)
from gateway.dimse_status import Status
from gateway.errors import GatewayError, InvalidInstance
from gateway.index.tables import SourceRow
from gateway.ingest.receive import Ingest, Outcome, Sender
from gateway.ingest.scp import storage_sop_classes
from gateway.ingest.sources import SourceDirectory, SourceKind, load_directory
from gateway.ingest.tags import InstanceTags

log = logging.getLogger(__name__)

_SOP_TAGS = ["SOPClassUID", "SOPInstanceUID"]
# What the instance rows of STOW-RS arrivals say in place of a calling AE title.
STOW_SENDER = "STOW-RS"


@dataclass
class PartResult:
    """One part's outcome with the UIDs it was found to carry (none when unreadable)."""

    status: Status
    reason: str
    tags: InstanceTags | None = None
    sop: tuple[str, str] | None = None  # (class, instance) of a device's result


async def store_instances(
    context: ApiContext, request: Request, caller: Principal, study_uid: str | None
) -> Response:
    """The whole transaction: checks, spooling, ingest per part, the response."""
    sender = await run_in_threadpool(_sender, context, request, caller)
    try:
        answer_type = choose_dataset_type(request.headers.get("accept"), xml=True)
    except NotAcceptable as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, str(exc)) from exc
    boundary = _boundary(request.headers.get("content-type", ""))
    _check_declared_length(request, context.settings.stow_max_bytes)
    with tempfile.TemporaryDirectory(prefix="aigw-stow-") as folder:
        try:
            parts = await spool_parts(
                request.stream(),
                boundary,
                Path(folder),
                max_body=context.settings.stow_max_bytes,
                max_part=context.settings.max_instance_bytes,
            )
        except BodyTooLarge as exc:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
        except BadMultipart as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        if not parts:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "the body holds no parts")
        results = await run_in_threadpool(_ingest_all, context, sender, parts, study_uid)
    await run_in_threadpool(_audit, context, request, caller, results)
    stored = sum(1 for r in results if r.status.is_success)
    code = 200 if stored == len(results) else 202 if stored else 409
    body = _response(results, str(request.base_url).rstrip("/"), study_uid)
    return Response(encode_one(body, answer_type), status_code=code, media_type=answer_type)


def _sender(context: ApiContext, request: Request, caller: Principal) -> Sender:
    if caller.source is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "this token is not bound to a source, so it cannot store: "
            "aigw tokens create --source NAME",
        )
    source = _directory(context, request).by_name(caller.source)
    with context.db.session() as session:
        source_id = session.scalars(
            select(SourceRow.id).where(SourceRow.name == caller.source)
        ).one_or_none()
    if source is None or source_id is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"the token's source {caller.source} is not configured"
        )
    address = client_ip(request) or ""
    if not source.admits(address):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"source {source.name} does not admit this client's address",
        )
    return Sender(source=source, source_id=source_id, calling_ae=STOW_SENDER, address=address)


def _directory(context: ApiContext, request: Request) -> SourceDirectory:
    """The configured sources, read once per app (the SCP reads the same files)."""
    state = request.app.state
    directory: SourceDirectory | None = getattr(state, "dicomweb_sources", None)
    if directory is None:
        settings = context.settings
        try:
            directory = load_directory(
                settings.sources_file, settings.regions_file, settings.open_mode
            )
        except GatewayError as exc:
            log.error("sources unreadable for STOW-RS", extra={"error": str(exc)[:300]})
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "the sources configuration cannot be read"
            ) from exc
        state.dicomweb_sources = directory
    return directory


def _boundary(content_type: str) -> str:
    media = parse_media_type(content_type)
    if media.value != "multipart/related":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f'STOW-RS takes multipart/related; type="{DICOM}", not {media.value or "nothing"}',
        )
    kind = media.params.get("type", DICOM).strip().lower()
    if kind != DICOM:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"parts of type {kind} are not taken: only {DICOM} (PS3.10 files)",
        )
    boundary = media.params.get("boundary", "")
    if not boundary:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the Content-Type has no boundary")
    return boundary


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit() or len(declared) > 20:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "bad Content-Length")
    if int(declared) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"body of {declared} bytes is over the limit of {limit} bytes (stow_max_bytes)",
        )


def _ingest_all(
    context: ApiContext, sender: Sender, parts: list[Part], study_uid: str | None
) -> list[PartResult]:
    if sender.source.kind == SourceKind.DEVICE:
        return [_device_result(context, sender, part) for part in parts]
    ingest = Ingest(context.db, context.store)
    allowed = frozenset(storage_sop_classes(context.settings))
    return [_ingest_one(ingest, sender, part, allowed, study_uid) for part in parts]


def _ingest_one(
    ingest: Ingest,
    sender: Sender,
    part: Part,
    allowed: frozenset[str],
    study_uid: str | None,
) -> PartResult:
    if part.media_type.value != DICOM:
        return PartResult(Status.CANNOT_UNDERSTAND, f"a part of type {part.media_type.value}")
    if part.path is None:
        return PartResult(Status.OUT_OF_RESOURCES, f"a part of {part.size} bytes or more")
    seen: list[InstanceTags] = []

    def admit(tags: InstanceTags) -> None:
        seen.append(tags)
        if tags.sop_class_uid not in allowed:
            raise InvalidInstance(
                f"SOP class {tags.sop_class_uid} is not accepted", Status.SOP_CLASS_NOT_SUPPORTED
            )
        if study_uid is not None and tags.study.study_uid != study_uid:
            raise InvalidInstance(
                "the instance belongs to another study than the URL's",
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )

    outcome: Outcome = ingest.receive_file(part.path, sender, admit=admit)
    return PartResult(outcome.status, outcome.reason, seen[0] if seen else None)


def _device_result(context: ApiContext, sender: Sender, part: Part) -> PartResult:
    """An external device's result, to the external receive path."""
    if part.media_type.value != DICOM or part.path is None:
        return PartResult(Status.CANNOT_UNDERSTAND, "not a DICOM part within the limits")
    try:  # the dataset's own, as a C-STORE request would name them
        header = dcmread(part.path, stop_before_pixels=True, specific_tags=_SOP_TAGS)
        sop = (str(header.SOPClassUID), str(header.SOPInstanceUID))
    except (InvalidDicomError, OSError, AttributeError, ValueError, EOFError):
        return PartResult(Status.CANNOT_UNDERSTAND, "not a DICOM object with its SOP UIDs")
    if context.device_results is None:
        return PartResult(Status.CANNOT_UNDERSTAND, "no external device receives here", sop=sop)
    answer = context.device_results.receive_file(part.path, sender.source.ae_title, *sop)
    return PartResult(answer.status, answer.reason, sop=sop)


def _audit(
    context: ApiContext, request: Request, caller: Principal, results: list[PartResult]
) -> None:
    """The instances stored are in the index already; the audit row says who sent them.
    Should it fail, the stores stand (they were acknowledged by the index) and the log
    says what the audit log misses."""
    studies = sorted({r.tags.study.study_uid for r in results if r.tags and r.status.is_success})
    detail: dict[str, object] = {
        "source": caller.source,
        "stored": sum(1 for r in results if r.status.is_success),
        "failed": sum(1 for r in results if not r.status.is_success),
        "study_uids": studies,
    }
    try:
        audit.record(
            context.db,
            caller.actor,
            AuditEvent.INSTANCES_STORED,
            action_of(request),
            study_uid=studies[0] if len(studies) == 1 else None,
            client_ip=client_ip(request),
            detail=detail,
        )
    except AuditError:
        log.error("STOW-RS stored instances but could not audit it", extra={"detail": detail})


def _response(results: list[PartResult], base: str, study_uid: str | None) -> Dataset:
    """The Store Instances Response (PS3.18 Table 10.5.3-1)."""
    body = Dataset()
    stored_studies = {r.tags.study.study_uid for r in results if r.tags and r.status.is_success}
    if study_uid is None and len(stored_studies) == 1:
        study_uid = next(iter(stored_studies))
    if study_uid is not None:
        body.RetrieveURL = f"{base}/dicom-web/studies/{study_uid}"
    referenced, failed = [], []
    for result in results:
        item = Dataset()
        sop = (result.tags.sop_class_uid, result.tags.sop_instance_uid) if result.tags else None
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop or result.sop or ("", "")
        if result.status.is_success and result.tags is None and result.sop is not None:
            referenced.append(item)  # a device's result: kept under the original study
        elif result.status.is_success and result.tags is not None:
            tags = result.tags
            item.RetrieveURL = (
                f"{base}/dicom-web/studies/{tags.study.study_uid}/series/{tags.series_uid}"
                f"/instances/{tags.sop_instance_uid}"
            )
            referenced.append(item)
        else:
            item.FailureReason = int(result.status)
            failed.append(item)
    if referenced:
        body.ReferencedSOPSequence = referenced
    if failed:
        body.FailedSOPSequence = failed
    return body
