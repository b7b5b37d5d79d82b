"""DICOM TLS with real peers: DCMTK's storescu/echoscu (built with OpenSSL) send to the
gateway's TLS port with client certificates made here; results go back by C-STORE over TLS
to DCMTK's storescp; the API is served over HTTPS. Every association decision is audited."""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
import yaml
from pydantic import ValidationError
from pydicom.uid import UID
from sqlalchemy import select

from gateway.access.audit import ASSOCIATION_ACCEPTED, ASSOCIATION_REFUSED, DICOM_ROLE
from gateway.delivery.destinations import Destinations, DestinationsFile, DicomDestination
from gateway.delivery.outbox import Claim
from gateway.delivery.send import Delivery
from gateway.errors import ConfigError
from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from gateway.index.tables import AuditRow, InstanceRow, utcnow
from gateway.ingest.refusals import Refusal
from gateway.settings import Settings
from pacs_adapters.dicom_scu import ScuError
from tests.control_plane_data import prepare_index, seed
from tests.ingest.test_dcmtk_ingest import BAD_FILE, PROPOSE, dataset_bytes, shared_files
from tests.ingest.tls_certs import Issued, Pki
from tests.services import free_port, require_tool, wait_for_port
from workers.serve import Gateway

TLS_SUBJECT = "tls-cami.example"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def client(pki: Pki) -> Issued:
    return pki.issue(TLS_SUBJECT)


@pytest.fixture(scope="module")
def pinned(pki: Pki) -> Issued:
    return pki.issue("pin-cami.example")


@pytest.fixture
def tls_settings(
    tmp_path: Path, make_settings: Callable[..., Settings], pki: Pki, pinned: Issued
) -> Callable[..., Settings]:
    """Settings with a TLS listener and a sources file naming TLS identities."""
    sources = {
        "sources": [
            {
                "name": "tls-cami",
                "ae_title": "TLS_CAMI",
                "region": "38",
                "tls_subject": TLS_SUBJECT,
            },
            {
                "name": "pin-cami",
                "ae_title": "PIN_CAMI",
                "region": "71",
                # colons and capitals, as `openssl x509 -fingerprint -sha256` prints it
                "tls_fingerprint_sha256": ":".join(
                    pinned.fingerprint_sha256[i : i + 2].upper() for i in range(0, 64, 2)
                ),
            },
            {"name": "irk-cami", "ae_title": "IRK_CAMI", "region": "38"},
        ]
    }
    (tmp_path / "tls-sources.yaml").write_text(yaml.safe_dump(sources))

    def factory(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": tmp_path / "tls-var",
            "sources_file": tmp_path / "tls-sources.yaml",
            "dicom_tls_port": free_port(),
            "dicom_tls_cert_file": pki.server.cert,
            "dicom_tls_key_file": pki.server.key,
            "dicom_tls_client_ca_file": pki.ca,
        }
        values.update(overrides)
        return make_settings(**values)

    return factory


@pytest.fixture
def tls_gateway(
    tls_settings: Callable[..., Settings], start_gateway: Callable[[Settings], Gateway]
) -> Gateway:
    return start_gateway(tls_settings())


def _tls(issued: Issued | None, pki: Pki) -> list[str]:
    if issued is None:
        return ["+tla", "+cf", str(pki.ca)]  # TLS, but no client certificate
    return ["+tls", str(issued.key), str(issued.cert), "+cf", str(pki.ca)]


def _dcmtk(
    tool: str, port: int, calling_ae: str, extra: list[str], files: list[Path] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool(tool), *extra, "-aet", calling_ae, "-aec", "AIGW", "127.0.0.1", str(port)]
        + [str(f) for f in files or []],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=300,
    )


def _stored(gateway: Gateway) -> dict[str, tuple[str, str, bytes]]:
    """SOP Instance UID → (transfer syntax, sha256, object bytes)."""
    with gateway.parts.db.session() as session:
        rows = session.execute(
            select(
                InstanceRow.sop_instance_uid,
                InstanceRow.transfer_syntax_uid,
                InstanceRow.sha256,
                InstanceRow.object_key,
            )
        ).all()
    return {sop: (syntax, sha, gateway.parts.store.get(key)) for sop, syntax, sha, key in rows}


def _audit(gateway: Gateway) -> list[AuditRow]:
    with gateway.parts.db.session() as session:
        return list(session.scalars(select(AuditRow).order_by(AuditRow.id)))


