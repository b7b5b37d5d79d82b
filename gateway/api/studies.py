"""``/api/v1/studies`` and ``/api/v1/jobs``: patient-level reads, each one audited."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.access.http import Caller, Context, UidQuery, audit_read, not_found
from gateway.api.errors import COMMON, responses
from gateway.api.params import (
    DateQuery,
    DeviceQuery,
    IdentifierQuery,
    IdPath,
    InstantQuery,
    Limit,
    ModalityQuery,
    NameQuery,
    Offset,
    RegionQuery,
    UidPath,
)
from gateway.index.read_model import (
    JobFilter,
    JobItem,
    StudyDetail,
    StudyFilter,
    StudyItem,
    job_detail,
    list_jobs,
    list_studies,
    study_detail,
)
from gateway.index.study_state import StudyState
from gateway.jobs.states import JobState

router = APIRouter(prefix="/api/v1", tags=["studies"], responses=responses(*COMMON))


@router.get("/studies")
def studies(
    context: Context,
    caller: Caller,
    request: Request,
    region: RegionQuery = None,
    source: NameQuery = None,
    state: StudyState | None = None,
    modality: ModalityQuery = None,
    study_type: IdentifierQuery = None,
    received_from: InstantQuery = None,  # naive times are ambiguous: 422
    received_to: InstantQuery = None,
    study_date_from: DateQuery = None,
    study_date_to: DateQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[StudyItem]:
    """Studies newest first. A region-scoped token always gets its own region only."""
    scoped = caller.scoped_region(region)
    if caller.region is not None and region not in (None, caller.region):
        return []  # another region's list is empty, not forbidden: it reveals nothing
    found = list_studies(
        context.db,
        StudyFilter(
            region=scoped,
            source=source,
            state=state,
            modality=modality,
            study_type=study_type,
            received_from=received_from,
            received_to=received_to,
            study_date_from=study_date_from,
            study_date_to=study_date_to,
            limit=limit,
            offset=offset,
        ),
    )
    audit_read(
        context,
        request,
        caller,
        study_uid=None,
        region=scoped,
        detail={"count": len(found), "study_uids": [s.study_uid for s in found]},
    )
    return found


@router.get("/studies/{study_uid}", responses=responses(404))
def study(context: Context, caller: Caller, request: Request, study_uid: UidPath) -> StudyDetail:
    """One study: patient fields, series, the whole timeline, jobs with findings, results."""
    found = study_detail(context.db, study_uid, caller.region)
    if found is None:
        raise not_found(f"study {study_uid}")
    audit_read(context, request, caller, study_uid=study_uid, region=found.region)
    return found


@router.get("/jobs", tags=["jobs"])
def jobs(
    context: Context,
    caller: Caller,
    request: Request,
    study_uid: UidQuery = None,
    state: JobState | None = None,
    device: DeviceQuery = None,
    study_type: IdentifierQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[JobItem]:
    """Jobs newest first, with per-stage timings and findings."""
    found = list_jobs(
        context.db,
        JobFilter(
            region=caller.region,
            study_uid=study_uid,
            state=state,
            device=device,
            study_type=study_type,
            limit=limit,
            offset=offset,
        ),
    )
    audit_read(
        context,
        request,
        caller,
        study_uid=study_uid,
        region=caller.region,
        detail={"count": len(found), "study_uids": sorted({j.study_uid for j in found})},
    )
    return found


@router.get("/jobs/{job_id}", tags=["jobs"], responses=responses(404))
def job(context: Context, caller: Caller, request: Request, job_id: IdPath) -> JobItem:
    found = job_detail(context.db, job_id, caller.region)
    if found is None:
        raise not_found(f"job {job_id}")
    item, region = found
    audit_read(context, request, caller, study_uid=item.study_uid, region=region)
    return item
