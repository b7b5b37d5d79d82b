"""``aigw``, the entry point: the gateway's commands (:mod:`gateway.cli`) plus the ones that
run the composed gateway — ``serve``, ``worker`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gateway.cli.app import cli as main
from gateway.cli.options import CONFIG, DATA_DIR, settings_from
from gateway.errors import GatewayError
from gateway.memory import keep_large_buffers

__all__ = ["main"]


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
    from workers.app import build_gateway  # the whole gateway: imported only to run it

    settings = settings_from(config_file, **overrides)
    keep_large_buffers()
    try:
        gateway = build_gateway(settings)
        gateway.start()
    except (GatewayError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    gateway.wait()


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
    from workers.app import build_gateway
    from workers.demo import run_demo

    settings = settings_from(config_file, log_level="WARNING", **overrides)
    keep_large_buffers()
    try:
        run_demo(settings, build_gateway, say=click.echo, keep_serving=not exit_when_done)
    except (GatewayError, OSError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc


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
    keep_large_buffers()
    try:
        run_worker(settings, queues.split(",") if queues else None, concurrency)
    except GatewayError as exc:  # e.g. a schema older than this code: waiting cannot help
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()
