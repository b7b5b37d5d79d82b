"""``/api/v1/jobs/{job_id}/assessment``: a radiologist's verdict on a job's result (IHE
AIRA) — give one, or read every verdict the job has had."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from gateway.access.http import Caller, Context, action_of, audit_read, client_ip, not_found
from gateway.api.errors import COMMON, responses
from gateway.api.params import IdPath
from gateway.index.read_model import job_detail
from gateway.monitoring.verdicts import (
    AssessmentCreate,
    AssessmentPublic,
    NotAssessable,
    Recording,
    UnknownFinding,
    UnknownJob,
    VerdictSource,
    history,
    record_verdict,
)

router = APIRouter(prefix="/api/v1/jobs", tags=["assessments"], responses=responses(*COMMON))


@router.post(
    "/{job_id}/assessment",
    status_code=status.HTTP_201_CREATED,
    responses=responses(400, 403, 404, 409),
)
def assess(
    context: Context, caller: Caller, request: Request, job_id: IdPath, body: AssessmentCreate
) -> AssessmentPublic:
    """Accept, modify or reject the job's result (``finding_id``: one of its findings). It
    becomes the current verdict there; the one it replaces stays in the history. Needs a
    radiologist's token of the study's region."""
    if not caller.can_assess:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"role {caller.role.value} cannot give verdicts"
        )
    by = Recording(caller.actor, VerdictSource.API, action_of(request), client_ip(request))
    try:
        return record_verdict(context.db, job_id, caller.region, body, by)
    except UnknownJob:
        raise not_found(f"job {job_id}") from None
    except NotAssessable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except UnknownFinding as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


@router.get("/{job_id}/assessment", responses=responses(404))
def assessments(
    context: Context, caller: Caller, request: Request, job_id: IdPath
) -> list[AssessmentPublic]:
    """Every verdict on the job, oldest first; the current ones have no ``superseded_at``."""
    found = job_detail(context.db, job_id, caller.region)
    verdicts = history(context.db, job_id, caller.region)
    if found is None or verdicts is None:
        raise not_found(f"job {job_id}")
    item, region = found
    audit_read(context, request, caller, study_uid=item.study_uid, region=region)
    return verdicts
