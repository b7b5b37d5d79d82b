"""Decode ▸ preprocess of one job, as one unit of work for the process pool.

What comes back is what the rest of the pipeline needs and no more: the model's inputs
stacked (N × C × …), each input's geometry, and the SOP Instance UIDs that findings point
at — not the decoded pixels. A 2048² radiograph is 16 MB of float32 and its 224² input
0.6 MB, so handing back the input instead of the pixels is most of the pickling saved.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.inference.decode import Decoded, Stored, decode_datasets, read_dataset
from gateway.inference.pixel_checks import PixelBudget, check_job
from models.manifest import InputSpec
from models.postprocess import InputMeta
from models.preprocess import prepare_2d, prepare_3d


@dataclass(frozen=True)
class PreparedJob:
    """One job's model inputs and what maps findings back to its instances."""

    inputs: np.ndarray  # float32, N × C × … (N images, or one volume)
    metas: list[InputMeta]
    image_uids: tuple[str, ...] = ()  # 2D: the instance of each input
    volume_uids: tuple[str, ...] = ()  # 3D: one per slice, in volume order
    stage_ms: dict[str, float] = field(default_factory=dict)  # decode, preprocess


def prepare_blobs(
    blobs: Sequence[Stored], spec: InputSpec, budget: PixelBudget | None = None
) -> PreparedJob:
    """The stored instances of one job, checked against the pixel budget, decoded and
    preprocessed (in a pool child, or in the worker's process when the pool is off). The
    checks come first wherever this runs: before a decoder allocates what a header claims."""
    began = time.perf_counter()
    datasets = [read_dataset(blob, in_place=True) for blob in blobs]
    check_job(datasets, budget or PixelBudget())
    decoded = decode_datasets(datasets, spec.dims)
    decoded_at = time.perf_counter()
    prepared = preprocess(decoded, spec)
    ms = {
        "decode": round((decoded_at - began) * 1000, 2),
        "preprocess": round((time.perf_counter() - decoded_at) * 1000, 2),
    }
    return dataclasses.replace(prepared, stage_ms=ms)


def preprocess(decoded: Decoded, spec: InputSpec) -> PreparedJob:
    images, volume = decoded
    if volume is not None:
        item = prepare_3d(volume.voxels, spec)
        return PreparedJob(
            item.tensor[None],
            [InputMeta(item.geometry, volume.spacing_mm)],
            volume_uids=volume.sop_instance_uids,
        )
    tensors, metas = [], []
    for image in images:
        item = prepare_2d(image.stored, image.photometric, spec, image.intercept)
        tensors.append(item.tensor)
        metas.append(InputMeta(item.geometry, image.spacing_mm))
    return PreparedJob(
        np.stack(tensors).astype(np.float32, copy=False),
        metas,
        image_uids=tuple(image.sop_instance_uid for image in images),
    )
