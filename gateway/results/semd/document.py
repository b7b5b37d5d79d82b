"""SEMD «Протокол инструментального исследования» ред. 4 (HL7 CDA R2, РЭМД kind 174).

One finished job becomes an unsigned CDA document plus a JSON sidecar for the regional
system, which signs it (GOST) and registers it in РЭМД. No SEMD kind for AI results exists,
so the AI result goes into this protocol as a draft: the AI text in field 1805, a draft
conclusion in 1806, the device in 8023, the key image as ``observationMedia``; the
responsible radiologist (from configuration) stays author and legal authenticator.

Everything a registered document needs that DICOM does not carry (the organisation's
address, the doctor, the MIS) comes from ``configs/semd.yaml``
(:mod:`~gateway.results.semd.config`); the facts are gathered and checked up front by
:mod:`~gateway.results.semd.facts`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lxml import etree
from pydicom import Dataset

from gateway.results.input import ReportFinding, ReportInput
from gateway.results.notices import AI_NOTICE_RU
from gateway.results.semd.config import SNILS_ROOT, Coded, SemdConfig, format_snils
from gateway.results.semd.facts import Facts, gather

TEMPLATE_ID = "1.2.643.5.1.13.13.14.6.9.4"
REMD_KIND = "174"
MINZDRAV_OID = "1.2.643.5.1.13"
# The key image's media type by its first bytes: the gateway writes JPEG (flags.key_image_jpeg);
# PNG is as welcome to the schema, which asks only that a type be named.
MEDIA_TYPES = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}

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


@dataclass(frozen=True)
class SemdDocument:
    """The unsigned CDA document and the sidecar the regional system registers it with."""

    xml: bytes
    metadata: dict[str, Any]
    document_id: str


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
    centre = finding.location.centre
    if centre is None:
        return ""
    if len(centre) == 3:
        z, row, col = centre
        where = f"срез {int(z) + 1} из {len(report.sources)}, строка {row:.0f}, столбец {col:.0f}"
    else:
        row, col = centre
        where = f"строка {row:.0f}, столбец {col:.0f}"
        uid = finding.location.sop_instance_uid
        image = next((s for s in report.sources if s.SOPInstanceUID == uid), None)
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


def media_type(image: bytes) -> str:
    """``image/jpeg`` or ``image/png``, by the image's signature; ValueError for others."""
    for signature, name in MEDIA_TYPES.items():
        if image.startswith(signature):
            return name
    raise ValueError("the key image is neither JPEG nor PNG")


def _docinfo(body: etree._Element, facts: Facts, key_image: bytes | None) -> None:
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
    if key_image is not None:
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
            base64.b64encode(key_image).decode("ascii"),
            mediaType=media_type(key_image),
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


def document_xml(facts: Facts, key_image: bytes | None) -> bytes:
    # Declared from text: every prefix on the root, and no typing quarrel over a None key.
    declarations = " ".join(
        f'xmlns{":" + prefix if prefix else ""}="{uri}"' for prefix, uri in NSMAP.items()
    )
    root = etree.fromstring(f"<ClinicalDocument {declarations}/>")
    _header(root, facts)
    body = _sub(_sub(root, "component"), "structuredBody")
    _docinfo(body, facts, key_image)
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


def build_semd(report: ReportInput, config: SemdConfig, key_image: bytes | None) -> SemdDocument:
    """The unsigned SEMD for one job, or SemdMissing naming everything the source lacks.

    The document id is ``<organisation OID>.100.<mis_number>.51`` with the job id as
    extension, so rebuilding the same job yields the same document (and the regional system
    sees a resend, not a new protocol).
    """
    if key_image is not None:
        media_type(key_image)  # an image of a kind we can name, else ValueError
    facts = gather(report, config)
    document_id = f"{facts.root('51')}^{report.job_id}"
    return SemdDocument(
        xml=document_xml(facts, key_image),
        metadata=_metadata(facts, document_id),
        document_id=document_id,
    )
