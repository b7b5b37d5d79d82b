"""Results back where people look, with real parts: Orthanc plays the regional archive.

A study uploaded to Orthanc is pushed by Orthanc to the gateway over DICOM (Orthanc is the
C-STORE SCU); the reference devices analyse it; the SR, the flag images, the GSPS and the
SEG come back into the same Orthanc study by C-STORE, and the SEMD goes by HTTP to a local
receiver standing in for the regional system — which is down at first, stays down across a
restart of the gateway, and then gets each SEMD exactly once.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from pydicom import dcmread

from gateway.delivery.outbox import list_outbox
from gateway.demo.synthetic import SyntheticStudy, chest_xray_study, ct_chest_study
from gateway.results.build import results_of
from gateway.settings import Settings
from tests.services import ROOT, RegionalSystem, free_port
from tests.services.orthanc import Orthanc as OrthancProcess
from workers.cli import main
from workers.serve import Gateway

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not list((ROOT / "models" / "zoo").glob("*/manifest.yaml")),
        reason="the reference devices are not built: run `make models`",
    ),
]

ORTHANC_AET = "IRK_CAMI"  # Orthanc calls the gateway as the Irkutsk archive (sources.yaml)


class Orthanc:
    """The harness's Orthanc as the regional archive, and what this test asks of it."""

    def __init__(self, work: Path, gateway_port: int) -> None:
        modalities = {"aigw": ["AIGW", "127.0.0.1", gateway_port]}
        self.server = OrthancProcess(
            work, ORTHANC_AET, {"Name": "irk-cami-test", "DicomModalities": modalities}
        )
        self.server.start()
        self.dicom_port = self.server.dicom_port
        self.http = httpx.Client(base_url=self.server.url, timeout=60)

    def upload(self, study: SyntheticStudy) -> str:
        for dataset in study.datasets:
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            self.http.post("/instances", content=buffer.getvalue()).raise_for_status()
        found = self.http.post("/tools/lookup", content=study.study_instance_uid).raise_for_status()
        return str(found.json()[0]["ID"])

    def push_to_gateway(self, orthanc_study_id: str) -> None:
        self.http.post("/modalities/aigw/store", content=orthanc_study_id).raise_for_status()

    def series_by_modality(self, orthanc_study_id: str) -> dict[str, list[dict[str, Any]]]:
        series = self.http.get(f"/studies/{orthanc_study_id}/series").raise_for_status().json()
        grouped: dict[str, list[dict[str, Any]]] = {}
        for item in series:
            grouped.setdefault(item["MainDicomTags"].get("Modality", ""), []).append(item)
        return grouped

    def instance_file(self, instance_id: str) -> bytes:
        return self.http.get(f"/instances/{instance_id}/file").raise_for_status().content

    def stop(self) -> None:
        self.http.close()
        self.server.stop()


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def setting_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, Orthanc, RegionalSystem]]:
    dicom_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", dicom_port)
    regional = RegionalSystem(free_port())
    monkeypatch.setenv("AIGW_TEST_REGION_TOKEN", "s3cret")
    destinations = {
        "destinations": [
            {
                "name": "irk-archive",
                "protocol": "dicom",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "ae_title": ORTHANC_AET,
            },
            {
                "name": "irk-region",
                "protocol": "http",
                "url": f"http://127.0.0.1:{regional.port}/semd",
                "token_env": "AIGW_TEST_REGION_TOKEN",
            },
        ],
        "sources": {"irk-cami": ["irk-archive", "irk-region"]},
    }
    (tmp_path / "destinations.yaml").write_text(yaml.safe_dump(destinations))
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path / "var",
            "dicom_host": "127.0.0.1",
            "dicom_port": dicom_port,
            "http_port": 0,
            "sources_file": ROOT / "gateway" / "configs" / "sources.yaml",
            "regions_file": ROOT / "gateway" / "configs" / "regions.yaml",
            "routing_file": ROOT / "gateway" / "configs" / "routing.yaml",
            "destinations_file": tmp_path / "destinations.yaml",
            "semd_file": ROOT / "gateway" / "configs" / "semd.yaml",
            "devices_dir": ROOT / "models" / "zoo",
            "min_free_bytes": 0,
            "quiet_period_s": 1.0,
            "assembly_poll_s": 0.1,
            "outbox_poll_s": 0.2,
            "outbox_backoff_s": 0.2,
            "outbox_max_backoff_s": 1.0,
        }
    )
    yield settings, orthanc, regional
    regional.stop()
    orthanc.stop()


