"""Training and evaluation samples: phantoms → the exact model inputs the worker pipeline
builds (:func:`models.preprocess.prepare_2d` / :func:`~models.preprocess.prepare_3d`) →
targets in model space from the phantoms' exact ground truth.

Every phantom comes from ``numpy.random.default_rng((salt(device), split, index))``; even
indices carry a lesion, odd ones none. Splits: ``train`` (0), ``val`` (1, thresholds),
``test`` (2, reported metrics), ``check`` (3, the test suite). The same seed always gives
the same sample, whichever process draws it.
"""

from __future__ import annotations

import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms.spatial.array import Resize

from models import phantoms
from models.preprocess import Geometry, prepare_2d, prepare_3d
from models.zoo.devices import DEVICES, Device

__all__ = ["SPLITS", "Sample", "Truth", "generate", "make_sample", "phantom_for", "prepare"]

SPLITS = {"train": 0, "val": 1, "test": 2, "check": 3}
TARGET_KINDS = frozenset({"nodule", "haemorrhage", "mass"})  # not calcification clusters

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Truth:
    """One target lesion, in source index space and in model index space."""

    kind: str
    centre_source: tuple[float, ...]
    centre_model: tuple[float, ...]
    extent_model: tuple[float, ...]  # bounding-box extent per axis, in model pixels
    diameter_mm: float


@dataclass(frozen=True)
class Sample:
    image: FloatArray  # the model input, [C, *spatial]
    mask: FloatArray | None  # segmentation devices: lesion mask in model space, [*spatial]
    lesions: tuple[Truth, ...]
    geometry: Geometry
    spacing_mm: tuple[float, ...]  # source spacing per axis

    @property
    def positive(self) -> bool:
        return bool(self.lesions)


def seed_for(device_id: str, split: str, index: int) -> tuple[int, int, int]:
    return zlib.crc32(device_id.encode()), SPLITS[split], index


def phantom_for(device: Device, split: str, index: int) -> phantoms.Phantom:
    rng = np.random.default_rng(seed_for(device.id, split, index))
    return device.phantom(rng, index % 2 == 0)


def prepare(device: Device, phantom: phantoms.Phantom) -> tuple[FloatArray, Geometry]:
    """The model input exactly as the pipeline builds it from decoded pixels.

    Radiograph phantoms are stored values, MONOCHROME2; CT phantoms are Hounsfield units.
    """
    if device.input.dims == 2:
        prepared = prepare_2d(np.asarray(phantom.pixels), "MONOCHROME2", device.input)
    else:
        prepared = prepare_3d(np.asarray(phantom.pixels, dtype=np.float32), device.input)
    return prepared.tensor.astype(np.float32, copy=False), prepared.geometry


def make_sample(device_id: str, split: str, index: int) -> Sample:
    device = DEVICES[device_id]
    phantom = phantom_for(device, split, index)
    image, geometry = prepare(device, phantom)
    lesions = []
    target_labels = []
    for number, lesion in enumerate(phantom.lesions, start=1):
        if lesion.kind not in TARGET_KINDS:
            continue
        target_labels.append(number)
        extent = tuple(
            (stop - start) * scale
            for (start, stop), scale in zip(lesion.bbox, geometry.scale, strict=True)
        )
        lesions.append(
            Truth(
                kind=lesion.kind,
                centre_source=lesion.center,
                centre_model=geometry.to_model(lesion.center),
                extent_model=extent,
                diameter_mm=lesion.diameter_mm,
            )
        )
    mask = None
    if device.task == "segmentation":
        source = np.isin(phantom.labels, target_labels).astype(np.float32)
        resized = Resize(tuple(device.input.size), mode="trilinear")(torch.as_tensor(source)[None])
        mask = torch.as_tensor(resized)[0].numpy().astype(np.float32, copy=False)
    return Sample(image, mask, tuple(lesions), geometry, phantom.spacing_mm)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _make(args: tuple[str, str, int]) -> Sample:
    return make_sample(*args)


def generate(
    device_id: str, split: str, count: int, start: int = 0, workers: int = 2
) -> list[Sample]:
    """Samples ``start .. start + count - 1`` of a split, in order (parallel when asked)."""
    jobs = [(device_id, split, i) for i in range(start, start + count)]
    if workers <= 1 or count < 4:
        return [_make(job) for job in jobs]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        return list(pool.map(_make, jobs, chunksize=max(1, count // (workers * 4))))
