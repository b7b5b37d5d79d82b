"""One rule's conditions against one series: every failed condition, in order, with the
values seen, and notes on what was inferred (a body part read from the description)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID

from gateway.routing.facts import SeriesFacts, StudyFacts
from gateway.routing.rules import RoutingRules, Rule, compiled_regex


@dataclass(frozen=True)
class Verdict:
    """One rule against one series: the failed conditions, notes, and the body part and age
    as the rule saw them."""

    failures: list[str]
    notes: list[str]
    body_part: str | None
    age: int | None


def sop_name(uid: str) -> str:
    """The SOP class UID with its name, for explanations."""
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


def evaluate_rule(
    rule: Rule, series: SeriesFacts, facts: StudyFacts, rules: RoutingRules
) -> Verdict:
    """Every condition of the rule that the series (in its study) fails, in the order of
    :class:`Conditions`; an empty ``failures`` means the rule matches."""
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
        failed.append(f"SOP class {sop_name(other[0])} not in {c.sop_classes}")
    if c.exclude_sop_classes is not None:
        bad = sorted(set(series.sop_classes) & set(c.exclude_sop_classes))
        if bad:
            failed.append(f"SOP class {sop_name(bad[0])} is excluded")
    body_part = rules.body_part(series.body_part)
    if c.body_part is not None:
        wanted = [rules.body_part(b) or b for b in c.body_part.any_of]
        if body_part is None:
            texts = _anatomy_texts(series, facts)
            pattern = c.body_part.if_missing
            if pattern and any(compiled_regex(pattern).search(t) for t in texts):
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
    if c.description and not any(compiled_regex(c.description).search(t) for t in everything):
        failed.append(f"description: {_unmatched(everything, c.description)}")
    for pattern, text, what in (
        (c.series_description, series.series_description, "SeriesDescription"),
        (c.study_description, facts.study_description, "StudyDescription"),
    ):
        if pattern and not (text and compiled_regex(pattern).search(text)):
            failed.append(f"{what} {_unmatched([text] if text else [], pattern)}")
    if c.exclude_description:
        hits = [
            t
            for t in _anatomy_texts(series, facts)
            if compiled_regex(c.exclude_description).search(t)
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
    return Verdict(failed, notes, body_part, age)
