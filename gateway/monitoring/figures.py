"""How each device version does in each region over a period, from the index.

- **studies**: distinct studies with a job of the version that reached ``inferred`` and
  finished in the period (``shadow_studies`` of them analysed in shadow mode);
- **positive rate**: studies with any positive finding ÷ studies;
- **verdicts**: the current verdicts on those jobs (accepted / modified / rejected) and the
  agreement rate with its counts (:mod:`gateway.monitoring.verdicts`);
- **failures**: failed jobs finished in the period, by reason (the reason's text up to its
  first colon, so ``decode failed: …`` details count together);
- **turnaround**: per study, from its last received instance to its first result of this
  version (the job's end: shadow results are never delivered, so delivery cannot be the
  measure here); p50 and nearest-rank p95;
- **drift**: :mod:`gateway.monitoring.drift`, over the version's whole history in the region.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.devices.modes import DeviceMode, mode_of
from gateway.index.database import Database
from gateway.index.tables import FindingRow, JobRow, StudyRow, VerdictRow
from gateway.jobs.states import JobState
from gateway.monitoring.drift import DriftParams, DriftSignal, assess
from gateway.monitoring.verdicts import VerdictCounts, current_by_job

MAX_REASON = 120


class FailureCount(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str
    count: int


class Turnaround(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    p50_s: float | None
    p95_s: float | None
    studies: int = Field(description="Studies measured")


class DeviceFigures(BaseModel):
    """One device version in one region over a period."""

    model_config = ConfigDict(extra="forbid")

    device: str  # ID@VERSION
    region: str
    mode: DeviceMode = Field(description="The version's mode in the region now")
    studies: int
    shadow_studies: int
    positive: int
    positive_rate: float | None
    verdicts: VerdictCounts
    failed_jobs: int
    failures: list[FailureCount]
    turnaround: Turnaround
    drift: DriftSignal


@dataclass
class JobFact:
    """One job as the figures and the usage report see it."""

    id: int
    study_id: int
    device: str
    region: str
    state: str
    reason: str | None
    finished_at: datetime
    received_at: datetime
    mode: str
    positive: bool = False


def job_facts(
    session: Session,
    since: datetime,
    until: datetime,
    region: str | None = None,
    device: str | None = None,
) -> list[JobFact]:
    """Jobs that finished in [since, until), inferred or failed, with their positivity."""
    query = (
        select(
            JobRow.id,
            JobRow.study_id,
            JobRow.device_key,
            StudyRow.region_code,
            JobRow.state,
            JobRow.reason,
            JobRow.finished_at,
            StudyRow.last_received_at,
            JobRow.mode,
        )
        .join(StudyRow, JobRow.study_id == StudyRow.id)
        .where(
            JobRow.finished_at >= since,
            JobRow.finished_at < until,
            JobRow.state.in_([JobState.INFERRED.value, JobState.FAILED.value]),
        )
    )
    if region is not None:
        query = query.where(StudyRow.region_code == region)
    if device is not None:
        query = query.where(
            JobRow.device_key == device
            if "@" in device
            else JobRow.device_key.startswith(device + "@")
        )
    jobs = [
        JobFact(
            id=row.id,
            study_id=row.study_id,
            device=row.device_key,
            region=row.region_code,
            state=row.state,
            reason=row.reason,
            finished_at=row.finished_at or since,  # the query asks for one in the period
            received_at=row.last_received_at,
            mode=row.mode,
        )
        for row in session.execute(query.order_by(JobRow.id))
    ]
    positive = positive_jobs(session, [job.id for job in jobs])
    for job in jobs:
        job.positive = job.id in positive
    return jobs


def positive_jobs(session: Session, job_ids: list[int]) -> set[int]:
    found: set[int] = set()
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        found |= set(
            session.scalars(
                select(FindingRow.job_id).where(FindingRow.job_id.in_(chunk), FindingRow.positive)
            )
        )
    return found


def device_figures(
    db: Database,
    since: datetime,
    until: datetime,
    region: str | None = None,
    params: DriftParams | None = None,
) -> list[DeviceFigures]:
    """One row per (device version, region) with jobs in the period, in that order."""
    params = params or DriftParams()
    with db.session() as session:
        jobs = job_facts(session, since, until, region)
        verdicts = current_by_job(session, [job.id for job in jobs])
        groups: dict[tuple[str, str], list[JobFact]] = {}
        for job in jobs:
            groups.setdefault((job.device, job.region), []).append(job)
        found = []
        for (device, where), group in sorted(groups.items()):
            device_id, _, version = device.partition("@")
            found.append(
                _figures(
                    device,
                    where,
                    mode_of(session, device_id, version, where),
                    group,
                    verdicts,
                    assess(_history(session, device, where), params),
                )
            )
        return found


def _figures(
    device: str,
    region: str,
    mode: DeviceMode,
    jobs: list[JobFact],
    verdicts: dict[int, list[VerdictRow]],
    drift: DriftSignal,
) -> DeviceFigures:
    processed = studies_of(jobs)
    counts = VerdictCounts.of(v.verdict for job in jobs for v in verdicts.get(job.id, []))
    positive = sum(1 for study in processed.values() if any(j.positive for j in study))
    failed = [job for job in jobs if job.state == JobState.FAILED]
    durations = [
        max(0.0, (min(j.finished_at for j in study) - study[0].received_at).total_seconds())
        for study in processed.values()
    ]
    return DeviceFigures(
        device=device,
        region=region,
        mode=mode,
        studies=len(processed),
        shadow_studies=sum(
            1 for study in processed.values() if all(j.mode == DeviceMode.SHADOW for j in study)
        ),
        positive=positive,
        positive_rate=positive / len(processed) if processed else None,
        verdicts=counts,
        failed_jobs=len(failed),
        failures=failures_by_reason(failed),
        turnaround=Turnaround(
            p50_s=statistics.median(durations) if durations else None,
            p95_s=p95(durations),
            studies=len(durations),
        ),
        drift=drift,
    )


def studies_of(jobs: Iterable[JobFact]) -> dict[int, list[JobFact]]:
    """The inferred jobs by study."""
    studies: dict[int, list[JobFact]] = {}
    for job in jobs:
        if job.state == JobState.INFERRED:
            studies.setdefault(job.study_id, []).append(job)
    return studies


def failures_by_reason(failed: Iterable[JobFact]) -> list[FailureCount]:
    counts: dict[str, int] = {}
    for job in failed:
        reason = (job.reason or "no reason recorded").split(":", 1)[0].strip()[:MAX_REASON]
        counts[reason] = counts.get(reason, 0) + 1
    return [FailureCount(reason=r, count=n) for r, n in sorted(counts.items(), key=_by_count)]


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile: a value that was actually observed."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _history(session: Session, device: str, region: str) -> list[tuple[datetime, bool]]:
    """Every study the version processed in the region: (first processed, positive)."""
    rows = session.execute(
        select(JobRow.id, JobRow.study_id, JobRow.finished_at)
        .join(StudyRow, JobRow.study_id == StudyRow.id)
        .where(
            JobRow.device_key == device,
            StudyRow.region_code == region,
            JobRow.state == JobState.INFERRED.value,
        )
    ).all()
    positive = positive_jobs(session, [row.id for row in rows])
    studies: dict[int, tuple[datetime, bool]] = {}
    for job_id, study_id, finished in rows:
        if finished is None:
            continue
        first, seen = studies.get(study_id, (finished, False))
        studies[study_id] = (min(first, finished), seen or job_id in positive)
    return list(studies.values())
