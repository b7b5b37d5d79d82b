"""Routing: which registered AI devices get which series of a completed study, and why.

``configs/routing.yaml`` holds an ordered list of rules. Each rule names the study type it
identifies (НСИ 1471) and conditions on the series and the study; the first rule whose
conditions all hold claims a series. The devices for a claimed series are those enabled for
the study's region that serve the rule's study type and whose manifest ``accepts`` the
series (modality, body part, slice thickness, images, adult only, photometric): the router
never sends a device what it cannot read. Within a study one series is chosen per device
and study type (the thinnest axial CT series, the frontal chest image), or — for
mammography — every accepted series goes into one job for the whole study.

Everything here is pure: :func:`route` takes facts, rules and manifests and returns a
decision that says, per series and rule, what matched or the first condition that failed
with the values seen. ``aigw rules test FILE...`` prints the same explanation for files.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import click
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.dicom_tags import patient_age_years, read_tags
from gateway.errors import ConfigError, GatewayError, InvalidInstance, UnknownStudy
from gateway.tables import InstanceRow, SeriesRow, StudyRow
from gateway.task_queue import Priority
from models.manifest import DeviceManifest, ManifestError, load_manifest
from models.study_types import StudyType, service_code

__all__ = [
    "DeviceCheck",
    "PlannedJob",
    "Priority",
    "RoutingConfigError",
    "RoutingDecision",
    "RoutingRules",
    "Rule",
    "RuleExplanation",
    "Selection",
    "SeriesFacts",
    "SeriesNote",
    "StudyFacts",
    "explain_files",
    "facts_from_datasets",
    "facts_from_index",
    "load_devices",
    "load_rules",
    "route",
    "rules_group",
    "rules_test_command",
]

DEFAULT_RULES = Path("configs/routing.yaml")
DEFAULT_DEVICES = Path("models/zoo")

# Non-image SOP class families: SR (incl. KOS, dose SR), presentation states, encapsulated
# documents, raw data / SEG / registration, RT objects, waveforms, real-world value maps.
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.104.",
    "1.2.840.10008.5.1.4.1.1.66",
    "1.2.840.10008.5.1.4.1.1.481.",
    "1.2.840.10008.5.1.4.1.1.9.",
    "1.2.840.10008.5.1.4.1.1.67",
)
NON_IMAGE_MODALITIES = {
    "SR": "a structured report",
    "KO": "a key object selection",
    "PR": "a presentation state",
    "DOC": "a document",
    "SEG": "a segmentation",
    "REG": "a registration",
    "RWV": "a real-world value map",
    "FID": "fiducials",
    "PLAN": "a plan",
    "AU": "audio",
    "ECG": "a waveform",
    "HD": "a waveform",
    "RTSTRUCT": "an RT object",
    "RTPLAN": "an RT object",
    "RTDOSE": "an RT object",
    "RTRECORD": "an RT object",
}
SCREEN_TOKENS = frozenset({"SCREEN", "SCREEN SAVE", "SCREENSAVE", "SCREENSHOT", "SCREEN CAPTURE"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
_FRONTAL = re.compile(r"\b(PA|AP)\b|прям|фронт|frontal", re.IGNORECASE)
_LATERAL = re.compile(r"\b(LAT|LL|RL)\b|lateral|бок|профил", re.IGNORECASE)
AXIAL_MIN_COSINE = 0.8  # |normal · z| ≥ 0.8: axial up to ~37° of gantry tilt


class RoutingConfigError(ConfigError):
    """``routing.yaml`` is invalid; the message names the rule and the field."""


class RoutingError(GatewayError):
    """The facts cannot be gathered (e.g. files from several studies given as one)."""


# --------------------------------------------------------------------------- rules schema


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _check_regex(pattern: str) -> str:
    try:
        _compiled(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


def _upper_tokens(values: list[str]) -> list[str]:
    return [value.strip().upper() for value in values]


Regex = Annotated[
    str, StringConstraints(min_length=1, max_length=2000), AfterValidator(_check_regex)
]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Uid = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]
Modality = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2,8}$")]
Token = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Tokens = Annotated[list[Token], AfterValidator(_upper_tokens)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _priority(value: object) -> object:
    """Priorities are written by name in the YAML (urgent, high, routine)."""
    if isinstance(value, str):
        try:
            return Priority[value.strip().upper()]
        except KeyError:
            names = ", ".join(p.name.lower() for p in Priority)
            raise ValueError(f"{value!r} is not a priority ({names})") from None
    return value


PriorityName = Annotated[Priority, BeforeValidator(_priority)]


def _word(priority: Priority) -> str:
    return priority.name.lower()


class Selection(StrEnum):
    """How the series for a device are chosen among those a rule claimed in one study."""

    THINNEST_AXIAL = "thinnest_axial"  # CT: one axial series, the thinnest, then the longest
    FRONTAL = "frontal"  # projection X-ray: one PA (else AP) image series, never a lateral
    WHOLE_STUDY = "whole_study"  # one job with every accepted series (mammography's 4 views)
    EACH_SERIES = "each_series"  # one job per accepted series


class NumberRange(_Strict):
    min: float | None = Field(default=None, ge=0)
    max: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> NumberRange:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} > max {self.max:g}")
        return self

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self, unit: str = "") -> str:
        return _range_text(self.min, self.max, unit)


def _range_text(low: float | None, high: float | None, unit: str = "") -> str:
    if low is not None and high is not None:
        return f"{low:g}–{high:g}{unit}"
    if low is not None:
        return f"≥ {low:g}{unit}"
    return f"≤ {high:g}{unit}" if high is not None else "any"


class BodyPartCondition(_Strict):
    """BodyPartExamined (case-insensitive, after aliases) is one of ``any_of``; when it is
    absent, ``if_missing`` (a regex) must match the series' description instead."""

    any_of: Tokens = Field(min_length=1)
    if_missing: Regex | None = None


