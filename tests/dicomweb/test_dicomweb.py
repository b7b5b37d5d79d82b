"""The DICOMweb server with dicomweb-client as its client, against the real API under
uvicorn and a real index: what STOW-RS stores comes back byte for byte from WADO-RS and is
found by QIDO-RS; a region's token sees its region only; a bad part fails alone; a token
bound to no source cannot store; the gateway's own results are served beside the originals.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from click.testing import CliRunner
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import UID
from requests.exceptions import HTTPError
from sqlalchemy import select

from gateway.access.tokens import AccessError, create_token
from gateway.demo.synthetic import chest_xray_study, write_study
from gateway.devices.registry import DeviceRegistry
from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from gateway.index.tables import (
    AuditRow,
    InstanceRow,
    JobRow,
    ResultRow,
    StudyRow,
    utcnow,
)
from gateway.settings import Settings
from tests.control_plane_data import Running, flag_image, prepare_index, serve_api
from tests.services import ROOT, make_uid
from tests.services.orthanc import Orthanc
from tests.services.processes import SHARED_DICOM as DATA
from workers.cli import main

CT_SERIES = sorted((DATA / "CT_series_GE_LightSpeed").glob("*.dcm"))
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STOW_LIMIT = 8 * 1024**2
INSTANCE_LIMIT = 1024**2
needs_data = pytest.mark.skipif(not CT_SERIES, reason=f"real DICOM files not present under {DATA}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    yield from _serve(tmp_path, stow_max_bytes=STOW_LIMIT)


@pytest.fixture
def small_instances_server(tmp_path: Path) -> Iterator[Running]:
    yield from _serve(tmp_path, max_instance_bytes=INSTANCE_LIMIT)


def _serve(tmp_path: Path, **settings: Any) -> Iterator[Running]:
    db = Database(f"sqlite:///{tmp_path / 'dicomweb.db'}")
    prepare_index(db)
    store = FolderStore(tmp_path / "objects")
    try:
        with serve_api(
            db, store, Settings(data_dir=tmp_path, **settings), DeviceRegistry(db, store)
        ) as running:
            yield running
    finally:
        db.dispose()


def _token(server: Running, role: str, region: str | None, source: str | None) -> str:
    _, secret = create_token(
        server.db, role, region, name=f"dw-{role}-{region}-{source}", source=source
    )
    return secret


def _client(server: Running, secret: str) -> DICOMwebClient:
    return DICOMwebClient(f"{server.url}/dicom-web", headers={"Authorization": f"Bearer {secret}"})


def _http(server: Running, secret: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}/dicom-web",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


def _store_raw(client: DICOMwebClient, payloads: list[bytes], study: str | None = None) -> object:
    """STOW-RS of these exact bytes, through the client's own multipart encoder (its public
    ``store_instances`` re-encodes datasets, so bytes could not be compared)."""
    url = f"{client.base_url}/studies" + (f"/{study}" if study else "")
    return client._http_post_multipart_application_dicom(url, payloads)


def _synthetic(tmp_path: Path, seed: int) -> list[bytes]:
    return [p.read_bytes() for p in write_study(chest_xray_study(seed), tmp_path / str(seed))]


def _multipart_parts(client: DICOMwebClient, url: str) -> list[bytes]:
    """The raw parts of a WADO-RS answer, split by the client's own multipart decoder."""
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    response = client._session.get(url, headers={"Accept": accept})
    response.raise_for_status()
    return list(client._decode_multipart_message(response, stream=False))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@needs_data
