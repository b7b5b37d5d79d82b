"""What every ``aigw`` command shares: the --config and --data-dir options, and turning them
into the one Settings object (a bad file is a clear error, not a traceback)."""

from __future__ import annotations

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


def settings_from(config_file: Path | None, **overrides: Any) -> Settings:
    try:
        settings = load_settings(config_file, **overrides)
    except (GatewayError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc
    configure_logging(settings.log_level, settings.log_json)
    return settings
