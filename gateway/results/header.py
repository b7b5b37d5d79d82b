"""The DICOM header of every result object (SR, SEG, flag SC, GSPS), written one way.

- **UIDs** are functions of (study, job, kind, parts), so a rebuilt result repeats them and a
  delivery retried after a crash leaves one copy: under the organisation's root
  (``uid_root``), else in the UUID-derived ``2.25`` arc (PS3.5 B.2), never pydicom's root.
- **Series description** «ИИ: [what ]<device> <version>[suffix]» within LO's 64 bytes.
- **Patient and study** attributes come from the source's header, mended the same way for
  every object: a value its VR forbids (an anonymiser's ``00000000`` date, a PatientAge of
  ``62``) is emptied where the attribute is Type 2 and dropped otherwise, the Type 2
  attributes are present, and a de-identified source says its method was not stated.
- **Time stamps**: Content Date/Time (and the series) are when the analysis started, the
  instance is created when the job finished, and TimezoneOffsetFromUTC says both are UTC.
- **IHE AIR**: the AI device in the Contributing Equipment Sequence with Purpose of
  Reference (Newcode1, 99IHE, "Processing Algorithm"), its manufacturer, model, software
  version and a Device UID derived from device id and version.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

import highdicom as hd
from pydicom import DataElement, Dataset, config
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM, validate_value

from gateway.results import iod_lookup
from gateway.results.input import ReportInput
from gateway.results.notices import registration_ru
from models.manifest import DeviceManifest

# Every builder imports this module first: highdicom's IOD lookups are cached from here on.
iod_lookup.install()

# The results carry Russian text; UTF-8 holds it and whatever the source's names were in.
UTF8 = "ISO_IR 192"
# LO (Long String): series description, manufacturer, model name; at most 64 (bytes, to
# validators).
LO_MAX = 64
# IHE AIR Rev 1.1 §6.5.3.1: the purpose of the algorithm's Contributing Equipment item.
PROCESSING_ALGORITHM = hd.sr.CodedConcept("Newcode1", "99IHE", "Processing Algorithm")
# Names of UUID-derived UIDs: fixed, so the same parts give the same UID on every gateway.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:aigw:result-uids")
# Joins the parts of a UID's name: no UID, kind or number contains it, so ("1.2", "34") and
# ("1.23", "4") name different UIDs.
_SEPARATOR = "\x1f"
# Type 2 attributes highdicom reads from the first source by attribute access; some real
# files omit them, and an empty value is what the standard asks for when unknown.
PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
NOT_STATED = "Not stated by the source"
# Elements never needed for references or headers: copying pixels would only cost memory.
_BULK_TAGS = frozenset(
    Tag(keyword)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "EncapsulatedDocument")
)
# Source values checked before copying: the VRs whose bad values validators refuse in the
# patient, study and equipment attributes results inherit. UIDs are not among them: however
# they look, replacing them would break the link to the source.
_CHECKED_VRS = frozenset({"AS", "CS", "DA", "DT", "LO", "PN", "SH", "TM"})
_PARSERS: dict[str, Callable[[str], object]] = {"DA": DA, "DT": DT, "TM": TM}


# --- UIDs --------------------------------------------------------------------------------


def mint_uid(root: str | None, *parts: str) -> str:
    """A UID that is a function of ``parts`` only: under ``root`` when given, else the
    UUID-derived form ``2.25.<name-based UUID>``."""
    name = _SEPARATOR.join(parts)
    if root is None:
        # pydicom's generate_uid(prefix=None) ignores its entropy and draws a random UUID;
        # a rebuild must repeat the UID, so the UUID is name-based (RFC 4122 version 5).
        return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"
    prefix = root if root.endswith(".") else f"{root}."
    return str(generate_uid(prefix=prefix, entropy_srcs=[name]))


def derived_uid(report: ReportInput, kind: str, *parts: str) -> str:
    """A UID of this job's result ``kind`` (``sr``, ``sc``, …): (study, job, kind, parts)."""
    study_uid = str(report.sources[0].StudyInstanceUID)
    return mint_uid(report.uid_root, study_uid, str(report.job_id), kind, *parts)


