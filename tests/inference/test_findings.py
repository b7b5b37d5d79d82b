"""The finding as recorded: the ``findings.location`` JSON keeps its shape, rows written
before the typed model read back the same, and a bad location is refused by name."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.index.tables import FindingRow
from gateway.inference.findings import Finding, Location

# Locations as inference wrote them before the model existed (migration 0002's JSON).
STORED: list[dict[str, Any] | None] = [
    None,  # a 3D classifier: not located
    {"sop_instance_uid": "1.2.3.1"},  # a 2D classifier: the image, no point
    {"centre": [318.5, 737.5], "box": [], "sop_instance_uid": "1.2.3.1"},  # a CAM peak
    {
        "centre": [305.25, 723.5],
        "box": [[290.0, 320.5], [708.0, 739.0]],
        "sop_instance_uid": "1.2.3.1",
    },
    {
        "centre": [17.5, 43.0, 11.0],
        "box": [[16.0, 19.0], [40.0, 46.0], [8.0, 14.0]],
        "slice_index": 18,
        "sop_instance_uid": "1.2.3.19",
        "mask_key": "results/masks/job-7/27925004.npz",
    },
]


def row(location: dict[str, Any] | None) -> FindingRow:
    return FindingRow(
        job_id=7,
        label_code="27925004",
        label_scheme="SCT",
        label_ru="Узел",
        label_en="Nodule",
        probability=0.87,
        threshold=0.5,
        positive=True,
        location=location,
        measurements={"max_diameter_mm": 9.5},
    )


@pytest.mark.parametrize("stored", STORED)
def test_every_stored_shape_reads_back_and_is_written_unchanged(
    stored: dict[str, Any] | None,
) -> None:
    finding = Finding.from_row(row(stored))
    assert finding.location.to_stored() == stored
    written = finding.to_row(7)
    assert written.location == stored
    assert (written.label_code, written.probability, written.positive) == ("27925004", 0.87, True)
    assert written.measurements == {"max_diameter_mm": 9.5}


def test_a_location_is_typed() -> None:
    location = Finding.from_row(row(STORED[4])).location
    assert location.centre == (17.5, 43.0, 11.0)
    assert location.box == ((16.0, 19.0), (40.0, 46.0), (8.0, 14.0))
    assert (location.slice_index, location.sop_instance_uid) == (18, "1.2.3.19")
    assert location.mask_key == "results/masks/job-7/27925004.npz"
    assert Finding.from_row(row(STORED[2])).location.box is None  # "box": [] means none
    assert Location.stored(None).empty and not location.empty


def test_with_location_changes_only_what_it_names() -> None:
    finding = Finding.from_row(row(STORED[3]))
    moved = finding.with_location(sop_instance_uid="1.2.3.2")
    assert moved.location.sop_instance_uid == "1.2.3.2"
    assert moved.location.box == finding.location.box
    assert finding.location.sop_instance_uid == "1.2.3.1"  # frozen: the original stays


@pytest.mark.parametrize(
    ("stored", "field"),
    [
        ({"centre": [1.0, 2.0], "box": [], "sop_instance_uid": "1.2", "colour": "red"}, "colour"),
        ({"centre": ["left", 2.0], "box": []}, "centre"),
        ({"centre": [1.0, 2.0], "box": [[1.0, 2.0, 3.0]]}, "box"),
        ({"slice_index": -1}, "slice_index"),
    ],
)
def test_a_damaged_location_is_refused_by_name(stored: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Finding.from_row(row(stored))