class ImageTypeCondition(_Strict):
    include: Tokens = Field(default_factory=list, description="Every token must be present")
    exclude: Tokens = Field(default_factory=list, description="No token may be present")


class Conditions(_Strict):
    """Every condition given must hold (AND); an absent condition always holds."""

    sources: list[Token] | None = Field(default=None, min_length=1)
    regions: list[Annotated[str, StringConstraints(pattern=r"^\d{2}$")]] | None = Field(
        default=None, min_length=1
    )
    modalities: list[Modality] | None = Field(default=None, min_length=1)
    sop_classes: list[Uid] | None = Field(default=None, min_length=1)
    exclude_sop_classes: list[Uid] | None = Field(default=None, min_length=1)
    body_part: BodyPartCondition | None = None
    description: Regex | None = Field(
        default=None, description="Must match SeriesDescription, ProtocolName or StudyDescription"
    )
    series_description: Regex | None = None
    study_description: Regex | None = None
    exclude_description: Regex | None = Field(
        default=None, description="Must not match the series' own description (else the study's)"
    )
    image_type: ImageTypeCondition | None = None
    slice_thickness_mm: NumberRange | None = None
    instances: NumberRange | None = Field(default=None, description="Images (frames) in the series")
    patient_age: NumberRange | None = None


class Rule(_Strict):
    name: Name
    title: str = Field(default="", max_length=200)
    study_type: StudyType
    priority: PriorityName = Priority.ROUTINE
    selection: Selection
    match: Conditions
    devices: list[Name] | None = Field(
        default=None, min_length=1, description="Pin: only these device ids (if enabled)"
    )
    zero_age_means_unknown: bool = Field(
        default=False,
        description="Age 0 (an anonymiser's 000Y) counts as unknown — for adult-only exams",
    )


class SkipSettings(_Strict):
    """Which series are never candidates (besides non-image objects)."""

    localizer_max_images: int = Field(default=3, ge=0, le=20)
    dose_description: Regex = r"\bdose|доз[аыу]\b|patient protocol|протокол (пациента|дозы)"


class RoutingRules(_Strict):
    version: Literal[1] = 1
    adult_age: int = Field(default=18, ge=1, le=30)
    unknown_age: Literal["assume_adult", "refuse"] = "assume_adult"
    body_part_aliases: dict[str, str] = Field(default_factory=dict)
    skip: SkipSettings = Field(default_factory=SkipSettings)
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> RoutingRules:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule names: {', '.join(duplicates)}")
        selections: dict[StudyType, Rule] = {}
        for rule in self.rules:
            first = selections.setdefault(rule.study_type, rule)
            if first.selection != rule.selection:
                raise ValueError(
                    f"rules {first.name} and {rule.name} both identify {rule.study_type} "
                    f"but select differently ({first.selection} vs {rule.selection})"
                )
        return self

    @functools.cached_property
    def _aliases(self) -> dict[str, str]:
        return {k.strip().upper(): v.strip().upper() for k, v in self.body_part_aliases.items()}

    def body_part(self, value: str | None) -> str | None:
        """BodyPartExamined normalised: stripped, upper case, aliases applied."""
        if not value or not value.strip():
            return None
        upper = value.strip().upper()
        return self._aliases.get(upper, upper)


