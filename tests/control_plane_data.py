"""A seeded index for the control-plane tests (API, access, dashboard), and the API served
by a real uvicorn server on a free loopback port.

The seed is small and fully known, so every number the API and the dashboard show can be
asserted: region 38 uses three registered devices (two image, one EMK) — target met; region
71 two (and one unregistered device that must not count) — target unmet; region 77 one this
week and another a month ago.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import uvicorn
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from gateway.access.tokens import create_token
from gateway.api import create_app
from gateway.devices.registry import DeviceRegistry
from gateway.index.database import Database
from gateway.index.object_store import FolderStore, ObjectStore
from gateway.index.tables import (
    FindingRow,
    JobRow,
    OutboxRow,
    ResultRow,
    SeriesRow,
    SourceRow,
    StudyEventRow,
    StudyRow,
    utcnow,
)
from gateway.ingest.sources import load_directory, sync_directory
from gateway.settings import Settings
from tests.onnx_models import classifier_with_heatmap, write_device
from tests.services import ROOT, free_port, make_uid, wait_for_port

DEVICES = {  # device id → group
    "dev-cxr": "image_analysis",
    "dev-ct": "image_analysis",
    "dev-emk": "emk_data_analysis",
}


@dataclass
class SeededStudy:
    name: str
    region: str
    source: str
    devices: list[str]
    positive: bool
    received_ago: timedelta
    finished_ago: timedelta
    job_state: str = "inferred"
    delivered_after: timedelta | None = None  # first delivery, after the last instance
    job_ids: list[int] = field(default_factory=list)
    result_ids: dict[str, int] = field(default_factory=dict)
    outbox_ids: list[int] = field(default_factory=list)

    @property
    def uid(self) -> str:
        return make_uid("cp-study", self.name)


@dataclass
class Seed:
    now: datetime
    studies: list[SeededStudy]

    def by_region(self, region: str) -> list[SeededStudy]:
        return [s for s in self.studies if s.region == region]

    def study(self, name: str) -> SeededStudy:
        return next(s for s in self.studies if s.name == name)


def _plan() -> list[SeededStudy]:
    h, d = timedelta(hours=1), timedelta(days=1)
    study = SeededStudy
    return [
        study("irk-1", "38", "irk-cami", ["dev-cxr"], positive=True, received_ago=2 * h,
              finished_ago=2 * h - timedelta(seconds=30), delivered_after=timedelta(seconds=60)),
        study("irk-2", "38", "irk-gkb1", ["dev-ct"], positive=False, received_ago=3 * d,
              finished_ago=3 * d - timedelta(seconds=90)),
        study("irk-3", "38", "irk-cami", ["dev-emk", "dev-cxr"], positive=False,
              received_ago=5 * h, finished_ago=5 * h - timedelta(seconds=120)),
        study("tula-1", "71", "tula-cami", ["dev-cxr"], positive=True, received_ago=1 * d,
              finished_ago=1 * d - timedelta(seconds=40)),
        study("tula-2", "71", "tula-cami", ["dev-ct"], positive=False, received_ago=2 * d,
              finished_ago=2 * d - timedelta(seconds=50)),
        study("tula-ghost", "71", "tula-cami", ["dev-ghost"], positive=False,
              received_ago=2 * d, finished_ago=2 * d - timedelta(seconds=20)),
        study("tula-failed", "71", "tula-cami", ["dev-cxr"], positive=False,
              received_ago=6 * h, finished_ago=6 * h - timedelta(seconds=10),
              job_state="failed"),
        study("msk-1", "77", "msk-test", ["dev-cxr"], positive=True, received_ago=4 * h,
              finished_ago=4 * h - timedelta(seconds=25)),
        study("msk-old", "77", "msk-test", ["dev-ct"], positive=False, received_ago=20 * d,
              finished_ago=20 * d - timedelta(seconds=25)),
    ]  # fmt: skip


def register_devices(db: Database, store: ObjectStore, folder: Path) -> DeviceRegistry:
    registry = DeviceRegistry(db, store)
    model = classifier_with_heatmap()
    for device_id, group in DEVICES.items():
        manifest = write_device(folder / device_id, model, id=device_id, group=group)
        registry.register(manifest)
    registry.set_regions({"38": list(DEVICES), "71": ["dev-cxr", "dev-ct"], "77": ["dev-cxr"]})
    return registry


def flag_image(study_uid: str, name: str) -> bytes:
    """A small RGB secondary capture, as the flag-image builder writes them."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = UID(make_uid("cp-sc", name))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = make_uid("cp-sc-series", name)
    ds.Modality = "OT"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = ds.Columns = 48
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    pixels = np.zeros((48, 48, 3), dtype=np.uint8)
    pixels[10:30, 10:30, 0] = 255  # the red mark
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def seed(db: Database, store: ObjectStore, now: datetime) -> Seed:
    """Studies, series, timeline, jobs, findings, results (objects in the store), outbox."""
    planned = _plan()
    with db.session() as session:
        sources = {s.name: s.id for s in session.query(SourceRow)}
        if "msk-test" not in sources:
            row = SourceRow(
                name="msk-test", title="ДЗМ тест", ae_title="MSK_TEST", region_code="77"
            )
            session.add(row)
            session.flush()
            sources["msk-test"] = row.id
        for s in planned:
            name = s.name
            received = now - s.received_ago
            finished = now - s.finished_ago
            study = StudyRow(
                study_uid=s.uid, source_id=sources[s.source], region_code=s.region,
                state="routed", patient_id=f"PAT-{name}", patient_sex="F", patient_age_years=50,
                study_date=received.strftime("%Y%m%d"), accession_number=f"ACC-{name}",
                first_received_at=received - timedelta(seconds=5), last_received_at=received,
                completed_at=received + timedelta(seconds=2), state_changed_at=received,
                study_description=f"seeded {name}",
            )  # fmt: skip
            session.add(study)
            session.flush()
            series_uid = make_uid("cp-series", name)
            session.add(
                SeriesRow(
                    study_id=study.id, series_uid=series_uid,
                    modality="CT" if "dev-ct" in s.devices else "DX", body_part="CHEST",
                    series_description="seeded", series_number=1,
                    first_received_at=received, last_received_at=received,
                )
            )  # fmt: skip
            session.add(
                StudyEventRow(study_id=study.id, at=received, kind="state", state="routed",
                              detail={"jobs": len(s.devices)})
            )  # fmt: skip
            for device in s.devices:
                job = JobRow(
                    study_id=study.id, study_completed_at=received, series_uid=series_uid,
                    series_uids=[series_uid], device_key=f"{device}@1.0.0",
                    study_type="ct_chest" if device == "dev-ct" else "fluorography",
                    service_code="7003320", rule="seeded", priority=5, queue="infer",
                    state=s.job_state, attempts=1,
                    reason="decode failed: seeded" if s.job_state == "failed" else None,
                    timings_ms={"load": 5.0, "decode": 10.0, "infer": 200.0 + len(name)},
                    created_at=received, started_at=finished - timedelta(seconds=1),
                    finished_at=finished,
                )  # fmt: skip
                session.add(job)
                session.flush()
                s.job_ids.append(job.id)
                session.add(
                    FindingRow(
                        job_id=job.id, label_code="427359005", label_scheme="SCT",
                        label_ru="Очаг", label_en="Nodule",
                        probability=0.9 if s.positive and device == s.devices[0] else 0.1,
                        threshold=0.5, positive=s.positive and device == s.devices[0],
                        location=None, measurements={"max_diameter_mm": 12.5},
                    )
                )  # fmt: skip
            if s.job_state == "failed":
                continue
            first_job = s.job_ids[0]
            for kind, data in (
                ("sr", b"DICM-sr-" + name.encode()),
                ("sc", flag_image(s.uid, name)),
                ("semd", f"<ClinicalDocument>{name}</ClinicalDocument>".encode()),
            ):
                key = f"results/{name}/{kind}.{'xml' if kind == 'semd' else 'dcm'}"
                store.put(key, data)
                result = ResultRow(
                    job_id=first_job, kind=kind, state="stored", object_key=key,
                    sop_instance_uid=make_uid("cp-result", name, kind), size=len(data),
                    meta={"sidecar": name} if kind == "semd" else {}, created_at=finished,
                )  # fmt: skip
                session.add(result)
                session.flush()
                s.result_ids[kind] = result.id
            delivered = received + s.delivered_after if s.delivered_after else None
            outbox = OutboxRow(
                result_id=s.result_ids["sr"], destination="pacs", protocol="dicom",
                state="delivered" if delivered else "failed", attempts=1 if delivered else 6,
                next_attempt_at=finished, last_error=None if delivered else "association rejected",
                created_at=finished, delivered_at=delivered,
            )  # fmt: skip
            session.add(outbox)
            session.flush()
            s.outbox_ids.append(outbox.id)
    return Seed(now, planned)


