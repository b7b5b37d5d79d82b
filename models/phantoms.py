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
    "HaemorrhageKind",
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
        ``"nodule"``, ``"haemorrhage"``, ``"mass"`` or ``"calcification"``.
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


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], cell: Sequence[float]) -> Array:
    """Smooth random field, roughly unit variance, with features ``cell`` pixels apart.

    Gaussian noise on a coarse grid, upsampled one axis at a time with smoothstep
    interpolation, so only the last step touches a full-size array.
    """
    coarse = tuple(math.ceil(n / max(c, 1e-3)) + 2 for n, c in zip(shape, cell, strict=True))
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
            if not inside.any() or not allowed[window][inside].all():
                continue
            if not occupied[window][rho <= 1.4].any():
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
    if len(drawn) > 255:
        raise ValueError(f"at most 255 lesions fit a uint8 label map; got {len(drawn)}")
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


# --------------------------------------------------------------------------- CT chest


def largest_nodule_mm(n_slices: int, slice_thickness_mm: float) -> float:
    """The largest nodule :func:`ct_chest` fits into a slab: it must lie wholly inside the
    slab, away from its first and last slice, with room to place it."""
    return (n_slices - 2) * slice_thickness_mm / 1.4


def ct_chest(
    rng: np.random.Generator,
    n_slices: int = 40,
    size: tuple[int, int] = (512, 512),
    slice_thickness_mm: float = 1.25,
    n_nodules: int = 1,
    nodule_diameter_mm: tuple[float, float] = (4.0, 25.0),
    table: bool = True,
) -> Phantom:
    """Axial chest CT slab (Hounsfield units) centred at the level of the carina.

    Pixel spacing is 0.7 mm at 512 × 512 and scales with ``size``. Nodules are solid
    spheres (``kind="nodule"``) lying wholly inside a lung and inside the slab; the
    largest diameter drawn is capped so that one fits. Regions: ``body``, ``lungs``.
    """
    h, w = _check_size(size, 32)
    _check_range("nodule_diameter_mm", nodule_diameter_mm)
    if n_slices < 1 or slice_thickness_mm <= 0:
        raise ValueError("n_slices must be >= 1 and slice_thickness_mm > 0")
    s = 0.7 * 512 / math.sqrt(h * w)
    t = float(slice_thickness_mm)
    k = rng.uniform(0.93, 1.07)
    y = _axis_mm(h, s)[:, None] / np.float32(k)
    x = _axis_mm(w, s)[None, :] / np.float32(k)
    z = -_axis_mm(n_slices, t) + np.float32(rng.uniform(-15, 15))  # slice 0 is cranial

    # In-plane anatomy that does not change across a thin slab.
    def ellipse(cx: float, cy: float, a: float, b: float) -> Array:
        result: Array = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
        return result

    body_rho = ellipse(0, -4, 166, 112)
    inner_rho = ellipse(0, -2, 150, 98)
    cavity_rho = ellipse(0, -4, 134, 86)
    hu2 = np.full((h, w), -1000, dtype=np.float32)
    hu2[body_rho < 1] = -100  # subcutaneous fat
    hu2[inner_rho < 1] = 45  # chest wall muscle
    cavity = cavity_rho < 1
    hu2[cavity] = 40
    hu2[cavity & (ellipse(2, -22, 46, 62) < 1)] = -85  # mediastinal fat
    hu2[ellipse(-14, -34, 15, 15) < 1] = 42  # ascending aorta
    hu2[ellipse(14, -52, 11, 11) < 1] = 38  # pulmonary trunk
    hu2[ellipse(-12, -8, 9, 9) < 1] = -950  # trachea / carina
    hu2[ellipse(22, 40, 13, 13) < 1] = 42  # descending aorta
    vertebra = ellipse(0, 56, 20, 18)
    hu2[vertebra < 1] = 260
    hu2[(vertebra < 1) & (vertebra > 0.72)] = 700
    canal = ellipse(0, 84, 9, 8)
    arch = (ellipse(0, 86, 20, 15) < 1) | ((np.abs(x) < 5) & (y > 84) & (y < 112))
    arch |= (ellipse(0, 80, 38, 7) < 1) & (np.abs(x) > 14)
    hu2[arch & (canal >= 1)] = 650
    hu2[canal < 1] = 20
    sternum = ellipse(0, -90, 14, 6) < 1
    hu2[sternum] = 380
    if table:
        curve = 118 + 0.0009 * x**2
        hu2[(y > curve) & (y < curve + 4) & (np.abs(x) < 230)] = 150
        hu2[(y >= curve + 4) & (y < curve + 22) & (np.abs(x) < 226)] = -850
        hu2[(y >= curve + 22) & (y < curve + 26) & (np.abs(x) < 230)] = 150
    hu = np.repeat(hu2[None], n_slices, axis=0)

    # Discs between vertebral bodies every ~28 mm.
    disc = (np.mod(z + rng.uniform(0, 28), 28) < 6)[:, None, None]
    hu[disc & (vertebra < 0.72)[None]] = 85

    # Ribs run obliquely (their back ~80 mm higher than their front), so each slice cuts
    # a few short oval segments in the chest wall.
    theta = np.arctan2(y + 4, x).astype(np.float32)
    ring = (cavity_rho >= 1.0) & (ellipse(0, -4, 143, 95) < 1) & (np.abs(x) > 24)
    drop = (80 * (1 - np.sin(theta)) / 2)[None]
    rib_phase = (z[:, None, None] + drop) / 27 + rng.uniform(0, 1)
    ribs = ring[None] & (np.mod(rib_phase, 1.0) < 0.33)
    hu[ribs] = 560

    # Lungs: two ellipses shrinking towards the apex, minus heart and mediastinum.
    apex = np.sqrt(np.clip(1 - np.clip(z - 40, 0, None) / 120, 0.05, 1))[:, None, None]
    heart_scale = np.sqrt(np.clip((10 - z) / 40, 0, 1))[:, None, None]
    heart_rho = ellipse(24, -22, 62, 50)
    lungs = np.zeros(hu.shape, dtype=bool)
    for side, a, b in ((-1, 62, 76), (1, 58, 74)):
        rho = ellipse(side * 70, 2, a, b)
        lungs |= (rho[None] < apex**2) & (np.abs(x) > 16 + 6 * (y > 20))[None]
    lungs &= (cavity_rho < 0.97)[None] & ~(heart_rho[None] < heart_scale**2)
    lungs &= ~((ellipse(4, -40, 30, 36) < 1) | (ellipse(22, 40, 15, 15) < 1))[None]
    lungs &= ~((vertebra < 1.6) | (ellipse(-12, -8, 11, 11) < 1))[None]
    pericardium = (heart_rho[None] < (heart_scale * 1.1) ** 2) & cavity[None] & ~lungs
    hu[pericardium] = -80
    hu[(heart_rho[None] < heart_scale**2) & cavity[None]] = 42

    # Lung parenchyma with vessels: tubes where two smooth fields both cross zero.
    rows = np.flatnonzero(lungs.any(axis=(0, 2)))
    cols = np.flatnonzero(lungs.any(axis=(0, 1)))
    if rows.size:
        box = np.s_[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        shape = hu[box].shape
        cell = (7 / t, 7 / s, 7 / s)
        f1 = _smooth_noise(rng, shape, cell)
        f2 = _smooth_noise(rng, shape, cell)
        hilum = np.exp(-(np.abs(np.abs(x) - 45) + np.abs(y + 5)) / 60)[box[1:]]
        width = np.float32(0.09) * (1 + 1.5 * hilum)[None]
        vessel = np.exp(-(f1 * f1 + f2 * f2) / (2 * width * width))
        parenchyma = np.float32(-865) + np.float32(18) * f1 + np.float32(900) * vessel
        inside = lungs[box]
        hu[box][inside] = parenchyma[inside]

    # Nodules: solid spheres of soft-tissue density with a partial-volume rim.
    spacing = (t, s, s)
    cap = min(nodule_diameter_mm[1], largest_nodule_mm(n_slices, t))
    drawn: list[tuple[Lesion, tuple[slice, ...], BoolArray]] = []
    occupied = np.zeros(hu.shape, dtype=bool)
    for _ in range(n_nodules):
        if cap < nodule_diameter_mm[0]:
            raise ValueError(f"a slab of {n_slices} x {t} mm is too thin for a nodule")
        diameter = rng.uniform(nodule_diameter_mm[0], cap)
        semi = tuple(diameter / 2 / d for d in spacing)
        center, window, rho = _place_ellipsoid(rng, lungs, occupied, semi, what="nodule")
        inside = rho <= 1
        weight = np.clip((1 - rho) * (diameter / 2) / min(spacing) + 0.5, 0, 1)
        nodule_hu = np.float32(rng.uniform(20, 45))
        hu[window] = hu[window] * (1 - weight) + nodule_hu * weight
        occupied[window] |= inside
        drawn.append((_lesion("nodule", "solid", center, diameter, window, inside), window, inside))

    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(14)
    hu[:, hu2 <= -1000] = -1000
    pixels = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    regions = {"body": np.repeat((body_rho < 1)[None], n_slices, axis=0), "lungs": lungs}
    return _phantom("ct_chest", pixels, (s, s), t, drawn, regions)


# --------------------------------------------------------------------------- CT head


def ct_head(
    rng: np.random.Generator,
    n_slices: int = 24,
    size: tuple[int, int] = (512, 512),
    slice_thickness_mm: float = 5.0,
    haemorrhage: bool = True,
    haemorrhage_kind: HaemorrhageKind | None = None,
) -> Phantom:
    """Axial head CT (Hounsfield units) from the skull base towards the vertex.

    Pixel spacing is 0.45 mm at 512 × 512 and scales with ``size``. With
    ``haemorrhage`` one hyperdense (60–80 HU) ``kind="haemorrhage"`` lesion is drawn:
    an ellipsoidal intraparenchymal haematoma or a subdural crescent against the inner
    table (``haemorrhage_kind``, random when ``None``). Regions: ``brain`` (intracranial
    space), ``skull``, ``ventricles``.
    """
    h, w = _check_size(size, 32)
    if n_slices < 1 or slice_thickness_mm <= 0:
        raise ValueError("n_slices must be >= 1 and slice_thickness_mm > 0")
    if haemorrhage_kind not in (None, "intraparenchymal", "subdural"):
        raise ValueError(f"unknown haemorrhage_kind {haemorrhage_kind!r}")
    s = 0.45 * 512 / math.sqrt(h * w)
    t = float(slice_thickness_mm)
    k = rng.uniform(0.92, 1.05)
    a, b, c = 70 * k, 88 * k, 76 * k  # inner table semi-axes: left-right, front-back, up-down
    y = _axis_mm(h, s)[:, None] + np.float32(4)
    x = _axis_mm(w, s)[None, :]
    z = -_axis_mm(n_slices, t) + np.float32(min(10.0, 0.45 * c) + rng.uniform(-4, 4))

    rho = np.sqrt(((x / a) ** 2 + (y / b) ** 2)[None] + ((z / c) ** 2)[:, None, None])
    brain = rho < 1
    skull = (rho >= 1) & (rho < 1.085)
    scalp = (rho >= 1.085) & (rho < 1.14)
    hu = np.full(rho.shape, -1000, dtype=np.float32)
    hu[scalp] = 25
    diploe = np.abs(rho - 1.0425) < 0.018
    hu[skull] = 1250
    hu[skull & diploe] = 650

    # Cortex (grey) with gyri over white matter; sulci of CSF at the surface.
    cell = (8 / t, 8 / s, 8 / s)
    folds = _smooth_noise(rng, rho.shape, cell)
    sulci = _smooth_noise(rng, rho.shape, cell)
    cortex = rho > 0.86 + 0.05 * folds
    tissue = np.where(cortex, np.float32(39), np.float32(27))
    tissue = np.where((rho > 0.9) & (np.abs(sulci) < 0.09), np.float32(8), tissue)
    tissue = np.where(rho > 0.985, np.float32(8), tissue)
    hu[brain] = tissue[brain]

    def blob(cx: float, cy: float, cz: float, ra: float, rb: float, rc: float) -> BoolArray:
        in_plane = ((x - cx) / ra) ** 2 + ((y - cy) / rb) ** 2
        result: BoolArray = in_plane[None] + (((z - cz) / rc) ** 2)[:, None, None] < 1
        return result

    for side in (-1, 1):  # basal ganglia and thalami
        hu[blob(side * 20, -6, -4, 10, 24, 12) & brain] = 37
    ventricles = blob(-9, -4, 14, 6, 30, 14) | blob(9, -4, 14, 6, 30, 14)
    ventricles |= blob(-11, 22, 8, 5, 10, 10) | blob(11, 22, 8, 5, 10, 10)
    ventricles |= blob(0, 2, -8, 2.2, 14, 12)  # third ventricle
    fissure = (np.abs(x) < 0.7) & (np.abs(y) > 35)
    ventricles &= brain
    hu[fissure[None] & (rho > 0.7) & brain] = 8
    hu[ventricles] = 5

    drawn: list[tuple[Lesion, tuple[slice, ...], BoolArray]] = []
    if haemorrhage:
        kind = haemorrhage_kind or ("intraparenchymal" if rng.uniform() < 0.5 else "subdural")
        blood = np.float32(rng.uniform(62, 78))
        spacing = (t, s, s)
        if kind == "intraparenchymal":
            radius = rng.uniform(6, 18)
            z_cap = (n_slices - 2) * t / 2 / 1.4
            if z_cap < 2:
                raise ValueError(f"a slab of {n_slices} x {t} mm is too thin for a haematoma")
            z_semi = min(radius * rng.uniform(0.75, 1), z_cap)
            semi_mm = (z_semi, radius, radius * rng.uniform(0.65, 1))
            semi = tuple(m / d for m, d in zip(semi_mm, spacing, strict=True))
            allowed = brain & (rho < 0.85) & ~ventricles
            center, window, r = _place_ellipsoid(
                rng, allowed, np.zeros_like(allowed), semi, rng.uniform(0, np.pi), "haematoma"
            )
            inside = r <= 1
            oedema = (r > 1) & (r < 1 + 3 / radius) & brain[window]
            hu[window][oedema] -= np.float32(9)
            noise = rng.normal(0, 3, inside.sum()).astype(np.float32)
            hu[window][inside] = blood + noise
            diameter = 2 * max(semi_mm)
            drawn.append(
                (_lesion("haemorrhage", kind, center, diameter, window, inside), window, inside)
            )
        else:
            side = 1 if rng.uniform() < 0.5 else -1
            thick = rng.uniform(5, 14)
            zc = float(z[n_slices // 2])
            phi = np.arctan2(y, side * x)  # 0 at the lateral convexity
            arc = np.clip(1 - (phi / rng.uniform(0.6, 1.0)) ** 2, 0, None)
            span = np.clip(1 - ((z - zc) / rng.uniform(30, 45)) ** 2, 0, None)
            depth = thick * arc[None] * span[:, None, None]
            crescent = brain & ((1 - rho) * a < depth) & (side * x > 0)[None]
            if not crescent.any():
                raise ValueError("the slab does not reach the convexity for a subdural")
            hu[crescent] = blood + rng.normal(0, 3, int(crescent.sum())).astype(np.float32)
            window = tuple(slice(None) for _ in range(3))
            idx = np.nonzero(crescent)
            extent = max(
                (int(i.max()) - int(i.min()) + 1) * d for i, d in zip(idx, spacing, strict=True)
            )
            center = tuple(float(i.mean()) for i in idx)
            drawn.append(
                (_lesion("haemorrhage", kind, center, extent, window, crescent), window, crescent)
            )

    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(3.5)
    hu[rho >= 1.14] = -1000
    pixels = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    regions = {"brain": brain, "skull": skull, "ventricles": ventricles}
    return _phantom("ct_head", pixels, (s, s), t, drawn, regions)


# --------------------------------------------------------------------------- mammography


def mammogram(
    rng: np.random.Generator,
    size: tuple[int, int] = (2048, 1664),
    laterality: Literal["L", "R"] = "L",
    view: Literal["CC", "MLO"] = "CC",
    n_masses: int = 1,
    mass_diameter_mm: tuple[float, float] = (8.0, 30.0),
    calcifications: bool = False,
    bits_stored: int = 12,
) -> Phantom:
    """Processed ("for presentation") mammogram, MONOCHROME2, dense tissue bright.

    The chest wall lies along the left image edge for ``"L"`` and the right edge for
    ``"R"``, the nipple pointing away from it; MLO views show the pectoral muscle in the
    upper corner at the chest wall. Pixel spacing is 0.1 mm at 2048 × 1664 and scales
    with ``size``. Masses are ``kind="mass"``, subtype ``"round"`` or ``"spiculated"``
    (the mask is the mass body; spicules reach beyond it). ``calcifications`` adds a
    ``kind="calcification"`` cluster whose mask is the specks themselves.
    Regions: ``breast``, ``pectoral``.
    """
    h, w = _check_size(size, 64)
    _check_range("mass_diameter_mm", mass_diameter_mm)
    if laterality not in ("L", "R") or view not in ("CC", "MLO"):
        raise ValueError(f"laterality must be L or R and view CC or MLO; got {laterality}, {view}")
    if bits_stored not in (12, 14):
        raise ValueError(f"bits_stored must be 12 or 14; got {bits_stored}")
    s = 0.1 * math.sqrt(2048 * 1664) / math.sqrt(h * w)
    rows = np.arange(h, dtype=np.float32)[:, None]
    y = (rows - np.float32(h / 2)) * np.float32(s)  # mm from the image's middle row
    cols = np.arange(w, dtype=np.float32)[None, :]
    x = (cols if laterality == "L" else np.float32(w - 1) - cols) * np.float32(s)  # from chest wall
    depth = rng.uniform(0.55, 0.78) * w * s  # chest wall to nipple
    half_height = rng.uniform(0.36, 0.44) * h * s
    y0 = rng.uniform(-0.03, 0.03) * h * s
    zeros = np.zeros((h, w), dtype=np.float32)
    if view == "MLO":
        # Lower contour an ellipse; upper contour straight from the axilla to the nipple.
        y0 += 0.1 * h * s
        top_w = rng.uniform(0.36, 0.5) * w * s
        top = -h * s / 2
        pect_w, pect_h = rng.uniform(0.5, 0.8) * top_w, rng.uniform(0.45, 0.62) * h * s
        pectoral = x / pect_w + (y - top) / pect_h < 1
        nx, ny = y0 - top, -(depth - top_w)  # normal of the axilla-nipple line
        norm = math.hypot(nx, ny)
        axilla = np.minimum(-((x - top_w) * nx + (y - top) * ny) / norm, y0 - y)
    else:
        pectoral = zeros > 0
        axilla = zeros - 1e3
    rho = np.sqrt((x / depth) ** 2 + ((y - y0) / half_height) ** 2)
    inside_mm = np.maximum((1 - rho) * min(depth, half_height), axilla)
    breast = inside_mm > 0
    compressed = np.sqrt(np.clip(inside_mm / 14, 0, 1))  # thins towards the skin line

    # Fibroglandular tissue: multi-scale blobs plus fibres radiating from the nipple.
    dx, dy = x - depth, y - y0
    r_nip = np.sqrt(dx * dx + dy * dy)
    angle = np.arctan2(dy, -dx)
    fibres = _sample_grid(rng.standard_normal((256, 48), dtype=np.float32), angle * 90, r_nip / 9)
    texture = (
        _smooth_noise(rng, (h, w), (12 / s, 12 / s))
        + 0.6 * _smooth_noise(rng, (h, w), (4 / s, 4 / s))
        + 0.5 * fibres
    )
    envelope = np.exp(-(((x - 0.42 * depth) / (0.4 * depth)) ** 2) - ((y - y0) / half_height) ** 2)
    density = rng.uniform(-0.6, 0.6)  # breast density: fatty .. dense
    gland = np.clip((texture + 1.8 * envelope - 1.4 + density) / 1.8, 0, 1)
    gland = gland * gland * (3 - 2 * gland) * compressed
    signal = np.float32(1250) * compressed + np.float32(1050) * gland
    signal += (np.float32(1000) - np.float32(900) * gland) * pectoral * _soft(inside_mm, 4)
    signal *= breast

    drawn: list[tuple[Lesion, tuple[slice, ...], BoolArray]] = []
    allowed = (inside_mm > 8) & ~pectoral & (x > 12)
    occupied = np.zeros((h, w), dtype=bool)
    for _ in range(n_masses):
        diameter = rng.uniform(*mass_diameter_mm)
        radius = diameter / 2 / s
        semi = (radius, radius * rng.uniform(0.75, 1.0))
        theta = rng.uniform(0, np.pi)
        center, window, r = _place_ellipsoid(rng, allowed, occupied, semi, theta, "mass")
        inside = r <= 1
        amplitude = np.float32(rng.uniform(850, 1100))
        signal[window] += amplitude * np.sqrt(np.clip(1 - r**4, 0, 1))
        spiculated = rng.uniform() < 0.5
        if spiculated:
            _draw_spicules(rng, signal, center, radius, float(amplitude) * 0.45, s)
        subtype = "spiculated" if spiculated else "round"
        occupied[window] |= inside
        drawn.append((_lesion("mass", subtype, center, diameter, window, inside), window, inside))
    if calcifications:
        drawn.append(_draw_calcifications(rng, signal, allowed & ~occupied, s))

    signal += rng.normal(0, 18, (h, w)).astype(np.float32) * (0.3 + 0.7 * breast)
    full = 2**bits_stored - 1
    pixels = np.clip(np.rint(signal * np.float32(full / 4095) + 20), 0, full).astype(np.uint16)
    regions = {"breast": breast, "pectoral": pectoral & breast}
    extra = {"laterality": laterality, "view": view, "bits_stored": bits_stored}
    return _phantom("mammogram", pixels, (s, s), None, drawn, regions, **extra)


def _draw_spicules(
    rng: np.random.Generator,
    signal: Array,
    center: Sequence[float],
    radius: float,
    amplitude: float,
    s: float,
) -> None:
    """Thin tapering lines radiating from a mass, drawn in place into ``signal``."""
    for _ in range(int(rng.integers(8, 17))):
        phi = rng.uniform(0, 2 * np.pi)
        length = radius * rng.uniform(1.5, 2.6)
        end = (center[0] + length * math.sin(phi), center[1] + length * math.cos(phi))
        lo = [max(0, math.floor(min(c, e)) - 2) for c, e in zip(center, end, strict=True)]
        hi = [
            min(n, math.ceil(max(c, e)) + 3)
            for c, e, n in zip(center, end, signal.shape, strict=True)
        ]
        if hi[0] <= lo[0] or hi[1] <= lo[1]:
            continue
        rr, cc = np.ogrid[lo[0] : hi[0], lo[1] : hi[1]]
        ur, uc = math.sin(phi), math.cos(phi)
        along = (rr - center[0]) * ur + (cc - center[1]) * uc
        across = np.abs(-(rr - center[0]) * uc + (cc - center[1]) * ur)
        frac = np.clip(along / length, 0, 1)
        half_width = np.maximum(0.5, (0.5 / s) * (1 - frac))
        line = _soft(half_width - across, 1.0) * (along > 0) * (along < length) * (1 - frac)
        signal[lo[0] : hi[0], lo[1] : hi[1]] += np.float32(amplitude) * line


def _draw_calcifications(
    rng: np.random.Generator, signal: Array, allowed: BoolArray, s: float
) -> tuple[Lesion, tuple[slice, ...], BoolArray]:
    """A cluster of 5–15 bright specks (0.2–0.6 mm) within a few millimetres."""
    spread = rng.uniform(3, 6) / s
    center, window, _ = _place_ellipsoid(
        rng, allowed, np.zeros_like(allowed), (spread, spread), what="calcification cluster"
    )
    rr, cc = np.ogrid[window]
    local = np.zeros((rr.shape[0], cc.shape[1]), dtype=bool)
    points = []
    for _ in range(int(rng.integers(5, 16))):
        r = spread * math.sqrt(rng.uniform()) * 0.85
        phi = rng.uniform(0, 2 * np.pi)
        pr, pc = center[0] + r * math.sin(phi), center[1] + r * math.cos(phi)
        size_px = max(rng.uniform(0.1, 0.3) / s, 0.75)
        speck = (rr - pr) ** 2 + (cc - pc) ** 2 <= size_px**2
        local |= speck
        points.append((pr, pc, size_px))
    signal[window] += np.float32(1500) * local
    extent = max(math.dist(p[:2], q[:2]) + p[2] + q[2] for p in points for q in points) * s
    return _lesion("calcification", "cluster", center, extent, window, local), window, local