def _start(settings: Settings) -> Gateway:
    from workers.app import build_gateway

    gateway = build_gateway(settings)
    gateway.start()
    return gateway


def test_results_come_back_into_the_archive_and_the_semd_reaches_the_region_once(
    setting_up: tuple[Settings, Orthanc, RegionalSystem],
) -> None:
    settings, orthanc, regional = setting_up
    cxr = chest_xray_study(901, kind="fluorography", size=(448, 448))
    ct = ct_chest_study(901, n_slices=40, size=(192, 192))
    gateway = _start(settings)
    try:
        ids = {study.study_instance_uid: orthanc.upload(study) for study in (cxr, ct)}
        for orthanc_id in ids.values():
            orthanc.push_to_gateway(orthanc_id)

        def semd_attempted_and_failed() -> bool:
            rows = list_outbox(gateway.parts.db)
            semd = [r for r in rows if r.kind == "semd"]
            return len(semd) == 2 and all(r.attempts >= 1 and r.last_error for r in semd)

        _wait(semd_attempted_and_failed, "the SEMDs to meet the regional system down")
    finally:
        gateway.stop()  # the regional system is still down: its rows wait in the outbox

    regional.start()
    gateway = _start(settings)
    try:

        def all_delivered() -> bool:
            rows = list_outbox(gateway.parts.db)
            return bool(rows) and all(r.state == "delivered" for r in rows)

        _wait(all_delivered, "every delivery to be acknowledged")
        rows = list_outbox(gateway.parts.db)
        results = {uid: results_of(gateway.parts.db, uid) for uid in ids}
    finally:
        gateway.stop()

    # Every stored result went to each destination that takes its kind, exactly once.
    for uid, stored in results.items():
        kinds = sorted(r.kind for r in stored if r.state == "stored")
        expected = ["gsps", "sc", "semd", "sr"] + (["seg"] if uid == ct.study_instance_uid else [])
        assert kinds == sorted(expected), (uid, [(r.kind, r.state, r.reason) for r in stored])
    assert len(rows) == sum(len([r for r in s if r.state == "stored"]) for s in results.values())

    # The regional system got each SEMD once, with its metadata and the bearer token.
    assert sorted(r["key"] for r in regional.received) == sorted(
        {r["key"] for r in regional.received}
    )
    assert len(regional.received) == 2
    for post in regional.received:
        assert post["auth"] == "Bearer s3cret"
        assert post["metadata"]["kind"] == "174"
        assert post["metadata"]["document_id"] == post["key"]
        assert b"1.2.643.5.1.13.13.14.6.9.4" in post["document"]
        assert "Результат работы ИИ" in post["document"].decode()

    # The archive now shows the AI series beside the originals, in the same study.
    for uid, orthanc_id in ids.items():
        series = orthanc.series_by_modality(orthanc_id)
        assert "SR" in series and "PR" in series, sorted(series)
        if uid == ct.study_instance_uid:
            assert "SEG" in series, sorted(series)
        sr_instance = series["SR"][0]["Instances"][0]
        sr_bytes = orthanc.instance_file(sr_instance)
        sr = dcmread(io.BytesIO(sr_bytes))
        assert sr.StudyInstanceUID == uid
        assert sr.SeriesDescription.startswith("ИИ: ")
        assert b"aigw-ref" in sr_bytes  # the device is the observer
        flagged = [
            s
            for items in series.values()
            for s in items
            if "метки" in s["MainDicomTags"].get("SeriesDescription", "")
        ]
        assert flagged, "the flag-image series is missing from the archive"

    # The operator's view: `aigw outbox` and `aigw results --out`.
    cli_env = {"AIGW_CONFIG_FILE": str(ROOT / "gateway" / "configs" / "gateway.yaml")}
    var = ["--data-dir", str(settings.data_dir)]
    runner = CliRunner()
    listed = runner.invoke(main, ["outbox", *var, "--json"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    states = [json.loads(line)["state"] for line in listed.output.splitlines() if line]
    assert states and set(states) == {"delivered"}
    out = settings.data_dir / "exported"
    written = runner.invoke(main, ["results", ct.study_instance_uid, *var, "--out", str(out)])
    assert written.exit_code == 0, written.output
    names = {p.name for p in out.glob("job-*/*")}
    assert {"sr-1.dcm", "sc-1.dcm", "gsps-1.dcm", "seg-1.dcm", "semd.xml", "semd.json"} <= names
    unknown = runner.invoke(main, ["outbox", *var, "retry", "999999"])
    assert unknown.exit_code != 0 and "no undelivered outbox row 999999" in unknown.output
