"""Watching the broker: is it there, and is it still the same one?

Celery messages only say "go"; the database says what is pending. A message can be lost
without anyone being told: a Redis restarted without persistence takes every queued message
with it, and even with AOF the last second may be gone. So ``aigw serve`` looks at the
broker every round: while it cannot be reached nothing is sent (sends would only fail), and
when it is reachable again — or answers with another identity (Redis's ``run_id`` changes at
every restart) — every job whose message may have been lost is made due at once.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from urllib.parse import urlsplit

import redis
from kombu.connection import Connection

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

MEMORY_IDENTITY = "memory"  # the in-process broker lives and dies with this process


class BrokerUnavailable(GatewayError):
    """The broker cannot be reached now."""


class BrokerChange(StrEnum):
    FIRST = "first"  # the first answer this process got: what it lost while away is unknown
    SAME = "same"
    DOWN = "down"
    BACK = "back"  # reachable again, the same broker (its messages are intact)
    RESTARTED = "restarted"  # another broker instance: its messages may be gone


def describe(url: str) -> str:
    """The broker's address without credentials (for logs and health)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class BrokerProbe:
    """One cheap question to the broker: who are you? (Redis: ``INFO server``'s run_id.)"""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._redis: redis.Redis | None = None
        if url.startswith(("redis://", "rediss://", "unix://")):
            self._redis = redis.Redis.from_url(
                url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
            )

    def identity(self) -> str:
        """The broker instance's identity; :class:`BrokerUnavailable` when unreachable."""
        if self.url.startswith("memory://"):
            return MEMORY_IDENTITY
        if self._redis is not None:
            try:
                return str(self._redis.info("server")["run_id"])
            except (redis.RedisError, OSError, KeyError) as exc:
                raise BrokerUnavailable(f"{describe(self.url)}: {exc.__class__.__name__}") from exc
        try:  # another transport: reachable or not, no restart detection
            with Connection(self.url, connect_timeout=self.timeout_s) as connection:  # type: ignore[no-untyped-call]
                connection.ensure_connection(max_retries=1, timeout=self.timeout_s)
        except Exception as exc:  # kombu raises transport-specific errors
            raise BrokerUnavailable(f"{describe(self.url)}: {exc.__class__.__name__}") from exc
        return "reachable"

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


class BrokerWatch:
    """What changed since the last look; logs one line per outage and one per return."""

    def __init__(self, probe: BrokerProbe) -> None:
        self.probe = probe
        self.identity: str | None = None
        self.down_since: str | None = None  # the error while it is unreachable

    @property
    def up(self) -> bool:
        return self.identity is not None and self.down_since is None

    def observe(self) -> BrokerChange:
        try:
            identity = self.probe.identity()
        except BrokerUnavailable as exc:
            if self.down_since is None:
                log.warning("broker unreachable; waiting for it", extra={"error": str(exc)})
            self.down_since = str(exc)
            return BrokerChange.DOWN
        previous, was_down = self.identity, self.down_since is not None
        self.identity, self.down_since = identity, None
        if previous is None:
            if was_down:
                log.info("broker reachable", extra={"broker": describe(self.probe.url)})
            return BrokerChange.FIRST
        if identity != previous:
            log.warning("broker restarted: queued work is sent again", extra={"was": previous})
            return BrokerChange.RESTARTED
        if was_down:
            log.info("broker reachable again", extra={"broker": describe(self.probe.url)})
            return BrokerChange.BACK
        return BrokerChange.SAME
