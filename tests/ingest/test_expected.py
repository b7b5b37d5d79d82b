"""Expected counts without a network: the archive is asked once per study however often the
assembler ticks, asked again only after ``refresh_s``, and left alone while it is away."""

from __future__ import annotations

import pytest

from gateway.ingest.expected import Candidate, ExpectedCounts
from gateway.ingest.sources import ArchiveQuery, Source
from pacs_adapters.dicom_scu import ScuError

QUERY = ArchiveQuery(host="pacs", port=104, ae_title="PACS", refresh_s=30.0)
SOURCE = Source(name="s", ae_title="S", region="38", query=QUERY)


class Archive:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.asked: list[str] = []
        self.away = False

    def find(self, query: ArchiveQuery, calling_ae: str, study_uid: str) -> int | None:
        assert (query, calling_ae) == (QUERY, "AIGW")
        self.asked.append(study_uid)
        if self.away:
            raise ScuError("cannot associate")
        return self.counts.get(study_uid)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_one_question_per_study_however_many_instances_arrive(clock: Clock) -> None:
    archive = Archive({"1.2.3": 50})
    counts = ExpectedCounts("AIGW", archive.find, clock)
    for held in range(1, 50):
        assert counts.ready([Candidate("1.2.3", SOURCE, held)]) == []
        clock.now += 0.5
    assert archive.asked == ["1.2.3"]  # 49 ticks within refresh_s: one C-FIND
    assert counts.ready([Candidate("1.2.3", SOURCE, 50)]) == ["1.2.3"]
    assert archive.asked == ["1.2.3"]


def test_a_stale_answer_is_asked_again_while_instances_are_missing(clock: Clock) -> None:
    archive = Archive({"1.2.3": 5})
    counts = ExpectedCounts("AIGW", archive.find, clock)
    assert counts.ready([Candidate("1.2.3", SOURCE, 3)]) == []
    archive.counts["1.2.3"] = 3  # the archive's own count was ahead of what it keeps
    clock.now += 31
    assert counts.ready([Candidate("1.2.3", SOURCE, 3)]) == ["1.2.3"]
    assert archive.asked == ["1.2.3", "1.2.3"]


def test_an_archive_away_is_asked_once_per_refresh_for_all_its_studies(clock: Clock) -> None:
    archive = Archive({"1.1": 1, "2.2": 1})
    archive.away = True
    counts = ExpectedCounts("AIGW", archive.find, clock)
    both = [Candidate("1.1", SOURCE, 1), Candidate("2.2", SOURCE, 1)]
    assert counts.ready(both) == []
    assert counts.ready(both) == []
    assert archive.asked == ["1.1"]  # the second study is not asked while the archive is away
    archive.away = False
    clock.now += 31
    assert counts.ready(both) == ["1.1", "2.2"]


def test_a_study_no_longer_open_is_forgotten_and_asked_anew_when_reopened(clock: Clock) -> None:
    archive = Archive({"1.2.3": 2})
    counts = ExpectedCounts("AIGW", archive.find, clock)
    assert counts.ready([Candidate("1.2.3", SOURCE, 2)]) == ["1.2.3"]
    assert counts.ready([]) == []  # completed: not a candidate any more
    assert counts.known("1.2.3") is None
    archive.counts["1.2.3"] = 3  # reopened by a late instance
    assert counts.ready([Candidate("1.2.3", SOURCE, 3)]) == ["1.2.3"]
    assert archive.asked == ["1.2.3", "1.2.3"]
