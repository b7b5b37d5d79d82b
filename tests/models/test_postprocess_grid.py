"""A model-grid mask brought back to the source grid: every source voxel takes the model cell
its centre falls in (nearest), clipped at the edges, in 2D and 3D, letterboxed or not."""

from __future__ import annotations

import numpy as np
import pytest

from models.postprocess import to_source_grid
from models.preprocess import Geometry


def _by_voxel(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The definition, voxel by voxel: the model cell under each source voxel's centre."""
    out = np.zeros(geometry.source_shape, dtype=bool)
    for index in np.ndindex(*geometry.source_shape):
        centre = geometry.to_model(tuple(i + 0.5 for i in index))
        cell = tuple(
            min(max(int(np.floor(c)), 0), size - 1)
            for c, size in zip(centre, mask.shape, strict=True)
        )
        out[index] = mask[cell]
    return out


@pytest.mark.parametrize(
    ("model_shape", "geometry"),
    [
        ((8, 16, 16), Geometry((5, 40, 36), (8 / 5, 0.4, 0.4), (0.0, 0.0, 0.8))),
        ((16, 16), Geometry((50, 30), (0.32, 0.32), (0.0, 3.2))),  # letterboxed columns
        ((12, 12), Geometry((7, 9), (12 / 7, 12 / 9), (0.0, 0.0))),  # upsampled
    ],
)
def test_source_grid_is_the_nearest_model_cell(
    model_shape: tuple[int, ...], geometry: Geometry
) -> None:
    mask = np.random.default_rng(7).random(model_shape) > 0.6
    got = to_source_grid(mask, geometry)
    assert got.dtype == bool
    assert got.shape == geometry.source_shape
    np.testing.assert_array_equal(got, _by_voxel(mask, geometry))
