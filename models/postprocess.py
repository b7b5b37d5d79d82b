"""From a device's raw outputs to findings located in the source image.

Output semantics (declared by the manifest's output kinds):
- classification ``[N, L]`` probabilities; located by a ``heatmap`` output ``[N, L, h, w]``
  spanning the model canvas, when the device has one;
- segmentation ``[N, L, *spatial]`` probabilities at the input resolution: probability is
  the maximum, the lesion is the largest connected component above the threshold;
- detection ``[N, L, h, w]`` centre heatmap plus ``[N, 2, h, w]`` box height/width in
  model-input pixels (CenterNet).
Coordinates go back to source pixels through :class:`models.preprocess.Geometry`;
measurements use the source pixel spacing, in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from models.manifest import DeviceManifest, Label, OutputKind, OutputSpec
from models.preprocess import Geometry


@dataclass(frozen=True)
class InputMeta:
    geometry: Geometry
    spacing_mm: tuple[float, ...] | None  # source spacing per spatial axis


@dataclass(frozen=True)
class RawFinding:
    """One label's answer for one model input, in source index coordinates."""

    input_index: int
    label: Label
    probability: float
    positive: bool
    centre: tuple[float, ...] | None = None  # (row, col) or (slice, row, col)
    box: tuple[tuple[float, float], ...] | None = None  # (start, stop) per axis
    measurements: dict[str, float] = field(default_factory=dict)
    # Segmentation: the lesion (largest component) on the source grid, bool.
    mask: np.ndarray | None = None


def interpret(
    manifest: DeviceManifest, outputs: dict[str, np.ndarray], inputs: list[InputMeta]
) -> list[RawFinding]:
    heatmaps = {o.name: o for o in manifest.outputs if o.kind == OutputKind.HEATMAP}
    findings: list[RawFinding] = []
    for spec in manifest.outputs:
        if spec.kind == OutputKind.CLASSIFICATION:
            heatmap = next(iter(heatmaps), None)
            findings += _classification(spec, outputs, heatmap, inputs)
        elif spec.kind == OutputKind.SEGMENTATION:
            findings += _segmentation(spec, outputs[spec.name], inputs)
        elif spec.kind == OutputKind.DETECTION:
            assert spec.size_output is not None  # the manifest guarantees it
            findings += _detection(spec, outputs[spec.name], outputs[spec.size_output], inputs)
    return findings


def _classification(
    spec: OutputSpec,
    outputs: dict[str, np.ndarray],
    heatmap_name: str | None,
    inputs: list[InputMeta],
) -> list[RawFinding]:
    probabilities = outputs[spec.name]
    found = []
    for index, meta in enumerate(inputs):
        for channel, label in enumerate(spec.labels):
            probability = float(probabilities[index, channel])
            centre = box = None
            if heatmap_name is not None:
                heat = outputs[heatmap_name][
                    index, min(channel, outputs[heatmap_name].shape[1] - 1)
                ]
                centre, box = _hot_region(heat, meta.geometry)
            # A class-activation region shows where the device looked, not the lesion's
            # outline: it locates the finding but measures nothing.
            found.append(_finding(index, label, probability, centre, box, meta, measure=False))
    return found


def _segmentation(
    spec: OutputSpec, output: np.ndarray, inputs: list[InputMeta]
) -> list[RawFinding]:
    found = []
    for index, meta in enumerate(inputs):
        for channel, label in enumerate(spec.labels):
            probabilities = output[index, channel]
            probability = float(probabilities.max())
            centre = box = source_mask = None
            voxels = 0
            mask = probabilities >= max(label.threshold, 0.5 * probability)
            cropped = _true_box(mask)
            if cropped is not None:
                # The lesion's box alone from here: a CT's grid is ~10⁶ cells, a lesion ~10².
                component = _largest_component(mask[cropped])
                origin = tuple(axis.start for axis in cropped)
                voxels = int(component.sum())
                centre = meta.geometry.to_source(_centre_of_mass(component, origin))
                box = _source_box(_bounding_box(component, origin), meta.geometry)
                if probability >= label.threshold:
                    source_mask = to_source_grid(component, meta.geometry, origin, mask.shape)
            finding = _finding(index, label, probability, centre, box, meta, source_mask)
            if voxels and meta.spacing_mm:
                size = float(np.prod(meta.spacing_mm)) / float(np.prod(meta.geometry.scale))
                key = "volume_mm3" if len(meta.spacing_mm) == 3 else "area_mm2"
                finding.measurements[key] = round(voxels * size, 1)
            found.append(finding)
    return found


def _detection(
    spec: OutputSpec, heat: np.ndarray, sizes: np.ndarray, inputs: list[InputMeta]
) -> list[RawFinding]:
    found = []
    for index, meta in enumerate(inputs):
        for channel, label in enumerate(spec.labels):
            channel_heat = heat[index, channel]
            peak = np.unravel_index(int(np.argmax(channel_heat)), channel_heat.shape)
            probability = float(channel_heat[peak])
            stride = _stride(channel_heat.shape, meta.geometry)
            centre_model = tuple((p + 0.5) * s for p, s in zip(peak, stride, strict=True))
            height, width = (float(sizes[index, axis][peak]) for axis in (0, 1))
            model_box = (
                (centre_model[0] - height / 2, centre_model[0] + height / 2),
                (centre_model[1] - width / 2, centre_model[1] + width / 2),
            )
            centre = meta.geometry.to_source(centre_model)
            found.append(
                _finding(
                    index, label, probability, centre, _source_box(model_box, meta.geometry), meta
                )
            )
    return found


