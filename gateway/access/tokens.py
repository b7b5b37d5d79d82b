"""Who may do what: API tokens (kept as sha256 only), roles and region scoping.

A secret reads ``aigw_<token id>_<random>``: the id says which account a failed dashboard
login was aimed at (its lockout), the random part is what authenticates. Secrets minted
before the id was added (``aigw_<random>``) still authenticate.

A region-scoped token sees its region as the whole world: lookups outside it answer exactly
like an unknown id, so such a token never learns that another region's study exists.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.access.audit import SYSTEM, Actor, AuditEvent, add
from gateway.errors import GatewayError
from gateway.index.database import Database
from gateway.index.tables import ApiTokenRow, RegionRow, SourceRow, utcnow

TOKEN_PREFIX = "aigw_"
MAX_SECRET_LENGTH = 200
LAST_USED_RESOLUTION_S = 60
_CLAIMED_ID = re.compile(r"aigw_([1-9][0-9]{0,17})_[A-Za-z0-9_-]{20,}")


class Role(StrEnum):
    ADMIN = "admin"  # everything, every region
    REGION_ADMIN = "region_admin"  # read and change, own region only
    VIEWER = "viewer"  # read only, own region only
    SERVICE = "service"  # machine to machine: read, retry deliveries, test rules
    RADIOLOGIST = "radiologist"  # read and give verdicts on AI results, own region only


# Roles that must name a region, and roles that may not.
REGION_REQUIRED = frozenset({Role.REGION_ADMIN, Role.VIEWER, Role.RADIOLOGIST})
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
    source: str | None = None  # the source a DICOMweb STOW-RS sender stores as

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
    def can_assess(self) -> bool:
        """Accept, modify or reject an AI result (IHE AIRA): a radiologist's judgement."""
        return self.role == Role.RADIOLOGIST

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def scoped_region(self, requested: str | None) -> str | None:
        """The region a list is filtered to: the caller's own wins over any request."""
        return self.region if self.region is not None else requested

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.role.value, self.token_id)


class TokenPublic(BaseModel):
    """A token as listed: never its secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    name: str
    role: Role
    region: str | None
    source: str | None = None
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
        source=row.source_name,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def create_token(
    db: Database,
    role: Role | str,
    region: str | None = None,
    name: str | None = None,
    *,
    source: str | None = None,
    by: Actor = SYSTEM,
    action: str = "create token",
) -> tuple[TokenPublic, str]:
    """A new token and its secret. The secret is returned once and stored only hashed;
    the token and its ``token_created`` audit event are one transaction. ``source`` binds
    it to a configured source: what its holder stores over STOW-RS arrives as from there."""
    try:
        role = Role(role)
    except ValueError as exc:
        choices = ", ".join(r.value for r in Role)
        raise AccessError(f"unknown role {role!r}; choose one of {choices}") from exc
    if role in REGION_REQUIRED and region is None:
        raise AccessError(f"role {role.value} needs a region (--region NN)")
    if role in REGION_FORBIDDEN and region is not None:
        raise AccessError("an admin sees every region; for one region use role region_admin")
    with db.write_lock, db.session() as session:
        if region is not None and session.get(RegionRow, region) is None:
            raise AccessError(f"unknown region {region!r} (see regions.yaml)")
        if source is not None:
            _check_source(session, source, region)
        row = ApiTokenRow(
            name=name or f"{role.value}{'-' + region if region else ''}",
            role=role.value,
            region_code=region,
            source_name=source,
            # A placeholder until the id, which the secret carries, is known.
            secret_sha256=_hash(secrets.token_hex(32)),
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        secret = f"{TOKEN_PREFIX}{row.id}_{secrets.token_urlsafe(32)}"
        row.secret_sha256 = _hash(secret)
        public = _public(row)
        add(
            session,
            by,
            AuditEvent.TOKEN_CREATED,
            action,
            region=region,
            detail={
                "token": public.model_dump(
                    mode="json", include={"id", "name", "role", "source"}, exclude_none=True
                )
            },
        )
        return public, secret


def _check_source(session: Session, source: str, region: str | None) -> None:
    """A bound source must be configured, and inside the token's region: a region-scoped
    sender could otherwise store studies it may not read back."""
    row = session.scalars(select(SourceRow).where(SourceRow.name == source)).one_or_none()
    if row is None:
        raise AccessError(f"unknown source {source!r} (see sources.yaml)")
    if region is not None and row.region_code != region:
        raise AccessError(
            f"source {source!r} is in region {row.region_code}, not the token's {region}"
        )


def list_tokens(db: Database) -> list[TokenPublic]:
    with db.session() as session:
        return [
            _public(row) for row in session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.id))
        ]


def revoke_token(
    db: Database, token_id: int, *, by: Actor = SYSTEM, action: str = "revoke token"
) -> bool:
    """Revoke at once (API and dashboard sessions alike); False for an unknown id. The
    revocation and its ``token_revoked`` event are one transaction."""
    with db.write_lock, db.session() as session:
        row = session.get(ApiTokenRow, token_id)
        if row is None:
            return False
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            add(
                session,
                by,
                AuditEvent.TOKEN_REVOKED,
                action,
                region=row.region_code,
                detail={"token": {"id": row.id, "name": row.name, "role": row.role}},
            )
        return True


def claimed_token_id(secret: str) -> int | None:
    """The token id a presented secret claims to be (whether or not it is right)."""
    found = _CLAIMED_ID.fullmatch(secret)
    return int(found.group(1)) if found else None


def authenticate(db: Database, secret: str) -> Principal | None:
    """The principal a presented secret stands for; None when unknown or revoked."""
    with db.session() as session:
        return find_principal(session, secret)


def find_principal(session: Session, secret: str) -> Principal | None:
    """:func:`authenticate` inside the caller's transaction."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > MAX_SECRET_LENGTH:
        return None
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


def principal_by_id(session: Session, token_id: int) -> Principal | None:
    """For a dashboard session: the token it was opened with, if still valid."""
    return _principal(session.get(ApiTokenRow, token_id))


def _principal(row: ApiTokenRow | None) -> Principal | None:
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.id, row.name, Role(row.role), row.region_code, row.source_name)
