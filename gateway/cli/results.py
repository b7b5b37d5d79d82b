"""``aigw results`` and ``aigw outbox``: a study's results on disk, and their deliveries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from gateway.cli.options import CONFIG, DATA_DIR, settings_from
from gateway.delivery.outbox import OutboxState
from gateway.index.database import Database
from gateway.settings import Settings


def _open(config_file: Path | None, data_dir: Path | None) -> tuple[Settings, Database]:
    settings = settings_from(config_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    db.migrate()
    return settings, db


@click.command("results")
@CONFIG
@DATA_DIR
@click.argument("study_uid")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the results here (default: list them only).",
)
def results_command(
    config_file: Path | None, data_dir: Path | None, study_uid: str, out: Path | None
) -> None:
    """A study's results: SR, flag images, GSPS, SEG and SEMD (with its metadata)."""
    from gateway.index.object_store import create_store
    from gateway.results.build import export_results, results_of

    settings, db = _open(config_file, data_dir)
    store = create_store(settings)
    listed: list[tuple[Any, list[Path]]]
    if out is None:
        listed = [(row, []) for row in results_of(db, study_uid)]
    else:
        _audit_export(db, study_uid, out)
        listed = export_results(db, store, study_uid, out)
    if not listed:
        raise click.ClickException(f"no results for study {study_uid}")
    for row, paths in listed:
        line = f"job {row.job_id} {row.kind:4} {row.state}"
        if row.reason:
            line += f": {row.reason}"
        if paths:
            line += " → " + ", ".join(str(p) for p in paths)
        click.echo(line)


def _audit_export(db: Database, study_uid: str, out: Path) -> None:
    """Results leave the gateway here: audited first, or not exported at all."""
    from gateway.access.audit import AuditError, AuditEvent, operator, record

    try:
        record(
            db,
            operator(),
            AuditEvent.RESULT_EXPORTED,
            "aigw results --out",
            study_uid=study_uid,
            detail={"out": str(out.resolve())},
        )
    except AuditError as exc:
        raise click.ClickException(f"{exc}; nothing exported") from exc


@click.group("outbox", invoke_without_command=True)
@CONFIG
@DATA_DIR
@click.option("--state", type=click.Choice([s.value for s in OutboxState]))
@click.option("--study", "study_uid", help="Only this study's deliveries.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.pass_context
def outbox_group(
    ctx: click.Context,
    config_file: Path | None,
    data_dir: Path | None,
    state: str | None,
    study_uid: str | None,
    as_json: bool,
) -> None:
    """Deliveries of results to their destinations, and their state."""
    ctx.obj = (config_file, data_dir)
    if ctx.invoked_subcommand is not None:
        return
    from gateway.delivery.outbox import list_outbox

    _settings, db = _open(config_file, data_dir)
    for row in list_outbox(db, state, study_uid):
        if as_json:
            data: dict[str, Any] = row.__dict__
            click.echo(json.dumps(data, default=str, ensure_ascii=False))
            continue
        line = (
            f"{row.id} {row.state:9} {row.kind:4} → {row.destination} ({row.protocol}) "
            f"attempts={row.attempts} study={row.study_uid}"
        )
        if row.state == OutboxState.DELIVERED:
            line += f" at {row.delivered_at:%Y-%m-%d %H:%M:%S} id={row.remote_id}"
        elif row.last_error:
            line += f" next={row.next_attempt_at:%H:%M:%S} error: {row.last_error}"
        click.echo(line)


@outbox_group.command("retry")
@click.argument("outbox_id", type=int)
@click.pass_context
def outbox_retry(ctx: click.Context, outbox_id: int) -> None:
    """Make a delivery due now (also a failed one)."""
    from gateway.delivery.outbox import retry

    _settings, db = _open(*ctx.obj)
    if not retry(db, outbox_id):
        raise click.ClickException(f"no undelivered outbox row {outbox_id}")
    click.echo(f"outbox {outbox_id}: due now")