def test_stored_bytes_come_back_unchanged_and_are_found(server: Running, tmp_path: Path) -> None:
    sender = _client(server, _token(server, "service", None, "irk-cami"))
    sent = [p.read_bytes() for p in CT_SERIES] + _synthetic(tmp_path, 7)
    answer = _store_raw(sender, sent)
    assert isinstance(answer, pydicom.Dataset)
    assert len(answer.ReferencedSOPSequence) == len(sent)
    assert "FailedSOPSequence" not in answer

    reader = _client(server, _token(server, "viewer", "38", None))
    headers = [pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True) for b in sent]
    for header, data in zip(headers, sent, strict=True):
        url = (
            f"{server.url}/dicom-web/studies/{header.StudyInstanceUID}/series/"
            f"{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}"
        )
        assert [_sha(p) for p in _multipart_parts(reader, url)] == [_sha(data)]
        retrieved = reader.retrieve_instance(
            header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID
        )
        assert retrieved.SOPInstanceUID == header.SOPInstanceUID

    ct = headers[0]
    whole = _multipart_parts(reader, f"{server.url}/dicom-web/studies/{ct.StudyInstanceUID}")
    assert sorted(_sha(p) for p in whole) == sorted(_sha(b) for b in sent[: len(CT_SERIES)])

    studies = reader.search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in studies} == {h.StudyInstanceUID for h in headers}
    by_id = reader.search_for_studies(search_filters={"PatientID": str(ct.PatientID)})
    assert [s["0020000D"]["Value"][0] for s in by_id] == [ct.StudyInstanceUID]
    found = by_id[0]
    assert found["00201208"]["Value"] == [len(CT_SERIES)]  # NumberOfStudyRelatedInstances
    assert found["00080061"]["Value"] == ["CT"]
    assert reader.search_for_studies(search_filters={"ModalitiesInStudy": "MR"}) == []
    wildcard = reader.search_for_studies(search_filters={"PatientID": "*"}, limit=1)
    assert len(wildcard) == 1

    series = reader.search_for_series(ct.StudyInstanceUID)
    assert [s["0020000E"]["Value"][0] for s in series] == [ct.SeriesInstanceUID]
    instances = reader.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert sorted(i["00080018"]["Value"][0] for i in instances) == sorted(
        h.SOPInstanceUID for h in headers[: len(CT_SERIES)]
    )
    one = reader.search_for_instances(
        ct.StudyInstanceUID,
        search_filters={"SOPInstanceUID": ct.SOPInstanceUID},
        fields=["SliceThickness"],
    )
    assert one[0]["00180050"]["Value"] == [float(ct.SliceThickness)]

    metadata = reader.retrieve_series_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert len(metadata) == len(CT_SERIES)
    assert all("7FE00010" not in m for m in metadata)  # no Pixel Data
    assert {m["00100020"]["Value"][0] for m in metadata} == {str(ct.PatientID)}

    with server.db.session() as session:
        rows = session.scalars(select(InstanceRow)).all()
        assert {r.calling_ae for r in rows} == {"STOW-RS"}
        for row in rows:
            assert _sha(server.store.get(row.object_key)) == row.sha256
        reads = session.scalars(select(AuditRow).where(AuditRow.event == "read")).all()
        assert any(r.action.startswith("GET /dicom-web/studies/") for r in reads)
        stored = session.scalars(select(AuditRow).where(AuditRow.event == "instances_stored")).one()
        assert stored.detail["stored"] == len(sent) and stored.detail["source"] == "irk-cami"


def test_a_region_token_sees_only_its_region(server: Running, tmp_path: Path) -> None:
    irkutsk, tula = _synthetic(tmp_path, 1), _synthetic(tmp_path, 2)
    _store_raw(_client(server, _token(server, "service", None, "irk-cami")), irkutsk)
    _store_raw(_client(server, _token(server, "service", None, "tula-cami")), tula)
    tula_header = pydicom.dcmread(io.BytesIO(tula[0]))
    irk_uid = pydicom.dcmread(io.BytesIO(irkutsk[0])).StudyInstanceUID

    reader = _client(server, _token(server, "viewer", "38", None))
    assert [s["0020000D"]["Value"][0] for s in reader.search_for_studies()] == [irk_uid]
    filtered = reader.search_for_studies(
        search_filters={"StudyInstanceUID": tula_header.StudyInstanceUID}
    )
    assert filtered == []
    for attempt in (
        lambda: reader.retrieve_study(tula_header.StudyInstanceUID),
        lambda: reader.retrieve_study_metadata(tula_header.StudyInstanceUID),
        lambda: reader.search_for_series(tula_header.StudyInstanceUID),
        lambda: reader.retrieve_instance(
            tula_header.StudyInstanceUID,
            tula_header.SeriesInstanceUID,
            tula_header.SOPInstanceUID,
        ),
    ):
        with pytest.raises(HTTPError) as refused:
            attempt()
        assert refused.value.response is not None
        assert refused.value.response.status_code == 404
    admin = _client(server, _token(server, "admin", None, None))
    assert len(admin.search_for_studies()) == 2


