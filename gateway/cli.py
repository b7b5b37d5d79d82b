"""``aigw``: the command line. Each command builds the settings once and passes them down.

The CLI is the composition root: the commands that run the whole gateway or a worker import
``workers`` lazily; the rest of ``gateway`` never does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from gateway.cli_options import CONFIG, DATA_DIR, settings_from
from gateway.errors import GatewayError


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
    """Receive studies over DICOM, assemble, route and analyse them until interrupted."""
    from workers.app import build_gateway  # the CLI is the composition root

    settings = settings_from(config_file, **overrides)
    try:
        gateway = build_gateway(settings)
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

    settings = settings_from(config_file, data_dir=data_dir)
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
    from gateway.database import Database
    from gateway.study_queries import timeline

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
@click.option("--http-port", type=int, help="Dashboard and API port (default 8080; 0: none).")
@click.option(
    "--exit-when-done",
    is_flag=True,
    help="Stop once the studies are analysed and their results written (default: go on "
    "serving the dashboard until interrupted).",
)
def demo(config_file: Path | None, exit_when_done: bool, **overrides: Any) -> None:
    """Receive synthetic CT, chest X-ray and mammography studies end to end (no services)."""
    from gateway.demo import run_demo
    from workers.app import build_gateway

    settings = settings_from(config_file, log_level="WARNING", **overrides)
    try:
        run_demo(settings, build_gateway, say=click.echo, keep_serving=not exit_when_done)
    except (GatewayError, OSError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
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
    from gateway.database import Database
    from gateway.study_queries import list_jobs

    settings = settings_from(config_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    db.migrate()
    for job in list_jobs(db, study_uid, state):
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


@main.command()
@CONFIG
@click.option("--queues", "-Q", help="Comma-separated queues (default: all known queues).")
@click.option(
    "--concurrency", "-c", type=int, help="Tasks run at once (default worker_concurrency)."
)
def worker(config_file: Path | None, queues: str | None, concurrency: int | None) -> None:
    """Run a Celery worker (distributed mode: set broker_url to Redis)."""
    from workers.worker import run_worker

    settings = settings_from(config_file)
    if settings.broker_url.startswith("memory"):
        raise click.ClickException("a separate worker needs a real broker: set AIGW_BROKER_URL")
    run_worker(settings, queues.split(",") if queues else None, concurrency)


@main.group()
def models() -> None:
    """The AI device registry."""


def _registry(config_file: Path | None, data_dir: Path | None) -> Any:
    from gateway.database import Database
    from gateway.object_store import create_store
    from gateway.registry import DeviceRegistry

    settings = settings_from(config_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    db.migrate()
    return DeviceRegistry(db, create_store(settings))


@models.command("register")
@CONFIG
@DATA_DIR
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def models_register(config_file: Path | None, data_dir: Path | None, manifest: Path) -> None:
    """Validate a device manifest and its ONNX file, then register them."""
    from gateway.registry import RegistryError

    try:
        device, new = _registry(config_file, data_dir).register(manifest)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{device.key}: {'registered' if new else 'already registered (identical)'}")


@models.command("list")
@CONFIG
@DATA_DIR
def models_list(config_file: Path | None, data_dir: Path | None) -> None:
    """Registered devices with version, state, regions and study types."""
    devices = _registry(config_file, data_dir).devices()
    click.echo(f"{'DEVICE':<32} {'STATE':<8} {'REGIONS':<12} STUDY TYPES")
    for device in devices:
        types = ",".join(f"{t.type}({t.service_code})" for t in device.manifest.study_types)
        state = "enabled" if device.enabled else "disabled"
        click.echo(f"{device.key:<32} {state:<8} {','.join(device.regions) or '-':<12} {types}")
    click.echo(f"{len(devices)} device versions")


@models.command("show")
@CONFIG
@DATA_DIR
@click.argument("device")
def models_show(config_file: Path | None, data_dir: Path | None, device: str) -> None:
    """A device's manifest (DEVICE is ID or ID@VERSION), as JSON."""
    from gateway.registry import RegistryError

    try:
        found = _registry(config_file, data_dir).get(device)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(found.model_dump_json(indent=2))


@models.command("enable")
@CONFIG
@DATA_DIR
@click.argument("device")
def models_enable(config_file: Path | None, data_dir: Path | None, device: str) -> None:
    """Enable a device version (ID@VERSION)."""
    _set_enabled(config_file, data_dir, device, True)


@models.command("disable")
@CONFIG
@DATA_DIR
@click.argument("device")
def models_disable(config_file: Path | None, data_dir: Path | None, device: str) -> None:
    """Disable a device version (ID@VERSION): no new jobs are routed to it."""
    _set_enabled(config_file, data_dir, device, False)


def _set_enabled(config_file: Path | None, data_dir: Path | None, device: str, on: bool) -> None:
    from gateway.registry import RegistryError

    if "@" not in device:
        raise click.ClickException("name the version: ID@VERSION")
    try:
        _registry(config_file, data_dir).set_enabled(device, on)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{device}: {'enabled' if on else 'disabled'}")


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """The benchmark suite (python -m benchmarks.suite; --help for its options)."""
    import subprocess

    # benchmarks/ sits beside the packages in the repository and is not installed: the
    # suite imports everything, and nothing in the gateway imports it.
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "suite.py").is_file():
        raise click.ClickException("the benchmark suite ships with the repository checkout")
    command = [sys.executable, "-m", "benchmarks.suite", *ctx.args]
    sys.exit(subprocess.call(command, cwd=root))


def _add_commands() -> None:
    from gateway.cli_access import api_command, tokens_group
    from gateway.cli_results import outbox_group, results_command
    from gateway.routing import rules_group

    main.add_command(rules_group)
    main.add_command(tokens_group)
    main.add_command(api_command)
    main.add_command(results_command)
    main.add_command(outbox_group)


_add_commands()


if __name__ == "__main__":
    main()
