"""Why the DICOM edge refused or aborted something: the reasons, one log line each, counters
shared by every SCP process, and the association decision the audit log records.

A refusal is logged once, where it happens, with the peer address, the calling AE when one
was sent, and the reason; never with anything from a dataset.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import Future
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class Stage(StrEnum):
    """How far a connection got when it was refused."""

    CONNECTION = "connection"  # before a whole A-ASSOCIATE-RQ: the socket is closed
    ASSOCIATION = "association"  # the A-ASSOCIATE-RQ is answered with A-ASSOCIATE-RJ
    ABORT = "abort"  # an association is aborted (A-ABORT, socket closed)
    INSTANCE = "instance"  # one C-STORE is answered with a failure status


class Refusal(StrEnum):
    PEER_CONNECTIONS = "peer_connection_limit"
    REQUEST_TIMEOUT = "request_timeout"
    REQUEST_TOO_LARGE = "request_too_large"
    NOT_A_REQUEST = "not_an_association_request"
    TLS_HANDSHAKE = "tls_handshake"
    CALLED_AE = "called_ae"
    CALLING_AE = "calling_ae"
    PEER_ADDRESS = "peer_address"
    TLS_IDENTITY = "tls_identity"
    STORE_FULL = "store_full"
    ASSOCIATION_LIMIT = "association_limit"
    PDU_TOO_LARGE = "pdu_too_large"
    MESSAGE_TOO_LARGE = "message_too_large"
    UNANSWERED_REQUESTS = "unanswered_requests"
    INSTANCE_TOO_LARGE = "instance_too_large"

    @property
    def stage(self) -> Stage:
        return _STAGES[self]


_STAGES = {
    **dict.fromkeys(
        (
            Refusal.PEER_CONNECTIONS,
            Refusal.REQUEST_TIMEOUT,
            Refusal.REQUEST_TOO_LARGE,
            Refusal.NOT_A_REQUEST,
            Refusal.TLS_HANDSHAKE,
        ),
        Stage.CONNECTION,
    ),
    **dict.fromkeys(
        (
            Refusal.CALLED_AE,
            Refusal.CALLING_AE,
            Refusal.PEER_ADDRESS,
            Refusal.TLS_IDENTITY,
            Refusal.STORE_FULL,
            Refusal.ASSOCIATION_LIMIT,
        ),
        Stage.ASSOCIATION,
    ),
    **dict.fromkeys(
        (Refusal.PDU_TOO_LARGE, Refusal.MESSAGE_TOO_LARGE, Refusal.UNANSWERED_REQUESTS),
        Stage.ABORT,
    ),
    Refusal.INSTANCE_TOO_LARGE: Stage.INSTANCE,
}

_MESSAGES = {
    Stage.CONNECTION: "DICOM connection refused",
    Stage.ASSOCIATION: "DICOM association rejected",
    Stage.ABORT: "DICOM association aborted",
    Stage.INSTANCE: "DICOM instance refused",
}
_ACCEPTED = "accepted"
_SLOTS = [_ACCEPTED, *(reason.value for reason in Refusal)]


class EdgeCounters:
    """Counts of refusals by reason and of accepted associations, in shared memory: the
    SCP processes started with ``scp_processes`` > 1 get this object and add to the same
    numbers, which ``/metrics`` of the main process reports."""

    def __init__(self) -> None:
        # spawn: the context the SCP children are started with; the array reaches them as
        # an argument of Process (shared memory, not a copy).
        self._values: Any = multiprocessing.get_context("spawn").Array("q", len(_SLOTS))

    def refused(self, reason: Refusal) -> None:
        self._add(reason.value)

    def accepted(self) -> None:
        self._add(_ACCEPTED)

    def _add(self, slot: str) -> None:
        with self._values.get_lock():
            self._values[_SLOTS.index(slot)] += 1

    def refusals(self) -> dict[Refusal, int]:
        values = list(self._values)
        return {reason: values[_SLOTS.index(reason.value)] for reason in Refusal}

    def accepted_total(self) -> int:
        return int(self._values[_SLOTS.index(_ACCEPTED)])


class AssociationDecision(BaseModel):
    """One association request accepted or refused: what the audit log records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accepted: bool
    peer: str
    calling_ae: str
    called_ae: str
    tls: bool = Field(description="The connection came in over TLS.")
    tls_subject: str | None = Field(default=None, description="Client certificate CN.")
    source: str | None = None
    region: str | None = None
    reason: Refusal | None = None
    detail: str = ""


AuditHook = Callable[[AssociationDecision], None]
"""Records a decision durably; raises when it cannot."""


class EdgeReport:
    """Logs and counts every refusal once; hands association decisions to the audit: a
    refusal's before the rejection is sent, an accepted association's on a thread of its own
    (:meth:`decided_soon`) while the A-ASSOCIATE-AC goes out."""

    def __init__(self, counters: EdgeCounters, audit: AuditHook | None = None) -> None:
        self.counters = counters
        self.audit = audit
        self._pending: set[Future[None]] = set()
        self._closed = False
        self._lock = threading.Lock()

    def refused(
        self, reason: Refusal, peer: str, detail: str, calling_ae: str | None = None
    ) -> None:
        self.counters.refused(reason)
        log.warning(
            _MESSAGES[reason.stage],
            extra={
                "reason": reason.value,
                "peer": peer,
                "calling_ae": calling_ae,
                "detail": detail,
            },
        )

    def decided(self, decision: AssociationDecision) -> None:
        """Record an association decision; a failed audit write propagates to the caller."""
        if decision.accepted:
            self.counters.accepted()
        if self.audit is not None:
            self.audit(decision)

    def decided_soon(self, decision: AssociationDecision) -> Future[None] | None:
        """Count the decision now and record it on a thread of its own; the future is done
        once the row is written, or its failure logged (None: nothing left to wait for).
        Whoever acts on the association's behalf waits for it first (gateway.ingest.scp):
        its audit row, written with a durable commit, still precedes anything it delivered
        — without the commit's ~2.5 ms before the A-ASSOCIATE-AC. A thread per association,
        not a pool: with the database unreachable each write waits out its own connection
        attempt, as it did in the association's thread, never behind the others'."""
        if decision.accepted:
            self.counters.accepted()
        audit = self.audit
        if audit is None:
            return None
        written: Future[None] = Future()
        with self._lock:
            closed = self._closed
            if not closed:
                self._pending.add(written)
        if closed:  # the SCP is stopping: written here and now
            record_or_log(audit, decision)
            return None
        writer = threading.Thread(
            target=self._write, args=(audit, decision, written), name="association-audit"
        )
        try:
            writer.start()
        except RuntimeError:  # no thread to be had (interpreter exit, resources)
            self._write(audit, decision, written)
        return written

    def _write(
        self, audit: AuditHook, decision: AssociationDecision, written: Future[None]
    ) -> None:
        try:
            record_or_log(audit, decision)
        finally:
            with self._lock:
                self._pending.discard(written)
            written.set_result(None)

    def close(self) -> None:
        """Take no more audit writes off the accept path; wait for those under way."""
        with self._lock:
            self._closed = True
            pending = list(self._pending)
        for written in pending:
            written.result()


def record_or_log(audit: AuditHook, decision: AssociationDecision) -> None:
    """``audit(decision)``; when it fails, the decision goes to the log instead."""
    try:
        audit(decision)
    except Exception:
        # The audit log is in the index: when it cannot be written, neither can an instance
        # (each C-STORE answers 0xA700 "database: …"), so the association goes on and the
        # decision is kept in the log instead.
        log.exception(
            "association audit failed", extra={"decision": decision.model_dump(mode="json")}
        )
