"""``aigw models``: the AI device registry — register, list, show, enable, disable, and the
shadow / live mode of a version per region."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy.orm import Session

from gateway.access.audit import AuditEvent, add, operator, record
from gateway.cli.options import CONFIG, DATA_DIR, settings_from
from gateway.devices.modes import DeviceMode, ModeChange, modes_of, set_mode
from gateway.devices.registry import DeviceRegistry, RegistryError
from gateway.errors import GatewayError
from gateway.index.database import Database
from gateway.index.object_store import create_store


@click.group()
def models() -> None:
    """The AI device registry."""


def _registry(config_file: Path | None, data_dir: Path | None) -> DeviceRegistry:

    settings = settings_from(config_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    db.migrate()
    return DeviceRegistry(db, create_store(settings), settings.ae_title)


@models.command("register")
@CONFIG
@DATA_DIR
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def models_register(config_file: Path | None, data_dir: Path | None, manifest: Path) -> None:
    """Validate a device manifest and its ONNX file, then register them."""
    registry = _registry(config_file, data_dir)
    try:
        device, new = registry.register(manifest)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    if new:
        detail = {"device": device.key, "manifest": str(manifest.resolve())}
        _audit(registry, AuditEvent.DEVICE_REGISTERED, "aigw models register", detail)
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

    if "@" not in device:
        raise click.ClickException("name the version: ID@VERSION")
    registry = _registry(config_file, data_dir)
    try:
        registry.set_enabled(device, on)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    event = AuditEvent.DEVICE_ENABLED if on else AuditEvent.DEVICE_DISABLED
    _audit(registry, event, f"aigw models {'enable' if on else 'disable'}", {"device": device})
    click.echo(f"{device}: {'enabled' if on else 'disabled'}")


def _audit(
    registry: DeviceRegistry, event: AuditEvent, action: str, detail: dict[str, str]
) -> None:
    """The change is made (the registry keeps its own transaction); its event follows."""
    try:
        record(registry.db, operator(), event, action, detail=detail)
    except GatewayError as exc:
        raise click.ClickException(f"done, but not audited: {exc}") from exc


@models.command("mode")
@CONFIG
@DATA_DIR
@click.argument("device")
@click.argument("mode", type=click.Choice([m.value for m in DeviceMode]), required=False)
@click.option("--region", help="Two-digit region code (default: every region it is enabled in).")
def models_mode(
    config_file: Path | None,
    data_dir: Path | None,
    device: str,
    mode: str | None,
    region: str | None,
) -> None:
    """Show, or set shadow / live, for DEVICE (ID@VERSION; ID: the newest version). A shadow
    version analyses and keeps its results but delivers nothing. Each change is audited."""
    registry = _registry(config_file, data_dir)
    try:
        current = modes_of(registry.db, device)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    if mode is not None:
        regions = [region] if region else [m.region for m in current]
        if not regions:
            raise click.ClickException(f"{device} is enabled in no region: name one (--region)")
        actor = operator()

        def audited(session: Session, change: ModeChange) -> None:
            add(
                session,
                actor,
                AuditEvent.DEVICE_MODE_CHANGED,
                "aigw models mode",
                region=change.region,
                detail=change.detail(),
            )

        for code in regions:
            try:
                set_mode(registry.db, device, code, DeviceMode(mode), actor.name, audited)
            except GatewayError as exc:
                raise click.ClickException(str(exc)) from exc
        current = modes_of(registry.db, device)
    for setting in current:
        if region is not None and setting.region != region:
            continue
        origin = f"({setting.source})"
        if setting.changed_at is not None:
            origin = f"(set by {setting.changed_by} at {setting.changed_at:%Y-%m-%d %H:%M:%S} UTC)"
        click.echo(f"{setting.device} region {setting.region}: {setting.mode.value} {origin}")
