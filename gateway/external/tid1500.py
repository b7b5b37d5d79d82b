"""A vendor's findings, read from the TID 1500 coded content of its SR into the gateway's
own :class:`~gateway.inference.findings.Finding`, so the dashboard, the SEMD and the
monitoring count them as they count our devices'.

Each Measurement Group (DCM 125007) is one finding: its Finding (DCM 121071) is the label,
which must be one of the manifest's output labels (the labels the vendor reports; an
unknown one is skipped and said so); a Probability (DCM 122157) measurement, if any, is
compared with the label's threshold; otherwise a qualitative evaluation of the label
(SCT Present / Absent) decides, and a finding reported with neither is positive. An Image
Region (DCM 111030) gives the location on the image it names (after re-identification,
the original SOP Instance UID).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom import Dataset

from gateway.inference.findings import Finding, Location
from models.manifest import DeviceManifest, Label

log = logging.getLogger(__name__)

MEASUREMENT_GROUP = ("125007", "DCM")
FINDING = ("121071", "DCM")
PROBABILITY = ("122157", "DCM")
IMAGE_REGION = ("111030", "DCM")
PRESENT, ABSENT = ("52101004", "SCT"), ("272519000", "SCT")
_MAX_DEPTH = 8  # TID 1500 nests four deep; a deeper tree is not walked further


def read_findings(sr: Dataset, manifest: DeviceManifest) -> list[Finding]:
    """Every measurement group of ``sr`` whose finding is one of the device's labels."""
    labels = {(label.code, label.scheme): label for o in manifest.outputs for label in o.labels}
    findings = []
    for group in _groups(sr, 0):
        finding = _finding(group, labels)
        if finding is not None:
            findings.append(finding)
    return findings


def _groups(item: Dataset, depth: int) -> Iterator[Dataset]:
    if depth > _MAX_DEPTH:
        return
    for child in item.get("ContentSequence", []):
        if _concept(child) == MEASUREMENT_GROUP:
            yield child
        else:
            yield from _groups(child, depth + 1)


def _finding(group: Dataset, labels: dict[tuple[str, str], Label]) -> Finding | None:
    children = list(group.get("ContentSequence", []))
    code = next((_code(c) for c in children if _concept(c) == FINDING), None)
    if code is None:
        return None
    label = labels.get(code)
    if label is None:
        log.warning("vendor finding not among the device's labels", extra={"code": code[0]})
        return None
    probability = next((_number(c) for c in children if _concept(c) == PROBABILITY), None)
    said = next((_code(c) for c in children if _concept(c) == code), None)
    if probability is not None:
        positive = probability >= label.threshold
    else:
        positive = said != ABSENT
        probability = 1.0 if positive else 0.0
    return Finding(
        label_code=label.code,
        label_scheme=label.scheme,
        label_ru=label.ru,
        label_en=label.en,
        probability=min(max(probability, 0.0), 1.0),
        threshold=label.threshold,
        positive=positive,
        location=_location(children),
    )


def _location(children: list[Dataset]) -> Location:
    region = next((c for c in children if _concept(c) == IMAGE_REGION), None)
    if region is None or "GraphicData" not in region:
        return Location()
    points = [float(v) for v in region.GraphicData]
    columns, rows = points[0::2], points[1::2]
    if not rows:
        return Location()
    uid = None
    for reference in region.get("ContentSequence", []):
        for image in reference.get("ReferencedSOPSequence", []):
            uid = str(image.get("ReferencedSOPInstanceUID", "")) or None
    box = ((min(rows), max(rows)), (min(columns), max(columns)))
    centre = ((box[0][0] + box[0][1]) / 2, (box[1][0] + box[1][1]) / 2)
    return Location(centre=centre, box=box if len(rows) > 1 else None, sop_instance_uid=uid)


def _concept(item: Dataset) -> tuple[str, str] | None:
    names = item.get("ConceptNameCodeSequence")
    return (str(names[0].CodeValue), str(names[0].CodingSchemeDesignator)) if names else None


def _code(item: Dataset) -> tuple[str, str] | None:
    codes = item.get("ConceptCodeSequence")
    return (str(codes[0].CodeValue), str(codes[0].CodingSchemeDesignator)) if codes else None


def _number(item: Dataset) -> float | None:
    for value in item.get("MeasuredValueSequence", []):
        try:
            return float(value.NumericValue)
        except (AttributeError, TypeError, ValueError):
            return None
    return None
