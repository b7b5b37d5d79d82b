"""Pre-processing from decoded pixels to the tensor a device's ONNX graph takes.

The same functions build the training inputs of the reference models and the inputs of the
worker pipeline, so a model sees at inference exactly what it saw in training. Each returns
the tensor and a :class:`Geometry` that maps model coordinates back to source pixels, so a
finding points at the right place in the original image.

Resizing comes before windowing: percentiles on a 256² image cost nothing, on a 2500×2000
radiograph ~0.7 s. 2D intensity steps run in numpy (see :func:`prepare_2d`); 3D ones in MONAI.

MONAI (and with it torch) is imported on first use, not at import time: it takes ~5–10 s,
and ``aigw serve`` must accept associations without waiting for the inference stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from models.area import area_shrink
from models.manifest import InputSpec

if TYPE_CHECKING:
    import torch

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5


@cache
def _torch() -> ModuleType:
    import torch

    return torch


# The modules :func:`_monai` imports (a decode pool's fork server imports them once for all
# its children).
MONAI_MODULES = ("monai.transforms.intensity.array", "monai.transforms.spatial.array")


@cache
def _monai() -> dict[str, Any]:
    from monai.transforms.intensity.array import (
        ScaleIntensityRange,
        ScaleIntensityRangePercentiles,
    )
    from monai.transforms.spatial.array import Resize

    return {
        "Resize": Resize,
        "ScaleIntensityRange": ScaleIntensityRange,
        "ScaleIntensityRangePercentiles": ScaleIntensityRangePercentiles,
    }


@dataclass(frozen=True)
class Geometry:
    """Model index space → source index space: ``source = (model - offset) / scale``."""

    source_shape: tuple[int, ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]

    def to_source(self, point: tuple[float, ...]) -> tuple[float, ...]:
        return tuple((p - o) / s for p, o, s in zip(point, self.offset, self.scale, strict=True))

    def to_model(self, point: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(p * s + o for p, o, s in zip(point, self.offset, self.scale, strict=True))


@dataclass(frozen=True)
class Prepared:
    tensor: np.ndarray  # float32, [C, *spatial]
    geometry: Geometry


def prepare_2d(
    pixels: np.ndarray, photometric: str, spec: InputSpec, intercept: float = 0.0
) -> Prepared:
    """A projection image (rows × columns; ``pixels + intercept`` is the image with the
    modality LUT applied) → [C, H, W] in [0, 1].

    The area resize is torch's (what MONAI's ``Resize(mode="area")`` runs), or where the
    image is stored integers :func:`models.area.area_shrink`, which gives the same float32
    values without a float32 copy of the image; the rest is
    numpy on the small image: MONAI's intensity transforms would turn it into a torch tensor,
    and on a 256² image ``torch.quantile`` and torch's small-op thread hand-offs cost ~60 ms
    (np.percentile: ~2 ms) — more than a small device's inference. Same values: the
    percentiles are the same linear interpolation, inversion is affine and so commutes
    with the area mean.
    """
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = rescaled(pixels, intercept)[..., :3].mean(axis=-1)  # colour: luminance
        intercept = 0.0
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {pixels.shape}")
    height, width = spec.size
    rows, cols = pixels.shape
    if spec.keep_aspect:
        scale = min(height / rows, width / cols)
        new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    else:
        new_rows, new_cols = height, width
    resized = None
    if (new_rows, new_cols) != (rows, cols):
        resized = area_shrink(pixels, intercept, (new_rows, new_cols))
    if resized is not None:
        if photometric == "MONOCHROME1":  # bright means air: invert so that bone is bright
            resized = _extremes(pixels, intercept) - resized
    else:
        source = np.ascontiguousarray(rescaled(pixels, intercept), dtype=np.float32)
        resized = _resize_float32(source, (new_rows, new_cols))
        if photometric == "MONOCHROME1":
            resized = (source.max() + source.min()) - resized
    windowed = _window_2d(resized, spec)
    canvas = np.zeros((height, width), dtype=np.float32)
    top, left = (height - new_rows) // 2, (width - new_cols) // 2
    canvas[top : top + new_rows, left : left + new_cols] = windowed
    if spec.normalisation == "zscore":
        std = float(canvas.std(ddof=1))  # torch's Tensor.std is the unbiased one
        canvas = (canvas - canvas.mean()) / np.float32(std if std > 1e-6 else 1.0)
    tensor = np.repeat(canvas[None].astype(np.float32, copy=False), spec.channels, axis=0)
    geometry = Geometry(
        source_shape=(rows, cols),
        scale=(new_rows / rows, new_cols / cols),
        offset=(float(top), float(left)),
    )
    return Prepared(tensor, geometry)


def rescaled(values: np.ndarray, intercept: float = 0.0) -> np.ndarray:
    """``values + intercept`` in float32 (the values themselves where nothing changes)."""
    if values.dtype == np.float32 and not intercept:
        return values
    result = values.astype(np.float32)
    if intercept:
        result += np.float32(intercept)
    return result


def _extremes(stored: np.ndarray, intercept: float) -> np.float32:
    """max + min of the image in float32, as from its float32 copy (integers: exact)."""
    high = np.float32(stored.max()) + np.float32(intercept)
    low = np.float32(stored.min()) + np.float32(intercept)
    return np.float32(high + low)


def _resize_float32(source: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == source.shape:
        return source.copy()
    th = _torch()
    resized: np.ndarray = th.nn.functional.interpolate(
        th.from_numpy(source)[None, None], size=size, mode="area"
    )[0, 0].numpy()
    return resized


def _window_2d(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """MONAI's ScaleIntensityRange(Percentiles)(…, 0, 1, clip=True), in numpy."""
    if spec.window is not None:
        low = spec.window.center - spec.window.width / 2
        high = spec.window.center + spec.window.width / 2
    else:
        low, high = (float(v) for v in np.percentile(image, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    shifted: np.ndarray = image - np.float32(low)
    if high - low == 0.0:  # as MONAI: shifted, not scaled or clipped
        return shifted
    return np.clip(shifted / np.float32(high - low), 0.0, 1.0)


def prepare_3d(volume: np.ndarray, spec: InputSpec) -> Prepared:
    """A volume (slices × rows × columns, in HU for CT, sorted along the patient axis) →
    [C, D, H, W] in [0, 1], resized to exactly ``spec.size``."""
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    th = _torch()
    image = th.as_tensor(np.ascontiguousarray(volume, dtype=np.float32))[None]
    resized = _monai()["Resize"](tuple(spec.size), mode="trilinear")(image)
    tensor = _normalise(_window(th.as_tensor(resized), spec), spec)
    tensor = tensor.repeat(spec.channels, 1, 1, 1)
    geometry = Geometry(
        source_shape=tuple(volume.shape),
        scale=tuple(m / s for m, s in zip(spec.size, volume.shape, strict=True)),
        offset=(0.0, 0.0, 0.0),
    )
    return Prepared(tensor.numpy(), geometry)


def _window(image: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    transforms = _monai()
    if spec.window is not None:
        low = spec.window.center - spec.window.width / 2
        high = spec.window.center + spec.window.width / 2
        result = transforms["ScaleIntensityRange"](low, high, 0.0, 1.0, clip=True)(image)
    else:
        result = transforms["ScaleIntensityRangePercentiles"](
            LOW_PERCENTILE, HIGH_PERCENTILE, 0.0, 1.0, clip=True
        )(image)
    th = _torch()
    windowed: torch.Tensor = th.as_tensor(result, dtype=th.float32)
    return windowed


def _normalise(image: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    if spec.normalisation == "zscore":
        std = float(image.std())
        return (image - image.mean()) / (std if std > 1e-6 else 1.0)
    return image
