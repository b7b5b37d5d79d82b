"""``/api/v1/monitoring``: how each device version does in each region (studies, positive
rate, verdicts and agreement, failures, turnaround, drift), the monthly usage report for
Росздравнадзор (JSON and CSV), and the notices sent about the devices."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from gateway.access.http import Caller, Context
from gateway.access.tokens import Principal, Role
from gateway.api.errors import COMMON, responses
from gateway.api.params import DeviceQuery, InstantQuery, Limit, RegionQuery
from gateway.index.tables import utcnow
from gateway.monitoring.drift import DriftParams
from gateway.monitoring.exchange import to_csv
from gateway.monitoring.figures import DeviceFigures, device_figures
from gateway.monitoring.notices import NoticePublic, list_notices
from gateway.monitoring.report import MONTH_PATTERN, UsageReport, build_report

router = APIRouter(prefix="/api/v1/monitoring", tags=["monitoring"], responses=responses(*COMMON))

DEFAULT_SPAN = timedelta(days=30)
MonthQuery = Annotated[str, Query(pattern=MONTH_PATTERN, description="YYYY-MM (UTC)")]


@router.get("/devices")
def devices(
    context: Context,
    caller: Caller,
    region: RegionQuery = None,
    since: InstantQuery = None,
    until: InstantQuery = None,
) -> list[DeviceFigures]:
    """Per device version and region, over [since, until) (default: the last 30 days; an
    empty or reversed period has nothing in it). A region-scoped token gets its own region
    only."""
    if caller.region is not None and region not in (None, caller.region):
        return []
    until = until or utcnow()
    since = since or until - DEFAULT_SPAN
    if since >= until:
        return []
    return device_figures(
        context.db,
        since,
        until,
        caller.scoped_region(region),
        DriftParams.of(context.settings),
    )


@router.get("/reports", responses=responses(403))
def report(
    context: Context, caller: Caller, month: MonthQuery, device: DeviceQuery = None
) -> UsageReport:
    """The usage report of a month: one record per device version (``device``: one id, or
    ``ID@VERSION``). For tokens of every region (admin, service): it covers them all."""
    _require_national(caller)
    return build_report(context.db, month, device)


@router.get(
    "/reports.csv",
    response_class=Response,
    responses={
        200: {"description": "One row per device version", "content": {"text/csv": {}}},
        **responses(403),
    },
)
def report_csv(
    context: Context, caller: Caller, month: MonthQuery, device: DeviceQuery = None
) -> Response:
    """The same report as CSV (UTF-8, a header row, nested fields joined with ``;``)."""
    _require_national(caller)
    text = to_csv(build_report(context.db, month, device))
    return Response(
        text.encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="usage-{month}.csv"'},
    )


@router.get("/notices", responses=responses(403))
def notices(context: Context, caller: Caller, limit: Limit = 100) -> list[NoticePublic]:
    """Usage reports and malfunction notices queued for the monitoring destinations, newest
    first, with each delivery's state."""
    _require_national(caller)
    return list_notices(context.db, limit)


def _require_national(caller: Principal) -> None:
    if caller.region is not None or caller.role not in (Role.ADMIN, Role.SERVICE):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "the usage report covers every region: it needs an admin or service token",
        )
