"""The DICOM SR result: a Comprehensive 3D SR, TID 1500 Measurement Report, of one job.

The observer is the device (TID 1004), each label gets a measurement group with its
qualitative evaluation (present/absent) and probability, located on the source image where
the device located it, and a Russian conclusion closes the report. The SR is a new series in
the source study; rebuilding it from the same :class:`ReportInput` gives the same UIDs and
the same bytes, so a delivery retried after a crash leaves one copy at the destination.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom import Dataset, config
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM, validate_value

from gateway.results.input import AI_NOTICE_RU, ReportFinding, ReportInput
from models.manifest import DeviceManifest

SR_SERIES_NUMBER = 9901
# LO (Long String): series description, manufacturer, model name; at most 64 (bytes, to
# validators).
LO_MAX = 64
# The results carry Russian text; UTF-8 holds it and whatever the source's names were in.
UTF8 = "ISO_IR 192"

_RUSSIAN = hd.sr.CodedConcept("ru-RU", "RFC5646", "Russian (Russia)")
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_CT_PROCEDURE = hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region")
# Elements never needed for references or headers: copying pixels would only cost memory.
_BULK_TAGS = frozenset(
    Tag(keyword)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "EncapsulatedDocument")
)
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
# Source values checked before copying: the VRs whose bad values validators refuse in the
# patient, study and equipment attributes results inherit. UIDs are not among them: however
# they look, replacing them would break the link to the source.
_CHECKED_VRS = frozenset({"AS", "CS", "DA", "DT", "LO", "PN", "SH", "TM"})
_PARSERS: dict[str, Callable[[str], object]] = {"DA": DA, "DT": DT, "TM": TM}
# Measurement names ReportFinding.measurements may use: (concept, unit, derivation).
_MEASUREMENTS: dict[
    str, tuple[hd.sr.CodedConcept, hd.sr.CodedConcept, hd.sr.CodedConcept | None]
] = {
    "max_diameter_mm": (
        hd.sr.CodedConcept.from_code(codes.SCT.Diameter),
        hd.sr.CodedConcept.from_code(codes.UCUM.Millimeter),
        hd.sr.CodedConcept.from_code(codes.SCT.Maximum),
    ),
    "volume_mm3": (
        hd.sr.CodedConcept.from_code(codes.SCT.Volume),
        hd.sr.CodedConcept.from_code(codes.UCUM.CubicMillimeter),
        None,
    ),
}


# --- shared by the builders of this package (SR, SEG) -----------------------------------


def derived_uid(report: ReportInput, kind: str, *parts: str) -> str:
    """A UID that is a function of (study, job, kind, parts) only, so rebuilds repeat it."""
    study_uid = str(report.sources[0].StudyInstanceUID)
    return str(
        generate_uid(
            prefix=report.uid_root, entropy_srcs=[study_uid, str(report.job_id), kind, *parts]
        )
    )


def tracking_uid(report: ReportInput, index: int) -> str:
    """The finding's tracking UID (``index`` 1-based in ``report.findings``): the SR's
    measurement group and the SEG's segment for one finding share it."""
    return derived_uid(report, "finding", str(index))


def device_uid(report: ReportInput) -> str:
    """The device observer UID: the same for every result of one device version."""
    device = report.device
    return str(
        generate_uid(prefix=report.uid_root, entropy_srcs=["device", device.id, device.version])
    )


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


def series_description(device: DeviceManifest, what: str = "") -> str:
    """«ИИ: [what ]<device> <version>»: the Russian name where it fits in 64 bytes, else the
    English one, else the device id, since a whole identifier beats a name cut mid-word."""
    for name in (device.name_ru, device.name, device.id):
        text = f"ИИ: {what}{name} {device.version}"
        if _fits(text):
            return text
    return lo(f"ИИ: {what}{device.id} {device.version}")


def registration_ru(device: DeviceManifest) -> str:
    """The device's РУ as a reader expects it, or why there is none."""
    if device.registration is None:
        return "без РУ — исследовательское устройство"
    return f"РУ {device.registration.number} от {device.registration.date:%d.%m.%Y}"


def notices_ru(device: DeviceManifest) -> list[str]:
    """What every result must say: the AI notice, and the provenance one if not clinical."""
    notices = [AI_NOTICE_RU]
    if not device.provenance.clinical_use:
        notices.append(device.provenance.notice_ru)
    return notices


def header_copies(sources: Sequence[Dataset]) -> list[Dataset]:
    """The sources' headers, fit to be copied into what we write.

    Pixels are left out (highdicom needs headers only, and compressed pixel data is never
    decoded here), the caller's datasets stay untouched, and what real sources get wrong is
    mended on the copy: strict writing, lenient reading.
    """
    copies = []
    for source in sources:
        header = Dataset()
        for element in source:
            if element.tag not in _BULK_TAGS:
                header.add(copy.deepcopy(element))
        _mend(header)
        copies.append(header)
    return copies


def _mend(header: Dataset) -> None:
    """Drop (type 2: empty) the attributes whose values break their VR, fill the type 2
    patient/study attributes highdicom reads, and state what the source left unsaid."""
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
        header.DeidentificationMethod = "not stated by the source"


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


