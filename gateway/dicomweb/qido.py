"""QIDO-RS (PS3.18 10.6): studies, a study's series, a study's or a series' instances, and
at the root every series or instance (:mod:`qido_root`), as the DICOM JSON Model, answered
from the index.

Matching (PS3.4 C.2.2.2): UIDs by list (``a,b`` or ``a\\b``), Patient ID and Accession
Number by single value or wildcard (``*``, ``?``), Patient's Name likewise but insensitive
to case (as PS3.4 C.2.2.2.1 allows for PN), Study Date by range (``from-to``, ``-to``,
``from-``). ``fuzzymatching`` is ignored, like any key the gateway does not match on; each
answer's ``Warning`` header names what was ignored. A study outside the caller's region is
never matched. Every answer holds the attributes the index keeps (which cover the required
ones of PS3.18 Table 10.6.3-3); ``includefield`` adds, at the instance level, attributes
read from each object's header.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import Tag

from gateway.dicomweb.catalog import InstanceRecord, StudyMatch, StudyRecord
from gateway.index.object_store import ObjectStore
from gateway.index.stored_headers import read_headers

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")

_STUDY_KEYS = {
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDate",
    "ModalitiesInStudy",
}
MATCH_KEYS = {
    "studies": _STUDY_KEYS,
    "series": {"SeriesInstanceUID", "Modality"},
    "instances": {"SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"},
    # At the root the study's keys match too (PS3.18 10.6.1.2), and an instance's series'.
    "all_series": _STUDY_KEYS | {"SeriesInstanceUID", "Modality"},
    "all_instances": _STUDY_KEYS
    | {"SeriesInstanceUID", "Modality", "SOPInstanceUID", "SOPClassUID"},
}
CONTROL_KEYS = {"limit", "offset", "includefield", "fuzzymatching"}
# Values never copied into an answer by includefield: bulk data belongs to WADO-RS.
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})


class BadQuery(ValueError):
    """A query value the gateway cannot match on (400)."""


@dataclass(frozen=True)
class Query:
    """A QIDO-RS query, parsed and checked."""

    values: dict[str, str]
    limit: int
    offset: int
    include: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def uids(self, keyword: str) -> list[str]:
        raw = self.values.get(keyword)
        return [] if raw is None else [u for u in raw.replace("\\", ",").split(",") if u]

    def warning(self) -> str | None:
        if not self.ignored:
            return None
        names = ", ".join(sorted(set(self.ignored))[:20])
        return f'299 aigw "not matched on, so ignored: {names}"'


def parse_query(params: Mapping[str, list[str]], level: str, max_results: int) -> Query:
    """``params``: the query string's keys with every value given for each."""
    values: dict[str, str] = {}
    ignored: list[str] = []
    for key, given in params.items():
        if key in MATCH_KEYS[level]:
            values[key] = given[-1]
        elif key not in CONTROL_KEYS:
            # Named back in a header: only names that are safe there, the rest counted.
            ignored.append(key if _NAME.fullmatch(key) else "(a key not shown)")
    if "fuzzymatching" in params:
        ignored.append("fuzzymatching")
    include = [name for value in params.get("includefield", []) for name in value.split(",")]
    query = Query(
        values,
        min(_number(params, "limit", max_results), max_results),
        _number(params, "offset", 0),
        [keyword for name in include if name and (keyword := _attribute(name))],
        ignored,
    )
    ignored.extend(
        "includefield " + (name if _NAME.fullmatch(name) else "(a name not shown)")
        for name in include
        if name and name != "all" and not _attribute(name)
    )
    _date_range(query.values.get("StudyDate"))
    return query


def _number(params: Mapping[str, list[str]], key: str, default: int) -> int:
    raw = params.get(key, [str(default)])[-1]
    if not raw.isdigit() or len(raw) > 9:
        raise BadQuery(f"{key} must be a whole number of at most 9 digits")
    return int(raw)


