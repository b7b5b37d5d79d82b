"""Dashboard login: the token checked, failed attempts counted per account and per peer
address, lockout, and the session opened — each outcome audited in the same transaction.

The account is the token id a presented secret claims (``aigw_<id>_…``); a secret without
one counts against its peer address only. ``login_max_failures`` failures of one key, each
within ``login_lockout_s`` of the one before, lock that key for ``login_lockout_s``: while
locked, no secret is even checked, so guessing gains nothing. A success clears its
account's count, not its address's (one valid token must not reset an address that is
guessing others). The counts live in the index: a restart does not lift a lockout, and
every API process sees the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.access.audit import Actor, AuditEvent, add
from gateway.access.sessions import open_session
from gateway.access.tokens import Principal, claimed_token_id, find_principal
from gateway.index.database import Database
from gateway.index.tables import ApiTokenRow, LoginFailureRow, utcnow

ANONYMOUS_ROLE = "anonymous"


@dataclass(frozen=True)
class LoginPolicy:
    max_failures: int
    lockout_s: int


@dataclass(frozen=True)
class LoginOutcome:
    """A principal and its session's cookie secret; or none, and maybe a lockout's end."""

    principal: Principal | None = None
    session_secret: str | None = None
    locked_until: datetime | None = None


def account_key(token_id: int) -> str:
    return f"account:{token_id}"


def peer_key(client_ip: str | None) -> str:
    return f"peer:{(client_ip or 'unknown')[:64]}"


def attempt_login(
    db: Database, secret: str, client_ip: str | None, policy: LoginPolicy, action: str
) -> LoginOutcome:
    """One login attempt, start to end. Raises the database's errors (the caller answers
    503): an attempt that cannot be audited does not log anyone in."""
    try:
        return _attempt(db, secret, client_ip, policy, action)
    except IntegrityError:
        # Two failures of a new key at once (PostgreSQL): the loser counts again.
        return _attempt(db, secret, client_ip, policy, action)


def _attempt(
    db: Database, secret: str, client_ip: str | None, policy: LoginPolicy, action: str
) -> LoginOutcome:
    now = utcnow()
    claimed = claimed_token_id(secret)
    keys = [peer_key(client_ip)] + ([account_key(claimed)] if claimed is not None else [])
    with db.write_lock, db.session() as session:
        claimed_region = _region_of(session, claimed)
        locked = _locked_until(session, keys, now)
        if locked is not None:
            _failed(session, claimed, claimed_region, client_ip, action, "locked out")
            return LoginOutcome(locked_until=locked)
        who = find_principal(session, secret)
        if who is None:
            _failed(session, claimed, claimed_region, client_ip, action, "unknown or revoked")
            newly_locked = [key for key in keys if _count_failure(session, key, now, policy)]
            if not newly_locked:
                return LoginOutcome()
            until = now + timedelta(seconds=policy.lockout_s)
            add(
                session,
                _anonymous(claimed),
                AuditEvent.LOGIN_LOCKED,
                action,
                region=claimed_region,
                client_ip=client_ip,
                detail={"locked": newly_locked, "until": until.isoformat()},
            )
            return LoginOutcome(locked_until=until)
        session.execute(
            delete(LoginFailureRow).where(LoginFailureRow.key == account_key(who.token_id))
        )
        cookie = open_session(session, who, client_ip, now)
        add(
            session,
            who.actor,
            AuditEvent.LOGIN_SUCCEEDED,
            action,
            region=who.region,
            client_ip=client_ip,
        )
        return LoginOutcome(principal=who, session_secret=cookie)


def prune_failures(db: Database, policy: LoginPolicy) -> int:
    """Forget counts that can no longer lock anything (old, and not locked now)."""
    now = utcnow()
    with db.write_lock, db.session() as session:
        result = session.execute(
            delete(LoginFailureRow).where(
                LoginFailureRow.last_failure_at < now - timedelta(seconds=policy.lockout_s),
                or_(LoginFailureRow.locked_until.is_(None), LoginFailureRow.locked_until < now),
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)


def _locked_until(session: Session, keys: list[str], now: datetime) -> datetime | None:
    ends = session.scalars(
        select(LoginFailureRow.locked_until).where(
            LoginFailureRow.key.in_(keys), LoginFailureRow.locked_until > now
        )
    ).all()
    return max((end for end in ends if end is not None), default=None)


def _count_failure(session: Session, key: str, now: datetime, policy: LoginPolicy) -> bool:
    """One more failure of ``key``; True when it locks the key now."""
    row = session.get(LoginFailureRow, key)
    if row is None:
        row = LoginFailureRow(key=key, failures=0, last_failure_at=now)
        session.add(row)
    elif now - row.last_failure_at > timedelta(seconds=policy.lockout_s):
        row.failures = 0  # failures that far apart are typing, not guessing
    row.failures += 1
    row.last_failure_at = now
    if row.failures < policy.max_failures:
        return False
    row.failures = 0
    row.locked_until = now + timedelta(seconds=policy.lockout_s)
    return True


def _failed(
    session: Session,
    claimed: int | None,
    region: str | None,
    client_ip: str | None,
    action: str,
    reason: str,
) -> None:
    add(
        session,
        _anonymous(claimed),
        AuditEvent.LOGIN_FAILED,
        action,
        region=region,
        client_ip=client_ip,
        detail={"claimed_token_id": claimed, "reason": reason},
    )


def _anonymous(claimed: int | None) -> Actor:
    # Not the token's actor: whoever typed the secret has not shown they hold it.
    return Actor(f"token {claimed}" if claimed is not None else "(no token id)", ANONYMOUS_ROLE)


def _region_of(session: Session, token_id: int | None) -> str | None:
    """The region of the account an attempt claims, so its region's admins see it."""
    if token_id is None:
        return None
    row = session.get(ApiTokenRow, token_id)
    return row.region_code if row is not None else None