def test_one_bad_part_fails_alone(server: Running, tmp_path: Path) -> None:
    good = _synthetic(tmp_path, 3)[0]
    truncated = good[: len(good) // 2]
    foreign = pydicom.dcmread(io.BytesIO(_synthetic(tmp_path, 4)[0]))
    foreign.SOPClassUID = UID("1.2.826.0.1.3680043.9.9")
    foreign.file_meta.MediaStorageSOPClassUID = foreign.SOPClassUID
    unsupported = io.BytesIO()
    foreign.save_as(unsupported, enforce_file_format=True)
    secret = _token(server, "service", None, "irk-cami")

    with _http(server, secret) as http:
        answer = http.post(
            "/studies",
            content=_multipart([good, truncated, unsupported.getvalue()], "b0undary"),
            headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                     "boundary=b0undary", "Accept": "application/dicom+json"},
        )  # fmt: skip
    assert answer.status_code == 202, answer.text
    body = pydicom.Dataset.from_json(answer.json())
    stored = pydicom.dcmread(io.BytesIO(good))
    assert [i.ReferencedSOPInstanceUID for i in body.ReferencedSOPSequence] == [
        stored.SOPInstanceUID
    ]
    assert body.ReferencedSOPSequence[0].RetrieveURL.endswith(f"/{stored.SOPInstanceUID}")
    reasons = {int(i.FailureReason): i.ReferencedSOPInstanceUID for i in body.FailedSOPSequence}
    assert reasons == {0xC000: "", 0x0122: foreign.SOPInstanceUID}
    with server.db.session() as session:
        kept = session.scalars(select(InstanceRow.sop_instance_uid)).all()
    assert kept == [stored.SOPInstanceUID]


def test_a_part_over_the_instance_limit_fails_alone_and_is_not_kept(
    small_instances_server: Running, tmp_path: Path
) -> None:
    server = small_instances_server
    small = io.BytesIO()
    chest_xray_study(10, size=(256, 256)).datasets[0].save_as(small, enforce_file_format=True)
    large = _synthetic(tmp_path, 11)[0]
    assert len(small.getvalue()) < INSTANCE_LIMIT < len(large)
    answer = _store_raw(
        _client(server, _token(server, "service", None, "irk-cami")), [large, small.getvalue()]
    )
    assert isinstance(answer, pydicom.Dataset)
    assert [int(i.FailureReason) for i in answer.FailedSOPSequence] == [0xA700]
    assert len(answer.ReferencedSOPSequence) == 1
    with server.db.session() as session:
        assert len(session.scalars(select(InstanceRow)).all()) == 1


def test_an_instance_of_another_study_than_the_url_fails(server: Running, tmp_path: Path) -> None:
    data = _synthetic(tmp_path, 5)[0]
    with _http(server, _token(server, "service", None, "irk-cami")) as http:
        answer = http.post(
            f"/studies/{make_uid('other-study')}",
            content=_multipart([data], "xyz"),
            headers={
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=xyz',
                "Accept": "application/dicom+xml",
            },
        )
    assert answer.status_code == 409
    assert answer.headers["content-type"].startswith("application/dicom+xml")
    assert b'tag="00081197"' in answer.content and b'<Value number="1">43264</Value>' in (
        answer.content
    )  # FailureReason 0xA900


