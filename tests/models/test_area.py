"""models.area.area_shrink gives what torch's area interpolation gives on the float32
image, bit for bit, and declines what it cannot give exactly."""

from __future__ import annotations

import numpy as np
import pytest

from models.area import area_shrink
from models.preprocess import _torch


def _torch_area(stored: np.ndarray, intercept: float, size: tuple[int, int]) -> np.ndarray:
    th = _torch()
    image = stored.astype(np.float32) + np.float32(intercept)
    result: np.ndarray = th.nn.functional.interpolate(
        th.from_numpy(image)[None, None], size=size, mode="area"
    )[0, 0].numpy()
    return result


@pytest.mark.parametrize("seed", range(40))
def test_random_shapes_and_intercepts_match_torch(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dtype = ("uint8", "uint16", "int16")[seed % 3]
    rows, cols = (int(n) for n in rng.integers(8, 600, 2))
    size = (int(rng.integers(1, rows + 1)), int(rng.integers(1, cols + 1)))
    info = np.iinfo(dtype)
    high = min(info.max, 4095) if dtype != "uint8" else info.max
    low = max(info.min, -2048)
    stored = rng.integers(low, high, (rows, cols), endpoint=True).astype(dtype)
    intercept = float(rng.choice([0, -1024, 1000, -3]))
    result = area_shrink(stored, intercept, size)
    assert result is not None and result.dtype == np.float32
    assert np.array_equal(result, _torch_area(stored, intercept, size))


@pytest.mark.parametrize(
    ("shape", "size"),
    [((2500, 2048), (256, 210)), ((2048, 1664), (256, 208)), ((3062, 2394), (256, 200))],
)
def test_detector_sizes_match_torch(shape: tuple[int, int], size: tuple[int, int]) -> None:
    stored = np.random.default_rng(7).integers(0, 65535, shape, endpoint=True).astype(np.uint16)
    result = area_shrink(stored, 0.0, size)
    assert result is not None
    assert np.array_equal(result, _torch_area(stored, 0.0, size))


def test_large_windows_fall_back_to_the_image_range() -> None:
    # 4096 rows into 64: windows of 64 × 64 = 4096 pixels; 16-bit words could sum past
    # 2**24, 12-bit values cannot: exact from the image's own range.
    stored = np.random.default_rng(1).integers(0, 4095, (4096, 4096)).astype(np.uint16)
    result = area_shrink(stored, 0.0, (64, 64))
    assert result is not None
    assert np.array_equal(result, _torch_area(stored, 0.0, (64, 64)))
    stored[0, 0] = 65535
    assert area_shrink(stored, 0.0, (64, 64)) is None


@pytest.mark.parametrize(
    ("stored", "intercept", "size"),
    [
        (np.zeros((10, 10), np.float32), 0.0, (5, 5)),  # not integers
        (np.zeros((10, 10), np.int32), 0.0, (5, 5)),  # wider than 16 bits
        (np.zeros((10, 10), np.uint16), 0.5, (5, 5)),  # not a whole intercept
        (np.zeros((10, 10), np.uint16), 0.0, (20, 5)),  # enlarging
    ],
)
def test_declines_what_it_cannot_give_exactly(
    stored: np.ndarray, intercept: float, size: tuple[int, int]
) -> None:
    assert area_shrink(stored, intercept, size) is None
