"""The DICOM SR result: a Comprehensive 3D SR, TID 1500 Measurement Report, of one job.

The observer is the device (TID 1004), each label gets a measurement group with its
qualitative evaluation (present/absent) and probability, located on the source image where
the device located it, and a Russian conclusion closes the report. The SR is a new series in
the source study; rebuilding it from the same :class:`ReportInput` gives the same UIDs and
the same bytes, so a delivery retried after a crash leaves one copy at the destination.
"""

from __future__ import annotations

from typing import cast

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from gateway.results.header import (
    IMAGE_GRID_KEYWORDS,
    UTF8,
    add_ai_device,
    derived_uid,
    device_uid,
    lo,
    reference_header,
    series_description,
    source_header,
    stamp_times,
    tracking_uid,
)
from gateway.results.input import ReportFinding, ReportInput
from gateway.results.notices import notices_ru, registration_ru

SR_SERIES_NUMBER = 9901

_RUSSIAN = hd.sr.CodedConcept("ru-RU", "RFC5646", "Russian (Russia)")
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_CT_PROCEDURE = hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region")
# Measurement names a finding's measurements may use: (concept, unit, derivation).
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


# --- the SR ------------------------------------------------------------------------------


def build_sr(report: ReportInput) -> Dataset:
    """The job's Comprehensive 3D SR (TID 1500), for positive and negative results alike."""
    if not report.sources:
        raise ValueError(f"job {report.job_id}: no source instances to report on")
    if not report.findings:
        raise ValueError(f"job {report.job_id}: no findings, not even negative ones")
    first, *others = report.sources
    # The first source gives the patient, study and equipment; the others are only listed
    # (evidence, image library), so only what lists them is copied.
    headers = [
        source_header(first),
        *(reference_header(s, (*_SHARED_KEYWORDS, "ImagePositionPatient")) for s in others),
    ]
    content = _measurement_report(report, headers)
    device = report.device
    sr = hd.sr.Comprehensive3DSR(
        evidence=headers,
        content=_bare(content),
        series_instance_uid=derived_uid(report, "sr", "series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid(report, "sr", "instance"),
        instance_number=1,
        manufacturer=lo(device.vendor),
        # Complete, but preliminary and unverified: a physician must confirm it.
        is_complete=True,
        is_final=False,
        is_verified=False,
        specific_character_set=UTF8,
        series_description=series_description(device),
        manufacturer_model_name=lo(device.id),
        software_versions=device.version,
        device_serial_number=device.version,
    )
    # The tree goes in as highdicom would put it (the root item's attributes on the
    # document), but after: given the tree, highdicom deep-copies it into a parsed view we
    # never read and walks it twice to check that every image it references is in the
    # evidence — some 60 % of the SR's CPU. That check holds here by construction: every
    # reference is made from ``headers``, which are the evidence (all of them are listed in
    # the Current Requested Procedure Evidence Sequence, referenced or not).
    for element in content:
        sr[element.tag] = element
    add_ai_device(sr, report)
    stamp_times(sr, report)
    # A plain dataset: the SR object's parsed view of its content would be the bare root's.
    document = Dataset()
    document.update(sr)
    document.file_meta = sr.file_meta
    return document


def _bare(root: Dataset) -> Dataset:
    """The root content item without its children: what highdicom is given to build the
    document around."""
    bare = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            bare.add(element)
    bare.ContentSequence = []
    return bare


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
    Spacing) is still listed, with the descriptors every image has.

    Images that share their descriptors (the slices of one CT series) form one Image Library
    Group that states them once, each entry keeping only its own position: TID 1600 allows
    descriptors at the group level for this, and listing all fourteen on every slice made a
    CT chest's SR cost seconds (highdicom copies and searches the whole content tree)."""
    groups: dict[tuple[object, ...], list[Dataset]] = {}
    for header in headers:
        groups.setdefault(_shared_descriptors_key(header), []).append(header)
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    library.ContentSequence = hd.sr.ContentSequence(
        [_library_group(members) for members in groups.values()]
    )
    return library


