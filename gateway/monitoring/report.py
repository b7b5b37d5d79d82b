"""The usage report for Росздравнадзор: one record per device version per month, built from
the index (Постановление №1684 п. 87, Приказ №4472: registration certificate, software
version, field of application, studies processed, results, errors).

What each field counts (all over the month in UTC, by the job's end):

- a record exists for every device version with a job that finished in the month;
- ``studies_processed``: distinct studies with a **live** job of the version that reached
  ``inferred`` (what the device did in clinical use); ``studies_in_shadow``: those analysed
  in shadow only, whose results were never delivered — reported apart, counted nowhere else;
- ``results``: of the processed studies, ``positive`` (any finding positive), ``negative``
  (none), and ``withheld`` (the structured report, the result of record, was not written);
  ``by_finding``: per label, studies where it was positive and where it was negative;
- ``errors``: live jobs that failed, by reason (as :mod:`gateway.monitoring.figures`);
- ``verdicts``: the current radiologists' verdicts on those live jobs when the report is made.

Where each field comes from, and how it maps onto the exchange format, is in
:mod:`gateway.monitoring.exchange` and ``docs/monitoring.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.delivery.destinations import ResultKind
from gateway.index.database import Database
from gateway.index.tables import DeviceMode, DeviceRow, FindingRow, ResultRow, utcnow
from gateway.jobs.states import JobState
from gateway.monitoring.figures import FailureCount, JobFact, failures_by_reason, job_facts
from gateway.monitoring.figures import studies_of as processed_studies
from gateway.monitoring.verdicts import VerdictCounts, current_by_job
from models.manifest import DeviceManifest
from models.study_types import SERVICE_CODES

FORMAT = "aigw-usage-report/1"
MONTH_PATTERN = r"^(20[0-9]{2})-(0[1-9]|1[0-2])$"
_MONTH = re.compile(MONTH_PATTERN)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Period(_Record):
    month: str = Field(pattern=MONTH_PATTERN, description="YYYY-MM")
    start: datetime = Field(description="First instant of the month, UTC")
    end: datetime = Field(description="First instant of the next month, UTC (exclusive)")

    @classmethod
    def of(cls, month: str) -> Period:
        found = _MONTH.fullmatch(month)
        if found is None:
            raise ValueError(f"month {month!r} is not YYYY-MM (2000-2099)")
        year, number = int(found.group(1)), int(found.group(2))
        start = datetime(year, number, 1, tzinfo=UTC)
        end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
        return cls(month=month, start=start, end=end)

    @classmethod
    def before(cls, moment: datetime) -> Period:
        """The last whole month before ``moment`` (UTC)."""
        at = moment.astimezone(UTC)
        year, number = (at.year, at.month - 1) if at.month > 1 else (at.year - 1, 12)
        return cls.of(f"{year:04d}-{number:02d}")


class RegistrationCertificate(_Record):
    """The РУ: the name it registers, its number and date (None where not registered)."""

    name: str
    number: str | None
    date: date | None


class StudyTypeUse(_Record):
    type: str
    service_code: str = Field(description="НСИ 1.2.643.5.1.13.13.11.1471")
    service_name: str


class Application(_Record):
    """The field of application: the kind of medical decision and the study types served."""

    group: str = Field(description="image_analysis | emk_data_analysis")
    decision: str
    study_types: list[StudyTypeUse]


class LabelCounts(_Record):
    code: str
    scheme: str
    label_ru: str
    label_en: str
    positive: int
    negative: int


class Results(_Record):
    positive: int
    negative: int
    withheld: int
    by_finding: list[LabelCounts]


class Errors(_Record):
    failed_jobs: int
    by_reason: list[FailureCount]


class DeviceRecord(_Record):
    """One device version's month."""

    device: str = Field(description="The device id in the registry")
    version: str
    name: str
    vendor: str
    registration: RegistrationCertificate
    software_version: str
    application: Application
    regions: list[str] = Field(description="Regions where it processed studies live")
    studies_processed: int
    studies_in_shadow: int
    results: Results
    errors: Errors
    verdicts: VerdictCounts


