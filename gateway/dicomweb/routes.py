"""The DICOMweb operations under ``/dicom-web`` and how the OpenAPI documents them: their
parameters, the media types they answer in, and the errors (in the API's one error schema,
whose ``responses=`` the API passes in: this package comes before it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import Response, StreamingResponse
from pydicom import Dataset

from gateway.access.http import (
    UID_PATTERN,
    ApiContext,
    Caller,
    Context,
    audit_read,
    not_found,
)
from gateway.access.tokens import Principal
from gateway.dicomweb import stow, wado
from gateway.dicomweb.catalog import (
    InstanceRecord,
    find_studies,
    study_instances,
    study_region,
)
from gateway.dicomweb.media import DICOM_JSON, DICOM_XML, encode_many
from gateway.dicomweb.qido import (
    BadQuery,
    Headers,
    instance_datasets,
    parse_query,
    series_datasets,
    study_dataset,
    study_match,
)
from gateway.dicomweb.qido import (
    Query as Qido,
)
from gateway.dicomweb.qido_root import MAX_STUDIES_SCANNED, search_root

ErrorDocs = Callable[..., dict[int | str, dict[str, Any]]]

Uid = Annotated[str, Path(max_length=64, pattern=UID_PATTERN)]
UidList = Annotated[str | None, Query(max_length=4096, pattern=r"^[0-9.,\\]*$")]
Text = Annotated[str | None, Query(max_length=64)]
Name = Annotated[str | None, Query(max_length=200)]
StudyDateQuery = Annotated[
    str | None, Query(max_length=17, pattern=r"^([0-9]{8})?(-([0-9]{8})?)?$")
]
Digits = Annotated[str | None, Query(max_length=9, pattern=r"^[0-9]+$")]
# Attribute names, comma-separated (PS3.18 10.6.1.2.3); the key may be repeated, and
# parse_query reads every value. Declared as one string: a query string cannot tell a
# one-item array from a string, and a contract run that thinks it can reports a false
# "schema-violating request accepted".
Names = Annotated[str | None, Query(max_length=4096)]

DATASETS = {
    "description": "Matches as the DICOM JSON Model (an empty array when nothing matches).",
    "content": {DICOM_JSON: {"schema": {"type": "array", "items": {"type": "object"}}}},
}
MULTIPART = {
    "description": 'The stored objects, unchanged: multipart/related; type="application/dicom".',
    "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}},
}
STORE_RESPONSE = {
    "content": {
        DICOM_JSON: {"schema": {"type": "object"}},
        DICOM_XML: {"schema": {"type": "string"}},
    }
}
NOT_ACCEPTABLE = "The Accept header asks for a media type or transfer syntax not served."


def dicomweb_router(errors: ErrorDocs) -> APIRouter:
    """Every DICOMweb route; ``errors(*codes)`` documents error answers."""
    router = APIRouter(prefix="/dicom-web", tags=["dicomweb"], responses=errors(401, 422, 503))
    _stow(router, errors)
    _qido(router, errors)
    _qido_root(router, errors)
    _wado(router, errors)
    return router


def _stow(router: APIRouter, errors: ErrorDocs) -> None:
    documented: dict[int | str, dict[str, Any]] = {
        200: {**STORE_RESPONSE, "description": "Every instance stored."},
        202: {**STORE_RESPONSE, "description": "Some stored; FailedSOPSequence says why not."},
        409: {**STORE_RESPONSE, "description": "None stored; FailedSOPSequence says why."},
        **errors(400, 403, 413),
        406: {**errors(403)[403], "description": NOT_ACCEPTABLE},
        415: {**errors(403)[403], "description": "Not multipart/related of application/dicom."},
    }
    body = {
        "requestBody": {
            "required": True,
            "content": {
                'multipart/related; type="application/dicom"': {
                    "schema": {"type": "string", "format": "binary"}
                }
            },
        }
    }

    @router.post(
        "/studies",
        response_class=Response,
        responses=documented,
        openapi_extra=body,
        summary="STOW-RS: store instances",
    )
    async def store_studies(context: Context, caller: Caller, request: Request) -> Response:
        """Store PS3.10 instances as from the token's source (same ingest as C-STORE)."""
        return await stow.store_instances(context, request, caller, None)

    @router.post(
        "/studies/{study}",
        response_class=Response,
        responses=documented,
        openapi_extra=body,
        summary="STOW-RS: store instances of one study",
    )
    async def store_study(
        context: Context, caller: Caller, request: Request, study: Uid
    ) -> Response:
        """As ``POST /studies``; an instance of another study fails with 0xA900."""
        return await stow.store_instances(context, request, caller, study)


