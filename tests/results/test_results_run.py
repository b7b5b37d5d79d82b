"""A run through the real gateway: a study over DICOM, the reference CXR device, and the
report task with the settings' ``uid_root`` — every stored result object (SR, flag SC,
GSPS, SEG) names the device as IHE AIR asks, dates its content when the job started, and
carries UIDs under the organisation's root."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable

import numpy as np
import pydicom
from sqlalchemy import delete, select

from gateway.demo.synthetic import chest_xray_study, write_study
from gateway.index.tables import FindingRow, JobRow, OutboxRow, ResultRow
from gateway.inference.masks import encode_mask
from gateway.results.build import ReportContext, build_results, results_of
from gateway.settings import Settings
from pacs_adapters.dicom_scu import Peer, send
from tests.services import ROOT
from workers.serve import Gateway

UID_ROOT = "1.2.643.5.1.13.13.12.2.38.3811."


def test_every_result_object_of_a_run_carries_the_device_and_the_root(
    make_settings: Callable[..., Settings],
) -> None:
    from workers.app import build_gateway
    from workers.worker import report_context

    settings = make_settings(
        quiet_period_s=0.3,
        routing_file=ROOT / "gateway" / "configs" / "routing.yaml",
        devices_dir=ROOT / "models" / "zoo",
        uid_root=UID_ROOT.rstrip("."),
    )
    gateway = build_gateway(settings)
    gateway.start()
    try:
        study = chest_xray_study(12, size=(256, 256))
        files = write_study(study, settings.data_dir / "in")
        assert send(files, Peer("127.0.0.1", settings.dicom_port, "AIGW", "IRK_CAMI")).sent == 1
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not results_of(
            gateway.parts.db, study.study_instance_uid
        ):
            time.sleep(0.2)
        job_id = results_of(gateway.parts.db, study.study_instance_uid)[0].job_id
        # Whatever the device said, the job is rebuilt as a segmenting device's positive
        # answer on the image, so one run yields every kind of object.
        image = study.datasets[0]
        mask = np.zeros((int(image.Rows), int(image.Columns)), dtype=bool)
        mask[100:130, 60:95] = True
        gateway.parts.store.put("results/masks/run.npz", encode_mask(mask))
        with gateway.parts.db.session() as session:
            session.execute(delete(OutboxRow))
            session.execute(delete(ResultRow))
            (finding,) = session.scalars(select(FindingRow).where(FindingRow.job_id == job_id))
            finding.positive = True
            finding.location = {
                "centre": [115.0, 77.5],
                "box": [[100.0, 130.0], [60.0, 95.0]],
                "sop_instance_uid": str(image.SOPInstanceUID),
                "mask_key": "results/masks/run.npz",
            }
            job = session.get(JobRow, job_id)
            assert job is not None and job.started_at is not None
            device, started = job.device_key, job.started_at
        # Rebuilt by a results child, as the worker builds them (the mask read there too).
        reports = report_context(gateway.parts, 1)
        try:
            assert reports.builder is not None
            assert build_results(reports, job_id) == 5
            rows = results_of(gateway.parts.db, study.study_instance_uid)
            _child_that_dies_withholds(gateway, reports, job_id)
        finally:
            reports.close()
        assert sorted(row.kind for row in rows if row.object_key) == [
            "gsps",
            "sc",
            "seg",
            "semd",
            "sr",
        ]
        objects = {
            row.kind: pydicom.dcmread(io.BytesIO(gateway.parts.store.get(row.object_key)))
            for row in rows
            if row.object_key and row.kind != "semd"
        }
    finally:
        gateway.stop()
    assert sorted(objects) == ["gsps", "sc", "seg", "sr"]
    device_id, version = device.split("@")
    device_uids = set()
    for kind, dataset in objects.items():
        (item,) = [
            e
            for e in dataset.ContributingEquipmentSequence
            if e.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
        ]
        assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE", kind
        assert (item.ManufacturerModelName, item.SoftwareVersions) == (device_id, version), kind
        device_uids.add(item.DeviceUID)
        assert dataset.TimezoneOffsetFromUTC == "+0000", kind
        assert str(dataset.SeriesDate) == started.strftime("%Y%m%d"), kind
        assert str(dataset.SeriesTime).startswith(started.strftime("%H%M%S")), kind
        for uid in (dataset.SOPInstanceUID, dataset.SeriesInstanceUID, item.DeviceUID):
            assert uid.startswith(UID_ROOT), (kind, uid)
    assert len(device_uids) == 1
    assert str(objects["sr"].ContentTime).startswith(started.strftime("%H%M%S"))


def _child_that_dies_withholds(gateway: Gateway, reports: ReportContext, job_id: int) -> None:
    """Built again after its child died: the job's results withheld with the reason."""
    with gateway.parts.db.session() as session:
        session.execute(delete(OutboxRow))
        session.execute(delete(ResultRow))
    assert reports.builder is not None
    for pid in list(reports.builder._children._current()._processes):
        os.kill(pid, signal.SIGKILL)
    assert build_results(reports, job_id) == 0
    with gateway.parts.db.session() as session:
        withheld = session.scalars(select(ResultRow).where(ResultRow.job_id == job_id)).all()
        assert {(row.kind, row.state) for row in withheld} == {
            ("sr", "withheld"),
            ("semd", "withheld"),
        }
        assert all("the results process died" in (row.reason or "") for row in withheld)
        # Said as the build's failure, not as inputs that could not be read.
        assert all((row.reason or "").startswith("results not built: ") for row in withheld)
