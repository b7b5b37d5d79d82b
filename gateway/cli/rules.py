"""``aigw rules``: ``test`` explains routing for DICOM files or folders, ``check`` validates
the rules file."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.errors import ConfigError
from gateway.packaged import packaged_default
from gateway.routing import DEFAULT_DEVICES, DEFAULT_RULES, explain_files, load_devices, load_rules
from gateway.routing.rules import priority_word
from models.manifest import ManifestError


@click.command(name="test")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(path_type=Path),
    default=DEFAULT_RULES,
    show_default=True,
    help="Routing rules YAML.",
)
@click.option(
    "--devices",
    "devices_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_DEVICES,
    show_default=True,
    help="Folder of device folders, each with a manifest.yaml.",
)
@click.option("--region", help="Region code the study comes from (for region conditions).")
@click.option("--source", help="Source name the study comes from (for source conditions).")
def rules_test_command(
    files: tuple[Path, ...],
    rules_file: Path,
    devices_dir: Path,
    region: str | None,
    source: str | None,
) -> None:
    """Explain, for DICOM FILES (or folders), which routing rule matches and why the
    others do not, and which device would read which series."""
    try:
        rules = load_rules(packaged_default(rules_file))
        devices = load_devices(packaged_default(devices_dir))
    except (ConfigError, ManifestError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(explain_files(files, rules, devices, region=region, source=source), nl=False)


@click.command(name="check")
@click.option("--rules", "rules_file", type=click.Path(path_type=Path), default=DEFAULT_RULES)
def rules_check_command(rules_file: Path) -> None:
    """Validate the routing rules and list them in order."""
    try:
        rules = load_rules(packaged_default(rules_file))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    for number, rule in enumerate(rules.rules, start=1):
        priority = priority_word(rule.priority)
        click.echo(f"{number}. {rule.name}: {rule.study_type} ({priority}, {rule.selection})")


rules_group = click.Group(
    name="rules",
    help="Routing rules: check them, test them on files.",
    commands=[rules_test_command, rules_check_command],
)
