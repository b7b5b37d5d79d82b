"""The audit trail is complete and fails closed: a read whose audit row the database refuses
is not served (API 503, dashboard 503, login 503) and is served again once it can be
recorded; device changes through the API and the CLI, result exports, the configuration
loaded at start and the devices registered then are events; old events are pruned by the
retention service ``aigw serve`` runs; ``aigw audit`` lists and filters them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import text

from gateway.access import audit
from gateway.access.audit import SYSTEM, AuditEvent
from gateway.access.retention import AuditRetention
from gateway.access.tokens import create_token
from gateway.cli.app import cli
from gateway.index.database import Database
from gateway.index.tables import AuditRow, utcnow
from gateway.settings import Settings
from tests.control_plane_data import Running, Seed, client_for, running_api
from tests.onnx_models import classifier_with_heatmap, manifest_dict, write_device
from tests.services import ROOT

# The database itself refuses every new audit row, as a full disk or a revoked grant would.
REFUSE_AUDIT = (
    "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit log refused'); END"
)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Running, Seed]]:
    yield from running_api(Database(f"sqlite:///{tmp_path / 'audit.db'}"), tmp_path)


def _login_form(client: httpx.Client) -> str:
    page = client.get("/dashboard/login").text
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert found
    return found.group(1)


def test_a_read_that_cannot_be_audited_is_not_served(running: tuple[Running, Seed]) -> None:
    server, data = running
    study = data.study("irk-1")
    _, secret = create_token(server.db, "admin", name="dashboard user")
    with client_for(server) as api, httpx.Client(base_url=server.url, timeout=30) as browser:
        browser.post("/dashboard/login", data={"token": secret, "csrf": _login_form(browser)})
        assert browser.get(f"/dashboard/studies/{study.uid}").status_code == 200
        with server.db.session() as session:
            session.execute(text(REFUSE_AUDIT))
        before = len(audit.query(server.db, limit=100_000))
        for path in (
            "/api/v1/studies",
            f"/api/v1/studies/{study.uid}",
            f"/api/v1/jobs/{study.job_ids[0]}",
            f"/api/v1/results/{study.result_ids['sr']}/content",
        ):
            refused = api.get(path)
            assert refused.status_code == 503, path
            assert "audit log" in refused.json()["detail"]
            assert "PAT-irk-1" not in refused.text and b"DICM" not in refused.content
        page = browser.get(f"/dashboard/studies/{study.uid}")
        assert page.status_code == 503 and "PAT-irk-1" not in page.text
        image = browser.get(f"/dashboard/results/{study.result_ids['sc']}/image.png")
        assert image.status_code == 503 and not image.content.startswith(b"\x89PNG")
        with httpx.Client(base_url=server.url, timeout=30) as newcomer:
            form = _login_form(newcomer)
            login = newcomer.post("/dashboard/login", data={"token": secret, "csrf": form})
            assert login.status_code == 503 and "aigw_session" not in login.headers.get(
                "set-cookie", ""
            )
        assert api.get("/api/v1/devices").status_code == 200  # no patient data: served
        assert len(audit.query(server.db, limit=100_000)) == before
        with server.db.session() as session:
            session.execute(text("DROP TRIGGER refuse_audit"))
        assert api.get(f"/api/v1/studies/{study.uid}").json()["patient_id"] == "PAT-irk-1"


def test_device_changes_through_the_api_and_the_cli_are_audited(
    running: tuple[Running, Seed], tmp_path: Path
) -> None:
    server, _ = running
    with client_for(server, "region_admin", "38") as admin38:
        admin38.put("/api/v1/devices/dev-emk/regions/38", json={"enabled": False})
    with client_for(server) as api:
        api.patch("/api/v1/devices/dev-ct@1.0.0", json={"enabled": False}).raise_for_status()
        api.patch("/api/v1/devices/dev-ct@1.0.0", json={"enabled": True}).raise_for_status()
        model = classifier_with_heatmap()
        manifest = yaml.safe_dump(manifest_dict(model, id="dev-new", version="2.0.0"))
        files: dict[str, tuple[str, str | bytes]] = {
            "manifest": ("manifest.yaml", manifest),
            "model": ("model.onnx", model),
        }
        assert api.post("/api/v1/devices", files=files).status_code == 201
        assert api.post("/api/v1/devices", files=files).json()["new"] is False  # no change
    env = {"AIGW_DATABASE_URL": server.db.url, "AIGW_LOG_JSON": "false"}
    env["AIGW_STORE_DIR"] = str(tmp_path / "objects")
    cli_run = CliRunner().invoke(cli, ["models", "disable", "dev-cxr@1.0.0"], env=env)
    assert cli_run.exit_code == 0, cli_run.output
    device_events = [
        AuditEvent.DEVICE_REGION_DISABLED,
        AuditEvent.DEVICE_DISABLED,
        AuditEvent.DEVICE_ENABLED,
        AuditEvent.DEVICE_REGISTERED,
    ]
    found = list(reversed(audit.query(server.db, events=device_events)))
    assert [(e.event, e.token_name, e.detail["device"]) for e in found] == [
        (AuditEvent.DEVICE_REGION_DISABLED, "test-region_admin-38", "dev-emk"),
        (AuditEvent.DEVICE_DISABLED, "test-admin-all", "dev-ct@1.0.0"),
        (AuditEvent.DEVICE_ENABLED, "test-admin-all", "dev-ct@1.0.0"),
        (AuditEvent.DEVICE_REGISTERED, "test-admin-all", "dev-new@2.0.0"),
        (AuditEvent.DEVICE_DISABLED, found[-1].token_name, "dev-cxr@1.0.0"),
    ]
    assert found[0].region == "38" and found[0].detail["changed"] is True
    assert found[3].detail["model_sha256"] == hashlib.sha256(model).hexdigest()
    assert found[-1].role == "operator" and found[-1].action == "aigw models disable"
    assert {e.client_ip for e in found[:4]} == {"127.0.0.1"}


def test_start_records_the_configuration_and_prunes_old_events(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from workers.app import build_gateway

    write_device(tmp_path / "seed" / "dev-seed", classifier_with_heatmap(), id="dev-seed")
    settings = make_settings(
        embedded_worker=False,
        devices_dir=tmp_path / "seed",
        routing_file=ROOT / "gateway" / "configs" / "routing.yaml",
        audit_retention_days=30,
    )
    db = Database(settings.resolved_database_url)
    db.migrate()
    with db.session() as session:
        for age, name in ((timedelta(days=31), "old"), (timedelta(days=29), "recent")):
            session.add(
                AuditRow(at=utcnow() - age, event="read", token_name=name, role="viewer",
                         action="GET /api/v1/studies", detail={})
            )  # fmt: skip
    gateway = build_gateway(settings)
    retention = [s for s in gateway.services if isinstance(s, AuditRetention)]
    assert len(retention) == 1
    retention[0].start()
    retention[0].stop()
    try:
        loaded = audit.query(db, events=[AuditEvent.CONFIG_LOADED])
        files = {e.detail["setting"]: e.detail for e in loaded}
        assert set(files) >= {"sources_file", "regions_file", "routing_file", "semd_file"}
        for detail in files.values():
            content = Path(detail["file"]).read_bytes()
            assert detail["sha256"] == hashlib.sha256(content).hexdigest()
        assert {(e.role, e.action) for e in loaded} == {("system", "aigw serve start")}
        registered = audit.query(db, events=[AuditEvent.DEVICE_REGISTERED])
        assert [(e.detail["device"], e.role) for e in registered] == [("dev-seed@1.0.0", "system")]
        reads = audit.query(db, events=[AuditEvent.READ])
        assert [e.token_name for e in reads] == ["recent"]
    finally:
        gateway.parts.db.dispose()
        db.dispose()


def test_aigw_audit_lists_and_filters_events(running: tuple[Running, Seed], tmp_path: Path) -> None:
    server, data = running
    target = data.study("tula-1")
    with client_for(server, "viewer", "71") as api:
        api.get(f"/api/v1/studies/{target.uid}").raise_for_status()
        api.get(f"/api/v1/results/{target.result_ids['sr']}/content").raise_for_status()
    audit.record(server.db, SYSTEM, AuditEvent.CONFIG_LOADED, "test", detail={"file": "x"})
    env = {"AIGW_DATABASE_URL": server.db.url, "AIGW_LOG_JSON": "false"}
    env["AIGW_STORE_DIR"] = str(tmp_path / "objects")
    runner = CliRunner()

    export = runner.invoke(cli, ["results", target.uid, "--out", str(tmp_path / "out")], env=env)
    assert export.exit_code == 0, export.output
    listed = runner.invoke(cli, ["audit", "--study", target.uid], env=env)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert lines[-1] == "3 events"
    assert [line.split()[2] for line in lines[:-1]] == [
        "result_exported",
        "result_downloaded",
        "read",
    ]
    as_json = runner.invoke(
        cli, ["audit", "--json", "--event", "read", "--event", "result_downloaded"], env=env
    )
    entries = [json.loads(line) for line in as_json.output.splitlines()]
    assert [e["event"] for e in entries] == ["result_downloaded", "read"]
    assert {e["token_name"] for e in entries} == {"test-viewer-71"}
    tomorrow = (utcnow() + timedelta(days=1)).date().isoformat()
    future = runner.invoke(cli, ["audit", "--since", tomorrow], env=env)
    assert future.output.strip() == "0 events"
    region = runner.invoke(cli, ["audit", "--region", "71", "--event", "token_created"], env=env)
    assert "test-viewer-71" in region.output and "1 events" in region.output
    wrong = runner.invoke(cli, ["audit", "--event", "nope"], env=env)
    assert wrong.exit_code != 0 and "read" in wrong.output  # the choices are listed
    assert "PAT-" not in listed.output + as_json.output  # patient IDs are never in the trail
