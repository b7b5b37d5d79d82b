"""``aigw``: the command line. Each command builds the settings once and passes them down."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from gateway.errors import GatewayError
from gateway.logs import configure_logging
from gateway.settings import Settings, load_settings

CONFIG = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="Settings YAML (default configs/gateway.yaml or $AIGW_CONFIG_FILE).",
)
DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Data directory of the embedded default (default ./var).",
)


def _settings(config_file: Path | None, **overrides: Any) -> Settings:
    try:
        settings = load_settings(config_file, **overrides)
    except (GatewayError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc
    configure_logging(settings.log_level, settings.log_json)
    return settings


@click.group()
def main() -> None:
    """AI imaging gateway: DICOM in, registered AI devices, results out."""


@main.command()
@CONFIG
@DATA_DIR
@click.option("--dicom-port", type=int, help="DICOM port (default 11112).")
@click.option("--http-port", type=int, help="HTTP port (default 8080, 0 disables).")
@click.option("--ae-title", help="Our AE title (default AIGW).")
@click.option(
    "--open",
    "open_mode",
    is_flag=True,
    default=None,
    help="Accept any calling AE (demos and tests only).",
)
@click.option("--scp-processes", type=int, help="SCP processes sharing the port.")
def serve(config_file: Path | None, **overrides: Any) -> None:
    """Receive studies over DICOM and assemble them until interrupted."""
    from gateway.serve import Gateway, Parts

    settings = _settings(config_file, **overrides)
    try:
        gateway = Gateway(Parts.build(settings))
        gateway.start()
    except (GatewayError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    gateway.wait()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=11112, show_default=True)
@click.option("--aet", "called_ae", default="AIGW", show_default=True, help="Called AE title.")
@click.option("--calling-aet", default="AIGW_SCU", show_default=True)
def echo(host: str, port: int, called_ae: str, calling_aet: str) -> None:
    """C-ECHO a DICOM peer."""
    from pacs_adapters.dicom_scu import Peer, ScuError
    from pacs_adapters.dicom_scu import echo as c_echo

    try:
        status = c_echo(Peer(host, port, called_ae, calling_aet))
    except ScuError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"C-ECHO {called_ae}@{host}:{port}: status 0x{status:04X}")
    sys.exit(0 if status == 0 else 1)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=11112, show_default=True)
@click.option("--aet", "called_ae", default="AIGW", show_default=True, help="Called AE title.")
@click.option("--calling-aet", default="AIGW_SCU", show_default=True)
def send(paths: tuple[Path, ...], host: str, port: int, called_ae: str, calling_aet: str) -> None:
    """C-STORE DICOM files and folders, each in its own transfer syntax."""
    from pacs_adapters.dicom_scu import Peer, ScuError
    from pacs_adapters.dicom_scu import send as c_store

    try:
        report = c_store(paths, Peer(host, port, called_ae, calling_aet))
    except ScuError as exc:
        raise click.ClickException(str(exc)) from exc
    for path, why in report.skipped.items():
        click.echo(f"skipped {path}: {why}", err=True)
    for path, why in report.failed.items():
        click.echo(f"failed  {path}: {why}", err=True)
    click.echo(f"sent {report.sent}, failed {len(report.failed)}, skipped {len(report.skipped)}")
    sys.exit(1 if report.failed else 0)


@main.group(invoke_without_command=True)
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
    from gateway.database import Database
    from gateway.study_queries import list_studies

    settings = _settings(config_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    db.migrate()
    found = list_studies(db, state)
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
    from gateway.assembly import Assembler
    from gateway.database import Database
    from gateway.sources import load_directory

    settings = _settings(obj["config_file"], data_dir=obj["data_dir"])
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
    from gateway.database import Database
    from gateway.study_queries import timeline

    settings = _settings(obj["config_file"], data_dir=obj["data_dir"])
    db = Database(settings.resolved_database_url)
    try:
        for entry in timeline(db, study_uid):
            click.echo(
                f"{entry.at.isoformat()} {entry.kind:<16} {entry.state or '':<14} "
                f"{json.dumps(entry.detail, ensure_ascii=False)}"
            )
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@CONFIG
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("./var/demo"),
    show_default=True,
    help="Where the demo keeps its database and objects.",
)
@click.option("--dicom-port", type=int, help="DICOM port (default 11112).")
@click.option(
    "--quiet-period",
    "quiet_period_s",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds without new instances before a study is complete.",
)
@click.option("--keep-serving", is_flag=True, help="Go on serving after the demo.")
def demo(config_file: Path | None, keep_serving: bool, **overrides: Any) -> None:
    """Receive synthetic CT, chest X-ray and mammography studies end to end (no services)."""
    from gateway.demo import run_demo

    settings = _settings(config_file, http_port=0, log_level="WARNING", **overrides)
    try:
        run_demo(settings, say=click.echo, keep_serving=keep_serving)
    except (GatewayError, OSError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()