class UsageReport(_Record):
    format: str = Field(default=FORMAT, pattern=r"^aigw-usage-report/[0-9]+$")
    period: Period
    generated_at: datetime
    records: list[DeviceRecord]

    @field_validator("generated_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("generated_at needs its time zone")
        return value


DECISIONS = {
    "image_analysis": "поддержка принятия врачебных решений: анализ медицинских изображений",
    "emk_data_analysis": "поддержка принятия врачебных решений: анализ данных ЭМК",
}


def build_report(
    db: Database, month: str, device: str | None = None, now: datetime | None = None
) -> UsageReport:
    """The month's report from the index; ``device``: only that id (or ID@VERSION)."""
    period = Period.of(month)
    with db.session() as session:
        jobs = job_facts(session, period.start, period.end, device=device)
        by_device: dict[str, list[JobFact]] = {}
        for job in jobs:
            by_device.setdefault(job.device, []).append(job)
        records = [_record(session, key, group) for key, group in sorted(by_device.items())]
    return UsageReport(period=period, generated_at=now or utcnow(), records=records)


def _record(session: Session, key: str, jobs: list[JobFact]) -> DeviceRecord:
    device_id, _, version = key.partition("@")
    manifest = _manifest(session, device_id, version)
    live = [job for job in jobs if job.mode == DeviceMode.LIVE]
    processed = processed_studies(live)
    shadow_only = set(processed_studies(jobs)) - set(processed)
    inferred = [job.id for study in processed.values() for job in study]
    verdicts = current_by_job(session, inferred)
    registration = manifest.registration if manifest else None
    return DeviceRecord(
        device=device_id,
        version=version,
        name=manifest.name if manifest else device_id,
        vendor=manifest.vendor if manifest else "",
        registration=RegistrationCertificate(
            name=manifest.name_ru if manifest else device_id,
            number=registration.number if registration else None,
            date=registration.date if registration else None,
        ),
        software_version=version,
        application=_application(manifest),
        regions=sorted({job.region for study in processed.values() for job in study}),
        studies_processed=len(processed),
        studies_in_shadow=len(shadow_only),
        results=_results(session, processed),
        errors=Errors(
            failed_jobs=sum(1 for job in live if job.state == JobState.FAILED),
            by_reason=failures_by_reason(job for job in live if job.state == JobState.FAILED),
        ),
        verdicts=VerdictCounts.of(v.verdict for rows in verdicts.values() for v in rows),
    )


def _manifest(session: Session, device_id: str, version: str) -> DeviceManifest | None:
    stored = session.scalar(
        select(DeviceRow.manifest).where(
            DeviceRow.device_id == device_id, DeviceRow.version == version
        )
    )
    return DeviceManifest.model_validate(stored) if stored is not None else None


def _application(manifest: DeviceManifest | None) -> Application:
    if manifest is None:
        return Application(group="unknown", decision="device not in the registry", study_types=[])
    group = manifest.group.value
    return Application(
        group=group,
        decision=DECISIONS.get(group, group),
        study_types=[
            StudyTypeUse(
                type=entry.type.value,
                service_code=entry.service_code,
                service_name=SERVICE_CODES[entry.type][1],
            )
            for entry in manifest.study_types
        ],
    )


@dataclass
class _Label:
    ru: str
    en: str
    positive: set[int] = field(default_factory=set)  # job ids
    negative: set[int] = field(default_factory=set)


def _results(session: Session, processed: dict[int, list[JobFact]]) -> Results:
    # Here, not at the top: the builders' imports (highdicom, lxml…) only when a report is
    # made, not in every process that imports the schema (the API, every aigw command).
    from gateway.results.build import WITHHELD

    job_ids = [job.id for study in processed.values() for job in study]
    withheld_jobs: set[int] = set()
    labels: dict[tuple[str, str], _Label] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        withheld_jobs |= set(
            session.scalars(
                select(ResultRow.job_id).where(
                    ResultRow.job_id.in_(chunk),
                    ResultRow.kind == ResultKind.SR.value,
                    ResultRow.state == WITHHELD,
                )
            )
        )
        for finding in session.scalars(select(FindingRow).where(FindingRow.job_id.in_(chunk))):
            label = labels.setdefault(
                (finding.label_scheme, finding.label_code),
                _Label(finding.label_ru, finding.label_en),
            )
            (label.positive if finding.positive else label.negative).add(finding.job_id)
    study_of = {job.id: study_id for study_id, study in processed.items() for job in study}
    positive = sum(1 for study in processed.values() if any(job.positive for job in study))
    by_finding = []
    for (scheme, code), label in sorted(labels.items()):
        pos = {study_of[j] for j in label.positive}
        neg = {study_of[j] for j in label.negative} - pos
        by_finding.append(
            LabelCounts(
                code=code,
                scheme=scheme,
                label_ru=label.ru,
                label_en=label.en,
                positive=len(pos),
                negative=len(neg),
            )
        )
    return Results(
        positive=positive,
        negative=len(processed) - positive,
        withheld=len({study_of[j] for j in withheld_jobs}),
        by_finding=by_finding,
    )