def _qido(router: APIRouter, errors: ErrorDocs) -> None:
    get: dict[str, Any] = {"response_class": Response, "responses": {200: DATASETS, **errors(400)}}
    in_study: dict[str, Any] = {
        "response_class": Response,
        "responses": {200: DATASETS, **errors(400, 404)},
    }

    @router.get("/studies", summary="QIDO-RS: search for studies", **get)
    # The parameters carry the standard's names (PatientID, …); parse_query reads them from
    # the query string, so these declarations are what validates and documents them.
    def search_studies(
        context: Context,
        caller: Caller,
        request: Request,
        StudyInstanceUID: UidList = None,
        PatientID: Text = None,
        PatientName: Name = None,
        AccessionNumber: Text = None,
        StudyDate: StudyDateQuery = None,
        ModalitiesInStudy: Text = None,
        limit: Digits = None,
        offset: Digits = None,
        includefield: Names = None,
        fuzzymatching: Annotated[str | None, Query(max_length=5)] = None,
    ) -> Response:
        """Studies of the caller's region, oldest first."""
        query = _query(context, request, "studies")
        with context.db.session() as session:
            found = find_studies(session, study_match(query, caller.region))
        base = _base(request)
        audit_read(
            context,
            request,
            caller,
            study_uid=None,
            region=caller.region,
            detail={"count": len(found), "study_uids": [s.study_uid for s in found]},
        )
        return _answer([study_dataset(s, base) for s in found], query)

    @router.get("/studies/{study}/series", summary="QIDO-RS: a study's series", **in_study)
    def search_series(
        context: Context,
        caller: Caller,
        request: Request,
        study: Uid,
        SeriesInstanceUID: UidList = None,
        Modality: Text = None,
        limit: Digits = None,
        offset: Digits = None,
        includefield: Names = None,
    ) -> Response:
        """The study's series, its results' series among them."""
        query = _query(context, request, "series")
        records, region = _records(context, caller, study, None, Headers(context.store))
        audit_read(context, request, caller, study_uid=study, region=region)
        return _answer(series_datasets(records, query, _base(request)), query)

    @router.get("/studies/{study}/instances", summary="QIDO-RS: a study's instances", **in_study)
    def search_study_instances(
        context: Context,
        caller: Caller,
        request: Request,
        study: Uid,
        SeriesInstanceUID: UidList = None,
        SOPInstanceUID: UidList = None,
        SOPClassUID: UidList = None,
        limit: Digits = None,
        offset: Digits = None,
        includefield: Names = None,
    ) -> Response:
        """The study's instances, results among them."""
        return _instances(context, caller, request, study, None)

    @router.get(
        "/studies/{study}/series/{series}/instances",
        summary="QIDO-RS: a series' instances",
        **in_study,
    )
    def search_series_instances(
        context: Context,
        caller: Caller,
        request: Request,
        study: Uid,
        series: Uid,
        SOPInstanceUID: UidList = None,
        SOPClassUID: UidList = None,
        limit: Digits = None,
        offset: Digits = None,
        includefield: Names = None,
    ) -> Response:
        """The series' instances."""
        return _instances(context, caller, request, study, series)


def _qido_root(router: APIRouter, errors: ErrorDocs) -> None:
    get: dict[str, Any] = {"response_class": Response, "responses": {200: DATASETS, **errors(400)}}

    @router.get("/series", summary="QIDO-RS: search for series in every study", **get)
    def search_all_series(
        context: Context,
        caller: Caller,
        request: Request,
        StudyInstanceUID: UidList = None,
        PatientID: Text = None,
        PatientName: Name = None,
        AccessionNumber: Text = None,
        StudyDate: StudyDateQuery = None,
        ModalitiesInStudy: Text = None,
        SeriesInstanceUID: UidList = None,
        Modality: Text = None,
        limit: Digits = None,
        offset: Digits = None,
        includefield: Names = None,
        fuzzymatching: Annotated[str | None, Query(max_length=5)] = None,
    ) -> Response:
        """Series of the caller's region's studies, each with its study's attributes."""
        return _root(context, caller, request, "series")

    @router.get("/instances", summary="QIDO-RS: search for instances in every study", **get)
    def search_all_instances(
        context: Context,
        caller: Caller,
        request: Request,
        StudyInstanceUID: UidList = None,
        PatientID: Text = None,
        PatientName: Name = None,
        AccessionNumber: Text = None,
        StudyDate: StudyDateQuery = None,
        ModalitiesInStudy: Text = None,
        SeriesInstanceUID: UidList = None,
        Modality: Text = None,
        SOPInstanceUID: UidList = None,
        SOPClassUID: UidList = None,
        limit: Digits = None,
        offset: Digits = None,
        includefield: Names = None,
        fuzzymatching: Annotated[str | None, Query(max_length=5)] = None,
    ) -> Response:
        """Instances of the caller's region's studies, results among them."""
        return _root(context, caller, request, "instances")


