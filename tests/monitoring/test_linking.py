"""The completion hook in front of the dispatcher: an assessment object received into a
study (through the real ingest) becomes a verdict and the study is not routed again; when
anything else arrived with it, the study goes on to the dispatcher; an object that cannot be
read as an assessment is noted on the timeline, not linked."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy import select

from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from gateway.index.read_model import study_detail
from gateway.index.tables import SourceRow, StudyRow, utcnow
from gateway.ingest.assembly import Assembler, StudyCompleted
from gateway.ingest.receive import Ingest, Sender
from gateway.ingest.sources import load_directory
from gateway.monitoring.linking import AssessmentLinker
from gateway.monitoring.verdicts import history
from tests.control_plane_data import Seed, prepare_index, register_devices, seed
from tests.monitoring.aira_objects import REJECTED_FOR_QUALITY, assessment_sr, selection_kos
from tests.services import ROOT, ct_instance, make_uid

SOURCES = ROOT / "gateway" / "configs" / "sources.yaml"
REGIONS = ROOT / "gateway" / "configs" / "regions.yaml"


class Parts:
    def __init__(self, tmp_path: Path) -> None:
        self.db = Database(f"sqlite:///{tmp_path / 'index.db'}")
        prepare_index(self.db)
        self.store = FolderStore(tmp_path / "objects")
        register_devices(self.db, self.store, tmp_path / "devices")
        self.data: Seed = seed(self.db, self.store, utcnow())
        self.directory = load_directory(SOURCES, REGIONS, open_mode=False)
        self.assembler = Assembler(self.db, self.directory, 3600.0)
        self.routed: list[str] = []  # what reached the dispatcher
        self.linker = AssessmentLinker(self.db, self.store, None, then=self._route)

    def _route(self, completed: StudyCompleted) -> None:
        self.routed.append(completed.study_uid)

    def receive(self, dataset: Dataset) -> None:
        with self.db.session() as session:
            source_id = session.scalar(select(SourceRow.id).where(SourceRow.name == "irk-cami"))
        assert source_id is not None
        source = self.directory.by_name("irk-cami")
        assert source is not None
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        sender = Sender(source=source, source_id=source_id, calling_ae="IRK_CAMI")
        outcome = Ingest(self.db, self.store).receive(buffer.getvalue(), sender)
        assert outcome.status == 0, outcome.reason

    def complete(self, study_uid: str) -> None:
        """What the assembler does after the quiet period, then its hand-over to the hook."""
        assert self.assembler.complete(study_uid)
        with self.db.session() as session:
            study = session.scalars(select(StudyRow).where(StudyRow.study_uid == study_uid)).one()
            completed_at = study.completed_at
        assert completed_at is not None
        self.linker(
            StudyCompleted(
                study_uid=study_uid,
                source="irk-cami",
                region="38",
                completed_at=completed_at,
                reason="complete",
            )
        )

    def state(self, study_uid: str) -> str:
        with self.db.session() as session:
            found = session.scalar(select(StudyRow.state).where(StudyRow.study_uid == study_uid))
        return str(found)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    made = Parts(tmp_path)
    yield made
    made.db.dispose()


def _our_sr(parts: Parts, name: str) -> Dataset:
    """The header of the seeded study's SR, as a viewer has it."""
    study = parts.data.study(name)
    ds = Dataset()
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = make_uid("cp-result", name, "sr")
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = make_uid("cp-result-series", name)
    ds.Modality = "SR"
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = f"PAT-{name}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyID = "1"
    ds.StudyDate = "20261201"
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"ACC-{name}"
    ds.ReferringPhysicianName = ""
    return ds


def test_an_assessment_alone_is_linked_and_the_study_is_not_routed_again(parts: Parts) -> None:
    study = parts.data.study("irk-1")
    job = study.job_ids[0]
    parts.receive(selection_kos(_our_sr(parts, "irk-1"), REJECTED_FOR_QUALITY, seed="k1"))
    assert parts.state(study.uid) == "superseded"
    parts.complete(study.uid)
    assert parts.routed == [] and parts.state(study.uid) == "routed"
    (verdict,) = history(parts.db, job, None) or []
    assert (verdict.verdict, verdict.source, verdict.author) == (
        "reject",
        "dicom",
        "DICOM IRK_CAMI",
    )

    # An image with a second assessment: the study goes on to routing, the verdict is linked.
    accept = assessment_sr(_our_sr(parts, "irk-1"), ["accept"], seed="a1")
    parts.receive(accept)
    image = ct_instance(study.uid, make_uid("late-series", 1), make_uid("late", 1), 1)
    parts.receive(image)
    parts.complete(study.uid)
    assert parts.routed == [study.uid]
    verdicts = history(parts.db, job, None) or []
    assert [(v.verdict, v.superseded_at is None) for v in verdicts] == [
        ("reject", False),
        ("accept", True),
    ]


def test_an_object_about_our_results_without_a_verdict_is_noted_not_linked(parts: Parts) -> None:
    study = parts.data.study("irk-3")
    parts.receive(assessment_sr(_our_sr(parts, "irk-3"), ["accept", "reject"], seed="both"))
    parts.complete(study.uid)
    assert parts.routed == []  # still only an assessment: no second analysis
    assert all(history(parts.db, job, None) == [] for job in study.job_ids)
    detail = study_detail(parts.db, study.uid, None)
    assert detail is not None
    (unread,) = [e for e in detail.timeline if e.kind == "assessment_unread"]
    assert unread.note is not None and "ambiguous" in unread.note


def test_an_sr_about_something_else_is_routed_as_any_instance(parts: Parts) -> None:
    study = parts.data.study("irk-2")
    stranger = _our_sr(parts, "irk-2")
    stranger.SOPInstanceUID = make_uid("not-ours", 1)  # a report of someone else's
    parts.receive(assessment_sr(stranger, ["accept"], seed="other"))
    parts.complete(study.uid)
    assert parts.routed == [study.uid]
