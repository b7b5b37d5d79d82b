"""SEMD «Протокол инструментального исследования» ред. 4 (HL7 CDA R2, РЭМД kind 174).

One finished job becomes an unsigned CDA document plus a JSON sidecar for the regional
system, which signs it (GOST) and registers it in РЭМД. No SEMD kind for AI results exists,
so the AI result goes into this protocol as a draft: the AI text in field 1805, a draft
conclusion in 1806, the device in 8023, the key image as ``observationMedia``; the
responsible radiologist (from configuration) stays author and legal authenticator.

Everything a registered document needs that DICOM does not carry (the organisation's
address, the doctor, the MIS) comes from ``configs/semd.yaml``. What neither carries is
never invented: :func:`build_semd` raises :class:`SemdMissing` naming each gap, checked up
front against what the official schematron requires.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lxml import etree
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydicom import Dataset

from gateway.errors import ConfigError, GatewayError
from gateway.results.input import AI_NOTICE_RU, ReportFinding, ReportInput
from models.yaml_file import load_model

TEMPLATE_ID = "1.2.643.5.1.13.13.14.6.9.4"
REMD_KIND = "174"
SNILS_ROOT = "1.2.643.100.3"
MINZDRAV_OID = "1.2.643.5.1.13"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

V3 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
IDENTITY = "urn:hl7-ru:identity"
ADDRESS = "urn:hl7-ru:address"
MEDSERVICE = "urn:hl7-ru:medService"
FIAS = "urn:hl7-ru:fias"
NSMAP = {
    None: V3,
    "xsi": XSI,
    "identity": IDENTITY,
    "address": ADDRESS,
    "medService": MEDSERVICE,
    "fias": FIAS,
}

# НСИ 1.2.643.5.1.13.13.11.1471 v2.38 FULLNAME of the services our study types map to
# (models.study_types); tests/results/test_semd.py checks them against the shipped dictionary.
SERVICE_NAMES: dict[str, str] = {
    "7003320": "Рентгенография флюорография легких",
    "7002892": "Рентгенография грудной клетки",
    "7001894": "Компьютерная томография груди",
    "7001928": "Компьютерная томография груди низкодозная",
    "7001472": "Компьютерная томография головного мозга",
    "7003379": "Рентгенография молочной железы",
}

Oid = Annotated[str, StringConstraints(pattern=r"^[0-2](\.(0|[1-9][0-9]*))+$")]
Digits = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)*$")]
Guid = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
        r"[0-9a-fA-F]{12}$"
    ),
]
NonEmpty = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]


@dataclass(frozen=True)
class Dictionary:
    """An НСИ dictionary as CDA cites it: OID, name and the version the codes come from."""

    oid: str
    name: str
    version: str


# Versions of the dictionaries shipped in ../shared/reference/semd/fnsi (tests cross-check).
NSI_DOC_KINDS = Dictionary("1.2.643.5.1.13.13.11.1522", "Виды медицинской документации", "7.24")
NSI_SECTIONS = Dictionary(
    "1.2.643.5.1.13.13.99.2.197", "Секции электронных медицинских документов", "4.29"
)
NSI_FIELDS = Dictionary("1.2.643.5.1.13.13.99.2.166", "Кодируемые поля CDA документов", "5.41")
NSI_SERVICES = Dictionary(
    "1.2.643.5.1.13.13.11.1471",
    "Федеральный справочник инструментальных диагностических исследований",
    "2.38",
)
NSI_POSITIONS = Dictionary(
    "1.2.643.5.1.13.13.11.1002", "Должности медицинских и фармацевтических работников", "9.6"
)

_DOC_KIND_CODE, _DOC_KIND_NAME = "6", "Протокол инструментального исследования"
_SECTIONS = {"DOCINFO": "Сведения о документе", "RESINFO": "Заключение"}
_FIELDS = {
    "800": "Обращение",
    "801": "Место проведения",
    "838": "Диагноз",
    "8023": "Наименование оборудования или расходного материала",
    "8024": "Номер протокола инструментального исследования",
    "1805": "Протокол инструментального исследования",
    "1806": "Заключение инструментального исследования",
}


class SemdMissing(GatewayError):
    """The source or configuration lacks what the document requires; nothing is sent."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__("SEMD not built, missing: " + "; ".join(missing))
        self.missing = missing


