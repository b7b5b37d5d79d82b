"""What every result builder (SR, flag images, GSPS, SEG, SEMD) is given: one finished job.

The builders are pure functions of a :class:`ReportInput` — no database, no object store —
so each can be tested on its own with real DICOM files, and :mod:`gateway.results.build` is the
one place that gathers the input from the database and stores what the builders return.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Self

import numpy as np
from pydantic import ConfigDict
from pydicom import Dataset

from gateway.inference.findings import Finding
from models.manifest import DeviceManifest


class ReportFinding(Finding):
    """A recorded :class:`~gateway.inference.findings.Finding` with its mask read back.

    Slice coordinates of a 3D finding index :attr:`ReportInput.sources` (volume order).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # Segmenting devices: the lesion on the source grid, bool, shaped like the source
    # (rows, columns) for 2D or (slices, rows, columns) for 3D; None otherwise.
    mask: np.ndarray | None = None

    @classmethod
    def of(cls, finding: Finding, mask: np.ndarray | None = None) -> Self:
        return cls(**dict(finding), mask=mask)


@dataclass(frozen=True)
class Organisation:
    """The medical organisation that sent the study (from sources.yaml)."""

    name: str  # source name in sources.yaml
    title: str  # human-readable, e.g. «ГБУЗ Иркутская городская клиническая больница № 1»
    frmo_oid: str | None
    region: str  # two-digit subject-of-RF code


@dataclass(frozen=True)
class ReportInput:
    """One finished job: the device, what it found, and the instances it analysed."""

    job_id: int
    device: DeviceManifest
    study_type: str  # models.study_types value, e.g. "fluorography", "ct_chest"
    service_code: str  # НСИ 1471, e.g. "7003320"
    # The analysed series' instances, full datasets with pixel data; for 3D devices in
    # volume order (the order ReportFinding slice indices refer to).
    sources: list[Dataset]
    findings: list[ReportFinding]
    organisation: Organisation
    started_at: datetime  # when the analysis started (timezone-aware): Content Date/Time
    completed_at: datetime  # when the job finished (timezone-aware)
    # The organisation's root for the UIDs the builders derive (settings.uid_root); None:
    # UUID-derived 2.25 UIDs. See gateway.results.header.
    uid_root: str | None = None

    @property
    def positive(self) -> bool:
        return any(f.positive for f in self.findings)
