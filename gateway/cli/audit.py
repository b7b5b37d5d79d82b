"""``aigw audit``: the audit trail, filtered — by event, time, study, token and region.

Reads the index directly (no running gateway needed), newest first, as aligned columns or
one JSON object per line (``--json``) for a SIEM or a script.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from gateway.access import audit
from gateway.access.audit import AuditEntry, AuditEvent, AuditFilter
from gateway.cli.options import CONFIG, DATA_DIR, settings_from
from gateway.errors import GatewayError
from gateway.index.database import Database


class Instant(click.ParamType[datetime]):
    """An ISO 8601 date or date and time; without a zone it is taken as UTC."""

    name = "instant"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO date or time (2026-12-01, 2026-12-01T08:00Z)")
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command("audit")
@CONFIG
@DATA_DIR
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice([e.value for e in AuditEvent]),
    help="Only these events (repeatable).",
)
@click.option("--since", type=Instant(), help="From this time (ISO; UTC unless a zone is given).")
@click.option("--until", type=Instant(), help="Before this time.")
@click.option("--study", "study_uid", help="Only events about this Study Instance UID.")
@click.option("--token", "token_id", type=click.IntRange(1, 2**63 - 1), help="Only this token.")
@click.option("--region", help="Only events about this region (two digits).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit_command(
    config_file: Path | None,
    data_dir: Path | None,
    events: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    study_uid: str | None,
    token_id: int | None,
    region: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The audit trail, newest first: reads of patient data, logins and lockouts, token
    and device changes, configuration loaded, result downloads and exports."""
    settings = settings_from(config_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    try:
        db.migrate()
        found = audit.query(
            db,
            AuditFilter(
                events=[AuditEvent(e) for e in events],
                region=region,
                study_uid=study_uid,
                token_id=token_id,
                since=since,
                until=until,
                limit=limit,
            ),
        )
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
    for entry in found:
        click.echo(entry.model_dump_json() if as_json else _line(entry))
    if not as_json:
        click.echo(f"{len(found)} events")


def _line(entry: AuditEntry) -> str:
    who = f"{entry.token_name} ({entry.role})"
    detail = json.dumps(entry.detail, ensure_ascii=False) if entry.detail else ""
    about = entry.study_uid or detail
    return (
        f"{entry.at:%Y-%m-%d %H:%M:%S} {entry.event.value:<22} {who:<36} "
        f"{entry.region or '--'} {entry.client_ip or '-':<15} {entry.action}  {about}"
    )
