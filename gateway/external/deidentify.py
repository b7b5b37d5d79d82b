"""De-identification before anything leaves for a vendor: PS3.15 Annex E's Basic
Application Level Confidentiality Profile, by dicognito, with the options a diagnostic AI
needs — Retain Patient Characteristics (sex, age, size, weight), Retain Device Identity
(manufacturer, model, serial, software versions are left as they are), Clean Descriptors
(free-text comments go; a description that names the patient goes), Retain Longitudinal
Temporal Information with Modified Dates (dicognito shifts every date by one offset).

dicognito replaces names, IDs and UIDs from a seed, so the same seed gives the same
pseudonyms: a resent series is the same UIDs (:mod:`gateway.external.pseudonyms` keeps the
seed per (study, device)). What dicognito leaves is then removed here outright: private
attributes, the birth date, every other patient ID (where the СНИЛС travels), institution
names and addresses. :func:`identifying_left` is the check run on every dataset before it
is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from dicognito.anonymizer import Anonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from dicognito.randomizer import Randomizer
from dicognito.uianonymizer import UIAnonymizer
from pydicom import DataElement, Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

# Type 2 and never sent with a value (Annex E: Z, zero length).
EMPTIED = ("PatientBirthDate",)
# Never sent, whatever dicognito made of them.
REMOVED = (
    "PatientBirthTime",
    "PatientBirthName",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "InstitutionCodeSequence",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
)
# Clean Descriptors: free text that may say anything about the patient.
FREE_TEXT = (
    "ImageComments",
    "StudyComments",
    "PatientComments",
    "AdditionalPatientHistory",
    "RequestedProcedureComments",
    "InterpretationText",
    "TextValue",
)
DESCRIPTORS = (
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "PerformedProcedureStepDescription",
)
RETAINED = ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")
# PS3.16 CID 7050: the profile and the options applied.
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113105", "Clean Descriptors Option"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113109", "Retain Device Identity Option"),
)


_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "DA", "CS", "UC"})


class BurnedInAnnotation(Exception):
    """The series has text in its pixels (BurnedInAnnotation YES) and may not leave."""


class NotDeidentified(Exception):
    """:func:`identifying_left` found something: the dataset may not leave."""


@dataclass
class Pseudonyms:
    """What one seed made of a study: every UID's pseudonym, by the attribute it was in."""

    uids: dict[str, str] = field(default_factory=dict)  # original → pseudonym
    kinds: dict[str, str] = field(default_factory=dict)  # original → study, series, …


class _RecordedUids(ElementAnonymizer):
    """dicognito's UID replacement, with each original and its pseudonym written down (the
    same seed makes the same replacement as the anonymizer's own)."""

    _KINDS: ClassVar[dict[str, str]] = {"StudyInstanceUID": "study", "SeriesInstanceUID": "series"}
    _INSTANCE = ("SOPInstanceUID", "MediaStorageSOPInstanceUID", "ReferencedSOPInstanceUID")

    def __init__(self, seed: str, into: Pseudonyms) -> None:
        self._replace = UIAnonymizer(Randomizer(seed))
        self._into = into

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        before = _values(data_element)
        if not self._replace(dataset, data_element):
            return False
        keyword = data_element.keyword
        kind = "instance" if keyword in self._INSTANCE else self._KINDS.get(keyword, "other")
        for original, pseudonym in zip(before, _values(data_element), strict=True):
            self._into.uids[original] = pseudonym
            # An instance's own UID names it even when a reference saw it first.
            if kind != "other" or original not in self._into.kinds:
                self._into.kinds[original] = kind
        return True

    def describe_actions(self) -> Iterator[str]:
        yield from self._replace.describe_actions()


def _values(element: DataElement) -> list[str]:
    value = element.value
    return [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]


def deidentify(dataset: Dataset, seed: str, into: Pseudonyms, accept_burned_in: bool) -> None:
    """De-identify ``dataset`` in place with ``seed``, adding its UIDs to ``into``; raises
    :class:`BurnedInAnnotation` for text in the pixels unless the device accepts it."""
    if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES" and not accept_burned_in:
        raise BurnedInAnnotation("BurnedInAnnotation is YES")
    age = dataset.get("PatientAge") or _age(dataset)
    identity = _identity(dataset)
    anonymizer = Anonymizer(seed=seed)
    anonymizer.add_element_handler(_RecordedUids(seed, into))
    anonymizer.anonymize(dataset)
    dataset.remove_private_tags()
    for keyword in (*REMOVED, *FREE_TEXT):
        _remove_everywhere(dataset, keyword)
    for keyword in EMPTIED:
        if keyword in dataset:
            dataset[keyword].value = ""
    for keyword in DESCRIPTORS:
        if keyword in dataset and any(t in str(dataset.get(keyword, "")).upper() for t in identity):
            del dataset[keyword]
    if age:
        dataset.PatientAge = age
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = "dicognito: PS3.15 E basic profile and options (codes)"
    dataset.DeidentificationMethodCodeSequence = Sequence([_code(v, m) for v, m in METHOD_CODES])


def identifying_left(dataset: Dataset, originals: set[str]) -> list[str]:
    """Attributes that would tell the vendor who the patient is: one of :data:`REMOVED`
    present, or any text value equal to one of ``originals`` (the patient's name, IDs,
    birth date and institution as they were). Empty: the dataset may leave."""
    found: list[str] = []

    def visit(ds: Dataset, element: DataElement) -> None:
        if element.keyword in REMOVED or (element.keyword in EMPTIED and element.value):
            found.append(element.keyword)
        elif element.VR in _TEXT_VRS and any(
            str(v).strip() in originals for v in _values(element) if str(v).strip()
        ):
            found.append(element.keyword or str(element.tag))

    dataset.walk(visit)
    return found


def originals_of(dataset: Dataset) -> set[str]:
    """The values that identify the patient in ``dataset`` before de-identification."""
    values = {
        str(dataset.get(k, "")).strip()
        for k in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "InstitutionName",
            "OtherPatientIDs",
        )
    }
    for item in dataset.get("OtherPatientIDsSequence", []):
        values.add(str(item.get("PatientID", "")).strip())
    return {v for v in values if len(v) > 2}


def _identity(dataset: Dataset) -> list[str]:
    """Words a descriptor must not contain: the patient's names and ID."""
    name = str(dataset.get("PatientName", "")).upper().replace("^", " ").split()
    return [w for w in [*name, str(dataset.get("PatientID", "")).upper()] if len(w) > 2]


def _age(dataset: Dataset) -> str | None:
    """PatientAge (nnnY) from the birth date and the study date, before both are changed."""
    born, seen = str(dataset.get("PatientBirthDate", "")), str(dataset.get("StudyDate", ""))
    if len(born) != 8 or len(seen) != 8 or not (born + seen).isdigit():
        return None
    years = int(seen[:4]) - int(born[:4]) - (seen[4:] < born[4:])
    return f"{years:03d}Y" if 0 <= years < 1000 else None


def _remove_everywhere(dataset: Dataset, keyword: str) -> None:
    if keyword in dataset:
        del dataset[keyword]
    for element in list(dataset):
        if element.VR == "SQ":
            for item in element.value:
                _remove_everywhere(item, keyword)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item