# --- СНИЛС -----------------------------------------------------------------------------


def snils_digits(raw: str) -> str | None:
    """The 11 digits of a СНИЛС written with or without separators, or None."""
    digits = re.sub(r"[\s-]", "", raw.strip())
    return digits if re.fullmatch(r"\d{11}", digits) else None


def snils_checksum_ok(digits: str) -> bool:
    """ПФР checksum: digits weighted 9..1, sum mod 101 (100 and 101 give 00).

    Numbers up to 001-001-998 were issued before checksums and are accepted as they are.
    """
    number, check = digits[:9], int(digits[9:])
    if int(number) <= 1001998:
        return True
    total = sum(int(d) * w for d, w in zip(number, range(9, 0, -1), strict=True))
    expected = total % 101
    return (0 if expected == 100 else expected) == check


def format_snils(digits: str) -> str:
    return f"{digits[0:3]}-{digits[3:6]}-{digits[6:9]} {digits[9:11]}"


# --- configuration ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Coded(_Strict):
    """A code from an НСИ dictionary not shipped with the reference materials."""

    code: NonEmpty
    display_name: NonEmpty
    system: Oid
    system_name: NonEmpty
    version: NonEmpty


class Address(_Strict):
    street: NonEmpty = Field(description="Full address as text (streetAddressLine)")
    postal_code: Annotated[str, StringConstraints(pattern=r"^\d{6}$")]
    region_code: Annotated[str, StringConstraints(pattern=r"^\d{2}$")]
    region_name: NonEmpty
    # ФИАС identifiers of the settlement/street and of the house; unknown ones are written
    # as nullFlavor="NI" rather than guessed.
    fias_aoguid: Guid | None = None
    fias_houseguid: Guid | None = None


class Doctor(_Strict):
    """The radiologist responsible for the protocol: author and legal authenticator."""

    staff_id: NonEmpty = Field(description="Staff number in the MIS (identifier root .70)")
    family: NonEmpty
    given: NonEmpty
    patronymic: NonEmpty | None = None
    snils: NonEmpty
    position_code: Annotated[str, StringConstraints(pattern=r"^\d{1,6}$")]
    position_name: NonEmpty
    department: NonEmpty | None = None

    @field_validator("snils")
    @classmethod
    def _snils_valid(cls, value: str) -> str:
        digits = snils_digits(value)
        if digits is None:
            raise ValueError(f"СНИЛС {value!r} must have 11 digits")
        if not snils_checksum_ok(digits):
            raise ValueError(f"СНИЛС {value!r} has a wrong checksum")
        return digits


class OrganisationSemd(_Strict):
    """Header facts for one source organisation (keyed by the source name)."""

    name: NonEmpty | None = Field(default=None, description="Overrides the sources.yaml title")
    oid: Oid | None = Field(default=None, description="Overrides the sources.yaml ФРМО OID")
    address: Address
    phone: Annotated[str, StringConstraints(pattern=r"^\+?[0-9() -]{5,20}$")]
    ogrn: Annotated[str, StringConstraints(pattern=r"^\d{13}$")] | None = None
    timezone: NonEmpty = "Europe/Moscow"
    doctor: Doctor | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class SnilsLookup(_Strict):
    """Where the patient's СНИЛС is in the source DICOM."""

    issuers: list[NonEmpty] = Field(
        default_factory=lambda: ["СНИЛС", "SNILS", SNILS_ROOT],
        min_length=1,
        description="IssuerOfPatientID values of OtherPatientIDsSequence items that hold it",
    )
    patient_id: bool = Field(
        default=False, description="Also accept PatientID when it is a valid 11-digit СНИЛС"
    )


def _coded(code: str, name: str, oid: str, system: str, version: str) -> Coded:
    return Coded(code=code, display_name=name, system=oid, system_name=system, version=version)


