"""ReportInputs for the result builders' tests, from synthetic studies with known lesions.

The findings here are the phantom's ground truth turned into a device's answer, so a test
knows exactly where a mark must land. They stand in for a model's output in builder tests
only; the end-to-end tests run the real reference devices.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset

from gateway.demo import synthetic
from gateway.inference.findings import Location
from gateway.results.input import Organisation, ReportFinding, ReportInput
from models.manifest import DeviceManifest, load_manifest

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"
SHARED_DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"

ORGANISATION = Organisation(
    name="irk-gkb1",
    title="ГБУЗ Иркутская городская клиническая больница № 1",
    frmo_oid="1.2.643.5.1.13.13.12.2.38.3811",
    region="38",
)


def device(device_id: str) -> DeviceManifest:
    """A reference device's manifest (models/zoo/<id>/manifest.yaml)."""
    return load_manifest(ZOO / device_id / "manifest.yaml")


STARTED_AT = datetime(2026, 11, 23, 9, 29, 12, tzinfo=UTC)
COMPLETED_AT = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


def finding(
    manifest: DeviceManifest, probability: float, positive: bool, **fields: Any
) -> ReportFinding:
    """The device's first label's answer; ``fields``: location, measurements, mask."""
    label = next(o for o in manifest.outputs if o.labels).labels[0]
    return ReportFinding(
        label_code=label.code,
        label_scheme=label.scheme,
        label_ru=label.ru,
        label_en=label.en,
        probability=probability,
        threshold=label.threshold,
        positive=positive,
        **fields,
    )


def relocated(finding: ReportFinding, /, **changes: Any) -> ReportFinding:
    """The finding with some location fields (sop_instance_uid, centre, box) changed."""
    return finding.with_location(**changes)


def _input(
    job_id: int,
    manifest: DeviceManifest,
    study_type: str,
    sources: list[Dataset],
    findings: list[ReportFinding],
) -> ReportInput:
    service = next(s.service_code for s in manifest.study_types if s.type.value == study_type)
    return ReportInput(
        job_id=job_id,
        device=manifest,
        study_type=study_type,
        service_code=service,
        sources=sources,
        findings=findings,
        organisation=ORGANISATION,
        started_at=STARTED_AT,
        completed_at=COMPLETED_AT,
    )


def chest_xray_input(
    positive: bool = True, seed: int = 3, size: tuple[int, int] = (1024, 1024)
) -> ReportInput:
    """Fluorography (DX, 1024² unless ``size``) with one nodule, found with probability 0.91
    (or none)."""
    study = synthetic.chest_xray_study(seed, with_lesion=positive, size=size)
    manifest = device("aigw-ref-cxr")
    image, truth = study.datasets[0], study.truth[0]
    answer = finding(manifest, 0.08, False)
    if positive:
        lesion = truth.lesions[0]
        answer = finding(
            manifest,
            0.91,
            True,
            location=Location(
                sop_instance_uid=image.SOPInstanceUID,
                centre=tuple(float(c) for c in lesion.center),
                box=tuple((float(a), float(b)) for a, b in lesion.bbox),
            ),
            measurements={"max_diameter_mm": round(lesion.diameter_mm, 1)},
        )
    return _input(101, manifest, "fluorography", [image], [answer])


def ct_chest_input(
    positive: bool = True, seed: int = 5, n_slices: int = 40, size: tuple[int, int] = (256, 256)
) -> ReportInput:
    """CT chest, 40 axial slices of 256² unless told, one nodule segmented (mask on the
    source grid)."""
    study = synthetic.ct_chest_study(
        seed, n_slices=n_slices, size=size, with_nodule=positive, with_localizer=False
    )
    manifest = device("aigw-ref-ct-chest")
    slices = sorted(
        study.datasets, key=lambda ds: -float(ds.ImagePositionPatient[2])
    )  # cranial first, as decode
    truths = [study.truth_for(ds.SOPInstanceUID) for ds in slices]
    if not positive:
        return _input(
            102,
            manifest,
            "ct_chest",
            slices,
            [finding(manifest, 0.05, False)],
        )
    mask = np.stack([t.mask for t in truths]).astype(bool)
    indices = np.nonzero(mask)
    centre = tuple(float(axis.mean()) + 0.5 for axis in indices)
    box = tuple((float(axis.min()), float(axis.max()) + 1.0) for axis in indices)
    spacing = [float(v) for v in slices[0].PixelSpacing]
    thickness = float(slices[0].SliceThickness)
    volume = float(mask.sum()) * spacing[0] * spacing[1] * thickness
    diameter = max((box[1][1] - box[1][0]) * spacing[0], (box[2][1] - box[2][0]) * spacing[1])
    centre_slice = slices[int(centre[0])]
    answer = finding(
        manifest,
        0.87,
        True,
        location=Location(
            sop_instance_uid=centre_slice.SOPInstanceUID,
            centre=centre,
            box=box,
            slice_index=int(centre[0]),
        ),
        measurements={"max_diameter_mm": round(diameter, 1), "volume_mm3": round(volume, 1)},
        mask=mask,
    )
    return _input(102, manifest, "ct_chest", slices, [answer])


def mammography_input(seed: int = 7) -> ReportInput:
    """Four-view screening mammography (512×416 for speed); the mass found in one view."""
    study = synthetic.mammography_study(seed, with_mass=True, size=(512, 416))
    manifest = device("aigw-ref-mammo")
    findings = []
    for image, truth in zip(study.datasets, study.truth, strict=True):
        if truth.lesions:
            lesion = truth.lesions[0]
            findings.append(
                finding(
                    manifest,
                    0.76,
                    True,
                    location=Location(
                        sop_instance_uid=image.SOPInstanceUID,
                        centre=tuple(float(c) for c in lesion.center),
                        box=tuple((float(a), float(b)) for a, b in lesion.bbox),
                    ),
                    measurements={"max_diameter_mm": round(lesion.diameter_mm, 1)},
                )
            )
            break
    return _input(103, manifest, "mammography", list(study.datasets), findings)
