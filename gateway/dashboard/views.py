"""Dashboard routes. Each page checks the session, confines itself to the caller's region
(another region's page answers like an unknown one) and audits patient-level pages."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pydicom
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image

from gateway.access.http import ApiContext, audit_read, get_context, secure_cookies
from gateway.access.tokens import Principal, authenticate, principal_by_id
from gateway.dashboard.charts import bar_chart
from gateway.dashboard.stats import TARGET_DEVICES, Period, PeriodName, national, region_detail
from gateway.dashboard.waiting import waiting_studies
from gateway.errors import GatewayError
from gateway.index.read_model import result_location, study_detail
from gateway.index.tables import utcnow
from models.manifest import DeviceGroup

HERE = Path(__file__).parent
COOKIE = "aigw_session"
STATIC = {"style.css": "text/css"}
GROUP_TITLES = {
    DeviceGroup.IMAGE_ANALYSIS.value: "анализ изображений",
    DeviceGroup.EMK_DATA_ANALYSIS.value: "анализ данных ЭМК",
}
PERIOD_TITLES = {
    PeriodName.DAY: "сутки",
    PeriodName.WEEK: "неделя",
    PeriodName.MONTH: "месяц",
    PeriodName.YEAR: "год",
}

PeriodQuery = Annotated[PeriodName, Query()]


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.filters["duration"] = _duration
    env.filters["percent"] = _percent
    env.filters["when"] = _when
    env.globals.update(
        GROUP_TITLES=GROUP_TITLES, PERIOD_TITLES=PERIOD_TITLES, TARGET=TARGET_DEVICES
    )
    return templates


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} с"
    if seconds < 7200:
        return f"{seconds / 60:.1f} мин"
    return f"{seconds / 3600:.1f} ч"


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.0f} %"


def _when(at: datetime | None) -> str:
    return "—" if at is None else at.strftime("%d.%m.%Y %H:%M:%S UTC")


def _caller(context: ApiContext, request: Request) -> Principal | None:
    cookie = request.cookies.get(COOKIE)
    token_id = context.signer.verify(cookie) if cookie else None
    return principal_by_id(context.db, token_id) if token_id is not None else None


def _to_login() -> RedirectResponse:
    return RedirectResponse("/dashboard/login", status_code=303)


def dashboard_router() -> APIRouter:
    router = APIRouter(prefix="/dashboard", include_in_schema=False)
    templates = _templates()

    def page(request: Request, name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, values, status_code=status_code)

    def missing(request: Request, who: Principal | None, what: str) -> HTMLResponse:
        return page(request, "missing.html", 404, who=who, what=what)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response("no such asset", status_code=404, media_type="text/plain")
        return FileResponse(HERE / "static" / name, media_type=STATIC[name])

    @router.get("/login")
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html", who=None, error=None)

    @router.post("/login", response_model=None)
    def login(
        request: Request, token: Annotated[str, Form(max_length=200)]
    ) -> HTMLResponse | RedirectResponse:
        context = get_context(request)
        who = authenticate(context.db, token.strip())
        if who is None:
            return page(
                request, "login.html", 401, who=None, error="Неизвестный или отозванный токен"
            )
        response = RedirectResponse("/dashboard/", status_code=303)
        response.set_cookie(
            COOKIE,
            context.signer.sign(who.token_id),
            max_age=context.signer.max_age_s,
            httponly=True,
            samesite="strict",
            secure=secure_cookies(context.settings, request),
            path="/dashboard",
        )
        return response

    @router.post("/logout")
    def logout(request: Request) -> RedirectResponse:
        response = _to_login()
        response.delete_cookie(
            COOKIE,
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=secure_cookies(get_context(request).settings, request),
        )
        return response

    @router.get("/", response_model=None)
    def overview(
        request: Request, period: PeriodQuery = PeriodName.WEEK
    ) -> HTMLResponse | RedirectResponse:
        context = get_context(request)
        who = _caller(context, request)
        if who is None:
            return _to_login()
        chosen = Period.ending(period, utcnow())
        rows = national(context.db, chosen, who.region)
        waiting = waiting_studies(context.db, who.region)
        return page(request, "national.html", who=who, period=chosen, rows=rows, waiting=waiting)

    @router.get("/regions/{code}", response_model=None)
    def region(
        request: Request, code: str, period: PeriodQuery = PeriodName.WEEK
    ) -> HTMLResponse | RedirectResponse:
        context = get_context(request)
        who = _caller(context, request)
        if who is None:
            return _to_login()
        chosen = Period.ending(period, utcnow())
        detail = region_detail(context.db, code, chosen) if who.sees_region(code) else None
        if detail is None:
            return missing(request, who, f"регион {code}")
        chart = bar_chart(
            [(bar.start, bar.studies) for bar in detail.volume],
            chosen.bucket,
            "Проанализировано исследований",
        )
        return page(request, "region.html", who=who, period=chosen, detail=detail, chart=chart)

    @router.get("/studies/{study_uid}", response_model=None)
    def study(request: Request, study_uid: str) -> HTMLResponse | RedirectResponse:
        context = get_context(request)
        who = _caller(context, request)
        if who is None:
            return _to_login()
        detail = study_detail(context.db, study_uid, who.region)
        if detail is None:
            return missing(request, who, f"исследование {study_uid}")
        audit_read(context, request, who, study_uid=study_uid, region=detail.region)
        notices = {job.device: _notice(context, job.device) for job in detail.jobs}
        images = [r for r in detail.results if r.kind == "sc" and r.state == "stored"]
        return page(request, "study.html", who=who, study=detail, notices=notices, images=images)

    @router.get("/results/{result_id}/image.png", response_model=None)
    def flag_image(request: Request, result_id: int) -> Response:
        context = get_context(request)
        who = _caller(context, request)
        if who is None:
            return _to_login()
        found = result_location(context.db, result_id, who.region)
        if found is None or found.object_key is None or found.result.kind != "sc":
            return Response("no such image", status_code=404, media_type="text/plain")
        audit_read(context, request, who, study_uid=found.study_uid, region=found.region)
        try:
            png = _png(context.store.get(found.object_key))
        except (GatewayError, ValueError, AttributeError) as exc:
            return Response(f"image not readable: {exc}", status_code=503, media_type="text/plain")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    return router


def _notice(context: ApiContext, device_key: str) -> tuple[str, str] | None:
    """The device's provenance notice when it is not for clinical use."""
    try:
        provenance = context.registry.manifest(device_key).provenance
    except GatewayError:
        return None
    return None if provenance.clinical_use else (provenance.notice_ru, provenance.notice_en)


def _png(data: bytes) -> bytes:
    """A flag image (secondary capture) as PNG: first frame, scaled to 8 bits."""
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = np.asarray(ds.pixel_array)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.dtype != np.uint8:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) * (255.0 / max(high - low, 1.0))).astype(np.uint8)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = 255 - pixels
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()
