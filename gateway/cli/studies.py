"""``aigw studies`` (list, complete, timeline) and ``aigw jobs``: what arrived and what the
devices made of it, from the index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from gateway.cli.options import CONFIG, DATA_DIR, settings_from
from gateway.errors import GatewayError
from gateway.index.database import Database
from gateway.index.read_model import JobFilter, StudyFilter, list_jobs, list_studies, timeline
from gateway.ingest.assembly import Assembler
from gateway.ingest.sources import load_directory


@click.group(invoke_without_command=True)
@CONFIG
@DATA_DIR
@click.option("--state", help="Only studies in this state.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def studies(
    ctx: click.Context,
    config_file: Path | None,
    data_dir: Path | None,
    state: str | None,
    as_json: bool,
) -> None:
    """List received studies with state, source, region, modality and counts."""
    ctx.obj = {"config_file": config_file, "data_dir": data_dir}
    if ctx.invoked_subcommand is not None:
        return

    settings = settings_from(config_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    db.migrate()
    found = list_studies(db, StudyFilter(state=state, limit=1000))
    if as_json:
        for summary in found:
            click.echo(summary.model_dump_json())
        return
    click.echo(f"{'STUDY UID':<64} {'STATE':<14} {'SOURCE':<16} RG {'MOD':<8} SER  INST")
    for s in found:
        click.echo(
            f"{s.study_uid:<64} {s.state:<14} {s.source:<16} {s.region} "
            f"{','.join(s.modalities):<8} {s.series_count:>3} {s.instance_count:>5}"
        )
    click.echo(f"{len(found)} studies")


@studies.command("complete")
@click.argument("study_uid")
@click.pass_obj
def studies_complete(obj: dict[str, Any], study_uid: str) -> None:
    """Mark a study complete now, without waiting for its quiet period."""
    settings = settings_from(obj["config_file"], data_dir=obj["data_dir"])
    db = Database(settings.resolved_database_url)
    db.migrate()
    directory = load_directory(settings.sources_file, settings.regions_file, settings.open_mode)
    try:
        done = Assembler(db, directory, settings.quiet_period_s).complete(study_uid)
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{study_uid}: {'complete' if done else 'not open (already complete)'}")


@studies.command("timeline")
@click.argument("study_uid")
@click.pass_obj
def studies_timeline(obj: dict[str, Any], study_uid: str) -> None:
    """Print a study's timeline: every state transition and event."""
    settings = settings_from(obj["config_file"], data_dir=obj["data_dir"])
    db = Database(settings.resolved_database_url)
    try:
        for entry in timeline(db, study_uid):
            click.echo(
                f"{entry.at.isoformat()} {entry.kind:<16} {entry.state or '':<14} "
                f"{json.dumps(entry.detail, ensure_ascii=False)}"
            )
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@CONFIG
@DATA_DIR
@click.option("--study", "study_uid", help="Only this study's jobs.")
@click.option("--state", help="Only jobs in this state.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines with findings.")
def jobs(
    config_file: Path | None,
    data_dir: Path | None,
    study_uid: str | None,
    state: str | None,
    as_json: bool,
) -> None:
    """Analysis jobs with their state, timings and findings."""
    settings = settings_from(config_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    db.migrate()
    for job in list_jobs(db, JobFilter(study_uid=study_uid, state=state, limit=1000)):
        if as_json:
            click.echo(job.model_dump_json())
            continue
        click.echo(
            f"job {job.job_id} {job.device} {job.study_type}({job.service_code}) "
            f"{job.state} attempts={job.attempts} study={job.study_uid}"
        )
        if job.reason:
            click.echo(f"    reason: {job.reason}")
        for f in job.findings:
            verdict = "POSITIVE" if f.positive else "negative"
            click.echo(
                f"    {f.label_ru} / {f.label_en}: p={f.probability:.3f} "
                f"(threshold {f.threshold}) {verdict} {f.location or ''} {f.measurements}"
            )
