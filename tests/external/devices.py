"""The external device the tests register: a fluorography / chest X-ray nodule reader run as
its vendor's service, with the vendor's address, AE titles and deadline as a test needs."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.external.vendor import VENDOR_AE

DEVICE_ID = "vendor-cxr"


def manifest(port: int, deadline_s: float = 60.0, **service: object) -> dict[str, object]:
    """``service`` adds to or overrides the external section; ``protocol: stow`` drops the
    SCP's address (the vendor is then its ``url``)."""
    scp: dict[str, object] = {"host": "127.0.0.1", "port": port, "ae_title": VENDOR_AE}
    if service.get("protocol") == "stow":
        scp = {}
    return {
        "id": DEVICE_ID,
        "version": "2.1.0",
        "name": "Vendor CXR",
        "name_ru": "ИИ-сервис ФЛГ",
        "vendor": "Vendor LLC",
        "registration": {"number": "РЗН 2024/99999", "date": "2024-03-01"},
        "study_types": [
            {"type": "fluorography", "service_code": "7003320"},
            {"type": "chest_xray", "service_code": "7002892"},
        ],
        "accepts": {"modalities": ["DX", "CR"], "body_parts": ["CHEST"]},
        "runtime": "external",
        "external": {
            **scp,
            "calling_ae": VENDOR_AE,
            "deadline_s": deadline_s,
            **service,
        },
        "outputs": [
            {
                "name": "findings",
                "kind": "classification",
                "labels": [
                    {
                        "code": "427359005",
                        "ru": "Очаговое образование лёгкого",
                        "en": "Pulmonary nodule",
                        "threshold": 0.5,
                    }
                ],
            }
        ],
        "provenance": {
            "training_data": "the vendor's",
            "clinical_use": True,
            "notice_ru": "Результат ИИ требует подтверждения врачом.",
            "notice_en": "An AI result; a doctor confirms it.",
        },
    }


def write_device(folder: Path, port: int, deadline_s: float = 60.0, **service: object) -> Path:
    """``folder/vendor-cxr/manifest.yaml``; returns ``folder`` (a devices_dir)."""
    target = folder / DEVICE_ID
    target.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(manifest(port, deadline_s, **service), allow_unicode=True)
    (target / "manifest.yaml").write_text(text, encoding="utf-8")
    return folder


def write_sources(folder: Path) -> tuple[Path, Path]:
    """sources.yaml (the archive, the vendor as a device, a device source that is no
    registered device's) and regions.yaml (the device enabled live in region 38)."""
    sources = {
        "sources": [
            {
                "name": "irk-cami",
                "ae_title": "IRK_CAMI",
                "region": "38",
                "frmo_oid": "1.2.643.5.1.13.13.12.2.38.3805",
                "title": "ЦАМИ",
            },
            {"name": "vendor-cxr", "kind": "device", "ae_title": VENDOR_AE, "region": "38"},
            {"name": "other-ai", "kind": "device", "ae_title": "OTHER_AI", "region": "38"},
        ]
    }
    regions = {
        "regions": {"38": "Иркутская область"},
        "devices": {"38": [{"id": DEVICE_ID, "mode": "live"}]},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sources.yaml").write_text(yaml.safe_dump(sources, allow_unicode=True), "utf-8")
    (folder / "regions.yaml").write_text(yaml.safe_dump(regions, allow_unicode=True), "utf-8")
    return folder / "sources.yaml", folder / "regions.yaml"