# What the slices of a group share: its descriptors are stated once.
_SHARED_KEYWORDS = IMAGE_GRID_KEYWORDS
# Made once, not per slice: converting a Code was a tenth of a CT chest SR's CPU.
_POSITION_CONCEPTS = tuple(
    hd.sr.CodedConcept.from_code(code)
    for code in (
        codes.DCM.ImagePositionPatientX,
        codes.DCM.ImagePositionPatientY,
        codes.DCM.ImagePositionPatientZ,
    )
)
_MILLIMETER = hd.sr.CodedConcept.from_code(codes.UCUM.Millimeter)
_SOURCE = hd.sr.CodedConcept("260753009", "SCT", "Source")
_POSITION_CODES = frozenset(code.value for code in _POSITION_CONCEPTS)


def _shared_descriptors_key(header: Dataset) -> tuple[object, ...]:
    """What the group-level descriptors are made of: equal keys, equal descriptors."""
    values: list[object] = []
    for keyword in _SHARED_KEYWORDS:
        value = header.get(keyword)
        values.append(tuple(value) if isinstance(value, (list, tuple)) else str(value))
    return tuple(values)


def _library_group(headers: list[Dataset]) -> hd.sr.ContainerContentItem:
    """One TID 1601 group: the shared descriptors once, then an entry per image."""
    # Template is typed a list of Datasets; its items are content items.
    descriptors = cast(list[hd.sr.ContentItem], list(_descriptors(headers[0])))
    shared = [d for d in descriptors if _concept_code(d) not in _POSITION_CODES]
    positioned = len(shared) < len(descriptors)
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    entries = [_library_entry(header, positioned) for header in headers]
    group.ContentSequence = hd.sr.ContentSequence([*shared, *entries])
    return group


def _library_entry(header: Dataset, positioned: bool) -> hd.sr.ImageContentItem:
    item = hd.sr.ImageContentItem(
        name=_SOURCE,
        referenced_sop_class_uid=str(header.SOPClassUID),
        referenced_sop_instance_uid=str(header.SOPInstanceUID),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    position = header.get("ImagePositionPatient")
    if positioned and position is not None and len(position) == 3:
        item.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.NumContentItem(
                    name=concept,
                    value=float(value),
                    unit=_MILLIMETER,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
                )
                for concept, value in zip(_POSITION_CONCEPTS, position, strict=True)
            ]
        )
    return item


def _concept_code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


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
    uid = finding.location.sop_instance_uid
    if uid is None or uid not in by_uid:
        raise ValueError(f"{finding.label_en}: image {uid} is not among the job's sources")
    return by_uid[uid]


def _region(finding: ReportFinding, by_uid: dict[str, Dataset]) -> hd.sr.ImageRegion | None:
    """The finding on its image: the box as a closed polyline, else the centre as a point.

    Location coordinates are (row, column) with pixel centres at i + 0.5, and DICOM's
    image coordinates are (column, row) with the top left pixel's corner at 0.0, so the
    values carry over unchanged once the axes are swapped. 3D findings use their last two
    axes on the centre slice.
    """
    box, centre = finding.location.box, finding.location.centre
    if box is None and centre is None:
        return None
    header = _source(finding, by_uid)
    source = hd.sr.SourceImageForRegion(str(header.SOPClassUID), str(header.SOPInstanceUID))
    if box is not None:
        (r0, r1), (c0, c1) = box[-2], box[-1]
        corners = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
        return hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array(corners, dtype=np.float64),
            source_image=source,
        )
    assert centre is not None
    row, column = centre[-2], centre[-1]
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[column, row]], dtype=np.float64),
        source_image=source,
    )


def _group_images(finding: ReportFinding, by_uid: dict[str, Dataset]) -> list[Dataset]:
    if finding.location.sop_instance_uid is not None:
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
