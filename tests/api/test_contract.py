"""The API's contract, against a real ``create_app`` under uvicorn: schemathesis generates
requests from the live OpenAPI (fixed seed, bounded examples, every check, plus our own: no
server internals in any answer) and finds no server error and no schema violation; the
inputs that once crashed handlers are refused in the one error schema; the OpenAPI
documents every error an operation answers; security headers over HTTP and HTTPS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.access.tokens import create_token
from gateway.api import create_app
from gateway.api.errors import ErrorResponse
from gateway.index.database import Database
from tests.control_plane_data import Running, Seed, client_for, running_api
from tests.onnx_models import classifier_with_heatmap, manifest_dict
from tests.services import ROOT, free_port, wait_for_port

HERE = Path(__file__).parent
SEED = 20261206
EXAMPLES = 25  # per operation; the README says how to run with more
UPLOAD_LIMIT = 4 * 1024 * 1024


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Running, Seed]]:
    yield from running_api(Database(f"sqlite:///{tmp_path / 'contract.db'}"), tmp_path)


def _schemathesis(server: Running, secret: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    junit = tmp_path / "junit.xml"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": str(HERE / "schemathesis_hooks.py"),
        "AIGW_SERVER_PATHS": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--no-color",
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{server.url}/api/openapi.json",
        "--header",
        f"Authorization: Bearer {secret}",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
    ]
    # In tmp_path: schemathesis keeps a cache folder where it runs.
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    running: tuple[Running, Seed], tmp_path: Path
) -> None:
    server, _ = running
    _, secret = create_token(server.db, "admin", name="schemathesis")
    run = _schemathesis(server, secret, tmp_path)
    print(run.stdout[-6000:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-4000:]
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    cases = suite.findall(".//testcase")
    paths = httpx.get(f"{server.url}/api/openapi.json", timeout=10).json()["paths"]
    operations = {
        f"{method.upper()} {path}" for path, methods in paths.items() for method in methods
    }
    assert operations <= {case.get("name") for case in cases}  # every operation was run
    assert not [case.get("name") for case in cases if len(case) > 0]  # no failure, no error
    assert re.search(r"(\d+) generated, \1 passed", run.stdout), run.stdout[-2000:]


def _error(answer: httpx.Response, status: int) -> ErrorResponse:
    assert answer.status_code == status, answer.text
    return ErrorResponse.model_validate(answer.json())


def test_inputs_that_crashed_handlers_are_refused_in_the_one_error_schema(
    running: tuple[Running, Seed], tmp_path: Path
) -> None:
    server, _ = running
    too_big = "36893488147419103231"  # 2^65 - 1
    with client_for(server) as api:
        offset = _error(api.get("/api/v1/jobs", params={"offset": "1" * 40}), 422)
        assert offset.errors[0].loc == ["query", "offset"]
        for path in (
            f"/api/v1/jobs/{too_big}",
            f"/api/v1/results/{too_big}",
            f"/api/v1/outbox/{too_big}",
        ):
            assert "less than or equal" in _error(api.get(path), 422).detail
        _error(api.post(f"/api/v1/outbox/{too_big}/retry"), 422)
        assert _error(api.get("/api/v1/audit", params={"until": "0.5"}), 422).errors
        assert _error(api.get("/api/v1/studies", params={"study_date_to": "0"}), 422).errors
        year_one = {"received_from": "0001-01-01T00:00:00+14:00"}  # before year 1 in UTC
        assert "out of range" in _error(api.get("/api/v1/studies", params=year_one), 422).detail
        nul = _error(api.get("/api/v1/outbox", params={"destination": "pacs\x00"}), 422)
        assert nul.errors[0].loc == ["query", "destination"]
        unversioned = _error(api.patch("/api/v1/devices/0", json={"enabled": False}), 422)
        assert unversioned.errors[0].loc == ["path", "device_key"]
        not_json = api.put(
            "/api/v1/devices/dev-cxr/regions/38",
            content=b"\xff\xfe",
            headers={"Content-Type": "application/json"},
        )
        assert not_json.status_code in (400, 422)
        ErrorResponse.model_validate(not_json.json())
        unknown = _error(api.get("/api/v1/nothing-here"), 404)
        assert unknown.detail == "Not Found"
        wrong_method = _error(api.delete("/api/v1/devices"), 405)
        assert wrong_method.detail == "Method Not Allowed"
        assert api.delete("/api/v1/devices").headers["allow"] == "GET, POST"

        # An upload's errors name the upload, never the server's temporary folder.
        model = classifier_with_heatmap()
        not_utf8 = api.post(
            "/api/v1/devices",
            files={"manifest": ("m.yaml", b"\x89PNG\r\n"), "model": ("m.onnx", model)},
        )
        assert "(uploaded)" in _error(not_utf8, 422).detail
        escaping = manifest_dict(model, id="dev-escape")
        escaping["onnx"]["file"] = "../../escaped.onnx"
        outside = api.post(
            "/api/v1/devices",
            files={"manifest": ("m.yaml", yaml.safe_dump(escaping)), "model": ("m.onnx", model)},
        )
        assert "inside the manifest's folder" in _error(outside, 422).detail
    assert not list(Path("/tmp").glob("escaped.onnx"))
    for answer in (not_utf8, outside):
        assert "/tmp" not in answer.text and "aigw-upload" not in answer.text


def test_the_openapi_documents_every_error_in_the_one_schema(
    running: tuple[Running, Seed],
) -> None:
    server, _ = running
    schema = httpx.get(f"{server.url}/api/openapi.json", timeout=10).json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error_ref = "#/components/schemas/ErrorResponse"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            declared = operation["responses"]
            errors = {code: spec for code, spec in declared.items() if code[0] in "45"}
            # Health takes no token and no parameter, and answers "degraded" instead of an
            # error: it must speak while the database, which holds the tokens, is away.
            if path.startswith("/api/v1/") and path != "/api/v1/health":
                assert {"401", "422", "503"} <= set(errors), (method, path)
            for code, spec in errors.items():
                if path.startswith("/api/v1/"):
                    media = spec["content"]["application/json"]["schema"]
                    assert media == {"$ref": error_ref}, (method, path, code)
            for parameter in operation.get("parameters", []):
                if parameter["schema"].get("type") == "integer" and parameter["in"] == "path":
                    assert parameter["schema"]["maximum"] == 2**63 - 1, (path, parameter)


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _headers(response: httpx.Response) -> dict[str, Any]:
    return {name: response.headers.get(name) for name in response.headers}


def test_security_headers_and_hsts_only_over_https(
    running: tuple[Running, Seed], tmp_path: Path
) -> None:
    server, data = running
    with client_for(server) as api:
        page = httpx.get(f"{server.url}/dashboard/login", timeout=10)
        study = api.get(f"/api/v1/studies/{data.study('irk-1').uid}")
        css = httpx.get(f"{server.url}/dashboard/static/style.css", timeout=10)
    csp = page.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp  # no script at all
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["cache-control"] == "no-store"
    assert study.headers["cache-control"] == "no-store"
    assert study.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert study.headers["x-content-type-options"] == "nosniff"
    assert "cache-control" not in css.headers  # the stylesheet may be cached
    assert "strict-transport-security" not in _headers(page)

    cert_file, key_file = _certificate(tmp_path)
    port = free_port()
    tls = uvicorn.Server(
        uvicorn.Config(
            create_app(server.db, server.store, server.settings, server.registry),
            host="127.0.0.1",
            port=port,
            ssl_certfile=str(cert_file),
            ssl_keyfile=str(key_file),
            log_config=None,
        )
    )
    thread = threading.Thread(target=tls.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        trusted = ssl.create_default_context(cafile=str(cert_file))
        over_tls = httpx.get(f"https://127.0.0.1:{port}/dashboard/login", verify=trusted)
        assert over_tls.status_code == 200
        assert over_tls.headers["strict-transport-security"] == "max-age=31536000"
        cookie = over_tls.headers["set-cookie"]
        assert "secure" in cookie.lower() and "httponly" in cookie.lower()
    finally:
        tls.should_exit = True
        thread.join(timeout=10)
