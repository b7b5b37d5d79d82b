"""The files every receiver gets: a warm-up, 512² CT slices of one series, and flat-panel
chest radiographs (one study each), all Explicit VR Little Endian, written once per run by
the harness (:mod:`tests.services.series`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.services.series import DX_SIZE, body_slices, write_ct_series, write_dx_studies

CT_SIZE = 512
WARMUP_SLICES = 4


@dataclass(frozen=True)
class FileSet:
    """Files of one kind (CT or DX) and their total size on disk."""

    kind: str
    paths: tuple[Path, ...]

    @property
    def count(self) -> int:
        return len(self.paths)

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.paths)


@dataclass(frozen=True)
class Corpus:
    warmup: FileSet
    ct: FileSet
    dx: FileSet

    @property
    def instance_count(self) -> int:
        return self.warmup.count + self.ct.count + self.dx.count


def make_corpus(folder: Path, ct_count: int, dx_count: int, seed: int) -> Corpus:
    """UIDs and noise derive from ``seed``: the same files in every run with that seed."""

    def ct(name: str, count: int) -> FileSet:
        paths = write_ct_series(
            folder / name,
            count,
            seed=f"bench-ingest-{name}-{seed}",
            size=CT_SIZE,
            pixels=body_slices(CT_SIZE, seed),
        )
        return FileSet(name if name == "warmup" else "CT", tuple(paths))

    dx = write_dx_studies(folder / "dx", dx_count, seed=f"bench-ingest-dx-{seed}", size=DX_SIZE)
    return Corpus(
        warmup=ct("warmup", WARMUP_SLICES), ct=ct("ct", ct_count), dx=FileSet("DX", tuple(dx))
    )
