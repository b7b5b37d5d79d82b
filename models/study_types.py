"""Study types the devices serve, with their service codes from НСИ 1.2.643.5.1.13.13.11.1471
(«Номенклатура медицинских услуг»)."""

from __future__ import annotations

from enum import StrEnum


class StudyType(StrEnum):
    FLUOROGRAPHY = "fluorography"
    CHEST_XRAY = "chest_xray"
    CT_CHEST = "ct_chest"
    LDCT_CHEST = "ldct_chest"
    CT_BRAIN = "ct_brain"
    MAMMOGRAPHY = "mammography"


SERVICE_CODES: dict[StudyType, tuple[str, str]] = {
    StudyType.FLUOROGRAPHY: ("7003320", "Флюорография лёгких"),
    StudyType.CHEST_XRAY: ("7002892", "Рентгенография грудной клетки"),
    StudyType.CT_CHEST: ("7001894", "Компьютерная томография органов грудной полости"),
    StudyType.LDCT_CHEST: (
        "7001928",
        "Низкодозная компьютерная томография органов грудной полости",
    ),
    StudyType.CT_BRAIN: ("7001472", "Компьютерная томография головного мозга"),
    StudyType.MAMMOGRAPHY: ("7003379", "Маммография"),
}


def service_code(study_type: StudyType) -> str:
    return SERVICE_CODES[study_type][0]
