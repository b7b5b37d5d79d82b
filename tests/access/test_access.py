"""Access with real tokens against a running server: a region-38 token cannot list, fetch or
guess a region-77 study (nor learn it exists), a viewer changes nothing, every patient-level
read leaves an audit row, and tokens are created, stored hashed and revoked by the CLI —
each creation and revocation an audit event under the operator's name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from gateway.access import audit
from gateway.access.audit import AuditEvent
from gateway.cli.access import tokens_group
from gateway.index.database import Database
from gateway.index.tables import ApiTokenRow, DeviceRegionRow, DeviceRow, OutboxRow
from tests.control_plane_data import Running, Seed, client_for, running_api


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Running, Seed]]:
    yield from running_api(Database(f"sqlite:///{tmp_path / 'access.db'}"), tmp_path)


def test_a_region_token_never_learns_of_another_regions_study(
    running: tuple[Running, Seed],
) -> None:
    server, data = running
    moscow = data.study("msk-1")
    ghost = "1.2.826.0.1.3680043.8.498.1"  # a well-formed UID that no study has
    with client_for(server, "viewer", "38") as api:
        listed = api.get("/api/v1/studies").json()
        assert {s["region"] for s in listed} == {"38"}
        assert {s["study_uid"] for s in listed} == {s.uid for s in data.by_region("38")}
        assert api.get("/api/v1/studies", params={"region": "77"}).json() == []
        assert moscow.uid not in str(api.get("/api/v1/jobs").json())

        # Fetching a real 77 study answers exactly as fetching one that does not exist.
        real, unknown = (
            api.get(f"/api/v1/studies/{moscow.uid}"),
            api.get(f"/api/v1/studies/{ghost}"),
        )
        assert real.status_code == unknown.status_code == 404
        assert real.json() == {"detail": f"no study {moscow.uid}", "errors": []}
        assert unknown.json() == {"detail": f"no study {ghost}", "errors": []}
        assert set(real.headers) - {"date", "content-length"} == set(unknown.headers) - {
            "date",
            "content-length",
        }
        # Nor through its job, its results or its deliveries.
        for path, what in (
            (f"/api/v1/jobs/{moscow.job_ids[0]}", "job"),
            (f"/api/v1/results/{moscow.result_ids['sr']}", "result"),
            (f"/api/v1/results/{moscow.result_ids['sr']}/content", "result"),
            (f"/api/v1/outbox/{moscow.outbox_ids[0]}", "outbox entry"),
        ):
            answer = api.get(path)
            assert answer.status_code == 404 and answer.json()["detail"].startswith(f"no {what}")
        outbox = api.get("/api/v1/outbox").json()
        assert moscow.uid not in {o["study_uid"] for o in outbox} and outbox
        assert [r["code"] for r in api.get("/api/v1/regions").json()] == ["38"]
        assert {s["region"] for s in api.get("/api/v1/sources").json()} == {"38"}
    with client_for(server, "region_admin", "38") as admin38:
        retry = admin38.post(f"/api/v1/outbox/{moscow.outbox_ids[0]}/retry")
        assert retry.status_code == 404


def test_a_viewer_cannot_change_anything(running: tuple[Running, Seed]) -> None:
    server, data = running
    failed = data.study("irk-2").outbox_ids[0]
    with server.db.session() as session:
        before = (
            {(r.device_id, r.region_code) for r in session.scalars(select(DeviceRegionRow))},
            {(r.device_id, r.enabled) for r in session.scalars(select(DeviceRow))},
            session.get(OutboxRow, failed).state,  # type: ignore[union-attr]
        )
    with client_for(server, "viewer", "38") as api:
        answers = [
            api.put("/api/v1/devices/dev-cxr/regions/38", json={"enabled": False}),
            api.patch("/api/v1/devices/dev-cxr@1.0.0", json={"enabled": False}),
            api.post(f"/api/v1/outbox/{failed}/retry"),
            api.post("/api/v1/devices", files={"manifest": ("m.yaml", "x"), "model": ("m", "x")}),
        ]
    for answer in answers:
        assert answer.status_code == 403, answer.text
        assert "cannot" in answer.json()["detail"] or "only" in answer.json()["detail"]
    with client_for(server, "region_admin", "38") as admin38:
        other = admin38.put("/api/v1/devices/dev-cxr/regions/71", json={"enabled": False})
        assert other.status_code == 403 and "38" in other.json()["detail"]
        version = admin38.patch("/api/v1/devices/dev-cxr@1.0.0", json={"enabled": False})
        assert version.status_code == 403  # a version is switched off everywhere: admin only
    with server.db.session() as session:
        after = (
            {(r.device_id, r.region_code) for r in session.scalars(select(DeviceRegionRow))},
            {(r.device_id, r.enabled) for r in session.scalars(select(DeviceRow))},
            session.get(OutboxRow, failed).state,  # type: ignore[union-attr]
        )
    assert after == before
    with client_for(server, "region_admin", "38") as admin38:
        own = admin38.put("/api/v1/devices/dev-emk/regions/38", json={"enabled": False})
        assert own.status_code == 200 and own.json()["regions"] == []
    with client_for(server, "service") as service:
        assert service.post(f"/api/v1/outbox/{failed}/retry").json()["state"] == "pending"


def test_every_patient_level_read_leaves_an_audit_row(running: tuple[Running, Seed]) -> None:
    server, data = running
    target = data.study("tula-1")
    with client_for(server, "region_admin", "71") as api:
        api.get("/api/v1/studies", params={"modality": "DX"}).raise_for_status()
        api.get(f"/api/v1/studies/{target.uid}").raise_for_status()
        api.get(f"/api/v1/jobs/{target.job_ids[0]}").raise_for_status()
        api.get(f"/api/v1/results/{target.result_ids['sr']}/content").raise_for_status()
        api.get("/api/v1/devices").raise_for_status()  # not patient-level: no row
        assert api.get(f"/api/v1/studies/{data.study('irk-1').uid}").status_code == 404
    reads = [AuditEvent.READ, AuditEvent.RESULT_DOWNLOADED]
    entries = list(reversed(audit.query(server.db, events=reads)))
    assert [(e.event, e.action, e.study_uid) for e in entries] == [
        (AuditEvent.READ, "GET /api/v1/studies", None),
        (AuditEvent.READ, f"GET /api/v1/studies/{target.uid}", target.uid),
        (AuditEvent.READ, f"GET /api/v1/jobs/{target.job_ids[0]}", target.uid),
        (
            AuditEvent.RESULT_DOWNLOADED,
            f"GET /api/v1/results/{target.result_ids['sr']}/content",
            target.uid,
        ),
    ]
    assert entries[-1].detail == {"result_id": target.result_ids["sr"], "kind": "sr"}
    for entry in entries:
        assert entry.token_name == "test-region_admin-71" and entry.role == "region_admin"
        assert entry.client_ip == "127.0.0.1" and entry.region == "71"
    listed = {s.uid for s in data.by_region("71") if "dev-ct" not in s.devices}
    assert set(entries[0].detail["study_uids"]) == listed

    # Admins query the log; a region admin sees its region's rows only; a viewer none.
    with client_for(server) as admin:
        rows = admin.get("/api/v1/audit", params={"study_uid": target.uid}).json()
        assert len(rows) == 3 and rows[0]["client_ip"] == "127.0.0.1"
        downloads = admin.get("/api/v1/audit", params={"event": "result_downloaded"}).json()
        assert [row["study_uid"] for row in downloads] == [target.uid]
    with client_for(server, "region_admin", "38") as admin38:
        seen = admin38.get("/api/v1/audit").json()
        # Its own token's creation is region 38's; nothing of region 71's reads.
        assert [row["event"] for row in seen] == ["token_created"]
    with client_for(server, "viewer", "71") as viewer:
        assert viewer.get("/api/v1/audit").status_code == 403


def test_tokens_by_the_cli_are_hashed_and_revocable(
    running: tuple[Running, Seed], tmp_path: Path
) -> None:
    server, _ = running
    runner = CliRunner()
    url = server.db.url
    env = {"AIGW_DATABASE_URL": url, "AIGW_LOG_JSON": "false"}
    created = runner.invoke(
        tokens_group, ["create", "--role", "viewer", "--region", "38", "--name", "ris"], env=env
    )
    assert created.exit_code == 0, created.output
    secret = created.output.strip().splitlines()[-1]
    assert secret.startswith("aigw_")
    with server.db.session() as session:
        row = session.scalars(select(ApiTokenRow).where(ApiTokenRow.name == "ris")).one()
        assert row.secret_sha256 != secret and len(row.secret_sha256) == 64
        token_id = row.id
    assert secret.encode() not in Path(url.split("///", 1)[1]).read_bytes()

    listed = runner.invoke(tokens_group, ["list"], env=env)
    assert "ris" in listed.output and secret not in listed.output
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{server.url}/api/v1/studies", headers=headers).status_code == 200

    refused = runner.invoke(tokens_group, ["create", "--role", "viewer"], env=env)
    assert refused.exit_code != 0 and "needs a region" in refused.output
    unknown_region = runner.invoke(
        tokens_group, ["create", "--role", "region_admin", "--region", "99"], env=env
    )
    assert unknown_region.exit_code != 0 and "unknown region" in unknown_region.output

    revoked = runner.invoke(tokens_group, ["revoke", str(token_id)], env=env)
    assert revoked.exit_code == 0, revoked.output
    after = httpx.get(f"{server.url}/api/v1/studies", headers=headers)
    assert after.status_code == 401 and after.json()["detail"] == "unknown or revoked token"
    assert runner.invoke(tokens_group, ["revoke", "424242"], env=env).exit_code != 0

    # The secret names its token (the account a failed login is counted against).
    assert secret.startswith(f"aigw_{token_id}_")
    changes = audit.query(
        server.db, events=[AuditEvent.TOKEN_CREATED, AuditEvent.TOKEN_REVOKED], token_id=None
    )
    mine = [e for e in changes if e.detail["token"]["id"] == token_id]
    assert [(e.event, e.role, e.action) for e in reversed(mine)] == [
        (AuditEvent.TOKEN_CREATED, "operator", "aigw tokens create"),
        (AuditEvent.TOKEN_REVOKED, "operator", "aigw tokens revoke"),
    ]
    assert mine[0].region == "38" and mine[0].detail["token"]["name"] == "ris"
    assert secret not in str([e.model_dump() for e in changes])
