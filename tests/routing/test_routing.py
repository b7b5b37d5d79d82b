"""Routing: rules file, series selection, device acceptance and the explanations — pure,
no database except the one test that reads facts back from a real index."""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from click.testing import CliRunner
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from gateway.cli.rules import rules_test_command
from gateway.demo.synthetic import (
    chest_xray_study,
    ct_chest_study,
    ct_head_study,
    mammography_study,
)
from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from gateway.ingest.receive import Ingest, Sender
from gateway.ingest.sources import load_directory, sync_directory
from gateway.routing import (
    Priority,
    RoutingConfigError,
    RoutingDecision,
    RoutingRules,
    SeriesFacts,
    StudyFacts,
    explain_files,
    facts_from_datasets,
    facts_from_index,
    load_rules,
    route,
)
from models.manifest import DeviceManifest, load_manifest
from models.study_types import StudyType, service_code
from tests.services import ROOT, require_shared_data

RULES_FILE = ROOT / "gateway" / "configs" / "routing.yaml"
ZOO = ROOT / "models" / "zoo"

CXR, CT_CHEST, CT_BRAIN, MAMMO = (
    "aigw-ref-cxr",
    "aigw-ref-ct-chest",
    "aigw-ref-ct-brain",
    "aigw-ref-mammo",
)
# The acceptance criteria the reference devices declare (models/zoo/<id>/manifest.yaml);
# used where a manifest is not (yet) there.
REFERENCE_DEVICES: dict[str, dict[str, Any]] = {
    CXR: {
        "types": [StudyType.FLUOROGRAPHY, StudyType.CHEST_XRAY],
        "accepts": {"modalities": ["DX", "CR", "RF"], "body_parts": ["CHEST"]},
    },
    CT_CHEST: {
        "types": [StudyType.CT_CHEST, StudyType.LDCT_CHEST],
        "accepts": {
            "modalities": ["CT"],
            "body_parts": ["CHEST"],
            "slice_thickness_mm": {"max": 2.5},
            "min_instances": 16,
        },
    },
    CT_BRAIN: {
        "types": [StudyType.CT_BRAIN],
        "accepts": {
            "modalities": ["CT"],
            "body_parts": ["HEAD", "BRAIN"],
            "slice_thickness_mm": {"max": 6.0},
            "min_instances": 8,
        },
    },
    MAMMO: {
        "types": [StudyType.MAMMOGRAPHY],
        "accepts": {"modalities": ["MG"], "body_parts": ["BREAST"]},
    },
}


def build_manifest(
    device_id: str, types: list[StudyType], accepts: dict[str, Any]
) -> DeviceManifest:
    return DeviceManifest.model_validate(
        {
            "id": device_id,
            "version": "1.0.0",
            "name": device_id,
            "name_ru": device_id,
            "vendor": "tests",
            "study_types": [{"type": t, "service_code": service_code(t)} for t in types],
            "accepts": accepts,
            "input": {"name": "image", "dims": 2, "size": [64, 64]},
            "outputs": [
                {
                    "name": "probability",
                    "kind": "classification",
                    "labels": [{"code": "1", "ru": "патология", "en": "finding", "threshold": 0.5}],
                }
            ],
            "onnx": {"file": "model.onnx", "sha256": "0" * 64},
            "provenance": {
                "training_data": "none",
                "clinical_use": False,
                "notice_ru": "тест",
                "notice_en": "test",
            },
        }
    )


@pytest.fixture(scope="module")
def devices() -> list[DeviceManifest]:
    """The reference devices: their real manifests where built, else the same criteria."""
    real = {m.id: m for m in (load_manifest(p) for p in sorted(ZOO.glob("*/manifest.yaml")))}
    return [real.get(i) or build_manifest(i, **spec) for i, spec in REFERENCE_DEVICES.items()]


@pytest.fixture(scope="module")
def rules() -> RoutingRules:
    return load_rules(RULES_FILE)