def tracking_uid(report: ReportInput, index: int) -> str:
    """The finding's tracking UID (``index`` 1-based in ``report.findings``): the SR's
    measurement group and the SEG's segment for one finding share it."""
    return finding_tracking_uid(
        report.uid_root, str(report.sources[0].StudyInstanceUID), report.job_id, index
    )


def finding_tracking_uid(root: str | None, study_uid: str, job_id: int, index: int) -> str:
    """:func:`tracking_uid` from its parts: the ``index``-th finding (1-based, in the order
    inference recorded them) of job ``job_id`` — how a radiologist's assessment naming the
    tracking UID is traced back to the finding (:mod:`gateway.monitoring.linking`)."""
    return mint_uid(root, study_uid, str(job_id), "finding", str(index))


def device_uid(report: ReportInput) -> str:
    """The device's UID: one per device version, so it changes when the model is retrained
    (the SR's observer and every object's Contributing Equipment carry it)."""
    return mint_uid(report.uid_root, "device", report.device.id, report.device.version)


# --- text ----------------------------------------------------------------------------------


def lo(text: str) -> str:
    """``text`` cut to fit a Long String, marking the cut with an ellipsis.

    Validators (dciodvfy) count LO's 64 in bytes, and Cyrillic takes two bytes in UTF-8.
    """
    if _fits(text):
        return text
    while not _fits(text + "…"):
        text = text[:-1]
    return text.rstrip() + "…"


def _fits(text: str) -> bool:
    return len(text.encode("utf-8")) <= LO_MAX


def series_description(device: DeviceManifest, what: str = "", suffix: str = "") -> str:
    """«ИИ: [what ]<device> <version>[suffix]»: the Russian name where it fits in 64 bytes,
    else the English one, else the device id, since a whole identifier beats a name cut
    mid-word."""
    for name in (device.name_ru, device.name, device.id):
        text = f"ИИ: {what}{name} {device.version}{suffix}"
        if _fits(text):
            return text
    return lo(f"ИИ: {what}{device.id} {device.version}{suffix}")


# --- the source's header -----------------------------------------------------------------


def source_headers(sources: Iterable[Dataset]) -> list[Dataset]:
    """The sources' headers, fit to be copied into what we write (:func:`source_header`)."""
    return [source_header(source) for source in sources]


def source_header(source: Dataset) -> Dataset:
    """The source's header, fit to be copied into what we write.

    Pixels are left out (highdicom needs headers only, and compressed pixel data is never
    decoded here), the caller's dataset stays untouched, and what real sources get wrong is
    mended on the copy: strict writing, lenient reading.
    """
    header = Dataset()
    for element in source:
        if element.tag not in _BULK_TAGS:
            header.add(_copy(element))
    _mend(header)
    return header


# The grid an image lies on and the UIDs that place it: what a result object listing or
# referencing many images (the SR's image library, the SEG's frames) copies of all but the
# first, whose whole header gives the patient, study and equipment.
IMAGE_GRID_KEYWORDS = (
    "SeriesInstanceUID",
    "SOPClassUID",
    "Modality",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "ImageOrientationPatient",
    "PatientOrientation",
)


def reference_header(source: Dataset, keywords: Iterable[str]) -> Dataset:
    """Only ``keywords`` of the source's header (its UIDs always), mended as
    :func:`source_header` mends: for the instances a result object lists but copies nothing
    from, such as the 99 other slices of a CT series in the SR's evidence."""
    header = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        header.add(_copy(source[keyword]))
    for keyword in keywords:
        if keyword in source and keyword not in header:
            header.add(_copy(source[keyword]))
    _mend(header)
    return header


def _copy(element: DataElement) -> DataElement:
    """A copy the caller's dataset does not share anything mutable with. A single value
    (text, number, bytes) is immutable, so a shallow copy does: a deep copy of every
    element was half of what copying a CT slice's header cost."""
    # A multi-valued element is deep-copied too: setting a new list would run pydicom's
    # conversion again, and with it a validation the reader never made (a lowercase CS
    # value warned, or raised under RAISE, before _mend could drop it).
    if element.VR == "SQ" or isinstance(element.value, (MultiValue, list)):
        return copy.deepcopy(element)
    return copy.copy(element)


