"""The DICOM SEG result of a segmenting device: one binary segment per finding with a mask.

The segmentation lies on the source grid (ReportFinding.mask is already resampled to it), so
each frame references the source instance it was drawn on and viewers overlay it without
any registration. A segment's tracking UID is the one the SR's measurement group for the
same finding carries. UIDs are derived, so rebuilding gives the same SEG.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from gateway.results.header import (
    IMAGE_GRID_KEYWORDS,
    UTF8,
    add_ai_device,
    derived_uid,
    lo,
    reference_header,
    series_description,
    source_header,
    source_headers,
    stamp_times,
    tracking_uid,
)
from gateway.results.input import ReportFinding, ReportInput
from gateway.results.notices import notices_both, registration_ru

SEG_SERIES_NUMBER = 9902
# What every segment shows: a lesion, i.e. a morphologically abnormal structure (CID 7150).
_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure


def build_seg(report: ReportInput) -> Dataset | None:
    """The job's SEG, or None when no finding carries a mask."""
    masked = [(i, f) for i, f in enumerate(report.findings, start=1) if f.mask is not None]
    if not masked:
        return None
    sources, pixels = _frames(report, [f for _, f in masked])
    device = report.device
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(report, n, i, f) for n, (i, f) in enumerate(masked, 1)],
        series_instance_uid=derived_uid(report, "seg", "series"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=derived_uid(report, "seg", "instance"),
        instance_number=1,
        manufacturer=lo(device.vendor),
        manufacturer_model_name=lo(device.id),
        software_versions=device.version,
        device_serial_number=device.version,
        content_label="AIGW_SEG",
        content_description=lo(f"ИИ: {device.id} {device.version}"),
        series_description=series_description(device, "сегментация "),
        specific_character_set=UTF8,
    )
    # A viewer shows Image Comments beside the overlay: the notices every result carries.
    seg.ImageComments = notices_both(device)
    if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:
        seg.PatientOrientation = _patient_orientation(sources)
    _derive_dimension_organization(seg, derived_uid(report, "seg", "dimensions"))
    add_ai_device(seg, report)
    stamp_times(seg, report)
    return seg


def _derive_dimension_organization(seg: Dataset, uid: str) -> None:
    """highdicom draws the Dimension Organization UID at random; a rebuild must repeat it."""
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = uid


def _patient_orientation(sources: list[Dataset]) -> list[str] | None:
    """Projection images have no patient geometry, so the SEG's General Image module needs
    Patient Orientation (type 2C): the sources' one when they agree, else empty."""
    found = {tuple(s.get("PatientOrientation") or ()) for s in sources}
    if len(found) == 1 and (only := found.pop()):
        return list(only)
    return None


def _frames(report: ReportInput, findings: list[ReportFinding]) -> tuple[list[Dataset], np.ndarray]:
    """The headers of the source images the masks lie on and the masks stacked as (frames,
    rows, columns, segments): every source for a 3D device (masks are in volume order),
    else the images the 2D masks were drawn on."""
    if report.device.input.dims == 3:
        for finding in findings:
            assert finding.mask is not None
            if finding.mask.ndim != 3 or finding.mask.shape[0] != len(report.sources):
                raise ValueError(
                    f"{finding.label_en}: 3D mask {finding.mask.shape} does not match "
                    f"{len(report.sources)} source slices"
                )
        headers = _volume_headers(report.sources)
        return headers, np.stack([np.asarray(f.mask, dtype=bool) for f in findings], axis=-1)
    by_uid = {str(s.SOPInstanceUID): s for s in report.sources}
    wanted = {f.location.sop_instance_uid for f in findings}
    if not wanted <= by_uid.keys():
        raise ValueError(
            f"masks drawn on images outside the job's sources: {wanted - by_uid.keys()}"
        )
    images = source_headers(s for s in report.sources if str(s.SOPInstanceUID) in wanted)
    if len(images) > 1 and any("FrameOfReferenceUID" not in h for h in images):
        # A SEG relates frames through the frame of reference; projection images have none.
        raise ValueError(
            f"masks on {len(images)} images without a frame of reference: a SEG holds one"
        )
    planes = []
    for image in images:
        shape = (int(image.Rows), int(image.Columns))
        layers = []
        for finding in findings:
            assert finding.mask is not None
            if finding.location.sop_instance_uid != image.SOPInstanceUID:
                layers.append(np.zeros(shape, dtype=bool))
            elif finding.mask.shape != shape:
                raise ValueError(f"{finding.label_en}: 2D mask {finding.mask.shape} is not {shape}")
            else:
                layers.append(np.asarray(finding.mask, dtype=bool))
        planes.append(np.stack(layers, axis=-1))
    return images, np.stack(planes)


# What highdicom reads of every source but the first (which gives the patient, study and
# equipment): the grid each frame lies on and the UIDs it references.
_GEOMETRY = (*IMAGE_GRID_KEYWORDS, "ImagePositionPatient", "NumberOfFrames", "SpacingBetweenSlices")


def _volume_headers(sources: list[Dataset]) -> list[Dataset]:
    """The whole header of the first slice, the geometry of the others: a full copy of
    every slice's header was two thirds of a CT SEG's CPU."""
    first, *others = sources
    return [source_header(first), *(reference_header(s, _GEOMETRY) for s in others)]


def _segment(
    report: ReportInput, number: int, index: int, finding: ReportFinding
) -> hd.seg.SegmentDescription:
    device = report.device
    algorithm = hd.AlgorithmIdentificationSequence(
        name=lo(device.name),
        family=codes.cid7162.ArtificialIntelligence,
        version=device.version,
        source=lo(device.vendor),
        parameters={
            "threshold": f"{finding.threshold:g}",
            "registration": lo(registration_ru(device)),
        },
    )
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=lo(finding.label_ru),
        segmented_property_category=_CATEGORY,
        segmented_property_type=hd.sr.CodedConcept(
            finding.label_code, finding.label_scheme, finding.label_en
        ),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=tracking_uid(report, index),
        tracking_id=lo(f"{finding.label_en} #{index}"),
    )
