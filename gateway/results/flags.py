"""Viewer flags: the key image with the AI's marks and a Russian banner burned in.

Any viewer can show a Secondary Capture image, so this is the result a radiologist cannot
miss: the source image windowed as the source asks, the finding outlined in a colour no
grey-scale image contains, and above the image (never over anatomy) a banner that names the
device, the finding and its probability and says it is an AI result to be confirmed.
"""

from __future__ import annotations

import io
import logging
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

import numpy as np
from highdicom import ContributingEquipment
from highdicom.sc import SCImage
from highdicom.sr import CodedConcept
from PIL import Image, ImageDraw, ImageFont
from pydicom import DataElement, Dataset
from pydicom.pixels.processing import apply_voi_lut
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DA, DT, TM
from scipy import ndimage

from gateway.inference.decode import decode_image
from gateway.results.input import AI_NOTICE_EN, AI_NOTICE_RU, ReportFinding, ReportInput
from gateway.results.sr import PATIENT_STUDY_TYPE2

log = logging.getLogger(__name__)

SERIES_NUMBER = 9902
FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
MARK_RGB = (255, 40, 40)  # saturated red: no windowed grey-scale pixel looks like it
BANNER_BG = (16, 16, 16)
TEXT_RGB = (255, 255, 255)
NOTICE_RGB = (255, 200, 0)
# Flag images are looked at, not measured: keep big ones viewable and small ones legible.
MAX_SIDE, MIN_SIDE = 2048, 768
UTF8 = "ISO_IR 192"
PIXEL_DATA = Tag("PixelData")
_TEMPORAL: dict[str, type[DA] | type[TM] | type[DT]] = {"DA": DA, "TM": TM, "DT": DT}


@dataclass(frozen=True)
class KeyImage:
    """One source image to flag and the positive findings drawn on it."""

    source: Dataset
    slice_index: int | None  # 3D devices: the slice in the volume (indexes finding masks)
    findings: tuple[ReportFinding, ...]


def build_flag_images(report: ReportInput) -> list[Dataset]:
    """One Secondary Capture per key image; a negative result still gets one (banner only),
    so the radiologist sees that the AI looked at the study."""
    return [_secondary_capture(report, key, i) for i, key in enumerate(key_images(report), 1)]


def render_png(ds: Dataset) -> bytes:
    """A flag image (or any 8-bit single-frame image) as PNG, for the SEMD and dashboard."""
    pixels = np.asarray(ds.pixel_array)
    mode = "RGB" if int(ds.get("SamplesPerPixel", 1)) == 3 else "L"
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


# --- which images ---------------------------------------------------------------------


def key_images(report: ReportInput) -> list[KeyImage]:
    """Images with positive findings, in source order; else the first image (2D) or the
    middle slice (3D)."""
    volumetric = report.device.input.dims == 3
    by_uid = {str(ds.SOPInstanceUID): i for i, ds in enumerate(report.sources)}
    grouped: dict[int, list[ReportFinding]] = {}
    for finding in (f for f in report.findings if f.positive):
        index = _source_index(finding, by_uid, volumetric, len(report.sources))
        grouped.setdefault(index, []).append(finding)
    if not grouped:
        index = len(report.sources) // 2 if volumetric else 0
        return [KeyImage(report.sources[index], index if volumetric else None, ())]
    return [
        KeyImage(report.sources[i], i if volumetric else None, tuple(grouped[i]))
        for i in sorted(grouped)
    ]


def _source_index(
    finding: ReportFinding, by_uid: dict[str, int], volumetric: bool, count: int
) -> int:
    if finding.sop_instance_uid in by_uid:
        return by_uid[str(finding.sop_instance_uid)]
    if volumetric and finding.centre:
        return min(max(int(finding.centre[0]), 0), count - 1)
    # A positive answer without a location (a pure classifier) is told on the first image.
    return 0