def test_who_may_store_and_what_is_refused(server: Running, tmp_path: Path) -> None:
    data = _synthetic(tmp_path, 6)[0]
    dicom = 'multipart/related; type="application/dicom"; boundary=q'
    with _http(server, _token(server, "admin", None, None)) as unbound:
        refused = unbound.post("/studies", content=_multipart([data], "q"),
                               headers={"Content-Type": dicom})  # fmt: skip
        assert refused.status_code == 403 and "--source" in refused.json()["detail"]
    with pytest.raises(AccessError, match="region 71"):
        create_token(server.db, "viewer", "38", source="tula-cami")
    with pytest.raises(AccessError, match="unknown source"):
        create_token(server.db, "service", source="nowhere")

    with _http(server, _token(server, "service", None, "irk-cami")) as http:
        json_parts = 'multipart/related; type="application/dicom+json"; boundary=q'
        assert http.post("/studies", content=b"{}", headers={"Content-Type": json_parts}
                         ).status_code == 415  # fmt: skip
        assert (
            http.post(
                "/studies", content=data, headers={"Content-Type": "application/dicom"}
            ).status_code
            == 415
        )
        no_boundary = 'multipart/related; type="application/dicom"'
        assert (
            http.post("/studies", content=data, headers={"Content-Type": no_boundary}).status_code
            == 400
        )
        cut = _multipart([data], "q")[:-10]
        assert (
            http.post("/studies", content=cut, headers={"Content-Type": dicom}).status_code == 400
        )
        huge = b"--q\r\nContent-Type: application/dicom\r\n\r\n" + b"\0" * (STOW_LIMIT + 1)
        assert (
            http.post("/studies", content=iter([huge]), headers={"Content-Type": dicom}).status_code
            == 413
        )
        assert http.post("/studies", content=_multipart([data], "q"), headers={
            "Content-Type": dicom, "Accept": "text/html"}).status_code == 406  # fmt: skip
        header = pydicom.dcmread(io.BytesIO(data))
        assert (
            http.post(
                "/studies", content=_multipart([data], "q"), headers={"Content-Type": dicom}
            ).status_code
            == 200
        )
        again = http.post("/studies", content=_multipart([data], "q"),
                          headers={"Content-Type": dicom})  # fmt: skip
        assert again.status_code == 200  # a copy already held is success, stored once
        deflate = (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1.99'
        )
        assert http.get(f"/studies/{header.StudyInstanceUID}",
                        headers={"Accept": deflate}).status_code == 406  # fmt: skip
        assert http.get("/studies", params={"StudyDate": "2020-99"}).status_code == 422
        assert http.get("/studies", params={"limit": "x"}).status_code == 422
        warned = http.get("/studies", params={"PatientName": "X*", "fuzzymatching": "true"})
        assert warned.status_code == 200 and "fuzzymatching" in warned.headers["warning"]
        assert "PatientName" not in warned.headers["warning"]  # matched on, not ignored
    with server.db.session() as session:
        assert len(session.scalars(select(InstanceRow)).all()) == 1


def test_the_gateways_results_are_served_beside_the_originals(
    server: Running, tmp_path: Path
) -> None:
    data = _synthetic(tmp_path, 8)[0]
    _store_raw(_client(server, _token(server, "service", None, "irk-cami")), [data])
    original = pydicom.dcmread(io.BytesIO(data))
    flag = flag_image(original.StudyInstanceUID, "dw")
    flag_header = pydicom.dcmread(io.BytesIO(flag))
    _add_result(server, str(original.StudyInstanceUID), flag)
    reader = _client(server, _token(server, "viewer", "38", None))
    series = reader.search_for_series(original.StudyInstanceUID)
    assert {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in series} == {
        original.SeriesInstanceUID: str(original.Modality),
        flag_header.SeriesInstanceUID: "OT",
    }
    sc = reader.search_for_instances(
        original.StudyInstanceUID, search_filters={"SOPClassUID": SECONDARY_CAPTURE}
    )
    assert [i["00080018"]["Value"][0] for i in sc] == [flag_header.SOPInstanceUID]
    whole = _multipart_parts(reader, f"{server.url}/dicom-web/studies/{original.StudyInstanceUID}")
    assert sorted(_sha(p) for p in whole) == sorted([_sha(data), _sha(flag)])
    count = reader.search_for_studies()[0]["00201208"]["Value"]
    assert count == [2]


