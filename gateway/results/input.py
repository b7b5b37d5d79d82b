"""What every result builder (SR, flag images, GSPS, SEG, SEMD) is given: one finished job.

The builders are pure functions of a :class:`ReportInput` — no database, no object store —
so each can be tested on its own with real DICOM files, and :mod:`gateway.results.build` is the
one place that gathers the input from the database and stores what the builders return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydicom import Dataset
from pydicom.uid import PYDICOM_ROOT_UID

from models.manifest import DeviceManifest

# Every result says this, in both languages, wherever a person can read it.
AI_NOTICE_RU = "Результат работы ИИ. Требует подтверждения врачом."
AI_NOTICE_EN = "AI result. Must be confirmed by a physician."


@dataclass(frozen=True)
class ReportFinding:
    """One label's answer, located in the source images.

    Coordinates are source pixel indices (floats, pixel centres at ``i + 0.5``):
    ``(row, column)`` in the image ``sop_instance_uid`` for 2D devices, ``(slice, row,
    column)`` in the volume for 3D devices, where slice indexes :attr:`ReportInput.sources`
    in their volume order and ``sop_instance_uid`` is the slice through the centre.
    """

    label_code: str
    label_scheme: str  # "SCT", "DCM", … (DICOM coding scheme designator)
    label_ru: str
    label_en: str
    probability: float
    threshold: float
    positive: bool
    sop_instance_uid: str | None = None
    centre: tuple[float, ...] | None = None
    box: tuple[tuple[float, float], ...] | None = None  # (start, stop) per axis, as centre
    measurements: dict[str, float] = field(default_factory=dict)  # max_diameter_mm, volume_mm3
    # Segmenting devices: the lesion on the source grid, bool, shaped like the source
    # (rows, columns) for 2D or (slices, rows, columns) for 3D; None otherwise.
    mask: np.ndarray | None = None


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
    completed_at: datetime  # when the job finished (timezone-aware, UTC)
    # Prefix of the UIDs the builders create; they derive them from (study, job, kind) with
    # pydicom.uid.generate_uid(prefix, entropy_srcs) so rebuilding a result gives the same UIDs.
    uid_root: str = PYDICOM_ROOT_UID

    @property
    def positive(self) -> bool:
        return any(f.positive for f in self.findings)