def finding_mask(
    finding: ReportFinding, key: KeyImage, shape: tuple[int, ...]
) -> np.ndarray | None:
    """The finding's mask on the key image (rows × columns), or None to draw its box."""
    mask = finding.mask
    if mask is None:
        return None
    if mask.ndim == 3 and key.slice_index is not None and mask.shape[0] > key.slice_index:
        mask = mask[key.slice_index]
    if mask.shape != shape or not mask.any():
        return None
    return np.asarray(mask, dtype=bool)


def in_plane_box(finding: ReportFinding) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """((row start, row stop), (column start, column stop)) in pixel-edge coordinates."""
    if finding.box is None or len(finding.box) < 2:
        return None
    rows, cols = finding.box[-2], finding.box[-1]
    return (float(rows[0]), float(rows[1])), (float(cols[0]), float(cols[1]))


# --- grey levels ----------------------------------------------------------------------


def display_pixels(source: Dataset) -> np.ndarray:
    """The source as a viewer would show it by default, float32 in [0, 1], white bright."""
    values = decode_image(source).pixels
    window = source_window(source)
    if window is not None:
        shown = _apply_window(values, *window)
    elif source.get("VOILUTSequence"):
        out = np.asarray(apply_voi_lut(values, source, prefer_lut=True), dtype=np.float32)
        low, high = float(out.min()), float(out.max())
        shown = (out - low) / max(high - low, 1e-6)
    else:
        centre, width = percentile_window(values)
        shown = _apply_window(values, centre, width, "LINEAR_EXACT")
    return 1.0 - shown if _inverted(source) else shown


def source_window(source: Dataset) -> tuple[float, float, str] | None:
    """The source's first window (centre, width, VOI LUT function), if it has a usable one."""
    centre, width = source.get("WindowCenter"), source.get("WindowWidth")
    if centre is None or width is None:
        return None
    centre = centre[0] if isinstance(centre, Sequence) and not isinstance(centre, str) else centre
    width = width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width
    try:
        c, w = float(centre), float(width)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(c) and math.isfinite(w)) or w <= 0:
        return None
    return c, w, str(source.get("VOILUTFunction") or "LINEAR").upper()


def percentile_window(values: np.ndarray) -> tuple[float, float]:
    """Centre and width spanning the 0.5–99.5 percentiles (as the devices' preprocessing)."""
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    width = max(high - low, 1.0)
    return low + width / 2, width


def _apply_window(values: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    # PS3.3 C.11.2.1.2: the three VOI LUT functions, mapped to [0, 1] instead of a bit range.
    if function == "SIGMOID":
        shown = 1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))
    elif function == "LINEAR_EXACT":
        shown = (values - centre) / width + 0.5
    else:
        shown = (values - (centre - 0.5)) / max(width - 1.0, 1e-6) + 0.5
    return np.clip(shown, 0.0, 1.0).astype(np.float32)


def _inverted(source: Dataset) -> bool:
    photometric = str(source.get("PhotometricInterpretation", ""))
    if photometric == "MONOCHROME1":
        return True  # INVERSE presentation shape with MONOCHROME1 says the same, not again
    return photometric == "MONOCHROME2" and source.get("PresentationLUTShape") == "INVERSE"


# --- drawing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Canvas:
    """The resampled image and how source pixel-edge coordinates map onto it."""

    image: Image.Image  # RGB, the image part only
    scale_rows: float
    scale_cols: float


def render_key_image(report: ReportInput, key: KeyImage) -> Image.Image:
    """Banner on top, the windowed image with its marks below."""
    shown = display_pixels(key.source)
    canvas = _canvas(shown)
    for finding in key.findings:
        _draw_mark(canvas, finding, finding_mask(finding, key, shown.shape))
    banner = _banner(canvas.image.width, banner_lines(report, key))
    flag = Image.new("RGB", (canvas.image.width, banner.height + canvas.image.height), BANNER_BG)
    flag.paste(banner, (0, 0))
    flag.paste(canvas.image, (0, banner.height))
    return flag


def _canvas(shown: np.ndarray) -> Canvas:
    rows, cols = shown.shape
    longest = max(rows, cols)
    scale = min(MAX_SIDE / longest, max(MIN_SIDE / longest, 1.0))
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    grey = Image.fromarray(np.rint(shown * 255.0).astype(np.uint8), mode="L")
    if size != (cols, rows):
        method = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        grey = grey.resize(size, method)
    return Canvas(grey.convert("RGB"), size[1] / rows, size[0] / cols)