def _attribute(name: str) -> str:
    """A keyword, from a keyword or an eight-digit hex tag; "" for no attribute we know
    (ignored, with a warning, as PS3.18 lets an origin server do)."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        return keyword_for_tag(Tag(int(name, 16))) or ""
    return name if name != "all" and tag_for_keyword(name) is not None else ""


def study_match(query: Query, region: str | None) -> StudyMatch:
    date_from, date_to = _date_range(query.values.get("StudyDate"))
    return StudyMatch(
        region=region,
        study_uids=query.uids("StudyInstanceUID"),
        patient_id=query.values.get("PatientID"),
        patient_name=query.values.get("PatientName"),
        accession_number=query.values.get("AccessionNumber"),
        date_from=date_from,
        date_to=date_to,
        modality=query.values.get("ModalitiesInStudy"),
        limit=query.limit,
        offset=query.offset,
    )


def _date_range(raw: str | None) -> tuple[str | None, str | None]:
    if raw is None:
        return None, None
    low, dash, high = raw.partition("-")
    for value in (low, high):
        if value and (len(value) != 8 or not value.isdigit()):
            raise BadQuery(
                "StudyDate: YYYYMMDD, or a range YYYYMMDD-YYYYMMDD, -YYYYMMDD, YYYYMMDD-"
            )
    return (low or None), (high if dash else low) or None


def study_dataset(record: StudyRecord, base: str) -> Dataset:
    ds = Dataset()
    ds.StudyDate = record.study_date or ""
    ds.StudyTime = record.study_time or ""
    ds.AccessionNumber = record.accession_number or ""
    ds.ModalitiesInStudy = record.modalities or ""
    ds.StudyDescription = record.study_description or ""
    ds.PatientName = record.patient_name or ""
    ds.PatientID = record.patient_id or ""
    ds.PatientSex = record.patient_sex or ""
    if record.patient_age_years is not None:
        ds.PatientAge = f"{min(record.patient_age_years, 999):03d}Y"
    ds.StudyInstanceUID = record.study_uid
    ds.NumberOfStudyRelatedSeries = record.series_count
    ds.NumberOfStudyRelatedInstances = record.instance_count
    ds.RetrieveURL = f"{base}/dicom-web/studies/{record.study_uid}"
    return ds


class Headers:
    """Stored objects' headers, each read once per answer: results' attributes (the index
    keeps none of them) and the attributes an ``includefield`` asks for beyond the index."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._read: dict[str, Dataset | None] = {}  # None: it does not parse (logged)

    def of(self, key: str) -> Dataset | None:
        """The object's header; None where it does not parse (one damaged object leaves
        its attributes out, never the answer); :class:`StorageError` when the store fails."""
        if key not in self._read:
            self.read_together([key])
        return self._read[key]

    def read_together(self, keys: list[str]) -> None:
        """The headers of ``keys`` not read yet, read in batches (S3: side by side) rather
        than one round trip after another as each is asked for."""
        wanted = [key for key in dict.fromkeys(keys) if key not in self._read]
        for key, header in read_headers(self.store, wanted):
            if isinstance(header, Exception):
                # Only the message is kept: the exception's traceback would hold the
                # object's bytes (read whole) for as long as the answer is built.
                log.error(
                    "stored object unreadable",
                    extra={"object_key": key, "error": str(header)[:200]},
                )
                self._read[key] = None
            else:
                self._read[key] = header

    def complete_all(self, records: list[InstanceRecord]) -> list[InstanceRecord]:
        """:meth:`complete` of each record, the results' headers read together."""
        self.read_together([record.object_key for record in records if record.is_result])
        return [self.complete(record) for record in records]

    def complete(self, record: InstanceRecord) -> InstanceRecord:
        """A result's record with its series and SOP class from its header (as it is where
        the header does not parse)."""
        header = self.of(record.object_key) if record.is_result else None
        if header is None:
            return record
        return InstanceRecord(
            **{
                **record.__dict__,
                "sop_class_uid": str(header.get("SOPClassUID", "")),
                "transfer_syntax_uid": str(header.file_meta.get("TransferSyntaxUID", "")),
                "instance_number": _int(header.get("InstanceNumber")),
                "modality": str(header.get("Modality", "")) or None,
                "series_number": _int(header.get("SeriesNumber")),
                "series_description": str(header.get("SeriesDescription", "")) or None,
            }
        )


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def series_datasets(records: list[InstanceRecord], query: Query, base: str) -> list[Dataset]:
    """One dataset per series of ``records`` (completed), in their order, matched."""
    by_series: dict[str, list[InstanceRecord]] = {}
    for record in records:
        by_series.setdefault(record.series_uid, []).append(record)
    wanted_uids = set(query.uids("SeriesInstanceUID"))
    modality = query.values.get("Modality")
    found = []
    for series_uid, members in by_series.items():
        first = members[0]
        if wanted_uids and series_uid not in wanted_uids:
            continue
        if modality is not None and first.modality != modality:
            continue
        ds = Dataset()
        ds.Modality = first.modality or ""
        ds.SeriesDescription = first.series_description or ""
        ds.SeriesNumber = first.series_number if first.series_number is not None else ""
        if first.body_part:
            ds.BodyPartExamined = first.body_part
        ds.StudyInstanceUID = first.study_uid
        ds.SeriesInstanceUID = series_uid
        ds.NumberOfSeriesRelatedInstances = len(members)
        ds.RetrieveURL = f"{base}/dicom-web/studies/{first.study_uid}/series/{series_uid}"
        found.append(ds)
    return found[query.offset : query.offset + query.limit]


