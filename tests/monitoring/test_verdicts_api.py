"""Verdicts, device figures, modes and the usage report through the REST API (a real uvicorn
server over the seeded index): who may give a verdict and where, one current verdict per
finding with the history kept, the agreement rate moving with them, the report counting what
the seed holds, and the mode of a version changed and audited."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from gateway.access import audit
from gateway.access.audit import AuditEvent
from gateway.index.database import Database
from tests.control_plane_data import Running, Seed, client_for, running_api
from tests.services import ROOT
from workers.cli import main


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Running, Seed]]:
    yield from running_api(Database(f"sqlite:///{tmp_path / 'api.db'}"), tmp_path)


def _row(rows: list[dict[str, Any]], device: str, region: str) -> dict[str, Any]:
    return next(r for r in rows if r["device"] == device and r["region"] == region)


def test_a_radiologist_gives_verdicts_in_its_region_and_the_agreement_rate_moves(
    running: tuple[Running, Seed],
) -> None:
    server, data = running
    irk = data.study("irk-1")
    job = irk.job_ids[0]
    with client_for(server, "radiologist", "38") as api:
        first = api.post(f"/api/v1/jobs/{job}/assessment", json={"verdict": "accept"})
        assert first.status_code == 201, first.text
        assert first.json()["source"] == "api" and first.json()["author"] == "test-radiologist-38"
        figures = api.get("/api/v1/monitoring/devices").json()
        cxr = _row(figures, "dev-cxr@1.0.0", "38")
        assert (cxr["verdicts"]["total"], cxr["verdicts"]["agreement_rate"]) == (1, 1.0)
        assert {r["region"] for r in figures} == {"38"}  # its own region only

        finding = api.get(f"/api/v1/jobs/{job}").json()["findings"][0]["id"]
        rejected = api.post(
            f"/api/v1/jobs/{job}/assessment",
            json={"verdict": "reject", "finding_id": finding, "comment": "артефакт"},
        )
        assert rejected.status_code == 201, rejected.text
        corrected = api.post(
            f"/api/v1/jobs/{job}/assessment",
            json={
                "verdict": "modify",
                "finding_id": finding,
                "location": {"sop_instance_uid": "1.2.3", "centre": [10.5, 20.0]},
            },
        )
        assert corrected.status_code == 201, corrected.text
        history = api.get(f"/api/v1/jobs/{job}/assessment").json()
        assert [(h["verdict"], h["finding_id"], h["superseded_at"] is None) for h in history] == [
            ("accept", None, True),
            ("reject", finding, False),  # replaced, kept
            ("modify", finding, True),
        ]
        assert history[2]["location"] == {
            "sop_instance_uid": "1.2.3",
            "centre": [10.5, 20.0],
            "box": None,
            "slice_index": None,
        }
        cxr = _row(api.get("/api/v1/monitoring/devices").json(), "dev-cxr@1.0.0", "38")
        assert cxr["verdicts"] == {
            "accepted": 1,
            "modified": 1,
            "rejected": 0,
            "total": 2,
            "agreement_rate": 0.5,
        }

        # Another region's job answers exactly like a job that does not exist.
        tula = api.post(f"/api/v1/jobs/{data.study('tula-1').job_ids[0]}/assessment",
                        json={"verdict": "accept"})  # fmt: skip
        unknown = api.post("/api/v1/jobs/999999/assessment", json={"verdict": "accept"})
        assert (tula.status_code, tula.json()["detail"].split()[0]) == (404, "no")
        assert unknown.status_code == 404
        other_job = data.study("irk-2").job_ids[0]
        foreign = api.post(
            f"/api/v1/jobs/{job}/assessment",
            json={"verdict": "reject", "finding_id": _finding_of(api, other_job)},
        )
        assert foreign.status_code == 422 and "not a finding of job" in foreign.json()["detail"]
        misplaced = api.post(
            f"/api/v1/jobs/{job}/assessment",
            json={"verdict": "accept", "location": {"centre": [1, 2]}},
        )
        assert misplaced.status_code == 422
        extra = api.post(f"/api/v1/jobs/{job}/assessment", json={"verdict": "ok", "x": 1})
        assert extra.status_code == 422
    with client_for(server, "radiologist", "71") as api:
        failed = api.post(f"/api/v1/jobs/{data.study('tula-failed').job_ids[0]}/assessment",
                          json={"verdict": "reject"})  # fmt: skip
        assert failed.status_code == 409 and "no result to judge" in failed.json()["detail"]
    for role, region in (("viewer", "38"), ("region_admin", "38"), ("admin", None)):
        with client_for(server, role, region) as api:
            refused = api.post(f"/api/v1/jobs/{job}/assessment", json={"verdict": "accept"})
            assert refused.status_code == 403, role
    events = audit.query(server.db, events=[AuditEvent.VERDICT_RECORDED])
    assert len(events) == 3
    assert {(e.token_name, e.role, e.study_uid, e.region) for e in events} == {
        ("test-radiologist-38", "radiologist", irk.uid, "38")
    }


def _finding_of(api: Any, job_id: int) -> int:
    with_admin = api.get(f"/api/v1/jobs/{job_id}")
    return int(with_admin.json()["findings"][0]["id"])


def test_the_usage_report_counts_the_month_and_is_for_national_tokens_only(
    running: tuple[Running, Seed],
) -> None:
    server, data = running
    month = f"{data.now:%Y-%m}"
    in_month = [
        s for s in data.studies if f"{data.now - s.finished_ago:%Y-%m}" == month
    ]  # the seed's own account of the month, not the gateway's
    cxr = [s for s in in_month if "dev-cxr" in s.devices]
    processed = [s for s in cxr if s.job_state == "inferred"]
    positive = [s for s in processed if s.positive and s.devices[0] == "dev-cxr"]
    with client_for(server, "admin") as api:
        report = api.get("/api/v1/monitoring/reports", params={"month": month})
        assert report.status_code == 200, report.text
        records = {r["device"]: r for r in report.json()["records"]}
        record = records["dev-cxr"]
        assert record["studies_processed"] == len(processed)
        assert record["results"]["positive"] == len(positive)
        assert record["results"]["negative"] == len(processed) - len(positive)
        assert record["errors"] == {
            "failed_jobs": len(cxr) - len(processed),
            "by_reason": [{"reason": "decode failed", "count": len(cxr) - len(processed)}]
            if len(cxr) > len(processed)
            else [],
        }
        assert record["registration"]["name"] == "Тестовое устройство"
        assert record["application"]["study_types"][0]["service_code"] == "7003320"
        assert set(records) == {d for s in in_month for d in s.devices}
        only = api.get("/api/v1/monitoring/reports", params={"month": month, "device": "dev-ct"})
        with_ct = any("dev-ct" in s.devices for s in in_month)
        assert [r["device"] for r in only.json()["records"]] == (["dev-ct"] if with_ct else [])
        table = api.get("/api/v1/monitoring/reports.csv", params={"month": month})
        assert table.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(table.text)))
        assert {r["device"]: int(r["studies_processed"]) for r in rows}["dev-cxr"] == len(processed)
        assert api.get("/api/v1/monitoring/reports", params={"month": "2026-13"}).status_code == 422
        empty = api.get("/api/v1/monitoring/reports", params={"month": "2001-01"}).json()
        assert empty["records"] == [] and empty["period"]["start"].startswith("2001-01-01")
    with client_for(server, "region_admin", "38") as api:
        assert api.get("/api/v1/monitoring/reports", params={"month": month}).status_code == 403
        assert api.get("/api/v1/monitoring/notices").status_code == 403


def test_a_region_admin_sets_a_version_live_in_its_region_only(
    running: tuple[Running, Seed],
) -> None:
    server, _ = running
    with client_for(server, "region_admin", "38") as api:
        modes = api.get("/api/v1/devices/dev-cxr@1.0.0/modes").json()
        assert [(m["region"], m["mode"], m["source"]) for m in modes] == [
            ("38", "shadow", "default")
        ]  # its region only; nothing named a start mode for the seeded devices
        changed = api.put("/api/v1/devices/dev-cxr@1.0.0/modes/38", json={"mode": "live"})
        assert changed.status_code == 200, changed.text
        assert (changed.json()["mode"], changed.json()["changed_by"]) == (
            "live",
            "test-region_admin-38",
        )
        other = api.put("/api/v1/devices/dev-cxr@1.0.0/modes/71", json={"mode": "live"})
        assert other.status_code == 403
        unversioned = api.put("/api/v1/devices/dev-cxr/modes/38", json={"mode": "live"})
        assert unversioned.status_code == 422
        unknown = api.put("/api/v1/devices/dev-zzz@1.0.0/modes/38", json={"mode": "live"})
        assert unknown.status_code == 404
        bad = api.put("/api/v1/devices/dev-cxr@1.0.0/modes/38", json={"mode": "half"})
        assert bad.status_code == 422
    with client_for(server, "viewer", "38") as api:
        assert (
            api.put("/api/v1/devices/dev-cxr@1.0.0/modes/38", json={"mode": "shadow"}).status_code
            == 403
        )
    (event,) = audit.query(server.db, events=[AuditEvent.DEVICE_MODE_CHANGED])
    assert (event.token_name, event.region, event.detail) == (
        "test-region_admin-38",
        "38",
        {"device": "dev-cxr@1.0.0", "from": "shadow", "to": "live"},
    )


def test_device_figures_over_a_chosen_period(running: tuple[Running, Seed]) -> None:
    server, data = running
    with client_for(server, "admin") as api:
        week = api.get(
            "/api/v1/monitoring/devices",
            params={"since": (data.now - timedelta(days=7)).isoformat(),
                    "until": (data.now + timedelta(minutes=1)).isoformat()},
        ).json()  # fmt: skip
        tula = _row(week, "dev-cxr@1.0.0", "71")
        assert (tula["studies"], tula["failed_jobs"]) == (1, 1)
        assert tula["failures"] == [{"reason": "decode failed", "count": 1}]
        assert tula["positive_rate"] == 1.0 and tula["turnaround"]["studies"] == 1
        assert tula["turnaround"]["p50_s"] == pytest.approx(40.0, abs=1.0)
        assert tula["drift"]["state"] == "no_baseline"  # far fewer than 20 studies
        backwards = api.get(
            "/api/v1/monitoring/devices",
            params={"since": data.now.isoformat(),
                    "until": (data.now - timedelta(days=1)).isoformat()},
        )  # fmt: skip
        assert backwards.status_code == 200 and backwards.json() == []
    with client_for(server, "viewer", "71") as api:
        assert api.get("/api/v1/monitoring/devices", params={"region": "38"}).json() == []


def test_aigw_tokens_create_makes_a_radiologist_of_a_region(
    running: tuple[Running, Seed],
) -> None:
    server, data = running
    env = {
        "AIGW_CONFIG_FILE": str(ROOT / "gateway" / "configs" / "gateway.yaml"),
        "AIGW_DATABASE_URL": server.db.url,
    }
    runner = CliRunner()
    nowhere = runner.invoke(main, ["tokens", "create", "--role", "radiologist"], env=env)
    assert nowhere.exit_code != 0 and "needs a region" in nowhere.output
    made = runner.invoke(
        main, ["tokens", "create", "--role", "radiologist", "--region", "38"], env=env
    )
    assert made.exit_code == 0, made.output
    assert "radiologist, region 38" in made.output
    secret = made.output.strip().splitlines()[-1]
    job = data.study("irk-2").job_ids[0]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    ) as api:
        given = api.post(f"/api/v1/jobs/{job}/assessment", json={"verdict": "accept"})
        assert given.status_code == 201, given.text
        assert api.get("/api/v1/studies").json()[0]["region"] == "38"  # reads its region