def device_equipment(report: ReportInput) -> hd.ContributingEquipment:
    """The device as the Contributing Equipment that processed the source images."""
    device = report.device
    return hd.ContributingEquipment(
        manufacturer=lo(device.vendor),
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=device.id,
        software_versions=device.version,
        device_serial_number=device.version,
        contribution_datetime=report.completed_at,
        contribution_description=f"{device.name_ru} {device.version}; {registration_ru(device)}",
    )


def stamp_times(dataset: Dataset, when: datetime) -> None:
    """Replace the build-time clock readings highdicom takes with the job's completion time,
    so a rebuild is byte-identical; the time zone is stated since ``when`` is UTC."""
    dataset.InstanceCreationDate = DA(when.date())
    dataset.InstanceCreationTime = TM(when.time())
    dataset.TimezoneOffsetFromUTC = when.strftime("%z") or "+0000"
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = DT(when)


# --- the SR ------------------------------------------------------------------------------


def build_sr(report: ReportInput) -> Dataset:
    """The job's Comprehensive 3D SR (TID 1500), for positive and negative results alike."""
    if not report.sources:
        raise ValueError(f"job {report.job_id}: no source instances to report on")
    if not report.findings:
        raise ValueError(f"job {report.job_id}: no findings, not even negative ones")
    headers = header_copies(report.sources)
    content = _measurement_report(report, headers)
    device = report.device
    when = report.completed_at
    sr = hd.sr.Comprehensive3DSR(
        evidence=headers,
        content=content,
        series_instance_uid=derived_uid(report, "sr", "series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid(report, "sr", "instance"),
        instance_number=1,
        manufacturer=lo(device.vendor),
        # Complete, but preliminary and unverified: a physician must confirm it.
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[device_equipment(report)],
        specific_character_set=UTF8,
        series_description=series_description(device),
        manufacturer_model_name=device.id,
        software_versions=device.version,
        device_serial_number=device.version,
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
    )
    stamp_times(sr, when)
    return sr


def _measurement_report(report: ReportInput, headers: list[Dataset]) -> Dataset:
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    groups = [
        _measurement_group(report, index, finding, by_uid)
        for index, finding in enumerate(report.findings, start=1)
    ]
    measurement_report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_observer(report)),
        procedure_reported=_procedure(headers[0]),
        imaging_measurements=groups,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            _RUSSIAN
        ),
    )
    root: Dataset = measurement_report[0]
    # TID 1500 order: ..., Image Library, Imaging Measurements, Qualitative Evaluations.
    root.ContentSequence.insert(len(root.ContentSequence) - 1, _image_library(headers))
    root.ContentSequence.append(_conclusion(report))
    return root