def _mend(header: Dataset) -> None:
    """Drop (type 2: empty) the attributes whose values break their VR, fill the type 2
    patient/study attributes, and state what the source left unsaid."""
    for element in list(header):
        if element.tag.is_private or element.VR not in _CHECKED_VRS:
            continue
        if _valid(element.VR, element.value):
            continue
        if element.keyword in PATIENT_STUDY_TYPE2:
            element.value = None
        else:
            del header[element.tag]
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        # 0\0 is what some CR readers write when they do not know: not a spacing.
        if keyword in header and not _positive_pair(header[keyword].value):
            del header[keyword]
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    identity_removed = header.get("PatientIdentityRemoved") == "YES"
    if identity_removed and not {
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
    } & set(header.dir()):
        # Required with YES; the source did not say how, and we do not guess.
        header.DeidentificationMethod = NOT_STATED


def _positive_pair(value: object) -> bool:
    if not isinstance(value, (list, MultiValue)) or len(value) != 2:
        return False
    try:
        return all(float(v) > 0 for v in value)
    except (TypeError, ValueError):
        return False


def _valid(vr: str, value: object) -> bool:
    values = value if isinstance(value, (list, MultiValue)) else [value]
    for item in values:
        if item is None or item == "":
            continue
        try:
            validate_value(vr, str(item), config.RAISE)
            if vr in _PARSERS:
                _PARSERS[vr](str(item))
        except ValueError:
            return False
    return True


def copy_series_anatomy(target: Dataset, headers: Sequence[Dataset]) -> None:
    """Body part and side where all sources agree: Laterality is required for a paired
    organ, absent for an unpaired one, and empty when no one side applies."""
    parts = {str(h.get("BodyPartExamined") or "") for h in headers}
    part = parts.pop() if len(parts) == 1 else ""
    if part:
        target.BodyPartExamined = part
    sides = {str(h.get("ImageLaterality") or h.get("Laterality") or "") for h in headers}
    if len(sides) == 1 and (side := next(iter(sides))) in ("R", "L"):
        target.Laterality = side
    elif len(sides) > 1 or not part:
        target.Laterality = None  # both sides (e.g. R and L views), or nothing known


# --- equipment and time ------------------------------------------------------------------


def add_ai_device(dataset: Dataset, report: ReportInput) -> None:
    """Name the AI device first in the Contributing Equipment Sequence (IHE AIR).

    A plain item, since highdicom's ContributingEquipment admits DCM purposes only.
    """
    device = report.device
    item = Dataset()
    item.Manufacturer = lo(device.vendor)
    item.ManufacturerModelName = lo(device.id)
    item.SoftwareVersions = device.version
    item.DeviceSerialNumber = device.version
    item.DeviceUID = device_uid(report)
    item.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    item.ContributionDateTime = DT(_utc(report.completed_at))
    item.ContributionDescription = f"{device.name_ru} {device.version}; {registration_ru(device)}"
    others = list(dataset.get("ContributingEquipmentSequence", []))
    dataset.ContributingEquipmentSequence = [item, *others]


def stamp_times(dataset: Dataset, report: ReportInput) -> None:
    """Replace the clock readings highdicom takes while building with the job's own times,
    so a rebuild is byte-identical: the analysis start for content and series, the job's
    end for the instance and each contribution; all UTC, and the offset says so."""
    started, finished = _utc(report.started_at), _utc(report.completed_at)
    dataset.TimezoneOffsetFromUTC = "+0000"
    dataset.InstanceCreationDate = DA(finished.date())
    dataset.InstanceCreationTime = TM(finished.time())
    dataset.SeriesDate = DA(started.date())
    dataset.SeriesTime = TM(started.time())
    if "ContentDate" in dataset:  # highdicom wrote it: the IOD has it
        dataset.ContentDate = DA(started.date())
        dataset.ContentTime = TM(started.time())
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = DT(finished)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} has no time zone: result times must be aware")
    return moment.astimezone(UTC)
