"""QIDO-RS at the root (PS3.18 10.6.1): every series (``/series``) or every instance
(``/instances``) of the studies the caller's region holds, matched by the study's keys as
well as the series' and the instance's.

The matching studies are read a page at a time, oldest first, and each one's series or
instances matched as a study-level query matches them, until the answer's page is full,
so a page costs the studies it reaches rather than the whole index. Each match carries
its study's attributes (PS3.18 Table 10.6.3-3), as PS3.18 asks of a search at the root.
At most ``MAX_STUDIES_SCANNED`` studies are read for one answer; a query that matched
nothing among them says so in its ``Warning`` header.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from pydicom import Dataset

from gateway.dicomweb.catalog import StudyRecord, find_studies, study_instances
from gateway.dicomweb.qido import (
    Headers,
    Query,
    instance_datasets,
    series_datasets,
    study_dataset,
    study_match,
)
from gateway.index.database import Database
from gateway.index.object_store import ObjectStore

STUDIES_PER_READ = 50
MAX_STUDIES_SCANNED = 5000


@dataclass(frozen=True)
class RootAnswer:
    datasets: list[Dataset]
    study_uids: list[str]  # the studies the answer holds something of (for the audit)
    truncated: bool  # MAX_STUDIES_SCANNED was reached before the page was full


def search_root(
    db: Database,
    store: ObjectStore,
    query: Query,
    region: str | None,
    level: Literal["series", "instances"],
    base: str,
) -> RootAnswer:
    """The page ``query`` asks for of every matching series or instance in ``region``."""
    wanted = query.offset + query.limit
    per_study = replace(query, offset=0, limit=wanted)
    match = study_match(query, region)
    headers = Headers(store)
    found: list[tuple[str, Dataset]] = []
    scanned = 0
    while len(found) < wanted and scanned < MAX_STUDIES_SCANNED:
        with db.session() as session:
            page = replace(match, limit=STUDIES_PER_READ, offset=scanned)
            studies = find_studies(session, page)
        if not studies:
            break
        scanned += len(studies)
        for study in studies:
            matched = _matches(db, headers, study, per_study, level, base)
            found.extend((study.study_uid, ds) for ds in matched)
            if len(found) >= wanted:
                break
    page_found = found[query.offset : wanted]
    return RootAnswer(
        [ds for _, ds in page_found],
        list(dict.fromkeys(uid for uid, _ in page_found)),
        truncated=scanned >= MAX_STUDIES_SCANNED and len(found) < wanted,
    )


def _matches(
    db: Database,
    headers: Headers,
    study: StudyRecord,
    query: Query,
    level: Literal["series", "instances"],
    base: str,
) -> list[Dataset]:
    with db.session() as session:
        records = study_instances(session, study.study_uid)
    records = headers.complete_all(records)
    if level == "series":
        datasets = series_datasets(records, query, base)
    else:
        datasets = instance_datasets(records, query, base, headers)
    attributes = study_dataset(study, base)
    del attributes.RetrieveURL  # each match has its own
    for ds in datasets:
        for element in attributes:
            if element.tag not in ds:
                ds.add(element)
    return datasets
