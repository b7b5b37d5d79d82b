"""Notices through the outbox to a real HTTP receiver: a malfunction notice when a device
version fails too often over a day, the month's usage reports, each queued and delivered
once; and the destinations file says which receiver takes them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from gateway.delivery.destinations import Destinations, DestinationsFile
from gateway.delivery.outbox import OutboxDispatcher
from gateway.delivery.send import Delivery
from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from gateway.index.tables import utcnow
from gateway.monitoring.notices import (
    MalfunctionNotice,
    MalfunctionParams,
    check_malfunctions,
    list_notices,
    queue_usage_reports,
)
from gateway.monitoring.report import Period
from tests.control_plane_data import Seed, prepare_index, register_devices, seed
from tests.services import ROOT, RegionalSystem

SCHEMA = json.loads((ROOT / "docs" / "usage-report.schema.json").read_text(encoding="utf-8"))


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Database, Seed, RegionalSystem, Destinations]]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    prepare_index(db)
    store = FolderStore(tmp_path / "objects")
    register_devices(db, store, tmp_path / "devices")
    data = seed(db, store, utcnow())
    receiver = RegionalSystem()
    receiver.start()
    destinations = Destinations(
        DestinationsFile.model_validate(
            {
                "destinations": [
                    {"name": "rzn", "protocol": "http", "kinds": ["monitoring"],
                     "url": f"http://127.0.0.1:{receiver.port}/notices"},
                    {"name": "region", "protocol": "http", "url": "http://127.0.0.1:9/semd"},
                ],
                "default": ["region"],
            }
        )
    )  # fmt: skip
    yield db, data, receiver, destinations
    receiver.stop()
    db.dispose()


def _deliver(db: Database, destinations: Destinations, tmp: Path) -> int:
    delivery = Delivery(db, FolderStore(tmp / "unused"), destinations, "AIGW", 10.0)
    return OutboxDispatcher(db, delivery, 1.0, 0.1, 1.0, 30.0).run_once()


def test_a_device_failing_too_often_over_a_day_gets_one_malfunction_notice(
    seeded: tuple[Database, Seed, RegionalSystem, Destinations], tmp_path: Path
) -> None:
    db, data, receiver, destinations = seeded
    targets = destinations.for_monitoring()
    assert [t.name for t in targets] == ["rzn"]
    # dev-cxr in the last day: 5 finished jobs, 1 failed (tula-failed): 20 %.
    assert check_malfunctions(db, targets, MalfunctionParams(0.2, 5), data.now) == []
    assert check_malfunctions(db, targets, MalfunctionParams(0.1, 6), data.now) == []
    key = f"malfunction:dev-cxr@1.0.0:{data.now.date().isoformat()}"
    assert check_malfunctions(db, targets, MalfunctionParams(0.1, 5), data.now) == [key]
    assert check_malfunctions(db, targets, MalfunctionParams(0.1, 5), data.now) == []
    assert _deliver(db, destinations, tmp_path) == 1
    (post,) = receiver.received
    assert (post["key"], post["path"]) == (key, "/notices")
    notice = MalfunctionNotice.model_validate(post["json"])
    assert (notice.device, notice.finished_jobs, notice.failed_jobs) == ("dev-cxr", 5, 1)
    assert notice.regions == ["38", "71", "77"] and notice.by_reason[0].reason == "decode failed"
    (listed,) = list_notices(db)
    assert listed.deliveries == {"rzn": "delivered"}
    # A day later the failures have left the window: nothing more.
    later = data.now + timedelta(days=1)
    assert check_malfunctions(db, targets, MalfunctionParams(0.0, 1), later) == []


def test_the_months_usage_reports_are_queued_and_delivered_once_per_device_version(
    seeded: tuple[Database, Seed, RegionalSystem, Destinations], tmp_path: Path
) -> None:
    db, data, receiver, destinations = seeded
    targets = destinations.for_monitoring()
    period = Period.of(f"{data.now:%Y-%m}")
    versions = sorted(
        {f"{d}@1.0.0" for s in data.studies for d in s.devices
         if f"{data.now - s.finished_ago:%Y-%m}" == period.month}
    )  # fmt: skip
    created = queue_usage_reports(db, targets, period, data.now)
    assert created == [f"usage:{v}:{period.month}" for v in versions]
    assert queue_usage_reports(db, targets, period, data.now) == []
    assert queue_usage_reports(db, [], Period.of("2001-01")) == []  # nowhere to send
    assert _deliver(db, destinations, tmp_path) == len(versions)
    assert _deliver(db, destinations, tmp_path) == 0
    assert sorted(p["key"] for p in receiver.received) == sorted(created)
    for post in receiver.received:
        jsonschema.validate(post["json"], SCHEMA)
        (record,) = post["json"]["records"]
        assert post["key"] == f"usage:{record['device']}@{record['version']}:{period.month}"


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ({"protocol": "http", "url": "http://127.0.0.1:9/x", "kinds": ["semd", "monitoring"]},
         "either the SEMD"),
        ({"protocol": "dicom", "host": "h", "port": 104, "ae_title": "A",
          "kinds": ["sr", "monitoring"]}, "takes DICOM results, not monitoring"),
        ({"protocol": "stow", "url": "http://127.0.0.1:9/x", "kinds": ["monitoring"]},
         "takes DICOM results, not monitoring"),
    ],
)  # fmt: skip
def test_only_an_http_destination_of_its_own_takes_the_notices(
    destination: dict[str, object], message: str
) -> None:
    entry = {"name": "x", **destination}
    with pytest.raises(ValidationError, match=message):
        DestinationsFile.model_validate({"destinations": [entry]})
