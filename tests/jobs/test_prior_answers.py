"""Priors against archives that answer badly or unhelpfully: the C-FIND and C-MOVE SCUs
against a pynetdicom Query/Retrieve SCP on loopback whose answers the test chooses, and
what the gateway makes of such answers (another patient under the same ID, a retrieve that
fails or brings nothing) on a real index. Whatever the archive does, the job gets no wrong
prior and is never failed for it; the timeline says why."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from sqlalchemy import select

from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from gateway.index.study_state import StudyState
from gateway.index.tables import JobRow, StudyEventRow, StudyRow, utcnow
from gateway.ingest.receive import Ingest
from gateway.ingest.sources import load_directory, sync_directory
from gateway.jobs.priors import PRIORS_EVENT, PriorFetch
from gateway.jobs.states import JobState
from gateway.settings import Settings
from models.manifest import DeviceManifest
from pacs_adapters.dicom_find import STUDY_ROOT_FIND, ArchiveStudy, patient_studies
from pacs_adapters.dicom_retrieve import STUDY_ROOT_MOVE, Retrieved, move_study
from pacs_adapters.dicom_scu import Peer, ScuError
from tests.onnx_models import classifier_with_heatmap, manifest_dict
from tests.services import ROOT, free_port, make_uid

CURRENT_UID = make_uid("answers", "current")


@pytest.fixture
def archive() -> Iterator[Callable[[list[Dataset], Any], Peer]]:
    """``start(matches, on_move)``: an SCP answering C-FIND with ``matches`` (pending, then
    success) and C-MOVE with ``on_move`` (pynetdicom's generator protocol)."""
    servers: list[Any] = []

    def start(matches: list[Dataset], on_move: Any = None) -> Peer:
        def on_find(_event: Any) -> Iterator[tuple[int, Dataset | None]]:
            for match in matches:
                yield 0xFF00, match

        ae = AE(ae_title="ARCHIVE")
        ae.add_supported_context(STUDY_ROOT_FIND)
        ae.add_supported_context(STUDY_ROOT_MOVE)
        handlers: list[Any] = [(evt.EVT_C_FIND, on_find)]
        if on_move is not None:
            handlers.append((evt.EVT_C_MOVE, on_move))
        port = free_port()
        servers.append(ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers))
        return Peer(host="127.0.0.1", port=port, called_ae="ARCHIVE", timeout_s=5.0)

    yield start
    for server in servers:
        server.shutdown()


