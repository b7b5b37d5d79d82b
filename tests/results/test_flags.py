"""Flag images: Secondary Captures that pass dciodvfy, with the banner on top and the mark
exactly around the finding — checked on the rendered PNG, for synthetic studies with known
lesions and for real files from several vendors."""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from gateway.inference.findings import Location
from gateway.results import flags
from gateway.results.input import ReportInput
from gateway.results.marks import key_images
from gateway.results.notices import AI_NOTICE_RU
from tests import report_fixtures
from tests.services import dciodvfy_errors, require_shared_data

# A mark pixel: saturated red, which no windowed grey-scale pixel (R = G = B) can be.
BANNER_BG = np.array(flags.BANNER_BG)


@pytest.fixture(scope="module")
def chest() -> ReportInput:
    return report_fixtures.chest_xray_input(positive=True)


@pytest.fixture(scope="module")
def chest_negative() -> ReportInput:
    return report_fixtures.chest_xray_input(positive=False)


@pytest.fixture(scope="module")
def ct() -> ReportInput:
    return report_fixtures.ct_chest_input(positive=True)


@pytest.fixture(scope="module")
def ct_negative() -> ReportInput:
    return report_fixtures.ct_chest_input(positive=False)


@pytest.fixture(scope="module")
def mammography() -> ReportInput:
    return report_fixtures.mammography_input()


class Split:
    """A rendered flag image cut into its banner and its image part."""

    def __init__(self, ds: Dataset, source: Dataset) -> None:
        pixels = np.asarray(ds.pixel_array)
        assert pixels.shape == (int(ds.Rows), int(ds.Columns), 3)
        self.scale = pixels.shape[1] / int(source.Columns)
        image_rows = round(int(source.Rows) * self.scale)
        self.banner = pixels[: pixels.shape[0] - image_rows]
        self.image = pixels[pixels.shape[0] - image_rows :]

    def banner_ink(self) -> int:
        """Pixels of the banner that are not its background: the text."""
        return int((np.abs(self.banner.astype(int) - BANNER_BG).sum(axis=2) > 60).sum())

    def mark(self) -> np.ndarray:
        red, green, blue = (self.image[..., i].astype(int) for i in range(3))
        return (red > 200) & (green < 90) & (blue < 90)


def assert_mark_around(split: Split, box: tuple[tuple[float, float], ...], slack: int) -> None:
    """Red pixels exist on all four sides of the box and none further than ``slack``."""
    (r0, r1), (c0, c1) = box[-2], box[-1]
    rows, cols = np.nonzero(split.mark())
    assert len(rows) > 40, "no mark drawn"
    s = split.scale
    assert rows.min() >= r0 * s - slack and rows.max() <= r1 * s + slack
    assert cols.min() >= c0 * s - slack and cols.max() <= c1 * s + slack
    assert rows.min() < r0 * s and rows.max() >= r1 * s  # it surrounds the finding
    assert cols.min() < c0 * s and cols.max() >= c1 * s


# --- what the objects are -------------------------------------------------------------


@pytest.mark.parametrize("name", ["chest", "chest_negative", "ct", "ct_negative", "mammography"])
def test_every_flag_image_is_a_valid_secondary_capture(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    report: ReportInput = request.getfixturevalue(name)
    images = flags.build_flag_images(report)
    assert images
    source = report.sources[0]
    for number, ds in enumerate(images, 1):
        assert dciodvfy_errors(ds, tmp_path) == []
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("RGB", 3)
        assert (ds.BitsAllocated, ds.BurnedInAnnotation, ds.ConversionType) == (8, "YES", "WSD")
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert (ds.PatientID, ds.PatientName) == (source.PatientID, source.PatientName)
        assert ds.AccessionNumber == source.AccessionNumber
        assert ds.StudyInstanceUID != ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert (ds.SeriesNumber, ds.InstanceNumber) == (flags.SERIES_NUMBER, number)
        assert ds.SeriesDescription.startswith("ИИ: ") and ds.SeriesDescription.endswith(
            f"{report.device.version} (метки)"
        )
        assert AI_NOTICE_RU in ds.ImageComments
        assert report.device.provenance.notice_ru in ds.ImageComments
        assert ds.Manufacturer == report.device.vendor


def test_uids_are_deterministic_per_job(chest: ReportInput, tmp_path: Path) -> None:
    first, again = flags.build_flag_images(chest)[0], flags.build_flag_images(chest)[0]
    other_job = flags.build_flag_images(replace(chest, job_id=chest.job_id + 1))[0]
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        again.SOPInstanceUID,
        again.SeriesInstanceUID,
    )
    assert first.SOPInstanceUID != other_job.SOPInstanceUID
    assert first.SeriesInstanceUID != other_job.SeriesInstanceUID
    # Rebuilding gives the very same object, so delivering it twice stores one copy.
    first.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    again.save_as(tmp_path / "b.dcm", enforce_file_format=True)
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()


