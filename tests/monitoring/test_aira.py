"""Reading a radiologist's assessment object: the verdict by the documented rules, the
results and findings it is about, and no verdict where it is ambiguous or silent."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from gateway.monitoring.aira import read_assessment
from gateway.monitoring.verdicts import Verdict
from gateway.results.header import finding_tracking_uid, tracking_uid
from gateway.results.input import ReportInput
from gateway.results.sr import build_sr
from tests.monitoring.aira_objects import (
    OF_INTEREST,
    REJECTED_FOR_QUALITY,
    assessment_sr,
    selection_kos,
)
from tests.report_fixtures import chest_xray_input


@pytest.fixture(scope="module")
def report() -> ReportInput:
    return chest_xray_input(positive=True)


@pytest.fixture(scope="module")
def our_sr(report: ReportInput) -> Dataset:
    return build_sr(report)


@pytest.mark.parametrize("decision", ["accept", "modify", "reject"])
def test_an_assessment_sr_gives_its_verdict_and_what_it_is_about(
    report: ReportInput, our_sr: Dataset, decision: str
) -> None:
    first = tracking_uid(report, 1)
    ds = assessment_sr(our_sr, [decision], seed=decision, tracking_uids=[first], comment="ok")
    found = read_assessment(ds)
    assert found.verdict == Verdict(decision)
    assert str(our_sr.SOPInstanceUID) in found.references
    assert found.tracking_uids == {first}
    assert found.comment == "ok"
    assert "Assessment of AI result" in found.how
    # The tracking UID a viewer names is the one the SR gave the job's first finding.
    study_uid = str(report.sources[0].StudyInstanceUID)
    assert finding_tracking_uid(report.uid_root, study_uid, report.job_id, 1) == first


def test_contradicting_or_silent_assessments_give_no_verdict(our_sr: Dataset) -> None:
    both = read_assessment(assessment_sr(our_sr, ["accept", "reject"], seed="both"))
    assert both.verdict is None and both.how.startswith("ambiguous")
    silent = read_assessment(assessment_sr(our_sr, [], seed="silent"))
    assert silent.verdict is None and silent.how == "no assessment content"
    assert str(our_sr.SOPInstanceUID) in silent.references


@pytest.mark.parametrize(
    ("title", "verdict"),
    [(REJECTED_FOR_QUALITY, Verdict.REJECT), (OF_INTEREST, Verdict.ACCEPT)],
)
def test_a_key_object_selection_gives_its_verdict_by_its_title(
    our_sr: Dataset, title: Code, verdict: Verdict
) -> None:
    kos = selection_kos(our_sr, title, seed=str(verdict), description="не подтверждаю")
    found = read_assessment(kos)
    assert found.verdict == verdict
    assert found.references == {str(our_sr.SOPInstanceUID)}
    assert found.comment == "не подтверждаю"  # the Key Object Description


def test_a_key_object_selection_of_another_title_says_nothing(our_sr: Dataset) -> None:
    kos = selection_kos(our_sr, codes.DCM.ForTeaching, seed="teaching")
    assert read_assessment(kos).verdict is None
