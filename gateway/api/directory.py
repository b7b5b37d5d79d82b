"""``/api/v1/regions`` and ``/api/v1/sources``: who sends studies, and from where."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from gateway.access.http import Caller, Context
from gateway.api.errors import COMMON, responses
from gateway.index.tables import DeviceRegionRow, RegionRow, SourceRow

router = APIRouter(prefix="/api/v1", tags=["directory"], responses=responses(*COMMON))


class RegionPublic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    name: str
    devices: list[str]


class SourcePublic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    title: str
    ae_title: str
    frmo_oid: str | None
    region: str


@router.get("/regions")
def regions(context: Context, caller: Caller) -> list[RegionPublic]:
    """Regions with the devices enabled in each (a region-scoped token sees its own)."""
    with context.db.session() as session:
        rows = session.scalars(select(RegionRow).order_by(RegionRow.code)).all()
        enabled: dict[str, list[str]] = {}
        for device_id, code in session.execute(
            select(DeviceRegionRow.device_id, DeviceRegionRow.region_code)
        ):
            enabled.setdefault(code, []).append(device_id)
    return [
        RegionPublic(code=r.code, name=r.name, devices=sorted(enabled.get(r.code, [])))
        for r in rows
        if caller.sees_region(r.code)
    ]


@router.get("/sources")
def sources(context: Context, caller: Caller) -> list[SourcePublic]:
    with context.db.session() as session:
        query = select(SourceRow).order_by(SourceRow.name)
        if caller.region is not None:
            query = query.where(SourceRow.region_code == caller.region)
        return [
            SourcePublic(
                name=s.name,
                title=s.title,
                ae_title=s.ae_title,
                frmo_oid=s.frmo_oid,
                region=s.region_code,
            )
            for s in session.scalars(query)
        ]