def _line_width(canvas: Canvas) -> int:
    return max(2, round(max(canvas.image.size) / 300))


def _draw_mark(canvas: Canvas, finding: ReportFinding, mask: np.ndarray | None) -> None:
    if mask is not None:
        _draw_contour(canvas, mask)
        return
    box = in_plane_box(finding)
    if box is None:
        return  # nothing to point at: the banner tells it
    (r0, r1), (c0, c1) = box
    width = _line_width(canvas)
    gap = width  # the outline stays off the lesion so it can still be seen
    # Pixel-edge coordinate x covers PIL pixel indices floor(x) .. ceil(x) - 1.
    left = math.floor(c0 * canvas.scale_cols) - gap - width
    top = math.floor(r0 * canvas.scale_rows) - gap - width
    right = math.ceil(c1 * canvas.scale_cols) - 1 + gap + width
    bottom = math.ceil(r1 * canvas.scale_rows) - 1 + gap + width
    draw = ImageDraw.Draw(canvas.image)
    draw.rectangle((left, top, right, bottom), outline=MARK_RGB, width=width)


def _draw_contour(canvas: Canvas, mask: np.ndarray) -> None:
    """A ring just outside the lesion, on the resampled grid."""
    size = canvas.image.size
    grid = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize(
        size, Image.Resampling.NEAREST
    )
    lesion = np.asarray(grid) > 127
    width = _line_width(canvas)
    rows, cols = np.nonzero(lesion)
    pad = 2 * width + 2
    r0, c0 = max(int(rows.min()) - pad, 0), max(int(cols.min()) - pad, 0)
    r1, c1 = int(rows.max()) + pad + 1, int(cols.max()) + pad + 1
    crop = lesion[r0:r1, c0:c1]
    inner = ndimage.binary_dilation(crop, iterations=width)
    outer = ndimage.binary_dilation(inner, iterations=width)
    ring = outer & ~inner
    pixels = np.array(canvas.image)
    pixels[r0:r1, c0:c1][ring] = MARK_RGB
    canvas.image.paste(Image.fromarray(pixels, mode="RGB"))


# --- banner ---------------------------------------------------------------------------


def banner_lines(report: ReportInput, key: KeyImage) -> list[tuple[str, tuple[int, int, int]]]:
    """What the banner says, line by line, with each line's colour."""
    device = report.device
    lines = [(f"ИИ: {device.name_ru}, версия\u00a0{device.version}", TEXT_RGB)]
    if device.registration is not None:
        registered = device.registration.date.strftime("%d.%m.%Y")
        lines.append((f"РУ {device.registration.number} от\u00a0{registered}", TEXT_RGB))
    if key.findings:
        lines += [(_positive_text(f), MARK_RGB) for f in key.findings]
    else:
        lines.append(("Находок выше порога срабатывания не обнаружено.", TEXT_RGB))
        lines += [(_negative_text(f), TEXT_RGB) for f in report.findings]
    lines.append((AI_NOTICE_RU, NOTICE_RGB))
    if not device.provenance.clinical_use:
        lines.append((device.provenance.notice_ru, NOTICE_RGB))
    return lines


def _percent(value: float) -> str:
    return f"{value * 100:.0f}\u00a0%"  # no-break spaces: a number never leaves its unit


def _decimal(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}".replace(".", ",")  # Russian decimal comma


def _positive_text(finding: ReportFinding) -> str:
    text = f"{finding.label_ru}: вероятность {_percent(finding.probability)}"
    diameter = finding.measurements.get("max_diameter_mm")
    if diameter is not None:
        text += f", макс. диаметр {_decimal(diameter)}\u00a0мм"
    volume = finding.measurements.get("volume_mm3")
    if volume is not None:
        text += f", объём {_decimal(volume / 1000.0, 2)}\u00a0см³"
    return text


