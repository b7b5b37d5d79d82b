"""Priors with real peers: Orthanc as the source's archive holds the patient's earlier
studies; the gateway (embedded default, a test device whose manifest asks for one prior
within five years) finds them by C-FIND and fetches the newest that fits by C-MOVE to its
own SCP, or by C-GET. The prior reaches the job's input, is stored as a prior and starts
no job of its own; an archive that does not answer leaves the job without priors, saying so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from sqlalchemy import select

from gateway.demo.synthetic import chest_xray_study, write_study
from gateway.index.read_model import JobFilter, JobItem, list_jobs
from gateway.index.tables import JobRow, SeriesRow, StudyEventRow, StudyRow
from gateway.inference import pipeline
from gateway.jobs.dispatch import PRIOR_REASON
from gateway.settings import Settings
from tests.onnx_models import classifier_with_heatmap, write_device
from tests.services import Orthanc, free_port, make_uid, storescu, write_ct_series
from workers.serve import Gateway

ARCHIVE_AE, LONELY_AE = "ARCHIVE", "LONELY"
PATIENT, NAME = "PRIORS-PAT-1", "TESTOV^IVAN"
PRIORS = {"max": 1, "within_years": 5, "same_modality": True}


@dataclass
class Patient:
    """The patient's studies: the current one and what the archive holds besides."""

    current: list[Path]
    current_uid: str
    prior_uid: str  # DX, two years before: the one to fetch
    ct_uid: str  # CT, one year before: not the device's modality
    old_uid: str  # DX, eleven years before: too old
    stranger_uid: str  # DX of another patient, a year before


def _chest(folder: Path, seed: int, date: str, patient: str = PATIENT) -> tuple[str, list[Path]]:
    study = chest_xray_study(
        seed=seed, kind="fluorography", modality="DX", sop="dx", size=(128, 128)
    )
    for ds in study.datasets:
        ds.PatientID, ds.PatientName, ds.StudyDate = patient, NAME, date
    return study.study_instance_uid, write_study(study, folder / str(seed))


def _ct(folder: Path, date: str) -> tuple[str, list[Path]]:
    study_uid = make_uid("priors-ct")
    files = write_ct_series(folder / "ct", 2, study_uid=study_uid, seed="priors-ct")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName, ds.StudyDate = PATIENT, NAME, date
        ds.save_as(path, enforce_file_format=True)
    return study_uid, files


@pytest.fixture
def patient(tmp_path: Path) -> Patient:
    folder = tmp_path / "studies"
    current_uid, current = _chest(folder, 41, "20260110")
    prior_uid, _ = _chest(folder, 42, "20240115")
    old_uid, _ = _chest(folder, 43, "20150301")
    stranger_uid, _ = _chest(folder, 44, "20250601", patient="SOMEONE-ELSE")
    ct_uid, _ = _ct(folder, "20250301")
    return Patient(current, current_uid, prior_uid, ct_uid, old_uid, stranger_uid)


@dataclass
class Setup:
    archive: Orthanc
    gateway: Gateway
    inputs: list[tuple[str, ...]]  # the prior series each job's pipeline got

    def job(self, study_uid: str, timeout_s: float = 90) -> JobItem:
        # A bound on a failing test's wait, not a timing assertion.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            jobs = list_jobs(self.gateway.parts.db, JobFilter(study_uid=study_uid, limit=10))
            if jobs and jobs[0].state in ("inferred", "failed"):
                return jobs[0]
            time.sleep(0.1)
        raise AssertionError(f"the job of {study_uid} did not finish")

    def study(self, study_uid: str) -> StudyRow | None:
        with self.gateway.parts.db.session() as session:
            return session.scalars(select(StudyRow).where(StudyRow.study_uid == study_uid)).first()

    def events(self, study_uid: str, kind: str) -> list[StudyEventRow]:
        with self.gateway.parts.db.session() as session:
            return list(
                session.scalars(
                    select(StudyEventRow)
                    .join(StudyRow)
                    .where(StudyRow.study_uid == study_uid, StudyEventRow.kind == kind)
                )
            )


def _sources(folder: Path, archive: Orthanc, retrieve: str) -> Path:
    query = {"host": "127.0.0.1", "port": archive.dicom_port, "ae_title": archive.ae_title}
    dead = {"host": "127.0.0.1", "port": free_port(), "ae_title": "NOBODY", "timeout_s": 2}
    sources = {
        "sources": [
            # The archive pushes the current study and is asked for the priors; the
            # instances of a C-MOVE come from it too, one study per association.
            {
                "name": "archive",
                "ae_title": ARCHIVE_AE,
                "hosts": ["127.0.0.0/8"],
                "region": "38",
                "complete_on_release": True,
                "query": {**query, "retrieve": retrieve},
            },
            {"name": "lonely", "ae_title": LONELY_AE, "region": "38", "query": dead},
        ]
    }
    path = folder / "sources.yaml"
    path.write_text(json.dumps(sources))  # JSON is YAML
    return path


