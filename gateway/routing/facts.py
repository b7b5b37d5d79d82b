"""What routing knows about a study: :class:`StudyFacts` and its :class:`SeriesFacts`,
gathered from the index (:func:`facts_from_index`) or from DICOM headers
(:func:`facts_from_datasets`) — the same attributes either way."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import Field
from pydicom import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.errors import GatewayError, UnknownStudy
from gateway.index.tables import InstanceRow, SeriesRow, StudyRow
from gateway.ingest.tags import patient_age_years
from gateway.routing.rules import StrictModel

AXIAL_MIN_COSINE = 0.8  # |normal · z| ≥ 0.8: axial up to ~37° of gantry tilt


class RoutingError(GatewayError):
    """The facts cannot be gathered (e.g. files from several studies given as one)."""


class SeriesFacts(StrictModel):
    """What routing needs to know about one series (aggregated over its current instances)."""

    series_uid: str
    modality: str | None = None
    body_part: str | None = None
    series_description: str | None = None
    protocol_name: str | None = None
    series_number: int | None = None
    image_types: list[str] = Field(default_factory=list, description='e.g. "ORIGINAL\\PRIMARY"')
    sop_classes: list[str] = Field(default_factory=list)
    slice_thicknesses: list[float] = Field(default_factory=list, description="Distinct, mm")
    orientation: tuple[float, float, float, float, float, float] | None = Field(
        default=None, description="ImageOrientationPatient most instances share"
    )
    instance_count: int = Field(default=0, ge=0)
    frame_count: int | None = Field(default=None, ge=0, description="Σ NumberOfFrames (or 1)")
    photometrics: list[str] = Field(default_factory=list)
    view_positions: list[str] = Field(default_factory=list)

    @property
    def images(self) -> int:
        return self.frame_count if self.frame_count is not None else self.instance_count

    @property
    def image_type_tokens(self) -> set[str]:
        return {t.strip().upper() for v in self.image_types for t in v.split("\\") if t.strip()}

    @property
    def axial(self) -> bool:
        if self.orientation is None:
            return False
        r, c = self.orientation[:3], self.orientation[3:]
        normal_z = r[0] * c[1] - r[1] * c[0]
        norm = math.hypot(*r) * math.hypot(*c)
        return norm > 0 and abs(normal_z) / norm >= AXIAL_MIN_COSINE

    def summary(self) -> str:
        count = self.instance_count
        images = f"{count} instance{'s' if count != 1 else ''}"
        if self.images != count:
            images += f", {self.images} frames"
        what = [self.modality or "no Modality", self.body_part or "no BodyPartExamined"]
        if self.series_description:
            what.append(repr(self.series_description))
        return f"series {self.series_uid or '(no SeriesInstanceUID)'} ({', '.join(what)}, {images})"


class StudyFacts(StrictModel):
    study_uid: str
    source: str | None = None
    region: str | None = None
    patient_age_years: int | None = None
    study_description: str | None = None
    series: list[SeriesFacts] = Field(default_factory=list)


@dataclass
class _Image:
    """One current instance's routing attributes (from the index or a dataset)."""

    sop_class: str | None = None
    image_type: str | None = None
    slice_thickness: float | None = None
    orientation: str | None = None
    frames: int | None = None
    photometric: str | None = None
    view_position: str | None = None


@dataclass
class _Series:
    uid: str
    modality: str | None = None
    body_part: str | None = None
    description: str | None = None
    protocol: str | None = None
    number: int | None = None
    images: list[_Image] = field(default_factory=list)

    def facts(self) -> SeriesFacts:
        def distinct(values: Iterable[str | None]) -> list[str]:
            return sorted({v for v in values if v})

        orientations = Counter(
            o for o in (_orientation(i.orientation) for i in self.images) if o is not None
        )
        thicknesses = {i.slice_thickness for i in self.images if i.slice_thickness is not None}
        return SeriesFacts(
            series_uid=self.uid,
            modality=self.modality,
            body_part=self.body_part,
            series_description=self.description,
            protocol_name=self.protocol,
            series_number=self.number,
            image_types=distinct(i.image_type for i in self.images),
            sop_classes=distinct(i.sop_class for i in self.images),
            slice_thicknesses=sorted(thicknesses),
            orientation=orientations.most_common(1)[0][0] if orientations else None,
            instance_count=len(self.images),
            frame_count=sum(max(i.frames or 1, 1) for i in self.images),
            photometrics=distinct(i.photometric for i in self.images),
            view_positions=distinct((i.view_position or "").upper() for i in self.images),
        )