def load_rules(path: Path) -> RoutingRules:
    """Read and validate ``routing.yaml``; raises :class:`RoutingConfigError` naming the rule
    and field of the first problems."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RoutingConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise RoutingConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RoutingConfigError(f"{path}: expected a mapping with a 'rules' list")
    try:
        return RoutingRules.model_validate(raw)
    except ValidationError as exc:
        raise RoutingConfigError(f"{path}: {_describe(exc, raw)}") from exc


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    rules = raw.get("rules")
    parts = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = ".".join(str(p) for p in loc) or "rules"
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            item = rules[loc[1]] if isinstance(rules, list) and loc[1] < len(rules) else None
            name = item.get("name") if isinstance(item, dict) else None
            field_path = ".".join(str(p) for p in loc[2:]) or "rule"
            where = f"rule #{loc[1] + 1}{f' {name!r}' if name else ''}: {field_path}"
        message = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- facts


class SeriesFacts(_Strict):
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


class StudyFacts(_Strict):
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
                row.series_uid, row.modality, row.body_part, row.series_description, None,
                row.series_number,
            )  # fmt: skip
            current[row.id] = {}
        if instance is not None:  # a later version replaces an earlier one
            current[row.id][instance.sop_instance_uid] = _Image(
                instance.sop_class_uid,
                instance.image_type,
                instance.slice_thickness,
                instance.image_orientation,
                instance.number_of_frames,
                instance.photometric_interpretation,
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
    studies = {_text(ds, "StudyInstanceUID") or "" for ds in datasets}
    if len(studies) != 1:
        raise RoutingError(f"datasets must belong to one study; got {len(studies)}")
    series: dict[str, _Series] = {}
    seen: dict[str, dict[str, _Image]] = {}  # per series, per SOP Instance UID: the last copy
    for number, ds in enumerate(datasets):
        uid = _text(ds, "SeriesInstanceUID") or ""
        entry = series.setdefault(uid, _Series(uid))
        entry.modality = entry.modality or _text(ds, "Modality")
        entry.body_part = entry.body_part or _text(ds, "BodyPartExamined")
        entry.description = entry.description or _text(ds, "SeriesDescription")
        entry.protocol = entry.protocol or _text(ds, "ProtocolName")
        entry.number = entry.number if entry.number is not None else _int(ds, "SeriesNumber")
        seen.setdefault(uid, {})[_text(ds, "SOPInstanceUID") or f"#{number}"] = _Image(
            _text(ds, "SOPClassUID"),
            _text(ds, "ImageType"),
            _float(ds, "SliceThickness"),
            _text(ds, "ImageOrientationPatient"),
            _int(ds, "NumberOfFrames"),
            _text(ds, "PhotometricInterpretation"),
            _text(ds, "ViewPosition"),
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
        study_description=_text(first, "StudyDescription"),
        series=[s.facts() for s in series.values()],
    )


def _text(ds: Dataset, keyword: str) -> str | None:
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


# --------------------------------------------------------------------------- decision


class PlannedJob(_Strict):
    """One job: a device reads these series of the study."""

    series_uid: str = Field(description="The series the job is about (the first of series_uids)")
    series_uids: tuple[str, ...] = Field(description="Every series it reads (whole_study: >1)")
    device_id: str
    device_version: str
    study_type: StudyType
    service_code: str
    priority: Priority
    rule: str


class SeriesNote(_Strict):
    series_uid: str
    summary: str
    skipped: str | None = Field(default=None, description="Why it is not a candidate")


class RuleExplanation(_Strict):
    """One rule against one candidate series: matched, or every failed condition in order
    (the first decides), each with the values seen."""

    rule: str
    series_uid: str
    matched: bool
    failures: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @property
    def reason(self) -> str:
        return "matched" if self.matched else self.failures[0]


class DeviceCheck(_Strict):
    """A device's acceptance criteria against a series a rule claimed."""

    rule: str
    device: str
    series_uid: str
    accepted: bool
    reason: str | None = None
    chosen: bool = False


class RoutingDecision(_Strict):
    study_uid: str
    jobs: list[PlannedJob]
    not_applicable_reason: str | None = None
    series: list[SeriesNote] = Field(default_factory=list)
    explanations: list[RuleExplanation] = Field(default_factory=list)
    device_checks: list[DeviceCheck] = Field(default_factory=list)

    @property
    def applicable(self) -> bool:
        return bool(self.jobs)


