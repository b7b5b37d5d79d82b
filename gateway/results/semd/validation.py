"""Validate a SEMD (kind 174) against the official XSD and schematron.

The XSD is checked on the document as written. The schematron (compiled to XSLT by
SchXslt, run with Saxon) addresses elements without a namespace, so — like the federal
validators — it runs on a copy with the default ``urn:hl7-org:v3`` namespace removed.
Compiling the 1.7 MB stylesheet takes most of a second, so each (processor, stylesheet)
pair is compiled once per process and reused.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from lxml import etree

from gateway.errors import ConfigError

SVRL = "http://purl.oclc.org/dsdl/svrl"
V3 = "urn:hl7-org:v3"
XSD_PATH = Path("174") / "CDA.xsd"
XSL_PATH = Path("schematrons") / "174.xsl"

# Saxon's executables are not documented as thread-safe: one transform at a time.
_SAXON_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _schema(path: Path) -> etree.XMLSchema:
    try:
        return etree.XMLSchema(etree.parse(str(path)))
    except (OSError, etree.XMLSchemaParseError, etree.XMLSyntaxError) as exc:
        raise ConfigError(f"{path}: cannot load the SEMD XSD: {exc}") from exc


@lru_cache(maxsize=4)
def _schematron(path: Path) -> tuple[Any, Any, type[Exception]]:
    """(processor, compiled executable, Saxon's error type); the processor must outlive the
    executable."""
    from saxonche import PySaxonApiError, PySaxonProcessor  # heavy import, on first use

    if not path.is_file():
        raise ConfigError(f"{path}: SEMD schematron not found")
    processor = PySaxonProcessor(license=False)
    try:
        executable = processor.new_xslt30_processor().compile_stylesheet(stylesheet_file=str(path))
    except PySaxonApiError as exc:
        raise ConfigError(f"{path}: cannot compile the SEMD schematron: {exc}") from exc
    return processor, executable, PySaxonApiError


def _without_default_namespace(root: etree._Element) -> bytes:
    copy = etree.fromstring(etree.tostring(root))
    for element in copy.iter():
        if isinstance(element.tag, str) and element.tag.startswith(f"{{{V3}}}"):
            element.tag = element.tag[len(V3) + 2 :]
    etree.cleanup_namespaces(copy)
    out: bytes = etree.tostring(copy, encoding="UTF-8")
    return out


def xsd_problems(root: etree._Element, reference_dir: Path) -> list[str]:
    schema = _schema((reference_dir / XSD_PATH).resolve())
    if schema.validate(root):
        return []
    # Each line of the log reads "<source>:LINE:COLUMN:LEVEL:DOMAIN:TYPE: message".
    problems = []
    for entry in str(schema.error_log).splitlines():
        parts = entry.split(":", 6)
        problems.append(f"XSD line {parts[1]}: {parts[6].strip()}" if len(parts) == 7 else entry)
    return problems


def schematron_problems(root: etree._Element, reference_dir: Path) -> list[str]:
    processor, executable, saxon_error = _schematron((reference_dir / XSL_PATH).resolve())
    text = _without_default_namespace(root).decode("utf-8")
    with _SAXON_LOCK:
        try:
            node = processor.parse_xml(xml_text=text)
            report = executable.transform_to_string(xdm_node=node)
        except saxon_error as exc:
            return [f"schematron: the stylesheet failed on the document: {exc}"]
    svrl = etree.fromstring(report.encode("utf-8"))
    problems = []
    for kind in ("failed-assert", "successful-report"):
        for hit in svrl.iter(f"{{{SVRL}}}{kind}"):
            message = " ".join("".join(str(t) for t in hit.itertext()).split())
            problems.append(f"schematron {hit.get('location', '')}: {message}")
    return problems


def validate_semd(xml: bytes, reference_dir: Path) -> list[str]:
    """Every problem the XSD and the schematron find; an empty list means valid.

    ``reference_dir`` is the folder with ``174/CDA.xsd`` and ``schematrons/174.xsl``.
    A document that is not even well-formed XML is one problem, and the schematron is not
    run on it.
    """
    try:
        root = etree.fromstring(xml)
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    return [*xsd_problems(root, reference_dir), *schematron_problems(root, reference_dir)]
