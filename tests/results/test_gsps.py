"""GSPS: presentation states that pass dciodvfy, reference the right images, and put the
outline exactly on the finding in DICOM's (column, row) order."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage

from gateway.inference.decode import decode_image
from gateway.inference.findings import Location
from gateway.results import flags, gsps
from gateway.results.input import ReportInput
from gateway.results.notices import AI_NOTICE_RU
from gateway.results.windowing import percentile_window
from tests import report_fixtures
from tests.services import dciodvfy_errors, require_shared_data


@pytest.fixture(scope="module")
def chest() -> ReportInput:
    return report_fixtures.chest_xray_input(positive=True)


@pytest.fixture(scope="module")
def ct() -> ReportInput:
    return report_fixtures.ct_chest_input(positive=True)


@pytest.fixture(scope="module")
def mammography() -> ReportInput:
    return report_fixtures.mammography_input()


def polylines(pr: Dataset) -> list[np.ndarray]:
    return [
        np.asarray(obj.GraphicData, dtype=float).reshape(-1, 2)
        for annotation in pr.GraphicAnnotationSequence
        for obj in annotation.get("GraphicObjectSequence", [])
    ]


def shoelace_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))) / 2


@pytest.mark.parametrize("name", ["chest", "ct", "mammography"])
def test_presentation_state_is_valid(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    report: ReportInput = request.getfixturevalue(name)
    pr = gsps.build_gsps(report)
    assert pr is not None
    assert dciodvfy_errors(pr, tmp_path) == []
    source = report.sources[0]
    assert pr.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert (pr.StudyInstanceUID, pr.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert pr.ContentLabel == "AI_FLAGS" and pr.ContentDescription.startswith("Метки ИИ")
    assert pr.SeriesNumber == gsps.SERIES_NUMBER
    assert pr.GraphicLayerSequence[0].GraphicLayer == "AI_FLAGS"
    for annotation in pr.GraphicAnnotationSequence:
        (text,) = annotation.TextObjectSequence
        assert AI_NOTICE_RU in text.UnformattedTextValue
        assert report.device.provenance.notice_ru in text.UnformattedTextValue


def test_chest_box_is_drawn_in_column_row_order_on_the_right_image(chest: ReportInput) -> None:
    pr = gsps.build_gsps(chest)
    assert pr is not None
    finding = chest.findings[0]
    assert finding.location.box is not None
    (r0, r1), (c0, c1) = finding.location.box
    assert r0 != c0  # the fixture's box is not square-placed, so a swap would show
    (annotation,) = pr.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
        finding.location.sop_instance_uid
    )
    (series,) = pr.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == chest.sources[0].SeriesInstanceUID
    (graphic,) = annotation.GraphicObjectSequence
    assert (graphic.GraphicType, graphic.GraphicAnnotationUnits) == ("POLYLINE", "PIXEL")
    expected = [[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]]
    np.testing.assert_allclose(polylines(pr)[0], expected)
    (text,) = annotation.TextObjectSequence
    assert f"{finding.label_ru}: 91 %" in text.UnformattedTextValue
    # The label sits beside the box, inside the image.
    top, bottom = text.BoundingBoxTopLeftHandCorner, text.BoundingBoxBottomRightHandCorner
    assert 0 <= top[0] < bottom[0] <= chest.sources[0].Columns
    assert 0 <= top[1] < bottom[1] <= r0
    # The source's own window is the presentation's.
    voi = pr.SoftcopyVOILUTSequence[0]
    assert float(voi.WindowCenter) == float(chest.sources[0].WindowCenter[0])


def test_ct_contour_follows_the_mask_on_the_centre_slice(ct: ReportInput) -> None:
    pr = gsps.build_gsps(ct)
    assert pr is not None
    finding = ct.findings[0]
    assert finding.mask is not None and finding.location.centre is not None
    slice_index = int(finding.location.centre[0])
    (annotation,) = pr.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
        ct.sources[slice_index].SOPInstanceUID
    )
    lesion = finding.mask[slice_index]
    rows, cols = np.nonzero(lesion)
    (outline,) = polylines(pr)  # the phantom's nodule: one blob, no hole
    np.testing.assert_array_equal(outline[0], outline[-1])
    np.testing.assert_array_equal(outline.min(axis=0), [cols.min(), rows.min()])
    np.testing.assert_array_equal(outline.max(axis=0), [cols.max() + 1, rows.max() + 1])
    assert shoelace_area(outline) == lesion.sum()
    voi = pr.SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (-600.0, 1500.0)


def test_negative_result_has_no_presentation_state() -> None:
    assert gsps.build_gsps(report_fixtures.chest_xray_input(positive=False)) is None


def test_uids_are_deterministic_and_distinct_from_the_flag_series(chest: ReportInput) -> None:
    first, again = gsps.build_gsps(chest), gsps.build_gsps(chest)
    other_job = gsps.build_gsps(replace(chest, job_id=chest.job_id + 1))
    assert first is not None and again is not None and other_job is not None
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        again.SOPInstanceUID,
        again.SeriesInstanceUID,
    )
    assert first.SOPInstanceUID != other_job.SOPInstanceUID
    (flag,) = flags.build_flag_images(chest)
    assert first.SeriesInstanceUID != flag.SeriesInstanceUID


def test_source_without_a_window_gets_the_percentile_window(chest: ReportInput) -> None:
    source = copy.deepcopy(chest.sources[0])
    del source.WindowCenter, source.WindowWidth
    pr = gsps.build_gsps(replace(chest, sources=[source]))
    assert pr is not None
    (voi,) = pr.SoftcopyVOILUTSequence
    centre, width = percentile_window(decode_image(source).pixels)
    assert float(voi.WindowCenter) == pytest.approx(centre)
    assert float(voi.WindowWidth) == pytest.approx(width)
    assert voi.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_the_flag_image_and_the_gsps_share_one_percentile_window(
    chest: ReportInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source without a window: its percentiles are worked out once per job (a
    radiograph's decode and percentiles cost ~40 ms), and both objects show the same."""
    source = copy.deepcopy(chest.sources[0])
    del source.WindowCenter, source.WindowWidth
    report = replace(chest, sources=[source])
    percentile, runs = np.percentile, []

    def counted(values: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        runs.append(values.size)
        return percentile(values, *args, **kwargs)

    monkeypatch.setattr(np, "percentile", counted)
    assert len(flags.build_flag_images(report)) == 1
    pr = gsps.build_gsps(report)
    assert pr is not None and len(runs) == 1
    monkeypatch.undo()
    (voi,) = pr.SoftcopyVOILUTSequence
    centre, width = percentile_window(decode_image(source).pixels)
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == pytest.approx((centre, width))


def test_mask_outlines_trace_components_and_holes() -> None:
    mask = np.zeros((8, 10), dtype=bool)
    mask[1:6, 1:6] = True  # a square with a hole
    mask[3, 3] = False
    mask[6:8, 7:9] = True  # a separate block, touching the square only diagonally
    loops = gsps.mask_outlines(mask)
    assert len(loops) == 3
    areas = sorted(shoelace_area(loop) for loop in loops)
    assert areas == [1.0, 4.0, 25.0]
    for loop in loops:
        np.testing.assert_array_equal(loop[0], loop[-1])
        steps = np.diff(loop, axis=0)
        assert ((steps == 0).sum(axis=1) == 1).all()  # along pixel edges only


REAL = {
    "MG_GE_SenographeEssential_RMLO_ForPresentation_JPEGLossless.dcm": (
        (1400.0, 1500.0),
        (900.0, 1010.0),
    ),
    "CR_chest_PA_Philips_J2KI.dcm": ((600.0, 700.0), (1200.0, 1320.0)),
    "CT_693_J2KR.dcm": ((250.0, 270.0), (300.0, 325.0)),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_images_get_a_valid_presentation_state(
    name: str, chest: ReportInput, tmp_path: Path
) -> None:
    source = pydicom.dcmread(require_shared_data() / name, stop_before_pixels=True)
    (r0, r1), (c0, c1) = box = REAL[name]
    finding = report_fixtures.finding(
        chest.device,
        0.9,
        True,
        location=Location(sop_instance_uid=str(source.SOPInstanceUID), box=box),
    )
    pr = gsps.build_gsps(replace(chest, sources=[source], findings=[finding]))
    assert pr is not None
    assert dciodvfy_errors(pr, tmp_path) == []
    np.testing.assert_allclose(polylines(pr)[0], [[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]])
    (annotation,) = pr.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID


def test_findings_on_both_breasts_annotate_each_view(
    mammography: ReportInput, tmp_path: Path
) -> None:
    finding = mammography.findings[0]
    views = {str(s.SOPInstanceUID): s for s in mammography.sources}
    side = views[str(finding.location.sop_instance_uid)].ImageLaterality
    other = next(s for s in mammography.sources if s.ImageLaterality != side)
    second = report_fixtures.relocated(
        finding, sop_instance_uid=str(other.SOPInstanceUID), box=((10.0, 40.0), (5.0, 30.0))
    )
    pr = gsps.build_gsps(replace(mammography, findings=[finding, second]))
    assert pr is not None
    assert dciodvfy_errors(pr, tmp_path) == []
    referenced = [
        a.ReferencedImageSequence[0].ReferencedSOPInstanceUID for a in pr.GraphicAnnotationSequence
    ]
    assert sorted(referenced) == sorted([finding.location.sop_instance_uid, other.SOPInstanceUID])
    assert len(pr.SoftcopyVOILUTSequence) == 2
    np.testing.assert_allclose(
        polylines(pr)[referenced.index(other.SOPInstanceUID)],
        [[5, 10], [30, 10], [30, 40], [5, 40], [5, 10]],
    )
