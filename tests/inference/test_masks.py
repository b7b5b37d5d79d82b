"""Stored segmentation masks: what is read back is the mask that was written, voxel for
voxel, whatever its shape; only the span of packed bytes that holds voxels is stored; a
mask written whole (before spans) still reads; a damaged one is a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest

from gateway.inference.masks import MaskError, decode_mask, encode_mask


def _stored(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


@pytest.mark.parametrize(
    "shape", [(1,), (13,), (7, 9), (1, 1, 1), (3, 5, 7), (5, 17, 3), (32, 64, 64)]
)
@pytest.mark.parametrize("density", [0.0, 0.0005, 0.1, 1.0])
def test_what_is_read_back_is_what_was_written(shape: tuple[int, ...], density: float) -> None:
    mask = np.random.default_rng(len(shape) * 100 + int(1000 * density)).random(shape) < density
    assert np.array_equal(decode_mask(encode_mask(mask)), mask)


@pytest.mark.parametrize("index", [0, -1, 37, 8 * 41 - 1])
def test_a_single_voxel_anywhere(index: int) -> None:
    mask = np.zeros((6, 7, 11), dtype=bool)
    mask.reshape(-1)[index] = True
    got = decode_mask(encode_mask(mask))
    assert got.dtype == bool and got.shape == mask.shape
    assert np.array_equal(got, mask)


def test_only_the_slices_with_voxels_are_stored() -> None:
    mask = np.zeros((96, 512, 512), dtype=bool)
    mask[40:43, 200:210, 300:310] = True
    stored = _stored(encode_mask(mask))
    slice_bytes = 512 * 512 // 8
    assert int(stored["start"]) == 40 * slice_bytes
    assert stored["bits"].size == 3 * slice_bytes
    assert np.array_equal(decode_mask(encode_mask(mask)), mask)


def test_a_mask_stored_whole_still_reads() -> None:
    """The format before spans: every packed byte, no ``start``."""
    mask = np.random.default_rng(5).random((4, 6, 5)) < 0.2
    buffer = io.BytesIO()
    np.savez_compressed(buffer, shape=np.asarray(mask.shape), bits=np.packbits(mask))
    assert np.array_equal(decode_mask(buffer.getvalue()), mask)


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "unreadable"),
        (_npz(shape=np.asarray([4, 4])), "unreadable"),
        (_npz(shape=np.asarray([4, 4]), bits=np.zeros(1, np.uint8)), "too short"),
        (
            _npz(shape=np.asarray([4, 4]), start=np.asarray(1), bits=np.zeros(2, np.uint8)),
            "overrun",
        ),
        (
            _npz(shape=np.asarray([4, 4]), start=np.asarray(-1), bits=np.zeros(1, np.uint8)),
            "overrun",
        ),
    ],
)
def test_a_damaged_mask_is_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(MaskError, match=message):
        decode_mask(data)
