"""The recorder's group in Core statements, on SQLite and a real PostgreSQL: the jobs
locked in one statement, each write decided as it would be alone (a done job left alone, a
live copy of a delivery skipped, a stale run taken over, an outcome for a job another run
finished dropped, a job's second write seeing its first), the writes, the timeline and the
keys exactly what the one-job path wrote."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from gateway.index.database import Database
from gateway.index.instances import current_instance_keys
from gateway.index.tables import FindingRow, JobRow, StudyEventRow, StudyRow, utcnow
from gateway.inference.findings import Finding
from gateway.inference.lease import Heartbeats
from gateway.inference.record import Outcome, Write, write_group
from gateway.inference.start import Start, StartedJob
from tests.index.conftest import migrated, pg  # noqa: F401 (the fixtures)
from tests.index.test_instances import _add_series


@pytest.fixture
def db(migrated: Database) -> Database:  # noqa: F811
    _add_series(migrated, "1.2.9.1", [("1.2.9.1.2", 1, 2), ("1.2.9.1.1", 1, 1)])
    _add_series(migrated, "1.2.9.2", [("1.2.9.2.1", 1, None), ("1.2.9.2.1", 2, None)])
    _add_series(migrated, "1.2.9.3", [("1.2.9.3.1", 1, 1)])
    return migrated


def _job(db: Database, series: str, state: str, **columns: Any) -> int:
    now = utcnow()
    with db.session() as session:
        study = session.scalars(select(StudyRow)).one()
        job = JobRow(
            study_id=study.id,
            study_completed_at=now,
            series_uid=series,
            series_uids=[series],
            device_key="ref@1",
            study_type="chest_xray",
            service_code="A06",
            rule="r",
            priority=1,
            queue="q",
            state=state,
            attempts=1,
            created_at=now,
            **columns,
        )
        session.add(job)
        session.flush()
        return job.id


def _running(db: Database, series: str, runner: str, beat_age_s: float) -> int:
    beat = utcnow() - timedelta(seconds=beat_age_s)
    return _job(db, series, "running", runner=runner, heartbeat_at=beat)


def _row(db: Database, job_id: int) -> JobRow:
    with db.session() as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _finding(code: str) -> Finding:
    return Finding(
        label_code=code,
        label_scheme="SCT",
        label_ru=code,
        label_en=code,
        probability=0.9,
        threshold=0.5,
        positive=True,
    )


def _write(db: Database, writes: list[Write]) -> list[Any]:
    with db.transaction() as connection:
        return write_group(connection, writes)


def _events(db: Database) -> list[dict[str, Any]]:
    with db.session() as session:
        return [e.detail for e in session.scalars(select(StudyEventRow).order_by(StudyEventRow.id))]


def test_a_mixed_group_decides_each_write_as_alone(db: Database) -> None:
    done = _job(db, "1.2.9.1", "inferred")
    live = _running(db, "1.2.9.1", "t1:0", beat_age_s=1)
    fresh = _job(db, "1.2.9.2", "queued")
    stale = _running(db, "1.2.9.3", "t9:0", beat_age_s=600)  # its worker died
    ended = _running(db, "1.2.9.1", "t5:0", beat_age_s=1)
    finished = _job(db, "1.2.9.1", "failed")  # another run ended it
    with db.transaction() as connection:  # an earlier run's findings, to be replaced
        connection.execute(insert(FindingRow), [_finding("old").row_values(ended)])

    answers = _write(
        db,
        [
            Outcome(finished, [_finding("a")], {"infer": 1.0}),
            Start(done, "t2:0", 30.0),
            Start(live, "t1:0", 30.0),  # a copy of the live delivery
            Start(fresh, "t3:0", 30.0),
            Outcome(ended, [_finding("b"), _finding("c")], {"infer": 2.0}),
            Start(stale, "t4:0", 30.0),
            Start(404_404, "t6:0", 30.0),  # gone
        ],
    )

    assert answers[0] is False and answers[1] is None and answers[2] is None
    assert answers[4] is True and answers[6] is None
    started = {answer.id: answer for answer in answers if isinstance(answer, StartedJob)}
    assert set(started) == {fresh, stale}
    with db.session() as session:
        for job_id, series in ((fresh, "1.2.9.2"), (stale, "1.2.9.3")):
            assert started[job_id].keys == tuple(current_instance_keys(session, [series]))
            assert started[job_id].series_uids == (series,)
    assert started[fresh].keys == ("1.2.9.2.1@2",)  # the newest version
    for job_id, runner in ((fresh, "t3:0"), (stale, "t4:0")):
        row = _row(db, job_id)
        assert (row.state, row.runner, row.attempts) == ("running", runner, 2)
        assert row.started_at is not None and row.heartbeat_at == row.started_at
        assert row.next_attempt_at is None
    held = _row(db, live)
    assert (held.state, held.runner, held.attempts, held.started_at) == ("running", "t1:0", 1, None)
    assert _row(db, done).state == "inferred" and _row(db, finished).state == "failed"
    assert _row(db, finished).timings_ms == {}
    inferred = _row(db, ended)
    assert (inferred.state, inferred.timings_ms) == ("inferred", {"infer": 2.0})
    assert inferred.finished_at is not None and inferred.runner == "t5:0"
    with db.session() as session:
        codes = session.scalars(select(FindingRow.label_code).where(FindingRow.job_id == ended))
        assert sorted(codes) == ["b", "c"]
        assert not session.scalars(select(FindingRow).where(FindingRow.job_id == finished)).all()
    # The timeline, in id order, as set_job_state wrote it one job at a time.
    assert _events(db) == [
        {
            "job_id": fresh,
            "device": "ref@1",
            "series_uid": "1.2.9.2",
            "state": "running",
            "attempt": 2,
        },
        {
            "job_id": stale,
            "device": "ref@1",
            "series_uid": "1.2.9.3",
            "state": "running",
            "attempt": 2,
        },
        {
            "job_id": ended,
            "device": "ref@1",
            "series_uid": "1.2.9.1",
            "state": "inferred",
            "positive": True,
            "timings_ms": {"infer": 2.0},
        },
    ]


def test_a_jobs_later_write_in_the_group_sees_its_earlier_one(db: Database) -> None:
    """Two deliveries of one job in one group: the second finds it running with the first's
    fresh heartbeat (a copy of it is skipped, another delivery takes it over); an outcome
    after a start ends it, and a second outcome is dropped."""
    copied = _job(db, "1.2.9.1", "queued")
    taken = _job(db, "1.2.9.3", "queued")
    answers = _write(
        db,
        [
            Start(copied, "t1:0", 30.0),
            Start(taken, "t2:0", 30.0),
            Start(copied, "t1:0", 30.0),  # its copy
            Start(taken, "t2:1", 30.0),  # its retry: takes over
            Outcome(taken, [], {"infer": 3.0}),
            Outcome(taken, [], {"infer": 4.0}),
        ],
    )
    assert isinstance(answers[0], StartedJob) and answers[2] is None
    assert isinstance(answers[1], StartedJob) and isinstance(answers[3], StartedJob)
    assert answers[1].keys == answers[3].keys == ("1.2.9.3.1@1",)
    assert answers[4:] == [True, False]
    once, twice = _row(db, copied), _row(db, taken)
    assert (once.state, once.runner, once.attempts) == ("running", "t1:0", 2)
    assert (twice.state, twice.runner, twice.attempts) == ("inferred", "t2:1", 3)
    assert twice.timings_ms == {"infer": 3.0}
    assert twice.started_at is not None and twice.finished_at is not None
    states = [(e["job_id"], e["state"], e.get("attempt")) for e in _events(db)]
    assert states == [
        (copied, "running", 2),
        (taken, "running", 2),
        (taken, "running", 3),
        (taken, "inferred", None),
    ]


def test_a_job_of_several_series_reads_the_keys_of_them_all(db: Database) -> None:
    job_id = _job(db, "1.2.9.1", "queued")
    with db.transaction() as connection:
        connection.execute(
            update(JobRow).where(JobRow.id == job_id).values(series_uids=["1.2.9.1", "1.2.9.2"])
        )
    one = _job(db, "1.2.9.1", "queued")
    several, single = _write(db, [Start(job_id, None, 30.0), Start(one, None, 30.0)])
    with db.session() as session:
        both = tuple(current_instance_keys(session, ["1.2.9.1", "1.2.9.2"]))
    assert isinstance(several, StartedJob) and several.keys == both and len(both) == 3
    assert several.series_uids == ("1.2.9.1", "1.2.9.2")
    assert isinstance(single, StartedJob) and single.keys == ("1.2.9.1.1@1", "1.2.9.1.2@1")


def test_groups_and_heartbeats_of_the_same_jobs_never_deadlock(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers whose groups hold the same jobs in opposite orders (each start takes its job
    over, so every row is written), and a heartbeat renewing them all meanwhile: every
    transaction locks its rows in id order, none waits on another in a cycle, and
    PostgreSQL ends none as a deadlock."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [_job(db, "1.2.9.1", "queued") for _ in range(8)]

    def starts(order: list[int]) -> None:
        for _ in range(15):
            _write(db, [Start(job_id, None, 30.0) for job_id in order])

    beats = Heartbeats(db, lease_s=0.003)  # a tick every millisecond
    try:
        with ExitStack() as held:
            for job_id in reversed(jobs):
                held.enter_context(beats.holding(job_id, None))
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(starts, [jobs, jobs[::-1]]))  # raises what a group raised
    finally:
        beats.close()
    assert {_row(db, job_id).attempts for job_id in jobs} == {1 + 2 * 15}
    assert "not renewed" not in caplog.text