class Vocabulary(_Strict):
    """Codes from НСИ dictionaries that are not in the reference folder; check them against
    the current ФРНСИ versions when deploying."""

    confidentiality: Coded = _coded(
        "N", "Обычный", "1.2.643.5.1.13.13.99.2.285",
        "Уровень конфиденциальности медицинского документа", "1.2",
    )  # fmt: skip
    sex_male: Coded = _coded("1", "Мужской", "1.2.643.5.1.13.13.11.1040", "Пол пациента", "2.1")
    sex_female: Coded = _coded("2", "Женский", "1.2.643.5.1.13.13.11.1040", "Пол пациента", "2.1")
    service_event: Coded = _coded(
        "3", "Инструментальное исследование", "1.2.643.5.1.13.13.99.2.726",
        "Типы документированных событий", "3.38",
    )  # fmt: skip
    service_form: Coded = _coded(
        "3", "Плановая", "1.2.643.5.1.13.13.11.1551",
        "Формы оказания медицинской помощи", "1.2",
    )  # fmt: skip
    service_cond: Coded = _coded(
        "2", "Амбулаторно", "1.2.643.5.1.13.13.99.2.322",
        "Условия оказания медицинской помощи", "1.1",
    )  # fmt: skip
    visit: Coded = _coded(
        "1", "Первичный", "1.2.643.5.1.13.13.11.1007",
        "Вид случая госпитализации или обращения (первичный, повторный)", "2.1",
    )  # fmt: skip
    place: Coded = _coded(
        "1", "Амбулаторно-поликлиническое учреждение", "1.2.643.5.1.13.13.11.1008",
        "Место оказания медицинской помощи", "4.3",
    )  # fmt: skip
    regions_system_name: NonEmpty = "Субъекты Российской Федерации"
    regions_version: NonEmpty = "6.5"


