"""The synthetic study each device reads, at the size its detector delivers, and its
clones under new UIDs (same pixels, a separate study to the index and the store)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from io import BytesIO
from typing import Literal

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from benchmarks.errors import BenchmarkError
from gateway.demo.synthetic import (
    SyntheticStudy,
    chest_xray_study,
    ct_chest_study,
    ct_head_study,
    mammography_study,
)
from models.manifest import DeviceManifest

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's prefix


@dataclass(frozen=True)
class StudySpec:
    """Which synthetic study feeds a device, and how large."""

    kind: str  # chest_xray, mammography, ct_chest, ct_head
    size: tuple[int, int]  # rows, columns of one image / slice
    slices: int = 0  # CT only
    modality: Literal["DX", "CR"] = "DX"  # chest X-ray only

    def make(self, seed: int, positive: bool) -> SyntheticStudy:
        if self.kind == "mammography":
            return mammography_study(seed, with_mass=positive, size=self.size)
        if self.kind == "ct_chest":
            return ct_chest_study(seed, self.slices, self.size, with_nodule=positive)
        if self.kind == "ct_head":
            return ct_head_study(seed, self.slices, self.size, with_haemorrhage=positive)
        return chest_xray_study(
            seed, "fluorography", self.modality, with_lesion=positive, size=self.size
        )

    def describe(self) -> str:
        rows, cols = self.size
        if self.kind == "mammography":
            return f"MG screening, 4 views of {rows}×{cols} (RCC, LCC, RMLO, LMLO)"
        if self.kind in ("ct_chest", "ct_head"):
            what = "chest" if self.kind == "ct_chest" else "head"
            return f"CT {what}, {self.slices} axial slices of {rows}×{cols} + a localizer"
        return f"{self.modality} PA chest (fluorography), one image of {rows}×{cols}"


def study_spec(
    manifest: DeviceManifest, quick: bool, sizes: dict[str, tuple[int, int]] | None = None
) -> StudySpec:
    """The synthetic study a device reads: by its input dimensions and what it accepts.
    2D sizes are what detectors deliver: a flat-panel chest radiograph 2500×2048, a
    full-field digital mammogram 2048×1664 (``--quick``: a quarter of the pixels or less);
    ``sizes`` (kind → rows, columns) overrides them."""
    spec = _default_spec(manifest, quick)
    if sizes and spec.kind in sizes:
        return dataclasses.replace(spec, size=sizes[spec.kind])
    return spec


def _default_spec(manifest: DeviceManifest, quick: bool) -> StudySpec:
    accepts = manifest.accepts
    body_parts = {part.upper() for part in accepts.body_parts}
    modalities = set(accepts.modalities)
    if manifest.input.dims == 3:
        size = (256, 256) if quick else (512, 512)
        if body_parts & {"HEAD", "BRAIN"}:
            return StudySpec("ct_head", size, slices=12 if quick else 32)
        return StudySpec("ct_chest", size, slices=24 if quick else 96)
    if "MG" in modalities:
        return StudySpec("mammography", (1024, 832) if quick else (2048, 1664))
    if modalities & {"DX", "CR"} and (not body_parts or "CHEST" in body_parts):
        modality: Literal["DX", "CR"] = "DX" if "DX" in modalities else "CR"
        return StudySpec("chest_xray", (512, 512) if quick else (2500, 2048), modality=modality)
    raise BenchmarkError(
        f"{manifest.key}: no synthetic study for modalities {sorted(modalities)} and body "
        f"parts {sorted(body_parts)}"
    )


def part10(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def clone(study: SyntheticStudy, number: int) -> list[bytes]:
    """The study's instances as Part-10 bytes under new study, series and SOP instance UIDs
    (derived from the originals and ``number``): same pixels, a separate study to the index
    and separate objects in the store."""

    def uid(original: str) -> str:
        return str(generate_uid(UID_PREFIX, entropy_srcs=[original, str(number)]))

    encoded = []
    for dataset in study.datasets:
        originals = (dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID)
        dataset.StudyInstanceUID = uid(originals[0])
        dataset.SeriesInstanceUID = uid(originals[1])
        dataset.SOPInstanceUID = uid(originals[2])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        try:
            encoded.append(part10(dataset))
        finally:
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID = originals
            dataset.file_meta.MediaStorageSOPInstanceUID = originals[2]
    return encoded
