"""The stuck made visible: ``/api/v1/health``, ``aigw health``, the working-state gauges of
``/metrics`` and the dashboard's waiting studies, on a real index and a real uvicorn server.
A study whose hand-over keeps failing makes the gateway degraded with the reason until it
moves on; a broker that does not answer does too."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from gateway.access.tokens import create_token
from gateway.devices.registry import DeviceRegistry
from gateway.index.database import Database
from gateway.index.due import Backoff
from gateway.index.object_store import FolderStore
from gateway.index.tables import SourceRow, utcnow
from gateway.ingest.assembly import Assembler, StudyCompleted
from gateway.ingest.receive import Ingest, Sender
from gateway.ingest.sources import SourceDirectory, load_directory
from gateway.jobs.dispatch import Dispatcher
from gateway.settings import Settings
from tests.control_plane_data import Running, prepare_index, serve_api
from tests.services import ROOT, ct_instance, free_port, make_uid
from workers.cli import main

SOURCES = ROOT / "gateway" / "configs" / "sources.yaml"
REGIONS = ROOT / "gateway" / "configs" / "regions.yaml"


class Index:
    """A migrated SQLite index under ``data_dir`` (where ``aigw health --data-dir`` looks)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.db = Database(f"sqlite:///{data_dir / 'aigw.db'}")
        prepare_index(self.db)
        self.store = FolderStore(data_dir / "objects")
        self.directory: SourceDirectory = load_directory(SOURCES, REGIONS, open_mode=False)

    def receive(self, study_uid: str) -> None:
        ds = ct_instance(study_uid, make_uid(study_uid, "series"), make_uid(study_uid, "sop"))
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        source = self.directory.by_name("irk-cami")
        assert source is not None
        with self.db.session() as session:
            source_id = session.scalar(select(SourceRow.id).where(SourceRow.name == source.name))
        assert source_id is not None
        sender = Sender(
            source=source, source_id=source_id, calling_ae=source.ae_title, address="127.0.0.1"
        )
        assert Ingest(self.db, self.store).receive(buffer.getvalue(), sender).status == 0


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    found = Index(tmp_path / "var")
    yield found
    found.db.dispose()


@contextmanager
def serving(index: Index, **settings: object) -> Iterator[Running]:
    values = {"data_dir": index.data_dir, "http_port": 0, **settings}
    registry = DeviceRegistry(index.db, index.store)
    with serve_api(index.db, index.store, Settings.model_validate(values), registry) as server:
        yield server


def broken_hand_over(index: Index, study_uid: str, ago: timedelta) -> Assembler:
    """The study completed ``ago``, its hand-over failed (routing is down)."""

    def routing_down(_completed: StudyCompleted) -> None:
        raise RuntimeError("routing is down")

    then = utcnow() - ago
    assembler = Assembler(
        index.db, index.directory, 10.0, routing_down, clock=lambda: then, backoff=Backoff(1, 2)
    )
    index.receive(study_uid)
    assert assembler.complete(study_uid)
    assert len(assembler.hand_over()) == 1
    return assembler


def gauge(metrics: str, name: str, state: str) -> float:
    found = re.search(rf'^{name}{{state="{state}"}} (\S+)$', metrics, re.MULTILINE)
    assert found, f"{name}{{state={state}}} not in /metrics"
    return float(found.group(1))


def test_healthy_then_degraded_by_a_stuck_study_then_healthy_again(index: Index) -> None:
    study = make_uid("stuck")
    with serving(index) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        report = client.get("/api/v1/health").json()
        assert report["status"] == "healthy" and report["reasons"] == []
        assert report["dependencies"] == {
            "database": "ok",
            "object_store": "ok",
            "broker": "ok",
            "schema": "ok",
        }
        assert [w["state"] for w in report["waiting"]] == [
            "routing",
            "queued",
            "running",
            "reporting",
            "delivering",
        ]
        assert all(w["count"] == 0 and w["oldest_age_s"] is None for w in report["waiting"])

        broken_hand_over(index, study, timedelta(seconds=120))
        response = client.get("/api/v1/health")
        assert response.status_code == 200  # degraded still takes studies in
        report = response.json()
        assert report["status"] == "degraded"
        (reason,) = report["reasons"]
        assert reason.startswith("routing: 1 waiting, the oldest for 12")
        assert reason.endswith("(bound 60 s); last error: RuntimeError: routing is down")
        metrics = client.get("/metrics").text
        assert gauge(metrics, "aigw_working_items", "routing") == 1
        assert gauge(metrics, "aigw_oldest_item_age_seconds", "routing") >= 120
        assert gauge(metrics, "aigw_stuck_after_seconds", "routing") == 60
        assert gauge(metrics, "aigw_oldest_item_age_seconds", "queued") == 0

        page = dashboard_page(client, index.db)
        assert 'data-step="routing"' in page and "ожидают маршрутизации" in page
        assert "RuntimeError: routing is down" in page

        cli = CliRunner().invoke(main, ["health", "--data-dir", str(index.data_dir)])
        assert cli.exit_code == 1, cli.output
        assert cli.output.startswith("degraded\n  routing: 1 waiting")

        # Routing works again: the next hand-over routes it (no device takes a CT of
        # this kind here: not applicable), and nothing waits.
        dispatcher = Dispatcher(server.settings, index.db, server.registry)
        healed = Assembler(index.db, index.directory, 10.0, dispatcher)
        assert [c.study_uid for c in healed.hand_over()] == [study]
        report = client.get("/api/v1/health").json()
        assert report["status"] == "healthy"
        assert "Все полученные исследования обработаны" in dashboard_page(client, index.db)
        cli = CliRunner().invoke(main, ["health", "--data-dir", str(index.data_dir)])
        assert cli.exit_code == 0 and cli.output.startswith("healthy\n"), cli.output


def dashboard_page(client: httpx.Client, db: Database) -> str:
    _, secret = create_token(db, "admin", name="health test")
    form = client.get("/dashboard/login").text
    found = re.search(r'name="csrf" value="([^"]+)"', form)
    assert found, "the login form carries its CSRF token"
    client.post("/dashboard/login", data={"token": secret, "csrf": found.group(1)})
    page = client.get("/dashboard/")
    assert page.status_code == 200 and 'id="who"' in page.text, page.text[:500]
    return page.text


def test_a_broker_that_does_not_answer_makes_the_gateway_degraded(index: Index) -> None:
    port = free_port()  # nothing listens there
    with serving(index, broker_url=f"redis://127.0.0.1:{port}/0") as server:
        report = httpx.get(f"{server.url}/api/v1/health", timeout=30).json()
        assert report["status"] == "degraded"
        assert report["reasons"] == [report["dependencies"]["broker"].join(["broker: ", ""])]
        assert report["dependencies"]["broker"].startswith(f"redis://127.0.0.1:{port}/0: ")
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        assert ready.status_code == 503


def test_the_dashboard_counts_each_waiting_study_once_in_its_region(index: Index) -> None:
    from gateway.dashboard.waiting import Step, waiting_studies

    first, second = make_uid("wait", 1), make_uid("wait", 2)
    broken_hand_over(index, first, timedelta(seconds=30))
    broken_hand_over(index, second, timedelta(seconds=90))
    (routing,) = waiting_studies(index.db)
    assert (routing.step, routing.studies, routing.retrying) == (Step.ROUTING, 2, 2)
    assert 89 <= routing.oldest_s < 100
    (scoped,) = waiting_studies(index.db, region="38")  # irk-cami is region 38
    assert (scoped.step, scoped.studies) == (Step.ROUTING, 2)
    assert waiting_studies(index.db, region="71") == []
