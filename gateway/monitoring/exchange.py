"""The exchange with АИС Росздравнадзора: what is sent, and the CSV the operator may upload.

The exchange format of АИС Росздравнадзора is not public (the draft of Приказ №4472 described
a monthly transfer over an API, no schema). Until it is, this module is the only place that
knows how a :class:`~gateway.monitoring.report.UsageReport` becomes what leaves the gateway:
today the document is the report itself (JSON, English keys, ``format``
``aigw-usage-report/1``), one per device version and month; when the format is published,
:func:`document` maps the same schema onto it and nothing else changes.

Where each field comes from (also in docs/monitoring.md):

========================  ==============================================================
field                     source
========================  ==============================================================
device, version           the registry: manifest ``id``, ``version``
name, vendor              manifest ``name``, ``vendor``
registration.name         manifest ``name_ru`` (the name the РУ registers)
registration.number/date  manifest ``registration`` (null when the device has no РУ)
software_version          manifest ``version`` (a new ONNX file is a new version)
application               manifest ``group`` and ``study_types`` with their НСИ 1471 codes
regions                   the studies' regions (sources.yaml → the sending source)
studies_processed         jobs: live, ``inferred``, finished in the month; distinct studies
studies_in_shadow         the same for studies analysed in shadow mode only
results                   findings of those jobs; ``withheld``: results rows (kind sr)
errors                    jobs: live, ``failed``, finished in the month, by reason
verdicts                  verdicts: the current ones on those jobs
period                    the month in UTC
========================  ==============================================================
"""

from __future__ import annotations

import csv
import io
from typing import Any

from gateway.monitoring.report import DeviceRecord, UsageReport

CSV_COLUMNS = (
    "month",
    "device",
    "version",
    "name",
    "vendor",
    "registration_name",
    "registration_number",
    "registration_date",
    "software_version",
    "application_group",
    "study_types",
    "regions",
    "studies_processed",
    "studies_in_shadow",
    "results_positive",
    "results_negative",
    "results_withheld",
    "results_by_finding",
    "errors_failed_jobs",
    "errors_by_reason",
    "verdicts_accepted",
    "verdicts_modified",
    "verdicts_rejected",
    "verdicts_total",
    "agreement_rate",
)


def per_device(report: UsageReport) -> list[UsageReport]:
    """The report split into one report per device version (what one notice carries)."""
    return [report.model_copy(update={"records": [record]}) for record in report.records]


def document(report: UsageReport) -> dict[str, Any]:
    """What is sent to АИС Росздравнадзора for ``report`` (one device version's month)."""
    return report.model_dump(mode="json")


def to_csv(report: UsageReport) -> str:
    """One row per device version, the nested fields flattened (``;`` between items)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in report.records:
        writer.writerow({k: _cell(v) for k, v in _row(report.period.month, record).items()})
    return out.getvalue()


def _cell(value: object) -> object:
    """A text cell a spreadsheet will not run as a formula (a failure reason can carry text
    from a received file)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _row(month: str, r: DeviceRecord) -> dict[str, object]:
    return {
        "month": month,
        "device": r.device,
        "version": r.version,
        "name": r.name,
        "vendor": r.vendor,
        "registration_name": r.registration.name,
        "registration_number": r.registration.number or "",
        "registration_date": r.registration.date.isoformat() if r.registration.date else "",
        "software_version": r.software_version,
        "application_group": r.application.group,
        "study_types": ";".join(f"{t.type}:{t.service_code}" for t in r.application.study_types),
        "regions": ";".join(r.regions),
        "studies_processed": r.studies_processed,
        "studies_in_shadow": r.studies_in_shadow,
        "results_positive": r.results.positive,
        "results_negative": r.results.negative,
        "results_withheld": r.results.withheld,
        "results_by_finding": ";".join(
            f"{f.scheme}:{f.code}={f.positive}/{f.negative}" for f in r.results.by_finding
        ),
        "errors_failed_jobs": r.errors.failed_jobs,
        "errors_by_reason": ";".join(f"{e.reason}={e.count}" for e in r.errors.by_reason),
        "verdicts_accepted": r.verdicts.accepted,
        "verdicts_modified": r.verdicts.modified,
        "verdicts_rejected": r.verdicts.rejected,
        "verdicts_total": r.verdicts.total,
        "agreement_rate": "" if r.verdicts.agreement_rate is None else r.verdicts.agreement_rate,
    }