@pytest.mark.shared_data
def test_storescu_over_tls_stores_the_shared_files_exactly_as_over_plain_tcp(
    tls_gateway: Gateway, gateway: Gateway, pki: Pki, client: Issued
) -> None:
    by_syntax: dict[UID, list[Path]] = defaultdict(list)
    for path in shared_files():
        if path.name != BAD_FILE:
            by_syntax[
                pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
            ].append(path)
    tls_port = tls_gateway.parts.settings.dicom_tls_port
    for syntax, files in by_syntax.items():
        over_tls = _dcmtk(
            "storescu", tls_port, "TLS_CAMI", ["-R", PROPOSE[syntax], *_tls(client, pki)], files
        )
        assert over_tls.returncode == 0, over_tls.stderr
        plain = _dcmtk(
            "storescu",
            gateway.parts.settings.dicom_port,
            "IRK_CAMI",
            ["-R", PROPOSE[syntax]],
            files,
        )
        assert plain.returncode == 0, plain.stderr
    over_tls_stored, plain_stored = _stored(tls_gateway), _stored(gateway)
    assert len(over_tls_stored) == sum(len(files) for files in by_syntax.values())
    assert over_tls_stored.keys() == plain_stored.keys()
    for sop, (stored_syntax, sha, data) in over_tls_stored.items():
        assert plain_stored[sop][:2] == (stored_syntax, sha), sop  # the same bytes either way
        assert hashlib.sha256(data).hexdigest() == sha
    accepted = [r for r in _audit(tls_gateway) if r.action == ASSOCIATION_ACCEPTED]
    assert len(accepted) == len(by_syntax)
    assert {r.role for r in accepted} == {DICOM_ROLE}
    assert {(r.token_name, r.client_ip, r.region_code) for r in accepted} == {
        ("TLS_CAMI", "127.0.0.1", "38")
    }
    assert {r.detail["tls_subject"] for r in accepted} == {TLS_SUBJECT}
    assert tls_gateway.scp is not None
    assert tls_gateway.scp.report.counters.accepted_total() == len(by_syntax)


def test_peers_without_the_right_certificate_are_refused(
    tls_gateway: Gateway, pki: Pki, client: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tls_gateway.parts.settings
    tls_port, plain_port = settings.dicom_tls_port, settings.dicom_port
    attempts = {
        "no client certificate": ("TLS_CAMI", tls_port, _tls(None, pki)),
        "another CA": ("TLS_CAMI", tls_port, _tls(pki.issue(TLS_SUBJECT, rogue=True), pki)),
        "plain TCP to the TLS port": ("TLS_CAMI", tls_port, []),
        "another subject": ("TLS_CAMI", tls_port, _tls(pki.issue("intruder.example"), pki)),
        "a TLS-only source over plain TCP": ("TLS_CAMI", plain_port, []),
    }
    results = {
        what: _dcmtk("echoscu", port, calling_ae, extra)
        for what, (calling_ae, port, extra) in attempts.items()
    }
    assert all(r.returncode != 0 for r in results.values()), {
        w: r.stderr for w, r in results.items()
    }
    # refused at the handshake: the peer never gets to send its request
    for what in ("no client certificate", "another CA", "plain TCP to the TLS port"):
        assert "Association Rejected" not in results[what].stderr, what
    # refused at the request, with the A-ASSOCIATE-RJ
    for what in ("another subject", "a TLS-only source over plain TCP"):
        assert "Association Rejected" in results[what].stderr, what
    assert tls_gateway.scp is not None
    counters = tls_gateway.scp.report.counters.refusals()
    assert counters[Refusal.TLS_HANDSHAKE] == 3 and counters[Refusal.TLS_IDENTITY] == 2
    details = [
        r.__dict__["detail"]
        for r in caplog.records
        if r.name == "gateway.ingest.refusals" and r.__dict__["reason"] == "tls_handshake"
    ]
    assert len(details) == 3
    assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in d for d in details)
    assert any("CERTIFICATE_VERIFY_FAILED" in d for d in details)
    refused = [r for r in _audit(tls_gateway) if r.action == ASSOCIATION_REFUSED]
    assert [(r.detail["reason"], r.detail["tls"]) for r in refused] == [
        ("tls_identity", True),
        ("tls_identity", False),
    ]
    assert "intruder.example" in refused[0].detail["detail"]
    assert "plain TCP" in refused[1].detail["detail"]
    # the right certificate still gets in
    ok = _dcmtk("echoscu", tls_port, "TLS_CAMI", _tls(client, pki))
    assert ok.returncode == 0, ok.stderr


def test_a_pinned_certificate_fingerprint(tls_gateway: Gateway, pki: Pki, pinned: Issued) -> None:
    port = tls_gateway.parts.settings.dicom_tls_port
    ok = _dcmtk("echoscu", port, "PIN_CAMI", _tls(pinned, pki))
    assert ok.returncode == 0, ok.stderr
    same_name = _dcmtk("echoscu", port, "PIN_CAMI", _tls(pki.issue("pin-cami.example"), pki))
    assert "Association Rejected" in same_name.stderr
    (refused,) = [r for r in _audit(tls_gateway) if r.action == ASSOCIATION_REFUSED]
    assert refused.region_code is None and "fingerprint" in refused.detail["detail"]


def test_a_tls_only_gateway(
    tls_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], Gateway],
    pki: Pki,
    client: Issued,
) -> None:
    settings = tls_settings(dicom_plain_enabled=False)
    start_gateway(settings)
    ok = _dcmtk("echoscu", settings.dicom_tls_port, "TLS_CAMI", _tls(client, pki))
    assert ok.returncode == 0, ok.stderr
    plain = _dcmtk("echoscu", settings.dicom_port, "IRK_CAMI", [])
    assert plain.returncode != 0 and "Association Request Failed" in plain.stderr