def instance_datasets(
    records: list[InstanceRecord], query: Query, base: str, headers: Headers
) -> list[Dataset]:
    wanted = {
        key: set(query.uids(key))
        for key in ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        if query.uids(key)
    }
    modality = query.values.get("Modality")
    matched = [
        r
        for r in records
        if (modality is None or r.modality == modality)
        and all(
            value in wanted.get(key, {value})
            for key, value in (
                ("SeriesInstanceUID", r.series_uid),
                ("SOPInstanceUID", r.sop_instance_uid),
                ("SOPClassUID", r.sop_class_uid or ""),
            )
        )
    ]
    page = matched[query.offset : query.offset + query.limit]
    datasets = [_instance_dataset(r, base) for r in page]
    extras = [
        [k for k in query.include if k not in ds and dictionary_VR(k) not in BULK_VRS]
        for ds in datasets
    ]
    # Attributes the index does not keep come from the objects' headers, read together.
    headers.read_together([r.object_key for r, extra in zip(page, extras, strict=True) if extra])
    for record, ds, extra in zip(page, datasets, extras, strict=True):
        header = headers.of(record.object_key) if extra else None
        if header is None:
            continue  # nothing beyond the index asked for, or the object does not parse
        for keyword in extra:
            if keyword in header:
                ds[keyword] = header[keyword]
    return datasets


def _instance_dataset(record: InstanceRecord, base: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = record.sop_class_uid or ""
    ds.SOPInstanceUID = record.sop_instance_uid
    if record.transfer_syntax_uid:
        ds.AvailableTransferSyntaxUID = record.transfer_syntax_uid
    ds.StudyInstanceUID = record.study_uid
    ds.SeriesInstanceUID = record.series_uid
    ds.InstanceNumber = record.instance_number if record.instance_number is not None else ""
    for keyword, value in (
        ("Rows", record.rows),
        ("Columns", record.columns),
        ("NumberOfFrames", record.number_of_frames),
    ):
        if value is not None:
            setattr(ds, keyword, value)
    ds.RetrieveURL = (
        f"{base}/dicom-web/studies/{record.study_uid}/series/{record.series_uid}"
        f"/instances/{record.sop_instance_uid}"
    )
    return ds
