"""The mix of studies the senders push: fluorography-heavy, as a regional archive's day is,
at realistic detector sizes (or small ones for ``--quick``), cloned under new UIDs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom import dcmread

from benchmarks.inference.studies import clone
from gateway.demo.synthetic import (
    SyntheticStudy,
    chest_xray_study,
    ct_chest_study,
    ct_head_study,
    mammography_study,
)

StudyKind = Literal["fluorography", "mammography", "ct_chest", "ct_head"]
# Share of each kind in the mix: a regional archive's day is mostly fluorography.
MIX: dict[StudyKind, float] = {
    "fluorography": 0.70,
    "mammography": 0.15,
    "ct_chest": 0.10,
    "ct_head": 0.05,
}


@dataclass(frozen=True)
class Sizes:
    """Image sizes of the mix: realistic detectors, or small ones for ``--quick``."""

    dx: tuple[int, int]
    mg: tuple[int, int]
    ct: tuple[int, int]
    ct_chest_slices: int
    ct_head_slices: int

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls((512, 512), (1024, 832), (256, 256), 24, 12)
        return cls((2500, 2048), (2048, 1664), (512, 512), 96, 32)

    def make(self, kind: StudyKind, seed: int) -> SyntheticStudy:
        positive = seed % 2 == 0
        if kind == "mammography":
            return mammography_study(seed, with_mass=positive, size=self.mg)
        if kind == "ct_chest":
            return ct_chest_study(seed, self.ct_chest_slices, self.ct, with_nodule=positive)
        if kind == "ct_head":
            return ct_head_study(seed, self.ct_head_slices, self.ct, with_haemorrhage=positive)
        return chest_xray_study(seed, "fluorography", "DX", with_lesion=positive, size=self.dx)


@dataclass(frozen=True)
class PlannedSend:
    kind: StudyKind
    study_uid: str
    files: tuple[Path, ...]


def schedule(count: int, seed: int) -> list[StudyKind]:
    """``count`` study kinds: one of each kind first (so each has a latency figure even in a
    short run), then kinds drawn from :data:`MIX` with a seeded generator."""
    rng = np.random.default_rng(seed)
    kinds: list[StudyKind] = list(MIX)
    drawn = rng.choice(len(kinds), size=max(0, count - len(kinds)), p=list(MIX.values()))
    return [*kinds, *(kinds[int(index)] for index in drawn)][:count]


def prepare_studies(folder: Path, count: int, sizes: Sizes, seed: int) -> list[PlannedSend]:
    """Part-10 files of ``count`` studies: two generated studies per kind (one with a
    lesion), the rest clones of them under new UIDs."""
    bases: dict[StudyKind, list[SyntheticStudy]] = {}
    planned = []
    for number, kind in enumerate(schedule(count, seed)):
        generated = bases.setdefault(kind, [])
        if len(generated) < 2:
            generated.append(sizes.make(kind, seed + 7 * len(generated)))
        base = generated[number % len(generated)]
        target = folder / f"{number:05d}-{kind}"
        target.mkdir(parents=True)
        files = []
        for index, data in enumerate(clone(base, number + 1)):
            path = target / f"{index:04d}.dcm"
            path.write_bytes(data)
            files.append(path)
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        planned.append(PlannedSend(kind, study_uid, tuple(files)))
    return planned
