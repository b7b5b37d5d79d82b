"""Dashboard sessions, kept in the index, and the CSRF tokens of the dashboard's forms.

The cookie is a random secret; the index keeps only its sha256, with the token it was
opened with, when it was opened and when it was last used. A session ends at logout, after
``session_idle_s`` without a request, ``session_max_age_s`` after login, or when its token
is revoked — whichever comes first; every end is an audit event. Kept in the index, a
session survives a restart of the gateway and is the same in every API process.

A form's CSRF token is an HMAC of a purpose under the secret of the cookie it travels with
(the session's, or before login a random login cookie): a page of another origin cannot
read the HttpOnly cookie, so it cannot make the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from gateway.access.audit import Actor, AuditEvent, add
from gateway.access.tokens import Principal, principal_by_id
from gateway.index.database import Database
from gateway.index.tables import ApiTokenRow, DashboardSessionRow, utcnow

SESSION_COOKIE = "aigw_session"
LOGIN_COOKIE = "aigw_login"  # before login: binds the login form's CSRF token
MAX_COOKIE_LENGTH = 100
# Last use is written at most this often (a fraction of the idle limit), so a page view
# does not always write; a session may end up to that much before session_idle_s.
LAST_SEEN_FRACTION = 20


class SessionEnd(StrEnum):
    LOGOUT = "logout"
    IDLE = "idle"
    EXPIRED = "expired"  # session_max_age_s after login
    REVOKED = "revoked"  # its token was revoked


class FormPurpose(StrEnum):
    LOGIN = "login"
    SESSION = "session"  # every form shown to a logged-in user (logout)


@dataclass(frozen=True)
class SessionPolicy:
    idle_s: int
    max_age_s: int


@dataclass(frozen=True)
class DashboardSession:
    id: int
    principal: Principal
    csrf: str  # the CSRF token of this session's forms


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(cookie_secret: str, purpose: FormPurpose) -> str:
    key = cookie_secret.encode("utf-8")
    return hmac.new(key, f"csrf:{purpose.value}".encode(), hashlib.sha256).hexdigest()


def csrf_valid(cookie_secret: str | None, purpose: FormPurpose, presented: str | None) -> bool:
    if not cookie_secret or not presented or len(cookie_secret) > MAX_COOKIE_LENGTH:
        return False
    return hmac.compare_digest(csrf_token(cookie_secret, purpose), presented)


def open_session(session: Session, who: Principal, client_ip: str | None, now: datetime) -> str:
    """A new session in the caller's transaction (the login's); returns the cookie secret."""
    secret = new_secret()
    session.add(
        DashboardSessionRow(
            secret_sha256=_hash(secret),
            token_id=who.token_id,
            client_ip=client_ip[:64] if client_ip else None,
            created_at=now,
            last_seen_at=now,
        )
    )
    return secret


def resume(
    db: Database,
    secret: str | None,
    policy: SessionPolicy,
    client_ip: str | None,
    action: str,
) -> DashboardSession | None:
    """The live session a cookie stands for; None (and the session ended, with the reason
    audited) when it is idle, too old or its token revoked."""
    if not secret or len(secret) > MAX_COOKIE_LENGTH:
        return None
    now = utcnow()
    with db.write_lock, db.session() as session:
        row = _live(session, secret)
        if row is None:
            return None
        who = principal_by_id(session, row.token_id)
        reason = _ended_by(row, who, policy, now)
        if reason is not None or who is None:
            _end(session, row, reason or SessionEnd.REVOKED, now, client_ip, action)
            return None
        if (now - row.last_seen_at).total_seconds() >= policy.idle_s / LAST_SEEN_FRACTION:
            row.last_seen_at = now
        return DashboardSession(row.id, who, csrf_token(secret, FormPurpose.SESSION))


def end_session(
    db: Database, secret: str | None, reason: SessionEnd, client_ip: str | None, action: str
) -> bool:
    """End the session a cookie stands for (logout); False when there was none."""
    if not secret or len(secret) > MAX_COOKIE_LENGTH:
        return False
    with db.write_lock, db.session() as session:
        row = _live(session, secret)
        if row is None:
            return False
        _end(session, row, reason, utcnow(), client_ip, action)
        return True


def prune_sessions(db: Database, ended_before: datetime) -> int:
    """Forget sessions that ended (or went idle) before ``ended_before``."""
    with db.write_lock, db.session() as session:
        result = session.execute(
            delete(DashboardSessionRow).where(
                or_(
                    DashboardSessionRow.ended_at < ended_before,
                    DashboardSessionRow.last_seen_at < ended_before,
                )
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)


def _live(session: Session, secret: str) -> DashboardSessionRow | None:
    return session.scalars(
        select(DashboardSessionRow).where(
            DashboardSessionRow.secret_sha256 == _hash(secret),
            DashboardSessionRow.ended_at.is_(None),
        )
    ).one_or_none()


def _ended_by(
    row: DashboardSessionRow, who: Principal | None, policy: SessionPolicy, now: datetime
) -> SessionEnd | None:
    if who is None:
        return SessionEnd.REVOKED
    if now - row.created_at >= timedelta(seconds=policy.max_age_s):
        return SessionEnd.EXPIRED
    if now - row.last_seen_at >= timedelta(seconds=policy.idle_s):
        return SessionEnd.IDLE
    return None


def _end(
    session: Session,
    row: DashboardSessionRow,
    reason: SessionEnd,
    now: datetime,
    client_ip: str | None,
    action: str,
) -> None:
    row.ended_at, row.end_reason = now, reason.value
    token = session.get(ApiTokenRow, row.token_id)
    actor = Actor(token.name, token.role, token.id) if token else Actor("?", "unknown")
    add(
        session,
        actor,
        AuditEvent.SESSION_ENDED,
        action,
        region=token.region_code if token else None,
        client_ip=client_ip,
        detail={"session": row.id, "reason": reason.value},
    )


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()
