"""An accepted association's audit row is written while its A-ASSOCIATE-AC goes out, and it
precedes anything the association delivers: its C-STORE is answered, and its release, only
once the row is written. A stopping SCP waits for the rows under way; a failed write is
logged, as it was when written before the A-ASSOCIATE-AC."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from pynetdicom.association import Association
from sqlalchemy import select

from gateway.access.audit import ASSOCIATION_ACCEPTED
from gateway.errors import DatabaseError
from gateway.index.tables import AuditRow, InstanceRow
from gateway.ingest.reactor import EdgeAssociation
from gateway.ingest.refusals import AssociationDecision, EdgeCounters, EdgeReport
from tests.ingest.edge_peers import storage_association
from tests.services import ct_instance, make_uid
from workers.serve import Gateway

# How long the wrong order is given to show: the answer coming while the audit row is still
# held back. The right order never depends on it.
CHANCE_S = 1.0


class HeldAudit:
    """The gateway's audit hook, held back until :meth:`release`; records the order."""

    def __init__(self, write: Callable[[AssociationDecision], None], order: list[str]) -> None:
        self._write = write
        self._order = order
        self.writing = threading.Event()
        self._may_write = threading.Event()

    def __call__(self, decision: AssociationDecision) -> None:
        self.writing.set()
        assert self._may_write.wait(60), "the test never let the audit row be written"
        self._write(decision)
        self._order.append("audit written")

    def release(self) -> None:
        self._may_write.set()


@contextmanager
def _held_audit(gateway: Gateway, order: list[str]) -> Iterator[HeldAudit]:
    assert gateway.scp is not None
    report = gateway.scp.report
    assert report.audit is not None
    held = HeldAudit(report.audit, order)
    report.audit = held
    try:
        yield held
    finally:
        held.release()


def _settling(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set when an association first waits for its audit row."""
    entered = threading.Event()
    settle = EdgeAssociation.settle

    def spy(self: EdgeAssociation) -> None:
        entered.set()
        settle(self)

    monkeypatch.setattr(EdgeAssociation, "settle", spy)
    return entered


def _run_while_held(action: Callable[[], None], held: HeldAudit, settling: threading.Event) -> None:
    """``action`` on a thread of its own; once the association waits for its audit row, the
    wrong order gets :data:`CHANCE_S` to show before the row may be written."""
    acting = threading.Thread(target=action)
    acting.start()
    assert settling.wait(30), "the association never waited for its audit row"
    acting.join(timeout=CHANCE_S)
    held.release()
    acting.join(timeout=60)


def _associate(gateway: Gateway) -> Association:
    assoc = storage_association(gateway.parts.settings.dicom_port)
    assert assoc.is_established
    return assoc


def _accepted_rows(gateway: Gateway) -> int:
    with gateway.parts.db.session() as session:
        rows = session.scalars(select(AuditRow).where(AuditRow.action == ASSOCIATION_ACCEPTED))
        return len(rows.all())


def test_the_association_is_accepted_while_its_audit_row_is_written(gateway: Gateway) -> None:
    order: list[str] = []
    with _held_audit(gateway, order) as held:
        assoc = _associate(gateway)  # established: the A-ASSOCIATE-AC did not wait for it
        assert held.writing.wait(30) and order == []
        held.release()
        assoc.release()
    assert order == ["audit written"]
    assert _accepted_rows(gateway) == 1


def test_a_c_store_is_answered_only_after_the_association_s_audit_row(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    settling = _settling(monkeypatch)
    study = make_uid("audit-first")
    instance = ct_instance(study, make_uid(study, "s"), make_uid(study, 1), 1, size=16)
    with _held_audit(gateway, order) as held:
        assoc = _associate(gateway)

        def store() -> None:
            order.append(f"C-STORE answered {int(assoc.send_c_store(instance).Status):#06x}")

        _run_while_held(store, held, settling)
        assoc.release()
    assert order == ["audit written", "C-STORE answered 0x0000"]
    with gateway.parts.db.session() as session:
        assert len(session.scalars(select(InstanceRow.id)).all()) == 1


def test_the_release_is_answered_only_after_the_association_s_audit_row(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    settling = _settling(monkeypatch)
    with _held_audit(gateway, order) as held:
        assoc = _associate(gateway)

        def release() -> None:
            assoc.release()
            order.append("released" if assoc.is_released else "not released")

        _run_while_held(release, held, settling)
    assert order == ["audit written", "released"]
    assert _accepted_rows(gateway) == 1


def _decision(calling_ae: str) -> AssociationDecision:
    return AssociationDecision(
        accepted=True, peer="127.0.0.1", calling_ae=calling_ae, called_ae="AIGW", tls=False
    )


def test_a_stopping_report_waits_for_the_writes_under_way_then_writes_in_place() -> None:
    written: list[str] = []
    may_write = threading.Event()

    def audit(decision: AssociationDecision) -> None:
        assert may_write.wait(60)
        written.append(decision.calling_ae)

    report = EdgeReport(EdgeCounters(), audit)
    pending = report.decided_soon(_decision("FIRST"))
    assert pending is not None and not pending.done()
    closing = threading.Thread(target=report.close)
    closing.start()
    closing.join(timeout=CHANCE_S)
    assert closing.is_alive(), "close returned with a write under way"
    may_write.set()
    closing.join(timeout=60)
    assert pending.done() and written == ["FIRST"]
    assert report.decided_soon(_decision("AFTER")) is None  # nothing left to wait for
    assert written == ["FIRST", "AFTER"]
    assert report.counters.accepted_total() == 2


def test_a_failed_write_is_logged_and_lets_the_association_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def audit(_decision: AssociationDecision) -> None:
        raise DatabaseError("OperationalError: unable to open database file")

    report = EdgeReport(EdgeCounters(), audit)
    pending = report.decided_soon(_decision("DOWN"))
    assert pending is not None
    assert pending.result(timeout=60) is None
    failed = [r for r in caplog.records if r.getMessage() == "association audit failed"]
    assert len(failed) == 1 and failed[0].__dict__["decision"]["calling_ae"] == "DOWN"