@dataclass
class Running:
    url: str
    db: Database
    store: ObjectStore
    settings: Settings
    registry: DeviceRegistry


@contextmanager
def serve_api(
    db: Database, store: ObjectStore, settings: Settings, registry: DeviceRegistry
) -> Iterator[Running]:
    """``create_app`` under a real uvicorn server on a free port, stopped afterwards."""
    port = free_port()
    config = uvicorn.Config(
        create_app(db, store, settings, registry),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    wait_for_port(port)
    while not server.started:
        time.sleep(0.01)
    try:
        yield Running(f"http://127.0.0.1:{port}", db, store, settings, registry)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def prepare_index(db: Database) -> None:
    """Schema and the configured regions and sources."""
    db.migrate()
    directory = load_directory(
        ROOT / "gateway" / "configs" / "sources.yaml",
        ROOT / "gateway" / "configs" / "regions.yaml",
        open_mode=False,
    )
    sync_directory(db, directory)


def running_api(
    db: Database, tmp_path: Path, upload_limit: int = 4 * 1024 * 1024, **settings_values: Any
) -> Iterator[tuple[Running, Seed]]:
    """Index prepared and seeded, devices registered, the API served: yields once.
    ``settings_values`` are more settings (login limits, session lifetimes)."""
    prepare_index(db)
    store = FolderStore(tmp_path / "objects")
    registry = register_devices(db, store, tmp_path / "devices")
    data = seed(db, store, utcnow())
    settings = Settings(
        data_dir=tmp_path,
        api_max_upload_bytes=upload_limit,
        routing_file=ROOT / "gateway" / "configs" / "routing.yaml",
        **settings_values,
    )
    try:
        with serve_api(db, store, settings, registry) as server:
            yield server, data
    finally:
        db.dispose()


def client_for(server: Running, role: str = "admin", region: str | None = None) -> httpx.Client:
    """An HTTP client holding a fresh token of ``role`` (named after it, for the audit)."""
    _, secret = create_token(server.db, role, region, name=f"test-{role}-{region or 'all'}")
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )
