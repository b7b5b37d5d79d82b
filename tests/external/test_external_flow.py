"""External devices end to end, with real DICOM both ways: the gateway (in this process, as
``aigw serve`` runs it) sends a synthetic fluorography study to a stand-in vendor's SCP,
which fails the test if anything identifying reached it and answers with an SR TID 1500
and an SC; the results are stored under the original study and patient, their findings
counted. Then what goes wrong: the vendor down (retried, then delivered), silent (the
deadline fails the job; a late answer is kept and marked), a reference to an instance that
was not sent, and senders that are no device."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml
from pydicom.uid import UID
from requests import HTTPError
from sqlalchemy import select

from gateway.access.tokens import create_token
from gateway.dashboard.waiting import Step, waiting_studies
from gateway.demo.synthetic import SyntheticStudy, chest_xray_study, write_study
from gateway.index.tables import FindingRow, JobRow, ResultRow
from gateway.settings import Settings
from pacs_adapters.dicom_scu import Peer, send
from pacs_adapters.tls import server_context
from tests.external.devices import write_device, write_sources
from tests.external.vendor import StandInVendor, identifying_in, sc_of
from tests.ingest.tls_certs import Pki
from tests.services import ROOT
from tests.services.dcmtk import dciodvfy_errors
from tests.services.orthanc import Orthanc as OrthancProcess
from tests.services.processes import free_port
from workers.serve import Gateway


@dataclass
class Setup:
    gateway: Gateway
    vendor: StandInVendor
    study: SyntheticStudy
    archive: OrthancProcess | None = None
    vendor_web: OrthancProcess | None = None  # the vendor's DICOMweb service (protocol stow)

    def send_study(self, tmp: Path) -> None:
        files = write_study(self.study, tmp / "in")
        port = self.gateway.parts.settings.dicom_port
        assert send(files, Peer("127.0.0.1", port, "AIGW", "IRK_CAMI")).sent == len(files)

    def job(self) -> JobRow | None:
        with self.gateway.parts.db.session() as session:
            job = session.scalars(select(JobRow)).first()
            if job is not None:
                session.expunge(job)
            return job

    def results(self) -> list[ResultRow]:
        with self.gateway.parts.db.session() as session:
            rows = list(session.scalars(select(ResultRow).order_by(ResultRow.id)))
            session.expunge_all()
            return rows

    def findings(self) -> list[FindingRow]:
        with self.gateway.parts.db.session() as session:
            rows = list(session.scalars(select(FindingRow)))
            session.expunge_all()
            return rows


def _originals(study: SyntheticStudy) -> set[str]:
    ds = study.datasets[0]
    values = {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)}
    values |= {str(ds.InstitutionName), str(ds.OtherPatientIDsSequence[0].PatientID)}
    return {v for v in values if v}


def _wait(condition: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
VENDOR_TOKEN_ENV = "AIGW_TEST_VENDOR_TOKEN"


@pytest.fixture
def setup(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Setup]:
    from workers.app import build_gateway

    options: dict[str, Any] = getattr(request, "param", {})
    vendor_port = free_port()
    sources, regions = write_sources(tmp_path / "config")
    archive = None
    if options.get("orthanc"):  # the regional archive the results end up in
        archive = OrthancProcess(tmp_path / "orthanc", "IRK_ARCHIVE")
        archive.start()
        destinations = {
            "destinations": [
                {
                    "name": "irk-archive",
                    "protocol": "dicom",
                    "host": "127.0.0.1",
                    "port": archive.dicom_port,
                    "ae_title": "IRK_ARCHIVE",
                }
            ],
            "sources": {"irk-cami": ["irk-archive"]},
        }
        (tmp_path / "destinations.yaml").write_text(yaml.safe_dump(destinations))
    service: dict[str, Any] = {}
    vendor_web = None
    if options.get("stow"):  # the vendor's DICOMweb endpoint: Orthanc with its plugin
        if not ORTHANC_DICOMWEB.is_file():
            pytest.skip("Debian orthanc-dicomweb is not installed")
        vendor_web = OrthancProcess(
            tmp_path / "vendor-web",
            "VENDOR_WEB",
            config={"Plugins": [str(ORTHANC_DICOMWEB)], "DicomWeb": {"Enable": True}},
        )
        vendor_web.start()
        if options.get("no_token"):
            monkeypatch.delenv(VENDOR_TOKEN_ENV, raising=False)
        else:
            monkeypatch.setenv(VENDOR_TOKEN_ENV, "vendor-token-of-the-test")
        service = {
            "protocol": "stow",
            "url": f"{vendor_web.url}/dicom-web",
            "token_env": VENDOR_TOKEN_ENV,
        }
    if options.get("identified"):  # a vendor inside the region's own network
        service["deidentify"] = False
    vendor_tls = None
    if options.get("tls"):  # mutual TLS toward the vendor
        pki = Pki(tmp_path / "pki")
        ours = pki.issue("aigw-gateway")
        vendor_tls = server_context(pki.server.cert, pki.server.key, pki.ca)
        service["tls"] = {
            "ca_file": str(pki.ca),
            "client_cert": str(ours.cert),
            "client_key": str(ours.key),
        }
    settings = make_settings(
        destinations_file=tmp_path / "destinations.yaml",
        semd_file=ROOT / "gateway" / "configs" / "semd.yaml",
        outbox_poll_s=0.2,
        outbox_backoff_s=0.2,
        http_port=free_port() if options.get("http") else 0,
        sources_file=sources,
        regions_file=regions,
        routing_file=ROOT / "gateway" / "configs" / "routing.yaml",
        devices_dir=write_device(
            tmp_path / "devices", vendor_port, options.get("deadline_s", 60.0), **service
        ),
        quiet_period_s=0.3,
        retry_backoff_s=0.2,
        retry_max_backoff_s=0.5,
        job_max_retries=1,
        redrive_poll_s=0.2,
        delivery_timeout_s=5.0,
    )
    study = chest_xray_study(31, size=(256, 256))
    vendor = StandInVendor(
        vendor_port,
        settings.dicom_port,
        set() if options.get("identified") else _originals(study),
        answer=options.get("answer", True),
        tls=vendor_tls,
        refuses_identity=not options.get("identified"),
    )
    if not options.get("vendor_down") and vendor_web is None:
        vendor.start()
    gateway = build_gateway(settings)
    gateway.start()
    try:
        yield Setup(gateway, vendor, study, archive, vendor_web)
    finally:
        gateway.stop()
        vendor.stop()
        for orthanc in (archive, vendor_web):
            if orthanc is not None:
                orthanc.stop()


@pytest.mark.parametrize("setup", [{"orthanc": True}], indirect=True)
def test_a_study_goes_out_deidentified_and_its_results_come_back_as_the_patients(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    setup.send_study(tmp_path)
    rows = _wait(lambda: len(setup.results()) >= 3 and setup.results())
    # The SC's row is written before its C-STORE-RSP leaves: the vendor's thread notes the
    # second status a moment after the row shows (a clean-clone run under load saw [0]).
    _wait(lambda: len(setup.vendor.answers) >= 2)
    assert setup.vendor.violations == []
    assert len(setup.vendor.received) == 1
    sent = setup.vendor.received[0]
    original = setup.study.datasets[0]
    assert sent.PatientIdentityRemoved == "YES"
    assert sent.StudyInstanceUID != original.StudyInstanceUID
    assert sent.PatientSex == original.PatientSex
    assert setup.vendor.answers == [0x0000, 0x0000]

    assert sorted(row.kind for row in rows) == ["sc", "semd", "sr"]
    semd = next(r for r in rows if r.kind == "semd")
    assert semd.state == "stored", semd.reason
    job = setup.job()
    assert job is not None and job.state == "inferred"
    store = setup.gateway.parts.store
    for row in rows:
        if row.kind == "semd":
            continue
        assert row.job_id == job.id and row.meta["external"] and not row.meta["late"]
        stored = pydicom.dcmread(io.BytesIO(store.get(row.object_key)))
        assert stored.StudyInstanceUID == original.StudyInstanceUID
        assert stored.PatientName == original.PatientName
        assert stored.PatientID == original.PatientID
        assert "PatientIdentityRemoved" not in stored
    sr = next(r for r in rows if r.kind == "sr")
    stored_sr = pydicom.dcmread(io.BytesIO(store.get(sr.object_key)))
    evidence = stored_sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == original.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[
        0
    ].ReferencedSOPInstanceUID == (original.SOPInstanceUID)
    assert dciodvfy_errors(stored_sr, tmp_path) == []  # still a valid SR once re-identified
    (finding,) = setup.findings()
    assert (finding.label_code, finding.positive, finding.probability) == ("427359005", True, 0.91)
    assert finding.location is not None
    assert finding.location["sop_instance_uid"] == original.SOPInstanceUID
    assert finding.location["box"] == [[20.0, 50.0], [10.0, 40.0]]

    # Nothing of the patient, and nothing of the key to re-identify them, is logged.
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    for secret in (*_originals(setup.study), str(sent.PatientID), str(sent.StudyInstanceUID)):
        assert secret not in logged

    # Delivered to the archive under the original study and patient.
    assert setup.archive is not None
    archive = httpx.Client(base_url=setup.archive.url, timeout=30)
    found = _wait(lambda: archive.post("/tools/lookup", content=original.StudyInstanceUID).json())
    orthanc_study = archive.get(f"/studies/{found[0]['ID']}").json()
    assert orthanc_study["PatientMainDicomTags"]["PatientID"] == original.PatientID
    _wait(lambda: len(archive.get(f"/studies/{found[0]['ID']}/instances").json()) == 2)
    archive.close()

    # The same series sent again is the same pseudonymised UIDs: the vendor sees one copy.
    from gateway.external.send import send_job
    from workers.worker import send_context

    with setup.gateway.parts.db.session() as session:
        again = session.get(JobRow, job.id)
        assert again is not None
        again.state = "queued"
    assert send_job(send_context(setup.gateway.parts), job.id) == "sent"
    assert setup.vendor.received[1].SOPInstanceUID == sent.SOPInstanceUID
    assert setup.vendor.received[1].PatientID == sent.PatientID


@pytest.mark.parametrize("setup", [{"vendor_down": True}], indirect=True)
def test_a_vendor_that_is_down_is_retried_and_then_gets_the_study(
    setup: Setup, tmp_path: Path
) -> None:
    setup.send_study(tmp_path)
    job = _wait(lambda: (j := setup.job()) is not None and j.last_error and j)
    assert job.state in ("queued", "running") and "VENDOR_AI@127.0.0.1" in job.last_error
    setup.vendor.start()
    rows = _wait(lambda: len(setup.results()) >= 3 and setup.results())
    assert sorted(row.kind for row in rows) == ["sc", "semd", "sr"]
    assert setup.vendor.violations == []


@pytest.mark.parametrize("setup", [{"tls": True}], indirect=True)
def test_a_vendor_reached_over_tls_gets_the_study_and_answers(setup: Setup, tmp_path: Path) -> None:
    setup.send_study(tmp_path)
    rows = _wait(lambda: len(setup.results()) >= 3 and setup.results())
    assert sorted(row.kind for row in rows) == ["sc", "semd", "sr"]
    assert len(setup.vendor.received) == 1 and setup.vendor.violations == []


@pytest.mark.parametrize("setup", [{"answer": False, "deadline_s": 1.0}], indirect=True)
def test_a_silent_vendor_fails_the_job_at_its_deadline_and_a_late_answer_is_kept(
    setup: Setup, tmp_path: Path
) -> None:
    setup.send_study(tmp_path)
    job = _wait(lambda: (j := setup.job()) is not None and j.state == "failed" and j)
    assert job.reason == "no answer from Vendor CXR within 1 s"
    setup.vendor.send_results()
    assert setup.vendor.answers == [0x0000, 0x0000]
    rows = setup.results()
    assert sorted(row.kind for row in rows) == ["sc", "sr"]
    assert all(row.meta["late"] for row in rows)
    job = setup.job()
    assert job is not None and job.state == "failed"
    assert setup.findings() == []  # a late answer is kept, not counted


@pytest.mark.parametrize("setup", [{"answer": False}], indirect=True)
def test_a_result_referencing_an_instance_not_sent_is_refused(setup: Setup, tmp_path: Path) -> None:
    setup.send_study(tmp_path)
    _wait(lambda: (j := setup.job()) is not None and j.state == "sent")
    setup.vendor.send_results(extra_reference="1.2.826.0.1.3680043.8.498.1")
    assert setup.vendor.answers == [0x0000, 0xC000]
    assert [row.kind for row in setup.results()] == ["sr", "semd"]  # not the SC

    # A UID that is a path, not a UID, goes nowhere near the object store.
    hostile = sc_of(setup.vendor.received[0], None)
    hostile.SOPInstanceUID = hostile.file_meta.MediaStorageSOPInstanceUID = UID("1.2/../../../x")
    path = tmp_path / "hostile.dcm"
    hostile.save_as(path, enforce_file_format=True)
    receiver = setup.gateway.device_results
    assert receiver is not None
    answer = receiver.receive_file(path, "VENDOR_AI", str(hostile.SOPClassUID), "1.2/../../../x")
    assert answer.status == 0xC002
    assert [row.kind for row in setup.results()] == ["sr", "semd"]


@pytest.mark.parametrize("setup", [{"answer": False}], indirect=True)
def test_a_sender_that_is_no_device_is_refused(setup: Setup, tmp_path: Path) -> None:
    setup.send_study(tmp_path)
    _wait(lambda: (j := setup.job()) is not None and j.state == "sent")
    setup.vendor.send_results(calling_ae="STRANGER")  # no source at all: no association
    assert setup.vendor.answers == [None, None]
    setup.vendor.send_results(calling_ae="OTHER_AI")  # a device source, but no device's
    assert setup.vendor.answers[2:] == [0xC000, 0xC000]
    assert setup.results() == []
    job = setup.job()
    assert job is not None and job.state == "sent"
    (waiting,) = waiting_studies(setup.gateway.parts.db)  # the dashboard says why it waits
    assert (waiting.step, waiting.studies) == (Step.SENT, 1)


@pytest.mark.parametrize("setup", [{"answer": False, "http": True}], indirect=True)
def test_results_sent_back_by_stow_rs_take_the_same_path(setup: Setup, tmp_path: Path) -> None:
    setup.send_study(tmp_path)
    _wait(lambda: (j := setup.job()) is not None and j.state == "sent")
    db, settings = setup.gateway.parts.db, setup.gateway.parts.settings
    url = f"http://127.0.0.1:{settings.http_port}/dicom-web"
    _, stranger = create_token(db, "service", name="other-ai", source="other-ai")
    with pytest.raises(HTTPError):  # a device source, but no registered device's: all refused
        setup.vendor.stow_results(url, stranger)
    assert setup.results() == []
    _, secret = create_token(db, "service", name="vendor", source="vendor-cxr")
    answer = setup.vendor.stow_results(url, secret)
    assert len(answer.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in answer
    rows = _wait(lambda: len(setup.results()) >= 3 and setup.results())
    assert sorted(row.kind for row in rows) == ["sc", "semd", "sr"]
    job = setup.job()
    assert job is not None and job.state == "inferred"
    assert len(setup.findings()) == 1


@pytest.mark.parametrize("setup", [{"stow": True, "http": True}], indirect=True)
def test_a_stow_vendor_gets_the_series_by_stow_rs_and_answers_by_stow_rs(
    setup: Setup, tmp_path: Path
) -> None:
    setup.send_study(tmp_path)
    job = _wait(lambda: (j := setup.job()) is not None and j.state in ("sent", "failed") and j)
    assert job.state == "sent", job.reason

    # The vendor (Orthanc's DICOMweb) holds the series, with nothing identifying left.
    assert setup.vendor_web is not None
    vendor_web = httpx.Client(base_url=setup.vendor_web.url, timeout=30)
    held = vendor_web.get("/instances").json()
    received: list[pydicom.Dataset] = [
        pydicom.dcmread(io.BytesIO(vendor_web.get(f"/instances/{i}/file").content)) for i in held
    ]
    assert len(received) == len(setup.study.datasets)
    for dataset in received:
        assert identifying_in(dataset, _originals(setup.study)) == []
        assert dataset.PatientIdentityRemoved == "YES"
        assert dataset.StudyInstanceUID != setup.study.datasets[0].StudyInstanceUID

    # Sent again: the same pseudonymised UIDs, so the vendor still holds one copy.
    from gateway.external.send import send_job
    from workers.worker import send_context

    with setup.gateway.parts.db.session() as session:
        again = session.get(JobRow, job.id)
        assert again is not None
        again.state = "queued"
    assert send_job(send_context(setup.gateway.parts), job.id) == "sent"
    assert sorted(vendor_web.get("/instances").json()) == sorted(held)
    vendor_web.close()

    # The vendor answers by STOW-RS with its device token: stored as the patient's.
    settings = setup.gateway.parts.settings
    _, secret = create_token(setup.gateway.parts.db, "service", name="vendor", source="vendor-cxr")
    setup.vendor.received = received
    answer = setup.vendor.stow_results(f"http://127.0.0.1:{settings.http_port}/dicom-web", secret)
    assert len(answer.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in answer
    rows = _wait(lambda: len(setup.results()) >= 3 and setup.results())
    assert sorted(row.kind for row in rows) == ["sc", "semd", "sr"]
    original = setup.study.datasets[0]
    for row in rows:
        if row.kind != "semd":
            stored = pydicom.dcmread(io.BytesIO(setup.gateway.parts.store.get(row.object_key)))
            assert stored.StudyInstanceUID == original.StudyInstanceUID
            assert stored.PatientID == original.PatientID
    done = setup.job()
    assert done is not None and done.state == "inferred"
    (finding,) = setup.findings()
    assert (finding.label_code, finding.positive) == ("427359005", True)


@pytest.mark.parametrize("setup", [{"stow": True}], indirect=True)
def test_a_stow_vendor_that_is_down_is_retried_and_then_gets_the_series(
    setup: Setup, tmp_path: Path
) -> None:
    assert setup.vendor_web is not None
    setup.vendor_web.stop()
    setup.send_study(tmp_path)
    job = _wait(lambda: (j := setup.job()) is not None and j.last_error and j)
    assert job.state in ("queued", "running")
    assert f"{setup.vendor_web.url}/dicom-web" in job.last_error
    assert "vendor-token-of-the-test" not in job.last_error
    setup.vendor_web.start()  # same folder and ports
    _wait(lambda: (j := setup.job()) is not None and j.state == "sent")
    assert setup.vendor_web.instance_count() == len(setup.study.datasets)


@pytest.mark.parametrize("setup", [{"stow": True, "no_token": True}], indirect=True)
def test_a_stow_vendor_whose_token_variable_is_unset_fails_the_job_and_gets_nothing(
    setup: Setup, tmp_path: Path
) -> None:
    """No retry mends a missing secret: the job fails at once, naming the variable."""
    assert setup.vendor_web is not None
    setup.send_study(tmp_path)
    job = _wait(lambda: (j := setup.job()) is not None and j.state == "failed" and j)
    assert job.reason is not None and f"{VENDOR_TOKEN_ENV} is not set" in job.reason
    assert setup.vendor_web.instance_count() == 0


@pytest.mark.parametrize("setup", [{"identified": True}], indirect=True)
def test_a_vendor_trusted_with_identity_gets_the_study_as_is_and_answers(
    setup: Setup, tmp_path: Path
) -> None:
    """``deidentify: false``: the series leaves unchanged, its UIDs are their own
    pseudonyms, and the vendor's answer is matched and stored like any other."""
    setup.send_study(tmp_path)
    rows = _wait(lambda: len(setup.results()) >= 3 and setup.results())
    original = setup.study.datasets[0]
    # A retried send repeats the same instance: the same UIDs every time.
    assert {(s.StudyInstanceUID, s.SOPInstanceUID) for s in setup.vendor.received} == {
        (original.StudyInstanceUID, original.SOPInstanceUID)
    }
    sent = setup.vendor.received[0]
    assert sent.PatientName == original.PatientName and "PatientIdentityRemoved" not in sent
    # Taken at the first try: one send, so one answer (the vendor answers every association
    # it took part of a study on: a refused first try would bring a second SR and SC).
    assert len(setup.vendor.received) == 1
    assert sorted(row.kind for row in rows) == ["sc", "semd", "sr"]
    job = setup.job()
    assert job is not None and job.state == "inferred"
    assert len(setup.findings()) == 1