@pytest.fixture(params=["move", "get"])
def setup(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    patient: Patient,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Setup]:
    from workers.app import build_gateway

    settings_port = free_port()
    # Only the C-MOVE archive knows where the gateway listens: a C-GET must do without.
    known = {"gateway": ["AIGW", "127.0.0.1", settings_port]} if request.param == "move" else {}
    archive = Orthanc(
        tmp_path / "orthanc",
        ae_title=ARCHIVE_AE,
        config={
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "DicomModalities": known,
        },
    )
    archive.start()
    folder = tmp_path / "studies"
    held = list(folder.rglob("*.dcm"))
    sent = storescu(archive.dicom_port, held, calling_ae="MODALITY", called_ae=ARCHIVE_AE)
    assert sent.returncode == 0, sent.stderr

    inputs: list[tuple[str, ...]] = []
    original = pipeline._pipeline

    def watched(context: Any, job: Any, *rest: Any) -> Any:
        inputs.append(job.prior_series_uids)
        return original(context, job, *rest)

    monkeypatch.setattr(pipeline, "_pipeline", watched)
    devices = tmp_path / "devices"
    write_device(devices / "test-cxr", classifier_with_heatmap(), priors=PRIORS)
    regions = tmp_path / "regions.yaml"
    regions.write_text(
        yaml.safe_dump({"regions": {"38": "Иркутская"}, "devices": {"38": ["test-cxr"]}})
    )
    gateway = build_gateway(
        make_settings(
            dicom_port=settings_port,
            devices_dir=devices,
            regions_file=regions,
            sources_file=_sources(tmp_path, archive, request.param),
            quiet_period_s=0.5,
            decode_memory_limit_mb=0,
        )
    )
    gateway.start()
    try:
        yield Setup(archive, gateway, inputs)
    finally:
        gateway.stop()
        archive.stop()


def test_the_newest_fitting_prior_is_fetched_into_the_jobs_input_and_starts_no_job(
    setup: Setup, patient: Patient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = setup.gateway.parts.settings.dicom_port
    sent = storescu(port, patient.current, calling_ae=ARCHIVE_AE)
    assert sent.returncode == 0, sent.stderr

    job = setup.job(patient.current_uid)
    assert job.state == "inferred", job.reason
    assert job.prior_study_uids == [patient.prior_uid]

    prior = setup.study(patient.prior_uid)
    assert prior is not None and prior.prior
    with setup.gateway.parts.db.session() as session:
        prior_series = list(
            session.scalars(
                select(SeriesRow.series_uid).join(StudyRow).where(StudyRow.id == prior.id)
            )
        )
        prior_jobs = session.scalars(select(JobRow).where(JobRow.study_id == prior.id)).all()
    assert setup.inputs == [tuple(prior_series)]  # the pipeline's input carried them
    assert len(prior_series) == 1
    for unwanted in (patient.ct_uid, patient.old_uid, patient.stranger_uid):
        assert setup.study(unwanted) is None

    (looked,) = setup.events(patient.current_uid, "priors")
    assert looked.detail["studies"] == [patient.prior_uid]
    assert looked.detail["job_id"] == job.job_id
    assert looked.detail["found"] == 3  # current, prior and CT: the old one is out of range
    assert looked.note is None

    # Completed, the prior is not analysed: no job, not applicable, and says why.
    deadline = time.monotonic() + 30
    # receiving → complete → not_applicable: the dispatcher's answer follows completion.
    while (study := setup.study(patient.prior_uid)) is not None and study.state in (
        "receiving",
        "complete",
    ):
        assert time.monotonic() < deadline, "the prior was not completed"
        time.sleep(0.1)
    assert study is not None and study.state == "not_applicable"
    (reason,) = [e.detail.get("reason") for e in setup.events(patient.prior_uid, "state")][-1:]
    assert reason == PRIOR_REASON
    assert prior_jobs == []
    # The name is indexed (QIDO-RS matches it) and never logged, nor the Patient ID.
    assert prior.patient_name == NAME
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert NAME not in logged and PATIENT not in logged


def test_an_archive_that_does_not_answer_leaves_the_job_without_priors(
    setup: Setup, tmp_path: Path
) -> None:
    study_uid, files = _chest(tmp_path / "lonely", 45, "20260111", patient="LONELY-PAT")
    sent = storescu(setup.gateway.parts.settings.dicom_port, files, calling_ae=LONELY_AE)
    assert sent.returncode == 0, sent.stderr

    job = setup.job(study_uid)
    assert job.state == "inferred", job.reason
    assert job.prior_study_uids == []
    assert setup.inputs == [()]
    (looked,) = setup.events(study_uid, "priors")
    assert looked.note is not None
    assert looked.note.startswith("without priors: the archive did not answer the C-FIND")
