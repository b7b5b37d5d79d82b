"""The facts a SEMD states, gathered from a job and the configuration and checked up front:
what neither carries is never invented — :func:`gather` raises :class:`SemdMissing` naming
every gap at once, checked against what the official schematron requires."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from pydicom import Dataset

from gateway.errors import GatewayError
from gateway.results.input import ReportInput
from gateway.results.semd.config import (
    SNILS_ROOT,
    Doctor,
    OrganisationSemd,
    SemdConfig,
    SnilsLookup,
    snils_checksum_ok,
    snils_digits,
)

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


class SemdMissing(GatewayError):
    """The source or configuration lacks what the document requires; nothing is sent."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__("SEMD not built, missing: " + "; ".join(missing))
        self.missing = missing


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
