"""The attributes the index keeps, read once from a received dataset and validated.

Routing, inference and reports later read these columns instead of re-parsing objects.
Only what the later stages need is kept: Patient's Name for QIDO-RS matching and the prior
query (never logged); birth dates stay in the object.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any, cast

from pydantic import BaseModel, ConfigDict
from pydicom.charset import default_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue

from gateway.dimse_status import Status
from gateway.errors import InvalidInstance
from gateway.ingest.header import Header, PlainHeader, transfer_syntax
from gateway.uids import is_valid_uid

# Read UIDs whole so that an over-long one is refused, not silently cut to 64 characters.
_UID_READ_LIMIT = 1024
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_TAGS: dict[str, int] = {
    keyword: int(tag)
    for keyword in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "PatientID",
        "PatientSex",
        "PatientAge",
        "PatientBirthDate",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyDescription",
        "Modality",
        "BodyPartExamined",
        "SeriesDescription",
        "SeriesNumber",
        "InstanceNumber",
        "ImageType",
        "SliceThickness",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "PhotometricInterpretation",
        "ViewPosition",
        "ProtocolName",
        "PatientName",
    )
    if (tag := tag_for_keyword(keyword)) is not None
}


# Every element read_tags reads: what gateway.ingest.header keeps of a received header.
READ_TAGS = frozenset(_TAGS.values())


class StudyTags(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    study_uid: str
    patient_id: str | None = None
    patient_name: str | None = None
    patient_sex: str | None = None
    patient_age_years: int | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_description: str | None = None


class InstanceTags(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    study: StudyTags
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None = None
    body_part: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    image_type: str | None = None
    slice_thickness: float | None = None
    image_position: str | None = None
    image_orientation: str | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    photometric_interpretation: str | None = None
    view_position: str | None = None
    protocol_name: str | None = None


def read_tags(dataset: Header) -> InstanceTags:
    """Validated index attributes; raises :class:`InvalidInstance` with the status to answer."""
    try:
        return _read(dataset)
    except InvalidInstance:
        raise
    except Exception as exc:  # a damaged element can raise nearly anything from pydicom
        raise InvalidInstance(
            f"cannot read attributes: {exc.__class__.__name__}: {exc}", Status.CANNOT_UNDERSTAND
        ) from exc


def _read(dataset: Header) -> InstanceTags:
    uids = {
        "StudyInstanceUID": _text(dataset, "StudyInstanceUID", _UID_READ_LIMIT),
        "SeriesInstanceUID": _text(dataset, "SeriesInstanceUID", _UID_READ_LIMIT),
        "SOPInstanceUID": _text(dataset, "SOPInstanceUID", _UID_READ_LIMIT),
        "SOPClassUID": _text(dataset, "SOPClassUID", _UID_READ_LIMIT),
    }
    missing = [name for name, value in uids.items() if not value]
    if missing:
        raise InvalidInstance(f"missing {', '.join(missing)}", Status.MISSING_ATTRIBUTE)
    invalid = [name for name, value in uids.items() if not is_valid_uid(value)]
    if invalid:
        raise InvalidInstance(f"not a valid DICOM UID: {', '.join(invalid)}", Status.INVALID_UID)
    syntax = transfer_syntax(dataset)
    study = StudyTags(
        study_uid=uids["StudyInstanceUID"] or "",
        patient_id=_text(dataset, "PatientID"),
        patient_name=_text(dataset, "PatientName", 200),
        patient_sex=_text(dataset, "PatientSex", 16),
        patient_age_years=patient_age_years(dataset),
        study_date=_text(dataset, "StudyDate", 8),
        study_time=_text(dataset, "StudyTime", 16),
        accession_number=_text(dataset, "AccessionNumber"),
        study_description=_text(dataset, "StudyDescription", 200),
    )
    return InstanceTags(
        study=study,
        series_uid=uids["SeriesInstanceUID"] or "",
        sop_instance_uid=uids["SOPInstanceUID"] or "",
        sop_class_uid=uids["SOPClassUID"] or "",
        transfer_syntax_uid=str(syntax) if syntax is not None else "",
        modality=_text(dataset, "Modality", 16),
        body_part=_text(dataset, "BodyPartExamined"),
        series_description=_text(dataset, "SeriesDescription", 200),
        series_number=_integer(dataset, "SeriesNumber"),
        instance_number=_integer(dataset, "InstanceNumber"),
        image_type=_text(dataset, "ImageType", 200),
        slice_thickness=_number(dataset, "SliceThickness"),
        image_position=_text(dataset, "ImagePositionPatient", 200),
        image_orientation=_text(dataset, "ImageOrientationPatient", 200),
        rows=_integer(dataset, "Rows"),
        columns=_integer(dataset, "Columns"),
        number_of_frames=_integer(dataset, "NumberOfFrames"),
        photometric_interpretation=_text(dataset, "PhotometricInterpretation", 32),
        view_position=_text(dataset, "ViewPosition", 16),
        protocol_name=_text(dataset, "ProtocolName"),
    )


def patient_age_years(dataset: Header) -> int | None:
    """From PatientAge ("057Y", "006M") or else from PatientBirthDate and StudyDate."""
    age = _text(dataset, "PatientAge")
    match = _AGE.fullmatch(age or "")
    if match:
        number, unit = int(match.group(1)), match.group(2)
        return number if unit == "Y" else 0
    born, studied = _date(dataset, "PatientBirthDate"), _date(dataset, "StudyDate")
    if born and studied and born <= studied:
        return studied.year - born.year - ((studied.month, studied.day) < (born.month, born.day))
    return None


# The attributes whose VR has ASCII values that pydicom decodes without the character set
# (PS3.5 6.2; pydicom's default_encoding). They are read from the raw element, as pydicom
# would convert them: its conversion (hooks, a regex validation, a UID or DSfloat object per
# value) was the largest part of parsing a received instance. Others go through pydicom.
_ASCII_VRS: dict[str, str] = {
    "StudyInstanceUID": "UI",
    "SeriesInstanceUID": "UI",
    "SOPInstanceUID": "UI",
    "SOPClassUID": "UI",
    "PatientSex": "CS",
    "PatientAge": "AS",
    "PatientBirthDate": "DA",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "Modality": "CS",
    "BodyPartExamined": "CS",
    "SeriesNumber": "IS",
    "InstanceNumber": "IS",
    "ImageType": "CS",
    "SliceThickness": "DS",
    "ImagePositionPatient": "DS",
    "ImageOrientationPatient": "DS",
    "NumberOfFrames": "IS",
    "PhotometricInterpretation": "CS",
    "ViewPosition": "CS",
}
_STRIPPED_VRS = frozenset({"UI", "DS", "IS"})  # pydicom's UID, DSfloat, IS strip each value
_PYDICOM = object()  # read this one through pydicom

# The attributes whose values are text in the dataset's character set: decoded here, from a
# plain header's raw element, with the codec pydicom would use (PlainHeader.text_codec), as
# its conversion does (LO, SH: each value's trailing spaces and NULs dropped; PN: the whole
# value's, each value a single name group) — its conversion of a name (a PersonName, encoded
# again and decoded) cost more than the rest of an instance's attributes together.
_TEXT_VRS = {
    "PatientID": "LO",
    "PatientName": "PN",
    "AccessionNumber": "SH",
    "StudyDescription": "LO",
    "SeriesDescription": "LO",
    "ProtocolName": "LO",
}
_ESC = b"\x1b"  # an ISO 2022 escape: the value switches character sets, pydicom decodes it


def _raw_values(dataset: Header, keyword: str) -> list[str] | object | None:
    """The values of an ASCII attribute as pydicom's conversion gives them as text, None
    when absent or empty, or :data:`_PYDICOM` (not read here: another VR, or already
    converted)."""
    vr = _ASCII_VRS.get(keyword)
    if vr is None:
        return _PYDICOM
    element = dataset.get_item(_TAGS[keyword])
    if element is None:
        return None
    if not isinstance(element, RawDataElement) or element.VR not in (None, vr):
        return _PYDICOM
    if not element.value:
        return None
    values = element.value.decode(default_encoding).rstrip(" \x00").split("\\")
    return [value.strip() for value in values] if vr in _STRIPPED_VRS else values


def _decoded_text(dataset: Header, keyword: str) -> list[str] | object | None:
    """The values of a text attribute of a plain header as pydicom's conversion gives them,
    None when absent or empty, or :data:`_PYDICOM` (another VR, an escape sequence, several
    name groups, bytes the codec refuses, a Specific Character Set that is not plain)."""
    vr = _TEXT_VRS.get(keyword)
    if vr is None or not isinstance(dataset, PlainHeader):
        return _PYDICOM
    element = dataset.get_item(_TAGS[keyword])
    if element is None:
        return None
    raw = element.value or b""
    codec = dataset.text_codec()
    if element.VR not in (None, vr) or codec is None or _ESC in raw:
        return _PYDICOM
    if vr == "PN":
        raw = raw.rstrip(b"\x00 ")
        if b"=" in raw:
            return _PYDICOM
    try:
        text = raw.decode(codec)
    except (UnicodeError, LookupError):
        return _PYDICOM  # pydicom warns and replaces, or raises: as before
    if not text:
        return None
    values = text.split("\\")
    return values if vr == "PN" else [value.rstrip("\x00 ") for value in values]


def _value(dataset: Header, keyword: str) -> Any:
    # By tag number: a keyword goes through Dataset.__getattr__ and the dictionary each time,
    # which cost more than the value itself on every C-STORE.
    tag = _TAGS.get(keyword)
    if tag is None:
        return dataset.get(keyword)
    element = dataset.get(tag)
    return None if element is None else element.value


def _text(dataset: Header, keyword: str, limit: int = 64) -> str | None:
    raw = _raw_values(dataset, keyword)
    if raw is _PYDICOM:
        raw = _decoded_text(dataset, keyword)
    if raw is not _PYDICOM:
        text = "\\".join(cast(list[str], raw)) if raw is not None else ""
    else:
        value = _value(dataset, keyword)
        if value is None or value == "":
            return None
        if isinstance(value, MultiValue | list | tuple):
            text = "\\".join(str(part) for part in value)
        else:
            text = str(value)
    text = text.strip().strip("\x00").strip()
    return text[:limit] or None


# Rows and Columns: one US value, from its two raw bytes in the dataset's byte order.
_US_KEYWORDS = frozenset({"Rows", "Columns"})


def single_us(element: object) -> int | None:
    """A raw element's one US value, from its two bytes in the dataset's byte order; None
    where it is not that plain (converted already, another VR, empty, several values):
    pydicom reads those, with its own conversion."""
    if not isinstance(element, RawDataElement) or element.VR not in (None, "US"):
        return None
    raw = element.value
    if raw is None or len(raw) != 2:
        return None
    return int.from_bytes(raw, "little" if element.is_little_endian else "big")


def _raw_us(dataset: Header, keyword: str) -> int | object | None:
    """The single US value, None when absent, else :data:`_PYDICOM`."""
    element = dataset.get_item(_TAGS[keyword])
    if element is None:
        return None
    value = single_us(element)
    return _PYDICOM if value is None else value


def _integer(dataset: Header, keyword: str) -> int | None:
    if keyword in _US_KEYWORDS:
        value = _raw_us(dataset, keyword)
        if value is not _PYDICOM:
            return cast(int | None, value)
    raw = _raw_values(dataset, keyword)
    if raw is not _PYDICOM:
        return _single_integer(cast(list[str] | None, raw))
    try:
        value = _value(dataset, keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _single_integer(values: list[str] | None) -> int | None:
    # As int() of pydicom's IS: "12.0" and "1e2" are whole, "12.5" truncates (pydicom's
    # lenient ISfloat), several values (a MultiValue) or no number give None.
    if values is None or len(values) != 1 or not values[0]:
        return None
    try:
        return int(values[0])
    except ValueError:
        pass
    try:
        return int(float(values[0]))  # OverflowError for "inf" escapes, as through pydicom
    except ValueError:
        return None


def _number(dataset: Header, keyword: str) -> float | None:
    raw = _raw_values(dataset, keyword)
    if raw is not _PYDICOM:
        values = cast(list[str] | None, raw)
        if values is None or len(values) != 1 or not values[0]:
            return None
        try:
            return float(values[0])
        except ValueError:
            return None
    try:
        value = _value(dataset, keyword)
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _date(dataset: Header, keyword: str) -> date | None:
    text = _text(dataset, keyword)
    if not text or len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
