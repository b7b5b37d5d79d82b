"""``aigw tokens`` (create, list, revoke API tokens; each creation and revocation audited
under the operator's OS account) and ``aigw api`` (the REST API and the dashboard alone,
without the SCP; its configuration files audited as loaded). Registered in
:mod:`gateway.cli.app`."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.access.audit import operator, record_configuration
from gateway.access.tokens import Role, create_token, list_tokens, revoke_token
from gateway.cli.options import CONFIG, DATA_DIR, settings_from
from gateway.errors import GatewayError
from gateway.index.database import Database
from gateway.settings import Settings


def _database(settings: Settings) -> Database:
    """The index with its regions: a token names a region that must exist."""
    from gateway.ingest.sources import load_directory, sync_directory

    db = Database(settings.resolved_database_url)
    try:
        db.migrate()
        sync_directory(
            db, load_directory(settings.sources_file, settings.regions_file, settings.open_mode)
        )
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc
    return db


@click.group(name="tokens")
def tokens_group() -> None:
    """API and dashboard tokens (stored hashed; a secret is shown once)."""


@tokens_group.command("create")
@CONFIG
@DATA_DIR
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option(
    "--region", help="Two-digit region code (region_admin, viewer and radiologist need one)."
)
@click.option("--name", help="Who or what holds the token (shown in the audit log).")
@click.option(
    "--source",
    help="A source of sources.yaml: the token may then store studies over DICOMweb STOW-RS, "
    "which arrive as from that source.",
)
def tokens_create(
    config_file: Path | None,
    data_dir: Path | None,
    role: str,
    region: str | None,
    name: str | None,
    source: str | None,
) -> None:
    """Create a token and print its secret (the only time it is shown)."""
    db = _database(settings_from(config_file, data_dir=data_dir))
    try:
        token, secret = create_token(
            db, role, region, name, source=source, by=operator(), action="aigw tokens create"
        )
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
    click.echo(
        f"token {token.id} ({token.name}, {token.role.value}, region {token.region or 'all'}"
        + (f", stores as source {token.source}" if token.source else "")
        + ")"
    )
    click.echo(secret)


@tokens_group.command("list")
@CONFIG
@DATA_DIR
def tokens_list(config_file: Path | None, data_dir: Path | None) -> None:
    """Tokens with role, region and state (never their secrets)."""
    db = _database(settings_from(config_file, data_dir=data_dir))
    found = list_tokens(db)
    db.dispose()
    click.echo(f"{'ID':>4} {'NAME':<24} {'ROLE':<13} RG  {'STATE':<8} LAST USED")
    for t in found:
        state = "revoked" if t.revoked_at else "active"
        used = t.last_used_at.isoformat() if t.last_used_at else "-"
        click.echo(
            f"{t.id:>4} {t.name:<24} {t.role.value:<13} {t.region or '--'}  {state:<8} {used}"
        )
    click.echo(f"{len(found)} tokens")


@tokens_group.command("revoke")
@CONFIG
@DATA_DIR
@click.argument("token_id", type=int)
def tokens_revoke(config_file: Path | None, data_dir: Path | None, token_id: int) -> None:
    """Revoke a token at once (its dashboard sessions end too)."""
    db = _database(settings_from(config_file, data_dir=data_dir))
    try:
        found = revoke_token(db, token_id, by=operator(), action="aigw tokens revoke")
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
    if not found:
        raise click.ClickException(f"no token {token_id}")
    click.echo(f"token {token_id}: revoked")


@click.command(name="api")
@CONFIG
@DATA_DIR
@click.option("--host", "http_host", help="Address to bind (default http_host).")
@click.option("--port", "http_port", type=int, help="Port (default http_port).")
def api_command(
    config_file: Path | None, data_dir: Path | None, http_host: str | None, http_port: int | None
) -> None:
    """Serve the REST API and the dashboard alone (no DICOM SCP, no worker)."""
    import uvicorn

    from gateway.access.http import https_options
    from gateway.api import create_app
    from gateway.index.object_store import create_store

    settings = settings_from(
        config_file, data_dir=data_dir, http_host=http_host, http_port=http_port
    )
    if not settings.http_port:
        raise click.ClickException("http_port is 0: give --port")
    db = _database(settings_from(config_file, data_dir=data_dir))
    try:
        store = create_store(settings)
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        record_configuration(db, settings, "aigw api start")
    except GatewayError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
    app = create_app(db, store, settings)
    try:
        tls = https_options(settings)
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None, **tls)
