"""Where the AI's marks go: the key images of a job and each finding's outline on them.

The flag images burn the marks in and the GSPS lays them over the originals; both take the
same key images and the same geometry from here. Coordinates are source pixel edges
(``(row, column)``, the top-left corner of the top-left pixel at ``(0, 0)``), as in
:class:`~gateway.inference.findings.Location`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from gateway.results.input import ReportFinding, ReportInput

# The marks' colour in both: saturated red, which no windowed grey-scale pixel looks like.
MARK_RGB = (255, 40, 40)


@dataclass(frozen=True)
class KeyImage:
    """One source image to flag and the positive findings drawn on it."""

    source: Dataset
    slice_index: int | None  # 3D devices: the slice in the volume (indexes finding masks)
    findings: tuple[ReportFinding, ...]


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
    location = finding.location
    if location.sop_instance_uid in by_uid:
        return by_uid[str(location.sop_instance_uid)]
    if volumetric and location.centre:
        return min(max(int(location.centre[0]), 0), count - 1)
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
    box = finding.location.box
    if box is None or len(box) < 2:
        return None
    rows, cols = box[-2], box[-1]
    return (float(rows[0]), float(rows[1])), (float(cols[0]), float(cols[1]))