def _finding(
    index: int,
    label: Label,
    probability: float,
    centre: tuple[float, ...] | None,
    box: tuple[tuple[float, float], ...] | None,
    meta: InputMeta,
    mask: np.ndarray | None = None,
    measure: bool = True,
) -> RawFinding:
    finding = RawFinding(
        index, label, probability, probability >= label.threshold, centre, box, mask=mask
    )
    if measure and box is not None and meta.spacing_mm:
        extents = [
            (stop - start) * mm for (start, stop), mm in zip(box, meta.spacing_mm, strict=True)
        ]
        finding.measurements["max_diameter_mm"] = round(max(extents[-2:]), 1)
    return finding


def _hot_region(
    heat: np.ndarray, geometry: Geometry
) -> tuple[tuple[float, ...], tuple[tuple[float, float], ...]]:
    """Centre and box of the connected region around the heatmap's peak (≥ half its value)."""
    stride = _stride(heat.shape, geometry)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    labels, _count = ndimage.label(heat >= 0.5 * float(heat[peak]))
    region = labels == labels[peak]
    box_cells = _bounding_box(region)
    model_box = tuple(
        (start * s, stop * s) for (start, stop), s in zip(box_cells, stride, strict=True)
    )
    centre_model = tuple((p + 0.5) * s for p, s in zip(peak, stride, strict=True))
    return geometry.to_source(centre_model), _source_box(model_box, geometry)


def _stride(map_shape: tuple[int, ...], geometry: Geometry) -> tuple[float, ...]:
    """Model-input pixels per map cell along each axis (the map spans the whole canvas)."""
    canvas = [
        round(o * 2 + n * s)
        for o, n, s in zip(geometry.offset, geometry.source_shape, geometry.scale, strict=True)
    ]
    return tuple(c / m for c, m in zip(canvas, map_shape, strict=True))


def to_source_grid(
    mask: np.ndarray,
    geometry: Geometry,
    origin: tuple[int, ...] | None = None,
    grid: tuple[int, ...] | None = None,
) -> np.ndarray:
    """A model-grid mask sampled (nearest) at every source voxel's centre. ``mask`` holds
    the cells of a model grid of shape ``grid`` from ``origin`` on (default: the whole
    grid), and nothing is set outside it.

    Only the source voxels whose cell lies in the mask's set cells' box are sampled, one
    axis at a time (``take``); the rest of the source grid stays the zeros it was allocated
    as: a CT's source grid is 10–25 M voxels and a lesion's box a few thousand, so sampling
    the whole grid cost ~5–15 ms per finding for the same voxels."""
    sampled = np.asarray(mask, dtype=bool)
    origin = origin or (0,) * sampled.ndim
    grid = grid or sampled.shape
    source = np.zeros(geometry.source_shape, dtype=bool)
    found = _true_box(sampled)
    if found is None:
        return source
    sampled = sampled[found]
    target = []
    for axis, (n, size, scale, offset) in enumerate(
        zip(geometry.source_shape, grid, geometry.scale, geometry.offset, strict=True)
    ):
        model = np.floor((np.arange(n) + 0.5) * scale + offset).astype(np.int64)
        model = np.clip(model, 0, size - 1)  # non-decreasing: each cell's voxels are a run
        first = origin[axis] + found[axis].start
        start, stop = np.searchsorted(model, [first, first + sampled.shape[axis]])
        sampled = sampled.take(model[start:stop] - first, axis=axis)
        target.append(slice(int(start), int(stop)))
    source[tuple(target)] = sampled
    return source


def _true_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (a slice per axis) holding every set cell; None when none is. Each
    axis's projection is taken over the box found so far (a lesion's few slices, not the
    grid)."""
    box: list[slice] = []
    view = mask
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(view.any(axis=others) if others else view)
        if not hit.size:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
        view = mask[tuple(box)]
    return tuple(box)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=range(1, count + 1))
    return np.asarray(labels == (int(np.argmax(sizes)) + 1))


def _bounding_box(
    mask: np.ndarray, origin: tuple[int, ...] | None = None
) -> tuple[tuple[float, float], ...]:
    """(start, stop) per axis of the set cells, counted from ``origin`` (of a crop)."""
    indices = np.nonzero(mask)
    origin = origin or (0,) * mask.ndim
    return tuple(
        (float(axis.min() + o), float(axis.max() + o) + 1.0)
        for axis, o in zip(indices, origin, strict=True)
    )


def _centre_of_mass(mask: np.ndarray, origin: tuple[int, ...]) -> tuple[float, ...]:
    """``ndimage.center_of_mass`` of the crop's set cells, counted from ``origin``: each
    coordinate is the exact sum of the cells' indices over their count, as scipy's, so the
    float is the same to the last bit."""
    indices = np.nonzero(mask)
    count = len(indices[0])
    return tuple(
        (int(axis.sum()) + o * count) / count for axis, o in zip(indices, origin, strict=True)
    )


def _source_box(
    model_box: tuple[tuple[float, float], ...], geometry: Geometry
) -> tuple[tuple[float, float], ...]:
    starts = geometry.to_source(tuple(start for start, _ in model_box))
    stops = geometry.to_source(tuple(stop for _, stop in model_box))
    clipped = []
    for start, stop, limit in zip(starts, stops, geometry.source_shape, strict=True):
        clipped.append((max(0.0, min(start, stop)), min(float(limit), max(start, stop))))
    return tuple(clipped)