def _match(uid: str, **values: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_a_patients_studies_are_read_bounded_and_bad_ones_skipped(
    archive: Callable[..., Peer],
) -> None:
    good = make_uid("answers", "good")
    peer = archive(
        [
            _match("1.2.x.4", StudyDate="20240101"),  # not a UID: skipped
            _match("1." + "2" * 70, StudyDate="20240101"),  # too long: skipped, never cut
            _match(good, StudyDate="2024-01-01", StudyDescription="D" * 64, PatientName="A^B"),
            _match(make_uid("answers", "ct"), StudyDate="20230101", ModalitiesInStudy="CT\\SR"),
        ]
    )
    found = patient_studies(peer, "PAT-1", "20200101", "20260101")
    assert [s.study_uid for s in found] == [good, make_uid("answers", "ct")]
    assert found[0].study_date is None  # not YYYYMMDD: unknown, never guessed
    assert (found[0].patient_name, found[1].modalities) == ("A^B", ("CT", "SR"))


def test_too_many_matches_is_an_error_not_a_choice(archive: Callable[..., Peer]) -> None:
    peer = archive([_match(make_uid("many", n)) for n in range(501)])
    with pytest.raises(ScuError, match="more than 500 matches"):
        patient_studies(peer, "PAT-1", "20200101", "20260101")


def test_a_move_the_archive_cannot_do_is_an_error(archive: Callable[..., Peer]) -> None:
    def unknown_destination(_event: Any) -> Iterator[Any]:
        yield None, None  # pynetdicom answers 0xA801: move destination unknown

    peer = archive([], unknown_destination)
    with pytest.raises(ScuError, match="0xA801"):
        move_study(peer, make_uid("answers", "move"), "AIGW", 5.0)


@pytest.fixture
def fetch_for(tmp_path: Path) -> Iterator[Callable[..., tuple[PriorFetch, Database]]]:
    """A prior fetch on a real index holding one current study (PAT-1, Ivanov^Ivan) and its
    job, with the archive's calls replaced by the test's."""
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    sources = tmp_path / "sources.yaml"
    query = {"host": "127.0.0.1", "port": free_port(), "ae_title": "ARCHIVE"}
    sources.write_text(
        json.dumps({"sources": [{"name": "a", "ae_title": "A", "region": "38", "query": query}]})
    )
    directory = load_directory(sources, ROOT / "gateway" / "configs" / "regions.yaml", False)
    source_ids = sync_directory(db, directory)
    now = utcnow()
    with db.session() as session:
        study = StudyRow(
            study_uid=CURRENT_UID,
            source_id=source_ids["a"],
            region_code="38",
            state=StudyState.ROUTED.value,
            patient_id="PAT-1",
            patient_name="Ivanov^Ivan",
            study_date="20260110",
            first_received_at=now,
            last_received_at=now,
            state_changed_at=now,
        )
        session.add(study)
        session.flush()
        session.add(
            JobRow(
                study_id=study.id,
                study_completed_at=now,
                series_uid=make_uid("answers", "series"),
                device_key="test-cxr@1.0.0",
                study_type="chest_xray",
                service_code="7002892",
                rule="r",
                priority=3,
                queue="q",
                state=JobState.RUNNING.value,
                created_at=now,
            )
        )

    def build(**calls: Any) -> tuple[PriorFetch, Database]:
        store = FolderStore(tmp_path / "objects")
        ingest = Ingest(db, store)
        settings = Settings(data_dir=tmp_path)
        return PriorFetch(settings, db, ingest, directory, source_ids, **calls), db

    yield build
    db.dispose()


MANIFEST = DeviceManifest.model_validate(
    manifest_dict(classifier_with_heatmap(), priors={"max": 1, "within_years": 5})
)


def _looked(db: Database) -> StudyEventRow:
    with db.session() as session:
        return session.scalars(
            select(StudyEventRow).where(StudyEventRow.kind == PRIORS_EVENT)
        ).one()


def test_another_patient_under_the_same_id_is_never_a_prior(
    fetch_for: Callable[..., tuple[PriorFetch, Database]],
) -> None:
    same = make_uid("answers", "same-patient")
    other = make_uid("answers", "other-patient")
    moved: list[str] = []

    def find(_peer: Peer, patient_id: str, since: str, until: str) -> list[ArchiveStudy]:
        assert (patient_id, since, until) == ("PAT-1", "20210110", "20260110")
        return [
            ArchiveStudy(CURRENT_UID, "20260110", ("DX",), "IVANOV^IVAN", None),
            ArchiveStudy(other, "20250101", ("DX",), "Petrov^Petr", None),  # newer, not his
            ArchiveStudy(same, "20240101", ("CR",), "IVANOV^IVAN^^", None),
            ArchiveStudy(make_uid("answers", "ct"), "20250601", ("CT",), "Ivanov^Ivan", None),
        ]

    def move(_peer: Peer, study_uid: str, destination: str, _within_s: float) -> Retrieved:
        moved.append(study_uid)
        assert destination == "AIGW"
        return Retrieved(0, 0, 0)  # the archive "succeeded" and sent nothing

    fetch, db = fetch_for(find=find, move=move)
    assert fetch(1, MANIFEST) == ()
    assert moved == [same]
    looked = _looked(db)
    assert looked.detail["chosen"] == [same] and looked.detail["studies"] == []
    assert looked.detail["failed"] == {same: "the archive sent no instance"}
    assert looked.note == "without priors: no prior study could be fetched"
    with db.session() as session:
        # The study placed for the move got nothing: it is gone, not an empty study.
        assert session.scalars(select(StudyRow.study_uid)).all() == [CURRENT_UID]
        assert session.get(JobRow, 1).prior_study_uids == []  # type: ignore[union-attr]

    # Asked again (a redelivery), the job keeps its record: the archive is not asked again.
    def never(*_args: Any) -> Sequence[ArchiveStudy]:
        raise AssertionError("asked the archive again")

    again, _ = fetch_for(find=never, move=never)
    assert again(1, MANIFEST) == ()


def test_a_failed_move_leaves_the_job_without_priors_and_says_why(
    fetch_for: Callable[..., tuple[PriorFetch, Database]],
) -> None:
    prior = make_uid("answers", "prior")

    def find(*_args: Any) -> list[ArchiveStudy]:
        return [ArchiveStudy(prior, "20240101", ("DX",), None, None)]

    def move(*_args: Any) -> Retrieved:
        raise ScuError("C-MOVE failed with status 0xA702")

    fetch, db = fetch_for(find=find, move=move)
    assert fetch(1, MANIFEST) == ()
    looked = _looked(db)
    assert looked.detail["failed"] == {prior: "C-MOVE failed with status 0xA702"}
    assert looked.note == "without priors: no prior study could be fetched"


def test_a_manifest_without_priors_asks_nothing(
    fetch_for: Callable[..., tuple[PriorFetch, Database]],
) -> None:
    def never(*_args: Any) -> list[ArchiveStudy]:
        raise AssertionError("asked the archive")

    fetch, db = fetch_for(find=never)
    plain = DeviceManifest.model_validate(manifest_dict(classifier_with_heatmap()))
    assert fetch(1, plain) == ()
    with db.session() as session:
        assert session.get(JobRow, 1).prior_study_uids is None  # type: ignore[union-attr]
