"""Start in any order: what a process needs before it works, waited for with backoff.

``aigw serve`` and ``aigw worker`` may start before PostgreSQL, Redis or the S3 server
answers, or (a worker) before the gateway has migrated a fresh database. Each dependency is
waited for with a backoff, saying once what is awaited and once when it is there; the
process then starts working. A schema older than this code, or one it does not know, is
refused at once with the reason: waiting would not change it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.errors import GatewayError
from gateway.index.database import Database
from gateway.index.due import Backoff
from gateway.index.object_store import ObjectStore
from gateway.index.schema import SchemaState, read_schema
from gateway.jobs.broker import BrokerProbe, describe

log = logging.getLogger(__name__)


class SchemaRefused(GatewayError):
    """The database's schema does not fit this code; the message says what to do."""


class SchemaNotReady(GatewayError):
    """The database has no schema yet: the gateway has not migrated it."""


def wait_for(
    name: str,
    where: str,
    check: Callable[[], object],
    backoff: Backoff,
    stop: threading.Event | None = None,
) -> bool:
    """Call ``check`` until it succeeds, waiting ``backoff`` between tries; one log line
    when the wait begins and one when it ends. False when ``stop`` was set meanwhile."""
    started, attempt = time.monotonic(), 0
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            check()
        except (SchemaRefused, KeyboardInterrupt):
            raise
        except GatewayError as exc:
            attempt += 1
            if attempt == 1:
                log.warning(
                    f"waiting for the {name}",
                    extra={"dependency": name, "at": where, "error": str(exc)[:300]},
                )
            stop.wait(backoff.delay_s(attempt))
            continue
        if attempt:
            log.info(
                f"the {name} is there",
                extra={"dependency": name, "waited_s": round(time.monotonic() - started, 1)},
            )
        return True
    return False


def where_is(db: Database) -> str:
    return db.engine.url.render_as_string(hide_password=True)


def wait_for_database(db: Database, backoff: Backoff, *, migrate: bool) -> None:
    """The database reachable and its schema this code's: migrated here (``aigw serve``),
    or by the gateway (any other process, which waits for it)."""
    where = where_is(db)
    wait_for("database", where, db.check, backoff)
    if migrate:
        wait_for("database", where, db.migrate, backoff)
        return
    wait_for("database schema", where, lambda: require_current_schema(db), backoff)


def require_current_schema(db: Database) -> None:
    schema = read_schema(db)
    if schema.state == SchemaState.EMPTY:
        raise SchemaNotReady(schema.explain())
    if schema.state != SchemaState.CURRENT:
        raise SchemaRefused(schema.explain())


def wait_for_store(store: ObjectStore, backoff: Backoff) -> None:
    wait_for("object store", store.describe(), store.check, backoff)


def wait_for_broker(url: str, backoff: Backoff, stop: threading.Event | None = None) -> bool:
    probe = BrokerProbe(url)
    try:
        return wait_for("broker", describe(url), probe.identity, backoff, stop)
    finally:
        probe.close()
