"""A device version watched in the field, end to end with real parts: DCMTK's storescp as the
archive, the regional HTTP receiver, a receiver of the usage reports, the reference chest
X-ray device, storescu as the modality and as the viewer.

The version starts in shadow: a study is analysed, its results kept, and nothing reaches the
archive or the region. Set live (``aigw models mode``, audited), the next studies — one
synthetic, one from a real scanner — are delivered. A viewer sends an IHE AIRA assessment SR
and a rejecting Key Object Selection: both become verdicts without a second analysis. A
month later the usage report goes out through the outbox — first to a receiver that is
down, then, across restarts, exactly once — and its counts are the index's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from pydicom import Dataset, dcmread
from sqlalchemy import func, select

from gateway.access.audit import AuditEvent, query
from gateway.delivery.outbox import OutboxDispatcher, list_outbox
from gateway.demo.synthetic import chest_xray_study, write_study
from gateway.index.read_model import study_detail
from gateway.index.tables import JobRow, NoticeRow, OutboxRow, StudyRow, VerdictRow
from gateway.monitoring.figures import device_figures
from gateway.monitoring.sender import MonitoringSender
from gateway.monitoring.verdicts import history
from gateway.results.build import results_of
from gateway.settings import Settings
from tests.monitoring.aira_objects import REJECTED_FOR_QUALITY, assessment_sr, selection_kos
from tests.services import (
    ROOT,
    RegionalSystem,
    Storescp,
    free_port,
    require_shared_data,
    storescu,
    wait_until,
)
from workers.app import build_gateway
from workers.cli import main
from workers.serve import Gateway

DEVICE = "aigw-ref-cxr"
VERSION = "1.0.0"
ZOO = ROOT / "models" / "zoo"
SCHEMA = ROOT / "docs" / "usage-report.schema.json"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ZOO / DEVICE / "manifest.yaml").is_file(),
        reason="the reference devices are not built: run `make models`",
    ),
]


@dataclass
class Field:
    settings: Settings
    archive: Storescp
    region: RegionalSystem
    roszdravnadzor: RegionalSystem  # starts late
    folder: Path

    def send(self, files: list[Path], *options: str) -> None:
        sent = storescu(self.settings.dicom_port, files, calling_ae="IRK_CAMI", extra=[*options])
        assert sent.returncode == 0, sent.stderr


@pytest.fixture
def field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Field]:
    archive = Storescp(tmp_path / "archive", ae_title="IRK_ARCHIVE")
    archive.start()
    region, roszdravnadzor = RegionalSystem(), RegionalSystem()
    region.start()
    monkeypatch.setenv("AIGW_TEST_RZN_TOKEN", "rzn-secret")
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / DEVICE).symlink_to(ZOO / DEVICE)  # only this device: a quick start
    regions = {"regions": {"38": "Иркутская область", "71": "Тульская область"},
               "devices": {"38": [DEVICE]}}  # fmt: skip
    (tmp_path / "regions.yaml").write_text(yaml.safe_dump(regions, allow_unicode=True))
    destinations = {
        "destinations": [
            {"name": "archive", "protocol": "dicom", "host": "127.0.0.1",
             "port": archive.port, "ae_title": archive.ae_title},
            {"name": "region", "protocol": "http",
             "url": f"http://127.0.0.1:{region.port}/semd"},
            {"name": "rzn", "protocol": "http", "kinds": ["monitoring"],
             "url": f"http://127.0.0.1:{roszdravnadzor.port}/usage",
             "token_env": "AIGW_TEST_RZN_TOKEN"},
        ],
        "sources": {"irk-cami": ["archive", "region"]},
    }  # fmt: skip
    (tmp_path / "destinations.yaml").write_text(yaml.safe_dump(destinations))
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path / "var",
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            "http_port": 0,
            "sources_file": ROOT / "gateway" / "configs" / "sources.yaml",
            "regions_file": tmp_path / "regions.yaml",
            "destinations_file": tmp_path / "destinations.yaml",
            "semd_file": ROOT / "gateway" / "configs" / "semd.yaml",
            "devices_dir": devices,
            "min_free_bytes": 0,
            "quiet_period_s": 1.0,
            "assembly_poll_s": 0.1,
            "outbox_poll_s": 0.2,
            "outbox_backoff_s": 0.2,
            "outbox_max_backoff_s": 0.5,
            "monitoring_check_every_s": 0.2,
        }
    )
    yield Field(settings, archive, region, roszdravnadzor, tmp_path)
    roszdravnadzor.stop()
    region.stop()
    archive.stop()


def _running(settings: Settings, clock: Callable[[], datetime] | None = None) -> Gateway:
    gateway = build_gateway(settings) if clock is None else build_gateway(settings, clock)
    gateway.start()
    return gateway


def _study_files(field: Field, seed: int) -> tuple[str, list[Path]]:
    study = chest_xray_study(seed, kind="fluorography", size=(448, 448))
    return study.study_instance_uid, write_study(study, field.folder / f"study-{seed}")


def _stored(gateway: Gateway, study_uid: str) -> bool:
    return any(
        r.kind == "sr" and r.state == "stored" for r in results_of(gateway.parts.db, study_uid)
    )


def _job(gateway: Gateway, study_uid: str) -> int:
    (job,) = study_detail(gateway.parts.db, study_uid, None).jobs  # type: ignore[union-attr]
    return job.job_id


def test_shadow_then_live_verdicts_from_a_viewer_and_the_monthly_report_once(
    field: Field,
) -> None:
    gateway = _running(field.settings)
    db = gateway.parts.db
    try:
        # --- shadow: analysed, kept, nothing delivered ---------------------------------
        shadow_uid, files = _study_files(field, 1501)
        field.send(files)
        wait_until(
            lambda: _stored(gateway, shadow_uid), "the shadow study's results", timeout_s=240
        )
        shadow = study_detail(db, shadow_uid, None)
        assert shadow is not None and [j.mode for j in shadow.jobs] == ["shadow"]
        assert {r.kind for r in shadow.results if r.state == "stored"} >= {"sr", "sc", "semd"}
        assert all(r.shadow and r.deliveries == {} for r in shadow.results)
        assert list_outbox(db, study_uid=shadow_uid) == []  # written with the results: none

        # --- live, set by an operator, audited with who and when ----------------------
        runner = CliRunner()
        switched = runner.invoke(
            main,
            ["models", "mode", f"{DEVICE}@{VERSION}", "live", "--region", "38",
             "--data-dir", str(field.settings.data_dir)],
            env={"AIGW_CONFIG_FILE": str(ROOT / "gateway" / "configs" / "gateway.yaml")},
        )  # fmt: skip
        assert switched.exit_code == 0, switched.output
        (event,) = query(db, events=[AuditEvent.DEVICE_MODE_CHANGED])
        assert event.role == "operator" and event.region == "38"
        assert event.detail == {"device": f"{DEVICE}@{VERSION}", "from": "shadow", "to": "live"}

        live_uid, files = _study_files(field, 1502)
        real = require_shared_data() / "CR_chest_PA_SIIM_JPEGBaseline.dcm"
        real_uid = str(dcmread(real, stop_before_pixels=True).StudyInstanceUID)
        field.send(files)
        field.send([real], "-xy")  # as a scanner would: in its JPEG Baseline

        def delivered() -> bool:
            rows = list_outbox(db, study_uid=live_uid) + list_outbox(db, study_uid=real_uid)
            uids = {r.study_uid for r in rows}
            return uids == {live_uid, real_uid} and all(r.state == "delivered" for r in rows)

        wait_until(delivered, "the live studies' deliveries", timeout_s=240)
        live = results_of(db, live_uid) + results_of(db, real_uid)
        dicom_results = {r.sop_instance_uid for r in live if r.kind != "semd" and r.object_key}
        assert set(field.archive.received()) == dicom_results  # nothing of the shadow study
        assert [p["key"] for p in field.region.received] == [
            r.meta["document_id"] for r in results_of(db, live_uid) if r.kind == "semd"
        ]  # the synthetic study's SEMD only: the real file has no СНИЛС, its SEMD is withheld
        assert list_outbox(db, study_uid=shadow_uid) == []  # shadow stays shadow

        # --- a viewer's assessments become verdicts, with no second analysis ----------
        live_job = _job(gateway, live_uid)
        (sr_path,) = [p for p in field.archive.files() if _is_our_sr(p, live_uid)]
        assessed = dcmread(sr_path)
        first_finding = study_detail(db, live_uid, None).jobs[0].findings[0]  # type: ignore[union-attr]
        tracking = _tracking_uids(assessed)
        accept = assessment_sr(assessed, ["accept"], seed="accept", tracking_uids=tracking[:1],
                               comment="согласен")  # fmt: skip
        accept.save_as(field.folder / "accept.dcm", enforce_file_format=True)
        field.send([field.folder / "accept.dcm"])
        wait_until(lambda: bool(history(db, live_job, None)), "the SR assessment's verdict")
        (verdict,) = history(db, live_job, None) or []
        assert (verdict.verdict, verdict.source, verdict.finding_id) == (
            "accept",
            "dicom",
            first_finding.id,
        )
        assert verdict.author == "DICOM IRK_CAMI" and verdict.comment == "согласен"

        reject = selection_kos(assessed, REJECTED_FOR_QUALITY, seed="reject")
        reject.save_as(field.folder / "reject.dcm", enforce_file_format=True)
        field.send([field.folder / "reject.dcm"])
        wait_until(lambda: len(history(db, live_job, None) or []) == 2, "the KOS's verdict")
        wait_until(lambda: _state(gateway, live_uid) == "routed", "the study routed again")
        with db.session() as session:
            jobs = session.scalar(
                select(func.count()).select_from(JobRow).join(StudyRow)
                .where(StudyRow.study_uid == live_uid)
            )  # fmt: skip
        assert jobs == 1  # the assessments did not start a second analysis
        timeline = study_detail(db, live_uid, None).timeline  # type: ignore[union-attr]
        assert [e.kind for e in timeline].count("verdict") == 2
        now = datetime.now(UTC)
        (row,) = device_figures(db, now - timedelta(days=1), now + timedelta(hours=1))
        assert (row.device, row.region, row.mode) == (f"{DEVICE}@{VERSION}", "38", "live")
        assert (row.studies, row.shadow_studies) == (3, 1)
        assert (row.verdicts.accepted, row.verdicts.rejected, row.verdicts.agreement_rate) == (
            1,
            1,
            0.5,
        )
        month_of_jobs = _job_month(gateway)
    finally:
        gateway.stop()

    # --- the month ends: the report goes to a receiver that is down ---------------------
    next_month = _first_instant_after(month_of_jobs) + timedelta(hours=1)
    key = f"usage:{DEVICE}@{VERSION}:{month_of_jobs}"
    gateway = _running(field.settings, clock=lambda: next_month)
    try:

        def refused() -> bool:
            with gateway.parts.db.session() as session:
                row = session.scalars(
                    select(OutboxRow).where(OutboxRow.notice_id.is_not(None))
                ).first()
                return row is not None and row.attempts >= 1 and row.last_error is not None

        wait_until(refused, "the report to meet its receiver down")
    finally:
        gateway.stop()

    # --- the receiver is back: delivered once, and a restart sends nothing more -------
    field.roszdravnadzor.start()
    gateway = _running(field.settings, clock=lambda: next_month)
    try:
        wait_until(lambda: len(field.roszdravnadzor.received) == 1, "the report delivered")
    finally:
        gateway.stop()
    gateway = _running(field.settings, clock=lambda: next_month)
    try:
        sender = next(s for s in gateway.services if isinstance(s, MonitoringSender))
        outbox = next(s for s in gateway.services if isinstance(s, OutboxDispatcher))
        assert sender.check() == [] and outbox.run_once() == 0
        with gateway.parts.db.session() as session:
            assert session.scalars(select(NoticeRow.key)).all() == [key]
            expected = _index_counts(session, month_of_jobs)
    finally:
        gateway.stop()
    (post,) = field.roszdravnadzor.received
    assert (post["key"], post["auth"], post["path"]) == (key, "Bearer rzn-secret", "/usage")
    jsonschema.validate(post["json"], json.loads(SCHEMA.read_text(encoding="utf-8")))
    (record,) = post["json"]["records"]
    assert post["json"]["period"]["month"] == month_of_jobs
    assert (record["device"], record["version"], record["software_version"]) == (
        DEVICE,
        VERSION,
        VERSION,
    )
    assert record["application"]["study_types"][0]["service_code"] == "7003320"
    got = {
        "processed": record["studies_processed"],
        "shadow": record["studies_in_shadow"],
        "positive+negative": record["results"]["positive"] + record["results"]["negative"],
        "failed": record["errors"]["failed_jobs"],
        "verdicts": record["verdicts"]["total"],
        "rejected": record["verdicts"]["rejected"],
    }
    assert got == expected
    assert expected["processed"] == 2 and expected["shadow"] == 1


def _is_our_sr(path: Path, study_uid: str) -> bool:
    ds = dcmread(path, stop_before_pixels=True)
    return bool(ds.Modality == "SR" and ds.StudyInstanceUID == study_uid)


def _tracking_uids(sr: Dataset) -> list[str]:
    """The tracking UIDs in an SR, in document order."""
    found: list[str] = []

    def walk(items: Sequence[Dataset] | None) -> None:
        for item in items or []:
            name = item.get("ConceptNameCodeSequence")
            if item.get("ValueType") == "UIDREF" and name and name[0].CodeValue == "112040":
                found.append(str(item.UID))
            walk(item.get("ContentSequence"))

    walk(sr.ContentSequence)
    return found


def _state(gateway: Gateway, study_uid: str) -> str:
    with gateway.parts.db.session() as session:
        return str(session.scalar(select(StudyRow.state).where(StudyRow.study_uid == study_uid)))


def _job_month(gateway: Gateway) -> str:
    with gateway.parts.db.session() as session:
        months = {f"{at:%Y-%m}" for at in session.scalars(select(JobRow.finished_at)) if at}
    assert len(months) == 1, f"the jobs straddle a month end: {months}"
    return months.pop()


def _first_instant_after(month: str) -> datetime:
    year, number = map(int, month.split("-"))
    return datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)


def _index_counts(session: object, month: str) -> dict[str, int]:
    """The report's figures counted straight from the index, another way."""
    from sqlalchemy.orm import Session

    assert isinstance(session, Session)
    jobs = session.scalars(select(JobRow).where(JobRow.device_key == f"{DEVICE}@{VERSION}")).all()
    jobs = [j for j in jobs if j.finished_at and f"{j.finished_at:%Y-%m}" == month]
    live = {j.study_id for j in jobs if j.mode == "live" and j.state == "inferred"}
    shadow = {j.study_id for j in jobs if j.mode == "shadow" and j.state == "inferred"} - live
    live_jobs = [j.id for j in jobs if j.mode == "live" and j.state == "inferred"]
    current = session.scalars(
        select(VerdictRow.verdict).where(
            VerdictRow.job_id.in_(live_jobs), VerdictRow.superseded_at.is_(None)
        )
    ).all()
    return {
        "processed": len(live),
        "shadow": len(shadow),
        "positive+negative": len(live),
        "failed": sum(1 for j in jobs if j.mode == "live" and j.state == "failed"),
        "verdicts": len(current),
        "rejected": list(current).count("reject"),
    }
