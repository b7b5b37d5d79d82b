"""SEMD kind 174: every document the builder writes passes the official XSD and schematron;
what the source lacks is named, never invented."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from lxml import etree
from PIL import Image
from pydicom import Dataset
from pydicom.sequence import Sequence

from gateway.errors import ConfigError
from gateway.results.input import ReportInput
from gateway.results.notices import AI_NOTICE_RU
from gateway.results.semd.config import SemdConfig, load_semd_config, snils_checksum_ok
from gateway.results.semd.document import (
    NSI_DOC_KINDS,
    NSI_FIELDS,
    NSI_POSITIONS,
    NSI_SECTIONS,
    NSI_SERVICES,
    build_semd,
)
from gateway.results.semd.facts import SERVICE_NAMES, SemdMissing
from gateway.results.semd.validation import validate_semd
from models.study_types import SERVICE_CODES
from tests import report_fixtures
from tests.services import ROOT, require_shared_data

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "semd"
CONFIG_FILE = ROOT / "gateway" / "configs" / "semd.yaml"
NS = {"v": "urn:hl7-org:v3"}
PATIENT_SNILS = "112-233-445 95"  # checksum-valid test number

needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(),
    reason=f"official SEMD XSD/schematron not available: {REFERENCE} is absent",
)


@pytest.fixture(scope="module")
def config() -> SemdConfig:
    return load_semd_config(CONFIG_FILE)


def with_snils(
    report: ReportInput, snils: str = PATIENT_SNILS, issuer: str = "СНИЛС"
) -> ReportInput:
    """The report with the СНИЛС added to copies of its source datasets."""
    sources = []
    for ds in report.sources:
        copied = copy.deepcopy(ds)
        item = Dataset()
        item.PatientID = snils
        item.IssuerOfPatientID = issuer
        copied.OtherPatientIDsSequence = Sequence([item])
        sources.append(copied)
    return dataclasses.replace(report, sources=sources)


def without_snils(report: ReportInput) -> ReportInput:
    """The report with every other patient identifier removed from copies of its sources
    (synthetic studies carry a СНИЛС, as Russian archives do)."""
    sources = []
    for ds in report.sources:
        copied = copy.deepcopy(ds)
        if "OtherPatientIDsSequence" in copied:
            del copied.OtherPatientIDsSequence
        sources.append(copied)
    return dataclasses.replace(report, sources=sources)


def key_image(size: int = 48, kind: str = "JPEG") -> bytes:
    """A small image; JPEG as the gateway writes its key images (flags.key_image_jpeg)."""
    ramp = np.tile(np.arange(size, dtype=np.uint8) * 5, (size, 1))
    out = io.BytesIO()
    Image.fromarray(ramp).save(out, format=kind)
    return out.getvalue()


@cache
def _fixture(name: str) -> ReportInput:
    makers: dict[str, Callable[[], ReportInput]] = {
        "cxr_positive": lambda: report_fixtures.chest_xray_input(positive=True),
        "cxr_negative": lambda: report_fixtures.chest_xray_input(positive=False),
        "ct_positive": lambda: report_fixtures.ct_chest_input(positive=True),
        "ct_negative": lambda: report_fixtures.ct_chest_input(positive=False),
        "mammography": report_fixtures.mammography_input,
    }
    return with_snils(makers[name]())


def real_cr_input() -> ReportInput:
    """A real chest CR from the shared data as the source of a negative fluorography job."""
    path = require_shared_data() / "CR_chest_PA_Philips_J2KI.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    finding = report_fixtures.finding(report_fixtures.device("aigw-ref-cxr"), 0.12, False)
    base = report_fixtures.chest_xray_input(positive=False)
    return dataclasses.replace(base, job_id=501, sources=[ds], findings=[finding])


def elements(node: etree._Element, path: str) -> list[etree._Element]:
    found = node.xpath(path, namespaces=NS)
    assert isinstance(found, list)
    return [e for e in found if isinstance(e, etree._Element)]


def strings(node: etree._Element, path: str) -> list[str]:
    found = node.xpath(path, namespaces=NS)
    assert isinstance(found, list)
    return [str(v) for v in found]


def field_value(xml: bytes, code: str) -> str:
    root = etree.fromstring(xml)
    values = strings(root, f"//v:observation[v:code/@code='{code}']/v:value/text()")
    assert len(values) == 1
    return str(values[0])


# --- the official validators -------------------------------------------------------------


@needs_reference
@pytest.mark.parametrize(
    "name", ["cxr_positive", "cxr_negative", "ct_positive", "ct_negative", "mammography"]
)
def test_every_fixture_passes_xsd_and_schematron(name: str, config: SemdConfig) -> None:
    document = build_semd(_fixture(name), config, key_image())
    assert validate_semd(document.xml, REFERENCE) == []
    # and without a key image too
    assert validate_semd(build_semd(_fixture(name), config, None).xml, REFERENCE) == []


@needs_reference
@pytest.mark.shared_data
def test_a_real_dicom_source_passes(config: SemdConfig) -> None:
    report = with_snils(real_cr_input())
    document = build_semd(report, config, key_image())
    assert validate_semd(document.xml, REFERENCE) == []
    root = etree.fromstring(document.xml)
    family = strings(root, "//v:patient/v:name/v:family/text()")
    assert family == ["CompressedSamples"]
    assert strings(root, "//v:patient/v:birthTime/@value") == ["19400305"]
    low = strings(root, "//v:act/v:effectiveTime/v:low/@value")
    # The study time in the organisation's zone, as it was then: Irkutsk kept summer time
    # (+09:00) in 2004.
    assert low == ["20040826185059+0900"]


@needs_reference
def test_the_validator_reports_a_broken_document(config: SemdConfig) -> None:
    xml = build_semd(_fixture("cxr_positive"), config, None).xml
    root = etree.fromstring(xml)
    act = elements(root, "//v:act")[0]
    act.remove(elements(act, "v:code")[0])
    problems = validate_semd(etree.tostring(root), REFERENCE)
    assert any(p.startswith("XSD") for p in problems)
    assert any("Core10-1" in p and "//act" in p for p in problems)  # schematron's own words

    root = etree.fromstring(xml)
    snils = elements(root, "//v:patientRole/v:id[@root='1.2.643.100.3']")[0]
    snils.set("extension", "11223344")
    problems = validate_semd(etree.tostring(root), REFERENCE)
    assert any("Extra01-1" in p for p in problems), problems
    assert validate_semd(b"<ClinicalDocument", REFERENCE)[0].startswith("not well-formed")


# --- what the document says ----------------------------------------------------------------


def test_fields_carry_the_ai_text_device_and_key_image(config: SemdConfig) -> None:
    report = _fixture("cxr_positive")
    xml = build_semd(report, config, key_image()).xml
    protocol = field_value(xml, "1805")
    assert AI_NOTICE_RU in protocol
    assert report.device.name_ru in protocol and report.device.version in protocol
    assert "без РУ" in protocol  # the reference devices have no registration
    assert "вероятность 0.91" in protocol and "Очаговое образование лёгкого" in protocol
    assert "макс. диаметр" in protocol and "строка" in protocol
    assert report.device.provenance.notice_ru in protocol  # clinical_use is false
    conclusion = field_value(xml, "1806")
    assert "Проект заключения" in conclusion and AI_NOTICE_RU in conclusion

    root = etree.fromstring(xml)
    equipment = elements(root, "//v:observation[v:code/@code='8023']")[0]
    assert strings(equipment, ".//v:participantRole/v:id/@extension") == [report.device.key]
    model = strings(equipment, ".//v:manufacturerModelName/text()")[0]
    assert report.device.vendor in model and report.device.version in model

    media = elements(root, "//v:observationMedia/v:value")
    assert len(media) == 1 and media[0].get("mediaType") == "image/jpeg"
    decoded = Image.open(io.BytesIO(base64.b64decode(media[0].text or "")))
    assert decoded.format == "JPEG" and decoded.size == (48, 48)

    service = elements(root, "//v:act/v:code")[0]
    assert service.get("code") == "7003320"
    assert service.get("displayName") == SERVICE_NAMES["7003320"]


def test_a_negative_ct_says_nothing_was_found(config: SemdConfig) -> None:
    xml = build_semd(_fixture("ct_negative"), config, None).xml
    assert "не выявлено" in field_value(xml, "1805")
    assert "не выявлено" in field_value(xml, "1806")
    assert b"observationMedia" not in xml


def test_metadata_round_trips_and_the_id_is_deterministic(config: SemdConfig) -> None:
    report = _fixture("ct_positive")
    first = build_semd(report, config, key_image())
    again = build_semd(report, config, key_image())
    assert first.document_id == again.document_id and first.xml == again.xml
    other = build_semd(dataclasses.replace(report, job_id=report.job_id + 1), config, None)
    assert other.document_id != first.document_id

    metadata = json.loads(json.dumps(first.metadata, ensure_ascii=False))
    assert metadata == first.metadata
    assert metadata["kind"] == "174" and metadata["signed"] is False
    assert metadata["document_id"] == first.document_id
    assert metadata["patient"]["snils"] == PATIENT_SNILS
    assert metadata["patient"]["sex"] in ("M", "F")
    assert metadata["organisation"]["oid"] == report.organisation.frmo_oid
    assert metadata["service"] == {"code": "7001894", "name": SERVICE_NAMES["7001894"]}
    assert metadata["study_instance_uid"] == report.sources[0].StudyInstanceUID
    assert metadata["device"]["id"] == "aigw-ref-ct-chest"
    root = etree.fromstring(first.xml)
    doc_id = elements(root, "/v:ClinicalDocument/v:id")[0]
    assert first.document_id == f"{doc_id.get('root')}^{doc_id.get('extension')}"
    assert doc_id.get("root") == f"{report.organisation.frmo_oid}.100.{config.mis_number}.51"


# --- what is missing is named --------------------------------------------------------------


def test_no_snils_is_named(config: SemdConfig) -> None:
    report = without_snils(report_fixtures.chest_xray_input())
    with pytest.raises(SemdMissing) as caught:
        build_semd(report, config, None)
    assert len(caught.value.missing) == 1
    assert "СНИЛС" in caught.value.missing[0]
    assert "OtherPatientIDsSequence" in caught.value.missing[0]


def test_a_bad_snils_checksum_is_named(config: SemdConfig) -> None:
    report = with_snils(report_fixtures.chest_xray_input(), snils="112-233-445 96")
    with pytest.raises(SemdMissing) as caught:
        build_semd(report, config, None)
    assert any("СНИЛС" in m and "checksum" in m for m in caught.value.missing)


def test_snils_by_issuer_qualifier_or_patient_id(config: SemdConfig) -> None:
    assert build_semd(with_snils(_fixture("cxr_negative"), issuer="SNILS"), config, None)
    report = without_snils(report_fixtures.chest_xray_input(positive=False))
    source = copy.deepcopy(report.sources[0])
    source.PatientID = "11223344595"
    report = dataclasses.replace(report, sources=[source])
    with pytest.raises(SemdMissing):
        build_semd(report, config, None)
    lenient = config.model_copy(
        update={"snils": config.snils.model_copy(update={"patient_id": True})}
    )
    assert build_semd(report, lenient, None).metadata["patient"]["snils"] == PATIENT_SNILS


@pytest.mark.shared_data
def test_every_gap_of_a_real_file_is_named_at_once(config: SemdConfig) -> None:
    ds = pydicom.dcmread(
        require_shared_data() / "DX_chest_NIH_SC_uncompressed.dcm", stop_before_pixels=True
    )
    report = dataclasses.replace(real_cr_input(), sources=[ds])
    with pytest.raises(SemdMissing) as caught:
        build_semd(report, config, None)
    text = " | ".join(caught.value.missing)
    for gap in ("ФИО пациента", "дата рождения", "дата исследования", "СНИЛС"):
        assert gap in text


def test_missing_configuration_is_named(config: SemdConfig) -> None:
    report = _fixture("cxr_positive")
    organisations = dict(config.organisations)
    organisations["irk-gkb1"] = organisations["irk-gkb1"].model_copy(update={"doctor": None})
    no_doctor = config.model_copy(update={"organisations": organisations})
    with pytest.raises(SemdMissing) as caught:
        build_semd(report, no_doctor, None)
    assert caught.value.missing == ["configuration: no doctor for source irk-gkb1"]
    source = copy.deepcopy(report.sources[0])
    del source.PatientSex
    report = dataclasses.replace(report, sources=[source])
    with pytest.raises(SemdMissing) as caught:
        build_semd(report, config.model_copy(update={"organisations": {}}), None)
    assert "configuration: no SEMD settings for source irk-gkb1" in caught.value.missing
    assert any("пол пациента" in m for m in caught.value.missing)


def test_a_png_key_image_is_named_as_such(config: SemdConfig) -> None:
    xml = build_semd(_fixture("cxr_positive"), config, key_image(kind="PNG")).xml
    media = elements(etree.fromstring(xml), "//v:observationMedia/v:value")
    assert [m.get("mediaType") for m in media] == ["image/png"]


def test_a_key_image_must_be_jpeg_or_png(config: SemdConfig) -> None:
    with pytest.raises(ValueError, match="neither JPEG nor PNG"):
        build_semd(_fixture("cxr_positive"), config, b"GIF89a")


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda raw: raw["organisations"]["irk-gkb1"]["doctor"].update(snils="123-456-789 65"),
         "organisations.irk-gkb1.doctor.snils"),
        (lambda raw: raw.update(colour="blue"), "colour"),
        (lambda raw: raw["organisations"]["irk-gkb1"].update(timezone="Mars/Olympus"),
         "organisations.irk-gkb1.timezone"),
        (lambda raw: raw.update(mis_oid="not an oid"), "mis_oid"),
        (lambda raw: raw["organisations"]["tula-cami"]["address"].update(postal_code="30"),
         "organisations.tula-cami.address.postal_code"),
    ],
)  # fmt: skip
def test_bad_configuration_names_file_and_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], field: str
) -> None:
    import yaml

    raw = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
    change(raw)
    path = tmp_path / "semd.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_semd_config(path)
    assert str(path) in str(caught.value) and field in str(caught.value)


def test_unreadable_configuration(tmp_path: Path) -> None:
    path = tmp_path / "semd.yaml"
    path.write_text("mis_oid: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_semd_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_semd_config(tmp_path / "absent.yaml")


def test_snils_checksum() -> None:
    assert snils_checksum_ok("11223344595")
    assert not snils_checksum_ok("11223344596")
    assert snils_checksum_ok("00100199800")  # issued before checksums


# --- the embedded dictionary entries match the shipped НСИ ------------------------------------


def _nsi(oid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    fnsi = REFERENCE / "fnsi"
    passport = json.loads(next(fnsi.glob(f"{oid}_*_passport.json")).read_text("utf-8"))
    part = json.loads(next(fnsi.glob(f"{oid}_*_part1.json")).read_text("utf-8"))
    rows = [{c["column"]: c["value"] for c in row} for row in part["list"]]
    return passport, rows


@needs_reference
def test_embedded_codes_match_the_shipped_dictionaries() -> None:
    passport, services = _nsi(NSI_SERVICES.oid)
    assert passport["version"] == NSI_SERVICES.version
    names = {row["ID"]: row["FULLNAME"] for row in services}
    for code, name in SERVICE_NAMES.items():
        assert names[code] == name
    assert set(SERVICE_NAMES) == {code for code, _ in SERVICE_CODES.values()}

    passport, kinds = _nsi(NSI_DOC_KINDS.oid)
    assert passport["version"] == NSI_DOC_KINDS.version
    assert {r["RECID"]: r["Name"] for r in kinds}["6"] == "Протокол инструментального исследования"
    for nsi in (NSI_SECTIONS, NSI_FIELDS, NSI_POSITIONS, NSI_SERVICES, NSI_DOC_KINDS):
        passport, _ = _nsi(nsi.oid)
        assert passport["version"] == nsi.version
        assert passport["fullName"] == nsi.name
    _, fields = _nsi(NSI_FIELDS.oid)
    by_id = {r["ID"]: r["NAME"] for r in fields}
    assert by_id["1805"] == "Протокол инструментального исследования"
    assert by_id["1806"] == "Заключение инструментального исследования"
    assert by_id["8023"] == "Наименование оборудования или расходного материала"
    _, positions = _nsi(NSI_POSITIONS.oid)
    assert {r["ID"]: r["NAME"] for r in positions}["94"] == "Врач-рентгенолог"
