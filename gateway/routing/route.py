"""The routing decision: which series are candidates, which rule claims each, which device
accepts it and which series each device reads (:func:`route`), with the explanation of
every step (:class:`RoutingDecision`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from gateway.routing.facts import SeriesFacts, StudyFacts
from gateway.routing.match import Verdict, evaluate_rule, sop_name
from gateway.routing.rules import (
    Priority,
    RoutingRules,
    Rule,
    Selection,
    StrictModel,
    compiled_regex,
    range_text,
)
from models.manifest import DeviceManifest
from models.study_types import StudyType, service_code

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


class PlannedJob(StrictModel):
    """One job: a device reads these series of the study."""

    series_uid: str = Field(description="The series the job is about (the first of series_uids)")
    series_uids: tuple[str, ...] = Field(description="Every series it reads (whole_study: >1)")
    device_id: str
    device_version: str
    study_type: StudyType
    service_code: str
    priority: Priority
    rule: str


class SeriesNote(StrictModel):
    series_uid: str
    summary: str
    skipped: str | None = Field(default=None, description="Why it is not a candidate")


class RuleExplanation(StrictModel):
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


class DeviceCheck(StrictModel):
    """A device's acceptance criteria against a series a rule claimed."""

    rule: str
    device: str
    series_uid: str
    accepted: bool
    reason: str | None = None
    chosen: bool = False


class RoutingDecision(StrictModel):
    study_uid: str
    jobs: list[PlannedJob]
    not_applicable_reason: str | None = None
    series: list[SeriesNote] = Field(default_factory=list)
    explanations: list[RuleExplanation] = Field(default_factory=list)
    device_checks: list[DeviceCheck] = Field(default_factory=list)

    @property
    def applicable(self) -> bool:
        return bool(self.jobs)


@dataclass(frozen=True)
class _Claim:
    series: SeriesFacts
    rule: Rule
    verdict: Verdict


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
            verdict = evaluate_rule(rule, series, facts, rules)
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
        return f"not an image (SOP class {sop_name(series.sop_classes[0])})"
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
    dose = compiled_regex(rules.skip.dose_description)
    text = " / ".join(t for t in (series.series_description, series.protocol_name) if t)
    if secondary and text and dose.search(text):
        return f"dose page capture (secondary capture described {text!r})"
    return None


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
        want = range_text(a.slice_thickness_mm.min, a.slice_thickness_mm.max, " mm")
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