def only_job(decision: RoutingDecision) -> Any:
    assert decision.not_applicable_reason is None, decision.not_applicable_reason
    assert len(decision.jobs) == 1, decision.jobs
    return decision.jobs[0]


# --------------------------------------------------------------------------- the rules file


def test_the_rules_file_lists_the_rules_in_order(rules: RoutingRules) -> None:
    assert [r.name for r in rules.rules] == [
        "ct-brain",
        "ldct-chest",
        "ct-chest",
        "fluorography",
        "chest-xray",
        "chest-xray-secondary-capture",
        "mammography",
    ]
    priorities = {r.name: r.priority for r in rules.rules}
    assert priorities.pop("ct-brain") == Priority.URGENT
    assert set(priorities.values()) == {Priority.ROUTINE}


# --------------------------------------------------------------------------- synthetic studies


def test_ct_chest_routes_its_axial_series_and_skips_the_localizer(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    study = ct_chest_study(3, size=(64, 64))
    decision = route(facts_from_datasets(study.datasets, region="38"), rules, devices)
    job = only_job(decision)
    axial = study.datasets[-1].SeriesInstanceUID
    assert (job.device_id, job.study_type, job.service_code) == (CT_CHEST, "ct_chest", "7001894")
    assert job.series_uid == axial and job.series_uids == (axial,)
    assert job.priority == Priority.ROUTINE and job.rule == "ct-chest"
    localizer = next(n for n in decision.series if n.series_uid != axial)
    assert localizer.skipped == "localizer (ImageType has LOCALIZER)"


def test_ct_head_is_urgent_and_goes_to_the_brain_device(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    job = only_job(
        route(facts_from_datasets(ct_head_study(4, size=(64, 64)).datasets), rules, devices)
    )
    assert (job.device_id, job.study_type, job.service_code) == (CT_BRAIN, "ct_brain", "7001472")
    assert job.priority == Priority.URGENT and job.rule == "ct-brain"
    assert int(job.priority) > int(Priority.ROUTINE)  # the queue serves higher first


@pytest.mark.parametrize(
    ("kind", "modality", "sop", "study_type", "rule"),
    [
        ("fluorography", "DX", None, "fluorography", "fluorography"),
        ("fluorography", "CR", None, "fluorography", "fluorography"),
        ("fluorography", "DX", "sc", "fluorography", "fluorography"),
        ("radiography", "DX", None, "chest_xray", "chest-xray"),
        ("radiography", "CR", None, "chest_xray", "chest-xray"),
        ("radiography", "CR", "sc", "chest_xray", "chest-xray"),
        ("radiography", "DX", "sc", "chest_xray", "chest-xray"),
    ],
)
def test_chest_x_rays_split_into_fluorography_and_radiography(
    rules: RoutingRules,
    devices: list[DeviceManifest],
    kind: Any,
    modality: Any,
    sop: Any,
    study_type: str,
    rule: str,
) -> None:
    study = chest_xray_study(5, kind, modality, sop=sop, size=(128, 128))
    job = only_job(route(facts_from_datasets(study.datasets), rules, devices))
    assert (job.device_id, job.study_type, job.rule) == (CXR, study_type, rule)
    assert job.service_code == {"fluorography": "7003320", "chest_xray": "7002892"}[study_type]


def test_fluorography_is_claimed_before_chest_radiography_can_match(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    study = chest_xray_study(6, size=(128, 128))
    decision = route(facts_from_datasets(study.datasets), rules, devices)
    later = next(e for e in decision.explanations if e.rule == "chest-xray")
    assert not later.matched
    assert later.reason == "matches, but rule fluorography (earlier) already claimed it"


def test_an_ot_secondary_capture_with_a_chest_description_is_a_chest_x_ray(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    ds = chest_xray_study(7, "radiography", "DX", sop="sc", size=(128, 128)).datasets[0]
    ds.Modality = "OT"
    del ds.BodyPartExamined
    decision = route(facts_from_datasets([ds]), rules, devices)
    matched = [e.rule for e in decision.explanations if e.matched]
    assert matched == ["chest-xray-secondary-capture"]
    if "OT" not in next(d for d in devices if d.id == CXR).accepts.modalities:
        assert decision.not_applicable_reason is not None
        assert "Modality OT not in the device's" in decision.not_applicable_reason
    else:
        assert only_job(decision).study_type == "chest_xray"


def test_mammography_is_one_job_for_the_whole_study(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    study = mammography_study(8, size=(128, 104))
    # The same four views as one series per view (as many GE units send them).
    per_view = []
    for ds in study.datasets:
        copy_ = copy.deepcopy(ds)
        copy_.SeriesInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID])
        per_view.append(copy_)
    for datasets, series_count in ((study.datasets, 1), (per_view, 4)):
        job = only_job(route(facts_from_datasets(datasets), rules, devices))
        assert (job.device_id, job.study_type, job.service_code) == (
            MAMMO,
            "mammography",
            "7003379",
        )
        assert len(job.series_uids) == series_count
        assert set(job.series_uids) == {ds.SeriesInstanceUID for ds in datasets}


# --------------------------------------------------------------------------- series selection


def _restamp(datasets: tuple[Dataset, ...], study_uid: str, number: int) -> list[Dataset]:
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID = study_uid
        ds.SeriesNumber = number
        out.append(ds)
    return out


def _dose_report(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    ds.Modality = "SR"
    ds.SeriesDescription = "Dose Report"
    return ds


def _dose_screen(study_uid: str) -> Dataset:
    ds = _dose_report(study_uid)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.PhotometricInterpretation = "RGB"
    return ds


def test_the_thinnest_axial_series_is_chosen_and_dose_objects_are_skipped(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    thin = ct_chest_study(9, size=(64, 64), slice_thickness_mm=1.0)
    thick = ct_chest_study(9, size=(64, 64), slice_thickness_mm=2.0, with_localizer=False)
    uid = thin.study_instance_uid
    datasets = [*thin.datasets, *_restamp(thick.datasets, uid, 3)]
    datasets += [_dose_report(uid), _dose_screen(uid)]
    decision = route(facts_from_datasets(datasets), rules, devices)
    job = only_job(decision)
    assert job.series_uid == thin.datasets[-1].SeriesInstanceUID
    skipped = {n.skipped for n in decision.series if n.skipped}
    assert skipped == {
        "localizer (ImageType has LOCALIZER)",
        "not an image (Modality SR, a structured report)",
        "dose page capture (secondary capture described 'Dose Report')",
    }
    checks = [c for c in decision.device_checks if c.device.startswith(CT_CHEST)]
    assert [(c.accepted, c.chosen) for c in checks] == [(True, True), (True, False)]


def _ct_series(
    uid: str, thickness: float, images: int, orientation: tuple[float, ...]
) -> SeriesFacts:
    return SeriesFacts(
        series_uid=uid,
        modality="CT",
        body_part="CHEST",
        series_description=f"{thickness} mm",
        image_types=["ORIGINAL\\PRIMARY\\AXIAL"],
        sop_classes=["1.2.840.10008.5.1.4.1.1.2"],
        slice_thicknesses=[thickness],
        orientation=orientation,
        instance_count=images,
        photometrics=["MONOCHROME2"],
    )


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def test_selection_skips_coronal_reformats_and_too_short_series(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    facts = StudyFacts(
        study_uid="1.2.3",
        patient_age_years=60,
        series=[
            _ct_series("1.2.3.1", 5.0, 60, AXIAL),  # too thick for the CT chest device
            _ct_series("1.2.3.2", 1.25, 240, AXIAL),  # the one
            _ct_series("1.2.3.3", 0.6, 300, CORONAL),  # a coronal MPR: thinnest, not axial
            _ct_series("1.2.3.4", 0.6, 10, AXIAL),  # thin, but a partial series
            _ct_series("1.2.3.5", 1.0, 2, CORONAL),  # a localizer without the LOCALIZER token
            _ct_series("1.2.3.6", 1.0, 1, AXIAL).model_copy(
                update={"image_types": ["DERIVED\\SECONDARY\\SCREEN SAVE"]}
            ),
        ],
    )
    decision = route(facts, rules, devices)
    assert only_job(decision).series_uid == "1.2.3.2"
    reasons = {c.series_uid: c.reason for c in decision.device_checks}
    assert reasons["1.2.3.1"] is not None and "slice thickness 5 mm outside" in reasons["1.2.3.1"]
    assert reasons["1.2.3.3"] is not None and "not an axial series" in reasons["1.2.3.3"]
    assert reasons["1.2.3.4"] is not None and "10 images, fewer than" in reasons["1.2.3.4"]
    localizer = next(n for n in decision.series if n.series_uid == "1.2.3.5")
    assert localizer.skipped is not None and localizer.skipped.startswith("localizer (2 non-axial")
    screen = next(n for n in decision.series if n.series_uid == "1.2.3.6")
    assert screen.skipped == "screen capture (ImageType has SCREEN SAVE)"


def test_the_frontal_chest_image_is_chosen_over_the_lateral(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    pa = chest_xray_study(10, "radiography", "DX", size=(128, 128)).datasets[0]
    lateral = copy.deepcopy(pa)
    lateral.SeriesInstanceUID = generate_uid()
    lateral.SOPInstanceUID = generate_uid()
    lateral.SeriesNumber = 0
    lateral.ViewPosition = "LL"
    lateral.SeriesDescription = "ОГК боковая"
    decision = route(facts_from_datasets([lateral, pa]), rules, devices)
    assert only_job(decision).series_uid == pa.SeriesInstanceUID
    refused = next(c for c in decision.device_checks if c.series_uid == lateral.SeriesInstanceUID)
    assert refused.reason == "lateral view (LL)"


# --------------------------------------------------------------------------- not applicable


def test_a_child_is_not_sent_to_an_adult_only_device(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    facts = facts_from_datasets(ct_head_study(11, size=(64, 64)).datasets)
    child = facts.model_copy(update={"patient_age_years": 10})
    decision = route(child, rules, devices)
    assert decision.jobs == []
    assert decision.not_applicable_reason is not None
    assert "rule ct-brain matched series" in decision.not_applicable_reason
    assert "patient age 10 under 18: the device is adult only" in decision.not_applicable_reason


def test_a_region_without_devices_gets_not_applicable(rules: RoutingRules) -> None:
    facts = facts_from_datasets(ct_head_study(12, size=(64, 64)).datasets, region="77")
    decision = route(facts, rules, [])
    assert decision.not_applicable_reason is not None
    assert "no device enabled for region 77 serves ct_brain" in decision.not_applicable_reason


def test_a_study_of_nothing_routable_says_why_per_series_and_rule(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    scout = _ct_series("1.2.9.1", 1.0, 1, CORONAL).model_copy(
        update={
            "body_part": "HEAD",
            "series_description": "scout",
            "image_types": ["ORIGINAL\\PRIMARY\\LOCALIZER"],
        }
    )
    knee = _ct_series("1.2.9.2", 1.0, 100, AXIAL).model_copy(update={"body_part": "KNEE"})
    facts = StudyFacts(study_uid="1.2.9", series=[scout, knee])
    reason = route(facts, rules, devices).not_applicable_reason
    assert reason is not None and reason.startswith("no rule matched: ")
    assert "series 1.2.9.1 (CT, HEAD, 'scout', 1 instance): skipped, localizer" in reason
    assert "rule ct-brain: BodyPartExamined KNEE not in ['HEAD', 'BRAIN']" in reason
    assert "rule mammography: Modality CT not in ['MG']" in reason


def test_a_rule_pinned_to_another_device_plans_nothing(devices: list[DeviceManifest]) -> None:
    rules = _rules(
        {
            "name": "brain-pinned",
            "study_type": "ct_brain",
            "selection": "thinnest_axial",
            "devices": ["vendor-x-brain"],
            "match": {"modalities": ["CT"]},
        }
    )
    facts = facts_from_datasets(ct_head_study(13, size=(64, 64)).datasets)
    reason = route(facts, rules, devices).not_applicable_reason
    assert reason is not None and "rule brain-pinned pins ['vendor-x-brain']" in reason


# --------------------------------------------------------------------------- conditions


def _rules(*rules: dict[str, Any], **top: Any) -> RoutingRules:
    return RoutingRules.model_validate({"rules": list(rules), **top})


def _failures(rules: RoutingRules, facts: StudyFacts) -> list[str]:
    decision = route(facts, rules, [])
    return [f for e in decision.explanations for f in e.failures]


def test_every_condition_reports_the_values_seen() -> None:
    rules = _rules(
        {
            "name": "everything",
            "study_type": "ct_chest",
            "selection": "thinnest_axial",
            "match": {
                "sources": ["tula-cami"],
                "regions": ["71"],
                "modalities": ["CT"],
                "sop_classes": ["1.2.840.10008.5.1.4.1.1.2"],
                "body_part": {"any_of": ["chest"]},
                "series_description": "легк",
                "study_description": "^КТ",
                "exclude_description": "1[.,]25",
                "image_type": {"include": ["primary", "helical"], "exclude": ["derived"]},
                "slice_thickness_mm": {"min": 0.5, "max": 1.0},
                "instances": {"min": 100},
                "patient_age": {"min": 18, "max": 60},
            },
        }
    )
    series = _ct_series("1.9.1", 1.25, 40, AXIAL).model_copy(
        update={"body_part": "thorax", "series_description": "1.25 mm"}
    )
    facts = StudyFacts(
        study_uid="1.9", source="irk-cami", region="38", patient_age_years=70, series=[series]
    )
    assert _failures(rules, facts) == [
        "source irk-cami not in ['tula-cami']",
        "region 38 not in ['71']",
        "BodyPartExamined thorax not in ['CHEST']",
        "SeriesDescription '1.25 mm' does not match 'легк'",
        "StudyDescription no description to match '^КТ'",
        "description '1.25 mm' matches excluded '1[.,]25'",
        "ImageType lacks HELICAL (ORIGINAL\\PRIMARY\\AXIAL)",
        "slice thickness 1.25 mm outside 0.5–1 mm",
        "40 images, want ≥ 100",
        "patient age 70 outside 18–60 years",
    ]
    aliased = _rules(
        *[r.model_dump(mode="json") for r in rules.rules], body_part_aliases={"THORAX": "CHEST"}
    )
    assert "BodyPartExamined thorax → CHEST not in ['CHEST']" not in _failures(aliased, facts)


def test_a_missing_body_part_may_be_read_from_the_series_description_only() -> None:
    rules = _rules(
        {
            "name": "chest",
            "study_type": "ct_chest",
            "selection": "thinnest_axial",
            "match": {"body_part": {"any_of": ["CHEST"], "if_missing": "ОГК|chest"}},
        }
    )
    unnamed = _ct_series("1.8.1", 1.0, 100, AXIAL).model_copy(
        update={"body_part": None, "series_description": None}
    )
    described = unnamed.model_copy(update={"series_description": "Chest 1.0"})
    head = unnamed.model_copy(update={"series_description": "Head 5.0"})
    study = StudyFacts(study_uid="1.8", study_description="КТ головы и ОГК", series=[unnamed])
    # No series text: the study's description stands in; the series' own text wins if any.
    assert _failures(rules, study) == []
    assert _failures(rules, study.model_copy(update={"series": [described]})) == []
    assert _failures(rules, study.model_copy(update={"series": [head]})) == [
        "BodyPartExamined missing and 'Head 5.0' does not match 'ОГК|chest'"
    ]


def test_unknown_age_is_adult_or_refused_as_configured(devices: list[DeviceManifest]) -> None:
    facts = facts_from_datasets(ct_head_study(14, size=(64, 64)).datasets)
    unknown = facts.model_copy(update={"patient_age_years": None})
    rule = {
        "name": "brain",
        "study_type": "ct_brain",
        "selection": "thinnest_axial",
        "match": {"modalities": ["CT"]},
    }
    assert route(unknown, _rules(rule), devices).jobs
    refused = route(unknown, _rules(rule, unknown_age="refuse"), devices).not_applicable_reason
    assert refused is not None and "patient age unknown: the device is adult only" in refused


# --------------------------------------------------------------------------- invalid rules


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"match": {"description": "флюоро(граф"}},
            "rule #1 'ct-brain': match.description: invalid regular expression 'флюоро(граф'",
        ),
        ({"match": {"colour": "red"}}, "rule #1 'ct-brain': match.colour: unknown field"),
        ({"study_type": "ct_knee"}, "rule #1 'ct-brain': study_type: Input should be"),
        (
            {"priority": "asap"},
            "rule #1 'ct-brain': priority: 'asap' is not a priority (routine, high, urgent)",
        ),
        (
            {"match": {"slice_thickness_mm": {"min": 5, "max": 1}}},
            "rule #1 'ct-brain': match.slice_thickness_mm: min 5 > max 1",
        ),
        (
            {"match": {"body_part": {"any_of": ["HEAD"], "if_missing": "*"}}},
            "rule #1 'ct-brain': match.body_part.if_missing: invalid regular expression '*'",
        ),
        ({"name": "ct-chest"}, "duplicate rule names: ct-chest"),
        ({"name": "CT Brain"}, "rule #1 'CT Brain': name: String should match pattern"),
        (
            {"selection": "frontal", "study_type": "ct_chest"},
            "rules: rules ct-brain and ct-chest both identify ct_chest",
        ),
    ],
)
def test_an_invalid_rules_file_is_refused_naming_the_rule_and_field(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    raw = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    first = raw["rules"][0]
    for key, value in change.items():
        first[key] = {**first[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(RoutingConfigError) as caught:
        load_rules(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_not_a_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(RoutingConfigError, match="expected a mapping of fields"):
        load_rules(path)
    path.write_text("rules: [\n", encoding="utf-8")
    with pytest.raises(RoutingConfigError, match="not valid YAML"):
        load_rules(path)


# --------------------------------------------------------------------------- real files


# What each real file in ../shared/data/dicom is, by its tags, and where it must go.
# (file or folder, device id or None, a phrase the decision must contain)
REAL_FILES: list[tuple[str, str | None, str]] = [
    # CR, BodyPartExamined CHEST, StudyDescription THORAX, ViewPosition PA, MONOCHROME1,
    # born 1940, studied 2004 (64 y).
    ("CR_chest_PA_Philips_J2KI.dcm", CXR, "chest_xray"),
    # Secondary Capture, Modality CR, CHEST, SeriesDescription 'view: PA'; PatientAge '62'
    # is not a valid AS value, so the age is unknown (taken as adult).
    ("CR_chest_PA_SIIM_JPEGBaseline.dcm", CXR, "chest_xray"),
    # CR of the tibia: BodyPartExamined EXTREMITY.
    (
        "CR_tibia_Fuji_J2KR.dcm",
        None,
        "rule chest-xray: BodyPartExamined EXTREMITY not in ['CHEST']",
    ),
    # CT, one derived 5 mm slice, no BodyPartExamined, StudyDescription 'e+1'.
    ("CT1_RLE_frags.dcm", None, "rule ct-chest: BodyPartExamined missing and 'e+1' does not match"),
    # CT, one 5 mm slice, no BodyPartExamined, SeriesDescription '5/5mm Plain'.
    ("CT_693_J2KR.dcm", None, "BodyPartExamined missing and '5/5mm Plain' does not match"),
    ("CT_693_UNCI.dcm", None, "BodyPartExamined missing and '5/5mm Plain' does not match"),
    # CT of the cervical spine.
    ("CT_Philips_Ingenuity_JPEGLossless.dcm", None, "BodyPartExamined CSPINE not in ['CHEST']"),
    # CT of the neck (its UIDs are not valid UIDs either: the SCP refuses it at ingest).
    ("CT_Siemens_JPEGLossless_badseq.dcm", None, "BodyPartExamined NECK not in ['HEAD', 'BRAIN']"),
    # Three 1.25 mm axial CT slices, no BodyPartExamined, no descriptions, ProtocolName
    # '6.9 Colonoscopy' (a CT colonography): not chest; and too short anyway (see below).
    ("CT_series_GE_LightSpeed", None, "'6.9 Colonoscopy' does not match"),
    # Secondary Capture, Modality DX, no BodyPartExamined, StudyDescription 'No Finding'
    # (an NIH ChestX-ray14 label): nothing in the header says chest, so it is not routed.
    ("DX_chest_NIH_SC_uncompressed.dcm", None, "BodyPartExamined missing and 'No Finding'"),
    # DX For Presentation, BodyPartExamined THORAX (→ CHEST), SeriesDescription 'CHEST',
    # PatientAge 005Y: a chest X-ray of a 5-year-old; the CXR device is adult only.
    ("DX_thorax_Fuji_ForPresentation_small.dcm", None, "patient age 5 under 18"),
    # MG For Presentation, BREAST, RMLO; PatientAge 000Y (anonymised) read as unknown.
    ("MG_GE_SenographeEssential_RMLO_ForPresentation_JPEGLossless.dcm", MAMMO, "mammography"),
    # Secondary Capture, Modality OT, no body part, no description.
    ("OT_deflated.dcm", None, "rule chest-xray-secondary-capture: BodyPartExamined missing"),
    # Structured reports are results, not images.
    ("SR_TID1500_highdicom.dcm", None, "no series to route"),
    ("SR_comprehensive_pydicom.dcm", None, "skipped, not an image (Modality SR"),
]


def _read(root: Path, name: str) -> list[Dataset]:
    paths = sorted((root / name).glob("*.dcm")) if (root / name).is_dir() else [root / name]
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


@pytest.mark.shared_data
def test_every_real_file_has_an_expected_route() -> None:
    root = require_shared_data()
    listed = {
        line.split("\t")[0].split("/")[0]
        for line in (root / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()[1:]
        if line.strip()
    }
    assert listed == {name for name, _, _ in REAL_FILES}


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(("name", "device", "phrase"), REAL_FILES, ids=[f[0] for f in REAL_FILES])
def test_real_files_route_to_the_right_device_or_say_why_not(
    rules: RoutingRules, devices: list[DeviceManifest], name: str, device: str | None, phrase: str
) -> None:
    decision = route(facts_from_datasets(_read(require_shared_data(), name)), rules, devices)
    if device is None:
        assert decision.jobs == []
        assert decision.not_applicable_reason is not None
        assert phrase in decision.not_applicable_reason
    else:
        job = only_job(decision)
        assert job.device_id == device and job.study_type == phrase


@pytest.mark.shared_data
def test_the_three_slice_ct_would_be_too_short_even_as_a_chest(
    rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    datasets = _read(require_shared_data(), "CT_series_GE_LightSpeed")
    for ds in datasets:
        ds.BodyPartExamined = "CHEST"
    reason = route(facts_from_datasets(datasets), rules, devices).not_applicable_reason
    assert reason is not None
    assert "rule ct-chest matched series" in reason
    assert "3 images, fewer than the device's minimum" in reason


# --------------------------------------------------------------------------- index, CLI


def _indexed(tmp_path: Path, datasets: list[Dataset]) -> StudyFacts:
    """Ingest the datasets from irk-cami (region 38) into a fresh SQLite index and read the
    study's facts back from it."""
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    directory = load_directory(
        ROOT / "gateway" / "configs" / "sources.yaml",
        ROOT / "gateway" / "configs" / "regions.yaml",
        open_mode=False,
    )
    ids = sync_directory(db, directory)
    source = directory.by_name("irk-cami")
    assert source is not None
    ingest = Ingest(db, FolderStore(tmp_path / "store"))
    sender = Sender(source=source, source_id=ids["irk-cami"], calling_ae="IRK_CAMI")
    for ds in datasets:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert ingest.receive(buffer.getvalue(), sender).status == 0
    try:
        with db.session() as session:
            return facts_from_index(session, datasets[0].StudyInstanceUID)
    finally:
        db.dispose()


def test_facts_from_the_index_route_like_the_files(
    tmp_path: Path, rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    study = ct_chest_study(15, size=(64, 64))
    indexed = _indexed(tmp_path, list(study.datasets))
    assert (indexed.source, indexed.region) == ("irk-cami", "38")
    from_files = facts_from_datasets(study.datasets, source="irk-cami", region="38")
    assert route(indexed, rules, devices).jobs == route(from_files, rules, devices).jobs
    axial = next(s for s in indexed.series if s.instance_count > 1)
    assert axial.orientation == AXIAL and axial.slice_thicknesses == [1.25]


def test_the_index_keeps_view_position_and_protocol_name_for_routing(
    tmp_path: Path, rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    # Only ProtocolName says fluorography, only ViewPosition says which image is lateral;
    # the lateral series has the lower SeriesNumber, so it would be chosen were it unknown.
    pa = chest_xray_study(17, "fluorography", "CR", size=(128, 128)).datasets[0]
    pa.SeriesDescription = "Грудная клетка"
    pa.StudyDescription = "Грудная клетка"
    pa.ProtocolName = "Флюорография"
    lateral = copy.deepcopy(pa)
    lateral.SeriesInstanceUID = generate_uid()
    lateral.SOPInstanceUID = generate_uid()
    lateral.SeriesNumber = 0
    lateral.ViewPosition = "LL"
    indexed = _indexed(tmp_path, [lateral, pa])
    from_files = facts_from_datasets([lateral, pa], source="irk-cami", region="38")
    by_uid = {s.series_uid: s for s in indexed.series}
    assert by_uid[lateral.SeriesInstanceUID].view_positions == ["LL"]
    assert by_uid[pa.SeriesInstanceUID].protocol_name == "Флюорография"
    assert sorted(indexed.series, key=lambda s: s.series_uid) == sorted(
        from_files.series, key=lambda s: s.series_uid
    )
    decision = route(indexed, rules, devices)
    job = only_job(decision)
    assert (job.series_uid, job.study_type) == (pa.SeriesInstanceUID, StudyType.FLUOROGRAPHY)
    assert decision.jobs == route(from_files, rules, devices).jobs
    refused = next(c for c in decision.device_checks if c.series_uid == lateral.SeriesInstanceUID)
    assert refused.reason == "lateral view (LL)"


def test_explain_files_and_the_cli(
    tmp_path: Path, rules: RoutingRules, devices: list[DeviceManifest]
) -> None:
    study = chest_xray_study(16, "fluorography", "CR", size=(128, 128))
    path = tmp_path / "flg.dcm"
    study.datasets[0].save_as(path, enforce_file_format=True)
    (tmp_path / "notes.txt").write_text("not DICOM", encoding="utf-8")
    text = explain_files([path, tmp_path / "notes.txt"], rules, devices)
    assert "notes.txt: not readable as DICOM" in text
    assert "✓ rule fluorography: matched → fluorography, routine" in text
    assert "✗ rule ct-brain: Modality CR not in ['CT']" in text
    assert f"→ job: {CXR}@" in text

    zoo = tmp_path / "zoo"
    for manifest in devices:
        (zoo / manifest.id).mkdir(parents=True)
        (zoo / manifest.id / "manifest.yaml").write_text(
            yaml.safe_dump(manifest.model_dump(mode="json"), allow_unicode=True), encoding="utf-8"
        )
    runner = CliRunner()
    result = runner.invoke(
        rules_test_command, [str(path), "--rules", str(RULES_FILE), "--devices", str(zoo)]
    )
    assert result.exit_code == 0, result.output
    assert "→ job: aigw-ref-cxr@" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: []\n", encoding="utf-8")
    result = runner.invoke(rules_test_command, [str(path), "--rules", str(bad)])
    assert result.exit_code != 0 and "rules: List should have at least 1 item" in result.output