def _image_library(headers: list[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 with every analysed instance, built here rather than by MeasurementReport
    so an image missing what TID 1603/1604 describe (an SC chest film has no Imager Pixel
    Spacing) is still listed, with the descriptors every image has."""
    images = []
    for header in headers:
        item = hd.sr.ImageContentItem(
            name=hd.sr.CodedConcept("260753009", "SCT", "Source"),
            referenced_sop_class_uid=str(header.SOPClassUID),
            referenced_sop_instance_uid=str(header.SOPInstanceUID),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        item.ContentSequence = _descriptors(header)
        images.append(item)
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group.ContentSequence = hd.sr.ContentSequence(images)
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def _descriptors(header: Dataset) -> hd.sr.ImageLibraryEntryDescriptors:
    try:
        return hd.sr.ImageLibraryEntryDescriptors(header)
    except AttributeError:
        # The modality-specific descriptors (TID 1603/1604) are optional; highdicom picks
        # them by Modality, so a header without it gets the common ones only.
        common = Dataset()
        for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID"):
            if keyword in header:
                setattr(common, keyword, header[keyword].value)
        common.Modality = ""
        return hd.sr.ImageLibraryEntryDescriptors(common)


def _observer(report: ReportInput) -> hd.sr.ObserverContext:
    device = report.device
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(report),
            name=f"{device.name_ru} ({registration_ru(device)})",
            manufacturer_name=device.vendor,
            model_name=device.id,
            serial_number=device.version,
        ),
    )


def _procedure(first: Dataset) -> hd.sr.CodedConcept:
    # CID 100 names CT explicitly; radiography and mammography fall under the parent concept.
    if first.get("Modality") == "CT":
        return _CT_PROCEDURE
    return hd.sr.CodedConcept.from_code(codes.SCT.ImagingProcedure)


def _algorithm(report: ReportInput, finding: ReportFinding) -> hd.sr.AlgorithmIdentification:
    device = report.device
    return hd.sr.AlgorithmIdentification(
        name=device.name,
        version=device.version,
        parameters=[f"threshold={finding.threshold:g}", registration_ru(device)],
        manufacturer=device.vendor,
    )


def _measurement_group(
    report: ReportInput, index: int, finding: ReportFinding, by_uid: dict[str, Dataset]
) -> (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
):
    label = hd.sr.CodedConcept(finding.label_code, finding.label_scheme, finding.label_en)
    algorithm = _algorithm(report, finding)
    tracking = hd.sr.TrackingIdentifier(
        uid=tracking_uid(report, index),
        identifier=f"{finding.label_en} #{index}",
    )
    measurements = [_probability(finding), *_sizes(finding)]
    evaluation = hd.sr.QualitativeEvaluation(
        name=label, value=codes.SCT.Present if finding.positive else codes.SCT.Absent
    )
    region = _region(finding, by_uid) if finding.positive else None
    if region is not None:
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=region,
            finding_type=label,
            algorithm_id=algorithm,
            measurements=measurements,
            qualitative_evaluations=[evaluation],
        )
    # Nothing to outline (negative, or a device that does not localise): the group is
    # about the analysed images as a whole.
    images = _group_images(finding, by_uid)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=label,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[evaluation],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(str(h.SOPClassUID), str(h.SOPInstanceUID))
            for h in images
        ],
    )


def _probability(finding: ReportFinding) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=codes.DCM.Probability,
        value=round(float(finding.probability), 4),
        unit=codes.UCUM.NoUnits,
    )


def _sizes(finding: ReportFinding) -> list[hd.sr.Measurement]:
    unknown = set(finding.measurements) - set(_MEASUREMENTS)
    if unknown:
        raise ValueError(f"{finding.label_en}: unknown measurements {sorted(unknown)}")
    return [
        hd.sr.Measurement(
            name=_MEASUREMENTS[key][0],
            value=float(value),
            unit=_MEASUREMENTS[key][1],
            derivation=_MEASUREMENTS[key][2],
        )
        for key, value in finding.measurements.items()
    ]


def _source(finding: ReportFinding, by_uid: dict[str, Dataset]) -> Dataset:
    uid = finding.sop_instance_uid
    if uid is None or uid not in by_uid:
        raise ValueError(f"{finding.label_en}: image {uid} is not among the job's sources")
    return by_uid[uid]


def _region(finding: ReportFinding, by_uid: dict[str, Dataset]) -> hd.sr.ImageRegion | None:
    """The finding on its image: the box as a closed polyline, else the centre as a point.

    ReportFinding coordinates are (row, column) with pixel centres at i + 0.5, and DICOM's
    image coordinates are (column, row) with the top left pixel's corner at 0.0, so the
    values carry over unchanged once the axes are swapped. 3D findings use their last two
    axes on the centre slice.
    """
    if finding.box is None and finding.centre is None:
        return None
    header = _source(finding, by_uid)
    source = hd.sr.SourceImageForRegion(str(header.SOPClassUID), str(header.SOPInstanceUID))
    if finding.box is not None:
        (r0, r1), (c0, c1) = finding.box[-2], finding.box[-1]
        corners = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
        return hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array(corners, dtype=np.float64),
            source_image=source,
        )
    assert finding.centre is not None
    row, column = finding.centre[-2], finding.centre[-1]
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[column, row]], dtype=np.float64),
        source_image=source,
    )


def _group_images(finding: ReportFinding, by_uid: dict[str, Dataset]) -> list[Dataset]:
    if finding.sop_instance_uid is not None:
        return [_source(finding, by_uid)]
    return list(by_uid.values())


# --- the conclusion ----------------------------------------------------------------------


def _number(value: float) -> str:
    """Up to three decimals, no trailing zeros, the Russian decimal comma."""
    return f"{value:.3f}".rstrip("0").rstrip(".").replace(".", ",")


def finding_text_ru(finding: ReportFinding) -> str:
    """One label's answer in a sentence."""
    odds = f"вероятность {_number(finding.probability)}, порог {_number(finding.threshold)}"
    if not finding.positive:
        return f"{finding.label_ru}: не выявлено ({odds})."
    sizes = []
    if "max_diameter_mm" in finding.measurements:
        sizes.append(f"наибольший диаметр {_number(finding.measurements['max_diameter_mm'])} мм")
    if "volume_mm3" in finding.measurements:
        sizes.append(f"объём {_number(finding.measurements['volume_mm3'])} мм³")
    extra = f"; {', '.join(sizes)}" if sizes else ""
    return f"{finding.label_ru}: выявлено ({odds}){extra}."


def conclusion_ru(report: ReportInput) -> str:
    """The report's conclusion: what was found, or that nothing passed the threshold."""
    device = report.device
    if report.positive:
        head = "Заключение ИИ: выявлены признаки патологии."
    else:
        head = (
            "Заключение ИИ: признаков патологии с вероятностью выше порога устройства не выявлено."
        )
    lines = [head, *(finding_text_ru(f) for f in report.findings)]
    lines.append(
        f"Устройство: {device.name_ru}, версия {device.version}, {registration_ru(device)}."
    )
    return " ".join(lines)


def _conclusion(report: ReportInput) -> hd.sr.ContainerContentItem:
    """TID 1500's «Qualitative Evaluations» container: the conclusion and the notices."""
    container = hd.sr.ContainerContentItem(
        name=_QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    items = [
        hd.sr.TextContentItem(
            name=codes.DCM.Conclusion,
            value=conclusion_ru(report),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    items += [
        hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=notice,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        for notice in notices_ru(report.device)
    ]
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container
