"""The REST API against a real uvicorn server and a real database (SQLite, and PostgreSQL
for the whole read path): filters, detail, downloads, registry actions, outbox retry, the
rules tester, metrics, readiness going red, and bad input refused with nothing changed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.demo.synthetic import chest_xray_study, write_study
from gateway.index.database import Database
from gateway.index.tables import DeviceRegionRow, DeviceRow, OutboxRow, utcnow
from tests.control_plane_data import (
    DEVICES,
    Running,
    Seed,
    client_for,
    running_api,
)
from tests.external.devices import manifest as external_manifest
from tests.onnx_models import classifier_with_heatmap, manifest_dict
from tests.services import Postgres, postgres_server
from tests.services.processes import free_port

UPLOAD_LIMIT = 4 * 1024 * 1024


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Running, Seed]]:
    db = Database(f"sqlite:///{tmp_path / 'api.db'}")
    yield from running_api(db, tmp_path, UPLOAD_LIMIT)


def test_study_filters_and_detail(running: tuple[Running, Seed]) -> None:
    server, data = running
    with client_for(server) as api:
        everything = api.get("/api/v1/studies").json()
        assert {s["study_uid"] for s in everything} == {s.uid for s in data.studies}
        only_38 = api.get("/api/v1/studies", params={"region": "38"}).json()
        assert {s["study_uid"] for s in only_38} == {s.uid for s in data.by_region("38")}
        gkb = api.get("/api/v1/studies", params={"source": "irk-gkb1"}).json()
        assert [s["study_uid"] for s in gkb] == [data.study("irk-2").uid]
        ct = api.get("/api/v1/studies", params={"modality": "CT"}).json()
        assert {s["study_uid"] for s in ct} == {
            s.uid for s in data.studies if "dev-ct" in s.devices
        }
        ct_chest = api.get("/api/v1/studies", params={"study_type": "ct_chest"}).json()
        assert {s["study_uid"] for s in ct_chest} == {s["study_uid"] for s in ct}
        recent = api.get(
            "/api/v1/studies",
            params={"received_from": (data.now - timedelta(hours=12)).isoformat()},
        ).json()
        assert {s["study_uid"] for s in recent} == {
            s.uid for s in data.studies if s.received_ago < timedelta(hours=12)
        }
        assert api.get("/api/v1/studies", params={"state": "failed"}).json() == []
        page = api.get("/api/v1/studies", params={"limit": 2, "offset": 1}).json()
        assert [s["study_uid"] for s in page] == [s["study_uid"] for s in everything[1:3]]

        target = data.study("irk-3")
        detail = api.get(f"/api/v1/studies/{target.uid}").json()
    assert detail["patient_id"] == "PAT-irk-3"
    assert detail["source"] == "irk-cami" and detail["region"] == "38"
    assert [s["modality"] for s in detail["series"]] == ["DX"]
    assert [e["state"] for e in detail["timeline"]] == ["routed"]
    assert sorted(j["device"] for j in detail["jobs"]) == ["dev-cxr@1.0.0", "dev-emk@1.0.0"]
    assert all(j["findings"][0]["label_en"] == "Nodule" for j in detail["jobs"])
    assert {r["kind"] for r in detail["results"]} == {"sr", "sc", "semd"}
    sr = next(r for r in detail["results"] if r["kind"] == "sr")
    assert sr["deliveries"] == {"pacs": "failed"}


def test_jobs_with_timings_and_downloads(running: tuple[Running, Seed]) -> None:
    server, data = running
    target = data.study("irk-1")
    with client_for(server) as api:
        jobs = api.get("/api/v1/jobs", params={"study_uid": target.uid}).json()
        assert [j["job_id"] for j in jobs] == target.job_ids
        job = api.get(f"/api/v1/jobs/{target.job_ids[0]}").json()
        assert job["timings_ms"]["infer"] == pytest.approx(205.0)
        assert job["findings"][0]["positive"] is True
        assert job["started_at"] < job["finished_at"]
        failed = api.get("/api/v1/jobs", params={"state": "failed"}).json()
        assert [j["study_uid"] for j in failed] == [data.study("tula-failed").uid]
        by_device = api.get("/api/v1/jobs", params={"device": "dev-emk"}).json()
        assert [j["study_uid"] for j in by_device] == [data.study("irk-3").uid]

        sr = api.get(f"/api/v1/results/{target.result_ids['sr']}/content")
        assert sr.status_code == 200
        assert sr.headers["content-type"] == "application/dicom"
        assert sr.content == server.store.get("results/irk-1/sr.dcm")
        semd_meta = api.get(f"/api/v1/results/{target.result_ids['semd']}").json()
        assert semd_meta["meta"] == {"sidecar": "irk-1"}
        semd = api.get(f"/api/v1/results/{target.result_ids['semd']}/content")
        assert semd.headers["content-type"].startswith("application/xml")
        assert semd.text == "<ClinicalDocument>irk-1</ClinicalDocument>"
        assert api.get("/api/v1/results/999999/content").status_code == 404


def test_registry_actions(running: tuple[Running, Seed], tmp_path: Path) -> None:
    server, _ = running
    with client_for(server) as api:
        listed = api.get("/api/v1/devices").json()
        assert {d["key"] for d in listed} == {"dev-cxr@1.0.0", "dev-ct@1.0.0", "dev-emk@1.0.0"}
        emk = api.get("/api/v1/devices/dev-emk").json()
        assert emk["group"] == "emk_data_analysis"
        assert emk["notice_en"] == "Test model. Not for clinical use."
        assert emk["manifest"]["id"] == "dev-emk"

        off = api.put("/api/v1/devices/dev-emk/regions/38", json={"enabled": False})
        assert off.status_code == 200 and "38" not in off.json()["regions"]
        on = api.put("/api/v1/devices/dev-emk/regions/71", json={"enabled": True})
        assert on.json()["regions"] == ["71"]
        assert [m.id for m in server.registry.active_for_region("71")].count("dev-emk") == 1
        disabled = api.patch("/api/v1/devices/dev-ct@1.0.0", json={"enabled": False})
        assert disabled.json()["enabled"] is False
        assert not server.registry.get("dev-ct@1.0.0").enabled

        model = classifier_with_heatmap()
        manifest = yaml.safe_dump(manifest_dict(model, id="dev-new", version="2.0.0"))
        created = api.post(
            "/api/v1/devices",
            files={"manifest": ("manifest.yaml", manifest), "model": ("model.onnx", model)},
        )
        assert created.status_code == 201, created.text
        assert created.json() == {"device": created.json()["device"], "new": True}
        assert api.get("/api/v1/devices/dev-new@2.0.0").json()["version"] == "2.0.0"
        assert server.registry.model_bytes("dev-new@2.0.0") == model

        # An external device (the vendor's service) is uploaded without a model.
        vendor = yaml.safe_dump(external_manifest(free_port()), allow_unicode=True)
        external = api.post("/api/v1/devices", files={"manifest": ("manifest.yaml", vendor)})
        assert external.status_code == 201, external.text
        assert external.json()["device"]["runtime"] == "external"
        assert api.get("/api/v1/devices/vendor-cxr").json()["manifest"]["external"]["port"] > 0


def test_outbox_status_and_retry_now(running: tuple[Running, Seed]) -> None:
    server, data = running
    failed_id = data.study("irk-2").outbox_ids[0]
    undelivered = _undelivered(data)
    with client_for(server) as api:
        destinations = api.get("/api/v1/destinations").json()
        assert destinations == [
            {
                "destination": "pacs",
                "protocol": "dicom",
                "pending": 0,
                "delivered": 1,
                "failed": undelivered,
                "last_delivered_at": destinations[0]["last_delivered_at"],
                "last_error": "association rejected",
            }
        ]
        failed = api.get("/api/v1/outbox", params={"state": "failed"}).json()
        assert len(failed) == undelivered and failed_id in {o["id"] for o in failed}
        before = utcnow()
        retried = api.post(f"/api/v1/outbox/{failed_id}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["state"] == "pending"
        delivered_id = data.study("irk-1").outbox_ids[0]
        again = api.post(f"/api/v1/outbox/{delivered_id}/retry")
        assert again.status_code == 409 and "delivered" in again.json()["detail"]
        assert api.post("/api/v1/outbox/999999/retry").status_code == 404
    with server.db.session() as session:
        row = session.get(OutboxRow, failed_id)
        assert row is not None and row.state == "pending"
        assert row.next_attempt_at >= before - timedelta(seconds=1)


def _undelivered(data: Seed) -> int:
    return sum(1 for s in data.studies if s.job_state == "inferred" and not s.delivered_after)


def test_rules_tester_explains_an_uploaded_file(
    running: tuple[Running, Seed], tmp_path: Path
) -> None:
    server, _ = running
    files = write_study(chest_xray_study(seed=3), tmp_path / "cxr")
    with client_for(server, "viewer", "38") as api:
        answer = api.post(
            "/api/v1/rules/test",
            files=[("file", (path.name, path.read_bytes())) for path in files[:1]],
            data={"region": "77"},  # a scoped token tests its own region whatever it asks
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["region"] == "38"
    assert "rule fluorography" in body["explanation"]
    assert files[0].name in body["explanation"] and str(tmp_path) not in body["explanation"]
    # Region 38 enables all three test devices (each accepts chest DX); 77 only dev-cxr.
    assert {job["device_id"] for job in body["decision"]["jobs"]} == set(DEVICES)
    with client_for(server) as api:
        for_77 = api.post(
            "/api/v1/rules/test",
            files=[("file", (files[0].name, files[0].read_bytes()))],
            data={"region": "77"},
        ).json()
    assert {job["device_id"] for job in for_77["decision"]["jobs"]} == {"dev-cxr"}


def test_metrics_count_the_index(running: tuple[Running, Seed]) -> None:
    server, data = running
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert f'aigw_studies{{state="routed"}} {float(len(data.studies))}' in text
    assert f'aigw_delivery_failures{{destination="pacs"}} {float(_undelivered(data))}' in text
    inferred_cxr = sum(
        s.devices.count("dev-cxr") for s in data.studies if s.job_state == "inferred"
    )
    assert (
        f'aigw_inference_latency_seconds_count{{device="dev-cxr@1.0.0"}} {float(inferred_cxr)}'
        in text
    )
    assert "aigw_instances_received_total 0.0" in text


def _enablement(session: Session) -> set[tuple[str, str]]:
    rows = session.execute(select(DeviceRegionRow.device_id, DeviceRegionRow.region_code))
    return {(device, region) for device, region in rows}


def test_bad_input_is_refused_and_changes_nothing(running: tuple[Running, Seed]) -> None:
    server, data = running
    with server.db.session() as session:
        enablement = _enablement(session)
        devices = session.scalar(select(func.count(DeviceRow.id)))
    with client_for(server) as api:
        malformed = api.put(
            "/api/v1/devices/dev-cxr/regions/38",
            content=b'{"enabled": fal',
            headers={"Content-Type": "application/json"},
        )
        assert malformed.status_code == 422 and "JSON" in str(malformed.json()["detail"])
        wrong_type = api.put("/api/v1/devices/dev-cxr/regions/38", json={"enabled": "no"})
        assert wrong_type.status_code == 422
        assert wrong_type.json()["errors"][0]["loc"] == ["body", "enabled"]
        extra = api.put("/api/v1/devices/dev-cxr/regions/38", json={"enabled": False, "x": 1})
        assert extra.status_code == 422
        unknown_device = api.put("/api/v1/devices/nope/regions/38", json={"enabled": True})
        assert unknown_device.status_code == 404 and "nope" in unknown_device.json()["detail"]
        unknown_region = api.put("/api/v1/devices/dev-cxr/regions/99", json={"enabled": True})
        assert unknown_region.status_code == 404
        bad_region = api.put("/api/v1/devices/dev-cxr/regions/3x", json={"enabled": True})
        assert bad_region.status_code == 422
        assert api.get("/api/v1/jobs/abc").status_code == 422
        assert api.get("/api/v1/studies", params={"limit": 0}).status_code == 422
        assert api.get("/api/v1/studies", params={"received_from": "yesterday"}).status_code == 422
        # A time without its zone is ambiguous: refused with the reason, not a server error.
        naive = api.get("/api/v1/studies", params={"received_from": "2026-01-01T00:00:00"})
        assert naive.status_code == 422 and "timezone" in str(naive.json()["detail"])
        aware = api.get("/api/v1/studies", params={"received_from": "2026-01-01T00:00:00Z"})
        assert aware.status_code == 200
        assert api.get("/api/v1/audit", params={"since": "2026-01-01T00:00:00"}).status_code == 422
        # Whatever is not a UID never reaches the index or the audit log.
        for bad in ("1" * 65, "1.2.3/../x", "abc"):
            assert api.get("/api/v1/jobs", params={"study_uid": bad}).status_code == 422
        assert api.get("/api/v1/studies/1.2.3.4").json() == {
            "detail": "no study 1.2.3.4",
            "errors": [],
        }

        model = classifier_with_heatmap()
        oversized = api.post(
            "/api/v1/devices",
            files={
                "manifest": ("manifest.yaml", yaml.safe_dump(manifest_dict(model, id="dev-big"))),
                "model": ("model.onnx", b"\0" * (UPLOAD_LIMIT + 1)),
            },
        )
        assert oversized.status_code == 413
        assert "api_max_upload_bytes" in oversized.json()["detail"]
        big_dicom = api.post(
            "/api/v1/rules/test", files={"file": ("big.dcm", b"\0" * (UPLOAD_LIMIT + 1))}
        )
        assert big_dicom.status_code == 413
        bad_manifest = api.post(
            "/api/v1/devices",
            files={"manifest": ("manifest.yaml", "id: [unclosed"), "model": ("m.onnx", model)},
        )
        assert bad_manifest.status_code == 422 and bad_manifest.json()["detail"]
        wrong_model = api.post(
            "/api/v1/devices",
            files={
                "manifest": ("manifest.yaml", yaml.safe_dump(manifest_dict(model, id="dev-bad"))),
                "model": ("model.onnx", b"not an onnx file"),
            },
        )
        assert wrong_model.status_code == 422 and "dev-bad" in wrong_model.json()["detail"]
        missing_part = api.post("/api/v1/devices", files={"manifest": ("m.yaml", "id: x")})
        assert missing_part.status_code == 422
        not_dicom = api.post("/api/v1/rules/test", files={"file": ("x.dcm", b"hello")})
        assert not_dicom.status_code == 422 and "x.dcm" in not_dicom.json()["detail"]
        no_token = httpx.get(f"{server.url}/api/v1/studies", timeout=10)
        assert no_token.status_code == 401 and no_token.json()["detail"]
    with server.db.session() as session:
        assert _enablement(session) == enablement
        assert session.scalar(select(func.count(DeviceRow.id))) == devices
    assert not list(server.store.keys("models/dev-big")) and not list(
        server.store.keys("models/dev-bad")
    )
    assert data.studies


def test_readiness_goes_red_when_the_object_store_is_gone(
    running: tuple[Running, Seed], tmp_path: Path
) -> None:
    server, _ = running
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    root = tmp_path / "objects"
    shutil.rmtree(root)
    root.write_text("a file where the object folder was")
    red = httpx.get(f"{server.url}/readyz", timeout=10)
    assert red.status_code == 503
    assert red.json()["checks"]["database"] == "ok"
    assert red.json()["checks"]["object_store"] != "ok"
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres_server() as server:
        yield server


def test_postgresql_read_path_and_readiness_when_the_database_stops(
    pg: Postgres, tmp_path: Path
) -> None:
    db = Database(pg.create_database("aigw_api"))
    for server, data in running_api(db, tmp_path, UPLOAD_LIMIT):
        with client_for(server, "region_admin", "71") as api:
            listed = api.get("/api/v1/studies", params={"modality": "DX"}).json()
            assert {s["study_uid"] for s in listed} == {
                s.uid for s in data.by_region("71") if "dev-ct" not in s.devices
            }
            target = data.study("tula-1")
            detail = api.get(f"/api/v1/studies/{target.uid}").json()
            assert detail["jobs"][0]["findings"][0]["positive"] is True
            download = api.get(f"/api/v1/results/{target.result_ids['sc']}/content")
            assert download.content == server.store.get("results/tula-1/sc.dcm")
            assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
            pg.stop()
            try:
                red = httpx.get(f"{server.url}/readyz", timeout=30)
                assert red.status_code == 503
                assert red.json()["checks"]["database"].startswith("database unreachable")
                assert red.json()["checks"]["object_store"] == "ok"
                # The API says so in its one error schema, with nothing of the SQL in it.
                down = api.get("/api/v1/studies")
                assert down.status_code == 503
                assert down.json() == {
                    "detail": "the index database is unavailable now; try again later",
                    "errors": [],
                }
            finally:
                pg.start()
            assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
