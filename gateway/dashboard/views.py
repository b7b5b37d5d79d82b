"""Dashboard routes. Each page checks the session, confines itself to the caller's region
(another region's page answers like an unknown one) and audits patient-level pages.

Sessions, their idle and absolute limits, the login lockout and the CSRF tokens are
:mod:`gateway.access`'s; this module only shows their outcome in Russian.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pydicom
from fastapi import APIRouter, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image
from sqlalchemy.exc import IntegrityError

from gateway.access import audit
from gateway.access.audit import AuditError, AuditEvent
from gateway.access.http import (
    MAX_ID,
    UID_PATTERN,
    ApiContext,
    action_of,
    client_ip,
    get_context,
    secure_cookies,
)
from gateway.access.login import LoginPolicy, attempt_login
from gateway.access.sessions import (
    LOGIN_COOKIE,
    MAX_COOKIE_LENGTH,
    SESSION_COOKIE,
    DashboardSession,
    FormPurpose,
    SessionEnd,
    SessionPolicy,
    csrf_token,
    csrf_valid,
    end_session,
    new_secret,
    resume,
)
from gateway.dashboard.charts import bar_chart
from gateway.dashboard.stats import TARGET_DEVICES, Period, PeriodName, national, region_detail
from gateway.dashboard.waiting import waiting_studies
from gateway.errors import GatewayError
from gateway.index.read_model import job_detail, result_location, study_detail
from gateway.index.tables import utcnow
from gateway.monitoring.drift import DriftParams
from gateway.monitoring.figures import device_figures
from gateway.monitoring.verdicts import (
    AssessmentCreate,
    AssessmentError,
    Recording,
    Verdict,
    VerdictSource,
    history,
    record_verdict,
)
from models.manifest import DeviceGroup

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = {"style.css": "text/css"}
LOGIN_COOKIE_MAX_AGE_S = 3600
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
VERDICT_TITLES = {
    Verdict.ACCEPT: "принять",
    Verdict.MODIFY: "изменить",
    Verdict.REJECT: "отклонить",
}
DRIFT_TITLES = {"no_baseline": "нет базы", "in_band": "в пределах", "drift": "дрейф"}
MESSAGES = {
    "bad_token": "Неизвестный или отозванный токен",
    "stale_form": "Форма устарела или отправлена не с этой страницы. Войдите ещё раз.",
    "unavailable": "Вход временно невозможен: база данных или журнал аудита недоступны.",
}

PeriodQuery = Annotated[PeriodName, Query()]
RegionCode = Annotated[str, PathParam(pattern=r"^\d{2}$")]
StudyUid = Annotated[str, PathParam(max_length=64, pattern=UID_PATTERN)]
ResultId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
CsrfField = Annotated[str, Form(max_length=128)]
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.filters["duration"] = _duration
    env.filters["percent"] = _percent
    env.filters["when"] = _when
    env.globals.update(
        GROUP_TITLES=GROUP_TITLES,
        PERIOD_TITLES=PERIOD_TITLES,
        TARGET=TARGET_DEVICES,
        VERDICT_TITLES=VERDICT_TITLES,
        DRIFT_TITLES=DRIFT_TITLES,
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


def _session(context: ApiContext, request: Request) -> DashboardSession | None:
    settings = context.settings
    return resume(
        context.db,
        request.cookies.get(SESSION_COOKIE),
        SessionPolicy(settings.session_idle_s, settings.session_max_age_s),
        client_ip(request),
        action_of(request),
    )


def _to_login() -> RedirectResponse:
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/dashboard")
    return response


def _audited(
    context: ApiContext,
    request: Request,
    session: DashboardSession,
    study_uid: str,
    region: str,
    event: AuditEvent = AuditEvent.READ,
) -> bool:
    """Record a patient-level page before it is shown; False when that is impossible."""
    try:
        audit.record(
            context.db,
            session.principal.actor,
            event,
            action_of(request),
            study_uid=study_uid,
            region=region,
            client_ip=client_ip(request),
        )
    except AuditError:
        log.error("page refused: audit log unavailable", extra={"action": action_of(request)})
        return False
    return True


def _secure(request: Request) -> bool:
    return secure_cookies(get_context(request).settings, request)


def dashboard_router() -> APIRouter:
    router = APIRouter(prefix="/dashboard", include_in_schema=False)
    templates = _templates()

    def page(
        request: Request,
        name: str,
        status_code: int = 200,
        session: DashboardSession | None = None,
        **values: Any,
    ) -> HTMLResponse:
        values.setdefault("who", session.principal if session else None)
        values.setdefault("csrf", session.csrf if session else None)
        return templates.TemplateResponse(request, name, values, status_code=status_code)

    def missing(request: Request, session: DashboardSession, what: str) -> HTMLResponse:
        return page(request, "missing.html", 404, session, what=what)

    def unavailable(request: Request, session: DashboardSession | None) -> HTMLResponse:
        return page(
            request,
            "error.html",
            503,
            session,
            title="Недоступно",
            message="Журнал аудита или база данных недоступны, поэтому данные не показаны. "
            "Повторите позже.",
        )

    def refused(
        request: Request, session: DashboardSession, message: str, status_code: int = 403
    ) -> HTMLResponse:
        return page(
            request,
            "error.html",
            status_code,
            session,
            title="Запрос отклонён",
            message=message,
        )

    def login_page(
        request: Request, status_code: int, error: str | None, until: datetime | None = None
    ) -> HTMLResponse:
        nonce = request.cookies.get(LOGIN_COOKIE)
        if status_code == 403 or not nonce or len(nonce) > MAX_COOKIE_LENGTH:
            nonce = new_secret()
        response = page(
            request,
            "login.html",
            status_code,
            error=error,
            until=until,
            csrf=csrf_token(nonce, FormPurpose.LOGIN),
        )
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=LOGIN_COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            path="/dashboard",
        )
        if until is not None:
            wait = max(1, int((until - utcnow()).total_seconds()) + 1)
            response.headers["Retry-After"] = str(wait)
        return response

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response("no such asset", status_code=404, media_type="text/plain")
        return FileResponse(HERE / "static" / name, media_type=STATIC[name])

    @router.get("/login")
    def login_form(request: Request) -> HTMLResponse:
        return login_page(request, 200, None)

    @router.post("/login", response_model=None)
    def login(
        request: Request, token: Annotated[str, Form(max_length=200)], csrf: CsrfField = ""
    ) -> HTMLResponse | RedirectResponse:
        context = get_context(request)
        if not csrf_valid(request.cookies.get(LOGIN_COOKIE), FormPurpose.LOGIN, csrf):
            return login_page(request, 403, MESSAGES["stale_form"])
        settings = context.settings
        try:
            outcome = attempt_login(
                context.db,
                token.strip(),
                client_ip(request),
                LoginPolicy(settings.login_max_failures, settings.login_lockout_s),
                action_of(request),
            )
        except (GatewayError, IntegrityError):
            log.error("login refused: database or audit log unavailable")
            return login_page(request, 503, MESSAGES["unavailable"])
        if outcome.locked_until is not None:
            return login_page(request, 429, None, until=outcome.locked_until)
        if outcome.session_secret is None:
            return login_page(request, 401, MESSAGES["bad_token"])
        response = RedirectResponse("/dashboard/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            outcome.session_secret,
            max_age=settings.session_max_age_s,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            path="/dashboard",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/dashboard")
        return response

    @router.post("/logout", response_model=None)
    def logout(request: Request, csrf: CsrfField = "") -> HTMLResponse | RedirectResponse:
        context = get_context(request)
        session = _session(context, request)
        if session is None:
            return _to_login()
        secret = request.cookies.get(SESSION_COOKIE)
        if not csrf_valid(secret, FormPurpose.SESSION, csrf):
            return page(
                request,
                "error.html",
                403,
                session,
                title="Запрос отклонён",
                message="Форма отправлена не с этой страницы (нет токена CSRF). "
                "Сеанс продолжается.",
            )
        end_session(context.db, secret, SessionEnd.LOGOUT, client_ip(request), action_of(request))
        return _to_login()

    @router.get("/", response_model=None)
    def overview(
        request: Request, period: PeriodQuery = PeriodName.WEEK
    ) -> HTMLResponse | RedirectResponse:
        context = get_context(request)
        session = _session(context, request)
        if session is None:
            return _to_login()
        chosen = Period.ending(period, utcnow())
        rows = national(context.db, chosen, session.principal.region)
        waiting = waiting_studies(context.db, session.principal.region)
        return page(
            request, "national.html", 200, session, period=chosen, rows=rows, waiting=waiting
        )

    @router.get("/regions/{code}", response_model=None)
    def region(
        request: Request, code: RegionCode, period: PeriodQuery = PeriodName.WEEK
    ) -> HTMLResponse | RedirectResponse:
        context = get_context(request)
        session = _session(context, request)
        if session is None:
            return _to_login()
        chosen = Period.ending(period, utcnow())
        visible = session.principal.sees_region(code)
        detail = region_detail(context.db, code, chosen) if visible else None
        if detail is None:
            return missing(request, session, f"регион {code}")
        chart = bar_chart(
            [(bar.start, bar.studies) for bar in detail.volume],
            chosen.bucket,
            "Проанализировано исследований",
        )
        return page(request, "region.html", 200, session, period=chosen, detail=detail, chart=chart)

    @router.get("/studies/{study_uid}", response_model=None)
    def study(request: Request, study_uid: StudyUid) -> HTMLResponse | RedirectResponse:
        context = get_context(request)
        session = _session(context, request)
        if session is None:
            return _to_login()
        detail = study_detail(context.db, study_uid, session.principal.region)
        if detail is None:
            return missing(request, session, f"исследование {study_uid}")
        if not _audited(context, request, session, study_uid, detail.region):
            return unavailable(request, session)
        notices = {job.device: _notice(context, job.device) for job in detail.jobs}
        images = [r for r in detail.results if r.kind == "sc" and r.state == "stored"]
        verdicts = {
            job.job_id: history(context.db, job.job_id, session.principal.region) or []
            for job in detail.jobs
        }
        return page(
            request,
            "study.html",
            200,
            session,
            study=detail,
            notices=notices,
            images=images,
            verdicts=verdicts,
        )

    @router.post("/jobs/{job_id}/assessment", response_model=None)
    def assess(
        request: Request,
        job_id: JobId,
        verdict: Annotated[Verdict, Form()],
        finding_id: Annotated[str, Form(max_length=20)] = "",
        comment: Annotated[str, Form(max_length=2000)] = "",
        csrf: CsrfField = "",
    ) -> HTMLResponse | RedirectResponse:
        """A radiologist's verdict from the study page (the form's CSRF token required)."""
        context = get_context(request)
        session = _session(context, request)
        if session is None:
            return _to_login()
        who = session.principal
        if not csrf_valid(request.cookies.get(SESSION_COOKIE), FormPurpose.SESSION, csrf):
            return refused(
                request, session, "Форма отправлена не с этой страницы (нет токена CSRF)."
            )
        if not who.can_assess:
            return refused(
                request, session, "Оценивать результаты ИИ может только врач-рентгенолог."
            )
        found = job_detail(context.db, job_id, who.region)
        if found is None:
            return missing(request, session, f"задание {job_id}")
        try:
            body = AssessmentCreate(
                verdict=verdict,
                finding_id=int(finding_id) if finding_id.strip() else None,
                comment=comment.strip() or None,
            )
            by = Recording(
                who.actor, VerdictSource.DASHBOARD, action_of(request), client_ip(request)
            )
            record_verdict(context.db, job_id, who.region, body, by)
        except (ValueError, AssessmentError) as exc:
            return refused(request, session, f"Оценка не записана: {exc}", 422)
        except GatewayError:
            return unavailable(request, session)
        study_uid = found[0].study_uid
        return RedirectResponse(f"/dashboard/studies/{study_uid}#job-{job_id}", status_code=303)

    @router.get("/monitoring", response_model=None)
    def monitoring(
        request: Request, period: PeriodQuery = PeriodName.MONTH
    ) -> HTMLResponse | RedirectResponse:
        """Each device version in each region: volume, positives, verdicts, failures, drift."""
        context = get_context(request)
        session = _session(context, request)
        if session is None:
            return _to_login()
        chosen = Period.ending(period, utcnow())
        rows = device_figures(
            context.db,
            chosen.since,
            chosen.until,
            session.principal.region,
            DriftParams.of(context.settings),
        )
        return page(request, "monitoring.html", 200, session, period=chosen, rows=rows)

    @router.get("/results/{result_id}/image.png", response_model=None)
    def flag_image(request: Request, result_id: ResultId) -> Response:
        context = get_context(request)
        session = _session(context, request)
        if session is None:
            return _to_login()
        found = result_location(context.db, result_id, session.principal.region)
        if found is None or found.object_key is None or found.result.kind != "sc":
            return Response("no such image", status_code=404, media_type="text/plain")
        event = AuditEvent.RESULT_DOWNLOADED
        if not _audited(context, request, session, found.study_uid, found.region, event):
            return Response("audit log unavailable", status_code=503, media_type="text/plain")
        try:
            png = _png(context.store.get(found.object_key))
        except (GatewayError, ValueError, AttributeError):
            log.warning("flag image not readable", extra={"result_id": result_id})
            return Response("image not readable", status_code=503, media_type="text/plain")
        return Response(png, media_type="image/png")

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