def _negative_text(finding: ReportFinding) -> str:
    return (
        f"{finding.label_ru}: вероятность {_percent(finding.probability)}"
        f" (порог {_percent(finding.threshold)})"
    )


FontType = ImageFont.FreeTypeFont | ImageFont.ImageFont


@cache
def _font(size: int) -> FontType:
    if FONT_PATH.is_file():
        return ImageFont.truetype(str(FONT_PATH), size)
    log.warning(
        "banner font missing; Pillow's default font may not draw Cyrillic",
        extra={"font": str(FONT_PATH)},
    )
    return ImageFont.load_default(size)


def _banner(width: int, lines: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    size = min(max(round(width / 48), 14), 40)
    font = _font(size)
    margin = size // 2
    wrapped = [
        (part, colour) for text, colour in lines for part in _wrap(text, font, width - 2 * margin)
    ]
    step = round(size * 1.35)
    banner = Image.new("RGB", (width, 2 * margin + step * len(wrapped)), BANNER_BG)
    draw = ImageDraw.Draw(banner)
    for i, (text, colour) in enumerate(wrapped):
        draw.text((margin, margin + i * step), text, fill=colour, font=font)
    return banner


def _wrap(text: str, font: FontType, width: int) -> list[str]:
    """Greedy word wrap by rendered width; a word longer than the line is cut by characters."""
    parts: list[str] = []
    for word in text.split(" "):
        pieces = [word]
        if font.getlength(word) > width:
            per_line = max(1, int(len(word) * width / font.getlength(word)))
            pieces = textwrap.wrap(word, per_line, break_long_words=True) or [word]
        for piece in pieces:
            joined = f"{parts[-1]} {piece}" if parts else piece
            if parts and font.getlength(joined) <= width:
                parts[-1] = joined
            else:
                parts.append(piece)
    return parts or [""]


# --- the DICOM object -----------------------------------------------------------------


def series_description(report: ReportInput, suffix: str = " (метки)") -> str:
    """«ИИ: <device> <version> (метки)»: the Russian name if it fits LO, else the English
    name, else the device id. Validators count LO's 64 in bytes, and Cyrillic takes two."""
    device = report.device
    for name in (device.name_ru, device.name, device.id):
        text = f"ИИ: {name} {device.version}{suffix}"
        if len(text.encode("utf-8")) <= 64:
            return text
    return f"ИИ: {device.id}"[:64]


def notice_text(report: ReportInput) -> str:
    """The notice every flag carries in its ImageComments, in both languages."""
    notices = [AI_NOTICE_RU, AI_NOTICE_EN]
    provenance = report.device.provenance
    if not provenance.clinical_use:
        notices += [provenance.notice_ru, provenance.notice_en]
    return " ".join(notices)


def result_uid(report: ReportInput, *parts: str) -> str:
    """Deterministic: rebuilding a job's result gives the same UIDs."""
    study = str(report.sources[0].StudyInstanceUID)
    return str(
        generate_uid(prefix=report.uid_root, entropy_srcs=[study, str(report.job_id), *parts])
    )


def _secondary_capture(report: ReportInput, key: KeyImage, number: int) -> Dataset:
    flag = render_key_image(report, key)
    source, device, when = key.source, report.device, report.completed_at
    sc = SCImage(
        pixel_array=np.asarray(flag, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=result_uid(report, "sc", "series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=result_uid(report, "sc", str(number)),
        instance_number=number,
        manufacturer=device.vendor,
        patient_orientation=("L", "F"),  # replaced below by the source's own
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description(report),
        manufacturer_model_name=device.id,
        software_versions=device.version,
        device_serial_number=device.version,
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
        specific_character_set=UTF8,
        contributing_equipment=_acquisition_equipment(source),
    )
    sc.copy_patient_and_study_information(source_header(source))
    sc.SpecificCharacterSet = UTF8  # what we write is UTF-8 whatever the source used
    sc.PatientOrientation = patient_orientation(source)
    _describe(sc, report, key, when)
    return sc


def source_header(source: Dataset) -> Dataset:
    """The source without its pixels, ready to copy into what we write: unreadable dates
    and times (``00000000`` from anonymisers) emptied, missing Type 2 patient and study
    attributes present and empty."""
    header = Dataset()
    for element in source:
        if element.tag == PIXEL_DATA:
            continue
        if element.VR in _TEMPORAL and element.value and not _parses(element.VR, element.value):
            element = DataElement(element.tag, element.VR, None)
        header.add(element)
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    if (
        header.get("PatientIdentityRemoved") == "YES"
        and "DeidentificationMethod" not in header
        and "DeidentificationMethodCodeSequence" not in header
    ):
        # Required with YES; the source did not say how, and we do not guess.
        header.DeidentificationMethod = "Not stated by the source"
    return header


def copy_series_anatomy(target: Dataset, sources: list[Dataset]) -> None:
    """Body part and side where all sources agree: Laterality is required for a paired
    organ, absent for an unpaired one, and empty when no one side applies."""
    parts = {str(s.get("BodyPartExamined") or "") for s in sources}
    part = parts.pop() if len(parts) == 1 else ""
    if part:
        target.BodyPartExamined = part
    sides = {str(s.get("ImageLaterality") or s.get("Laterality") or "") for s in sources}
    if len(sides) == 1 and (side := next(iter(sides))) in ("R", "L"):
        target.Laterality = side
    elif len(sides) > 1 or not part:
        target.Laterality = None  # both sides (e.g. R and L views), or nothing known


def _parses(vr: str, value: object) -> bool:
    try:
        _TEMPORAL[vr](str(value))
    except ValueError:
        return False
    return True


def _acquisition_equipment(source: Dataset) -> list[ContributingEquipment]:
    try:
        return [ContributingEquipment.for_image_acquisition(source)]
    except (AttributeError, TypeError, ValueError):
        return []  # the source does not say who acquired it


def _describe(sc: Dataset, report: ReportInput, key: KeyImage, when: datetime) -> None:
    source, device = key.source, report.device
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = notice_text(report)
    sc.DerivationDescription = "Исходное изображение с метками ИИ и плашкой с результатом"
    sc.SecondaryCaptureDeviceManufacturer = device.vendor
    sc.SecondaryCaptureDeviceManufacturerModelName = device.id
    sc.SecondaryCaptureDeviceSoftwareVersions = device.version
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    reference.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [reference]
    if source.get("ImageLaterality"):
        # The image's own side; the series-level Laterality must then be absent.
        sc.ImageLaterality = source.ImageLaterality
        if source.get("BodyPartExamined"):
            sc.BodyPartExamined = source.BodyPartExamined
    else:
        copy_series_anatomy(sc, [source])
    if source.get("LossyImageCompression") == "01":
        for keyword in ("LossyImageCompression", "LossyImageCompressionRatio"):
            setattr(sc, keyword, source.get(keyword))
        if source.get("LossyImageCompressionMethod"):
            sc.LossyImageCompressionMethod = source.LossyImageCompressionMethod
    # Rebuilding the same job gives the same object: every "now" becomes the job's end.
    sc.InstanceCreationDate = sc.DateOfSecondaryCapture = when.strftime("%Y%m%d")
    sc.InstanceCreationTime = sc.TimeOfSecondaryCapture = when.strftime("%H%M%S")
    for item in sc.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")


def patient_orientation(source: Dataset) -> list[str]:
    """The source's Patient Orientation, or one derived from its Image Orientation; empty
    (Type 2) when neither says."""
    given = source.get("PatientOrientation")
    if given is not None and len(given) == 2:
        return [str(v) for v in given]
    cosines = source.get("ImageOrientationPatient")
    if cosines is None or len(cosines) != 6:
        return []
    values = [float(v) for v in cosines]
    return [_direction(values[:3]), _direction(values[3:])]


def _direction(vector: list[float]) -> str:
    # Patient axes: +x left, +y posterior, +z head (PS3.3 C.7.6.1.1.1).
    letters = (("R", "L"), ("A", "P"), ("F", "H"))
    order = sorted(range(3), key=lambda axis: -abs(vector[axis]))
    return "".join(letters[axis][vector[axis] > 0] for axis in order if abs(vector[axis]) > 0.25)