# --- what a radiologist sees ----------------------------------------------------------


def test_chest_flag_marks_the_nodule_under_a_banner(chest: ReportInput) -> None:
    (ds,) = flags.build_flag_images(chest)
    finding = chest.findings[0]
    location = finding.location
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == location.sop_instance_uid
    split = Split(ds, chest.sources[0])
    assert split.banner.shape[0] > 60
    assert split.banner_ink() > 3000
    assert location.box is not None
    assert_mark_around(split, location.box, slack=12)
    text = " ".join(line for line, _ in flags.banner_lines(chest, key_images(chest)[0]))
    for expected in (
        chest.device.name_ru,
        chest.device.version,
        finding.label_ru,
        "91\u00a0%",
        "10,2\u00a0мм",
        AI_NOTICE_RU,
        chest.device.provenance.notice_ru,
    ):
        assert expected in text


def test_a_mark_at_the_top_edge_stays_out_of_the_banner(chest: ReportInput) -> None:
    """The outline of a lesion at the image's top edge reaches above it; drawn on the flag
    image, it must leave the banner exactly as the banner is drawn."""
    finding = report_fixtures.relocated(chest.findings[0], box=((0.0, 30.0), (700.0, 760.0)))
    report = replace(chest, findings=[finding])
    (flag,) = flags.build_flags(report)
    split = Split(flag.dataset, report.sources[0])
    lines = flags.banner_lines(report, key_images(report)[0])
    banner = np.asarray(flags._banner(split.banner.shape[1], lines))
    assert np.array_equal(split.banner, banner)
    mark = split.mark()
    assert mark[:4].any()  # the outline's sides run up to the image's first rows
    assert mark[:, :600].sum() == 0 and mark[60:].sum() == 0  # and nowhere else


def test_key_image_is_a_jpeg_of_the_drawing_scaled_to_the_viewer_size(chest: ReportInput) -> None:
    (flag,) = flags.build_flags(chest)
    ds = flag.dataset
    rows, cols = int(ds.Rows), int(ds.Columns)
    assert max(rows, cols) > 400  # else nothing to scale down
    # The drawing kept beside the object is the object's pixels: no second decode needed.
    assert np.array_equal(np.asarray(flag.picture), ds.pixel_array)
    jpeg = Image.open(io.BytesIO(flags.key_image_jpeg(flag.picture, max_side=400)))
    assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
    small = np.asarray(jpeg)
    assert max(small.shape[:2]) == 400
    assert small.shape[0] / small.shape[1] == pytest.approx(rows / cols, rel=0.01)
    tinted = small[..., 0].astype(int) - small[..., 2] > 60  # the mark's colour, blended
    source = chest.sources[0]
    image_rows = round(int(source.Rows) * small.shape[1] / int(source.Columns))
    assert tinted[-image_rows:].sum() > 20  # below the banner (whose text may be tinted too)
    full = Image.open(io.BytesIO(flags.key_image_jpeg(flag.picture, max_side=max(rows, cols))))
    assert full.size == (cols, rows)  # never scaled up, nor when it already fits
    # Lossy, but close: the banner's background and the grey image survive.
    close = np.abs(np.asarray(full).astype(int) - ds.pixel_array.astype(int))
    assert np.median(close) <= 2


