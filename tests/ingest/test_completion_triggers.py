"""Completion triggers with real peers: DCMTK storescu releasing or aborting its association,
Orthanc as the archive answering the gateway's C-FIND for the expected count, and Orthanc
followed through its /changes (StableStudy).

Every source's quiet period is 300 s, so a study complete within a test was completed by the
trigger under test, never by the timer. The assembler's poll interval is an hour: a study
handed over within the test was handed over because the release woke the assembler.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.index.tables import InstanceRow, OrthancCursorRow, SeriesRow, StudyEventRow, StudyRow
from gateway.ingest.assembly import StudyCompleted
from gateway.ingest.orthanc_follow import OrthancFollower
from gateway.ingest.receive import Ingest
from gateway.settings import Settings
from tests.services import Orthanc, free_port, make_uid, storescu, write_ct_series
from workers.serve import Gateway

QUIET_S = 300.0
HOUR_S = 3600.0
RELEASE_AE, QUERY_AE, DOWN_AE = "RELEASE_SCU", "QUERY_SCU", "DOWN_SCU"


def _sources(folder: Path, archive_port: int) -> Path:
    sources = {
        "sources": [
            {
                "name": "one-per-association",
                "ae_title": RELEASE_AE,
                "region": "38",
                "complete_on_release": True,
            },
            {
                "name": "asks-its-archive",
                "ae_title": QUERY_AE,
                "region": "38",
                "query": {"host": "127.0.0.1", "port": archive_port, "ae_title": "ORTHANC"},
            },
            {
                "name": "archive-away",
                "ae_title": DOWN_AE,
                "region": "38",
                "query": {"host": "127.0.0.1", "port": free_port(), "ae_title": "NOBODY"},
            },
        ]
    }
    path = folder / "sources.yaml"
    path.write_text(json.dumps(sources))  # JSON is YAML
    return path


class Running:
    def __init__(self, gateway: Gateway, handed_over: list[StudyCompleted]) -> None:
        self.gateway = gateway
        self.handed_over = handed_over

    @property
    def port(self) -> int:
        return self.gateway.parts.settings.dicom_port

    def study(self, study_uid: str) -> StudyRow | None:
        with self.gateway.parts.db.session() as session:
            return session.scalars(select(StudyRow).where(StudyRow.study_uid == study_uid)).first()

    def completion_reasons(self, study_uid: str) -> list[str]:
        with self.gateway.parts.db.session() as session:
            details = session.scalars(
                select(StudyEventRow.detail)
                .join(StudyRow)
                .where(StudyRow.study_uid == study_uid, StudyEventRow.state == "complete")
            )
            return [str(detail.get("reason")) for detail in details]

    def wait_for(self, what: str, condition: Callable[[], bool], within_s: float = 60.0) -> None:
        # A bound on a failing test's wait, far below the 300 s quiet period; not a timing
        # assertion.
        deadline = time.monotonic() + within_s
        while not condition():
            assert time.monotonic() < deadline, f"still waiting for {what}"
            time.sleep(0.05)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    # StableAge 1: a study is stable one second after its last instance (default 60 s).
    archive = Orthanc(tmp_path / "orthanc", config={"DicomAlwaysAllowFind": True, "StableAge": 1})
    archive.start()
    try:
        yield archive
    finally:
        archive.stop()


@pytest.fixture
def running(
    tmp_path: Path,
    orthanc: Orthanc,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> Running:
    handed_over: list[StudyCompleted] = []
    settings = make_settings(
        sources_file=_sources(tmp_path, orthanc.dicom_port),
        quiet_period_s=QUIET_S,
        assembly_poll_s=HOUR_S,
    )
    return Running(start_gateway(settings, on_complete=handed_over.append), handed_over)


def _study(folder: Path, n: int, seed: str) -> tuple[str, list[Path]]:
    study_uid = make_uid("completion", seed)
    return study_uid, write_ct_series(folder / seed, n, study_uid=study_uid, seed=seed)


def test_a_released_association_completes_its_study_and_wakes_the_hand_over(
    running: Running, tmp_path: Path
) -> None:
    study_uid, files = _study(tmp_path, 3, "released")
    sent = storescu(running.port, files, calling_ae=RELEASE_AE)
    assert sent.returncode == 0, sent.stderr

    running.wait_for(
        "the hand-over", lambda: study_uid in {c.study_uid for c in running.handed_over}
    )
    assert running.completion_reasons(study_uid) == ["association_released"]

    # The hook runs before the assembler settles the study in a transaction of its own:
    # until then next_attempt_at is the hand-over's lease, then nothing is due.
    def settled() -> bool:
        study = running.study(study_uid)
        return study is not None and study.next_attempt_at is None

    running.wait_for("the study settled, nothing due", settled)


def test_an_aborted_association_leaves_its_study_to_the_quiet_period(
    running: Running, tmp_path: Path
) -> None:
    study_uid, files = _study(tmp_path, 2, "aborted")
    sent = storescu(running.port, files, calling_ae=RELEASE_AE, extra=["--abort"])
    assert sent.returncode == 0, sent.stderr
    releases = running.gateway.scp.releases if running.gateway.scp else None
    assert releases is not None
    running.wait_for("the abort to be handled", lambda: releases.pending() == 0)

    running.gateway.assembler.tick()
    study = running.study(study_uid)
    assert study is not None and study.state == "receiving"
    assert running.completion_reasons(study_uid) == []

    # The same sender releasing a second association for the study completes it.
    again = storescu(running.port, files[:1], calling_ae=RELEASE_AE)
    assert again.returncode == 0, again.stderr
    running.wait_for("completion on release", lambda: bool(running.completion_reasons(study_uid)))
    assert running.completion_reasons(study_uid) == ["association_released"]


def test_the_archives_expected_count_completes_the_study_once_all_are_held(
    running: Running, orthanc: Orthanc, tmp_path: Path
) -> None:
    study_uid, files = _study(tmp_path, 3, "expected")
    to_archive = storescu(orthanc.dicom_port, files, calling_ae="MODALITY", called_ae="ORTHANC")
    assert to_archive.returncode == 0, to_archive.stderr
    assert orthanc.instance_count() == 3

    first = storescu(running.port, files[:2], calling_ae=QUERY_AE)
    assert first.returncode == 0, first.stderr
    running.gateway.assembler.tick()
    expected = running.gateway.assembler.expected
    assert expected is not None and expected.known(study_uid) == 3
    study = running.study(study_uid)
    assert study is not None and study.state == "receiving"  # 2 of 3: not yet

    rest = storescu(running.port, files[2:], calling_ae=QUERY_AE)
    assert rest.returncode == 0, rest.stderr
    running.gateway.assembler.tick()
    assert running.completion_reasons(study_uid) == ["expected_count"]
    assert study_uid in {c.study_uid for c in running.handed_over}


def test_a_study_the_archive_does_not_know_waits_for_its_quiet_period(
    running: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study_uid, files = _study(tmp_path, 1, "unknown-to-archive")
    sent = storescu(running.port, files, calling_ae=QUERY_AE)
    assert sent.returncode == 0, sent.stderr
    for _ in range(3):
        running.gateway.assembler.tick()
    study = running.study(study_uid)
    assert study is not None and study.state == "receiving"
    warnings = [r for r in caplog.records if "archive does not know the study" in r.getMessage()]
    assert len(warnings) == 1


def test_an_archive_that_does_not_answer_falls_back_to_the_quiet_period(
    running: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study_uid, files = _study(tmp_path, 1, "archive-away")
    sent = storescu(running.port, files, calling_ae=DOWN_AE)
    assert sent.returncode == 0, sent.stderr
    for _ in range(3):
        running.gateway.assembler.tick()
    study = running.study(study_uid)
    assert study is not None and study.state == "receiving"
    warnings = [r for r in caplog.records if "did not answer the C-FIND" in r.getMessage()]
    assert len(warnings) == 1
    assert study_uid == getattr(warnings[0], "study_uid", None)


def test_a_study_orthanc_reports_stable_is_fetched_and_completed_once(
    tmp_path: Path,
    orthanc: Orthanc,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> None:
    follow = {"url": orthanc.url, "poll_s": 0.2}
    sources = tmp_path / "followed.yaml"
    sources.write_text(
        json.dumps(
            {
                "sources": [
                    {"name": "followed", "ae_title": "FOLLOWED", "region": "38", "orthanc": follow}
                ]
            }
        )
    )
    handed_over: list[StudyCompleted] = []
    settings = make_settings(sources_file=sources, quiet_period_s=QUIET_S, assembly_poll_s=HOUR_S)
    running = Running(start_gateway(settings, on_complete=handed_over.append), handed_over)
    study_uid, files = _study(tmp_path, 3, "stable")
    sent = storescu(orthanc.dicom_port, files, calling_ae="MODALITY", called_ae="ORTHANC")
    assert sent.returncode == 0, sent.stderr

    running.wait_for("the hand-over", lambda: study_uid in {c.study_uid for c in handed_over})
    assert running.completion_reasons(study_uid) == ["orthanc_stable_study"]
    parts = running.gateway.parts
    # The follower saves its cursor after it has woken the assembler, which may hand the
    # study over first: wait until the cursor holds Orthanc's last change.
    with urllib.request.urlopen(f"{orthanc.url}/changes?last", timeout=30) as response:
        last = int(json.load(response)["Last"])

    def cursor_saved() -> bool:
        with parts.db.session() as session:
            row = session.get(OrthancCursorRow, parts.source_ids["followed"])
            return row is not None and row.last_change >= last

    running.wait_for("the follower's cursor", cursor_saved)
    with parts.db.session() as session:
        held = session.scalars(
            select(InstanceRow.sop_instance_uid)
            .join(SeriesRow)
            .join(StudyRow)
            .where(StudyRow.study_uid == study_uid)
        ).all()
        cursor = session.get(OrthancCursorRow, parts.source_ids["followed"])
    assert len(held) == 3
    assert cursor is not None and cursor.last_change > 0

    # A restarted follower goes on from the stored cursor: nothing is fetched again.
    source = parts.directory.by_name("followed")
    assert source is not None
    fetched: list[str] = []

    def complete(uid: str, _reason: str) -> bool:
        fetched.append(uid)
        return True

    again = OrthancFollower(
        parts.db,
        Ingest(parts.db, parts.store),
        source,
        parts.source_ids["followed"],
        complete,
        parts.settings.max_instance_bytes,
    )
    assert again.poll() == []
    assert fetched == []
