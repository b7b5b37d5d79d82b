"""The routing rules file: its schema, :class:`RoutingRules` and :func:`load_rules`.

``configs/routing.yaml`` holds an ordered list of rules; each names the study type it
identifies, how series are selected and the conditions a series must meet. Validation is
strict (unknown fields, bad regular expressions and inconsistent selections are refused) and
the error names the rule and the field.
"""

from __future__ import annotations

import functools
import re
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

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

from gateway.errors import ConfigError
from models.study_types import StudyType
from models.yaml_file import load_model, message


class Priority(IntEnum):
    """Our priorities; higher is more urgent (CT brain is urgent)."""

    ROUTINE = 3
    HIGH = 6
    URGENT = 9


class RoutingConfigError(ConfigError):
    """``routing.yaml`` is invalid; the message names the rule and the field."""


@functools.lru_cache(maxsize=1024)
def compiled_regex(pattern: str) -> re.Pattern[str]:
    """A rule's regular expression, case-insensitive, compiled once."""
    return re.compile(pattern, re.IGNORECASE)


def _check_regex(pattern: str) -> str:
    try:
        compiled_regex(pattern)
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


class StrictModel(BaseModel):
    """Base of every routing model: unknown fields refused, instances immutable."""

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


def priority_word(priority: Priority) -> str:
    """The priority as the rules file writes it (urgent, high, routine)."""
    return priority.name.lower()


class Selection(StrEnum):
    """How the series for a device are chosen among those a rule claimed in one study."""

    THINNEST_AXIAL = "thinnest_axial"  # CT: one axial series, the thinnest, then the longest
    FRONTAL = "frontal"  # projection X-ray: one PA (else AP) image series, never a lateral
    WHOLE_STUDY = "whole_study"  # one job with every accepted series (mammography's 4 views)
    EACH_SERIES = "each_series"  # one job per accepted series


class NumberRange(StrictModel):
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
        return range_text(self.min, self.max, unit)


def range_text(low: float | None, high: float | None, unit: str = "") -> str:
    """A range for explanations: "1–5 mm", "≥ 18 years", "any"."""
    if low is not None and high is not None:
        return f"{low:g}–{high:g}{unit}"
    if low is not None:
        return f"≥ {low:g}{unit}"
    return f"≤ {high:g}{unit}" if high is not None else "any"


class BodyPartCondition(StrictModel):
    """BodyPartExamined (case-insensitive, after aliases) is one of ``any_of``; when it is
    absent, ``if_missing`` (a regex) must match the series' description instead."""

    any_of: Tokens = Field(min_length=1)
    if_missing: Regex | None = None


class ImageTypeCondition(StrictModel):
    include: Tokens = Field(default_factory=list, description="Every token must be present")
    exclude: Tokens = Field(default_factory=list, description="No token may be present")


class Conditions(StrictModel):
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


class Rule(StrictModel):
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


class SkipSettings(StrictModel):
    """Which series are never candidates (besides non-image objects)."""

    localizer_max_images: int = Field(default=3, ge=0, le=20)
    dose_description: Regex = r"\bdose|доз[аыу]\b|patient protocol|протокол (пациента|дозы)"


class RoutingRules(StrictModel):
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
    return load_model(path, RoutingRules, RoutingConfigError, explain=_describe)


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
        parts.append(f"{where}: {message(error)}")
    return "; ".join(parts)