@pytest.mark.parametrize("max_side", [1024, 400, 300])
def test_key_image_scales_grey_and_colour_apart_to_the_same_pixels(
    chest: ReportInput, chest_negative: ReportInput, max_side: int
) -> None:
    """The key image scales the grey as one channel and the banner and marks from the RGB
    drawing: what scaling the whole drawing gives, but for a few pixels on a filter edge."""
    for report in (chest, chest_negative):
        (flag,) = flags.build_flags(report)
        width, height = flag.picture.size
        scale = max_side / max(width, height)
        size = (round(width * scale), round(height * scale))
        whole = flag.picture.resize(size, Image.Resampling.BOX, reducing_gap=1.0)
        parts = flags._scaled(flag.drawing, size)
        assert parts.mode == "RGB" and parts.size == size
        differ = np.abs(np.asarray(whole).astype(int) - np.asarray(parts).astype(int)).max(2)
        assert (differ > 0).mean() < 0.001, (max_side, int((differ > 0).sum()))
        # The colour is there: the banner's text and, when positive, the mark.
        tinted = np.asarray(parts)[..., 0].astype(int) - np.asarray(parts)[..., 2] > 60
        assert tinted.sum() > 0


def _banner_drawn_whole(width: int, lines: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """The banner as drawn before lines were kept: every line's text onto one image."""
    size = min(max(round(width / 48), 14), 40)
    font, margin, step = flags._font(size), size // 2, round(size * 1.35)
    parts = [(p, c) for t, c in lines for p in flags._wrap(t, font, width - 2 * margin)]
    banner = Image.new("RGB", (width, 2 * margin + step * len(parts)), flags.BANNER_BG)
    draw = ImageDraw.Draw(banner)
    for i, (text, colour) in enumerate(parts):
        draw.text((margin, margin + i * step), text, fill=colour, font=font)
    return banner


def test_banner_from_kept_lines_is_the_banner_drawn_whole(
    chest: ReportInput, chest_negative: ReportInput
) -> None:
    """Kept lines (drawn once, laid over as masks) give the very pixels of drawing the text,
    glyphs reaching past their line's step included, cold and warm."""
    reach = ("ЙЁЩЦДУ Qjgpy ÅÉ ()[]{}|¦ ŷ", flags.TEXT_RGB)  # tall and deep glyphs
    for report in (chest, chest_negative):
        lines = [*flags.banner_lines(report, key_images(report)[0]), reach]
        for width in (300, 768, 1678, 3000):
            expected = np.asarray(_banner_drawn_whole(width, lines))
            flags._ink.cache_clear()
            assert np.array_equal(np.asarray(flags._banner(width, lines)), expected), width
            assert np.array_equal(np.asarray(flags._banner(width, lines)), expected), width


def test_negative_result_has_a_banner_and_no_mark(chest_negative: ReportInput) -> None:
    (ds,) = flags.build_flag_images(chest_negative)
    source = chest_negative.sources[0]
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    split = Split(ds, source)
    assert split.banner_ink() > 3000
    assert not split.mark().any()
    key = key_images(chest_negative)[0]
    text = " ".join(line for line, _ in flags.banner_lines(chest_negative, key))
    assert "не обнаружено" in text and "8\u00a0%" in text and AI_NOTICE_RU in text


def test_ct_flag_is_the_centre_slice_with_a_contour_outside_the_nodule(ct: ReportInput) -> None:
    (ds,) = flags.build_flag_images(ct)
    finding = ct.findings[0]
    location = finding.location
    assert finding.mask is not None and location.centre is not None and location.box is not None
    slice_index = int(location.centre[0])
    source = ct.sources[slice_index]
    assert source.SOPInstanceUID == location.sop_instance_uid
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == location.sop_instance_uid
    split = Split(ds, source)
    assert split.scale == pytest.approx(flags.MIN_SIDE / 256)  # small slices are enlarged
    lesion = finding.mask[slice_index]
    rows, cols = np.nonzero(lesion)
    in_plane = ((rows.min(), rows.max() + 1.0), (cols.min(), cols.max() + 1.0))
    assert_mark_around(split, in_plane, slack=12)
    # The contour never covers the lesion itself.
    enlarged = np.kron(lesion, np.ones((3, 3), dtype=bool))
    assert not (split.mark() & enlarged).any()
    assert split.banner_ink() > 2000


def test_ct_negative_flags_the_middle_slice(ct_negative: ReportInput) -> None:
    (ds,) = flags.build_flag_images(ct_negative)
    middle = ct_negative.sources[len(ct_negative.sources) // 2]
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == middle.SOPInstanceUID
    assert not Split(ds, middle).mark().any()


def test_mammography_flags_only_the_view_with_the_mass(mammography: ReportInput) -> None:
    (ds,) = flags.build_flag_images(mammography)
    location = mammography.findings[0].location
    source = next(s for s in mammography.sources if s.SOPInstanceUID == location.sop_instance_uid)
    assert ds.ImageLaterality == source.ImageLaterality
    assert location.box is not None
    assert_mark_around(Split(ds, source), location.box, slack=12)


# --- the banner's font ---------------------------------------------------------------


def test_missing_font_degrades_and_says_so(
    chest_negative: ReportInput, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(flags, "FONT_PATH", Path("/nonexistent/DejaVuSans.ttf"))
    flags._font.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.results.flags"):
            (ds,) = flags.build_flag_images(chest_negative)
    finally:
        flags._font.cache_clear()
    assert any("font missing" in record.getMessage() for record in caplog.records)
    assert Split(ds, chest_negative.sources[0]).banner_ink() > 500


# --- real files -----------------------------------------------------------------------


REAL = {
    # file: a box (rows, columns) somewhere on the image, as a device would report it
    "MG_GE_SenographeEssential_RMLO_ForPresentation_JPEGLossless.dcm": (
        (1400.0, 1500.0),
        (900.0, 1010.0),
    ),
    "CR_chest_PA_Philips_J2KI.dcm": ((600.0, 700.0), (1200.0, 1320.0)),
    "CT_693_J2KR.dcm": ((250.0, 270.0), (300.0, 325.0)),
}


def real_report(name: str, template: ReportInput) -> ReportInput:
    source = pydicom.dcmread(require_shared_data() / name)
    box = REAL[name]
    finding = report_fixtures.finding(
        template.device,
        0.9,
        True,
        location=Location(
            sop_instance_uid=str(source.SOPInstanceUID),
            centre=tuple((a + b) / 2 for a, b in box),
            box=box,
        ),
        measurements={"max_diameter_mm": 9.5},
    )
    return replace(template, sources=[source], findings=[finding])


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_images_flagged_validly_and_marked_in_place(
    name: str, chest: ReportInput, tmp_path: Path
) -> None:
    report = real_report(name, chest)
    (ds,) = flags.build_flag_images(report)
    assert dciodvfy_errors(ds, tmp_path) == []
    source = report.sources[0]
    split = Split(ds, source)
    assert max(split.image.shape[:2]) <= flags.MAX_SIDE
    assert split.banner_ink() > 3000
    assert_mark_around(split, REAL[name], slack=20)


def test_findings_on_two_views_give_two_flag_images(
    mammography: ReportInput, tmp_path: Path
) -> None:
    finding = mammography.findings[0]
    first_uid = str(finding.location.sop_instance_uid)
    other = next(s for s in mammography.sources if s.SOPInstanceUID != first_uid)
    second = report_fixtures.relocated(
        finding, sop_instance_uid=str(other.SOPInstanceUID), box=((10.0, 40.0), (5.0, 30.0))
    )
    images = flags.build_flag_images(replace(mammography, findings=[finding, second]))
    order = [str(s.SOPInstanceUID) for s in mammography.sources]
    expected = sorted([first_uid, str(other.SOPInstanceUID)], key=order.index)
    assert [ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in images] == expected
    assert [ds.InstanceNumber for ds in images] == [1, 2]
    assert len({ds.SeriesInstanceUID for ds in images}) == 1
    assert len({ds.SOPInstanceUID for ds in images}) == 2
    flagged = images[expected.index(str(other.SOPInstanceUID))]
    assert dciodvfy_errors(flagged, tmp_path) == []
    assert_mark_around(Split(flagged, other), second.location.box or (), slack=12)


@pytest.mark.parametrize(
    ("mode", "size"), [("RGB", (2048, 2211)), ("RGB", (7, 3)), ("L", (513, 5)), ("RGB", (1, 1))]
)
def test_packed_pixels_are_pillows_bytes(mode: str, size: tuple[int, int]) -> None:
    """The flag image's pixels packed in one block: the bytes ``tobytes`` gives."""
    rng = np.random.default_rng(11)
    channels = len(mode)
    values = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(values[..., 0] if channels == 1 else values, mode=mode)
    assert flags.packed(image) == image.tobytes()
