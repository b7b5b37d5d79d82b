"""Study assembly with an injected clock: quiet periods per source, manual completion, the
completion hook offered again after a restart, late instances."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset
from sqlalchemy import select

from gateway.errors import DatabaseError, UnknownStudy
from gateway.index.database import Database
from gateway.index.due import Backoff
from gateway.index.object_store import FolderStore
from gateway.index.tables import StudyEventRow, StudyRow, utcnow
from gateway.ingest.assembly import MIN_PAUSE_S, Assembler, StudyCompleted
from gateway.ingest.receive import Ingest, Sender
from gateway.ingest.sources import load_directory, sync_directory
from tests.services import ROOT, ct_instance, make_uid

SOURCES = ROOT / "gateway" / "configs" / "sources.yaml"
REGIONS = ROOT / "gateway" / "configs" / "regions.yaml"


# --- study assembly with an injected clock ---------------------------------------------------


class World:
    """A migrated SQLite index, a folder store, ingest, and a clock the test moves."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = Database(f"sqlite:///{tmp_path / 'index.db'}")
        self.db.migrate()
        self.directory = load_directory(SOURCES, REGIONS, open_mode=False)
        self.source_ids = sync_directory(self.db, self.directory)
        self.ingest = Ingest(self.db, FolderStore(tmp_path / "objects"))
        self.now = utcnow()
        self.completed: list[StudyCompleted] = []

    def clock(self) -> datetime:
        return self.now

    def assembler(self, hook: Callable[[StudyCompleted], None] | None = None) -> Assembler:
        return Assembler(
            self.db, self.directory, 10.0, hook or self.completed.append, clock=self.clock
        )

    def receive(self, source: str, study_uid: str, number: int = 1) -> datetime:
        ds = ct_instance(
            study_uid, make_uid(study_uid, "series"), make_uid(study_uid, "sop", number), number
        )
        found = self.directory.by_name(source)
        assert found is not None
        sender = Sender(
            source=found,
            source_id=self.source_ids[source],
            calling_ae=found.ae_title,
            address="127.0.0.1",
        )
        outcome = self.ingest.receive(_part10(ds), sender)
        assert outcome.status == 0, outcome
        return self.study(study_uid).last_received_at

    def study(self, study_uid: str) -> StudyRow:
        with self.db.session() as session:
            return session.scalars(select(StudyRow).where(StudyRow.study_uid == study_uid)).one()

    def states(self, study_uid: str) -> list[str | None]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(StudyEventRow.state)
                    .join(StudyRow)
                    .where(StudyRow.study_uid == study_uid, StudyEventRow.kind == "state")
                    .order_by(StudyEventRow.id)
                )
            )


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    one = World(tmp_path)
    yield one
    one.db.dispose()


def test_quiet_period_per_source(world: World) -> None:
    assembler = world.assembler()
    cami, gkb = make_uid("quiet", "cami"), make_uid("quiet", "gkb")
    last_cami = world.receive("irk-cami", cami)  # default quiet period: 10 s
    last_gkb = world.receive("irk-gkb1", gkb)  # its own: 20 s
    assert assembler.quiet_period("irk-cami") == timedelta(seconds=10)
    assert assembler.quiet_period("irk-gkb1") == timedelta(seconds=20)

    world.now = last_cami + timedelta(seconds=9.9)
    assert assembler.tick() == []
    assert world.study(cami).state == "receiving"

    world.now = last_cami + timedelta(seconds=10)
    assert last_gkb + timedelta(seconds=20) > world.now
    offered = assembler.tick()
    assert [c.study_uid for c in offered] == [cami]
    assert (offered[0].source, offered[0].region) == ("irk-cami", "38")
    assert offered[0].completed_at == world.now
    assert world.study(cami).state == "complete" and world.study(gkb).state == "receiving"
    assert world.study(cami).completed_at == world.now

    assert assembler.tick() == []  # offered once per completion
    world.now = last_gkb + timedelta(seconds=20)
    assert [c.study_uid for c in assembler.tick()] == [gkb]
    assert [c.study_uid for c in world.completed] == [cami, gkb]
    assert world.states(cami) == ["receiving", "complete"]


def test_the_loop_waits_until_the_next_quiet_period_ends_not_a_whole_poll(world: World) -> None:
    assembler = world.assembler()
    assert assembler.pause(0.5) == 0.5  # no tick yet: nothing known to wait for
    cami, gkb = make_uid("pause", "cami"), make_uid("pause", "gkb")
    last_cami = world.receive("irk-cami", cami)  # quiet period 10 s
    last_gkb = world.receive("irk-gkb1", gkb)  # 20 s
    world.now = last_cami + timedelta(seconds=9.7)
    assert assembler.tick() == []
    assert assembler.pause(60.0) == pytest.approx(0.3 + MIN_PAUSE_S)  # cami's end, not 60 s
    assert assembler.pause(0.1) == 0.1  # never longer than the poll
    world.now = last_cami + timedelta(seconds=12)  # the tick's hand-over took long
    assert assembler.pause(60.0) == pytest.approx(MIN_PAUSE_S)  # at once
    assert [c.study_uid for c in assembler.tick()] == [cami]
    left = (last_gkb + timedelta(seconds=20) - world.now).total_seconds()
    assert assembler.pause(60.0) == pytest.approx(left + MIN_PAUSE_S)
    world.now = last_gkb + timedelta(seconds=20)
    assert [c.study_uid for c in assembler.tick()] == [gkb]
    assert assembler.pause(0.5) == 0.5  # nothing open: the poll


