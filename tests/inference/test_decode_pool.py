"""Decoding in child processes under ``RLIMIT_AS``: a decode over the limit and a child that
dies each fail with a reason, and the pool decodes the next instance."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from gateway.errors import StorageError
from gateway.index.object_store import create_store
from gateway.inference.decode import DecodeError
from gateway.inference.decode_pool import DecodePool
from gateway.inference.pixel_checks import PixelBudget
from gateway.inference.prepare import prepare_blobs
from gateway.settings import load_settings
from models.manifest import InputSpec
from tests.inference.hostile import radiograph


def _blob(seed: int, size: int = 64) -> bytes:
    dataset = radiograph(seed).datasets[0]
    if size != 64:  # zeros: the size is the point, not the phantom
        dataset.Rows = dataset.Columns = size
        dataset.PixelData = bytes(size * size * 2)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def pool() -> Iterator[DecodePool]:
    decoding = DecodePool(memory_limit_mb=200, processes=1)  # beyond the child's imports
    yield decoding
    decoding.close()


def test_a_decode_over_the_limit_fails_and_the_next_one_decodes(pool: DecodePool) -> None:
    with pytest.raises(DecodeError, match="MemoryError"):
        pool.decode([_blob(1, size=6300)], 2)
    images, volume = pool.decode([_blob(2)], 2)
    assert images[0].pixels.shape == (64, 64) and volume is None


def test_a_child_that_dies_fails_the_decode_and_the_pool_is_replaced(pool: DecodePool) -> None:
    pool.decode([_blob(3)], 2)  # the child is running now
    executor = pool._children._current()
    for pid in list(executor._processes):  # CPython's own record of its children
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(DecodeError, match="the decoding process died"):
        pool.decode([_blob(4)], 2)
    images, _volume = pool.decode([_blob(5)], 2)
    assert images[0].pixels.shape == (64, 64)


def test_a_pool_given_the_settings_loads_each_job_in_its_child(tmp_path: Path) -> None:
    """The children read the job's objects from their own store (no bytes cross a pipe),
    with settings read from a YAML file (load_settings' own subclass, which does not pickle)."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\nmin_free_bytes: 0\n")
    settings = load_settings(config)
    store = create_store(settings)
    store.put("studies/1/2/3.dcm", _blob(6))
    pool = DecodePool(memory_limit_mb=600, processes=1, settings=settings)
    try:
        spec = InputSpec.model_validate({"name": "image", "dims": 2, "size": [32, 32]})
        prepared = pool.load_and_prepare(["studies/1/2/3.dcm"], spec, PixelBudget())
        assert prepared.inputs.shape == (1, 1, 32, 32)
        assert set(prepared.stage_ms) == {"load", "decode", "preprocess"}
        # A radiograph past DEFER_BYTES: its Pixel Data read in place from the mapped file.
        large = _blob(7, size=300)
        store.put("studies/1/2/4.dcm", large)
        mapped = pool.load_and_prepare(["studies/1/2/4.dcm"], spec, PixelBudget())
        assert np.array_equal(mapped.inputs, prepare_blobs([large], spec).inputs)
        with pytest.raises(StorageError):
            pool.load_and_prepare(["studies/1/2/missing.dcm"], spec, PixelBudget())
    finally:
        pool.close()