def _root(
    context: ApiContext, caller: Principal, request: Request, level: Literal["series", "instances"]
) -> Response:
    query = _query(context, request, f"all_{level}")
    answer = search_root(context.db, context.store, query, caller.region, level, _base(request))
    audit_read(
        context,
        request,
        caller,
        study_uid=None,
        region=caller.region,
        detail={"count": len(answer.datasets), "study_uids": answer.study_uids},
    )
    more = f'299 aigw "only the first {MAX_STUDIES_SCANNED} studies searched"'
    return _answer(answer.datasets, query, more if answer.truncated else None)


def _wado(router: APIRouter, errors: ErrorDocs) -> None:
    not_acceptable = {406: {**errors(404)[404], "description": NOT_ACCEPTABLE}}
    objects: dict[str, Any] = {
        "response_class": StreamingResponse,
        "responses": {200: MULTIPART, **errors(404), **not_acceptable},
    }
    metadata: dict[str, Any] = {
        "response_class": StreamingResponse,
        "responses": {200: DATASETS, **errors(404), **not_acceptable},
    }

    @router.get("/studies/{study}", summary="WADO-RS: a study's objects", **objects)
    def retrieve_study(
        context: Context, caller: Caller, request: Request, study: Uid
    ) -> StreamingResponse:
        return wado.retrieve(context, request, caller, study)

    @router.get("/studies/{study}/series/{series}", summary="WADO-RS: a series", **objects)
    def retrieve_series(
        context: Context, caller: Caller, request: Request, study: Uid, series: Uid
    ) -> StreamingResponse:
        return wado.retrieve(context, request, caller, study, series)

    @router.get(
        "/studies/{study}/series/{series}/instances/{instance}",
        summary="WADO-RS: an instance",
        **objects,
    )
    def retrieve_instance(
        context: Context, caller: Caller, request: Request, study: Uid, series: Uid, instance: Uid
    ) -> StreamingResponse:
        return wado.retrieve(context, request, caller, study, series, instance)

    @router.get("/studies/{study}/metadata", summary="WADO-RS: a study's metadata", **metadata)
    def study_metadata(
        context: Context, caller: Caller, request: Request, study: Uid
    ) -> StreamingResponse:
        return wado.metadata(context, request, caller, study)

    @router.get(
        "/studies/{study}/series/{series}/metadata",
        summary="WADO-RS: a series' metadata",
        **metadata,
    )
    def series_metadata(
        context: Context, caller: Caller, request: Request, study: Uid, series: Uid
    ) -> StreamingResponse:
        return wado.metadata(context, request, caller, study, series)

    @router.get(
        "/studies/{study}/series/{series}/instances/{instance}/metadata",
        summary="WADO-RS: an instance's metadata",
        **metadata,
    )
    def instance_metadata(
        context: Context, caller: Caller, request: Request, study: Uid, series: Uid, instance: Uid
    ) -> StreamingResponse:
        return wado.metadata(context, request, caller, study, series, instance)


def _query(context: ApiContext, request: Request, level: str) -> Qido:
    params = {key: request.query_params.getlist(key) for key in request.query_params}
    try:
        return parse_query(params, level, context.settings.qido_max_results)
    except BadQuery as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


def _records(
    context: ApiContext, caller: Principal, study: str, series: str | None, headers: Headers
) -> tuple[list[InstanceRecord], str]:
    with context.db.session() as session:
        region = study_region(session, study)
        if region is None or not caller.sees_region(region):
            raise not_found(f"study {study}")
        records = study_instances(session, study, series)
    return headers.complete_all(records), region


def _instances(
    context: ApiContext, caller: Principal, request: Request, study: str, series: str | None
) -> Response:
    query = _query(context, request, "instances")
    headers = Headers(context.store)  # the results' headers read once for both steps
    records, region = _records(context, caller, study, series, headers)
    found = instance_datasets(records, query, _base(request), headers)
    audit_read(context, request, caller, study_uid=study, region=region)
    return _answer(found, query)


def _answer(datasets: list[Dataset], query: Qido, more: str | None = None) -> Response:
    warning = ", ".join(w for w in (query.warning(), more) if w)
    return Response(
        encode_many(datasets),
        media_type=DICOM_JSON,
        headers={"Warning": warning} if warning else None,
    )


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")
