"""``aigw monitoring``: the monthly usage report for Росздравнадзор (on screen, JSON, or
JSON + CSV files), queueing it for the monitoring destinations by hand, and the notices
queued so far."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gateway.cli.options import CONFIG, DATA_DIR, settings_from
from gateway.index.database import Database
from gateway.monitoring.report import Period, UsageReport, build_report
from gateway.settings import Settings


def _open(config_file: Path | None, data_dir: Path | None) -> tuple[Settings, Database]:
    settings = settings_from(config_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    db.migrate()
    return settings, db


def _period(month: str) -> Period:
    try:
        return Period.of(month)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--month") from exc


MONTH = click.option("--month", required=True, help="YYYY-MM (UTC).")


@click.group("monitoring")
def monitoring_group() -> None:
    """Device monitoring: the usage report for Росздравнадзор and notices."""


@monitoring_group.command("report")
@CONFIG
@DATA_DIR
@MONTH
@click.option("--device", help="One device: ID or ID@VERSION (default: every one).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write usage-YYYY-MM.json and usage-YYYY-MM.csv here.",
)
def report_command(
    config_file: Path | None,
    data_dir: Path | None,
    month: str,
    device: str | None,
    as_json: bool,
    out: Path | None,
) -> None:
    """The month's usage report: one record per device version (РУ, software version,
    field of application, studies processed, results, errors, verdicts)."""
    from gateway.monitoring.exchange import to_csv

    period = _period(month)
    if as_json and out is not None:
        raise click.UsageError("choose --json or --out")
    _settings, db = _open(config_file, data_dir)
    report = build_report(db, period.month, device)
    db.dispose()
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    elif out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"usage-{period.month}"
        stem.with_suffix(".json").write_text(report.model_dump_json(indent=2), "utf-8")
        stem.with_suffix(".csv").write_text(to_csv(report), "utf-8")
        click.echo(f"{stem}.json, {stem}.csv: {len(report.records)} device versions")
    else:
        _print(report)


def _print(report: UsageReport) -> None:
    click.echo(f"usage report {report.period.month} ({len(report.records)} device versions)")
    for r in report.records:
        rate = r.verdicts.agreement_rate
        agreement = "-" if rate is None else f"{rate:.0%} of {r.verdicts.total}"
        click.echo(
            f"{r.device}@{r.version}: studies {r.studies_processed} (shadow "
            f"{r.studies_in_shadow}), positive {r.results.positive}, negative "
            f"{r.results.negative}, withheld {r.results.withheld}, failed jobs "
            f"{r.errors.failed_jobs}, agreement {agreement}"
        )


@monitoring_group.command("send")
@CONFIG
@DATA_DIR
@MONTH
def send_command(config_file: Path | None, data_dir: Path | None, month: str) -> None:
    """Queue the month's usage reports for the destinations of kind monitoring (once per
    device version: a report queued before is not queued again); aigw serve delivers them."""
    from gateway.delivery.destinations import load_destinations
    from gateway.monitoring.notices import queue_usage_reports

    period = _period(month)
    settings, db = _open(config_file, data_dir)
    targets = load_destinations(settings.destinations_file).for_monitoring()
    if not targets:
        raise click.ClickException("no destination takes kind monitoring (destinations.yaml)")
    created = queue_usage_reports(db, targets, period)
    db.dispose()
    for key in created:
        click.echo(f"queued {key}")
    click.echo(f"{len(created)} reports queued for {', '.join(t.name for t in targets)}")


@monitoring_group.command("notices")
@CONFIG
@DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
def notices_command(config_file: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Usage reports and malfunction notices queued, newest first, with their deliveries."""
    from gateway.monitoring.notices import list_notices

    _settings, db = _open(config_file, data_dir)
    found = list_notices(db)
    db.dispose()
    for notice in found:
        if as_json:
            click.echo(json.dumps(notice.model_dump(mode="json"), ensure_ascii=False))
        else:
            states = ", ".join(f"{d}: {s}" for d, s in notice.deliveries.items()) or "-"
            click.echo(
                f"{notice.id} {notice.key} created {notice.created_at:%Y-%m-%d %H:%M} {states}"
            )


@monitoring_group.command("schema")
def schema_command() -> None:
    """The JSON Schema of the usage report (docs/usage-report.schema.json is this)."""
    from gateway.monitoring.report import UsageReport

    schema = UsageReport.model_json_schema(mode="serialization")
    click.echo(json.dumps(schema, ensure_ascii=False, indent=2))