def test_a_failed_tick_waits_a_whole_poll(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # The database away: the loop must not look every MIN_PAUSE_S until it is back.
    assembler = world.assembler()
    study = make_uid("pause-fail")
    last = world.receive("irk-cami", study)
    world.now = last + timedelta(seconds=5)
    assembler.tick()
    assert assembler.pause(60.0) < 6

    def away(now: datetime) -> None:
        raise DatabaseError("database unreachable")

    monkeypatch.setattr(assembler, "_open", away)
    with pytest.raises(DatabaseError):
        assembler.tick()
    assert assembler.pause(60.0) == 60.0


def test_a_new_instance_restarts_the_timer(world: World) -> None:
    assembler = world.assembler()
    study = make_uid("timer")
    first = world.receive("irk-cami", study, 1)
    world.now = first + timedelta(seconds=11)
    second = world.receive("irk-cami", study, 2)  # arrived at real time, after `first`
    world.now = second + timedelta(seconds=9)
    assert assembler.tick() == [] and world.study(study).state == "receiving"
    # found due, but an instance arrived in between: only_if_quiet keeps it open
    assert assembler.complete(study, reason="quiet_period", only_if_quiet=True) is False
    world.now = second + timedelta(seconds=10)
    assert [c.study_uid for c in assembler.tick()] == [study]


def test_manual_completion(world: World) -> None:
    assembler = world.assembler()
    study = make_uid("manual")
    world.receive("irk-cami", study)
    assert assembler.complete(study) is True  # at once, no quiet period
    assert assembler.complete(study) is False  # not open any more
    with world.db.session() as session:
        event = session.scalars(select(StudyEventRow).order_by(StudyEventRow.id.desc())).first()
        assert event is not None and event.state == "complete"
        assert event.detail == {"reason": "manual"}
    with pytest.raises(UnknownStudy):
        assembler.complete(make_uid("never sent"))
    assert [c.study_uid for c in assembler.tick()] == [study]
    assert assembler.tick() == []


def test_a_handed_over_completion_is_not_offered_again_even_after_a_restart(
    world: World,
) -> None:
    study = make_uid("restart")
    world.receive("irk-cami", study)
    first = world.assembler()
    assert first.complete(study)
    assert len(first.tick()) == 1 and first.tick() == []
    # a new process (kill -9 and start): the hand-over is recorded in the database
    second = world.assembler()
    world.now += timedelta(hours=1)
    assert second.tick() == []
    assert [c.study_uid for c in world.completed] == [study]
    assert world.study(study).next_attempt_at is None


def test_a_failing_hook_is_offered_again_after_its_backoff_also_after_a_restart(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    failures = {"left": 2}
    offered: list[str] = []

    def flaky(completed: StudyCompleted) -> None:
        offered.append(completed.study_uid)
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("routing is down")

    study, other = make_uid("hook-fails"), make_uid("hook-fails", 2)
    world.receive("irk-cami", study)
    world.receive("irk-cami", other)
    assembler = Assembler(
        world.db, world.directory, 10.0, flaky, clock=world.clock, backoff=Backoff(2.0, 8.0)
    )
    assert assembler.complete(study) and assembler.complete(other)
    assert len(assembler.tick()) == 2  # both were tried, both failed
    assert sum(r.msg.startswith("completion hook failed") for r in caplog.records) == 2
    row = world.study(study)
    assert row.state == "complete" and row.attempts == 1
    assert row.last_error == "RuntimeError: routing is down"
    assert row.next_attempt_at == world.now + timedelta(seconds=2)  # the first backoff
    world.now += timedelta(seconds=1.9)
    assert assembler.tick() == []  # not due yet
    # after a restart too: what is due lives in the database, not in the process
    world.now += timedelta(seconds=0.1)
    again = Assembler(world.db, world.directory, 10.0, flaky, clock=world.clock)
    assert sorted(c.study_uid for c in again.tick()) == sorted([study, other])
    assert again.tick() == []  # handed over now: nothing due
    assert offered.count(study) == offered.count(other) == 2
    assert world.study(study).next_attempt_at is None


def test_backoff_doubles_up_to_its_bound(world: World) -> None:
    def broken(_completed: StudyCompleted) -> None:
        raise RuntimeError("still down")

    study = make_uid("backoff")
    world.receive("irk-cami", study)
    assembler = Assembler(
        world.db, world.directory, 10.0, broken, clock=world.clock, backoff=Backoff(1.0, 4.0)
    )
    assert assembler.complete(study)
    waits = []
    for _ in range(5):
        assert len(assembler.tick()) == 1
        due = world.study(study).next_attempt_at
        assert due is not None
        waits.append((due - world.now).total_seconds())
        world.now = due
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_late_instance_supersedes_and_completes_again(world: World) -> None:
    assembler = world.assembler()
    study = make_uid("late")
    world.receive("irk-cami", study, 1)
    assert assembler.complete(study)
    first = assembler.tick()
    assert len(first) == 1
    last = world.receive("irk-cami", study, 2)
    assert world.study(study).state == "superseded"
    assert world.study(study).completed_at == first[0].completed_at  # kept until it completes
    world.now = last + timedelta(seconds=10)
    again = assembler.tick()
    assert [c.study_uid for c in again] == [study]
    assert again[0].completed_at == world.now != first[0].completed_at
    assert world.states(study) == ["receiving", "complete", "superseded", "complete"]
