"""What a radiologist's assessment object says (IHE AIRA, AI Result Assessment): which AI
results it is about, and whether they were accepted, modified or rejected. Pure: a dataset
in, an :class:`Assessment` out.

IHE AIRA (Trial Implementation) has the Assessment Creator store a DICOM object that
references the assessed result object (and, per finding, the tracking UID the result gave
it) and carries the decision as coded content. The profile's coded values were not available
to this project, so a verdict is read by these rules, in this order, from any SR (Basic,
Enhanced, Comprehensive, Comprehensive 3D, Extensible) or Key Object Selection document:

1. a CODE content item whose concept name speaks of the assessment (its meaning contains
   one of :data:`ASSESSMENT_CONCEPT_WORDS`: "assessment", "verdict", "agreement", "оценка"…)
   gives the verdict by its value's code (:data:`VALUE_CODES`) or else by its value's
   meaning: words of rejection first ("reject", "disagree", "false positive", "отклон",
   "не согласен"…), then of modification ("modif", "correct", "edit", "измен"…), then of
   acceptance ("accept", "agree", "confirm", "согласен", "подтвержд"…);
2. a Key Object Selection without such an item gives it by its document title (CID 7010):
   (113001, DCM, "Rejected for Quality Reasons") and (113037, DCM, "Rejected for Patient
   Safety Reasons") reject; (113000, DCM, "Of Interest") accepts.

Items that say different things make the object ambiguous: no verdict is read from it. The
comment is the first TEXT item named a comment (or the KOS's Key Object Description,
113012). Every ``ReferencedSOPInstanceUID`` anywhere in the object is a reference; every
UIDREF item (112040, DCM, "Tracking Unique Identifier") names a finding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.sequence import Sequence

from gateway.monitoring.verdicts import Verdict

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
SR_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
        "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    }
)
ASSESSMENT_CLASSES = SR_CLASSES | {KEY_OBJECT_SELECTION}
TRACKING_UID = ("112040", "DCM")
KEY_OBJECT_DESCRIPTION = ("113012", "DCM")
KOS_TITLES = {
    ("113001", "DCM"): Verdict.REJECT,  # Rejected for Quality Reasons
    ("113037", "DCM"): Verdict.REJECT,  # Rejected for Patient Safety Reasons
    ("113000", "DCM"): Verdict.ACCEPT,  # Of Interest
}
# Value codes read as a verdict whatever their meaning says (add the profile's when known).
VALUE_CODES: dict[tuple[str, str], Verdict] = {
    ("113001", "DCM"): Verdict.REJECT,
    ("113037", "DCM"): Verdict.REJECT,
}
ASSESSMENT_CONCEPT_WORDS = (
    "assessment", "verdict", "agreement", "review", "оценк", "заключени", "вердикт",
)  # fmt: skip
VALUE_WORDS = (  # checked in this order: "disagree" and "не согласен" contain acceptance
    (Verdict.REJECT, ("reject", "disagree", "false positive", "incorrect", "отклон",
                      "не согла", "ложноположит", "неверн")),
    (Verdict.MODIFY, ("modif", "correct", "edit", "adjust", "измен", "исправ", "скоррект",
                      "уточн")),
    (Verdict.ACCEPT, ("accept", "agree", "confirm", "согла", "подтвержд", "принят", "верн")),
)  # fmt: skip
COMMENT_WORDS = ("comment", "коммент", "примечан")
MAX_COMMENT = 2000


@dataclass
class Assessment:
    sop_instance_uid: str
    references: set[str] = field(default_factory=set)  # SOP Instance UIDs referenced
    tracking_uids: set[str] = field(default_factory=set)  # findings named
    verdict: Verdict | None = None
    comment: str | None = None
    how: str = ""  # how the verdict was read, or why none was


def read_assessment(ds: Dataset) -> Assessment:
    """What ``ds`` (an SR or KOS document) says about the results it references."""
    found = Assessment(str(ds.get("SOPInstanceUID", "")))
    found.references = set(_referenced(ds))
    verdicts: set[Verdict] = set()
    hows: list[str] = []
    for item in _items(ds):
        kind = str(item.get("ValueType", ""))
        name = _code(item.get("ConceptNameCodeSequence"))
        if kind == "UIDREF" and name[:2] == TRACKING_UID and item.get("UID"):
            found.tracking_uids.add(str(item.UID))
        elif kind == "CODE" and _speaks_of_assessment(name[2]):
            value = _code(item.get("ConceptCodeSequence"))
            verdict = VALUE_CODES.get(value[:2]) or _by_words(value[2])
            if verdict is not None:
                verdicts.add(verdict)
                hows.append(f"{name[2]!r} = {value[2]!r}")
        elif kind == "TEXT" and found.comment is None and _is_comment(name):
            found.comment = _printable(str(item.get("TextValue", "")))[:MAX_COMMENT] or None
    if not verdicts and str(ds.get("SOPClassUID", "")) == KEY_OBJECT_SELECTION:
        title = _code(ds.get("ConceptNameCodeSequence"))
        if title[:2] in KOS_TITLES:
            verdicts.add(KOS_TITLES[title[:2]])
            hows.append(f"key object selection titled {title[2]!r}")
    if len(verdicts) == 1:
        found.verdict = verdicts.pop()
        found.how = "; ".join(hows)
    else:
        found.how = "ambiguous: " + "; ".join(hows) if verdicts else "no assessment content"
    return found


def _items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of the document tree, depth first."""
    for item in ds.get("ContentSequence", []) or []:
        yield item
        yield from _items(item)


def _referenced(ds: Dataset) -> Iterator[str]:
    """Every ReferencedSOPInstanceUID in any sequence of ``ds``."""
    for element in ds:
        if element.VR == "SQ" and isinstance(element.value, Sequence):
            for item in element.value:
                if "ReferencedSOPInstanceUID" in item:
                    yield str(item.ReferencedSOPInstanceUID)
                yield from _referenced(item)


def _code(sequence: object) -> tuple[str, str, str]:
    """(value, scheme, meaning) of a code sequence's first item; empty strings if none."""
    if not isinstance(sequence, Sequence) or not sequence:
        return "", "", ""
    item = sequence[0]
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue") or ""
    return str(value), str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeMeaning", ""))


def _speaks_of_assessment(meaning: str) -> bool:
    lowered = meaning.lower()
    return any(word in lowered for word in ASSESSMENT_CONCEPT_WORDS)


def _by_words(meaning: str) -> Verdict | None:
    lowered = meaning.lower()
    for verdict, words in VALUE_WORDS:
        if any(word in lowered for word in words):
            return verdict
    return None


def _is_comment(name: tuple[str, str, str]) -> bool:
    return name[:2] == KEY_OBJECT_DESCRIPTION or any(w in name[2].lower() for w in COMMENT_WORDS)


def _printable(text: str) -> str:
    """A comment as a verdict keeps it: line breaks and tabs, no other control characters."""
    return "".join(c for c in text if c.isprintable() or c in "\n\t")
