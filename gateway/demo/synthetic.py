"""Synthetic DICOM studies of phantoms, for the demo and the tests.

The patients are obviously synthetic (``SYNTHETIC^PHANTOM^…``, ``SYN-…`` ids) but the
headers are what real modalities send, so the gateway ingests and routes them like real
studies. Everything, UIDs included, follows from the seed: the same seed gives the same
bytes. Each study carries its ground truth per instance, in that instance's pixel
coordinates, so a test can check that an AI finding sits where the lesion is.

This module is the one to import: the studies (:mod:`~gateway.demo.ct`,
:mod:`~gateway.demo.radiographs`), their headers (:mod:`~gateway.demo.headers`), writing
them as files, and the demo's set.
"""

from __future__ import annotations

from pathlib import Path

from gateway.demo.ct import ct_chest_study, ct_head_study
from gateway.demo.headers import TRANSFER_SYNTAXES, InstanceTruth, SyntheticStudy, synthetic_snils
from gateway.demo.radiographs import chest_xray_study, mammography_study

__all__ = [
    "TRANSFER_SYNTAXES",
    "InstanceTruth",
    "SyntheticStudy",
    "chest_xray_study",
    "ct_chest_study",
    "ct_head_study",
    "demo_studies",
    "mammography_study",
    "synthetic_snils",
    "write_study",
]


def write_study(study: SyntheticStudy, folder: str | Path) -> list[Path]:
    """Write ``folder/<kind>/<NNNN>.dcm`` (Part-10 files), in dataset order."""
    target = Path(folder) / study.kind
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, ds in enumerate(study.datasets, start=1):
        path = target / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def demo_studies(seed: int = 0, small: bool = True) -> list[SyntheticStudy]:
    """One study of each kind: CT chest, CT head, fluorography (DX), chest X-ray (CR),
    mammography; ``small`` sizes (CT 256², CXR 512², MG 1024 × 832) keep it quick."""
    ct_size, cxr_size, mg_size = (
        ((256, 256), (512, 512), (1024, 832))
        if small
        else (
            (512, 512),
            (1024, 1024),
            (2048, 1664),
        )
    )
    return [
        ct_chest_study(seed, n_slices=24 if small else 40, size=ct_size),
        ct_head_study(seed, n_slices=12 if small else 24, size=ct_size),
        chest_xray_study(seed, "fluorography", "DX", size=cxr_size),
        chest_xray_study(seed, "radiography", "CR", size=cxr_size),
        mammography_study(seed, size=mg_size),
    ]
