"""``aigw echo`` and ``aigw send``: C-ECHO a peer, C-STORE files to it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pacs_adapters.dicom_scu import Peer, ScuError
from pacs_adapters.dicom_scu import echo as c_echo
from pacs_adapters.dicom_scu import send as c_store


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=11112, show_default=True)
@click.option("--aet", "called_ae", default="AIGW", show_default=True, help="Called AE title.")
@click.option("--calling-aet", default="AIGW_SCU", show_default=True)
def echo(host: str, port: int, called_ae: str, calling_aet: str) -> None:
    """C-ECHO a DICOM peer."""
    try:
        status = c_echo(Peer(host, port, called_ae, calling_aet))
    except ScuError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"C-ECHO {called_ae}@{host}:{port}: status 0x{status:04X}")
    sys.exit(0 if status == 0 else 1)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=11112, show_default=True)
@click.option("--aet", "called_ae", default="AIGW", show_default=True, help="Called AE title.")
@click.option("--calling-aet", default="AIGW_SCU", show_default=True)
def send(paths: tuple[Path, ...], host: str, port: int, called_ae: str, calling_aet: str) -> None:
    """C-STORE DICOM files and folders, each in its own transfer syntax."""
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