def test_tls_settings_and_sources_are_checked_at_start(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], Gateway],
    tls_settings: Callable[..., Settings],
    pki: Pki,
    tmp_path: Path,
) -> None:
    with pytest.raises(ValidationError, match="dicom_tls_cert_file"):
        make_settings(dicom_tls_port=free_port())
    with pytest.raises(ValidationError, match="no listener"):
        make_settings(dicom_plain_enabled=False)
    with pytest.raises(ConfigError, match=r"tls-cami, pin-cami .*dicom_tls_client_ca_file"):
        start_gateway(tls_settings(dicom_tls_client_ca_file=None))
    with pytest.raises(ConfigError, match="cannot load certificate"):
        start_gateway(tls_settings(dicom_tls_key_file=pki.ca))
    bad = tmp_path / "bad-sources.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {"name": "x", "ae_title": "X", "region": "38", "tls_fingerprint_sha256": "abc"}
                ]
            }
        )
    )
    with pytest.raises(ConfigError, match="not a SHA-256 fingerprint"):
        start_gateway(tls_settings(sources_file=bad))


@pytest.fixture
def storescp_over_tls(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, Path]]:
    """DCMTK's storescp on TLS, requiring a client certificate from our CA, writing what it
    receives bit for bit."""
    port, folder = free_port(), tmp_path / "archive"
    folder.mkdir()
    process = subprocess.Popen(
        [require_tool("storescp"), "+tls", str(pki.server.key), str(pki.server.cert),
         "+cf", str(pki.ca), "+B", "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, process=process)
        yield port, folder
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_results_go_back_by_c_store_over_tls(
    tmp_path: Path, pki: Pki, client: Issued, storescp_over_tls: tuple[int, Path]
) -> None:
    port, folder = storescp_over_tls
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    prepare_index(db)
    store = FolderStore(tmp_path / "objects")
    seeded = next(s for s in seed(db, store, utcnow()).studies if "sc" in s.result_ids)
    archive = {"host": "127.0.0.1", "port": port, "ae_title": "ARCHIVE", "kinds": ["sc"]}
    destinations = Destinations(
        DestinationsFile(
            destinations=[
                DicomDestination(
                    name="archive-tls", protocol="dicom", tls=True, ca_file=pki.ca,
                    client_cert=client.cert, client_key=client.key, **archive,
                ),
                DicomDestination(name="archive-plain", protocol="dicom", **archive),
                DicomDestination(
                    name="archive-untrusted", protocol="dicom", tls=True, ca_file=pki.issue(
                        "other", rogue=True).cert, **archive,
                ),
            ]
        )
    )  # fmt: skip
    delivery = Delivery(db, store, destinations, calling_ae="AIGW", timeout_s=30)

    def claim(destination: str) -> Claim:
        return Claim(0, seeded.result_ids["sc"], destination, 1, utcnow())

    assert delivery(claim("archive-tls")) == "C-STORE 0x0000 over TLS"
    (received,) = folder.iterdir()
    sent = store.get(f"results/{seeded.name}/sc.dcm")
    assert dataset_bytes(received.read_bytes()) == dataset_bytes(sent)
    with pytest.raises(ScuError, match=r"ARCHIVE@127\.0\.0\.1"):
        delivery(claim("archive-plain"))  # a TLS archive does not speak plain TCP ...
    with pytest.raises(ScuError, match="over TLS"):
        delivery(claim("archive-untrusted"))  # ... nor do we trust a certificate we cannot verify
    db.dispose()


def test_a_tls_destination_names_its_files_only_with_tls() -> None:
    with pytest.raises(ValidationError, match="need tls: true"):
        DicomDestination(
            name="x", protocol="dicom", host="h", port=104, ae_title="X", ca_file=Path("ca.crt")
        )


def test_the_api_over_https_with_secure_cookies(
    tmp_path: Path, pki: Pki, start_gateway: Callable[[Settings], Gateway],
    make_settings: Callable[..., Settings],
) -> None:  # fmt: skip
    from gateway.access.tokens import create_token

    port = free_port()
    gateway = start_gateway(
        make_settings(
            http_port=port, http_tls_cert_file=pki.server.cert, http_tls_key_file=pki.server.key
        )
    )
    wait_for_port(port)
    _, secret = create_token(gateway.parts.db, "admin", name="tls-test")
    context = ssl.create_default_context(cafile=str(pki.ca))
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context, timeout=30) as https:
        assert https.get("/healthz").status_code == 200
        form = https.get("/dashboard/login")  # the login form's CSRF token and its cookie
        assert form.headers["strict-transport-security"] == "max-age=31536000"
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
        assert csrf is not None
        login = https.post("/dashboard/login", data={"token": secret, "csrf": csrf.group(1)})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        metrics = https.get("/metrics").text
        assert 'aigw_dicom_refusals_total{reason="tls_handshake",stage="connection"} 0.0' in metrics
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    with pytest.raises(httpx.ConnectError):  # a certificate we have no CA for
        httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=10)
