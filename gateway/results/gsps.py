"""GSPS: the flag images' marks as vector graphics over the original images.

For viewers that apply presentation states the radiologist sees the original pixels (full
resolution, their own windowing tools) with the AI's outline and label on a separate layer
that can be switched off. Coordinates in DICOM graphic data are (column, row) with the
top-left corner of the top-left pixel at (0, 0) — the same pixel-edge convention as
:class:`ReportFinding`, only with the axes swapped.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from highdicom import VOILUT, ReferencedImageSequence
from highdicom.color import CIELabColor
from highdicom.pr import (
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GrayscaleSoftcopyPresentationState,
    SoftcopyVOILUTTransformation,
    TextObject,
)
from pydicom import Dataset

from gateway.results.header import (
    UTF8,
    add_ai_device,
    copy_series_anatomy,
    derived_uid,
    lo,
    series_description,
    source_header,
    stamp_times,
)
from gateway.results.input import ReportFinding, ReportInput
from gateway.results.marks import MARK_RGB, KeyImage, finding_mask, in_plane_box, key_images
from gateway.results.notices import AI_NOTICE_RU
from gateway.results.windowing import default_window, source_window

SERIES_NUMBER = 9903
CONTENT_LABEL = "AI_FLAGS"
# Validators count LO's 64 in bytes: Cyrillic takes two.
CONTENT_DESCRIPTION = "Метки ИИ: подтвердить врачом"


def build_gsps(report: ReportInput) -> Dataset | None:
    """A presentation state over the images with positive findings; None when none is."""
    keys = [key for key in key_images(report) if key.findings]
    if not keys:
        return None
    headers = [source_header(key.source) for key in keys]
    layer = GraphicLayer(
        layer_name=CONTENT_LABEL,
        order=1,
        description="Метки ИИ",
        display_color=CIELabColor.from_rgb(*MARK_RGB),
    )
    annotations = [
        _annotation(report, key, header, layer) for key, header in zip(keys, headers, strict=True)
    ]
    device = report.device
    gsps = GrayscaleSoftcopyPresentationState(
        referenced_images=headers,
        series_instance_uid=derived_uid(report, "gsps", "series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=derived_uid(report, "gsps"),
        instance_number=1,
        manufacturer=lo(device.vendor),
        manufacturer_model_name=lo(device.id),
        software_versions=device.version,
        device_serial_number=device.version,
        content_label=CONTENT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        graphic_annotations=annotations,
        graphic_layers=[layer],
        voi_lut_transformations=_voi(keys, headers),
        series_description=series_description(device, suffix=" (GSPS)"),
        specific_character_set=UTF8,
    )
    gsps.SpecificCharacterSet = UTF8
    copy_series_anatomy(gsps, headers)
    add_ai_device(gsps, report)
    stamp_times(gsps, report)
    # Created when the job finished: a rebuild gives the same object.
    gsps.PresentationCreationDate = gsps.InstanceCreationDate
    gsps.PresentationCreationTime = gsps.InstanceCreationTime
    return gsps


def _annotation(
    report: ReportInput, key: KeyImage, header: Dataset, layer: GraphicLayer
) -> GraphicAnnotation:
    shape = (int(header.Rows), int(header.Columns))
    graphics: list[GraphicObject] = []
    texts: list[TextObject] = []
    for finding in key.findings:
        outlines = _outlines(finding, key, shape)
        graphics += [GraphicObject("POLYLINE", points, "PIXEL") for points in outlines]
        texts.append(_label(report, finding, outlines, shape))
    return GraphicAnnotation(
        referenced_images=[header],
        graphic_layer=layer,
        graphic_objects=graphics or None,
        text_objects=texts,
    )


def _outlines(finding: ReportFinding, key: KeyImage, shape: tuple[int, int]) -> list[np.ndarray]:
    """Closed polylines in (column, row): the mask's outline, or the box."""
    mask = finding_mask(finding, key, shape)
    if mask is not None:
        return mask_outlines(mask)
    box = in_plane_box(finding)
    if box is None:
        return []
    rows, columns = shape
    (r0, r1), (c0, c1) = box
    r0, r1 = max(r0, 0.0), min(r1, float(rows))
    c0, c1 = max(c0, 0.0), min(c1, float(columns))
    return [np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=float)]


