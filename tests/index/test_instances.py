"""A series' current instances: the newest version of each, in one order on SQLite and
PostgreSQL alike (they sort NULL at opposite ends unless told)."""

from __future__ import annotations

import pytest

from gateway.index.database import Database
from gateway.index.instances import current_instance_keys
from gateway.index.tables import (
    InstanceRow,
    RegionRow,
    SeriesRow,
    SourceRow,
    StudyRow,
    utcnow,
)


@pytest.fixture
def db(migrated: Database) -> Database:
    return migrated


def _add_series(
    db: Database, series_uid: str, instances: list[tuple[str, int, int | None]]
) -> None:
    """``instances``: (SOP Instance UID, version, Instance Number); key = uid@version."""
    now = utcnow()
    with db.session() as session:
        if session.get(RegionRow, "38") is None:
            session.add(RegionRow(code="38", name="Иркутская"))
            session.add(SourceRow(name="irk", ae_title="IRK", region_code="38"))
            session.flush()
            source = session.query(SourceRow).one()
            session.add(
                StudyRow(
                    study_uid="1.2.9",
                    source_id=source.id,
                    region_code="38",
                    state="complete",
                    first_received_at=now,
                    last_received_at=now,
                    state_changed_at=now,
                )
            )
            session.flush()
        study = session.query(StudyRow).one()
        series = SeriesRow(
            study_id=study.id, series_uid=series_uid, first_received_at=now, last_received_at=now
        )
        session.add(series)
        session.flush()
        for sop_uid, version, number in instances:
            session.add(
                InstanceRow(
                    series_id=series.id,
                    sop_instance_uid=sop_uid,
                    version=version,
                    object_key=f"{sop_uid}@{version}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    size_bytes=1,
                    sha256=f"{sop_uid}-{version}".ljust(64, "0"),
                    instance_number=number,
                    calling_ae="IRK",
                    received_at=now,
                )
            )


def test_the_newest_version_of_each_instance_in_instance_number_order(db: Database) -> None:
    _add_series(
        db,
        "1.2.9.1",
        [
            ("1.2.9.1.3", 1, 3),
            ("1.2.9.1.1", 1, 1),
            ("1.2.9.1.1", 2, 1),  # sent again: version 2 is the current one
            ("1.2.9.1.9", 1, None),  # no Instance Number: after the numbered ones
            ("1.2.9.1.2", 1, 2),
            ("1.2.9.1.8", 1, None),
        ],
    )
    _add_series(db, "1.2.9.2", [("1.2.9.2.1", 1, 1)])
    with db.session() as session:
        assert current_instance_keys(session, ["1.2.9.1"]) == [
            "1.2.9.1.1@2",
            "1.2.9.1.2@1",
            "1.2.9.1.3@1",
            "1.2.9.1.8@1",
            "1.2.9.1.9@1",
        ]
        both = current_instance_keys(session, ("1.2.9.1", "1.2.9.2"))
        assert both[:2] == ["1.2.9.1.1@2", "1.2.9.2.1@1"] and len(both) == 6
        assert current_instance_keys(session, ["1.2.9.404"]) == []
