"""A model-grid mask brought back to the source grid: every source voxel takes the model cell
its centre falls in (nearest), clipped at the edges, in 2D and 3D, letterboxed or not, from
the whole grid or from a crop placed where it lies; a segmentation's figures, worked out in
its lesion's box, are the whole grid's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from models.manifest import Label, OutputKind, OutputSpec
from models.postprocess import InputMeta, _segmentation, _source_box, to_source_grid
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


def test_a_crop_placed_at_its_origin_is_the_whole_grid() -> None:
    """What the segmentation hands over: the lesion's box of the model grid, and where it
    lies in it."""
    geometry = Geometry((20, 70, 60), (12 / 20, 0.25, 0.3), (0.0, 0.0, 1.0))
    mask = np.zeros((12, 18, 20), dtype=bool)
    mask[3:6, 14:18, 0:4] = np.random.default_rng(3).random((3, 4, 4)) > 0.3
    mask[4, 17, 0] = True  # the lesion touches the grid's edges: clipped voxels included
    crop = mask[2:7, 12:18, 0:6]
    got = to_source_grid(crop, geometry, origin=(2, 12, 0), grid=mask.shape)
    np.testing.assert_array_equal(got, _by_voxel(mask, geometry))
    np.testing.assert_array_equal(to_source_grid(mask, geometry), got)


def test_an_empty_mask_is_an_empty_source_grid() -> None:
    geometry = Geometry((5, 40, 36), (8 / 5, 0.4, 0.4), (0.0, 0.0, 0.8))
    got = to_source_grid(np.zeros((8, 16, 16), dtype=bool), geometry)
    assert got.shape == (5, 40, 36) and got.dtype == bool and not got.any()


def _whole_grid(probabilities: np.ndarray, threshold: float) -> tuple[Any, ...]:
    """The segmentation's figures as defined: largest component, scipy's centre of mass and
    bounding box, over the whole model grid."""
    mask = probabilities >= max(threshold, 0.5 * float(probabilities.max()))
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum_labels(mask, labels, index=range(1, count + 1))
    component = labels == int(np.argmax(sizes)) + 1
    centre = tuple(float(c) for c in ndimage.center_of_mass(component))
    indices = np.nonzero(component)
    box = tuple((float(axis.min()), float(axis.max()) + 1.0) for axis in indices)
    return int(component.sum()), centre, box, component


@pytest.mark.parametrize("seed", range(6))
def test_segmentation_within_the_lesion_box_is_the_whole_grid_figures(seed: int) -> None:
    """Several blobs (the largest wins; equal ones: the first in raster order), one at the
    grid's corner: the finding's centre, box, volume and mask are the whole grid's, to the
    last bit."""
    rng = np.random.default_rng(seed)
    probabilities = (rng.random((16, 32, 32)) * 0.3).astype(np.float32)
    for _ in range(3):
        at = tuple(int(rng.integers(0, n - 3)) for n in probabilities.shape)
        size = tuple(int(rng.integers(1, 4)) for _ in at)
        blob = tuple(slice(a, a + s) for a, s in zip(at, size, strict=True))
        probabilities[blob] = 0.6 + 0.4 * rng.random(size)
    probabilities[-2:, -1, -1] = 0.95
    geometry = Geometry((24, 128, 128), (16 / 24, 0.25, 0.25), (0.0, 0.0, 0.0))
    label = Label(code="1386000", ru="к", en="h", threshold=0.5)
    spec = OutputSpec(name="p", kind=OutputKind.SEGMENTATION, labels=[label])
    meta = InputMeta(geometry, (5.0, 0.5, 0.5))
    (finding,) = _segmentation(spec, probabilities[None, None], [meta])

    voxels, centre, box, component = _whole_grid(probabilities, label.threshold)
    assert finding.centre == geometry.to_source(centre)
    assert finding.box == _source_box(box, geometry)
    voxel_mm3 = float(np.prod(meta.spacing_mm or ())) / float(np.prod(geometry.scale))
    assert finding.measurements["volume_mm3"] == round(voxels * voxel_mm3, 1)
    assert finding.mask is not None
    np.testing.assert_array_equal(finding.mask, to_source_grid(component, geometry))