def _label(
    report: ReportInput, finding: ReportFinding, outlines: list[np.ndarray], shape: tuple[int, int]
) -> TextObject:
    """Label, probability and the notice, in a box beside the mark (above if there is room)."""
    rows, columns = shape
    text = f"{finding.label_ru}: {finding.probability * 100:.0f} %. {AI_NOTICE_RU}"
    if not report.device.provenance.clinical_use:
        text += f" {report.device.provenance.notice_ru}"
    height = max(rows * 0.06, 4.0)
    width = min(float(columns), max(columns * 0.5, 1.0))
    if outlines:
        points = np.concatenate(outlines)
        left, top = float(points[:, 0].min()), float(points[:, 1].min())
        bottom = float(points[:, 1].max())
    else:
        left, top, bottom = 0.0, height, 0.0
    left = min(max(left, 0.0), columns - width)
    upper = top - height if top - height >= 0 else min(bottom, rows - height)
    return TextObject(
        text_value=text,
        units="PIXEL",
        bounding_box=(left, upper, left + width, upper + height),
    )


def _voi(keys: list[KeyImage], headers: list[Dataset]) -> list[SoftcopyVOILUTTransformation]:
    """Each image's VOI as its flag image shows it: the source's first window, else its VOI
    LUT, else the percentile window (without one the viewer would show raw values)."""
    transformations = []
    for key, header in zip(keys, headers, strict=True):
        references = ReferencedImageSequence([header])
        window = source_window(key.source)
        lut = _voi_lut(key.source)
        if window is None and lut is not None:
            transformations.append(
                SoftcopyVOILUTTransformation(voi_luts=[lut], referenced_images=references)
            )
            continue
        if window is not None:
            centre, width, function = window
        else:
            (centre, width), function = default_window(key.source), ""
        transformations.append(
            SoftcopyVOILUTTransformation(
                window_center=centre,
                window_width=width,
                voi_lut_function=function if function in ("SIGMOID", "LINEAR_EXACT") else None,
                referenced_images=references,
            )
        )
    return transformations


def _voi_lut(source: Dataset) -> VOILUT | None:
    items = source.get("VOILUTSequence")
    if not items:
        return None
    item = items[0]
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
        dtype = np.uint16 if bits > 8 else np.uint8
        if isinstance(data, bytes):
            table = np.frombuffer(data, dtype="<u2" if bits > 8 else np.uint8).astype(dtype)
        else:
            table = np.asarray(data, dtype=dtype).ravel()
        explanation = item.get("LUTExplanation")
        return VOILUT(first, table[: entries or 65536], str(explanation) if explanation else None)
    except (AttributeError, TypeError, ValueError):
        return None  # a damaged LUT: the percentile window will do


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """The boundary of a 2D mask as closed polylines along pixel edges, in (column, row).

    Each pixel side between the mask and the outside is a directed edge, clockwise around
    the pixel (rows grow downwards); the edges chain into closed loops: one per
    component's outline, one per hole. Collinear vertices are dropped.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    inside = padded[1:-1, 1:-1]
    following: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    sides = (
        (padded[:-2, 1:-1], (0, 0), (0, 1)),  # top: (c, r) → (c + 1, r)
        (padded[1:-1, 2:], (0, 1), (1, 1)),  # right: (c + 1, r) → (c + 1, r + 1)
        (padded[2:, 1:-1], (1, 1), (1, 0)),  # bottom: (c + 1, r + 1) → (c, r + 1)
        (padded[1:-1, :-2], (1, 0), (0, 0)),  # left: (c, r + 1) → (c, r)
    )
    for neighbour, (dr0, dc0), (dr1, dc1) in sides:
        for r, c in zip(*np.nonzero(inside & ~neighbour), strict=True):
            following[(int(c) + dc0, int(r) + dr0)].append((int(c) + dc1, int(r) + dr1))
    loops = []
    while following:
        start = next(iter(following))
        loop = [start]
        point = start
        while True:
            ends = following[point]
            end = ends.pop()
            if not ends:
                del following[point]
            if end == start:
                break
            loop.append(end)
            point = end
        loops.append(_closed(_without_collinear(loop)))
    return loops


def _without_collinear(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    kept = []
    for i, point in enumerate(loop):
        before, after = loop[i - 1], loop[(i + 1) % len(loop)]
        cross = (point[0] - before[0]) * (after[1] - point[1]) - (point[1] - before[1]) * (
            after[0] - point[0]
        )
        if cross != 0:
            kept.append(point)
    return kept


def _closed(loop: list[tuple[int, int]]) -> np.ndarray:
    return np.array([*loop, loop[0]], dtype=float)