class SemdConfig(_Strict):
    """``configs/semd.yaml``: what the SEMD header needs beyond DICOM."""

    mis_oid: Oid = Field(description="OID of this information system as registered in ЕГИСЗ")
    mis_number: Digits = Field(
        default="1",
        description="Number (and instance) of this system inside the organisation's OID tree: "
        "identifier roots are <organisation OID>.100.<mis_number>.<51|50|10|70|67>",
    )
    snils: SnilsLookup = Field(default_factory=SnilsLookup)
    vocabulary: Vocabulary = Field(default_factory=Vocabulary)
    organisations: dict[str, OrganisationSemd] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _source_names(self) -> SemdConfig:
        bad = [n for n in self.organisations if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", n)]
        if bad:
            raise ValueError(f"organisation keys must be source names from sources.yaml: {bad}")
        return self


def load_semd_config(path: Path) -> SemdConfig:
    """Read and validate ``semd.yaml``; any problem is a ConfigError naming file and field."""
    return load_model(path, SemdConfig, ConfigError)


# --- facts: what the document says, gathered and checked up front --------------------------


@dataclass(frozen=True)
class Patient:
    mis_id: str
    snils: str  # 11 digits
    family: str
    given: str
    patronymic: str | None
    birth_date: date
    sex: str  # "M" | "F"


@dataclass(frozen=True)
class Facts:
    report: ReportInput
    config: SemdConfig
    org: OrganisationSemd
    doctor: Doctor
    org_oid: str
    org_name: str
    patient: Patient
    study_time: datetime  # aware, the organisation's zone
    created: datetime  # aware, the organisation's zone
    service_name: str

    def root(self, suffix: str) -> str:
        return f"{self.org_oid}.100.{self.config.mis_number}.{suffix}"


@dataclass(frozen=True)
class SemdDocument:
    """The unsigned CDA document and the sidecar the regional system registers it with."""

    xml: bytes
    metadata: dict[str, Any]
    document_id: str


def find_snils(ds: Dataset, lookup: SnilsLookup) -> tuple[str | None, str]:
    """The patient's СНИЛС (11 digits) from the dataset, or None and why not."""
    issuers = {i.casefold() for i in lookup.issuers}
    for item in ds.get("OtherPatientIDsSequence", []):
        issuer = str(item.get("IssuerOfPatientID", "")).strip()
        qualifiers = item.get("IssuerOfPatientIDQualifiersSequence", [])
        entity = str(qualifiers[0].get("UniversalEntityID", "")) if qualifiers else ""
        if issuer.casefold() in issuers or entity == SNILS_ROOT:
            raw = str(item.get("PatientID", ""))
            digits = snils_digits(raw)
            if digits is None:
                return None, "СНИЛС пациента: not 11 digits in OtherPatientIDsSequence"
            if not snils_checksum_ok(digits):
                return None, "СНИЛС пациента: wrong checksum (контрольное число СНИЛС неверно)"
            return digits, ""
    if lookup.patient_id:
        digits = snils_digits(str(ds.get("PatientID", "")))
        if digits is not None and snils_checksum_ok(digits):
            return digits, ""
    where = " or PatientID" if lookup.patient_id else ""
    return None, (
        "СНИЛС пациента (no OtherPatientIDsSequence item with IssuerOfPatientID "
        f"{'/'.join(lookup.issuers)}{where})"
    )


def _dicom_date(value: object) -> date | None:
    text = str(value or "").strip()
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _dicom_time(value: object) -> time:
    text = str(value or "").strip().split(".")[0]
    digits = (text + "000000")[:6] if text.isdigit() else "000000"
    hour, minute, second = int(digits[0:2]), int(digits[2:4]), int(digits[4:6])
    if hour > 23 or minute > 59 or second > 59:
        return time(0, 0, 0)
    return time(hour, minute, second)


def _patient(ds: Dataset, lookup: SnilsLookup, missing: list[str]) -> Patient | None:
    mis_id = str(ds.get("PatientID", "")).strip()
    if not mis_id:
        missing.append("идентификатор пациента (PatientID is empty)")
    parts = [p.strip() for p in str(ds.get("PatientName", "")).split("^")] + ["", "", ""]
    family, given, middle = parts[0], parts[1], parts[2]
    if not family or not given:
        missing.append("ФИО пациента (PatientName needs Family^Given)")
    birth = _dicom_date(ds.get("PatientBirthDate"))
    if birth is None:
        missing.append("дата рождения пациента (PatientBirthDate)")
    sex = str(ds.get("PatientSex", "")).strip().upper()
    if sex not in ("M", "F"):
        missing.append("пол пациента (PatientSex is not M or F)")
    snils, why = find_snils(ds, lookup)
    if snils is None:
        missing.append(why)
    if missing or birth is None or snils is None:
        return None
    return Patient(mis_id, snils, family, given, middle or None, birth, sex)


def gather(report: ReportInput, config: SemdConfig) -> Facts:
    """Everything the document states, or SemdMissing listing every gap at once."""
    missing: list[str] = []
    source = report.organisation.name
    org = config.organisations.get(source)
    if org is None:
        missing.append(f"configuration: no SEMD settings for source {source}")
    elif org.doctor is None:
        missing.append(f"configuration: no doctor for source {source}")
    org_oid = (org.oid if org else None) or report.organisation.frmo_oid
    if not org_oid:
        missing.append(f"OID медицинской организации (ФРМО) for source {source}")
    service_name = SERVICE_NAMES.get(report.service_code)
    if service_name is None:
        missing.append(f"код услуги НСИ 1471 {report.service_code!r} is not one the gateway maps")
    if not report.sources:
        raise SemdMissing([*missing, "исходные изображения (the job has no source instances)"])
    ds = report.sources[0]
    patient = _patient(ds, config.snils, missing)
    study_date = _dicom_date(ds.get("StudyDate"))
    if study_date is None:
        missing.append("дата исследования (StudyDate)")
    # Each None below has its entry in `missing`; the checks only narrow the types.
    if (
        missing
        or org is None
        or org.doctor is None
        or not org_oid
        or patient is None
        or study_date is None
        or service_name is None
    ):
        raise SemdMissing(missing)
    zone = ZoneInfo(org.timezone)
    study_time = datetime.combine(study_date, _dicom_time(ds.get("StudyTime")), tzinfo=zone)
    return Facts(
        report=report,
        config=config,
        org=org,
        doctor=org.doctor,
        org_oid=org_oid,
        org_name=org.name or report.organisation.title or source,
        patient=patient,
        study_time=study_time,
        created=report.completed_at.astimezone(zone),
        service_name=service_name,
    )


# --- the text a radiologist reads ----------------------------------------------------------


def device_text(report: ReportInput) -> str:
    device = report.device
    ru = device.registration
    registration = f"РУ {ru.number} от {ru.date:%d.%m.%Y}" if ru else "без РУ"
    return f"{device.name_ru} ({device.vendor}), версия {device.version}, {registration}"


def _view(image: Dataset) -> str:
    """«R CC» for a mammogram, «PA» for a chest film; U (unpaired) says nothing."""
    laterality = str(image.get("ImageLaterality", "")).strip()
    view = str(image.get("ViewPosition", "")).strip()
    return " ".join(v for v in (laterality if laterality in ("L", "R", "B") else "", view) if v)


def _location(finding: ReportFinding, report: ReportInput) -> str:
    if finding.centre is None:
        return ""
    if len(finding.centre) == 3:
        z, row, col = finding.centre
        where = f"срез {int(z) + 1} из {len(report.sources)}, строка {row:.0f}, столбец {col:.0f}"
    else:
        row, col = finding.centre
        where = f"строка {row:.0f}, столбец {col:.0f}"
        image = next(
            (s for s in report.sources if s.SOPInstanceUID == finding.sop_instance_uid), None
        )
        view = _view(image) if image is not None else ""
        if view:
            where = f"проекция {view}, {where}"
    return f"локализация: {where} (пиксели исходного изображения)"


_MEASUREMENTS = {"max_diameter_mm": ("макс. диаметр", "мм"), "volume_mm3": ("объём", "мм³")}


def _finding_line(number: int, finding: ReportFinding, report: ReportInput) -> str:
    verdict = "выявлено" if finding.positive else "не выявлено"
    parts = [
        f"{number}. {finding.label_ru}: {verdict}, вероятность {finding.probability:.2f} "
        f"(порог {finding.threshold:.2f})"
    ]
    if finding.positive:
        location = _location(finding, report)
        if location:
            parts.append(location)
        for key, value in finding.measurements.items():
            name, unit = _MEASUREMENTS.get(key, (key, ""))
            parts.append(f"{name} {value:.1f} {unit}".strip())
    return "; ".join(parts) + "."


def protocol_text(report: ReportInput) -> str:
    """Field 1805: what the device did and found, with the AI notice."""
    lines = [AI_NOTICE_RU, f"ИИ-устройство: {device_text(report)}."]
    if not report.device.provenance.clinical_use:
        lines.append(report.device.provenance.notice_ru)
    lines.append(f"Проанализировано изображений: {len(report.sources)}.")
    lines.append("Результаты:")
    lines += [_finding_line(i, f, report) for i, f in enumerate(report.findings, 1)]
    return "\n".join(lines)


def conclusion_text(report: ReportInput) -> str:
    """Field 1806: a draft conclusion the radiologist confirms or rewrites."""
    found = [f for f in report.findings if f.positive]
    if found:
        labels = ", ".join(f"{f.label_ru.lower()} (вероятность {f.probability:.2f})" for f in found)
        head = f"Проект заключения ИИ: выявлены признаки: {labels}."
    else:
        labels = ", ".join(sorted({f.label_ru.lower() for f in report.findings})) or "патологии"
        head = f"Проект заключения ИИ: признаков ({labels}) не выявлено."
    tail = [AI_NOTICE_RU]
    if not report.device.provenance.clinical_use:
        tail.append(report.device.provenance.notice_ru)
    return " ".join([head, *tail])


# --- XML ---------------------------------------------------------------------------------


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    ns, _, local = tag.rpartition(":")
    name = _q({"": V3, "xsi": XSI}.get(ns) or NSMAP[ns], local)
    element = etree.SubElement(parent, name)
    for key, value in attrs.items():
        element.set(_q(XSI, "type") if key == "xsi_type" else key, value)
    if text is not None:
        element.text = text
    return element


def _code(parent: etree._Element, tag: str, code: str, name: str, nsi: Dictionary) -> None:
    _sub(
        parent,
        tag,
        code=code,
        codeSystem=nsi.oid,
        codeSystemVersion=nsi.version,
        codeSystemName=nsi.name,
        displayName=name,
    )


def _coded_el(parent: etree._Element, tag: str, coded: Coded, **attrs: str) -> None:
    _sub(
        parent,
        tag,
        **attrs,
        code=coded.code,
        codeSystem=coded.system,
        codeSystemVersion=coded.version,
        codeSystemName=coded.system_name,
        displayName=coded.display_name,
    )


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S%z")


def _address(parent: etree._Element, facts: Facts) -> None:
    a = facts.org.address
    addr = _sub(parent, "addr")
    _sub(addr, "streetAddressLine", a.street)
    _sub(
        addr,
        "address:stateCode",
        code=a.region_code,
        codeSystem="1.2.643.5.1.13.13.99.2.206",
        codeSystemVersion=facts.config.vocabulary.regions_version,
        codeSystemName=facts.config.vocabulary.regions_system_name,
        displayName=a.region_name,
    )
    _sub(addr, "postalCode", a.postal_code)
    if a.fias_aoguid is None:
        _sub(addr, "fias:Address", nullFlavor="NI")
        return
    fias = _sub(addr, "fias:Address")
    _sub(fias, "fias:AOGUID", a.fias_aoguid)
    if a.fias_houseguid is None:
        _sub(fias, "fias:HOUSEGUID", nullFlavor="NI")
    else:
        _sub(fias, "fias:HOUSEGUID", a.fias_houseguid)


def _telecom(parent: etree._Element, facts: Facts) -> None:
    _sub(parent, "telecom", value="tel:" + re.sub(r"[^0-9+]", "", facts.org.phone))


def _organisation(parent: etree._Element, tag: str, facts: Facts, props: bool = False) -> None:
    # providerOrganization is the one organisation element whose schema has no classCode.
    org = _sub(parent, tag) if props else _sub(parent, tag, classCode="ORG")
    _sub(org, "id", root=facts.org_oid)
    if props:
        if facts.org.ogrn:
            _sub(_sub(org, "identity:Props"), "identity:Ogrn", facts.org.ogrn)
        else:
            _sub(org, "identity:Props", nullFlavor="NI")
    _sub(org, "name", facts.org_name)
    _telecom(org, facts)
    _address(org, facts)


def _name(parent: etree._Element, family: str, given: str, patronymic: str | None) -> None:
    name = _sub(parent, "name")
    _sub(name, "family", family)
    _sub(name, "given", given)
    if patronymic:
        _sub(name, "identity:Patronymic", patronymic)


def _staff(parent: etree._Element, facts: Facts, tag: str) -> None:
    """The doctor as assignedAuthor / assignedEntity: MIS id, СНИЛС, position, name, org."""
    doctor = facts.doctor
    entity = _sub(parent, tag)
    _sub(entity, "id", root=facts.root("70"), extension=doctor.staff_id)
    _sub(entity, "id", root=SNILS_ROOT, extension=format_snils(doctor.snils))
    _code(entity, "code", doctor.position_code, doctor.position_name, NSI_POSITIONS)
    person = _sub(entity, "assignedPerson")
    _name(person, doctor.family, doctor.given, doctor.patronymic)
    _organisation(entity, "representedOrganization", facts)


def _record_target(root: etree._Element, facts: Facts) -> None:
    p = facts.patient
    role = _sub(_sub(root, "recordTarget"), "patientRole")
    _sub(role, "id", root=facts.root("10"), extension=p.mis_id)
    _sub(role, "id", root=SNILS_ROOT, extension=format_snils(p.snils))
    # The source carries no identity document, policy or address: said so, not invented.
    _sub(role, "identity:IdentityDoc", nullFlavor="NI")
    _sub(role, "identity:InsurancePolicy", nullFlavor="NI")
    _sub(role, "addr", nullFlavor="NI")
    patient = _sub(role, "patient")
    _name(patient, p.family, p.given, p.patronymic)
    vocab = facts.config.vocabulary
    _coded_el(
        patient, "administrativeGenderCode", vocab.sex_male if p.sex == "M" else vocab.sex_female
    )
    _sub(patient, "birthTime", value=p.birth_date.strftime("%Y%m%d"))
    _organisation(role, "providerOrganization", facts, props=True)


def _header(root: etree._Element, facts: Facts) -> None:
    report, vocab = facts.report, facts.config.vocabulary
    extension = str(report.job_id)
    _sub(root, "realmCode", code="RU")
    _sub(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_MT000040")
    _sub(root, "templateId", root=TEMPLATE_ID)
    _sub(root, "id", root=facts.root("51"), extension=extension)
    _code(root, "code", _DOC_KIND_CODE, _DOC_KIND_NAME, NSI_DOC_KINDS)
    _sub(root, "title", f"{_DOC_KIND_NAME}: {facts.service_name}")
    _sub(root, "effectiveTime", value=_ts(facts.created))
    _coded_el(root, "confidentialityCode", vocab.confidentiality)
    _sub(root, "languageCode", code="ru-RU")
    _sub(root, "setId", root=facts.root("50"), extension=extension)
    _sub(root, "versionNumber", value="1")
    _record_target(root, facts)
    author = _sub(root, "author")
    _sub(author, "time", nullFlavor="NI")
    _staff(author, facts, "assignedAuthor")
    custodian = _sub(_sub(root, "custodian"), "assignedCustodian")
    _organisation(custodian, "representedCustodianOrganization", facts)
    recipient = _sub(_sub(root, "informationRecipient"), "intendedRecipient")
    ministry = _sub(recipient, "receivedOrganization")
    _sub(ministry, "id", root=MINZDRAV_OID)
    _sub(ministry, "name", "Министерство здравоохранения Российской Федерации")
    legal = _sub(root, "legalAuthenticator")
    _sub(legal, "time", nullFlavor="NI")
    _sub(legal, "signatureCode", nullFlavor="NI")
    _staff(legal, facts, "assignedEntity")
    event = _sub(_sub(root, "documentationOf"), "serviceEvent")
    _coded_el(event, "code", vocab.service_event)
    _sub(_sub(event, "effectiveTime"), "low", value=_ts(facts.study_time))
    _coded_el(event, "medService:serviceForm", vocab.service_form)
    _coded_el(event, "medService:serviceCond", vocab.service_cond)
    _staff(_sub(event, "performer", typeCode="PPRF"), facts, "assignedEntity")


def _section(body: etree._Element, code: str) -> tuple[etree._Element, etree._Element]:
    section = _sub(_sub(body, "component"), "section")
    _code(section, "code", code, _SECTIONS[code], NSI_SECTIONS)
    _sub(section, "title", _SECTIONS[code])
    return section, _sub(section, "text")


def _observation(section: etree._Element, field: str) -> etree._Element:
    observation = _sub(_sub(section, "entry"), "observation", classCode="OBS", moodCode="EVN")
    _code(observation, "code", field, _FIELDS[field], NSI_FIELDS)
    return observation


def _paragraphs(text: etree._Element, lines: list[str]) -> None:
    for line in lines:
        _sub(text, "paragraph", line)


def _docinfo(body: etree._Element, facts: Facts, key_image_png: bytes | None) -> None:
    report, vocab = facts.report, facts.config.vocabulary
    section, text = _section(body, "DOCINFO")
    device = device_text(report)
    study = facts.study_time.strftime("%d.%m.%Y %H:%M")
    _paragraphs(
        text,
        [
            f"Исследование: {facts.service_name} (код {report.service_code}), {study}.",
            f"Оборудование: {device}.",
        ],
    )
    _coded_el(_observation(section, "800"), "value", vocab.visit, xsi_type="CD")
    _coded_el(_observation(section, "801"), "value", vocab.place, xsi_type="CD")
    _sub(_observation(section, "838"), "value", xsi_type="CD", nullFlavor="NI")
    act = _sub(_sub(section, "entry"), "act", classCode="ACT", moodCode="EVN")
    _code(act, "code", report.service_code, facts.service_name, NSI_SERVICES)
    _sub(_sub(act, "effectiveTime"), "low", value=_ts(facts.study_time))
    equipment = _sub(
        _sub(act, "entryRelationship", typeCode="COMP"),
        "observation",
        classCode="OBS",
        moodCode="EVN",
    )
    _code(equipment, "code", "8023", _FIELDS["8023"], NSI_FIELDS)
    _sub(equipment, "text", f"ИИ-устройство: {device}")
    role = _sub(_sub(equipment, "participant", typeCode="DEV"), "participantRole", classCode="ROL")
    _sub(role, "id", root=facts.root("67"), extension=report.device.key)
    _sub(_sub(role, "playingDevice"), "manufacturerModelName", device)
    if key_image_png is not None:
        media = _sub(
            _sub(section, "entry"),
            "observationMedia",
            classCode="OBS",
            moodCode="EVN",
            ID="key-image-1",
        )
        _sub(
            media,
            "value",
            base64.b64encode(key_image_png).decode("ascii"),
            mediaType="image/png",
            representation="B64",
        )
        _sub(text, "renderMultiMedia", referencedObject="key-image-1")


def _resinfo(body: etree._Element, facts: Facts) -> None:
    report = facts.report
    protocol, conclusion = protocol_text(report), conclusion_text(report)
    section, text = _section(body, "RESINFO")
    _paragraphs(text, [*protocol.split("\n"), conclusion])
    number = str(report.sources[0].get("AccessionNumber", "") or "").strip() or str(report.job_id)
    _sub(_observation(section, "8024"), "value", number, xsi_type="ST")
    _sub(_observation(section, "1805"), "value", protocol, xsi_type="ST")
    _sub(_observation(section, "1806"), "value", conclusion, xsi_type="ST")


def document_xml(facts: Facts, key_image_png: bytes | None) -> bytes:
    # Declared from text: every prefix on the root, and no typing quarrel over a None key.
    declarations = " ".join(
        f'xmlns{":" + prefix if prefix else ""}="{uri}"' for prefix, uri in NSMAP.items()
    )
    root = etree.fromstring(f"<ClinicalDocument {declarations}/>")
    _header(root, facts)
    body = _sub(_sub(root, "component"), "structuredBody")
    _docinfo(body, facts, key_image_png)
    _resinfo(body, facts)
    xml: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return xml


# --- the public entry point ----------------------------------------------------------------


def _metadata(facts: Facts, document_id: str) -> dict[str, Any]:
    report, p, device = facts.report, facts.patient, facts.report.device
    source = report.sources[0]
    return {
        "document_id": document_id,
        "document_root": facts.root("51"),
        "document_extension": str(report.job_id),
        "set_id": f"{facts.root('50')}^{report.job_id}",
        "version": 1,
        "kind": REMD_KIND,
        "kind_name": "Протокол инструментального исследования (CDA) Редакция 4",
        "template_id": TEMPLATE_ID,
        "created": facts.created.isoformat(),
        "signed": False,
        "mis_oid": facts.config.mis_oid,
        "job_id": report.job_id,
        "patient": {
            "snils": format_snils(p.snils),
            "mis_id": p.mis_id,
            "family": p.family,
            "given": p.given,
            "patronymic": p.patronymic,
            "birth_date": p.birth_date.isoformat(),
            "sex": p.sex,
        },
        "organisation": {
            "oid": facts.org_oid,
            "name": facts.org_name,
            "source": report.organisation.name,
            "department": facts.doctor.department,
        },
        "doctor": {"snils": format_snils(facts.doctor.snils), "staff_id": facts.doctor.staff_id},
        "service": {"code": report.service_code, "name": facts.service_name},
        "study_instance_uid": str(source.get("StudyInstanceUID", "")),
        "accession_number": str(source.get("AccessionNumber", "") or ""),
        "device": {
            "id": device.id,
            "version": device.version,
            "name": device.name_ru,
            "vendor": device.vendor,
            "registration": (
                {"number": device.registration.number, "date": device.registration.date.isoformat()}
                if device.registration
                else None
            ),
            "clinical_use": device.provenance.clinical_use,
        },
        "positive": report.positive,
    }


def build_semd(
    report: ReportInput, config: SemdConfig, key_image_png: bytes | None
) -> SemdDocument:
    """The unsigned SEMD for one job, or SemdMissing naming everything the source lacks.

    The document id is ``<organisation OID>.100.<mis_number>.51`` with the job id as
    extension, so rebuilding the same job yields the same document (and the regional system
    sees a resend, not a new protocol).
    """
    if key_image_png is not None and not key_image_png.startswith(PNG_SIGNATURE):
        raise ValueError("key_image_png is not a PNG image")
    facts = gather(report, config)
    document_id = f"{facts.root('51')}^{report.job_id}"
    return SemdDocument(
        xml=document_xml(facts, key_image_png),
        metadata=_metadata(facts, document_id),
        document_id=document_id,
    )
