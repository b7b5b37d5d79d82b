"""What every result says about itself, wherever a person can read it: that it is an AI
result a physician must confirm, the device's registration (РУ), and, for a device not meant
for clinical use, its provenance notice."""

from __future__ import annotations

from models.manifest import DeviceManifest

AI_NOTICE_RU = "Результат работы ИИ. Требует подтверждения врачом."
AI_NOTICE_EN = "AI result. Must be confirmed by a physician."


def registration_ru(device: DeviceManifest) -> str:
    """The device's РУ as a reader expects it, or why there is none."""
    if device.registration is None:
        return "без РУ — исследовательское устройство"
    return f"РУ {device.registration.number} от {device.registration.date:%d.%m.%Y}"


def notices_ru(device: DeviceManifest) -> list[str]:
    """The AI notice, and the provenance one if the device is not for clinical use."""
    notices = [AI_NOTICE_RU]
    if not device.provenance.clinical_use:
        notices.append(device.provenance.notice_ru)
    return notices


def notices_both(device: DeviceManifest) -> str:
    """The notices in Russian, then in English: an image's comments (SC, SEG)."""
    notices = [*notices_ru(device), AI_NOTICE_EN]
    if not device.provenance.clinical_use:
        notices.append(device.provenance.notice_en)
    return " ".join(notices)