def _orientation(text: str | None) -> tuple[float, float, float, float, float, float] | None:
    try:
        values = [round(float(v), 3) for v in (text or "").split("\\")]
    except ValueError:
        return None
    if len(values) != 6:
        return None
    return values[0], values[1], values[2], values[3], values[4], values[5]


def facts_from_index(session: Session, study_uid: str) -> StudyFacts:
    """The study as indexed (current version of every instance); raises UnknownStudy."""
    study = session.scalars(select(StudyRow).where(StudyRow.study_uid == study_uid)).one_or_none()
    if study is None:
        raise UnknownStudy(f"no study {study_uid}")
    rows = session.execute(
        select(SeriesRow, InstanceRow)
        .outerjoin(InstanceRow, InstanceRow.series_id == SeriesRow.id)
        .where(SeriesRow.study_id == study.id)
        .order_by(SeriesRow.id, InstanceRow.version)
    ).all()
    series: dict[int, _Series] = {}
    current: dict[int, dict[str, _Image]] = {}
    for row, instance in rows:
        if row.id not in series:
            series[row.id] = _Series(
                uid=row.series_uid,
                modality=row.modality,
                body_part=row.body_part,
                description=row.series_description,
                protocol=row.protocol_name,
                number=row.series_number,
            )
            current[row.id] = {}
        if instance is not None:  # a later version replaces an earlier one
            current[row.id][instance.sop_instance_uid] = _Image(
                sop_class=instance.sop_class_uid,
                image_type=instance.image_type,
                slice_thickness=instance.slice_thickness,
                orientation=instance.image_orientation,
                frames=instance.number_of_frames,
                photometric=instance.photometric_interpretation,
                view_position=instance.view_position,
            )
    for series_id, images in current.items():
        series[series_id].images = list(images.values())
    return StudyFacts(
        study_uid=study.study_uid,
        source=study.source.name,
        region=study.region_code,
        patient_age_years=study.patient_age_years,
        study_description=study.study_description,
        series=[s.facts() for s in series.values()],
    )


def facts_from_datasets(
    datasets: Iterable[Dataset], source: str | None = None, region: str | None = None
) -> StudyFacts:
    """Facts for the datasets of one study (headers suffice: read with stop_before_pixels).

    Reading is lenient — a file the SCP would refuse is still explained; raises
    :class:`RoutingError` when the datasets belong to more than one study.
    """
    datasets = list(datasets)
    studies = {dataset_text(ds, "StudyInstanceUID") or "" for ds in datasets}
    if len(studies) != 1:
        raise RoutingError(f"datasets must belong to one study; got {len(studies)}")
    series: dict[str, _Series] = {}
    seen: dict[str, dict[str, _Image]] = {}  # per series, per SOP Instance UID: the last copy
    for number, ds in enumerate(datasets):
        uid = dataset_text(ds, "SeriesInstanceUID") or ""
        entry = series.setdefault(uid, _Series(uid))
        entry.modality = entry.modality or dataset_text(ds, "Modality")
        entry.body_part = entry.body_part or dataset_text(ds, "BodyPartExamined")
        entry.description = entry.description or dataset_text(ds, "SeriesDescription")
        entry.protocol = entry.protocol or dataset_text(ds, "ProtocolName")
        entry.number = entry.number if entry.number is not None else _int(ds, "SeriesNumber")
        seen.setdefault(uid, {})[dataset_text(ds, "SOPInstanceUID") or f"#{number}"] = _Image(
            sop_class=dataset_text(ds, "SOPClassUID"),
            image_type=dataset_text(ds, "ImageType"),
            slice_thickness=_float(ds, "SliceThickness"),
            orientation=dataset_text(ds, "ImageOrientationPatient"),
            frames=_int(ds, "NumberOfFrames"),
            photometric=dataset_text(ds, "PhotometricInterpretation"),
            view_position=dataset_text(ds, "ViewPosition"),
        )
    for uid, images in seen.items():
        series[uid].images = list(images.values())
    first = datasets[0] if datasets else Dataset()
    try:
        age = patient_age_years(first)
    except Exception:  # a damaged element can raise nearly anything from pydicom
        age = None
    return StudyFacts(
        study_uid=studies.pop(),
        source=source,
        region=region,
        patient_age_years=age,
        study_description=dataset_text(first, "StudyDescription"),
        series=[s.facts() for s in series.values()],
    )


def dataset_text(ds: Dataset, keyword: str) -> str | None:
    """The element as text (multi-values joined by backslashes), None when absent, empty or
    unreadable."""
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None:
        return None
    parts = value if isinstance(value, MultiValue | list | tuple) else [value]
    text = "\\".join(str(part).strip() for part in parts).strip().strip("\x00").strip()
    return text or None


def _float(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    number = _float(ds, keyword)
    return int(number) if number is not None and number.is_integer() else None
