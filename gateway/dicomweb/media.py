"""Media types of DICOMweb answers: ``Accept`` negotiated, datasets encoded as the DICOM
JSON Model (PS3.18 F) or the Native DICOM Model XML (PS3.19 A.1).

Both encodings are written from pydicom datasets, so a value's VR and form are pydicom's;
the XML writer covers what our answers hold (strings, numbers, UIDs, URLs, sequences).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag

from gateway.dicomweb.multipart import MediaType, parse_media_type

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART_DICOM = f'multipart/related; type="{DICOM}"'
NATIVE_MODEL = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
MAX_ACCEPT_ENTRIES = 32


class NotAcceptable(ValueError):
    """No media type the client accepts can be answered (406)."""


def accepted(header: str | None) -> list[MediaType]:
    """The entries of an ``Accept`` header; none given reads as ``*/*``."""
    entries = [e for e in (header or "*/*").split(",")[:MAX_ACCEPT_ENTRIES] if e.strip()]
    found = []
    for entry in entries:
        media = parse_media_type(entry)
        if media.params.get("q", "1").strip() not in ("0", "0.0", "0.00", "0.000"):
            found.append(media)
    return found


def choose_dataset_type(header: str | None, *, xml: bool) -> str:
    """JSON (``application/dicom+json``, or ``application/json``) unless only XML is
    accepted (where ``xml`` is offered); else :class:`NotAcceptable`."""
    for media in accepted(header):
        if media.value in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return DICOM_JSON
        if xml and media.value == DICOM_XML:
            return DICOM_XML
    offered = f"{DICOM_JSON}{' or ' + DICOM_XML if xml else ''}"
    raise NotAcceptable(f"this resource is answered as {offered}")


def check_multipart_dicom(header: str | None, syntaxes: Iterable[str]) -> None:
    """Whether ``multipart/related; type="application/dicom"`` with the stored transfer
    syntaxes (sent unchanged, never transcoded) is acceptable; else :class:`NotAcceptable`."""
    stored = set(syntaxes)
    for media in accepted(header):
        if media.value not in ("multipart/related", "multipart/*", "*/*"):
            continue
        if media.params.get("type", DICOM).strip().lower() not in (DICOM, "application/*"):
            continue
        wanted = media.params.get("transfer-syntax", "*").strip()
        if wanted == "*" or stored <= {wanted}:
            return
    raise NotAcceptable(
        f"instances are answered as {MULTIPART_DICOM}; transfer-syntax=* (as stored, "
        f"{', '.join(sorted(stored)) or 'none'}): the gateway does not transcode"
    )


def encode_one(dataset: Dataset, media_type: str) -> bytes:
    """One dataset (a Store Instances Response): a JSON object, or the XML model."""
    if media_type == DICOM_XML:
        return to_xml(dataset)
    return json.dumps(dataset.to_json_dict()).encode("utf-8")


def encode_many(datasets: list[Dataset]) -> bytes:
    """Query matches: a JSON array."""
    return json.dumps([d.to_json_dict() for d in datasets]).encode("utf-8")


def to_xml(dataset: Dataset) -> bytes:
    root = ET.Element("NativeDicomModel", xmlns=NATIVE_MODEL)
    _attributes(root, dataset)
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return text


def _attributes(parent: ET.Element, dataset: Dataset) -> None:
    for element in dataset:
        node = ET.SubElement(
            parent,
            "DicomAttribute",
            {
                "tag": f"{element.tag:08X}",
                "vr": element.VR,
                "keyword": keyword_for_tag(element.tag) or "",
            },
        )
        if element.VR == "SQ":
            for number, item in enumerate(element.value, start=1):
                _attributes(ET.SubElement(node, "Item", number=str(number)), item)
            continue
        values = element.value if element.VM > 1 else [element.value]
        for number, value in enumerate(values, start=1):
            if value is not None and value != "":
                ET.SubElement(node, "Value", number=str(number)).text = str(value)
