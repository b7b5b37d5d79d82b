"""Who may do what: API tokens (kept as sha256 only), roles, region scoping, and the signed
session cookie the dashboard uses for the same tokens.

A region-scoped token sees its region as the whole world: lookups outside it answer exactly
like an unknown id, so such a token never learns that another region's study exists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from gateway.errors import GatewayError
from gateway.index.database import Database
from gateway.index.tables import ApiTokenRow, RegionRow, utcnow

TOKEN_PREFIX = "aigw_"
LAST_USED_RESOLUTION_S = 60


class Role(StrEnum):
    ADMIN = "admin"  # everything, every region
    REGION_ADMIN = "region_admin"  # read and change, own region only
    VIEWER = "viewer"  # read only, own region only
    SERVICE = "service"  # machine to machine: read, retry deliveries, test rules


# Roles that must name a region, and roles that may not.
REGION_REQUIRED = frozenset({Role.REGION_ADMIN, Role.VIEWER})
REGION_FORBIDDEN = frozenset({Role.ADMIN})


class AccessError(GatewayError):
    """A token could not be created or found; the message says why."""


@dataclass(frozen=True)
class Principal:
    """The caller, as every endpoint sees it after authentication."""

    token_id: int
    name: str
    role: Role
    region: str | None  # None: every region

    def sees_region(self, region: str | None) -> bool:
        return self.region is None or region == self.region

    @property
    def can_change(self) -> bool:
        """Changes inside the caller's scope (enable a device in its region, retry now)."""
        return self.role in (Role.ADMIN, Role.REGION_ADMIN)

    @property
    def can_operate(self) -> bool:
        """Operational actions a machine client also needs (retry a delivery)."""
        return self.role in (Role.ADMIN, Role.REGION_ADMIN, Role.SERVICE)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def scoped_region(self, requested: str | None) -> str | None:
        """The region a list is filtered to: the caller's own wins over any request."""
        return self.region if self.region is not None else requested


class TokenPublic(BaseModel):
    """A token as listed: never its secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    name: str
    role: Role
    region: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _public(row: ApiTokenRow) -> TokenPublic:
    return TokenPublic(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        region=row.region_code,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def create_token(
    db: Database, role: Role | str, region: str | None = None, name: str | None = None
) -> tuple[TokenPublic, str]:
    """A new token and its secret. The secret is returned once and stored only hashed."""
    try:
        role = Role(role)
    except ValueError as exc:
        choices = ", ".join(r.value for r in Role)
        raise AccessError(f"unknown role {role!r}; choose one of {choices}") from exc
    if role in REGION_REQUIRED and region is None:
        raise AccessError(f"role {role.value} needs a region (--region NN)")
    if role in REGION_FORBIDDEN and region is not None:
        raise AccessError("an admin sees every region; for one region use role region_admin")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as session:
        if region is not None and session.get(RegionRow, region) is None:
            raise AccessError(f"unknown region {region!r} (see regions.yaml)")
        row = ApiTokenRow(
            name=name or f"{role.value}{'-' + region if region else ''}",
            role=role.value,
            region_code=region,
            secret_sha256=_hash(secret),
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return _public(row), secret


def list_tokens(db: Database) -> list[TokenPublic]:
    with db.session() as session:
        return [
            _public(row) for row in session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.id))
        ]


def revoke_token(db: Database, token_id: int) -> bool:
    """Revoke at once (API and dashboard sessions alike); False for an unknown id."""
    with db.session() as session:
        row = session.get(ApiTokenRow, token_id)
        if row is None:
            return False
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return True


def authenticate(db: Database, secret: str) -> Principal | None:
    """The principal a presented secret stands for; None when unknown or revoked."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    with db.session() as session:
        row = session.scalars(
            select(ApiTokenRow).where(ApiTokenRow.secret_sha256 == _hash(secret))
        ).one_or_none()
        found = _principal(row)
        now = utcnow()
        if row is not None and found is not None and _stale(row.last_used_at, now):
            row.last_used_at = now  # at most once a minute: reads stay reads
        return found


def _stale(last_used: datetime | None, now: datetime) -> bool:
    return last_used is None or (now - last_used).total_seconds() > LAST_USED_RESOLUTION_S


def principal_by_id(db: Database, token_id: int) -> Principal | None:
    """For a session cookie: the token it was opened with, if still valid."""
    with db.session() as session:
        return _principal(session.get(ApiTokenRow, token_id))


def _principal(row: ApiTokenRow | None) -> Principal | None:
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.id, row.name, Role(row.role), row.region_code)


class SessionSigner:
    """An opaque dashboard session: ``token id + expiry`` signed with HMAC-SHA256. It holds
    no secret of the token, and revoking the token ends every session opened with it."""

    def __init__(self, key: str, max_age_s: int) -> None:
        # No configured key: a random one, so a session never outlives the process.
        self._key = (key or secrets.token_hex(32)).encode("utf-8")
        self.max_age_s = max_age_s

    def sign(self, token_id: int) -> str:
        body = json.dumps({"t": token_id, "e": int(time.time()) + self.max_age_s})
        payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{payload}.{self._mac(payload)}"

    def verify(self, cookie: str) -> int | None:
        payload, _, mac = cookie.partition(".")
        if not payload or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            token_id, expires = int(body["t"]), int(body["e"])
        except (ValueError, KeyError, TypeError):
            return None
        return token_id if expires > time.time() else None

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()
