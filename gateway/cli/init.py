"""``aigw init DIR``: an editable copy of the packaged configuration.

Writes ``DIR/gateway.yaml`` and every file it names (sources, regions, routing,
destinations, SEMD), each the packaged default with its comments. In the copy of
``gateway.yaml`` those names become absolute paths into ``DIR``, so
``aigw serve --config DIR/gateway.yaml`` reads the copies from whatever directory it is
started in. Existing files are left alone unless ``--force``: nothing is written then.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from gateway.errors import ConfigError
from gateway.packaged import PACKAGED_CONFIGS

SETTINGS_FILE = "gateway.yaml"
# The settings whose file `aigw init` copies, as the packaged gateway.yaml names them.
FILE_SETTINGS = ("sources_file", "regions_file", "routing_file", "destinations_file", "semd_file")
_NAMED = re.compile(
    rf"^(?P<key>{'|'.join(FILE_SETTINGS)}):[ \t]*configs/(?P<name>[\w.-]+\.yaml)[ \t]*$",
    re.MULTILINE,
)


def write_configuration(directory: Path, force: bool = False) -> list[Path]:
    """Write the packaged configuration into ``directory``; returns the files written.

    Raises :class:`ConfigError` naming the files that exist when ``force`` is off (and
    writes nothing then).
    """
    target = directory.resolve()
    template = (PACKAGED_CONFIGS / SETTINGS_FILE).read_text(encoding="utf-8")
    contents = {SETTINGS_FILE: _point_at(template, target)}
    for match in _NAMED.finditer(template):
        name = match["name"]
        contents[name] = (PACKAGED_CONFIGS / name).read_text(encoding="utf-8")
    existing = [str(target / name) for name in contents if (target / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"already there: {', '.join(existing)} (nothing written; --force overwrites)"
        )
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in contents.items():
        (target / name).write_text(text, encoding="utf-8")
        written.append(target / name)
    return written


def _point_at(template: str, target: Path) -> str:
    """The packaged gateway.yaml with each file it names replaced by its copy in ``target``."""
    found = {match["key"] for match in _NAMED.finditer(template)}
    if missing := [key for key in FILE_SETTINGS if key not in found]:
        # The packaged file is ours: this is a packaging mistake, not a user's.
        raise ConfigError(f"packaged {SETTINGS_FILE} does not name {', '.join(missing)}")
    header = (
        f"# Written by `aigw init {target}`: the files named below are the copies in this\n"
        "# folder, by absolute path (moving the folder means editing them).\n"
    )
    # A JSON string is a valid YAML scalar whatever characters the path has.
    body = _NAMED.sub(
        lambda m: f"{m['key']}: {json.dumps(str(target / m['name']), ensure_ascii=False)}",
        template,
    )
    return header + body


@click.command(name="init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init_command(directory: Path, force: bool) -> None:
    """Write an editable configuration into DIRECTORY: gateway.yaml and the files it names,
    with the packaged defaults and their comments."""
    try:
        written = write_configuration(directory, force=force)
    except (ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"edit them, then: aigw serve --config {written[0]}")
