"""The SEG builder: valid SEGs (dciodvfy) whose decoded segments are the device's masks,
frame for frame on the source instances they were drawn on."""

from __future__ import annotations

import dataclasses
import io
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from gateway.results import seg as seg_module
from gateway.results.encoding import part10
from gateway.results.header import lo, source_headers, tracking_uid
from gateway.results.input import ReportInput
from gateway.results.notices import AI_NOTICE_RU
from gateway.results.seg import build_seg
from gateway.results.sr import build_sr
from tests import report_fixtures
from tests.services import require_shared_data, require_tool


def _write_and_validate(seg: Dataset, folder: Path) -> hd.seg.Segmentation:
    """Write the SEG, require no error line from dciodvfy, read it back with highdicom."""
    dciodvfy = require_tool("dciodvfy")
    path = folder / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    check = subprocess.run([dciodvfy, "-new", str(path)], capture_output=True, text=True)
    errors = [
        line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")
    ]
    assert errors == [], "\n".join(errors)
    return hd.seg.segread(path)


def _referenced_sources(seg: Dataset) -> list[str]:
    return [
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
    ]


def _assert_header(seg: Dataset, report: ReportInput) -> None:
    source, device = report.sources[0], report.device
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.PatientID == source.PatientID
    assert str(seg.PatientName) == str(source.PatientName)
    assert seg.SeriesInstanceUID not in {s.SeriesInstanceUID for s in report.sources}
    assert seg.SeriesDescription.startswith("ИИ: сегментация ")
    assert seg.SeriesDescription.endswith(f" {device.version}")
    assert len(seg.SeriesDescription.encode("utf-8")) <= 64
    assert seg.SegmentationType == "BINARY"
    assert seg.Manufacturer == device.vendor and seg.ManufacturerModelName == device.id
    for notice in (AI_NOTICE_RU, device.provenance.notice_ru, device.provenance.notice_en):
        assert notice in seg.ImageComments
    (segment,) = seg.SegmentSequence
    finding = report.findings[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == finding.label_code
    assert segment.SegmentLabel == finding.label_ru
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == lo(device.name)
    assert segment.TrackingUID == tracking_uid(report, 1)


def test_ct_seg_decodes_to_the_mask_on_the_same_slices(tmp_path: Path) -> None:
    report = report_fixtures.ct_chest_input(positive=True)
    mask = report.findings[0].mask
    assert mask is not None and mask.any()
    built = build_seg(report)
    assert built is not None
    seg = _write_and_validate(built, tmp_path)
    _assert_header(seg, report)
    assert seg.FrameOfReferenceUID == report.sources[0].FrameOfReferenceUID
    # Frames exist only where the mask has voxels, each on the slice it was drawn on.
    uids = [s.SOPInstanceUID for s in report.sources]
    with_lesion = [uids[i] for i in np.flatnonzero(mask.any(axis=(1, 2)))]
    assert sorted(_referenced_sources(seg)) == sorted(with_lesion)
    decoded = seg.get_pixels_by_source_instance(
        uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    assert decoded.shape == (*mask.shape, 1)
    np.testing.assert_array_equal(decoded[..., 0].astype(bool), mask)


def test_seg_and_sr_share_the_finding_tracking_uid() -> None:
    report = report_fixtures.ct_chest_input(positive=True)
    seg, sr = build_seg(report), build_sr(report)
    assert seg is not None
    sr_uids = [
        item.UID
        for group in sr.ContentSequence[-2].ContentSequence  # Imaging Measurements
        for item in group.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "112040"
    ]
    assert sr_uids == [seg.SegmentSequence[0].TrackingUID]


def test_the_other_slices_geometry_alone_gives_the_same_seg(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the first slice's whole header is copied; the others give their geometry and
    UIDs. The SEG is the same, byte for byte, as one built from every whole header."""
    report = report_fixtures.ct_chest_input(positive=True)
    lean = build_seg(report)
    monkeypatch.setattr(seg_module, "_volume_headers", source_headers)
    whole = build_seg(report)
    assert lean is not None and whole is not None
    assert part10(lean) == part10(whole)


def test_no_mask_no_seg() -> None:
    assert build_seg(report_fixtures.chest_xray_input(positive=True)) is None
    assert build_seg(report_fixtures.ct_chest_input(positive=False)) is None


def test_rebuilding_gives_the_same_seg() -> None:
    report = report_fixtures.ct_chest_input(positive=True)
    first, second = build_seg(report), build_seg(report)
    assert first is not None and second is not None
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert _bytes(first) == _bytes(second)
    other = build_seg(dataclasses.replace(report, job_id=report.job_id + 1))
    assert other is not None and other.SOPInstanceUID != first.SOPInstanceUID


def _bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_seg_on_a_real_compressed_radiograph(tmp_path: Path) -> None:
    """JPEG 2000 CR with no frame of reference and 0\\0 pixel spacing: a one-frame SEG."""
    source = pydicom.dcmread(require_shared_data() / "CR_chest_PA_Philips_J2KI.dcm")
    transfer_syntax = source.file_meta.TransferSyntaxUID
    rows, columns = int(source.Rows), int(source.Columns)
    mask = np.zeros((rows, columns), dtype=bool)
    yy, xx = np.ogrid[:rows, :columns]
    mask[(yy - 700) ** 2 + (xx - 900) ** 2 <= 60**2] = True
    base = report_fixtures.chest_xray_input(positive=True)
    finding = report_fixtures.relocated(
        base.findings[0],
        sop_instance_uid=source.SOPInstanceUID,
        centre=(700.5, 900.5),
        box=((640.0, 761.0), (840.0, 961.0)),
    ).model_copy(update={"mask": mask})
    report = dataclasses.replace(base, sources=[source], findings=[finding])
    built = build_seg(report)
    assert built is not None
    seg = _write_and_validate(built, tmp_path)
    _assert_header(seg, report)
    assert seg.PatientOrientation == source.PatientOrientation
    assert _referenced_sources(seg) == [source.SOPInstanceUID]
    decoded = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(decoded[0, ..., 0].astype(bool), mask)
    assert source.file_meta.TransferSyntaxUID == transfer_syntax  # source left as it was


def test_2d_masks_on_several_images_without_frame_of_reference_are_refused() -> None:
    base = report_fixtures.mammography_input()
    findings = []
    for image in base.sources[:2]:
        mask = np.zeros((int(image.Rows), int(image.Columns)), dtype=bool)
        mask[10:20, 10:20] = True
        relocated = report_fixtures.relocated(
            base.findings[0], sop_instance_uid=image.SOPInstanceUID
        )
        findings.append(relocated.model_copy(update={"mask": mask}))
    with pytest.raises(ValueError, match="without a frame of reference"):
        build_seg(dataclasses.replace(base, findings=findings))


def test_a_3d_mask_of_the_wrong_depth_is_refused() -> None:
    base = report_fixtures.ct_chest_input(positive=True)
    assert base.findings[0].mask is not None
    finding = base.findings[0].model_copy(update={"mask": base.findings[0].mask[:-1]})
    with pytest.raises(ValueError, match="does not match 40 source slices"):
        build_seg(dataclasses.replace(base, findings=[finding]))