def _named(tmp_path: Path, seed: int, name: str) -> bytes:
    study = chest_xray_study(seed, size=(128, 128))
    out = io.BytesIO()
    study.datasets[0].PatientName = name  # UTF-8: the synthetic studies say ISO_IR 192
    study.datasets[0].save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_qido_at_the_root_matches_patient_names_by_wildcard_inside_the_region(
    server: Running, tmp_path: Path
) -> None:
    ivanov, petrov = _named(tmp_path, 31, "Иванов^Иван"), _named(tmp_path, 32, "PETROV^PETR")
    ivanova = _named(tmp_path, 33, "Иванова^Анна")
    _store_raw(_client(server, _token(server, "service", None, "irk-cami")), [ivanov, petrov])
    _store_raw(_client(server, _token(server, "service", None, "tula-cami")), [ivanova])
    ivanov_h, petrov_h, ivanova_h = (
        pydicom.dcmread(io.BytesIO(b)) for b in (ivanov, petrov, ivanova)
    )

    reader = _client(server, _token(server, "viewer", "38", None))
    series = reader.search_for_series(search_filters={"PatientName": "иванов*"})
    assert [s["0020000E"]["Value"][0] for s in series] == [ivanov_h.SeriesInstanceUID]
    (found,) = [pydicom.Dataset.from_json(s) for s in series]
    assert (found.StudyInstanceUID, str(found.PatientName)) == (
        ivanov_h.StudyInstanceUID,
        "Иванов^Иван",
    )  # the study's attributes come with each series at the root
    assert reader.search_for_series(search_filters={"PatientName": "ИВАНОВ^ИВА?"}) == series
    assert reader.search_for_series(search_filters={"PatientName": "иванов"}) == []

    instances = reader.search_for_instances(search_filters={"PatientName": "*petr*"})
    assert [i["00080018"]["Value"][0] for i in instances] == [petrov_h.SOPInstanceUID]
    studies = reader.search_for_studies(search_filters={"PatientName": "Petrov^Petr"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [petrov_h.StudyInstanceUID]
    assert reader.search_for_studies(search_filters={"PatientName": "PETROV^PETR^^"}) == studies
    assert len(reader.search_for_series()) == 2
    assert len(reader.search_for_instances(search_filters={"Modality": "DX"})) == 2

    # Tula's patient is another region's: matched by nothing here, found by an admin.
    assert reader.search_for_series(search_filters={"PatientName": "Иванова*"}) == []
    admin = _client(server, _token(server, "admin", None, None))
    everyone = admin.search_for_instances(search_filters={"PatientName": "иван*"})
    assert {i["00080018"]["Value"][0] for i in everyone} == {
        ivanov_h.SOPInstanceUID,
        ivanova_h.SOPInstanceUID,
    }
    paged = admin.search_for_series(limit=1, offset=1)
    assert [s["0020000E"]["Value"][0] for s in paged] == [petrov_h.SeriesInstanceUID]
    with server.db.session() as session:
        reads = session.scalars(
            select(AuditRow).where(
                AuditRow.event == "read", AuditRow.action == "GET /dicom-web/series"
            )
        ).all()
    assert reads and reads[0].detail["study_uids"] == [ivanov_h.StudyInstanceUID]


def _multipart(parts: list[bytes], boundary: str) -> bytes:
    body = b""
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
        body += b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_aigw_tokens_create_binds_a_token_to_a_source(server: Running, tmp_path: Path) -> None:
    env = {
        "AIGW_CONFIG_FILE": str(ROOT / "gateway" / "configs" / "gateway.yaml"),
        "AIGW_DATABASE_URL": server.db.url,
    }
    runner = CliRunner()
    unknown = runner.invoke(
        main, ["tokens", "create", "--role", "service", "--source", "nowhere"], env=env
    )
    assert unknown.exit_code != 0 and "unknown source" in unknown.output
    made = runner.invoke(
        main, ["tokens", "create", "--role", "service", "--source", "tula-cami"], env=env
    )
    assert made.exit_code == 0, made.output
    assert "stores as source tula-cami" in made.output
    secret = made.output.strip().splitlines()[-1]
    data = _synthetic(tmp_path, 9)[0]
    answer = _store_raw(_client(server, secret), [data])
    assert isinstance(answer, pydicom.Dataset) and len(answer.ReferencedSOPSequence) == 1
    with server.db.session() as session:
        assert session.scalars(select(StudyRow.region_code)).all() == ["71"]


ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@needs_data
@pytest.mark.skipif(
    not ORTHANC_DICOMWEB.is_file(), reason="Debian orthanc-dicomweb is not installed"
)
def test_orthanc_retrieves_a_study_and_its_results_by_wado_rs(
    server: Running, tmp_path: Path
) -> None:
    sent = [p.read_bytes() for p in CT_SERIES]
    _store_raw(_client(server, _token(server, "service", None, "irk-cami")), sent)
    ct = pydicom.dcmread(io.BytesIO(sent[0]), stop_before_pixels=True)
    flag = flag_image(str(ct.StudyInstanceUID), "orthanc")
    _add_result(server, str(ct.StudyInstanceUID), flag)
    secret = _token(server, "viewer", "38", None)
    orthanc = Orthanc(
        tmp_path / "orthanc",
        config={
            "Plugins": [str(ORTHANC_DICOMWEB)],
            "DicomWeb": {
                "Enable": True,
                "Servers": {
                    "aigw": {
                        "Url": f"{server.url}/dicom-web/",
                        "HttpHeaders": {"Authorization": f"Bearer {secret}"},
                    }
                },
            },
        },
    )
    orthanc.start()
    try:
        request = urllib.request.Request(
            f"{orthanc.url}/dicom-web/servers/aigw/retrieve",
            data=json.dumps({"Resources": [{"Study": str(ct.StudyInstanceUID)}]}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
        held = []
        for instance in _orthanc_get(orthanc, "/instances"):
            held.append(_sha(_orthanc_get_bytes(orthanc, f"/instances/{instance}/file")))
    finally:
        orthanc.stop()
    assert sorted(held) == sorted([_sha(b) for b in sent] + [_sha(flag)])


def _add_result(server: Running, study_uid: str, data: bytes) -> None:
    """A stored result of the study, as the result builders leave one: a job, a results
    row with the object's UIDs, the object in the store."""
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    key = f"results/{header.SOPInstanceUID}.dcm"
    server.store.put(key, data)
    with server.db.session() as session:
        study = session.scalars(select(StudyRow).where(StudyRow.study_uid == study_uid)).one()
        job = JobRow(
            study_id=study.id, study_completed_at=utcnow(), series_uid="1.2", series_uids=[],
            device_key="dev@1", study_type="cxr", service_code="1", rule="r", priority=5,
            queue="infer", state="inferred", created_at=utcnow(),
        )  # fmt: skip
        session.add(job)
        session.flush()
        session.add(
            ResultRow(
                job_id=job.id, kind="sc", state="stored", object_key=key,
                sop_instance_uid=header.SOPInstanceUID,
                series_instance_uid=header.SeriesInstanceUID, sha256=_sha(data),
                size=len(data), meta={}, created_at=utcnow(),
            )
        )  # fmt: skip


def _orthanc_get(orthanc: Orthanc, path: str) -> Any:
    with urllib.request.urlopen(f"{orthanc.url}{path}", timeout=30) as response:
        return json.load(response)


def _orthanc_get_bytes(orthanc: Orthanc, path: str) -> bytes:
    with urllib.request.urlopen(f"{orthanc.url}{path}", timeout=30) as response:
        data: bytes = response.read()
        return data