# --------------------------------------------------------------------------- route


@dataclass(frozen=True)
class _Verdict:
    failures: list[str]
    notes: list[str]
    body_part: str | None
    age: int | None


@dataclass(frozen=True)
class _Claim:
    series: SeriesFacts
    rule: Rule
    verdict: _Verdict


def route(
    facts: StudyFacts, rules: RoutingRules, devices: Sequence[DeviceManifest]
) -> RoutingDecision:
    """Plan the jobs for a study.

    Parameters
    ----------
    facts
        The study, from :func:`facts_from_index` or :func:`facts_from_datasets`.
    rules
        From :func:`load_rules`.
    devices
        The manifests of the devices enabled for the study's region (the caller decides);
        where one id comes in several versions, the highest is used.
    """
    notes: list[SeriesNote] = []
    candidates: list[SeriesFacts] = []
    for series in facts.series:
        skipped = _skip_reason(series, rules)
        notes.append(
            SeriesNote(series_uid=series.series_uid, summary=series.summary(), skipped=skipped)
        )
        if skipped is None:
            candidates.append(series)

    explanations: list[RuleExplanation] = []
    claims: dict[StudyType, list[_Claim]] = {}
    for series in candidates:
        claimed: Rule | None = None
        for rule in rules.rules:
            verdict = _evaluate(rule, series, facts, rules)
            failures = list(verdict.failures)
            if not failures and claimed is not None:
                failures = [f"matches, but rule {claimed.name} (earlier) already claimed it"]
            elif not failures:
                claimed = rule
                claims.setdefault(rule.study_type, []).append(_Claim(series, rule, verdict))
            explanations.append(
                RuleExplanation(
                    rule=rule.name,
                    series_uid=series.series_uid,
                    matched=not failures,
                    failures=failures,
                    notes=verdict.notes,
                )
            )

    jobs: list[PlannedJob] = []
    checks: list[DeviceCheck] = []
    problems: list[str] = []
    enabled = _latest(devices)
    for study_type, group in claims.items():
        planned, group_checks, problem = _plan(study_type, group, enabled, facts, rules)
        jobs += planned
        checks += group_checks
        if problem:
            problems.append(problem)

    reason = None if jobs else _not_applicable(notes, explanations, problems)
    return RoutingDecision(
        study_uid=facts.study_uid,
        jobs=jobs,
        not_applicable_reason=reason,
        series=notes,
        explanations=explanations,
        device_checks=checks,
    )


