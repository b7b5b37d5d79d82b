"""A finding: what a device said about one label, and where — written by inference, read by
the result builders.

Coordinates are source pixel indices (floats, pixel centres at ``i + 0.5``): ``(row,
column)`` in the image ``sop_instance_uid`` for 2D devices, ``(slice, row, column)`` in the
volume for 3D devices, where slice indexes the series in volume order
(:func:`gateway.inference.decode.volume_order`) and ``sop_instance_uid`` is the slice through
the centre. ``findings.location`` keeps the JSON shape it has had since migration 0002, so
rows written before this model existed read back unchanged.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.index.tables import FindingRow

Box = tuple[tuple[float, float], ...]  # (start, stop) per axis, pixel edges


class Location(BaseModel):
    """Where a finding is in the source images; every field empty: not located."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    centre: tuple[float, ...] | None = None
    box: Box | None = None
    slice_index: int | None = Field(default=None, ge=0, description="3D: the centre slice")
    sop_instance_uid: str | None = None
    mask_key: str | None = Field(default=None, description="Object-store key of the mask")

    @field_validator("box", mode="before")
    @classmethod
    def _empty_box_is_none(cls, value: object) -> object:
        # Rows store a centre without a box as "box": [].
        return None if value == [] or value == () else value

    @property
    def empty(self) -> bool:
        return self == Location()

    @classmethod
    def stored(cls, value: dict[str, Any] | None) -> Location:
        """A ``findings.location`` value as written by any version; None: not located."""
        return cls.model_validate(value or {})

    def to_stored(self) -> dict[str, Any] | None:
        """The ``findings.location`` JSON: a centre always comes with its (maybe empty) box,
        a location with nothing in it is null."""
        data: dict[str, Any] = {}
        if self.centre is not None:
            data["centre"] = list(self.centre)
            data["box"] = [list(axis) for axis in self.box or ()]
        if self.slice_index is not None:
            data["slice_index"] = self.slice_index
        if self.sop_instance_uid is not None:
            data["sop_instance_uid"] = self.sop_instance_uid
        if self.mask_key is not None:
            data["mask_key"] = self.mask_key
        return data or None


class Finding(BaseModel):
    """One label's answer: probability, decision against the device's threshold, location
    and sizes (``max_diameter_mm``, ``volume_mm3``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label_code: str
    label_scheme: str  # "SCT", "DCM", … (DICOM coding scheme designator)
    label_ru: str
    label_en: str
    probability: float
    threshold: float
    positive: bool
    location: Location = Field(default_factory=Location)
    measurements: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def from_row(cls, row: FindingRow) -> Finding:
        return cls(
            label_code=row.label_code,
            label_scheme=row.label_scheme,
            label_ru=row.label_ru,
            label_en=row.label_en,
            probability=row.probability,
            threshold=row.threshold,
            positive=row.positive,
            location=Location.stored(row.location),
            measurements=dict(row.measurements or {}),
        )

    def to_row(self, job_id: int) -> FindingRow:
        return FindingRow(**self.row_values(job_id))

    def row_values(self, job_id: int) -> dict[str, Any]:
        """The row's columns, for a bulk insert (no ORM object per finding)."""
        return {
            "job_id": job_id,
            "label_code": self.label_code,
            "label_scheme": self.label_scheme,
            "label_ru": self.label_ru,
            "label_en": self.label_en,
            "probability": self.probability,
            "threshold": self.threshold,
            "positive": self.positive,
            "location": self.location.to_stored(),
            "measurements": dict(self.measurements),
        }

    def with_location(self, **changes: Any) -> Self:
        """This finding with some location fields changed (validated)."""
        location = Location.model_validate({**self.location.model_dump(), **changes})
        return self.model_copy(update={"location": location})
