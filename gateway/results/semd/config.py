"""The SEMD configuration, ``configs/semd.yaml``: what the document's header needs beyond
DICOM (the MIS, each organisation's address and responsible doctor, НСИ codes not shipped
with the reference materials), and the СНИЛС rules both the configuration and the patient's
identifiers are checked by."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from models.yaml_file import load_model

SNILS_ROOT = "1.2.643.100.3"

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