def _skip_reason(series: SeriesFacts, rules: RoutingRules) -> str | None:
    """Why a series is never a candidate: non-image objects, localizers, dose screens."""
    modality = (series.modality or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return f"not an image (Modality {modality}, {NON_IMAGE_MODALITIES[modality]})"
    if series.sop_classes and all(
        uid.startswith(NON_IMAGE_SOP_PREFIXES) for uid in series.sop_classes
    ):
        return f"not an image (SOP class {_sop_name(series.sop_classes[0])})"
    tokens = series.image_type_tokens
    if "LOCALIZER" in tokens:
        return "localizer (ImageType has LOCALIZER)"
    if (
        series.orientation is not None
        and not series.axial
        and modality in {"CT", "MR", "PT"}
        and series.images <= rules.skip.localizer_max_images
    ):
        shown = list(series.orientation)
        return f"localizer ({series.images} non-axial image(s), orientation {shown})"
    screen = sorted(tokens & SCREEN_TOKENS)
    if screen:
        return f"screen capture (ImageType has {screen[0]})"
    secondary = {"DERIVED", "SECONDARY"} <= tokens or any(
        uid.startswith(SECONDARY_CAPTURE_PREFIX) for uid in series.sop_classes
    )
    dose = _compiled(rules.skip.dose_description)
    text = " / ".join(t for t in (series.series_description, series.protocol_name) if t)
    if secondary and text and dose.search(text):
        return f"dose page capture (secondary capture described {text!r})"
    return None


def _sop_name(uid: str) -> str:
    name = UID(uid).name
    return f"{uid} ({name})" if name and name != uid else uid


def _all_texts(series: SeriesFacts, facts: StudyFacts) -> list[str]:
    texts = (series.series_description, series.protocol_name, facts.study_description)
    return list(dict.fromkeys(t for t in texts if t))


def _anatomy_texts(series: SeriesFacts, facts: StudyFacts) -> list[str]:
    """The series' own text (SeriesDescription, ProtocolName), or StudyDescription when the
    series has none: a study «КТ головы и ОГК» must not make its chest series a head."""
    own = list(dict.fromkeys(t for t in (series.series_description, series.protocol_name) if t))
    return own or ([facts.study_description] if facts.study_description else [])


def _unmatched(texts: list[str], pattern: str) -> str:
    if not texts:
        return f"no description to match {_short(pattern)}"
    return f"{', '.join(repr(t) for t in texts)} does not match {_short(pattern)}"


def _short(pattern: str) -> str:
    return f"'{pattern if len(pattern) <= 48 else pattern[:45] + '…'}'"


def _age(facts: StudyFacts, rule: Rule, notes: list[str]) -> int | None:
    age = facts.patient_age_years
    if age == 0 and rule.zero_age_means_unknown:
        notes.append("patient age 0 taken as unknown (an anonymiser's 000Y)")
        return None
    return age


def _evaluate(rule: Rule, series: SeriesFacts, facts: StudyFacts, rules: RoutingRules) -> _Verdict:
    c = rule.match
    failed: list[str] = []
    notes: list[str] = []
    if c.sources is not None and facts.source not in c.sources:
        failed.append(f"source {facts.source or 'unknown'} not in {c.sources}")
    if c.regions is not None and facts.region not in c.regions:
        failed.append(f"region {facts.region or 'unknown'} not in {c.regions}")
    modality = (series.modality or "").upper()
    if c.modalities is not None and modality not in c.modalities:
        failed.append(f"Modality {modality or 'missing'} not in {c.modalities}")
    if c.sop_classes is not None and not set(series.sop_classes) <= set(c.sop_classes):
        other = sorted(set(series.sop_classes) - set(c.sop_classes)) or ["missing"]
        failed.append(f"SOP class {_sop_name(other[0])} not in {c.sop_classes}")
    if c.exclude_sop_classes is not None:
        bad = sorted(set(series.sop_classes) & set(c.exclude_sop_classes))
        if bad:
            failed.append(f"SOP class {_sop_name(bad[0])} is excluded")
    body_part = rules.body_part(series.body_part)
    if c.body_part is not None:
        wanted = [rules.body_part(b) or b for b in c.body_part.any_of]
        if body_part is None:
            texts = _anatomy_texts(series, facts)
            pattern = c.body_part.if_missing
            if pattern and any(_compiled(pattern).search(t) for t in texts):
                body_part = wanted[0]
                notes.append(f"BodyPartExamined missing; {body_part} from the description")
            elif pattern:
                failed.append(f"BodyPartExamined missing and {_unmatched(texts, pattern)}")
            else:
                failed.append(f"BodyPartExamined missing (want {wanted})")
        elif body_part not in wanted:
            sent = series.body_part or ""
            shown = sent if sent.strip().upper() == body_part else f"{sent} → {body_part}"
            failed.append(f"BodyPartExamined {shown} not in {wanted}")
    everything = _all_texts(series, facts)
    if c.description and not any(_compiled(c.description).search(t) for t in everything):
        failed.append(f"description: {_unmatched(everything, c.description)}")
    for pattern, text, what in (
        (c.series_description, series.series_description, "SeriesDescription"),
        (c.study_description, facts.study_description, "StudyDescription"),
    ):
        if pattern and not (text and _compiled(pattern).search(text)):
            failed.append(f"{what} {_unmatched([text] if text else [], pattern)}")
    if c.exclude_description:
        hits = [
            t for t in _anatomy_texts(series, facts) if _compiled(c.exclude_description).search(t)
        ]
        if hits:
            failed.append(
                f"description {hits[0]!r} matches excluded {_short(c.exclude_description)}"
            )
    if c.image_type is not None:
        tokens = series.image_type_tokens
        shown = " / ".join(series.image_types) or "missing"
        missing = [t for t in c.image_type.include if t not in tokens]
        present = [t for t in c.image_type.exclude if t in tokens]
        if missing:
            failed.append(f"ImageType lacks {missing[0]} ({shown})")
        if present:
            failed.append(f"ImageType has {present[0]} ({shown})")
    if c.slice_thickness_mm is not None:
        outside = [t for t in series.slice_thicknesses if not c.slice_thickness_mm.contains(t)]
        if not series.slice_thicknesses:
            failed.append(f"SliceThickness missing (want {c.slice_thickness_mm.describe(' mm')})")
        elif outside:
            failed.append(
                f"slice thickness {outside[0]:g} mm outside {c.slice_thickness_mm.describe(' mm')}"
            )
    if c.instances is not None and not c.instances.contains(series.images):
        failed.append(f"{series.images} images, want {c.instances.describe()}")
    age = _age(facts, rule, notes)
    if c.patient_age is not None:
        if age is None and rules.unknown_age == "refuse":
            failed.append(f"patient age unknown (want {c.patient_age.describe(' years')})")
        elif age is None:
            adult_allowed = c.patient_age.max is None or c.patient_age.max >= rules.adult_age
            if not adult_allowed:
                failed.append(
                    f"patient age unknown, assumed adult (want {c.patient_age.describe(' years')})"
                )
        elif not c.patient_age.contains(age):
            failed.append(f"patient age {age} outside {c.patient_age.describe(' years')}")
    return _Verdict(failed, notes, body_part, age)


def _latest(devices: Sequence[DeviceManifest]) -> list[DeviceManifest]:
    def version_key(manifest: DeviceManifest) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", manifest.version)[:3])

    best: dict[str, DeviceManifest] = {}
    for device in devices:
        if device.id not in best or version_key(device) > version_key(best[device.id]):
            best[device.id] = device
    return list(best.values())


def _serves(device: DeviceManifest, study_type: StudyType) -> str | None:
    """The device's service code for the study type, or None when it does not serve it."""
    return next((e.service_code for e in device.study_types if e.type == study_type), None)


def _refusals(
    device: DeviceManifest, claim: _Claim, facts: StudyFacts, rules: RoutingRules
) -> list[str]:
    """Why the device cannot read the series (its manifest's ``accepts``), plus the rule's
    selection constraint (axial CT, frontal view)."""
    a, s, v = device.accepts, claim.series, claim.verdict
    refused: list[str] = []
    modality = (s.modality or "").upper()
    if modality not in a.modalities:
        refused.append(f"Modality {modality or 'missing'} not in the device's {a.modalities}")
    if a.body_parts:
        parts = [rules.body_part(b) or b for b in a.body_parts]
        if v.body_part not in parts:
            refused.append(f"body part {v.body_part or 'unknown'} not in the device's {parts}")
    if a.slice_thickness_mm is not None:
        want = _range_text(a.slice_thickness_mm.min, a.slice_thickness_mm.max, " mm")
        outside = [t for t in s.slice_thicknesses if not a.slice_thickness_mm.contains(t)]
        if not s.slice_thicknesses:
            refused.append(f"SliceThickness missing (the device reads {want})")
        elif outside:
            refused.append(f"slice thickness {max(outside):g} mm outside the device's {want}")
    if s.images < a.min_instances:
        refused.append(f"{s.images} images, fewer than the device's minimum {a.min_instances}")
    if a.adult_only:
        if v.age is not None and v.age < rules.adult_age:
            refused.append(f"patient age {v.age} under {rules.adult_age}: the device is adult only")
        elif v.age is None and rules.unknown_age == "refuse":
            refused.append("patient age unknown: the device is adult only")
    if not s.photometrics:
        refused.append("PhotometricInterpretation missing")
    else:
        bad = [p for p in s.photometrics if p not in a.photometric]
        if bad:
            refused.append(
                f"PhotometricInterpretation {bad[0]} not in the device's {list(a.photometric)}"
            )
    selection = claim.rule.selection
    if selection == Selection.THINNEST_AXIAL and not s.axial:
        shown = list(s.orientation) if s.orientation else "missing"
        refused.append(f"not an axial series (ImageOrientationPatient {shown})")
    if selection == Selection.FRONTAL and _lateral(s):
        refused.append(f"lateral view ({', '.join(s.view_positions) or s.series_description})")
    return refused


def _lateral(series: SeriesFacts) -> bool:
    if LATERAL_VIEWS & set(series.view_positions):
        return True
    text = series.series_description or ""
    return bool(_LATERAL.search(text)) and not _FRONTAL.search(text)


def _preference(selection: Selection, series: SeriesFacts) -> tuple[float, ...]:
    """Sort key: the first is chosen."""
    number = float(series.series_number) if series.series_number is not None else float("inf")
    if selection == Selection.THINNEST_AXIAL:
        thickness = max(series.slice_thicknesses, default=float("inf"))
        return thickness, -series.images, number
    if selection == Selection.FRONTAL:
        views = set(series.view_positions)
        text = series.series_description or ""
        rank = 0 if "PA" in views else 1 if "AP" in views else 2 if _FRONTAL.search(text) else 3
        return float(rank), number
    return (number,)


def _plan(
    study_type: StudyType,
    group: list[_Claim],
    devices: list[DeviceManifest],
    facts: StudyFacts,
    rules: RoutingRules,
) -> tuple[list[PlannedJob], list[DeviceCheck], str | None]:
    """Jobs for the series claimed for one study type: per serving device, its choice."""
    names = ", ".join(sorted({c.rule.name for c in group}))
    claimed = "; ".join(c.series.summary() for c in group)
    serving = [d for d in devices if _serves(d, study_type)]
    where = f" for region {facts.region}" if facts.region else ""
    if not serving:
        problem = (
            f"rule {names} matched {claimed}, but no device enabled{where} serves {study_type}"
        )
        return [], [], problem
    jobs: list[PlannedJob] = []
    checks: list[DeviceCheck] = []
    refusals: list[str] = []
    selection = group[0].rule.selection
    for device in serving:
        accepted: list[_Claim] = []
        for claim in group:
            reason: str | None
            if claim.rule.devices is not None and device.id not in claim.rule.devices:
                reason = f"rule {claim.rule.name} pins {claim.rule.devices}"
            else:
                found = _refusals(device, claim, facts, rules)
                reason = found[0] if found else None
            if reason is None:
                accepted.append(claim)
            else:
                refusals.append(f"{device.key}: {reason}")
            checks.append(
                DeviceCheck(
                    rule=claim.rule.name,
                    device=device.key,
                    series_uid=claim.series.series_uid,
                    accepted=reason is None,
                    reason=reason,
                )
            )
        if not accepted:
            continue
        accepted.sort(key=lambda c: (_preference(selection, c.series), c.series.series_uid))
        if selection == Selection.EACH_SERIES:
            batches = [[c] for c in accepted]
        elif selection == Selection.WHOLE_STUDY:
            batches = [accepted]
        else:
            batches = [accepted[:1]]
        for batch in batches:
            lead = max(batch, key=lambda c: c.rule.priority)
            uids = tuple(c.series.series_uid for c in batch)
            jobs.append(
                PlannedJob(
                    series_uid=uids[0],
                    series_uids=uids,
                    device_id=device.id,
                    device_version=device.version,
                    study_type=study_type,
                    service_code=_serves(device, study_type) or service_code(study_type),
                    priority=lead.rule.priority,
                    rule=lead.rule.name,
                )
            )
        chosen = {(device.key, uid) for job in jobs[-len(batches) :] for uid in job.series_uids}
        checks = [
            check.model_copy(update={"chosen": True})
            if (check.device, check.series_uid) in chosen
            else check
            for check in checks
        ]
    if jobs:
        return jobs, checks, None
    refused = "; ".join(refusals)
    return (
        [],
        checks,
        f"rule {names} matched {claimed}, but no enabled device accepts it: {refused}",
    )


def _not_applicable(
    notes: list[SeriesNote], explanations: list[RuleExplanation], problems: list[str]
) -> str:
    if not notes:
        return "the study has no series"
    parts = list(problems)
    unmatched = []
    for note in notes:
        if note.skipped is not None:
            unmatched.append(f"{note.summary}: skipped, {note.skipped}")
            continue
        mine = [e for e in explanations if e.series_uid == note.series_uid]
        if any(e.matched for e in mine):
            continue
        reasons = "; ".join(f"rule {e.rule}: {e.reason}" for e in mine)
        unmatched.append(f"{note.summary}: {reasons}")
    if unmatched:
        if parts:
            lead = "other series"
        elif all(note.skipped for note in notes):
            lead = "no series to route"
        else:
            lead = "no rule matched"
        parts.append(f"{lead}: " + " | ".join(unmatched))
    return " — ".join(parts)


# --------------------------------------------------------------------------- files, CLI


def load_devices(folder: Path) -> list[DeviceManifest]:
    """Every ``*/manifest.yaml`` under ``folder`` (none when the folder is absent)."""
    return [load_manifest(path) for path in sorted(folder.glob("*/manifest.yaml"))]


def _files(paths: Iterable[Path]) -> list[tuple[Path, bool]]:
    """(file, named explicitly) for the paths, folders expanded recursively."""
    found: list[tuple[Path, bool]] = []
    for path in paths:
        if path.is_dir():
            found += [(p, False) for p in sorted(path.rglob("*")) if p.is_file()]
        else:
            found.append((path, True))
    return found


def explain_files(
    paths: Iterable[Path],
    rules: RoutingRules,
    devices: Sequence[DeviceManifest],
    region: str | None = None,
    source: str | None = None,
) -> str:
    """For DICOM files (folders are walked), grouped by study: which rule matched each
    series and why the others did not, what each device said, and the jobs planned."""
    lines: list[str] = []
    studies: dict[str, list[tuple[Path, Dataset]]] = {}
    for path, named in _files(paths):
        try:
            ds: Dataset = dcmread(path, stop_before_pixels=True)
            study_uid = _text(ds, "StudyInstanceUID") or ""
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            if named:
                lines.append(f"{path}: not readable as DICOM ({exc.__class__.__name__}: {exc})")
            continue
        studies.setdefault(study_uid, []).append((path, ds))
    if not studies:
        lines.append("no DICOM files given")
    if not devices:
        lines.append("no device manifests: every match ends without a device")
    for study_uid, files in studies.items():
        facts = facts_from_datasets([ds for _, ds in files], source=source, region=region)
        decision = route(facts, rules, devices)
        age = facts.patient_age_years if facts.patient_age_years is not None else "unknown"
        lines.append("")
        lines.append(
            f"study {study_uid or '(no StudyInstanceUID)'} — {len(files)} file(s), "
            f"patient age {age}, region {region or '—'}, source {source or '—'}"
        )
        by_series: dict[str, list[str]] = {}
        for path, ds in files:
            by_series.setdefault(_text(ds, "SeriesInstanceUID") or "", []).append(str(path))
            try:
                read_tags(ds)
            except InvalidInstance as exc:
                lines.append(f"  ! {path}: the gateway refuses this file at ingest: {exc.reason}")
        for note in decision.series:
            names = by_series.get(note.series_uid, [])
            shown = names[0] if len(names) == 1 else f"{len(names)} files: {names[0]} … {names[-1]}"
            lines.append(f"  {note.summary} ← {shown}")
            if note.skipped:
                lines.append(f"    skipped: {note.skipped}")
                continue
            for e in (e for e in decision.explanations if e.series_uid == note.series_uid):
                rule = next(r for r in rules.rules if r.name == e.rule)
                extra = f" ({'; '.join(e.notes)})" if e.notes else ""
                if e.matched:
                    what = f"{rule.study_type}, {_word(rule.priority)}"
                    lines.append(f"    ✓ rule {e.rule}: matched → {what}{extra}")
                else:
                    lines.append(f"    ✗ rule {e.rule}: {', '.join(e.failures)}")
            for check in (c for c in decision.device_checks if c.series_uid == note.series_uid):
                verdict = "accepts" if check.accepted else f"refuses: {check.reason}"
                chosen = " (chosen)" if check.chosen else ""
                lines.append(f"      device {check.device} {verdict}{chosen}")
        for job in decision.jobs:
            lines.append(
                f"  → job: {job.device_id}@{job.device_version} reads {', '.join(job.series_uids)} "
                f"as {job.study_type} ({job.service_code}), {_word(job.priority)}, rule {job.rule}"
            )
        if decision.not_applicable_reason:
            lines.append(f"  → not applicable: {decision.not_applicable_reason}")
    return "\n".join(lines).strip("\n") + "\n"


@click.command(name="test")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(path_type=Path),
    default=DEFAULT_RULES,
    show_default=True,
    help="Routing rules YAML.",
)
@click.option(
    "--devices",
    "devices_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_DEVICES,
    show_default=True,
    help="Folder of device folders, each with a manifest.yaml.",
)
@click.option("--region", help="Region code the study comes from (for region conditions).")
@click.option("--source", help="Source name the study comes from (for source conditions).")
def rules_test_command(
    files: tuple[Path, ...],
    rules_file: Path,
    devices_dir: Path,
    region: str | None,
    source: str | None,
) -> None:
    """Explain, for DICOM FILES (or folders), which routing rule matches and why the
    others do not, and which device would read which series."""
    try:
        rules = load_rules(rules_file)
        devices = load_devices(devices_dir)
    except (ConfigError, ManifestError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(explain_files(files, rules, devices, region=region, source=source), nl=False)


@click.command(name="check")
@click.option("--rules", "rules_file", type=click.Path(path_type=Path), default=DEFAULT_RULES)
def rules_check_command(rules_file: Path) -> None:
    """Validate the routing rules and list them in order."""
    try:
        rules = load_rules(rules_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    for number, rule in enumerate(rules.rules, start=1):
        click.echo(
            f"{number}. {rule.name}: {rule.study_type} ({_word(rule.priority)}, {rule.selection})"
        )


rules_group = click.Group(
    name="rules",
    help="Routing rules: check them, test them on files.",
    commands=[rules_test_command, rules_check_command],
)
