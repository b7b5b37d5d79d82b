"""Synthetic phantoms: plausible anatomy with lesions of known position, size and mask.

Each generator draws everything from the ``numpy.random.Generator`` it is given, so one
seed gives one image, and returns a :class:`Phantom` whose lesions and masks are exact:
they are the very shapes that were drawn into the pixels. The images are for demos,
tests and training small reference models; they are not meant to fool a radiologist.

Index conventions
-----------------
2D images are ``(row, col)``; volumes are ``(slice, row, col)``. Radiographs are viewed
as a radiologist reads them (PA chest: patient's right on the image left; mammograms:
chest wall at the left edge for ``"L"``, at the right edge for ``"R"``). CT volumes are
axial, slice 0 the most cranial, row increasing towards the patient's back and column
towards the patient's left (ImageOrientationPatient ``1\\0\\0\\0\\1\\0``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "Lesion",
    "Phantom",
    "chest_radiograph",
    "ct_chest",
    "ct_head",
    "mammogram",
]

Array = npt.NDArray[Any]
BoolArray = npt.NDArray[np.bool_]
HaemorrhageKind = Literal["intraparenchymal", "subdural"]


@dataclass(frozen=True)
class Lesion:
    """One lesion's ground truth, in the pixel/voxel index coordinates of its phantom.

    Attributes
    ----------
    kind
        ``"nodule"``, ``"opacity"``, ``"haemorrhage"``, ``"mass"`` or ``"calcification"``.
    subtype
        ``"solid"``; ``"intraparenchymal"`` / ``"subdural"``; ``"round"`` / ``"spiculated"``;
        ``"cluster"``.
    center
        Geometric centre, ``(row, col)`` or ``(slice, row, col)``, sub-pixel.
    diameter_mm
        Nominal diameter of a round lesion (the longest axis of an ellipsoidal one, the
        body without spicules of a spiculated mass); for a subdural crescent and a
        calcification cluster, their largest extent.
    bbox
        ``(start, stop)`` per axis, half-open, tight around the lesion's mask.
    voxel_count
        Pixels (2D) or voxels (3D) in the lesion's mask.
    """

    kind: str
    subtype: str
    center: tuple[float, ...]
    diameter_mm: float
    bbox: tuple[tuple[int, int], ...]
    voxel_count: int

    def slices(self) -> tuple[slice, ...]:
        """The bounding box as index slices: ``phantom.mask[lesion.slices()]``."""
        return tuple(slice(start, stop) for start, stop in self.bbox)


@dataclass(frozen=True, eq=False)
class Phantom:
    """A generated image with its ground truth. All arrays are read-only.

    Attributes
    ----------
    anatomy
        ``"chest_radiograph"``, ``"ct_chest"``, ``"ct_head"`` or ``"mammogram"``.
    pixels
        Radiographs: ``uint16`` stored values, MONOCHROME2 (dense is bright), range
        ``0 .. 2**bits_stored - 1``. CT: ``int16`` Hounsfield units.
    pixel_spacing_mm
        ``(row spacing, column spacing)``.
    slice_spacing_mm
        Distance between slice centres (slices are contiguous: also the thickness);
        ``None`` for 2D.
    lesions
        One entry per lesion; ``labels == i + 1`` is the mask of ``lesions[i]``.
    mask
        Union of all lesion masks, same shape as ``pixels``.
    labels
        ``uint8``: 0 background, ``i + 1`` inside ``lesions[i]``.
    regions
        Anatomy masks by name (``"body"``, ``"lungs"``, ``"brain"``, ``"breast"`` …).
    laterality, view
        Mammograms only: ``"L"``/``"R"`` and ``"CC"``/``"MLO"``.
    bits_stored
        Radiographs only.
    """

    anatomy: str
    pixels: Array
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float | None
    lesions: tuple[Lesion, ...]
    mask: BoolArray
    labels: npt.NDArray[np.uint8]
    regions: Mapping[str, BoolArray]
    laterality: str | None = None
    view: str | None = None
    bits_stored: int | None = None

    @property
    def spacing_mm(self) -> tuple[float, ...]:
        """Spacing per array axis: ``(row, col)`` or ``(slice, row, col)``."""
        if self.slice_spacing_mm is None:
            return self.pixel_spacing_mm
        return (self.slice_spacing_mm, *self.pixel_spacing_mm)


# --------------------------------------------------------------------------- helpers


def _smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], cell: Sequence[float]
) -> Array:
    """Smooth random field, roughly unit variance, with features ``cell`` pixels apart.

    Gaussian noise on a coarse grid, upsampled one axis at a time with smoothstep
    interpolation, so only the last step touches a full-size array.
    """
    coarse = tuple(int(math.ceil(n / max(c, 1e-3))) + 2 for n, c in zip(shape, cell, strict=True))
    field = rng.standard_normal(coarse, dtype=np.float32) * np.float32(1.35)
    for axis, (n, c) in enumerate(zip(shape, cell, strict=True)):
        pos = np.arange(n, dtype=np.float32) / np.float32(max(c, 1e-3))
        pos += np.float32(rng.uniform(0.0, 1.0))
        i0 = pos.astype(np.intp)
        frac = pos - i0
        frac = frac * frac * (np.float32(3.0) - np.float32(2.0) * frac)
        bshape = [1] * field.ndim
        bshape[axis] = n
        lo = np.take(field, i0, axis=axis)
        hi = np.take(field, i0 + 1, axis=axis)
        field = lo + (hi - lo) * frac.reshape(bshape)
    return field


def _sample_grid(grid: Array, u: Array, v: Array) -> Array:
    """Bilinear sample of a small periodic 2D grid at real coordinates ``(u, v)``."""
    gu, gv = grid.shape
    u0 = np.floor(u)
    v0 = np.floor(v)
    fu = (u - u0).astype(np.float32)
    fv = (v - v0).astype(np.float32)
    iu = u0.astype(np.intp) % gu
    iv = v0.astype(np.intp) % gv
    iu1 = (iu + 1) % gu
    iv1 = (iv + 1) % gv
    top = grid[iu, iv] * (1 - fv) + grid[iu, iv1] * fv
    bottom = grid[iu1, iv] * (1 - fv) + grid[iu1, iv1] * fv
    result: Array = top * (1 - fu) + bottom * fu
    return result


def _soft(inside: Array, width: float) -> Array:
    """Soft 0..1 edge from a signed 'inside' distance (positive inside), ``width`` wide."""
    result: Array = np.clip(inside / np.float32(width) + np.float32(0.5), 0.0, 1.0)
    return result


def _axis_mm(n: int, spacing: float) -> Array:
    """Centred coordinates in mm along one axis."""
    return (np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2)) * np.float32(spacing)


def _ellipsoid(
    center: Sequence[float],
    semi_px: Sequence[float],
    shape: Sequence[int],
    angle: float = 0.0,
    reach: float = 1.0,
) -> tuple[tuple[slice, ...], Array] | None:
    """Normalised radius (1 on the surface) of an ellipsoid over a window around it.

    ``semi_px`` are semi-axes in pixels per array axis; ``angle`` rotates the last two
    axes. The window holds the ellipsoid scaled by ``reach``; ``None`` if it would leave
    the array.
    """
    ndim = len(shape)
    in_plane = max(semi_px[-2:]) * reach
    extent = [in_plane] * ndim
    if ndim == 3:
        extent[0] = semi_px[0] * reach
    lo = [math.floor(c - e) for c, e in zip(center, extent, strict=True)]
    hi = [math.ceil(c + e) + 1 for c, e in zip(center, extent, strict=True)]
    if any(a < 0 for a in lo) or any(b > n for b, n in zip(hi, shape, strict=True)):
        return None
    window = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grids = np.ogrid[window]
    d = [(g - c).astype(np.float32) for g, c in zip(grids, center, strict=True)]
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = d[-2] * cos + d[-1] * sin
    v = -d[-2] * sin + d[-1] * cos
    rho2 = (u / np.float32(semi_px[-2])) ** 2 + (v / np.float32(semi_px[-1])) ** 2
    if ndim == 3:
        rho2 = rho2 + (d[0] / np.float32(semi_px[0])) ** 2
    return window, np.sqrt(rho2)


def _place_ellipsoid(
    rng: np.random.Generator,
    allowed: BoolArray,
    occupied: BoolArray,
    semi_px: Sequence[float],
    angle: float = 0.0,
    what: str = "lesion",
) -> tuple[tuple[float, ...], tuple[slice, ...], Array]:
    """Random centre for an ellipsoid lying wholly in ``allowed``, clear of ``occupied``."""
    candidates = np.flatnonzero(allowed)
    if candidates.size:
        for _ in range(400):
            index = np.unravel_index(candidates[rng.integers(candidates.size)], allowed.shape)
            center = tuple(float(i) + rng.uniform(-0.5, 0.5) for i in index)
            found = _ellipsoid(center, semi_px, allowed.shape, angle, reach=1.4)
            if found is None:
                continue
            window, rho = found
            inside = rho <= 1.0
            if allowed[window][inside].all() and not occupied[window][rho <= 1.4].any():
                return center, window, rho
    raise ValueError(f"no room for a {what} of {semi_px} px semi-axes in this image")


def _lesion(
    kind: str,
    subtype: str,
    center: Sequence[float],
    diameter_mm: float,
    window: tuple[slice, ...],
    local_mask: BoolArray,
) -> Lesion:
    """Ground truth for one lesion whose mask is ``local_mask`` over ``window``."""
    bbox = []
    for axis in range(local_mask.ndim):
        other = tuple(a for a in range(local_mask.ndim) if a != axis)
        hits = np.flatnonzero(local_mask.any(axis=other))
        start = window[axis].start or 0
        bbox.append((start + int(hits[0]), start + int(hits[-1]) + 1))
    return Lesion(
        kind=kind,
        subtype=subtype,
        center=tuple(round(float(c), 3) for c in center),
        diameter_mm=round(float(diameter_mm), 3),
        bbox=tuple(bbox),
        voxel_count=int(local_mask.sum()),
    )


def _frozen(array: Array) -> Array:
    array.setflags(write=False)
    return array


def _phantom(
    anatomy: str,
    pixels: Array,
    spacing: tuple[float, float],
    slice_spacing: float | None,
    drawn: Sequence[tuple[Lesion, tuple[slice, ...], BoolArray]],
    regions: Mapping[str, BoolArray],
    **extra: Any,
) -> Phantom:
    labels = np.zeros(pixels.shape, dtype=np.uint8)
    for number, (_, window, local_mask) in enumerate(drawn, start=1):
        labels[window][local_mask] = number
    return Phantom(
        anatomy=anatomy,
        pixels=_frozen(pixels),
        pixel_spacing_mm=(round(spacing[0], 6), round(spacing[1], 6)),
        slice_spacing_mm=slice_spacing,
        lesions=tuple(lesion for lesion, _, _ in drawn),
        mask=_frozen(labels > 0),
        labels=_frozen(labels),
        regions=MappingProxyType({name: _frozen(m) for name, m in regions.items()}),
        **extra,
    )


def _check_size(size: Sequence[int], minimum: int) -> tuple[int, int]:
    if len(size) != 2 or min(size) < minimum:
        raise ValueError(f"size must be (rows, cols), each at least {minimum}; got {size!r}")
    return int(size[0]), int(size[1])


def _check_range(name: str, bounds: tuple[float, float]) -> None:
    if not 0 < bounds[0] <= bounds[1]:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high; got {bounds!r}")


# --------------------------------------------------------------------------- chest X-ray


def chest_radiograph(
    rng: np.random.Generator,
    size: tuple[int, int] = (1024, 1024),
    n_lesions: int = 1,
    nodule_diameter_mm: tuple[float, float] = (8.0, 30.0),
) -> Phantom:
    """PA chest radiograph / fluorogram, 12-bit MONOCHROME2, with round lung opacities.

    Pixel spacing is 0.35 mm at 1024 × 1024 and scales with ``size`` (the field of view
    stays about 36 cm). Lesions are ``kind="nodule"``; regions: ``body``, ``lungs``.
    """
    h, w = _check_size(size, 64)
    _check_range("nodule_diameter_mm", nodule_diameter_mm)
    s = 0.35 * 1024 / math.sqrt(h * w)
    y = _axis_mm(h, s)[:, None] + np.float32(rng.uniform(-8, 8))
    x = _axis_mm(w, s)[None, :] + np.float32(rng.uniform(-6, 6))
    k = rng.uniform(0.92, 1.06)  # patient build
    xs = x / np.float32(k)
    ys = y / np.float32(k)
    ax = np.abs(xs)

    body_rho = (np.abs(xs) / 170) ** 2.5 + (np.abs(ys - 45) / 250) ** 5
    neck = _soft(52 - np.abs(xs), 8) * _soft(-150 - ys, 20)
    thickness = np.maximum(np.sqrt(np.clip(1 - body_rho, 0, 1)) ** 0.6, np.float32(0.8) * neck)
    att = np.float32(0.025) + np.float32(0.56) * thickness
    body = thickness > 0

    # Heart, mediastinum, diaphragm domes; lungs are what is left of two ellipses.
    hx = np.float32(rng.uniform(16, 30))
    heart_rho = ((xs - hx) / rng.uniform(64, 78)) ** 2 + ((ys - 48) / 56) ** 2
    mediastinum = (np.abs(xs - 4) < 24 + 10 * np.clip((ys + 60) / 80, 0, 1)) & (ys < 60)
    knob = ((xs - 24) ** 2 + (ys + 62) ** 2) < 16**2
    dome = np.where(
        xs < 0,
        72 - 32 * np.clip(1 - ((xs + 80) / 85) ** 2, 0, 1),
        86 - 30 * np.clip(1 - ((xs - 80) / 85) ** 2, 0, 1),
    )
    below_diaphragm = ys > dome
    lungs = np.zeros((h, w), dtype=bool)
    lung_depth = np.zeros((h, w), dtype=np.float32)
    for side in (-1, 1):
        rho = ((xs - side * 84) / 66) ** 2 + ((ys + 22) / 128) ** 2
        field = (rho < 1) & (np.abs(xs) > 18)
        lungs |= field
        lung_depth = np.maximum(lung_depth, _soft((1 - rho) * 40, 14))
    lungs &= ~below_diaphragm & (heart_rho >= 1) & ~mediastinum & ~knob & body
    edge = _soft((1 - heart_rho) * 30, 6) + _soft(np.where(below_diaphragm, 6.0, -6.0), 6)
    lung_soft = lung_depth * np.clip(1 - edge, 0, 1) * (~mediastinum & ~knob)
    att -= np.float32(0.33) * lung_soft
    att += np.float32(0.07) * _soft(ys - dome, 3) * _soft(150 - ax, 30) * body
    att += np.float32(0.035) * _soft(18 - np.abs(xs), 4) * body  # spine behind the mediastinum

    # Lung markings: vessels radiating from the hila, plus fine mottling.
    streaks = rng.standard_normal((64, 24), dtype=np.float32)
    markings = np.zeros((h, w), dtype=np.float32)
    for side in (-1, 1):
        dx, dy = xs - side * 46, ys + 8
        r = np.sqrt(dx * dx + dy * dy)
        theta = np.arctan2(dy, dx * side) * np.float32(64 / (2 * np.pi))
        weight = np.exp(-r / 70) * (side * xs > 0)
        markings += weight * np.abs(_sample_grid(streaks, theta * 4, r / 9))
    markings += np.float32(0.25) * _smooth_noise(rng, (h, w), (4 / s, 4 / s))
    att += np.float32(0.035) * markings * lung_soft + np.float32(0.06) * np.exp(
        -(((np.abs(xs) - 46) ** 2 + (ys + 8) ** 2) / 20**2)
    )

    # Ribs: posterior arcs rising from the spine and turning down at the chest wall, faint
    # anterior arcs running down towards the sternum; clavicles.
    bones = np.zeros((h, w), dtype=np.float32)
    lateral = 150 - 0.0006 * (ys + 20) ** 2
    for i in range(10):
        top = -166 + i * (18 + 0.6 * i)
        u = np.clip(ax - 12, 0, None)
        centre = top - 0.42 * u + 0.0042 * u**2
        half = 3.5 + 0.25 * i
        cortex = _soft(half - np.abs(ys - centre), 1.5) * _soft(lateral + 4 - ax, 6) * (ax > 12)
        bones = np.maximum(bones, cortex * (0.8 + 0.2 * _soft(np.abs(ys - centre) - half + 2, 2)))
        front = top + 24 + 0.5 * (lateral - ax) + 0.002 * (lateral - ax) ** 2
        anterior = _soft(half + 1 - np.abs(ys - front), 3) * (ax < lateral) * (ax > 40)
        anterior *= _soft(dome + 10 - ys, 12)
        bones = np.maximum(bones, 0.3 * anterior)
    clavicle = -150 - 0.2 * (ax - 15) + 0.0006 * (ax - 80) ** 2
    bones = np.maximum(bones, 1.2 * _soft(7 - np.abs(ys - clavicle), 2.5) * (ax < 150) * (ax > 12))
    att += np.float32(0.07) * bones * body
    att += np.float32(0.03) * _smooth_noise(rng, (h, w), (25 / s, 25 / s)) * body

    drawn: list[tuple[Lesion, tuple[slice, ...], BoolArray]] = []
    occupied = np.zeros((h, w), dtype=bool)
    for _ in range(n_lesions):
        diameter = rng.uniform(*nodule_diameter_mm)
        semi = (diameter / 2 / s, diameter / 2 / s)
        center, window, rho = _place_ellipsoid(rng, lungs, occupied, semi, what="nodule")
        inside = rho <= 1
        att[window] += np.float32(rng.uniform(0.12, 0.2)) * np.sqrt(np.clip(1 - rho**2, 0, 1))
        occupied[window] |= inside
        drawn.append((_lesion("nodule", "solid", center, diameter, window, inside), window, inside))

    att += rng.normal(0, 0.006, (h, w)).astype(np.float32)
    pixels = np.clip(np.rint(att * 4095), 0, 4095).astype(np.uint16)
    regions = {"body": body, "lungs": lungs}
    return _phantom("chest_radiograph", pixels, (s, s), None, drawn, regions, bits_stored=12)
