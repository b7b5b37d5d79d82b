"""``/api/v1/audit``: who read which patient's data, when, from where (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import AwareDatetime

from gateway.access import audit
from gateway.access.http import Caller, Context, UidQuery
from gateway.access.tokens import Role

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("")
def audit_log(
    context: Context,
    caller: Caller,
    study_uid: UidQuery = None,
    token_id: int | None = None,
    since: AwareDatetime | None = None,  # naive times are ambiguous: 422
    until: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[audit.AuditEntry]:
    """Newest first. A region admin sees accesses to its own region's data."""
    if caller.role not in (Role.ADMIN, Role.REGION_ADMIN):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the audit log is for admins")
    return audit.query(
        context.db,
        region=caller.region,
        study_uid=study_uid,
        token_id=token_id,
        since=since,
        until=until,
        limit=limit,
    )
