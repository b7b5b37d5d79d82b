"""``/api/v1/audit``: the audit trail — reads of patient data, logins, token and device
changes, configuration loaded — for admins (a region admin sees its region's events)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from gateway.access import audit
from gateway.access.audit import AuditEvent, AuditFilter
from gateway.access.http import Caller, Context, UidQuery
from gateway.access.tokens import Role
from gateway.api.errors import COMMON, responses
from gateway.api.params import IdQuery, InstantQuery

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], responses=responses(*COMMON))

MAX_AUDIT_LIMIT = 5000


@router.get("", responses=responses(403))
def audit_log(
    context: Context,
    caller: Caller,
    event: Annotated[list[AuditEvent] | None, Query(max_length=len(AuditEvent))] = None,
    study_uid: UidQuery = None,
    token_id: IdQuery = None,
    since: InstantQuery = None,  # naive times are ambiguous: 422
    until: InstantQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_LIMIT)] = 500,
) -> list[audit.AuditEntry]:
    """Newest first; ``event`` may repeat. A region admin sees its own region's events."""
    if caller.role not in (Role.ADMIN, Role.REGION_ADMIN):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the audit log is for admins")
    return audit.query(
        context.db,
        AuditFilter(
            events=event or [],
            region=caller.region,
            study_uid=study_uid,
            token_id=token_id,
            since=since,
            until=until,
            limit=limit,
        ),
    )
